//! Rotation of KV v2 secrets: rules, grace periods, failures and schedules,
//! on in-memory storage with a stand-in for the core's password generator.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tresor_engines::secrets::kv::KvV2;
use tresor_sdk::testing::{req, MemoryStorage};
use tresor_sdk::{Backend, BackendError, Operation, Request, Response, SystemView};

/// Passwords `<policy>-<n>`; only the policy "strong" (and the default)
/// exist.
#[derive(Default)]
struct TestSystem {
    n: AtomicU64,
}

#[async_trait]
impl SystemView for TestSystem {
    fn default_lease_ttl(&self) -> Duration {
        Duration::from_secs(3600)
    }
    fn max_lease_ttl(&self) -> Duration {
        Duration::from_secs(3600)
    }
    async fn generate_password(&self, name: Option<&str>) -> Result<String, BackendError> {
        let n = self.n.fetch_add(1, Ordering::SeqCst);
        match name {
            None => Ok(format!("default-{n}")),
            Some("strong") => Ok(format!("strong-{n}")),
            Some(other) => Err(BackendError::bad_request(format!(
                "password policy {other:?} does not exist"
            ))),
        }
    }
}

struct Kv {
    b: Arc<dyn Backend>,
    s: Arc<MemoryStorage>,
}

impl Kv {
    fn new() -> Self {
        Self::on(Arc::new(MemoryStorage::new()))
    }

    /// A fresh engine instance on existing storage: what a restart gives.
    fn on(s: Arc<MemoryStorage>) -> Self {
        Kv {
            b: Arc::new(KvV2::with_system(
                Arc::new(TestSystem::default()),
                "secret/",
            )),
            s,
        }
    }

    async fn call(&self, r: Request) -> Result<Option<Response>, BackendError> {
        self.b.handle(&r, self.s.as_ref()).await
    }

    async fn data(&self, r: Request) -> Value {
        let what = format!("{:?} {}", r.operation, r.path);
        match self.call(r).await.unwrap_or_else(|e| panic!("{what}: {e}")) {
            Some(Response { data: Some(m), .. }) => Value::Object(m),
            _ => Value::Null,
        }
    }

    async fn put(&self, path: &str, data: Value) -> Value {
        self.data(req(Operation::Update, &format!("data/{path}")).body(json!({ "data": data })))
            .await
    }

    /// (status, body) of a data read.
    async fn get(&self, path: &str, version: Option<u64>) -> (u16, Value) {
        let mut r = req(Operation::Read, &format!("data/{path}"));
        if let Some(v) = version {
            r = r.body(json!({ "version": v }));
        }
        match self.call(r).await.unwrap() {
            None => (404, Value::Null),
            Some(resp) => (
                resp.status.unwrap_or(200),
                resp.data.map(Value::Object).unwrap_or(Value::Null),
            ),
        }
    }

    async fn rule(&self, path: &str, body: Value) -> Value {
        self.data(req(Operation::Update, &format!("rotation/{path}")).body(body))
            .await
    }

    async fn rotation(&self, path: &str) -> Value {
        self.data(req(Operation::Read, &format!("rotation/{path}")))
            .await
    }

    async fn rotate(&self, path: &str, body: Value) -> Result<Option<Response>, BackendError> {
        self.call(req(Operation::Update, &format!("rotate/{path}")).body(body))
            .await
    }
}

#[tokio::test]
async fn both_values_readable_during_grace_only_new_after() {
    let kv = Kv::new();
    kv.put("app/db", json!({"user": "app", "password": "initial"}))
        .await;
    let rule = kv
        .rule(
            "app/db",
            json!({"fields": ["password"], "password_policy": "strong", "grace_period": "2s"}),
        )
        .await;
    assert_eq!(rule["fields"], json!(["password"]));
    assert_eq!(rule["grace_period"], json!("2s"));
    assert_eq!(rule["next_rotation"], json!(""), "no period: manual only");

    let out = kv.rotate("app/db", json!({})).await.unwrap().unwrap();
    let out = Value::Object(out.data.unwrap());
    assert_eq!(out["version"], json!(2));

    let (status, latest) = kv.get("app/db", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        latest["data"]["user"],
        json!("app"),
        "other fields are kept"
    );
    let new_pw = latest["data"]["password"].as_str().unwrap().to_string();
    assert!(new_pw.starts_with("strong-"), "{new_pw}");
    let (status, prev) = kv.get("app/db", Some(1)).await;
    assert_eq!(status, 200, "previous version readable during grace");
    assert_eq!(prev["data"]["password"], json!("initial"));

    let r = kv.rotation("app/db").await;
    assert_eq!(r["in_grace_period"], json!(true));
    assert_eq!(r["previous_version"], json!(1));
    assert_eq!(r["rotated_version"], json!(2));
    assert!(r["rotated_at"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(r["last_rotation_error"], Value::Null);

    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (status, _) = kv.get("app/db", Some(1)).await;
    assert_eq!(status, 404, "previous version retired after grace");
    let (status, latest) = kv.get("app/db", None).await;
    assert_eq!(status, 200);
    assert_eq!(latest["data"]["password"], json!(new_pw));
    assert_eq!(kv.rotation("app/db").await["in_grace_period"], json!(false));
}

#[tokio::test]
async fn max_versions_does_not_prune_a_version_in_grace() {
    let kv = Kv::new();
    kv.data(req(Operation::Update, "metadata/k").body(json!({"max_versions": 1})))
        .await;
    kv.put("k", json!({"token": "t0"})).await;
    kv.rotate("k", json!({"fields": ["token"], "grace_period": "1s"}))
        .await
        .unwrap();
    let (status, prev) = kv.get("k", Some(1)).await;
    assert_eq!(status, 200, "kept despite max_versions = 1");
    assert_eq!(prev["data"]["token"], json!("t0"));
    let meta = kv.data(req(Operation::Read, "metadata/k")).await;
    assert_eq!(meta["oldest_version"], json!(1));

    tokio::time::sleep(Duration::from_millis(1200)).await;
    kv.put("k", json!({"token": "manual"})).await;
    let meta = kv.data(req(Operation::Read, "metadata/k")).await;
    let versions: Vec<&String> = meta["versions"].as_object().unwrap().keys().collect();
    assert_eq!(versions, vec!["3"], "pruned once the grace period is over");
}

#[tokio::test]
async fn failed_rotation_leaves_the_current_version_untouched() {
    let kv = Kv::new();
    kv.put("svc", json!({"password": "keep-me"})).await;
    kv.rule(
        "svc",
        json!({"fields": "password", "password_policy": "no-such-policy"}),
    )
    .await;
    let err = kv.rotate("svc", json!({})).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::BadRequest(m) if m.contains("no-such-policy")),
        "{err:?}"
    );
    let (status, latest) = kv.get("svc", None).await;
    assert_eq!(status, 200);
    assert_eq!(latest["metadata"]["version"], json!(1));
    assert_eq!(latest["data"]["password"], json!("keep-me"));
    let r = kv.rotation("svc").await;
    let e = r["last_rotation_error"].as_str().unwrap();
    assert!(e.contains("does not exist"), "{e}");
    assert!(!e.contains("keep-me"));
    assert_eq!(r["rotated_version"], json!(0));

    // A later good run clears the error.
    kv.rule("svc", json!({"password_policy": "strong"})).await;
    kv.rotate("svc", json!({})).await.unwrap();
    let r = kv.rotation("svc").await;
    assert_eq!(r["last_rotation_error"], Value::Null);
    assert_eq!(r["rotated_version"], json!(2));
}

#[tokio::test]
async fn rotation_of_a_missing_or_deleted_secret_fails_cleanly() {
    let kv = Kv::new();
    let err = kv
        .rotate("ghost", json!({"fields": ["p"]}))
        .await
        .unwrap_err();
    assert!(matches!(&err, BackendError::BadRequest(m) if m.contains("no secret")));
    kv.put("gone", json!({"p": "x"})).await;
    kv.call(req(Operation::Delete, "data/gone")).await.unwrap();
    let err = kv
        .rotate("gone", json!({"fields": ["p"]}))
        .await
        .unwrap_err();
    assert!(matches!(&err, BackendError::BadRequest(m) if m.contains("deleted")));
}

#[tokio::test]
async fn rotate_without_rule_needs_fields() {
    let kv = Kv::new();
    kv.put("x", json!({"a": "1", "b": "2"})).await;
    let err = kv.rotate("x", json!({})).await.unwrap_err();
    assert!(matches!(&err, BackendError::BadRequest(m) if m.starts_with("fields:")));
    let out = kv
        .rotate("x", json!({"fields": ["a", "c"]}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.data.unwrap()["version"], json!(2));
    let (_, latest) = kv.get("x", None).await;
    assert!(latest["data"]["a"]
        .as_str()
        .unwrap()
        .starts_with("default-"));
    assert!(latest["data"]["c"]
        .as_str()
        .unwrap()
        .starts_with("default-"));
    assert_eq!(latest["data"]["b"], json!("2"));
    // No grace period: the previous version is left as any write leaves it.
    let (status, _) = kv.get("x", Some(1)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn rule_validation_names_the_field() {
    let kv = Kv::new();
    let bad = |body: Value| {
        let kv = &kv;
        async move {
            match kv
                .call(req(Operation::Update, "rotation/s").body(body))
                .await
            {
                Err(BackendError::BadRequest(m)) => m,
                other => panic!("expected 400, got {other:?}"),
            }
        }
    };
    assert!(bad(json!({})).await.contains("fields"));
    assert!(bad(json!({"fields": ["p"], "period": "bogus"}))
        .await
        .contains("period"));
    assert!(
        bad(json!({"fields": ["p"], "period": "1h", "grace_period": "2h"}))
            .await
            .contains("grace_period")
    );
    assert!(bad(json!({"fields": ["p"], "schedule": "0 * * * *"}))
        .await
        .contains("schedule"));
    assert!(bad(json!({"fields": [""]})).await.contains("fields"));
}

#[tokio::test]
async fn schedule_survives_a_new_backend_instance() {
    let storage = Arc::new(MemoryStorage::new());
    let kv = Kv::on(storage.clone());
    kv.put("sched", json!({"password": "v1"})).await;
    let r = kv
        .rule(
            "sched",
            json!({"fields": ["password"], "period": "1s", "grace_period": "1s"}),
        )
        .await;
    assert!(r["next_rotation"].as_str().is_some_and(|s| !s.is_empty()));
    // Not due yet: nothing happens.
    kv.b.periodic(storage.as_ref()).await.unwrap();
    assert_eq!(
        kv.get("sched", None).await.1["metadata"]["version"],
        json!(1)
    );
    drop(kv);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let restarted = Kv::on(storage.clone());
    restarted.b.periodic(storage.as_ref()).await.unwrap();
    let (_, latest) = restarted.get("sched", None).await;
    assert_eq!(latest["metadata"]["version"], json!(2));
    assert_ne!(latest["data"]["password"], json!("v1"));
    let r = restarted.rotation("sched").await;
    assert_eq!(r["rotated_version"], json!(2));
    assert_eq!(r["previous_version"], json!(1));
}

#[tokio::test]
async fn scheduled_failure_is_recorded_and_retried_later() {
    let kv = Kv::new();
    kv.put("f", json!({"password": "v1"})).await;
    kv.rule(
        "f",
        json!({"fields": ["password"], "period": "1s", "password_policy": "missing"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    kv.b.periodic(kv.s.as_ref()).await.unwrap();
    assert_eq!(kv.get("f", None).await.1["metadata"]["version"], json!(1));
    let r = kv.rotation("f").await;
    assert!(r["last_rotation_error"]
        .as_str()
        .unwrap()
        .contains("missing"));
}

#[tokio::test]
async fn deleting_metadata_removes_the_rule() {
    let kv = Kv::new();
    kv.put("d", json!({"p": "x"})).await;
    kv.rule("d", json!({"fields": ["p"]})).await;
    kv.call(req(Operation::Delete, "metadata/d")).await.unwrap();
    assert!(kv
        .call(req(Operation::Read, "rotation/d"))
        .await
        .unwrap()
        .is_none());
    kv.rule("d", json!({"fields": ["p"]})).await;
    kv.call(req(Operation::Delete, "rotation/d")).await.unwrap();
    assert!(kv
        .call(req(Operation::Read, "rotation/d"))
        .await
        .unwrap()
        .is_none());
}
