//! CA certificates: generating roots and intermediates, signing
//! intermediates, importing bundles, and the issuer read/update/list paths.

use std::collections::BTreeMap;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, GeneralSubtree, IsCa, KeyPair,
    KeyUsagePurpose, NameConstraints,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tresor_sdk::{fields, BackendError, Map, Request, Response, Storage};
use x509_parser::prelude::*;

use super::store::{self, IssuerEntry, KeyEntry};
use super::x509::{self, CaSigner, KeySpec, Sans, SecretPem};
use super::Pki;

/// Subject fields shared by CA generation, roles and sign-intermediate.
#[derive(Debug, Default, Clone)]
pub(super) struct Subject<'a> {
    pub(super) cn: &'a str,
    pub(super) ou: &'a [String],
    pub(super) organization: &'a [String],
    pub(super) country: &'a [String],
    pub(super) locality: &'a [String],
    pub(super) province: &'a [String],
    pub(super) street_address: &'a [String],
    pub(super) postal_code: &'a [String],
    pub(super) serial_number: &'a str,
}

impl Subject<'_> {
    /// rcgen keeps one value per attribute type, so only the first of each
    /// list is used.
    pub(super) fn dn(&self) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        let mut put = |ty: DnType, v: &[String]| {
            if let Some(first) = v.iter().find(|s| !s.is_empty()) {
                dn.push(ty, first.as_str());
            }
        };
        put(DnType::CountryName, self.country);
        put(DnType::StateOrProvinceName, self.province);
        put(DnType::LocalityName, self.locality);
        put(DnType::CustomDnType(vec![2, 5, 4, 9]), self.street_address);
        put(DnType::CustomDnType(vec![2, 5, 4, 17]), self.postal_code);
        put(DnType::OrganizationName, self.organization);
        put(DnType::OrganizationalUnitName, self.ou);
        if !self.serial_number.is_empty() {
            dn.push(DnType::CustomDnType(vec![2, 5, 4, 5]), self.serial_number);
        }
        if !self.cn.is_empty() {
            dn.push(DnType::CommonName, self.cn);
        }
        dn
    }
}

fn minus_one() -> i64 {
    -1
}

#[derive(Debug, Deserialize)]
struct GenerateRequest {
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
    #[serde(default = "minus_one", deserialize_with = "fields::int")]
    max_path_length: i64,
    #[serde(default, deserialize_with = "fields::string_list")]
    permitted_dns_domains: Vec<String>,
    #[serde(default, deserialize_with = "fields::string_list")]
    excluded_dns_domains: Vec<String>,
    #[serde(default)]
    key_type: String,
    #[serde(default, deserialize_with = "fields::uint")]
    key_bits: u64,
    #[serde(default)]
    issuer_name: String,
    #[serde(default)]
    key_name: String,
    #[serde(default)]
    key_ref: String,
    #[serde(default)]
    format: String,
    #[serde(default, deserialize_with = "fields::boolean")]
    exclude_cn_from_sans: bool,
    #[serde(default, deserialize_with = "fields::boolean")]
    use_csr_values: bool,
    #[serde(default)]
    csr: String,
    #[serde(default)]
    issuer_ref: String,
    #[serde(default, deserialize_with = "fields::string_list")]
    ou: Vec<String>,
    #[serde(default, deserialize_with = "fields::string_list")]
    organization: Vec<String>,
    #[serde(default, deserialize_with = "fields::string_list")]
    country: Vec<String>,
    #[serde(default, deserialize_with = "fields::string_list")]
    locality: Vec<String>,
    #[serde(default, deserialize_with = "fields::string_list")]
    province: Vec<String>,
    #[serde(default, deserialize_with = "fields::string_list")]
    street_address: Vec<String>,
    #[serde(default, deserialize_with = "fields::string_list")]
    postal_code: Vec<String>,
    #[serde(default)]
    serial_number: String,
}

impl GenerateRequest {
    fn subject(&self) -> Subject<'_> {
        Subject {
            cn: &self.common_name,
            ou: &self.ou,
            organization: &self.organization,
            country: &self.country,
            locality: &self.locality,
            province: &self.province,
            street_address: &self.street_address,
            postal_code: &self.postal_code,
            serial_number: &self.serial_number,
        }
    }

    fn sans(&self) -> Result<Sans, BackendError> {
        let mut s = Sans::default();
        if !self.exclude_cn_from_sans && !self.common_name.is_empty() {
            if let Ok(ip) = self.common_name.parse() {
                s.ips.push(ip);
            } else if self.common_name.contains('.') || self.common_name.contains('@') {
                s.push_unique_dns(&self.common_name);
            }
        }
        for n in &self.alt_names {
            s.push_unique_dns(n);
        }
        for ip in &self.ip_sans {
            s.ips.push(ip.parse().map_err(|_| {
                BackendError::bad_request(format!("ip_sans: {ip:?} is not an IP address"))
            })?);
        }
        s.uris.extend(self.uri_sans.iter().cloned());
        Ok(s)
    }

    fn ca_constraints(&self, p: &mut CertificateParams) -> Result<(), BackendError> {
        p.is_ca = match self.max_path_length {
            n if n < 0 => IsCa::Ca(BasicConstraints::Unconstrained),
            n => IsCa::Ca(BasicConstraints::Constrained(u8::try_from(n).map_err(
                |_| BackendError::bad_request("max_path_length must be at most 255"),
            )?)),
        };
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        if !self.permitted_dns_domains.is_empty() || !self.excluded_dns_domains.is_empty() {
            p.name_constraints = Some(NameConstraints {
                permitted_subtrees: self
                    .permitted_dns_domains
                    .iter()
                    .map(|d| GeneralSubtree::DnsName(d.clone()))
                    .collect(),
                excluded_subtrees: self
                    .excluded_dns_domains
                    .iter()
                    .map(|d| GeneralSubtree::DnsName(d.clone()))
                    .collect(),
            });
        }
        Ok(())
    }
}

fn check_format(format: &str) -> Result<(), BackendError> {
    match format {
        "" | "pem" | "der" | "pem_bundle" => Ok(()),
        f => Err(BackendError::bad_request(format!(
            "format must be pem, der or pem_bundle, got {f:?}"
        ))),
    }
}

/// A certificate in the answer's `format`.
pub(super) fn render(format: &str, der: &[u8]) -> String {
    if format == "der" {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(der)
    } else {
        x509::cert_pem(der)
    }
}

fn pem_to_der(pem_text: &str) -> Result<Vec<u8>, BackendError> {
    x509::pem_certs(pem_text)?
        .into_iter()
        .next()
        .ok_or_else(|| BackendError::Internal("stored certificate has no PEM block".into()))
}

pub(super) fn render_pem(format: &str, pem_text: &str) -> Result<String, BackendError> {
    if format == "der" {
        Ok(render(format, &pem_to_der(pem_text)?))
    } else {
        Ok(pem_text.to_string())
    }
}

pub(super) fn validate_name(name: &str, field: &str) -> Result<(), BackendError> {
    if name == "default" {
        return Err(BackendError::bad_request(format!(
            "{field}: \"default\" is reserved"
        )));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(BackendError::bad_request(format!(
            "{field}: {name:?} may only contain letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The key a generate request uses: a fresh one, or `key_ref` for `existing`.
async fn obtain_key(
    s: &dyn Storage,
    kind: &str,
    r: &GenerateRequest,
) -> Result<(KeyEntry, KeyPair, bool), BackendError> {
    match kind {
        "internal" | "exported" => {
            if !r.key_name.is_empty() {
                validate_name(&r.key_name, "key_name")?;
                if store::keys(s).await?.iter().any(|k| k.name == r.key_name) {
                    return Err(BackendError::bad_request(format!(
                        "key_name: a key named {:?} already exists",
                        r.key_name
                    )));
                }
            }
            let spec = KeySpec::parse(&r.key_type, r.key_bits)?;
            let kp = spec.generate()?;
            let entry = KeyEntry {
                id: new_id(),
                name: r.key_name.clone(),
                key_type: spec.type_name().into(),
                public_key: hex::encode(kp.public_key_der()),
                private_key: SecretPem::of(&kp),
            };
            Ok((entry, kp, true))
        }
        "existing" => {
            let all = store::keys(s).await?;
            let entry = all
                .into_iter()
                .find(|k| k.id == r.key_ref || (!k.name.is_empty() && k.name == r.key_ref))
                .ok_or_else(|| {
                    BackendError::bad_request(format!("key_ref: no key named {:?}", r.key_ref))
                })?;
            let kp = entry.private_key.key_pair()?;
            Ok((entry, kp, false))
        }
        "kms" => Err(BackendError::bad_request(
            "managed (kms) keys are not supported by this server",
        )),
        t => Err(BackendError::bad_request(format!(
            "type must be internal, exported or existing, got {t:?}"
        ))),
    }
}

/// The validity a CA request asks for: `not_after` wins over `ttl`, which
/// defaults to the mount's maximum.
pub(super) fn validity(
    pki: &Pki,
    ttl: Option<Duration>,
    not_after: &str,
) -> Result<(i64, i64), BackendError> {
    let now = chrono::Utc::now().timestamp();
    let end = if !not_after.is_empty() {
        chrono::DateTime::parse_from_rfc3339(not_after)
            .map_err(|_| {
                BackendError::bad_request(format!(
                    "not_after: {not_after:?} is not an RFC 3339 time (2030-01-01T00:00:00Z)"
                ))
            })?
            .timestamp()
    } else {
        let ttl = ttl.unwrap_or_else(|| pki.system.max_lease_ttl());
        now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 4)
    };
    if end <= now {
        return Err(BackendError::bad_request(
            "ttl/not_after: the certificate would already be expired",
        ));
    }
    Ok((now - 30, end))
}

fn base_params(
    subject: DistinguishedName,
    sans: &Sans,
    not_before: i64,
    not_after: i64,
) -> Result<CertificateParams, BackendError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject;
    p.subject_alt_names = sans.to_rcgen()?;
    p.not_before = x509::offset_time(not_before)?;
    p.not_after = x509::offset_time(not_after)?;
    p.serial_number = Some(x509::serial_number(&x509::random_serial()?));
    Ok(p)
}

fn rcgen_err(what: &str) -> impl Fn(rcgen::Error) -> BackendError + '_ {
    move |e| BackendError::bad_request(format!("{what}: {e}"))
}

pub(super) async fn generate_root(
    pki: &Pki,
    req: &Request,
    s: &dyn Storage,
    kind: &str,
) -> Result<Response, BackendError> {
    let r: GenerateRequest = req.parse()?;
    check_format(&r.format)?;
    if r.common_name.is_empty() && r.alt_names.is_empty() {
        return Err(BackendError::bad_request(
            "common_name: required (or alt_names) for a root certificate",
        ));
    }
    if !r.issuer_name.is_empty() {
        validate_name(&r.issuer_name, "issuer_name")?;
    }
    let _guard = pki.lock.lock().await;
    if !r.issuer_name.is_empty()
        && store::issuers(s)
            .await?
            .iter()
            .any(|i| i.name == r.issuer_name)
    {
        return Err(BackendError::bad_request(format!(
            "issuer_name: an issuer named {:?} already exists",
            r.issuer_name
        )));
    }
    let (key_entry, kp, new_key) = obtain_key(s, kind, &r).await?;
    let (nb, na) = validity(pki, r.ttl, &r.not_after)?;
    let mut p = base_params(r.subject().dn(), &r.sans()?, nb, na)?;
    r.ca_constraints(&mut p)?;
    let urls = store::urls_config(s).await?;
    if !urls.crl_distribution_points.is_empty() {
        p.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: urls.crl_distribution_points.clone(),
        }];
    }
    let cert = p.self_signed(&kp).map_err(rcgen_err("root certificate"))?;
    let der = cert.der().to_vec();
    let pem_text = x509::cert_pem(&der);
    let parsed = x509::parse_cert(&der)?;
    let serial = x509::format_serial(parsed.raw_serial());
    let issuer = IssuerEntry {
        id: new_id(),
        name: r.issuer_name.clone(),
        key_id: key_entry.id.clone(),
        certificate: pem_text.clone(),
        ca_chain: vec![pem_text.clone()],
        serial_number: serial.clone(),
        not_after: na,
        leaf_not_after_behavior: "err".into(),
        revoked: false,
    };
    if new_key {
        store::put(s, &format!("{}{}", store::KEYS, key_entry.id), &key_entry).await?;
    }
    store::put(s, &format!("{}{}", store::ISSUERS, issuer.id), &issuer).await?;
    store_cert(s, &serial, &pem_text, &issuer.id, na).await?;
    adopt_default(s, &issuer.id).await?;

    let mut data = Map::new();
    data.insert("certificate".into(), json!(render(&r.format, &der)));
    data.insert("issuing_ca".into(), json!(render(&r.format, &der)));
    data.insert("serial_number".into(), json!(serial));
    data.insert("expiration".into(), json!(na));
    data.insert("issuer_id".into(), json!(issuer.id));
    data.insert("issuer_name".into(), json!(issuer.name));
    data.insert("key_id".into(), json!(key_entry.id));
    data.insert("key_name".into(), json!(key_entry.name));
    if kind == "exported" {
        data.insert(
            "private_key".into(),
            json!(key_entry.private_key.expose().trim_end()),
        );
        data.insert("private_key_type".into(), json!(key_entry.key_type));
        // Vault's pem_bundle is the whole bundle: the key, then the certificate.
        if r.format == "pem_bundle" {
            data.insert(
                "certificate".into(),
                json!(format!(
                    "{}\n{}",
                    key_entry.private_key.expose().trim_end(),
                    render(&r.format, &der)
                )),
            );
        }
    }
    Ok(Response::data(data))
}

async fn store_cert(
    s: &dyn Storage,
    serial: &str,
    pem_text: &str,
    issuer_id: &str,
    not_after: i64,
) -> Result<(), BackendError> {
    store::put(
        s,
        &format!("{}{}", store::CERTS, x509::serial_key(serial)),
        &store::CertEntry {
            serial_number: serial.into(),
            certificate: pem_text.into(),
            issuer_id: issuer_id.into(),
            not_after,
        },
    )
    .await
}

/// The first issuer becomes the default, or every new one when
/// `default_follows_latest_issuer` is set.
async fn adopt_default(s: &dyn Storage, id: &str) -> Result<(), BackendError> {
    let mut cfg = store::issuers_config(s).await?;
    let current_exists = !cfg.default.is_empty()
        && store::get::<IssuerEntry>(s, &format!("{}{}", store::ISSUERS, cfg.default))
            .await?
            .is_some();
    if !current_exists || cfg.default_follows_latest_issuer {
        cfg.default = id.to_string();
        store::put(s, store::CONFIG_ISSUERS, &cfg).await?;
    }
    Ok(())
}

pub(super) async fn generate_intermediate(
    pki: &Pki,
    req: &Request,
    s: &dyn Storage,
    kind: &str,
) -> Result<Response, BackendError> {
    let r: GenerateRequest = req.parse()?;
    check_format(&r.format)?;
    let _guard = pki.lock.lock().await;
    let (key_entry, kp, new_key) = obtain_key(s, kind, &r).await?;
    let mut p = CertificateParams::default();
    p.distinguished_name = r.subject().dn();
    p.subject_alt_names = r.sans()?.to_rcgen()?;
    let csr = p
        .serialize_request(&kp)
        .map_err(rcgen_err("certificate request"))?;
    let csr_text = if r.format == "der" {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(csr.der())
    } else {
        csr.pem()
            .map_err(rcgen_err("certificate request"))?
            .trim_end()
            .to_string()
    };
    if new_key {
        store::put(s, &format!("{}{}", store::KEYS, key_entry.id), &key_entry).await?;
    }
    let mut data = Map::new();
    data.insert("csr".into(), json!(csr_text));
    data.insert("key_id".into(), json!(key_entry.id));
    data.insert("key_name".into(), json!(key_entry.name));
    if kind == "exported" {
        data.insert(
            "private_key".into(),
            json!(key_entry.private_key.expose().trim_end()),
        );
        data.insert("private_key_type".into(), json!(key_entry.key_type));
    }
    Ok(Response::data(data))
}

/// A loaded issuer that can sign.
pub(super) struct Loaded {
    pub(super) entry: IssuerEntry,
    pub(super) der: Vec<u8>,
    pub(super) signer: CaSigner,
}

pub(super) async fn load_signer(s: &dyn Storage, reference: &str) -> Result<Loaded, BackendError> {
    let entry = store::require_issuer(s, reference).await?;
    let key = store::key(s, &entry.key_id).await?.ok_or_else(|| {
        BackendError::bad_request(format!(
            "issuer {} has no private key here and cannot sign",
            entry.id
        ))
    })?;
    let der = pem_to_der(&entry.certificate)?;
    let signer = CaSigner::new(&der, key.private_key.key_pair()?)?;
    Ok(Loaded { entry, der, signer })
}

/// A parsed CSR: its subject, requested SANs and public key.
pub(super) struct Csr {
    pub(super) subject: DistinguishedName,
    pub(super) common_name: Option<String>,
    pub(super) sans: Sans,
    pub(super) key: x509::KeyInfo,
}

pub(super) fn parse_csr(text: &str) -> Result<Csr, BackendError> {
    use x509_parser::certification_request::X509CertificationRequest;
    let text = text.trim();
    if text.is_empty() {
        return Err(BackendError::bad_request("csr: required"));
    }
    let der = if text.starts_with("-----") {
        let p = ::pem::parse(text)
            .map_err(|e| BackendError::bad_request(format!("csr: invalid PEM: {e}")))?;
        p.into_contents()
    } else {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| BackendError::bad_request("csr: neither PEM nor base64 DER"))?
    };
    let (_, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| BackendError::bad_request(format!("csr: not a PKCS#10 request: {e}")))?;
    csr.verify_signature()
        .map_err(|_| BackendError::bad_request("csr: its signature does not verify"))?;
    let info = &csr.certification_request_info;
    let mut sans = Sans::default();
    if let Some(exts) = csr.requested_extensions() {
        for e in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = e {
                sans = x509::sans_from_general_names(&san.general_names);
            }
        }
    }
    Ok(Csr {
        subject: x509::dn_from_name(&info.subject)?,
        common_name: x509::common_name(&info.subject),
        sans,
        key: x509::key_info(&info.subject_pki)?,
    })
}

/// Issuer chain as PEM: `entry` first, then its parents.
pub(super) fn chain_of(entry: &IssuerEntry) -> Vec<String> {
    if entry.ca_chain.is_empty() {
        vec![entry.certificate.clone()]
    } else {
        entry.ca_chain.clone()
    }
}

pub(super) async fn sign_intermediate(
    pki: &Pki,
    req: &Request,
    s: &dyn Storage,
    issuer_ref: &str,
) -> Result<Response, BackendError> {
    let r: GenerateRequest = req.parse()?;
    check_format(&r.format)?;
    let csr = parse_csr(&r.csr)?;
    let reference = if issuer_ref.is_empty() {
        r.issuer_ref.as_str()
    } else {
        issuer_ref
    };
    let loaded = load_signer(s, reference).await?;
    let (nb, mut na) = validity(pki, r.ttl, &r.not_after)?;
    na = clamp_to_issuer(&loaded.entry, na)?;
    let (subject, sans) = if r.use_csr_values || r.common_name.is_empty() {
        (csr.subject.clone(), csr.sans.clone())
    } else {
        (r.subject().dn(), r.sans()?)
    };
    let mut p = base_params(subject, &sans, nb, na)?;
    r.ca_constraints(&mut p)?;
    p.use_authority_key_identifier_extension = true;
    let urls = store::urls_config(s).await?;
    if !urls.crl_distribution_points.is_empty() {
        p.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: urls.crl_distribution_points.clone(),
        }];
    }
    let cert = p
        .signed_by(&csr.key.key, &loaded.signer.stand_in, &loaded.signer.key)
        .map_err(rcgen_err("intermediate certificate"))?;
    let der = cert.der().to_vec();
    let serial = x509::format_serial(x509::parse_cert(&der)?.raw_serial());
    store_cert(s, &serial, &x509::cert_pem(&der), &loaded.entry.id, na).await?;
    let mut chain = vec![render(&r.format, &der)];
    for c in chain_of(&loaded.entry) {
        chain.push(render_pem(&r.format, &c)?);
    }
    // As in Vault, a pem_bundle certificate carries its issuers' chain, so
    // it can go to intermediate/set-signed as it is.
    let certificate = if r.format == "pem_bundle" {
        chain.join("\n")
    } else {
        render(&r.format, &der)
    };
    Ok(Response::data(obj(json!({
        "certificate": certificate,
        "issuing_ca": render(&r.format, &loaded.der),
        "ca_chain": chain,
        "serial_number": serial,
        "expiration": na,
    }))))
}

/// Vault's `leaf_not_after_behavior`: `err` refuses a certificate that
/// would outlive its issuer, `truncate` shortens it.
pub(super) fn clamp_to_issuer(issuer: &IssuerEntry, not_after: i64) -> Result<i64, BackendError> {
    if not_after <= issuer.not_after {
        return Ok(not_after);
    }
    if issuer.leaf_not_after_behavior == "truncate" {
        return Ok(issuer.not_after);
    }
    Err(BackendError::bad_request(format!(
        "cannot satisfy request, as TTL would result in notAfter {} that is beyond the \
         expiration of the CA certificate at {} (issuer leaf_not_after_behavior=err)",
        x509::rfc3339(not_after),
        x509::rfc3339(issuer.not_after)
    )))
}

pub(super) fn obj(v: Value) -> Map {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[derive(Debug, Deserialize)]
struct ImportRequest {
    #[serde(default)]
    pem_bundle: String,
    #[serde(default)]
    certificate: String,
}

/// `config/ca`, `issuers/import/*` and `intermediate/set-signed`.
pub(super) async fn import(
    pki: &Pki,
    req: &Request,
    s: &dyn Storage,
    set_signed: bool,
) -> Result<Response, BackendError> {
    let r: ImportRequest = req.parse()?;
    let text = if set_signed || r.pem_bundle.is_empty() {
        &r.certificate
    } else {
        &r.pem_bundle
    };
    let field = if set_signed {
        "certificate"
    } else {
        "pem_bundle"
    };
    let certs = x509::pem_certs(text)?;
    let new_keys = if set_signed {
        Vec::new()
    } else {
        x509::pem_keys(text)?
    };
    if certs.is_empty() && new_keys.is_empty() {
        return Err(BackendError::bad_request(format!(
            "{field}: no certificates or private keys found"
        )));
    }
    let _guard = pki.lock.lock().await;
    let mut keys = store::keys(s).await?;
    let (mut imported_keys, mut existing_keys) = (Vec::new(), Vec::new());
    for kp in new_keys {
        let public = hex::encode(kp.public_key_der());
        if let Some(k) = keys.iter().find(|k| k.public_key == public) {
            existing_keys.push(k.id.clone());
            continue;
        }
        let entry = KeyEntry {
            id: new_id(),
            name: String::new(),
            key_type: x509::key_type_of(&kp).into(),
            public_key: public,
            private_key: SecretPem::of(&kp),
        };
        store::put(s, &format!("{}{}", store::KEYS, entry.id), &entry).await?;
        imported_keys.push(entry.id.clone());
        keys.push(entry);
    }

    let mut issuers = store::issuers(s).await?;
    let (mut imported, mut existing) = (Vec::new(), Vec::new());
    let mut mapping = BTreeMap::new();
    for der in &certs {
        let c = x509::parse_cert(der)?;
        if !c.is_ca() {
            return Err(BackendError::bad_request(format!(
                "{field}: refusing to import a non-CA certificate ({})",
                c.subject()
            )));
        }
        let pem_text = x509::cert_pem(der);
        if let Some(i) = issuers.iter().find(|i| i.certificate == pem_text) {
            existing.push(i.id.clone());
            continue;
        }
        let public = hex::encode(c.public_key().raw);
        let key_id = keys
            .iter()
            .find(|k| k.public_key == public)
            .map(|k| k.id.clone())
            .unwrap_or_default();
        if set_signed && imported.is_empty() && key_id.is_empty() {
            return Err(BackendError::bad_request(
                "certificate: the signed certificate matches no key generated by intermediate/generate",
            ));
        }
        let entry = IssuerEntry {
            id: new_id(),
            name: String::new(),
            key_id: key_id.clone(),
            certificate: pem_text.clone(),
            ca_chain: Vec::new(),
            serial_number: x509::format_serial(c.raw_serial()),
            not_after: c.validity().not_after.timestamp(),
            leaf_not_after_behavior: "err".into(),
            revoked: false,
        };
        mapping.insert(entry.id.clone(), key_id);
        imported.push(entry.id.clone());
        issuers.push(entry);
    }
    // A key imported now may belong to an issuer imported earlier.
    for i in issuers.iter_mut().filter(|i| i.key_id.is_empty()) {
        let der = pem_to_der(&i.certificate)?;
        let public = hex::encode(x509::parse_cert(&der)?.public_key().raw);
        if let Some(k) = keys.iter().find(|k| k.public_key == public) {
            i.key_id = k.id.clone();
            mapping.insert(i.id.clone(), k.id.clone());
        }
    }
    rebuild_chains(&mut issuers)?;
    for i in &issuers {
        store::put(s, &format!("{}{}", store::ISSUERS, i.id), i).await?;
    }
    if let Some(first) = imported
        .iter()
        .find(|id| mapping.get(*id).is_some_and(|k| !k.is_empty()))
        .or(imported.first())
    {
        adopt_default(s, first).await?;
    }
    Ok(Response::data(obj(json!({
        "imported_issuers": if imported.is_empty() { Value::Null } else { json!(imported) },
        "imported_keys": if imported_keys.is_empty() { Value::Null } else { json!(imported_keys) },
        "existing_issuers": if existing.is_empty() { Value::Null } else { json!(existing) },
        "existing_keys": if existing_keys.is_empty() { Value::Null } else { json!(existing_keys) },
        "mapping": mapping,
    }))))
}

/// Each issuer's chain: itself, then whichever known issuer signed it, and
/// so on up to a self-signed root (or an issuer we do not hold).
fn rebuild_chains(issuers: &mut [IssuerEntry]) -> Result<(), BackendError> {
    let ders: Vec<Vec<u8>> = issuers
        .iter()
        .map(|i| pem_to_der(&i.certificate))
        .collect::<Result<_, _>>()?;
    let parsed: Vec<X509Certificate<'_>> = ders
        .iter()
        .map(|d| x509::parse_cert(d))
        .collect::<Result<_, _>>()?;
    let parent_of = |child: usize| -> Option<usize> {
        let c = &parsed[child];
        if c.subject().as_raw() == c.issuer().as_raw() && c.verify_signature(None).is_ok() {
            return None;
        }
        (0..parsed.len()).find(|&j| {
            j != child
                && parsed[j].subject().as_raw() == c.issuer().as_raw()
                && c.verify_signature(Some(parsed[j].public_key())).is_ok()
        })
    };
    let mut chains = Vec::with_capacity(issuers.len());
    for i in 0..issuers.len() {
        let mut chain = vec![i];
        let mut at = i;
        while let Some(p) = parent_of(at) {
            if chain.contains(&p) || chain.len() > 16 {
                break;
            }
            chain.push(p);
            at = p;
        }
        chains.push(chain);
    }
    for (i, chain) in chains.into_iter().enumerate() {
        let pems = chain
            .iter()
            .map(|&j| x509::cert_pem(&ders[j]))
            .collect::<Vec<_>>();
        // Keep a longer chain learnt from an earlier import (the parent may
        // live in another mount and be known only from that bundle).
        if pems.len() >= issuers[i].ca_chain.len() {
            issuers[i].ca_chain = pems;
        }
    }
    Ok(())
}

pub(super) fn issuer_data(e: &IssuerEntry, urls: &store::UrlsConfig) -> Map {
    obj(json!({
        "issuer_id": e.id,
        "issuer_name": e.name,
        "key_id": e.key_id,
        "certificate": e.certificate,
        "ca_chain": chain_of(e),
        "serial_number": e.serial_number,
        "leaf_not_after_behavior": e.leaf_not_after_behavior,
        "manual_chain": Value::Null,
        "usage": "crl-signing,issuing-certificates,ocsp-signing,read-only",
        "revocation_signature_algorithm": "",
        "revoked": e.revoked,
        "issuing_certificates": urls.issuing_certificates,
        "crl_distribution_points": urls.crl_distribution_points,
        "ocsp_servers": urls.ocsp_servers,
    }))
}

#[derive(Debug, Deserialize)]
struct IssuerUpdate {
    #[serde(default)]
    issuer_name: Option<String>,
    #[serde(default)]
    leaf_not_after_behavior: Option<String>,
}

pub(super) async fn update_issuer(
    pki: &Pki,
    req: &Request,
    s: &dyn Storage,
    reference: &str,
) -> Result<Response, BackendError> {
    let u: IssuerUpdate = req.parse()?;
    let _guard = pki.lock.lock().await;
    let mut e = store::require_issuer(s, reference).await?;
    if let Some(name) = u.issuer_name {
        if !name.is_empty() {
            validate_name(&name, "issuer_name")?;
            if store::issuers(s)
                .await?
                .iter()
                .any(|i| i.name == name && i.id != e.id)
            {
                return Err(BackendError::bad_request(format!(
                    "issuer_name: an issuer named {name:?} already exists"
                )));
            }
        }
        e.name = name;
    }
    if let Some(b) = u.leaf_not_after_behavior {
        match b.as_str() {
            "err" | "truncate" => e.leaf_not_after_behavior = b,
            "permit" => {
                return Err(BackendError::bad_request(
                    "leaf_not_after_behavior: permit is not supported (leaves may not outlive their issuer); use err or truncate",
                ))
            }
            other => {
                return Err(BackendError::bad_request(format!(
                    "leaf_not_after_behavior must be err or truncate, got {other:?}"
                )))
            }
        }
    }
    store::put(s, &format!("{}{}", store::ISSUERS, e.id), &e).await?;
    let urls = store::urls_config(s).await?;
    Ok(Response::data(issuer_data(&e, &urls)))
}

pub(super) async fn delete_issuer(
    pki: &Pki,
    s: &dyn Storage,
    reference: &str,
) -> Result<(), BackendError> {
    let _guard = pki.lock.lock().await;
    let Some(e) = store::resolve_issuer(s, reference).await? else {
        return Ok(());
    };
    s.delete(&format!("{}{}", store::ISSUERS, e.id)).await?;
    s.delete(&format!("{}{}", store::CRLS, e.id)).await?;
    let mut cfg = store::issuers_config(s).await?;
    if cfg.default == e.id {
        cfg.default = String::new();
        store::put(s, store::CONFIG_ISSUERS, &cfg).await?;
    }
    Ok(())
}

/// `DELETE root`: every issuer and key goes (Vault's behaviour).
pub(super) async fn delete_all(pki: &Pki, s: &dyn Storage) -> Result<(), BackendError> {
    let _guard = pki.lock.lock().await;
    for prefix in [store::ISSUERS, store::KEYS, store::CRLS] {
        for k in store::list(s, prefix).await? {
            s.delete(&format!("{prefix}{k}")).await?;
        }
    }
    s.delete(store::CONFIG_ISSUERS).await?;
    Ok(())
}

pub(super) async fn list_issuers(s: &dyn Storage) -> Result<Response, BackendError> {
    let cfg = store::issuers_config(s).await?;
    let all = store::issuers(s).await?;
    let mut info = Map::new();
    for i in &all {
        info.insert(
            i.id.clone(),
            json!({
                "issuer_name": i.name,
                "is_default": i.id == cfg.default,
                "serial_number": i.serial_number,
                "key_id": i.key_id,
            }),
        );
    }
    let mut resp = Response::list(all.iter().map(|i| i.id.clone()).collect());
    if let Some(d) = resp.data.as_mut() {
        d.insert("key_info".into(), Value::Object(info));
    }
    Ok(resp)
}

#[derive(Debug, Deserialize)]
struct DefaultRequest {
    #[serde(default)]
    default: String,
    #[serde(default, deserialize_with = "fields::opt_boolean")]
    default_follows_latest_issuer: Option<bool>,
}

pub(super) async fn write_issuers_config(
    pki: &Pki,
    req: &Request,
    s: &dyn Storage,
) -> Result<Response, BackendError> {
    let r: DefaultRequest = req.parse()?;
    let _guard = pki.lock.lock().await;
    let mut cfg = store::issuers_config(s).await?;
    if !r.default.is_empty() {
        let e = store::resolve_issuer(s, &r.default)
            .await?
            .filter(|_| r.default != "default")
            .ok_or_else(|| {
                BackendError::bad_request(format!("default: no issuer named {:?}", r.default))
            })?;
        cfg.default = e.id;
    }
    if let Some(f) = r.default_follows_latest_issuer {
        cfg.default_follows_latest_issuer = f;
    }
    store::put(s, store::CONFIG_ISSUERS, &cfg).await?;
    Ok(Response::data(obj(json!({
        "default": cfg.default,
        "default_follows_latest_issuer": cfg.default_follows_latest_issuer,
    }))))
}

#[derive(Debug, Deserialize)]
struct SelfIssuedRequest {
    #[serde(default)]
    certificate: String,
}

/// `root/sign-self-issued`: re-sign another CA's self-issued certificate
/// (a root rollover) with this issuer, keeping its subject, key, serial,
/// validity and CA constraints. Extensions rcgen cannot express are dropped.
pub(super) async fn sign_self_issued(
    req: &Request,
    s: &dyn Storage,
    issuer_ref: &str,
) -> Result<Response, BackendError> {
    let r: SelfIssuedRequest = req.parse()?;
    let der = x509::pem_certs(&r.certificate)?
        .into_iter()
        .next()
        .ok_or_else(|| BackendError::bad_request("certificate: no PEM certificate found"))?;
    let c = x509::parse_cert(&der)?;
    if c.subject().as_raw() != c.issuer().as_raw() {
        return Err(BackendError::bad_request(
            "certificate: not self-issued (its issuer differs from its subject)",
        ));
    }
    if !c.is_ca() {
        return Err(BackendError::bad_request(
            "certificate: not a CA certificate",
        ));
    }
    let loaded = load_signer(s, issuer_ref).await?;
    let mut p = CertificateParams::default();
    p.distinguished_name = x509::dn_from_name(c.subject())?;
    p.not_before = x509::offset_time(c.validity().not_before.timestamp())?;
    p.not_after = x509::offset_time(c.validity().not_after.timestamp())?;
    p.serial_number = Some(x509::serial_number(c.raw_serial()));
    p.is_ca = match c.basic_constraints() {
        Ok(Some(bc)) => match bc.value.path_len_constraint {
            Some(n) => IsCa::Ca(BasicConstraints::Constrained(
                u8::try_from(n).unwrap_or(u8::MAX),
            )),
            None => IsCa::Ca(BasicConstraints::Unconstrained),
        },
        _ => IsCa::Ca(BasicConstraints::Unconstrained),
    };
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    if let Ok(Some(san)) = c.subject_alternative_name() {
        p.subject_alt_names = x509::sans_from_general_names(&san.value.general_names).to_rcgen()?;
    }
    p.use_authority_key_identifier_extension = true;
    let key = x509::key_info(c.public_key())?;
    let out = p
        .signed_by(&key.key, &loaded.signer.stand_in, &loaded.signer.key)
        .map_err(rcgen_err("certificate"))?;
    Ok(Response::data(obj(json!({
        "certificate": x509::cert_pem(out.der()),
        "issuing_ca": x509::cert_pem(&loaded.der),
    }))))
}
