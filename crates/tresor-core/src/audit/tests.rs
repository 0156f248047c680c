#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tresor_sdk::testing::MemoryStorage;
use tresor_sdk::Storage;

use super::*;

const CANARY: &str = "canary-s3cr3t-7f1e";
const TOKEN: &str = "hvs.client-token-canary";
const ACCESSOR: &str = "accessor-canary";

fn broker() -> (AuditBroker, Arc<MemoryStorage>) {
    let storage = Arc::new(MemoryStorage::new());
    (AuditBroker::new(storage.clone()), storage)
}

fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn file_opts(path: &Path, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut o = opts(extra);
    o.insert("file_path".into(), path.to_str().unwrap().into());
    o
}

fn record() -> AuditRecord {
    AuditRecord {
        auth: AuditAuth {
            client_token: TOKEN.into(),
            accessor: ACCESSOR.into(),
            display_name: "token".into(),
            policies: vec!["root".into()],
            token_policies: vec!["root".into()],
            token_type: "service".into(),
            token_ttl: 3600,
            ..Default::default()
        },
        request: AuditRequest {
            id: "req-1".into(),
            operation: "update".into(),
            mount_type: "kv".into(),
            client_token: TOKEN.into(),
            client_token_accessor: ACCESSOR.into(),
            path: "secret/data/app".into(),
            data: Some(json!({
                "data": {"password": CANARY, "nested": [CANARY, 42, true, null]},
                "options": {"cas": 3}
            })),
            remote_address: "127.0.0.1".into(),
            headers: [("x-custom".to_string(), CANARY.to_string())].into(),
            ..Default::default()
        },
        response: Some(AuditResponse {
            mount_type: "kv".into(),
            status: 200,
            data: Some(json!({"data": {"password": CANARY}, "version": 3})),
            secret: Some(AuditSecret {
                lease_id: "secret/lease/1".into(),
            }),
            wrap_info: Some(AuditWrapInfo {
                token: "hvs.wrap-canary".into(),
                accessor: ACCESSOR.into(),
                ttl: 60,
                creation_time: "2024-01-01T00:00:00Z".into(),
                creation_path: "secret/data/app".into(),
                wrapped_accessor: String::new(),
            }),
            ..Default::default()
        }),
        error: String::new(),
    }
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn audit_no_device_is_ok_and_disabled() {
    let (b, _) = broker();
    assert!(!b.is_enabled());
    b.log_request(&record()).await.unwrap();
    b.log_response(&record()).await.unwrap();
    assert!(b.list().is_empty());
}

#[tokio::test]
async fn audit_canary_never_reaches_file_only_its_hmac() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (b, _) = broker();
    b.enable("file", "file", "", file_opts(&path, &[]), false)
        .await
        .unwrap();
    assert!(b.is_enabled());
    let rec = record();
    b.log_request(&rec).await.unwrap();
    b.log_response(&rec).await.unwrap();

    let text = std::fs::read_to_string(&path).unwrap();
    for secret in [CANARY, TOKEN, ACCESSOR, "hvs.wrap-canary"] {
        assert!(!text.contains(secret), "{secret} leaked into the audit log");
    }
    let canary_hash = b.hash("file/", CANARY).await.unwrap();
    assert!(canary_hash.starts_with("hmac-sha256:"));
    assert_eq!(canary_hash.len(), "hmac-sha256:".len() + 64);
    let token_hash = b.hash("file", TOKEN).await.unwrap();
    let acc_hash = b.hash("file", ACCESSOR).await.unwrap();

    let entries = lines(&path);
    assert_eq!(entries.len(), 2);
    let (req, resp) = (&entries[0], &entries[1]);
    assert_eq!(req["type"], "request");
    assert_eq!(resp["type"], "response");
    assert!(req.get("response").is_none());
    chrono::DateTime::parse_from_rfc3339(req["time"].as_str().unwrap()).unwrap();
    assert_eq!(req["error"], "");

    // Request part: strings hashed at any depth, everything else kept.
    let r = &req["request"];
    assert_eq!(r["id"], "req-1");
    assert_eq!(r["operation"], "update");
    assert_eq!(r["path"], "secret/data/app");
    assert_eq!(r["namespace"]["id"], "root");
    assert_eq!(r["client_token"], token_hash.as_str());
    assert_eq!(r["client_token_accessor"], acc_hash.as_str());
    assert_eq!(r["data"]["data"]["password"], canary_hash.as_str());
    assert_eq!(
        r["data"]["data"]["nested"],
        json!([canary_hash, 42, true, null])
    );
    assert_eq!(r["data"]["options"]["cas"], 3);
    assert_eq!(r["headers"]["x-custom"], canary_hash.as_str());
    assert_eq!(r["remote_address"], "127.0.0.1");

    // Auth part.
    let a = &req["auth"];
    assert_eq!(a["client_token"], token_hash.as_str());
    assert_eq!(a["accessor"], acc_hash.as_str());
    assert_eq!(a["display_name"], "token");
    assert_eq!(a["policies"], json!(["root"]));
    assert_eq!(a["token_ttl"], 3600);

    // Response part.
    let p = &resp["response"];
    assert_eq!(p["data"]["data"]["password"], canary_hash.as_str());
    assert_eq!(p["data"]["version"], 3);
    assert_eq!(p["secret"]["lease_id"], "secret/lease/1");
    assert_eq!(
        p["wrap_info"]["token"],
        b.hash("file", "hvs.wrap-canary").await.unwrap().as_str()
    );
    assert_eq!(p["wrap_info"]["accessor"], acc_hash.as_str());
    assert_eq!(p["wrap_info"]["ttl"], 60);
    assert_eq!(
        resp["request"]["data"]["data"]["password"],
        canary_hash.as_str()
    );
}

#[tokio::test]
async fn audit_log_raw_shows_cleartext() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw.log");
    let (b, _) = broker();
    b.enable(
        "raw",
        "file",
        "",
        file_opts(&path, &[("log_raw", "true")]),
        false,
    )
    .await
    .unwrap();
    b.log_request(&record()).await.unwrap();
    let e = &lines(&path)[0];
    assert_eq!(e["request"]["data"]["data"]["password"], CANARY);
    assert_eq!(e["auth"]["client_token"], TOKEN);
    assert_eq!(e["request"]["headers"]["x-custom"], CANARY);
}

#[tokio::test]
async fn audit_hmac_accessor_false_leaves_accessor_clear() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acc.log");
    let (b, _) = broker();
    b.enable(
        "f",
        "file",
        "",
        file_opts(&path, &[("hmac_accessor", "false")]),
        false,
    )
    .await
    .unwrap();
    b.log_response(&record()).await.unwrap();
    let e = &lines(&path)[0];
    assert_eq!(e["auth"]["accessor"], ACCESSOR);
    assert_eq!(e["request"]["client_token_accessor"], ACCESSOR);
    assert_eq!(e["response"]["wrap_info"]["accessor"], ACCESSOR);
    // Tokens are still hashed.
    assert_eq!(
        e["auth"]["client_token"],
        b.hash("f", TOKEN).await.unwrap().as_str()
    );
}

#[tokio::test]
async fn audit_prefix_and_elide_list_responses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.log");
    let (b, _) = broker();
    b.enable(
        "p",
        "file",
        "",
        file_opts(
            &path,
            &[("prefix", "@cee: "), ("elide_list_responses", "true")],
        ),
        false,
    )
    .await
    .unwrap();
    let mut rec = record();
    rec.request.operation = "list".into();
    rec.response = Some(AuditResponse {
        data: Some(json!({"keys": ["a", "b", "c"], "key_info": {"a": {}, "b": {}}})),
        ..Default::default()
    });
    b.log_response(&rec).await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text.strip_prefix("@cee: ").expect("prefix written first");
    assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
    let e: Value = serde_json::from_str(line.trim_end()).unwrap();
    assert_eq!(e["response"]["data"]["keys"], 3);
    assert_eq!(e["response"]["data"]["key_info"], 2);
}

/// Make `dir` impossible to create files in, even for root: replace it by a
/// regular file so any path below it is ENOTDIR.
fn break_dir(dir: &Path) {
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::write(dir, b"not a directory").unwrap();
}

#[tokio::test]
async fn audit_unwritable_only_device_fails_closed() {
    let root = tempfile::tempdir().unwrap();
    let logs = root.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let (b, _) = broker();
    b.enable(
        "file",
        "file",
        "",
        file_opts(&logs.join("a.log"), &[]),
        false,
    )
    .await
    .unwrap();
    b.log_request(&record()).await.unwrap();
    break_dir(&logs);
    b.reopen();
    assert!(matches!(
        b.log_request(&record()).await,
        Err(CoreError::AuditFailed)
    ));
    assert!(matches!(
        b.log_response(&record()).await,
        Err(CoreError::AuditFailed)
    ));
}

#[tokio::test]
async fn audit_unwritable_device_with_working_second_is_ok() {
    let root = tempfile::tempdir().unwrap();
    let logs = root.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let good = root.path().join("good.log");
    let (b, _) = broker();
    b.enable(
        "bad",
        "file",
        "",
        file_opts(&logs.join("a.log"), &[]),
        false,
    )
    .await
    .unwrap();
    b.enable("good", "file", "", file_opts(&good, &[]), false)
        .await
        .unwrap();
    break_dir(&logs);
    b.reopen();
    b.log_request(&record()).await.unwrap();
    assert_eq!(lines(&good).len(), 1);
}

#[tokio::test]
async fn audit_reopen_after_rename_writes_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let rotated = dir.path().join("audit.log.1");
    let (b, _) = broker();
    b.enable("file", "file", "", file_opts(&path, &[]), false)
        .await
        .unwrap();
    b.log_request(&record()).await.unwrap();
    std::fs::rename(&path, &rotated).unwrap();
    // Before SIGHUP the open handle follows the renamed file.
    b.log_request(&record()).await.unwrap();
    b.reopen();
    b.log_response(&record()).await.unwrap();
    assert_eq!(lines(&rotated).len(), 2);
    let fresh = lines(&path);
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh[0]["type"], "response");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test]
async fn audit_salt_persists_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (b, storage) = broker();
    b.enable("file", "file", "mine", file_opts(&path, &[]), true)
        .await
        .unwrap();
    let before = b.hash("file", CANARY).await.unwrap();
    assert!(storage.keys().contains(&"salt/file".to_string()));
    assert!(storage.keys().contains(&"table".to_string()));
    let salt = storage.get("salt/file").await.unwrap().unwrap();
    assert_eq!(salt.len(), 32);

    b.clear();
    assert!(!b.is_enabled());
    assert!(b.hash("file", CANARY).await.is_err());

    let b2 = AuditBroker::new(storage.clone());
    b2.load().await.unwrap();
    assert!(b2.is_enabled());
    assert_eq!(b2.hash("file", CANARY).await.unwrap(), before);
    let list = b2.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].path, "file/");
    assert_eq!(list[0].description, "mine");
    assert!(list[0].local);
    b2.log_request(&record()).await.unwrap();
    assert_eq!(lines(&path).len(), 1);
}

#[tokio::test]
async fn audit_disable_forgets_salt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (b, storage) = broker();
    b.enable("file", "file", "", file_opts(&path, &[]), false)
        .await
        .unwrap();
    let first = b.hash("file", CANARY).await.unwrap();
    b.disable("file/").await.unwrap();
    assert!(!b.is_enabled());
    assert!(storage.get("salt/file").await.unwrap().is_none());
    // Disabling what is not there is not an error (Vault).
    b.disable("file").await.unwrap();
    b.enable("file", "file", "", file_opts(&path, &[]), false)
        .await
        .unwrap();
    assert_ne!(b.hash("file", CANARY).await.unwrap(), first);
}

#[tokio::test]
async fn audit_file_modes() {
    let dir = tempfile::tempdir().unwrap();
    let default = dir.path().join("default.log");
    let custom = dir.path().join("custom.log");
    let (b, _) = broker();
    b.enable("a", "file", "", file_opts(&default, &[]), false)
        .await
        .unwrap();
    b.enable(
        "b",
        "file",
        "",
        file_opts(&custom, &[("mode", "0640")]),
        false,
    )
    .await
    .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&default), 0o600);
    assert_eq!(mode(&custom), 0o640);
}

#[tokio::test]
async fn audit_enable_refusals_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (b, storage) = broker();
    let msg = |r: Result<(), CoreError>| match r {
        Err(CoreError::BadRequest(m)) => m,
        other => panic!("expected BadRequest, got {other:?}"),
    };

    let m = msg(b.enable("x", "syslogd", "", BTreeMap::new(), false).await);
    assert!(m.contains("syslogd"), "{m}");
    let m = msg(b.enable("x", "file", "", BTreeMap::new(), false).await);
    assert!(m.contains("file_path"), "{m}");
    let m = msg(b.enable("x", "socket", "", BTreeMap::new(), false).await);
    assert!(m.contains("address"), "{m}");
    let m = msg(b
        .enable(
            "x",
            "file",
            "",
            file_opts(&path, &[("format", "jsonx")]),
            false,
        )
        .await);
    assert!(m.contains("jsonx"), "{m}");
    let m = msg(b
        .enable(
            "x",
            "file",
            "",
            file_opts(&path, &[("log_raw", "maybe")]),
            false,
        )
        .await);
    assert!(m.contains("log_raw"), "{m}");
    let m = msg(b
        .enable("x", "file", "", file_opts(&path, &[("mode", "999")]), false)
        .await);
    assert!(m.contains("mode"), "{m}");
    let m = msg(b
        .enable("../x", "file", "", file_opts(&path, &[]), false)
        .await);
    assert!(m.contains("path"), "{m}");

    // A file that cannot be created: nothing is enabled or stored.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"").unwrap();
    let m = msg(b
        .enable(
            "x",
            "file",
            "",
            file_opts(&blocker.join("a.log"), &[]),
            false,
        )
        .await);
    assert!(m.contains("could not be opened"), "{m}");
    assert!(b.list().is_empty());
    assert!(storage.is_empty());

    b.enable("file", "file", "", file_opts(&path, &[]), false)
        .await
        .unwrap();
    let m = msg(b
        .enable("file/", "file", "", file_opts(&path, &[]), false)
        .await);
    assert!(m.contains("already in use"), "{m}");
    let discard = opts(&[("file_path", "discard")]);
    let m = msg(b
        .enable("file/nested", "file", "", discard.clone(), false)
        .await);
    assert!(m.contains("already in use"), "{m}");
    b.enable(
        "file2",
        "file",
        "",
        opts(&[("file_path", "discard")]),
        false,
    )
    .await
    .unwrap();

    let by_path = b.list_by_path();
    assert_eq!(by_path.keys().collect::<Vec<_>>(), ["file/", "file2/"]);
    let v = serde_json::to_value(&by_path).unwrap();
    assert_eq!(v["file/"]["type"], "file");
    assert_eq!(v["file/"]["options"]["file_path"], path.to_str().unwrap());
    assert_eq!(v["file2/"]["local"], false);
}

#[tokio::test]
async fn audit_hash_unknown_device_is_error() {
    let (b, _) = broker();
    assert!(matches!(
        b.hash("nope", "x").await,
        Err(CoreError::BadRequest(_))
    ));
}

#[tokio::test]
async fn audit_load_fails_when_no_device_opens() {
    let root = tempfile::tempdir().unwrap();
    let logs = root.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let (b, storage) = broker();
    b.enable(
        "file",
        "file",
        "",
        file_opts(&logs.join("a.log"), &[]),
        false,
    )
    .await
    .unwrap();
    b.clear();
    break_dir(&logs);
    let b2 = AuditBroker::new(storage);
    assert!(b2.load().await.is_err());
    // Still fail closed if the caller carries on.
    assert!(b2.is_enabled());
    assert!(matches!(
        b2.log_request(&record()).await,
        Err(CoreError::AuditFailed)
    ));
}

#[tokio::test]
async fn audit_socket_tcp_delivers_lines_and_fails_closed_when_peer_gone() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (b, _) = broker();
    let accept = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let mut reader = tokio::io::BufReader::new(sock);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        line
    });
    b.enable(
        "sock",
        "socket",
        "",
        opts(&[
            ("address", &addr),
            ("socket_type", "tcp"),
            ("write_timeout", "1s"),
        ]),
        false,
    )
    .await
    .unwrap();
    b.log_request(&record()).await.unwrap();
    let line = accept.await.unwrap();
    let e: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(e["type"], "request");
    assert!(!line.contains(CANARY));

    // The listener is gone: a fresh connection (after SIGHUP) is refused.
    b.reopen();
    assert!(matches!(
        b.log_request(&record()).await,
        Err(CoreError::AuditFailed)
    ));
}

#[tokio::test]
async fn audit_socket_to_closed_port_cannot_be_enabled() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (b, _) = broker();
    let r = b
        .enable(
            "sock",
            "socket",
            "",
            opts(&[("address", &format!("127.0.0.1:{port}"))]),
            false,
        )
        .await;
    assert!(matches!(r, Err(CoreError::BadRequest(_))), "{r:?}");
    assert!(!b.is_enabled());
}

#[tokio::test]
async fn audit_socket_udp_and_unix() {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_addr = udp.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("audit.sock");
    let unix = tokio::net::UnixListener::bind(&sock_path).unwrap();

    let (b, _) = broker();
    b.enable(
        "udp",
        "socket",
        "",
        opts(&[("address", &udp_addr), ("socket_type", "udp")]),
        false,
    )
    .await
    .unwrap();
    let (unix_conn, _) = tokio::join!(async { unix.accept().await.unwrap().0 }, async {
        b.enable(
            "unix",
            "socket",
            "",
            opts(&[
                ("address", sock_path.to_str().unwrap()),
                ("socket_type", "unix"),
            ]),
            false,
        )
        .await
        .unwrap()
    });
    b.log_request(&record()).await.unwrap();

    let mut buf = vec![0u8; 65536];
    let n = udp.recv(&mut buf).await.unwrap();
    let e: Value = serde_json::from_slice(buf[..n].strip_suffix(b"\n").unwrap()).unwrap();
    assert_eq!(e["request"]["id"], "req-1");

    let mut line = String::new();
    tokio::io::BufReader::new(unix_conn)
        .read_line(&mut line)
        .await
        .unwrap();
    let e: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(e["request"]["id"], "req-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_concurrent_writes_never_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (b, _) = broker();
    b.enable("file", "file", "", file_opts(&path, &[]), false)
        .await
        .unwrap();
    let b = Arc::new(b);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                b.log_request(&record()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(lines(&path).len(), 400);
}

#[test]
fn audit_parse_duration_go_style() {
    use std::time::Duration;
    assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
    assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("1x"), None);
    assert_eq!(parse_duration("s"), None);
}
