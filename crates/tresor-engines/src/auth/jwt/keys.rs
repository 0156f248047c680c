//! Where signing keys come from (static PEMs, a JWKS URL, OIDC discovery),
//! the cache of fetched key sets, and the signature check itself.
//!
//! Fetched key sets are kept for `JWKS_CACHE_TTL`. A token whose `kid` is
//! not in the cached set triggers a refetch (the provider may have rotated),
//! but at most once per `refresh_interval`, so that a stream of tokens with
//! made-up key ids cannot turn this server into a load generator against
//! the provider.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;
use tresor_sdk::BackendError;

use super::config::{Config, KeySource};

const JWKS_CACHE_TTL: Duration = Duration::from_secs(3600);
pub(crate) const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// What an OpenID provider publishes at `.well-known/openid-configuration`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub authorization_endpoint: String,
    #[serde(default)]
    pub token_endpoint: String,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
}

#[derive(Default)]
struct CacheState {
    /// The source the cached data belongs to (URL and CA), so a config
    /// change never serves keys of the previous provider.
    source: String,
    discovery: Option<Arc<Discovery>>,
    jwks: Option<Arc<Vec<Jwk>>>,
    fetched_at: Option<Instant>,
}

pub(crate) struct KeyCache {
    state: Mutex<CacheState>,
    refresh_interval: Duration,
}

fn config_error(msg: impl std::fmt::Display) -> BackendError {
    BackendError::bad_request(msg.to_string())
}

/// An HTTP client that trusts only `ca_pem` when it is given.
pub(crate) fn http_client(ca_pem: &str, field: &str) -> Result<reqwest::Client, BackendError> {
    let mut b = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3));
    if !ca_pem.trim().is_empty() {
        let certs = reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes())
            .map_err(|e| config_error(format!("{field}: invalid PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(config_error(format!(
                "{field}: no certificate found in PEM"
            )));
        }
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build()
        .map_err(|e| BackendError::Internal(format!("http client: {e}")))
}

async fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    what: &str,
) -> Result<T, BackendError> {
    let resp = client
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| config_error(format!("error fetching {what} from {url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(config_error(format!(
            "error fetching {what} from {url}: status {}",
            resp.status()
        )));
    }
    resp.json()
        .await
        .map_err(|e| config_error(format!("error decoding {what} from {url}: {e}")))
}

/// Keys of a JWKS document that can verify signatures; entries this crate
/// cannot use (symmetric keys, encryption keys, unknown types) are skipped
/// rather than failing the whole set.
fn usable_keys(doc: Value) -> Vec<Jwk> {
    let Some(Value::Array(keys)) = doc.get("keys").cloned() else {
        return Vec::new();
    };
    keys.into_iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
        .filter(|k| {
            !matches!(
                k.algorithm,
                AlgorithmParameters::OctetKey(_) | AlgorithmParameters::Other(_)
            ) && !matches!(k.common.public_key_use, Some(PublicKeyUse::Encryption))
        })
        .collect()
}

fn jwk_family(k: &Jwk) -> Option<AlgorithmFamily> {
    match k.algorithm {
        AlgorithmParameters::RSA(_) => Some(AlgorithmFamily::Rsa),
        AlgorithmParameters::EllipticCurve(_) => Some(AlgorithmFamily::Ec),
        AlgorithmParameters::OctetKeyPair(_) => Some(AlgorithmFamily::Ed),
        _ => None,
    }
}

/// A public key from PEM (SPKI, PKCS#1 RSA, or a certificate).
pub(crate) fn parse_public_pem(pem: &str) -> Result<DecodingKey, String> {
    if pem.contains("PRIVATE KEY") {
        return Err(
            "a private key was given; only public keys or certificates are accepted".into(),
        );
    }
    let b = pem.as_bytes();
    DecodingKey::from_rsa_pem(b)
        .or_else(|_| DecodingKey::from_ec_pem(b))
        .or_else(|_| DecodingKey::from_ed_pem(b))
        .map_err(|_| "not a PEM-encoded RSA, EC or Ed25519 public key or certificate".to_string())
}

/// Every candidate key for a token's header, in the order to try them.
fn candidates_from_jwks(jwks: &[Jwk], kid: Option<&str>, alg: Algorithm) -> Vec<DecodingKey> {
    jwks.iter()
        .filter(|k| match kid {
            Some(kid) => k.common.key_id.as_deref() == Some(kid),
            None => true,
        })
        .filter(|k| jwk_family(k) == Some(alg.family()))
        .filter_map(|k| DecodingKey::from_jwk(k).ok())
        .collect()
}

fn has_kid(jwks: &[Jwk], kid: &str) -> bool {
    jwks.iter().any(|k| k.common.key_id.as_deref() == Some(kid))
}

fn token_error(msg: impl std::fmt::Display) -> BackendError {
    BackendError::bad_request(format!("error validating token: {msg}"))
}

/// Check the signature of `token` with one key; `Ok(None)` when the
/// signature does not verify with it. Times, issuer and audience are left
/// to the caller, which knows the role's leeways.
fn try_key(token: &str, key: &DecodingKey, alg: Algorithm) -> Result<Option<Value>, BackendError> {
    if key.family() != alg.family() {
        return Ok(None);
    }
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    match jsonwebtoken::decode::<Value>(token, key, &v) {
        Ok(data) => Ok(Some(data.claims)),
        Err(e) => match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature
            | jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey
            | jsonwebtoken::errors::ErrorKind::InvalidRsaKey(_)
            | jsonwebtoken::errors::ErrorKind::InvalidKeyFormat => Ok(None),
            _ => Err(token_error(format!("malformed token: {e}"))),
        },
    }
}

fn first_valid(
    token: &str,
    keys: &[DecodingKey],
    alg: Algorithm,
) -> Result<Option<Value>, BackendError> {
    for key in keys {
        if let Some(claims) = try_key(token, key, alg)? {
            if !claims.is_object() {
                return Err(token_error("claims are not a JSON object"));
            }
            return Ok(Some(claims));
        }
    }
    Ok(None)
}

impl KeyCache {
    pub(crate) fn new(refresh_interval: Duration) -> Self {
        KeyCache {
            state: Mutex::new(CacheState::default()),
            refresh_interval,
        }
    }

    pub(crate) async fn invalidate(&self) {
        *self.state.lock().await = CacheState::default();
    }

    /// The provider's discovery document (fetched once, then cached).
    pub(crate) async fn discovery(&self, cfg: &Config) -> Result<Arc<Discovery>, BackendError> {
        let mut st = self.state.lock().await;
        self.discovery_locked(&mut st, cfg).await
    }

    async fn discovery_locked(
        &self,
        st: &mut CacheState,
        cfg: &Config,
    ) -> Result<Arc<Discovery>, BackendError> {
        let source = cfg.cache_source();
        if st.source != source {
            *st = CacheState {
                source,
                ..Default::default()
            };
        }
        if let Some(d) = &st.discovery {
            return Ok(d.clone());
        }
        let client = http_client(&cfg.oidc_discovery_ca_pem, "oidc_discovery_ca_pem")?;
        let url = format!(
            "{}/.well-known/openid-configuration",
            cfg.oidc_discovery_url.trim_end_matches('/')
        );
        let d: Discovery = get_json(&client, &url, "OIDC discovery document").await?;
        // OpenID Connect Discovery 1.0 §4.3: the issuer must be the URL the
        // document was fetched for, or a provider could speak for another.
        if d.issuer.trim_end_matches('/') != cfg.oidc_discovery_url.trim_end_matches('/') {
            return Err(config_error(format!(
                "oidc_discovery_url: the provider's issuer {:?} does not match the discovery URL",
                d.issuer
            )));
        }
        let d = Arc::new(d);
        st.discovery = Some(d.clone());
        Ok(d)
    }

    /// The key set, fetched when absent or stale, or (rate-limited) when
    /// `want_kid` is not in it.
    async fn jwks(
        &self,
        cfg: &Config,
        want_kid: Option<&str>,
        retry: bool,
    ) -> Result<Arc<Vec<Jwk>>, BackendError> {
        let mut st = self.state.lock().await;
        let (url, client) = match cfg.key_source() {
            KeySource::Discovery => {
                let d = self.discovery_locked(&mut st, cfg).await?;
                (
                    d.jwks_uri.clone(),
                    http_client(&cfg.oidc_discovery_ca_pem, "oidc_discovery_ca_pem")?,
                )
            }
            KeySource::JwksUrl => {
                let source = cfg.cache_source();
                if st.source != source {
                    *st = CacheState {
                        source,
                        ..Default::default()
                    };
                }
                (
                    cfg.jwks_url.clone(),
                    http_client(&cfg.jwks_ca_pem, "jwks_ca_pem")?,
                )
            }
            KeySource::Static | KeySource::None => return Ok(Arc::new(Vec::new())),
        };
        let age = st.fetched_at.map(|t| t.elapsed());
        let stale = age.is_none_or(|a| a >= JWKS_CACHE_TTL);
        let unknown_kid = retry
            || match (&st.jwks, want_kid) {
                (Some(keys), Some(kid)) => !has_kid(keys, kid),
                _ => false,
            };
        let may_refresh = age.is_none_or(|a| a >= self.refresh_interval);
        if let Some(keys) = &st.jwks {
            let refetch = stale || (unknown_kid && may_refresh);
            if !refetch {
                return Ok(keys.clone());
            }
        }
        let doc: Value = get_json(&client, &url, "JWKS").await?;
        let keys = Arc::new(usable_keys(doc));
        st.jwks = Some(keys.clone());
        st.fetched_at = Some(Instant::now());
        Ok(keys)
    }

    /// Verify the signature and algorithm of `token`; the claims on success.
    pub(crate) async fn verify(&self, cfg: &Config, token: &str) -> Result<Value, BackendError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| token_error("malformed token header or unsupported algorithm"))?;
        let alg = header.alg;
        if alg.family() == AlgorithmFamily::Hmac || !cfg.allowed_algorithms().contains(&alg) {
            return Err(token_error(format!(
                "token is signed with {alg:?}, which jwt_supported_algs does not allow"
            )));
        }
        if header.crit.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(token_error(
                "token has critical header extensions this server does not understand",
            ));
        }
        let jwks_source = matches!(cfg.key_source(), KeySource::JwksUrl | KeySource::Discovery);
        let mut cached = None;
        let candidates: Vec<DecodingKey> = match cfg.key_source() {
            KeySource::Static => cfg
                .jwt_validation_pubkeys
                .iter()
                .filter_map(|p| parse_public_pem(p).ok())
                .collect(),
            KeySource::JwksUrl | KeySource::Discovery => {
                let keys = self.jwks(cfg, header.kid.as_deref(), false).await?;
                let c = candidates_from_jwks(&keys, header.kid.as_deref(), alg);
                cached = Some(keys);
                c
            }
            KeySource::None => {
                return Err(BackendError::bad_request(
                    "could not load configuration: no key source is configured",
                ))
            }
        };
        if candidates.is_empty() && header.kid.is_some() {
            return Err(token_error("no key with the token's key id (kid) is known"));
        }
        if let Some(claims) = first_valid(token, &candidates, alg)? {
            return Ok(claims);
        }
        // A token without `kid` may be signed with a key the provider
        // rotated in since the last fetch: look once more (rate-limited).
        if jwks_source && header.kid.is_none() {
            let keys = self.jwks(cfg, None, true).await?;
            if !cached.as_ref().is_some_and(|c| Arc::ptr_eq(c, &keys)) {
                let fresh = candidates_from_jwks(&keys, None, alg);
                if let Some(claims) = first_valid(token, &fresh, alg)? {
                    return Ok(claims);
                }
            }
        }
        Err(token_error(
            "no known key successfully validated the token signature",
        ))
    }
}
