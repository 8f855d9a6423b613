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

pub use crate::env::run_blocking;

/// Opens `path` for reading if it is a regular file, and never blocks doing so: opening a FIFO
/// for reading waits for a writer, possibly forever, so the open is non-blocking and the type
/// is checked on the opened file itself (no window for the path to change between a check and
/// the open). Anything else (a FIFO, socket, device or directory) is an `InvalidInput` error
/// saying what the path names. The returned file is blocking again.
pub fn open_regular_file(path: &Path) -> std::io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    use std::os::unix::fs::FileTypeExt;
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let file = File::from(fd);
    let file_type = file.metadata()?.file_type();
    let what = if file_type.is_file() {
        let flags = rustix::fs::fcntl_getfl(&file)?;
        rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK)?;
        return Ok(file);
    } else if file_type.is_fifo() {
        "a FIFO (named pipe)"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() || file_type.is_block_device() {
        "a device"
    } else {
        "not a file"
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("not a regular file: it is {what}"),
    ))
}

/// A lock on a data directory, held while the value lives, so two processes never write the
/// same logs or spools. It is a `flock` on the directory itself (opened `O_RDONLY|O_DIRECTORY`),
/// not on a file inside it: deleting or replacing any file under a running process does not let
/// a second one in, and the kernel drops the lock when the holder exits, even on `kill -9`.
#[derive(Debug)]
pub struct DirLock {
    _dir: rustix::fd::OwnedFd,
}

/// Why a data directory could not be locked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirLockError {
    /// A conflicting lock is held: another node or agent (or a checker beside a writer) runs on
    /// the directory.
    #[error("another process holds {}: stop it first, or give this one another data_dir", dir.display())]
    InUse {
        /// The data directory.
        dir: PathBuf,
    },
    /// The directory cannot be created or opened by this user.
    #[error("permission denied: cannot {op} {}: {message}", dir.display())]
    PermissionDenied {
        /// What was attempted (`create`, `open`, `lock`).
        op: &'static str,
        /// The data directory.
        dir: PathBuf,
        /// The OS message.
        message: String,
    },
    /// Any other failure (not a directory, a missing parent, a full disk, ...).
    #[error("cannot {op} {}: {message}", dir.display())]
    Io {
        /// What was attempted (`create`, `open`, `lock`).
        op: &'static str,
        /// The data directory.
        dir: PathBuf,
        /// The OS message.
        message: String,
    },
}

impl DirLockError {
    /// Classifies an OS error of `op` on `dir`: `EACCES`/`EPERM` are a permission problem,
    /// `EWOULDBLOCK` of the lock is another holder, anything else is itself.
    fn of(op: &'static str, dir: &Path, errno: rustix::io::Errno) -> Self {
        let dir = dir.to_path_buf();
        let message = std::io::Error::from(errno).to_string();
        match errno {
            rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => {
                DirLockError::PermissionDenied { op, dir, message }
            }
            rustix::io::Errno::WOULDBLOCK if op == "lock" => DirLockError::InUse { dir },
            _ => DirLockError::Io { op, dir, message },
        }
    }
}

impl DirLock {
    /// Takes the lock: `exclusive` for the process that writes the directory (creating it if
    /// needed), shared for a reader that must not run beside a writer. Fails at once, naming
    /// the directory, when a conflicting lock is held.
    pub fn acquire(dir: &Path, exclusive: bool) -> Result<DirLock, DirLockError> {
        if let Err(error) = std::fs::create_dir_all(dir) {
            let errno = error
                .raw_os_error()
                .map_or(rustix::io::Errno::IO, rustix::io::Errno::from_raw_os_error);
            return Err(DirLockError::of("create", dir, errno));
        }
        use rustix::fs::{FlockOperation, Mode, OFlags};
        let fd = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| DirLockError::of("open", dir, errno))?;
        let operation = if exclusive {
            FlockOperation::NonBlockingLockExclusive
        } else {
            FlockOperation::NonBlockingLockShared
        };
        rustix::fs::flock(&fd, operation).map_err(|errno| DirLockError::of("lock", dir, errno))?;
        Ok(DirLock { _dir: fd })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::Mode;

    #[test]
    fn only_regular_files_open_and_a_fifo_does_not_block() {
        // Checks open_regular_file: a regular file opens (and reads blocking as usual); a FIFO
        // nobody writes to is refused at once as a FIFO instead of blocking in open (the test
        // would hang otherwise), and a directory is refused as a directory.
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let regular = dir.path().join("events.jsonl");
        std::fs::write(&regular, b"{}\n").unwrap_or_else(|e| panic!("{e}"));
        let mut text = String::new();
        open_regular_file(&regular)
            .and_then(|mut f| f.read_to_string(&mut text))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text, "{}\n");
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for (path, what) in [
            (&fifo, "a FIFO"),
            (&dir.path().to_path_buf(), "a directory"),
        ] {
            match open_regular_file(path) {
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
                    assert!(e.to_string().contains(what), "{e}");
                }
                Ok(_) => panic!("{} opened", path.display()),
            }
        }
    }

    fn held(result: Result<DirLock, DirLockError>) -> DirLock {
        result.unwrap_or_else(|e| panic!("{e}"))
    }

    fn refused_in_use(result: Result<DirLock, DirLockError>, dir: &Path) {
        match result {
            Err(e @ DirLockError::InUse { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains(&format!("another process holds {}", dir.display())),
                    "{text}"
                );
            }
            other => panic!("expected InUse, got {other:?}"),
        }
    }

    #[test]
    fn a_directory_has_one_writer_or_many_readers() {
        // Checks the lock's rules: a second exclusive or a shared lock beside an exclusive one is
        // refused as "another process holds <dir>"; shared locks coexist; dropping releases.
        // Each acquire opens its own file description, so these conflict as two processes do.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let writer = held(DirLock::acquire(dir.path(), true));
        refused_in_use(DirLock::acquire(dir.path(), true), dir.path());
        refused_in_use(DirLock::acquire(dir.path(), false), dir.path());
        drop(writer);
        let a = held(DirLock::acquire(dir.path(), false));
        let b = held(DirLock::acquire(dir.path(), false));
        refused_in_use(DirLock::acquire(dir.path(), true), dir.path());
        drop((a, b));
        assert!(DirLock::acquire(dir.path(), true).is_ok());
    }

    #[test]
    fn emptying_the_directory_does_not_let_a_second_writer_in() {
        // Checks that the lock is on the directory itself: after every entry of the data
        // directory is removed (an old `lock` file, data, anything), a second writer is still
        // refused while the first holds it.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("lock"), b"").unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(dir.path().join("events")).unwrap_or_else(|e| panic!("{e}"));
        let _writer = held(DirLock::acquire(dir.path(), true));
        std::fs::remove_file(dir.path().join("lock")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::remove_dir(dir.path().join("events")).unwrap_or_else(|e| panic!("{e}"));
        let left = std::fs::read_dir(dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .count();
        assert_eq!(left, 0);
        refused_in_use(DirLock::acquire(dir.path(), true), dir.path());
    }

    #[test]
    fn errors_say_what_they_are() {
        // Checks the classification of OS errors: EACCES and EPERM are "permission denied" (not
        // "another process"), EWOULDBLOCK of the lock is another holder; and a real failure
        // (a data_dir under a regular file: ENOTDIR) is reported as itself, naming the path.
        // Permission errors are checked through the mapping: tests run as root, which bypasses
        // permission bits.
        let dir = Path::new("/srv/data");
        for errno in [rustix::io::Errno::ACCESS, rustix::io::Errno::PERM] {
            let error = DirLockError::of("open", dir, errno);
            assert!(
                matches!(error, DirLockError::PermissionDenied { op: "open", .. }),
                "{error:?}"
            );
            let text = error.to_string();
            assert!(
                text.starts_with("permission denied: cannot open /srv/data"),
                "{text}"
            );
            assert!(!text.contains("another process"), "{text}");
        }
        assert!(matches!(
            DirLockError::of("lock", dir, rustix::io::Errno::WOULDBLOCK),
            DirLockError::InUse { .. }
        ));
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = root.path().join("file");
        std::fs::write(&file, b"x").unwrap_or_else(|e| panic!("{e}"));
        let under = file.join("data");
        match DirLock::acquire(&under, true) {
            Err(e @ DirLockError::Io { .. }) => {
                let text = e.to_string();
                assert!(text.contains(&under.display().to_string()), "{text}");
                assert!(!text.contains("another process"), "{text}");
                assert!(!text.contains("permission denied"), "{text}");
            }
            other => panic!("expected Io, got {other:?}"),
        }
    }
}
