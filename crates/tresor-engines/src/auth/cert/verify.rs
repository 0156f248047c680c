//! Certificate checks for TLS certificate auth: chain verification up to a
//! trusted CA, exact-match for a trusted non-CA certificate, constraints on
//! the leaf, and CRL lookups.
//!
//! Written on top of `x509-parser` (signatures, parsing) because the TLS
//! stack's verifier answers only "is this chain good for the listener's
//! CA", not "which of these per-role trust anchors does it chain to", and
//! rustls' webpki does not expose per-anchor verification with constraints.

use std::collections::BTreeSet;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

/// Longest chain we follow (leaf, intermediates, anchor).
const MAX_DEPTH: usize = 8;

/// DER certificates out of a PEM bundle; errors name the field.
pub(crate) fn pem_certs(field: &str, pem: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for p in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let p = p.map_err(|e| format!("{field}: invalid PEM: {e}"))?;
        if p.label != "CERTIFICATE" {
            continue;
        }
        X509Certificate::from_der(&p.contents)
            .map_err(|e| format!("{field}: invalid certificate: {e}"))?;
        out.push(p.contents);
    }
    if out.is_empty() {
        return Err(format!("{field}: no PEM CERTIFICATE block found"));
    }
    Ok(out)
}

/// Serial numbers (decimal, as Vault shows them) revoked by a PEM CRL.
pub(crate) fn crl_serials(pem: &str) -> Result<BTreeSet<String>, String> {
    let mut serials = BTreeSet::new();
    let mut found = false;
    for p in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let p = p.map_err(|e| format!("crl: invalid PEM: {e}"))?;
        if p.label != "X509 CRL" {
            continue;
        }
        let (_, crl) = CertificateRevocationList::from_der(&p.contents)
            .map_err(|e| format!("crl: invalid CRL: {e}"))?;
        for r in crl.iter_revoked_certificates() {
            serials.insert(r.user_certificate.to_string());
        }
        found = true;
    }
    if !found {
        return Err("crl: no PEM X509 CRL block found".into());
    }
    Ok(serials)
}

pub(crate) fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
    X509Certificate::from_der(der).ok().map(|(_, c)| c)
}

fn valid_now(c: &X509Certificate<'_>) -> bool {
    c.validity().is_valid()
}

fn is_ca(c: &X509Certificate<'_>) -> bool {
    matches!(c.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

/// `issuer` signed `child` (names chain and the signature verifies).
fn signed_by(child: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    child.issuer().as_raw() == issuer.subject().as_raw()
        && child.verify_signature(Some(issuer.public_key())).is_ok()
}

/// A leaf is fit for client auth unless its EKU says otherwise.
fn client_auth_usage(c: &X509Certificate<'_>) -> bool {
    match c.extended_key_usage() {
        Ok(Some(eku)) => eku.value.any || eku.value.client_auth,
        Ok(None) => true,
        Err(_) => false,
    }
}

/// The chain (DER, leaf first, anchor last) by which `peer` is trusted
/// under `trusted` (one role's certificates), or None.
///
/// A trusted certificate that is not a CA vouches only for itself: the
/// leaf must be byte-for-byte that certificate, so another certificate with
/// the same subject (and even the same key) does not pass.
pub(crate) fn verify_chain(peer: &[Vec<u8>], trusted: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
    let leaf_der = peer.first()?;
    let leaf = parse(leaf_der)?;
    if !valid_now(&leaf) || !client_auth_usage(&leaf) {
        return None;
    }
    let anchors: Vec<(&Vec<u8>, X509Certificate<'_>)> = trusted
        .iter()
        .filter_map(|d| parse(d).map(|c| (d, c)))
        .collect();
    for (der, c) in &anchors {
        if !is_ca(c) && *der == leaf_der {
            return Some(vec![leaf_der.clone()]);
        }
    }
    let cas: Vec<&(&Vec<u8>, X509Certificate<'_>)> = anchors
        .iter()
        .filter(|(_, c)| is_ca(c) && valid_now(c))
        .collect();
    if cas.is_empty() {
        return None;
    }
    let intermediates: Vec<(&Vec<u8>, X509Certificate<'_>)> = peer[1..]
        .iter()
        .filter_map(|d| parse(d).map(|c| (d, c)))
        .collect();
    let mut chain = vec![leaf_der.clone()];
    let mut current = leaf;
    for _ in 0..MAX_DEPTH {
        if let Some((der, _)) = cas.iter().find(|(_, ca)| signed_by(&current, ca)) {
            chain.push((*der).clone());
            return Some(chain);
        }
        let (der, next) = intermediates.iter().find(|(d, c)| {
            is_ca(c) && valid_now(c) && !chain.contains(d) && signed_by(&current, c)
        })?;
        chain.push((*der).clone());
        current = next.clone();
    }
    None
}

/// `*` glob, as Vault's constraint lists allow.
pub(crate) fn glob_match(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// What the constraints look at in a leaf.
#[derive(Debug, Default)]
pub(crate) struct LeafInfo {
    pub(crate) common_name: String,
    pub(crate) dns: Vec<String>,
    pub(crate) email: Vec<String>,
    pub(crate) uri: Vec<String>,
    pub(crate) ous: Vec<String>,
    /// (dotted OID, string value when the extension holds an ASN.1 string)
    pub(crate) extensions: Vec<(String, Option<String>)>,
    pub(crate) serial: String,
    pub(crate) subject_key_id: String,
    pub(crate) authority_key_id: String,
}

fn colon_hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn asn1_string(raw: &[u8]) -> Option<String> {
    use x509_parser::der_parser::asn1_rs::{Any, FromDer as _, Tag};
    let (_, any) = Any::from_der(raw).ok()?;
    match any.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::VisibleString
        | Tag::T61String => std::str::from_utf8(any.data).ok().map(str::to_string),
        _ => None,
    }
}

pub(crate) fn leaf_info(c: &X509Certificate<'_>) -> LeafInfo {
    let mut i = LeafInfo {
        common_name: c
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_string(),
        ous: c
            .subject()
            .iter_organizational_unit()
            .filter_map(|a| a.as_str().ok().map(str::to_string))
            .collect(),
        serial: c.serial.to_string(),
        ..Default::default()
    };
    for ext in c.extensions() {
        i.extensions
            .push((ext.oid.to_id_string(), asn1_string(ext.value)));
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    match n {
                        GeneralName::DNSName(s) => i.dns.push(s.to_string()),
                        GeneralName::RFC822Name(s) => i.email.push(s.to_string()),
                        GeneralName::URI(s) => i.uri.push(s.to_string()),
                        _ => {}
                    }
                }
            }
            ParsedExtension::SubjectKeyIdentifier(k) => i.subject_key_id = colon_hex(k.0),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                if let Some(k) = &a.key_identifier {
                    i.authority_key_id = colon_hex(k.0);
                }
            }
            _ => {}
        }
    }
    i
}
