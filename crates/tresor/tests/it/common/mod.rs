//! Drives the real `tresor` binary: start it with a config, talk HTTP to it.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn write_config(dir: &Path, port: u16) -> std::path::PathBuf {
    let cfg = dir.join("tresor.hcl");
    std::fs::write(
        &cfg,
        format!(
            "storage \"sqlite\" {{ path = \"{}\" }}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  tls_disable = true\n}}\n",
            dir.join("data").display()
        ),
    )
    .expect("config");
    cfg
}

/// Start `tresor server` with these arguments; its output goes to `log`.
pub async fn start(args: &[&str], port: u16, log: &Path) -> Server {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    let err = out.try_clone().expect("log");
    // A dev server saves its root token in ~/.tresor-token: keep that in
    // the test's directory, not the home of whoever runs the tests.
    let home = log.parent().unwrap_or(Path::new("."));
    let mut child = Command::new(env!("CARGO_BIN_EXE_tresor"))
        .arg("server")
        .args(args)
        .env("TRESOR_LOG", "debug")
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn tresor");
    let addr = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = reqwest::Client::new();
    while Instant::now() < deadline {
        if client
            .get(format!("{addr}/v1/sys/seal-status"))
            .send()
            .await
            .is_ok()
        {
            return Server { child, addr };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("tresor did not start; see {}", log.display());
}

pub async fn call(addr: &str, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let client = reqwest::Client::new();
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut rb = client
        .request(m, format!("{addr}/v1/{path}"))
        .header("X-Vault-Token", token);
    if !body.is_null() {
        rb = rb.json(&body);
    }
    let resp = rb.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Initialise with one share, unseal, mount KV v2 at `secret/`.
pub async fn init_unseal(addr: &str) -> (String, String) {
    let (s, init) = call(
        addr,
        "",
        "PUT",
        "sys/init",
        json!({"secret_shares": 1, "secret_threshold": 1}),
    )
    .await;
    assert_eq!(s, 200, "{init}");
    let key = init["keys"][0].as_str().expect("key").to_string();
    let root = init["root_token"].as_str().expect("root").to_string();
    unseal(addr, &key).await;
    let (s, b) = call(
        addr,
        &root,
        "POST",
        "sys/mounts/secret",
        json!({"type": "kv", "options": {"version": "2"}}),
    )
    .await;
    assert_eq!(s, 204, "{b}");
    (key, root)
}

pub async fn unseal(addr: &str, key: &str) {
    let (s, b) = call(addr, "", "PUT", "sys/unseal", json!({ "key": key })).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["sealed"], false, "{b}");
}
