//! IAM principal ARNs as STS reports them, and their canonical form for
//! role bindings.

use tresor_sdk::BackendError;

/// An IAM principal parsed from an ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    pub(crate) partition: String,
    pub(crate) account: String,
    /// `user`, `role` (also for `assumed-role`), `federated-user`, ...
    pub(crate) kind: String,
    /// The IAM path between type and name (`/` when none), unknown (`/`)
    /// for assumed roles: STS does not report the role's path.
    pub(crate) path: String,
    /// User or role name.
    pub(crate) name: String,
    /// Session name of an assumed role.
    pub(crate) session: Option<String>,
}

impl Principal {
    /// Parse the ARN STS answered with (`arn:aws:iam::1:user/p/alice`,
    /// `arn:aws:sts::1:assumed-role/r/session`).
    pub(crate) fn parse(arn: &str) -> Result<Self, BackendError> {
        let bad = || BackendError::bad_request(format!("unrecognized IAM principal ARN {arn:?}"));
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let [prefix, partition, service, region, account, resource] = parts[..] else {
            return Err(bad());
        };
        if prefix != "arn" || partition.is_empty() || !region.is_empty() || account.is_empty() {
            return Err(bad());
        }
        let (kind, rest) = resource.split_once('/').ok_or_else(bad)?;
        let segments: Vec<&str> = rest.split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(bad());
        }
        let (kind, path, name, session) = match (service, kind) {
            ("sts", "assumed-role") => {
                // assumed-role/<role name>/<session name>
                let [role, session] = segments[..] else {
                    return Err(bad());
                };
                ("role", "/".to_string(), role, Some(session.to_string()))
            }
            ("iam", "user") | ("iam", "role") => {
                let (name, path) = segments.split_last().ok_or_else(bad)?;
                let path = if path.is_empty() {
                    "/".to_string()
                } else {
                    format!("/{}/", path.join("/"))
                };
                (kind, path, *name, None)
            }
            ("sts", "federated-user") => {
                let [name] = segments[..] else {
                    return Err(bad());
                };
                ("federated-user", "/".to_string(), name, None)
            }
            _ => return Err(bad()),
        };
        Ok(Principal {
            partition: partition.to_string(),
            account: account.to_string(),
            kind: kind.to_string(),
            path,
            name: name.to_string(),
            session,
        })
    }

    /// Vault's canonical ARN: the IAM entity behind the caller, without its
    /// path (an assumed role maps to its role).
    pub(crate) fn canonical_arn(&self) -> String {
        let service = if self.kind == "federated-user" {
            "sts"
        } else {
            "iam"
        };
        format!(
            "arn:{}:{service}::{}:{}/{}",
            self.partition, self.account, self.kind, self.name
        )
    }

    /// The ARN with its IAM path when STS told it (users), else canonical.
    pub(crate) fn full_arn(&self) -> String {
        if self.kind == "federated-user" {
            return self.canonical_arn();
        }
        format!(
            "arn:{}:iam::{}:{}{}{}",
            self.partition, self.account, self.kind, self.path, self.name
        )
    }
}

/// A bound ARN as written on a role: `arn:<partition>:iam::<account>:<type>/...`,
/// with `*` allowed anywhere.
pub(crate) fn validate_bound_arn(arn: &str) -> Result<(), BackendError> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6 && parts[0] == "arn" && !parts[5].is_empty();
    if ok || arn == "*" {
        Ok(())
    } else {
        Err(BackendError::bad_request(format!(
            "bound_iam_principal_arn: {arn:?} is not an ARN (arn:aws:iam::<account>:<user|role>/<name>)"
        )))
    }
}

/// A non-glob bound ARN that names an IAM user or role, for unique-ID
/// resolution: (kind, name).
pub(crate) fn user_or_role(arn: &str) -> Result<(String, String), BackendError> {
    let p = Principal::parse(arn).map_err(|_| {
        BackendError::bad_request(format!(
            "bound_iam_principal_arn: cannot resolve {arn:?} to a unique ID: only IAM user and role ARNs can be (or set resolve_aws_unique_ids=false)"
        ))
    })?;
    if p.session.is_some() || !(p.kind == "user" || p.kind == "role") {
        return Err(BackendError::bad_request(format!(
            "bound_iam_principal_arn: cannot resolve {arn:?}: only IAM user and role ARNs can be bound by unique ID"
        )));
    }
    Ok((p.kind, p.name))
}

/// `*` matches any run of characters (including none), everything else
/// itself. Iterative with backtracking to the last star, so linear-ish and
/// never recursive on attacker-chosen input.
pub(crate) fn glob_match(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_principals() {
        let u = Principal::parse("arn:aws:iam::123456789012:user/dev/team/alice").expect("user");
        assert_eq!(u.canonical_arn(), "arn:aws:iam::123456789012:user/alice");
        assert_eq!(
            u.full_arn(),
            "arn:aws:iam::123456789012:user/dev/team/alice"
        );
        let r = Principal::parse("arn:aws:sts::123456789012:assumed-role/app/i-0abc").expect("ar");
        assert_eq!(r.canonical_arn(), "arn:aws:iam::123456789012:role/app");
        assert_eq!(r.session.as_deref(), Some("i-0abc"));
        for bad in [
            "arn:aws:iam::1:group/g",
            "arn:aws:sts::1:assumed-role/onlyrole",
            "arn:aws:iam:us-east-1:1:user/a",
            "nope",
            "arn:aws:iam::1:user//a",
        ] {
            assert!(Principal::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("arn:aws:iam::1:role/*", "arn:aws:iam::1:role/x"));
        assert!(glob_match("a*c*e", "abcde"));
        assert!(glob_match("*", ""));
        assert!(!glob_match(
            "arn:aws:iam::1:role/*",
            "arn:aws:iam::2:role/x"
        ));
        assert!(!glob_match("abc", "abcd"));
        assert!(glob_match("*.example.com", "a.b.example.com"));
    }
}
