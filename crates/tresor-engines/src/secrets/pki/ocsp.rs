//! The OCSP responder (RFC 6960), signed by the issuer itself.
//!
//! The wire types come from RustCrypto's `x509-ocsp`; its `builder` feature
//! is not used because it signs through the `signature` crate's traits,
//! which our aws-lc-rs keys do not implement. So the ResponseData is
//! encoded by `x509-ocsp`/`der` and signed by aws-lc-rs ([`x509::sign_raw`]);
//! no ASN.1 is written by hand.
//!
//! The HTTP layer hands backends JSON only, so a DER request arrives either
//! in the path (`GET ocsp/<base64>`, RFC 6960 appendix A.1) or, for POST, as
//! base64 in the JSON field `request`.

use aws_lc_rs::digest;
use serde::Deserialize;
use tresor_sdk::{BackendError, Request, Storage};
use x509_cert::der::asn1::{BitString, GeneralizedTime, ObjectIdentifier, OctetString};
use x509_cert::der::{Decode, Encode};
use x509_ocsp::{
    BasicOcspResponse, CertStatus, OcspGeneralizedTime, OcspRequest, OcspResponse, ResponderId,
    ResponseData, RevokedInfo, SingleResponse, Version,
};

use super::store::{self, CertEntry, IssuerEntry, RevokedEntry};
use super::x509;

const OID_SHA1: &str = "1.3.14.3.2.26";
const OID_SHA256: &str = "2.16.840.1.101.3.4.2.1";
const OID_NONCE: &str = "1.3.6.1.5.5.7.48.1.2";

#[derive(Debug, Deserialize)]
struct OcspPost {
    #[serde(default)]
    request: String,
}

/// The base64 DER of a POST body's `request` field.
pub(super) fn post_body(req: &Request) -> Result<Vec<u8>, BackendError> {
    let r: OcspPost = req.parse()?;
    if r.request.is_empty() {
        return Err(BackendError::bad_request(
            "request: base64 of the DER OCSP request is required (the API takes JSON bodies only)",
        ));
    }
    decode_b64(&r.request)
}

/// Standard or URL-safe base64, padded or not.
pub(super) fn decode_b64(s: &str) -> Result<Vec<u8>, BackendError> {
    use base64::Engine;
    let t: String = s
        .trim()
        .trim_end_matches('=')
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let engine = if t.contains('-') || t.contains('_') {
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
    } else {
        &base64::engine::general_purpose::STANDARD_NO_PAD
    };
    engine
        .decode(t.as_bytes())
        .map_err(|_| BackendError::bad_request("request: not base64"))
}

fn oid(s: &str) -> Result<ObjectIdentifier, BackendError> {
    ObjectIdentifier::new(s).map_err(|e| BackendError::Internal(format!("oid {s}: {e}")))
}

fn encode(resp: OcspResponse) -> Result<Vec<u8>, BackendError> {
    resp.to_der()
        .map_err(|e| BackendError::Internal(format!("encoding OCSP response: {e}")))
}

fn gtime(unix: i64) -> Result<OcspGeneralizedTime, BackendError> {
    let secs =
        u64::try_from(unix).map_err(|_| BackendError::Internal("time before 1970".into()))?;
    GeneralizedTime::from_unix_duration(std::time::Duration::from_secs(secs))
        .map(OcspGeneralizedTime)
        .map_err(|e| BackendError::Internal(format!("time: {e}")))
}

struct Candidate {
    entry: IssuerEntry,
    name_der: Vec<u8>,
    key_bits: Vec<u8>,
}

/// Answers one DER request with a DER response. Protocol-level problems
/// become OCSP error statuses (the client speaks OCSP, not Vault JSON).
pub(super) async fn respond(s: &dyn Storage, der: &[u8]) -> Result<Vec<u8>, BackendError> {
    let Ok(request) = OcspRequest::from_der(der) else {
        return encode(OcspResponse::malformed_request());
    };
    let list = &request.tbs_request.request_list;
    if list.is_empty() {
        return encode(OcspResponse::malformed_request());
    }
    if store::crl_config(s).await?.ocsp_disable {
        return encode(OcspResponse::unauthorized());
    }
    let mut candidates = Vec::new();
    for e in store::issuers(s).await? {
        if e.key_id.is_empty() {
            continue;
        }
        let cder = x509::pem_certs(&e.certificate)?
            .into_iter()
            .next()
            .unwrap_or_default();
        let Ok(c) = x509::parse_cert(&cder) else {
            continue;
        };
        candidates.push(Candidate {
            name_der: c.subject().as_raw().to_vec(),
            key_bits: c.public_key().subject_public_key.data.to_vec(),
            entry: e,
        });
    }

    // Every CertID must name the same issuer of ours: one response, one signer.
    let mut signer: Option<&Candidate> = None;
    let sha1 = oid(OID_SHA1)?;
    let sha256 = oid(OID_SHA256)?;
    for r in list {
        let id = &r.req_cert;
        let alg = if id.hash_algorithm.oid == sha1 {
            &digest::SHA1_FOR_LEGACY_USE_ONLY
        } else if id.hash_algorithm.oid == sha256 {
            &digest::SHA256
        } else {
            return encode(OcspResponse::malformed_request());
        };
        let found = candidates.iter().find(|c| {
            digest::digest(alg, &c.name_der).as_ref() == id.issuer_name_hash.as_bytes()
                && digest::digest(alg, &c.key_bits).as_ref() == id.issuer_key_hash.as_bytes()
        });
        match (found, signer) {
            (None, _) => return encode(OcspResponse::unauthorized()),
            (Some(f), Some(prev)) if prev.entry.id != f.entry.id => {
                return encode(OcspResponse::unauthorized())
            }
            (Some(f), _) => signer = Some(f),
        }
    }
    let Some(signer) = signer else {
        return encode(OcspResponse::malformed_request());
    };

    let now = chrono::Utc::now().timestamp();
    let validity = i64::try_from(store::crl_config(s).await?.ocsp_expiry.as_secs()).unwrap_or(0);
    let mut responses = Vec::with_capacity(list.len());
    for r in list {
        let serial = x509::format_serial(r.req_cert.serial_number.as_bytes());
        let key = x509::serial_key(&serial);
        let revoked: Option<RevokedEntry> =
            store::get(s, &format!("{}{key}", store::REVOKED)).await?;
        let status = match revoked {
            Some(rv) if rv.issuer_id == signer.entry.id => CertStatus::Revoked(RevokedInfo {
                revocation_time: gtime(rv.revocation_time)?,
                revocation_reason: None,
            }),
            _ => {
                let known: Option<CertEntry> =
                    store::get(s, &format!("{}{key}", store::CERTS)).await?;
                match known {
                    Some(c) if c.issuer_id == signer.entry.id => CertStatus::good(),
                    _ => CertStatus::unknown(),
                }
            }
        };
        responses.push(SingleResponse {
            cert_id: r.req_cert.clone(),
            cert_status: status,
            this_update: gtime(now)?,
            next_update: if validity > 0 {
                Some(gtime(now + validity)?)
            } else {
                None
            },
            single_extensions: None,
        });
    }
    // RFC 8954: echo the client's nonce so it can match the answer.
    let nonce_oid = oid(OID_NONCE)?;
    let nonce = request
        .tbs_request
        .request_extensions
        .as_ref()
        .and_then(|exts| exts.iter().find(|e| e.extn_id == nonce_oid).cloned());
    let key_hash = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &signer.key_bits);
    let tbs = ResponseData {
        version: Version::V1,
        responder_id: ResponderId::ByKey(
            OctetString::new(key_hash.as_ref())
                .map_err(|e| BackendError::Internal(format!("key hash: {e}")))?,
        ),
        produced_at: gtime(now)?,
        responses,
        response_extensions: nonce.map(|n| vec![n]),
    };
    let tbs_der = tbs
        .to_der()
        .map_err(|e| BackendError::Internal(format!("encoding ResponseData: {e}")))?;
    let key = store::key(s, &signer.entry.key_id)
        .await?
        .ok_or_else(|| BackendError::Internal("issuer key vanished".into()))?;
    let (sig, sig_alg) = x509::sign_raw(&key.private_key, &tbs_der)?;
    let basic = BasicOcspResponse {
        tbs_response_data: tbs,
        signature_algorithm: sig_alg,
        signature: BitString::from_bytes(&sig)
            .map_err(|e| BackendError::Internal(format!("signature: {e}")))?,
        certs: None,
    };
    let resp = OcspResponse::successful(basic)
        .map_err(|e| BackendError::Internal(format!("encoding OCSP response: {e}")))?;
    encode(resp)
}
