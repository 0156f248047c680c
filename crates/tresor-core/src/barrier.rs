//! The barrier: every entry that reaches physical storage is encrypted here.
//!
//! Entry format: `[version = 1][term u32 BE][nonce 12][ciphertext || tag]`,
//! AES-256-GCM with a fresh random 96-bit nonce per write and the storage
//! key as AAD, so a ciphertext moved to another path does not decrypt. The
//! term names the keyring key that encrypted the entry; after a rotation new
//! writes use the new term while older entries still read.
//!
//! The keyring is stored at the physical key `core/keyring`, in the same
//! format (term 0), encrypted by the root key with AAD `core/keyring`. Its
//! plaintext is a small binary record (not JSON) so that every copy of the
//! keys lives in a zeroizing buffer.
//!
//! Hot path: the unsealed keyring sits behind a `parking_lot::RwLock` and is
//! cloned out (`Arc`) per call; no lock is held across an await. Keyring
//! changes (rotate, rekey) are serialised by an async mutex and persisted
//! before they are used.
//!
//! [`View`] is a key-prefix view of any logical storage (a mount's storage).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use parking_lot::RwLock;
use tresor_sdk::{StorageError, StorageOp};
use tresor_storage::{Entry, Op};
use zeroize::Zeroizing;

use crate::CoreError;

/// Physical key of the encrypted keyring.
pub const KEYRING_PATH: &str = "core/keyring";
/// Physical key of the plaintext seal configuration (owned by the seal).
pub const SEAL_CONFIG_PATH: &str = "core/seal-config";

/// Keys that only the core itself writes, directly in physical storage.
const RESERVED: &[&str] = &[KEYRING_PATH, SEAL_CONFIG_PATH];

const VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
/// The term written in the header of the keyring blob (encrypted by the root
/// key, which has no term).
const ROOT_TERM: u32 = 0;
/// Version of the keyring plaintext record.
const KEYRING_FORMAT: u8 = 1;
/// Bytes of one term in the keyring record: term, install time,
/// encryptions, key.
const TERM_RECORD_LEN: usize = 4 + 8 + 8 + KEY_LEN;

/// What `sys/key-status` reports about the active key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyStatus {
    pub term: u32,
    /// Unix seconds.
    pub install_time: i64,
    /// Encryptions with this term since it was installed (counted in
    /// memory, persisted whenever the keyring is written).
    pub encryptions: u64,
}

impl KeyStatus {
    /// `install_time` as Vault answers it (RFC 3339, UTC).
    pub fn install_time_rfc3339(&self) -> String {
        chrono::DateTime::from_timestamp(self.install_time, 0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }
}

/// An AES-256-GCM key. aws-lc frees (and cleanses) its key schedule on drop;
/// the raw bytes are kept, zeroized on drop, only to write the keyring.
struct AeadKey {
    raw: Zeroizing<[u8; KEY_LEN]>,
    aead: LessSafeKey,
}

impl AeadKey {
    fn new(raw: &[u8]) -> Option<Self> {
        if raw.len() != KEY_LEN {
            return None;
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(raw);
        let raw = key;
        let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, raw.as_slice()).ok()?);
        Some(AeadKey { raw, aead })
    }

    fn random() -> Result<Self, CoreError> {
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(raw.as_mut_slice())
            .map_err(|_| CoreError::Internal("random number generator failed".into()))?;
        Self::new(raw.as_slice()).ok_or_else(|| CoreError::Internal("cannot build AES key".into()))
    }

    /// `[version][term][nonce][ciphertext||tag]` of `plaintext`. Encrypted
    /// in place in a buffer sized up front, so no reallocation leaves a
    /// stray plaintext copy behind.
    fn seal(&self, term: u32, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, ()> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| ())?;
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.push(VERSION);
        out.extend_from_slice(&term.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut out[HEADER_LEN..],
            )
            .map_err(|_| ())?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts the body of an entry (`ciphertext||tag`) in place; the
    /// plaintext length on success.
    fn open_in_place(&self, nonce: [u8; NONCE_LEN], aad: &str, body: &mut [u8]) -> Option<usize> {
        self.aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                body,
            )
            .ok()
            .map(|p| p.len())
    }
}

/// Splits an entry header into (term, nonce); the body starts at
/// `HEADER_LEN`.
fn parse_header(blob: &[u8]) -> Option<(u32, [u8; NONCE_LEN])> {
    if blob.len() < HEADER_LEN + TAG_LEN || blob[0] != VERSION {
        return None;
    }
    let term = u32::from_be_bytes(blob[1..5].try_into().ok()?);
    let nonce: [u8; NONCE_LEN] = blob[5..HEADER_LEN].try_into().ok()?;
    Some((term, nonce))
}

struct Term {
    term: u32,
    install_time: i64,
    encryptions: AtomicU64,
    key: AeadKey,
}

/// The unsealed keyring: data keys by term, and the root key that encrypts
/// the keyring itself (needed to persist rotations).
pub struct Keyring {
    terms: BTreeMap<u32, Arc<Term>>,
    active: u32,
    root: AeadKey,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("terms", &self.terms.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    pub fn active_term(&self) -> u32 {
        self.active
    }

    fn active(&self) -> Result<&Arc<Term>, CoreError> {
        self.terms
            .get(&self.active)
            .ok_or_else(|| CoreError::Internal("keyring has no active term".into()))
    }

    fn status(&self) -> Result<KeyStatus, CoreError> {
        let t = self.active()?;
        Ok(KeyStatus {
            term: t.term,
            install_time: t.install_time,
            encryptions: t.encryptions.load(Ordering::Relaxed),
        })
    }

    /// `[format][active u32][count u32]` then per term
    /// `[term u32][install i64][encryptions u64][key 32]`, big-endian.
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(9 + self.terms.len() * TERM_RECORD_LEN));
        out.push(KEYRING_FORMAT);
        out.extend_from_slice(&self.active.to_be_bytes());
        out.extend_from_slice(&(self.terms.len() as u32).to_be_bytes());
        for t in self.terms.values() {
            out.extend_from_slice(&t.term.to_be_bytes());
            out.extend_from_slice(&t.install_time.to_be_bytes());
            out.extend_from_slice(&t.encryptions.load(Ordering::Relaxed).to_be_bytes());
            out.extend_from_slice(t.key.raw.as_slice());
        }
        out
    }

    fn decode(bytes: &[u8], root: AeadKey) -> Option<Keyring> {
        let (&format, rest) = bytes.split_first()?;
        if format != KEYRING_FORMAT || rest.len() < 8 {
            return None;
        }
        let active = u32::from_be_bytes(rest[0..4].try_into().ok()?);
        let count = u32::from_be_bytes(rest[4..8].try_into().ok()?) as usize;
        let records = &rest[8..];
        if records.len() != count.checked_mul(TERM_RECORD_LEN)? {
            return None;
        }
        let mut terms = BTreeMap::new();
        for r in records.chunks_exact(TERM_RECORD_LEN) {
            let term = u32::from_be_bytes(r[0..4].try_into().ok()?);
            let t = Term {
                term,
                install_time: i64::from_be_bytes(r[4..12].try_into().ok()?),
                encryptions: AtomicU64::new(u64::from_be_bytes(r[12..20].try_into().ok()?)),
                key: AeadKey::new(&r[20..])?,
            };
            terms.insert(term, Arc::new(t));
        }
        if !terms.contains_key(&active) {
            return None;
        }
        Some(Keyring {
            terms,
            active,
            root,
        })
    }

    /// The keyring encrypted by its root key, ready for `core/keyring`.
    fn seal_to_entry(&self) -> Result<Entry, CoreError> {
        let plain = self.encode();
        let value = self
            .root
            .seal(ROOT_TERM, KEYRING_PATH, &plain)
            .map_err(|()| CoreError::Internal("keyring encryption failed".into()))?;
        Ok(Entry {
            key: KEYRING_PATH.to_string(),
            value,
        })
    }

    /// Decrypts a stored keyring with `root_key`; `None` if the key is wrong
    /// or the blob damaged (indistinguishable by design of AEAD).
    fn open_entry(blob: &[u8], root_key: &[u8]) -> Option<Keyring> {
        let root = AeadKey::new(root_key)?;
        let (term, nonce) = parse_header(blob)?;
        if term != ROOT_TERM {
            return None;
        }
        let mut body = Zeroizing::new(blob[HEADER_LEN..].to_vec());
        let len = root.open_in_place(nonce, KEYRING_PATH, body.as_mut_slice())?;
        Keyring::decode(&body[..len], root)
    }
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn storage_err(e: tresor_storage::Error) -> StorageError {
    match e {
        tresor_storage::Error::InvalidKey(k) => StorageError::InvalidKey(k),
        other => StorageError::Backend(other.to_string()),
    }
}

fn check_not_reserved(key: &str) -> Result<(), StorageError> {
    if RESERVED.contains(&key) {
        return Err(StorageError::InvalidKey(key.to_string()));
    }
    Ok(())
}

fn wrong_root_key() -> CoreError {
    CoreError::BadRequest("unseal failed: the key is not the root key of this server".into())
}

/// The encryption layer between logical and physical storage.
pub struct Barrier {
    physical: Arc<dyn tresor_storage::Storage>,
    keyring: RwLock<Option<Arc<Keyring>>>,
    /// Serialises keyring changes (rotate, rekey, initialize), which read,
    /// extend and persist the keyring: two at once would lose a term.
    mutate: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Barrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Barrier")
            .field("sealed", &self.is_sealed())
            .finish_non_exhaustive()
    }
}

impl Barrier {
    pub fn new(physical: Arc<dyn tresor_storage::Storage>) -> Arc<Barrier> {
        Arc::new(Barrier {
            physical,
            keyring: RwLock::new(None),
            mutate: tokio::sync::Mutex::new(()),
        })
    }

    fn current(&self) -> Option<Arc<Keyring>> {
        self.keyring.read().clone()
    }

    fn unsealed(&self) -> Result<Arc<Keyring>, CoreError> {
        self.current().ok_or(CoreError::Sealed)
    }

    /// Whether a keyring exists in physical storage.
    pub async fn is_initialized(&self) -> Result<bool, CoreError> {
        Ok(self.physical.get(KEYRING_PATH).await?.is_some())
    }

    /// Creates term 1 and stores the keyring encrypted by `root_key` (32
    /// bytes). The barrier stays sealed.
    pub async fn initialize(&self, root_key: &[u8]) -> Result<(), CoreError> {
        self.initialize_with(root_key, Vec::new()).await
    }

    /// [`Barrier::initialize`], writing `extra` in the same atomic batch (the
    /// seal configuration), so a crash cannot leave one without the other.
    pub(crate) async fn initialize_with(
        &self,
        root_key: &[u8],
        extra: Vec<Op>,
    ) -> Result<(), CoreError> {
        let _m = self.mutate.lock().await;
        if self.is_initialized().await? {
            return Err(CoreError::AlreadyInitialized);
        }
        let root = AeadKey::new(root_key)
            .ok_or_else(|| CoreError::Internal("root key must be 32 bytes".into()))?;
        let term = Term {
            term: 1,
            install_time: unix_now(),
            encryptions: AtomicU64::new(0),
            key: AeadKey::random()?,
        };
        let keyring = Keyring {
            terms: BTreeMap::from([(1, Arc::new(term))]),
            active: 1,
            root,
        };
        let mut ops = vec![Op::Put(keyring.seal_to_entry()?)];
        ops.extend(extra);
        self.physical.batch(ops).await?;
        Ok(())
    }

    /// Decrypts the keyring with `root_key`. A wrong key is refused with a
    /// message that says so and nothing else.
    pub async fn unseal(&self, root_key: &[u8]) -> Result<(), CoreError> {
        let blob = self
            .physical
            .get(KEYRING_PATH)
            .await?
            .ok_or(CoreError::NotInitialized)?;
        let keyring = Keyring::open_entry(&blob, root_key).ok_or_else(wrong_root_key)?;
        *self.keyring.write() = Some(Arc::new(keyring));
        Ok(())
    }

    /// Forgets the keyring. The keys are zeroized when the last in-flight
    /// operation holding the `Arc` finishes.
    pub fn seal(&self) {
        self.keyring.write().take();
    }

    pub fn is_sealed(&self) -> bool {
        self.keyring.read().is_none()
    }

    /// Whether `root_key` decrypts the stored keyring (works sealed too).
    pub async fn verify_root_key(&self, root_key: &[u8]) -> Result<bool, CoreError> {
        let blob = self
            .physical
            .get(KEYRING_PATH)
            .await?
            .ok_or(CoreError::NotInitialized)?;
        Ok(Keyring::open_entry(&blob, root_key).is_some())
    }

    /// Installs a new term: persisted first, then used by new writes.
    pub async fn rotate(&self) -> Result<KeyStatus, CoreError> {
        let _m = self.mutate.lock().await;
        let cur = self.unsealed()?;
        let next = cur
            .terms
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| CoreError::Internal("key term overflow".into()))?;
        let mut terms = cur.terms.clone();
        terms.insert(
            next,
            Arc::new(Term {
                term: next,
                install_time: unix_now(),
                encryptions: AtomicU64::new(0),
                key: AeadKey::random()?,
            }),
        );
        let root = AeadKey::new(cur.root.raw.as_slice())
            .ok_or_else(|| CoreError::Internal("cannot rebuild root key".into()))?;
        let keyring = Keyring {
            terms,
            active: next,
            root,
        };
        self.physical.put(keyring.seal_to_entry()?).await?;
        let status = keyring.status()?;
        self.replace_if_unsealed(keyring);
        Ok(status)
    }

    /// Swaps in a changed keyring unless the barrier was sealed meanwhile
    /// (then the next unseal loads the persisted one).
    fn replace_if_unsealed(&self, keyring: Keyring) {
        let mut g = self.keyring.write();
        if g.is_some() {
            *g = Some(Arc::new(keyring));
        }
    }

    pub fn key_status(&self) -> Result<KeyStatus, CoreError> {
        self.unsealed()?.status()
    }

    /// Re-encrypts the keyring under `new_root_key` with a single put.
    pub async fn rekey_root(&self, new_root_key: &[u8]) -> Result<(), CoreError> {
        self.rekey_root_with(new_root_key, Vec::new()).await
    }

    /// [`Barrier::rekey_root`], writing `extra` (the new seal configuration)
    /// in the same atomic batch: a keyring under a key nobody holds shares
    /// of would lose every secret.
    pub(crate) async fn rekey_root_with(
        &self,
        new_root_key: &[u8],
        extra: Vec<Op>,
    ) -> Result<(), CoreError> {
        let _m = self.mutate.lock().await;
        let cur = self.unsealed()?;
        let root = AeadKey::new(new_root_key)
            .ok_or_else(|| CoreError::Internal("root key must be 32 bytes".into()))?;
        let keyring = Keyring {
            terms: cur.terms.clone(),
            active: cur.active,
            root,
        };
        let mut ops = vec![Op::Put(keyring.seal_to_entry()?)];
        ops.extend(extra);
        self.physical.batch(ops).await?;
        self.replace_if_unsealed(keyring);
        Ok(())
    }

    fn encrypt(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StorageError> {
        check_not_reserved(key)?;
        let keyring = self.current().ok_or(StorageError::Sealed)?;
        let term = keyring
            .active()
            .map_err(|_| StorageError::Backend("keyring has no active term".into()))?;
        let blob = term
            .key
            .seal(term.term, key, value)
            .map_err(|()| StorageError::Backend("encryption failed".into()))?;
        term.encryptions.fetch_add(1, Ordering::Relaxed);
        Ok(blob)
    }

    /// Decrypts in the buffer read from storage: no copy on the hot path.
    fn decrypt(keyring: &Keyring, key: &str, mut blob: Vec<u8>) -> Result<Vec<u8>, StorageError> {
        let integrity = || StorageError::Integrity(key.to_string());
        let (term, nonce) = parse_header(&blob).ok_or_else(integrity)?;
        let t = keyring.terms.get(&term).ok_or_else(integrity)?;
        let len = t
            .key
            .open_in_place(nonce, key, &mut blob[HEADER_LEN..])
            .ok_or_else(integrity)?;
        blob.drain(..HEADER_LEN);
        blob.truncate(len);
        Ok(blob)
    }
}

#[async_trait]
impl tresor_sdk::Storage for Barrier {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        check_not_reserved(key)?;
        let keyring = self.current().ok_or(StorageError::Sealed)?;
        match self.physical.get(key).await.map_err(storage_err)? {
            None => Ok(None),
            Some(blob) => Self::decrypt(&keyring, key, blob).map(Some),
        }
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        let value = self.encrypt(key, value)?;
        self.physical
            .put(Entry {
                key: key.to_string(),
                value,
            })
            .await
            .map_err(storage_err)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        check_not_reserved(key)?;
        if self.is_sealed() {
            return Err(StorageError::Sealed);
        }
        self.physical.delete(key).await.map_err(storage_err)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        if self.is_sealed() {
            return Err(StorageError::Sealed);
        }
        self.physical.list(prefix).await.map_err(storage_err)
    }

    async fn batch(&self, ops: Vec<StorageOp>) -> Result<(), StorageError> {
        let mut physical = Vec::with_capacity(ops.len());
        for op in ops {
            physical.push(match op {
                StorageOp::Put { key, value } => {
                    let value = self.encrypt(&key, &value)?;
                    Op::Put(Entry { key, value })
                }
                StorageOp::Delete { key } => {
                    check_not_reserved(&key)?;
                    Op::Delete(key)
                }
            });
        }
        if self.is_sealed() {
            return Err(StorageError::Sealed);
        }
        self.physical.batch(physical).await.map_err(storage_err)
    }
}

/// A prefix view of logical storage: what a mount (or a core subsystem)
/// sees. Keys are relative to the prefix; `list` results are relative to the
/// listed folder already, so nothing is stripped. Views nest.
pub struct View {
    inner: Arc<dyn tresor_sdk::Storage>,
    prefix: String,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl View {
    /// A non-empty `prefix` is read as a folder (`"a"` → `"a/"`): a view
    /// named `foo` must not see `foobar`.
    pub fn new(inner: Arc<dyn tresor_sdk::Storage>, prefix: impl Into<String>) -> View {
        let mut prefix = prefix.into();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        View { inner, prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The inner key of `key`, refusing anything that could climb out of
    /// the prefix.
    fn full(&self, key: &str) -> Result<String, StorageError> {
        if key.starts_with('/')
            || key
                .as_bytes()
                .split(|&b| b == b'/')
                .any(|s| s == b".." || s == b".")
        {
            return Err(StorageError::InvalidKey(key.to_string()));
        }
        // Every storage call of every backend comes through here: no
        // formatting machinery, one exact allocation.
        let mut full = String::with_capacity(self.prefix.len() + key.len());
        full.push_str(&self.prefix);
        full.push_str(key);
        Ok(full)
    }
}

#[async_trait]
impl tresor_sdk::Storage for View {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(&self.full(key)?).await
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.inner.put(&self.full(key)?, value).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(&self.full(key)?).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.inner.list(&self.full(prefix)?).await
    }

    async fn batch(&self, ops: Vec<StorageOp>) -> Result<(), StorageError> {
        let ops = ops
            .into_iter()
            .map(|op| {
                Ok(match op {
                    StorageOp::Put { key, value } => StorageOp::Put {
                        key: self.full(&key)?,
                        value,
                    },
                    StorageOp::Delete { key } => StorageOp::Delete {
                        key: self.full(&key)?,
                    },
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        self.inner.batch(ops).await
    }
}

#[cfg(test)]
mod tests;
