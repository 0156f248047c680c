//! KV (v1 and v2), cubbyhole, the token store, leases, response wrapping
//! and rate-limit quotas through the whole server, with the status codes
//! and bodies Vault documents for the same endpoints, failures included.
//! One deliberate difference: a failed check-and-set is 412 here (the
//! project's API contract), where Vault answers 400.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::{call_as, client, dev, method, put_policy, TestServer, ROOT};
use serde_json::{json, Value};

/// One call with the root token; `Value::Null` sends no body.
async fn root(s: &TestServer, verb: &str, path: &str, body: Value) -> (u16, Value) {
    call_as(s, verb, path, Some(ROOT), body).await
}

/// The error messages of a failure answer, joined.
fn errs(body: &Value) -> String {
    body["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

/// A request with explicit headers (content type, wrap TTL) and the root token.
async fn with_headers(
    s: &TestServer,
    verb: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let mut r = client().request(method(verb), s.url(&format!("/v1/{path}")));
    if let Some(t) = token {
        r = r.header("X-Vault-Token", t);
    }
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if !body.is_empty() {
        r = r.body(body.to_string());
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, v)
}

async fn merge_patch(s: &TestServer, path: &str, body: Value) -> (u16, Value) {
    with_headers(
        s,
        "PATCH",
        path,
        Some(ROOT),
        &[("Content-Type", "application/merge-patch+json")],
        &body.to_string(),
    )
    .await
}

/// Creates a token as `parent` on `path` (`create`, `create-orphan`,
/// `create/<role>`) and returns (token, accessor, whole auth block).
async fn new_token(
    s: &TestServer,
    parent: &str,
    path: &str,
    body: Value,
) -> (String, String, Value) {
    let (st, b) = call_as(s, "POST", &format!("auth/token/{path}"), Some(parent), body).await;
    assert_eq!(st, 200, "{path}: {b}");
    let auth = b["auth"].clone();
    (
        auth["client_token"].as_str().unwrap().to_string(),
        auth["accessor"].as_str().unwrap().to_string(),
        auth,
    )
}

/// Does this token still authenticate? (lookup-self: 200 or 403.)
async fn alive(s: &TestServer, token: &str) -> bool {
    let (st, b) = call_as(s, "GET", "auth/token/lookup-self", Some(token), Value::Null).await;
    assert!(st == 200 || st == 403, "{st} {b}");
    st == 200
}

// ----- KV version 2 ----------------------------------------------------------

#[tokio::test]
async fn kv2_config_cas_and_versions() {
    let s = dev().await;
    let (st, b) = root(
        &s,
        "POST",
        "secret/config",
        json!({"max_versions": 3, "cas_required": true}),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = root(&s, "GET", "secret/config", Value::Null).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        b["data"],
        json!({"max_versions": 3, "cas_required": true, "delete_version_after": "0s"})
    );
    let (st, _) = root(&s, "POST", "secret/config", json!({"max_versions": "many"})).await;
    assert_eq!(st, 400);

    // (options, expected status, expected version or error fragment)
    let steps: &[(Value, u16, &str)] = &[
        (json!({}), 412, "check-and-set parameter required"),
        (json!({"cas": 1}), 412, "did not match the current version"),
        (json!({"cas": 0}), 200, "1"),
        (json!({"cas": 0}), 412, "did not match the current version"),
        (json!({"cas": 1}), 200, "2"),
        (json!({"cas": 2}), 200, "3"),
        (json!({"cas": 3}), 200, "4"),
        (json!({"cas": 4}), 200, "5"),
    ];
    for (i, (options, want, what)) in steps.iter().enumerate() {
        let (st, b) = root(
            &s,
            "POST",
            "secret/data/app",
            json!({"options": options, "data": {"n": i}}),
        )
        .await;
        assert_eq!(st, *want, "step {i}: {b}");
        if st == 200 {
            assert_eq!(b["data"]["version"].to_string(), *what, "step {i}");
            assert_eq!(b["data"]["destroyed"], false);
            assert_eq!(b["data"]["deletion_time"], "");
        } else {
            assert!(errs(&b).contains(what), "step {i}: {b}");
        }
    }

    // Only the last three versions are kept (max_versions = 3).
    let (st, b) = root(&s, "GET", "secret/metadata/app", Value::Null).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["current_version"], 5);
    assert_eq!(b["data"]["oldest_version"], 3);
    let kept: Vec<&String> = b["data"]["versions"].as_object().unwrap().keys().collect();
    assert_eq!(kept, ["3", "4", "5"]);

    // (query, status, data.n)
    for (q, want, n) in [
        ("", 200, Some(7)),
        ("?version=0", 200, Some(7)),
        ("?version=4", 200, Some(6)),
        ("?version=1", 404, None),
        ("?version=9", 404, None),
    ] {
        let (st, b) = root(&s, "GET", &format!("secret/data/app{q}"), Value::Null).await;
        assert_eq!(st, want, "{q}: {b}");
        if let Some(n) = n {
            assert_eq!(b["data"]["data"]["n"], n, "{q}");
        }
    }
    let (st, _) = root(&s, "GET", "secret/data/app?version=abc", Value::Null).await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn kv2_patch_needs_merge_patch_and_an_existing_secret() {
    let s = dev().await;
    let (st, _) = root(
        &s,
        "POST",
        "secret/data/p",
        json!({"data": {"a": "1", "b": {"c": "2", "d": "3"}}}),
    )
    .await;
    assert_eq!(st, 200);

    let (st, b) = merge_patch(
        &s,
        "secret/data/p",
        json!({"data": {"b": {"c": null}, "e": "x"}}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["version"], 2);
    let (_, b) = root(&s, "GET", "secret/data/p", Value::Null).await;
    assert_eq!(
        b["data"]["data"],
        json!({"a": "1", "b": {"d": "3"}, "e": "x"})
    );

    // Check-and-set applies to patches too.
    let (st, b) = merge_patch(
        &s,
        "secret/data/p",
        json!({"options": {"cas": 1}, "data": {"a": "z"}}),
    )
    .await;
    assert_eq!(st, 412, "{b}");
    let (st, _) = merge_patch(
        &s,
        "secret/data/p",
        json!({"options": {"cas": 2}, "data": {"a": "z"}}),
    )
    .await;
    assert_eq!(st, 200);

    // Nothing to patch: a missing secret, and a deleted latest version.
    let (st, _) = merge_patch(&s, "secret/data/missing", json!({"data": {"a": "1"}})).await;
    assert_eq!(st, 404);
    let (st, _) = root(&s, "DELETE", "secret/data/p", Value::Null).await;
    assert_eq!(st, 204);
    let (st, _) = merge_patch(&s, "secret/data/p", json!({"data": {"a": "1"}})).await;
    assert_eq!(st, 404);

    // Vault refuses a PATCH that is not a JSON merge patch: 415.
    let (st, b) = with_headers(
        &s,
        "PATCH",
        "secret/data/p",
        Some(ROOT),
        &[("Content-Type", "application/json")],
        r#"{"data": {"a": "1"}}"#,
    )
    .await;
    assert_eq!(st, 415, "{b}");
    assert!(errs(&b).contains("application/merge-patch+json"), "{b}");
}

#[tokio::test]
async fn kv2_delete_undelete_destroy() {
    let s = dev().await;
    for v in ["one", "two"] {
        let (st, _) = root(&s, "POST", "secret/data/d", json!({"data": {"v": v}})).await;
        assert_eq!(st, 200);
    }

    // A deleted latest version reads 404 with its metadata in the body.
    let (st, _) = root(&s, "DELETE", "secret/data/d", Value::Null).await;
    assert_eq!(st, 204);
    let (st, b) = root(&s, "GET", "secret/data/d", Value::Null).await;
    assert_eq!(st, 404, "{b}");
    assert_eq!(b["data"]["data"], Value::Null);
    assert_eq!(b["data"]["metadata"]["version"], 2);
    assert_eq!(b["data"]["metadata"]["destroyed"], false);
    assert!(
        !b["data"]["metadata"]["deletion_time"]
            .as_str()
            .unwrap()
            .is_empty(),
        "{b}"
    );
    let (st, b) = root(&s, "GET", "secret/data/d?version=1", Value::Null).await;
    assert_eq!((st, b["data"]["data"]["v"].clone()), (200, json!("one")));

    // (endpoint, versions, then: (version, status, destroyed))
    let steps: &[(&str, Value, (u64, u16, bool))] = &[
        ("undelete", json!([2]), (2, 200, false)),
        ("delete", json!([1]), (1, 404, false)),
        ("undelete", json!([1]), (1, 200, false)),
        ("destroy", json!([1]), (1, 404, true)),
        // Destroyed data stays destroyed.
        ("undelete", json!([1]), (1, 404, true)),
        // Unknown versions are ignored.
        ("delete", json!([7]), (2, 200, false)),
    ];
    for (ep, versions, (v, want, destroyed)) in steps {
        let (st, b) = root(
            &s,
            "POST",
            &format!("secret/{ep}/d"),
            json!({"versions": versions}),
        )
        .await;
        assert_eq!(st, 204, "{ep} {versions}: {b}");
        let (st, b) = root(
            &s,
            "GET",
            &format!("secret/data/d?version={v}"),
            Value::Null,
        )
        .await;
        assert_eq!(st, *want, "{ep} {versions}: {b}");
        assert_eq!(
            b["data"]["metadata"]["destroyed"], *destroyed,
            "{ep} {versions}: {b}"
        );
    }
    let (_, b) = root(&s, "GET", "secret/metadata/d", Value::Null).await;
    assert_eq!(b["data"]["versions"]["1"]["destroyed"], true);
    assert_eq!(b["data"]["versions"]["2"]["deletion_time"], "");

    // No versions named.
    for ep in ["delete", "undelete", "destroy"] {
        let (st, b) = root(
            &s,
            "POST",
            &format!("secret/{ep}/d"),
            json!({"versions": []}),
        )
        .await;
        assert_eq!(st, 400, "{ep}: {b}");
    }
}

#[tokio::test]
async fn kv2_metadata_list_and_subkeys() {
    let s = dev().await;
    // Metadata may be written before any data.
    let (st, b) = root(
        &s,
        "POST",
        "secret/metadata/app/db",
        json!({"max_versions": 2, "custom_metadata": {"owner": "ops"}}),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = root(&s, "GET", "secret/metadata/app/db", Value::Null).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["current_version"], 0);
    assert_eq!(b["data"]["max_versions"], 2);
    assert_eq!(b["data"]["custom_metadata"], json!({"owner": "ops"}));

    for p in ["app/db", "app/api", "app/nested/deep", "top"] {
        let (st, _) = root(
            &s,
            "POST",
            &format!("secret/data/{p}"),
            json!({"data": {"user": "u", "conn": {"host": "h", "port": "1"}}}),
        )
        .await;
        assert_eq!(st, 200, "{p}");
    }
    // The version answers carry the secret's custom metadata.
    let (_, b) = root(&s, "GET", "secret/data/app/db", Value::Null).await;
    assert_eq!(
        b["data"]["metadata"]["custom_metadata"],
        json!({"owner": "ops"})
    );

    // PATCH merges custom_metadata (null removes a key).
    let (st, b) = merge_patch(
        &s,
        "secret/metadata/app/db",
        json!({"custom_metadata": {"owner": null, "team": "db"}, "cas_required": true}),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (_, b) = root(&s, "GET", "secret/metadata/app/db", Value::Null).await;
    assert_eq!(b["data"]["custom_metadata"], json!({"team": "db"}));
    assert_eq!(b["data"]["cas_required"], true);
    assert_eq!(b["data"]["max_versions"], 2);
    let (st, _) = merge_patch(&s, "secret/metadata/nope", json!({"max_versions": 1})).await;
    assert_eq!(st, 404);

    // LIST, with `sub/` folders; an empty folder is 404.
    for (path, want) in [
        ("secret/metadata/", Some(json!(["app/", "top"]))),
        ("secret/metadata/app", Some(json!(["api", "db", "nested/"]))),
        ("secret/metadata/app/nested/", Some(json!(["deep"]))),
        ("secret/metadata/nothing/", None),
    ] {
        let (st, b) = root(&s, "LIST", path, Value::Null).await;
        match want {
            Some(keys) => assert_eq!((st, b["data"]["keys"].clone()), (200, keys), "{path}"),
            None => assert_eq!(st, 404, "{path}: {b}"),
        }
    }

    // subkeys: the structure without the values.
    for (q, want) in [
        (
            "",
            json!({"user": null, "conn": {"host": null, "port": null}}),
        ),
        ("?depth=1", json!({"user": null, "conn": null})),
    ] {
        let (st, b) = root(
            &s,
            "GET",
            &format!("secret/subkeys/app/api{q}"),
            Value::Null,
        )
        .await;
        assert_eq!(st, 200, "{q}: {b}");
        assert_eq!(b["data"]["subkeys"], want, "{q}");
        assert_eq!(b["data"]["metadata"]["version"], 1);
    }
    let (st, _) = root(&s, "GET", "secret/subkeys/app/missing", Value::Null).await;
    assert_eq!(st, 404);

    // DELETE metadata removes every version and the key from listings.
    let (st, _) = root(&s, "DELETE", "secret/metadata/app/db", Value::Null).await;
    assert_eq!(st, 204);
    for p in ["secret/data/app/db", "secret/metadata/app/db"] {
        let (st, _) = root(&s, "GET", p, Value::Null).await;
        assert_eq!(st, 404, "{p}");
    }
    let (_, b) = root(&s, "LIST", "secret/metadata/app", Value::Null).await;
    assert_eq!(b["data"]["keys"], json!(["api", "nested/"]));
}

/// Regression: a successful metadata PATCH answered 404 (the engine's
/// empty answer read as "nothing to patch").
#[tokio::test]
async fn kv2_metadata_patch_of_existing_secret_is_204_not_404() {
    let s = dev().await;
    let (st, _) = root(&s, "POST", "secret/metadata/m", json!({"max_versions": 4})).await;
    assert_eq!(st, 204);
    let (st, b) = merge_patch(&s, "secret/metadata/m", json!({"max_versions": 5})).await;
    assert_eq!((st, b), (204, Value::Null));
    let (_, b) = root(&s, "GET", "secret/metadata/m", Value::Null).await;
    assert_eq!(b["data"]["max_versions"], 5);
}

// ----- KV version 1 and cubbyhole -------------------------------------------

#[tokio::test]
async fn kv1_read_write_list_delete() {
    let s = dev().await;
    let (st, b) = root(
        &s,
        "POST",
        "sys/mounts/kv",
        json!({"type": "kv", "options": {"version": "1"}}),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = root(
        &s,
        "POST",
        "sys/mounts/kv3",
        json!({"type": "kv", "options": {"version": "3"}}),
    )
    .await;
    assert_eq!(st, 400, "{b}");

    for p in ["app/db", "app/api", "top"] {
        let (st, b) = root(&s, "PUT", &format!("kv/{p}"), json!({"password": p})).await;
        assert_eq!(st, 204, "{p}: {b}");
    }
    // A v1 read answers the object itself, no versions.
    let (st, b) = root(&s, "GET", "kv/app/db", Value::Null).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"], json!({"password": "app/db"}));
    // A write replaces the whole object.
    let (st, _) = root(&s, "PUT", "kv/app/db", json!({"user": "u"})).await;
    assert_eq!(st, 204);
    let (_, b) = root(&s, "GET", "kv/app/db", Value::Null).await;
    assert_eq!(b["data"], json!({"user": "u"}));
    let (st, b) = root(&s, "PUT", "kv/app/empty", json!({})).await;
    assert_eq!(st, 400, "{b}");

    for (path, want) in [
        ("kv/", Some(json!(["app/", "top"]))),
        ("kv/app", Some(json!(["api", "db"]))),
        ("kv/none/", None),
    ] {
        let (st, b) = root(&s, "LIST", path, Value::Null).await;
        match want {
            Some(keys) => assert_eq!((st, b["data"]["keys"].clone()), (200, keys), "{path}"),
            None => assert_eq!(st, 404, "{path}: {b}"),
        }
    }

    let (st, _) = root(&s, "DELETE", "kv/app/db", Value::Null).await;
    assert_eq!(st, 204);
    let (st, b) = root(&s, "GET", "kv/app/db", Value::Null).await;
    assert_eq!((st, b["errors"].clone()), (404, json!([])));
    let (_, b) = root(&s, "LIST", "kv/app", Value::Null).await;
    assert_eq!(b["data"]["keys"], json!(["api"]));
    // The v2 paths mean nothing on a v1 mount: `data/x` is just a key.
    let (st, _) = root(&s, "GET", "kv/data/app/api", Value::Null).await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn cubbyhole_is_private_to_each_token() {
    let s = dev().await;
    let (t1, _, _) = new_token(&s, ROOT, "create", json!({"policies": ["default"]})).await;
    let (t2, _, _) = new_token(&s, ROOT, "create", json!({"policies": ["default"]})).await;

    let (st, b) = call_as(&s, "POST", "cubbyhole/note", Some(&t1), json!({"k": "one"})).await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = call_as(&s, "POST", "cubbyhole/note", Some(&t2), json!({"k": "two"})).await;
    assert_eq!(st, 204, "{b}");

    // (token, read status, value, list)
    for (tok, want, value, keys) in [
        (t1.as_str(), 200, json!("one"), Some(json!(["note"]))),
        (t2.as_str(), 200, json!("two"), Some(json!(["note"]))),
        (ROOT, 404, Value::Null, None),
    ] {
        let (st, b) = call_as(&s, "GET", "cubbyhole/note", Some(tok), Value::Null).await;
        assert_eq!(st, want, "{b}");
        assert_eq!(b["data"]["k"], value);
        let (st, b) = call_as(&s, "LIST", "cubbyhole/", Some(tok), Value::Null).await;
        match keys {
            Some(k) => assert_eq!((st, b["data"]["keys"].clone()), (200, k)),
            None => assert_eq!(st, 404, "{b}"),
        }
    }

    // Deleting in one cubbyhole leaves the other alone.
    let (st, _) = call_as(&s, "DELETE", "cubbyhole/note", Some(&t2), Value::Null).await;
    assert_eq!(st, 204);
    let (st, _) = call_as(&s, "GET", "cubbyhole/note", Some(&t2), Value::Null).await;
    assert_eq!(st, 404);
    let (st, _) = call_as(&s, "GET", "cubbyhole/note", Some(&t1), Value::Null).await;
    assert_eq!(st, 200);

    // Revoking a token destroys its cubbyhole; no token, no cubbyhole.
    let (st, _) = root(&s, "POST", "auth/token/revoke", json!({"token": t1})).await;
    assert_eq!(st, 204);
    let (st, _) = call_as(&s, "GET", "cubbyhole/note", Some(&t1), Value::Null).await;
    assert_eq!(st, 403);
    let (st, _) = call_as(&s, "GET", "cubbyhole/note", None, Value::Null).await;
    assert_eq!(st, 403);
}

// ----- tokens ----------------------------------------------------------------

#[tokio::test]
async fn token_create_lookup_and_accessors() {
    let s = dev().await;
    let (tok, acc, auth) = new_token(
        &s,
        ROOT,
        "create-orphan",
        json!({"policies": ["p1"], "ttl": "1h", "meta": {"app": "web"}, "display_name": "web"}),
    )
    .await;
    assert_eq!(auth["orphan"], true);
    assert_eq!(auth["renewable"], true);
    assert_eq!(auth["lease_duration"], 3600);
    assert_eq!(auth["policies"], json!(["default", "p1"]));
    assert_eq!(auth["metadata"], json!({"app": "web"}));
    assert_eq!(auth["token_type"], "service");

    // lookup (token in the body) shows the id; lookup-accessor never does.
    let (st, b) = root(&s, "POST", "auth/token/lookup", json!({"token": tok})).await;
    assert_eq!(st, 200, "{b}");
    let d = &b["data"];
    assert_eq!(d["id"], tok.as_str());
    assert_eq!(d["accessor"], acc.as_str());
    assert_eq!(d["policies"], json!(["default", "p1"]));
    assert_eq!(d["path"], "auth/token/create-orphan");
    assert_eq!(d["display_name"], "token-web");
    assert_eq!(d["orphan"], true);
    assert_eq!(d["creation_ttl"], 3600);
    assert!((3590..=3600).contains(&d["ttl"].as_i64().unwrap()), "{d}");
    let (st, b) = root(
        &s,
        "POST",
        "auth/token/lookup-accessor",
        json!({"accessor": acc}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["id"], "");
    assert_eq!(b["data"]["accessor"], acc.as_str());
    assert_eq!(b["data"]["policies"], json!(["default", "p1"]));
    assert!(
        !b.to_string().contains(&tok),
        "lookup-accessor leaked the token: {b}"
    );

    // Failures: (path, body, status, error fragment).
    for (path, body, want, what) in [
        ("lookup", json!({}), 400, "missing token"),
        ("lookup", json!({"token": "no-such-token"}), 403, ""),
        (
            "lookup-accessor",
            json!({"accessor": "nope"}),
            400,
            "invalid accessor",
        ),
        ("renew", json!({"token": "no-such-token"}), 400, ""),
        (
            "renew-accessor",
            json!({"accessor": "nope"}),
            400,
            "invalid accessor",
        ),
        ("create/no-such-role", json!({}), 400, "unknown role"),
    ] {
        let (st, b) = root(&s, "POST", &format!("auth/token/{path}"), body.clone()).await;
        assert_eq!(st, want, "{path} {body}: {b}");
        assert!(errs(&b).contains(what), "{path}: {b}");
    }

    // LIST accessors: every live token, the root token's included.
    let (st, b) = root(&s, "LIST", "auth/token/accessors", Value::Null).await;
    assert_eq!(st, 200, "{b}");
    let keys = b["data"]["keys"].as_array().unwrap();
    assert!(keys.contains(&json!(acc)), "{b}");
    assert_eq!(keys.len(), 2, "{b}");
    // ...and only with sudo: a default-policy token is refused.
    let (plain, _, _) = new_token(&s, ROOT, "create", json!({"policies": ["default"]})).await;
    let (st, _) = call_as(
        &s,
        "LIST",
        "auth/token/accessors",
        Some(&plain),
        Value::Null,
    )
    .await;
    assert_eq!(st, 403);

    // revoke-accessor: the token stops working, its accessor is gone.
    let (st, _) = root(
        &s,
        "POST",
        "auth/token/revoke-accessor",
        json!({"accessor": acc}),
    )
    .await;
    assert_eq!(st, 204);
    assert!(!alive(&s, &tok).await);
    let (st, _) = root(
        &s,
        "POST",
        "auth/token/lookup-accessor",
        json!({"accessor": acc}),
    )
    .await;
    assert_eq!(st, 400);

    // tidy is accepted (202) with Vault's warning.
    let (st, b) = root(&s, "POST", "auth/token/tidy", Value::Null).await;
    assert_eq!(st, 202, "{b}");
    assert!(b["warnings"][0]
        .as_str()
        .unwrap()
        .contains("Tidy operation successfully started"));
}

#[tokio::test]
async fn token_renew_and_renew_accessor() {
    let s = dev().await;
    let (tok, acc, _) = new_token(&s, ROOT, "create", json!({"ttl": "1h"})).await;

    let (st, b) = root(
        &s,
        "POST",
        "auth/token/renew",
        json!({"token": tok, "increment": "2h"}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["auth"]["client_token"], tok.as_str());
    assert!(
        (7190..=7200).contains(&b["auth"]["lease_duration"].as_i64().unwrap()),
        "{b}"
    );

    // renew-accessor never reveals the token.
    let (st, b) = root(
        &s,
        "POST",
        "auth/token/renew-accessor",
        json!({"accessor": acc, "increment": 600}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["auth"]["client_token"], "");
    assert_eq!(b["auth"]["accessor"], acc.as_str());
    assert!(
        (590..=600).contains(&b["auth"]["lease_duration"].as_i64().unwrap()),
        "{b}"
    );
    let (_, b) = root(&s, "POST", "auth/token/lookup", json!({"token": tok})).await;
    assert!(
        (590..=600).contains(&b["data"]["ttl"].as_i64().unwrap()),
        "{b}"
    );

    // renew-self with the token itself; a non-renewable token refuses.
    let (st, b) = call_as(
        &s,
        "POST",
        "auth/token/renew-self",
        Some(&tok),
        json!({"increment": "30m"}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert!(
        (1790..=1800).contains(&b["auth"]["lease_duration"].as_i64().unwrap()),
        "{b}"
    );
    let (fixed, _, auth) =
        new_token(&s, ROOT, "create", json!({"ttl": "1h", "renewable": false})).await;
    assert_eq!(auth["renewable"], false);
    let (st, b) = root(&s, "POST", "auth/token/renew", json!({"token": fixed})).await;
    assert_eq!(st, 400, "{b}");
    assert!(errs(&b).contains("not renewable"), "{b}");
}

#[tokio::test]
async fn token_revoke_trees_orphans_and_child_policies() {
    let s = dev().await;
    put_policy(
        &s,
        "maker",
        r#"path "auth/token/create" { capabilities = ["create", "update"] }"#,
    )
    .await;
    put_policy(
        &s,
        "reader",
        r#"path "secret/*" { capabilities = ["read"] }"#,
    )
    .await;

    // A child's policies cannot exceed its parent's.
    let (parent, _, auth) =
        new_token(&s, ROOT, "create", json!({"policies": ["maker", "reader"]})).await;
    assert_eq!(auth["orphan"], false);
    for (policies, want) in [
        (json!(["reader"]), 200),
        (json!(["maker", "reader"]), 200),
        (json!(["admin"]), 400),
        (json!(["reader", "root"]), 400),
    ] {
        let (st, b) = call_as(
            &s,
            "POST",
            "auth/token/create",
            Some(&parent),
            json!({"policies": policies}),
        )
        .await;
        assert_eq!(st, want, "{policies}: {b}");
        if st == 400 {
            assert!(errs(&b).contains("subset"), "{b}");
        }
    }
    // Without sudo, a child cannot be an orphan or have a chosen id.
    for body in [json!({"no_parent": true}), json!({"id": "chosen"})] {
        let (st, b) = call_as(&s, "POST", "auth/token/create", Some(&parent), body.clone()).await;
        assert_eq!(st, 400, "{body}: {b}");
    }
    // With no policies named, the child inherits the parent's.
    let (child, _, auth) = new_token(&s, &parent, "create", json!({})).await;
    assert_eq!(auth["policies"], json!(["default", "maker", "reader"]));
    let (grandchild, _, _) = new_token(&s, &child, "create", json!({"policies": ["reader"]})).await;

    // revoke: the whole tree goes.
    let (st, _) = root(&s, "POST", "auth/token/revoke", json!({"token": parent})).await;
    assert_eq!(st, 204);
    for t in [&parent, &child, &grandchild] {
        assert!(!alive(&s, t).await);
    }
    // Revoking what does not exist is not an error.
    let (st, _) = root(&s, "POST", "auth/token/revoke", json!({"token": parent})).await;
    assert_eq!(st, 204);
    let (st, _) = root(&s, "POST", "auth/token/revoke", json!({})).await;
    assert_eq!(st, 400);

    // revoke-orphan: the children stay, now orphans.
    let (p2, _, _) = new_token(&s, ROOT, "create", json!({"policies": ["maker"]})).await;
    let (c2, _, _) = new_token(&s, &p2, "create", json!({})).await;
    let (_, b) = root(&s, "POST", "auth/token/lookup", json!({"token": c2})).await;
    assert_eq!(b["data"]["orphan"], false);
    let (st, _) = root(&s, "POST", "auth/token/revoke-orphan", json!({"token": p2})).await;
    assert_eq!(st, 204);
    assert!(!alive(&s, &p2).await);
    assert!(alive(&s, &c2).await);
    let (_, b) = root(&s, "POST", "auth/token/lookup", json!({"token": c2})).await;
    assert_eq!(b["data"]["orphan"], true);

    // revoke-self.
    let (st, _) = call_as(&s, "POST", "auth/token/revoke-self", Some(&c2), Value::Null).await;
    assert_eq!(st, 204);
    assert!(!alive(&s, &c2).await);
}

#[tokio::test]
async fn token_roles_create_from_role() {
    let s = dev().await;
    let (st, b) = root(
        &s,
        "POST",
        "auth/token/roles/app",
        json!({"allowed_policies": ["reader", "writer"], "orphan": true, "token_ttl": "30m"}),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = root(&s, "GET", "auth/token/roles/app", Value::Null).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["name"], "app");
    assert_eq!(b["data"]["allowed_policies"], json!(["reader", "writer"]));
    assert_eq!(b["data"]["orphan"], true);
    let (st, b) = root(&s, "LIST", "auth/token/roles", Value::Null).await;
    assert_eq!((st, b["data"]["keys"].clone()), (200, json!(["app"])));

    // (requested policies, status, resulting policies)
    for (req, want, policies) in [
        (Value::Null, 200, json!(["default", "reader", "writer"])),
        (json!(["reader"]), 200, json!(["default", "reader"])),
        (json!(["admin"]), 400, Value::Null),
    ] {
        let body = if req.is_null() {
            json!({})
        } else {
            json!({"policies": req})
        };
        let (st, b) = root(&s, "POST", "auth/token/create/app", body).await;
        assert_eq!(st, want, "{req}: {b}");
        if st == 200 {
            assert_eq!(b["auth"]["policies"], policies);
            assert_eq!(b["auth"]["orphan"], true);
            assert_eq!(b["auth"]["lease_duration"], 1800);
            let tok = b["auth"]["client_token"].as_str().unwrap();
            let (_, l) = root(&s, "POST", "auth/token/lookup", json!({"token": tok})).await;
            assert_eq!(l["data"]["role"], "app");
            assert_eq!(l["data"]["path"], "auth/token/create/app");
        }
    }

    let (st, _) = root(&s, "DELETE", "auth/token/roles/app", Value::Null).await;
    assert_eq!(st, 204);
    let (st, _) = root(&s, "GET", "auth/token/roles/app", Value::Null).await;
    assert_eq!(st, 404);
    let (st, b) = root(&s, "POST", "auth/token/create/app", json!({})).await;
    assert_eq!(st, 400, "{b}");
}

// ----- leases (token leases under auth/token/create/) -----------------------

async fn lease_keys(s: &TestServer, prefix: &str) -> (u16, Value) {
    let (st, b) = root(
        s,
        "LIST",
        &format!("sys/leases/lookup/{prefix}"),
        Value::Null,
    )
    .await;
    (st, b["data"]["keys"].clone())
}

/// The lease id of a token created on `auth/token/create[/role]`, found the
/// way an operator would: the one new key under the prefix.
async fn token_lease(s: &TestServer, prefix: &str, before: &Value) -> String {
    let (_, after) = lease_keys(s, prefix).await;
    let old: Vec<&Value> = before
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let new: Vec<&Value> = after
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| !old.contains(k) && !k.as_str().unwrap().ends_with('/'))
        .collect();
    assert_eq!(new.len(), 1, "{after}");
    format!("{prefix}{}", new[0].as_str().unwrap())
}

#[tokio::test]
async fn leases_lookup_renew_revoke() {
    let s = dev().await;
    let (st, _) = lease_keys(&s, "").await;
    assert_eq!(st, 404, "no lease yet");

    let (tok, _, _) = new_token(&s, ROOT, "create", json!({"ttl": "1h"})).await;
    let lease = token_lease(&s, "auth/token/create/", &Value::Null).await;

    // LIST walks one level at a time.
    for (prefix, want) in [
        ("", json!(["auth/"])),
        ("auth/", json!(["token/"])),
        ("auth/token", json!(["create/"])),
    ] {
        assert_eq!(lease_keys(&s, prefix).await, (200, want), "{prefix}");
    }
    let (st, _) = lease_keys(&s, "database/").await;
    assert_eq!(st, 404);

    let (st, b) = root(&s, "PUT", "sys/leases/lookup", json!({"lease_id": lease})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["id"], lease.as_str());
    assert_eq!(b["data"]["renewable"], true);
    assert_eq!(b["data"]["last_renewal"], Value::Null);
    assert!(b["data"]["expire_time"].is_string() && b["data"]["issue_time"].is_string());
    assert!(
        (3590..=3600).contains(&b["data"]["ttl"].as_i64().unwrap()),
        "{b}"
    );

    // Renewing the token shows in its lease.
    let (st, _) = root(
        &s,
        "POST",
        "auth/token/renew",
        json!({"token": tok, "increment": "2h"}),
    )
    .await;
    assert_eq!(st, 200);
    let (_, b) = root(&s, "PUT", "sys/leases/lookup", json!({"lease_id": lease})).await;
    assert!(b["data"]["last_renewal"].is_string(), "{b}");
    assert!(
        (7190..=7200).contains(&b["data"]["ttl"].as_i64().unwrap()),
        "{b}"
    );

    // Failures: (verb, path, body, status, error fragment).
    for (verb, path, body, want, what) in [
        (
            "PUT",
            "sys/leases/lookup",
            json!({"lease_id": "nope/1"}),
            400,
            "invalid lease",
        ),
        ("PUT", "sys/leases/renew", json!({}), 400, "lease_id"),
        (
            "PUT",
            "sys/leases/renew",
            json!({"lease_id": "nope/1"}),
            400,
            "invalid lease",
        ),
        // Tokens renew on auth/token/renew, as in Vault.
        (
            "PUT",
            "sys/leases/renew",
            json!({"lease_id": lease}),
            400,
            "tokens cannot be renewed",
        ),
        (
            "PUT",
            &format!("sys/renew/{lease}"),
            json!({}),
            400,
            "tokens cannot be renewed",
        ),
        ("PUT", "sys/leases/revoke", json!({}), 400, "lease_id"),
    ] {
        let (st, b) = root(&s, verb, path, body.clone()).await;
        assert_eq!(st, want, "{path} {body}: {b}");
        assert!(errs(&b).contains(what), "{path}: {b}");
    }

    // Revoking the lease revokes the token; revoking again is fine.
    for _ in 0..2 {
        let (st, b) = root(&s, "PUT", "sys/leases/revoke", json!({"lease_id": lease})).await;
        assert_eq!(st, 204, "{b}");
    }
    assert!(!alive(&s, &tok).await);
    let (st, _) = root(&s, "PUT", "sys/leases/lookup", json!({"lease_id": lease})).await;
    assert_eq!(st, 400);

    // The legacy sys/revoke/<lease_id>.
    let (tok, _, _) = new_token(&s, ROOT, "create", json!({"ttl": "1h"})).await;
    let lease = token_lease(&s, "auth/token/create/", &Value::Null).await;
    let (st, b) = root(&s, "PUT", &format!("sys/revoke/{lease}"), Value::Null).await;
    assert_eq!(st, 204, "{b}");
    assert!(!alive(&s, &tok).await);

    // tidy: 200 with Vault's warning.
    let (st, b) = root(&s, "PUT", "sys/leases/tidy", Value::Null).await;
    assert_eq!(st, 200, "{b}");
    assert!(b["warnings"][0]
        .as_str()
        .unwrap()
        .contains("Tidy operation successfully started"));
}

#[tokio::test]
async fn leases_revoke_prefix_force_and_legacy() {
    let s = dev().await;
    for role in ["r1", "r2", "r3"] {
        let (st, _) = root(&s, "POST", &format!("auth/token/roles/{role}"), json!({})).await;
        assert_eq!(st, 204);
    }
    let mut tokens = std::collections::BTreeMap::new();
    for role in ["r1", "r1", "r2", "r3"] {
        let (t, _, _) = new_token(&s, ROOT, &format!("create/{role}"), json!({"ttl": "1h"})).await;
        tokens.entry(role).or_insert_with(Vec::new).push(t);
    }
    let (plain, _, _) = new_token(&s, ROOT, "create", json!({"ttl": "1h"})).await;
    let (_, keys) = lease_keys(&s, "auth/token/create/").await;
    let keys = keys.as_array().unwrap();
    for k in ["r1/", "r2/", "r3/"] {
        assert!(keys.contains(&json!(k)), "{keys:?}");
    }
    let (st, k) = lease_keys(&s, "auth/token/create/r1/").await;
    assert_eq!((st, k.as_array().unwrap().len()), (200, 2));

    // (endpoint, role whose tokens go)
    for (path, role) in [
        ("sys/leases/revoke-prefix/auth/token/create/r1", "r1"),
        ("sys/leases/revoke-force/auth/token/create/r2/", "r2"),
        ("sys/revoke-prefix/auth/token/create/r3", "r3"),
    ] {
        let (st, b) = root(&s, "PUT", path, Value::Null).await;
        assert_eq!(st, 204, "{path}: {b}");
        for t in &tokens[role] {
            assert!(!alive(&s, t).await, "{path}");
        }
        let (st, _) = lease_keys(&s, &format!("auth/token/create/{role}/")).await;
        assert_eq!(st, 404, "{path}");
    }
    // The token outside every prefix is untouched.
    assert!(alive(&s, &plain).await);
    // A prefix with nothing under it is not an error.
    let (st, _) = root(
        &s,
        "PUT",
        "sys/leases/revoke-prefix/nothing/here",
        Value::Null,
    )
    .await;
    assert_eq!(st, 204);
}

// ----- response wrapping -------------------------------------------------------

async fn wrapped_read(s: &TestServer, path: &str, ttl: &str) -> Value {
    let (st, b) = with_headers(s, "GET", path, Some(ROOT), &[("X-Vault-Wrap-TTL", ttl)], "").await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"], Value::Null);
    b["wrap_info"].clone()
}

#[tokio::test]
async fn wrapping_lookup_unwrap_rewrap_wrap() {
    let s = dev().await;
    let (st, _) = root(
        &s,
        "POST",
        "secret/data/w",
        json!({"data": {"pw": "hunter2"}}),
    )
    .await;
    assert_eq!(st, 200);

    let info = wrapped_read(&s, "secret/data/w", "5m").await;
    assert_eq!(info["ttl"], 300);
    assert_eq!(info["creation_path"], "secret/data/w");
    let t1 = info["token"].as_str().unwrap().to_string();

    // lookup needs no token of its own.
    let (st, b) = call_as(
        &s,
        "POST",
        "sys/wrapping/lookup",
        None,
        json!({"token": t1}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["creation_path"], "secret/data/w");
    assert_eq!(b["data"]["creation_ttl"], 300);
    assert!(b["data"]["creation_time"].is_string());
    // A wrapping token is good for nothing else.
    let (st, _) = call_as(&s, "GET", "secret/data/w", Some(&t1), Value::Null).await;
    assert_eq!(st, 403);

    // rewrap: a new token for the same answer, the old one is spent.
    let (st, b) = root(&s, "POST", "sys/wrapping/rewrap", json!({"token": t1})).await;
    assert_eq!(st, 200, "{b}");
    let t2 = b["wrap_info"]["token"].as_str().unwrap().to_string();
    assert_ne!(t1, t2);
    assert_eq!(b["wrap_info"]["creation_path"], "secret/data/w");
    let (st, b) = call_as(
        &s,
        "POST",
        "sys/wrapping/lookup",
        None,
        json!({"token": t1}),
    )
    .await;
    assert_eq!(st, 400, "{b}");

    // unwrap (the wrapping token as the client token) works once.
    let (st, b) = call_as(&s, "POST", "sys/wrapping/unwrap", Some(&t2), Value::Null).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["data"], json!({"pw": "hunter2"}));
    assert_eq!(b["data"]["metadata"]["version"], 1);
    let (st, _) = call_as(&s, "POST", "sys/wrapping/unwrap", Some(&t2), Value::Null).await;
    assert_eq!(st, 403);
    let (st, b) = root(&s, "POST", "sys/wrapping/unwrap", json!({"token": t2})).await;
    assert_eq!(st, 400, "{b}");
    assert!(errs(&b).contains("wrapping token is not valid"), "{b}");

    // wrap: arbitrary data, unwrapped by another token naming it in the body.
    let (st, b) = with_headers(
        &s,
        "POST",
        "sys/wrapping/wrap",
        Some(ROOT),
        &[("X-Vault-Wrap-TTL", "2m")],
        r#"{"k": "v"}"#,
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["wrap_info"]["ttl"], 120);
    assert_eq!(b["wrap_info"]["creation_path"], "sys/wrapping/wrap");
    let t3 = b["wrap_info"]["token"].as_str().unwrap().to_string();
    let (st, b) = root(&s, "POST", "sys/wrapping/unwrap", json!({"token": t3})).await;
    assert_eq!((st, b["data"].clone()), (200, json!({"k": "v"})), "{b}");
    // ...and only with a wrap TTL, as in Vault.
    let (st, b) = root(&s, "POST", "sys/wrapping/wrap", json!({"k": "v"})).await;
    assert_eq!(st, 400, "{b}");
    assert!(errs(&b).contains("requires response wrapping"), "{b}");

    // Not a wrapping token at all.
    let (st, _) = call_as(
        &s,
        "POST",
        "sys/wrapping/lookup",
        None,
        json!({"token": ROOT}),
    )
    .await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn wrapping_token_expires() {
    let s = dev().await;
    let (st, _) = root(&s, "POST", "secret/data/w", json!({"data": {"pw": "x"}})).await;
    assert_eq!(st, 200);
    let info = wrapped_read(&s, "secret/data/w", "1s").await;
    assert_eq!(info["ttl"], 1);
    let tok = info["token"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (st, b) = call_as(
        &s,
        "POST",
        "sys/wrapping/lookup",
        None,
        json!({"token": tok}),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    let (st, b) = root(&s, "POST", "sys/wrapping/unwrap", json!({"token": tok})).await;
    assert_eq!(st, 400, "{b}");
    let (st, _) = call_as(&s, "POST", "sys/wrapping/unwrap", Some(&tok), Value::Null).await;
    assert_eq!(st, 403);
}

// ----- rate-limit quotas --------------------------------------------------------

#[tokio::test]
async fn rate_limit_quota_answers_429_past_its_rate() {
    let s = dev().await;
    let (st, b) = root(
        &s,
        "POST",
        "sys/quotas/rate-limit/tiny",
        json!({"path": "secret/", "rate": 3, "interval": "1h"}),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = root(&s, "GET", "sys/quotas/rate-limit/tiny", Value::Null).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["name"], "tiny");
    assert_eq!(b["data"]["path"], "secret/");
    assert_eq!(b["data"]["rate"], 3.0);
    assert_eq!(b["data"]["interval"], 3600);
    assert_eq!(b["data"]["type"], "rate-limit");
    let (st, b) = root(&s, "LIST", "sys/quotas/rate-limit", Value::Null).await;
    assert_eq!((st, b["data"]["keys"].clone()), (200, json!(["tiny"])));

    let mut seen = Vec::new();
    for _ in 0..5 {
        let (st, b) = root(&s, "GET", "secret/data/anything", Value::Null).await;
        if st == 429 {
            assert!(errs(&b).contains("rate limit quota exceeded"), "{b}");
        }
        seen.push(st);
    }
    assert_eq!(seen, [404, 404, 404, 429, 429]);
    // Other paths are not limited.
    let (st, _) = root(&s, "GET", "auth/token/lookup-self", Value::Null).await;
    assert_eq!(st, 200);

    for bad in [
        json!({"rate": 0}),
        json!({"rate": -1}),
        json!({"path": "x/"}),
    ] {
        let (st, b) = root(&s, "POST", "sys/quotas/rate-limit/bad", bad.clone()).await;
        assert_eq!(st, 400, "{bad}: {b}");
    }

    let (st, _) = root(&s, "DELETE", "sys/quotas/rate-limit/tiny", Value::Null).await;
    assert_eq!(st, 204);
    let (st, _) = root(&s, "GET", "sys/quotas/rate-limit/tiny", Value::Null).await;
    assert_eq!(st, 404);
    let (st, _) = root(&s, "GET", "secret/data/anything", Value::Null).await;
    assert_eq!(st, 404);
}
