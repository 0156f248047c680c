//! The AWS secrets engine through the HTTP API, against moto: mount,
//! configure, read IAM-user credentials with a lease, revoke the lease and
//! see the user gone from IAM. Skips (with a notice) when moto is
//! unreachable and TRESOR_MOTO_ENDPOINT is unset.

#![allow(clippy::unwrap_used)]

use crate::common;
use tresor_sdk::testing::moto;

use crate::common::ROOT;
use serde_json::{json, Value};

/// An IAM call of the test's own. moto checks no signatures, only the
/// credential scope of the Authorization header to pick the service; the
/// engine's real SigV4 signing is exercised by tresor-engines' tests.
async fn iam(moto: &str, params: &[(&str, &str)]) -> (u16, String) {
    let auth = "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=00";
    let mut form: Vec<(&str, &str)> = params.to_vec();
    form.push(("Version", "2010-05-08"));
    let r = common::client()
        .post(format!("{moto}/"))
        .header("authorization", auth)
        .form(&form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn xml_field(xml: &str, tag: &str) -> String {
    let start = xml.find(&format!("<{tag}>")).unwrap() + tag.len() + 2;
    let end = start + xml[start..].find(&format!("</{tag}>")).unwrap();
    xml[start..end].to_string()
}

async fn send(c: &reqwest::Client, method: &str, url: String, body: Option<Value>) -> (u16, Value) {
    let mut b = c
        .request(common::method(method), url)
        .header("X-Vault-Token", ROOT);
    if let Some(body) = body {
        b = b.json(&body);
    }
    let r = b.send().await.unwrap();
    let st = r.status().as_u16();
    let text = r.text().await.unwrap();
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn iam_user_lease_revoked_through_sys_leases() {
    let Some(moto) = moto() else { return };
    let root = format!("tresor-http-root-{}", uuid::Uuid::new_v4().simple());
    let (st, b) = iam(&moto, &[("Action", "CreateUser"), ("UserName", &root)]).await;
    assert_eq!(st, 200, "{b}");
    let (st, keys) = iam(&moto, &[("Action", "CreateAccessKey"), ("UserName", &root)]).await;
    assert_eq!(st, 200, "{keys}");

    let s = common::dev().await;
    let c = common::client();
    let (st, b) = send(
        &c,
        "POST",
        s.url("/v1/sys/mounts/aws"),
        Some(json!({"type": "aws"})),
    )
    .await;
    assert!(st == 204 || st == 200, "{st} {b}");
    let (st, b) = send(
        &c,
        "POST",
        s.url("/v1/aws/config/root"),
        Some(json!({
            "access_key": xml_field(&keys, "AccessKeyId"),
            "secret_key": xml_field(&keys, "SecretAccessKey"),
            "region": "us-east-1", "iam_endpoint": moto, "sts_endpoint": moto,
        })),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = send(&c, "GET", s.url("/v1/aws/config/root"), None).await;
    assert_eq!(st, 200, "{b}");
    assert!(b["data"].get("secret_key").is_none(), "{b}");

    let (st, b) = send(
        &c,
        "POST",
        s.url("/v1/aws/roles/web"),
        Some(json!({
            "credential_type": "iam_user",
            "policy_document": "{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"s3:ListAllMyBuckets\",\"Resource\":\"*\"}]}",
        })),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, b) = send(&c, "LIST", s.url("/v1/aws/roles"), None).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["keys"], json!(["web"]));

    // As hvac's generate_credentials: a GET with query parameters.
    let (st, b) = send(&c, "GET", s.url("/v1/aws/creds/web?name=web"), None).await;
    assert_eq!(st, 200, "{b}");
    let lease_id = b["lease_id"].as_str().unwrap().to_string();
    assert!(lease_id.starts_with("aws/creds/web/"), "{lease_id}");
    assert_eq!(b["renewable"], true);
    assert!(b["lease_duration"].as_u64().unwrap() > 0);
    assert_eq!(b["data"]["security_token"], Value::Null);
    let access_key = b["data"]["access_key"].as_str().unwrap().to_string();

    // Find the user by its access key.
    let (st, users) = iam(&moto, &[("Action", "ListUsers"), ("MaxItems", "1000")]).await;
    assert_eq!(st, 200);
    let mut user = None;
    for name in users
        .split("<UserName>")
        .skip(1)
        .filter_map(|p| p.split("</UserName>").next())
        .filter(|n| n.starts_with("vault-root-web-") || n.starts_with("vault-token-web-"))
    {
        let (_, k) = iam(&moto, &[("Action", "ListAccessKeys"), ("UserName", name)]).await;
        if k.contains(&access_key) {
            user = Some(name.to_string());
        }
    }
    let user = user.expect("the lease's IAM user exists in moto");

    let (st, b) = send(
        &c,
        "PUT",
        s.url("/v1/sys/leases/renew"),
        Some(json!({"lease_id": lease_id, "increment": 600})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (st, b) = send(
        &c,
        "PUT",
        s.url("/v1/sys/leases/revoke"),
        Some(json!({"lease_id": lease_id})),
    )
    .await;
    assert_eq!(st, 204, "{b}");
    let (st, body) = iam(&moto, &[("Action", "GetUser"), ("UserName", &user)]).await;
    assert!(st != 200 && body.contains("NoSuchEntity"), "{st} {body}");
}
