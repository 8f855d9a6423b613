//! The real environment (feature `os`): the OS clock, files with `pwrite`/`fallocate`/
//! `fdatasync`, and tokio's blocking pool. Nodes and edge agents both run on it; the simulator
//! replaces every piece. This is the only module of the workspace's production code allowed to
//! read the OS clocks.

use crate::env::{BlockingMode, Clock, Disk, DiskError, DiskFile, Env};
use crate::ids::UnixMillis;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The OS clock.
#[derive(Debug, Default)]
pub struct RealClock;

impl Clock for RealClock {
    #[allow(clippy::disallowed_methods)] // the real environment is where the clock is read
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    #[allow(clippy::disallowed_methods)] // the real environment is where the clock is read
    fn wall(&self) -> UnixMillis {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        UnixMillis(i64::try_from(since).unwrap_or(i64::MAX))
    }
}

/// The local filesystem.
#[derive(Debug, Default)]
pub struct FsDisk;

struct FsFile {
    file: File,
    path: PathBuf,
}

impl DiskFile for FsFile {
    fn size(&self) -> Result<u64, DiskError> {
        Ok(self
            .file
            .metadata()
            .map_err(|e| DiskError::io("stat", &self.path, e))?
            .len())
    }

    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<usize, DiskError> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], pos + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DiskError::io("read", &self.path, e)),
            }
        }
        Ok(done)
    }

    fn write_at(&self, pos: u64, data: &[u8]) -> Result<(), DiskError> {
        self.file
            .write_all_at(data, pos)
            .map_err(|e| DiskError::io("write", &self.path, e))
    }

    fn allocate(&self, len: u64) -> Result<(), DiskError> {
        let current = self.size()?;
        if len <= current {
            return Ok(());
        }
        match rustix::fs::fallocate(
            &self.file,
            rustix::fs::FallocateFlags::empty(),
            current,
            len - current,
        ) {
            Ok(()) => Ok(()),
            // Filesystems without fallocate (tmpfs on old kernels, some overlays): fall back to a
            // sparse extension; writes then allocate blocks, which fdatasync still covers.
            Err(rustix::io::Errno::OPNOTSUPP) => self.truncate(len),
            Err(e) => Err(DiskError::io("fallocate", &self.path, e.into())),
        }
    }

    fn truncate(&self, len: u64) -> Result<(), DiskError> {
        self.file
            .set_len(len)
            .map_err(|e| DiskError::io("truncate", &self.path, e))
    }

    fn sync_data(&self) -> Result<(), DiskError> {
        self.file
            .sync_data()
            .map_err(|e| DiskError::io("fdatasync", &self.path, e))
    }
}

impl Disk for FsDisk {
    fn create_dir_all(&self, dir: &Path) -> Result<(), DiskError> {
        std::fs::create_dir_all(dir).map_err(|e| DiskError::io("mkdir", dir, e))
    }

    fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| DiskError::io("readdir", dir, e))? {
            let entry = entry.map_err(|e| DiskError::io("readdir", dir, e))?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn open(&self, path: &Path, create: bool) -> Result<Arc<dyn DiskFile>, DiskError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
            .map_err(|e| DiskError::io("open", path, e))?;
        Ok(Arc::new(FsFile {
            file,
            path: path.to_path_buf(),
        }))
    }

    fn remove(&self, path: &Path) -> Result<(), DiskError> {
        std::fs::remove_file(path).map_err(|e| DiskError::io("remove", path, e))
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), DiskError> {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| DiskError::io("fsync dir", dir, e))
    }

    fn available_bytes(&self, dir: &Path) -> Result<Option<u64>, DiskError> {
        let stat = rustix::fs::statvfs(dir).map_err(|e| DiskError::io("statvfs", dir, e.into()))?;
        Ok(Some(stat.f_bavail.saturating_mul(stat.f_frsize)))
    }
}

/// The production environment.
pub fn real_env(seed: u64) -> Env {
    Env {
        clock: Arc::new(RealClock),
        disk: Arc::new(FsDisk),
        blocking: BlockingMode::ThreadPool,
        seed,
    }
}

/// Runs blocking work the way the environment says: on tokio's blocking pool, or inline under
/// the simulator so its timing is part of the seeded schedule.
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

/// An advisory lock on a data directory (`flock` on `<dir>/lock`), held while the value lives,
/// so two processes never write the same logs or spools.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock: `exclusive` for the process that writes the directory, shared for a
    /// reader that must not run beside a writer. Fails at once, naming the directory, when a
    /// conflicting lock is held.
    pub fn acquire(dir: &Path, exclusive: bool) -> Result<DirLock, DiskError> {
        std::fs::create_dir_all(dir).map_err(|e| DiskError::io("mkdir", dir, e))?;
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| DiskError::io("open", &path, e))?;
        let operation = if exclusive {
            rustix::fs::FlockOperation::NonBlockingLockExclusive
        } else {
            rustix::fs::FlockOperation::NonBlockingLockShared
        };
        match rustix::fs::flock(&file, operation) {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(DiskError::Io {
                op: "lock",
                path: dir.display().to_string(),
                kind: std::io::ErrorKind::WouldBlock,
                message: "the directory is in use by another process".to_owned(),
            }),
            Err(e) => Err(DiskError::io("lock", &path, e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_has_one_writer_or_many_readers() {
        // Checks the lock's rules: a second exclusive or a shared lock beside an exclusive one is
        // refused with a message naming the directory; shared locks coexist; dropping releases.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let writer = DirLock::acquire(dir.path(), true).unwrap_or_else(|e| panic!("{e}"));
        let second = DirLock::acquire(dir.path(), true);
        assert!(
            matches!(&second, Err(e) if e.to_string().contains("in use")),
            "{second:?}"
        );
        assert!(DirLock::acquire(dir.path(), false).is_err());
        drop(writer);
        let a = DirLock::acquire(dir.path(), false).unwrap_or_else(|e| panic!("{e}"));
        let b = DirLock::acquire(dir.path(), false).unwrap_or_else(|e| panic!("{e}"));
        assert!(DirLock::acquire(dir.path(), true).is_err());
        drop((a, b));
        assert!(DirLock::acquire(dir.path(), true).is_ok());
    }
}
