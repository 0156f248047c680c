//! [`Core`]: the request pipeline of DESIGN.md.
//!
//! `handle`: sealed? → token lookup → ACL → audit request → route to the
//! backend → leases/tokens/wrapping → audit response.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use parking_lot::RwLock;
use serde_json::Value;
use tresor_api::sys::{
    GenerateRootStatus, Health, InitRequest, InitResponse, Leader, RekeyStatus, SealStatus,
    UnsealRequest,
};
use tresor_api::{AuthInfo, Envelope};
use tresor_sdk::{
    BackendConfig, BackendError, BackendType, Factory, Map, Operation, Request, Response, Secret,
    SpecialPaths, Storage, StorageExt, SystemView,
};
use zeroize::Zeroizing;

use crate::audit::AuditBroker;
use crate::audit_glue::Audit;
use crate::barrier::{Barrier, View};
use crate::expiration::{ExpirationManager, LeaseEntry, LeaseRevoker};
use crate::mount::{Handler, MountConfig, MountEntry, MountSystemView, Route, Router, Table};
use crate::password::PasswordPolicies;
use crate::policy::{is_sudo_path, PolicyStore};
use crate::quota::Quotas;
use crate::seal::{
    encode_root_token, parse_key_share, GenerateRootProgress, SealManager, UnsealOutcome,
};
use crate::token::{now, random_base62, TokenEntry, TokenStore};
use crate::{sys, token_api, wrapping, CoreError};

/// Renders the Prometheus text exposition for `sys/metrics`.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// What the server binary hands the core at start.
pub struct CoreConfig {
    pub storage: Arc<dyn tresor_storage::Storage>,
    /// Server-wide default and maximum lease TTL (Vault: 768h both).
    pub default_lease_ttl: Duration,
    pub max_lease_ttl: Duration,
    /// Backend constructors by mount type: secrets engines by type (`kv`),
    /// auth methods as `auth/<type>` (`auth/approle`).
    pub factories: BTreeMap<String, Factory>,
    pub cluster_name: String,
    pub metrics: Option<MetricsRender>,
}

/// The headers of a request, asked by name. The HTTP layer hands over its
/// own header map behind this: the core needs no HTTP crate, and nothing
/// is copied unless a mount lets headers through.
pub trait RequestHeaders: Send + Sync + std::fmt::Debug {
    /// Every text value of header `name` (any case), in order.
    fn values(&self, name: &str) -> Vec<String>;
}

/// A request as the HTTP layer hands it over.
#[derive(Debug, Clone)]
pub struct CoreRequest {
    /// From the verb: GET → Read, LIST or `?list=true` → List, POST/PUT →
    /// Update (the core turns it into Create after the existence check),
    /// DELETE → Delete, PATCH → Patch.
    pub operation: Operation,
    /// Path after `/v1/`, already normalised (no `.`/`..` segments).
    pub path: String,
    /// Body (writes) or query parameters (reads, lists).
    pub data: Map,
    pub token: Option<String>,
    /// `X-Vault-Wrap-TTL`.
    pub wrap_ttl: Option<Duration>,
    pub remote_addr: Option<IpAddr>,
    /// The request's headers; a backend sees those its mount lets through
    /// (`passthrough_request_headers`), as in Vault.
    pub headers: Option<Arc<dyn RequestHeaders>>,
    /// DER client certificate chain of the TLS connection, leaf first.
    pub peer_certificates: Vec<Vec<u8>>,
}

impl CoreRequest {
    pub fn new(operation: Operation, path: impl Into<String>) -> Self {
        CoreRequest {
            operation,
            path: path.into(),
            data: Map::new(),
            token: None,
            wrap_ttl: None,
            remote_addr: None,
            headers: None,
            peer_certificates: Vec::new(),
        }
    }
}

/// What the core answers.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreResponse {
    pub status: u16,
    pub body: ResponseBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResponseBody {
    /// No body (204).
    Empty,
    /// The usual Vault envelope.
    Envelope(Box<Envelope>),
    /// A bare JSON document (a few `sys/` endpoints answer without envelope).
    Json(Value),
    /// Anything else (Prometheus text, PEM).
    Raw { content_type: String, body: Vec<u8> },
}

/// What a core-internal handler (sys/, auth/token/) answers.
// A Reply lives for one hand-over on the stack; boxing the response would
// add an allocation to every request for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Reply {
    /// An SDK response, post-processed like any backend's.
    Resp(Option<Response>),
    /// A freshly minted token.
    Auth(Box<AuthInfo>),
    /// A finished answer (bodies that are not the envelope).
    Body(CoreResponse),
}

/// Who is calling, as established by the pipeline.
pub(crate) struct Caller {
    pub(crate) entry: Option<Arc<TokenEntry>>,
    /// The raw token, for the few answers that echo it (lookup-self).
    pub(crate) token: Option<Zeroizing<String>>,
    /// The ACL granted sudo on this path.
    pub(crate) sudo: bool,
    /// `X-Vault-Wrap-TTL` of the request.
    pub(crate) wrap_ttl: Option<Duration>,
}

/// Everything that exists only while unsealed.
pub(crate) struct Unsealed {
    pub(crate) router: Router,
    pub(crate) tokens: TokenStore,
    pub(crate) policies: PolicyStore,
    pub(crate) expiration: Arc<ExpirationManager>,
    pub(crate) audit: AuditBroker,
    pub(crate) quotas: Quotas,
    /// Shared with every mount's system view, which generates from it.
    pub(crate) passwords: Arc<PasswordPolicies>,
    /// The barrier, as logical storage.
    pub(crate) storage: Arc<dyn Storage>,
    /// Serialises changes of the mount tables.
    pub(crate) mount_lock: tokio::sync::Mutex<()>,
}

/// The server's core. Cheap to share: `Arc<Core>`.
pub struct Core {
    pub(crate) cfg: CoreConfig,
    pub(crate) barrier: Arc<Barrier>,
    pub(crate) seal: SealManager,
    state: RwLock<Option<Arc<Unsealed>>>,
    /// Serialises seal/unseal transitions.
    transition: tokio::sync::Mutex<()>,
    me: Weak<Core>,
    /// Cluster name and id, persisted in the barrier; known once unsealed.
    cluster: RwLock<ClusterInfo>,
}

/// Identity of this cluster, stored at `core/cluster` inside the barrier.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct ClusterInfo {
    pub(crate) name: String,
    pub(crate) id: String,
}

const SYSTEM_TYPES: &[&str] = &["system", "token"];

impl Core {
    pub async fn new(config: CoreConfig) -> Result<Arc<Core>, CoreError> {
        let barrier = Barrier::new(config.storage.clone());
        let seal = SealManager::new(config.storage.clone(), barrier.clone());
        Ok(Arc::new_cyclic(|me| Core {
            cfg: config,
            barrier,
            seal,
            state: RwLock::new(None),
            transition: tokio::sync::Mutex::new(()),
            me: me.clone(),
            cluster: RwLock::new(ClusterInfo::default()),
        }))
    }

    pub(crate) fn unsealed(&self) -> Result<Arc<Unsealed>, CoreError> {
        self.state.read().clone().ok_or(CoreError::Sealed)
    }

    /// Is `path` a login endpoint of an enabled auth method? Lets the simple
    /// login API say "not enabled" instead of a bare 403.
    pub fn is_login_path(&self, path: &str) -> bool {
        let Ok(st) = self.unsealed() else {
            return false;
        };
        st.router.resolve(path).is_some_and(|(r, rel)| {
            r.entry.read().table == Table::Credential
                && SpecialPaths::matches(&r.special.unauthenticated, &rel)
        })
    }

    pub fn is_sealed(&self) -> bool {
        self.state.read().is_none()
    }

    // ----- lifecycle --------------------------------------------------------

    pub async fn init_status(&self) -> Result<bool, CoreError> {
        Ok(self.seal.config().await?.is_some())
    }

    pub async fn seal_status(&self) -> Result<SealStatus, CoreError> {
        let config = self.seal.config().await?;
        let (progress, nonce) = self.seal.unseal_progress();
        Ok(SealStatus {
            seal_type: "shamir".into(),
            initialized: config.is_some(),
            sealed: self.is_sealed(),
            t: config.as_ref().map(|c| c.secret_threshold).unwrap_or(0),
            n: config.as_ref().map(|c| c.secret_shares).unwrap_or(0),
            progress,
            nonce,
            version: env!("CARGO_PKG_VERSION").into(),
            build_date: String::new(),
            migration: false,
            cluster_name: (!self.is_sealed()).then(|| self.cluster.read().name.clone()),
            cluster_id: (!self.is_sealed()).then(|| self.cluster.read().id.clone()),
            recovery_seal: false,
            storage_type: self.cfg.storage.kind().into(),
        })
    }

    pub async fn init(&self, req: InitRequest) -> Result<InitResponse, CoreError> {
        let _t = self.transition.lock().await;
        if self.seal.config().await?.is_some() {
            return Err(CoreError::AlreadyInitialized);
        }
        if req.pgp_keys.is_some() || req.root_token_pgp_key.is_some() {
            return Err(CoreError::BadRequest(
                "PGP-encrypted key shares are not supported".into(),
            ));
        }
        let shares = self
            .seal
            .initialize(req.secret_shares, req.secret_threshold)
            .await?;
        // Unseal once with the fresh shares to create the root token, then
        // seal again: an initialised server starts sealed, like Vault.
        let threshold = req.secret_threshold.max(1) as usize;
        let root = async {
            for share in shares.iter().take(threshold) {
                self.seal.submit_unseal_key(share).await?;
            }
            self.post_unseal(false).await?;
            let st = self.unsealed()?;
            token_api::create_root_token(&st, None).await
        }
        .await;
        self.pre_seal().await;
        let root = match root {
            Ok(r) => r,
            Err(e) => {
                // The shares never leave this function: keep nothing that
                // only they could open.
                if let Err(undo) = self.seal.abandon_init().await {
                    tracing::error!(error = %undo, "rolling back a failed init");
                }
                return Err(e);
            }
        };
        Ok(InitResponse {
            keys: shares.iter().map(hex::encode).collect(),
            keys_base64: shares.iter().map(|s| B64.encode(s.as_slice())).collect(),
            root_token: root.to_string(),
        })
    }

    pub async fn unseal(&self, req: UnsealRequest) -> Result<SealStatus, CoreError> {
        let _t = self.transition.lock().await;
        if self.seal.config().await?.is_none() {
            return Err(CoreError::NotInitialized);
        }
        if req.reset {
            self.seal.reset_unseal();
        }
        if let Some(key) = req.key.as_deref().filter(|k| !k.is_empty()) {
            if self.is_sealed() {
                let key = parse_key_share(key)?;
                if matches!(
                    self.seal.submit_unseal_key(&key).await?,
                    UnsealOutcome::Unsealed
                ) {
                    if let Err(e) = self.post_unseal(true).await {
                        self.pre_seal().await;
                        return Err(e);
                    }
                }
            }
        } else if !req.reset {
            return Err(CoreError::BadRequest(
                "'key' must be specified in request body as JSON, or 'reset' set to true".into(),
            ));
        }
        drop(_t);
        self.seal_status().await
    }

    /// `sys/seal`.
    pub(crate) async fn seal_now(&self) -> Result<(), CoreError> {
        let _t = self.transition.lock().await;
        self.pre_seal().await;
        Ok(())
    }

    /// Build everything that lives behind the barrier.
    async fn post_unseal(&self, restore_leases: bool) -> Result<(), CoreError> {
        let bs: Arc<dyn Storage> = self.barrier.clone();
        let mut cluster: ClusterInfo = match bs.get_json("core/cluster").await? {
            Some(c) => c,
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                let c = ClusterInfo {
                    name: format!("tresor-cluster-{}", &id[..8]),
                    id,
                };
                bs.put_json("core/cluster", &c).await?;
                c
            }
        };
        if !self.cfg.cluster_name.is_empty() {
            cluster.name = self.cfg.cluster_name.clone();
        }
        *self.cluster.write() = cluster;
        let view = |p: &str| -> Arc<dyn Storage> { Arc::new(View::new(bs.clone(), p)) };
        let policies = PolicyStore::new(view("sys/policy/"));
        policies.setup().await?;
        let tokens = TokenStore::open(view("sys/token/")).await?;
        let audit = AuditBroker::new(view("core/audit/"));
        audit.load().await?;
        let quotas = Quotas::load(view("sys/quotas/")).await?;
        let passwords = Arc::new(PasswordPolicies::load(view("sys/password_policy/")).await?);
        let revoker = Arc::new(Revoker {
            core: self.me.clone(),
        });
        let expiration = ExpirationManager::new(view("sys/expire/"), revoker);
        let st = Arc::new(Unsealed {
            router: Router::default(),
            tokens,
            policies,
            expiration,
            audit,
            quotas,
            passwords,
            storage: bs.clone(),
            mount_lock: tokio::sync::Mutex::new(()),
        });
        for table in [Table::Logical, Table::Credential] {
            let mut entries: Vec<MountEntry> =
                bs.get_json(table.storage_key()).await?.unwrap_or_default();
            let mut changed = false;
            for (path, ty) in builtin_mounts(table) {
                if !entries.iter().any(|e| e.path == *path) {
                    entries.push(new_entry(table, path, ty, builtin_description(ty))?);
                    changed = true;
                }
            }
            if changed {
                bs.put_json(table.storage_key(), &entries).await?;
            }
            for e in entries {
                if let Err(err) = self.mount_route(&st, e.clone()).await {
                    // A mount whose type this build lacks stays in the table
                    // (its data is kept) but serves nothing.
                    tracing::error!(path = %e.path, mount_type = %e.mount_type, error = %err, "cannot mount");
                }
            }
        }
        *self.state.write() = Some(st.clone());
        if restore_leases {
            st.expiration.restore();
        }
        spawn_periodic(Arc::downgrade(&st));
        Ok(())
    }

    async fn pre_seal(&self) {
        let st = self.state.write().take();
        if let Some(st) = st {
            st.expiration.stop();
            for r in st.router.all() {
                if let Handler::Backend(b) = &r.handler {
                    if let Err(e) = b.cleanup(&*r.storage).await {
                        tracing::warn!(path = %r.entry().path, error = %e, "backend cleanup failed");
                    }
                }
            }
            st.audit.clear();
        }
        self.seal.seal();
    }

    /// Create the live route of a mount entry (backend built and initialised).
    pub(crate) async fn mount_route(
        &self,
        st: &Unsealed,
        entry: MountEntry,
    ) -> Result<Arc<Route>, CoreError> {
        let storage: Arc<dyn Storage> =
            Arc::new(View::new(st.storage.clone(), entry.storage_prefix()));
        let system = Arc::new(MountSystemView {
            config: RwLock::new(entry.config.clone()),
            server_default: self.cfg.default_lease_ttl,
            server_max: self.cfg.max_lease_ttl,
            passwords: st.passwords.clone(),
        });
        let (handler, special) = match entry.mount_type.as_str() {
            "system" => (
                Handler::System,
                SpecialPaths {
                    unauthenticated: vec!["wrapping/lookup".into()],
                    root: Vec::new(),
                },
            ),
            "token" => (Handler::Token, SpecialPaths::default()),
            ty => {
                // Auth methods are registered as `auth/<type>`: `aws` is both
                // an auth method and a secrets engine.
                let key = match entry.table {
                    Table::Logical => ty.to_string(),
                    Table::Credential => format!("auth/{ty}"),
                };
                let factory = self.cfg.factories.get(&key).ok_or_else(|| {
                    CoreError::BadRequest(format!("plugin not found in the catalog: {ty}"))
                })?;
                let backend = factory(&BackendConfig {
                    backend_type: ty.to_string(),
                    mount_point: entry.path.clone(),
                    options: entry.options.clone(),
                    system: system.clone(),
                })?;
                let expected = match entry.table {
                    Table::Logical => BackendType::Logical,
                    Table::Credential => BackendType::Credential,
                };
                if backend.backend_type() != expected {
                    return Err(CoreError::BadRequest(format!(
                        "{ty} is not a {} backend",
                        if expected == BackendType::Logical {
                            "secrets engine"
                        } else {
                            "auth method"
                        }
                    )));
                }
                backend.initialize(&*storage).await?;
                let special = backend.special_paths();
                (Handler::Backend(backend), special)
            }
        };
        let route = Arc::new(Route {
            entry: RwLock::new(entry),
            handler,
            storage,
            special,
            system,
        });
        st.router.insert(route.clone());
        Ok(route)
    }

    pub async fn dev_setup(
        &self,
        root_token_id: Option<String>,
    ) -> Result<(String, String), CoreError> {
        let init = self
            .init(InitRequest {
                secret_shares: 1,
                secret_threshold: 1,
                ..Default::default()
            })
            .await?;
        let key = init.keys_base64.first().cloned().unwrap_or_default();
        self.unseal(UnsealRequest {
            key: Some(key.clone()),
            ..Default::default()
        })
        .await?;
        let st = self.unsealed()?;
        let root = match root_token_id {
            Some(id) => {
                // Replace the init root token by the requested one.
                if let Some(e) = st.tokens.lookup(&init.root_token).await? {
                    token_api::revoke_tree(&st, &e.hash).await?;
                }
                token_api::create_root_token(&st, Some(id))
                    .await?
                    .to_string()
            }
            None => init.root_token,
        };
        let mut options = BTreeMap::new();
        options.insert("version".to_string(), "2".to_string());
        sys::mount(
            self,
            &st,
            Table::Logical,
            "secret/",
            "kv",
            "key/value secret storage",
            MountConfig::default(),
            options,
            sys::MountFlags::default(),
        )
        .await?;
        Ok((key, root))
    }

    // ----- rekey and generate-root -------------------------------------------

    pub async fn rekey_init(&self, shares: u8, threshold: u8) -> Result<RekeyStatus, CoreError> {
        self.require_unsealed_init().await?;
        self.seal.rekey_init(shares, threshold).await
    }
    pub async fn rekey_status(&self) -> Result<RekeyStatus, CoreError> {
        self.require_unsealed_init().await?;
        Ok(self.seal.rekey_status().await)
    }
    pub async fn rekey_cancel(&self) -> Result<(), CoreError> {
        self.seal.rekey_cancel();
        Ok(())
    }
    pub async fn rekey_update(&self, key: &str, nonce: &str) -> Result<RekeyStatus, CoreError> {
        self.require_unsealed_init().await?;
        let key = parse_key_share(key)?;
        self.seal.rekey_update(&key, nonce).await
    }

    pub async fn generate_root_init(&self) -> Result<GenerateRootStatus, CoreError> {
        self.require_unsealed_init().await?;
        self.seal.generate_root_init().await
    }
    pub async fn generate_root_status(&self) -> Result<GenerateRootStatus, CoreError> {
        self.require_unsealed_init().await?;
        Ok(self.seal.generate_root_status())
    }
    pub async fn generate_root_cancel(&self) -> Result<(), CoreError> {
        self.seal.generate_root_cancel();
        Ok(())
    }
    pub async fn generate_root_update(
        &self,
        key: &str,
        nonce: &str,
    ) -> Result<GenerateRootStatus, CoreError> {
        self.require_unsealed_init().await?;
        let key = parse_key_share(key)?;
        match self.seal.generate_root_update(&key, nonce).await? {
            GenerateRootProgress::InProgress(s) => Ok(s),
            GenerateRootProgress::Complete { otp, mut status } => {
                let st = self.unsealed()?;
                let token = token_api::create_root_token(&st, None).await?;
                status.encoded_token = encode_root_token(&token, &otp)?;
                status.encoded_root_token = status.encoded_token.clone();
                status.complete = true;
                Ok(status)
            }
        }
    }

    async fn require_unsealed_init(&self) -> Result<(), CoreError> {
        if self.seal.config().await?.is_none() {
            return Err(CoreError::NotInitialized);
        }
        self.unsealed().map(|_| ())
    }

    // ----- status ------------------------------------------------------------

    pub async fn health(&self) -> Health {
        let initialized = self
            .seal
            .config()
            .await
            .map(|c| c.is_some())
            .unwrap_or(false);
        Health {
            initialized,
            sealed: self.is_sealed(),
            standby: false,
            performance_standby: false,
            replication_performance_mode: "disabled".into(),
            replication_dr_mode: "disabled".into(),
            server_time_utc: now(),
            version: env!("CARGO_PKG_VERSION").into(),
            cluster_name: Some(self.cluster.read().name.clone()),
            cluster_id: Some(self.cluster.read().id.clone()),
        }
    }

    pub fn leader(&self) -> Leader {
        Leader {
            ha_enabled: false,
            is_self: !self.is_sealed(),
            active_time: String::new(),
            leader_address: String::new(),
            leader_cluster_address: String::new(),
            performance_standby: false,
            performance_standby_last_remote_wal: 0,
        }
    }

    /// SIGHUP: audit devices reopen their files.
    pub fn reopen_audit(&self) {
        if let Ok(st) = self.unsealed() {
            st.audit.reopen();
        }
    }

    /// Graceful shutdown: stop timers; storage flushes on drop.
    pub async fn shutdown(&self) {
        let _t = self.transition.lock().await;
        self.pre_seal().await;
    }

    // ----- the pipeline --------------------------------------------------------

    /// The pipeline every `/v1/` request goes through.
    pub async fn handle(&self, mut req: CoreRequest) -> Result<CoreResponse, CoreError> {
        let st = self.unsealed()?;
        let request_id = {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            uuid::Uuid::new_v4()
                .hyphenated()
                .encode_lower(&mut buf)
                .to_string()
        };
        let mut path = req.path.trim_start_matches('/').to_string();
        if req.operation == Operation::List && !path.is_empty() && !path.ends_with('/') {
            path.push('/');
        }
        let routed = st.router.resolve(&path);
        let unauthenticated = routed
            .as_ref()
            .is_some_and(|(r, rel)| SpecialPaths::matches(&r.special.unauthenticated, rel));
        // Logins are the unauthenticated paths of auth methods.
        let login = unauthenticated
            && routed
                .as_ref()
                .is_some_and(|(r, _)| r.entry.read().table == Table::Credential);
        let role = req.data.get("role").and_then(Value::as_str);
        st.quotas.check(&path, role, req.remote_addr)?;
        if login {
            st.quotas.check_login(req.remote_addr)?;
        }

        // Token.
        let entry = if unauthenticated {
            None
        } else {
            let token = req.token.as_deref().filter(|t| !t.is_empty());
            let entry = match token {
                Some(t) => st.tokens.lookup(t).await?,
                None => None,
            };
            match entry {
                Some(e) if e.allows_addr(req.remote_addr) => Some(e),
                // Vault lists the `listing_visibility=unauth` mounts to
                // anyone; with a token, what it can reach as well.
                None if token.is_none() && path == "sys/internal/ui/mounts" => None,
                _ => {
                    Audit::new(
                        &st.audit,
                        &request_id,
                        &req,
                        &req.data,
                        &path,
                        req.operation,
                        None,
                        "",
                    )
                    .request(Some("permission denied"))
                    .await?;
                    return Err(CoreError::PermissionDenied);
                }
            }
        };

        let mut sreq = Request::new(req.operation, "");
        sreq.id = request_id.clone();
        // Moved, not cloned: the backend request owns them from here on.
        sreq.data = std::mem::take(&mut req.data);
        sreq.remote_addr = req.remote_addr;
        sreq.peer_certificates = std::mem::take(&mut req.peer_certificates);
        if let Some(e) = &entry {
            sreq.client_token_id = Some(e.hash.clone());
            sreq.display_name = e.display_name.clone();
            sreq.entity_id = e.entity_id.clone();
            sreq.policies = e.policies.clone();
        }

        // Create or update? Asked of the backend before the ACL check.
        if let Some((route, rel)) = &routed {
            sreq.path = rel.clone();
            {
                let entry = route.entry.read();
                sreq.mount_point = entry.path.clone();
                if let Some(headers) = &req.headers {
                    sreq.headers =
                        passthrough_headers(&**headers, &entry.config.passthrough_request_headers);
                }
            }
            if req.operation == Operation::Update {
                if let Handler::Backend(b) = &route.handler {
                    if b.existence_check(&sreq, &*route.storage).await? == Some(false) {
                        sreq.operation = Operation::Create;
                    }
                }
            }
        }
        let op = sreq.operation;
        let mount_type = routed
            .as_ref()
            .map(|(r, _)| r.entry.read().mount_type.clone())
            .unwrap_or_default();

        // ACL.
        let mut sudo = false;
        if let Some(e) = &entry {
            let acl = st.policies.acl(&e.policies).await?;
            let decision = acl.allow(op, &path, Some(&sreq.data));
            let needs_sudo = is_sudo_path(&path)
                || routed
                    .as_ref()
                    .is_some_and(|(r, rel)| SpecialPaths::matches(&r.special.root, rel));
            // Any valid token may ask which mount serves a path: clients
            // need it to pick the KV version. The sys backend answers only
            // about mounts the token can reach (Vault's `hasMountAccess`).
            let ui_mounts =
                path == "sys/internal/ui/mounts" || path.starts_with("sys/internal/ui/mounts/");
            // A wrapping token can do one thing: be unwrapped (or looked up,
            // rewrapped). It carries no ACL.
            let allowed = if wrapping::is_wrapping_token(e) {
                wrapping::wrapping_token_allows(&path)
            } else {
                ui_mounts
                    || (decision.allowed
                        && (!needs_sudo || decision.sudo)
                        && wrap_ttl_allowed(
                            req.wrap_ttl,
                            decision.min_wrapping_ttl,
                            decision.max_wrapping_ttl,
                        ))
            };
            if !allowed {
                Audit::new(
                    &st.audit,
                    &request_id,
                    &req,
                    &sreq.data,
                    &path,
                    op,
                    Some(e),
                    &mount_type,
                )
                .request(Some("permission denied"))
                .await?;
                return Err(CoreError::PermissionDenied);
            }
            sudo = decision.sudo;
        }

        let audit = Audit::new(
            &st.audit,
            &request_id,
            &req,
            &sreq.data,
            &path,
            op,
            entry.as_deref(),
            &mount_type,
        );
        audit.request(None).await?;

        let Some((route, _rel)) = routed else {
            let err = Err(CoreError::UnsupportedPath);
            audit.response(&err).await?;
            return err;
        };

        // Spend one use of a limited token.
        let mut used_up = false;
        if let Some(e) = &entry {
            if e.num_uses > 0 {
                used_up = Box::pin(token_api::spend_use(&st, e)).await?;
            }
        }

        let caller = Caller {
            entry: entry.clone(),
            token: req.token.clone().map(Zeroizing::new),
            sudo,
            wrap_ttl: req.wrap_ttl,
        };
        let result = match &route.handler {
            Handler::Backend(b) => b
                .handle(&sreq, &*route.storage)
                .await
                .map(Reply::Resp)
                .map_err(CoreError::from),
            // Boxed: these handlers are large futures; inline, every
            // request's pipeline future would carry (and copy) their size.
            Handler::System => Box::pin(sys::handle(self, &st, &caller, &sreq)).await,
            Handler::Token => Box::pin(token_api::handle(&st, &route, &caller, &sreq)).await,
        };
        let result = match result {
            Ok(reply) => {
                self.finish(&st, &route, &path, &sreq, reply, &request_id)
                    .await
            }
            Err(e) => Err(e),
        };
        // Wrap the answer if asked; the wrapping endpoints wrap (or not) themselves.
        let result = match (result, req.wrap_ttl) {
            (Ok(resp), Some(ttl)) if !path.starts_with("sys/wrapping/") => {
                Box::pin(wrapping::wrap(
                    &st,
                    resp,
                    ttl,
                    path.trim_end_matches('/'),
                    &request_id,
                ))
                .await
            }
            (r, _) => r,
        };

        if login
            && matches!(
                result,
                Err(CoreError::BadRequest(_)
                    | CoreError::PermissionDenied
                    | CoreError::Forbidden(_))
            )
        {
            st.quotas.login_failed(req.remote_addr);
        }
        let audited = audit.response(&result).await;
        if used_up {
            if let Some(e) = &entry {
                if let Err(err) = Box::pin(token_api::revoke_tree(&st, &e.hash)).await {
                    tracing::error!(error = %err, "revoking a used-up token failed");
                }
            }
        }
        audited?;
        // Internal errors are logged where they become a status
        // (tresor-http's error mapping), once.
        result.map(|resp| legacy_top_level(&path, op, resp))
    }

    /// Turn a handler's reply into the answer: register leases, mint
    /// tokens, fill the envelope.
    async fn finish(
        &self,
        st: &Unsealed,
        route: &Route,
        path: &str,
        sreq: &Request,
        reply: Reply,
        request_id: &str,
    ) -> Result<CoreResponse, CoreError> {
        let mount_type = route.entry.read().mount_type.clone();
        let mut env = Envelope {
            request_id: request_id.to_string(),
            mount_type,
            ..Default::default()
        };
        let resp = match reply {
            Reply::Body(b) => return Ok(b),
            Reply::Auth(info) => {
                env.auth = Some(*info);
                return Ok(CoreResponse {
                    status: 200,
                    body: ResponseBody::Envelope(Box::new(env)),
                });
            }
            Reply::Resp(None) => {
                return match sreq.operation {
                    Operation::Read | Operation::List | Operation::Patch => {
                        Err(CoreError::NotFound)
                    }
                    _ => Ok(CoreResponse {
                        status: 204,
                        body: ResponseBody::Empty,
                    }),
                };
            }
            Reply::Resp(Some(r)) => r,
        };
        if let Some(raw) = resp.raw {
            return Ok(CoreResponse {
                status: resp.status.unwrap_or(200),
                body: ResponseBody::Raw {
                    content_type: raw.content_type,
                    body: raw.body,
                },
            });
        }
        env.data = resp.data.map(Value::Object);
        if !resp.warnings.is_empty() {
            env.warnings = Some(resp.warnings);
        }
        if let Some(secret) = resp.secret {
            // Leases and tokens are boxed: most answers carry neither, and
            // inline their futures would size every request's.
            let lease = Box::pin(self.register_secret(st, route, path, sreq, secret)).await?;
            env.lease_id = lease.lease_id;
            env.lease_duration = (lease.expire_time - lease.issue_time).max(0) as u64;
            env.renewable = lease.renewable;
        }
        if let Some(auth) = resp.auth {
            let info = Box::pin(token_api::create_from_auth(
                st,
                route,
                path,
                auth,
                sreq.remote_addr,
            ))
            .await?;
            env.auth = Some(info);
        }
        // Like Vault, an answer that only carries warnings is still a 200
        // with a body: the warnings are the point (`sys/leases/tidy`).
        let has_body = env.data.is_some()
            || env.auth.is_some()
            || !env.lease_id.is_empty()
            || env.warnings.is_some();
        let status = resp.status.unwrap_or(if has_body { 200 } else { 204 });
        if status == 204 {
            return Ok(CoreResponse {
                status,
                body: ResponseBody::Empty,
            });
        }
        Ok(CoreResponse {
            status,
            body: ResponseBody::Envelope(Box::new(env)),
        })
    }

    async fn register_secret(
        &self,
        st: &Unsealed,
        route: &Route,
        path: &str,
        sreq: &Request,
        mut secret: Secret,
    ) -> Result<LeaseEntry, CoreError> {
        let sys_max = route.system.max_lease_ttl();
        let max = if secret.lease.max_ttl.is_zero() {
            sys_max
        } else {
            secret.lease.max_ttl.min(sys_max)
        };
        let ttl = if secret.lease.ttl.is_zero() {
            route.system.default_lease_ttl()
        } else {
            secret.lease.ttl
        }
        .min(max);
        let issue = now();
        secret.lease.issue_time = issue;
        secret.lease.ttl = ttl;
        secret.lease.max_ttl = max;
        let lease = LeaseEntry {
            lease_id: format!("{}/{}", path.trim_end_matches('/'), uuid::Uuid::new_v4()),
            path: path.to_string(),
            token_hash: sreq.client_token_id.clone().unwrap_or_default(),
            renewable: secret.lease.renewable,
            secret: Some(secret),
            is_token: false,
            issue_time: issue,
            expire_time: issue + ttl.as_secs() as i64,
            max_expire_time: issue + max.as_secs() as i64,
            last_renewal_time: 0,
            revoke_attempts: 0,
            last_error: String::new(),
        };
        st.expiration.register(lease.clone()).await?;
        Ok(lease)
    }
}

/// Calls the owner of a lease back when it must be revoked or renewed.
struct Revoker {
    core: Weak<Core>,
}

impl Revoker {
    fn state(&self) -> Result<(Arc<Core>, Arc<Unsealed>), CoreError> {
        let core = self.core.upgrade().ok_or(CoreError::Sealed)?;
        let st = core.unsealed()?;
        Ok((core, st))
    }

    fn backend_request(
        st: &Unsealed,
        lease: &LeaseEntry,
        op: Operation,
    ) -> Result<(Arc<Route>, Request), CoreError> {
        let (route, rel) = st.router.resolve(&lease.path).ok_or_else(|| {
            CoreError::BadRequest(format!("no mount serves lease path {:?}", lease.path))
        })?;
        let mut req = Request::new(op, rel);
        req.id = uuid::Uuid::new_v4().to_string();
        req.mount_point = route.entry.read().path.clone();
        req.secret = lease.secret.clone();
        Ok((route, req))
    }
}

#[async_trait]
impl LeaseRevoker for Revoker {
    async fn revoke(&self, lease: &LeaseEntry) -> Result<(), CoreError> {
        let (_core, st) = self.state()?;
        if lease.is_token {
            let hash = lease.lease_id.rsplit('/').next().unwrap_or_default();
            return token_api::revoke_tree(&st, hash).await;
        }
        let (route, req) = Self::backend_request(&st, lease, Operation::Revoke)?;
        match &route.handler {
            Handler::Backend(b) => {
                b.handle(&req, &*route.storage).await?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn renew(&self, lease: &LeaseEntry, increment: Duration) -> Result<Duration, CoreError> {
        let (_core, st) = self.state()?;
        let (route, mut req) = Self::backend_request(&st, lease, Operation::Renew)?;
        if let Some(s) = req.secret.as_mut() {
            s.lease.increment = increment;
        }
        let Handler::Backend(b) = &route.handler else {
            return Err(CoreError::BadRequest("lease is not renewable".into()));
        };
        match b.handle(&req, &*route.storage).await {
            Ok(Some(Response {
                secret: Some(s), ..
            })) => Ok(if s.lease.ttl.is_zero() {
                if increment.is_zero() {
                    route.system.default_lease_ttl()
                } else {
                    increment
                }
            } else {
                s.lease.ttl
            }),
            Ok(_)
            | Err(BackendError::UnsupportedOperation)
            | Err(BackendError::UnsupportedPath) => {
                Err(CoreError::BadRequest("lease is not renewable".into()))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// How often backends get their `periodic` call (tidy, rotation). Short,
/// like Vault's rollback tick: engines accept rotation periods of seconds.
const PERIODIC_TICK: Duration = Duration::from_secs(5);

/// Every [`PERIODIC_TICK`], each backend that is due (its
/// `periodic_interval` has passed) gets its `periodic` call, on a
/// task of its own so a slow one (a database rotation) delays no other. A
/// mount whose previous run is still going is skipped for that tick, as
/// Vault's rollback manager skips an in-flight mount: a run never overlaps
/// itself. Ends by itself when the state it serves is gone (sealed).
fn spawn_periodic(state: Weak<Unsealed>) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIODIC_TICK);
        // After a stall, wait a full period rather than firing the missed
        // ticks back to back.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // By mount UUID (stable across remounts): when its last run started
        // (each backend says how often it wants to run; a full AppRole tidy
        // every tick would be waste), and that run, to skip the mount while
        // it is in flight. Rebuilt each tick from the live mounts, so an
        // unmounted backend leaves nothing behind.
        type Runs =
            std::collections::HashMap<String, (tokio::time::Instant, tokio::task::JoinHandle<()>)>;
        let mut runs = Runs::new();
        loop {
            tick.tick().await;
            // Hold the state only while starting runs, not across the wait.
            let Some(st) = state.upgrade() else { break };
            let mut next = Runs::new();
            for r in st.router.all() {
                let Handler::Backend(b) = &r.handler else {
                    continue;
                };
                let uuid = r.entry.read().uuid.clone();
                let now = tokio::time::Instant::now();
                if let Some((started, handle)) = runs.remove(&uuid) {
                    // Tolerate a little tick jitter so a 5 s backend runs every tick.
                    let due = now.duration_since(started) + Duration::from_millis(500)
                        >= b.periodic_interval();
                    if !due || !handle.is_finished() {
                        next.insert(uuid, (started, handle));
                        continue;
                    }
                }
                let handle = tokio::spawn(async move {
                    if let Handler::Backend(b) = &r.handler {
                        if let Err(e) = b.periodic(&*r.storage).await {
                            tracing::warn!(path = %r.entry().path, error = %e, "periodic function failed");
                        }
                    }
                });
                next.insert(uuid, (now, handle));
            }
            runs = next;
        }
    });
}

/// Vault repeats `data` at the top level of a few old `sys/` answers
/// (`sys/mounts`, `sys/auth`, `sys/policy`, `sys/policy/<name>`), and
/// clients written against them read the top-level keys. Envelope keys win
/// over a data key of the same name; wrapped answers are left alone.
/// The headers named in `allowed` (any case), names lower-cased, repeated
/// values joined with ", ". The headers that carry the client token
/// (`X-Vault-Token`, `Authorization: Bearer`) are never handed over.
fn passthrough_headers(
    headers: &dyn RequestHeaders,
    allowed: &[String],
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for name in allowed {
        let name = name.to_ascii_lowercase();
        if name == "x-vault-token" || name == "authorization" {
            continue;
        }
        let values = headers.values(&name);
        if !values.is_empty() {
            out.insert(name, values.join(", "));
        }
    }
    out
}

fn legacy_top_level(path: &str, op: Operation, resp: CoreResponse) -> CoreResponse {
    let trimmed = path.trim_end_matches('/');
    let legacy = match op {
        Operation::Read => {
            matches!(trimmed, "sys/mounts" | "sys/auth" | "sys/policy")
                || trimmed
                    .strip_prefix("sys/policy/")
                    .is_some_and(|name| !name.is_empty())
        }
        Operation::List => trimmed == "sys/policy",
        _ => false,
    };
    if !legacy {
        return resp;
    }
    let ResponseBody::Envelope(env) = &resp.body else {
        return resp;
    };
    let (Some(Value::Object(data)), None) = (&env.data, &env.wrap_info) else {
        return resp;
    };
    let mut top = match serde_json::to_value(env.as_ref()) {
        Ok(Value::Object(m)) => m,
        _ => return resp,
    };
    for (k, v) in data {
        if !top.contains_key(k) {
            top.insert(k.clone(), v.clone());
        }
    }
    CoreResponse {
        status: resp.status,
        body: ResponseBody::Json(Value::Object(top)),
    }
}

/// Does a requested wrap TTL satisfy the policy's bounds? A minimum means
/// the answer must be wrapped.
fn wrap_ttl_allowed(ttl: Option<Duration>, min: Option<Duration>, max: Option<Duration>) -> bool {
    match ttl {
        None => min.is_none(),
        Some(t) => min.is_none_or(|m| t >= m) && max.is_none_or(|m| t <= m),
    }
}

fn builtin_mounts(table: Table) -> &'static [(&'static str, &'static str)] {
    match table {
        Table::Logical => &[("sys/", "system"), ("cubbyhole/", "cubbyhole")],
        Table::Credential => &[("auth/token/", "token")],
    }
}

fn builtin_description(ty: &str) -> &'static str {
    match ty {
        "system" => "system endpoints used for control, policy and debugging",
        "cubbyhole" => "per-token private secret storage",
        "token" => "token based credentials",
        _ => "",
    }
}

/// A new mount entry with fresh UUID and accessor.
pub(crate) fn new_entry(
    table: Table,
    path: &str,
    ty: &str,
    description: &str,
) -> Result<MountEntry, CoreError> {
    let prefix = ty;
    let accessor = format!(
        "{}_{}",
        if table == Table::Credential {
            format!("auth_{prefix}")
        } else {
            prefix.to_string()
        },
        &random_base62(8)?.to_lowercase()
    );
    Ok(MountEntry {
        path: path.to_string(),
        table,
        mount_type: ty.to_string(),
        description: description.to_string(),
        uuid: uuid::Uuid::new_v4().to_string(),
        accessor,
        config: MountConfig::default(),
        options: BTreeMap::new(),
        local: false,
        seal_wrap: false,
    })
}

pub(crate) fn is_system_type(ty: &str) -> bool {
    SYSTEM_TYPES.contains(&ty)
}

#[cfg(test)]
mod tests {
    use super::{passthrough_headers, RequestHeaders};

    #[derive(Debug)]
    struct Pairs(Vec<(&'static str, &'static str)>);

    impl RequestHeaders for Pairs {
        fn values(&self, name: &str) -> Vec<String> {
            self.0
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_string())
                .collect()
        }
    }

    #[test]
    fn only_allowed_headers_pass_and_never_the_token() {
        let h = Pairs(vec![
            ("x-custom", "1"),
            ("X-Custom", "2"),
            ("x-other", "no"),
            ("x-vault-token", "secret"),
            ("authorization", "Bearer secret"),
        ]);
        let allowed = [
            "X-Custom".to_string(),
            "X-Vault-Token".to_string(),
            "Authorization".to_string(),
        ];
        let got = passthrough_headers(&h, &allowed);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got.get("x-custom").map(String::as_str), Some("1, 2"));
        assert!(passthrough_headers(&h, &[]).is_empty());
    }
}
