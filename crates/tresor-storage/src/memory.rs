//! In-memory storage for `--dev` and tests: a sorted map behind one lock.

use std::collections::BTreeMap;
use std::ops::Bound;

use async_trait::async_trait;
use parking_lot::RwLock;

use crate::keys::{normalize_prefix, validate_key, Children, Step};
use crate::{Entry, Error, Op, Storage};

/// Keys a listing visits per hold of the lock.
const LIST_CHUNK: usize = 4096;

/// Volatile storage: everything is lost when it is dropped. "Durable" in the
/// [`Storage`] contract means "visible to every later call" here.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    map: RwLock<BTreeMap<String, Vec<u8>>>,
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries stored.
    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.read().is_empty()
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        validate_key(key)?;
        Ok(self.map.read().get(key).cloned())
    }

    async fn put(&self, entry: Entry) -> Result<(), Error> {
        validate_key(&entry.key)?;
        self.map.write().insert(entry.key, entry.value);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        validate_key(key)?;
        self.map.write().remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let prefix = normalize_prefix(prefix)?;
        let mut children = Children::new(&prefix);
        let end = children.scan_end();
        let upper = match &end {
            Some(e) => Bound::Excluded(e.as_str()),
            None => Bound::Unbounded,
        };
        let mut lower = Bound::Included(prefix.to_string());
        loop {
            // A folder of a million entries (leases) took half a second to
            // scan: in chunks, with the lock let go and the worker handed
            // back between them, writers and other requests keep going.
            // Keys present throughout the listing are all listed.
            let mut next = None;
            let chunk_done = {
                let map = self.map.read();
                let range = map.range::<str, _>((lower.as_ref().map(String::as_str), upper));
                let mut visited = 0;
                for (key, _) in range {
                    if let Step::SeekTo(to) = children.visit(key) {
                        next = Some(Bound::Included(to));
                        break;
                    }
                    visited += 1;
                    if visited == LIST_CHUNK {
                        next = Some(Bound::Excluded(key.clone()));
                        break;
                    }
                }
                visited == LIST_CHUNK
            };
            match next {
                Some(n) => lower = n,
                None => break,
            }
            if chunk_done {
                tokio::task::yield_now().await;
            }
        }
        Ok(children.finish())
    }

    async fn batch(&self, ops: Vec<Op>) -> Result<(), Error> {
        // Validate everything before touching the map: all-or-nothing.
        for op in &ops {
            validate_key(op.key())?;
        }
        let mut map = self.map.write();
        for op in ops {
            match op {
                Op::Put(e) => {
                    map.insert(e.key, e.value);
                }
                Op::Delete(k) => {
                    map.remove(&k);
                }
            }
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "inmem"
    }
}
