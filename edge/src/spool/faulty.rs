//! A disk that fails on request, wrapped around any [`Disk`] (the tests wrap [`MemDisk`]):
//! writes and allocations fail with "no space left on device" while the disk is full, and
//! `fdatasync` fails with EIO (syncing nothing) while syncs are broken.
//!
//! [`MemDisk`]: super::testing::MemDisk

use sluice_proto::env::{Disk, DiskError, DiskFile};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
struct Faults {
    full: AtomicBool,
    syncs_broken: AtomicBool,
}

/// See the module documentation.
#[derive(Clone)]
pub(crate) struct FaultyDisk {
    inner: Arc<dyn Disk>,
    faults: Arc<Faults>,
}

fn fail(op: &'static str, path: &Path, kind: ErrorKind, message: &str) -> DiskError {
    DiskError::io(op, path, std::io::Error::new(kind, message.to_string()))
}

impl FaultyDisk {
    pub(crate) fn new(inner: Arc<dyn Disk>) -> FaultyDisk {
        FaultyDisk {
            inner,
            faults: Arc::default(),
        }
    }

    /// From now on writes and allocations fail (ENOSPC) until `false`.
    pub(crate) fn set_full(&self, full: bool) {
        self.faults.full.store(full, Ordering::SeqCst);
    }

    /// From now on `fdatasync` fails (EIO) until `false`.
    pub(crate) fn set_syncs_broken(&self, broken: bool) {
        self.faults.syncs_broken.store(broken, Ordering::SeqCst);
    }

    fn full(&self, op: &'static str, path: &Path) -> Result<(), DiskError> {
        if self.faults.full.load(Ordering::SeqCst) {
            Err(fail(
                op,
                path,
                ErrorKind::StorageFull,
                "No space left on device",
            ))
        } else {
            Ok(())
        }
    }
}

impl Disk for FaultyDisk {
    fn create_dir_all(&self, dir: &Path) -> Result<(), DiskError> {
        self.inner.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError> {
        self.inner.list(dir)
    }
    fn open(&self, path: &Path, create: bool) -> Result<Arc<dyn DiskFile>, DiskError> {
        let file = self.inner.open(path, create)?;
        Ok(Arc::new(FaultyFile {
            disk: self.clone(),
            inner: file,
            path: path.to_path_buf(),
        }))
    }
    fn remove(&self, path: &Path) -> Result<(), DiskError> {
        self.inner.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> Result<(), DiskError> {
        self.inner.sync_dir(dir)
    }
}

struct FaultyFile {
    disk: FaultyDisk,
    inner: Arc<dyn DiskFile>,
    path: PathBuf,
}

impl DiskFile for FaultyFile {
    fn size(&self) -> Result<u64, DiskError> {
        self.inner.size()
    }
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<usize, DiskError> {
        self.inner.read_at(pos, buf)
    }
    fn write_at(&self, pos: u64, data: &[u8]) -> Result<(), DiskError> {
        // Within the preallocated length a write needs no new blocks.
        if pos + data.len() as u64 > self.inner.size()? {
            self.disk.full("write", &self.path)?;
        }
        self.inner.write_at(pos, data)
    }
    fn allocate(&self, len: u64) -> Result<(), DiskError> {
        if len > self.inner.size()? {
            self.disk.full("fallocate", &self.path)?;
        }
        self.inner.allocate(len)
    }
    fn truncate(&self, len: u64) -> Result<(), DiskError> {
        self.inner.truncate(len)
    }
    fn sync_data(&self) -> Result<(), DiskError> {
        if self.disk.faults.syncs_broken.load(Ordering::SeqCst) {
            return Err(fail(
                "fdatasync",
                &self.path,
                ErrorKind::Other,
                "EIO: input/output error",
            ));
        }
        self.inner.sync_data()
    }
}
