//! AppRole against in-memory storage: every path, and the refusals.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tresor_engines::auth::approle::AppRole;
use tresor_sdk::testing::{req, MemoryStorage};
use tresor_sdk::{Backend, BackendError, Operation, Request, Response, Storage};

struct T {
    b: Arc<AppRole>,
    s: Arc<MemoryStorage>,
}

impl T {
    async fn new() -> T {
        let t = T {
            b: Arc::new(AppRole::new()),
            s: Arc::new(MemoryStorage::new()),
        };
        t.b.initialize(&*t.s).await.expect("init");
        t
    }

    async fn call(&self, r: Request) -> Result<Option<Response>, BackendError> {
        self.b.handle(&r, &*self.s).await
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

    async fn role_id(&self, role: &str) -> String {
        self.data(Operation::Read, &format!("role/{role}/role-id"), json!({}))
            .await["role_id"]
            .as_str()
            .expect("role_id")
            .to_string()
    }

    async fn secret_id(&self, role: &str, body: Value) -> (String, String) {
        let d = self
            .data(Operation::Update, &format!("role/{role}/secret-id"), body)
            .await;
        (
            d["secret_id"].as_str().expect("secret_id").to_string(),
            d["secret_id_accessor"]
                .as_str()
                .expect("accessor")
                .to_string(),
        )
    }

    async fn login(
        &self,
        role_id: &str,
        secret_id: &str,
    ) -> Result<tresor_sdk::Auth, BackendError> {
        let r = self
            .call(
                req(Operation::Update, "login")
                    .body(json!({"role_id": role_id, "secret_id": secret_id})),
            )
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

#[tokio::test]
async fn role_crud_and_list() {
    let t = T::new().await;
    assert!(t
        .call(req(Operation::List, "role"))
        .await
        .expect("list")
        .is_none());
    t.ok(
        Operation::Create,
        "role/web",
        json!({"token_policies": "a,B", "token_ttl": "1h", "token_max_ttl": "2h",
               "secret_id_num_uses": 5, "secret_id_ttl": "10m", "secret_id_bound_cidrs": ["10.0.0.0/8"],
               "token_num_uses": 3, "token_bound_cidrs": "127.0.0.1/32"}),
    )
    .await;
    let d = t.data(Operation::Read, "role/web", json!({})).await;
    assert_eq!(d["bind_secret_id"], json!(true));
    assert_eq!(d["token_policies"], json!(["a", "b"]));
    assert_eq!(d["policies"], json!(["a", "b"]));
    assert_eq!(d["token_ttl"], json!(3600));
    assert_eq!(d["token_max_ttl"], json!(7200));
    assert_eq!(d["secret_id_num_uses"], json!(5));
    assert_eq!(d["secret_id_ttl"], json!(600));
    assert_eq!(d["secret_id_bound_cidrs"], json!(["10.0.0.0/8"]));
    assert_eq!(d["token_num_uses"], json!(3));
    assert_eq!(d["token_type"], json!("default"));
    assert_eq!(d["local_secret_ids"], json!(false));

    // A partial update keeps the other fields.
    t.ok(Operation::Update, "role/web", json!({"token_ttl": "30m"}))
        .await;
    let d = t.data(Operation::Read, "role/web", json!({})).await;
    assert_eq!(d["token_ttl"], json!(1800));
    assert_eq!(d["token_policies"], json!(["a", "b"]));

    t.ok(Operation::Create, "role/Other", json!({})).await;
    let l = t.data(Operation::List, "role", json!({})).await;
    assert_eq!(l["keys"], json!(["other", "web"]));

    // Existence check drives create vs update.
    assert_eq!(
        t.b.existence_check(&req(Operation::Update, "role/web"), &*t.s)
            .await
            .expect("exists"),
        Some(true)
    );
    assert_eq!(
        t.b.existence_check(&req(Operation::Update, "role/nope"), &*t.s)
            .await
            .expect("exists"),
        Some(false)
    );

    let e = t
        .call(req(Operation::Update, "role/web").body(json!({"token_ttl": "3h"})))
        .await
        .expect_err("ttl > max");
    assert!(bad(e).contains("token_max_ttl"));
    let e = t
        .call(req(Operation::Update, "role/web").body(json!({"secret_id_num_uses": "many"})))
        .await
        .expect_err("bad field");
    assert!(bad(e).contains("secret_id_num_uses"));
    let e = t
        .call(
            req(Operation::Update, "role/web")
                .body(json!({"secret_id_bound_cidrs": "10.0.0.0/99"})),
        )
        .await
        .expect_err("bad cidr");
    assert!(bad(e).contains("secret_id_bound_cidrs"));
    let e = t
        .call(req(Operation::Create, "role/nobind").body(json!({"bind_secret_id": false})))
        .await
        .expect_err("no constraint");
    assert!(bad(e).contains("bind_secret_id"));

    t.ok(Operation::Delete, "role/web", json!({})).await;
    assert!(t
        .call(req(Operation::Read, "role/web"))
        .await
        .expect("read")
        .is_none());
    let l = t.data(Operation::List, "role", json!({})).await;
    assert_eq!(l["keys"], json!(["other"]));
}

#[tokio::test]
async fn role_id_read_update_and_login() {
    let t = T::new().await;
    t.ok(
        Operation::Create,
        "role/r",
        json!({"token_policies": ["p"], "token_ttl": 60}),
    )
    .await;
    let id = t.role_id("r").await;
    assert_eq!(id.len(), 36, "uuid: {id}");
    let (sid, acc) = t
        .secret_id("r", json!({"metadata": "{\"env\":\"prod\"}"}))
        .await;
    let auth = t.login(&id, &sid).await.expect("login");
    assert_eq!(auth.alias_name, id);
    assert_eq!(
        auth.metadata.get("role_name").map(String::as_str),
        Some("r")
    );
    assert_eq!(auth.metadata.get("env").map(String::as_str), Some("prod"));
    assert_eq!(auth.policies, vec!["p"]);
    assert_eq!(auth.lease.ttl, Duration::from_secs(60));
    assert!(auth.lease.renewable);
    let _ = acc;

    t.ok(
        Operation::Update,
        "role/r/role-id",
        json!({"role_id": "custom-id"}),
    )
    .await;
    assert_eq!(t.role_id("r").await, "custom-id");
    assert_eq!(
        bad(t.login(&id, &sid).await.expect_err("old id")),
        "invalid role or secret ID"
    );
    t.login("custom-id", &sid).await.expect("login with new id");

    // Role IDs are unique across roles.
    t.ok(Operation::Create, "role/r2", json!({})).await;
    let e = t
        .call(req(Operation::Update, "role/r2/role-id").body(json!({"role_id": "custom-id"})))
        .await
        .expect_err("dup");
    assert!(bad(e).contains("role_id"));
}

#[tokio::test]
async fn secret_id_paths() {
    let t = T::new().await;
    t.ok(Operation::Create, "role/r", json!({"secret_id_ttl": "1h"}))
        .await;
    let (sid, acc) = t
        .secret_id(
            "r",
            json!({"metadata": {"a": "b"}, "cidr_list": "127.0.0.0/8", "token_bound_cidrs": ["127.0.0.1"],
                   "num_uses": 4, "ttl": "10m"}),
        )
        .await;
    let l = t.data(Operation::List, "role/r/secret-id", json!({})).await;
    assert_eq!(l["keys"], json!([acc.clone()]));

    let d = t
        .data(
            Operation::Update,
            "role/r/secret-id/lookup",
            json!({"secret_id": sid}),
        )
        .await;
    assert_eq!(d["secret_id_accessor"], json!(acc));
    assert_eq!(d["secret_id_num_uses"], json!(4));
    assert_eq!(d["secret_id_ttl"], json!(600));
    assert_eq!(d["metadata"], json!({"a": "b"}));
    assert_eq!(d["cidr_list"], json!(["127.0.0.0/8"]));
    assert_eq!(d["token_bound_cidrs"], json!(["127.0.0.1"]));
    assert!(d["expiration_time"].as_str().is_some());

    let d = t
        .data(
            Operation::Update,
            "role/r/secret-id-accessor/lookup",
            json!({"secret_id_accessor": acc}),
        )
        .await;
    assert_eq!(d["secret_id_num_uses"], json!(4));

    // Secret IDs are stored as HMACs only.
    for k in t.s.keys() {
        assert!(!k.contains(&sid), "secret id in key {k}");
        let v = t.s.get(&k).await.expect("get").expect("value");
        assert!(
            !String::from_utf8_lossy(&v).contains(&sid),
            "secret id in {k}"
        );
    }

    // Over the role's limits.
    let e = t
        .call(req(Operation::Update, "role/r/secret-id").body(json!({"ttl": "2h"})))
        .await
        .expect_err("ttl");
    assert!(bad(e).contains("ttl"));

    // The login token is bound to the secret ID's token CIDRs; the login
    // itself to cidr_list.
    let id = t.role_id("r").await;
    let mut r = req(Operation::Update, "login").body(json!({"role_id": id, "secret_id": sid}));
    r.remote_addr = Some("10.1.1.1".parse().expect("ip"));
    assert_eq!(
        bad(t.call(r.clone()).await.expect_err("cidr")),
        "invalid role or secret ID"
    );
    r.remote_addr = Some("127.0.0.1".parse().expect("ip"));
    let auth = t
        .call(r)
        .await
        .expect("login")
        .and_then(|r| r.auth)
        .expect("auth");
    assert_eq!(auth.bound_cidrs, vec!["127.0.0.1"]);

    // Destroy by secret ID, and by accessor.
    t.ok(
        Operation::Update,
        "role/r/secret-id/destroy",
        json!({"secret_id": sid}),
    )
    .await;
    assert!(t
        .call(req(Operation::Update, "role/r/secret-id/lookup").body(json!({"secret_id": sid})))
        .await
        .expect("lookup")
        .is_none());
    let (sid2, acc2) = t.secret_id("r", json!({})).await;
    t.ok(
        Operation::Update,
        "role/r/secret-id-accessor/destroy",
        json!({"secret_id_accessor": acc2}),
    )
    .await;
    assert!(t.login(&id, &sid2).await.is_err());
    assert!(t
        .call(req(Operation::List, "role/r/secret-id"))
        .await
        .expect("list")
        .is_none());

    // Custom secret ID.
    let d = t
        .data(
            Operation::Update,
            "role/r/custom-secret-id",
            json!({"secret_id": "my-secret-value"}),
        )
        .await;
    assert_eq!(d["secret_id"], json!("my-secret-value"));
    t.login(&id, "my-secret-value").await.expect("custom login");
    let e = t
        .call(
            req(Operation::Update, "role/r/custom-secret-id")
                .body(json!({"secret_id": "my-secret-value"})),
        )
        .await
        .expect_err("duplicate");
    assert!(bad(e).contains("secret_id"));
}

#[tokio::test]
async fn secret_id_used_past_num_uses_is_refused_and_deleted() {
    let t = T::new().await;
    t.ok(
        Operation::Create,
        "role/r",
        json!({"secret_id_num_uses": 2}),
    )
    .await;
    let id = t.role_id("r").await;
    let (sid, _) = t.secret_id("r", json!({})).await;
    t.login(&id, &sid).await.expect("1");
    let d = t
        .data(
            Operation::Update,
            "role/r/secret-id/lookup",
            json!({"secret_id": sid}),
        )
        .await;
    assert_eq!(d["secret_id_num_uses"], json!(1));
    t.login(&id, &sid).await.expect("2");
    assert_eq!(
        bad(t.login(&id, &sid).await.expect_err("3")),
        "invalid role or secret ID"
    );
    assert!(!t
        .s
        .keys()
        .iter()
        .any(|k| k.starts_with("secret_id/") || k.starts_with("accessor/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_use_secret_id_logs_in_once_under_concurrency() {
    let t = Arc::new(T::new().await);
    // The losers' failures would otherwise lock the role.
    t.ok(
        Operation::Update,
        "config/lockout",
        json!({"disable_lockout": true}),
    )
    .await;
    t.ok(
        Operation::Create,
        "role/r",
        json!({"secret_id_num_uses": 1}),
    )
    .await;
    let id = t.role_id("r").await;
    for _ in 0..5 {
        let (sid, _) = t.secret_id("r", json!({})).await;
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (t, id, sid) = (t.clone(), id.clone(), sid.clone());
                tokio::spawn(async move { t.login(&id, &sid).await.is_ok() })
            })
            .collect();
        let mut wins = 0;
        for h in tasks {
            if h.await.expect("join") {
                wins += 1;
            }
        }
        assert_eq!(wins, 1);
    }
}

#[tokio::test]
async fn expired_secret_id_is_refused_and_tidied() {
    let t = T::new().await;
    t.ok(Operation::Create, "role/r", json!({})).await;
    let id = t.role_id("r").await;
    let (sid, _) = t.secret_id("r", json!({"ttl": 1})).await;
    let (sid2, _) = t.secret_id("r", json!({"ttl": 1})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        bad(t.login(&id, &sid).await.expect_err("expired")),
        "invalid role or secret ID"
    );
    // The second is gone after a tidy, accessor too.
    t.call(req(Operation::Update, "tidy/secret-id"))
        .await
        .expect("tidy");
    assert!(!t
        .s
        .keys()
        .iter()
        .any(|k| k.starts_with("secret_id/") || k.starts_with("accessor/")));
    assert!(t.login(&id, &sid2).await.is_err());
}

#[tokio::test]
async fn an_accessor_of_another_role_is_refused() {
    let t = T::new().await;
    t.ok(Operation::Create, "role/a", json!({})).await;
    t.ok(Operation::Create, "role/b", json!({})).await;
    let (sid_a, acc_a) = t.secret_id("a", json!({})).await;
    for path in [
        "role/b/secret-id-accessor/lookup",
        "role/b/secret-id-accessor/destroy",
    ] {
        let e = t
            .call(req(Operation::Update, path).body(json!({"secret_id_accessor": acc_a})))
            .await
            .expect_err("other role");
        assert!(bad(e).contains("secret_id_accessor"));
    }
    // Nor can role b's paths see or destroy a's secret ID.
    assert!(t
        .call(req(Operation::Update, "role/b/secret-id/lookup").body(json!({"secret_id": sid_a})))
        .await
        .expect("lookup")
        .is_none());
    t.ok(
        Operation::Update,
        "role/b/secret-id/destroy",
        json!({"secret_id": sid_a}),
    )
    .await;
    // And a's secret ID does not log in as b.
    let id_b = t.role_id("b").await;
    assert!(t.login(&id_b, &sid_a).await.is_err());
    let id_a = t.role_id("a").await;
    t.login(&id_a, &sid_a).await.expect("still valid for a");
}

#[tokio::test]
async fn failed_logins_leave_storage_untouched() {
    let t = T::new().await;
    t.ok(Operation::Create, "role/r", json!({})).await;
    let id = t.role_id("r").await;
    let (sid, _) = t.secret_id("r", json!({})).await;
    let before: Vec<(String, Vec<u8>)> = snapshot(&t.s).await;
    for (rid, s) in [
        (id.as_str(), "wrong"),
        ("unknown-role-id", sid.as_str()),
        (id.as_str(), ""),
        ("unknown", "unknown"),
    ] {
        assert_eq!(
            bad(t.login(rid, s).await.expect_err("fail")),
            "invalid role or secret ID"
        );
    }
    assert_eq!(before, snapshot(&t.s).await);
}

async fn snapshot(s: &MemoryStorage) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for k in s.keys() {
        out.push((k.clone(), s.get(&k).await.expect("get").expect("value")));
    }
    out
}

#[tokio::test]
async fn lockout_after_failures_and_unlock_after_duration() {
    let t = T::new().await;
    t.ok(
        Operation::Update,
        "config/lockout",
        json!({"lockout_threshold": 3, "lockout_duration": "1s"}),
    )
    .await;
    let c = t.data(Operation::Read, "config/lockout", json!({})).await;
    assert_eq!(c["lockout_threshold"], json!(3));
    assert_eq!(c["lockout_duration"], json!(1));
    t.ok(Operation::Create, "role/r", json!({})).await;
    let id = t.role_id("r").await;
    let (sid, _) = t.secret_id("r", json!({})).await;
    let wrong = bad(t.login(&id, "bad").await.expect_err("1"));
    t.login(&id, "bad").await.expect_err("2");
    t.login(&id, "bad").await.expect_err("3");
    // Locked: the right secret ID gets the very same answer.
    assert_eq!(bad(t.login(&id, &sid).await.expect_err("locked")), wrong);
    let st = t.data(Operation::Read, "lockout/r", json!({})).await;
    assert_eq!(st["locked"], json!(true));
    assert_eq!(st["failed_login_attempts"], json!(3));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    t.login(&id, &sid)
        .await
        .expect("unlocked after the duration");
    let st = t.data(Operation::Read, "lockout/r", json!({})).await;
    assert_eq!(st["locked"], json!(false));

    // The administrator can clear a lock.
    t.ok(
        Operation::Update,
        "config/lockout",
        json!({"lockout_duration": "1h"}),
    )
    .await;
    for _ in 0..3 {
        t.login(&id, "bad").await.expect_err("fail");
    }
    assert!(t.login(&id, &sid).await.is_err());
    t.ok(Operation::Delete, "lockout/r", json!({})).await;
    t.login(&id, &sid).await.expect("cleared");

    // And turn lockout off.
    t.ok(
        Operation::Update,
        "config/lockout",
        json!({"disable_lockout": true}),
    )
    .await;
    for _ in 0..5 {
        t.login(&id, "bad").await.expect_err("fail");
    }
    t.login(&id, &sid).await.expect("lockout disabled");
}

#[tokio::test]
async fn renew_checks_the_role() {
    let t = T::new().await;
    t.ok(
        Operation::Create,
        "role/r",
        json!({"token_policies": "p", "token_ttl": 120}),
    )
    .await;
    let id = t.role_id("r").await;
    let (sid, _) = t.secret_id("r", json!({})).await;
    let auth = t.login(&id, &sid).await.expect("login");
    let renew = |auth: tresor_sdk::Auth| {
        let mut r = req(Operation::Renew, "login");
        r.auth = Some(auth);
        r
    };
    let mut issued = auth.clone();
    issued.policies = vec!["default".into(), "p".into()];
    let r = t
        .call(renew(issued.clone()))
        .await
        .expect("renew")
        .expect("resp");
    assert_eq!(r.auth.expect("auth").lease.ttl, Duration::from_secs(120));

    t.ok(Operation::Update, "role/r", json!({"token_policies": "q"}))
        .await;
    assert!(bad(t.call(renew(issued.clone())).await.expect_err("policies")).contains("policies"));
    t.ok(Operation::Update, "role/r", json!({"token_policies": "p"}))
        .await;
    t.call(renew(issued.clone())).await.expect("renew again");

    t.ok(Operation::Delete, "role/r", json!({})).await;
    assert!(
        bad(t.call(renew(issued.clone())).await.expect_err("deleted")).contains("does not exist")
    );
    // Recreated under the same name, it is another role.
    t.ok(Operation::Create, "role/r", json!({"token_policies": "p"}))
        .await;
    assert!(t.call(renew(issued)).await.is_err());
    // Deleting the role removed its secret IDs.
    assert!(!t.s.keys().iter().any(|k| k.starts_with("secret_id/")));
}

#[tokio::test]
async fn role_without_secret_id_binds_by_cidr() {
    let t = T::new().await;
    t.ok(
        Operation::Create,
        "role/r",
        json!({"bind_secret_id": false, "secret_id_bound_cidrs": "127.0.0.1/32"}),
    )
    .await;
    let id = t.role_id("r").await;
    let mut r = req(Operation::Update, "login").body(json!({"role_id": id}));
    r.remote_addr = Some("127.0.0.1".parse().expect("ip"));
    t.call(r.clone()).await.expect("login");
    r.remote_addr = Some("127.0.0.2".parse().expect("ip"));
    assert!(t.call(r).await.is_err());
    let e = t
        .call(req(Operation::Update, "role/r/secret-id"))
        .await
        .expect_err("no secret ids");
    assert!(bad(e).contains("bind_secret_id"));
}

#[tokio::test]
async fn login_is_unauthenticated_and_a_credential_backend() {
    let b = AppRole::new();
    assert_eq!(b.backend_type(), tresor_sdk::BackendType::Credential);
    assert!(tresor_sdk::SpecialPaths::matches(
        &b.special_paths().unauthenticated,
        "login"
    ));
    assert!(!tresor_sdk::SpecialPaths::matches(
        &b.special_paths().unauthenticated,
        "role/x"
    ));
}
