//! The userpass auth method, on Vault's paths:
//!
//! | path | operations |
//! | --- | --- |
//! | `users` | list |
//! | `users/<username>` | read, write (`password` and the `token_*` fields), delete |
//! | `users/<username>/password` | write (`password`) |
//! | `users/<username>/policies` | write (`token_policies` or `policies`) |
//! | `login/<username>` | write (`password`), unauthenticated |
//! | `config/lockout` | read, write (Vault's `user_lockout_config` fields) |
//! | `lockout/<username>` | read (lock state), delete (unlock) |
//!
//! User names are trimmed and lower-cased before anything else (storage,
//! lockout), so `Alice`, `alice` and ` alice ` are one user. Passwords are
//! stored as argon2id PHC strings. A login for an unknown user verifies
//! the password against a dummy hash made once per process, so that it
//! takes as long and fails the same way as a wrong password.
//!
//! Argon2 is memory- and CPU-heavy by design: it runs on the blocking pool,
//! and at most `2 × cores` hashes run at once, so a flood of logins queues
//! instead of allocating 19 MiB per request without bound.

use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;
use tresor_sdk::{
    Backend, BackendConfig, BackendError, BackendType, Map, Operation, PathTable, Request,
    Response, SpecialPaths, Storage, StorageExt,
};
use zeroize::Zeroizing;

use super::lockout::Lockout;
use super::token_fields::{
    ip_allowed, normalize_policies, with_legacy_names, TokenFields, LEGACY_TTL_NAMES,
};

const USER_PREFIX: &str = "user/";
/// Every login failure answers this (unknown user, wrong password, lockout).
const INVALID: &str = "invalid username or password";
/// OWASP's argon2id baseline: 19 MiB, 2 passes, 1 lane.
const ARGON2_M_KIB: u32 = 19 * 1024;
const ARGON2_T: u32 = 2;
const ARGON2_P: u32 = 1;

pub fn factory(_conf: &BackendConfig) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(Arc::new(UserPass::new()?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Users,
    User,
    Password,
    Policies,
    Login,
    LockoutConfig,
    Lockout,
}

/// The userpass backend of one mount.
pub struct UserPass {
    routes: PathTable<Route>,
    lockout: Lockout,
    hashing: Arc<Semaphore>,
    dummy_hash: &'static str,
}

fn argon2() -> Result<Argon2<'static>, BackendError> {
    let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None)
        .map_err(|e| BackendError::Internal(format!("argon2 params: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_blocking(password: &[u8]) -> Result<String, BackendError> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| BackendError::Internal("random source failed".into()))?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| BackendError::Internal(format!("argon2 salt: {e}")))?;
    argon2()?
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| BackendError::Internal(format!("argon2 hash: {e}")))
}

/// A hash of a random password nobody knows, made once per process.
fn dummy_hash() -> Result<&'static str, BackendError> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(h) = DUMMY.get() {
        return Ok(h);
    }
    let mut pw = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(&mut pw[..])
        .map_err(|_| BackendError::Internal("random source failed".into()))?;
    let h = hash_blocking(&pw[..])?;
    Ok(DUMMY.get_or_init(|| h))
}

impl UserPass {
    pub fn new() -> Result<Self, BackendError> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(UserPass {
            routes: PathTable::new(&[
                ("users/?", Route::Users),
                ("users/(?P<username>[^/]+)", Route::User),
                ("users/(?P<username>[^/]+)/password", Route::Password),
                ("users/(?P<username>[^/]+)/policies", Route::Policies),
                ("login/(?P<username>[^/]+)", Route::Login),
                ("config/lockout", Route::LockoutConfig),
                ("lockout/(?P<username>[^/]+)", Route::Lockout),
            ]),
            lockout: Lockout::default(),
            hashing: Arc::new(Semaphore::new(cores * 2)),
            dummy_hash: dummy_hash()?,
        })
    }

    async fn hash(&self, password: Zeroizing<String>) -> Result<String, BackendError> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| BackendError::Internal("hashing pool closed".into()))?;
        tokio::task::spawn_blocking(move || hash_blocking(password.as_bytes()))
            .await
            .map_err(|e| BackendError::Internal(format!("argon2 task: {e}")))?
    }

    async fn verify(&self, password: Zeroizing<String>, phc: String) -> Result<bool, BackendError> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| BackendError::Internal("hashing pool closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&phc)
                .map_err(|e| BackendError::Internal(format!("stored password hash: {e}")))?;
            // The verifier compares the digests in constant time.
            Ok(Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok())
        })
        .await
        .map_err(|e| BackendError::Internal(format!("argon2 task: {e}")))?
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserEntry {
    username: String,
    /// argon2id PHC string.
    password_hash: String,
    #[serde(flatten)]
    token: TokenFields,
}

#[derive(Deserialize)]
struct PasswordInput {
    #[serde(default)]
    password: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PoliciesInput {
    #[serde(default, deserialize_with = "token_policies_f")]
    token_policies: Option<Vec<String>>,
    #[serde(default, deserialize_with = "policies_f")]
    policies: Option<Vec<String>>,
}

fn token_policies_f<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    tresor_sdk::fields::opt_string_list(d)
        .map_err(|e: D::Error| serde::de::Error::custom(format!("token_policies: {e}")))
}
fn policies_f<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    tresor_sdk::fields::opt_string_list(d)
        .map_err(|e: D::Error| serde::de::Error::custom(format!("policies: {e}")))
}

/// The one spelling of a user name: trimmed and lower-cased.
fn normalize(raw: &str) -> Result<String, BackendError> {
    let n = raw.trim().to_lowercase();
    if n.is_empty() || n == "." || n == ".." || n.chars().any(char::is_control) || n.len() > 512 {
        return Err(BackendError::bad_request("username: invalid username"));
    }
    Ok(n)
}

fn user_key(name: &str) -> String {
    format!("{USER_PREFIX}{name}")
}

async fn load_user(storage: &dyn Storage, name: &str) -> Result<Option<UserEntry>, BackendError> {
    Ok(storage.get_json(&user_key(name)).await?)
}

fn password_of(req: &Request) -> Result<Option<Zeroizing<String>>, BackendError> {
    Ok(req
        .parse::<PasswordInput>()?
        .password
        .filter(|p| !p.is_empty())
        .map(Zeroizing::new))
}

#[async_trait]
impl Backend for UserPass {
    fn backend_type(&self) -> BackendType {
        BackendType::Credential
    }

    fn special_paths(&self) -> SpecialPaths {
        SpecialPaths {
            unauthenticated: vec!["login/*".into()],
            root: Vec::new(),
        }
    }

    async fn initialize(&self, storage: &dyn Storage) -> Result<(), BackendError> {
        self.lockout.config(storage).await.map(|_| ())
    }

    async fn existence_check(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<bool>, BackendError> {
        match self.routes.route(&req.path) {
            Some((Route::User, caps)) => {
                let name = normalize(caps.get("username"))?;
                Ok(Some(storage.get(&user_key(&name)).await?.is_some()))
            }
            _ => Ok(None),
        }
    }

    async fn handle(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError> {
        if req.operation == Operation::Renew {
            return self.renew(req, storage).await.map(Some);
        }
        let (route, caps) = self
            .routes
            .route(&req.path)
            .ok_or(BackendError::UnsupportedPath)?;
        let op = req.operation;
        let write = matches!(op, Operation::Create | Operation::Update);
        let name = || normalize(caps.get("username"));
        match (route, op) {
            (Route::Users, Operation::List) => {
                let keys = storage.list(USER_PREFIX).await?;
                Ok((!keys.is_empty()).then(|| Response::list(keys)))
            }
            (Route::User, Operation::Read) => {
                let Some(u) = load_user(storage, &name()?).await? else {
                    return Ok(None);
                };
                let mut m = Map::new();
                u.token.populate(&mut m);
                Ok(Some(Response::data(m)))
            }
            (Route::User, _) if write => self.write_user(req, storage, &name()?).await,
            (Route::User, Operation::Delete) => {
                let n = name()?;
                storage.delete(&user_key(&n)).await?;
                self.lockout.unlock(&n);
                Ok(None)
            }
            (Route::Password, _) if write => {
                let n = name()?;
                let pw = password_of(req)?
                    .ok_or_else(|| BackendError::bad_request("password: missing password"))?;
                let mut u = load_user(storage, &n)
                    .await?
                    .ok_or_else(|| BackendError::bad_request("username: user does not exist"))?;
                u.password_hash = self.hash(pw).await?;
                storage.put_json(&user_key(&n), &u).await?;
                Ok(None)
            }
            (Route::Policies, _) if write => {
                let n = name()?;
                let i: PoliciesInput = req.parse()?;
                let mut u = load_user(storage, &n)
                    .await?
                    .ok_or_else(|| BackendError::bad_request("username: user does not exist"))?;
                u.token.token_policies =
                    normalize_policies(&i.token_policies.or(i.policies).unwrap_or_default());
                storage.put_json(&user_key(&n), &u).await?;
                Ok(None)
            }
            (Route::Login, _) if write => self
                .login(req, storage, caps.get("username"))
                .await
                .map(Some),
            (Route::LockoutConfig, Operation::Read) => {
                self.lockout.read_config(storage).await.map(Some)
            }
            (Route::LockoutConfig, _) if write => {
                self.lockout.write_config(req, storage).await?;
                Ok(None)
            }
            (Route::Lockout, Operation::Read) => {
                let n = name()?;
                if load_user(storage, &n).await?.is_none() {
                    return Ok(None);
                }
                let mut m = self.lockout.status(&n);
                m.insert("username".into(), json!(n));
                Ok(Some(Response::data(m)))
            }
            (Route::Lockout, Operation::Delete) | (Route::Lockout, Operation::Update) => {
                self.lockout.unlock(&name()?);
                Ok(None)
            }
            _ => Err(BackendError::UnsupportedOperation),
        }
    }
}

impl UserPass {
    async fn write_user(
        &self,
        req: &Request,
        storage: &dyn Storage,
        name: &str,
    ) -> Result<Option<Response>, BackendError> {
        let pw = password_of(req)?;
        let existing = load_user(storage, name).await?;
        let mut user = match existing {
            Some(u) => u,
            None => {
                if pw.is_none() {
                    return Err(BackendError::bad_request("password: missing password"));
                }
                UserEntry {
                    username: name.to_string(),
                    password_hash: String::new(),
                    token: TokenFields::default(),
                }
            }
        };
        user.token
            .merge_update(&with_legacy_names(req, LEGACY_TTL_NAMES))?;
        if let Some(pw) = pw {
            user.password_hash = self.hash(pw).await?;
        }
        storage.put_json(&user_key(name), &user).await?;
        Ok(None)
    }

    async fn login(
        &self,
        req: &Request,
        storage: &dyn Storage,
        raw_name: &str,
    ) -> Result<Response, BackendError> {
        let invalid = || BackendError::bad_request(INVALID);
        let pw = password_of(req)?
            .ok_or_else(|| BackendError::bad_request("password: missing password"))?;
        let Ok(name) = normalize(raw_name) else {
            // Same work and answer as any other failure.
            let _ = self.verify(pw, self.dummy_hash.to_string()).await?;
            return Err(invalid());
        };
        let user = load_user(storage, &name).await?;
        let hash = user
            .as_ref()
            .map_or_else(|| self.dummy_hash.to_string(), |u| u.password_hash.clone());
        let ok = self.verify(pw, hash).await?;
        let Some(user) = user else {
            return Err(invalid());
        };
        let cfg = self.lockout.config(storage).await?;
        if self.lockout.is_locked(&cfg, &name) {
            return Err(invalid());
        }
        if !ok || !ip_allowed(&user.token.token_bound_cidrs, req.remote_addr) {
            self.lockout.record_failure(&cfg, &name);
            return Err(invalid());
        }
        self.lockout.record_success(&name);
        let mut meta = std::collections::BTreeMap::new();
        meta.insert("username".to_string(), name.clone());
        let auth = user.token.to_auth(&name, &name, meta);
        Ok(Response {
            auth: Some(auth),
            ..Default::default()
        })
    }

    async fn renew(&self, req: &Request, storage: &dyn Storage) -> Result<Response, BackendError> {
        let issued = req
            .auth
            .as_ref()
            .ok_or_else(|| BackendError::bad_request("renew: request has no auth"))?;
        let name = issued
            .metadata
            .get("username")
            .cloned()
            .unwrap_or_else(|| issued.alias_name.clone());
        let user = load_user(storage, &name).await?.ok_or_else(|| {
            BackendError::bad_request(format!(
                "username: user {name:?} no longer exists, not renewing"
            ))
        })?;
        if !user.token.policies_match(issued) {
            return Err(BackendError::bad_request(
                "token_policies: policies have changed, not renewing",
            ));
        }
        Ok(Response {
            auth: Some(user.token.renew_auth(issued)),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards the benchmark note in the report: one hash at these
    /// parameters must stay well under a second even unoptimised.
    #[test]
    fn hash_round_trip() {
        let h = hash_blocking(b"pw").expect("hash");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        let parsed = PasswordHash::new(&h).expect("phc");
        assert!(Argon2::default().verify_password(b"pw", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"px", &parsed).is_err());
    }
}
