//! The AWS secrets engine against moto in server mode: real signed IAM and
//! STS calls, checked by asking moto's IAM what exists. Skips (with a
//! notice) when moto is unreachable and TRESOR_MOTO_ENDPOINT is unset;
//! `scripts/test` starts moto and sets it.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use serde_json::{json, Value};
use tresor_engines::secrets::aws::AwsSecrets;
use tresor_sdk::backend::StaticSystemView;
use tresor_sdk::testing::{moto, req, MemoryStorage};
use tresor_sdk::{Backend, BackendError, Operation, Response, Secret};

/// A signed IAM call as the test's own admin; the status and body.
async fn iam_raw(moto: &str, params: &[(&str, &str)]) -> (u16, String) {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        form.append_pair(k, v);
    }
    form.append_pair("Version", "2010-05-08");
    let body = form.finish();
    let url = format!("{moto}/");
    let host = moto.trim_start_matches("http://").to_string();
    let headers = [
        ("host", host.as_str()),
        (
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        ),
    ];
    let identity = Credentials::new("test", "test", None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("iam")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        "POST",
        &url,
        headers.iter().copied(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .unwrap();
    let (instr, _) = sign(signable, &params).unwrap().into_parts();
    let mut b = reqwest::Client::new().post(&url).body(body);
    for (k, v) in headers.iter().filter(|(k, _)| *k != "host") {
        b = b.header(*k, *v);
    }
    for (k, v) in instr.headers() {
        b = b.header(k, v);
    }
    let r = b.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn iam(moto: &str, params: &[(&str, &str)]) -> String {
    let (st, body) = iam_raw(moto, params).await;
    assert!((200..300).contains(&st), "IAM {params:?}: {st} {body}");
    body
}

fn xml_field(xml: &str, tag: &str) -> String {
    let start = xml.find(&format!("<{tag}>")).unwrap() + tag.len() + 2;
    let end = start + xml[start..].find(&format!("</{tag}>")).unwrap();
    xml[start..end].to_string()
}

fn uniq(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A moto IAM user with an access key, to act as the engine's root.
async fn root_user(moto: &str) -> (String, String, String) {
    let name = uniq("tresor-root");
    iam(moto, &[("Action", "CreateUser"), ("UserName", &name)]).await;
    let k = iam(moto, &[("Action", "CreateAccessKey"), ("UserName", &name)]).await;
    (
        name,
        xml_field(&k, "AccessKeyId"),
        xml_field(&k, "SecretAccessKey"),
    )
}

struct Env {
    b: AwsSecrets,
    s: MemoryStorage,
    moto: String,
    root_name: String,
}

async fn setup(moto: &str) -> Env {
    let b = AwsSecrets::new(Arc::new(StaticSystemView {
        default_lease_ttl: Duration::from_secs(3600),
        max_lease_ttl: Duration::from_secs(7200),
    }));
    let s = MemoryStorage::new();
    let (root_name, key, secret) = root_user(moto).await;
    let e = Env {
        b,
        s,
        moto: moto.to_string(),
        root_name,
    };
    e.call(
        Operation::Update,
        "config/root",
        json!({
            "access_key": key, "secret_key": secret, "region": "us-east-1",
            "iam_endpoint": moto, "sts_endpoint": moto, "max_retries": 1,
        }),
    )
    .await
    .unwrap();
    e
}

impl Env {
    async fn call(
        &self,
        op: Operation,
        path: &str,
        body: Value,
    ) -> Result<Option<Response>, BackendError> {
        let mut r = req(op, path).body(body);
        r.display_name = "token".into();
        self.b.handle(&r, &self.s).await
    }

    async fn data(&self, op: Operation, path: &str, body: Value) -> (Value, Response) {
        let resp = self.call(op, path, body).await.unwrap().unwrap();
        (Value::Object(resp.data.clone().unwrap_or_default()), resp)
    }

    async fn lease_op(
        &self,
        op: Operation,
        secret: &Secret,
    ) -> Result<Option<Response>, BackendError> {
        let mut r = req(op, "creds/x");
        r.secret = Some(secret.clone());
        self.b.handle(&r, &self.s).await
    }

    async fn user_exists(&self, user: &str) -> bool {
        let (st, body) = iam_raw(&self.moto, &[("Action", "GetUser"), ("UserName", user)]).await;
        match st {
            200 => true,
            404 | 400 if body.contains("NoSuchEntity") => false,
            _ => panic!("GetUser {user}: {st} {body}"),
        }
    }
}

const POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListAllMyBuckets","Resource":"*"}]}"#;

#[tokio::test]
async fn iam_user_credentials_are_created_and_revoked() {
    let Some(moto) = moto() else { return };
    let e = setup(&moto).await;

    // The root config answers without the secret.
    let (conf, _) = e.data(Operation::Read, "config/root", json!({})).await;
    assert!(conf.get("secret_key").is_none(), "{conf}");
    assert_eq!(conf["iam_endpoint"], moto);
    assert_eq!(conf["max_retries"], 1);

    e.call(
        Operation::Update,
        "config/lease",
        json!({"lease": "1h", "lease_max": "24h"}),
    )
    .await
    .unwrap();
    let (lease, _) = e.data(Operation::Read, "config/lease", json!({})).await;
    assert_eq!(lease, json!({"lease": "1h0m0s", "lease_max": "24h0m0s"}));

    let group = uniq("tresor-devs");
    iam(&moto, &[("Action", "CreateGroup"), ("GroupName", &group)]).await;
    let managed = iam(
        &moto,
        &[
            ("Action", "CreatePolicy"),
            ("PolicyName", &uniq("tresor-managed")),
            ("PolicyDocument", POLICY),
        ],
    )
    .await;
    let managed_arn = xml_field(&managed, "Arn");

    e.call(
        Operation::Create,
        "roles/web",
        json!({
            "credential_type": "iam_user",
            "policy_document": serde_json::from_str::<Value>(POLICY).unwrap(),
            "policy_arns": [managed_arn],
            "iam_groups": group,
            "iam_tags": ["team=web", "env=test"],
            "user_path": "/tresor/",
            "permissions_boundary_arn": managed_arn,
        }),
    )
    .await
    .unwrap();
    let (role, _) = e.data(Operation::Read, "roles/web", json!({})).await;
    assert_eq!(role["credential_type"], "iam_user");
    assert_eq!(role["iam_tags"], json!({"env": "test", "team": "web"}));
    let doc: Value = serde_json::from_str(role["policy_document"].as_str().unwrap()).unwrap();
    assert_eq!(doc, serde_json::from_str::<Value>(POLICY).unwrap());
    let (list, _) = e.data(Operation::List, "roles/", json!({})).await;
    assert_eq!(list["keys"], json!(["web"]));

    let (creds, resp) = e.data(Operation::Read, "creds/web", json!({})).await;
    let key = creds["access_key"].as_str().unwrap().to_string();
    assert!(!creds["secret_key"].as_str().unwrap().is_empty());
    assert_eq!(creds["security_token"], Value::Null);
    let secret = resp.secret.unwrap();
    assert!(secret.lease.renewable);
    assert_eq!(secret.lease.ttl, Duration::from_secs(3600));
    assert_eq!(secret.lease.max_ttl, Duration::from_secs(86400));
    let user = secret.internal_data["username"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(user.starts_with("vault-token-web-"), "{user}");
    assert!(user.len() <= 64);

    // The user exists in IAM with everything the role asked for.
    let got = iam(&moto, &[("Action", "GetUser"), ("UserName", &user)]).await;
    assert_eq!(xml_field(&got, "Path"), "/tresor/");
    // (moto accepts PermissionsBoundary on CreateUser but does not keep it,
    // so the boundary cannot be checked here.)
    let inline = iam(
        &moto,
        &[("Action", "ListUserPolicies"), ("UserName", &user)],
    )
    .await;
    assert!(inline.contains("<member>web</member>"), "{inline}");
    let attached = iam(
        &moto,
        &[("Action", "ListAttachedUserPolicies"), ("UserName", &user)],
    )
    .await;
    assert!(attached.contains(&managed_arn), "{attached}");
    let groups = iam(
        &moto,
        &[("Action", "ListGroupsForUser"), ("UserName", &user)],
    )
    .await;
    assert!(groups.contains(&group), "{groups}");
    let keys = iam(&moto, &[("Action", "ListAccessKeys"), ("UserName", &user)]).await;
    assert!(keys.contains(&key), "{keys}");
    let tags = iam(&moto, &[("Action", "ListUserTags"), ("UserName", &user)]).await;
    assert!(tags.contains("team") && tags.contains("web"), "{tags}");

    // Renewal keeps the configured lease.
    let renewed = e
        .lease_op(Operation::Renew, &secret)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renewed.secret.unwrap().lease.ttl, Duration::from_secs(3600));

    // Revocation removes the user and all it holds; a second one is a no-op.
    e.lease_op(Operation::Revoke, &secret).await.unwrap();
    assert!(!e.user_exists(&user).await);
    e.lease_op(Operation::Revoke, &secret).await.unwrap();
    // The group and the managed policy themselves are left alone.
    iam(&moto, &[("Action", "GetGroup"), ("GroupName", &group)]).await;
    iam(
        &moto,
        &[("Action", "GetPolicy"), ("PolicyArn", &managed_arn)],
    )
    .await;

    // An IAM-user role is not served on sts/.
    let err = e
        .call(Operation::Read, "sts/web", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::BadRequest(_)), "{err}");
}

#[tokio::test]
async fn assumed_role_and_federation_token() {
    let Some(moto) = moto() else { return };
    let e = setup(&moto).await;
    let role_name = uniq("tresor-target");
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":"sts:AssumeRole"}]}"#;
    let created = iam(
        &moto,
        &[
            ("Action", "CreateRole"),
            ("RoleName", &role_name),
            ("AssumeRolePolicyDocument", trust),
        ],
    )
    .await;
    let role_arn = xml_field(&created, "Arn");

    e.call(
        Operation::Update,
        "roles/deploy",
        json!({
            "credential_type": "assumed_role", "role_arns": [role_arn],
            "default_sts_ttl": "15m", "max_sts_ttl": "1h",
        }),
    )
    .await
    .unwrap();
    let (creds, resp) = e.data(Operation::Read, "sts/deploy", json!({})).await;
    assert!(!creds["access_key"].as_str().unwrap().is_empty());
    assert!(!creds["secret_key"].as_str().unwrap().is_empty());
    assert!(!creds["security_token"].as_str().unwrap().is_empty());
    let arn = creds["arn"].as_str().unwrap();
    assert!(
        arn.contains(&format!("assumed-role/{role_name}/vault-")),
        "{arn}"
    );
    let secret = resp.secret.unwrap();
    assert!(!secret.lease.renewable);
    let ttl = secret.lease.ttl.as_secs();
    assert!((890..=900).contains(&ttl), "ttl {ttl}");
    // STS credentials expire at AWS; revoking them is a no-op.
    e.lease_op(Operation::Revoke, &secret).await.unwrap();

    // POST with a TTL above the role's maximum: capped, with a warning;
    // a chosen session name is used as given.
    let (creds, resp) = e
        .data(
            Operation::Update,
            "creds/deploy",
            json!({"ttl": "2h", "role_session_name": "ci-job-42", "role_arn": role_arn}),
        )
        .await;
    assert!(creds["arn"].as_str().unwrap().ends_with("/ci-job-42"));
    assert!(!resp.warnings.is_empty());
    assert!(resp.secret.unwrap().lease.ttl.as_secs() <= 3600);

    for (body, what) in [
        (
            json!({"role_arn": "arn:aws:iam::123456789012:role/other"}),
            "foreign role_arn",
        ),
        (
            json!({"role_session_name": "bad/name"}),
            "hostile session name",
        ),
    ] {
        let err = e
            .call(Operation::Update, "sts/deploy", body)
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::BadRequest(_)), "{what}: {err}");
    }

    e.call(
        Operation::Update,
        "roles/fed",
        json!({"credential_type": "federation_token", "policy_document": POLICY}),
    )
    .await
    .unwrap();
    let (creds, resp) = e
        .data(Operation::Update, "sts/fed", json!({"ttl": 900}))
        .await;
    assert!(!creds["security_token"].as_str().unwrap().is_empty());
    assert!(
        creds["arn"]
            .as_str()
            .unwrap()
            .contains(":federated-user/vault-"),
        "{creds}"
    );
    let secret = resp.secret.unwrap();
    assert!(!secret.lease.renewable);
    let err = e.lease_op(Operation::Renew, &secret).await.unwrap_err();
    assert!(matches!(err, BackendError::BadRequest(_)), "{err}");
}

#[tokio::test]
async fn rotate_root_then_credentials_still_work() {
    let Some(moto) = moto() else { return };
    let e = setup(&moto).await;
    let (before, _) = e.data(Operation::Read, "config/root", json!({})).await;
    let old = before["access_key"].as_str().unwrap().to_string();

    let (rotated, resp) = e
        .data(Operation::Update, "config/rotate-root", json!({}))
        .await;
    assert!(resp.warnings.is_empty(), "{:?}", resp.warnings);
    let new = rotated["access_key"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert!(rotated.get("secret_key").is_none());
    let (after, _) = e.data(Operation::Read, "config/root", json!({})).await;
    assert_eq!(after["access_key"], new);
    let keys = iam(
        &moto,
        &[("Action", "ListAccessKeys"), ("UserName", &e.root_name)],
    )
    .await;
    assert!(keys.contains(&new) && !keys.contains(&old), "{keys}");

    e.call(
        Operation::Update,
        "roles/after",
        json!({"credential_type": "iam_user", "policy_document": POLICY}),
    )
    .await
    .unwrap();
    let (_, resp) = e.data(Operation::Read, "creds/after", json!({})).await;
    let secret = resp.secret.unwrap();
    let user = secret.internal_data["username"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(e.user_exists(&user).await);
    e.lease_op(Operation::Revoke, &secret).await.unwrap();
    assert!(!e.user_exists(&user).await);

    // Without configured keys there is nothing tresor may rotate.
    let fresh = AwsSecrets::new(Arc::new(StaticSystemView {
        default_lease_ttl: Duration::from_secs(60),
        max_lease_ttl: Duration::from_secs(60),
    }));
    let err = fresh
        .handle(
            &req(Operation::Update, "config/rotate-root"),
            &MemoryStorage::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::BadRequest(_)), "{err}");
}

#[tokio::test]
async fn hostile_names_are_refused_or_escaped() {
    let Some(moto) = moto() else { return };
    let e = setup(&moto).await;
    let good = json!({"credential_type": "iam_user", "policy_document": POLICY});

    // Role names that are not one path segment never reach a handler.
    for path in [
        "roles/../config/root",
        "roles/a/b",
        "roles/a b",
        "creds/../roles/x",
    ] {
        let err = e
            .call(Operation::Update, path, good.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(err, BackendError::UnsupportedPath),
            "{path}: {err}"
        );
    }
    for (body, what) in [
        (
            json!({"credential_type": "iam_user", "policy_document": POLICY, "user_path": "/../"}),
            "dot path",
        ),
        (
            json!({"credential_type": "iam_user", "policy_document": POLICY, "user_path": "/a&Action=DeleteUser/"}),
            "query in path",
        ),
        (
            json!({"credential_type": "iam_user", "policy_document": POLICY, "user_path": "tresor"}),
            "relative path",
        ),
        (
            json!({"credential_type": "iam_user", "policy_arns": ["arn:aws:iam::1:user/x"]}),
            "user as policy",
        ),
        (
            json!({"credential_type": "iam_user", "iam_groups": ["a/b"]}),
            "group with slash",
        ),
        (
            json!({"credential_type": "iam_user", "policy_document": "not json"}),
            "bad policy",
        ),
        (json!({"credential_type": "assumed_role"}), "no role_arns"),
        (
            json!({"credential_type": "iam_user", "policy_document": POLICY, "role_arns": ["arn:aws:iam::1:role/x"]}),
            "role_arns on iam_user",
        ),
        (json!({"credential_type": "root"}), "unknown type"),
        (json!({"policy_document": POLICY}), "no type"),
    ] {
        let err = e
            .call(Operation::Update, "roles/evil", body)
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::BadRequest(_)), "{what}: {err}");
    }
    let err = e
        .call(
            Operation::Update,
            "config/root",
            json!({"username_template": "{{ env \"HOME\" }}"}),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::BadRequest(_)), "{err}");

    // A display name full of characters IAM refuses is escaped, not passed on.
    e.call(Operation::Update, "roles/odd.name@x", good)
        .await
        .unwrap();
    let mut r = req(Operation::Read, "creds/odd.name@x");
    r.display_name = "oidc-Jane Doe/../admin".into();
    let resp = e.b.handle(&r, &e.s).await.unwrap().unwrap();
    let secret = resp.secret.unwrap();
    let user = secret.internal_data["username"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        user.starts_with("vault-oidc-Jane-Doe-..-admin-odd.name@x-"),
        "{user}"
    );
    assert!(e.user_exists(&user).await);
    e.lease_op(Operation::Revoke, &secret).await.unwrap();
    assert!(!e.user_exists(&user).await);

    // A custom template is rendered (and its output checked).
    e.call(
        Operation::Update,
        "config/root",
        json!({"username_template": "{{ printf \"tr-%s-%s\" .PolicyName (random 8) | lowercase }}"}),
    )
    .await
    .unwrap();
    let (_, resp) = e.data(Operation::Read, "creds/odd.name@x", json!({})).await;
    let secret = resp.secret.unwrap();
    let user = secret.internal_data["username"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        user.starts_with("tr-odd.name@x-") && user.len() == 22,
        "{user}"
    );
    e.lease_op(Operation::Revoke, &secret).await.unwrap();
    assert!(!e.user_exists(&user).await);
}
