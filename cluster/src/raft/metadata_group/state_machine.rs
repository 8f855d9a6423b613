//! The metadata group's openraft state machine (storage-v2 `RaftStateMachine`) over
//! [`MetadataState`]. A normal entry carries one encoded [`Command`]; applying it gives the
//! encoded `Result<Applied, MetadataError>` as the entry's [`GroupResponse`] (a command that does
//! not decode is `MetadataError::Undecodable`, on every replica alike, and changes nothing).
//! Blank and membership entries only move the last applied log id (and the membership).
//!
//! Nothing here is persisted: at start-up openraft replays the committed log from the log store
//! into an empty state (`StorageHelper::get_initial_state`), and the metadata group never purges
//! its log (no snapshot policy, no purge after a snapshot, no retention), so the log always holds
//! everything. Snapshots ([`MetadataState::snapshot`] / [`MetadataState::restore`]) are built and
//! installed as openraft's contract asks and kept in memory only; with nothing purged no leader
//! needs to send one, and purging the metadata log would first need them persisted.

use crate::metadata::{Applied, Command, MetadataError, MetadataState};
use crate::raft::types::{
    GroupConfig, GroupEntry, GroupLogId, GroupNode, GroupResponse, GroupStorageError,
};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use sluice_proto::codec;
use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};

/// What one applied command answered, as the state machine encodes it.
pub(crate) type Outcome = Result<Applied, MetadataError>;

/// The applied state of a replica.
#[derive(Debug, Default)]
pub(crate) struct Applier {
    pub(crate) state: MetadataState,
    pub(crate) last_applied: Option<GroupLogId>,
    pub(crate) membership: StoredMembership<u64, GroupNode>,
    snapshot: Option<(SnapshotMeta<u64, GroupNode>, Vec<u8>)>,
    n_snapshots: u64,
}

impl Applier {
    /// Applies one entry, returning its response (or, if the answer did not encode, the
    /// entry's log id and why).
    fn apply(&mut self, entry: GroupEntry) -> Result<GroupResponse, (GroupLogId, String)> {
        self.last_applied = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Blank => Ok(GroupResponse::default()),
            EntryPayload::Membership(m) => {
                self.membership = StoredMembership::new(Some(entry.log_id), m);
                Ok(GroupResponse::default())
            }
            EntryPayload::Normal(data) => {
                let outcome: Outcome = match Command::decode(&data.0) {
                    Ok(command) => self.state.apply(&command),
                    Err(e) => Err(MetadataError::Undecodable {
                        reason: e.to_string(),
                    }),
                };
                let bytes = codec::encode(&outcome).map_err(|e| (entry.log_id, e.to_string()))?;
                Ok(GroupResponse(bytes))
            }
        }
    }
}

/// The state machine; clones share the state (the group handle reads it, the snapshot builder
/// is a clone).
#[derive(Clone, Default)]
pub(crate) struct MetadataStateMachine {
    inner: Arc<Mutex<Applier>>,
}

impl MetadataStateMachine {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Applier> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn snapshot_of(meta: &SnapshotMeta<u64, GroupNode>, bytes: &[u8]) -> Snapshot<GroupConfig> {
    Snapshot {
        meta: meta.clone(),
        snapshot: Box::new(Cursor::new(bytes.to_vec())),
    }
}

impl RaftSnapshotBuilder<GroupConfig> for MetadataStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<GroupConfig>, GroupStorageError> {
        let mut applier = self.lock();
        let bytes = applier
            .state
            .snapshot()
            .map_err(|e| StorageIOError::write_snapshot(None, AnyError::error(e.to_string())))?;
        applier.n_snapshots += 1;
        let snapshot_id = match applier.last_applied {
            Some(l) => format!(
                "{}-{}-{}-{}",
                l.leader_id.term, l.leader_id.node_id, l.index, applier.n_snapshots
            ),
            None => format!("empty-{}", applier.n_snapshots),
        };
        let meta = SnapshotMeta {
            last_log_id: applier.last_applied,
            last_membership: applier.membership.clone(),
            snapshot_id,
        };
        applier.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(snapshot_of(&meta, &bytes))
    }
}

impl RaftStateMachine<GroupConfig> for MetadataStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<GroupLogId>, StoredMembership<u64, GroupNode>), GroupStorageError> {
        let applier = self.lock();
        Ok((applier.last_applied, applier.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<GroupResponse>, GroupStorageError>
    where
        I: IntoIterator<Item = GroupEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applier = self.lock();
        entries
            .into_iter()
            .map(|e| applier.apply(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|(log_id, reason)| {
                StorageIOError::apply(log_id, AnyError::error(reason)).into()
            })
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
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), GroupStorageError> {
        let bytes = snapshot.into_inner();
        // A snapshot that does not decode or breaks an invariant is refused before anything
        // changes: the replica keeps its state.
        let state = MetadataState::restore(&bytes).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(e.to_string()))
        })?;
        let mut applier = self.lock();
        applier.state = state;
        applier.last_applied = meta.last_log_id;
        applier.membership = meta.last_membership.clone();
        applier.snapshot = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<GroupConfig>>, GroupStorageError> {
        let applier = self.lock();
        Ok(applier
            .snapshot
            .as_ref()
            .map(|(meta, bytes)| snapshot_of(meta, bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{GroupData, GroupMembership};
    use openraft::{CommittedLeaderId, LogId};
    use sluice_proto::NodeId;
    use std::collections::{BTreeMap, BTreeSet};

    fn entry(index: u64, payload: EntryPayload<GroupConfig>) -> GroupEntry {
        GroupEntry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload,
        }
    }

    fn normal(index: u64, command: &Command) -> GroupEntry {
        entry(
            index,
            EntryPayload::Normal(GroupData(command.encode().unwrap())),
        )
    }

    fn add_node(id: u64) -> Command {
        Command::AddNode {
            node: NodeId(id),
            address: format!("n{id}:7000"),
            site: "a".into(),
            rack: None,
            storage_incarnation: 1,
        }
    }

    fn outcome(response: &GroupResponse) -> Outcome {
        codec::decode(&response.0).unwrap()
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn entries_apply_in_order_and_answer_what_they_did() {
        // Checks that blank and membership entries only move the applied log id (and the
        // membership), that a command answers its encoded result, that a rejected command and
        // bytes that are no command answer typed errors and change nothing.
        run(async {
            let mut sm = MetadataStateMachine::default();
            let membership = GroupMembership::new(vec![BTreeSet::from([1])], BTreeMap::new());
            let responses = sm
                .apply(vec![
                    entry(1, EntryPayload::Blank),
                    entry(2, EntryPayload::Membership(membership.clone())),
                    normal(3, &add_node(1)),
                    normal(4, &add_node(1)),
                    entry(5, EntryPayload::Normal(GroupData(vec![200, 1, 2]))),
                ])
                .await
                .unwrap();
            assert_eq!(responses[0], GroupResponse::default());
            assert_eq!(responses[1], GroupResponse::default());
            assert_eq!(outcome(&responses[2]), Ok(Applied::NodeAdded));
            assert_eq!(
                outcome(&responses[3]),
                Err(MetadataError::DuplicateNode(NodeId(1)))
            );
            assert!(matches!(
                outcome(&responses[4]),
                Err(MetadataError::Undecodable { .. })
            ));
            let (applied, stored) = sm.applied_state().await.unwrap();
            assert_eq!(applied.map(|l| l.index), Some(5));
            assert_eq!(stored.membership(), &membership);
            assert_eq!(stored.log_id().map(|l| l.index), Some(2));
            assert_eq!(sm.lock().state.nodes.len(), 1);
        });
    }

    #[test]
    fn a_snapshot_installs_the_same_state_and_a_bad_one_changes_nothing() {
        // Checks that a built snapshot installed into a fresh state machine gives the same
        // state, applied log id and membership, and that bytes that are no snapshot are
        // refused with the state left as it was.
        run(async {
            let mut source = MetadataStateMachine::default();
            source
                .apply(vec![normal(1, &add_node(1)), normal(2, &add_node(2))])
                .await
                .unwrap();
            let snapshot = source
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            let mut target = MetadataStateMachine::default();
            target
                .install_snapshot(&snapshot.meta, snapshot.snapshot)
                .await
                .unwrap();
            assert_eq!(target.lock().state, source.lock().state);
            assert_eq!(
                target.applied_state().await.unwrap().0.map(|l| l.index),
                Some(2)
            );
            let current = target.get_current_snapshot().await.unwrap().unwrap();
            assert_eq!(current.meta, snapshot.meta);

            let before = target.lock().state.clone();
            let bad = target
                .install_snapshot(&snapshot.meta, Box::new(Cursor::new(vec![1, 2, 3])))
                .await;
            assert!(bad.is_err());
            assert_eq!(target.lock().state, before);
        });
    }
}
