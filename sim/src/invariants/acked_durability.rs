//! Acked durability: every record a producer was told is `Appended { partition, offset }` is
//! found at exactly that offset of that partition, with identical content, whenever the log is
//! read back (after every restart and at the end of the run).

use super::{LogSnapshot, Violation};
use crate::history::{same_content, History, Status};
use sluice_proto::{PartitionId, StreamName};
use std::collections::BTreeSet;

/// Checks every record acknowledged before the snapshot was read (`ack_seq < ack_clock`),
/// except those of the partitions in `skip` (damaged by the simulator: see `disk_corruption`).
pub fn check(
    history: &History,
    ack_clock: u64,
    snapshot: &LogSnapshot,
    skip: &BTreeSet<(StreamName, PartitionId)>,
) -> Result<(), Violation> {
    for (key, sent) in history.iter() {
        let Status::Acked {
            partition,
            offset,
            ack_seq,
            at,
            duplicate,
        } = sent.status
        else {
            continue;
        };
        if ack_seq >= ack_clock || skip.contains(&(sent.stream.clone(), partition)) {
            continue;
        }
        let fail = |what: String| {
            Violation::new(
                "acked_durability",
                format!(
                    "record {} {} epoch {} seq {} was acked at {}/{} offset {} (t={:.3}s{}), but {what}",
                    key.0,
                    key.1,
                    key.2,
                    key.3,
                    sent.stream,
                    partition,
                    offset,
                    at.as_secs_f64(),
                    if duplicate { ", as already stored" } else { "" }
                ),
            )
        };
        let Some(log) = snapshot.partitions.get(&(sent.stream.clone(), partition)) else {
            return Err(fail("that partition does not exist".into()));
        };
        if offset < log.log_start || offset >= log.high_watermark {
            return Err(fail(format!(
                "the log holds offsets {}..{}",
                log.log_start, log.high_watermark
            )));
        }
        let idx = usize::try_from(offset.0 - log.log_start.0).unwrap_or(usize::MAX);
        let Some(stored) = log.events.get(idx) else {
            return Err(fail(format!("only {} events were read", log.events.len())));
        };
        if stored.offset != offset || !same_content(&key.0, &sent.record, &stored.event) {
            return Err(fail(format!(
                "offset {} holds {:?}",
                stored.offset, stored.event
            )));
        }
    }
    Ok(())
}
