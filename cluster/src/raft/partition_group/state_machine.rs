//! A partition group's openraft state machine (storage-v2 `RaftStateMachine`): the offset
//! translation between raft indexes and partition offsets, the committed end readers follow, and
//! the node's [`PartitionApplier`] fed every committed range in order.
//!
//! The events themselves stay in the raft log (written once): applying a batch records where it
//! is (a sparse index point at most every `index_interval_bytes` of events, so memory grows with
//! bytes held, not entries), moves the partition's next offset and hands the batch to the
//! applier (the node's producer table). A batch whose base is not the next offset is void on
//! every replica alike: no offsets, skipped by readers, answered as [`BatchOutcome::Void`] so its
//! proposer learns it proposed from a stale state. Blank and membership entries take raft
//! indexes and no offsets.
//!
//! Nothing here is persisted: at start-up openraft re-applies the committed log into an empty
//! state machine. The log is never purged yet (no snapshot policy; retention will purge whole
//! segments), so no leader sends a snapshot: building one answers an empty marker and installing
//! one is refused (a replica cannot take a partition's state without its events; catch-up by
//! segment transfer comes with retention).

use crate::raft::partition_group::batch::{decode_batch, BatchOutcome, VoidReason};
use crate::raft::types::{
    GroupConfig, GroupEntry, GroupLogId, GroupNode, GroupResponse, GroupStorageError,
};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use sluice_proto::{codec, Offset};
use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// What the node does with each committed range (on every replica, leader or not, in log
/// order, exactly once per start of the replica: a restart re-applies the log from the start).
pub trait PartitionApplier: Send + 'static {
    /// `count` events from `base`, canonically encoded back to back in `events`.
    fn apply(&mut self, base: Offset, count: u32, events: &[u8]);
}

/// An applier that keeps nothing.
impl PartitionApplier for () {
    fn apply(&mut self, _base: Offset, _count: u32, _events: &[u8]) {}
}

/// The committed end of a partition on one replica: readers may read every offset below
/// `next_offset`, whose entries are at raft indexes up to `applied_index`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommittedEnd {
    /// One past the last committed offset (the high watermark).
    pub next_offset: Offset,
    /// The last applied raft index (0 before any).
    pub applied_index: u64,
}

/// A sparse index point: the valid batch starting at `base` is the entry at `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Point {
    pub(crate) base: Offset,
    pub(crate) index: u64,
}

/// The applied state of a replica.
pub(crate) struct Applied<A> {
    pub(crate) applier: A,
    pub(crate) next_offset: Offset,
    pub(crate) points: Vec<Point>,
    bytes_since_point: u64,
    index_interval_bytes: u64,
    last_applied: Option<GroupLogId>,
    membership: StoredMembership<u64, GroupNode>,
    pub(crate) n_void: u64,
    committed: watch::Sender<CommittedEnd>,
}

impl<A: PartitionApplier> Applied<A> {
    fn apply(&mut self, entry: GroupEntry) -> Result<GroupResponse, (GroupLogId, String)> {
        let log_id = entry.log_id;
        self.last_applied = Some(log_id);
        let response = match entry.payload {
            EntryPayload::Blank => GroupResponse::default(),
            EntryPayload::Membership(m) => {
                self.membership = StoredMembership::new(Some(log_id), m);
                GroupResponse::default()
            }
            EntryPayload::Normal(data) => {
                let outcome = self.apply_batch(log_id.index, &data.0);
                GroupResponse(codec::encode(&outcome).map_err(|e| (log_id, e.to_string()))?)
            }
        };
        Ok(response)
    }

    fn apply_batch(&mut self, index: u64, bytes: &[u8]) -> BatchOutcome {
        let batch = match decode_batch(bytes) {
            Ok(batch) => batch,
            Err(e) => {
                self.n_void += 1;
                return BatchOutcome::Void(VoidReason::Undecodable(e));
            }
        };
        if batch.base != self.next_offset {
            self.n_void += 1;
            return BatchOutcome::Void(VoidReason::NotNext {
                expected: self.next_offset.0,
                got: batch.base.0,
            });
        }
        if self.points.is_empty() || self.bytes_since_point >= self.index_interval_bytes {
            self.points.push(Point {
                base: batch.base,
                index,
            });
            self.bytes_since_point = 0;
        }
        self.bytes_since_point = self
            .bytes_since_point
            .saturating_add(batch.events.len() as u64);
        self.next_offset = batch.end();
        self.applier.apply(batch.base, batch.count, batch.events);
        BatchOutcome::Appended {
            base: batch.base.0,
            count: batch.count,
        }
    }

    fn publish(&self) {
        let end = CommittedEnd {
            next_offset: self.next_offset,
            applied_index: self.last_applied.map(|l| l.index).unwrap_or(0),
        };
        self.committed.send_if_modified(|current| {
            let changed = *current != end;
            *current = end;
            changed
        });
    }

    /// The point to start reading `offset` from: the last one at or below it.
    pub(crate) fn point_for(&self, offset: Offset) -> Option<Point> {
        let after = self.points.partition_point(|p| p.base <= offset);
        after.checked_sub(1).map(|i| self.points[i])
    }
}

/// The state machine; clones share the state (the group handle reads it, the snapshot builder
/// is a clone).
pub(crate) struct PartitionStateMachine<A> {
    inner: Arc<Mutex<Applied<A>>>,
}

impl<A> Clone for PartitionStateMachine<A> {
    fn clone(&self) -> Self {
        PartitionStateMachine {
            inner: self.inner.clone(),
        }
    }
}

impl<A: PartitionApplier> PartitionStateMachine<A> {
    /// An empty state machine feeding `applier`, with an index point at most every
    /// `index_interval_bytes` of events (at least one byte).
    pub(crate) fn new(
        applier: A,
        index_interval_bytes: u64,
    ) -> (Self, watch::Receiver<CommittedEnd>) {
        let (committed, receiver) = watch::channel(CommittedEnd::default());
        let applied = Applied {
            applier,
            next_offset: Offset(0),
            points: Vec::new(),
            bytes_since_point: 0,
            index_interval_bytes: index_interval_bytes.max(1),
            last_applied: None,
            membership: StoredMembership::default(),
            n_void: 0,
            committed,
        };
        let machine = PartitionStateMachine {
            inner: Arc::new(Mutex::new(applied)),
        };
        (machine, receiver)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Applied<A>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The marker an empty partition snapshot carries (see the module doc).
const NO_SNAPSHOT: &[u8] = b"sluice partition: no snapshot";

impl<A: PartitionApplier> RaftSnapshotBuilder<GroupConfig> for PartitionStateMachine<A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<GroupConfig>, GroupStorageError> {
        let applied = self.lock();
        let snapshot_id = match applied.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "empty".to_string(),
        };
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
                snapshot_id,
            },
            snapshot: Box::new(Cursor::new(NO_SNAPSHOT.to_vec())),
        })
    }
}

impl<A: PartitionApplier> RaftStateMachine<GroupConfig> for PartitionStateMachine<A> {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<GroupLogId>, StoredMembership<u64, GroupNode>), GroupStorageError> {
        let applied = self.lock();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<GroupResponse>, GroupStorageError>
    where
        I: IntoIterator<Item = GroupEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.lock();
        let responses = entries
            .into_iter()
            .map(|e| applied.apply(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|(log_id, reason)| {
                GroupStorageError::from(StorageIOError::apply(log_id, AnyError::error(reason)))
            });
        // Publish what did apply, also when a later entry failed.
        applied.publish();
        responses
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, GroupStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, GroupNode>,
        _snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), GroupStorageError> {
        Err(StorageIOError::read_snapshot(
            Some(meta.signature()),
            AnyError::error(
                "a partition replica takes no snapshot: it catches up from the log (the log is \
                 never purged before segment transfer exists)",
            ),
        )
        .into())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<GroupConfig>>, GroupStorageError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::partition_group::batch::{encode_batch, BatchError};
    use crate::raft::types::{GroupData, GroupMembership};
    use openraft::{CommittedLeaderId, LogId};
    use std::collections::{BTreeMap, BTreeSet};

    /// Records every range it is given.
    #[derive(Default)]
    struct Recorder(Vec<(u64, u32, Vec<u8>)>);

    impl PartitionApplier for Recorder {
        fn apply(&mut self, base: Offset, count: u32, events: &[u8]) {
            self.0.push((base.0, count, events.to_vec()));
        }
    }

    fn entry(index: u64, payload: EntryPayload<GroupConfig>) -> GroupEntry {
        GroupEntry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload,
        }
    }

    fn batch(index: u64, base: u64, count: u32, events: &[u8]) -> GroupEntry {
        entry(
            index,
            EntryPayload::Normal(GroupData(encode_batch(Offset(base), count, events))),
        )
    }

    fn outcome(response: &GroupResponse) -> BatchOutcome {
        codec::decode(&response.0).unwrap()
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn batches_take_dense_offsets_and_blank_membership_and_void_entries_take_none() {
        // Checks the offset translation: blank and membership entries take raft indexes and no
        // offsets; batches continuing the partition are appended with dense offsets and handed
        // to the applier in order; a batch starting elsewhere and bytes that are no batch are
        // void (answered as such, no offsets, not applied); the committed end follows.
        run(async {
            let (mut sm, committed) = PartitionStateMachine::new(Recorder::default(), 1);
            let membership = GroupMembership::new(vec![BTreeSet::from([1])], BTreeMap::new());
            let responses = sm
                .apply(vec![
                    entry(1, EntryPayload::Membership(membership.clone())),
                    entry(2, EntryPayload::Blank),
                    batch(3, 0, 2, b"ab"),
                    batch(4, 5, 1, b"c"),
                    entry(5, EntryPayload::Normal(GroupData(vec![1, 2]))),
                    batch(6, 2, 3, b"cde"),
                ])
                .await
                .unwrap();
            assert_eq!(responses[0], GroupResponse::default());
            assert_eq!(responses[1], GroupResponse::default());
            assert_eq!(
                outcome(&responses[2]),
                BatchOutcome::Appended { base: 0, count: 2 }
            );
            assert_eq!(
                outcome(&responses[3]),
                BatchOutcome::Void(VoidReason::NotNext {
                    expected: 2,
                    got: 5
                })
            );
            assert_eq!(
                outcome(&responses[4]),
                BatchOutcome::Void(VoidReason::Undecodable(BatchError::Short { len: 2 }))
            );
            assert_eq!(
                outcome(&responses[5]),
                BatchOutcome::Appended { base: 2, count: 3 }
            );
            {
                let applied = sm.lock();
                assert_eq!(
                    applied.applier.0,
                    vec![(0, 2, b"ab".to_vec()), (2, 3, b"cde".to_vec())]
                );
                assert_eq!(applied.n_void, 2);
                assert_eq!(
                    *committed.borrow(),
                    CommittedEnd {
                        next_offset: Offset(5),
                        applied_index: 6
                    }
                );
                assert_eq!(
                    applied.point_for(Offset(4)),
                    Some(Point {
                        base: Offset(2),
                        index: 6
                    })
                );
                assert_eq!(
                    applied.point_for(Offset(1)),
                    Some(Point {
                        base: Offset(0),
                        index: 3
                    })
                );
            }
            let (last, stored) = sm.applied_state().await.unwrap();
            assert_eq!(last.map(|l| l.index), Some(6));
            assert_eq!(stored.membership(), &membership);
        });
    }

    #[test]
    fn index_points_are_sparse_by_bytes() {
        // Checks that a point is recorded for the first batch and then only once at least
        // `index_interval_bytes` of events were applied since the last point.
        run(async {
            let (mut sm, _) = PartitionStateMachine::new((), 4);
            sm.apply((0..6).map(|i| batch(i + 1, i * 2, 2, b"xy")))
                .await
                .unwrap();
            let points: Vec<u64> = sm.lock().points.iter().map(|p| p.base.0).collect();
            assert_eq!(points, vec![0, 4, 8]);
        });
    }

    #[test]
    fn a_snapshot_is_never_installed() {
        // Checks that installing a snapshot is refused (a partition replica catches up from the
        // log) and leaves the state as it was.
        run(async {
            let (mut sm, _) = PartitionStateMachine::new((), 1);
            sm.apply(vec![batch(1, 0, 1, b"a")]).await.unwrap();
            let snapshot = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            assert!(sm
                .install_snapshot(&snapshot.meta, snapshot.snapshot)
                .await
                .is_err());
            assert_eq!(sm.lock().next_offset, Offset(1));
            assert!(sm.get_current_snapshot().await.unwrap().is_none());
        });
    }
}
