//! The HTTP API end to end: a real core on memory storage behind the real
//! listener, driven over loopback.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use crate::common::{client, dev, method, raw, uninitialized, ROOT};
use serde_json::{json, Value};
use tresor_http::HttpConfig;

async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, v)
}

#[tokio::test]
async fn uninitialized_core_answers_503_on_logical_routes() {
    let s = uninitialized().await;
    let (status, body) = json_of(
        client()
            .get(s.url("/v1/secret/data/x"))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body["errors"].is_array());
}

#[tokio::test]
async fn init_unseal_flow_over_http() {
    let s = uninitialized().await;
    let c = client();
    let (status, body) = json_of(c.get(s.url("/v1/sys/init")).send().await.unwrap()).await;
    assert_eq!((status, body), (200, json!({"initialized": false})));

    let (status, init) = json_of(
        c.put(s.url("/v1/sys/init"))
            .json(&json!({"secret_shares": 1, "secret_threshold": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{init}");
    let key = init["keys_base64"][0].as_str().unwrap().to_string();
    let root = init["root_token"].as_str().unwrap().to_string();

    // Sealed now: seal-status works, logical requests are 503.
    let (status, st) = json_of(c.get(s.url("/v1/sys/seal-status")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(st["sealed"], json!(true));
    assert_eq!(st["initialized"], json!(true));
    let (status, body) = json_of(
        c.get(s.url("/v1/sys/mounts"))
            .header("X-Vault-Token", &root)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errors"][0], json!("Vault is sealed"));

    // Init twice is a client error.
    let (status, _) = json_of(
        c.put(s.url("/v1/sys/init"))
            .json(&json!({"secret_shares": 1, "secret_threshold": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);

    // Unseal without a key is refused before reaching the core.
    let (status, _) = json_of(
        c.put(s.url("/v1/sys/unseal"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);

    let (status, st) = json_of(
        c.put(s.url("/v1/sys/unseal"))
            .json(&json!({"key": key}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{st}");
    assert_eq!(st["sealed"], json!(false));

    let (status, _) = json_of(
        c.get(s.url("/v1/sys/mounts"))
            .header("X-Vault-Token", &root)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn sealed_after_sys_seal_is_503() {
    let s = dev().await;
    let c = client();
    let resp = c
        .put(s.url("/v1/sys/seal"))
        .header("X-Vault-Token", ROOT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let (status, body) = json_of(
        c.get(s.url("/v1/secret/data/x"))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let resp = c.get(s.url("/health")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
}

#[tokio::test]
async fn useless_token_is_403() {
    let s = dev().await;
    for (name, value) in [
        ("X-Vault-Token", "not-a-token"),
        ("Authorization", "Bearer not-a-token"),
    ] {
        let (status, body) = json_of(
            client()
                .get(s.url("/v1/secret/data/x"))
                .header(name, value)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 403, "{name}: {body}");
        assert_eq!(body, json!({"errors": ["permission denied"]}));
    }
    // No token at all.
    let (status, _) = json_of(
        client()
            .get(s.url("/v1/secret/data/x"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn bearer_token_works_like_vault_token() {
    let s = dev().await;
    let resp = client()
        .get(s.url("/v1/auth/token/lookup-self"))
        .bearer_auth(ROOT)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"]["policies"]
        .as_array()
        .unwrap()
        .contains(&json!("root")));
}

#[tokio::test]
async fn bad_json_is_400() {
    // Refused before the core: any core will do.
    let s = uninitialized().await;
    for body in ["{not json", "[1, 2]", "\"str\"", "{} trailing"] {
        let (status, out) = json_of(
            client()
                .put(s.url("/v1/secret/data/x"))
                .header("X-Vault-Token", ROOT)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{body}: {out}");
        let msg = out["errors"][0].as_str().unwrap();
        assert!(msg.starts_with("failed to parse JSON input"), "{msg}");
    }
}

#[tokio::test]
async fn missing_secret_is_404_with_empty_errors() {
    let s = dev().await;
    let (status, body) = json_of(
        client()
            .get(s.url("/v1/secret/data/does/not/exist"))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body, json!({"errors": []}));
}

#[tokio::test]
async fn unknown_mount_is_404() {
    let s = dev().await;
    let (status, _) = json_of(
        client()
            .get(s.url("/v1/nowhere/x"))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let s = common::serve_with(
        common::new_core().await,
        HttpConfig {
            max_request_size: 1024 * 1024,
            ..HttpConfig::default()
        },
        None,
    )
    .await;
    // Announced by Content-Length: refused before the body is read.
    let big = format!(
        "{{\"data\": {{\"v\": \"{}\"}}}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let (status, headers, body) = raw(
        s.addr,
        "PUT",
        "/v1/secret/data/big",
        &[("X-Vault-Token", ROOT)],
        big.as_bytes(),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(headers
        .get("content-type")
        .is_some_and(|c| c.contains("json")));

    // Streamed without a length: cut off while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..32).map(|_| Ok(vec![b' '; 64 * 1024])).collect();
    let resp = client()
        .put(s.url("/v1/secret/data/big"))
        .header("X-Vault-Token", ROOT)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    // The server may close before the client finishes sending; when an
    // answer arrives it must be 413.
    if let Ok(resp) = resp {
        assert_eq!(resp.status().as_u16(), 413);
    }

    // The same limit on the default config is 32 MiB.
    assert_eq!(HttpConfig::default().max_request_size, 32 * 1024 * 1024);
}

fn nested(n: usize) -> String {
    format!(
        "{{\"data\": {{\"v\": {}{}}}}}",
        "[".repeat(n),
        "]".repeat(n)
    )
}

#[tokio::test]
async fn json_deeper_than_limit_is_400() {
    let s = uninitialized().await;
    let (status, body) = json_of(
        client()
            .put(s.url("/v1/secret/data/deep"))
            .header("X-Vault-Token", ROOT)
            .body(nested(600))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["errors"][0].as_str().unwrap().contains("depth"));
}

#[tokio::test]
async fn json_deeper_than_serde_default_is_accepted() {
    // 2 levels of objects + 300 arrays: deeper than serde_json's default
    // limit (128), well within ours.
    let s = dev().await;
    let (status, body) = json_of(
        client()
            .put(s.url("/v1/secret/data/deep"))
            .header("X-Vault-Token", ROOT)
            .body(nested(300))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn dot_segments_are_400_before_the_core() {
    let s = uninitialized().await;
    for target in [
        "/v1/secret/../sys/mounts",
        "/v1/secret/%2e%2e/sys/mounts",
        "/v1/secret/%2E%2E/sys/mounts",
        "/v1/secret/./data/x",
        "/v1/secret//data/x",
        "/v1/secret/data/a%2F..%2Fb",
        "/api/v1/secrets/../x",
        "/api/v1/secrets/%2e%2e/x",
    ] {
        let (status, _, body) = raw(s.addr, "GET", target, &[("X-Vault-Token", ROOT)], b"").await;
        assert_eq!(status, 400, "{target}: {body}");
    }
}

#[tokio::test]
async fn list_verb_and_list_query() {
    let s = dev().await;
    let c = client();
    for p in ["app/db", "app/api", "top"] {
        let resp = c
            .put(s.url(&format!("/v1/secret/data/{p}")))
            .header("X-Vault-Token", ROOT)
            .json(&json!({"data": {"k": "v"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }
    let (status, body) = json_of(
        c.request(method("LIST"), s.url("/v1/secret/metadata/"))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["keys"], json!(["app/", "top"]));

    // ?list=true, and without a trailing slash.
    let (status, body) = json_of(
        c.get(s.url("/v1/secret/metadata/app?list=true"))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["keys"], json!(["api", "db"]));

    let (status, _) = json_of(
        c.get(s.url("/v1/secret/metadata/app?list=maybe"))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn unsupported_methods() {
    let s = uninitialized().await;
    let c = client();
    for m in ["OPTIONS", "TRACE", "HEAD"] {
        let resp = c
            .request(method(m), s.url("/v1/secret/data/x"))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 405, "{m}");
    }
}

#[tokio::test]
async fn kv_roundtrip_with_envelope() {
    let s = dev().await;
    let c = client();
    let (status, body) = json_of(
        c.post(s.url("/v1/secret/data/app"))
            .header("X-Vault-Token", ROOT)
            .json(&json!({"data": {"password": "hunter2"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["version"], json!(1));
    let (status, body) = json_of(
        c.get(s.url("/v1/secret/data/app"))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    for field in [
        "request_id",
        "lease_id",
        "renewable",
        "lease_duration",
        "data",
        "wrap_info",
        "warnings",
        "auth",
    ] {
        assert!(body.get(field).is_some(), "{field} missing in {body}");
    }
    assert_eq!(body["data"]["data"], json!({"password": "hunter2"}));
}

#[tokio::test]
async fn responses_are_not_cacheable() {
    let s = dev().await;
    let resp = client().get(s.url("/v1/sys/health")).send().await.unwrap();
    assert_eq!(
        resp.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
}

#[tokio::test]
async fn health_codes_and_overrides() {
    let c = client();
    let active = dev().await;
    let get = |url: String| {
        let c = c.clone();
        async move { c.get(url).send().await.unwrap() }
    };
    let resp = get(active.url("/v1/sys/health")).await;
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["initialized"], json!(true));
    assert_eq!(body["sealed"], json!(false));
    assert_eq!(body["standby"], json!(false));
    assert_eq!(
        get(active.url("/v1/sys/health?activecode=299"))
            .await
            .status()
            .as_u16(),
        299
    );
    assert_eq!(
        get(active.url("/v1/sys/health?standbyok=true"))
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        get(active.url("/v1/sys/health?activecode=abc"))
            .await
            .status()
            .as_u16(),
        400
    );

    // HEAD: status only.
    let resp = c
        .head(active.url("/v1/sys/health?activecode=204"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert!(resp.bytes().await.unwrap().is_empty());

    let uninit = uninitialized().await;
    assert_eq!(
        get(uninit.url("/v1/sys/health")).await.status().as_u16(),
        501
    );
    assert_eq!(
        get(uninit.url("/v1/sys/health?uninitcode=200"))
            .await
            .status()
            .as_u16(),
        200
    );
    let resp = c.head(uninit.url("/v1/sys/health")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 501);

    // Sealed: initialise without unsealing.
    let sealed = uninitialized().await;
    sealed
        .core
        .init(tresor_api::sys::InitRequest {
            secret_shares: 1,
            secret_threshold: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        get(sealed.url("/v1/sys/health")).await.status().as_u16(),
        503
    );
    assert_eq!(
        get(sealed.url("/v1/sys/health?sealedcode=200"))
            .await
            .status()
            .as_u16(),
        200
    );
    let body: Value = get(sealed.url("/v1/sys/health"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["sealed"], json!(true));
}

#[tokio::test]
async fn sys_leader_and_seal_status_need_no_token() {
    let s = dev().await;
    let (status, body) = json_of(client().get(s.url("/v1/sys/leader")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("ha_enabled").is_some());
    let (status, body) = json_of(
        client()
            .get(s.url("/v1/sys/seal-status"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["sealed"], json!(false));
    assert_eq!(body["t"], json!(1));
}

#[tokio::test]
async fn generate_root_and_rekey_status() {
    let s = dev().await;
    let (status, body) = json_of(
        client()
            .get(s.url("/v1/sys/generate-root/attempt"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["started"], json!(false));
    let (status, body) = json_of(
        client()
            .get(s.url("/v1/sys/rekey/init"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["started"], json!(false));
    // Wrong verb on a sealed-mode route.
    let resp = client()
        .patch(s.url("/v1/sys/rekey/init"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
}

#[tokio::test]
async fn wrap_ttl_header() {
    let s = dev().await;
    let c = client();
    let resp = c
        .put(s.url("/v1/secret/data/w"))
        .header("X-Vault-Token", ROOT)
        .json(&json!({"data": {"a": "b"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (status, body) = json_of(
        c.get(s.url("/v1/secret/data/w"))
            .header("X-Vault-Token", ROOT)
            .header("X-Vault-Wrap-TTL", "5m")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["wrap_info"]["ttl"], json!(300));
    assert_eq!(body["data"], Value::Null);

    let (status, _) = json_of(
        c.get(s.url("/v1/secret/data/w"))
            .header("X-Vault-Token", ROOT)
            .header("X-Vault-Wrap-TTL", "whenever")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn simple_api() {
    let s = dev().await;
    let c = client();
    let (status, body) = json_of(
        c.put(s.url("/api/v1/secrets/app/db"))
            .bearer_auth(ROOT)
            .json(&json!({"data": {"user": "u", "password": "p"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!({"version": 1})));
    // A bare object is the secret itself.
    let (status, body) = json_of(
        c.put(s.url("/api/v1/secrets/app/db"))
            .header("X-Vault-Token", ROOT)
            .json(&json!({"user": "u2", "password": "p2"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!({"version": 2})));

    let (status, body) = json_of(
        c.get(s.url("/api/v1/secrets/app/db"))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["path"], json!("app/db"));
    assert_eq!(body["data"], json!({"user": "u2", "password": "p2"}));
    assert_eq!(body["version"], json!(2));
    assert!(body["created_time"].is_string());

    let (status, _) = json_of(
        c.get(s.url("/api/v1/secrets/nope"))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = json_of(c.get(s.url("/api/v1/secrets/app/db")).send().await.unwrap()).await;
    assert_eq!(status, 403);

    let (status, body) = json_of(
        c.post(s.url("/api/v1/secrets/app/db/rotate"))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    // No rule and no `fields`: nothing to rotate.
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("fields:"));

    let (status, body) = json_of(
        c.post(s.url("/api/v1/auth/login"))
            .json(&json!({"method": "token", "token": ROOT}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token"], json!(ROOT));
    assert!(body["policies"]
        .as_array()
        .unwrap()
        .contains(&json!("root")));
    assert!(body.get("accessor").is_some() && body.get("expires_at").is_some());

    let (status, _) = json_of(
        c.post(s.url("/api/v1/auth/login"))
            .json(&json!({"method": "token", "token": "bogus"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = json_of(
        c.post(s.url("/api/v1/auth/login"))
            .json(&json!({"method": "userpass", "username": "a"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("not enabled"));

    let (status, body) = json_of(c.get(s.url("/health")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], json!("ok"));
    assert_eq!(body["sealed"], json!(false));

    let u = uninitialized().await;
    let (status, _) = json_of(c.get(u.url("/health")).send().await.unwrap()).await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn graceful_shutdown_finishes_and_stops_accepting() {
    let s = uninitialized().await;
    let addr = s.addr;
    let url = s.url("/v1/sys/health");
    assert_eq!(
        client().get(&url).send().await.unwrap().status().as_u16(),
        501
    );
    drop(s);
    // The listener closes soon after shutdown is signalled.
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "listener still accepting after shutdown");
}

mod tls {
    use super::*;
    use common::serve_with;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use tresor_http::{TlsSettings, TlsVersion};

    struct Pki {
        dir: tempfile::TempDir,
        ca_pem: String,
        client_pem: String,
    }

    fn pki() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();

        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let client = CertificateParams::new(vec!["client.example".to_string()])
            .unwrap()
            .signed_by(&client_key, &ca, &ca_key)
            .unwrap();

        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), server.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), server_key.serialize_pem()).unwrap();
        Pki {
            ca_pem: ca.pem(),
            client_pem: format!("{}{}", client.pem(), client_key.serialize_pem()),
            dir,
        }
    }

    fn settings(p: &Pki, min: TlsVersion, client_ca: bool) -> TlsSettings {
        TlsSettings {
            cert_file: p.dir.path().join("cert.pem"),
            key_file: p.dir.path().join("key.pem"),
            min_version: min,
            client_ca_file: client_ca.then(|| p.dir.path().join("ca.pem")),
        }
    }

    fn tls_client(p: &Pki, identity: bool, max12: bool) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .resolve("localhost", "127.0.0.1:0".parse().unwrap())
            .add_root_certificate(reqwest::Certificate::from_pem(p.ca_pem.as_bytes()).unwrap());
        if identity {
            b = b.identity(reqwest::Identity::from_pem(p.client_pem.as_bytes()).unwrap());
        }
        if max12 {
            b = b.max_tls_version(reqwest::tls::Version::TLS_1_2);
        }
        b.build().unwrap()
    }

    #[tokio::test]
    async fn tls_with_optional_client_certificates() {
        let p = pki();
        let core = common::new_core().await;
        let s = serve_with(
            core,
            HttpConfig::default(),
            Some(settings(&p, TlsVersion::Tls12, true)),
        )
        .await;
        for identity in [false, true] {
            let resp = tls_client(&p, identity, false)
                .get(s.url("/v1/sys/health"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 501, "identity: {identity}");
        }
        // TLS 1.2 is allowed at tls12.
        let resp = tls_client(&p, false, true)
            .get(s.url("/v1/sys/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 501);
    }

    #[tokio::test]
    async fn tls13_minimum_refuses_tls12_clients() {
        let p = pki();
        let core = common::new_core().await;
        let s = serve_with(
            core,
            HttpConfig::default(),
            Some(settings(&p, TlsVersion::Tls13, false)),
        )
        .await;
        assert!(tls_client(&p, false, true)
            .get(s.url("/v1/sys/health"))
            .send()
            .await
            .is_err());
        let resp = tls_client(&p, false, false)
            .get(s.url("/v1/sys/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 501);
    }

    #[tokio::test]
    async fn bad_tls_material_fails_at_bind() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), "not a pem").unwrap();
        let config = HttpConfig {
            listeners: vec![tresor_http::ListenerConfig {
                address: "127.0.0.1:0".parse().unwrap(),
                tls: Some(TlsSettings {
                    cert_file: dir.path().join("cert.pem"),
                    key_file: dir.path().join("missing.pem"),
                    min_version: TlsVersion::Tls12,
                    client_ca_file: None,
                }),
            }],
            ..HttpConfig::default()
        };
        let err = tresor_http::Server::bind(common::new_core().await, &config)
            .await
            .err()
            .expect("bind must fail");
        assert!(err.to_string().contains("cert.pem"), "{err}");
    }
}
