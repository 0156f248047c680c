#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tresor_engines::secrets::kv::KvV2;
use tresor_sdk::backend::StaticSystemView;
use tresor_sdk::testing::{req, MemoryStorage};
use tresor_sdk::{Backend, BackendConfig, BackendError, Operation, Request, Response};

struct Kv {
    b: Arc<dyn Backend>,
    s: Arc<MemoryStorage>,
}

impl Kv {
    fn new() -> Self {
        Kv {
            b: Arc::new(KvV2::new()),
            s: Arc::new(MemoryStorage::new()),
        }
    }

    async fn call(&self, r: Request) -> Result<Option<Response>, BackendError> {
        self.b.handle(&r, self.s.as_ref()).await
    }

    async fn ok(&self, r: Request) -> Option<Response> {
        let what = format!("{:?} {}", r.operation, r.path);
        self.call(r).await.unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// The response data as JSON (null when there is none).
    async fn data(&self, r: Request) -> Value {
        match self.ok(r).await {
            Some(Response { data: Some(m), .. }) => Value::Object(m),
            _ => Value::Null,
        }
    }

    async fn put(&self, path: &str, data: Value) -> Value {
        self.data(req(Operation::Update, &format!("data/{path}")).body(json!({ "data": data })))
            .await
    }

    async fn get(&self, path: &str) -> Option<Response> {
        self.ok(req(Operation::Read, &format!("data/{path}"))).await
    }

    async fn get_version(&self, path: &str, v: u64) -> Option<Response> {
        self.ok(
            req(Operation::Read, &format!("data/{path}")).body(json!({"version": v.to_string()}))
        )
        .await
    }

    async fn meta(&self, path: &str) -> Value {
        self.data(req(Operation::Read, &format!("metadata/{path}")))
            .await
    }
}

fn bad_request(r: Result<Option<Response>, BackendError>) -> String {
    match r {
        Err(BackendError::BadRequest(m)) => m,
        other => panic!("expected BadRequest, got {other:?}"),
    }
}

fn precondition(r: Result<Option<Response>, BackendError>) -> String {
    match r {
        Err(BackendError::PreconditionFailed(m)) => m,
        other => panic!("expected PreconditionFailed, got {other:?}"),
    }
}

fn status(r: &Option<Response>) -> Option<u16> {
    r.as_ref().and_then(|r| r.status)
}

fn json_of(r: &Option<Response>) -> Value {
    r.as_ref()
        .and_then(|r| r.data.clone())
        .map(Value::Object)
        .unwrap_or(Value::Null)
}

fn is_rfc3339(s: &Value) -> bool {
    s.as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok() && s.ends_with('Z'))
}

#[tokio::test]
async fn config_defaults_and_update() {
    let kv = Kv::new();
    assert_eq!(
        kv.data(req(Operation::Read, "config")).await,
        json!({"cas_required": false, "delete_version_after": "0s", "max_versions": 0})
    );
    kv.ok(req(Operation::Update, "config").body(
        json!({"max_versions": "5", "cas_required": true, "delete_version_after": "3h25m19s"}),
    ))
    .await;
    assert_eq!(
        kv.data(req(Operation::Read, "config")).await,
        json!({"cas_required": true, "delete_version_after": "3h25m19s", "max_versions": 5})
    );
    // A partial write keeps the other settings.
    kv.ok(req(Operation::Update, "config").body(json!({"cas_required": false})))
        .await;
    assert_eq!(
        kv.data(req(Operation::Read, "config")).await["max_versions"],
        5
    );
    let msg = bad_request(
        kv.call(req(Operation::Update, "config").body(json!({"max_versions": "lots"})))
            .await,
    );
    assert!(msg.contains("max_versions"), "{msg}");
}

#[tokio::test]
async fn write_then_read_with_metadata() {
    let kv = Kv::new();
    let w = kv.put("app/db", json!({"user": "u", "pass": "p"})).await;
    assert_eq!(w["version"], 1);
    assert_eq!(w["destroyed"], false);
    assert_eq!(w["deletion_time"], "");
    assert_eq!(w["custom_metadata"], Value::Null);
    assert!(is_rfc3339(&w["created_time"]), "{w}");
    // Nanosecond precision, as Vault writes it.
    assert_eq!(
        w["created_time"]
            .as_str()
            .unwrap()
            .split('.')
            .nth(1)
            .unwrap()
            .len(),
        10
    );

    let r = kv.get("app/db").await;
    assert_eq!(status(&r), None);
    let body = json_of(&r);
    assert_eq!(body["data"], json!({"user": "u", "pass": "p"}));
    assert_eq!(body["metadata"]["version"], 1);
    assert_eq!(body["metadata"]["created_time"], w["created_time"]);
    assert_eq!(
        body["metadata"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec![
            "created_time",
            "custom_metadata",
            "deletion_time",
            "destroyed",
            "version"
        ]
    );

    kv.put("app/db", json!({"user": "u2"})).await;
    assert_eq!(
        json_of(&kv.get("app/db").await)["data"],
        json!({"user": "u2"})
    );
    assert_eq!(
        json_of(&kv.get_version("app/db", 1).await)["data"],
        json!({"user": "u", "pass": "p"})
    );
    // version=0 means latest.
    assert_eq!(
        json_of(&kv.get_version("app/db", 0).await)["metadata"]["version"],
        2
    );
    // Missing secret or version: plain not-found.
    assert!(kv.get("nope").await.is_none());
    assert!(kv.get_version("app/db", 9).await.is_none());
}

#[tokio::test]
async fn write_needs_data() {
    let kv = Kv::new();
    let msg = bad_request(
        kv.call(req(Operation::Update, "data/x").body(json!({})))
            .await,
    );
    assert_eq!(msg, "no data provided");
    let msg = bad_request(
        kv.call(req(Operation::Update, "data/x").body(json!({"data": "text"})))
            .await,
    );
    assert!(msg.contains("'data'"), "{msg}");
    let msg = bad_request(
        kv.call(
            req(Operation::Update, "data/x").body(json!({"data": {}, "options": {"cas": "x"}})),
        )
        .await,
    );
    assert!(msg.contains("cas"), "{msg}");
    let msg = bad_request(
        kv.call(req(Operation::Read, "data/x").body(json!({"version": "latest"})))
            .await,
    );
    assert!(msg.contains("version"), "{msg}");
    // An empty object is a valid secret.
    assert_eq!(kv.put("x", json!({})).await["version"], 1);
}

#[tokio::test]
async fn bad_paths_are_rejected() {
    let kv = Kv::new();
    for (path, needle) in [
        ("data/", "missing secret path"),
        ("data", "missing secret path"),
        ("data/a/", "end with '/'"),
        ("data/a/../b", "'..'"),
        ("data/a//b", "empty path segment"),
    ] {
        let msg = bad_request(
            kv.call(req(Operation::Update, path).body(json!({"data": {"a": 1}})))
                .await,
        );
        assert!(msg.contains(needle), "{path}: {msg}");
    }
    assert!(matches!(
        kv.call(req(Operation::Read, "nothing/here")).await,
        Err(BackendError::UnsupportedPath)
    ));
    assert!(matches!(
        kv.call(req(Operation::List, "data/")).await,
        Err(BackendError::UnsupportedOperation)
    ));
}

#[tokio::test]
async fn check_and_set() {
    let kv = Kv::new();
    let cas = |v: u64, data: Value| {
        req(Operation::Update, "data/c").body(json!({"data": data, "options": {"cas": v}}))
    };
    // cas=0: only if the secret does not exist yet.
    assert_eq!(json_of(&kv.ok(cas(0, json!({"a": 1}))).await)["version"], 1);
    let msg = precondition(kv.call(cas(0, json!({"a": 2}))).await);
    assert_eq!(
        msg,
        "check-and-set parameter did not match the current version"
    );
    let msg = precondition(kv.call(cas(5, json!({"a": 2}))).await);
    assert_eq!(
        msg,
        "check-and-set parameter did not match the current version"
    );
    assert_eq!(json_of(&kv.ok(cas(1, json!({"a": 2}))).await)["version"], 2);
    // Nothing was written by the refused attempts.
    assert_eq!(kv.meta("c").await["current_version"], 2);
}

#[tokio::test]
async fn cas_required_by_mount_and_by_secret() {
    let kv = Kv::new();
    kv.ok(req(Operation::Update, "config").body(json!({"cas_required": true})))
        .await;
    let msg = precondition(
        kv.call(req(Operation::Update, "data/m").body(json!({"data": {"a": 1}})))
            .await,
    );
    assert_eq!(msg, "check-and-set parameter required for this call");
    kv.ok(req(Operation::Update, "data/m").body(json!({"data": {"a": 1}, "options": {"cas": 0}})))
        .await;

    let kv = Kv::new();
    kv.ok(req(Operation::Update, "metadata/s").body(json!({"cas_required": "true"})))
        .await;
    let msg = precondition(
        kv.call(req(Operation::Update, "data/s").body(json!({"data": {"a": 1}})))
            .await,
    );
    assert_eq!(msg, "check-and-set parameter required for this call");
    // Other secrets are not affected.
    kv.put("other", json!({"a": 1})).await;
    // Patch honours it too.
    kv.ok(req(Operation::Update, "data/s").body(json!({"data": {"a": 1}, "options": {"cas": 0}})))
        .await;
    let msg = precondition(
        kv.call(req(Operation::Patch, "data/s").body(json!({"data": {"b": 2}})))
            .await,
    );
    assert_eq!(msg, "check-and-set parameter required for this call");
    let r = kv
        .ok(req(Operation::Patch, "data/s").body(json!({"data": {"b": 2}, "options": {"cas": 1}})))
        .await;
    assert_eq!(json_of(&r)["version"], 2);
}

#[tokio::test]
async fn max_versions_prunes_oldest() {
    let kv = Kv::new();
    kv.ok(req(Operation::Update, "config").body(json!({"max_versions": 3})))
        .await;
    for i in 1..=5 {
        kv.put("p", json!({"i": i})).await;
    }
    let m = kv.meta("p").await;
    assert_eq!(m["current_version"], 5);
    assert_eq!(m["oldest_version"], 3);
    let versions: Vec<_> = m["versions"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(versions, vec!["3", "4", "5"]);
    assert!(kv.get_version("p", 2).await.is_none());
    assert_eq!(
        json_of(&kv.get_version("p", 3).await)["data"],
        json!({"i": 3})
    );
    // Pruned data is really gone from storage: 3 versions + metadata + config.
    assert_eq!(kv.s.len(), 5);

    // The secret's own setting overrides the mount's.
    kv.ok(req(Operation::Update, "metadata/p").body(json!({"max_versions": 1})))
        .await;
    kv.put("p", json!({"i": 6})).await;
    let m = kv.meta("p").await;
    assert_eq!(m["oldest_version"], 6);
    assert_eq!(m["versions"].as_object().unwrap().len(), 1);
    assert_eq!(kv.s.len(), 3);
}

#[tokio::test]
async fn default_keeps_ten_versions() {
    let kv = Kv::new();
    for i in 1..=9 {
        kv.put("d", json!({"i": i})).await;
    }
    // Vault reports oldest_version 0 until something is pruned.
    assert_eq!(kv.meta("d").await["oldest_version"], 0);
    for i in 10..=12 {
        kv.put("d", json!({"i": i})).await;
    }
    let m = kv.meta("d").await;
    assert_eq!(m["versions"].as_object().unwrap().len(), 10);
    assert_eq!(m["oldest_version"], 3);
}

#[tokio::test]
async fn deleted_version_answers_404_with_metadata() {
    let kv = Kv::new();
    kv.put("s", json!({"a": 1})).await;
    kv.put("s", json!({"a": 2})).await;
    assert!(kv.ok(req(Operation::Delete, "data/s")).await.is_none());

    let r = kv.get("s").await;
    assert_eq!(status(&r), Some(404));
    let body = json_of(&r);
    assert_eq!(body["data"], Value::Null);
    assert_eq!(body["metadata"]["version"], 2);
    assert_eq!(body["metadata"]["destroyed"], false);
    assert!(is_rfc3339(&body["metadata"]["deletion_time"]), "{body}");
    // The older version is untouched.
    assert_eq!(
        json_of(&kv.get_version("s", 1).await)["data"],
        json!({"a": 1})
    );

    // Undelete brings it back.
    kv.ok(req(Operation::Update, "undelete/s").body(json!({"versions": [2]})))
        .await;
    let r = kv.get("s").await;
    assert_eq!(status(&r), None);
    assert_eq!(json_of(&r)["data"], json!({"a": 2}));
    assert_eq!(json_of(&r)["metadata"]["deletion_time"], "");
}

#[tokio::test]
async fn delete_undelete_destroy_versions() {
    let kv = Kv::new();
    for i in 1..=3 {
        kv.put("v", json!({"i": i})).await;
    }
    kv.ok(req(Operation::Update, "delete/v").body(json!({"versions": [1, 2]})))
        .await;
    assert_eq!(status(&kv.get_version("v", 1).await), Some(404));
    assert_eq!(status(&kv.get_version("v", 2).await), Some(404));
    assert_eq!(status(&kv.get_version("v", 3).await), None);

    // Versions as a comma-separated string, as some clients send them.
    kv.ok(req(Operation::Update, "undelete/v").body(json!({"versions": "1"})))
        .await;
    assert_eq!(
        json_of(&kv.get_version("v", 1).await)["data"],
        json!({"i": 1})
    );

    kv.ok(req(Operation::Update, "destroy/v").body(json!({"versions": [1, 3, 99]})))
        .await;
    let r = kv.get_version("v", 1).await;
    assert_eq!(status(&r), Some(404));
    assert_eq!(json_of(&r)["metadata"]["destroyed"], true);
    assert_eq!(json_of(&r)["data"], Value::Null);
    let m = kv.meta("v").await;
    assert_eq!(m["versions"]["1"]["destroyed"], true);
    assert_eq!(m["versions"]["3"]["destroyed"], true);
    assert_eq!(m["versions"]["2"]["destroyed"], false);

    // A destroyed version cannot be undeleted.
    kv.ok(req(Operation::Update, "undelete/v").body(json!({"versions": [3]})))
        .await;
    assert_eq!(status(&kv.get_version("v", 3).await), Some(404));
    // Only version 2's data remains, beside the metadata.
    let keys = kv.s.keys();
    assert_eq!(
        keys.iter().filter(|k| k.starts_with("versions/")).count(),
        1,
        "{keys:?}"
    );

    // Patch of a deleted latest version: nothing to patch.
    let r = kv
        .ok(req(Operation::Patch, "data/v").body(json!({"data": {"x": 1}})))
        .await;
    assert!(r.is_none(), "nothing to patch: the core answers 404");

    let msg = bad_request(
        kv.call(req(Operation::Update, "delete/v").body(json!({"versions": []})))
            .await,
    );
    assert_eq!(msg, "no version number provided");
    let msg = bad_request(
        kv.call(req(Operation::Update, "destroy/v").body(json!({"versions": ["one"]})))
            .await,
    );
    assert!(msg.contains("versions"), "{msg}");
}

#[tokio::test]
async fn patch_is_a_json_merge_patch() {
    let kv = Kv::new();
    let r = kv
        .ok(req(Operation::Patch, "data/nope").body(json!({"data": {"a": 1}})))
        .await;
    assert!(r.is_none(), "nothing to patch: the core answers 404");

    kv.put(
        "p",
        json!({"keep": "k", "drop": "d", "nested": {"x": 1, "y": 2}, "replace": [1, 2]}),
    )
    .await;
    let r = kv
        .ok(req(Operation::Patch, "data/p").body(json!({
            "data": {"drop": null, "nested": {"y": null, "z": 3}, "replace": "s", "new": true}
        })))
        .await;
    assert_eq!(json_of(&r)["version"], 2);
    assert_eq!(
        json_of(&kv.get("p").await)["data"],
        json!({"keep": "k", "nested": {"x": 1, "z": 3}, "replace": "s", "new": true})
    );
    let msg = bad_request(
        kv.call(req(Operation::Patch, "data/p").body(json!({})))
            .await,
    );
    assert_eq!(msg, "no data provided");
    let msg = precondition(
        kv.call(
            req(Operation::Patch, "data/p").body(json!({"data": {"a": 1}, "options": {"cas": 1}})),
        )
        .await,
    );
    assert_eq!(
        msg,
        "check-and-set parameter did not match the current version"
    );
}

#[tokio::test]
async fn metadata_read_write_patch_delete() {
    let kv = Kv::new();
    assert_eq!(kv.meta("m").await, Value::Null);
    kv.put("m", json!({"a": 1})).await;
    let m = kv.meta("m").await;
    let keys: Vec<_> = m.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        vec![
            "cas_required",
            "created_time",
            "current_version",
            "custom_metadata",
            "delete_version_after",
            "max_versions",
            "oldest_version",
            "updated_time",
            "versions"
        ]
    );
    assert_eq!(m["current_version"], 1);
    assert_eq!(m["delete_version_after"], "0s");
    assert_eq!(m["custom_metadata"], Value::Null);
    assert!(is_rfc3339(&m["versions"]["1"]["created_time"]));
    assert_eq!(m["versions"]["1"]["deletion_time"], "");

    kv.ok(req(Operation::Update, "metadata/m").body(json!({
        "max_versions": 7,
        "delete_version_after": "1h",
        "custom_metadata": {"owner": "ops", "tier": 1}
    })))
    .await;
    let m = kv.meta("m").await;
    assert_eq!(m["max_versions"], 7);
    assert_eq!(m["delete_version_after"], "1h0m0s");
    assert_eq!(m["custom_metadata"], json!({"owner": "ops", "tier": "1"}));
    // custom_metadata shows in data reads and writes.
    assert_eq!(
        json_of(&kv.get("m").await)["metadata"]["custom_metadata"],
        json!({"owner": "ops", "tier": "1"})
    );

    // PATCH merges: null removes, others set; other fields stay.
    kv.ok(req(Operation::Patch, "metadata/m").body(json!({
        "custom_metadata": {"tier": null, "team": "blue"}
    })))
    .await;
    let m = kv.meta("m").await;
    assert_eq!(
        m["custom_metadata"],
        json!({"owner": "ops", "team": "blue"})
    );
    assert_eq!(m["max_versions"], 7);

    // POST replaces custom_metadata wholesale.
    kv.ok(req(Operation::Update, "metadata/m").body(json!({"custom_metadata": {"only": "this"}})))
        .await;
    assert_eq!(
        kv.meta("m").await["custom_metadata"],
        json!({"only": "this"})
    );

    // PATCH of a missing secret is a 404.
    let r = kv
        .ok(req(Operation::Patch, "metadata/none").body(json!({"max_versions": 2})))
        .await;
    assert!(r.is_none(), "nothing to patch: the core answers 404");

    // Metadata may exist before any data.
    kv.ok(req(Operation::Update, "metadata/pre").body(json!({"max_versions": 2})))
        .await;
    assert_eq!(kv.meta("pre").await["current_version"], 0);
    assert!(kv.get("pre").await.is_none());

    // DELETE removes everything; numbering starts again.
    kv.put("m", json!({"a": 2})).await;
    kv.ok(req(Operation::Delete, "metadata/m")).await;
    assert_eq!(kv.meta("m").await, Value::Null);
    assert!(kv.get_version("m", 1).await.is_none());
    assert!(!kv.s.keys().iter().any(|k| k.starts_with("versions/")));
    assert_eq!(kv.put("m", json!({"a": 3})).await["version"], 1);
}

#[tokio::test]
async fn custom_metadata_limits() {
    let kv = Kv::new();
    let many: BTreeMap<String, String> = (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
    let msg = bad_request(
        kv.call(req(Operation::Update, "metadata/l").body(json!({"custom_metadata": many})))
            .await,
    );
    assert!(msg.contains("at most 64 keys"), "{msg}");

    let long_key = "k".repeat(129);
    let msg = bad_request(
        kv.call(
            req(Operation::Update, "metadata/l").body(json!({"custom_metadata": {long_key: "v"}})),
        )
        .await,
    );
    assert!(
        msg.contains("custom_metadata") && msg.contains("len(key) <= 128"),
        "{msg}"
    );

    let msg = bad_request(
        kv.call(
            req(Operation::Update, "metadata/l")
                .body(json!({"custom_metadata": {"k": "v".repeat(513)}})),
        )
        .await,
    );
    assert!(msg.contains("must be <= 512"), "{msg}");

    let msg = bad_request(
        kv.call(
            req(Operation::Update, "metadata/l").body(json!({"custom_metadata": {"k": {"x": 1}}})),
        )
        .await,
    );
    assert!(
        msg.contains("custom_metadata") && msg.contains("\"k\""),
        "{msg}"
    );
    let msg = bad_request(
        kv.call(req(Operation::Update, "metadata/l").body(json!({"custom_metadata": ["a"]})))
            .await,
    );
    assert!(msg.contains("custom_metadata"), "{msg}");

    // At the limits it is accepted.
    let ok: BTreeMap<String, String> = (0..64)
        .map(|i| (format!("{i:0>128}"), "v".repeat(512)))
        .collect();
    kv.ok(req(Operation::Update, "metadata/l").body(json!({"custom_metadata": ok})))
        .await;
    assert_eq!(
        kv.meta("l").await["custom_metadata"]
            .as_object()
            .unwrap()
            .len(),
        64
    );
    // A refused write leaves the metadata as it was.
    assert!(kv.s.keys().contains(&"metadata/l".to_string()));
}

#[tokio::test]
async fn metadata_list_with_folders() {
    let kv = Kv::new();
    for p in ["a", "b/c", "b/d/e", "b/d/f", "z"] {
        kv.put(p, json!({"v": p})).await;
    }
    let keys = |r: Value| r["keys"].clone();
    assert_eq!(
        keys(kv.data(req(Operation::List, "metadata/")).await),
        json!(["a", "b/", "z"])
    );
    assert_eq!(
        keys(kv.data(req(Operation::List, "metadata")).await),
        json!(["a", "b/", "z"])
    );
    assert_eq!(
        keys(kv.data(req(Operation::List, "metadata/b/")).await),
        json!(["c", "d/"])
    );
    assert_eq!(
        keys(kv.data(req(Operation::List, "metadata/b")).await),
        json!(["c", "d/"])
    );
    assert_eq!(
        keys(kv.data(req(Operation::List, "metadata/b/d")).await),
        json!(["e", "f"])
    );
    assert!(kv
        .ok(req(Operation::List, "metadata/nothing/"))
        .await
        .is_none());
    assert!(Kv::new()
        .ok(req(Operation::List, "metadata/"))
        .await
        .is_none());
}

#[tokio::test]
async fn subkeys_with_depth() {
    let kv = Kv::new();
    kv.put(
        "s",
        json!({"foo": "abc", "bar": {"baz": "def", "deep": {"x": 1}}, "quux": {}}),
    )
    .await;
    let r = kv.data(req(Operation::Read, "subkeys/s")).await;
    assert_eq!(
        r["subkeys"],
        json!({"foo": null, "bar": {"baz": null, "deep": {"x": null}}, "quux": {}})
    );
    assert_eq!(r["metadata"]["version"], 1);
    let r = kv
        .data(req(Operation::Read, "subkeys/s").body(json!({"depth": "1"})))
        .await;
    assert_eq!(
        r["subkeys"],
        json!({"foo": null, "bar": null, "quux": null})
    );
    let r = kv
        .data(req(Operation::Read, "subkeys/s").body(json!({"depth": "2"})))
        .await;
    assert_eq!(
        r["subkeys"],
        json!({"foo": null, "bar": {"baz": null, "deep": null}, "quux": {}})
    );

    kv.put("s", json!({"only": 1})).await;
    let r = kv
        .data(req(Operation::Read, "subkeys/s").body(json!({"version": "1", "depth": "1"})))
        .await;
    assert_eq!(
        r["subkeys"],
        json!({"foo": null, "bar": null, "quux": null})
    );

    kv.ok(req(Operation::Delete, "data/s")).await;
    let r = kv.ok(req(Operation::Read, "subkeys/s")).await;
    assert_eq!(status(&r), Some(404));
    assert_eq!(json_of(&r)["subkeys"], Value::Null);
    assert!(kv.ok(req(Operation::Read, "subkeys/none")).await.is_none());
}

#[tokio::test]
async fn delete_version_after_expires_versions() {
    let kv = Kv::new();
    kv.ok(req(Operation::Update, "metadata/t").body(json!({"delete_version_after": "1s"})))
        .await;
    let w = kv.put("t", json!({"a": 1})).await;
    // The scheduled deletion is visible at once, and the version still reads.
    assert!(is_rfc3339(&w["deletion_time"]), "{w}");
    let r = kv.get("t").await;
    assert_eq!(status(&r), None);
    assert_eq!(json_of(&r)["data"], json!({"a": 1}));

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = kv.get("t").await;
    assert_eq!(status(&r), Some(404));
    assert_eq!(json_of(&r)["metadata"]["deletion_time"], w["deletion_time"]);

    // The mount setting applies to secrets without their own, and the
    // smaller of the two wins.
    let kv = Kv::new();
    kv.ok(req(Operation::Update, "config").body(json!({"delete_version_after": "1s"})))
        .await;
    kv.ok(req(Operation::Update, "metadata/long").body(json!({"delete_version_after": "1h"})))
        .await;
    kv.put("long", json!({"a": 1})).await;
    kv.put("plain", json!({"a": 1})).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(status(&kv.get("long").await), Some(404));
    assert_eq!(status(&kv.get("plain").await), Some(404));
}

#[tokio::test]
async fn concurrent_writers_get_distinct_versions() {
    let kv = Arc::new(Kv::new());
    kv.ok(req(Operation::Update, "config").body(json!({"max_versions": 50})))
        .await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            kv.put("race", json!({"writer": i})).await["version"]
                .as_u64()
                .unwrap()
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=20).collect::<Vec<u64>>());
    let m = kv.meta("race").await;
    assert_eq!(m["current_version"], 20);
    assert_eq!(m["versions"].as_object().unwrap().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_threads_get_distinct_versions() {
    let kv = Arc::new(Kv::new());
    let mut tasks = Vec::new();
    for i in 0..20 {
        let kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            kv.put("race", json!({"writer": i})).await["version"]
                .as_u64()
                .unwrap()
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=20).collect::<Vec<u64>>());
}

#[tokio::test]
async fn existence_check_distinguishes_create_and_update() {
    let kv = Kv::new();
    let check = |p: &str| req(Operation::Update, p);
    assert_eq!(
        kv.b.existence_check(&check("data/e"), kv.s.as_ref())
            .await
            .unwrap(),
        Some(false)
    );
    assert_eq!(
        kv.b.existence_check(&check("metadata/e"), kv.s.as_ref())
            .await
            .unwrap(),
        Some(false)
    );
    kv.put("e", json!({"a": 1})).await;
    assert_eq!(
        kv.b.existence_check(&check("data/e"), kv.s.as_ref())
            .await
            .unwrap(),
        Some(true)
    );
    assert_eq!(
        kv.b.existence_check(&check("metadata/e"), kv.s.as_ref())
            .await
            .unwrap(),
        Some(true)
    );
    assert_eq!(
        kv.b.existence_check(&check("config"), kv.s.as_ref())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        kv.b.existence_check(&check("destroy/e"), kv.s.as_ref())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn writes_are_atomic_batches() {
    // Each version and its metadata land together: after any write, every
    // live version in the metadata has data, and no data is orphaned.
    let kv = Kv::new();
    kv.ok(req(Operation::Update, "config").body(json!({"max_versions": 2})))
        .await;
    for i in 0..5 {
        kv.put("b", json!({"i": i})).await;
        let m = kv.meta("b").await;
        let versions = m["versions"].as_object().unwrap().len();
        let data_keys =
            kv.s.keys()
                .iter()
                .filter(|k| k.starts_with("versions/"))
                .count();
        assert_eq!(versions, data_keys);
    }
}

#[tokio::test]
async fn registry_builds_the_right_versions() {
    let reg = tresor_engines::registry();
    for k in ["cubbyhole", "generic", "kv", "kv-v2"] {
        assert!(reg.contains_key(k), "{k} registered");
    }
    let conf = |opts: &[(&str, &str)]| BackendConfig {
        backend_type: "kv".into(),
        mount_point: "secret/".into(),
        options: opts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        system: Arc::new(StaticSystemView {
            default_lease_ttl: Duration::from_secs(3600),
            max_lease_ttl: Duration::from_secs(7200),
        }),
    };
    let s = MemoryStorage::new();
    // A v2 mount answers `config`; a v1 mount treats it as a secret path.
    let v2 = (reg["kv"])(&conf(&[("version", "2")])).unwrap();
    assert!(v2
        .handle(&req(Operation::Read, "config"), &s)
        .await
        .unwrap()
        .is_some());
    let v2 = (reg["kv-v2"])(&conf(&[])).unwrap();
    assert!(v2
        .handle(&req(Operation::Read, "config"), &s)
        .await
        .unwrap()
        .is_some());
    let v1 = (reg["kv"])(&conf(&[])).unwrap();
    assert!(v1
        .handle(&req(Operation::Read, "config"), &s)
        .await
        .unwrap()
        .is_none());
    let v1 = (reg["generic"])(&conf(&[])).unwrap();
    assert!(v1
        .handle(&req(Operation::Read, "config"), &s)
        .await
        .unwrap()
        .is_none());
    match (reg["kv"])(&conf(&[("version", "3")])) {
        Err(BackendError::BadRequest(m)) => assert!(m.contains("version"), "{m}"),
        _ => panic!("version 3 should be refused"),
    }
}

/// Reads are served from the engine's cache of decoded secrets: every kind
/// of change must show in the very next read.
#[tokio::test]
async fn every_change_shows_in_the_next_read() {
    let kv = Kv::new();
    kv.put("c", json!({"v": 1})).await;
    assert_eq!(json_of(&kv.get("c").await)["data"], json!({"v": 1}));
    assert_eq!(json_of(&kv.get("c").await)["data"], json!({"v": 1}));

    kv.put("c", json!({"v": 2})).await;
    assert_eq!(json_of(&kv.get("c").await)["data"], json!({"v": 2}));

    kv.ok(req(Operation::Patch, "data/c").body(json!({"data": {"w": 3}})))
        .await;
    assert_eq!(json_of(&kv.get("c").await)["data"], json!({"v": 2, "w": 3}));

    kv.ok(req(Operation::Delete, "data/c")).await;
    assert_eq!(status(&kv.get("c").await), Some(404));

    kv.ok(req(Operation::Update, "undelete/c").body(json!({"versions": [3]})))
        .await;
    assert_eq!(json_of(&kv.get("c").await)["data"], json!({"v": 2, "w": 3}));

    kv.ok(req(Operation::Update, "delete/c").body(json!({"versions": [3]})))
        .await;
    assert_eq!(status(&kv.get("c").await), Some(404));
    kv.ok(req(Operation::Update, "undelete/c").body(json!({"versions": [3]})))
        .await;
    kv.ok(req(Operation::Update, "destroy/c").body(json!({"versions": [3]})))
        .await;
    assert_eq!(status(&kv.get("c").await), Some(404));

    kv.put("c", json!({"v": 4})).await;
    assert_eq!(json_of(&kv.get("c").await)["data"], json!({"v": 4}));
    kv.ok(req(Operation::Update, "metadata/c").body(json!({"custom_metadata": {"o": "x"}})))
        .await;
    assert_eq!(
        json_of(&kv.get("c").await)["metadata"]["custom_metadata"],
        json!({"o": "x"})
    );

    kv.ok(req(Operation::Delete, "metadata/c")).await;
    assert!(kv.get("c").await.is_none(), "gone with its metadata");
    kv.put("c", json!({"v": 5})).await;
    let r = json_of(&kv.get("c").await);
    assert_eq!(r["data"], json!({"v": 5}));
    assert_eq!(r["metadata"]["version"], 1);
}
