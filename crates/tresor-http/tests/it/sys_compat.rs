//! Regression tests for `sys/` and `auth/token/` answers that differed from
//! Vault's: each test is named after what was wrong.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{call_as, call_root, client, dev, put_policy, token_with, TestServer, ROOT};

/// A token holding only `policy` (plus `default`).
async fn token_for(s: &TestServer, name: &str, policy: &str) -> String {
    put_policy(s, name, policy).await;
    token_with(s, &[name]).await
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn ui_mounts_bypassed_the_acl() {
    let s = dev().await;
    for (path, ty) in [("visible", "kv-v2"), ("hidden", "kv"), ("segs", "kv")] {
        let (st, b) = call_root(
            &s,
            "POST",
            &format!("sys/mounts/{path}"),
            Some(json!({ "type": ty })),
        )
        .await;
        assert_eq!(st, 204, "{b}");
    }
    let (st, b) = call_root(
        &s,
        "POST",
        "sys/auth/userpass",
        Some(json!({"type": "userpass"})),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let token = token_for(
        &s,
        "ui-reader",
        r#"
        path "visible/data/app/*" { capabilities = ["read"] }
        path "segs/+/only/*" { capabilities = ["list"] }
        path "hidden/*" { capabilities = ["deny"] }
        "#,
    )
    .await;

    // The listing shows only what the token can reach.
    let (st, b) = call_as(
        &s,
        "GET",
        "sys/internal/ui/mounts",
        Some(token.as_str()),
        Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let secret = keys(&b["data"]["secret"]);
    assert!(secret.contains(&"visible/".to_string()), "{b}");
    // `segs/+/only/*` can match paths under `segs/`.
    assert!(secret.contains(&"segs/".to_string()), "{b}");
    assert!(!secret.contains(&"hidden/".to_string()), "{b}");
    // The default policy grants cubbyhole/*.
    assert!(secret.contains(&"cubbyhole/".to_string()), "{b}");
    assert!(!keys(&b["data"]["auth"]).contains(&"userpass/".to_string()));

    // Root sees everything.
    let (st, b) = call_root(&s, "GET", "sys/internal/ui/mounts", None).await;
    assert_eq!(st, 200, "{b}");
    let secret = keys(&b["data"]["secret"]);
    for m in [
        "visible/",
        "hidden/",
        "segs/",
        "secret/",
        "sys/",
        "cubbyhole/",
    ] {
        assert!(secret.contains(&m.to_string()), "{m}: {b}");
    }
    assert!(keys(&b["data"]["auth"]).contains(&"userpass/".to_string()));

    // The per-mount form: 403 without access, the mount's details with it.
    let (st, b) = call_as(
        &s,
        "GET",
        "sys/internal/ui/mounts/visible/data/app/x",
        Some(token.as_str()),
        Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["path"], "visible/");
    assert_eq!(b["data"]["options"]["version"], "2");
    for path in [
        "hidden/x",
        "secret/data/x",
        "auth/userpass/login/u",
        "no-such-mount/x",
    ] {
        let (st, b) = call_as(
            &s,
            "GET",
            &format!("sys/internal/ui/mounts/{path}"),
            Some(token.as_str()),
            Value::Null,
        )
        .await;
        assert_eq!(st, 403, "{path}: {b}");
    }
    let (st, b) = call_root(&s, "GET", "sys/internal/ui/mounts/hidden/x", None).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["type"], "kv");
}

#[tokio::test]
async fn token_lookup_of_unknown_token_answered_400() {
    let s = dev().await;
    let (st, b) = call_root(
        &s,
        "POST",
        "auth/token/lookup",
        Some(json!({"token": "hvs.no-such-token"})),
    )
    .await;
    assert_eq!(st, 403, "{b}");
    // The same through GET with a query parameter.
    let (st, b) = call_root(&s, "GET", "auth/token/lookup?token=hvs.nope", None).await;
    assert_eq!(st, 403, "{b}");
    // Revoking an unknown token is idempotent (204), as in Vault…
    let (st, b) = call_root(
        &s,
        "POST",
        "auth/token/revoke",
        Some(json!({"token": "hvs.no-such-token"})),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    // …but an unknown accessor is an error, and so is renewing an unknown token.
    let (st, b) = call_root(
        &s,
        "POST",
        "auth/token/revoke-accessor",
        Some(json!({"accessor": "no-such-accessor"})),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    let (st, b) = call_root(
        &s,
        "POST",
        "auth/token/renew",
        Some(json!({"token": "hvs.no-such-token"})),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    let (st, b) = call_root(
        &s,
        "POST",
        "auth/token/lookup-accessor",
        Some(json!({"accessor": "no-such-accessor"})),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    // A known token still looks up.
    let (st, b) = call_root(
        &s,
        "POST",
        "auth/token/lookup",
        Some(json!({"token": ROOT})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["policies"], json!(["root"]));
}

#[tokio::test]
async fn legacy_sys_answers_lacked_top_level_data() {
    let s = dev().await;
    let (st, b) = call_root(&s, "GET", "sys/mounts", None).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["secret/"]["type"], "kv");
    assert_eq!(b["data"]["secret/"]["type"], "kv");
    assert!(b["request_id"].is_string(), "{b}");

    let (st, b) = call_root(&s, "GET", "sys/auth", None).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["token/"]["type"], "token");
    assert_eq!(b["data"]["token/"]["type"], "token");

    let (st, b) = call_root(&s, "GET", "sys/policy", None).await;
    assert_eq!(st, 200, "{b}");
    assert!(b["policies"]
        .as_array()
        .unwrap()
        .contains(&json!("default")));
    assert_eq!(b["policies"], b["data"]["policies"]);
    assert_eq!(b["keys"], b["data"]["keys"]);

    let (st, b) = call_root(&s, "GET", "sys/policy/default", None).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["name"], "default");
    assert!(b["rules"].as_str().unwrap().contains("lookup-self"), "{b}");
    assert_eq!(b["rules"], b["data"]["rules"]);

    // Other answers keep the plain envelope.
    let (st, b) = call_root(&s, "GET", "sys/policies/acl/default", None).await;
    assert_eq!(st, 200, "{b}");
    assert!(b.get("policy").is_none(), "{b}");
    assert!(b["data"]["policy"].is_string());
    // A wrapped answer is not flattened.
    let r = client()
        .get(s.url("/v1/sys/mounts"))
        .header("X-Vault-Token", ROOT)
        .header("X-Vault-Wrap-TTL", "60s")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let b: Value = r.json().await.unwrap();
    assert!(b["wrap_info"]["token"].is_string(), "{b}");
    assert!(b.get("secret/").is_none(), "{b}");
}

#[tokio::test]
async fn policy_lists_left_out_root() {
    let s = dev().await;
    let (st, b) = call_root(&s, "LIST", "sys/policies/acl", None).await;
    assert_eq!(st, 200, "{b}");
    let listed = b["data"]["keys"].as_array().unwrap();
    assert!(listed.contains(&json!("root")), "{b}");
    assert!(listed.contains(&json!("default")), "{b}");
    let (st, b) = call_root(&s, "GET", "sys/policies/acl?list=true", None).await;
    assert_eq!(st, 200, "{b}");
    assert!(b["data"]["keys"]
        .as_array()
        .unwrap()
        .contains(&json!("root")));
    let (st, b) = call_root(&s, "GET", "sys/policy", None).await;
    assert_eq!(st, 200, "{b}");
    assert!(b["data"]["keys"]
        .as_array()
        .unwrap()
        .contains(&json!("root")));
    assert!(b["data"]["policies"]
        .as_array()
        .unwrap()
        .contains(&json!("root")));
}

#[tokio::test]
async fn mount_local_and_seal_wrap_were_ignored() {
    let s = dev().await;
    let (st, b) = call_root(
        &s,
        "POST",
        "sys/mounts/flagged",
        Some(json!({"type": "kv", "local": true, "seal_wrap": true})),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = call_root(&s, "POST", "sys/mounts/plain", Some(json!({"type": "kv"}))).await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = call_root(
        &s,
        "POST",
        "sys/auth/up-local",
        Some(json!({"type": "userpass", "local": "true"})),
    )
    .await;
    assert_eq!(st, 204, "{b}");

    let (st, b) = call_root(&s, "GET", "sys/mounts", None).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["flagged/"]["local"], true, "{b}");
    assert_eq!(b["data"]["flagged/"]["seal_wrap"], true, "{b}");
    assert_eq!(b["data"]["plain/"]["local"], false, "{b}");
    assert_eq!(b["data"]["plain/"]["seal_wrap"], false, "{b}");
    let (st, b) = call_root(&s, "GET", "sys/mounts/flagged", None).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["local"], true, "{b}");
    assert_eq!(b["data"]["seal_wrap"], true, "{b}");
    let (st, b) = call_root(&s, "GET", "sys/auth", None).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["up-local/"]["local"], true, "{b}");
    assert_eq!(b["data"]["up-local/"]["seal_wrap"], false, "{b}");
}

/// A PKI certificate with `generate_lease`: a lease without any service
/// outside the process.
async fn pki_lease(s: &TestServer) -> String {
    let (st, b) = call_root(s, "POST", "sys/mounts/pki", Some(json!({"type": "pki"}))).await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = call_root(
        s,
        "POST",
        "pki/root/generate/internal",
        Some(json!({"common_name": "Lease Root", "ttl": "24h", "key_type": "ec"})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (st, b) = call_root(
        s,
        "POST",
        "pki/roles/leased",
        Some(json!({
            "allow_any_name": true,
            "generate_lease": true,
            "key_type": "ec",
            "max_ttl": "1h",
        })),
    )
    .await;
    assert!(st == 200 || st == 204, "{st} {b}");
    let (st, b) = call_root(
        s,
        "POST",
        "pki/issue/leased",
        Some(json!({"common_name": "leased.example.com", "ttl": "10m"})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let id = b["lease_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("pki/issue/leased/"), "{b}");
    id
}

#[tokio::test]
async fn lease_id_in_the_url_was_not_routed() {
    let s = dev().await;
    let id = pki_lease(&s).await;

    // The renew form with the id in the URL reaches the lease: this one is
    // not renewable, which is what the body form answers too.
    let (st, b) = call_root(&s, "PUT", &format!("sys/leases/renew/{id}"), None).await;
    assert_eq!(st, 400, "{b}");
    assert!(
        b["errors"][0].as_str().unwrap().contains("not renewable"),
        "{b}"
    );
    let (st, body_form) =
        call_root(&s, "PUT", "sys/leases/renew", Some(json!({"lease_id": id}))).await;
    assert_eq!((st, &body_form["errors"]), (400, &b["errors"]));
    // An unknown id in the URL is an unknown lease, not an unknown path.
    let (st, b) = call_root(&s, "PUT", "sys/leases/renew/pki/issue/leased/nope", None).await;
    assert_eq!(st, 400, "{b}");

    // Revoke with the id in the URL.
    let (st, b) = call_root(&s, "PUT", &format!("sys/leases/revoke/{id}"), None).await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = call_root(
        &s,
        "PUT",
        "sys/leases/lookup",
        Some(json!({"lease_id": id})),
    )
    .await;
    assert_eq!(st, 400, "lease gone after revoke: {b}");

    // The body's lease_id wins over the URL's, as in Vault.
    let id2 = {
        let (st, b) = call_root(
            &s,
            "POST",
            "pki/issue/leased",
            Some(json!({"common_name": "second.example.com", "ttl": "10m"})),
        )
        .await;
        assert_eq!(st, 200, "{b}");
        b["lease_id"].as_str().unwrap().to_string()
    };
    let (st, b) = call_root(
        &s,
        "PUT",
        "sys/leases/revoke/pki/issue/leased/other",
        Some(json!({"lease_id": id2})),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, _) = call_root(
        &s,
        "PUT",
        "sys/leases/lookup",
        Some(json!({"lease_id": id2})),
    )
    .await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn patch_accepted_any_content_type() {
    let s = dev().await;
    let (st, b) = call_root(
        &s,
        "POST",
        "secret/data/p",
        Some(json!({"data": {"a": "1", "b": "2"}})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let send = |ct: Option<&'static str>| {
        let mut r = client()
            .patch(s.url("/v1/secret/data/p"))
            .header("X-Vault-Token", ROOT)
            .body(r#"{"data": {"b": "3"}}"#);
        if let Some(ct) = ct {
            r = r.header("Content-Type", ct);
        }
        r.send()
    };
    for ct in [Some("application/json"), Some("text/plain"), None] {
        let r = send(ct).await.unwrap();
        assert_eq!(r.status().as_u16(), 415, "{ct:?}");
        let b: Value = r.json().await.unwrap();
        assert!(
            b["errors"][0]
                .as_str()
                .unwrap()
                .contains("application/merge-patch+json"),
            "{b}"
        );
    }
    let (st, b) = call_root(&s, "GET", "secret/data/p", None).await;
    assert_eq!(st, 200);
    assert_eq!(
        b["data"]["data"]["b"], "2",
        "refused patches changed nothing"
    );

    let r = send(Some("application/merge-patch+json; charset=utf-8"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, b) = call_root(&s, "GET", "secret/data/p", None).await;
    assert_eq!(b["data"]["data"], json!({"a": "1", "b": "3"}));
}

#[tokio::test]
async fn periodic_ran_only_once_a_minute() {
    let s = dev().await;
    let (st, b) = call_root(
        &s,
        "POST",
        "secret/data/rotated",
        Some(json!({"data": {"password": "initial"}})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (st, b) = call_root(
        &s,
        "POST",
        "secret/rotation/rotated",
        Some(json!({"fields": ["password"], "period": "1s"})),
    )
    .await;
    assert!(st == 200 || st == 204, "{st} {b}");
    // With the old one-minute tick the first scheduled rotation came after
    // up to 60 s; the tick is now 5 s. The bound is generous for a loaded
    // machine but well under a minute.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (st, b) = call_root(&s, "GET", "secret/data/rotated", None).await;
        assert_eq!(st, 200, "{b}");
        if b["data"]["metadata"]["version"].as_u64().unwrap_or(0) > 1 {
            assert_ne!(b["data"]["data"]["password"], "initial");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no scheduled rotation within 30 s: {b}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn passthrough_request_headers_were_not_a_mount_setting() {
    let s = dev().await;
    let (st, b) = call_root(
        &s,
        "POST",
        "sys/mounts/hdr",
        Some(json!({"type": "kv", "config": {"passthrough_request_headers": ["X-Custom"]}})),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = call_root(&s, "GET", "sys/mounts/hdr/tune", None).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        b["data"]["passthrough_request_headers"],
        json!(["X-Custom"])
    );
    // Vault takes a comma-separated string too.
    let (st, b) = call_root(
        &s,
        "POST",
        "sys/mounts/hdr/tune",
        Some(json!({"passthrough_request_headers": "X-A,X-B"})),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = call_root(&s, "GET", "sys/mounts", None).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        b["data"]["hdr/"]["config"]["passthrough_request_headers"],
        json!(["X-A", "X-B"])
    );
    // Mounts without the setting do not show it.
    assert!(b["data"]["secret/"]["config"]
        .get("passthrough_request_headers")
        .is_none());
}

#[tokio::test]
async fn ui_mounts_without_a_token_was_refused() {
    let s = dev().await;
    let (st, b) = call_root(
        &s,
        "POST",
        "sys/mounts/public",
        Some(json!({"type": "kv", "config": {"listing_visibility": "unauth"}})),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    // No token: only the mounts tuned `unauth`, as Vault lists them.
    let (st, b) = call_as(&s, "GET", "sys/internal/ui/mounts", None, Value::Null).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        keys(&b["data"]["secret"]),
        vec!["public/".to_string()],
        "{b}"
    );
    assert!(keys(&b["data"]["auth"]).is_empty(), "{b}");
    // A bad token is still refused, and the per-mount form needs a token.
    let (st, _) = call_as(
        &s,
        "GET",
        "sys/internal/ui/mounts",
        Some("hvs.not-a-token"),
        Value::Null,
    )
    .await;
    assert_eq!(st, 403);
    let (st, _) = call_as(
        &s,
        "GET",
        "sys/internal/ui/mounts/public/x",
        None,
        Value::Null,
    )
    .await;
    assert_eq!(st, 403);
    // Nothing else opens up without a token.
    for path in ["sys/mounts", "sys/internal/ui/mounts/", "secret/data/x"] {
        let (st, b) = call_as(&s, "GET", path, None, Value::Null).await;
        assert_eq!(st, 403, "{path}: {b}");
    }
}
