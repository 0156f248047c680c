use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Map;

/// Lease terms a backend asks for; the core clamps them to the mount's and
/// the server's limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseOptions {
    /// Zero means "the mount default".
    #[serde(with = "crate::fields::secs")]
    pub ttl: Duration,
    /// Zero means "the mount maximum".
    #[serde(with = "crate::fields::secs")]
    pub max_ttl: Duration,
    pub renewable: bool,
    /// Renewal increment requested by the caller (set by the core on Renew).
    #[serde(with = "crate::fields::secs")]
    pub increment: Duration,
    /// Unix seconds the lease was first issued (set by the core).
    pub issue_time: i64,
}

/// A leased secret: the core registers a lease for it and calls the backend
/// back with `Operation::Renew`/`Operation::Revoke`, passing this struct.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Secret {
    pub lease: LeaseOptions,
    /// What the backend needs to revoke the secret later (user name, ...).
    /// Stored encrypted in the lease entry, never returned to the client.
    pub internal_data: Value,
}

/// What an auth backend returns on a successful login: the core mints a
/// token from it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Auth {
    pub lease: LeaseOptions,
    pub policies: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub display_name: String,
    #[serde(with = "crate::fields::secs")]
    pub period: Duration,
    #[serde(with = "crate::fields::secs")]
    pub explicit_max_ttl: Duration,
    pub num_uses: u64,
    pub no_default_policy: bool,
    /// CIDRs the token may be used from; empty means anywhere.
    pub bound_cidrs: Vec<String>,
    /// `service` (default) or `batch`.
    pub token_type: String,
    /// The identity alias name (user name, role id, ...).
    pub alias_name: String,
    pub internal_data: Value,
}

/// A backend's answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Response {
    pub data: Option<Map>,
    pub secret: Option<Secret>,
    pub auth: Option<Auth>,
    pub warnings: Vec<String>,
    /// An HTTP status other than the default (200 with data, 204 without),
    /// e.g. KV v2's 404 with metadata for a deleted version.
    pub status: Option<u16>,
    /// A body that is not JSON (PEM, DER, OCSP): sent as is, without the
    /// envelope. Takes precedence over `data`.
    pub raw: Option<RawBody>,
}

/// A non-JSON answer body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawBody {
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn data(data: Map) -> Self {
        Response {
            data: Some(data),
            ..Default::default()
        }
    }

    /// Serialize a typed struct as the response data.
    pub fn with_data<T: Serialize>(value: &T) -> Result<Self, crate::BackendError> {
        match serde_json::to_value(value)? {
            Value::Object(m) => Ok(Self::data(m)),
            other => Err(crate::BackendError::Internal(format!(
                "response data must be an object, got {other}"
            ))),
        }
    }

    /// The answer to a LIST: `{"keys": [...]}`.
    pub fn list(keys: Vec<String>) -> Self {
        let mut m = Map::new();
        m.insert(
            "keys".into(),
            Value::Array(keys.into_iter().map(Value::String).collect()),
        );
        Self::data(m)
    }

    /// A non-JSON answer (`application/pkix-cert`, `application/pem-certificate-chain`, ...).
    pub fn raw(content_type: impl Into<String>, body: Vec<u8>) -> Self {
        Response {
            raw: Some(RawBody {
                content_type: content_type.into(),
                body,
            }),
            ..Default::default()
        }
    }

    pub fn warning(mut self, w: impl Into<String>) -> Self {
        self.warnings.push(w.into());
        self
    }
}
