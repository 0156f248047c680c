//! Nothing acknowledged is ever lost: a server on SQLite is killed with
//! SIGKILL in the middle of a stream of KV writes; after restart and unseal
//! every write that was answered 200 is there, with its value.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    let cfg = common::write_config(dir.path(), port);
    let log = dir.path().join("server.log");
    let cfg_s = cfg.to_string_lossy().to_string();
    let mut server = common::start(&["--config", &cfg_s], port, &log).await;
    let (key, root) = common::init_unseal(&server.addr).await;

    // Eight writers, each its own sequence of keys, until the kill.
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let (addr, root, acked) = (server.addr.clone(), root.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0u64.. {
                let path = format!("w{w}/k{i}");
                let r = client
                    .post(format!("{addr}/v1/secret/data/{path}"))
                    .header("X-Vault-Token", &root)
                    .json(&json!({"data": {"n": i}}))
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().as_u16() == 200 => acked.lock().push((path, i)),
                    _ => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().clone();
    assert!(
        acked.len() > 50,
        "too few writes acknowledged before the kill: {}",
        acked.len()
    );

    let server = common::start(&["--config", &cfg_s], port, &log).await;
    let (s, status) = common::call(
        &server.addr,
        "",
        "GET",
        "sys/seal-status",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(status["sealed"], true, "a restarted server comes up sealed");
    common::unseal(&server.addr, &key).await;
    for (path, n) in &acked {
        let (s, b) = common::call(
            &server.addr,
            &root,
            "GET",
            &format!("secret/data/{path}"),
            serde_json::Value::Null,
        )
        .await;
        assert_eq!(s, 200, "acknowledged write {path} lost: {b}");
        assert_eq!(b["data"]["data"]["n"], *n, "{path}");
    }
    eprintln!("{} acknowledged writes survived SIGKILL", acked.len());
}
