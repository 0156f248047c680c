//! The simple API: a small REST façade over KV v2 and token login, for
//! callers that don't want Vault's envelope. Every call is mapped onto
//! requests to `Core::handle` with the caller's token, so tokens, ACLs and
//! audit apply unchanged: there is no second authorization path here.
//!
//! | route | core requests |
//! | --- | --- |
//! | `GET /api/v1/secrets/{path}` | read `<mount>/data/{path}`; during a grace period also `<mount>/data/{path}?version=<previous_version>` |
//! | `PUT /api/v1/secrets/{path}` | write `<mount>/data/{path}` |
//! | `POST /api/v1/secrets/{path}/rotate` | write `<mount>/rotate/{path}` |
//! | `POST /api/v1/auth/login` | write `auth/<mount>/login` (`login/<username>` for userpass and ldap); `token`: read `auth/token/lookup-self` |
//!
//! `<mount>` is `secret` or `?mount=`. The `previous` block comes from the
//! secret's own answer: during a rotation's grace period KV v2 names the
//! retired version in the current version's `metadata`
//! (`previous_version`, `grace_until`), and that version is read from the
//! same path. So whoever may read `<mount>/data/{path}` gets `previous`,
//! and no other path (the rotation rule at `<mount>/rotation/{path}` in
//! particular) needs to be granted. Errors are `{"error": "..."}` with the
//! status the one mapping in `error::core_error` chose.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tresor_core::core::ResponseBody;
use tresor_core::{CoreError, CoreRequest, CoreResponse};
use tresor_sdk::{Map, Operation};

use crate::error::ApiError;
use crate::request;
use crate::{AppState, ConnInfo};

const DEFAULT_MOUNT: &str = "secret";

/// The façade's error body, `{"error": "..."}`, around the status and
/// message `error::core_error` (or a local check) decided.
struct SimpleError(ApiError);

impl IntoResponse for SimpleError {
    fn into_response(self) -> Response {
        let status = self.0.status;
        let msg = if self.0.errors.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase()
        } else {
            self.0.errors.join("; ")
        };
        (status, axum::Json(json!({ "error": msg }))).into_response()
    }
}

fn core_request(
    operation: Operation,
    path: String,
    data: Map,
    headers: &HeaderMap,
    conn: Option<&ConnInfo>,
) -> CoreRequest {
    let mut req = CoreRequest::new(operation, path);
    req.data = data;
    req.token = request::token(headers);
    req.headers = Some(request::headers(headers.clone()));
    if let Some(conn) = conn {
        req.remote_addr = conn.remote.map(|a| a.ip());
        req.peer_certificates = conn.peer_certificates.as_ref().clone();
    }
    req
}

/// The `data` of an enveloped answer, or `None`.
fn envelope_data(resp: CoreResponse) -> Option<Value> {
    match resp.body {
        ResponseBody::Envelope(env) => env.data,
        ResponseBody::Json(v) => Some(v),
        _ => None,
    }
}

/// The `data` of a KV v2 `data/<path>` read.
#[derive(Debug, Deserialize)]
struct KvRead {
    /// `null` for a deleted or destroyed version.
    #[serde(default)]
    data: Option<Map>,
    #[serde(default)]
    metadata: KvVersionMeta,
}

#[derive(Debug, Default, Deserialize)]
struct KvVersionMeta {
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    created_time: Option<String>,
    /// Present only while the version a rotation replaced is in its grace
    /// period.
    #[serde(default)]
    previous_version: Option<u64>,
}

/// Reads `<mount>/data/{path}` (at `version`, or the latest) with the
/// caller's token; `Ok(None)` when that version is deleted or destroyed.
async fn read_version(
    state: &AppState,
    t: &Target<'_>,
    version: Option<u64>,
) -> Result<Option<(Map, KvVersionMeta)>, ApiError> {
    let mut q = Map::new();
    if let Some(v) = version {
        q.insert("version".into(), json!(v));
    }
    let resp =
        crate::logical::handle_detached(&state.core, t.request(Operation::Read, "data", q)).await?;
    let Some(data) = envelope_data(resp) else {
        return Err(CoreError::NotFound.into());
    };
    // Not the answer of a KV v2 engine: `?mount=` names another kind.
    let read: KvRead = serde_json::from_value(data)
        .map_err(|_| ApiError::bad_request(format!("{} is not a KV version 2 mount", t.mount)))?;
    Ok(read.data.map(|d| (d, read.metadata)))
}

pub(crate) async fn secret(State(state): State<AppState>, req: Request) -> Response {
    match secret_inner(&state, req).await {
        Ok(r) => r,
        Err(e) => SimpleError(e).into_response(),
    }
}

/// The KV mount of a request: `?mount=` or `secret`, without slashes.
fn mount_of(uri: &http::Uri) -> Result<String, ApiError> {
    let pairs = request::query_pairs(uri)?;
    let raw = pairs
        .iter()
        .rev()
        .find(|(k, _)| k == "mount")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_MOUNT);
    let mount = request::normalize_path(raw.trim_matches('/'))?;
    let mount = mount.trim_matches('/').to_string();
    if mount.is_empty() {
        return Err(ApiError::bad_request("mount: must not be empty"));
    }
    Ok(mount)
}

/// Where a secret's answer lives, for the JSON bodies.
struct Target<'a> {
    mount: &'a str,
    path: &'a str,
    headers: &'a HeaderMap,
    conn: Option<&'a ConnInfo>,
}

impl Target<'_> {
    fn request(&self, op: Operation, segment: &str, data: Map) -> CoreRequest {
        core_request(
            op,
            format!("{}/{segment}/{}", self.mount, self.path),
            data,
            self.headers,
            self.conn,
        )
    }
}

async fn secret_inner(state: &AppState, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let raw = parts
        .uri
        .path()
        .strip_prefix("/api/v1/secrets/")
        .unwrap_or_default();
    let path = request::normalize_path(raw)?;
    let mut path = path.trim_end_matches('/').to_string();
    let rotate = parts.method == Method::POST;
    if rotate {
        path = match path.strip_suffix("/rotate") {
            Some(p) => p.to_string(),
            None => return Err(ApiError::method_not_allowed()),
        };
    }
    if path.is_empty() {
        return Err(ApiError::bad_request("missing secret path"));
    }
    let mount = mount_of(&parts.uri)?;
    let t = Target {
        mount: &mount,
        path: &path,
        headers: &parts.headers,
        conn: parts.extensions.get::<ConnInfo>(),
    };
    let shown_mount = format!("{mount}/");

    match parts.method {
        Method::GET => {
            // KV v2 answers a deleted or destroyed version without data.
            let (secret, meta) = read_version(state, &t, None)
                .await?
                .ok_or_else(|| ApiError::from(CoreError::NotFound))?;
            let mut out = json!({
                "path": path,
                "mount": shown_mount,
                "version": meta.version,
                "created_time": meta.created_time,
                "data": secret,
            });
            if let Some(prev) = previous(state, &t, &meta).await {
                out["previous"] = prev;
            }
            Ok(axum::Json(out).into_response())
        }
        Method::PUT => {
            let bytes = request::read_body(&parts.headers, body, state.max_request_size).await?;
            let mut body = request::parse_json_object(&bytes, state.max_json_depth)?;
            // `{"data": {...}}` or the secret itself.
            let secret = match body.remove("data") {
                Some(Value::Object(inner)) if body.is_empty() => inner,
                Some(other) => {
                    body.insert("data".into(), other);
                    body
                }
                None => body,
            };
            let mut data = Map::new();
            data.insert("data".into(), Value::Object(secret));
            let out = envelope_data(
                crate::logical::handle_detached(
                    &state.core,
                    t.request(Operation::Update, "data", data),
                )
                .await?,
            )
            .unwrap_or(Value::Null);
            Ok(axum::Json(json!({
                "version": out.get("version").cloned().unwrap_or(Value::Null),
            }))
            .into_response())
        }
        Method::POST => {
            let bytes = request::read_body(&parts.headers, body, state.max_request_size).await?;
            // An empty body rotates by the secret's rule.
            let body = if bytes.iter().all(u8::is_ascii_whitespace) {
                Map::new()
            } else {
                request::parse_json_object(&bytes, state.max_json_depth)?
            };
            let out = envelope_data(
                crate::logical::handle_detached(
                    &state.core,
                    t.request(Operation::Update, "rotate", body),
                )
                .await?,
            )
            .unwrap_or(Value::Null);
            Ok(axum::Json(json!({
                "path": path,
                "mount": shown_mount,
                "version": out.get("version").cloned().unwrap_or(Value::Null),
                "created_time": out.get("created_time").cloned().unwrap_or(Value::Null),
            }))
            .into_response())
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// `{"version", "data"}` of the version a rotation replaced, while its
/// grace period runs (as the current version's metadata says); `None`
/// otherwise, or when that version cannot be read (its grace period ended
/// between the two reads).
async fn previous(state: &AppState, t: &Target<'_>, current: &KvVersionMeta) -> Option<Value> {
    let version = current.previous_version.filter(|v| *v > 0)?;
    match read_version(state, t, Some(version)).await {
        Ok(Some((secret, _))) => Some(json!({ "version": version, "data": secret })),
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(status = %e.status, "simple api: previous version not readable");
            None
        }
    }
}

pub(crate) async fn login(State(state): State<AppState>, req: Request) -> Response {
    match login_inner(&state, req).await {
        Ok(r) => r,
        Err(e) => SimpleError(e).into_response(),
    }
}

/// Where a method logs in, under `auth/<mount>/`.
///
/// The mount is a path and is checked as one. The username of userpass and
/// ldap is a name taken from JSON, not a piece of URL: it is appended as
/// it is (no percent-decoding, which would make `al%69ce` log in as
/// `alice`), and one holding a `/` or a control character is refused
/// rather than allowed to name another path.
fn login_path(method: &str, mount: &str, body: &Map) -> Result<String, ApiError> {
    let base = request::normalize_path(&format!("auth/{mount}"))?;
    match method {
        "userpass" | "ldap" => {
            let user = match body.get("username") {
                Some(Value::String(u)) if !u.trim().is_empty() => u.trim(),
                _ => return Err(ApiError::bad_request("missing 'username'")),
            };
            if user.contains('/')
                || user == "."
                || user == ".."
                || user.chars().any(char::is_control)
            {
                return Err(ApiError::bad_request("invalid 'username'"));
            }
            Ok(format!("{base}/login/{user}"))
        }
        _ => Ok(format!("{base}/login")),
    }
}

async fn login_inner(state: &AppState, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = request::read_body(&parts.headers, body, state.max_request_size).await?;
    let mut body = request::parse_json_object(&bytes, state.max_json_depth)?;
    let method = match body.remove("method") {
        Some(Value::String(m)) if !m.is_empty() => m,
        _ => return Err(ApiError::bad_request("missing 'method'")),
    };
    let conn = parts.extensions.get::<ConnInfo>();
    if method == "token" {
        let token = match body.get("token") {
            Some(Value::String(t)) if !t.is_empty() => t.clone(),
            _ => return Err(ApiError::bad_request("missing 'token'")),
        };
        let mut creq = core_request(
            Operation::Read,
            "auth/token/lookup-self".into(),
            Map::new(),
            &parts.headers,
            conn,
        );
        creq.token = Some(token.clone());
        let data = envelope_data(crate::logical::handle_detached(&state.core, creq).await?)
            .unwrap_or(Value::Null);
        return Ok(axum::Json(json!({
            "token": token,
            "accessor": data.get("accessor").cloned().unwrap_or(Value::Null),
            "policies": data.get("policies").cloned().unwrap_or(json!([])),
            "expires_at": data
                .get("expire_time")
                .and_then(Value::as_str)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| rfc3339_secs(t.with_timezone(&chrono::Utc))),
        }))
        .into_response());
    }
    if !matches!(
        method.as_str(),
        "kubernetes" | "jwt" | "oidc" | "approle" | "userpass" | "aws" | "cert" | "ldap"
    ) {
        return Err(ApiError::bad_request(format!(
            "unknown auth method {method:?}"
        )));
    }
    let mount = match body.remove("mount") {
        Some(Value::String(m)) if !m.trim_matches('/').is_empty() => {
            m.trim_matches('/').to_string()
        }
        Some(Value::String(_)) | None => method.clone(),
        Some(_) => return Err(ApiError::bad_request("'mount' must be a string")),
    };
    let path = login_path(&method, &mount, &body)?;
    if matches!(method.as_str(), "userpass" | "ldap") {
        body.remove("username");
    }
    if !state.core.is_sealed() && !state.core.is_login_path(&path) {
        return Err(ApiError::bad_request(format!(
            "auth method {method:?} is not enabled at auth/{mount}/"
        )));
    }
    let mut creq = core_request(Operation::Update, path, body, &parts.headers, conn);
    // A login carries no token: the method's own fields prove the identity.
    creq.token = None;
    let resp = crate::logical::handle_detached(&state.core, creq).await?;
    let auth = match resp.body {
        ResponseBody::Envelope(env) => env.auth,
        _ => None,
    }
    .ok_or_else(|| {
        ApiError::bad_request(format!(
            "auth method {method:?} at auth/{mount}/ returned no token"
        ))
    })?;
    // Zero: a token that does not expire (`null`, as for the root token).
    let expires_at = i64::try_from(auth.lease_duration)
        .ok()
        .filter(|secs| *secs > 0)
        .and_then(|secs| chrono::Utc::now().checked_add_signed(chrono::Duration::seconds(secs)))
        .map(rfc3339_secs);
    Ok(axum::Json(json!({
        "token": auth.client_token,
        "accessor": auth.accessor,
        "policies": auth.policies,
        "expires_at": expires_at,
    }))
    .into_response())
}

/// `expires_at`, the same for every method: RFC 3339, UTC, to the second.
fn rfc3339_secs(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(crate) async fn health(State(state): State<AppState>) -> Response {
    let h = state.core.health().await;
    let (status, label) = if !h.initialized {
        (StatusCode::SERVICE_UNAVAILABLE, "uninitialized")
    } else if h.sealed {
        (StatusCode::SERVICE_UNAVAILABLE, "sealed")
    } else {
        (StatusCode::OK, "ok")
    };
    (
        status,
        axum::Json(json!({
            "status": label,
            "initialized": h.initialized,
            "sealed": h.sealed,
        })),
    )
        .into_response()
}
