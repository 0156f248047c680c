use thiserror::Error;

use crate::storage::StorageError;

/// What a backend answers when it cannot serve a request. The core maps each
/// variant to an HTTP status in exactly one place (tresor-http).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The request is malformed; the message names the field or rule (400).
    #[error("{0}")]
    BadRequest(String),
    /// The path matches nothing this backend serves (404).
    #[error("unsupported path")]
    UnsupportedPath,
    /// The path exists but not for this operation (405).
    #[error("unsupported operation")]
    UnsupportedOperation,
    /// The caller may not do this (403).
    #[error("permission denied")]
    PermissionDenied,
    /// Refused with a reason the caller may see, e.g. a login whose identity
    /// the role does not bind (403, as Vault's `CodedError(403, ...)`).
    #[error("{0}")]
    Forbidden(String),
    /// A check-and-set or other precondition failed (412).
    #[error("{0}")]
    PreconditionFailed(String),
    /// The storage layer failed; logged, answered as an internal error (500).
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// Anything else that is our fault; logged, answered without detail (500).
    #[error("internal: {0}")]
    Internal(String),
}

impl BackendError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        BackendError::BadRequest(msg.into())
    }
}

impl From<serde_json::Error> for BackendError {
    fn from(e: serde_json::Error) -> Self {
        BackendError::Internal(format!("json: {e}"))
    }
}
