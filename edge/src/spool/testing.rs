//! The test disk: [`MemDisk`], in memory, losing unsynced writes on a crash. The real `Disk` of
//! the agent is `sluice_proto::os::FsDisk`.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sluice_proto::env::{Disk, DiskError, DiskFile};
use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

#[derive(Debug, Clone)]
enum Op {
    Write { pos: u64, data: Vec<u8> },
    SetLen(u64),
}

fn apply(content: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { pos, data } => {
            let start = *pos as usize;
            if content.len() < start + data.len() {
                content.resize(start + data.len(), 0);
            }
            content[start..start + data.len()].copy_from_slice(data);
        }
        Op::SetLen(len) => content.resize(*len as usize, 0),
    }
}

#[derive(Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    unsynced: Vec<Op>,
}

#[derive(Debug, Default)]
struct State {
    generation: u64,
    dirs: BTreeSet<PathBuf>,
    entries: BTreeMap<PathBuf, u64>,
    durable_entries: BTreeMap<PathBuf, u64>,
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    /// A crash fires inside the mutating operation that brings this to zero.
    armed: Option<(u32, ChaCha8Rng)>,
    n_crashes: u64,
    n_torn: u64,
}

/// A disk in memory. A crash reverts every file to its synced bytes, except that a seeded
/// prefix of each file's last unsynced write may survive (a torn write), and each unsynced
/// directory entry (a file created or removed) survives or not at random. Handles opened before
/// a crash fail from then on, like the file descriptors of a dead process.
#[derive(Debug, Clone, Default)]
pub(crate) struct MemDisk {
    state: Arc<Mutex<State>>,
    generation: u64,
}

fn error(op: &'static str, path: &Path, kind: ErrorKind, message: &str) -> DiskError {
    DiskError::io(op, path, std::io::Error::new(kind, message.to_string()))
}

impl MemDisk {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A handle for the next process.
    pub(crate) fn mount(&self) -> MemDisk {
        MemDisk {
            state: self.state.clone(),
            generation: self.lock().generation,
        }
    }

    /// Power loss now.
    pub(crate) fn crash(&self, rng: &mut ChaCha8Rng) {
        let mut state = self.lock();
        state.armed = None;
        crash_locked(&mut state, rng);
    }

    /// Arms a power loss inside the `n_ops`-th next mutating operation (which then fails).
    pub(crate) fn arm_crash(&self, n_ops: u32, rng: ChaCha8Rng) {
        self.lock().armed = Some((n_ops.max(1), rng));
    }

    /// True when an armed crash fired (or none was armed).
    pub(crate) fn disarm(&self) -> bool {
        self.lock().armed.take().is_none()
    }

    /// `(crashes, torn writes)` so far.
    pub(crate) fn counters(&self) -> (u64, u64) {
        let state = self.lock();
        (state.n_crashes, state.n_torn)
    }

    /// Files present now.
    pub(crate) fn n_files(&self) -> usize {
        self.lock().entries.len()
    }

    /// The current bytes of a file (test inspection).
    pub(crate) fn bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let inode = state.entries.get(path)?;
        state.inodes.get(inode).map(|i| i.current.clone())
    }

    /// Overwrites a file durably (test damage).
    pub(crate) fn set_bytes(&self, path: &Path, bytes: Vec<u8>) {
        let mut state = self.lock();
        if let Some(inode) = state.entries.get(path).copied() {
            if let Some(inode) = state.inodes.get_mut(&inode) {
                inode.durable = bytes.clone();
                inode.current = bytes;
                inode.unsynced.clear();
            }
        }
    }

    /// Every file name and its current bytes.
    pub(crate) fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let state = self.lock();
        state
            .entries
            .iter()
            .filter_map(|(p, i)| state.inodes.get(i).map(|n| (p.clone(), n.current.clone())))
            .collect()
    }

    fn alive(&self, state: &State, op: &'static str, path: &Path) -> Result<(), DiskError> {
        if state.generation == self.generation {
            Ok(())
        } else {
            Err(error(
                op,
                path,
                ErrorKind::Other,
                "EIO: handle of a crashed process",
            ))
        }
    }

    /// Counts a mutating operation against an armed crash; true when the crash fired.
    fn tick(state: &mut State) -> bool {
        let Some((left, _)) = state.armed.as_mut() else {
            return false;
        };
        *left -= 1;
        if *left > 0 {
            return false;
        }
        if let Some((_, mut rng)) = state.armed.take() {
            crash_locked(state, &mut rng);
        }
        true
    }

    fn mutate(
        &self,
        path: &Path,
        inode: u64,
        name: &'static str,
        op: Op,
        first: bool,
    ) -> Result<(), DiskError> {
        let mut state = self.lock();
        self.alive(&state, name, path)?;
        let push = |state: &mut State, op: Op| {
            if let Some(inode) = state.inodes.get_mut(&inode) {
                apply(&mut inode.current, &op);
                inode.unsynced.push(op);
            }
        };
        if first {
            push(&mut state, op);
            if Self::tick(&mut state) {
                return Err(error(name, path, ErrorKind::Other, "EIO: power lost"));
            }
        } else {
            if Self::tick(&mut state) {
                return Err(error(name, path, ErrorKind::Other, "EIO: power lost"));
            }
            push(&mut state, op);
        }
        Ok(())
    }
}

fn crash_locked(state: &mut State, rng: &mut ChaCha8Rng) {
    for inode in state.inodes.values_mut() {
        if let Some(Op::Write { pos, data }) = inode.unsynced.last() {
            let kept = match rng.random_range(0..3u8) {
                0 => 0,
                1 => data.len(),
                _ => rng.random_range(0..=data.len()),
            };
            if kept > 0 {
                apply(
                    &mut inode.durable,
                    &Op::Write {
                        pos: *pos,
                        data: data[..kept].to_vec(),
                    },
                );
                if kept < data.len() {
                    state.n_torn += 1;
                }
            }
        }
        inode.unsynced.clear();
        inode.current = inode.durable.clone();
    }
    let paths: BTreeSet<PathBuf> = state
        .entries
        .keys()
        .chain(state.durable_entries.keys())
        .cloned()
        .collect();
    for path in paths {
        let (current, durable) = (
            state.entries.get(&path).copied(),
            state.durable_entries.get(&path).copied(),
        );
        if current == durable {
            continue;
        }
        match if rng.random_bool(0.5) {
            current
        } else {
            durable
        } {
            Some(inode) => {
                state.entries.insert(path.clone(), inode);
                state.durable_entries.insert(path, inode);
            }
            None => {
                state.entries.remove(&path);
                state.durable_entries.remove(&path);
            }
        }
    }
    let live: BTreeSet<u64> = state.entries.values().copied().collect();
    state.inodes.retain(|id, _| live.contains(id));
    state.generation += 1;
    state.n_crashes += 1;
}

impl Disk for MemDisk {
    fn create_dir_all(&self, dir: &Path) -> Result<(), DiskError> {
        let mut state = self.lock();
        self.alive(&state, "mkdir", dir)?;
        for ancestor in dir.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError> {
        let state = self.lock();
        self.alive(&state, "readdir", dir)?;
        if !state.dirs.contains(dir) {
            return Err(error(
                "readdir",
                dir,
                ErrorKind::NotFound,
                "no such directory",
            ));
        }
        Ok(state
            .entries
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path, create: bool) -> Result<Arc<dyn DiskFile>, DiskError> {
        let mut state = self.lock();
        self.alive(&state, "open", path)?;
        let inode = match state.entries.get(path) {
            Some(inode) => *inode,
            None if create && path.parent().is_some_and(|p| state.dirs.contains(p)) => {
                let inode = state.next_inode;
                state.next_inode += 1;
                state.inodes.insert(inode, Inode::default());
                state.entries.insert(path.to_path_buf(), inode);
                inode
            }
            None => return Err(error("open", path, ErrorKind::NotFound, "no such file")),
        };
        Ok(Arc::new(MemFile {
            disk: self.clone(),
            inode,
            path: path.to_path_buf(),
        }))
    }

    fn remove(&self, path: &Path) -> Result<(), DiskError> {
        let mut state = self.lock();
        self.alive(&state, "remove", path)?;
        if Self::tick(&mut state) {
            return Err(error("remove", path, ErrorKind::Other, "EIO: power lost"));
        }
        match state.entries.remove(path) {
            Some(_) => Ok(()),
            None => Err(error("remove", path, ErrorKind::NotFound, "no such file")),
        }
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), DiskError> {
        let mut state = self.lock();
        self.alive(&state, "fsync dir", dir)?;
        if Self::tick(&mut state) {
            return Err(error("fsync dir", dir, ErrorKind::Other, "EIO: power lost"));
        }
        let current: Vec<(PathBuf, u64)> = state
            .entries
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        state.durable_entries.retain(|p, _| p.parent() != Some(dir));
        state.durable_entries.extend(current);
        Ok(())
    }
}

struct MemFile {
    disk: MemDisk,
    inode: u64,
    path: PathBuf,
}

impl MemFile {
    fn with<R>(&self, op: &'static str, f: impl FnOnce(&mut Inode) -> R) -> Result<R, DiskError> {
        let mut state = self.disk.lock();
        self.disk.alive(&state, op, &self.path)?;
        match state.inodes.get_mut(&self.inode) {
            Some(inode) => Ok(f(inode)),
            None => Err(error(op, &self.path, ErrorKind::NotFound, "file removed")),
        }
    }
}

impl DiskFile for MemFile {
    fn size(&self) -> Result<u64, DiskError> {
        self.with("stat", |i| i.current.len() as u64)
    }

    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<usize, DiskError> {
        self.with("read", |i| {
            let start = (pos as usize).min(i.current.len());
            let n = buf.len().min(i.current.len() - start);
            buf[..n].copy_from_slice(&i.current[start..start + n]);
            n
        })
    }

    fn write_at(&self, pos: u64, data: &[u8]) -> Result<(), DiskError> {
        let op = Op::Write {
            pos,
            data: data.to_vec(),
        };
        self.disk.mutate(&self.path, self.inode, "write", op, true)
    }

    fn allocate(&self, len: u64) -> Result<(), DiskError> {
        let size = self.size()?;
        self.disk.mutate(
            &self.path,
            self.inode,
            "fallocate",
            Op::SetLen(len.max(size)),
            false,
        )
    }

    fn truncate(&self, len: u64) -> Result<(), DiskError> {
        self.disk
            .mutate(&self.path, self.inode, "truncate", Op::SetLen(len), false)
    }

    fn sync_data(&self) -> Result<(), DiskError> {
        let mut state = self.disk.lock();
        self.disk.alive(&state, "fdatasync", &self.path)?;
        if MemDisk::tick(&mut state) {
            return Err(error(
                "fdatasync",
                &self.path,
                ErrorKind::Other,
                "EIO: power lost",
            ));
        }
        if let Some(inode) = state.inodes.get_mut(&self.inode) {
            for op in inode.unsynced.drain(..) {
                apply(&mut inode.durable, &op);
            }
        }
        Ok(())
    }
}
