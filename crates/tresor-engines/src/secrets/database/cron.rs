//! Standard 5-field cron schedules (`minute hour day-of-month month
//! day-of-week`), evaluated in UTC, as Vault's `rotation_schedule` takes
//! them. Written here rather than taken from the `cron` crate, which wants
//! a seconds field and pulls in proc-macro and parser dependencies for a
//! few dozen lines of logic.

use chrono::{DateTime, Datelike, Duration, DurationRound, Timelike, Utc};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Both day fields restricted: a day matches if either matches (cron).
    day_or: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(s: &str, min: u32, max: u32, names: &[&str], base: u32) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + base);
    }
    let v: u32 = s.parse().map_err(|_| format!("invalid value {s:?}"))?;
    if v < min || v > max {
        return Err(format!("value {v} out of range {min}-{max}"));
    }
    Ok(v)
}

/// One field as a bit set, and whether it was `*` (unrestricted).
fn field(s: &str, min: u32, max: u32, names: &[&str], base: u32) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let star = s.starts_with('*') || s.starts_with('?');
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let st: u32 = st.parse().map_err(|_| format!("invalid step {st:?}"))?;
                if st == 0 {
                    return Err("step must be positive".into());
                }
                (r, st)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                value(a, min, max, names, base)?,
                value(b, min, max, names, base)?,
            )
        } else {
            let v = value(range, min, max, names, base)?;
            // `5/15` means from 5 to the end, every 15.
            (v, if part.contains('/') { max } else { v })
        };
        if lo > hi {
            return Err(format!("invalid range {range:?}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

impl Schedule {
    pub(crate) fn parse(expr: &str) -> Result<Schedule, String> {
        let expr = expr.trim();
        let expr = match expr {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            e => e,
        };
        let f: Vec<&str> = expr.split_whitespace().collect();
        let [mi, h, dom, mo, dow] = f[..] else {
            return Err(format!(
                "expected 5 fields (minute hour day month weekday), got {}",
                f.len()
            ));
        };
        let (minutes, _) = field(mi, 0, 59, &[], 0).map_err(|e| format!("minute: {e}"))?;
        let (hours, _) = field(h, 0, 23, &[], 0).map_err(|e| format!("hour: {e}"))?;
        let (days, dom_star) =
            field(dom, 1, 31, &[], 0).map_err(|e| format!("day of month: {e}"))?;
        let (months, _) = field(mo, 1, 12, &MONTHS, 1).map_err(|e| format!("month: {e}"))?;
        let (mut weekdays, dow_star) =
            field(dow, 0, 7, &DAYS, 0).map_err(|e| format!("day of week: {e}"))?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Schedule {
            minutes,
            hours,
            days,
            months,
            weekdays,
            day_or: !dom_star && !dow_star,
        })
    }

    fn day_matches(&self, t: &DateTime<Utc>) -> bool {
        let dom = self.days & (1 << t.day()) != 0;
        let dow = self.weekdays & (1 << t.weekday().num_days_from_sunday()) != 0;
        if self.day_or {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// The first matching minute strictly after `after`; `None` if there is
    /// none within five years (`0 0 30 2 *`).
    pub(crate) fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut t = after.duration_trunc(Duration::minutes(1)).ok()? + Duration::minutes(1);
        let limit = after + Duration::days(5 * 366);
        while t <= limit {
            if self.months & (1 << t.month()) == 0 {
                // First day of the next month.
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = t
                    .with_day(1)?
                    .with_hour(0)?
                    .with_minute(0)?
                    .with_year(y)?
                    .with_month(m)?;
                continue;
            }
            if !self.day_matches(&t) {
                t = t.with_hour(0)?.with_minute(0)? + Duration::days(1);
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t.with_minute(0)? + Duration::hours(1);
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t += Duration::minutes(1);
                continue;
            }
            return Some(t);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn next_times() {
        let s = Schedule::parse("*/15 * * * *").unwrap();
        assert_eq!(
            s.next_after(at(2024, 1, 1, 10, 7)),
            Some(at(2024, 1, 1, 10, 15))
        );
        assert_eq!(
            s.next_after(at(2024, 1, 1, 10, 45)),
            Some(at(2024, 1, 1, 11, 0))
        );
        let s = Schedule::parse("30 2 * * sun").unwrap();
        // 2024-01-01 is a Monday.
        assert_eq!(
            s.next_after(at(2024, 1, 1, 0, 0)),
            Some(at(2024, 1, 7, 2, 30))
        );
        let s = Schedule::parse("0 0 29 2 *").unwrap();
        assert_eq!(
            s.next_after(at(2025, 1, 1, 0, 0)),
            Some(at(2028, 2, 29, 0, 0))
        );
        let s = Schedule::parse("0 12 1 oct-dec *").unwrap();
        assert_eq!(
            s.next_after(at(2024, 6, 1, 0, 0)),
            Some(at(2024, 10, 1, 12, 0))
        );
        let s = Schedule::parse("@daily").unwrap();
        assert_eq!(
            s.next_after(at(2024, 12, 31, 23, 59)),
            Some(at(2025, 1, 1, 0, 0))
        );
        // Day of month OR day of week when both are given.
        let s = Schedule::parse("0 0 15 * 1").unwrap();
        assert_eq!(
            s.next_after(at(2024, 1, 2, 0, 0)),
            Some(at(2024, 1, 8, 0, 0))
        );
        assert!(Schedule::parse("0 0 30 2 *")
            .unwrap()
            .next_after(at(2024, 1, 1, 0, 0))
            .is_none());
    }

    #[test]
    fn rejects_bad_expressions() {
        for bad in [
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "x * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }
}
