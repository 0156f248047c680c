//! KV version 2: versioned secrets with metadata, soft delete, destroy,
//! check-and-set and automatic deletion, on Vault's paths:
//!
//! | path | operations |
//! | --- | --- |
//! | `config` | read, write |
//! | `data/<path>` | read (`?version=`; during a rotation's grace period the current version's `metadata` also names `previous_version` and `grace_until`), write, patch, delete (latest version) |
//! | `delete/<path>`, `undelete/<path>`, `destroy/<path>` | write `{"versions": [...]}` |
//! | `metadata/<path>` | read, write, patch, delete (everything), list |
//! | `subkeys/<path>` | read (`?version=&depth=`) |
//! | `rotation/<path>`, `rotate/<path>` | rotation rule; rotate now (see `rotation`) |
//!
//! Storage layout: `config`; `metadata/<path>` (one JSON [`KeyMetadata`]
//! per secret, with the state of every version); `versions/<hex(path)>/<n>`
//! (the data of version `n`); `rotation/<path>` (a rotation rule and its state). The metadata keys mirror the secret paths so
//! that LIST on `metadata/` is a plain storage listing; version keys use the
//! hex-encoded path so that one secret's versions never share a folder with
//! another secret's (`a` and `a/1` would otherwise meet in `versions/a/1`).
//! Every change that touches metadata and version data goes through one
//! `Storage::batch`, so a reader never sees half of it.
//!
//! Writes to one secret are serialised by a lock (one of `LOCK_SHARDS`,
//! chosen by the path's hash) so two writers cannot take the same version
//! number; reads take no lock. Reads of `data/` go through a cache of
//! decoded secrets (see `cache`), which the lock's guard keeps honest.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{de, Deserialize, Deserializer, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard};
use tresor_sdk::fields;
use tresor_sdk::storage::json_op;
use tresor_sdk::{
    Backend, BackendError, Map, Operation, PathTable, Request, Response, Storage, StorageExt,
    StorageOp, SystemView,
};

use super::cache::{Cached, ReadCache};
use super::{go_duration, help, list_prefix, secret_path};

const CONFIG_KEY: &str = "config";
const METADATA_PREFIX: &str = "metadata/";
const VERSIONS_PREFIX: &str = "versions/";
/// What Vault keeps when neither the mount nor the secret sets `max_versions`.
const DEFAULT_MAX_VERSIONS: u64 = 10;
/// Number of write locks; secrets whose paths hash alike share one, which
/// only costs a little parallelism.
const LOCK_SHARDS: usize = 64;

/// Vault's limits on `custom_metadata`.
const MAX_CUSTOM_METADATA_KEYS: usize = 64;
const MAX_CUSTOM_METADATA_KEY_LEN: usize = 128;
const MAX_CUSTOM_METADATA_VALUE_LEN: usize = 512;

const CAS_MISMATCH: &str = "check-and-set parameter did not match the current version";
const CAS_REQUIRED: &str = "check-and-set parameter required for this call";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Config,
    Data,
    Metadata,
    Delete,
    Undelete,
    Destroy,
    Subkeys,
    Rotation,
    Rotate,
}

/// The KV version 2 backend.
pub struct KvV2 {
    routes: PathTable<Route>,
    locks: Vec<Mutex<()>>,
    /// Where rotations get their passwords; `None` in a bare engine
    /// (tests), whose rotations then fail.
    system: Option<Arc<dyn SystemView>>,
    /// For log lines only.
    mount_point: String,
    cache: ReadCache,
}

impl Default for KvV2 {
    fn default() -> Self {
        Self::new()
    }
}

impl KvV2 {
    pub fn new() -> Self {
        KvV2 {
            routes: PathTable::new(&[
                ("config", Route::Config),
                ("data(?:/(?P<path>.*))?", Route::Data),
                ("metadata(?:/(?P<path>.*))?", Route::Metadata),
                ("delete(?:/(?P<path>.*))?", Route::Delete),
                ("undelete(?:/(?P<path>.*))?", Route::Undelete),
                ("destroy(?:/(?P<path>.*))?", Route::Destroy),
                ("subkeys(?:/(?P<path>.*))?", Route::Subkeys),
                ("rotation(?:/(?P<path>.*))?", Route::Rotation),
                ("rotate(?:/(?P<path>.*))?", Route::Rotate),
            ]),
            locks: (0..LOCK_SHARDS).map(|_| Mutex::new(())).collect(),
            system: None,
            mount_point: String::new(),
            cache: ReadCache::default(),
        }
    }

    /// An engine that can rotate: passwords come from `system`.
    pub fn with_system(system: Arc<dyn SystemView>, mount_point: impl Into<String>) -> Self {
        KvV2 {
            system: Some(system),
            mount_point: mount_point.into(),
            ..Self::new()
        }
    }

    /// The write lock of one secret. Every change to a secret is made
    /// under it; letting go of it drops the secret's cached reads.
    pub(super) async fn lock<'a>(&'a self, path: &'a str) -> PathLock<'a> {
        // A fixed-key hasher: the shard only has to be stable for the life
        // of this engine instance, and a collision merely serialises two
        // unrelated writers.
        let mut h = DefaultHasher::new();
        path.hash(&mut h);
        let shard = (h.finish() % LOCK_SHARDS as u64) as usize;
        PathLock {
            _guard: self.locks[shard].lock().await,
            cache: &self.cache,
            path,
        }
    }
}

/// A held write lock; see [`KvV2::lock`].
pub(super) struct PathLock<'a> {
    _guard: MutexGuard<'a, ()>,
    cache: &'a ReadCache,
    path: &'a str,
}

impl Drop for PathLock<'_> {
    /// Runs before the mutex is released (fields drop after `drop`), and
    /// whether the change succeeded or not: storage may hold either state.
    fn drop(&mut self) {
        self.cache.invalidate(self.path);
    }
}

// ----- stored types -----------------------------------------------------

/// Mount-wide settings (`config`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Config {
    #[serde(default)]
    max_versions: u64,
    #[serde(default)]
    cas_required: bool,
    #[serde(default, with = "fields::secs")]
    delete_version_after: Duration,
}

/// One secret's metadata and the state of each version it still remembers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct KeyMetadata {
    current_version: u64,
    /// Starts at 0 and moves only when versions are pruned, like Vault's.
    oldest_version: u64,
    #[serde(default)]
    max_versions: u64,
    #[serde(default)]
    cas_required: bool,
    #[serde(default, with = "fields::secs")]
    delete_version_after: Duration,
    #[serde(default)]
    custom_metadata: BTreeMap<String, String>,
    #[serde(deserialize_with = "stored_time")]
    created_time: DateTime<Utc>,
    #[serde(deserialize_with = "stored_time")]
    updated_time: DateTime<Utc>,
    #[serde(default)]
    versions: BTreeMap<u64, VersionMeta>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VersionMeta {
    #[serde(deserialize_with = "stored_time")]
    created_time: DateTime<Utc>,
    /// Set by a delete, or at write time when `delete_version_after`
    /// applies (then it lies in the future until it passes).
    #[serde(default, deserialize_with = "stored_time_opt")]
    deletion_time: Option<DateTime<Utc>>,
    destroyed: bool,
    /// Set on the version a rotation replaced: until then it is kept
    /// whatever `max_versions` says.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "stored_time_opt"
    )]
    grace_until: Option<DateTime<Utc>>,
}

/// A timestamp of the stored metadata (written by us, RFC 3339). serde's
/// default goes through chrono's `FromStr`, the relaxed format-item parser,
/// and cost a KV read more than its decryption; the dedicated RFC 3339
/// parser gives the same instant for the same text. Text it refuses still
/// goes through `FromStr`, so what was readable stays readable.
struct StoredTime(DateTime<Utc>);

impl<'de> Deserialize<'de> for StoredTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = StoredTime;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an RFC 3339 timestamp")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<StoredTime, E> {
                match DateTime::parse_from_rfc3339(s) {
                    Ok(t) => Ok(StoredTime(t.with_timezone(&Utc))),
                    Err(_) => s.parse().map(StoredTime).map_err(E::custom),
                }
            }
        }
        d.deserialize_str(V)
    }
}

fn stored_time<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    StoredTime::deserialize(d).map(|t| t.0)
}

fn stored_time_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    Option::<StoredTime>::deserialize(d).map(|t| t.map(|t| t.0))
}

impl VersionMeta {
    fn is_deleted(&self, now: DateTime<Utc>) -> bool {
        self.deletion_time.is_some_and(|t| t <= now)
    }

    fn is_live(&self, now: DateTime<Utc>) -> bool {
        !self.destroyed && !self.is_deleted(now)
    }

    fn in_grace(&self, now: DateTime<Utc>) -> bool {
        self.grace_until.is_some_and(|t| t > now)
    }
}

impl KeyMetadata {
    pub(super) fn new(now: DateTime<Utc>) -> Self {
        KeyMetadata {
            current_version: 0,
            oldest_version: 0,
            max_versions: 0,
            cas_required: false,
            delete_version_after: Duration::ZERO,
            custom_metadata: BTreeMap::new(),
            created_time: now,
            updated_time: now,
            versions: BTreeMap::new(),
        }
    }
}

fn metadata_key(path: &str) -> String {
    format!("{METADATA_PREFIX}{path}")
}

fn version_key(path: &str, version: u64) -> String {
    // Every read builds one: bytes pushed directly rather than through
    // `format!` and `hex::encode`'s char iterator.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut key = String::with_capacity(VERSIONS_PREFIX.len() + 2 * path.len() + 21);
    key.push_str(VERSIONS_PREFIX);
    for b in path.bytes() {
        key.push(char::from(HEX[usize::from(b >> 4)]));
        key.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    key.push('/');
    // Writing to a String cannot fail.
    let _ = std::fmt::Write::write_fmt(&mut key, format_args!("{version}"));
    key
}

async fn load_config(storage: &dyn Storage) -> Result<Config, BackendError> {
    Ok(storage.get_json(CONFIG_KEY).await?.unwrap_or_default())
}

async fn load_meta(storage: &dyn Storage, path: &str) -> Result<Option<KeyMetadata>, BackendError> {
    Ok(storage.get_json(&metadata_key(path)).await?)
}

// ----- request types ------------------------------------------------------

/// Wraps a lenient decoder of `tresor_sdk::fields` so that its error names
/// the field: serde_json reports custom errors without the field's path.
macro_rules! named_field {
    ($name:ident, $field:literal, $inner:path, $ty:ty) => {
        fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            $inner(d).map_err(|e: D::Error| de::Error::custom(format!("{}: {e}", $field)))
        }
    };
}

named_field!(
    max_versions_field,
    "max_versions",
    fields::opt_uint,
    Option<u64>
);
named_field!(
    cas_required_field,
    "cas_required",
    fields::opt_boolean,
    Option<bool>
);
named_field!(
    delete_after_field,
    "delete_version_after",
    fields::opt_duration,
    Option<Duration>
);
named_field!(cas_field, "cas", fields::opt_uint, Option<u64>);
named_field!(version_field, "version", fields::opt_uint, Option<u64>);
named_field!(depth_field, "depth", fields::uint, u64);

#[path = "rotation.rs"]
mod rotation;

#[derive(Debug, Deserialize)]
struct ConfigInput {
    #[serde(default, deserialize_with = "max_versions_field")]
    max_versions: Option<u64>,
    #[serde(default, deserialize_with = "cas_required_field")]
    cas_required: Option<bool>,
    #[serde(default, deserialize_with = "delete_after_field")]
    delete_version_after: Option<Duration>,
}

/// Body of a `data/` write or patch. `data` stays JSON: it is the secret.
#[derive(Debug, Deserialize)]
struct DataInput {
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    options: Option<WriteOptions>,
}

#[derive(Debug, Default, Deserialize)]
struct WriteOptions {
    #[serde(default, deserialize_with = "cas_field")]
    cas: Option<u64>,
}

impl DataInput {
    fn cas(&self) -> Option<u64> {
        self.options.as_ref().and_then(|o| o.cas)
    }

    fn into_payload(self) -> Result<Map, BackendError> {
        match self.data {
            None | Some(Value::Null) => Err(BackendError::bad_request("no data provided")),
            Some(Value::Object(m)) => Ok(m),
            Some(other) => Err(BackendError::bad_request(format!(
                "invalid request: field 'data' must be a JSON object, got {}",
                json_kind(&other)
            ))),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ReadQuery {
    #[serde(default, deserialize_with = "version_field")]
    version: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct SubkeysQuery {
    #[serde(default, deserialize_with = "version_field")]
    version: Option<u64>,
    #[serde(default, deserialize_with = "depth_field")]
    depth: u64,
}

#[derive(Debug, Deserialize)]
struct VersionsInput {
    #[serde(default, deserialize_with = "version_list")]
    versions: Vec<u64>,
}

#[derive(Debug, Deserialize)]
struct MetadataInput {
    #[serde(default, deserialize_with = "max_versions_field")]
    max_versions: Option<u64>,
    #[serde(default, deserialize_with = "cas_required_field")]
    cas_required: Option<bool>,
    #[serde(default, deserialize_with = "delete_after_field")]
    delete_version_after: Option<Duration>,
    /// `None` for a key means "remove it" (PATCH only).
    #[serde(default, deserialize_with = "custom_metadata_field")]
    custom_metadata: Option<BTreeMap<String, Option<String>>>,
}

/// Versions as Vault accepts them: `[1, 2]`, `["1", "2"]`, `"1,2"` or `1`.
fn version_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    fn one<E: de::Error>(v: &Value) -> Result<u64, E> {
        match v {
            Value::Number(n) => n
                .as_u64()
                .ok_or_else(|| E::custom(format!("versions: invalid version number {n}"))),
            Value::String(s) => s
                .trim()
                .parse()
                .map_err(|_| E::custom(format!("versions: invalid version number {s:?}"))),
            other => Err(E::custom(format!(
                "versions: invalid version number {other}"
            ))),
        }
    }
    match Value::deserialize(d)? {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items.iter().map(one).collect(),
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| one(&Value::String(p.to_string())))
            .collect(),
        n @ Value::Number(_) => Ok(vec![one(&n)?]),
        other => Err(de::Error::custom(format!(
            "versions: expected a list of version numbers, got {other}"
        ))),
    }
}

/// `custom_metadata`: an object of strings (numbers and booleans are written
/// as text, as Vault's key-value pair fields do); `null` values mark keys to
/// remove in a PATCH.
fn custom_metadata_field<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, Option<String>>>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Object(m) => m
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::Null => None,
                    Value::String(s) => Some(s),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    other => {
                        return Err(de::Error::custom(format!(
                            "custom_metadata: value for key {k:?} must be a string, got {}",
                            json_kind(&other)
                        )))
                    }
                };
                Ok((k, v))
            })
            .collect::<Result<_, _>>()
            .map(Some),
        other => Err(de::Error::custom(format!(
            "custom_metadata: expected an object of strings, got {}",
            json_kind(&other)
        ))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn validate_custom_metadata(m: &BTreeMap<String, String>) -> Result<(), BackendError> {
    const PREFIX: &str = "custom_metadata validation failed";
    let mut errs = Vec::new();
    if m.len() > MAX_CUSTOM_METADATA_KEYS {
        errs.push(format!(
            "{PREFIX}: payload must contain at most {MAX_CUSTOM_METADATA_KEYS} keys, provided {}",
            m.len()
        ));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > MAX_CUSTOM_METADATA_KEY_LEN {
            errs.push(format!(
                "{PREFIX}: length of key {k:?} is {} but must be 0 < len(key) <= {MAX_CUSTOM_METADATA_KEY_LEN}",
                k.len()
            ));
        }
        if v.len() > MAX_CUSTOM_METADATA_VALUE_LEN {
            errs.push(format!(
                "{PREFIX}: length of value for key {k:?} is {} but must be <= {MAX_CUSTOM_METADATA_VALUE_LEN}",
                v.len()
            ));
        }
        if k.chars().any(char::is_control) {
            errs.push(format!(
                "{PREFIX}: key {k:?} contains unprintable characters"
            ));
        }
        if v.chars().any(char::is_control) {
            errs.push(format!(
                "{PREFIX}: value for key {k:?} contains unprintable characters"
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(BackendError::BadRequest(errs.join("; ")))
    }
}

// ----- response types -----------------------------------------------------

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn opt_ts(t: &Option<DateTime<Utc>>) -> String {
    t.as_ref().map(ts).unwrap_or_default()
}

/// `custom_metadata` as Vault answers it: `null` when there is none.
fn custom_out(m: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!m.is_empty()).then(|| m.clone())
}

/// The metadata of one version, as `data/` reads and writes answer it
/// (a read may add the grace fields, see [`add_grace`]).
#[derive(Debug, Serialize)]
struct VersionOut {
    created_time: String,
    custom_metadata: Option<BTreeMap<String, String>>,
    deletion_time: String,
    destroyed: bool,
    version: u64,
}

impl VersionOut {
    fn new(meta: &KeyMetadata, version: u64, vm: &VersionMeta) -> Self {
        VersionOut {
            created_time: ts(&vm.created_time),
            custom_metadata: custom_out(&meta.custom_metadata),
            deletion_time: opt_ts(&vm.deletion_time),
            destroyed: vm.destroyed,
            version,
        }
    }
}

/// Adds `previous_version` and `grace_until` to the `metadata` of a read's
/// answer (`read_answer`) when `grace` (from [`grace_of`]) says so.
///
/// Both are ours, not Vault's: a read of the current version carries them
/// while the version a rotation replaced is in its grace period, so that a
/// consumer allowed to read `data/<path>` learns which `?version=` still
/// holds the old value without needing access to `rotation/<path>`. They
/// are left out otherwise; Vault clients ignore unknown metadata fields.
fn add_grace(answer: &mut Map, grace: Option<(u64, DateTime<Utc>)>) {
    if let (Some((previous, until)), Some(Value::Object(m))) = (grace, answer.get_mut("metadata")) {
        m.insert("previous_version".into(), previous.into());
        m.insert("grace_until".into(), ts(&until).into());
    }
}

/// The version a rotation replaced and the end of its grace period, when
/// `version` is the current version, the one just before it is in its
/// grace period, and it is still readable (not deleted or destroyed by
/// hand meanwhile).
///
/// Only the version directly before the current one counts: a plain write
/// after a rotation supersedes the rotated value, and the version that
/// rotation retired is then two steps back, no longer "the previous
/// value" (it stays readable by `?version=` until its grace ends).
fn grace_of(meta: &KeyMetadata, version: u64, now: DateTime<Utc>) -> Option<(u64, DateTime<Utc>)> {
    if version != meta.current_version {
        return None;
    }
    let previous = version.checked_sub(1).filter(|p| *p > 0)?;
    let vm = meta.versions.get(&previous)?;
    if !vm.is_live(now) || !vm.in_grace(now) {
        return None;
    }
    vm.grace_until.map(|until| (previous, until))
}

/// `DataOut`'s shape, without a serialisation round trip (a deep copy) of
/// the secret's data.
fn read_answer(data: Map, metadata: &VersionOut) -> Result<Map, BackendError> {
    let mut out = Map::new();
    out.insert("data".into(), Value::Object(data));
    out.insert("metadata".into(), serde_json::to_value(metadata)?);
    Ok(out)
}

#[derive(Debug, Serialize)]
struct DataOut {
    data: Option<Map>,
    metadata: VersionOut,
}

#[derive(Debug, Serialize)]
struct SubkeysOut {
    subkeys: Option<Map>,
    metadata: VersionOut,
}

#[derive(Debug, Serialize)]
struct VersionSummary {
    created_time: String,
    deletion_time: String,
    destroyed: bool,
}

#[derive(Debug, Serialize)]
struct MetadataOut {
    cas_required: bool,
    created_time: String,
    current_version: u64,
    custom_metadata: Option<BTreeMap<String, String>>,
    delete_version_after: String,
    max_versions: u64,
    oldest_version: u64,
    updated_time: String,
    versions: BTreeMap<u64, VersionSummary>,
}

impl MetadataOut {
    fn new(meta: &KeyMetadata) -> Self {
        MetadataOut {
            cas_required: meta.cas_required,
            created_time: ts(&meta.created_time),
            current_version: meta.current_version,
            custom_metadata: custom_out(&meta.custom_metadata),
            delete_version_after: go_duration(meta.delete_version_after),
            max_versions: meta.max_versions,
            oldest_version: meta.oldest_version,
            updated_time: ts(&meta.updated_time),
            versions: meta
                .versions
                .iter()
                .map(|(n, v)| {
                    let s = VersionSummary {
                        created_time: ts(&v.created_time),
                        deletion_time: opt_ts(&v.deletion_time),
                        destroyed: v.destroyed,
                    };
                    (*n, s)
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
struct ConfigOut {
    cas_required: bool,
    delete_version_after: String,
    max_versions: u64,
}

/// A 404 that carries a body, the way Vault answers a deleted version.
fn not_found_with<T: Serialize>(body: &T) -> Result<Option<Response>, BackendError> {
    let mut resp = Response::with_data(body)?;
    resp.status = Some(404);
    Ok(Some(resp))
}

/// Nothing to patch: the core answers `Ok(None)` on a PATCH with 404.
fn not_found() -> Option<Response> {
    None
}

// ----- the logic ---------------------------------------------------------------

/// A failed check-and-set is a failed precondition: 412, which is what
/// this project's API contract specifies (Vault itself answers 400 here).
fn cas_error(msg: &str) -> BackendError {
    BackendError::PreconditionFailed(msg.to_string())
}

fn check_cas(config: &Config, meta: &KeyMetadata, cas: Option<u64>) -> Result<(), BackendError> {
    match cas {
        Some(c) if c != meta.current_version => Err(cas_error(CAS_MISMATCH)),
        Some(_) => Ok(()),
        None if config.cas_required || meta.cas_required => Err(cas_error(CAS_REQUIRED)),
        None => Ok(()),
    }
}

/// The smaller of the secret's and the mount's non-zero
/// `delete_version_after`, as Vault documents it.
fn effective_delete_after(config: &Config, meta: &KeyMetadata) -> Duration {
    match (meta.delete_version_after, config.delete_version_after) {
        (m, c) if m.is_zero() => c,
        (m, c) if c.is_zero() => m,
        (m, c) => m.min(c),
    }
}

/// Appends a version to `meta` and returns the storage operations that
/// write it, prune what falls beyond `max_versions`, and save the metadata.
fn add_version(
    path: &str,
    config: &Config,
    meta: &mut KeyMetadata,
    data: &Map,
    now: DateTime<Utc>,
) -> Result<(u64, Vec<StorageOp>), BackendError> {
    let version = meta.current_version + 1;
    let after = effective_delete_after(config, meta);
    let deletion_time = if after.is_zero() {
        None
    } else {
        let d = chrono::Duration::from_std(after)
            .map_err(|_| BackendError::bad_request("delete_version_after is out of range"))?;
        now.checked_add_signed(d)
    };
    meta.versions.insert(
        version,
        VersionMeta {
            created_time: now,
            deletion_time,
            destroyed: false,
            grace_until: None,
        },
    );
    meta.current_version = version;
    meta.updated_time = now;

    let mut ops = vec![json_op(version_key(path, version), data)?];

    let max = match (meta.max_versions, config.max_versions) {
        (m, _) if m > 0 => m,
        (_, c) if c > 0 => c,
        _ => DEFAULT_MAX_VERSIONS,
    };
    // Vault's arithmetic, so `oldest_version` reads the same as there.
    if meta.current_version - meta.oldest_version >= max {
        let last_pruned = meta.current_version - max;
        // A version in its rotation grace period outlives the limit; the
        // oldest one kept stays `oldest_version` so a later write prunes it.
        let mut kept = None;
        for v in meta.oldest_version..=last_pruned {
            if meta.versions.get(&v).is_some_and(|vm| vm.in_grace(now)) {
                kept.get_or_insert(v);
                continue;
            }
            if meta.versions.remove(&v).is_some() {
                ops.push(StorageOp::Delete {
                    key: version_key(path, v),
                });
            }
        }
        meta.oldest_version = kept.unwrap_or(last_pruned + 1);
    }

    ops.push(json_op(metadata_key(path), meta)?);
    Ok((version, ops))
}

/// RFC 7396 JSON merge patch.
fn merge_patch(target: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(&k);
            } else {
                merge_patch(t.entry(k).or_insert(Value::Null), v);
            }
        }
    }
}

/// The structure of `data` with every leaf replaced by `null`; objects at
/// `depth` (when non-zero) count as leaves.
fn subkeys(data: &Map, depth: u64, level: u64) -> Map {
    data.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Object(inner) if depth == 0 || level < depth => {
                    Value::Object(subkeys(inner, depth, level + 1))
                }
                _ => Value::Null,
            };
            (k.clone(), v)
        })
        .collect()
}

impl KvV2 {
    async fn config_read(&self, storage: &dyn Storage) -> Result<Option<Response>, BackendError> {
        let c = load_config(storage).await?;
        Ok(Some(Response::with_data(&ConfigOut {
            cas_required: c.cas_required,
            delete_version_after: go_duration(c.delete_version_after),
            max_versions: c.max_versions,
        })?))
    }

    async fn config_write(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: ConfigInput = req.parse()?;
        let mut c = load_config(storage).await?;
        if let Some(m) = input.max_versions {
            c.max_versions = m;
        }
        if let Some(b) = input.cas_required {
            c.cas_required = b;
        }
        if let Some(d) = input.delete_version_after {
            c.delete_version_after = d;
        }
        storage.put_json(CONFIG_KEY, &c).await?;
        Ok(None)
    }

    async fn data_read(
        &self,
        path: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let q: ReadQuery = req.parse()?;
        let Some(cached) = self.cached_read(path, storage).await? else {
            return Ok(None);
        };
        let meta = &cached.meta;
        let version = match q.version {
            None | Some(0) => meta.current_version,
            Some(v) => v,
        };
        let Some(vm) = meta.versions.get(&version) else {
            return Ok(None);
        };
        let now = Utc::now();
        if !vm.is_live(now) {
            return not_found_with(&DataOut {
                data: None,
                metadata: VersionOut::new(meta, version, vm),
            });
        }
        let mut answer = match &cached.current {
            Some(answer) if version == meta.current_version => answer.clone(),
            _ => match storage.get_json::<Map>(&version_key(path, version)).await? {
                Some(data) => read_answer(data, &VersionOut::new(meta, version, vm))?,
                None => {
                    return Err(BackendError::Internal(format!(
                        "kv: version {version} of a secret has metadata but no data"
                    )))
                }
            },
        };
        add_grace(&mut answer, grace_of(meta, version, now));
        Ok(Some(Response::data(answer)))
    }

    /// A secret's metadata and current data, from the cache or storage.
    async fn cached_read(
        &self,
        path: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Arc<Cached>>, BackendError> {
        let ticket = match self.cache.get(path) {
            Ok(hit) => return Ok(Some(hit)),
            Err(ticket) => ticket,
        };
        let Some(raw) = storage.get(&metadata_key(path)).await? else {
            return Ok(None);
        };
        let meta: KeyMetadata = serde_json::from_slice(&raw)?;
        let mut bytes = raw.len();
        // Only a live current version is worth keeping: the others are
        // read by `?version=`, rarely, or answer 404 without their data.
        let current = match meta.versions.get(&meta.current_version) {
            Some(vm) if vm.is_live(Utc::now()) => {
                match storage
                    .get(&version_key(path, meta.current_version))
                    .await?
                {
                    Some(raw) => {
                        bytes += raw.len();
                        let data = serde_json::from_slice::<Map>(&raw)?;
                        let metadata = VersionOut::new(&meta, meta.current_version, vm);
                        Some(read_answer(data, &metadata)?)
                    }
                    None => None,
                }
            }
            _ => None,
        };
        let entry = Arc::new(Cached::new(meta, current, bytes));
        self.cache.insert(ticket, path, entry.clone());
        Ok(Some(entry))
    }

    async fn data_write(
        &self,
        path: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: DataInput = req.parse()?;
        let cas = input.cas();
        let data = input.into_payload()?;

        let _guard = self.lock(path).await;
        let config = load_config(storage).await?;
        let now = Utc::now();
        let mut meta = load_meta(storage, path)
            .await?
            .unwrap_or_else(|| KeyMetadata::new(now));
        check_cas(&config, &meta, cas)?;
        self.commit_version(path, &config, &mut meta, &data, now, storage)
            .await
    }

    async fn commit_version(
        &self,
        path: &str,
        config: &Config,
        meta: &mut KeyMetadata,
        data: &Map,
        now: DateTime<Utc>,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let (version, ops) = add_version(path, config, meta, data, now)?;
        storage.batch(ops).await?;
        let vm = meta
            .versions
            .get(&version)
            .ok_or_else(|| BackendError::Internal("kv: new version was pruned".into()))?;
        Ok(Some(Response::with_data(&VersionOut::new(
            meta, version, vm,
        ))?))
    }

    async fn data_patch(
        &self,
        path: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: DataInput = req.parse()?;
        let cas = input.cas();
        let patch = input.into_payload()?;

        let _guard = self.lock(path).await;
        let config = load_config(storage).await?;
        let now = Utc::now();
        let Some(mut meta) = load_meta(storage, path).await? else {
            return Ok(not_found());
        };
        let current = meta.current_version;
        if !meta.versions.get(&current).is_some_and(|v| v.is_live(now)) {
            return Ok(not_found());
        }
        check_cas(&config, &meta, cas)?;
        let Some(existing) = storage.get_json::<Map>(&version_key(path, current)).await? else {
            return Ok(not_found());
        };
        let mut merged = Value::Object(existing);
        merge_patch(&mut merged, Value::Object(patch));
        let Value::Object(merged) = merged else {
            return Err(BackendError::Internal(
                "kv: merge produced a non-object".into(),
            ));
        };
        self.commit_version(path, &config, &mut meta, &merged, now, storage)
            .await
    }

    /// DELETE `data/<path>`: soft-delete the latest version.
    async fn data_delete(
        &self,
        path: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let _guard = self.lock(path).await;
        let Some(mut meta) = load_meta(storage, path).await? else {
            return Ok(None);
        };
        let now = Utc::now();
        let current = meta.current_version;
        if let Some(vm) = meta.versions.get_mut(&current) {
            if vm.is_live(now) {
                vm.deletion_time = Some(now);
                storage.put_json(&metadata_key(path), &meta).await?;
            }
        }
        Ok(None)
    }

    async fn versions_op(
        &self,
        route: Route,
        path: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: VersionsInput = req.parse()?;
        if input.versions.is_empty() {
            return Err(BackendError::bad_request("no version number provided"));
        }
        let _guard = self.lock(path).await;
        let Some(mut meta) = load_meta(storage, path).await? else {
            return Ok(None);
        };
        let now = Utc::now();
        let mut ops = Vec::new();
        for n in &input.versions {
            let Some(vm) = meta.versions.get_mut(n) else {
                continue;
            };
            match route {
                Route::Delete if vm.is_live(now) => vm.deletion_time = Some(now),
                Route::Undelete if !vm.destroyed => vm.deletion_time = None,
                Route::Destroy => {
                    vm.destroyed = true;
                    ops.push(StorageOp::Delete {
                        key: version_key(path, *n),
                    });
                }
                _ => {}
            }
        }
        ops.push(json_op(metadata_key(path), &meta)?);
        storage.batch(ops).await?;
        Ok(None)
    }

    async fn metadata_read(
        &self,
        path: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        match load_meta(storage, path).await? {
            None => Ok(None),
            Some(meta) => Ok(Some(Response::with_data(&MetadataOut::new(&meta))?)),
        }
    }

    /// POST replaces `custom_metadata` wholesale; PATCH merges it (a `null`
    /// value removes a key) and answers 404 when the secret does not exist.
    async fn metadata_write(
        &self,
        path: &str,
        req: &Request,
        storage: &dyn Storage,
        patch: bool,
    ) -> Result<Option<Response>, BackendError> {
        let input: MetadataInput = req.parse()?;
        let _guard = self.lock(path).await;
        let now = Utc::now();
        let mut meta = match load_meta(storage, path).await? {
            Some(m) => m,
            None if patch => return Ok(not_found()),
            None => KeyMetadata::new(now),
        };
        if let Some(m) = input.max_versions {
            meta.max_versions = m;
        }
        if let Some(b) = input.cas_required {
            meta.cas_required = b;
        }
        if let Some(d) = input.delete_version_after {
            meta.delete_version_after = d;
        }
        if let Some(custom) = input.custom_metadata {
            if patch {
                for (k, v) in custom {
                    match v {
                        Some(v) => meta.custom_metadata.insert(k, v),
                        None => meta.custom_metadata.remove(&k),
                    };
                }
            } else {
                let mut fresh = BTreeMap::new();
                for (k, v) in custom {
                    let v = v.ok_or_else(|| {
                        BackendError::bad_request(format!(
                            "custom_metadata: value for key {k:?} must be a string, got null"
                        ))
                    })?;
                    fresh.insert(k, v);
                }
                meta.custom_metadata = fresh;
            }
            validate_custom_metadata(&meta.custom_metadata)?;
        }
        meta.updated_time = now;
        storage.put_json(&metadata_key(path), &meta).await?;
        if patch {
            // `None` to a PATCH means "nothing to patch" (404) in the core;
            // a successful one is Vault's 204.
            return Ok(Some(Response {
                status: Some(204),
                ..Response::default()
            }));
        }
        Ok(None)
    }

    /// DELETE `metadata/<path>`: the metadata and every version, at once.
    async fn metadata_delete(
        &self,
        path: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let _guard = self.lock(path).await;
        let Some(meta) = load_meta(storage, path).await? else {
            return Ok(None);
        };
        let mut ops: Vec<StorageOp> = meta
            .versions
            .keys()
            .map(|n| StorageOp::Delete {
                key: version_key(path, *n),
            })
            .collect();
        ops.push(StorageOp::Delete {
            key: metadata_key(path),
        });
        ops.push(StorageOp::Delete {
            key: rotation::rotation_key(path),
        });
        storage.batch(ops).await?;
        Ok(None)
    }

    async fn metadata_list(
        &self,
        raw: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let prefix = format!("{METADATA_PREFIX}{}", list_prefix(raw)?);
        super::passthrough_list(storage, &prefix).await
    }

    async fn subkeys_read(
        &self,
        path: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let q: SubkeysQuery = req.parse()?;
        let Some(meta) = load_meta(storage, path).await? else {
            return Ok(None);
        };
        let version = match q.version {
            None | Some(0) => meta.current_version,
            Some(v) => v,
        };
        let Some(vm) = meta.versions.get(&version) else {
            return Ok(None);
        };
        let metadata = VersionOut::new(&meta, version, vm);
        if !vm.is_live(Utc::now()) {
            return not_found_with(&SubkeysOut {
                subkeys: None,
                metadata,
            });
        }
        let Some(data) = storage.get_json::<Map>(&version_key(path, version)).await? else {
            return Ok(None);
        };
        Ok(Some(Response::with_data(&SubkeysOut {
            subkeys: Some(subkeys(&data, q.depth, 1)),
            metadata,
        })?))
    }
}

const HELP_CONFIG: &str =
    "Configures settings for the KV store: max_versions, cas_required, delete_version_after.";
const HELP_DATA: &str = "Write, patch, read and delete versioned data in the KV store.";
const HELP_METADATA: &str = "Configures the settings of a secret and reads its version history; LIST lists secrets; DELETE removes every version.";
const HELP_VERSIONS: &str = "Marks versions deleted (delete), restores them (undelete) or removes their data for good (destroy): {\"versions\": [1, 2]}.";
const HELP_SUBKEYS: &str = "Reads the structure of a secret without its values.";
const HELP_ROTATION: &str = "Configures the rotation of a secret: fields (regenerated), password_policy, period, grace_period (the previous version stays readable this long).";
const HELP_ROTATE: &str = "Rotates a secret now, by its rule or by the fields named in 'fields'.";

#[async_trait]
impl Backend for KvV2 {
    async fn existence_check(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<bool>, BackendError> {
        let Some((route, caps)) = self.routes.route(&req.path) else {
            return Ok(None);
        };
        match route {
            Route::Data | Route::Metadata => {
                let path = secret_path(caps.get("path"))?;
                Ok(Some(storage.get(&metadata_key(path)).await?.is_some()))
            }
            Route::Rotation => {
                let path = secret_path(caps.get("path"))?;
                Ok(Some(
                    storage.get(&rotation::rotation_key(path)).await?.is_some(),
                ))
            }
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
        let raw = caps.get("path");
        let op = req.operation;
        if op == Operation::Help {
            return Ok(Some(help(match route {
                Route::Config => HELP_CONFIG,
                Route::Data => HELP_DATA,
                Route::Metadata => HELP_METADATA,
                Route::Delete | Route::Undelete | Route::Destroy => HELP_VERSIONS,
                Route::Subkeys => HELP_SUBKEYS,
                Route::Rotation => HELP_ROTATION,
                Route::Rotate => HELP_ROTATE,
            })));
        }
        match (route, op) {
            (Route::Config, Operation::Read) => self.config_read(storage).await,
            (Route::Config, Operation::Create | Operation::Update) => {
                self.config_write(req, storage).await
            }
            (Route::Metadata, Operation::List) => self.metadata_list(raw, storage).await,
            (Route::Data, Operation::Read) => self.data_read(secret_path(raw)?, req, storage).await,
            (Route::Data, Operation::Create | Operation::Update) => {
                self.data_write(secret_path(raw)?, req, storage).await
            }
            (Route::Data, Operation::Patch) => {
                self.data_patch(secret_path(raw)?, req, storage).await
            }
            (Route::Data, Operation::Delete) => self.data_delete(secret_path(raw)?, storage).await,
            (
                Route::Delete | Route::Undelete | Route::Destroy,
                Operation::Create | Operation::Update,
            ) => {
                self.versions_op(route, secret_path(raw)?, req, storage)
                    .await
            }
            (Route::Metadata, Operation::Read) => {
                self.metadata_read(secret_path(raw)?, storage).await
            }
            (Route::Metadata, Operation::Create | Operation::Update) => {
                self.metadata_write(secret_path(raw)?, req, storage, false)
                    .await
            }
            (Route::Metadata, Operation::Patch) => {
                self.metadata_write(secret_path(raw)?, req, storage, true)
                    .await
            }
            (Route::Metadata, Operation::Delete) => {
                self.metadata_delete(secret_path(raw)?, storage).await
            }
            (Route::Subkeys, Operation::Read) => {
                self.subkeys_read(secret_path(raw)?, req, storage).await
            }
            (Route::Rotation, Operation::Read) => {
                self.rotation_read(secret_path(raw)?, storage).await
            }
            (Route::Rotation, Operation::Create | Operation::Update) => {
                self.rotation_write(secret_path(raw)?, req, storage).await
            }
            (Route::Rotation, Operation::Delete) => {
                self.rotation_delete(secret_path(raw)?, storage).await
            }
            (Route::Rotate, Operation::Create | Operation::Update) => {
                self.rotate_now(secret_path(raw)?, req, storage).await
            }
            _ => Err(BackendError::UnsupportedOperation),
        }
    }

    /// Rotation schedules go down to a second; the core's tick is 5 s.
    fn periodic_interval(&self) -> Duration {
        Duration::from_secs(5)
    }

    /// Scheduled rotations.
    async fn periodic(&self, storage: &dyn Storage) -> Result<(), BackendError> {
        self.rotate_due(storage).await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(v: Value) -> Map {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn merge_patch_rfc7396() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        let mut t = json!({"a": ["b"]});
        merge_patch(&mut t, json!({"a": {"x": 1}}));
        assert_eq!(t, json!({"a": {"x": 1}}));
    }

    #[test]
    fn subkeys_depth() {
        let d = obj(json!({"foo": "abc", "bar": {"baz": "def"}, "quux": {}}));
        assert_eq!(
            Value::Object(subkeys(&d, 0, 1)),
            json!({"foo": null, "bar": {"baz": null}, "quux": {}})
        );
        assert_eq!(
            Value::Object(subkeys(&d, 1, 1)),
            json!({"foo": null, "bar": null, "quux": null})
        );
    }

    fn version(created: DateTime<Utc>, grace_until: Option<DateTime<Utc>>) -> VersionMeta {
        VersionMeta {
            created_time: created,
            deletion_time: grace_until,
            destroyed: false,
            grace_until,
        }
    }

    #[test]
    fn grace_is_announced_only_on_the_current_version_after_a_rotation() {
        let now = Utc::now();
        let later = now + chrono::Duration::seconds(60);
        let mut meta = KeyMetadata::new(now);
        meta.versions.insert(1, version(now, Some(later)));
        meta.versions.insert(2, version(now, None));
        meta.current_version = 2;
        assert_eq!(grace_of(&meta, 2, now), Some((1, later)));
        // An older version read by number does not announce it.
        assert_eq!(grace_of(&meta, 1, now), None);
        // Nor after the grace period.
        assert_eq!(grace_of(&meta, 2, later), None);

        // A plain write after the rotation: the rotated value is no
        // longer current, so there is no previous value in grace.
        meta.versions.insert(3, version(now, None));
        meta.current_version = 3;
        assert_eq!(grace_of(&meta, 3, now), None);
    }

    #[test]
    fn grace_is_not_announced_for_a_version_deleted_by_hand() {
        let now = Utc::now();
        let later = now + chrono::Duration::seconds(60);
        let mut meta = KeyMetadata::new(now);
        let mut retired = version(now, Some(later));
        retired.destroyed = true;
        meta.versions.insert(1, retired);
        meta.versions.insert(2, version(now, None));
        meta.current_version = 2;
        assert_eq!(grace_of(&meta, 2, now), None);
        if let Some(v) = meta.versions.get_mut(&1) {
            v.destroyed = false;
            v.deletion_time = Some(now);
        }
        assert_eq!(grace_of(&meta, 2, now), None);
    }

    #[test]
    fn version_keys_do_not_collide_across_folders() {
        assert_ne!(version_key("a", 1), version_key("a/1", 1));
        assert!(!version_key("a/1", 1).starts_with(&format!("{}/", version_key("a", 1))));
        assert_eq!(
            version_key("a/é", 12),
            format!("versions/{}/12", hex::encode("a/é"))
        );
    }

    #[test]
    fn stored_times_read_as_chrono_reads_them() {
        for s in [
            "2024-01-02T03:04:05Z",
            "2024-01-02T03:04:05.123456789Z",
            "2024-01-02T05:04:05.5+02:00",
            "2024-01-02t03:04:05z",
            "2024-01-02 03:04:05Z",
            "2024-01-02T03:04:05",
            "yesterday",
            "",
        ] {
            let v = Value::String(s.into());
            let ours = serde_json::from_value::<StoredTime>(v.clone()).map(|t| t.0);
            let chrono = serde_json::from_value::<DateTime<Utc>>(v);
            assert_eq!(ours.ok(), chrono.ok(), "{s:?}");
        }
        #[derive(Deserialize)]
        struct Opt {
            #[serde(default, deserialize_with = "stored_time_opt")]
            t: Option<DateTime<Utc>>,
        }
        let opt = |j: &str| serde_json::from_str::<Opt>(j).ok().map(|o| o.t);
        assert_eq!(opt("{}"), Some(None));
        assert_eq!(opt(r#"{"t": null}"#), Some(None));
        assert!(opt(r#"{"t": "2024-01-02T03:04:05Z"}"#).is_some_and(|t| t.is_some()));
    }
}
