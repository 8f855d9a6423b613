//! The simulated disk: files in memory that lose what was not synced when the power goes.
//!
//! Each file (an inode) has its `durable` bytes and the unsynced operations (writes, size
//! changes) applied on top of them, which give the `current` view every read sees.
//! `sync_data` makes a file's current view durable. Directory entries (a file created or
//! removed) become durable on `sync_dir` of their directory; until then a crash may keep or
//! revert each of them. Directories themselves are durable at once (a simplification: the node
//! creates its directories once, at start).
//!
//! [`SimDisk::crash`] is a power loss: every file reverts to its durable bytes, except that the
//! last unsynced write of a file may be torn — a seeded prefix of it (none, all, whole 512-byte
//! sectors or any byte count) survives. A crash can also be armed to fire *inside* a disk
//! operation ([`SimDisk::arm_crash`]), so it can fall between a write and its `fdatasync`.
//! [`SimDisk::arm_sync_failure`] fails one `fdatasync` the way Linux does: the unsynced pages
//! are dropped from the write-back queue while reads keep returning them until the next crash.
//! [`SimDisk::set_full`] fills the disk: from then on, until it is cleared, every write or
//! allocation that would grow a file fails with ENOSPC (`ErrorKind::StorageFull`) and changes
//! nothing; writes inside a file's current size (preallocated space) still succeed.
//!
//! The disk outlives the processes that use it. Each process mounts it ([`SimDisk::mount`]);
//! a crash or a process exit ([`SimDisk::close_all`]) bumps the disk's generation, and every
//! handle of an older generation — the dead process's file descriptors — fails with `EIO` from
//! then on, so a flush task of a crashed node can never write into the next incarnation.
//!
//! Deterministic: `BTreeMap`s only, and every random choice comes from the caller's RNG.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sluice_proto::env::{Disk, DiskError, DiskFile};
use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The unit a torn write may be cut at (besides any byte).
pub const SECTOR_BYTES: u64 = 512;

/// An operation not yet synced.
#[derive(Debug, Clone)]
enum Op {
    Write { pos: u64, data: Vec<u8> },
    SetLen(u64),
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn apply(content: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { pos, data } => {
            let start = to_usize(*pos);
            let end = start + data.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[start..end].copy_from_slice(data);
        }
        Op::SetLen(len) => content.resize(to_usize(*len), 0),
    }
}

#[derive(Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    unsynced: Vec<Op>,
    n_syncs: u64,
}

/// A crash armed to fire inside a later disk operation.
#[derive(Debug)]
struct Armed {
    ops_left: u32,
    rng: ChaCha8Rng,
}

/// Counters of one disk, for the run summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// `write_at` calls.
    pub n_writes: u64,
    /// `sync_data` calls.
    pub n_syncs: u64,
    /// Power losses.
    pub n_crashes: u64,
    /// Crashes that fired inside a disk operation.
    pub n_crashes_mid_io: u64,
    /// Last unsynced writes of which a strict, non-empty prefix survived a crash.
    pub n_torn_writes: u64,
    /// Unsynced directory entries a crash reverted.
    pub n_entries_reverted: u64,
    /// `fdatasync` calls that failed with a simulated media error.
    pub n_sync_failures: u64,
    /// Writes and allocations refused with ENOSPC while the disk was full.
    pub n_no_space: u64,
    /// Operations attempted through a handle of a process that had exited cleanly
    /// ([`SimDisk::close_all`]): work still in flight when the process was declared stopped.
    pub n_ops_after_exit: u64,
}

/// What one crash did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Files that had unsynced operations.
    pub n_files_reverted: u32,
    /// Bytes of last writes that survived.
    pub torn_bytes_kept: u64,
    /// Unsynced directory entries reverted.
    pub n_entries_reverted: u32,
}

#[derive(Debug, Default)]
struct State {
    generation: u64,
    dirs: BTreeSet<PathBuf>,
    entries: BTreeMap<PathBuf, u64>,
    durable_entries: BTreeMap<PathBuf, u64>,
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    armed: Option<Armed>,
    last_crash: Option<CrashReport>,
    /// Planted bug: `sync_data` of `.log` files under this directory is a no-op after a file's
    /// first sync.
    noop_sync_under: Option<PathBuf>,
    /// Generations that ended with a clean process exit rather than a crash.
    exited: BTreeSet<u64>,
    /// Planned `fdatasync` failure: this many more syncs succeed, then one fails.
    sync_failure_in: Option<u32>,
    /// Directories whose most files at once are tracked, with that count.
    files_max: BTreeMap<PathBuf, usize>,
    /// The disk is full: writes and allocations that would grow a file fail with ENOSPC.
    full: bool,
    stats: DiskStats,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    crashed: tokio::sync::Notify,
}

/// A handle on the simulated disk, bound to the generation it was mounted at.
#[derive(Debug, Clone)]
pub struct SimDisk {
    shared: Arc<Shared>,
    generation: u64,
}

fn dead(op: &'static str, path: &Path) -> DiskError {
    DiskError::io(
        op,
        path,
        std::io::Error::other("EIO: the process owning this handle died in a simulated crash"),
    )
}

fn not_found(op: &'static str, path: &Path) -> DiskError {
    DiskError::io(
        op,
        path,
        std::io::Error::new(ErrorKind::NotFound, "no such file or directory"),
    )
}

fn no_space(op: &'static str, path: &Path) -> DiskError {
    DiskError::io(
        op,
        path,
        std::io::Error::new(
            ErrorKind::StorageFull,
            "ENOSPC: no space left on device (simulated full disk)",
        ),
    )
}

fn crashed_now(op: &'static str, path: &Path) -> DiskError {
    DiskError::io(
        op,
        path,
        std::io::Error::other("EIO: power lost during this operation (simulated crash)"),
    )
}

impl Default for SimDisk {
    fn default() -> Self {
        Self::new()
    }
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared::default()),
            generation: 0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A handle for a new process: valid until the next crash or [`SimDisk::close_all`].
    pub fn mount(&self) -> SimDisk {
        let generation = self.lock().generation;
        SimDisk {
            shared: self.shared.clone(),
            generation,
        }
    }

    /// True while this handle's process has not crashed or exited.
    pub fn is_alive(&self) -> bool {
        self.lock().generation == self.generation
    }

    /// The disk's generation (bumped by every crash and process exit).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// The handle's generation.
    pub fn mount_generation(&self) -> u64 {
        self.generation
    }

    /// Counters so far.
    pub fn stats(&self) -> DiskStats {
        self.lock().stats
    }

    /// Power loss now: see the module docs. Every handle mounted before fails from now on.
    pub fn crash(&self, rng: &mut ChaCha8Rng) -> CrashReport {
        let mut state = self.lock();
        state.armed = None;
        crash_locked(&mut state, rng)
    }

    /// The process using the disk exited cleanly: its handles die, its data stays (the page
    /// cache survives a process exit).
    pub fn close_all(&self) {
        let mut state = self.lock();
        state.armed = None;
        let generation = state.generation;
        state.exited.insert(generation);
        state.generation += 1;
    }

    /// Arms a power loss inside the `n_ops`-th next mutating disk operation (write, allocate,
    /// truncate, sync). The operation fails with `EIO`; a write is applied first, so it is the
    /// last unsynced write and may be torn. [`SimDisk::wait_crash`] returns once it fired.
    pub fn arm_crash(&self, n_ops: u32, rng: ChaCha8Rng) {
        self.lock().armed = Some(Armed {
            ops_left: n_ops.max(1),
            rng,
        });
    }

    /// Disarms a pending crash; true when one was armed (it never fired).
    pub fn disarm(&self) -> bool {
        self.lock().armed.take().is_some()
    }

    /// Waits until an armed crash fires; returns what it did.
    pub async fn wait_crash(&self) -> CrashReport {
        self.shared.crashed.notified().await;
        self.lock().last_crash.unwrap_or_default()
    }

    /// Makes a later `fdatasync` fail with `EIO` the way Linux fails it: after `n_ok` more
    /// successful syncs, one sync reports the error and its unsynced writes are dropped from the
    /// disk's queue (the kernel marks the pages clean) while reads keep returning them from the
    /// page cache. They are lost for good at the next crash, whatever is synced later.
    pub fn arm_sync_failure(&self, n_ok: u32) {
        self.lock().sync_failure_in = Some(n_ok);
    }

    /// Cancels a planned sync failure; true when one was pending.
    pub fn disarm_sync_failure(&self) -> bool {
        self.lock().sync_failure_in.take().is_some()
    }

    /// Fills the disk (`true`) or frees space again (`false`); see the module docs.
    pub fn set_full(&self, full: bool) {
        self.lock().full = full;
    }

    /// Starts tracking the most files `dir` ever holds at once (see [`SimDisk::files_max`]).
    pub fn track_dir(&self, dir: &Path) {
        self.lock().files_max.entry(dir.to_path_buf()).or_insert(0);
    }

    /// The most files a tracked directory held at once so far (0 if it is not tracked).
    pub fn files_max(&self, dir: &Path) -> usize {
        self.lock().files_max.get(dir).copied().unwrap_or(0)
    }

    /// Planted bug: from now on `sync_data` of `.log` files under `dir` does nothing after a
    /// file's first sync, so acknowledged writes there are lost by the next crash.
    pub fn plant_noop_sync(&self, dir: &Path) {
        self.lock().noop_sync_under = Some(dir.to_path_buf());
    }

    /// Counts one mutating operation against an armed crash; fires it when due.
    fn tick(&self, state: &mut State) -> bool {
        let Some(armed) = state.armed.as_mut() else {
            return false;
        };
        armed.ops_left = armed.ops_left.saturating_sub(1);
        if armed.ops_left > 0 {
            return false;
        }
        let Some(mut armed) = state.armed.take() else {
            return false;
        };
        let report = crash_locked(state, &mut armed.rng);
        state.stats.n_crashes_mid_io += 1;
        state.last_crash = Some(report);
        self.shared.crashed.notify_one();
        true
    }

    fn check_alive(
        &self,
        state: &mut State,
        op: &'static str,
        path: &Path,
    ) -> Result<(), DiskError> {
        if state.generation == self.generation {
            return Ok(());
        }
        if state.exited.contains(&self.generation) {
            state.stats.n_ops_after_exit += 1;
            tracing::warn!(op, path = %path.display(), generation = self.generation, "disk operation by a process that has already stopped");
        }
        Err(dead(op, path))
    }
}

/// Updates the high-water mark of a tracked directory after a file was created in it.
fn note_files(state: &mut State, path: &Path) {
    let Some(dir) = path.parent() else { return };
    if !state.files_max.contains_key(dir) {
        return;
    }
    let n = state
        .entries
        .keys()
        .filter(|p| p.parent() == Some(dir))
        .count();
    if let Some(max) = state.files_max.get_mut(dir) {
        *max = (*max).max(n);
    }
}

/// How much of a last unsynced write of `len` bytes at `pos` survives a crash.
fn torn_len(rng: &mut ChaCha8Rng, pos: u64, len: u64) -> u64 {
    match rng.random_range(0..4u8) {
        0 => 0,
        1 => len,
        2 => {
            // Cut at a sector boundary of the file inside the write (or keep nothing).
            let first = (pos / SECTOR_BYTES + 1) * SECTOR_BYTES;
            let end = pos + len;
            if first >= end {
                return 0;
            }
            let n_boundaries = (end - 1 - first) / SECTOR_BYTES + 1;
            let pick = rng.random_range(0..=n_boundaries);
            if pick == 0 {
                0
            } else {
                first + (pick - 1) * SECTOR_BYTES - pos
            }
        }
        _ => rng.random_range(0..=len),
    }
}

fn crash_locked(state: &mut State, rng: &mut ChaCha8Rng) -> CrashReport {
    let mut report = CrashReport::default();
    for inode in state.inodes.values_mut() {
        if inode.unsynced.is_empty() {
            // Nothing queued, but the page cache may still hold pages a failed sync dropped.
            if inode.current != inode.durable {
                inode.current = inode.durable.clone();
                report.n_files_reverted += 1;
            }
            continue;
        }
        report.n_files_reverted += 1;
        if let Some(Op::Write { pos, data }) = inode.unsynced.last() {
            let len = data.len() as u64;
            let kept = torn_len(rng, *pos, len);
            if kept > 0 {
                let op = Op::Write {
                    pos: *pos,
                    data: data[..to_usize(kept)].to_vec(),
                };
                apply(&mut inode.durable, &op);
                report.torn_bytes_kept += kept;
                if kept < len {
                    state.stats.n_torn_writes += 1;
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
        let current = state.entries.get(&path).copied();
        let durable = state.durable_entries.get(&path).copied();
        if current == durable {
            continue;
        }
        // An unsynced entry may or may not have reached the disk.
        let survivor = if rng.random_bool(0.5) {
            current
        } else {
            durable
        };
        if survivor != current {
            report.n_entries_reverted += 1;
        }
        match survivor {
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
    state.stats.n_crashes += 1;
    state.stats.n_entries_reverted += u64::from(report.n_entries_reverted);
    report
}

impl Disk for SimDisk {
    fn create_dir_all(&self, dir: &Path) -> Result<(), DiskError> {
        let mut state = self.lock();
        self.check_alive(&mut state, "mkdir", dir)?;
        for ancestor in dir.ancestors() {
            if !ancestor.as_os_str().is_empty() {
                state.dirs.insert(ancestor.to_path_buf());
            }
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError> {
        let mut state = self.lock();
        self.check_alive(&mut state, "readdir", dir)?;
        if !state.dirs.contains(dir) {
            return Err(not_found("readdir", dir));
        }
        let mut names: Vec<String> = state
            .entries
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    fn open(&self, path: &Path, create: bool) -> Result<Arc<dyn DiskFile>, DiskError> {
        let mut state = self.lock();
        self.check_alive(&mut state, "open", path)?;
        let inode = match state.entries.get(path) {
            Some(inode) => *inode,
            None if create => {
                let parent_exists = path.parent().is_some_and(|p| state.dirs.contains(p));
                if !parent_exists {
                    return Err(not_found("open", path));
                }
                let inode = state.next_inode;
                state.next_inode += 1;
                state.inodes.insert(inode, Inode::default());
                state.entries.insert(path.to_path_buf(), inode);
                note_files(&mut state, path);
                inode
            }
            None => return Err(not_found("open", path)),
        };
        Ok(Arc::new(SimFile {
            disk: self.clone(),
            inode,
            path: path.to_path_buf(),
        }))
    }

    fn remove(&self, path: &Path) -> Result<(), DiskError> {
        let mut state = self.lock();
        self.check_alive(&mut state, "remove", path)?;
        match state.entries.remove(path) {
            Some(_) => Ok(()),
            None => Err(not_found("remove", path)),
        }
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), DiskError> {
        let mut state = self.lock();
        self.check_alive(&mut state, "fsync dir", dir)?;
        if self.tick(&mut state) {
            return Err(crashed_now("fsync dir", dir));
        }
        if !state.dirs.contains(dir) {
            return Err(not_found("fsync dir", dir));
        }
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        let current: Vec<(PathBuf, u64)> = state
            .entries
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        state.durable_entries.retain(|p, _| !in_dir(p));
        state.durable_entries.extend(current);
        Ok(())
    }
}

/// An open file of a [`SimDisk`].
struct SimFile {
    disk: SimDisk,
    inode: u64,
    path: PathBuf,
}

impl SimFile {
    /// Runs `f` on this file's inode after checking that the owning process is alive.
    fn with<R>(&self, op: &'static str, f: impl FnOnce(&mut Inode) -> R) -> Result<R, DiskError> {
        let mut state = self.disk.lock();
        self.disk.check_alive(&mut state, op, &self.path)?;
        match state.inodes.get_mut(&self.inode) {
            Some(inode) => Ok(f(inode)),
            None => Err(not_found(op, &self.path)),
        }
    }

    /// Fails with ENOSPC when the disk is full and the file would grow past `end`.
    fn check_space(&self, name: &'static str, end: u64) -> Result<(), DiskError> {
        let mut state = self.disk.lock();
        self.disk.check_alive(&mut state, name, &self.path)?;
        let size = state
            .inodes
            .get(&self.inode)
            .map_or(0, |inode| inode.current.len() as u64);
        if state.full && end > size {
            state.stats.n_no_space += 1;
            return Err(no_space(name, &self.path));
        }
        Ok(())
    }

    /// Records a mutating operation; fails with `EIO` when an armed crash fires on it.
    /// `apply_first` says whether the operation happens before the crash (a write) or not.
    fn mutate(&self, name: &'static str, op: Op, apply_first: bool) -> Result<(), DiskError> {
        let mut state = self.disk.lock();
        self.disk.check_alive(&mut state, name, &self.path)?;
        if !state.inodes.contains_key(&self.inode) {
            return Err(not_found(name, &self.path));
        }
        if apply_first {
            push_op(&mut state, self.inode, op);
            if self.disk.tick(&mut state) {
                return Err(crashed_now(name, &self.path));
            }
        } else {
            if self.disk.tick(&mut state) {
                return Err(crashed_now(name, &self.path));
            }
            push_op(&mut state, self.inode, op);
        }
        Ok(())
    }
}

fn push_op(state: &mut State, inode: u64, op: Op) {
    if let Some(inode) = state.inodes.get_mut(&inode) {
        apply(&mut inode.current, &op);
        inode.unsynced.push(op);
    }
}

impl DiskFile for SimFile {
    fn size(&self) -> Result<u64, DiskError> {
        self.with("stat", |inode| inode.current.len() as u64)
    }

    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<usize, DiskError> {
        self.with("read", |inode| {
            let start = to_usize(pos).min(inode.current.len());
            let n = buf.len().min(inode.current.len() - start);
            buf[..n].copy_from_slice(&inode.current[start..start + n]);
            n
        })
    }

    fn write_at(&self, pos: u64, data: &[u8]) -> Result<(), DiskError> {
        self.disk.lock().stats.n_writes += 1;
        self.check_space("write", pos.saturating_add(data.len() as u64))?;
        self.mutate(
            "write",
            Op::Write {
                pos,
                data: data.to_vec(),
            },
            true,
        )
    }

    fn allocate(&self, len: u64) -> Result<(), DiskError> {
        let size = self.size()?;
        self.check_space("fallocate", len)?;
        let op = Op::SetLen(len.max(size));
        self.mutate("fallocate", op, false)
    }

    fn truncate(&self, len: u64) -> Result<(), DiskError> {
        self.mutate("truncate", Op::SetLen(len), false)
    }

    fn sync_data(&self) -> Result<(), DiskError> {
        let mut state = self.disk.lock();
        self.disk.check_alive(&mut state, "fdatasync", &self.path)?;
        state.stats.n_syncs += 1;
        if self.disk.tick(&mut state) {
            return Err(crashed_now("fdatasync", &self.path));
        }
        let planted = state.noop_sync_under.as_ref().is_some_and(|dir| {
            self.path.starts_with(dir) && self.path.extension().is_some_and(|e| e == "log")
        });
        let Some(inode) = state.inodes.get_mut(&self.inode) else {
            return Err(not_found("fdatasync", &self.path));
        };
        if planted && inode.n_syncs > 0 {
            return Ok(());
        }
        match state.sync_failure_in {
            Some(0) => {
                state.sync_failure_in = None;
                state.stats.n_sync_failures += 1;
                if let Some(inode) = state.inodes.get_mut(&self.inode) {
                    inode.unsynced.clear();
                }
                return Err(DiskError::io(
                    "fdatasync",
                    &self.path,
                    std::io::Error::other("EIO: simulated media error; unsynced pages dropped"),
                ));
            }
            Some(n) => state.sync_failure_in = Some(n - 1),
            None => {}
        }
        let Some(inode) = state.inodes.get_mut(&self.inode) else {
            return Err(not_found("fdatasync", &self.path));
        };
        for op in inode.unsynced.drain(..) {
            apply(&mut inode.durable, &op);
        }
        inode.n_syncs += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    fn read_all(file: &dyn DiskFile) -> Vec<u8> {
        let mut buf = vec![0u8; file.size().unwrap() as usize];
        file.read_at(0, &mut buf).unwrap();
        buf
    }

    fn setup() -> (SimDisk, Arc<dyn DiskFile>) {
        let disk = SimDisk::new();
        let process = disk.mount();
        process.create_dir_all(Path::new("/d")).unwrap();
        let file = process.open(Path::new("/d/f"), true).unwrap();
        process.sync_dir(Path::new("/d")).unwrap();
        (disk, file)
    }

    #[test]
    fn synced_data_survives_and_unsynced_data_does_not() {
        // Checks the basic crash model: synced bytes survive, a write after the last sync
        // survives only as a (possibly empty or full) prefix, and old handles die.
        for seed in 0..64 {
            let (disk, file) = setup();
            file.write_at(0, b"durable!").unwrap();
            file.sync_data().unwrap();
            file.write_at(8, &[7u8; 2000]).unwrap();
            disk.crash(&mut rng(seed));
            let process = disk.mount();
            let reopened = process.open(Path::new("/d/f"), false).unwrap();
            let content = read_all(&*reopened);
            assert_eq!(&content[..8], b"durable!");
            assert!(
                content[8..].iter().all(|b| *b == 7),
                "seed {seed}: only a prefix of the last write"
            );
            assert!(
                file.write_at(0, b"zombie").is_err(),
                "a dead handle must not write"
            );
            assert!(file.size().is_err());
        }
    }

    #[test]
    fn torn_writes_cover_none_all_and_partial() {
        // Checks that across seeds a last unsynced write survives not at all, fully, and
        // partially (so the log's torn-tail recovery is exercised).
        let mut seen = BTreeSet::new();
        for seed in 0..200 {
            let (disk, file) = setup();
            file.write_at(100, &[1u8; 3000]).unwrap();
            disk.crash(&mut rng(seed));
            let reopened = disk.mount().open(Path::new("/d/f"), false).unwrap();
            let kept = reopened.size().unwrap().saturating_sub(100);
            seen.insert(match kept {
                0 => "none",
                3000 => "all",
                _ => "partial",
            });
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
    }

    #[test]
    fn unsynced_directory_entries_may_vanish() {
        // Checks that a created file whose directory was never synced disappears on some
        // crashes and survives on others; a synced one always survives.
        let mut outcomes = BTreeSet::new();
        for seed in 0..64 {
            let (disk, _file) = setup();
            let process = disk.mount();
            let g = process.open(Path::new("/d/g"), true).unwrap();
            g.write_at(0, b"x").unwrap();
            g.sync_data().unwrap();
            disk.crash(&mut rng(seed));
            let names = disk.mount().list(Path::new("/d")).unwrap();
            assert!(names.contains(&"f".to_owned()));
            outcomes.insert(names.contains(&"g".to_owned()));
        }
        assert_eq!(outcomes.len(), 2);
    }

    #[test]
    fn armed_crash_fires_inside_the_operation() {
        // Checks that an armed crash fails the operation it fires in, tears nothing that was
        // synced, and that a clean process exit keeps unsynced data but kills old handles.
        let (disk, file) = setup();
        file.write_at(0, b"abc").unwrap();
        file.sync_data().unwrap();
        disk.arm_crash(2, rng(1));
        file.write_at(3, b"def").unwrap();
        assert!(file.sync_data().is_err(), "the second operation crashes");
        assert!(!disk.mount().list(Path::new("/d")).unwrap().is_empty());
        let process = disk.mount();
        let f = process.open(Path::new("/d/f"), false).unwrap();
        assert!(read_all(&*f).starts_with(b"abc"));
        f.write_at(0, b"xyz").unwrap();
        disk.close_all();
        assert!(f.read_at(0, &mut [0u8; 3]).is_err());
        let again = disk.mount().open(Path::new("/d/f"), false).unwrap();
        assert!(
            read_all(&*again).starts_with(b"xyz"),
            "process exit keeps the page cache"
        );
    }

    #[test]
    fn failed_sync_drops_pages_but_reads_still_see_them() {
        // Checks the Linux fsync-failure model: the failing sync returns EIO, reads keep
        // returning the written bytes (page cache), a later successful sync does not persist
        // them, and a crash loses them.
        let (disk, file) = setup();
        file.write_at(0, b"synced").unwrap();
        file.sync_data().unwrap();
        disk.arm_sync_failure(0);
        file.write_at(6, b"dropped").unwrap();
        assert!(file.sync_data().is_err());
        assert_eq!(read_all(&*file), b"synceddropped".to_vec());
        file.write_at(13, b"later").unwrap();
        file.sync_data().unwrap();
        disk.crash(&mut rng(3));
        let after = read_all(&*disk.mount().open(Path::new("/d/f"), false).unwrap());
        assert_eq!(after, b"synced\0\0\0\0\0\0\0later".to_vec());
    }

    #[test]
    fn a_full_disk_refuses_growth_until_space_returns() {
        // Checks the full-disk model: growing a file fails with ENOSPC and changes nothing,
        // writes inside the file's size still work, and clearing it lets the file grow again.
        let (disk, file) = setup();
        file.allocate(8).unwrap();
        disk.set_full(true);
        let error = file.write_at(6, b"abcd").unwrap_err();
        assert!(error.is_no_space(), "{error}");
        assert!(file.allocate(64).is_err());
        assert_eq!(file.size().unwrap(), 8);
        file.write_at(0, b"inside").unwrap();
        disk.set_full(false);
        file.write_at(6, b"abcd").unwrap();
        assert_eq!(read_all(&*file), b"insideabcd".to_vec());
        assert_eq!(disk.stats().n_no_space, 2);
    }
}
