//! AWS IAM auth against moto in server mode: real SigV4-signed
//! GetCallerIdentity requests, built here the way clients build them.
//! Skips (with a notice) when moto is unreachable and TRESOR_MOTO_ENDPOINT
//! is unset; `scripts/test` starts moto and sets it.

#![allow(clippy::unwrap_used)]

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use tresor_engines::auth::aws::AwsAuth;
use tresor_sdk::testing::{moto, req, MemoryStorage};
use tresor_sdk::{Backend, BackendError, Operation, Response};

const BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
const SERVER_ID: &str = "tresor.example.com";

/// Headers of a SigV4-signed POST (host and every given header signed).
fn signed_headers(
    key: &str,
    secret: &str,
    url: &str,
    service: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Vec<(String, String)> {
    let identity = Credentials::new(key, secret, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name(service)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        "POST",
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .unwrap();
    let (instr, _) = sign(signable, &params).unwrap().into_parts();
    let mut out: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    out.extend(instr.headers().map(|(k, v)| (k.to_string(), v.to_string())));
    out
}

async fn iam(moto: &str, body: &str) -> String {
    let host = moto.trim_start_matches("http://");
    let hs = signed_headers(
        "test",
        "test",
        &format!("{moto}/"),
        "iam",
        body,
        &[
            ("host", host),
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
        ],
    );
    let mut b = reqwest::Client::new()
        .post(format!("{moto}/"))
        .body(body.to_string());
    for (k, v) in hs.iter().filter(|(k, _)| k != "host") {
        b = b.header(k, v);
    }
    let r = b.send().await.unwrap();
    assert!(r.status().is_success(), "IAM {body}: {}", r.status());
    r.text().await.unwrap()
}

fn xml_field(xml: &str, tag: &str) -> String {
    let start = xml.find(&format!("<{tag}>")).unwrap() + tag.len() + 2;
    let end = start + xml[start..].find(&format!("</{tag}>")).unwrap();
    xml[start..end].to_string()
}

struct User {
    arn: String,
    key: String,
    secret: String,
}

async fn new_user(moto: &str, prefix: &str) -> User {
    let name = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    let created = iam(
        moto,
        &format!("Action=CreateUser&UserName={name}&Version=2010-05-08"),
    )
    .await;
    let keys = iam(
        moto,
        &format!("Action=CreateAccessKey&UserName={name}&Version=2010-05-08"),
    )
    .await;
    User {
        arn: xml_field(&created, "Arn"),
        key: xml_field(&keys, "AccessKeyId"),
        secret: xml_field(&keys, "SecretAccessKey"),
    }
}

/// Tamperings applied while building a login request.
#[derive(Default)]
struct Build<'a> {
    url: Option<&'a str>,
    body: Option<&'a str>,
    server_id: Option<&'a str>,
    /// Signed extra headers.
    signed_extra: Vec<(&'a str, &'a str)>,
    /// Headers added after signing.
    unsigned_extra: Vec<(&'a str, &'a str)>,
}

/// A login body as hvac builds it: base64 URL, body and JSON headers with
/// list values.
fn login_body(u: &User, role: &str, b: Build<'_>) -> Value {
    let url = b.url.unwrap_or("https://sts.amazonaws.com/");
    let body = b.body.unwrap_or(BODY);
    let host = reqwest::Url::parse(url)
        .unwrap()
        .host_str()
        .unwrap()
        .to_string();
    let len = body.len().to_string();
    let mut hs: Vec<(&str, &str)> = vec![
        ("host", host.as_str()),
        (
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        ),
        ("content-length", len.as_str()),
    ];
    if let Some(id) = b.server_id {
        hs.push(("x-vault-aws-iam-server-id", id));
    }
    hs.extend(b.signed_extra.iter().copied());
    let mut signed = signed_headers(&u.key, &u.secret, url, "sts", body, &hs);
    signed.extend(
        b.unsigned_extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let headers: Map<String, Value> = signed.into_iter().map(|(k, v)| (k, json!([v]))).collect();
    json!({
        "role": role,
        "iam_http_request_method": "POST",
        "iam_request_url": STANDARD.encode(url),
        "iam_request_body": STANDARD.encode(body),
        "iam_request_headers": STANDARD.encode(Value::Object(headers).to_string()),
    })
}

async fn call(
    b: &AwsAuth,
    s: &MemoryStorage,
    op: Operation,
    path: &str,
    body: Value,
) -> Result<Option<Response>, BackendError> {
    let mut r = req(op, path).body(body);
    r.remote_addr = Some("127.0.0.1".parse().unwrap());
    b.handle(&r, s).await
}

async fn setup(moto: &str, server_id: &str) -> (AwsAuth, MemoryStorage) {
    let b = AwsAuth::new();
    let s = MemoryStorage::new();
    call(
        &b,
        &s,
        Operation::Update,
        "config/client",
        json!({
            "sts_endpoint": moto, "sts_region": "us-east-1", "iam_endpoint": moto,
            "access_key": "test", "secret_key": "test", "iam_server_id_header_value": server_id,
        }),
    )
    .await
    .unwrap();
    (b, s)
}

#[tokio::test]
async fn iam_login_with_unique_id_binding_and_renewal() {
    let Some(moto) = moto() else { return };
    let alice = new_user(&moto, "alice").await;
    let bob = new_user(&moto, "bob").await;
    let (b, s) = setup(&moto, SERVER_ID).await;

    call(&b, &s, Operation::Create, "role/app", json!({
        "auth_type": "iam", "bound_iam_principal_arn": [alice.arn], "token_policies": "dev,ops", "token_ttl": "1h",
    })).await.unwrap();
    let role = call(&b, &s, Operation::Read, "role/app", json!({}))
        .await
        .unwrap()
        .unwrap()
        .data
        .unwrap();
    let ids = role["bound_iam_principal_id"].as_array().unwrap();
    assert_eq!(ids.len(), 1, "{role:?}");
    assert!(!ids[0].as_str().unwrap().is_empty(), "{role:?}");
    let keys = call(&b, &s, Operation::List, "roles", json!({}))
        .await
        .unwrap()
        .unwrap()
        .data
        .unwrap();
    assert_eq!(keys["keys"], json!(["app"]));

    let resp = call(
        &b,
        &s,
        Operation::Update,
        "login",
        login_body(
            &alice,
            "app",
            Build {
                server_id: Some(SERVER_ID),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let auth = resp.auth.unwrap();
    assert_eq!(auth.policies, vec!["dev", "ops"]);
    assert_eq!(auth.metadata["client_arn"], alice.arn);
    assert_eq!(auth.metadata["canonical_arn"], alice.arn);
    assert_eq!(auth.alias_name, role["role_id"].as_str().unwrap());
    assert_eq!(auth.lease.ttl.as_secs(), 3600);

    // Bob signs a valid request but is not bound to the role.
    let e = call(
        &b,
        &s,
        Operation::Update,
        "login",
        login_body(
            &bob,
            "app",
            Build {
                server_id: Some(SERVER_ID),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("does not belong to the role"), "{e}");

    // Renewal: agreed while the role binds Alice; refused once it is gone.
    let mut r = req(Operation::Renew, "login");
    r.auth = Some(auth.clone());
    let renewed = b.handle(&r, &s).await.unwrap().unwrap().auth.unwrap();
    assert_eq!(renewed.lease.ttl.as_secs(), 3600);
    call(&b, &s, Operation::Delete, "role/app", json!({}))
        .await
        .unwrap();
    assert!(b.handle(&r, &s).await.is_err());
}

#[tokio::test]
async fn glob_binding_without_resolution() {
    let Some(moto) = moto() else { return };
    let carol = new_user(&moto, "carolglob").await;
    let (b, s) = setup(&moto, "").await;
    let account = carol.arn.split(':').nth(4).unwrap().to_string();
    call(
        &b,
        &s,
        Operation::Create,
        "role/globbed",
        json!({
            "bound_iam_principal_arn": format!("arn:aws:iam::{account}:user/carolglob-*"),
            "resolve_aws_unique_ids": false,
        }),
    )
    .await
    .unwrap();
    let resp = call(
        &b,
        &s,
        Operation::Update,
        "login",
        login_body(&carol, "globbed", Build::default()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.auth.unwrap().metadata["client_arn"], carol.arn);
    // Unique IDs cannot be switched off once on.
    call(
        &b,
        &s,
        Operation::Create,
        "role/strict",
        json!({"bound_iam_principal_arn": carol.arn}),
    )
    .await
    .unwrap();
    let e = call(
        &b,
        &s,
        Operation::Update,
        "role/strict",
        json!({"resolve_aws_unique_ids": false}),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("resolve_aws_unique_ids"), "{e}");
    // A bound user that IAM does not know is refused at role write.
    let e = call(&b, &s, Operation::Create, "role/ghost", json!({
        "bound_iam_principal_arn": format!("arn:aws:iam::{account}:user/nobody-{}", uuid::Uuid::new_v4().simple()),
    })).await.unwrap_err();
    assert!(e.to_string().contains("bound_iam_principal_arn"), "{e}");
}

#[tokio::test]
async fn tampered_requests_are_refused() {
    let Some(moto) = moto() else { return };
    let dave = new_user(&moto, "dave").await;
    let (b, s) = setup(&moto, SERVER_ID).await;
    call(
        &b,
        &s,
        Operation::Create,
        "role/r",
        json!({"bound_iam_principal_arn": dave.arn}),
    )
    .await
    .unwrap();
    let sid = Some(SERVER_ID);
    let cases: Vec<(&str, Build<'_>, &str)> = vec![
        (
            "request URL at another host",
            Build {
                url: Some("https://sts.attacker.example/"),
                server_id: sid,
                ..Default::default()
            },
            "iam_request_url",
        ),
        (
            "another Action",
            Build {
                body: Some("Action=GetSessionToken&Version=2011-06-15"),
                server_id: sid,
                ..Default::default()
            },
            "GetCallerIdentity",
        ),
        (
            "extra body parameter",
            Build {
                body: Some("Action=GetCallerIdentity&Version=2011-06-15&DurationSeconds=900"),
                server_id: sid,
                ..Default::default()
            },
            "unexpected parameter",
        ),
        (
            "extra unsigned header",
            Build {
                server_id: sid,
                unsigned_extra: vec![("x-amz-security-token", "forged")],
                ..Default::default()
            },
            "not covered by the signature",
        ),
        (
            "unknown header, even signed",
            Build {
                server_id: sid,
                signed_extra: vec![("x-forwarded-host", "sts.attacker.example")],
                ..Default::default()
            },
            "not allowed",
        ),
        (
            "missing server ID",
            Build::default(),
            "X-Vault-AWS-IAM-Server-ID",
        ),
        (
            "wrong server ID",
            Build {
                server_id: Some("other.example"),
                ..Default::default()
            },
            "does not match this server",
        ),
        (
            "unsigned server ID",
            Build {
                unsigned_extra: vec![("x-vault-aws-iam-server-id", SERVER_ID)],
                ..Default::default()
            },
            "not covered by the signature",
        ),
    ];
    for (what, build, want) in cases {
        let e = call(
            &b,
            &s,
            Operation::Update,
            "login",
            login_body(&dave, "r", build),
        )
        .await
        .expect_err(what);
        assert!(matches!(e, BackendError::BadRequest(_)), "{what}: {e:?}");
        assert!(e.to_string().contains(want), "{what}: {e}");
    }
    // Method other than POST.
    let mut body = login_body(
        &dave,
        "r",
        Build {
            server_id: sid,
            ..Default::default()
        },
    );
    body["iam_http_request_method"] = json!("GET");
    let e = call(&b, &s, Operation::Update, "login", body)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("iam_http_request_method"), "{e}");
    // The untampered request still works.
    call(
        &b,
        &s,
        Operation::Update,
        "login",
        login_body(
            &dave,
            "r",
            Build {
                server_id: sid,
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn role_and_config_validation() {
    let b = AwsAuth::new();
    let s = MemoryStorage::new();
    let e = call(
        &b,
        &s,
        Operation::Create,
        "role/x",
        json!({"auth_type": "ec2", "bound_iam_principal_arn": "arn:aws:iam::1:role/*"}),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("auth_type"), "{e}");
    let e = call(&b, &s, Operation::Create, "role/x", json!({}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("bound_iam_principal_arn"), "{e}");
    let e = call(
        &b,
        &s,
        Operation::Create,
        "role/x",
        json!({"bound_iam_principal_arn": "arn:aws:iam::1:role/*", "bound_ami_id": "ami-1"}),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("bound_ami_id"), "{e}");
    let e = call(
        &b,
        &s,
        Operation::Update,
        "config/client",
        json!({"sts_endpoint": "ftp://x", "sts_region": "us-east-1"}),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("sts_endpoint"), "{e}");
    call(
        &b,
        &s,
        Operation::Update,
        "config/client",
        json!({"access_key": "AK", "secret_key": "SK"}),
    )
    .await
    .unwrap();
    let c = call(&b, &s, Operation::Read, "config/client", json!({}))
        .await
        .unwrap()
        .unwrap()
        .data
        .unwrap();
    assert_eq!(c["access_key"], "AK");
    assert!(
        c.get("secret_key").is_none(),
        "secret key must not be returned"
    );
    assert!(b
        .special_paths()
        .unauthenticated
        .contains(&"login".to_string()));
}

/// hvac's `auth.aws.create_role(ttl=.., max_ttl=..)` was ignored: the role
/// kept the mount's TTLs. Needs no AWS: glob binding, no ID resolution.
#[tokio::test]
async fn role_accepts_legacy_ttl_max_ttl_policies_period() {
    let b = AwsAuth::new();
    let s = MemoryStorage::new();
    call(
        &b,
        &s,
        Operation::Create,
        "role/legacy",
        json!({
            "auth_type": "iam", "bound_iam_principal_arn": "arn:aws:iam::123456789012:role/app-*",
            "resolve_aws_unique_ids": false,
            "ttl": "30m", "max_ttl": "2h", "policies": "a,b", "period": "1h",
        }),
    )
    .await
    .unwrap();
    let read = || async {
        call(&b, &s, Operation::Read, "role/legacy", json!({}))
            .await
            .unwrap()
            .unwrap()
            .data
            .unwrap()
    };
    let d = read().await;
    assert_eq!(d["token_ttl"], json!(1800));
    assert_eq!(d["token_max_ttl"], json!(7200));
    assert_eq!(d["token_policies"], json!(["a", "b"]));
    assert_eq!(d["token_period"], json!(3600));
    call(
        &b,
        &s,
        Operation::Update,
        "role/legacy",
        json!({"max_ttl": "3h", "token_max_ttl": "4h"}),
    )
    .await
    .unwrap();
    let d = read().await;
    assert_eq!(d["token_max_ttl"], json!(4 * 3600), "token_ name wins");
    assert_eq!(d["token_ttl"], json!(1800), "absent fields are kept");
}
