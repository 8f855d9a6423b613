//! Dense, ordered offsets: a partition read from its start returns offsets `start..hw` with no
//! hole, and each `(producer, sensor, epoch)` appears in seq order from 0 without gaps (a gap is
//! refused by the node, never stored).

use super::{LogSnapshot, Violation};
use sluice_proto::{BootEpoch, Identity, Offset, PartitionId, SensorId, StreamName};
use std::collections::{BTreeMap, BTreeSet};

/// Checks every partition of the snapshot. A partition the simulator damaged (`damaged`) may
/// start later than 0 (its first segment may be gone; it then reports corruption, which
/// `disk_corruption` checks); from its start on it must still be dense, each sensor's seqs
/// following on from the first it holds.
pub fn check(
    snapshot: &LogSnapshot,
    damaged: &BTreeSet<(StreamName, PartitionId)>,
) -> Result<(), Violation> {
    for ((stream, partition), log) in &snapshot.partitions {
        let fail =
            |what: String| Violation::new("dense_offsets", format!("{stream}/{partition}: {what}"));
        let is_damaged = damaged.contains(&(stream.clone(), *partition));
        if log.log_start != Offset(0) && !is_damaged {
            return Err(fail(format!(
                "log starts at {} although nothing expires",
                log.log_start
            )));
        }
        let expected_len = log.high_watermark.0 - log.log_start.0;
        if log.events.len() as u64 != expected_len {
            return Err(fail(format!(
                "read {} events, but the high watermark {} implies {expected_len}",
                log.events.len(),
                log.high_watermark
            )));
        }
        let mut next_seq: BTreeMap<(&Identity, &SensorId, BootEpoch), u64> = BTreeMap::new();
        for (idx, stored) in log.events.iter().enumerate() {
            let expected = Offset(log.log_start.0 + idx as u64);
            if stored.offset != expected {
                return Err(fail(format!(
                    "event {idx} has offset {}, expected {expected}",
                    stored.offset
                )));
            }
            let e = &stored.event;
            // What a damaged partition lost before its start is not here: seqs then follow on
            // from the first one it holds.
            let first = if is_damaged { e.seq } else { 0 };
            let next = next_seq
                .entry((&e.producer, &e.sensor, e.boot_epoch))
                .or_insert(first);
            if e.seq != *next {
                return Err(fail(format!(
                    "offset {}: {} {} epoch {} has seq {}, expected {}",
                    stored.offset, e.producer, e.sensor, e.boot_epoch, e.seq, next
                )));
            }
            *next = e.seq_last() + 1;
        }
    }
    Ok(())
}
