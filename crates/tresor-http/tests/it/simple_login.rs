//! The simple API's login (`POST /api/v1/auth/login`) through the whole
//! server, next to the Vault login paths it maps onto; and the regressions
//! of the simple API's `previous` block, which must follow the caller's
//! own policy on `<mount>/data/<path>` and the secret's current version.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::common::{
    call_as as call, client, dev, enable_auth, put_policy, token_with, TestServer, ROOT,
};

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

async fn simple_login(s: &TestServer, body: Value) -> (u16, Value) {
    json_of(
        client()
            .post(s.url("/api/v1/auth/login"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn simple_get(s: &TestServer, path: &str, token: &str) -> (u16, Value) {
    json_of(
        client()
            .get(s.url(&format!("/api/v1/secrets/{path}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn simple_put(s: &TestServer, path: &str, token: &str, body: Value) -> (u16, Value) {
    json_of(
        client()
            .put(s.url(&format!("/api/v1/secrets/{path}")))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// An AppRole role `app` at `auth/<mount>/` with the `app` policy and a
/// 10-minute TTL; its role ID and a fresh secret ID.
async fn approle(s: &TestServer, mount: &str) -> (String, String) {
    let (st, b) = call(
        s,
        "POST",
        &format!("auth/{mount}/role/app"),
        Some(ROOT),
        json!({"token_policies": "app", "token_ttl": "10m", "token_max_ttl": "1h"}),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (_, b) = call(
        s,
        "GET",
        &format!("auth/{mount}/role/app/role-id"),
        Some(ROOT),
        Value::Null,
    )
    .await;
    let role_id = b["data"]["role_id"].as_str().unwrap().to_string();
    let (st, b) = call(
        s,
        "POST",
        &format!("auth/{mount}/role/app/secret-id"),
        Some(ROOT),
        json!({}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    (
        role_id,
        b["data"]["secret_id"].as_str().unwrap().to_string(),
    )
}

/// A userpass user `alice` at `auth/<mount>/` with the `app` policy and a
/// 15-minute TTL.
async fn alice(s: &TestServer, mount: &str) {
    let (st, b) = call(
        s,
        "POST",
        &format!("auth/{mount}/users/alice"),
        Some(ROOT),
        json!({"password": "s3cret", "token_policies": ["app"], "token_ttl": "15m"}),
    )
    .await;
    assert_eq!(st, 204, "{b}");
}

/// Checks a successful simple login answer: exactly `token`, `accessor`,
/// `policies` and `expires_at`, consistent with the token's own lookup,
/// expiring about `ttl` from now.
async fn check_login_answer(s: &TestServer, body: &Value, ttl: i64) {
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["accessor", "expires_at", "policies", "token"],
        "{body}"
    );
    let token = body["token"].as_str().unwrap();
    assert!(!token.is_empty());
    let policies = body["policies"].as_array().unwrap();
    assert!(policies.contains(&json!("app")), "{body}");
    assert!(policies.contains(&json!("default")), "{body}");

    let expires: DateTime<Utc> = body["expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .expect("expires_at is RFC 3339");
    let left = (expires - Utc::now()).num_seconds();
    assert!(left > ttl - 60 && left <= ttl + 1, "{left}s left, {body}");

    // The token is a real one, the one the accessor names.
    let (st, b) = call(s, "GET", "auth/token/lookup-self", Some(token), Value::Null).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["accessor"], body["accessor"]);
    let sorted = |v: &Value| {
        let mut p: Vec<String> = serde_json::from_value(v.clone()).unwrap();
        p.sort();
        p
    };
    assert_eq!(sorted(&b["data"]["policies"]), sorted(&body["policies"]));
    let (st, b) = call(s, "GET", "secret/data/app/db", Some(token), Value::Null).await;
    assert_eq!(st, 200, "{b}");
}

async fn setup(s: &TestServer) {
    put_policy(
        s,
        "app",
        "path \"secret/data/app/*\" { capabilities = [\"read\"] }",
    )
    .await;
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

#[tokio::test]
async fn simple_login_with_approle() {
    let s = dev().await;
    setup(&s).await;
    enable_auth(&s, "approle", "approle").await;
    let (role_id, secret_id) = approle(&s, "approle").await;

    // `role` is what the request shape carries for every method;
    // AppRole has no use for it and must not choke on it.
    let (st, b) = simple_login(
        &s,
        json!({"method": "approle", "role": "app", "role_id": role_id, "secret_id": secret_id}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    check_login_answer(&s, &b, 600).await;

    // A wrong secret ID: the Vault path's status and message, in the
    // façade's error shape.
    let wrong = json!({"role_id": role_id, "secret_id": "wrong"});
    let (vault_st, vault_b) = call(&s, "POST", "auth/approle/login", None, wrong.clone()).await;
    assert_eq!(vault_st, 400, "{vault_b}");
    let mut body = wrong;
    body["method"] = json!("approle");
    let (st, b) = simple_login(&s, body).await;
    assert_eq!(st, vault_st, "{b}");
    assert_eq!(b, json!({ "error": vault_b["errors"][0] }));

    // No token is minted by a failed login, and a caller's own token plays
    // no part in a login.
    let (st, b) = json_of(
        client()
            .post(s.url("/api/v1/auth/login"))
            .bearer_auth(ROOT)
            .json(&json!({"method": "approle", "role_id": role_id, "secret_id": "wrong"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 400, "{b}");
}

#[tokio::test]
async fn simple_login_with_userpass() {
    let s = dev().await;
    setup(&s).await;
    enable_auth(&s, "userpass", "userpass").await;
    alice(&s, "userpass").await;

    // Usernames are normalised as on the Vault path.
    let (st, b) = simple_login(
        &s,
        json!({"method": "userpass", "username": " Alice ", "password": "s3cret"}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    check_login_answer(&s, &b, 900).await;
    let (_, who) = call(
        &s,
        "GET",
        "auth/token/lookup-self",
        Some(b["token"].as_str().unwrap()),
        Value::Null,
    )
    .await;
    assert_eq!(who["data"]["meta"]["username"], json!("alice"), "{who}");

    // A wrong password and an unknown user: one answer, the Vault path's
    // status, as `{"error": ...}`.
    let (vault_st, vault_b) = call(
        &s,
        "POST",
        "auth/userpass/login/alice",
        None,
        json!({"password": "nope"}),
    )
    .await;
    assert_eq!(vault_st, 400, "{vault_b}");
    let expected = json!({ "error": vault_b["errors"][0] });
    let (st, wrong) = simple_login(
        &s,
        json!({"method": "userpass", "username": "alice", "password": "nope"}),
    )
    .await;
    assert_eq!((st, &wrong), (vault_st, &expected));
    let (st, unknown) = simple_login(
        &s,
        json!({"method": "userpass", "username": "mallory", "password": "nope"}),
    )
    .await;
    assert_eq!((st, &unknown), (vault_st, &expected));

    // The username is a name, not a piece of URL: escapes are not decoded
    // and cannot reach another path.
    let (st, b) = simple_login(
        &s,
        json!({"method": "userpass", "username": "al%69ce", "password": "s3cret"}),
    )
    .await;
    assert_eq!((st, &b), (vault_st, &expected));
    for bad in ["alice/x", "../approle/login", "a\nb"] {
        let (st, b) = simple_login(
            &s,
            json!({"method": "userpass", "username": bad, "password": "s3cret"}),
        )
        .await;
        assert_eq!(st, 400, "{bad:?}: {b}");
        assert!(b["error"].is_string(), "{b}");
        assert!(b.get("token").is_none(), "{b}");
    }
    let (st, b) = simple_login(&s, json!({"method": "userpass", "password": "s3cret"})).await;
    assert_eq!(st, 400);
    assert!(b["error"].as_str().unwrap().contains("username"), "{b}");
}

#[tokio::test]
async fn simple_login_with_a_mount_override() {
    let s = dev().await;
    setup(&s).await;
    enable_auth(&s, "ci/apps", "approle").await;
    enable_auth(&s, "people", "userpass").await;
    let (role_id, secret_id) = approle(&s, "ci/apps").await;
    alice(&s, "people").await;

    let (st, b) = simple_login(
        &s,
        json!({"method": "approle", "mount": "ci/apps", "role_id": role_id, "secret_id": secret_id}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    check_login_answer(&s, &b, 600).await;
    let (_, who) = call(
        &s,
        "GET",
        "auth/token/lookup-self",
        Some(b["token"].as_str().unwrap()),
        Value::Null,
    )
    .await;
    assert_eq!(who["data"]["path"], json!("auth/ci/apps/login"), "{who}");

    // Slashes around the mount are tolerated.
    let (st, b) = simple_login(
        &s,
        json!({"method": "userpass", "mount": "/people/", "username": "alice", "password": "s3cret"}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    check_login_answer(&s, &b, 900).await;

    // The default mounts are not enabled here: refused, with the path named.
    let (st, b) = simple_login(
        &s,
        json!({"method": "userpass", "username": "alice", "password": "s3cret"}),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    assert!(
        b["error"].as_str().unwrap().contains("auth/userpass/"),
        "{b}"
    );
    // A mount of another method is not a way in either.
    let (st, b) = simple_login(
        &s,
        json!({"method": "approle", "mount": "secret", "role_id": role_id, "secret_id": "x"}),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    let (st, b) = simple_login(
        &s,
        json!({"method": "approle", "mount": "../sys", "role_id": role_id, "secret_id": "x"}),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    assert!(b.get("token").is_none());
    let (st, b) = simple_login(&s, json!({"method": "approle", "mount": 3})).await;
    assert_eq!(st, 400, "{b}");
}

#[tokio::test]
async fn simple_login_with_a_token() {
    let s = dev().await;
    setup(&s).await;
    let (st, b) = call(
        &s,
        "POST",
        "auth/token/create",
        Some(ROOT),
        json!({"policies": ["app"], "ttl": "20m"}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let token = b["auth"]["client_token"].as_str().unwrap().to_string();
    let (st, b) = simple_login(&s, json!({"method": "token", "token": token})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["token"], json!(token));
    check_login_answer(&s, &b, 1200).await;
    // A token that never expires has no `expires_at`.
    let (st, b) = simple_login(&s, json!({"method": "token", "token": ROOT})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["policies"], json!(["root"]));
    assert_eq!(b["expires_at"], Value::Null);
    let (st, b) = simple_login(&s, json!({"method": "token", "token": "bogus"})).await;
    assert_eq!((st, b), (403, json!({"error": "permission denied"})));

    let (st, b) = simple_login(&s, json!({"method": "nope"})).await;
    assert_eq!(st, 400);
    assert!(b["error"].is_string());
    let (st, b) = simple_login(&s, json!({"username": "alice"})).await;
    assert_eq!(st, 400);
    assert!(b["error"].as_str().unwrap().contains("method"), "{b}");
}

// ----- the `previous` block ----------------------------------------------

/// `secret/app/db` at version 1, rotated to version 2 with `grace`.
async fn rotated(s: &TestServer, grace: &str) {
    let (st, b) = simple_put(
        s,
        "app/db",
        ROOT,
        json!({"user": "app", "password": "first"}),
    )
    .await;
    assert_eq!((st, &b), (200, &json!({"version": 1})));
    let (st, b) = json_of(
        client()
            .post(s.url("/api/v1/secrets/app/db/rotate"))
            .bearer_auth(ROOT)
            .json(&json!({"fields": ["password"], "grace_period": grace}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["version"], json!(2));
}

#[tokio::test]
async fn previous_block_reaches_a_reader_of_data_only() {
    let s = dev().await;
    put_policy(
        &s,
        "consumer",
        "path \"secret/data/app/*\" { capabilities = [\"read\"] }",
    )
    .await;
    let consumer = token_with(&s, &["consumer"]).await;
    rotated(&s, "2s").await;

    // The consumer may not see the rotation rule, and need not.
    let (st, _) = call(
        &s,
        "GET",
        "secret/rotation/app/db",
        Some(&consumer),
        Value::Null,
    )
    .await;
    assert_eq!(st, 403);
    let (st, b) = simple_get(&s, "app/db", &consumer).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["version"], json!(2));
    assert_ne!(b["data"]["password"], json!("first"));
    assert_eq!(
        b["previous"],
        json!({"version": 1, "data": {"user": "app", "password": "first"}})
    );
    // What the façade relies on, as Vault clients see it.
    let (st, b) = call(
        &s,
        "GET",
        "secret/data/app/db",
        Some(&consumer),
        Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["metadata"]["previous_version"], json!(1));
    assert!(b["data"]["metadata"]["grace_until"]
        .as_str()
        .unwrap()
        .parse::<DateTime<Utc>>()
        .is_ok());

    // After the grace period: no previous block, for anyone.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    for token in [consumer.as_str(), ROOT] {
        let (st, b) = simple_get(&s, "app/db", token).await;
        assert_eq!(st, 200, "{b}");
        assert!(b.get("previous").is_none(), "{b}");
    }
    let (_, b) = call(
        &s,
        "GET",
        "secret/data/app/db",
        Some(&consumer),
        Value::Null,
    )
    .await;
    assert!(
        b["data"]["metadata"].get("previous_version").is_none(),
        "{b}"
    );
    assert!(b["data"]["metadata"].get("grace_until").is_none(), "{b}");

    // A token that may not read the secret gets nothing from the façade.
    let other = token_with(&s, &["default"]).await;
    let (st, b) = simple_get(&s, "app/db", &other).await;
    assert_eq!((st, b), (403, json!({"error": "permission denied"})));
}

#[tokio::test]
async fn previous_block_ends_with_a_put_after_a_rotation() {
    let s = dev().await;
    rotated(&s, "1h").await;
    let (st, b) = simple_get(&s, "app/db", ROOT).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["previous"]["version"], json!(1));
    let rotated_pw = b["data"]["password"].clone();

    // A plain write supersedes the rotated value; the pre-rotation value
    // is no longer "the previous one".
    let (st, b) = simple_put(
        &s,
        "app/db",
        ROOT,
        json!({"user": "app", "password": "by-hand"}),
    )
    .await;
    assert_eq!((st, &b), (200, &json!({"version": 3})));
    let (st, b) = simple_get(&s, "app/db", ROOT).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["version"], json!(3));
    assert_eq!(b["data"]["password"], json!("by-hand"));
    assert!(b.get("previous").is_none(), "{b}");
    let (_, b) = call(&s, "GET", "secret/data/app/db", Some(ROOT), Value::Null).await;
    assert!(
        b["data"]["metadata"].get("previous_version").is_none(),
        "{b}"
    );

    // The retired version itself stays readable by number until its grace
    // ends, as the rotation promised.
    let (st, b) = call(
        &s,
        "GET",
        "secret/data/app/db?version=1",
        Some(ROOT),
        Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["data"]["password"], json!("first"));

    // A new rotation announces the version it replaced.
    let (st, b) = json_of(
        client()
            .post(s.url("/api/v1/secrets/app/db/rotate"))
            .bearer_auth(ROOT)
            .json(&json!({"fields": ["password"], "grace_period": "1h"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (_, b) = simple_get(&s, "app/db", ROOT).await;
    assert_eq!(b["version"], json!(4));
    assert_eq!(
        b["previous"],
        json!({"version": 3, "data": {"user": "app", "password": "by-hand"}})
    );
    assert_ne!(b["data"]["password"], rotated_pw);
}
