//! Integrity: every stored event is a record some producer sent, with identical content, in the
//! stream it was sent to and in the partition its sensor maps to. Nothing is invented, altered
//! or misplaced.

use super::{LogSnapshot, Violation};
use crate::history::{event_key, same_content, History};
use sluice_cluster::placement::partition_for;
use sluice_proto::StreamName;
use std::collections::BTreeMap;

/// Checks every event of the snapshot against the history.
pub fn check(history: &History, snapshot: &LogSnapshot) -> Result<(), Violation> {
    let mut n_partitions: BTreeMap<&StreamName, u32> = BTreeMap::new();
    for (stream, _) in snapshot.partitions.keys() {
        *n_partitions.entry(stream).or_insert(0) += 1;
    }
    for ((stream, partition), log) in &snapshot.partitions {
        for stored in &log.events {
            let key = event_key(&stored.event);
            let fail = |what: &str| {
                Violation::new(
                    "integrity",
                    format!(
                        "{stream}/{partition} offset {}: {what}: {:?}",
                        stored.offset, stored.event
                    ),
                )
            };
            let Some(sent) = history.get(&key) else {
                return Err(fail("no producer sent this record"));
            };
            if &sent.stream != stream {
                return Err(fail(&format!("record was sent to stream {}", sent.stream)));
            }
            if !same_content(&key.0, &sent.record, &stored.event) {
                return Err(fail(&format!(
                    "content differs from what was sent: {:?}",
                    sent.record
                )));
            }
            let n = n_partitions.get(stream).copied().unwrap_or(1);
            let expected = partition_for(&stored.event.sensor, n);
            if expected != *partition {
                return Err(fail(&format!("sensor maps to partition {expected}")));
            }
        }
    }
    Ok(())
}
