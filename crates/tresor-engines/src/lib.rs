//! Secrets engines and auth methods, each a [`tresor_sdk::Backend`].
//!
//! Engines know nothing of HTTP, tokens or encryption: the core hands each
//! request to the backend mounted at its path, with a storage view that is
//! already the mount's own encrypted prefix. This crate depends on the SDK
//! only, so an engine cannot reach into the core even by accident.
//!
//! The core builds backends through [`registry`], keyed by mount type:
//!
//! | type | backend |
//! | --- | --- |
//! | `kv` | [`secrets::kv::KvV1`], or [`secrets::kv::KvV2`] when the mount option `version` is `"2"` |
//! | `kv-v2` | [`secrets::kv::KvV2`] (Vault's alias for `kv` with `version=2`) |
//! | `generic` | [`secrets::kv::KvV1`] (Vault's historical name for KV v1) |
//! | `cubbyhole` | [`secrets::cubbyhole::Cubbyhole`] |
//! | `pki` | [`secrets::pki::Pki`] (certificate authority: issuers, roles, CRL, OCSP) |
//! | `transit` | [`secrets::transit::Transit`] (encryption, signing, HMAC as a service) |
//! | `database` | [`secrets::database::Database`] (dynamic and static users for PostgreSQL, MySQL/MariaDB, Redis) |
//! | `aws` (secrets) | [`secrets::aws::AwsSecrets`] (dynamic IAM users, STS AssumeRole and federation tokens) |
//! | `jwt`, `oidc` | [`auth::jwt::JwtBackend`] (one backend, two names, as in Vault) |
//! | `kubernetes` | [`auth::kubernetes::KubernetesBackend`] |
//! | `approle` | [`auth::approle::AppRole`] |
//! | `userpass` | [`auth::userpass::UserPass`] |
//! | `aws` | [`auth::aws::AwsAuth`] (the IAM auth method; Vault also names its AWS *secrets* engine `aws`, and this one map is keyed by type alone) |
//! | `cert` | [`auth::cert::CertAuth`] (TLS certificates) |

pub mod auth;
pub mod secrets;
mod sigv4;

use std::collections::BTreeMap;

use tresor_sdk::Factory;

/// Every backend this crate provides, by mount type: secrets engines by
/// their type (`kv`), auth methods as `auth/<type>` (`auth/approle`), since
/// a name can be both (`aws`).
pub fn registry() -> BTreeMap<String, Factory> {
    let mut r: BTreeMap<String, Factory> = BTreeMap::new();
    r.insert("kv".into(), secrets::kv::factory);
    r.insert("kv-v2".into(), secrets::kv::factory_v2);
    r.insert("generic".into(), secrets::kv::factory_v1);
    r.insert("cubbyhole".into(), secrets::cubbyhole::factory);
    r.insert("pki".into(), secrets::pki::factory);
    r.insert("transit".into(), secrets::transit::factory);
    r.insert("database".into(), secrets::database::factory);
    r.insert("aws".into(), secrets::aws::factory);
    r.insert("auth/jwt".into(), auth::jwt::factory);
    r.insert("auth/oidc".into(), auth::jwt::factory);
    r.insert("auth/kubernetes".into(), auth::kubernetes::factory);
    r.insert("auth/approle".into(), auth::approle::factory);
    r.insert("auth/userpass".into(), auth::userpass::factory);
    r.insert("auth/aws".into(), auth::aws::factory);
    r.insert("auth/cert".into(), auth::cert::factory);
    r
}
