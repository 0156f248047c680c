//! A read cache in front of a physical store that this process alone
//! writes (SQLite): reads of hot entries (mount tables, token entries, KV
//! metadata) stop paying a blocking-pool hop and a SQLite lookup.
//!
//! Coherence rests on one rule: every write goes through this wrapper. A
//! generation counter, bumped under the lock when a write completes, keeps
//! a read that raced the write from installing the value it read before.
//! Values are the barrier's ciphertext: nothing here is plaintext.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::{Entry, Error, Op, Storage};

/// Entries kept before the cache is dropped and refilled; bounded so a
/// scan of many keys cannot grow memory without limit.
const MAX_ENTRIES: usize = 100_000;

#[derive(Default)]
struct State {
    map: HashMap<String, Option<Arc<[u8]>>>,
    generation: u64,
}

pub struct CachedStorage {
    inner: Arc<dyn Storage>,
    state: Mutex<State>,
}

impl CachedStorage {
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        CachedStorage {
            inner,
            state: Mutex::new(State::default()),
        }
    }

    /// After a write (successful or not) the keys it touched are known, or
    /// forgotten when the outcome is unknown.
    fn written(&self, ops: &[Op], ok: bool) {
        let mut st = self.state.lock();
        st.generation = st.generation.wrapping_add(1);
        for op in ops {
            match (op, ok) {
                (Op::Put(e), true) => {
                    st.map
                        .insert(e.key.clone(), Some(Arc::from(e.value.as_slice())));
                }
                (Op::Delete(k), true) => {
                    st.map.insert(k.clone(), None);
                }
                (op, false) => {
                    st.map.remove(op.key());
                }
            }
        }
        if st.map.len() > MAX_ENTRIES {
            st.map.clear();
        }
    }
}

#[async_trait]
impl Storage for CachedStorage {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let generation = {
            let st = self.state.lock();
            if let Some(v) = st.map.get(key) {
                return Ok(v.as_ref().map(|v| v.to_vec()));
            }
            st.generation
        };
        let value = self.inner.get(key).await?;
        let mut st = self.state.lock();
        if st.generation == generation && st.map.len() < MAX_ENTRIES {
            st.map
                .insert(key.to_string(), value.as_deref().map(Arc::from));
        }
        Ok(value)
    }

    async fn put(&self, entry: Entry) -> Result<(), Error> {
        let ops = [Op::Put(entry)];
        let Op::Put(e) = &ops[0] else {
            return Ok(());
        };
        let r = self.inner.put(e.clone()).await;
        self.written(&ops, r.is_ok());
        r
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        let r = self.inner.delete(key).await;
        self.written(&[Op::Delete(key.to_string())], r.is_ok());
        r
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        self.inner.list(prefix).await
    }

    async fn batch(&self, ops: Vec<Op>) -> Result<(), Error> {
        let r = self.inner.batch(ops.clone()).await;
        self.written(&ops, r.is_ok());
        r
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStorage;

    #[tokio::test]
    async fn conforms() {
        crate::conformance::run_all(Arc::new(CachedStorage::new(Arc::new(MemoryStorage::new()))))
            .await;
    }

    #[tokio::test]
    async fn reads_are_served_from_cache_and_writes_update_it() {
        let inner = Arc::new(MemoryStorage::new());
        let c = CachedStorage::new(inner.clone());
        c.put(Entry {
            key: "a".into(),
            value: b"1".to_vec(),
        })
        .await
        .expect("put");
        assert_eq!(c.get("a").await.expect("get"), Some(b"1".to_vec()));
        // A write behind the cache's back is not seen: proof the read was cached.
        inner
            .put(Entry {
                key: "a".into(),
                value: b"x".to_vec(),
            })
            .await
            .expect("put");
        assert_eq!(c.get("a").await.expect("get"), Some(b"1".to_vec()));
        // Writes through the cache are.
        c.batch(vec![
            Op::Put(Entry {
                key: "a".into(),
                value: b"2".to_vec(),
            }),
            Op::Delete("b".into()),
        ])
        .await
        .expect("batch");
        assert_eq!(c.get("a").await.expect("get"), Some(b"2".to_vec()));
        c.delete("a").await.expect("delete");
        assert_eq!(c.get("a").await.expect("get"), None);
    }
}
