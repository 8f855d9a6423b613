//! [`CrashDisk`]: files in memory that lose what was not synced when the power goes, with faults
//! and damage injected on request. It is the one simulated disk of the workspace: unit tests,
//! the edge spool tests and the deterministic simulator all use it.
//!
//! **Files.** Each file (an inode) has its `durable` bytes — what the medium holds — and the
//! unsynced operations (writes, size changes) queued on top of them; the `current` view (the
//! page cache) is what every read sees. `sync_data` writes a file's queue to the medium.
//! Directory entries (a file created or removed) become durable on `sync_dir` of their
//! directory; until then a power cut keeps or reverts each of them (a coin from the caller's
//! RNG). Directories themselves are durable at once (the code under test creates its
//! directories once, at start).
//!
//! **Power cuts.** [`CrashDisk::power_cut`] reverts every file to its durable bytes, except that
//! the last unsynced write of a file may be torn, as [`CrashModel::tear`] says: a prefix of it
//! survives ([`Tear::Prefix`]: none, all, up to a 512-byte sector boundary or any byte count),
//! or its sectors reach the medium in any order ([`Tear::Sectors`]: a later sector may survive
//! an earlier one). Earlier unsynced writes and size changes are lost. A power cut can also be
//! armed to fire *inside* a later operation ([`CrashDisk::arm_power_cut`]): the operation
//! fails with `EIO`, and a write is queued before the cut fires, so it is the write that tears.
//! The crash points are writes, allocations, truncations, `fdatasync`, directory syncs and,
//! when [`CrashModel::remove_is_crash_point`] is set, removals. Every random choice comes from
//! the RNG the caller passes in: the same seed always gives the same disk.
//!
//! **Processes.** The disk outlives the processes that use it. Each process mounts it
//! ([`CrashDisk::mount`]); a power cut or a clean process exit ([`CrashDisk::close_all`]) bumps
//! the disk's generation, and every handle of an older generation — the dead process's file
//! descriptors — fails with `EIO` from then on. A clean exit keeps the page cache.
//!
//! **Faults.** [`CrashDisk::fail_syncs`] fails `fdatasync` calls the way Linux does: the failing
//! call drops its file's queued writes (the kernel marks the pages clean) while reads keep
//! returning them from the page cache; they never reach the medium, whatever is synced later,
//! and the next power cut loses them. [`CrashDisk::set_full`] refuses, with ENOSPC
//! (`ErrorKind::StorageFull`), every write or allocation that would grow a file, changing
//! nothing (or, with [`CrashDisk::set_partial_allocate`], letting `fallocate` grow the file
//! half way first); writes inside a file's size (preallocated space) still succeed.
//! [`CrashDisk::set_read_only`] (EROFS) and [`CrashDisk::set_immutable`] (EPERM, one file, like
//! `chattr +i`) refuse every change. [`CrashDisk::set_available_bytes`] is what
//! `Disk::available_bytes` reports; it is independent of `set_full`, so a test can make the
//! two disagree.
//!
//! **Damage.** [`CrashDisk::flip_bit`], [`CrashDisk::zero_range`], [`CrashDisk::truncate_file`],
//! [`CrashDisk::set_bytes`] and [`CrashDisk::delete_file`] change a file at rest: the medium and
//! the page cache alike, at once and durably, without counting as a crash point. Writes still
//! queued keep their own bytes and land over the damage when synced.
//!
//! What it does not model: metadata other than sizes and names, file-system-wide space
//! accounting (`set_full` is a switch, not a quota), and write reordering between files.
//! Deterministic: `BTreeMap`s only, no clock, and no randomness but the caller's RNG.

use crate::env::{Disk, DiskError, DiskFile};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The unit a torn write may be cut at (besides any byte, under [`Tear::Prefix`]).
pub const SECTOR_BYTES: u64 = 512;

/// How a power cut tears the last unsynced write of a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Tear {
    /// A prefix survives: none, all, up to a sector boundary of the file inside the write, or
    /// any byte count, one chance in four each.
    #[default]
    Prefix,
    /// The write's sectors (cut at the file's 512-byte boundaries) reach the medium in any
    /// order: none, all, or each sector on a coin of its own, one chance in three each; a later
    /// sector may survive while an earlier one is lost.
    Sectors,
}

/// What a power cut may do; see the module docs. The default tears prefixes and lets a power
/// cut fire inside a removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashModel {
    /// How the last unsynced write of each file is torn.
    pub tear: Tear,
    /// Whether an armed power cut may fire inside `remove` (it then fails and removes nothing).
    pub remove_is_crash_point: bool,
}

impl Default for CrashModel {
    fn default() -> Self {
        Self {
            tear: Tear::Prefix,
            remove_is_crash_point: true,
        }
    }
}

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

/// A power cut armed to fire inside a later disk operation.
#[derive(Debug)]
struct Armed {
    ops_left: u32,
    rng: ChaCha8Rng,
}

/// Planned `fdatasync` failures: `ok_left` more syncs succeed, then `fail_left` fail.
#[derive(Debug, Clone, Copy)]
struct SyncFailures {
    ok_left: u32,
    fail_left: u32,
}

/// Counters of one disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// `write_at` calls.
    pub n_writes: u64,
    /// `sync_data` calls.
    pub n_syncs: u64,
    /// Power cuts.
    pub n_crashes: u64,
    /// Power cuts that fired inside a disk operation.
    pub n_crashes_mid_io: u64,
    /// Last unsynced writes of which some but not all bytes survived a power cut.
    pub n_torn_writes: u64,
    /// Unsynced directory entries a power cut reverted.
    pub n_entries_reverted: u64,
    /// `fdatasync` calls that failed with an injected media error.
    pub n_sync_failures: u64,
    /// Writes and allocations refused with ENOSPC while the disk was full.
    pub n_no_space: u64,
    /// Changes refused because the disk is read-only or the file immutable.
    pub n_refused_read_only: u64,
    /// Operations attempted through a handle of a process that had exited cleanly
    /// ([`CrashDisk::close_all`]): work still in flight when the process was declared stopped.
    pub n_ops_after_exit: u64,
    /// Damage injected ([`CrashDisk::flip_bit`] and the other damage calls).
    pub n_damaged: u64,
}

/// What one power cut did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Files that had unsynced operations (or page-cache bytes a failed sync had dropped).
    pub n_files_reverted: u32,
    /// Bytes of last writes that survived.
    pub torn_bytes_kept: u64,
    /// Unsynced directory entries reverted.
    pub n_entries_reverted: u32,
}

#[derive(Debug, Default)]
struct State {
    model: CrashModel,
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
    /// Generations that ended with a clean process exit rather than a power cut.
    exited: BTreeSet<u64>,
    sync_failures: Option<SyncFailures>,
    /// Directories whose most files at once are tracked, with that count.
    files_max: BTreeMap<PathBuf, usize>,
    /// Writes and allocations that would grow a file fail with ENOSPC.
    full: bool,
    /// While full, `fallocate` grows the file half way before it fails.
    partial_allocate: bool,
    read_only: bool,
    immutable: BTreeSet<PathBuf>,
    available_bytes: Option<u64>,
    stats: DiskStats,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    crashed: tokio::sync::Notify,
}

/// A handle on the disk, bound to the generation (process) it was mounted at; see the module
/// docs. Clones share the disk.
#[derive(Debug, Clone)]
pub struct CrashDisk {
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

fn out_of_range(op: &'static str, path: &Path) -> DiskError {
    DiskError::io(
        op,
        path,
        std::io::Error::new(ErrorKind::InvalidInput, "damage beyond the end of the file"),
    )
}

impl Default for CrashDisk {
    fn default() -> Self {
        Self::new()
    }
}

impl CrashDisk {
    /// An empty disk with the default [`CrashModel`].
    pub fn new() -> Self {
        Self::with_model(CrashModel::default())
    }

    /// An empty disk whose power cuts follow `model`.
    pub fn with_model(model: CrashModel) -> Self {
        let shared = Shared::default();
        shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .model = model;
        Self {
            shared: Arc::new(shared),
            generation: 0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A handle for a new process: valid until the next power cut or [`CrashDisk::close_all`].
    pub fn mount(&self) -> CrashDisk {
        let generation = self.lock().generation;
        CrashDisk {
            shared: self.shared.clone(),
            generation,
        }
    }

    /// True while this handle's process has not crashed or exited.
    pub fn is_alive(&self) -> bool {
        self.lock().generation == self.generation
    }

    /// The disk's generation (bumped by every power cut and process exit).
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

    /// Power loss now (see the module docs), with every choice drawn from `rng`; cancels an
    /// armed power cut. Every handle mounted before fails from now on.
    pub fn power_cut(&self, rng: &mut ChaCha8Rng) -> CrashReport {
        let mut state = self.lock();
        state.armed = None;
        power_cut_locked(&mut state, rng)
    }

    /// The process using the disk exited cleanly: its handles die, its data stays (the page
    /// cache survives a process exit). Cancels an armed power cut.
    pub fn close_all(&self) {
        let mut state = self.lock();
        state.armed = None;
        let generation = state.generation;
        state.exited.insert(generation);
        state.generation += 1;
    }

    /// Arms a power cut inside the `n_ops`-th next crash point (see the module docs), drawing
    /// its choices from `rng`. The operation fails with `EIO`; a write is queued first, so it
    /// is the last unsynced write and may be torn. [`CrashDisk::wait_power_cut`] returns once
    /// it fired.
    pub fn arm_power_cut(&self, n_ops: u32, rng: ChaCha8Rng) {
        self.lock().armed = Some(Armed {
            ops_left: n_ops.max(1),
            rng,
        });
    }

    /// Cancels an armed power cut; true when one was still pending (it never fired).
    pub fn disarm_power_cut(&self) -> bool {
        self.lock().armed.take().is_some()
    }

    /// Waits until an armed power cut fires; returns what it did. One that fired while nobody
    /// waited is remembered (one at most) and returned by the next call at once.
    pub async fn wait_power_cut(&self) -> CrashReport {
        self.shared.crashed.notified().await;
        self.lock().last_crash.unwrap_or_default()
    }

    /// After `n_ok` more successful `fdatasync` calls, makes the next `n_fail` fail with `EIO`
    /// the way Linux fails them (see the module docs); `u32::MAX` fails them until
    /// [`CrashDisk::disarm_sync_failures`]. Replaces an earlier plan.
    pub fn fail_syncs(&self, n_ok: u32, n_fail: u32) {
        self.lock().sync_failures = (n_fail > 0).then_some(SyncFailures {
            ok_left: n_ok,
            fail_left: n_fail,
        });
    }

    /// One failed `fdatasync` after `n_ok` successful ones: `fail_syncs(n_ok, 1)`.
    pub fn arm_sync_failure(&self, n_ok: u32) {
        self.fail_syncs(n_ok, 1);
    }

    /// Cancels planned sync failures; true when some were still to come.
    pub fn disarm_sync_failures(&self) -> bool {
        self.lock().sync_failures.take().is_some()
    }

    /// Fills the disk (`true`) or frees space again (`false`); see the module docs.
    pub fn set_full(&self, full: bool) {
        self.lock().full = full;
    }

    /// While the disk is full, `fallocate` grows the file to half the requested length (when
    /// that is larger) before it fails, like a file system that ran out part way.
    pub fn set_partial_allocate(&self, partial: bool) {
        self.lock().partial_allocate = partial;
    }

    /// Makes the whole disk read-only (`true`): every change fails with EROFS.
    pub fn set_read_only(&self, read_only: bool) {
        self.lock().read_only = read_only;
    }

    /// Makes one file immutable (`true`, like `chattr +i`): writes, allocations, truncations and
    /// its removal fail with EPERM; reads and syncs still work.
    pub fn set_immutable(&self, path: &Path, immutable: bool) {
        let mut state = self.lock();
        if immutable {
            state.immutable.insert(path.to_path_buf());
        } else {
            state.immutable.remove(path);
        }
    }

    /// What `Disk::available_bytes` reports from now on (`None`, the default: cannot tell).
    pub fn set_available_bytes(&self, available: Option<u64>) {
        self.lock().available_bytes = available;
    }

    /// Starts tracking the most files `dir` ever holds at once (see [`CrashDisk::files_max`]).
    pub fn track_dir(&self, dir: &Path) {
        self.lock().files_max.entry(dir.to_path_buf()).or_insert(0);
    }

    /// The most files a tracked directory held at once so far (0 if it is not tracked).
    pub fn files_max(&self, dir: &Path) -> usize {
        self.lock().files_max.get(dir).copied().unwrap_or(0)
    }

    /// Planted bug (to check that checkers catch it): from now on `sync_data` of `.log` files
    /// under `dir` does nothing after a file's first sync, so acknowledged writes there are lost
    /// by the next power cut.
    pub fn plant_noop_sync(&self, dir: &Path) {
        self.lock().noop_sync_under = Some(dir.to_path_buf());
    }

    /// The current bytes of a file (what a read sees), or `None` when it does not exist.
    pub fn bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let inode = state.entries.get(path)?;
        state.inodes.get(inode).map(|i| i.current.clone())
    }

    /// The bytes of a file on the medium (what a power cut now would keep, before tearing).
    pub fn durable_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let inode = state.entries.get(path)?;
        state.inodes.get(inode).map(|i| i.durable.clone())
    }

    /// Every file's name and current bytes.
    pub fn files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let state = self.lock();
        state
            .entries
            .iter()
            .filter_map(|(p, i)| state.inodes.get(i).map(|n| (p.clone(), n.current.clone())))
            .collect()
    }

    /// How many files exist now, in every directory.
    pub fn n_files(&self) -> usize {
        self.lock().entries.len()
    }

    /// Damage: flips bit `bit` (0..8) of the byte at `pos` of a file.
    pub fn flip_bit(&self, path: &Path, pos: u64, bit: u8) -> Result<(), DiskError> {
        let mask = 1u8 << (bit % 8);
        self.damage("flip bit", path, pos.saturating_add(1), |bytes| {
            if let Some(byte) = bytes.get_mut(to_usize(pos)) {
                *byte ^= mask;
            }
        })
    }

    /// Damage: zeroes `len` bytes of a file from `pos` (within its size).
    pub fn zero_range(&self, path: &Path, pos: u64, len: u64) -> Result<(), DiskError> {
        let end = pos.saturating_add(len);
        self.damage("zero range", path, end, |bytes| {
            let end = to_usize(end).min(bytes.len());
            let start = to_usize(pos).min(end);
            bytes[start..end].fill(0);
        })
    }

    /// Damage: cuts a file to `len` bytes (or extends it with zeros).
    pub fn truncate_file(&self, path: &Path, len: u64) -> Result<(), DiskError> {
        self.damage("truncate file", path, 0, |bytes| {
            bytes.resize(to_usize(len), 0);
        })
    }

    /// Damage: replaces a file's whole content with `bytes`.
    pub fn set_bytes(&self, path: &Path, bytes: Vec<u8>) -> Result<(), DiskError> {
        self.damage("set bytes", path, 0, |content| content.clone_from(&bytes))
    }

    /// Damage: the file's name is gone from its directory, durably (open handles keep the
    /// file, as after an unlink).
    pub fn delete_file(&self, path: &Path) -> Result<(), DiskError> {
        let mut state = self.lock();
        if state.entries.remove(path).is_none() {
            return Err(not_found("delete file", path));
        }
        state.durable_entries.remove(path);
        state.stats.n_damaged += 1;
        Ok(())
    }

    /// Applies `f` to a file's durable bytes and page cache alike; fails when the file does
    /// not exist or is shorter than `end` in both.
    fn damage(
        &self,
        op: &'static str,
        path: &Path,
        end: u64,
        f: impl Fn(&mut Vec<u8>),
    ) -> Result<(), DiskError> {
        let mut state = self.lock();
        let inode = state
            .entries
            .get(path)
            .copied()
            .ok_or_else(|| not_found(op, path))?;
        let inode = state
            .inodes
            .get_mut(&inode)
            .ok_or_else(|| not_found(op, path))?;
        let size = inode.durable.len().max(inode.current.len()) as u64;
        if end > size {
            return Err(out_of_range(op, path));
        }
        f(&mut inode.durable);
        f(&mut inode.current);
        state.stats.n_damaged += 1;
        Ok(())
    }

    /// Counts one crash point against an armed power cut; fires it when due.
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
        let report = power_cut_locked(state, &mut armed.rng);
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

/// Fails when `path` may not change: EROFS for a read-only disk, EPERM for an immutable file.
fn check_writable(state: &mut State, op: &'static str, path: &Path) -> Result<(), DiskError> {
    let (kind, message) = if state.read_only {
        (
            ErrorKind::ReadOnlyFilesystem,
            "EROFS: read-only file system (simulated)",
        )
    } else if state.immutable.contains(path) {
        (
            ErrorKind::PermissionDenied,
            "EPERM: operation not permitted (simulated immutable file)",
        )
    } else {
        return Ok(());
    };
    state.stats.n_refused_read_only += 1;
    Err(DiskError::io(op, path, std::io::Error::new(kind, message)))
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

/// [`Tear::Prefix`]: how much of a last unsynced write of `len` bytes at `pos` survives.
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

/// [`Tear::Sectors`]: the `(start, end)` ranges of a write of `len` bytes at `pos` (offsets in
/// the write) that reach the medium.
fn torn_sectors(rng: &mut ChaCha8Rng, pos: u64, len: u64) -> Vec<(u64, u64)> {
    let mut sectors = Vec::new();
    let mut start = 0;
    while start < len {
        let end = ((pos + start) / SECTOR_BYTES + 1) * SECTOR_BYTES - pos;
        sectors.push((start, end.min(len)));
        start = end;
    }
    match rng.random_range(0..3u8) {
        0 => Vec::new(),
        1 => sectors,
        _ => sectors
            .into_iter()
            .filter(|_| rng.random_bool(0.5))
            .collect(),
    }
}

/// Writes what survives of an inode's last unsynced write to its medium; returns the bytes
/// kept and whether the write was torn (some but not all of it kept).
fn tear_last_write(inode: &mut Inode, tear: Tear, rng: &mut ChaCha8Rng) -> (u64, bool) {
    let Some(Op::Write { pos, data }) = inode.unsynced.last() else {
        return (0, false);
    };
    let (pos, len) = (*pos, data.len() as u64);
    let kept: Vec<(u64, u64)> = match tear {
        Tear::Prefix => match torn_len(rng, pos, len) {
            0 => Vec::new(),
            kept => vec![(0, kept)],
        },
        Tear::Sectors => torn_sectors(rng, pos, len),
    };
    let ops: Vec<Op> = kept
        .iter()
        .map(|(start, end)| Op::Write {
            pos: pos + start,
            data: data[to_usize(*start)..to_usize(*end)].to_vec(),
        })
        .collect();
    for op in &ops {
        apply(&mut inode.durable, op);
    }
    let n_kept: u64 = kept.iter().map(|(start, end)| end - start).sum();
    (n_kept, n_kept > 0 && n_kept < len)
}

fn power_cut_locked(state: &mut State, rng: &mut ChaCha8Rng) -> CrashReport {
    let mut report = CrashReport::default();
    let tear = state.model.tear;
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
        let (kept, torn) = tear_last_write(inode, tear, rng);
        report.torn_bytes_kept += kept;
        state.stats.n_torn_writes += u64::from(torn);
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

impl Disk for CrashDisk {
    fn create_dir_all(&self, dir: &Path) -> Result<(), DiskError> {
        let mut state = self.lock();
        self.check_alive(&mut state, "mkdir", dir)?;
        if !state.dirs.contains(dir) {
            check_writable(&mut state, "mkdir", dir)?;
        }
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
                check_writable(&mut state, "open", path)?;
                let inode = state.next_inode;
                state.next_inode += 1;
                state.inodes.insert(inode, Inode::default());
                state.entries.insert(path.to_path_buf(), inode);
                note_files(&mut state, path);
                inode
            }
            None => return Err(not_found("open", path)),
        };
        Ok(Arc::new(CrashFile {
            disk: self.clone(),
            inode,
            path: path.to_path_buf(),
        }))
    }

    fn remove(&self, path: &Path) -> Result<(), DiskError> {
        let mut state = self.lock();
        self.check_alive(&mut state, "remove", path)?;
        check_writable(&mut state, "remove", path)?;
        if state.model.remove_is_crash_point && self.tick(&mut state) {
            return Err(crashed_now("remove", path));
        }
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

    fn available_bytes(&self, _dir: &Path) -> Result<Option<u64>, DiskError> {
        Ok(self.lock().available_bytes)
    }
}

/// An open file of a [`CrashDisk`].
struct CrashFile {
    disk: CrashDisk,
    inode: u64,
    path: PathBuf,
}

impl CrashFile {
    /// Runs `f` on this file's inode after checking that the owning process is alive.
    fn with<R>(&self, op: &'static str, f: impl FnOnce(&mut Inode) -> R) -> Result<R, DiskError> {
        let mut state = self.disk.lock();
        self.disk.check_alive(&mut state, op, &self.path)?;
        match state.inodes.get_mut(&self.inode) {
            Some(inode) => Ok(f(inode)),
            None => Err(not_found(op, &self.path)),
        }
    }

    /// Fails when the file may not change, or with ENOSPC when the disk is full and the file
    /// would grow past `end` (a partial allocation first grows it half way).
    fn check_space(&self, name: &'static str, end: u64, allocate: bool) -> Result<(), DiskError> {
        let mut state = self.disk.lock();
        self.disk.check_alive(&mut state, name, &self.path)?;
        check_writable(&mut state, name, &self.path)?;
        let size = state
            .inodes
            .get(&self.inode)
            .map_or(0, |inode| inode.current.len() as u64);
        if state.full && end > size {
            state.stats.n_no_space += 1;
            if allocate && state.partial_allocate && end / 2 > size {
                push_op(&mut state, self.inode, Op::SetLen(end / 2));
            }
            return Err(no_space(name, &self.path));
        }
        Ok(())
    }

    /// Records a change at a crash point; fails with `EIO` when an armed power cut fires on it.
    /// `apply_first` says whether the change happens before the cut (a write) or not.
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

    /// The planned sync failures' verdict on one sync: true when this one fails.
    fn sync_fails(state: &mut State) -> bool {
        let Some(plan) = state.sync_failures.as_mut() else {
            return false;
        };
        if plan.ok_left > 0 {
            plan.ok_left -= 1;
            return false;
        }
        plan.fail_left = plan.fail_left.saturating_sub(1);
        if plan.fail_left == 0 {
            state.sync_failures = None;
        }
        true
    }
}

fn push_op(state: &mut State, inode: u64, op: Op) {
    if let Some(inode) = state.inodes.get_mut(&inode) {
        apply(&mut inode.current, &op);
        inode.unsynced.push(op);
    }
}

impl DiskFile for CrashFile {
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
        self.check_space("write", pos.saturating_add(data.len() as u64), false)?;
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
        self.check_space("fallocate", len, true)?;
        let op = Op::SetLen(len.max(size));
        self.mutate("fallocate", op, false)
    }

    fn truncate(&self, len: u64) -> Result<(), DiskError> {
        {
            let mut state = self.disk.lock();
            self.disk.check_alive(&mut state, "truncate", &self.path)?;
            check_writable(&mut state, "truncate", &self.path)?;
        }
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
        let Some(inode) = state.inodes.get(&self.inode) else {
            return Err(not_found("fdatasync", &self.path));
        };
        if planted && inode.n_syncs > 0 {
            return Ok(());
        }
        if Self::sync_fails(&mut state) {
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
mod tests;
