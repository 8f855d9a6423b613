//! The spool: every accepted reading gets its `(boot_epoch, seq)` and waits here, durable,
//! checksummed and bounded in bytes and age, until the uplink reports it delivered.
//!
//! [`SpoolCore`] decides (what to keep, evict, expire and declare; where each frame goes; when to
//! sync); [`Spool`] is its thin shell over [`Disk`]: it executes the core's outputs, recovers the
//! directory at open, and reads records back for the uplink. The file format is in `format.rs`.
//!
//! Guarantees (promise 3, "no silent gaps at the edge"):
//! - For every `(sensor, boot_epoch)`, acknowledged ∪ queued ∪ declared-dropped is every seq
//!   issued: a reading leaves the queue only when acknowledged; eviction (`SpoolFull`), expiry
//!   (`Expired`) and power cuts (`PowerLoss`) replace readings by `Payload::Dropped` records,
//!   which are spooled, delivered and acknowledged like readings; so is a reading the node
//!   refused as invalid, replaced by an `Invalid` declaration ([`Spool::refused`]).
//! - Writes are buffered and synced every `sync_interval_ms`; only synced records are handed to
//!   the uplink. Before a seq is issued, a reservation covering it is durable, so after a power
//!   cut recovery declares `[last durable seq + 1, reserved end)` lost (an upper bound: it may
//!   include reserved seqs that were never issued, at most `seq_reserve_block`).
//! - Before a record is handed to the uplink, a durable per-stream send mark covers it; after a
//!   crash, records below the mark may have been delivered, so they are resent and never
//!   evicted or expired (a declaration overlapping a delivery would be refused by the broker).
//! - Space is reclaimed a whole segment at a time. A live frame can be copied verbatim to the
//!   tail, so any closed segment can be freed: `DropOldest` declares the oldest segment's unsent
//!   readings and relocates the rest; `Block` only compacts (relocates everything live).
//! - Every open starts a new boot epoch, durably, before the first seq of it is issued.
//! - Segments are files of the shared segment layer (`sluice_proto::segment`, format 2: its
//!   framing, preallocation and recovery classification); format-1 segments of earlier
//!   releases are still read (`v1.rs`), never written: the first open after an upgrade starts
//!   a format-2 segment, and the old ones go as their records are delivered or copied forward.
//! - *Accepted* means `append` returned a seq: the reading is in the core and a durable
//!   reservation covers its seq, but it is durable only once a sync covering it returned (only
//!   then is it handed to the uplink). So a power cut may take accepted readings; they are never
//!   silent: recovery declares them `PowerLoss` from the reservation.
//! - Recovery applies one rule, the segment layer's ([`sluice_proto::segment::salvage`], the
//!   keep-going form of its scan): a torn write can only be the last write. An entry that does
//!   not check is a torn tail (zeroed, reported as truncated bytes; it held nothing synced, and
//!   the reservation covers its seqs, declared `PowerLoss`) only at the end of the last segment
//!   with no valid entry after it. Anything else — a bad entry followed by a valid one, damage
//!   in a closed segment, a damaged header, a file shorter than its preallocation — is damage:
//!   reported ([`SpoolReport::damage`]: file, byte, length; logged at error level by the agent;
//!   `spool check` fails), every entry that checks is kept (entries name their segment and
//!   position, so they are found even behind a damaged header), and the seqs it took are
//!   declared `Dropped { reason: Corrupted }` (gaps between surviving records, and past the
//!   last surviving reservation as many seqs as the lost bytes could hold). Seqs below the send
//!   mark are declared one each (a declaration of exactly a stored reading's seq is answered as
//!   a duplicate). A segment with a damaged header or cut short is not appended to again. A log
//!   that checks but does not replay consistently is a typed error.
//! - The manifest (`manifest.rs`, a `SlotFile` in the spool directory, as the node's partition
//!   manifest) records the segments held, the last one and how far it is durable. It is
//!   written when a segment is created (after its header is synced, before anything is written
//!   to it), after every sync of the last segment, before a segment is removed, and after each
//!   recovery; each record is one slot write and `fdatasync`, skipped when nothing changed.
//!   Recovery checks the directory against it: a recorded segment that is gone, a recorded
//!   last segment cut anywhere (inside its header too: only a segment the manifest does not
//!   record may be a creation cut short, removed when no entry checks in it), a file shorter
//!   than its recorded durable end, and a bad entry below that end are damage, reported and
//!   declared `Corrupted` like any other (the seqs a lost end of the last segment could hold
//!   are declared beyond the surviving reservations). Unrecorded segments below the last are
//!   the remains of a removal cut short and are read as usual. The manifest is created before
//!   the first entry of a format-2 spool is written, so a spool without a manifest record
//!   (deleted, emptied, zeroed, or none of its slots checks) whose format-2 segments hold
//!   entries is damage, reported (naming the manifest) and logged like any other: every entry
//!   that checks is kept, and since segments after the last one found may have gone with the
//!   manifest, as many seqs as the budget's remaining bytes could hold are declared
//!   `Corrupted` beyond the latest epoch's reservations (an upper bound), in a new segment.
//!   Only an empty directory, a lone last segment without entries (a manifest creation cut
//!   short) and a spool of format-1 segments (an earlier release's) open without one silently;
//!   the open records one. The manifest lists the held segments as runs of consecutive ids;
//!   the configuration keeps `spool_bytes_max / segment_bytes_max` within
//!   [`SEGMENTS_LISTED_MAX`], so even one run per segment fits a slot, and a set that still
//!   does not fit fences the spool (`SpoolError::ManifestFull`) instead of recording less.
//! - Timers and record ages run on the monotonic clock (a spool clock persisted at every sync;
//!   across a restart it counts the wall clock's downtime only within `[0, downtime_ms_max]`),
//!   so a wall clock stepped by NTP neither expires readings nor holds syncs back. See
//!   `core.rs`.
//!
//! Disk failures. A failed write, `fdatasync`, allocation or removal fences the spool: after a
//! failed `fdatasync` the page cache cannot be trusted (Linux marks the unwritten pages clean:
//! they stay readable but never reach the disk), so the in-memory state and whatever the disk
//! shows past the last successful sync are thrown away. The caller reopens with
//! [`Spool::reopen`], passing [`Spool::durable_point`]: recovery reads only up to that point,
//! zeroes the rest, and declares every seq issued past it (they lie under a durable
//! reservation) as `Dropped { reason: Storage }`. A segment whose creation failed (a full disk
//! refusing the preallocation) is removed at once, so no partial preallocation stays behind.
//!
//! Not here: the uplink (sending, matching broker acks to [`Spool::ack`]), sources, and the real
//! filesystem `Disk` (it is `sluice_proto::os::FsDisk`).

mod config;
mod core;
mod format;
mod manifest;
#[cfg(test)]
mod tests;
mod v1;

pub use self::config::{FullPolicy, SpoolConfig, SEGMENT_BYTES_MIN};
pub use self::core::{
    Appended, Declared, Loc, Now, Outgoing, Output, Rejected, SpoolCore, SpoolStats, StreamKey,
};
pub use self::manifest::SEGMENTS_LISTED_MAX;

use self::core::Replay;
use self::format::{Entry, BODY_BYTES_MAX, SEGMENT_HEADER_LEN, SEGMENT_KIND};
use self::manifest::{Manifest, ManifestError, ManifestState};
use sluice_proto::env::{Disk, DiskError, DiskFile};
use sluice_proto::segment::{self, CorruptionKind, SalvageExpect, SegmentError, SegmentHeader};
use sluice_proto::{BootEpoch, DropReason, Payload, Record, SensorId, UnixMillis};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// A spool operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    /// The disk refused; the spool is fenced and must be reopened.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// Bytes that were once durable are damaged; the spool refuses to guess.
    #[error("corrupt spool segment {path} at byte {pos}: {reason}")]
    Corrupt {
        /// The segment file.
        path: String,
        /// Byte position in it.
        pos: u64,
        /// What is wrong.
        reason: String,
    },
    /// The frames check but do not replay into a consistent state.
    #[error("inconsistent spool {dir}: {reason}")]
    Inconsistent {
        /// The spool directory.
        dir: String,
        /// What does not add up.
        reason: String,
    },
    /// The configuration is invalid.
    #[error("invalid spool config: {}", problems.join("; "))]
    Config {
        /// Every problem found.
        problems: Vec<String>,
    },
    /// The segments held do not fit the manifest (more than the configuration allows: see
    /// [`SEGMENTS_LISTED_MAX`]); the spool is fenced rather than record fewer.
    #[error("spool {dir}: {reason}")]
    ManifestFull {
        /// The spool directory.
        dir: String,
        /// How many segments and runs, and what fits.
        reason: String,
    },
    /// An earlier disk operation failed: the in-memory state can no longer be trusted.
    #[error("spool fenced after a failed disk operation; reopen it to recover")]
    Fenced,
}

/// What recovery found (and, for [`Spool::open`], did).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolReport {
    /// The boot epoch of this open (for [`Spool::check`]: the one an open would start).
    pub epoch: BootEpoch,
    /// Segment files in use after recovery.
    pub n_segments: u64,
    /// Frames that checked.
    pub n_frames: u64,
    /// Records (readings and declarations) waiting for delivery.
    pub n_records: u64,
    /// Streams `(sensor, epoch)` tracked.
    pub n_streams: u64,
    /// Bytes of the waiting records' frames.
    pub live_bytes: u64,
    /// Bytes of the segment files found.
    pub disk_bytes: u64,
    /// Age of the oldest waiting record, by the spool clock.
    pub oldest_age_ms: Option<u64>,
    /// Downtime since the spool clock was last persisted that the open counted towards record
    /// ages (the wall clock's difference, within `[0, downtime_ms_max]`), ms.
    pub downtime_counted_ms: u64,
    /// What the wall clock claimed passed since then (negative when it went back), ms.
    pub downtime_wall_ms: i64,
    /// Bytes of torn tails discarded (zeroed), never synced.
    pub truncated_bytes: u64,
    /// Segment files whose creation was cut short, discarded.
    pub n_segments_discarded: u64,
    /// Seq ranges declared lost to the power cut (`PowerLoss`), or, for [`Spool::reopen`], to
    /// the failed disk (`Storage`).
    pub power_loss: Vec<Declared>,
    /// The end of the data recovered in each segment.
    pub data_ends: BTreeMap<u64, u64>,
    /// Damaged regions found (frames that do not check where a torn write cannot be). What they
    /// held is declared `Corrupted` (in `power_loss`); every frame around them is kept.
    pub damage: Vec<Damage>,
}

/// A damaged region of a spool segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub path: String,
    /// First damaged byte.
    pub pos: u64,
    /// Bytes up to the next frame that checks (or the end of the file).
    pub len: u64,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for SpoolReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "boot epoch        {}", self.epoch)?;
        writeln!(
            f,
            "segments          {} ({} bytes on disk)",
            self.n_segments, self.disk_bytes
        )?;
        writeln!(f, "frames            {}", self.n_frames)?;
        writeln!(
            f,
            "waiting records   {} in {} streams ({} bytes)",
            self.n_records, self.n_streams, self.live_bytes
        )?;
        match self.oldest_age_ms {
            Some(ms) => writeln!(f, "oldest record     {ms} ms old")?,
            None => writeln!(f, "oldest record     -")?,
        }
        writeln!(
            f,
            "downtime counted  {} ms (wall clock: {} ms)",
            self.downtime_counted_ms, self.downtime_wall_ms
        )?;
        writeln!(
            f,
            "torn tail         {} bytes discarded",
            self.truncated_bytes
        )?;
        writeln!(f, "aborted segments  {}", self.n_segments_discarded)?;
        writeln!(f, "damaged regions   {}", self.damage.len())?;
        for d in &self.damage {
            writeln!(
                f,
                "  CORRUPT {} at byte {} ({} bytes): {}",
                d.path, d.pos, d.len, d.reason
            )?;
        }
        writeln!(f, "power-loss ranges {}", self.power_loss.len())?;
        for d in &self.power_loss {
            writeln!(
                f,
                "  sensor {} epoch {}: seqs {}..={} ({:?})",
                d.key.sensor, d.key.epoch, d.seq, d.seq_last, d.reason
            )?;
        }
        Ok(())
    }
}

/// The end of what a spool last made durable: segment `segment` up to byte `pos`. A spool whose
/// disk failed vouches for nothing beyond it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurablePoint {
    /// The segment id.
    pub segment: u64,
    /// The end of its synced data.
    pub pos: u64,
}

/// The durable spool: a [`SpoolCore`] and the segment files it describes.
pub struct Spool {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    segment_bytes_max: u64,
    core: SpoolCore,
    files: BTreeMap<u64, Arc<dyn DiskFile>>,
    fenced: bool,
    /// The end of the data written to each segment (not necessarily synced).
    written_end: BTreeMap<u64, u64>,
    /// The end of the last successful sync.
    durable: Option<DurablePoint>,
    /// The durable record of the segments and the last one's durable end (`None` until the
    /// first segment exists).
    manifest: Option<Manifest>,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("epoch", &self.core.epoch())
            .field("fenced", &self.fenced)
            .finish()
    }
}

impl Spool {
    /// Opens (or creates) the spool in `dir`: recovers every segment, zeroes a torn tail,
    /// declares power-loss ranges, and starts a new boot epoch durably before returning.
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: &Path,
        config: SpoolConfig,
        now: Now,
    ) -> Result<(Spool, SpoolReport), SpoolError> {
        Self::open_from(disk, dir, config, now, None)
    }

    /// Reopens a spool whose disk failed (see the module documentation): trusts the files only
    /// up to `durable` (from [`Spool::durable_point`] of the failed spool; `None` trusts what
    /// they hold, as [`Spool::open`] does) and declares the seqs issued beyond it `Storage`.
    pub fn reopen(
        disk: Arc<dyn Disk>,
        dir: &Path,
        config: SpoolConfig,
        now: Now,
        durable: Option<DurablePoint>,
    ) -> Result<(Spool, SpoolReport), SpoolError> {
        Self::open_from(disk, dir, config, now, Some(durable))
    }

    fn open_from(
        disk: Arc<dyn Disk>,
        dir: &Path,
        config: SpoolConfig,
        now: Now,
        after_failure: Option<Option<DurablePoint>>,
    ) -> Result<(Spool, SpoolReport), SpoolError> {
        let trust = after_failure.flatten();
        let lost = if after_failure.is_some() {
            DropReason::Storage
        } else {
            DropReason::PowerLoss
        };
        let (core, files, mut report, manifest) =
            recover(&*disk, dir, config, now, true, trust, lost)?;
        // Recovery synced what it adopted of the last segment.
        let durable = report
            .data_ends
            .last_key_value()
            .map(|(id, end)| DurablePoint {
                segment: *id,
                pos: *end,
            });
        let mut spool = Spool {
            disk,
            dir: dir.to_path_buf(),
            segment_bytes_max: config.segment_bytes_max,
            core,
            files,
            fenced: false,
            written_end: report.data_ends.clone(),
            durable,
            manifest,
        };
        // The recovered state is recorded before anything is written (a spool without a
        // manifest, of an earlier release, is adopted here).
        spool.record_manifest(None)?;
        spool.execute()?;
        report.n_segments = spool.core.n_segments();
        Ok((spool, report))
    }

    /// The end of the last successful sync, for [`Spool::reopen`] after a failure.
    pub fn durable_point(&self) -> Option<DurablePoint> {
        self.durable
    }

    /// True once a disk operation failed: every call but [`Spool::durable_point`] is refused.
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// What [`Spool::open`] would find and do, without writing anything (`spool check`).
    pub fn check(
        disk: &dyn Disk,
        dir: &Path,
        config: SpoolConfig,
        now: Now,
    ) -> Result<SpoolReport, SpoolError> {
        recover(disk, dir, config, now, false, None, DropReason::PowerLoss)
            .map(|(_, _, report, _)| report)
    }

    /// The core, for its getters and invariants.
    pub fn core(&self) -> &SpoolCore {
        &self.core
    }

    /// The boot epoch of this open.
    pub fn epoch(&self) -> BootEpoch {
        self.core.epoch()
    }

    /// Counters.
    pub fn stats(&self) -> SpoolStats {
        self.core.stats()
    }

    /// Accepts a reading: `Ok(Ok(_))` gives its seq; `Ok(Err(_))` refuses it (no seq issued);
    /// `Err` means the disk failed and the spool is fenced.
    pub fn append(
        &mut self,
        now: Now,
        sensor: SensorId,
        device_time: UnixMillis,
        payload: Payload,
    ) -> Result<Result<Appended, Rejected>, SpoolError> {
        self.live()?;
        let result = self.core.handle_append(now, sensor, device_time, payload);
        self.execute()?;
        Ok(result)
    }

    /// Durable records to deliver next, in an order the broker accepts (see
    /// [`SpoolCore::next_batch`]). Each must be acknowledged with [`Spool::ack`] or resent
    /// after [`Spool::rewind`].
    pub fn next_batch(
        &mut self,
        records_max: u32,
        bytes_max: u64,
    ) -> Result<Vec<Record>, SpoolError> {
        self.live()?;
        let outgoing = self.core.next_batch(records_max, bytes_max);
        // Send marks are durable before any record leaves.
        self.execute()?;
        let mut out = Vec::with_capacity(outgoing.len());
        for item in outgoing {
            match self.read_record(&item) {
                Ok(record) => out.push(record),
                Err(error) => {
                    self.fenced = true;
                    return Err(error);
                }
            }
        }
        Ok(out)
    }

    /// The broker holds every record of `key` up to `seq_through`; returns how many records
    /// that released.
    pub fn ack(&mut self, now: Now, key: &StreamKey, seq_through: u64) -> Result<u64, SpoolError> {
        self.live()?;
        let n = self.core.handle_ack(now, key, seq_through);
        self.execute()?;
        Ok(n)
    }

    /// The node refused reading `seq` of `key` as invalid: it is replaced, durably, by a
    /// `Dropped { reason: Invalid }` declaration sent in its place (see
    /// [`SpoolCore::handle_refused`]). Returns false when `seq` is not a reading handed out.
    pub fn refused(&mut self, now: Now, key: &StreamKey, seq: u64) -> Result<bool, SpoolError> {
        self.live()?;
        let declared = self.core.handle_refused(now, key, seq);
        self.execute()?;
        Ok(declared)
    }

    /// The node answered `ProducerExpired` for `key`, an epoch older than the spool's: its
    /// unacknowledged seqs are closed by a declaration in the spool's epoch and the readings
    /// never sent are resent after it with new seqs (see [`SpoolCore::handle_expired`]).
    /// `resend` is what [`Spool::to_resend`] returned before the spool was reopened into a
    /// newer epoch (a reopen forgets which items were handed out, so it must be asked first);
    /// `None` asks this spool. Returns the closed range of `key`, or `None` when nothing of it
    /// was queued.
    pub fn expired(
        &mut self,
        now: Now,
        key: &StreamKey,
        resend: Option<Vec<Record>>,
    ) -> Result<Option<(u64, u64)>, SpoolError> {
        self.live()?;
        let resend = match resend {
            Some(resend) => resend,
            None => self.to_resend(now, key)?,
        };
        let closed = self.core.handle_expired(now, key, resend);
        self.execute()?;
        Ok(closed)
    }

    /// The records of `key` that [`Spool::expired`] resends in a newer epoch: its readings
    /// never handed out, and its `ProducerExpired` declarations (see [`SpoolCore::to_resend`]).
    /// They are read back from disk (synced first); a read that fails fences the spool.
    pub fn to_resend(&mut self, now: Now, key: &StreamKey) -> Result<Vec<Record>, SpoolError> {
        self.live()?;
        self.core.handle_sync(now);
        self.execute()?;
        let mut resend = Vec::new();
        for item in self.core.to_resend(key) {
            match self.read_record(&item) {
                Ok(record) => resend.push(record),
                Err(error) => {
                    self.fenced = true;
                    return Err(error);
                }
            }
        }
        Ok(resend)
    }

    /// The uplink lost its connection: unacknowledged records will be handed out again.
    pub fn rewind(&mut self) {
        self.core.handle_rewind();
    }

    /// When [`Spool::handle_timeout`] is next due, on the monotonic clock.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    /// Syncs and expires when due.
    pub fn handle_timeout(&mut self, now: Now) -> Result<(), SpoolError> {
        self.live()?;
        self.core.handle_timeout(now);
        self.execute()
    }

    /// Makes everything appended so far durable now.
    pub fn sync(&mut self, now: Now) -> Result<(), SpoolError> {
        self.live()?;
        self.core.handle_sync(now);
        self.execute()
    }

    /// Clean shutdown: syncs and gives back unused seq reservations, so the next open declares
    /// nothing lost.
    pub fn close(mut self, now: Now) -> Result<(), SpoolError> {
        self.live()?;
        self.core.handle_close(now);
        self.execute()
    }

    fn live(&self) -> Result<(), SpoolError> {
        if self.fenced {
            Err(SpoolError::Fenced)
        } else {
            Ok(())
        }
    }

    fn execute(&mut self) -> Result<(), SpoolError> {
        while let Some(output) = self.core.poll_output() {
            if let Err(error) = self.execute_one(output) {
                self.fenced = true;
                return Err(error);
            }
        }
        Ok(())
    }

    fn execute_one(&mut self, output: Output) -> Result<(), SpoolError> {
        match output {
            Output::CreateSegment { id } => {
                let path = self.dir.join(format::segment_name(id));
                let header = SegmentHeader {
                    kind: SEGMENT_KIND,
                    id,
                    preallocated: self.segment_bytes_max,
                };
                // The segment layer checks for room, preallocates, writes and syncs the header
                // and the directory, and removes the file if any of it fails (a full disk stays
                // full, with no partial preallocation left behind).
                let writer = segment::SegmentWriter::create(&*self.disk, &path, header)
                    .map_err(|e| segment_error(&path, e))?;
                self.files.insert(id, writer.file().clone());
                self.written_end.insert(id, SEGMENT_HEADER_LEN);
                self.durable = Some(DurablePoint {
                    segment: id,
                    pos: SEGMENT_HEADER_LEN,
                });
                // Recorded before anything is written to it: a recorded segment cut inside its
                // header is damage, never taken for a creation cut short.
                self.record_manifest(None)?;
            }
            Output::Write {
                segment,
                pos,
                bytes,
            } => {
                self.file(segment)?.write_at(pos, &bytes)?;
                self.wrote(segment, pos + bytes.len() as u64);
            }
            Output::Copy { from, segment, pos } => {
                // Framed again for its new place (an entry checks only where it was written).
                let body = self.read_body(from)?;
                let mut frame = Vec::with_capacity(body.len() + 16);
                format::encode_frame(segment, pos, &body, &mut frame);
                self.file(segment)?.write_at(pos, &frame)?;
                self.wrote(segment, pos + frame.len() as u64);
            }
            Output::Sync { segment } => {
                self.file(segment)?.sync_data()?;
                if let Some(end) = self.written_end.get(&segment) {
                    self.durable = Some(DurablePoint { segment, pos: *end });
                }
                // A roll creates the next segment at once, which records the manifest.
                let rolls = matches!(self.core.peek_output(), Some(Output::CreateSegment { .. }));
                if !rolls {
                    self.record_manifest(None)?;
                }
            }
            Output::RemoveSegment { id } => {
                // Recorded gone before it goes (normally already done by the sync before it),
                // so a recorded segment that is missing is damage.
                self.record_manifest(Some(id))?;
                self.files.remove(&id);
                self.written_end.remove(&id);
                self.disk.remove(&self.dir.join(format::segment_name(id)))?;
                self.disk.sync_dir(&self.dir)?;
            }
        }
        Ok(())
    }

    /// Records the segments held (less `removing` and the removals the core queued next) and
    /// the last one's durable end in the manifest, creating it if there is none; writes
    /// nothing when that is what it holds.
    fn record_manifest(&mut self, removing: Option<u64>) -> Result<(), SpoolError> {
        let mut held: BTreeSet<u64> = self.files.keys().copied().collect();
        if let Some(id) = removing {
            held.remove(&id);
        }
        for id in self.core.queued_removals() {
            held.remove(&id);
        }
        let durable_pos = match (held.last(), self.durable) {
            (Some(last), Some(point)) if point.segment == *last => point.pos,
            // Nothing synced in it since the open: what recovery adopted (and synced).
            (Some(last), _) => self.written_end.get(last).copied().unwrap_or(0),
            (None, _) => return Ok(()),
        };
        let Some(state) = ManifestState::new(&held, durable_pos) else {
            return Ok(());
        };
        let result = match &mut self.manifest {
            Some(manifest) => manifest.write(state),
            None => Manifest::create(&*self.disk, &self.dir, state).map(|m| {
                self.manifest = Some(m);
            }),
        };
        result.map_err(|e| match e {
            ManifestError::Segment(e) => segment_error(&Manifest::path(&self.dir), e),
            ManifestError::TooMany(e) => SpoolError::ManifestFull {
                dir: self.dir.display().to_string(),
                reason: e.to_string(),
            },
        })
    }

    fn wrote(&mut self, segment: u64, end: u64) {
        let known = self.written_end.entry(segment).or_insert(end);
        *known = (*known).max(end);
    }

    fn file(&self, id: u64) -> Result<Arc<dyn DiskFile>, SpoolError> {
        self.files
            .get(&id)
            .cloned()
            .ok_or_else(|| SpoolError::Inconsistent {
                dir: self.dir.display().to_string(),
                reason: format!("segment {id} is not open"),
            })
    }

    /// The body of the frame at `loc`, checked (by the framing of its segment's format).
    fn read_body(&self, loc: Loc) -> Result<Vec<u8>, SpoolError> {
        let path = self.dir.join(format::segment_name(loc.segment));
        let file = self.file(loc.segment)?;
        let end = loc.pos + u64::from(loc.len);
        if !self.core.is_v1(loc.segment) {
            return segment::read_entry(&*file, &path, loc.segment, loc.pos, end, BODY_BYTES_MAX)
                .map(|(body, _)| body)
                .map_err(|e| segment_error(&path, e));
        }
        let mut frame = vec![0u8; loc.len as usize];
        if file.read_at(loc.pos, &mut frame)? < frame.len() {
            return Err(corrupt(&path, loc.pos, "frame cut short"));
        }
        match v1::frame_body(&frame) {
            Some(body) => Ok(body.to_vec()),
            None => Err(corrupt(&path, loc.pos, "frame does not check")),
        }
    }

    fn read_record(&self, item: &Outgoing) -> Result<Record, SpoolError> {
        let path = self.dir.join(format::segment_name(item.loc.segment));
        let corrupt = |reason: String| SpoolError::Corrupt {
            path: path.display().to_string(),
            pos: item.loc.pos,
            reason,
        };
        let body = self.read_body(item.loc)?;
        match Entry::decode(&body) {
            Ok(Entry::Record { record, .. })
                if record.sensor == item.key.sensor
                    && record.boot_epoch == item.key.epoch
                    && record.seq == item.seq
                    && record.seq_last() == item.seq_last =>
            {
                Ok(record)
            }
            Ok(other) => Err(corrupt(format!("expected {item:?}, found {other:?}"))),
            Err(error) => Err(corrupt(error.to_string())),
        }
    }
}

type Recovery = (
    SpoolCore,
    BTreeMap<u64, Arc<dyn DiskFile>>,
    SpoolReport,
    Option<Manifest>,
);

/// Scans and replays the directory. With `repair`, discards aborted segments and zeroes torn
/// tails on disk; without, only reports them. With `trust`, nothing beyond that point is read
/// (later segments are discarded, the rest of its segment zeroed). Seqs issued beyond what was
/// recovered are declared with `lost`.
fn recover(
    disk: &dyn Disk,
    dir: &Path,
    config: SpoolConfig,
    now: Now,
    repair: bool,
    trust: Option<DurablePoint>,
    lost: DropReason,
) -> Result<Recovery, SpoolError> {
    config
        .validate()
        .map_err(|problems| SpoolError::Config { problems })?;
    if repair {
        disk.create_dir_all(dir)?;
    }
    let names = match disk.list(dir) {
        Ok(names) => names,
        Err(DiskError::Io {
            kind: std::io::ErrorKind::NotFound,
            ..
        }) if !repair => Vec::new(),
        Err(error) => return Err(error.into()),
    };
    let mut ids: Vec<u64> = names
        .iter()
        .filter_map(|n| format::parse_segment_name(n))
        .collect();
    let mut untrusted = Vec::new();
    if let Some(point) = trust {
        // Segments created after the last successful sync hold nothing durable.
        untrusted = ids
            .iter()
            .copied()
            .filter(|id| *id > point.segment)
            .collect();
        ids.retain(|id| *id <= point.segment);
    }
    let mut replay = Replay::new(config);
    let mut report = SpoolReport::default();
    let mut files = BTreeMap::new();
    for id in untrusted {
        let path = dir.join(format::segment_name(id));
        report.truncated_bytes += disk.open(&path, false)?.size()?;
        report.n_segments_discarded += 1;
        if repair {
            disk.remove(&path)?;
            disk.sync_dir(dir)?;
        }
    }
    let manifest = read_manifest(disk, dir, &mut report)?;
    // What the manifest says must exist (after a failed disk, up to the trusted point only:
    // nothing later was ever recorded).
    let recorded = manifest.as_ref().map(|m| m.state().clone());
    let expected: BTreeSet<u64> = recorded
        .as_ref()
        .map(|r| r.expected())
        .unwrap_or_default()
        .into_iter()
        .filter(|id| trust.is_none_or(|point| *id <= point.segment))
        .collect();
    let last_id = ids.last().copied().max(expected.last().copied());
    for id in expected.iter().filter(|id| !ids.contains(id)) {
        let path = dir.join(format::segment_name(*id));
        report.damage.push(Damage {
            path: path.display().to_string(),
            pos: 0,
            len: 0,
            reason: format!(
                "segment recorded by the manifest {} is gone",
                Manifest::path(dir).display()
            ),
        });
        replay.lost_segment(*id);
        if Some(*id) == last_id {
            // Nothing later bounds what it held: as many seqs as its bytes could hold.
            let durable = recorded.as_ref().map_or(0, |r| r.durable_pos);
            let bound = durable.max(config.segment_bytes_max);
            replay.tail_lost(bound.saturating_sub(SEGMENT_HEADER_LEN));
        }
    }
    // Format-2 segments kept, with the entries found in each.
    let mut v2_kept: Vec<(u64, u64)> = Vec::new();
    for id in ids.iter() {
        let is_last = Some(*id) == last_id;
        let path = dir.join(format::segment_name(*id));
        let file = disk.open(&path, false)?;
        let file_len = file.size()?;
        report.disk_bytes += file_len;
        // Of the segment of the last successful sync, only what that sync covered.
        let limit = match trust {
            Some(point) if point.segment == *id => point.pos.min(file_len),
            _ => file_len,
        };
        // (Not capped by the file's length: a file shorter than its durable end was cut.)
        let durable_end = match (&recorded, trust) {
            (Some(r), Some(point)) if is_last && r.last == *id && point.segment == *id => {
                r.durable_pos.min(point.pos)
            }
            (Some(r), _) if is_last && r.last == *id => r.durable_pos,
            _ => 0,
        };
        let role = Role {
            is_last,
            recorded: recorded.as_ref().is_some_and(|r| r.holds(*id)),
            durable_end,
            lost_bound: durable_end.max(config.segment_bytes_max),
        };
        let is_v1 = is_v1_segment(&*file, *id, limit)?;
        let frames_before = report.n_frames;
        let scanned = if is_v1 {
            replay.v1_segment(*id);
            v1::scan_segment(&*file, &path, *id, is_last, limit, &mut replay, &mut report)?
        } else {
            scan_segment(&*file, &path, *id, role, limit, &mut replay, &mut report)?
        };
        let Some(data_end) = scanned else {
            // A segment whose creation was cut short: its header never became durable.
            report.truncated_bytes += file_len;
            report.n_segments_discarded += 1;
            if repair {
                disk.remove(&path)?;
                disk.sync_dir(dir)?;
            }
            continue;
        };
        if is_last {
            if let Some(garbage_at) = first_nonzero(&*file, data_end, file_len)? {
                // A torn tail (or, past `limit`, writes no sync covered; or damage already
                // reported): zero it so its stale bytes can never line up with later frames.
                if report
                    .damage
                    .iter()
                    .all(|d| d.path != path.display().to_string())
                {
                    report.truncated_bytes += file_len - garbage_at;
                }
                if repair {
                    zero_range(&*file, data_end, file_len)?;
                }
            }
        }
        if repair && is_last {
            // What recovery adopts may exist only in the page cache: make it durable first.
            file.sync_data()?;
        }
        report.data_ends.insert(*id, data_end);
        files.insert(*id, file);
        if !is_v1 {
            v2_kept.push((*id, report.n_frames - frames_before));
        }
    }
    if recorded.is_none() {
        unrecorded_segments(dir, config, &v2_kept, &mut replay, &mut report);
    }
    let damaged = !report.damage.is_empty();
    // What damage took is declared Corrupted (the reservation bounds it, as for a power cut).
    let lost = if damaged { DropReason::Corrupted } else { lost };
    let (core, recovered) =
        replay
            .finish(now, lost, damaged)
            .map_err(|reason| SpoolError::Inconsistent {
                dir: dir.display().to_string(),
                reason,
            })?;
    report.epoch = core.epoch();
    report.n_segments = core.n_segments();
    report.n_records = core.n_records();
    report.n_streams = core.n_streams();
    report.live_bytes = core.live_bytes();
    report.oldest_age_ms = core.oldest_age_ms(now.mono);
    report.downtime_counted_ms = recovered.downtime_counted_ms;
    report.downtime_wall_ms = recovered.downtime_wall_ms;
    report.power_loss = recovered.power_loss;
    Ok((core, files, report, manifest))
}

/// Without a manifest record (none, emptied, or none of its slots checks), format-2 segments
/// are damage unless they are a lone last segment without entries: the manifest is created
/// before the first entry of a format-2 spool is written (a spool of format 1 only is one of an
/// earlier release, adopted). Segments after the last one found may have gone with the
/// manifest, and nothing bounds what they held but the budget: the seqs the bytes the budget
/// leaves could hold are declared `Corrupted` beyond the latest epoch's reservations (an upper
/// bound, as for a lost last segment).
fn unrecorded_segments(
    dir: &Path,
    config: SpoolConfig,
    v2_kept: &[(u64, u64)],
    replay: &mut Replay,
    report: &mut SpoolReport,
) {
    let last_kept = report.data_ends.last_key_value().map(|(id, _)| *id);
    let fresh = |(id, n_entries): &(u64, u64)| *n_entries == 0 && Some(*id) == last_kept;
    if v2_kept.iter().all(fresh) {
        return;
    }
    let (first, last) = (v2_kept[0].0, v2_kept[v2_kept.len() - 1].0);
    report.damage.push(Damage {
        path: Manifest::path(dir).display().to_string(),
        pos: 0,
        len: 0,
        reason: format!(
            "the manifest holds no record, but {} format-2 segments ({first}..={last}) hold \
             entries: any segment after {last} may have been lost with it, so the seqs it could \
             have held are declared corrupted",
            v2_kept.len()
        ),
    });
    let unaccounted = config
        .spool_bytes_max
        .saturating_sub(report.disk_bytes)
        .max(config.segment_bytes_max);
    replay.tail_lost(unaccounted);
    if let Some(id) = last_kept {
        // A new segment opens with a checkpoint stating the raised reservations (as after a
        // lost last segment), so the declarations beyond the old ones replay consistently.
        replay.no_resume(id);
    }
}

/// Reads the spool's manifest. One none of whose slots checks is reported as damage and
/// ignored (the segments are recovered as a spool without one, and the open records a new
/// one), unless it is the remains of a creation cut short: its first slot, written only by the
/// second record, still all zeros.
fn read_manifest(
    disk: &dyn Disk,
    dir: &Path,
    report: &mut SpoolReport,
) -> Result<Option<Manifest>, SpoolError> {
    let path = Manifest::path(dir);
    match Manifest::read(disk, dir) {
        Ok(manifest) => Ok(manifest),
        Err(SegmentError::Corrupt(c)) => {
            let file = disk.open(&path, false)?;
            let slot_end = segment::SLOT_STRIDE.min(file.size()?);
            if first_nonzero(&*file, 0, slot_end)?.is_some() {
                report.damage.push(Damage {
                    path: c.path,
                    pos: c.pos,
                    len: file.size()?.saturating_sub(c.pos),
                    reason: c.kind.to_string(),
                });
            }
            Ok(None)
        }
        Err(e) => Err(segment_error(&path, e)),
    }
}

/// What recovery knows of one segment before scanning it.
#[derive(Debug, Clone, Copy)]
struct Role {
    /// The last segment (the one appended to): only it may end in a torn write.
    is_last: bool,
    /// The manifest records it: it was complete before anything was written to it.
    recorded: bool,
    /// How far the manifest records it durable (0: no record).
    durable_end: u64,
    /// The bytes it could have held.
    lost_bound: u64,
}

fn corrupt(path: &Path, pos: u64, reason: impl Into<String>) -> SpoolError {
    SpoolError::Corrupt {
        path: path.display().to_string(),
        pos,
        reason: reason.into(),
    }
}

/// A segment layer error as a spool error: damage names the file and byte; a full disk stays a
/// disk error with `ENOSPC`'s kind, so callers tell it as they tell a failed write.
fn segment_error(path: &Path, error: SegmentError) -> SpoolError {
    match error {
        SegmentError::Disk(error) => SpoolError::Disk(error),
        SegmentError::Corrupt(c) => SpoolError::Corrupt {
            path: c.path,
            pos: c.pos,
            reason: c.kind.to_string(),
        },
        SegmentError::NoSpace { path, reason, .. } => SpoolError::Disk(DiskError::Io {
            op: "allocate",
            path,
            kind: std::io::ErrorKind::StorageFull,
            message: reason,
        }),
        other => corrupt(path, 0, other.to_string()),
    }
}

/// Which format a segment file is: 1 only when its header is an intact format-1 header, or,
/// when no header is intact, when no format-2 entry checks in it but a format-1 frame does.
fn is_v1_segment(file: &dyn DiskFile, id: u64, limit: u64) -> Result<bool, SpoolError> {
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    let got = file.read_at(0, &mut header)?;
    if v1::is_v1_header(&header[..got]) {
        return Ok(true);
    }
    if got == header.len() && SegmentHeader::decode(&header, SEGMENT_KIND).is_ok() {
        return Ok(false);
    }
    let holds_v2 = !segment::holds_no_entries(file, id, BODY_BYTES_MAX)?;
    Ok(!holds_v2 && v1::holds_frames(file, limit)?)
}

/// Replays the entries of one format-2 segment; returns the end of its data, or `None` when the
/// last segment has no intact header and no entry and the manifest does not record it (its
/// creation was cut short). Reads nothing at or past `limit`.
///
/// The recovery rule is the segment layer's ([`segment::salvage`]): an entry that does not
/// check is a torn tail (the caller zeroes it) only in the last segment and only when no valid
/// entry follows it. Anything else is damage: reported in `report.damage` (file, byte, length);
/// every entry that checks on either side of it is kept, and the seqs it took are declared
/// `Corrupted` by the replay.
fn scan_segment(
    file: &dyn DiskFile,
    path: &Path,
    id: u64,
    role: Role,
    limit: u64,
    replay: &mut Replay,
    report: &mut SpoolReport,
) -> Result<Option<u64>, SpoolError> {
    let is_last = role.is_last;
    let expect = SalvageExpect {
        id,
        // Damage below the end the manifest records durable is never a torn tail.
        durable_end: role.durable_end,
        sealed: !is_last,
        entry_bytes_max: BODY_BYTES_MAX,
        read_end: limit,
        // A checkpoint of many streams may outgrow a segment: the file grows past its
        // preallocation.
        past_preallocation: true,
    };
    let mut inconsistent = None;
    let found = segment::salvage(file, path, SEGMENT_KIND, &expect, |pos, body| {
        let entry =
            Entry::decode(body).map_err(|e| format!("entry checks but does not decode: {e}"))?;
        let loc = Loc {
            segment: id,
            pos,
            len: u32::try_from(segment::entry_len(body.len())).unwrap_or(u32::MAX),
        };
        if inconsistent.is_none() {
            if let Err(reason) = replay.entry(loc, entry) {
                inconsistent = Some(corrupt(path, pos, reason));
            }
        }
        Ok(())
    })?;
    if let Some(error) = inconsistent {
        return Err(error);
    }
    let creation_damage = |kind: &CorruptionKind| {
        matches!(
            kind,
            CorruptionKind::HeaderZeroed
                | CorruptionKind::HeaderChecksum
                | CorruptionKind::Short { .. }
        )
    };
    if is_last
        && !role.recorded
        && found.n_entries == 0
        && found.data_end == SEGMENT_HEADER_LEN
        && !found.damage.is_empty()
        && found
            .damage
            .iter()
            .all(|d| creation_damage(&d.corruption.kind))
    {
        // Entries are written only after the segment layer synced the preallocation and the
        // header and the manifest recorded the segment, so a last segment the manifest does not
        // record, without either and without any entry that checks anywhere, is a creation cut
        // short: it never held anything.
        return Ok(None);
    }
    // A file shorter than the end the manifest records durable was cut, whatever its header.
    let mut short = found.file_len < role.durable_end;
    if short
        && !found
            .damage
            .iter()
            .any(|d| matches!(d.corruption.kind, CorruptionKind::Short { .. }))
    {
        report.damage.push(Damage {
            path: path.display().to_string(),
            pos: found.file_len,
            len: role.durable_end - found.file_len,
            reason: format!(
                "file is {} bytes, shorter than its recorded durable end {}",
                found.file_len, role.durable_end
            ),
        });
    }
    for d in &found.damage {
        short |= matches!(d.corruption.kind, CorruptionKind::Short { .. });
        report.damage.push(Damage {
            path: d.corruption.path.clone(),
            pos: d.corruption.pos,
            len: d.end.saturating_sub(d.corruption.pos),
            reason: d.corruption.kind.to_string(),
        });
    }
    if found.header.is_none() || short {
        replay.no_resume(id);
    }
    if short && is_last {
        // Never a torn write: the file was preallocated before its header was synced. Entries
        // past the cut were lost; in the last segment nothing later bounds their seqs, so the
        // replay declares beyond the reservation as many seqs as the lost bytes could hold.
        let preallocated = found
            .header
            .map_or(role.lost_bound.max(found.file_len), |h| h.preallocated);
        replay.tail_lost(preallocated.saturating_sub(found.data_end));
    } else if is_last && found.data_end < role.durable_end {
        // Data recorded durable is gone from the end (zeroed): nothing later bounds its seqs.
        replay.tail_lost(role.durable_end - found.data_end);
    }
    report.n_frames += found.n_entries;
    replay.segment(id, found.data_end, found.n_entries);
    Ok(Some(found.data_end))
}

/// Position of the first nonzero byte in `[from, to)`, if any.
pub(crate) fn first_nonzero(
    file: &dyn DiskFile,
    from: u64,
    to: u64,
) -> Result<Option<u64>, DiskError> {
    let mut buf = vec![0u8; 1 << 16];
    let mut pos = from;
    while pos < to {
        let n = usize::try_from(to - pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
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
        let n = usize::try_from(to - pos)
            .unwrap_or(usize::MAX)
            .min(zeros.len());
        file.write_at(pos, &zeros[..n])?;
        pos += n as u64;
    }
    Ok(())
}
