//! Serialization of an [`AuditRecord`] into one JSON line in Vault's shape,
//! hashing sensitive strings on the fly.
//!
//! Hashing happens inside `Serialize` impls that borrow the record, so a
//! device never clones the request or response data to redact it, and the
//! cleartext never exists in a buffer that reaches a device.

use std::collections::BTreeMap;

use aws_lc_rs::hmac;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::record::{AuditAuth, AuditRecord, AuditRequest, AuditResponse, AuditWrapInfo};

pub(crate) const SALT_LEN: usize = 32;
const HMAC_PREFIX: &str = "hmac-sha256:";

/// A device's HMAC key. Vault calls it the salt.
pub(crate) struct Salt {
    raw: Zeroizing<[u8; SALT_LEN]>,
    key: hmac::Key,
}

impl Salt {
    pub(crate) fn new(raw: Zeroizing<[u8; SALT_LEN]>) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, raw.as_slice());
        Salt { raw, key }
    }

    pub(crate) fn generate() -> Result<Self, aws_lc_rs::error::Unspecified> {
        let mut raw = Zeroizing::new([0u8; SALT_LEN]);
        aws_lc_rs::rand::fill(raw.as_mut_slice())?;
        Ok(Salt::new(raw))
    }

    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut raw = Zeroizing::new([0u8; SALT_LEN]);
        if bytes.len() != SALT_LEN {
            return None;
        }
        raw.copy_from_slice(bytes);
        Some(Salt::new(raw))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.raw.as_slice()
    }

    pub(crate) fn hash(&self, input: &str) -> String {
        let tag = hmac::sign(&self.key, input.as_bytes());
        let mut out = String::with_capacity(HMAC_PREFIX.len() + 2 * tag.as_ref().len());
        out.push_str(HMAC_PREFIX);
        out.push_str(&hex::encode(tag.as_ref()));
        out
    }
}

/// How one device renders entries.
#[derive(Clone, Copy)]
pub(crate) struct Style<'a> {
    /// `None` when the device logs raw.
    pub(crate) salt: Option<&'a Salt>,
    pub(crate) hmac_accessor: bool,
    pub(crate) elide_list_responses: bool,
}

impl<'a> Style<'a> {
    fn accessor_salt(&self) -> Option<&'a Salt> {
        if self.hmac_accessor {
            self.salt
        } else {
            None
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Request,
    Response,
}

/// Append one entry (without prefix or newline) to `out`.
pub(crate) fn write_entry(
    out: &mut Vec<u8>,
    time: &str,
    kind: EntryKind,
    rec: &AuditRecord,
    style: Style<'_>,
) -> serde_json::Result<()> {
    let empty = AuditResponse::default();
    let entry = EntryOut {
        time,
        kind: match kind {
            EntryKind::Request => "request",
            EntryKind::Response => "response",
        },
        auth: AuthOut(&rec.auth, style),
        request: RequestOut(&rec.request, style),
        response: match kind {
            EntryKind::Request => None,
            EntryKind::Response => Some(ResponseOut {
                resp: rec.response.as_ref().unwrap_or(&empty),
                is_list: rec.request.operation == "list",
                style,
            }),
        },
        error: &rec.error,
    };
    serde_json::to_writer(out, &entry)
}

#[derive(Serialize)]
struct EntryOut<'a> {
    time: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    auth: AuthOut<'a>,
    request: RequestOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<ResponseOut<'a>>,
    error: &'a str,
}

/// A string that is replaced by its HMAC when a salt is given. Empty strings
/// stay empty: "no token" must remain distinguishable from a token.
struct Hashed<'a>(&'a str, Option<&'a Salt>);

impl Serialize for Hashed<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.1 {
            Some(salt) if !self.0.is_empty() => s.serialize_str(&salt.hash(self.0)),
            _ => s.serialize_str(self.0),
        }
    }
}

/// Arbitrary JSON with every string value (at any depth) hashed; keys,
/// numbers, booleans and nulls kept.
struct HashedValue<'a>(&'a Value, Option<&'a Salt>);

impl Serialize for HashedValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let salt = self.1;
        match self.0 {
            Value::String(v) => match salt {
                Some(salt) => s.serialize_str(&salt.hash(v)),
                None => s.serialize_str(v),
            },
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&HashedValue(item, salt))?;
                }
                seq.end()
            }
            Value::Object(map) => {
                let mut m = s.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    m.serialize_entry(k, &HashedValue(v, salt))?;
                }
                m.end()
            }
            other => other.serialize(s),
        }
    }
}

/// Response data, with `keys`/`key_info` of a list response replaced by
/// their counts when the device elides list responses (Vault's
/// `elide_list_responses`: the list contents are rarely worth their size).
struct ResponseData<'a> {
    data: &'a Value,
    elide: bool,
    salt: Option<&'a Salt>,
}

impl Serialize for ResponseData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Value::Object(map) = self.data else {
            return HashedValue(self.data, self.salt).serialize(s);
        };
        if !self.elide {
            return HashedValue(self.data, self.salt).serialize(s);
        }
        let mut m = s.serialize_map(Some(map.len()))?;
        for (k, v) in map {
            match (k.as_str(), v) {
                ("keys", Value::Array(a)) => m.serialize_entry(k, &a.len())?,
                ("key_info", Value::Object(o)) => m.serialize_entry(k, &o.len())?,
                _ => m.serialize_entry(k, &HashedValue(v, self.salt))?,
            }
        }
        m.end()
    }
}

struct HashedHeaders<'a>(&'a BTreeMap<String, String>, Option<&'a Salt>);

impl Serialize for HashedHeaders<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, &Hashed(v, self.1))?;
        }
        m.end()
    }
}

struct AuthOut<'a>(&'a AuditAuth, Style<'a>);

impl Serialize for AuthOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (a, style) = (self.0, self.1);
        // Field order and omission of empty fields follow Vault's entries.
        let mut m = s.serialize_map(None)?;
        if !a.client_token.is_empty() {
            m.serialize_entry("client_token", &Hashed(&a.client_token, style.salt))?;
        }
        if !a.accessor.is_empty() {
            m.serialize_entry("accessor", &Hashed(&a.accessor, style.accessor_salt()))?;
        }
        if !a.display_name.is_empty() {
            m.serialize_entry("display_name", &a.display_name)?;
        }
        if !a.policies.is_empty() {
            m.serialize_entry("policies", &a.policies)?;
        }
        if !a.token_policies.is_empty() {
            m.serialize_entry("token_policies", &a.token_policies)?;
        }
        if !a.metadata.is_empty() {
            m.serialize_entry("metadata", &a.metadata)?;
        }
        if !a.entity_id.is_empty() {
            m.serialize_entry("entity_id", &a.entity_id)?;
        }
        if !a.token_type.is_empty() {
            m.serialize_entry("token_type", &a.token_type)?;
        }
        if a.token_ttl != 0 {
            m.serialize_entry("token_ttl", &a.token_ttl)?;
        }
        if !a.token_issue_time.is_empty() {
            m.serialize_entry("token_issue_time", &a.token_issue_time)?;
        }
        m.end()
    }
}

#[derive(Serialize)]
struct Namespace {
    id: &'static str,
}

struct RequestOut<'a>(&'a AuditRequest, Style<'a>);

impl Serialize for RequestOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (r, style) = (self.0, self.1);
        let mut m = s.serialize_map(None)?;
        if !r.id.is_empty() {
            m.serialize_entry("id", &r.id)?;
        }
        if !r.operation.is_empty() {
            m.serialize_entry("operation", &r.operation)?;
        }
        if !r.mount_type.is_empty() {
            m.serialize_entry("mount_type", &r.mount_type)?;
        }
        if !r.mount_accessor.is_empty() {
            m.serialize_entry("mount_accessor", &r.mount_accessor)?;
        }
        if !r.client_token.is_empty() {
            m.serialize_entry("client_token", &Hashed(&r.client_token, style.salt))?;
        }
        if !r.client_token_accessor.is_empty() {
            m.serialize_entry(
                "client_token_accessor",
                &Hashed(&r.client_token_accessor, style.accessor_salt()),
            )?;
        }
        // tresor has no namespaces; Vault tooling expects the root one.
        m.serialize_entry("namespace", &Namespace { id: "root" })?;
        m.serialize_entry("path", &r.path)?;
        if let Some(data) = &r.data {
            m.serialize_entry("data", &HashedValue(data, style.salt))?;
        }
        if !r.remote_address.is_empty() {
            m.serialize_entry("remote_address", &r.remote_address)?;
        }
        if r.wrap_ttl != 0 {
            m.serialize_entry("wrap_ttl", &r.wrap_ttl)?;
        }
        if !r.headers.is_empty() {
            m.serialize_entry("headers", &HashedHeaders(&r.headers, style.salt))?;
        }
        m.end()
    }
}

struct ResponseOut<'a> {
    resp: &'a AuditResponse,
    is_list: bool,
    style: Style<'a>,
}

impl Serialize for ResponseOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (r, style) = (self.resp, self.style);
        let mut m = s.serialize_map(None)?;
        if !r.mount_type.is_empty() {
            m.serialize_entry("mount_type", &r.mount_type)?;
        }
        if !r.mount_accessor.is_empty() {
            m.serialize_entry("mount_accessor", &r.mount_accessor)?;
        }
        if r.status != 0 {
            m.serialize_entry("status", &r.status)?;
        }
        if let Some(auth) = &r.auth {
            m.serialize_entry("auth", &AuthOut(auth, style))?;
        }
        if let Some(secret) = &r.secret {
            // Lease ids are not secret (sys/leases lists them); Vault logs
            // them in clear so operators can correlate revocations.
            m.serialize_entry(
                "secret",
                &SecretOut {
                    lease_id: &secret.lease_id,
                },
            )?;
        }
        if let Some(data) = &r.data {
            m.serialize_entry(
                "data",
                &ResponseData {
                    data,
                    elide: style.elide_list_responses && self.is_list,
                    salt: style.salt,
                },
            )?;
        }
        if !r.warnings.is_empty() {
            m.serialize_entry("warnings", &r.warnings)?;
        }
        if let Some(w) = &r.wrap_info {
            m.serialize_entry("wrap_info", &WrapOut(w, style))?;
        }
        m.end()
    }
}

#[derive(Serialize)]
struct SecretOut<'a> {
    lease_id: &'a str,
}

struct WrapOut<'a>(&'a AuditWrapInfo, Style<'a>);

impl Serialize for WrapOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (w, style) = (self.0, self.1);
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("ttl", &w.ttl)?;
        m.serialize_entry("token", &Hashed(&w.token, style.salt))?;
        m.serialize_entry("accessor", &Hashed(&w.accessor, style.accessor_salt()))?;
        m.serialize_entry("creation_time", &w.creation_time)?;
        m.serialize_entry("creation_path", &w.creation_path)?;
        if !w.wrapped_accessor.is_empty() {
            m.serialize_entry(
                "wrapped_accessor",
                &Hashed(&w.wrapped_accessor, style.accessor_salt()),
            )?;
        }
        m.end()
    }
}
