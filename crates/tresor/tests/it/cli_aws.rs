//! `tresor login -method=aws` end to end: the real binary signs an
//! `sts:GetCallerIdentity` request with an IAM user's keys made in moto, a
//! dev server replays it to moto and issues a token. Skips (with a notice)
//! when moto is unreachable and TRESOR_MOTO_ENDPOINT is unset;
//! `scripts/test` starts moto and sets it.

use crate::common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

const SERVER_ID: &str = "tresor.example.com";
const ROOT: &str = "aws-cli-root";

async fn moto() -> Option<String> {
    let env = std::env::var("TRESOR_MOTO_ENDPOINT")
        .ok()
        .filter(|s| !s.is_empty());
    let url = env
        .clone()
        .unwrap_or_else(|| "http://127.0.0.1:5000".into());
    let ok = reqwest::get(format!("{url}/moto-api/")).await.is_ok();
    match (ok, env) {
        (true, _) => Some(url),
        (false, Some(_)) => panic!("TRESOR_MOTO_ENDPOINT={url} is set but unreachable"),
        (false, None) => {
            eprintln!("SKIPPED: moto is not reachable at {url} and TRESOR_MOTO_ENDPOINT is unset (scripts/test starts it)");
            None
        }
    }
}

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

/// Runs the CLI with only what we give it: no TRESOR_/VAULT_/AWS_ variables
/// from the developer's shell, HOME in the test directory.
fn tresor(home: &Path, addr: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    std::fs::create_dir_all(home).expect("home");
    let mut c = Command::new(env!("CARGO_BIN_EXE_tresor"));
    c.args(args).current_dir(home);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("TRESOR_") || k.starts_with("VAULT_") || k.starts_with("AWS_") {
            c.env_remove(k.as_ref());
        }
    }
    c.env("HOME", home).env("TRESOR_ADDR", addr);
    c.envs(env.iter().copied());
    c.stdin(Stdio::null()).output().expect("run tresor")
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(home: &Path, addr: &str, env: &[(&str, &str)], args: &[&str]) -> String {
    let o = tresor(home, addr, env, args);
    assert!(
        o.status.success(),
        "tresor {}: {}",
        args.join(" "),
        show(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(home: &Path, addr: &str, env: &[(&str, &str)], args: &[&str]) -> String {
    let o = tresor(home, addr, env, args);
    assert_eq!(
        o.status.code(),
        Some(1),
        "tresor {}: {}",
        args.join(" "),
        show(&o)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_login_method_aws_against_moto() {
    let Some(moto) = moto().await else { return };
    let alice = new_user(&moto, "cli-alice").await;
    let bob = new_user(&moto, "cli-bob").await;

    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).expect("server dir");
    let listen = format!("127.0.0.1:{port}");
    let server = common::start(
        &[
            "--dev",
            "--dev-root-token-id",
            ROOT,
            "--dev-listen-address",
            &listen,
        ],
        port,
        &server_dir.join("server.log"),
    )
    .await;
    let addr = server.addr.as_str();

    let admin_home = dir.path().join("admin");
    let admin = |args: &[&str]| ok(&admin_home, addr, &[("TRESOR_TOKEN", ROOT)], args);
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

    let home = dir.path().join("alice");
    let token_file = home.join(".tresor-token");
    let aws_env = [
        ("AWS_ACCESS_KEY_ID", alice.key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", alice.secret.as_str()),
    ];
    let header = format!("header_value={SERVER_ID}");

    // The right server ID, keys from the environment: logged in and saved.
    let out = ok(
        &home,
        addr,
        &aws_env,
        &["login", "-method=aws", "role=dev", &header],
    );
    assert!(out.contains("Success! You are now authenticated"), "{out}");
    assert!(!out.contains(&alice.secret), "the AWS secret was printed");
    let token = std::fs::read_to_string(&token_file).expect("token saved");
    let token = token.trim().to_string();
    assert!(!token.is_empty());
    let lookup = ok(&home, addr, &[], &["-format=json", "token", "lookup"]);
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
    let err = fails(
        &home,
        addr,
        &aws_env,
        &[
            "login",
            "-method=aws",
            "role=dev",
            "header_value=other.example.com",
        ],
    );
    assert!(err.contains("Error authenticating"), "{err}");
    assert!(err.contains("X-Vault-AWS-IAM-Server-ID"), "{err}");
    // So is a login without the header this server requires.
    let err = fails(&home, addr, &aws_env, &["login", "-method=aws", "role=dev"]);
    assert!(err.contains("X-Vault-AWS-IAM-Server-ID"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&token_file)
            .expect("token file")
            .trim(),
        token
    );

    // Keys given as fields instead of the environment; -path names the mount.
    let out = ok(
        &home,
        addr,
        &[],
        &[
            "login",
            "-method=aws",
            "-path=aws",
            "-token-only",
            "role=dev",
            &header,
            &format!("aws_access_key_id={}", alice.key),
            &format!("aws_secret_access_key={}", alice.secret),
        ],
    );
    assert!(!out.trim().is_empty() && out.trim() != token, "{out}");

    // Someone else's keys do not satisfy the role's bound ARN.
    let err = fails(
        &home,
        addr,
        &[
            ("AWS_ACCESS_KEY_ID", bob.key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", bob.secret.as_str()),
        ],
        &["login", "-method=aws", "role=dev", &header],
    );
    assert!(err.contains("Error authenticating"), "{err}");
    assert!(!err.contains(&bob.secret), "the AWS secret was printed");

    // No credentials anywhere: a clear message before any request.
    let err = fails(
        &home,
        addr,
        &[],
        &["login", "-method=aws", "role=dev", &header],
    );
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
    drop(server);
}
