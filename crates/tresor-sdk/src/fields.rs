//! Lenient field decoders for request structs, matching what Vault accepts:
//! durations as seconds or Go-style strings (`"1h30m"`), booleans and
//! integers as strings, lists as arrays or comma-separated strings.
//!
//! Use with `#[serde(default, deserialize_with = "fields::duration")]`.

use std::time::Duration;

use serde::{de, Deserialize, Deserializer};
use serde_json::Value;

/// Parse a Vault duration: integer seconds, or a sequence of
/// `<number><unit>` with units `ns us ms s m h d`; `""` is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Duration::ZERO);
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {s:?} is missing a unit"))?;
        if num_end == 0 {
            return Err(format!("invalid duration {s:?}"));
        }
        let n: f64 = rest[..num_end]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            u => return Err(format!("unknown unit {u:?} in duration {s:?}")),
        };
        total += n * mult;
        rest = &rest[unit_end..];
    }
    if !total.is_finite() || !(0.0..=1e12).contains(&total) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(total))
}

fn duration_from_value(v: &Value) -> Result<Duration, String> {
    match v {
        Value::Null => Ok(Duration::ZERO),
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0 && *f < 1e12)
                    .map(Duration::from_secs_f64)
            })
            .ok_or_else(|| format!("invalid duration {n}")),
        Value::String(s) => parse_duration(s),
        other => Err(format!("invalid duration {other}")),
    }
}

pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = Value::deserialize(d)?;
    duration_from_value(&v).map_err(de::Error::custom)
}

pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    duration_from_value(&v).map(Some).map_err(de::Error::custom)
}

pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Value::deserialize(d)? {
        Value::Bool(b) => Ok(b),
        Value::Null => Ok(false),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "t" => Ok(true),
            "false" | "0" | "f" | "" => Ok(false),
            _ => Err(de::Error::custom(format!("invalid boolean {s:?}"))),
        },
        Value::Number(n) => Ok(n.as_u64().unwrap_or(0) != 0),
        other => Err(de::Error::custom(format!("invalid boolean {other}"))),
    }
}

pub fn opt_boolean<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    boolean(v).map(Some).map_err(de::Error::custom)
}

pub fn uint<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(0),
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| de::Error::custom(format!("expected a non-negative integer, got {n}"))),
        Value::String(s) if s.is_empty() => Ok(0),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| de::Error::custom(format!("expected a non-negative integer, got {s:?}"))),
        other => Err(de::Error::custom(format!(
            "expected a non-negative integer, got {other}"
        ))),
    }
}

pub fn opt_uint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    uint(v).map(Some).map_err(de::Error::custom)
}

pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(0),
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| de::Error::custom(format!("expected an integer, got {n}"))),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| de::Error::custom(format!("expected an integer, got {s:?}"))),
        other => Err(de::Error::custom(format!(
            "expected an integer, got {other}"
        ))),
    }
}

fn list_from_value(v: Value) -> Result<Vec<String>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(s
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect()),
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.trim().to_string()),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(format!("expected a string in list, got {other}")),
            })
            .collect(),
        other => Err(format!("expected a list of strings, got {other}")),
    }
}

pub fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    list_from_value(Value::deserialize(d)?).map_err(de::Error::custom)
}

pub fn opt_string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    list_from_value(v).map(Some).map_err(de::Error::custom)
}

/// Serialize/deserialize a `Duration` as whole seconds (storage format).
pub mod secs {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        super::duration(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("768h"), Ok(Duration::from_secs(768 * 3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(""), Ok(Duration::ZERO));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999999h").is_err());
    }

    #[test]
    fn lists() {
        assert_eq!(
            list_from_value(Value::String("a, b,,c".into())),
            Ok(vec!["a".to_string(), "b".into(), "c".into()])
        );
        assert!(list_from_value(Value::Bool(true)).is_err());
    }
}
