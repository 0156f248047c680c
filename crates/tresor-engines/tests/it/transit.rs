//! The Transit engine on in-memory storage: every operation, and every
//! refusal that guards key material or ciphertext integrity.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use tresor_engines::secrets::transit::{Limits, Transit};
use tresor_sdk::testing::{req, MemoryStorage};
use tresor_sdk::{Backend, BackendError, Operation, Response, Storage, StorageError, StorageOp};

/// Memory storage that counts reads and writes.
#[derive(Default)]
struct Counting {
    inner: MemoryStorage,
    gets: AtomicUsize,
    puts: AtomicUsize,
}

#[async_trait]
impl Storage for Counting {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.inner.list(prefix).await
    }
    async fn batch(&self, ops: Vec<StorageOp>) -> Result<(), StorageError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.batch(ops).await
    }
}

struct T {
    b: Arc<Transit>,
    s: Arc<Counting>,
}

fn b64(s: &str) -> String {
    B64.encode(s)
}

fn unb64(v: &Value) -> String {
    String::from_utf8(B64.decode(v.as_str().expect("string")).expect("base64")).expect("utf8")
}

impl T {
    fn new() -> Self {
        Self::with(Limits::default())
    }

    fn with(limits: Limits) -> Self {
        T {
            b: Arc::new(Transit::with_limits(limits)),
            s: Arc::new(Counting::default()),
        }
    }

    /// A fresh engine on the same storage: what a restart looks like.
    fn restart(&self, limits: Limits) -> Self {
        T {
            b: Arc::new(Transit::with_limits(limits)),
            s: self.s.clone(),
        }
    }

    async fn call(
        &self,
        op: Operation,
        path: &str,
        body: Value,
    ) -> Result<Option<Response>, BackendError> {
        self.b
            .handle(&req(op, path).body(body), self.s.as_ref())
            .await
    }

    async fn write(&self, path: &str, body: Value) -> Value {
        match self.call(Operation::Update, path, body).await {
            Ok(Some(Response { data: Some(m), .. })) => Value::Object(m),
            Ok(_) => Value::Null,
            Err(e) => panic!("write {path}: {e}"),
        }
    }

    /// The full response of a write, for status checks.
    async fn write_resp(&self, path: &str, body: Value) -> Response {
        self.call(Operation::Update, path, body)
            .await
            .unwrap_or_else(|e| panic!("write {path}: {e}"))
            .expect("response")
    }

    async fn read(&self, path: &str) -> Option<Value> {
        match self.call(Operation::Read, path, json!({})).await {
            Ok(Some(Response { data: Some(m), .. })) => Some(Value::Object(m)),
            Ok(_) => None,
            Err(e) => panic!("read {path}: {e}"),
        }
    }

    /// The 400 message of a refused write.
    async fn refused(&self, op: Operation, path: &str, body: Value) -> String {
        match self.call(op, path, body).await {
            Err(BackendError::BadRequest(m)) => m,
            other => panic!("{path}: expected a 400, got {other:?}"),
        }
    }

    async fn key(&self, name: &str, body: Value) -> Value {
        self.write(&format!("keys/{name}"), body).await
    }

    async fn encrypt(&self, name: &str, body: Value) -> String {
        self.write(&format!("encrypt/{name}"), body).await["ciphertext"]
            .as_str()
            .expect("ciphertext")
            .to_string()
    }

    async fn decrypt(&self, name: &str, body: Value) -> String {
        unb64(&self.write(&format!("decrypt/{name}"), body).await["plaintext"])
    }
}

#[tokio::test]
async fn create_read_list_every_key_type() {
    let t = T::new();
    let types = [
        "aes128-gcm96",
        "aes256-gcm96",
        "chacha20-poly1305",
        "ed25519",
        "ecdsa-p256",
        "ecdsa-p384",
        "ecdsa-p521",
        "rsa-2048",
        "rsa-3072",
        "rsa-4096",
        "hmac",
    ];
    for ty in types {
        let out = t.key(&format!("k-{ty}"), json!({"type": ty})).await;
        assert_eq!(out["type"], ty);
        let k = t.read(&format!("keys/k-{ty}")).await.expect("key");
        assert_eq!(k["latest_version"], 1);
        assert_eq!(k["min_decryption_version"], 1);
        assert_eq!(k["min_encryption_version"], 0);
        assert_eq!(k["deletion_allowed"], false);
        let asym = ty.starts_with("ed") || ty.starts_with("ecdsa") || ty.starts_with("rsa");
        assert_eq!(k["supports_signing"], asym, "{ty}");
        assert_eq!(
            k["supports_encryption"],
            ty.starts_with("aes") || ty.starts_with("chacha") || ty.starts_with("rsa"),
            "{ty}"
        );
        if asym {
            let pk = k["keys"]["1"]["public_key"].as_str().expect("public key");
            assert!(!pk.is_empty());
            if ty != "ed25519" {
                assert!(pk.starts_with("-----BEGIN PUBLIC KEY-----"), "{ty}: {pk}");
            }
        } else {
            assert!(k["keys"]["1"].is_i64(), "{ty}: {k}");
        }
    }
    // Default type.
    assert_eq!(t.key("plain", json!({})).await["type"], "aes256-gcm96");
    let list = t
        .call(Operation::List, "keys", json!({}))
        .await
        .unwrap()
        .unwrap();
    let keys = list.data.unwrap()["keys"].as_array().unwrap().len();
    assert_eq!(keys, types.len() + 1);

    assert!(t
        .refused(Operation::Update, "keys/x", json!({"type": "des"}))
        .await
        .contains("unknown key type"));
    assert!(t.read("keys/missing").await.is_none());
}

#[tokio::test]
async fn encrypt_decrypt_round_trip_and_format() {
    let t = T::new();
    for ty in [
        "aes128-gcm96",
        "aes256-gcm96",
        "chacha20-poly1305",
        "rsa-2048",
    ] {
        t.key(ty, json!({"type": ty})).await;
        let ct = t.encrypt(ty, json!({"plaintext": b64("the secret")})).await;
        assert!(ct.starts_with("vault:v1:"), "{ct}");
        assert_eq!(t.decrypt(ty, json!({"ciphertext": ct})).await, "the secret");
        // Empty plaintext is allowed, as in Vault.
        let ct = t.encrypt(ty, json!({"plaintext": ""})).await;
        assert_eq!(t.decrypt(ty, json!({"ciphertext": ct})).await, "");
    }
    // Random nonces: two encryptions differ.
    let a = t
        .encrypt("aes256-gcm96", json!({"plaintext": b64("x")}))
        .await;
    let b = t
        .encrypt("aes256-gcm96", json!({"plaintext": b64("x")}))
        .await;
    assert_ne!(a, b);
    // Encrypt creates a missing key (upsert).
    let ct = t.encrypt("fresh", json!({"plaintext": b64("y")})).await;
    assert_eq!(t.read("keys/fresh").await.unwrap()["type"], "aes256-gcm96");
    assert_eq!(t.decrypt("fresh", json!({"ciphertext": ct})).await, "y");
    // Signing keys don't encrypt; bad base64 is named.
    t.key("ed", json!({"type": "ed25519"})).await;
    assert!(t
        .refused(
            Operation::Update,
            "encrypt/ed",
            json!({"plaintext": b64("x")})
        )
        .await
        .contains("does not support encryption"));
    assert!(t
        .refused(
            Operation::Update,
            "encrypt/fresh",
            json!({"plaintext": "%%%"})
        )
        .await
        .contains("plaintext"));
    assert!(t
        .refused(Operation::Update, "decrypt/nokey", json!({"ciphertext": a}))
        .await
        .contains("not found"));
}

#[tokio::test]
async fn associated_data_is_authenticated() {
    let t = T::new();
    t.key("k", json!({})).await;
    let ct = t
        .encrypt(
            "k",
            json!({"plaintext": b64("p"), "associated_data": b64("ad")}),
        )
        .await;
    assert_eq!(
        t.decrypt("k", json!({"ciphertext": ct, "associated_data": b64("ad")}))
            .await,
        "p"
    );
    let msg = t
        .refused(
            Operation::Update,
            "decrypt/k",
            json!({"ciphertext": ct, "associated_data": b64("other")}),
        )
        .await;
    assert_eq!(msg, "cipher: message authentication failed");
    t.refused(Operation::Update, "decrypt/k", json!({"ciphertext": ct}))
        .await;
}

#[tokio::test]
async fn tampered_and_relocated_ciphertexts_are_refused_without_detail() {
    let t = T::new();
    t.key("a", json!({})).await;
    t.key("b", json!({})).await;
    let ct = t
        .encrypt("a", json!({"plaintext": b64("top secret payload")}))
        .await;
    let body = ct.strip_prefix("vault:v1:").unwrap();
    let mut raw = B64.decode(body).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 1;
    let tampered = format!("vault:v1:{}", B64.encode(&raw));
    for (key, c) in [("a", tampered.as_str()), ("b", ct.as_str())] {
        let msg = t
            .refused(
                Operation::Update,
                &format!("decrypt/{key}"),
                json!({"ciphertext": c}),
            )
            .await;
        assert_eq!(msg, "cipher: message authentication failed");
        assert!(!msg.contains("secret"));
    }
    // Truncated, unprefixed, bad version: refused as malformed.
    for bad in [
        "vault:v1:AAAA",
        "v1:abc",
        "vault:vx:abc",
        "vault:v0:abc",
        "vault:v1:***",
    ] {
        t.refused(Operation::Update, "decrypt/a", json!({"ciphertext": bad}))
            .await;
    }
    // A version the key does not have (relocation from a key with more versions).
    let msg = t
        .refused(
            Operation::Update,
            "decrypt/a",
            json!({"ciphertext": ct.replace("vault:v1:", "vault:v9:")}),
        )
        .await;
    assert!(msg.contains("version"), "{msg}");
}

#[tokio::test]
async fn derived_keys_need_the_right_context() {
    let t = T::new();
    t.key("d", json!({"derived": true})).await;
    let k = t.read("keys/d").await.unwrap();
    assert_eq!(k["derived"], true);
    assert_eq!(k["kdf"], "hkdf_sha256");
    let msg = t
        .refused(
            Operation::Update,
            "encrypt/d",
            json!({"plaintext": b64("p")}),
        )
        .await;
    assert!(msg.contains("context"), "{msg}");
    let ct = t
        .encrypt(
            "d",
            json!({"plaintext": b64("p"), "context": b64("tenant-1")}),
        )
        .await;
    assert_eq!(
        t.decrypt("d", json!({"ciphertext": ct, "context": b64("tenant-1")}))
            .await,
        "p"
    );
    let msg = t
        .refused(
            Operation::Update,
            "decrypt/d",
            json!({"ciphertext": ct, "context": b64("tenant-2")}),
        )
        .await;
    assert_eq!(msg, "cipher: message authentication failed");
    t.refused(Operation::Update, "decrypt/d", json!({"ciphertext": ct}))
        .await;
    // Derivation is for AEAD keys only.
    t.refused(
        Operation::Update,
        "keys/x",
        json!({"type": "ed25519", "derived": true}),
    )
    .await;
}

#[tokio::test]
async fn convergent_encryption_is_deterministic_per_context() {
    let t = T::new();
    let msg = t
        .refused(
            Operation::Update,
            "keys/c",
            json!({"convergent_encryption": true}),
        )
        .await;
    assert!(msg.contains("derived"), "{msg}");
    t.key("c", json!({"convergent_encryption": true, "derived": true}))
        .await;
    assert_eq!(
        t.read("keys/c").await.unwrap()["convergent_encryption"],
        true
    );
    let enc = |p: &str, c: &str| json!({"plaintext": b64(p), "context": b64(c)});
    let a1 = t.encrypt("c", enc("same", "ctx")).await;
    let a2 = t.encrypt("c", enc("same", "ctx")).await;
    assert_eq!(a1, a2);
    assert_ne!(a1, t.encrypt("c", enc("same", "other")).await);
    assert_ne!(a1, t.encrypt("c", enc("different", "ctx")).await);
    // Associated data changes the nonce too (GCM nonce reuse across AADs is unsafe).
    let with_ad =
        json!({"plaintext": b64("same"), "context": b64("ctx"), "associated_data": b64("ad")});
    let b1 = t.encrypt("c", with_ad.clone()).await;
    assert_ne!(b1[9..25], a1[9..25]);
    assert_eq!(
        t.decrypt("c", json!({"ciphertext": a1, "context": b64("ctx")}))
            .await,
        "same"
    );
}

#[tokio::test]
async fn rotation_keeps_old_ciphertexts_and_rewrap_moves_them_forward() {
    let t = T::new();
    t.key("r", json!({})).await;
    let v1 = t.encrypt("r", json!({"plaintext": b64("old")})).await;
    let k = t.write("keys/r/rotate", json!({})).await;
    assert_eq!(k["latest_version"], 2);
    let v2 = t.encrypt("r", json!({"plaintext": b64("new")})).await;
    assert!(v2.starts_with("vault:v2:"));
    assert_eq!(t.decrypt("r", json!({"ciphertext": v1})).await, "old");
    // Encrypt with an older version on request.
    let again = t
        .write(
            "encrypt/r",
            json!({"plaintext": b64("x"), "key_version": 1}),
        )
        .await;
    assert_eq!(again["key_version"], 1);
    t.refused(
        Operation::Update,
        "encrypt/r",
        json!({"plaintext": b64("x"), "key_version": 3}),
    )
    .await;

    let re = t.write("rewrap/r", json!({"ciphertext": v1})).await;
    let rewrapped = re["ciphertext"].as_str().unwrap().to_string();
    assert!(rewrapped.starts_with("vault:v2:"));
    assert_eq!(re["key_version"], 2);
    assert_eq!(
        t.decrypt("r", json!({"ciphertext": rewrapped})).await,
        "old"
    );

    // min_decryption_version retires v1 ciphertexts.
    t.write("keys/r/config", json!({"min_decryption_version": 2}))
        .await;
    let msg = t
        .refused(Operation::Update, "decrypt/r", json!({"ciphertext": v1}))
        .await;
    assert_eq!(
        msg,
        "ciphertext or signature version is disallowed by policy (too old)"
    );
    assert_eq!(t.decrypt("r", json!({"ciphertext": v2})).await, "new");
    // ... and so does trim, which deletes the material for good.
    t.write("keys/r/trim", json!({"min_available_version": 2}))
        .await;
    let k = t.read("keys/r").await.unwrap();
    assert_eq!(k["min_available_version"], 2);
    assert!(k["keys"].get("1").is_none());
    t.refused(
        Operation::Update,
        "keys/r/trim",
        json!({"min_available_version": 3}),
    )
    .await;
    t.refused(
        Operation::Update,
        "keys/r/config",
        json!({"min_decryption_version": 1}),
    )
    .await;
}

#[tokio::test]
async fn config_rules() {
    let t = T::new();
    t.key("k", json!({})).await;
    t.write("keys/k/rotate", json!({})).await;
    t.write("keys/k/rotate", json!({})).await;
    t.refused(
        Operation::Update,
        "keys/k/config",
        json!({"min_decryption_version": 4}),
    )
    .await;
    t.write("keys/k/config", json!({"min_decryption_version": 2}))
        .await;
    let msg = t
        .refused(
            Operation::Update,
            "keys/k/config",
            json!({"min_encryption_version": 1}),
        )
        .await;
    assert!(msg.contains("min_encryption_version"), "{msg}");
    t.write("keys/k/config", json!({"min_encryption_version": 3}))
        .await;
    t.refused(
        Operation::Update,
        "encrypt/k",
        json!({"plaintext": "", "key_version": 2}),
    )
    .await;
    t.write("keys/k/config", json!({"exportable": true})).await;
    t.refused(
        Operation::Update,
        "keys/k/config",
        json!({"exportable": false}),
    )
    .await;
    t.refused(
        Operation::Update,
        "keys/k/config",
        json!({"auto_rotate_period": "5m"}),
    )
    .await;
    let k = t
        .write("keys/k/config", json!({"auto_rotate_period": "24h"}))
        .await;
    assert_eq!(k["auto_rotate_period"], 86400);
}

#[tokio::test]
async fn delete_needs_deletion_allowed() {
    let t = T::new();
    t.key("k", json!({})).await;
    let msg = t.refused(Operation::Delete, "keys/k", json!({})).await;
    assert!(msg.contains("deletion is not allowed"), "{msg}");
    assert!(t.read("keys/k").await.is_some());
    t.write("keys/k/config", json!({"deletion_allowed": true}))
        .await;
    t.call(Operation::Delete, "keys/k", json!({}))
        .await
        .unwrap();
    assert!(t.read("keys/k").await.is_none());
    t.refused(Operation::Delete, "keys/k", json!({})).await;
}

#[tokio::test]
async fn export_needs_exportable() {
    let t = T::new();
    t.key("closed", json!({})).await;
    let msg = t
        .refused(Operation::Read, "export/encryption-key/closed", json!({}))
        .await;
    assert!(msg.contains("not exportable"), "{msg}");
    t.refused(Operation::Read, "export/hmac-key/closed", json!({}))
        .await;

    t.key("open", json!({"exportable": true})).await;
    t.write("keys/open/rotate", json!({})).await;
    let e = t.read("export/encryption-key/open").await.unwrap();
    assert_eq!(e["keys"].as_object().unwrap().len(), 2);
    assert_eq!(
        B64.decode(e["keys"]["1"].as_str().unwrap()).unwrap().len(),
        32
    );
    let latest = t.read("export/hmac-key/open/latest").await.unwrap();
    assert!(latest["keys"].get("2").is_some());
    t.refused(Operation::Read, "export/signing-key/open", json!({}))
        .await;
    t.refused(Operation::Read, "export/encryption-key/open/7", json!({}))
        .await;

    // Public keys are public: no exportable needed. Private ones are.
    t.key("ec", json!({"type": "ecdsa-p256"})).await;
    let p = t.read("export/public-key/ec").await.unwrap();
    assert!(p["keys"]["1"].as_str().unwrap().contains("PUBLIC KEY"));
    t.refused(Operation::Read, "export/signing-key/ec", json!({}))
        .await;
    t.key("ec2", json!({"type": "ecdsa-p256", "exportable": true}))
        .await;
    let s = t.read("export/signing-key/ec2/1").await.unwrap();
    assert!(s["keys"]["1"].as_str().unwrap().contains("EC PRIVATE KEY"));
    t.key("ed", json!({"type": "ed25519", "exportable": true}))
        .await;
    let s = t.read("export/signing-key/ed").await.unwrap();
    assert_eq!(
        B64.decode(s["keys"]["1"].as_str().unwrap()).unwrap().len(),
        64
    );
}

#[tokio::test]
async fn backup_and_restore() {
    let t = T::new();
    t.key("nb", json!({"exportable": true})).await;
    t.refused(Operation::Read, "backup/nb", json!({})).await;

    t.key(
        "k",
        json!({"exportable": true, "allow_plaintext_backup": true}),
    )
    .await;
    let ct = t.encrypt("k", json!({"plaintext": b64("kept")})).await;
    let backup = t.read("backup/k").await.unwrap()["backup"]
        .as_str()
        .unwrap()
        .to_string();
    let msg = t
        .refused(Operation::Update, "restore", json!({"backup": backup}))
        .await;
    assert!(msg.contains("already exists"), "{msg}");
    t.write("restore/copy", json!({"backup": backup})).await;
    assert_eq!(t.decrypt("copy", json!({"ciphertext": ct})).await, "kept");
    t.write("restore", json!({"backup": backup, "force": true}))
        .await;
    assert_eq!(t.decrypt("k", json!({"ciphertext": ct})).await, "kept");
    t.refused(
        Operation::Update,
        "restore/x",
        json!({"backup": "bm90IGEgYmFja3Vw"}),
    )
    .await;
    t.refused(Operation::Update, "restore/x", json!({})).await;
}

#[tokio::test]
async fn batch_encrypt_decrypt_with_item_errors() {
    let t = T::new();
    t.key("b", json!({})).await;
    let out = t
        .write(
            "encrypt/b",
            json!({"batch_input": [
                {"plaintext": b64("one"), "reference": "r1"},
                {"plaintext": b64("two")},
            ]}),
        )
        .await;
    let results = out["batch_results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["reference"], "r1");
    let c1 = results[0]["ciphertext"].as_str().unwrap().to_string();
    let c2 = results[1]["ciphertext"].as_str().unwrap().to_string();

    // One bad item: the others still answer; the status is 400.
    let resp = t
        .write_resp(
            "decrypt/b",
            json!({"batch_input": [
                {"ciphertext": c1},
                {"ciphertext": "vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="},
                {"ciphertext": c2},
            ]}),
        )
        .await;
    assert_eq!(resp.status, Some(400));
    let data = Value::Object(resp.data.unwrap());
    let r = data["batch_results"].as_array().unwrap();
    assert_eq!(unb64(&r[0]["plaintext"]), "one");
    assert_eq!(r[1]["error"], "cipher: message authentication failed");
    assert!(r[1].get("plaintext").is_none());
    assert_eq!(unb64(&r[2]["plaintext"]), "two");

    let resp = t
        .write_resp(
            "encrypt/b",
            json!({"partial_failure_response_code": 207, "batch_input": [
                {"plaintext": "!!"}, {"plaintext": b64("ok")},
            ]}),
        )
        .await;
    assert_eq!(resp.status, Some(207));
    let resp = t
        .write_resp(
            "encrypt/b",
            json!({"partial_failure_response_code": 207, "batch_input": [{"plaintext": "!!"}]}),
        )
        .await;
    assert_eq!(resp.status, Some(400));
    let resp = t
        .write_resp(
            "encrypt/b",
            json!({"batch_input": [{"plaintext": b64("fine")}]}),
        )
        .await;
    assert_eq!(resp.status, None);

    let out = t
        .write("rewrap/b", json!({"batch_input": [{"ciphertext": c1}]}))
        .await;
    assert!(out["batch_results"][0]["ciphertext"]
        .as_str()
        .unwrap()
        .starts_with("vault:v1:"));
    t.refused(Operation::Update, "encrypt/b", json!({"batch_input": []}))
        .await;
}

#[tokio::test]
async fn datakeys() {
    let t = T::new();
    t.key("dk", json!({})).await;
    let out = t.write("datakey/plaintext/dk", json!({"bits": 512})).await;
    let plain = B64.decode(out["plaintext"].as_str().unwrap()).unwrap();
    assert_eq!(plain.len(), 64);
    let back = t
        .write("decrypt/dk", json!({"ciphertext": out["ciphertext"]}))
        .await;
    assert_eq!(
        B64.decode(back["plaintext"].as_str().unwrap()).unwrap(),
        plain
    );
    let wrapped = t.write("datakey/wrapped/dk", json!({})).await;
    assert!(wrapped.get("plaintext").is_none());
    assert!(wrapped["ciphertext"]
        .as_str()
        .unwrap()
        .starts_with("vault:v1:"));
    t.refused(
        Operation::Update,
        "datakey/plaintext/dk",
        json!({"bits": 100}),
    )
    .await;
}

#[tokio::test]
async fn sign_and_verify() {
    let t = T::new();
    let input = b64("message to sign");
    let cases: &[(&str, Value)] = &[
        ("ed25519", json!({})),
        ("ecdsa-p256", json!({})),
        ("ecdsa-p256", json!({"marshaling_algorithm": "jws"})),
        ("ecdsa-p384", json!({"hash_algorithm": "sha2-384"})),
        ("ecdsa-p521", json!({"hash_algorithm": "sha2-512"})),
        ("rsa-2048", json!({})),
        (
            "rsa-2048",
            json!({"signature_algorithm": "pkcs1v15", "hash_algorithm": "sha2-384"}),
        ),
    ];
    for (ty, opts) in cases {
        let name = format!("s-{ty}");
        t.key(&name, json!({"type": ty})).await;
        let mut body = opts.clone();
        body["input"] = json!(input);
        let out = t.write(&format!("sign/{name}"), body.clone()).await;
        let sig = out["signature"].as_str().unwrap().to_string();
        assert!(sig.starts_with("vault:v1:"), "{ty}: {sig}");
        assert_eq!(out["key_version"], 1);
        let mut v = body.clone();
        v["signature"] = json!(sig);
        assert_eq!(
            t.write(&format!("verify/{name}"), v.clone()).await["valid"],
            true,
            "{ty} {opts}"
        );
        v["input"] = json!(b64("another message"));
        assert_eq!(
            t.write(&format!("verify/{name}"), v).await["valid"],
            false,
            "{ty}"
        );
    }
    // Hash in the URL, as hvac sends it.
    let out = t
        .write("sign/s-ecdsa-p384/sha2-384", json!({"input": input}))
        .await;
    let ok = t
        .write(
            "verify/s-ecdsa-p384/sha2-384",
            json!({"input": input, "signature": out["signature"]}),
        )
        .await;
    assert_eq!(ok["valid"], true);
    // Prehashed: the input is the digest.
    let digest = t
        .write("hash/sha2-256", json!({"input": input, "format": "base64"}))
        .await["sum"]
        .clone();
    let out = t
        .write(
            "sign/s-ecdsa-p256",
            json!({"input": digest, "prehashed": true}),
        )
        .await;
    let ok = t
        .write(
            "verify/s-ecdsa-p256",
            json!({"input": input, "signature": out["signature"]}),
        )
        .await;
    assert_eq!(ok["valid"], true);
    // Refusals.
    t.refused(
        Operation::Update,
        "sign/s-ecdsa-p256",
        json!({"input": input, "hash_algorithm": "sha2-512"}),
    )
    .await;
    t.refused(
        Operation::Update,
        "sign/s-ed25519",
        json!({"input": input, "prehashed": true}),
    )
    .await;
    t.key("aes", json!({})).await;
    t.refused(Operation::Update, "sign/aes", json!({"input": input}))
        .await;
    t.refused(
        Operation::Update,
        "verify/s-ed25519",
        json!({"input": input, "signature": "garbage"}),
    )
    .await;
    t.refused(
        Operation::Update,
        "verify/s-ed25519",
        json!({"input": input}),
    )
    .await;

    // Batch sign and verify.
    let out = t
        .write(
            "sign/s-ed25519",
            json!({"batch_input": [{"input": input}, {"input": b64("b")}]}),
        )
        .await;
    let sigs: Vec<Value> = out["batch_results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["signature"].clone())
        .collect();
    let resp = t
        .write_resp(
            "verify/s-ed25519",
            json!({"batch_input": [
                {"input": input, "signature": sigs[0]},
                {"input": input, "signature": sigs[1]},
                {"input": input, "signature": "nope"},
            ]}),
        )
        .await;
    let data = Value::Object(resp.data.unwrap());
    let r = data["batch_results"].as_array().unwrap();
    assert_eq!(r[0]["valid"], true);
    assert_eq!(r[1]["valid"], false);
    assert!(r[2]["error"].is_string());
    assert_eq!(resp.status, Some(400));

    // A signature under a retired version is refused.
    t.write("keys/s-ed25519/rotate", json!({})).await;
    t.write(
        "keys/s-ed25519/config",
        json!({"min_decryption_version": 2}),
    )
    .await;
    let msg = t
        .refused(
            Operation::Update,
            "verify/s-ed25519",
            json!({"input": input, "signature": sigs[0]}),
        )
        .await;
    assert!(msg.contains("too old"), "{msg}");
}

#[tokio::test]
async fn hmac_and_verify() {
    let t = T::new();
    t.key("h", json!({})).await;
    t.key("hk", json!({"type": "hmac", "key_size": 64})).await;
    let input = b64("data");
    for key in ["h", "hk"] {
        for alg in ["sha2-256", "sha2-512"] {
            let out = t
                .write(&format!("hmac/{key}/{alg}"), json!({"input": input}))
                .await;
            let mac = out["hmac"].as_str().unwrap().to_string();
            assert!(mac.starts_with("vault:v1:"));
            let ok = t
                .write(
                    &format!("verify/{key}/{alg}"),
                    json!({"input": input, "hmac": mac}),
                )
                .await;
            assert_eq!(ok["valid"], true);
            let bad = t
                .write(
                    &format!("verify/{key}/{alg}"),
                    json!({"input": b64("other"), "hmac": mac}),
                )
                .await;
            assert_eq!(bad["valid"], false);
        }
    }
    // Deterministic under one key and version.
    let a = t.write("hmac/h", json!({"input": input})).await;
    let b = t
        .write("hmac/h", json!({"input": input, "algorithm": "sha2-256"}))
        .await;
    assert_eq!(a["hmac"], b["hmac"]);
    t.refused(
        Operation::Update,
        "hmac/h/sha3-256",
        json!({"input": input}),
    )
    .await;
    t.refused(
        Operation::Update,
        "keys/small",
        json!({"type": "hmac", "key_size": 8}),
    )
    .await;
    let out = t
        .write(
            "hmac/h",
            json!({"batch_input": [{"input": input}, {"input": "@@"}]}),
        )
        .await;
    assert!(out["batch_results"][1]["error"].is_string());
}

#[tokio::test]
async fn random_and_hash() {
    let t = T::new();
    let r = t.write("random", json!({})).await;
    assert_eq!(
        B64.decode(r["random_bytes"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );
    let r = t.write("random/64", json!({"format": "hex"})).await;
    assert_eq!(r["random_bytes"].as_str().unwrap().len(), 128);
    let r = t.write("random/platform/16", json!({})).await;
    assert_eq!(
        B64.decode(r["random_bytes"].as_str().unwrap())
            .unwrap()
            .len(),
        16
    );
    t.refused(Operation::Update, "random", json!({"bytes": 0}))
        .await;
    t.refused(Operation::Update, "random", json!({"format": "b32"}))
        .await;

    let h = t.write("hash", json!({"input": b64("hello")})).await;
    assert_eq!(
        h["sum"],
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    let h = t
        .write(
            "hash/sha2-512",
            json!({"input": b64("hello"), "format": "base64"}),
        )
        .await;
    assert_eq!(B64.decode(h["sum"].as_str().unwrap()).unwrap().len(), 64);
    let h = t
        .write(
            "hash",
            json!({"input": b64("hello"), "algorithm": "sha3-256"}),
        )
        .await;
    assert_eq!(
        h["sum"],
        "3338be694f50c5f338814986cdf0686453a888b84f424d792af4b9202398f392"
    );
    t.refused(
        Operation::Update,
        "hash/md5",
        json!({"input": b64("hello")}),
    )
    .await;
}

#[tokio::test]
async fn encrypt_touches_storage_only_to_reserve_counts() {
    let t = T::new();
    t.key("hot", json!({})).await;
    t.encrypt("hot", json!({"plaintext": b64("warm up")})).await;
    let (gets, puts) = (
        t.s.gets.load(Ordering::SeqCst),
        t.s.puts.load(Ordering::SeqCst),
    );
    for _ in 0..500 {
        t.encrypt("hot", json!({"plaintext": b64("x")})).await;
    }
    assert_eq!(
        t.s.gets.load(Ordering::SeqCst),
        gets,
        "no storage read per encrypt"
    );
    assert_eq!(
        t.s.puts.load(Ordering::SeqCst),
        puts,
        "no storage write within one reservation"
    );
    for _ in 0..600 {
        t.encrypt("hot", json!({"plaintext": b64("x")})).await;
    }
    assert_eq!(
        t.s.puts.load(Ordering::SeqCst),
        puts + 1,
        "one write per 1000 encryptions"
    );
}

#[tokio::test]
async fn key_rotates_itself_at_the_encryption_limit_counting_across_restarts() {
    let limits = Limits {
        encryption_limit: 5,
        persist_every: 2,
    };
    let t = T::with(limits);
    t.key("lim", json!({})).await;
    for _ in 0..3 {
        let ct = t.encrypt("lim", json!({"plaintext": b64("x")})).await;
        assert!(ct.starts_with("vault:v1:"));
    }
    // A restart assumes every reserved encryption happened (4 here), so
    // the fifth is the last under v1 and the sixth rotates.
    let t2 = t.restart(limits);
    assert!(t2
        .encrypt("lim", json!({"plaintext": b64("x")}))
        .await
        .starts_with("vault:v1:"));
    let ct = t2.encrypt("lim", json!({"plaintext": b64("x")})).await;
    assert!(ct.starts_with("vault:v2:"), "{ct}");
    assert_eq!(t2.read("keys/lim").await.unwrap()["latest_version"], 2);
    // A pinned version past its limit is refused rather than rotated.
    let msg = t2
        .refused(
            Operation::Update,
            "encrypt/lim",
            json!({"plaintext": "", "key_version": 1}),
        )
        .await;
    assert!(msg.contains("limit"), "{msg}");
    assert_eq!(t2.decrypt("lim", json!({"ciphertext": ct})).await, "x");
}

#[tokio::test]
async fn auto_rotate_period_rotates_from_periodic_across_restarts() {
    let t = T::new();
    t.key("auto", json!({"auto_rotate_period": "1h"})).await;
    t.key("manual", json!({})).await;
    t.b.periodic(t.s.as_ref()).await.unwrap();
    assert_eq!(t.read("keys/auto").await.unwrap()["latest_version"], 1);

    // Age the stored key by two hours, then "restart" and tick.
    let raw = t.s.inner.get("policy/auto").await.unwrap().unwrap();
    let mut rec: Value = serde_json::from_slice(&raw).unwrap();
    let old = (chrono::Utc::now() - chrono::Duration::hours(2)).to_rfc3339();
    rec["versions"]["1"]["created"] = json!(old);
    t.s.inner
        .put("policy/auto", &serde_json::to_vec(&rec).unwrap())
        .await
        .unwrap();

    let t2 = t.restart(Limits::default());
    t2.b.periodic(t2.s.as_ref()).await.unwrap();
    assert_eq!(t2.read("keys/auto").await.unwrap()["latest_version"], 2);
    assert_eq!(t2.read("keys/manual").await.unwrap()["latest_version"], 1);
    // The fresh version is not due yet.
    t2.b.periodic(t2.s.as_ref()).await.unwrap();
    assert_eq!(t2.read("keys/auto").await.unwrap()["latest_version"], 2);
}

#[tokio::test]
async fn existence_check_drives_create_vs_update() {
    let t = T::new();
    let r = req(Operation::Update, "encrypt/nothing");
    assert_eq!(
        t.b.existence_check(&r, t.s.as_ref()).await.unwrap(),
        Some(false)
    );
    t.key("nothing", json!({})).await;
    assert_eq!(
        t.b.existence_check(&r, t.s.as_ref()).await.unwrap(),
        Some(true)
    );
    let r = req(Operation::Update, "decrypt/nothing");
    assert_eq!(t.b.existence_check(&r, t.s.as_ref()).await.unwrap(), None);
}

#[tokio::test]
async fn stored_keys_are_not_plaintext_json_of_inputs() {
    // The stored record never carries plaintexts, only key material.
    let t = T::new();
    t.key("k", json!({})).await;
    t.encrypt("k", json!({"plaintext": b64("needle-in-storage")}))
        .await;
    let raw = t.s.inner.get("policy/k").await.unwrap().unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("needle"));
    let _ = t.s.inner.len();
}

fn sig_bytes(v: &Value) -> Vec<u8> {
    let s = v.as_str().expect("signature");
    B64.decode(s.strip_prefix("vault:v1:").expect("prefix"))
        .expect("base64")
}

/// An ecdsa-p384 key signed nothing without `hash_algorithm`: Vault's
/// default sha2-256 was refused. Now P-384 defaults to sha2-384 (P-256 and
/// P-521 keep sha2-256), and a refused hash names the supported ones.
#[tokio::test]
async fn ecdsa_p384_signs_without_hash_algorithm() {
    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_ASN1};
    let t = T::new();
    let input = b64("p384 message");
    t.key("p384", json!({"type": "ecdsa-p384"})).await;
    let out = t.write("sign/p384", json!({ "input": input })).await;
    for body in [
        json!({"input": input, "signature": out["signature"]}),
        json!({"input": input, "signature": out["signature"], "hash_algorithm": "sha2-384"}),
    ] {
        assert_eq!(t.write("verify/p384", body).await["valid"], true);
    }
    // Anyone with the public key checks it as ECDSA P-384 over SHA-384.
    let spki = super::pki::der_of(
        t.read("export/public-key/p384").await.unwrap()["keys"]["1"]
            .as_str()
            .unwrap(),
    );
    let point = &spki[spki.len() - 97..];
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_ASN1, point)
        .verify(b"p384 message", &sig_bytes(&out["signature"]))
        .expect("sha2-384 signature");
    let msg = t
        .refused(
            Operation::Update,
            "sign/p384",
            json!({"input": input, "hash_algorithm": "sha2-256"}),
        )
        .await;
    assert!(msg.contains("sha2-384"), "{msg}");

    // P-521 keeps Vault's default, sha2-256.
    t.key("p521", json!({"type": "ecdsa-p521"})).await;
    let out = t.write("sign/p521", json!({ "input": input })).await;
    let ok = t
        .write(
            "verify/p521",
            json!({"input": input, "signature": out["signature"], "hash_algorithm": "sha2-256"}),
        )
        .await;
    assert_eq!(ok["valid"], true);
}

/// Vault signs RSA-PSS with the largest salt (Go's `PSSSaltLengthAuto`)
/// and verifies any salt length; tresor verified only a digest-length
/// salt, so signatures made by Vault with the same key did not verify.
#[tokio::test]
async fn rsa_pss_verify_accepts_vaults_max_length_salt() {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeyPair as RsaKeyPair;
    use aws_lc_rs::signature::{RsaPssSaltLength, RsaSignatureEncoding, RSA_PSS_SHA256};
    static PSS_MAX: RsaSignatureEncoding =
        RSA_PSS_SHA256.with_pss_salt_length(RsaPssSaltLength::Max);
    let t = T::new();
    t.key("rsa", json!({"type": "rsa-2048", "exportable": true}))
        .await;
    let pkcs8 = super::pki::der_of(
        t.read("export/signing-key/rsa").await.unwrap()["keys"]["1"]
            .as_str()
            .unwrap(),
    );
    let kp = RsaKeyPair::from_pkcs8(&pkcs8).unwrap();
    let mut sig = vec![0u8; kp.public_modulus_len()];
    kp.sign(&PSS_MAX, &SystemRandom::new(), b"vault made this", &mut sig)
        .unwrap();
    let signature = format!("vault:v1:{}", B64.encode(&sig));
    let input = b64("vault made this");
    let ok = t
        .write(
            "verify/rsa",
            json!({"input": input, "signature": signature}),
        )
        .await;
    assert_eq!(ok["valid"], true);
    let bad = t
        .write(
            "verify/rsa",
            json!({"input": b64("something else"), "signature": signature}),
        )
        .await;
    assert_eq!(bad["valid"], false);
    // Its own digest-length signatures still verify.
    let own = t.write("sign/rsa", json!({ "input": input })).await;
    let ok = t
        .write(
            "verify/rsa",
            json!({"input": input, "signature": own["signature"]}),
        )
        .await;
    assert_eq!(ok["valid"], true);
}
