//! The refusals of every auth method through the whole server, each with
//! its exact status and body, and the proof that a refused login leaves
//! the storage exactly as it was: the physical storage under the barrier
//! (every key, every encrypted byte; the barrier's random nonces mean even
//! a rewrite of an identical value shows) is snapshotted before and after
//! a batch of refused logins. Lockout counters and the login brake live in
//! memory, so no prefix is excluded from the comparison.
//!
//! Also: the built-in brake on failed logins (429 with no quota
//! configured), and the userpass lockout, which refuses the right password
//! with the same answer as a wrong one.

#![allow(clippy::unwrap_used)]

use crate::auth_jwt_k8s::Ed25519;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tresor_sdk::testing::moto;

use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tresor_core::{Core, CoreConfig};
use tresor_http::HttpConfig;
use tresor_storage::{MemoryStorage, Storage};

use crate::common::{self, call_as as call, enable_auth, TestServer, ROOT};

// ----- helpers ---------------------------------------------------------------

/// A dev server (initialised, unsealed, root token `root`) whose physical
/// storage the test keeps a handle to.
async fn dev_on_memory() -> (TestServer, Arc<MemoryStorage>) {
    let storage = Arc::new(MemoryStorage::new());
    let core = Core::new(CoreConfig {
        storage: storage.clone(),
        default_lease_ttl: Duration::from_secs(768 * 3600),
        max_lease_ttl: Duration::from_secs(768 * 3600),
        factories: tresor_engines::registry(),
        cluster_name: "tresor-test".into(),
        metrics: None,
    })
    .await
    .unwrap();
    core.dev_setup(Some(ROOT.into())).await.unwrap();
    (
        common::serve_with(core, HttpConfig::default(), None).await,
        storage,
    )
}

/// Every key of the physical storage and its (encrypted) bytes.
async fn snapshot(storage: &MemoryStorage) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut folders = vec![String::new()];
    while let Some(folder) = folders.pop() {
        for child in storage.list(&folder).await.unwrap() {
            let key = format!("{folder}{child}");
            if key.ends_with('/') {
                folders.push(key);
            } else if let Some(v) = storage.get(&key).await.unwrap() {
                out.insert(key, v);
            }
        }
    }
    out
}

/// Asserts two snapshots are identical, naming the keys that differ.
fn assert_same_storage(
    before: &BTreeMap<String, Vec<u8>>,
    after: &BTreeMap<String, Vec<u8>>,
    what: &str,
) {
    let added: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let removed: Vec<&String> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    let changed: Vec<&String> = before
        .iter()
        .filter(|(k, v)| after.get(*k).is_some_and(|a| a != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        added.is_empty() && removed.is_empty() && changed.is_empty(),
        "{what} changed the storage: added {added:?}, removed {removed:?}, changed {changed:?}"
    );
}

fn errors(msg: &str) -> Value {
    json!({ "errors": [msg] })
}

/// Writes as root and expects success without a body.
async fn put(s: &TestServer, path: &str, body: Value) {
    let (st, b) = call(s, "POST", path, Some(ROOT), body).await;
    assert_eq!(st, 204, "{path}: {b}");
}

/// The accessors of every token the server holds.
async fn token_accessors(s: &TestServer) -> Value {
    let (st, b) = call(s, "LIST", "auth/token/accessors", Some(ROOT), Value::Null).await;
    assert_eq!(st, 200, "{b}");
    let mut keys = b["data"]["keys"].as_array().cloned().unwrap_or_default();
    keys.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    Value::Array(keys)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ----- AppRole ----------------------------------------------------------------

async fn approle_role(s: &TestServer, name: &str, body: Value) -> String {
    put(s, &format!("auth/approle/role/{name}"), body).await;
    let (st, b) = call(
        s,
        "GET",
        &format!("auth/approle/role/{name}/role-id"),
        Some(ROOT),
        Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{b}");
    b["data"]["role_id"].as_str().unwrap().to_string()
}

/// A new secret ID of `role`: (secret_id, accessor).
async fn approle_secret_id(s: &TestServer, role: &str) -> (String, String) {
    let (st, b) = call(
        s,
        "POST",
        &format!("auth/approle/role/{role}/secret-id"),
        Some(ROOT),
        json!({}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    (
        b["data"]["secret_id"].as_str().unwrap().to_string(),
        b["data"]["secret_id_accessor"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

#[tokio::test]
async fn approle_accessor_of_another_role_is_refused() {
    let (s, storage) = dev_on_memory().await;
    enable_auth(&s, "approle", "approle").await;
    let role_a = approle_role(&s, "a", json!({"token_policies": "a"})).await;
    approle_role(&s, "b", json!({"token_policies": "b"})).await;
    let (secret_a, accessor_a) = approle_secret_id(&s, "a").await;

    let before = snapshot(&storage).await;
    let missing = errors(&format!(
        "secret_id_accessor: failed to find accessor entry for secret_id_accessor {accessor_a:?}"
    ));
    for path in [
        "auth/approle/role/b/secret-id-accessor/lookup",
        "auth/approle/role/b/secret-id-accessor/destroy",
    ] {
        let (st, b) = call(
            &s,
            "POST",
            path,
            Some(ROOT),
            json!({ "secret_id_accessor": accessor_a }),
        )
        .await;
        assert_eq!((st, &b), (400, &missing), "{path}");
    }
    // DELETE carries its parameters in the query, as in Vault.
    let (st, b) = call(
        &s,
        "DELETE",
        &format!("auth/approle/role/b/secret-id-accessor/destroy?secret_id_accessor={accessor_a}"),
        Some(ROOT),
        Value::Null,
    )
    .await;
    assert_eq!((st, &b), (400, &missing));
    // Role A's secret ID itself is not found through role B either.
    let (st, b) = call(
        &s,
        "POST",
        "auth/approle/role/b/secret-id/lookup",
        Some(ROOT),
        json!({ "secret_id": secret_a }),
    )
    .await;
    assert_eq!((st, &b), (204, &Value::Null));
    let (st, b) = call(
        &s,
        "LIST",
        "auth/approle/role/b/secret-id",
        Some(ROOT),
        Value::Null,
    )
    .await;
    assert_eq!((st, &b), (404, &json!({"errors": []})));
    assert_same_storage(
        &before,
        &snapshot(&storage).await,
        "role B's accessor paths",
    );

    // Through its own role the accessor still finds it, and it still logs in.
    let (st, b) = call(
        &s,
        "POST",
        "auth/approle/role/a/secret-id-accessor/lookup",
        Some(ROOT),
        json!({ "secret_id_accessor": accessor_a }),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["secret_id_accessor"], json!(accessor_a));
    let (st, b) = call(
        &s,
        "POST",
        "auth/approle/login",
        None,
        json!({"role_id": role_a, "secret_id": secret_a}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
}

#[tokio::test]
async fn approle_secret_id_past_num_uses_and_failed_logins_leave_storage_untouched() {
    let (s, storage) = dev_on_memory().await;
    enable_auth(&s, "approle", "approle").await;
    let role_id = approle_role(
        &s,
        "app",
        json!({"token_policies": "app", "secret_id_num_uses": 1}),
    )
    .await;
    let other_role_id = approle_role(&s, "other", json!({"token_policies": "other"})).await;
    let (secret, _) = approle_secret_id(&s, "app").await;
    let (other_secret, _) = approle_secret_id(&s, "other").await;

    let login = json!({"role_id": role_id, "secret_id": secret});
    let (st, b) = call(&s, "POST", "auth/approle/login", None, login.clone()).await;
    assert_eq!(st, 200, "{b}");

    let before = snapshot(&storage).await;
    let accessors = token_accessors(&s).await;
    let invalid = errors("invalid role or secret ID");
    let refused = [
        // Used up: its one use is spent.
        login.clone(),
        login,
        // Another role's secret ID, a role ID nobody has, a wrong secret.
        json!({"role_id": role_id, "secret_id": other_secret}),
        json!({"role_id": "no-such-role-id", "secret_id": secret}),
        json!({"role_id": other_role_id, "secret_id": "wrong"}),
        json!({"role_id": other_role_id, "secret_id": ""}),
    ];
    for body in refused {
        let (st, b) = call(&s, "POST", "auth/approle/login", None, body.clone()).await;
        assert_eq!((st, &b), (400, &invalid), "{body}");
    }
    assert_same_storage(&before, &snapshot(&storage).await, "refused approle logins");
    assert_eq!(token_accessors(&s).await, accessors);
}

/// Regression: a secret ID presented from outside the role's
/// `secret_id_bound_cidrs` was refused only after one of its uses had been
/// spent (and, at its last use, after it had been deleted).
#[tokio::test]
async fn approle_role_cidr_refusal_spends_no_secret_id_use() {
    let (s, storage) = dev_on_memory().await;
    enable_auth(&s, "approle", "approle").await;
    let role_id = approle_role(
        &s,
        "fenced",
        json!({"token_policies": "app", "secret_id_num_uses": 3,
               "secret_id_bound_cidrs": "10.0.0.0/8"}),
    )
    .await;
    let (secret, accessor) = approle_secret_id(&s, "fenced").await;
    let before = snapshot(&storage).await;
    for _ in 0..3 {
        let (st, b) = call(
            &s,
            "POST",
            "auth/approle/login",
            None,
            json!({"role_id": role_id, "secret_id": secret}),
        )
        .await;
        assert_eq!((st, &b), (400, &errors("invalid role or secret ID")));
    }
    assert_same_storage(&before, &snapshot(&storage).await, "refused CIDR logins");
    let (st, b) = call(
        &s,
        "POST",
        "auth/approle/role/fenced/secret-id-accessor/lookup",
        Some(ROOT),
        json!({ "secret_id_accessor": accessor }),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["secret_id_num_uses"], json!(3));
}

// ----- userpass -----------------------------------------------------------------

#[tokio::test]
async fn userpass_lockout_refuses_the_right_password_like_a_wrong_one() {
    let (s, storage) = dev_on_memory().await;
    enable_auth(&s, "userpass", "userpass").await;
    put(
        &s,
        "auth/userpass/config/lockout",
        json!({"lockout_threshold": 3, "lockout_duration": "1h", "lockout_counter_reset": "1h"}),
    )
    .await;
    put(
        &s,
        "auth/userpass/users/alice",
        json!({"password": "s3cret", "token_policies": "app"}),
    )
    .await;
    put(&s, "auth/userpass/users/bob", json!({"password": "b0b"})).await;

    let before = snapshot(&storage).await;
    let accessors = token_accessors(&s).await;
    let invalid = errors("invalid username or password");
    let login = |user: &'static str, pw: &'static str| {
        let s = &s;
        async move {
            call(
                s,
                "POST",
                &format!("auth/userpass/login/{user}"),
                None,
                json!({ "password": pw }),
            )
            .await
        }
    };

    // Unknown user and wrong password: one answer.
    assert_eq!(login("mallory", "x").await, (400, invalid.clone()));
    for _ in 0..3 {
        assert_eq!(login("alice", "wrong").await, (400, invalid.clone()));
    }
    // Locked: the right password gets exactly the wrong password's answer,
    // whatever the spelling of the name.
    assert_eq!(login("alice", "s3cret").await, (400, invalid.clone()));
    assert_eq!(login(" Alice ", "s3cret").await, (400, invalid.clone()));
    assert_eq!(login("alice", "wrong").await, (400, invalid.clone()));
    // Nothing of the lockout reached storage, and no token was made.
    assert_same_storage(
        &before,
        &snapshot(&storage).await,
        "refused userpass logins",
    );
    assert_eq!(token_accessors(&s).await, accessors);
    // Another user is not locked with her.
    let (st, b) = login("bob", "b0b").await;
    assert_eq!(st, 200, "{b}");

    // Only the administrator sees the lock, and can lift it.
    let (st, b) = call(
        &s,
        "GET",
        "auth/userpass/lockout/alice",
        Some(ROOT),
        Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["locked"], json!(true));
    assert_eq!(b["data"]["failed_login_attempts"], json!(3));
    let (st, b) = call(
        &s,
        "DELETE",
        "auth/userpass/lockout/alice",
        Some(ROOT),
        Value::Null,
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = login("alice", "s3cret").await;
    assert_eq!(st, 200, "{b}");
}

// ----- the built-in login brake --------------------------------------------------

const BRAKED: &str = "too many failed logins from this address; try again later";

/// `n` failed AppRole logins sent at once; their statuses (400 or 429).
async fn failed_logins(s: &TestServer, n: usize) -> Vec<u16> {
    let attempts = (0..n).map(|i| async move {
        let (st, b) = call(
            s,
            "POST",
            "auth/approle/login",
            None,
            json!({"role_id": "guess", "secret_id": format!("guess-{i}")}),
        )
        .await;
        match st {
            400 => assert_eq!(b, errors("invalid role or secret ID")),
            429 => assert_eq!(b, errors(BRAKED)),
            other => panic!("a failed login answered {other}: {b}"),
        }
        st
    });
    futures::future::join_all(attempts).await
}

/// Sends `request` right after a burst of failures until it is braked.
/// The bucket refills at 10 a second, so on a slow machine one attempt may
/// land after a refill and go through (200); the brake must hold on a
/// later one.
async fn braked<F, Fut>(s: &TestServer, request: F) -> (u16, Value)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = (u16, Value)>,
{
    for _ in 0..20 {
        failed_logins(s, 20).await;
        let (st, b) = request().await;
        if st == 429 {
            return (st, b);
        }
        assert_eq!(st, 200, "{b}");
    }
    panic!("the brake never held for this request");
}

#[tokio::test]
async fn failed_logins_from_one_address_end_in_429_without_any_quota() {
    let (s, _) = dev_on_memory().await;
    enable_auth(&s, "approle", "approle").await;
    let role_id = approle_role(&s, "app", json!({"token_policies": "app"})).await;
    let (secret, _) = approle_secret_id(&s, "app").await;
    let (st, b) = call(&s, "LIST", "sys/quotas/rate-limit", Some(ROOT), Value::Null).await;
    assert_eq!(st, 404, "no quota is configured: {b}");
    let (st, b) = call(&s, "GET", "sys/quotas/config", Some(ROOT), Value::Null).await;
    assert_eq!(st, 200, "{b}");

    // The brake's bucket holds 50 failures and refills at 10 a second
    // (tresor-core's quota.rs). Failures sent 25 at a time outrun the
    // refill however slow the machine; the first 50 are answered 400.
    let mut refused = 0;
    let mut braked_now = false;
    for _ in 0..40 {
        let statuses = failed_logins(&s, 25).await;
        refused += statuses.iter().filter(|st| **st == 400).count();
        if statuses.contains(&429) {
            braked_now = true;
            break;
        }
    }
    assert!(braked_now, "1000 failed logins were never throttled");
    assert!(refused >= 50, "throttled after only {refused} failures");

    // While braked, even the right credentials wait, through both login
    // endpoints (the simple one has its own error shape).
    let right = json!({"role_id": role_id, "secret_id": secret});
    let answer = braked(&s, || {
        call(&s, "POST", "auth/approle/login", None, right.clone())
    })
    .await;
    assert_eq!(answer, (429, errors(BRAKED)));
    let answer = braked(&s, || async {
        let resp = common::client()
            .post(s.url("/api/v1/auth/login"))
            .json(&json!({"method": "approle", "role_id": role_id, "secret_id": secret}))
            .send()
            .await
            .unwrap();
        let st = resp.status().as_u16();
        (st, resp.json::<Value>().await.unwrap())
    })
    .await;
    assert_eq!(answer, (429, json!({ "error": BRAKED })));
    // Other requests from the address are not braked.
    let (st, b) = call(&s, "GET", "auth/approle/role/app", Some(ROOT), Value::Null).await;
    assert_eq!(st, 200, "{b}");
}

#[tokio::test]
async fn approle_lockout_refuses_a_valid_secret_id_without_spending_it() {
    let (s, storage) = dev_on_memory().await;
    enable_auth(&s, "approle", "approle").await;
    put(
        &s,
        "auth/approle/config/lockout",
        json!({"lockout_threshold": 2, "lockout_duration": "1h", "lockout_counter_reset": "1h"}),
    )
    .await;
    let role_id = approle_role(
        &s,
        "app",
        json!({"token_policies": "app", "secret_id_num_uses": 5}),
    )
    .await;
    let (secret, accessor) = approle_secret_id(&s, "app").await;

    let before = snapshot(&storage).await;
    let invalid = errors("invalid role or secret ID");
    for body in [
        json!({"role_id": role_id, "secret_id": "wrong-1"}),
        json!({"role_id": role_id, "secret_id": "wrong-2"}),
        // Locked: the valid secret ID gets the wrong one's answer.
        json!({"role_id": role_id, "secret_id": secret}),
        json!({"role_id": role_id, "secret_id": secret}),
    ] {
        let (st, b) = call(&s, "POST", "auth/approle/login", None, body.clone()).await;
        assert_eq!((st, &b), (400, &invalid), "{body}");
    }
    // No use of the secret ID was spent while locked.
    assert_same_storage(&before, &snapshot(&storage).await, "locked approle logins");
    let (st, b) = call(
        &s,
        "GET",
        "auth/approle/lockout/app",
        Some(ROOT),
        Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["locked"], json!(true));
    let (st, b) = call(
        &s,
        "DELETE",
        "auth/approle/lockout/app",
        Some(ROOT),
        Value::Null,
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = call(
        &s,
        "POST",
        "auth/approle/login",
        None,
        json!({"role_id": role_id, "secret_id": secret}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (_, b) = call(
        &s,
        "POST",
        "auth/approle/role/app/secret-id-accessor/lookup",
        Some(ROOT),
        json!({ "secret_id_accessor": accessor }),
    )
    .await;
    assert_eq!(b["data"]["secret_id_num_uses"], json!(4));
}

// ----- JWT --------------------------------------------------------------------------

#[tokio::test]
async fn jwt_other_key_expired_other_audience_other_issuer_are_refused() {
    let (s, storage) = dev_on_memory().await;
    let key = Ed25519::new();
    let stranger = Ed25519::new();
    enable_auth(&s, "jwt", "jwt").await;
    put(
        &s,
        "auth/jwt/config",
        json!({"jwt_validation_pubkeys": [key.public_pem], "bound_issuer": "https://ci.test"}),
    )
    .await;
    put(
        &s,
        "auth/jwt/role/ci",
        json!({"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["tresor"],
               "token_policies": ["app"], "token_ttl": "10m"}),
    )
    .await;
    let t = now();
    let good = json!({"iss": "https://ci.test", "aud": "tresor", "sub": "pipeline",
                      "iat": t, "exp": t + 300});
    let (st, b) = call(
        &s,
        "POST",
        "auth/jwt/login",
        None,
        json!({"role": "ci", "jwt": key.jwt(&good)}),
    )
    .await;
    assert_eq!(st, 200, "{b}");

    let before = snapshot(&storage).await;
    let accessors = token_accessors(&s).await;
    let with = |field: &str, v: Value| {
        let mut c = good.clone();
        c[field] = v;
        c
    };
    let cases = [
        (
            "signed by another key",
            stranger.jwt(&good),
            "error validating token: no known key successfully validated the token signature",
        ),
        (
            // Past exp by more than the default leeways (150 s + 60 s skew).
            "expired",
            key.jwt(&with("exp", json!(t - 600))),
            "error validating token: token is expired (exp)",
        ),
        (
            "another audience",
            key.jwt(&with("aud", json!("someone-else"))),
            "error validating token: aud claim does not match any of the role's bound_audiences",
        ),
        (
            "another issuer",
            key.jwt(&with("iss", json!("https://evil.test"))),
            "error validating token: issuer (iss) does not match the configured issuer",
        ),
    ];
    for (what, jwt, msg) in cases {
        let (st, b) = call(
            &s,
            "POST",
            "auth/jwt/login",
            None,
            json!({"role": "ci", "jwt": jwt}),
        )
        .await;
        assert_eq!((st, &b), (400, &errors(msg)), "{what}");
    }
    assert_same_storage(&before, &snapshot(&storage).await, "refused JWT logins");
    assert_eq!(token_accessors(&s).await, accessors);
}

// ----- Kubernetes ---------------------------------------------------------------

/// A TokenReview API as a cluster answers it: `sa-<namespace>-<name>`
/// tokens are service accounts, anything else is not authenticated.
async fn token_review_peer() -> std::net::SocketAddr {
    let app = Router::new().route(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        post(|Json(body): Json<Value>| async move {
            let token = body["spec"]["token"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let status = match token.strip_prefix("sa-").and_then(|r| r.split_once('-')) {
                Some((ns, name)) => json!({"authenticated": true,
                    "user": {"username": format!("system:serviceaccount:{ns}:{name}"),
                             "uid": format!("uid-{ns}-{name}")}}),
                None => json!({"authenticated": false, "error": "token is not valid"}),
            };
            (
                axum::http::StatusCode::CREATED,
                Json(
                    json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                            "status": status}),
                ),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

#[tokio::test]
async fn kubernetes_foreign_namespace_and_unauthenticated_review_are_refused() {
    let peer = token_review_peer().await;
    let (s, storage) = dev_on_memory().await;
    enable_auth(&s, "kubernetes", "kubernetes").await;
    put(
        &s,
        "auth/kubernetes/config",
        json!({"kubernetes_host": format!("http://{peer}"), "token_reviewer_jwt": "reviewer",
               "disable_local_ca_jwt": true}),
    )
    .await;
    put(
        &s,
        "auth/kubernetes/role/app",
        json!({"bound_service_account_names": "app",
               "bound_service_account_namespaces": ["prod", "staging"],
               "token_policies": "app"}),
    )
    .await;
    let (st, b) = call(
        &s,
        "POST",
        "auth/kubernetes/login",
        None,
        json!({"role": "app", "jwt": "sa-prod-app"}),
    )
    .await;
    assert_eq!(st, 200, "{b}");

    let before = snapshot(&storage).await;
    let accessors = token_accessors(&s).await;
    // As Vault: 403 with the reason for an identity the role does not bind.
    let cases = [
        ("sa-dev-app", 403, errors("namespace not authorized")),
        (
            "sa-prod-other",
            403,
            errors("service account name not authorized"),
        ),
        ("stolen-token", 403, errors("permission denied")),
    ];
    for (jwt, status, body) in cases {
        let (st, b) = call(
            &s,
            "POST",
            "auth/kubernetes/login",
            None,
            json!({"role": "app", "jwt": jwt}),
        )
        .await;
        assert_eq!((st, &b), (status, &body), "{jwt}");
    }
    assert_same_storage(
        &before,
        &snapshot(&storage).await,
        "refused Kubernetes logins",
    );
    assert_eq!(token_accessors(&s).await, accessors);
}

// ----- AWS IAM (moto) -----------------------------------------------------------

/// Creates an IAM user in moto and prints login fields signed by botocore
/// as hvac signs them: a good request and three tampered ones.
const SIGNED_VARIANTS: &str = r#"
import base64, json, sys, uuid
import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
endpoint, server_id = sys.argv[1], sys.argv[2]
iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="test", aws_secret_access_key="test")
name = "refusals-" + uuid.uuid4().hex
arn = iam.create_user(UserName=name)["User"]["Arn"]
key = iam.create_access_key(UserName=name)["AccessKey"]
creds = Credentials(key["AccessKeyId"], key["SecretAccessKey"])

def signed(body="Action=GetCallerIdentity&Version=2011-06-15", extra=None, with_server_id=True):
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    if with_server_id:
        headers["X-Vault-AWS-IAM-Server-ID"] = server_id
    headers.update(extra or {})
    req = AWSRequest(method="POST", url="https://sts.amazonaws.com/", data=body, headers=headers)
    SigV4Auth(creds, "sts", "us-east-1").add_auth(req)
    h = json.dumps({k: [req.headers[k]] for k in req.headers})
    return {
        "role": "dev",
        "iam_http_request_method": "POST",
        "iam_request_url": base64.b64encode(req.url.encode()).decode(),
        "iam_request_body": base64.b64encode(body.encode()).decode(),
        "iam_request_headers": base64.b64encode(h.encode()).decode(),
    }

print(json.dumps({"arn": arn,
    "good": signed(),
    "other_action": signed(body="Action=GetSessionToken&Version=2011-06-15"),
    "extra_header": signed(extra={"X-Amz-Target": "AWSSecurityTokenServiceV20110615.GetSessionToken"}),
    "no_server_id": signed(with_server_id=False),
}))
"#;

#[tokio::test]
async fn aws_iam_other_action_extra_header_missing_server_id_are_refused() {
    let Some(moto) = moto() else { return };
    let out = std::process::Command::new("python3")
        .args(["-c", SIGNED_VARIANTS, &moto, "tresor.example.com"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();

    let (s, storage) = dev_on_memory().await;
    enable_auth(&s, "aws", "aws").await;
    put(
        &s,
        "auth/aws/config/client",
        json!({"sts_endpoint": moto, "sts_region": "us-east-1", "iam_endpoint": moto,
               "access_key": "test", "secret_key": "test",
               "iam_server_id_header_value": "tresor.example.com"}),
    )
    .await;
    put(
        &s,
        "auth/aws/role/dev",
        json!({"auth_type": "iam", "bound_iam_principal_arn": [v["arn"]], "policies": "dev"}),
    )
    .await;
    // The untampered request logs in: the refusals below are the tampering's.
    let (st, b) = call(&s, "POST", "auth/aws/login", None, v["good"].clone()).await;
    assert_eq!(st, 200, "{b}");

    let before = snapshot(&storage).await;
    let accessors = token_accessors(&s).await;
    let cases = [
        (
            "other_action",
            "iam_request_body: Action must be GetCallerIdentity, got \"GetSessionToken\"",
        ),
        (
            "extra_header",
            "iam_request_headers: header \"x-amz-target\" is not allowed",
        ),
        (
            "no_server_id",
            "iam_request_headers: missing the X-Vault-AWS-IAM-Server-ID header this server requires",
        ),
    ];
    for (what, msg) in cases {
        let (st, b) = call(&s, "POST", "auth/aws/login", None, v[what].clone()).await;
        assert_eq!((st, &b), (400, &errors(msg)), "{what}");
    }
    assert_same_storage(&before, &snapshot(&storage).await, "refused AWS logins");
    assert_eq!(token_accessors(&s).await, accessors);
}
