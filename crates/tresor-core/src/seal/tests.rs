use std::sync::Arc;

use tresor_sdk::Storage as _;
use tresor_storage::{MemoryStorage, Storage as Physical};

use super::*;

fn manager() -> (Arc<MemoryStorage>, Arc<Barrier>, SealManager) {
    let phys = Arc::new(MemoryStorage::new());
    let barrier = Barrier::new(phys.clone());
    let seal = SealManager::new(phys.clone(), barrier.clone());
    (phys, barrier, seal)
}

async fn unseal_with(
    seal: &SealManager,
    shares: &[&Zeroizing<Vec<u8>>],
) -> Result<UnsealOutcome, CoreError> {
    let mut last = None;
    for s in shares {
        last = Some(seal.submit_unseal_key(s).await?);
    }
    last.ok_or(CoreError::Internal("no shares".into()))
}

#[tokio::test]
async fn init_leaves_sealed_and_writes_plaintext_config() {
    let (phys, barrier, seal) = manager();
    assert_eq!(seal.config().await.unwrap(), None);
    let shares = seal.initialize(5, 3).await.unwrap();
    assert_eq!(shares.len(), 5);
    assert!(shares.iter().all(|s| s.len() == 33));
    assert!(seal.is_sealed());
    assert!(barrier.is_sealed());

    let raw = phys.get(SEAL_CONFIG_PATH).await.unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(json["type"], "shamir");
    assert_eq!(json["secret_shares"], 5);
    assert_eq!(json["secret_threshold"], 3);
    assert!(json["nonce"].is_string());

    // Also visible to a fresh manager (no cache).
    let other = SealManager::new(phys.clone(), Barrier::new(phys.clone()));
    assert_eq!(other.config().await.unwrap().unwrap().secret_threshold, 3);

    assert!(matches!(
        seal.initialize(5, 3).await,
        Err(CoreError::AlreadyInitialized)
    ));
}

#[tokio::test]
async fn init_parameters_validated() {
    let (_p, _b, seal) = manager();
    for (n, t, field) in [
        (0, 0, "secret_shares"),
        (3, 0, "secret_threshold"),
        (3, 4, "secret_threshold"),
        (3, 1, "secret_threshold"),
    ] {
        match seal.initialize(n, t).await {
            Err(CoreError::BadRequest(m)) => assert!(m.contains(field), "{n}/{t}: {m}"),
            other => panic!("{n}/{t}: {other:?}"),
        }
    }
    assert_eq!(seal.config().await.unwrap(), None);
}

#[tokio::test]
async fn unseal_in_any_order() {
    let (_p, barrier, seal) = manager();
    let shares = seal.initialize(5, 3).await.unwrap();
    for order in [[0, 1, 2], [4, 2, 0], [3, 1, 4]] {
        let (p, nonce) = seal.unseal_progress();
        assert_eq!((p, nonce.as_str()), (0, ""));
        assert_eq!(
            seal.submit_unseal_key(&shares[order[0]]).await.unwrap(),
            UnsealOutcome::Progress {
                progress: 1,
                threshold: 3
            }
        );
        let (p, nonce) = seal.unseal_progress();
        assert_eq!(p, 1);
        assert!(!nonce.is_empty());
        seal.submit_unseal_key(&shares[order[1]]).await.unwrap();
        assert_eq!(
            seal.submit_unseal_key(&shares[order[2]]).await.unwrap(),
            UnsealOutcome::Unsealed
        );
        assert!(!seal.is_sealed());
        barrier.put("probe", b"x").await.unwrap();
        seal.seal();
        assert!(seal.is_sealed());
    }
}

#[tokio::test]
async fn duplicate_share_does_not_advance() {
    let (_p, _b, seal) = manager();
    let shares = seal.initialize(3, 2).await.unwrap();
    seal.submit_unseal_key(&shares[1]).await.unwrap();
    assert_eq!(
        seal.submit_unseal_key(&shares[1]).await.unwrap(),
        UnsealOutcome::Progress {
            progress: 1,
            threshold: 2
        }
    );
    assert_eq!(seal.unseal_progress().0, 1);
    assert!(seal.is_sealed());
    assert_eq!(
        seal.submit_unseal_key(&shares[2]).await.unwrap(),
        UnsealOutcome::Unsealed
    );
}

#[tokio::test]
async fn wrong_share_resets_progress() {
    let (_p, _b, seal) = manager();
    let shares = seal.initialize(3, 2).await.unwrap();
    let mut wrong = shares[1].to_vec();
    wrong[0] ^= 0xff;
    seal.submit_unseal_key(&shares[0]).await.unwrap();
    let err = seal.submit_unseal_key(&wrong).await.unwrap_err();
    assert!(matches!(err, CoreError::BadRequest(_)), "{err:?}");
    assert_eq!(seal.unseal_progress(), (0, String::new()));
    assert!(seal.is_sealed());

    // A share of the wrong size is refused without touching progress.
    seal.submit_unseal_key(&shares[0]).await.unwrap();
    assert!(matches!(
        seal.submit_unseal_key(&[1u8; 10]).await,
        Err(CoreError::BadRequest(_))
    ));
    assert_eq!(seal.unseal_progress().0, 1);
    seal.reset_unseal();
    assert_eq!(seal.unseal_progress().0, 0);

    unseal_with(&seal, &[&shares[2], &shares[0]]).await.unwrap();
    assert!(!seal.is_sealed());
}

#[tokio::test]
async fn single_share_is_the_root_key() {
    let (_p, barrier, seal) = manager();
    let shares = seal.initialize(1, 1).await.unwrap();
    assert_eq!(shares.len(), 1);
    assert_eq!(shares[0].len(), 32);
    assert!(barrier.verify_root_key(&shares[0]).await.unwrap());
    assert_eq!(
        seal.submit_unseal_key(&shares[0]).await.unwrap(),
        UnsealOutcome::Unsealed
    );
}

#[tokio::test]
async fn rekey_replaces_shares() {
    let (phys, barrier, seal) = manager();
    let old = seal.initialize(3, 2).await.unwrap();
    unseal_with(&seal, &[&old[0], &old[1]]).await.unwrap();
    barrier.put("data", b"kept").await.unwrap();

    assert!(!seal.rekey_status().await.started);
    assert_eq!(seal.rekey_status().await.required, 2);
    let st = seal.rekey_init(5, 3).await.unwrap();
    assert!(st.started);
    assert_eq!((st.t, st.n, st.required, st.progress), (3, 5, 2, 0));
    assert!(matches!(
        seal.rekey_init(5, 3).await,
        Err(CoreError::BadRequest(_))
    ));

    match seal.rekey_update(&old[0], "not-the-nonce").await {
        Err(CoreError::BadRequest(m)) => assert!(m.contains("nonce"), "{m}"),
        other => panic!("{other:?}"),
    }
    let st1 = seal.rekey_update(&old[0], &st.nonce).await.unwrap();
    assert_eq!(st1.progress, 1);
    assert_eq!(st1.complete, None);
    let done = seal.rekey_update(&old[2], &st.nonce).await.unwrap();
    assert_eq!(done.complete, Some(true));
    let keys = done.keys.unwrap();
    let keys_b64 = done.keys_base64.unwrap();
    assert_eq!(keys.len(), 5);
    assert_eq!(keys_b64.len(), 5);
    assert!(!seal.rekey_status().await.started);

    let cfg = seal.config().await.unwrap().unwrap();
    assert_eq!((cfg.secret_shares, cfg.secret_threshold), (5, 3));
    let persisted: SealConfig =
        serde_json::from_slice(&phys.get(SEAL_CONFIG_PATH).await.unwrap().unwrap()).unwrap();
    assert_eq!(persisted, cfg);

    // Old shares no longer unseal; new ones (hex or base64) do.
    seal.seal();
    // (Three of them: the new threshold. They recover the old root key,
    // which the keyring no longer opens with.)
    assert!(matches!(
        unseal_with(&seal, &[&old[0], &old[1], &old[2]]).await,
        Err(CoreError::BadRequest(_))
    ));
    assert_eq!(seal.unseal_progress().0, 0);
    let new: Vec<Zeroizing<Vec<u8>>> = vec![
        parse_key_share(&keys[4]).unwrap(),
        parse_key_share(&keys_b64[0]).unwrap(),
        parse_key_share(&keys[2]).unwrap(),
    ];
    assert_eq!(
        unseal_with(&seal, &[&new[0], &new[1], &new[2]])
            .await
            .unwrap(),
        UnsealOutcome::Unsealed
    );
    assert_eq!(
        barrier.get("data").await.unwrap().as_deref(),
        Some(&b"kept"[..])
    );
}

#[tokio::test]
async fn rekey_with_wrong_shares_fails_and_keeps_old_key() {
    let (_p, barrier, seal) = manager();
    let old = seal.initialize(3, 2).await.unwrap();
    unseal_with(&seal, &[&old[0], &old[1]]).await.unwrap();
    let st = seal.rekey_init(3, 2).await.unwrap();
    assert!(matches!(
        seal.rekey_update(&[0u8; 5], &st.nonce).await,
        Err(CoreError::BadRequest(_))
    ));
    let mut wrong = old[1].to_vec();
    wrong[3] ^= 1;
    seal.rekey_update(&old[0], &st.nonce).await.unwrap();
    assert!(matches!(
        seal.rekey_update(&wrong, &st.nonce).await,
        Err(CoreError::BadRequest(_))
    ));
    // Progress reset, operation still open.
    let s = seal.rekey_status().await;
    assert!(s.started);
    assert_eq!(s.progress, 0);
    seal.rekey_cancel();
    assert!(!seal.rekey_status().await.started);
    assert!(matches!(
        seal.rekey_update(&old[0], &st.nonce).await,
        Err(CoreError::BadRequest(_))
    ));

    seal.seal();
    unseal_with(&seal, &[&old[2], &old[0]]).await.unwrap();
    assert!(!barrier.is_sealed());
}

#[tokio::test]
async fn generate_root_round_trip() {
    let (_p, _b, seal) = manager();
    let shares = seal.initialize(3, 2).await.unwrap();
    unseal_with(&seal, &[&shares[0], &shares[1]]).await.unwrap();

    let st = seal.generate_root_init().await.unwrap();
    assert!(st.started);
    assert_eq!(st.otp.len(), 28);
    assert_eq!(st.otp_length, 28);
    assert!(st.otp.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(st.required, 2);
    assert!(matches!(
        seal.generate_root_init().await,
        Err(CoreError::BadRequest(_))
    ));
    let status = seal.generate_root_status();
    assert!(status.started);
    assert!(status.otp.is_empty(), "the OTP is shown only once");

    assert!(matches!(
        seal.generate_root_update(&shares[0], "wrong").await,
        Err(CoreError::BadRequest(m)) if m.contains("nonce")
    ));
    match seal
        .generate_root_update(&shares[2], &st.nonce)
        .await
        .unwrap()
    {
        GenerateRootProgress::InProgress(s) => assert_eq!(s.progress, 1),
        other => panic!("{other:?}"),
    }
    let (otp, status) = match seal
        .generate_root_update(&shares[1], &st.nonce)
        .await
        .unwrap()
    {
        GenerateRootProgress::Complete { otp, status } => (otp, status),
        other => panic!("{other:?}"),
    };
    assert_eq!(otp.as_str(), st.otp);
    assert_eq!(status.nonce, st.nonce);
    assert!(!seal.generate_root_status().started);

    let token = "hvs.ABCDEFGHIJKLMNOPQRSTUVWX";
    assert_eq!(token.len(), 28);
    let encoded = encode_root_token(token, &otp).unwrap();
    assert!(!encoded.ends_with('='));
    assert_eq!(decode_root_token(&encoded, &otp).unwrap().as_str(), token);
    assert!(encode_root_token("short", &otp).is_err());
}

#[tokio::test]
async fn generate_root_wrong_shares_refused() {
    let (_p, _b, seal) = manager();
    let shares = seal.initialize(3, 2).await.unwrap();
    unseal_with(&seal, &[&shares[0], &shares[1]]).await.unwrap();
    let st = seal.generate_root_init().await.unwrap();
    let mut wrong = shares[1].to_vec();
    wrong[0] ^= 1;
    seal.generate_root_update(&shares[0], &st.nonce)
        .await
        .unwrap();
    assert!(matches!(
        seal.generate_root_update(&wrong, &st.nonce).await,
        Err(CoreError::BadRequest(_))
    ));
    assert_eq!(seal.generate_root_status().progress, 0);
    seal.generate_root_cancel();
    assert!(!seal.generate_root_status().started);
}

#[test]
fn key_shares_parse_hex_and_base64() {
    let bytes: Vec<u8> = (0u8..33).collect();
    let hex = hex::encode(&bytes);
    let b64 = STANDARD.encode(&bytes);
    assert_eq!(parse_key_share(&hex).unwrap().as_slice(), bytes.as_slice());
    assert_eq!(
        parse_key_share(&hex.to_uppercase()).unwrap().as_slice(),
        bytes.as_slice()
    );
    assert_eq!(
        parse_key_share(&format!(" {b64}\n")).unwrap().as_slice(),
        bytes.as_slice()
    );
    for bad in ["", "zz", "not base64!", "abc"] {
        assert!(
            matches!(parse_key_share(bad), Err(CoreError::BadRequest(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn root_token_encoding_matches_vault() {
    // XOR then RawStd base64, as Vault's `xor.XORBase64` + RawStdEncoding.
    let token = "hvs.0123456789abcdefghijklmn";
    let otp = "ABCDEFGHIJKLMNOPQRSTUVWXYZab";
    let x: Vec<u8> = token.bytes().zip(otp.bytes()).map(|(a, b)| a ^ b).collect();
    assert_eq!(
        encode_root_token(token, otp).unwrap(),
        STANDARD_NO_PAD.encode(&x)
    );
    // Padded input decodes too.
    assert_eq!(
        decode_root_token(&STANDARD.encode(&x), otp)
            .unwrap()
            .as_str(),
        token
    );
    assert!(decode_root_token("!!", otp).is_err());
    assert!(decode_root_token(&STANDARD_NO_PAD.encode(&x[..5]), otp).is_err());
}

#[test]
fn otp_is_base62() {
    let a = random_base62(OTP_LENGTH).unwrap();
    let b = random_base62(OTP_LENGTH).unwrap();
    assert_eq!(a.len(), 28);
    assert_ne!(a.as_str(), b.as_str());
    assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
}
