//! The core pipeline end to end, without HTTP: lifecycle, tokens, policies,
//! mounts, leases of a test backend.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tresor_api::sys::{InitRequest, UnsealRequest};
use tresor_core::core::ResponseBody;
use tresor_core::{Core, CoreConfig, CoreError, CoreRequest, CoreResponse};
use tresor_sdk::{
    Backend, BackendConfig, BackendError, Factory, LeaseOptions, Operation, Request, Response,
    Secret, Storage,
};
use tresor_storage::MemoryStorage;

/// A tiny engine: `put/<k>` stores, `get/<k>` reads, `lease` hands out a
/// leased secret whose revocation is recorded in storage.
struct TestEngine;

#[async_trait]
impl Backend for TestEngine {
    async fn existence_check(
        &self,
        req: &Request,
        s: &dyn Storage,
    ) -> Result<Option<bool>, BackendError> {
        Ok(Some(s.get(&req.path).await?.is_some()))
    }
    async fn handle(
        &self,
        req: &Request,
        s: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        match (req.operation, req.path.as_str()) {
            (Operation::Revoke, _) => {
                let id = req
                    .secret
                    .as_ref()
                    .and_then(|s| s.internal_data["id"].as_str())
                    .unwrap_or("")
                    .to_string();
                s.put(&format!("revoked/{id}"), b"1").await?;
                Ok(None)
            }
            (Operation::Renew, _) => Ok(Some(Response {
                secret: req.secret.clone(),
                ..Default::default()
            })),
            (Operation::Read, "lease") => Ok(Some(Response {
                data: Some(
                    json!({"user": "u1"})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                ),
                secret: Some(Secret {
                    lease: LeaseOptions {
                        ttl: Duration::from_secs(600),
                        renewable: true,
                        ..Default::default()
                    },
                    internal_data: json!({"id": "u1"}),
                }),
                ..Default::default()
            })),
            (Operation::Read, p) => Ok(s.get(p).await?.map(|v| {
                Response::data(
                    serde_json::from_slice::<Value>(&v)
                        .ok()
                        .and_then(|v| v.as_object().cloned())
                        .unwrap_or_default(),
                )
            })),
            (Operation::Create | Operation::Update, p) => {
                s.put(p, &serde_json::to_vec(&Value::Object(req.data.clone()))?)
                    .await?;
                Ok(None)
            }
            (Operation::Delete, p) => {
                s.delete(p).await?;
                Ok(None)
            }
            (Operation::List, p) => Ok(Some(Response::list(s.list(p).await?))),
            _ => Err(BackendError::UnsupportedOperation),
        }
    }
}

fn test_factory(_: &BackendConfig) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(Arc::new(TestEngine))
}

fn config(storage: Arc<dyn tresor_storage::Storage>) -> CoreConfig {
    let mut factories: BTreeMap<String, Factory> = BTreeMap::new();
    factories.insert("test".into(), test_factory);
    factories.insert("cubbyhole".into(), test_factory);
    factories.insert("kv".into(), test_factory);
    CoreConfig {
        storage,
        default_lease_ttl: Duration::from_secs(768 * 3600),
        max_lease_ttl: Duration::from_secs(768 * 3600),
        factories,
        cluster_name: "test".into(),
        metrics: None,
    }
}

async fn call(
    core: &Core,
    token: &str,
    op: Operation,
    path: &str,
    body: Value,
) -> Result<CoreResponse, CoreError> {
    let mut r = CoreRequest::new(op, path);
    r.token = Some(token.to_string());
    if let Value::Object(m) = body {
        r.data = m;
    }
    core.handle(r).await
}

fn data(r: &CoreResponse) -> Value {
    match &r.body {
        ResponseBody::Envelope(e) => e.data.clone().unwrap_or(Value::Null),
        ResponseBody::Json(v) => v.clone(),
        _ => Value::Null,
    }
}

fn auth_token(r: &CoreResponse) -> String {
    match &r.body {
        ResponseBody::Envelope(e) => e
            .auth
            .as_ref()
            .map(|a| a.client_token.clone())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

async fn dev() -> (Arc<Core>, String) {
    let core = Core::new(config(Arc::new(MemoryStorage::new())))
        .await
        .expect("core");
    let (_key, root) = core.dev_setup(Some("root".into())).await.expect("dev");
    (core, root)
}

#[tokio::test]
async fn init_unseal_seal_restart() {
    let storage: Arc<dyn tresor_storage::Storage> = Arc::new(MemoryStorage::new());
    let core = Core::new(config(storage.clone())).await.expect("core");
    assert!(!core.init_status().await.expect("status"));
    let init = core
        .init(InitRequest {
            secret_shares: 5,
            secret_threshold: 3,
            ..Default::default()
        })
        .await
        .expect("init");
    assert_eq!(init.keys.len(), 5);
    assert!(core.seal_status().await.expect("s").sealed);
    assert!(matches!(
        call(
            &core,
            &init.root_token,
            Operation::Read,
            "sys/mounts",
            json!({})
        )
        .await,
        Err(CoreError::Sealed)
    ));
    for (i, k) in init.keys.iter().take(3).enumerate() {
        let s = core
            .unseal(UnsealRequest {
                key: Some(k.clone()),
                ..Default::default()
            })
            .await
            .expect("unseal");
        assert_eq!(s.sealed, i < 2);
    }
    let r = call(
        &core,
        &init.root_token,
        Operation::Update,
        "sys/mounts/app",
        json!({"type": "test"}),
    )
    .await
    .expect("mount");
    assert_eq!(r.status, 204);
    call(
        &core,
        &init.root_token,
        Operation::Update,
        "app/x",
        json!({"v": "1"}),
    )
    .await
    .expect("write");
    call(
        &core,
        &init.root_token,
        Operation::Update,
        "sys/seal",
        json!({}),
    )
    .await
    .expect("seal");
    assert!(core.seal_status().await.expect("s").sealed);

    // A new process on the same storage comes up sealed, and keeps everything.
    let core2 = Core::new(config(storage)).await.expect("core2");
    assert!(core2.seal_status().await.expect("s").sealed);
    for k in init.keys_base64.iter().skip(2) {
        core2
            .unseal(UnsealRequest {
                key: Some(k.clone()),
                ..Default::default()
            })
            .await
            .expect("unseal");
    }
    let r = call(
        &core2,
        &init.root_token,
        Operation::Read,
        "app/x",
        json!({}),
    )
    .await
    .expect("read");
    assert_eq!(data(&r)["v"], "1");
}

#[tokio::test]
async fn tokens_policies_and_children() {
    let (core, root) = dev().await;
    call(
        &core,
        &root,
        Operation::Update,
        "sys/mounts/app",
        json!({"type": "test"}),
    )
    .await
    .expect("mount");
    call(&core, &root, Operation::Update, "app/a", json!({"v": "1"}))
        .await
        .expect("write");
    call(
        &core,
        &root,
        Operation::Update,
        "sys/policies/acl/reader",
        json!({"policy": "path \"app/*\" { capabilities = [\"read\"] }"}),
    )
    .await
    .expect("policy");
    let r = call(
        &core,
        &root,
        Operation::Update,
        "auth/token/create",
        json!({"policies": ["reader"], "ttl": "1h"}),
    )
    .await
    .expect("create");
    let reader = auth_token(&r);
    assert!(reader.starts_with("hvs."));
    // Allowed read, denied write, useless token denied.
    let r = call(&core, &reader, Operation::Read, "app/a", json!({}))
        .await
        .expect("read");
    assert_eq!(data(&r)["v"], "1");
    assert!(matches!(
        call(
            &core,
            &reader,
            Operation::Update,
            "app/a",
            json!({"v": "2"})
        )
        .await,
        Err(CoreError::PermissionDenied)
    ));
    assert!(matches!(
        call(&core, "hvs.nope", Operation::Read, "app/a", json!({})).await,
        Err(CoreError::PermissionDenied)
    ));
    // Children cannot escalate.
    assert!(matches!(
        call(
            &core,
            &reader,
            Operation::Update,
            "auth/token/create",
            json!({"policies": ["root"]})
        )
        .await,
        Err(CoreError::PermissionDenied) | Err(CoreError::BadRequest(_))
    ));
    // lookup-self answers the token's own view, lookup-accessor never the id.
    let r = call(
        &core,
        &reader,
        Operation::Read,
        "auth/token/lookup-self",
        json!({}),
    )
    .await
    .expect("lookup");
    let d = data(&r);
    assert_eq!(d["policies"], json!(["default", "reader"]));
    assert!(d["ttl"].as_u64().expect("ttl") > 3500);
    let acc = d["accessor"].as_str().expect("accessor").to_string();
    let r = call(
        &core,
        &root,
        Operation::Update,
        "auth/token/lookup-accessor",
        json!({"accessor": acc}),
    )
    .await
    .expect("acc");
    assert_eq!(data(&r)["id"], "");
    // Revoking a parent revokes its children.
    call(
        &core,
        &root,
        Operation::Update,
        "sys/policies/acl/creator",
        json!({"policy": "path \"auth/token/create\" { capabilities = [\"update\"] }"}),
    )
    .await
    .expect("policy");
    let r = call(
        &core,
        &root,
        Operation::Update,
        "auth/token/create",
        json!({"policies": ["reader", "creator"]}),
    )
    .await
    .expect("parent");
    let parent = auth_token(&r);
    let r = call(
        &core,
        &parent,
        Operation::Update,
        "auth/token/create",
        json!({}),
    )
    .await
    .expect("child");
    let child = auth_token(&r);
    call(
        &core,
        &child,
        Operation::Read,
        "auth/token/lookup-self",
        json!({}),
    )
    .await
    .expect("child works");
    call(
        &core,
        &root,
        Operation::Update,
        "auth/token/revoke",
        json!({"token": parent}),
    )
    .await
    .expect("revoke");
    assert!(matches!(
        call(
            &core,
            &child,
            Operation::Read,
            "auth/token/lookup-self",
            json!({})
        )
        .await,
        Err(CoreError::PermissionDenied)
    ));
    // Capabilities.
    let r = call(
        &core,
        &reader,
        Operation::Update,
        "sys/capabilities-self",
        json!({"paths": ["app/a"]}),
    )
    .await
    .expect("caps");
    assert_eq!(data(&r)["capabilities"], json!(["read"]));
    // Use-limited token dies after its uses.
    let r = call(
        &core,
        &root,
        Operation::Update,
        "auth/token/create",
        json!({"policies": ["reader"], "num_uses": 2}),
    )
    .await
    .expect("limited");
    let limited = auth_token(&r);
    call(&core, &limited, Operation::Read, "app/a", json!({}))
        .await
        .expect("use 1");
    call(&core, &limited, Operation::Read, "app/a", json!({}))
        .await
        .expect("use 2");
    assert!(matches!(
        call(&core, &limited, Operation::Read, "app/a", json!({})).await,
        Err(CoreError::PermissionDenied)
    ));
}

#[tokio::test]
async fn root_policy_cannot_be_spelled_differently() {
    let (core, root) = dev().await;
    for name in ["root", "ROOT", " Root "] {
        let r = call(
            &core,
            &root,
            Operation::Update,
            &format!("sys/policies/acl/{name}"),
            json!({"policy": "path \"*\" { capabilities = [\"sudo\"] }"}),
        )
        .await;
        assert!(r.is_err(), "{name} must not be writable");
    }
    assert!(matches!(
        call(
            &core,
            &root,
            Operation::Delete,
            "sys/policies/acl/default",
            json!({})
        )
        .await,
        Err(CoreError::BadRequest(_))
    ));
}

#[tokio::test]
async fn mounts_list_tune_remount_unmount() {
    let (core, root) = dev().await;
    call(
        &core,
        &root,
        Operation::Update,
        "sys/mounts/app",
        json!({"type": "test", "description": "d", "config": {"default_lease_ttl": "1h"}}),
    )
    .await
    .expect("mount");
    let r = call(&core, &root, Operation::Read, "sys/mounts", json!({}))
        .await
        .expect("list");
    let d = data(&r);
    assert_eq!(d["app/"]["type"], "test");
    assert_eq!(d["app/"]["config"]["default_lease_ttl"], 3600);
    assert!(d["sys/"].is_object() && d["cubbyhole/"].is_object() && d["secret/"].is_object());
    assert!(call(
        &core,
        &root,
        Operation::Update,
        "sys/mounts/app/sub",
        json!({"type": "test"})
    )
    .await
    .is_err());
    call(
        &core,
        &root,
        Operation::Update,
        "sys/mounts/app/tune",
        json!({"max_lease_ttl": "2h"}),
    )
    .await
    .expect("tune");
    let r = call(
        &core,
        &root,
        Operation::Read,
        "sys/mounts/app/tune",
        json!({}),
    )
    .await
    .expect("tune read");
    assert_eq!(data(&r)["max_lease_ttl"], 7200);
    call(&core, &root, Operation::Update, "app/k", json!({"v": "1"}))
        .await
        .expect("write");
    call(
        &core,
        &root,
        Operation::Update,
        "sys/remount",
        json!({"from": "app", "to": "moved"}),
    )
    .await
    .expect("remount");
    let r = call(&core, &root, Operation::Read, "moved/k", json!({}))
        .await
        .expect("moved read");
    assert_eq!(data(&r)["v"], "1");
    call(
        &core,
        &root,
        Operation::Delete,
        "sys/mounts/moved",
        json!({}),
    )
    .await
    .expect("unmount");
    assert!(call(&core, &root, Operation::Read, "moved/k", json!({}))
        .await
        .is_err());
    // A fresh mount at the same path sees nothing of the old data.
    call(
        &core,
        &root,
        Operation::Update,
        "sys/mounts/moved",
        json!({"type": "test"}),
    )
    .await
    .expect("mount again");
    assert!(matches!(
        call(&core, &root, Operation::Read, "moved/k", json!({})).await,
        Err(CoreError::NotFound)
    ));
    // Built-ins stay.
    assert!(
        call(&core, &root, Operation::Delete, "sys/mounts/sys", json!({}))
            .await
            .is_err()
    );
    assert!(call(
        &core,
        &root,
        Operation::Delete,
        "sys/mounts/cubbyhole",
        json!({})
    )
    .await
    .is_err());
    let r = call(&core, &root, Operation::Read, "sys/auth", json!({}))
        .await
        .expect("auth list");
    assert_eq!(data(&r)["token/"]["type"], "token");
    let r = call(
        &core,
        &root,
        Operation::Read,
        "sys/internal/ui/mounts/secret/data/x",
        json!({}),
    )
    .await
    .expect("ui mounts");
    assert_eq!(data(&r)["options"]["version"], "2");
}

#[tokio::test]
async fn leases_are_registered_renewed_and_revoked() {
    let (core, root) = dev().await;
    call(
        &core,
        &root,
        Operation::Update,
        "sys/mounts/db",
        json!({"type": "test"}),
    )
    .await
    .expect("mount");
    let r = call(&core, &root, Operation::Read, "db/lease", json!({}))
        .await
        .expect("lease");
    let ResponseBody::Envelope(env) = &r.body else {
        panic!("envelope")
    };
    assert!(env.lease_id.starts_with("db/lease/"));
    assert_eq!(env.lease_duration, 600);
    let id = env.lease_id.clone();
    let r = call(
        &core,
        &root,
        Operation::Update,
        "sys/leases/lookup",
        json!({"lease_id": id}),
    )
    .await
    .expect("lookup");
    assert_eq!(data(&r)["id"], id.as_str());
    call(
        &core,
        &root,
        Operation::Update,
        "sys/leases/renew",
        json!({"lease_id": id, "increment": 300}),
    )
    .await
    .expect("renew");
    call(
        &core,
        &root,
        Operation::Update,
        "sys/leases/revoke",
        json!({"lease_id": id}),
    )
    .await
    .expect("revoke");
    let r = call(&core, &root, Operation::Read, "db/revoked/u1", json!({})).await;
    assert!(r.is_ok(), "the backend's revoke callback ran");
    assert!(call(
        &core,
        &root,
        Operation::Update,
        "sys/leases/lookup",
        json!({"lease_id": id})
    )
    .await
    .is_err());
}

#[tokio::test]
async fn rekey_and_generate_root() {
    let storage: Arc<dyn tresor_storage::Storage> = Arc::new(MemoryStorage::new());
    let core = Core::new(config(storage)).await.expect("core");
    let init = core
        .init(InitRequest {
            secret_shares: 3,
            secret_threshold: 2,
            ..Default::default()
        })
        .await
        .expect("init");
    for k in init.keys.iter().take(2) {
        core.unseal(UnsealRequest {
            key: Some(k.clone()),
            ..Default::default()
        })
        .await
        .expect("unseal");
    }
    let st = core.generate_root_init().await.expect("gr init");
    let otp = st.otp.clone();
    let mut last = st;
    for k in init.keys.iter().take(2) {
        last = core
            .generate_root_update(k, &last.nonce)
            .await
            .expect("gr update");
    }
    assert!(last.complete);
    let token = tresor_core::seal::decode_root_token(&last.encoded_token, &otp).expect("decode");
    let r = call(
        &core,
        &token,
        Operation::Read,
        "auth/token/lookup-self",
        json!({}),
    )
    .await
    .expect("new root works");
    assert_eq!(data(&r)["policies"], json!(["root"]));

    let st = core.rekey_init(4, 3).await.expect("rekey init");
    let mut last = st;
    for k in init.keys.iter().take(2) {
        last = core
            .rekey_update(k, &last.nonce)
            .await
            .expect("rekey update");
    }
    let new_keys = last.keys.expect("new keys");
    assert_eq!(new_keys.len(), 4);
    call(
        &core,
        &init.root_token,
        Operation::Update,
        "sys/seal",
        json!({}),
    )
    .await
    .expect("seal");
    // The old shares no longer make the root key (the new threshold is 3).
    let mut old = Vec::new();
    for k in &init.keys {
        old.push(
            core.unseal(UnsealRequest {
                key: Some(k.clone()),
                ..Default::default()
            })
            .await,
        );
    }
    assert!(old.iter().any(|r| r.is_err()), "old shares must not unseal");
    core.unseal(UnsealRequest {
        reset: true,
        ..Default::default()
    })
    .await
    .expect("reset");
    for k in new_keys.iter().take(3) {
        core.unseal(UnsealRequest {
            key: Some(k.clone()),
            ..Default::default()
        })
        .await
        .expect("unseal new");
    }
    assert!(!core.seal_status().await.expect("s").sealed);
}

#[tokio::test]
async fn response_wrapping_works_once() {
    let (core, root) = dev().await;
    call(
        &core,
        &root,
        Operation::Update,
        "sys/mounts/app",
        json!({"type": "test"}),
    )
    .await
    .expect("mount");
    call(
        &core,
        &root,
        Operation::Update,
        "app/s",
        json!({"password": "wrapped-secret"}),
    )
    .await
    .expect("write");
    let mut r = CoreRequest::new(Operation::Read, "app/s");
    r.token = Some(root.clone());
    r.wrap_ttl = Some(Duration::from_secs(60));
    let resp = core.handle(r).await.expect("wrapped read");
    let ResponseBody::Envelope(env) = &resp.body else {
        panic!("envelope")
    };
    assert!(env.data.is_none(), "the secret is not in a wrapped answer");
    let info = env.wrap_info.clone().expect("wrap_info");
    assert_eq!(info.ttl, 60);
    assert_eq!(info.creation_path, "app/s");
    assert!(!serde_json::to_string(&**env)
        .expect("json")
        .contains("wrapped-secret"));

    // Lookup needs no token.
    let mut l = CoreRequest::new(Operation::Update, "sys/wrapping/lookup");
    l.data = json!({"token": info.token})
        .as_object()
        .cloned()
        .expect("map");
    let r = core.handle(l).await.expect("lookup");
    assert_eq!(data(&r)["creation_path"], "app/s");
    // The wrapping token can do nothing else.
    assert!(matches!(
        call(&core, &info.token, Operation::Read, "app/s", json!({})).await,
        Err(CoreError::PermissionDenied)
    ));
    // Unwrap once with the wrapping token itself...
    let r = call(
        &core,
        &info.token,
        Operation::Update,
        "sys/wrapping/unwrap",
        json!({}),
    )
    .await
    .expect("unwrap");
    assert_eq!(data(&r)["password"], "wrapped-secret");
    // ...never twice.
    assert!(call(
        &core,
        &info.token,
        Operation::Update,
        "sys/wrapping/unwrap",
        json!({})
    )
    .await
    .is_err());
    assert!(call(
        &core,
        &root,
        Operation::Update,
        "sys/wrapping/unwrap",
        json!({"token": info.token})
    )
    .await
    .is_err());

    // sys/wrapping/wrap + unwrap by another token (the body names the wrapping token).
    let mut w = CoreRequest::new(Operation::Update, "sys/wrapping/wrap");
    w.token = Some(root.clone());
    w.wrap_ttl = Some(Duration::from_secs(120));
    w.data = json!({"k": "v"}).as_object().cloned().expect("map");
    let resp = core.handle(w).await.expect("wrap");
    let ResponseBody::Envelope(env) = &resp.body else {
        panic!("envelope")
    };
    let tok = env.wrap_info.clone().expect("wrap_info").token;
    let r = call(
        &core,
        &root,
        Operation::Update,
        "sys/wrapping/unwrap",
        json!({"token": tok}),
    )
    .await
    .expect("unwrap");
    assert_eq!(data(&r)["k"], "v");
}

#[tokio::test]
async fn rate_limit_quota_answers_429_per_client() {
    let (core, root) = dev().await;
    call(
        &core,
        &root,
        Operation::Update,
        "sys/quotas/rate-limit/tight",
        json!({"path": "sys/mounts", "rate": 2}),
    )
    .await
    .expect("quota");
    let r = call(
        &core,
        &root,
        Operation::Read,
        "sys/quotas/rate-limit/tight",
        json!({}),
    )
    .await
    .expect("read");
    assert_eq!(data(&r)["type"], "rate-limit");
    let from = |ip: &str| {
        let mut r = CoreRequest::new(Operation::Read, "sys/mounts");
        r.token = Some(root.clone());
        r.remote_addr = Some(ip.parse().expect("ip"));
        r
    };
    core.handle(from("192.0.2.1")).await.expect("1");
    core.handle(from("192.0.2.1")).await.expect("2");
    assert!(matches!(
        core.handle(from("192.0.2.1")).await,
        Err(CoreError::TooManyRequests(_))
    ));
    core.handle(from("192.0.2.2"))
        .await
        .expect("another client has its own bucket");
    call(
        &core,
        &root,
        Operation::Delete,
        "sys/quotas/rate-limit/tight",
        json!({}),
    )
    .await
    .expect("delete");
    core.handle(from("192.0.2.1")).await.expect("quota removed");
}

/// Fails writes under `sys/token/` while armed: init then breaks after the
/// keyring and seal config exist.
struct FailTokenWrites {
    inner: MemoryStorage,
    armed: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl tresor_storage::Storage for FailTokenWrites {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, tresor_storage::Error> {
        self.inner.get(key).await
    }
    async fn put(&self, entry: tresor_storage::Entry) -> Result<(), tresor_storage::Error> {
        if self.armed.load(std::sync::atomic::Ordering::SeqCst)
            && entry.key.starts_with("sys/token/")
        {
            return Err(tresor_storage::Error::Io("disk full".into()));
        }
        self.inner.put(entry).await
    }
    async fn delete(&self, key: &str) -> Result<(), tresor_storage::Error> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, tresor_storage::Error> {
        self.inner.list(prefix).await
    }
    async fn batch(&self, ops: Vec<tresor_storage::Op>) -> Result<(), tresor_storage::Error> {
        if self.armed.load(std::sync::atomic::Ordering::SeqCst)
            && ops.iter().any(|o| o.key().starts_with("sys/token/"))
        {
            return Err(tresor_storage::Error::Io("disk full".into()));
        }
        self.inner.batch(ops).await
    }
    fn kind(&self) -> &'static str {
        "flaky"
    }
}

#[tokio::test]
async fn failed_init_leaves_the_server_uninitialized() {
    let storage = Arc::new(FailTokenWrites {
        inner: MemoryStorage::new(),
        armed: std::sync::atomic::AtomicBool::new(true),
    });
    let core = Core::new(config(storage.clone())).await.expect("core");
    let req = || InitRequest {
        secret_shares: 3,
        secret_threshold: 2,
        ..Default::default()
    };
    assert!(core.init(req()).await.is_err());
    // The shares never reached anyone: nothing they alone could open remains.
    assert!(!core.init_status().await.expect("status"));
    assert!(storage.inner.is_empty());
    storage
        .armed
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let init = core.init(req()).await.expect("init after the failure");
    for k in init.keys.iter().take(2) {
        core.unseal(UnsealRequest {
            key: Some(k.clone()),
            ..Default::default()
        })
        .await
        .expect("unseal");
    }
    call(
        &core,
        &init.root_token,
        Operation::Read,
        "sys/mounts",
        json!({}),
    )
    .await
    .expect("root works");
}
