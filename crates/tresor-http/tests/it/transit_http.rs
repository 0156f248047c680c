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
