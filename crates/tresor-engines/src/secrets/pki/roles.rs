//! Roles: which names, keys and lifetimes an `issue`/`sign` may ask for.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tresor_sdk::{fields, BackendError};

fn yes() -> bool {
    true
}
fn default_key_type() -> String {
    "rsa".into()
}
fn default_key_usage() -> Vec<String> {
    vec![
        "DigitalSignature".into(),
        "KeyAgreement".into(),
        "KeyEncipherment".into(),
    ]
}
fn default_issuer_ref() -> String {
    "default".into()
}
fn default_not_before() -> Duration {
    Duration::from_secs(30)
}

/// A role as stored and as written: a write replaces every field, absent
/// ones taking Vault's defaults (PATCH merges first, then parses).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Role {
    #[serde(default, with = "fields::secs")]
    pub(super) ttl: Duration,
    #[serde(default, with = "fields::secs")]
    pub(super) max_ttl: Duration,
    #[serde(default = "yes", deserialize_with = "fields::boolean")]
    pub(super) allow_localhost: bool,
    #[serde(default, deserialize_with = "fields::string_list")]
    pub(super) allowed_domains: Vec<String>,
    #[serde(default, deserialize_with = "fields::boolean")]
    pub(super) allow_bare_domains: bool,
    #[serde(default, deserialize_with = "fields::boolean")]
    pub(super) allow_subdomains: bool,
    #[serde(default, deserialize_with = "fields::boolean")]
    pub(super) allow_glob_domains: bool,
    #[serde(default = "yes", deserialize_with = "fields::boolean")]
    pub(super) allow_wildcard_certificates: bool,
    #[serde(default, deserialize_with = "fields::boolean")]
    pub(super) allow_any_name: bool,
    #[serde(default = "yes", deserialize_with = "fields::boolean")]
    pub(super) enforce_hostnames: bool,
    #[serde(default = "yes", deserialize_with = "fields::boolean")]
    pub(super) allow_ip_sans: bool,
    #[serde(default, deserialize_with = "fields::string_list")]
    pub(super) allowed_uri_sans: Vec<String>,
    #[serde(default = "yes", deserialize_with = "fields::boolean")]
    pub(super) server_flag: bool,
    #[serde(default = "yes", deserialize_with = "fields::boolean")]
    pub(super) client_flag: bool,
    #[serde(default, deserialize_with = "fields::boolean")]
    pub(super) code_signing_flag: bool,
    #[serde(default, deserialize_with = "fields::boolean")]
    pub(super) email_protection_flag: bool,
    #[serde(default = "default_key_type")]
    pub(super) key_type: String,
    #[serde(default, deserialize_with = "fields::uint")]
    pub(super) key_bits: u64,
    #[serde(
        default = "default_key_usage",
        deserialize_with = "fields::string_list"
    )]
    pub(super) key_usage: Vec<String>,
    #[serde(default, deserialize_with = "fields::string_list")]
    pub(super) ext_key_usage: Vec<String>,
    #[serde(default = "yes", deserialize_with = "fields::boolean")]
    pub(super) use_csr_common_name: bool,
    #[serde(default = "yes", deserialize_with = "fields::boolean")]
    pub(super) use_csr_sans: bool,
    #[serde(default, deserialize_with = "fields::string_list")]
    pub(super) ou: Vec<String>,
    #[serde(default, deserialize_with = "fields::string_list")]
    pub(super) organization: Vec<String>,
    #[serde(default, deserialize_with = "fields::string_list")]
    pub(super) country: Vec<String>,
    #[serde(default, deserialize_with = "fields::string_list")]
    pub(super) locality: Vec<String>,
    #[serde(default, deserialize_with = "fields::string_list")]
    pub(super) province: Vec<String>,
    #[serde(default, deserialize_with = "fields::string_list")]
    pub(super) street_address: Vec<String>,
    #[serde(default, deserialize_with = "fields::string_list")]
    pub(super) postal_code: Vec<String>,
    #[serde(default, deserialize_with = "fields::boolean")]
    pub(super) generate_lease: bool,
    #[serde(default, deserialize_with = "fields::boolean")]
    pub(super) no_store: bool,
    #[serde(default = "yes", deserialize_with = "fields::boolean")]
    pub(super) require_cn: bool,
    #[serde(default = "default_not_before", with = "fields::secs")]
    pub(super) not_before_duration: Duration,
    #[serde(default = "default_issuer_ref")]
    pub(super) issuer_ref: String,
}

impl Role {
    /// Checks what a write asks for beyond its types.
    pub(super) fn validate(&self) -> Result<(), BackendError> {
        if !self.max_ttl.is_zero() && self.ttl > self.max_ttl {
            return Err(BackendError::bad_request(
                "ttl: the role's ttl cannot be longer than its max_ttl",
            ));
        }
        if self.key_type != "any" {
            super::x509::KeySpec::parse(&self.key_type, self.key_bits)?;
        }
        for ku in &self.key_usage {
            key_usage(ku)?;
        }
        for eku in &self.ext_key_usage {
            ext_key_usage(eku)?;
        }
        Ok(())
    }

    /// Why `name` (a common name or DNS/email SAN) is refused, if it is.
    pub(super) fn check_name(&self, name: &str, what: &str) -> Result<(), BackendError> {
        let (host, is_email) = match name.rsplit_once('@') {
            Some((_, domain)) => (domain, true),
            None => (name, false),
        };
        if self.enforce_hostnames && !is_email && !valid_hostname(host) {
            return Err(BackendError::bad_request(format!(
                "{what} {name:?} is not a valid hostname (enforce_hostnames)"
            )));
        }
        if self.allow_any_name || self.name_allowed(host) {
            return Ok(());
        }
        Err(BackendError::bad_request(format!(
            "{what} {name} not allowed by this role: it matches none of allowed_domains {:?} \
             (allow_bare_domains={}, allow_subdomains={}, allow_glob_domains={}, \
             allow_wildcard_certificates={}, allow_localhost={}, allow_any_name=false)",
            self.allowed_domains,
            self.allow_bare_domains,
            self.allow_subdomains,
            self.allow_glob_domains,
            self.allow_wildcard_certificates,
            self.allow_localhost,
        )))
    }

    fn name_allowed(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        if self.allow_localhost && (name == "localhost" || name == "localdomain") {
            return true;
        }
        let wildcard_base = name.strip_prefix("*.");
        if wildcard_base.is_some() && !self.allow_wildcard_certificates {
            return false;
        }
        for d in &self.allowed_domains {
            let d = d.to_ascii_lowercase();
            if d.is_empty() {
                continue;
            }
            // `*.example.com` in allowed_domains with allow_subdomains means
            // the same as `example.com`.
            let base = d.strip_prefix("*.").unwrap_or(&d);
            match wildcard_base {
                Some(w) => {
                    if self.allow_subdomains && (w == base || w.ends_with(&format!(".{base}"))) {
                        return true;
                    }
                }
                None => {
                    if self.allow_bare_domains && name == d {
                        return true;
                    }
                    if self.allow_subdomains && name.ends_with(&format!(".{base}")) {
                        return true;
                    }
                }
            }
            if self.allow_glob_domains && d.contains('*') && glob_match(&d, &name) {
                return true;
            }
        }
        false
    }

    pub(super) fn check_ip(&self, ip: &IpAddr) -> Result<(), BackendError> {
        if self.allow_ip_sans {
            Ok(())
        } else {
            Err(BackendError::bad_request(format!(
                "IP Subject Alternative Names are not allowed in this role (allow_ip_sans=false), but was provided {ip}"
            )))
        }
    }

    pub(super) fn check_uri(&self, uri: &str) -> Result<(), BackendError> {
        if self.allowed_uri_sans.iter().any(|p| glob_match(p, uri)) {
            Ok(())
        } else {
            Err(BackendError::bad_request(format!(
                "URI Subject Alternative Names are not allowed in this role, but was provided {uri} \
                 (allowed_uri_sans {:?})",
                self.allowed_uri_sans
            )))
        }
    }

    /// Checks a CSR's key against `key_type`/`key_bits` (`any` takes all).
    pub(super) fn check_key(&self, key_type: &str, bits: u64) -> Result<(), BackendError> {
        if self.key_type == "any" {
            return Ok(());
        }
        if self.key_type != key_type {
            return Err(BackendError::bad_request(format!(
                "role requires keys of type {} (key_type), but the CSR has a {key_type} key",
                self.key_type
            )));
        }
        let min = super::x509::KeySpec::parse(&self.key_type, self.key_bits)?.bits();
        if key_type != "ed25519" && bits < min {
            return Err(BackendError::bad_request(format!(
                "role requires {key_type} keys of at least {min} bits (key_bits), but the CSR key has {bits}"
            )));
        }
        Ok(())
    }

    pub(super) fn rcgen_key_usages(&self) -> Result<Vec<rcgen::KeyUsagePurpose>, BackendError> {
        self.key_usage.iter().map(|k| key_usage(k)).collect()
    }

    pub(super) fn rcgen_ext_key_usages(
        &self,
    ) -> Result<Vec<rcgen::ExtendedKeyUsagePurpose>, BackendError> {
        use rcgen::ExtendedKeyUsagePurpose as E;
        let mut out = Vec::new();
        if self.server_flag {
            out.push(E::ServerAuth);
        }
        if self.client_flag {
            out.push(E::ClientAuth);
        }
        if self.code_signing_flag {
            out.push(E::CodeSigning);
        }
        if self.email_protection_flag {
            out.push(E::EmailProtection);
        }
        for e in &self.ext_key_usage {
            let e = ext_key_usage(e)?;
            if !out.contains(&e) {
                out.push(e);
            }
        }
        Ok(out)
    }
}

pub(super) fn key_usage(name: &str) -> Result<rcgen::KeyUsagePurpose, BackendError> {
    use rcgen::KeyUsagePurpose as K;
    let n = name.trim().to_ascii_lowercase();
    Ok(match n.as_str() {
        "digitalsignature" => K::DigitalSignature,
        "contentcommitment" | "nonrepudiation" => K::ContentCommitment,
        "keyencipherment" => K::KeyEncipherment,
        "dataencipherment" => K::DataEncipherment,
        "keyagreement" => K::KeyAgreement,
        "certsign" | "keycertsign" => K::KeyCertSign,
        "crlsign" => K::CrlSign,
        "encipheronly" => K::EncipherOnly,
        "decipheronly" => K::DecipherOnly,
        _ => {
            return Err(BackendError::bad_request(format!(
                "key_usage: unknown key usage {name:?}"
            )))
        }
    })
}

pub(super) fn ext_key_usage(name: &str) -> Result<rcgen::ExtendedKeyUsagePurpose, BackendError> {
    use rcgen::ExtendedKeyUsagePurpose as E;
    let n = name.trim().to_ascii_lowercase();
    Ok(match n.as_str() {
        "serverauth" => E::ServerAuth,
        "clientauth" => E::ClientAuth,
        "codesigning" => E::CodeSigning,
        "emailprotection" => E::EmailProtection,
        "timestamping" => E::TimeStamping,
        "ocspsigning" => E::OcspSigning,
        "any" => E::Any,
        _ => {
            return Err(BackendError::bad_request(format!(
                "ext_key_usage: unknown extended key usage {name:?}"
            )))
        }
    })
}

fn valid_hostname(h: &str) -> bool {
    let h = h.strip_prefix("*.").unwrap_or(h);
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `*` matches any run of characters (dots included), like Vault's glob.
pub(super) fn glob_match(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || !s[first.len()..].ends_with(last) {
        return false;
    }
    if s.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*.example.com", "a.b.example.com"));
        assert!(glob_match("foo-*-bar.com", "foo-x-bar.com"));
        assert!(!glob_match("*.example.com", "example.com"));
        assert!(glob_match("spiffe://x/*", "spiffe://x/a/b"));
        assert!(!glob_match("a*b*c", "ac"));
    }
}
