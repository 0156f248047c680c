//! SQLite storage, the embedded default.
//!
//! One table `kv(key, value)`, WAL journal, `synchronous=FULL`: a write is
//! on disk when its `COMMIT` returns. An fsync per write would cap the
//! server at a few hundred writes per second, so writes go through a single
//! writer thread that does group commit: it takes everything queued since
//! its last commit, applies it in one transaction, and only then answers
//! every waiter. Under load, one fsync covers many callers; idle, a lone
//! write pays one fsync and no added delay.
//!
//! Reads never wait for the writer: WAL lets a small pool of read
//! connections see the last committed state concurrently. Connections are
//! blocking, so both sides run off the async runtime (a dedicated thread for
//! the writer, `spawn_blocking` for readers).

use std::ffi::OsString;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::types::Type;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{oneshot, Semaphore};

use crate::keys::{normalize_prefix, validate_key, Children, Step};
use crate::{Entry, Error, Op, Storage};

/// File name used by [`SqliteStorage::open_dir`].
pub const DEFAULT_FILE_NAME: &str = "tresor.db";

/// Read connections. More would only contend on 2-4 cores; fewer would make
/// a slow `list` block point reads.
const READERS: usize = 4;
/// How long a connection waits on a lock held by another process (a backup
/// tool, an operator's `sqlite3` shell) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds on one group commit, so one transaction's WAL growth and the
/// latency of the first waiter in it stay bounded under a flood.
const MAX_GROUP_REQUESTS: usize = 1024;
const MAX_GROUP_BYTES: usize = 32 << 20;

const SQL_GET: &str = "SELECT value FROM kv WHERE key = ?1";
const SQL_PUT: &str = "INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)";
const SQL_DELETE: &str = "DELETE FROM kv WHERE key = ?1";
const SQL_LIST_RANGE: &str = "SELECT key FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key";
const SQL_LIST_FROM: &str = "SELECT key FROM kv WHERE key >= ?1 ORDER BY key";

/// Durable storage in one SQLite file (plus its `-wal` and `-shm`), all
/// created with mode 0600.
pub struct SqliteStorage {
    path: PathBuf,
    /// `None` only while dropping: closing the channel is what tells the
    /// writer thread to finish.
    writer: Option<mpsc::Sender<WriteRequest>>,
    writer_thread: Option<JoinHandle<()>>,
    readers: Arc<ReadPool>,
    reader_permits: Arc<Semaphore>,
    commits: Arc<AtomicU64>,
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage")
            .field("path", &self.path)
            .field("commits", &self.commits())
            .finish_non_exhaustive()
    }
}

struct WriteRequest {
    ops: Vec<Op>,
    reply: oneshot::Sender<Result<(), Error>>,
}

impl WriteRequest {
    fn bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put(e) => e.key.len() + e.value.len(),
                Op::Delete(k) => k.len(),
            })
            .sum()
    }
}

impl SqliteStorage {
    /// Opens (creating if needed) the database file at `path`. A missing
    /// parent directory is created with mode 0700.
    pub fn open(path: &Path) -> Result<Self, Error> {
        prepare_files(path)?;

        let writer = Connection::open(path).map_err(sql_err)?;
        writer.busy_timeout(BUSY_TIMEOUT).map_err(sql_err)?;
        let mode: String = writer
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(sql_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Io(format!(
                "{}: cannot enable WAL journal (got {mode})",
                path.display()
            )));
        }
        writer
            .pragma_update(None, "synchronous", "FULL")
            .map_err(sql_err)?;
        // Without a limit the WAL file keeps its high-water size forever.
        writer
            .pragma_update(None, "journal_size_limit", 64_i64 << 20)
            .map_err(sql_err)?;
        writer
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
            )
            .map_err(sql_err)?;

        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(open_reader(path)?);
        }
        // -wal and -shm exist now (WAL mode plus open readers). SQLite gives
        // them the database file's mode, but only if the umask allows it.
        restrict_sidecars(path)?;

        let commits = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        let thread_commits = Arc::clone(&commits);
        let writer_thread = std::thread::Builder::new()
            .name("tresor-sqlite-writer".into())
            .spawn(move || run_writer(writer, rx, &thread_commits))
            .map_err(|e| Error::Io(format!("spawning sqlite writer thread: {e}")))?;

        Ok(Self {
            path: path.to_owned(),
            writer: Some(tx),
            writer_thread: Some(writer_thread),
            readers: Arc::new(ReadPool {
                conns: Mutex::new(readers),
            }),
            reader_permits: Arc::new(Semaphore::new(READERS)),
            commits,
        })
    }

    /// Opens `dir/tresor.db`, creating `dir` with mode 0700 if missing:
    /// the shape of the embedded default (`./tresor-data`).
    pub fn open_dir(dir: &Path) -> Result<Self, Error> {
        Self::open(&dir.join(DEFAULT_FILE_NAME))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write transactions committed so far. Fewer than writes means group
    /// commit is sharing fsyncs.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    async fn read<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let permit = Arc::clone(&self.reader_permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::Closed)?;
        let pool = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let lease = pool.lease().ok_or(Error::Closed)?;
            let conn = lease.conn().ok_or(Error::Closed)?;
            f(conn).map_err(sql_err)
        })
        .await
        .map_err(|e| Error::Io(format!("sqlite reader task: {e}")))?
    }

    async fn write(&self, ops: Vec<Op>) -> Result<(), Error> {
        let writer = self.writer.as_ref().ok_or(Error::Closed)?;
        let (reply, answer) = oneshot::channel();
        writer
            .send(WriteRequest { ops, reply })
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }
}

impl Drop for SqliteStorage {
    fn drop(&mut self) {
        // The writer drains what is queued, then sees the channel closed.
        drop(self.writer.take());
        if let Some(thread) = self.writer_thread.take() {
            if thread.join().is_err() {
                tracing::error!(path = %self.path.display(), "sqlite writer thread panicked");
            }
        }
    }
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        validate_key(key)?;
        let key = key.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(SQL_GET)?
                .query_row([&key], |row| row.get(0))
                .optional()
        })
        .await
    }

    async fn put(&self, entry: Entry) -> Result<(), Error> {
        validate_key(&entry.key)?;
        self.write(vec![Op::Put(entry)]).await
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        validate_key(key)?;
        self.write(vec![Op::Delete(key.to_owned())]).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let prefix = normalize_prefix(prefix)?.into_owned();
        self.read(move |conn| list_children(conn, &prefix)).await
    }

    async fn batch(&self, ops: Vec<Op>) -> Result<(), Error> {
        for op in &ops {
            validate_key(op.key())?;
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.write(ops).await
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }
}

struct ReadPool {
    conns: Mutex<Vec<Connection>>,
}

impl ReadPool {
    fn lease(&self) -> Option<Lease<'_>> {
        let conn = self.conns.lock().pop()?;
        Some(Lease {
            pool: self,
            conn: Some(conn),
        })
    }
}

/// Puts the connection back even if the reader panics, so the pool never
/// shrinks below its semaphore's permits.
struct Lease<'a> {
    pool: &'a ReadPool,
    conn: Option<Connection>,
}

impl Lease<'_> {
    /// `None` never happens while the lease is alive; only `drop` takes it.
    fn conn(&self) -> Option<&Connection> {
        self.conn.as_ref()
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.conns.lock().push(conn);
        }
    }
}

fn list_children(conn: &Connection, prefix: &str) -> rusqlite::Result<Vec<String>> {
    let mut children = Children::new(prefix);
    let end = children.scan_end();
    let mut from = prefix.to_owned();
    loop {
        let mut stmt = conn.prepare_cached(if end.is_some() {
            SQL_LIST_RANGE
        } else {
            SQL_LIST_FROM
        })?;
        let mut rows = match &end {
            Some(end) => stmt.query(params![from, end])?,
            None => stmt.query(params![from])?,
        };
        let mut seek = None;
        while let Some(row) = rows.next()? {
            let key = row
                .get_ref(0)?
                .as_str()
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, Type::Text, e.into()))?;
            if let Step::SeekTo(next) = children.visit(key) {
                seek = Some(next);
                break;
            }
        }
        match seek {
            Some(next) => from = next,
            None => return Ok(children.finish()),
        }
    }
}

fn run_writer(conn: Connection, queue: mpsc::Receiver<WriteRequest>, commits: &AtomicU64) {
    // `recv` keeps returning queued requests after every sender is gone, so
    // shutdown drains before it stops.
    while let Ok(first) = queue.recv() {
        let mut bytes = first.bytes();
        let mut group = vec![first];
        while group.len() < MAX_GROUP_REQUESTS && bytes < MAX_GROUP_BYTES {
            match queue.try_recv() {
                Ok(next) => {
                    bytes += next.bytes();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let results = apply_group(&conn, &group, commits);
        for (request, result) in group.into_iter().zip(results) {
            // A caller that gave up waiting is no error of ours.
            let _ = request.reply.send(result);
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing sqlite writer connection");
    }
}

/// Applies every request of a group; the result for each is `Ok` only if its
/// operations are committed.
fn apply_group(
    conn: &Connection,
    group: &[WriteRequest],
    commits: &AtomicU64,
) -> Vec<Result<(), Error>> {
    if group.len() > 1 {
        let grouped = transaction(conn, |conn| {
            group
                .iter()
                .map(|request| in_savepoint(conn, &request.ops))
                .collect::<rusqlite::Result<Vec<_>>>()
        });
        match grouped {
            Ok(results) => {
                commits.fetch_add(1, Ordering::Relaxed);
                return results;
            }
            Err(e) => {
                // The whole transaction is gone (failed COMMIT, or SQLite
                // rolled back on its own after e.g. SQLITE_FULL). Nothing of
                // it is committed; retrying one by one tells each caller the
                // truth about its own request. Puts and deletes are
                // idempotent, so even a COMMIT that failed after reaching the
                // disk is safe to repeat.
                tracing::warn!(error = %e, requests = group.len(), "group commit failed, retrying requests one by one");
            }
        }
    }
    group
        .iter()
        .map(|request| {
            transaction(conn, |conn| apply_ops(conn, &request.ops))
                .map(|()| {
                    commits.fetch_add(1, Ordering::Relaxed);
                })
                .map_err(sql_err)
        })
        .collect()
}

/// Runs `f` in an immediate transaction and commits; on any error, the
/// transaction is rolled back.
fn transaction<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    // IMMEDIATE takes the write lock up front, so a concurrent writer from
    // another process makes us wait (busy_timeout) instead of failing late.
    exec(conn, "BEGIN IMMEDIATE")?;
    let result = f(conn).and_then(|value| exec(conn, "COMMIT").map(|()| value));
    if result.is_err() && !conn.is_autocommit() {
        if let Err(e) = exec(conn, "ROLLBACK") {
            tracing::error!(error = %e, "sqlite rollback failed");
        }
    }
    result
}

/// Applies one caller's operations inside the group transaction. The outer
/// error means the transaction itself is lost; the inner one that only this
/// request failed and has been undone.
fn in_savepoint(conn: &Connection, ops: &[Op]) -> rusqlite::Result<Result<(), Error>> {
    exec(conn, "SAVEPOINT request")?;
    match apply_ops(conn, ops) {
        Ok(()) => {
            exec(conn, "RELEASE request")?;
            Ok(Ok(()))
        }
        Err(e) if conn.is_autocommit() => Err(e),
        Err(e) => {
            exec(conn, "ROLLBACK TO request")?;
            exec(conn, "RELEASE request")?;
            Ok(Err(sql_err(e)))
        }
    }
}

fn apply_ops(conn: &Connection, ops: &[Op]) -> rusqlite::Result<()> {
    for op in ops {
        match op {
            Op::Put(e) => conn
                .prepare_cached(SQL_PUT)?
                .execute(params![e.key, e.value])?,
            Op::Delete(key) => conn.prepare_cached(SQL_DELETE)?.execute([key])?,
        };
    }
    Ok(())
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

fn open_reader(path: &Path) -> Result<Connection, Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql_err)?;
    // Read-write because a read-only connection cannot create -shm; this
    // keeps a reader from ever writing anyway.
    conn.pragma_update(None, "query_only", true)
        .map_err(sql_err)?;
    Ok(conn)
}

/// Creates the parent directory (0700) and the database file (0600) before
/// SQLite sees them, so no data ever sits in a file with looser permissions.
fn prepare_files(path: &Path) -> Result<(), Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io_err(dir, e))?;
        }
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    // `mode` above is filtered by the umask and ignored for existing files.
    fs::set_permissions(path, Permissions::from_mode(0o600)).map_err(|e| io_err(path, e))
}

fn restrict_sidecars(path: &Path) -> Result<(), Error> {
    for suffix in ["-wal", "-shm"] {
        let mut name = OsString::from(path.as_os_str());
        name.push(suffix);
        let sidecar = PathBuf::from(name);
        match fs::set_permissions(&sidecar, Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&sidecar, e)),
        }
    }
    Ok(())
}

fn sql_err(e: rusqlite::Error) -> Error {
    Error::Io(format!("sqlite: {e}"))
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Io(format!("{}: {e}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn group_commit_groups_concurrent_puts() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(SqliteStorage::open(&dir.path().join("db")).unwrap());
        let before = storage.commits();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let storage = Arc::clone(&storage);
            tasks.spawn(async move {
                storage
                    .put(Entry {
                        key: format!("k/{i}"),
                        value: vec![1; 64],
                    })
                    .await
            });
        }
        while let Some(result) = tasks.join_next().await {
            result.unwrap().unwrap();
        }
        let used = storage.commits() - before;
        assert!(used < 200, "200 puts used {used} transactions");
        assert_eq!(storage.list("k/").await.unwrap().len(), 200);
    }

    #[tokio::test]
    async fn failing_request_in_group_does_not_poison_others() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(&dir.path().join("db")).unwrap();
        let conn = Connection::open(storage.path()).unwrap();
        // A trigger makes exactly one key fail inside SQLite, past the key
        // validation done before queueing.
        conn.execute_batch(
            "CREATE TRIGGER no_poison BEFORE INSERT ON kv WHEN NEW.key = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
        )
        .unwrap();
        drop(conn);

        let commits = AtomicU64::new(0);
        let (good_tx, good_rx) = oneshot::channel();
        let (bad_tx, bad_rx) = oneshot::channel();
        let (good2_tx, good2_rx) = oneshot::channel();
        let put = |k: &str| {
            Op::Put(Entry {
                key: k.into(),
                value: b"v".to_vec(),
            })
        };
        let group = vec![
            WriteRequest {
                ops: vec![put("a")],
                reply: good_tx,
            },
            WriteRequest {
                ops: vec![put("b"), put("poison")],
                reply: bad_tx,
            },
            WriteRequest {
                ops: vec![put("c")],
                reply: good2_tx,
            },
        ];
        let writer = Connection::open(storage.path()).unwrap();
        let results = apply_group(&writer, &group, &commits);
        assert!(results[0].is_ok());
        assert!(results[1].is_err());
        assert!(results[2].is_ok());
        assert_eq!(commits.load(Ordering::Relaxed), 1);
        drop((good_rx, bad_rx, good2_rx, writer));

        assert_eq!(storage.get("a").await.unwrap(), Some(b"v".to_vec()));
        assert_eq!(storage.get("b").await.unwrap(), None, "batch half-applied");
        assert_eq!(storage.get("c").await.unwrap(), Some(b"v".to_vec()));
    }

    #[tokio::test]
    async fn drop_drains_queued_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let storage = Arc::new(SqliteStorage::open(&path).unwrap());
        let mut tasks = Vec::new();
        for i in 0..50 {
            let storage = Arc::clone(&storage);
            tasks.push(tokio::spawn(async move {
                storage
                    .put(Entry {
                        key: format!("d/{i}"),
                        value: vec![],
                    })
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        drop(storage);
        let reopened = SqliteStorage::open(&path).unwrap();
        assert_eq!(reopened.list("d/").await.unwrap().len(), 50);
    }
}
