//! The environment: everything nondeterministic a node or edge touches — time, disk, randomness
//! and how blocking work runs — reached through one [`Env`]. `main` builds the real one (the OS
//! clock, files with `fdatasync`, a thread pool); the simulator builds one from a simulated clock,
//! a disk that loses unsynced writes, and a seed. Code written against `Env` runs in both.
//!
//! The peer-to-peer `Transport` trait joins this module with the cluster (node-to-node) work; a
//! single node has no peers to reach.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::ids::UnixMillis;

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
