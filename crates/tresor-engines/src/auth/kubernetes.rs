//! The Kubernetes auth method, on Vault's paths:
//!
//! | path | operations |
//! | --- | --- |
//! | `config` | read, write (replaces the whole configuration) |
//! | `role/<name>` | read, write (merges into the stored role), delete |
//! | `role/` | list |
//! | `login` | write `{role, jwt}`, no token needed |
//!
//! A login hands the service-account JWT to the cluster's TokenReview API
//! and trusts only the answer: the service account's name, namespace and
//! uid are read from `status.user`, never from the claims the client sent,
//! so a token that the cluster no longer accepts (deleted account, expired
//! projected token) or a forged one cannot log in.
//!
//! Storage layout: `config`; `role/<name>`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{de, Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use tresor_sdk::paths::pattern;
use tresor_sdk::{
    fields, Backend, BackendConfig, BackendError, BackendType, Map, Operation, PathTable, Request,
    Response, SpecialPaths, Storage, StorageExt,
};
use zeroize::Zeroizing;

use crate::auth::jwt::glob_match;
use crate::auth::token_fields::{ip_allowed, TokenFields};

const CONFIG_KEY: &str = "config";
const ROLE_PREFIX: &str = "role/";
const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// Where a pod finds its own CA and service-account token.
const LOCAL_CA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
const LOCAL_JWT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const SA_PREFIX: &str = "system:serviceaccount:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Config,
    RoleList,
    Role,
    Login,
}

/// The Kubernetes auth backend of one mount.
pub struct KubernetesBackend {
    routes: PathTable<Route>,
}

impl Default for KubernetesBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl KubernetesBackend {
    pub fn new() -> Self {
        let name = format!("(?P<name>{})", pattern::NAME);
        KubernetesBackend {
            routes: PathTable::new(&[
                ("config", Route::Config),
                ("role/?", Route::RoleList),
                (&format!("role/{name}"), Route::Role),
                ("login", Route::Login),
            ]),
        }
    }
}

/// `kubernetes` mounts.
pub fn factory(_conf: &BackendConfig) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(Arc::new(KubernetesBackend::new()))
}

// ----- stored types ----------------------------------------------------------

#[derive(Clone, Default, Serialize, Deserialize)]
struct Config {
    kubernetes_host: String,
    #[serde(default)]
    kubernetes_ca_cert: String,
    /// Never answered on read (`token_reviewer_jwt_set` tells whether it is).
    #[serde(default)]
    token_reviewer_jwt: String,
    #[serde(default)]
    pem_keys: Vec<String>,
    #[serde(default)]
    issuer: String,
    #[serde(default = "yes")]
    disable_iss_validation: bool,
    #[serde(default)]
    disable_local_ca_jwt: bool,
    #[serde(default)]
    use_annotations_as_alias_metadata: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum AliasNameSource {
    #[default]
    ServiceaccountUid,
    ServiceaccountName,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Role {
    #[serde(default)]
    bound_service_account_names: Vec<String>,
    #[serde(default)]
    bound_service_account_namespaces: Vec<String>,
    #[serde(default)]
    audience: String,
    #[serde(default)]
    alias_name_source: AliasNameSource,
    #[serde(default)]
    token: TokenFields,
}

// ----- request types ---------------------------------------------------------

macro_rules! named {
    ($name:ident, $field:literal, $inner:path, $ty:ty) => {
        fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            $inner(d).map_err(|e: D::Error| de::Error::custom(format!("{}: {e}", $field)))
        }
    };
}
named!(
    bool_iss,
    "disable_iss_validation",
    fields::opt_boolean,
    Option<bool>
);
named!(bool_local, "disable_local_ca_jwt", fields::boolean, bool);
named!(
    bool_annot,
    "use_annotations_as_alias_metadata",
    fields::boolean,
    bool
);
named!(
    names_f,
    "bound_service_account_names",
    fields::opt_string_list,
    Option<Vec<String>>
);
named!(
    ns_f,
    "bound_service_account_namespaces",
    fields::opt_string_list,
    Option<Vec<String>>
);

fn pem_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.trim().is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s]),
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(de::Error::custom(format!(
                    "pem_keys: expected PEM strings, got {other}"
                ))),
            })
            .collect(),
        other => Err(de::Error::custom(format!(
            "pem_keys: expected a list of PEM strings, got {other}"
        ))),
    }
}

#[derive(Deserialize)]
struct ConfigInput {
    #[serde(default)]
    kubernetes_host: String,
    #[serde(default)]
    kubernetes_ca_cert: String,
    #[serde(default)]
    token_reviewer_jwt: String,
    #[serde(default, deserialize_with = "pem_list")]
    pem_keys: Vec<String>,
    #[serde(default)]
    issuer: String,
    #[serde(default, deserialize_with = "bool_iss")]
    disable_iss_validation: Option<bool>,
    #[serde(default, deserialize_with = "bool_local")]
    disable_local_ca_jwt: bool,
    #[serde(default, deserialize_with = "bool_annot")]
    use_annotations_as_alias_metadata: bool,
}

#[derive(Deserialize)]
struct RoleInput {
    #[serde(default, deserialize_with = "names_f")]
    bound_service_account_names: Option<Vec<String>>,
    #[serde(default, deserialize_with = "ns_f")]
    bound_service_account_namespaces: Option<Vec<String>>,
    #[serde(default)]
    bound_service_account_namespace_selector: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    alias_name_source: Option<String>,
}

#[derive(Deserialize)]
struct LoginInput {
    #[serde(default)]
    role: String,
    #[serde(default)]
    jwt: String,
}

// ----- TokenReview wire types ------------------------------------------------

#[derive(Deserialize)]
struct TokenReview {
    #[serde(default)]
    status: ReviewStatus,
}

#[derive(Default, Deserialize)]
struct ReviewStatus {
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    user: ReviewUser,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    error: String,
}

#[derive(Default, Deserialize)]
struct ReviewUser {
    #[serde(default)]
    username: String,
    #[serde(default)]
    uid: String,
}

/// The service account the cluster vouched for.
struct ServiceAccount {
    namespace: String,
    name: String,
    uid: String,
}

// ----- logic -----------------------------------------------------------------

fn role_key(name: &str) -> String {
    format!("{ROLE_PREFIX}{name}")
}

fn check_bound_list(field: &str, list: &[String]) -> Result<(), BackendError> {
    if list.is_empty() {
        return Err(BackendError::bad_request(format!(
            "{field:?} can not be empty"
        )));
    }
    if list.len() > 1 && list.iter().any(|v| v == "*") {
        return Err(BackendError::bad_request(format!(
            "{field}: can not mix \"*\" with values"
        )));
    }
    Ok(())
}

fn allowed(list: &[String], value: &str) -> bool {
    list.iter().any(|p| glob_match(p, value))
}

/// `system:serviceaccount:<namespace>:<name>`, nothing else.
fn parse_username(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix(SA_PREFIX)?;
    let (ns, name) = rest.split_once(':')?;
    if ns.is_empty() || name.is_empty() || name.contains(':') {
        return None;
    }
    Some((ns.to_string(), name.to_string()))
}

/// The `iss` claim, read without verifying: the cluster verifies the token;
/// this only adds Vault's optional issuer pinning on top.
fn unverified_issuer(jwt: &str) -> Option<String> {
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(jwt).ok()?;
    claims
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// A pod's own file, when this server runs in one.
fn read_local(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .filter(|s| !s.trim().is_empty())
}

impl KubernetesBackend {
    fn http_client(&self, cfg: &Config) -> Result<reqwest::Client, BackendError> {
        let mut ca = cfg.kubernetes_ca_cert.clone();
        if ca.trim().is_empty() && !cfg.disable_local_ca_jwt {
            ca = read_local(LOCAL_CA_PATH).unwrap_or_default();
        }
        let mut b = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if !ca.trim().is_empty() {
            let certs = reqwest::Certificate::from_pem_bundle(ca.as_bytes()).map_err(|e| {
                BackendError::bad_request(format!(
                    "kubernetes_ca_cert: invalid PEM certificate: {e}"
                ))
            })?;
            if certs.is_empty() {
                return Err(BackendError::bad_request(
                    "kubernetes_ca_cert: no certificate found in PEM",
                ));
            }
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        b.build()
            .map_err(|e| BackendError::Internal(format!("http client: {e}")))
    }

    /// Ask the cluster who `jwt` belongs to.
    async fn review(
        &self,
        cfg: &Config,
        jwt: &str,
        audience: &str,
    ) -> Result<ServiceAccount, BackendError> {
        let reviewer: Zeroizing<String> = if !cfg.token_reviewer_jwt.is_empty() {
            Zeroizing::new(cfg.token_reviewer_jwt.clone())
        } else if let Some(local) = (!cfg.disable_local_ca_jwt)
            .then(|| read_local(LOCAL_JWT_PATH))
            .flatten()
        {
            Zeroizing::new(local.trim().to_string())
        } else {
            // Vault's fallback: the client's own token reviews itself, which
            // works when service accounts may create TokenReviews.
            Zeroizing::new(jwt.to_string())
        };
        let mut spec = json!({ "token": jwt });
        if !audience.is_empty() {
            spec["audiences"] = json!([audience]);
        }
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": spec,
        });
        let url = format!(
            "{}{TOKEN_REVIEW_PATH}",
            cfg.kubernetes_host.trim_end_matches('/')
        );
        let resp = self
            .http_client(cfg)?
            .post(&url)
            .bearer_auth(reviewer.as_str())
            .header("accept", "application/json")
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "kubernetes TokenReview request failed");
                BackendError::bad_request(
                    "lookup failed: the Kubernetes TokenReview API could not be reached",
                )
            })?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(BackendError::PermissionDenied);
        }
        if !status.is_success() {
            return Err(BackendError::bad_request(format!(
                "lookup failed: the Kubernetes TokenReview API answered {status}"
            )));
        }
        let review: TokenReview = resp.json().await.map_err(|_| {
            BackendError::bad_request("lookup failed: the TokenReview answer is not valid JSON")
        })?;
        let st = review.status;
        if !st.authenticated {
            if !st.error.is_empty() {
                tracing::debug!(reason = %st.error, "TokenReview refused a token");
            }
            return Err(BackendError::PermissionDenied);
        }
        if !audience.is_empty() && !st.audiences.iter().any(|a| a == audience) {
            return Err(BackendError::PermissionDenied);
        }
        let (namespace, name) =
            parse_username(&st.user.username).ok_or(BackendError::PermissionDenied)?;
        Ok(ServiceAccount {
            namespace,
            name,
            uid: st.user.uid,
        })
    }

    async fn login(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let input: LoginInput = req.parse()?;
        if input.role.is_empty() {
            return Err(BackendError::bad_request("missing role"));
        }
        if input.jwt.is_empty() {
            return Err(BackendError::bad_request("missing jwt"));
        }
        let role: Role = storage
            .get_json(&role_key(&input.role))
            .await?
            .ok_or_else(|| {
                BackendError::bad_request(format!("invalid role name {:?}", input.role))
            })?;
        if !ip_allowed(&role.token.token_bound_cidrs, req.remote_addr) {
            return Err(BackendError::PermissionDenied);
        }
        let cfg: Config = storage
            .get_json(CONFIG_KEY)
            .await?
            .ok_or_else(|| BackendError::bad_request("could not load backend configuration"))?;
        if !cfg.disable_iss_validation && !cfg.issuer.is_empty() {
            let iss = unverified_issuer(&input.jwt);
            if iss.as_deref() != Some(cfg.issuer.as_str()) {
                return Err(BackendError::PermissionDenied);
            }
        }
        let sa = self.review(&cfg, &input.jwt, &role.audience).await?;
        if !allowed(&role.bound_service_account_namespaces, &sa.namespace) {
            return Err(BackendError::Forbidden("namespace not authorized".into()));
        }
        if !allowed(&role.bound_service_account_names, &sa.name) {
            return Err(BackendError::Forbidden(
                "service account name not authorized".into(),
            ));
        }
        let alias = match role.alias_name_source {
            AliasNameSource::ServiceaccountUid => {
                if sa.uid.is_empty() {
                    return Err(BackendError::bad_request(
                        "the TokenReview answer carries no service account uid",
                    ));
                }
                sa.uid.clone()
            }
            AliasNameSource::ServiceaccountName => format!("{}/{}", sa.namespace, sa.name),
        };
        let mut metadata = BTreeMap::new();
        metadata.insert("role".to_string(), input.role.clone());
        metadata.insert("service_account_name".to_string(), sa.name.clone());
        metadata.insert(
            "service_account_namespace".to_string(),
            sa.namespace.clone(),
        );
        metadata.insert("service_account_secret_name".to_string(), String::new());
        metadata.insert("service_account_uid".to_string(), sa.uid.clone());
        let display = format!("{}-{}", sa.namespace, sa.name);
        let mut auth = role.token.to_auth(&alias, &display, metadata);
        auth.internal_data = json!({ "role": input.role });
        Ok(Some(Response {
            auth: Some(auth),
            ..Default::default()
        }))
    }

    /// A token renews only while its role exists with the same policies.
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
        let role: Role = storage.get_json(&role_key(name)).await?.ok_or_else(|| {
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
        let i: ConfigInput = req.parse()?;
        let host = i.kubernetes_host.trim().to_string();
        if host.is_empty() {
            return Err(BackendError::bad_request(
                "kubernetes_host: no host provided",
            ));
        }
        let host = if host.contains("://") {
            host
        } else {
            format!("https://{host}")
        };
        let url = reqwest::Url::parse(&host)
            .map_err(|e| BackendError::bad_request(format!("kubernetes_host: invalid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(BackendError::bad_request(
                "kubernetes_host: the URL must use http or https",
            ));
        }
        let mut warnings = Vec::new();
        if !i.pem_keys.is_empty() {
            warnings.push(
                "pem_keys are stored but not used: every token is verified by the TokenReview API"
                    .to_string(),
            );
        }
        let cfg = Config {
            kubernetes_host: host,
            kubernetes_ca_cert: i.kubernetes_ca_cert,
            token_reviewer_jwt: i.token_reviewer_jwt,
            pem_keys: i.pem_keys,
            issuer: i.issuer,
            disable_iss_validation: i.disable_iss_validation.unwrap_or(true),
            disable_local_ca_jwt: i.disable_local_ca_jwt,
            use_annotations_as_alias_metadata: i.use_annotations_as_alias_metadata,
        };
        // Refuses an unreadable CA now rather than at the first login.
        self.http_client(&cfg)?;
        storage.put_json(CONFIG_KEY, &cfg).await?;
        if warnings.is_empty() {
            return Ok(None);
        }
        Ok(Some(Response {
            warnings,
            ..Default::default()
        }))
    }

    async fn role_write(
        &self,
        name: &str,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        let i: RoleInput = req.parse()?;
        if i.bound_service_account_namespace_selector
            .is_some_and(|s| !s.trim().is_empty())
        {
            return Err(BackendError::bad_request(
                "bound_service_account_namespace_selector is not supported by this server",
            ));
        }
        let mut role: Role = storage.get_json(&role_key(name)).await?.unwrap_or_default();
        role.token
            .merge_update(&crate::auth::token_fields::with_legacy_names(
                req,
                crate::auth::token_fields::LEGACY_JWT_TOKEN_NAMES,
            ))?;
        if let Some(v) = i.bound_service_account_names {
            role.bound_service_account_names = v;
        }
        if let Some(v) = i.bound_service_account_namespaces {
            role.bound_service_account_namespaces = v;
        }
        if let Some(v) = i.audience {
            role.audience = v;
        }
        if let Some(v) = i.alias_name_source {
            role.alias_name_source = match v.as_str() {
                "serviceaccount_uid" | "" => AliasNameSource::ServiceaccountUid,
                "serviceaccount_name" => AliasNameSource::ServiceaccountName,
                other => {
                    return Err(BackendError::bad_request(format!(
                        "alias_name_source: invalid value {other:?}, expected \"serviceaccount_uid\" or \"serviceaccount_name\""
                    )))
                }
            };
        }
        check_bound_list(
            "bound_service_account_names",
            &role.bound_service_account_names,
        )?;
        check_bound_list(
            "bound_service_account_namespaces",
            &role.bound_service_account_namespaces,
        )?;
        storage.put_json(&role_key(name), &role).await?;
        Ok(None)
    }
}

fn config_data(c: &Config) -> Map {
    let mut m = Map::new();
    m.insert("kubernetes_host".into(), json!(c.kubernetes_host));
    m.insert("kubernetes_ca_cert".into(), json!(c.kubernetes_ca_cert));
    m.insert("pem_keys".into(), json!(c.pem_keys));
    m.insert("issuer".into(), json!(c.issuer));
    m.insert(
        "disable_iss_validation".into(),
        json!(c.disable_iss_validation),
    );
    m.insert("disable_local_ca_jwt".into(), json!(c.disable_local_ca_jwt));
    m.insert(
        "token_reviewer_jwt_set".into(),
        json!(!c.token_reviewer_jwt.is_empty()),
    );
    m.insert(
        "use_annotations_as_alias_metadata".into(),
        json!(c.use_annotations_as_alias_metadata),
    );
    m
}

fn role_data(r: &Role) -> Map {
    let mut m = Map::new();
    m.insert(
        "bound_service_account_names".into(),
        json!(r.bound_service_account_names),
    );
    m.insert(
        "bound_service_account_namespaces".into(),
        json!(r.bound_service_account_namespaces),
    );
    m.insert("bound_service_account_namespace_selector".into(), json!(""));
    m.insert("audience".into(), json!(r.audience));
    m.insert(
        "alias_name_source".into(),
        json!(match r.alias_name_source {
            AliasNameSource::ServiceaccountUid => "serviceaccount_uid",
            AliasNameSource::ServiceaccountName => "serviceaccount_name",
        }),
    );
    r.token.populate(&mut m);
    m
}

#[async_trait]
impl Backend for KubernetesBackend {
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
            Some((Route::Role, c)) => {
                Ok(Some(storage.get(&role_key(c.get("name"))).await?.is_some()))
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
                .map(|c| Response::data(config_data(&c)))),
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
            (Route::Role, Operation::Read) => Ok(storage
                .get_json::<Role>(&role_key(caps.get("name")))
                .await?
                .map(|r| Response::data(role_data(&r)))),
            (Route::Role, _) if write => self.role_write(caps.get("name"), req, storage).await,
            (Route::Role, Operation::Delete) => {
                storage.delete(&role_key(caps.get("name"))).await?;
                Ok(None)
            }
            (Route::Login, _) if write => self.login(req, storage).await,
            _ => Err(BackendError::UnsupportedOperation),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(
            parse_username("system:serviceaccount:default:vault"),
            Some(("default".into(), "vault".into()))
        );
        assert_eq!(parse_username("system:node:x"), None);
        assert_eq!(parse_username("system:serviceaccount:ns"), None);
        assert_eq!(parse_username("system:serviceaccount::x"), None);
        assert_eq!(parse_username("system:serviceaccount:a:b:c"), None);
    }

    #[test]
    fn bound_lists() {
        assert!(check_bound_list("n", &[]).is_err());
        assert!(check_bound_list("n", &["*".into(), "a".into()]).is_err());
        assert!(check_bound_list("n", &["*".into()]).is_ok());
        assert!(allowed(&["dev-*".into()], "dev-a"));
        assert!(!allowed(&["dev-*".into()], "prod-a"));
    }
}
