//! Drives the real `tresor` binary: start it with a config, talk HTTP to it.
#![allow(dead_code, unreachable_pub)]

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
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

/// A dev server with a known root token; its own HOME (it saves the root
/// token there) separate from the CLI user's.
pub async fn dev_server(dir: &Path, root: &str) -> Server {
    let port = free_port();
    let server_dir = dir.join("server");
    std::fs::create_dir_all(&server_dir).expect("server dir");
    let listen = format!("127.0.0.1:{port}");
    start(
        &[
            "--dev",
            "--dev-root-token-id",
            root,
            "--dev-listen-address",
            &listen,
        ],
        port,
        &server_dir.join("server.log"),
    )
    .await
}

/// One finished CLI invocation.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self}"))
    }
}

/// The CLI as one user on one machine: an address, maybe a token, a home,
/// and no TRESOR_/VAULT_/AWS_ variables from the developer's shell.
#[derive(Clone)]
pub struct Cli {
    addr: String,
    token: Option<String>,
    home: PathBuf,
    env: Vec<(String, String)>,
}

impl Cli {
    pub fn new(addr: &str, token: Option<&str>, home: &Path) -> Self {
        std::fs::create_dir_all(home).expect("home");
        Self {
            addr: addr.to_string(),
            token: token.map(str::to_string),
            home: home.to_path_buf(),
            env: Vec::new(),
        }
    }

    pub fn with_env(&self, key: &str, value: &str) -> Self {
        let mut c = self.clone();
        c.env.push((key.to_string(), value.to_string()));
        c
    }

    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    pub fn without_token(&self) -> Self {
        Self {
            token: None,
            ..self.clone()
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tresor"));
        c.args(args).current_dir(&self.home);
        // Nothing of the developer's shell leaks in.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("TRESOR_") || k.starts_with("VAULT_") || k.starts_with("AWS_") {
                c.env_remove(k.as_ref());
            }
        }
        c.env("HOME", &self.home).env("TRESOR_ADDR", &self.addr);
        if let Some(t) = &self.token {
            c.env("TRESOR_TOKEN", t);
        }
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tresor");
        {
            let mut input = child.stdin.take().expect("stdin");
            input.write_all(stdin.as_bytes()).expect("write stdin");
        }
        let out = child.wait_with_output().expect("wait tresor");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, "")
    }

    /// Runs and insists on success; the stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, 0, "tresor {}: {r}", args.join(" "));
        r.stdout
    }

    /// Runs with `-format=json` and insists on success.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-format=json"];
        a.extend_from_slice(args);
        let r = self.run(&a);
        assert_eq!(r.code, 0, "tresor {}: {r}", a.join(" "));
        r.json()
    }

    /// Runs and insists on failure with this exit code.
    pub fn fails(&self, code: i32, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, code, "tresor {}: {r}", args.join(" "));
        r
    }

    pub fn token_file(&self) -> PathBuf {
        self.home.join(".tresor-token")
    }
}
