//! Async client for tresor's Vault-compatible HTTP API.
//!
//! [`Client`] speaks `/v1/...` with the `X-Vault-Token` header, so it works
//! against tresor and Vault alike. Generic calls (`read`, `write`, `list`,
//! `delete`, `patch`) return the JSON envelope; the `sys/` endpoints that Vault
//! answers without an envelope (seal status, init, unseal, health, rekey,
//! generate-root) have typed helpers in [`sys`](Client::seal_status).
#![forbid(unsafe_code)]

pub mod aws;
mod error;
mod kv;
mod sys;

pub use error::ClientError;
pub use kv::{kv_path, MountInfo};

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
pub use tresor_api::Envelope;

/// Address used when neither `TRESOR_ADDR` nor `VAULT_ADDR` is set.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:8200";
/// Name of the token file in the home directory, written by `tresor login`.
pub const TOKEN_FILE: &str = ".tresor-token";

/// How to reach the server; [`Settings::from_env`] reads the usual variables.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub address: String,
    pub token: Option<String>,
    /// PEM file with the CA that signed the server's certificate.
    pub ca_cert: Option<PathBuf>,
    /// Accept any server certificate (testing only).
    pub skip_verify: bool,
    /// PEM client certificate and key, presented to the server (cert auth).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl Settings {
    /// `TRESOR_*` first, then the `VAULT_*` names so existing shells work.
    pub fn from_env() -> Result<Self, ClientError> {
        let address =
            env_either("TRESOR_ADDR", "VAULT_ADDR").unwrap_or_else(|| DEFAULT_ADDR.into());
        let token = match env_either("TRESOR_TOKEN", "VAULT_TOKEN") {
            Some(t) => Some(t),
            None => read_token_file()?,
        };
        let ca_cert = env_either("TRESOR_CACERT", "VAULT_CACERT").map(PathBuf::from);
        let skip_verify = env_either("TRESOR_SKIP_VERIFY", "VAULT_SKIP_VERIFY")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "t"));
        Ok(Self {
            address,
            token,
            ca_cert,
            skip_verify,
            client_cert: env_either("TRESOR_CLIENT_CERT", "VAULT_CLIENT_CERT").map(PathBuf::from),
            client_key: env_either("TRESOR_CLIENT_KEY", "VAULT_CLIENT_KEY").map(PathBuf::from),
        })
    }
}

/// The first of the variables `a`, `b` that is set and not blank.
pub fn env_either(a: &str, b: &str) -> Option<String> {
    [a, b]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .find(|v| !v.trim().is_empty())
}

/// `~/.tresor-token`.
pub fn token_file_path() -> Result<PathBuf, ClientError> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(ClientError::NoHome)?;
    Ok(Path::new(&home).join(TOKEN_FILE))
}

/// The saved token, if `tresor login` stored one.
pub fn read_token_file() -> Result<Option<String>, ClientError> {
    let Ok(path) = token_file_path() else {
        return Ok(None);
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let t = s.trim();
            Ok((!t.is_empty()).then(|| t.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ClientError::TokenFile { path, source }),
    }
}

/// Save `token` to `~/.tresor-token`, readable by the owner only.
pub fn store_token(token: &str) -> Result<PathBuf, ClientError> {
    let path = token_file_path()?;
    write_private(&path, token).map_err(|source| ClientError::TokenFile {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    // `mode` only applies on creation; an older file may be wider.
    #[cfg(unix)]
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(contents.as_bytes())
}

/// Async handle on one server, cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    addr: String,
    token: Option<String>,
    /// `X-Vault-Wrap-TTL` for every request: answers come back wrapped.
    wrap_ttl: Option<String>,
}

impl Client {
    /// Client for `addr` (`http(s)://host:port`) with an optional token.
    pub fn new(addr: &str, token: Option<String>) -> Result<Self, ClientError> {
        Self::from_settings(Settings {
            address: addr.to_string(),
            token,
            ..Settings::default()
        })
    }

    /// Client configured from `TRESOR_*` / `VAULT_*` and `~/.tresor-token`.
    pub fn from_env() -> Result<Self, ClientError> {
        Self::from_settings(Settings::from_env()?)
    }

    pub fn from_settings(s: Settings) -> Result<Self, ClientError> {
        let addr = s.address.trim().trim_end_matches('/').to_string();
        let parsed =
            reqwest::Url::parse(&addr).map_err(|_| ClientError::Address(s.address.clone()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(ClientError::Address(s.address));
        }
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("tresor-client/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &s.ca_cert {
            let pem = std::fs::read(path).map_err(|source| ClientError::CaCertRead {
                path: path.clone(),
                source,
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|source| {
                ClientError::CaCertParse {
                    path: path.clone(),
                    source,
                }
            })?;
            b = b.add_root_certificate(cert);
        }
        if let Some(cert) = &s.client_cert {
            let mut pem = std::fs::read(cert).map_err(|source| ClientError::ClientCertRead {
                path: cert.clone(),
                source,
            })?;
            let key_path = s.client_key.as_ref().unwrap_or(cert);
            if s.client_key.is_some() {
                pem.push(b'\n');
                pem.extend(std::fs::read(key_path).map_err(|source| {
                    ClientError::ClientCertRead {
                        path: key_path.clone(),
                        source,
                    }
                })?);
            }
            let identity = reqwest::Identity::from_pem(&pem).map_err(|source| {
                ClientError::ClientCertParse {
                    path: cert.clone(),
                    source,
                }
            })?;
            b = b.identity(identity);
        }
        if s.skip_verify {
            b = b.danger_accept_invalid_certs(true);
        }
        let http = b.build().map_err(ClientError::Build)?;
        Ok(Self {
            http,
            addr,
            token: s.token.filter(|t| !t.is_empty()),
            wrap_ttl: None,
        })
    }

    /// The server address, without trailing slash.
    pub fn address(&self) -> &str {
        &self.addr
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn set_token(&mut self, token: Option<String>) {
        self.token = token;
    }

    /// A copy of this client whose answers come back response-wrapped
    /// (`X-Vault-Wrap-TTL`, e.g. `"5m"`).
    pub fn with_wrap_ttl(&self, ttl: impl Into<String>) -> Self {
        Self {
            wrap_ttl: Some(ttl.into()),
            ..self.clone()
        }
    }

    /// A copy of this client whose answers are not wrapped.
    pub fn without_wrap(&self) -> Self {
        Self {
            wrap_ttl: None,
            ..self.clone()
        }
    }

    /// A copy of this client that sends `token` instead.
    pub fn with_token(&self, token: impl Into<String>) -> Self {
        Self {
            token: Some(token.into()),
            ..self.clone()
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Send one request and hand back status and parsed JSON body (if any).
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> Result<(StatusCode, Option<Value>, String), ClientError> {
        let url = self.url(path);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("X-Vault-Request", "true");
        if let Some(t) = &self.token {
            req = req.header("X-Vault-Token", t);
        }
        if let Some(w) = &self.wrap_ttl {
            req = req.header("X-Vault-Wrap-TTL", w);
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(b);
        }
        let resp = req.send().await.map_err(|source| {
            if source.is_connect() {
                ClientError::Connect {
                    url: url.clone(),
                    source,
                }
            } else {
                ClientError::Transport {
                    method: method.to_string(),
                    url: url.clone(),
                    source,
                }
            }
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Transport {
                method: method.to_string(),
                url: url.clone(),
                source,
            })?;
        let json = if bytes.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) => Some(v),
                Err(e) if status.is_success() => {
                    return Err(ClientError::Decode {
                        method: method.to_string(),
                        url,
                        message: e.to_string(),
                    })
                }
                // A proxy's HTML error page: keep its text as the error.
                Err(_) => {
                    Some(serde_json::json!({ "errors": [String::from_utf8_lossy(&bytes).trim()] }))
                }
            }
        };
        Ok((status, json, url))
    }

    /// Request that turns non-2xx into [`ClientError::Api`]; a 404 without
    /// data is `Ok(None)` when `missing_ok`, as Vault's client does for reads.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
        missing_ok: bool,
    ) -> Result<Option<Value>, ClientError> {
        let (status, json, url) = self
            .exchange(method.clone(), path, body, content_type)
            .await?;
        if status.is_success() {
            return Ok(json);
        }
        if status == StatusCode::NOT_FOUND && missing_ok {
            // KV v2 answers 404 *with* metadata for a deleted version.
            let has_data = json.as_ref().is_some_and(|j| {
                j.get("data").is_some_and(|d| !d.is_null())
                    || j.get("warnings").is_some_and(|w| !w.is_null())
            });
            return Ok(if has_data { json } else { None });
        }
        let errors = json
            .and_then(|j| serde_json::from_value::<tresor_api::ErrorBody>(j).ok())
            .map(|b| b.errors)
            .unwrap_or_default();
        Err(ClientError::Api {
            method: method.to_string(),
            url,
            status: status.as_u16(),
            errors,
        })
    }

    async fn call_json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        missing_ok: bool,
    ) -> Result<Option<Value>, ClientError> {
        let bytes = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| self.decode_err(&method, path, e))?),
            None => None,
        };
        self.call(method, path, bytes, "application/json", missing_ok)
            .await
    }

    fn decode_err(&self, method: &Method, path: &str, e: impl std::fmt::Display) -> ClientError {
        ClientError::Decode {
            method: method.to_string(),
            url: self.url(path),
            message: e.to_string(),
        }
    }

    fn envelope(
        &self,
        method: &Method,
        path: &str,
        v: Option<Value>,
    ) -> Result<Option<Envelope>, ClientError> {
        v.map(|v| lenient(v).map_err(|e| self.decode_err(method, path, e)))
            .transpose()
    }

    fn typed<T: Default + Serialize + DeserializeOwned>(
        &self,
        method: &Method,
        path: &str,
        v: Option<Value>,
    ) -> Result<T, ClientError> {
        let v = v.ok_or_else(|| self.decode_err(method, path, "empty body"))?;
        lenient(v).map_err(|e| self.decode_err(method, path, e))
    }

    /// `GET /v1/<path>`; `None` when nothing is there.
    pub async fn read(&self, path: &str) -> Result<Option<Envelope>, ClientError> {
        let v = self.call_json(Method::GET, path, None, true).await?;
        self.envelope(&Method::GET, path, v)
    }

    /// `GET /v1/<path>` returning the raw JSON body, for answers that put
    /// fields outside the envelope (`sys/mounts`, `sys/key-status`...).
    pub async fn read_raw(&self, path: &str) -> Result<Option<Value>, ClientError> {
        self.call_json(Method::GET, path, None, true).await
    }

    /// `PUT /v1/<path>` with a JSON body; `None` on 204.
    pub async fn write(&self, path: &str, body: &Value) -> Result<Option<Envelope>, ClientError> {
        let v = self.call_json(Method::PUT, path, Some(body), false).await?;
        self.envelope(&Method::PUT, path, v)
    }

    /// `DELETE /v1/<path>`.
    pub async fn delete(&self, path: &str) -> Result<Option<Envelope>, ClientError> {
        let v = self.call_json(Method::DELETE, path, None, false).await?;
        self.envelope(&Method::DELETE, path, v)
    }

    /// `DELETE /v1/<path>` with a JSON body (e.g. kv v2 `delete` of versions).
    pub async fn delete_with(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<Option<Envelope>, ClientError> {
        let v = self
            .call_json(Method::DELETE, path, Some(body), false)
            .await?;
        self.envelope(&Method::DELETE, path, v)
    }

    /// `LIST /v1/<path>`; `None` when the prefix is empty.
    pub async fn list(&self, path: &str) -> Result<Option<Envelope>, ClientError> {
        let method = list_method()?;
        let v = self.call_json(method.clone(), path, None, true).await?;
        self.envelope(&method, path, v)
    }

    /// `PATCH /v1/<path>`; KV v2 wants `application/merge-patch+json`.
    pub async fn patch(
        &self,
        path: &str,
        body: &Value,
        content_type: &str,
    ) -> Result<Option<Envelope>, ClientError> {
        let bytes =
            serde_json::to_vec(body).map_err(|e| self.decode_err(&Method::PATCH, path, e))?;
        let v = self
            .call(Method::PATCH, path, Some(bytes), content_type, false)
            .await?;
        self.envelope(&Method::PATCH, path, v)
    }

    /// Any method, raw JSON in and out; the escape hatch for odd endpoints.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, ClientError> {
        let m = Method::from_bytes(method.as_bytes())
            .map_err(|_| ClientError::Method(method.to_string()))?;
        self.call_json(m, path, body, false).await
    }

    /// `auth/token/lookup-self`.
    pub async fn lookup_self(&self) -> Result<Envelope, ClientError> {
        let v = self
            .call_json(Method::GET, "auth/token/lookup-self", None, false)
            .await?;
        self.typed(&Method::GET, "auth/token/lookup-self", v)
    }

    /// `auth/token/renew-self`; `increment` is a duration string like `1h`.
    pub async fn renew_self(&self, increment: Option<&str>) -> Result<Envelope, ClientError> {
        let body = match increment {
            Some(i) => serde_json::json!({ "increment": i }),
            None => serde_json::json!({}),
        };
        let v = self
            .call_json(Method::PUT, "auth/token/renew-self", Some(&body), false)
            .await?;
        self.typed(&Method::PUT, "auth/token/renew-self", v)
    }
}

fn list_method() -> Result<Method, ClientError> {
    Method::from_bytes(b"LIST").map_err(|_| ClientError::Method("LIST".into()))
}

/// Deserialize `v` over `T::default()`, so a server that omits a field we
/// type as required (older Vault, a partial tresor endpoint) still parses.
fn lenient<T: Default + Serialize + DeserializeOwned>(v: Value) -> Result<T, serde_json::Error> {
    let mut base = serde_json::to_value(T::default())?;
    if let (Value::Object(b), Value::Object(o)) = (&mut base, v) {
        for (k, val) in o {
            // `null` for a non-optional field would fail; keep the default.
            if val.is_null() && b.get(k.as_str()).is_some_and(|d| !d.is_null()) {
                continue;
            }
            b.insert(k, val);
        }
    }
    serde_json::from_value(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_fills_missing_envelope_fields() {
        let env: Envelope = lenient(serde_json::json!({"data": {"a": "b"}})).unwrap();
        assert_eq!(env.data, Some(serde_json::json!({"a": "b"})));
        assert_eq!(env.lease_duration, 0);
        let env: Envelope =
            lenient(serde_json::json!({"request_id": null, "lease_id": ""})).unwrap();
        assert_eq!(env.request_id, "");
    }

    #[test]
    fn rejects_bad_address() {
        assert!(matches!(
            Client::new("127.0.0.1:8200", None),
            Err(ClientError::Address(_))
        ));
        let c = Client::new("http://127.0.0.1:8200/", None).unwrap();
        assert_eq!(
            c.url("/secret/data/x"),
            "http://127.0.0.1:8200/v1/secret/data/x"
        );
    }
}
