//! Policies at rest, and the cache of compiled ACLs.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tresor_sdk::{Storage, StorageExt};

use super::{normalise_name, parse_policy, Acl, Policy};
use crate::CoreError;

pub const ROOT_POLICY_NAME: &str = "root";
pub const DEFAULT_POLICY_NAME: &str = "default";

/// The built-in `default` policy, written at setup when absent. It grants
/// what Vault's default policy grants a token over itself (identity paths
/// left out until tresor has an identity store).
pub const DEFAULT_POLICY_TEXT: &str = r#"# Allow tokens to look up their own properties
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

# Allow tokens to renew themselves
path "auth/token/renew-self" {
  capabilities = ["update"]
}

# Allow tokens to revoke themselves
path "auth/token/revoke-self" {
  capabilities = ["update"]
}

# Allow a token to look up its own capabilities on a path
path "sys/capabilities-self" {
  capabilities = ["update"]
}

# Allow a token to look up its resultant ACL from all policies (UI)
path "sys/internal/ui/resultant-acl" {
  capabilities = ["read"]
}

# Allow a token to renew a lease via lease_id in the request body; the old
# path is kept for older clients
path "sys/renew" {
  capabilities = ["update"]
}
path "sys/leases/renew" {
  capabilities = ["update"]
}

# Allow looking up lease properties, given the lease ID
path "sys/leases/lookup" {
  capabilities = ["update"]
}

# Allow a token to manage its own cubbyhole
path "cubbyhole/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

# Allow a token to wrap arbitrary values in a response-wrapping token
path "sys/wrapping/wrap" {
  capabilities = ["update"]
}

# Allow a token to look up the creation time and TTL of a wrapping token
path "sys/wrapping/lookup" {
  capabilities = ["update"]
}

# Allow a token to unwrap a response-wrapping token
path "sys/wrapping/unwrap" {
  capabilities = ["update"]
}

# Allow general purpose tools
path "sys/tools/hash" {
  capabilities = ["update"]
}
path "sys/tools/hash/*" {
  capabilities = ["update"]
}

# Allow checking the status of a control group request if the user has the
# accessor
path "sys/control-group/request" {
  capabilities = ["update"]
}
"#;

/// How a policy is stored: `sys/policy/<name>` → this, as JSON.
#[derive(Debug, Serialize, Deserialize)]
struct StoredPolicy {
    name: String,
    raw: String,
}

/// Policies in the barrier, with parsed policies and compiled ACLs cached.
///
/// Caches are dropped wholesale on any write. A generation counter, bumped
/// by every write, keeps a reader that loaded from storage *before* a write
/// from publishing its stale result into the cache *after* it.
pub struct PolicyStore {
    storage: Arc<dyn Storage>,
    generation: AtomicU64,
    policies: RwLock<HashMap<String, Arc<Policy>>>,
    /// Keyed by the sorted, deduplicated, normalised policy names.
    acls: RwLock<HashMap<Vec<String>, Arc<Acl>>>,
    root_acl: Arc<Acl>,
    root_policy: Arc<Policy>,
}

impl PolicyStore {
    /// `storage` is a view whose prefix is `sys/policy/`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        PolicyStore {
            storage,
            generation: AtomicU64::new(0),
            policies: RwLock::new(HashMap::new()),
            acls: RwLock::new(HashMap::new()),
            root_acl: Arc::new(Acl::root()),
            root_policy: Arc::new(Policy {
                name: ROOT_POLICY_NAME.to_string(),
                raw: String::new(),
                paths: Vec::new(),
            }),
        }
    }

    /// Write the built-in `default` policy unless one is stored already (an
    /// operator may have edited it; it is kept).
    pub async fn setup(&self) -> Result<(), CoreError> {
        if self.storage.get(DEFAULT_POLICY_NAME).await?.is_none() {
            self.write(DEFAULT_POLICY_NAME, DEFAULT_POLICY_TEXT).await?;
        }
        Ok(())
    }

    /// The named policy; `root` is synthetic (no rules, empty text).
    pub async fn get(&self, name: &str) -> Result<Option<Arc<Policy>>, CoreError> {
        let name = normalise_name(name);
        if name == ROOT_POLICY_NAME {
            return Ok(Some(self.root_policy.clone()));
        }
        if let Some(p) = self.policies.read().get(&name) {
            return Ok(Some(p.clone()));
        }
        let generation = self.generation.load(Ordering::Acquire);
        let Some(stored) = self.storage.get_json::<StoredPolicy>(&name).await? else {
            return Ok(None);
        };
        // Stored text was validated when written: failing now is corruption
        // or a parser regression, not the caller's fault.
        let policy = parse_policy(&name, &stored.raw).map_err(|e| {
            CoreError::Internal(format!("stored policy {name:?} no longer parses: {e}"))
        })?;
        let policy = Arc::new(policy);
        let mut cache = self.policies.write();
        if self.generation.load(Ordering::Acquire) == generation {
            cache.insert(name, policy.clone());
        }
        Ok(Some(policy))
    }

    /// Create or replace a policy after checking that it parses.
    pub async fn set(&self, name: &str, text: &str) -> Result<(), CoreError> {
        let name = normalise_name(name);
        if name == ROOT_POLICY_NAME {
            return Err(CoreError::BadRequest("cannot update root policy".into()));
        }
        validate_name(&name)?;
        if text.trim().is_empty() {
            return Err(CoreError::BadRequest(
                "'policy' parameter not supplied or empty".into(),
            ));
        }
        parse_policy(&name, text)?;
        self.write(&name, text).await
    }

    /// Remove a policy; deleting one that does not exist is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), CoreError> {
        let name = normalise_name(name);
        match name.as_str() {
            ROOT_POLICY_NAME => Err(CoreError::BadRequest("cannot delete root policy".into())),
            DEFAULT_POLICY_NAME => {
                Err(CoreError::BadRequest("cannot delete default policy".into()))
            }
            _ => {
                self.storage.delete(&name).await?;
                self.invalidate();
                Ok(())
            }
        }
    }

    /// Every policy name, sorted, `root` and `default` included — what
    /// Vault lists at both `sys/policy` and `LIST sys/policies/acl`.
    pub async fn list(&self) -> Result<Vec<String>, CoreError> {
        let mut names: BTreeSet<String> = self
            .storage
            .list("")
            .await?
            .into_iter()
            .filter(|k| !k.ends_with('/'))
            .collect();
        names.insert(ROOT_POLICY_NAME.to_string());
        names.insert(DEFAULT_POLICY_NAME.to_string());
        Ok(names.into_iter().collect())
    }

    /// The compiled ACL of a token's policies. Names are normalised and
    /// deduplicated; unknown names are ignored, as in Vault. Root is granted
    /// only by the exact name `root` (how the token store writes it): a
    /// spelling such as `ROOT` or ` root ` grants nothing, so that no path
    /// that forgets to normalise can be tricked into handing out root.
    pub async fn acl(&self, names: &[String]) -> Result<Arc<Acl>, CoreError> {
        if names.iter().any(|n| n == ROOT_POLICY_NAME) {
            return Ok(self.root_acl.clone());
        }
        // Token policies are normally stored normalised and sorted: look the
        // cache up with the caller's slice, without building a key.
        let canonical = names.windows(2).all(|w| w[0] < w[1])
            && names
                .iter()
                .all(|n| n.trim().len() == n.len() && !n.chars().any(char::is_uppercase));
        if canonical {
            if let Some(acl) = self.acls.read().get(names) {
                return Ok(acl.clone());
            }
        }
        let key: Vec<String> = names
            .iter()
            .map(|n| normalise_name(n))
            .filter(|n| n != ROOT_POLICY_NAME)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !canonical {
            if let Some(acl) = self.acls.read().get(&key) {
                return Ok(acl.clone());
            }
        }

        let generation = self.generation.load(Ordering::Acquire);
        let mut policies = Vec::with_capacity(key.len());
        for name in &key {
            if let Some(p) = self.get(name).await? {
                policies.push(p);
            }
        }
        let acl = Arc::new(Acl::new(&policies));
        let mut cache = self.acls.write();
        if self.generation.load(Ordering::Acquire) == generation {
            cache.insert(key, acl.clone());
        }
        Ok(acl)
    }

    async fn write(&self, name: &str, text: &str) -> Result<(), CoreError> {
        let stored = StoredPolicy {
            name: name.to_string(),
            raw: text.to_string(),
        };
        self.storage.put_json(name, &stored).await?;
        self.invalidate();
        Ok(())
    }

    /// Bump the generation first, then drop the caches, both under the
    /// write locks, so no reader that started before can re-insert.
    fn invalidate(&self) {
        let mut policies = self.policies.write();
        let mut acls = self.acls.write();
        self.generation.fetch_add(1, Ordering::AcqRel);
        policies.clear();
        acls.clear();
    }
}

/// Policy names become storage keys: keep them to one plain key.
fn validate_name(name: &str) -> Result<(), CoreError> {
    let bad = name.is_empty()
        || name.contains('/')
        || name == "."
        || name == ".."
        || name.chars().any(char::is_control);
    if bad {
        return Err(CoreError::BadRequest(format!(
            "invalid policy name {name:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tresor_sdk::testing::MemoryStorage;
    use tresor_sdk::Operation;

    fn store() -> (Arc<MemoryStorage>, PolicyStore) {
        let mem = Arc::new(MemoryStorage::new());
        let store = PolicyStore::new(mem.clone());
        (mem, store)
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn setup_writes_default_once_and_keeps_edits() {
        let (mem, store) = store();
        store.setup().await.expect("setup");
        assert_eq!(mem.keys(), vec!["default".to_string()]);
        let p = store.get("default").await.expect("get").expect("present");
        assert_eq!(p.raw, DEFAULT_POLICY_TEXT);
        store
            .set("Default", "path \"x\" { capabilities = [\"read\"] }")
            .await
            .expect("default is editable");
        store.setup().await.expect("setup again");
        let p = store.get("default").await.expect("get").expect("present");
        assert!(p.raw.contains("\"x\""));
    }

    #[tokio::test]
    async fn default_policy_grants_self_service() {
        let (_, store) = store();
        store.setup().await.expect("setup");
        let acl = store.acl(&names(&["default"])).await.expect("acl");
        assert!(
            acl.allow(Operation::Read, "auth/token/lookup-self", None)
                .allowed
        );
        assert!(
            acl.allow(Operation::Update, "auth/token/renew-self", None)
                .allowed
        );
        assert!(acl.allow(Operation::Create, "cubbyhole/foo", None).allowed);
        assert!(acl.allow(Operation::List, "cubbyhole/", None).allowed);
        assert!(
            acl.allow(Operation::Update, "sys/wrapping/unwrap", None)
                .allowed
        );
        assert!(!acl.allow(Operation::Read, "secret/data/foo", None).allowed);
        assert!(!acl.allow(Operation::Update, "sys/policy/foo", None).allowed);
    }

    #[tokio::test]
    async fn set_get_list_delete() {
        let (mem, store) = store();
        store.setup().await.expect("setup");
        store
            .set(" Dev ", "path \"secret/*\" { capabilities = [\"read\"] }")
            .await
            .expect("set");
        let raw = mem.keys();
        assert!(raw.contains(&"dev".to_string()));
        let stored: serde_json::Value =
            serde_json::from_slice(&mem.get("dev").await.expect("get").expect("some"))
                .expect("json");
        assert_eq!(stored["name"], "dev");
        assert!(stored["raw"].as_str().expect("raw").contains("secret/*"));

        let p = store.get("DEV").await.expect("get").expect("present");
        assert_eq!(p.name, "dev");
        assert_eq!(
            store.list().await.expect("list"),
            names(&["default", "dev", "root"])
        );

        store.delete("dev").await.expect("delete");
        assert!(store.get("dev").await.expect("get").is_none());
        store.delete("dev").await.expect("idempotent");
        assert_eq!(
            store.list().await.expect("list"),
            names(&["default", "root"])
        );
    }

    #[tokio::test]
    async fn refuses_root_and_default_and_bad_input() {
        let (_, store) = store();
        store.setup().await.expect("setup");
        for n in ["root", "ROOT", " Root ", "\troot\n"] {
            let e = store
                .set(n, "path \"*\" { capabilities = [\"sudo\"] }")
                .await
                .expect_err("must be refused");
            assert!(
                matches!(&e, CoreError::BadRequest(m) if m == "cannot update root policy"),
                "{n:?}: {e:?}"
            );
            let e = store.delete(n).await.expect_err("must be refused");
            assert!(matches!(e, CoreError::BadRequest(_)));
        }
        let e = store.delete(" DEFAULT").await.expect_err("must be refused");
        assert!(
            matches!(&e, CoreError::BadRequest(m) if m == "cannot delete default policy"),
            "{e:?}"
        );

        let e = store
            .set("p", "path \"a\" { capabilities = [\"fly\"] }")
            .await
            .expect_err("must be refused");
        assert!(
            matches!(&e, CoreError::BadRequest(m) if m.contains("fly")),
            "{e:?}"
        );
        let e = store.set("p", "  ").await.expect_err("must be refused");
        assert!(matches!(e, CoreError::BadRequest(_)));
        let e = store
            .set("a/b", "path \"a\" {}")
            .await
            .expect_err("must be refused");
        assert!(matches!(e, CoreError::BadRequest(_)));
        assert!(store.get("p").await.expect("get").is_none());

        let root = store.get(" ROOT ").await.expect("get").expect("synthetic");
        assert_eq!(root.name, "root");
        assert!(root.raw.is_empty());
    }

    #[tokio::test]
    async fn odd_root_spellings_never_grant_root() {
        let (_, store) = store();
        store.setup().await.expect("setup");
        for n in ["ROOT", " Root ", "root "] {
            let acl = store.acl(&names(&[n])).await.expect("acl");
            assert!(!acl.is_root(), "{n:?}");
            assert!(!acl.allow(Operation::Read, "secret/foo", None).allowed);
            assert_eq!(acl.capabilities("secret/foo"), vec!["deny"]);
        }
        let acl = store.acl(&names(&["default", "root"])).await.expect("acl");
        assert!(acl.is_root());
        assert_eq!(acl.capabilities("anything"), vec!["root"]);
    }

    #[tokio::test]
    async fn acl_cache_normalises_and_invalidates() {
        let (_, store) = store();
        store.setup().await.expect("setup");
        store
            .set("a", "path \"secret/a\" { capabilities = [\"read\"] }")
            .await
            .expect("set");
        let acl1 = store
            .acl(&names(&["a", "default", "missing"]))
            .await
            .expect("acl");
        let acl2 = store
            .acl(&names(&["Default", " A", "a", "missing"]))
            .await
            .expect("acl");
        assert!(
            Arc::ptr_eq(&acl1, &acl2),
            "same normalised set shares one ACL"
        );
        assert!(acl1.allow(Operation::Read, "secret/a", None).allowed);

        store
            .set("a", "path \"secret/a\" { capabilities = [\"deny\"] }")
            .await
            .expect("set");
        let acl3 = store.acl(&names(&["a", "default"])).await.expect("acl");
        assert!(!Arc::ptr_eq(&acl1, &acl3));
        assert!(!acl3.allow(Operation::Read, "secret/a", None).allowed);

        store.delete("a").await.expect("delete");
        let acl4 = store.acl(&names(&["a"])).await.expect("acl");
        assert_eq!(acl4.capabilities("secret/a"), vec!["deny"]);
    }

    #[tokio::test]
    async fn corrupt_stored_policy_is_internal() {
        let (mem, store) = store();
        mem.put("bad", br#"{"name":"bad","raw":"path { nope"}"#)
            .await
            .expect("put");
        let e = store.get("bad").await.expect_err("must be refused");
        assert!(matches!(e, CoreError::Internal(_)));
    }
}
