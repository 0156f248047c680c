//! The database secrets engine: dynamic users with leases, and static users
//! whose passwords tresor rotates, on Vault's paths so that hvac's
//! `secrets.database`, vaultrs and the vault CLI work as is.
//!
//! | path | operations |
//! | --- | --- |
//! | `config` | list |
//! | `config/<name>` | write, read (never the password), delete |
//! | `reset/<name>` | write: drop the connection pool, reconnect on next use |
//! | `rotate-root/<name>` | write: new password for the configured admin user |
//! | `roles`, `roles/<name>` | list; write, read, delete |
//! | `creds/<role>` | read: a new user with a lease (renew, revoke) |
//! | `static-roles`, `static-roles/<name>` | list; write (rotates at once), read, delete |
//! | `static-creds/<name>` | read: the current password and time to the next rotation |
//! | `rotate-role/<name>` | write: rotate a static role now |
//!
//! Plugins: `postgresql-database-plugin`, `mysql-database-plugin` (and its
//! `-aurora-`, `-rds-`, `-legacy-` names), `redis-database-plugin`.
//!
//! Storage: `config/<name>` (with the admin password, and a pending one
//! while a root rotation is under way), `role/<name>`,
//! `static-role/<name>` (with the current password and the next rotation
//! time, so that schedules survive restarts).
//!
//! Each configuration's connection pool is cached with the configuration
//! it was built from; every change to a configuration goes through this
//! backend, which replaces or drops the cached pool under one lock.
//!
//! Statements are the administrator's SQL; the user names and passwords put
//! into them are escaped for the quotes around each placeholder (see
//! [`template`]), and user names are restricted to `[A-Za-z0-9_.-]`.

mod conn;
mod cron;
mod template;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use parking_lot::RwLock;
use serde::{de, Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use tresor_sdk::paths::pattern::NAME;
use tresor_sdk::{
    fields, Backend, BackendConfig, BackendError, LeaseOptions, Map, Operation, PathTable, Request,
    Response, Secret, Storage, StorageExt, SystemView,
};

use conn::{Db, DbError, PluginKind, Settings};
use template::{render_username, valid_username, NameInput};

const CONFIG_PREFIX: &str = "config/";
const ROLE_PREFIX: &str = "role/";
const STATIC_PREFIX: &str = "static-role/";
const DEFAULT_MAX_OPEN: u64 = 4;
const MIN_ROTATION_PERIOD: Duration = Duration::from_secs(5);

/// `database`: the factory the registry names.
pub fn factory(conf: &BackendConfig) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(Arc::new(Database::new(conf.system.clone())))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    ConfigList,
    Config,
    Reset,
    RotateRoot,
    RoleList,
    Role,
    Creds,
    StaticList,
    StaticRole,
    StaticCreds,
    RotateRole,
}

/// A stored connection configuration. No `Debug`: it holds the password.
#[derive(Clone, Default, Serialize, Deserialize)]
struct DbConfig {
    plugin_name: String,
    verify_connection: bool,
    allowed_roles: Vec<String>,
    root_rotation_statements: Vec<String>,
    password_policy: String,
    connection_url: String,
    username: String,
    password: String,
    host: String,
    port: u16,
    tls: bool,
    max_open_connections: u64,
    max_idle_connections: u64,
    max_connection_lifetime: u64,
    username_template: String,
    /// A new root password, written before `rotate-root` changes it in the
    /// database: if tresor stops (or the final write fails) between the
    /// change and the write that makes it `password`, the next use or
    /// `periodic` adopts it when the database takes it, instead of losing
    /// the only copy. See [`Database::settle_pending_root`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending_password: Option<String>,
}

impl DbConfig {
    fn kind(&self) -> Result<PluginKind, BackendError> {
        PluginKind::from_plugin_name(&self.plugin_name).ok_or_else(|| {
            BackendError::bad_request(format!(
                "plugin_name: unsupported plugin {:?} (supported: postgresql-database-plugin, \
                 mysql-database-plugin, mysql-aurora-database-plugin, mysql-rds-database-plugin, \
                 mysql-legacy-database-plugin, redis-database-plugin)",
                self.plugin_name
            ))
        })
    }

    fn settings(&self, kind: PluginKind) -> Settings<'_> {
        Settings {
            kind,
            connection_url: &self.connection_url,
            username: &self.username,
            password: &self.password,
            host: &self.host,
            port: self.port,
            tls: self.tls,
            max_open_connections: self.max_open_connections.clamp(1, 1024) as usize,
            max_connection_lifetime: Duration::from_secs(self.max_connection_lifetime),
        }
    }

    fn allows(&self, role: &str) -> bool {
        self.allowed_roles.iter().any(|p| glob(p, role))
    }

    fn policy(&self) -> Option<&str> {
        (!self.password_policy.is_empty()).then_some(self.password_policy.as_str())
    }
}

/// `*` matches any run of characters (Vault's `StrListContainsGlob`).
fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// A pool and the configuration it was built from.
struct Conn {
    config: DbConfig,
    kind: PluginKind,
    db: Db,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct Role {
    db_name: String,
    creation_statements: Vec<String>,
    revocation_statements: Vec<String>,
    rollback_statements: Vec<String>,
    renew_statements: Vec<String>,
    default_ttl: u64,
    max_ttl: u64,
    credential_type: String,
}

/// A static role with its current password. No `Debug`.
#[derive(Clone, Default, Serialize, Deserialize)]
struct StaticRole {
    db_name: String,
    username: String,
    rotation_period: u64,
    rotation_schedule: String,
    rotation_window: u64,
    rotation_statements: Vec<String>,
    credential_type: String,
    password: String,
    /// Written before the database is changed: if tresor stops between the
    /// change and the final write, the next rotation sets this password
    /// again instead of losing it.
    pending_password: Option<String>,
    last_vault_rotation: Option<DateTime<Utc>>,
    /// Unix seconds of the next scheduled rotation; `None`: no next time.
    next_rotation: Option<i64>,
}

impl StaticRole {
    fn compute_next(&self, from: DateTime<Utc>) -> Result<Option<i64>, BackendError> {
        if !self.rotation_schedule.is_empty() {
            let s = cron::Schedule::parse(&self.rotation_schedule)
                .map_err(|e| BackendError::bad_request(format!("rotation_schedule: {e}")))?;
            Ok(s.next_after(from).map(|t| t.timestamp()))
        } else {
            Ok(Some(from.timestamp() + self.rotation_period as i64))
        }
    }
}

/// What a dynamic credential's lease keeps for its renewal and revocation.
#[derive(Debug, Serialize, Deserialize)]
struct CredsInternal {
    username: String,
    db_name: String,
    role: String,
    #[serde(default)]
    secret_type: String,
}

/// The database backend.
pub struct Database {
    routes: PathTable<Route>,
    system: Arc<dyn SystemView>,
    conns: RwLock<HashMap<String, Arc<Conn>>>,
    /// Serialises configuration changes and pool builds.
    config_lock: tokio::sync::Mutex<()>,
    /// Serialises static password rotations (requests and `periodic`).
    rotate_lock: tokio::sync::Mutex<()>,
}

impl Database {
    pub fn new(system: Arc<dyn SystemView>) -> Self {
        let routes: Vec<(String, Route)> = vec![
            ("config/?".into(), Route::ConfigList),
            (format!("config/(?P<name>{NAME})"), Route::Config),
            (format!("reset/(?P<name>{NAME})"), Route::Reset),
            (format!("rotate-root/(?P<name>{NAME})"), Route::RotateRoot),
            ("roles/?".into(), Route::RoleList),
            (format!("roles/(?P<name>{NAME})"), Route::Role),
            (format!("creds/(?P<name>{NAME})"), Route::Creds),
            ("static-roles/?".into(), Route::StaticList),
            (format!("static-roles/(?P<name>{NAME})"), Route::StaticRole),
            (format!("static-creds/(?P<name>{NAME})"), Route::StaticCreds),
            (format!("rotate-role/(?P<name>{NAME})"), Route::RotateRole),
        ];
        let table: Vec<(&str, Route)> = routes.iter().map(|(p, r)| (p.as_str(), *r)).collect();
        Database {
            routes: PathTable::new(&table),
            system,
            conns: RwLock::new(HashMap::new()),
            config_lock: tokio::sync::Mutex::new(()),
            rotate_lock: tokio::sync::Mutex::new(()),
        }
    }

    async fn load_config(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<Option<DbConfig>, BackendError> {
        Ok(storage.get_json(&format!("{CONFIG_PREFIX}{name}")).await?)
    }

    /// The pool of configuration `name`, built on first use.
    async fn conn(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Arc<Conn>>, BackendError> {
        if let Some(c) = self.conns.read().get(name) {
            return Ok(Some(c.clone()));
        }
        let _guard = self.config_lock.lock().await;
        self.conn_locked(name, storage).await
    }

    async fn conn_locked(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Arc<Conn>>, BackendError> {
        if let Some(c) = self.conns.read().get(name) {
            return Ok(Some(c.clone()));
        }
        let Some(mut config) = self.load_config(name, storage).await? else {
            return Ok(None);
        };
        if let Err(e) = self.settle_pending_root(name, &mut config, storage).await {
            // `config` holds the password the database takes, if one was
            // found; storage catches up on a later try.
            tracing::warn!(database = %name, error = %e, "database: settling an interrupted root rotation failed; will retry");
        }
        let kind = config.kind()?;
        let db = Db::open(&config.settings(kind))
            .map_err(|e| BackendError::Internal(format!("database {name:?}: {e}")))?;
        let c = Arc::new(Conn { config, kind, db });
        self.conns.write().insert(name.to_string(), c.clone());
        Ok(Some(c))
    }

    /// Replaces (or with `None` drops) the cached pool; the old one is
    /// closed. Caller holds `config_lock`.
    async fn swap_conn(&self, name: &str, new: Option<Arc<Conn>>) {
        let old = match new {
            Some(c) => self.conns.write().insert(name.to_string(), c),
            None => self.conns.write().remove(name),
        };
        if let Some(old) = old {
            old.db.close().await;
        }
    }

    /// Settles a root rotation that stopped after the new password was
    /// stored as pending: adopts the pending password if the database takes
    /// it, drops it if the database still takes the current one, and keeps
    /// it for a later try if the database takes neither (unreachable).
    /// Caller holds `config_lock`; a cached pool built from the old
    /// password is the caller's to drop. Returns whether `config` changed
    /// (it is then stored).
    async fn settle_pending_root(
        &self,
        name: &str,
        config: &mut DbConfig,
        storage: &dyn Storage,
    ) -> Result<bool, BackendError> {
        let Some(pending) = config.pending_password.clone() else {
            return Ok(false);
        };
        let kind = config.kind()?;
        let mut adopted = config.clone();
        adopted.password = pending;
        adopted.pending_password = None;
        if connects(&adopted, kind).await {
            tracing::info!(database = %name, "database: adopting the root password of an interrupted rotation");
            *config = adopted;
        } else if connects(config, kind).await {
            tracing::info!(database = %name, "database: an interrupted root rotation did not reach the database; dropping it");
            config.pending_password = None;
        } else {
            return Ok(false);
        }
        storage
            .put_json(&format!("{CONFIG_PREFIX}{name}"), &*config)
            .await?;
        Ok(true)
    }

    /// Settles the interrupted root rotation of every configuration that
    /// has one (see [`Self::settle_pending_root`]). Failures are retried on
    /// the next call.
    async fn settle_pending_roots(&self, storage: &dyn Storage) -> Result<(), BackendError> {
        for name in storage.list(CONFIG_PREFIX).await? {
            if name.ends_with('/') {
                continue;
            }
            // A cached pool's configuration mirrors the stored one's pending
            // state (`rotate_root` keeps it so): no storage read for it.
            if self
                .conns
                .read()
                .get(&name)
                .is_some_and(|c| c.config.pending_password.is_none())
            {
                continue;
            }
            let _guard = self.config_lock.lock().await;
            let Some(mut config) = self.load_config(&name, storage).await? else {
                continue;
            };
            match self.settle_pending_root(&name, &mut config, storage).await {
                Ok(true) => self.swap_conn(&name, None).await,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(database = %name, error = %e, "database: settling an interrupted root rotation failed; will retry");
                }
            }
        }
        Ok(())
    }

    async fn password(&self, policy: Option<&str>) -> Result<String, BackendError> {
        self.system.generate_password(policy).await
    }

    // --- config -----------------------------------------------------------

    async fn config_write(
        &self,
        name: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: ConfigInput = req.parse()?;
        let _guard = self.config_lock.lock().await;
        let mut existing = self.load_config(name, storage).await?;
        if let Some(e) = existing.as_mut() {
            if input.password.is_some() {
                // The administrator's password replaces whatever an
                // interrupted rotation left.
                e.pending_password = None;
            } else if self.settle_pending_root(name, e, storage).await? {
                self.swap_conn(name, None).await;
            }
        }
        let is_new = existing.is_none();
        let mut c = existing.unwrap_or_else(|| DbConfig {
            verify_connection: true,
            max_open_connections: DEFAULT_MAX_OPEN,
            ..Default::default()
        });
        match input.plugin_name {
            Some(p) => c.plugin_name = p,
            None if is_new => return Err(BackendError::bad_request("plugin_name: required")),
            None => {}
        }
        if input.disable_escaping == Some(true) {
            return Err(BackendError::bad_request(
                "disable_escaping: not supported; values are always escaped",
            ));
        }
        let kind = c.kind()?;
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = input.$f { c.$f = v; })* };
        }
        set!(
            verify_connection,
            allowed_roles,
            root_rotation_statements,
            password_policy,
            connection_url,
            username,
            password,
            host,
            tls,
            username_template
        );
        if let Some(p) = input.port {
            c.port =
                u16::try_from(p).map_err(|_| BackendError::bad_request("port: out of range"))?;
        }
        if let Some(m) = input.max_open_connections {
            if m == 0 {
                return Err(BackendError::bad_request(
                    "max_open_connections: must be positive",
                ));
            }
            c.max_open_connections = m;
        }
        if let Some(m) = input.max_idle_connections {
            c.max_idle_connections = m;
        }
        if let Some(d) = input.max_connection_lifetime {
            c.max_connection_lifetime = d.as_secs();
        }
        if kind != PluginKind::Redis && c.connection_url.is_empty() {
            return Err(BackendError::bad_request("connection_url: required"));
        }
        if kind == PluginKind::Redis && c.host.is_empty() {
            return Err(BackendError::bad_request(
                "host: required for redis-database-plugin",
            ));
        }
        if !c.username_template.is_empty() {
            let sample = NameInput {
                role_name: "role",
                display_name: "token",
            };
            match render_username(&c.username_template, &sample) {
                Ok(u) if valid_username(&u) => {}
                Ok(_) => {
                    return Err(BackendError::bad_request(
                        "username_template: renders user names with characters other than [A-Za-z0-9_.-]",
                    ))
                }
                Err(e) => return Err(BackendError::bad_request(format!("username_template: {e}"))),
            }
        }
        let db = Db::open(&c.settings(kind)).map_err(|e| {
            BackendError::bad_request(format!("error creating database object: {e}"))
        })?;
        if c.verify_connection {
            if let Err(e) = db.verify().await {
                db.close().await;
                return Err(BackendError::bad_request(format!(
                    "error creating database object: error verifying connection: {e}"
                )));
            }
        }
        storage
            .put_json(&format!("{CONFIG_PREFIX}{name}"), &c)
            .await?;
        self.swap_conn(
            name,
            Some(Arc::new(Conn {
                config: c,
                kind,
                db,
            })),
        )
        .await;
        Ok(None)
    }

    async fn config_read(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let Some(c) = self.load_config(name, storage).await? else {
            return Ok(None);
        };
        let mut details = Map::new();
        if c.kind()? == PluginKind::Redis {
            details.insert("host".into(), json!(c.host));
            details.insert("port".into(), json!(c.port));
            details.insert("username".into(), json!(c.username));
            details.insert("tls".into(), json!(c.tls));
        } else {
            details.insert(
                "connection_url".into(),
                json!(conn::redact_url(&c.connection_url)),
            );
            details.insert("username".into(), json!(c.username));
            details.insert("max_open_connections".into(), json!(c.max_open_connections));
            details.insert("max_idle_connections".into(), json!(c.max_idle_connections));
            details.insert(
                "max_connection_lifetime".into(),
                json!(format!("{}s", c.max_connection_lifetime)),
            );
        }
        if !c.username_template.is_empty() {
            details.insert("username_template".into(), json!(c.username_template));
        }
        Response::with_data(&json!({
            "plugin_name": c.plugin_name,
            "plugin_version": "",
            "connection_details": details,
            "allowed_roles": c.allowed_roles,
            "root_credentials_rotate_statements": c.root_rotation_statements,
            "password_policy": c.password_policy,
            "verify_connection": c.verify_connection,
        }))
        .map(Some)
    }

    async fn config_delete(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let _guard = self.config_lock.lock().await;
        storage.delete(&format!("{CONFIG_PREFIX}{name}")).await?;
        self.swap_conn(name, None).await;
        Ok(None)
    }

    async fn reset(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let _guard = self.config_lock.lock().await;
        if self.load_config(name, storage).await?.is_none() {
            return Err(BackendError::bad_request(format!(
                "unknown database {name:?}"
            )));
        }
        self.swap_conn(name, None).await;
        Ok(None)
    }

    /// Sets a new password for the configured admin user. The password is
    /// stored as pending before the database is changed and becomes the
    /// password after, so that no step can lose it: an interruption leaves
    /// it pending, and [`Self::settle_pending_root`] settles it later.
    async fn rotate_root(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let unknown = || BackendError::bad_request(format!("unknown database {name:?}"));
        let _guard = self.config_lock.lock().await;
        let key = format!("{CONFIG_PREFIX}{name}");
        let mut config = self.load_config(name, storage).await?.ok_or_else(unknown)?;
        if config.username.is_empty() {
            return Err(BackendError::bad_request(
                "username: the configuration has no root user to rotate",
            ));
        }
        if self.settle_pending_root(name, &mut config, storage).await? {
            self.swap_conn(name, None).await;
        }
        let conn = self.conn_locked(name, storage).await?.ok_or_else(unknown)?;
        let kind = conn.kind;
        // A pending password left unsettled (the database took neither) may
        // be the one the database has: set it again rather than replace it.
        let new_password = match config.pending_password.clone() {
            Some(p) => p,
            None => self.password(config.policy()).await?,
        };
        config.pending_password = Some(new_password.clone());
        storage.put_json(&key, &config).await?;
        let rotated = conn
            .db
            .rotate_root(
                &config.root_rotation_statements,
                &config.username,
                &new_password,
            )
            .await;
        if let Err(e) = rotated {
            // Stored as pending, and the database may have taken it (a
            // lost answer): drop the pool so that the next use, or
            // `periodic`, settles which password holds.
            self.swap_conn(name, None).await;
            return Err(db_failure(name, "rotating the root password", e));
        }
        config.password = new_password;
        config.pending_password = None;
        let stored = storage.put_json(&key, &config).await;
        if stored.is_err() {
            // Storage still holds it as pending: the cached configuration
            // says so, for `periodic` to settle it.
            config.pending_password = Some(config.password.clone());
        }
        // The database has the new password whether or not it was stored:
        // the pool must use it.
        let db = match Db::open(&config.settings(kind)) {
            Ok(db) => db,
            Err(e) => {
                // The old pool has the old password: the next use reopens.
                self.swap_conn(name, None).await;
                return Err(BackendError::Internal(format!("database {name:?}: {e}")));
            }
        };
        self.swap_conn(name, Some(Arc::new(Conn { config, kind, db })))
            .await;
        if let Err(e) = stored {
            tracing::error!(database = %name, error = %e, "database: root password changed but only stored as pending; it is adopted on next use");
            return Err(e.into());
        }
        Ok(None)
    }

    // --- dynamic roles ------------------------------------------------------

    async fn load_role(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Role>, BackendError> {
        Ok(storage.get_json(&format!("{ROLE_PREFIX}{name}")).await?)
    }

    async fn role_write(
        &self,
        name: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: RoleInput = req.parse()?;
        let existing = self.load_role(name, storage).await?;
        let is_new = existing.is_none();
        let mut r = existing.unwrap_or_else(|| Role {
            credential_type: "password".into(),
            ..Default::default()
        });
        match input.db_name {
            Some(d) if !d.is_empty() => r.db_name = d,
            _ if is_new => return Err(BackendError::bad_request("db_name: required")),
            _ => {}
        }
        if let Some(v) = input.creation_statements {
            r.creation_statements = v;
        }
        if let Some(v) = input.revocation_statements {
            r.revocation_statements = v;
        }
        if let Some(v) = input.rollback_statements {
            r.rollback_statements = v;
        }
        if let Some(v) = input.renew_statements {
            r.renew_statements = v;
        }
        if let Some(d) = input.default_ttl {
            r.default_ttl = d.as_secs();
        }
        if let Some(d) = input.max_ttl {
            r.max_ttl = d.as_secs();
        }
        if let Some(t) = input.credential_type {
            if t != "password" {
                return Err(BackendError::bad_request(format!(
                    "credential_type: {t:?} is not supported (only \"password\")"
                )));
            }
            r.credential_type = t;
        }
        if r.max_ttl != 0 && r.default_ttl > r.max_ttl {
            return Err(BackendError::bad_request(
                "default_ttl: cannot be greater than max_ttl",
            ));
        }
        let redis = matches!(
            self.load_config(&r.db_name, storage)
                .await?
                .map(|c| c.kind()),
            Some(Ok(PluginKind::Redis))
        );
        if r.creation_statements.is_empty() && !redis {
            return Err(BackendError::bad_request("creation_statements: required"));
        }
        storage
            .put_json(&format!("{ROLE_PREFIX}{name}"), &r)
            .await?;
        Ok(None)
    }

    async fn role_read(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let Some(r) = self.load_role(name, storage).await? else {
            return Ok(None);
        };
        Response::with_data(&json!({
            "db_name": r.db_name,
            "creation_statements": r.creation_statements,
            "revocation_statements": r.revocation_statements,
            "rollback_statements": r.rollback_statements,
            "renew_statements": r.renew_statements,
            "default_ttl": r.default_ttl,
            "max_ttl": r.max_ttl,
            "credential_type": r.credential_type,
            "credential_config": {},
        }))
        .map(Some)
    }

    /// A connection the role may use: configured, and allowed for it.
    async fn conn_for_role(
        &self,
        db_name: &str,
        role: &str,
        storage: &dyn Storage,
    ) -> Result<Arc<Conn>, BackendError> {
        let conn = self.conn(db_name, storage).await?.ok_or_else(|| {
            BackendError::bad_request(format!("db_name: unknown database {db_name:?}"))
        })?;
        if !conn.config.allows(role) {
            return Err(BackendError::bad_request(format!(
                "{role:?} is not an allowed role for database {db_name:?} (allowed_roles)"
            )));
        }
        Ok(conn)
    }

    fn ttls(&self, default_ttl: u64, max_ttl: u64) -> (Duration, Duration) {
        let max = if max_ttl == 0 {
            self.system.max_lease_ttl()
        } else {
            Duration::from_secs(max_ttl).min(self.system.max_lease_ttl())
        };
        let ttl = if default_ttl == 0 {
            self.system.default_lease_ttl()
        } else {
            Duration::from_secs(default_ttl)
        };
        (ttl.min(max), max)
    }

    async fn creds(
        &self,
        name: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let role = self
            .load_role(name, storage)
            .await?
            .ok_or_else(|| BackendError::bad_request(format!("unknown role: {name}")))?;
        let conn = self.conn_for_role(&role.db_name, name, storage).await?;
        let username = generate_username(&conn, name, &req.display_name)?;
        let password = self.password(conn.config.policy()).await?;
        let (ttl, max_ttl) = self.ttls(role.default_ttl, role.max_ttl);
        let expiration = expiration_string(ttl);
        conn.db
            .create_user(
                &role.creation_statements,
                &role.rollback_statements,
                &username,
                &password,
                &expiration,
            )
            .await
            .map_err(|e| db_failure(&role.db_name, "creating a user", e))?;
        let internal = CredsInternal {
            username: username.clone(),
            db_name: role.db_name.clone(),
            role: name.to_string(),
            secret_type: "creds".into(),
        };
        let mut resp = Response::with_data(&json!({ "username": username, "password": password }))?;
        resp.secret = Some(Secret {
            lease: LeaseOptions {
                ttl,
                max_ttl,
                renewable: true,
                ..Default::default()
            },
            internal_data: serde_json::to_value(&internal)?,
        });
        Ok(Some(resp))
    }

    fn internal(req: &Request) -> Result<(CredsInternal, Secret), BackendError> {
        let secret = req
            .secret
            .clone()
            .ok_or_else(|| BackendError::bad_request("secret: missing from the request"))?;
        let internal: CredsInternal = serde_json::from_value(secret.internal_data.clone())
            .map_err(|e| BackendError::Internal(format!("lease internal data: {e}")))?;
        Ok((internal, secret))
    }

    async fn creds_renew(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let (internal, secret) = Self::internal(req)?;
        let role = self.load_role(&internal.role, storage).await?;
        let default_ttl = role.as_ref().map(|r| r.default_ttl).unwrap_or(0);
        let mut ttl = if secret.lease.increment.is_zero() {
            self.ttls(default_ttl, 0).0
        } else {
            secret.lease.increment
        };
        if !secret.lease.max_ttl.is_zero() && secret.lease.issue_time > 0 {
            let end = secret.lease.issue_time + secret.lease.max_ttl.as_secs() as i64;
            let left = end - Utc::now().timestamp();
            if left <= 0 {
                return Err(BackendError::bad_request("lease has reached its max_ttl"));
            }
            ttl = ttl.min(Duration::from_secs(left as u64));
        }
        let conn = self
            .conn(&internal.db_name, storage)
            .await?
            .ok_or_else(|| {
                BackendError::Internal(format!(
                    "database {:?} is no longer configured",
                    internal.db_name
                ))
            })?;
        let renew = role.map(|r| r.renew_statements).unwrap_or_default();
        conn.db
            .renew_user(&renew, &internal.username, &expiration_string(ttl))
            .await
            .map_err(|e| db_failure(&internal.db_name, "renewing a user", e))?;
        Ok(Some(Response {
            secret: Some(Secret {
                lease: LeaseOptions {
                    ttl,
                    ..secret.lease
                },
                internal_data: secret.internal_data,
            }),
            ..Default::default()
        }))
    }

    async fn creds_revoke(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let (internal, _) = Self::internal(req)?;
        // A deleted role falls back to the default statements.
        let revocation = self
            .load_role(&internal.role, storage)
            .await?
            .map(|r| r.revocation_statements)
            .unwrap_or_default();
        let conn = self
            .conn(&internal.db_name, storage)
            .await?
            .ok_or_else(|| {
                BackendError::Internal(format!(
                    "database {:?} is no longer configured",
                    internal.db_name
                ))
            })?;
        conn.db
            .revoke_user(&revocation, &internal.username)
            .await
            .map_err(|e| db_failure(&internal.db_name, "revoking a user", e))?;
        Ok(None)
    }

    // --- static roles ---------------------------------------------------------

    async fn load_static(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<Option<StaticRole>, BackendError> {
        Ok(storage.get_json(&format!("{STATIC_PREFIX}{name}")).await?)
    }

    async fn static_write(
        &self,
        name: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: StaticRoleInput = req.parse()?;
        let _guard = self.rotate_lock.lock().await;
        let existing = self.load_static(name, storage).await?;
        let is_new = existing.is_none();
        let mut r = existing.unwrap_or_else(|| StaticRole {
            credential_type: "password".into(),
            ..Default::default()
        });
        match input.db_name {
            Some(d) if is_new && !d.is_empty() => r.db_name = d,
            Some(d) if !is_new && d != r.db_name => {
                return Err(BackendError::bad_request("db_name: cannot be changed"))
            }
            None if is_new => return Err(BackendError::bad_request("db_name: required")),
            _ => {}
        }
        match input.username {
            Some(u) if is_new && !u.is_empty() => r.username = u,
            Some(u) if !is_new && u != r.username => {
                return Err(BackendError::bad_request("username: cannot be changed"))
            }
            None if is_new => return Err(BackendError::bad_request("username: required")),
            _ => {}
        }
        if r.username.is_empty() || r.db_name.is_empty() {
            return Err(BackendError::bad_request("username, db_name: required"));
        }
        if let Some(p) = input.rotation_period {
            r.rotation_period = p.as_secs();
            if !p.is_zero() {
                r.rotation_schedule.clear();
            }
        }
        if let Some(s) = input.rotation_schedule {
            if !s.is_empty() {
                cron::Schedule::parse(&s)
                    .map_err(|e| BackendError::bad_request(format!("rotation_schedule: {e}")))?;
                if input.rotation_period.is_some_and(|p| !p.is_zero()) {
                    return Err(BackendError::bad_request(
                        "rotation_period, rotation_schedule: give one, not both",
                    ));
                }
                r.rotation_period = 0;
            }
            r.rotation_schedule = s;
        }
        if let Some(w) = input.rotation_window {
            r.rotation_window = w.as_secs();
        }
        if r.rotation_schedule.is_empty() {
            if r.rotation_period == 0 {
                return Err(BackendError::bad_request(
                    "rotation_period or rotation_schedule: one is required",
                ));
            }
            if Duration::from_secs(r.rotation_period) < MIN_ROTATION_PERIOD {
                return Err(BackendError::bad_request(
                    "rotation_period: must be at least 5s",
                ));
            }
        }
        if let Some(s) = input.rotation_statements {
            r.rotation_statements = s;
        }
        if let Some(t) = input.credential_type {
            if t != "password" {
                return Err(BackendError::bad_request(format!(
                    "credential_type: {t:?} is not supported (only \"password\")"
                )));
            }
        }
        let conn = self.conn_for_role(&r.db_name, name, storage).await?;
        if is_new {
            // Vault's behaviour: the password only tresor knows starts now.
            self.rotate_static_locked(name, &mut r, &conn, storage, false)
                .await?;
        } else {
            let from = r.last_vault_rotation.unwrap_or_else(Utc::now);
            r.next_rotation = r.compute_next(from)?;
            storage
                .put_json(&format!("{STATIC_PREFIX}{name}"), &r)
                .await?;
        }
        Ok(None)
    }

    /// Sets a new password in the database and stores it. Caller holds
    /// `rotate_lock`. With `stored`, the role already exists in storage and
    /// the new password is written there before the database is changed.
    async fn rotate_static_locked(
        &self,
        name: &str,
        r: &mut StaticRole,
        conn: &Conn,
        storage: &dyn Storage,
        stored: bool,
    ) -> Result<(), BackendError> {
        let key = format!("{STATIC_PREFIX}{name}");
        let password = match r.pending_password.clone() {
            Some(p) => p,
            None => self.password(conn.config.policy()).await?,
        };
        if stored {
            r.pending_password = Some(password.clone());
            storage.put_json(&key, &*r).await?;
        }
        conn.db
            .set_password(&r.rotation_statements, &r.username, &password)
            .await
            .map_err(|e| db_failure(&r.db_name, "rotating a static role's password", e))?;
        let now = Utc::now();
        r.password = password;
        r.pending_password = None;
        r.last_vault_rotation = Some(now);
        r.next_rotation = r.compute_next(now)?;
        storage.put_json(&key, &*r).await?;
        Ok(())
    }

    async fn rotate_role(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let _guard = self.rotate_lock.lock().await;
        let Some(mut r) = self.load_static(name, storage).await? else {
            return Err(BackendError::bad_request(format!(
                "unknown static role {name:?}"
            )));
        };
        let conn = self.conn_for_role(&r.db_name, name, storage).await?;
        self.rotate_static_locked(name, &mut r, &conn, storage, true)
            .await?;
        Ok(None)
    }

    async fn static_read(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let Some(r) = self.load_static(name, storage).await? else {
            return Ok(None);
        };
        let mut d = json!({
            "db_name": r.db_name,
            "username": r.username,
            "rotation_statements": r.rotation_statements,
            "credential_type": r.credential_type,
            "last_vault_rotation": r.last_vault_rotation.map(rfc3339),
        });
        schedule_fields(&r, &mut d);
        Response::with_data(&d).map(Some)
    }

    async fn static_creds(
        &self,
        name: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let Some(r) = self.load_static(name, storage).await? else {
            return Ok(None);
        };
        let ttl = r
            .next_rotation
            .map(|n| (n - Utc::now().timestamp()).max(0))
            .unwrap_or(0);
        let mut d = json!({
            "username": r.username,
            "password": r.password,
            "last_vault_rotation": r.last_vault_rotation.map(rfc3339),
            "ttl": ttl,
        });
        schedule_fields(&r, &mut d);
        Response::with_data(&d).map(Some)
    }

    /// Rotates every static role that is due (or has a rotation pending
    /// from an interrupted attempt). Failures are retried next time.
    async fn rotate_due(&self, storage: &dyn Storage) -> Result<(), BackendError> {
        let now = Utc::now().timestamp();
        for name in storage.list(STATIC_PREFIX).await? {
            if name.ends_with('/') {
                continue;
            }
            let _guard = self.rotate_lock.lock().await;
            let Some(mut r) = self.load_static(&name, storage).await? else {
                continue;
            };
            let due = r.pending_password.is_some() || r.next_rotation.is_some_and(|n| n <= now);
            if !due {
                continue;
            }
            let res = match self.conn_for_role(&r.db_name, &name, storage).await {
                Ok(conn) => {
                    self.rotate_static_locked(&name, &mut r, &conn, storage, true)
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = res {
                tracing::warn!(role = %name, error = %e, "database: scheduled rotation failed; will retry");
            }
        }
        Ok(())
    }

    async fn list(
        &self,
        prefix: &str,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let keys = storage
            .list(prefix)
            .await?
            .into_iter()
            .filter(|k| !k.ends_with('/'))
            .collect();
        Ok(Some(Response::list(keys)))
    }
}

fn schedule_fields(r: &StaticRole, d: &mut Value) {
    if let Value::Object(m) = d {
        if r.rotation_schedule.is_empty() {
            m.insert("rotation_period".into(), json!(r.rotation_period));
        } else {
            m.insert("rotation_schedule".into(), json!(r.rotation_schedule));
            m.insert("rotation_window".into(), json!(r.rotation_window));
        }
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// The `{{expiration}}` of a statement: when the lease ends, in the form
/// PostgreSQL's `VALID UNTIL` takes (Vault's format).
fn expiration_string(ttl: Duration) -> String {
    let secs = Utc::now().timestamp().saturating_add(ttl.as_secs() as i64);
    Utc.timestamp_opt(secs, 0)
        .single()
        .unwrap_or_else(Utc::now)
        .format("%Y-%m-%d %H:%M:%S%z")
        .to_string()
}

/// Whether the database accepts a connection with these settings.
async fn connects(config: &DbConfig, kind: PluginKind) -> bool {
    let Ok(db) = Db::open(&config.settings(kind)) else {
        return false;
    };
    let ok = db.verify().await.is_ok();
    db.close().await;
    ok
}

/// A database failure: logged with its detail (which never holds a
/// password), answered as an internal error.
fn db_failure(db: &str, what: &str, e: DbError) -> BackendError {
    BackendError::Internal(format!("database {db:?}: {what}: {e}"))
}

fn generate_username(conn: &Conn, role: &str, display_name: &str) -> Result<String, BackendError> {
    let input = NameInput {
        role_name: role,
        display_name,
    };
    let custom = !conn.config.username_template.is_empty();
    let tpl = if custom {
        conn.config.username_template.as_str()
    } else {
        conn.kind.default_username_template()
    };
    let mut name = render_username(tpl, &input)
        .map_err(|e| BackendError::bad_request(format!("username_template: {e}")))?;
    if !custom {
        name = name.to_lowercase();
    }
    let name: String = name.chars().take(conn.kind.username_limit()).collect();
    if !valid_username(&name) {
        return Err(BackendError::bad_request(
            "username_template: rendered an invalid user name",
        ));
    }
    Ok(name)
}

// --- request fields -----------------------------------------------------------

#[derive(Default, Deserialize)]
#[serde(default)]
struct ConfigInput {
    plugin_name: Option<String>,
    #[serde(deserialize_with = "fields::opt_boolean")]
    verify_connection: Option<bool>,
    #[serde(deserialize_with = "fields::opt_string_list")]
    allowed_roles: Option<Vec<String>>,
    #[serde(deserialize_with = "statements")]
    root_rotation_statements: Option<Vec<String>>,
    password_policy: Option<String>,
    connection_url: Option<String>,
    username: Option<String>,
    password: Option<String>,
    host: Option<String>,
    #[serde(deserialize_with = "fields::opt_uint")]
    port: Option<u64>,
    #[serde(deserialize_with = "fields::opt_boolean")]
    tls: Option<bool>,
    #[serde(deserialize_with = "fields::opt_uint")]
    max_open_connections: Option<u64>,
    #[serde(deserialize_with = "fields::opt_uint")]
    max_idle_connections: Option<u64>,
    #[serde(deserialize_with = "fields::opt_duration")]
    max_connection_lifetime: Option<Duration>,
    username_template: Option<String>,
    #[serde(deserialize_with = "fields::opt_boolean")]
    disable_escaping: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RoleInput {
    db_name: Option<String>,
    #[serde(deserialize_with = "statements")]
    creation_statements: Option<Vec<String>>,
    #[serde(deserialize_with = "statements")]
    revocation_statements: Option<Vec<String>>,
    #[serde(deserialize_with = "statements")]
    rollback_statements: Option<Vec<String>>,
    #[serde(deserialize_with = "statements")]
    renew_statements: Option<Vec<String>>,
    #[serde(deserialize_with = "fields::opt_duration")]
    default_ttl: Option<Duration>,
    #[serde(deserialize_with = "fields::opt_duration")]
    max_ttl: Option<Duration>,
    credential_type: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct StaticRoleInput {
    db_name: Option<String>,
    username: Option<String>,
    #[serde(deserialize_with = "fields::opt_duration")]
    rotation_period: Option<Duration>,
    rotation_schedule: Option<String>,
    #[serde(deserialize_with = "fields::opt_duration")]
    rotation_window: Option<Duration>,
    #[serde(deserialize_with = "statements")]
    rotation_statements: Option<Vec<String>>,
    credential_type: Option<String>,
}

/// Vault's statement fields: an array of strings, or one string that may
/// be base64 or a JSON array of strings. Unlike other list fields a
/// string is never split on commas: SQL has commas.
fn statements<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(de::Error::custom(format!("expected a string, got {other}"))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| Some(v.into_iter().filter(|s| !s.trim().is_empty()).collect())),
        Value::String(s) => Ok(Some(parse_statement_string(&s))),
        other => Err(de::Error::custom(format!(
            "expected a string or a list of strings, got {other}"
        ))),
    }
}

fn parse_statement_string(s: &str) -> Vec<String> {
    let t = s.trim();
    if t.is_empty() {
        return Vec::new();
    }
    let decoded = B64
        .decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|d| d.chars().all(|c| !c.is_control() || c.is_whitespace()));
    let text = decoded.as_deref().unwrap_or(t);
    if text.trim_start().starts_with('[') {
        if let Ok(list) = serde_json::from_str::<Vec<String>>(text) {
            // A JSON array of ACL rules is one Redis statement; SQL arrays
            // are statement lists. Both are kept as the list given.
            return list;
        }
    }
    vec![text.to_string()]
}

#[async_trait]
impl Backend for Database {
    async fn existence_check(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<bool>, BackendError> {
        let Some((route, caps)) = self.routes.route(&req.path) else {
            return Ok(None);
        };
        let prefix = match route {
            Route::Config => CONFIG_PREFIX,
            Route::Role => ROLE_PREFIX,
            Route::StaticRole => STATIC_PREFIX,
            _ => return Ok(None),
        };
        Ok(Some(
            storage
                .get(&format!("{prefix}{}", caps.get("name")))
                .await?
                .is_some(),
        ))
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
            return Ok(Some(crate::secrets::kv::help(HELP)));
        }
        let write = matches!(op, Operation::Create | Operation::Update);
        match (route, op) {
            (Route::ConfigList | Route::Config, Operation::List) => {
                self.list(CONFIG_PREFIX, storage).await
            }
            (Route::Config, Operation::Read) => self.config_read(name, storage).await,
            (Route::Config, Operation::Delete) => self.config_delete(name, storage).await,
            (Route::Config, _) if write => self.config_write(name, req, storage).await,
            (Route::Reset, _) if write => self.reset(name, storage).await,
            (Route::RotateRoot, _) if write => self.rotate_root(name, storage).await,
            (Route::RoleList | Route::Role, Operation::List) => {
                self.list(ROLE_PREFIX, storage).await
            }
            (Route::Role, Operation::Read) => self.role_read(name, storage).await,
            (Route::Role, Operation::Delete) => {
                storage.delete(&format!("{ROLE_PREFIX}{name}")).await?;
                Ok(None)
            }
            (Route::Role, _) if write => self.role_write(name, req, storage).await,
            (Route::Creds, Operation::Read) => self.creds(name, req, storage).await,
            (Route::Creds, Operation::Renew) => self.creds_renew(req, storage).await,
            (Route::Creds, Operation::Revoke) => self.creds_revoke(req, storage).await,
            (Route::StaticList | Route::StaticRole, Operation::List) => {
                self.list(STATIC_PREFIX, storage).await
            }
            (Route::StaticRole, Operation::Read) => self.static_read(name, storage).await,
            (Route::StaticRole, Operation::Delete) => {
                let _guard = self.rotate_lock.lock().await;
                storage.delete(&format!("{STATIC_PREFIX}{name}")).await?;
                Ok(None)
            }
            (Route::StaticRole, _) if write => self.static_write(name, req, storage).await,
            (Route::StaticCreds, Operation::Read) => self.static_creds(name, storage).await,
            (Route::RotateRole, _) if write => self.rotate_role(name, storage).await,
            _ => Err(BackendError::UnsupportedOperation),
        }
    }

    /// Static roles rotate on periods down to 5 s.
    fn periodic_interval(&self) -> Duration {
        Duration::from_secs(5)
    }

    async fn periodic(&self, storage: &dyn Storage) -> Result<(), BackendError> {
        if let Err(e) = self.settle_pending_roots(storage).await {
            tracing::warn!(error = %e, "database: settling interrupted root rotations failed; will retry");
        }
        self.rotate_due(storage).await
    }

    async fn cleanup(&self, _storage: &dyn Storage) -> Result<(), BackendError> {
        let _guard = self.config_lock.lock().await;
        let all: Vec<Arc<Conn>> = self.conns.write().drain().map(|(_, c)| c).collect();
        for c in all {
            c.db.close().await;
        }
        Ok(())
    }
}

const HELP: &str = "The database secrets engine issues database users with leases \
(creds/<role>) and rotates the passwords of existing users (static-creds/<name>). \
Configure connections at config/<name>, dynamic roles at roles/<name>, static roles \
at static-roles/<name>.";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", "x"));
        assert!(glob("app-*", "app-ro"));
        assert!(glob("*-ro", "app-ro"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxc"));
        assert!(!glob("ro", "rw"));
    }

    #[test]
    fn statement_strings() {
        assert_eq!(
            parse_statement_string("GRANT SELECT, INSERT ON t TO \"{{name}}\";"),
            vec!["GRANT SELECT, INSERT ON t TO \"{{name}}\";"]
        );
        assert_eq!(
            parse_statement_string(r#"["+@read", "~*"]"#),
            vec!["+@read", "~*"]
        );
        let b = B64.encode("CREATE ROLE \"{{name}}\";");
        assert_eq!(
            parse_statement_string(&b),
            vec!["CREATE ROLE \"{{name}}\";"]
        );
    }
}
