//! The Transit secrets engine: cryptography as a service on Vault's paths,
//! so that hvac's `secrets.transit`, vaultrs and the vault CLI work as is.
//!
//! | path | operations |
//! | --- | --- |
//! | `keys` | list |
//! | `keys/<name>` | create, read, delete (with `deletion_allowed`) |
//! | `keys/<name>/config`, `/rotate`, `/trim` | write |
//! | `export/<kind>/<name>[/<version>]` | read (private kinds need `exportable`) |
//! | `backup/<name>`, `restore[/<name>]` | read, write (need `allow_plaintext_backup`) |
//! | `encrypt/<name>`, `decrypt/<name>`, `rewrap/<name>` | write, single or `batch_input` |
//! | `datakey/{plaintext,wrapped}/<name>` | write |
//! | `sign/<name>[/<hash>]`, `verify/<name>[/<hash>]`, `hmac/<name>[/<hash>]` | write |
//! | `random[/<source>][/<bytes>]`, `hash[/<algorithm>]` | write |
//!
//! Storage: one JSON record per key at `policy/<name>` holding every
//! version's material (see [`policy::StoredPolicy`]).
//!
//! Keys are cached decoded (with their AEAD ciphers built) in memory; a
//! write to a key replaces its cache entry under the same per-key lock that
//! serialises writers, and a cache miss loads under that lock too, so a
//! reader can never put back a copy older than the last write.
//!
//! Nonce safety: each AEAD key version counts its encryptions. Storage
//! holds a *reservation* — an upper bound written before the encryptions it
//! covers happen — raised `persist_every` at a time, so a crash can only
//! over-count. A version that reaches `encryption_limit` (just under 2^32,
//! NIST's bound for random 96-bit nonces) makes the key rotate first.

mod ops;
mod policy;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{Mutex, MutexGuard};
use tresor_sdk::paths::pattern::NAME;
use tresor_sdk::{
    fields, Backend, BackendConfig, BackendError, Map, Operation, PathTable, Request, Response,
    Storage,
};
use zeroize::Zeroizing;

use policy::{KeyType, Policy, StoredPolicy, StoredVersion};

const POLICY_PREFIX: &str = "policy/";
const LOCK_SHARDS: usize = 64;
const MIN_AUTO_ROTATE: Duration = Duration::from_secs(3600);

/// `transit`: the factory the registry names.
pub fn factory(_conf: &BackendConfig) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(Arc::new(Transit::new()))
}

/// Bounds on encryptions under one key version.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Encryptions one AEAD key version may make before the key rotates.
    pub encryption_limit: u64,
    /// How many encryptions each storage write of the count reserves.
    pub persist_every: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            encryption_limit: (1u64 << 32) - 1,
            persist_every: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    List,
    Key,
    Config,
    Rotate,
    Trim,
    Export,
    Backup,
    Restore,
    Encrypt,
    Decrypt,
    Rewrap,
    Datakey,
    Sign,
    Verify,
    Hmac,
    Random,
    Hash,
}

/// The Transit backend.
pub struct Transit {
    routes: PathTable<Route>,
    cache: RwLock<HashMap<String, Arc<Policy>>>,
    locks: Vec<Mutex<()>>,
    limits: Limits,
}

impl Default for Transit {
    fn default() -> Self {
        Self::new()
    }
}

impl Transit {
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// A backend with other encryption bounds (tests use small ones).
    pub fn with_limits(limits: Limits) -> Self {
        let alg = r"[\w-]+";
        let routes: Vec<(String, Route)> = vec![
            ("keys/?".into(), Route::List),
            (format!("keys/(?P<name>{NAME})/config"), Route::Config),
            (format!("keys/(?P<name>{NAME})/rotate"), Route::Rotate),
            (format!("keys/(?P<name>{NAME})/trim"), Route::Trim),
            (format!("keys/(?P<name>{NAME})"), Route::Key),
            (
                format!(
                    "export/(?P<kind>encryption-key|signing-key|hmac-key|public-key)/(?P<name>{NAME})(?:/(?P<version>latest|\\d+))?"
                ),
                Route::Export,
            ),
            (format!("backup/(?P<name>{NAME})"), Route::Backup),
            (format!("restore(?:/(?P<name>{NAME}))?"), Route::Restore),
            (format!("encrypt/(?P<name>{NAME})"), Route::Encrypt),
            (format!("decrypt/(?P<name>{NAME})"), Route::Decrypt),
            (format!("rewrap/(?P<name>{NAME})"), Route::Rewrap),
            (
                format!("datakey/(?P<plaintext>plaintext|wrapped)/(?P<name>{NAME})"),
                Route::Datakey,
            ),
            (format!("sign/(?P<name>{NAME})(?:/(?P<alg>{alg}))?"), Route::Sign),
            (format!("verify/(?P<name>{NAME})(?:/(?P<alg>{alg}))?"), Route::Verify),
            (format!("hmac/(?P<name>{NAME})(?:/(?P<alg>{alg}))?"), Route::Hmac),
            (
                r"random(?:/(?P<source>platform|seal|all))?(?:/(?P<bytes>\d+))?".into(),
                Route::Random,
            ),
            (format!("hash(?:/(?P<alg>{alg}))?"), Route::Hash),
        ];
        let table: Vec<(&str, Route)> = routes.iter().map(|(p, r)| (p.as_str(), *r)).collect();
        Transit {
            routes: PathTable::new(&table),
            cache: RwLock::new(HashMap::new()),
            locks: (0..LOCK_SHARDS).map(|_| Mutex::new(())).collect(),
            limits,
        }
    }

    async fn lock(&self, name: &str) -> MutexGuard<'_, ()> {
        // Stable only for this instance's life, which is all a shard needs.
        let mut h = DefaultHasher::new();
        name.hash(&mut h);
        self.locks[(h.finish() % LOCK_SHARDS as u64) as usize]
            .lock()
            .await
    }

    fn cached(&self, name: &str) -> Option<Arc<Policy>> {
        self.cache.read().get(name).cloned()
    }

    /// The key, from the cache or (first use) from storage.
    async fn get_policy(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Arc<Policy>>, BackendError> {
        if let Some(p) = self.cached(name) {
            return Ok(Some(p));
        }
        let _guard = self.lock(name).await;
        self.load_locked(name, storage).await
    }

    /// Like `get_policy`, for a caller that holds the key's lock.
    async fn load_locked(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Arc<Policy>>, BackendError> {
        if let Some(p) = self.cached(name) {
            return Ok(Some(p));
        }
        let Some(bytes) = storage.get(&policy_key(name)).await? else {
            return Ok(None);
        };
        let bytes = Zeroizing::new(bytes);
        let rec: StoredPolicy = serde_json::from_slice(&bytes)
            .map_err(|e| policy::internal(&format!("stored key {name:?} is corrupt: {e}")))?;
        let p = Arc::new(Policy::new(rec, None)?);
        self.cache.write().insert(name.to_string(), p.clone());
        Ok(Some(p))
    }

    /// Writes a key and makes it the cached copy. Caller holds the lock.
    async fn store_locked(
        &self,
        name: &str,
        storage: &dyn Storage,
        p: Policy,
    ) -> Result<Arc<Policy>, BackendError> {
        write_stored(storage, name, &p.to_stored(None)).await?;
        let p = Arc::new(p);
        self.cache.write().insert(name.to_string(), p.clone());
        Ok(p)
    }

    /// Read-modify-write of an existing key under its lock.
    async fn update<F>(
        &self,
        name: &str,
        storage: &dyn Storage,
        f: F,
    ) -> Result<Option<Arc<Policy>>, BackendError>
    where
        F: FnOnce(&mut StoredPolicy) -> Result<(), BackendError> + Send,
    {
        let _guard = self.lock(name).await;
        let Some(cur) = self.load_locked(name, storage).await? else {
            return Ok(None);
        };
        let mut rec = cur.to_stored(None);
        f(&mut rec)?;
        let new = Policy::new(rec, Some(&cur))?;
        self.store_locked(name, storage, new).await.map(Some)
    }

    /// Creates a key unless it exists; answers the key either way.
    async fn create(
        &self,
        name: &str,
        storage: &dyn Storage,
        spec: KeySpec,
    ) -> Result<Arc<Policy>, BackendError> {
        spec.validate()?;
        let _guard = self.lock(name).await;
        if let Some(p) = self.load_locked(name, storage).await? {
            return Ok(p);
        }
        let now = Utc::now();
        let mut rec = StoredPolicy {
            name: name.to_string(),
            key_type: spec.key_type,
            derived: spec.derived,
            convergent: spec.convergent,
            exportable: spec.exportable,
            allow_plaintext_backup: spec.allow_plaintext_backup,
            deletion_allowed: false,
            min_decryption_version: 1,
            min_encryption_version: 0,
            min_available_version: 0,
            latest_version: 0,
            auto_rotate_period: spec.auto_rotate_period,
            key_size: spec.key_size,
            versions: Default::default(),
        };
        rotate_rec(&mut rec, now)?;
        let p = Policy::new(rec, None)?;
        self.store_locked(name, storage, p).await
    }

    /// Rotates the key if `version` is still its latest (two callers that
    /// both saw a version run out rotate once).
    async fn rotate_from(
        &self,
        name: &str,
        storage: &dyn Storage,
        version: u32,
    ) -> Result<Arc<Policy>, BackendError> {
        self.update(name, storage, |rec| {
            if rec.latest_version == version {
                rotate_rec(rec, Utc::now())?;
            }
            Ok(())
        })
        .await?
        .ok_or_else(|| not_found_key(name))
    }

    /// Counts one encryption under the version `requested` resolves to,
    /// first reserving more in storage or rotating when needed. Answers the
    /// key (possibly just rotated) and the version to encrypt with.
    async fn account(
        &self,
        name: &str,
        storage: &dyn Storage,
        mut pol: Arc<Policy>,
        requested: u32,
    ) -> Result<(Arc<Policy>, u32), BackendError> {
        if pol.rec.key_type.aead().is_none() {
            let v = pol.encryption_version(requested)?;
            return Ok((pol, v));
        }
        // Two rounds suffice: a rotation gives a fresh version.
        for _ in 0..3 {
            let v = pol.encryption_version(requested)?;
            let counter = pol
                .counter(v)
                .cloned()
                .ok_or_else(|| policy::internal("key version has no counter"))?;
            let n = counter.next();
            if n > self.limits.encryption_limit {
                if requested != 0 {
                    return Err(BackendError::bad_request(format!(
                        "key version {v} has reached its limit of encryptions; \
                         rotate the key and use a newer key_version"
                    )));
                }
                tracing::info!(
                    key = name,
                    version = v,
                    "transit: encryption limit reached, rotating"
                );
                pol = self.rotate_from(name, storage, v).await?;
                continue;
            }
            if n > counter.reserved() {
                self.reserve(name, storage, v, n).await?;
            }
            return Ok((pol, v));
        }
        Err(policy::internal("no key version left to encrypt with"))
    }

    /// Persists a reservation covering encryption number `n` of `version`.
    async fn reserve(
        &self,
        name: &str,
        storage: &dyn Storage,
        version: u32,
        n: u64,
    ) -> Result<(), BackendError> {
        let _guard = self.lock(name).await;
        let cur = self
            .load_locked(name, storage)
            .await?
            .ok_or_else(|| not_found_key(name))?;
        let counter = cur
            .counter(version)
            .cloned()
            .ok_or_else(|| BackendError::bad_request(format!("invalid key version {version}")))?;
        if counter.reserved() >= n {
            return Ok(());
        }
        let target = n
            .saturating_add(self.limits.persist_every.max(1))
            .saturating_sub(1);
        write_stored(storage, name, &cur.to_stored(Some((version, target)))).await?;
        counter.set_reserved(target);
        Ok(())
    }

    async fn rotate_due(&self, name: &str, storage: &dyn Storage) -> Result<(), BackendError> {
        let Some(p) = self.get_policy(name, storage).await? else {
            return Ok(());
        };
        let now = Utc::now();
        if !rotation_due(&p.rec, now) {
            return Ok(());
        }
        self.update(name, storage, |rec| {
            // Checked again under the lock: a manual rotation may have won.
            if rotation_due(rec, now) {
                rotate_rec(rec, now)?;
            }
            Ok(())
        })
        .await?;
        tracing::info!(key = name, "transit: rotated key on its auto_rotate_period");
        Ok(())
    }

    // ----- key management ------------------------------------------------

    async fn key_write(
        &self,
        name: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: CreateInput = req.parse()?;
        let spec = KeySpec {
            key_type: KeyType::parse(input.key_type.as_deref().unwrap_or(""))?,
            derived: input.derived,
            convergent: input.convergent_encryption,
            exportable: input.exportable,
            allow_plaintext_backup: input.allow_plaintext_backup,
            auto_rotate_period: input.auto_rotate_period,
            key_size: usize::try_from(input.key_size).unwrap_or(usize::MAX),
        };
        let p = self.create(name, storage, spec).await?;
        key_response(&p).map(Some)
    }

    async fn key_read(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        match self.get_policy(name, storage).await? {
            None => Ok(None),
            Some(p) => key_response(&p).map(Some),
        }
    }

    async fn key_delete(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let _guard = self.lock(name).await;
        let Some(p) = self.load_locked(name, storage).await? else {
            return Err(BackendError::bad_request(format!(
                "could not delete key {name:?}: not found"
            )));
        };
        if !p.rec.deletion_allowed {
            return Err(BackendError::bad_request(
                "deletion is not allowed for this key: set deletion_allowed with keys/<name>/config first",
            ));
        }
        storage.delete(&policy_key(name)).await?;
        self.cache.write().remove(name);
        Ok(None)
    }

    async fn key_list(&self, storage: &dyn Storage) -> Result<Option<Response>, BackendError> {
        let keys: Vec<String> = storage
            .list(POLICY_PREFIX)
            .await?
            .into_iter()
            .filter(|k| !k.ends_with('/'))
            .collect();
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(Response::list(keys)))
    }

    async fn key_config(
        &self,
        name: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: ConfigInput = req.parse()?;
        if let Some(d) = input.auto_rotate_period {
            check_auto_rotate(d)?;
        }
        let p = self
            .update(name, storage, |rec| {
                if let Some(v) = input.min_decryption_version {
                    let v = u32::try_from(v.max(1)).map_err(|_| {
                        BackendError::bad_request("min_decryption_version is too large")
                    })?;
                    if v > rec.latest_version {
                        return Err(BackendError::bad_request(format!(
                            "cannot set min_decryption_version to {v}: the latest key version is {}",
                            rec.latest_version
                        )));
                    }
                    if v < rec.min_available_version {
                        return Err(BackendError::bad_request(format!(
                            "cannot set min_decryption_version to {v}: versions below {} were trimmed",
                            rec.min_available_version
                        )));
                    }
                    rec.min_decryption_version = v;
                }
                if let Some(v) = input.min_encryption_version {
                    let v = u32::try_from(v).map_err(|_| {
                        BackendError::bad_request("min_encryption_version is too large")
                    })?;
                    if v > rec.latest_version {
                        return Err(BackendError::bad_request(format!(
                            "cannot set min_encryption_version to {v}: the latest key version is {}",
                            rec.latest_version
                        )));
                    }
                    rec.min_encryption_version = v;
                }
                if rec.min_encryption_version > 0
                    && rec.min_encryption_version < rec.min_decryption_version
                {
                    return Err(BackendError::bad_request(format!(
                        "min_encryption_version {} must be greater than or equal to min_decryption_version {}",
                        rec.min_encryption_version, rec.min_decryption_version
                    )));
                }
                if let Some(b) = input.deletion_allowed {
                    rec.deletion_allowed = b;
                }
                match input.exportable {
                    Some(false) if rec.exportable => {
                        return Err(BackendError::bad_request(
                            "exportable cannot be disabled once it has been enabled",
                        ))
                    }
                    Some(b) => rec.exportable = b,
                    None => {}
                }
                match input.allow_plaintext_backup {
                    Some(false) if rec.allow_plaintext_backup => {
                        return Err(BackendError::bad_request(
                            "allow_plaintext_backup cannot be disabled once it has been enabled",
                        ))
                    }
                    Some(b) => rec.allow_plaintext_backup = b,
                    None => {}
                }
                if let Some(d) = input.auto_rotate_period {
                    rec.auto_rotate_period = d;
                }
                Ok(())
            })
            .await?
            .ok_or_else(|| not_found_key(name))?;
        key_response(&p).map(Some)
    }

    async fn key_rotate(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let p = self
            .update(name, storage, |rec| rotate_rec(rec, Utc::now()))
            .await?
            .ok_or_else(|| not_found_key(name))?;
        key_response(&p).map(Some)
    }

    async fn key_trim(
        &self,
        name: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: TrimInput = req.parse()?;
        let min = u32::try_from(input.min_available_version)
            .map_err(|_| BackendError::bad_request("min_available_version is too large"))?;
        if min == 0 {
            return Err(BackendError::bad_request(
                "min_available_version is required and must be positive",
            ));
        }
        let p = self
            .update(name, storage, |rec| {
                if min > rec.min_decryption_version {
                    return Err(BackendError::bad_request(format!(
                        "min_available_version {min} must not be greater than min_decryption_version {}",
                        rec.min_decryption_version
                    )));
                }
                if rec.min_encryption_version != 0 && min > rec.min_encryption_version {
                    return Err(BackendError::bad_request(format!(
                        "min_available_version {min} must not be greater than min_encryption_version {}",
                        rec.min_encryption_version
                    )));
                }
                if min < rec.min_available_version {
                    return Err(BackendError::bad_request(format!(
                        "min_available_version {min} must not be less than the current one, {}",
                        rec.min_available_version
                    )));
                }
                rec.versions.retain(|v, _| *v >= min);
                rec.min_available_version = min;
                Ok(())
            })
            .await?
            .ok_or_else(|| not_found_key(name))?;
        key_response(&p).map(Some)
    }

    async fn export(
        &self,
        kind: &str,
        name: &str,
        version: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let Some(p) = self.get_policy(name, storage).await? else {
            return Ok(None);
        };
        let kt = p.rec.key_type;
        if kind != "public-key" && !p.rec.exportable {
            return Err(BackendError::bad_request(
                "private key material is not exportable: the key was not created with exportable=true",
            ));
        }
        let allowed = match kind {
            "encryption-key" => kt.supports_encryption(),
            "signing-key" => kt.supports_signing(),
            "public-key" => kt.is_asymmetric(),
            _ => true,
        };
        if !allowed {
            return Err(BackendError::bad_request(format!(
                "{kind} export is not supported for key type {}",
                kt.as_str()
            )));
        }
        let versions: Vec<u32> = match version {
            "" => p.rec.versions.keys().copied().collect(),
            "latest" => vec![p.rec.latest_version],
            v => {
                let v: u32 = v
                    .parse()
                    .map_err(|_| BackendError::bad_request(format!("invalid version {v:?}")))?;
                if !p.rec.versions.contains_key(&v) {
                    return Err(BackendError::bad_request(format!(
                        "version {v} does not exist or was trimmed"
                    )));
                }
                vec![v]
            }
        };
        let mut keys = Map::new();
        for v in versions {
            let text = match kind {
                "hmac-key" => Zeroizing::new(B64.encode(p.hmac_key(v)?.bytes())),
                "public-key" => Zeroizing::new(p.public_key_display(v)?),
                _ => p.private_key_export(v)?,
            };
            keys.insert(v.to_string(), Value::String(text.to_string()));
        }
        let mut m = Map::new();
        m.insert("name".into(), json!(name));
        m.insert("type".into(), json!(kt.as_str()));
        m.insert("keys".into(), Value::Object(keys));
        Ok(Some(Response::data(m)))
    }

    async fn backup(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let Some(p) = self.get_policy(name, storage).await? else {
            return Ok(None);
        };
        if !p.rec.allow_plaintext_backup || !p.rec.exportable {
            return Err(BackendError::bad_request(
                "backup is not allowed for this key: it needs both exportable and allow_plaintext_backup",
            ));
        }
        let bundle = Backup {
            policy: p.to_stored(None),
            backup_time: Utc::now(),
        };
        let json = Zeroizing::new(serde_json::to_vec(&bundle)?);
        let mut m = Map::new();
        m.insert("backup".into(), Value::String(B64.encode(&*json)));
        Ok(Some(Response::data(m)))
    }

    async fn restore(
        &self,
        path_name: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: RestoreInput = req.parse()?;
        let raw = input
            .backup
            .filter(|b| !b.is_empty())
            .ok_or_else(|| BackendError::bad_request("missing backup"))?;
        let json = Zeroizing::new(
            B64.decode(raw.trim())
                .map_err(|_| BackendError::bad_request("backup is not valid base64"))?,
        );
        let bundle: Backup = serde_json::from_slice(&json)
            .map_err(|_| BackendError::bad_request("backup is not a transit key backup"))?;
        let mut rec = bundle.policy;
        let name = match (path_name, input.name.as_deref()) {
            ("", Some(n)) if !n.is_empty() => n.to_string(),
            ("", _) => rec.name.clone(),
            (n, _) => n.to_string(),
        };
        if !valid_name(&name) {
            return Err(BackendError::bad_request(format!(
                "invalid key name {name:?}"
            )));
        }
        if !rec.versions.contains_key(&rec.latest_version) {
            return Err(BackendError::bad_request(
                "backup is inconsistent: its latest version is missing",
            ));
        }
        rec.name = name.clone();
        let _guard = self.lock(&name).await;
        let existing = self.load_locked(&name, storage).await?;
        if existing.is_some() && !input.force {
            return Err(BackendError::bad_request(format!(
                "key {name:?} already exists: set force=true to overwrite it"
            )));
        }
        // Sharing the old counters keeps the count conservative when a key
        // is restored over itself.
        let p = Policy::new(rec, existing.as_deref())?;
        self.store_locked(&name, storage, p).await?;
        Ok(None)
    }
}

// ----- stored helpers -------------------------------------------------------

fn policy_key(name: &str) -> String {
    format!("{POLICY_PREFIX}{name}")
}

async fn write_stored(
    storage: &dyn Storage,
    name: &str,
    rec: &StoredPolicy,
) -> Result<(), BackendError> {
    let bytes = Zeroizing::new(serde_json::to_vec(rec)?);
    storage.put(&policy_key(name), &bytes).await?;
    Ok(())
}

fn rotate_rec(rec: &mut StoredPolicy, now: DateTime<Utc>) -> Result<(), BackendError> {
    let v = rec
        .latest_version
        .checked_add(1)
        .ok_or_else(|| BackendError::bad_request("key has too many versions"))?;
    rec.versions.insert(
        v,
        StoredVersion::generate(rec.key_type, rec.key_size, now, 0)?,
    );
    rec.latest_version = v;
    Ok(())
}

fn rotation_due(rec: &StoredPolicy, now: DateTime<Utc>) -> bool {
    if rec.auto_rotate_period.is_zero() {
        return false;
    }
    let Some(last) = rec.versions.get(&rec.latest_version).map(|v| v.created) else {
        return false;
    };
    let period =
        chrono::Duration::from_std(rec.auto_rotate_period).unwrap_or(chrono::Duration::MAX);
    now.signed_duration_since(last) >= period
}

fn check_auto_rotate(d: Duration) -> Result<(), BackendError> {
    if !d.is_zero() && d < MIN_AUTO_ROTATE {
        return Err(BackendError::bad_request(
            "auto_rotate_period must be 0 to disable automatic rotation, or at least an hour",
        ));
    }
    Ok(())
}

/// The rule of the `NAME` route pattern, for names that come in a body.
fn valid_name(name: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    name.chars().next().is_some_and(word)
        && name.chars().last().is_some_and(word)
        && name
            .chars()
            .all(|c| word(c) || matches!(c, '.' | '@' | '-'))
}

fn not_found_key(name: &str) -> BackendError {
    BackendError::bad_request(format!("key {name:?} not found"))
}

#[derive(Serialize, Deserialize)]
struct Backup {
    policy: StoredPolicy,
    backup_time: DateTime<Utc>,
}

/// What a new key is made of.
struct KeySpec {
    key_type: KeyType,
    derived: bool,
    convergent: bool,
    exportable: bool,
    allow_plaintext_backup: bool,
    auto_rotate_period: Duration,
    key_size: usize,
}

impl KeySpec {
    fn validate(&self) -> Result<(), BackendError> {
        if self.convergent && !self.derived {
            return Err(BackendError::bad_request(
                "convergent_encryption requires derived=true",
            ));
        }
        if self.derived && !self.key_type.supports_derivation() {
            return Err(BackendError::bad_request(format!(
                "key derivation is not supported for key type {}: use aes128-gcm96, aes256-gcm96 or chacha20-poly1305",
                self.key_type.as_str()
            )));
        }
        check_auto_rotate(self.auto_rotate_period)?;
        if self.key_type == KeyType::Hmac && !(32..=512).contains(&self.key_size) {
            return Err(BackendError::bad_request(
                "key_size must be between 32 and 512 bytes for hmac keys",
            ));
        }
        Ok(())
    }
}

// ----- request types ----------------------------------------------------------

#[derive(Debug, Deserialize)]
struct CreateInput {
    #[serde(default, rename = "type")]
    key_type: Option<String>,
    #[serde(default, deserialize_with = "fields::boolean")]
    derived: bool,
    #[serde(default, deserialize_with = "fields::boolean")]
    convergent_encryption: bool,
    #[serde(default, deserialize_with = "fields::boolean")]
    exportable: bool,
    #[serde(default, deserialize_with = "fields::boolean")]
    allow_plaintext_backup: bool,
    #[serde(default, deserialize_with = "fields::duration")]
    auto_rotate_period: Duration,
    #[serde(default = "default_key_size", deserialize_with = "fields::uint")]
    key_size: u64,
}

fn default_key_size() -> u64 {
    32
}

#[derive(Debug, Deserialize)]
struct ConfigInput {
    #[serde(default, deserialize_with = "fields::opt_uint")]
    min_decryption_version: Option<u64>,
    #[serde(default, deserialize_with = "fields::opt_uint")]
    min_encryption_version: Option<u64>,
    #[serde(default, deserialize_with = "fields::opt_boolean")]
    deletion_allowed: Option<bool>,
    #[serde(default, deserialize_with = "fields::opt_boolean")]
    exportable: Option<bool>,
    #[serde(default, deserialize_with = "fields::opt_boolean")]
    allow_plaintext_backup: Option<bool>,
    #[serde(default, deserialize_with = "fields::opt_duration")]
    auto_rotate_period: Option<Duration>,
}

#[derive(Debug, Deserialize)]
struct TrimInput {
    #[serde(default, deserialize_with = "fields::uint")]
    min_available_version: u64,
}

#[derive(Debug, Deserialize)]
struct RestoreInput {
    #[serde(default)]
    backup: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "fields::boolean")]
    force: bool,
}

// ----- responses ------------------------------------------------------------------

/// A key as Vault's `GET keys/<name>` answers it.
fn key_response(p: &Policy) -> Result<Response, BackendError> {
    let r = &p.rec;
    let kt = r.key_type;
    let mut keys = Map::new();
    for (v, sv) in &r.versions {
        let entry = if kt.is_asymmetric() {
            let name = match kt {
                KeyType::EcdsaP256 => "P-256",
                KeyType::EcdsaP384 => "P-384",
                KeyType::EcdsaP521 => "P-521",
                other => other.as_str(),
            };
            json!({
                "name": name,
                "public_key": p.public_key_display(*v)?,
                "creation_time": sv.created.to_rfc3339_opts(SecondsFormat::Nanos, true),
            })
        } else {
            json!(sv.created.timestamp())
        };
        keys.insert(v.to_string(), entry);
    }
    let mut m = Map::new();
    m.insert("name".into(), json!(r.name));
    m.insert("type".into(), json!(kt.as_str()));
    m.insert("keys".into(), Value::Object(keys));
    m.insert("latest_version".into(), json!(r.latest_version));
    m.insert(
        "min_decryption_version".into(),
        json!(r.min_decryption_version),
    );
    m.insert(
        "min_encryption_version".into(),
        json!(r.min_encryption_version),
    );
    m.insert(
        "min_available_version".into(),
        json!(r.min_available_version),
    );
    m.insert("deletion_allowed".into(), json!(r.deletion_allowed));
    m.insert("derived".into(), json!(r.derived));
    m.insert("exportable".into(), json!(r.exportable));
    m.insert(
        "allow_plaintext_backup".into(),
        json!(r.allow_plaintext_backup),
    );
    m.insert("imported_key".into(), json!(false));
    m.insert(
        "auto_rotate_period".into(),
        json!(r.auto_rotate_period.as_secs()),
    );
    m.insert(
        "supports_encryption".into(),
        json!(kt.supports_encryption()),
    );
    m.insert(
        "supports_decryption".into(),
        json!(kt.supports_encryption()),
    );
    m.insert(
        "supports_derivation".into(),
        json!(kt.supports_derivation()),
    );
    m.insert("supports_signing".into(), json!(kt.supports_signing()));
    if r.derived {
        m.insert("kdf".into(), json!("hkdf_sha256"));
        m.insert("convergent_encryption".into(), json!(r.convergent));
        if r.convergent {
            m.insert("convergent_encryption_version".into(), json!(3));
        }
    }
    if kt == KeyType::Hmac {
        m.insert("key_size".into(), json!(r.key_size));
    }
    Ok(Response::data(m))
}

const HELP_KEYS: &str =
    "Create, read, list, configure, rotate, trim and delete named encryption keys.";
const HELP_EXPORT: &str = "Export a key's material (encryption-key, signing-key, hmac-key, public-key); private kinds need exportable=true.";
const HELP_BACKUP: &str =
    "Back up a key in plaintext, or restore one; needs allow_plaintext_backup and exportable.";
const HELP_CRYPTO: &str =
    "Encrypt, decrypt, rewrap, generate data keys, sign, verify and HMAC with a named key.";
const HELP_UTIL: &str = "Random bytes and hashes from the server.";

#[async_trait]
impl Backend for Transit {
    async fn existence_check(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<bool>, BackendError> {
        let Some((route, caps)) = self.routes.route(&req.path) else {
            return Ok(None);
        };
        match route {
            Route::Key | Route::Encrypt => Ok(Some(
                self.get_policy(caps.get("name"), storage).await?.is_some(),
            )),
            _ => Ok(None),
        }
    }

    async fn handle(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let (route, caps) = self
            .routes
            .route(&req.path)
            .ok_or(BackendError::UnsupportedPath)?;
        let name = caps.get("name");
        let op = req.operation;
        if op == Operation::Help {
            return Ok(Some(crate::secrets::kv::help(match route {
                Route::List | Route::Key | Route::Config | Route::Rotate | Route::Trim => HELP_KEYS,
                Route::Export => HELP_EXPORT,
                Route::Backup | Route::Restore => HELP_BACKUP,
                Route::Random | Route::Hash => HELP_UTIL,
                _ => HELP_CRYPTO,
            })));
        }
        let write = matches!(op, Operation::Create | Operation::Update);
        match (route, op) {
            (Route::List, Operation::List) => self.key_list(storage).await,
            (Route::Key, Operation::List) => self.key_list(storage).await,
            (Route::Key, Operation::Read) => self.key_read(name, storage).await,
            (Route::Key, Operation::Delete) => self.key_delete(name, storage).await,
            (Route::Key, _) if write => self.key_write(name, req, storage).await,
            (Route::Config, _) if write => self.key_config(name, req, storage).await,
            (Route::Rotate, _) if write => self.key_rotate(name, storage).await,
            (Route::Trim, _) if write => self.key_trim(name, req, storage).await,
            (Route::Export, Operation::Read) => {
                self.export(caps.get("kind"), name, caps.get("version"), storage)
                    .await
            }
            (Route::Backup, Operation::Read) => self.backup(name, storage).await,
            (Route::Restore, _) if write => self.restore(name, req, storage).await,
            (Route::Encrypt, _) if write => self.encrypt(name, req, storage).await,
            (Route::Decrypt, _) if write => self.decrypt(name, req, storage).await,
            (Route::Rewrap, _) if write => self.rewrap(name, req, storage).await,
            (Route::Datakey, _) if write => {
                self.datakey(name, caps.get("plaintext") == "plaintext", req, storage)
                    .await
            }
            (Route::Sign, _) if write => self.sign(name, caps.get("alg"), req, storage).await,
            (Route::Verify, _) if write => self.verify(name, caps.get("alg"), req, storage).await,
            (Route::Hmac, _) if write => self.hmac(name, caps.get("alg"), req, storage).await,
            (Route::Random, _) if write => ops::random(caps.get("source"), caps.get("bytes"), req),
            (Route::Hash, _) if write => ops::hash(caps.get("alg"), req),
            _ => Err(BackendError::UnsupportedOperation),
        }
    }

    async fn periodic(&self, storage: &dyn Storage) -> Result<(), BackendError> {
        for name in storage.list(POLICY_PREFIX).await? {
            if name.ends_with('/') {
                continue;
            }
            if let Err(e) = self.rotate_due(&name, storage).await {
                tracing::warn!(key = %name, error = %e, "transit: scheduled rotation failed");
            }
        }
        Ok(())
    }
}
