//! `tresor login -method=aws` end to end: the real binary signs an
//! `sts:GetCallerIdentity` request with an IAM user's keys made in moto, a
//! dev server replays it to moto and issues a token. Skips (with a notice)
//! when moto is unreachable and TRESOR_MOTO_ENDPOINT is unset;
//! `scripts/test` starts moto and sets it.

use crate::common::{dev_server, Cli};
use tresor_sdk::testing::moto;

use std::time::{SystemTime, UNIX_EPOCH};

const SERVER_ID: &str = "tresor.example.com";
const ROOT: &str = "aws-cli-root";

/// One IAM call to moto. Moto routes a request by the service in the
/// Authorization header's credential scope and does not check signatures,
/// so the admin calls that set the test up carry a scope and no real
/// signature; the login itself is signed for real by the CLI.
async fn iam(moto: &str, body: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{moto}/"))
        .header("content-type", "application/x-www-form-urlencoded; charset=utf-8")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=00",
        )
        .body(body.to_string())
        .send()
        .await
        .expect("moto IAM");
    let status = r.status();
    let text = r.text().await.expect("moto IAM body");
    assert!(status.is_success(), "IAM {body}: {status} {text}");
    text
}

fn xml_field(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml.find(&open).expect("tag") + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>")).expect("end tag");
    xml[start..end].to_string()
}

struct User {
    arn: String,
    key: String,
    secret: String,
}

async fn new_user(moto: &str, prefix: &str) -> User {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let name = format!("{prefix}-{}-{nanos}", std::process::id());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_login_method_aws_against_moto() {
    let Some(moto) = moto() else { return };
    let alice = new_user(&moto, "cli-alice").await;
    let bob = new_user(&moto, "cli-bob").await;

    let dir = tempfile::tempdir().expect("tempdir");
    let server = dev_server(dir.path(), ROOT).await;
    let addr = server.addr.as_str();

    let admin = Cli::new(addr, Some(ROOT), &dir.path().join("admin"));
    let admin = |args: &[&str]| admin.ok(args);
    admin(&["auth", "enable", "aws"]);
    admin(&[
        "write",
        "auth/aws/config/client",
        &format!("sts_endpoint={moto}"),
        "sts_region=us-east-1",
        &format!("iam_endpoint={moto}"),
        "access_key=test",
        "secret_key=test",
        &format!("iam_server_id_header_value={SERVER_ID}"),
    ]);
    admin(&[
        "write",
        "auth/aws/role/dev",
        "auth_type=iam",
        &format!("bound_iam_principal_arn={}", alice.arn),
        "token_policies=dev",
    ]);

    let user = Cli::new(addr, None, &dir.path().join("alice"));
    let token_file = user.token_file();
    let aws_env = user
        .with_env("AWS_ACCESS_KEY_ID", &alice.key)
        .with_env("AWS_SECRET_ACCESS_KEY", &alice.secret);
    let header = format!("header_value={SERVER_ID}");

    // The right server ID, keys from the environment: logged in and saved.
    let out = aws_env.ok(&["login", "-method=aws", "role=dev", &header]);
    assert!(out.contains("Success! You are now authenticated"), "{out}");
    assert!(!out.contains(&alice.secret), "the AWS secret was printed");
    let token = std::fs::read_to_string(&token_file).expect("token saved");
    let token = token.trim().to_string();
    assert!(!token.is_empty());
    let lookup = user.ok(&["-format=json", "token", "lookup"]);
    let lookup: serde_json::Value = serde_json::from_str(&lookup).expect("lookup JSON");
    assert_eq!(
        lookup["data"]["policies"],
        serde_json::json!(["default", "dev"]),
        "{lookup}"
    );
    assert_eq!(
        lookup["data"]["meta"]["client_arn"],
        alice.arn.as_str(),
        "{lookup}"
    );

    // A server ID meant for another server is refused, and nothing is saved.
    let err = aws_env
        .fails(
            1,
            &[
                "login",
                "-method=aws",
                "role=dev",
                "header_value=other.example.com",
            ],
        )
        .stderr;
    assert!(err.contains("Error authenticating"), "{err}");
    assert!(err.contains("X-Vault-AWS-IAM-Server-ID"), "{err}");
    // So is a login without the header this server requires.
    let err = aws_env
        .fails(1, &["login", "-method=aws", "role=dev"])
        .stderr;
    assert!(err.contains("X-Vault-AWS-IAM-Server-ID"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&token_file)
            .expect("token file")
            .trim(),
        token
    );

    // Keys given as fields instead of the environment; -path names the mount.
    let out = user.ok(&[
        "login",
        "-method=aws",
        "-path=aws",
        "-token-only",
        "role=dev",
        &header,
        &format!("aws_access_key_id={}", alice.key),
        &format!("aws_secret_access_key={}", alice.secret),
    ]);
    assert!(!out.trim().is_empty() && out.trim() != token, "{out}");

    // Someone else's keys do not satisfy the role's bound ARN.
    let bob_env = user
        .with_env("AWS_ACCESS_KEY_ID", &bob.key)
        .with_env("AWS_SECRET_ACCESS_KEY", &bob.secret);
    let err = bob_env
        .fails(1, &["login", "-method=aws", "role=dev", &header])
        .stderr;
    assert!(err.contains("Error authenticating"), "{err}");
    assert!(!err.contains(&bob.secret), "the AWS secret was printed");

    // No credentials anywhere: a clear message before any request.
    let err = user
        .fails(1, &["login", "-method=aws", "role=dev", &header])
        .stderr;
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
    drop(server);
}
