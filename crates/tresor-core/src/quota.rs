//! Rate-limit quotas (`sys/quotas/*`) and the built-in brake on failed
//! logins.
//!
//! Like Vault, a quota is a token bucket per client IP, the most specific
//! path wins, and a client that empties its bucket may be blocked for
//! `block_interval`. Independently of any configured quota, failed logins
//! from one address drain a bucket of their own, so a password brute force
//! is throttled even on a server nobody configured; successful logins never
//! touch it, so legitimate login throughput is unaffected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tresor_sdk::{fields, Storage, StorageExt};

use crate::CoreError;

/// Paths never rate limited (Vault's defaults): the operator must always be
/// able to see and unseal the server.
const DEFAULT_EXEMPT: &[&str] = &[
    "sys/generate-recovery-token/attempt",
    "sys/generate-recovery-token/update",
    "sys/generate-root/attempt",
    "sys/generate-root/update",
    "sys/health",
    "sys/seal-status",
    "sys/unseal",
];

/// Buckets beyond this many clients are pruned (oldest idle first) so an
/// attacker rotating source addresses cannot grow memory without bound.
const MAX_BUCKETS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RateLimitQuota {
    pub(crate) name: String,
    /// Empty = every path; else a mount or path prefix.
    #[serde(default)]
    pub(crate) path: String,
    #[serde(default)]
    pub(crate) role: String,
    /// Requests per `interval`.
    pub(crate) rate: f64,
    /// Seconds.
    pub(crate) interval: u64,
    /// Seconds a client is blocked after emptying its bucket; 0 = not blocked.
    #[serde(default)]
    pub(crate) block_interval: u64,
}

/// The parameters of `sys/quotas/rate-limit/<name>` as sent.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RateLimitInput {
    #[serde(default)]
    pub(crate) path: Option<String>,
    #[serde(default)]
    pub(crate) role: Option<String>,
    #[serde(default)]
    pub(crate) rate: Option<f64>,
    #[serde(default, deserialize_with = "fields::opt_duration")]
    pub(crate) interval: Option<Duration>,
    #[serde(default, deserialize_with = "fields::opt_duration")]
    pub(crate) block_interval: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct QuotaConfig {
    #[serde(default, deserialize_with = "fields::string_list")]
    pub(crate) rate_limit_exempt_paths: Vec<String>,
    #[serde(default, deserialize_with = "fields::boolean")]
    pub(crate) enable_rate_limit_audit_logging: bool,
    #[serde(default, deserialize_with = "fields::boolean")]
    pub(crate) enable_rate_limit_response_headers: bool,
    /// tresor's own: failed logins per second allowed per client address
    /// (refill), and the burst. 0 = the defaults.
    #[serde(default)]
    pub(crate) login_failure_rate: f64,
    #[serde(default)]
    pub(crate) login_failure_burst: f64,
}

const DEFAULT_LOGIN_FAILURE_RATE: f64 = 10.0;
const DEFAULT_LOGIN_FAILURE_BURST: f64 = 50.0;

struct Bucket {
    tokens: f64,
    last: Instant,
    blocked_until: Option<Instant>,
}

impl Bucket {
    fn full(capacity: f64, now: Instant) -> Self {
        Bucket {
            tokens: capacity,
            last: now,
            blocked_until: None,
        }
    }

    /// Refill at `per_sec` up to `capacity`, then take one token if there is.
    fn take(&mut self, capacity: f64, per_sec: f64, now: Instant) -> bool {
        if let Some(until) = self.blocked_until {
            if now < until {
                return false;
            }
            self.blocked_until = None;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

type BucketMap = HashMap<(Arc<str>, IpAddr), Bucket>;

pub(crate) struct Quotas {
    storage: Arc<dyn Storage>,
    /// Sorted most specific (longest path) first.
    rules: RwLock<Vec<Arc<RateLimitQuota>>>,
    config: RwLock<QuotaConfig>,
    buckets: Mutex<BucketMap>,
    login_failures: Mutex<HashMap<IpAddr, Bucket>>,
}

fn prune<K: Clone + Eq + std::hash::Hash>(map: &mut HashMap<K, Bucket>) {
    if map.len() < MAX_BUCKETS {
        return;
    }
    let mut ages: Vec<(Instant, K)> = map.iter().map(|(k, b)| (b.last, k.clone())).collect();
    ages.sort_by_key(|(t, _)| *t);
    for (_, k) in ages.into_iter().take(MAX_BUCKETS / 10) {
        map.remove(&k);
    }
}

impl Quotas {
    pub(crate) async fn load(storage: Arc<dyn Storage>) -> Result<Quotas, CoreError> {
        let config: QuotaConfig = storage.get_json("config").await?.unwrap_or_default();
        let mut rules = Vec::new();
        for name in storage.list("rate-limit/").await? {
            if let Some(q) = storage
                .get_json::<RateLimitQuota>(&format!("rate-limit/{name}"))
                .await?
            {
                rules.push(Arc::new(q));
            }
        }
        let q = Quotas {
            storage,
            rules: RwLock::new(Vec::new()),
            config: RwLock::new(config),
            buckets: Mutex::new(HashMap::new()),
            login_failures: Mutex::new(HashMap::new()),
        };
        q.set_rules(rules);
        Ok(q)
    }

    fn set_rules(&self, mut rules: Vec<Arc<RateLimitQuota>>) {
        rules.sort_by(|a, b| b.path.len().cmp(&a.path.len()).then(a.name.cmp(&b.name)));
        *self.rules.write() = rules;
        self.buckets.lock().clear();
    }

    fn exempt(&self, path: &str) -> bool {
        let p = path.trim_end_matches('/');
        let cfg = self.config.read();
        if cfg.rate_limit_exempt_paths.is_empty() {
            DEFAULT_EXEMPT.contains(&p)
        } else {
            cfg.rate_limit_exempt_paths
                .iter()
                .any(|e| e.trim_matches('/') == p)
        }
    }

    /// Admit or refuse a request (429) under the configured quotas.
    pub(crate) fn check(
        &self,
        path: &str,
        role: Option<&str>,
        addr: Option<IpAddr>,
    ) -> Result<(), CoreError> {
        let Some(addr) = addr else { return Ok(()) };
        let rules = self.rules.read();
        if rules.is_empty() || self.exempt(path) {
            return Ok(());
        }
        let Some(rule) = rules.iter().find(|r| {
            (r.path.is_empty() || path.starts_with(&r.path) || path == r.path.trim_end_matches('/'))
                && (r.role.is_empty() || role == Some(r.role.as_str()))
        }) else {
            return Ok(());
        };
        let now = Instant::now();
        let per_sec = rule.rate / rule.interval.max(1) as f64;
        let mut buckets = self.buckets.lock();
        prune(&mut buckets);
        let key: (Arc<str>, IpAddr) = (Arc::from(rule.name.as_str()), addr);
        let bucket = buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(rule.rate, now));
        if bucket.take(rule.rate, per_sec, now) {
            return Ok(());
        }
        if rule.block_interval > 0 && bucket.blocked_until.is_none() {
            bucket.blocked_until = Some(now + Duration::from_secs(rule.block_interval));
        }
        Err(CoreError::TooManyRequests(format!(
            "request path {path:?}: rate limit quota exceeded"
        )))
    }

    fn login_limits(&self) -> (f64, f64) {
        let c = self.config.read();
        let rate = if c.login_failure_rate > 0.0 {
            c.login_failure_rate
        } else {
            DEFAULT_LOGIN_FAILURE_RATE
        };
        let burst = if c.login_failure_burst > 0.0 {
            c.login_failure_burst
        } else {
            DEFAULT_LOGIN_FAILURE_BURST
        };
        (rate, burst)
    }

    /// May this address try to log in now? Refused while its failures have
    /// drained the bucket.
    pub(crate) fn check_login(&self, addr: Option<IpAddr>) -> Result<(), CoreError> {
        let Some(addr) = addr else { return Ok(()) };
        let (rate, burst) = self.login_limits();
        let now = Instant::now();
        let mut m = self.login_failures.lock();
        let Some(b) = m.get_mut(&addr) else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        if (b.tokens + elapsed * rate).min(burst) >= 1.0 {
            Ok(())
        } else {
            Err(CoreError::TooManyRequests(
                "too many failed logins from this address; try again later".into(),
            ))
        }
    }

    /// A login from this address failed: spend from its bucket.
    pub(crate) fn login_failed(&self, addr: Option<IpAddr>) {
        let Some(addr) = addr else { return };
        let (rate, burst) = self.login_limits();
        let now = Instant::now();
        let mut m = self.login_failures.lock();
        prune(&mut m);
        let b = m.entry(addr).or_insert_with(|| Bucket::full(burst, now));
        let _ = b.take(burst, rate, now);
    }

    pub(crate) async fn put(&self, name: &str, input: RateLimitInput) -> Result<(), CoreError> {
        if name.is_empty() || name.contains('/') {
            return Err(CoreError::BadRequest("invalid quota name".into()));
        }
        let existing = self.get(name);
        let rate = input
            .rate
            .or(existing.as_ref().map(|q| q.rate))
            .unwrap_or(0.0);
        if !rate.is_finite() || rate <= 0.0 {
            return Err(CoreError::BadRequest("'rate' must be positive".into()));
        }
        let q = RateLimitQuota {
            name: name.to_string(),
            path: input
                .path
                .or(existing.as_ref().map(|q| q.path.clone()))
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            role: input
                .role
                .or(existing.as_ref().map(|q| q.role.clone()))
                .unwrap_or_default(),
            rate,
            interval: input
                .interval
                .map(|d| d.as_secs().max(1))
                .or(existing.as_ref().map(|q| q.interval))
                .unwrap_or(1),
            block_interval: input
                .block_interval
                .map(|d| d.as_secs())
                .or(existing.as_ref().map(|q| q.block_interval))
                .unwrap_or(0),
        };
        self.storage
            .put_json(&format!("rate-limit/{name}"), &q)
            .await?;
        let mut rules: Vec<Arc<RateLimitQuota>> = self
            .rules
            .read()
            .iter()
            .filter(|r| r.name != name)
            .cloned()
            .collect();
        rules.push(Arc::new(q));
        self.set_rules(rules);
        Ok(())
    }

    pub(crate) fn get(&self, name: &str) -> Option<RateLimitQuota> {
        self.rules
            .read()
            .iter()
            .find(|r| r.name == name)
            .map(|r| (**r).clone())
    }

    pub(crate) fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.rules.read().iter().map(|r| r.name.clone()).collect();
        v.sort();
        v
    }

    pub(crate) async fn delete(&self, name: &str) -> Result<(), CoreError> {
        self.storage.delete(&format!("rate-limit/{name}")).await?;
        let rules: Vec<Arc<RateLimitQuota>> = self
            .rules
            .read()
            .iter()
            .filter(|r| r.name != name)
            .cloned()
            .collect();
        self.set_rules(rules);
        Ok(())
    }

    pub(crate) fn config(&self) -> QuotaConfig {
        self.config.read().clone()
    }

    pub(crate) async fn set_config(&self, c: QuotaConfig) -> Result<(), CoreError> {
        self.storage.put_json("config", &c).await?;
        *self.config.write() = c;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bucket_per_address_and_block_interval() {
        let q = Quotas::load(Arc::new(tresor_sdk::testing::MemoryStorage::new()))
            .await
            .expect("load");
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        q.put(
            "kv",
            RateLimitInput {
                path: Some("secret/".into()),
                rate: Some(3.0),
                block_interval: Some(Duration::from_secs(60)),
                ..Default::default()
            },
        )
        .await
        .expect("put");
        for _ in 0..3 {
            q.check("secret/data/x", None, Some(a))
                .expect("within rate");
        }
        assert!(matches!(
            q.check("secret/data/x", None, Some(a)),
            Err(CoreError::TooManyRequests(_))
        ));
        // Blocked, other addresses and other paths are not.
        assert!(q.check("secret/data/x", None, Some(a)).is_err());
        q.check("secret/data/x", None, Some(b))
            .expect("other address");
        q.check("other/x", None, Some(a)).expect("other path");
        q.check("sys/health", None, Some(a)).expect("exempt");
        q.delete("kv").await.expect("delete");
        q.check("secret/data/x", None, Some(a)).expect("quota gone");
    }

    #[tokio::test]
    async fn failed_logins_are_throttled_successes_are_not() {
        let q = Quotas::load(Arc::new(tresor_sdk::testing::MemoryStorage::new()))
            .await
            .expect("load");
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        for _ in 0..10_000 {
            q.check_login(Some(a)).expect("no failures yet");
        }
        for _ in 0..(DEFAULT_LOGIN_FAILURE_BURST as usize + 5) {
            q.login_failed(Some(a));
        }
        assert!(matches!(
            q.check_login(Some(a)),
            Err(CoreError::TooManyRequests(_))
        ));
        q.check_login(Some("10.0.0.9".parse().expect("ip")))
            .expect("other address");
    }
}
