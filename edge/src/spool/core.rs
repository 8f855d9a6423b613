//! The spool core: decides what to keep, drop and declare, and lays out the log. Sans IO: it
//! takes inputs with the time as `now`, and queues [`Output`]s (create, write, sync, remove a
//! segment) that its shell executes in order. No clock, no disk, no awaits.
//!
//! The core assumes each output succeeds once its shell has executed it; a shell whose output
//! fails must throw the core away and recover from disk (see [`crate::spool::Spool`]). That is
//! what lets the core mark records durable, or segments dead, the moment it emits a sync.
//!
//! Per stream `(sensor, boot_epoch)` the core keeps the queue of undelivered items in seq order:
//! readings and drop declarations (`Payload::Dropped`, one item for a whole seq range). The queue
//! always tiles `[acked_end, issued_end)` exactly: every seq issued is acknowledged, queued, or
//! inside a queued declaration. Items leave the queue only through [`SpoolCore::handle_ack`].
//!
//! An item is *pinned* once handed to the uplink (or, after a crash, if it lies below the
//! stream's durable send mark, which always covers what was handed out): a pinned item is never
//! evicted or expired, because declaring it dropped could overlap a delivery the broker holds.
//!
//! Time. Every input carries a [`Now`]: the monotonic clock (`Clock::now`) and the wall clock.
//! Timers (the sync interval, expiry) and record ages run on the *spool clock*, a count of
//! milliseconds that only moves forward:
//! - within one open it advances exactly with the monotonic clock, so a wall clock stepped by
//!   NTP (a Pi without a battery-backed clock jumps by hours when it first syncs) neither
//!   expires every unsent reading at once nor holds a sync back;
//! - it is persisted at every sync (`Entry::Clock`: the spool clock and the wall clock at that
//!   moment), and records carry their spool-clock time (`spooled_at`), so ages survive a
//!   restart;
//! - at open it resumes from the last persisted value plus the downtime the wall clock shows
//!   since then, counted only within `[0, downtime_ms_max]`: a wall clock that stepped back
//!   (or was never set) counts nothing, one that stepped forward by hours counts at most the
//!   bound. Ages can therefore be undercounted (a record is kept longer than
//!   `record_age_ms_max`), never overcounted, and never negative;
//! - a new spool starts its clock at the wall clock, so stamps written by spools older than the
//!   spool clock (which used the wall clock) read as spool-clock times.
//!
//! The wall clock only stamps data: declarations' `device_time`, boot epochs, and the wall
//! half of `Entry::Clock`.

use super::config::{FullPolicy, SpoolConfig};
use super::format::{self, Entry, StreamMark, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::v1;
use sluice_proto::{BootEpoch, DropReason, Payload, Record, SensorId, UnixMillis};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

/// The time of one input: the monotonic clock runs every timer and age, the wall clock only
/// stamps data (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// `Clock::now`.
    pub mono: Instant,
    /// `Clock::wall`.
    pub wall: UnixMillis,
}

/// One stream of seqs: a sensor within one boot epoch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamKey {
    /// The sensor.
    pub sensor: SensorId,
    /// The boot epoch its seqs belong to.
    pub epoch: BootEpoch,
}

/// Where a frame lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// Segment id.
    pub segment: u64,
    /// Byte position of the frame header in the segment.
    pub pos: u64,
    /// Frame length (header and body).
    pub len: u32,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Create segment `id` (truncate, write its header, preallocate, sync it and the directory).
    CreateSegment {
        /// Segment id.
        id: u64,
    },
    /// Write `bytes` at `pos` of segment `segment`.
    Write {
        /// Segment id.
        segment: u64,
        /// Byte position.
        pos: u64,
        /// The frames.
        bytes: Vec<u8>,
    },
    /// Copy the frame at `from` to `pos` of segment `segment`.
    Copy {
        /// Where the frame is.
        from: Loc,
        /// Target segment id.
        segment: u64,
        /// Target byte position.
        pos: u64,
    },
    /// `fdatasync` segment `segment`.
    Sync {
        /// Segment id.
        segment: u64,
    },
    /// Remove segment `id` and sync the directory.
    RemoveSegment {
        /// Segment id.
        id: u64,
    },
}

/// A reading was accepted and given its `(boot_epoch, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The boot epoch.
    pub epoch: BootEpoch,
    /// The seq within `(sensor, epoch)`.
    pub seq: u64,
}

/// A reading was refused; no seq was issued for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// The budget is exhausted and the policy is `Block` (or every evictable segment is pinned
    /// by records handed to the uplink): retry after acknowledgements or expiry free space.
    Full,
    /// The encoded reading is larger than `record_bytes_max`.
    TooLarge {
        /// Its encoded size.
        bytes: u64,
        /// The limit.
        max: u32,
    },
    /// A new sensor would exceed `sensors_max`.
    TooManySensors {
        /// The limit.
        max: u32,
    },
    /// Sources may not submit `Payload::Dropped`; only the spool declares drops.
    DropIsReserved,
}

/// A durable item handed to the uplink by [`SpoolCore::next_batch`]; the shell reads its record
/// at `loc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Its stream.
    pub key: StreamKey,
    /// First seq.
    pub seq: u64,
    /// Last seq (differs from `seq` only for a declaration).
    pub seq_last: u64,
    /// Where its frame is.
    pub loc: Loc,
}

/// A range of seqs declared lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// The stream.
    pub key: StreamKey,
    /// First seq.
    pub seq: u64,
    /// Last seq, inclusive.
    pub seq_last: u64,
    /// Why.
    pub reason: DropReason,
}

/// Counters since the spool was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Readings accepted.
    pub n_appended: u64,
    /// Readings refused with [`Rejected::Full`].
    pub n_rejected_full: u64,
    /// Seqs declared `SpoolFull`.
    pub n_dropped_full: u64,
    /// Seqs declared `Expired`.
    pub n_dropped_expired: u64,
    /// Seqs declared `PowerLoss` at open.
    pub n_dropped_power_loss: u64,
    /// Readings the node refused as invalid, declared `Invalid`.
    pub n_dropped_invalid: u64,
    /// Seqs declared `Storage` (issued, but the disk failed before they were durable).
    pub n_dropped_storage: u64,
    /// Seqs declared `Corrupted` (damaged on disk).
    pub n_dropped_corrupted: u64,
    /// Seqs of older epochs closed by a `ProducerExpired` declaration (the node forgot the
    /// epoch); the never-sent readings among them are counted in `n_resent_new_epoch` too.
    pub n_dropped_producer_expired: u64,
    /// Readings never sent in an epoch the node forgot, resent with new seqs in a newer one.
    pub n_resent_new_epoch: u64,
    /// `fdatasync`s of the log.
    pub n_syncs: u64,
    /// Readings of `n_appended` that a sync made durable: those appended before the last sync
    /// the shell executed.
    pub n_synced: u64,
    /// Segments removed.
    pub n_segments_removed: u64,
    /// Times a control frame (declaration, ack, mark, checkpoint) or a relocated frame rolled a
    /// segment beyond the budget inside one input; the core compacts back within the budget
    /// before that input returns whenever the policy allows it.
    pub n_budget_overruns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendState {
    /// Never handed out: may be evicted or expired.
    Unsent,
    /// Handed to the uplink and not acknowledged.
    Sent,
    /// Possibly delivered (sent before a rewind or a crash): must be sent again, never dropped.
    Resend,
}

#[derive(Debug, Clone)]
struct Item {
    seq: u64,
    seq_last: u64,
    /// `Some` for a drop declaration.
    reason: Option<DropReason>,
    loc: Loc,
    /// Spool-clock ms when it was written.
    spooled_at: u64,
    /// Delivery order across streams (oldest first); per stream, seq order rules.
    order: u64,
    /// Durable once below the core's `durable_log_idx`.
    log_idx: u64,
    send: SendState,
}

impl Item {
    fn is_pinned(&self) -> bool {
        self.send != SendState::Unsent
    }
}

#[derive(Debug, Default)]
struct Stream {
    items: VecDeque<Item>,
    /// Every seq below was delivered.
    acked_end: u64,
    /// The next seq to issue.
    issued_end: u64,
    /// Seqs below may be issued: durable before any of them is.
    reserved_end: u64,
    /// Items below may have been handed to the uplink: durable before any of them is.
    sent_end: u64,
}

/// What is still live in a segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SegmentUse {
    n_items: u64,
    bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Keep,
    Evict(DropReason),
    /// Copy an unsent declaration forward so its segment can be freed.
    Rewrite,
}

enum Piece {
    Keep(Item),
    Declare {
        seq: u64,
        seq_last: u64,
        reason: DropReason,
        order: u64,
        removed: Vec<Item>,
    },
}

/// The spool's decisions. See the module documentation.
#[derive(Debug)]
pub struct SpoolCore {
    config: SpoolConfig,
    epoch: BootEpoch,
    streams: BTreeMap<StreamKey, Stream>,
    n_current_sensors: u32,
    /// Live items per segment.
    segments: BTreeMap<u64, SegmentUse>,
    active: u64,
    active_end: u64,
    active_n_frames: u64,
    buffer: Vec<u8>,
    buffer_pos: u64,
    next_log_idx: u64,
    durable_log_idx: u64,
    /// The monotonic time of the latest input.
    now: Instant,
    /// The wall time of the latest input (stamps only).
    wall: UnixMillis,
    /// The spool clock: `base_ms` at the monotonic instant `base`.
    clock_base: (Instant, u64),
    /// The spool clock at the latest input, ms.
    spool_ms: u64,
    /// The spool clock last written in an `Entry::Clock`.
    clock_written_ms: Option<u64>,
    dirty_since: Option<Instant>,
    pending_acks: BTreeMap<StreamKey, u64>,
    live_bytes: u64,
    next_order: u64,
    outputs: VecDeque<Output>,
    stats: SpoolStats,
    /// Segments of format 1, written by an older release: read, never written.
    v1_segments: BTreeSet<u64>,
}

/// A wall-clock or on-disk time as a spool-clock value (times before 1970 count as 0).
pub(crate) fn to_spool_ms(t: UnixMillis) -> u64 {
    u64::try_from(t.0).unwrap_or(0)
}

/// A spool-clock value as the `UnixMillis` field it is stored in.
fn from_spool_ms(ms: u64) -> UnixMillis {
    UnixMillis(i64::try_from(ms).unwrap_or(i64::MAX))
}

impl SpoolCore {
    fn empty(config: SpoolConfig, epoch: BootEpoch, now: Now, spool_ms: u64) -> SpoolCore {
        SpoolCore {
            config,
            epoch,
            streams: BTreeMap::new(),
            n_current_sensors: 0,
            segments: BTreeMap::new(),
            active: 0,
            active_end: SEGMENT_HEADER_LEN,
            active_n_frames: 0,
            buffer: Vec::new(),
            buffer_pos: SEGMENT_HEADER_LEN,
            next_log_idx: 1,
            durable_log_idx: 1,
            now: now.mono,
            wall: now.wall,
            clock_base: (now.mono, spool_ms),
            spool_ms,
            clock_written_ms: None,
            dirty_since: None,
            pending_acks: BTreeMap::new(),
            live_bytes: 0,
            next_order: 0,
            outputs: VecDeque::new(),
            stats: SpoolStats::default(),
            v1_segments: BTreeSet::new(),
        }
    }

    // ----- getters -----

    /// The boot epoch seqs are issued in.
    pub fn epoch(&self) -> BootEpoch {
        self.epoch
    }

    /// Counters.
    pub fn stats(&self) -> SpoolStats {
        self.stats
    }

    /// Queued items (readings and declarations) not yet acknowledged.
    pub fn n_records(&self) -> u64 {
        self.streams.values().map(|s| s.items.len() as u64).sum()
    }

    /// Bytes of the frames of queued items.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Segment files in use.
    pub fn n_segments(&self) -> u64 {
        self.segments.len() as u64
    }

    /// Streams tracked.
    pub fn n_streams(&self) -> u64 {
        self.streams.len() as u64
    }

    /// Age of the oldest queued item at monotonic time `now`, by the spool clock.
    pub fn oldest_age_ms(&self, now: Instant) -> Option<u64> {
        let spool_ms = self.spool_ms.max(self.spool_ms_at(now));
        self.streams
            .values()
            .flat_map(|s| s.items.iter().map(|i| i.spooled_at))
            .min()
            .map(|t| spool_ms.saturating_sub(t))
    }

    /// The spool clock at the latest input, ms.
    pub fn spool_ms(&self) -> u64 {
        self.spool_ms
    }

    /// The spool clock at monotonic time `t` (never before its base).
    fn spool_ms_at(&self, t: Instant) -> u64 {
        let (base, base_ms) = self.clock_base;
        let elapsed =
            u64::try_from(t.saturating_duration_since(base).as_millis()).unwrap_or(u64::MAX);
        base_ms.saturating_add(elapsed)
    }

    /// The monotonic instant the spool clock reaches `ms` (now, if it already has).
    fn instant_at(&self, ms: u64) -> Option<Instant> {
        let (base, base_ms) = self.clock_base;
        let ahead = ms.saturating_sub(base_ms);
        // A deadline beyond what `Instant` can hold never comes.
        base.checked_add(Duration::from_millis(ahead))
            .map(|t| t.max(self.now))
    }

    /// Takes the time of an input: the monotonic clock moves the spool clock; the wall clock
    /// is only remembered for stamps.
    fn set_now(&mut self, now: Now) {
        self.now = self.now.max(now.mono);
        self.wall = now.wall;
        self.spool_ms = self.spool_ms.max(self.spool_ms_at(self.now));
    }

    /// `(acked_end, issued_end)` of a stream: every seq below `acked_end` was delivered, and the
    /// next seq issued will be `issued_end`.
    pub fn stream_ends(&self, key: &StreamKey) -> Option<(u64, u64)> {
        self.streams.get(key).map(|s| (s.acked_end, s.issued_end))
    }

    /// The queued declarations, in stream and seq order.
    pub fn declared(&self) -> Vec<Declared> {
        let mut out = Vec::new();
        for (key, stream) in &self.streams {
            for item in &stream.items {
                if let Some(reason) = item.reason {
                    out.push(Declared {
                        key: key.clone(),
                        seq: item.seq,
                        seq_last: item.seq_last,
                        reason,
                    });
                }
            }
        }
        out
    }

    /// The next output to execute.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The output [`SpoolCore::poll_output`] gives next, left in place.
    pub fn peek_output(&self) -> Option<&Output> {
        self.outputs.front()
    }

    /// The segments the next outputs remove (the run of `RemoveSegment`s at the front of the
    /// queue: the segments the sync just executed left dead).
    pub fn queued_removals(&self) -> impl Iterator<Item = u64> + '_ {
        self.outputs.iter().map_while(|o| match o {
            Output::RemoveSegment { id } => Some(*id),
            _ => None,
        })
    }

    /// When [`SpoolCore::handle_timeout`] is next due, on the monotonic clock: a sync, or an
    /// expiry.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let sync = self.dirty_since.map(|t| {
            t.checked_add(Duration::from_millis(self.config.sync_interval_ms))
                .unwrap_or(t)
        });
        let expiry = self.next_expiry().and_then(|ms| self.instant_at(ms));
        match (sync, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The spool-clock time of the next expiry.
    fn next_expiry(&self) -> Option<u64> {
        self.streams
            .values()
            .filter_map(|s| {
                s.items
                    .iter()
                    .filter(|i| !i.is_pinned())
                    .find(|i| i.reason.is_none())
            })
            .map(|i| i.spooled_at.saturating_add(self.config.record_age_ms_max))
            .min()
    }

    // ----- inputs -----

    /// A source offers a reading. On success it has its `(boot_epoch, seq)` and will be durable
    /// within `sync_interval_ms`; its seq was reserved durably before being issued.
    pub fn handle_append(
        &mut self,
        now: Now,
        sensor: SensorId,
        device_time: UnixMillis,
        payload: Payload,
    ) -> Result<Appended, Rejected> {
        self.set_now(now);
        self.expire_if_due();
        let result = self.append(sensor, device_time, payload);
        if self.sync_due() {
            self.sync();
        }
        self.compact_if_over();
        self.check_invariants();
        result
    }

    fn append(
        &mut self,
        sensor: SensorId,
        device_time: UnixMillis,
        payload: Payload,
    ) -> Result<Appended, Rejected> {
        if matches!(payload, Payload::Dropped { .. }) {
            return Err(Rejected::DropIsReserved);
        }
        let key = StreamKey {
            sensor,
            epoch: self.epoch,
        };
        let known = self.streams.contains_key(&key);
        if !known && self.n_current_sensors >= self.config.sensors_max {
            return Err(Rejected::TooManySensors {
                max: self.config.sensors_max,
            });
        }
        let seq = self.streams.get(&key).map_or(0, |s| s.issued_end);
        let record = Record {
            sensor: key.sensor.clone(),
            boot_epoch: self.epoch,
            seq,
            device_time,
            payload,
        };
        let body = Entry::Record {
            spooled_at: from_spool_ms(self.spool_ms),
            record,
        }
        .encode();
        if body.len() > self.config.record_bytes_max as usize {
            return Err(Rejected::TooLarge {
                bytes: body.len() as u64,
                max: self.config.record_bytes_max,
            });
        }
        if !known {
            self.streams.insert(key.clone(), Stream::default());
            self.n_current_sensors += 1;
        }
        if seq >= self.streams.get(&key).map_or(0, |s| s.reserved_end) {
            self.reserve(&key);
        }
        if !self.make_room(body.len() as u64 + FRAME_HEADER_LEN) {
            self.stats.n_rejected_full += 1;
            return Err(Rejected::Full);
        }
        let (loc, log_idx) = self.write_body(&body, false);
        let item = Item {
            seq,
            seq_last: seq,
            reason: None,
            loc,
            spooled_at: self.spool_ms,
            order: self.take_order(),
            log_idx,
            send: SendState::Unsent,
        };
        self.add_live(&item);
        let stream = self.stream_mut(&key);
        stream.items.push_back(item);
        stream.issued_end = seq + 1;
        self.stats.n_appended += 1;
        Ok(Appended {
            epoch: self.epoch,
            seq,
        })
    }

    /// The uplink reports every record of `key` up to `seq_through` delivered. Only items handed
    /// out by [`SpoolCore::next_batch`] are acknowledged; returns how many.
    pub fn handle_ack(&mut self, now: Now, key: &StreamKey, seq_through: u64) -> u64 {
        self.set_now(now);
        let mut acked = Vec::new();
        if let Some(stream) = self.streams.get_mut(key) {
            while let Some(front) = stream.items.front() {
                if !front.is_pinned() || front.seq_last > seq_through {
                    break;
                }
                if let Some(item) = stream.items.pop_front() {
                    stream.acked_end = item.seq_last + 1;
                    acked.push(item);
                }
            }
            if !acked.is_empty() {
                self.pending_acks.insert(key.clone(), stream.acked_end);
            }
        }
        for item in &acked {
            self.remove_live(item);
        }
        if !acked.is_empty() {
            self.dirty_since.get_or_insert(self.now);
        }
        if self.sync_due() {
            self.sync();
        }
        self.compact_if_over();
        self.check_invariants();
        acked.len() as u64
    }

    /// Hands out durable items to deliver, oldest first across streams (each stream taking at
    /// most an even share of `records_max` while others have items, then oldest first again)
    /// and in seq order within each; a sensor's newer epoch waits until its older epochs are fully acknowledged. Stops at
    /// `records_max` and at `bytes_max` (but returns at least one item). When an item lies beyond
    /// its stream's durable send mark, the mark is advanced `send_ahead_bytes_max` and synced
    /// first: the shell must execute the outputs before handing anything out.
    pub fn next_batch(&mut self, records_max: u32, bytes_max: u64) -> Vec<Outgoing> {
        let keys = self.sendable_streams();
        let mut heap = BinaryHeap::new();
        let mut cursors = vec![0usize; keys.len()];
        for (idx, key) in keys.iter().enumerate() {
            let stream = &self.streams[key];
            let first = stream
                .items
                .iter()
                .take_while(|i| i.send == SendState::Sent)
                .count();
            cursors[idx] = first;
            if let Some(item) = stream.items.get(first) {
                heap.push(Reverse((item.order, idx)));
            }
        }
        let mut out = Vec::new();
        let mut marked = Vec::new();
        let mut bytes = 0u64;
        // Each stream takes at most its share of a batch while others have items: a sensor the
        // node keeps refusing (its partition read-only or degraded) holds the oldest items, and
        // oldest-first alone would fill every resend with them and starve the other sensors
        // (found by the disk-corruption simulator, seed 86). What the shares leave is filled
        // oldest first.
        let share = (records_max as usize / keys.len().max(1)).max(1);
        let mut taken = vec![0usize; keys.len()];
        let mut deferred: Vec<Reverse<(u64, usize)>> = Vec::new();
        let mut capped = true;
        loop {
            let Some(Reverse((order, idx))) = heap.pop() else {
                if !capped || deferred.is_empty() {
                    break;
                }
                capped = false;
                heap.extend(deferred.drain(..));
                continue;
            };
            if out.len() >= records_max as usize {
                break;
            }
            if capped && taken[idx] >= share {
                deferred.push(Reverse((order, idx)));
                continue;
            }
            let durable_log_idx = self.durable_log_idx;
            let ahead = self.config.send_ahead_bytes_max;
            let Some(stream) = self.streams.get_mut(&keys[idx]) else {
                continue;
            };
            let Some(item) = stream.items.get(cursors[idx]) else {
                continue;
            };
            let len = u64::from(item.loc.len);
            if item.log_idx >= durable_log_idx {
                continue;
            }
            if !out.is_empty() && bytes + len > bytes_max {
                break;
            }
            if item.seq >= stream.sent_end {
                stream.sent_end = send_mark(&stream.items, cursors[idx], ahead);
                marked.push(idx);
            }
            let Some(item) = stream.items.get_mut(cursors[idx]) else {
                continue;
            };
            item.send = SendState::Sent;
            bytes += len;
            out.push(Outgoing {
                key: keys[idx].clone(),
                seq: item.seq,
                seq_last: item.seq_last,
                loc: item.loc,
            });
            cursors[idx] += 1;
            taken[idx] += 1;
            if let Some(next) = stream.items.get(cursors[idx]) {
                heap.push(Reverse((next.order, idx)));
            }
        }
        if !marked.is_empty() {
            marked.sort_unstable();
            marked.dedup();
            for idx in marked {
                let key = &keys[idx];
                let seq_end = self.streams.get(key).map_or(0, |s| s.sent_end);
                self.write_entry(&Entry::Sent {
                    sensor: key.sensor.clone(),
                    epoch: key.epoch,
                    seq_end,
                });
            }
            self.sync();
        }
        self.check_invariants();
        out
    }

    /// The node refused reading `seq` of `key` as invalid for a reason the spool cannot check
    /// (a node `record_bytes_max` smaller than the edge's, say). Resending it would be refused
    /// forever and hold every later reading of its sensor back, so it is replaced by a
    /// `Dropped { reason: Invalid }` declaration of that one seq, synced before this returns and
    /// sent in its place. The declaration stays pinned like the reading was: should an earlier
    /// attempt have stored the reading after all, the node answers the declaration (same seq
    /// range) as a duplicate, so nothing is stored twice. Returns false, changing nothing, when
    /// `seq` is not a reading handed to the uplink.
    pub fn handle_refused(&mut self, now: Now, key: &StreamKey, seq: u64) -> bool {
        self.set_now(now);
        let Some(stream) = self.streams.get(key) else {
            return false;
        };
        let idx = stream.items.partition_point(|i| i.seq_last < seq);
        let Some(old) = stream.items.get(idx).cloned() else {
            return false;
        };
        if old.seq != seq || old.reason.is_some() || !old.is_pinned() {
            return false;
        }
        let declared = self.declare(key, seq, seq, DropReason::Invalid, old.order);
        let item = Item {
            send: old.send,
            ..declared
        };
        self.remove_live(&old);
        if let Some(slot) = self.streams.get_mut(key).and_then(|s| s.items.get_mut(idx)) {
            *slot = item;
        }
        self.count_dropped(DropReason::Invalid, 1);
        // Pinned items are durable: the declaration is, before anything hands it out.
        self.sync();
        self.compact_if_over();
        self.check_invariants();
        true
    }

    /// What [`SpoolCore::handle_expired`] resends of `key` in a new epoch, in seq order: the
    /// readings never handed to the uplink (so never stored), and every `ProducerExpired`
    /// declaration (it closes a range of another epoch, so it means the same in any epoch and
    /// delivering it twice closes nothing twice). The shell reads their records and passes
    /// them back.
    pub fn to_resend(&self, key: &StreamKey) -> Vec<Outgoing> {
        let Some(stream) = self.streams.get(key) else {
            return Vec::new();
        };
        stream
            .items
            .iter()
            .filter(|i| match i.reason {
                None => !i.is_pinned(),
                Some(reason) => matches!(reason, DropReason::ProducerExpired { .. }),
            })
            .map(|i| Outgoing {
                key: key.clone(),
                seq: i.seq,
                seq_last: i.seq_last,
                loc: i.loc,
            })
            .collect()
    }

    /// The node answered `ProducerExpired` for `key`: it forgot this sensor's state in that
    /// epoch and refuses everything of it, so nothing queued for `key` can be delivered under
    /// it any more. `key.epoch` must be older than the spool's epoch (the shell reopens the
    /// spool in a new epoch first when it is not). In the spool's epoch, one
    /// `Dropped { reason: ProducerExpired { epoch, seq, seq_last } }` declaration closes every
    /// seq of `key` not acknowledged, and `resend` (the records [`SpoolCore::to_resend`] named,
    /// possibly before a reopen: readings never stored, so safe to store once) follows it with
    /// new seqs. Readings handed
    /// out before may have been stored: they are not resent, so no reading is stored twice;
    /// other declarations of `key` are subsumed by the closing one. The
    /// declaration is what makes this atomic: replay takes it as the acknowledgement of the
    /// closed range, so a crash can neither resurrect the old items next to their resends nor
    /// lose them silently. Everything is synced before this returns. Returns the closed range
    /// `(seq, seq_last)` of `key`, or `None` (changing nothing) when `key` has nothing queued.
    pub fn handle_expired(
        &mut self,
        now: Now,
        key: &StreamKey,
        resend: Vec<Record>,
    ) -> Option<(u64, u64)> {
        self.set_now(now);
        let stream = self.streams.get(key)?;
        if stream.items.is_empty() {
            return None;
        }
        assert!(
            key.epoch < self.epoch,
            "{key:?} expired in the current epoch"
        );
        let (first, end) = (stream.acked_end, stream.issued_end);
        for record in &resend {
            // `resend` may come from before a reopen, which pins what it cannot prove unsent:
            // each must still be a queued item of `key` of the same kind.
            let kind = |r: &Option<DropReason>| r.map(|r| std::mem::discriminant(&r));
            let reason = match record.payload {
                Payload::Dropped { reason, .. } => Some(reason),
                _ => None,
            };
            assert!(
                stream
                    .items
                    .iter()
                    .any(|i| i.seq == record.seq && kind(&i.reason) == kind(&reason)),
                "resend of {key:?} seq {} is not one of its items",
                record.seq
            );
        }
        let old = std::mem::take(&mut self.stream_mut(key).items);
        let spooled: BTreeMap<u64, (u64, u64)> = old
            .iter()
            .map(|i| (i.seq, (i.spooled_at, i.order)))
            .collect();
        for item in &old {
            self.remove_live(item);
        }
        let stream = self.stream_mut(key);
        stream.acked_end = end;
        self.pending_acks.insert(key.clone(), end);
        let target = StreamKey {
            sensor: key.sensor.clone(),
            epoch: self.epoch,
        };
        if !self.streams.contains_key(&target) {
            // Not a new sensor: it moves epochs, so `sensors_max` does not refuse it.
            self.streams.insert(target.clone(), Stream::default());
            self.n_current_sensors += 1;
        }
        self.reserve_for(&target, resend.len() as u64 + 1);
        let reason = DropReason::ProducerExpired {
            epoch: key.epoch,
            seq: first,
            seq_last: end - 1,
        };
        let seq = self.stream_mut(&target).issued_end;
        let order = old.front().map_or_else(|| self.take_order(), |i| i.order);
        let declared = self.declare(&target, seq, seq, reason, order);
        let stream = self.stream_mut(&target);
        stream.items.push_back(declared);
        stream.issued_end = seq + 1;
        for record in resend {
            let (spooled_at, order) = spooled.get(&record.seq).copied().unwrap_or((0, 0));
            self.reissue(&target, record, spooled_at, order);
        }
        self.count_dropped(reason, end - first);
        self.dirty_since.get_or_insert(self.now);
        self.sync();
        self.compact_if_over();
        self.check_invariants();
        Some((first, end - 1))
    }

    /// Makes sure `n` more seqs of `key` are reserved durably before any is issued.
    fn reserve_for(&mut self, key: &StreamKey, n: u64) {
        let block = self.config.seq_reserve_block;
        let stream = self.stream_mut(key);
        if stream.issued_end + n <= stream.reserved_end {
            return;
        }
        stream.reserved_end = stream.issued_end + n + block;
        let seq_end = stream.reserved_end;
        self.write_entry(&Entry::Reserve {
            sensor: key.sensor.clone(),
            epoch: key.epoch,
            seq_end,
        });
        self.sync();
    }

    /// Writes `record` again as the next seq of `key` (a declaration covers just that seq), as
    /// a frame beyond `make_room`: the items it replaces were just freed, and compaction
    /// restores the budget.
    fn reissue(&mut self, key: &StreamKey, record: Record, spooled_at: u64, order: u64) {
        let seq = self.stream_mut(key).issued_end;
        let (payload, reason) = match record.payload {
            Payload::Dropped { reason, .. } => (
                Payload::Dropped {
                    seq_last: seq,
                    reason,
                },
                Some(reason),
            ),
            payload => (payload, None),
        };
        let record = Record {
            boot_epoch: key.epoch,
            seq,
            payload,
            ..record
        };
        let (loc, log_idx) = self.write_entry(&Entry::Record {
            spooled_at: from_spool_ms(spooled_at),
            record,
        });
        let item = Item {
            seq,
            seq_last: seq,
            reason,
            loc,
            spooled_at,
            order,
            log_idx,
            send: SendState::Unsent,
        };
        self.add_live(&item);
        let stream = self.stream_mut(key);
        stream.items.push_back(item);
        stream.issued_end = seq + 1;
        if reason.is_none() {
            self.stats.n_resent_new_epoch += 1;
        }
    }

    /// The uplink lost its connection: everything handed out and not acknowledged must be sent
    /// again (and stays pinned: it may have been delivered).
    pub fn handle_rewind(&mut self) {
        for stream in self.streams.values_mut() {
            for item in stream.items.iter_mut() {
                if item.send == SendState::Sent {
                    item.send = SendState::Resend;
                }
            }
        }
        self.check_invariants();
    }

    /// Time passed: expire old readings, sync when due.
    pub fn handle_timeout(&mut self, now: Now) {
        self.set_now(now);
        self.expire_if_due();
        if self.sync_due() {
            self.sync();
        }
        self.compact_if_over();
        self.check_invariants();
    }

    /// Makes everything appended so far durable now (shutdown, or a caller that cannot wait).
    pub fn handle_sync(&mut self, now: Now) {
        self.set_now(now);
        if self.dirty_since.is_some() || !self.buffer.is_empty() {
            self.sync();
        }
        self.compact_if_over();
        self.check_invariants();
    }

    /// Clean shutdown: gives back the unused reservations (so the next open declares nothing
    /// lost) and syncs. The core stays usable; a later append reserves again.
    pub fn handle_close(&mut self, now: Now) {
        self.set_now(now);
        let epoch = self.epoch;
        for (_, stream) in self.streams.iter_mut().filter(|(k, _)| k.epoch == epoch) {
            stream.reserved_end = stream.issued_end;
        }
        let checkpoint = self.checkpoint();
        self.pending_acks.clear();
        self.write_entry(&checkpoint);
        self.sync_without_top_up();
        self.check_invariants();
    }

    // ----- helpers -----

    fn take_order(&mut self) -> u64 {
        self.next_order += 1;
        self.next_order - 1
    }

    fn stream_mut(&mut self, key: &StreamKey) -> &mut Stream {
        self.streams.entry(key.clone()).or_default()
    }

    /// Counts an item in its segment.
    fn add_live(&mut self, item: &Item) {
        let used = self.segments.entry(item.loc.segment).or_default();
        used.n_items += 1;
        used.bytes += u64::from(item.loc.len);
        self.live_bytes += u64::from(item.loc.len);
    }

    fn remove_live(&mut self, item: &Item) {
        if let Some(used) = self.segments.get_mut(&item.loc.segment) {
            used.n_items = used.n_items.saturating_sub(1);
            used.bytes = used.bytes.saturating_sub(u64::from(item.loc.len));
        }
        self.live_bytes -= u64::from(item.loc.len);
    }

    fn has_dead_segment(&self) -> bool {
        self.segments
            .iter()
            .any(|(id, used)| *id != self.active && used.n_items == 0)
    }

    fn sync_due(&self) -> bool {
        self.dirty_since.is_some_and(|t| {
            self.now.saturating_duration_since(t)
                >= Duration::from_millis(self.config.sync_interval_ms)
        })
    }

    fn fits(&self, len: u64) -> bool {
        self.active_end + len <= self.config.segment_bytes_max || self.active_n_frames <= 1
    }

    /// Appends an encoded entry to the log buffer; returns where and its log index.
    fn write_body(&mut self, body: &[u8], control: bool) -> (Loc, u64) {
        let len = body.len() as u64 + FRAME_HEADER_LEN;
        if !self.fits(len) {
            assert!(control, "a data frame was written without make_room");
            if self.n_segments() >= self.config.n_segments_max() {
                self.stats.n_budget_overruns += 1;
            }
            self.roll();
        }
        let pos = self.active_end;
        let written = format::encode_frame(self.active, pos, body, &mut self.buffer);
        self.active_end += u64::from(written);
        self.active_n_frames += 1;
        let log_idx = self.next_log_idx;
        self.next_log_idx += 1;
        self.dirty_since.get_or_insert(self.now);
        if self.buffer.len() as u64 >= self.config.write_buffer_bytes_max {
            self.flush_buffer();
        }
        let loc = Loc {
            segment: self.active,
            pos,
            len: written,
        };
        (loc, log_idx)
    }

    fn write_entry(&mut self, entry: &Entry) -> (Loc, u64) {
        self.write_body(&entry.encode(), true)
    }

    fn flush_buffer(&mut self) {
        if !self.buffer.is_empty() {
            self.outputs.push_back(Output::Write {
                segment: self.active,
                pos: self.buffer_pos,
                bytes: std::mem::take(&mut self.buffer),
            });
        }
        self.buffer_pos = self.active_end;
    }

    fn checkpoint(&self) -> Entry {
        Entry::Checkpoint {
            epoch: self.epoch,
            streams: self
                .streams
                .iter()
                .map(|(key, s)| StreamMark {
                    sensor: key.sensor.clone(),
                    epoch: key.epoch,
                    acked_end: s.acked_end,
                    reserved_end: s.reserved_end,
                    sent_end: s.sent_end,
                })
                .collect(),
        }
    }

    /// Closes the active segment (durably) and starts the next with a checkpoint.
    fn roll(&mut self) {
        self.flush_buffer();
        self.outputs.push_back(Output::Sync {
            segment: self.active,
        });
        self.stats.n_syncs += 1;
        self.stats.n_synced = self.stats.n_appended;
        self.durable_log_idx = self.next_log_idx;
        let id = self.active + 1;
        self.open_segment(id);
    }

    fn open_segment(&mut self, id: u64) {
        self.outputs.push_back(Output::CreateSegment { id });
        self.segments.insert(id, SegmentUse::default());
        self.active = id;
        self.active_end = SEGMENT_HEADER_LEN;
        self.buffer_pos = SEGMENT_HEADER_LEN;
        self.active_n_frames = 0;
        // The checkpoint carries every stream's ack progress, so pending acks are in it.
        let checkpoint = self.checkpoint();
        self.pending_acks.clear();
        self.write_entry(&checkpoint);
    }

    /// Writes pending acks and reservation top-ups, syncs, then forgets closed streams and
    /// removes segments nothing live is left in.
    fn sync(&mut self) {
        let block = self.config.seq_reserve_block;
        let low: Vec<StreamKey> = self
            .streams
            .iter()
            .filter(|(k, s)| {
                k.epoch == self.epoch && s.reserved_end - s.issued_end < block.div_ceil(2)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in low {
            self.write_reservation(&key);
        }
        self.sync_without_top_up();
    }

    fn sync_without_top_up(&mut self) {
        for (key, seq_end) in std::mem::take(&mut self.pending_acks) {
            self.write_entry(&Entry::Ack {
                sensor: key.sensor,
                epoch: key.epoch,
                seq_end,
            });
        }
        if self.clock_written_ms != Some(self.spool_ms) {
            // The spool clock goes into the log with what this sync makes durable.
            self.write_entry(&Entry::Clock {
                spool_ms: self.spool_ms,
                wall: self.wall,
            });
            self.clock_written_ms = Some(self.spool_ms);
        }
        self.flush_buffer();
        self.outputs.push_back(Output::Sync {
            segment: self.active,
        });
        self.stats.n_syncs += 1;
        self.stats.n_synced = self.stats.n_appended;
        self.durable_log_idx = self.next_log_idx;
        self.dirty_since = None;
        let epoch = self.epoch;
        self.streams
            .retain(|k, s| k.epoch == epoch || !s.items.is_empty());
        let dead: Vec<u64> = self
            .segments
            .iter()
            .filter(|(id, used)| **id != self.active && used.n_items == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            // (It stays in `v1_segments`: copies out of it may still be queued, and ids are
            // never reused.)
            self.segments.remove(&id);
            self.outputs.push_back(Output::RemoveSegment { id });
            self.stats.n_segments_removed += 1;
        }
    }

    fn write_reservation(&mut self, key: &StreamKey) {
        let block = self.config.seq_reserve_block;
        let stream = self.stream_mut(key);
        stream.reserved_end = stream.issued_end + block;
        let seq_end = stream.reserved_end;
        self.write_entry(&Entry::Reserve {
            sensor: key.sensor.clone(),
            epoch: key.epoch,
            seq_end,
        });
    }

    /// Reserves the next block of seqs of `key` durably, before any of them is issued.
    fn reserve(&mut self, key: &StreamKey) {
        self.write_reservation(key);
        self.sync();
    }

    /// Makes room for a data frame of `len` bytes in the active segment: rolls within the data
    /// budget (all segments but one, which is kept for declarations, acks and relocation), else
    /// frees a segment as the policy allows. False when the reading must be refused.
    fn make_room(&mut self, len: u64) -> bool {
        let data_segments_max = self.config.n_segments_max() - 1;
        loop {
            // Control frames may have spilled into the reserved segment: data never does.
            if self.fits(len) && self.n_segments() <= data_segments_max {
                return true;
            }
            if self.n_segments() < data_segments_max {
                self.roll();
                return true;
            }
            if self.has_dead_segment() {
                self.sync();
                continue;
            }
            let before = self.n_segments();
            if !self.free_segment() {
                return false;
            }
            if self.n_segments() >= before && !(self.fits(len) && before <= data_segments_max) {
                return false;
            }
        }
    }

    /// Keeps the last segment of the budget free for control frames: when it is in use (or
    /// control frames overran the budget), frees segments while that makes progress.
    fn compact_if_over(&mut self) {
        while self.n_segments() >= self.config.n_segments_max() {
            if self.has_dead_segment() {
                self.sync();
                continue;
            }
            let before = self.n_segments();
            if !self.free_segment() || self.n_segments() >= before {
                return;
            }
        }
    }

    /// Frees one closed segment, then syncs so it is removed. With `DropOldest`, the oldest: its
    /// unsent readings are declared `SpoolFull`, its unsent declarations rewritten, and its
    /// pinned items copied forward. With `Block`, the one with the fewest live bytes, if it has
    /// dead bytes worth reclaiming: everything live in it is copied forward, nothing is dropped.
    /// False when no segment qualifies.
    fn free_segment(&mut self) -> bool {
        let drop = self.config.policy == FullPolicy::DropOldest;
        let closed = self.segments.iter().filter(|(id, _)| **id != self.active);
        // Under Block only compaction frees space: the segment with the most dead bytes.
        let room = self.config.segment_bytes_max - SEGMENT_HEADER_LEN;
        let victim = if drop {
            closed.map(|(id, _)| *id).next()
        } else {
            closed
                .filter(|(_, used)| used.bytes < room / 2 || used.bytes + 512 < room)
                .min_by_key(|(id, used)| (used.bytes, **id))
                .map(|(id, _)| *id)
        };
        let Some(victim) = victim else {
            return false;
        };
        let keys: Vec<StreamKey> = self
            .streams
            .iter()
            .filter(|(_, s)| s.items.iter().any(|i| i.loc.segment == victim))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.retile(&key, |item| {
                match (item.loc.segment == victim, item.reason) {
                    (true, None) if drop => Action::Evict(DropReason::SpoolFull),
                    (true, Some(_)) => Action::Rewrite,
                    _ => Action::Keep,
                }
            });
            self.relocate(&key, victim);
        }
        self.sync();
        true
    }

    /// Copies every item of `key` still in segment `victim` to the end of the log.
    fn relocate(&mut self, key: &StreamKey, victim: u64) {
        let n = self.streams.get(key).map_or(0, |s| s.items.len());
        for idx in 0..n {
            let Some(item) = self
                .streams
                .get(key)
                .and_then(|s| s.items.get(idx))
                .cloned()
            else {
                continue;
            };
            if item.loc.segment != victim {
                continue;
            }
            let loc = self.copy_frame(item.loc);
            self.remove_live(&item);
            let moved = Item { loc, ..item };
            self.add_live(&moved);
            if let Some(slot) = self.streams.get_mut(key).and_then(|s| s.items.get_mut(idx)) {
                *slot = moved;
            }
        }
    }

    /// Appends a copy of the frame at `from` (the shell frames its body again for its new
    /// place; a frame of a format-1 segment grows by the difference of the frame headers).
    fn copy_frame(&mut self, from: Loc) -> Loc {
        let len = u64::from(from.len) - self.frame_header_len(from.segment) + FRAME_HEADER_LEN;
        if !self.fits(len) {
            if self.n_segments() >= self.config.n_segments_max() {
                self.stats.n_budget_overruns += 1;
            }
            self.roll();
        }
        self.flush_buffer();
        let pos = self.active_end;
        self.outputs.push_back(Output::Copy {
            from,
            segment: self.active,
            pos,
        });
        self.active_end += len;
        self.active_n_frames += 1;
        self.buffer_pos = self.active_end;
        self.dirty_since.get_or_insert(self.now);
        Loc {
            segment: self.active,
            pos,
            len: u32::try_from(len).unwrap_or(u32::MAX),
        }
    }

    /// True when segment `id` is of format 1 (read only; see `v1.rs`).
    pub(crate) fn is_v1(&self, id: u64) -> bool {
        self.v1_segments.contains(&id)
    }

    /// Bytes of the frame header in segment `id`.
    fn frame_header_len(&self, id: u64) -> u64 {
        if self.is_v1(id) {
            v1::FRAME_HEADER_LEN as u64
        } else {
            FRAME_HEADER_LEN
        }
    }

    fn expire_if_due(&mut self) {
        if self.next_expiry().is_none_or(|t| self.spool_ms < t) {
            return;
        }
        let age_max = self.config.record_age_ms_max;
        let now = self.spool_ms;
        let expired = |item: &Item| now.saturating_sub(item.spooled_at) >= age_max;
        let mut due = Vec::new();
        for (key, stream) in &self.streams {
            // Expire the leading run of unsent readings that are too old (declarations in it
            // stay), so that what is declared is contiguous with what came before.
            let mut stop = None;
            let mut any = false;
            for item in stream.items.iter().filter(|i| !i.is_pinned()) {
                if item.reason.is_some() {
                    continue;
                }
                if !expired(item) {
                    stop = Some(item.seq);
                    break;
                }
                any = true;
            }
            if any {
                due.push((key.clone(), stop.unwrap_or(u64::MAX)));
            }
        }
        for (key, stop) in due {
            self.retile(&key, |item| {
                if item.reason.is_none() && item.seq < stop && expired(item) {
                    Action::Evict(DropReason::Expired)
                } else {
                    Action::Keep
                }
            });
        }
    }

    /// Replaces the evicted items of one stream by declarations: each run of consecutive seqs
    /// with one reason becomes one `Dropped` record, merged with adjacent unsent declarations of
    /// the same reason. Pinned items are never touched.
    fn retile(&mut self, key: &StreamKey, decide: impl Fn(&Item) -> Action) {
        let Some(stream) = self.streams.get_mut(key) else {
            return;
        };
        let pieces = plan_retile(std::mem::take(&mut stream.items), decide);
        let mut items = VecDeque::with_capacity(pieces.len());
        for piece in pieces {
            match piece {
                Piece::Keep(item) => items.push_back(item),
                Piece::Declare {
                    seq,
                    seq_last,
                    reason,
                    order,
                    removed,
                } => {
                    for item in &removed {
                        self.remove_live(item);
                        if item.reason.is_none() {
                            self.count_dropped(reason, 1);
                        }
                    }
                    items.push_back(self.declare(key, seq, seq_last, reason, order));
                }
            }
        }
        self.stream_mut(key).items = items;
    }

    fn count_dropped(&mut self, reason: DropReason, n: u64) {
        let counter = match reason {
            DropReason::SpoolFull => &mut self.stats.n_dropped_full,
            DropReason::Expired => &mut self.stats.n_dropped_expired,
            DropReason::PowerLoss => &mut self.stats.n_dropped_power_loss,
            DropReason::Invalid => &mut self.stats.n_dropped_invalid,
            DropReason::Storage => &mut self.stats.n_dropped_storage,
            DropReason::Corrupted => &mut self.stats.n_dropped_corrupted,
            DropReason::ProducerExpired { .. } => &mut self.stats.n_dropped_producer_expired,
        };
        *counter += n;
    }

    /// Declares seqs `first..=last` of `key` lost at recovery and queues the declarations in seq
    /// order. With `pinned`, the seqs below the stream's send mark may have been delivered: they
    /// are declared one seq each and resent first (the node answers a declaration of exactly a
    /// stored reading's seq as a duplicate); the rest is one range.
    fn declare_lost(
        &mut self,
        key: &StreamKey,
        first: u64,
        last: u64,
        reason: DropReason,
        order: u64,
        pinned: bool,
    ) {
        let sent_end = self.streams.get(key).map_or(0, |s| s.sent_end);
        let pinned_end = if pinned {
            sent_end.clamp(first, last + 1)
        } else {
            first
        };
        let mut pieces = Vec::new();
        for seq in first..pinned_end {
            let item = self.declare(key, seq, seq, reason, order);
            pieces.push(Item {
                send: SendState::Resend,
                ..item
            });
        }
        if pinned_end <= last {
            pieces.push(self.declare(key, pinned_end, last, reason, order));
        }
        self.count_dropped(reason, last - first + 1);
        let stream = self.stream_mut(key);
        let at = stream.items.partition_point(|i| i.seq < first);
        for (idx, item) in pieces.into_iter().enumerate() {
            stream.items.insert(at + idx, item);
        }
    }

    /// Writes a declaration record and returns its (live) item.
    fn declare(
        &mut self,
        key: &StreamKey,
        seq: u64,
        seq_last: u64,
        reason: DropReason,
        order: u64,
    ) -> Item {
        let record = Record {
            sensor: key.sensor.clone(),
            boot_epoch: key.epoch,
            seq,
            device_time: self.wall,
            payload: Payload::Dropped { seq_last, reason },
        };
        let (loc, log_idx) = self.write_entry(&Entry::Record {
            spooled_at: from_spool_ms(self.spool_ms),
            record,
        });
        let item = Item {
            seq,
            seq_last,
            reason: Some(reason),
            loc,
            spooled_at: self.spool_ms,
            order,
            log_idx,
            send: SendState::Unsent,
        };
        self.add_live(&item);
        item
    }

    /// The streams the uplink may draw from: per sensor, only its oldest epoch with items (the
    /// broker refuses an older epoch once it has seen a newer one).
    fn sendable_streams(&self) -> Vec<StreamKey> {
        let mut out: Vec<StreamKey> = Vec::new();
        for (key, stream) in &self.streams {
            if stream.items.is_empty() {
                continue;
            }
            if out.last().is_some_and(|k| k.sensor == key.sensor) {
                continue;
            }
            out.push(key.clone());
        }
        out
    }

    /// Asserts the core's invariants: cheap ones always, per-item ones under
    /// `debug_assertions`. For every stream, acknowledged ∪ queued ∪ declared tiles every seq
    /// issued: the queue covers exactly `[acked_end, issued_end)`, in order, without overlap.
    pub fn check_invariants(&self) {
        assert!(
            self.segments.contains_key(&self.active),
            "active segment untracked"
        );
        assert!(self.durable_log_idx <= self.next_log_idx);
        if cfg!(debug_assertions) {
            self.check_items();
        }
    }

    fn check_items(&self) {
        let mut live: BTreeMap<u64, SegmentUse> = BTreeMap::new();
        let mut bytes = 0u64;
        let mut n_current = 0u32;
        for (key, stream) in &self.streams {
            n_current += u32::from(key.epoch == self.epoch);
            assert!(key.epoch <= self.epoch, "stream {key:?} from the future");
            let mut expect = stream.acked_end;
            let mut seen_unsent = false;
            let mut seen_resend = false;
            for item in &stream.items {
                assert_eq!(item.seq, expect, "stream {key:?}: seqs not tiled");
                assert!(item.seq_last >= item.seq);
                assert!(item.reason.is_some() || item.seq == item.seq_last);
                match item.send {
                    SendState::Sent => assert!(!seen_unsent && !seen_resend, "{key:?}: sent gap"),
                    SendState::Resend => {
                        assert!(!seen_unsent, "{key:?}: resend after unsent");
                        seen_resend = true;
                    }
                    SendState::Unsent => seen_unsent = true,
                }
                assert!(!item.is_pinned() || item.log_idx < self.durable_log_idx);
                expect = item.seq_last + 1;
                assert!(
                    !item.is_pinned() || item.seq < stream.sent_end,
                    "{key:?}: unmarked send"
                );
                let used = live.entry(item.loc.segment).or_default();
                used.n_items += 1;
                used.bytes += u64::from(item.loc.len);
                bytes += u64::from(item.loc.len);
            }
            assert_eq!(
                expect, stream.issued_end,
                "stream {key:?}: queue ends early"
            );
            assert!(
                stream.issued_end <= stream.reserved_end,
                "{key:?}: unreserved seqs"
            );
        }
        assert_eq!(n_current, self.n_current_sensors);
        assert_eq!(bytes, self.live_bytes);
        for (id, used) in &self.segments {
            assert_eq!(
                live.remove(id).unwrap_or_default(),
                *used,
                "segment {id} live count"
            );
        }
        assert!(live.is_empty(), "items in removed segments: {live:?}");
    }
}

/// Groups a stream's items into kept items and declarations. Pure.
fn plan_retile(items: VecDeque<Item>, decide: impl Fn(&Item) -> Action) -> Vec<Piece> {
    struct Run {
        reason: DropReason,
        changed: bool,
        items: Vec<Item>,
    }
    fn close(run: Option<Run>, out: &mut Vec<Piece>) {
        let Some(run) = run else { return };
        if !run.changed {
            out.extend(run.items.into_iter().map(Piece::Keep));
            return;
        }
        let (Some(first), Some(last)) = (run.items.first(), run.items.last()) else {
            return;
        };
        out.push(Piece::Declare {
            seq: first.seq,
            seq_last: last.seq_last,
            reason: run.reason,
            order: run
                .items
                .iter()
                .map(|i| i.order)
                .min()
                .unwrap_or(first.order),
            removed: run.items,
        });
    }
    let mut out = Vec::with_capacity(items.len());
    let mut run: Option<Run> = None;
    for item in items {
        let action = if item.is_pinned() {
            Action::Keep
        } else {
            decide(&item)
        };
        let joins = match (action, item.reason) {
            (Action::Evict(reason), None) => Some((reason, true)),
            (Action::Rewrite, Some(reason)) => Some((reason, true)),
            (Action::Keep, Some(reason)) if !item.is_pinned() => Some((reason, false)),
            _ => None,
        };
        match joins {
            Some((reason, changed)) => {
                let extends = run.as_ref().is_some_and(|r| {
                    r.reason == reason && r.items.last().is_some_and(|l| l.seq_last + 1 == item.seq)
                });
                if !extends {
                    close(run.take(), &mut out);
                }
                let current = run.get_or_insert(Run {
                    reason,
                    changed: false,
                    items: Vec::new(),
                });
                current.changed |= changed;
                current.items.push(item);
            }
            None => {
                close(run.take(), &mut out);
                out.push(Piece::Keep(item));
            }
        }
    }
    close(run, &mut out);
    out
}

/// Rebuilds a core from the frames of a spool directory, in log order. Recovery is replay: a
/// declaration replaces the items it covers, an ack or checkpoint drops what it acknowledges.
#[derive(Debug)]
pub(crate) struct Replay {
    config: SpoolConfig,
    streams: BTreeMap<StreamKey, Stream>,
    epoch_max: BootEpoch,
    next_order: u64,
    /// `(data end, frames)` of each segment.
    segments: BTreeMap<u64, (u64, u64)>,
    /// The last `Entry::Clock` in log order: `(spool_ms, wall)`.
    clock: Option<(u64, UnixMillis)>,
    /// The latest `spooled_at` of any record.
    spooled_max: Option<u64>,
    /// Bytes of the last segment lost to damage that nothing later in the log accounts for.
    tail_lost_bytes: u64,
    /// Segments of format 1.
    v1_segments: BTreeSet<u64>,
    /// Segments never to be appended to again (a damaged header, a file cut short).
    no_resume: BTreeSet<u64>,
    /// The largest id of a segment the manifest records but that is gone: never reused.
    lost_segment_max: Option<u64>,
}

/// What recovery decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Ranges of the previous epochs declared lost to the power cut.
    pub(crate) power_loss: Vec<Declared>,
    /// Downtime the spool clock counted since it was last persisted, ms.
    pub(crate) downtime_counted_ms: u64,
    /// What the wall clock claims passed since then (negative: it went back), ms.
    pub(crate) downtime_wall_ms: i64,
}

impl Replay {
    pub(crate) fn new(config: SpoolConfig) -> Replay {
        Replay {
            config,
            streams: BTreeMap::new(),
            epoch_max: BootEpoch(0),
            next_order: 0,
            segments: BTreeMap::new(),
            clock: None,
            spooled_max: None,
            tail_lost_bytes: 0,
            v1_segments: BTreeSet::new(),
            no_resume: BTreeSet::new(),
            lost_segment_max: None,
        }
    }

    /// Segment `id` was recorded but is gone: the open starts a segment after it.
    pub(crate) fn lost_segment(&mut self, id: u64) {
        self.lost_segment_max = self.lost_segment_max.max(Some(id));
    }

    /// Damage took `bytes` at the end of the last segment: frames no later entry accounts for.
    pub(crate) fn tail_lost(&mut self, bytes: u64) {
        self.tail_lost_bytes += bytes;
    }

    /// Marks segment `id` as of format 1, before its frames are replayed.
    pub(crate) fn v1_segment(&mut self, id: u64) {
        self.v1_segments.insert(id);
    }

    /// Segment `id` must not be appended to: if it is the last, the open starts a new one.
    pub(crate) fn no_resume(&mut self, id: u64) {
        self.no_resume.insert(id);
    }

    /// Registers a segment once its frames were replayed.
    pub(crate) fn segment(&mut self, id: u64, data_end: u64, n_frames: u64) {
        self.segments.insert(id, (data_end, n_frames));
    }

    /// Replays one frame; `Err` names what is inconsistent.
    pub(crate) fn entry(&mut self, loc: Loc, entry: Entry) -> Result<(), String> {
        let first = if self.v1_segments.contains(&loc.segment) {
            v1::SEGMENT_HEADER_LEN
        } else {
            SEGMENT_HEADER_LEN
        };
        if loc.pos == first && !matches!(entry, Entry::Checkpoint { .. }) {
            return Err(format!(
                "segment {} does not start with a checkpoint",
                loc.segment
            ));
        }
        check_ranges(&entry)?;
        match entry {
            Entry::Record { spooled_at, record } => self.record(loc, spooled_at, record),
            Entry::Ack {
                sensor,
                epoch,
                seq_end,
            } => acknowledge(
                self.streams.entry(StreamKey { sensor, epoch }).or_default(),
                seq_end,
            ),
            Entry::Reserve {
                sensor,
                epoch,
                seq_end,
            } => {
                let stream = self.streams.entry(StreamKey { sensor, epoch }).or_default();
                stream.reserved_end = stream.reserved_end.max(seq_end);
                Ok(())
            }
            Entry::Sent {
                sensor,
                epoch,
                seq_end,
            } => {
                let stream = self.streams.entry(StreamKey { sensor, epoch }).or_default();
                stream.sent_end = stream.sent_end.max(seq_end);
                Ok(())
            }
            Entry::Checkpoint { epoch, streams } => self.checkpoint(epoch, streams),
            Entry::Open { epoch } => {
                self.epoch_max = self.epoch_max.max(epoch);
                Ok(())
            }
            Entry::Clock { spool_ms, wall } => {
                self.clock = Some((spool_ms, wall));
                Ok(())
            }
        }
    }

    fn checkpoint(&mut self, epoch: BootEpoch, marks: Vec<StreamMark>) -> Result<(), String> {
        self.epoch_max = self.epoch_max.max(epoch);
        let mut listed = BTreeMap::new();
        for mark in marks {
            let key = StreamKey {
                sensor: mark.sensor,
                epoch: mark.epoch,
            };
            let stream = self.streams.entry(key.clone()).or_default();
            // A checkpoint states the reservation (a clean close gives unused seqs back).
            stream.reserved_end = mark.reserved_end;
            stream.sent_end = stream.sent_end.max(mark.sent_end);
            acknowledge(stream, mark.acked_end)?;
            listed.insert(key, ());
        }
        // A stream left out of a checkpoint was closed: fully delivered in an older epoch.
        for key in self.streams.keys() {
            if !listed.contains_key(key) && key.epoch >= epoch {
                return Err(format!("checkpoint of epoch {epoch} omits stream {key:?}"));
            }
        }
        self.streams.retain(|k, _| listed.contains_key(k));
        Ok(())
    }

    fn record(&mut self, loc: Loc, spooled_at: UnixMillis, record: Record) -> Result<(), String> {
        let spooled_at = to_spool_ms(spooled_at);
        self.spooled_max = self.spooled_max.max(Some(spooled_at));
        let key = StreamKey {
            sensor: record.sensor.clone(),
            epoch: record.boot_epoch,
        };
        self.epoch_max = self.epoch_max.max(key.epoch);
        let (seq, seq_last) = (record.seq, record.seq_last());
        // The node's own range check (values are also bounded by `check_ranges`).
        record.check_seqs().map_err(|e| format!("{key:?}: {e}"))?;
        let reason = match record.payload {
            Payload::Dropped { reason, .. } => Some(reason),
            _ => None,
        };
        if let Some(DropReason::ProducerExpired {
            epoch, seq_last, ..
        }) = reason
        {
            // The declaration closes that range of the older epoch: it is written before the
            // ack that says so, and a torn tail may keep only the declaration.
            if epoch < key.epoch {
                let old = StreamKey {
                    sensor: key.sensor.clone(),
                    epoch,
                };
                let closed = self.streams.entry(old.clone()).or_default();
                acknowledge(closed, seq_last.saturating_add(1))
                    .map_err(|e| format!("{old:?}: {e}"))?;
            }
        }
        let order = self.next_order;
        self.next_order += 1;
        let stream = self.streams.entry(key.clone()).or_default();
        if seq_last < stream.acked_end {
            return Ok(()); // delivered already
        }
        if seq < stream.acked_end {
            return Err(format!(
                "{key:?}: {seq}..={seq_last} straddles acked end {}",
                stream.acked_end
            ));
        }
        // Items are sorted and disjoint, so the ones overlapping [seq, seq_last] are a range.
        let at = stream.items.partition_point(|i| i.seq_last < seq);
        let end = stream.items.partition_point(|i| i.seq <= seq_last);
        let mut removed_order = None;
        if at < end {
            if reason.is_none() {
                // A relocated copy replaces the original; anything else is a second reading.
                if end - at == 1
                    && stream
                        .items
                        .get(at)
                        .is_some_and(|i| i.seq == seq && i.reason.is_none())
                {
                    if let Some(existing) = stream.items.get_mut(at) {
                        existing.loc = loc;
                    }
                    return Ok(());
                }
                return Err(format!("{key:?}: reading {seq} written twice"));
            }
            let splits = stream.items.get(at).is_some_and(|i| i.seq < seq)
                || stream
                    .items
                    .get(end - 1)
                    .is_some_and(|i| i.seq_last > seq_last);
            if splits {
                return Err(format!(
                    "{key:?}: declaration {seq}..={seq_last} splits an item"
                ));
            }
            removed_order = stream.items.drain(at..end).map(|i| i.order).min();
        }
        let item = Item {
            seq,
            seq_last,
            reason,
            loc,
            spooled_at,
            order: removed_order.unwrap_or(order),
            log_idx: 0,
            send: SendState::Unsent,
        };
        stream.items.insert(at, item);
        Ok(())
    }

    /// Checks that every stream tiles, declares what the power cut (or a failed disk: `lost`)
    /// may have taken, opens the new epoch (durably, with a checkpoint) and returns the core and
    /// what it declared.
    ///
    /// With `damaged` (the scan found damage, see `Spool`'s recovery rule), seqs missing between
    /// recovered items are declared `Corrupted` instead of refused as inconsistent, and a
    /// reservation the damage took is raised to what the items show. Declared seqs below the
    /// stream's send mark may have been delivered, so they are declared one seq each (a
    /// declaration of exactly a stored reading's seq is answered as a duplicate) and resent
    /// first; the rest as one range.
    pub(crate) fn finish(
        self,
        now: Now,
        lost: DropReason,
        damaged: bool,
    ) -> Result<(SpoolCore, Recovered), String> {
        // Epochs follow the wall clock (ms) when it is ahead of the spool's own count, so an
        // agent whose spool was wiped (a new SD card) still starts an epoch newer than the one
        // the cluster last saw from it, which it would otherwise refuse as stale.
        let epoch = BootEpoch((self.epoch_max.0 + 1).max(to_spool_ms(now.wall)));
        let mut recovered = Recovered::default();
        // The spool clock resumes where it was persisted, plus the downtime the wall clock
        // shows, within [0, downtime_ms_max]. A spool without a clock entry stamped its records
        // with the wall clock, so its latest stamp stands for both clocks.
        let last = self
            .clock
            .or(self.spooled_max.map(|ms| (ms, from_spool_ms(ms))));
        let spool_ms = match last {
            Some((spool_ms, wall)) => {
                let wall_ms = now.wall.0.saturating_sub(wall.0);
                let counted = u64::try_from(wall_ms)
                    .unwrap_or(0)
                    .min(self.config.downtime_ms_max);
                recovered.downtime_wall_ms = wall_ms;
                recovered.downtime_counted_ms = counted;
                spool_ms.saturating_add(counted)
            }
            None => to_spool_ms(now.wall),
        };
        let spool_ms = spool_ms.max(self.spooled_max.unwrap_or(0));
        let mut core = SpoolCore::empty(self.config, epoch, now, spool_ms);
        core.next_order = self.next_order;
        let mut streams = self.streams;
        // (key, first, last, delivery order) of the gaps damage left.
        let mut gaps: Vec<(StreamKey, u64, u64, u64)> = Vec::new();
        for (key, stream) in streams.iter_mut() {
            let mut expect = stream.acked_end;
            for item in &stream.items {
                if item.seq != expect {
                    if !damaged {
                        return Err(format!("{key:?}: seqs {expect}..{} missing", item.seq));
                    }
                    gaps.push((key.clone(), expect, item.seq - 1, item.order));
                }
                expect = item.seq_last + 1;
            }
            if damaged && stream.reserved_end < expect {
                stream.reserved_end = expect;
            }
            if key.epoch == self.epoch_max && self.tail_lost_bytes > 0 {
                // The lost tail may have held reservations and readings of the latest epoch
                // beyond what survives: each needs a frame, so the bytes bound the seqs.
                let bound = expect.saturating_add(self.tail_lost_bytes / FRAME_BYTES_MIN);
                stream.reserved_end = stream.reserved_end.max(bound);
            }
            if stream.reserved_end < expect {
                return Err(format!(
                    "{key:?}: seqs up to {} present but only {} reserved",
                    expect - 1,
                    stream.reserved_end
                ));
            }
            if stream.reserved_end > expect {
                recovered.power_loss.push(Declared {
                    key: key.clone(),
                    seq: expect,
                    seq_last: stream.reserved_end - 1,
                    reason: lost,
                });
            }
            stream.issued_end = stream.reserved_end;
            // What may have been handed out before the crash: never evict or expire it.
            for item in stream.items.iter_mut() {
                if item.seq < stream.sent_end {
                    item.send = SendState::Resend;
                }
            }
        }
        for stream in streams.values() {
            for item in &stream.items {
                core.add_live(item);
            }
        }
        core.streams = streams;
        for id in self.segments.keys() {
            core.segments.entry(*id).or_default();
        }
        core.v1_segments = self.v1_segments;
        let lost_last = self.lost_segment_max.filter(|lost| {
            self.segments
                .last_key_value()
                .is_none_or(|(id, _)| id < lost)
        });
        match (lost_last, self.segments.last_key_value()) {
            (Some(lost), _) => {
                // The last segment is gone: a new one after it (ids are never reused).
                core.open_segment(lost + 1);
                core.write_entry(&Entry::Open { epoch });
            }
            (None, Some((id, _)))
                if core.v1_segments.contains(id) || self.no_resume.contains(id) =>
            {
                // Format 1 is never written: the first open after the upgrade starts a new
                // segment of format 2, with a checkpoint. Nor is a segment whose header is
                // damaged or whose file was cut short (its damage stays as found).
                core.open_segment(id + 1);
                core.write_entry(&Entry::Open { epoch });
            }
            (None, Some((id, (end, n_frames)))) => {
                core.active = *id;
                core.active_end = *end;
                core.buffer_pos = *end;
                core.active_n_frames = *n_frames;
                if *n_frames == 0 {
                    // Its checkpoint was torn away: every segment starts with one.
                    let checkpoint = core.checkpoint();
                    core.write_entry(&checkpoint);
                }
                core.write_entry(&Entry::Open { epoch });
            }
            (None, None) => {
                core.open_segment(0);
                core.write_entry(&Entry::Open { epoch });
            }
        }
        for declared in &recovered.power_loss {
            let order = core.take_order();
            core.declare_lost(
                &declared.key,
                declared.seq,
                declared.seq_last,
                declared.reason,
                order,
                damaged,
            );
        }
        for (key, first, last, order) in gaps {
            core.declare_lost(&key, first, last, DropReason::Corrupted, order, true);
            recovered.power_loss.push(Declared {
                key,
                seq: first,
                seq_last: last,
                reason: DropReason::Corrupted,
            });
        }
        core.sync();
        core.compact_if_over();
        core.check_invariants();
        Ok((core, recovered))
    }
}

/// No frame (header and body, of either format) is shorter than this: it bounds the seqs a lost
/// region held.
const FRAME_BYTES_MIN: u64 = v1::FRAME_HEADER_LEN as u64 + 4;

/// Seqs and epochs beyond this are refused on replay: arithmetic on them can never overflow.
const REPLAY_VALUE_MAX: u64 = 1 << 62;

/// Refuses absurd seqs and epochs in a frame that checks (a bug or a crafted file).
fn check_ranges(entry: &Entry) -> Result<(), String> {
    let mut values = Vec::new();
    match entry {
        Entry::Record { record, .. } => {
            values.extend([record.boot_epoch.0, record.seq, record.seq_last()])
        }
        Entry::Ack { epoch, seq_end, .. }
        | Entry::Reserve { epoch, seq_end, .. }
        | Entry::Sent { epoch, seq_end, .. } => values.extend([epoch.0, *seq_end]),
        Entry::Checkpoint { epoch, streams } => {
            values.push(epoch.0);
            for m in streams {
                values.extend([m.epoch.0, m.acked_end, m.reserved_end, m.sent_end]);
            }
        }
        Entry::Open { epoch } => values.push(epoch.0),
        Entry::Clock { spool_ms, .. } => values.push(*spool_ms),
    }
    match values.into_iter().find(|v| *v > REPLAY_VALUE_MAX) {
        Some(v) => Err(format!("value {v} out of range")),
        None => Ok(()),
    }
}

/// The new send mark when the item at `from` is about to be sent: past every item that starts
/// within `ahead` bytes of it (at least past that item).
fn send_mark(items: &VecDeque<Item>, from: usize, ahead: u64) -> u64 {
    let mut bytes = 0u64;
    let mut end = 0;
    for item in items.iter().skip(from) {
        if bytes > 0 && bytes + u64::from(item.loc.len) > ahead {
            break;
        }
        bytes += u64::from(item.loc.len);
        end = item.seq_last + 1;
    }
    end
}

fn acknowledge(stream: &mut Stream, seq_end: u64) -> Result<(), String> {
    stream.acked_end = stream.acked_end.max(seq_end);
    while let Some(front) = stream.items.front() {
        if front.seq_last < stream.acked_end {
            stream.items.pop_front();
        } else if front.seq < stream.acked_end {
            return Err(format!(
                "ack end {} splits item {}..={}",
                stream.acked_end, front.seq, front.seq_last
            ));
        } else {
            break;
        }
    }
    Ok(())
}

impl SpoolCore {
    /// A fresh core, as recovery of an empty directory builds it (for tests and simulations
    /// that drive the core without a disk). `Err` lists the configuration's problems.
    pub fn new_empty(config: SpoolConfig, now: Now) -> Result<SpoolCore, Vec<String>> {
        config.validate()?;
        Replay::new(config)
            .finish(now, DropReason::PowerLoss, false)
            .map(|(core, _)| core)
            .map_err(|reason| vec![reason])
    }
}

#[cfg(test)]
mod tests;
