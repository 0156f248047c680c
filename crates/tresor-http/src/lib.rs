//! tresor's HTTP front end.
//!
//! - [`router`]: the axum router — Vault's API under `/v1/` (verbs, headers,
//!   JSON envelope and errors), the sealed-mode `sys/` routes that call the
//!   core directly, the simple API (`/api/v1/...`) and `/health`.
//! - [`Server`] / [`serve`]: TCP and TLS listeners with one accept loop, so
//!   every request knows its remote address and TLS client certificates, and
//!   graceful shutdown.
//! - [`error`]: the one mapping from `CoreError` to status and body.
//!
//! Limits that protect the server live here, before anything reaches the
//! core: body size (413), JSON depth (400), path traversal (400), request
//! duration (504), and panics (500, the server keeps serving).

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{any, get, post};
use axum::Router;
use tower::ServiceExt;
use tresor_core::Core;

pub mod error;
mod layers;
mod logical;
mod request;
mod server;
mod simple;
mod sys;

pub use error::{core_error, ApiError, HttpError};
pub use server::{serve, Server};

/// Vault's default `max_request_size`.
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 32 * 1024 * 1024;
/// Deepest JSON nesting accepted in a request body.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 500;
/// Vault's default `max_request_duration`.
pub const DEFAULT_MAX_REQUEST_DURATION: Duration = Duration::from_secs(90);

/// Minimum TLS protocol version of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    Tls12,
    Tls13,
}

impl std::str::FromStr for TlsVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tls12" => Ok(TlsVersion::Tls12),
            "tls13" => Ok(TlsVersion::Tls13),
            "tls10" | "tls11" => Err(format!(
                "tls_min_version {s:?} is not supported (use \"tls12\" or \"tls13\")"
            )),
            other => Err(format!(
                "invalid tls_min_version {other:?} (use \"tls12\" or \"tls13\")"
            )),
        }
    }
}

/// TLS settings of one listener (Vault's `tls_*` listener keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub min_version: TlsVersion,
    /// CA bundle for client certificates: they are requested, verified when
    /// presented, and not required (cert auth decides what they are worth).
    pub client_ca_file: Option<PathBuf>,
}

/// One listener: an address, and TLS unless disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub tls: Option<TlsSettings>,
}

/// Limits and switches of the HTTP layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub listeners: Vec<ListenerConfig>,
    pub max_request_size: usize,
    pub max_json_depth: usize,
    pub max_request_duration: Duration,
    /// Record `tresor_http_*` metrics through the global `metrics` recorder.
    pub record_metrics: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listeners: Vec::new(),
            max_request_size: DEFAULT_MAX_REQUEST_SIZE,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            max_request_duration: DEFAULT_MAX_REQUEST_DURATION,
            record_metrics: true,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) core: Arc<Core>,
    pub(crate) max_request_size: usize,
    pub(crate) max_json_depth: usize,
}

/// The connection a request arrived on; inserted by [`Server`]. Absent when
/// the router is served some other way.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnInfo {
    pub(crate) remote: Option<SocketAddr>,
    /// DER client certificate chain, leaf first.
    pub(crate) peer_certificates: Arc<Vec<Vec<u8>>>,
}

/// The whole HTTP API of tresor, with its protective layers.
pub fn router(core: Arc<Core>, config: &HttpConfig) -> Router {
    Api::new(core, config).router
}

/// What the server's connections serve: the router, and beside it a
/// direct lane to the `/v1/` handler behind the same guard. The router
/// sends every `/v1/` path to its fallback, that same handler, so the lane
/// changes no answer; it skips the router's matching, the middleware's
/// boxing and service clones, and an extension per request, a tenth of
/// a cached read.
#[derive(Clone)]
pub(crate) struct Api {
    router: Router,
    state: AppState,
    guard: layers::Guard,
}

impl Api {
    pub(crate) fn new(core: Arc<Core>, config: &HttpConfig) -> Api {
        let state = AppState {
            core,
            max_request_size: config.max_request_size,
            max_json_depth: config.max_json_depth,
        };
        let guard = layers::Guard::new(config);
        // `/v1/*` is served by the fallback rather than a `/v1/{*path}`
        // route: the handler reads the path itself, and a matched route
        // costs every request the decoding and allocation of its URL
        // parameters. No route may start with `/v1/` (see `Api::serve`).
        let routes = Router::new()
            .route("/api/v1/secrets/{*path}", any(simple::secret))
            .route("/api/v1/auth/login", post(simple::login))
            .route("/health", get(simple::health))
            .fallback(logical::handle)
            .with_state(state.clone());
        Api {
            router: layers::apply(routes, &guard),
            state,
            guard,
        }
    }

    /// One request of a connection.
    pub(crate) async fn serve(
        &self,
        mut req: http::Request<hyper::body::Incoming>,
        conn: &ConnInfo,
    ) -> axum::response::Response {
        if req.uri().path().starts_with("/v1/") {
            let req = req.map(axum::body::Body::new);
            return self
                .guard
                .run(req, |req| logical::serve(&self.state, req, Some(conn)))
                .await;
        }
        req.extensions_mut().insert(conn.clone());
        match self
            .router
            .clone()
            .oneshot(req.map(axum::body::Body::new))
            .await
        {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }
}

/// Entry points for the fuzz targets in `fuzz/`: the parsers that see raw
/// attacker input before anything else does. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// The path check every request passes; `Some` = accepted, normalised.
    pub fn normalize_path(raw: &str) -> Option<String> {
        crate::request::check_raw_path(raw).ok()?;
        crate::request::normalize_path(raw.trim_start_matches('/')).ok()
    }

    /// The request-body parser with the server's depth limit.
    pub fn parse_json(bytes: &[u8]) -> bool {
        crate::request::parse_json_object(bytes, 500).is_ok()
    }
}
