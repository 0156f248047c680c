//! Errors of the HTTP layer, and THE one place where a [`CoreError`] becomes
//! an HTTP status and an `{"errors": [...]}` body.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use thiserror::Error;
use tresor_api::ErrorBody;
use tresor_core::CoreError;

/// The answer to a failed request: a status and Vault's error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub errors: Vec<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            errors: vec![message.into()],
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn method_not_allowed() -> Self {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "unsupported operation")
    }

    pub fn internal() -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }

    /// A JSON body Vault's clients can't make sense of.
    pub fn json(detail: impl std::fmt::Display) -> Self {
        ApiError::bad_request(format!("failed to parse JSON input: {detail}"))
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        core_error(&e)
    }
}

/// Map a core error to its status and body. Every `CoreError` an HTTP client
/// sees goes through here, so the status of a failure is decided once.
pub fn core_error(e: &CoreError) -> ApiError {
    let status = match e {
        // Vault answers 503 on logical routes both while sealed and before
        // init, so clients retry instead of giving up.
        CoreError::Sealed | CoreError::NotInitialized => StatusCode::SERVICE_UNAVAILABLE,
        CoreError::AlreadyInitialized | CoreError::BadRequest(_) => StatusCode::BAD_REQUEST,
        CoreError::PermissionDenied | CoreError::Forbidden(_) => StatusCode::FORBIDDEN,
        CoreError::NotFound => {
            return ApiError {
                status: StatusCode::NOT_FOUND,
                errors: Vec::new(),
            }
        }
        CoreError::UnsupportedPath => StatusCode::NOT_FOUND,
        CoreError::UnsupportedOperation => StatusCode::METHOD_NOT_ALLOWED,
        CoreError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
        CoreError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        CoreError::AuditFailed => {
            tracing::error!("request failed: no audit device could record it");
            return ApiError::internal();
        }
        CoreError::Internal(detail) => {
            // The detail is ours (never request data): log it, answer without it.
            tracing::error!(error = %detail, "internal error");
            return ApiError::internal();
        }
        other => {
            tracing::error!(error = %other, "unmapped core error");
            return ApiError::internal();
        }
    };
    ApiError::new(status, e.to_string())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            errors: self.errors,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// Failures to start serving.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HttpError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("invalid TLS configuration: {0}")]
    Tls(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_has_empty_error_list() {
        let e = core_error(&CoreError::NotFound);
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert!(e.errors.is_empty());
    }

    #[test]
    fn internal_detail_is_not_answered() {
        let e = core_error(&CoreError::Internal("disk on fire at /secret".into()));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.errors, vec!["internal error".to_string()]);
    }

    #[test]
    fn statuses() {
        let cases = [
            (CoreError::Sealed, 503),
            (CoreError::NotInitialized, 503),
            (CoreError::AlreadyInitialized, 400),
            (CoreError::PermissionDenied, 403),
            (CoreError::BadRequest("x".into()), 400),
            (CoreError::UnsupportedPath, 404),
            (CoreError::UnsupportedOperation, 405),
            (CoreError::PreconditionFailed("cas".into()), 412),
            (CoreError::TooManyRequests("slow".into()), 429),
            (CoreError::AuditFailed, 500),
        ];
        for (e, status) in cases {
            assert_eq!(core_error(&e).status.as_u16(), status, "{e:?}");
        }
        assert_eq!(
            core_error(&CoreError::PermissionDenied).errors,
            vec!["permission denied".to_string()]
        );
    }
}
