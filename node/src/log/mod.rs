//! A partition log: checksummed, preallocated segment files written with `fdatasync`, read by
//! offset through a sparse in-memory index that is rebuilt from the files at start-up.
//!
//! [`LogWriter`] is owned by one flusher at a time (the partition actor hands it to the blocking
//! pool for each group commit); [`LogReader`] is shared by fetches. The log holds only what was
//! written; which offsets are durable (and so readable) is the partition's business.
//!
//! It does not compact, expire or replicate: retention and raft arrive with the cluster work.

pub(crate) mod format;

use format::{EntryHeader, ENTRY_HEADER_LEN, SEGMENT_HEADER_LEN};
use sluice_proto::env::{Disk, DiskError, DiskFile};
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
    /// The largest entry body accepted on recovery and on read.
    pub entry_bytes_max: u32,
}

/// A log operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// The disk refused.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// Data that was once durable is damaged; the log refuses to guess.
    #[error("corrupt log {path} at byte {pos}: {reason}")]
    Corrupt {
        /// The segment file.
        path: String,
        /// Byte position in it.
        pos: u64,
        /// What is wrong.
        reason: String,
    },
}

/// What recovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segment files found.
    pub n_segments: u32,
    /// Entries found intact.
    pub n_entries: u64,
    /// The offset the next event will get.
    pub next_offset: Offset,
    /// Bytes of a torn or partial tail that were discarded (never acknowledged).
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
    /// `(first offset of an entry, its byte position)`, every `index_interval_bytes` or so.
    index: Vec<(Offset, u64)>,
    /// One past the last offset written to this segment.
    end: Offset,
    /// Byte position after the last entry.
    end_pos: u64,
}

/// Appends to a partition log. Not shared: one owner at a time.
pub struct LogWriter {
    dir: PathBuf,
    disk: Arc<dyn Disk>,
    config: LogConfig,
    segments: Arc<RwLock<Vec<SegmentView>>>,
    active: SegmentView,
    last_index_pos: u64,
    buffer: Vec<u8>,
}

/// Reads a partition log by offset. Cheap to clone.
#[derive(Clone)]
pub struct LogReader {
    segments: Arc<RwLock<Vec<SegmentView>>>,
    entry_bytes_max: u32,
}

fn segment_name(base: Offset) -> String {
    format!("{:020}.log", base.0)
}

fn corrupt(path: &Path, pos: u64, reason: impl Into<String>) -> LogError {
    LogError::Corrupt {
        path: path.display().to_string(),
        pos,
        reason: reason.into(),
    }
}

/// Decodes the events of one entry body, calling `each` with each event's offset.
fn decode_body(
    path: &Path,
    pos: u64,
    header: &EntryHeader,
    body: &[u8],
    mut each: impl FnMut(Offset, Event, usize),
) -> Result<(), LogError> {
    let mut rest = body;
    for i in 0..header.count {
        let (event, used) = codec::decode_prefix::<Event>(rest)
            .map_err(|e| corrupt(path, pos, format!("event {i} of entry: {e}")))?;
        rest = &rest[used..];
        each(Offset(header.base.0 + u64::from(i)), event, used);
    }
    if !rest.is_empty() {
        return Err(corrupt(path, pos, "entry body longer than its events"));
    }
    Ok(())
}

/// Reads the entry at `pos`: `Ok(None)` at the end of data or at an entry that does not check
/// (torn), else its header and body.
fn read_entry(
    file: &dyn DiskFile,
    pos: u64,
    file_len: u64,
    entry_bytes_max: u32,
) -> Result<Option<(EntryHeader, Vec<u8>)>, DiskError> {
    let mut header_bytes = [0u8; ENTRY_HEADER_LEN];
    if pos + ENTRY_HEADER_LEN as u64 > file_len
        || file.read_at(pos, &mut header_bytes)? < ENTRY_HEADER_LEN
    {
        return Ok(None);
    }
    let Some(header) = EntryHeader::parse(&header_bytes) else {
        return Ok(None);
    };
    let body_end = pos + ENTRY_HEADER_LEN as u64 + u64::from(header.body_len);
    if header.body_len > entry_bytes_max || header.count == 0 || body_end > file_len {
        return Ok(None);
    }
    let mut body = vec![0u8; header.body_len as usize];
    if file.read_at(pos + ENTRY_HEADER_LEN as u64, &mut body)? < body.len() {
        return Ok(None);
    }
    if !header.checks(&header_bytes, &body) {
        return Ok(None);
    }
    Ok(Some((header, body)))
}

impl LogWriter {
    /// Opens (or creates) the log in `dir`, recovering every segment: entries are checked in
    /// order; in the last segment the first entry that does not check ends the log (a torn write
    /// that was never acknowledged) and the bytes after it are zeroed so they can never come back;
    /// anywhere else it is corruption. `each` sees every recovered event, to rebuild state.
    ///
    /// `durable_end`, when known, is one past the last offset this process saw made durable.
    /// After a failed `fdatasync`, Linux marks the unwritten pages clean: they stay readable but
    /// never reach the disk, and a later fsync does not write them. Recovery must not adopt them,
    /// so everything from `durable_end` on is cut (later segments removed, the rest zeroed and
    /// synced anew).
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: &Path,
        config: LogConfig,
        durable_end: Option<Offset>,
        mut each: impl FnMut(Offset, Event),
    ) -> Result<(LogWriter, LogReader, Recovery), LogError> {
        disk.create_dir_all(dir)?;
        let mut names: Vec<String> = disk
            .list(dir)?
            .into_iter()
            .filter(|n| n.ends_with(".log"))
            .collect();
        let mut recovery = Recovery::default();
        if let Some(limit) = durable_end {
            let before = names.len();
            let mut kept = Vec::with_capacity(names.len());
            for name in names {
                let base = name.trim_end_matches(".log").parse::<u64>().ok();
                if base.is_some_and(|b| b >= limit.0) {
                    // Created at or after the last durable point: nothing in it is durable.
                    disk.remove(&dir.join(&name))?;
                } else {
                    kept.push(name);
                }
            }
            if kept.len() != before {
                disk.sync_dir(dir)?;
            }
            names = kept;
        }
        recovery.n_segments = names.len() as u32;
        let mut segments = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let is_last = i + 1 == names.len();
            let view = recover_segment(
                &*disk,
                &dir.join(name),
                &config,
                SegmentPlace {
                    expected_base: recovery.next_offset,
                    is_last,
                    stop_at: durable_end,
                },
                &mut recovery,
                &mut each,
            )?;
            recovery.next_offset = view.end;
            segments.push(view);
        }
        let active = match segments.pop() {
            Some(view) => view,
            None => create_segment(&*disk, dir, Offset(0), &config)?,
        };
        let last_index_pos = active.index.last().map_or(0, |(_, pos)| *pos);
        segments.push(active.clone());
        let shared = Arc::new(RwLock::new(segments));
        let writer = LogWriter {
            dir: dir.to_path_buf(),
            disk,
            config,
            segments: shared.clone(),
            active,
            last_index_pos,
            buffer: Vec::new(),
        };
        Ok((
            writer,
            LogReader {
                segments: shared,
                entry_bytes_max: config.entry_bytes_max,
            },
            recovery,
        ))
    }

    /// The offset the next event gets.
    pub fn next_offset(&self) -> Offset {
        self.active.end
    }

    /// Writes entries and makes them durable (`fdatasync`) before returning: one call is one
    /// group commit, whatever the number of entries.
    pub fn append(&mut self, entries: &[PendingEntry]) -> Result<(), LogError> {
        let mut index_points = Vec::new();
        self.buffer.clear();
        let mut buffer_start = self.active.end_pos;
        for entry in entries {
            assert_eq!(entry.base, self.active.end, "entries must be contiguous");
            let len = (ENTRY_HEADER_LEN + entry.body.len()) as u64;
            let pos = buffer_start + self.buffer.len() as u64;
            if pos > SEGMENT_HEADER_LEN && pos + len > self.config.segment_bytes_max {
                self.flush_buffer(buffer_start, &mut index_points)?;
                self.roll()?;
                buffer_start = self.active.end_pos;
            }
            let pos = buffer_start + self.buffer.len() as u64;
            if self.active.index.is_empty() && index_points.is_empty()
                || pos >= self.last_index_pos + self.config.index_interval_bytes
            {
                index_points.push((entry.base, pos));
                self.last_index_pos = pos;
            }
            format::encode_entry(entry.base, entry.count, &entry.body, &mut self.buffer);
            self.active.end = Offset(entry.base.0 + u64::from(entry.count));
        }
        self.flush_buffer(buffer_start, &mut index_points)
    }

    fn flush_buffer(
        &mut self,
        start: u64,
        index_points: &mut Vec<(Offset, u64)>,
    ) -> Result<(), LogError> {
        if !self.buffer.is_empty() {
            self.active.file.write_at(start, &self.buffer)?;
            self.active.file.sync_data()?;
            self.active.end_pos = start + self.buffer.len() as u64;
            self.buffer.clear();
        }
        self.active.index.extend_from_slice(index_points);
        let mut segments = self.segments.write().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = segments.last_mut() {
            last.index.append(index_points);
            last.end = self.active.end;
            last.end_pos = self.active.end_pos;
        }
        Ok(())
    }

    fn roll(&mut self) -> Result<(), LogError> {
        let view = create_segment(&*self.disk, &self.dir, self.active.end, &self.config)?;
        self.active = view.clone();
        self.last_index_pos = 0;
        self.segments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(view);
        Ok(())
    }
}

fn create_segment(
    disk: &dyn Disk,
    dir: &Path,
    base: Offset,
    config: &LogConfig,
) -> Result<SegmentView, LogError> {
    let path = dir.join(segment_name(base));
    let file = disk.open(&path, true)?;
    file.truncate(0)?;
    file.write_at(0, &format::segment_header(base))?;
    file.allocate(config.segment_bytes_max.max(SEGMENT_HEADER_LEN))?;
    file.sync_data()?;
    disk.sync_dir(dir)?;
    Ok(SegmentView {
        base,
        path,
        file,
        index: Vec::new(),
        end: base,
        end_pos: SEGMENT_HEADER_LEN,
    })
}

/// Where a segment sits in the log being recovered.
struct SegmentPlace {
    /// The offset its first entry must have.
    expected_base: Offset,
    /// True for the newest segment, the only one that may end in a torn write.
    is_last: bool,
    /// Entries from this offset on are not adopted (see `LogWriter::open`).
    stop_at: Option<Offset>,
}

fn recover_segment(
    disk: &dyn Disk,
    path: &Path,
    config: &LogConfig,
    place: SegmentPlace,
    recovery: &mut Recovery,
    each: &mut impl FnMut(Offset, Event),
) -> Result<SegmentView, LogError> {
    let SegmentPlace {
        expected_base,
        is_last,
        stop_at,
    } = place;
    let file = disk.open(path, false)?;
    let file_len = file.size()?;
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    if file.read_at(0, &mut header)? < header.len() {
        if is_last && recovery.n_segments > 0 {
            // A segment whose creation was cut short: its header never became durable.
            return rebuild_fresh_segment(disk, path, expected_base, config, recovery, file_len);
        }
        return Err(corrupt(path, 0, "segment shorter than its header"));
    }
    let base = match format::parse_segment_header(&header) {
        Ok(base) => base,
        Err(_) if is_last && header.iter().all(|b| *b == 0) => {
            return rebuild_fresh_segment(disk, path, expected_base, config, recovery, file_len);
        }
        Err(reason) => return Err(corrupt(path, 0, reason)),
    };
    if base != expected_base {
        return Err(corrupt(
            path,
            0,
            format!("segment starts at offset {base}, expected {expected_base}"),
        ));
    }
    let mut view = SegmentView {
        base,
        path: path.to_path_buf(),
        file: file.clone(),
        index: Vec::new(),
        end: base,
        end_pos: SEGMENT_HEADER_LEN,
    };
    let mut last_index_pos = 0u64;
    loop {
        let pos = view.end_pos;
        let Some((entry, body)) = read_entry(&*file, pos, file_len, config.entry_bytes_max)? else {
            break;
        };
        if entry.base != view.end || stop_at.is_some_and(|limit| entry.base >= limit) {
            break;
        }
        decode_body(path, pos, &entry, &body, |offset, event, _| {
            each(offset, event)
        })?;
        if view.index.is_empty() || pos >= last_index_pos + config.index_interval_bytes {
            view.index.push((entry.base, pos));
            last_index_pos = pos;
        }
        view.end = Offset(entry.base.0 + u64::from(entry.count));
        view.end_pos = pos + (ENTRY_HEADER_LEN as u64) + u64::from(entry.body_len);
        recovery.n_entries += 1;
    }
    if is_last {
        // What recovery adopts may exist only in the page cache (a write whose fdatasync failed
        // or never ran): make it durable before anything, a duplicate's ack included, relies on it.
        file.sync_data()?;
    }
    let tail = file_len.saturating_sub(view.end_pos);
    if tail > 0 {
        let zeros = first_nonzero(&*file, view.end_pos, file_len)?;
        if let Some(garbage_at) = zeros {
            if !is_last {
                return Err(corrupt(
                    path,
                    view.end_pos,
                    "entry does not check in a closed segment",
                ));
            }
            // The tail of a group commit that never completed: zero it so that stale bytes can
            // never line up with later writes and be read back as entries.
            recovery.truncated_bytes += file_len - garbage_at;
            zero_range(&*file, view.end_pos, file_len)?;
            file.sync_data()?;
        }
    }
    Ok(view)
}

fn rebuild_fresh_segment(
    disk: &dyn Disk,
    path: &Path,
    base: Offset,
    config: &LogConfig,
    recovery: &mut Recovery,
    file_len: u64,
) -> Result<SegmentView, LogError> {
    recovery.truncated_bytes += file_len;
    disk.remove(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    create_segment(disk, dir, base, config)
}

/// Position of the first nonzero byte in `[from, to)`, if any.
fn first_nonzero(file: &dyn DiskFile, from: u64, to: u64) -> Result<Option<u64>, DiskError> {
    let mut buf = vec![0u8; 1 << 16];
    let mut pos = from;
    while pos < to {
        let n = ((to - pos) as usize).min(buf.len());
        let got = file.read_at(pos, &mut buf[..n])?;
        if got == 0 {
            break;
        }
        if let Some(i) = buf[..got].iter().position(|b| *b != 0) {
            return Ok(Some(pos + i as u64));
        }
        pos += got as u64;
    }
    Ok(None)
}

fn zero_range(file: &dyn DiskFile, from: u64, to: u64) -> Result<(), DiskError> {
    let zeros = vec![0u8; 1 << 16];
    let mut pos = from;
    while pos < to {
        let n = ((to - pos) as usize).min(zeros.len());
        file.write_at(pos, &zeros[..n])?;
        pos += n as u64;
    }
    Ok(())
}

impl LogReader {
    /// The first offset stored.
    pub fn start(&self) -> Offset {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        segments.first().map_or(Offset(0), |s| s.base)
    }

    /// Reads events from `from` up to (not including) `end`: at most `events_max` of them, and
    /// at most `bytes_max` bytes of encoded events (but always at least one event).
    pub fn read(
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
            let file_len = view.end_pos;
            let mut advanced = false;
            while pos < view.end_pos
                && next < end
                && (out.len() as u32) < events_max
                && bytes < u64::from(bytes_max)
            {
                let Some((header, body)) =
                    read_entry(&*view.file, pos, file_len, self.entry_bytes_max)?
                else {
                    return Err(corrupt(
                        &view.path,
                        pos,
                        "entry below the end of data does not check",
                    ));
                };
                let entry_end = Offset(header.base.0 + u64::from(header.count));
                if entry_end > next {
                    decode_body(&view.path, pos, &header, &body, |offset, event, used| {
                        let room = out.is_empty() || bytes + used as u64 <= u64::from(bytes_max);
                        if offset >= next && offset < end && (out.len() as u32) < events_max && room
                        {
                            bytes += used as u64;
                            out.push(StoredEvent { offset, event });
                        } else if offset >= next {
                            bytes = u64::from(bytes_max);
                        }
                    })?;
                    next = out
                        .last()
                        .map_or(next, |e| Offset(e.offset.0 + 1))
                        .max(next);
                    advanced = true;
                }
                pos += (ENTRY_HEADER_LEN as u64) + u64::from(header.body_len);
            }
            if !advanced {
                break;
            }
        }
        Ok(out)
    }

    /// The segment holding `offset` and the byte position to start scanning from.
    fn locate(&self, offset: Offset) -> Option<(SegmentView, u64)> {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        let idx = segments
            .partition_point(|s| s.base <= offset)
            .checked_sub(1)?;
        let view = &segments[idx];
        if offset >= view.end {
            return None;
        }
        let point = view.index.partition_point(|(o, _)| *o <= offset);
        let pos = point
            .checked_sub(1)
            .map_or(SEGMENT_HEADER_LEN, |i| view.index[i].1);
        Some((view.clone(), pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::FsDisk;
    use sluice_proto::{BootEpoch, Identity, Payload, Role, SensorId, UnixMillis};

    fn config() -> LogConfig {
        LogConfig {
            segment_bytes_max: 4096,
            index_interval_bytes: 256,
            entry_bytes_max: 1 << 20,
        }
    }

    fn event(seq: u64) -> Event {
        Event {
            producer: Identity::new("t", Role::Edge, "p").unwrap(),
            sensor: SensorId::new("s").unwrap(),
            boot_epoch: BootEpoch(1),
            seq,
            device_time: UnixMillis(0),
            received_time: UnixMillis(0),
            payload: Payload::Json(format!("{{\"n\":{seq}}}")),
        }
    }

    fn entry(base: u64, count: u64) -> PendingEntry {
        let mut body = Vec::new();
        for seq in base..base + count {
            codec::encode_into(&event(seq), &mut body).unwrap();
        }
        PendingEntry {
            base: Offset(base),
            count: count as u32,
            body,
        }
    }

    fn open(dir: &Path) -> (LogWriter, LogReader, Recovery, Vec<u64>) {
        let mut seen = Vec::new();
        let (w, r, rec) = LogWriter::open(Arc::new(FsDisk), dir, config(), None, |o, e| {
            assert_eq!(o.0, e.seq, "event at the wrong offset");
            seen.push(o.0);
        })
        .unwrap();
        (w, r, rec, seen)
    }

    fn write_some(dir: &Path, n_entries: u64, per_entry: u64) {
        let (mut w, ..) = open(dir);
        for i in 0..n_entries {
            w.append(&[entry(i * per_entry, per_entry)]).unwrap();
        }
    }

    #[test]
    fn appends_roll_segments_and_read_back_after_reopen() {
        // Checks that entries spanning several segments are recovered in full on reopen and read
        // back in order from any offset, honouring the event and byte limits.
        let dir = tempfile::tempdir().unwrap();
        write_some(dir.path(), 200, 5);
        let (w, r, rec, seen) = open(dir.path());
        assert!(rec.n_segments > 3, "segments did not roll: {rec:?}");
        assert_eq!(rec.next_offset, Offset(1000));
        assert_eq!(w.next_offset(), Offset(1000));
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        for from in [0u64, 1, 7, 123, 499, 999] {
            let got = r.read(Offset(from), Offset(1000), 300, 1 << 20).unwrap();
            let want: Vec<u64> = (from..(from + 300).min(1000)).collect();
            assert_eq!(got.iter().map(|e| e.offset.0).collect::<Vec<_>>(), want);
            assert!(got.iter().all(|e| e.event == event(e.offset.0)));
        }
        let small = r.read(Offset(0), Offset(1000), 1000, 10).unwrap();
        assert_eq!(small.len(), 1, "byte limit still returns one event");
        assert!(r.read(Offset(10), Offset(10), 10, 1000).unwrap().is_empty());
    }

    fn last_segment(dir: &Path) -> PathBuf {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        names.pop().unwrap()
    }

    fn data_end(path: &Path) -> usize {
        let bytes = std::fs::read(path).unwrap();
        let mut pos = SEGMENT_HEADER_LEN as usize;
        loop {
            let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
            if len == 0 {
                return pos;
            }
            pos += ENTRY_HEADER_LEN + len;
        }
    }

    #[test]
    fn torn_tail_is_truncated_and_cannot_resurface() {
        // Checks that a half-written entry at the end of the last segment is discarded on
        // recovery, that the bytes after it are zeroed, and that later appends and reopens see
        // exactly the acknowledged data plus the new entries.
        let dir = tempfile::tempdir().unwrap();
        write_some(dir.path(), 3, 4);
        let path = last_segment(dir.path());
        let end = data_end(&path);
        // A torn copy of a plausible next entry: header and half the body.
        let mut torn = Vec::new();
        format::encode_entry(Offset(12), 4, &entry(12, 4).body, &mut torn);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[end..end + torn.len() / 2].copy_from_slice(&torn[..torn.len() / 2]);
        std::fs::write(&path, &bytes).unwrap();

        let (mut w, r, rec, seen) = open(dir.path());
        assert_eq!(rec.next_offset, Offset(12));
        assert!(rec.truncated_bytes > 0);
        assert_eq!(seen.len(), 12);
        w.append(&[entry(12, 1)]).unwrap();
        drop((w, r));
        let (_, r, rec, seen) = open(dir.path());
        assert_eq!(
            (rec.next_offset, rec.truncated_bytes, seen.len()),
            (Offset(13), 0, 13)
        );
        assert_eq!(
            r.read(Offset(12), Offset(13), 10, 1 << 20).unwrap()[0].event,
            event(12)
        );
    }

    #[test]
    fn damage_in_a_closed_segment_is_corruption() {
        // Checks that a flipped byte inside an earlier, closed segment stops recovery with a
        // Corrupt error naming the file, instead of silently dropping acknowledged data.
        let dir = tempfile::tempdir().unwrap();
        write_some(dir.path(), 200, 5);
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        let mut bytes = std::fs::read(&names[0]).unwrap();
        bytes[SEGMENT_HEADER_LEN as usize + ENTRY_HEADER_LEN + 3] ^= 0x40;
        std::fs::write(&names[0], &bytes).unwrap();
        let result = LogWriter::open(Arc::new(FsDisk), dir.path(), config(), None, |_, _| {});
        match result {
            Err(LogError::Corrupt { path, .. }) => {
                assert!(path.ends_with("00000000000000000000.log"), "{path}")
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("corruption accepted"),
        }
    }
    #[test]
    fn a_durable_mark_cuts_what_a_failed_fsync_left_readable() {
        // Checks the fsyncgate defence: reopening with the last offset known durable drops every
        // entry from it on (here the rolled segments and the tail of the one holding the mark),
        // zeroes them, and a later reopen without the mark still sees exactly the durable prefix.
        let dir = tempfile::tempdir().unwrap();
        write_some(dir.path(), 200, 5);
        let mark = Offset(400);
        let (mut w, r, rec) = LogWriter::open(
            Arc::new(FsDisk),
            dir.path(),
            config(),
            Some(mark),
            |o, _| assert!(o < mark),
        )
        .unwrap();
        assert_eq!(rec.next_offset, mark);
        assert_eq!(w.next_offset(), mark);
        assert!(
            r.read(Offset(399), Offset(1000), 10, 1 << 20)
                .unwrap()
                .len()
                == 1
        );
        w.append(&[entry(400, 2)]).unwrap();
        drop((w, r));
        let (_, _, rec, seen) = open(dir.path());
        assert_eq!(rec.next_offset, Offset(402));
        assert_eq!(seen, (0..402).collect::<Vec<_>>());
    }
}
