//! userpass against in-memory storage: every path, and the refusals.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tresor_engines::auth::userpass::UserPass;
use tresor_sdk::testing::{req, MemoryStorage};
use tresor_sdk::{Auth, Backend, BackendError, Operation, Request, Response, Storage};

struct T {
    b: UserPass,
    s: MemoryStorage,
}

impl T {
    async fn new() -> T {
        let t = T {
            b: UserPass::new().expect("backend"),
            s: MemoryStorage::new(),
        };
        t.b.initialize(&t.s).await.expect("init");
        t
    }

    async fn call(&self, r: Request) -> Result<Option<Response>, BackendError> {
        self.b.handle(&r, &self.s).await
    }

    async fn ok(&self, op: Operation, path: &str, body: Value) -> Option<Response> {
        self.call(req(op, path).body(body))
            .await
            .unwrap_or_else(|e| panic!("{op:?} {path}: {e}"))
    }

    async fn data(&self, op: Operation, path: &str, body: Value) -> Value {
        let r = self.ok(op, path, body).await.expect("response");
        Value::Object(r.data.expect("data"))
    }

    async fn login(&self, user: &str, pw: &str) -> Result<Auth, BackendError> {
        let r = self
            .call(req(Operation::Update, &format!("login/{user}")).body(json!({"password": pw})))
            .await?;
        Ok(r.and_then(|r| r.auth).expect("auth"))
    }
}

fn bad(e: BackendError) -> String {
    match e {
        BackendError::BadRequest(m) => m,
        other => panic!("expected a 400, got {other:?}"),
    }
}

async fn snapshot(s: &MemoryStorage) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for k in s.keys() {
        out.push((k.clone(), s.get(&k).await.expect("get").expect("value")));
    }
    out
}

#[tokio::test]
async fn user_crud_password_policies_and_login() {
    let t = T::new().await;
    assert!(t
        .call(req(Operation::List, "users"))
        .await
        .expect("list")
        .is_none());
    let e = t
        .call(req(Operation::Create, "users/bob").body(json!({"token_policies": "a"})))
        .await
        .expect_err("no password");
    assert!(bad(e).contains("password"));
    t.ok(
        Operation::Create,
        "users/bob",
        json!({"password": "hunter2", "token_policies": "a,b", "token_ttl": "1h"}),
    )
    .await;
    let d = t.data(Operation::Read, "users/bob", json!({})).await;
    assert_eq!(d["token_policies"], json!(["a", "b"]));
    assert_eq!(d["token_ttl"], json!(3600));
    assert!(d.get("password").is_none() && d.get("password_hash").is_none());

    // Stored as argon2id, never in clear.
    for k in t.s.keys() {
        let v = String::from_utf8_lossy(&t.s.get(&k).await.expect("get").expect("v")).into_owned();
        assert!(!v.contains("hunter2"));
        if k == "user/bob" {
            assert!(v.contains("$argon2id$"), "{v}");
        }
    }

    let auth = t.login("bob", "hunter2").await.expect("login");
    assert_eq!(auth.policies, vec!["a", "b"]);
    assert_eq!(auth.alias_name, "bob");
    assert_eq!(auth.display_name, "bob");
    assert_eq!(
        auth.metadata.get("username").map(String::as_str),
        Some("bob")
    );
    assert_eq!(auth.lease.ttl, Duration::from_secs(3600));

    t.ok(
        Operation::Update,
        "users/bob/password",
        json!({"password": "new-pw"}),
    )
    .await;
    assert!(t.login("bob", "hunter2").await.is_err());
    t.login("bob", "new-pw").await.expect("new password");

    t.ok(
        Operation::Update,
        "users/bob/policies",
        json!({"policies": ["c"]}),
    )
    .await;
    let d = t.data(Operation::Read, "users/bob", json!({})).await;
    assert_eq!(d["token_policies"], json!(["c"]));
    assert_eq!(
        d["token_ttl"],
        json!(3600),
        "policies update keeps the rest"
    );

    // An update without a password keeps it.
    t.ok(Operation::Update, "users/bob", json!({"token_ttl": "2h"}))
        .await;
    t.login("bob", "new-pw").await.expect("password kept");

    t.ok(Operation::Create, "users/amy", json!({"password": "x"}))
        .await;
    let l = t.data(Operation::List, "users", json!({})).await;
    assert_eq!(l["keys"], json!(["amy", "bob"]));
    t.ok(Operation::Delete, "users/bob", json!({})).await;
    assert!(t
        .call(req(Operation::Read, "users/bob"))
        .await
        .expect("read")
        .is_none());
    assert!(t.login("bob", "new-pw").await.is_err());
}

#[tokio::test]
async fn usernames_are_normalised() {
    let t = T::new().await;
    t.ok(
        Operation::Create,
        "users/ Alice ",
        json!({"password": "pw"}),
    )
    .await;
    assert_eq!(
        t.s.keys().iter().filter(|k| k.starts_with("user/")).count(),
        1
    );
    for name in ["alice", "Alice", " alice ", "ALICE"] {
        t.login(name, "pw")
            .await
            .unwrap_or_else(|e| panic!("{name:?}: {e}"));
    }
    t.data(Operation::Read, "users/ALICE", json!({})).await;
    let l = t.data(Operation::List, "users", json!({})).await;
    assert_eq!(l["keys"], json!(["alice"]));
}

#[tokio::test]
async fn wrong_password_and_unknown_user_look_the_same() {
    let t = T::new().await;
    t.ok(Operation::Create, "users/bob", json!({"password": "right"}))
        .await;
    // Warm up both paths once.
    let _ = t.login("bob", "wrong").await;
    let _ = t.login("nobody", "wrong").await;
    t.ok(Operation::Delete, "lockout/bob", json!({})).await;

    let before = snapshot(&t.s).await;
    let mut wrong_t = Duration::ZERO;
    let mut unknown_t = Duration::ZERO;
    let mut msgs = Vec::new();
    for _ in 0..3 {
        let s = Instant::now();
        msgs.push(bad(t.login("bob", "wrong").await.expect_err("wrong")));
        wrong_t += s.elapsed();
        let s = Instant::now();
        msgs.push(bad(t.login("nobody", "wrong").await.expect_err("unknown")));
        unknown_t += s.elapsed();
    }
    msgs.dedup();
    assert_eq!(msgs, vec!["invalid username or password".to_string()]);
    // Both run one argon2 verification at the same parameters.
    let ratio = wrong_t.as_secs_f64() / unknown_t.as_secs_f64();
    assert!(
        (0.5..2.0).contains(&ratio),
        "wrong {wrong_t:?} vs unknown {unknown_t:?}"
    );
    // No failed login leaves anything in storage.
    assert_eq!(before, snapshot(&t.s).await);
}

#[tokio::test]
async fn lockout_after_failures_and_unlock_after_duration() {
    let t = T::new().await;
    t.ok(
        Operation::Update,
        "config/lockout",
        json!({"lockout_threshold": 2, "lockout_duration": "1s", "lockout_counter_reset": "1m"}),
    )
    .await;
    t.ok(Operation::Create, "users/bob", json!({"password": "right"}))
        .await;
    let before = snapshot(&t.s).await;
    let wrong = bad(t.login("bob", "x").await.expect_err("1"));
    // Another spelling of the same user counts towards the same lock.
    t.login(" BOB", "x").await.expect_err("2");
    assert_eq!(
        bad(t.login("bob", "right").await.expect_err("locked")),
        wrong
    );
    let st = t.data(Operation::Read, "lockout/Bob", json!({})).await;
    assert_eq!(st["locked"], json!(true));
    assert_eq!(st["username"], json!("bob"));
    assert_eq!(
        before,
        snapshot(&t.s).await,
        "lockout is not kept in storage"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    t.login("bob", "right").await.expect("unlocked");

    t.ok(
        Operation::Update,
        "config/lockout",
        json!({"lockout_duration": "1h"}),
    )
    .await;
    t.login("bob", "x").await.expect_err("1");
    t.login("bob", "x").await.expect_err("2");
    assert!(t.login("bob", "right").await.is_err());
    t.ok(Operation::Delete, "lockout/bob", json!({})).await;
    t.login("bob", "right")
        .await
        .expect("cleared by the administrator");
    assert!(t
        .call(req(Operation::Read, "lockout/nobody"))
        .await
        .expect("read")
        .is_none());
}

#[tokio::test]
async fn renew_checks_the_user() {
    let t = T::new().await;
    t.ok(
        Operation::Create,
        "users/bob",
        json!({"password": "pw", "token_policies": "p", "token_ttl": 300}),
    )
    .await;
    let auth = t.login("bob", "pw").await.expect("login");
    let renew = |a: Auth| {
        let mut r = req(Operation::Renew, "login/bob");
        r.auth = Some(a);
        r
    };
    let r = t
        .call(renew(auth.clone()))
        .await
        .expect("renew")
        .expect("resp");
    assert_eq!(r.auth.expect("auth").lease.ttl, Duration::from_secs(300));
    t.ok(
        Operation::Update,
        "users/bob/policies",
        json!({"token_policies": "other"}),
    )
    .await;
    assert!(bad(t.call(renew(auth.clone())).await.expect_err("policies")).contains("policies"));
    t.ok(Operation::Delete, "users/bob", json!({})).await;
    assert!(bad(t.call(renew(auth)).await.expect_err("deleted")).contains("bob"));
}

#[tokio::test]
async fn login_paths_are_unauthenticated() {
    let t = T::new().await;
    let sp = t.b.special_paths();
    assert!(tresor_sdk::SpecialPaths::matches(
        &sp.unauthenticated,
        "login/bob"
    ));
    assert!(!tresor_sdk::SpecialPaths::matches(
        &sp.unauthenticated,
        "users/bob"
    ));
    assert_eq!(t.b.backend_type(), tresor_sdk::BackendType::Credential);
    let e = t
        .call(req(Operation::Update, "login/bob").body(json!({})))
        .await
        .expect_err("no password");
    assert!(bad(e).contains("password"));
}

/// hvac's `create_or_update_user(ttl=.., max_ttl=..)` was ignored: the user
/// kept the mount's TTLs.
#[tokio::test]
async fn user_accepts_legacy_ttl_and_max_ttl() {
    let t = T::new().await;
    t.ok(
        Operation::Create,
        "users/old",
        json!({"password": "pw", "ttl": "15m", "max_ttl": 7200, "policies": "p", "bound_cidrs": "127.0.0.1/32"}),
    )
    .await;
    let d = t.data(Operation::Read, "users/old", json!({})).await;
    assert_eq!(d["token_ttl"], json!(900));
    assert_eq!(d["token_max_ttl"], json!(7200));
    assert_eq!(d["token_policies"], json!(["p"]));
    assert_eq!(d["token_bound_cidrs"], json!(["127.0.0.1/32"]));
    // The token_ name wins over the legacy one.
    t.ok(
        Operation::Update,
        "users/old",
        json!({"ttl": "20m", "token_ttl": "5m"}),
    )
    .await;
    let d = t.data(Operation::Read, "users/old", json!({})).await;
    assert_eq!(d["token_ttl"], json!(300));
    assert_eq!(d["token_max_ttl"], json!(7200));
    let e = t
        .call(req(Operation::Update, "users/old").body(json!({"max_ttl": "1m"})))
        .await
        .expect_err("ttl > max_ttl");
    assert!(bad(e).contains("token_max_ttl"));
}
