//! SQLite-specific behaviour: durability across reopen, file permissions,
//! group commit throughput.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tresor_storage::{Entry, Op, SqliteStorage, Storage};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn entry(key: &str, value: &[u8]) -> Entry {
    Entry {
        key: key.into(),
        value: value.into(),
    }
}

#[tokio::test]
async fn reopen_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tresor.db");
    {
        let s = SqliteStorage::open(&path).unwrap();
        s.put(entry("a/b", b"kept")).await.unwrap();
        s.batch(vec![
            Op::Put(entry("a/c", b"")),
            Op::Put(entry("gone", b"x")),
            Op::Delete("gone".into()),
        ])
        .await
        .unwrap();
    }
    let s = SqliteStorage::open(&path).unwrap();
    assert_eq!(s.get("a/b").await.unwrap(), Some(b"kept".to_vec()));
    assert_eq!(s.get("a/c").await.unwrap(), Some(vec![]));
    assert_eq!(s.get("gone").await.unwrap(), None);
    assert_eq!(s.list("").await.unwrap(), ["a/"]);
    assert_eq!(s.kind(), "sqlite");
}

#[tokio::test]
async fn data_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("nested/tresor-data");
    let s = SqliteStorage::open_dir(&data_dir).unwrap();
    s.put(entry("k", b"v")).await.unwrap();
    assert_eq!(mode(&data_dir), 0o700, "created data directory");
    let db = data_dir.join("tresor.db");
    assert_eq!(s.path(), db);
    for suffix in ["", "-wal", "-shm"] {
        let file = Path::new(&format!("{}{suffix}", db.display())).to_owned();
        assert!(file.exists(), "{} exists while open", file.display());
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

#[tokio::test]
async fn existing_loose_file_is_tightened() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tresor.db");
    std::fs::write(&db, b"").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = SqliteStorage::open(&db).unwrap();
    s.put(entry("k", b"v")).await.unwrap();
    assert_eq!(mode(&db), 0o600);
}

#[tokio::test]
async fn not_a_database_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tresor.db");
    std::fs::write(&db, vec![0x42; 8192]).unwrap();
    assert!(SqliteStorage::open(&db).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_puts_complete() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(SqliteStorage::open(&dir.path().join("db")).unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..64 {
        let s = Arc::clone(&s);
        tasks.spawn(async move {
            for i in 0..50 {
                s.put(entry(&format!("m/{t}/{i}"), &[t as u8; 100]))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(s.list("m/").await.unwrap().len(), 64);
    assert!(s.commits() < 64 * 50, "{} commits", s.commits());
}

/// Durable-write throughput with 16 concurrent writers, on the real disk
/// (the target dir), not tmpfs. Run with
/// `cargo test -p tresor-storage --release --test sqlite -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check; prints writes/s"]
async fn durable_write_throughput() {
    const WRITERS: usize = 16;
    const SECONDS: f64 = 5.0;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let s = Arc::new(SqliteStorage::open(&dir.path().join("bench.db")).unwrap());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let s = Arc::clone(&s);
        tasks.spawn(async move {
            let value = vec![0xab; 256];
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < SECONDS {
                s.put(entry(&format!("bench/{w}/{}", n % 1000), &value))
                    .await
                    .unwrap();
                n += 1;
            }
            n
        });
    }
    let mut writes = 0;
    while let Some(r) = tasks.join_next().await {
        writes += r.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{WRITERS} writers: {writes} durable writes in {secs:.2}s = {:.0} writes/s, {} commits ({:.1} writes/commit)",
        writes as f64 / secs,
        s.commits(),
        writes as f64 / s.commits() as f64
    );
}
