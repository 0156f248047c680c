//! The `auth/token/` endpoints, and the token lifecycle the pipeline uses
//! (minting from a login, spending uses, revoking a tree).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tresor_api::AuthInfo;
use tresor_sdk::{fields, Map, Operation, Request, Response, StorageExt, StorageOp, SystemView};
use zeroize::Zeroizing;

use crate::core::{Caller, Reply, Unsealed};
use crate::expiration::LeaseEntry;
use crate::mount::{Handler, Route};
use crate::token::{
    generate_token, now, parse_cidrs, plan_ttl, random_base62, TokenEntry, TokenRole,
};
use crate::CoreError;

fn rfc3339(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Normalise policy names: trimmed, lower case, deduplicated, sorted.
pub(crate) fn normalize_policies(list: &[String]) -> Vec<String> {
    let mut v: Vec<String> = list
        .iter()
        .map(|p| p.trim().to_lowercase())
        .filter(|p| !p.is_empty())
        .collect();
    v.sort();
    v.dedup();
    v
}

fn with_default(mut policies: Vec<String>, no_default: bool) -> Vec<String> {
    if !no_default
        && !policies.iter().any(|p| p == "root")
        && !policies.iter().any(|p| p == "default")
    {
        policies.push("default".into());
    }
    normalize_policies(&policies)
}

#[derive(Debug, Default, Deserialize)]
struct CreateRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, deserialize_with = "fields::opt_string_list")]
    policies: Option<Vec<String>>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "fields::boolean")]
    no_parent: bool,
    #[serde(default, deserialize_with = "fields::boolean")]
    no_default_policy: bool,
    #[serde(default, deserialize_with = "fields::opt_boolean")]
    renewable: Option<bool>,
    #[serde(default, deserialize_with = "fields::duration")]
    ttl: Duration,
    #[serde(default, deserialize_with = "fields::duration")]
    explicit_max_ttl: Duration,
    #[serde(default, deserialize_with = "fields::duration")]
    period: Duration,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default, deserialize_with = "fields::uint")]
    num_uses: u64,
    #[serde(default, rename = "type")]
    token_type: Option<String>,
    #[serde(default, deserialize_with = "fields::opt_string_list")]
    bound_cidrs: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct TokenField {
    #[serde(default)]
    token: String,
}

#[derive(Debug, Default, Deserialize)]
struct AccessorField {
    #[serde(default)]
    accessor: String,
}

#[derive(Debug, Default, Deserialize)]
struct RenewRequest {
    #[serde(default)]
    token: String,
    #[serde(default)]
    accessor: String,
    #[serde(default, deserialize_with = "fields::duration")]
    increment: Duration,
}

#[derive(Clone, Copy)]
enum Path {
    Create,
    CreateOrphan,
    CreateRole,
    Lookup,
    LookupSelf,
    LookupAccessor,
    Renew,
    RenewSelf,
    RenewAccessor,
    Revoke,
    RevokeSelf,
    RevokeOrphan,
    RevokeAccessor,
    Roles,
    Role,
    Accessors,
    Tidy,
}

fn route_path(p: &str) -> Option<(Path, &str)> {
    let p = p.trim_end_matches('/');
    Some(match p {
        "create" => (Path::Create, ""),
        "create-orphan" => (Path::CreateOrphan, ""),
        "lookup" => (Path::Lookup, ""),
        "lookup-self" => (Path::LookupSelf, ""),
        "lookup-accessor" => (Path::LookupAccessor, ""),
        "renew" => (Path::Renew, ""),
        "renew-self" => (Path::RenewSelf, ""),
        "renew-accessor" => (Path::RenewAccessor, ""),
        "revoke" => (Path::Revoke, ""),
        "revoke-self" => (Path::RevokeSelf, ""),
        "revoke-orphan" => (Path::RevokeOrphan, ""),
        "revoke-accessor" => (Path::RevokeAccessor, ""),
        "roles" => (Path::Roles, ""),
        "accessors" => (Path::Accessors, ""),
        "tidy" => (Path::Tidy, ""),
        _ => {
            if let Some(r) = p.strip_prefix("create/") {
                (Path::CreateRole, r)
            } else if let Some(r) = p.strip_prefix("roles/") {
                (Path::Role, r)
            } else {
                // No `lookup/<token>`: a token in the path would reach the
                // audit log and the access logs in clear.
                return None;
            }
        }
    })
}

fn caller_entry(caller: &Caller) -> Result<&Arc<TokenEntry>, CoreError> {
    caller.entry.as_ref().ok_or(CoreError::PermissionDenied)
}

/// Serve `auth/token/<path>`.
pub(crate) async fn handle(
    st: &Unsealed,
    route: &Route,
    caller: &Caller,
    req: &Request,
) -> Result<Reply, CoreError> {
    let (which, arg) = route_path(&req.path).ok_or(CoreError::UnsupportedPath)?;
    let op = req.operation;
    let write = matches!(op, Operation::Create | Operation::Update);
    let read_or_write = write || op == Operation::Read;
    match which {
        Path::Create | Path::CreateOrphan | Path::CreateRole if write => {
            let body: CreateRequest = req.parse()?;
            let role = if matches!(which, Path::CreateRole) {
                Some(
                    st.tokens
                        .role(arg)
                        .await?
                        .ok_or_else(|| CoreError::BadRequest(format!("unknown role {arg}")))?,
                )
            } else {
                None
            };
            let orphan = matches!(which, Path::CreateOrphan);
            create(st, route, caller, body, orphan, role).await
        }
        Path::Lookup if read_or_write => {
            let token = req.parse::<TokenField>()?.token;
            if token.is_empty() {
                return Err(CoreError::BadRequest("missing token to lookup".into()));
            }
            // Vault answers an unknown token with 403 ("bad token").
            let entry = st
                .tokens
                .lookup(&token)
                .await?
                .ok_or_else(|| CoreError::Forbidden("bad token".into()))?;
            Ok(Reply::Resp(Some(lookup_response(&entry, &token))))
        }
        Path::LookupSelf if read_or_write => {
            let entry = caller_entry(caller)?;
            // The caller already holds its token; lookup-self shows its id
            // like Vault, and the id is the token itself.
            let token = req_token(req, caller);
            Ok(Reply::Resp(Some(lookup_response(entry, &token))))
        }
        Path::LookupAccessor if write => {
            let acc = req.parse::<AccessorField>()?.accessor;
            let entry = st
                .tokens
                .lookup_accessor(&acc)
                .await?
                .ok_or_else(|| CoreError::BadRequest("invalid accessor".into()))?;
            Ok(Reply::Resp(Some(lookup_response(&entry, ""))))
        }
        Path::Renew | Path::RenewSelf | Path::RenewAccessor if write => {
            let body: RenewRequest = req.parse()?;
            let entry = match which {
                Path::RenewSelf => caller_entry(caller)?.clone(),
                Path::Renew => {
                    if body.token.is_empty() {
                        return Err(CoreError::BadRequest("missing token".into()));
                    }
                    st.tokens
                        .lookup(&body.token)
                        .await?
                        .ok_or_else(|| CoreError::BadRequest("token not found".into()))?
                }
                _ => st
                    .tokens
                    .lookup_accessor(&body.accessor)
                    .await?
                    .ok_or_else(|| CoreError::BadRequest("invalid accessor".into()))?,
            };
            let renewed = renew(st, &entry, body.increment, req).await?;
            let token = if matches!(which, Path::RenewAccessor) {
                String::new()
            } else if matches!(which, Path::Renew) {
                body.token
            } else {
                req_token(req, caller)
            };
            Ok(Reply::Auth(Box::new(auth_info(&renewed, &token))))
        }
        Path::Revoke | Path::RevokeSelf | Path::RevokeOrphan | Path::RevokeAccessor if write => {
            let entry = match which {
                Path::RevokeSelf => Some(caller_entry(caller)?.clone()),
                // Unlike a token, an unknown accessor is an error (Vault:
                // 400 "invalid accessor").
                Path::RevokeAccessor => {
                    let acc = req.parse::<AccessorField>()?.accessor;
                    if acc.is_empty() {
                        return Err(CoreError::BadRequest("missing accessor".into()));
                    }
                    Some(
                        st.tokens
                            .lookup_accessor(&acc)
                            .await?
                            .ok_or_else(|| CoreError::BadRequest("invalid accessor".into()))?,
                    )
                }
                _ => {
                    let t = req.parse::<TokenField>()?.token;
                    if t.is_empty() {
                        return Err(CoreError::BadRequest("missing token".into()));
                    }
                    st.tokens.lookup(&t).await?
                }
            };
            // Vault answers 204 for an unknown token too: revocation is idempotent.
            if let Some(e) = entry {
                if matches!(which, Path::RevokeOrphan) {
                    st.tokens.orphan_children(&e.hash).await?;
                }
                revoke_tree(st, &e.hash).await?;
            }
            Ok(Reply::Resp(None))
        }
        Path::Roles if op == Operation::List => {
            let roles = st.tokens.roles().await?;
            Ok(Reply::Resp(
                (!roles.is_empty()).then(|| Response::list(roles)),
            ))
        }
        Path::Role => match op {
            Operation::Read => Ok(Reply::Resp(match st.tokens.role(arg).await? {
                Some(r) => Some(Response::with_data(&r)?),
                None => None,
            })),
            Operation::Create | Operation::Update => {
                if arg.is_empty() || arg.contains('/') {
                    return Err(CoreError::BadRequest("invalid role name".into()));
                }
                let mut merged = match st.tokens.role(arg).await? {
                    Some(existing) => match serde_json::to_value(existing)? {
                        Value::Object(m) => m,
                        _ => Map::new(),
                    },
                    None => Map::new(),
                };
                for (k, v) in &req.data {
                    let key = match k.as_str() {
                        // Legacy names Vault still accepts.
                        "period" => "token_period",
                        "explicit_max_ttl" => "token_explicit_max_ttl",
                        "bound_cidrs" => "token_bound_cidrs",
                        k => k,
                    };
                    let v = match key {
                        "token_period"
                        | "token_explicit_max_ttl"
                        | "token_ttl"
                        | "token_max_ttl" => {
                            let d: Duration = fields::duration(v.clone())
                                .map_err(|e| CoreError::BadRequest(format!("{key}: {e}")))?;
                            json!(d.as_secs())
                        }
                        _ => v.clone(),
                    };
                    merged.insert(key.to_string(), v);
                }
                merged.insert("name".into(), json!(arg));
                let mut role: TokenRole = serde_json::from_value(Value::Object(merged))
                    .map_err(|e| CoreError::BadRequest(format!("invalid role: {e}")))?;
                role.allowed_policies = normalize_policies(&role.allowed_policies);
                role.disallowed_policies = normalize_policies(&role.disallowed_policies);
                parse_cidrs(&role.token_bound_cidrs)?;
                st.tokens.put_role(&role).await?;
                Ok(Reply::Resp(None))
            }
            Operation::Delete => {
                st.tokens.delete_role(arg).await?;
                Ok(Reply::Resp(None))
            }
            _ => Err(CoreError::UnsupportedOperation),
        },
        Path::Accessors if op == Operation::List => {
            let keys = st.tokens.accessors().await?;
            Ok(Reply::Resp(Some(Response::list(keys))))
        }
        Path::Tidy if write => {
            let n = st.tokens.tidy().await?;
            tracing::info!(cleaned = n, "token tidy finished");
            let mut m = Map::new();
            m.insert("cleaned".into(), json!(n));
            let mut resp = Response::data(m).warning("Tidy operation successfully started. Any information from the operation will be printed to Vault's server logs.");
            // Vault answers 202 Accepted.
            resp.status = Some(202);
            Ok(Reply::Resp(Some(resp)))
        }
        _ => Err(CoreError::UnsupportedOperation),
    }
}

/// The raw token of the request, for answers that echo it (lookup-self).
fn req_token(_req: &Request, caller: &Caller) -> String {
    caller
        .token
        .as_deref()
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn lookup_response(e: &TokenEntry, token: &str) -> Response {
    let n = now();
    let mut m = Map::new();
    m.insert("accessor".into(), json!(e.accessor));
    m.insert("creation_time".into(), json!(e.creation_time));
    m.insert("creation_ttl".into(), json!(e.creation_ttl));
    m.insert("display_name".into(), json!(e.display_name));
    m.insert("entity_id".into(), json!(e.entity_id));
    m.insert(
        "expire_time".into(),
        if e.expire_time == 0 {
            Value::Null
        } else {
            json!(rfc3339(e.expire_time))
        },
    );
    m.insert("explicit_max_ttl".into(), json!(e.explicit_max_ttl));
    m.insert("id".into(), json!(token));
    m.insert("issue_time".into(), json!(rfc3339(e.creation_time)));
    m.insert(
        "meta".into(),
        if e.meta.is_empty() {
            Value::Null
        } else {
            json!(e.meta)
        },
    );
    m.insert("num_uses".into(), json!(e.num_uses));
    m.insert("orphan".into(), json!(e.parent.is_empty()));
    m.insert("path".into(), json!(e.path));
    m.insert("policies".into(), json!(e.policies));
    m.insert("renewable".into(), json!(e.renewable));
    m.insert("ttl".into(), json!(e.ttl(n)));
    m.insert("type".into(), json!("service"));
    if e.period > 0 {
        m.insert("period".into(), json!(e.period));
    }
    if !e.role.is_empty() {
        m.insert("role".into(), json!(e.role));
    }
    if !e.bound_cidrs.is_empty() {
        m.insert("bound_cidrs".into(), json!(e.bound_cidrs));
    }
    Response::data(m)
}

fn auth_info(e: &TokenEntry, token: &str) -> AuthInfo {
    let token_policies: Vec<String> = e.policies.clone();
    AuthInfo {
        client_token: token.to_string(),
        accessor: e.accessor.clone(),
        policies: e.policies.clone(),
        token_policies,
        identity_policies: None,
        metadata: (!e.meta.is_empty()).then(|| e.meta.clone()),
        lease_duration: e.ttl(now()),
        renewable: e.renewable,
        entity_id: e.entity_id.clone(),
        token_type: "service".into(),
        orphan: e.parent.is_empty(),
        mfa_requirement: None,
        num_uses: e.num_uses,
    }
}

async fn create(
    st: &Unsealed,
    route: &Route,
    caller: &Caller,
    body: CreateRequest,
    orphan_endpoint: bool,
    role: Option<TokenRole>,
) -> Result<Reply, CoreError> {
    let parent = caller_entry(caller)?;
    let parent_root = parent.is_root();
    let privileged = parent_root || caller.sudo;
    if let Some(t) = body.token_type.as_deref() {
        if !t.is_empty() && t != "service" && t != "default" {
            return Err(CoreError::BadRequest(format!(
                "token type {t:?} is not supported; use \"service\""
            )));
        }
    }
    if body.id.is_some() && !parent_root {
        return Err(CoreError::BadRequest(
            "root or sudo privileges required to specify token id".into(),
        ));
    }
    let orphan = orphan_endpoint || role.as_ref().is_some_and(|r| r.orphan) || body.no_parent;
    if body.no_parent && !privileged && !orphan_endpoint {
        return Err(CoreError::BadRequest(
            "root or sudo privileges required to create orphan token".into(),
        ));
    }
    let parent_policies: Vec<String> = parent.policies.clone();
    let requested = body.policies.clone().map(|p| normalize_policies(&p));
    let no_default =
        body.no_default_policy || role.as_ref().is_some_and(|r| r.token_no_default_policy);
    let policies = match &role {
        Some(r) => {
            let req = requested.unwrap_or_else(|| {
                if r.allowed_policies.is_empty() {
                    parent_policies
                        .iter()
                        .filter(|p| *p != "root")
                        .cloned()
                        .collect()
                } else {
                    r.allowed_policies.clone()
                }
            });
            for p in &req {
                if r.disallowed_policies.contains(p) {
                    return Err(CoreError::BadRequest(format!(
                        "token policy {p:?} is disallowed by this role"
                    )));
                }
                if !r.allowed_policies.is_empty()
                    && p != "default"
                    && !r.allowed_policies.contains(p)
                {
                    return Err(CoreError::BadRequest(format!(
                        "token policies ({p}) must be subset of the role's allowed policies"
                    )));
                }
            }
            if req.iter().any(|p| p == "root") && !parent_root {
                return Err(CoreError::BadRequest(
                    "root tokens may not be created from a role by a non-root token".into(),
                ));
            }
            req
        }
        None => {
            let req = requested.unwrap_or_else(|| parent_policies.clone());
            if !parent_root {
                for p in &req {
                    if p != "default" && !parent_policies.contains(p) {
                        return Err(CoreError::BadRequest(format!(
                            "child policies must be subset of parent: {p:?} is not in the parent token's policies"
                        )));
                    }
                }
            }
            req
        }
    };
    let policies = with_default(policies, no_default);
    let is_root = policies.iter().any(|p| p == "root");

    let period = if body.period.is_zero() {
        Duration::from_secs(role.as_ref().map(|r| r.token_period).unwrap_or(0))
    } else {
        if !privileged && role.is_none() {
            return Err(CoreError::BadRequest(
                "root or sudo privileges required to create periodic token".into(),
            ));
        }
        body.period
    };
    let mut explicit_max = body.explicit_max_ttl;
    if let Some(r) = &role {
        if r.token_explicit_max_ttl > 0 {
            let rm = Duration::from_secs(r.token_explicit_max_ttl);
            explicit_max = if explicit_max.is_zero() {
                rm
            } else {
                explicit_max.min(rm)
            };
        }
    }
    let ttl = if body.ttl.is_zero() {
        Duration::from_secs(role.as_ref().map(|r| r.token_ttl).unwrap_or(0))
    } else {
        body.ttl
    };
    let mut mount_max = route.system.max_lease_ttl();
    if let Some(r) = &role {
        if r.token_max_ttl > 0 {
            mount_max = mount_max.min(Duration::from_secs(r.token_max_ttl));
        }
    }
    let n = now();
    let never = is_root && ttl.is_zero() && explicit_max.is_zero() && period.is_zero();
    let plan = plan_ttl(
        n,
        ttl,
        explicit_max,
        period,
        route.system.default_lease_ttl(),
        mount_max,
        never,
    );

    let token = match body.id {
        Some(id) if !id.is_empty() => {
            if id.contains(char::is_whitespace) || id.len() > 256 {
                return Err(CoreError::BadRequest("invalid token id".into()));
            }
            if st.tokens.lookup(&id).await?.is_some() {
                return Err(CoreError::BadRequest(
                    "cannot create a token with a duplicate ID".into(),
                ));
            }
            Zeroizing::new(id)
        }
        _ => generate_token()?,
    };
    let mut bound = body.bound_cidrs.unwrap_or_default();
    if let Some(r) = &role {
        if bound.is_empty() {
            bound = r.token_bound_cidrs.clone();
        }
    }
    let display = body.display_name.unwrap_or_default();
    let path = match &role {
        Some(r) if !r.path_suffix.is_empty() => {
            format!("auth/token/create/{}/{}", r.name, r.path_suffix)
        }
        Some(r) => format!("auth/token/create/{}", r.name),
        None if orphan_endpoint => "auth/token/create-orphan".into(),
        None => "auth/token/create".into(),
    };
    let renewable = body.renewable.unwrap_or(true) && role.as_ref().is_none_or(|r| r.renewable);
    let mut entry = TokenEntry {
        hash: st.tokens.hash(&token),
        accessor: random_base62(24)?,
        parent: if orphan {
            String::new()
        } else {
            parent.hash.clone()
        },
        policies,
        meta: body.meta.unwrap_or_default(),
        display_name: if display.is_empty() {
            "token".into()
        } else {
            format!("token-{}", display.trim())
        },
        num_uses: if body.num_uses > 0 {
            body.num_uses
        } else {
            role.as_ref().map(|r| r.token_num_uses).unwrap_or(0)
        },
        creation_time: n,
        creation_ttl: plan.ttl.as_secs(),
        expire_time: plan.expire_time,
        explicit_max_ttl: explicit_max.as_secs(),
        max_expire_time: plan.max_expire_time,
        period: period.as_secs(),
        renewable: renewable && !never,
        path,
        role: role.map(|r| r.name).unwrap_or_default(),
        lease_id: String::new(),
        bound_cidrs: parse_cidrs(&bound)?,
        entity_id: String::new(),
        auth: None,
    };
    persist_with_lease(st, &mut entry).await?;
    Ok(Reply::Auth(Box::new(auth_info(&entry, &token))))
}

/// Store a new token and, when it expires, its lease.
async fn persist_with_lease(st: &Unsealed, entry: &mut TokenEntry) -> Result<(), CoreError> {
    if entry.expire_time != 0 {
        entry.lease_id = format!("{}/{}", entry.path, entry.hash);
    }
    st.tokens.store(entry).await?;
    if entry.expire_time != 0 {
        let lease = LeaseEntry {
            lease_id: entry.lease_id.clone(),
            path: entry.path.clone(),
            token_hash: String::new(),
            secret: None,
            is_token: true,
            issue_time: entry.creation_time,
            expire_time: entry.expire_time,
            max_expire_time: entry.max_expire_time,
            last_renewal_time: 0,
            renewable: entry.renewable,
            revoke_attempts: 0,
            last_error: String::new(),
        };
        if let Err(e) = st.expiration.register(lease).await {
            // No half-made token: without its lease it would never expire.
            let _ = st.tokens.remove(entry).await;
            return Err(e);
        }
    }
    Ok(())
}

/// Store a token built elsewhere in the core (wrapping tokens).
pub(crate) async fn store_with_lease(
    st: &Unsealed,
    mut entry: TokenEntry,
) -> Result<TokenEntry, CoreError> {
    persist_with_lease(st, &mut entry).await?;
    Ok(entry)
}

/// A root token, from init, generate-root or `--dev-root-token-id`.
pub(crate) async fn create_root_token(
    st: &Unsealed,
    id: Option<String>,
) -> Result<Zeroizing<String>, CoreError> {
    let token = match id {
        Some(id) if !id.is_empty() => Zeroizing::new(id),
        _ => generate_token()?,
    };
    let entry = TokenEntry {
        hash: st.tokens.hash(&token),
        accessor: random_base62(24)?,
        policies: vec!["root".into()],
        display_name: "root".into(),
        creation_time: now(),
        path: "auth/token/root".into(),
        ..Default::default()
    };
    st.tokens.store(&entry).await?;
    Ok(token)
}

/// Mint the token of a successful login.
pub(crate) async fn create_from_auth(
    st: &Unsealed,
    route: &Route,
    path: &str,
    auth: tresor_sdk::Auth,
    _remote: Option<IpAddr>,
) -> Result<AuthInfo, CoreError> {
    let policies = with_default(normalize_policies(&auth.policies), auth.no_default_policy);
    if policies.iter().any(|p| p == "root") {
        return Err(CoreError::BadRequest(
            "auth methods may not issue root tokens".into(),
        ));
    }
    let n = now();
    let mut max = route.system.max_lease_ttl();
    if !auth.lease.max_ttl.is_zero() {
        max = max.min(auth.lease.max_ttl);
    }
    let plan = plan_ttl(
        n,
        auth.lease.ttl,
        auth.explicit_max_ttl,
        auth.period,
        route.system.default_lease_ttl(),
        max,
        false,
    );
    let token = generate_token()?;
    let mount_name = route
        .entry()
        .path
        .trim_start_matches("auth/")
        .trim_end_matches('/')
        .replace('/', "-");
    let mut entry = TokenEntry {
        hash: st.tokens.hash(&token),
        accessor: random_base62(24)?,
        parent: String::new(),
        policies,
        meta: auth.metadata.clone(),
        display_name: if auth.display_name.is_empty() {
            mount_name
        } else {
            format!("{mount_name}-{}", auth.display_name)
        },
        num_uses: auth.num_uses,
        creation_time: n,
        creation_ttl: plan.ttl.as_secs(),
        expire_time: plan.expire_time,
        explicit_max_ttl: auth.explicit_max_ttl.as_secs(),
        max_expire_time: plan.max_expire_time,
        period: auth.period.as_secs(),
        renewable: auth.lease.renewable,
        path: path.trim_end_matches('/').to_string(),
        role: String::new(),
        lease_id: String::new(),
        bound_cidrs: parse_cidrs(&auth.bound_cidrs)?,
        entity_id: String::new(),
        auth: Some(auth),
    };
    persist_with_lease(st, &mut entry).await?;
    Ok(auth_info(&entry, &token))
}

/// Renew a token: periodic tokens get a fresh period, others the increment
/// (or their original TTL), never past their maximum.
async fn renew(
    st: &Unsealed,
    entry: &TokenEntry,
    increment: Duration,
    caller_req: &Request,
) -> Result<TokenEntry, CoreError> {
    if entry.expire_time == 0 {
        // Tokens that never expire renew to themselves, like Vault's root.
        return Ok(entry.clone());
    }
    if !entry.renewable {
        return Err(CoreError::BadRequest("lease is not renewable".into()));
    }
    let n = now();
    let mut wanted = if entry.period > 0 {
        Duration::from_secs(entry.period)
    } else if increment.is_zero() {
        Duration::from_secs(entry.creation_ttl.max(1))
    } else {
        increment
    };
    // A token from an auth method renews only if its method agrees (the
    // role may be gone, the certificate different).
    if let Some(auth) = &entry.auth {
        if let Some(ttl) = backend_renew(st, entry, auth, increment, caller_req).await? {
            if entry.period == 0 && !ttl.is_zero() {
                wanted = wanted.min(ttl);
            }
        }
    }
    let mut new_expire = n.saturating_add(wanted.as_secs() as i64);
    if entry.max_expire_time != 0 {
        new_expire = new_expire.min(entry.max_expire_time);
    }
    if entry.period > 0 && entry.explicit_max_ttl > 0 {
        new_expire = new_expire.min(entry.creation_time + entry.explicit_max_ttl as i64);
    }
    let mut updated = entry.clone();
    updated.expire_time = new_expire.max(n);
    st.tokens.update(&updated).await?;
    if !updated.lease_id.is_empty() {
        st.expiration
            .set_expiry(&updated.lease_id, updated.expire_time)
            .await?;
    }
    Ok(updated)
}

/// Ask the auth backend that issued a token whether it may be renewed;
/// returns the TTL it grants (None: no opinion on the TTL).
async fn backend_renew(
    st: &Unsealed,
    entry: &TokenEntry,
    auth: &tresor_sdk::Auth,
    increment: Duration,
    caller_req: &Request,
) -> Result<Option<Duration>, CoreError> {
    let Some((route, rel)) = st.router.resolve(&entry.path) else {
        return Err(CoreError::BadRequest(
            "the auth method that issued this token is no longer mounted".into(),
        ));
    };
    let Handler::Backend(backend) = &route.handler else {
        return Ok(None);
    };
    let mut req = Request::new(Operation::Renew, rel);
    req.id = caller_req.id.clone();
    req.mount_point = route.entry().path;
    req.remote_addr = caller_req.remote_addr;
    req.peer_certificates = caller_req.peer_certificates.clone();
    req.headers = caller_req.headers.clone();
    req.client_token_id = Some(entry.hash.clone());
    req.display_name = entry.display_name.clone();
    req.policies = entry.policies.clone();
    let mut auth = auth.clone();
    auth.lease.increment = increment;
    auth.lease.issue_time = entry.creation_time;
    req.auth = Some(auth);
    match backend.handle(&req, &*route.storage).await {
        Ok(Some(Response { auth: Some(a), .. })) => Ok(Some(a.lease.ttl)),
        Ok(_) => Ok(None),
        Err(
            tresor_sdk::BackendError::UnsupportedOperation
            | tresor_sdk::BackendError::UnsupportedPath,
        ) => Err(CoreError::BadRequest(
            "this auth method does not support token renewal".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Spend one use of a limited token; true when that was its last.
pub(crate) async fn spend_use(st: &Unsealed, entry: &TokenEntry) -> Result<bool, CoreError> {
    let Some(mut current) = st.tokens.get_any(&entry.hash).await? else {
        return Err(CoreError::PermissionDenied);
    };
    if current.num_uses == 0 {
        return Ok(false);
    }
    current.num_uses -= 1;
    if current.num_uses == 0 {
        // Marked as used up; the pipeline revokes it after this request.
        current.num_uses = 0;
        current.expire_time = now();
        st.tokens.update(&current).await?;
        return Ok(true);
    }
    st.tokens.update(&current).await?;
    Ok(false)
}

/// Revoke a token and everything hanging on it: its children (first), the
/// leases they created, their cubbyholes.
pub(crate) async fn revoke_tree(st: &Unsealed, hash: &str) -> Result<(), CoreError> {
    let mut order = Vec::new();
    let mut stack = vec![hash.to_string()];
    let mut seen = std::collections::HashSet::new();
    while let Some(h) = stack.pop() {
        if !seen.insert(h.clone()) {
            continue;
        }
        for c in st.tokens.children(&h).await? {
            stack.push(c);
        }
        order.push(h);
    }
    let cubbyholes: Vec<Arc<Route>> = st
        .router
        .all()
        .into_iter()
        .filter(|r| r.entry().mount_type == "cubbyhole" && matches!(r.handler, Handler::Backend(_)))
        .collect();
    for h in order.iter().rev() {
        let Some(e) = st.tokens.get_any(h).await? else {
            continue;
        };
        st.expiration.revoke_by_token(h).await?;
        for r in &cubbyholes {
            let keys = r.storage.list_recursive(&format!("{h}/")).await?;
            for chunk in keys.chunks(256) {
                r.storage
                    .batch(
                        chunk
                            .iter()
                            .map(|k| StorageOp::Delete { key: k.clone() })
                            .collect(),
                    )
                    .await?;
            }
        }
        st.tokens.remove(&e).await?;
        if !e.lease_id.is_empty() {
            st.expiration.remove(&e.lease_id).await?;
        }
    }
    Ok(())
}
