//! `role/<name>`: who may log in through this mount, and what they get.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use tresor_sdk::{fields, BackendError, Map, Request};

use crate::auth::token_fields::{with_legacy_names, TokenFields, LEGACY_JWT_TOKEN_NAMES};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RoleType {
    Jwt,
    /// Vault's default, so a role written without `role_type` behaves alike.
    #[default]
    Oidc,
}

impl RoleType {
    fn as_str(self) -> &'static str {
        match self {
            RoleType::Jwt => "jwt",
            RoleType::Oidc => "oidc",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BoundClaimsType {
    #[default]
    String,
    Glob,
}

/// A stored role.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Role {
    #[serde(default)]
    pub role_type: RoleType,
    #[serde(default)]
    pub bound_audiences: Vec<String>,
    #[serde(default)]
    pub bound_subject: String,
    /// Claim (name or JSON pointer) → accepted values.
    #[serde(default)]
    pub bound_claims: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub bound_claims_type: BoundClaimsType,
    /// Claim → metadata key.
    #[serde(default)]
    pub claim_mappings: BTreeMap<String, String>,
    pub user_claim: String,
    #[serde(default)]
    pub user_claim_json_pointer: bool,
    #[serde(default)]
    pub groups_claim: String,
    /// Seconds; 0 means Vault's default, negative disables.
    #[serde(default)]
    pub clock_skew_leeway: i64,
    #[serde(default)]
    pub expiration_leeway: i64,
    #[serde(default)]
    pub not_before_leeway: i64,
    #[serde(default)]
    pub allowed_redirect_uris: Vec<String>,
    #[serde(default)]
    pub oidc_scopes: Vec<String>,
    #[serde(default, with = "fields::secs")]
    pub max_age: Duration,
    #[serde(default)]
    pub verbose_oidc_logging: bool,
    #[serde(default)]
    pub token: TokenFields,
}

impl Default for Role {
    fn default() -> Self {
        Role {
            role_type: RoleType::Oidc,
            bound_audiences: Vec::new(),
            bound_subject: String::new(),
            bound_claims: BTreeMap::new(),
            bound_claims_type: BoundClaimsType::String,
            claim_mappings: BTreeMap::new(),
            user_claim: String::new(),
            user_claim_json_pointer: false,
            groups_claim: String::new(),
            clock_skew_leeway: 60,
            expiration_leeway: 150,
            not_before_leeway: 150,
            allowed_redirect_uris: Vec::new(),
            oidc_scopes: Vec::new(),
            max_age: Duration::ZERO,
            verbose_oidc_logging: false,
            token: TokenFields::default(),
        }
    }
}

macro_rules! named {
    ($name:ident, $field:literal, $inner:path, $ty:ty) => {
        fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            $inner(d).map_err(|e: D::Error| de::Error::custom(format!("{}: {e}", $field)))
        }
    };
}

named!(
    audiences_f,
    "bound_audiences",
    fields::opt_string_list,
    Option<Vec<String>>
);
named!(
    redirects_f,
    "allowed_redirect_uris",
    fields::opt_string_list,
    Option<Vec<String>>
);
named!(
    scopes_f,
    "oidc_scopes",
    fields::opt_string_list,
    Option<Vec<String>>
);
named!(max_age_f, "max_age", fields::opt_duration, Option<Duration>);
named!(
    pointer_f,
    "user_claim_json_pointer",
    fields::opt_boolean,
    Option<bool>
);
named!(
    verbose_f,
    "verbose_oidc_logging",
    fields::opt_boolean,
    Option<bool>
);

/// A leeway: seconds (negative disables) or a duration string.
fn leeway_value(v: Value, field: &str) -> Result<Option<i64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("{field}: expected whole seconds, got {n}")),
        Value::String(s) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<i64>() {
                return Ok(Some(i));
            }
            fields::parse_duration(t)
                .map(|d| Some(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
                .map_err(|e| format!("{field}: {e}"))
        }
        other => Err(format!(
            "{field}: expected seconds or a duration, got {other}"
        )),
    }
}

macro_rules! leeway_field {
    ($name:ident, $field:literal) => {
        fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
            leeway_value(Value::deserialize(d)?, $field).map_err(de::Error::custom)
        }
    };
}
leeway_field!(skew_f, "clock_skew_leeway");
leeway_field!(exp_f, "expiration_leeway");
leeway_field!(nbf_f, "not_before_leeway");

/// `bound_claims`: an object whose values are a string, a comma-free list
/// of strings, or scalars Vault would compare as text.
fn bound_claims_f<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, Vec<String>>>, D::Error> {
    fn text(v: &Value, k: &str) -> Result<String, String> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(format!(
                "bound_claims: value for {k:?} must be a string or a list of strings, got {other}"
            )),
        }
    }
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Object(m) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                let vals = match &v {
                    Value::Array(items) => items
                        .iter()
                        .map(|i| text(i, &k))
                        .collect::<Result<Vec<_>, _>>(),
                    // Vault splits a plain string on commas.
                    Value::String(s) => Ok(s
                        .split(',')
                        .map(|p| p.trim().to_string())
                        .filter(|p| !p.is_empty())
                        .collect()),
                    other => text(other, &k).map(|t| vec![t]),
                }
                .map_err(de::Error::custom)?;
                out.insert(k, vals);
            }
            Ok(Some(out))
        }
        other => Err(de::Error::custom(format!(
            "bound_claims: expected an object, got {other}"
        ))),
    }
}

fn claim_mappings_f<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Object(m) => m
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                other => Err(de::Error::custom(format!(
                    "claim_mappings: value for {k:?} must be a string, got {other}"
                ))),
            })
            .collect::<Result<_, _>>()
            .map(Some),
        other => Err(de::Error::custom(format!(
            "claim_mappings: expected an object, got {other}"
        ))),
    }
}

/// The role fields of a write; `None` leaves the stored value.
#[derive(Debug, Deserialize)]
struct RoleInput {
    #[serde(default)]
    role_type: Option<String>,
    #[serde(default, deserialize_with = "audiences_f")]
    bound_audiences: Option<Vec<String>>,
    #[serde(default)]
    bound_subject: Option<String>,
    #[serde(default, deserialize_with = "bound_claims_f")]
    bound_claims: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    bound_claims_type: Option<String>,
    #[serde(default, deserialize_with = "claim_mappings_f")]
    claim_mappings: Option<BTreeMap<String, String>>,
    #[serde(default)]
    user_claim: Option<String>,
    #[serde(default, deserialize_with = "pointer_f")]
    user_claim_json_pointer: Option<bool>,
    #[serde(default)]
    groups_claim: Option<String>,
    #[serde(default, deserialize_with = "skew_f")]
    clock_skew_leeway: Option<i64>,
    #[serde(default, deserialize_with = "exp_f")]
    expiration_leeway: Option<i64>,
    #[serde(default, deserialize_with = "nbf_f")]
    not_before_leeway: Option<i64>,
    #[serde(default, deserialize_with = "redirects_f")]
    allowed_redirect_uris: Option<Vec<String>>,
    #[serde(default, deserialize_with = "scopes_f")]
    oidc_scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "max_age_f")]
    max_age: Option<Duration>,
    #[serde(default, deserialize_with = "verbose_f")]
    verbose_oidc_logging: Option<bool>,
}

impl Role {
    /// Apply a write to this role (a new one starts from the defaults) and
    /// check the result as Vault does.
    pub(crate) fn merge_update(&mut self, req: &Request) -> Result<(), BackendError> {
        let i: RoleInput = req.parse()?;
        self.token
            .merge_update(&with_legacy_names(req, LEGACY_JWT_TOKEN_NAMES))?;
        if let Some(t) = i.role_type {
            self.role_type = match t.trim().to_ascii_lowercase().as_str() {
                "jwt" => RoleType::Jwt,
                "oidc" | "" => RoleType::Oidc,
                other => {
                    return Err(BackendError::bad_request(format!(
                        "role_type: invalid role type {other:?}, expected \"jwt\" or \"oidc\""
                    )))
                }
            };
        }
        if let Some(v) = i.bound_audiences {
            self.bound_audiences = v;
        }
        if let Some(v) = i.bound_subject {
            self.bound_subject = v;
        }
        if let Some(v) = i.bound_claims {
            self.bound_claims = v;
        }
        if let Some(t) = i.bound_claims_type {
            self.bound_claims_type = match t.trim() {
                "string" | "" => BoundClaimsType::String,
                "glob" => BoundClaimsType::Glob,
                other => {
                    return Err(BackendError::bad_request(format!(
                    "bound_claims_type: invalid value {other:?}, expected \"string\" or \"glob\""
                )))
                }
            };
        }
        if let Some(v) = i.claim_mappings {
            self.claim_mappings = v;
        }
        if let Some(v) = i.user_claim {
            self.user_claim = v;
        }
        if let Some(v) = i.user_claim_json_pointer {
            self.user_claim_json_pointer = v;
        }
        if let Some(v) = i.groups_claim {
            self.groups_claim = v;
        }
        if let Some(v) = i.clock_skew_leeway {
            self.clock_skew_leeway = v;
        }
        if let Some(v) = i.expiration_leeway {
            self.expiration_leeway = v;
        }
        if let Some(v) = i.not_before_leeway {
            self.not_before_leeway = v;
        }
        if let Some(v) = i.allowed_redirect_uris {
            self.allowed_redirect_uris = v;
        }
        if let Some(v) = i.oidc_scopes {
            self.oidc_scopes = v;
        }
        if let Some(v) = i.max_age {
            self.max_age = v;
        }
        if let Some(v) = i.verbose_oidc_logging {
            self.verbose_oidc_logging = v;
        }
        self.validate()
    }

    fn validate(&self) -> Result<(), BackendError> {
        if self.user_claim.trim().is_empty() {
            return Err(BackendError::bad_request(
                "user_claim: a user claim must be defined on the role",
            ));
        }
        match self.role_type {
            RoleType::Oidc if self.allowed_redirect_uris.is_empty() => {
                return Err(BackendError::bad_request(
                    "allowed_redirect_uris: must be set if role_type is \"oidc\" or unspecified",
                ))
            }
            RoleType::Jwt
                if self.bound_audiences.is_empty()
                    && self.bound_subject.is_empty()
                    && self.bound_claims.is_empty()
                    && self.token.token_bound_cidrs.is_empty() =>
            {
                return Err(BackendError::bad_request(
                    "must have at least one bound constraint when creating/updating a role \
                     (bound_audiences, bound_subject, bound_claims or token_bound_cidrs)",
                ))
            }
            _ => {}
        }
        if self.claim_mappings.values().any(|k| k == "role") {
            return Err(BackendError::bad_request(
                "claim_mappings: metadata key \"role\" is reserved and may not be the target of a claim mapping",
            ));
        }
        let mut targets: Vec<&String> = self.claim_mappings.values().collect();
        targets.sort();
        if targets.windows(2).any(|w| w[0] == w[1]) {
            return Err(BackendError::bad_request(
                "claim_mappings: metadata key values must be unique",
            ));
        }
        Ok(())
    }

    /// The read answer, in Vault's shape.
    pub(crate) fn to_data(&self) -> Map {
        let mut m = Map::new();
        m.insert("role_type".into(), json!(self.role_type.as_str()));
        m.insert("bound_audiences".into(), json!(self.bound_audiences));
        m.insert("bound_subject".into(), json!(self.bound_subject));
        m.insert(
            "bound_claims".into(),
            if self.bound_claims.is_empty() {
                Value::Null
            } else {
                json!(self.bound_claims)
            },
        );
        m.insert(
            "bound_claims_type".into(),
            json!(match self.bound_claims_type {
                BoundClaimsType::String => "string",
                BoundClaimsType::Glob => "glob",
            }),
        );
        m.insert(
            "claim_mappings".into(),
            if self.claim_mappings.is_empty() {
                Value::Null
            } else {
                json!(self.claim_mappings)
            },
        );
        m.insert("user_claim".into(), json!(self.user_claim));
        m.insert(
            "user_claim_json_pointer".into(),
            json!(self.user_claim_json_pointer),
        );
        m.insert("groups_claim".into(), json!(self.groups_claim));
        m.insert("clock_skew_leeway".into(), json!(self.clock_skew_leeway));
        m.insert("expiration_leeway".into(), json!(self.expiration_leeway));
        m.insert("not_before_leeway".into(), json!(self.not_before_leeway));
        m.insert(
            "allowed_redirect_uris".into(),
            json!(self.allowed_redirect_uris),
        );
        m.insert("oidc_scopes".into(), json!(self.oidc_scopes));
        m.insert("max_age".into(), json!(self.max_age.as_secs()));
        m.insert(
            "verbose_oidc_logging".into(),
            json!(self.verbose_oidc_logging),
        );
        self.token.populate(&mut m);
        m
    }
}
