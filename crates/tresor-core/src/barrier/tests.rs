use std::sync::Arc;

use proptest::prelude::*;
use tresor_sdk::{Storage as _, StorageError, StorageOp};
use tresor_storage::{Entry, MemoryStorage, Storage as Physical};

use super::*;

const ROOT: [u8; 32] = [0x42; 32];

async fn unsealed() -> (Arc<MemoryStorage>, Arc<Barrier>) {
    let phys = Arc::new(MemoryStorage::new());
    let b = Barrier::new(phys.clone());
    b.initialize(&ROOT).await.unwrap();
    assert!(b.is_sealed(), "initialize leaves the barrier sealed");
    b.unseal(&ROOT).await.unwrap();
    assert!(!b.is_sealed());
    (phys, b)
}

#[tokio::test]
async fn round_trip_and_ciphertext_at_rest() {
    let (phys, b) = unsealed().await;
    b.put("a/b", b"hello world").await.unwrap();
    assert_eq!(
        b.get("a/b").await.unwrap().as_deref(),
        Some(&b"hello world"[..])
    );
    assert_eq!(b.get("missing").await.unwrap(), None);

    let raw = phys.get("a/b").await.unwrap().unwrap();
    assert_eq!(raw[0], VERSION);
    assert_eq!(u32::from_be_bytes(raw[1..5].try_into().unwrap()), 1);
    assert_eq!(raw.len(), HEADER_LEN + 11 + TAG_LEN);
    assert!(!raw.windows(5).any(|w| w == b"hello"));

    b.put("a/c", b"").await.unwrap();
    assert_eq!(b.get("a/c").await.unwrap().as_deref(), Some(&b""[..]));
    assert_eq!(b.list("a/").await.unwrap(), ["b", "c"]);
    b.delete("a/b").await.unwrap();
    assert_eq!(b.get("a/b").await.unwrap(), None);
}

#[tokio::test]
async fn fresh_nonce_per_put() {
    let (phys, b) = unsealed().await;
    b.put("k", b"same").await.unwrap();
    let one = phys.get("k").await.unwrap().unwrap();
    b.put("k", b"same").await.unwrap();
    let two = phys.get("k").await.unwrap().unwrap();
    assert_ne!(one[5..HEADER_LEN], two[5..HEADER_LEN]);
    assert_ne!(one, two);
}

#[tokio::test]
async fn relocated_ciphertext_fails_integrity() {
    let (phys, b) = unsealed().await;
    b.put("sys/token/id/abc", b"root policy").await.unwrap();
    let raw = phys.get("sys/token/id/abc").await.unwrap().unwrap();
    phys.put(Entry {
        key: "sys/token/id/evil".into(),
        value: raw,
    })
    .await
    .unwrap();
    match b.get("sys/token/id/evil").await {
        Err(StorageError::Integrity(k)) => assert_eq!(k, "sys/token/id/evil"),
        other => panic!("expected integrity error, got {other:?}"),
    }
}

#[tokio::test]
async fn tampering_any_byte_fails_integrity() {
    let (phys, b) = unsealed().await;
    b.put("x", b"secret value").await.unwrap();
    let raw = phys.get("x").await.unwrap().unwrap();
    for i in 0..raw.len() {
        let mut bad = raw.clone();
        bad[i] ^= 0x01;
        phys.put(Entry {
            key: "x".into(),
            value: bad,
        })
        .await
        .unwrap();
        let err = b.get("x").await.unwrap_err();
        assert!(
            matches!(err, StorageError::Integrity(_)),
            "byte {i}: {err:?}"
        );
        assert!(!err.to_string().contains("secret"));
    }
    // Truncated entries too.
    for len in [0, 1, HEADER_LEN, HEADER_LEN + TAG_LEN - 1, raw.len() - 1] {
        phys.put(Entry {
            key: "x".into(),
            value: raw[..len].to_vec(),
        })
        .await
        .unwrap();
        assert!(
            matches!(b.get("x").await, Err(StorageError::Integrity(_))),
            "len {len}"
        );
    }
}

#[tokio::test]
async fn rotate_keeps_old_terms_readable() {
    let (phys, b) = unsealed().await;
    b.put("old", b"v1").await.unwrap();
    let before = b.key_status().unwrap();
    assert_eq!(before.term, 1);
    assert_eq!(before.encryptions, 1);

    let st = b.rotate().await.unwrap();
    assert_eq!(st.term, 2);
    assert_eq!(st.encryptions, 0);
    assert_eq!(b.key_status().unwrap().term, 2);
    b.put("new", b"v2").await.unwrap();
    assert_eq!(b.key_status().unwrap().encryptions, 1);
    let raw = phys.get("new").await.unwrap().unwrap();
    assert_eq!(u32::from_be_bytes(raw[1..5].try_into().unwrap()), 2);

    assert_eq!(b.get("old").await.unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(b.get("new").await.unwrap().as_deref(), Some(&b"v2"[..]));

    // The rotation was persisted: a fresh unseal sees both terms.
    b.seal();
    b.unseal(&ROOT).await.unwrap();
    assert_eq!(b.key_status().unwrap().term, 2);
    assert_eq!(b.get("old").await.unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(b.get("new").await.unwrap().as_deref(), Some(&b"v2"[..]));
}

#[tokio::test]
async fn sealed_barrier_refuses_everything() {
    let (_phys, b) = unsealed().await;
    b.put("k", b"v").await.unwrap();
    b.seal();
    assert!(b.is_sealed());
    assert!(matches!(b.get("k").await, Err(StorageError::Sealed)));
    assert!(matches!(b.put("k", b"v").await, Err(StorageError::Sealed)));
    assert!(matches!(b.delete("k").await, Err(StorageError::Sealed)));
    assert!(matches!(b.list("").await, Err(StorageError::Sealed)));
    assert!(matches!(
        b.batch(vec![StorageOp::Delete { key: "k".into() }]).await,
        Err(StorageError::Sealed)
    ));
    assert!(matches!(b.key_status(), Err(CoreError::Sealed)));
    assert!(matches!(b.rotate().await, Err(CoreError::Sealed)));
}

#[tokio::test]
async fn wrong_root_key_refused() {
    let phys = Arc::new(MemoryStorage::new());
    let b = Barrier::new(phys.clone());
    assert!(matches!(
        b.unseal(&ROOT).await,
        Err(CoreError::NotInitialized)
    ));
    b.initialize(&ROOT).await.unwrap();
    assert!(matches!(
        b.initialize(&ROOT).await,
        Err(CoreError::AlreadyInitialized)
    ));

    let mut wrong = ROOT;
    wrong[31] ^= 1;
    for key in [&wrong[..], &ROOT[..31], &[][..], &[0x42; 33][..]] {
        match b.unseal(key).await {
            Err(CoreError::BadRequest(m)) => assert!(m.contains("root key"), "{m}"),
            other => panic!("expected refusal, got {other:?}"),
        }
        assert!(b.is_sealed());
        assert!(!b.verify_root_key(key).await.unwrap());
    }
    assert!(b.verify_root_key(&ROOT).await.unwrap());
    b.unseal(&ROOT).await.unwrap();
}

#[tokio::test]
async fn reserved_keys_refused() {
    let (_phys, b) = unsealed().await;
    for k in [KEYRING_PATH, SEAL_CONFIG_PATH] {
        assert!(matches!(b.get(k).await, Err(StorageError::InvalidKey(_))));
        assert!(matches!(
            b.put(k, b"x").await,
            Err(StorageError::InvalidKey(_))
        ));
        assert!(matches!(
            b.delete(k).await,
            Err(StorageError::InvalidKey(_))
        ));
        assert!(matches!(
            b.batch(vec![StorageOp::Put {
                key: k.into(),
                value: vec![]
            }])
            .await,
            Err(StorageError::InvalidKey(_))
        ));
    }
    // Neighbours are fine.
    b.put("core/mounts", b"[]").await.unwrap();
}

#[tokio::test]
async fn rekey_root_switches_keys_atomically() {
    let (phys, b) = unsealed().await;
    b.put("k", b"v").await.unwrap();
    let new_root = [7u8; 32];
    b.rekey_root(&new_root).await.unwrap();
    assert!(b.verify_root_key(&new_root).await.unwrap());
    assert!(!b.verify_root_key(&ROOT).await.unwrap());
    // Still unsealed, data intact; a later rotation is persisted under the
    // new root key.
    assert_eq!(b.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    b.rotate().await.unwrap();
    b.seal();
    assert!(b.unseal(&ROOT).await.is_err());
    b.unseal(&new_root).await.unwrap();
    assert_eq!(b.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(b.key_status().unwrap().term, 2);
    assert!(phys.get(KEYRING_PATH).await.unwrap().is_some());
}

#[tokio::test]
async fn batch_is_encrypted() {
    let (phys, b) = unsealed().await;
    b.put("gone", b"x").await.unwrap();
    b.batch(vec![
        StorageOp::Put {
            key: "p/1".into(),
            value: b"one".to_vec(),
        },
        StorageOp::Delete { key: "gone".into() },
    ])
    .await
    .unwrap();
    assert_eq!(b.get("p/1").await.unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(b.get("gone").await.unwrap(), None);
    assert_ne!(phys.get("p/1").await.unwrap().unwrap(), b"one");
}

#[tokio::test]
async fn views_prefix_and_nest() {
    let (phys, b) = unsealed().await;
    let bs: Arc<dyn tresor_sdk::Storage> = b.clone();
    let outer: Arc<dyn tresor_sdk::Storage> = Arc::new(View::new(bs.clone(), "logical"));
    let inner = View::new(outer.clone(), "uuid/");
    inner.put("foo/bar", b"1").await.unwrap();
    inner.put("baz", b"2").await.unwrap();
    assert!(phys.get("logical/uuid/foo/bar").await.unwrap().is_some());
    assert_eq!(
        b.get("logical/uuid/baz").await.unwrap().as_deref(),
        Some(&b"2"[..])
    );
    assert_eq!(inner.list("").await.unwrap(), ["baz", "foo/"]);
    assert_eq!(inner.list("foo/").await.unwrap(), ["bar"]);
    assert_eq!(outer.list("").await.unwrap(), ["uuid/"]);
    inner
        .batch(vec![
            StorageOp::Delete { key: "baz".into() },
            StorageOp::Put {
                key: "q".into(),
                value: b"3".to_vec(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(inner.list("").await.unwrap(), ["foo/", "q"]);

    for bad in ["/abs", "../escape", "a/../../b", "a/..", "./x"] {
        assert!(
            matches!(inner.get(bad).await, Err(StorageError::InvalidKey(_))),
            "{bad}"
        );
        assert!(
            matches!(inner.put(bad, b"x").await, Err(StorageError::InvalidKey(_))),
            "{bad}"
        );
        assert!(
            matches!(inner.list(bad).await, Err(StorageError::InvalidKey(_))),
            "{bad}"
        );
    }
    // Dots inside a segment are ordinary characters.
    inner.put("a..b/..c", b"ok").await.unwrap();

    // A view cannot reach the reserved keys' neighbours by escaping, and
    // through the barrier cannot read them even when the prefix matches.
    let core_view = View::new(bs, "core/");
    assert!(matches!(
        core_view.get("keyring").await,
        Err(StorageError::InvalidKey(_))
    ));
}

#[test]
fn keyring_encoding_round_trips() {
    let root = AeadKey::new(&ROOT).unwrap();
    let mk = |term, enc| {
        Arc::new(Term {
            term,
            install_time: 1_700_000_000 + i64::from(term),
            encryptions: AtomicU64::new(enc),
            key: AeadKey::random().unwrap(),
        })
    };
    let kr = Keyring {
        terms: BTreeMap::from([(1, mk(1, 5)), (3, mk(3, 9))]),
        active: 3,
        root,
    };
    let entry = kr.seal_to_entry().unwrap();
    let back = Keyring::open_entry(&entry.value, &ROOT).unwrap();
    assert_eq!(back.active_term(), 3);
    assert_eq!(back.status().unwrap(), kr.status().unwrap());
    assert_eq!(
        back.terms[&1].key.raw.as_slice(),
        kr.terms[&1].key.raw.as_slice()
    );
    assert_eq!(back.terms[&1].encryptions.load(Ordering::Relaxed), 5);
    // The debug output never shows keys.
    let dbg = format!("{back:?}");
    assert!(dbg.contains("active"));
    assert!(!dbg.contains("raw"));
}

#[test]
fn key_status_rfc3339() {
    let ks = KeyStatus {
        term: 1,
        install_time: 0,
        encryptions: 0,
    };
    assert_eq!(ks.install_time_rfc3339(), "1970-01-01T00:00:00Z");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn prop_round_trip_and_tamper(
        key in "[a-z0-9_]{1,8}(/[a-z0-9_.-]{1,8}){0,3}",
        value in proptest::collection::vec(any::<u8>(), 0..256),
        flip_at in any::<prop::sample::Index>(),
        flip_bit in 0u8..8,
    ) {
        prop_assume!(!RESERVED.contains(&key.as_str()));
        runtime().block_on(async {
            let (phys, b) = unsealed().await;
            b.put(&key, &value).await.unwrap();
            assert_eq!(b.get(&key).await.unwrap(), Some(value.clone()));
            let mut raw = phys.get(&key).await.unwrap().unwrap();
            let i = flip_at.index(raw.len());
            raw[i] ^= 1 << flip_bit;
            phys.put(Entry { key: key.clone(), value: raw }).await.unwrap();
            assert!(matches!(b.get(&key).await, Err(StorageError::Integrity(_))));
        });
    }
}
