//! `/v1/*path`: Vault's API. Sealed-mode `sys/` routes go to [`crate::sys`];
//! everything else becomes a [`CoreRequest`] for `Core::handle`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use http::{header, HeaderValue, Method, StatusCode};
use serde_json::Value;
use tresor_core::core::ResponseBody;
use tresor_core::{CoreRequest, CoreResponse};
use tresor_sdk::Operation;

use crate::error::ApiError;
use crate::request::{self, DataSource};
use crate::{sys, AppState, ConnInfo};

/// `/v1/*path`; every other path nothing else routes is a 404. The
/// router's fallback.
pub(crate) async fn handle(State(state): State<AppState>, req: Request) -> Response {
    let conn = req.extensions().get::<ConnInfo>().cloned();
    serve(&state, req, conn.as_ref()).await
}

/// [`handle`], for a request that arrived on `conn`.
pub(crate) async fn serve(state: &AppState, req: Request, conn: Option<&ConnInfo>) -> Response {
    if req
        .uri()
        .path()
        .strip_prefix("/v1/")
        .is_none_or(str::is_empty)
    {
        return crate::layers::not_found().await.into_response();
    }
    match handle_inner(state, req, conn).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

fn is_ocsp_request(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/ocsp-request"))
}

/// Vault takes a PATCH only as a JSON merge patch (RFC 7396) and answers
/// any other media type 415, before reading the body.
fn check_merge_patch(headers: &http::HeaderMap) -> Result<(), ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("<not text>"))
        .unwrap_or("");
    // Parameters (`; charset=utf-8`) do not change the media type.
    let media_type = value.split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case("application/merge-patch+json") {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("PATCH requires Content-Type of application/merge-patch+json, got {media_type:?}"),
    ))
}

async fn handle_inner(
    state: &AppState,
    req: Request,
    conn: Option<&ConnInfo>,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let raw = parts.uri.path().strip_prefix("/v1/").unwrap_or_default();
    let path = request::normalize_path(raw)?;
    let pairs = request::query_pairs(&parts.uri)?;

    if sys::is_sys_route(&path) {
        let bytes = request::read_body(&parts.headers, body, state.max_request_size).await?;
        // Boxed: the sealed-mode routes (unseal builds the whole core) are
        // a large future that every `/v1/` request would otherwise carry
        // and copy around.
        return Box::pin(sys::dispatch(state, &parts.method, &path, &pairs, &bytes)).await;
    }
    if parts.method == Method::HEAD {
        return Err(ApiError::method_not_allowed());
    }

    let (operation, source) = request::operation(&parts.method, &pairs)?;
    if operation == Operation::Patch {
        check_merge_patch(&parts.headers)?;
    }
    let data = match source {
        DataSource::Query => request::query_data(&pairs),
        DataSource::Body => {
            let bytes = request::read_body(&parts.headers, body, state.max_request_size).await?;
            if is_ocsp_request(&parts.headers) {
                // RFC 6960 clients POST raw DER; backends only take JSON
                // fields, so the request travels as base64 in `request`.
                let mut m = tresor_sdk::Map::new();
                m.insert("request".into(), Value::String(B64.encode(&bytes)));
                m
            } else {
                request::parse_json_object(&bytes, state.max_json_depth)?
            }
        }
    };
    let mut path = path;
    if operation == Operation::List && !path.ends_with('/') {
        // Vault lists a folder: `LIST secret/metadata` is `secret/metadata/`.
        path.push('/');
    }

    let core_req = CoreRequest {
        operation,
        path,
        data,
        token: request::token(&parts.headers),
        wrap_ttl: request::wrap_ttl(&parts.headers)?,
        remote_addr: conn.and_then(|c| c.remote).map(|a| a.ip()),
        headers: Some(request::headers(parts.headers)),
        peer_certificates: conn
            .map(|c| c.peer_certificates.as_ref().clone())
            .unwrap_or_default(),
    };
    let resp = handle_detached(&state.core, core_req).await?;
    Ok(core_response(resp))
}

/// Run one request to completion even if the client goes away: a
/// credential a backend created must still get its lease (and so its
/// revocation) and the audit entry must still be written; cancelling the
/// handler halfway would orphan such a credential. The request is polled
/// inline (no task, no cross-thread wake-up on the hot path); only when the
/// handler is dropped mid-flight is the rest handed to a task of its own.
pub(crate) async fn handle_detached(
    core: &std::sync::Arc<tresor_core::Core>,
    req: CoreRequest,
) -> Result<CoreResponse, ApiError> {
    let core = core.clone();
    CompleteOnDrop::new(async move { core.handle(req).await })
        .await
        .map_err(ApiError::from)
}

/// A future that, dropped before completion, is finished on a task.
struct CompleteOnDrop<F: Future + Send + 'static> {
    fut: Option<Pin<Box<F>>>,
}

impl<F: Future + Send + 'static> CompleteOnDrop<F> {
    fn new(fut: F) -> Self {
        CompleteOnDrop {
            fut: Some(Box::pin(fut)),
        }
    }
}

impl<F: Future + Send + 'static> Future for CompleteOnDrop<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Pending;
        };
        match fut.as_mut().poll(cx) {
            Poll::Ready(v) => {
                self.fut = None;
                Poll::Ready(v)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<F: Future + Send + 'static> Drop for CompleteOnDrop<F> {
    fn drop(&mut self) {
        if let Some(fut) = self.fut.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = fut.await;
                });
            }
        }
    }
}

/// A core answer as HTTP.
pub(crate) fn core_response(resp: CoreResponse) -> Response {
    let status = match StatusCode::from_u16(resp.status) {
        Ok(s) => s,
        Err(_) => {
            tracing::error!(status = resp.status, "core answered an invalid status");
            return ApiError::internal().into_response();
        }
    };
    match resp.body {
        ResponseBody::Empty => StatusCode::NO_CONTENT.into_response(),
        ResponseBody::Envelope(env) => json_response(status, &env),
        ResponseBody::Json(value) => json_response(status, &value),
        ResponseBody::Raw { content_type, body } => {
            let ct = HeaderValue::from_str(&content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            (status, [(header::CONTENT_TYPE, ct)], body).into_response()
        }
    }
}

/// `axum::Json`, with a buffer sized for a typical answer up front: axum's
/// starts at 128 bytes and grows (copying) on nearly every answer.
fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    let mut buf = Vec::with_capacity(1024);
    match serde_json::to_writer(&mut buf, value) {
        Ok(()) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            buf,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise an answer");
            ApiError::internal().into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::CompleteOnDrop;

    #[test]
    fn patch_takes_only_merge_patch() {
        use http::{header, HeaderMap, HeaderValue};
        let with = |ct: Option<&'static str>| {
            let mut h = HeaderMap::new();
            if let Some(ct) = ct {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            }
            super::check_merge_patch(&h).map_err(|e| e.status.as_u16())
        };
        assert_eq!(with(Some("application/merge-patch+json")), Ok(()));
        assert_eq!(
            with(Some("Application/Merge-Patch+JSON; charset=utf-8")),
            Ok(())
        );
        assert_eq!(with(Some("application/json")), Err(415));
        assert_eq!(with(None), Err(415));
    }

    #[tokio::test]
    async fn a_request_dropped_mid_flight_still_completes() {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let fut = CompleteOnDrop::new(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            flag.store(true, Ordering::SeqCst);
        });
        // The client goes away: the handler's future is dropped after one poll.
        let _ = tokio::time::timeout(Duration::from_millis(5), fut).await;
        assert!(!done.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            done.load(Ordering::SeqCst),
            "the rest ran on a task of its own"
        );
    }
}
