//! The PKI engine through the full server: mount, root, role, issue, and
//! the public CA/CRL paths without a token.

#![allow(clippy::unwrap_used)]

use crate::common;

use crate::common::{client, dev, ROOT};
use serde_json::{json, Value};

async fn post(s: &common::TestServer, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(s.url(&format!("/v1/{path}")))
        .header("X-Vault-Token", ROOT)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn pki_over_http() {
    let s = dev().await;
    let (st, b) = post(&s, "sys/mounts/pki", json!({"type": "pki"})).await;
    assert!(st == 204 || st == 200, "{st} {b}");
    let (st, root) = post(
        &s,
        "pki/root/generate/internal",
        json!({"common_name": "Test Root", "ttl": "8760h"}),
    )
    .await;
    assert_eq!(st, 200, "{root}");
    assert!(root["data"].get("private_key").is_none());
    let (st, b) = post(
        &s,
        "pki/roles/web",
        json!({"allowed_domains": ["example.com"], "allow_subdomains": true, "max_ttl": "72h"}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (st, out) = post(
        &s,
        "pki/issue/web",
        json!({"common_name": "www.example.com", "ttl": "1h"}),
    )
    .await;
    assert_eq!(st, 200, "{out}");
    assert!(out["data"]["certificate"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    assert!(out["data"]["private_key"]
        .as_str()
        .unwrap()
        .contains("PRIVATE KEY"));
    assert_eq!(out["data"]["issuing_ca"], root["data"]["certificate"]);

    let (st, err) = post(&s, "pki/issue/web", json!({"common_name": "www.evil.com"})).await;
    assert_eq!(st, 400, "{err}");
    assert!(err["errors"][0]
        .as_str()
        .unwrap()
        .contains("not allowed by this role"));

    // Public paths need no token.
    let r = client().get(s.url("/v1/pki/ca/pem")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = r.text().await.unwrap();
    assert_eq!(body.trim(), root["data"]["certificate"].as_str().unwrap());
    let r = client().get(s.url("/v1/pki/crl")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/pkix-crl");
    let serial = out["data"]["serial_number"].as_str().unwrap();
    let r = client()
        .get(s.url(&format!("/v1/pki/cert/{serial}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Writes are not public.
    let r = client()
        .post(s.url("/v1/pki/roles/x"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = client()
        .get(s.url("/v1/pki/crl/rotate"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
}

// ----- issuers, CSRs, revocation and tidy, path by path -----------------------

use std::path::Path;
use std::process::Command;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

/// Mounts `pki` engines at each of `paths`.
async fn pki_server(paths: &[&str]) -> common::TestServer {
    let s = dev().await;
    for p in paths {
        let (st, b) = post(&s, &format!("sys/mounts/{p}"), json!({"type": "pki"})).await;
        assert!(st == 204 || st == 200, "{st} {b}");
    }
    s
}

/// Any verb, the status and the JSON body (Null when empty).
async fn req(s: &common::TestServer, verb: &str, path: &str, body: Value) -> (u16, Value) {
    common::call_root(
        s,
        verb,
        path,
        if body.is_null() { None } else { Some(body) },
    )
    .await
}

/// `req` that insists on 200 and returns `data`.
async fn ok(s: &common::TestServer, verb: &str, path: &str, body: Value) -> Value {
    let (st, b) = req(s, verb, path, body).await;
    assert_eq!(st, 200, "{verb} {path}: {b}");
    b["data"].clone()
}

/// GET without a token: status, content type, raw body.
async fn public(s: &common::TestServer, path: &str) -> (u16, String, Vec<u8>) {
    let r = client()
        .get(s.url(&format!("/v1/{path}")))
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (st, ct, r.bytes().await.unwrap().to_vec())
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// The DER inside the first PEM block of `pem`.
fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    STANDARD.decode(body).unwrap()
}

fn have_openssl() -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("NOTICE: no `openssl` command line on PATH; OpenSSL checks skipped");
    }
    found
}

/// `openssl args…` in `dir`, which must succeed; its stdout and stderr.
fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?}: {text}");
    text
}

/// A PEM CSR for `cn` with DNS SANs `sans`, its key made here.
fn csr(cn: &str, sans: &[&str]) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test]
async fn pki_root_exported_vs_internal_and_bundle_import() {
    let srv = pki_server(&["pki", "pki-exp", "pki-imp"]).await;
    // (mount, type, key_type, private key expected)
    for (mount, ty, key_type, exported) in [
        ("pki", "internal", "rsa", false),
        ("pki-exp", "exported", "ec", true),
    ] {
        let (st, b) = req(
            &srv,
            "POST",
            &format!("{mount}/root/generate/{ty}"),
            json!({"common_name": format!("{mount} root"), "key_type": key_type, "ttl": "8760h"}),
        )
        .await;
        assert_eq!(st, 200, "{b}");
        let d = &b["data"];
        assert!(
            s(&d["certificate"]).starts_with("-----BEGIN CERTIFICATE-----"),
            "{d}"
        );
        assert_eq!(
            d["issuing_ca"], d["certificate"],
            "a root is its own issuer"
        );
        assert!(s(&d["serial_number"]).contains(':'), "{d}");
        assert!(d["expiration"].as_i64().unwrap() > 0, "{d}");
        assert!(
            !s(&d["issuer_id"]).is_empty() && !s(&d["key_id"]).is_empty(),
            "{d}"
        );
        assert_eq!(d.get("private_key").is_some(), exported, "{ty}: {d}");
        if exported {
            assert!(s(&d["private_key"]).contains("PRIVATE KEY-----"), "{d}");
            assert_eq!(d["private_key_type"], key_type, "{d}");
        } else {
            assert!(
                !b.to_string().contains("PRIVATE KEY"),
                "internal key leaked: {b}"
            );
        }
    }

    // config/ca imports the exported root as one PEM bundle (key + cert).
    let root = ok(&srv, "GET", "pki-exp/cert/ca", Value::Null).await;
    let (_, exp) = req(&srv, "GET", "pki-exp/issuer/default", Value::Null).await;
    assert_eq!(exp["data"]["certificate"], root["certificate"]);
    // format=pem_bundle answers the key and the certificate in one PEM
    // bundle, which config/ca takes back as it is.
    let generated = ok(
        &srv,
        "POST",
        "pki-exp/root/generate/exported",
        json!({"common_name": "second", "key_type": "ec", "issuer_name": "second", "format": "pem_bundle"}),
    )
    .await;
    let bundle = s(&generated["certificate"]).to_string();
    let cert = s(&generated["issuing_ca"]).to_string();
    assert!(bundle.starts_with(s(&generated["private_key"])), "{bundle}");
    assert!(bundle.trim_end().ends_with(cert.trim_end()), "{bundle}");
    let d = ok(
        &srv,
        "POST",
        "pki-imp/config/ca",
        json!({"pem_bundle": bundle}),
    )
    .await;
    let (issuers, keys) = (
        d["imported_issuers"].as_array().unwrap(),
        d["imported_keys"].as_array().unwrap(),
    );
    assert_eq!((issuers.len(), keys.len()), (1, 1), "{d}");
    assert_eq!(d["mapping"][s(&issuers[0])], keys[0], "{d}");
    // Importing it again changes nothing and says so.
    let d = ok(
        &srv,
        "POST",
        "pki-imp/config/ca",
        json!({"pem_bundle": bundle}),
    )
    .await;
    assert!(
        d["imported_issuers"].is_null() || d["imported_issuers"] == json!([]),
        "{d}"
    );
    // The imported CA issues.
    ok(
        &srv,
        "POST",
        "pki-imp/roles/r",
        json!({"allow_any_name": true}),
    )
    .await;
    let leaf = ok(
        &srv,
        "POST",
        "pki-imp/issue/r",
        json!({"common_name": "x.test", "ttl": "1h"}),
    )
    .await;
    assert_eq!(s(&leaf["issuing_ca"]), cert);
    // An issued pem_bundle: key, certificate, then the issuing CA.
    let out = ok(
        &srv,
        "POST",
        "pki-imp/issue/r",
        json!({"common_name": "y.test", "ttl": "1h", "format": "pem_bundle"}),
    )
    .await;
    let b = s(&out["certificate"]);
    let (k, c) = (
        b.find("PRIVATE KEY-----").unwrap(),
        b.find("BEGIN CERTIFICATE").unwrap(),
    );
    assert!(k < c && b.starts_with(s(&out["private_key"])), "{b}");
    assert!(b.trim_end().ends_with(cert.trim_end()), "{b}");
    let (st, b) = req(
        &srv,
        "POST",
        "pki-imp/config/ca",
        json!({"pem_bundle": "not pem"}),
    )
    .await;
    assert_eq!(st, 400, "{b}");

    // Two issuers on pki-exp: LIST answers both, one default; issuer/<name>
    // and issuer/<id> read the same one.
    let (st, b) = req(&srv, "LIST", "pki-exp/issuers", Value::Null).await;
    assert_eq!(st, 200, "{b}");
    let ids = b["data"]["keys"].as_array().unwrap();
    assert_eq!(ids.len(), 2, "{b}");
    let defaults: Vec<&Value> = ids
        .iter()
        .filter(|id| b["data"]["key_info"][s(id)]["is_default"] == true)
        .collect();
    assert_eq!(defaults.len(), 1, "{b}");
    let by_name = ok(&srv, "GET", "pki-exp/issuer/second", Value::Null).await;
    assert_eq!(by_name["issuer_name"], "second");
    assert_eq!(s(&by_name["certificate"]), cert);
    let by_id = ok(
        &srv,
        "GET",
        &format!("pki-exp/issuer/{}", s(&by_name["issuer_id"])),
        Value::Null,
    )
    .await;
    assert_eq!(by_id, by_name);
    assert!(!by_name.to_string().contains("PRIVATE KEY"));
    let (st, _) = req(&srv, "GET", "pki-exp/issuer/nonesuch", Value::Null).await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn pki_intermediate_chain_csr_signing_and_ca_paths() {
    let srv = pki_server(&["pki", "pki-int"]).await;
    let root = ok(
        &srv,
        "POST",
        "pki/root/generate/internal",
        json!({"common_name": "Chain Root", "key_type": "ec", "ttl": "8760h"}),
    )
    .await;
    let (st, b) = req(
        &srv,
        "POST",
        "pki-int/intermediate/generate/internal",
        json!({"common_name": "Chain Intermediate", "key_type": "ec"}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert!(
        b["data"].get("private_key").is_none() && !b.to_string().contains("PRIVATE KEY"),
        "{b}"
    );
    let csr_pem = s(&b["data"]["csr"]).to_string();
    assert!(
        csr_pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
        "{b}"
    );
    // pem_bundle: the certificate followed by its issuer, as set-signed takes it.
    let signed = ok(
        &srv,
        "POST",
        "pki/root/sign-intermediate",
        json!({"csr": csr_pem, "ttl": "4380h", "use_csr_values": true, "format": "pem_bundle"}),
    )
    .await;
    assert_eq!(signed["issuing_ca"], root["certificate"]);
    assert_eq!(
        signed["ca_chain"].as_array().unwrap().last(),
        Some(&root["certificate"]),
        "{signed}"
    );
    let bundle = s(&signed["certificate"]).to_string();
    let inter = bundle[..bundle.find("-----END CERTIFICATE-----").unwrap() + 25].to_string();
    assert!(
        bundle.contains(s(&root["certificate"]).trim()),
        "pem_bundle lacks the root: {bundle}"
    );
    let d = ok(
        &srv,
        "POST",
        "pki-int/intermediate/set-signed",
        json!({"certificate": bundle}),
    )
    .await;
    assert!(!d["imported_issuers"].as_array().unwrap().is_empty(), "{d}");
    assert!(
        d["imported_keys"].is_null() || d["imported_keys"] == json!([]),
        "the key was already there: {d}"
    );
    let d = ok(&srv, "GET", "pki-int/issuer/default", Value::Null).await;
    assert_eq!(
        s(&d["certificate"]).trim(),
        inter,
        "the intermediate is the default issuer: {d}"
    );
    assert!(!s(&d["key_id"]).is_empty(), "{d}");

    // Issue from the intermediate; OpenSSL verifies the chain to the root.
    ok(
        &srv,
        "POST",
        "pki-int/roles/web",
        json!({"allowed_domains": ["example.com"], "allow_subdomains": true, "max_ttl": "24h", "key_type": "ec"}),
    )
    .await;
    let leaf = ok(
        &srv,
        "POST",
        "pki-int/issue/web",
        json!({"common_name": "a.example.com", "ttl": "1h"}),
    )
    .await;
    assert_eq!(s(&leaf["issuing_ca"]).trim(), inter);
    assert_eq!(s(&leaf["ca_chain"][0]).trim(), inter, "{leaf}");
    if have_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("root.pem"), s(&root["certificate"])).unwrap();
        std::fs::write(d.join("inter.pem"), &inter).unwrap();
        std::fs::write(d.join("leaf.pem"), s(&leaf["certificate"])).unwrap();
        let out = openssl(
            d,
            &[
                "verify",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "inter.pem",
                "leaf.pem",
            ],
        );
        assert!(out.contains("leaf.pem: OK"), "{out}");
        // Without the intermediate the leaf does not verify.
        let out = Command::new("openssl")
            .args(["verify", "-CAfile", "root.pem", "leaf.pem"])
            .current_dir(d)
            .output()
            .unwrap();
        assert!(!out.status.success());
    }

    // The intermediate's public CA paths: DER, PEM chain, JSON chain.
    let (st, ct, der) = public(&srv, "pki-int/ca").await;
    assert_eq!((st, ct.as_str()), (200, "application/pkix-cert"));
    assert_eq!(der, pem_der(&inter));
    let (st, _, chain) = public(&srv, "pki-int/ca_chain").await;
    assert_eq!(st, 200);
    let chain = String::from_utf8(chain).unwrap();
    assert!(chain.contains(inter.trim()), "{chain}");
    assert!(
        chain.contains(s(&root["certificate"]).trim()),
        "the chain reaches the root: {chain}"
    );
    let d = ok(&srv, "GET", "pki-int/cert/ca_chain", Value::Null).await;
    assert_eq!(s(&d["ca_chain"][0]).trim(), inter, "{d}");
    assert!(s(&d["certificate"]).contains(inter.trim()), "{d}");
    let (st, ct, pem) = public(&srv, "pki/ca/pem").await;
    assert_eq!(
        (st, ct.as_str()),
        (200, "application/pem-certificate-chain")
    );
    assert_eq!(
        String::from_utf8(pem).unwrap().trim(),
        s(&root["certificate"]).trim()
    );

    // sign/<role>: the CSR's key stays with the caller; names are checked.
    let good = csr("b.example.com", &["b.example.com", "c.example.com"]);
    let out = ok(
        &srv,
        "POST",
        "pki-int/sign/web",
        json!({"csr": good, "common_name": "b.example.com", "ttl": "1h"}),
    )
    .await;
    assert!(out.get("private_key").is_none(), "{out}");
    assert_eq!(s(&out["issuing_ca"]).trim(), inter);
    assert!(s(&out["serial_number"]).contains(':'));
    for (cn, sans, rule) in [
        (
            "b.example.com",
            vec!["b.example.com", "evil.org"],
            "evil.org",
        ),
        ("evil.org", vec![], "evil.org"),
    ] {
        let (st, b) = req(
            &srv,
            "POST",
            "pki-int/sign/web",
            json!({"csr": csr(cn, &sans), "common_name": cn}),
        )
        .await;
        assert_eq!(st, 400, "{b}");
        let msg = s(&b["errors"][0]);
        assert!(
            msg.contains(rule) && msg.contains("allowed_domains"),
            "{msg}"
        );
    }
    let (st, b) = req(&srv, "POST", "pki-int/sign/web", json!({"csr": "garbage"})).await;
    assert_eq!(st, 400, "{b}");

    // Without common_name the CSR's is used, and checked.
    let out = ok(
        &srv,
        "POST",
        "pki-int/sign/web",
        json!({"csr": csr("d.example.com", &[]), "ttl": "1h"}),
    )
    .await;
    if have_openssl() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("d.pem"), s(&out["certificate"])).unwrap();
        let text = openssl(dir.path(), &["x509", "-in", "d.pem", "-noout", "-subject"]);
        assert!(text.contains("CN = d.example.com"), "{text}");
    }
    let (st, b) = req(&srv, "LIST", "pki-int/roles", Value::Null).await;
    assert_eq!(
        (st, b["data"]["keys"].clone()),
        (200, json!(["web"])),
        "{b}"
    );

    // sign-verbatim keeps the CSR's subject whatever the names.
    let out = ok(
        &srv,
        "POST",
        "pki-int/sign-verbatim",
        json!({"csr": csr("anything.internal", &["anything.internal"]), "ttl": "1h"}),
    )
    .await;
    if have_openssl() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("v.pem"), s(&out["certificate"])).unwrap();
        let text = openssl(
            dir.path(),
            &[
                "x509",
                "-in",
                "v.pem",
                "-noout",
                "-subject",
                "-ext",
                "subjectAltName",
            ],
        );
        assert!(
            text.contains("CN = anything.internal") && text.contains("DNS:anything.internal"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn pki_crl_config_listing_revocation_tidy_and_ocsp_unknown() {
    let srv = pki_server(&["pki"]).await;
    // Before anything: no roles (404 like any empty LIST), no tidy yet.
    let (st, b) = req(&srv, "LIST", "pki/roles", Value::Null).await;
    assert_eq!(st, 404, "{b}");
    let d = ok(&srv, "GET", "pki/tidy-status", Value::Null).await;
    assert_eq!(d["state"], "Inactive", "{d}");
    let root = ok(
        &srv,
        "POST",
        "pki/root/generate/internal",
        json!({"common_name": "Revocation Root", "key_type": "ec", "ttl": "8760h"}),
    )
    .await;
    ok(
        &srv,
        "POST",
        "pki/roles/any",
        json!({"allow_any_name": true, "max_ttl": "24h"}),
    )
    .await;

    // config/crl: defaults, a write answered with the new values, a bad one.
    let d = ok(&srv, "GET", "pki/config/crl", Value::Null).await;
    assert_eq!(
        (d["disable"].clone(), d["auto_rebuild"].clone()),
        (json!(false), json!(false)),
        "{d}"
    );
    assert!(d["expiry"] == "72h" || d["expiry"] == "72h0m0s", "{d}");
    let (st, b) = req(
        &srv,
        "POST",
        "pki/config/crl",
        json!({"expiry": "48h", "auto_rebuild": true, "auto_rebuild_grace_period": "1h"}),
    )
    .await;
    // Vault 1.12+ answers the write with the configuration.
    assert_eq!(
        (st, b["data"]["auto_rebuild"].clone()),
        (200, json!(true)),
        "{b}"
    );
    let d = ok(&srv, "GET", "pki/config/crl", Value::Null).await;
    assert!(d["expiry"] == "48h" || d["expiry"] == "48h0m0s", "{d}");
    assert_eq!(d["auto_rebuild"], true, "{d}");
    let (st, b) = req(
        &srv,
        "POST",
        "pki/config/crl",
        json!({"expiry": "not a duration"}),
    )
    .await;
    assert_eq!(st, 400, "{b}");

    // crl/rotate is a read in Vault's API; a write is taken too.
    let d = ok(&srv, "GET", "pki/crl/rotate", Value::Null).await;
    assert_eq!(d["success"], true, "{d}");
    let d = ok(&srv, "POST", "pki/crl/rotate", json!({})).await;
    assert_eq!(d["success"], true, "{d}");

    // Two leaves; LIST certs names them (and the root), certs/revoked nothing yet.
    let mut serials = Vec::new();
    let mut pems = Vec::new();
    for cn in ["one.test", "two.test"] {
        let d = ok(
            &srv,
            "POST",
            "pki/issue/any",
            json!({"common_name": cn, "ttl": "1h"}),
        )
        .await;
        serials.push(s(&d["serial_number"]).to_string());
        pems.push(s(&d["certificate"]).to_string());
    }
    let (st, b) = req(&srv, "LIST", "pki/certs", Value::Null).await;
    assert_eq!(st, 200, "{b}");
    let listed: Vec<&str> = b["data"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    for serial in serials
        .iter()
        .map(String::as_str)
        .chain([s(&root["serial_number"])])
    {
        assert!(listed.contains(&serial), "{serial} not in {listed:?}");
    }
    let (st, b) = req(&srv, "LIST", "pki/certs/revoked", Value::Null).await;
    assert_eq!(st, 404, "no revocations yet: {b}");

    // Revoke by certificate PEM.
    let d = ok(&srv, "POST", "pki/revoke", json!({"certificate": pems[0]})).await;
    assert!(d["revocation_time"].as_i64().unwrap() > 0, "{d}");
    assert_eq!(d["state"], "revoked", "{d}");
    let (st, b) = req(&srv, "LIST", "pki/certs/revoked", Value::Null).await;
    assert_eq!(
        (st, b["data"]["keys"].clone()),
        (200, json!([serials[0]])),
        "{b}"
    );
    let d = ok(
        &srv,
        "GET",
        &format!("pki/cert/{}", serials[0]),
        Value::Null,
    )
    .await;
    assert!(d["revocation_time"].as_i64().unwrap() > 0, "{d}");
    // A certificate of another CA, and a malformed one, are refused.
    let (st, b) = req(
        &srv,
        "POST",
        "pki/revoke",
        json!({"certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    // Revoking again is no error and keeps the first revocation time.
    let again = ok(
        &srv,
        "POST",
        "pki/revoke",
        json!({"serial_number": serials[0]}),
    )
    .await;
    assert_eq!(again["revocation_time"], d["revocation_time"], "{again}");
    // A CA certificate is not revoked through revoke.
    let (st, b) = req(
        &srv,
        "POST",
        "pki/revoke",
        json!({"serial_number": root["serial_number"]}),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    let (st, b) = req(&srv, "POST", "pki/revoke", json!({})).await;
    assert_eq!(st, 400, "{b}");

    // Tidy runs in the background (202 with a warning), then reports.
    let (st, b) = req(
        &srv,
        "POST",
        "pki/tidy",
        json!({"tidy_cert_store": true, "tidy_revoked_certs": true, "safety_buffer": "1s"}),
    )
    .await;
    assert_eq!(st, 202, "{b}");
    assert!(
        b["warnings"].as_array().is_some_and(|w| !w.is_empty()),
        "{b}"
    );
    let mut status = Value::Null;
    for _ in 0..100 {
        status = ok(&srv, "GET", "pki/tidy-status", Value::Null).await;
        if status["state"] != "Running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status["state"], "Finished", "{status}");
    assert_eq!(
        (
            status["tidy_cert_store"].clone(),
            status["tidy_revoked_certs"].clone()
        ),
        (json!(true), json!(true)),
        "{status}"
    );
    // Nothing has expired, so nothing was tidied away.
    assert_eq!(
        (
            status["cert_store_deleted_count"].clone(),
            status["revoked_cert_deleted_count"].clone()
        ),
        (json!(0), json!(0)),
        "{status}"
    );
    let (st, _) = req(&srv, "LIST", "pki/certs/revoked", Value::Null).await;
    assert_eq!(st, 200);
    let (st, b) = req(&srv, "POST", "pki/tidy", json!({})).await;
    assert_eq!(st, 400, "tidy with nothing to do: {b}");

    // OCSP for a serial this CA never issued: "unknown".
    if have_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("ca.pem"), s(&root["certificate"])).unwrap();
        openssl(
            d,
            &[
                "ocsp",
                "-issuer",
                "ca.pem",
                "-serial",
                "0x1234567890ABCDEF",
                "-reqout",
                "req.der",
                "-no_nonce",
            ],
        );
        let der = std::fs::read(d.join("req.der")).unwrap();
        let (st, ct, resp) =
            public(&srv, &format!("pki/ocsp/{}", URL_SAFE_NO_PAD.encode(&der))).await;
        assert_eq!((st, ct.as_str()), (200, "application/ocsp-response"));
        std::fs::write(d.join("resp.der"), resp).unwrap();
        let text = openssl(
            d,
            &["ocsp", "-respin", "resp.der", "-resp_text", "-noverify"],
        );
        assert!(text.contains("OCSP Response Status: successful"), "{text}");
        assert!(text.contains("Cert Status: unknown"), "{text}");
    }
}
