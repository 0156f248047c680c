//! The `tresor` CLI end to end, as a user drives it: the real binary
//! against a real dev server, with `TRESOR_ADDR`/`TRESOR_TOKEN` in the
//! environment and `HOME` in a temporary directory (so `login` writes
//! `~/.tresor-token` there). Follows the README's quick tour.

use crate::common::{self, dev_server, Cli};

use std::path::Path;
use std::process::{Command, Stdio};

/// The value of row `key` in a `Key/Value` table.
fn row<'a>(table: &'a str, key: &str) -> Option<&'a str> {
    table.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?;
        (rest.starts_with(' ') || rest.is_empty()).then(|| rest.trim())
    })
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_kv_policy_token_and_login_tour() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = dev_server(dir.path(), "cli-root").await;
    let cli = Cli::new(&server.addr, Some("cli-root"), &dir.path().join("home"));

    // status
    let out = cli.ok(&["status"]);
    assert_eq!(row(&out, "Sealed"), Some("false"), "{out}");
    assert_eq!(row(&out, "Initialized"), Some("true"), "{out}");
    assert_eq!(cli.json(&["status"])["sealed"], false);
    // A shell set up for vault: VAULT_FORMAT is honoured.
    let r = cli.with_env("VAULT_FORMAT", "json").run(&["status"]);
    assert_eq!(r.json()["initialized"], true, "{r}");
    let r = cli.with_env("TRESOR_FORMAT", "yaml").fails(2, &["status"]);
    assert!(r.stderr.contains("invalid output format"), "{r}");
    // VAULT_ADDR and VAULT_TOKEN, even beside empty TRESOR_ variables.
    let vault_shell = cli
        .without_token()
        .with_env("TRESOR_ADDR", "")
        .with_env("TRESOR_TOKEN", "")
        .with_env("VAULT_ADDR", &server.addr)
        .with_env("VAULT_TOKEN", "cli-root");
    vault_shell.ok(&["token", "lookup"]);
    let r = cli.fails(1, &["-address=http://127.0.0.1:1", "status"]);
    assert!(r.stderr.contains("Is the server running"), "{r}");

    // kv put / get / -field / -cas / patch
    let out = cli.ok(&["kv", "put", "secret/db", "password=s3cr3t", "user=app"]);
    assert!(out.contains("secret/data/db"), "{out}");
    assert_eq!(row(&out, "version"), Some("1"), "{out}");
    let out = cli.ok(&["kv", "get", "secret/db"]);
    assert_eq!(row(&out, "password"), Some("s3cr3t"), "{out}");
    assert_eq!(row(&out, "user"), Some("app"), "{out}");
    assert!(out.contains("=== Data ==="), "{out}");
    assert_eq!(
        cli.ok(&["kv", "get", "-field=password", "secret/db"]),
        "s3cr3t\n"
    );
    // Flags after the path, and -mount with a relative path, work too.
    assert_eq!(
        cli.ok(&["kv", "get", "-mount=secret", "db", "-field=user"]),
        "app\n"
    );
    let out = cli.ok(&["kv", "put", "-cas=1", "secret/db", "password=rotated"]);
    assert_eq!(row(&out, "version"), Some("2"), "{out}");
    let r = cli.fails(1, &["kv", "put", "-cas=1", "secret/db", "password=x"]);
    assert!(r.stderr.contains("check-and-set"), "{r}");
    let r = cli.fails(2, &["kv", "put", "secret/db"]);
    assert!(r.stderr.contains("Must supply data"), "{r}");
    cli.ok(&["kv", "patch", "secret/db", "extra=1"]);
    let v = cli.json(&["kv", "get", "secret/db"]);
    assert_eq!(v["data"]["data"]["password"], "rotated", "{v}");
    assert_eq!(v["data"]["data"]["extra"], "1", "{v}");
    assert_eq!(v["data"]["metadata"]["version"], 3, "{v}");
    // `-format json` (two words) and the flag before the command.
    let r = cli.run(&["-format", "json", "kv", "get", "-version=1", "secret/db"]);
    assert_eq!(r.json()["data"]["data"]["password"], "s3cr3t", "{r}");
    // A value from stdin, and a JSON object from stdin.
    let r = cli.run_with_stdin(&["kv", "put", "secret/stdin", "v=-"], "from-stdin");
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(
        cli.ok(&["kv", "get", "-field=v", "secret/stdin"]),
        "from-stdin\n"
    );
    let r = cli.run_with_stdin(&["kv", "put", "secret/obj", "-"], r#"{"n": 1}"#);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(
        cli.json(&["kv", "get", "secret/obj"])["data"]["data"]["n"],
        1
    );

    // delete / undelete
    let out = cli.ok(&["kv", "delete", "secret/db"]);
    assert!(out.contains("Success! Data deleted"), "{out}");
    let r = cli.fails(2, &["kv", "get", "secret/db"]);
    assert!(r.stderr.contains("deleted or destroyed"), "{r}");
    assert!(
        row(&r.stdout, "deletion_time").is_some_and(|t| t != "n/a"),
        "{r}"
    );
    cli.ok(&["kv", "undelete", "-versions=3", "secret/db"]);
    assert_eq!(cli.ok(&["kv", "get", "-field=extra", "secret/db"]), "1\n");
    let r = cli.fails(2, &["kv", "get", "secret/nope"]);
    assert!(
        r.stderr.contains("No value found at secret/data/nope"),
        "{r}"
    );

    // metadata get
    let out = cli.ok(&["kv", "metadata", "get", "secret/db"]);
    assert_eq!(row(&out, "current_version"), Some("3"), "{out}");
    assert!(out.contains("== Version 3 =="), "{out}");
    // A version never deleted shows n/a, as in vault.
    let v1 = out.split("Version 1").nth(1).expect("version 1 block");
    assert_eq!(row(v1, "deletion_time"), Some("n/a"), "{out}");
    let v = cli.json(&["kv", "metadata", "get", "secret/db"]);
    assert_eq!(v["data"]["current_version"], 3, "{v}");
    // A bare Go-style bool flag does not take the path after it as its value.
    let out = cli.ok(&["kv", "metadata", "put", "-cas-required", "secret/db"]);
    assert_eq!(out, "Success! Data written to: secret/metadata/db\n");
    let r = cli.fails(1, &["kv", "put", "secret/db", "password=no-cas"]);
    assert!(r.stderr.contains("check-and-set"), "{r}");
    cli.ok(&["kv", "metadata", "put", "-cas-required=false", "secret/db"]);
    // In JSON, a write that answers nothing prints nothing (for `| jq`).
    let r = cli.run(&[
        "kv",
        "metadata",
        "put",
        "-format=json",
        "-max-versions=5",
        "secret/db",
    ]);
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{r}");

    // list
    cli.ok(&["kv", "put", "secret/dir/a", "x=1"]);
    let out = cli.ok(&["kv", "list", "secret"]);
    let keys: Vec<&str> = out.lines().skip(2).collect();
    assert!(keys.contains(&"db") && keys.contains(&"dir/"), "{out}");
    let v = cli.json(&["kv", "list", "secret/"]);
    assert!(
        v.as_array().is_some_and(|a| a.contains(&"dir/".into())),
        "{v}"
    );
    cli.fails(2, &["kv", "list", "secret/nothing-here"]);

    // KV v1 at another mount, through the generic commands.
    cli.ok(&["secrets", "enable", "-path=kv1", "kv"]);
    cli.ok(&["write", "kv1/app", "token=abc"]);
    assert_eq!(row(&cli.ok(&["read", "kv1/app"]), "token"), Some("abc"));
    assert_eq!(cli.ok(&["kv", "get", "-field=token", "kv1/app"]), "abc\n");
    let r = cli.fails(2, &["write", "kv1/empty"]);
    assert!(r.stderr.contains("-force"), "{r}");
    let r = cli.run(&["write", "-format=json", "kv1/app", "token=def"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{r}");
    // Vault's mount flags: listing visibility and passed-through headers.
    cli.ok(&[
        "secrets",
        "tune",
        "-listing-visibility=unauth",
        "-passthrough-request-headers=X-A",
        "-passthrough-request-headers=X-B",
        "kv1",
    ]);
    let v = cli.json(&["read", "sys/mounts/kv1/tune"]);
    assert_eq!(
        v["data"]["passthrough_request_headers"],
        serde_json::json!(["X-A", "X-B"]),
        "{v}"
    );
    let v = cli.json(&["read", "sys/mounts"]);
    assert_eq!(
        v["data"]["kv1/"]["config"]["listing_visibility"], "unauth",
        "{v}"
    );
    // The kv commands say so when a path is not on a KV mount.
    let r = cli.fails(1, &["kv", "get", "nomount/x"]);
    assert!(
        r.stderr
            .contains("no KV secrets engine is mounted at nomount/"),
        "{r}"
    );
    let r = cli.fails(2, &["kv", "get", "sys/mounts"]);
    assert!(r.stderr.contains("not KV"), "{r}");
    // cubbyhole speaks KV v1, as in vault.
    cli.ok(&["kv", "put", "cubbyhole/note", "a=b"]);
    assert_eq!(cli.ok(&["kv", "get", "-field=a", "cubbyhole/note"]), "b\n");

    // policies
    let hcl = dir.path().join("app.hcl");
    std::fs::write(
        &hcl,
        "path \"secret/data/db\" { capabilities = [\"read\"] }\n",
    )
    .expect("write policy");
    let out = cli.ok(&["policy", "write", "app", hcl.to_str().expect("utf8")]);
    assert_eq!(out, "Success! Uploaded policy: app\n");
    let r = cli.run_with_stdin(
        &["policy", "write", "other", "-"],
        "path \"secret/data/other\" { capabilities = [\"read\"] }\n",
    );
    assert_eq!(r.code, 0, "{r}");
    let out = cli.ok(&["policy", "read", "app"]);
    assert!(out.contains("path \"secret/data/db\""), "{out}");
    let out = cli.ok(&["policy", "list"]);
    let names: Vec<&str> = out.lines().collect();
    assert!(
        names.contains(&"app") && names.contains(&"other") && names.contains(&"default"),
        "{out}"
    );
    let v = cli.json(&["policy", "list"]);
    assert!(
        v.as_array().is_some_and(|a| a.contains(&"app".into())),
        "{v}"
    );
    let r = cli.fails(2, &["policy", "read", "nope"]);
    assert!(r.stderr.contains("No policy named: nope"), "{r}");

    // a token limited to the policy
    let out = cli.ok(&["token", "create", "-policy=app", "-ttl=1h"]);
    assert_eq!(row(&out, "token_duration"), Some("1h"), "{out}");
    assert_eq!(row(&out, "token_policies"), Some("[app default]"), "{out}");
    let v = cli.json(&["token", "create", "-policy=app", "-ttl=1h"]);
    assert_eq!(v["auth"]["lease_duration"], 3600, "{v}");
    let app_token = v["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_string();
    // Go-style `-flag=true` on a switch.
    let v = cli.json(&["token", "create", "-orphan=true", "-policy=app"]);
    assert_eq!(v["auth"]["orphan"], true, "{v}");
    let v = cli.json(&["token", "create", "-orphan=false", "-policy=app"]);
    assert_eq!(v["auth"]["orphan"], false, "{v}");
    let app = cli.with_token(&app_token);
    assert_eq!(
        app.ok(&["kv", "get", "-field=password", "secret/db"]),
        "rotated\n"
    );
    let r = app.fails(1, &["kv", "put", "secret/db", "x=y"]);
    assert!(r.stdout.is_empty(), "{r}");
    assert!(
        r.stderr
            .starts_with("Error writing data to secret/data/db: Error making API request."),
        "{r}"
    );
    assert!(r.stderr.contains("Code: 403"), "{r}");
    assert!(r.stderr.contains("* permission denied"), "{r}");
    assert!(r.stderr.contains("tresor token capabilities"), "{r}");
    assert_eq!(
        app.ok(&["token", "capabilities", "secret/data/db"]),
        "read\n"
    );
    assert_eq!(
        cli.ok(&["token", "capabilities", &app_token, "secret/data/other"]),
        "deny\n"
    );

    // no token at all: the hint says so
    let anon = cli.without_token();
    let r = anon.fails(1, &["kv", "get", "secret/db"]);
    assert!(r.stderr.contains("no token was sent"), "{r}");

    // login with a token saves it in ~/.tresor-token (0600) and later
    // commands use it without TRESOR_TOKEN.
    let r = anon.fails(1, &["login", "not-a-token"]);
    assert!(r.stderr.contains("token is not valid"), "{r}");
    assert!(!anon.token_file().exists());
    let out = anon.ok(&["login", &app_token]);
    assert!(
        out.starts_with("Success! You are now authenticated."),
        "{out}"
    );
    assert_eq!(row(&out, "token"), Some(app_token.as_str()), "{out}");
    assert_eq!(
        std::fs::read_to_string(anon.token_file()).expect("token file"),
        app_token
    );
    #[cfg(unix)]
    assert_eq!(mode(&anon.token_file()), 0o600);
    assert_eq!(
        anon.ok(&["kv", "get", "-field=password", "secret/db"]),
        "rotated\n"
    );
    // A failed login leaves the saved token alone.
    anon.fails(1, &["login", "still-not-a-token"]);
    assert_eq!(
        std::fs::read_to_string(anon.token_file()).expect("token file"),
        app_token
    );
    // The token from stdin (`login -`), for scripts.
    let r = anon.run_with_stdin(&["login", "-no-print", "-"], "cli-root\n");
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.is_empty(), "{r}");
    assert_eq!(
        std::fs::read_to_string(anon.token_file()).expect("token file"),
        "cli-root"
    );

    // TLS flags: the files are read, and their errors name them.
    let r = cli.fails(1, &["-ca-cert=/nonexistent/ca.pem", "status"]);
    assert!(r.stderr.contains("/nonexistent/ca.pem"), "{r}");
    let r = cli.fails(
        1,
        &[
            "-client-cert=/nonexistent/c.pem",
            "-client-key=/nonexistent/k.pem",
            "status",
        ],
    );
    assert!(
        r.stderr
            .contains("reading client certificate or key /nonexistent/c.pem"),
        "{r}"
    );
    let r = cli.fails(2, &["-client-key=/nonexistent/k.pem", "status"]);
    assert!(r.stderr.contains("-client-key needs -client-cert"), "{r}");

    // completions
    let out = cli.ok(&["completions", "bash"]);
    assert!(out.contains("_tresor()"), "{}", &out[..out.len().min(200)]);
    assert!(out.contains("complete -F _tresor"), "no complete line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_userpass_and_approle_logins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = dev_server(dir.path(), "cli-root").await;
    let admin = Cli::new(&server.addr, Some("cli-root"), &dir.path().join("admin"));
    let hcl = dir.path().join("app.hcl");
    std::fs::write(
        &hcl,
        "path \"secret/data/db\" { capabilities = [\"read\"] }\n",
    )
    .expect("policy file");
    admin.ok(&["policy", "write", "app", hcl.to_str().expect("utf8")]);
    admin.ok(&["kv", "put", "secret/db", "password=s3cr3t"]);

    // userpass
    assert_eq!(
        admin.ok(&["auth", "enable", "userpass"]),
        "Success! Enabled userpass auth method at: userpass/\n"
    );
    admin.ok(&[
        "write",
        "auth/userpass/users/alice",
        "password=correct horse",
        "token_policies=app",
    ]);
    let alice = Cli::new(&server.addr, None, &dir.path().join("alice"));
    let r = alice.fails(
        1,
        &[
            "login",
            "-method=userpass",
            "username=alice",
            "password=wrong",
        ],
    );
    assert!(r.stderr.contains("Error authenticating"), "{r}");
    assert!(!alice.token_file().exists());
    let out = alice.ok(&[
        "login",
        "-method=userpass",
        "username=alice",
        "password=correct horse",
    ]);
    assert_eq!(row(&out, "token_meta_username"), Some("alice"), "{out}");
    let saved = std::fs::read_to_string(alice.token_file()).expect("token file");
    assert_eq!(row(&out, "token"), Some(saved.as_str()), "{out}");
    assert_eq!(
        alice.ok(&["kv", "get", "-field=password", "secret/db"]),
        "s3cr3t\n"
    );
    assert_eq!(
        alice.ok(&["token", "lookup", "-field=policies"]),
        "[app default]\n"
    );
    // The password typed on stdin when not given (not a terminal here).
    let r = alice.run_with_stdin(
        &[
            "login",
            "-method=userpass",
            "-no-store",
            "-field=token",
            "username=alice",
        ],
        "correct horse\n",
    );
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.trim().starts_with("hvs."), "{r}");

    // approle, as the README shows it
    admin.ok(&["auth", "enable", "approle"]);
    admin.ok(&[
        "write",
        "auth/approle/role/ci",
        "token_policies=app",
        "secret_id_ttl=24h",
    ]);
    let role_id = admin.ok(&["read", "-field=role_id", "auth/approle/role/ci/role-id"]);
    let role_id = role_id.trim_end_matches('\n').to_string();
    assert_eq!(role_id.len(), 36, "{role_id:?}");
    let out = admin.ok(&["approle", "rotate-secret-id", "ci"]);
    // Only the secret ID, one line: scripts capture it with $(...).
    assert_eq!(out.lines().count(), 1, "{out:?}");
    let secret_id = out.trim_end_matches('\n').to_string();
    assert_eq!(secret_id.len(), 36, "{secret_id:?}");
    let machine = Cli::new(&server.addr, None, &dir.path().join("machine"));
    let rid = format!("role_id={role_id}");
    let sid = format!("secret_id={secret_id}");
    // Flags after the k=v fields are flags, not login fields.
    let out = machine.ok(&["login", "-method=approle", &rid, &sid, "-token-only"]);
    assert_eq!(out.lines().count(), 1, "{out:?}");
    assert!(out.starts_with("hvs."), "{out:?}");
    assert!(!machine.token_file().exists(), "-token-only must not save");
    let out = machine.ok(&["login", "-method=approle", &rid, &sid]);
    assert_eq!(row(&out, "token_meta_role_name"), Some("ci"), "{out}");
    assert_eq!(
        machine.ok(&["kv", "get", "-field=password", "secret/db"]),
        "s3cr3t\n"
    );

    // Rotation that destroys the previous secret ID.
    let v = admin.json(&["approle", "rotate-secret-id", "ci"]);
    let old_accessor = v["data"]["secret_id_accessor"].as_str().expect("accessor");
    let old_sid = format!("secret_id={}", v["data"]["secret_id"].as_str().expect("id"));
    let destroy = format!("-destroy-old-accessor={old_accessor}");
    let out = admin.ok(&["approle", "rotate-secret-id", &destroy, "ci"]);
    let new_sid = format!("secret_id={}", out.trim_end());
    let r = machine.fails(
        1,
        &["login", "-method=approle", "-no-store", &rid, &old_sid],
    );
    assert!(r.stderr.contains("Error authenticating"), "{r}");
    machine.ok(&["login", "-method=approle", "-no-store", &rid, &new_sid]);
    // Wrapped: the one line is the wrapping token, which unwraps to a secret ID.
    let out = admin.ok(&["approle", "rotate-secret-id", "-wrap-ttl=5m", "ci"]);
    let wrapped = out.trim_end();
    let v = machine.json(&["unwrap", wrapped]);
    let unwrapped = format!("secret_id={}", v["data"]["secret_id"].as_str().expect("id"));
    machine.ok(&["login", "-method=approle", "-no-store", &rid, &unwrapped]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_wrapping_transit_pki_passwords_and_leases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = dev_server(dir.path(), "cli-root").await;
    let cli = Cli::new(&server.addr, Some("cli-root"), &dir.path().join("home"));
    cli.ok(&["kv", "put", "secret/db", "password=s3cr3t"]);

    // response wrapping
    let out = cli.ok(&["kv", "get", "-wrap-ttl=5m", "secret/db"]);
    assert_eq!(row(&out, "wrapping_token_ttl"), Some("5m"), "{out}");
    assert!(!out.contains("s3cr3t"), "{out}");
    let wrap = row(&out, "wrapping_token")
        .expect("wrapping token")
        .to_string();
    let out = cli.ok(&["unwrap", &wrap]);
    assert!(out.contains("password:s3cr3t"), "{out}");
    let r = cli.fails(1, &["unwrap", &wrap]);
    assert!(r.stderr.contains("Error unwrapping"), "{r}");
    let v = cli.json(&["read", "-wrap-ttl=5m", "secret/data/db"]);
    let wrap = v["wrap_info"]["token"].as_str().expect("wrap token");
    // The recipient has no token of its own: the wrapping token suffices.
    let recipient = Cli::new(&server.addr, None, &dir.path().join("recipient"));
    let v = recipient.json(&["unwrap", wrap]);
    assert_eq!(v["data"]["data"]["password"], "s3cr3t", "{v}");
    // A recipient whose own token is stale still unwraps.
    let v = cli.json(&["read", "-wrap-ttl=5m", "secret/data/db"]);
    let wrap = v["wrap_info"]["token"].as_str().expect("wrap token");
    let v = recipient
        .with_token("hvs.revoked-long-ago")
        .json(&["unwrap", wrap]);
    assert_eq!(v["data"]["data"]["password"], "s3cr3t", "{v}");

    // audit, as in the README
    let audit = dir.path().join("audit.log");
    let opt = format!("file_path={}", audit.display());
    cli.ok(&["audit", "enable", "file", &opt]);
    assert!(cli.ok(&["audit", "list"]).contains("file/"));

    // transit
    cli.ok(&["secrets", "enable", "transit"]);
    let r = cli.fails(2, &["write", "transit/keys/k"]);
    assert!(r.stderr.contains("-force"), "{r}");
    cli.ok(&["write", "-force", "transit/keys/k"]);
    let ct = cli.ok(&["transit", "encrypt", "k", "card 4111"]);
    let ct = ct.trim_end();
    assert!(ct.starts_with("vault:v1:"), "{ct}");
    assert_eq!(cli.ok(&["transit", "decrypt", "k", ct]), "card 4111\n");
    let r = cli.fails(1, &["transit", "decrypt", "k", "vault:v1:garbage"]);
    assert!(r.stderr.contains("Error decrypting with key k"), "{r}");
    let v = cli.json(&["transit", "encrypt", "k", "x"]);
    let ct = v["ciphertext"].as_str().expect("ciphertext");
    assert!(ct.starts_with("vault:v1:"), "{v}");
    let v = cli.json(&["transit", "decrypt", "k", ct]);
    assert_eq!(v["plaintext"], "eA==", "{v}");

    // pki
    cli.ok(&["secrets", "enable", "pki"]);
    let root = cli.ok(&[
        "write",
        "-field=certificate",
        "pki/root/generate/internal",
        "common_name=example.com",
        "ttl=8760h",
    ]);
    assert!(root.starts_with("-----BEGIN CERTIFICATE-----"), "{root}");
    cli.ok(&[
        "write",
        "pki/roles/web",
        "allowed_domains=example.com",
        "allow_subdomains=true",
        "max_ttl=72h",
    ]);
    let tls = dir.path().join("tls");
    let out = cli.ok(&[
        "pki",
        "issue",
        "web",
        "www.example.com",
        "--out-dir",
        tls.to_str().expect("utf8"),
    ]);
    assert!(out.contains("Wrote cert.pem, key.pem and ca.pem"), "{out}");
    let cert = std::fs::read_to_string(tls.join("cert.pem")).expect("cert.pem");
    let key = std::fs::read_to_string(tls.join("key.pem")).expect("key.pem");
    let ca = std::fs::read_to_string(tls.join("ca.pem")).expect("ca.pem");
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    assert!(key.contains("PRIVATE KEY-----"), "key.pem");
    assert_eq!(ca.trim(), root.trim());
    #[cfg(unix)]
    assert_eq!(mode(&tls.join("key.pem")), 0o600);
    let bad = dir.path().join("bad-tls");
    let r = cli.fails(
        1,
        &[
            "pki",
            "issue",
            "web",
            "www.evil.com",
            "-out-dir",
            bad.to_str().expect("utf8"),
        ],
    );
    assert!(r.stderr.contains("not allowed by this role"), "{r}");
    assert!(!bad.exists());

    // password policies
    let pw = dir.path().join("pw.hcl");
    std::fs::write(
        &pw,
        "length = 20\nrule \"charset\" {\n  charset = \"abcdef\"\n  min-chars = 1\n}\n",
    )
    .expect("pw policy");
    cli.ok(&[
        "write",
        "sys/policies/password/short",
        &format!("policy=@{}", pw.display()),
    ]);
    let out = cli.ok(&["password", "generate", "short"]);
    let password = out.trim_end();
    assert_eq!(out.lines().count(), 1, "{out:?}");
    assert_eq!(password.len(), 20, "{password:?}");
    assert!(password.chars().all(|c| "abcdef".contains(c)), "{password}");
    let v = cli.json(&["password", "generate", "short"]);
    assert_eq!(v["password"].as_str().map(str::len), Some(20), "{v}");
    let r = cli.fails(1, &["password", "generate", "nope"]);
    assert!(r.stderr.contains("nope"), "{r}");

    // kv rotate
    cli.ok(&["kv", "put", "secret/app", "password=old", "user=u"]);
    let r = cli.fails(1, &["kv", "rotate", "secret/app"]);
    assert!(r.stderr.contains("fields"), "{r}");
    let out = cli.ok(&[
        "kv",
        "rotate",
        "-fields=password",
        "-password-policy=short",
        "secret/app",
    ]);
    assert_eq!(row(&out, "version"), Some("2"), "{out}");
    let new_pw = cli.ok(&["kv", "get", "-field=password", "secret/app"]);
    let new_pw = new_pw.trim_end();
    assert_eq!(new_pw.len(), 20, "{new_pw}");
    assert!(new_pw.chars().all(|c| "abcdef".contains(c)), "{new_pw}");
    assert_eq!(cli.ok(&["kv", "get", "-field=user", "secret/app"]), "u\n");

    // lease revoke on a token's lease
    let leases = |cli: &Cli| -> Vec<String> {
        let r = cli.run(&[
            "list",
            "-format=json",
            "sys/leases/lookup/auth/token/create/",
        ]);
        if r.code == 2 {
            return Vec::new();
        }
        assert_eq!(r.code, 0, "{r}");
        serde_json::from_value(r.json()).expect("keys")
    };
    let before = leases(&cli);
    let token = cli.ok(&[
        "token",
        "create",
        "-policy=default",
        "-ttl=10m",
        "-field=token",
    ]);
    let token = token.trim_end().to_string();
    let after = leases(&cli);
    let new: Vec<&String> = after.iter().filter(|k| !before.contains(k)).collect();
    assert_eq!(new.len(), 1, "{before:?} -> {after:?}");
    let lease_id = format!("auth/token/create/{}", new[0]);
    let out = cli.ok(&["lease", "lookup", &lease_id]);
    assert_eq!(row(&out, "id"), Some(lease_id.as_str()), "{out}");
    assert_eq!(row(&out, "renewable"), Some("true"), "{out}");
    cli.ok(&["token", "lookup", &token]);
    let out = cli.ok(&["lease", "revoke", &lease_id]);
    assert_eq!(out, format!("Success! Revoked lease: {lease_id}\n"));
    cli.fails(1, &["token", "lookup", &token]);
    let r = cli.with_token(&token).fails(1, &["token", "lookup"]);
    assert!(r.stderr.contains("Code: 403"), "{r}");
}

/// `-ca-cert`, `-client-cert`/`-client-key` and `-tls-skip-verify` against
/// a TLS listener that asks for client certificates, ending in a `cert`
/// login; the certificates come from the PKI engine, through the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tls_flags_and_cert_login() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = dev_server(dir.path(), "cli-root").await;
    let admin = Cli::new(&dev.addr, Some("cli-root"), &dir.path().join("admin"));
    admin.ok(&["secrets", "enable", "pki"]);
    admin.ok(&[
        "write",
        "pki/root/generate/internal",
        "common_name=tresor test CA",
        "ttl=24h",
    ]);
    admin.ok(&[
        "write",
        "pki/roles/any",
        "allow_any_name=true",
        "max_ttl=1h",
    ]);
    let srv = dir.path().join("srv");
    let client = dir.path().join("client");
    let s = |p: &Path| p.to_str().expect("utf8").to_string();
    admin.ok(&[
        "pki",
        "issue",
        "any",
        "localhost",
        "-ip-sans=127.0.0.1",
        "-out-dir",
        &s(&srv),
    ]);
    admin.ok(&["pki", "issue", "any", "app-client", "-out-dir", &s(&client)]);

    // A real server on TLS, asking for (not requiring) client certificates.
    let port = common::free_port();
    let server_dir = dir.path().join("tls-server");
    std::fs::create_dir_all(&server_dir).expect("server dir");
    let cfg = server_dir.join("tresor.hcl");
    std::fs::write(
        &cfg,
        format!(
            "storage \"sqlite\" {{ path = \"{data}\" }}\n\
             listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  \
             tls_cert_file = \"{cert}\"\n  tls_key_file = \"{key}\"\n  \
             tls_client_ca_file = \"{ca}\"\n}}\n",
            data = s(&server_dir.join("data")),
            cert = s(&srv.join("cert.pem")),
            key = s(&srv.join("key.pem")),
            ca = s(&srv.join("ca.pem")),
        ),
    )
    .expect("config");
    let log = std::fs::File::create(server_dir.join("server.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_tresor"))
        .args(["server", "--config", &s(&cfg)])
        .env("HOME", &server_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn tresor");
    let server = common::Server {
        child,
        addr: format!("https://127.0.0.1:{port}"),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "TLS server did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let ca = s(&srv.join("ca.pem"));
    let ca_flag = format!("-ca-cert={ca}");
    let user = Cli::new(&server.addr, None, &dir.path().join("user"));
    // The server's CA is not trusted by default...
    let r = user.fails(1, &["status"]);
    assert!(r.stderr.to_lowercase().contains("certificate"), "{r}");
    // ...but with -ca-cert (sealed and uninitialised: exit 2), or
    // VAULT_CACERT, or -tls-skip-verify, it answers.
    let r = user.fails(2, &[&ca_flag, "status"]);
    assert_eq!(row(&r.stdout, "Initialized"), Some("false"), "{r}");
    user.with_env("VAULT_CACERT", &ca).fails(2, &["status"]);
    user.fails(2, &["-tls-skip-verify", "status"]);

    let init = user.json(&[
        &ca_flag,
        "operator",
        "init",
        "-key-shares=1",
        "-key-threshold=1",
    ]);
    let key = init["unseal_keys_b64"][0].as_str().expect("key");
    let root = init["root_token"].as_str().expect("root token");
    let out = user.ok(&[&ca_flag, "operator", "unseal", key]);
    assert_eq!(row(&out, "Sealed"), Some("false"), "{out}");
    let admin = user.with_token(root).with_env("TRESOR_CACERT", &ca);
    admin.ok(&["auth", "enable", "cert"]);
    admin.ok(&[
        "write",
        "auth/cert/certs/app",
        &format!("certificate=@{ca}"),
        "token_policies=default",
    ]);

    // No client certificate: no login.
    let r = user.fails(1, &[&ca_flag, "login", "-method=cert"]);
    assert!(r.stderr.contains("client certificate"), "{r}");
    // The flags present one...
    let cert_flag = format!("-client-cert={}", s(&client.join("cert.pem")));
    let key_flag = format!("-client-key={}", s(&client.join("key.pem")));
    let out = user.ok(&[&ca_flag, &cert_flag, &key_flag, "login", "-method=cert"]);
    assert!(
        out.starts_with("Success! You are now authenticated."),
        "{out}"
    );
    assert_eq!(row(&out, "token_policies"), Some("[default]"), "{out}");
    let saved = std::fs::read_to_string(user.token_file()).expect("token file");
    assert_eq!(row(&out, "token"), Some(saved.as_str()), "{out}");
    // ...so do vault's environment variables.
    let out = user
        .with_env("VAULT_CACERT", &ca)
        .with_env("VAULT_CLIENT_CERT", &s(&client.join("cert.pem")))
        .with_env("VAULT_CLIENT_KEY", &s(&client.join("key.pem")))
        .ok(&["login", "-method=cert", "-token-only", "name=app"]);
    assert!(out.starts_with("hvs."), "{out}");
    // A key that does not exist is named in the error.
    let r = user.fails(
        1,
        &[
            &ca_flag,
            &cert_flag,
            "-client-key=/nonexistent/k.pem",
            "status",
        ],
    );
    assert!(r.stderr.contains("/nonexistent/k.pem"), "{r}");
}
