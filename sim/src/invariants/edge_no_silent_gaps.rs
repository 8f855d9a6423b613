//! Edge no-silent-gaps (`Promise 3`): for every edge, sensor and boot epoch, the events the
//! node stored — readings and `Dropped` declarations — tile the seqs `0..end` in offset order:
//! no hole, no overlap, no seq twice, and a sensor's epochs never go back. At the end of the run
//! (every edge drained), every seq the agent accepted in an epoch is delivered or declared.
//!
//! Declarations need a cause the simulator saw itself: `PowerLoss` only in the epoch of a boot
//! whose power was cut; `SpoolFull` only from a `drop_oldest` spool whose directory reached its
//! segment budget on the edge's disk; `Storage` only from an edge whose disk the simulator
//! filled or failed an `fdatasync` on, `Corrupted` only after such a failed sync; `Expired` only once the boot is older than the age bound.
//! Once a boot's counts are final (a clean stop, or the end with its sources finished) nothing
//! but a power-loss declaration lies beyond what it accepted, plus one seq per offer whose
//! source was stopped before it learned the outcome (the agent may have spooled it: sources are
//! at-least-once into the spool). A power cut can also cut off the answer to an append whose
//! seq survives, so after a cut only the lower bound is checked.
//!
//! The record of boots and accepted counts is the simulator's ([`EdgeLedger`]); the node's
//! account of itself is never used.

use super::{LogSnapshot, Violation};
use crate::edge_ledger::{BootEnd, EdgeLedger, EdgeRecord};
use sluice_edge::spool::FullPolicy;
use sluice_proto::{
    BootEpoch, DropReason, PartitionId, Payload, SensorId, StoredEvent, StreamName, UnixMillis,
};
use std::collections::BTreeMap;

/// Seqs declared dropped in the log, by reason, and edge events seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EdgeTotals {
    /// Events stored for edges.
    pub n_events: u64,
    /// Seqs declared `PowerLoss`.
    pub n_power_loss: u64,
    /// Seqs declared `SpoolFull`.
    pub n_spool_full: u64,
    /// Seqs declared `Expired`.
    pub n_expired: u64,
}

/// What one `(edge, sensor, epoch)` holds in the log.
#[derive(Debug)]
struct Tiles {
    epoch: BootEpoch,
    /// One past the last seq stored or declared.
    end: u64,
    /// The highest seq stored as a reading.
    reading_last: Option<u64>,
    /// Declared ranges, inclusive.
    drops: Vec<(u64, u64, DropReason)>,
}

/// One `(edge, sensor)` as stored: its stream, partition and events in offset order.
struct Group<'a> {
    stream: &'a StreamName,
    partition: PartitionId,
    events: Vec<&'a StoredEvent>,
}

fn fail(details: String) -> Violation {
    Violation::new("edge_no_silent_gaps", details)
}

/// Checks the snapshot against the ledger. `wall_now` is the wall clock of the check; with
/// `at_end`, every edge has drained and accepted counts of running boots are final.
pub fn check(
    ledger: &EdgeLedger,
    snapshot: &LogSnapshot,
    wall_now: UnixMillis,
    at_end: bool,
) -> Result<EdgeTotals, Violation> {
    let mut totals = EdgeTotals::default();
    let groups = collect(ledger, snapshot, &mut totals)?;
    let mut tiled: BTreeMap<(u32, &SensorId), Vec<Tiles>> = BTreeMap::new();
    for ((idx, sensor), group) in &groups {
        let Some(edge) = ledger.edges.iter().find(|e| e.idx == *idx) else {
            continue;
        };
        let tiles = tile(edge, sensor, group)?;
        for t in &tiles {
            check_epoch(edge, sensor, group.stream, t, wall_now, at_end, &mut totals)?;
        }
        tiled.insert((*idx, sensor), tiles);
    }
    if at_end {
        for edge in &ledger.edges {
            check_coverage(edge, &tiled)?;
        }
    }
    Ok(totals)
}

/// Groups edge events by `(edge, sensor)`, checking each sensor is the edge's, in its stream,
/// in one partition.
fn collect<'a>(
    ledger: &'a EdgeLedger,
    snapshot: &'a LogSnapshot,
    totals: &mut EdgeTotals,
) -> Result<BTreeMap<(u32, &'a SensorId), Group<'a>>, Violation> {
    let mut groups: BTreeMap<(u32, &SensorId), Group> = BTreeMap::new();
    for ((stream, partition), log) in &snapshot.partitions {
        for stored in &log.events {
            let event = &stored.event;
            let Some(edge) = ledger.by_identity(&event.producer) else {
                continue;
            };
            totals.n_events += 1;
            let at = || format!("{stream}/{partition} offset {}", stored.offset);
            if edge.sensors.get(&event.sensor) != Some(stream) {
                return Err(fail(format!(
                    "{}: edge e{} has no sensor {} writing to {stream}",
                    at(),
                    edge.idx,
                    event.sensor
                )));
            }
            let group = groups
                .entry((edge.idx, &event.sensor))
                .or_insert_with(|| Group {
                    stream,
                    partition: *partition,
                    events: Vec::new(),
                });
            if group.partition != *partition {
                return Err(fail(format!(
                    "{}: edge e{} sensor {} is also stored in partition {}",
                    at(),
                    edge.idx,
                    event.sensor,
                    group.partition
                )));
            }
            group.events.push(stored);
        }
    }
    Ok(groups)
}

/// Walks one `(edge, sensor)` in offset order: each epoch starts at seq 0 and every event
/// starts right after the previous one ends.
fn tile(edge: &EdgeRecord, sensor: &SensorId, group: &Group) -> Result<Vec<Tiles>, Violation> {
    let mut out: Vec<Tiles> = Vec::new();
    for stored in &group.events {
        let e = &stored.event;
        let at = || {
            format!(
                "{}/{} offset {}: edge e{} sensor {} epoch {} seq {}",
                group.stream, group.partition, stored.offset, edge.idx, sensor, e.boot_epoch, e.seq
            )
        };
        if e.seq_last() < e.seq {
            return Err(fail(format!(
                "{}: declares the inverted range ..={}",
                at(),
                e.seq_last()
            )));
        }
        match out.last_mut() {
            Some(t) if t.epoch == e.boot_epoch => {
                if e.seq != t.end {
                    let what = if e.seq > t.end {
                        "a hole"
                    } else {
                        "an overlap"
                    };
                    return Err(fail(format!(
                        "{}: {what}, the seqs stored so far end at {}",
                        at(),
                        t.end
                    )));
                }
            }
            Some(t) if t.epoch > e.boot_epoch => {
                return Err(fail(format!("{}: after epoch {}", at(), t.epoch)));
            }
            _ => {
                if e.seq != 0 {
                    return Err(fail(format!("{}: the epoch starts there, not at 0", at())));
                }
                out.push(Tiles {
                    epoch: e.boot_epoch,
                    end: 0,
                    reading_last: None,
                    drops: Vec::new(),
                });
            }
        }
        let Some(t) = out.last_mut() else { continue };
        match e.payload {
            Payload::Dropped { seq_last, reason } => t.drops.push((e.seq, seq_last, reason)),
            _ => t.reading_last = Some(e.seq),
        }
        t.end = e.seq_last() + 1;
    }
    Ok(out)
}

/// The causes of one epoch's declarations, and nothing beyond final counts.
fn check_epoch(
    edge: &EdgeRecord,
    sensor: &SensorId,
    stream: &StreamName,
    tiles: &Tiles,
    wall_now: UnixMillis,
    at_end: bool,
    totals: &mut EdgeTotals,
) -> Result<(), Violation> {
    let name = format!("edge e{} sensor {sensor} epoch {}", edge.idx, tiles.epoch);
    let Some(boot) = edge.boot_of(stream, tiles.epoch) else {
        if edge.booting {
            // A boot is starting: its epoch is not in the ledger yet.
            return Ok(());
        }
        return Err(fail(format!(
            "{name}: no boot of the edge had that epoch (boots: {:?})",
            edge.boots.iter().map(|b| &b.epochs).collect::<Vec<_>>()
        )));
    };
    let n_sync_failures = edge.disk.stats().n_sync_failures;
    for &(seq, seq_last, reason) in &tiles.drops {
        let n = seq_last - seq + 1;
        let what = format!("{name}: seqs {seq}..={seq_last} declared {reason:?}");
        match reason {
            DropReason::PowerLoss => {
                totals.n_power_loss += n;
                if boot.end != BootEnd::PowerCut {
                    return Err(fail(format!(
                        "{what}, but that boot's power was never cut (it ended {:?})",
                        boot.end
                    )));
                }
            }
            DropReason::SpoolFull => {
                totals.n_spool_full += n;
                let dir = edge.spool_dirs.get(stream);
                let files_max = dir.map_or(0, |d| edge.disk.files_max(d)) as u64;
                if edge.policy != FullPolicy::DropOldest {
                    return Err(fail(format!("{what}, but the spool's policy is block")));
                }
                if files_max + 1 < edge.n_segments_max {
                    return Err(fail(format!(
                        "{what}, but the spool never held more than {files_max} of its {} \
                         segments",
                        edge.n_segments_max
                    )));
                }
            }
            DropReason::Expired => {
                totals.n_expired += n;
                let age_ms = wall_now.0.saturating_sub(boot.started_wall.0);
                if u64::try_from(age_ms).unwrap_or(0) < edge.record_age_ms_max {
                    return Err(fail(format!(
                        "{what}, but the boot started only {age_ms} ms ago and readings expire \
                         after {} ms",
                        edge.record_age_ms_max
                    )));
                }
            }
            DropReason::Storage if edge.n_disk_full > 0 || n_sync_failures > 0 => {}
            DropReason::Corrupted if n_sync_failures > 0 => {
                // A failed fdatasync drops pages below what the spool had made durable before;
                // a later power cut can leave that as damage.
            }
            DropReason::Corrupted if edge.boots.iter().any(|b| b.end == BootEnd::PowerCut) => {
                // A power cut inside a write may persist its sectors out of order (the simulated
                // disk tears at sector boundaries): a bad frame then a valid one, which the
                // spool's rule cannot tell from damage, so it declares it (found by seed 173).
            }
            DropReason::Invalid
            | DropReason::Storage
            | DropReason::Corrupted
            | DropReason::ProducerExpired { .. } => {
                // The simulated node refuses nothing an honest edge sends as invalid; only the
                // simulator's own disk faults (`--edge-disk-faults`) fail or damage an edge's
                // records: any other such declaration is a lie.
                return Err(fail(format!(
                    "{what}, but nothing in this run refuses, fails or damages an edge's records \
                     (disk full {} times, {n_sync_failures} failed syncs)",
                    edge.n_disk_full
                )));
            }
        }
    }
    let counts_final = boot.end == BootEnd::Clean || (at_end && boot.end == BootEnd::Running);
    if !counts_final {
        return Ok(());
    }
    // Seqs `0..n` were accepted and their sources told so; each offer whose source never
    // learned its outcome (stopped first) may have taken one more seq.
    let n = boot.accepted.get(sensor).copied().unwrap_or(0);
    let unanswered = boot.unanswered.get(sensor).copied().unwrap_or(0);
    let end_max = n + unanswered;
    let issued = if unanswered == 0 {
        format!("0..{n}")
    } else {
        format!("0..{n} (and at most {unanswered} more whose sources were stopped unanswered)")
    };
    if let Some(last) = tiles.reading_last.filter(|last| *last >= end_max) {
        return Err(fail(format!(
            "{name}: a reading with seq {last} was delivered, but the agent accepted only seqs \
             {issued} in that boot"
        )));
    }
    for &(seq, seq_last, reason) in &tiles.drops {
        if reason != DropReason::PowerLoss && seq_last >= end_max {
            return Err(fail(format!(
                "{name}: seqs {seq}..={seq_last} declared {reason:?}, but the agent accepted only \
                 seqs {issued} in that boot"
            )));
        }
    }
    Ok(())
}

/// Every seq each boot accepted is delivered or declared.
fn check_coverage(
    edge: &EdgeRecord,
    tiled: &BTreeMap<(u32, &SensorId), Vec<Tiles>>,
) -> Result<(), Violation> {
    for (boot_idx, boot) in edge.boots.iter().enumerate() {
        for (sensor, n) in &boot.accepted {
            if *n == 0 {
                continue;
            }
            let Some(stream) = edge.sensors.get(sensor) else {
                continue;
            };
            let Some(epoch) = boot.epochs.get(stream) else {
                continue;
            };
            let end = tiled
                .get(&(edge.idx, sensor))
                .and_then(|tiles| tiles.iter().find(|t| t.epoch == *epoch))
                .map_or(0, |t| t.end);
            if end < *n {
                return Err(fail(format!(
                    "edge e{} sensor {sensor} epoch {epoch} (boot {boot_idx}, ended {:?}): the \
                     agent accepted seqs 0..{n}, but the log delivers or declares only 0..{end}: \
                     seqs {end}..{n} are silently lost",
                    edge.idx, boot.end
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge_ledger::{Boot, EdgeRecord};
    use crate::env::sim_disk;
    use crate::invariants::PartitionLog;
    use sluice_proto::env::Disk;
    use sluice_proto::{Event, Identity, Offset, Reading, Role};
    use std::path::PathBuf;
    use std::time::Duration;

    const NOW: i64 = 1_000_000;

    /// An event of the one sensor: a reading at `seq`, or a declaration of `seq..=last`.
    type Stored = (u64, u64, Option<(u64, DropReason)>);

    fn sensor() -> SensorId {
        SensorId::new("e0-d0-0/temperature").unwrap()
    }

    fn stream() -> StreamName {
        StreamName::new("sensors").unwrap()
    }

    fn ledger(policy: FullPolicy, boots: &[(u64, BootEnd, u64)], n_files: usize) -> EdgeLedger {
        let disk = sim_disk();
        let dir = PathBuf::from("/spool/sensors");
        disk.track_dir(&dir);
        disk.create_dir_all(&dir).unwrap();
        for idx in 0..n_files {
            disk.open(&dir.join(format!("{idx}")), true).unwrap();
        }
        let boots = boots
            .iter()
            .map(|&(epoch, end, accepted)| Boot {
                started_at: Duration::ZERO,
                started_wall: UnixMillis(NOW - 120_000),
                epochs: [(stream(), BootEpoch(epoch))].into(),
                end,
                accepted: [(sensor(), accepted)].into(),
                unanswered: BTreeMap::new(),
            })
            .collect();
        EdgeLedger {
            edges: vec![EdgeRecord {
                idx: 0,
                identity: Identity::new("sim", Role::Edge, "e0").unwrap(),
                sensors: [(sensor(), stream())].into(),
                policy,
                n_segments_max: 4,
                record_age_ms_max: 60_000,
                spool_dirs: [(stream(), dir)].into(),
                disk,
                boots,
                booting: false,
                progress: None,
                n_power_cuts: 0,
                n_power_cuts_mid_io: 0,
                n_clean_restarts: 0,
                n_outages: 0,
                n_sync_failures_armed: 0,
                n_disk_full: 0,
            }],
        }
    }

    fn snapshot(events: &[Stored]) -> LogSnapshot {
        let identity = Identity::new("sim", Role::Edge, "e0").unwrap();
        let events: Vec<StoredEvent> = events
            .iter()
            .enumerate()
            .map(|(idx, &(epoch, seq, drop))| StoredEvent {
                offset: Offset(idx as u64),
                event: Event {
                    producer: identity.clone(),
                    sensor: sensor(),
                    boot_epoch: BootEpoch(epoch),
                    seq,
                    device_time: UnixMillis(0),
                    received_time: UnixMillis(0),
                    payload: match drop {
                        Some((seq_last, reason)) => Payload::Dropped { seq_last, reason },
                        None => Payload::Reading(Reading::Temperature { celsius: 20.0 }),
                    },
                },
            })
            .collect();
        let log = PartitionLog {
            high_watermark: Offset(events.len() as u64),
            log_start: Offset(0),
            events,
        };
        LogSnapshot {
            partitions: [((stream(), PartitionId(0)), log)].into(),
        }
    }

    /// Runs the check on one edge with one sensor; `None` when it passes, else the details.
    fn verdict(
        policy: FullPolicy,
        boots: &[(u64, BootEnd, u64)],
        n_files: usize,
        events: &[Stored],
        at_end: bool,
    ) -> Option<String> {
        let ledger = ledger(policy, boots, n_files);
        check(&ledger, &snapshot(events), UnixMillis(NOW), at_end)
            .err()
            .map(|v| v.details)
    }

    fn assert_fails(verdict: Option<String>, expected: &str) {
        let details = verdict.unwrap_or_else(|| panic!("passed; expected {expected:?}"));
        assert!(details.contains(expected), "{details}");
    }

    const DROP: FullPolicy = FullPolicy::DropOldest;
    const CLEAN: BootEnd = BootEnd::Clean;
    const CUT: BootEnd = BootEnd::PowerCut;

    #[test]
    fn exact_tilings_pass() {
        // Readings and declarations covering 0..end exactly, epoch by epoch, pass.
        let events = [
            (1, 0, None),
            (1, 1, Some((3, DropReason::SpoolFull))),
            (1, 4, None),
        ];
        assert_eq!(verdict(DROP, &[(1, CLEAN, 5)], 3, &events, true), None);
        let events = [
            (1, 0, None),
            (1, 1, Some((9, DropReason::PowerLoss))),
            (2, 0, None),
        ];
        let boots = [(1, CUT, 4), (2, BootEnd::Running, 1)];
        assert_eq!(verdict(DROP, &boots, 0, &events, true), None);
    }

    #[test]
    fn holes_overlaps_and_repeats_fail() {
        // A skipped seq, a seq stored twice, a range overlapping a reading, an epoch not
        // starting at 0 and an epoch going back each break the tiling.
        let hole = [(1, 0, None), (1, 2, None)];
        assert_fails(verdict(DROP, &[(1, CLEAN, 3)], 0, &hole, false), "a hole");
        let twice = [(1, 0, None), (1, 0, None)];
        assert_fails(
            verdict(DROP, &[(1, CLEAN, 1)], 0, &twice, false),
            "an overlap",
        );
        let overlap = [(1, 0, Some((2, DropReason::Expired))), (1, 1, None)];
        assert_fails(
            verdict(DROP, &[(1, CLEAN, 3)], 0, &overlap, false),
            "an overlap",
        );
        let late = [(1, 1, None)];
        assert_fails(verdict(DROP, &[(1, CLEAN, 2)], 0, &late, false), "not at 0");
        let back = [(2, 0, None), (1, 0, None)];
        let boots = [(1, CLEAN, 1), (2, CLEAN, 1)];
        assert_fails(verdict(DROP, &boots, 0, &back, false), "after epoch");
        let unknown = [(7, 0, None)];
        assert_fails(
            verdict(DROP, &[(1, CLEAN, 1)], 0, &unknown, false),
            "no boot",
        );
    }

    #[test]
    fn accepted_seqs_must_be_covered_at_the_end() {
        // A tail the agent accepted but nobody delivered or declared fails at the end (before
        // it, the agent may still be sending it).
        let events = [(1, 0, None), (1, 1, None)];
        let boots = [(1, BootEnd::Running, 4)];
        assert_eq!(verdict(DROP, &boots, 0, &events, false), None);
        assert_fails(verdict(DROP, &boots, 0, &events, true), "silently lost");
        assert_fails(
            verdict(DROP, &[(1, CUT, 4)], 0, &events, true),
            "silently lost",
        );
    }

    #[test]
    fn declarations_need_a_cause() {
        // Power loss only after a cut; spool full only from a drop_oldest spool that reached
        // its budget; expiry only once the boot is older than the age bound.
        let power = [(1, 0, Some((3, DropReason::PowerLoss)))];
        assert_fails(
            verdict(DROP, &[(1, CLEAN, 4)], 0, &power, false),
            "never cut",
        );
        let full = [(1, 0, Some((3, DropReason::SpoolFull)))];
        assert_fails(
            verdict(FullPolicy::Block, &[(1, CLEAN, 4)], 4, &full, false),
            "block",
        );
        assert_fails(
            verdict(DROP, &[(1, CLEAN, 4)], 2, &full, false),
            "never held",
        );
        assert_eq!(verdict(DROP, &[(1, CLEAN, 4)], 3, &full, false), None);
        let ledger = ledger(DROP, &[(1, CLEAN, 4)], 0);
        let expired = snapshot(&[(1, 0, Some((3, DropReason::Expired)))]);
        let young = UnixMillis(NOW - 70_000);
        let details = check(&ledger, &expired, young, false).unwrap_err().details;
        assert!(details.contains("expire after"), "{details}");
        assert_eq!(check(&ledger, &expired, UnixMillis(NOW), false).err(), None);
    }

    #[test]
    fn nothing_lies_beyond_final_counts() {
        // After a clean stop, a reading or a non-power-loss declaration beyond the accepted
        // seqs was never accepted; after a power cut, seqs may outrun the count.
        let events = [(1, 0, None), (1, 1, None), (1, 2, None)];
        assert_fails(
            verdict(DROP, &[(1, CLEAN, 2)], 0, &events, false),
            "accepted only",
        );
        assert_eq!(verdict(DROP, &[(1, CUT, 2)], 0, &events, true), None);
        let expired = [(1, 0, Some((5, DropReason::Expired)))];
        assert_fails(
            verdict(DROP, &[(1, CLEAN, 2)], 0, &expired, false),
            "accepted only",
        );
    }

    #[test]
    fn an_offer_stopped_unanswered_may_take_one_seq() {
        // Found by seeds 128, 770, 948 and 7141: a clean stop ended a source after the agent
        // had spooled its offer but before the source was told. That reading may be delivered
        // (one seq per unanswered offer beyond the count), but not two.
        let events = [(1, 0, None), (1, 1, None), (1, 2, None)];
        let mut ledger = ledger(DROP, &[(1, CLEAN, 2)], 0);
        ledger.edges[0].boots[0].unanswered = [(sensor(), 1)].into();
        assert_eq!(
            check(&ledger, &snapshot(&events), UnixMillis(NOW), true).err(),
            None
        );
        let four = [(1, 0, None), (1, 1, None), (1, 2, None), (1, 3, None)];
        let details = check(&ledger, &snapshot(&four), UnixMillis(NOW), true)
            .unwrap_err()
            .details;
        assert!(details.contains("at most 1 more"), "{details}");
    }
}
