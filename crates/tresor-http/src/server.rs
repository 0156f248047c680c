//! Listeners: one accept loop per listener, plain TCP or TLS, feeding hyper
//! connections that carry their remote address and client certificates.
//!
//! A hand-written loop rather than `axum::serve` because axum's server knows
//! nothing of TLS, and a request has to know the certificates of the
//! connection it arrived on (cert auth).

use std::future::Future;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tresor_core::Core;

use crate::error::HttpError;
use crate::{Api, ConnInfo, HttpConfig, TlsSettings, TlsVersion};

/// A slow client must not hold a connection open without ever finishing
/// its handshake or headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

struct Bound {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
}

/// Bound listeners, ready to serve.
pub struct Server {
    api: Api,
    listeners: Vec<Bound>,
    addrs: Vec<SocketAddr>,
    drain_timeout: Duration,
}

impl Server {
    /// Load TLS material and bind every listener of `config`; errors here
    /// (bad certificate, address in use) are reported before serving starts.
    pub async fn bind(core: Arc<Core>, config: &HttpConfig) -> Result<Server, HttpError> {
        let api = Api::new(core, config);
        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut addrs = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let tls = l.tls.as_ref().map(tls_acceptor).transpose()?;
            let listener =
                TcpListener::bind(l.address)
                    .await
                    .map_err(|source| HttpError::Bind {
                        address: l.address.to_string(),
                        source,
                    })?;
            let addr = listener.local_addr().map_err(|source| HttpError::Bind {
                address: l.address.to_string(),
                source,
            })?;
            addrs.push(addr);
            listeners.push(Bound { listener, tls });
        }
        Ok(Server {
            api,
            listeners,
            addrs,
            drain_timeout: config.max_request_duration + Duration::from_secs(5),
        })
    }

    /// The bound addresses, in the order of the configured listeners (the
    /// real port when `:0` was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Serve until `shutdown` completes, then stop accepting, let in-flight
    /// requests finish (bounded by the request timeout) and return.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut loops = JoinSet::new();
        for bound in self.listeners {
            loops.spawn(accept_loop(
                bound,
                self.api.clone(),
                stop_rx.clone(),
                self.drain_timeout,
            ));
        }
        shutdown.await;
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        // Receivers live as long as the loops; a send error means they are gone.
        let _ = stop_tx.send(true);
        while loops.join_next().await.is_some() {}
    }
}

/// Bind and serve `config`'s listeners until `shutdown` completes.
pub async fn serve(
    config: &HttpConfig,
    core: Arc<Core>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), HttpError> {
    Server::bind(core, config).await?.run(shutdown).await;
    Ok(())
}

async fn accept_loop(
    bound: Bound,
    api: Api,
    mut stop: watch::Receiver<bool>,
    drain_timeout: Duration,
) {
    let Bound { listener, tls } = bound;
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => break,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of
                // spinning, and keep serving the connections we have.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Small JSON answers: don't let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let api = api.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            connection(stream, remote, tls, api, watcher).await;
        });
    }
    // Close the socket now: new clients get "connection refused" at once
    // instead of waiting in the backlog while we drain.
    drop(listener);
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
}

async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    tls: Option<TlsAcceptor>,
    api: Api,
    watcher: Watcher,
) {
    match tls {
        None => {
            let info = ConnInfo {
                remote: Some(remote),
                peer_certificates: Arc::new(Vec::new()),
            };
            serve_connection(stream, info, api, watcher).await;
        }
        Some(acceptor) => {
            let tls_stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
            let peer_certificates = tls_stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|chain| chain.iter().map(|c| c.as_ref().to_vec()).collect())
                .unwrap_or_default();
            let info = ConnInfo {
                remote: Some(remote),
                peer_certificates: Arc::new(peer_certificates),
            };
            serve_connection(tls_stream, info, api, watcher).await;
        }
    }
}

async fn serve_connection<S>(io: S, info: ConnInfo, api: Api, watcher: Watcher)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new((api, info));
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let conn = conn.clone();
        async move { Ok::<_, std::convert::Infallible>(conn.0.serve(req, &conn.1).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    if let Err(e) = watcher.watch(conn).await {
        // Client resets and half-closed sockets land here; not our failure.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, HttpError> {
    std::fs::read(path).map_err(|source| HttpError::ReadFile {
        path: path.display().to_string(),
        source,
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, HttpError> {
    let bytes = read_file(path)?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(bytes.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HttpError::Pem {
            path: path.display().to_string(),
            message: format!("invalid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(HttpError::Pem {
            path: path.display().to_string(),
            message: "no certificate found".into(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, HttpError> {
    let bytes = read_file(path)?;
    rustls_pemfile::private_key(&mut BufReader::new(bytes.as_slice()))
        .map_err(|e| HttpError::Pem {
            path: path.display().to_string(),
            message: format!("invalid PEM: {e}"),
        })?
        .ok_or_else(|| HttpError::Pem {
            path: path.display().to_string(),
            message: "no private key found".into(),
        })
}

/// Build the TLS acceptor of a listener.
pub(crate) fn tls_acceptor(s: &TlsSettings) -> Result<TlsAcceptor, HttpError> {
    let certs = load_certs(&s.cert_file)?;
    let key = load_key(&s.key_file)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = match s.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| HttpError::Tls(e.to_string()))?;
    let builder = match &s.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for ca in load_certs(ca_file)? {
                roots.add(ca).map_err(|e| HttpError::Pem {
                    path: ca_file.display().to_string(),
                    message: format!("invalid CA certificate: {e}"),
                })?;
            }
            // Requested, verified if presented, not required: which
            // certificate is worth what is the cert auth method's call.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| HttpError::Tls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| HttpError::Tls(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
