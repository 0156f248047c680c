//! The key/value secrets engine, in Vault's two flavours: version 1 stores
//! one object per path, version 2 keeps versions, metadata and
//! check-and-set. Both follow Vault's API to the letter, because the `vault
//! kv` CLI, hvac and vaultrs call these paths directly.
//!
//! This module also holds what KV v1 and the cubbyhole share: path rules and
//! the unversioned ("passthrough") read/write/list.

mod cache;
mod v1;
mod v2;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tresor_sdk::{Backend, BackendConfig, BackendError, Map, Response, Storage, StorageExt};

pub use v1::KvV1;
pub use v2::KvV2;

/// `kv`: version 1 unless the mount option `version` says `2`.
pub fn factory(conf: &BackendConfig) -> Result<Arc<dyn Backend>, BackendError> {
    match conf.options.get("version").map(|v| v.trim()) {
        None | Some("") | Some("1") => Ok(Arc::new(KvV1::new())),
        Some("2") => Ok(Arc::new(KvV2::with_system(
            conf.system.clone(),
            conf.mount_point.clone(),
        ))),
        Some(other) => Err(BackendError::bad_request(format!(
            "invalid kv version {other:?}: the mount option 'version' must be \"1\" or \"2\""
        ))),
    }
}

/// `kv-v2`: always version 2, whatever the options say.
pub fn factory_v2(conf: &BackendConfig) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(Arc::new(KvV2::with_system(
        conf.system.clone(),
        conf.mount_point.clone(),
    )))
}

/// `generic`: always version 1.
pub fn factory_v1(_conf: &BackendConfig) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(Arc::new(KvV1::new()))
}

/// Checks a path that names one secret and returns it unchanged.
///
/// A trailing `/` would make the stored entry read back from `list` as a
/// folder, and `..` or empty segments would let two spellings name one
/// secret (and one ACL path name another), so all are refused.
pub(crate) fn secret_path(path: &str) -> Result<&str, BackendError> {
    if path.is_empty() {
        return Err(BackendError::bad_request("missing secret path"));
    }
    if path.ends_with('/') {
        return Err(BackendError::bad_request(format!(
            "invalid secret path {path:?}: a secret path must not end with '/'"
        )));
    }
    check_segments(path)?;
    Ok(path)
}

/// Turns the path of a LIST into a folder prefix: empty (the root) or ending
/// with `/`. `foo` lists the children of `foo/`, as Vault does.
pub(crate) fn list_prefix(path: &str) -> Result<String, BackendError> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    check_segments(trimmed)?;
    Ok(format!("{trimmed}/"))
}

fn check_segments(path: &str) -> Result<(), BackendError> {
    if path.contains('\0') {
        return Err(BackendError::bad_request(format!(
            "invalid path {path:?}: NUL characters are not allowed"
        )));
    }
    for seg in path.split('/') {
        if seg.is_empty() {
            return Err(BackendError::bad_request(format!(
                "invalid path {path:?}: empty path segment"
            )));
        }
        if seg == ".." || seg == "." {
            return Err(BackendError::bad_request(format!(
                "invalid path {path:?}: '{seg}' segments are not allowed"
            )));
        }
    }
    Ok(())
}

/// Read of an unversioned entry: the stored object is the answer's data.
pub(crate) async fn passthrough_read(
    storage: &dyn Storage,
    key: &str,
) -> Result<Option<Response>, BackendError> {
    match storage.get_json::<Value>(key).await? {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(Response::data(m))),
        Some(_) => Err(BackendError::Internal(format!(
            "entry {key:?} is not a JSON object"
        ))),
    }
}

/// Write of an unversioned entry. The body *is* the secret, so it is kept
/// as arbitrary JSON.
pub(crate) async fn passthrough_write(
    storage: &dyn Storage,
    key: &str,
    body: &Map,
) -> Result<Option<Response>, BackendError> {
    // Vault refuses an empty write rather than storing `{}`: it is almost
    // always a client that forgot its fields.
    if body.is_empty() {
        return Err(BackendError::bad_request("missing data fields"));
    }
    storage.put_json(key, body).await?;
    Ok(None)
}

/// LIST one level under `prefix` (a storage key prefix ending with `/`, or
/// empty); an empty folder is a 404, as in Vault.
pub(crate) async fn passthrough_list(
    storage: &dyn Storage,
    prefix: &str,
) -> Result<Option<Response>, BackendError> {
    let keys = storage.list(prefix).await?;
    if keys.is_empty() {
        return Ok(None);
    }
    Ok(Some(Response::list(keys)))
}

/// The answer to a `Help` request.
pub(crate) fn help(text: &str) -> Response {
    let mut m = Map::new();
    m.insert("help".into(), Value::String(text.to_string()));
    Response::data(m)
}

/// Formats a duration like Go's `time.Duration.String()` (`0s`, `1m30s`,
/// `1h0m0s`, `1.5s`, `250ms`), which is what Vault answers and what clients
/// parse back.
pub(crate) fn go_duration(d: Duration) -> String {
    const SEC: u128 = 1_000_000_000;
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", fixed(ns, 1_000, 3));
    }
    if ns < SEC {
        return format!("{}ms", fixed(ns, 1_000_000, 6));
    }
    let secs = d.as_secs();
    let (h, m) = (secs / 3600, (secs % 3600) / 60);
    let s = fixed(ns - u128::from(h * 3600 + m * 60) * SEC, SEC, 9);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// `n / unit` with the fraction written out and its trailing zeros dropped.
fn fixed(n: u128, unit: u128, digits: usize) -> String {
    let (int, frac) = (n / unit, n % unit);
    if frac == 0 {
        return int.to_string();
    }
    let frac = format!("{frac:0digits$}");
    format!("{int}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_secs(12319)), "3h25m19s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(go_duration(Duration::from_nanos(5)), "5ns");
    }

    #[test]
    fn paths() {
        assert!(secret_path("a/b").is_ok());
        assert!(secret_path("").is_err());
        assert!(secret_path("a/").is_err());
        assert!(secret_path("a//b").is_err());
        assert!(secret_path("a/../b").is_err());
        assert_eq!(list_prefix("").ok().as_deref(), Some(""));
        assert_eq!(list_prefix("a").ok().as_deref(), Some("a/"));
        assert_eq!(list_prefix("a/b/").ok().as_deref(), Some("a/b/"));
        assert!(list_prefix("../x").is_err());
    }
}
