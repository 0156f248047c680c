//! The OIDC authorization-code flow: `oidc/auth_url` starts it (state,
//! nonce, PKCE S256), `oidc/callback` finishes it (code exchange with the
//! verifier and client secret, ID token checks including the nonce).
//!
//! Pending states live in memory, single-use, for `STATE_TTL`: a callback
//! must come back to the node that issued the URL, as with Vault.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;
use tresor_sdk::{BackendError, Map, Request, Response, Storage};

use super::config::{Config, KeySource};
use super::keys::http_client;
use super::role::RoleType;
use super::{authorize, claims, load_config, login_role, JwtBackend};

const STATE_TTL: Duration = Duration::from_secs(300);
/// Bounds the memory unauthenticated `auth_url` calls can take.
const MAX_PENDING: usize = 10_000;

struct Pending {
    role: String,
    redirect_uri: String,
    nonce: String,
    code_verifier: String,
    client_nonce: String,
    created: Instant,
}

#[derive(Default)]
pub(crate) struct StateStore {
    pending: Mutex<HashMap<String, Pending>>,
}

fn random_token(bytes: usize) -> Result<String, BackendError> {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf)
        .map_err(|_| BackendError::Internal("random number generator failed".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

fn pkce_challenge(verifier: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(d.as_ref())
}

/// Vault's rule: exact match, except that for loopback hosts the port is
/// ignored (RFC 8252 §7.3, native apps pick a free port).
fn redirect_allowed(uri: &str, allowed: &[String]) -> bool {
    let Ok(mut input) = reqwest::Url::parse(uri) else {
        return false;
    };
    let loopback = matches!(
        input.host_str(),
        Some("localhost") | Some("127.0.0.1") | Some("[::1]")
    );
    if !loopback {
        return allowed.iter().any(|a| a == uri);
    }
    if input.set_port(None).is_err() {
        return false;
    }
    allowed.iter().any(|a| match reqwest::Url::parse(a) {
        Ok(mut u) => u.set_port(None).is_ok() && u == input,
        Err(_) => false,
    })
}

fn not_configured() -> BackendError {
    BackendError::bad_request("OIDC login is not configured for this mount")
}

fn oidc_ready(cfg: &Config) -> Result<(), BackendError> {
    if cfg.key_source() != KeySource::Discovery || cfg.oidc_client_id.is_empty() {
        return Err(not_configured());
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct AuthUrlInput {
    #[serde(default)]
    role: String,
    #[serde(default)]
    redirect_uri: String,
    #[serde(default)]
    client_nonce: String,
}

pub(super) async fn auth_url(
    b: &JwtBackend,
    req: &Request,
    storage: &dyn Storage,
) -> Result<Option<Response>, BackendError> {
    let input: AuthUrlInput = req.parse()?;
    let cfg = load_config(storage).await?;
    oidc_ready(&cfg)?;
    let (name, role) = login_role(storage, &cfg, &input.role).await?;
    if role.role_type != RoleType::Oidc {
        return Err(BackendError::bad_request(format!(
            "role {name:?} is not an OIDC role"
        )));
    }
    if input.redirect_uri.is_empty() {
        return Err(BackendError::bad_request("missing redirect_uri"));
    }
    if !redirect_allowed(&input.redirect_uri, &role.allowed_redirect_uris) {
        return Err(BackendError::bad_request(format!(
            "unauthorized redirect_uri: {}",
            input.redirect_uri
        )));
    }
    let disc = b.keys.discovery(&cfg).await?;
    let state = random_token(24)?;
    let nonce = random_token(24)?;
    // RFC 7636 §4.1: 32 random bytes give a 43-character verifier.
    let code_verifier = random_token(32)?;
    let mut url = reqwest::Url::parse(&disc.authorization_endpoint).map_err(|_| {
        BackendError::bad_request("the provider's authorization_endpoint is not a valid URL")
    })?;
    let mut scopes = vec!["openid".to_string()];
    for s in &role.oidc_scopes {
        if !scopes.contains(s) {
            scopes.push(s.clone());
        }
    }
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("client_id", &cfg.oidc_client_id)
            .append_pair("redirect_uri", &input.redirect_uri)
            .append_pair("response_type", "code")
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &pkce_challenge(&code_verifier))
            .append_pair("code_challenge_method", "S256");
        if cfg.oidc_response_mode == "form_post" {
            q.append_pair("response_mode", "form_post");
        }
        if !role.max_age.is_zero() {
            q.append_pair("max_age", &role.max_age.as_secs().to_string());
        }
    }
    let mut pending = b.states.pending.lock().await;
    pending.retain(|_, p| p.created.elapsed() < STATE_TTL);
    if pending.len() >= MAX_PENDING {
        return Err(BackendError::bad_request(
            "too many OIDC logins in progress, try again later",
        ));
    }
    pending.insert(
        state,
        Pending {
            role: name,
            redirect_uri: input.redirect_uri,
            nonce,
            code_verifier,
            client_nonce: input.client_nonce,
            created: Instant::now(),
        },
    );
    drop(pending);
    let mut m = Map::new();
    m.insert("auth_url".into(), Value::String(url.to_string()));
    Ok(Some(Response::data(m)))
}

#[derive(Debug, Deserialize)]
struct CallbackInput {
    #[serde(default)]
    state: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    client_nonce: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    #[serde(default)]
    id_token: String,
}

pub(super) async fn callback(
    b: &JwtBackend,
    req: &Request,
    storage: &dyn Storage,
) -> Result<Option<Response>, BackendError> {
    let input: CallbackInput = req.parse()?;
    let missing = || BackendError::bad_request("Expired or missing OAuth state.");
    // Taken out at once: a state is good for one attempt, whatever happens.
    let pending = b
        .states
        .pending
        .lock()
        .await
        .remove(&input.state)
        .ok_or_else(missing)?;
    if pending.created.elapsed() >= STATE_TTL {
        return Err(missing());
    }
    if pending.client_nonce != input.client_nonce {
        return Err(BackendError::bad_request("invalid client_nonce"));
    }
    if !input.error.is_empty() {
        return Err(BackendError::bad_request(format!(
            "Provider returned error: {}: {}",
            input.error, input.error_description
        )));
    }
    if input.code.is_empty() {
        return Err(BackendError::bad_request(
            "OAuth code parameter not provided",
        ));
    }
    let cfg = load_config(storage).await?;
    oidc_ready(&cfg)?;
    let (name, role) = login_role(storage, &cfg, &pending.role).await?;
    if !super::ip_allowed(&role.token.token_bound_cidrs, req.remote_addr) {
        return Err(BackendError::PermissionDenied);
    }
    let disc = b.keys.discovery(&cfg).await?;

    let client = http_client(&cfg.oidc_discovery_ca_pem, "oidc_discovery_ca_pem")?;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", input.code.as_str()),
        ("redirect_uri", pending.redirect_uri.as_str()),
        ("code_verifier", pending.code_verifier.as_str()),
    ];
    // OIDC Core §9: client_secret_basic unless the provider offers only post.
    let post_only = !disc.token_endpoint_auth_methods_supported.is_empty()
        && !disc
            .token_endpoint_auth_methods_supported
            .iter()
            .any(|m| m == "client_secret_basic")
        && disc
            .token_endpoint_auth_methods_supported
            .iter()
            .any(|m| m == "client_secret_post");
    let mut rb = client.post(&disc.token_endpoint);
    if post_only {
        let mut f: Vec<(&str, &str)> = form.to_vec();
        f.push(("client_id", cfg.oidc_client_id.as_str()));
        f.push(("client_secret", cfg.oidc_client_secret.as_str()));
        rb = rb.form(&f);
    } else {
        rb = rb
            .basic_auth(
                form_encode(&cfg.oidc_client_id),
                Some(form_encode(&cfg.oidc_client_secret)),
            )
            .form(&form);
    }
    let resp = rb
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| BackendError::bad_request(format!("error exchanging oidc code: {e}")))?;
    if !resp.status().is_success() {
        return Err(BackendError::bad_request(format!(
            "error exchanging oidc code: the token endpoint answered {}",
            resp.status()
        )));
    }
    let tokens: TokenResponse = resp.json().await.map_err(|_| {
        BackendError::bad_request(
            "error exchanging oidc code: the token endpoint's answer is not valid JSON",
        )
    })?;
    if tokens.id_token.is_empty() {
        return Err(BackendError::bad_request("No id_token found in response."));
    }

    let claims = b.keys.verify(&cfg, &tokens.id_token).await?;
    let aud = claims::audiences(&claims);
    if !aud.contains(&cfg.oidc_client_id) {
        return Err(BackendError::bad_request(
            "error validating token: aud claim does not contain the client ID",
        ));
    }
    if aud.len() > 1
        && claims.get("azp").and_then(Value::as_str) != Some(cfg.oidc_client_id.as_str())
    {
        return Err(BackendError::bad_request(
            "error validating token: azp claim does not match the client ID",
        ));
    }
    if !role.bound_audiences.is_empty() && !aud.iter().any(|a| role.bound_audiences.contains(a)) {
        return Err(BackendError::bad_request(
            "error validating token: aud claim does not match any of the role's bound_audiences",
        ));
    }
    let nonce_ok = claims
        .get("nonce")
        .and_then(Value::as_str)
        .is_some_and(|n| {
            aws_lc_rs::constant_time::verify_slices_are_equal(
                n.as_bytes(),
                pending.nonce.as_bytes(),
            )
            .is_ok()
        });
    if !nonce_ok {
        return Err(BackendError::bad_request(
            "error validating token: invalid ID token nonce",
        ));
    }
    if !role.max_age.is_zero() {
        let now = chrono::Utc::now().timestamp();
        let auth_time = claims
            .get("auth_time")
            .and_then(Value::as_i64)
            .ok_or_else(|| {
                BackendError::bad_request(
                    "error validating token: auth_time claim required with max_age",
                )
            })?;
        let max_age = i64::try_from(role.max_age.as_secs()).unwrap_or(i64::MAX);
        if now > auth_time.saturating_add(max_age).saturating_add(60) {
            return Err(BackendError::bad_request(
                "error validating token: auth_time is older than the role's max_age",
            ));
        }
    }
    let auth = authorize(&claims, &role, &name, &disc.issuer, &cfg)?;
    Ok(Some(Response {
        auth: Some(auth),
        ..Default::default()
    }))
}

/// RFC 6749 §2.3.1: client id and secret are form-encoded before they go
/// into the Basic header.
fn form_encode(s: &str) -> String {
    reqwest::Url::parse_with_params("x:", [("v", s)])
        .ok()
        .and_then(|u| u.query().map(|q| q.trim_start_matches("v=").to_string()))
        .unwrap_or_else(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc7636_example() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn redirects() {
        let allowed = vec![
            "https://app.example/cb".to_string(),
            "http://127.0.0.1:8250/oidc/callback".to_string(),
        ];
        assert!(redirect_allowed("https://app.example/cb", &allowed));
        assert!(!redirect_allowed("https://app.example/cb/", &allowed));
        assert!(!redirect_allowed("https://evil.example/cb", &allowed));
        assert!(redirect_allowed(
            "http://127.0.0.1:9999/oidc/callback",
            &allowed
        ));
        assert!(!redirect_allowed("http://127.0.0.1:9999/other", &allowed));
    }

    #[test]
    fn basic_credentials_are_form_encoded() {
        assert_eq!(form_encode("a b&c"), "a+b%26c");
        assert_eq!(form_encode("plain"), "plain");
    }
}
