//! Login lockout shared by approle and userpass: after `lockout_threshold`
//! failed logins, none less than `lockout_counter_reset` apart, the
//! principal (role ID, user name) is locked for `lockout_duration`.
//!
//! Vault configures this through the mount's `user_lockout_config`; here it
//! lives in the backend at `config/lockout` (same field names). Failure
//! counters stay in memory: a failed login must leave nothing in storage,
//! and only principals that exist are tracked, so the map is bounded by the
//! number of roles or users and guessing unknown names costs no memory.
//! A locked login gets the same answer as a bad credential; only the
//! administrator sees the state (`lockout/<name>`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use parking_lot::{Mutex, RwLock};
use serde::{de, Deserialize, Deserializer, Serialize};
use serde_json::json;
use tresor_sdk::{fields, BackendError, Map, Request, Response, Storage, StorageExt};

const CONFIG_KEY: &str = "config/lockout";

/// The stored configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LockoutConfig {
    pub(crate) lockout_threshold: u64,
    #[serde(with = "fields::secs")]
    pub(crate) lockout_duration: Duration,
    #[serde(with = "fields::secs")]
    pub(crate) lockout_counter_reset: Duration,
    pub(crate) disable_lockout: bool,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        LockoutConfig {
            lockout_threshold: 5,
            lockout_duration: Duration::from_secs(15 * 60),
            lockout_counter_reset: Duration::from_secs(15 * 60),
            disable_lockout: false,
        }
    }
}

macro_rules! named {
    ($name:ident, $field:literal, $inner:path, $ty:ty) => {
        fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            $inner(d).map_err(|e: D::Error| de::Error::custom(format!("{}: {e}", $field)))
        }
    };
}
named!(
    threshold_f,
    "lockout_threshold",
    fields::opt_uint,
    Option<u64>
);
named!(
    duration_f,
    "lockout_duration",
    fields::opt_duration,
    Option<Duration>
);
named!(
    reset_f,
    "lockout_counter_reset",
    fields::opt_duration,
    Option<Duration>
);
named!(
    disable_f,
    "disable_lockout",
    fields::opt_boolean,
    Option<bool>
);

#[derive(Debug, Deserialize)]
struct ConfigInput {
    #[serde(default, deserialize_with = "threshold_f")]
    lockout_threshold: Option<u64>,
    #[serde(default, deserialize_with = "duration_f")]
    lockout_duration: Option<Duration>,
    #[serde(default, deserialize_with = "reset_f")]
    lockout_counter_reset: Option<Duration>,
    #[serde(default, deserialize_with = "disable_f")]
    disable_lockout: Option<bool>,
}

#[derive(Debug, Clone)]
struct Failures {
    count: u64,
    last_failure: Instant,
    locked_until: Option<Instant>,
    locked_at: Option<chrono::DateTime<Utc>>,
}

/// Per-mount lockout state.
#[derive(Default)]
pub(crate) struct Lockout {
    config: RwLock<Option<LockoutConfig>>,
    failures: Mutex<HashMap<String, Failures>>,
}

impl Lockout {
    pub(crate) async fn config(
        &self,
        storage: &dyn Storage,
    ) -> Result<LockoutConfig, BackendError> {
        if let Some(c) = self.config.read().clone() {
            return Ok(c);
        }
        let c: LockoutConfig = storage.get_json(CONFIG_KEY).await?.unwrap_or_default();
        *self.config.write() = Some(c.clone());
        Ok(c)
    }

    /// `config/lockout` read.
    pub(crate) async fn read_config(
        &self,
        storage: &dyn Storage,
    ) -> Result<Response, BackendError> {
        let c = self.config(storage).await?;
        let mut m = Map::new();
        m.insert("lockout_threshold".into(), json!(c.lockout_threshold));
        m.insert(
            "lockout_duration".into(),
            json!(c.lockout_duration.as_secs()),
        );
        m.insert(
            "lockout_counter_reset".into(),
            json!(c.lockout_counter_reset.as_secs()),
        );
        m.insert("disable_lockout".into(), json!(c.disable_lockout));
        Ok(Response::data(m))
    }

    /// `config/lockout` write: only the fields present change.
    pub(crate) async fn write_config(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<(), BackendError> {
        let i: ConfigInput = req.parse()?;
        let mut c = self.config(storage).await?;
        if let Some(v) = i.lockout_threshold {
            c.lockout_threshold = v;
        }
        if let Some(v) = i.lockout_duration {
            c.lockout_duration = v;
        }
        if let Some(v) = i.lockout_counter_reset {
            c.lockout_counter_reset = v;
        }
        if let Some(v) = i.disable_lockout {
            c.disable_lockout = v;
        }
        if c.lockout_threshold == 0 && !c.disable_lockout {
            return Err(BackendError::bad_request(
                "lockout_threshold: must be at least 1 (or set disable_lockout)",
            ));
        }
        storage.put_json(CONFIG_KEY, &c).await?;
        *self.config.write() = Some(c);
        Ok(())
    }

    /// Whether `key` is locked now. An expired lock is forgotten.
    pub(crate) fn is_locked(&self, cfg: &LockoutConfig, key: &str) -> bool {
        if cfg.disable_lockout {
            return false;
        }
        let mut f = self.failures.lock();
        let now = Instant::now();
        match f.get(key).and_then(|e| e.locked_until) {
            Some(until) if until > now => true,
            Some(_) => {
                f.remove(key);
                false
            }
            None => false,
        }
    }

    pub(crate) fn record_failure(&self, cfg: &LockoutConfig, key: &str) {
        if cfg.disable_lockout {
            return;
        }
        let now = Instant::now();
        let mut f = self.failures.lock();
        let e = f.entry(key.to_string()).or_insert(Failures {
            count: 0,
            last_failure: now,
            locked_until: None,
            locked_at: None,
        });
        if e.locked_until.is_some_and(|u| u > now) {
            return;
        }
        if e.locked_until.is_some()
            || now.duration_since(e.last_failure) > cfg.lockout_counter_reset
        {
            e.count = 0;
            e.locked_until = None;
            e.locked_at = None;
        }
        e.count += 1;
        e.last_failure = now;
        if e.count >= cfg.lockout_threshold {
            e.locked_until = Some(now + cfg.lockout_duration);
            e.locked_at = Some(Utc::now());
            tracing::warn!(principal = %key, "login locked out after repeated failures");
        }
    }

    pub(crate) fn record_success(&self, key: &str) {
        self.failures.lock().remove(key);
    }

    /// The administrator's view of one principal.
    pub(crate) fn status(&self, key: &str) -> Map {
        let now = Instant::now();
        let f = self.failures.lock();
        let e = f.get(key);
        let until = e.and_then(|e| e.locked_until).filter(|u| *u > now);
        let mut m = Map::new();
        m.insert("locked".into(), json!(until.is_some()));
        m.insert(
            "failed_login_attempts".into(),
            json!(e.map(|e| e.count).unwrap_or(0)),
        );
        m.insert(
            "lockout_remaining_seconds".into(),
            json!(until.map(|u| u.duration_since(now).as_secs()).unwrap_or(0)),
        );
        m.insert(
            "locked_at".into(),
            match (until, e.and_then(|e| e.locked_at)) {
                (Some(_), Some(t)) => json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                _ => serde_json::Value::Null,
            },
        );
        m
    }

    /// Clear a lock and its failure count (administrator).
    pub(crate) fn unlock(&self, key: &str) {
        self.failures.lock().remove(key);
    }
}
