//! One named key (a "policy" in Vault's terms): its type, settings and
//! versions as stored, and the cryptography each type does. Every primitive
//! comes from aws-lc-rs; this file only chooses algorithms and frames bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use aws_lc_rs::encoding::{AsBigEndian, AsDer};
use aws_lc_rs::signature::{self, EcdsaKeyPair, EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair};
use aws_lc_rs::{aead, hkdf, hmac, rand, rsa};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tresor_sdk::{fields, BackendError};
use zeroize::Zeroizing;

/// AES-GCM and ChaCha20-Poly1305 nonces are 96 bits.
pub(crate) const NONCE_LEN: usize = 12;

/// What Vault answers for every authentication failure, so that a tampered
/// ciphertext, a wrong key or a wrong context are indistinguishable.
pub(crate) const AUTH_FAILED: &str = "cipher: message authentication failed";
pub(crate) const TOO_OLD: &str =
    "ciphertext or signature version is disallowed by policy (too old)";

// Domain separation: the convergent nonce key must never equal a key that
// the `hmac/` endpoint or the cipher itself uses.
const CONVERGENT_NONCE_INFO: &[u8] = b"tresor transit convergent nonce v3\0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum KeyType {
    #[serde(rename = "aes128-gcm96")]
    Aes128Gcm96,
    #[serde(rename = "aes256-gcm96")]
    Aes256Gcm96,
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
    #[serde(rename = "ed25519")]
    Ed25519,
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    #[serde(rename = "ecdsa-p521")]
    EcdsaP521,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
    #[serde(rename = "hmac")]
    Hmac,
}

impl KeyType {
    pub(crate) const ALL: [KeyType; 11] = [
        KeyType::Aes128Gcm96,
        KeyType::Aes256Gcm96,
        KeyType::ChaCha20Poly1305,
        KeyType::Ed25519,
        KeyType::EcdsaP256,
        KeyType::EcdsaP384,
        KeyType::EcdsaP521,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
        KeyType::Hmac,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KeyType::Aes128Gcm96 => "aes128-gcm96",
            KeyType::Aes256Gcm96 => "aes256-gcm96",
            KeyType::ChaCha20Poly1305 => "chacha20-poly1305",
            KeyType::Ed25519 => "ed25519",
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::EcdsaP384 => "ecdsa-p384",
            KeyType::EcdsaP521 => "ecdsa-p521",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa3072 => "rsa-3072",
            KeyType::Rsa4096 => "rsa-4096",
            KeyType::Hmac => "hmac",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<KeyType, BackendError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(KeyType::Aes256Gcm96);
        }
        KeyType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = KeyType::ALL.iter().map(|t| t.as_str()).collect();
                BackendError::bad_request(format!(
                    "unknown key type {s:?}: type must be one of {}",
                    names.join(", ")
                ))
            })
    }

    pub(crate) fn aead(self) -> Option<&'static aead::Algorithm> {
        match self {
            KeyType::Aes128Gcm96 => Some(&aead::AES_128_GCM),
            KeyType::Aes256Gcm96 => Some(&aead::AES_256_GCM),
            KeyType::ChaCha20Poly1305 => Some(&aead::CHACHA20_POLY1305),
            _ => None,
        }
    }

    pub(crate) fn is_rsa(self) -> bool {
        matches!(self, KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096)
    }

    pub(crate) fn is_ecdsa(self) -> bool {
        matches!(
            self,
            KeyType::EcdsaP256 | KeyType::EcdsaP384 | KeyType::EcdsaP521
        )
    }

    pub(crate) fn is_asymmetric(self) -> bool {
        self == KeyType::Ed25519 || self.is_ecdsa() || self.is_rsa()
    }

    pub(crate) fn supports_encryption(self) -> bool {
        self.aead().is_some() || self.is_rsa()
    }

    pub(crate) fn supports_signing(self) -> bool {
        self.is_asymmetric()
    }

    pub(crate) fn supports_derivation(self) -> bool {
        self.aead().is_some()
    }
}

/// Key bytes: wiped on drop, base64 in storage, never printed.
#[derive(Clone, Default)]
pub(crate) struct KeyBytes(Zeroizing<Vec<u8>>);

impl KeyBytes {
    pub(crate) fn new(v: Vec<u8>) -> Self {
        KeyBytes(Zeroizing::new(v))
    }

    fn random(len: usize) -> Result<Self, BackendError> {
        let mut v = Zeroizing::new(vec![0u8; len]);
        rand::fill(&mut v).map_err(|_| internal("random source failed"))?;
        Ok(KeyBytes(v))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyBytes(redacted)")
    }
}

impl Serialize for KeyBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&Zeroizing::new(B64.encode(self.bytes())))
    }
}

impl<'de> Deserialize<'de> for KeyBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Zeroizing::new(String::deserialize(d)?);
        B64.decode(s.as_bytes())
            .map(KeyBytes::new)
            .map_err(|_| serde::de::Error::custom("key material is not base64"))
    }
}

/// One version of a key as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredVersion {
    /// Raw key for AEAD and HMAC types, PKCS#8 DER for asymmetric ones.
    pub(crate) key: KeyBytes,
    /// Key of the `hmac/` endpoint (and the convergent nonce): every type
    /// has one, distinct from `key` except for `hmac` keys.
    pub(crate) hmac_key: KeyBytes,
    pub(crate) created: DateTime<Utc>,
    /// Upper bound on the encryptions made under this version: persisted
    /// *before* encryptions up to it are made, so a crash never loses count.
    #[serde(default)]
    pub(crate) encryptions_reserved: u64,
}

/// A named key as stored at `policy/<name>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredPolicy {
    pub(crate) name: String,
    #[serde(rename = "type")]
    pub(crate) key_type: KeyType,
    #[serde(default)]
    pub(crate) derived: bool,
    #[serde(default)]
    pub(crate) convergent: bool,
    #[serde(default)]
    pub(crate) exportable: bool,
    #[serde(default)]
    pub(crate) allow_plaintext_backup: bool,
    #[serde(default)]
    pub(crate) deletion_allowed: bool,
    pub(crate) min_decryption_version: u32,
    #[serde(default)]
    pub(crate) min_encryption_version: u32,
    #[serde(default)]
    pub(crate) min_available_version: u32,
    pub(crate) latest_version: u32,
    #[serde(default, with = "fields::secs")]
    pub(crate) auto_rotate_period: Duration,
    /// Bytes of an `hmac` key.
    #[serde(default)]
    pub(crate) key_size: usize,
    pub(crate) versions: BTreeMap<u32, StoredVersion>,
}

impl StoredVersion {
    pub(crate) fn generate(
        kt: KeyType,
        key_size: usize,
        now: DateTime<Utc>,
        reserve: u64,
    ) -> Result<StoredVersion, BackendError> {
        let failed = |_| internal("key generation failed");
        let key = match kt {
            KeyType::Aes128Gcm96 => KeyBytes::random(16)?,
            KeyType::Aes256Gcm96 | KeyType::ChaCha20Poly1305 => KeyBytes::random(32)?,
            KeyType::Hmac => KeyBytes::random(key_size)?,
            KeyType::Ed25519 => {
                let kp = Ed25519KeyPair::generate().map_err(failed)?;
                KeyBytes::new(kp.to_pkcs8().map_err(failed)?.as_ref().to_vec())
            }
            KeyType::EcdsaP256 | KeyType::EcdsaP384 | KeyType::EcdsaP521 => {
                let kp = EcdsaKeyPair::generate(ecdsa_default_alg(kt)).map_err(failed)?;
                KeyBytes::new(kp.to_pkcs8v1().map_err(failed)?.as_ref().to_vec())
            }
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                let size = match kt {
                    KeyType::Rsa2048 => rsa::KeySize::Rsa2048,
                    KeyType::Rsa3072 => rsa::KeySize::Rsa3072,
                    _ => rsa::KeySize::Rsa4096,
                };
                let kp = rsa::KeyPair::generate(size).map_err(failed)?;
                let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> = kp.as_der().map_err(failed)?;
                KeyBytes::new(der.as_ref().to_vec())
            }
        };
        let hmac_key = if kt == KeyType::Hmac {
            key.clone()
        } else {
            KeyBytes::random(32)?
        };
        Ok(StoredVersion {
            key,
            hmac_key,
            created: now,
            encryptions_reserved: reserve,
        })
    }
}

/// Encryptions under one key version: `used` counts in memory, `reserved`
/// is what storage already holds as an upper bound. Shared between the
/// successive in-memory copies of a key so that no encryption is lost when
/// a write replaces the cached copy.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    used: AtomicU64,
    reserved: AtomicU64,
}

impl Counter {
    /// Takes the next encryption number.
    pub(crate) fn next(&self) -> u64 {
        self.used.fetch_add(1, Ordering::SeqCst).saturating_add(1)
    }

    pub(crate) fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::SeqCst)
    }

    pub(crate) fn set_reserved(&self, n: u64) {
        self.reserved.fetch_max(n, Ordering::SeqCst);
    }
}

struct Prepared {
    counter: Arc<Counter>,
    /// The cipher of a non-derived AEAD key, built once: encrypt is a hot path.
    aead: Option<aead::LessSafeKey>,
}

/// A key decoded for use, as the cache holds it.
pub(crate) struct Policy {
    pub(crate) rec: StoredPolicy,
    prepared: BTreeMap<u32, Prepared>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.rec.name)
            .field("type", &self.rec.key_type)
            .finish_non_exhaustive()
    }
}

/// Options of one signature.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SignOpts {
    pub(crate) hash: HashAlg,
    pub(crate) pss: bool,
    /// JWS marshaling: ECDSA signatures as fixed-width `r || s`.
    pub(crate) jws: bool,
    pub(crate) prehashed: bool,
}

impl Policy {
    /// Decodes a stored key. Counters of versions that `previous` already
    /// knew are shared with it; new ones start, conservatively, at what
    /// storage reserved (every reserved encryption may have happened).
    pub(crate) fn new(
        rec: StoredPolicy,
        previous: Option<&Policy>,
    ) -> Result<Policy, BackendError> {
        let mut prepared = BTreeMap::new();
        for (v, sv) in &rec.versions {
            let counter = match previous.and_then(|p| p.prepared.get(v)) {
                Some(p) => p.counter.clone(),
                None => Arc::new(Counter {
                    used: AtomicU64::new(sv.encryptions_reserved),
                    reserved: AtomicU64::new(sv.encryptions_reserved),
                }),
            };
            let aead = match rec.key_type.aead() {
                Some(alg) if !rec.derived => Some(aead::LessSafeKey::new(
                    aead::UnboundKey::new(alg, sv.key.bytes())
                        .map_err(|_| internal("stored key has the wrong length"))?,
                )),
                _ => None,
            };
            prepared.insert(*v, Prepared { counter, aead });
        }
        Ok(Policy { rec, prepared })
    }

    /// The stored form, with each version's reservation as the counters
    /// hold it (or `reserve` for one version about to be persisted).
    pub(crate) fn to_stored(&self, reserve: Option<(u32, u64)>) -> StoredPolicy {
        let mut rec = self.rec.clone();
        for (v, sv) in rec.versions.iter_mut() {
            let held = self.prepared.get(v).map_or(0, |p| p.counter.reserved());
            sv.encryptions_reserved = match reserve {
                Some((rv, n)) if rv == *v => n.max(held),
                _ => held,
            };
        }
        rec
    }

    pub(crate) fn counter(&self, version: u32) -> Option<&Arc<Counter>> {
        self.prepared.get(&version).map(|p| &p.counter)
    }

    fn version(&self, v: u32) -> Result<&StoredVersion, BackendError> {
        self.rec
            .versions
            .get(&v)
            .ok_or_else(|| BackendError::bad_request(format!("invalid key version {v}")))
    }

    /// The version an encryption or signature uses: `0` for the latest.
    pub(crate) fn encryption_version(&self, requested: u32) -> Result<u32, BackendError> {
        let latest = self.rec.latest_version;
        let v = if requested == 0 { latest } else { requested };
        if v > latest {
            return Err(BackendError::bad_request(format!(
                "requested key_version {v} is higher than the latest key version {latest}"
            )));
        }
        let min = self
            .rec
            .min_encryption_version
            .max(self.rec.min_available_version);
        if v < min {
            return Err(BackendError::bad_request(format!(
                "requested key_version {v} is less than the minimum encryption key version {min}"
            )));
        }
        self.version(v)?;
        Ok(v)
    }

    /// Checks the version a ciphertext, signature or HMAC names.
    pub(crate) fn check_decryption_version(&self, v: u32) -> Result<(), BackendError> {
        if v < self.rec.min_decryption_version {
            return Err(BackendError::bad_request(TOO_OLD));
        }
        if v > self.rec.latest_version || !self.rec.versions.contains_key(&v) {
            return Err(BackendError::bad_request(
                "invalid ciphertext: key version does not exist",
            ));
        }
        Ok(())
    }

    fn require_context<'a>(&self, context: &'a [u8]) -> Result<&'a [u8], BackendError> {
        if self.rec.derived && context.is_empty() {
            return Err(BackendError::bad_request(
                "missing 'context' for key derivation; the key was created using a derived key, \
                 which means additional, per-request information must be included in order to \
                 perform operations with the key",
            ));
        }
        Ok(context)
    }

    fn aead_key(&self, v: u32, context: &[u8]) -> Result<AeadKey<'_>, BackendError> {
        let alg = self
            .rec
            .key_type
            .aead()
            .ok_or_else(|| internal("not an AEAD key"))?;
        if self.rec.derived {
            let context = self.require_context(context)?;
            let derived = hkdf_sha256(self.version(v)?.key.bytes(), &[context], alg.key_len())?;
            let key = aead::UnboundKey::new(alg, &derived)
                .map_err(|_| internal("derived key has the wrong length"))?;
            return Ok(AeadKey::Owned(aead::LessSafeKey::new(key)));
        }
        self.prepared
            .get(&v)
            .and_then(|p| p.aead.as_ref())
            .map(AeadKey::Cached)
            .ok_or_else(|| BackendError::bad_request(format!("invalid key version {v}")))
    }

    /// `nonce || ciphertext || tag` under version `v`.
    pub(crate) fn encrypt(
        &self,
        v: u32,
        context: &[u8],
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        if self.rec.key_type.is_rsa() {
            return self.rsa_encrypt(v, plaintext);
        }
        let key = self.aead_key(v, context)?;
        let mut nonce = [0u8; NONCE_LEN];
        if self.rec.convergent {
            // Same key, context, data and AAD give the same nonce (and so
            // the same ciphertext); the AAD is included because GCM with
            // one nonce under two AADs would reveal its authentication key.
            let nk = hkdf_sha256(
                self.version(v)?.hmac_key.bytes(),
                &[CONVERGENT_NONCE_INFO, context],
                32,
            )?;
            let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &nk));
            ctx.update(&(aad.len() as u64).to_be_bytes());
            ctx.update(aad);
            ctx.update(plaintext);
            let tag = ctx.sign();
            nonce.copy_from_slice(&tag.as_ref()[..NONCE_LEN]);
        } else {
            rand::fill(&mut nonce).map_err(|_| internal("random source failed"))?;
        }
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + aead::MAX_TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let mut body = out.split_off(NONCE_LEN);
        key.get()
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                &mut body,
            )
            .map_err(|_| internal("encryption failed"))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    pub(crate) fn decrypt(
        &self,
        v: u32,
        context: &[u8],
        blob: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        self.check_decryption_version(v)?;
        if self.rec.key_type.is_rsa() {
            return self.rsa_decrypt(v, blob);
        }
        let key = self.aead_key(v, context)?;
        if blob.len() < NONCE_LEN + aead::MAX_TAG_LEN {
            return Err(BackendError::bad_request("invalid ciphertext: too short"));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&blob[..NONCE_LEN]);
        let mut body = Zeroizing::new(blob[NONCE_LEN..].to_vec());
        let n = key
            .get()
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                &mut body,
            )
            .map_err(|_| BackendError::bad_request(AUTH_FAILED))?
            .len();
        body.truncate(n);
        Ok(body)
    }

    fn rsa_encrypt(&self, v: u32, plaintext: &[u8]) -> Result<Vec<u8>, BackendError> {
        let private = rsa::PrivateDecryptingKey::from_pkcs8(self.version(v)?.key.bytes())
            .map_err(|_| internal("stored RSA key is invalid"))?;
        let public = rsa::OaepPublicEncryptingKey::new(private.public_key())
            .map_err(|_| internal("RSA key setup failed"))?;
        if plaintext.len() > public.max_plaintext_size(&rsa::OAEP_SHA256_MGF1SHA256) {
            return Err(BackendError::bad_request(format!(
                "plaintext too long for this RSA key: at most {} bytes",
                public.max_plaintext_size(&rsa::OAEP_SHA256_MGF1SHA256)
            )));
        }
        let mut out = vec![0u8; public.ciphertext_size()];
        let n = public
            .encrypt(&rsa::OAEP_SHA256_MGF1SHA256, plaintext, &mut out, None)
            .map_err(|_| internal("encryption failed"))?
            .len();
        out.truncate(n);
        Ok(out)
    }

    fn rsa_decrypt(&self, v: u32, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let private = rsa::PrivateDecryptingKey::from_pkcs8(self.version(v)?.key.bytes())
            .map_err(|_| internal("stored RSA key is invalid"))?;
        let key = rsa::OaepPrivateDecryptingKey::new(private)
            .map_err(|_| internal("RSA key setup failed"))?;
        let mut out = Zeroizing::new(vec![0u8; key.min_output_size()]);
        let n = key
            .decrypt(&rsa::OAEP_SHA256_MGF1SHA256, blob, &mut out, None)
            .map_err(|_| BackendError::bad_request(AUTH_FAILED))?
            .len();
        out.truncate(n);
        Ok(out)
    }

    pub(crate) fn sign(&self, v: u32, input: &[u8], o: SignOpts) -> Result<Vec<u8>, BackendError> {
        let der = self.version(v)?.key.bytes();
        let kt = self.rec.key_type;
        match kt {
            KeyType::Ed25519 => {
                if o.prehashed {
                    return Err(BackendError::bad_request(
                        "prehashed: ed25519 keys sign the message itself, not a digest",
                    ));
                }
                let kp = Ed25519KeyPair::from_pkcs8(der)
                    .map_err(|_| internal("stored ed25519 key is invalid"))?;
                Ok(kp.sign(input).as_ref().to_vec())
            }
            _ if kt.is_ecdsa() => {
                let (sign_alg, _) = ecdsa_algs(kt, o.hash, o.jws)?;
                let kp = EcdsaKeyPair::from_pkcs8(sign_alg, der)
                    .map_err(|_| internal("stored ECDSA key is invalid"))?;
                let sig = if o.prehashed {
                    kp.sign_digest(&imported_digest(input, o.hash)?)
                } else {
                    kp.sign(&rand::SystemRandom::new(), input)
                }
                .map_err(|_| internal("signing failed"))?;
                Ok(sig.as_ref().to_vec())
            }
            _ if kt.is_rsa() => {
                let (enc, _) = rsa_algs(o.hash, o.pss)?;
                let kp = rsa::KeyPair::from_pkcs8(der)
                    .map_err(|_| internal("stored RSA key is invalid"))?;
                let mut sig = vec![0u8; kp.public_modulus_len()];
                if o.prehashed {
                    kp.sign_digest(enc, &imported_digest(input, o.hash)?, &mut sig)
                } else {
                    kp.sign(enc, &rand::SystemRandom::new(), input, &mut sig)
                }
                .map_err(|_| internal("signing failed"))?;
                Ok(sig)
            }
            _ => Err(BackendError::bad_request(format!(
                "key type {} does not support signing",
                kt.as_str()
            ))),
        }
    }

    pub(crate) fn verify(
        &self,
        v: u32,
        input: &[u8],
        sig: &[u8],
        o: SignOpts,
    ) -> Result<bool, BackendError> {
        self.check_decryption_version(v)?;
        let kt = self.rec.key_type;
        let public = self.public_key_bytes(v)?;
        let alg: &'static dyn signature::VerificationAlgorithm = match kt {
            KeyType::Ed25519 => {
                if o.prehashed {
                    return Err(BackendError::bad_request(
                        "prehashed: ed25519 keys verify the message itself, not a digest",
                    ));
                }
                &signature::ED25519
            }
            _ if kt.is_ecdsa() => ecdsa_algs(kt, o.hash, o.jws)?.1,
            _ if kt.is_rsa() => rsa_algs(o.hash, o.pss)?.1,
            _ => {
                return Err(BackendError::bad_request(format!(
                    "key type {} does not support verification",
                    kt.as_str()
                )))
            }
        };
        let digest = if o.prehashed {
            Some(imported_digest(input, o.hash)?)
        } else {
            None
        };
        let check = |alg: &'static dyn signature::VerificationAlgorithm| {
            let key = signature::UnparsedPublicKey::new(alg, public.as_slice());
            match &digest {
                Some(d) => key.verify_digest(d, sig),
                None => key.verify(input, sig),
            }
            .is_ok()
        };
        if check(alg) {
            return Ok(true);
        }
        // Vault verifies PSS with any salt length (Go's
        // `PSSSaltLengthAuto`), and signs with the largest one. aws-lc-rs
        // verifies one salt length at a time and cannot recover it from
        // the signature, so besides the digest length (what tresor and most
        // libraries sign with) the maximum length is tried: Vault's own
        // signatures verify. Other lengths do not.
        Ok(kt.is_rsa() && o.pss && rsa_pss_max_salt(o.hash).is_some_and(|p| check(p)))
    }

    /// The raw public key: Ed25519's 32 bytes, the uncompressed EC point,
    /// or RSA's PKCS#1 `RSAPublicKey` — what aws-lc-rs verifies against.
    fn public_key_bytes(&self, v: u32) -> Result<Vec<u8>, BackendError> {
        let der = self.version(v)?.key.bytes();
        let kt = self.rec.key_type;
        match kt {
            KeyType::Ed25519 => Ok(Ed25519KeyPair::from_pkcs8(der)
                .map_err(invalid_key)?
                .public_key()
                .as_ref()
                .to_vec()),
            _ if kt.is_ecdsa() => Ok(EcdsaKeyPair::from_pkcs8(ecdsa_default_alg(kt), der)
                .map_err(invalid_key)?
                .public_key()
                .as_ref()
                .to_vec()),
            _ if kt.is_rsa() => Ok(rsa::KeyPair::from_pkcs8(der)
                .map_err(invalid_key)?
                .public_key()
                .as_ref()
                .to_vec()),
            _ => Err(BackendError::bad_request(format!(
                "key type {} has no public key",
                kt.as_str()
            ))),
        }
    }

    /// The public key as Vault shows it: base64 for Ed25519, a PEM
    /// `PUBLIC KEY` (SubjectPublicKeyInfo) for ECDSA and RSA.
    pub(crate) fn public_key_display(&self, v: u32) -> Result<String, BackendError> {
        let der = self.version(v)?.key.bytes();
        let kt = self.rec.key_type;
        let spki: aws_lc_rs::encoding::PublicKeyX509Der<'static> = match kt {
            KeyType::Ed25519 => return Ok(B64.encode(self.public_key_bytes(v)?)),
            _ if kt.is_ecdsa() => EcdsaKeyPair::from_pkcs8(ecdsa_default_alg(kt), der)
                .map_err(invalid_key)?
                .public_key()
                .as_der()
                .map_err(invalid_key)?,
            _ if kt.is_rsa() => rsa::KeyPair::from_pkcs8(der)
                .map_err(invalid_key)?
                .public_key()
                .as_der()
                .map_err(invalid_key)?,
            _ => {
                return Err(BackendError::bad_request(format!(
                    "key type {} has no public key",
                    kt.as_str()
                )))
            }
        };
        Ok(pem("PUBLIC KEY", spki.as_ref()))
    }

    /// The private key of an asymmetric version in Vault's export format:
    /// Ed25519 as base64 of `seed || public`, ECDSA as a PEM `EC PRIVATE
    /// KEY` (RFC 5915), RSA as a PEM PKCS#8 `PRIVATE KEY`.
    pub(crate) fn private_key_export(&self, v: u32) -> Result<Zeroizing<String>, BackendError> {
        let sv = self.version(v)?;
        let der = sv.key.bytes();
        let kt = self.rec.key_type;
        match kt {
            KeyType::Ed25519 => {
                let kp = Ed25519KeyPair::from_pkcs8(der).map_err(invalid_key)?;
                let seed = kp.seed().map_err(invalid_key)?;
                let seed_bin: aws_lc_rs::encoding::Curve25519SeedBin<'static> =
                    seed.as_be_bytes().map_err(invalid_key)?;
                let mut full = Zeroizing::new(seed_bin.as_ref().to_vec());
                full.extend_from_slice(kp.public_key().as_ref());
                Ok(Zeroizing::new(B64.encode(&*full)))
            }
            _ if kt.is_ecdsa() => {
                let kp =
                    EcdsaKeyPair::from_pkcs8(ecdsa_default_alg(kt), der).map_err(invalid_key)?;
                let sec1: aws_lc_rs::encoding::EcPrivateKeyRfc5915Der<'static> =
                    kp.private_key().as_der().map_err(invalid_key)?;
                Ok(Zeroizing::new(pem("EC PRIVATE KEY", sec1.as_ref())))
            }
            _ if kt.is_rsa() => Ok(Zeroizing::new(pem("PRIVATE KEY", der))),
            _ => Ok(Zeroizing::new(B64.encode(der))),
        }
    }

    pub(crate) fn hmac_key(&self, v: u32) -> Result<&KeyBytes, BackendError> {
        Ok(&self.version(v)?.hmac_key)
    }

    pub(crate) fn hmac(&self, v: u32, alg: HashAlg, input: &[u8]) -> Result<Vec<u8>, BackendError> {
        let key = hmac::Key::new(alg.hmac()?, self.hmac_key(v)?.bytes());
        Ok(hmac::sign(&key, input).as_ref().to_vec())
    }

    pub(crate) fn hmac_verify(
        &self,
        v: u32,
        alg: HashAlg,
        input: &[u8],
        tag: &[u8],
    ) -> Result<bool, BackendError> {
        self.check_decryption_version(v)?;
        let key = hmac::Key::new(alg.hmac()?, self.hmac_key(v)?.bytes());
        // aws-lc-rs compares in constant time.
        Ok(hmac::verify(&key, input, tag).is_ok())
    }
}

enum AeadKey<'a> {
    Cached(&'a aead::LessSafeKey),
    Owned(aead::LessSafeKey),
}

impl AeadKey<'_> {
    fn get(&self) -> &aead::LessSafeKey {
        match self {
            AeadKey::Cached(k) => k,
            AeadKey::Owned(k) => k,
        }
    }
}

/// Hash algorithms by Vault's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HashAlg {
    Sha2_224,
    Sha2_256,
    Sha2_384,
    Sha2_512,
    Sha3_224,
    Sha3_256,
    Sha3_384,
    Sha3_512,
}

impl HashAlg {
    pub(crate) fn parse(s: &str) -> Result<HashAlg, BackendError> {
        Ok(match s.trim() {
            "" | "sha2-256" => HashAlg::Sha2_256,
            "sha2-224" => HashAlg::Sha2_224,
            "sha2-384" => HashAlg::Sha2_384,
            "sha2-512" => HashAlg::Sha2_512,
            "sha3-224" => HashAlg::Sha3_224,
            "sha3-256" => HashAlg::Sha3_256,
            "sha3-384" => HashAlg::Sha3_384,
            "sha3-512" => HashAlg::Sha3_512,
            other => {
                return Err(BackendError::bad_request(format!(
                    "unsupported hash algorithm {other:?}: use one of sha2-224, sha2-256, \
                     sha2-384, sha2-512, sha3-256, sha3-384, sha3-512"
                )))
            }
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HashAlg::Sha2_224 => "sha2-224",
            HashAlg::Sha2_256 => "sha2-256",
            HashAlg::Sha2_384 => "sha2-384",
            HashAlg::Sha2_512 => "sha2-512",
            HashAlg::Sha3_224 => "sha3-224",
            HashAlg::Sha3_256 => "sha3-256",
            HashAlg::Sha3_384 => "sha3-384",
            HashAlg::Sha3_512 => "sha3-512",
        }
    }

    pub(crate) fn digest(self) -> Result<&'static digest::Algorithm, BackendError> {
        match self {
            HashAlg::Sha2_224 => Ok(&digest::SHA224),
            HashAlg::Sha2_256 => Ok(&digest::SHA256),
            HashAlg::Sha2_384 => Ok(&digest::SHA384),
            HashAlg::Sha2_512 => Ok(&digest::SHA512),
            HashAlg::Sha3_256 => Ok(&digest::SHA3_256),
            HashAlg::Sha3_384 => Ok(&digest::SHA3_384),
            HashAlg::Sha3_512 => Ok(&digest::SHA3_512),
            HashAlg::Sha3_224 => Err(BackendError::bad_request(
                "hash algorithm sha3-224 is not available in this server's crypto library",
            )),
        }
    }

    fn hmac(self) -> Result<hmac::Algorithm, BackendError> {
        match self {
            HashAlg::Sha2_224 => Ok(hmac::HMAC_SHA224),
            HashAlg::Sha2_256 => Ok(hmac::HMAC_SHA256),
            HashAlg::Sha2_384 => Ok(hmac::HMAC_SHA384),
            HashAlg::Sha2_512 => Ok(hmac::HMAC_SHA512),
            other => Err(BackendError::bad_request(format!(
                "unsupported HMAC algorithm {}: use sha2-224, sha2-256, sha2-384 or sha2-512",
                other.as_str()
            ))),
        }
    }
}

fn imported_digest(input: &[u8], hash: HashAlg) -> Result<digest::Digest, BackendError> {
    let alg = hash.digest()?;
    digest::Digest::import_less_safe(input, alg).map_err(|_| {
        BackendError::bad_request(format!(
            "prehashed input must be a {}-byte {} digest, got {} bytes",
            alg.output_len(),
            hash.as_str(),
            input.len()
        ))
    })
}

fn ecdsa_default_alg(kt: KeyType) -> &'static EcdsaSigningAlgorithm {
    match kt {
        KeyType::EcdsaP384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        KeyType::EcdsaP521 => &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
        _ => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
    }
}

type EcdsaPair = (
    &'static EcdsaSigningAlgorithm,
    &'static signature::EcdsaVerificationAlgorithm,
);

/// The (curve, hash, encoding) combinations aws-lc-rs signs with.
fn ecdsa_algs(kt: KeyType, hash: HashAlg, fixed: bool) -> Result<EcdsaPair, BackendError> {
    use signature::*;
    use HashAlg::*;
    let pair: Option<EcdsaPair> = match (kt, hash, fixed) {
        (KeyType::EcdsaP256, Sha2_256, false) => {
            Some((&ECDSA_P256_SHA256_ASN1_SIGNING, &ECDSA_P256_SHA256_ASN1))
        }
        (KeyType::EcdsaP256, Sha2_256, true) => {
            Some((&ECDSA_P256_SHA256_FIXED_SIGNING, &ECDSA_P256_SHA256_FIXED))
        }
        (KeyType::EcdsaP384, Sha2_384, false) => {
            Some((&ECDSA_P384_SHA384_ASN1_SIGNING, &ECDSA_P384_SHA384_ASN1))
        }
        (KeyType::EcdsaP384, Sha2_384, true) => {
            Some((&ECDSA_P384_SHA384_FIXED_SIGNING, &ECDSA_P384_SHA384_FIXED))
        }
        (KeyType::EcdsaP384, Sha3_384, false) => {
            Some((&ECDSA_P384_SHA3_384_ASN1_SIGNING, &ECDSA_P384_SHA3_384_ASN1))
        }
        (KeyType::EcdsaP384, Sha3_384, true) => Some((
            &ECDSA_P384_SHA3_384_FIXED_SIGNING,
            &ECDSA_P384_SHA3_384_FIXED,
        )),
        (KeyType::EcdsaP521, Sha2_224, false) => {
            Some((&ECDSA_P521_SHA224_ASN1_SIGNING, &ECDSA_P521_SHA224_ASN1))
        }
        (KeyType::EcdsaP521, Sha2_224, true) => {
            Some((&ECDSA_P521_SHA224_FIXED_SIGNING, &ECDSA_P521_SHA224_FIXED))
        }
        (KeyType::EcdsaP521, Sha2_256, false) => {
            Some((&ECDSA_P521_SHA256_ASN1_SIGNING, &ECDSA_P521_SHA256_ASN1))
        }
        (KeyType::EcdsaP521, Sha2_256, true) => {
            Some((&ECDSA_P521_SHA256_FIXED_SIGNING, &ECDSA_P521_SHA256_FIXED))
        }
        (KeyType::EcdsaP521, Sha2_384, false) => {
            Some((&ECDSA_P521_SHA384_ASN1_SIGNING, &ECDSA_P521_SHA384_ASN1))
        }
        (KeyType::EcdsaP521, Sha2_384, true) => {
            Some((&ECDSA_P521_SHA384_FIXED_SIGNING, &ECDSA_P521_SHA384_FIXED))
        }
        (KeyType::EcdsaP521, Sha2_512, false) => {
            Some((&ECDSA_P521_SHA512_ASN1_SIGNING, &ECDSA_P521_SHA512_ASN1))
        }
        (KeyType::EcdsaP521, Sha2_512, true) => {
            Some((&ECDSA_P521_SHA512_FIXED_SIGNING, &ECDSA_P521_SHA512_FIXED))
        }
        (KeyType::EcdsaP521, Sha3_512, false) => {
            Some((&ECDSA_P521_SHA3_512_ASN1_SIGNING, &ECDSA_P521_SHA3_512_ASN1))
        }
        (KeyType::EcdsaP521, Sha3_512, true) => Some((
            &ECDSA_P521_SHA3_512_FIXED_SIGNING,
            &ECDSA_P521_SHA3_512_FIXED,
        )),
        _ => None,
    };
    pair.ok_or_else(|| {
        let supported = match kt {
            KeyType::EcdsaP256 => "sha2-256",
            KeyType::EcdsaP384 => "sha2-384 or sha3-384",
            _ => "sha2-224, sha2-256, sha2-384, sha2-512 or sha3-512",
        };
        BackendError::bad_request(format!(
            "hash_algorithm {} is not supported with {} keys: use {supported}",
            hash.as_str(),
            kt.as_str()
        ))
    })
}

type RsaPair = (
    &'static signature::RsaSignatureEncoding,
    &'static signature::RsaParameters,
);

fn rsa_algs(hash: HashAlg, pss: bool) -> Result<RsaPair, BackendError> {
    use signature::*;
    match (hash, pss) {
        (HashAlg::Sha2_256, true) => Ok((&RSA_PSS_SHA256, &RSA_PSS_2048_8192_SHA256)),
        (HashAlg::Sha2_384, true) => Ok((&RSA_PSS_SHA384, &RSA_PSS_2048_8192_SHA384)),
        (HashAlg::Sha2_512, true) => Ok((&RSA_PSS_SHA512, &RSA_PSS_2048_8192_SHA512)),
        (HashAlg::Sha2_256, false) => Ok((&RSA_PKCS1_SHA256, &RSA_PKCS1_2048_8192_SHA256)),
        (HashAlg::Sha2_384, false) => Ok((&RSA_PKCS1_SHA384, &RSA_PKCS1_2048_8192_SHA384)),
        (HashAlg::Sha2_512, false) => Ok((&RSA_PKCS1_SHA512, &RSA_PKCS1_2048_8192_SHA512)),
        (other, _) => Err(BackendError::bad_request(format!(
            "hash_algorithm {} is not supported with RSA keys: use sha2-256, sha2-384 or sha2-512",
            other.as_str()
        ))),
    }
}

static RSA_PSS_SHA256_MAX_SALT: signature::RsaParameters =
    signature::RSA_PSS_2048_8192_SHA256.with_pss_salt_length(signature::RsaPssSaltLength::Max);
static RSA_PSS_SHA384_MAX_SALT: signature::RsaParameters =
    signature::RSA_PSS_2048_8192_SHA384.with_pss_salt_length(signature::RsaPssSaltLength::Max);
static RSA_PSS_SHA512_MAX_SALT: signature::RsaParameters =
    signature::RSA_PSS_2048_8192_SHA512.with_pss_salt_length(signature::RsaPssSaltLength::Max);

/// PSS verification with the largest salt the key allows (Go's and so
/// Vault's signing default).
/// `None` for hashes `rsa_algs` refuses (never reached here).
fn rsa_pss_max_salt(hash: HashAlg) -> Option<&'static signature::RsaParameters> {
    match hash {
        HashAlg::Sha2_256 => Some(&RSA_PSS_SHA256_MAX_SALT),
        HashAlg::Sha2_384 => Some(&RSA_PSS_SHA384_MAX_SALT),
        HashAlg::Sha2_512 => Some(&RSA_PSS_SHA512_MAX_SALT),
        _ => None,
    }
}

/// HKDF-SHA256 with an empty salt, as Vault derives keys (`hkdf_sha256`).
pub(crate) fn hkdf_sha256(
    ikm: &[u8],
    info: &[&[u8]],
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(ikm);
    let okm = prk
        .expand(info, Len(len))
        .map_err(|_| internal("key derivation failed"))?;
    let mut out = Zeroizing::new(vec![0u8; len]);
    okm.fill(&mut out)
        .map_err(|_| internal("key derivation failed"))?;
    Ok(out)
}

/// PEM armour: base64 in 64-column lines between the label's markers.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let b64 = Zeroizing::new(B64.encode(der));
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// For any aws-lc-rs error on stored key material; its detail is dropped
/// on purpose (it could describe the key).
fn invalid_key<E>(_: E) -> BackendError {
    internal("stored key is invalid")
}

pub(crate) fn internal(what: &str) -> BackendError {
    BackendError::Internal(format!("transit: {what}"))
}

/// Random bytes from the system source.
pub(crate) fn random_bytes(n: usize) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    let mut v = Zeroizing::new(vec![0u8; n]);
    rand::fill(&mut v).map_err(|_| internal("random source failed"))?;
    Ok(v)
}
