//! Where audit lines go: files (and stdout/discard), TCP/UDP/unix sockets.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket, UnixStream};

/// Why a device could not take an entry. Messages carry the device's own
/// configuration (file path, address) and the OS error, never entry data.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AuditDeviceError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("write to {address} timed out after {timeout:?}")]
    Timeout { address: String, timeout: Duration },
}

/// A sink for finished audit lines. The broker hands each device the whole
/// line (prefix, JSON, newline) in one buffer.
#[async_trait]
pub trait AuditDevice: Send + Sync {
    /// Make sure the device can take writes now (create the file, connect).
    /// Called when the device is enabled and again at unseal.
    async fn open(&self) -> Result<(), AuditDeviceError>;

    /// Write one complete line.
    async fn write(&self, line: &[u8]) -> Result<(), AuditDeviceError>;

    /// SIGHUP: let go of the current file or connection; the next write uses
    /// a fresh one (log rotation).
    fn reopen(&self);
}

/// Append-only file device.
pub(crate) struct FileDevice {
    path: PathBuf,
    /// 0 means "leave the mode of an existing file alone" (Vault's `0000`).
    mode: u32,
    // A plain mutex: it is never held across an await, and the write under it
    // is a single append to the page cache (no fsync), far cheaper than a hop
    // to the blocking pool.
    file: parking_lot::Mutex<Option<File>>,
}

impl FileDevice {
    pub(crate) fn new(path: PathBuf, mode: u32) -> Self {
        FileDevice {
            path,
            mode,
            file: parking_lot::Mutex::new(None),
        }
    }

    fn open_file(&self) -> Result<File, AuditDeviceError> {
        let err = |source| AuditDeviceError::Io {
            what: format!("open {}", self.path.display()),
            source,
        };
        let create_mode = if self.mode == 0 { 0o600 } else { self.mode };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(create_mode)
            .open(&self.path)
            .map_err(err)?;
        if self.mode != 0 {
            // The umask may have narrowed the creation mode, and an existing
            // file keeps whatever mode it had: enforce the configured one.
            let current = file.metadata().map_err(err)?.permissions().mode() & 0o7777;
            if current != self.mode {
                file.set_permissions(Permissions::from_mode(self.mode))
                    .map_err(err)?;
            }
        }
        Ok(file)
    }
}

#[async_trait]
impl AuditDevice for FileDevice {
    async fn open(&self) -> Result<(), AuditDeviceError> {
        let mut guard = self.file.lock();
        if guard.is_none() {
            *guard = Some(self.open_file()?);
        }
        Ok(())
    }

    async fn write(&self, line: &[u8]) -> Result<(), AuditDeviceError> {
        let mut guard = self.file.lock();
        let file = match &mut *guard {
            Some(f) => f,
            // A failed reopen left no file: try again, so the device recovers
            // once the operator fixes the directory.
            None => guard.insert(self.open_file()?),
        };
        file.write_all(line).map_err(|source| AuditDeviceError::Io {
            what: format!("write {}", self.path.display()),
            source,
        })
    }

    fn reopen(&self) {
        let mut guard = self.file.lock();
        // Close first: if the new open fails, writes must fail too rather
        // than go on into a rotated-away file nobody reads.
        *guard = None;
        match self.open_file() {
            Ok(f) => *guard = Some(f),
            Err(e) => tracing::error!(error = %e, "audit file device could not reopen its file"),
        }
    }
}

/// `file_path=stdout`.
pub(crate) struct StdoutDevice;

#[async_trait]
impl AuditDevice for StdoutDevice {
    async fn open(&self) -> Result<(), AuditDeviceError> {
        Ok(())
    }

    async fn write(&self, line: &[u8]) -> Result<(), AuditDeviceError> {
        let mut out = io::stdout().lock();
        out.write_all(line)
            .and_then(|()| out.flush())
            .map_err(|source| AuditDeviceError::Io {
                what: "write stdout".into(),
                source,
            })
    }

    fn reopen(&self) {}
}

/// `file_path=discard`: formats and hashes like any device, keeps nothing.
pub(crate) struct DiscardDevice;

#[async_trait]
impl AuditDevice for DiscardDevice {
    async fn open(&self) -> Result<(), AuditDeviceError> {
        Ok(())
    }

    async fn write(&self, _line: &[u8]) -> Result<(), AuditDeviceError> {
        Ok(())
    }

    fn reopen(&self) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketKind {
    Tcp,
    Udp,
    Unix,
}

enum Conn {
    Tcp(TcpStream),
    Udp(UdpSocket),
    Unix(UnixStream),
}

impl Conn {
    async fn send(&mut self, line: &[u8]) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.write_all(line).await,
            Conn::Unix(s) => s.write_all(line).await,
            Conn::Udp(s) => {
                let n = s.send(line).await?;
                if n == line.len() {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "datagram truncated",
                    ))
                }
            }
        }
    }
}

/// Socket device: connects on first use, reconnects after any error.
pub(crate) struct SocketDevice {
    address: String,
    kind: SocketKind,
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<Conn>>,
    /// Set by `reopen` (which cannot await the connection lock): the next
    /// write drops the current connection first.
    reset: AtomicBool,
}

impl SocketDevice {
    pub(crate) fn new(address: String, kind: SocketKind, timeout: Duration) -> Self {
        SocketDevice {
            address,
            kind,
            timeout,
            conn: tokio::sync::Mutex::new(None),
            reset: AtomicBool::new(false),
        }
    }

    fn io_err(&self, what: &str, source: io::Error) -> AuditDeviceError {
        AuditDeviceError::Io {
            what: format!("{what} {}", self.address),
            source,
        }
    }

    async fn connect(&self) -> Result<Conn, AuditDeviceError> {
        let conn = match self.kind {
            SocketKind::Tcp => {
                let s = TcpStream::connect(&self.address)
                    .await
                    .map_err(|e| self.io_err("connect", e))?;
                // Each entry is one write; don't let Nagle hold it back.
                s.set_nodelay(true).map_err(|e| self.io_err("connect", e))?;
                Conn::Tcp(s)
            }
            SocketKind::Udp => {
                let peer = tokio::net::lookup_host(&self.address)
                    .await
                    .map_err(|e| self.io_err("resolve", e))?
                    .next()
                    .ok_or_else(|| {
                        self.io_err("resolve", io::Error::from(io::ErrorKind::NotFound))
                    })?;
                let local = if peer.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let s = UdpSocket::bind(local)
                    .await
                    .map_err(|e| self.io_err("bind for", e))?;
                s.connect(peer)
                    .await
                    .map_err(|e| self.io_err("connect", e))?;
                Conn::Udp(s)
            }
            SocketKind::Unix => Conn::Unix(
                UnixStream::connect(&self.address)
                    .await
                    .map_err(|e| self.io_err("connect", e))?,
            ),
        };
        Ok(conn)
    }

    async fn try_write(
        &self,
        slot: &mut Option<Conn>,
        line: &[u8],
    ) -> Result<(), AuditDeviceError> {
        let attempt = async {
            let conn = match slot {
                Some(c) => c,
                None => slot.insert(self.connect().await?),
            };
            conn.send(line)
                .await
                .map_err(|e| self.io_err("write to", e))
        };
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(AuditDeviceError::Timeout {
                address: self.address.clone(),
                timeout: self.timeout,
            }),
        };
        if result.is_err() {
            // A half-written line leaves the stream unusable.
            *slot = None;
        }
        result
    }
}

#[async_trait]
impl AuditDevice for SocketDevice {
    async fn open(&self) -> Result<(), AuditDeviceError> {
        let mut slot = self.conn.lock().await;
        if self.reset.swap(false, Ordering::AcqRel) {
            *slot = None;
        }
        if slot.is_none() {
            let attempt = self.connect();
            let conn = tokio::time::timeout(self.timeout, attempt)
                .await
                .map_err(|_| AuditDeviceError::Timeout {
                    address: self.address.clone(),
                    timeout: self.timeout,
                })??;
            *slot = Some(conn);
        }
        Ok(())
    }

    async fn write(&self, line: &[u8]) -> Result<(), AuditDeviceError> {
        let mut slot = self.conn.lock().await;
        if self.reset.swap(false, Ordering::AcqRel) {
            *slot = None;
        }
        let had_conn = slot.is_some();
        match self.try_write(&mut slot, line).await {
            Ok(()) => Ok(()),
            // An idle connection the peer closed is the usual failure: one
            // retry on a fresh connection, as Vault does.
            Err(_) if had_conn => self.try_write(&mut slot, line).await,
            Err(e) => Err(e),
        }
    }

    fn reopen(&self) {
        self.reset.store(true, Ordering::Release);
    }
}
