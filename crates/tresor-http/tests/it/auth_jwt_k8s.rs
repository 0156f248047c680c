//! JWT and Kubernetes auth through the whole server: enabled with
//! `sys/auth/<path>`, configured, logged in without a token, the token used
//! and renewed. The JWT is signed with an Ed25519 key made at test time;
//! the TokenReview API is a small axum peer on loopback.

#![allow(clippy::unwrap_used)]

use crate::common;

use crate::common::call_as as call;

use std::sync::Arc;

use crate::common::{dev, ROOT};
use axum::routing::post;
use axum::{Json, Router};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::SignatureScheme;
use serde_json::{json, Value};

/// base64url without padding; this crate has no base64 dependency and a
/// test should not add one for a dozen lines.
pub(crate) fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An Ed25519 JWT signer (also used by auth_refusals).
pub(crate) struct Ed25519 {
    signer: Arc<dyn rustls::sign::SigningKey>,
    pub(crate) public_pem: String,
}

impl Ed25519 {
    pub(crate) fn new() -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let der = PrivatePkcs8KeyDer::from(kp.serialize_der());
        let signer = rustls::crypto::aws_lc_rs::sign::any_eddsa_type(&der).unwrap();
        Ed25519 {
            signer,
            public_pem: kp.public_key_pem(),
        }
    }

    pub(crate) fn jwt(&self, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64url(json!({"alg": "EdDSA", "typ": "JWT"}).to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = self
            .signer
            .choose_scheme(&[SignatureScheme::ED25519])
            .unwrap()
            .sign(input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64url(&sig))
    }
}

async fn setup_secret(s: &common::TestServer) {
    let (st, b) = call(
        s,
        "PUT",
        "sys/policies/acl/app",
        Some(ROOT),
        json!({"policy": "path \"secret/data/app/*\" { capabilities = [\"read\"] }"}),
    )
    .await;
    assert!(st == 204 || st == 200, "{st} {b}");
    let (st, b) = call(
        s,
        "POST",
        "secret/data/app/db",
        Some(ROOT),
        json!({"data": {"pw": "x"}}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
}

/// Reads the secret with the token, renews it, and checks what it is.
async fn use_token(s: &common::TestServer, token: &str) {
    let (st, b) = call(s, "GET", "secret/data/app/db", Some(token), Value::Null).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["data"]["pw"], "x");
    let (st, _) = call(s, "GET", "secret/data/other", Some(token), Value::Null).await;
    assert_eq!(st, 403);
    let (st, b) = call(s, "POST", "auth/token/renew-self", Some(token), json!({})).await;
    assert_eq!(st, 200, "{b}");
}

#[tokio::test]
async fn jwt_login_through_the_server() {
    let s = dev().await;
    setup_secret(&s).await;
    let key = Ed25519::new();
    let (st, b) = call(
        &s,
        "POST",
        "sys/auth/jwt",
        Some(ROOT),
        json!({"type": "jwt"}),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = call(
        &s,
        "POST",
        "auth/jwt/config",
        Some(ROOT),
        json!({"jwt_validation_pubkeys": [key.public_pem], "bound_issuer": "https://ci.test"}),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = call(
        &s,
        "POST",
        "auth/jwt/role/ci",
        Some(ROOT),
        json!({"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["tresor"],
               "bound_claims": {"repo": "acme/*"}, "bound_claims_type": "glob",
               "claim_mappings": {"repo": "repository"},
               "token_policies": ["app"], "token_ttl": "10m"}),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = call(&s, "LIST", "auth/jwt/role", Some(ROOT), Value::Null).await;
    assert_eq!((st, &b["data"]["keys"]), (200, &json!(["ci"])), "{b}");

    let now = chrono_now();
    let claims = json!({"iss": "https://ci.test", "aud": "tresor", "sub": "pipeline-42",
                        "repo": "acme/api", "iat": now, "exp": now + 300});
    let (st, b) = call(
        &s,
        "POST",
        "auth/jwt/login",
        None,
        json!({"role": "ci", "jwt": key.jwt(&claims)}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["auth"]["metadata"]["repository"], "acme/api");
    assert_eq!(b["auth"]["metadata"]["role"], "ci");
    assert_eq!(b["auth"]["policies"], json!(["app", "default"]));
    assert_eq!(b["auth"]["lease_duration"], 600);
    use_token(&s, b["auth"]["client_token"].as_str().unwrap()).await;

    // Refused: a claim outside the binding, and an unsigned token.
    let mut other = claims.clone();
    other["repo"] = json!("evil/api");
    let (st, b) = call(
        &s,
        "POST",
        "auth/jwt/login",
        None,
        json!({"role": "ci", "jwt": key.jwt(&other)}),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none"}"#),
        b64url(claims.to_string().as_bytes())
    );
    let (st, b) = call(
        &s,
        "POST",
        "auth/jwt/login",
        None,
        json!({"role": "ci", "jwt": none}),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    // Management paths still need a token.
    let (st, _) = call(&s, "GET", "auth/jwt/role/ci", None, Value::Null).await;
    assert_eq!(st, 403);
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn kubernetes_login_through_the_server() {
    let app = Router::new().route(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        post(
            |headers: axum::http::HeaderMap, Json(body): Json<Value>| async move {
                let bearer_ok = headers.get("authorization").and_then(|v| v.to_str().ok())
                    == Some("Bearer reviewer");
                let status = if bearer_ok && body["spec"]["token"] == "sa-token" {
                    json!({"authenticated": true,
                       "user": {"username": "system:serviceaccount:prod:app", "uid": "uid-1"},
                       "audiences": ["https://kubernetes.default.svc"]})
                } else {
                    json!({"authenticated": false})
                };
                (
                    axum::http::StatusCode::CREATED,
                    Json(json!({"kind": "TokenReview", "status": status})),
                )
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let s = dev().await;
    setup_secret(&s).await;
    let (st, b) = call(
        &s,
        "POST",
        "sys/auth/kubernetes",
        Some(ROOT),
        json!({"type": "kubernetes"}),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = call(
        &s,
        "POST",
        "auth/kubernetes/config",
        Some(ROOT),
        json!({"kubernetes_host": format!("http://{addr}"), "token_reviewer_jwt": "reviewer",
               "disable_local_ca_jwt": true}),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = call(
        &s,
        "POST",
        "auth/kubernetes/role/app",
        Some(ROOT),
        json!({"bound_service_account_names": "app", "bound_service_account_namespaces": "prod",
               "policies": "app", "ttl": 600}),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = call(&s, "GET", "auth/kubernetes/config", Some(ROOT), Value::Null).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["token_reviewer_jwt_set"], true);
    assert!(b["data"].get("token_reviewer_jwt").is_none());

    let (st, b) = call(
        &s,
        "POST",
        "auth/kubernetes/login",
        None,
        json!({"role": "app", "jwt": "sa-token"}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["auth"]["metadata"]["service_account_name"], "app");
    assert_eq!(b["auth"]["metadata"]["service_account_namespace"], "prod");
    assert_eq!(b["auth"]["lease_duration"], 600);
    use_token(&s, b["auth"]["client_token"].as_str().unwrap()).await;

    let (st, b) = call(
        &s,
        "POST",
        "auth/kubernetes/login",
        None,
        json!({"role": "app", "jwt": "stolen"}),
    )
    .await;
    assert_eq!(st, 403, "{b}");
}
