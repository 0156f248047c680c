//! The Shamir seal: the root key, its shares, and the operations that need
//! a quorum of them — unseal, rekey (`sys/rekey/*`) and root-token
//! generation (`sys/generate-root/*`).
//!
//! The seal configuration is the one piece of plaintext the core keeps in
//! physical storage (`core/seal-config`, JSON), next to the keyring it
//! describes. Both are always written in one atomic batch with the keyring
//! (init, rekey): a keyring under a root key whose shares were never handed
//! out would lose every secret.
//!
//! Progress of the three share-collecting operations lives in memory behind
//! `parking_lot` mutexes that are never held across an await: shares are
//! collected under the lock, taken out, and combined/verified after it is
//! released. Collected shares are `Zeroizing` and dropped on completion,
//! cancel, failure and seal.

use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tresor_api::sys::{GenerateRootStatus, RekeyStatus};
use tresor_storage::{Entry, Op};
use zeroize::Zeroizing;

use crate::barrier::{Barrier, SEAL_CONFIG_PATH};
use crate::shamir::{self, ShamirError};
use crate::CoreError;

/// Bytes of the root key.
const ROOT_KEY_LEN: usize = 32;
/// Length of the generate-root one-time password: the length of a root
/// token (`hvs.` + 24 base62), which it is XORed with.
pub const OTP_LENGTH: usize = 28;

/// `core/seal-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealConfig {
    #[serde(rename = "type")]
    pub seal_type: String,
    pub secret_shares: u8,
    pub secret_threshold: u8,
    /// Changes with every (re)key: names the current set of shares.
    pub nonce: String,
}

/// What one submitted unseal key share achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsealOutcome {
    /// More shares are needed (`progress` of `threshold` collected).
    Progress { progress: u8, threshold: u8 },
    /// The barrier is unsealed.
    Unsealed,
}

/// Result of [`SealManager::generate_root_update`]. On completion the core
/// mints the root token and encodes it with [`encode_root_token`].
#[derive(Debug)]
pub enum GenerateRootProgress {
    InProgress(GenerateRootStatus),
    Complete {
        otp: Zeroizing<String>,
        status: GenerateRootStatus,
    },
}

/// Shares collected towards a threshold, with the nonce of the attempt.
#[derive(Default)]
struct Collected {
    nonce: String,
    shares: Vec<Zeroizing<Vec<u8>>>,
}

impl Collected {
    /// Adds `key` unless the same share was already given (Vault ignores a
    /// repeated share rather than counting it twice). Compared in constant
    /// time: the shares are secret.
    fn add(&mut self, key: &[u8]) {
        let dup = self
            .shares
            .iter()
            .any(|s| bool::from(s.as_slice().ct_eq(key)));
        if !dup {
            self.shares.push(Zeroizing::new(key.to_vec()));
        }
    }

    fn progress(&self) -> u8 {
        u8::try_from(self.shares.len()).unwrap_or(u8::MAX)
    }
}

struct Rekey {
    nonce: String,
    new_shares: u8,
    new_threshold: u8,
    collected: Collected,
}

struct GenerateRoot {
    nonce: String,
    otp: Zeroizing<String>,
    collected: Collected,
}

/// Ties the Shamir shares to the barrier.
pub struct SealManager {
    physical: Arc<dyn tresor_storage::Storage>,
    barrier: Arc<Barrier>,
    config: RwLock<Option<SealConfig>>,
    unseal: Mutex<Collected>,
    rekey: Mutex<Option<Rekey>>,
    generate_root: Mutex<Option<GenerateRoot>>,
}

impl std::fmt::Debug for SealManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealManager")
            .field("config", &*self.config.read())
            .field("sealed", &self.is_sealed())
            .finish_non_exhaustive()
    }
}

fn random_bytes(buf: &mut [u8]) -> Result<(), CoreError> {
    aws_lc_rs::rand::fill(buf)
        .map_err(|_| CoreError::Internal("random number generator failed".into()))
}

/// `len` characters of `[0-9A-Za-z]`, unbiased (bytes ≥ 248 = 4·62 are
/// redrawn).
fn random_base62(len: usize) -> Result<Zeroizing<String>, CoreError> {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = Zeroizing::new(String::with_capacity(len));
    let mut buf = Zeroizing::new([0u8; 64]);
    while out.len() < len {
        random_bytes(buf.as_mut_slice())?;
        for &b in buf.iter() {
            if b < 248 && out.len() < len {
                out.push(char::from(ALPHABET[usize::from(b % 62)]));
            }
        }
    }
    Ok(out)
}

fn new_nonce() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn shamir_error(e: ShamirError) -> CoreError {
    match e {
        ShamirError::Random => CoreError::Internal(e.to_string()),
        other => CoreError::BadRequest(format!("invalid key shares: {other}")),
    }
}

/// Vault's rules, with the request field named in each message.
fn validate_parameters(shares: u8, threshold: u8) -> Result<(), CoreError> {
    let bad = |m: &str| Err(CoreError::BadRequest(m.to_string()));
    if shares < 1 {
        return bad("secret_shares must be at least 1");
    }
    if threshold < 1 {
        return bad("secret_threshold must be at least 1");
    }
    if threshold > shares {
        return bad("secret_threshold cannot be larger than secret_shares");
    }
    if shares > 1 && threshold == 1 {
        return bad("secret_threshold must be greater than 1 when secret_shares is greater than 1");
    }
    Ok(())
}

/// A fresh random root key.
fn new_root_key() -> Result<Zeroizing<Vec<u8>>, CoreError> {
    let mut key = Zeroizing::new(vec![0u8; ROOT_KEY_LEN]);
    random_bytes(key.as_mut_slice())?;
    Ok(key)
}

fn config_entry(config: &SealConfig) -> Result<Op, CoreError> {
    let value = serde_json::to_vec(config)
        .map_err(|e| CoreError::Internal(format!("encode seal config: {e}")))?;
    Ok(Op::Put(Entry {
        key: SEAL_CONFIG_PATH.to_string(),
        value,
    }))
}

/// Recovers the root key from a full set of shares: with threshold 1 the
/// single share is the key.
fn recover(
    config: &SealConfig,
    shares: &[Zeroizing<Vec<u8>>],
) -> Result<Zeroizing<Vec<u8>>, CoreError> {
    if config.secret_threshold <= 1 {
        return shares
            .first()
            .map(|s| Zeroizing::new(s.to_vec()))
            .ok_or_else(|| CoreError::Internal("no share collected".into()));
    }
    shamir::combine(shares).map_err(shamir_error)
}

/// Each submitted share must look like one of this configuration's.
fn check_share_length(config: &SealConfig, key: &[u8]) -> Result<(), CoreError> {
    let expected = if config.secret_threshold <= 1 {
        ROOT_KEY_LEN
    } else {
        ROOT_KEY_LEN + 1
    };
    if key.len() != expected {
        return Err(CoreError::BadRequest(format!(
            "invalid key: expected a key share of {expected} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

fn check_nonce(expected: &str, given: &str) -> Result<(), CoreError> {
    if expected != given {
        return Err(CoreError::BadRequest(format!(
            "incorrect nonce {given:?}: it does not match the operation in progress"
        )));
    }
    Ok(())
}

fn encode_shares(shares: &[Zeroizing<Vec<u8>>]) -> (Vec<String>, Vec<String>) {
    (
        shares.iter().map(|s| hex::encode(s.as_slice())).collect(),
        shares
            .iter()
            .map(|s| STANDARD.encode(s.as_slice()))
            .collect(),
    )
}

impl SealManager {
    pub fn new(physical: Arc<dyn tresor_storage::Storage>, barrier: Arc<Barrier>) -> Self {
        SealManager {
            physical,
            barrier,
            config: RwLock::new(None),
            unseal: Mutex::new(Collected::default()),
            rekey: Mutex::new(None),
            generate_root: Mutex::new(None),
        }
    }

    /// The seal configuration; `None` before initialisation. Cached once
    /// read (only this manager writes it).
    pub async fn config(&self) -> Result<Option<SealConfig>, CoreError> {
        if let Some(c) = self.config.read().clone() {
            return Ok(Some(c));
        }
        let Some(bytes) = self.physical.get(SEAL_CONFIG_PATH).await? else {
            return Ok(None);
        };
        let config: SealConfig = serde_json::from_slice(&bytes)
            .map_err(|e| CoreError::Internal(format!("decode seal config: {e}")))?;
        *self.config.write() = Some(config.clone());
        Ok(Some(config))
    }

    /// Undo an initialisation whose shares never reached anyone (the core
    /// failed before answering `sys/init`): without this the server would
    /// stay initialised under keys nobody holds. Init runs on empty storage,
    /// so everything in it was written by that init and is removed.
    pub async fn abandon_init(&self) -> Result<(), CoreError> {
        self.seal();
        let mut dirs = vec![String::new()];
        let mut keys = Vec::new();
        while let Some(dir) = dirs.pop() {
            for name in self.physical.list(&dir).await? {
                let full = format!("{dir}{name}");
                if full.ends_with('/') {
                    dirs.push(full);
                } else {
                    keys.push(full);
                }
            }
        }
        for chunk in keys.chunks(256) {
            self.physical
                .batch(
                    chunk
                        .iter()
                        .map(|k| tresor_storage::Op::Delete(k.clone()))
                        .collect(),
                )
                .await?;
        }
        *self.config.write() = None;
        Ok(())
    }

    async fn require_config(&self) -> Result<SealConfig, CoreError> {
        self.config().await?.ok_or(CoreError::NotInitialized)
    }

    /// The cached threshold, for the synchronous status calls (the config
    /// is cached by any async call made before, e.g. the core's checks).
    fn cached_threshold(&self) -> u8 {
        self.config
            .read()
            .as_ref()
            .map(|c| c.secret_threshold)
            .unwrap_or(0)
    }

    /// Creates the root key and the keyring, stores the seal configuration
    /// and returns the shares. The barrier is left sealed.
    pub async fn initialize(
        &self,
        shares: u8,
        threshold: u8,
    ) -> Result<Vec<Zeroizing<Vec<u8>>>, CoreError> {
        validate_parameters(shares, threshold)?;
        if self.config().await?.is_some() {
            return Err(CoreError::AlreadyInitialized);
        }
        let root = new_root_key()?;
        let parts = shamir::split(&root, shares, threshold).map_err(shamir_error)?;
        let config = SealConfig {
            seal_type: "shamir".into(),
            secret_shares: shares,
            secret_threshold: threshold,
            nonce: new_nonce(),
        };
        self.barrier
            .initialize_with(&root, vec![config_entry(&config)?])
            .await?;
        *self.config.write() = Some(config);
        self.reset_unseal();
        Ok(parts)
    }

    /// Adds one unseal key share; at the threshold, recovers the root key
    /// and unseals the barrier. A wrong combination resets the progress.
    pub async fn submit_unseal_key(&self, key: &[u8]) -> Result<UnsealOutcome, CoreError> {
        let config = self.require_config().await?;
        if !self.barrier.is_sealed() {
            return Ok(UnsealOutcome::Unsealed);
        }
        check_share_length(&config, key)?;
        let shares = {
            let mut u = self.unseal.lock();
            if u.shares.is_empty() {
                u.nonce = new_nonce();
            }
            u.add(key);
            if u.shares.len() < usize::from(config.secret_threshold.max(1)) {
                return Ok(UnsealOutcome::Progress {
                    progress: u.progress(),
                    threshold: config.secret_threshold,
                });
            }
            std::mem::take(&mut *u).shares
        };
        let root = recover(&config, &shares)?;
        drop(shares);
        self.barrier.unseal(&root).await?;
        Ok(UnsealOutcome::Unsealed)
    }

    /// Shares collected so far and the nonce of the attempt (empty if none).
    pub fn unseal_progress(&self) -> (u8, String) {
        let u = self.unseal.lock();
        (u.progress(), u.nonce.clone())
    }

    pub fn reset_unseal(&self) {
        *self.unseal.lock() = Collected::default();
    }

    /// Seals the barrier and drops every collected share (unseal, rekey and
    /// generate-root all need an unsealed server or start over).
    pub fn seal(&self) {
        self.barrier.seal();
        self.reset_unseal();
        self.rekey.lock().take();
        self.generate_root.lock().take();
    }

    pub fn is_sealed(&self) -> bool {
        self.barrier.is_sealed()
    }

    // ----- rekey -------------------------------------------------------------

    /// Starts a rekey to `shares`/`threshold`.
    pub async fn rekey_init(&self, shares: u8, threshold: u8) -> Result<RekeyStatus, CoreError> {
        validate_parameters(shares, threshold)?;
        let config = self.require_config().await?;
        {
            let mut r = self.rekey.lock();
            if r.is_some() {
                return Err(CoreError::BadRequest("rekey already in progress".into()));
            }
            *r = Some(Rekey {
                nonce: new_nonce(),
                new_shares: shares,
                new_threshold: threshold,
                collected: Collected::default(),
            });
        }
        Ok(self.rekey_status_with(config.secret_threshold))
    }

    pub async fn rekey_status(&self) -> RekeyStatus {
        let required = match self.config().await {
            Ok(Some(c)) => c.secret_threshold,
            _ => 0,
        };
        self.rekey_status_with(required)
    }

    fn rekey_status_with(&self, required: u8) -> RekeyStatus {
        let r = self.rekey.lock();
        match r.as_ref() {
            None => RekeyStatus {
                required,
                ..Default::default()
            },
            Some(r) => RekeyStatus {
                nonce: r.nonce.clone(),
                started: true,
                t: r.new_threshold,
                n: r.new_shares,
                progress: r.collected.progress(),
                required,
                ..Default::default()
            },
        }
    }

    pub fn rekey_cancel(&self) {
        self.rekey.lock().take();
    }

    /// Adds one current key share to the rekey `nonce`. At the threshold the
    /// root key is verified, replaced by a new random one split with the new
    /// parameters, and the new shares are returned; the old ones stop
    /// working.
    pub async fn rekey_update(&self, key: &[u8], nonce: &str) -> Result<RekeyStatus, CoreError> {
        let config = self.require_config().await?;
        let required = config.secret_threshold;
        let (shares, new_shares, new_threshold) = {
            let mut guard = self.rekey.lock();
            let r = guard
                .as_mut()
                .ok_or_else(|| CoreError::BadRequest("no rekey in progress".into()))?;
            check_nonce(&r.nonce, nonce)?;
            check_share_length(&config, key)?;
            r.collected.add(key);
            if r.collected.shares.len() < usize::from(required.max(1)) {
                drop(guard);
                return Ok(self.rekey_status_with(required));
            }
            (
                std::mem::take(&mut r.collected.shares),
                r.new_shares,
                r.new_threshold,
            )
        };

        let root = recover(&config, &shares)?;
        drop(shares);
        if !self.barrier.verify_root_key(&root).await? {
            return Err(CoreError::BadRequest(
                "rekey failed: the key shares do not recover the root key; progress was reset"
                    .into(),
            ));
        }
        drop(root);

        // Claim the operation before changing anything: a concurrent cancel
        // (or a second completion) must not race the write.
        let claimed = {
            let mut guard = self.rekey.lock();
            match guard.as_ref() {
                Some(r) if r.nonce == nonce => guard.take(),
                _ => None,
            }
        };
        if claimed.is_none() {
            return Err(CoreError::BadRequest("rekey was cancelled".into()));
        }

        let new_root = new_root_key()?;
        let parts = shamir::split(&new_root, new_shares, new_threshold).map_err(shamir_error)?;
        let new_config = SealConfig {
            seal_type: "shamir".into(),
            secret_shares: new_shares,
            secret_threshold: new_threshold,
            nonce: new_nonce(),
        };
        self.barrier
            .rekey_root_with(&new_root, vec![config_entry(&new_config)?])
            .await?;
        *self.config.write() = Some(new_config);
        // Shares of the old key in any other attempt are now worthless.
        self.generate_root.lock().take();

        let (keys, keys_base64) = encode_shares(&parts);
        Ok(RekeyStatus {
            nonce: nonce.to_string(),
            started: true,
            t: new_threshold,
            n: new_shares,
            progress: required,
            required,
            complete: Some(true),
            keys: Some(keys),
            keys_base64: Some(keys_base64),
            ..Default::default()
        })
    }

    // ----- generate root -----------------------------------------------------

    /// Starts a root-token generation; the answer carries the OTP, the only
    /// time it is shown.
    pub async fn generate_root_init(&self) -> Result<GenerateRootStatus, CoreError> {
        let config = self.require_config().await?;
        let otp = random_base62(OTP_LENGTH)?;
        let mut status = {
            let mut g = self.generate_root.lock();
            if g.is_some() {
                return Err(CoreError::BadRequest(
                    "root generation already in progress".into(),
                ));
            }
            let state = GenerateRoot {
                nonce: new_nonce(),
                otp: otp.clone(),
                collected: Collected::default(),
            };
            let status = Self::generate_root_status_of(Some(&state), config.secret_threshold);
            *g = Some(state);
            status
        };
        status.otp = otp.to_string();
        Ok(status)
    }

    pub fn generate_root_status(&self) -> GenerateRootStatus {
        let required = self.cached_threshold();
        Self::generate_root_status_of(self.generate_root.lock().as_ref(), required)
    }

    fn generate_root_status_of(state: Option<&GenerateRoot>, required: u8) -> GenerateRootStatus {
        let mut s = GenerateRootStatus {
            required,
            otp_length: OTP_LENGTH,
            ..Default::default()
        };
        if let Some(g) = state {
            s.nonce = g.nonce.clone();
            s.started = true;
            s.progress = g.collected.progress();
        }
        s
    }

    pub fn generate_root_cancel(&self) {
        self.generate_root.lock().take();
    }

    /// Adds one key share to the generation `nonce`. At the threshold the
    /// recovered key is verified against the barrier and the OTP handed back
    /// for the core to encode the new root token with.
    pub async fn generate_root_update(
        &self,
        key: &[u8],
        nonce: &str,
    ) -> Result<GenerateRootProgress, CoreError> {
        let config = self.require_config().await?;
        let required = config.secret_threshold;
        let shares = {
            let mut guard = self.generate_root.lock();
            let g = guard
                .as_mut()
                .ok_or_else(|| CoreError::BadRequest("no root generation in progress".into()))?;
            check_nonce(&g.nonce, nonce)?;
            check_share_length(&config, key)?;
            g.collected.add(key);
            if g.collected.shares.len() < usize::from(required.max(1)) {
                return Ok(GenerateRootProgress::InProgress(
                    Self::generate_root_status_of(Some(g), required),
                ));
            }
            std::mem::take(&mut g.collected.shares)
        };

        let root = recover(&config, &shares)?;
        drop(shares);
        let valid = self.barrier.verify_root_key(&root).await?;
        drop(root);
        if !valid {
            return Err(CoreError::BadRequest(
                "root generation failed: the key shares do not recover the root key; progress was reset".into(),
            ));
        }
        let state = {
            let mut guard = self.generate_root.lock();
            match guard.as_ref() {
                Some(g) if g.nonce == nonce => guard.take(),
                _ => None,
            }
        };
        let Some(state) = state else {
            return Err(CoreError::BadRequest(
                "root generation was cancelled".into(),
            ));
        };
        let mut status = Self::generate_root_status_of(Some(&state), required);
        status.progress = required;
        Ok(GenerateRootProgress::Complete {
            otp: state.otp,
            status,
        })
    }
}

/// Parses an unseal key share as given by a client: hex, or standard
/// base64 (Vault accepts both, hex first).
pub fn parse_key_share(s: &str) -> Result<Zeroizing<Vec<u8>>, CoreError> {
    let s = s.trim();
    // An odd length fails `decode_to_slice` and falls through to base64.
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut out = Zeroizing::new(vec![0u8; s.len() / 2]);
        if hex::decode_to_slice(s, out.as_mut_slice()).is_ok() {
            return Ok(out);
        }
    }
    // Reserve up front so decoding never reallocates (which would leave an
    // unzeroized copy behind).
    let mut out = Zeroizing::new(Vec::with_capacity(base64::decoded_len_estimate(s.len())));
    if !s.is_empty() && STANDARD.decode_vec(s, &mut out).is_ok() {
        return Ok(out);
    }
    Err(CoreError::BadRequest(
        "'key' must be a valid hex or base64 string".into(),
    ))
}

/// Vault's encoded root token: base64 (standard alphabet, no padding) of the
/// token XOR the OTP.
pub fn encode_root_token(token: &str, otp: &str) -> Result<String, CoreError> {
    if token.len() != otp.len() {
        return Err(CoreError::Internal(format!(
            "root token and OTP lengths differ ({} and {})",
            token.len(),
            otp.len()
        )));
    }
    let xored: Zeroizing<Vec<u8>> =
        Zeroizing::new(token.bytes().zip(otp.bytes()).map(|(a, b)| a ^ b).collect());
    Ok(STANDARD_NO_PAD.encode(xored.as_slice()))
}

/// Inverse of [`encode_root_token`] (what `operator generate-root -decode`
/// does). Padded base64 is accepted too.
pub fn decode_root_token(encoded: &str, otp: &str) -> Result<Zeroizing<String>, CoreError> {
    let encoded = encoded.trim().trim_end_matches('=');
    let bad = || CoreError::BadRequest("invalid encoded root token".into());
    let mut xored = Zeroizing::new(Vec::with_capacity(base64::decoded_len_estimate(
        encoded.len(),
    )));
    STANDARD_NO_PAD
        .decode_vec(encoded, &mut xored)
        .map_err(|_| bad())?;
    if xored.len() != otp.len() {
        return Err(CoreError::BadRequest(
            "encoded root token and OTP lengths differ".into(),
        ));
    }
    let mut token = Zeroizing::new(String::with_capacity(xored.len()));
    for (a, b) in xored.iter().zip(otp.bytes()) {
        let c = a ^ b;
        if !c.is_ascii() {
            return Err(bad());
        }
        token.push(char::from(c));
    }
    Ok(token)
}

#[cfg(test)]
mod tests;
