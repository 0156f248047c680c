//! The AWS auth method, IAM flavour: a client proves who it is in AWS by
//! signing an `sts:GetCallerIdentity` request that the server replays to
//! STS. Vault's paths and fields, so `vault login -method=aws` and hvac's
//! `auth.aws.iam_login` work unchanged:
//!
//! | path | operations |
//! | --- | --- |
//! | `config/client` | read, write, delete (`sts_endpoint`, `sts_region`, `iam_endpoint`, `iam_server_id_header_value`, `access_key`, `secret_key`) |
//! | `role/<name>` | read, write, delete (`auth_type=iam`, `bound_iam_principal_arn`, `resolve_aws_unique_ids`, `token_*`) |
//! | `role`, `roles` | list |
//! | `login` | write, unauthenticated (`role`, `iam_http_request_method`, `iam_request_url`, `iam_request_body`, `iam_request_headers`) |
//!
//! The EC2 (instance identity document) flavour is not implemented.
//! Storage: `config/client`, `role/<name>`.

mod arn;
mod iam_request;
mod sts;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tresor_sdk::paths::pattern;
use tresor_sdk::{
    fields, Backend, BackendConfig, BackendError, BackendType, Map, Operation, PathTable, Request,
    Response, SpecialPaths, Storage, StorageExt,
};

use crate::auth::token_fields::{ip_allowed, with_legacy_names, TokenFields, LEGACY_TTL_NAMES};
use arn::{glob_match, Principal};
use iam_request::{RawIamLogin, DEFAULT_STS_ENDPOINT};
use sts::{AwsCreds, DEFAULT_IAM_ENDPOINT};

const CONFIG_KEY: &str = "config/client";
const ROLE_PREFIX: &str = "role/";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    ConfigClient,
    Role,
    RoleList,
    Login,
}

/// `aws` auth method.
pub struct AwsAuth {
    routes: PathTable<Route>,
}

pub fn factory(_conf: &BackendConfig) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(Arc::new(AwsAuth::new()))
}

impl Default for AwsAuth {
    fn default() -> Self {
        Self::new()
    }
}

impl AwsAuth {
    pub fn new() -> Self {
        let role = format!("role/(?P<name>{})", pattern::NAME);
        AwsAuth {
            routes: PathTable::new(&[
                ("config/client", Route::ConfigClient),
                ("roles?/?", Route::RoleList),
                (role.as_str(), Route::Role),
                ("login", Route::Login),
            ]),
        }
    }
}

// ----- stored types -------------------------------------------------------

#[derive(Clone, Default, Serialize, Deserialize)]
struct ClientConfig {
    #[serde(default)]
    access_key: String,
    #[serde(default)]
    secret_key: String,
    #[serde(default)]
    sts_endpoint: String,
    #[serde(default)]
    sts_region: String,
    #[serde(default)]
    iam_endpoint: String,
    #[serde(default)]
    iam_server_id_header_value: String,
}

impl ClientConfig {
    fn sts_url(&self) -> Result<reqwest::Url, BackendError> {
        endpoint_url("sts_endpoint", &self.sts_endpoint, DEFAULT_STS_ENDPOINT)
    }

    fn iam_url(&self) -> Result<reqwest::Url, BackendError> {
        endpoint_url("iam_endpoint", &self.iam_endpoint, DEFAULT_IAM_ENDPOINT)
    }

    /// The server's own credentials: configured, else the usual AWS
    /// environment variables (Vault would walk the whole default chain).
    fn creds(&self) -> Option<AwsCreds> {
        if !self.access_key.is_empty() && !self.secret_key.is_empty() {
            return Some(AwsCreds {
                access_key: self.access_key.clone(),
                secret_key: self.secret_key.clone(),
                session_token: None,
            });
        }
        let ak = std::env::var("AWS_ACCESS_KEY_ID")
            .ok()
            .filter(|s| !s.is_empty())?;
        let sk = std::env::var("AWS_SECRET_ACCESS_KEY")
            .ok()
            .filter(|s| !s.is_empty())?;
        Some(AwsCreds {
            access_key: ak,
            secret_key: sk,
            session_token: std::env::var("AWS_SESSION_TOKEN")
                .ok()
                .filter(|s| !s.is_empty()),
        })
    }
}

fn endpoint_url(field: &str, v: &str, default: &str) -> Result<reqwest::Url, BackendError> {
    let v = if v.is_empty() { default } else { v };
    let u = reqwest::Url::parse(v)
        .map_err(|_| BackendError::bad_request(format!("{field}: {v:?} is not a URL")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(BackendError::bad_request(format!(
            "{field}: {v:?} must be an http(s) URL with a host"
        )));
    }
    Ok(u)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Role {
    role_id: String,
    auth_type: String,
    #[serde(default)]
    bound_iam_principal_arn: Vec<String>,
    /// Unique IDs of the non-glob ARNs, when resolved at write time.
    #[serde(default)]
    bound_iam_principal_id: Vec<String>,
    resolve_aws_unique_ids: bool,
    #[serde(default)]
    token: TokenFields,
}

impl Role {
    /// Does the caller belong to this role? By unique ID for resolved
    /// ARNs (a deleted and recreated user with the same name does not),
    /// by ARN glob or equality otherwise.
    fn binds(&self, principal: &Principal, unique_id: &str) -> bool {
        if self.bound_iam_principal_id.iter().any(|id| id == unique_id) {
            return true;
        }
        let canonical = principal.canonical_arn();
        let full = principal.full_arn();
        self.bound_iam_principal_arn.iter().any(|b| {
            let glob = b.contains('*');
            if !glob && self.resolve_aws_unique_ids {
                return false;
            }
            glob_match(b, &canonical) || glob_match(b, &full)
        })
    }

    fn to_data(&self) -> Map {
        let mut m = Map::new();
        m.insert("auth_type".into(), json!(self.auth_type));
        m.insert("role_id".into(), json!(self.role_id));
        m.insert(
            "bound_iam_principal_arn".into(),
            json!(self.bound_iam_principal_arn),
        );
        m.insert(
            "bound_iam_principal_id".into(),
            json!(self.bound_iam_principal_id),
        );
        m.insert(
            "resolve_aws_unique_ids".into(),
            json!(self.resolve_aws_unique_ids),
        );
        m.insert("inferred_entity_type".into(), json!(""));
        m.insert("inferred_aws_region".into(), json!(""));
        for f in [
            "bound_ami_id",
            "bound_account_id",
            "bound_region",
            "bound_vpc_id",
            "bound_subnet_id",
            "bound_iam_role_arn",
            "bound_iam_instance_profile_arn",
            "bound_ec2_instance_id",
        ] {
            m.insert(f.into(), json!([]));
        }
        self.token.populate(&mut m);
        m
    }
}

// ----- request types ------------------------------------------------------

#[derive(Deserialize)]
struct ConfigInput {
    access_key: Option<String>,
    secret_key: Option<String>,
    sts_endpoint: Option<String>,
    sts_region: Option<String>,
    iam_endpoint: Option<String>,
    iam_server_id_header_value: Option<String>,
    endpoint: Option<String>,
}

fn opt_bool_rua<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    fields::opt_boolean(d)
        .map_err(|e: D::Error| serde::de::Error::custom(format!("resolve_aws_unique_ids: {e}")))
}
fn opt_list_arn<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    fields::opt_string_list(d)
        .map_err(|e: D::Error| serde::de::Error::custom(format!("bound_iam_principal_arn: {e}")))
}

#[derive(Deserialize)]
struct RoleInput {
    auth_type: Option<String>,
    #[serde(default, deserialize_with = "opt_list_arn")]
    bound_iam_principal_arn: Option<Vec<String>>,
    #[serde(default, deserialize_with = "opt_bool_rua")]
    resolve_aws_unique_ids: Option<bool>,
    inferred_entity_type: Option<String>,
}

/// EC2-only role fields: refused rather than silently ignored, since a
/// binding that is not enforced is worse than none.
const EC2_FIELDS: &[&str] = &[
    "bound_ami_id",
    "bound_account_id",
    "bound_region",
    "bound_vpc_id",
    "bound_subnet_id",
    "bound_iam_role_arn",
    "bound_iam_instance_profile_arn",
    "bound_ec2_instance_id",
    "role_tag",
    "allow_instance_migration",
    "disallow_reauthentication",
];

#[derive(Deserialize)]
struct LoginInput {
    #[serde(default)]
    role: String,
    iam_http_request_method: Option<String>,
    #[serde(default)]
    iam_request_url: String,
    #[serde(default)]
    iam_request_body: String,
    #[serde(default)]
    iam_request_headers: Value,
    #[serde(default)]
    pkcs7: Option<Value>,
    #[serde(default)]
    identity: Option<Value>,
}

/// What a login remembers for renewal.
#[derive(Debug, Serialize, Deserialize)]
struct Internal {
    role_name: String,
    role_id: String,
    canonical_arn: String,
    client_arn: String,
    client_user_id: String,
}

// ----- handlers -------------------------------------------------------------

async fn load_config(storage: &dyn Storage) -> Result<ClientConfig, BackendError> {
    Ok(storage.get_json(CONFIG_KEY).await?.unwrap_or_default())
}

async fn load_role(storage: &dyn Storage, name: &str) -> Result<Option<Role>, BackendError> {
    Ok(storage
        .get_json(&format!("{ROLE_PREFIX}{}", name.to_lowercase()))
        .await?)
}

async fn config_client(
    req: &Request,
    storage: &dyn Storage,
) -> Result<Option<Response>, BackendError> {
    match req.operation {
        Operation::Read => {
            let Some(c) = storage.get_json::<ClientConfig>(CONFIG_KEY).await? else {
                return Ok(None);
            };
            // The secret key is write-only, as in Vault.
            Ok(Some(Response::data(
                json!({
                    "access_key": c.access_key,
                    "sts_endpoint": c.sts_endpoint,
                    "sts_region": c.sts_region,
                    "iam_endpoint": c.iam_endpoint,
                    "endpoint": "",
                    "iam_server_id_header_value": c.iam_server_id_header_value,
                    "max_retries": -1,
                    "use_sts_region_from_client": false,
                    "allowed_sts_header_values": [],
                })
                .as_object()
                .cloned()
                .unwrap_or_default(),
            )))
        }
        Operation::Create | Operation::Update => {
            let i: ConfigInput = req.parse()?;
            if i.endpoint.as_deref().is_some_and(|e| !e.is_empty()) {
                return Err(BackendError::bad_request(
                    "endpoint: EC2 API endpoints are not supported (IAM auth only)",
                ));
            }
            let mut c = load_config(storage).await?;
            if let Some(v) = i.access_key {
                c.access_key = v.trim().to_string();
            }
            if let Some(v) = i.secret_key {
                c.secret_key = v.trim().to_string();
            }
            if let Some(v) = i.sts_endpoint {
                c.sts_endpoint = v.trim().to_string();
            }
            if let Some(v) = i.sts_region {
                c.sts_region = v.trim().to_string();
            }
            if let Some(v) = i.iam_endpoint {
                c.iam_endpoint = v.trim().to_string();
            }
            if let Some(v) = i.iam_server_id_header_value {
                c.iam_server_id_header_value = v;
            }
            if c.access_key.is_empty() != c.secret_key.is_empty() {
                return Err(BackendError::bad_request(
                    "access_key and secret_key must be given together",
                ));
            }
            if !c.sts_endpoint.is_empty() && c.sts_region.is_empty() {
                return Err(BackendError::bad_request(
                    "sts_region: required when sts_endpoint is set",
                ));
            }
            c.sts_url()?;
            c.iam_url()?;
            storage.put_json(CONFIG_KEY, &c).await?;
            Ok(None)
        }
        Operation::Delete => {
            storage.delete(CONFIG_KEY).await?;
            Ok(None)
        }
        _ => Err(BackendError::UnsupportedOperation),
    }
}

async fn role_write(
    req: &Request,
    storage: &dyn Storage,
    name: &str,
) -> Result<Option<Response>, BackendError> {
    for f in EC2_FIELDS {
        if req.data.contains_key(*f) {
            return Err(BackendError::bad_request(format!(
                "{f}: EC2 bindings are not supported; this method implements auth_type=iam only"
            )));
        }
    }
    let i: RoleInput = req.parse()?;
    let existing = load_role(storage, name).await?;
    let mut role = match existing.clone() {
        Some(r) => r,
        None => Role {
            role_id: uuid::Uuid::new_v4().to_string(),
            auth_type: "iam".into(),
            bound_iam_principal_arn: Vec::new(),
            bound_iam_principal_id: Vec::new(),
            resolve_aws_unique_ids: true,
            token: TokenFields::default(),
        },
    };
    if let Some(t) = i.auth_type {
        let t = t.trim().to_ascii_lowercase();
        if t != "iam" && !(t.is_empty() && existing.is_none()) {
            return Err(BackendError::bad_request(format!(
                "auth_type: {t:?} is not supported (only \"iam\")"
            )));
        }
    }
    if i.inferred_entity_type
        .as_deref()
        .is_some_and(|s| !s.is_empty())
    {
        return Err(BackendError::bad_request(
            "inferred_entity_type: entity inference (ec2_instance) is not supported",
        ));
    }
    if let Some(r) = i.resolve_aws_unique_ids {
        if existing.as_ref().is_some_and(|e| e.resolve_aws_unique_ids) && !r {
            return Err(BackendError::bad_request(
                "resolve_aws_unique_ids: changing it from true to false is not allowed",
            ));
        }
        role.resolve_aws_unique_ids = r;
    }
    let arns_changed = i.bound_iam_principal_arn.is_some();
    if let Some(arns) = i.bound_iam_principal_arn {
        for a in &arns {
            arn::validate_bound_arn(a)?;
        }
        role.bound_iam_principal_arn = arns;
    }
    if role.bound_iam_principal_arn.is_empty() {
        return Err(BackendError::bad_request(
            "bound_iam_principal_arn: at least one principal ARN must be bound for auth_type=iam",
        ));
    }
    role.token
        .merge_update(&with_legacy_names(req, LEGACY_TTL_NAMES))?;
    if role.resolve_aws_unique_ids
        && (arns_changed || existing.is_none() || role.bound_iam_principal_id.is_empty())
    {
        let config = load_config(storage).await?;
        let iam = config.iam_url()?;
        let mut ids = Vec::new();
        for a in role
            .bound_iam_principal_arn
            .iter()
            .filter(|a| !a.contains('*'))
        {
            let (kind, entity) = arn::user_or_role(a)?;
            let creds = config.creds().ok_or_else(|| {
                BackendError::bad_request(
                    "bound_iam_principal_arn: resolving unique IDs needs AWS credentials (config/client access_key and secret_key); or set resolve_aws_unique_ids=false",
                )
            })?;
            let (id, real_arn) = sts::resolve_unique_id(&creds, &iam, &kind, &entity).await?;
            // GetUser/GetRole look up by name only; an ARN with another
            // path or account names a different principal.
            if real_arn != *a {
                return Err(BackendError::bad_request(format!(
                    "bound_iam_principal_arn: {a:?} does not exist (IAM knows {kind} {entity:?} as {real_arn:?})"
                )));
            }
            ids.push(id);
        }
        role.bound_iam_principal_id = ids;
    }
    storage
        .put_json(&format!("{ROLE_PREFIX}{}", name.to_lowercase()), &role)
        .await?;
    Ok(None)
}

async fn login(req: &Request, storage: &dyn Storage) -> Result<Option<Response>, BackendError> {
    let i: LoginInput = req.parse()?;
    let Some(method) = i.iam_http_request_method.as_deref() else {
        if i.pkcs7.is_some() || i.identity.is_some() {
            return Err(BackendError::bad_request(
                "EC2 login (pkcs7/identity) is not supported; sign a GetCallerIdentity request (iam_http_request_method)",
            ));
        }
        return Err(BackendError::bad_request(
            "iam_http_request_method: missing",
        ));
    };
    let config = load_config(storage).await?;
    let endpoint = config.sts_url()?;
    let checked = iam_request::check(
        &RawIamLogin {
            method,
            url_b64: &i.iam_request_url,
            body_b64: &i.iam_request_body,
            headers: &i.iam_request_headers,
        },
        &endpoint,
        &config.iam_server_id_header_value,
    )?;
    let caller = sts::replay(&endpoint, &checked).await?;
    let principal = Principal::parse(&caller.arn)?;
    if principal.account != caller.account {
        return Err(BackendError::bad_request(
            "STS answered an ARN outside the caller's account",
        ));
    }
    let role_name = if i.role.is_empty() {
        principal.name.clone()
    } else {
        i.role.clone()
    };
    let Some(role) = load_role(storage, &role_name).await? else {
        return Err(BackendError::bad_request(format!(
            "entry for role {role_name:?} not found"
        )));
    };
    if role.auth_type != "iam" {
        return Err(BackendError::bad_request(format!(
            "auth method iam not allowed for role {role_name}"
        )));
    }
    // For an assumed role, STS's UserId is "<role id>:<session>".
    let unique_id = caller
        .user_id
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    if !role.binds(&principal, &unique_id) {
        return Err(BackendError::bad_request(format!(
            "IAM Principal {:?} does not belong to the role {role_name:?}",
            caller.arn
        )));
    }
    if !ip_allowed(&role.token.token_bound_cidrs, req.remote_addr) {
        return Err(BackendError::PermissionDenied);
    }
    let canonical = principal.canonical_arn();
    let mut meta = BTreeMap::new();
    meta.insert("client_arn".to_string(), caller.arn.clone());
    meta.insert("canonical_arn".to_string(), canonical.clone());
    meta.insert("client_user_id".to_string(), unique_id.clone());
    meta.insert("auth_type".to_string(), "iam".to_string());
    meta.insert("inferred_entity_type".to_string(), String::new());
    meta.insert("inferred_entity_id".to_string(), String::new());
    meta.insert("inferred_aws_region".to_string(), String::new());
    meta.insert("account_id".to_string(), caller.account.clone());
    meta.insert("role_id".to_string(), role.role_id.clone());
    meta.insert("role".to_string(), role_name.to_lowercase());
    let mut auth = role.token.to_auth(&role.role_id, &principal.name, meta);
    auth.internal_data = serde_json::to_value(Internal {
        role_name: role_name.to_lowercase(),
        role_id: role.role_id.clone(),
        canonical_arn: canonical,
        client_arn: caller.arn,
        client_user_id: unique_id,
    })?;
    Ok(Some(Response {
        auth: Some(auth),
        ..Default::default()
    }))
}

/// A token from this method renews while its role still exists (the same
/// role, not one recreated under the name), still binds the principal and
/// still grants the same policies.
async fn renew(req: &Request, storage: &dyn Storage) -> Result<Option<Response>, BackendError> {
    let issued = req.auth.as_ref().ok_or(BackendError::PermissionDenied)?;
    let internal: Internal =
        serde_json::from_value(issued.internal_data.clone()).map_err(|_| {
            BackendError::bad_request("token was not issued by an IAM login of this method")
        })?;
    let role = load_role(storage, &internal.role_name)
        .await?
        .filter(|r| r.role_id == internal.role_id)
        .ok_or_else(|| {
            BackendError::bad_request(format!("role {:?} no longer exists", internal.role_name))
        })?;
    let principal = Principal::parse(&internal.client_arn)?;
    if role.auth_type != "iam" || !role.binds(&principal, &internal.client_user_id) {
        return Err(BackendError::bad_request(
            "role no longer binds the IAM principal that logged in",
        ));
    }
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

#[async_trait]
impl Backend for AwsAuth {
    fn backend_type(&self) -> BackendType {
        BackendType::Credential
    }

    fn special_paths(&self) -> SpecialPaths {
        SpecialPaths {
            unauthenticated: vec!["login".into()],
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
            Some((Route::ConfigClient, _)) => Ok(Some(storage.get(CONFIG_KEY).await?.is_some())),
            _ => Ok(None),
        }
    }

    async fn handle(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        if req.operation == Operation::Renew {
            return renew(req, storage).await;
        }
        let (route, caps) = self
            .routes
            .route(&req.path)
            .ok_or(BackendError::UnsupportedPath)?;
        match (route, req.operation) {
            (Route::ConfigClient, _) => config_client(req, storage).await,
            (Route::Role, Operation::Read) => Ok(load_role(storage, caps.get("name"))
                .await?
                .map(|r| Response::data(r.to_data()))),
            (Route::Role, Operation::Create | Operation::Update) => {
                role_write(req, storage, caps.get("name")).await
            }
            (Route::Role, Operation::Delete) => {
                storage
                    .delete(&format!("{ROLE_PREFIX}{}", caps.get("name").to_lowercase()))
                    .await?;
                Ok(None)
            }
            (Route::RoleList, Operation::List) => {
                Ok(Some(Response::list(storage.list(ROLE_PREFIX).await?)))
            }
            (Route::Login, Operation::Create | Operation::Update) => login(req, storage).await,
            _ => Err(BackendError::UnsupportedOperation),
        }
    }
}
