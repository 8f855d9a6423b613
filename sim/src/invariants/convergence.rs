//! Convergence: once faults stop, every record of every producer gets an answer within the
//! liveness bound, a record answered only with "duplicate older than the dedup window" (or, for
//! an edge, only through the ack of a later seq) is really in the log, and every edge agent
//! drains (its sources finished, its spools empty,
//! nothing in flight).

use super::{LogSnapshot, Violation};
use crate::edge_ledger::EdgeLedger;
use crate::history::{event_key, History, RecordKey, Status};
use std::collections::BTreeSet;
use std::time::Duration;

/// Checks that every edge has been seen drained for at least `hold` by `now`.
pub fn check_edges(ledger: &EdgeLedger, now: Duration, hold: Duration) -> Result<(), Violation> {
    for edge in &ledger.edges {
        if !edge.drained_for(now, hold) {
            let detail = edge
                .progress
                .as_ref()
                .map_or_else(|| "never looked at".to_owned(), |p| p.detail.clone());
            return Err(Violation::new(
                "convergence",
                format!(
                    "edge e{} did not drain within the liveness bound: {detail}",
                    edge.idx
                ),
            ));
        }
    }
    Ok(())
}

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
        let why = match sent.status {
            Status::StoredOffsetUnknown => "was refused as an old duplicate",
            Status::StoredImplied => "was implied stored by the ack of a later seq",
            _ => continue,
        };
        if !stored.contains(key) {
            return Err(Violation::new(
                "convergence",
                format!(
                    "record {} {} epoch {} seq {} {why} but is not in the log",
                    key.0, key.1, key.2, key.3
                ),
            ));
        }
    }
    Ok(())
}
