//! `issue/<role>`, `sign/<role>` and `sign-verbatim`: leaf certificates.

use std::time::Duration;

use rcgen::{CertificateParams, IsCa, PublicKeyData};
use serde::Deserialize;
use serde_json::{json, Value};
use tresor_sdk::{fields, BackendError, LeaseOptions, Request, Response, Secret, Storage};

use super::issuers::{self, obj, render, render_pem, Subject};
use super::roles::{self, Role};
use super::store;
use super::x509::{self, KeySpec, Sans};
use super::Pki;

#[derive(Debug, Deserialize)]
struct IssueRequest {
    #[serde(default)]
    common_name: String,
    #[serde(default, deserialize_with = "fields::string_list")]
    alt_names: Vec<String>,
    #[serde(default, deserialize_with = "fields::string_list")]
    ip_sans: Vec<String>,
    #[serde(default, deserialize_with = "fields::string_list")]
    uri_sans: Vec<String>,
    #[serde(default, deserialize_with = "fields::opt_duration")]
    ttl: Option<Duration>,
    #[serde(default)]
    not_after: String,
    #[serde(default, deserialize_with = "fields::boolean")]
    exclude_cn_from_sans: bool,
    #[serde(default)]
    format: String,
    #[serde(default)]
    private_key_format: String,
    #[serde(default, deserialize_with = "fields::boolean")]
    remove_roots_from_chain: bool,
    #[serde(default)]
    csr: String,
    #[serde(default)]
    issuer_ref: String,
    #[serde(default, deserialize_with = "fields::opt_string_list")]
    key_usage: Option<Vec<String>>,
    #[serde(default, deserialize_with = "fields::opt_string_list")]
    ext_key_usage: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Issue,
    Sign,
    Verbatim,
}

async fn load_role(s: &dyn Storage, name: &str) -> Result<Role, BackendError> {
    store::get::<Role>(s, &format!("{}{name}", store::ROLES))
        .await?
        .ok_or_else(|| BackendError::bad_request(format!("unknown role: {name}")))
}

/// The role `sign-verbatim` uses without one: no name rules, the mount's
/// limits.
fn verbatim_role() -> Result<Role, BackendError> {
    let mut r: Role = serde_json::from_value(json!({}))?;
    r.allow_any_name = true;
    r.enforce_hostnames = false;
    r.allowed_uri_sans = vec!["*".into()];
    r.key_type = "any".into();
    Ok(r)
}

pub(super) async fn issue(
    pki: &Pki,
    req: &Request,
    s: &dyn Storage,
    mode: Mode,
    role_name: &str,
    path_issuer: &str,
) -> Result<Response, BackendError> {
    let r: IssueRequest = req.parse()?;
    match r.format.as_str() {
        "" | "pem" | "der" | "pem_bundle" => {}
        f => {
            return Err(BackendError::bad_request(format!(
                "format must be pem, der or pem_bundle, got {f:?}"
            )))
        }
    }
    match r.private_key_format.as_str() {
        "" | "der" | "pem" | "pkcs8" => {}
        f => {
            return Err(BackendError::bad_request(format!(
                "private_key_format must be der, pem or pkcs8, got {f:?}"
            )))
        }
    }
    let role = if mode == Mode::Verbatim && role_name.is_empty() {
        verbatim_role()?
    } else {
        load_role(s, role_name).await?
    };
    if mode == Mode::Issue && role.key_type == "any" {
        return Err(BackendError::bad_request(
            "role key_type \"any\" cannot issue (it has no key type to generate); use sign",
        ));
    }
    let issuer_ref = if !path_issuer.is_empty() {
        path_issuer.to_string()
    } else if !r.issuer_ref.is_empty() && mode == Mode::Verbatim {
        r.issuer_ref.clone()
    } else {
        role.issuer_ref.clone()
    };
    let loaded = issuers::load_signer(s, &issuer_ref).await?;

    // Names: the request's, or the CSR's where the role says to use them.
    let csr = if mode == Mode::Issue {
        None
    } else {
        Some(issuers::parse_csr(&r.csr)?)
    };
    let mut cn = r.common_name.clone();
    let mut sans = Sans::default();
    if let Some(c) = &csr {
        if mode == Mode::Verbatim || role.use_csr_common_name {
            if let Some(csr_cn) = &c.common_name {
                cn = csr_cn.clone();
            }
        }
        if mode == Mode::Verbatim || role.use_csr_sans {
            sans = c.sans.clone();
        }
        role.check_key(c.key.key_type, c.key.bits)?;
    }
    if cn.is_empty() && role.require_cn && mode != Mode::Verbatim {
        return Err(BackendError::bad_request(
            "common_name: required by this role (require_cn)",
        ));
    }
    let cn_ip = cn.parse::<std::net::IpAddr>().ok();
    if !cn.is_empty() && mode != Mode::Verbatim {
        match &cn_ip {
            Some(ip) => role.check_ip(ip)?,
            None => role.check_name(&cn, "common name")?,
        }
    }
    for n in &r.alt_names {
        sans.push_unique_dns(n);
    }
    for ip in &r.ip_sans {
        let ip = ip.parse().map_err(|_| {
            BackendError::bad_request(format!("ip_sans: {ip:?} is not an IP address"))
        })?;
        if !sans.ips.contains(&ip) {
            sans.ips.push(ip);
        }
    }
    sans.uris.extend(r.uri_sans.iter().cloned());
    if mode != Mode::Verbatim {
        for d in sans.dns.iter().chain(sans.emails.iter()) {
            role.check_name(d, "subject alternate name")?;
        }
        for ip in &sans.ips {
            role.check_ip(ip)?;
        }
        for u in &sans.uris {
            role.check_uri(u)?;
        }
    }
    if !cn.is_empty() && !r.exclude_cn_from_sans {
        match cn_ip {
            Some(ip) if !sans.ips.contains(&ip) => sans.ips.insert(0, ip),
            Some(_) => {}
            None if !cn.contains('@') && !sans.dns.contains(&cn) => sans.dns.insert(0, cn.clone()),
            None if cn.contains('@') && !sans.emails.contains(&cn) => {
                sans.emails.insert(0, cn.clone())
            }
            None => {}
        }
    }

    // Lifetime: refuse past the role's max, never past the issuer.
    let system_max = pki.system.max_lease_ttl();
    let max = if role.max_ttl.is_zero() {
        system_max
    } else {
        role.max_ttl.min(system_max)
    };
    let now = chrono::Utc::now().timestamp();
    let not_after = if !r.not_after.is_empty() {
        let t = chrono::DateTime::parse_from_rfc3339(&r.not_after)
            .map_err(|_| {
                BackendError::bad_request(format!(
                    "not_after: {:?} is not an RFC 3339 time",
                    r.not_after
                ))
            })?
            .timestamp();
        if t - now > secs(max) {
            return Err(BackendError::bad_request(format!(
                "not_after: {} is past the role's max_ttl of {}s",
                r.not_after,
                max.as_secs()
            )));
        }
        t
    } else {
        let ttl = match r.ttl {
            Some(t) if !t.is_zero() => {
                if t > max {
                    return Err(BackendError::bad_request(format!(
                        "ttl: {}s is greater than the role's max_ttl of {}s",
                        t.as_secs(),
                        max.as_secs()
                    )));
                }
                t
            }
            _ => {
                let d = if role.ttl.is_zero() {
                    pki.system.default_lease_ttl()
                } else {
                    role.ttl
                };
                d.min(max)
            }
        };
        now + secs(ttl)
    };
    if not_after <= now {
        return Err(BackendError::bad_request(
            "ttl/not_after: the certificate would already be expired",
        ));
    }
    let not_after = issuers::clamp_to_issuer(&loaded.entry, not_after)?;

    let subject = match (&csr, mode) {
        (Some(c), Mode::Verbatim) => c.subject.clone(),
        _ => Subject {
            cn: &cn,
            ou: &role.ou,
            organization: &role.organization,
            country: &role.country,
            locality: &role.locality,
            province: &role.province,
            street_address: &role.street_address,
            postal_code: &role.postal_code,
            serial_number: "",
        }
        .dn(),
    };
    let mut p = CertificateParams::default();
    p.distinguished_name = subject;
    p.subject_alt_names = sans.to_rcgen()?;
    p.not_before = x509::offset_time(now - secs(role.not_before_duration))?;
    p.not_after = x509::offset_time(not_after)?;
    p.serial_number = Some(x509::serial_number(&x509::random_serial()?));
    p.is_ca = IsCa::ExplicitNoCa;
    p.use_authority_key_identifier_extension = true;
    p.key_usages = match (&r.key_usage, mode) {
        (Some(k), Mode::Verbatim) => k
            .iter()
            .map(|u| roles::key_usage(u))
            .collect::<Result<_, _>>()?,
        _ => role.rcgen_key_usages()?,
    };
    p.extended_key_usages = match (&r.ext_key_usage, mode) {
        (Some(k), Mode::Verbatim) => k
            .iter()
            .map(|u| roles::ext_key_usage(u))
            .collect::<Result<_, _>>()?,
        _ => role.rcgen_ext_key_usages()?,
    };
    let urls = store::urls_config(s).await?;
    if !urls.crl_distribution_points.is_empty() {
        p.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: urls.crl_distribution_points.clone(),
        }];
    }

    let (der, key) = match &csr {
        Some(c) => (sign_with(p, &c.key.key, &loaded)?, None),
        None => {
            let spec = KeySpec::parse(&role.key_type, role.key_bits)?;
            let kp = spec.generate()?;
            let der = sign_with(p, &kp, &loaded)?;
            (der, Some((x509::SecretPem::of(&kp), spec.type_name())))
        }
    };
    let serial = x509::format_serial(x509::parse_cert(&der)?.raw_serial());
    let pem_text = x509::cert_pem(&der);
    if !role.no_store {
        store::put(
            s,
            &format!("{}{}", store::CERTS, x509::serial_key(&serial)),
            &store::CertEntry {
                serial_number: serial.clone(),
                certificate: pem_text.clone(),
                issuer_id: loaded.entry.id.clone(),
                not_after,
            },
        )
        .await?;
    }

    let format = r.format.as_str();
    let mut chain = Vec::new();
    for c in issuers::chain_of(&loaded.entry) {
        let der_c = x509::pem_certs(&c)?.into_iter().next().unwrap_or_default();
        if r.remove_roots_from_chain
            && x509::parse_cert(&der_c)
                .map(|p| p.subject().as_raw() == p.issuer().as_raw())
                .unwrap_or(false)
        {
            continue;
        }
        chain.push(render_pem(format, &c)?);
    }
    let mut certificate = render(format, &der);
    if format == "pem_bundle" {
        certificate = std::iter::once(certificate)
            .chain(chain.iter().cloned())
            .collect::<Vec<_>>()
            .join("\n");
    }
    let mut data = obj(json!({
        "certificate": certificate,
        "issuing_ca": render(format, &loaded.der),
        "ca_chain": chain,
        "serial_number": serial,
        "expiration": not_after,
    }));
    if let Some((pem_key, key_type)) = &key {
        let value = if format == "der" {
            let der_key = pem::parse(pem_key.expose())
                .map_err(|e| BackendError::Internal(format!("own key PEM: {e}")))?
                .into_contents();
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(der_key)
        } else {
            pem_key.expose().trim_end().to_string()
        };
        // Vault's pem_bundle (certutil's ToPEMBundle) starts with the key.
        if format == "pem_bundle" {
            let cert = data
                .get("certificate")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let bundle = format!("{value}\n{cert}");
            data.insert("certificate".into(), Value::String(bundle));
        }
        data.insert("private_key".into(), Value::String(value));
        data.insert("private_key_type".into(), json!(key_type));
    }
    let mut resp = Response::data(data);
    if role.generate_lease {
        let ttl = Duration::from_secs(u64::try_from((not_after - now).max(1)).unwrap_or(1));
        resp.secret = Some(Secret {
            lease: LeaseOptions {
                ttl,
                max_ttl: ttl,
                renewable: false,
                ..Default::default()
            },
            internal_data: json!({ "serial_number": serial, "secret_type": "pki" }),
        });
    }
    Ok(resp)
}

fn sign_with(
    p: CertificateParams,
    key: &impl PublicKeyData,
    loaded: &issuers::Loaded,
) -> Result<Vec<u8>, BackendError> {
    p.signed_by(key, &loaded.signer.stand_in, &loaded.signer.key)
        .map(|c| c.der().to_vec())
        .map_err(|e| BackendError::bad_request(format!("certificate: {e}")))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}
