//! The openraft type configuration of a Sluice raft group (a partition's group; the metadata
//! group will use the same shape). Node ids are `u64` ([`sluice_proto::NodeId`]'s integer), a
//! node carries its peer address, and a normal entry's data is opaque bytes: the proposer
//! encodes what the state machine applies (for a partition, a batch of produce requests, so one
//! entry and one fsync carry many of them), and the log store never looks inside.

use std::fmt;
use std::io::Cursor;

/// A group member as the raft membership records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupNode {
    /// Where the node's peer listener is reached (`host:port`); empty when not known yet.
    pub address: String,
}

impl fmt::Display for GroupNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.address)
    }
}

/// The data of a normal entry: bytes the group's state machine decodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupData(pub Vec<u8>);

/// What the state machine answers for one applied normal entry: bytes the proposer decodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupResponse(pub Vec<u8>);

openraft::declare_raft_types!(
    /// The type configuration of a Sluice raft group.
    pub GroupConfig:
        D = GroupData,
        R = GroupResponse,
        NodeId = u64,
        Node = GroupNode,
        Entry = openraft::Entry<GroupConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = crate::raft::runtime::SeededRuntime,
);

/// A log id of a group (leader term, leader node, index).
pub type GroupLogId = openraft::LogId<u64>;
/// A vote of a group.
pub type GroupVote = openraft::Vote<u64>;
/// An entry of a group.
pub type GroupEntry = openraft::Entry<GroupConfig>;
/// A membership of a group.
pub type GroupMembership = openraft::Membership<u64, GroupNode>;
/// A storage error of a group.
pub type GroupStorageError = openraft::StorageError<u64>;
