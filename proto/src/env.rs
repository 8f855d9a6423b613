//! The environment: everything nondeterministic a node or edge touches — time, disk, randomness
//! and how blocking work runs — reached through one [`Env`]. `main` builds the real one (the OS
//! clock, files with `fdatasync`, a thread pool); the simulator builds one from a simulated clock,
//! a disk that loses unsynced writes, and a seed. Code written against `Env` runs in both.
//!
//! [`Transport`] is the message-level connection to the cluster: request in, response out, over
//! QUIC + mTLS in production (`net::QuicTransport`) and over a simulated link with loss, delay,
//! duplication and outages in the simulator. The edge uplink is written against it.
//!
//! [`PeerTransport`] and [`PeerHandler`] are the node-to-node transport (module [`peer`]): one
//! connection per node pair, requests addressed by a [`PeerEnvelope`], two lanes with bounded
//! queues.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::ids::UnixMillis;
use crate::msg::{ErrorCode, Message};
use std::future::Future;
use std::pin::Pin;

pub mod peer;
pub use peer::{
    check_envelope, PeerEnvelope, PeerError, PeerErrorKind, PeerGroup, PeerHandler, PeerLane,
    PeerRefusal, PeerRequest, PeerTransport,
};

/// Time. `now` is monotonic and is the simulator's paused clock under simulation; `wall` is only
/// for timestamps written into data, never for measuring intervals.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic now.
    fn now(&self) -> Instant;
    /// Wall-clock now, for stamping data.
    fn wall(&self) -> UnixMillis;
}

/// A failed disk operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskError {
    /// The operating system (or the simulated disk) refused an operation.
    #[error("{op} {path}: {message}")]
    Io {
        /// What was attempted (`open`, `write`, `fdatasync`, …).
        op: &'static str,
        /// The file or directory.
        path: String,
        /// The error kind.
        kind: std::io::ErrorKind,
        /// The OS message.
        message: String,
    },
}

impl DiskError {
    /// Wraps an IO error with the operation and path it concerns.
    pub fn io(op: &'static str, path: &Path, error: std::io::Error) -> Self {
        DiskError::Io {
            op,
            path: path.display().to_string(),
            kind: error.kind(),
            message: error.to_string(),
        }
    }

    /// True when the failure is a full disk.
    pub fn is_no_space(&self) -> bool {
        matches!(
            self,
            DiskError::Io {
                kind: std::io::ErrorKind::StorageFull,
                ..
            }
        )
    }
}

/// One open file. All methods take `&self` (positional reads and writes), so a writer and many
/// readers can share it. Writes are durable only after [`DiskFile::sync_data`] returns.
pub trait DiskFile: Send + Sync {
    /// Current size in bytes.
    fn size(&self) -> Result<u64, DiskError>;
    /// Reads up to `buf.len()` bytes at `pos`; returns how many were read (0 at the end).
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<usize, DiskError>;
    /// Writes all of `data` at `pos`.
    fn write_at(&self, pos: u64, data: &[u8]) -> Result<(), DiskError>;
    /// Reserves space so the file is at least `len` bytes (zeros), without changing existing
    /// content; `fallocate` on Linux, so later writes need no block allocation.
    fn allocate(&self, len: u64) -> Result<(), DiskError>;
    /// Cuts or extends the file to `len` bytes.
    fn truncate(&self, len: u64) -> Result<(), DiskError>;
    /// Makes every write so far durable (`fdatasync`).
    fn sync_data(&self) -> Result<(), DiskError>;
}

/// The filesystem, narrowed to what the logs need.
pub trait Disk: Send + Sync + 'static {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> Result<(), DiskError>;
    /// The names of the files in a directory, sorted.
    fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError>;
    /// Opens a file for reading and writing, creating it if `create` is set.
    fn open(&self, path: &Path, create: bool) -> Result<Arc<dyn DiskFile>, DiskError>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> Result<(), DiskError>;
    /// Makes the directory's entries (created or removed files) durable.
    fn sync_dir(&self, dir: &Path) -> Result<(), DiskError>;
    /// Bytes an unprivileged writer may still allocate on the filesystem holding `dir`, or
    /// `None` when the disk cannot tell (then only the allocation itself finds a full disk).
    fn available_bytes(&self, dir: &Path) -> Result<Option<u64>, DiskError> {
        let _ = dir;
        Ok(None)
    }
}

/// How blocking work (fsync, sensor reads) runs: on tokio's blocking pool in production, inline
/// under the simulator so that its order is part of the seeded schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockingMode {
    /// `tokio::task::spawn_blocking`.
    ThreadPool,
    /// Run on the calling task.
    Inline,
}

/// Runs blocking work the way the environment says: on tokio's blocking pool, or inline under
/// the simulator so its timing is part of the seeded schedule. (Feature `blocking`, which `os`
/// includes; `os::run_blocking` is the same function.)
#[cfg(feature = "blocking")]
pub async fn run_blocking<F, R>(mode: BlockingMode, work: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match mode {
        BlockingMode::Inline => work(),
        BlockingMode::ThreadPool => match tokio::task::spawn_blocking(work).await {
            Ok(r) => r,
            // The closure panicked: a programmer error. Carry the panic to this task.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        },
    }
}

/// The environment of one node or edge.
#[derive(Clone)]
pub struct Env {
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Storage.
    pub disk: Arc<dyn Disk>,
    /// How blocking calls run.
    pub blocking: BlockingMode,
    /// The seed every component RNG derives from.
    pub seed: u64,
}

impl Env {
    /// A seeded RNG for one component of one process; see [`rng_for`].
    pub fn rng(&self, owner: u64, component_salt: u64) -> ChaCha8Rng {
        rng_for(self.seed, owner, component_salt)
    }
}

/// A per-component RNG derived from `(seed, owner, component_salt)`: the same triple always gives
/// the same stream, and different components never share one.
pub fn rng_for(seed: u64, owner: u64, component_salt: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&owner.to_le_bytes());
    key[16..24].copy_from_slice(&component_salt.to_le_bytes());
    key[24..].copy_from_slice(b"sluice\0\0");
    ChaCha8Rng::from_seed(key)
}

/// A boxed future, so the transport traits stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What kind of transport failure happened; callers decide retries and log levels from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportErrorKind {
    /// No node could be reached (resolution, connect, handshake timeout).
    Unreachable,
    /// The handshake or the peer refused us: certificate from another CA, wrong role, wrong
    /// cluster, connection limit. Retrying will not help until someone fixes the setup.
    Refused,
    /// The connection ended (peer closed, reset, idle timeout) after it was established.
    Closed,
    /// A request got no response within its deadline; its outcome is unknown.
    Timeout,
    /// The peer answered with an error response.
    Remote(ErrorCode),
    /// The peer sent something the protocol does not allow, or a frame did not decode.
    Protocol,
    /// Local material (certificates, keys) or configuration could not be used.
    Local,
}

/// A transport failure, with a message naming what failed and the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    /// What kind of failure.
    pub kind: TransportErrorKind,
    /// A description a user can act on.
    pub message: String,
}

impl TransportError {
    /// An error of `kind` with `message`.
    pub fn new(kind: TransportErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// A way to reach the cluster. `connect` picks a node (the real one tries its addresses in
/// order, starting after the one that failed last) and returns a connection to it.
pub trait Transport: Send + Sync + 'static {
    /// Opens a connection to some node of the cluster.
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Connection>, TransportError>>;
}

/// One connection to one node, carrying pipelined requests. A failed connection stays failed:
/// every later call returns an error and the caller connects again.
pub trait Connection: Send + Sync + 'static {
    /// Sends one request and waits for its response (within the transport's request deadline).
    /// An error response from the node is `Err` with [`TransportErrorKind::Remote`].
    fn call(&self, request: Message) -> BoxFuture<'_, Result<Message, TransportError>>;
    /// Who is on the other end, for logs (the node's identity or address).
    fn peer(&self) -> String;
}
