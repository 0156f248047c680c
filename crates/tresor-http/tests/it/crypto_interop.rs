//! Interoperability with OpenSSL through the whole server: Transit
//! signatures checked by `openssl` and OpenSSL's signatures checked by
//! Transit, ciphertexts across rotation and rewrap, and PKI certificates,
//! CRLs and OCSP answers read by `openssl verify|crl|ocsp`.
//!
//! The `openssl` command line is driven on files in a temporary
//! directory; without it the OpenSSL tests print a notice and pass.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use crate::common::call_root as call;

use std::path::Path;
use std::process::Command;

use crate::common::{client, dev};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};

const MESSAGE: &[u8] = b"tresor <-> openssl interop message\n";

/// `call` that insists on a 2xx answer and returns its `data`.
async fn ok(s: &common::TestServer, verb: &str, path: &str, body: Option<Value>) -> Value {
    let (st, b) = call(s, verb, path, body).await;
    assert!((200..300).contains(&st), "{verb} {path}: {st} {b}");
    b["data"].clone()
}

async fn mount(s: &common::TestServer, path: &str, ty: &str) {
    let (st, b) = call(
        s,
        "POST",
        &format!("sys/mounts/{path}"),
        Some(json!({"type": ty})),
    )
    .await;
    assert!(st == 200 || st == 204, "{st} {b}");
}

fn have_openssl() -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("NOTICE: no `openssl` command line on PATH; OpenSSL interop checks skipped");
    }
    found
}

/// Runs `openssl args…` in `dir`; success and the combined output.
fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `openssl` that must succeed; returns its output.
fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, text) = openssl(dir, args);
    assert!(ok, "openssl {args:?} failed:\n{text}");
    text
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// An Ed25519 SubjectPublicKeyInfo around a raw 32-byte key (RFC 8410).
fn ed25519_spki(raw: &[u8]) -> Vec<u8> {
    assert_eq!(raw.len(), 32);
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend_from_slice(raw);
    der
}

/// An Ed25519 PKCS#8 private key around a 32-byte seed (RFC 8410).
fn ed25519_pkcs8(seed: &[u8]) -> Vec<u8> {
    assert_eq!(seed.len(), 32);
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(seed);
    der
}

/// The raw bytes of a `vault:v<n>:<base64>` value.
fn unwrap_vault(sig: &str) -> Vec<u8> {
    let mut parts = sig.splitn(3, ':');
    assert_eq!(parts.next(), Some("vault"), "{sig}");
    assert!(parts.next().unwrap().starts_with('v'), "{sig}");
    STANDARD.decode(parts.next().unwrap()).unwrap()
}

/// Transit key types with the URL suffix and body fields of their
/// sign/verify calls, and how OpenSSL checks or makes the same signature.
struct Case {
    name: &'static str,
    ty: &'static str,
    suffix: &'static str,
    extra: Value,
    /// `openssl dgst` options for the padding (RSA only).
    sigopts: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "ed",
            ty: "ed25519",
            suffix: "",
            extra: json!({}),
            sigopts: &[],
        },
        Case {
            name: "ec",
            ty: "ecdsa-p256",
            suffix: "/sha2-256",
            extra: json!({"marshaling_algorithm": "asn1"}),
            sigopts: &[],
        },
        Case {
            name: "rsa-pss",
            ty: "rsa-2048",
            suffix: "/sha2-256",
            extra: json!({"signature_algorithm": "pss"}),
            // Transit signs PSS with a salt as long as the digest (aws-lc-rs'
            // RSA_PSS_SHA256) and verifies that salt length only.
            sigopts: &[
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:32",
            ],
        },
        Case {
            name: "rsa-pkcs1",
            ty: "rsa-2048",
            suffix: "/sha2-256",
            extra: json!({"signature_algorithm": "pkcs1v15"}),
            sigopts: &[],
        },
    ]
}

fn with_extra(mut body: Value, extra: &Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Writes the public key OpenSSL should verify with to `dir/<name>.pub.pem`,
/// from `GET transit/keys/<name>` (Ed25519 comes as raw base64, the others as PEM).
async fn write_public_key(s: &common::TestServer, c: &Case, dir: &Path) -> String {
    let key = ok(s, "GET", &format!("transit/keys/{}", c.name), None).await;
    assert_eq!(key["type"], c.ty, "{key}");
    let public = key["keys"]["1"]["public_key"].as_str().unwrap();
    let text = if c.ty == "ed25519" {
        pem(
            "PUBLIC KEY",
            &ed25519_spki(&STANDARD.decode(public).unwrap()),
        )
    } else {
        assert!(public.contains("BEGIN PUBLIC KEY"), "{public}");
        public.to_string()
    };
    let file = format!("{}.pub.pem", c.name);
    std::fs::write(dir.join(&file), text).unwrap();
    file
}

#[tokio::test]
async fn transit_signatures_verify_with_openssl() {
    if !have_openssl() {
        return;
    }
    let s = dev().await;
    mount(&s, "transit", "transit").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("msg"), MESSAGE).unwrap();
    let input = STANDARD.encode(MESSAGE);

    for c in cases() {
        ok(
            &s,
            "POST",
            &format!("transit/keys/{}", c.name),
            Some(json!({"type": c.ty})),
        )
        .await;
        let pubfile = write_public_key(&s, &c, d).await;
        let out = ok(
            &s,
            "POST",
            &format!("transit/sign/{}{}", c.name, c.suffix),
            Some(with_extra(json!({"input": input}), &c.extra)),
        )
        .await;
        let sig = out["signature"].as_str().unwrap();
        assert!(sig.starts_with("vault:v1:"), "{sig}");
        let sigfile = format!("{}.sig", c.name);
        std::fs::write(d.join(&sigfile), unwrap_vault(sig)).unwrap();

        let text = if c.ty == "ed25519" {
            openssl_ok(
                d,
                &[
                    "pkeyutl", "-verify", "-pubin", "-inkey", &pubfile, "-rawin", "-in", "msg",
                    "-sigfile", &sigfile,
                ],
            )
        } else {
            let mut args = vec![
                "dgst",
                "-sha256",
                "-verify",
                &pubfile,
                "-signature",
                &sigfile,
            ];
            args.extend_from_slice(c.sigopts);
            args.push("msg");
            openssl_ok(d, &args)
        };
        assert!(
            text.contains("Verified Successfully") || text.contains("Verified OK"),
            "{}: {text}",
            c.name
        );

        // And OpenSSL rejects the same signature over another message.
        std::fs::write(d.join("other"), b"another message").unwrap();
        let (good, text) = if c.ty == "ed25519" {
            openssl(
                d,
                &[
                    "pkeyutl", "-verify", "-pubin", "-inkey", &pubfile, "-rawin", "-in", "other",
                    "-sigfile", &sigfile,
                ],
            )
        } else {
            let mut args = vec![
                "dgst",
                "-sha256",
                "-verify",
                &pubfile,
                "-signature",
                &sigfile,
            ];
            args.extend_from_slice(c.sigopts);
            args.push("other");
            openssl(d, &args)
        };
        assert!(!good, "{}: other message verified: {text}", c.name);
    }
}

#[tokio::test]
async fn openssl_signatures_verify_in_transit() {
    if !have_openssl() {
        return;
    }
    let s = dev().await;
    mount(&s, "transit", "transit").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("msg"), MESSAGE).unwrap();
    let input = STANDARD.encode(MESSAGE);

    for c in cases() {
        ok(
            &s,
            "POST",
            &format!("transit/keys/{}", c.name),
            Some(json!({"type": c.ty, "exportable": true})),
        )
        .await;
        let exp = ok(
            &s,
            "GET",
            &format!("transit/export/signing-key/{}", c.name),
            None,
        )
        .await;
        let private = exp["keys"]["1"].as_str().unwrap();
        // Ed25519 exports as base64 of seed || public; the others as PEM.
        let keytext = if c.ty == "ed25519" {
            let raw = STANDARD.decode(private).unwrap();
            assert_eq!(raw.len(), 64);
            pem("PRIVATE KEY", &ed25519_pkcs8(&raw[..32]))
        } else {
            assert!(private.contains("PRIVATE KEY-----"), "{private}");
            private.to_string()
        };
        let keyfile = format!("{}.key.pem", c.name);
        std::fs::write(d.join(&keyfile), keytext).unwrap();

        // The exported private key belongs to the public key Transit shows.
        let pubfile = write_public_key(&s, &c, d).await;
        let derived = openssl_ok(d, &["pkey", "-in", &keyfile, "-pubout"]);
        let shown = std::fs::read_to_string(d.join(&pubfile)).unwrap();
        assert_eq!(derived.trim(), shown.trim(), "{}", c.name);

        let sigfile = format!("{}.ossl.sig", c.name);
        if c.ty == "ed25519" {
            openssl_ok(
                d,
                &[
                    "pkeyutl", "-sign", "-inkey", &keyfile, "-rawin", "-in", "msg", "-out",
                    &sigfile,
                ],
            );
        } else {
            let mut args = vec!["dgst", "-sha256", "-sign", &keyfile, "-out", &sigfile];
            args.extend_from_slice(c.sigopts);
            args.push("msg");
            openssl_ok(d, &args);
        }
        let mut sig = std::fs::read(d.join(&sigfile)).unwrap();
        let verify = |sig: &[u8]| {
            with_extra(
                json!({"input": input, "signature": format!("vault:v1:{}", STANDARD.encode(sig))}),
                &c.extra,
            )
        };
        let path = format!("transit/verify/{}{}", c.name, c.suffix);
        let out = ok(&s, "POST", &path, Some(verify(&sig))).await;
        assert_eq!(out["valid"], true, "{}: {out}", c.name);

        // A flipped bit in the last byte (inside s for DER ECDSA) is refused.
        *sig.last_mut().unwrap() ^= 0x01;
        let (st, out) = call(&s, "POST", &path, Some(verify(&sig))).await;
        assert_eq!(st, 200, "{}: {out}", c.name);
        assert_eq!(out["data"]["valid"], false, "{}: {out}", c.name);
    }
}

#[tokio::test]
async fn ciphertext_survives_rotation_and_rewrap() {
    let s = dev().await;
    mount(&s, "transit", "transit").await;
    for ty in ["aes256-gcm96", "chacha20-poly1305"] {
        let name = format!("rot-{ty}");
        ok(
            &s,
            "POST",
            &format!("transit/keys/{name}"),
            Some(json!({"type": ty})),
        )
        .await;
        let pt = STANDARD.encode(b"across rotations");
        let mut cts = Vec::new();
        for v in 1..=3 {
            if v > 1 {
                ok(&s, "POST", &format!("transit/keys/{name}/rotate"), None).await;
            }
            let out = ok(
                &s,
                "POST",
                &format!("transit/encrypt/{name}"),
                Some(json!({"plaintext": pt})),
            )
            .await;
            let ct = out["ciphertext"].as_str().unwrap().to_string();
            assert!(ct.starts_with(&format!("vault:v{v}:")), "{ct}");
            cts.push(ct);
        }
        // Every version still decrypts.
        for ct in &cts {
            let out = ok(
                &s,
                "POST",
                &format!("transit/decrypt/{name}"),
                Some(json!({"ciphertext": ct})),
            )
            .await;
            assert_eq!(out["plaintext"], pt.as_str(), "{ct}");
        }
        // Rewrap moves v1 to the latest version, same plaintext.
        let out = ok(
            &s,
            "POST",
            &format!("transit/rewrap/{name}"),
            Some(json!({"ciphertext": cts[0]})),
        )
        .await;
        let rewrapped = out["ciphertext"].as_str().unwrap().to_string();
        assert!(rewrapped.starts_with("vault:v3:"), "{rewrapped}");
        assert_ne!(rewrapped, cts[2]);

        // Raising min_decryption_version retires v1 but not the rewrap.
        ok(
            &s,
            "POST",
            &format!("transit/keys/{name}/config"),
            Some(json!({"min_decryption_version": 2})),
        )
        .await;
        let (st, out) = call(
            &s,
            "POST",
            &format!("transit/decrypt/{name}"),
            Some(json!({"ciphertext": cts[0]})),
        )
        .await;
        assert_eq!(st, 400, "{out}");
        for ct in [&rewrapped, &cts[1]] {
            let out = ok(
                &s,
                "POST",
                &format!("transit/decrypt/{name}"),
                Some(json!({"ciphertext": ct})),
            )
            .await;
            assert_eq!(out["plaintext"], pt.as_str(), "{ct}");
        }
    }
}

/// Issues a certificate for `cn` and writes `<file>.pem`; returns Transit's
/// serial (colon-separated hex).
async fn issue(s: &common::TestServer, dir: &Path, cn: &str, file: &str) -> String {
    let out = ok(
        s,
        "POST",
        "pki/issue/any",
        Some(json!({"common_name": cn, "ttl": "1h"})),
    )
    .await;
    std::fs::write(
        dir.join(format!("{file}.pem")),
        out["certificate"].as_str().unwrap(),
    )
    .unwrap();
    out["serial_number"].as_str().unwrap().to_string()
}

/// OpenSSL's spelling of a certificate's serial: upper-case hex, no colons.
fn openssl_serial(dir: &Path, file: &str) -> String {
    let text = openssl_ok(dir, &["x509", "-noout", "-serial", "-in", file]);
    text.trim()
        .strip_prefix("serial=")
        .unwrap_or_else(|| panic!("{text}"))
        .to_string()
}

/// The OCSP answer for `<file>.pem` over `GET pki/ocsp/<base64url>`,
/// checked by OpenSSL against the CA; returns the cert status line.
async fn ocsp_get(s: &common::TestServer, dir: &Path, file: &str) -> String {
    let cert = format!("{file}.pem");
    let reqfile = format!("{file}.ocsp-req.der");
    openssl_ok(
        dir,
        &[
            "ocsp",
            "-issuer",
            "ca.pem",
            "-cert",
            &cert,
            "-reqout",
            &reqfile,
            "-no_nonce",
        ],
    );
    let req = std::fs::read(dir.join(&reqfile)).unwrap();
    let r = client()
        .get(s.url(&format!("/v1/pki/ocsp/{}", URL_SAFE_NO_PAD.encode(&req))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/ocsp-response");
    let der = r.bytes().await.unwrap();
    ocsp_check(dir, file, &der)
}

/// Parses and verifies an OCSP response for `<file>.pem` with OpenSSL.
fn ocsp_check(dir: &Path, file: &str, der: &[u8]) -> String {
    let respfile = format!("{file}.ocsp-resp.der");
    std::fs::write(dir.join(&respfile), der).unwrap();
    let text = openssl_ok(
        dir,
        &["ocsp", "-respin", &respfile, "-resp_text", "-noverify"],
    );
    assert!(text.contains("OCSP Response Status: successful"), "{text}");
    // The same answer, this time with its signature checked against the CA.
    let cert = format!("{file}.pem");
    let checked = openssl_ok(
        dir,
        &[
            "ocsp", "-respin", &respfile, "-issuer", "ca.pem", "-cert", &cert, "-CAfile", "ca.pem",
        ],
    );
    assert!(checked.contains("Response verify OK"), "{checked}");
    text.lines()
        .find(|l| l.trim_start().starts_with("Cert Status:"))
        .unwrap_or_else(|| panic!("no Cert Status in:\n{text}"))
        .trim()
        .to_string()
}

#[tokio::test]
async fn pki_certificates_crl_and_ocsp_with_openssl() {
    if !have_openssl() {
        return;
    }
    let s = dev().await;
    mount(&s, "pki", "pki").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let root = ok(
        &s,
        "POST",
        "pki/root/generate/internal",
        Some(json!({"common_name": "Interop Root", "key_type": "ec", "key_bits": 256, "ttl": "8760h"})),
    )
    .await;
    std::fs::write(d.join("ca.pem"), root["certificate"].as_str().unwrap()).unwrap();
    ok(
        &s,
        "POST",
        "pki/roles/any",
        Some(json!({"allow_any_name": true, "max_ttl": "24h"})),
    )
    .await;

    let revoked = issue(&s, d, "revoked.example.com", "revoked").await;
    let _good = issue(&s, d, "good.example.com", "good").await;
    for f in ["revoked.pem", "good.pem"] {
        let text = openssl_ok(d, &["verify", "-CAfile", "ca.pem", f]);
        assert!(text.contains(&format!("{f}: OK")), "{text}");
    }
    let revoked_hex = openssl_serial(d, "revoked.pem");
    let good_hex = openssl_serial(d, "good.pem");
    assert_eq!(
        revoked
            .replace(':', "")
            .to_uppercase()
            .trim_start_matches('0'),
        revoked_hex.trim_start_matches('0'),
    );

    // Both good before any revocation.
    assert_eq!(ocsp_get(&s, d, "revoked").await, "Cert Status: good");

    let out = ok(
        &s,
        "POST",
        "pki/revoke",
        Some(json!({"serial_number": revoked})),
    )
    .await;
    assert!(out["revocation_time"].as_i64().unwrap() > 0, "{out}");

    // The CRL (public, PEM) is signed by the CA and lists the serial.
    let r = client().get(s.url("/v1/pki/crl/pem")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    std::fs::write(d.join("crl.pem"), r.text().await.unwrap()).unwrap();
    let text = openssl_ok(d, &["crl", "-in", "crl.pem", "-noout", "-text"]);
    assert!(
        text.contains(&format!("Serial Number: {revoked_hex}")),
        "{revoked_hex} not in:\n{text}"
    );
    assert!(!text.contains(&good_hex), "{good_hex} listed:\n{text}");
    let text = openssl_ok(d, &["crl", "-in", "crl.pem", "-noout", "-CAfile", "ca.pem"]);
    assert!(text.contains("verify OK"), "{text}");
    // And `openssl verify -crl_check` now refuses the revoked one only.
    let (good, text) = openssl(
        d,
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "ca.pem",
            "-CRLfile",
            "crl.pem",
            "revoked.pem",
        ],
    );
    assert!(!good && text.contains("certificate revoked"), "{text}");
    let text = openssl_ok(
        d,
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "ca.pem",
            "-CRLfile",
            "crl.pem",
            "good.pem",
        ],
    );
    assert!(text.contains("good.pem: OK"), "{text}");

    // OCSP over GET.
    assert_eq!(ocsp_get(&s, d, "revoked").await, "Cert Status: revoked");
    assert_eq!(ocsp_get(&s, d, "good").await, "Cert Status: good");

    // OCSP over POST with the JSON body (`request` = base64 DER).
    let req = std::fs::read(d.join("revoked.ocsp-req.der")).unwrap();
    let r = client()
        .post(s.url("/v1/pki/ocsp"))
        .json(&json!({"request": STANDARD.encode(&req)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let der = r.bytes().await.unwrap();
    assert_eq!(ocsp_check(d, "revoked", &der), "Cert Status: revoked");

    // OCSP over POST as RFC 6960 clients send it: the raw DER request with
    // `Content-Type: application/ocsp-request` (no token), for the good and
    // the revoked certificate.
    for (file, status) in [("revoked", "revoked"), ("good", "good")] {
        let req = std::fs::read(d.join(format!("{file}.ocsp-req.der"))).unwrap();
        let r = client()
            .post(s.url("/v1/pki/ocsp"))
            .header("Content-Type", "application/ocsp-request")
            .body(req)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "raw OCSP POST for {file}");
        assert_eq!(r.headers()["content-type"], "application/ocsp-response");
        let der = r.bytes().await.unwrap();
        assert_eq!(ocsp_check(d, file, &der), format!("Cert Status: {status}"));
    }
}
