//! The PKI engine on in-memory storage: CAs, roles, issuance, revocation,
//! CRL, OCSP and tidy, checked with x509-parser.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tresor_engines::secrets::pki::Pki;
use tresor_sdk::backend::StaticSystemView;
use tresor_sdk::testing::{req, MemoryStorage};
use tresor_sdk::{Backend, BackendError, Operation, Response};
use x509_parser::prelude::*;

fn engine() -> Pki {
    Pki::new(Arc::new(StaticSystemView {
        default_lease_ttl: Duration::from_secs(24 * 3600),
        max_lease_ttl: Duration::from_secs(10 * 365 * 24 * 3600),
    }))
}

async fn call(
    b: &Pki,
    s: &MemoryStorage,
    op: Operation,
    path: &str,
    body: Value,
) -> Result<Option<Response>, BackendError> {
    b.handle(&req(op, path).body(body), s).await
}

async fn write(
    b: &Pki,
    s: &MemoryStorage,
    path: &str,
    body: Value,
) -> serde_json::Map<String, Value> {
    call(b, s, Operation::Update, path, body)
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .and_then(|r| r.data)
        .unwrap_or_default()
}

async fn refused(b: &Pki, s: &MemoryStorage, path: &str, body: Value) -> String {
    match call(b, s, Operation::Update, path, body).await {
        Err(BackendError::BadRequest(m)) => m,
        other => panic!("{path}: expected 400, got {other:?}"),
    }
}

async fn read_raw(b: &Pki, s: &MemoryStorage, path: &str) -> Vec<u8> {
    call(b, s, Operation::Read, path, json!({}))
        .await
        .unwrap()
        .and_then(|r| r.raw)
        .expect("raw body")
        .body
}

pub(crate) fn der_of(pem_text: &str) -> Vec<u8> {
    ::pem::parse(pem_text).unwrap().into_contents()
}

fn s(v: &serde_json::Map<String, Value>, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

async fn root(b: &Pki, st: &MemoryStorage) -> serde_json::Map<String, Value> {
    write(
        b,
        st,
        "root/generate/internal",
        json!({"common_name": "Example Root", "ttl": "87600h", "issuer_name": "root-a", "key_type": "ec"}),
    )
    .await
}

async fn role(b: &Pki, st: &MemoryStorage, extra: Value) {
    let mut body = json!({
        "allowed_domains": "example.com",
        "allow_subdomains": true,
        "max_ttl": "72h",
        "ttl": "1h",
    });
    if let (Value::Object(m), Value::Object(e)) = (&mut body, extra) {
        m.extend(e);
    }
    write(b, st, "roles/web", body).await;
}

#[tokio::test]
async fn root_generate_internal_keeps_its_key_exported_returns_it() {
    let b = engine();
    let st = MemoryStorage::new();
    let r = root(&b, &st).await;
    assert!(
        r.get("private_key").is_none(),
        "internal root leaked its key"
    );
    let der = der_of(&s(&r, "certificate"));
    let (_, c) = X509Certificate::from_der(&der).unwrap();
    assert!(c.is_ca());
    assert_eq!(c.subject().to_string(), "CN=Example Root");
    c.verify_signature(None).expect("self-signed");
    assert_eq!(s(&r, "issuer_name"), "root-a");
    assert!(s(&r, "serial_number").contains(':'));

    let st2 = MemoryStorage::new();
    let e = write(
        &b,
        &st2,
        "root/generate/exported",
        json!({"common_name": "RSA Root", "key_type": "rsa", "key_bits": 2048,
               "max_path_length": 1, "permitted_dns_domains": "example.com",
               "alt_names": "ca.example.com", "ip_sans": "10.0.0.1"}),
    )
    .await;
    assert!(s(&e, "private_key").contains("PRIVATE KEY"));
    assert_eq!(s(&e, "private_key_type"), "rsa");
    let der = der_of(&s(&e, "certificate"));
    let (_, c) = X509Certificate::from_der(&der).unwrap();
    let bc = c.basic_constraints().unwrap().unwrap().value;
    assert_eq!(bc.path_len_constraint, Some(1));
    assert!(c.name_constraints().unwrap().is_some());

    // ca/pem and ca serve the default issuer.
    let pem_body = String::from_utf8(read_raw(&b, &st, "ca/pem").await).unwrap();
    assert!(pem_body.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        read_raw(&b, &st, "ca").await,
        der_of(&s(&root_cert(&b, &st).await, "certificate"))
    );

    // Bad key parameters name the field.
    let m = refused(
        &b,
        &st,
        "root/generate/internal",
        json!({"common_name": "x", "key_type": "ec", "key_bits": 2048}),
    )
    .await;
    assert!(m.contains("key_bits"), "{m}");
}

async fn root_cert(b: &Pki, st: &MemoryStorage) -> serde_json::Map<String, Value> {
    call(b, st, Operation::Read, "cert/ca", json!({}))
        .await
        .unwrap()
        .unwrap()
        .data
        .unwrap()
}

#[tokio::test]
async fn issue_verifies_against_the_root_and_follows_the_role() {
    let b = engine();
    let st = MemoryStorage::new();
    let r = root(&b, &st).await;
    role(
        &b,
        &st,
        json!({"organization": "Example Inc", "key_type": "ec"}),
    )
    .await;
    let out = write(
        &b,
        &st,
        "issue/web",
        json!({"common_name": "www.example.com", "alt_names": "api.example.com", "ip_sans": "127.0.0.1", "ttl": "2h"}),
    )
    .await;
    for k in [
        "certificate",
        "private_key",
        "private_key_type",
        "issuing_ca",
        "ca_chain",
        "serial_number",
        "expiration",
    ] {
        assert!(out.contains_key(k), "missing {k}");
    }
    assert_eq!(s(&out, "private_key_type"), "ec");
    assert_eq!(s(&out, "issuing_ca"), s(&r, "certificate"));
    let leaf_der = der_of(&s(&out, "certificate"));
    let root_der = der_of(&s(&r, "certificate"));
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let (_, ca) = X509Certificate::from_der(&root_der).unwrap();
    leaf.verify_signature(Some(ca.public_key()))
        .expect("leaf signed by root");
    assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
    assert!(!leaf.is_ca());
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|g| g.to_string())
        .collect();
    assert!(
        sans.iter().any(|n| n.contains("www.example.com")),
        "{sans:?}"
    );
    assert!(
        sans.iter().any(|n| n.contains("api.example.com")),
        "{sans:?}"
    );
    assert!(leaf.subject().to_string().contains("O=Example Inc"));
    let life = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!((7200..=7200 + 60).contains(&life), "{life}");
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);

    // Stored and readable by serial, listed.
    let serial = s(&out, "serial_number");
    let got = call(
        &b,
        &st,
        Operation::Read,
        &format!("cert/{serial}"),
        json!({}),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        got.data.unwrap()["certificate"],
        json!(s(&out, "certificate"))
    );
    let list = call(&b, &st, Operation::List, "certs/", json!({}))
        .await
        .unwrap()
        .unwrap();
    assert!(list.data.unwrap()["keys"]
        .as_array()
        .unwrap()
        .contains(&json!(serial)));
}

#[tokio::test]
async fn role_refusals_name_the_rule() {
    let b = engine();
    let st = MemoryStorage::new();
    root(&b, &st).await;
    role(&b, &st, json!({"allow_ip_sans": false})).await;
    let m = refused(&b, &st, "issue/web", json!({"common_name": "www.evil.com"})).await;
    assert!(
        m.contains("not allowed by this role") && m.contains("allowed_domains"),
        "{m}"
    );
    let m = refused(&b, &st, "issue/web", json!({"common_name": "example.com"})).await;
    assert!(m.contains("allow_bare_domains=false"), "{m}");
    let m = refused(
        &b,
        &st,
        "issue/web",
        json!({"common_name": "a.example.com", "alt_names": "b.evil.com"}),
    )
    .await;
    assert!(m.contains("b.evil.com"), "{m}");
    let m = refused(
        &b,
        &st,
        "issue/web",
        json!({"common_name": "a.example.com", "ttl": "100h"}),
    )
    .await;
    assert!(m.contains("max_ttl"), "{m}");
    let m = refused(
        &b,
        &st,
        "issue/web",
        json!({"common_name": "a.example.com", "ip_sans": "10.1.1.1"}),
    )
    .await;
    assert!(m.contains("allow_ip_sans"), "{m}");
    let m = refused(
        &b,
        &st,
        "issue/web",
        json!({"common_name": "a.example.com", "uri_sans": "spiffe://x/y"}),
    )
    .await;
    assert!(m.contains("allowed_uri_sans"), "{m}");
    let m = refused(&b, &st, "issue/web", json!({})).await;
    assert!(m.contains("common_name"), "{m}");
    let m = refused(
        &b,
        &st,
        "issue/nope",
        json!({"common_name": "a.example.com"}),
    )
    .await;
    assert!(m.contains("unknown role"), "{m}");

    // Globs, bare domains, wildcards.
    write(&b, &st, "roles/glob", json!({"allowed_domains": "*.svc.local,example.org", "allow_glob_domains": true, "allow_bare_domains": true})).await;
    write(
        &b,
        &st,
        "issue/glob",
        json!({"common_name": "db.ns.svc.local"}),
    )
    .await;
    write(&b, &st, "issue/glob", json!({"common_name": "example.org"})).await;
    refused(
        &b,
        &st,
        "issue/glob",
        json!({"common_name": "x.example.org"}),
    )
    .await;
    write(
        &b,
        &st,
        "issue/web",
        json!({"common_name": "*.example.com"}),
    )
    .await;

    // Never past the issuer's notAfter.
    let st2 = MemoryStorage::new();
    write(
        &b,
        &st2,
        "root/generate/internal",
        json!({"common_name": "Short Root", "ttl": "2h"}),
    )
    .await;
    write(
        &b,
        &st2,
        "roles/web",
        json!({"allowed_domains": "example.com", "allow_subdomains": true, "max_ttl": "100h"}),
    )
    .await;
    let m = refused(
        &b,
        &st2,
        "issue/web",
        json!({"common_name": "a.example.com", "ttl": "10h"}),
    )
    .await;
    assert!(m.contains("beyond the expiration of the CA"), "{m}");
    // A role ttl over its max_ttl is refused at write time.
    let m = refused(
        &b,
        &st2,
        "roles/bad",
        json!({"ttl": "10h", "max_ttl": "1h"}),
    )
    .await;
    assert!(m.contains("max_ttl"), "{m}");
}

fn csr(names: Vec<String>, cn: &str) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(names).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test]
async fn sign_csr_keeps_the_key_private_and_checks_sans() {
    let b = engine();
    let st = MemoryStorage::new();
    let r = root(&b, &st).await;
    role(&b, &st, json!({"key_type": "any"})).await;
    let out = write(
        &b,
        &st,
        "sign/web",
        json!({"csr": csr(vec!["svc.example.com".into()], "svc.example.com")}),
    )
    .await;
    assert!(out.get("private_key").is_none());
    let leaf_der = der_of(&s(&out, "certificate"));
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let ca_der = der_of(&s(&r, "certificate"));
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    leaf.verify_signature(Some(ca.public_key())).unwrap();
    assert_eq!(leaf.subject().to_string(), "CN=svc.example.com");

    let m = refused(
        &b,
        &st,
        "sign/web",
        json!({"csr": csr(vec!["evil.com".into()], "svc.example.com")}),
    )
    .await;
    assert!(m.contains("evil.com") && m.contains("not allowed"), "{m}");
    let m = refused(&b, &st, "sign/web", json!({"csr": "not a csr"})).await;
    assert!(m.contains("csr"), "{m}");

    // Key type rules apply to CSRs.
    write(
        &b,
        &st,
        "roles/rsa-only",
        json!({"allowed_domains": "example.com", "allow_subdomains": true, "key_type": "rsa"}),
    )
    .await;
    let m = refused(
        &b,
        &st,
        "sign/rsa-only",
        json!({"csr": csr(vec![], "a.example.com")}),
    )
    .await;
    assert!(m.contains("key_type"), "{m}");

    // sign-verbatim takes the CSR as is.
    let v = write(
        &b,
        &st,
        "sign-verbatim",
        json!({"csr": csr(vec!["anything.test".into()], "anything.test"), "ttl": "1h"}),
    )
    .await;
    assert!(s(&v, "certificate").contains("BEGIN CERTIFICATE"));
}

#[tokio::test]
async fn intermediate_flow_builds_a_chain() {
    let b_root = engine();
    let root_st = MemoryStorage::new();
    let r = root(&b_root, &root_st).await;

    let b_int = engine();
    let int_st = MemoryStorage::new();
    let gen = write(
        &b_int,
        &int_st,
        "intermediate/generate/internal",
        json!({"common_name": "Example Intermediate", "key_type": "rsa"}),
    )
    .await;
    assert!(gen.get("private_key").is_none());
    let csr_pem = s(&gen, "csr");
    assert!(csr_pem.contains("CERTIFICATE REQUEST"));

    let signed = write(
        &b_root,
        &root_st,
        "root/sign-intermediate",
        json!({"csr": csr_pem, "common_name": "Example Intermediate", "ttl": "43800h"}),
    )
    .await;
    assert_eq!(signed["ca_chain"].as_array().unwrap().len(), 2);
    let bundle = format!("{}\n{}", s(&signed, "certificate"), s(&r, "certificate"));
    let set = write(
        &b_int,
        &int_st,
        "intermediate/set-signed",
        json!({"certificate": bundle}),
    )
    .await;
    assert!(
        set["imported_issuers"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "{set:?}"
    );

    write(
        &b_int,
        &int_st,
        "roles/web",
        json!({"allowed_domains": "example.com", "allow_subdomains": true}),
    )
    .await;
    let out = write(
        &b_int,
        &int_st,
        "issue/web",
        json!({"common_name": "leaf.example.com", "ttl": "1h"}),
    )
    .await;
    let chain: Vec<String> = out["ca_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(chain.len(), 2, "intermediate + root");
    let ders: Vec<Vec<u8>> = std::iter::once(s(&out, "certificate"))
        .chain(chain)
        .map(|p| der_of(&p))
        .collect();
    let certs: Vec<X509Certificate<'_>> = ders
        .iter()
        .map(|d| X509Certificate::from_der(d).unwrap().1)
        .collect();
    certs[0]
        .verify_signature(Some(certs[1].public_key()))
        .expect("leaf <- intermediate");
    certs[1]
        .verify_signature(Some(certs[2].public_key()))
        .expect("intermediate <- root");
    certs[2].verify_signature(None).expect("root self-signed");

    // Issuers list and read.
    let l = call(&b_int, &int_st, Operation::List, "issuers/", json!({}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(l.data.unwrap()["keys"].as_array().unwrap().len(), 2);
    let d = call(
        &b_int,
        &int_st,
        Operation::Read,
        "issuer/default",
        json!({}),
    )
    .await
    .unwrap()
    .unwrap()
    .data
    .unwrap();
    assert!(!s(&d, "key_id").is_empty());
    write(
        &b_int,
        &int_st,
        "issuer/default",
        json!({"issuer_name": "int-1"}),
    )
    .await;
    let d = call(&b_int, &int_st, Operation::Read, "issuer/int-1", json!({}))
        .await
        .unwrap()
        .unwrap()
        .data
        .unwrap();
    assert_eq!(s(&d, "issuer_name"), "int-1");

    // config/ca imports a bundle with its key (an exported root).
    let st3 = MemoryStorage::new();
    let e = write(
        &b_root,
        &MemoryStorage::new(),
        "root/generate/exported",
        json!({"common_name": "Imported"}),
    )
    .await;
    let imp = write(
        &b_root,
        &st3,
        "config/ca",
        json!({"pem_bundle": format!("{}\n{}", s(&e, "certificate"), s(&e, "private_key"))}),
    )
    .await;
    assert_eq!(imp["mapping"].as_object().unwrap().len(), 1, "{imp:?}");
    write(&b_root, &st3, "roles/any", json!({"allow_any_name": true})).await;
    write(&b_root, &st3, "issue/any", json!({"common_name": "x.test"})).await;
}

#[tokio::test]
async fn revoke_puts_the_serial_on_a_crl_signed_by_the_issuer() {
    let b = engine();
    let st = MemoryStorage::new();
    let r = root(&b, &st).await;
    role(&b, &st, json!({})).await;
    let a = write(
        &b,
        &st,
        "issue/web",
        json!({"common_name": "a.example.com"}),
    )
    .await;
    let keep = write(
        &b,
        &st,
        "issue/web",
        json!({"common_name": "b.example.com"}),
    )
    .await;
    let rv = write(
        &b,
        &st,
        "revoke",
        json!({"serial_number": s(&a, "serial_number")}),
    )
    .await;
    assert_eq!(rv["state"], json!("revoked"));
    assert!(rv["revocation_time"].as_i64().unwrap() > 0);

    let crl_der = read_raw(&b, &st, "crl").await;
    let (_, crl) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&crl_der).unwrap();
    let ca_der = der_of(&s(&r, "certificate"));
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    crl.verify_signature(ca.public_key())
        .expect("CRL signed by issuer");
    let serials: Vec<String> = crl
        .iter_revoked_certificates()
        .map(|c| {
            c.raw_serial()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        })
        .collect();
    assert_eq!(serials, vec![s(&a, "serial_number")]);
    assert!(!serials.contains(&s(&keep, "serial_number")));

    // By certificate too; the listing and cert read agree.
    write(
        &b,
        &st,
        "revoke",
        json!({"certificate": s(&keep, "certificate")}),
    )
    .await;
    let l = call(&b, &st, Operation::List, "certs/revoked/", json!({}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(l.data.unwrap()["keys"].as_array().unwrap().len(), 2);
    let c = call(
        &b,
        &st,
        Operation::Read,
        &format!("cert/{}", s(&keep, "serial_number").replace(':', "-")),
        json!({}),
    )
    .await
    .unwrap()
    .unwrap()
    .data
    .unwrap();
    assert!(c["revocation_time"].as_i64().unwrap() > 0);

    // crl/pem and rotate; numbers move on.
    let pem_crl = String::from_utf8(read_raw(&b, &st, "crl/pem").await).unwrap();
    assert!(pem_crl.contains("BEGIN X509 CRL"));
    let rot = call(&b, &st, Operation::Read, "crl/rotate", json!({}))
        .await
        .unwrap()
        .unwrap()
        .data
        .unwrap();
    assert_eq!(rot["success"], json!(true));
    let crl2 = read_raw(&b, &st, "crl").await;
    let (_, c2) = x509_parser::revocation_list::CertificateRevocationList::from_der(&crl2).unwrap();
    assert_eq!(c2.iter_revoked_certificates().count(), 2);
    assert!(c2.crl_number().unwrap() > crl.crl_number().unwrap());

    // Unknown serial and the issuer itself are refused.
    refused(&b, &st, "revoke", json!({"serial_number": "01:02"})).await;
    let m = refused(
        &b,
        &st,
        "revoke",
        json!({"serial_number": s(&r, "serial_number")}),
    )
    .await;
    assert!(m.contains("issuer"), "{m}");

    // config/crl round trip.
    write(
        &b,
        &st,
        "config/crl",
        json!({"expiry": "48h", "auto_rebuild": false}),
    )
    .await;
    let c = call(&b, &st, Operation::Read, "config/crl", json!({}))
        .await
        .unwrap()
        .unwrap()
        .data
        .unwrap();
    assert_eq!(c["expiry"], json!("48h0m0s"));
}

fn ocsp_request(issuer_der: &[u8], serial_colon: &str) -> Vec<u8> {
    use x509_cert::der::asn1::OctetString;
    use x509_cert::der::Encode;
    use x509_cert::spki::AlgorithmIdentifierOwned;
    let (_, issuer) = X509Certificate::from_der(issuer_der).unwrap();
    let sha1 = &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY;
    let name_hash = aws_lc_rs::digest::digest(sha1, issuer.subject().as_raw());
    let key_hash = aws_lc_rs::digest::digest(sha1, &issuer.public_key().subject_public_key.data);
    let serial = hex::decode(serial_colon.replace(':', "")).unwrap();
    let cert_id = x509_ocsp::CertId {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid: "1.3.14.3.2.26".parse().unwrap(),
            parameters: Some(x509_cert::der::asn1::Null.into()),
        },
        issuer_name_hash: OctetString::new(name_hash.as_ref()).unwrap(),
        issuer_key_hash: OctetString::new(key_hash.as_ref()).unwrap(),
        serial_number: x509_cert::serial_number::SerialNumber::new(&serial).unwrap(),
    };
    x509_ocsp::OcspRequest {
        tbs_request: x509_ocsp::TbsRequest {
            version: x509_ocsp::Version::V1,
            requestor_name: None,
            request_list: vec![x509_ocsp::Request {
                req_cert: cert_id,
                single_request_extensions: None,
            }],
            request_extensions: None,
        },
        optional_signature: None,
    }
    .to_der()
    .unwrap()
}

/// The status of the single answer, after checking the issuer's signature.
fn ocsp_status(resp_der: &[u8], issuer_der: &[u8]) -> &'static str {
    use x509_cert::der::{Decode, Encode};
    let resp = x509_ocsp::OcspResponse::from_der(resp_der).unwrap();
    assert_eq!(
        resp.response_status,
        x509_ocsp::OcspResponseStatus::Successful
    );
    let basic =
        x509_ocsp::BasicOcspResponse::from_der(resp.response_bytes.unwrap().response.as_bytes())
            .unwrap();
    let tbs = basic.tbs_response_data.to_der().unwrap();
    let (_, issuer) = X509Certificate::from_der(issuer_der).unwrap();
    let pk = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
        issuer.public_key().subject_public_key.data.to_vec(),
    );
    pk.verify(&tbs, basic.signature.raw_bytes())
        .expect("OCSP response signed by issuer");
    match basic.tbs_response_data.responses[0].cert_status {
        x509_ocsp::CertStatus::Good(_) => "good",
        x509_ocsp::CertStatus::Revoked(_) => "revoked",
        x509_ocsp::CertStatus::Unknown(_) => "unknown",
    }
}

#[tokio::test]
async fn ocsp_answers_good_revoked_unknown() {
    use base64::Engine;
    let b = engine();
    let st = MemoryStorage::new();
    let r = root(&b, &st).await;
    let ca = der_of(&s(&r, "certificate"));
    role(&b, &st, json!({})).await;
    let good = write(
        &b,
        &st,
        "issue/web",
        json!({"common_name": "g.example.com"}),
    )
    .await;
    let bad = write(
        &b,
        &st,
        "issue/web",
        json!({"common_name": "r.example.com"}),
    )
    .await;
    write(
        &b,
        &st,
        "revoke",
        json!({"serial_number": s(&bad, "serial_number")}),
    )
    .await;

    let ask_get = |serial: String| {
        let q = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ocsp_request(&ca, &serial));
        format!("ocsp/{q}")
    };
    assert_eq!(
        ocsp_status(
            &read_raw(&b, &st, &ask_get(s(&good, "serial_number"))).await,
            &ca
        ),
        "good"
    );
    assert_eq!(
        ocsp_status(
            &read_raw(&b, &st, &ask_get(s(&bad, "serial_number"))).await,
            &ca
        ),
        "revoked"
    );
    assert_eq!(
        ocsp_status(&read_raw(&b, &st, &ask_get("0a:0b:0c".into())).await, &ca),
        "unknown"
    );

    // POST form: JSON field `request`, standard base64.
    let body = base64::engine::general_purpose::STANDARD
        .encode(ocsp_request(&ca, &s(&good, "serial_number")));
    let resp = call(&b, &st, Operation::Update, "ocsp", json!({"request": body}))
        .await
        .unwrap()
        .unwrap();
    let raw = resp.raw.unwrap();
    assert_eq!(raw.content_type, "application/ocsp-response");
    assert_eq!(ocsp_status(&raw.body, &ca), "good");

    // Garbage is an OCSP malformedRequest, not a JSON error.
    let resp = read_raw(&b, &st, "ocsp/AAAA").await;
    use x509_cert::der::Decode;
    let parsed = x509_ocsp::OcspResponse::from_der(&resp).unwrap();
    assert_eq!(
        parsed.response_status,
        x509_ocsp::OcspResponseStatus::MalformedRequest
    );
}

#[tokio::test]
async fn tidy_removes_expired_and_generate_lease_revokes_on_expiry() {
    let b = engine();
    let st = MemoryStorage::new();
    root(&b, &st).await;
    role(&b, &st, json!({"generate_lease": true})).await;
    let short = write(
        &b,
        &st,
        "issue/web",
        json!({"common_name": "s.example.com", "ttl": "1s"}),
    )
    .await;
    write(
        &b,
        &st,
        "revoke",
        json!({"serial_number": s(&short, "serial_number")}),
    )
    .await;
    let long = call(
        &b,
        &st,
        Operation::Update,
        "issue/web",
        json!({"common_name": "l.example.com"}),
    )
    .await
    .unwrap()
    .unwrap();
    let secret = long.secret.clone().expect("generate_lease gives a lease");
    assert!(!secret.lease.renewable);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let t = call(
        &b,
        &st,
        Operation::Update,
        "tidy",
        json!({"tidy_cert_store": true, "tidy_revoked_certs": true, "safety_buffer": "1s"}),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(t.status, Some(202));
    let status = call(&b, &st, Operation::Read, "tidy-status", json!({}))
        .await
        .unwrap()
        .unwrap()
        .data
        .unwrap();
    assert_eq!(status["state"], json!("Finished"));
    assert_eq!(status["revoked_cert_deleted_count"], json!(1));
    let l = call(&b, &st, Operation::List, "certs/", json!({}))
        .await
        .unwrap()
        .unwrap()
        .data
        .unwrap();
    let keys = l["keys"].as_array().unwrap();
    assert!(!keys.contains(&json!(s(&short, "serial_number"))));
    assert!(keys.contains(&long.data.as_ref().unwrap()["serial_number"]));

    // Lease expiry: the core calls Revoke with the secret.
    let mut rq = req(Operation::Revoke, "issue/web");
    rq.secret = Some(secret);
    b.handle(&rq, &st).await.unwrap();
    let serial = long.data.unwrap()["serial_number"]
        .as_str()
        .unwrap()
        .to_string();
    let c = call(
        &b,
        &st,
        Operation::Read,
        &format!("cert/{serial}"),
        json!({}),
    )
    .await
    .unwrap()
    .unwrap()
    .data
    .unwrap();
    assert!(c["revocation_time"].as_i64().unwrap() > 0);
}

/// The cached CRL (`crls/<issuer id>`) was stored as a JSON array of
/// numbers, about 3.5 bytes per byte of CRL; now as base64.
#[tokio::test]
async fn cached_crl_is_stored_as_base64() {
    use base64::Engine as _;
    use tresor_sdk::Storage as _;
    let b = engine();
    let st = MemoryStorage::new();
    root(&b, &st).await;
    role(&b, &st, json!({})).await;
    for cn in ["a.example.com", "b.example.com"] {
        let c = write(&b, &st, "issue/web", json!({ "common_name": cn })).await;
        write(
            &b,
            &st,
            "revoke",
            json!({"serial_number": s(&c, "serial_number")}),
        )
        .await;
    }
    let crl = read_raw(&b, &st, "crl").await;
    let keys: Vec<String> = st
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("crls/"))
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let raw = st.get(&keys[0]).await.unwrap().unwrap();
    let v: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        v["der"],
        json!(base64::engine::general_purpose::STANDARD.encode(&crl))
    );
    assert!(raw.len() < crl.len() * 3 / 2 + 200, "{} bytes", raw.len());
}
