//! Scripted tests of the core: inputs with a hand-advanced clock, outputs inspected directly.

use super::*;
use sluice_proto::Reading;

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
    now: i64,
}

impl Driver {
    fn new(config: SpoolConfig) -> Driver {
        let mut core = SpoolCore::new_empty(config, UnixMillis(0)).unwrap();
        while core.poll_output().is_some() {}
        Driver { core, now: 0 }
    }

    fn outputs(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.core.poll_output()).collect()
    }

    fn append(&mut self, name: &str) -> Result<Appended, Rejected> {
        let payload = Payload::Reading(Reading::Temperature { celsius: 20.5 });
        let sensor = SensorId::new(name).unwrap();
        self.core
            .handle_append(UnixMillis(self.now), sensor, UnixMillis(self.now), payload)
    }

    fn sync(&mut self) {
        self.core.handle_sync(UnixMillis(self.now));
    }

    /// Hands out everything durable and acknowledges it.
    fn deliver_all(&mut self) -> u64 {
        let batch = self.core.next_batch(u32::MAX, u64::MAX);
        for out in &batch {
            self.core
                .handle_ack(UnixMillis(self.now), &out.key, out.seq_last);
        }
        batch.len() as u64
    }
}

fn frames(bytes: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= FRAME_HEADER_LEN {
        let header: [u8; FRAME_HEADER_LEN] = rest[..FRAME_HEADER_LEN].try_into().unwrap();
        let Some(h) = format::FrameHeader::parse(&header) else {
            break;
        };
        let end = FRAME_HEADER_LEN + h.body_len as usize;
        out.push(Entry::decode(&rest[FRAME_HEADER_LEN..end]).unwrap());
        rest = &rest[end..];
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
    assert_eq!(d.core.poll_timeout(), Some(UnixMillis(100)));
    d.core.handle_timeout(UnixMillis(99));
    assert_eq!(count(&d.outputs(), is_sync), 0);
    d.core.handle_timeout(UnixMillis(100));
    let out = d.outputs();
    assert_eq!(count(&out, is_sync), 1);
    assert_eq!(
        d.core.poll_timeout(),
        Some(UnixMillis(1_000_000)),
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
    assert_eq!(d.core.poll_timeout(), Some(UnixMillis(700)), "sync first");
    d.core.handle_timeout(UnixMillis(700));
    assert_eq!(
        d.core.poll_timeout(),
        Some(UnixMillis(1000)),
        "then expiry of seq 2"
    );
    d.now = 1000;
    d.core.handle_timeout(UnixMillis(1000));
    let expired = |first, last| Declared {
        key: key("a"),
        seq: first,
        seq_last: last,
        reason: DropReason::Expired,
    };
    assert_eq!(d.core.declared(), vec![expired(2, 4)]);
    assert_eq!(d.core.n_records(), 2 + 1 + 3);
    d.core.handle_timeout(UnixMillis(1600));
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
    let now = UnixMillis(0);
    let sensor = SensorId::new("a").unwrap();
    assert_eq!(
        d.core.handle_append(now, sensor.clone(), now, dropped),
        Err(Rejected::DropIsReserved)
    );
    let big = Payload::Bytes(vec![7; 600]);
    assert!(matches!(
        d.core.handle_append(now, sensor, now, big),
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
        d.core.handle_ack(UnixMillis(0), &out.key, out.seq_last);
    }
    d.core.handle_rewind();
    d.sync();
    let seq = d.append("a").expect("compaction made room").seq;
    assert_eq!(seq, (n as u64).div_ceil(2));
    assert!(count(&d.outputs(), |o| matches!(o, Output::Copy { .. })) > 0);
    assert!(d.core.declared().is_empty());
    assert!(d.core.n_segments() <= 4);
}
