//! Physical storage: the untrusted byte store below the barrier.
//!
//! Everything written here is already encrypted by tresor-core's barrier,
//! except the seal configuration and the encrypted keyring. Backends must
//! pass the conformance suite in `conformance` (enabled by the `conformance`
//! feature).
//!
//! Backends:
//! - [`MemoryStorage`] (`inmem`): a sorted map, for `--dev` and tests.
//! - [`SqliteStorage`] (`sqlite`): the embedded default. Durable writes go
//!   through one writer thread that commits everything queued in a single
//!   transaction (group commit), so concurrent writers share one fsync.
//!
//! Keys are `/`-separated paths. A key must be non-empty, must not end with
//! `/` (that would make it indistinguishable from a folder in `list`) and
//! must not contain NUL; see [`validate_key`]. Anything else, including
//! unicode, `%`, `_` and spaces, is stored verbatim.

use async_trait::async_trait;
use thiserror::Error;

mod cache;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod keys;
mod memory;
mod sqlite;

pub use cache::CachedStorage;
pub use keys::{normalize_prefix, validate_key};
pub use memory::MemoryStorage;
pub use sqlite::{SqliteStorage, DEFAULT_FILE_NAME};

/// An entry of physical storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(Entry),
    Delete(String),
}

impl Op {
    /// The key this operation touches.
    pub fn key(&self) -> &str {
        match self {
            Op::Put(e) => &e.key,
            Op::Delete(k) => k,
        }
    }
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    #[error("storage i/o: {0}")]
    Io(String),
    #[error("invalid key {0:?}")]
    InvalidKey(String),
    #[error("storage closed")]
    Closed,
}

/// Physical storage. Keys are `/`-separated paths; `list(prefix)` returns the
/// direct children of `prefix` (which is empty or ends with `/`): entries by
/// their remaining name and sub-folders once each with a trailing `/`,
/// sorted. A `put` or `batch` that returned `Ok` is durable.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error>;
    async fn put(&self, entry: Entry) -> Result<(), Error>;
    async fn delete(&self, key: &str) -> Result<(), Error>;
    async fn list(&self, prefix: &str) -> Result<Vec<String>, Error>;
    /// Apply all operations atomically, in order.
    async fn batch(&self, ops: Vec<Op>) -> Result<(), Error>;
    /// A short name for logs and `sys/seal-status` (`inmem`, `sqlite`).
    fn kind(&self) -> &'static str;
}
