//! Vault-compatible ACL policies.
//!
//! - [`parse_policy`] turns HCL or JSON policy text into a [`Policy`].
//! - [`Acl`] is the compiled, immutable form of a set of policies; its
//!   [`Acl::allow`] runs on every request and does no parsing and, unless the
//!   request carries parameters checked by a constraint with upper-case keys,
//!   no allocation.
//! - [`PolicyStore`] keeps policies in the barrier (`sys/policy/<name>`) and
//!   caches both parsed policies and compiled ACLs, invalidated on write.
//! - [`is_sudo_path`] lists Vault's root-protected endpoints.

mod acl;
mod capabilities;
mod parse;
pub(crate) use parse::hcl1_newlines;
mod store;
mod sudo;

pub use acl::{Acl, AclDecision};
pub use capabilities::Capabilities;
pub use parse::{normalise_name, parse_policy, PathRules, Policy};
pub use store::{PolicyStore, DEFAULT_POLICY_NAME, DEFAULT_POLICY_TEXT, ROOT_POLICY_NAME};
pub use sudo::is_sudo_path;

use thiserror::Error;

use crate::CoreError;

/// Why a policy text was refused. Every variant is the caller's mistake, so
/// all of them surface as 400 Bad Request.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// The text is not HCL / JSON at all (hcl-rs and serde_json messages
    /// carry the line and column).
    #[error("failed to parse policy: {0}")]
    Syntax(String),
    #[error("failed to parse policy: invalid top-level key {key:?}{}", line_suffix(*line))]
    UnknownTopLevelKey { key: String, line: Option<usize> },
    #[error("failed to parse policy: path {path:?}: invalid key {key:?}{}", line_suffix(*line))]
    UnknownPathKey {
        path: String,
        key: String,
        line: Option<usize>,
    },
    #[error("failed to parse policy: path {path:?}: invalid capability {capability:?}{}", line_suffix(*line))]
    UnknownCapability {
        path: String,
        capability: String,
        line: Option<usize>,
    },
    /// Anything else wrong inside one `path` stanza.
    #[error("failed to parse policy: path {path:?}: {problem}{}", line_suffix(*line))]
    InvalidPath {
        path: String,
        problem: String,
        line: Option<usize>,
    },
}

fn line_suffix(line: Option<usize>) -> String {
    match line {
        Some(l) => format!(" (line {l})"),
        None => String::new(),
    }
}

impl From<PolicyError> for CoreError {
    fn from(e: PolicyError) -> Self {
        CoreError::BadRequest(e.to_string())
    }
}
