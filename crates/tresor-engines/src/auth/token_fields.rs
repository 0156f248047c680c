//! The `token_*` parameters every Vault auth method accepts on its roles or
//! users (Vault's `tokenutil`), shared so that each method parses, stores,
//! answers and applies them the same way.
//!
//! ```ignore
//! let mut t = stored.token.clone();        // or TokenFields::default()
//! t.merge_update(req)?;                    // only the fields present change
//! t.populate(&mut data);                   // role/user read answer
//! let auth = t.to_auth("alias", "display", metadata);   // login
//! if !t.policies_match(req_auth) { refuse }             // renew
//! let auth = t.renew_auth(req_auth);
//! ```
//!
//! Stored form: durations as whole seconds, lists normalised.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tresor_sdk::{fields, Auth, BackendError, LeaseOptions, Map, Request};

/// The shared token parameters of a role or user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenFields {
    #[serde(default, with = "fields::secs")]
    pub token_ttl: Duration,
    #[serde(default, with = "fields::secs")]
    pub token_max_ttl: Duration,
    #[serde(default, with = "fields::secs")]
    pub token_explicit_max_ttl: Duration,
    #[serde(default, with = "fields::secs")]
    pub token_period: Duration,
    /// Trimmed, lower-cased, sorted, deduplicated.
    #[serde(default)]
    pub token_policies: Vec<String>,
    /// Validated CIDRs (a bare address counts as a /32 or /128).
    #[serde(default)]
    pub token_bound_cidrs: Vec<String>,
    #[serde(default)]
    pub token_num_uses: u64,
    /// `default`, `service`, `batch`, `default-service` or `default-batch`.
    #[serde(default = "default_token_type")]
    pub token_type: String,
    #[serde(default)]
    pub token_no_default_policy: bool,
}

fn default_token_type() -> String {
    "default".into()
}

impl Default for TokenFields {
    fn default() -> Self {
        TokenFields {
            token_ttl: Duration::ZERO,
            token_max_ttl: Duration::ZERO,
            token_explicit_max_ttl: Duration::ZERO,
            token_period: Duration::ZERO,
            token_policies: Vec::new(),
            token_bound_cidrs: Vec::new(),
            token_num_uses: 0,
            token_type: default_token_type(),
            token_no_default_policy: false,
        }
    }
}

/// Wraps a lenient decoder so that its error names the field.
macro_rules! named {
    ($name:ident, $field:literal, $inner:path, $ty:ty) => {
        fn $name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            $inner(d).map_err(|e: D::Error| serde::de::Error::custom(format!("{}: {e}", $field)))
        }
    };
}

named!(ttl_f, "token_ttl", fields::opt_duration, Option<Duration>);
named!(
    max_ttl_f,
    "token_max_ttl",
    fields::opt_duration,
    Option<Duration>
);
named!(
    explicit_f,
    "token_explicit_max_ttl",
    fields::opt_duration,
    Option<Duration>
);
named!(
    period_f,
    "token_period",
    fields::opt_duration,
    Option<Duration>
);
named!(
    legacy_period_f,
    "period",
    fields::opt_duration,
    Option<Duration>
);
named!(
    policies_f,
    "token_policies",
    fields::opt_string_list,
    Option<Vec<String>>
);
named!(
    legacy_policies_f,
    "policies",
    fields::opt_string_list,
    Option<Vec<String>>
);
named!(
    cidrs_f,
    "token_bound_cidrs",
    fields::opt_string_list,
    Option<Vec<String>>
);
named!(
    legacy_cidrs_f,
    "bound_cidrs",
    fields::opt_string_list,
    Option<Vec<String>>
);
named!(num_uses_f, "token_num_uses", fields::opt_uint, Option<u64>);
named!(
    no_default_f,
    "token_no_default_policy",
    fields::opt_boolean,
    Option<bool>
);

/// The fields as they arrive; `None` means "leave unchanged".
#[derive(Debug, Default, Deserialize)]
struct Input {
    #[serde(default, deserialize_with = "ttl_f")]
    token_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "max_ttl_f")]
    token_max_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "explicit_f")]
    token_explicit_max_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "period_f")]
    token_period: Option<Duration>,
    #[serde(default, deserialize_with = "legacy_period_f")]
    period: Option<Duration>,
    #[serde(default, deserialize_with = "policies_f")]
    token_policies: Option<Vec<String>>,
    #[serde(default, deserialize_with = "legacy_policies_f")]
    policies: Option<Vec<String>>,
    #[serde(default, deserialize_with = "cidrs_f")]
    token_bound_cidrs: Option<Vec<String>>,
    #[serde(default, deserialize_with = "legacy_cidrs_f")]
    bound_cidrs: Option<Vec<String>>,
    #[serde(default, deserialize_with = "num_uses_f")]
    token_num_uses: Option<u64>,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default, deserialize_with = "no_default_f")]
    token_no_default_policy: Option<bool>,
}

impl TokenFields {
    /// Apply the `token_*` fields present in the request (and the legacy
    /// `policies`, `period`, `bound_cidrs`, which lose to their `token_`
    /// names as in Vault), then check the result as a whole.
    pub fn merge_update(&mut self, req: &Request) -> Result<(), BackendError> {
        let i: Input = req.parse()?;
        if let Some(v) = i.token_ttl {
            self.token_ttl = v;
        }
        if let Some(v) = i.token_max_ttl {
            self.token_max_ttl = v;
        }
        if let Some(v) = i.token_explicit_max_ttl {
            self.token_explicit_max_ttl = v;
        }
        if let Some(v) = i.token_period.or(i.period) {
            self.token_period = v;
        }
        if let Some(v) = i.token_policies.or(i.policies) {
            self.token_policies = normalize_policies(&v);
        }
        if let Some(v) = i.token_bound_cidrs.or(i.bound_cidrs) {
            validate_cidrs("token_bound_cidrs", &v)?;
            self.token_bound_cidrs = v;
        }
        if let Some(v) = i.token_num_uses {
            self.token_num_uses = v;
        }
        if let Some(v) = i.token_no_default_policy {
            self.token_no_default_policy = v;
        }
        if let Some(v) = i.token_type {
            let v = v.trim().to_ascii_lowercase();
            let v = if v.is_empty() {
                "default".to_string()
            } else {
                v
            };
            if !matches!(
                v.as_str(),
                "default" | "service" | "batch" | "default-service" | "default-batch"
            ) {
                return Err(BackendError::bad_request(format!(
                    "token_type: invalid token type {v:?}"
                )));
            }
            self.token_type = v;
        }
        if !self.token_max_ttl.is_zero() && self.token_ttl > self.token_max_ttl {
            return Err(BackendError::bad_request(
                "token_ttl should not be greater than token_max_ttl",
            ));
        }
        if self.is_batch() && !self.token_period.is_zero() {
            return Err(BackendError::bad_request(
                "token_type: batch tokens cannot be periodic (token_period)",
            ));
        }
        Ok(())
    }

    fn is_batch(&self) -> bool {
        matches!(self.token_type.as_str(), "batch" | "default-batch")
    }

    /// Add the fields to a role or user read answer, as Vault shows them
    /// (durations in seconds), with the legacy `policies` mirror that older
    /// clients still read.
    pub fn populate(&self, data: &mut Map) {
        data.insert("token_ttl".into(), json!(self.token_ttl.as_secs()));
        data.insert("token_max_ttl".into(), json!(self.token_max_ttl.as_secs()));
        data.insert(
            "token_explicit_max_ttl".into(),
            json!(self.token_explicit_max_ttl.as_secs()),
        );
        data.insert("token_period".into(), json!(self.token_period.as_secs()));
        data.insert("token_policies".into(), json!(self.token_policies));
        data.insert("policies".into(), json!(self.token_policies));
        data.insert("token_bound_cidrs".into(), json!(self.token_bound_cidrs));
        data.insert("token_num_uses".into(), json!(self.token_num_uses));
        data.insert("token_type".into(), json!(self.token_type));
        data.insert(
            "token_no_default_policy".into(),
            json!(self.token_no_default_policy),
        );
        if !self.token_period.is_zero() {
            data.insert("period".into(), json!(self.token_period.as_secs()));
        }
    }

    /// The auth a successful login hands to the core, which mints the token
    /// (and clamps the TTLs to the mount's limits).
    pub fn to_auth(
        &self,
        alias_name: &str,
        display_name: &str,
        metadata: BTreeMap<String, String>,
    ) -> Auth {
        let batch = self.is_batch();
        Auth {
            lease: LeaseOptions {
                ttl: self.token_ttl,
                max_ttl: self.token_max_ttl,
                renewable: !batch,
                ..Default::default()
            },
            policies: self.token_policies.clone(),
            metadata,
            display_name: display_name.to_string(),
            period: self.token_period,
            explicit_max_ttl: self.token_explicit_max_ttl,
            num_uses: self.token_num_uses,
            no_default_policy: self.token_no_default_policy,
            bound_cidrs: self.token_bound_cidrs.clone(),
            token_type: if batch { "batch" } else { "service" }.into(),
            alias_name: alias_name.to_string(),
            internal_data: serde_json::Value::Null,
        }
    }

    /// Whether a token issued earlier still carries the policies this role
    /// grants now (Vault's `EquivalentPolicies`: `default` is ignored).
    pub fn policies_match(&self, issued: &Auth) -> bool {
        let strip = |v: &[String]| -> Vec<String> {
            normalize_policies(v)
                .into_iter()
                .filter(|p| p != "default")
                .collect()
        };
        strip(&self.token_policies) == strip(&issued.policies)
    }

    /// The answer to a renewal the method agreed to: the issued auth with
    /// the role's current TTLs.
    pub fn renew_auth(&self, issued: &Auth) -> Auth {
        let mut a = issued.clone();
        a.lease.ttl = self.token_ttl;
        a.lease.max_ttl = self.token_max_ttl;
        a.period = self.token_period;
        a
    }
}

/// Vault's pre-`tokenutil` names for `token_ttl` and `token_max_ttl`, which
/// AWS, userpass and cert roles still accept (hvac's `create_role(ttl=..,
/// max_ttl=..)` sends them). `TokenFields` maps `policies`, `period` and
/// `bound_cidrs` itself.
pub const LEGACY_TTL_NAMES: &[(&str, &str)] = &[("ttl", "token_ttl"), ("max_ttl", "token_max_ttl")];

/// JWT/OIDC and Kubernetes roles accept `num_uses` for `token_num_uses`
/// too, besides [`LEGACY_TTL_NAMES`].
pub const LEGACY_JWT_TOKEN_NAMES: &[(&str, &str)] = &[
    ("ttl", "token_ttl"),
    ("max_ttl", "token_max_ttl"),
    ("num_uses", "token_num_uses"),
];

/// A copy of the request in which each legacy name of `names` (old, new)
/// fills its `token_` field when the request does not carry that field; so
/// the `token_` name wins, and among legacy names for the same field the
/// earlier one in `names` wins.
pub fn with_legacy_names(req: &Request, names: &[(&str, &str)]) -> Request {
    let mut r = req.clone();
    for (old, new) in names {
        if let Some(v) = r.data.get(*old).cloned() {
            r.data.entry((*new).to_string()).or_insert(v);
        }
    }
    r
}

/// Policy names as Vault keeps them: trimmed, lower case, sorted, unique.
pub fn normalize_policies(list: &[String]) -> Vec<String> {
    let mut v: Vec<String> = list
        .iter()
        .map(|p| p.trim().to_lowercase())
        .filter(|p| !p.is_empty())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// One CIDR block (`10.0.0.0/8`, `::1/128`, or a bare address).
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a.trim(), Some(l.trim())),
        None => (s.trim(), None),
    };
    let ip: IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some((ip, len))
}

/// Refuse a list with an entry that is not a CIDR block; the error names
/// the field and the entry.
pub fn validate_cidrs(field: &str, list: &[String]) -> Result<(), BackendError> {
    for c in list {
        if parse_cidr(c).is_none() {
            return Err(BackendError::bad_request(format!(
                "{field}: invalid CIDR block {c:?}"
            )));
        }
    }
    Ok(())
}

/// Whether `ip` lies in one of the blocks; an empty list allows any address,
/// a list with an unknown caller address allows none.
pub fn ip_allowed(list: &[String], ip: Option<IpAddr>) -> bool {
    if list.is_empty() {
        return true;
    }
    let Some(ip) = ip else { return false };
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    list.iter()
        .filter_map(|c| parse_cidr(c))
        .any(|(net, len)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tresor_sdk::Operation;

    fn req(body: serde_json::Value) -> Request {
        let mut r = Request::new(Operation::Update, "role/x");
        if let serde_json::Value::Object(m) = body {
            r.data = m;
        }
        r
    }

    #[test]
    fn merge_keeps_absent_fields_and_prefers_token_names() {
        let mut t = TokenFields::default();
        t.merge_update(&req(json!({"token_ttl": "1h", "policies": "B, a"})))
            .expect("merge");
        assert_eq!(t.token_ttl, Duration::from_secs(3600));
        assert_eq!(t.token_policies, vec!["a", "b"]);
        t.merge_update(&req(json!({"token_policies": ["c"], "policies": ["d"]})))
            .expect("merge");
        assert_eq!(t.token_policies, vec!["c"]);
        assert_eq!(t.token_ttl, Duration::from_secs(3600));
        let e = t
            .merge_update(&req(json!({"token_max_ttl": "10m"})))
            .expect_err("ttl > max");
        assert!(e.to_string().contains("token_max_ttl"));
        let e = TokenFields::default()
            .merge_update(&req(json!({"token_num_uses": "x"})))
            .expect_err("bad uint");
        assert!(e.to_string().contains("token_num_uses"), "{e}");
    }

    #[test]
    fn legacy_ttl_names_fill_absent_token_fields() {
        let mut t = TokenFields::default();
        let r = req(json!({"ttl": "1h", "max_ttl": 7200}));
        t.merge_update(&with_legacy_names(&r, LEGACY_TTL_NAMES))
            .expect("merge");
        assert_eq!(t.token_ttl, Duration::from_secs(3600));
        assert_eq!(t.token_max_ttl, Duration::from_secs(7200));
        let r = req(json!({"ttl": "1h", "token_ttl": "10m", "lease": 60}));
        let names = [("ttl", "token_ttl"), ("lease", "token_ttl")];
        t.merge_update(&with_legacy_names(&r, &names))
            .expect("merge");
        assert_eq!(t.token_ttl, Duration::from_secs(600), "token_ name wins");
        let r = req(json!({"ttl": "2m", "lease": 60}));
        t.merge_update(&with_legacy_names(&r, &names))
            .expect("merge");
        assert_eq!(
            t.token_ttl,
            Duration::from_secs(120),
            "earlier legacy name wins"
        );
    }

    #[test]
    fn cidrs() {
        let l = vec!["10.0.0.0/8".to_string(), "::1".to_string()];
        assert!(ip_allowed(&l, "10.1.2.3".parse().ok()));
        assert!(ip_allowed(&l, "::1".parse().ok()));
        assert!(ip_allowed(&l, "::ffff:10.0.0.1".parse().ok()));
        assert!(!ip_allowed(&l, "11.0.0.1".parse().ok()));
        assert!(!ip_allowed(&l, None));
        assert!(ip_allowed(&[], None));
        assert!(validate_cidrs("x", &["10.0.0.0/33".into()]).is_err());
        assert!(ip_allowed(&["0.0.0.0/0".into()], "1.2.3.4".parse().ok()));
    }

    #[test]
    fn renew_policy_check_ignores_default() {
        let t = TokenFields {
            token_policies: vec!["a".into()],
            ..Default::default()
        };
        let auth = t.to_auth("id", "n", BTreeMap::new());
        let mut issued = auth.clone();
        issued.policies = vec!["default".into(), "a".into()];
        assert!(t.policies_match(&issued));
        issued.policies = vec!["b".into()];
        assert!(!t.policies_match(&issued));
    }
}
