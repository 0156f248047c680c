//! The mount table and the router.
//!
//! Two tables live inside the barrier: `core/mounts` (secrets engines) and
//! `core/auth` (auth methods). Each entry owns a storage prefix keyed by its
//! UUID, so a remount moves the path without touching data. The router maps
//! a request path to the mount with the longest matching prefix.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tresor_api::sys::{MountConfigOutput, MountOutput};
use tresor_sdk::{Backend, BackendError, SpecialPaths, Storage, SystemView};

use crate::password::PasswordPolicies;
use crate::CoreError;

/// Which table an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Logical,
    Credential,
}

impl Table {
    pub(crate) fn storage_key(self) -> &'static str {
        match self {
            Table::Logical => "core/mounts",
            Table::Credential => "core/auth",
        }
    }
}

/// Tunables of a mount; zero durations mean "the server default".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountConfig {
    #[serde(default)]
    pub default_lease_ttl: u64,
    #[serde(default)]
    pub max_lease_ttl: u64,
    #[serde(default)]
    pub force_no_cache: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listing_visibility: Option<String>,
    /// Request headers handed to the backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passthrough_request_headers: Vec<String>,
}

/// One mounted engine or auth method, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEntry {
    /// Routing path with a trailing slash: `secret/`, `auth/approle/`.
    pub path: String,
    pub table: Table,
    #[serde(rename = "type")]
    pub mount_type: String,
    #[serde(default)]
    pub description: String,
    pub uuid: String,
    pub accessor: String,
    #[serde(default)]
    pub config: MountConfig,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub local: bool,
    #[serde(default)]
    pub seal_wrap: bool,
}

impl MountEntry {
    /// The storage prefix of this mount inside the barrier.
    pub fn storage_prefix(&self) -> String {
        match self.table {
            Table::Logical => format!("logical/{}/", self.uuid),
            Table::Credential => format!("auth/{}/", self.uuid),
        }
    }

    /// The path as listed by `sys/mounts` (`secret/`) or `sys/auth` (`approle/`).
    pub fn listed_path(&self) -> &str {
        match self.table {
            Table::Logical => &self.path,
            Table::Credential => self.path.strip_prefix("auth/").unwrap_or(&self.path),
        }
    }

    pub fn output(&self) -> MountOutput {
        MountOutput {
            mount_type: self.mount_type.clone(),
            description: self.description.clone(),
            accessor: self.accessor.clone(),
            uuid: self.uuid.clone(),
            config: MountConfigOutput {
                default_lease_ttl: self.config.default_lease_ttl,
                max_lease_ttl: self.config.max_lease_ttl,
                force_no_cache: self.config.force_no_cache,
                listing_visibility: self.config.listing_visibility.clone(),
                passthrough_request_headers: self.config.passthrough_request_headers.clone(),
            },
            options: if self.options.is_empty() {
                None
            } else {
                Some(self.options.clone())
            },
            local: self.local,
            seal_wrap: self.seal_wrap,
            external_entropy_access: false,
            plugin_version: String::new(),
            running_plugin_version: format!("v{}+builtin.tresor", env!("CARGO_PKG_VERSION")),
            running_sha256: String::new(),
            deprecation_status: if self.mount_type == "system"
                || self.mount_type == "token"
                || self.mount_type == "cubbyhole"
            {
                String::new()
            } else {
                "supported".into()
            },
        }
    }
}

/// Who serves a mount: an engine through the SDK, or one of the core's own
/// backends, which need the core's internals and so are not SDK backends.
#[derive(Clone)]
pub enum Handler {
    Backend(Arc<dyn Backend>),
    System,
    Token,
}

/// A live mount: entry, handler and its storage view.
pub struct Route {
    pub entry: RwLock<MountEntry>,
    pub handler: Handler,
    pub storage: Arc<dyn Storage>,
    pub special: SpecialPaths,
    pub system: Arc<MountSystemView>,
}

impl Route {
    pub fn entry(&self) -> MountEntry {
        self.entry.read().clone()
    }
}

/// TTL limits of one mount, falling back to the server's; read at request
/// time so a tune applies at once. Also the engines' way to the password
/// policies, which they may use but not see or change.
pub struct MountSystemView {
    pub config: RwLock<MountConfig>,
    pub server_default: Duration,
    pub server_max: Duration,
    pub(crate) passwords: Arc<PasswordPolicies>,
}

#[async_trait::async_trait]
impl SystemView for MountSystemView {
    fn default_lease_ttl(&self) -> Duration {
        let d = self.config.read().default_lease_ttl;
        let max = self.max_lease_ttl();
        if d == 0 {
            self.server_default.min(max)
        } else {
            Duration::from_secs(d).min(max)
        }
    }

    fn max_lease_ttl(&self) -> Duration {
        match self.config.read().max_lease_ttl {
            0 => self.server_max,
            m => Duration::from_secs(m),
        }
    }

    async fn generate_password(&self, name: Option<&str>) -> Result<String, BackendError> {
        match self.passwords.generate(name) {
            // The engine takes ownership as a plain String (the SDK's
            // signature); the zeroizing copy here is wiped on return.
            Ok(pw) => Ok(pw.as_str().to_string()),
            Err(CoreError::BadRequest(m)) => Err(BackendError::BadRequest(m)),
            Err(e) => Err(BackendError::Internal(e.to_string())),
        }
    }
}

/// Path → mount, longest prefix first.
#[derive(Default)]
pub struct Router {
    routes: RwLock<HashMap<String, Arc<Route>>>,
}

impl Router {
    /// The mount serving `path` and the path relative to it. `secret` (no
    /// slash) routes to `secret/` with an empty relative path, as in Vault.
    pub fn resolve(&self, path: &str) -> Option<(Arc<Route>, String)> {
        let routes = self.routes.read();
        // Candidate prefixes end right after each '/'. Mounts never nest
        // (`conflict` refuses one inside another), so at most one matches
        // and the shortest is tried first: one lookup for most paths.
        for (i, _) in path.match_indices('/') {
            let end = i + 1;
            if let Some(r) = routes.get(&path[..end]) {
                return Some((r.clone(), path[end..].to_string()));
            }
        }
        let with_slash = format!("{path}/");
        routes.get(&with_slash).map(|r| (r.clone(), String::new()))
    }

    pub fn get(&self, mount_path: &str) -> Option<Arc<Route>> {
        self.routes.read().get(mount_path).cloned()
    }

    pub fn insert(&self, route: Arc<Route>) {
        let path = route.entry.read().path.clone();
        self.routes.write().insert(path, route);
    }

    pub fn remove(&self, mount_path: &str) -> Option<Arc<Route>> {
        self.routes.write().remove(mount_path)
    }

    /// Every mount of a table, sorted by path.
    pub fn entries(&self, table: Table) -> Vec<MountEntry> {
        let mut v: Vec<MountEntry> = self
            .routes
            .read()
            .values()
            .map(|r| r.entry())
            .filter(|e| e.table == table)
            .collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }

    /// An existing mount that would overlap `path` (one is a prefix of the other).
    pub fn conflict(&self, path: &str) -> Option<String> {
        self.routes
            .read()
            .keys()
            .find(|k| k.starts_with(path) || path.starts_with(k.as_str()))
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Route>> {
        self.routes.read().values().cloned().collect()
    }
}

/// Normalise a user-given mount path: trimmed of slashes, then one trailing
/// slash. Refuses empty paths and dot segments.
pub fn normalize_mount_path(path: &str) -> Result<String, CoreError> {
    let p = path.trim_matches('/');
    if p.is_empty() {
        return Err(CoreError::BadRequest("mount path must not be empty".into()));
    }
    if p.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(CoreError::BadRequest(format!(
            "invalid mount path {path:?}: empty, '.' or '..' segment"
        )));
    }
    if p.chars().any(|c| c.is_control() || c == '*' || c == '+') {
        return Err(CoreError::BadRequest(format!(
            "invalid mount path {path:?}: control or wildcard characters"
        )));
    }
    Ok(format!("{p}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize_mount_path("/kv/").ok(), Some("kv/".to_string()));
        assert_eq!(normalize_mount_path("a/b").ok(), Some("a/b/".to_string()));
        assert!(normalize_mount_path("a/../b").is_err());
        assert!(normalize_mount_path("//").is_err());
        assert!(normalize_mount_path("a//b").is_err());
    }
}
