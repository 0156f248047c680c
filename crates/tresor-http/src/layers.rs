//! Middleware around every route: panic → 500, metrics, request timeout,
//! path check, `Cache-Control: no-store`.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::FutureExt;
use http::{header, HeaderValue, Method, StatusCode};
use metrics::{Counter, Histogram};

use crate::error::ApiError;
use crate::request::check_raw_path;
use crate::HttpConfig;

/// Wrap `routes` (whose fallback is already set, so every request passes
/// through it) in the protective middleware. One layer does it all, in this
/// order: path check, timeout, panic catcher, metrics (which so count panics
/// and timeouts), `Cache-Control`. One layer rather than four: each tower
/// layer costs a boxed future and a service clone per request.
pub(crate) fn apply(routes: Router, guard: &Guard) -> Router {
    let guard = guard.clone();
    routes.layer(middleware::from_fn(move |req: Request, next: Next| {
        let guard = guard.clone();
        async move { guard.run(req, |req| next.run(req)).await }
    }))
}

/// The protective layer itself, so that a request can also be passed
/// through it without a router (the server's direct lane to `/v1/`).
#[derive(Clone)]
pub(crate) struct Guard {
    timeout: Duration,
    metrics: Option<Arc<HttpMetrics>>,
}

impl Guard {
    pub(crate) fn new(config: &HttpConfig) -> Self {
        Guard {
            timeout: config.max_request_duration,
            metrics: config.record_metrics.then(|| Arc::new(HttpMetrics::new())),
        }
    }

    /// `handler` under the path check, the timeout, the panic catcher,
    /// the metrics and `Cache-Control`.
    pub(crate) async fn run<F, H>(&self, req: Request, handler: H) -> Response
    where
        H: FnOnce(Request) -> F,
        F: std::future::Future<Output = Response>,
    {
        let start = Instant::now();
        let method = method_index(req.method());
        let mut resp = if let Err(e) = check_raw_path(req.uri().path()) {
            e.into_response()
        } else {
            match tokio::time::timeout(self.timeout, AssertUnwindSafe(handler(req)).catch_unwind())
                .await
            {
                Ok(Ok(resp)) => resp,
                Ok(Err(payload)) => panic_response(payload),
                Err(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "context deadline exceeded")
                    .into_response(),
            }
        };
        if let Some(m) = &self.metrics {
            m.record(
                method,
                status_index(resp.status().as_u16()),
                start.elapsed(),
            );
        }
        // Secrets must not linger in shared or browser caches.
        resp.headers_mut()
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
        resp
    }
}

/// The handles of the per-request metrics, one per label set, taken from
/// the recorder on first use: building the key and finding it in the
/// registry on every request cost more than the update itself. (The
/// recorder is installed before the server starts and evicts nothing.)
struct HttpMetrics {
    requests: [[OnceLock<Counter>; STATUS_LABELS.len()]; METHOD_LABELS.len()],
    durations: [OnceLock<Histogram>; METHOD_LABELS.len()],
}

impl HttpMetrics {
    fn new() -> Self {
        HttpMetrics {
            requests: [const { [const { OnceLock::new() }; STATUS_LABELS.len()] };
                METHOD_LABELS.len()],
            durations: [const { OnceLock::new() }; METHOD_LABELS.len()],
        }
    }

    fn record(&self, method: usize, status: usize, elapsed: Duration) {
        let (Some(requests), Some(duration)) = (
            self.requests.get(method).and_then(|m| m.get(status)),
            self.durations.get(method),
        ) else {
            return;
        };
        let (method, status) = (METHOD_LABELS[method], STATUS_LABELS[status]);
        requests
            .get_or_init(|| {
                metrics::counter!("tresor_http_requests_total", "method" => method, "status" => status)
            })
            .increment(1);
        duration
            .get_or_init(
                || metrics::histogram!("tresor_http_request_duration_seconds", "method" => method),
            )
            .record(elapsed.as_secs_f64());
    }
}

pub(crate) async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        errors: Vec::new(),
    }
}

fn panic_response(payload: Box<dyn Any + Send + 'static>) -> Response {
    // The panic message may quote data the handler was working on; the
    // default panic hook has already printed it to stderr, so the log line
    // here only records that it happened.
    drop(payload);
    tracing::error!("request handler panicked");
    ApiError::internal().into_response()
}

/// Label values for the method: a fixed set, so that no request can blow
/// up the cardinality.
const METHOD_LABELS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "LIST", "OPTIONS", "OTHER",
];

/// The index of the method's label in [`METHOD_LABELS`].
fn method_index(m: &Method) -> usize {
    METHOD_LABELS[..METHOD_LABELS.len() - 1]
        .iter()
        .position(|l| *l == m.as_str())
        .unwrap_or(METHOD_LABELS.len() - 1)
}

/// Static label values for the status: no allocation per request.
const STATUS_LABELS: [&str; 16] = [
    "200", "204", "400", "403", "404", "405", "412", "413", "429", "500", "503", "504", "2xx",
    "3xx", "4xx", "5xx",
];

/// The index of the status's label in [`STATUS_LABELS`].
fn status_index(code: u16) -> usize {
    match code {
        200 => 0,
        204 => 1,
        400 => 2,
        403 => 3,
        404 => 4,
        405 => 5,
        412 => 6,
        413 => 7,
        429 => 8,
        500 => 9,
        503 => 10,
        504 => 11,
        c if c < 300 => 12,
        c if c < 400 => 13,
        c if c < 500 => 14,
        _ => 15,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn call(app: &Router, uri: &str) -> (StatusCode, String) {
        let req = http::Request::builder()
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn app(config: &HttpConfig) -> Router {
        let routes = Router::new()
            .route(
                "/panic",
                get(|| async {
                    if true {
                        panic!("boom");
                    }
                    "unreachable"
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route("/ok/{*rest}", get(|| async { "fine" }))
            .fallback(not_found);
        apply(routes, &Guard::new(config))
    }

    #[tokio::test]
    async fn panic_is_500_and_server_keeps_serving() {
        let app = app(&HttpConfig::default());
        let (status, body) = call(&app, "/panic").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, r#"{"errors":["internal error"]}"#);
        let (status, _) = call(&app, "/ok/x").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn timeout_is_504() {
        let config = HttpConfig {
            max_request_duration: Duration::from_millis(50),
            ..HttpConfig::default()
        };
        let (status, _) = call(&app(&config), "/slow").await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    }

    #[tokio::test]
    async fn traversal_rejected_even_on_unknown_routes() {
        let app = app(&HttpConfig::default());
        assert_eq!(call(&app, "/ok/a/../b").await.0, StatusCode::BAD_REQUEST);
        assert_eq!(call(&app, "/ok/%2e%2e/b").await.0, StatusCode::BAD_REQUEST);
        assert_eq!(call(&app, "/nowhere/../x").await.0, StatusCode::BAD_REQUEST);
        assert_eq!(call(&app, "/nowhere").await.0, StatusCode::NOT_FOUND);
    }
}
