//! The metadata state machine: what the metadata raft group holds (membership, streams, the
//! partition map with move state, ACLs) and the typed commands that change it. Deterministic:
//! commands applied in the same order give the same state, results and errors on every replica
//! (`BTreeMap`s only, no clock, no randomness). A rejected command changes nothing.
//!
//! Commands and snapshots are encoded through `sluice_proto::codec` (canonical bincode). Both are
//! persisted in the metadata group's log, so their layouts are frozen like wire messages: enum
//! variants and fields are append-only, checked by golden bytes in the tests.
//!
//! Not here: choosing replicas (the proposer runs `replicas::plan` and puts the result in the
//! command, so a placement change in a newer version cannot make replicas disagree), and the
//! openraft glue that feeds committed entries to [`MetadataState::apply`].

use crate::replicas::{ClusterView, NodePlacement, NodeState, PartitionKey, PartitionReplicas};
use bincode::{Decode, Encode};
use sluice_proto::{codec, DecodeError, EncodeError, Identity, NodeId, PartitionId, StreamName};
use std::collections::{BTreeMap, BTreeSet};

/// The most partitions one stream may have; bounds what one command can create.
pub const STREAM_PARTITIONS_MAX: u32 = 4096;

/// A member node as the metadata group knows it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct NodeRecord {
    /// Where peers reach it (`host:port`).
    pub address: String,
    /// Its site label.
    pub site: String,
    /// Its optional rack label.
    pub rack: Option<String>,
    /// Its state.
    pub state: NodeState,
    /// The incarnation of its storage: a node whose disk was wiped comes back with a new one and
    /// must rejoin its partitions as a learner, never vote with state it lost.
    pub storage_incarnation: u64,
}

/// How long a stream keeps its data; `None` means no bound of that kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct Retention {
    /// Segments whose newest event is older than this are deleted.
    pub age_ms_max: Option<u64>,
    /// Oldest segments are deleted while a partition holds more than this.
    pub bytes_max: Option<u64>,
}

/// A stream's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct StreamRecord {
    /// Its number of partitions, `0..n_partitions`.
    pub n_partitions: u32,
    /// Replicas per partition.
    pub factor: u32,
    /// Its retention.
    pub retention: Retention,
}

/// A replica move in progress on one partition: `add` joins (as a learner, then in the joint
/// change), `remove` leaves. At least one is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct MoveState {
    /// The node gaining a replica.
    pub add: Option<NodeId>,
    /// The node losing its replica.
    pub remove: Option<NodeId>,
}

/// One partition in the partition map.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct PartitionRecord {
    /// Its voters.
    pub replicas: BTreeSet<NodeId>,
    /// Names this replica group: unique over the cluster's life, so a partition recreated under
    /// the same stream name (deleted, then created again) is a new group, and messages for the
    /// old one are refused.
    pub incarnation: u64,
    /// The move in progress, if any (one at a time, as raft allows).
    pub moving: Option<MoveState>,
}

/// A command of the metadata group. Encoded in its log: variants are append-only.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Command {
    /// Registers a node as `Joining`.
    AddNode {
        /// The new node's id.
        node: NodeId,
        /// Its peer address.
        address: String,
        /// Its site.
        site: String,
        /// Its rack.
        rack: Option<String>,
        /// Its storage incarnation.
        storage_incarnation: u64,
    },
    /// Changes a node's state.
    SetNodeState {
        /// The node.
        node: NodeId,
        /// The new state.
        state: NodeState,
    },
    /// Creates a stream with the replica set of each partition (chosen by the proposer).
    CreateStream {
        /// Its name.
        name: StreamName,
        /// Replicas per partition.
        factor: u32,
        /// Its retention.
        retention: Retention,
        /// One replica set per partition, `replicas[i]` for partition `i`.
        replicas: Vec<BTreeSet<NodeId>>,
    },
    /// Deletes a stream, its partitions and the ACL entries naming it.
    DeleteStream {
        /// Its name.
        name: StreamName,
    },
    /// Allows `identity` to write `stream`.
    AclAdd {
        /// Who.
        identity: Identity,
        /// Which stream.
        stream: StreamName,
    },
    /// Withdraws `identity`'s right to write `stream`.
    AclRemove {
        /// Who.
        identity: Identity,
        /// Which stream.
        stream: StreamName,
    },
    /// Records the start of a move on a partition.
    BeginMove {
        /// The partition.
        partition: PartitionKey,
        /// The move.
        step: MoveState,
    },
    /// Records that the partition's move completed (its group is in the final configuration).
    FinishMove {
        /// The partition.
        partition: PartitionKey,
    },
}

/// What an applied command did. Encoded (by the metadata group's state machine) as the answer
/// to a proposal: variants and fields are append-only.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Applied {
    /// The node is registered.
    NodeAdded,
    /// The node's state changed from `previous`.
    NodeStateSet {
        /// Its state before.
        previous: NodeState,
    },
    /// The stream exists; its partitions have incarnations `first_incarnation..+n_partitions`.
    StreamCreated {
        /// The incarnation of partition 0.
        first_incarnation: u64,
    },
    /// The stream and its partitions are gone.
    StreamDeleted {
        /// How many partitions it had.
        n_partitions: u32,
    },
    /// The ACL entry exists; `changed` is false if it already did.
    AclAdded {
        /// Whether the entry is new.
        changed: bool,
    },
    /// The ACL entry is gone; `changed` is false if there was none.
    AclRemoved {
        /// Whether an entry was removed.
        changed: bool,
    },
    /// The move is recorded.
    MoveBegun,
    /// The move is applied to the replica set.
    MoveFinished {
        /// The partition's voters now.
        replicas: BTreeSet<NodeId>,
    },
}

/// Why a command was rejected (it changed nothing). Encoded like [`Applied`]: variants and
/// fields are append-only.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, thiserror::Error)]
pub enum MetadataError {
    /// `AddNode` for a node id that exists.
    #[error("node {0} already exists")]
    DuplicateNode(NodeId),
    /// A command names a node that does not exist.
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    /// A state change that is not allowed (`Removed` is final; `Joining` is only the start).
    #[error("node {node} cannot go from {from:?} to {to:?}")]
    InvalidTransition {
        /// The node.
        node: NodeId,
        /// Its state.
        from: NodeState,
        /// The state asked for.
        to: NodeState,
    },
    /// `CreateStream` for a name that exists.
    #[error("stream {0} already exists")]
    DuplicateStream(StreamName),
    /// `SetNodeState` to `Removed` for a node that still holds replicas: drain it first.
    #[error("node {node} still holds {n_replicas} replicas")]
    NodeHoldsReplicas {
        /// The node.
        node: NodeId,
        /// How many partitions list it as a replica.
        n_replicas: u64,
    },
    /// A command names a stream that does not exist.
    #[error("unknown stream {0}")]
    UnknownStream(StreamName),
    /// A stream with no partitions, or more than `STREAM_PARTITIONS_MAX`.
    #[error("invalid partition count {n_partitions} (1..={max})")]
    InvalidPartitionCount {
        /// Asked for.
        n_partitions: u64,
        /// The bound.
        max: u32,
    },
    /// A replication factor of 0 or above the number of active nodes.
    #[error("invalid replication factor {factor} with {n_active} active nodes")]
    InvalidReplicationFactor {
        /// Asked for.
        factor: u32,
        /// Active nodes now.
        n_active: u64,
    },
    /// A replica set with the wrong size or a node that is not active.
    #[error("invalid replica set for partition {partition}")]
    InvalidReplicaSet {
        /// The partition index in the command.
        partition: u32,
    },
    /// A command names a partition that does not exist.
    #[error("unknown partition {}/{}", .0.stream, .0.partition)]
    UnknownPartition(PartitionKey),
    /// `BeginMove` on a partition that is already moving.
    #[error("partition {}/{} already has a move in progress", .0.stream, .0.partition)]
    MoveInProgress(PartitionKey),
    /// `FinishMove` on a partition that is not moving.
    #[error("partition {}/{} has no move in progress", .0.stream, .0.partition)]
    NoMoveInProgress(PartitionKey),
    /// A move that adds a replica already there or not active, removes one not there, does
    /// nothing, or would leave the partition below its factor.
    #[error("invalid move on partition {}/{}", .0.stream, .0.partition)]
    InvalidMove(PartitionKey),
    /// A log entry that does not decode as a [`Command`] (written by a proposer of another
    /// version, or damaged before it was proposed): refused alike on every replica.
    #[error("metadata command does not decode: {reason}")]
    Undecodable {
        /// What the codec said.
        reason: String,
    },
}

/// Why a snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The bytes are not a canonical encoding of a state.
    #[error("snapshot does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// The state decodes but breaks an invariant (named).
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(String),
}

/// The whole metadata state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct MetadataState {
    /// Member nodes.
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// Streams.
    pub streams: BTreeMap<StreamName, StreamRecord>,
    /// The partition map.
    pub partitions: BTreeMap<PartitionKey, PartitionRecord>,
    /// Which streams each identity may write.
    pub acls: BTreeMap<Identity, BTreeSet<StreamName>>,
    /// The incarnation the next created partition gets.
    pub next_incarnation: u64,
}

impl Command {
    /// The command's canonical encoding (what goes into a metadata log entry).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode(self)
    }

    /// Decodes a command from a log entry.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode(bytes)
    }
}

impl MetadataState {
    /// The number of active nodes.
    pub fn n_active(&self) -> usize {
        self.nodes
            .values()
            .filter(|n| n.state == NodeState::Active)
            .count()
    }

    /// The placement view of this state, for `replicas::plan`.
    pub fn cluster_view(&self) -> ClusterView {
        ClusterView {
            nodes: self
                .nodes
                .iter()
                .map(|(id, n)| {
                    let placement = NodePlacement {
                        site: n.site.clone(),
                        rack: n.rack.clone(),
                        state: n.state,
                    };
                    (*id, placement)
                })
                .collect(),
            partitions: self
                .partitions
                .iter()
                .map(|(key, p)| {
                    let factor = self.streams.get(&key.stream).map_or(1, |s| s.factor);
                    let replicas = PartitionReplicas {
                        replicas: p.replicas.clone(),
                        factor,
                    };
                    (key.clone(), replicas)
                })
                .collect(),
        }
    }

    /// Replica sets for a new stream's partitions, placed among the existing ones by
    /// `replicas::plan` (for the proposer of `CreateStream`).
    pub fn place_new_stream(
        &self,
        name: &StreamName,
        n_partitions: u32,
        factor: u32,
    ) -> Vec<BTreeSet<NodeId>> {
        let mut view = self.cluster_view();
        for idx in 0..n_partitions {
            let key = PartitionKey {
                stream: name.clone(),
                partition: PartitionId(idx),
            };
            let replicas = PartitionReplicas {
                replicas: BTreeSet::new(),
                factor,
            };
            view.partitions.insert(key, replicas);
        }
        let plan = crate::replicas::plan(&view);
        (0..n_partitions)
            .map(|idx| {
                let key = PartitionKey {
                    stream: name.clone(),
                    partition: PartitionId(idx),
                };
                plan.targets.get(&key).cloned().unwrap_or_default()
            })
            .collect()
    }

    /// Whether `identity` may write `stream`.
    pub fn allows(&self, identity: &Identity, stream: &StreamName) -> bool {
        self.acls.get(identity).is_some_and(|s| s.contains(stream))
    }

    /// Applies one command: the result, or a typed rejection that left the state unchanged.
    pub fn apply(&mut self, command: &Command) -> Result<Applied, MetadataError> {
        let applied = match command {
            Command::AddNode {
                node,
                address,
                site,
                rack,
                storage_incarnation,
            } => {
                if self.nodes.contains_key(node) {
                    return Err(MetadataError::DuplicateNode(*node));
                }
                let record = NodeRecord {
                    address: address.clone(),
                    site: site.clone(),
                    rack: rack.clone(),
                    state: NodeState::Joining,
                    storage_incarnation: *storage_incarnation,
                };
                self.nodes.insert(*node, record);
                Applied::NodeAdded
            }
            Command::SetNodeState { node, state } => self.set_node_state(*node, *state)?,
            Command::CreateStream {
                name,
                factor,
                retention,
                replicas,
            } => self.create_stream(name, *factor, *retention, replicas)?,
            Command::DeleteStream { name } => self.delete_stream(name)?,
            Command::AclAdd { identity, stream } => {
                if !self.streams.contains_key(stream) {
                    return Err(MetadataError::UnknownStream(stream.clone()));
                }
                let changed = self
                    .acls
                    .entry(identity.clone())
                    .or_default()
                    .insert(stream.clone());
                Applied::AclAdded { changed }
            }
            Command::AclRemove { identity, stream } => {
                let changed = match self.acls.get_mut(identity) {
                    Some(streams) => {
                        let changed = streams.remove(stream);
                        if streams.is_empty() {
                            self.acls.remove(identity);
                        }
                        changed
                    }
                    None => false,
                };
                Applied::AclRemoved { changed }
            }
            Command::BeginMove { partition, step } => self.begin_move(partition, *step)?,
            Command::FinishMove { partition } => self.finish_move(partition)?,
        };
        self.check_invariants();
        Ok(applied)
    }

    fn set_node_state(&mut self, node: NodeId, state: NodeState) -> Result<Applied, MetadataError> {
        let n_replicas = self
            .partitions
            .values()
            .filter(|p| p.replicas.contains(&node) || p.moving.is_some_and(|m| m.add == Some(node)))
            .count();
        if state == NodeState::Removed && n_replicas > 0 {
            return Err(MetadataError::NodeHoldsReplicas {
                node,
                n_replicas: n_replicas as u64,
            });
        }
        let record = self
            .nodes
            .get_mut(&node)
            .ok_or(MetadataError::UnknownNode(node))?;
        let from = record.state;
        let allowed = match (from, state) {
            (NodeState::Removed, _) | (_, NodeState::Joining) => from == state,
            _ => true,
        };
        if !allowed {
            return Err(MetadataError::InvalidTransition {
                node,
                from,
                to: state,
            });
        }
        record.state = state;
        Ok(Applied::NodeStateSet { previous: from })
    }

    fn create_stream(
        &mut self,
        name: &StreamName,
        factor: u32,
        retention: Retention,
        replicas: &[BTreeSet<NodeId>],
    ) -> Result<Applied, MetadataError> {
        if self.streams.contains_key(name) {
            return Err(MetadataError::DuplicateStream(name.clone()));
        }
        let n_partitions = u32::try_from(replicas.len())
            .ok()
            .filter(|n| (1..=STREAM_PARTITIONS_MAX).contains(n))
            .ok_or(MetadataError::InvalidPartitionCount {
                n_partitions: replicas.len() as u64,
                max: STREAM_PARTITIONS_MAX,
            })?;
        let n_active = self.n_active();
        if factor == 0 || usize::try_from(factor).map_or(true, |f| f > n_active) {
            return Err(MetadataError::InvalidReplicationFactor {
                factor,
                n_active: n_active as u64,
            });
        }
        for (idx, set) in (0u32..).zip(replicas) {
            let active = set.iter().all(|id| {
                self.nodes
                    .get(id)
                    .is_some_and(|n| n.state == NodeState::Active)
            });
            if !active || set.len() != factor as usize {
                return Err(MetadataError::InvalidReplicaSet { partition: idx });
            }
        }
        let first_incarnation = self.next_incarnation;
        for (idx, set) in (0u32..).zip(replicas) {
            let key = PartitionKey {
                stream: name.clone(),
                partition: PartitionId(idx),
            };
            let record = PartitionRecord {
                replicas: set.clone(),
                incarnation: self.next_incarnation,
                moving: None,
            };
            self.next_incarnation += 1;
            self.partitions.insert(key, record);
        }
        let record = StreamRecord {
            n_partitions,
            factor,
            retention,
        };
        self.streams.insert(name.clone(), record);
        Ok(Applied::StreamCreated { first_incarnation })
    }

    fn delete_stream(&mut self, name: &StreamName) -> Result<Applied, MetadataError> {
        let record = self
            .streams
            .remove(name)
            .ok_or_else(|| MetadataError::UnknownStream(name.clone()))?;
        self.partitions.retain(|key, _| key.stream != *name);
        for streams in self.acls.values_mut() {
            streams.remove(name);
        }
        self.acls.retain(|_, streams| !streams.is_empty());
        Ok(Applied::StreamDeleted {
            n_partitions: record.n_partitions,
        })
    }

    fn begin_move(
        &mut self,
        key: &PartitionKey,
        step: MoveState,
    ) -> Result<Applied, MetadataError> {
        let factor = self.streams.get(&key.stream).map_or(1, |s| s.factor) as usize;
        let add_active = step.add.is_none_or(|id| {
            self.nodes
                .get(&id)
                .is_some_and(|n| n.state == NodeState::Active)
        });
        let partition = self
            .partitions
            .get_mut(key)
            .ok_or_else(|| MetadataError::UnknownPartition(key.clone()))?;
        if partition.moving.is_some() {
            return Err(MetadataError::MoveInProgress(key.clone()));
        }
        let mut after = partition.replicas.clone();
        let added = step.add.is_none_or(|id| after.insert(id));
        let removed = step.remove.is_none_or(|id| after.remove(&id));
        let shrinks_below = step.add.is_none() && after.len() < factor;
        let empty = step.add.is_none() && step.remove.is_none();
        if !add_active || !added || !removed || shrinks_below || empty || step.add == step.remove {
            return Err(MetadataError::InvalidMove(key.clone()));
        }
        partition.moving = Some(step);
        Ok(Applied::MoveBegun)
    }

    fn finish_move(&mut self, key: &PartitionKey) -> Result<Applied, MetadataError> {
        let partition = self
            .partitions
            .get_mut(key)
            .ok_or_else(|| MetadataError::UnknownPartition(key.clone()))?;
        let step = partition
            .moving
            .take()
            .ok_or_else(|| MetadataError::NoMoveInProgress(key.clone()))?;
        if let Some(id) = step.add {
            partition.replicas.insert(id);
        }
        if let Some(id) = step.remove {
            partition.replicas.remove(&id);
        }
        Ok(Applied::MoveFinished {
            replicas: partition.replicas.clone(),
        })
    }

    /// The first broken invariant, if any: partitions match streams, incarnations are unique
    /// and below `next_incarnation`, replicas name known nodes, ACLs name existing streams.
    pub fn inconsistency(&self) -> Option<String> {
        let mut incarnations = BTreeSet::new();
        for (key, p) in &self.partitions {
            let Some(stream) = self.streams.get(&key.stream) else {
                return Some(format!("partition of unknown stream {}", key.stream));
            };
            if key.partition.0 >= stream.n_partitions {
                return Some(format!("partition {} beyond {}", key.partition, key.stream));
            }
            if p.incarnation >= self.next_incarnation || !incarnations.insert(p.incarnation) {
                return Some(format!("bad incarnation {}", p.incarnation));
            }
            if let Some(id) = p.replicas.iter().find(|id| !self.nodes.contains_key(id)) {
                return Some(format!("replica on unknown node {id}"));
            }
        }
        let n_partitions: u64 = self
            .streams
            .values()
            .map(|s| u64::from(s.n_partitions))
            .sum();
        if n_partitions != self.partitions.len() as u64 {
            return Some("streams and partition map disagree".to_string());
        }
        for streams in self.acls.values() {
            if let Some(s) = streams.iter().find(|s| !self.streams.contains_key(*s)) {
                return Some(format!("acl names unknown stream {s}"));
            }
        }
        None
    }

    /// Asserts the invariants (O(state), so only under `debug_assertions`).
    fn check_invariants(&self) {
        #[cfg(debug_assertions)]
        if let Some(problem) = self.inconsistency() {
            panic!("metadata invariant broken: {problem}");
        }
    }

    /// The whole state, canonically encoded (the metadata group's snapshot).
    pub fn snapshot(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode(self)
    }

    /// Restores a state from [`MetadataState::snapshot`] bytes, refusing an inconsistent one.
    pub fn restore(bytes: &[u8]) -> Result<Self, RestoreError> {
        let state: Self = codec::decode(bytes)?;
        if let Some(problem) = state.inconsistency() {
            return Err(RestoreError::Inconsistent(problem));
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sluice_proto::Role;

    fn stream(name: &str) -> StreamName {
        StreamName::new(name).unwrap()
    }

    fn key(name: &str, p: u32) -> PartitionKey {
        PartitionKey {
            stream: stream(name),
            partition: PartitionId(p),
        }
    }

    fn add_node(id: u64, site: &str) -> Command {
        Command::AddNode {
            node: NodeId(id),
            address: format!("10.0.0.{id}:7000"),
            site: site.to_string(),
            rack: None,
            storage_incarnation: 1,
        }
    }

    fn edge() -> Identity {
        Identity::new("prod", Role::Edge, "pi-1").unwrap()
    }

    /// Three active nodes on three sites.
    fn three_nodes() -> MetadataState {
        let mut state = MetadataState::default();
        for (id, site) in [(1, "a"), (2, "b"), (3, "c")] {
            state.apply(&add_node(id, site)).unwrap();
            let active = Command::SetNodeState {
                node: NodeId(id),
                state: NodeState::Active,
            };
            state.apply(&active).unwrap();
        }
        state
    }

    fn create(state: &MetadataState, name: &str, n: u32, factor: u32) -> Command {
        Command::CreateStream {
            name: stream(name),
            factor,
            retention: Retention {
                age_ms_max: Some(7 * 86_400_000),
                bytes_max: None,
            },
            replicas: state.place_new_stream(&stream(name), n, factor),
        }
    }

    /// Applies `command`, expecting a rejection equal to `error` that leaves the state unchanged.
    fn check_rejected(state: &mut MetadataState, command: Command, error: MetadataError) {
        let before = state.clone();
        assert_eq!(state.apply(&command), Err(error));
        assert_eq!(*state, before);
    }

    #[test]
    fn stream_lifecycle_and_incarnations() {
        // Checks creating a stream (placement over three sites, incarnations 0..4), an ACL on
        // it, deleting it (partitions and ACL entries go), and that re-creating it gives new
        // incarnations.
        let mut state = three_nodes();
        let c = create(&state, "temp", 4, 3);
        let r = state.apply(&c);
        assert_eq!(
            r,
            Ok(Applied::StreamCreated {
                first_incarnation: 0
            })
        );
        assert_eq!(state.partitions.len(), 4);
        assert!(state.partitions.values().all(|p| p.replicas.len() == 3));
        let acl = Command::AclAdd {
            identity: edge(),
            stream: stream("temp"),
        };
        assert_eq!(state.apply(&acl), Ok(Applied::AclAdded { changed: true }));
        assert_eq!(state.apply(&acl), Ok(Applied::AclAdded { changed: false }));
        assert!(state.allows(&edge(), &stream("temp")));
        let delete = Command::DeleteStream {
            name: stream("temp"),
        };
        assert_eq!(
            state.apply(&delete),
            Ok(Applied::StreamDeleted { n_partitions: 4 })
        );
        assert!(state.partitions.is_empty() && state.acls.is_empty());
        let r = state.apply(&create(&state, "temp", 2, 1));
        assert_eq!(
            r,
            Ok(Applied::StreamCreated {
                first_incarnation: 4
            })
        );
        assert_eq!(state.partitions[&key("temp", 1)].incarnation, 5);
    }

    #[test]
    fn rejections_are_typed_and_change_nothing() {
        // Checks each rejection's error and that the state is unchanged after it.
        let mut state = three_nodes();
        state.apply(&create(&state, "temp", 1, 3)).unwrap();
        check_rejected(
            &mut state,
            add_node(1, "a"),
            MetadataError::DuplicateNode(NodeId(1)),
        );
        let c = create(&state, "temp", 1, 1);
        check_rejected(
            &mut state,
            c,
            MetadataError::DuplicateStream(stream("temp")),
        );
        let c = Command::CreateStream {
            name: stream("big"),
            factor: 4,
            retention: Retention::default(),
            replicas: vec![[1, 2, 3].map(NodeId).into()],
        };
        let e = MetadataError::InvalidReplicationFactor {
            factor: 4,
            n_active: 3,
        };
        check_rejected(&mut state, c, e);
        let c = Command::CreateStream {
            name: stream("none"),
            factor: 1,
            retention: Retention::default(),
            replicas: vec![],
        };
        let e = MetadataError::InvalidPartitionCount {
            n_partitions: 0,
            max: STREAM_PARTITIONS_MAX,
        };
        check_rejected(&mut state, c, e);
        let c = Command::CreateStream {
            name: stream("bad"),
            factor: 2,
            retention: Retention::default(),
            replicas: vec![[1, 2].map(NodeId).into(), [1, 9].map(NodeId).into()],
        };
        check_rejected(
            &mut state,
            c,
            MetadataError::InvalidReplicaSet { partition: 1 },
        );
        let c = Command::SetNodeState {
            node: NodeId(9),
            state: NodeState::Active,
        };
        check_rejected(&mut state, c, MetadataError::UnknownNode(NodeId(9)));
        let c = Command::AclAdd {
            identity: edge(),
            stream: stream("nope"),
        };
        check_rejected(&mut state, c, MetadataError::UnknownStream(stream("nope")));
        let c = Command::DeleteStream {
            name: stream("nope"),
        };
        check_rejected(&mut state, c, MetadataError::UnknownStream(stream("nope")));
        let c = Command::SetNodeState {
            node: NodeId(3),
            state: NodeState::Removed,
        };
        let e = MetadataError::NodeHoldsReplicas {
            node: NodeId(3),
            n_replicas: 1,
        };
        check_rejected(&mut state, c, e);
        state.apply(&add_node(4, "d")).unwrap();
        let c = Command::SetNodeState {
            node: NodeId(4),
            state: NodeState::Removed,
        };
        state.apply(&c).unwrap();
        let c = Command::SetNodeState {
            node: NodeId(4),
            state: NodeState::Active,
        };
        let e = MetadataError::InvalidTransition {
            node: NodeId(4),
            from: NodeState::Removed,
            to: NodeState::Active,
        };
        check_rejected(&mut state, c, e);
    }

    #[test]
    fn moves_begin_and_finish_once() {
        // Checks a replacement move: refused to a non-active node, a node already a replica or
        // as a bare removal at the factor; recorded once (a second is refused); finishing it
        // applies both halves; finishing again is refused.
        let mut state = three_nodes();
        state.apply(&add_node(4, "a")).unwrap();
        state.apply(&create(&state, "temp", 1, 3)).unwrap();
        let k = key("temp", 0);
        let begin = |add: Option<u64>, remove: Option<u64>| Command::BeginMove {
            partition: k.clone(),
            step: MoveState {
                add: add.map(NodeId),
                remove: remove.map(NodeId),
            },
        };
        check_rejected(
            &mut state,
            begin(Some(4), Some(1)),
            MetadataError::InvalidMove(k.clone()),
        );
        state
            .apply(&Command::SetNodeState {
                node: NodeId(4),
                state: NodeState::Active,
            })
            .unwrap();
        check_rejected(
            &mut state,
            begin(Some(2), Some(1)),
            MetadataError::InvalidMove(k.clone()),
        );
        check_rejected(
            &mut state,
            begin(None, Some(1)),
            MetadataError::InvalidMove(k.clone()),
        );
        check_rejected(
            &mut state,
            begin(None, None),
            MetadataError::InvalidMove(k.clone()),
        );
        assert_eq!(
            state.apply(&begin(Some(4), Some(1))),
            Ok(Applied::MoveBegun)
        );
        check_rejected(
            &mut state,
            begin(Some(4), Some(2)),
            MetadataError::MoveInProgress(k.clone()),
        );
        let finish = Command::FinishMove {
            partition: k.clone(),
        };
        let replicas: BTreeSet<NodeId> = [2, 3, 4].map(NodeId).into();
        assert_eq!(state.apply(&finish), Ok(Applied::MoveFinished { replicas }));
        check_rejected(
            &mut state,
            finish,
            MetadataError::NoMoveInProgress(k.clone()),
        );
        assert_eq!(state.partitions[&k].incarnation, 0);
    }

    #[test]
    fn snapshot_round_trips_and_refuses_damage() {
        // Checks that a snapshot restores to an equal state, that truncated bytes and an
        // inconsistent state (a partition of an unknown stream) are refused.
        let mut state = three_nodes();
        state.apply(&create(&state, "temp", 3, 2)).unwrap();
        state
            .apply(&Command::AclAdd {
                identity: edge(),
                stream: stream("temp"),
            })
            .unwrap();
        let bytes = state.snapshot().unwrap();
        assert_eq!(MetadataState::restore(&bytes).unwrap(), state);
        assert!(matches!(
            MetadataState::restore(&bytes[..bytes.len() - 1]),
            Err(RestoreError::Decode(_))
        ));
        let mut broken = state.clone();
        broken.streams.clear();
        let bytes = broken.snapshot().unwrap();
        assert!(matches!(
            MetadataState::restore(&bytes),
            Err(RestoreError::Inconsistent(_))
        ));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn command_encoding_is_frozen() {
        // Checks that the encodings of one command of each variant stay the bytes written down
        // here (metadata log entries persist them), and that each decodes back to itself.
        let k = key("temp", 2);
        let commands = [
            add_node(300, "site-a"),
            Command::SetNodeState {
                node: NodeId(7),
                state: NodeState::Draining,
            },
            Command::CreateStream {
                name: stream("temp"),
                factor: 2,
                retention: Retention {
                    age_ms_max: Some(604_800_000),
                    bytes_max: Some(1 << 36),
                },
                replicas: vec![[1, 2].map(NodeId).into()],
            },
            Command::DeleteStream {
                name: stream("temp"),
            },
            Command::AclAdd {
                identity: edge(),
                stream: stream("temp"),
            },
            Command::AclRemove {
                identity: edge(),
                stream: stream("temp"),
            },
            Command::BeginMove {
                partition: k.clone(),
                step: MoveState {
                    add: Some(NodeId(4)),
                    remove: Some(NodeId(1)),
                },
            },
            Command::FinishMove { partition: k },
        ];
        let golden = [
            "00fb2c010f31302e302e302e3330303a3730303006736974652d610001",
            "010702",
            "020474656d700201fc00840c2401fd000000001000000001020102",
            "030474656d70",
            "040470726f64010470692d310474656d70",
            "050470726f64010470692d310474656d70",
            "060474656d700201040101",
            "070474656d7002",
        ];
        for (command, expected) in commands.iter().zip(golden) {
            let bytes = command.encode().unwrap();
            assert_eq!(hex(&bytes), expected, "{command:?}");
            assert_eq!(Command::decode(&bytes).unwrap(), *command);
        }
    }

    /// A random command over a small id space, so that many are valid and many collide.
    fn arb_command() -> impl Strategy<Value = Command> {
        let node = (1u64..=5).prop_map(NodeId);
        let name = prop_oneof![Just("a"), Just("b")].prop_map(stream);
        let state = prop_oneof![
            Just(NodeState::Joining),
            Just(NodeState::Active),
            Just(NodeState::Draining),
            Just(NodeState::Removed)
        ];
        let set = proptest::collection::btree_set(node.clone(), 1..=3);
        prop_oneof![
            (node.clone(), 0usize..3).prop_map(|(n, s)| add_node(n.0, ["x", "y", "z"][s])),
            (node.clone(), state).prop_map(|(node, state)| Command::SetNodeState { node, state }),
            (
                name.clone(),
                1u32..=3,
                proptest::collection::vec(set, 0..=3)
            )
                .prop_map(|(name, factor, replicas)| Command::CreateStream {
                    name,
                    factor,
                    retention: Retention::default(),
                    replicas
                }),
            name.clone().prop_map(|name| Command::DeleteStream { name }),
            name.clone().prop_map(|stream| Command::AclAdd {
                identity: edge(),
                stream
            }),
            name.clone().prop_map(|stream| Command::AclRemove {
                identity: edge(),
                stream
            }),
            (
                name.clone(),
                0u32..2,
                proptest::option::of(node.clone()),
                proptest::option::of(node)
            )
                .prop_map(|(s, p, add, remove)| Command::BeginMove {
                    partition: PartitionKey {
                        stream: s,
                        partition: PartitionId(p)
                    },
                    step: MoveState { add, remove },
                }),
            (name, 0u32..2).prop_map(|(s, p)| Command::FinishMove {
                partition: PartitionKey {
                    stream: s,
                    partition: PartitionId(p)
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn random_commands_are_deterministic_and_safe(
            commands in proptest::collection::vec(arb_command(), 0..60)
        ) {
            // Checks, for random command sequences: two replicas applying them give the same
            // results and states; a rejection changes nothing; every state is consistent, no
            // partition is left without replicas, no removed node holds one, the final state
            // round-trips through a snapshot; every command round-trips through its encoding.
            let mut one = MetadataState::default();
            let mut two = MetadataState::default();
            for command in &commands {
                let bytes = command.encode().unwrap();
                prop_assert_eq!(&Command::decode(&bytes).unwrap(), command);
                let before = one.clone();
                let r1 = one.apply(command);
                let r2 = two.apply(&Command::decode(&bytes).unwrap());
                prop_assert_eq!(&r1, &r2);
                if r1.is_err() {
                    prop_assert_eq!(&one, &before);
                }
                prop_assert_eq!(one.inconsistency(), None);
                prop_assert!(one.partitions.values().all(|p| !p.replicas.is_empty()));
                for p in one.partitions.values() {
                    for id in &p.replicas {
                        prop_assert!(one.nodes[id].state != NodeState::Removed);
                    }
                }
            }
            prop_assert_eq!(&one, &two);
            prop_assert_eq!(MetadataState::restore(&one.snapshot().unwrap()).unwrap(), one);
        }
    }
}
