//! The one error type of the client.

use std::fmt::Write as _;
use std::path::PathBuf;

/// Everything a call through [`crate::Client`] can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with a non-success status.
    #[error("{}", api_message(method, url, *status, errors))]
    Api {
        method: String,
        url: String,
        status: u16,
        /// The server's `errors` list (empty when the body had none).
        errors: Vec<String>,
    },
    /// Nothing answered at the address (refused, DNS, TLS handshake...).
    #[error("error connecting to {url}: {}", cause(source))]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The connection broke or timed out during the exchange.
    #[error("request {method} {url} failed: {}", cause(source))]
    Transport {
        method: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered 2xx with a body we could not understand.
    #[error("unexpected answer to {method} {url}: {message}")]
    Decode {
        method: String,
        url: String,
        message: String,
    },
    #[error("invalid server address {0:?}: expected http://host:port or https://host:port")]
    Address(String),
    #[error("invalid HTTP method {0:?}")]
    Method(String),
    #[error("reading CA certificate {path}: {source}")]
    CaCertRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid CA certificate {path}: {source}")]
    CaCertParse {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("reading client certificate or key {path}: {source}")]
    ClientCertRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid client certificate or key {path} (PEM certificate and private key expected): {source}")]
    ClientCertParse {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("building the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
    #[error("token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("HOME is not set: cannot locate the token file")]
    NoHome,
    /// No usable AWS credentials or region for an aws login (the message
    /// never carries a secret).
    #[error("{0}")]
    AwsCredentials(String),
    /// SigV4 signing of the login request failed.
    #[error("signing the AWS login request: {0}")]
    AwsSigning(String),
}

impl ClientError {
    /// HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's error messages (empty for non-API errors).
    pub fn errors(&self) -> &[String] {
        match self {
            Self::Api { errors, .. } => errors,
            _ => &[],
        }
    }

    /// True when no server answered at all.
    pub fn is_connection(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }
}

/// reqwest's own message ("error sending request") hides the useful part
/// ("Connection refused", "certificate not valid"), which is deepest in the chain.
fn cause(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cur {
        parts.push(c.to_string());
        cur = c.source();
    }
    parts.last().cloned().unwrap_or_else(|| e.to_string())
}

/// Vault's CLI prints API errors in exactly this shape; users grep for it.
fn api_message(method: &str, url: &str, status: u16, errors: &[String]) -> String {
    let mut s =
        format!("Error making API request.\n\nURL: {method} {url}\nCode: {status}. Errors:\n");
    for e in errors {
        let _ = write!(s, "\n* {e}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_displays_like_vault() {
        let e = ClientError::Api {
            method: "GET".into(),
            url: "http://127.0.0.1:8200/v1/secret/data/x".into(),
            status: 403,
            errors: vec!["permission denied".into()],
        };
        assert_eq!(
            e.to_string(),
            "Error making API request.\n\nURL: GET http://127.0.0.1:8200/v1/secret/data/x\nCode: 403. Errors:\n\n* permission denied"
        );
        assert_eq!(e.status(), Some(403));
    }
}
