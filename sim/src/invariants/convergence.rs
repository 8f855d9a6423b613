//! Convergence: once faults stop, every record of every producer gets an answer within the
//! liveness bound, and a record answered only with "duplicate older than the dedup window" is
//! really in the log.

use super::{LogSnapshot, Violation};
use crate::history::{event_key, History, RecordKey, Status};
use std::collections::BTreeSet;

/// Checks the end state: nothing unresolved, every "stored, offset unknown" record present.
pub fn check(history: &History, snapshot: &LogSnapshot) -> Result<(), Violation> {
    let unresolved: Vec<&RecordKey> = history
        .iter()
        .filter(|(_, s)| s.status == Status::Unacked)
        .map(|(k, _)| k)
        .collect();
    if let Some(first) = unresolved.first() {
        return Err(Violation::new(
            "convergence",
            format!("{} records never acknowledged within the liveness bound, first {} {} epoch {} seq {}", unresolved.len(), first.0, first.1, first.2, first.3),
        ));
    }
    let stored: BTreeSet<RecordKey> = snapshot
        .partitions
        .values()
        .flat_map(|p| p.events.iter().map(|e| event_key(&e.event)))
        .collect();
    for (key, sent) in history.iter() {
        if sent.status == Status::StoredOffsetUnknown && !stored.contains(key) {
            return Err(Violation::new(
                "convergence",
                format!("record {} {} epoch {} seq {} was refused as an old duplicate but is not in the log", key.0, key.1, key.2, key.3),
            ));
        }
    }
    Ok(())
}
