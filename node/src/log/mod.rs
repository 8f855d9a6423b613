//! A partition log: segment files of the shared checksummed layer ([`sluice_proto::segment`]),
//! written with `fdatasync`, read by offset through a sparse in-memory index rebuilt from the
//! files at start-up, and a manifest recording what the partition must hold.
//!
//! [`open`] recovers a partition in two phases. Reading: the manifest says which segments must
//! exist (first and last base offset) and how far the last one is known durable; every segment
//! is scanned under the layer's recovery rule, its events replayed. Corruption anywhere (a
//! damaged entry, a missing segment or directory, a truncated file, segments without a manifest)
//! stops the scan there: what precedes it is readable through the [`LogReader`], and the log
//! stays read-only ([`Opened::writer`] is the corruption). Writing: otherwise the last segment's
//! torn tail (and anything past the caller's durable mark) is zeroed and synced and the manifest
//! rewritten with the recovered end, so later damage below it is caught; a failure here (a full
//! disk) leaves the log readable and the caller may open it again later.
//!
//! [`LogWriter`] is owned by one flusher at a time (the partition actor hands it to the blocking
//! pool for each group commit); [`LogReader`] is shared by fetches. The log holds only what was
//! written; which offsets are durable (and so readable) is the partition's business.
//!
//! It does not compact, expire or replicate: retention and raft arrive with the cluster work.

pub(crate) mod format;

use format::{ManifestState, SEGMENT_KIND};
use sluice_proto::env::{Disk, DiskError, DiskFile};
use sluice_proto::segment::{
    self, Corruption, CorruptionKind, ScanExpect, SegmentError, SegmentHeader, SegmentWriter,
    SlotFile, SparseIndex, SEGMENT_HEADER_LEN,
};
use sluice_proto::{codec, Event, Offset, StoredEvent};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Sizes of a log.
#[derive(Debug, Clone, Copy)]
pub struct LogConfig {
    /// Preallocated size of a segment; a segment is closed when the next entry would not fit.
    pub segment_bytes_max: u64,
    /// One sparse index point per this many bytes of entries.
    pub index_interval_bytes: u64,
    /// The largest entry payload accepted on recovery and on read.
    pub entry_bytes_max: u32,
    /// How often, at most, the partition records its durable end in the manifest after a group
    /// commit ([`LogWriter::record_durable_end`]): damage to entries below the recorded end is
    /// corruption, never a torn tail. Zero records after every group commit.
    pub durable_record_interval: std::time::Duration,
}

/// Where a partition's log lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPaths {
    /// The directory of the segment files.
    pub dir: PathBuf,
    /// The manifest file, outside `dir` so that losing the directory is detected.
    pub manifest: PathBuf,
    /// The node's catalog records the partition as created (see `crate::catalog`): its
    /// directory or manifest must exist, so losing both is corruption, not a new partition.
    pub created: bool,
}

/// A log operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// The disk refused.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A segment operation failed (a full disk at preallocation, a broken writer, …).
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// Data that was once durable is damaged or gone; the log is read-only.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    /// An entry larger than an empty segment can hold.
    #[error("entry of {len} bytes cannot fit in a segment of {segment_bytes_max} bytes")]
    EntryTooLarge {
        /// Bytes of the entry.
        len: u64,
        /// The configured segment size.
        segment_bytes_max: u64,
    },
}

impl LogError {
    /// The corruption, when this error is one.
    pub fn corruption(&self) -> Option<&Corruption> {
        match self {
            LogError::Corrupt(c) | LogError::Segment(SegmentError::Corrupt(c)) => Some(c),
            _ => None,
        }
    }

    /// True when the disk is full.
    pub fn is_no_space(&self) -> bool {
        match self {
            LogError::Disk(e) => e.is_no_space(),
            LogError::Segment(e) => e.is_no_space(),
            _ => false,
        }
    }
}

/// What recovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segment files recovered.
    pub n_segments: u32,
    /// Entries found intact.
    pub n_entries: u64,
    /// The offset the next event will get (one past the readable prefix when corrupt).
    pub next_offset: Offset,
    /// Bytes of a torn, unacknowledged tail, or past the durable mark, that were discarded.
    pub truncated_bytes: u64,
}

/// One entry ready to be written: `count` events encoded back to back, the first at `base`.
#[derive(Debug, Clone)]
pub struct PendingEntry {
    /// Offset of the first event.
    pub base: Offset,
    /// Number of events.
    pub count: u32,
    /// The encoded events.
    pub body: Vec<u8>,
}

#[derive(Clone)]
struct SegmentView {
    base: Offset,
    path: PathBuf,
    file: Arc<dyn DiskFile>,
    /// First offset of an entry → its byte position, every `index_interval_bytes` or so.
    index: SparseIndex,
    /// One past the last offset written to this segment.
    end: Offset,
    /// Byte position after the last entry.
    end_pos: u64,
}

/// What a read needs of the segment it reads: a [`SegmentView`] without its index.
struct Located {
    base: Offset,
    path: PathBuf,
    file: Arc<dyn DiskFile>,
    end_pos: u64,
}

/// The manifest file ([`format::MANIFEST_KIND`]) and the state it last recorded.
struct Manifest {
    slots: SlotFile,
    state: ManifestState,
}

impl Manifest {
    /// Reads the manifest: `None` when the file does not exist; corruption when neither slot
    /// checks.
    fn read(disk: &dyn Disk, path: &Path) -> Result<Option<Manifest>, LogError> {
        let opened = SlotFile::open(disk, path, format::MANIFEST_KIND).map_err(|e| match e {
            SegmentError::Corrupt(c) => LogError::Corrupt(c),
            other => other.into(),
        })?;
        let Some((slots, body)) = opened else {
            return Ok(None);
        };
        let state = format::decode_manifest(&body).ok_or_else(|| {
            Corruption::new(
                path,
                0,
                CorruptionKind::Missing("a manifest slot too short for its state".into()),
            )
        })?;
        Ok(Some(Manifest { slots, state }))
    }

    /// Creates the manifest with its first state and makes it and its directory entry durable.
    fn create(disk: &dyn Disk, path: &Path, state: ManifestState) -> Result<Manifest, LogError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        disk.create_dir_all(dir)?;
        let slots = SlotFile::create(
            disk,
            path,
            format::MANIFEST_KIND,
            &format::encode_manifest(&state),
        )?;
        Ok(Manifest { slots, state })
    }

    /// Records a new state in the older slot and syncs it.
    fn write(&mut self, state: ManifestState) -> Result<(), LogError> {
        self.slots.write(&format::encode_manifest(&state))?;
        self.state = state;
        Ok(())
    }
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

/// Appends to a partition log. Not shared: one owner at a time.
pub struct LogWriter {
    paths: LogPaths,
    disk: Arc<dyn Disk>,
    config: LogConfig,
    manifest: Manifest,
    segments: Arc<RwLock<Vec<SegmentView>>>,
    active: SegmentView,
    writer: SegmentWriter,
    /// One past the last offset made durable.
    durable: Offset,
}

/// Reads a partition log by offset. Cheap to clone.
#[derive(Clone)]
pub struct LogReader {
    segments: Arc<RwLock<Vec<SegmentView>>>,
    entry_bytes_max: u32,
    /// The first damage a read met (data below the durable end that no longer checks).
    damage: Arc<std::sync::Mutex<Option<Corruption>>>,
}

/// A recovered log.
pub struct Opened {
    /// Reads what was recovered (the prefix before any corruption).
    pub reader: LogReader,
    /// What recovery found.
    pub recovery: Recovery,
    /// The writer; or why the log cannot be written: [`LogError::corruption`] for damage (the
    /// log stays read-only), another error (a full disk) when opening again later may succeed.
    pub writer: Result<LogWriter, LogError>,
}

/// Decodes the events of one entry payload checked against the offset it must start at,
/// calling `each` with each event's offset and encoded length.
fn decode_events(
    payload: &[u8],
    expected: Option<Offset>,
    mut each: impl FnMut(Offset, Event, usize),
) -> Result<(Offset, u32), String> {
    let (base, count, body) = format::decode_entry(payload)?;
    if let Some(expected) = expected.filter(|e| *e != base) {
        return Err(format!(
            "entry starts at offset {base}, expected {expected}"
        ));
    }
    let mut rest = body;
    for i in 0..count {
        let (event, used) = codec::decode_prefix::<Event>(rest)
            .map_err(|e| format!("event {i} of the entry at offset {base}: {e}"))?;
        rest = &rest[used..];
        each(Offset(base.0 + u64::from(i)), event, used);
    }
    if !rest.is_empty() {
        return Err(format!("entry at offset {base} is longer than its events"));
    }
    Ok((base, count))
}

/// The segment files of `dir` by base offset; `None` when the directory does not exist.
fn list_segments(disk: &dyn Disk, dir: &Path) -> Result<Option<Vec<Offset>>, LogError> {
    match disk.list(dir) {
        Ok(names) => Ok(Some(
            names
                .iter()
                .filter_map(|n| format::parse_segment_name(n))
                .collect(),
        )),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What the reading phase leaves for the writing phase.
struct Scanned {
    views: Vec<SegmentView>,
    manifest: Option<Manifest>,
    /// The last segment's scan and where to resume it (nothing past the durable mark).
    last: Option<(segment::Scan, u64)>,
    /// Segment files after the manifest's last one, left by a roll cut short.
    leftovers: Vec<Offset>,
    corruption: Option<Corruption>,
    recovery: Recovery,
}

fn missing(path: &Path, what: String) -> Corruption {
    Corruption::new(path, 0, CorruptionKind::Missing(what))
}

/// The reading phase: manifest, segments, replay. Changes nothing on disk.
fn recover(
    disk: &dyn Disk,
    paths: &LogPaths,
    config: &LogConfig,
    durable_mark: Option<Offset>,
    each: &mut impl FnMut(Offset, Event),
) -> Result<Scanned, LogError> {
    let mut out = Scanned {
        views: Vec::new(),
        manifest: None,
        last: None,
        leftovers: Vec::new(),
        corruption: None,
        recovery: Recovery::default(),
    };
    // A manifest none of whose slots checks is corruption, unless the partition's creation was
    // cut short while writing it (decided below, like a missing manifest).
    let (manifest, damaged_manifest) = match Manifest::read(disk, &paths.manifest) {
        Ok(m) => (m, None),
        Err(LogError::Corrupt(c)) => (None, Some(c)),
        Err(e) => return Err(e),
    };
    let listed = list_segments(disk, &paths.dir)?;
    let bases = listed.clone().unwrap_or_default();
    let (first, last, durable) = match &manifest {
        Some(m) => {
            if listed.is_none() {
                out.corruption = Some(missing(
                    &paths.dir,
                    format!(
                        "the partition directory is gone, but its manifest {} records segments {}..={}",
                        paths.manifest.display(),
                        m.state.first,
                        m.state.last
                    ),
                ));
                return Ok(out);
            }
            (m.state.first, m.state.last, Some(m.state))
        }
        None => match (bases.first(), bases.last()) {
            (None, _) | (_, None) => {
                // Segment 0 is created before the manifest: a manifest without any segment
                // means the segments were lost. Neither, for a partition the catalog records,
                // means both were.
                out.corruption = damaged_manifest.or_else(|| {
                    paths.created.then(|| {
                        missing(
                            &paths.dir,
                            format!(
                                "the partition directory and its manifest {} are gone, but the node's partition catalog records the partition",
                                paths.manifest.display()
                            ),
                        )
                    })
                });
                return Ok(out);
            }
            (Some(first), Some(last)) => (*first, *last, None),
        },
    };
    out.leftovers = bases.iter().copied().filter(|b| *b > last).collect();
    let mut expected = first;
    for base in bases.iter().copied().filter(|b| *b >= first && *b <= last) {
        let path = paths.dir.join(format::segment_name(base));
        if base != expected {
            out.corruption = Some(missing(
                &paths.dir.join(format::segment_name(expected)),
                format!("segment of offsets {expected}..{base} is gone"),
            ));
            return Ok(out);
        }
        let is_last = base == last;
        let file = disk.open(&path, false)?;
        let expect = ScanExpect {
            id: Some(base.0),
            durable_end: match durable {
                Some(state) if is_last => state.durable_pos,
                _ => 0,
            },
            sealed: !is_last,
            entry_bytes_max: config.entry_bytes_max,
        };
        let mut view = SegmentView {
            base,
            path: path.clone(),
            file: file.clone(),
            index: SparseIndex::new(config.index_interval_bytes),
            end: base,
            end_pos: SEGMENT_HEADER_LEN,
        };
        // Entries from the durable mark on are not adopted: after a failed fdatasync their bytes
        // may exist only in the page cache (only the last segment can hold such entries).
        let mut cut: Option<u64> = None;
        let mut n_entries = 0u64;
        let scan = segment::scan(&*file, &path, SEGMENT_KIND, &expect, |pos, payload| {
            let (entry_base, _, _) = format::decode_entry(payload)?;
            let adopt = !is_last || durable_mark.is_none_or(|m| entry_base < m);
            if cut.is_some() || !adopt {
                cut.get_or_insert(pos);
                return Ok(());
            }
            let (entry_base, count) =
                decode_events(payload, Some(view.end), |offset, event, _| {
                    each(offset, event)
                })?;
            view.index.note(entry_base.0, pos);
            view.end = Offset(entry_base.0 + u64::from(count));
            view.end_pos = pos + segment::entry_len(payload.len());
            n_entries += 1;
            Ok(())
        })?;
        out.recovery.n_segments += 1;
        out.recovery.n_entries += n_entries;
        out.recovery.next_offset = view.end;
        expected = view.end;
        out.views.push(view);
        if let Some(corruption) = scan.corruption {
            out.corruption = Some(corruption);
            return Ok(out);
        }
        if is_last {
            let resume_at = cut.unwrap_or(scan.data_end);
            let dirty_end = scan
                .torn
                .map_or(scan.data_end, |t| t.end.max(scan.data_end));
            out.recovery.truncated_bytes = dirty_end - resume_at;
            if let Some(state) = durable.filter(|s| expected < s.durable_offset) {
                out.corruption = Some(Corruption::new(
                    &path,
                    resume_at,
                    CorruptionKind::Missing(format!(
                        "offsets {expected}..{} recorded durable",
                        state.durable_offset
                    )),
                ));
                return Ok(out);
            }
            out.last = Some((scan, resume_at));
        }
    }
    if out.views.last().map(|v| v.base) != Some(last) {
        let path = paths.dir.join(format::segment_name(last));
        out.corruption = Some(missing(
            &path,
            format!(
                "the last segment recorded by the manifest {} is gone",
                paths.manifest.display()
            ),
        ));
        return Ok(out);
    }
    match manifest {
        Some(m) => out.manifest = Some(m),
        None => {
            // Segments without a manifest are a partition whose creation was cut short (one
            // empty first segment) or one whose manifest was lost.
            let fresh = out.views.len() == 1 && out.recovery.n_entries == 0 && first == Offset(0);
            if !fresh {
                out.corruption = Some(damaged_manifest.unwrap_or_else(|| {
                    missing(
                        &paths.manifest,
                        format!(
                            "the manifest is gone, but {} holds segments",
                            paths.dir.display()
                        ),
                    )
                }));
            }
        }
    }
    Ok(out)
}

/// Opens (or creates) the log at `paths`, recovering every segment (see the module doc). `each`
/// sees every recovered event, to rebuild state. `durable_mark`, when known, is one past the
/// last offset this process saw made durable: after a failed `fdatasync` the unwritten pages
/// stay readable but may never reach the disk, so recovery does not adopt anything from it on.
///
/// `Err` only when the disk cannot even be read; corruption and a log that cannot be made
/// writable are reported in [`Opened::writer`].
pub fn open(
    disk: Arc<dyn Disk>,
    paths: &LogPaths,
    config: LogConfig,
    durable_mark: Option<Offset>,
    mut each: impl FnMut(Offset, Event),
) -> Result<Opened, LogError> {
    let scanned = recover(&*disk, paths, &config, durable_mark, &mut each)?;
    let recovery = scanned.recovery.clone();
    let segments = Arc::new(RwLock::new(scanned.views.clone()));
    let reader = LogReader {
        segments: segments.clone(),
        entry_bytes_max: config.entry_bytes_max,
        damage: Arc::default(),
    };
    let writer = match scanned.corruption.clone() {
        Some(corruption) => Err(LogError::Corrupt(corruption)),
        None => make_writable(disk, paths, config, scanned, segments),
    };
    Ok(Opened {
        reader,
        recovery,
        writer,
    })
}

/// Checks a log without changing anything: what [`open`] would recover and the corruption it
/// would report, if any.
pub fn check(
    disk: &dyn Disk,
    paths: &LogPaths,
    config: LogConfig,
) -> Result<(Recovery, Option<Corruption>), LogError> {
    let scanned = recover(disk, paths, &config, None, &mut |_, _| {})?;
    Ok((scanned.recovery, scanned.corruption))
}

/// The writing phase: cut the tail, drop leftovers of a cut roll, record the recovered end.
fn make_writable(
    disk: Arc<dyn Disk>,
    paths: &LogPaths,
    config: LogConfig,
    scanned: Scanned,
    segments: Arc<RwLock<Vec<SegmentView>>>,
) -> Result<LogWriter, LogError> {
    let Scanned {
        mut views,
        manifest,
        last,
        leftovers,
        ..
    } = scanned;
    for base in leftovers {
        // A roll cut short at any step of the segment's creation (possibly before its header or
        // preallocation reached the disk): never recorded, so never written to. Refuse to remove
        // one in which any entry checks.
        let path = paths.dir.join(format::segment_name(base));
        let file = disk.open(&path, false)?;
        if !segment::holds_no_entries(&*file, base.0, config.entry_bytes_max)? {
            return Err(Corruption::new(
                &path,
                SEGMENT_HEADER_LEN,
                CorruptionKind::Missing(format!(
                    "segment after the last one recorded by {} holds data",
                    paths.manifest.display()
                )),
            )
            .into());
        }
        drop(file);
        disk.remove(&path)?;
        disk.sync_dir(&paths.dir)?;
    }
    let (active, writer) = match (views.pop(), last) {
        (Some(view), Some((scan, resume_at))) => {
            // With a durable mark the view already stops at `resume_at`.
            let writer = SegmentWriter::resume(&view.path, view.file.clone(), &scan, resume_at)?;
            (view, writer)
        }
        _ => {
            disk.create_dir_all(&paths.dir)?;
            let (view, writer) = create_segment(&*disk, &paths.dir, Offset(0), &config)?;
            segments
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push(view.clone());
            (view, writer)
        }
    };
    let state = ManifestState {
        first: views.first().map_or(active.base, |v| v.base),
        last: active.base,
        durable_offset: active.end,
        durable_pos: active.end_pos,
    };
    let manifest = match manifest {
        Some(mut m) => {
            m.write(state)?;
            m
        }
        None => Manifest::create(&*disk, &paths.manifest, state)?,
    };
    Ok(LogWriter {
        paths: paths.clone(),
        disk,
        config,
        manifest,
        segments,
        durable: active.end,
        active,
        writer,
    })
}

fn create_segment(
    disk: &dyn Disk,
    dir: &Path,
    base: Offset,
    config: &LogConfig,
) -> Result<(SegmentView, SegmentWriter), LogError> {
    let path = dir.join(format::segment_name(base));
    let header = SegmentHeader {
        kind: SEGMENT_KIND,
        id: base.0,
        preallocated: config.segment_bytes_max.max(SEGMENT_HEADER_LEN),
    };
    let writer = SegmentWriter::create(disk, &path, header)?;
    let view = SegmentView {
        base,
        path,
        file: writer.file().clone(),
        index: SparseIndex::new(config.index_interval_bytes),
        end: base,
        end_pos: SEGMENT_HEADER_LEN,
    };
    Ok((view, writer))
}

impl LogWriter {
    /// The offset the next event gets.
    pub fn next_offset(&self) -> Offset {
        self.active.end
    }

    /// One past the last offset made durable (after a failed append, what did reach the disk).
    pub fn durable_offset(&self) -> Offset {
        self.durable
    }

    /// Writes entries and makes them durable (`fdatasync`) before returning: one call is one
    /// group commit, whatever the number of entries (one more sync per segment rolled).
    pub fn append(&mut self, entries: &[PendingEntry]) -> Result<(), LogError> {
        let mut batch: Vec<(Offset, u32, Vec<u8>)> = Vec::new();
        let mut batch_len = 0u64;
        let mut expected = self.active.end;
        for entry in entries {
            assert_eq!(entry.base, expected, "entries must be contiguous");
            expected = Offset(entry.base.0 + u64::from(entry.count));
            let payload = format::encode_entry(entry.base, entry.count, &entry.body);
            let len = segment::entry_len(payload.len());
            if len
                > self
                    .config
                    .segment_bytes_max
                    .saturating_sub(SEGMENT_HEADER_LEN)
            {
                return Err(LogError::EntryTooLarge {
                    len,
                    segment_bytes_max: self.config.segment_bytes_max,
                });
            }
            if batch_len + len > self.writer.room() {
                self.write_batch(&batch)?;
                self.roll()?;
                batch.clear();
                batch_len = 0;
            }
            batch_len += len;
            batch.push((entry.base, entry.count, payload));
        }
        self.write_batch(&batch)
    }

    /// Writes and syncs entries into the active segment, then publishes them to readers.
    fn write_batch(&mut self, batch: &[(Offset, u32, Vec<u8>)]) -> Result<(), LogError> {
        if batch.is_empty() {
            return Ok(());
        }
        let payloads: Vec<&[u8]> = batch.iter().map(|(_, _, p)| p.as_slice()).collect();
        let positions = self.writer.append(&payloads)?;
        self.writer.sync()?;
        for (pos, (base, count, _)) in positions.iter().zip(batch) {
            self.active.index.note(base.0, *pos);
            self.active.end = Offset(base.0 + u64::from(*count));
        }
        self.active.end_pos = self.writer.end();
        self.durable = self.active.end;
        let mut segments = self.segments.write().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = segments.last_mut() {
            // The readers' copy takes the same points (it was equal to `active` before).
            for (pos, (base, _, _)) in positions.iter().zip(batch) {
                last.index.note(base.0, *pos);
            }
            last.end = self.active.end;
            last.end_pos = self.active.end_pos;
        }
        Ok(())
    }

    /// Closes the active segment and starts the next: created and synced, then recorded in the
    /// manifest, and only then written to (so an unrecorded segment never holds data).
    fn roll(&mut self) -> Result<(), LogError> {
        let (view, writer) =
            create_segment(&*self.disk, &self.paths.dir, self.active.end, &self.config)?;
        let state = ManifestState {
            first: self.manifest.state.first,
            last: view.base,
            durable_offset: view.base,
            durable_pos: SEGMENT_HEADER_LEN,
        };
        // On failure the segment stays: the record may have reached the page cache (a failed
        // fdatasync leaves its pages readable), so the next open may read a manifest naming it.
        // Empty either way, it is then the last segment, or removed as a roll cut short.
        self.manifest.write(state)?;
        self.active = view.clone();
        self.writer = writer;
        self.segments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(view);
        Ok(())
    }

    /// Records the durable end in the manifest (one slot write and `fdatasync`) when it moved
    /// since the last record and everything written is durable, so that damage to the entries
    /// below it is caught at the next start instead of being taken for a torn write. A failure
    /// leaves the older record in place (the manifest's other slot), which only narrows what
    /// recovery can tell from a torn write; the caller may try again later.
    pub fn record_durable_end(&mut self) -> Result<(), LogError> {
        let state = ManifestState {
            first: self.manifest.state.first,
            last: self.active.base,
            durable_offset: self.active.end,
            durable_pos: self.active.end_pos,
        };
        if state != self.manifest.state && self.writer.durable_end() == self.active.end_pos {
            self.manifest.write(state)?;
        }
        Ok(())
    }

    /// Records the exact durable end in the manifest (a clean stop).
    pub fn close(mut self) -> Result<(), LogError> {
        self.record_durable_end()
    }
}

impl LogReader {
    /// A reader of nothing, for a partition whose disk could not be read yet.
    pub fn empty(entry_bytes_max: u32) -> LogReader {
        LogReader {
            segments: Arc::new(RwLock::new(Vec::new())),
            entry_bytes_max,
            damage: Arc::default(),
        }
    }

    /// The first corruption a read of this log met, if any: data below the durable end that
    /// checked at recovery and no longer does. The partition stops taking writes on it.
    pub fn damage(&self) -> Option<Corruption> {
        self.damage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The first offset stored.
    pub fn start(&self) -> Offset {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        segments.first().map_or(Offset(0), |s| s.base)
    }

    /// One past the last offset readable.
    pub fn end(&self) -> Offset {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        segments.last().map_or(Offset(0), |s| s.end)
    }

    /// Reads events from `from` up to (not including) `end`: at most `events_max` of them, and
    /// at most `bytes_max` bytes of encoded events (but always at least one event). Damage met
    /// on the way is an error, and is remembered ([`LogReader::damage`]).
    pub fn read(
        &self,
        from: Offset,
        end: Offset,
        events_max: u32,
        bytes_max: u32,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let read = self.read_inner(from, end, events_max, bytes_max);
        if let Err(Some(c)) = read.as_ref().map_err(LogError::corruption) {
            let mut damage = self.damage.lock().unwrap_or_else(|p| p.into_inner());
            damage.get_or_insert_with(|| c.clone());
        }
        read
    }

    fn read_inner(
        &self,
        from: Offset,
        end: Offset,
        events_max: u32,
        bytes_max: u32,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let mut out = Vec::new();
        let mut next = from;
        let mut bytes = 0u64;
        while next < end && (out.len() as u32) < events_max && bytes < u64::from(bytes_max) {
            let Some((view, mut pos)) = self.locate(next) else {
                break;
            };
            let mut advanced = false;
            while pos < view.end_pos
                && next < end
                && (out.len() as u32) < events_max
                && bytes < u64::from(bytes_max)
            {
                let (payload, after) = segment::read_entry(
                    &*view.file,
                    &view.path,
                    view.base.0,
                    pos,
                    view.end_pos,
                    self.entry_bytes_max,
                )?;
                let (base, count, _) = format::decode_entry(&payload).map_err(|reason| {
                    Corruption::new(&view.path, pos, CorruptionKind::Payload(reason))
                })?;
                let entry_end = Offset(base.0 + u64::from(count));
                if entry_end > next {
                    decode_events(&payload, None, |offset, event, used| {
                        let room = out.is_empty() || bytes + used as u64 <= u64::from(bytes_max);
                        if offset >= next && offset < end && (out.len() as u32) < events_max && room
                        {
                            bytes += used as u64;
                            out.push(StoredEvent { offset, event });
                        } else if offset >= next {
                            bytes = u64::from(bytes_max);
                        }
                    })
                    .map_err(|reason| {
                        Corruption::new(&view.path, pos, CorruptionKind::Payload(reason))
                    })?;
                    next = out
                        .last()
                        .map_or(next, |e| Offset(e.offset.0 + 1))
                        .max(next);
                    advanced = true;
                }
                pos = after;
            }
            if !advanced {
                break;
            }
        }
        Ok(out)
    }

    /// The segment holding `offset` (without its index) and the byte position to start
    /// scanning from.
    fn locate(&self, offset: Offset) -> Option<(Located, u64)> {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        let idx = segments
            .partition_point(|s| s.base <= offset)
            .checked_sub(1)?;
        let view = &segments[idx];
        if offset >= view.end {
            return None;
        }
        let pos = view
            .index
            .seek(offset.0)
            .map_or(SEGMENT_HEADER_LEN, |(_, pos)| pos);
        let located = Located {
            base: view.base,
            path: view.path.clone(),
            file: view.file.clone(),
            end_pos: view.end_pos,
        };
        Some((located, pos))
    }
}

#[cfg(test)]
mod tests;
