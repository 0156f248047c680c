//! The JWT/OIDC auth method, on Vault's paths (mount types `jwt` and
//! `oidc` are the same backend):
//!
//! | path | operations |
//! | --- | --- |
//! | `config` | read, write (replaces the whole configuration) |
//! | `role/<name>` | read, write (merges into the stored role), delete |
//! | `role/` | list |
//! | `login` | write `{role, jwt}`, no token needed |
//! | `oidc/auth_url` | write `{role, redirect_uri, client_nonce}`, no token needed |
//! | `oidc/callback` | read or write `{state, code, client_nonce}`, no token needed |
//!
//! A JWT is accepted when its signature verifies with a configured key
//! (static PEMs, a JWKS URL, or the JWKS an OIDC provider publishes), its
//! `alg` is an allowed asymmetric algorithm, its times pass with the role's
//! leeways, and its issuer, audience, subject and bound claims match. The
//! user claim becomes the alias and display name; `claim_mappings` fill the
//! token's metadata. The core mints the token from the returned `Auth`.
//!
//! The authorization-code flow uses PKCE (S256) and a nonce; pending states
//! live in memory for five minutes and are single-use, as in Vault.
//!
//! Storage layout: `config`; `role/<name>`.

mod claims;
mod config;
mod keys;
mod oidc;
mod role;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use claims::glob_match;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};
use tresor_sdk::paths::pattern;
use tresor_sdk::{
    Auth, Backend, BackendConfig, BackendError, BackendType, Operation, PathTable, Request,
    Response, SpecialPaths, Storage, StorageExt,
};

use crate::auth::token_fields::ip_allowed;
use config::{Config, KeySource};
use keys::KeyCache;
use role::{Role, RoleType};

const CONFIG_KEY: &str = "config";
const ROLE_PREFIX: &str = "role/";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Config,
    RoleList,
    Role,
    Login,
    AuthUrl,
    Callback,
}

/// The JWT/OIDC auth backend of one mount.
pub struct JwtBackend {
    routes: PathTable<Route>,
    keys: KeyCache,
    states: oidc::StateStore,
}

impl Default for JwtBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl JwtBackend {
    pub fn new() -> Self {
        Self::with_jwks_refresh_interval(keys::DEFAULT_REFRESH_INTERVAL)
    }

    /// A backend that refetches a key set for an unknown `kid` at most once
    /// per `interval` (tests shorten it).
    pub fn with_jwks_refresh_interval(interval: Duration) -> Self {
        let name = format!("(?P<name>{})", pattern::NAME);
        JwtBackend {
            routes: PathTable::new(&[
                ("config", Route::Config),
                ("role/?", Route::RoleList),
                (&format!("role/{name}"), Route::Role),
                ("login", Route::Login),
                ("oidc/auth_url", Route::AuthUrl),
                ("oidc/callback", Route::Callback),
            ]),
            keys: KeyCache::new(interval),
            states: oidc::StateStore::default(),
        }
    }
}

/// `jwt` and `oidc` mounts.
pub fn factory(_conf: &BackendConfig) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(Arc::new(JwtBackend::new()))
}

fn role_key(name: &str) -> String {
    format!("{ROLE_PREFIX}{name}")
}

async fn load_config(storage: &dyn Storage) -> Result<Config, BackendError> {
    storage
        .get_json(CONFIG_KEY)
        .await?
        .ok_or_else(|| BackendError::bad_request("could not load configuration"))
}

async fn load_role(storage: &dyn Storage, name: &str) -> Result<Option<Role>, BackendError> {
    Ok(storage.get_json(&role_key(name)).await?)
}

#[derive(Debug, Deserialize)]
struct LoginInput {
    #[serde(default)]
    role: String,
    #[serde(default)]
    jwt: String,
}

/// The role a login names, or the mount's `default_role`.
async fn login_role(
    storage: &dyn Storage,
    cfg: &Config,
    requested: &str,
) -> Result<(String, Role), BackendError> {
    let name = if requested.is_empty() {
        cfg.default_role.clone()
    } else {
        requested.to_string()
    };
    if name.is_empty() {
        return Err(BackendError::bad_request(
            "missing role: no role given and no default_role configured",
        ));
    }
    let role = load_role(storage, &name)
        .await?
        .ok_or_else(|| BackendError::bad_request(format!("role {name:?} could not be found")))?;
    Ok((name, role))
}

/// The checks every accepted token passes after its signature, and the
/// auth it earns.
fn authorize(
    claims: &Value,
    role: &Role,
    role_name: &str,
    issuer: &str,
    cfg: &Config,
) -> Result<Auth, BackendError> {
    let now = chrono::Utc::now().timestamp();
    claims::check_times(claims, role, now)?;
    claims::check_issuer(claims, issuer)?;
    claims::check_issuer(claims, &cfg.bound_issuer)?;
    claims::check_bindings(claims, role)?;
    let (user, metadata) = claims::identity(claims, role, role_name)?;
    let mut auth = role.token.to_auth(&user, &user, metadata);
    auth.internal_data = json!({ "role": role_name });
    Ok(auth)
}

impl JwtBackend {
    async fn login(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: LoginInput = req.parse()?;
        if input.jwt.is_empty() {
            return Err(BackendError::bad_request("missing jwt"));
        }
        let cfg = load_config(storage).await?;
        let (name, role) = login_role(storage, &cfg, &input.role).await?;
        if role.role_type != RoleType::Jwt {
            return Err(BackendError::bad_request(
                "role with oidc role_type is not allowed",
            ));
        }
        if !ip_allowed(&role.token.token_bound_cidrs, req.remote_addr) {
            return Err(BackendError::PermissionDenied);
        }
        let claims = self.keys.verify(&cfg, &input.jwt).await?;
        let issuer = match cfg.key_source() {
            KeySource::Discovery => self.keys.discovery(&cfg).await?.issuer.clone(),
            _ => String::new(),
        };
        claims::check_jwt_audience(&claims, &role)?;
        let auth = authorize(&claims, &role, &name, &issuer, &cfg)?;
        Ok(Some(Response {
            auth: Some(auth),
            ..Default::default()
        }))
    }

    /// A token from this mount renews only while its role exists and still
    /// grants the same policies.
    async fn renew(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let issued = req
            .auth
            .as_ref()
            .ok_or_else(|| BackendError::bad_request("renewal request carries no auth"))?;
        let name = issued
            .internal_data
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let role = load_role(storage, name).await?.ok_or_else(|| {
            BackendError::bad_request(format!("role {name:?} no longer exists, not renewing"))
        })?;
        if !role.token.policies_match(issued) {
            return Err(BackendError::bad_request(
                "policies have changed, not renewing",
            ));
        }
        Ok(Some(Response {
            auth: Some(role.token.renew_auth(issued)),
            ..Default::default()
        }))
    }

    async fn config_write(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let cfg = Config::from_request(req)?;
        self.keys.invalidate().await;
        // Fail now rather than at the first login, as Vault does.
        match cfg.key_source() {
            KeySource::Discovery => {
                self.keys.discovery(&cfg).await.map_err(|e| {
                    BackendError::bad_request(format!("error checking oidc discovery URL: {e}"))
                })?;
            }
            KeySource::JwksUrl => {
                keys::http_client(&cfg.jwks_ca_pem, "jwks_ca_pem")?;
            }
            _ => {}
        }
        storage.put_json(CONFIG_KEY, &cfg).await?;
        Ok(None)
    }

    async fn role_write(
        &self,
        name: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let mut role = load_role(storage, name).await?.unwrap_or_default();
        role.merge_update(req)?;
        storage.put_json(&role_key(name), &role).await?;
        Ok(None)
    }
}

#[async_trait]
impl Backend for JwtBackend {
    fn backend_type(&self) -> BackendType {
        BackendType::Credential
    }

    fn special_paths(&self) -> SpecialPaths {
        SpecialPaths {
            unauthenticated: vec![
                "login".into(),
                "oidc/auth_url".into(),
                "oidc/callback".into(),
            ],
            root: Vec::new(),
        }
    }

    async fn existence_check(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<bool>, BackendError> {
        match self.routes.route(&req.path) {
            Some((Route::Role, c)) => Ok(Some(load_role(storage, c.get("name")).await?.is_some())),
            _ => Ok(None),
        }
    }

    async fn handle(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        if req.operation == Operation::Renew {
            return self.renew(req, storage).await;
        }
        let (route, caps) = self
            .routes
            .route(&req.path)
            .ok_or(BackendError::UnsupportedPath)?;
        let write = matches!(req.operation, Operation::Create | Operation::Update);
        match (route, req.operation) {
            (Route::Config, Operation::Read) => Ok(storage
                .get_json::<Config>(CONFIG_KEY)
                .await?
                .map(|c| Response::data(c.to_data()))),
            (Route::Config, _) if write => self.config_write(req, storage).await,
            (Route::RoleList, Operation::List) => {
                let keys: Vec<String> = storage
                    .list(ROLE_PREFIX)
                    .await?
                    .into_iter()
                    .filter(|k| !k.ends_with('/'))
                    .collect();
                Ok((!keys.is_empty()).then(|| Response::list(keys)))
            }
            (Route::Role, Operation::Read) => Ok(load_role(storage, caps.get("name"))
                .await?
                .map(|r| Response::data(r.to_data()))),
            (Route::Role, _) if write => self.role_write(caps.get("name"), req, storage).await,
            (Route::Role, Operation::Delete) => {
                storage.delete(&role_key(caps.get("name"))).await?;
                Ok(None)
            }
            (Route::Login, _) if write => self.login(req, storage).await,
            (Route::AuthUrl, _) if write => oidc::auth_url(self, req, storage).await,
            (Route::Callback, Operation::Read) => oidc::callback(self, req, storage).await,
            (Route::Callback, _) if write => oidc::callback(self, req, storage).await,
            _ => Err(BackendError::UnsupportedOperation),
        }
    }
}
