//! The token store (`auth/token/`).
//!
//! Tokens are never stored in clear: the key of an entry is
//! HMAC-SHA256(salt, token), the salt living inside the barrier. An accessor
//! index answers lookups by accessor without revealing the token; a parent
//! index makes revoking a parent revoke its children.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use siphasher::sip128::{Hasher128, SipHasher24};
use tresor_sdk::{fields, Storage, StorageExt, StorageOp};
use zeroize::Zeroizing;

use crate::CoreError;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Random base62 string from the OS CSPRNG, by rejection sampling so every
/// character is uniform.
pub(crate) fn random_base62(len: usize) -> Result<String, CoreError> {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        aws_lc_rs::rand::fill(&mut buf).map_err(|_| CoreError::Internal("rng".into()))?;
        for b in buf {
            // 248 = 4 * 62: bytes above it would bias the first characters.
            if b < 248 && out.len() < len {
                out.push(BASE62[(b % 62) as usize] as char);
            }
        }
    }
    Ok(out)
}

/// A new service token: `hvs.` and 24 base62 characters (28 in all, the
/// length generate-root's OTP is made for).
pub fn generate_token() -> Result<Zeroizing<String>, CoreError> {
    Ok(Zeroizing::new(format!("hvs.{}", random_base62(24)?)))
}

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A token as persisted (key: the token's keyed hash).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TokenEntry {
    pub hash: String,
    pub accessor: String,
    /// Parent's hash; empty for orphans.
    #[serde(default)]
    pub parent: String,
    pub policies: Vec<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub display_name: String,
    /// Uses left; 0 = unlimited.
    #[serde(default)]
    pub num_uses: u64,
    pub creation_time: i64,
    #[serde(default)]
    pub creation_ttl: u64,
    /// Unix seconds; 0 = never.
    #[serde(default)]
    pub expire_time: i64,
    #[serde(default)]
    pub explicit_max_ttl: u64,
    /// Unix seconds no renewal may pass; 0 = none.
    #[serde(default)]
    pub max_expire_time: i64,
    #[serde(default)]
    pub period: u64,
    #[serde(default)]
    pub renewable: bool,
    /// Creation path (`auth/token/create`, `auth/userpass/login/alice`).
    pub path: String,
    #[serde(default)]
    pub role: String,
    /// The lease that expires this token; empty when it never expires.
    #[serde(default)]
    pub lease_id: String,
    #[serde(default)]
    pub bound_cidrs: Vec<String>,
    #[serde(default)]
    pub entity_id: String,
    /// The auth an auth backend returned, kept for its renew callback.
    #[serde(default)]
    pub auth: Option<tresor_sdk::Auth>,
}

impl TokenEntry {
    pub fn is_root(&self) -> bool {
        self.policies.iter().any(|p| p == "root")
    }

    pub fn is_expired(&self, now: i64) -> bool {
        self.expire_time != 0 && now >= self.expire_time
    }

    /// Seconds left, 0 for a token that never expires.
    pub fn ttl(&self, now: i64) -> u64 {
        if self.expire_time == 0 {
            0
        } else {
            (self.expire_time - now).max(0) as u64
        }
    }

    /// Is the token usable from this address?
    pub fn allows_addr(&self, addr: Option<IpAddr>) -> bool {
        if self.bound_cidrs.is_empty() {
            return true;
        }
        let Some(addr) = addr else { return false };
        self.bound_cidrs.iter().any(|c| cidr_contains(c, addr))
    }
}

/// `10.0.0.0/8` or a bare address contains `addr`? Malformed → false.
pub(crate) fn cidr_contains(cidr: &str, addr: IpAddr) -> bool {
    let (net, bits) = match cidr.split_once('/') {
        Some((n, b)) => (n, b.parse::<u32>().ok()),
        None => (cidr, None),
    };
    let Ok(net) = net.trim().parse::<IpAddr>() else {
        return false;
    };
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let bits = bits.unwrap_or(32).min(32);
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let bits = bits.unwrap_or(128).min(128);
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

pub(crate) fn parse_cidrs(list: &[String]) -> Result<Vec<String>, CoreError> {
    for c in list {
        let (net, bits) = match c.split_once('/') {
            Some((n, b)) => (n, Some(b)),
            None => (c.as_str(), None),
        };
        let ok = net.parse::<IpAddr>().is_ok()
            && bits.is_none_or(|b| b.parse::<u8>().is_ok_and(|b| b <= 128));
        if !ok {
            return Err(CoreError::BadRequest(format!("invalid CIDR {c:?}")));
        }
    }
    Ok(list.to_vec())
}

/// A token role (`auth/token/roles/<name>`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TokenRole {
    pub name: String,
    #[serde(default, deserialize_with = "fields::string_list")]
    pub allowed_policies: Vec<String>,
    #[serde(default, deserialize_with = "fields::string_list")]
    pub disallowed_policies: Vec<String>,
    #[serde(default, deserialize_with = "fields::boolean")]
    pub orphan: bool,
    #[serde(default = "yes", deserialize_with = "fields::boolean")]
    pub renewable: bool,
    #[serde(default)]
    pub path_suffix: String,
    #[serde(default, deserialize_with = "fields::uint")]
    pub token_explicit_max_ttl: u64,
    #[serde(default, deserialize_with = "fields::uint")]
    pub token_period: u64,
    #[serde(default, deserialize_with = "fields::uint")]
    pub token_ttl: u64,
    #[serde(default, deserialize_with = "fields::uint")]
    pub token_max_ttl: u64,
    #[serde(default, deserialize_with = "fields::boolean")]
    pub token_no_default_policy: bool,
    #[serde(default, deserialize_with = "fields::uint")]
    pub token_num_uses: u64,
    #[serde(default, deserialize_with = "fields::string_list")]
    pub token_bound_cidrs: Vec<String>,
    #[serde(default)]
    pub token_type: String,
}

fn yes() -> bool {
    true
}

/// Tokens whose hash [`TokenStore::lookup`] remembers; past this the memo
/// starts over.
const HASH_MEMO_CAP: usize = 1 << 16;

/// The data layer of tokens: entries, indexes, cache, roles.
pub struct TokenStore {
    storage: Arc<dyn Storage>,
    key: hmac::Key,
    cache: RwLock<HashMap<String, Arc<TokenEntry>>>,
    /// A token's HMAC never changes, and computing it was a third of a
    /// cached lookup, so `lookup` remembers it. The memo is keyed by a
    /// 128-bit SipHash of the token under a random per-process key: no
    /// token is held in clear, and no one can aim for a collision. Only
    /// tokens that were found are remembered, so a flood of made-up tokens
    /// cannot push out the real ones; a token revoked since is harmless:
    /// its hash finds nothing.
    hash_memo: Mutex<HashMap<u128, Arc<str>>>,
    memo_key: [u8; 16],
}

impl TokenStore {
    /// Open the store, creating its HMAC salt on first use.
    pub async fn open(storage: Arc<dyn Storage>) -> Result<TokenStore, CoreError> {
        let salt = match storage.get("salt").await? {
            Some(s) if s.len() == 32 => Zeroizing::new(s),
            Some(_) => return Err(CoreError::Internal("token salt corrupt".into())),
            None => {
                let mut s = Zeroizing::new(vec![0u8; 32]);
                aws_lc_rs::rand::fill(&mut s).map_err(|_| CoreError::Internal("rng".into()))?;
                storage.put("salt", &s).await?;
                s
            }
        };
        let mut memo_key = [0u8; 16];
        aws_lc_rs::rand::fill(&mut memo_key).map_err(|_| CoreError::Internal("rng".into()))?;
        Ok(TokenStore {
            storage,
            key: hmac::Key::new(hmac::HMAC_SHA256, &salt),
            cache: RwLock::new(HashMap::new()),
            hash_memo: Mutex::new(HashMap::new()),
            memo_key,
        })
    }

    /// The key of `token` in `hash_memo`.
    fn memo_id(&self, token: &str) -> u128 {
        let mut h = SipHasher24::new_with_key(&self.memo_key);
        h.write(token.as_bytes());
        h.finish128().as_u128()
    }

    /// [`Self::hash`], from the memo when `token` was found before; and
    /// whether it came from there.
    fn memo_hash(&self, id: u128, token: &str) -> (Arc<str>, bool) {
        match self.hash_memo.lock().get(&id) {
            Some(hash) => (hash.clone(), true),
            None => (self.hash(token).into(), false),
        }
    }

    fn remember_hash(&self, id: u128, hash: Arc<str>) {
        let mut memo = self.hash_memo.lock();
        if memo.len() >= HASH_MEMO_CAP {
            memo.clear();
        }
        memo.insert(id, hash);
    }

    /// The keyed hash under which a token is stored.
    pub fn hash(&self, token: &str) -> String {
        let tag = hmac::sign(&self.key, token.as_bytes());
        let tag = tag.as_ref();
        // `hex::encode` goes through a char iterator, a third of a token
        // lookup; the slice encoder writes the bytes directly.
        let mut out = vec![0u8; tag.len() * 2];
        match hex::encode_to_slice(tag, &mut out) {
            Ok(()) => String::from_utf8(out).unwrap_or_else(|_| hex::encode(tag)),
            Err(_) => hex::encode(tag),
        }
    }

    /// The entry of a live token, by its hash. Expired entries read as absent.
    pub async fn get(&self, hash: &str) -> Result<Option<Arc<TokenEntry>>, CoreError> {
        if let Some(e) = self.cache.read().get(hash).cloned() {
            return Ok((!e.is_expired(now())).then_some(e));
        }
        let Some(entry) = self
            .storage
            .get_json::<TokenEntry>(&format!("id/{hash}"))
            .await?
        else {
            return Ok(None);
        };
        let entry = Arc::new(entry);
        self.cache.write().insert(hash.to_string(), entry.clone());
        Ok((!entry.is_expired(now())).then_some(entry))
    }

    /// The entry of a live token, by the token itself.
    pub async fn lookup(&self, token: &str) -> Result<Option<Arc<TokenEntry>>, CoreError> {
        if token.is_empty() || token.len() > 512 {
            return Ok(None);
        }
        let id = self.memo_id(token);
        let (hash, remembered) = self.memo_hash(id, token);
        let entry = self.get(&hash).await?;
        if entry.is_some() && !remembered {
            self.remember_hash(id, hash);
        }
        Ok(entry)
    }

    pub async fn lookup_accessor(
        &self,
        accessor: &str,
    ) -> Result<Option<Arc<TokenEntry>>, CoreError> {
        if accessor.is_empty() || accessor.contains('/') {
            return Ok(None);
        }
        match self.storage.get(&format!("accessor/{accessor}")).await? {
            Some(hash) => self.get(&String::from_utf8_lossy(&hash)).await,
            None => Ok(None),
        }
    }

    /// Persist an entry with its indexes, atomically.
    pub async fn store(&self, entry: &TokenEntry) -> Result<(), CoreError> {
        let mut ops = vec![
            tresor_sdk::storage::json_op(format!("id/{}", entry.hash), entry)?,
            StorageOp::Put {
                key: format!("accessor/{}", entry.accessor),
                value: entry.hash.as_bytes().to_vec(),
            },
        ];
        if !entry.parent.is_empty() {
            ops.push(StorageOp::Put {
                key: format!("parent/{}/{}", entry.parent, entry.hash),
                value: Vec::new(),
            });
        }
        self.storage.batch(ops).await?;
        self.cache
            .write()
            .insert(entry.hash.clone(), Arc::new(entry.clone()));
        Ok(())
    }

    /// Update an existing entry in place (renewal, use count).
    pub async fn update(&self, entry: &TokenEntry) -> Result<(), CoreError> {
        self.storage
            .put_json(&format!("id/{}", entry.hash), entry)
            .await?;
        self.cache
            .write()
            .insert(entry.hash.clone(), Arc::new(entry.clone()));
        Ok(())
    }

    /// Hashes of the direct children of a token.
    pub async fn children(&self, hash: &str) -> Result<Vec<String>, CoreError> {
        Ok(self
            .storage
            .list(&format!("parent/{hash}/"))
            .await?
            .into_iter()
            .filter(|k| !k.ends_with('/'))
            .collect())
    }

    /// Remove an entry and its indexes (the caller revokes what hangs on it).
    pub async fn remove(&self, entry: &TokenEntry) -> Result<(), CoreError> {
        self.cache.write().remove(&entry.hash);
        let mut ops = vec![
            StorageOp::Delete {
                key: format!("id/{}", entry.hash),
            },
            StorageOp::Delete {
                key: format!("accessor/{}", entry.accessor),
            },
        ];
        if !entry.parent.is_empty() {
            ops.push(StorageOp::Delete {
                key: format!("parent/{}/{}", entry.parent, entry.hash),
            });
        }
        self.storage.batch(ops).await?;
        Ok(())
    }

    /// Read an entry even if expired (revocation of an expired token).
    pub async fn get_any(&self, hash: &str) -> Result<Option<TokenEntry>, CoreError> {
        Ok(self.storage.get_json(&format!("id/{hash}")).await?)
    }

    /// Make the children of `hash` orphans (revoke-orphan).
    pub async fn orphan_children(&self, hash: &str) -> Result<(), CoreError> {
        for child in self.children(hash).await? {
            if let Some(mut e) = self.get_any(&child).await? {
                e.parent.clear();
                self.update(&e).await?;
            }
            self.storage
                .delete(&format!("parent/{hash}/{child}"))
                .await?;
        }
        Ok(())
    }

    pub async fn accessors(&self) -> Result<Vec<String>, CoreError> {
        Ok(self.storage.list("accessor/").await?)
    }

    /// Remove index entries that point to no token; returns how many.
    pub async fn tidy(&self) -> Result<u64, CoreError> {
        let mut cleaned = 0;
        for acc in self.accessors().await? {
            let key = format!("accessor/{acc}");
            if let Some(hash) = self.storage.get(&key).await? {
                let hash = String::from_utf8_lossy(&hash).to_string();
                if self.get_any(&hash).await?.is_none() {
                    self.storage.delete(&key).await?;
                    cleaned += 1;
                }
            }
        }
        for parent in self.storage.list("parent/").await? {
            let parent = parent.trim_end_matches('/');
            let parent_alive = self.get_any(parent).await?.is_some();
            for child in self.storage.list(&format!("parent/{parent}/")).await? {
                if !parent_alive || self.get_any(&child).await?.is_none() {
                    self.storage
                        .delete(&format!("parent/{parent}/{child}"))
                        .await?;
                    cleaned += 1;
                }
            }
        }
        Ok(cleaned)
    }

    pub async fn role(&self, name: &str) -> Result<Option<TokenRole>, CoreError> {
        Ok(self.storage.get_json(&format!("role/{name}")).await?)
    }

    pub async fn put_role(&self, role: &TokenRole) -> Result<(), CoreError> {
        Ok(self
            .storage
            .put_json(&format!("role/{}", role.name), role)
            .await?)
    }

    pub async fn delete_role(&self, name: &str) -> Result<(), CoreError> {
        Ok(self.storage.delete(&format!("role/{name}")).await?)
    }

    pub async fn roles(&self) -> Result<Vec<String>, CoreError> {
        Ok(self.storage.list("role/").await?)
    }
}

/// Compute a token's expiry from requested TTLs and limits, the way Vault
/// does: a periodic token lives one period; otherwise the requested TTL (or
/// the default), never past the explicit max or the mount max.
pub(crate) struct TtlPlan {
    pub ttl: Duration,
    pub expire_time: i64,
    pub max_expire_time: i64,
}

pub(crate) fn plan_ttl(
    now: i64,
    requested: Duration,
    explicit_max: Duration,
    period: Duration,
    default_ttl: Duration,
    mount_max: Duration,
    never_expires: bool,
) -> TtlPlan {
    if never_expires {
        return TtlPlan {
            ttl: Duration::ZERO,
            expire_time: 0,
            max_expire_time: 0,
        };
    }
    let mut max = if period.is_zero() {
        mount_max
    } else {
        Duration::MAX
    };
    if !explicit_max.is_zero() {
        max = max.min(explicit_max);
    }
    let ttl = if !period.is_zero() {
        period.min(max)
    } else if requested.is_zero() {
        default_ttl.min(max)
    } else {
        requested.min(max)
    };
    let max_expire_time = if max == Duration::MAX {
        0
    } else {
        now.saturating_add(max.as_secs() as i64)
    };
    TtlPlan {
        ttl,
        expire_time: now.saturating_add(ttl.as_secs() as i64),
        max_expire_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_vault_shape() {
        let t = generate_token().expect("token");
        assert_eq!(t.len(), 28);
        assert!(t.starts_with("hvs."));
        assert!(t[4..].bytes().all(|b| BASE62.contains(&b)));
    }

    #[test]
    fn cidrs() {
        let a: IpAddr = "10.1.2.3".parse().expect("ip");
        assert!(cidr_contains("10.0.0.0/8", a));
        assert!(!cidr_contains("11.0.0.0/8", a));
        assert!(cidr_contains("10.1.2.3", a));
        assert!(cidr_contains("0.0.0.0/0", a));
        assert!(!cidr_contains("::/0", a));
        assert!(parse_cidrs(&["10.0.0.0/33x".into()]).is_err());
    }

    #[test]
    fn ttl_plans() {
        let h = Duration::from_secs(3600);
        let p = plan_ttl(
            0,
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            h,
            2 * h,
            false,
        );
        assert_eq!((p.ttl, p.expire_time, p.max_expire_time), (h, 3600, 7200));
        let p = plan_ttl(0, 3 * h, Duration::ZERO, Duration::ZERO, h, 2 * h, false);
        assert_eq!(p.ttl, 2 * h);
        let p = plan_ttl(0, 3 * h, h / 2, Duration::ZERO, h, 2 * h, false);
        assert_eq!(p.ttl, h / 2);
        let p = plan_ttl(0, Duration::ZERO, Duration::ZERO, 5 * h, h, 2 * h, false);
        assert_eq!((p.ttl, p.max_expire_time), (5 * h, 0));
    }

    #[tokio::test]
    async fn remembered_hashes_are_the_hmac() {
        let s: Arc<dyn Storage> = Arc::new(tresor_sdk::testing::MemoryStorage::new());
        let ts = TokenStore::open(s).await.expect("open");
        let (a, b) = (generate_token().expect("a"), generate_token().expect("b"));
        let memo = |t: &str| {
            let id = ts.memo_id(t);
            let (hash, _) = ts.memo_hash(id, t);
            ts.remember_hash(id, hash.clone());
            hash
        };
        for _ in 0..2 {
            assert_eq!(*memo(&a), ts.hash(&a));
            assert_eq!(*memo(&b), ts.hash(&b));
        }
        assert_ne!(memo(&a), memo(&b));
        // Bounded: past the cap it starts over rather than grow.
        for i in 0..HASH_MEMO_CAP + 10 {
            memo(&format!("t{i}"));
        }
        assert!(ts.hash_memo.lock().len() <= HASH_MEMO_CAP);
        assert_eq!(*memo(&a), ts.hash(&a));
        // Made-up tokens are not remembered by a lookup.
        let before = ts.hash_memo.lock().len();
        assert!(ts.lookup("hvs.made-up").await.expect("lookup").is_none());
        assert_eq!(ts.hash_memo.lock().len(), before);
    }

    #[tokio::test]
    async fn store_lookup_remove() {
        let s: Arc<dyn Storage> = Arc::new(tresor_sdk::testing::MemoryStorage::new());
        let ts = TokenStore::open(s.clone()).await.expect("open");
        let tok = generate_token().expect("token");
        let e = TokenEntry {
            hash: ts.hash(&tok),
            accessor: random_base62(24).expect("acc"),
            policies: vec!["default".into()],
            creation_time: now(),
            path: "auth/token/create".into(),
            ..Default::default()
        };
        ts.store(&e).await.expect("store");
        assert!(ts.lookup(&tok).await.expect("lookup").is_some());
        assert!(ts
            .lookup_accessor(&e.accessor)
            .await
            .expect("acc")
            .is_some());
        // The token itself is nowhere in storage.
        for k in s.list_recursive("").await.expect("keys") {
            assert!(!k.contains(tok.as_str()));
            let v = s.get(&k).await.expect("get").unwrap_or_default();
            assert!(!String::from_utf8_lossy(&v).contains(tok.as_str()));
        }
        ts.remove(&e).await.expect("remove");
        assert!(ts.lookup(&tok).await.expect("lookup").is_none());
        // The salt survives reopening: same hash.
        let ts2 = TokenStore::open(s).await.expect("reopen");
        assert_eq!(ts2.hash(&tok), e.hash);
    }
}
