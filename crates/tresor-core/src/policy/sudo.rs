//! Root-protected ("sudo") paths: a non-root token needs the `sudo`
//! capability on them in addition to the one for the operation.
//!
//! Sources, checked while writing this:
//! - Vault `vault/logical_system.go`, `PathsSpecial.Root` of the `sys`
//!   backend: `auth/*`, `remount`, `audit`, `audit/*`, `raw`, `raw/*`,
//!   `rotate`, `config/cors`, `config/auditing/*`, `config/ui/headers/*`,
//!   `plugins/catalog/*`, `plugins/runtimes/catalog/*`, `revoke-prefix/*`,
//!   `revoke-force/*`, `leases/revoke-prefix/*`, `leases/revoke-force/*`,
//!   `leases/lookup/*`, `leases`, `internal/inspect/*`, `seal`, `step-down`
//!   (replication and raft-snapshot entries are Enterprise-only and left out).
//! - Vault `vault/token_store.go`, `PathsSpecial.Root` of `auth/token/`:
//!   `revoke-orphan/*`, `accessors*`.
//! - The tresor design brief additionally makes `auth/token/create-orphan`,
//!   `auth/token/revoke-orphan`, `auth/token/tidy`, the whole of
//!   `sys/config/*` and `sys/plugins/*` root-protected (Vault enforces
//!   create-orphan's sudo inside the handler; the rest is a deliberate
//!   tightening). `sys/policy/*`, `sys/mounts/*` and `sys/key-status` are
//!   NOT root-protected, as in Vault.
//!
//! A trailing `*` is a prefix match, as in Vault's `PathsSpecial`. The list
//! assumes the token store is mounted at `auth/token/`, which it always is.

/// Exact root-protected paths.
const EXACT: &[&str] = &[
    "auth/token/create-orphan",
    "auth/token/revoke-orphan",
    "auth/token/tidy",
    "sys/audit",
    "sys/leases",
    "sys/raw",
    "sys/remount",
    "sys/rotate",
    "sys/seal",
    "sys/step-down",
];

/// Root-protected prefixes (the `*` of Vault's patterns removed).
const PREFIXES: &[&str] = &[
    "auth/token/accessors",
    "auth/token/revoke-orphan/",
    "sys/audit/",
    "sys/auth/",
    "sys/config/",
    "sys/internal/inspect/",
    "sys/leases/lookup/",
    "sys/leases/revoke-force/",
    "sys/leases/revoke-prefix/",
    "sys/plugins/",
    "sys/raw/",
    "sys/revoke-force/",
    "sys/revoke-prefix/",
];

/// Does `path` (full request path, no leading `/` needed) require `sudo`?
pub fn is_sudo_path(path: &str) -> bool {
    let path = path.trim_start_matches('/');
    // Two dozen short comparisons: cheaper than any index structure.
    EXACT.contains(&path) || PREFIXES.iter().any(|p| path.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_root_paths() {
        for p in [
            "sys/audit",
            "sys/audit/file",
            "/sys/audit/file",
            "sys/auth/userpass",
            "sys/raw/core/keyring",
            "sys/raw",
            "sys/rotate",
            "sys/seal",
            "sys/step-down",
            "sys/remount",
            "sys/leases/lookup/aws/creds/",
            "sys/leases/revoke-prefix/aws/",
            "sys/leases/revoke-force/aws/",
            "sys/revoke-prefix/aws/",
            "sys/revoke-force/aws/",
            "sys/config/cors",
            "sys/config/ui/headers/X-Foo",
            "sys/plugins/catalog/secret/foo",
            "auth/token/accessors",
            "auth/token/accessors/",
            "auth/token/create-orphan",
            "auth/token/revoke-orphan",
            "auth/token/tidy",
        ] {
            assert!(is_sudo_path(p), "{p} should need sudo");
        }
    }

    #[test]
    fn ordinary_paths() {
        for p in [
            "sys/policy/foo",
            "sys/policies/acl/foo",
            "sys/mounts/secret",
            "sys/mounts",
            "sys/auth",
            "sys/key-status",
            "sys/leases/lookup",
            "sys/leases/renew",
            "sys/audit-hash/file",
            "sys/rotate-extra",
            "auth/token/create",
            "auth/token/lookup-self",
            "secret/data/sys/audit",
        ] {
            assert!(!is_sudo_path(p), "{p} should not need sudo");
        }
    }
}
