//! Every backend passes the same suite.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use tresor_storage::{conformance, MemoryStorage, SqliteStorage};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_conforms() {
    conformance::run_all(Arc::new(MemoryStorage::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::open(&dir.path().join("tresor.db")).unwrap();
    conformance::run_all(Arc::new(storage)).await;
}

/// The suite again on a reopened database, so it also covers a file that
/// already has a schema and history.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_conforms_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tresor.db");
    drop(SqliteStorage::open(&path).unwrap());
    conformance::run_all(Arc::new(SqliteStorage::open(&path).unwrap())).await;
}
