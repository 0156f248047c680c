//! AppRole and userpass through the whole server: enabled with
//! `sys/auth/<path>`, logged in without a token, the token used and renewed.

#![allow(clippy::unwrap_used)]

use crate::common;

use crate::common::call_as as call;

use crate::common::{dev, ROOT};
use serde_json::{json, Value};

async fn setup_policy(s: &common::TestServer) {
    let (st, b) = call(
        s,
        "PUT",
        "sys/policies/acl/app",
        Some(ROOT),
        json!({"policy": "path \"secret/data/app/*\" { capabilities = [\"read\", \"create\", \"update\"] }"}),
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

#[tokio::test]
async fn approle_login_use_and_renew() {
    let s = dev().await;
    setup_policy(&s).await;
    let (st, b) = call(
        &s,
        "POST",
        "sys/auth/approle",
        Some(ROOT),
        json!({"type": "approle"}),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = call(
        &s,
        "POST",
        "auth/approle/role/app",
        Some(ROOT),
        json!({"token_policies": "app", "token_ttl": "10m", "token_max_ttl": "1h", "secret_id_num_uses": 2}),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = call(&s, "LIST", "auth/approle/role", Some(ROOT), Value::Null).await;
    assert_eq!((st, &b["data"]["keys"]), (200, &json!(["app"])), "{b}");
    let (_, b) = call(
        &s,
        "GET",
        "auth/approle/role/app/role-id",
        Some(ROOT),
        Value::Null,
    )
    .await;
    let role_id = b["data"]["role_id"].as_str().unwrap().to_string();
    let (st, b) = call(
        &s,
        "POST",
        "auth/approle/role/app/secret-id",
        Some(ROOT),
        json!({}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let secret_id = b["data"]["secret_id"].as_str().unwrap().to_string();
    assert_eq!(b["data"]["secret_id_num_uses"], json!(2));

    // Management paths need a token; login does not.
    let (st, _) = call(&s, "GET", "auth/approle/role/app", None, Value::Null).await;
    assert_eq!(st, 403);
    let (st, b) = call(
        &s,
        "POST",
        "auth/approle/login",
        None,
        json!({"role_id": role_id, "secret_id": "wrong"}),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    assert_eq!(b["errors"], json!(["invalid role or secret ID"]));

    let (st, b) = call(
        &s,
        "POST",
        "auth/approle/login",
        None,
        json!({"role_id": role_id, "secret_id": secret_id}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let auth = &b["auth"];
    let token = auth["client_token"].as_str().unwrap().to_string();
    assert_eq!(auth["metadata"]["role_name"], json!("app"));
    assert_eq!(auth["lease_duration"], json!(600));
    assert!(auth["renewable"].as_bool().unwrap());
    assert!(auth["policies"].as_array().unwrap().contains(&json!("app")));

    // The token works within its policy and nowhere else.
    let (st, b) = call(&s, "GET", "secret/data/app/db", Some(&token), Value::Null).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["data"]["pw"], json!("x"));
    let (st, _) = call(
        &s,
        "GET",
        "auth/approle/role/app",
        Some(&token),
        Value::Null,
    )
    .await;
    assert_eq!(st, 403);

    let (st, b) = call(
        &s,
        "POST",
        "auth/token/renew-self",
        Some(&token),
        json!({"increment": "5m"}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["auth"]["client_token"], json!(token));

    // Second use is the last; the third is refused.
    let body = json!({"role_id": role_id, "secret_id": secret_id});
    let (st, _) = call(&s, "POST", "auth/approle/login", None, body.clone()).await;
    assert_eq!(st, 200);
    let (st, _) = call(&s, "POST", "auth/approle/login", None, body).await;
    assert_eq!(st, 400);

    // Once the role is gone, the token no longer renews.
    let (st, _) = call(
        &s,
        "DELETE",
        "auth/approle/role/app",
        Some(ROOT),
        Value::Null,
    )
    .await;
    assert_eq!(st, 204);
    let (st, b) = call(&s, "POST", "auth/token/renew-self", Some(&token), json!({})).await;
    assert!(st >= 400, "{st} {b}");
}

#[tokio::test]
async fn userpass_login_use_and_renew() {
    let s = dev().await;
    setup_policy(&s).await;
    let (st, b) = call(
        &s,
        "POST",
        "sys/auth/userpass",
        Some(ROOT),
        json!({"type": "userpass"}),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = call(
        &s,
        "POST",
        "auth/userpass/users/Alice",
        Some(ROOT),
        json!({"password": "s3cret", "token_policies": ["app"], "token_ttl": "15m"}),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (_, b) = call(&s, "LIST", "auth/userpass/users", Some(ROOT), Value::Null).await;
    assert_eq!(b["data"]["keys"], json!(["alice"]));

    let (st, wrong) = call(
        &s,
        "POST",
        "auth/userpass/login/alice",
        None,
        json!({"password": "nope"}),
    )
    .await;
    assert_eq!(st, 400);
    let (st2, unknown) = call(
        &s,
        "POST",
        "auth/userpass/login/mallory",
        None,
        json!({"password": "nope"}),
    )
    .await;
    assert_eq!((st2, &unknown), (st, &wrong));

    let (st, b) = call(
        &s,
        "POST",
        "auth/userpass/login/ALICE",
        None,
        json!({"password": "s3cret"}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let token = b["auth"]["client_token"].as_str().unwrap().to_string();
    assert_eq!(b["auth"]["metadata"]["username"], json!("alice"));
    assert_eq!(b["auth"]["lease_duration"], json!(900));

    let (st, b) = call(&s, "GET", "secret/data/app/db", Some(&token), Value::Null).await;
    assert_eq!(st, 200, "{b}");
    let (st, b) = call(
        &s,
        "GET",
        "auth/token/lookup-self",
        Some(&token),
        Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["path"], json!("auth/userpass/login/ALICE"));
    let (st, b) = call(&s, "POST", "auth/token/renew-self", Some(&token), json!({})).await;
    assert_eq!(st, 200, "{b}");

    // Changed policies: renewal refused.
    let (st, _) = call(
        &s,
        "POST",
        "auth/userpass/users/alice/policies",
        Some(ROOT),
        json!({"policies": "other"}),
    )
    .await;
    assert_eq!(st, 204);
    let (st, b) = call(&s, "POST", "auth/token/renew-self", Some(&token), json!({})).await;
    assert!(st >= 400, "{st} {b}");
}
