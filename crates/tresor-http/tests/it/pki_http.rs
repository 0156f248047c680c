//! The PKI engine through the full server: mount, root, role, issue, and
//! the public CA/CRL paths without a token.

#![allow(clippy::unwrap_used)]

use crate::common;

use crate::common::{client, dev, ROOT};
use serde_json::{json, Value};

async fn post(s: &common::TestServer, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(s.url(&format!("/v1/{path}")))
        .header("X-Vault-Token", ROOT)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn pki_over_http() {
    let s = dev().await;
    let (st, b) = post(&s, "sys/mounts/pki", json!({"type": "pki"})).await;
    assert!(st == 204 || st == 200, "{st} {b}");
    let (st, root) = post(
        &s,
        "pki/root/generate/internal",
        json!({"common_name": "Test Root", "ttl": "8760h"}),
    )
    .await;
    assert_eq!(st, 200, "{root}");
    assert!(root["data"].get("private_key").is_none());
    let (st, b) = post(
        &s,
        "pki/roles/web",
        json!({"allowed_domains": ["example.com"], "allow_subdomains": true, "max_ttl": "72h"}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (st, out) = post(
        &s,
        "pki/issue/web",
        json!({"common_name": "www.example.com", "ttl": "1h"}),
    )
    .await;
    assert_eq!(st, 200, "{out}");
    assert!(out["data"]["certificate"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    assert!(out["data"]["private_key"]
        .as_str()
        .unwrap()
        .contains("PRIVATE KEY"));
    assert_eq!(out["data"]["issuing_ca"], root["data"]["certificate"]);

    let (st, err) = post(&s, "pki/issue/web", json!({"common_name": "www.evil.com"})).await;
    assert_eq!(st, 400, "{err}");
    assert!(err["errors"][0]
        .as_str()
        .unwrap()
        .contains("not allowed by this role"));

    // Public paths need no token.
    let r = client().get(s.url("/v1/pki/ca/pem")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = r.text().await.unwrap();
    assert_eq!(body.trim(), root["data"]["certificate"].as_str().unwrap());
    let r = client().get(s.url("/v1/pki/crl")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/pkix-crl");
    let serial = out["data"]["serial_number"].as_str().unwrap();
    let r = client()
        .get(s.url(&format!("/v1/pki/cert/{serial}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Writes are not public.
    let r = client()
        .post(s.url("/v1/pki/roles/x"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = client()
        .get(s.url("/v1/pki/crl/rotate"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
}
