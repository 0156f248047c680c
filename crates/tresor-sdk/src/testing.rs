//! In-memory storage and request builders for backend tests.

use std::collections::BTreeMap;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::{Operation, Request, Storage, StorageError, StorageOp};

/// A logical storage kept in a sorted map.
#[derive(Default)]
pub struct MemoryStorage {
    entries: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn keys(&self) -> Vec<String> {
        self.entries.lock().keys().cloned().collect()
    }
}

/// One level of listing over sorted keys: direct children, folders once with
/// a trailing slash. Shared by every in-memory store.
pub fn list_one_level<'a>(keys: impl Iterator<Item = &'a String>, prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for k in keys {
        let Some(rest) = k.strip_prefix(prefix) else {
            continue;
        };
        let item = match rest.find('/') {
            Some(i) => &rest[..=i],
            None => rest,
        };
        if out.last().map(String::as_str) != Some(item) {
            out.push(item.to_string());
        }
    }
    out
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.entries.lock().get(key).cloned())
    }
    async fn put(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.entries.lock().insert(key.to_string(), value.to_vec());
        Ok(())
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.entries.lock().remove(key);
        Ok(())
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let entries = self.entries.lock();
        Ok(list_one_level(
            entries
                .range(prefix.to_string()..)
                .map(|(k, _)| k)
                .take_while(|k| k.starts_with(prefix)),
            prefix,
        ))
    }
    async fn batch(&self, ops: Vec<StorageOp>) -> Result<(), StorageError> {
        let mut entries = self.entries.lock();
        for op in ops {
            match op {
                StorageOp::Put { key, value } => {
                    entries.insert(key, value);
                }
                StorageOp::Delete { key } => {
                    entries.remove(&key);
                }
            }
        }
        Ok(())
    }
}

/// Build a request for a backend test: `req(Operation::Update, "data/foo").body(json!({...}))`.
pub fn req(op: Operation, path: &str) -> Request {
    let mut r = Request::new(op, path);
    r.id = "test-request".into();
    r.client_token_id = Some("test-token-id".into());
    r.mount_point = "test/".into();
    r
}

impl Request {
    /// Replace the request fields with a JSON object (test helper).
    pub fn body(mut self, v: serde_json::Value) -> Self {
        if let serde_json::Value::Object(m) = v {
            self.data = m;
        }
        self
    }
}

/// Where moto, the AWS API stand-in `scripts/test` starts, listens:
/// `TRESOR_MOTO_ENDPOINT`, else `http://127.0.0.1:5000`. `None`, with a
/// notice, when the variable is unset and nothing listens there, so that a
/// test can skip; set but unreachable is a failure.
pub fn moto() -> Option<String> {
    use std::net::{TcpStream, ToSocketAddrs};

    let env = std::env::var("TRESOR_MOTO_ENDPOINT")
        .ok()
        .filter(|s| !s.is_empty());
    let url = env
        .clone()
        .unwrap_or_else(|| "http://127.0.0.1:5000".into());
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url.as_str()));
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = match (authority.contains(':'), scheme) {
        (true, _) => authority.to_string(),
        (false, "https") => format!("{authority}:443"),
        (false, _) => format!("{authority}:80"),
    };
    let reachable = authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| {
            TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).is_ok()
        });
    match (reachable, env) {
        (true, _) => Some(url),
        (false, Some(_)) => panic!("TRESOR_MOTO_ENDPOINT={url} is set but unreachable"),
        (false, None) => {
            eprintln!("SKIPPED: moto is not reachable at {url} and TRESOR_MOTO_ENDPOINT is unset (scripts/test starts it)");
            None
        }
    }
}
