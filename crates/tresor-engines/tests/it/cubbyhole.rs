#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use tresor_engines::secrets::cubbyhole::Cubbyhole;
use tresor_sdk::testing::{req, MemoryStorage};
use tresor_sdk::{Backend, BackendError, Operation, Request, Response, StorageExt};

fn as_token(mut r: Request, token: &str) -> Request {
    r.client_token_id = Some(token.to_string());
    r
}

fn data(r: Option<Response>) -> Value {
    r.and_then(|r| r.data)
        .map(Value::Object)
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn tokens_are_isolated() {
    let (b, s) = (Cubbyhole::new(), MemoryStorage::new());
    let alice = |r| as_token(r, "alice-id");
    let bob = |r| as_token(r, "bob-id");

    b.handle(
        &alice(req(Operation::Update, "note").body(json!({"v": "a"}))),
        &s,
    )
    .await
    .unwrap();
    b.handle(
        &alice(req(Operation::Update, "dir/x").body(json!({"v": "ax"}))),
        &s,
    )
    .await
    .unwrap();
    b.handle(
        &bob(req(Operation::Update, "note").body(json!({"v": "b"}))),
        &s,
    )
    .await
    .unwrap();

    assert_eq!(
        data(
            b.handle(&alice(req(Operation::Read, "note")), &s)
                .await
                .unwrap()
        ),
        json!({"v": "a"})
    );
    assert_eq!(
        data(
            b.handle(&bob(req(Operation::Read, "note")), &s)
                .await
                .unwrap()
        ),
        json!({"v": "b"})
    );
    // Bob sees nothing of Alice's folder, in reads or lists.
    assert!(b
        .handle(&bob(req(Operation::Read, "dir/x")), &s)
        .await
        .unwrap()
        .is_none());
    assert!(b
        .handle(&bob(req(Operation::List, "dir/")), &s)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        data(
            b.handle(&alice(req(Operation::List, "")), &s)
                .await
                .unwrap()
        )["keys"],
        json!(["dir/", "note"])
    );
    assert_eq!(
        data(b.handle(&bob(req(Operation::List, "")), &s).await.unwrap())["keys"],
        json!(["note"])
    );
    // A path cannot climb into another token's space.
    assert!(matches!(
        b.handle(&bob(req(Operation::Read, "../alice-id/note")), &s)
            .await,
        Err(BackendError::BadRequest(_))
    ));

    // Bob's delete touches only his own entry.
    b.handle(&bob(req(Operation::Delete, "note")), &s)
        .await
        .unwrap();
    assert!(b
        .handle(&bob(req(Operation::Read, "note")), &s)
        .await
        .unwrap()
        .is_none());
    assert!(b
        .handle(&alice(req(Operation::Read, "note")), &s)
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn layout_is_token_prefix_slash_path() {
    // The core revokes a token's cubbyhole by deleting `{client_token_id}/`.
    let (b, s) = (Cubbyhole::new(), MemoryStorage::new());
    b.handle(
        &as_token(req(Operation::Update, "a/b").body(json!({"k": 1})), "tok"),
        &s,
    )
    .await
    .unwrap();
    assert_eq!(s.keys(), vec!["tok/a/b".to_string()]);
    assert_eq!(
        s.list_recursive("tok/").await.unwrap(),
        vec!["tok/a/b".to_string()]
    );
}

#[tokio::test]
async fn no_token_is_denied() {
    let (b, s) = (Cubbyhole::new(), MemoryStorage::new());
    for op in [
        Operation::Read,
        Operation::Update,
        Operation::Delete,
        Operation::List,
    ] {
        let mut r = req(op, "x").body(json!({"a": 1}));
        r.client_token_id = None;
        assert!(
            matches!(b.handle(&r, &s).await, Err(BackendError::PermissionDenied)),
            "{op:?}"
        );
    }
    let mut r = req(Operation::Update, "x");
    r.client_token_id = Some(String::new());
    assert!(matches!(
        b.existence_check(&r, &s).await,
        Err(BackendError::PermissionDenied)
    ));
    assert!(s.is_empty());
}

#[tokio::test]
async fn bad_input_and_existence() {
    let (b, s) = (Cubbyhole::new(), MemoryStorage::new());
    match b
        .handle(&req(Operation::Update, "x").body(json!({})), &s)
        .await
    {
        Err(BackendError::BadRequest(m)) => assert_eq!(m, "missing data fields"),
        other => panic!("{other:?}"),
    }
    match b
        .handle(&req(Operation::Update, "x/").body(json!({"a": 1})), &s)
        .await
    {
        Err(BackendError::BadRequest(m)) => assert!(m.contains("end with '/'"), "{m}"),
        other => panic!("{other:?}"),
    }
    let r = req(Operation::Update, "x");
    assert_eq!(b.existence_check(&r, &s).await.unwrap(), Some(false));
    b.handle(&req(Operation::Update, "x").body(json!({"a": 1})), &s)
        .await
        .unwrap();
    assert_eq!(b.existence_check(&r, &s).await.unwrap(), Some(true));
}
