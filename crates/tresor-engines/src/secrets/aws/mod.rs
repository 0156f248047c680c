//! The AWS secrets engine: dynamic IAM users and STS credentials, with
//! Vault's paths and fields so that `vault read aws/creds/<role>` and hvac's
//! `secrets.aws` work unchanged.
//!
//! | path | operations |
//! | --- | --- |
//! | `config/root` | read (never the secret key), write (`access_key`, `secret_key`, `region`, `iam_endpoint`, `sts_endpoint`, `sts_region`, `max_retries`, `username_template`) |
//! | `config/rotate-root` | write: new access key for the configured IAM user, old one deleted |
//! | `config/lease` | read, write (`lease`, `lease_max`): lease of `iam_user` credentials |
//! | `roles/<name>` | read, write, delete; `roles` list |
//! | `creds/<name>`, `sts/<name>` | read or write (`ttl`, `role_arn`, `role_session_name`) |
//!
//! Credential types: `iam_user` (a new IAM user per lease, deleted on
//! revocation), `assumed_role` (STS AssumeRole) and `federation_token` (STS
//! GetFederationToken); STS credentials expire at AWS and are not renewable.
//!
//! We talk to AWS with `aws-sigv4` over `reqwest` and parse its XML with
//! `quick-xml` instead of using the AWS SDK for Rust (`aws-sdk-iam`,
//! `aws-sdk-sts`): the SDK's build cost does not fit a 2-core CI with a
//! 90-minute budget, and the dozen query-protocol calls we make are simple.
//!
//! Storage: `config/root`, `config/lease`, `role/<name>`.

mod client;
mod username;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tresor_sdk::paths::pattern;
use tresor_sdk::{
    fields, Backend, BackendConfig, BackendError, LeaseOptions, Operation, PathTable, Request,
    Response, Secret, Storage, StorageExt, SystemView,
};
use zeroize::Zeroizing;

use client::{AwsClient, AwsError, RootCreds, Service};
use username::{Context, Kind, Template};

const CONFIG_ROOT: &str = "config/root";
const CONFIG_LEASE: &str = "config/lease";
const ROLE_PREFIX: &str = "role/";
const DEFAULT_IAM_ENDPOINT: &str = "https://iam.amazonaws.com";
const DEFAULT_STS_ENDPOINT: &str = "https://sts.amazonaws.com";
const DEFAULT_REGION: &str = "us-east-1";
/// Vault's default STS TTL when neither the request nor the role sets one.
const DEFAULT_STS_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    ConfigRoot,
    RotateRoot,
    ConfigLease,
    RoleList,
    Role,
    Creds,
    Sts,
}

/// `aws` secrets engine.
pub struct AwsSecrets {
    routes: PathTable<Route>,
    system: Arc<dyn SystemView>,
    /// Serialises root rotations: two at once would each delete the key the
    /// other just switched to.
    rotate: tokio::sync::Mutex<()>,
}

pub fn factory(conf: &BackendConfig) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(Arc::new(AwsSecrets::new(conf.system.clone())))
}

impl AwsSecrets {
    pub fn new(system: Arc<dyn SystemView>) -> Self {
        let role = format!("roles/(?P<name>{})", pattern::NAME);
        let creds = format!("creds/(?P<name>{})", pattern::NAME);
        let sts = format!("sts/(?P<name>{})", pattern::NAME);
        AwsSecrets {
            routes: PathTable::new(&[
                ("config/root", Route::ConfigRoot),
                ("config/rotate-root", Route::RotateRoot),
                ("config/lease", Route::ConfigLease),
                ("roles/?", Route::RoleList),
                (role.as_str(), Route::Role),
                (creds.as_str(), Route::Creds),
                (sts.as_str(), Route::Sts),
            ]),
            system,
            rotate: tokio::sync::Mutex::new(()),
        }
    }
}

// ----- config/root ------------------------------------------------------------

#[derive(Clone, Serialize, Deserialize)]
struct RootConfig {
    #[serde(default)]
    access_key: String,
    #[serde(default)]
    secret_key: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    iam_endpoint: String,
    #[serde(default)]
    sts_endpoint: String,
    #[serde(default)]
    sts_region: String,
    #[serde(default = "minus_one")]
    max_retries: i64,
    #[serde(default)]
    username_template: String,
}

fn minus_one() -> i64 {
    -1
}

impl Default for RootConfig {
    fn default() -> Self {
        RootConfig {
            access_key: String::new(),
            secret_key: String::new(),
            region: String::new(),
            iam_endpoint: String::new(),
            sts_endpoint: String::new(),
            sts_region: String::new(),
            max_retries: -1,
            username_template: String::new(),
        }
    }
}

impl RootConfig {
    fn region(&self) -> String {
        if !self.region.is_empty() {
            return self.region.clone();
        }
        ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| DEFAULT_REGION.into())
    }

    /// Configured keys, else the usual AWS environment variables (Vault
    /// would walk the SDK's whole default chain).
    fn creds(&self) -> Result<RootCreds, BackendError> {
        if !self.access_key.is_empty() {
            return Ok(RootCreds {
                access_key: self.access_key.clone(),
                secret_key: Zeroizing::new(self.secret_key.clone()),
                session_token: None,
            });
        }
        let env = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
        match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(ak), Some(sk)) => Ok(RootCreds {
                access_key: ak,
                secret_key: Zeroizing::new(sk),
                session_token: env("AWS_SESSION_TOKEN").map(Zeroizing::new),
            }),
            _ => Err(BackendError::bad_request(
                "no AWS credentials: write access_key and secret_key to config/root",
            )),
        }
    }

    fn client(&self) -> Result<AwsClient, BackendError> {
        let iam = endpoint_url("iam_endpoint", &self.iam_endpoint, DEFAULT_IAM_ENDPOINT)?;
        let sts = endpoint_url("sts_endpoint", &self.sts_endpoint, DEFAULT_STS_ENDPOINT)?;
        // The global STS endpoint only accepts signatures for us-east-1.
        let sts_region = if self.sts_endpoint.is_empty() {
            DEFAULT_REGION.to_string()
        } else if !self.sts_region.is_empty() {
            self.sts_region.clone()
        } else {
            self.region()
        };
        AwsClient::new(self.creds()?, iam, sts, sts_region, self.max_retries)
    }

    fn template(&self) -> Result<Option<Template>, BackendError> {
        if self.username_template.is_empty() {
            Ok(None)
        } else {
            Template::parse(&self.username_template).map(Some)
        }
    }
}

fn endpoint_url(field: &str, v: &str, default: &str) -> Result<reqwest::Url, BackendError> {
    let v = if v.is_empty() { default } else { v };
    let mut u = reqwest::Url::parse(v)
        .map_err(|_| BackendError::bad_request(format!("{field}: {v:?} is not a URL")))?;
    if !matches!(u.scheme(), "http" | "https")
        || u.host_str().is_none()
        || !u.username().is_empty()
        || u.password().is_some()
    {
        return Err(BackendError::bad_request(format!(
            "{field}: {v:?} must be an http(s) URL with a host and no user info"
        )));
    }
    u.set_query(None);
    u.set_fragment(None);
    if u.path().is_empty() {
        u.set_path("/");
    }
    Ok(u)
}

#[derive(Deserialize)]
struct RootInput {
    access_key: Option<String>,
    secret_key: Option<String>,
    region: Option<String>,
    iam_endpoint: Option<String>,
    sts_endpoint: Option<String>,
    sts_region: Option<String>,
    #[serde(default, deserialize_with = "opt_int")]
    max_retries: Option<i64>,
    username_template: Option<String>,
}

fn opt_int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    fields::int(d).map(Some)
}

async fn load_root(storage: &dyn Storage) -> Result<Option<RootConfig>, BackendError> {
    Ok(storage.get_json(CONFIG_ROOT).await?)
}

async fn config_root(
    req: &Request,
    storage: &dyn Storage,
) -> Result<Option<Response>, BackendError> {
    match req.operation {
        Operation::Read => {
            let Some(c) = load_root(storage).await? else {
                return Ok(None);
            };
            // The secret key is write-only, as in Vault.
            Ok(Some(Response::with_data(&json!({
                "access_key": c.access_key,
                "region": c.region,
                "iam_endpoint": c.iam_endpoint,
                "sts_endpoint": c.sts_endpoint,
                "sts_region": c.sts_region,
                "max_retries": c.max_retries,
                "username_template": c.username_template,
            }))?))
        }
        Operation::Create | Operation::Update => {
            let i: RootInput = req.parse()?;
            let mut c = load_root(storage).await?.unwrap_or_default();
            let trim = |s: String| s.trim().to_string();
            if let Some(v) = i.access_key {
                c.access_key = trim(v);
            }
            if let Some(v) = i.secret_key {
                c.secret_key = trim(v);
            }
            if let Some(v) = i.region {
                c.region = trim(v);
            }
            if let Some(v) = i.iam_endpoint {
                c.iam_endpoint = trim(v);
            }
            if let Some(v) = i.sts_endpoint {
                c.sts_endpoint = trim(v);
            }
            if let Some(v) = i.sts_region {
                c.sts_region = trim(v);
            }
            if let Some(v) = i.max_retries {
                if v < -1 {
                    return Err(BackendError::bad_request(
                        "max_retries: must be -1 (SDK default) or more",
                    ));
                }
                c.max_retries = v;
            }
            if let Some(v) = i.username_template {
                c.username_template = v;
            }
            if c.access_key.is_empty() != c.secret_key.is_empty() {
                return Err(BackendError::bad_request(
                    "access_key and secret_key must be given together",
                ));
            }
            endpoint_url("iam_endpoint", &c.iam_endpoint, DEFAULT_IAM_ENDPOINT)?;
            endpoint_url("sts_endpoint", &c.sts_endpoint, DEFAULT_STS_ENDPOINT)?;
            // Refuse a template we cannot render now, not at credential time.
            if let Some(t) = c.template()? {
                t.render(&Context {
                    display_name: "token".into(),
                    policy_name: "role".into(),
                    kind: Kind::Iam,
                })?;
            }
            storage.put_json(CONFIG_ROOT, &c).await?;
            Ok(None)
        }
        Operation::Delete => {
            storage.delete(CONFIG_ROOT).await?;
            Ok(None)
        }
        _ => Err(BackendError::UnsupportedOperation),
    }
}

impl AwsSecrets {
    /// Give the configured IAM user a new access key that only tresor knows,
    /// then delete the old one.
    async fn rotate_root(&self, storage: &dyn Storage) -> Result<Option<Response>, BackendError> {
        let _guard = self.rotate.lock().await;
        let mut c = load_root(storage).await?.unwrap_or_default();
        if c.access_key.is_empty() || c.secret_key.is_empty() {
            return Err(BackendError::bad_request(
                "cannot rotate: config/root has no access_key and secret_key",
            ));
        }
        let aws = c.client()?;
        let me: client::GetUserResponse = aws
            .call(Service::Iam, "GetUser", &[])
            .await
            .map_err(|e| e.into_backend("GetUser"))?;
        let user = me.result.user.user_name;
        let created: client::CreateAccessKeyResponse = aws
            .call(Service::Iam, "CreateAccessKey", &[("UserName", &user)])
            .await
            .map_err(|e| e.into_backend("CreateAccessKey"))?;
        let new = created.result.key;
        let old_key = std::mem::replace(&mut c.access_key, new.access_key_id.clone());
        c.secret_key = new.secret_access_key;
        storage.put_json(CONFIG_ROOT, &c).await?;
        // The old key is still valid until this call, so it deletes itself:
        // a brand-new key may take seconds to be accepted everywhere in IAM.
        let deleted = aws
            .call::<client::Ignored>(
                Service::Iam,
                "DeleteAccessKey",
                &[("UserName", &user), ("AccessKeyId", &old_key)],
            )
            .await;
        let mut resp = Response::with_data(&json!({ "access_key": new.access_key_id }))?;
        if let Err(e) = deleted {
            tracing::warn!(error = ?e, "rotate-root: deleting the old access key failed");
            resp = resp.warning(format!(
                "the new access key is in use, but deleting the old one ({old_key}) failed; delete it in IAM"
            ));
        }
        Ok(Some(resp))
    }
}

// ----- config/lease -------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LeaseConfig {
    #[serde(with = "fields::secs")]
    lease: Duration,
    #[serde(with = "fields::secs")]
    lease_max: Duration,
}

#[derive(Deserialize)]
struct LeaseInput {
    #[serde(default, deserialize_with = "fields::opt_duration")]
    lease: Option<Duration>,
    #[serde(default, deserialize_with = "fields::opt_duration")]
    lease_max: Option<Duration>,
}

/// Go's `time.Duration.String()` for whole seconds, as Vault answers.
fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h}h{m}m{sec}s")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

async fn config_lease(
    req: &Request,
    storage: &dyn Storage,
) -> Result<Option<Response>, BackendError> {
    match req.operation {
        Operation::Read => {
            let Some(l) = storage.get_json::<LeaseConfig>(CONFIG_LEASE).await? else {
                return Ok(None);
            };
            Ok(Some(Response::with_data(&json!({
                "lease": go_duration(l.lease),
                "lease_max": go_duration(l.lease_max),
            }))?))
        }
        Operation::Create | Operation::Update => {
            let i: LeaseInput = req.parse()?;
            let (Some(lease), Some(lease_max)) = (i.lease, i.lease_max) else {
                return Err(BackendError::bad_request(
                    "lease and lease_max are required",
                ));
            };
            if !lease_max.is_zero() && lease > lease_max {
                return Err(BackendError::bad_request(
                    "lease: must not exceed lease_max",
                ));
            }
            storage
                .put_json(CONFIG_LEASE, &LeaseConfig { lease, lease_max })
                .await?;
            Ok(None)
        }
        Operation::Delete => {
            storage.delete(CONFIG_LEASE).await?;
            Ok(None)
        }
        _ => Err(BackendError::UnsupportedOperation),
    }
}

// ----- roles ----------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CredentialType {
    IamUser,
    AssumedRole,
    FederationToken,
}

impl CredentialType {
    fn parse(s: &str) -> Result<Self, BackendError> {
        match s.trim() {
            "iam_user" => Ok(Self::IamUser),
            "assumed_role" => Ok(Self::AssumedRole),
            "federation_token" => Ok(Self::FederationToken),
            "session_token" => Err(BackendError::bad_request(
                "credential_type: session_token is not supported",
            )),
            other => Err(BackendError::bad_request(format!(
                "credential_type: {other:?} is not one of iam_user, assumed_role, federation_token"
            ))),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::IamUser => "iam_user",
            Self::AssumedRole => "assumed_role",
            Self::FederationToken => "federation_token",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Role {
    credential_type: CredentialType,
    #[serde(default)]
    policy_document: String,
    #[serde(default)]
    policy_arns: Vec<String>,
    #[serde(default)]
    role_arns: Vec<String>,
    #[serde(default)]
    iam_groups: Vec<String>,
    #[serde(default)]
    iam_tags: BTreeMap<String, String>,
    #[serde(default, with = "fields::secs")]
    default_sts_ttl: Duration,
    #[serde(default, with = "fields::secs")]
    max_sts_ttl: Duration,
    #[serde(default)]
    user_path: String,
    #[serde(default)]
    permissions_boundary_arn: String,
}

impl Role {
    fn to_data(&self) -> Result<Response, BackendError> {
        Response::with_data(&json!({
            "credential_type": self.credential_type.as_str(),
            "policy_document": self.policy_document,
            "policy_arns": self.policy_arns,
            "role_arns": self.role_arns,
            "iam_groups": self.iam_groups,
            "iam_tags": self.iam_tags,
            "default_sts_ttl": self.default_sts_ttl.as_secs(),
            "max_sts_ttl": self.max_sts_ttl.as_secs(),
            "user_path": self.user_path,
            "permissions_boundary_arn": self.permissions_boundary_arn,
            "mfa_serial_number": "",
        }))
    }

    fn validate(&self) -> Result<(), BackendError> {
        let bad = |m: &str| Err(BackendError::bad_request(m.to_string()));
        let iam = self.credential_type == CredentialType::IamUser;
        if !iam {
            if !self.iam_groups.is_empty() {
                return bad("iam_groups: only valid with credential_type iam_user");
            }
            if !self.iam_tags.is_empty() {
                return bad("iam_tags: only valid with credential_type iam_user");
            }
            if !self.user_path.is_empty() {
                return bad("user_path: only valid with credential_type iam_user");
            }
            if !self.permissions_boundary_arn.is_empty() {
                return bad("permissions_boundary_arn: only valid with credential_type iam_user");
            }
        } else if !self.default_sts_ttl.is_zero() || !self.max_sts_ttl.is_zero() {
            return bad("default_sts_ttl, max_sts_ttl: not valid with credential_type iam_user");
        }
        match self.credential_type {
            CredentialType::AssumedRole if self.role_arns.is_empty() => {
                return bad("role_arns: required with credential_type assumed_role")
            }
            CredentialType::IamUser | CredentialType::FederationToken
                if !self.role_arns.is_empty() =>
            {
                return bad("role_arns: only valid with credential_type assumed_role")
            }
            CredentialType::IamUser
                if self.policy_document.is_empty()
                    && self.policy_arns.is_empty()
                    && self.iam_groups.is_empty() =>
            {
                return bad(
                    "at least one of policy_document, policy_arns or iam_groups is required with credential_type iam_user",
                )
            }
            CredentialType::FederationToken
                if self.policy_document.is_empty() && self.policy_arns.is_empty() =>
            {
                return bad(
                    "at least one of policy_document or policy_arns is required with credential_type federation_token",
                )
            }
            _ => {}
        }
        if !self.max_sts_ttl.is_zero() && self.default_sts_ttl > self.max_sts_ttl {
            return bad("default_sts_ttl: must not exceed max_sts_ttl");
        }
        for a in &self.policy_arns {
            check_arn("policy_arns", a, "policy/")?;
        }
        for a in &self.role_arns {
            check_arn("role_arns", a, "role/")?;
        }
        if !self.permissions_boundary_arn.is_empty() {
            check_arn(
                "permissions_boundary_arn",
                &self.permissions_boundary_arn,
                "policy/",
            )?;
        }
        for g in &self.iam_groups {
            username::check_name("iam_groups", g, 1, 128)?;
        }
        if !self.user_path.is_empty() {
            check_user_path(&self.user_path)?;
        }
        if self.iam_tags.len() > 50 {
            return bad("iam_tags: at most 50 tags");
        }
        for (k, v) in &self.iam_tags {
            let n = k.chars().count();
            if n == 0 || n > 128 || v.chars().count() > 256 {
                return bad("iam_tags: keys are 1 to 128 characters, values at most 256");
            }
            if k.starts_with("aws:") {
                return bad("iam_tags: the aws: prefix is reserved by AWS");
            }
            if k.chars().chain(v.chars()).any(char::is_control) {
                return bad("iam_tags: control characters are not allowed");
            }
        }
        Ok(())
    }
}

/// `arn:<partition>:iam::<account>:<kind><name>`, without characters that
/// could smuggle anything into a request.
fn check_arn(field: &str, arn: &str, kind: &str) -> Result<(), BackendError> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && !parts[1].is_empty()
        && parts[2] == "iam"
        && parts[5].starts_with(kind)
        && parts[5].len() > kind.len()
        && arn.len() <= 2048
        && arn
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '<' | '>'));
    if ok {
        Ok(())
    } else {
        Err(BackendError::bad_request(format!(
            "{field}: {arn:?} is not an IAM {} ARN",
            kind.trim_end_matches('/')
        )))
    }
}

/// IAM paths: `/` or `/seg/.../`, segments of IAM-safe characters; `.` and
/// `..` segments are refused (IAM allows them, but nobody means them).
fn check_user_path(p: &str) -> Result<(), BackendError> {
    let bad = || {
        BackendError::bad_request(format!(
            "user_path: {p:?} must be \"/\" or \"/segment/.../\" (letters, digits, +=,.@_-), at most 512 characters"
        ))
    };
    if p.len() > 512 || !p.starts_with('/') || !p.ends_with('/') {
        return Err(bad());
    }
    if p == "/" {
        return Ok(());
    }
    for seg in p[1..p.len() - 1].split('/') {
        if seg.is_empty()
            || seg == "."
            || seg == ".."
            || username::check_name("", seg, 1, 512).is_err()
        {
            return Err(bad());
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct RoleInput {
    credential_type: Option<String>,
    policy_document: Option<Value>,
    #[serde(default, deserialize_with = "fields::opt_string_list")]
    policy_arns: Option<Vec<String>>,
    #[serde(default, deserialize_with = "fields::opt_string_list")]
    role_arns: Option<Vec<String>>,
    #[serde(default, deserialize_with = "fields::opt_string_list")]
    iam_groups: Option<Vec<String>>,
    iam_tags: Option<Value>,
    #[serde(default, deserialize_with = "fields::opt_duration")]
    default_sts_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "fields::opt_duration")]
    max_sts_ttl: Option<Duration>,
    user_path: Option<String>,
    permissions_boundary_arn: Option<String>,
    /// Legacy (Vault < 0.11): an inline policy for an IAM user.
    policy: Option<Value>,
    /// Legacy: a managed policy ARN (IAM user) or a role ARN (assumed role).
    arn: Option<String>,
    mfa_serial_number: Option<String>,
}

/// A policy document as a string or a JSON object; stored compact.
fn policy_document(v: Value) -> Result<String, BackendError> {
    let doc = match v {
        Value::String(s) if s.trim().is_empty() => return Ok(String::new()),
        // Kept as written (after checking it parses): re-serializing would
        // reorder its keys.
        Value::String(s) => {
            let doc = serde_json::from_str::<Value>(&s)
                .map_err(|_| BackendError::bad_request("policy_document: not a JSON document"))?;
            if !doc.is_object() {
                return Err(BackendError::bad_request(
                    "policy_document: must be a JSON object",
                ));
            }
            return Ok(s.trim().to_string());
        }
        v @ Value::Object(_) => v,
        _ => {
            return Err(BackendError::bad_request(
                "policy_document: must be a JSON document",
            ))
        }
    };
    if !doc.is_object() {
        return Err(BackendError::bad_request(
            "policy_document: must be a JSON object",
        ));
    }
    Ok(doc.to_string())
}

/// Tags as a JSON object, or Vault's list of `key=value` strings.
fn iam_tags(v: Value) -> Result<BTreeMap<String, String>, BackendError> {
    let bad = || BackendError::bad_request("iam_tags: expected a map or a list of key=value");
    match v {
        Value::Object(m) => m
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                _ => Err(bad()),
            })
            .collect(),
        Value::Array(items) => items
            .into_iter()
            .map(|i| {
                let s = i.as_str().ok_or_else(bad)?;
                let (k, v) = s.split_once('=').ok_or_else(bad)?;
                Ok((k.trim().to_string(), v.trim().to_string()))
            })
            .collect(),
        Value::String(s) if s.trim().is_empty() => Ok(BTreeMap::new()),
        Value::String(s) => iam_tags(Value::Array(
            s.split(',').map(|p| Value::String(p.to_string())).collect(),
        )),
        _ => Err(bad()),
    }
}

async fn load_role(storage: &dyn Storage, name: &str) -> Result<Option<Role>, BackendError> {
    Ok(storage.get_json(&format!("{ROLE_PREFIX}{name}")).await?)
}

async fn role_write(
    req: &Request,
    storage: &dyn Storage,
    name: &str,
) -> Result<Option<Response>, BackendError> {
    let i: RoleInput = req.parse()?;
    if i.mfa_serial_number
        .as_deref()
        .is_some_and(|s| !s.is_empty())
    {
        return Err(BackendError::bad_request(
            "mfa_serial_number: session_token credentials are not supported",
        ));
    }
    let existing = load_role(storage, name).await?;
    let mut legacy_type = None;
    let mut legacy_policy = None;
    let mut legacy_arn = None;
    if let Some(p) = i.policy {
        legacy_type = Some(CredentialType::IamUser);
        legacy_policy = Some(policy_document(p)?);
    }
    if let Some(a) = i.arn.filter(|a| !a.is_empty()) {
        if a.contains(":role/") {
            legacy_type = Some(CredentialType::AssumedRole);
        } else {
            legacy_type.get_or_insert(CredentialType::IamUser);
        }
        legacy_arn = Some(a);
    }
    let credential_type = match (i.credential_type.as_deref(), &existing, legacy_type) {
        (Some(t), _, _) => CredentialType::parse(t)?,
        (None, Some(e), _) => e.credential_type,
        (None, None, Some(t)) => t,
        (None, None, None) => {
            return Err(BackendError::bad_request("credential_type: required"));
        }
    };
    let mut role = existing.unwrap_or(Role {
        credential_type,
        policy_document: String::new(),
        policy_arns: Vec::new(),
        role_arns: Vec::new(),
        iam_groups: Vec::new(),
        iam_tags: BTreeMap::new(),
        default_sts_ttl: Duration::ZERO,
        max_sts_ttl: Duration::ZERO,
        user_path: String::new(),
        permissions_boundary_arn: String::new(),
    });
    role.credential_type = credential_type;
    if let Some(p) = legacy_policy {
        role.policy_document = p;
    }
    if let Some(a) = legacy_arn {
        if credential_type == CredentialType::AssumedRole {
            role.role_arns = vec![a];
        } else {
            role.policy_arns = vec![a];
        }
    }
    if let Some(p) = i.policy_document {
        role.policy_document = policy_document(p)?;
    }
    if let Some(v) = i.policy_arns {
        role.policy_arns = v;
    }
    if let Some(v) = i.role_arns {
        role.role_arns = v;
    }
    if let Some(v) = i.iam_groups {
        role.iam_groups = v;
    }
    if let Some(v) = i.iam_tags {
        role.iam_tags = iam_tags(v)?;
    }
    if let Some(v) = i.default_sts_ttl {
        role.default_sts_ttl = v;
    }
    if let Some(v) = i.max_sts_ttl {
        role.max_sts_ttl = v;
    }
    if let Some(v) = i.user_path {
        role.user_path = v.trim().to_string();
    }
    if let Some(v) = i.permissions_boundary_arn {
        role.permissions_boundary_arn = v.trim().to_string();
    }
    role.validate()?;
    storage
        .put_json(&format!("{ROLE_PREFIX}{name}"), &role)
        .await?;
    Ok(None)
}

// ----- credentials ----------------------------------------------------------------

#[derive(Deserialize)]
struct CredsInput {
    #[serde(default, deserialize_with = "fields::opt_duration")]
    ttl: Option<Duration>,
    role_arn: Option<String>,
    role_session_name: Option<String>,
}

/// What a lease remembers to revoke (or renew) its credentials.
#[derive(Debug, Serialize, Deserialize)]
struct Internal {
    #[serde(default)]
    is_sts: bool,
    #[serde(default)]
    username: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    policy: String,
    #[serde(default)]
    policy_arns: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    access_key: String,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn generate_name(
    conf: &RootConfig,
    req: &Request,
    role_name: &str,
    kind: Kind,
) -> Result<String, BackendError> {
    let ctx = Context {
        display_name: req.display_name.clone(),
        policy_name: role_name.to_string(),
        kind,
    };
    match conf.template()? {
        Some(t) => t.render(&ctx),
        None => username::default_name(&ctx),
    }
}

/// `PolicyArns.member.N.arn`, as STS wants them.
fn policy_arn_params(arns: &[String]) -> Vec<(String, String)> {
    arns.iter()
        .enumerate()
        .map(|(i, a)| (format!("PolicyArns.member.{}.arn", i + 1), a.clone()))
        .collect()
}

impl AwsSecrets {
    async fn creds(
        &self,
        req: &Request,
        storage: &dyn Storage,
        role_name: &str,
        sts_path: bool,
    ) -> Result<Option<Response>, BackendError> {
        let i: CredsInput = req.parse()?;
        let Some(role) = load_role(storage, role_name).await? else {
            return Err(BackendError::bad_request(format!(
                "role {role_name:?} not found"
            )));
        };
        let conf = load_root(storage).await?.unwrap_or_default();
        match role.credential_type {
            CredentialType::IamUser if sts_path => Err(BackendError::bad_request(format!(
                "role {role_name:?} issues IAM users; read creds/{role_name} instead of sts/{role_name}"
            ))),
            CredentialType::IamUser => {
                iam_user_creds(&conf, req, storage, role_name, &role).await
            }
            _ => self.sts_creds(&conf, req, role_name, &role, i).await,
        }
    }

    async fn sts_creds(
        &self,
        conf: &RootConfig,
        req: &Request,
        role_name: &str,
        role: &Role,
        i: CredsInput,
    ) -> Result<Option<Response>, BackendError> {
        let mut warnings = Vec::new();
        let mut ttl = match i.ttl.filter(|t| !t.is_zero()) {
            Some(t) => t,
            None if !role.default_sts_ttl.is_zero() => role.default_sts_ttl,
            None => DEFAULT_STS_TTL,
        };
        let max = if role.max_sts_ttl.is_zero() {
            self.system.max_lease_ttl()
        } else {
            role.max_sts_ttl
        };
        if ttl > max {
            warnings.push(format!(
                "TTL of {}s exceeds the maximum of {}s; capped",
                ttl.as_secs(),
                max.as_secs()
            ));
            ttl = max;
        }
        let duration = ttl.as_secs().to_string();
        let aws = conf.client()?;
        let mut params: Vec<(String, String)> = vec![("DurationSeconds".into(), duration.clone())];
        if !role.policy_document.is_empty() {
            params.push(("Policy".into(), role.policy_document.clone()));
        }
        params.extend(policy_arn_params(&role.policy_arns));
        let (creds, arn) = match role.credential_type {
            CredentialType::AssumedRole => {
                let role_arn = match (
                    i.role_arn.filter(|a| !a.is_empty()),
                    role.role_arns.as_slice(),
                ) {
                    (Some(a), arns) if arns.contains(&a) => a,
                    (Some(a), _) => {
                        return Err(BackendError::bad_request(format!(
                            "role_arn: {a:?} is not one of the role's role_arns"
                        )))
                    }
                    (None, [only]) => only.clone(),
                    (None, _) => {
                        return Err(BackendError::bad_request(
                            "role_arn: required, the role has several role_arns",
                        ))
                    }
                };
                let session = match i.role_session_name.filter(|s| !s.is_empty()) {
                    Some(s) => s,
                    None => generate_name(conf, req, role_name, Kind::Sts)?,
                };
                username::check_name("role_session_name", &session, 2, 64)?;
                params.push(("RoleArn".into(), role_arn));
                params.push(("RoleSessionName".into(), session));
                let p: Vec<(&str, &str)> = params
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let r: client::AssumeRoleResponse = aws
                    .call(Service::Sts, "AssumeRole", &p)
                    .await
                    .map_err(|e| e.into_backend("AssumeRole"))?;
                (r.result.credentials, r.result.user.arn)
            }
            _ => {
                let name = generate_name(conf, req, role_name, Kind::Sts)?;
                username::check_name("federated user name", &name, 2, 32)?;
                params.push(("Name".into(), name));
                let p: Vec<(&str, &str)> = params
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let r: client::GetFederationTokenResponse = aws
                    .call(Service::Sts, "GetFederationToken", &p)
                    .await
                    .map_err(|e| e.into_backend("GetFederationToken"))?;
                (r.result.credentials, r.result.user.arn)
            }
        };
        // The lease lasts as long as AWS says the credentials do.
        let lease_ttl = chrono::DateTime::parse_from_rfc3339(creds.expiration.trim())
            .ok()
            .and_then(|exp| u64::try_from(exp.timestamp() - unix_now()).ok())
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .unwrap_or(ttl);
        let data = json!({
            "access_key": creds.access_key_id,
            "secret_key": creds.secret_access_key,
            "security_token": creds.session_token,
            "session_token": creds.session_token,
            "arn": arn,
            "ttl": lease_ttl.as_secs(),
        });
        let mut resp = Response::with_data(&data)?;
        resp.warnings = warnings;
        resp.secret = Some(Secret {
            lease: LeaseOptions {
                ttl: lease_ttl,
                max_ttl: lease_ttl,
                renewable: false,
                ..Default::default()
            },
            internal_data: serde_json::to_value(Internal {
                is_sts: true,
                username: String::new(),
                role: role_name.to_string(),
                policy: String::new(),
                policy_arns: Vec::new(),
                groups: Vec::new(),
                access_key: String::new(),
            })?,
        });
        Ok(Some(resp))
    }
}

async fn iam_user_creds(
    conf: &RootConfig,
    req: &Request,
    storage: &dyn Storage,
    role_name: &str,
    role: &Role,
) -> Result<Option<Response>, BackendError> {
    let aws = conf.client()?;
    let user = generate_name(conf, req, role_name, Kind::Iam)?;
    username::check_name("generated user name", &user, 1, 64)?;
    let mut params: Vec<(String, String)> = vec![("UserName".into(), user.clone())];
    if !role.user_path.is_empty() {
        params.push(("Path".into(), role.user_path.clone()));
    }
    if !role.permissions_boundary_arn.is_empty() {
        params.push((
            "PermissionsBoundary".into(),
            role.permissions_boundary_arn.clone(),
        ));
    }
    for (n, (k, v)) in role.iam_tags.iter().enumerate() {
        params.push((format!("Tags.member.{}.Key", n + 1), k.clone()));
        params.push((format!("Tags.member.{}.Value", n + 1), v.clone()));
    }
    let p: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let created: client::CreateUserResponse = aws
        .call(Service::Iam, "CreateUser", &p)
        .await
        .map_err(|e| e.into_backend("CreateUser"))?;
    if created.result.user.user_name != user {
        return Err(BackendError::Internal(
            "IAM answered CreateUser for another user name".into(),
        ));
    }

    let policy_name = username::sanitize(role_name);
    let key = match provision_user(&aws, &user, &policy_name, role).await {
        Ok(k) => k,
        Err(e) => {
            // Leave nothing behind in AWS for a request that failed.
            if let Err(cleanup) = delete_user(&aws, &user).await {
                tracing::error!(user = %user, error = %cleanup, "could not delete a half-created IAM user");
            }
            return Err(e);
        }
    };
    let lease = storage
        .get_json::<LeaseConfig>(CONFIG_LEASE)
        .await?
        .unwrap_or_default();
    let mut resp = Response::with_data(&json!({
        "access_key": key.access_key_id,
        "secret_key": key.secret_access_key,
        "security_token": Value::Null,
        "session_token": Value::Null,
    }))?;
    resp.secret = Some(Secret {
        lease: LeaseOptions {
            ttl: lease.lease,
            max_ttl: lease.lease_max,
            renewable: true,
            ..Default::default()
        },
        internal_data: serde_json::to_value(Internal {
            is_sts: false,
            username: user,
            role: role_name.to_string(),
            policy: if role.policy_document.is_empty() {
                String::new()
            } else {
                policy_name
            },
            policy_arns: role.policy_arns.clone(),
            groups: role.iam_groups.clone(),
            access_key: key.access_key_id.clone(),
        })?,
    });
    Ok(Some(resp))
}

/// Policies, groups and an access key for a freshly created user.
async fn provision_user(
    aws: &AwsClient,
    user: &str,
    policy_name: &str,
    role: &Role,
) -> Result<client::NewAccessKey, BackendError> {
    if !role.policy_document.is_empty() {
        aws.call::<client::Ignored>(
            Service::Iam,
            "PutUserPolicy",
            &[
                ("UserName", user),
                ("PolicyName", policy_name),
                ("PolicyDocument", &role.policy_document),
            ],
        )
        .await
        .map_err(|e| e.into_backend("PutUserPolicy"))?;
    }
    for arn in &role.policy_arns {
        aws.call::<client::Ignored>(
            Service::Iam,
            "AttachUserPolicy",
            &[("UserName", user), ("PolicyArn", arn)],
        )
        .await
        .map_err(|e| e.into_backend("AttachUserPolicy"))?;
    }
    for g in &role.iam_groups {
        aws.call::<client::Ignored>(
            Service::Iam,
            "AddUserToGroup",
            &[("UserName", user), ("GroupName", g)],
        )
        .await
        .map_err(|e| e.into_backend("AddUserToGroup"))?;
    }
    let k: client::CreateAccessKeyResponse = aws
        .call(Service::Iam, "CreateAccessKey", &[("UserName", user)])
        .await
        .map_err(|e| e.into_backend("CreateAccessKey"))?;
    Ok(k.result.key)
}

/// Treat "already gone" as done: revocation must be idempotent.
fn gone_ok<T: Default>(r: Result<T, AwsError>, action: &str) -> Result<T, BackendError> {
    match r {
        Ok(v) => Ok(v),
        Err(e) if e.is_no_such_entity() => Ok(T::default()),
        Err(e) => Err(e.into_backend(action)),
    }
}

/// Every page of a paged IAM list call, with `UserName` set.
async fn list_all<R, T>(
    aws: &AwsClient,
    action: &str,
    user: &str,
    split: impl Fn(R) -> (client::NextPage, Vec<T>),
) -> Result<Option<Vec<T>>, AwsError>
where
    R: serde::de::DeserializeOwned,
{
    let mut out = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut p: Vec<(&str, &str)> = vec![("UserName", user)];
        if let Some(m) = &marker {
            p.push(("Marker", m));
        }
        let r: R = match aws.call(Service::Iam, action, &p).await {
            Ok(r) => r,
            Err(e) if e.is_no_such_entity() => return Ok(None),
            Err(e) => return Err(e),
        };
        let (next, items) = split(r);
        out.extend(items);
        match next {
            Some(m) if marker.as_ref() != Some(&m) => marker = Some(m),
            _ => return Ok(Some(out)),
        }
    }
}

/// Delete an IAM user and everything that keeps IAM from deleting it:
/// group memberships, inline and attached policies, access keys. What is
/// already gone counts as deleted.
async fn delete_user(aws: &AwsClient, user: &str) -> Result<(), BackendError> {
    let map = |a: &'static str| move |e: AwsError| e.into_backend(a);
    let Some(groups) = list_all(
        aws,
        "ListGroupsForUser",
        user,
        |r: client::ListGroupsForUserResponse| (r.result.next(), r.result.groups.member),
    )
    .await
    .map_err(map("ListGroupsForUser"))?
    else {
        return Ok(());
    };
    for g in groups {
        gone_ok(
            aws.call::<client::Ignored>(
                Service::Iam,
                "RemoveUserFromGroup",
                &[("UserName", user), ("GroupName", &g.name)],
            )
            .await
            .map(|_| ()),
            "RemoveUserFromGroup",
        )?;
    }
    let inline = list_all(
        aws,
        "ListUserPolicies",
        user,
        |r: client::ListUserPoliciesResponse| (r.result.next(), r.result.names.member),
    )
    .await
    .map_err(map("ListUserPolicies"))?
    .unwrap_or_default();
    for name in inline {
        gone_ok(
            aws.call::<client::Ignored>(
                Service::Iam,
                "DeleteUserPolicy",
                &[("UserName", user), ("PolicyName", &name)],
            )
            .await
            .map(|_| ()),
            "DeleteUserPolicy",
        )?;
    }
    let attached = list_all(
        aws,
        "ListAttachedUserPolicies",
        user,
        |r: client::ListAttachedUserPoliciesResponse| (r.result.next(), r.result.policies.member),
    )
    .await
    .map_err(map("ListAttachedUserPolicies"))?
    .unwrap_or_default();
    for p in attached {
        gone_ok(
            aws.call::<client::Ignored>(
                Service::Iam,
                "DetachUserPolicy",
                &[("UserName", user), ("PolicyArn", &p.arn)],
            )
            .await
            .map(|_| ()),
            "DetachUserPolicy",
        )?;
    }
    let keys = list_all(
        aws,
        "ListAccessKeys",
        user,
        |r: client::ListAccessKeysResponse| (r.result.next(), r.result.keys.member),
    )
    .await
    .map_err(map("ListAccessKeys"))?
    .unwrap_or_default();
    for k in keys {
        gone_ok(
            aws.call::<client::Ignored>(
                Service::Iam,
                "DeleteAccessKey",
                &[("UserName", user), ("AccessKeyId", &k.access_key_id)],
            )
            .await
            .map(|_| ()),
            "DeleteAccessKey",
        )?;
    }
    gone_ok(
        aws.call::<client::Ignored>(Service::Iam, "DeleteUser", &[("UserName", user)])
            .await
            .map(|_| ()),
        "DeleteUser",
    )
}

fn internal(req: &Request) -> Result<(Internal, &Secret), BackendError> {
    let secret = req
        .secret
        .as_ref()
        .ok_or_else(|| BackendError::bad_request("no secret to revoke or renew"))?;
    let i: Internal = serde_json::from_value(secret.internal_data.clone())
        .map_err(|_| BackendError::bad_request("secret was not issued by this engine"))?;
    Ok((i, secret))
}

async fn revoke(req: &Request, storage: &dyn Storage) -> Result<Option<Response>, BackendError> {
    let (i, _) = internal(req)?;
    // STS credentials cannot be revoked; they expire at AWS.
    if i.is_sts {
        return Ok(None);
    }
    if i.username.is_empty() {
        return Err(BackendError::bad_request("secret names no IAM user"));
    }
    let conf = load_root(storage).await?.unwrap_or_default();
    delete_user(&conf.client()?, &i.username).await?;
    Ok(None)
}

async fn renew(req: &Request, storage: &dyn Storage) -> Result<Option<Response>, BackendError> {
    let (i, secret) = internal(req)?;
    if i.is_sts {
        return Err(BackendError::bad_request(
            "STS credentials are not renewable",
        ));
    }
    let lease = storage
        .get_json::<LeaseConfig>(CONFIG_LEASE)
        .await?
        .unwrap_or_default();
    let mut ttl = if secret.lease.increment.is_zero() {
        lease.lease
    } else {
        secret.lease.increment
    };
    if !lease.lease_max.is_zero() && secret.lease.issue_time > 0 {
        let left = secret.lease.issue_time
            + i64::try_from(lease.lease_max.as_secs()).unwrap_or(i64::MAX)
            - unix_now();
        let left = Duration::from_secs(u64::try_from(left.max(1)).unwrap_or(1));
        if ttl.is_zero() || ttl > left {
            ttl = left;
        }
    }
    Ok(Some(Response {
        secret: Some(Secret {
            lease: LeaseOptions {
                ttl,
                max_ttl: lease.lease_max,
                renewable: true,
                ..secret.lease.clone()
            },
            internal_data: secret.internal_data.clone(),
        }),
        ..Default::default()
    }))
}

#[async_trait]
impl Backend for AwsSecrets {
    async fn existence_check(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<bool>, BackendError> {
        match self.routes.route(&req.path) {
            Some((Route::Role, c)) => Ok(Some(load_role(storage, c.get("name")).await?.is_some())),
            Some((Route::ConfigRoot, _)) => Ok(Some(storage.get(CONFIG_ROOT).await?.is_some())),
            Some((Route::ConfigLease, _)) => Ok(Some(storage.get(CONFIG_LEASE).await?.is_some())),
            _ => Ok(None),
        }
    }

    async fn handle(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        match req.operation {
            Operation::Revoke => return revoke(req, storage).await,
            Operation::Renew => return renew(req, storage).await,
            _ => {}
        }
        let (route, caps) = self
            .routes
            .route(&req.path)
            .ok_or(BackendError::UnsupportedPath)?;
        let write = matches!(req.operation, Operation::Create | Operation::Update);
        match (route, req.operation) {
            (Route::ConfigRoot, _) => config_root(req, storage).await,
            (Route::RotateRoot, _) if write => self.rotate_root(storage).await,
            (Route::ConfigLease, _) => config_lease(req, storage).await,
            (Route::RoleList, Operation::List) => {
                Ok(Some(Response::list(storage.list(ROLE_PREFIX).await?)))
            }
            (Route::Role, Operation::Read) => load_role(storage, caps.get("name"))
                .await?
                .map(|r| r.to_data())
                .transpose(),
            (Route::Role, _) if write => role_write(req, storage, caps.get("name")).await,
            (Route::Role, Operation::Delete) => {
                storage
                    .delete(&format!("{ROLE_PREFIX}{}", caps.get("name")))
                    .await?;
                Ok(None)
            }
            (Route::Creds | Route::Sts, Operation::Read) => {
                self.creds(req, storage, caps.get("name"), route == Route::Sts)
                    .await
            }
            (Route::Creds | Route::Sts, _) if write => {
                self.creds(req, storage, caps.get("name"), route == Route::Sts)
                    .await
            }
            _ => Err(BackendError::UnsupportedOperation),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_secs(59)), "59s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_secs(90061)), "25h1m1s");
        assert_eq!(go_duration(Duration::from_secs(150)), "2m30s");
    }

    #[test]
    fn arns_and_paths() {
        check_arn("a", "arn:aws:iam::123456789012:role/app", "role/").unwrap();
        check_arn("a", "arn:aws:iam::aws:policy/ReadOnlyAccess", "policy/").unwrap();
        for bad in [
            "arn:aws:iam::123456789012:user/app",
            "arn:aws:s3:::bucket",
            "arn:aws:iam::1:role/",
            "arn:aws:iam::1:role/a b",
            "not an arn",
        ] {
            let kind = if bad.contains("policy") {
                "policy/"
            } else {
                "role/"
            };
            assert!(check_arn("a", bad, kind).is_err(), "{bad}");
        }
        check_user_path("/").unwrap();
        check_user_path("/team/app/").unwrap();
        for bad in [
            "", "team/", "/team", "//", "/../", "/a/./", "/a b/", "/a\n/",
        ] {
            assert!(check_user_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tags_from_map_or_list() {
        let m = iam_tags(json!({"team": "web"})).unwrap();
        assert_eq!(m["team"], "web");
        let m = iam_tags(json!(["team=web", "env = prod"])).unwrap();
        assert_eq!(m["env"], "prod");
        assert!(iam_tags(json!(["nokey"])).is_err());
        assert!(iam_tags(json!(5)).is_err());
    }
}
