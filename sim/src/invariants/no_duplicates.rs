//! No duplicates: no `(producer, sensor, epoch, seq)` appears twice in a partition log, however
//! often it was retried, duplicated by the link or replayed across restarts.

use super::{LogSnapshot, Violation};
use crate::history::{event_key, RecordKey};
use sluice_proto::Offset;
use std::collections::BTreeMap;

/// Checks every partition of the snapshot.
pub fn check(snapshot: &LogSnapshot) -> Result<(), Violation> {
    for ((stream, partition), log) in &snapshot.partitions {
        let mut seen: BTreeMap<RecordKey, Offset> = BTreeMap::new();
        for stored in &log.events {
            let key = event_key(&stored.event);
            if let Some(first) = seen.insert(key.clone(), stored.offset) {
                return Err(Violation::new(
                    "no_duplicates",
                    format!("{stream}/{partition}: record {} {} epoch {} seq {} is stored at offsets {first} and {}", key.0, key.1, key.2, key.3, stored.offset),
                ));
            }
        }
    }
    Ok(())
}
