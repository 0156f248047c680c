//! What the PKI engine keeps, and where.
//!
//! | key | value |
//! | --- | --- |
//! | `config/issuers` | [`IssuersConfig`] (the default issuer) |
//! | `config/crl`, `config/urls` | [`CrlConfig`], [`UrlsConfig`] |
//! | `issuers/<id>` | [`IssuerEntry`]: one CA certificate, its chain, its key's id |
//! | `keys/<id>` | [`KeyEntry`]: one private key (PKCS#8 PEM) |
//! | `roles/<name>` | [`super::roles::Role`] |
//! | `certs/<serial>` | [`CertEntry`]: an issued certificate (serial with dashes) |
//! | `revoked/<serial>` | [`RevokedEntry`]: one revocation per entry, so the CRL has no entry-size limit |
//! | `crls/<issuer id>` | [`CrlEntry`]: the issuer's current CRL and its number |
//! | `crl-dirty` | present when a revocation awaits an `auto_rebuild` |
//! | `tidy-status` | [`TidyStatus`] of the last tidy |

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tresor_sdk::{fields, BackendError, Storage, StorageExt};

use super::x509::SecretPem;

pub(super) const ISSUERS: &str = "issuers/";
pub(super) const KEYS: &str = "keys/";
pub(super) const ROLES: &str = "roles/";
pub(super) const CERTS: &str = "certs/";
pub(super) const REVOKED: &str = "revoked/";
pub(super) const CRLS: &str = "crls/";
pub(super) const CRL_DIRTY: &str = "crl-dirty";
pub(super) const TIDY_STATUS: &str = "tidy-status";
pub(super) const CONFIG_ISSUERS: &str = "config/issuers";
pub(super) const CONFIG_CRL: &str = "config/crl";
pub(super) const CONFIG_URLS: &str = "config/urls";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct IssuersConfig {
    #[serde(default)]
    pub(super) default: String,
    #[serde(default)]
    pub(super) default_follows_latest_issuer: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CrlConfig {
    #[serde(with = "fields::secs")]
    pub(super) expiry: Duration,
    pub(super) disable: bool,
    pub(super) ocsp_disable: bool,
    pub(super) auto_rebuild: bool,
    #[serde(with = "fields::secs")]
    pub(super) auto_rebuild_grace_period: Duration,
    #[serde(with = "fields::secs")]
    pub(super) ocsp_expiry: Duration,
}

impl Default for CrlConfig {
    fn default() -> Self {
        CrlConfig {
            expiry: Duration::from_secs(72 * 3600),
            disable: false,
            ocsp_disable: false,
            auto_rebuild: false,
            auto_rebuild_grace_period: Duration::from_secs(12 * 3600),
            ocsp_expiry: Duration::from_secs(12 * 3600),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct UrlsConfig {
    #[serde(default)]
    pub(super) issuing_certificates: Vec<String>,
    #[serde(default)]
    pub(super) crl_distribution_points: Vec<String>,
    #[serde(default)]
    pub(super) ocsp_servers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct IssuerEntry {
    pub(super) id: String,
    #[serde(default)]
    pub(super) name: String,
    /// Empty when we hold the certificate but not its key.
    #[serde(default)]
    pub(super) key_id: String,
    /// PEM.
    pub(super) certificate: String,
    /// PEM, this issuer first, then its parents as far as we know them.
    pub(super) ca_chain: Vec<String>,
    pub(super) serial_number: String,
    pub(super) not_after: i64,
    /// `err` (Vault's default) or `truncate`; `permit` is refused on write
    /// because it issues leaves that outlive their CA.
    #[serde(default = "default_leaf_behavior")]
    pub(super) leaf_not_after_behavior: String,
    #[serde(default)]
    pub(super) revoked: bool,
}

fn default_leaf_behavior() -> String {
    "err".into()
}

#[derive(Clone, Serialize, Deserialize)]
pub(super) struct KeyEntry {
    pub(super) id: String,
    #[serde(default)]
    pub(super) name: String,
    pub(super) key_type: String,
    /// Hex of the SubjectPublicKeyInfo DER, to pair keys with certificates.
    pub(super) public_key: String,
    pub(super) private_key: SecretPem,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CertEntry {
    pub(super) serial_number: String,
    /// PEM.
    pub(super) certificate: String,
    #[serde(default)]
    pub(super) issuer_id: String,
    pub(super) not_after: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RevokedEntry {
    pub(super) serial_number: String,
    pub(super) revocation_time: i64,
    pub(super) issuer_id: String,
    pub(super) not_after: i64,
    /// PEM; kept so that a `no_store` certificate revoked by value can
    /// still be read back.
    pub(super) certificate: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CrlEntry {
    pub(super) number: u64,
    /// Standard base64 (a JSON array of numbers, read for older entries,
    /// took about 3.5 bytes per byte of CRL).
    #[serde(with = "der_b64")]
    pub(super) der: Vec<u8>,
    pub(super) next_update: i64,
}

/// DER bytes as a base64 string; reads the array of numbers that serde
/// writes for a bare `Vec<u8>` too.
mod der_b64 {
    use std::fmt;

    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(der: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(der))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("base64 DER, or an array of bytes")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
                STANDARD.decode(v).map_err(E::custom)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct TidyStatus {
    pub(super) state: String,
    pub(super) error: Option<String>,
    pub(super) time_started: Option<String>,
    pub(super) time_finished: Option<String>,
    pub(super) message: String,
    pub(super) safety_buffer: u64,
    pub(super) tidy_cert_store: bool,
    pub(super) tidy_revoked_certs: bool,
    pub(super) cert_store_deleted_count: u64,
    pub(super) revoked_cert_deleted_count: u64,
    pub(super) current_cert_store_count: u64,
    pub(super) current_revoked_cert_count: u64,
}

pub(super) async fn get<T: serde::de::DeserializeOwned>(
    s: &dyn Storage,
    key: &str,
) -> Result<Option<T>, BackendError> {
    Ok(s.get_json(key).await?)
}

pub(super) async fn put<T: Serialize + Sync>(
    s: &dyn Storage,
    key: &str,
    v: &T,
) -> Result<(), BackendError> {
    Ok(s.put_json(key, v).await?)
}

pub(super) async fn list(s: &dyn Storage, prefix: &str) -> Result<Vec<String>, BackendError> {
    Ok(s.list(prefix)
        .await?
        .into_iter()
        .filter(|k| !k.ends_with('/'))
        .collect())
}

pub(super) async fn issuers(s: &dyn Storage) -> Result<Vec<IssuerEntry>, BackendError> {
    let mut out = Vec::new();
    for id in list(s, ISSUERS).await? {
        if let Some(e) = get::<IssuerEntry>(s, &format!("{ISSUERS}{id}")).await? {
            out.push(e);
        }
    }
    Ok(out)
}

pub(super) async fn keys(s: &dyn Storage) -> Result<Vec<KeyEntry>, BackendError> {
    let mut out = Vec::new();
    for id in list(s, KEYS).await? {
        if let Some(e) = get::<KeyEntry>(s, &format!("{KEYS}{id}")).await? {
            out.push(e);
        }
    }
    Ok(out)
}

pub(super) async fn key(s: &dyn Storage, id: &str) -> Result<Option<KeyEntry>, BackendError> {
    if id.is_empty() {
        return Ok(None);
    }
    get(s, &format!("{KEYS}{id}")).await
}

pub(super) async fn issuers_config(s: &dyn Storage) -> Result<IssuersConfig, BackendError> {
    Ok(get(s, CONFIG_ISSUERS).await?.unwrap_or_default())
}

pub(super) async fn crl_config(s: &dyn Storage) -> Result<CrlConfig, BackendError> {
    Ok(get(s, CONFIG_CRL).await?.unwrap_or_default())
}

pub(super) async fn urls_config(s: &dyn Storage) -> Result<UrlsConfig, BackendError> {
    Ok(get(s, CONFIG_URLS).await?.unwrap_or_default())
}

/// Resolve `default`, an issuer id or an issuer name.
pub(super) async fn resolve_issuer(
    s: &dyn Storage,
    reference: &str,
) -> Result<Option<IssuerEntry>, BackendError> {
    let reference = if reference.is_empty() || reference == "default" {
        let cfg = issuers_config(s).await?;
        if cfg.default.is_empty() {
            return Ok(None);
        }
        cfg.default
    } else {
        reference.to_string()
    };
    if let Some(e) = get::<IssuerEntry>(s, &format!("{ISSUERS}{reference}")).await? {
        return Ok(Some(e));
    }
    Ok(issuers(s)
        .await?
        .into_iter()
        .find(|e| !e.name.is_empty() && e.name == reference))
}

/// Like [`resolve_issuer`], but a missing issuer is the caller's mistake.
pub(super) async fn require_issuer(
    s: &dyn Storage,
    reference: &str,
) -> Result<IssuerEntry, BackendError> {
    resolve_issuer(s, reference).await?.ok_or_else(|| {
        if reference.is_empty() || reference == "default" {
            BackendError::bad_request(
                "no default issuer: generate or import a CA first (root/generate, config/ca)",
            )
        } else {
            BackendError::bad_request(format!(
                "issuer_ref: no issuer named or with id {reference:?}"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn crl_der_is_stored_as_base64_and_old_arrays_still_read() {
        let e = CrlEntry {
            number: 3,
            der: vec![0x30, 0x82, 0xff, 0x00],
            next_update: 7,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["der"], serde_json::json!("MIL/AA=="));
        let back: CrlEntry = serde_json::from_value(v).unwrap();
        assert_eq!(back.der, e.der);
        let old: CrlEntry =
            serde_json::from_str(r#"{"number": 3, "der": [48, 130, 255, 0], "next_update": 7}"#)
                .unwrap();
        assert_eq!(old.der, e.der);
        assert!(serde_json::from_str::<CrlEntry>(
            r#"{"number": 3, "der": "not base64!", "next_update": 7}"#
        )
        .is_err());
    }
}
