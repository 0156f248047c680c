//! Shared test helpers: a real core on memory storage, served on a free
//! loopback port, and a raw HTTP/1.1 client for requests that ordinary
//! clients would "fix" (dot segments) before sending.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tresor_core::{Core, CoreConfig};
use tresor_http::{HttpConfig, ListenerConfig, Server, TlsSettings};

pub const ROOT: &str = "root";

pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    pub core: Arc<Core>,
    _stop: oneshot::Sender<()>,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }
}

pub async fn new_core() -> Arc<Core> {
    Core::new(CoreConfig {
        storage: Arc::new(tresor_storage::MemoryStorage::new()),
        default_lease_ttl: Duration::from_secs(768 * 3600),
        max_lease_ttl: Duration::from_secs(768 * 3600),
        factories: tresor_engines::registry(),
        cluster_name: "tresor-test".into(),
        metrics: None,
    })
    .await
    .expect("core")
}

pub async fn serve_with(
    core: Arc<Core>,
    mut config: HttpConfig,
    tls: Option<TlsSettings>,
) -> TestServer {
    config.listeners = vec![ListenerConfig {
        address: "127.0.0.1:0".parse().expect("addr"),
        tls: tls.clone(),
    }];
    config.record_metrics = false;
    let server = Server::bind(core.clone(), &config).await.expect("bind");
    let addr = server.local_addrs()[0];
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    let scheme = if tls.is_some() { "https" } else { "http" };
    let host = if tls.is_some() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    };
    TestServer {
        addr,
        url: format!("{scheme}://{host}"),
        core,
        _stop: tx,
    }
}

/// A server whose core is not initialised.
pub async fn uninitialized() -> TestServer {
    serve_with(new_core().await, HttpConfig::default(), None).await
}

/// A dev-mode server: initialised, unsealed, `secret/` mounted, root token `root`.
pub async fn dev() -> TestServer {
    dev_with(HttpConfig::default()).await
}

pub async fn dev_with(config: HttpConfig) -> TestServer {
    let core = new_core().await;
    core.dev_setup(Some(ROOT.into())).await.expect("dev setup");
    serve_with(core, config, None).await
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

pub fn method(m: &str) -> reqwest::Method {
    reqwest::Method::from_bytes(m.as_bytes()).expect("method")
}

/// Status, lower-cased headers and body of a raw HTTP/1.1 request.
pub async fn raw(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, BTreeMap<String, String>, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// One API call: `token` in `X-Vault-Token`, `body` as JSON unless null;
/// the status and the body parsed as JSON (a string when it is not JSON).
pub async fn call_as(
    s: &TestServer,
    verb: &str,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut r = client().request(method(verb), s.url(&format!("/v1/{path}")));
    if let Some(t) = token {
        r = r.header("X-Vault-Token", t);
    }
    if !body.is_null() {
        r = r.json(&body);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let v = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
    };
    (status, v)
}

/// [`call_as`] with the root token.
pub async fn call_root(
    s: &TestServer,
    verb: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    call_as(
        s,
        verb,
        path,
        Some(ROOT),
        body.unwrap_or(serde_json::Value::Null),
    )
    .await
}

/// Enables the auth method `kind` at `auth/<path>/`.
pub async fn enable_auth(s: &TestServer, path: &str, kind: &str) {
    let (st, b) = call_root(
        s,
        "POST",
        &format!("sys/auth/{path}"),
        Some(serde_json::json!({ "type": kind })),
    )
    .await;
    assert_eq!(st, 204, "{b}");
}

/// Writes ACL policy `name`.
pub async fn put_policy(s: &TestServer, name: &str, hcl: &str) {
    let (st, b) = call_root(
        s,
        "PUT",
        &format!("sys/policies/acl/{name}"),
        Some(serde_json::json!({ "policy": hcl })),
    )
    .await;
    assert_eq!(st, 204, "{b}");
}

/// A token with only `policies` (plus `default`).
pub async fn token_with(s: &TestServer, policies: &[&str]) -> String {
    let (st, b) = call_root(
        s,
        "POST",
        "auth/token/create",
        Some(serde_json::json!({ "policies": policies })),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    b["auth"]["client_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no client_token in {b}"))
        .to_string()
}
