//! The simple API end to end, with password policies and KV rotation: a
//! real core and the real engines behind the real listener.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::{client, dev, uninitialized, ROOT};
use serde_json::{json, Value};

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

const POLICY: &str = "length = 24\nrule \"charset\" {\n  charset = \"abcdefghij\"\n  min-chars = 2\n}\nrule \"charset\" {\n  charset = \"0123456789\"\n  min-chars = 2\n}\n";

#[tokio::test]
async fn password_policies_over_http() {
    let s = dev().await;
    let c = client();
    let (status, body) = json_of(
        c.put(s.url("/v1/sys/policies/password/mine"))
            .header("X-Vault-Token", ROOT)
            .json(&json!({ "policy": POLICY }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = json_of(
        c.get(s.url("/v1/sys/policies/password/mine"))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["policy"], json!(POLICY));
    let (status, body) = json_of(
        c.get(s.url("/v1/sys/policies/password/mine/generate"))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let pw = body["data"]["password"].as_str().unwrap();
    assert_eq!(pw.len(), 24);
    assert!(pw
        .chars()
        .all(|c| c.is_ascii_digit() || ('a'..='j').contains(&c)));
    assert!(pw.chars().filter(char::is_ascii_digit).count() >= 2);

    let (status, body) = json_of(
        c.request(
            reqwest::Method::from_bytes(b"LIST").unwrap(),
            s.url("/v1/sys/policies/password"),
        )
        .header("X-Vault-Token", ROOT)
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["keys"], json!(["mine"]));

    // Invalid documents are refused with the problem named.
    let (status, body) = json_of(
        c.put(s.url("/v1/sys/policies/password/bad"))
            .header("X-Vault-Token", ROOT)
            .json(&json!({ "policy": "length = 2\nrule \"charset\" {\n charset = \"ab\"\n}\n" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["errors"][0].as_str().unwrap().contains("'length'"),
        "{body}"
    );
    let (status, _) = json_of(
        c.get(s.url("/v1/sys/policies/password/nope/generate"))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);

    let (status, _) = json_of(
        c.delete(s.url("/v1/sys/policies/password/mine"))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = json_of(
        c.get(s.url("/v1/sys/policies/password/mine"))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn rotation_with_grace_through_the_simple_api() {
    let s = dev().await;
    let c = client();
    let put = |path: &str, body: Value| {
        c.put(s.url(path))
            .header("X-Vault-Token", ROOT)
            .json(&body)
            .send()
    };
    let (status, _) = json_of(
        put(
            "/v1/sys/policies/password/mine",
            json!({ "policy": POLICY }),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = json_of(
        put(
            "/api/v1/secrets/app/db",
            json!({"user": "app", "password": "first"}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = json_of(
        put(
            "/v1/secret/rotation/app/db",
            json!({"fields": ["password"], "password_policy": "mine", "grace_period": "2s"}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = json_of(
        c.post(s.url("/api/v1/secrets/app/db/rotate"))
            .bearer_auth(ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], json!(2));
    assert_eq!(body["mount"], json!("secret/"));
    assert!(
        body.get("data").is_none(),
        "a rotation does not echo secrets"
    );

    let (status, body) = json_of(
        c.get(s.url("/api/v1/secrets/app/db"))
            .bearer_auth(ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], json!(2));
    assert_eq!(body["data"]["user"], json!("app"));
    assert_eq!(body["data"]["password"].as_str().unwrap().len(), 24);
    assert_eq!(
        body["previous"],
        json!({"version": 1, "data": {"user": "app", "password": "first"}})
    );

    // A token that may read the secret (and not its rotation rule) gets
    // the previous block too; one that may not rotate cannot.
    let (status, _) = json_of(
        put(
            "/v1/sys/policies/acl/reader",
            json!({"policy": "path \"secret/data/*\" { capabilities = [\"read\"] }"}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 204);
    let (_, tok) = json_of(
        c.post(s.url("/v1/auth/token/create"))
            .header("X-Vault-Token", ROOT)
            .json(&json!({"policies": ["reader"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let reader = tok["auth"]["client_token"].as_str().unwrap().to_string();
    let (status, body) = json_of(
        c.get(s.url("/api/v1/secrets/app/db"))
            .bearer_auth(&reader)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["previous"]["version"], json!(1));
    let (status, body) = json_of(
        c.post(s.url("/api/v1/secrets/app/db/rotate"))
            .bearer_auth(&reader)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body, json!({"error": "permission denied"}));

    // After the grace period only the new value is served.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (status, body) = json_of(
        c.get(s.url("/api/v1/secrets/app/db"))
            .bearer_auth(ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.get("previous").is_none(), "{body}");
    let (status, _) = json_of(
        c.get(s.url("/v1/secret/data/app/db?version=1"))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);

    // A failed rotation is a 400 with the reason, and changes nothing.
    let (status, body) = json_of(
        c.post(s.url("/api/v1/secrets/app/db/rotate"))
            .bearer_auth(ROOT)
            .json(&json!({"fields": ["password"], "password_policy": "missing"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("missing"),
        "{body}"
    );
    let (_, body) = json_of(
        c.get(s.url("/api/v1/secrets/app/db"))
            .bearer_auth(ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["version"], json!(2));
}

#[tokio::test]
async fn other_mounts_and_error_shape() {
    let s = dev().await;
    let c = client();
    let (status, _) = json_of(
        c.post(s.url("/v1/sys/mounts/team"))
            .header("X-Vault-Token", ROOT)
            .json(&json!({"type": "kv-v2"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 204);
    let (status, body) = json_of(
        c.put(s.url("/api/v1/secrets/svc?mount=team"))
            .bearer_auth(ROOT)
            .json(&json!({"k": "v"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!({"version": 1})));
    // No rule: the body names the fields; the default policy is used.
    let (status, body) = json_of(
        c.post(s.url("/api/v1/secrets/svc/rotate?mount=team"))
            .bearer_auth(ROOT)
            .json(&json!({"fields": ["k"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], json!(2));
    assert_eq!(body["mount"], json!("team/"));
    let (status, body) = json_of(
        c.get(s.url("/api/v1/secrets/svc?mount=team"))
            .bearer_auth(ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let k = body["data"]["k"].as_str().unwrap();
    assert_eq!(k.len(), 20);
    assert!(k.contains('-'));
    assert!(body.get("previous").is_none(), "no grace period given");

    let (status, body) = json_of(
        c.get(s.url("/api/v1/secrets/svc"))
            .bearer_auth(ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body, json!({"error": "not found"}));
    let (status, body) = json_of(
        c.get(s.url("/api/v1/secrets/svc?mount=team"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body, json!({"error": "permission denied"}));
    let (status, body) = json_of(
        c.delete(s.url("/api/v1/secrets/svc?mount=team"))
            .bearer_auth(ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    assert!(body["error"].is_string());
    let (status, body) = json_of(
        c.post(s.url("/api/v1/auth/login"))
            .json(&json!({"method": "token", "token": "bogus"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body, json!({"error": "permission denied"}));

    let u = uninitialized().await;
    let (status, body) = json_of(c.get(u.url("/health")).send().await.unwrap()).await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], json!("uninitialized"));
    let (status, body) = json_of(
        c.get(u.url("/api/v1/secrets/x"))
            .bearer_auth(ROOT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503);
    assert!(body["error"].is_string());
}
