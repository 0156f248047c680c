//! A secret written and read never appears in the audit file or the server
//! log (debug level), only its HMAC.

use crate::common;

use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_never_reaches_audit_or_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    let log = dir.path().join("server.log");
    let listen = format!("127.0.0.1:{port}");
    let server = common::start(
        &[
            "--dev",
            "--dev-root-token-id",
            "canary-root-token",
            "--dev-listen-address",
            &listen,
        ],
        port,
        &log,
    )
    .await;
    let root = "canary-root-token";
    let audit = dir.path().join("audit.log");
    let (s, b) = common::call(
        &server.addr,
        root,
        "PUT",
        "sys/audit/file",
        json!({"type": "file", "options": {"file_path": audit.to_string_lossy()}}),
    )
    .await;
    assert_eq!(s, 204, "{b}");

    let canary = "CANARY-7f3a9c2e-do-not-log";
    let (s, b) = common::call(
        &server.addr,
        root,
        "POST",
        "secret/data/app",
        json!({"data": {"password": canary}}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = common::call(
        &server.addr,
        root,
        "GET",
        "secret/data/app",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(b["data"]["data"]["password"], canary);
    // A refused request with the canary in its body is audited too.
    let (s, _) = common::call(
        &server.addr,
        "bad-token",
        "POST",
        "secret/data/app",
        json!({"data": {"password": canary}}),
    )
    .await;
    assert_eq!(s, 403);
    // A token created now: its value must not be logged either.
    let (_, t) = common::call(
        &server.addr,
        root,
        "POST",
        "auth/token/create",
        json!({"policies": ["default"]}),
    )
    .await;
    let child = t["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_string();

    let (s, h) = common::call(
        &server.addr,
        root,
        "POST",
        "sys/audit-hash/file",
        json!({"input": canary}),
    )
    .await;
    assert_eq!(s, 200);
    let hash = h["data"]["hash"].as_str().expect("hash").to_string();
    drop(server);

    let audit_text = std::fs::read_to_string(&audit).expect("audit file");
    let log_text = std::fs::read_to_string(&log).expect("server log");
    assert!(
        audit_text.lines().count() >= 6,
        "request and response entries are written"
    );
    assert!(
        audit_text.contains(&hash),
        "the canary's HMAC is in the audit log"
    );
    for (name, text) in [("audit file", &audit_text), ("server log", &log_text)] {
        assert!(!text.contains(canary), "canary found in the {name}");
        assert!(!text.contains(&child), "a token found in the {name}");
    }
    // (Dev mode prints its root token on start, like Vault; the audit file
    // must still only hold its HMAC.)
    assert!(
        !audit_text.contains(root),
        "the root token found in the audit file"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&audit)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}
