use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{BackendError, Request, Response, Storage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendType {
    /// A secrets engine, mounted under `sys/mounts`.
    Logical,
    /// An auth method, mounted under `sys/auth` (paths `auth/<mount>/...`).
    Credential,
}

/// Paths of a backend that bypass part of the pipeline. Patterns are exact,
/// or prefixes when they end in `*`.
#[derive(Debug, Clone, Default)]
pub struct SpecialPaths {
    /// Served without a token (login endpoints).
    pub unauthenticated: Vec<String>,
    /// Need `sudo` in addition to the operation's capability.
    pub root: Vec<String>,
}

impl SpecialPaths {
    pub fn matches(patterns: &[String], path: &str) -> bool {
        patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => p == path,
        })
    }
}

/// What the core tells a backend about its surroundings, read at request
/// time so that a mount tune takes effect at once.
#[async_trait]
pub trait SystemView: Send + Sync {
    fn default_lease_ttl(&self) -> Duration;
    fn max_lease_ttl(&self) -> Duration;

    /// A new password from the password policy `name`
    /// (`sys/policies/password/<name>`), or from the default policy when
    /// `None` (20 characters with lower, upper, digit and dash).
    async fn generate_password(&self, name: Option<&str>) -> Result<String, BackendError> {
        let _ = name;
        Err(BackendError::Internal(
            "password policies are not available here".into(),
        ))
    }
}

/// A fixed view, for tests and for backends created before their mount.
#[derive(Debug, Clone)]
pub struct StaticSystemView {
    pub default_lease_ttl: Duration,
    pub max_lease_ttl: Duration,
}

#[async_trait]
impl SystemView for StaticSystemView {
    fn default_lease_ttl(&self) -> Duration {
        self.default_lease_ttl
    }
    fn max_lease_ttl(&self) -> Duration {
        self.max_lease_ttl
    }
}

/// Everything a factory needs to build a backend for one mount.
#[derive(Clone)]
pub struct BackendConfig {
    /// The mount type (`kv`, `cubbyhole`, `approle`, ...).
    pub backend_type: String,
    /// Mount point with trailing slash.
    pub mount_point: String,
    /// Mount `options` (`version` for kv).
    pub options: BTreeMap<String, String>,
    pub system: Arc<dyn SystemView>,
}

/// Builds a backend for a mount.
pub type Factory = fn(&BackendConfig) -> Result<Arc<dyn Backend>, BackendError>;

/// A secrets engine or auth method.
#[async_trait]
pub trait Backend: Send + Sync {
    fn backend_type(&self) -> BackendType {
        BackendType::Logical
    }

    fn special_paths(&self) -> SpecialPaths {
        SpecialPaths::default()
    }

    /// Called once after the mount is created or restored at unseal.
    async fn initialize(&self, _storage: &dyn Storage) -> Result<(), BackendError> {
        Ok(())
    }

    /// Does the object a write targets exist? `Some(false)` makes the write a
    /// `Create` (checked against the `create` capability), `Some(true)` an
    /// `Update`; `None` means this path makes no distinction (always update).
    async fn existence_check(
        &self,
        _req: &Request,
        _storage: &dyn Storage,
    ) -> Result<Option<bool>, BackendError> {
        Ok(None)
    }

    /// Serve one request. `Ok(None)` on a read means "not found" (404).
    async fn handle(
        &self,
        req: &Request,
        storage: &dyn Storage,
    ) -> Result<Option<Response>, BackendError>;

    /// How often the core calls [`Backend::periodic`]. A minute suits
    /// tidying; backends that run user schedules (rotations) ask for less.
    fn periodic_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(60)
    }

    /// Periodic housekeeping (tidy, scheduled rotations), called by the core
    /// every [`Backend::periodic_interval`], never overlapping itself.
    async fn periodic(&self, _storage: &dyn Storage) -> Result<(), BackendError> {
        Ok(())
    }

    /// Called before the mount is removed or the core seals.
    async fn cleanup(&self, _storage: &dyn Storage) -> Result<(), BackendError> {
        Ok(())
    }
}
