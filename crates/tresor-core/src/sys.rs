//! The `sys/` backend: mounts, auth methods, policies, capabilities, audit,
//! leases, key rotation, seal, metrics. Core-internal: it needs the core's
//! own state, so it is not an SDK backend, but it runs inside the same
//! pipeline (token, ACL, audit) as every other mount.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tresor_sdk::{fields, Map, Operation, Request, Response, StorageExt, StorageOp};

use crate::core::{
    is_system_type, new_entry, Caller, Core, CoreResponse, Reply, ResponseBody, Unsealed,
};
use crate::mount::{normalize_mount_path, MountConfig, MountEntry, Table};
use crate::policy::Acl;
use crate::CoreError;

fn data(v: Value) -> Reply {
    match v {
        Value::Object(m) => Reply::Resp(Some(Response::data(m))),
        _ => Reply::Resp(None),
    }
}

fn rfc3339(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[derive(Debug, Default, Deserialize)]
struct MountConfigInput {
    #[serde(default, deserialize_with = "fields::duration")]
    default_lease_ttl: Duration,
    #[serde(default, deserialize_with = "fields::duration")]
    max_lease_ttl: Duration,
    #[serde(default, deserialize_with = "fields::boolean")]
    force_no_cache: bool,
    #[serde(default)]
    listing_visibility: Option<String>,
    #[serde(default, deserialize_with = "fields::opt_string_list")]
    passthrough_request_headers: Option<Vec<String>>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    options: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
struct MountInput {
    #[serde(rename = "type", default)]
    mount_type: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    config: MountConfigInput,
    #[serde(default)]
    options: BTreeMap<String, String>,
    /// Vault: the mount is not replicated. Kept and reported; a single
    /// cluster has nothing to replicate.
    #[serde(default, deserialize_with = "fields::boolean")]
    local: bool,
    /// Vault: seal-wrap the mount's critical values. Kept and reported;
    /// every value already goes through the barrier.
    #[serde(default, deserialize_with = "fields::boolean")]
    seal_wrap: bool,
}

/// Mount-entry flags that only describe the mount (nothing changes how it
/// serves), given at enable time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MountFlags {
    pub(crate) local: bool,
    pub(crate) seal_wrap: bool,
}

#[derive(Debug, Default, Deserialize)]
struct RemountInput {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

#[derive(Debug, Default, Deserialize)]
struct PolicyInput {
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    rules: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct CapabilitiesInput {
    #[serde(default)]
    token: String,
    #[serde(default)]
    accessor: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default, deserialize_with = "fields::opt_string_list")]
    paths: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct AuditInput {
    #[serde(rename = "type", default)]
    device_type: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    options: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "fields::boolean")]
    local: bool,
}

#[derive(Debug, Default, Deserialize)]
struct LeaseInput {
    #[serde(default)]
    lease_id: String,
    #[serde(default, deserialize_with = "fields::duration")]
    increment: Duration,
}

impl LeaseInput {
    /// The body's `lease_id`, else the one in the URL
    /// (`sys/leases/renew/<lease_id>`), as Vault picks them.
    fn parse_with_url(req: &Request, url_lease_id: &str) -> Result<LeaseInput, CoreError> {
        let mut input: LeaseInput = req.parse()?;
        if input.lease_id.is_empty() {
            input.lease_id = url_lease_id.trim_end_matches('/').to_string();
        }
        if input.lease_id.is_empty() {
            return Err(CoreError::BadRequest("lease_id must be specified".into()));
        }
        Ok(input)
    }
}

/// Serve `sys/<path>`.
pub(crate) async fn handle(
    core: &Core,
    st: &Unsealed,
    caller: &Caller,
    req: &Request,
) -> Result<Reply, CoreError> {
    let path = req.path.as_str();
    let op = req.operation;
    let write = matches!(op, Operation::Create | Operation::Update);
    let trimmed = path.trim_end_matches('/');

    // Mounts.
    if trimmed == "mounts" && op == Operation::Read {
        return Ok(list_mounts(st, Table::Logical));
    }
    if let Some(rest) = path.strip_prefix("mounts/") {
        if let Some(p) = rest
            .strip_suffix("/tune")
            .or_else(|| rest.strip_suffix("/tune/"))
        {
            return tune(st, Table::Logical, p, req).await;
        }
        return mount_op(core, st, Table::Logical, rest, req).await;
    }
    if trimmed == "auth" && op == Operation::Read {
        return Ok(list_mounts(st, Table::Credential));
    }
    if let Some(rest) = path.strip_prefix("auth/") {
        if let Some(p) = rest
            .strip_suffix("/tune")
            .or_else(|| rest.strip_suffix("/tune/"))
        {
            return tune(st, Table::Credential, p, req).await;
        }
        return mount_op(core, st, Table::Credential, rest, req).await;
    }
    if trimmed == "remount" && write {
        return remount(st, req).await;
    }
    if let Some(id) = path.strip_prefix("remount/status/") {
        return Ok(data(
            json!({"migration_id": id, "migration_info": {"status": "success"}}),
        ));
    }
    if trimmed == "internal/ui/mounts" && op == Operation::Read {
        // Without a token (the core lets that through here only), the
        // mounts tuned `listing_visibility=unauth`, as in Vault.
        let acl = match caller.entry {
            Some(_) => Some(caller_acl(st, caller).await?),
            None => None,
        };
        return Ok(data(json!({
            "secret": visible_mounts(st, Table::Logical, acl.as_deref()),
            "auth": visible_mounts(st, Table::Credential, acl.as_deref()),
        })));
    }
    if let Some(p) = path.strip_prefix("internal/ui/mounts/") {
        // An unknown mount is refused like one the token cannot reach, as
        // in Vault, so this path cannot be used to probe for mounts.
        let (route, _) = st
            .router
            .resolve(p)
            .or_else(|| st.router.resolve(&format!("auth/{p}")))
            .ok_or(CoreError::PermissionDenied)?;
        let e = route.entry();
        if !caller_acl(st, caller).await?.reaches_mount(&e.path) {
            return Err(CoreError::PermissionDenied);
        }
        let mut out = serde_json::to_value(e.output())?;
        if let Value::Object(m) = &mut out {
            m.insert("path".into(), json!(e.path));
        }
        return Ok(data(out));
    }

    // Policies.
    if trimmed == "policy" && matches!(op, Operation::Read | Operation::List) {
        let names = st.policies.list().await?;
        return Ok(data(json!({"keys": names, "policies": names})));
    }
    if let Some(name) = path.strip_prefix("policy/") {
        return policy_op(st, name, req, "rules").await;
    }
    if trimmed == "policies/acl" && matches!(op, Operation::List | Operation::Read) {
        // `root` included, as Vault lists it.
        let names = st.policies.list().await?;
        return Ok(Reply::Resp(Some(Response::list(names))));
    }
    if let Some(name) = path.strip_prefix("policies/acl/") {
        return policy_op(st, name, req, "policy").await;
    }

    // Capabilities.
    if matches!(
        trimmed,
        "capabilities" | "capabilities-self" | "capabilities-accessor"
    ) && write
    {
        let input: CapabilitiesInput = req.parse()?;
        let entry = match trimmed {
            "capabilities-self" => caller.entry.clone().ok_or(CoreError::PermissionDenied)?,
            "capabilities" => {
                if input.token.is_empty() {
                    caller.entry.clone().ok_or(CoreError::PermissionDenied)?
                } else {
                    st.tokens
                        .lookup(&input.token)
                        .await?
                        .ok_or_else(|| CoreError::BadRequest("invalid token".into()))?
                }
            }
            _ => st
                .tokens
                .lookup_accessor(&input.accessor)
                .await?
                .ok_or_else(|| CoreError::BadRequest("invalid accessor".into()))?,
        };
        let mut paths = input.paths.unwrap_or_default();
        if let Some(p) = input.path {
            paths.push(p);
        }
        if paths.is_empty() {
            return Err(CoreError::BadRequest("missing paths".into()));
        }
        let acl = st.policies.acl(&entry.policies).await?;
        let mut out = Map::new();
        let mut all: Vec<String> = Vec::new();
        for p in &paths {
            let caps = acl.capabilities(p.trim_start_matches('/'));
            all.extend(caps.iter().cloned());
            out.insert(p.clone(), json!(caps));
        }
        if paths.len() == 1 {
            all.sort();
            all.dedup();
            out.insert("capabilities".into(), json!(all));
        }
        return Ok(Reply::Resp(Some(Response::data(out))));
    }

    // Audit.
    if trimmed == "audit" && op == Operation::Read {
        let mut m = Map::new();
        for d in st.audit.list() {
            let key = format!("{}/", d.path.trim_end_matches('/'));
            m.insert(key, serde_json::to_value(&d)?);
        }
        return Ok(Reply::Resp(Some(Response::data(m))));
    }
    if let Some(p) = path.strip_prefix("audit/") {
        let p = p.trim_end_matches('/');
        return match op {
            Operation::Create | Operation::Update => {
                let input: AuditInput = req.parse()?;
                if input.device_type.is_empty() {
                    return Err(CoreError::BadRequest(
                        "audit device type is required ('type')".into(),
                    ));
                }
                st.audit
                    .enable(
                        p,
                        &input.device_type,
                        &input.description,
                        input.options,
                        input.local,
                    )
                    .await?;
                Ok(Reply::Resp(None))
            }
            Operation::Delete => {
                st.audit.disable(p).await?;
                Ok(Reply::Resp(None))
            }
            _ => Err(CoreError::UnsupportedOperation),
        };
    }
    if let Some(p) = path.strip_prefix("audit-hash/") {
        #[derive(Deserialize)]
        struct HashInput {
            #[serde(default)]
            input: String,
        }
        let input: HashInput = req.parse()?;
        let hash = st.audit.hash(p.trim_end_matches('/'), &input.input).await?;
        return Ok(data(json!({ "hash": hash })));
    }

    // Keyring and seal.
    if trimmed == "rotate" && write {
        core.barrier.rotate().await?;
        return Ok(Reply::Resp(None));
    }
    if trimmed == "key-status" && op == Operation::Read {
        let ks = core.barrier.key_status()?;
        return Ok(data(json!({
            "term": ks.term,
            "install_time": rfc3339(ks.install_time),
            "encryptions": ks.encryptions,
        })));
    }
    if trimmed == "seal" && write {
        core.seal_now().await?;
        return Ok(Reply::Resp(None));
    }
    if trimmed == "step-down" && write {
        // A single active node has nobody to step down to.
        return Ok(Reply::Resp(None));
    }

    // Leases.
    if let Some(rest) = path.strip_prefix("leases/") {
        return leases(st, rest, req).await;
    }
    match trimmed {
        "renew" => return leases(st, "renew", req).await,
        "revoke" => return leases(st, "revoke", req).await,
        _ => {}
    }
    if path.starts_with("renew/") || path.starts_with("revoke/") {
        return leases(st, path, req).await;
    }
    if let Some(p) = path.strip_prefix("revoke-prefix/") {
        return leases(st, &format!("revoke-prefix/{p}"), req).await;
    }
    if let Some(p) = path.strip_prefix("revoke-force/") {
        return leases(st, &format!("revoke-force/{p}"), req).await;
    }

    // Quotas.
    if trimmed == "quotas/config" {
        return match op {
            Operation::Read => Ok(data(serde_json::to_value(st.quotas.config())?)),
            Operation::Create | Operation::Update => {
                let mut merged = match serde_json::to_value(st.quotas.config())? {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                for (k, v) in &req.data {
                    merged.insert(k.clone(), v.clone());
                }
                let cfg: crate::quota::QuotaConfig = serde_json::from_value(Value::Object(merged))
                    .map_err(|e| CoreError::BadRequest(format!("invalid quota config: {e}")))?;
                st.quotas.set_config(cfg).await?;
                Ok(Reply::Resp(None))
            }
            _ => Err(CoreError::UnsupportedOperation),
        };
    }
    if trimmed == "quotas/rate-limit" && op == Operation::List {
        let names = st.quotas.names();
        return Ok(Reply::Resp(
            (!names.is_empty()).then(|| Response::list(names)),
        ));
    }
    if let Some(name) = path.strip_prefix("quotas/rate-limit/") {
        let name = name.trim_end_matches('/');
        return match op {
            Operation::Read => Ok(match st.quotas.get(name) {
                Some(q) => data(json!({
                    "name": q.name,
                    "path": q.path,
                    "role": q.role,
                    "type": "rate-limit",
                    "rate": q.rate,
                    "interval": q.interval,
                    "block_interval": q.block_interval,
                })),
                None => Reply::Resp(None),
            }),
            Operation::Create | Operation::Update => {
                st.quotas.put(name, req.parse()?).await?;
                Ok(Reply::Resp(None))
            }
            Operation::Delete => {
                st.quotas.delete(name).await?;
                Ok(Reply::Resp(None))
            }
            _ => Err(CoreError::UnsupportedOperation),
        };
    }

    // Password policies.
    if trimmed == "policies/password" && op == Operation::List {
        let names = st.passwords.names();
        return Ok(Reply::Resp(
            (!names.is_empty()).then(|| Response::list(names)),
        ));
    }
    if let Some(rest) = path.strip_prefix("policies/password/") {
        return password_policy_op(st, rest.trim_end_matches('/'), req).await;
    }

    // Response wrapping.
    if let Some(op) = path.strip_prefix("wrapping/") {
        return crate::wrapping::handle(st, caller, req, op.trim_end_matches('/'), caller.wrap_ttl)
            .await;
    }

    // Metrics.
    if trimmed == "metrics" && op == Operation::Read {
        let format = req.data.get("format").and_then(Value::as_str).unwrap_or("");
        // Gauges of the core's state, taken when scraped rather than kept
        // up to date on every change.
        metrics::gauge!("tresor_expire_num_leases").set(st.expiration.len() as f64);
        metrics::gauge!("tresor_core_mount_table_num_entries", "type" => "logical")
            .set(st.router.entries(Table::Logical).len() as f64);
        metrics::gauge!("tresor_core_mount_table_num_entries", "type" => "auth")
            .set(st.router.entries(Table::Credential).len() as f64);
        metrics::gauge!("tresor_audit_num_devices").set(st.audit.list().len() as f64);
        let text = core.cfg.metrics.as_ref().map(|m| m()).unwrap_or_default();
        if format == "prometheus" {
            return Ok(Reply::Body(CoreResponse {
                status: 200,
                body: ResponseBody::Raw {
                    content_type: "text/plain; version=0.0.4".into(),
                    body: text.into_bytes(),
                },
            }));
        }
        return Ok(Reply::Body(CoreResponse {
            status: 200,
            body: ResponseBody::Json(
                json!({ "Gauges": [], "Counters": [], "Samples": [], "Timestamp": rfc3339(crate::token::now()) }),
            ),
        }));
    }
    Err(CoreError::UnsupportedPath)
}

fn mounts_map(st: &Unsealed, table: Table) -> Map {
    let mut m = Map::new();
    for e in st.router.entries(table) {
        if let Ok(v) = serde_json::to_value(e.output()) {
            m.insert(e.listed_path().to_string(), v);
        }
    }
    m
}

/// Mounts of `table` the caller may see in `sys/internal/ui/mounts`.
fn visible_mounts(st: &Unsealed, table: Table, acl: Option<&Acl>) -> Map {
    let mut m = Map::new();
    for e in st.router.entries(table) {
        let unauth = e.config.listing_visibility.as_deref() == Some("unauth");
        if !unauth && !acl.is_some_and(|acl| acl.reaches_mount(&e.path)) {
            continue;
        }
        if let Ok(v) = serde_json::to_value(e.output()) {
            m.insert(e.listed_path().to_string(), v);
        }
    }
    m
}

/// The caller's ACL, which answers which mounts it can reach
/// ([`Acl::reaches_mount`]).
async fn caller_acl(st: &Unsealed, caller: &Caller) -> Result<Arc<Acl>, CoreError> {
    let entry = caller.entry.as_ref().ok_or(CoreError::PermissionDenied)?;
    st.policies.acl(&entry.policies).await
}

fn list_mounts(st: &Unsealed, table: Table) -> Reply {
    Reply::Resp(Some(Response::data(mounts_map(st, table))))
}

fn mount_path_for(table: Table, p: &str) -> Result<String, CoreError> {
    let p = normalize_mount_path(p)?;
    Ok(match table {
        Table::Logical => p,
        Table::Credential => format!("auth/{p}"),
    })
}

async fn mount_op(
    core: &Core,
    st: &Unsealed,
    table: Table,
    rest: &str,
    req: &Request,
) -> Result<Reply, CoreError> {
    let full = mount_path_for(table, rest)?;
    match req.operation {
        Operation::Read => {
            let route = st.router.get(&full).ok_or(CoreError::NotFound)?;
            Ok(data(serde_json::to_value(route.entry().output())?))
        }
        Operation::Create | Operation::Update => {
            let input: MountInput = req.parse()?;
            if input.mount_type.is_empty() {
                return Err(CoreError::BadRequest(
                    "mount type is required ('type')".into(),
                ));
            }
            let (ty, mut options) = (input.mount_type.clone(), input.options.clone());
            let ty = match ty.as_str() {
                "kv-v2" => {
                    options.insert("version".into(), "2".into());
                    "kv".to_string()
                }
                _ => ty,
            };
            if let Some(o) = input.config.options.clone() {
                options.extend(o);
            }
            let config = MountConfig {
                default_lease_ttl: input.config.default_lease_ttl.as_secs(),
                max_lease_ttl: input.config.max_lease_ttl.as_secs(),
                force_no_cache: input.config.force_no_cache,
                listing_visibility: input.config.listing_visibility.clone(),
                passthrough_request_headers: input
                    .config
                    .passthrough_request_headers
                    .clone()
                    .unwrap_or_default(),
            };
            let flags = MountFlags {
                local: input.local,
                seal_wrap: input.seal_wrap,
            };
            mount(
                core,
                st,
                table,
                &full,
                &ty,
                &input.description,
                config,
                options,
                flags,
            )
            .await?;
            Ok(Reply::Resp(None))
        }
        Operation::Delete => {
            unmount(st, table, &full).await?;
            Ok(Reply::Resp(None))
        }
        _ => Err(CoreError::UnsupportedOperation),
    }
}

/// Enable a secrets engine or auth method at `path`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn mount(
    core: &Core,
    st: &Unsealed,
    table: Table,
    path: &str,
    ty: &str,
    description: &str,
    config: MountConfig,
    options: BTreeMap<String, String>,
    flags: MountFlags,
) -> Result<(), CoreError> {
    let _g = st.mount_lock.lock().await;
    if is_system_type(ty) || ty == "cubbyhole" && st.router.get("cubbyhole/").is_some() {
        return Err(CoreError::BadRequest(format!(
            "cannot mount another backend of type {ty:?}"
        )));
    }
    let reserved: &[&str] = match table {
        Table::Logical => &["sys/", "auth/", "cubbyhole/", "identity/"],
        Table::Credential => &["auth/token/"],
    };
    if reserved.iter().any(|r| path.starts_with(r)) {
        return Err(CoreError::BadRequest(format!(
            "cannot mount at reserved path {path:?}"
        )));
    }
    if let Some(existing) = st.router.conflict(path) {
        return Err(CoreError::BadRequest(format!(
            "path is already in use at {existing}"
        )));
    }
    if max_exceeds(&config) {
        return Err(CoreError::BadRequest(
            "default_lease_ttl must not exceed max_lease_ttl".into(),
        ));
    }
    let mut entry = new_entry(table, path, ty, description)?;
    entry.config = config;
    entry.options = options;
    entry.local = flags.local;
    entry.seal_wrap = flags.seal_wrap;
    let mut entries: Vec<MountEntry> = st
        .storage
        .get_json(table.storage_key())
        .await?
        .unwrap_or_default();
    core.mount_route(st, entry.clone()).await?;
    entries.push(entry);
    if let Err(e) = st.storage.put_json(table.storage_key(), &entries).await {
        // Not persisted: the mount must not serve either.
        st.router.remove(path);
        return Err(e.into());
    }
    Ok(())
}

fn max_exceeds(c: &MountConfig) -> bool {
    c.max_lease_ttl != 0 && c.default_lease_ttl > c.max_lease_ttl
}

/// Disable a mount: revoke its leases, drop its data.
async fn unmount(st: &Unsealed, table: Table, path: &str) -> Result<(), CoreError> {
    let _g = st.mount_lock.lock().await;
    let Some(route) = st.router.get(path) else {
        // Vault answers success for a path that is not mounted.
        return Ok(());
    };
    let entry = route.entry();
    if is_system_type(&entry.mount_type) || entry.mount_type == "cubbyhole" {
        return Err(CoreError::BadRequest(format!(
            "cannot unmount {:?}",
            entry.path
        )));
    }
    st.expiration.revoke_prefix(path, true).await?;
    if let crate::mount::Handler::Backend(b) = &route.handler {
        if let Err(e) = b.cleanup(&*route.storage).await {
            tracing::warn!(path = %path, error = %e, "backend cleanup failed");
        }
    }
    let mut entries: Vec<MountEntry> = st
        .storage
        .get_json(table.storage_key())
        .await?
        .unwrap_or_default();
    entries.retain(|e| e.path != path);
    st.storage.put_json(table.storage_key(), &entries).await?;
    st.router.remove(path);
    let keys = route.storage.list_recursive("").await?;
    for chunk in keys.chunks(256) {
        route
            .storage
            .batch(
                chunk
                    .iter()
                    .map(|k| StorageOp::Delete { key: k.clone() })
                    .collect(),
            )
            .await?;
    }
    Ok(())
}

async fn tune(st: &Unsealed, table: Table, p: &str, req: &Request) -> Result<Reply, CoreError> {
    let full = mount_path_for(table, p)?;
    let route = st
        .router
        .get(&full)
        .ok_or_else(|| CoreError::BadRequest(format!("no mount at {full}")))?;
    match req.operation {
        Operation::Read => {
            let e = route.entry();
            let mut out = json!({
                "default_lease_ttl": if e.config.default_lease_ttl == 0 { route.system.server_default.as_secs() } else { e.config.default_lease_ttl },
                "max_lease_ttl": if e.config.max_lease_ttl == 0 { route.system.server_max.as_secs() } else { e.config.max_lease_ttl },
                "force_no_cache": e.config.force_no_cache,
                "description": e.description,
            });
            if !e.options.is_empty() {
                out["options"] = json!(e.options);
            }
            if !e.config.passthrough_request_headers.is_empty() {
                out["passthrough_request_headers"] = json!(e.config.passthrough_request_headers);
            }
            Ok(data(out))
        }
        Operation::Create | Operation::Update => {
            let _g = st.mount_lock.lock().await;
            let input: MountConfigInput = req.parse()?;
            let mut e = route.entry();
            if req.data.contains_key("default_lease_ttl") {
                e.config.default_lease_ttl = input.default_lease_ttl.as_secs();
            }
            if req.data.contains_key("max_lease_ttl") {
                e.config.max_lease_ttl = input.max_lease_ttl.as_secs();
            }
            if max_exceeds(&e.config) {
                return Err(CoreError::BadRequest(
                    "default_lease_ttl must not exceed max_lease_ttl".into(),
                ));
            }
            if let Some(d) = input.description {
                e.description = d;
            }
            if let Some(v) = input.listing_visibility {
                e.config.listing_visibility = Some(v);
            }
            if let Some(v) = input.passthrough_request_headers {
                e.config.passthrough_request_headers = v;
            }
            if let Some(o) = input.options {
                if let Some(v) = o.get("version") {
                    if e.options.get("version").is_some_and(|cur| cur != v) {
                        return Err(CoreError::BadRequest("changing the KV version of a mount requires an upgrade, which is not supported".into()));
                    }
                }
                e.options.extend(o);
            }
            let mut entries: Vec<MountEntry> = st
                .storage
                .get_json(table.storage_key())
                .await?
                .unwrap_or_default();
            for x in entries.iter_mut() {
                if x.path == e.path {
                    *x = e.clone();
                }
            }
            st.storage.put_json(table.storage_key(), &entries).await?;
            *route.system.config.write() = e.config.clone();
            *route.entry.write() = e;
            Ok(Reply::Resp(None))
        }
        _ => Err(CoreError::UnsupportedOperation),
    }
}

async fn remount(st: &Unsealed, req: &Request) -> Result<Reply, CoreError> {
    let input: RemountInput = req.parse()?;
    let (from, to) = (
        normalize_mount_path(&input.from)?,
        normalize_mount_path(&input.to)?,
    );
    let _g = st.mount_lock.lock().await;
    let route = st
        .router
        .get(&from)
        .ok_or_else(|| CoreError::BadRequest(format!("no mount at {from}")))?;
    let mut e = route.entry();
    if is_system_type(&e.mount_type) || e.mount_type == "cubbyhole" {
        return Err(CoreError::BadRequest(format!("cannot remount {from:?}")));
    }
    if (e.table == Table::Credential) != to.starts_with("auth/") {
        return Err(CoreError::BadRequest(
            "cannot move a mount between secrets engines and auth methods".into(),
        ));
    }
    if st.router.get(&to).is_some() || st.router.conflict(&to).is_some_and(|c| c != from) {
        return Err(CoreError::BadRequest(format!(
            "path already in use at {to}"
        )));
    }
    for r in ["sys/", "cubbyhole/", "identity/", "auth/token/"] {
        if to.starts_with(r) {
            return Err(CoreError::BadRequest(format!(
                "cannot remount to reserved path {to:?}"
            )));
        }
    }
    // Leases name their path; those of the old path are revoked rather than
    // left pointing at a mount that no longer exists.
    st.expiration.revoke_prefix(&from, true).await?;
    let table = e.table;
    let mut entries: Vec<MountEntry> = st
        .storage
        .get_json(table.storage_key())
        .await?
        .unwrap_or_default();
    e.path = to.clone();
    for x in entries.iter_mut() {
        if x.path == from {
            *x = e.clone();
        }
    }
    st.storage.put_json(table.storage_key(), &entries).await?;
    st.router.remove(&from);
    *route.entry.write() = e;
    st.router.insert(route);
    let id = uuid::Uuid::new_v4().to_string();
    Ok(data(json!({ "migration_id": id })))
}

async fn policy_op(
    st: &Unsealed,
    name: &str,
    req: &Request,
    field: &str,
) -> Result<Reply, CoreError> {
    let name = name.trim_end_matches('/');
    match req.operation {
        Operation::Read => match st.policies.get(name).await? {
            Some(p) => {
                let mut m = Map::new();
                m.insert("name".into(), json!(p.name));
                m.insert(field.into(), json!(p.raw));
                Ok(Reply::Resp(Some(Response::data(m))))
            }
            None => Ok(Reply::Resp(None)),
        },
        Operation::Create | Operation::Update => {
            let input: PolicyInput = req.parse()?;
            let text = input.policy.or(input.rules).ok_or_else(|| {
                CoreError::BadRequest("'policy' parameter not supplied or empty".into())
            })?;
            st.policies.set(name, &text).await?;
            Ok(Reply::Resp(None))
        }
        Operation::Delete => {
            st.policies.delete(name).await?;
            Ok(Reply::Resp(None))
        }
        _ => Err(CoreError::UnsupportedOperation),
    }
}

fn lease_json(l: &crate::expiration::LeaseEntry) -> Value {
    let now = crate::token::now();
    json!({
        "id": l.lease_id,
        "issue_time": rfc3339(l.issue_time),
        "expire_time": if l.expire_time == 0 { Value::Null } else { json!(rfc3339(l.expire_time)) },
        "last_renewal": if l.last_renewal_time == 0 { Value::Null } else { json!(rfc3339(l.last_renewal_time)) },
        "renewable": l.renewable,
        "ttl": if l.expire_time == 0 { 0 } else { (l.expire_time - now).max(0) },
        "revoke_attempts": l.revoke_attempts,
        "last_revoke_error": if l.last_error.is_empty() { Value::Null } else { json!(l.last_error) },
    })
}

async fn leases(st: &Unsealed, rest: &str, req: &Request) -> Result<Reply, CoreError> {
    let op = req.operation;
    let write = matches!(op, Operation::Create | Operation::Update);
    let trimmed = rest.trim_end_matches('/');
    if trimmed == "lookup" && write {
        let input: LeaseInput = req.parse()?;
        let l = st
            .expiration
            .lookup(&input.lease_id)
            .await?
            .ok_or_else(|| CoreError::BadRequest("invalid lease".into()))?;
        return Ok(data(lease_json(&l)));
    }
    if let Some(prefix) = rest
        .strip_prefix("lookup/")
        .or_else(|| (rest == "lookup/" || trimmed == "lookup").then_some(""))
    {
        if op == Operation::List {
            let keys = st.expiration.list(prefix).await?;
            return Ok(Reply::Resp(
                (!keys.is_empty()).then(|| Response::list(keys)),
            ));
        }
    }
    let renew_url = rest.strip_prefix("renew/");
    if (trimmed == "renew" || renew_url.is_some()) && write {
        let input = LeaseInput::parse_with_url(req, renew_url.unwrap_or_default())?;
        let l = st
            .expiration
            .renew(&input.lease_id, input.increment)
            .await?;
        let lease_duration = (l.expire_time - crate::token::now()).max(0);
        return Ok(Reply::Body(CoreResponse {
            status: 200,
            body: ResponseBody::Json(json!({
                "request_id": req.id,
                "lease_id": l.lease_id,
                "renewable": l.renewable,
                "lease_duration": lease_duration,
                "data": null,
                "wrap_info": null,
                "warnings": null,
                "auth": null,
            })),
        }));
    }
    let revoke_url = rest.strip_prefix("revoke/");
    if (trimmed == "revoke" || revoke_url.is_some()) && write {
        let input = LeaseInput::parse_with_url(req, revoke_url.unwrap_or_default())?;
        st.expiration.revoke(&input.lease_id).await?;
        return Ok(Reply::Resp(None));
    }
    if let Some(prefix) = rest.strip_prefix("revoke-prefix/") {
        if write {
            st.expiration.revoke_prefix(prefix, false).await?;
            return Ok(Reply::Resp(None));
        }
    }
    if let Some(prefix) = rest.strip_prefix("revoke-force/") {
        if write {
            st.expiration.revoke_prefix(prefix, true).await?;
            return Ok(Reply::Resp(None));
        }
    }
    if trimmed == "tidy" && write {
        let n = st.expiration.tidy().await?;
        tracing::info!(cleaned = n, "lease tidy finished");
        return Ok(Reply::Resp(Some(
            Response::default().warning("Tidy operation successfully started. Any information from the operation will be printed to Vault's server logs."),
        )));
    }
    Err(CoreError::UnsupportedPath)
}

#[derive(Debug, Default, Deserialize)]
struct PasswordPolicyInput {
    #[serde(default)]
    policy: String,
}

/// `sys/policies/password/<name>` and `.../<name>/generate`.
async fn password_policy_op(st: &Unsealed, rest: &str, req: &Request) -> Result<Reply, CoreError> {
    if rest.is_empty() && req.operation == Operation::List {
        let names = st.passwords.names();
        return Ok(Reply::Resp(
            (!names.is_empty()).then(|| Response::list(names)),
        ));
    }
    if let Some(name) = rest.strip_suffix("/generate") {
        if req.operation != Operation::Read {
            return Err(CoreError::UnsupportedOperation);
        }
        let password = st.passwords.generate(Some(name))?;
        return Ok(data(json!({ "password": password.as_str() })));
    }
    match req.operation {
        Operation::Read => Ok(match st.passwords.get(rest) {
            Some(text) => data(json!({ "policy": text })),
            None => Reply::Resp(None),
        }),
        Operation::Create | Operation::Update => {
            let input: PasswordPolicyInput = req.parse()?;
            if input.policy.trim().is_empty() {
                return Err(CoreError::BadRequest(
                    "'policy' parameter not supplied or empty".into(),
                ));
            }
            st.passwords.put(rest, &input.policy).await?;
            Ok(Reply::Resp(None))
        }
        Operation::Delete => {
            st.passwords.delete(rest).await?;
            Ok(Reply::Resp(None))
        }
        _ => Err(CoreError::UnsupportedOperation),
    }
}
