use thiserror::Error;
use tresor_sdk::{BackendError, StorageError};

/// Every way a request can fail in the core. tresor-http maps each variant
/// to a status code in one place (`tresor_http::error`).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CoreError {
    #[error("Vault is sealed")]
    Sealed,
    #[error("Vault is not initialized")]
    NotInitialized,
    #[error("Vault is already initialized")]
    AlreadyInitialized,
    #[error("permission denied")]
    PermissionDenied,
    /// 403 with the backend's reason (never secret: the backend chose it).
    #[error("{0}")]
    Forbidden(String),
    /// Read of something that does not exist: 404 with an empty error list.
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    #[error("unsupported path")]
    UnsupportedPath,
    #[error("unsupported operation")]
    UnsupportedOperation,
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    TooManyRequests(String),
    /// No enabled audit device could record the request.
    #[error("audit logging failed")]
    AuditFailed,
    /// Our fault: logged with detail, answered without.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<BackendError> for CoreError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::BadRequest(m) => CoreError::BadRequest(m),
            BackendError::UnsupportedPath => CoreError::UnsupportedPath,
            BackendError::UnsupportedOperation => CoreError::UnsupportedOperation,
            BackendError::PermissionDenied => CoreError::PermissionDenied,
            BackendError::Forbidden(m) => CoreError::Forbidden(m),
            BackendError::PreconditionFailed(m) => CoreError::PreconditionFailed(m),
            BackendError::Storage(e) => e.into(),
            other => CoreError::Internal(other.to_string()),
        }
    }
}

impl From<serde_json::Error> for CoreError {
    fn from(e: serde_json::Error) -> Self {
        CoreError::Internal(format!("json: {e}"))
    }
}

impl From<StorageError> for CoreError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Sealed => CoreError::Sealed,
            other => CoreError::Internal(other.to_string()),
        }
    }
}

impl From<tresor_storage::Error> for CoreError {
    fn from(e: tresor_storage::Error) -> Self {
        CoreError::Internal(e.to_string())
    }
}
