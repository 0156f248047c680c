//! Wire types of tresor's Vault-compatible HTTP API.
//!
//! Only serde: the server, the client and the CLI all speak through these
//! structs, so a field renamed here is renamed on both sides of the wire.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

pub mod sys;

/// The error body every non-2xx answer carries: `{"errors": [...]}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub errors: Vec<String>,
}

/// The JSON envelope of every logical answer (`/v1/<path>`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    pub request_id: String,
    pub lease_id: String,
    pub renewable: bool,
    pub lease_duration: u64,
    pub data: Option<Value>,
    pub wrap_info: Option<WrapInfo>,
    pub warnings: Option<Vec<String>>,
    pub auth: Option<AuthInfo>,
    #[serde(default)]
    pub mount_type: String,
}

/// The `auth` block of a login or token-creation answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuthInfo {
    pub client_token: String,
    pub accessor: String,
    pub policies: Vec<String>,
    pub token_policies: Vec<String>,
    #[serde(default)]
    pub identity_policies: Option<Vec<String>>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub lease_duration: u64,
    pub renewable: bool,
    #[serde(default)]
    pub entity_id: String,
    #[serde(default)]
    pub token_type: String,
    #[serde(default)]
    pub orphan: bool,
    #[serde(default)]
    pub mfa_requirement: Option<Value>,
    #[serde(default)]
    pub num_uses: u64,
}

/// The `wrap_info` block of a wrapped answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WrapInfo {
    pub token: String,
    pub accessor: String,
    pub ttl: u64,
    pub creation_time: String,
    pub creation_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_accessor: Option<String>,
}
