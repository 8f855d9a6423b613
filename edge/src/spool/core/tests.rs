//! Scripted tests of the core: inputs with a hand-advanced clock, outputs inspected directly.

use super::*;
use sluice_proto::Reading;
use std::sync::OnceLock;

/// The monotonic origin of every test (`Instant` has no constructor but `now`).
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    #[allow(clippy::disallowed_methods)]
    *ORIGIN.get_or_init(Instant::now)
}

/// `ms` after the origin, on both clocks (the wall clock offset by `wall_offset_ms`).
fn at_offset(ms: i64, wall_offset_ms: i64) -> Now {
    Now {
        mono: origin() + Duration::from_millis(ms as u64),
        wall: UnixMillis(ms + wall_offset_ms),
    }
}

fn at(ms: i64) -> Now {
    at_offset(ms, 0)
}

fn mono(ms: u64) -> Instant {
    origin() + Duration::from_millis(ms)
}

fn config() -> SpoolConfig {
    SpoolConfig {
        spool_bytes_max: 4 * 4096,
        segment_bytes_max: 4096,
        record_age_ms_max: 1_000_000,
        sync_interval_ms: 100,
        policy: FullPolicy::DropOldest,
        record_bytes_max: 512,
        sensors_max: 4,
        seq_reserve_block: 16,
        send_ahead_bytes_max: 1 << 20,
        write_buffer_bytes_max: 1 << 20,
        downtime_ms_max: 3_600_000,
        retry_backoff_initial_ms: 1000,
        retry_backoff_max_ms: 60_000,
    }
}

fn key(name: &str) -> StreamKey {
    StreamKey {
        sensor: SensorId::new(name).unwrap(),
        epoch: BootEpoch(1),
    }
}

struct Driver {
    core: SpoolCore,
    /// Monotonic ms since the origin.
    now: i64,
    /// How far the wall clock is from the monotonic one (an NTP step changes it).
    wall_offset: i64,
}

impl Driver {
    fn new(config: SpoolConfig) -> Driver {
        let mut core = SpoolCore::new_empty(config, at(0)).unwrap();
        while core.poll_output().is_some() {}
        Driver {
            core,
            now: 0,
            wall_offset: 0,
        }
    }

    fn time(&self) -> Now {
        at_offset(self.now, self.wall_offset)
    }

    fn outputs(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.core.poll_output()).collect()
    }

    fn append(&mut self, name: &str) -> Result<Appended, Rejected> {
        let payload = Payload::Reading(Reading::Temperature { celsius: 20.5 });
        let sensor = SensorId::new(name).unwrap();
        let now = self.time();
        self.core.handle_append(now, sensor, now.wall, payload)
    }

    fn sync(&mut self) {
        self.core.handle_sync(self.time());
    }

    fn timeout(&mut self) {
        self.core.handle_timeout(self.time());
    }

    /// Hands out everything durable and acknowledges it.
    fn deliver_all(&mut self) -> u64 {
        let batch = self.core.next_batch(u32::MAX, u64::MAX);
        for out in &batch {
            self.core.handle_ack(self.time(), &out.key, out.seq_last);
        }
        batch.len() as u64
    }
}

/// The entries of bytes written from the start of a segment's data (format 2 framing: length,
/// payload CRC, header CRC, payload; a zero length ends them).
fn frames(bytes: &[u8]) -> Vec<Entry> {
    let header = FRAME_HEADER_LEN as usize;
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= header {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        out.push(Entry::decode(&rest[header..header + len]).unwrap());
        rest = &rest[header + len..];
    }
    out
}

fn count(outputs: &[Output], f: impl Fn(&Output) -> bool) -> usize {
    outputs.iter().filter(|o| f(o)).count()
}

fn is_sync(o: &Output) -> bool {
    matches!(o, Output::Sync { .. })
}

#[test]
fn a_seq_is_issued_only_under_a_durable_reservation() {
    // Checks that the first reading of a sensor first writes and syncs a reservation (before its
    // own frame is even written), that the next readings within the block cause no sync, and
    // that exhausting the block forces the next reservation's sync.
    let mut d = Driver::new(config());
    assert_eq!(
        d.append("a"),
        Ok(Appended {
            epoch: BootEpoch(1),
            seq: 0
        })
    );
    let out = d.outputs();
    assert_eq!(out.len(), 2, "{out:?}");
    let Output::Write { bytes, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        frames(bytes),
        vec![Entry::Reserve {
            sensor: key("a").sensor,
            epoch: BootEpoch(1),
            seq_end: 16
        }]
    );
    assert!(is_sync(&out[1]));
    for seq in 1..16 {
        assert_eq!(d.append("a").unwrap().seq, seq);
    }
    assert_eq!(count(&d.outputs(), is_sync), 0);
    assert_eq!(d.append("a").unwrap().seq, 16);
    let out = d.outputs();
    assert_eq!(count(&out, is_sync), 1, "{out:?}");
}

#[test]
fn syncs_are_batched_by_the_interval() {
    // Checks that appends are not synced before `sync_interval_ms` has passed since the first
    // unsynced one, that poll_timeout names that deadline, and that handle_timeout then syncs.
    let mut d = Driver::new(config());
    d.append("a").unwrap();
    d.outputs();
    d.now = 40;
    d.append("a").unwrap();
    assert_eq!(d.core.poll_timeout(), Some(mono(100)));
    d.core.handle_timeout(at(99));
    assert_eq!(count(&d.outputs(), is_sync), 0);
    d.core.handle_timeout(at(100));
    let out = d.outputs();
    assert_eq!(count(&out, is_sync), 1);
    assert_eq!(
        d.core.poll_timeout(),
        Some(mono(1_000_000)),
        "only the expiry is left"
    );
}

#[test]
fn only_durable_records_are_handed_out_in_seq_order() {
    // Checks that next_batch returns nothing before the sync, then every record oldest first,
    // each sensor in seq order; that the in-flight ones are not handed out twice; and that a
    // rewind hands them out again. (The first reading of each sensor forces a reservation sync,
    // so they are delivered first.)
    let mut d = Driver::new(config());
    d.append("a").unwrap();
    d.append("b").unwrap();
    d.sync();
    assert_eq!(d.deliver_all(), 2);
    for name in ["a", "b", "a", "a", "b"] {
        d.append(name).unwrap();
    }
    assert!(d.core.next_batch(100, 1 << 20).is_empty());
    d.sync();
    let got: Vec<(String, u64)> = d
        .core
        .next_batch(100, 1 << 20)
        .into_iter()
        .map(|o| (o.key.sensor.to_string(), o.seq))
        .collect();
    let want = [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2)];
    assert_eq!(got, want.map(|(s, q)| (s.to_string(), q)));
    assert!(d.core.next_batch(100, 1 << 20).is_empty());
    d.core.handle_rewind();
    assert_eq!(d.core.next_batch(2, 1 << 20).len(), 2);
}

#[test]
fn acks_release_records_and_reclaim_whole_segments() {
    // Checks that records fill several segments, that acknowledging all of them and syncing
    // removes every segment but the active one, and that nothing is left live.
    let mut d = Driver::new(SpoolConfig {
        spool_bytes_max: 8 * 4096,
        ..config()
    });
    for i in 0..500 {
        d.append(if i % 2 == 0 { "a" } else { "b" }).unwrap();
    }
    assert!(d.core.n_segments() >= 3, "{}", d.core.n_segments());
    d.sync();
    d.outputs();
    assert_eq!(d.deliver_all(), 500);
    assert_eq!(d.core.n_records(), 0);
    d.sync();
    let removed = count(&d.outputs(), |o| matches!(o, Output::RemoveSegment { .. }));
    assert!(removed >= 2, "removed {removed}");
    assert_eq!(d.core.n_segments(), 1);
    assert_eq!(d.core.live_bytes(), 0);
    assert_eq!(d.core.stream_ends(&key("a")), Some((250, 250)));
}

#[test]
fn drop_oldest_declares_exactly_the_evicted_seqs() {
    // Checks that when the budget is exhausted, DropOldest never refuses a reading, stays within
    // the segment budget, and declares each sensor's evicted seqs as one merged SpoolFull range
    // from seq 0 whose length matches the eviction counter.
    let mut d = Driver::new(config());
    for i in 0..1000 {
        d.append(if i % 3 == 0 { "a" } else { "b" }).unwrap();
        assert!(d.core.n_segments() <= 4);
    }
    let stats = d.core.stats();
    assert!(stats.n_dropped_full > 0);
    assert_eq!(stats.n_budget_overruns, 0);
    let declared = d.core.declared();
    assert_eq!(declared.len(), 2, "{declared:?}");
    for decl in &declared {
        assert_eq!((decl.seq, decl.reason), (0, DropReason::SpoolFull));
    }
    let total: u64 = declared.iter().map(|x| x.seq_last - x.seq + 1).sum();
    assert_eq!(total, stats.n_dropped_full);
    assert_eq!(d.core.n_records() + total - 2, 1000);
    d.sync();
    let n_records = d.core.n_records();
    assert_eq!(
        d.deliver_all(),
        n_records,
        "declarations are delivered like readings"
    );
}

#[test]
fn block_refuses_without_issuing_and_resumes_after_acks() {
    // Checks that with Block the spool refuses readings once full without issuing a seq, and
    // that after delivery frees segments the next reading gets the very next seq.
    let mut d = Driver::new(SpoolConfig {
        policy: FullPolicy::Block,
        ..config()
    });
    let mut last = None;
    for _ in 0..1000 {
        match d.append("a") {
            Ok(a) => last = Some(a.seq),
            Err(rejected) => {
                assert_eq!(rejected, Rejected::Full);
                break;
            }
        }
    }
    let last = last.unwrap();
    assert!(last > 100 && last < 1000, "{last}");
    assert_eq!(d.append("a"), Err(Rejected::Full));
    assert_eq!(d.core.stats().n_rejected_full, 2);
    assert!(d.core.declared().is_empty());
    d.sync();
    d.deliver_all();
    d.sync();
    assert_eq!(d.append("a").map(|a| a.seq), Ok(last + 1));
}

#[test]
fn expiry_declares_old_unsent_readings_but_never_pinned_ones() {
    // Checks that readings older than record_age_ms_max are replaced by an Expired declaration,
    // that readings handed to the uplink are kept, and that a later expiry merges with the
    // adjacent unsent declaration into one range.
    let mut d = Driver::new(SpoolConfig {
        record_age_ms_max: 1000,
        ..config()
    });
    for _ in 0..5 {
        d.append("a").unwrap();
    }
    d.sync();
    assert_eq!(d.core.next_batch(2, 1 << 20).len(), 2);
    d.now = 600;
    for _ in 0..3 {
        d.append("a").unwrap();
    }
    assert_eq!(d.core.poll_timeout(), Some(mono(700)), "sync first");
    d.core.handle_timeout(at(700));
    assert_eq!(
        d.core.poll_timeout(),
        Some(mono(1000)),
        "then expiry of seq 2"
    );
    d.now = 1000;
    d.core.handle_timeout(at(1000));
    let expired = |first, last| Declared {
        key: key("a"),
        seq: first,
        seq_last: last,
        reason: DropReason::Expired,
    };
    assert_eq!(d.core.declared(), vec![expired(2, 4)]);
    assert_eq!(d.core.n_records(), 2 + 1 + 3);
    d.core.handle_timeout(at(1600));
    assert_eq!(d.core.declared(), vec![expired(2, 7)]);
    assert_eq!(d.core.stats().n_dropped_expired, 6);
    assert_eq!(d.core.stream_ends(&key("a")), Some((0, 8)));
}

#[test]
fn sources_cannot_declare_drops_and_sensors_are_bounded() {
    // Checks the typed refusals: a Dropped payload from a source, an oversized reading, and a
    // sensor beyond sensors_max; none of them issues a seq.
    let mut d = Driver::new(config());
    let dropped = Payload::Dropped {
        seq_last: 3,
        reason: DropReason::PowerLoss,
    };
    let now = at(0);
    let sensor = SensorId::new("a").unwrap();
    assert_eq!(
        d.core.handle_append(now, sensor.clone(), now.wall, dropped),
        Err(Rejected::DropIsReserved)
    );
    let big = Payload::Bytes(vec![7; 600]);
    assert!(matches!(
        d.core.handle_append(now, sensor, now.wall, big),
        Err(Rejected::TooLarge { max: 512, .. })
    ));
    for name in ["a", "b", "c", "d"] {
        assert_eq!(d.append(name).map(|a| a.seq), Ok(0));
    }
    assert_eq!(d.append("e"), Err(Rejected::TooManySensors { max: 4 }));
    assert_eq!(d.append("a").map(|a| a.seq), Ok(1));
}

#[test]
fn block_compacts_a_fragmented_spool_instead_of_refusing() {
    // Checks that under Block, once delivery has left every segment half dead, a full spool
    // relocates the live records of a segment (Copy outputs) and accepts readings again,
    // without declaring anything.
    let mut d = Driver::new(SpoolConfig {
        policy: FullPolicy::Block,
        ..config()
    });
    let mut n = 0;
    while d.append(if n % 2 == 0 { "a" } else { "b" }).is_ok() {
        n += 1;
    }
    d.sync();
    d.outputs();
    let batch = d.core.next_batch(u32::MAX, u64::MAX);
    for out in batch.iter().filter(|o| o.key == key("b")) {
        d.core.handle_ack(at(0), &out.key, out.seq_last);
    }
    d.core.handle_rewind();
    d.sync();
    let seq = d.append("a").expect("compaction made room").seq;
    assert_eq!(seq, (n as u64).div_ceil(2));
    assert!(count(&d.outputs(), |o| matches!(o, Output::Copy { .. })) > 0);
    assert!(d.core.declared().is_empty());
    assert!(d.core.n_segments() <= 4);
}

const HOUR_MS: i64 = 3_600_000;

#[test]
fn a_wall_clock_stepped_forward_expires_nothing_early() {
    // Checks that a wall clock jumping five hours ahead (NTP reaching a Pi without a clock)
    // neither expires unsent readings nor moves the sync deadline: both stay on the monotonic
    // clock, and expiry comes exactly record_age_ms_max after the append by that clock.
    let mut d = Driver::new(SpoolConfig {
        record_age_ms_max: 10_000,
        ..config()
    });
    for _ in 0..3 {
        d.append("a").unwrap();
    }
    d.sync();
    d.now = 50;
    d.wall_offset = 5 * HOUR_MS;
    d.append("a").unwrap();
    assert_eq!(d.core.poll_timeout(), Some(mono(150)), "sync 100 ms later");
    d.now = 149;
    d.timeout();
    assert!(d.core.declared().is_empty(), "{:?}", d.core.declared());
    d.outputs();
    d.now = 150;
    d.timeout();
    assert_eq!(count(&d.outputs(), is_sync), 1);
    assert_eq!(d.core.poll_timeout(), Some(mono(10_000)));
    d.now = 9_999;
    d.timeout();
    assert!(d.core.declared().is_empty());
    d.now = 10_000;
    d.timeout();
    let declared = d.core.declared();
    assert_eq!(declared.len(), 1, "{declared:?}");
    assert_eq!(
        (declared[0].seq, declared[0].seq_last, declared[0].reason),
        (0, 2, DropReason::Expired)
    );
    assert_eq!(
        d.core.oldest_age_ms(mono(10_000)),
        Some(9_950),
        "seq 3 is left"
    );
}

#[test]
fn a_wall_clock_stepped_back_holds_no_sync_or_expiry_back() {
    // Checks that a wall clock jumping five hours back changes neither the sync deadline nor
    // the expiry: the sync comes sync_interval_ms after the first unsynced append and expiry
    // record_age_ms_max after the append, by the monotonic clock.
    let mut d = Driver::new(SpoolConfig {
        record_age_ms_max: 10_000,
        ..config()
    });
    d.append("a").unwrap();
    d.sync();
    d.outputs();
    d.now = 10;
    d.append("a").unwrap();
    d.wall_offset = -5 * HOUR_MS;
    d.now = 20;
    d.append("a").unwrap();
    assert_eq!(d.core.poll_timeout(), Some(mono(110)));
    d.now = 110;
    d.timeout();
    assert_eq!(count(&d.outputs(), is_sync), 1, "synced on time");
    assert_eq!(d.core.poll_timeout(), Some(mono(10_000)));
    d.now = 10_010;
    d.timeout();
    let declared = d.core.declared();
    assert_eq!(declared.len(), 1, "{declared:?}");
    assert_eq!((declared[0].seq, declared[0].seq_last), (0, 1));
}

/// The spool clock a replay of `[checkpoint, reading at spooled_at, clock entry]` resumes at
/// when reopened at `reopen` (and the downtime it counted).
fn replay_clock(spooled_at: u64, clock: (u64, i64), reopen: Now) -> (SpoolCore, Recovered) {
    let mut replay = Replay::new(config());
    let loc = |pos| Loc {
        segment: 0,
        pos,
        len: 10,
    };
    let entries = [
        Entry::Checkpoint {
            epoch: BootEpoch(1),
            streams: Vec::new(),
        },
        Entry::Reserve {
            sensor: key("a").sensor,
            epoch: BootEpoch(1),
            seq_end: 16,
        },
        Entry::Record {
            spooled_at: UnixMillis(spooled_at as i64),
            record: Record {
                sensor: key("a").sensor,
                boot_epoch: BootEpoch(1),
                seq: 0,
                device_time: UnixMillis(0),
                payload: Payload::Reading(Reading::Temperature { celsius: 1.0 }),
            },
        },
        Entry::Clock {
            spool_ms: clock.0,
            wall: UnixMillis(clock.1),
        },
    ];
    for (i, entry) in entries.into_iter().enumerate() {
        replay
            .entry(loc(SEGMENT_HEADER_LEN + 10 * i as u64), entry)
            .unwrap();
    }
    replay.segment(0, SEGMENT_HEADER_LEN + 40, 4);
    replay.finish(reopen, DropReason::PowerLoss, false).unwrap()
}

#[test]
fn ages_survive_a_restart_counting_only_plausible_downtime() {
    // Checks how the spool clock resumes after a restart (a new monotonic origin): it counts
    // the wall clock's downtime since the last persisted clock entry when that is small, at most
    // downtime_ms_max when the wall clock jumped ahead by hours, and nothing when the wall clock
    // went back (never a negative age); record ages follow.
    let last = (5_000u64, 1_000_000i64); // spool clock 5 s when the wall clock read 1000 s
    let reopen = |wall: i64| Now {
        mono: mono(77),
        wall: UnixMillis(wall),
    };
    // Down 30 s by the wall clock: counted in full.
    let (core, rec) = replay_clock(2_000, last, reopen(1_030_000));
    assert_eq!(
        (rec.downtime_counted_ms, rec.downtime_wall_ms),
        (30_000, 30_000)
    );
    assert_eq!(core.spool_ms(), 35_000);
    assert_eq!(core.oldest_age_ms(mono(77)), Some(33_000));
    assert_eq!(
        core.oldest_age_ms(mono(1_077)),
        Some(34_000),
        "then monotonic"
    );
    // The wall clock is five hours ahead (NTP stepped it): at most downtime_ms_max counted.
    let (core, rec) = replay_clock(2_000, last, reopen(1_000_000 + 5 * HOUR_MS));
    assert_eq!(rec.downtime_counted_ms, config().downtime_ms_max);
    assert_eq!(core.spool_ms(), 5_000 + config().downtime_ms_max);
    // The wall clock went back five hours (not set yet): nothing counted, nothing negative.
    let (core, rec) = replay_clock(2_000, last, reopen(1_000_000 - 5 * HOUR_MS));
    assert_eq!(
        (rec.downtime_counted_ms, rec.downtime_wall_ms),
        (0, -5 * HOUR_MS)
    );
    assert_eq!(core.spool_ms(), 5_000);
    assert_eq!(core.oldest_age_ms(mono(77)), Some(3_000));
    // A wall clock before 1970 at reopen changes nothing either.
    let (core, _) = replay_clock(2_000, last, reopen(-1));
    assert_eq!(core.spool_ms(), 5_000);
}

#[test]
fn a_reading_the_node_refuses_is_replaced_by_a_durable_declaration() {
    // Checks that handle_refused replaces a handed-out reading by a synced Invalid declaration
    // of exactly its seq, which is handed out in its place (after a rewind) and acknowledged
    // like a reading, while the stream still tiles; and that unsent readings, declarations and
    // unknown seqs are left alone.
    let mut d = Driver::new(config());
    for _ in 0..4 {
        d.append("a").unwrap();
    }
    d.sync();
    d.outputs();
    assert!(
        !d.core.handle_refused(d.time(), &key("a"), 1),
        "not handed out yet"
    );
    let batch = d.core.next_batch(u32::MAX, u64::MAX);
    assert_eq!(batch.len(), 4);
    d.core.handle_ack(d.time(), &key("a"), 0);
    d.outputs();
    assert!(d.core.handle_refused(d.time(), &key("a"), 1));
    let out = d.outputs();
    assert_eq!(count(&out, is_sync), 1, "durable at once: {out:?}");
    let written: Vec<Entry> = out
        .iter()
        .filter_map(|o| match o {
            Output::Write { bytes, .. } => Some(frames(bytes)),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(
        written
            .iter()
            .any(|e| matches!(e, Entry::Record { record, .. }
            if record.seq == 1 && record.payload == Payload::Dropped {
                seq_last: 1, reason: DropReason::Invalid })),
        "{written:?}"
    );
    assert_eq!(
        d.core.declared(),
        vec![Declared {
            key: key("a"),
            seq: 1,
            seq_last: 1,
            reason: DropReason::Invalid,
        }]
    );
    assert_eq!(d.core.stats().n_dropped_invalid, 1);
    assert!(
        !d.core.handle_refused(d.time(), &key("a"), 1),
        "already declared"
    );
    assert!(
        !d.core.handle_refused(d.time(), &key("a"), 9),
        "never issued"
    );
    d.core.handle_rewind();
    let again = d.core.next_batch(u32::MAX, u64::MAX);
    let seqs: Vec<(u64, u64)> = again.iter().map(|o| (o.seq, o.seq_last)).collect();
    assert_eq!(seqs, [(1, 1), (2, 2), (3, 3)]);
    d.core.handle_ack(d.time(), &key("a"), 3);
    assert_eq!(d.core.n_records(), 0);
    assert_eq!(d.core.stream_ends(&key("a")), Some((4, 4)));
}

#[test]
fn replay_takes_a_surviving_expiry_declaration_as_the_close_of_its_range() {
    // Checks the atomicity rule of handle_expired: when a crash keeps the ProducerExpired
    // declaration of epoch 1's range but loses the acknowledgement written after it, replay
    // still closes that range, so epoch 1's readings are not delivered next to their resends.
    let mut replay = Replay::new(config());
    let loc = |i: u64| Loc {
        segment: 0,
        pos: SEGMENT_HEADER_LEN + 10 * i,
        len: 10,
    };
    let record = |epoch: u64, seq: u64, payload: Payload| Entry::Record {
        spooled_at: UnixMillis(0),
        record: Record {
            sensor: key("a").sensor,
            boot_epoch: BootEpoch(epoch),
            seq,
            device_time: UnixMillis(0),
            payload,
        },
    };
    let reading = || Payload::Reading(Reading::Temperature { celsius: 1.0 });
    let mut entries = vec![
        Entry::Checkpoint {
            epoch: BootEpoch(1),
            streams: Vec::new(),
        },
        Entry::Reserve {
            sensor: key("a").sensor,
            epoch: BootEpoch(1),
            seq_end: 3,
        },
    ];
    entries.extend((0..3).map(|seq| record(1, seq, reading())));
    entries.push(Entry::Open {
        epoch: BootEpoch(2),
    });
    entries.push(Entry::Reserve {
        sensor: key("a").sensor,
        epoch: BootEpoch(2),
        seq_end: 16,
    });
    let closed = DropReason::ProducerExpired {
        epoch: BootEpoch(1),
        seq: 0,
        seq_last: 2,
    };
    entries.push(record(
        2,
        0,
        Payload::Dropped {
            seq_last: 0,
            reason: closed,
        },
    ));
    entries.push(record(2, 1, reading()));
    let n = entries.len() as u64;
    for (i, entry) in entries.into_iter().enumerate() {
        replay.entry(loc(i as u64), entry).unwrap();
    }
    replay.segment(0, SEGMENT_HEADER_LEN + 10 * n, n);
    let (core, _) = replay.finish(at(0), DropReason::PowerLoss, false).unwrap();
    assert_eq!(core.stream_ends(&key("a")), None, "epoch 1 is closed");
    let declared: Vec<_> = core.declared().into_iter().map(|d| d.reason).collect();
    assert!(declared.contains(&closed), "{declared:?}");
}
