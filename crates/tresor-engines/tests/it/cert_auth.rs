//! TLS certificate auth with certificates made at test time (rcgen): chain
//! verification to a trusted CA, exact match for a pinned leaf, constraints,
//! CRLs (loaded at initialize), and renewal bound to the login certificate.

#![allow(clippy::unwrap_used)]

use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams,
    CertificateRevocationListParams, DnType, IsCa, KeyIdMethod, KeyPair, RevokedCertParams,
    SerialNumber,
};
use serde_json::{json, Value};
use tresor_engines::auth::cert::CertAuth;
use tresor_sdk::testing::{req, MemoryStorage};
use tresor_sdk::{Auth, Backend, BackendError, Operation, Response};

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

fn ca(cn: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

fn intermediate(parent: &Ca, cn: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    Ca {
        cert: p.signed_by(&key, &parent.cert, &parent.key).unwrap(),
        key,
    }
}

fn leaf_with(
    issuer: &Ca,
    cn: &str,
    serial: u64,
    edit: impl FnOnce(&mut CertificateParams),
) -> Certificate {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![format!("{cn}.example")]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.serial_number = Some(SerialNumber::from(serial));
    edit(&mut p);
    p.signed_by(&key, &issuer.cert, &issuer.key).unwrap()
}

fn leaf(issuer: &Ca, cn: &str, serial: u64) -> Certificate {
    leaf_with(issuer, cn, serial, |_| {})
}

fn crl(issuer: &Ca, serials: &[u64]) -> String {
    CertificateRevocationListParams {
        this_update: date_time_ymd(2024, 1, 1),
        next_update: date_time_ymd(2099, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from(*s),
                revocation_time: date_time_ymd(2024, 1, 1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer.cert, &issuer.key)
    .unwrap()
    .pem()
    .unwrap()
}

fn chain(certs: &[&Certificate]) -> Vec<Vec<u8>> {
    certs.iter().map(|c| c.der().to_vec()).collect()
}

async fn call(
    b: &CertAuth,
    s: &MemoryStorage,
    op: Operation,
    path: &str,
    body: Value,
) -> Result<Option<Response>, BackendError> {
    b.handle(&req(op, path).body(body), s).await
}

async fn login(
    b: &CertAuth,
    s: &MemoryStorage,
    peer: Vec<Vec<u8>>,
    name: &str,
) -> Result<Auth, BackendError> {
    let mut r = req(Operation::Update, "login").body(json!({ "name": name }));
    r.peer_certificates = peer;
    Ok(b.handle(&r, s).await?.and_then(|r| r.auth).expect("auth"))
}

async fn renew(
    b: &CertAuth,
    s: &MemoryStorage,
    auth: &Auth,
    peer: Vec<Vec<u8>>,
) -> Result<Option<Response>, BackendError> {
    let mut r = req(Operation::Renew, "login");
    r.auth = Some(auth.clone());
    r.peer_certificates = peer;
    b.handle(&r, s).await
}

#[tokio::test]
async fn ca_trust_constraints_crls_and_renewal() {
    let root = ca("Test Root");
    let other_root = ca("Other Root");
    let inter = intermediate(&root, "Test Intermediate");
    let alice = leaf(&root, "alice", 10);
    let alice_via_inter = leaf(&inter, "alice", 11);
    let mallory = leaf(&root, "mallory", 12);
    let revoked = leaf(&root, "alice", 4242);
    let foreign = leaf(&other_root, "alice", 13);
    let expired = leaf_with(&root, "alice", 14, |p| {
        p.not_before = date_time_ymd(2000, 1, 1);
        p.not_after = date_time_ymd(2001, 1, 1);
    });

    let s = MemoryStorage::new();
    // CRLs written before the backend (re)starts are known from initialize.
    let b0 = CertAuth::new();
    call(
        &b0,
        &s,
        Operation::Update,
        "crls/root",
        json!({ "crl": crl(&root, &[4242]) }),
    )
    .await
    .unwrap();
    let b = CertAuth::new();
    b.initialize(&s).await.unwrap();

    call(
        &b,
        &s,
        Operation::Create,
        "certs/web",
        json!({
            "certificate": root.cert.pem(),
            "allowed_common_names": ["alice", "bob*"],
            "display_name": "webapp",
            "token_policies": ["web"],
            "token_ttl": 600,
        }),
    )
    .await
    .unwrap();
    let read = call(&b, &s, Operation::Read, "certs/web", json!({}))
        .await
        .unwrap()
        .unwrap()
        .data
        .unwrap();
    assert_eq!(read["allowed_common_names"], json!(["alice", "bob*"]));
    assert_eq!(read["token_policies"], json!(["web"]));
    let list = call(&b, &s, Operation::List, "certs", json!({}))
        .await
        .unwrap()
        .unwrap()
        .data
        .unwrap();
    assert_eq!(list["keys"], json!(["web"]));

    let auth = login(&b, &s, chain(&[&alice]), "").await.unwrap();
    assert_eq!(auth.policies, vec!["web"]);
    assert_eq!(auth.display_name, "webapp");
    assert_eq!(auth.alias_name, "alice");
    assert_eq!(auth.metadata["cert_name"], "web");
    assert_eq!(auth.metadata["serial_number"], "10");
    assert_eq!(auth.lease.ttl.as_secs(), 600);

    // Through an intermediate the client sends along.
    login(&b, &s, chain(&[&alice_via_inter, &inter.cert]), "web")
        .await
        .unwrap();
    // Without the intermediate there is no path to the root.
    assert!(login(&b, &s, chain(&[&alice_via_inter]), "web")
        .await
        .is_err());

    for (what, peer) in [
        ("CN not allowed", chain(&[&mallory])),
        ("revoked serial", chain(&[&revoked])),
        ("other CA", chain(&[&foreign])),
        ("expired", chain(&[&expired])),
    ] {
        let e = login(&b, &s, peer, "").await.expect_err(what);
        assert!(e.to_string().contains("no chain matching"), "{what}: {e}");
    }
    let e = login(&b, &s, Vec::new(), "").await.unwrap_err();
    assert!(e.to_string().contains("no client certificate"), "{e}");

    // Renewal with the login certificate works; with another (same CA,
    // same CN) or none it does not.
    let renewed = renew(&b, &s, &auth, chain(&[&alice]))
        .await
        .unwrap()
        .unwrap()
        .auth
        .unwrap();
    assert_eq!(renewed.lease.ttl.as_secs(), 600);
    let other_alice = leaf(&root, "alice", 15);
    assert!(matches!(
        renew(&b, &s, &auth, chain(&[&other_alice])).await,
        Err(BackendError::PermissionDenied)
    ));
    assert!(renew(&b, &s, &auth, Vec::new()).await.is_err());

    // Revoking the login certificate later stops its renewals and logins.
    call(
        &b,
        &s,
        Operation::Update,
        "crls/late",
        json!({ "crl": crl(&root, &[10]) }),
    )
    .await
    .unwrap();
    let serials = call(&b, &s, Operation::Read, "crls/late", json!({}))
        .await
        .unwrap()
        .unwrap()
        .data
        .unwrap();
    assert!(serials["serials"].get("10").is_some(), "{serials:?}");
    assert!(renew(&b, &s, &auth, chain(&[&alice])).await.is_err());
    assert!(login(&b, &s, chain(&[&alice]), "").await.is_err());
    call(&b, &s, Operation::Delete, "crls/late", json!({}))
        .await
        .unwrap();
    login(&b, &s, chain(&[&alice]), "").await.unwrap();

    // Policies changed on the entry: the old token no longer renews.
    call(
        &b,
        &s,
        Operation::Update,
        "certs/web",
        json!({ "token_policies": ["other"] }),
    )
    .await
    .unwrap();
    assert!(renew(&b, &s, &auth, chain(&[&alice])).await.is_err());
}

#[tokio::test]
async fn non_ca_trust_matches_exact_bytes_only() {
    let root = ca("Pin Root");
    let pinned = leaf(&root, "svc", 20);
    // Same issuer, same subject, same serial: other bytes (other key).
    let lookalike = leaf(&root, "svc", 20);
    let s = MemoryStorage::new();
    let b = CertAuth::new();
    b.initialize(&s).await.unwrap();
    call(
        &b,
        &s,
        Operation::Create,
        "certs/pinned",
        json!({ "certificate": pinned.pem() }),
    )
    .await
    .unwrap();
    login(&b, &s, chain(&[&pinned]), "pinned").await.unwrap();
    let e = login(&b, &s, chain(&[&lookalike]), "pinned")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no chain matching"), "{e}");
    // The CA that signed both is not trusted by this entry.
    assert!(login(&b, &s, chain(&[&root.cert]), "pinned").await.is_err());
}

#[tokio::test]
async fn san_ou_and_extension_constraints_and_input_errors() {
    let root = ca("Constraint Root");
    let s = MemoryStorage::new();
    let b = CertAuth::new();
    let with_ou = leaf_with(&root, "db", 30, |p| {
        p.distinguished_name
            .push(DnType::OrganizationalUnitName, "payments");
    });
    call(&b, &s, Operation::Create, "certs/dns", json!({
        "certificate": root.cert.pem(), "allowed_dns_sans": "*.example", "allowed_organizational_units": "payments",
    })).await.unwrap();
    login(&b, &s, chain(&[&with_ou]), "dns").await.unwrap();
    assert!(login(&b, &s, chain(&[&leaf(&root, "db", 31)]), "dns")
        .await
        .is_err());
    call(
        &b,
        &s,
        Operation::Create,
        "certs/ext",
        json!({
            "certificate": root.cert.pem(), "required_extensions": "1.2.3.4:*",
        }),
    )
    .await
    .unwrap();
    assert!(login(&b, &s, chain(&[&with_ou]), "ext").await.is_err());

    let e = call(
        &b,
        &s,
        Operation::Create,
        "certs/bad",
        json!({ "certificate": "nope" }),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    let e = call(&b, &s, Operation::Create, "certs/bad", json!({}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    let e = call(
        &b,
        &s,
        Operation::Update,
        "crls/bad",
        json!({ "crl": root.cert.pem() }),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("crl"), "{e}");
    let e = call(
        &b,
        &s,
        Operation::Update,
        "config",
        json!({ "disable_binding": true }),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("disable_binding"), "{e}");
}

/// hvac's `create_ca_certificate_role(ttl=.., max_ttl=..)` and older
/// clients' `lease` were ignored: the role kept the mount's TTLs.
#[tokio::test]
async fn cert_role_accepts_legacy_ttl_max_ttl_and_lease() {
    let root = ca("Legacy Root");
    let s = MemoryStorage::new();
    let b = CertAuth::new();
    let read = |name: &'static str| {
        let (b, s) = (&b, &s);
        async move {
            call(b, s, Operation::Read, &format!("certs/{name}"), json!({}))
                .await
                .unwrap()
                .unwrap()
                .data
                .unwrap()
        }
    };
    call(&b, &s, Operation::Create, "certs/legacy", json!({
        "certificate": root.cert.pem(), "ttl": "10m", "max_ttl": "1h", "policies": "p", "period": 0,
    }))
    .await
    .unwrap();
    let d = read("legacy").await;
    assert_eq!(d["token_ttl"], json!(600));
    assert_eq!(d["token_max_ttl"], json!(3600));
    assert_eq!(d["token_policies"], json!(["p"]));
    let auth = login(&b, &s, chain(&[&leaf(&root, "x", 40)]), "legacy")
        .await
        .unwrap();
    assert_eq!(auth.lease.ttl, std::time::Duration::from_secs(600));
    assert_eq!(auth.lease.max_ttl, std::time::Duration::from_secs(3600));

    // `lease` (seconds) counts only when neither token_ttl nor ttl is given.
    call(
        &b,
        &s,
        Operation::Create,
        "certs/lease",
        json!({
            "certificate": root.cert.pem(), "lease": 120,
        }),
    )
    .await
    .unwrap();
    assert_eq!(read("lease").await["token_ttl"], json!(120));
    call(
        &b,
        &s,
        Operation::Update,
        "certs/lease",
        json!({ "lease": 60, "ttl": 90 }),
    )
    .await
    .unwrap();
    assert_eq!(read("lease").await["token_ttl"], json!(90));
    call(
        &b,
        &s,
        Operation::Update,
        "certs/lease",
        json!({ "ttl": 90, "token_ttl": 30 }),
    )
    .await
    .unwrap();
    assert_eq!(read("lease").await["token_ttl"], json!(30));
    let e = call(
        &b,
        &s,
        Operation::Update,
        "certs/lease",
        json!({ "ttl": "2h", "max_ttl": "1h" }),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("token_max_ttl"), "{e}");
}
