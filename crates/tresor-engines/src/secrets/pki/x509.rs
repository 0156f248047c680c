//! Certificate plumbing shared by the PKI paths: key generation, serial
//! numbers, PEM, names, and turning a stored issuer back into something
//! rcgen can sign with.
//!
//! rcgen builds and signs every certificate and CRL; x509-parser reads
//! whatever comes in (CSRs, imported bundles, certificates to revoke).
//! rcgen's own x509-parser bridge is not enabled because it pulls another
//! major version of x509-parser, so the few conversions it would do live here.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, KeyIdMethod,
    KeyPair, KeyUsagePurpose, PublicKeyData, RsaKeySize, SanType, SerialNumber, SignatureAlgorithm,
};
use serde::{Deserialize, Serialize};
use tresor_sdk::BackendError;
use x509_parser::prelude::*;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A PKCS#8 private key in PEM, wiped from memory when dropped.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(transparent)]
pub(super) struct SecretPem(String);

impl SecretPem {
    pub(super) fn of(key: &KeyPair) -> Self {
        SecretPem(key.serialize_pem())
    }

    pub(super) fn expose(&self) -> &str {
        &self.0
    }

    pub(super) fn key_pair(&self) -> Result<KeyPair, BackendError> {
        KeyPair::from_pem(&self.0)
            .map_err(|e| BackendError::Internal(format!("stored private key unreadable: {e}")))
    }
}

impl std::fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretPem(..)")
    }
}

/// What a `key_type`/`key_bits` pair asks for, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeySpec {
    Rsa(u64),
    Ec(u64),
    Ed25519,
}

impl KeySpec {
    pub(super) fn parse(key_type: &str, key_bits: u64) -> Result<Self, BackendError> {
        match key_type {
            "" | "rsa" => match key_bits {
                0 => Ok(KeySpec::Rsa(2048)),
                2048 | 3072 | 4096 => Ok(KeySpec::Rsa(key_bits)),
                b => Err(BackendError::bad_request(format!(
                    "key_bits: RSA keys must be 2048, 3072 or 4096 bits, got {b}"
                ))),
            },
            "ec" => match key_bits {
                0 => Ok(KeySpec::Ec(256)),
                256 | 384 | 521 => Ok(KeySpec::Ec(key_bits)),
                b => Err(BackendError::bad_request(format!(
                    "key_bits: EC keys must be 256, 384 or 521 bits, got {b}"
                ))),
            },
            "ed25519" => Ok(KeySpec::Ed25519),
            t => Err(BackendError::bad_request(format!(
                "key_type must be rsa, ec or ed25519, got {t:?}"
            ))),
        }
    }

    pub(super) fn type_name(self) -> &'static str {
        match self {
            KeySpec::Rsa(_) => "rsa",
            KeySpec::Ec(_) => "ec",
            KeySpec::Ed25519 => "ed25519",
        }
    }

    pub(super) fn bits(self) -> u64 {
        match self {
            KeySpec::Rsa(b) | KeySpec::Ec(b) => b,
            KeySpec::Ed25519 => 0,
        }
    }

    pub(super) fn generate(self) -> Result<KeyPair, BackendError> {
        let r = match self {
            KeySpec::Rsa(bits) => {
                let size = match bits {
                    3072 => RsaKeySize::_3072,
                    4096 => RsaKeySize::_4096,
                    _ => RsaKeySize::_2048,
                };
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size)
            }
            KeySpec::Ec(384) => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeySpec::Ec(521) => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512),
            KeySpec::Ec(_) => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeySpec::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        };
        r.map_err(|e| BackendError::Internal(format!("key generation failed: {e}")))
    }
}

/// The type name Vault reports for a key pair (`private_key_type`).
pub(super) fn key_type_of(key: &KeyPair) -> &'static str {
    let alg = key.algorithm();
    if alg == &rcgen::PKCS_ED25519 {
        "ed25519"
    } else if alg == &rcgen::PKCS_ECDSA_P256_SHA256
        || alg == &rcgen::PKCS_ECDSA_P384_SHA384
        || alg == &rcgen::PKCS_ECDSA_P521_SHA512
    {
        "ec"
    } else {
        "rsa"
    }
}

/// A fresh positive 160-bit serial. The top byte is forced into 0x40..0x7f
/// so the DER INTEGER is always exactly 20 bytes: no sign padding, no
/// leading zero that some parsers reject as non-minimal.
pub(super) fn random_serial() -> Result<Vec<u8>, BackendError> {
    let mut b = [0u8; 20];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| BackendError::Internal("rng failure".into()))?;
    b[0] = (b[0] & 0x3f) | 0x40;
    Ok(b.to_vec())
}

/// `aa:bb:cc` from a certificate's serial bytes, sign padding dropped.
pub(super) fn format_serial(raw: &[u8]) -> String {
    let mut bytes = raw;
    while bytes.len() > 1 && bytes[0] == 0 {
        bytes = &bytes[1..];
    }
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Accepts `aa:bb`, `aa-bb` or `aabb` (any case) and answers the canonical
/// colon form, or a 400 naming the field.
pub(super) fn normalize_serial(s: &str) -> Result<String, BackendError> {
    let hex: String = s
        .trim()
        .chars()
        .filter(|c| *c != ':' && *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.is_empty() || !hex.len().is_multiple_of(2) || !hex.chars().all(|c| c.is_ascii_hexdigit())
    {
        return Err(BackendError::bad_request(format!(
            "serial_number {s:?} is not a hex serial (aa:bb:cc...)"
        )));
    }
    let bytes = hex::decode(&hex)
        .map_err(|_| BackendError::bad_request(format!("serial_number {s:?} is not hex")))?;
    Ok(format_serial(&bytes))
}

/// The storage form of a serial: colons would be fine for storage but Vault
/// uses dashes, and so do its tidy tools.
pub(super) fn serial_key(serial: &str) -> String {
    serial.replace(':', "-")
}

pub(super) fn cert_pem(der: &[u8]) -> String {
    ::pem::encode_config(
        &::pem::Pem::new("CERTIFICATE", der.to_vec()),
        ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
    )
    .trim_end()
    .to_string()
}

/// Every certificate in a PEM text, as DER, in order.
pub(super) fn pem_certs(text: &str) -> Result<Vec<Vec<u8>>, BackendError> {
    let blocks = ::pem::parse_many(text)
        .map_err(|e| BackendError::bad_request(format!("invalid PEM: {e}")))?;
    Ok(blocks
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents())
        .collect())
}

/// Every private key in a PEM text, re-encoded as PKCS#8 via rcgen (which
/// with aws-lc reads PKCS#8, PKCS#1 and SEC1).
pub(super) fn pem_keys(text: &str) -> Result<Vec<KeyPair>, BackendError> {
    let blocks = ::pem::parse_many(text)
        .map_err(|e| BackendError::bad_request(format!("invalid PEM: {e}")))?;
    let mut out = Vec::new();
    for p in blocks {
        if p.tag().ends_with("PRIVATE KEY") {
            let mut one = ::pem::encode(&p);
            let parsed = KeyPair::from_pem(&one);
            one.zeroize();
            out.push(parsed.map_err(|e| {
                BackendError::bad_request(format!("pem_bundle: unreadable private key: {e}"))
            })?);
        }
    }
    Ok(out)
}

pub(super) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, BackendError> {
    match X509Certificate::from_der(der) {
        Ok((&[], c)) => Ok(c),
        Ok(_) => Err(BackendError::bad_request(
            "certificate has trailing data after its DER",
        )),
        Err(e) => Err(BackendError::bad_request(format!(
            "certificate is not valid X.509: {e}"
        ))),
    }
}

/// rcgen's name from a parsed one, keeping each attribute's string type so
/// that a child's issuer field is byte-identical to its parent's subject
/// (chain builders compare names exactly).
pub(super) fn dn_from_name(name: &X509Name<'_>) -> Result<DistinguishedName, BackendError> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let mut dn = DistinguishedName::new();
    for attr in name.iter_attributes() {
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| BackendError::bad_request("name attribute OID out of range"))?
            .collect();
        let ty = DnType::from_oid(&oid);
        let data = attr.attr_value().data;
        let text = || {
            std::str::from_utf8(data)
                .map(str::to_string)
                .map_err(|_| BackendError::bad_request("name attribute is not valid text"))
        };
        let bad = |_| BackendError::bad_request("name attribute has characters its type forbids");
        let value = match attr.attr_value().header.tag() {
            Tag::PrintableString => DnValue::PrintableString(text()?.try_into().map_err(bad)?),
            Tag::Ia5String => DnValue::Ia5String(text()?.try_into().map_err(bad)?),
            Tag::T61String => DnValue::TeletexString(text()?.try_into().map_err(bad)?),
            Tag::BmpString => {
                DnValue::BmpString(rcgen::BmpString::from_utf16be(data.to_vec()).map_err(bad)?)
            }
            Tag::UniversalString => DnValue::UniversalString(
                rcgen::UniversalString::from_utf32be(data.to_vec()).map_err(bad)?,
            ),
            _ => DnValue::Utf8String(text()?),
        };
        dn.push(ty, value);
    }
    Ok(dn)
}

pub(super) fn common_name(name: &X509Name<'_>) -> Option<String> {
    name.iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string)
}

/// A CA as rcgen needs it to sign: its key, and a stand-in certificate that
/// carries the real CA's subject and key identifier (rcgen 0.13 takes the
/// issuer's name and key id from a `Certificate` value, and the stored CA
/// is only DER).
pub(super) struct CaSigner {
    pub(super) stand_in: rcgen::Certificate,
    pub(super) key: KeyPair,
}

impl CaSigner {
    pub(super) fn new(cert_der: &[u8], key: KeyPair) -> Result<Self, BackendError> {
        let cert = parse_cert(cert_der)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn_from_name(cert.subject())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ski = cert
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            });
        p.key_identifier_method = match ski {
            Some(k) => KeyIdMethod::PreSpecified(k),
            None => KeyIdMethod::Sha256,
        };
        // rcgen refuses to sign a CRL with an issuer whose key usages lack
        // cRLSign; mirror the real certificate so that refusal is honest.
        p.key_usages = match cert.key_usage() {
            Ok(Some(ku)) if !ku.value.crl_sign() => vec![KeyUsagePurpose::KeyCertSign],
            _ => vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
        };
        let stand_in = p
            .self_signed(&key)
            .map_err(|e| BackendError::Internal(format!("issuer key cannot sign: {e}")))?;
        Ok(CaSigner { stand_in, key })
    }
}

/// A public key taken from a CSR or certificate, for rcgen to certify.
pub(super) struct ForeignKey {
    alg: &'static SignatureAlgorithm,
    raw: Vec<u8>,
}

impl PublicKeyData for ForeignKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }
    fn algorithm(&self) -> &SignatureAlgorithm {
        self.alg
    }
}

/// What a public key is, for role checks and for rcgen.
pub(super) struct KeyInfo {
    pub(super) key_type: &'static str,
    pub(super) bits: u64,
    pub(super) key: ForeignKey,
}

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_ED25519: &str = "1.3.101.112";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_P521: &str = "1.3.132.0.35";

pub(super) fn key_info(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyInfo, BackendError> {
    let alg_oid = spki.algorithm.algorithm.to_id_string();
    let raw = spki.subject_public_key.data.to_vec();
    let (key_type, bits, alg): (&'static str, u64, &'static SignatureAlgorithm) =
        match alg_oid.as_str() {
            OID_RSA => {
                let bits = match spki.parsed() {
                    Ok(x509_parser::public_key::PublicKey::RSA(k)) => k.key_size() as u64,
                    _ => return Err(BackendError::bad_request("unreadable RSA public key")),
                };
                ("rsa", bits, &rcgen::PKCS_RSA_SHA256)
            }
            OID_EC => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
                    .unwrap_or_default();
                match curve.as_str() {
                    OID_P256 => ("ec", 256, &rcgen::PKCS_ECDSA_P256_SHA256),
                    OID_P384 => ("ec", 384, &rcgen::PKCS_ECDSA_P384_SHA384),
                    OID_P521 => ("ec", 521, &rcgen::PKCS_ECDSA_P521_SHA512),
                    c => {
                        return Err(BackendError::bad_request(format!(
                            "unsupported EC curve {c:?}: use P-256, P-384 or P-521"
                        )))
                    }
                }
            }
            OID_ED25519 => ("ed25519", 0, &rcgen::PKCS_ED25519),
            o => {
                return Err(BackendError::bad_request(format!(
                    "unsupported public key algorithm {o}"
                )))
            }
        };
    Ok(KeyInfo {
        key_type,
        bits,
        key: ForeignKey { alg, raw },
    })
}

/// Names a CSR or certificate asks for in its subjectAltName.
#[derive(Debug, Default, Clone)]
pub(super) struct Sans {
    pub(super) dns: Vec<String>,
    pub(super) emails: Vec<String>,
    pub(super) ips: Vec<IpAddr>,
    pub(super) uris: Vec<String>,
}

pub(super) fn sans_from_general_names(names: &[GeneralName<'_>]) -> Sans {
    let mut s = Sans::default();
    for n in names {
        match n {
            GeneralName::DNSName(d) => s.dns.push(d.to_string()),
            GeneralName::RFC822Name(e) => s.emails.push(e.to_string()),
            GeneralName::URI(u) => s.uris.push(u.to_string()),
            GeneralName::IPAddress(b) => {
                if let Ok(a) = <[u8; 4]>::try_from(*b) {
                    s.ips.push(IpAddr::from(a));
                } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                    s.ips.push(IpAddr::from(a));
                }
            }
            _ => {}
        }
    }
    s
}

pub(super) fn ia5(s: &str, field: &str) -> Result<rcgen::Ia5String, BackendError> {
    rcgen::Ia5String::try_from(s.to_string())
        .map_err(|_| BackendError::bad_request(format!("{field}: {s:?} is not ASCII")))
}

impl Sans {
    pub(super) fn to_rcgen(&self) -> Result<Vec<SanType>, BackendError> {
        let mut out = Vec::new();
        for d in &self.dns {
            out.push(SanType::DnsName(ia5(d, "alt_names")?));
        }
        for e in &self.emails {
            out.push(SanType::Rfc822Name(ia5(e, "alt_names")?));
        }
        for ip in &self.ips {
            out.push(SanType::IpAddress(*ip));
        }
        for u in &self.uris {
            out.push(SanType::URI(ia5(u, "uri_sans")?));
        }
        Ok(out)
    }

    pub(super) fn push_unique_dns(&mut self, name: &str) {
        if name.contains('@') {
            if !self.emails.iter().any(|e| e == name) {
                self.emails.push(name.to_string());
            }
        } else if !self.dns.iter().any(|d| d == name) {
            self.dns.push(name.to_string());
        }
    }
}

pub(super) fn serial_number(bytes: &[u8]) -> SerialNumber {
    SerialNumber::from_slice(bytes)
}

pub(super) fn offset_time(unix: i64) -> Result<::time::OffsetDateTime, BackendError> {
    ::time::OffsetDateTime::from_unix_timestamp(unix)
        .map_err(|_| BackendError::bad_request("time out of range"))
}

/// RFC 3339 of unix seconds, as Vault prints revocation times.
pub(super) fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Signs `msg` with a stored CA key through aws-lc-rs: rcgen 0.13 signs
/// only its own structures, and OCSP responses are not one of them.
pub(super) fn sign_raw(
    key_pem: &SecretPem,
    msg: &[u8],
) -> Result<(Vec<u8>, x509_cert::spki::AlgorithmIdentifierOwned), BackendError> {
    use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
    use x509_cert::der::asn1::{AnyRef, ObjectIdentifier};
    use x509_cert::spki::AlgorithmIdentifierOwned;
    let kp = key_pem.key_pair()?;
    let der = kp.serialized_der();
    let alg = kp.algorithm();
    let internal = |e: &dyn std::fmt::Display| BackendError::Internal(format!("signing: {e}"));
    let oid = |s: &str| {
        ObjectIdentifier::new(s).map_err(|e| BackendError::Internal(format!("oid {s}: {e}")))
    };
    let rng = aws_lc_rs::rand::SystemRandom::new();
    if alg == &rcgen::PKCS_ED25519 {
        let k = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| internal(&e))?;
        let sig = k.sign(msg).as_ref().to_vec();
        return Ok((
            sig,
            AlgorithmIdentifierOwned {
                oid: oid(OID_ED25519)?,
                parameters: None,
            },
        ));
    }
    let ec = if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        Some((
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            "1.2.840.10045.4.3.2",
        ))
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        Some((
            &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            "1.2.840.10045.4.3.3",
        ))
    } else if alg == &rcgen::PKCS_ECDSA_P521_SHA512 {
        Some((
            &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
            "1.2.840.10045.4.3.4",
        ))
    } else {
        None
    };
    if let Some((sa, sig_oid)) = ec {
        let k = EcdsaKeyPair::from_pkcs8(sa, der).map_err(|e| internal(&e))?;
        let sig = k.sign(&rng, msg).map_err(|e| internal(&e))?;
        return Ok((
            sig.as_ref().to_vec(),
            AlgorithmIdentifierOwned {
                oid: oid(sig_oid)?,
                parameters: None,
            },
        ));
    }
    let k = RsaKeyPair::from_pkcs8(der).map_err(|e| internal(&e))?;
    let mut sig = vec![0u8; k.public_modulus_len()];
    k.sign(&signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig)
        .map_err(|e| internal(&e))?;
    Ok((
        sig,
        AlgorithmIdentifierOwned {
            oid: oid("1.2.840.113549.1.1.11")?,
            parameters: Some(AnyRef::NULL.into()),
        },
    ))
}
