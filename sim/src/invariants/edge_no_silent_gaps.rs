//! Edge no-silent-gaps (`Promise 3`): for every edge, sensor and boot epoch, the events the
//! node stored — readings and `Dropped` declarations — tile the seqs `0..end` in offset order:
//! no hole, no overlap, no seq twice, and a sensor's epochs never go back. At the end of the run
//! (every edge drained), every seq the agent accepted in an epoch is delivered or declared:
//! stored in that epoch, or inside a range a `ProducerExpired` declaration closed (the node
//! forgot the sensor's producer state in that epoch, so the agent moved the sensor to a newer
//! epoch and declared the old one's unacknowledged seqs closed: each was stored or is lost).
//!
//! Epochs. One boot can hold several epochs of a stream (a spool reopened after a disk failure,
//! or a sensor moved after the node forgot it); the ledger holds every epoch each boot opened,
//! and an epoch in the log that no boot opened is a violation.
//!
//! Declarations need a cause the simulator saw itself: `PowerLoss` only in the epoch of a boot
//! whose power was cut, or that stopped cleanly after its disk failed (a spool down at the stop
//! stays unclosed, and the next open cannot tell that from a cut); `SpoolFull` only from a `drop_oldest` spool whose directory reached its
//! segment budget on the edge's disk; `Storage` only from an edge whose disk the simulator
//! filled or failed an `fdatasync` on, `Corrupted` only after such a failed sync or a power
//! cut; `Expired` only once the readings are older than the age bound; `ProducerExpired` only
//! as one seq, closing a range of an older epoch that the node refused as forgotten
//! (`ProducerExpired`, or `EpochStart` to a lone request) to this edge.
//!
//! Once a boot's counts are final (a clean stop, or the end with its sources finished) every
//! seq an epoch holds is one a source was told, or one the agent issued itself: right after a
//! `ProducerExpired` declaration, the readings it resends (at most as many as the range it
//! closed), or, beyond every seq its sources were told in the boot's last epoch, one seq per
//! offer whose source was stopped before it learned the outcome (the agent may have spooled
//! it: sources are at-least-once into the spool). Declarations of lost seqs (`PowerLoss`,
//! `Storage`, `Corrupted`) may reach past what was told: they cover a durable seq reservation,
//! which can run ahead of the seqs issued. A power cut can also cut off the answer to an
//! append whose seq survives, so after a cut only the lower bound is checked.
//!
//! The record of boots and accepted seqs is the simulator's ([`EdgeLedger`]); the node's
//! account of itself is never used.

use super::{LogSnapshot, Violation};
use crate::edge_ledger::{Boot, BootEnd, EdgeLedger, EdgeRecord, Told};
use sluice_edge::spool::FullPolicy;
use sluice_proto::{
    BootEpoch, DropReason, PartitionId, Payload, SensorId, StoredEvent, StreamName, UnixMillis,
};
use std::collections::{BTreeMap, BTreeSet};

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

/// One stored event of an epoch: `seq..=seq_last`, a reading (`None`) or a declaration.
type Item = (u64, u64, Option<DropReason>);

/// What one `(edge, sensor, epoch)` holds in the log.
#[derive(Debug)]
struct Tiles {
    epoch: BootEpoch,
    /// One past the last seq stored or declared.
    end: u64,
    /// Every event, in seq order.
    items: Vec<Item>,
}

impl Tiles {
    fn drops(&self) -> impl Iterator<Item = (u64, u64, DropReason)> + '_ {
        self.items
            .iter()
            .filter_map(|&(seq, seq_last, reason)| reason.map(|r| (seq, seq_last, r)))
    }
}

/// Ranges of older epochs closed by `ProducerExpired` declarations, by epoch, inclusive.
type Closed = BTreeMap<BootEpoch, Vec<(u64, u64)>>;

/// One `(edge, sensor)` tiled: its epochs, the ranges they close, and whether its partition's
/// log lost its beginning.
type Tiled = (Vec<Tiles>, Closed, bool);

/// One `(edge, sensor)` as stored: its stream, partition and events in offset order.
struct Group<'a> {
    stream: &'a StreamName,
    partition: PartitionId,
    events: Vec<&'a StoredEvent>,
    /// The partition's log starts after offset 0: damage took its beginning (nothing else
    /// removes records), so the sensor's first stored event may be anywhere in an epoch.
    late_start: bool,
}

fn fail(details: String) -> Violation {
    Violation::new("edge_no_silent_gaps", details)
}

/// `(edge, sensor)` pairs whose partition reported corruption (`--disk-corruption`): the node
/// serves that partition's readable prefix and refuses writes to it, so what the sensor
/// delivered past the damage is gone and what it sent since is never stored. Only that is
/// exempt: the prefix is checked like any log, and at the end every seq the agent accepted in
/// an epoch older than the sensor's last epoch in the prefix must be delivered or declared, as
/// must every seq of that last epoch below the prefix's end (a sensor's records are stored in
/// seq order, epoch after epoch, so what was lost at or after the damage is exactly what
/// follows its last record in the prefix).
pub type Exempt = BTreeSet<(u32, SensorId)>;

/// Checks the snapshot against the ledger. `wall_now` is the wall clock of the check; with
/// `at_end`, every edge has drained and accepted counts of running boots are final.
pub fn check(
    ledger: &EdgeLedger,
    snapshot: &LogSnapshot,
    wall_now: UnixMillis,
    at_end: bool,
) -> Result<EdgeTotals, Violation> {
    check_except(ledger, snapshot, wall_now, at_end, &Exempt::new())
}

/// [`check`], with the sensors of `exempt` held only to what their corrupt partition still
/// holds (see [`Exempt`]).
pub fn check_except(
    ledger: &EdgeLedger,
    snapshot: &LogSnapshot,
    wall_now: UnixMillis,
    at_end: bool,
    exempt: &Exempt,
) -> Result<EdgeTotals, Violation> {
    let mut totals = EdgeTotals::default();
    let groups = collect(ledger, snapshot, &mut totals)?;
    let mut tiled: BTreeMap<(u32, &SensorId), Tiled> = BTreeMap::new();
    for ((idx, sensor), group) in &groups {
        let Some(edge) = ledger.edges.iter().find(|e| e.idx == *idx) else {
            continue;
        };
        let tiles = tile(edge, sensor, group)?;
        let closed = closed_ranges(&tiles);
        for t in &tiles {
            check_epoch(edge, sensor, group.stream, t, wall_now, at_end, &mut totals)?;
        }
        tiled.insert((*idx, sensor), (tiles, closed, group.late_start));
    }
    if at_end {
        for edge in &ledger.edges {
            check_coverage(edge, &tiled, exempt)?;
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
                    late_start: log.log_start.0 > 0,
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
                let cut_off = group.late_start && out.is_empty();
                if e.seq != 0 && !cut_off {
                    return Err(fail(format!("{}: the epoch starts there, not at 0", at())));
                }
                out.push(Tiles {
                    epoch: e.boot_epoch,
                    end: e.seq,
                    items: Vec::new(),
                });
            }
        }
        let Some(t) = out.last_mut() else { continue };
        let reason = match e.payload {
            Payload::Dropped { reason, .. } => Some(reason),
            _ => None,
        };
        t.items.push((e.seq, e.seq_last(), reason));
        t.end = e.seq_last() + 1;
    }
    Ok(out)
}

/// The ranges the `ProducerExpired` declarations of one `(edge, sensor)` close, by epoch.
fn closed_ranges(tiles: &[Tiles]) -> Closed {
    let mut closed = Closed::new();
    for t in tiles {
        for (_, _, reason) in t.drops() {
            if let DropReason::ProducerExpired {
                epoch,
                seq,
                seq_last,
            } = reason
            {
                closed.entry(epoch).or_default().push((seq, seq_last));
            }
        }
    }
    closed
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
        return Err(fail(format!(
            "{name}: no boot of the edge opened that epoch (boots: {:?})",
            edge.boots.iter().map(|b| &b.epochs).collect::<Vec<_>>()
        )));
    };
    let n_sync_failures = edge.disk.stats().n_sync_failures;
    // Resent readings keep their age: an epoch that took readings over from older epochs may
    // expire readings accepted in an earlier boot.
    let takes_over = tiles
        .drops()
        .any(|(_, _, r)| matches!(r, DropReason::ProducerExpired { .. }));
    let started_wall = if takes_over {
        edge.boots
            .first()
            .map_or(boot.started_wall, |b| b.started_wall)
    } else {
        boot.started_wall
    };
    for (seq, seq_last, reason) in tiles.drops() {
        let n = seq_last - seq + 1;
        let what = format!("{name}: seqs {seq}..={seq_last} declared {reason:?}");
        match reason {
            DropReason::PowerLoss => {
                totals.n_power_loss += n;
                // A clean stop cannot close a spool that is down after its disk failed; the
                // next open finds it unclosed and cannot tell that from a power cut (found by
                // seeds 33, 106, 116, 119 with `--edge-disk-faults`).
                let unclosed = boot.end == BootEnd::Clean && boot.disk_failed;
                if boot.end != BootEnd::PowerCut && !unclosed {
                    return Err(fail(format!(
                        "{what}, but that boot's power was never cut (it ended {:?}) and its \
                         disk never failed while it ran",
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
                let age_ms = wall_now.0.saturating_sub(started_wall.0);
                if u64::try_from(age_ms).unwrap_or(0) < edge.record_age_ms_max {
                    return Err(fail(format!(
                        "{what}, but the boot started only {age_ms} ms ago and readings expire \
                         after {} ms",
                        edge.record_age_ms_max
                    )));
                }
            }
            DropReason::ProducerExpired {
                epoch,
                seq: first,
                seq_last: last,
            } => {
                if seq != seq_last || epoch >= tiles.epoch || last < first {
                    return Err(fail(format!(
                        "{what}: a closing declaration is one seq, of a newer epoch than the \
                         range it closes, and that range is not inverted"
                    )));
                }
                if !edge.expired_answers.contains(&(sensor.clone(), epoch)) {
                    return Err(fail(format!(
                        "{what}, but the node never refused epoch {epoch} of that sensor as \
                         forgotten (ProducerExpired, or EpochStart) to this edge"
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
            DropReason::Invalid | DropReason::Storage | DropReason::Corrupted => {
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
    check_issued(boot, sensor, stream, tiles, &name)
}

/// With final counts: every seq `tiles` holds was told to a source, resent after a
/// `ProducerExpired` declaration, lost (a declaration of a reservation), or taken by an offer
/// whose source was stopped unanswered (beyond the last told seq of the boot's last epoch).
fn check_issued(
    boot: &Boot,
    sensor: &SensorId,
    stream: &StreamName,
    tiles: &Tiles,
    name: &str,
) -> Result<(), Violation> {
    let empty = Told::default();
    let told = boot.told(sensor, tiles.epoch).unwrap_or(&empty);
    let last_epoch = boot.epochs.get(stream).and_then(|e| e.last()) == Some(&tiles.epoch);
    let mut unanswered = if last_epoch {
        boot.unanswered.get(sensor).copied().unwrap_or(0)
    } else {
        0
    };
    let issued = || {
        let unanswered = boot.unanswered.get(sensor).copied().unwrap_or(0);
        let ranges: Vec<String> = told
            .ranges()
            .iter()
            .map(|(start, end)| format!("{start}..{end}"))
            .collect();
        let mut text = format!("[{}]", ranges.join(", "));
        if unanswered > 0 {
            text.push_str(&format!(
                " (and at most {unanswered} more whose sources were stopped unanswered)"
            ));
        }
        text
    };
    // Seqs the last `ProducerExpired` declarations may still resend.
    let mut resends = 0u64;
    for &(seq, seq_last, reason) in &tiles.items {
        let n_told = told.n_within(seq, seq_last);
        let n_untold = seq_last - seq + 1 - n_told;
        match reason {
            Some(DropReason::PowerLoss | DropReason::Storage | DropReason::Corrupted) => continue,
            Some(DropReason::ProducerExpired {
                seq: first,
                seq_last: last,
                ..
            }) => {
                resends = resends.saturating_add(last - first + 1);
                continue;
            }
            _ => {}
        }
        if n_told > 0 {
            resends = 0;
        }
        let from_resends = n_untold.min(resends);
        resends -= from_resends;
        let mut rest = n_untold - from_resends;
        // Untold seqs above every told one may be offers a stop left unanswered (a range
        // declaration can span told seqs and those, found by seed 8 of the offline profile).
        let n_above = match told.last() {
            None => n_untold,
            Some(last) if seq_last > last => seq_last - seq.max(last + 1) + 1,
            Some(_) => 0,
        };
        if rest > 0 && n_above > 0 {
            let from_unanswered = rest.min(n_above).min(unanswered);
            unanswered -= from_unanswered;
            rest -= from_unanswered;
        }
        if rest > 0 {
            let what = match reason {
                None => format!("a reading with seq {seq} was delivered"),
                Some(reason) => format!("seqs {seq}..={seq_last} were declared {reason:?}"),
            };
            return Err(fail(format!(
                "{name}: {what}, but the agent's sources were told only seqs {} of that epoch, \
                 and no ProducerExpired declaration before it explains {rest} seq(s) the agent \
                 issued itself",
                issued()
            )));
        }
    }
    Ok(())
}

/// Every seq each boot accepted is delivered or declared: stored in its epoch, or inside a
/// range a `ProducerExpired` declaration closed.
fn check_coverage(
    edge: &EdgeRecord,
    tiled: &BTreeMap<(u32, &SensorId), Tiled>,
    exempt: &Exempt,
) -> Result<(), Violation> {
    for (boot_idx, boot) in edge.boots.iter().enumerate() {
        for (sensor, by_epoch) in &boot.accepted {
            let found = tiled.get(&(edge.idx, sensor));
            // A sensor of a corrupt partition: only up to its last record in the prefix.
            // (Its last epoch there is covered up to the prefix's end by the tiling itself.)
            let held_to = exempt.contains(&(edge.idx, sensor.clone())).then(|| {
                found
                    .and_then(|(tiles, _, _)| tiles.last())
                    .map(|t| t.epoch)
            });
            // And when damage took the log's beginning, the epochs before its first there.
            let held_from = found
                .filter(|(_, _, late)| *late && exempt.contains(&(edge.idx, sensor.clone())))
                .and_then(|(tiles, _, _)| tiles.first())
                .map(|t| t.epoch);
            for (epoch, told) in by_epoch {
                let end = found
                    .and_then(|(tiles, _, _)| tiles.iter().find(|t| t.epoch == *epoch))
                    .map_or(0, |t| t.end);
                let closed = found
                    .and_then(|(_, closed, _)| closed.get(epoch))
                    .map_or(&[][..], Vec::as_slice);
                let lost = match held_to {
                    _ if held_from.is_some_and(|first| *epoch < first) => None,
                    None => first_uncovered(told, end, closed),
                    Some(Some(last)) if *epoch < last => first_uncovered(told, end, closed),
                    Some(_) => None,
                };
                let Some(lost) = lost else {
                    continue;
                };
                let why = match held_to {
                    Some(_) => "; its partition reported corruption, but this precedes the damage",
                    None => "",
                };
                return Err(fail(format!(
                    "edge e{} sensor {sensor} epoch {epoch} (boot {boot_idx}, ended {:?}): the \
                     agent accepted seqs {:?}, but the log delivers or declares only 0..{end} \
                     (and closes {closed:?}): seq {lost} is silently lost{why}",
                    edge.idx,
                    boot.end,
                    told.ranges()
                )));
            }
        }
    }
    Ok(())
}

/// The first seq of `told` neither below `end` nor inside a `closed` range.
fn first_uncovered(told: &Told, end: u64, closed: &[(u64, u64)]) -> Option<u64> {
    let mut closed: Vec<(u64, u64)> = closed.to_vec();
    closed.sort_unstable();
    for &(start, stop) in told.ranges() {
        let mut seq = start.max(end);
        while seq < stop {
            match closed.iter().find(|(a, b)| *a <= seq && seq <= *b) {
                Some(&(_, b)) => seq = b.saturating_add(1),
                None => return Some(seq),
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge_ledger::{Boot, EdgeRecord, Told};
    use crate::env::sim_disk;
    use crate::invariants::PartitionLog;
    use sluice_proto::env::Disk;
    use sluice_proto::{Event, Identity, Offset, Reading, Role};
    use std::collections::BTreeSet;
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
                epochs: [(stream(), vec![BootEpoch(epoch)])].into(),
                end,
                disk_errors_at_start: 0,
                disk_failed: false,
                accepted: [(sensor(), [(BootEpoch(epoch), Told::first(accepted))].into())].into(),
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
                expired_answers: BTreeSet::new(),
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
        let mut unclosed = ledger(DROP, &[(1, CLEAN, 4)], 0);
        unclosed.edges[0].boots[0].disk_failed = true;
        assert_eq!(
            check(&unclosed, &snapshot(&power), UnixMillis(NOW), false).err(),
            None
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
            "were told only",
        );
        assert_eq!(verdict(DROP, &[(1, CUT, 2)], 0, &events, true), None);
        let expired = [(1, 0, Some((5, DropReason::Expired)))];
        assert_fails(
            verdict(DROP, &[(1, CLEAN, 2)], 0, &expired, false),
            "were told only",
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

    #[test]
    fn a_sensor_of_a_corrupt_partition_is_exempt_only_past_the_damage() {
        // Checks the disk-corruption exemption: the log of a sensor whose partition reported
        // corruption ends at the damage, so the seqs after its last record there (the rest of
        // that epoch, and later epochs) are not expected; but an older epoch it left behind
        // short is a silent loss still, and so is the same log for a sensor not exempt.
        let boots = [(1, CLEAN, 10), (2, BootEnd::Running, 5)];
        let ledger = ledger(DROP, &boots, 0);
        let exempt: Exempt = [(0, sensor())].into();
        let run = |events: &[Stored], exempt: &Exempt| {
            check_except(&ledger, &snapshot(events), UnixMillis(NOW), true, exempt)
                .err()
                .map(|v| v.details)
        };
        let cut_in_one: Vec<Stored> = (0..6).map(|seq| (1, seq, None)).collect();
        assert_fails(run(&cut_in_one, &Exempt::new()), "silently lost");
        assert_eq!(run(&cut_in_one, &exempt), None);
        let mut cut_in_two: Vec<Stored> = (0..10).map(|seq| (1, seq, None)).collect();
        cut_in_two.extend([(2, 0, None), (2, 1, None)]);
        assert_fails(run(&cut_in_two, &Exempt::new()), "silently lost");
        assert_eq!(run(&cut_in_two, &exempt), None);
        let mut short_before: Vec<Stored> = (0..6).map(|seq| (1, seq, None)).collect();
        short_before.extend([(2, 0, None), (2, 1, None)]);
        assert_fails(run(&short_before, &exempt), "epoch 1");
        let other: Exempt = [(0, SensorId::new("e0-d0-1/temperature").unwrap())].into();
        assert_fails(run(&cut_in_one, &other), "silently lost");
        // Damage that took the log's beginning (its first segment): the sensor's first stored
        // event may be anywhere in an epoch, and earlier epochs went with it; what follows
        // still tiles.
        let mut late = snapshot(&[(2, 3, None), (2, 4, None)]);
        let start = |snapshot: &mut LogSnapshot, at: u64| {
            for log in snapshot.partitions.values_mut() {
                log.log_start = Offset(at);
            }
        };
        let late_run = |snapshot: &LogSnapshot, exempt: &Exempt| {
            check_except(&ledger, snapshot, UnixMillis(NOW), true, exempt)
                .err()
                .map(|v| v.details)
        };
        assert_fails(late_run(&late, &exempt), "the epoch starts there, not at 0");
        start(&mut late, 10);
        assert_eq!(late_run(&late, &exempt), None);
        assert_fails(late_run(&late, &Exempt::new()), "silently lost");
        let mut holed = snapshot(&[(2, 3, None), (2, 5, None)]);
        start(&mut holed, 10);
        assert_fails(late_run(&holed, &exempt), "a hole");
    }

    /// One boot whose spool opened in epochs 1 then 2 (a reopen after a disk failure, or a
    /// move after the node forgot the sensor), with `told` per epoch.
    fn reopened(end: BootEnd, told: [Told; 2]) -> EdgeLedger {
        let mut ledger = ledger(DROP, &[(1, end, 0)], 0);
        let boot = &mut ledger.edges[0].boots[0];
        boot.epochs = [(stream(), vec![BootEpoch(1), BootEpoch(2)])].into();
        let [one, two] = told;
        boot.accepted = [(sensor(), [(BootEpoch(1), one), (BootEpoch(2), two)].into())].into();
        ledger.edges[0].n_disk_full = 1;
        ledger
    }

    /// A `ProducerExpired` declaration closing `seq..=seq_last` of `epoch`, for [`one`].
    fn closes(epoch: u64, seq: u64, seq_last: u64) -> DropReason {
        DropReason::ProducerExpired {
            epoch: BootEpoch(epoch),
            seq,
            seq_last,
        }
    }

    /// A declaration of the one seq `seq` of `epoch`.
    fn one(epoch: u64, seq: u64, reason: DropReason) -> Stored {
        (epoch, seq, Some((seq, reason)))
    }

    fn run(ledger: &EdgeLedger, events: &[Stored]) -> Option<String> {
        check(ledger, &snapshot(events), UnixMillis(NOW), true)
            .err()
            .map(|v| v.details)
    }

    #[test]
    fn epochs_of_a_reopen_within_one_boot_are_followed() {
        // Found by `--edge-disk-faults` (seeds 2, 4, 6, ...): a spool whose disk failed is
        // reopened in a new epoch without a reboot. Both epochs belong to the boot, each is
        // tiled and covered on its own (the old one's lost tail declared `Storage`, even past
        // what was told: it covers a reservation); an epoch no boot opened still fails, and so
        // does a seq told in the new epoch that the log lacks.
        let ledger = reopened(CLEAN, [Told::first(3), Told::first(2)]);
        let events = [
            (1, 0, None),
            (1, 1, None),
            (1, 2, Some((5, DropReason::Storage))),
            (2, 0, None),
            (2, 1, None),
        ];
        assert_eq!(run(&ledger, &events), None);
        let stranger = [(1, 0, None), (1, 1, None), (1, 2, None), (3, 0, None)];
        assert_fails(run(&ledger, &stranger), "no boot of the edge opened");
        let short = [(1, 0, None), (1, 1, None), (1, 2, None), (2, 0, None)];
        assert_fails(run(&ledger, &short), "seq 1 is silently lost");
    }

    #[test]
    fn a_producer_expired_declaration_closes_the_old_epoch_and_allows_its_resends() {
        // The node forgot epoch 1 of the sensor after seqs 0..2 were stored: the agent moved it
        // to epoch 2, where one declaration closes 2..=4 of epoch 1 and the never-sent
        // readings follow (here 2 of them) before what the sources are told next (2.. of
        // epoch 2). The told seqs 2..5 of epoch 1 are covered by the closed range. Without an
        // answer from the node refusing epoch 1 the declaration is a lie; more resends than
        // the range closed, or an untold reading without a declaration before it, fail.
        let mut ledger = reopened(
            CLEAN,
            [Told::first(5), {
                let mut t = Told::default();
                assert!(t.push(3) && t.push(4));
                t
            }],
        );
        let moved = [
            (1, 0, None),
            (1, 1, None),
            one(2, 0, closes(1, 2, 4)),
            (2, 1, None),
            (2, 2, None),
            (2, 3, None),
            (2, 4, None),
        ];
        assert_fails(run(&ledger, &moved), "never refused epoch 1");
        ledger.edges[0]
            .expired_answers
            .insert((sensor(), BootEpoch(1)));
        assert_eq!(run(&ledger, &moved), None);
        let unexplained = [(1, 0, None), (1, 1, None), (2, 0, None), (2, 1, None)];
        assert_fails(run(&ledger, &unexplained), "no ProducerExpired declaration");
        let too_many = [
            (1, 0, None),
            (1, 1, None),
            one(2, 0, closes(1, 4, 4)),
            (2, 1, None),
            (2, 2, None),
            (2, 3, None),
            (2, 4, None),
        ];
        assert_fails(run(&ledger, &too_many), "no ProducerExpired declaration");
        let open_gap = [(1, 0, None), one(2, 0, closes(1, 3, 4)), (2, 1, None)];
        assert_fails(run(&ledger, &open_gap), "seq 1 is silently lost");
    }

    #[test]
    fn told_seqs_only_rise() {
        // The ledger's record of told seqs: rising, possibly skipping, never repeating.
        let mut told = Told::default();
        assert!(told.push(0) && told.push(1) && told.push(4));
        assert!(!told.push(4) && !told.push(2));
        assert_eq!(told.ranges(), &[(0, 2), (4, 5)]);
        assert_eq!(
            (told.n(), told.last(), told.n_within(1, 4)),
            (3, Some(4), 2)
        );
    }
}
