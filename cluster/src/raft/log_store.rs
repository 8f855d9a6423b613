//! The raft log store of a group: openraft's `RaftLogStorage` on the shared segment layer
//! ([`sluice_proto::segment`]), through [`Disk`] only.
//!
//! What is on disk (see `format`): segment files of raft entries, each entry carrying its log id
//! and kind, and a manifest (a two-slot [`SlotFile`]) holding the vote, the committed and the
//! last purged log id, which segments the log holds, how far the last one is known durable and
//! the point of a truncation in progress.
//!
//! Durability points: [`LogStore::append`] writes its entries with one write per segment and
//! completes openraft's `LogFlushed` only after `fdatasync` (the entries are readable once it
//! returns); `save_vote` and `save_committed` are one manifest slot write and `fdatasync`
//! each; `truncate` records the cut in the manifest (synced) before it touches the segments, so
//! a restart never pairs a newer vote with the entries a truncation removed; `purge` records
//! the purge point in the manifest (synced) before removing segments. Every manifest write also
//! records the last segment's durable end, so damage below it is corruption, not a torn tail.
//!
//! Recovery ([`LogStore::open`]) reads the manifest and scans every segment it names under the
//! layer's rule: only the last write of the last segment may be torn (it was never flushed, so
//! never acknowledged) and is zeroed. The open records the manifest again and writes the entries
//! past its recorded durable end again before syncing, so what a failed `fdatasync` left
//! readable in the page cache is durable before the store acts on it. Anything else that does not check — a damaged entry, a
//! missing segment, entries out of order, a manifest none of whose slots checks — is
//! [`LogStoreError::Corrupt`]: the store does not open, so the replica cannot vote with damaged
//! state; the layer above rebuilds it from its peers. Nothing is ever silently discarded.
//!
//! Disk work of openraft's calls runs through [`run_blocking`] in the store's [`BlockingMode`]:
//! on tokio's blocking pool in production, so a slow `fdatasync` never holds an async worker,
//! inline under the simulator. The synchronous methods (used by tests and by recovery) do the
//! same work on the calling thread. Readers find an entry through a sparse index per segment
//! ([`SparseIndex`], a point every `index_interval_bytes`) and read forward from it, so memory
//! grows with the bytes held, not with the entry count.
//!
//! Not done here: appends of many groups are not coalesced into one flush; snapshots (the
//! retained segments streamed to a follower) are the state machine's business.

mod format;
#[cfg(test)]
mod suite;
#[cfg(test)]
mod tests;

use crate::raft::types::{GroupConfig, GroupEntry, GroupLogId, GroupStorageError, GroupVote};
use format::{ManifestState, StoredEntry, MANIFEST_KIND, SEGMENT_KIND};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, StorageIOError};
use sluice_proto::codec;
use sluice_proto::env::{run_blocking, BlockingMode, Disk, DiskError, DiskFile};
use sluice_proto::segment::{
    self, Corruption, CorruptionKind, Scan, ScanExpect, SegmentError, SegmentHeader, SegmentWriter,
    SlotFile, SparseIndex, SEGMENT_HEADER_LEN,
};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// Planted bugs, for the simulator's checkers only (feature `plant`), off unless a run turns
/// them on for its thread (the simulator runs the store's work inline on the run's thread).
#[cfg(feature = "plant")]
pub mod plant {
    use std::cell::Cell;

    thread_local! {
        static APPEND_UNSYNCED: Cell<bool> = const { Cell::new(false) };
    }

    /// From now on, on this thread, appends skip their `fdatasync` and still complete
    /// openraft's `LogFlushed`: replicas acknowledge entries a power cut then loses.
    pub fn set_append_unsynced(on: bool) {
        APPEND_UNSYNCED.with(|c| c.set(on));
    }

    pub(super) fn append_unsynced() -> bool {
        APPEND_UNSYNCED.with(Cell::get)
    }
}

/// Sizes of a raft log store.
#[derive(Debug, Clone, Copy)]
pub struct LogStoreConfig {
    /// Preallocated size of a segment; a segment is closed when the next entry would not fit.
    pub segment_bytes_max: u64,
    /// The largest encoded entry accepted on append, on recovery and on read.
    pub entry_bytes_max: u32,
    /// One sparse index point per this many bytes of entries: a read of one entry reads at most
    /// this many bytes before it.
    pub index_interval_bytes: u64,
}

impl Default for LogStoreConfig {
    /// 64 MiB segments, entries up to 8 MiB, an index point per 64 KiB.
    fn default() -> Self {
        LogStoreConfig {
            segment_bytes_max: 64 << 20,
            entry_bytes_max: 8 << 20,
            index_interval_bytes: 64 << 10,
        }
    }
}

/// Where a raft log store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStorePaths {
    /// The directory of the segment files.
    pub dir: PathBuf,
    /// The manifest file, outside `dir` so that losing the directory is detected.
    pub manifest: PathBuf,
}

/// A raft log store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogStoreError {
    /// The disk refused.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A segment operation failed (a full disk at preallocation, a broken writer, …).
    #[error(transparent)]
    Segment(SegmentError),
    /// Data that was once durable is damaged or gone: the replica must not vote with this log.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    /// An entry larger than an empty segment (or `entry_bytes_max`) can hold.
    #[error("raft entry {index} of {len} bytes is larger than the {max} bytes an entry may take")]
    EntryTooLarge {
        /// Log index of the entry.
        index: u64,
        /// Bytes of the encoded entry.
        len: u64,
        /// The largest accepted.
        max: u64,
    },
    /// An entry to append does not follow the log's last one.
    #[error("raft entry {found} appended after {expected}, which must come next")]
    NotContiguous {
        /// The index that must come next.
        expected: u64,
        /// The index offered.
        found: u64,
    },
    /// A truncation below the purged prefix.
    #[error("truncate from raft index {index} at or below the purged index {purged}")]
    TruncatePurged {
        /// The truncation point.
        index: u64,
        /// The last purged index.
        purged: u64,
    },
    /// An entry could not be encoded.
    #[error("raft entry {index} could not be encoded: {reason}")]
    Encode {
        /// Log index of the entry.
        index: u64,
        /// What the codec said.
        reason: String,
    },
    /// An earlier write or sync failed: what the files hold is unknown until they are opened
    /// again.
    #[error("raft log {dir}: no more writes after a failed one ({reason})")]
    Broken {
        /// The store's directory.
        dir: String,
        /// The first failure.
        reason: String,
    },
}

impl From<SegmentError> for LogStoreError {
    fn from(error: SegmentError) -> Self {
        match error {
            SegmentError::Corrupt(c) => LogStoreError::Corrupt(c),
            SegmentError::Disk(d) => LogStoreError::Disk(d),
            other => LogStoreError::Segment(other),
        }
    }
}

impl LogStoreError {
    /// The corruption, when this error is one.
    pub fn corruption(&self) -> Option<&Corruption> {
        match self {
            LogStoreError::Corrupt(c) => Some(c),
            _ => None,
        }
    }
}

/// One segment as readers see it.
#[derive(Clone)]
struct SegmentView {
    id: u64,
    path: PathBuf,
    file: Arc<dyn DiskFile>,
    /// Index of the segment's first entry.
    first_index: u64,
    /// How many entries the segment holds (`first_index..first_index + count`).
    count: u64,
    /// Raft index → byte position, sparse.
    index: SparseIndex,
    /// One past the last entry.
    end_pos: u64,
}

impl SegmentView {
    fn new(
        id: u64,
        path: PathBuf,
        file: Arc<dyn DiskFile>,
        config: &LogStoreConfig,
    ) -> SegmentView {
        SegmentView {
            id,
            path,
            file,
            first_index: id,
            count: 0,
            index: SparseIndex::new(config.index_interval_bytes),
            end_pos: SEGMENT_HEADER_LEN,
        }
    }

    fn holds(&self, index: u64) -> bool {
        index >= self.first_index && index - self.first_index < self.count
    }

    /// Notes the next entry, `index` at `pos`, ending at `end`.
    fn push(&mut self, index: u64, pos: u64, end: u64) {
        if self.count == 0 {
            self.first_index = index;
        }
        self.index.note(index, pos);
        self.count += 1;
        self.end_pos = end;
    }

    /// The byte position of held entry `index`: from the index point at or below it, reading
    /// forward entry by entry (each checked by the segment layer).
    fn position(&self, index: u64, entry_bytes_max: u32) -> Result<u64, LogStoreError> {
        let (mut at, mut pos) = self
            .index
            .seek(index)
            .unwrap_or((self.first_index, SEGMENT_HEADER_LEN));
        while at < index {
            let (_, next) = segment::read_entry(
                &*self.file,
                &self.path,
                self.id,
                pos,
                self.end_pos,
                entry_bytes_max,
            )?;
            pos = next;
            at += 1;
        }
        Ok(pos)
    }
}

/// What appends, truncations and purges publish to readers.
struct Shared {
    segments: Vec<SegmentView>,
    /// The log id of the last entry held (which may be purged).
    last_entry: Option<GroupLogId>,
    purged: Option<GroupLogId>,
    entry_bytes_max: u32,
}

impl Shared {
    /// The log's last log id: its last entry, or the purge point when that is later.
    fn last_log_id(&self) -> Option<GroupLogId> {
        self.last_entry.max(self.purged)
    }

    fn locate(&self, index: u64) -> Option<&SegmentView> {
        let i = self.segments.partition_point(|s| s.first_index <= index);
        self.segments[..i].iter().rev().find(|s| s.holds(index))
    }

    /// Reads the entries of `[start, end)` that the log holds and has not purged.
    fn read(&self, start: u64, end: u64) -> Result<Vec<GroupEntry>, LogStoreError> {
        let first_held = self.segments.iter().find(|s| s.count > 0);
        let start = start
            .max(self.purged.map_or(0, |p| p.index + 1))
            .max(first_held.map_or(0, |s| s.first_index));
        let end = end.min(self.last_entry.map_or(0, |l| l.index + 1));
        let mut out = Vec::with_capacity(end.saturating_sub(start).min(1024) as usize);
        let mut index = start;
        while index < end {
            let Some(view) = self.locate(index) else {
                break;
            };
            let mut pos = view.position(index, self.entry_bytes_max)?;
            while index < end && view.holds(index) {
                let (entry, next) = self.read_entry_at(view, index, pos)?;
                out.push(entry);
                pos = next;
                index += 1;
            }
        }
        Ok(out)
    }

    /// Reads held entry `index`.
    fn read_entry(&self, view: &SegmentView, index: u64) -> Result<GroupEntry, LogStoreError> {
        let pos = view.position(index, self.entry_bytes_max)?;
        Ok(self.read_entry_at(view, index, pos)?.0)
    }

    /// Reads entry `index` at `pos`; returns it and the next entry's position.
    fn read_entry_at(
        &self,
        view: &SegmentView,
        index: u64,
        pos: u64,
    ) -> Result<(GroupEntry, u64), LogStoreError> {
        let (payload, next) = segment::read_entry(
            &*view.file,
            &view.path,
            view.id,
            pos,
            view.end_pos,
            self.entry_bytes_max,
        )?;
        let refused = |reason: String| {
            LogStoreError::Corrupt(Corruption::new(
                &view.path,
                pos,
                CorruptionKind::Payload(reason),
            ))
        };
        let stored: StoredEntry = codec::decode(&payload).map_err(|e| refused(e.to_string()))?;
        if stored.index != index {
            return Err(refused(format!(
                "entry holds raft index {}, expected {index}",
                stored.index
            )));
        }
        Ok((stored.into_entry().map_err(refused)?, next))
    }
}

/// Reads a raft log store; what `get_log_reader` hands to replication. Cheap to clone.
#[derive(Clone)]
pub struct LogStoreReader {
    shared: Arc<RwLock<Shared>>,
    blocking: BlockingMode,
}

/// The raft log store of one group. Owned by the group's raft core. openraft's calls do their
/// disk work through [`run_blocking`]; the synchronous methods do it on the calling thread.
pub struct LogStore {
    core: Arc<Mutex<Core>>,
    shared: Arc<RwLock<Shared>>,
    blocking: BlockingMode,
}

/// The store's writing side: what runs on the blocking pool.
struct Core {
    disk: Arc<dyn Disk>,
    paths: LogStorePaths,
    config: LogStoreConfig,
    manifest_file: SlotFile,
    manifest: ManifestState,
    writer: SegmentWriter,
    shared: Arc<RwLock<Shared>>,
    broken: Option<String>,
}

/// What [`LogStore::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRecovery {
    /// Segment files recovered.
    pub n_segments: u32,
    /// Entries found intact (purged ones included).
    pub n_entries: u64,
    /// Bytes of a torn tail or of an interrupted truncation that were zeroed.
    pub discarded_bytes: u64,
}

fn is_not_found(e: &DiskError) -> bool {
    matches!(
        e,
        DiskError::Io {
            kind: std::io::ErrorKind::NotFound,
            ..
        }
    )
}

fn missing(path: &Path, what: String) -> Corruption {
    Corruption::new(path, 0, CorruptionKind::Missing(what))
}

/// The segment ids in `dir`; `None` when it does not exist.
fn list_segments(disk: &dyn Disk, dir: &Path) -> Result<Option<Vec<u64>>, LogStoreError> {
    match disk.list(dir) {
        Ok(names) => {
            let mut ids: Vec<u64> = names
                .iter()
                .filter_map(|n| format::parse_segment_name(n))
                .collect();
            ids.sort_unstable();
            Ok(Some(ids))
        }
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The reading phase's result for one segment.
struct Scanned {
    view: SegmentView,
    scan: Scan,
}

/// What the reading phase leaves for the writing phase.
struct Recovered {
    manifest: Option<(SlotFile, ManifestState)>,
    segments: Vec<Scanned>,
    /// Segment files outside the manifest's range, to remove.
    leftovers: Vec<u64>,
    last_entry: Option<GroupLogId>,
    recovery: LogRecovery,
}

impl LogStore {
    /// Opens (or creates) the store at `paths`, recovering it under the segment layer's rule,
    /// on the calling thread (a caller on an async task wraps it in [`run_blocking`]); later
    /// calls from openraft run their disk work in `blocking` mode. Corruption is
    /// [`LogStoreError::Corrupt`], naming the file and byte; any other error (a full disk) may
    /// go away when opening again later.
    pub fn open(
        disk: Arc<dyn Disk>,
        paths: &LogStorePaths,
        config: LogStoreConfig,
        blocking: BlockingMode,
    ) -> Result<(LogStore, LogRecovery), LogStoreError> {
        let recovered = recover(&*disk, paths, &config)?;
        let (core, recovery) = make_writable(disk, paths, config, recovered)?;
        let store = LogStore {
            shared: core.shared.clone(),
            core: Arc::new(Mutex::new(core)),
            blocking,
        };
        Ok((store, recovery))
    }

    /// A reader sharing this store's entries.
    pub fn reader(&self) -> LogStoreReader {
        LogStoreReader {
            shared: self.shared.clone(),
            blocking: self.blocking,
        }
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `op` on the core in the store's blocking mode.
    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Core) -> T + Send + 'static,
    ) -> T {
        let core = self.core.clone();
        run_blocking(self.blocking, move || {
            let mut core = core.lock().unwrap_or_else(|p| p.into_inner());
            op(&mut core)
        })
        .await
    }

    /// Saves the vote durably.
    pub fn save_vote(&mut self, vote: &GroupVote) -> Result<(), LogStoreError> {
        self.core().save_vote(vote)
    }

    /// The last vote saved.
    pub fn vote(&self) -> Option<GroupVote> {
        self.core().manifest.vote
    }

    /// Saves the committed log id durably.
    pub fn save_committed(&mut self, committed: Option<GroupLogId>) -> Result<(), LogStoreError> {
        self.core().save_committed(committed)
    }

    /// The last committed log id saved.
    pub fn committed(&self) -> Option<GroupLogId> {
        self.core().manifest.committed
    }

    /// The last purged log id and the last log id (the purge point when nothing follows it).
    pub fn log_state(&self) -> (Option<GroupLogId>, Option<GroupLogId>) {
        let shared = self.shared.read().unwrap_or_else(|p| p.into_inner());
        (shared.purged, shared.last_log_id())
    }

    /// Writes `entries` after the last one and makes them durable (`fdatasync`) before
    /// returning; they are readable once it returns. Entries at or below the purge point are
    /// skipped: they are purged already. One write and one sync per segment the
    /// entries touch (a roll adds the new segment's creation and a manifest record).
    pub fn append(&mut self, entries: &[GroupEntry]) -> Result<(), LogStoreError> {
        self.core().mutate(|core| core.append_inner(entries))
    }

    /// Removes every entry from `index` on, durably: the cut is recorded in the manifest
    /// first, then later segments are removed and the rest of the cut segment zeroed, and the
    /// manifest records the cut as done.
    pub fn truncate(&mut self, index: u64) -> Result<(), LogStoreError> {
        self.core().mutate(|core| core.truncate_inner(index))
    }

    /// Purges every entry up to `log_id`, durably: the purge point (and the new first segment)
    /// is recorded in the manifest before segments are removed. Segments are removed whole; a
    /// purge at or past the last entry starts a new, empty segment for the next index.
    pub fn purge(&mut self, log_id: GroupLogId) -> Result<(), LogStoreError> {
        self.core().mutate(|core| core.purge_inner(log_id))
    }
}

impl Core {
    fn shared(&self) -> std::sync::RwLockReadGuard<'_, Shared> {
        self.shared.read().unwrap_or_else(|p| p.into_inner())
    }

    fn shared_mut(&self) -> std::sync::RwLockWriteGuard<'_, Shared> {
        self.shared.write().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> Result<(), LogStoreError> {
        match &self.broken {
            Some(reason) => Err(LogStoreError::Broken {
                dir: self.paths.dir.display().to_string(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Runs a mutation; any failure breaks the store (the files must be read again).
    fn mutate<T>(
        &mut self,
        op: impl FnOnce(&mut Self) -> Result<T, LogStoreError>,
    ) -> Result<T, LogStoreError> {
        self.live()?;
        let result = op(self);
        if let Err(error) = &result {
            if !matches!(
                error,
                LogStoreError::NotContiguous { .. }
                    | LogStoreError::EntryTooLarge { .. }
                    | LogStoreError::TruncatePurged { .. }
                    | LogStoreError::Encode { .. }
            ) {
                self.broken = Some(error.to_string());
            }
        }
        result
    }

    /// Records `state` in the manifest (one slot write and `fdatasync`).
    fn record(&mut self, state: ManifestState) -> Result<(), LogStoreError> {
        self.manifest_file.write(&state.encode())?;
        self.manifest = state;
        Ok(())
    }

    /// The manifest as it is, with the last segment's current durable end.
    fn current(&self) -> ManifestState {
        ManifestState {
            durable_pos: self.writer.durable_end(),
            ..self.manifest
        }
    }

    fn save_vote(&mut self, vote: &GroupVote) -> Result<(), LogStoreError> {
        let vote = *vote;
        self.mutate(|store| {
            store.record(ManifestState {
                vote: Some(vote),
                ..store.current()
            })
        })
    }

    fn save_committed(&mut self, committed: Option<GroupLogId>) -> Result<(), LogStoreError> {
        self.mutate(|store| {
            store.record(ManifestState {
                committed,
                ..store.current()
            })
        })
    }

    fn append_inner(&mut self, entries: &[GroupEntry]) -> Result<(), LogStoreError> {
        // An entry must fit an empty segment, the configured bound, and what the codec decodes.
        let room_max = self
            .config
            .segment_bytes_max
            .saturating_sub(SEGMENT_HEADER_LEN)
            .min(segment::entry_len(self.config.entry_bytes_max as usize))
            .min(segment::entry_len(codec::DECODE_BYTES_MAX));
        let (mut next, purged) = {
            let shared = self.shared();
            (shared.last_log_id().map(|l| l.index + 1), shared.purged)
        };
        let mut batch: Vec<(GroupLogId, Vec<u8>)> = Vec::new();
        let mut batch_len = 0u64;
        for entry in entries {
            let index = entry.log_id.index;
            if purged.is_some_and(|p| index <= p.index) && next.is_some_and(|n| index < n) {
                // Already purged (a state machine ahead of the log): nothing to keep.
                continue;
            }
            if let Some(expected) = next.filter(|e| *e != index) {
                return Err(LogStoreError::NotContiguous {
                    expected,
                    found: index,
                });
            }
            next = Some(index + 1);
            let payload = codec::encode(&StoredEntry::from_entry(entry)).map_err(|e| {
                LogStoreError::Encode {
                    index,
                    reason: e.to_string(),
                }
            })?;
            let len = segment::entry_len(payload.len());
            if len > room_max {
                return Err(LogStoreError::EntryTooLarge {
                    index,
                    len,
                    max: room_max,
                });
            }
            if batch_len + len > self.writer.room() {
                self.write_batch(&batch)?;
                self.roll(index, None)?;
                batch.clear();
                batch_len = 0;
            }
            batch_len += len;
            batch.push((entry.log_id, payload));
        }
        self.write_batch(&batch)
    }

    /// Writes and syncs entries into the active segment, then publishes them to readers.
    fn write_batch(&mut self, batch: &[(GroupLogId, Vec<u8>)]) -> Result<(), LogStoreError> {
        let Some((last, _)) = batch.last() else {
            return Ok(());
        };
        let payloads: Vec<&[u8]> = batch.iter().map(|(_, p)| p.as_slice()).collect();
        let positions = self.writer.append(&payloads)?;
        #[cfg(feature = "plant")]
        let planted = plant::append_unsynced();
        #[cfg(not(feature = "plant"))]
        let planted = false;
        if !planted {
            self.writer.sync()?;
        }
        let end_pos = self.writer.end();
        let mut shared = self.shared_mut();
        if let Some(view) = shared.segments.last_mut() {
            for (i, ((log_id, _), pos)) in batch.iter().zip(&positions).enumerate() {
                let end = positions.get(i + 1).copied().unwrap_or(end_pos);
                view.push(log_id.index, *pos, end);
            }
        }
        shared.last_entry = Some(*last);
        Ok(())
    }

    /// Closes the active segment and starts segment `id`: created and synced, then recorded in
    /// the manifest, and only then written to (so an unrecorded segment never holds data).
    /// With `purged`, the same record also makes it the first segment, purging the others.
    fn roll(&mut self, id: u64, purged: Option<GroupLogId>) -> Result<(), LogStoreError> {
        let (view, writer) = create_segment(&*self.disk, &self.paths.dir, id, &self.config)?;
        self.record(ManifestState {
            purged: purged.or(self.manifest.purged),
            first: if purged.is_some() {
                id
            } else {
                self.manifest.first
            },
            last: id,
            durable_pos: SEGMENT_HEADER_LEN,
            cut: None,
            ..self.manifest
        })?;
        self.writer = writer;
        self.shared_mut().segments.push(view);
        Ok(())
    }

    fn truncate_inner(&mut self, index: u64) -> Result<(), LogStoreError> {
        let (cut_at, new_last, removed) = {
            let shared = self.shared();
            if let Some(purged) = shared.purged.filter(|p| p.index >= index) {
                return Err(LogStoreError::TruncatePurged {
                    index,
                    purged: purged.index,
                });
            }
            let Some(i) = shared.segments.iter().position(|s| s.holds(index)) else {
                return Ok(()); // nothing at or after `index`
            };
            let view = &shared.segments[i];
            let new_last = match index.checked_sub(1) {
                None => None,
                Some(prev) if shared.purged.is_some_and(|p| p.index == prev) => shared.purged,
                Some(prev) => match shared.locate(prev) {
                    Some(v) => Some(shared.read_entry(v, prev)?.log_id),
                    None => None,
                },
            };
            let removed: Vec<SegmentView> = shared.segments[i + 1..].to_vec();
            let pos = view.position(index, shared.entry_bytes_max)?;
            ((view.clone(), pos), new_last, removed)
        };
        let (view, pos) = cut_at;
        self.record(ManifestState {
            last: view.id,
            durable_pos: pos,
            cut: Some(pos),
            ..self.manifest
        })?;
        // Readers stop seeing the entries before their bytes change.
        let old_end = {
            let mut shared = self.shared_mut();
            let keep = shared.segments.iter().position(|s| s.id == view.id);
            let keep = keep.map_or(0, |k| k + 1);
            shared.segments.truncate(keep);
            let mut old_end = view.end_pos;
            if let Some(last) = shared.segments.last_mut() {
                last.count = index - last.first_index;
                last.index.truncate_from(index);
                if view.id == self.writer.header().id {
                    old_end = self.writer.end();
                }
                last.end_pos = pos;
            }
            shared.last_entry = new_last;
            old_end
        };
        for gone in &removed {
            self.disk.remove(&gone.path)?;
        }
        if !removed.is_empty() {
            self.disk.sync_dir(&self.paths.dir)?;
        }
        let header = read_header(&*view.file, &view.path)?;
        let scan = Scan {
            header: Some(header),
            file_len: view.file.size()?,
            data_end: old_end,
            n_entries: 0,
            torn: None,
            corruption: None,
        };
        self.writer = SegmentWriter::resume(&view.path, view.file.clone(), &scan, pos)?;
        self.record(ManifestState {
            last: view.id,
            durable_pos: pos,
            cut: None,
            ..self.manifest
        })
    }

    fn purge_inner(&mut self, log_id: GroupLogId) -> Result<(), LogStoreError> {
        let (all, first_kept, reuse_last) = {
            let shared = self.shared();
            if shared.purged.is_some_and(|p| p.index >= log_id.index) {
                return Ok(());
            }
            let all = shared.last_entry.is_none_or(|l| l.index <= log_id.index);
            // An empty last segment (a roll whose entries never came, a purge before) can take
            // the entries after the purge point: a new one could even take its name.
            let reuse_last = shared.segments.last().is_some_and(|s| s.count == 0);
            // The first segment holding an entry after the purge point.
            let first_kept = shared
                .segments
                .iter()
                .rposition(|s| s.first_index <= log_id.index + 1)
                .unwrap_or(0);
            (all, first_kept, reuse_last)
        };
        let removed: Vec<SegmentView> = if all {
            if reuse_last {
                let id = self.writer.header().id;
                self.record(ManifestState {
                    purged: Some(log_id),
                    first: id,
                    ..self.current()
                })?;
            } else {
                self.roll(log_id.index + 1, Some(log_id))?;
            }
            let mut shared = self.shared_mut();
            shared.purged = Some(log_id);
            shared.last_entry = None;
            let n = shared.segments.len() - 1;
            shared.segments.drain(..n).collect()
        } else {
            let first = self.shared().segments[first_kept].id;
            self.record(ManifestState {
                purged: Some(log_id),
                first,
                ..self.current()
            })?;
            let mut shared = self.shared_mut();
            shared.purged = Some(log_id);
            shared.segments.drain(..first_kept).collect()
        };
        for gone in &removed {
            self.disk.remove(&gone.path)?;
        }
        if !removed.is_empty() {
            self.disk.sync_dir(&self.paths.dir)?;
        }
        Ok(())
    }
}

/// Reads and checks a segment's header.
fn read_header(file: &dyn DiskFile, path: &Path) -> Result<SegmentHeader, LogStoreError> {
    let mut bytes = [0u8; SEGMENT_HEADER_LEN as usize];
    let mut got = 0;
    while got < bytes.len() {
        let n = file.read_at(got as u64, &mut bytes[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    SegmentHeader::decode(&bytes, SEGMENT_KIND)
        .map_err(|(pos, kind)| Corruption::new(path, pos, kind).into())
}

fn create_segment(
    disk: &dyn Disk,
    dir: &Path,
    id: u64,
    config: &LogStoreConfig,
) -> Result<(SegmentView, SegmentWriter), LogStoreError> {
    let path = dir.join(format::segment_name(id));
    let header = SegmentHeader {
        kind: SEGMENT_KIND,
        id,
        preallocated: config.segment_bytes_max.max(SEGMENT_HEADER_LEN),
    };
    let writer = SegmentWriter::create(disk, &path, header)?;
    let view = SegmentView::new(id, path, writer.file().clone(), config);
    Ok((view, writer))
}

/// The reading phase: manifest, segments, entries. Changes nothing on disk.
fn recover(
    disk: &dyn Disk,
    paths: &LogStorePaths,
    config: &LogStoreConfig,
) -> Result<Recovered, LogStoreError> {
    let manifest = match SlotFile::open(disk, &paths.manifest, MANIFEST_KIND)? {
        None => None,
        Some((file, body)) => {
            let state = ManifestState::decode(&body).map_err(|reason| {
                Corruption::new(&paths.manifest, 0, CorruptionKind::Payload(reason))
            })?;
            Some((file, state))
        }
    };
    let listed = list_segments(disk, &paths.dir)?;
    let mut out = Recovered {
        manifest: None,
        segments: Vec::new(),
        leftovers: Vec::new(),
        last_entry: None,
        recovery: LogRecovery::default(),
    };
    let Some((_, state)) = &manifest else {
        // A store's first segment is created before its manifest: segments without a manifest
        // are a creation cut short only if none holds an entry.
        for id in listed.unwrap_or_default() {
            let path = paths.dir.join(format::segment_name(id));
            let file = disk.open(&path, false)?;
            if !segment::holds_no_entries(&*file, id, config.entry_bytes_max)? {
                return Err(missing(
                    &paths.manifest,
                    format!(
                        "the manifest is gone, but segment {} holds entries",
                        path.display()
                    ),
                )
                .into());
            }
            out.leftovers.push(id);
        }
        return Ok(out);
    };
    let state = *state;
    let Some(ids) = listed else {
        return Err(missing(
            &paths.dir,
            format!(
                "the raft log directory is gone, but its manifest {} records segments {}..={}",
                paths.manifest.display(),
                state.first,
                state.last
            ),
        )
        .into());
    };
    for id in ids.iter().copied().filter(|id| *id > state.last) {
        // After the last segment: removed by a truncation (the cut is still recorded), or a
        // roll cut short, which never held an entry.
        let path = paths.dir.join(format::segment_name(id));
        let file = disk.open(&path, false)?;
        if state.cut.is_none() && !segment::holds_no_entries(&*file, id, config.entry_bytes_max)? {
            return Err(missing(
                &path,
                format!(
                    "segment after the last one recorded by {} holds entries",
                    paths.manifest.display()
                ),
            )
            .into());
        }
        out.leftovers.push(id);
    }
    // Before the first: removed by a purge that recorded its new first segment.
    out.leftovers
        .extend(ids.iter().copied().filter(|id| *id < state.first));
    let kept: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| (state.first..=state.last).contains(id))
        .collect();
    if kept.first() != Some(&state.first) || kept.last() != Some(&state.last) {
        let gone = if kept.first() != Some(&state.first) {
            state.first
        } else {
            state.last
        };
        return Err(missing(
            &paths.dir.join(format::segment_name(gone)),
            format!("segment {gone} recorded by the manifest is gone"),
        )
        .into());
    }
    let mut next: Option<u64> = None;
    for id in kept {
        let scanned = scan_segment(disk, paths, config, &state, id, &mut next, &mut out)?;
        out.segments.push(scanned);
    }
    if let (Some(purged), Some(first)) = (state.purged, out.segments.first()) {
        let first_index = first.view.first_index;
        if first.view.count > 0 && first_index > purged.index + 1 {
            return Err(missing(
                &first.view.path,
                format!(
                    "raft entries {}..{first_index} after the purge point are gone",
                    purged.index + 1
                ),
            )
            .into());
        }
    }
    out.manifest = manifest;
    Ok(out)
}

/// Scans one segment of the manifest's range, checking that its entries continue the log.
fn scan_segment(
    disk: &dyn Disk,
    paths: &LogStorePaths,
    config: &LogStoreConfig,
    state: &ManifestState,
    id: u64,
    next: &mut Option<u64>,
    out: &mut Recovered,
) -> Result<Scanned, LogStoreError> {
    let path = paths.dir.join(format::segment_name(id));
    let file = disk.open(&path, false)?;
    let is_last = id == state.last;
    let cut = state.cut.filter(|_| is_last);
    let expect = ScanExpect {
        id: Some(id),
        durable_end: if is_last { state.durable_pos } else { 0 },
        sealed: !is_last,
        entry_bytes_max: config.entry_bytes_max,
    };
    let mut view = SegmentView::new(id, path.clone(), file.clone(), config);
    let mut last_term = out.last_entry.map_or(0, |l| l.leader_id.term);
    let scan = segment::scan(&*file, &path, SEGMENT_KIND, &expect, |pos, payload| {
        if cut.is_some_and(|c| pos >= c) {
            return Ok(()); // removed by the truncation in progress
        }
        let stored: StoredEntry = codec::decode(payload).map_err(|e| e.to_string())?;
        if let Some(expected) = next.filter(|n| *n != stored.index) {
            return Err(format!(
                "raft entry {} where {expected} must come next",
                stored.index
            ));
        }
        if stored.index < id && next.is_none() {
            return Err(format!(
                "raft entry {} before its segment's id {id}",
                stored.index
            ));
        }
        if stored.term < last_term {
            return Err(format!(
                "raft entry {} of term {} after term {last_term}",
                stored.index, stored.term
            ));
        }
        last_term = stored.term;
        view.push(stored.index, pos, pos + segment::entry_len(payload.len()));
        *next = Some(stored.index + 1);
        out.last_entry = Some(stored.log_id());
        Ok(())
    })?;
    // A truncation in progress owns everything from its cut on, damage included.
    let excused = |c: &Corruption| cut.is_some_and(|at| c.pos >= at);
    if let Some(corruption) = scan.corruption.as_ref().filter(|c| !excused(c)) {
        return Err(corruption.clone().into());
    }
    out.recovery.n_segments += 1;
    out.recovery.n_entries += view.count;
    Ok(Scanned { view, scan })
}

/// The writing phase: remove leftovers, zero the torn tail or the interrupted cut, record the
/// recovered end.
fn make_writable(
    disk: Arc<dyn Disk>,
    paths: &LogStorePaths,
    config: LogStoreConfig,
    recovered: Recovered,
) -> Result<(Core, LogRecovery), LogStoreError> {
    let Recovered {
        manifest,
        mut segments,
        leftovers,
        last_entry,
        mut recovery,
    } = recovered;
    for id in &leftovers {
        disk.remove(&paths.dir.join(format::segment_name(*id)))?;
    }
    if !leftovers.is_empty() {
        disk.sync_dir(&paths.dir)?;
    }
    let (manifest_file, state, writer) = match (manifest, segments.pop()) {
        (Some((file, state)), Some(last)) => {
            let writer = resume_last(&last, &state, &mut recovery)?;
            segments.push(last);
            (file, state, writer)
        }
        _ => {
            // A new store (or one whose creation was cut short): segment 0, then the manifest.
            disk.create_dir_all(&paths.dir)?;
            let (view, writer) = create_segment(&*disk, &paths.dir, 0, &config)?;
            let state = ManifestState::default();
            if let Some(dir) = paths.manifest.parent() {
                disk.create_dir_all(dir)?;
            }
            let file = SlotFile::create(&*disk, &paths.manifest, MANIFEST_KIND, &state.encode())?;
            segments = vec![Scanned {
                view,
                scan: Scan {
                    header: None,
                    file_len: 0,
                    data_end: 0,
                    n_entries: 0,
                    torn: None,
                    corruption: None,
                },
            }];
            (file, state, writer)
        }
    };
    let views: Vec<SegmentView> = segments.into_iter().map(|s| s.view).collect();
    let shared = Shared {
        last_entry,
        purged: state.purged,
        entry_bytes_max: config.entry_bytes_max,
        segments: views,
    };
    let mut store = Core {
        disk,
        paths: paths.clone(),
        config,
        manifest_file,
        manifest: state,
        writer,
        shared: Arc::new(RwLock::new(shared)),
        broken: None,
    };
    // Always recorded, even unchanged: after a failed fdatasync the slot read may exist only in
    // the page cache, and this store now acts on it (a vote must never go back).
    let end = ManifestState {
        cut: None,
        ..store.current()
    };
    store.record(end)?;
    Ok((store, recovery))
}

/// Resumes the last segment at its recovered end, zeroing what follows (a torn tail, or what
/// an interrupted truncation removed).
fn resume_last(
    last: &Scanned,
    state: &ManifestState,
    recovery: &mut LogRecovery,
) -> Result<SegmentWriter, LogStoreError> {
    let view = &last.view;
    let mut scan = last.scan.clone();
    let Some(header) = scan.header else {
        return Err(missing(&view.path, "segment header unreadable".into()).into());
    };
    if scan.corruption.is_some() {
        // Only damage after an interrupted cut gets here: zero everything after the cut.
        scan.corruption = None;
        scan.torn = None;
        scan.data_end = header.preallocated.min(scan.file_len);
    }
    let dirty_end = scan
        .torn
        .map_or(scan.data_end, |t| t.end.max(scan.data_end));
    let end = state.cut.unwrap_or(view.end_pos).min(scan.data_end);
    recovery.discarded_bytes = dirty_end.saturating_sub(end);
    rewrite_adopted(view, state.durable_pos, end)?;
    Ok(SegmentWriter::resume(
        &view.path,
        view.file.clone(),
        &scan,
        end,
    )?)
}

/// Writes the entries adopted after the last recorded durable end again. After a failed
/// `fdatasync` their pages stay readable but are clean (Linux), so a plain sync would not make
/// them durable, and the store is about to treat them as flushed; written again, the sync in
/// `SegmentWriter::resume` does. Entries from before the recorded durable end were synced.
fn rewrite_adopted(view: &SegmentView, durable_pos: u64, end: u64) -> Result<(), LogStoreError> {
    let mut pos = durable_pos.max(SEGMENT_HEADER_LEN);
    let mut buf = vec![0u8; 1 << 16];
    while pos < end {
        let n = ((end - pos) as usize).min(buf.len());
        let got = view.file.read_at(pos, &mut buf[..n])?;
        if got == 0 {
            break;
        }
        view.file.write_at(pos, &buf[..got])?;
        pos += got as u64;
    }
    Ok(())
}

fn storage_error(error: LogStoreError) -> GroupStorageError {
    StorageIOError::write_logs(AnyError::new(&error)).into()
}

fn read_error(error: LogStoreError) -> GroupStorageError {
    StorageIOError::read_logs(AnyError::new(&error)).into()
}

fn range_of<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl LogStoreReader {
    /// The entries of `range` the log holds (purged ones excluded); damage is an error. Reads
    /// on the calling thread.
    pub fn entries(&self, start: u64, end: u64) -> Result<Vec<GroupEntry>, LogStoreError> {
        read_shared(&self.shared, start, end)
    }
}

/// Reads `[start, end)` holding the lock, so a truncation cannot zero bytes under the read.
fn read_shared(
    shared: &RwLock<Shared>,
    start: u64,
    end: u64,
) -> Result<Vec<GroupEntry>, LogStoreError> {
    let shared = shared.read().unwrap_or_else(|p| p.into_inner());
    shared.read(start, end)
}

impl RaftLogReader<GroupConfig> for LogStoreReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<GroupEntry>, GroupStorageError> {
        let (start, end) = range_of(&range);
        let shared = self.shared.clone();
        run_blocking(self.blocking, move || read_shared(&shared, start, end))
            .await
            .map_err(read_error)
    }
}

impl RaftLogReader<GroupConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<GroupEntry>, GroupStorageError> {
        self.reader().try_get_log_entries(range).await
    }
}

impl RaftLogStorage<GroupConfig> for LogStore {
    type LogReader = LogStoreReader;

    async fn get_log_state(&mut self) -> Result<LogState<GroupConfig>, GroupStorageError> {
        let (last_purged_log_id, last_log_id) = self.log_state();
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &GroupVote) -> Result<(), GroupStorageError> {
        let vote = *vote;
        self.blocking(move |core| core.save_vote(&vote))
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<GroupVote>, GroupStorageError> {
        Ok(self.vote())
    }

    async fn save_committed(
        &mut self,
        committed: Option<GroupLogId>,
    ) -> Result<(), GroupStorageError> {
        self.blocking(move |core| core.save_committed(committed))
            .await
            .map_err(storage_error)
    }

    async fn read_committed(&mut self) -> Result<Option<GroupLogId>, GroupStorageError> {
        Ok(self.committed())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<GroupConfig>,
    ) -> Result<(), GroupStorageError>
    where
        I: IntoIterator<Item = GroupEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<GroupEntry> = entries.into_iter().collect();
        let result = self
            .blocking(move |core| core.mutate(|core| core.append_inner(&entries)))
            .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                Err(storage_error(error))
            }
        }
    }

    async fn truncate(&mut self, log_id: GroupLogId) -> Result<(), GroupStorageError> {
        let index = log_id.index;
        self.blocking(move |core| core.mutate(|core| core.truncate_inner(index)))
            .await
            .map_err(storage_error)
    }

    async fn purge(&mut self, log_id: GroupLogId) -> Result<(), GroupStorageError> {
        self.blocking(move |core| core.mutate(|core| core.purge_inner(log_id)))
            .await
            .map_err(storage_error)
    }
}
