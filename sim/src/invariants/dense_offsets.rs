//! Dense, ordered offsets: a partition read from its start returns offsets `start..hw` with no
//! hole, and each `(producer, sensor, epoch)` appears in seq order from 0 without gaps (a gap is
//! refused by the node, never stored).

use super::{LogSnapshot, Violation};
use sluice_proto::{BootEpoch, Identity, Offset, SensorId};
use std::collections::BTreeMap;

/// Checks every partition of the snapshot.
pub fn check(snapshot: &LogSnapshot) -> Result<(), Violation> {
    for ((stream, partition), log) in &snapshot.partitions {
        let fail =
            |what: String| Violation::new("dense_offsets", format!("{stream}/{partition}: {what}"));
        if log.log_start != Offset(0) {
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
            let next = next_seq
                .entry((&e.producer, &e.sensor, e.boot_epoch))
                .or_insert(0);
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
