//! The AppRole auth method, on Vault's paths:
//!
//! | path | operations |
//! | --- | --- |
//! | `role` | list |
//! | `role/<name>` | read, write, delete |
//! | `role/<name>/role-id` | read, write |
//! | `role/<name>/secret-id` | write (generate), list (accessors) |
//! | `role/<name>/custom-secret-id` | write |
//! | `role/<name>/secret-id/lookup`, `.../secret-id/destroy` | write (`secret_id`); destroy also delete |
//! | `role/<name>/secret-id-accessor/lookup`, `.../destroy` | write (`secret_id_accessor`) |
//! | `login` | write (`role_id`, `secret_id`), unauthenticated |
//! | `tidy/secret-id` | write |
//! | `config/lockout` | read, write (Vault's `user_lockout_config` fields) |
//! | `lockout/<name>` | read (lock state of a role), delete (unlock) |
//!
//! Storage layout: `salt` (the mount's random HMAC key); `role/<name>`;
//! `role_id/<hmac(role id)>` → role name; `secret_id/<role>/<hmac(secret id)>`;
//! `accessor/<role>/<accessor>` → hmac of its secret ID. Secret IDs are
//! only ever stored as HMACs, so a copy of the storage gives no login.
//! Accessors live under their role, so one role's accessor cannot reach
//! another role's secret IDs.
//!
//! Each secret ID is consumed under a lock (one of `LOCK_SHARDS`, by its
//! HMAC): read, check, decrement or delete, so two concurrent logins cannot
//! both spend its last use. Roles take their own shard locks for writes.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{de, Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::sync::{Mutex, MutexGuard, OnceCell};
use tresor_sdk::paths::pattern;
use tresor_sdk::storage::json_op;
use tresor_sdk::{
    fields, Backend, BackendConfig, BackendError, BackendType, Map, Operation, PathTable, Request,
    Response, SpecialPaths, Storage, StorageExt, StorageOp,
};

use super::lockout::Lockout;
use super::token_fields::{ip_allowed, parse_cidr, validate_cidrs, TokenFields};

const SALT_KEY: &str = "salt";
const ROLE_PREFIX: &str = "role/";
const ROLE_ID_PREFIX: &str = "role_id/";
const SECRET_ID_PREFIX: &str = "secret_id/";
const ACCESSOR_PREFIX: &str = "accessor/";
const LOCK_SHARDS: usize = 64;
/// Every login failure answers this, whatever went wrong (unknown role ID,
/// wrong or used-up secret ID, CIDR, lockout), as Vault does.
const INVALID: &str = "invalid role or secret ID";

pub fn factory(_conf: &BackendConfig) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(Arc::new(AppRole::new()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Roles,
    Role,
    RoleId,
    SecretId,
    CustomSecretId,
    SecretIdLookup,
    SecretIdDestroy,
    AccessorLookup,
    AccessorDestroy,
    Login,
    Tidy,
    LockoutConfig,
    Lockout,
}

/// The AppRole backend of one mount.
pub struct AppRole {
    routes: PathTable<Route>,
    secret_locks: Vec<Mutex<()>>,
    role_locks: Vec<Mutex<()>>,
    hmac_key: OnceCell<hmac::Key>,
    lockout: Lockout,
    rng: SystemRandom,
}

impl Default for AppRole {
    fn default() -> Self {
        Self::new()
    }
}

fn shard(s: &str) -> usize {
    // Fixed-key hashing is fine: a collision only serialises two unrelated
    // operations.
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    (h.finish() % LOCK_SHARDS as u64) as usize
}

impl AppRole {
    pub fn new() -> Self {
        let n = pattern::NAME;
        let routes = PathTable::new(&[
            ("role/?", Route::Roles),
            (&format!("role/(?P<role>{n})"), Route::Role),
            (&format!("role/(?P<role>{n})/role-id"), Route::RoleId),
            (&format!("role/(?P<role>{n})/secret-id/?"), Route::SecretId),
            (
                &format!("role/(?P<role>{n})/custom-secret-id"),
                Route::CustomSecretId,
            ),
            (
                &format!("role/(?P<role>{n})/secret-id/lookup/?"),
                Route::SecretIdLookup,
            ),
            (
                &format!("role/(?P<role>{n})/secret-id/destroy/?"),
                Route::SecretIdDestroy,
            ),
            (
                &format!("role/(?P<role>{n})/secret-id-accessor/lookup/?"),
                Route::AccessorLookup,
            ),
            (
                &format!("role/(?P<role>{n})/secret-id-accessor/destroy/?"),
                Route::AccessorDestroy,
            ),
            ("login", Route::Login),
            ("tidy/secret-id", Route::Tidy),
            ("config/lockout", Route::LockoutConfig),
            (&format!("lockout/(?P<role>{n})"), Route::Lockout),
        ]);
        AppRole {
            routes,
            secret_locks: (0..LOCK_SHARDS).map(|_| Mutex::new(())).collect(),
            role_locks: (0..LOCK_SHARDS).map(|_| Mutex::new(())).collect(),
            hmac_key: OnceCell::new(),
            lockout: Lockout::default(),
            rng: SystemRandom::new(),
        }
    }

    async fn lock_secret(&self, hmac: &str) -> MutexGuard<'_, ()> {
        self.secret_locks[shard(hmac)].lock().await
    }

    async fn lock_role(&self, name: &str) -> MutexGuard<'_, ()> {
        self.role_locks[shard(name)].lock().await
    }

    /// The mount's HMAC key, created on first use and kept in storage.
    async fn key(&self, storage: &dyn Storage) -> Result<&hmac::Key, BackendError> {
        self.hmac_key
            .get_or_try_init(|| async {
                #[derive(Serialize, Deserialize)]
                struct Salt {
                    key: String,
                }
                let bytes = match storage.get_json::<Salt>(SALT_KEY).await? {
                    Some(s) => hex::decode(&s.key)
                        .map_err(|_| BackendError::Internal("corrupt approle salt".into()))?,
                    None => {
                        let mut b = vec![0u8; 32];
                        self.rng
                            .fill(&mut b)
                            .map_err(|_| BackendError::Internal("random source failed".into()))?;
                        storage
                            .put_json(
                                SALT_KEY,
                                &Salt {
                                    key: hex::encode(&b),
                                },
                            )
                            .await?;
                        b
                    }
                };
                Ok(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
            })
            .await
    }

    async fn mac(&self, storage: &dyn Storage, value: &str) -> Result<String, BackendError> {
        let key = self.key(storage).await?;
        Ok(hex::encode(hmac::sign(key, value.as_bytes())))
    }

    fn new_id(&self) -> Result<String, BackendError> {
        let mut b = [0u8; 16];
        self.rng
            .fill(&mut b)
            .map_err(|_| BackendError::Internal("random source failed".into()))?;
        Ok(uuid::Builder::from_random_bytes(b).into_uuid().to_string())
    }
}

// ----- stored types -----------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoleEntry {
    name: String,
    role_id: String,
    bind_secret_id: bool,
    #[serde(default)]
    secret_id_bound_cidrs: Vec<String>,
    #[serde(default)]
    secret_id_num_uses: u64,
    #[serde(default, with = "fields::secs")]
    secret_id_ttl: Duration,
    #[serde(default)]
    local_secret_ids: bool,
    #[serde(flatten)]
    token: TokenFields,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoleIdIndex {
    name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SecretIdEntry {
    /// HMAC of the secret ID, checked again in constant time after the
    /// keyed lookup.
    hmac: String,
    accessor: String,
    /// Uses left; 0 means unlimited.
    num_uses: u64,
    #[serde(with = "fields::secs")]
    ttl: Duration,
    creation_time: DateTime<Utc>,
    /// `None`: never expires.
    expiration_time: Option<DateTime<Utc>>,
    last_updated_time: DateTime<Utc>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    cidr_list: Vec<String>,
    #[serde(default)]
    token_bound_cidrs: Vec<String>,
}

impl SecretIdEntry {
    fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expiration_time.is_some_and(|t| t <= now)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccessorEntry {
    secret_id_hmac: String,
}

fn role_key(name: &str) -> String {
    format!("{ROLE_PREFIX}{name}")
}
fn secret_key(role: &str, hmac: &str) -> String {
    format!("{SECRET_ID_PREFIX}{role}/{hmac}")
}
fn accessor_key(role: &str, accessor: &str) -> String {
    format!("{ACCESSOR_PREFIX}{role}/{accessor}")
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

async fn load_role(storage: &dyn Storage, name: &str) -> Result<Option<RoleEntry>, BackendError> {
    Ok(storage.get_json(&role_key(name)).await?)
}

/// Role names are case-insensitive, as in Vault.
fn role_name(caps: &tresor_sdk::Captures) -> String {
    caps.get("role").to_lowercase()
}

// ----- request types ------------------------------------------------------

macro_rules! named {
    ($name:ident, $field:literal, $inner:path, $ty:ty) => {
        fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            $inner(d).map_err(|e: D::Error| de::Error::custom(format!("{}: {e}", $field)))
        }
    };
}
named!(bind_f, "bind_secret_id", fields::opt_boolean, Option<bool>);
named!(
    sid_cidrs_f,
    "secret_id_bound_cidrs",
    fields::opt_string_list,
    Option<Vec<String>>
);
named!(
    bound_cidr_list_f,
    "bound_cidr_list",
    fields::opt_string_list,
    Option<Vec<String>>
);
named!(
    sid_uses_f,
    "secret_id_num_uses",
    fields::opt_uint,
    Option<u64>
);
named!(
    sid_ttl_f,
    "secret_id_ttl",
    fields::opt_duration,
    Option<Duration>
);
named!(
    local_f,
    "local_secret_ids",
    fields::opt_boolean,
    Option<bool>
);
named!(cidr_list_f, "cidr_list", fields::string_list, Vec<String>);
named!(
    tb_cidrs_f,
    "token_bound_cidrs",
    fields::string_list,
    Vec<String>
);
named!(num_uses_f, "num_uses", fields::opt_uint, Option<u64>);
named!(ttl_f, "ttl", fields::opt_duration, Option<Duration>);

#[derive(Debug, Deserialize)]
struct RoleInput {
    #[serde(default)]
    role_id: Option<String>,
    #[serde(default, deserialize_with = "bind_f")]
    bind_secret_id: Option<bool>,
    #[serde(default, deserialize_with = "sid_cidrs_f")]
    secret_id_bound_cidrs: Option<Vec<String>>,
    /// Vault's deprecated name of `secret_id_bound_cidrs`.
    #[serde(default, deserialize_with = "bound_cidr_list_f")]
    bound_cidr_list: Option<Vec<String>>,
    #[serde(default, deserialize_with = "sid_uses_f")]
    secret_id_num_uses: Option<u64>,
    #[serde(default, deserialize_with = "sid_ttl_f")]
    secret_id_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "local_f")]
    local_secret_ids: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct RoleIdInput {
    #[serde(default)]
    role_id: String,
}

#[derive(Debug, Deserialize)]
struct SecretIdInput {
    #[serde(default)]
    secret_id: Option<String>,
    #[serde(default, deserialize_with = "metadata_field")]
    metadata: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "cidr_list_f")]
    cidr_list: Vec<String>,
    #[serde(default, deserialize_with = "tb_cidrs_f")]
    token_bound_cidrs: Vec<String>,
    #[serde(default, deserialize_with = "num_uses_f")]
    num_uses: Option<u64>,
    #[serde(default, deserialize_with = "ttl_f")]
    ttl: Option<Duration>,
}

#[derive(Debug, Deserialize)]
struct SecretIdField {
    #[serde(default)]
    secret_id: String,
}

#[derive(Debug, Deserialize)]
struct AccessorField {
    #[serde(default)]
    secret_id_accessor: String,
}

#[derive(Deserialize)]
struct LoginInput {
    #[serde(default)]
    role_id: String,
    #[serde(default)]
    secret_id: String,
}

/// `metadata`: a JSON object of strings, or (as hvac and the vault CLI send
/// it) a string holding one.
fn metadata_field<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    fn from_obj<E: de::Error>(m: Map) -> Result<BTreeMap<String, String>, E> {
        m.into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                Value::Number(n) => Ok((k, n.to_string())),
                Value::Bool(b) => Ok((k, b.to_string())),
                _ => Err(E::custom(format!(
                    "metadata: value of {k:?} must be a string"
                ))),
            })
            .collect()
    }
    match Value::deserialize(d)? {
        Value::Null => Ok(BTreeMap::new()),
        Value::String(s) if s.trim().is_empty() => Ok(BTreeMap::new()),
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Object(m)) => from_obj(m),
            _ => Err(de::Error::custom(
                "metadata: expected a JSON object of strings",
            )),
        },
        Value::Object(m) => from_obj(m),
        _ => Err(de::Error::custom(
            "metadata: expected a JSON object of strings",
        )),
    }
}

/// Whether every block of `child` lies inside one of `parents`.
fn cidrs_subset(child: &[String], parents: &[String]) -> bool {
    child.iter().all(|c| {
        let Some((ip, len)) = parse_cidr(c) else {
            return false;
        };
        parents.iter().any(|p| {
            parse_cidr(p).is_some_and(|(_, plen)| plen <= len)
                && ip_allowed(std::slice::from_ref(p), Some(ip))
        })
    })
}

// ----- handlers -----------------------------------------------------------

#[async_trait]
impl Backend for AppRole {
    fn backend_type(&self) -> BackendType {
        BackendType::Credential
    }

    fn special_paths(&self) -> SpecialPaths {
        SpecialPaths {
            unauthenticated: vec!["login".into()],
            root: Vec::new(),
        }
    }

    async fn initialize(&self, storage: &dyn Storage) -> Result<(), BackendError> {
        self.key(storage).await?;
        self.lockout.config(storage).await?;
        Ok(())
    }

    async fn existence_check(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<bool>, BackendError> {
        match self.routes.route(&req.path) {
            Some((Route::Role, caps)) => {
                Ok(Some(load_role(storage, &role_name(&caps)).await?.is_some()))
            }
            _ => Ok(None),
        }
    }

    async fn handle(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        if req.operation == Operation::Renew {
            return self.renew(req, storage).await.map(Some);
        }
        let (route, caps) = self
            .routes
            .route(&req.path)
            .ok_or(BackendError::UnsupportedPath)?;
        let name = role_name(&caps);
        let op = req.operation;
        let write = matches!(op, Operation::Create | Operation::Update);
        match (route, op) {
            (Route::Roles, Operation::List) => {
                let keys = storage.list(ROLE_PREFIX).await?;
                Ok((!keys.is_empty()).then(|| Response::list(keys)))
            }
            (Route::Role, Operation::Read) => self.read_role(storage, &name).await,
            (Route::Role, _) if write => self.write_role(req, storage, &name).await,
            (Route::Role, Operation::Delete) => self.delete_role(storage, &name).await,
            (Route::RoleId, Operation::Read) => Ok(load_role(storage, &name).await?.map(|r| {
                let mut m = Map::new();
                m.insert("role_id".into(), json!(r.role_id));
                Response::data(m)
            })),
            (Route::RoleId, _) if write => self.write_role_id(req, storage, &name).await,
            (Route::SecretId, Operation::List) => {
                let role = self.must_role(storage, &name).await?;
                let keys = storage
                    .list(&format!("{ACCESSOR_PREFIX}{}/", role.name))
                    .await?;
                Ok((!keys.is_empty()).then(|| Response::list(keys)))
            }
            (Route::SecretId, _) if write => {
                self.create_secret_id(req, storage, &name, false).await
            }
            (Route::CustomSecretId, _) if write => {
                self.create_secret_id(req, storage, &name, true).await
            }
            (Route::SecretIdLookup, _) if write => {
                let role = self.must_role(storage, &name).await?;
                let sid = req.parse::<SecretIdField>()?.secret_id;
                if sid.is_empty() {
                    return Err(BackendError::bad_request("secret_id: missing secret_id"));
                }
                let h = self.mac(storage, &sid).await?;
                let entry: Option<SecretIdEntry> =
                    storage.get_json(&secret_key(&role.name, &h)).await?;
                Ok(entry.map(|e| secret_id_info(&e)))
            }
            (Route::SecretIdDestroy, _) if write || op == Operation::Delete => {
                let role = self.must_role(storage, &name).await?;
                let sid = req.parse::<SecretIdField>()?.secret_id;
                if sid.is_empty() {
                    return Err(BackendError::bad_request("secret_id: missing secret_id"));
                }
                let h = self.mac(storage, &sid).await?;
                self.destroy_secret_id(storage, &role.name, &h).await?;
                Ok(None)
            }
            (Route::AccessorLookup, _) if write => {
                let role = self.must_role(storage, &name).await?;
                let (_, entry) = self.by_accessor(req, storage, &role.name).await?;
                Ok(Some(secret_id_info(&entry)))
            }
            (Route::AccessorDestroy, _) if write || op == Operation::Delete => {
                let role = self.must_role(storage, &name).await?;
                let (h, _) = self.by_accessor(req, storage, &role.name).await?;
                self.destroy_secret_id(storage, &role.name, &h).await?;
                Ok(None)
            }
            (Route::Login, _) if write => self.login(req, storage).await.map(Some),
            (Route::Tidy, _) if write => {
                let n = self.tidy(storage).await?;
                tracing::info!(removed = n, mount = %req.mount_point, "approle secret-id tidy finished");
                let mut r = Response::default().warning(
                    "Tidy operation successfully started. Any information from the operation will be printed to the server's logs.",
                );
                r.status = Some(202);
                Ok(Some(r))
            }
            (Route::LockoutConfig, Operation::Read) => {
                self.lockout.read_config(storage).await.map(Some)
            }
            (Route::LockoutConfig, _) if write => {
                self.lockout.write_config(req, storage).await?;
                Ok(None)
            }
            (Route::Lockout, Operation::Read) => {
                let role = self.must_role(storage, &name).await?;
                let mut m = self.lockout.status(&role.role_id);
                m.insert("role_name".into(), json!(role.name));
                Ok(Some(Response::data(m)))
            }
            (Route::Lockout, Operation::Delete) | (Route::Lockout, Operation::Update) => {
                let role = self.must_role(storage, &name).await?;
                self.lockout.unlock(&role.role_id);
                Ok(None)
            }
            _ => Err(BackendError::UnsupportedOperation),
        }
    }

    async fn periodic(&self, storage: &dyn Storage) -> Result<(), BackendError> {
        self.tidy(storage).await.map(|_| ())
    }
}

fn secret_id_info(e: &SecretIdEntry) -> Response {
    let mut m = Map::new();
    m.insert("cidr_list".into(), json!(e.cidr_list));
    m.insert("creation_time".into(), json!(rfc3339(e.creation_time)));
    m.insert(
        "expiration_time".into(),
        json!(e
            .expiration_time
            .map(rfc3339)
            .unwrap_or_else(|| "0001-01-01T00:00:00Z".into())),
    );
    m.insert(
        "last_updated_time".into(),
        json!(rfc3339(e.last_updated_time)),
    );
    m.insert("metadata".into(), json!(e.metadata));
    m.insert("secret_id_accessor".into(), json!(e.accessor));
    m.insert("secret_id_num_uses".into(), json!(e.num_uses));
    m.insert("secret_id_ttl".into(), json!(e.ttl.as_secs()));
    m.insert("token_bound_cidrs".into(), json!(e.token_bound_cidrs));
    Response::data(m)
}

impl AppRole {
    async fn must_role(
        &self,
        storage: &dyn Storage,
        name: &str,
    ) -> Result<RoleEntry, BackendError> {
        load_role(storage, name).await?.ok_or_else(|| {
            BackendError::bad_request(format!("role_name: role {name:?} does not exist"))
        })
    }

    async fn read_role(
        &self,
        storage: &dyn Storage,
        name: &str,
    ) -> Result<Option<Response>, BackendError> {
        let Some(r) = load_role(storage, name).await? else {
            return Ok(None);
        };
        let mut m = Map::new();
        m.insert("bind_secret_id".into(), json!(r.bind_secret_id));
        m.insert("local_secret_ids".into(), json!(r.local_secret_ids));
        m.insert(
            "secret_id_bound_cidrs".into(),
            json!(r.secret_id_bound_cidrs),
        );
        m.insert("secret_id_num_uses".into(), json!(r.secret_id_num_uses));
        m.insert("secret_id_ttl".into(), json!(r.secret_id_ttl.as_secs()));
        r.token.populate(&mut m);
        Ok(Some(Response::data(m)))
    }

    async fn write_role(
        &self,
        req: &Request,
        storage: &dyn Storage,
        name: &str,
    ) -> Result<Option<Response>, BackendError> {
        let input: RoleInput = req.parse()?;
        let _g = self.lock_role(name).await;
        let existing = load_role(storage, name).await?;
        let creating = existing.is_none();
        let mut role = match existing {
            Some(r) => r,
            None => RoleEntry {
                name: name.to_string(),
                role_id: String::new(),
                bind_secret_id: true,
                secret_id_bound_cidrs: Vec::new(),
                secret_id_num_uses: 0,
                secret_id_ttl: Duration::ZERO,
                local_secret_ids: false,
                token: TokenFields::default(),
            },
        };
        if let Some(v) = input.bind_secret_id {
            role.bind_secret_id = v;
        }
        if let Some(v) = input.secret_id_bound_cidrs.or(input.bound_cidr_list) {
            validate_cidrs("secret_id_bound_cidrs", &v)?;
            role.secret_id_bound_cidrs = v;
        }
        if let Some(v) = input.secret_id_num_uses {
            role.secret_id_num_uses = v;
        }
        if let Some(v) = input.secret_id_ttl {
            role.secret_id_ttl = v;
        }
        if let Some(v) = input.local_secret_ids {
            if !creating && v != role.local_secret_ids {
                return Err(BackendError::bad_request(
                    "local_secret_ids: can only be set at role creation",
                ));
            }
            role.local_secret_ids = v;
        }
        role.token.merge_update(req)?;
        if !role.bind_secret_id
            && role.secret_id_bound_cidrs.is_empty()
            && role.token.token_bound_cidrs.is_empty()
        {
            return Err(BackendError::bad_request(
                "bind_secret_id: at least one constraint should be enabled on the role (bind_secret_id, secret_id_bound_cidrs or token_bound_cidrs)",
            ));
        }
        let old_id = role.role_id.clone();
        let new_id = match input.role_id.map(|s| s.trim().to_string()) {
            Some(id) if !id.is_empty() => id,
            _ if old_id.is_empty() => self.new_id()?,
            _ => old_id.clone(),
        };
        self.store_role(storage, role, &old_id, &new_id).await?;
        Ok(None)
    }

    /// Store a role and move its role-ID index in one batch, refusing a
    /// role ID another role already uses.
    async fn store_role(
        &self,
        storage: &dyn Storage,
        mut role: RoleEntry,
        old_id: &str,
        new_id: &str,
    ) -> Result<(), BackendError> {
        let new_idx = format!("{ROLE_ID_PREFIX}{}", self.mac(storage, new_id).await?);
        if let Some(other) = storage.get_json::<RoleIdIndex>(&new_idx).await? {
            if other.name != role.name {
                return Err(BackendError::bad_request(
                    "role_id: role ID already in use by another role",
                ));
            }
        }
        let mut ops = Vec::new();
        if !old_id.is_empty() && old_id != new_id {
            ops.push(StorageOp::Delete {
                key: format!("{ROLE_ID_PREFIX}{}", self.mac(storage, old_id).await?),
            });
            // Lockout follows the role ID; a new one starts clean.
            self.lockout.unlock(old_id);
        }
        role.role_id = new_id.to_string();
        ops.push(json_op(
            &new_idx,
            &RoleIdIndex {
                name: role.name.clone(),
            },
        )?);
        ops.push(json_op(role_key(&role.name), &role)?);
        storage.batch(ops).await?;
        Ok(())
    }

    async fn write_role_id(
        &self,
        req: &Request,
        storage: &dyn Storage,
        name: &str,
    ) -> Result<Option<Response>, BackendError> {
        let id = req.parse::<RoleIdInput>()?.role_id.trim().to_string();
        if id.is_empty() {
            return Err(BackendError::bad_request("role_id: missing role_id"));
        }
        let _g = self.lock_role(name).await;
        let role = self.must_role(storage, name).await?;
        let old = role.role_id.clone();
        self.store_role(storage, role, &old, &id).await?;
        Ok(None)
    }

    async fn delete_role(
        &self,
        storage: &dyn Storage,
        name: &str,
    ) -> Result<Option<Response>, BackendError> {
        let _g = self.lock_role(name).await;
        let Some(role) = load_role(storage, name).await? else {
            return Ok(None);
        };
        let mut ops = Vec::new();
        for prefix in [SECRET_ID_PREFIX, ACCESSOR_PREFIX] {
            for k in storage.list(&format!("{prefix}{name}/")).await? {
                ops.push(StorageOp::Delete {
                    key: format!("{prefix}{name}/{k}"),
                });
            }
        }
        ops.push(StorageOp::Delete {
            key: format!(
                "{ROLE_ID_PREFIX}{}",
                self.mac(storage, &role.role_id).await?
            ),
        });
        ops.push(StorageOp::Delete {
            key: role_key(name),
        });
        for chunk in ops.chunks(256) {
            storage.batch(chunk.to_vec()).await?;
        }
        self.lockout.unlock(&role.role_id);
        Ok(None)
    }

    async fn create_secret_id(
        &self,
        req: &Request,
        storage: &dyn Storage,
        name: &str,
        custom: bool,
    ) -> Result<Option<Response>, BackendError> {
        let input: SecretIdInput = req.parse()?;
        let _g = self.lock_role(name).await;
        let role = self.must_role(storage, name).await?;
        if !role.bind_secret_id {
            return Err(BackendError::bad_request(
                "bind_secret_id: the role does not use secret IDs",
            ));
        }
        let secret_id = if custom {
            match input.secret_id.as_deref().map(str::trim) {
                Some(s) if !s.is_empty() => s.to_string(),
                _ => return Err(BackendError::bad_request("secret_id: missing secret_id")),
            }
        } else {
            self.new_id()?
        };
        validate_cidrs("cidr_list", &input.cidr_list)?;
        validate_cidrs("token_bound_cidrs", &input.token_bound_cidrs)?;
        if !role.secret_id_bound_cidrs.is_empty()
            && !cidrs_subset(&input.cidr_list, &role.secret_id_bound_cidrs)
        {
            return Err(BackendError::bad_request(
                "cidr_list: must be a subset of the role's secret_id_bound_cidrs",
            ));
        }
        if !role.token.token_bound_cidrs.is_empty()
            && !cidrs_subset(&input.token_bound_cidrs, &role.token.token_bound_cidrs)
        {
            return Err(BackendError::bad_request(
                "token_bound_cidrs: must be a subset of the role's token_bound_cidrs",
            ));
        }
        let num_uses = match input.num_uses {
            None => role.secret_id_num_uses,
            Some(n) => {
                if role.secret_id_num_uses > 0 && (n == 0 || n > role.secret_id_num_uses) {
                    return Err(BackendError::bad_request(
                        "num_uses: cannot be higher than the role's secret_id_num_uses",
                    ));
                }
                n
            }
        };
        let ttl = match input.ttl {
            None => role.secret_id_ttl,
            Some(t) if t.is_zero() => role.secret_id_ttl,
            Some(t) => {
                if !role.secret_id_ttl.is_zero() && t > role.secret_id_ttl {
                    return Err(BackendError::bad_request(
                        "ttl: cannot be longer than the role's secret_id_ttl",
                    ));
                }
                t
            }
        };
        let h = self.mac(storage, &secret_id).await?;
        let key = secret_key(&role.name, &h);
        let _s = self.lock_secret(&h).await;
        if storage.get(&key).await?.is_some() {
            return Err(BackendError::bad_request(
                "secret_id: this secret ID already exists for the role",
            ));
        }
        let now = Utc::now();
        let expiration_time = if ttl.is_zero() {
            None
        } else {
            chrono::Duration::from_std(ttl).ok().map(|d| now + d)
        };
        let accessor = self.new_id()?;
        let entry = SecretIdEntry {
            hmac: h.clone(),
            accessor: accessor.clone(),
            num_uses,
            ttl,
            creation_time: now,
            expiration_time,
            last_updated_time: now,
            metadata: input.metadata,
            cidr_list: input.cidr_list,
            token_bound_cidrs: input.token_bound_cidrs,
        };
        storage
            .batch(vec![
                json_op(&key, &entry)?,
                json_op(
                    accessor_key(&role.name, &accessor),
                    &AccessorEntry {
                        secret_id_hmac: h.clone(),
                    },
                )?,
            ])
            .await?;
        let mut m = Map::new();
        m.insert("secret_id".into(), json!(secret_id));
        m.insert("secret_id_accessor".into(), json!(accessor));
        m.insert("secret_id_ttl".into(), json!(ttl.as_secs()));
        m.insert("secret_id_num_uses".into(), json!(num_uses));
        Ok(Some(Response::data(m)))
    }

    /// The secret ID HMAC and entry behind an accessor of this role.
    async fn by_accessor(
        &self,
        req: &Request,
        storage: &dyn Storage,
        role: &str,
    ) -> Result<(String, SecretIdEntry), BackendError> {
        let acc = req.parse::<AccessorField>()?.secret_id_accessor;
        let acc = acc.trim();
        if acc.is_empty() || acc.contains('/') {
            return Err(BackendError::bad_request(
                "secret_id_accessor: missing or invalid secret_id_accessor",
            ));
        }
        let not_found = || {
            BackendError::bad_request(format!(
                "secret_id_accessor: failed to find accessor entry for secret_id_accessor {acc:?}"
            ))
        };
        let a: AccessorEntry = storage
            .get_json(&accessor_key(role, acc))
            .await?
            .ok_or_else(not_found)?;
        let e: SecretIdEntry = storage
            .get_json(&secret_key(role, &a.secret_id_hmac))
            .await?
            .ok_or_else(not_found)?;
        Ok((a.secret_id_hmac, e))
    }

    async fn destroy_secret_id(
        &self,
        storage: &dyn Storage,
        role: &str,
        h: &str,
    ) -> Result<(), BackendError> {
        let _s = self.lock_secret(h).await;
        let key = secret_key(role, h);
        if let Some(e) = storage.get_json::<SecretIdEntry>(&key).await? {
            storage
                .batch(vec![
                    StorageOp::Delete { key },
                    StorageOp::Delete {
                        key: accessor_key(role, &e.accessor),
                    },
                ])
                .await?;
        }
        Ok(())
    }

    async fn login(&self, req: &Request, storage: &dyn Storage) -> Result<Response, BackendError> {
        let input: LoginInput = req.parse()?;
        let invalid = || BackendError::bad_request(INVALID);
        let role_id = input.role_id.trim();
        if role_id.is_empty() {
            return Err(BackendError::bad_request("role_id: missing role_id"));
        }
        let idx: Option<RoleIdIndex> = storage
            .get_json(&format!(
                "{ROLE_ID_PREFIX}{}",
                self.mac(storage, role_id).await?
            ))
            .await?;
        let role = match idx {
            Some(i) => load_role(storage, &i.name).await?,
            None => None,
        };
        let Some(role) =
            role.filter(|r| bool::from(r.role_id.as_bytes().ct_eq(role_id.as_bytes())))
        else {
            return Err(invalid());
        };
        let cfg = self.lockout.config(storage).await?;
        let locked = self.lockout.is_locked(&cfg, &role.role_id);
        // Before the secret ID is looked at: a login from outside the role's
        // CIDRs must not spend one of its uses (or, at its last, delete it).
        if !ip_allowed(&role.secret_id_bound_cidrs, req.remote_addr) {
            // As for a wrong secret ID: a locked role counts no more.
            if !locked {
                self.lockout.record_failure(&cfg, &role.role_id);
            }
            return Err(invalid());
        }

        let mut metadata = BTreeMap::new();
        let mut token_cidrs = role.token.token_bound_cidrs.clone();
        if role.bind_secret_id {
            let outcome = self
                .consume_secret_id(storage, &role, &input.secret_id, locked, req)
                .await?;
            match outcome {
                Some(e) => {
                    metadata = e.metadata;
                    if !e.token_bound_cidrs.is_empty() {
                        token_cidrs = e.token_bound_cidrs;
                    }
                }
                None => {
                    if !locked {
                        self.lockout.record_failure(&cfg, &role.role_id);
                    }
                    return Err(invalid());
                }
            }
        } else if locked {
            return Err(invalid());
        }
        self.lockout.record_success(&role.role_id);
        metadata.insert("role_name".into(), role.name.clone());
        let mut auth = role.token.to_auth(&role.role_id, "", metadata);
        auth.bound_cidrs = token_cidrs;
        auth.internal_data = json!({ "role_name": role.name });
        Ok(Response {
            auth: Some(auth),
            ..Default::default()
        })
    }

    /// Check and spend one use of a secret ID. `None` when it does not
    /// let this caller in. A locked role spends nothing and always fails,
    /// after the same work as an ordinary check.
    async fn consume_secret_id(
        &self,
        storage: &dyn Storage,
        role: &RoleEntry,
        secret_id: &str,
        locked: bool,
        req: &Request,
    ) -> Result<Option<SecretIdEntry>, BackendError> {
        let secret_id = secret_id.trim();
        if secret_id.is_empty() {
            return Ok(None);
        }
        let h = self.mac(storage, secret_id).await?;
        let key = secret_key(&role.name, &h);
        let _s = self.lock_secret(&h).await;
        let Some(mut e) = storage.get_json::<SecretIdEntry>(&key).await? else {
            return Ok(None);
        };
        if !bool::from(e.hmac.as_bytes().ct_eq(h.as_bytes())) || locked {
            return Ok(None);
        }
        let now = Utc::now();
        if e.expired(now) {
            storage
                .batch(vec![
                    StorageOp::Delete { key },
                    StorageOp::Delete {
                        key: accessor_key(&role.name, &e.accessor),
                    },
                ])
                .await?;
            return Ok(None);
        }
        if !ip_allowed(&e.cidr_list, req.remote_addr) {
            return Ok(None);
        }
        match e.num_uses {
            0 => {}
            1 => {
                storage
                    .batch(vec![
                        StorageOp::Delete { key },
                        StorageOp::Delete {
                            key: accessor_key(&role.name, &e.accessor),
                        },
                    ])
                    .await?;
            }
            _ => {
                e.num_uses -= 1;
                e.last_updated_time = now;
                storage.put_json(&key, &e).await?;
            }
        }
        Ok(Some(e))
    }

    async fn renew(&self, req: &Request, storage: &dyn Storage) -> Result<Response, BackendError> {
        let issued = req
            .auth
            .as_ref()
            .ok_or_else(|| BackendError::bad_request("renew: request has no auth"))?;
        let name = issued
            .internal_data
            .get("role_name")
            .and_then(Value::as_str)
            .or_else(|| issued.metadata.get("role_name").map(String::as_str))
            .unwrap_or_default()
            .to_string();
        let role = load_role(storage, &name).await?.ok_or_else(|| {
            BackendError::bad_request(format!(
                "role_name: role {name:?} does not exist during renewal"
            ))
        })?;
        // A role deleted and created again under the same name is another role.
        if !bool::from(role.role_id.as_bytes().ct_eq(issued.alias_name.as_bytes())) {
            return Err(BackendError::bad_request(
                "role_id: the role's role ID changed since login",
            ));
        }
        if !role.token.policies_match(issued) {
            return Err(BackendError::bad_request(
                "token_policies: policies have changed, not renewing",
            ));
        }
        Ok(Response {
            auth: Some(role.token.renew_auth(issued)),
            ..Default::default()
        })
    }

    /// Remove expired secret IDs, accessors without a secret ID, and the
    /// leftovers of deleted roles. Returns how many entries went.
    async fn tidy(&self, storage: &dyn Storage) -> Result<usize, BackendError> {
        let now = Utc::now();
        let mut removed = 0;
        for role_dir in storage.list(SECRET_ID_PREFIX).await? {
            let role = role_dir.trim_end_matches('/').to_string();
            let role_exists = storage.get(&role_key(&role)).await?.is_some();
            for h in storage
                .list(&format!("{SECRET_ID_PREFIX}{role_dir}"))
                .await?
            {
                let _s = self.lock_secret(&h).await;
                let key = secret_key(&role, &h);
                let Some(e) = storage.get_json::<SecretIdEntry>(&key).await? else {
                    continue;
                };
                if !role_exists || e.expired(now) {
                    storage
                        .batch(vec![
                            StorageOp::Delete { key },
                            StorageOp::Delete {
                                key: accessor_key(&role, &e.accessor),
                            },
                        ])
                        .await?;
                    removed += 1;
                }
            }
        }
        for role_dir in storage.list(ACCESSOR_PREFIX).await? {
            let role = role_dir.trim_end_matches('/').to_string();
            for acc in storage
                .list(&format!("{ACCESSOR_PREFIX}{role_dir}"))
                .await?
            {
                let akey = accessor_key(&role, &acc);
                let Some(a) = storage.get_json::<AccessorEntry>(&akey).await? else {
                    continue;
                };
                let _s = self.lock_secret(&a.secret_id_hmac).await;
                if storage
                    .get(&secret_key(&role, &a.secret_id_hmac))
                    .await?
                    .is_none()
                {
                    storage.delete(&akey).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}
