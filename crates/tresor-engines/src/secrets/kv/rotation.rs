//! Rotation of KV v2 secrets with a grace period.
//!
//! A rule lives at its own endpoint, `rotation/<path>`, rather than in
//! `custom_metadata`: `custom_metadata` is free text that clients (and the
//! `kv metadata put` CLI) replace wholesale, so a rule kept there would be
//! lost by an unrelated metadata write, and a typed endpoint can refuse a
//! bad rule with an error naming the field. The rule and its run state are
//! one JSON record at storage key `rotation/<path>`, beside `metadata/<path>`.
//!
//! | path | operations |
//! | --- | --- |
//! | `rotation/<path>` | read; write `fields`, `password_policy`, `period`, `grace_period`; delete |
//! | `rotate/<path>` | write: rotate now, by the rule or by `fields` in the body |
//!
//! A rotation reads the latest version, replaces the named top-level fields
//! with passwords from `SystemView::generate_password`, and writes the new
//! version, the metadata and the rotation record in one `Storage::batch`:
//! it happens whole or not at all. With a `grace_period`, the version it
//! replaces is marked `grace_until` (never pruned by `max_versions` before
//! then) and soft-deleted at that moment, so consumers can read it with
//! `?version=N-1` until they have switched and not after. A zero
//! `grace_period` leaves the previous version as any write would.
//!
//! Consumers learn of the grace period from the secret itself: while it
//! runs, a read of the current version through `data/<path>` carries
//! `previous_version` and `grace_until` in its `metadata` (see
//! `v2::grace_of`), so a token that may read `data/<path>` needs no
//! access to `rotation/<path>`. A plain write after the rotation ends
//! that announcement (the rotated value is no longer the current one),
//! though the retired version stays readable by number until its grace
//! ends.
//!
//! `periodic` (every 5 s) rotates every rule whose persisted
//! `next_rotation` has passed, so schedules survive restarts. A failure
//! leaves the secret untouched, is logged without secret values, counted in
//! `tresor_kv_rotation_failures_total`, and kept as `last_rotation_error`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{de, Deserialize, Deserializer, Serialize};
use serde_json::Value;
use tresor_sdk::fields;
use tresor_sdk::storage::json_op;
use tresor_sdk::{BackendError, Map, Request, Response, Storage, StorageExt};

use super::{
    add_version, go_duration, load_config, load_meta, opt_ts, version_key, KvV2, VersionOut,
};

pub(super) const ROTATION_PREFIX: &str = "rotation/";
/// Most top-level fields one rule may regenerate.
const MAX_FIELDS: usize = 64;
/// A failed scheduled rotation is retried after this, or after its period
/// when that is shorter, so a broken rule does not flood the log.
const RETRY_AFTER: Duration = Duration::from_secs(300);

pub(super) fn rotation_key(path: &str) -> String {
    format!("{ROTATION_PREFIX}{path}")
}

/// A rule and the state of its last run, as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RotationEntry {
    /// False for a record that only tracks a manual rotation (no rule).
    #[serde(default)]
    configured: bool,
    #[serde(default)]
    fields: Vec<String>,
    #[serde(default)]
    password_policy: Option<String>,
    /// Zero: rotated only on request.
    #[serde(default, with = "fields::secs")]
    period: Duration,
    #[serde(default, with = "fields::secs")]
    grace_period: Duration,
    #[serde(default)]
    next_rotation: Option<DateTime<Utc>>,
    #[serde(default)]
    rotated_at: Option<DateTime<Utc>>,
    /// The version the last rotation wrote, and the one it replaced.
    #[serde(default)]
    rotated_version: u64,
    #[serde(default)]
    previous_version: u64,
    #[serde(default)]
    grace_until: Option<DateTime<Utc>>,
    #[serde(default)]
    last_rotation_error: Option<String>,
    #[serde(default)]
    last_error_time: Option<DateTime<Utc>>,
    #[serde(default)]
    consecutive_failures: u64,
}

impl RotationEntry {
    fn in_grace(&self, now: DateTime<Utc>) -> bool {
        self.previous_version > 0 && self.grace_until.is_some_and(|t| t > now)
    }
}

fn named<'de, D, T>(
    field: &'static str,
    inner: fn(D) -> Result<T, D::Error>,
    d: D,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    inner(d).map_err(|e: D::Error| de::Error::custom(format!("{field}: {e}")))
}

fn fields_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    named("fields", fields::opt_string_list, d)
}
fn period_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    named("period", fields::opt_duration, d)
}
fn grace_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    named("grace_period", fields::opt_duration, d)
}

/// Body of a `rotation/` write (fields left out keep their value) and of a
/// `rotate/` call (fields given override the rule for this run).
#[derive(Debug, Deserialize)]
struct RotationInput {
    #[serde(default, deserialize_with = "fields_field")]
    fields: Option<Vec<String>>,
    #[serde(default)]
    password_policy: Option<String>,
    #[serde(default, deserialize_with = "period_field")]
    period: Option<Duration>,
    #[serde(default, deserialize_with = "grace_field")]
    grace_period: Option<Duration>,
    #[serde(default)]
    schedule: Option<Value>,
}

fn check_fields(list: &[String]) -> Result<Vec<String>, BackendError> {
    if list.len() > MAX_FIELDS {
        return Err(BackendError::bad_request(format!(
            "fields: at most {MAX_FIELDS} fields may be rotated, got {}",
            list.len()
        )));
    }
    let mut out: Vec<String> = Vec::new();
    for f in list {
        let f = f.trim();
        if f.is_empty() || f.chars().any(char::is_control) {
            return Err(BackendError::bad_request(format!(
                "fields: invalid field name {f:?}"
            )));
        }
        if !out.iter().any(|o| o == f) {
            out.push(f.to_string());
        }
    }
    Ok(out)
}

fn check_policy_name(p: Option<String>) -> Result<Option<String>, BackendError> {
    match p.map(|s| s.trim().to_string()) {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) if s.contains('/') || s.chars().any(char::is_control) => Err(
            BackendError::bad_request(format!("password_policy: invalid policy name {s:?}")),
        ),
        Some(s) => Ok(Some(s)),
    }
}

fn add(now: DateTime<Utc>, d: Duration, field: &str) -> Result<DateTime<Utc>, BackendError> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .ok_or_else(|| BackendError::bad_request(format!("{field}: duration is out of range")))
}

#[derive(Debug, Serialize)]
struct RotationOut {
    fields: Vec<String>,
    password_policy: Option<String>,
    period: String,
    grace_period: String,
    next_rotation: String,
    rotated_at: String,
    rotated_version: u64,
    previous_version: u64,
    grace_until: String,
    in_grace_period: bool,
    last_rotation_error: Option<String>,
    last_error_time: String,
}

impl RotationOut {
    fn new(e: &RotationEntry, now: DateTime<Utc>) -> Self {
        RotationOut {
            fields: e.fields.clone(),
            password_policy: e.password_policy.clone(),
            period: go_duration(e.period),
            grace_period: go_duration(e.grace_period),
            next_rotation: opt_ts(&e.next_rotation),
            rotated_at: opt_ts(&e.rotated_at),
            rotated_version: e.rotated_version,
            previous_version: e.previous_version,
            grace_until: opt_ts(&e.grace_until),
            in_grace_period: e.in_grace(now),
            last_rotation_error: e.last_rotation_error.clone(),
            last_error_time: opt_ts(&e.last_error_time),
        }
    }
}

/// What one rotation run uses: the rule, possibly overridden by a request.
struct Plan {
    fields: Vec<String>,
    policy: Option<String>,
    grace: Duration,
}

async fn load_entry(
    storage: &dyn Storage,
    path: &str,
) -> Result<Option<RotationEntry>, BackendError> {
    Ok(storage.get_json(&rotation_key(path)).await?)
}

impl KvV2 {
    pub(super) async fn rotation_read(
        &self,
        path: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        match load_entry(storage, path).await? {
            None => Ok(None),
            Some(e) => Ok(Some(Response::with_data(&RotationOut::new(
                &e,
                Utc::now(),
            ))?)),
        }
    }

    pub(super) async fn rotation_write(
        &self,
        path: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: RotationInput = req.parse()?;
        if input.schedule.is_some() {
            return Err(BackendError::bad_request(
                "schedule: cron schedules are not supported; set 'period' (e.g. \"720h\")",
            ));
        }
        let _guard = self.lock(path).await;
        let now = Utc::now();
        let mut e = load_entry(storage, path).await?.unwrap_or_default();
        let was_configured = e.configured;
        if let Some(f) = &input.fields {
            e.fields = check_fields(f)?;
        }
        if e.fields.is_empty() {
            return Err(BackendError::bad_request(
                "fields: at least one field to rotate is required",
            ));
        }
        if input.password_policy.is_some() {
            e.password_policy = check_policy_name(input.password_policy)?;
        }
        let period_changed = input.period.is_some_and(|p| p != e.period);
        if let Some(p) = input.period {
            if !p.is_zero() && p < Duration::from_secs(1) {
                return Err(BackendError::bad_request(
                    "period: must be at least 1s, or 0 for manual rotation only",
                ));
            }
            e.period = p;
        }
        if let Some(g) = input.grace_period {
            e.grace_period = g;
        }
        if !e.period.is_zero() && e.grace_period > e.period {
            return Err(BackendError::bad_request(format!(
                "grace_period: must not exceed period ({} > {})",
                go_duration(e.grace_period),
                go_duration(e.period)
            )));
        }
        add(now, e.grace_period, "grace_period")?;
        e.configured = true;
        if e.period.is_zero() {
            e.next_rotation = None;
        } else if !was_configured || period_changed || e.next_rotation.is_none() {
            e.next_rotation = Some(add(now, e.period, "period")?);
        }
        storage.put_json(&rotation_key(path), &e).await?;
        Ok(Some(Response::with_data(&RotationOut::new(&e, now))?))
    }

    pub(super) async fn rotation_delete(
        &self,
        path: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let _guard = self.lock(path).await;
        storage.delete(&rotation_key(path)).await?;
        Ok(None)
    }

    /// `rotate/<path>`: rotate now.
    pub(super) async fn rotate_now(
        &self,
        path: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: RotationInput = req.parse()?;
        let over = RotateOverride {
            fields: input.fields.as_deref().map(check_fields).transpose()?,
            policy: check_policy_name(input.password_policy)?,
            grace: input.grace_period,
        };
        let (version, meta) = self.rotate(path, Some(over), storage).await?;
        let vm = meta
            .versions
            .get(&version)
            .ok_or_else(|| BackendError::Internal("kv: rotated version was pruned".into()))?;
        Ok(Some(Response::with_data(&VersionOut::new(
            &meta, version, vm,
        ))?))
    }

    /// Rotate every secret whose schedule is due; one failure does not stop
    /// the others.
    pub(super) async fn rotate_due(&self, storage: &dyn Storage) -> Result<(), BackendError> {
        let keys = storage.list_recursive(ROTATION_PREFIX).await?;
        let now = Utc::now();
        for key in keys {
            let Some(path) = key.strip_prefix(ROTATION_PREFIX) else {
                continue;
            };
            let due = match load_entry(storage, path).await {
                Ok(Some(e)) => {
                    e.configured && !e.period.is_zero() && e.next_rotation.is_some_and(|t| t <= now)
                }
                Ok(None) => false,
                Err(err) => {
                    tracing::warn!(mount = %self.mount_point, path = %path, error = %err, "kv rotation: cannot read rule");
                    false
                }
            };
            if due {
                // Already logged, counted and recorded by `rotate`.
                let _ = self.rotate(path, None, storage).await;
            }
        }
        Ok(())
    }

    /// One rotation run, under the secret's write lock. On failure the
    /// secret is untouched and the error is recorded in the rule.
    async fn rotate(
        &self,
        path: &str,
        over: Option<RotateOverride>,
        storage: &dyn Storage,
    ) -> Result<(u64, super::KeyMetadata), BackendError> {
        let _guard = self.lock(path).await;
        let now = Utc::now();
        let existing = load_entry(storage, path).await?;
        let mut entry = existing.clone().unwrap_or_default();
        let scheduled = over.is_none();
        let plan = match over {
            None => Plan {
                fields: entry.fields.clone(),
                policy: entry.password_policy.clone(),
                grace: entry.grace_period,
            },
            Some(o) => Plan {
                fields: o.fields.unwrap_or_else(|| entry.fields.clone()),
                policy: o.policy.or_else(|| entry.password_policy.clone()),
                grace: o.grace.unwrap_or(entry.grace_period),
            },
        };
        if plan.fields.is_empty() {
            // A request error, not a failed rotation: nothing was attempted.
            return Err(BackendError::bad_request(
                "fields: no rotation rule is configured for this secret; name the fields to regenerate in 'fields'",
            ));
        }
        match self
            .rotate_inner(path, &plan, &mut entry, storage, now)
            .await
        {
            Ok(done) => {
                metrics::counter!("tresor_kv_rotations_total").increment(1);
                tracing::info!(mount = %self.mount_point, path = %path, version = done.0, "kv secret rotated");
                Ok(done)
            }
            Err(err) => {
                metrics::counter!("tresor_kv_rotation_failures_total").increment(1);
                tracing::warn!(
                    mount = %self.mount_point,
                    path = %path,
                    scheduled,
                    error = %err,
                    "kv rotation failed; the current version is unchanged"
                );
                if let Some(mut e) = existing {
                    e.last_rotation_error = Some(err.to_string());
                    e.last_error_time = Some(now);
                    e.consecutive_failures += 1;
                    if scheduled {
                        let retry = if e.period.is_zero() {
                            RETRY_AFTER
                        } else {
                            e.period.min(RETRY_AFTER)
                        };
                        e.next_rotation = add(now, retry, "period").ok();
                    }
                    if let Err(se) = storage.put_json(&rotation_key(path), &e).await {
                        tracing::warn!(mount = %self.mount_point, path = %path, error = %se, "kv rotation: cannot record the failure");
                    }
                }
                Err(err)
            }
        }
    }

    async fn rotate_inner(
        &self,
        path: &str,
        plan: &Plan,
        entry: &mut RotationEntry,
        storage: &dyn Storage,
        now: DateTime<Utc>,
    ) -> Result<(u64, super::KeyMetadata), BackendError> {
        let system = self.system.as_ref().ok_or_else(|| {
            BackendError::Internal("kv: password generation is not available to this mount".into())
        })?;
        let config = load_config(storage).await?;
        let mut meta = load_meta(storage, path).await?.ok_or_else(|| {
            BackendError::bad_request("cannot rotate: no secret exists at this path")
        })?;
        let previous = meta.current_version;
        let live = meta.versions.get(&previous).is_some_and(|v| v.is_live(now));
        if !live {
            return Err(BackendError::bad_request(
                "cannot rotate: the current version is deleted or destroyed",
            ));
        }
        let mut data: Map = storage
            .get_json(&version_key(path, previous))
            .await?
            .ok_or_else(|| {
                BackendError::Internal(format!(
                    "kv: version {previous} of a secret has metadata but no data"
                ))
            })?;
        for f in &plan.fields {
            let pw = system.generate_password(plan.policy.as_deref()).await?;
            data.insert(f.clone(), Value::String(pw));
        }
        let grace_until = if plan.grace.is_zero() {
            None
        } else {
            Some(add(now, plan.grace, "grace_period")?)
        };
        if let (Some(until), Some(vm)) = (grace_until, meta.versions.get_mut(&previous)) {
            vm.grace_until = Some(until);
            // Retired at the end of the grace period, or earlier if a
            // `delete_version_after` already said so.
            vm.deletion_time = Some(vm.deletion_time.map_or(until, |t| t.min(until)));
        }
        let (version, mut ops) = add_version(path, &config, &mut meta, &data, now)?;
        entry.rotated_at = Some(now);
        entry.rotated_version = version;
        entry.previous_version = if grace_until.is_some() { previous } else { 0 };
        entry.grace_until = grace_until;
        entry.last_rotation_error = None;
        entry.last_error_time = None;
        entry.consecutive_failures = 0;
        if entry.configured && !entry.period.is_zero() {
            entry.next_rotation = Some(add(now, entry.period, "period")?);
        }
        ops.push(json_op(rotation_key(path), entry)?);
        storage.batch(ops).await?;
        Ok((version, meta))
    }
}

/// What a `rotate/` request overrides for this run.
struct RotateOverride {
    fields: Option<Vec<String>>,
    policy: Option<String>,
    grace: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_trimmed_and_deduplicated() {
        let f = check_fields(&["a".into(), " a ".into(), "b".into()]).expect("ok");
        assert_eq!(f, vec!["a".to_string(), "b".to_string()]);
        assert!(check_fields(&["".into()]).is_err());
    }

    #[test]
    fn policy_names_are_checked() {
        assert_eq!(check_policy_name(Some(" ".into())).expect("ok"), None);
        assert!(check_policy_name(Some("a/b".into())).is_err());
    }
}
