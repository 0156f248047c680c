//! `config`: where keys come from, which algorithms are accepted, and the
//! OIDC client. A write replaces the whole configuration, as in Vault.

use std::str::FromStr;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::{de, Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use tresor_sdk::{fields, BackendError, Map, Request};

use super::keys::parse_public_pem;

/// Signature algorithms accepted when `jwt_supported_algs` is empty: every
/// asymmetric one. HMAC is never accepted (this server holds no shared
/// secrets with providers, and a public key must never serve as one).
const ASYMMETRIC: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeySource {
    None,
    Static,
    JwksUrl,
    Discovery,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Config {
    #[serde(default)]
    pub oidc_discovery_url: String,
    #[serde(default)]
    pub oidc_discovery_ca_pem: String,
    #[serde(default)]
    pub oidc_client_id: String,
    /// Never answered on read.
    #[serde(default)]
    pub oidc_client_secret: String,
    #[serde(default)]
    pub oidc_response_mode: String,
    #[serde(default)]
    pub oidc_response_types: Vec<String>,
    #[serde(default)]
    pub jwks_url: String,
    #[serde(default)]
    pub jwks_ca_pem: String,
    #[serde(default)]
    pub jwt_validation_pubkeys: Vec<String>,
    #[serde(default)]
    pub jwt_supported_algs: Vec<String>,
    #[serde(default)]
    pub bound_issuer: String,
    #[serde(default)]
    pub default_role: String,
    #[serde(default)]
    pub namespace_in_state: bool,
    #[serde(default)]
    pub provider_config: Map,
}

fn list_f<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    fields::string_list(d)
}

fn bool_f<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    fields::boolean(d).map_err(|e: D::Error| de::Error::custom(format!("namespace_in_state: {e}")))
}

/// Public keys come as a list of PEM strings; a comma split would cut them.
fn pem_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.trim().is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s]),
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(de::Error::custom(format!(
                    "jwt_validation_pubkeys: expected PEM strings, got {other}"
                ))),
            })
            .collect(),
        other => Err(de::Error::custom(format!(
            "jwt_validation_pubkeys: expected a list of PEM strings, got {other}"
        ))),
    }
}

#[derive(Debug, Deserialize)]
struct ConfigInput {
    #[serde(default)]
    oidc_discovery_url: String,
    #[serde(default)]
    oidc_discovery_ca_pem: String,
    #[serde(default)]
    oidc_client_id: String,
    #[serde(default)]
    oidc_client_secret: String,
    #[serde(default)]
    oidc_response_mode: String,
    #[serde(default, deserialize_with = "list_f")]
    oidc_response_types: Vec<String>,
    #[serde(default)]
    jwks_url: String,
    #[serde(default)]
    jwks_ca_pem: String,
    #[serde(default, deserialize_with = "pem_list")]
    jwt_validation_pubkeys: Vec<String>,
    #[serde(default, deserialize_with = "list_f")]
    jwt_supported_algs: Vec<String>,
    #[serde(default)]
    bound_issuer: String,
    #[serde(default)]
    default_role: String,
    #[serde(default, deserialize_with = "bool_f")]
    namespace_in_state: bool,
    #[serde(default)]
    provider_config: Option<Map>,
}

impl Config {
    /// Parse and check a config write (network checks are the caller's).
    pub(crate) fn from_request(req: &Request) -> Result<Self, BackendError> {
        let i: ConfigInput = req.parse()?;
        let c = Config {
            oidc_discovery_url: i.oidc_discovery_url.trim().to_string(),
            oidc_discovery_ca_pem: i.oidc_discovery_ca_pem,
            oidc_client_id: i.oidc_client_id,
            oidc_client_secret: i.oidc_client_secret,
            oidc_response_mode: i.oidc_response_mode,
            oidc_response_types: i.oidc_response_types,
            jwks_url: i.jwks_url.trim().to_string(),
            jwks_ca_pem: i.jwks_ca_pem,
            jwt_validation_pubkeys: i.jwt_validation_pubkeys,
            jwt_supported_algs: i.jwt_supported_algs,
            bound_issuer: i.bound_issuer,
            default_role: i.default_role,
            namespace_in_state: i.namespace_in_state,
            provider_config: i.provider_config.unwrap_or_default(),
        };
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), BackendError> {
        let sources = [
            !self.oidc_discovery_url.is_empty(),
            !self.jwks_url.is_empty(),
            !self.jwt_validation_pubkeys.is_empty(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if sources != 1 {
            return Err(BackendError::bad_request(
                "exactly one of 'jwt_validation_pubkeys', 'jwks_url' or 'oidc_discovery_url' must be set",
            ));
        }
        if (self.oidc_client_id.is_empty()) != (self.oidc_client_secret.is_empty()) {
            return Err(BackendError::bad_request(
                "both 'oidc_client_id' and 'oidc_client_secret' must be set for OIDC",
            ));
        }
        if !self.oidc_client_id.is_empty() && self.oidc_discovery_url.is_empty() {
            return Err(BackendError::bad_request(
                "'oidc_discovery_url' must be set for OIDC",
            ));
        }
        for (field, url) in [
            ("oidc_discovery_url", &self.oidc_discovery_url),
            ("jwks_url", &self.jwks_url),
        ] {
            if !url.is_empty() {
                let u = reqwest::Url::parse(url)
                    .map_err(|e| BackendError::bad_request(format!("{field}: invalid URL: {e}")))?;
                if !matches!(u.scheme(), "http" | "https") {
                    return Err(BackendError::bad_request(format!(
                        "{field}: the URL must use http or https"
                    )));
                }
            }
        }
        for (n, pem) in self.jwt_validation_pubkeys.iter().enumerate() {
            parse_public_pem(pem).map_err(|e| {
                BackendError::bad_request(format!("jwt_validation_pubkeys: entry {n}: {e}"))
            })?;
        }
        for a in &self.jwt_supported_algs {
            let alg = Algorithm::from_str(a.trim()).map_err(|_| {
                BackendError::bad_request(format!(
                    "jwt_supported_algs: invalid or unsupported algorithm {a:?}"
                ))
            })?;
            if alg.family() == AlgorithmFamily::Hmac {
                return Err(BackendError::bad_request(format!(
                    "jwt_supported_algs: symmetric algorithm {a:?} is not supported"
                )));
            }
        }
        match self.oidc_response_mode.as_str() {
            "" | "query" | "form_post" => {}
            other => {
                return Err(BackendError::bad_request(format!(
                    "oidc_response_mode: invalid response mode {other:?}, expected \"query\" or \"form_post\""
                )))
            }
        }
        for t in &self.oidc_response_types {
            if t != "code" {
                return Err(BackendError::bad_request(format!(
                    "oidc_response_types: unsupported response type {t:?}, only \"code\" is supported"
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn key_source(&self) -> KeySource {
        if !self.oidc_discovery_url.is_empty() {
            KeySource::Discovery
        } else if !self.jwks_url.is_empty() {
            KeySource::JwksUrl
        } else if !self.jwt_validation_pubkeys.is_empty() {
            KeySource::Static
        } else {
            KeySource::None
        }
    }

    /// Identifies what a key cache holds data for.
    pub(crate) fn cache_source(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}",
            self.oidc_discovery_url, self.oidc_discovery_ca_pem, self.jwks_url, self.jwks_ca_pem
        )
    }

    pub(crate) fn allowed_algorithms(&self) -> Vec<Algorithm> {
        if self.jwt_supported_algs.is_empty() {
            return ASYMMETRIC.to_vec();
        }
        self.jwt_supported_algs
            .iter()
            .filter_map(|a| Algorithm::from_str(a.trim()).ok())
            .filter(|a| a.family() != AlgorithmFamily::Hmac)
            .collect()
    }

    /// The read answer: everything but the client secret.
    pub(crate) fn to_data(&self) -> Map {
        let mut m = Map::new();
        m.insert("oidc_discovery_url".into(), json!(self.oidc_discovery_url));
        m.insert(
            "oidc_discovery_ca_pem".into(),
            json!(self.oidc_discovery_ca_pem),
        );
        m.insert("oidc_client_id".into(), json!(self.oidc_client_id));
        m.insert("oidc_response_mode".into(), json!(self.oidc_response_mode));
        m.insert(
            "oidc_response_types".into(),
            json!(self.oidc_response_types),
        );
        m.insert("jwks_url".into(), json!(self.jwks_url));
        m.insert("jwks_ca_pem".into(), json!(self.jwks_ca_pem));
        m.insert(
            "jwt_validation_pubkeys".into(),
            json!(self.jwt_validation_pubkeys),
        );
        m.insert("jwt_supported_algs".into(), json!(self.jwt_supported_algs));
        m.insert("bound_issuer".into(), json!(self.bound_issuer));
        m.insert("default_role".into(), json!(self.default_role));
        m.insert("namespace_in_state".into(), json!(self.namespace_in_state));
        m.insert(
            "provider_config".into(),
            Value::Object(self.provider_config.clone()),
        );
        m
    }
}
