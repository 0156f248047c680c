//! The expiration manager: one mechanism for every lease, whether it belongs
//! to a token or to a secret a backend handed out (Vault's `sys/leases/*`).
//!
//! Storage (inside the view the core gives us, `sys/expire/`):
//! - `id/<lease_id>`: the [`LeaseEntry`], JSON;
//! - `token/<token_hash>/<escaped lease_id>`: per-token index, written and
//!   deleted in the same batch as the entry, so revoking a token finds its
//!   leases without scanning them all.
//!
//! Storage is the source of truth; memory holds only a schedule
//! (`(due, lease_id)` in a `BTreeSet` plus a `HashMap` from id to due time),
//! so a million leases cost a few hundred bytes each and no task each. One
//! timer task sleeps until the earliest due time, then revokes what is due
//! in batches with bounded concurrency. A failed revocation keeps the entry,
//! records the attempt and is retried with exponential back-off: a lease is
//! never forgotten because its backend was down.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures::stream::{self, StreamExt};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tresor_sdk::storage::json_op;
use tresor_sdk::{Storage, StorageError, StorageExt, StorageOp};

use crate::error::CoreError;

/// A lease as persisted at `id/<lease_id>`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct LeaseEntry {
    /// e.g. `database/creds/ro/<uuid>` or `auth/token/create/<token-hash>`.
    pub lease_id: String,
    /// Request path that created it.
    pub path: String,
    /// Hash of the token that created it (`""` if none): leases die with their token.
    pub token_hash: String,
    /// Internal data for the backend's revoke/renew callbacks.
    pub secret: Option<tresor_sdk::Secret>,
    /// A token's own lease (revocation = revoke the token).
    pub is_token: bool,
    /// Unix seconds.
    pub issue_time: i64,
    /// Unix seconds; 0 = never.
    pub expire_time: i64,
    /// Unix seconds no renewal may pass; 0 = none.
    pub max_expire_time: i64,
    pub last_renewal_time: i64,
    pub renewable: bool,
    /// Failed revocations so far.
    pub revoke_attempts: u32,
    /// Last revocation failure, shown by lookup (never carries secrets).
    pub last_error: String,
}

/// Who revokes and renews on the manager's behalf (the core: backend
/// callbacks for secrets, the token store for tokens).
#[async_trait]
pub trait LeaseRevoker: Send + Sync {
    /// Revoke the secret (backend Revoke callback) or the token. Err = retry later.
    async fn revoke(&self, lease: &LeaseEntry) -> Result<(), CoreError>;
    /// Ask the backend for a renewal with this increment; returns the TTL it grants.
    async fn renew(&self, lease: &LeaseEntry, increment: Duration) -> Result<Duration, CoreError>;
}

/// Tuning knobs; [`Default`] is what the server uses.
#[derive(Clone, Debug)]
pub struct ExpirationOptions {
    /// First retry delay after a failed revocation; doubles each attempt.
    pub retry_base: Duration,
    /// Cap of the retry delay.
    pub retry_max: Duration,
    /// Revocations running at once (per batch, per bulk operation).
    pub concurrency: usize,
    /// A revoker call taking longer counts as failed (and is retried), so a
    /// hung backend cannot hold the timer forever.
    pub revoke_timeout: Duration,
}

impl Default for ExpirationOptions {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_secs(10),
            retry_max: Duration::from_secs(3600),
            concurrency: 16,
            revoke_timeout: Duration::from_secs(60),
        }
    }
}

/// Due leases taken per timer round; between rounds the task yields so a
/// mass expiry cannot monopolise a worker thread.
const BATCH: usize = 512;
/// Keys handled between yields during restore and bulk walks.
const CHUNK: usize = 256;
/// Longest single sleep: wall-clock jumps (NTP, suspend) are noticed within this.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Schedule value of a lease that never expires (kept in `by_id` only).
const NEVER: i64 = 0;

/// Unix seconds.
pub fn now() -> i64 {
    now_ms() / 1000
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn secs_to_ms(secs: i64) -> i64 {
    secs.saturating_mul(1000)
}

fn dur_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn dur_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn id_key(lease_id: &str) -> String {
    format!("id/{lease_id}")
}

/// Lease ids contain `/`; the index needs them as one path segment, and
/// reversible so `revoke_by_token` and `tidy` can find the entry again.
fn escape_id(lease_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(lease_id.as_bytes())
}

fn unescape_id(seg: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(seg).ok()?;
    String::from_utf8(bytes).ok()
}

fn index_key(token_hash: &str, lease_id: &str) -> String {
    format!("token/{token_hash}/{}", escape_id(lease_id))
}

/// A lease id must map to exactly one storage key: no empty, `.` or `..`
/// segments, no leading or trailing slash. Anything else a client sends is
/// treated as an unknown lease rather than reaching storage.
fn valid_lease_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

/// Token hashes become one key segment.
fn valid_token_hash(h: &str) -> bool {
    !h.is_empty() && !h.contains('/') && h != "." && h != ".."
}

/// What lookup shows: short, and without backend detail that could carry
/// credentials (connection strings, responses); the detail goes to the log.
fn public_error(e: &CoreError) -> String {
    let s = match e {
        CoreError::Internal(_) => "internal error (see server log)".to_string(),
        other => other.to_string(),
    };
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

#[derive(Default)]
struct Schedule {
    /// Leases waiting for their due time (expiry or next retry), in ms.
    by_time: BTreeSet<(i64, Arc<str>)>,
    /// Every lease known in memory → its due time (`NEVER` if none). A lease
    /// the timer is working on is here but not in `by_time`.
    by_id: HashMap<Arc<str>, i64>,
}

/// Walks a storage prefix depth-first, handing out leaf keys in chunks, so
/// a million keys are never all in memory beyond one directory listing.
struct KeyWalker {
    dirs: Vec<String>,
    leaves: VecDeque<String>,
}

impl KeyWalker {
    fn new(prefix: &str) -> Self {
        Self {
            dirs: vec![prefix.to_string()],
            leaves: VecDeque::new(),
        }
    }

    /// Up to `max` full keys; empty when done.
    async fn next_chunk(
        &mut self,
        storage: &dyn Storage,
        max: usize,
    ) -> Result<Vec<String>, StorageError> {
        loop {
            if !self.leaves.is_empty() {
                let n = self.leaves.len().min(max);
                return Ok(self.leaves.drain(..n).collect());
            }
            let Some(dir) = self.dirs.pop() else {
                return Ok(Vec::new());
            };
            for (i, k) in storage.list(&dir).await?.into_iter().enumerate() {
                let full = format!("{dir}{k}");
                if k.ends_with('/') {
                    self.dirs.push(full);
                } else {
                    self.leaves.push_back(full);
                }
                // A role's folder may hold a million leases: hand the
                // worker back now and then.
                if i % 4096 == 4095 {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

/// See the module documentation.
pub struct ExpirationManager {
    storage: Arc<dyn Storage>,
    revoker: Arc<dyn LeaseRevoker>,
    opts: ExpirationOptions,
    schedule: Mutex<Schedule>,
    wake: Arc<Notify>,
    stopped: Arc<AtomicBool>,
    timer_started: AtomicBool,
    me: Weak<ExpirationManager>,
}

impl Drop for ExpirationManager {
    fn drop(&mut self) {
        // The timer only holds a Weak; waking it lets it notice and exit.
        self.stopped.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

impl ExpirationManager {
    pub fn new(storage: Arc<dyn Storage>, revoker: Arc<dyn LeaseRevoker>) -> Arc<Self> {
        Self::with_options(storage, revoker, ExpirationOptions::default())
    }

    pub fn with_options(
        storage: Arc<dyn Storage>,
        revoker: Arc<dyn LeaseRevoker>,
        opts: ExpirationOptions,
    ) -> Arc<Self> {
        let opts = ExpirationOptions {
            concurrency: opts.concurrency.max(1),
            ..opts
        };
        Arc::new_cyclic(|me| Self {
            storage,
            revoker,
            opts,
            schedule: Mutex::new(Schedule::default()),
            wake: Arc::new(Notify::new()),
            stopped: Arc::new(AtomicBool::new(false)),
            timer_started: AtomicBool::new(false),
            me: me.clone(),
        })
    }

    /// Load every persisted lease in the background (returns at once;
    /// requests are served meanwhile, since every operation reads storage)
    /// and schedule them; expired ones are revoked by the timer.
    pub fn restore(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::error!("lease restore needs a tokio runtime; leases not restored");
            return;
        };
        self.ensure_timer();
        let me = Arc::downgrade(self);
        handle.spawn(async move {
            let started = std::time::Instant::now();
            match Self::restore_all(me).await {
                Ok(n) => tracing::info!(
                    leases = n,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "leases restored"
                ),
                Err(e) => tracing::error!(error = %e, "lease restore failed"),
            }
        });
    }

    async fn restore_all(me: Weak<Self>) -> Result<u64, CoreError> {
        let mut walker = KeyWalker::new("id/");
        let mut count = 0u64;
        loop {
            // Re-upgrade each chunk so a sealed (dropped) manager stops the walk.
            let Some(this) = me.upgrade() else {
                return Ok(count);
            };
            if this.stopped.load(Ordering::SeqCst) {
                return Ok(count);
            }
            let keys = walker.next_chunk(&*this.storage, CHUNK).await?;
            if keys.is_empty() {
                return Ok(count);
            }
            let storage = this.storage.clone();
            let loaded: Vec<(String, Result<Option<LeaseEntry>, StorageError>)> =
                stream::iter(keys)
                    .map(|k| {
                        let storage = storage.clone();
                        async move {
                            let r = storage.get_json::<LeaseEntry>(&k).await;
                            (k, r)
                        }
                    })
                    .buffer_unordered(this.opts.concurrency)
                    .collect()
                    .await;
            for (key, r) in loaded {
                match r {
                    Ok(Some(e)) => {
                        if key.strip_prefix("id/") != Some(e.lease_id.as_str()) {
                            tracing::warn!(key = %key, "lease entry does not match its key; skipped");
                            continue;
                        }
                        this.schedule_if_absent(&e.lease_id, Self::due_ms(&e));
                        count += 1;
                    }
                    Ok(None) => {}
                    // One bad entry must not keep every other lease from expiring.
                    Err(e) => {
                        tracing::error!(key = %key, error = %e, "unreadable lease entry; skipped")
                    }
                }
            }
            drop(this);
            tokio::task::yield_now().await;
        }
    }

    /// Persist and schedule.
    pub async fn register(&self, entry: LeaseEntry) -> Result<(), CoreError> {
        if !valid_lease_id(&entry.lease_id) {
            return Err(CoreError::Internal(format!(
                "invalid lease id {:?}",
                entry.lease_id
            )));
        }
        let mut ops = vec![json_op(id_key(&entry.lease_id), &entry)?];
        if !entry.token_hash.is_empty() {
            if !valid_token_hash(&entry.token_hash) {
                return Err(CoreError::Internal("invalid token hash for lease".into()));
            }
            ops.push(StorageOp::Put {
                key: index_key(&entry.token_hash, &entry.lease_id),
                value: entry.lease_id.as_bytes().to_vec(),
            });
        }
        self.storage.batch(ops).await?;
        self.schedule_at(&entry.lease_id, Self::due_ms(&entry));
        Ok(())
    }

    pub async fn lookup(&self, lease_id: &str) -> Result<Option<LeaseEntry>, CoreError> {
        if !valid_lease_id(lease_id) {
            return Ok(None);
        }
        Ok(self.storage.get_json(&id_key(lease_id)).await?)
    }

    /// One level under `prefix`, like Vault's `LIST sys/leases/lookup/<prefix>`:
    /// lease-id tails and sub-folders (with a trailing `/`).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, CoreError> {
        let mut p = prefix.trim_start_matches('/').to_string();
        if !p.is_empty() && !p.ends_with('/') {
            p.push('/');
        }
        Ok(self.storage.list(&id_key(&p)).await?)
    }

    /// Renew a secret's lease: fails if unknown, not renewable or expired;
    /// asks the backend; the new expiry never passes `max_expire_time`.
    pub async fn renew(
        &self,
        lease_id: &str,
        increment: Duration,
    ) -> Result<LeaseEntry, CoreError> {
        let Some(entry) = self.lookup(lease_id).await? else {
            return Err(CoreError::BadRequest("invalid lease ID".into()));
        };
        if entry.is_token {
            return Err(CoreError::BadRequest(
                "tokens cannot be renewed through this endpoint".into(),
            ));
        }
        if !entry.renewable {
            return Err(CoreError::BadRequest("lease is not renewable".into()));
        }
        let n = now();
        if (entry.expire_time != 0 && entry.expire_time <= n)
            || (entry.max_expire_time != 0 && entry.max_expire_time <= n)
        {
            return Err(CoreError::BadRequest("lease expired".into()));
        }
        let granted = self.revoker.renew(&entry, increment).await?;
        let mut ttl = dur_secs(granted);
        if entry.max_expire_time != 0 {
            ttl = ttl.min(entry.max_expire_time - n);
        }
        let mut updated = entry;
        updated.expire_time = n.saturating_add(ttl.max(0));
        updated.last_renewal_time = n;
        // The backend call took time: the lease may have been revoked meanwhile.
        if self.lookup(lease_id).await?.is_none() {
            return Err(CoreError::BadRequest("invalid lease ID".into()));
        }
        self.storage.put_json(&id_key(lease_id), &updated).await?;
        self.schedule_at(lease_id, Self::due_ms(&updated));
        Ok(updated)
    }

    /// For token leases: the token store computed a new expiry itself
    /// (still bounded by `max_expire_time`).
    pub async fn set_expiry(&self, lease_id: &str, expire_time: i64) -> Result<(), CoreError> {
        let Some(mut entry) = self.lookup(lease_id).await? else {
            return Err(CoreError::BadRequest("invalid lease ID".into()));
        };
        entry.expire_time = if entry.max_expire_time != 0
            && (expire_time == 0 || expire_time > entry.max_expire_time)
        {
            entry.max_expire_time
        } else {
            expire_time
        };
        entry.last_renewal_time = now();
        self.storage.put_json(&id_key(lease_id), &entry).await?;
        self.schedule_at(lease_id, Self::due_ms(&entry));
        Ok(())
    }

    /// Revoke now. An unknown lease is not an error (as in Vault). If the
    /// revoker fails the error is returned and the entry kept, retried in
    /// the background with back-off.
    pub async fn revoke(&self, lease_id: &str) -> Result<(), CoreError> {
        let Some(entry) = self.lookup(lease_id).await? else {
            self.unschedule(lease_id);
            return Ok(());
        };
        self.revoke_entry(&entry, false).await
    }

    /// `revoke-prefix`; `force` deletes entries even if the backend
    /// revocation fails (`revoke-force`). A prefix that is itself a lease id
    /// revokes that lease. Every lease under the prefix is attempted; the
    /// first failure is returned (failed ones stay and are retried).
    pub async fn revoke_prefix(&self, prefix: &str, force: bool) -> Result<(), CoreError> {
        let mut p = prefix.trim_start_matches('/').to_string();
        if !p.is_empty() && !p.ends_with('/') {
            if let Some(entry) = self.lookup(&p).await? {
                return self.revoke_entry(&entry, force).await;
            }
            p.push('/');
        }
        let mut walker = KeyWalker::new(&id_key(&p));
        let first_err: Mutex<Option<CoreError>> = Mutex::new(None);
        loop {
            let keys = walker.next_chunk(&*self.storage, CHUNK).await?;
            if keys.is_empty() {
                break;
            }
            stream::iter(keys)
                .for_each_concurrent(self.opts.concurrency, |key| {
                    let first_err = &first_err;
                    async move {
                        let r = match self.storage.get_json::<LeaseEntry>(&key).await {
                            Ok(Some(e)) => self.revoke_entry(&e, force).await,
                            Ok(None) => Ok(()),
                            Err(e) => Err(e.into()),
                        };
                        if let Err(e) = r {
                            let mut slot = first_err.lock();
                            if slot.is_none() {
                                *slot = Some(e);
                            }
                        }
                    }
                })
                .await;
            tokio::task::yield_now().await;
        }
        match first_err.into_inner() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Revoke every lease created by this token (except the token's own
    /// lease). Called while the token is being revoked, so a backend that
    /// fails must not keep the token alive: its lease is kept and retried in
    /// the background; only storage errors are returned.
    pub async fn revoke_by_token(&self, token_hash: &str) -> Result<(), CoreError> {
        if !valid_token_hash(token_hash) {
            return Ok(());
        }
        let dir = format!("token/{token_hash}/");
        let segs = self.storage.list(&dir).await?;
        for chunk in segs.chunks(CHUNK) {
            // Owned keys: a stream over `&String` would make this future's
            // Send bound depend on a higher-ranked lifetime the compiler
            // cannot prove when it is boxed by the revoker trait.
            let dir = dir.as_str();
            let results: Vec<Result<(), CoreError>> = stream::iter(chunk.to_vec())
                .map(|seg: String| async move { self.revoke_indexed(token_hash, dir, &seg).await })
                .buffer_unordered(self.opts.concurrency)
                .collect()
                .await;
            for r in results {
                r?;
            }
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    async fn revoke_indexed(
        &self,
        token_hash: &str,
        dir: &str,
        seg: &str,
    ) -> Result<(), CoreError> {
        if seg.ends_with('/') {
            return Ok(());
        }
        let key = format!("{dir}{seg}");
        let entry = match unescape_id(seg).filter(|id| valid_lease_id(id)) {
            Some(id) => self.storage.get_json::<LeaseEntry>(&id_key(&id)).await?,
            None => None,
        };
        let Some(entry) = entry.filter(|e| e.token_hash == token_hash) else {
            // Index pointing nowhere (or to a lease re-registered elsewhere).
            self.storage.delete(&key).await?;
            return Ok(());
        };
        if entry.is_token && entry.lease_id.rsplit('/').next() == Some(token_hash) {
            return Ok(());
        }
        match self.revoke_entry(&entry, false).await {
            Ok(()) => Ok(()),
            Err(CoreError::Sealed) => Err(CoreError::Sealed),
            Err(e) => {
                tracing::warn!(lease_id = %entry.lease_id, error = %e, "lease of revoked token not revoked yet; will retry");
                Ok(())
            }
        }
    }

    /// Forget a lease without calling the revoker (the token store uses this
    /// after revoking a token itself).
    pub async fn remove(&self, lease_id: &str) -> Result<(), CoreError> {
        if let Some(entry) = self.lookup(lease_id).await? {
            self.delete_entry(&entry).await?;
        }
        self.unschedule(lease_id);
        Ok(())
    }

    /// `sys/leases/tidy`: drop index entries pointing nowhere; returns the
    /// count cleaned.
    pub async fn tidy(&self) -> Result<u64, CoreError> {
        let mut walker = KeyWalker::new("token/");
        let mut cleaned = 0u64;
        loop {
            let keys = walker.next_chunk(&*self.storage, CHUNK).await?;
            if keys.is_empty() {
                return Ok(cleaned);
            }
            let dead: Vec<Result<Option<String>, CoreError>> = stream::iter(keys)
                .map(|key| async move {
                    let live = match Self::parse_index_key(&key) {
                        Some((hash, id)) => self
                            .storage
                            .get_json::<LeaseEntry>(&id_key(&id))
                            .await?
                            .is_some_and(|e| e.token_hash == hash),
                        None => false,
                    };
                    Ok(if live { None } else { Some(key) })
                })
                .buffer_unordered(self.opts.concurrency)
                .collect()
                .await;
            let mut ops = Vec::new();
            for r in dead {
                if let Some(key) = r? {
                    ops.push(StorageOp::Delete { key });
                }
            }
            if !ops.is_empty() {
                cleaned += ops.len() as u64;
                self.storage.batch(ops).await?;
            }
            tokio::task::yield_now().await;
        }
    }

    fn parse_index_key(key: &str) -> Option<(String, String)> {
        let rest = key.strip_prefix("token/")?;
        let (hash, seg) = rest.split_once('/')?;
        if !valid_token_hash(hash) || seg.contains('/') {
            return None;
        }
        let id = unescape_id(seg).filter(|id| valid_lease_id(id))?;
        Some((hash.to_string(), id))
    }

    /// Stop the timer (seal/shutdown). Revocations in flight finish; what is
    /// left stays in storage and is picked up by the next unseal's restore.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Leases known in memory.
    pub fn len(&self) -> usize {
        self.schedule.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // ---- revocation -------------------------------------------------------

    /// Call the revoker; on success delete entry and index together. On
    /// failure record it and schedule a retry, or with `force` delete anyway.
    async fn revoke_entry(&self, entry: &LeaseEntry, force: bool) -> Result<(), CoreError> {
        let result = match tokio::time::timeout(
            self.opts.revoke_timeout,
            self.revoker.revoke(entry),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(CoreError::Internal("revocation timed out".into())),
        };
        match result {
            Ok(()) => {
                self.delete_entry(entry).await?;
                self.unschedule(&entry.lease_id);
                Ok(())
            }
            Err(e) if force => {
                tracing::warn!(lease_id = %entry.lease_id, error = %e, "revocation failed; lease deleted (force)");
                self.delete_entry(entry).await?;
                self.unschedule(&entry.lease_id);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(lease_id = %entry.lease_id, attempts = entry.revoke_attempts + 1, error = %e, "revocation failed; will retry");
                if let Err(se) = self.record_failure(entry, &e).await {
                    tracing::error!(lease_id = %entry.lease_id, error = %se, "could not record failed revocation");
                }
                Err(e)
            }
        }
    }

    async fn record_failure(&self, entry: &LeaseEntry, err: &CoreError) -> Result<(), CoreError> {
        // A seal in progress is not the backend's fault: leave the entry for
        // the next unseal rather than counting an attempt.
        if self.stopped.load(Ordering::SeqCst) || matches!(err, CoreError::Sealed) {
            return Ok(());
        }
        // Re-read: the revoker may have removed it (token revocation re-enters
        // `remove`), and a stale copy must not resurrect it.
        let Some(mut current) = self.lookup(&entry.lease_id).await? else {
            self.unschedule(&entry.lease_id);
            return Ok(());
        };
        current.revoke_attempts = current
            .revoke_attempts
            .saturating_add(1)
            .max(entry.revoke_attempts.saturating_add(1));
        current.last_error = public_error(err);
        // Whoever asked for the revocation considers the lease dead: it must
        // not be renewable any more, and the retry below must find it due
        // rather than waiting for its natural expiry.
        let n = now();
        if current.expire_time == 0 || current.expire_time > n {
            current.expire_time = n;
        }
        self.storage
            .put_json(&id_key(&current.lease_id), &current)
            .await?;
        let delay = self.backoff(current.revoke_attempts);
        self.schedule_at(&current.lease_id, now_ms().saturating_add(dur_ms(delay)));
        Ok(())
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let shift = attempts.saturating_sub(1).min(30);
        self.opts
            .retry_base
            .checked_mul(1u32 << shift)
            .unwrap_or(self.opts.retry_max)
            .min(self.opts.retry_max)
    }

    async fn delete_entry(&self, entry: &LeaseEntry) -> Result<(), CoreError> {
        let mut ops = vec![StorageOp::Delete {
            key: id_key(&entry.lease_id),
        }];
        if valid_token_hash(&entry.token_hash) {
            ops.push(StorageOp::Delete {
                key: index_key(&entry.token_hash, &entry.lease_id),
            });
        }
        self.storage.batch(ops).await?;
        Ok(())
    }

    // ---- schedule ---------------------------------------------------------

    fn due_ms(entry: &LeaseEntry) -> i64 {
        if entry.expire_time == 0 {
            NEVER
        } else {
            // An expire time at or before the epoch still means "due".
            secs_to_ms(entry.expire_time).max(1)
        }
    }

    fn schedule_at(&self, lease_id: &str, due: i64) {
        let wake = {
            let mut s = self.schedule.lock();
            let key: Arc<str> = match s.by_id.get_key_value(lease_id) {
                Some((k, _)) => k.clone(),
                None => Arc::from(lease_id),
            };
            if let Some(old) = s.by_id.insert(key.clone(), due) {
                s.by_time.remove(&(old, key.clone()));
            }
            Self::insert_due(&mut s, due, key)
        };
        if wake {
            self.ensure_timer();
            self.wake.notify_one();
        }
    }

    /// Restore must not undo a newer schedule set by a request meanwhile.
    fn schedule_if_absent(&self, lease_id: &str, due: i64) {
        let wake = {
            let mut s = self.schedule.lock();
            if s.by_id.contains_key(lease_id) {
                return;
            }
            let key: Arc<str> = Arc::from(lease_id);
            s.by_id.insert(key.clone(), due);
            Self::insert_due(&mut s, due, key)
        };
        if wake {
            self.wake.notify_one();
        }
    }

    /// True when this became the earliest due time (the timer must re-arm).
    fn insert_due(s: &mut Schedule, due: i64, key: Arc<str>) -> bool {
        if due == NEVER {
            return false;
        }
        let earliest = s.by_time.first().is_none_or(|(t, _)| due < *t);
        s.by_time.insert((due, key));
        earliest
    }

    fn unschedule(&self, lease_id: &str) {
        let mut s = self.schedule.lock();
        if let Some((key, due)) = s.by_id.remove_entry(lease_id) {
            s.by_time.remove(&(due, key));
        }
    }

    fn ensure_timer(&self) {
        if self.timer_started.swap(true, Ordering::SeqCst) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(Self::run_timer(
                    self.me.clone(),
                    self.wake.clone(),
                    self.stopped.clone(),
                ));
            }
            // Without a runtime there is nothing to spawn on; try again next time.
            Err(_) => self.timer_started.store(false, Ordering::SeqCst),
        }
    }

    /// The one timer: sleeps until the earliest due lease (or a wake-up from
    /// an earlier registration), then works through what is due.
    async fn run_timer(me: Weak<Self>, wake: Arc<Notify>, stopped: Arc<AtomicBool>) {
        loop {
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            // Hold the manager only while working, never while sleeping, so
            // dropping it (seal) ends this task.
            let next = match me.upgrade() {
                Some(m) => m.schedule.lock().by_time.first().map(|(t, _)| *t),
                None => return,
            };
            let n = now_ms();
            match next {
                Some(t) if t <= n => {
                    let Some(m) = me.upgrade() else { return };
                    m.run_due_batch(n).await;
                    drop(m);
                    tokio::task::yield_now().await;
                }
                Some(t) => {
                    let wait =
                        Duration::from_millis(u64::try_from(t - n).unwrap_or(0)).min(MAX_SLEEP);
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                None => wake.notified().await,
            }
        }
    }

    async fn run_due_batch(&self, n: i64) {
        let due: Vec<Arc<str>> = {
            let mut s = self.schedule.lock();
            let mut out = Vec::new();
            while out.len() < BATCH {
                match s.by_time.first() {
                    Some((t, _)) if *t <= n => {}
                    _ => break,
                }
                if let Some((_, id)) = s.by_time.pop_first() {
                    out.push(id);
                }
            }
            out
        };
        stream::iter(due)
            .for_each_concurrent(self.opts.concurrency, |id| async move {
                if self.stopped.load(Ordering::SeqCst) {
                    return;
                }
                self.expire_one(&id).await;
            })
            .await;
    }

    async fn expire_one(&self, lease_id: &str) {
        let entry = match self.lookup(lease_id).await {
            Ok(Some(e)) => e,
            Ok(None) => {
                self.unschedule(lease_id);
                return;
            }
            Err(e) => {
                tracing::warn!(lease_id, error = %e, "cannot load due lease; will retry");
                self.schedule_at(
                    lease_id,
                    now_ms().saturating_add(dur_ms(self.opts.retry_base)),
                );
                return;
            }
        };
        // Renewed or re-registered since it was scheduled.
        let due = Self::due_ms(&entry);
        if due == NEVER || due > now_ms() {
            self.schedule_at(lease_id, due);
            return;
        }
        // Failures are recorded and rescheduled inside.
        let _ = self.revoke_entry(&entry, false).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tresor_sdk::testing::MemoryStorage;

    #[derive(Default)]
    struct TestRevoker {
        revoked: Mutex<Vec<String>>,
        renewals: Mutex<Vec<(String, Duration)>>,
        fail: AtomicBool,
        calls: AtomicUsize,
        grant: Mutex<Duration>,
    }

    impl TestRevoker {
        fn revoked(&self) -> Vec<String> {
            let mut v = self.revoked.lock().clone();
            v.sort();
            v
        }
    }

    #[async_trait]
    impl LeaseRevoker for TestRevoker {
        async fn revoke(&self, lease: &LeaseEntry) -> Result<(), CoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(CoreError::BadRequest("backend unreachable".into()));
            }
            self.revoked.lock().push(lease.lease_id.clone());
            Ok(())
        }
        async fn renew(
            &self,
            lease: &LeaseEntry,
            increment: Duration,
        ) -> Result<Duration, CoreError> {
            self.renewals
                .lock()
                .push((lease.lease_id.clone(), increment));
            Ok(*self.grant.lock())
        }
    }

    fn lease(id: &str, token: &str, expire: i64) -> LeaseEntry {
        let n = now();
        LeaseEntry {
            lease_id: id.to_string(),
            path: id
                .rsplit_once('/')
                .map(|(p, _)| p)
                .unwrap_or(id)
                .to_string(),
            token_hash: token.to_string(),
            secret: Some(tresor_sdk::Secret::default()),
            is_token: false,
            issue_time: n,
            expire_time: expire,
            max_expire_time: 0,
            last_renewal_time: 0,
            renewable: true,
            revoke_attempts: 0,
            last_error: String::new(),
        }
    }

    fn fast() -> ExpirationOptions {
        ExpirationOptions {
            retry_base: Duration::from_millis(50),
            retry_max: Duration::from_millis(400),
            ..ExpirationOptions::default()
        }
    }

    fn setup() -> (Arc<MemoryStorage>, Arc<TestRevoker>, Arc<ExpirationManager>) {
        let storage = Arc::new(MemoryStorage::new());
        let revoker = Arc::new(TestRevoker::default());
        let m = ExpirationManager::with_options(storage.clone(), revoker.clone(), fast());
        (storage, revoker, m)
    }

    async fn wait_for(mut cond: impl FnMut() -> bool, max: Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < max {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cond()
    }

    #[test]
    fn escape_round_trips() {
        for id in [
            "a",
            "database/creds/ro/0b1c",
            "auth/token/create/h+/=?",
            "ünï/çødé",
        ] {
            let e = escape_id(id);
            assert!(!e.contains('/'));
            assert_eq!(unescape_id(&e).as_deref(), Some(id));
        }
        assert!(unescape_id("!!").is_none());
        assert!(
            !valid_lease_id("a//b")
                && !valid_lease_id("/a")
                && !valid_lease_id("a/../b")
                && !valid_lease_id("")
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let m = ExpirationManager::new(
            Arc::new(MemoryStorage::new()),
            Arc::new(TestRevoker::default()),
        );
        assert_eq!(m.backoff(1), Duration::from_secs(10));
        assert_eq!(m.backoff(2), Duration::from_secs(20));
        assert_eq!(m.backoff(4), Duration::from_secs(80));
        assert_eq!(m.backoff(20), Duration::from_secs(3600));
        assert_eq!(m.backoff(u32::MAX), Duration::from_secs(3600));
    }

    #[tokio::test]
    async fn register_lookup_list() {
        let (storage, _r, m) = setup();
        let far = now() + 3600;
        m.register(lease("db/creds/ro/1", "tokA", far))
            .await
            .unwrap();
        m.register(lease("db/creds/ro/2", "tokA", far))
            .await
            .unwrap();
        m.register(lease("db/creds/rw/1", "", 0)).await.unwrap();
        assert_eq!(m.len(), 3);
        let l = m.lookup("db/creds/ro/1").await.unwrap().unwrap();
        assert_eq!(l.expire_time, far);
        assert_eq!(l.token_hash, "tokA");
        assert!(m.lookup("db/creds/ro/9").await.unwrap().is_none());
        assert!(m.lookup("../x").await.unwrap().is_none());
        assert_eq!(m.list("db/creds").await.unwrap(), vec!["ro/", "rw/"]);
        assert_eq!(m.list("db/creds/ro/").await.unwrap(), vec!["1", "2"]);
        assert_eq!(m.list("").await.unwrap(), vec!["db/"]);
        // Entry and index written together; no index without a token.
        let keys = storage.keys();
        assert!(keys.contains(&index_key("tokA", "db/creds/ro/1")));
        assert_eq!(keys.iter().filter(|k| k.starts_with("token/")).count(), 2);
        assert!(m.register(lease("bad//id", "", 0)).await.is_err());
    }

    #[tokio::test]
    async fn expiry_fires_revoker_and_removes_entry() {
        let (storage, r, m) = setup();
        m.register(lease("db/creds/ro/far", "tok", now() + 3600))
            .await
            .unwrap();
        m.register(lease("db/creds/ro/soon", "tok", now() + 1))
            .await
            .unwrap();
        assert!(wait_for(|| !r.revoked().is_empty(), Duration::from_secs(4)).await);
        assert_eq!(r.revoked(), vec!["db/creds/ro/soon"]);
        assert!(wait_for(|| m.len() == 1, Duration::from_secs(1)).await);
        assert!(m.lookup("db/creds/ro/soon").await.unwrap().is_none());
        assert!(!storage
            .keys()
            .contains(&index_key("tok", "db/creds/ro/soon")));
        assert!(m.lookup("db/creds/ro/far").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn failing_revoker_keeps_lease_and_retries_with_backoff() {
        let (storage, r, m) = setup();
        r.fail.store(true, Ordering::SeqCst);
        // Already expired: the timer picks it up at once.
        m.register(lease("aws/creds/x/1", "tok", now() - 1))
            .await
            .unwrap();
        let mut seen = None;
        for _ in 0..100 {
            let l = m.lookup("aws/creds/x/1").await.unwrap().unwrap();
            if l.revoke_attempts >= 2 {
                seen = Some(l);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let l = seen.expect("retried with back-off");
        assert_eq!(l.last_error, "backend unreachable");
        assert_eq!(m.len(), 1);
        assert!(storage.keys().contains(&index_key("tok", "aws/creds/x/1")));

        // A manual revoke reports the failure and keeps the entry too.
        let err = m.revoke("aws/creds/x/1").await.unwrap_err();
        assert!(matches!(err, CoreError::BadRequest(_)));
        assert!(m.lookup("aws/creds/x/1").await.unwrap().is_some());

        r.fail.store(false, Ordering::SeqCst);
        assert!(
            wait_for(
                || r.revoked() == vec!["aws/creds/x/1".to_string()],
                Duration::from_secs(3)
            )
            .await
        );
        assert!(wait_for(|| m.is_empty(), Duration::from_secs(1)).await);
        assert!(m.lookup("aws/creds/x/1").await.unwrap().is_none());
        assert!(storage.is_empty());
    }

    #[tokio::test]
    async fn internal_errors_are_not_shown_by_lookup() {
        struct Leaky;
        #[async_trait]
        impl LeaseRevoker for Leaky {
            async fn revoke(&self, _: &LeaseEntry) -> Result<(), CoreError> {
                Err(CoreError::Internal(
                    "postgres://admin:hunter2@db failed".into(),
                ))
            }
            async fn renew(&self, _: &LeaseEntry, _: Duration) -> Result<Duration, CoreError> {
                Ok(Duration::ZERO)
            }
        }
        let m = ExpirationManager::with_options(
            Arc::new(MemoryStorage::new()),
            Arc::new(Leaky),
            fast(),
        );
        m.register(lease("db/creds/ro/1", "", now() + 3600))
            .await
            .unwrap();
        assert!(m.revoke("db/creds/ro/1").await.is_err());
        let l = m.lookup("db/creds/ro/1").await.unwrap().unwrap();
        assert!(l.revoke_attempts >= 1);
        assert!(
            l.expire_time <= now(),
            "a failed revoke makes the lease due"
        );
        assert!(m.renew("db/creds/ro/1", Duration::ZERO).await.is_err());
        assert!(!l.last_error.contains("hunter2"));
        m.stop();
    }

    #[tokio::test]
    async fn renew_is_bounded_by_max_expire_time() {
        let (_s, r, m) = setup();
        let n = now();
        let mut l = lease("db/creds/ro/1", "", n + 10);
        l.max_expire_time = n + 20;
        m.register(l).await.unwrap();
        *r.grant.lock() = Duration::from_secs(3600);
        let u = m
            .renew("db/creds/ro/1", Duration::from_secs(3600))
            .await
            .unwrap();
        assert!(
            u.expire_time <= n + 20 && u.expire_time >= n + 19,
            "{}",
            u.expire_time
        );
        assert!(u.last_renewal_time >= n);
        assert_eq!(
            r.renewals.lock().clone(),
            vec![("db/creds/ro/1".to_string(), Duration::from_secs(3600))]
        );
        assert_eq!(
            m.lookup("db/creds/ro/1")
                .await
                .unwrap()
                .unwrap()
                .expire_time,
            u.expire_time
        );

        // A small grant is honoured as is.
        *r.grant.lock() = Duration::from_secs(5);
        let u = m.renew("db/creds/ro/1", Duration::ZERO).await.unwrap();
        assert!(u.expire_time <= now() + 5 && u.expire_time >= n + 5);
    }

    #[tokio::test]
    async fn renew_refusals() {
        let (_s, _r, m) = setup();
        let mut l = lease("pki/issue/web/1", "", now() + 100);
        l.renewable = false;
        m.register(l).await.unwrap();
        let e = m
            .renew("pki/issue/web/1", Duration::ZERO)
            .await
            .unwrap_err();
        assert!(
            matches!(e, CoreError::BadRequest(ref s) if s == "lease is not renewable"),
            "{e:?}"
        );
        let e = m
            .renew("pki/issue/web/404", Duration::ZERO)
            .await
            .unwrap_err();
        assert!(
            matches!(e, CoreError::BadRequest(ref s) if s == "invalid lease ID"),
            "{e:?}"
        );
        let mut t = lease("auth/token/create/h1", "", now() + 100);
        t.is_token = true;
        m.register(t).await.unwrap();
        assert!(m
            .renew("auth/token/create/h1", Duration::ZERO)
            .await
            .is_err());
        m.stop();
    }

    #[tokio::test]
    async fn set_expiry_and_remove() {
        let (storage, r, m) = setup();
        let n = now();
        let mut t = lease("auth/token/create/h1", "", n + 100);
        t.is_token = true;
        t.max_expire_time = n + 500;
        m.register(t).await.unwrap();
        m.set_expiry("auth/token/create/h1", n + 300).await.unwrap();
        assert_eq!(
            m.lookup("auth/token/create/h1")
                .await
                .unwrap()
                .unwrap()
                .expire_time,
            n + 300
        );
        m.set_expiry("auth/token/create/h1", n + 9999)
            .await
            .unwrap();
        assert_eq!(
            m.lookup("auth/token/create/h1")
                .await
                .unwrap()
                .unwrap()
                .expire_time,
            n + 500
        );
        assert!(m.set_expiry("auth/token/create/none", n).await.is_err());
        m.register(lease("kv/x/1", "h1", n + 100)).await.unwrap();
        m.remove("kv/x/1").await.unwrap();
        m.remove("auth/token/create/h1").await.unwrap();
        assert!(r.revoked().is_empty());
        assert!(m.is_empty());
        assert!(storage.is_empty());
    }

    #[tokio::test]
    async fn revoke_prefix_and_force() {
        let (_s, r, m) = setup();
        let far = now() + 3600;
        for id in ["a/x/1", "a/x/2", "a/x/deep/3", "a/y/1", "b/1", "a/xx/1"] {
            m.register(lease(id, "t", far)).await.unwrap();
        }
        m.revoke_prefix("a/x", false).await.unwrap();
        assert_eq!(r.revoked(), vec!["a/x/1", "a/x/2", "a/x/deep/3"]);
        assert!(m.lookup("a/xx/1").await.unwrap().is_some());
        assert_eq!(m.len(), 3);

        // A full lease id as prefix revokes exactly that lease.
        m.revoke_prefix("a/y/1", false).await.unwrap();
        assert!(m.lookup("a/y/1").await.unwrap().is_none());

        r.fail.store(true, Ordering::SeqCst);
        assert!(m.revoke_prefix("a/", false).await.is_err());
        assert!(m.lookup("a/xx/1").await.unwrap().unwrap().revoke_attempts >= 1);
        m.revoke_prefix("a/", true).await.unwrap();
        assert!(m.lookup("a/xx/1").await.unwrap().is_none());
        assert_eq!(m.len(), 1);
        assert!(m.lookup("b/1").await.unwrap().is_some());
        m.stop();
    }

    #[tokio::test]
    async fn revoke_by_token_touches_only_that_token() {
        let (storage, r, m) = setup();
        let far = now() + 3600;
        m.register(lease("db/creds/ro/1", "tok1", far))
            .await
            .unwrap();
        m.register(lease("db/creds/ro/2", "tok1", far))
            .await
            .unwrap();
        m.register(lease("db/creds/ro/3", "tok2", far))
            .await
            .unwrap();
        m.register(lease("db/creds/ro/4", "", far)).await.unwrap();
        let mut own = lease("auth/token/create/tok1", "tok1", far);
        own.is_token = true;
        m.register(own).await.unwrap();
        let mut child = lease("auth/token/create/child", "tok1", far);
        child.is_token = true;
        m.register(child).await.unwrap();

        m.revoke_by_token("tok1").await.unwrap();
        assert_eq!(
            r.revoked(),
            vec!["auth/token/create/child", "db/creds/ro/1", "db/creds/ro/2"]
        );
        assert!(m.lookup("db/creds/ro/3").await.unwrap().is_some());
        assert!(m.lookup("db/creds/ro/4").await.unwrap().is_some());
        assert!(m.lookup("auth/token/create/tok1").await.unwrap().is_some());
        let idx: Vec<String> = storage
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("token/tok1/"))
            .collect();
        assert_eq!(idx, vec![index_key("tok1", "auth/token/create/tok1")]);

        // A failing backend does not fail the token's revocation; the lease stays.
        r.fail.store(true, Ordering::SeqCst);
        m.revoke_by_token("tok2").await.unwrap();
        let l3 = m.lookup("db/creds/ro/3").await.unwrap().unwrap();
        assert!(l3.revoke_attempts >= 1);
        m.revoke_by_token("nobody").await.unwrap();
        m.stop();
    }

    #[tokio::test]
    async fn restore_reschedules_and_revokes_expired() {
        let storage = Arc::new(MemoryStorage::new());
        let r1 = Arc::new(TestRevoker::default());
        let m1 = ExpirationManager::with_options(storage.clone(), r1.clone(), fast());
        m1.stop();
        let n = now();
        m1.register(lease("db/creds/ro/far", "t", n + 3600))
            .await
            .unwrap();
        m1.register(lease("db/creds/ro/never", "", 0))
            .await
            .unwrap();
        m1.register(lease("db/creds/ro/old", "t", n - 10))
            .await
            .unwrap();
        m1.register(lease("db/creds/ro/soon", "t", n + 1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(r1.revoked().is_empty(), "a stopped manager revokes nothing");
        drop(m1);

        let r2 = Arc::new(TestRevoker::default());
        let m2 = ExpirationManager::with_options(storage.clone(), r2.clone(), fast());
        m2.restore();
        // "soon" may fall due within milliseconds (whole-second expiry), so
        // only the order is asserted: the overdue lease goes first.
        assert!(wait_for(|| !r2.revoked().is_empty(), Duration::from_secs(2)).await);
        assert_eq!(r2.revoked()[0], "db/creds/ro/old");
        assert!(wait_for(|| r2.revoked().len() == 2, Duration::from_secs(5)).await);
        assert_eq!(r2.revoked(), vec!["db/creds/ro/old", "db/creds/ro/soon"]);
        assert!(wait_for(|| m2.len() == 2, Duration::from_secs(1)).await);
        assert!(m2.lookup("db/creds/ro/far").await.unwrap().is_some());
        assert!(m2.lookup("db/creds/ro/never").await.unwrap().is_some());
        m2.stop();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mass_expiry_is_drained_in_batches() {
        let (storage, r, m) = setup();
        let n = now();
        for i in 0..3000 {
            m.register(lease(
                &format!("db/creds/ro/{i:05}"),
                &format!("t{}", i % 7),
                n - 1,
            ))
            .await
            .unwrap();
        }
        assert!(
            wait_for(|| r.revoked().len() == 3000, Duration::from_secs(10)).await,
            "{}",
            r.revoked().len()
        );
        assert!(wait_for(|| m.is_empty(), Duration::from_secs(1)).await);
        assert!(storage.is_empty());
    }

    #[tokio::test]
    async fn tidy_drops_dangling_index_entries() {
        let (storage, _r, m) = setup();
        m.register(lease("db/creds/ro/1", "tok", now() + 3600))
            .await
            .unwrap();
        storage
            .put(&index_key("tok", "db/creds/ro/gone"), b"x")
            .await
            .unwrap();
        storage
            .put(&index_key("other", "db/creds/ro/1"), b"x")
            .await
            .unwrap();
        storage.put("token/tok/!!notbase64", b"x").await.unwrap();
        assert_eq!(m.tidy().await.unwrap(), 3);
        assert_eq!(m.tidy().await.unwrap(), 0);
        assert!(storage.keys().contains(&index_key("tok", "db/creds/ro/1")));
        m.stop();
    }

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            })
            .unwrap_or(0)
    }

    /// `cargo test -p tresor-core --lib expiration::tests::scale -- --ignored --nocapture`
    /// (LEASES=n to change the count).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn scale_register_and_restore() {
        let count: usize = std::env::var("LEASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200_000);
        // The dev server's stack: memory, the barrier, a view.
        let physical = Arc::new(tresor_storage::MemoryStorage::new());
        let barrier = crate::barrier::Barrier::new(physical.clone());
        let key = [7u8; 32];
        barrier.initialize(&key).await.unwrap();
        barrier.unseal(&key).await.unwrap();
        let storage: Arc<dyn Storage> = Arc::new(crate::barrier::View::new(barrier, "sys/expire/"));
        let r = Arc::new(TestRevoker::default());
        let m = ExpirationManager::new(storage.clone(), r.clone());
        let far = now() + 86_400;
        let rss0 = rss_kib();
        let t = std::time::Instant::now();
        for i in 0..count {
            let id = format!("database/creds/readonly/{}", uuid::Uuid::new_v4());
            m.register(lease(
                &id,
                &format!("tok{}", i % 1000),
                far + (i % 3600) as i64,
            ))
            .await
            .unwrap();
        }
        let reg = t.elapsed();
        let rss1 = rss_kib();
        println!(
            "register {count}: {:?} ({:.0}/s); storage keys {}; RSS +{} MiB (storage + schedule)",
            reg,
            count as f64 / reg.as_secs_f64(),
            physical.len(),
            (rss1.saturating_sub(rss0)) / 1024
        );
        drop(m);

        let m2 = ExpirationManager::new(storage.clone(), r.clone());
        let rss2 = rss_kib();
        let t = std::time::Instant::now();
        m2.restore();
        let returned = t.elapsed();
        // Requests keep being served while restore runs.
        let mut probe_max = Duration::ZERO;
        while m2.len() < count {
            let p = std::time::Instant::now();
            m2.lookup("database/creds/readonly/none").await.unwrap();
            probe_max = probe_max.max(p.elapsed());
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(t.elapsed() < Duration::from_secs(600));
        }
        let rest = t.elapsed();
        let rss3 = rss_kib();
        println!(
            "restore {count}: returned in {:?}, all scheduled after {:?} ({:.0}/s); slowest concurrent lookup {:?}; schedule RSS +{} MiB ({} B/lease)",
            returned,
            rest,
            count as f64 / rest.as_secs_f64(),
            probe_max,
            rss3.saturating_sub(rss2) / 1024,
            rss3.saturating_sub(rss2) * 1024 / count as u64
        );
        assert!(r.revoked().is_empty());
        m2.stop();
    }
}
