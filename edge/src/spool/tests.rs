//! Tests of the durable spool over `CrashDisk`, the in-memory disk that loses unsynced writes on a
//! power cut and fails or damages files on request. The
//! append rate on a real disk is measured by `sluice-edge-bench` (see BENCHMARKS.md), not here.

use super::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_proto::testing::{CrashDisk, CrashModel, Tear};
use sluice_proto::{DropReason, Reading};
use std::collections::BTreeSet;

fn config() -> SpoolConfig {
    SpoolConfig {
        spool_bytes_max: 6 * 4096,
        segment_bytes_max: 4096,
        record_age_ms_max: 1_000_000_000,
        sync_interval_ms: 100,
        policy: FullPolicy::DropOldest,
        record_bytes_max: 512,
        sensors_max: 8,
        seq_reserve_block: 16,
        send_ahead_bytes_max: 4096,
        write_buffer_bytes_max: 1 << 20,
        downtime_ms_max: 3_600_000,
        retry_backoff_initial_ms: 1000,
        retry_backoff_max_ms: 60_000,
    }
}

/// The monotonic origin of every test (`Instant` has no constructor but `now`).
fn origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    #[allow(clippy::disallowed_methods)]
    *ORIGIN.get_or_init(Instant::now)
}

/// `ms` after the origin on the monotonic clock, and `ms` on the wall clock.
fn t(ms: i64) -> Now {
    Now {
        mono: origin() + std::time::Duration::from_millis(ms.max(0) as u64),
        wall: UnixMillis(ms),
    }
}

fn dir() -> PathBuf {
    PathBuf::from("/spool")
}

fn sensor(name: &str) -> SensorId {
    SensorId::new(name).unwrap()
}

fn value(seq: u64) -> Payload {
    Payload::Reading(Reading::Metric {
        name: "v".into(),
        unit: "n".into(),
        value: seq as f64,
    })
}

fn open(disk: &CrashDisk, config: SpoolConfig, now: i64) -> (Spool, SpoolReport) {
    Spool::open(Arc::new(disk.mount()), &dir(), config, t(now)).unwrap()
}

fn append(spool: &mut Spool, name: &str, seq: u64) -> Appended {
    spool
        .append(t(0), sensor(name), UnixMillis(0), value(seq))
        .unwrap()
        .unwrap()
}

/// Delivers and acknowledges everything; returns the records in delivery order.
fn drain(spool: &mut Spool) -> Vec<Record> {
    let mut out = Vec::new();
    for round in 0..1000 {
        spool.sync(t(round)).unwrap();
        let batch = spool.next_batch(64, 1 << 20).unwrap();
        if batch.is_empty() && spool.core().n_records() == 0 {
            return out;
        }
        for record in batch {
            let key = StreamKey {
                sensor: record.sensor.clone(),
                epoch: record.boot_epoch,
            };
            spool.ack(t(round), &key, record.seq_last()).unwrap();
            out.push(record);
        }
    }
    panic!("spool did not drain");
}

/// The segment files (not the manifest), in id order.
fn segment_paths(disk: &CrashDisk) -> Vec<PathBuf> {
    disk.files()
        .into_keys()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(format::parse_segment_name)
                .is_some()
        })
        .collect()
}

fn manifest_path() -> PathBuf {
    Manifest::path(&dir())
}

#[test]
fn every_open_starts_a_new_boot_epoch() {
    // Checks that the boot epoch is persisted and grows at every open, with or without
    // readings in between, and that seqs restart at 0 in each epoch.
    let disk = CrashDisk::new();
    for epoch in 1..=4 {
        let (mut spool, report) = open(&disk, config(), 0);
        assert_eq!(report.epoch, BootEpoch(epoch));
        if epoch % 2 == 0 {
            assert_eq!(
                append(&mut spool, "a", 0),
                Appended {
                    epoch: BootEpoch(epoch),
                    seq: 0
                }
            );
            spool.sync(t(0)).unwrap();
        }
    }
}

#[test]
fn readings_survive_a_clean_restart_and_nothing_is_declared() {
    // Checks that after a clean close every reading is delivered after the restart, in seq
    // order per sensor, and that no power-loss range is declared.
    let disk = CrashDisk::new();
    let (mut spool, _) = open(&disk, config(), 0);
    for seq in 0..40 {
        append(&mut spool, if seq % 2 == 0 { "a" } else { "b" }, seq / 2);
    }
    spool.close(t(0)).unwrap();
    let (mut spool, report) = open(&disk, config(), 0);
    assert_eq!(report.n_records, 40);
    assert!(report.power_loss.is_empty());
    let got = drain(&mut spool);
    let data: Vec<(String, u64)> = got
        .iter()
        .filter(|r| !matches!(r.payload, Payload::Dropped { .. }))
        .map(|r| (r.sensor.to_string(), r.seq))
        .collect();
    for name in ["a", "b"] {
        let seqs: Vec<u64> = data
            .iter()
            .filter(|(s, _)| s == name)
            .map(|(_, q)| *q)
            .collect();
        assert_eq!(seqs, (0..20).collect::<Vec<_>>());
    }
}

#[test]
fn a_power_cut_declares_the_unsynced_seqs_up_to_the_reservation() {
    // Checks that readings appended after the last sync are lost in a power cut and declared
    // as one PowerLoss range per sensor, from the first unsynced seq to the durable
    // reservation, and that the declaration is delivered after the surviving readings.
    let disk = CrashDisk::new();
    let (mut spool, _) = open(&disk, config(), 0);
    for seq in 0..10 {
        append(&mut spool, "a", seq);
    }
    spool.sync(t(0)).unwrap();
    for seq in 10..15 {
        append(&mut spool, "a", seq);
    }
    drop(spool);
    disk.power_cut(&mut ChaCha8Rng::seed_from_u64(1));
    let (mut spool, report) = open(&disk, config(), 0);
    let key = StreamKey {
        sensor: sensor("a"),
        epoch: BootEpoch(1),
    };
    // The sync topped the reservation up to 10 + 16 = 26.
    let want = Declared {
        key,
        seq: 10,
        seq_last: 25,
        reason: DropReason::PowerLoss,
    };
    assert_eq!(report.power_loss, vec![want]);
    let got = drain(&mut spool);
    assert_eq!(got.len(), 11);
    assert_eq!(
        got[10].payload,
        Payload::Dropped {
            seq_last: 25,
            reason: DropReason::PowerLoss
        }
    );
    assert_eq!((got[10].seq, got[10].boot_epoch), (10, BootEpoch(1)));
}

#[test]
fn a_torn_tail_is_zeroed_and_does_not_come_back() {
    // Checks that garbage after the last frame of the last segment (a torn write) is reported,
    // zeroed on open, and absent at the next open, while every synced reading stays.
    let disk = CrashDisk::new();
    let (mut spool, _) = open(&disk, config(), 0);
    for seq in 0..10 {
        append(&mut spool, "a", seq);
    }
    spool.sync(t(0)).unwrap();
    drop(spool);
    let path = segment_paths(&disk).pop().unwrap();
    let mut bytes = disk.bytes(&path).unwrap();
    let end = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
    // A plausible frame header announcing 200 bytes, and half of them.
    bytes[end..end + 4].copy_from_slice(&200u32.to_le_bytes());
    bytes[end + 4..end + 100].fill(0xab);
    disk.set_bytes(&path, bytes).unwrap();
    let check = Spool::check(&disk.mount(), &dir(), config(), t(0)).unwrap();
    let (mut spool, report) = open(&disk, config(), 0);
    assert_eq!(report.truncated_bytes, (4096 - end) as u64);
    assert_eq!(check.truncated_bytes, report.truncated_bytes);
    // Open wrote its checkpoint where the garbage was; none of the garbage is left.
    let after = disk.bytes(&path).unwrap();
    assert!(!after.windows(96).any(|w| w.iter().all(|b| *b == 0xab)));
    spool.sync(t(0)).unwrap();
    drop(spool);
    let (mut spool, report) = open(&disk, config(), 0);
    assert_eq!(report.truncated_bytes, 0);
    let data = drain(&mut spool)
        .into_iter()
        .filter(|r| !matches!(r.payload, Payload::Dropped { .. }))
        .count();
    assert_eq!(data, 10);
}

#[test]
fn random_damage_never_panics() {
    // Checks that open and check return Ok or a typed error, never panic, whatever single
    // bytes of whatever segment are overwritten.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for _ in 0..60 {
        let disk = CrashDisk::new();
        let (mut spool, _) = open(&disk, config(), 0);
        for seq in 0..rng.random_range(1..400u64) {
            append(&mut spool, if seq % 3 == 0 { "a" } else { "b" }, seq);
        }
        spool.sync(t(0)).unwrap();
        drop(spool);
        for _ in 0..rng.random_range(1..4) {
            let paths = segment_paths(&disk);
            let path = &paths[rng.random_range(0..paths.len())];
            let mut bytes = disk.bytes(path).unwrap();
            let at = rng.random_range(0..bytes.len());
            bytes[at] = rng.random();
            disk.set_bytes(path, bytes).unwrap();
        }
        let _ = Spool::check(&disk.mount(), &dir(), config(), t(0));
        let _ = Spool::open(Arc::new(disk.mount()), &dir(), config(), t(0));
    }
}

#[test]
fn check_writes_nothing_and_predicts_open() {
    // Checks that `spool check` leaves every byte as it was, and reports the same power-loss
    // ranges and epoch that the following open then applies.
    let disk = CrashDisk::new();
    let (mut spool, _) = open(&disk, config(), 0);
    for seq in 0..30 {
        append(&mut spool, "a", seq);
    }
    spool.sync(t(0)).unwrap();
    append(&mut spool, "a", 30);
    drop(spool);
    disk.power_cut(&mut ChaCha8Rng::seed_from_u64(3));
    let before = disk.files();
    let check = Spool::check(&disk.mount(), &dir(), config(), t(5)).unwrap();
    assert_eq!(disk.files(), before);
    let (_, report) = open(&disk, config(), 5);
    assert_eq!(
        (check.epoch, &check.power_loss),
        (report.epoch, &report.power_loss)
    );
    assert_eq!(check.n_records, report.n_records);
    let missing = Spool::check(&disk.mount(), Path::new("/nowhere"), config(), t(0));
    assert_eq!(missing.map(|r| r.n_records), Ok(0));
}

#[test]
fn an_older_epoch_is_delivered_before_a_newer_one() {
    // Checks that after a restart a sensor's new-epoch readings are held back until its older
    // epoch (readings and power-loss declaration) is fully acknowledged, since the broker
    // refuses an older epoch once it has seen a newer one.
    let disk = CrashDisk::new();
    let (mut spool, _) = open(&disk, config(), 0);
    for seq in 0..3 {
        append(&mut spool, "a", seq);
    }
    spool.sync(t(0)).unwrap();
    drop(spool);
    let (mut spool, _) = open(&disk, config(), 0);
    assert_eq!(append(&mut spool, "a", 0).epoch, BootEpoch(2));
    spool.sync(t(0)).unwrap();
    let first = spool.next_batch(100, 1 << 20).unwrap();
    assert_eq!(
        first.len(),
        4,
        "three readings and the power-loss declaration"
    );
    assert!(first.iter().all(|r| r.boot_epoch == BootEpoch(1)));
    let key = StreamKey {
        sensor: sensor("a"),
        epoch: BootEpoch(1),
    };
    spool.ack(t(0), &key, 2).unwrap();
    assert!(spool.next_batch(100, 1 << 20).unwrap().is_empty());
    spool.ack(t(0), &key, first[3].seq_last()).unwrap();
    let second = spool.next_batch(100, 1 << 20).unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!((second[0].boot_epoch, second[0].seq), (BootEpoch(2), 0));
}

/// What the broker holds of one stream: `(seq, seq_last, reason)` in seq order.
type Received = Vec<(u64, u64, Option<DropReason>)>;

/// The test's own record of what happened; it never trusts the spool's reports.
#[derive(Default)]
struct Model {
    epoch: BootEpoch,
    issued: BTreeMap<StreamKey, u64>,
    attempted: BTreeMap<StreamKey, BTreeSet<u64>>,
    synced: BTreeMap<StreamKey, u64>,
    broker: BTreeMap<StreamKey, Received>,
    broker_epoch: BTreeMap<SensorId, BootEpoch>,
    in_flight: Vec<Record>,
    delivered: Vec<Record>,
}

impl Model {
    /// The broker's judgement, strict: in order, no gaps, no overlap, no stale epoch; an exact
    /// repeat of a held record is a harmless duplicate.
    fn receive(&mut self, record: &Record) {
        let key = StreamKey {
            sensor: record.sensor.clone(),
            epoch: record.boot_epoch,
        };
        let reason = match record.payload {
            Payload::Dropped { reason, .. } => Some(reason),
            Payload::Reading(Reading::Metric { value, .. }) => {
                assert_eq!(value, record.seq as f64, "payload of {record:?}");
                None
            }
            _ => panic!("unexpected payload {record:?}"),
        };
        let entry = (record.seq, record.seq_last(), reason);
        if self
            .broker
            .get(&key)
            .is_some_and(|held| held.contains(&entry))
        {
            return; // a resend of a record the broker holds
        }
        let seen = self
            .broker_epoch
            .entry(record.sensor.clone())
            .or_insert(key.epoch);
        assert!(key.epoch >= *seen, "stale epoch {record:?}");
        *seen = key.epoch;
        let held = self.broker.entry(key).or_default();
        let expected = held.last().map_or(0, |(_, last, _)| last + 1);
        if record.seq < expected {
            panic!("overlap: {record:?} vs {held:?}");
        } else {
            assert_eq!(record.seq, expected, "gap before {record:?}");
            held.push(entry);
        }
    }

    fn check_final(&self, block: u64) {
        let keys: BTreeSet<&StreamKey> = self.issued.keys().chain(self.broker.keys()).collect();
        for key in keys {
            let issued = self.issued.get(key).copied().unwrap_or(0);
            let attempted = self.attempted.get(key).cloned().unwrap_or_default();
            let synced = self.synced.get(key).copied().unwrap_or(0);
            let held = self.broker.get(key).cloned().unwrap_or_default();
            let end = held.last().map_or(0, |(_, last, _)| last + 1);
            assert!(
                end >= issued,
                "{key:?}: issued up to {issued}, broker covers {end}"
            );
            assert!(
                end <= issued + block + 1,
                "{key:?}: declared far beyond issued"
            );
            for (seq, last, reason) in held {
                match reason {
                    None => assert!(
                        seq < issued || attempted.contains(&seq),
                        "{key:?}: reading {seq} never issued"
                    ),
                    Some(DropReason::PowerLoss) => assert!(
                        seq >= synced,
                        "{key:?}: synced seqs {seq}..={last} declared lost to power"
                    ),
                    Some(_) => {}
                }
            }
        }
    }
}

struct Run {
    /// The uplink is down: nothing is sent, delivered or acknowledged.
    offline: bool,
    totals: SpoolStats,
    n_delivered: u64,
    rng: ChaCha8Rng,
    disk: CrashDisk,
    config: SpoolConfig,
    spool: Option<Spool>,
    model: Model,
    now: i64,
}

impl Run {
    fn reopen(&mut self) {
        if let Some(spool) = self.spool.take() {
            let s = spool.stats();
            self.totals.n_dropped_full += s.n_dropped_full;
            self.totals.n_dropped_expired += s.n_dropped_expired;
            self.totals.n_dropped_power_loss += s.n_dropped_power_loss;
            self.totals.n_rejected_full += s.n_rejected_full;
            self.totals.n_segments_removed += s.n_segments_removed;
            self.totals.n_budget_overruns += s.n_budget_overruns;
        }
        self.model.in_flight.clear();
        self.model.delivered.clear();
        for attempt in 0.. {
            assert!(attempt < 100, "never reopened");
            match Spool::open(
                Arc::new(self.disk.mount()),
                &dir(),
                self.config,
                t(self.now),
            ) {
                Ok((spool, report)) => {
                    assert!(report.epoch > self.model.epoch, "epoch did not grow");
                    self.model.epoch = report.epoch;
                    self.spool = Some(spool);
                    return;
                }
                // An armed crash fired during recovery: the power is back, try again.
                Err(SpoolError::Disk(_)) => {}
                Err(other) => panic!("recovery failed: {other}"),
            }
        }
    }

    fn key(&self, idx: usize) -> StreamKey {
        StreamKey {
            sensor: sensor(&format!("s{idx}")),
            epoch: self.model.epoch,
        }
    }

    /// Runs one spool call; a disk error means an armed crash fired: recover.
    fn step<T>(&mut self, f: impl FnOnce(&mut Spool, Now) -> Result<T, SpoolError>) -> Option<T> {
        let now = t(self.now);
        let spool = self.spool.as_mut()?;
        match f(spool, now) {
            Ok(value) => Some(value),
            Err(SpoolError::Disk(_)) => {
                self.reopen();
                None
            }
            Err(other) => panic!("spool failed: {other}"),
        }
    }

    fn append(&mut self) {
        let idx = self.rng.random_range(0..3);
        let key = self.key(idx);
        let seq = self.model.issued.get(&key).copied().unwrap_or(0);
        let sensor = key.sensor.clone();
        let result = self.step(|s, now| s.append(now, sensor, now.wall, value(seq)));
        match result {
            Some(Ok(appended)) => {
                assert_eq!(
                    appended,
                    Appended {
                        epoch: key.epoch,
                        seq
                    }
                );
                self.model.issued.insert(key, seq + 1);
            }
            Some(Err(Rejected::Full)) => {}
            Some(Err(other)) => panic!("unexpected refusal {other:?}"),
            None => {
                self.model.attempted.entry(key).or_default().insert(seq);
            }
        }
    }

    fn sync(&mut self) {
        if self.step(|s, now| s.sync(now)).is_some() {
            self.sync_all_current();
        }
    }

    fn sync_all_current(&mut self) {
        for (key, end) in &self.model.issued {
            if key.epoch == self.model.epoch {
                self.model.synced.insert(key.clone(), *end);
            }
        }
    }

    fn send(&mut self) {
        let (n, bytes) = (self.rng.random_range(1..20), self.rng.random_range(1..2000));
        if let Some(batch) = self.step(|s, _| s.next_batch(n, bytes)) {
            self.model.in_flight.extend(batch);
        }
    }

    fn deliver(&mut self) {
        let n = self.rng.random_range(0..=self.model.in_flight.len());
        let records: Vec<Record> = self.model.in_flight.drain(..n).collect();
        for record in &records {
            self.model.receive(record);
        }
        self.n_delivered += records.len() as u64;
        self.model.delivered.extend(records);
    }

    fn ack(&mut self) {
        let n = self.rng.random_range(0..=self.model.delivered.len());
        let records: Vec<Record> = self.model.delivered.drain(..n).collect();
        for record in records {
            let key = StreamKey {
                sensor: record.sensor.clone(),
                epoch: record.boot_epoch,
            };
            if self
                .step(|s, now| s.ack(now, &key, record.seq_last()))
                .is_none()
            {
                return;
            }
        }
    }

    fn disconnect(&mut self) {
        self.model.in_flight.clear();
        self.model.delivered.clear();
        if let Some(spool) = self.spool.as_mut() {
            spool.rewind();
        }
    }

    fn random_step(&mut self) {
        match self.rng.random_range(0..200u32) {
            0..90 => self.append(),
            90..110 => {
                self.now += self.rng.random_range(0..150);
                self.step(|s, now| s.handle_timeout(now));
            }
            110..120 => self.sync(),
            120..190 if self.offline => {}
            120..145 => self.send(),
            145..165 => self.deliver(),
            165..185 => self.ack(),
            185..190 => self.disconnect(),
            190..193 => {
                self.offline = !self.offline;
                if self.offline {
                    self.disconnect();
                }
            }
            193 => {
                if let Some(spool) = self.spool.take() {
                    if spool.close(t(self.now)).is_ok() {
                        self.sync_all_current();
                    }
                }
                self.reopen();
            }
            194 | 195 => {
                let rng = ChaCha8Rng::seed_from_u64(self.rng.random());
                self.disk.arm_power_cut(self.rng.random_range(1..12), rng);
            }
            _ => {
                self.disk.power_cut(&mut self.rng);
                self.reopen();
            }
        }
    }

    /// Heals and drains: everything left is delivered and acknowledged.
    fn drain(&mut self) {
        self.disk.disarm_power_cut();
        if self.rng.random_bool(0.5) {
            self.disk.power_cut(&mut self.rng);
        }
        self.reopen();
        self.disconnect();
        self.offline = false;
        for _ in 0..10_000 {
            self.now += 300;
            self.step(|s, now| s.handle_timeout(now));
            self.send();
            let n = self.model.in_flight.len();
            for _ in 0..n {
                self.deliver();
            }
            while !self.model.delivered.is_empty() {
                self.ack();
            }
            let spool = self.spool.as_ref().expect("no armed crash left");
            if spool.core().n_records() == 0 && self.model.in_flight.is_empty() {
                return;
            }
        }
        let spool = self.spool.as_ref().expect("spool");
        panic!(
            "spool never drained: {} records, {:?}, {:?}",
            spool.core().n_records(),
            spool.core().declared(),
            spool.core()
        );
    }
}

fn random_config(rng: &mut ChaCha8Rng) -> SpoolConfig {
    SpoolConfig {
        spool_bytes_max: rng.random_range(3..7) * 4096,
        segment_bytes_max: 4096,
        record_age_ms_max: if rng.random_bool(0.3) {
            rng.random_range(300..3000)
        } else {
            1 << 40
        },
        sync_interval_ms: rng.random_range(0..200),
        policy: if rng.random_bool(0.7) {
            FullPolicy::DropOldest
        } else {
            FullPolicy::Block
        },
        record_bytes_max: 256,
        sensors_max: 3,
        seq_reserve_block: rng.random_range(1..32),
        send_ahead_bytes_max: rng.random_range(64..4096),
        write_buffer_bytes_max: rng.random_range(1..4096),
        downtime_ms_max: rng.random_range(0..5000),
        retry_backoff_initial_ms: 1000,
        retry_backoff_max_ms: 60_000,
    }
}

#[test]
fn crash_recovery_cycles_keep_every_seq_delivered_or_declared() {
    // Checks promise 3 under seeded random workloads with crashes (immediate, and armed to fire
    // inside a write, sync, directory sync or remove, including during recovery) that lose
    // unsynced writes and tear the last one (a prefix, or sectors out of order): for every sensor and epoch the broker's strict model
    // receives a gapless, non-overlapping sequence in which every issued seq is delivered or
    // declared, readings synced before a crash are never declared lost to power, and
    // declarations overstate by at most one reservation block.
    let (mut n_crashes, mut n_torn, mut n_delivered) = (0, 0, 0);
    let mut totals = SpoolStats::default();
    let mut peak_over = i64::MIN;
    for seed in 0..40u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let config = random_config(&mut rng);
        let mut run = Run {
            offline: false,
            totals: SpoolStats::default(),
            n_delivered: 0,
            rng,
            // Half the seeds tear a write's sectors out of order: a later frame may survive an
            // earlier one, which the spool must declare (Corrupted), never deliver wrongly.
            disk: CrashDisk::with_model(CrashModel {
                tear: if seed % 2 == 0 {
                    Tear::Prefix
                } else {
                    Tear::Sectors
                },
                ..CrashModel::default()
            }),
            config,
            spool: None,
            model: Model::default(),
            now: 0,
        };
        run.reopen();
        for _ in 0..1500 {
            run.random_step();
            // (The manifest is not a segment.)
            let over = segment_paths(&run.disk).len() as i64 - config.n_segments_max() as i64;
            peak_over = peak_over.max(over);
        }
        run.drain();
        run.model.check_final(config.seq_reserve_block);
        run.reopen();
        n_crashes += run.disk.stats().n_crashes;
        n_torn += run.disk.stats().n_torn_writes;
        n_delivered += run.n_delivered;
        totals.n_dropped_full += run.totals.n_dropped_full;
        totals.n_dropped_expired += run.totals.n_dropped_expired;
        totals.n_dropped_power_loss += run.totals.n_dropped_power_loss;
        totals.n_rejected_full += run.totals.n_rejected_full;
        totals.n_segments_removed += run.totals.n_segments_removed;
        totals.n_budget_overruns += run.totals.n_budget_overruns;
    }
    println!("crashes {n_crashes}, torn writes {n_torn}, delivered {n_delivered}, {totals:?}");
    assert!(
        peak_over <= 0,
        "{peak_over} segment files beyond the budget after a step"
    );
    // The run must have exercised every path it claims to check.
    assert!(
        n_crashes > 100 && n_torn > 10,
        "crashes {n_crashes}, torn {n_torn}"
    );
    assert!(totals.n_dropped_full > 0 && totals.n_dropped_expired > 0);
    assert!(totals.n_dropped_power_loss > 0 && totals.n_rejected_full > 0);
}

#[test]
fn epochs_follow_the_wall_clock_and_never_go_back() {
    // Checks that a fresh spool starts its epoch at the wall clock (so a wiped spool still
    // starts newer than what the cluster saw), and that a reopen with a clock that went back
    // still moves the epoch forward.
    let disk = CrashDisk::new();
    let (spool, report) = open(&disk, config(), 1_700_000_000_000);
    assert_eq!(report.epoch, BootEpoch(1_700_000_000_000));
    spool.close(t(1_700_000_000_000)).unwrap();
    let (spool, report) = open(&disk, config(), 5);
    assert_eq!(report.epoch, BootEpoch(1_700_000_000_001));
    drop(spool);
    let wiped = CrashDisk::new();
    let (_, report) = open(&wiped, config(), 1_800_000_000_000);
    assert!(report.epoch > BootEpoch(1_700_000_000_001));
}

#[test]
fn record_ages_survive_restarts_and_wall_clock_steps() {
    // Checks, through the disk, that a record's age survives a restart on a new monotonic
    // origin: the spool clock is persisted at syncs, the downtime the wall clock shows is
    // counted (within downtime_ms_max), a wall clock stepped hours ahead counts only that bound,
    // and one stepped back counts nothing; expiry then follows the counted age.
    let config = SpoolConfig {
        record_age_ms_max: 10_000,
        downtime_ms_max: 4_000,
        ..config()
    };
    let boot = |mono_ms: u64, wall: i64| Now {
        mono: origin() + std::time::Duration::from_millis(mono_ms),
        wall: UnixMillis(wall),
    };
    let disk = CrashDisk::new();
    let (mut spool, _) =
        Spool::open(Arc::new(disk.mount()), &dir(), config, boot(0, 1_000_000)).unwrap();
    spool
        .append(boot(0, 1_000_000), sensor("a"), UnixMillis(0), value(0))
        .unwrap()
        .unwrap();
    // 1 s later by both clocks, then a clean stop.
    spool.close(boot(1_000, 1_001_000)).unwrap();
    // Down 2 s by the wall clock; the monotonic clock restarts near its origin.
    let (spool, report) =
        Spool::open(Arc::new(disk.mount()), &dir(), config, boot(5, 1_003_000)).unwrap();
    assert_eq!(report.downtime_counted_ms, 2_000);
    assert_eq!(report.oldest_age_ms, Some(3_000));
    drop(spool);
    // NTP then put the wall clock five hours ahead while the agent was down: 4 s counted.
    let (spool, report) = Spool::open(
        Arc::new(disk.mount()),
        &dir(),
        config,
        boot(9, 1_003_000 + 5 * 3_600_000),
    )
    .unwrap();
    assert_eq!(report.downtime_counted_ms, 4_000);
    assert_eq!(report.oldest_age_ms, Some(7_000));
    drop(spool);
    // The next boot starts with the wall clock five hours back: nothing counted.
    let (mut spool, report) =
        Spool::open(Arc::new(disk.mount()), &dir(), config, boot(3, 1_000)).unwrap();
    assert_eq!(report.downtime_counted_ms, 0);
    assert!(report.downtime_wall_ms < 0);
    assert_eq!(report.oldest_age_ms, Some(7_000));
    // Expiry follows the counted age on the monotonic clock: 3 s more, whatever the wall says.
    assert_eq!(
        spool.poll_timeout(),
        Some(origin() + std::time::Duration::from_millis(3_003))
    );
    spool.handle_timeout(boot(3_002, 9_000_000_000)).unwrap();
    assert!(spool
        .core()
        .declared()
        .iter()
        .all(|d| d.reason != DropReason::Expired));
    spool.handle_timeout(boot(3_003, 0)).unwrap();
    let expired: Vec<_> = spool
        .core()
        .declared()
        .into_iter()
        .filter(|d| d.reason == DropReason::Expired)
        .collect();
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!((expired[0].seq, expired[0].seq_last), (0, 0));
}

#[test]
fn a_refused_reading_stays_declared_after_a_crash() {
    // Checks that the Invalid declaration replacing a refused reading is durable: after a power
    // cut, recovery delivers it in the reading's place, and the refused reading never comes
    // back.
    let disk = CrashDisk::new();
    let (mut spool, _) = open(&disk, config(), 0);
    for seq in 0..3 {
        append(&mut spool, "a", seq);
    }
    spool.sync(t(0)).unwrap();
    let key = StreamKey {
        sensor: sensor("a"),
        epoch: BootEpoch(1),
    };
    assert_eq!(spool.next_batch(64, 1 << 20).unwrap().len(), 3);
    assert!(spool.refused(t(1), &key, 1).unwrap());
    drop(spool);
    disk.power_cut(&mut ChaCha8Rng::seed_from_u64(5));
    let (mut spool, _) = open(&disk, config(), 2);
    let got: Vec<(u64, u64, bool)> = drain(&mut spool)
        .into_iter()
        .filter(|r| r.boot_epoch == BootEpoch(1))
        .map(|r| {
            let invalid = matches!(
                r.payload,
                Payload::Dropped {
                    reason: DropReason::Invalid,
                    ..
                }
            );
            (r.seq, r.seq_last(), invalid)
        })
        .collect();
    assert_eq!(got[..3], [(0, 0, false), (1, 1, true), (2, 2, false)]);
}

/// Checks that `records` (of epoch 1, sensor "a") tile `0..n` exactly: each seq delivered as a
/// reading or inside one declaration, none twice. Returns the declared ranges.
fn tiles(records: &[Record], n: u64) -> Vec<(u64, u64, DropReason)> {
    let mut expect = 0;
    let mut declared = Vec::new();
    for r in records
        .iter()
        .filter(|r| r.boot_epoch == BootEpoch(1) && r.sensor == sensor("a"))
    {
        assert_eq!(r.seq, expect, "gap or overlap at {}: {records:?}", r.seq);
        if let Payload::Dropped { seq_last, reason } = r.payload {
            declared.push((r.seq, seq_last, reason));
        }
        expect = r.seq_last() + 1;
    }
    assert!(
        expect >= n,
        "seqs {expect}..{n} neither delivered nor declared"
    );
    declared
}

#[test]
fn a_failed_sync_declares_what_was_not_durable_and_never_trusts_the_page_cache() {
    // Checks that after an fdatasync failure the spool is fenced, and that reopening it from
    // its durable point delivers the synced readings, declares every later issued seq Storage,
    // and never delivers the readings that only the page cache held.
    let disk = CrashDisk::new();
    let (mut spool, _) = Spool::open(Arc::new(disk.clone()), &dir(), config(), t(0)).unwrap();
    for seq in 0..5 {
        append(&mut spool, "a", seq);
    }
    spool.sync(t(1)).unwrap();
    for seq in 5..10 {
        append(&mut spool, "a", seq);
    }
    disk.fail_syncs(0, u32::MAX);
    assert!(matches!(spool.sync(t(2)), Err(SpoolError::Disk(_))));
    assert!(spool.is_fenced());
    assert_eq!(spool.sync(t(2)), Err(SpoolError::Fenced));
    let point = spool.durable_point();
    drop(spool);
    disk.disarm_sync_failures();
    let (mut spool, report) =
        Spool::reopen(Arc::new(disk.clone()), &dir(), config(), t(3), point).unwrap();
    assert_eq!(report.power_loss.len(), 1, "{report:?}");
    assert_eq!(report.power_loss[0].reason, DropReason::Storage);
    assert_eq!(report.power_loss[0].seq, 5);
    let got = drain(&mut spool);
    let declared = tiles(&got, 10);
    assert_eq!(declared, [(5, 15, DropReason::Storage)]);
    assert_eq!(spool.stats().n_dropped_storage, 11);
}

#[test]
fn a_full_disk_leaves_no_partial_segment_and_the_spool_resumes_when_space_returns() {
    // Checks that a segment whose preallocation a full disk refuses is removed at once, that a
    // reopen fails while the disk stays full, and that once space returns the reopened spool
    // delivers every reading accepted and declares (Storage) every seq it could not keep.
    let disk = CrashDisk::new();
    let (mut spool, _) = Spool::open(Arc::new(disk.clone()), &dir(), config(), t(0)).unwrap();
    disk.set_full(true);
    let n_files = disk.n_files();
    let mut accepted = 0;
    let error = loop {
        match spool.append(t(0), sensor("a"), UnixMillis(0), value(accepted)) {
            Ok(Ok(a)) => {
                assert_eq!(a.seq, accepted);
                accepted += 1;
            }
            Ok(Err(rejected)) => panic!("{rejected:?}"),
            Err(error) => break error,
        }
        assert!(accepted < 10_000, "the disk never filled");
    };
    assert!(
        matches!(&error, SpoolError::Disk(e) if e.is_no_space()),
        "{error:?}"
    );
    assert_eq!(disk.n_files(), n_files, "no partial segment left");
    let point = spool.durable_point();
    drop(spool);
    let still_full = Spool::reopen(Arc::new(disk.clone()), &dir(), config(), t(1), point);
    assert!(
        still_full.is_err(),
        "reopened on a full disk: {still_full:?}"
    );
    assert_eq!(disk.n_files(), n_files, "no partial segment left");
    disk.set_full(false);
    let (mut spool, _) =
        Spool::reopen(Arc::new(disk.clone()), &dir(), config(), t(2), point).unwrap();
    let got = drain(&mut spool);
    tiles(&got, accepted);
    let readings = got
        .iter()
        .filter(|r| !matches!(r.payload, Payload::Dropped { .. }))
        .count() as u64;
    assert!(
        readings + 16 >= accepted,
        "{readings} of {accepted} delivered"
    );
    assert_eq!(
        append(&mut spool, "a", 0).seq,
        0,
        "spooling again, in a new epoch"
    );
}

/// `(pos, len)` of every frame of a format-2 segment's bytes.
fn frame_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let header = format::FRAME_HEADER_LEN as usize;
    let mut out = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN as usize;
    while pos + header <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        out.push((pos, header + len));
        pos += header + len;
    }
    out
}

/// Checks that the records of `name` (epoch 1) tile `0..n`; returns (readings, declared seqs).
fn tiling_of(records: &[Record], name: &str, n: u64, what: &str) -> (u64, u64) {
    let (mut expect, mut readings, mut declared) = (0, 0, 0);
    for r in records
        .iter()
        .filter(|r| r.boot_epoch == BootEpoch(1) && r.sensor == sensor(name))
    {
        assert_eq!(
            r.seq, expect,
            "{what}: {name}: gap or overlap at seq {}",
            r.seq
        );
        match r.payload {
            Payload::Dropped { seq_last, .. } => declared += seq_last - r.seq + 1,
            _ => readings += 1,
        }
        expect = r.seq_last() + 1;
    }
    assert!(
        expect >= n,
        "{what}: {name}: seqs {expect}..{n} neither delivered nor declared"
    );
    (readings, declared)
}

#[derive(Debug, Clone, Copy)]
enum Harm {
    Flip(usize),
    Zero(usize, usize),
    Truncate(usize),
    Delete,
}

fn harm(disk: &CrashDisk, path: &Path, harm: Harm) {
    match harm {
        Harm::Flip(at) => disk.flip_bit(path, at as u64, 5),
        Harm::Zero(at, len) => disk.zero_range(path, at as u64, len as u64),
        Harm::Truncate(len) => disk.truncate_file(path, len as u64),
        Harm::Delete => disk.delete_file(path),
    }
    .unwrap();
}

#[test]
fn damage_anywhere_keeps_what_checks_and_declares_the_rest() {
    // Checks the recovery rule on every region of closed and last spool segments (header,
    // entry length, payload CRC, entry header CRC, payload, an entry boundary, the preallocated
    // tail, the last entry; bit flips, zeroed ranges, truncation in each, and the file deleted):
    // the open never fails, damage where a torn write cannot be (with the manifest's record:
    // anything below the durable end, a cut anywhere, a recorded segment gone) is reported
    // (file and byte) by check and open alike, and for every sensor the delivered readings and
    // declared ranges tile every seq issued, losing at most the damaged frames and one
    // reservation block.
    let n = 150u64;
    let build = || {
        let disk = CrashDisk::new();
        let (mut spool, _) = open(&disk, config(), 0);
        for seq in 0..n {
            append(&mut spool, "a", seq);
            append(&mut spool, "b", seq);
        }
        spool.sync(t(1)).unwrap();
        drop(spool);
        disk
    };
    let paths = segment_paths(&build());
    assert!(paths.len() >= 3, "{paths:?}");
    for (which, path) in [("closed", &paths[1]), ("last", &paths[paths.len() - 1])] {
        let bytes = build().bytes(path).unwrap();
        let spans = frame_spans(&bytes);
        assert!(spans.len() > 4, "{which}: {} frames", spans.len());
        let (mid, mid_len) = spans[spans.len() / 2];
        let (last, last_len) = spans[spans.len() - 1];
        let data_end = last + last_len;
        let closed = which == "closed";
        // (A closed segment may be full: then its last byte.)
        let in_tail = (data_end + (bytes.len() - data_end) / 2).min(bytes.len() - 1);
        let cases = [
            ("header magic", Harm::Flip(3), true),
            ("header id", Harm::Flip(20), true),
            ("entry length", Harm::Flip(mid + 1), true),
            ("payload crc", Harm::Flip(mid + 5), true),
            ("entry header crc", Harm::Flip(mid + 9), true),
            ("payload", Harm::Flip(mid + mid_len / 2 + 4), true),
            ("entry boundary", Harm::Zero(mid + mid_len - 2, 4), true),
            ("zeroed run", Harm::Zero(mid, 3 * mid_len), true),
            // In the last segment garbage after the durable end is a torn tail; the last entry
            // lies below the end the manifest records durable.
            ("preallocated tail", Harm::Flip(in_tail), closed),
            ("last entry", Harm::Flip(last + last_len - 1), true),
            // The manifest records the segment: a cut in its header is not a creation cut
            // short.
            ("cut in the header", Harm::Truncate(10), true),
            ("deleted", Harm::Delete, true),
            ("cut in an entry header", Harm::Truncate(mid + 3), true),
            ("cut in a payload", Harm::Truncate(mid + mid_len / 2), true),
            ("cut between entries", Harm::Truncate(mid), true),
            (
                "cut in the preallocated tail",
                Harm::Truncate(in_tail),
                true,
            ),
            (
                "cut in the last entry",
                Harm::Truncate(last + last_len / 2),
                true,
            ),
        ];
        for (region, damage, reported) in cases {
            let disk = build();
            harm(&disk, path, damage);
            let what = format!("{which} segment, {region}");
            let before = disk.files();
            let check = Spool::check(&disk.mount(), &dir(), config(), t(2))
                .unwrap_or_else(|e| panic!("{what}: check failed: {e}"));
            assert_eq!(disk.files(), before, "{what}: check wrote");
            let (mut spool, report) = Spool::open(Arc::new(disk.mount()), &dir(), config(), t(2))
                .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
            assert_eq!(check.damage, report.damage, "{what}");
            if reported {
                assert!(!report.damage.is_empty(), "{what}: damage not reported");
                assert!(report
                    .damage
                    .iter()
                    .all(|d| d.path == path.display().to_string()));
                let text = report.to_string();
                assert!(text.contains("CORRUPT"), "{what}: {text}");
            }
            let got = drain(&mut spool);
            for name in ["a", "b"] {
                let (readings, declared) = tiling_of(&got, name, n, &what);
                if matches!(damage, Harm::Flip(_)) {
                    // One damaged frame holds one reading; a reservation block is at most 16.
                    assert!(
                        readings + 1 + 16 >= n,
                        "{what}: {name} kept {readings} of {n}"
                    );
                }
                assert!(readings + declared >= n, "{what}: {name}");
            }
            drop(spool);
            // Declared once: a second open finds the declarations and declares nothing new.
            let (_, again) = open(&disk, config(), 3);
            assert!(
                again.power_loss.is_empty(),
                "{what}: declared again {:?}",
                again.power_loss
            );
        }
    }
}

/// A spool of `n` readings of sensors "a" and "b" over several segments, synced, then crashed.
fn spooled(n: u64) -> CrashDisk {
    let disk = CrashDisk::new();
    let (mut spool, _) = open(&disk, config(), 0);
    for seq in 0..n {
        append(&mut spool, "a", seq);
        append(&mut spool, "b", seq);
    }
    spool.sync(t(1)).unwrap();
    drop(spool);
    disk
}

/// True when `records` hold a `Corrupted` declaration of sensor `name`.
fn declares_corrupted(records: &[Record], name: &str) -> bool {
    records.iter().any(|r| {
        r.sensor == sensor(name)
            && matches!(
                r.payload,
                Payload::Dropped {
                    reason: DropReason::Corrupted,
                    ..
                }
            )
    })
}

#[test]
fn damage_to_the_manifest_loses_nothing_and_is_reported_when_no_record_is_left() {
    // Checks every region of the manifest (either slot's magic, sequence number, body and CRC;
    // both slots; zeroed, cut inside either slot, emptied, deleted): the open never fails and
    // delivers every reading (the segments are intact); damage is reported (by check and open
    // alike, naming the manifest) exactly when no slot checks, whatever is left of the file
    // (deleted and emptied too: the segments hold entries, so a manifest existed), and then
    // what segments lost with it could have held is declared Corrupted; the open records a
    // manifest that checks again, so a second open reports nothing.
    let n = 150u64;
    let path = manifest_path();
    let len = spooled(n).bytes(&path).unwrap().len();
    assert_eq!(len, 8192);
    let mut cases = Vec::new();
    for slot in [0usize, 4096] {
        for (region, at) in [("magic", 2), ("sequence", 17), ("body", 40), ("crc", 4093)] {
            cases.push((
                format!("slot at {slot}, {region}"),
                vec![Harm::Flip(slot + at)],
                false,
            ));
        }
        cases.push((
            format!("slot at {slot} zeroed"),
            vec![Harm::Zero(slot, 4096)],
            false,
        ));
    }
    cases.extend([
        (
            "both slots".to_string(),
            vec![Harm::Flip(40), Harm::Flip(4096 + 40)],
            true,
        ),
        ("all zeroed".to_string(), vec![Harm::Zero(0, 8192)], true),
        (
            "cut in the second slot".to_string(),
            vec![Harm::Truncate(5000)],
            false,
        ),
        (
            "cut in the first slot".to_string(),
            vec![Harm::Truncate(100)],
            true,
        ),
        ("emptied".to_string(), vec![Harm::Truncate(0)], true),
        ("deleted".to_string(), vec![Harm::Delete], true),
    ]);
    for (what, harms, reported) in cases {
        let disk = spooled(n);
        for damage in harms {
            harm(&disk, &path, damage);
        }
        let check = Spool::check(&disk.mount(), &dir(), config(), t(2))
            .unwrap_or_else(|e| panic!("{what}: check failed: {e}"));
        let (mut spool, report) = Spool::open(Arc::new(disk.mount()), &dir(), config(), t(2))
            .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
        assert_eq!(check.damage, report.damage, "{what}");
        assert_eq!(!report.damage.is_empty(), reported, "{what}: {report}");
        assert!(report
            .damage
            .iter()
            .all(|d| d.path == path.display().to_string()));
        let got = drain(&mut spool);
        for name in ["a", "b"] {
            let (readings, _) = tiling_of(&got, name, n, &what);
            assert_eq!(readings, n, "{what}: {name}");
            assert_eq!(declares_corrupted(&got, name), reported, "{what}: {name}");
        }
        drop(spool);
        let (_, again) = open(&disk, config(), 3);
        assert_eq!(
            (again.damage.len(), again.power_loss.len()),
            (0, 0),
            "{what}"
        );
    }
}

#[test]
fn a_deleted_manifest_and_last_segment_are_reported_and_declared() {
    // Checks the case a missing manifest used to hide: with the manifest and the last segment
    // both deleted, check and open report the manifest (the open does not fail), every reading
    // of the remaining segments is delivered, the seqs the lost segment held are declared
    // Corrupted (delivered and declared still tile every seq issued), and the open records a
    // manifest again, so a second open reports and declares nothing.
    let n = 150u64;
    let disk = spooled(n);
    let segments = segment_paths(&disk);
    assert!(segments.len() >= 3, "{segments:?}");
    harm(&disk, &manifest_path(), Harm::Delete);
    harm(&disk, &segments[segments.len() - 1], Harm::Delete);
    let check = Spool::check(&disk.mount(), &dir(), config(), t(2)).unwrap();
    let (mut spool, report) = open(&disk, config(), 2);
    assert_eq!(check.damage, report.damage);
    assert_eq!(report.damage.len(), 1, "{report}");
    assert_eq!(report.damage[0].path, manifest_path().display().to_string());
    assert!(report.to_string().contains("CORRUPT"), "{report}");
    let got = drain(&mut spool);
    for name in ["a", "b"] {
        let (readings, declared) = tiling_of(&got, name, n, "deleted");
        assert!(readings > 0 && readings < n, "{name}: {readings} readings");
        assert!(readings + declared >= n, "{name}");
        assert!(declares_corrupted(&got, name), "{name}");
    }
    drop(spool);
    let (_, again) = open(&disk, config(), 3);
    assert_eq!((again.damage.len(), again.power_loss.len()), (0, 0));
}

#[test]
fn a_new_spool_whose_manifest_creation_was_cut_short_starts_silently() {
    // Checks the two states without a manifest that are not damage: an empty directory, and a
    // first segment whose header was synced but whose manifest was never completed (so nothing
    // was written to it): both open without a report, and the open records a manifest.
    let disk = CrashDisk::new();
    let check = Spool::check(&disk.mount(), &dir(), config(), t(0)).unwrap();
    assert_eq!(check.damage, vec![]);
    let (spool, report) = open(&disk, config(), 0);
    assert_eq!(report.damage, vec![], "{report}");
    drop(spool);
    let segments = segment_paths(&disk);
    assert_eq!(segments.len(), 1);
    let len = disk.bytes(&segments[0]).unwrap().len();
    let header = SEGMENT_HEADER_LEN as usize;
    harm(&disk, &segments[0], Harm::Zero(header, len - header));
    harm(&disk, &manifest_path(), Harm::Delete);
    let (_, report) = open(&disk, config(), 1);
    assert_eq!(report.damage, vec![], "{report}");
    assert!(
        disk.bytes(&manifest_path()).is_some(),
        "no manifest recorded"
    );
}

/// `(epoch, seq, what)` of each record of sensor "a": the reading's value, or the declaration.
fn summary(records: &[Record]) -> Vec<(u64, u64, String)> {
    records
        .iter()
        .filter(|r| r.sensor == sensor("a"))
        .map(|r| {
            let what = match &r.payload {
                Payload::Reading(Reading::Metric { value, .. }) => format!("v{value}"),
                Payload::Dropped { reason, .. } => format!("{reason:?}"),
                other => format!("{other:?}"),
            };
            (r.boot_epoch.0, r.seq, what)
        })
        .collect()
}

#[test]
fn an_expired_epoch_is_closed_and_its_never_sent_readings_resent_in_the_new_one() {
    // Checks the ProducerExpired recovery: after the node forgot epoch 1 of sensor "a", one
    // declaration in epoch 2 closes every unacknowledged seq of epoch 1; readings handed out
    // before (they may be stored) are not resent, readings never sent follow with new seqs;
    // readings of epoch 2 already queued come first; and a power cut right after it neither
    // brings epoch 1 back nor loses the resends.
    let disk = CrashDisk::new();
    // A send mark just past what was handed out, so the rest is provably never sent.
    let config = SpoolConfig {
        send_ahead_bytes_max: 1,
        ..config()
    };
    let (mut spool, _) = open(&disk, config, 0);
    for seq in 0..5 {
        append(&mut spool, "a", seq);
    }
    spool.sync(t(0)).unwrap();
    let old = StreamKey {
        sensor: sensor("a"),
        epoch: BootEpoch(1),
    };
    let sent = spool.next_batch(2, 1 << 20).unwrap();
    spool.ack(t(0), &old, sent[0].seq).unwrap();
    spool.close(t(1)).unwrap();
    let (mut spool, report) = open(&disk, config, 2);
    assert_eq!(report.epoch, BootEpoch(2));
    append(&mut spool, "a", 50);
    assert_eq!(spool.expired(t(3), &old, None).unwrap(), Some((1, 4)));
    assert_eq!(
        spool.expired(t(3), &old, None).unwrap(),
        None,
        "closed once"
    );
    let stats = spool.stats();
    assert_eq!(
        (stats.n_dropped_producer_expired, stats.n_resent_new_epoch),
        (4, 3)
    );
    let closed = format!(
        "{:?}",
        DropReason::ProducerExpired {
            epoch: BootEpoch(1),
            seq: 1,
            seq_last: 4
        }
    );
    let expect = vec![
        (2, 0, "v50".to_owned()),
        (2, 1, closed),
        (2, 2, "v2".to_owned()),
        (2, 3, "v3".to_owned()),
        (2, 4, "v4".to_owned()),
    ];
    drop(spool);
    disk.power_cut(&mut ChaCha8Rng::seed_from_u64(9));
    let (mut spool, report) = open(&disk, config, 4);
    // Only the reserved seqs of epoch 2 beyond those issued are declared lost to the cut.
    assert!(
        report.power_loss.iter().all(|d| d.seq >= 5),
        "{:?}",
        report.power_loss
    );
    let got = summary(&drain(&mut spool));
    assert_eq!(got[..5], expect, "{got:?}");
    assert!(got[5..]
        .iter()
        .all(|(e, _, what)| *e == 2 && what == "PowerLoss"));
}

#[test]
fn an_expiry_declaration_outliving_the_records_it_closed_recovers() {
    // Checks that once the segments of the closed epoch are removed (their records are dead),
    // a restart that replays the still-queued ProducerExpired declaration opens cleanly and
    // delivers it and the resent readings exactly once.
    let disk = CrashDisk::new();
    let config = SpoolConfig {
        send_ahead_bytes_max: 1,
        ..config()
    };
    let (mut spool, _) = open(&disk, config, 0);
    for seq in 0..150 {
        append(&mut spool, "a", seq);
    }
    spool.close(t(1)).unwrap();
    let (mut spool, _) = open(&disk, config, 2);
    let old = StreamKey {
        sensor: sensor("a"),
        epoch: BootEpoch(1),
    };
    assert_eq!(spool.expired(t(3), &old, None).unwrap(), Some((0, 149)));
    spool.sync(t(4)).unwrap();
    spool.close(t(5)).unwrap();
    let (mut spool, _) = open(&disk, config, 6);
    let got = summary(&drain(&mut spool));
    assert!(got.iter().all(|(epoch, _, _)| *epoch == 2), "{got:?}");
    assert_eq!(got.len(), 151, "{got:?}");
    assert!(got[0].2.starts_with("ProducerExpired"), "{got:?}");
}

/// The segment files of a format-1 spool written by the release before format 2 (generated with
/// that release's spool: `config()`, readings `a` 0..150 and `b` 1000..1150 appended and synced,
/// 30 records handed out and acknowledged, `a` 150..160 appended and synced, then a crash
/// without close). Checked in, because the code that wrote them is gone.
const V1_FIXTURE: &[(&str, &[u8])] = &include!("fixtures/v1/files.rs");

/// A disk holding the format-1 fixture spool.
fn v1_disk() -> CrashDisk {
    let disk = CrashDisk::new();
    disk.create_dir_all(&dir()).unwrap();
    for (name, bytes) in V1_FIXTURE {
        let file = disk.open(&dir().join(name), true).unwrap();
        file.write_at(0, bytes).unwrap();
        file.sync_data().unwrap();
    }
    disk.sync_dir(&dir()).unwrap();
    disk
}

/// The values of the readings of `name` among `records`, in delivery order, and the seqs
/// declared for it (with their reasons).
fn values_and_declared(records: &[Record], name: &str) -> (Vec<u64>, Vec<(u64, u64, DropReason)>) {
    let (mut values, mut declared) = (Vec::new(), Vec::new());
    for r in records.iter().filter(|r| r.sensor == sensor(name)) {
        match &r.payload {
            Payload::Reading(Reading::Metric { value, .. }) => values.push(*value as u64),
            Payload::Dropped { seq_last, reason } => declared.push((r.seq, *seq_last, *reason)),
            other => panic!("unexpected payload {other:?}"),
        }
    }
    (values, declared)
}

/// Whether the segment at `path` is of format 2 (the segment layer's header, spool version 2).
fn is_format_2(disk: &CrashDisk, path: &Path) -> bool {
    let bytes = disk.bytes(path).unwrap();
    let header: [u8; 64] = bytes[..64].try_into().unwrap();
    sluice_proto::segment::SegmentHeader::decode(&header, format::SEGMENT_KIND).is_ok()
}

#[test]
fn a_v1_spool_of_the_previous_release_is_delivered_after_the_upgrade() {
    // Checks the upgrade path: a spool of format-1 segments written by the previous release is
    // opened by this one (nothing reported damaged), every reading it held is delivered with its
    // value in seq order, what the crash left reserved is declared PowerLoss and nothing else,
    // new segments are of format 2 while no format-1 segment is ever written, the format-1 files
    // go once delivered, and a second open declares and delivers nothing more.
    let disk = v1_disk();
    let v1_paths: Vec<PathBuf> = V1_FIXTURE.iter().map(|(n, _)| dir().join(n)).collect();
    let before: Vec<Vec<u8>> = v1_paths.iter().map(|p| disk.bytes(p).unwrap()).collect();
    let check = Spool::check(&disk.mount(), &dir(), config(), t(10)).unwrap();
    let (mut spool, report) = open(&disk, config(), 10);
    assert_eq!(check.damage, vec![], "{check}");
    assert_eq!(report.damage, vec![], "{report}");
    // A spool of that release has no manifest: it is adopted and gets one.
    assert!(
        disk.bytes(&manifest_path()).is_some(),
        "no manifest recorded"
    );
    // Epochs follow the wall clock (10 ms) once it is ahead of the spool's count.
    assert_eq!(report.epoch, BootEpoch(10));
    for (path, bytes) in v1_paths.iter().zip(&before) {
        // Read, never written: the open started a new segment instead.
        assert_eq!(disk.bytes(path).as_ref(), Some(bytes), "{}", path.display());
    }
    let got = drain(&mut spool);
    let (a, a_declared) = values_and_declared(&got, "a");
    let (b, b_declared) = values_and_declared(&got, "b");
    // The 30 records acknowledged before the crash were 15 of each (delivery alternates).
    assert_eq!(a, (15..160).collect::<Vec<u64>>());
    assert_eq!(b, (1015..1150).collect::<Vec<u64>>());
    for declared in a_declared.iter().chain(&b_declared) {
        assert_eq!(declared.2, DropReason::PowerLoss, "{declared:?}");
    }
    for (name, n) in [("a", 160), ("b", 150)] {
        // Seqs 15.. of epoch 1 tile, readings then declarations, past every reading accepted.
        let mut expect = 15;
        for r in got.iter().filter(|r| r.sensor == sensor(name)) {
            assert_eq!(
                (r.boot_epoch, r.seq),
                (BootEpoch(1), expect),
                "{name}: {r:?}"
            );
            expect = r.seq_last() + 1;
        }
        assert!(expect >= n, "{name}: covered up to {expect}");
    }
    spool.sync(t(20)).unwrap();
    let paths = segment_paths(&disk);
    assert!(paths.iter().all(|p| !v1_paths.contains(p)), "{paths:?}");
    assert!(paths.iter().all(|p| is_format_2(&disk, p)), "{paths:?}");
    drop(spool);
    let (mut spool, again) = open(&disk, config(), 30);
    assert_eq!((again.power_loss.len(), again.n_records), (0, 0));
    assert!(drain(&mut spool).is_empty());
}

#[test]
fn format_1_records_are_copied_forward_into_format_2_segments() {
    // Checks that the records of format-1 segments can be relocated like any others: reopened
    // under `Block` with a budget smaller than the fixture spool, the spool compacts by copying
    // format-1 frames into format-2 segments (framed again for their place), and after new
    // readings push it further every reading of both releases is still delivered, none dropped.
    let disk = v1_disk();
    let small = SpoolConfig {
        policy: FullPolicy::Block,
        spool_bytes_max: (V1_FIXTURE.len() as u64) * 4096,
        ..config()
    };
    let (mut spool, report) = open(&disk, small, 10);
    assert_eq!(report.damage, vec![]);
    let mut n_new = 0;
    while n_new < 400 {
        let result = spool
            .append(t(11), sensor("c"), UnixMillis(0), value(n_new))
            .unwrap();
        if result.is_err() {
            break;
        }
        n_new += 1;
    }
    let v1_left = V1_FIXTURE
        .iter()
        .filter(|(n, _)| disk.bytes(&dir().join(n)).is_some())
        .count();
    assert!(v1_left < V1_FIXTURE.len(), "no format-1 segment was freed");
    let got = drain(&mut spool);
    let (a, _) = values_and_declared(&got, "a");
    let (b, _) = values_and_declared(&got, "b");
    let (c, c_declared) = values_and_declared(&got, "c");
    assert_eq!(a, (15..160).collect::<Vec<u64>>());
    assert_eq!(b, (1015..1150).collect::<Vec<u64>>());
    assert_eq!(c, (0..n_new).collect::<Vec<u64>>());
    assert!(c_declared.is_empty(), "{c_declared:?}");
    assert!(segment_paths(&disk).iter().all(|p| is_format_2(&disk, p)));
}

#[test]
fn a_power_cut_in_the_last_write_is_a_torn_tail_not_damage() {
    // Checks what "accepted" means at the edge: a reading is accepted when `append` gives it a
    // seq, under a durable reservation, and it is durable only once a sync covering it
    // returned. A power cut inside the write or sync of the last batch (CrashDisk tearing that
    // write to any prefix) leaves a torn tail: recovery reports no damage, declares the
    // unsynced seqs PowerLoss (never Corrupted), and delivers every reading synced before.
    let mut n_torn = 0;
    for seed in 0..40u64 {
        for n_ops in 1..4 {
            let disk = CrashDisk::with_model(CrashModel {
                tear: Tear::Prefix,
                remove_is_crash_point: true,
            });
            let (mut spool, _) = open(&disk, config(), 0);
            for seq in 0..20 {
                append(&mut spool, "a", seq);
            }
            spool.sync(t(1)).unwrap();
            for seq in 20..30 {
                append(&mut spool, "a", seq);
            }
            disk.arm_power_cut(n_ops, ChaCha8Rng::seed_from_u64(seed));
            let _ = spool.sync(t(2));
            drop(spool);
            if disk.disarm_power_cut() {
                disk.power_cut(&mut ChaCha8Rng::seed_from_u64(seed));
            }
            let what = format!("seed {seed}, cut at op {n_ops}");
            let (mut spool, report) = open(&disk, config(), 3);
            assert_eq!(report.damage, vec![], "{what}: {report}");
            n_torn += u64::from(report.truncated_bytes > 0);
            let got = drain(&mut spool);
            let (values, declared) = values_and_declared(&got, "a");
            assert_eq!(values[..20], (0..20).collect::<Vec<u64>>()[..], "{what}");
            for d in &declared {
                assert_eq!(d.2, DropReason::PowerLoss, "{what}: {d:?}");
            }
            tiling_of(&got, "a", 30, &what);
        }
    }
    assert!(n_torn > 0, "no power cut tore a write");
}

#[test]
fn a_checkpoint_larger_than_a_segment_is_read_back() {
    // Checks that entries past a segment's preallocation are read: with many sensors the
    // checkpoint that opens every segment outgrows a 4 KiB segment and the file grows past its
    // preallocated length; after a crash and a reopen every reading is still delivered and
    // nothing is reported damaged.
    let many = SpoolConfig {
        sensors_max: 100,
        spool_bytes_max: 256 * 4096,
        ..config()
    };
    let disk = CrashDisk::new();
    let (mut spool, _) = open(&disk, many, 0);
    let long = "x".repeat(60);
    let names: Vec<String> = (0..100).map(|i| format!("{long}/{i}")).collect();
    for name in &names {
        append(&mut spool, name, 0);
    }
    spool.sync(t(1)).unwrap();
    drop(spool);
    let longest = segment_paths(&disk)
        .iter()
        .map(|p| disk.bytes(p).unwrap().len())
        .max()
        .unwrap();
    assert!(longest > 4096, "no segment outgrew its preallocation");
    let (mut spool, report) = open(&disk, many, 10);
    assert_eq!(report.damage, vec![], "{report}");
    let got = drain(&mut spool);
    for name in &names {
        let (values, _) = values_and_declared(&got, name);
        assert_eq!(values, vec![0], "{name}");
    }
}

#[test]
fn a_sensor_with_many_old_readings_does_not_fill_every_batch() {
    // Checks the batch shares: with one sensor holding many older readings (one the node keeps
    // refusing, so they are rewound and resent every round) and another sensor's reading
    // behind them, every batch, the first after a rewind too, carries the second sensor's
    // reading instead of only the first sensor's oldest ones.
    let disk = CrashDisk::new();
    let (mut spool, _) = open(&disk, config(), 0);
    for seq in 0..40 {
        append(&mut spool, "a", seq);
    }
    append(&mut spool, "b", 0);
    spool.sync(t(1)).unwrap();
    for round in 0..3 {
        let batch = spool.next_batch(8, 1 << 20).unwrap();
        assert_eq!(batch.len(), 8, "round {round}");
        assert!(
            batch.iter().any(|r| r.sensor == sensor("b")),
            "round {round}: {:?}",
            batch.iter().map(|r| (&r.sensor, r.seq)).collect::<Vec<_>>()
        );
        assert_eq!(
            batch[0].sensor,
            sensor("a"),
            "oldest first within the shares"
        );
        spool.rewind();
    }
}
