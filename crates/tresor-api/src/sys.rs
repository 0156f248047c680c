//! Payloads of the `sys/` endpoints that clients and the CLI type against.
//! These are the bodies Vault answers *without* the envelope (seal status,
//! init, health, leader) or the `data` of an enveloped answer.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InitRequest {
    #[serde(default)]
    pub secret_shares: u8,
    #[serde(default)]
    pub secret_threshold: u8,
    #[serde(default)]
    pub pgp_keys: Option<Vec<String>>,
    #[serde(default)]
    pub root_token_pgp_key: Option<String>,
    #[serde(default)]
    pub recovery_shares: Option<u8>,
    #[serde(default)]
    pub recovery_threshold: Option<u8>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InitResponse {
    /// Unseal key shares, hex encoded.
    pub keys: Vec<String>,
    /// The same shares, base64 encoded.
    pub keys_base64: Vec<String>,
    pub root_token: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InitStatus {
    pub initialized: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnsealRequest {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub reset: bool,
    #[serde(default)]
    pub migrate: bool,
}

/// Answer of `sys/seal-status` and `sys/unseal`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SealStatus {
    #[serde(rename = "type")]
    pub seal_type: String,
    pub initialized: bool,
    pub sealed: bool,
    /// Threshold (`t`) and number of shares (`n`).
    pub t: u8,
    pub n: u8,
    pub progress: u8,
    pub nonce: String,
    pub version: String,
    pub build_date: String,
    pub migration: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    pub recovery_seal: bool,
    pub storage_type: String,
}

/// Answer of `sys/health`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub initialized: bool,
    pub sealed: bool,
    pub standby: bool,
    pub performance_standby: bool,
    pub replication_performance_mode: String,
    pub replication_dr_mode: String,
    pub server_time_utc: i64,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
}

/// Answer of `sys/leader`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Leader {
    pub ha_enabled: bool,
    pub is_self: bool,
    pub active_time: String,
    pub leader_address: String,
    pub leader_cluster_address: String,
    pub performance_standby: bool,
    pub performance_standby_last_remote_wal: u64,
}

/// Progress of a rekey or generate-root operation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RekeyStatus {
    pub nonce: String,
    pub started: bool,
    pub t: u8,
    pub n: u8,
    pub progress: u8,
    pub required: u8,
    pub pgp_fingerprints: Option<Vec<String>>,
    pub backup: bool,
    pub verification_required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_base64: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GenerateRootStatus {
    pub nonce: String,
    pub started: bool,
    pub progress: u8,
    pub required: u8,
    pub complete: bool,
    pub encoded_token: String,
    pub encoded_root_token: String,
    pub pgp_fingerprint: String,
    pub otp: String,
    pub otp_length: usize,
}

/// One entry of `sys/mounts` or `sys/auth`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountOutput {
    #[serde(rename = "type")]
    pub mount_type: String,
    pub description: String,
    pub accessor: String,
    pub uuid: String,
    pub config: MountConfigOutput,
    pub options: Option<BTreeMap<String, String>>,
    pub local: bool,
    pub seal_wrap: bool,
    pub external_entropy_access: bool,
    pub plugin_version: String,
    pub running_plugin_version: String,
    pub running_sha256: String,
    pub deprecation_status: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountConfigOutput {
    pub default_lease_ttl: u64,
    pub max_lease_ttl: u64,
    pub force_no_cache: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listing_visibility: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passthrough_request_headers: Vec<String>,
}
