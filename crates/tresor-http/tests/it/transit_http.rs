//! Transit through the whole server: mount, keys, encrypt/decrypt and
//! sign/verify over HTTP with Vault's paths and envelope.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::call_root as call;

use crate::common::dev;
use serde_json::json;

const B64: &str = "aGVsbG8gdHJhbnNpdA=="; // "hello transit"

#[tokio::test]
async fn transit_over_http() {
    let s = dev().await;
    let (st, body) = call(
        &s,
        "POST",
        "sys/mounts/transit",
        Some(json!({"type": "transit"})),
    )
    .await;
    assert!(st == 204 || st == 200, "{st} {body}");

    let (st, body) = call(&s, "POST", "transit/keys/app", Some(json!({}))).await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = call(&s, "GET", "transit/keys/app", None).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["data"]["type"], "aes256-gcm96");
    assert_eq!(body["data"]["latest_version"], 1);
    let (st, body) = call(&s, "LIST", "transit/keys", None).await;
    assert_eq!((st, body["data"]["keys"].clone()), (200, json!(["app"])));

    let (st, body) = call(
        &s,
        "POST",
        "transit/encrypt/app",
        Some(json!({"plaintext": B64})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let ct = body["data"]["ciphertext"].as_str().unwrap().to_string();
    assert!(ct.starts_with("vault:v1:"));
    let (st, body) = call(
        &s,
        "POST",
        "transit/decrypt/app",
        Some(json!({"ciphertext": ct})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["data"]["plaintext"], B64);

    // A tampered ciphertext is a 400 with Vault's error body.
    let bad = format!("{}A", &ct[..ct.len() - 2]);
    let (st, body) = call(
        &s,
        "POST",
        "transit/decrypt/app",
        Some(json!({"ciphertext": bad})),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    assert!(body["errors"].is_array());

    // Batch with one bad item: 400, results still in data.
    let (st, body) = call(
        &s,
        "POST",
        "transit/decrypt/app",
        Some(json!({"batch_input": [{"ciphertext": ct}, {"ciphertext": "vault:v1:AAAA"}]})),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    assert_eq!(body["data"]["batch_results"][0]["plaintext"], B64);
    assert!(body["data"]["batch_results"][1]["error"].is_string());

    // Sign and verify with an Ed25519 key and an ECDSA key (hash in the URL).
    for (name, ty, suffix) in [("signer", "ed25519", ""), ("ec", "ecdsa-p256", "/sha2-256")] {
        let (st, body) = call(
            &s,
            "POST",
            &format!("transit/keys/{name}"),
            Some(json!({"type": ty})),
        )
        .await;
        assert_eq!(st, 200, "{body}");
        let (st, body) = call(
            &s,
            "POST",
            &format!("transit/sign/{name}{suffix}"),
            Some(json!({"input": B64})),
        )
        .await;
        assert_eq!(st, 200, "{body}");
        let sig = body["data"]["signature"].clone();
        let (st, body) = call(
            &s,
            "POST",
            &format!("transit/verify/{name}{suffix}"),
            Some(json!({"input": B64, "signature": sig})),
        )
        .await;
        assert_eq!(
            (st, body["data"]["valid"].clone()),
            (200, json!(true)),
            "{body}"
        );
        let (_, body) = call(
            &s,
            "POST",
            &format!("transit/verify/{name}{suffix}"),
            Some(json!({"input": "b3RoZXI=", "signature": sig})),
        )
        .await;
        assert_eq!(body["data"]["valid"], false);
    }

    // Delete is refused until allowed.
    let (st, _) = call(&s, "DELETE", "transit/keys/app", None).await;
    assert_eq!(st, 400);
    let (st, _) = call(
        &s,
        "POST",
        "transit/keys/app/config",
        Some(json!({"deletion_allowed": true})),
    )
    .await;
    assert_eq!(st, 200);
    let (st, _) = call(&s, "DELETE", "transit/keys/app", None).await;
    assert_eq!(st, 204);
    let (st, _) = call(&s, "GET", "transit/keys/app", None).await;
    assert_eq!(st, 404);
}

// ----- the rest of the API, path by path --------------------------------------

use crate::common::TestServer;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use serde_json::Value;

/// A server with transit mounted at `transit/`.
async fn transit() -> TestServer {
    let s = dev().await;
    let (st, b) = call(
        &s,
        "POST",
        "sys/mounts/transit",
        Some(json!({"type": "transit"})),
    )
    .await;
    assert!(st == 204 || st == 200, "{st} {b}");
    s
}

/// `call` that insists on `want` and returns the whole body.
async fn expect(s: &TestServer, want: u16, verb: &str, path: &str, body: Value) -> Value {
    let body = if body.is_null() { None } else { Some(body) };
    let (st, b) = call(s, verb, path, body).await;
    assert_eq!(st, want, "{verb} {path}: {b}");
    b
}

/// `call` that insists on 200 and returns `data`.
async fn ok(s: &TestServer, verb: &str, path: &str, body: Value) -> Value {
    expect(s, 200, verb, path, body).await["data"].clone()
}

/// A 400 whose one error message is returned.
async fn refused(s: &TestServer, path: &str, body: Value) -> String {
    let b = expect(s, 400, "POST", path, body).await;
    b["errors"][0].as_str().unwrap_or_default().to_string()
}

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

fn unb64(v: &Value) -> Vec<u8> {
    STANDARD
        .decode(v.as_str().expect("string"))
        .expect("base64")
}

#[tokio::test]
async fn transit_export_kinds_and_non_exportable_refusal() {
    let s = transit().await;
    for (name, body) in [
        ("aes", json!({"exportable": true})),
        (
            "mac",
            json!({"type": "hmac", "exportable": true, "key_size": 64}),
        ),
        ("ed", json!({"type": "ed25519"})),
        ("locked", json!({})),
    ] {
        ok(&s, "POST", &format!("transit/keys/{name}"), body).await;
    }
    // (path, key bytes after base64); an Ed25519 public key is its raw 32
    // bytes in base64, as in Vault.
    let cases = [
        ("encryption-key/aes", 32),
        ("hmac-key/aes", 32),
        ("hmac-key/mac", 64),
        ("public-key/ed", 32),
    ];
    for (path, len) in cases {
        let d = ok(&s, "GET", &format!("transit/export/{path}"), Value::Null).await;
        let name = path.split('/').nth(1).unwrap();
        assert_eq!(d["name"], name, "{d}");
        let key = &d["keys"]["1"];
        assert_eq!(unb64(key).len(), len, "{path}: {d}");
        // One version by number and `latest` answer the same.
        for v in ["1", "latest"] {
            let one = ok(
                &s,
                "GET",
                &format!("transit/export/{path}/{v}"),
                Value::Null,
            )
            .await;
            assert_eq!(one["keys"]["1"], *key, "{path}/{v}");
        }
    }
    // Private material of a key that is not exportable, and kinds that do
    // not fit the key type: 400, never the material.
    for path in [
        "encryption-key/locked",
        "hmac-key/locked",
        "signing-key/ed",
        "signing-key/aes",
        "public-key/aes",
        "encryption-key/ed",
    ] {
        let (st, b) = call(&s, "GET", &format!("transit/export/{path}"), None).await;
        assert_eq!(st, 400, "{path}: {b}");
        assert!(b.get("data").is_none_or(Value::is_null), "{path}: {b}");
    }
    let (_, b) = call(&s, "GET", "transit/export/encryption-key/locked", None).await;
    assert!(
        b["errors"][0].as_str().unwrap().contains("exportable"),
        "{b}"
    );
    let (st, _) = call(&s, "GET", "transit/export/encryption-key/aes/7", None).await;
    assert_eq!(st, 400);
    let (st, _) = call(&s, "GET", "transit/export/encryption-key/nokey", None).await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn transit_trim_backup_and_restore() {
    let s = transit().await;
    ok(
        &s,
        "POST",
        "transit/keys/k",
        json!({"exportable": true, "allow_plaintext_backup": true}),
    )
    .await;
    let pt = b64("kept across backup");
    let ct1 =
        ok(&s, "POST", "transit/encrypt/k", json!({"plaintext": pt})).await["ciphertext"].clone();
    for _ in 0..3 {
        ok(&s, "POST", "transit/keys/k/rotate", Value::Null).await;
    }
    let ct4 =
        ok(&s, "POST", "transit/encrypt/k", json!({"plaintext": pt})).await["ciphertext"].clone();
    assert!(ct4.as_str().unwrap().starts_with("vault:v4:"), "{ct4}");

    // Trim is bounded by the minimum decryption and encryption versions.
    let msg = refused(
        &s,
        "transit/keys/k/trim",
        json!({"min_available_version": 3}),
    )
    .await;
    assert!(msg.contains("min_decryption_version"), "{msg}");
    ok(
        &s,
        "POST",
        "transit/keys/k/config",
        json!({"min_decryption_version": 3, "min_encryption_version": 4}),
    )
    .await;
    let d = ok(
        &s,
        "POST",
        "transit/keys/k/trim",
        json!({"min_available_version": 3}),
    )
    .await;
    assert_eq!(d["min_available_version"], 3, "{d}");
    let versions: Vec<&String> = d["keys"].as_object().unwrap().keys().collect();
    assert_eq!(versions, ["3", "4"], "{d}");
    // Trimmed versions cannot come back, nor be decrypted with.
    let msg = refused(
        &s,
        "transit/keys/k/config",
        json!({"min_decryption_version": 1}),
    )
    .await;
    assert!(msg.contains("trimmed"), "{msg}");
    refused(&s, "transit/decrypt/k", json!({"ciphertext": ct1})).await;
    refused(
        &s,
        "transit/keys/k/trim",
        json!({"min_available_version": 2}),
    )
    .await;
    let exported = ok(&s, "GET", "transit/export/encryption-key/k", Value::Null).await;
    assert_eq!(exported["keys"].as_object().unwrap().len(), 2, "{exported}");

    // Backup, restore under a new name and over the old one.
    let backup = ok(&s, "GET", "transit/backup/k", Value::Null).await["backup"].clone();
    assert!(!unb64(&backup).is_empty());
    expect(
        &s,
        204,
        "POST",
        "transit/restore/k2",
        json!({"backup": backup}),
    )
    .await;
    let d = ok(&s, "POST", "transit/decrypt/k2", json!({"ciphertext": ct4})).await;
    assert_eq!(d["plaintext"], pt);
    let d = ok(&s, "GET", "transit/keys/k2", Value::Null).await;
    assert_eq!(
        (
            d["name"].clone(),
            d["latest_version"].clone(),
            d["min_available_version"].clone()
        ),
        (json!("k2"), json!(4), json!(3)),
        "{d}"
    );
    let msg = refused(&s, "transit/restore/k", json!({"backup": backup})).await;
    assert!(msg.contains("force"), "{msg}");
    expect(
        &s,
        204,
        "POST",
        "transit/restore",
        json!({"backup": backup, "name": "k3"}),
    )
    .await;
    expect(
        &s,
        204,
        "POST",
        "transit/restore/k",
        json!({"backup": backup, "force": true}),
    )
    .await;
    refused(
        &s,
        "transit/restore/k4",
        json!({"backup": "bm90IGEgYmFja3Vw"}),
    )
    .await;

    // No backup without allow_plaintext_backup.
    ok(
        &s,
        "POST",
        "transit/keys/plain",
        json!({"exportable": true}),
    )
    .await;
    let (st, b) = call(&s, "GET", "transit/backup/plain", None).await;
    assert_eq!(st, 400, "{b}");
}

#[tokio::test]
async fn transit_datakey_hmac_random_and_hash() {
    let s = transit().await;
    ok(&s, "POST", "transit/keys/dk", json!({})).await;
    for (bits, len) in [(128, 16), (256, 32), (512, 64)] {
        let d = ok(
            &s,
            "POST",
            "transit/datakey/plaintext/dk",
            json!({"bits": bits}),
        )
        .await;
        let plain = unb64(&d["plaintext"]);
        assert_eq!(
            (plain.len(), d["key_version"].clone()),
            (len, json!(1)),
            "{d}"
        );
        let back = ok(
            &s,
            "POST",
            "transit/decrypt/dk",
            json!({"ciphertext": d["ciphertext"]}),
        )
        .await;
        assert_eq!(unb64(&back["plaintext"]), plain);
        let w = ok(
            &s,
            "POST",
            "transit/datakey/wrapped/dk",
            json!({"bits": bits}),
        )
        .await;
        assert!(w.get("plaintext").is_none(), "wrapped data key leaked: {w}");
        assert!(w["ciphertext"].as_str().unwrap().starts_with("vault:v1:"));
    }
    refused(&s, "transit/datakey/plaintext/dk", json!({"bits": 100})).await;
    // Encrypting to a missing key creates it (aes256-gcm96), as in Vault;
    // decrypting with one is refused.
    let ct = ok(
        &s,
        "POST",
        "transit/encrypt/upserted",
        json!({"plaintext": b64("x")}),
    )
    .await["ciphertext"]
        .clone();
    let d = ok(&s, "GET", "transit/keys/upserted", Value::Null).await;
    assert_eq!(
        (d["type"].clone(), d["latest_version"].clone()),
        (json!("aes256-gcm96"), json!(1)),
        "{d}"
    );
    refused(&s, "transit/decrypt/nokey", json!({"ciphertext": ct})).await;
    refused(&s, "transit/datakey/plaintext/nokey", json!({})).await;

    // HMAC: a versioned tag that verifies, refuses another input, and equals
    // OpenSSL's HMAC under the exported key.
    ok(
        &s,
        "POST",
        "transit/keys/mac",
        json!({"type": "hmac", "exportable": true}),
    )
    .await;
    for alg in ["sha2-256", "sha2-512"] {
        let input = b64("mac me");
        let tag = ok(
            &s,
            "POST",
            &format!("transit/hmac/mac/{alg}"),
            json!({"input": input}),
        )
        .await["hmac"]
            .clone();
        assert!(tag.as_str().unwrap().starts_with("vault:v1:"), "{tag}");
        let d = ok(
            &s,
            "POST",
            &format!("transit/verify/mac/{alg}"),
            json!({"input": input, "hmac": tag}),
        )
        .await;
        assert_eq!(d["valid"], true, "{d}");
        let d = ok(
            &s,
            "POST",
            &format!("transit/verify/mac/{alg}"),
            json!({"input": b64("other"), "hmac": tag}),
        )
        .await;
        assert_eq!(d["valid"], false, "{d}");
        let key =
            ok(&s, "GET", "transit/export/hmac-key/mac/1", Value::Null).await["keys"]["1"].clone();
        if let Some(theirs) = openssl_hmac(alg, &unb64(&key), b"mac me") {
            let ours = STANDARD
                .decode(tag.as_str().unwrap().trim_start_matches("vault:v1:"))
                .unwrap();
            assert_eq!(ours, theirs, "{alg}");
        }
    }

    // random: body or URL bytes, base64 (default) or hex.
    let d = ok(&s, "POST", "transit/random/24", json!({})).await;
    assert_eq!(unb64(&d["random_bytes"]).len(), 24, "{d}");
    let d = ok(
        &s,
        "POST",
        "transit/random",
        json!({"bytes": 16, "format": "hex"}),
    )
    .await;
    let hex = d["random_bytes"].as_str().unwrap();
    assert!(
        hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{d}"
    );
    let d = ok(
        &s,
        "POST",
        "transit/random/platform/8",
        json!({"format": "base64"}),
    )
    .await;
    assert_eq!(unb64(&d["random_bytes"]).len(), 8);
    let a = ok(&s, "POST", "transit/random", json!({})).await;
    let b = ok(&s, "POST", "transit/random", json!({})).await;
    assert_eq!(unb64(&a["random_bytes"]).len(), 32);
    assert_ne!(a["random_bytes"], b["random_bytes"]);
    refused(&s, "transit/random", json!({"format": "octal"})).await;
    refused(&s, "transit/random/0", json!({})).await;

    // hash of "abc" against the published test vectors.
    let abc = b64("abc");
    for (alg, sum) in [
        ("sha2-224", "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"),
        ("sha2-256", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        ("sha2-384", "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"),
        ("sha2-512", "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"),
        ("sha3-256", "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"),
        ("sha3-384", "ec01498288516fc926459f58e2c6ad8df9b473cb0fc08c2596da7cf0e49be4b298d88cea927ac7f539f1edf228376d25"),
        ("sha3-512", "b751850b1a57168a5693cd924b6b096e08f621827444f70d884f5d0240d2712e10e116e9192af3c91a7ec57647e3934057340b4cf408d5a56592f8274eec53f0"),
    ] {
        let d = ok(&s, "POST", &format!("transit/hash/{alg}"), json!({"input": abc})).await;
        assert_eq!(d["sum"], sum, "{alg}");
        let d = ok(&s, "POST", "transit/hash", json!({"input": abc, "algorithm": alg, "format": "base64"})).await;
        assert_eq!(hex_of(&unb64(&d["sum"])), sum, "{alg} base64");
    }
    let d = ok(&s, "POST", "transit/hash", json!({"input": abc})).await;
    assert_eq!(
        d["sum"],
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    refused(&s, "transit/hash/md5", json!({"input": abc})).await;
    // aws-lc-rs has no SHA3-224: refused by name rather than answered wrong.
    let msg = refused(&s, "transit/hash/sha3-224", json!({"input": abc})).await;
    assert!(msg.contains("sha3-224"), "{msg}");
    refused(&s, "transit/hash", json!({"input": "%%%"})).await;
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC of `data` by the `openssl` command line, or None (with a notice)
/// when it is not installed.
fn openssl_hmac(alg: &str, key: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let digest = alg.replace("sha2-", "SHA");
    let child = Command::new("openssl")
        .args([
            "mac",
            "-digest",
            &digest,
            "-macopt",
            &format!("hexkey:{}", hex_of(key)),
            "-binary",
            "HMAC",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("NOTICE: no `openssl` command line on PATH; HMAC cross-check skipped");
        return None;
    };
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl mac failed");
    Some(out.stdout)
}

#[tokio::test]
async fn transit_batches_derived_convergent_and_associated_data() {
    let s = transit().await;
    // Batch encrypt and decrypt keep order and references.
    ok(&s, "POST", "transit/keys/b", json!({})).await;
    let items: Vec<Value> = (0..3)
        .map(|i| json!({"plaintext": b64(&format!("item {i}")), "reference": format!("r{i}")}))
        .collect();
    let d = ok(
        &s,
        "POST",
        "transit/encrypt/b",
        json!({"batch_input": items}),
    )
    .await;
    let results = d["batch_results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{d}");
    let cts: Vec<Value> = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            assert_eq!(
                (r["reference"].clone(), r["key_version"].clone()),
                (json!(format!("r{i}")), json!(1)),
                "{r}"
            );
            json!({"ciphertext": r["ciphertext"], "reference": r["reference"]})
        })
        .collect();
    let d = ok(&s, "POST", "transit/decrypt/b", json!({"batch_input": cts})).await;
    for (i, r) in d["batch_results"].as_array().unwrap().iter().enumerate() {
        assert_eq!(r["plaintext"], b64(&format!("item {i}")), "{r}");
        assert_eq!(r["reference"], format!("r{i}"));
    }

    // Derived keys: context required; a wrong context is a 400 that says
    // no more than a tampered ciphertext does.
    ok(&s, "POST", "transit/keys/derived", json!({"derived": true})).await;
    let secret = "derived secret";
    refused(
        &s,
        "transit/encrypt/derived",
        json!({"plaintext": b64(secret)}),
    )
    .await;
    let ctx = b64("tenant-1");
    let ct = ok(
        &s,
        "POST",
        "transit/encrypt/derived",
        json!({"plaintext": b64(secret), "context": ctx}),
    )
    .await["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();
    let d = ok(
        &s,
        "POST",
        "transit/decrypt/derived",
        json!({"ciphertext": ct, "context": ctx}),
    )
    .await;
    assert_eq!(d["plaintext"], b64(secret));
    let wrong = refused(
        &s,
        "transit/decrypt/derived",
        json!({"ciphertext": ct, "context": b64("tenant-2")}),
    )
    .await;
    let tampered = format!(
        "{}{}",
        &ct[..ct.len() - 4],
        if ct.ends_with("AAAA") { "BBBB" } else { "AAAA" }
    );
    let bad = refused(
        &s,
        "transit/decrypt/derived",
        json!({"ciphertext": tampered, "context": ctx}),
    )
    .await;
    assert_eq!(
        wrong, bad,
        "a wrong context must read like any failed decryption"
    );
    assert!(
        !wrong.contains(secret) && !wrong.contains(&b64(secret)),
        "{wrong}"
    );
    refused(&s, "transit/decrypt/derived", json!({"ciphertext": ct})).await;

    // One bad item: 400 with every result in place, or the caller's
    // partial_failure_response_code.
    let mixed = json!([{"plaintext": b64("fine")}, {"plaintext": "%%% not base64"}]);
    for (extra, want) in [
        (json!({}), 400),
        (json!({"partial_failure_response_code": 207}), 207),
    ] {
        let mut body = json!({"batch_input": mixed});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let b = expect(&s, want, "POST", "transit/encrypt/b", body).await;
        let r = &b["data"]["batch_results"];
        assert!(
            r[0]["ciphertext"].is_string() && r[1]["error"].is_string(),
            "{b}"
        );
    }

    // Batch HMAC (every key type has an HMAC key) and batch HMAC verify.
    let inputs = json!([{"input": b64("m1")}, {"input": b64("m2")}]);
    let d = ok(&s, "POST", "transit/hmac/b", json!({"batch_input": inputs})).await;
    let tags: Vec<Value> = d["batch_results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["hmac"].clone())
        .collect();
    assert!(
        tags.iter()
            .all(|t| t.as_str().unwrap().starts_with("vault:v1:"))
            && tags[0] != tags[1],
        "{d}"
    );
    let checks =
        json!([{"input": b64("m1"), "hmac": tags[0]}, {"input": b64("m2"), "hmac": tags[0]}]);
    let d = ok(
        &s,
        "POST",
        "transit/verify/b",
        json!({"batch_input": checks}),
    )
    .await;
    let valid: Vec<Value> = d["batch_results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["valid"].clone())
        .collect();
    assert_eq!(valid, [json!(true), json!(false)], "{d}");

    // Convergent encryption: same plaintext and context, same ciphertext.
    refused(
        &s,
        "transit/keys/conv-bad",
        json!({"convergent_encryption": true}),
    )
    .await;
    ok(
        &s,
        "POST",
        "transit/keys/conv",
        json!({"derived": true, "convergent_encryption": true}),
    )
    .await;
    let enc = |ctx: &'static str| {
        let s = &s;
        async move {
            ok(
                s,
                "POST",
                "transit/encrypt/conv",
                json!({"plaintext": b64("same"), "context": b64(ctx)}),
            )
            .await["ciphertext"]
                .clone()
        }
    };
    let (a1, a2, b1) = (enc("ctx-a").await, enc("ctx-a").await, enc("ctx-b").await);
    assert_eq!(a1, a2, "convergent encryption is deterministic");
    assert_ne!(a1, b1, "another context gives another ciphertext");
    let d = ok(
        &s,
        "POST",
        "transit/decrypt/conv",
        json!({"ciphertext": b1, "context": b64("ctx-b")}),
    )
    .await;
    assert_eq!(d["plaintext"], b64("same"));
    // Without convergence, two encryptions differ.
    let x1 = ok(
        &s,
        "POST",
        "transit/encrypt/b",
        json!({"plaintext": b64("same")}),
    )
    .await["ciphertext"]
        .clone();
    let x2 = ok(
        &s,
        "POST",
        "transit/encrypt/b",
        json!({"plaintext": b64("same")}),
    )
    .await["ciphertext"]
        .clone();
    assert_ne!(x1, x2);
    // A ciphertext taken to another key is refused like a tampered one.
    ok(&s, "POST", "transit/keys/other", json!({})).await;
    let moved = refused(&s, "transit/decrypt/other", json!({"ciphertext": x1})).await;
    assert!(!moved.contains(&b64("same")), "{moved}");
    // Single answers carry the version used.
    let d = ok(
        &s,
        "POST",
        "transit/encrypt/other",
        json!({"plaintext": b64("v")}),
    )
    .await;
    assert_eq!(d["key_version"], 1, "{d}");
    let d = ok(&s, "POST", "transit/rewrap/b", json!({"ciphertext": x1})).await;
    assert_eq!(d["key_version"], 1, "{d}");

    // associated_data binds the ciphertext for every AEAD key type.
    for ty in ["aes128-gcm96", "aes256-gcm96", "chacha20-poly1305"] {
        let path = format!("transit/keys/ad-{ty}");
        ok(&s, "POST", &path, json!({"type": ty})).await;
        let ad = b64("header-v1");
        let ct = ok(
            &s,
            "POST",
            &format!("transit/encrypt/ad-{ty}"),
            json!({"plaintext": b64(secret), "associated_data": ad}),
        )
        .await["ciphertext"]
            .clone();
        let d = ok(
            &s,
            "POST",
            &format!("transit/decrypt/ad-{ty}"),
            json!({"ciphertext": ct, "associated_data": ad}),
        )
        .await;
        assert_eq!(d["plaintext"], b64(secret), "{ty}");
        for other in [
            json!({"ciphertext": ct}),
            json!({"ciphertext": ct, "associated_data": b64("header-v2")}),
        ] {
            let msg = refused(&s, &format!("transit/decrypt/ad-{ty}"), other).await;
            assert!(!msg.contains(secret), "{ty}: {msg}");
        }
    }
}

#[tokio::test]
async fn transit_signing_batch_prehashed_jws_and_min_decryption_version() {
    let s = transit().await;
    ok(&s, "POST", "transit/keys/ed", json!({"type": "ed25519"})).await;
    ok(&s, "POST", "transit/keys/ec", json!({"type": "ecdsa-p256"})).await;

    // Batch sign and verify; one forged signature fails alone.
    let inputs: Vec<Value> = (0..3)
        .map(|i| json!({"input": b64(&format!("doc {i}"))}))
        .collect();
    let d = ok(
        &s,
        "POST",
        "transit/sign/ed",
        json!({"batch_input": inputs}),
    )
    .await;
    let sigs: Vec<Value> = d["batch_results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["signature"].clone())
        .collect();
    assert_eq!(sigs.len(), 3, "{d}");
    assert!(
        sigs.iter()
            .all(|s| s.as_str().unwrap().starts_with("vault:v1:")),
        "{d}"
    );
    let mut checks: Vec<Value> = (0..3)
        .map(|i| json!({"input": b64(&format!("doc {i}")), "signature": sigs[i]}))
        .collect();
    checks[2]["signature"] = sigs[0].clone();
    let d = ok(
        &s,
        "POST",
        "transit/verify/ed",
        json!({"batch_input": checks}),
    )
    .await;
    let valid: Vec<Value> = d["batch_results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["valid"].clone())
        .collect();
    assert_eq!(valid, [json!(true), json!(true), json!(false)], "{d}");

    // Prehashed: signing SHA-256("doc") with prehashed=true is a signature
    // over "doc" itself.
    let digest = ok(
        &s,
        "POST",
        "transit/hash/sha2-256",
        json!({"input": b64("doc"), "format": "base64"}),
    )
    .await["sum"]
        .clone();
    let sig = ok(
        &s,
        "POST",
        "transit/sign/ec/sha2-256",
        json!({"input": digest, "prehashed": true}),
    )
    .await["signature"]
        .clone();
    let d = ok(
        &s,
        "POST",
        "transit/verify/ec/sha2-256",
        json!({"input": b64("doc"), "signature": sig}),
    )
    .await;
    assert_eq!(d["valid"], true, "{d}");
    let d = ok(
        &s,
        "POST",
        "transit/verify/ec/sha2-256",
        json!({"input": digest, "prehashed": true, "signature": sig}),
    )
    .await;
    assert_eq!(d["valid"], true, "{d}");
    // A prehashed input of the wrong length for the hash is refused.
    refused(
        &s,
        "transit/sign/ec/sha2-256",
        json!({"input": b64("short"), "prehashed": true}),
    )
    .await;

    // JWS marshaling: raw r||s, base64url without the ASN.1 wrapper.
    let sig = ok(
        &s,
        "POST",
        "transit/sign/ec",
        json!({"input": b64("doc"), "marshaling_algorithm": "jws"}),
    )
    .await["signature"]
        .as_str()
        .unwrap()
        .to_string();
    let raw = sig.strip_prefix("vault:v1:").unwrap();
    assert!(!raw.contains(['+', '/', '=']), "not base64url: {raw}");
    let bytes = URL_SAFE
        .decode(format!("{raw}{}", "=".repeat((4 - raw.len() % 4) % 4)))
        .unwrap();
    assert_eq!(bytes.len(), 64, "P-256 JWS signature is r||s");
    let d = ok(
        &s,
        "POST",
        "transit/verify/ec",
        json!({"input": b64("doc"), "signature": sig, "marshaling_algorithm": "jws"}),
    )
    .await;
    assert_eq!(d["valid"], true, "{d}");
    // A JWS signature is not ASN.1: refused as malformed, as Vault does.
    refused(
        &s,
        "transit/verify/ec",
        json!({"input": b64("doc"), "signature": sig}),
    )
    .await;
    refused(
        &s,
        "transit/sign/ec",
        json!({"input": b64("doc"), "marshaling_algorithm": "pem"}),
    )
    .await;

    // min_decryption_version: older ciphertexts and signatures are refused.
    ok(&s, "POST", "transit/keys/old", json!({})).await;
    let ct1 = ok(
        &s,
        "POST",
        "transit/encrypt/old",
        json!({"plaintext": b64("v1 data")}),
    )
    .await["ciphertext"]
        .clone();
    let sig1 = ok(
        &s,
        "POST",
        "transit/sign/ed",
        json!({"input": b64("v1 doc")}),
    )
    .await["signature"]
        .clone();
    ok(&s, "POST", "transit/keys/old/rotate", Value::Null).await;
    ok(&s, "POST", "transit/keys/ed/rotate", Value::Null).await;
    let ct2 = ok(
        &s,
        "POST",
        "transit/encrypt/old",
        json!({"plaintext": b64("v2 data")}),
    )
    .await["ciphertext"]
        .clone();
    assert!(ct2.as_str().unwrap().starts_with("vault:v2:"));
    let d = ok(
        &s,
        "POST",
        "transit/keys/old/config",
        json!({"min_decryption_version": 2}),
    )
    .await;
    assert_eq!(d["min_decryption_version"], 2, "{d}");
    let msg = refused(&s, "transit/decrypt/old", json!({"ciphertext": ct1})).await;
    assert!(
        !msg.contains(&b64("v1 data")) && !msg.contains("v1 data"),
        "{msg}"
    );
    let d = ok(
        &s,
        "POST",
        "transit/decrypt/old",
        json!({"ciphertext": ct2}),
    )
    .await;
    assert_eq!(d["plaintext"], b64("v2 data"));
    // Rewrap of the refused version is refused too.
    refused(&s, "transit/rewrap/old", json!({"ciphertext": ct1})).await;
    ok(
        &s,
        "POST",
        "transit/keys/ed/config",
        json!({"min_decryption_version": 2}),
    )
    .await;
    let msg = refused(
        &s,
        "transit/verify/ed",
        json!({"input": b64("v1 doc"), "signature": sig1}),
    )
    .await;
    assert!(msg.contains("too old"), "{msg}");
    // Encrypting below min_encryption_version is refused.
    ok(
        &s,
        "POST",
        "transit/keys/old/config",
        json!({"min_encryption_version": 2}),
    )
    .await;
    refused(
        &s,
        "transit/encrypt/old",
        json!({"plaintext": b64("x"), "key_version": 1}),
    )
    .await;
}
