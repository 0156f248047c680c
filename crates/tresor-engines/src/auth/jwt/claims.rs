//! Claim checks shared by JWT login and the OIDC callback: time windows
//! with Vault's leeways, issuer, audience, subject, bound claims, and the
//! claim → metadata mapping.

use std::collections::BTreeMap;

use serde_json::Value;
use tresor_sdk::BackendError;

use super::role::{BoundClaimsType, Role};

/// Vault's defaults when a role leaves a leeway at 0; -1 disables it.
const DEFAULT_CLOCK_SKEW: i64 = 60;
const DEFAULT_EXP_LEEWAY: i64 = 150;
const DEFAULT_NBF_LEEWAY: i64 = 150;

fn leeway(v: i64, default: i64) -> i64 {
    match v {
        0 => default,
        v if v < 0 => 0,
        v => v,
    }
}

fn invalid(msg: impl std::fmt::Display) -> BackendError {
    BackendError::bad_request(format!("error validating token: {msg}"))
}

/// Glob match with go-glob's rules (Vault's `glob` bound claims and the
/// Kubernetes method's names): `*` matches any run of characters, nothing
/// else is special. Written by hand because glob crates add `?`, `[...]`
/// and path-separator rules that Vault does not have.
pub(crate) fn glob_match(pattern: &str, subject: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == subject;
    }
    let (first, rest) = match parts.split_first() {
        Some(x) => x,
        None => return false,
    };
    let Some(mut remaining) = subject.strip_prefix(first) else {
        return false;
    };
    let (last, middle) = match rest.split_last() {
        Some(x) => x,
        None => return false,
    };
    for part in middle {
        match remaining.find(part) {
            Some(i) => remaining = &remaining[i + part.len()..],
            None => return false,
        }
    }
    remaining.ends_with(last)
}

/// A claim by name, or by JSON pointer when the name starts with `/`.
pub(crate) fn get_claim<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    if name.starts_with('/') {
        claims.pointer(name)
    } else {
        claims.get(name)
    }
}

/// A scalar claim as text; lists and objects are not scalars.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn numeric(claims: &Value, name: &str) -> Result<Option<i64>, BackendError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| invalid(format!("claim {name:?} is not a valid time"))),
        Some(_) => Err(invalid(format!("claim {name:?} is not a numeric date"))),
    }
}

/// `exp` (required), `nbf` and `iat` against now, with the role's leeways.
pub(crate) fn check_times(claims: &Value, role: &Role, now: i64) -> Result<(), BackendError> {
    let skew = leeway(role.clock_skew_leeway, DEFAULT_CLOCK_SKEW);
    let exp_leeway = leeway(role.expiration_leeway, DEFAULT_EXP_LEEWAY);
    let nbf_leeway = leeway(role.not_before_leeway, DEFAULT_NBF_LEEWAY);
    // A token without an expiry would be a password that never changes.
    let exp = numeric(claims, "exp")?.ok_or_else(|| invalid("token has no \"exp\" claim"))?;
    if now > exp.saturating_add(exp_leeway).saturating_add(skew) {
        return Err(invalid("token is expired (exp)"));
    }
    if let Some(nbf) = numeric(claims, "nbf")? {
        if now.saturating_add(nbf_leeway).saturating_add(skew) < nbf {
            return Err(invalid("token is not yet valid (nbf)"));
        }
    }
    if let Some(iat) = numeric(claims, "iat")? {
        if iat > now.saturating_add(skew) {
            return Err(invalid("token was issued in the future (iat)"));
        }
    }
    Ok(())
}

pub(crate) fn check_issuer(claims: &Value, expected: &str) -> Result<(), BackendError> {
    if expected.is_empty() {
        return Ok(());
    }
    match claims.get("iss").and_then(Value::as_str) {
        Some(iss) if iss == expected => Ok(()),
        _ => Err(invalid("issuer (iss) does not match the configured issuer")),
    }
}

/// The `aud` claim as a list (it may be one string).
pub(crate) fn audiences(claims: &Value) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// Vault's rule for JWT roles: a role with `bound_audiences` needs one of
/// them in `aud`; a role without refuses a token that names an audience,
/// since that token was meant for someone else.
pub(crate) fn check_jwt_audience(claims: &Value, role: &Role) -> Result<(), BackendError> {
    let aud = audiences(claims);
    if role.bound_audiences.is_empty() {
        if !aud.is_empty() {
            return Err(invalid(
                "audience claim found in JWT but no audiences bound to the role",
            ));
        }
        return Ok(());
    }
    if aud.iter().any(|a| role.bound_audiences.contains(a)) {
        Ok(())
    } else {
        Err(invalid(
            "aud claim does not match any of the role's bound_audiences",
        ))
    }
}

/// `bound_subject` and `bound_claims`.
pub(crate) fn check_bindings(claims: &Value, role: &Role) -> Result<(), BackendError> {
    if !role.bound_subject.is_empty()
        && claims.get("sub").and_then(Value::as_str) != Some(role.bound_subject.as_str())
    {
        return Err(invalid("sub claim does not match bound subject"));
    }
    for (name, expected) in &role.bound_claims {
        let Some(actual) = get_claim(claims, name) else {
            return Err(invalid(format!("claim {name:?} is missing")));
        };
        let actual: Vec<String> = match actual {
            Value::Array(items) => items.iter().filter_map(scalar_text).collect(),
            v => scalar_text(v).into_iter().collect(),
        };
        let ok = expected.iter().any(|exp| {
            actual.iter().any(|act| match role.bound_claims_type {
                BoundClaimsType::String => exp == act,
                BoundClaimsType::Glob => glob_match(exp, act),
            })
        });
        if !ok {
            return Err(invalid(format!(
                "claim {name:?} does not match any associated bound claim values"
            )));
        }
    }
    Ok(())
}

/// The user claim (alias and display name) and the mapped metadata.
pub(crate) fn identity(
    claims: &Value,
    role: &Role,
    role_name: &str,
) -> Result<(String, BTreeMap<String, String>), BackendError> {
    let user_claim = if role.user_claim_json_pointer && !role.user_claim.starts_with('/') {
        format!("/{}", role.user_claim)
    } else {
        role.user_claim.clone()
    };
    let user = match get_claim(claims, &user_claim) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => {
            return Err(invalid(format!(
                "claim {:?} could not be converted to string",
                role.user_claim
            )))
        }
        None => {
            return Err(invalid(format!(
                "claim {:?} not found in token",
                role.user_claim
            )))
        }
    };
    if !role.groups_claim.is_empty() {
        match get_claim(claims, &role.groups_claim) {
            Some(Value::Array(_)) | Some(Value::String(_)) => {}
            _ => {
                return Err(invalid(format!(
                    "{:?} claim not found in token or not a list",
                    role.groups_claim
                )))
            }
        }
    }
    let mut metadata = BTreeMap::new();
    for (claim, key) in &role.claim_mappings {
        if let Some(v) = get_claim(claims, claim) {
            let text = scalar_text(v)
                .ok_or_else(|| invalid(format!("error converting claim {claim:?} to string")))?;
            metadata.insert(key.clone(), text);
        }
    }
    metadata.insert("role".into(), role_name.to_string());
    Ok((user, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_follow_go_glob() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("abc", "abc"));
        assert!(!glob_match("abc", "abcd"));
        assert!(glob_match("dev-*", "dev-team"));
        assert!(!glob_match("dev-*", "prod-team"));
        assert!(glob_match("*-team", "dev-team"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXcYYb"));
        assert!(glob_match("a*a", "aa"));
        assert!(!glob_match("a*a", "a"));
        assert!(glob_match("?", "?"));
        assert!(!glob_match("?", "x"));
    }

    #[test]
    fn leeways() {
        assert_eq!(leeway(0, 150), 150);
        assert_eq!(leeway(-1, 150), 0);
        assert_eq!(leeway(5, 150), 5);
    }
}
