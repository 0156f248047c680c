//! The simple API: a small REST façade over KV v2 and token login, for
//! callers that don't want Vault's envelope. Every call is mapped onto
//! requests to `Core::handle` with the caller's token, so tokens, ACLs and
//! audit apply unchanged: there is no second authorization path here.
//!
//! | route | core requests |
//! | --- | --- |
//! | `GET /api/v1/secrets/{path}` | read `<mount>/data/{path}`; then `<mount>/rotation/{path}` and, during a grace period, `<mount>/data/{path}?version=N-1` |
//! | `PUT /api/v1/secrets/{path}` | write `<mount>/data/{path}` |
//! | `POST /api/v1/secrets/{path}/rotate` | write `<mount>/rotate/{path}` |
//!
//! `<mount>` is `secret` or `?mount=`. The `previous` block is built from
//! the rotation record read with the caller's own token, so a token that
//! may read the secret but not `<mount>/rotation/{path}` simply gets no
//! `previous` block. Errors are `{"error": "..."}` with the status the one
//! mapping in `error::core_error` chose.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode};
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
    req.headers = request::forwarded_headers(headers);
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
            let data = envelope_data(
                crate::logical::handle_detached(
                    &state.core,
                    t.request(Operation::Read, "data", Map::new()),
                )
                .await?,
            )
            .ok_or_else(|| ApiError::from(CoreError::NotFound))?;
            let secret = data.get("data").cloned().unwrap_or(Value::Null);
            if secret.is_null() {
                // KV v2 answers a deleted or destroyed version without data.
                return Err(CoreError::NotFound.into());
            }
            let meta = data.get("metadata").cloned().unwrap_or(Value::Null);
            let mut out = json!({
                "path": path,
                "mount": shown_mount,
                "version": meta.get("version").cloned().unwrap_or(Value::Null),
                "created_time": meta.get("created_time").cloned().unwrap_or(Value::Null),
                "data": secret,
            });
            if let Some(prev) = previous(state, &t).await {
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
/// grace period runs; `None` otherwise, or when the caller may not see it.
async fn previous(state: &AppState, t: &Target<'_>) -> Option<Value> {
    let rotation = match crate::logical::handle_detached(
        &state.core,
        t.request(Operation::Read, "rotation", Map::new()),
    )
    .await
    {
        Ok(r) => envelope_data(r)?,
        Err(e) => {
            tracing::debug!(error = ?e, "simple api: no rotation state for the previous block");
            return None;
        }
    };
    if rotation.get("in_grace_period") != Some(&Value::Bool(true)) {
        return None;
    }
    let version = rotation
        .get("previous_version")
        .and_then(Value::as_u64)
        .filter(|v| *v > 0)?;
    let mut q = Map::new();
    q.insert("version".into(), json!(version));
    let data = envelope_data(
        crate::logical::handle_detached(&state.core, t.request(Operation::Read, "data", q))
            .await
            .ok()?,
    )?;
    let secret = data.get("data").filter(|d| !d.is_null())?.clone();
    Some(json!({ "version": version, "data": secret }))
}

pub(crate) async fn login(State(state): State<AppState>, req: Request) -> Response {
    match login_inner(&state, req).await {
        Ok(r) => r,
        Err(e) => SimpleError(e).into_response(),
    }
}

/// Where a method logs in by default, relative to its mount.
fn login_path(method: &str, mount: &str, body: &Map) -> Result<String, ApiError> {
    match method {
        "userpass" | "ldap" => {
            let user = match body.get("username") {
                Some(Value::String(u)) if !u.trim().is_empty() => u.trim(),
                _ => return Err(ApiError::bad_request("missing 'username'")),
            };
            Ok(format!("auth/{mount}/login/{user}"))
        }
        _ => Ok(format!("auth/{mount}/login")),
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
            "expires_at": data.get("expire_time").cloned().unwrap_or(Value::Null),
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
    let path = request::normalize_path(&path)?;
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
    let expires_at = (auth.lease_duration > 0).then(|| {
        chrono::Utc::now()
            .checked_add_signed(chrono::Duration::seconds(auth.lease_duration as i64))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    });
    Ok(axum::Json(json!({
        "token": auth.client_token,
        "accessor": auth.accessor,
        "policies": auth.policies,
        "expires_at": expires_at.flatten(),
    }))
    .into_response())
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
