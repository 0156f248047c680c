//! What the core tells the audit broker about one request.
//!
//! The core fills one [`AuditRecord`] per request (the response part once
//! the backend has answered) and hands the same record to
//! [`AuditBroker::log_request`](super::AuditBroker::log_request) and
//! [`AuditBroker::log_response`](super::AuditBroker::log_response). Every
//! field is plain owned data: the record holds cleartext secrets, and the
//! broker hashes them per device while it serializes, never in place.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// One request as the audit log records it.
#[derive(Clone, Default)]
pub struct AuditRecord {
    /// The calling token (empty for unauthenticated requests such as logins).
    pub auth: AuditAuth,
    pub request: AuditRequest,
    /// Only read by `log_response`; `None` there logs an empty response.
    pub response: Option<AuditResponse>,
    /// The error answered to the client, empty on success.
    pub error: String,
}

/// The token that made the request, or the one a login minted.
#[derive(Clone, Default)]
pub struct AuditAuth {
    pub client_token: String,
    pub accessor: String,
    pub display_name: String,
    pub policies: Vec<String>,
    pub token_policies: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub entity_id: String,
    /// `service` or `batch`.
    pub token_type: String,
    /// Seconds.
    pub token_ttl: i64,
    /// RFC 3339.
    pub token_issue_time: String,
}

#[derive(Clone, Default)]
pub struct AuditRequest {
    pub id: String,
    /// `create`, `read`, `update`, `delete`, `list`, ...
    pub operation: String,
    pub mount_type: String,
    pub mount_accessor: String,
    pub client_token: String,
    pub client_token_accessor: String,
    /// Full path after `/v1/`.
    pub path: String,
    pub data: Option<Value>,
    pub remote_address: String,
    /// Seconds; 0 when the request asked for no wrapping.
    pub wrap_ttl: i64,
    /// Names lower-cased.
    pub headers: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
pub struct AuditResponse {
    pub mount_type: String,
    pub mount_accessor: String,
    /// HTTP status answered; 0 when not known.
    pub status: u16,
    /// A token minted by this request (login, token create).
    pub auth: Option<AuditAuth>,
    pub secret: Option<AuditSecret>,
    pub data: Option<Value>,
    pub wrap_info: Option<AuditWrapInfo>,
    pub warnings: Vec<String>,
}

#[derive(Clone, Default)]
pub struct AuditSecret {
    pub lease_id: String,
}

#[derive(Clone, Default)]
pub struct AuditWrapInfo {
    pub token: String,
    pub accessor: String,
    /// Seconds.
    pub ttl: i64,
    /// RFC 3339.
    pub creation_time: String,
    pub creation_path: String,
    /// Accessor of the token that was wrapped, if a token was wrapped.
    pub wrapped_accessor: String,
}

// Hand-written so that `{:?}` of a record in some log line can never print a
// token or request data: only the request's identity is shown.
impl fmt::Debug for AuditRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditRecord")
            .field("request_id", &self.request.id)
            .field("operation", &self.request.operation)
            .field("path", &self.request.path)
            .finish_non_exhaustive()
    }
}

macro_rules! redacted_debug {
    ($($t:ident),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($t), " { <redacted> }"))
            }
        }
    )*};
}
redacted_debug!(
    AuditAuth,
    AuditRequest,
    AuditResponse,
    AuditSecret,
    AuditWrapInfo
);
