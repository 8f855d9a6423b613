//! Invariant checkers, one per file. Each compares the checkers' own record of what producers
//! and edges were told ([`crate::history::History`]), of what consumers read
//! ([`stable_reads::Reads`]) and of what edge agents accepted and how their boots ended
//! ([`crate::edge_ledger::EdgeLedger`]) with the log as read back through fetch requests
//! ([`LogSnapshot`]); none trusts the node's own account of itself.

pub mod acked_durability;
pub mod convergence;
pub mod dense_offsets;
pub mod disk_corruption;
pub mod edge_no_silent_gaps;
pub mod integrity;
pub mod no_duplicates;
pub mod no_panics;
pub mod retry_offsets;
pub mod stable_reads;
pub mod well_formed_responses;

use crate::history::History;
use sluice_proto::{Offset, PartitionId, StoredEvent, StreamName};
use std::collections::BTreeMap;
use std::fmt;

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant (its file name).
    pub invariant: &'static str,
    /// What was seen, with the ids involved.
    pub details: String,
}

impl Violation {
    /// A violation of `invariant`.
    pub fn new(invariant: &'static str, details: impl Into<String>) -> Self {
        Self {
            invariant,
            details: details.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invariant {} violated: {}", self.invariant, self.details)
    }
}

/// One partition as read back from its first offset.
#[derive(Debug, Clone, Default)]
pub struct PartitionLog {
    /// One past the last durable offset, as of the read.
    pub high_watermark: Offset,
    /// The first offset stored.
    pub log_start: Offset,
    /// The events read, in the order fetches returned them.
    pub events: Vec<StoredEvent>,
}

/// Every partition of every stream, read back through fetches.
#[derive(Debug, Clone, Default)]
pub struct LogSnapshot {
    /// By stream and partition.
    pub partitions: BTreeMap<(StreamName, PartitionId), PartitionLog>,
}

impl LogSnapshot {
    /// Events in all partitions.
    pub fn n_events(&self) -> usize {
        self.partitions.values().map(|p| p.events.len()).sum()
    }
}

/// Runs every log invariant on a snapshot read after `ack_clock` acks had been given.
pub fn check_log(
    history: &History,
    ack_clock: u64,
    snapshot: &LogSnapshot,
    reads: &mut stable_reads::Reads,
) -> Result<(), Violation> {
    dense_offsets::check(snapshot, &reads.exempt)?;
    no_duplicates::check(snapshot)?;
    integrity::check(history, snapshot)?;
    // Partitions the simulator damaged are held to `disk_corruption` instead.
    acked_durability::check(history, ack_clock, snapshot, &reads.exempt)?;
    reads.check_snapshot(snapshot)
}
