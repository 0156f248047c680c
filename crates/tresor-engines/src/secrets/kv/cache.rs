//! Decoded secrets a KV v2 engine has read, so that a repeated read skips
//! the barrier's two decryptions and the JSON decoding of the metadata and
//! the data (together about two thirds of a read's cost in the engine).
//!
//! Correctness rests on two rules:
//! - every change to a secret is made under its path lock
//!   ([`super::v2::KvV2::lock`]), whose guard drops the path's entry when it
//!   lets go, before the change is acknowledged;
//! - a reader that missed inserts what it loaded only if no invalidation
//!   touched the shard since it started loading (a per-shard generation),
//!   so a slow reader cannot put back a value a writer just replaced.
//!
//! The engine is built at unseal and dropped at seal, and with it this
//! cache: nothing decoded outlives the barrier's keys. Its size is bounded
//! by the bytes of the stored JSON it holds.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use parking_lot::Mutex;
use tresor_sdk::Map;

use super::v2::KeyMetadata;

const SHARDS: usize = 16;
/// Bytes of stored JSON (metadata plus current data) held per engine.
const MAX_BYTES: usize = 32 << 20;
/// Larger secrets are read from storage every time.
const MAX_ENTRY_BYTES: usize = 256 << 10;

/// One secret as the last read found it: its metadata, and if its current
/// version was readable then, the answer to a read of it (`data` and
/// `metadata`, without the grace fields, which depend on the time).
pub(super) struct Cached {
    pub(super) meta: KeyMetadata,
    pub(super) current: Option<Map>,
    bytes: usize,
}

impl Cached {
    pub(super) fn new(meta: KeyMetadata, current: Option<Map>, bytes: usize) -> Self {
        Cached {
            meta,
            current,
            bytes,
        }
    }
}

#[derive(Default)]
struct Shard {
    generation: u64,
    bytes: usize,
    entries: HashMap<String, Arc<Cached>>,
}

/// What a reader saw of a shard before it loaded from storage.
#[derive(Clone, Copy)]
pub(super) struct Ticket {
    shard: usize,
    generation: u64,
}

pub(super) struct ReadCache {
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
}

impl Default for ReadCache {
    fn default() -> Self {
        ReadCache {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl ReadCache {
    fn shard(&self, path: &str) -> usize {
        (self.hasher.hash_one(path) % SHARDS as u64) as usize
    }

    /// The cached entry, or a ticket to insert what the caller loads.
    pub(super) fn get(&self, path: &str) -> Result<Arc<Cached>, Ticket> {
        let shard = self.shard(path);
        let s = self.shards[shard].lock();
        match s.entries.get(path) {
            Some(c) => Ok(c.clone()),
            None => Err(Ticket {
                shard,
                generation: s.generation,
            }),
        }
    }

    /// Keep `entry` unless the shard changed since `ticket` was taken.
    pub(super) fn insert(&self, ticket: Ticket, path: &str, entry: Arc<Cached>) {
        if entry.bytes > MAX_ENTRY_BYTES {
            return;
        }
        let mut s = self.shards[ticket.shard].lock();
        if s.generation != ticket.generation {
            return;
        }
        let budget = MAX_BYTES / SHARDS;
        while s.bytes + entry.bytes > budget {
            // The map's order is random enough for a victim.
            let Some(victim) = s.entries.keys().next().cloned() else {
                break;
            };
            if let Some(old) = s.entries.remove(&victim) {
                s.bytes -= old.bytes;
            }
        }
        s.bytes += entry.bytes;
        if let Some(old) = s.entries.insert(path.to_string(), entry) {
            s.bytes -= old.bytes;
        }
    }

    /// Forget `path`, and refuse inserts from reads that started before.
    pub(super) fn invalidate(&self, path: &str) {
        let mut s = self.shards[self.shard(path)].lock();
        s.generation += 1;
        if let Some(old) = s.entries.remove(path) {
            s.bytes -= old.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn entry(bytes: usize) -> Arc<Cached> {
        Arc::new(Cached::new(KeyMetadata::new(Utc::now()), None, bytes))
    }

    #[test]
    fn an_invalidation_during_a_load_keeps_the_loaded_value_out() {
        let c = ReadCache::default();
        let ticket = c.get("a").err().expect("empty cache misses");
        c.invalidate("a");
        c.insert(ticket, "a", entry(10));
        assert!(c.get("a").is_err(), "a stale load was cached");

        let ticket = c.get("a").err().expect("still a miss");
        c.insert(ticket, "a", entry(10));
        assert!(c.get("a").is_ok());
        c.invalidate("a");
        assert!(c.get("a").is_err());
    }

    #[test]
    fn size_stays_within_budget() {
        let c = ReadCache::default();
        let per = MAX_ENTRY_BYTES;
        for i in 0..(4 * MAX_BYTES / per) {
            let path = format!("p{i}");
            if let Err(t) = c.get(&path) {
                c.insert(t, &path, entry(per));
            }
        }
        let total: usize = c.shards.iter().map(|s| s.lock().bytes).sum();
        assert!(total <= MAX_BYTES, "{total} bytes held");
        let counted: usize = c
            .shards
            .iter()
            .map(|s| s.lock().entries.values().map(|e| e.bytes).sum::<usize>())
            .sum();
        assert_eq!(total, counted);
        // Too large to keep at all.
        let t = c.get("big").err().unwrap();
        c.insert(t, "big", entry(MAX_ENTRY_BYTES + 1));
        assert!(c.get("big").is_err());
    }
}
