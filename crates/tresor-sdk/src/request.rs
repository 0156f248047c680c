use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{BackendError, Map};

/// The logical operation of a request, derived from the HTTP verb (and, for
/// writes, from the backend's existence check: create vs update).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Operation {
    Create,
    Read,
    Update,
    Patch,
    Delete,
    List,
    Help,
    /// Lease renewal callback (core → backend), never from HTTP directly.
    Renew,
    /// Lease revocation callback (core → backend), never from HTTP directly.
    Revoke,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Read => "read",
            Operation::Update => "update",
            Operation::Patch => "patch",
            Operation::Delete => "delete",
            Operation::List => "list",
            Operation::Help => "help",
            Operation::Renew => "renew",
            Operation::Revoke => "revoke",
        }
    }
}

/// A request as a backend sees it.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: String,
    pub operation: Operation,
    /// Path relative to the mount point, without a leading slash.
    pub path: String,
    /// The mount point this request was routed to, with a trailing slash
    /// (`secret/`, `auth/approle/`).
    pub mount_point: String,
    /// Body fields (writes) or query parameters (reads and lists).
    pub data: Map,
    /// An opaque identifier, stable for the life of the calling token and
    /// unique to it, that never reveals the token (cubbyhole scoping).
    pub client_token_id: Option<String>,
    pub display_name: String,
    pub entity_id: String,
    /// Policies of the calling token, for backends that answer with them.
    pub policies: Vec<String>,
    pub remote_addr: Option<IpAddr>,
    /// Selected request headers, names lower-cased.
    pub headers: BTreeMap<String, String>,
    /// For `Renew`/`Revoke` of a lease: the secret as it was issued.
    pub secret: Option<crate::Secret>,
    /// For `Renew` of a token issued by an auth backend: the auth as issued.
    pub auth: Option<crate::Auth>,
    /// DER of the client certificate chain of the TLS connection, leaf first.
    pub peer_certificates: Vec<Vec<u8>>,
}

impl Request {
    pub fn new(operation: Operation, path: impl Into<String>) -> Self {
        Request {
            id: String::new(),
            operation,
            path: path.into(),
            mount_point: String::new(),
            data: Map::new(),
            client_token_id: None,
            display_name: String::new(),
            entity_id: String::new(),
            policies: Vec::new(),
            remote_addr: None,
            headers: BTreeMap::new(),
            secret: None,
            auth: None,
            peer_certificates: Vec::new(),
        }
    }

    /// Parse the request fields into a typed struct: the one place where an
    /// engine turns untyped JSON into its own types. The error names the
    /// field that was wrong.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, BackendError> {
        // Like Vault's field framework, a field sent as null is a field not
        // sent: clients (hvac) send `"config": null` for "no config".
        // Read in place: copying the fields first cost every request a
        // deep copy of its body.
        let fields = self
            .data
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.as_str(), v));
        let fields = serde::de::value::MapDeserializer::<_, serde_json::Error>::new(fields);
        serde_path_to_error::deserialize(fields).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            if field == "." {
                BackendError::BadRequest(format!("invalid request: {inner}"))
            } else {
                BackendError::BadRequest(format!("invalid request field {field:?}: {inner}"))
            }
        })
    }

    /// A raw field, for the rare backend (KV) whose payload *is* arbitrary JSON.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.data.get(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize)]
    struct Input {
        #[serde(default)]
        config: Inner,
    }
    #[derive(Debug, Default, Deserialize, PartialEq)]
    struct Inner {
        #[serde(default)]
        ttl: u64,
    }

    #[test]
    fn hvac_null_config_reads_as_absent() {
        let mut r = Request::new(Operation::Update, "mounts/kv1");
        r.data.insert("config".into(), Value::Null);
        let i: Input = r.parse().expect("null is absent");
        assert_eq!(i.config, Inner::default());
    }

    #[test]
    fn parse_errors_name_the_field() {
        let mut r = Request::new(Operation::Update, "x");
        r.data
            .insert("config".into(), serde_json::json!({"ttl": "abc"}));
        let e = r.parse::<Input>().expect_err("bad ttl");
        assert!(e.to_string().contains("config.ttl"), "{e}");
    }
}
