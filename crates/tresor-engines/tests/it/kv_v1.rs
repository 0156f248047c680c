#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use tresor_engines::secrets::kv::KvV1;
use tresor_sdk::testing::{req, MemoryStorage};
use tresor_sdk::{Backend, BackendError, Operation, Response};

fn data(r: Option<Response>) -> Value {
    r.and_then(|r| r.data)
        .map(Value::Object)
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn read_write_delete() {
    let (b, s) = (KvV1::new(), MemoryStorage::new());
    assert!(b
        .handle(&req(Operation::Read, "app/db"), &s)
        .await
        .unwrap()
        .is_none());

    let secret = json!({"user": "u", "pass": "p", "port": 5432, "nested": {"a": [1, 2]}});
    let w = b
        .handle(&req(Operation::Create, "app/db").body(secret.clone()), &s)
        .await
        .unwrap();
    assert!(w.is_none());
    assert_eq!(
        data(b.handle(&req(Operation::Read, "app/db"), &s).await.unwrap()),
        secret
    );

    // A write replaces the whole object.
    b.handle(
        &req(Operation::Update, "app/db").body(json!({"only": "this"})),
        &s,
    )
    .await
    .unwrap();
    assert_eq!(
        data(b.handle(&req(Operation::Read, "app/db"), &s).await.unwrap()),
        json!({"only": "this"})
    );

    assert!(b
        .handle(&req(Operation::Delete, "app/db"), &s)
        .await
        .unwrap()
        .is_none());
    assert!(b
        .handle(&req(Operation::Read, "app/db"), &s)
        .await
        .unwrap()
        .is_none());
    // Deleting what is not there is not an error.
    assert!(b
        .handle(&req(Operation::Delete, "app/db"), &s)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn list_with_folders() {
    let (b, s) = (KvV1::new(), MemoryStorage::new());
    for p in ["a", "b/c", "b/d/e", "z"] {
        b.handle(&req(Operation::Update, p).body(json!({"v": 1})), &s)
            .await
            .unwrap();
    }
    let keys = |r: Option<Response>| data(r)["keys"].clone();
    assert_eq!(
        keys(b.handle(&req(Operation::List, ""), &s).await.unwrap()),
        json!(["a", "b/", "z"])
    );
    assert_eq!(
        keys(b.handle(&req(Operation::List, "b/"), &s).await.unwrap()),
        json!(["c", "d/"])
    );
    assert_eq!(
        keys(b.handle(&req(Operation::List, "b"), &s).await.unwrap()),
        json!(["c", "d/"])
    );
    assert!(b
        .handle(&req(Operation::List, "none/"), &s)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn bad_input() {
    let (b, s) = (KvV1::new(), MemoryStorage::new());
    let bad = |r: Result<Option<Response>, BackendError>| match r {
        Err(BackendError::BadRequest(m)) => m,
        other => panic!("expected BadRequest, got {other:?}"),
    };
    assert_eq!(
        bad(b
            .handle(&req(Operation::Update, "x").body(json!({})), &s)
            .await),
        "missing data fields"
    );
    let m = bad(b
        .handle(&req(Operation::Update, "x/").body(json!({"a": 1})), &s)
        .await);
    assert!(m.contains("end with '/'"), "{m}");
    let m = bad(b
        .handle(&req(Operation::Update, "a/../b").body(json!({"a": 1})), &s)
        .await);
    assert!(m.contains("'..'"), "{m}");
    let m = bad(b.handle(&req(Operation::Read, ""), &s).await);
    assert!(m.contains("missing secret path"), "{m}");
    assert!(matches!(
        b.handle(&req(Operation::Patch, "x"), &s).await,
        Err(BackendError::UnsupportedOperation)
    ));
    assert!(s.is_empty());
}

#[tokio::test]
async fn existence_check() {
    let (b, s) = (KvV1::new(), MemoryStorage::new());
    let r = req(Operation::Update, "e");
    assert_eq!(b.existence_check(&r, &s).await.unwrap(), Some(false));
    b.handle(&req(Operation::Update, "e").body(json!({"a": 1})), &s)
        .await
        .unwrap();
    assert_eq!(b.existence_check(&r, &s).await.unwrap(), Some(true));
}
