//! The behaviour every [`Storage`] backend must show. Each check panics with
//! a message naming the broken rule, so a backend's test can call
//! [`run_all`] and read the failure.
//!
//! `run_all` needs an empty storage (it checks the root listing). The
//! individual checks each work under their own top-level folder and leave it
//! empty, so they can also run against a shared, non-empty store.

use std::fmt::Debug;
use std::sync::Arc;

use crate::{Entry, Error, Op, Storage};

/// Runs every check in order. `s` must be empty.
pub async fn run_all(s: Arc<dyn Storage>) {
    root_listing(&*s).await;
    get_missing(&*s).await;
    put_get_overwrite(&*s).await;
    delete(&*s).await;
    list_nested(&*s).await;
    list_prefix_bounds(&*s).await;
    list_large_folder(&*s).await;
    odd_keys(&*s).await;
    binary_values(&*s).await;
    large_values(&*s).await;
    invalid_keys(&*s).await;
    batch_applies_in_order(&*s).await;
    batch_is_all_or_nothing(&*s).await;
    concurrent_writers(Arc::clone(&s)).await;
    assert_eq!(
        ok(s.list("").await, "final list"),
        Vec::<String>::new(),
        "checks must leave the storage empty"
    );
}

fn ok<T>(result: Result<T, Error>, what: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error: {e}"),
    }
}

fn entry(key: &str, value: &[u8]) -> Entry {
    Entry {
        key: key.to_owned(),
        value: value.to_vec(),
    }
}

async fn put(s: &dyn Storage, key: &str, value: &[u8]) {
    ok(s.put(entry(key, value)).await, &format!("put {key:?}"));
}

async fn get(s: &dyn Storage, key: &str) -> Option<Vec<u8>> {
    ok(s.get(key).await, &format!("get {key:?}"))
}

async fn list(s: &dyn Storage, prefix: &str) -> Vec<String> {
    ok(s.list(prefix).await, &format!("list {prefix:?}"))
}

async fn del(s: &dyn Storage, key: &str) {
    ok(s.delete(key).await, &format!("delete {key:?}"));
}

fn assert_list<S: AsRef<str> + Debug>(got: &[String], want: &[S], what: &str) {
    let want: Vec<&str> = want.iter().map(AsRef::as_ref).collect();
    assert_eq!(got, want, "{what}");
}

/// The root lists top-level entries and folders; folders vanish when their
/// last key is deleted (there are no empty directories).
pub async fn root_listing(s: &dyn Storage) {
    assert_list(
        &list(s, "").await,
        &[] as &[&str],
        "empty storage lists nothing",
    );
    put(s, "a", b"1").await;
    put(s, "b/c", b"2").await;
    put(s, "b/d/e", b"3").await;
    assert_list(&list(s, "").await, &["a", "b/"], "root lists one level");
    assert_list(&list(s, "b/").await, &["c", "d/"], "folder lists one level");
    assert_list(&list(s, "b/d/").await, &["e"], "nested folder");
    for k in ["a", "b/c", "b/d/e"] {
        del(s, k).await;
    }
    assert_list(&list(s, "").await, &[] as &[&str], "emptied folders vanish");
}

pub async fn get_missing(s: &dyn Storage) {
    assert_eq!(
        get(s, "missing/key").await,
        None,
        "missing key reads as None"
    );
    assert_eq!(get(s, "missing").await, None, "missing top-level key");
}

pub async fn put_get_overwrite(s: &dyn Storage) {
    put(s, "pgo/k", b"one").await;
    assert_eq!(
        get(s, "pgo/k").await.as_deref(),
        Some(&b"one"[..]),
        "put then get"
    );
    put(s, "pgo/k", b"two, longer").await;
    assert_eq!(
        get(s, "pgo/k").await.as_deref(),
        Some(&b"two, longer"[..]),
        "overwrite replaces the value"
    );
    assert_list(&list(s, "pgo/").await, &["k"], "overwrite keeps one entry");
    del(s, "pgo/k").await;
}

pub async fn delete(s: &dyn Storage) {
    del(s, "del/never-written").await;
    put(s, "del/k", b"v").await;
    put(s, "del/k2", b"v").await;
    del(s, "del/k").await;
    assert_eq!(get(s, "del/k").await, None, "deleted key is gone");
    assert_eq!(
        get(s, "del/k2").await.as_deref(),
        Some(&b"v"[..]),
        "delete touches one key"
    );
    del(s, "del/k").await;
    del(s, "del/k2").await;
    assert!(list(s, "del/").await.is_empty());
}

pub async fn list_nested(s: &dyn Storage) {
    let keys = [
        "ln/a",
        "ln/b/c",
        "ln/b/d/e",
        "ln/b/d/f",
        "ln/b/g",
        "ln/z/y/x/w",
    ];
    for k in keys {
        put(s, k, b"v").await;
    }
    assert_list(
        &list(s, "ln/").await,
        &["a", "b/", "z/"],
        "sub-folders appear once",
    );
    assert_list(
        &list(s, "ln/b/").await,
        &["c", "d/", "g"],
        "mixed entries and folders",
    );
    assert_list(&list(s, "ln/b/d/").await, &["e", "f"], "deepest folder");
    assert_list(&list(s, "ln/z/").await, &["y/"], "folder of folders");
    assert_list(
        &list(s, "ln/b").await,
        &["c", "d/", "g"],
        "prefix without slash means the folder",
    );
    assert!(
        list(s, "ln/nothing/").await.is_empty(),
        "missing folder lists empty"
    );
    assert!(
        list(s, "ln/a/").await.is_empty(),
        "an entry is not a folder"
    );
    // An entry and a folder may share a name.
    put(s, "ln/b", b"v").await;
    assert_list(
        &list(s, "ln/").await,
        &["a", "b", "b/", "z/"],
        "entry beside same-name folder",
    );
    del(s, "ln/b").await;
    for k in keys {
        del(s, k).await;
    }
}

/// The upper bound of a folder scan must exclude keys that merely share the
/// folder's name as a string prefix.
pub async fn list_prefix_bounds(s: &dyn Storage) {
    let keys = [
        "pb/foo/in",
        "pb/foo/sub/in",
        "pb/foo0",
        "pb/fooX/out",
        "pb/foo.bar",
        "pb/foo-x/out",
        "pb/fo",
        "pb/foo\u{7f}",
        "pb/foo/\u{10FFFF}",
    ];
    for k in keys {
        put(s, k, b"v").await;
    }
    assert_list(
        &list(s, "pb/foo/").await,
        &["in", "sub/", "\u{10FFFF}"],
        "foo/ lists only its children",
    );
    assert_list(
        &list(s, "pb/").await,
        &[
            "fo",
            "foo-x/",
            "foo.bar",
            "foo/",
            "foo0",
            "fooX/",
            "foo\u{7f}",
        ],
        "siblings sort bytewise",
    );
    for k in keys {
        del(s, k).await;
    }
}

/// Keys are stored verbatim: no wildcard, escaping or normalisation.
pub async fn odd_keys(s: &dyn Storage) {
    let names = [
        "100%",
        "%",
        "_",
        "a_b",
        "with space",
        " leading",
        "trailing ",
        "ünïcødé",
        "日本語",
        "emoji😀",
        "quote'\"",
        "back\\slash",
        "semi;colon",
        "new\nline",
        "tab\t",
        "*",
        "?",
        "[x]",
        "..",
        ".",
    ];
    for (i, name) in names.iter().enumerate() {
        put(s, &format!("odd/{name}"), &[i as u8]).await;
    }
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            get(s, &format!("odd/{name}")).await,
            Some(vec![i as u8]),
            "odd key {name:?} round-trips"
        );
    }
    let mut want: Vec<&str> = names.to_vec();
    want.sort_unstable();
    assert_list(&list(s, "odd/").await, &want, "odd keys list verbatim");
    // `%` and `_` must not act as wildcards in a folder prefix.
    put(s, "odd2/a%/x", b"v").await;
    put(s, "odd2/ab/y", b"v").await;
    put(s, "odd2/a_/z", b"v").await;
    assert_list(
        &list(s, "odd2/a%/").await,
        &["x"],
        "% is literal in a prefix",
    );
    assert_list(
        &list(s, "odd2/a_/").await,
        &["z"],
        "_ is literal in a prefix",
    );
    put(s, "日本/語/x", b"v").await;
    assert_list(&list(s, "日本/").await, &["語/"], "unicode folders");
    for k in ["odd2/a%/x", "odd2/ab/y", "odd2/a_/z", "日本/語/x"] {
        del(s, k).await;
    }
    for name in names {
        del(s, &format!("odd/{name}")).await;
    }
}

pub async fn binary_values(s: &dyn Storage) {
    let all_bytes: Vec<u8> = (0..=255).collect();
    put(s, "bin/empty", b"").await;
    put(s, "bin/all", &all_bytes).await;
    put(s, "bin/nul", b"\0\0\0").await;
    put(s, "bin/invalid-utf8", &[0xff, 0xfe, 0xc0, 0x80]).await;
    assert_eq!(
        get(s, "bin/empty").await,
        Some(vec![]),
        "empty value is not missing"
    );
    assert_eq!(get(s, "bin/all").await, Some(all_bytes), "every byte value");
    assert_eq!(get(s, "bin/nul").await, Some(vec![0, 0, 0]), "NUL bytes");
    assert_eq!(
        get(s, "bin/invalid-utf8").await,
        Some(vec![0xff, 0xfe, 0xc0, 0x80]),
        "values are bytes, not text"
    );
    assert_list(
        &list(s, "bin/").await,
        &["all", "empty", "invalid-utf8", "nul"],
        "binary entries list",
    );
    for k in ["bin/empty", "bin/all", "bin/nul", "bin/invalid-utf8"] {
        del(s, k).await;
    }
}

pub async fn large_values(s: &dyn Storage) {
    let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 31 % 251) as u8).collect();
    put(s, "large/1mib", &big).await;
    assert_eq!(
        get(s, "large/1mib").await.as_ref(),
        Some(&big),
        "1 MiB value round-trips"
    );
    let bigger = vec![7u8; 3 << 20];
    put(s, "large/1mib", &bigger).await;
    assert_eq!(
        get(s, "large/1mib").await.as_ref(),
        Some(&bigger),
        "overwrite with 3 MiB"
    );
    del(s, "large/1mib").await;
}

pub async fn invalid_keys(s: &dyn Storage) {
    for key in ["", "ik/", "ik/a\0b"] {
        assert!(
            matches!(s.put(entry(key, b"v")).await, Err(Error::InvalidKey(_))),
            "put {key:?} must be rejected"
        );
        assert!(
            matches!(s.get(key).await, Err(Error::InvalidKey(_))),
            "get {key:?}"
        );
        assert!(
            matches!(s.delete(key).await, Err(Error::InvalidKey(_))),
            "delete {key:?}"
        );
    }
    assert!(list(s, "ik/").await.is_empty());
}

/// A folder far larger than one scan step of any backend, with sub-folders
/// large and small among its entries, lists whole and in order.
pub async fn list_large_folder(s: &dyn Storage) {
    let mut keys = Vec::new();
    let mut want = Vec::new();
    for i in 0..12_000 {
        let name = format!("{i:05}");
        if i % 1000 == 7 {
            // A folder with more entries than a scan step.
            for j in 0..5000 {
                keys.push(format!("lg/{name}/{j}"));
            }
            want.push(format!("{name}/"));
        } else if i % 100 == 3 {
            keys.push(format!("lg/{name}/only"));
            want.push(format!("{name}/"));
        } else {
            keys.push(format!("lg/{name}"));
            want.push(name);
        }
    }
    let puts = keys.iter().map(|k| Op::Put(entry(k, b"v"))).collect();
    ok(s.batch(puts).await, "batch of many puts");
    assert_list(&list(s, "lg/").await, &want, "large folder");
    let deletes = keys.iter().map(|k| Op::Delete(k.clone())).collect();
    ok(s.batch(deletes).await, "batch of many deletes");
    assert!(list(s, "lg/").await.is_empty(), "large folder emptied");
}

pub async fn batch_applies_in_order(s: &dyn Storage) {
    put(s, "ba/old", b"old").await;
    put(s, "ba/keep", b"keep").await;
    ok(
        s.batch(vec![
            Op::Put(entry("ba/new", b"1")),
            Op::Delete("ba/old".into()),
            Op::Put(entry("ba/new", b"2")),
            Op::Put(entry("ba/tmp", b"x")),
            Op::Delete("ba/tmp".into()),
            Op::Delete("ba/never".into()),
        ])
        .await,
        "batch",
    );
    assert_eq!(
        get(s, "ba/new").await,
        Some(b"2".to_vec()),
        "later op in a batch wins"
    );
    assert_eq!(get(s, "ba/old").await, None, "delete in batch applied");
    assert_eq!(get(s, "ba/tmp").await, None, "put then delete in one batch");
    assert_list(&list(s, "ba/").await, &["keep", "new"], "batch result");
    ok(s.batch(Vec::new()).await, "empty batch");
    ok(
        s.batch(vec![
            Op::Delete("ba/keep".into()),
            Op::Delete("ba/new".into()),
        ])
        .await,
        "delete-only batch",
    );
    assert!(list(s, "ba/").await.is_empty());
}

pub async fn batch_is_all_or_nothing(s: &dyn Storage) {
    put(s, "bn/existing", b"before").await;
    let result = s
        .batch(vec![
            Op::Put(entry("bn/new", b"v")),
            Op::Delete("bn/existing".into()),
            Op::Put(entry("bn/bad/", b"v")),
        ])
        .await;
    assert!(
        matches!(result, Err(Error::InvalidKey(_))),
        "batch with an invalid key fails: {result:?}"
    );
    assert_eq!(get(s, "bn/new").await, None, "failed batch wrote nothing");
    assert_eq!(
        get(s, "bn/existing").await,
        Some(b"before".to_vec()),
        "failed batch deleted nothing"
    );
    del(s, "bn/existing").await;
}

/// 32 tasks write at once; every write that returned `Ok` is there.
pub async fn concurrent_writers(s: Arc<dyn Storage>) {
    const TASKS: usize = 32;
    const EACH: usize = 20;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let s = Arc::clone(&s);
        tasks.spawn(async move {
            for i in 0..EACH {
                let key = format!("cw/{t:02}/{i:02}");
                let value = format!("{t}-{i}").into_bytes();
                if i % 5 == 4 {
                    ok(
                        s.batch(vec![
                            Op::Put(entry(&key, &value)),
                            Op::Put(entry(&format!("cw/{t:02}/b{i:02}"), &value)),
                        ])
                        .await,
                        "concurrent batch",
                    );
                } else {
                    ok(s.put(entry(&key, &value)).await, "concurrent put");
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            panic!("writer task failed: {e}");
        }
    }
    let folders = list(&*s, "cw/").await;
    assert_eq!(folders.len(), TASKS, "every writer's folder exists");
    for t in 0..TASKS {
        let children = list(&*s, &format!("cw/{t:02}/")).await;
        assert_eq!(children.len(), EACH + EACH / 5, "writer {t} lost writes");
        for i in 0..EACH {
            let key = format!("cw/{t:02}/{i:02}");
            assert_eq!(
                get(&*s, &key).await,
                Some(format!("{t}-{i}").into_bytes()),
                "{key} durable"
            );
        }
    }
    let mut deletes = Vec::new();
    for t in 0..TASKS {
        for child in list(&*s, &format!("cw/{t:02}/")).await {
            deletes.push(Op::Delete(format!("cw/{t:02}/{child}")));
        }
    }
    ok(s.batch(deletes).await, "cleanup batch");
    assert!(list(&*s, "cw/").await.is_empty());
}
