//! A partition's raft group: one replica per node of the partition's replica set, the
//! partition's events in the raft log itself (written once: a normal entry is a [`batch`] of
//! contiguous offsets), offsets translated from raft indexes by the state machine
//! ([`state_machine`]), and reads of committed events from any replica.
//!
//! [`PartitionGroup::start`] opens (or recovers) the replica and re-applies its committed log
//! (the node's [`PartitionApplier`] sees every committed range again, so its producer table is
//! rebuilt); [`PartitionGroup::propose`] commits one batch, which is acknowledged only once a
//! quorum of the replica set fsynced it; [`PartitionGroup::read`] returns committed batches
//! from an offset; [`PartitionGroup::committed`] is the high watermark to long-poll on.
//!
//! The proposer must start from the whole committed state: [`PartitionGroup::leader_next_offset`]
//! answers the next offset only while this replica leads with everything in its log applied
//! (an entry of its own term among it). A batch proposed from a stale state is void on every
//! replica ([`ProposeError::NotNext`]).

pub mod batch;
pub mod state_machine;
#[cfg(test)]
mod tests;

use crate::raft::group::{
    GroupStartError, RaftGroup, RaftGroupConfig, RaftGroupError, ReplicaSpec,
};
use crate::raft::log_store::LogStoreError;
use batch::{decode_batch, encode_batch, BatchOutcome, VoidReason};
use openraft::EntryPayload;
use sluice_proto::env::{Env, PeerTransport};
use sluice_proto::{codec, Offset};
use state_machine::{CommittedEnd, PartitionStateMachine};
use std::sync::Arc;
use tokio::sync::watch;

pub use state_machine::PartitionApplier;

/// The salt of a partition replica's RNG stream, from the partition's incarnation (unique in
/// the cluster), so the groups of one node draw different election timeouts.
pub fn partition_rng_salt(incarnation: u64) -> u64 {
    0x5041_5254_0000_0000 ^ incarnation
}

/// Settings of a partition group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionGroupConfig {
    /// The raft group's timeouts and sizes.
    pub raft: RaftGroupConfig,
    /// Bytes of events between two points of the offset index (default 64 KiB): a read scans
    /// at most about this much of the log before the offset it wants.
    pub index_interval_bytes: u64,
    /// Raft entries read from the log per step of a read (default 64).
    pub read_entries_per_step: u64,
}

impl Default for PartitionGroupConfig {
    fn default() -> Self {
        PartitionGroupConfig {
            raft: RaftGroupConfig::default(),
            index_interval_bytes: 64 << 10,
            read_entries_per_step: 64,
        }
    }
}

/// Why a batch was not committed as proposed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// The group did not commit it (not the leader, no quorum in time, stopped).
    #[error(transparent)]
    Group(#[from] RaftGroupError),
    /// It was committed void: the partition's next offset was `expected`, so the proposer's
    /// state was stale. Nothing of it is in the partition.
    #[error("batch at offset {got} committed void: the partition's next offset was {expected}")]
    NotNext {
        /// The partition's next offset.
        expected: Offset,
        /// The batch's base.
        got: Offset,
    },
    /// The answer was not the one a batch gets (a bug, or entry bytes that are no batch).
    #[error("unexpected answer to a batch: {0}")]
    Unexpected(String),
}

/// One committed batch, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedBatch {
    /// The raft index of its entry.
    pub index: u64,
    /// Its first offset.
    pub base: Offset,
    /// How many events.
    pub count: u32,
    /// The events, canonically encoded, back to back.
    pub events: Vec<u8>,
}

impl CommittedBatch {
    /// One past its last offset.
    pub fn end(&self) -> Offset {
        Offset(self.base.0 + u64::from(self.count))
    }
}

/// Why a read failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// The log could not be read (damage names the file and byte).
    #[error(transparent)]
    Log(#[from] Arc<LogStoreError>),
    /// An entry the state machine applied as part of the partition is missing or is no longer
    /// the batch it applied: the log changed under the replica.
    #[error("partition log inconsistent at raft index {index}: {reason}")]
    Inconsistent {
        /// The raft index.
        index: u64,
        /// What was found.
        reason: String,
    },
}

/// The handle of one partition replica. Cheap to clone.
pub struct PartitionGroup<A> {
    group: RaftGroup,
    machine: PartitionStateMachine<A>,
    committed: watch::Receiver<CommittedEnd>,
    config: PartitionGroupConfig,
}

impl<A> Clone for PartitionGroup<A> {
    fn clone(&self) -> Self {
        PartitionGroup {
            group: self.group.clone(),
            machine: self.machine.clone(),
            committed: self.committed.clone(),
            config: self.config.clone(),
        }
    }
}

impl<A: PartitionApplier> PartitionGroup<A> {
    /// Opens (or recovers) the replica `spec` (its group is `PeerGroup::Partition`, its
    /// incarnation the partition's), re-applying its committed log to `applier` before it
    /// returns.
    pub async fn start(
        env: &Env,
        spec: ReplicaSpec<'_>,
        peers: Arc<dyn PeerTransport>,
        config: &PartitionGroupConfig,
        applier: A,
    ) -> Result<PartitionGroup<A>, GroupStartError> {
        let (machine, committed) = PartitionStateMachine::new(applier, config.index_interval_bytes);
        let group = RaftGroup::start(env, spec, peers, &config.raft, machine.clone()).await?;
        Ok(PartitionGroup {
            group,
            machine,
            committed,
            config: config.clone(),
        })
    }

    /// The raft group (membership, metrics, handler, shutdown).
    pub fn group(&self) -> &RaftGroup {
        &self.group
    }

    /// The committed end (high watermark and applied index); it only grows while the replica
    /// runs.
    pub fn committed(&self) -> watch::Receiver<CommittedEnd> {
        self.committed.clone()
    }

    /// The partition's next offset, while this replica leads with its whole log applied (see
    /// the module doc); `None` otherwise.
    pub fn leader_next_offset(&self) -> Option<Offset> {
        if !self.group.leads_with_all_applied() {
            return None;
        }
        Some(self.machine.lock().next_offset)
    }

    /// Runs `f` on the applier (for the node: its producer table), under the state machine's
    /// lock: nothing applies meanwhile.
    pub fn with_applier<T>(&self, f: impl FnOnce(&mut A, Offset) -> T) -> T {
        let mut applied = self.machine.lock();
        let next = applied.next_offset;
        f(&mut applied.applier, next)
    }

    /// Entries committed void on this replica since it started (a proposer with a stale state).
    pub fn n_void(&self) -> u64 {
        self.machine.lock().n_void
    }

    /// Commits `count` events from `base` (canonically encoded back to back in `events`):
    /// returns once a quorum of the replica set fsynced the entry and it applied here.
    pub async fn propose(
        &self,
        base: Offset,
        count: u32,
        events: &[u8],
    ) -> Result<(), ProposeError> {
        let (_log_id, response) = self
            .group
            .propose(encode_batch(base, count, events))
            .await?;
        let outcome: BatchOutcome =
            codec::decode(&response.0).map_err(|e| ProposeError::Unexpected(e.to_string()))?;
        match outcome {
            BatchOutcome::Appended { base: b, count: c } if b == base.0 && c == count => Ok(()),
            BatchOutcome::Void(VoidReason::NotNext { expected, got }) => {
                Err(ProposeError::NotNext {
                    expected: Offset(expected),
                    got: Offset(got),
                })
            }
            other => Err(ProposeError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Committed batches holding offsets from `from` on, in order, until about `bytes_max`
    /// bytes of events (at least one batch when there is one). Reads on the calling thread
    /// (wrap it in `run_blocking`). Empty when `from` is at or beyond the committed end.
    pub fn read(&self, from: Offset, bytes_max: usize) -> Result<Vec<CommittedBatch>, ReadError> {
        let (point, end) = {
            let applied = self.machine.lock();
            let end = *self.committed.borrow();
            (applied.point_for(from), end)
        };
        let Some(point) = point else {
            return Ok(Vec::new());
        };
        if from >= end.next_offset {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut expect = point.base;
        let mut index = point.index;
        let step = self.config.read_entries_per_step.max(1);
        while index <= end.applied_index && expect < end.next_offset {
            let until = index.saturating_add(step).min(end.applied_index + 1);
            let entries = self
                .group
                .reader()
                .entries(index, until)
                .map_err(|e| ReadError::Log(Arc::new(e)))?;
            if entries.len() as u64 != until - index {
                return Err(ReadError::Inconsistent {
                    index,
                    reason: format!(
                        "{} of the {} applied entries from here are in the log",
                        entries.len(),
                        until - index
                    ),
                });
            }
            for entry in entries {
                let EntryPayload::Normal(data) = &entry.payload else {
                    continue;
                };
                // The state machine's rule, replayed from a point it recorded: a batch that
                // does not continue the partition was void.
                let Ok(batch) = decode_batch(&data.0) else {
                    continue;
                };
                if batch.base != expect {
                    continue;
                }
                expect = batch.end();
                if batch.end() > from {
                    bytes = bytes.saturating_add(batch.events.len());
                    out.push(CommittedBatch {
                        index: entry.log_id.index,
                        base: batch.base,
                        count: batch.count,
                        events: batch.events.to_vec(),
                    });
                    if bytes >= bytes_max {
                        return Ok(out);
                    }
                }
            }
            index = until;
        }
        if expect > end.next_offset {
            return Err(ReadError::Inconsistent {
                index,
                reason: format!(
                    "the log holds offsets up to {expect}, the state machine applied up to {}",
                    end.next_offset
                ),
            });
        }
        Ok(out)
    }
}
