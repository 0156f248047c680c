//! The audit broker and its devices (Vault's `sys/audit`).
//!
//! Every request is logged twice (request, then response) to every enabled
//! device, as one JSON line per entry in Vault's shape. Each device has its
//! own random salt; unless the device logs raw, every string value in request
//! and response data, tokens, accessors and headers is replaced by
//! `hmac-sha256:<hex>` under that salt, so operators can find a known value
//! with `sys/audit-hash` without the log ever holding it.
//!
//! Fail closed: when devices are enabled and none of them could write an
//! entry, logging returns [`CoreError::AuditFailed`] and the core refuses the
//! request. With no device enabled, logging costs one atomic load.
//!
//! Persistence (in the barrier view the core hands over): the device table
//! at `table`, each device's salt at `salt/<path>`.

mod device;
mod format;
mod record;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tresor_sdk::{Storage, StorageOp};

use crate::CoreError;

pub use device::{AuditDevice, AuditDeviceError};
pub use record::{AuditAuth, AuditRecord, AuditRequest, AuditResponse, AuditSecret, AuditWrapInfo};

use device::{DiscardDevice, FileDevice, SocketDevice, SocketKind, StdoutDevice};
use format::{EntryKind, Salt, Style};

const TABLE_KEY: &str = "table";
const SALT_PREFIX: &str = "salt/";
const DEFAULT_SOCKET_TIMEOUT: Duration = Duration::from_secs(2);

/// One enabled device as `sys/audit` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditDeviceInfo {
    /// With a trailing slash (`file/`).
    pub path: String,
    #[serde(rename = "type")]
    pub device_type: String,
    pub description: String,
    /// As given at enable time.
    pub options: BTreeMap<String, String>,
    pub local: bool,
}

#[derive(Default, Serialize, Deserialize)]
struct DeviceTable {
    entries: Vec<AuditDeviceInfo>,
}

/// Options every device type understands.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CommonOptions {
    hmac_accessor: bool,
    log_raw: bool,
    prefix: String,
    elide_list_responses: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Sink {
    File {
        path: PathBuf,
        mode: u32,
    },
    Stdout,
    Discard,
    Socket {
        address: String,
        kind: SocketKind,
        timeout: Duration,
    },
}

impl Sink {
    fn build(&self) -> Box<dyn AuditDevice> {
        match self {
            Sink::File { path, mode } => Box::new(FileDevice::new(path.clone(), *mode)),
            Sink::Stdout => Box::new(StdoutDevice),
            Sink::Discard => Box::new(DiscardDevice),
            Sink::Socket {
                address,
                kind,
                timeout,
            } => Box::new(SocketDevice::new(address.clone(), *kind, *timeout)),
        }
    }
}

struct Device {
    info: AuditDeviceInfo,
    common: CommonOptions,
    salt: Salt,
    sink: Box<dyn AuditDevice>,
}

impl Device {
    fn style(&self) -> Style<'_> {
        Style {
            salt: if self.common.log_raw {
                None
            } else {
                Some(&self.salt)
            },
            hmac_accessor: self.common.hmac_accessor,
            elide_list_responses: self.common.elide_list_responses,
        }
    }

    /// Format and write one entry; the error is already logged.
    async fn log(&self, time: &str, kind: EntryKind, rec: &AuditRecord) -> bool {
        // The whole line in one buffer so the device writes it with a single
        // syscall and concurrent entries never interleave.
        let mut line = Vec::with_capacity(1024);
        line.extend_from_slice(self.common.prefix.as_bytes());
        if let Err(e) = format::write_entry(&mut line, time, kind, rec, self.style()) {
            // serde_json's error names a position, never the data.
            tracing::error!(device = %self.info.path, error = %e, "audit entry could not be formatted");
            return false;
        }
        line.push(b'\n');
        match self.sink.write(&line).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(device = %self.info.path, error = %e, "audit device failed to write entry");
                false
            }
        }
    }
}

/// Owns the enabled audit devices. Cheap to consult on every request.
pub struct AuditBroker {
    storage: Arc<dyn Storage>,
    /// Mirrors `!devices.is_empty()` so the hot path needs no lock.
    enabled: AtomicBool,
    /// Replaced wholesale on enable/disable, so a request in flight keeps
    /// the set it started with and never waits on a table change.
    devices: parking_lot::RwLock<Arc<Vec<Arc<Device>>>>,
    /// Serializes table changes, which await storage.
    admin: tokio::sync::Mutex<()>,
}

impl AuditBroker {
    /// `storage` is the barrier view the core reserves for audit
    /// (`core/audit/`).
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        AuditBroker {
            storage,
            enabled: AtomicBool::new(false),
            devices: parking_lot::RwLock::new(Arc::new(Vec::new())),
            admin: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether any device is enabled.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Device>>> {
        self.devices.read().clone()
    }

    fn install(&self, devices: Vec<Arc<Device>>) {
        let enabled = !devices.is_empty();
        *self.devices.write() = Arc::new(devices);
        self.enabled.store(enabled, Ordering::Release);
    }

    /// At unseal: restore the device table and open every device.
    ///
    /// A device that cannot be opened stays enabled (and retries on each
    /// write) so that nothing is silently left unaudited; but if the table
    /// has devices and not one of them opens, this fails, as Vault refuses to
    /// unseal then.
    pub async fn load(&self) -> Result<(), CoreError> {
        let _admin = self.admin.lock().await;
        let table: DeviceTable = match self.storage.get(TABLE_KEY).await? {
            None => DeviceTable::default(),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| CoreError::Internal(format!("decode audit table: {e}")))?,
        };
        let mut devices = Vec::with_capacity(table.entries.len());
        let mut opened = 0usize;
        for info in table.entries {
            let (common, sink) = parse_options(&info.device_type, &info.options)
                .map_err(|e| CoreError::Internal(format!("audit device {}: {e}", info.path)))?;
            let salt = self.load_salt(&info.path).await?;
            let sink = sink.build();
            match sink.open().await {
                Ok(()) => opened += 1,
                Err(e) => {
                    tracing::error!(device = %info.path, error = %e, "audit device failed to open at unseal");
                }
            }
            devices.push(Arc::new(Device {
                info,
                common,
                salt,
                sink,
            }));
        }
        let failed = !devices.is_empty() && opened == 0;
        // Installed even on failure: should the caller carry on regardless,
        // requests must still fail closed rather than go unaudited.
        self.install(devices);
        if failed {
            return Err(CoreError::Internal(
                "no audit device could be opened".into(),
            ));
        }
        Ok(())
    }

    async fn load_salt(&self, path: &str) -> Result<Salt, CoreError> {
        let key = salt_key(path);
        match self.storage.get(&key).await? {
            Some(bytes) => Salt::from_slice(&bytes)
                .ok_or_else(|| CoreError::Internal(format!("audit salt of {path} is malformed"))),
            None => {
                // Vault creates salts lazily; a table entry without one is an
                // older or interrupted write. Hashes change, which we say.
                tracing::warn!(device = %path, "audit device had no salt; generating a new one");
                let salt = new_salt()?;
                self.storage.put(&key, salt.as_bytes()).await?;
                Ok(salt)
            }
        }
    }

    /// `PUT sys/audit/:path`.
    pub async fn enable(
        &self,
        path: &str,
        device_type: &str,
        description: &str,
        options: BTreeMap<String, String>,
        local: bool,
    ) -> Result<(), CoreError> {
        let path = normalize_path(path)?;
        let (common, sink) = parse_options(device_type, &options).map_err(CoreError::BadRequest)?;
        let _admin = self.admin.lock().await;
        let current = self.snapshot();
        // Vault refuses nested paths too: `a/` and `a/b/` would share salts'
        // storage prefix and make `sys/audit/a` ambiguous.
        if let Some(d) = current
            .iter()
            .find(|d| d.info.path.starts_with(&path) || path.starts_with(&d.info.path))
        {
            return Err(CoreError::BadRequest(format!(
                "path {path:?} already in use (audit device at {:?})",
                d.info.path
            )));
        }
        let sink = sink.build();
        sink.open().await.map_err(|e| {
            CoreError::BadRequest(format!("audit device {path:?} could not be opened: {e}"))
        })?;
        let salt = new_salt()?;
        let salt_op = StorageOp::Put {
            key: salt_key(&path),
            value: salt.as_bytes().to_vec(),
        };
        let info = AuditDeviceInfo {
            path: path.clone(),
            device_type: device_type.to_string(),
            description: description.to_string(),
            options,
            local,
        };
        let mut devices: Vec<Arc<Device>> = current.iter().cloned().collect();
        devices.push(Arc::new(Device {
            info,
            common,
            salt,
            sink,
        }));
        devices.sort_by(|a, b| a.info.path.cmp(&b.info.path));
        self.storage
            .batch(vec![table_op(&devices)?, salt_op])
            .await?;
        self.install(devices);
        tracing::info!(device = %path, device_type, "audit device enabled");
        Ok(())
    }

    /// `DELETE sys/audit/:path`. Disabling a path with no device succeeds,
    /// as in Vault. The salt is deleted: re-enabling starts a new one.
    pub async fn disable(&self, path: &str) -> Result<(), CoreError> {
        let path = normalize_path(path)?;
        let _admin = self.admin.lock().await;
        let current = self.snapshot();
        if !current.iter().any(|d| d.info.path == path) {
            return Ok(());
        }
        let devices: Vec<Arc<Device>> = current
            .iter()
            .filter(|d| d.info.path != path)
            .cloned()
            .collect();
        let ops = vec![
            table_op(&devices)?,
            StorageOp::Delete {
                key: salt_key(&path),
            },
        ];
        self.storage.batch(ops).await?;
        self.install(devices);
        tracing::info!(device = %path, "audit device disabled");
        Ok(())
    }

    /// `GET sys/audit`, sorted by path.
    pub fn list(&self) -> Vec<AuditDeviceInfo> {
        self.snapshot().iter().map(|d| d.info.clone()).collect()
    }

    /// `GET sys/audit` in Vault's wire shape: keyed by path (with trailing
    /// slash).
    pub fn list_by_path(&self) -> BTreeMap<String, AuditDeviceInfo> {
        self.snapshot()
            .iter()
            .map(|d| (d.info.path.clone(), d.info.clone()))
            .collect()
    }

    /// `POST sys/audit-hash/:path`: `hmac-sha256:<hex>` of `input` under that
    /// device's salt (whether or not the device logs raw).
    pub async fn hash(&self, path: &str, input: &str) -> Result<String, CoreError> {
        let path = normalize_path(path)?;
        self.snapshot()
            .iter()
            .find(|d| d.info.path == path)
            .map(|d| d.salt.hash(input))
            .ok_or_else(|| CoreError::BadRequest(format!("unknown audit device {path:?}")))
    }

    /// SIGHUP: file devices reopen their files, sockets reconnect.
    pub fn reopen(&self) {
        for d in self.snapshot().iter() {
            d.sink.reopen();
        }
    }

    /// At seal: forget every device and salt (closing files and sockets once
    /// in-flight writes finish).
    pub fn clear(&self) {
        self.install(Vec::new());
    }

    /// Log the request entry (before the request is routed).
    pub async fn log_request(&self, rec: &AuditRecord) -> Result<(), CoreError> {
        if !self.is_enabled() {
            return Ok(());
        }
        self.log(EntryKind::Request, rec).await
    }

    /// Log the response entry (after the backend answered, or failed).
    pub async fn log_response(&self, rec: &AuditRecord) -> Result<(), CoreError> {
        if !self.is_enabled() {
            return Ok(());
        }
        self.log(EntryKind::Response, rec).await
    }

    async fn log(&self, kind: EntryKind, rec: &AuditRecord) -> Result<(), CoreError> {
        let devices = self.snapshot();
        if devices.is_empty() {
            // Disabled between the flag check and the snapshot.
            return Ok(());
        }
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let ok = match devices.as_slice() {
            [one] => usize::from(one.log(&time, kind, rec).await),
            many => futures::future::join_all(many.iter().map(|d| d.log(&time, kind, rec)))
                .await
                .into_iter()
                .filter(|ok| *ok)
                .count(),
        };
        if ok == 0 {
            let name = match kind {
                EntryKind::Request => "vault.audit.log_request_failure",
                EntryKind::Response => "vault.audit.log_response_failure",
            };
            metrics::counter!(name).increment(1);
            tracing::error!(
                devices = devices.len(),
                "no audit device could record the entry; failing the request"
            );
            return Err(CoreError::AuditFailed);
        }
        Ok(())
    }
}

fn new_salt() -> Result<Salt, CoreError> {
    Salt::generate().map_err(|_| CoreError::Internal("random generator failed".into()))
}

fn salt_key(path: &str) -> String {
    format!("{SALT_PREFIX}{}", path.trim_end_matches('/'))
}

fn table_op(devices: &[Arc<Device>]) -> Result<StorageOp, CoreError> {
    let table = DeviceTable {
        entries: devices.iter().map(|d| d.info.clone()).collect(),
    };
    Ok(tresor_sdk::storage::json_op(TABLE_KEY, &table)?)
}

/// `file`, ` /file/ ` → `file/`. Segments are plain names: the path ends up in
/// a storage key.
fn normalize_path(path: &str) -> Result<String, CoreError> {
    let trimmed = path.trim().trim_matches('/');
    let valid = !trimmed.is_empty()
        && trimmed.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if !valid {
        return Err(CoreError::BadRequest(format!(
            "invalid audit device path {path:?}"
        )));
    }
    Ok(format!("{trimmed}/"))
}

/// Validate a device's options; the error message names the culprit.
fn parse_options(
    device_type: &str,
    options: &BTreeMap<String, String>,
) -> Result<(CommonOptions, Sink), String> {
    let get = |k: &str| options.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let flag = |k: &str, default: bool| -> Result<bool, String> {
        get(k).map_or(Ok(default), |v| {
            parse_bool(v).ok_or_else(|| format!("option {k:?}: {v:?} is not a boolean"))
        })
    };
    match get("format") {
        None | Some("json") => {}
        Some("jsonx") => {
            return Err("option \"format\": \"jsonx\" is not supported, use \"json\"".into())
        }
        Some(other) => return Err(format!("option \"format\": unknown format {other:?}")),
    }
    let common = CommonOptions {
        hmac_accessor: flag("hmac_accessor", true)?,
        log_raw: flag("log_raw", false)?,
        prefix: options.get("prefix").cloned().unwrap_or_default(),
        elide_list_responses: flag("elide_list_responses", false)?,
    };
    let sink = match device_type {
        "file" => {
            // `path` is Vault's deprecated spelling of `file_path`.
            let target = get("file_path")
                .or_else(|| get("path"))
                .ok_or("file audit device: missing required option \"file_path\"")?;
            match target {
                "stdout" => Sink::Stdout,
                "discard" => Sink::Discard,
                path => {
                    let mode = match get("mode") {
                        None => 0o600,
                        Some(m) => u32::from_str_radix(m, 8)
                            .ok()
                            .filter(|m| *m <= 0o777)
                            .ok_or_else(|| {
                                format!("option \"mode\": {m:?} is not an octal file mode")
                            })?,
                    };
                    Sink::File {
                        path: PathBuf::from(path),
                        mode,
                    }
                }
            }
        }
        "socket" => {
            let address = get("address")
                .ok_or("socket audit device: missing required option \"address\"")?
                .to_string();
            let kind = match get("socket_type").unwrap_or("tcp") {
                "tcp" => SocketKind::Tcp,
                "udp" => SocketKind::Udp,
                "unix" => SocketKind::Unix,
                other => {
                    return Err(format!(
                        "option \"socket_type\": {other:?} is not one of tcp, udp, unix"
                    ))
                }
            };
            let timeout = match get("write_timeout") {
                None => DEFAULT_SOCKET_TIMEOUT,
                Some(t) => parse_duration(t)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| format!("option \"write_timeout\": {t:?} is not a duration"))?,
            };
            Sink::Socket {
                address,
                kind,
                timeout,
            }
        }
        other => return Err(format!("unknown audit device type {other:?}")),
    };
    Ok((common, sink))
}

/// Go's `strconv.ParseBool`, which Vault uses for these options.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Vault's duration strings: a bare number of seconds, or Go's `1m30s`,
/// `500ms` form. Written by hand because no crate in the tree parses Go's
/// syntax and this is the only place that needs it.
fn parse_duration(s: &str) -> Option<Duration> {
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}
