//! Server configuration in Vault's shape, from HCL or JSON (by extension).
//!
//! Both formats are first turned into one JSON tree (HCL blocks become
//! `{"ident": [{"label": {...}}]}`, the shape of Vault's JSON config), then
//! one interpreter reads that tree into [`Config`], so the two formats can't
//! drift apart.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hcl::eval::Evaluate;
use serde_json::{Map, Value};
use thiserror::Error;
use tresor_http::{ListenerConfig, TlsSettings, TlsVersion};

/// Vault's default and maximum lease TTL.
pub(crate) const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(768 * 3600);
pub(crate) const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1:8200";
/// The embedded default storage when no `storage` stanza is given.
pub(crate) const DEFAULT_DATA_DIR: &str = "./tresor-data";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StorageConfig {
    Sqlite { path: PathBuf },
    Inmem,
}

impl StorageConfig {
    pub(crate) fn default_sqlite() -> Self {
        StorageConfig::Sqlite {
            path: Path::new(DEFAULT_DATA_DIR).to_path_buf(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) storage: StorageConfig,
    pub(crate) listeners: Vec<ListenerConfig>,
    pub(crate) api_addr: Option<String>,
    pub(crate) cluster_addr: Option<String>,
    pub(crate) cluster_name: Option<String>,
    pub(crate) default_lease_ttl: Duration,
    pub(crate) max_lease_ttl: Duration,
    pub(crate) log_level: Option<String>,
    pub(crate) ui: bool,
    /// Listener `max_request_size` / `max_request_duration`: Vault sets them
    /// per listener, tresor applies one value to all (they must agree).
    pub(crate) max_request_size: Option<usize>,
    pub(crate) max_request_duration: Option<Duration>,
    pub(crate) pid_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            storage: StorageConfig::default_sqlite(),
            listeners: Vec::new(),
            api_addr: None,
            cluster_addr: None,
            cluster_name: None,
            default_lease_ttl: DEFAULT_LEASE_TTL,
            max_lease_ttl: DEFAULT_LEASE_TTL,
            log_level: None,
            ui: false,
            max_request_size: None,
            max_request_duration: None,
            pid_file: None,
        }
    }
}

#[derive(Debug, Error)]
pub(crate) enum ConfigError {
    #[error("cannot read config file {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("error parsing config file {file}: {message}")]
    Parse { file: String, message: String },
    #[error("invalid config file {file}: {message}")]
    Invalid { file: String, message: String },
}

/// Read and check a config file.
pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    parse(&text, is_json).map_err(|e| match e {
        Error::Parse(message) => ConfigError::Parse { file, message },
        Error::Invalid(message) => ConfigError::Invalid { file, message },
    })
}

enum Error {
    Parse(String),
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> Error {
    Error::Invalid(message.into())
}

/// Parse config text (JSON or HCL).
fn parse(text: &str, is_json: bool) -> Result<Config, Error> {
    let tree = if is_json {
        // serde_json's message carries "at line L column C".
        let v: Value = serde_json::from_str(text).map_err(|e| Error::Parse(e.to_string()))?;
        match v {
            Value::Object(m) => m,
            _ => return Err(Error::Parse("the top level must be an object".into())),
        }
    } else {
        // hcl-rs' parse error names the line and column and quotes the line.
        let body = hcl::parse(text).map_err(|e| Error::Parse(e.to_string()))?;
        body_to_json(&body)?
    };
    interpret(tree)
}

fn body_to_json(body: &hcl::Body) -> Result<Map<String, Value>, Error> {
    let ctx = hcl::eval::Context::new();
    let mut out = Map::new();
    for structure in body.iter() {
        match structure {
            hcl::Structure::Attribute(attr) => {
                let key = attr.key.as_str();
                let value = attr
                    .expr
                    .evaluate(&ctx)
                    .map_err(|e| invalid(format!("{key}: {e}")))?;
                let value =
                    serde_json::to_value(value).map_err(|e| invalid(format!("{key}: {e}")))?;
                if out.insert(key.to_string(), value).is_some() {
                    return Err(invalid(format!("{key}: defined more than once")));
                }
            }
            hcl::Structure::Block(block) => {
                let mut inner = Value::Object(body_to_json(&block.body)?);
                for label in block.labels.iter().rev() {
                    let mut m = Map::new();
                    m.insert(label.as_str().to_string(), inner);
                    inner = Value::Object(m);
                }
                let slot = out
                    .entry(block.identifier.as_str().to_string())
                    .or_insert_with(|| Value::Array(Vec::new()));
                match slot {
                    Value::Array(items) => items.push(inner),
                    _ => {
                        return Err(invalid(format!(
                            "{}: used both as an attribute and a block",
                            block.identifier.as_str()
                        )))
                    }
                }
            }
        }
    }
    Ok(out)
}

/// A stanza (`storage "sqlite" {...}`) as `(type, body)` pairs, from either
/// `{"sqlite": {...}}` or a list of those.
/// `(type label, body)` of one stanza.
type Stanza = (String, Map<String, Value>);

fn stanzas(key: &str, v: Value) -> Result<Vec<Stanza>, Error> {
    let items = match v {
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        _ => return Err(invalid(format!("{key}: expected a block"))),
    };
    let mut out = Vec::new();
    for item in items {
        let Value::Object(m) = item else {
            return Err(invalid(format!("{key}: expected a block")));
        };
        for (label, body) in m {
            let body = match body {
                Value::Object(b) => b,
                // `listener "tcp" {}` written in JSON as a list of bodies.
                Value::Array(bodies) => {
                    for b in bodies {
                        let Value::Object(b) = b else {
                            return Err(invalid(format!("{key} {label:?}: expected a block")));
                        };
                        out.push((label.clone(), b));
                    }
                    continue;
                }
                _ => return Err(invalid(format!("{key} {label:?}: expected a block"))),
            };
            out.push((label, body));
        }
    }
    Ok(out)
}

fn string(key: &str, v: &Value) -> Result<String, Error> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(invalid(format!("{key}: expected a string"))),
    }
}

fn boolean(key: &str, v: &Value) -> Result<bool, Error> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.as_str() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" | "" => Ok(false),
            _ => Err(invalid(format!("{key}: expected a boolean, got {s:?}"))),
        },
        Value::Number(n) => Ok(n.as_u64() != Some(0)),
        _ => Err(invalid(format!("{key}: expected a boolean"))),
    }
}

fn duration(key: &str, v: &Value) -> Result<Duration, Error> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| invalid(format!("{key}: expected a duration"))),
        Value::String(s) => {
            tresor_sdk::fields::parse_duration(s).map_err(|e| invalid(format!("{key}: {e}")))
        }
        _ => Err(invalid(format!("{key}: expected a duration like \"768h\""))),
    }
}

fn interpret(tree: Map<String, Value>) -> Result<Config, Error> {
    let mut c = Config::default();
    let mut storage_seen = false;
    let mut seal_seen = false;
    for (key, value) in tree {
        match key.as_str() {
            "storage" => {
                for (kind, body) in stanzas(&key, value)? {
                    if storage_seen {
                        return Err(invalid("only one storage stanza may be given"));
                    }
                    storage_seen = true;
                    c.storage = storage(&kind, body)?;
                }
            }
            "listener" => {
                for (kind, body) in stanzas(&key, value)? {
                    let (l, limits) = listener(&kind, body)?;
                    c.listeners.push(l);
                    same_limit(&mut c.max_request_size, limits.size, "max_request_size")?;
                    same_limit(
                        &mut c.max_request_duration,
                        limits.duration,
                        "max_request_duration",
                    )?;
                }
            }
            "seal" => {
                for (kind, body) in stanzas(&key, value)? {
                    if seal_seen {
                        return Err(invalid("only one seal stanza may be given"));
                    }
                    seal_seen = true;
                    if kind != "shamir" {
                        return Err(invalid(format!(
                            "seal {kind:?} is not supported (only \"shamir\" is)"
                        )));
                    }
                    if let Some(k) = body.keys().next() {
                        return Err(invalid(format!("seal \"shamir\": unknown key {k:?}")));
                    }
                }
            }
            "api_addr" => c.api_addr = Some(string(&key, &value)?),
            "cluster_addr" => c.cluster_addr = Some(string(&key, &value)?),
            "cluster_name" => c.cluster_name = Some(string(&key, &value)?),
            "default_lease_ttl" => c.default_lease_ttl = duration(&key, &value)?,
            "max_lease_ttl" => c.max_lease_ttl = duration(&key, &value)?,
            "log_level" => c.log_level = Some(log_level(&string(&key, &value)?)?),
            "ui" => c.ui = boolean(&key, &value)?,
            // Accepted for compatibility with Vault configs: tresor never
            // needs mlock (no swap-sensitive allocations are pinned).
            "disable_mlock" => {
                boolean(&key, &value)?;
            }
            "pid_file" => c.pid_file = Some(PathBuf::from(string(&key, &value)?)),
            // Accepted so Vault configs load unchanged: metrics are always
            // served at sys/metrics, and every engine is built in.
            "telemetry" | "plugin_directory" => {}
            other => return Err(invalid(format!("unknown key {other:?}"))),
        }
    }
    if c.default_lease_ttl > c.max_lease_ttl {
        return Err(invalid(
            "default_lease_ttl must not be longer than max_lease_ttl",
        ));
    }
    Ok(c)
}

fn log_level(s: &str) -> Result<String, Error> {
    let level = match s.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "err" | "error" => "error",
        other => {
            return Err(invalid(format!(
                "log_level {other:?} is not one of trace, debug, info, warn, error"
            )))
        }
    };
    Ok(level.to_string())
}

fn storage(kind: &str, body: Map<String, Value>) -> Result<StorageConfig, Error> {
    match kind {
        "sqlite" => {
            let mut path = None;
            for (k, v) in &body {
                match k.as_str() {
                    "path" => path = Some(PathBuf::from(string(k, v)?)),
                    other => {
                        return Err(invalid(format!(
                            "storage \"sqlite\": unknown key {other:?}"
                        )))
                    }
                }
            }
            Ok(match path {
                Some(p) if p.as_os_str().is_empty() => {
                    return Err(invalid("storage \"sqlite\": path must not be empty"))
                }
                Some(p) => StorageConfig::Sqlite { path: p },
                None => StorageConfig::default_sqlite(),
            })
        }
        "inmem" => {
            if let Some(k) = body.keys().next() {
                return Err(invalid(format!("storage \"inmem\": unknown key {k:?}")));
            }
            Ok(StorageConfig::Inmem)
        }
        other => Err(invalid(format!(
            "storage {other:?} is not supported (use \"sqlite\" or \"inmem\")"
        ))),
    }
}

fn socket_addr(s: &str) -> Result<SocketAddr, Error> {
    // Vault accepts ":8200" for all interfaces.
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    if let Ok(a) = full.parse::<SocketAddr>() {
        return Ok(a);
    }
    full.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| invalid(format!("listener \"tcp\": invalid address {s:?}")))
}

/// A listener's request limits, when its stanza sets them.
#[derive(Default)]
struct ListenerLimits {
    size: Option<usize>,
    duration: Option<Duration>,
}

fn same_limit<T: PartialEq + std::fmt::Debug>(
    current: &mut Option<T>,
    new: Option<T>,
    key: &str,
) -> Result<(), Error> {
    match (current.as_ref(), new) {
        (Some(a), Some(b)) if *a != b => Err(invalid(format!(
            "listener \"tcp\": {key} differs between listeners ({a:?} and {b:?}); tresor applies one value to all listeners"
        ))),
        (_, Some(b)) => {
            *current = Some(b);
            Ok(())
        }
        _ => Ok(()),
    }
}

fn request_size(key: &str, v: &Value) -> Result<Option<usize>, Error> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
    .ok_or_else(|| invalid(format!("listener \"tcp\": {key}: expected a size in bytes")))?;
    match n {
        // As Vault: 0 means the default.
        0 => Ok(None),
        n if n < 0 => Err(invalid(format!(
            "listener \"tcp\": {key}: tresor always bounds request bodies; give a size in bytes"
        ))),
        n => usize::try_from(n)
            .map(Some)
            .map_err(|_| invalid(format!("listener \"tcp\": {key}: too large"))),
    }
}

fn listener(
    kind: &str,
    body: Map<String, Value>,
) -> Result<(ListenerConfig, ListenerLimits), Error> {
    if kind != "tcp" {
        return Err(invalid(format!(
            "listener {kind:?} is not supported (only \"tcp\" is)"
        )));
    }
    let mut address = DEFAULT_LISTEN_ADDRESS.to_string();
    let mut tls_disable = false;
    let mut cert = None;
    let mut key = None;
    let mut min_version = TlsVersion::default();
    let mut client_ca = None;
    let mut no_client_certs = false;
    let mut limits = ListenerLimits::default();
    for (k, v) in &body {
        match k.as_str() {
            "address" => address = string(k, v)?,
            "tls_disable" => tls_disable = boolean(k, v)?,
            "tls_cert_file" => cert = Some(PathBuf::from(string(k, v)?)),
            "tls_key_file" => key = Some(PathBuf::from(string(k, v)?)),
            "tls_min_version" => {
                min_version = string(k, v)?
                    .parse()
                    .map_err(|e: String| invalid(format!("listener \"tcp\": {e}")))?
            }
            "tls_client_ca_file" => client_ca = Some(PathBuf::from(string(k, v)?)),
            "tls_disable_client_certs" => no_client_certs = boolean(k, v)?,
            "max_request_size" => limits.size = request_size(k, v)?,
            "max_request_duration" => {
                let d = duration(k, v)?;
                limits.duration = (!d.is_zero()).then_some(d);
            }
            // No request forwarding between nodes yet; harmless to accept.
            "cluster_address" => {
                string(k, v)?;
            }
            other => return Err(invalid(format!("listener \"tcp\": unknown key {other:?}"))),
        }
    }
    let address = socket_addr(&address)?;
    let tls = if tls_disable {
        None
    } else {
        let (Some(cert_file), Some(key_file)) = (cert, key) else {
            return Err(invalid(format!(
                "listener \"tcp\" at {address}: tls_cert_file and tls_key_file are required unless tls_disable = true"
            )));
        };
        Some(TlsSettings {
            cert_file,
            key_file,
            min_version,
            // As Vault: with client certificates disabled, none is requested.
            client_ca_file: client_ca.filter(|_| !no_client_certs),
        })
    };
    Ok((ListenerConfig { address, tls }, limits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hcl(text: &str) -> Result<Config, String> {
        parse(text, false).map_err(|e| match e {
            Error::Parse(m) | Error::Invalid(m) => m,
        })
    }

    fn json(text: &str) -> Result<Config, String> {
        parse(text, true).map_err(|e| match e {
            Error::Parse(m) | Error::Invalid(m) => m,
        })
    }

    const FULL: &str = r#"
        storage "sqlite" {
          path = "/var/lib/tresor/tresor.db"
        }
        listener "tcp" {
          address     = "127.0.0.1:8200"
          tls_disable = true
        }
        listener "tcp" {
          address         = "0.0.0.0:8201"
          tls_cert_file   = "/etc/tresor/cert.pem"
          tls_key_file    = "/etc/tresor/key.pem"
          tls_min_version = "tls13"
          tls_client_ca_file = "/etc/tresor/ca.pem"
        }
        seal "shamir" {}
        api_addr          = "https://tresor.example:8200"
        cluster_addr      = "https://tresor.example:8201"
        cluster_name      = "prod"
        default_lease_ttl = "1h"
        max_lease_ttl     = "24h"
        log_level         = "Debug"
        ui                = true
        disable_mlock     = true
    "#;

    #[test]
    fn full_hcl() {
        let c = hcl(FULL).unwrap();
        assert_eq!(
            c.storage,
            StorageConfig::Sqlite {
                path: "/var/lib/tresor/tresor.db".into()
            }
        );
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.listeners[0].tls, None);
        let tls = c.listeners[1].tls.clone().unwrap();
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert_eq!(tls.client_ca_file, Some("/etc/tresor/ca.pem".into()));
        assert_eq!(c.listeners[1].address, "0.0.0.0:8201".parse().unwrap());
        assert_eq!(c.default_lease_ttl, Duration::from_secs(3600));
        assert_eq!(c.max_lease_ttl, Duration::from_secs(86400));
        assert_eq!(c.log_level.as_deref(), Some("debug"));
        assert!(c.ui);
        assert_eq!(c.cluster_name.as_deref(), Some("prod"));
    }

    #[test]
    fn same_config_in_json() {
        let c = json(
            r#"{
              "storage": {"sqlite": {"path": "/var/lib/tresor/tresor.db"}},
              "listener": [
                {"tcp": {"address": "127.0.0.1:8200", "tls_disable": "true"}},
                {"tcp": {"address": "0.0.0.0:8201", "tls_cert_file": "/etc/tresor/cert.pem",
                         "tls_key_file": "/etc/tresor/key.pem", "tls_min_version": "tls13",
                         "tls_client_ca_file": "/etc/tresor/ca.pem"}}
              ],
              "seal": {"shamir": {}},
              "api_addr": "https://tresor.example:8200",
              "cluster_addr": "https://tresor.example:8201",
              "cluster_name": "prod",
              "default_lease_ttl": "1h",
              "max_lease_ttl": 86400,
              "log_level": "debug",
              "ui": true,
              "disable_mlock": true
            }"#,
        )
        .unwrap();
        assert_eq!(c, hcl(FULL).unwrap());
        // A single listener as an object.
        let c = json(r#"{"listener": {"tcp": {"address": ":8200", "tls_disable": 1}}}"#).unwrap();
        assert_eq!(c.listeners[0].address, "0.0.0.0:8200".parse().unwrap());
    }

    #[test]
    fn defaults() {
        let c = hcl("listener \"tcp\" {\n tls_disable = true\n}\n").unwrap();
        assert_eq!(
            c.storage,
            StorageConfig::Sqlite {
                path: "./tresor-data".into()
            }
        );
        assert_eq!(c.listeners[0].address, "127.0.0.1:8200".parse().unwrap());
        assert_eq!(c.default_lease_ttl, Duration::from_secs(768 * 3600));
        assert_eq!(c.max_lease_ttl, Duration::from_secs(768 * 3600));
        assert_eq!(
            hcl("storage \"inmem\" {}").unwrap().storage,
            StorageConfig::Inmem
        );
    }

    #[test]
    fn vault_config_keys_load() {
        let c = hcl(r#"
            pid_file = "/run/tresor.pid"
            plugin_directory = "/etc/vault/plugins"
            telemetry {
              prometheus_retention_time = "30s"
              disable_hostname = true
            }
            listener "tcp" {
              address = "127.0.0.1:8200"
              tls_cert_file = "/c.pem"
              tls_key_file = "/k.pem"
              tls_client_ca_file = "/ca.pem"
              tls_disable_client_certs = true
              max_request_size = 1048576
              max_request_duration = "30s"
            }
            listener "tcp" {
              address = "127.0.0.1:8201"
              tls_disable = true
              max_request_size = 0
            }
        "#)
        .unwrap();
        assert_eq!(c.pid_file, Some(PathBuf::from("/run/tresor.pid")));
        assert_eq!(c.max_request_size, Some(1_048_576));
        assert_eq!(c.max_request_duration, Some(Duration::from_secs(30)));
        let tls = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(tls.client_ca_file, None, "client certificates disabled");

        let e = hcl("listener \"tcp\" {\n tls_disable = true\n max_request_size = 10\n}\nlistener \"tcp\" {\n address = \"127.0.0.1:2\"\n tls_disable = true\n max_request_size = 20\n}").unwrap_err();
        assert!(e.contains("max_request_size differs"), "{e}");
        let e =
            hcl("listener \"tcp\" {\n tls_disable = true\n max_request_size = -1\n}").unwrap_err();
        assert!(e.contains("always bounds"), "{e}");
    }

    #[test]
    fn errors_are_clear() {
        let e = hcl("storage \"sqlite\" {\n  path = \n}\n").unwrap_err();
        assert!(e.contains('2') || e.contains("line"), "{e}");
        let e = json("{\n \"ui\": true,\n \"x\": }").unwrap_err();
        assert!(e.contains("line 3"), "{e}");
        assert!(hcl("bogus = 1")
            .unwrap_err()
            .contains("unknown key \"bogus\""));
        assert!(hcl("seal \"awskms\" {}")
            .unwrap_err()
            .contains("not supported"));
        assert!(hcl("storage \"raft\" {}")
            .unwrap_err()
            .contains("not supported"));
        assert!(hcl("listener \"tcp\" {\n address = \"127.0.0.1:1\"\n}")
            .unwrap_err()
            .contains("tls_cert_file"));
        assert!(hcl("listener \"tcp\" {\n tls_disable = true\n nope = 1\n}")
            .unwrap_err()
            .contains("unknown key \"nope\""));
        assert!(hcl("default_lease_ttl = \"soon\"").is_err());
        assert!(hcl("default_lease_ttl = \"48h\"\nmax_lease_ttl = \"1h\"").is_err());
        assert!(hcl("log_level = \"loud\"").is_err());
        assert!(hcl("storage \"inmem\" {}\nstorage \"inmem\" {}").is_err());
        assert!(
            hcl("listener \"tcp\" {\n tls_disable = true\n tls_min_version = \"tls10\"\n}")
                .is_err()
        );
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.hcl");
        std::fs::write(&p, "ui = true\nstorage \"sqlite\" {\n").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("bad.hcl"), "{e}");
        let e = load(&dir.path().join("missing.hcl"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.hcl"), "{e}");
    }
}
