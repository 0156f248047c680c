//! The cert and aws auth methods through the HTTP API: cert logins over a
//! TLS listener with client certificates (made with rcgen at test time),
//! and an AWS IAM login whose signed request is built by botocore the way
//! hvac builds it, replayed against moto (skipped with a notice when moto
//! is unreachable and TRESOR_MOTO_ENDPOINT is unset).

#![allow(clippy::unwrap_used)]

use crate::common;
use tresor_sdk::testing::moto;

use std::time::Duration;

use crate::common::{serve_with, ROOT};
use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams,
    CertificateRevocationListParams, DnType, IsCa, KeyIdMethod, KeyPair, RevokedCertParams,
    SerialNumber,
};
use serde_json::{json, Value};
use tresor_http::{HttpConfig, TlsSettings, TlsVersion};

struct Pki {
    dir: tempfile::TempDir,
    ca: Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "tresor test CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), server.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), server_key.serialize_pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    fn settings(&self) -> TlsSettings {
        TlsSettings {
            cert_file: self.dir.path().join("cert.pem"),
            key_file: self.dir.path().join("key.pem"),
            min_version: TlsVersion::Tls12,
            client_ca_file: Some(self.dir.path().join("ca.pem")),
        }
    }

    /// A client certificate and its key, signed by the CA.
    fn leaf(&self, cn: &str, serial: u64) -> (Certificate, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![format!("{cn}.example")]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.serial_number = Some(SerialNumber::from(serial));
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let identity = format!("{}{}", cert.pem(), key.serialize_pem());
        (cert, identity)
    }

    fn crl(&self, serials: &[u64]) -> String {
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
        .signed_by(&self.ca, &self.ca_key)
        .unwrap()
        .pem()
        .unwrap()
    }

    fn client(&self, identity: Option<&str>) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(Duration::from_secs(30))
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca.pem().as_bytes()).unwrap(),
            );
        if let Some(id) = identity {
            b = b.identity(reqwest::Identity::from_pem(id.as_bytes()).unwrap());
        }
        b.build().unwrap()
    }
}

async fn send(
    c: &reqwest::Client,
    m: &str,
    url: String,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut r = c
        .request(reqwest::Method::from_bytes(m.as_bytes()).unwrap(), url)
        .json(&body);
    if let Some(t) = token {
        r = r.header("X-Vault-Token", t);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn cert_login_over_tls_with_client_certificates() {
    let pki = Pki::new();
    let core = common::new_core().await;
    core.dev_setup(Some(ROOT.into())).await.unwrap();
    let s = serve_with(core, HttpConfig::default(), Some(pki.settings())).await;
    let admin = pki.client(None);

    let (st, b) = send(
        &admin,
        "POST",
        s.url("/v1/sys/auth/cert"),
        Some(ROOT),
        json!({"type": "cert"}),
    )
    .await;
    assert!(st == 204 || st == 200, "{st} {b}");

    let (alice, alice_id) = pki.leaf("alice", 100);
    let (_, alice2_id) = pki.leaf("alice", 100);
    let (_, mallory_id) = pki.leaf("mallory", 101);
    let (_, revoked_id) = pki.leaf("alice", 102);

    let (st, b) = send(&admin, "POST", s.url("/v1/auth/cert/certs/web"), Some(ROOT), json!({
        "certificate": pki.ca.pem(), "allowed_common_names": "alice", "token_policies": "web", "token_ttl": "10m",
    })).await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = send(
        &admin,
        "POST",
        s.url("/v1/auth/cert/certs/pinned"),
        Some(ROOT),
        json!({
            "certificate": alice.pem(), "token_policies": "pinned",
        }),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = send(
        &admin,
        "POST",
        s.url("/v1/auth/cert/crls/ca"),
        Some(ROOT),
        json!({ "crl": pki.crl(&[102]) }),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = send(
        &admin,
        "LIST",
        s.url("/v1/auth/cert/certs"),
        Some(ROOT),
        json!({}),
    )
    .await;
    assert_eq!(
        (st, &b["data"]["keys"]),
        (200, &json!(["pinned", "web"])),
        "{b}"
    );

    // Login with a certificate the trusted CA signed.
    let alice_c = pki.client(Some(&alice_id));
    let (st, b) = send(
        &alice_c,
        "POST",
        s.url("/v1/auth/cert/login"),
        None,
        json!({"name": "web"}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["auth"]["policies"], json!(["default", "web"]));
    assert_eq!(b["auth"]["metadata"]["cert_name"], "web");
    let token = b["auth"]["client_token"].as_str().unwrap().to_string();
    // Pinned (non-CA) trust admits exactly that certificate.
    let (st, b) = send(
        &alice_c,
        "POST",
        s.url("/v1/auth/cert/login"),
        None,
        json!({"name": "pinned"}),
    )
    .await;
    assert_eq!(st, 200, "{b}");

    // Refusals: same subject other bytes under pinned trust, CN not allowed,
    // serial on the CRL, no certificate at all.
    let alice2_c = pki.client(Some(&alice2_id));
    let (st, b) = send(
        &alice2_c,
        "POST",
        s.url("/v1/auth/cert/login"),
        None,
        json!({"name": "pinned"}),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    let (st, b) = send(
        &pki.client(Some(&mallory_id)),
        "POST",
        s.url("/v1/auth/cert/login"),
        None,
        json!({}),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    let (st, b) = send(
        &pki.client(Some(&revoked_id)),
        "POST",
        s.url("/v1/auth/cert/login"),
        None,
        json!({"name": "web"}),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    let (st, b) = send(
        &admin,
        "POST",
        s.url("/v1/auth/cert/login"),
        None,
        json!({}),
    )
    .await;
    assert_eq!(st, 400, "{b}");

    // Renewal over a connection with the login certificate works, with
    // another certificate (same CA, same CN) it is refused.
    let (st, b) = send(
        &alice_c,
        "POST",
        s.url("/v1/auth/token/renew-self"),
        Some(&token),
        json!({}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (st, b) = send(
        &alice2_c,
        "POST",
        s.url("/v1/auth/token/renew-self"),
        Some(&token),
        json!({}),
    )
    .await;
    assert!(
        st == 403 || st == 400,
        "renewal with another certificate: {st} {b}"
    );
    let (st, b) = send(
        &admin,
        "POST",
        s.url("/v1/auth/token/renew-self"),
        Some(&token),
        json!({}),
    )
    .await;
    assert!(
        st == 403 || st == 400,
        "renewal without a certificate: {st} {b}"
    );
}

/// Creates an IAM user in moto and prints the login fields as hvac's
/// `auth.aws.iam_login` sends them (botocore signs, as in hvac).
const HVAC_LIKE: &str = r#"
import base64, json, sys, uuid
import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
endpoint, server_id = sys.argv[1], sys.argv[2]
iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="test", aws_secret_access_key="test")
name = "hvac-" + uuid.uuid4().hex
arn = iam.create_user(UserName=name)["User"]["Arn"]
key = iam.create_access_key(UserName=name)["AccessKey"]
body = "Action=GetCallerIdentity&Version=2011-06-15"
req = AWSRequest(method="POST", url="https://sts.amazonaws.com/", data=body,
                 headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                          "X-Vault-AWS-IAM-Server-ID": server_id})
SigV4Auth(Credentials(key["AccessKeyId"], key["SecretAccessKey"]), "sts", "us-east-1").add_auth(req)
headers = json.dumps({k: [req.headers[k]] for k in req.headers})
print(json.dumps({"arn": arn, "login": {
    "iam_http_request_method": "POST",
    "iam_request_url": base64.b64encode(req.url.encode()).decode(),
    "iam_request_body": base64.b64encode(body.encode()).decode(),
    "iam_request_headers": base64.b64encode(headers.encode()).decode(),
}}))
"#;

#[tokio::test]
async fn aws_iam_login_like_hvac() {
    let Some(moto) = moto() else { return };
    let out = std::process::Command::new("python3")
        .args(["-c", HVAC_LIKE, &moto, "tresor.example.com"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let arn = v["arn"].as_str().unwrap();

    let core = common::new_core().await;
    core.dev_setup(Some(ROOT.into())).await.unwrap();
    let s = serve_with(core, HttpConfig::default(), None).await;
    let c = common::client();
    let (st, b) = send(
        &c,
        "POST",
        s.url("/v1/sys/auth/aws"),
        Some(ROOT),
        json!({"type": "aws"}),
    )
    .await;
    assert!(st == 204 || st == 200, "{st} {b}");
    let (st, b) = send(&c, "POST", s.url("/v1/auth/aws/config/client"), Some(ROOT), json!({
        "sts_endpoint": moto, "sts_region": "us-east-1", "iam_endpoint": moto,
        "access_key": "test", "secret_key": "test", "iam_server_id_header_value": "tresor.example.com",
    })).await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = send(
        &c,
        "POST",
        s.url("/v1/auth/aws/role/dev"),
        Some(ROOT),
        json!({
            "auth_type": "iam", "bound_iam_principal_arn": [arn], "policies": "dev",
        }),
    )
    .await;
    assert_eq!(st, 204, "{b}");

    let mut login = v["login"].clone();
    login["role"] = json!("dev");
    let (st, b) = send(&c, "POST", s.url("/v1/auth/aws/login"), None, login.clone()).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["auth"]["metadata"]["client_arn"], arn);
    assert_eq!(b["auth"]["policies"], json!(["default", "dev"]));
    let token = b["auth"]["client_token"].as_str().unwrap().to_string();
    let (st, b) = send(
        &c,
        "POST",
        s.url("/v1/auth/token/renew-self"),
        Some(&token),
        json!({}),
    )
    .await;
    assert_eq!(st, 200, "{b}");

    // The same signed request aimed at another host is refused.
    login["iam_request_url"] = json!("aHR0cHM6Ly9ldmlsLmV4YW1wbGUv"); // https://evil.example/
    let (st, b) = send(&c, "POST", s.url("/v1/auth/aws/login"), None, login).await;
    assert_eq!(st, 400, "{b}");
}
