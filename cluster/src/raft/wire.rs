//! The wire form of openraft's RPCs between the replicas of a group: our own mirror types with
//! bincode derives, encoded by `sluice_proto::codec` into the body of a
//! [`PeerRequest`](sluice_proto::env::PeerRequest). openraft's types change between releases and
//! derive serde only behind a feature; these are frozen like every message on the wire (fields
//! and variants append-only; `rpc_encoding_is_frozen` checks the bytes).
//!
//! Decoding is strict: a membership whose ids are not strictly ascending, or with no voter set,
//! more than two (joint), or an empty one, is refused, so what a peer sends can never reach
//! openraft in a shape openraft would not produce itself.

use crate::raft::types::{
    GroupData, GroupEntry, GroupLogId, GroupMembership, GroupNode, GroupVote,
};
use bincode::{Decode, Encode};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{
    CommittedLeaderId, EntryPayload, LogId, SnapshotMeta, SnapshotSegmentId, StoredMembership, Vote,
};
use std::collections::{BTreeMap, BTreeSet};

use super::types::GroupConfig;

/// A log id: leader term, leader node, index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub(crate) struct WireLogId {
    term: u64,
    leader: u64,
    index: u64,
}

impl From<GroupLogId> for WireLogId {
    fn from(l: GroupLogId) -> Self {
        WireLogId {
            term: l.leader_id.term,
            leader: l.leader_id.node_id,
            index: l.index,
        }
    }
}

impl From<WireLogId> for GroupLogId {
    fn from(w: WireLogId) -> Self {
        LogId::new(CommittedLeaderId::new(w.term, w.leader), w.index)
    }
}

fn log_id_out(l: Option<GroupLogId>) -> Option<WireLogId> {
    l.map(WireLogId::from)
}

fn log_id_in(w: Option<WireLogId>) -> Option<GroupLogId> {
    w.map(GroupLogId::from)
}

/// A vote: term, candidate or leader node, whether a quorum granted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub(crate) struct WireVote {
    term: u64,
    node: u64,
    committed: bool,
}

impl From<GroupVote> for WireVote {
    fn from(v: GroupVote) -> Self {
        WireVote {
            term: v.leader_id.term,
            node: v.leader_id.node_id,
            committed: v.committed,
        }
    }
}

impl From<WireVote> for GroupVote {
    fn from(w: WireVote) -> Self {
        if w.committed {
            Vote::new_committed(w.term, w.node)
        } else {
            Vote::new(w.term, w.node)
        }
    }
}

/// A membership: one voter set, or two while joint; every member's address by ascending id.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct WireMembership {
    configs: Vec<Vec<u64>>,
    nodes: Vec<(u64, String)>,
}

impl WireMembership {
    pub(crate) fn from_membership(m: &GroupMembership) -> Self {
        WireMembership {
            configs: m
                .get_joint_config()
                .iter()
                .map(|c| c.iter().copied().collect())
                .collect(),
            nodes: m.nodes().map(|(id, n)| (*id, n.address.clone())).collect(),
        }
    }

    pub(crate) fn into_membership(self) -> Result<GroupMembership, String> {
        let ascending = |ids: &[u64]| ids.windows(2).all(|w| w[0] < w[1]);
        let node_ids: Vec<u64> = self.nodes.iter().map(|(id, _)| *id).collect();
        if self.configs.is_empty() || self.configs.len() > 2 {
            return Err(format!("membership of {} voter sets", self.configs.len()));
        }
        if self.configs.iter().any(|c| c.is_empty() || !ascending(c)) || !ascending(&node_ids) {
            return Err("membership with an empty voter set or unsorted ids".into());
        }
        let configs: Vec<BTreeSet<u64>> = self
            .configs
            .into_iter()
            .map(|c| c.into_iter().collect())
            .collect();
        let nodes: BTreeMap<u64, GroupNode> = self
            .nodes
            .into_iter()
            .map(|(id, address)| (id, GroupNode { address }))
            .collect();
        Ok(GroupMembership::new(configs, nodes))
    }
}

/// What an entry carries. Variants are append-only.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) enum WirePayload {
    /// A leader's first entry of its term.
    Blank,
    /// State machine data.
    Normal(Vec<u8>),
    /// A membership.
    Membership(WireMembership),
}

/// One raft entry.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct WireEntry {
    log_id: WireLogId,
    payload: WirePayload,
}

impl WireEntry {
    fn from_entry(entry: &GroupEntry) -> Self {
        let payload = match &entry.payload {
            EntryPayload::Blank => WirePayload::Blank,
            EntryPayload::Normal(data) => WirePayload::Normal(data.0.clone()),
            EntryPayload::Membership(m) => {
                WirePayload::Membership(WireMembership::from_membership(m))
            }
        };
        WireEntry {
            log_id: entry.log_id.into(),
            payload,
        }
    }

    fn into_entry(self) -> Result<GroupEntry, String> {
        let payload = match self.payload {
            WirePayload::Blank => EntryPayload::Blank,
            WirePayload::Normal(bytes) => EntryPayload::Normal(GroupData(bytes)),
            WirePayload::Membership(m) => EntryPayload::Membership(m.into_membership()?),
        };
        Ok(GroupEntry {
            log_id: self.log_id.into(),
            payload,
        })
    }
}

/// `AppendEntries` (replication and heartbeats).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct WireAppend {
    vote: WireVote,
    prev_log_id: Option<WireLogId>,
    entries: Vec<WireEntry>,
    leader_commit: Option<WireLogId>,
}

/// `RequestVote`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct WireVoteRequest {
    vote: WireVote,
    last_log_id: Option<WireLogId>,
}

/// What a snapshot covers.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct WireSnapshotMeta {
    last_log_id: Option<WireLogId>,
    membership_log_id: Option<WireLogId>,
    membership: WireMembership,
    snapshot_id: String,
}

/// One chunk of a snapshot (`InstallSnapshot`).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct WireSnapshotChunk {
    vote: WireVote,
    meta: WireSnapshotMeta,
    offset: u64,
    data: Vec<u8>,
    done: bool,
}

/// A raft RPC to a replica. Variants are append-only.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) enum WireRequest {
    /// Replication or heartbeat.
    Append(WireAppend),
    /// An election.
    Vote(WireVoteRequest),
    /// A snapshot chunk.
    Snapshot(WireSnapshotChunk),
    /// A follower asks the leader for a read index (a linearizable read served by the
    /// follower once it applied that far).
    ReadIndex,
    /// A member forwards a client write (the group's entry data) to the leader it knows.
    Propose(Vec<u8>),
}

/// The answer to a forwarded proposal. Variants are append-only.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) enum WireProposeResponse {
    /// Committed and applied: the state machine's answer bytes.
    Applied(Vec<u8>),
    /// The receiver is not the leader; the leader it knows (id, address), if any. Nothing was
    /// proposed.
    NotLeader(Option<(u64, String)>),
    /// The receiver could not commit it (membership trouble, a stopped replica): the outcome
    /// is unknown.
    Unavailable(String),
}

/// The answer to a read-index request. Variants are append-only.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) enum WireReadIndexResponse {
    /// The leader confirmed its leadership with a quorum: reads are linearizable once the
    /// replica applied up to this log id.
    Index(Option<WireLogId>),
    /// The receiver is not the leader; the leader it knows (id, address), if any.
    NotLeader(Option<(u64, String)>),
    /// The leader could not confirm its leadership (no quorum answered).
    Unavailable(String),
}

impl WireReadIndexResponse {
    pub(crate) fn index(l: Option<GroupLogId>) -> Self {
        WireReadIndexResponse::Index(log_id_out(l))
    }

    pub(crate) fn read_index(&self) -> Option<Option<GroupLogId>> {
        match self {
            WireReadIndexResponse::Index(l) => Some(log_id_in(*l)),
            _ => None,
        }
    }
}

/// The answer to an `AppendEntries`. Variants are append-only.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) enum WireAppendResponse {
    /// Every entry was accepted.
    Success,
    /// Entries up to this log id were accepted.
    PartialSuccess(Option<WireLogId>),
    /// `prev_log_id` does not match.
    Conflict,
    /// The replica has seen a higher vote.
    HigherVote(WireVote),
}

/// The answer to a `RequestVote`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct WireVoteResponse {
    vote: WireVote,
    vote_granted: bool,
    last_log_id: Option<WireLogId>,
}

/// A snapshot segment: which snapshot and at which byte.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct WireSegmentId {
    id: String,
    offset: u64,
}

/// The answer to a snapshot chunk. Variants are append-only.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) enum WireSnapshotResponse {
    /// Taken (or refused for a lower vote, which `vote` shows).
    Accepted(WireVote),
    /// The chunk does not continue what the replica received so far.
    Mismatch {
        /// What the replica expected.
        expect: WireSegmentId,
        /// What came.
        got: WireSegmentId,
    },
}

impl WireRequest {
    pub(crate) fn append(rpc: &AppendEntriesRequest<GroupConfig>) -> Self {
        WireRequest::Append(WireAppend {
            vote: rpc.vote.into(),
            prev_log_id: log_id_out(rpc.prev_log_id),
            entries: rpc.entries.iter().map(WireEntry::from_entry).collect(),
            leader_commit: log_id_out(rpc.leader_commit),
        })
    }

    pub(crate) fn vote(rpc: &VoteRequest<u64>) -> Self {
        WireRequest::Vote(WireVoteRequest {
            vote: rpc.vote.into(),
            last_log_id: log_id_out(rpc.last_log_id),
        })
    }

    pub(crate) fn snapshot(rpc: &InstallSnapshotRequest<GroupConfig>) -> Self {
        let meta = &rpc.meta;
        WireRequest::Snapshot(WireSnapshotChunk {
            vote: rpc.vote.into(),
            meta: WireSnapshotMeta {
                last_log_id: log_id_out(meta.last_log_id),
                membership_log_id: log_id_out(*meta.last_membership.log_id()),
                membership: WireMembership::from_membership(meta.last_membership.membership()),
                snapshot_id: meta.snapshot_id.clone(),
            },
            offset: rpc.offset,
            data: rpc.data.clone(),
            done: rpc.done,
        })
    }
}

impl WireAppend {
    pub(crate) fn into_rpc(self) -> Result<AppendEntriesRequest<GroupConfig>, String> {
        let entries = self
            .entries
            .into_iter()
            .map(WireEntry::into_entry)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AppendEntriesRequest {
            vote: self.vote.into(),
            prev_log_id: log_id_in(self.prev_log_id),
            entries,
            leader_commit: log_id_in(self.leader_commit),
        })
    }
}

impl WireVoteRequest {
    pub(crate) fn into_rpc(self) -> VoteRequest<u64> {
        VoteRequest {
            vote: self.vote.into(),
            last_log_id: log_id_in(self.last_log_id),
        }
    }
}

impl WireSnapshotChunk {
    pub(crate) fn into_rpc(self) -> Result<InstallSnapshotRequest<GroupConfig>, String> {
        let membership = self.meta.membership.into_membership()?;
        Ok(InstallSnapshotRequest {
            vote: self.vote.into(),
            meta: SnapshotMeta {
                last_log_id: log_id_in(self.meta.last_log_id),
                last_membership: StoredMembership::new(
                    log_id_in(self.meta.membership_log_id),
                    membership,
                ),
                snapshot_id: self.meta.snapshot_id,
            },
            offset: self.offset,
            data: self.data,
            done: self.done,
        })
    }
}

impl WireAppendResponse {
    pub(crate) fn from_response(r: &AppendEntriesResponse<u64>) -> Self {
        match r {
            AppendEntriesResponse::Success => WireAppendResponse::Success,
            AppendEntriesResponse::PartialSuccess(l) => {
                WireAppendResponse::PartialSuccess(log_id_out(*l))
            }
            AppendEntriesResponse::Conflict => WireAppendResponse::Conflict,
            AppendEntriesResponse::HigherVote(v) => WireAppendResponse::HigherVote((*v).into()),
        }
    }

    pub(crate) fn into_response(self) -> AppendEntriesResponse<u64> {
        match self {
            WireAppendResponse::Success => AppendEntriesResponse::Success,
            WireAppendResponse::PartialSuccess(l) => {
                AppendEntriesResponse::PartialSuccess(log_id_in(l))
            }
            WireAppendResponse::Conflict => AppendEntriesResponse::Conflict,
            WireAppendResponse::HigherVote(v) => AppendEntriesResponse::HigherVote(v.into()),
        }
    }
}

impl WireVoteResponse {
    pub(crate) fn from_response(r: &VoteResponse<u64>) -> Self {
        WireVoteResponse {
            vote: r.vote.into(),
            vote_granted: r.vote_granted,
            last_log_id: log_id_out(r.last_log_id),
        }
    }

    pub(crate) fn into_response(self) -> VoteResponse<u64> {
        VoteResponse {
            vote: self.vote.into(),
            vote_granted: self.vote_granted,
            last_log_id: log_id_in(self.last_log_id),
        }
    }
}

impl WireSegmentId {
    pub(crate) fn from_segment(s: &SnapshotSegmentId) -> Self {
        WireSegmentId {
            id: s.id.clone(),
            offset: s.offset,
        }
    }

    pub(crate) fn into_segment(self) -> SnapshotSegmentId {
        SnapshotSegmentId {
            id: self.id,
            offset: self.offset,
        }
    }
}

impl WireSnapshotResponse {
    pub(crate) fn accepted(r: &InstallSnapshotResponse<u64>) -> Self {
        WireSnapshotResponse::Accepted(r.vote.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::codec;

    fn node(a: &str) -> GroupNode {
        GroupNode { address: a.into() }
    }

    fn joint() -> GroupMembership {
        GroupMembership::new(
            vec![BTreeSet::from([1, 2]), BTreeSet::from([2, 3])],
            BTreeMap::from([
                (1, node("a:1")),
                (2, node("b:1")),
                (3, node("c:1")),
                (4, node("d:1")),
            ]),
        )
    }

    fn log_id(term: u64, leader: u64, index: u64) -> GroupLogId {
        LogId::new(CommittedLeaderId::new(term, leader), index)
    }

    fn append() -> AppendEntriesRequest<GroupConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(2, 2, 9)),
            entries: vec![
                GroupEntry {
                    log_id: log_id(3, 1, 10),
                    payload: EntryPayload::Blank,
                },
                GroupEntry {
                    log_id: log_id(3, 1, 11),
                    payload: EntryPayload::Normal(GroupData(b"cmd".to_vec())),
                },
                GroupEntry {
                    log_id: log_id(3, 1, 12),
                    payload: EntryPayload::Membership(joint()),
                },
            ],
            leader_commit: Some(log_id(2, 2, 9)),
        }
    }

    fn round_trip(request: &WireRequest) -> WireRequest {
        let bytes = codec::encode(request).unwrap();
        codec::decode(&bytes).unwrap()
    }

    #[test]
    fn rpcs_round_trip() {
        // Checks that an append with every entry kind (a joint membership with a learner), a
        // vote and a snapshot chunk come back equal to openraft's own values.
        let rpc = append();
        let WireRequest::Append(back) = round_trip(&WireRequest::append(&rpc)) else {
            panic!("not an append");
        };
        let back = back.into_rpc().unwrap();
        assert_eq!(back.vote, rpc.vote);
        assert_eq!(back.prev_log_id, rpc.prev_log_id);
        assert_eq!(back.entries, rpc.entries);
        assert_eq!(back.leader_commit, rpc.leader_commit);

        let vote = VoteRequest {
            vote: Vote::new(4, 2),
            last_log_id: Some(log_id(3, 1, 12)),
        };
        let WireRequest::Vote(back) = round_trip(&WireRequest::vote(&vote)) else {
            panic!("not a vote");
        };
        assert_eq!(back.into_rpc(), vote);

        let chunk = InstallSnapshotRequest {
            vote: Vote::new_committed(3, 1),
            meta: SnapshotMeta {
                last_log_id: Some(log_id(3, 1, 12)),
                last_membership: StoredMembership::new(Some(log_id(3, 1, 12)), joint()),
                snapshot_id: "3-1-12".into(),
            },
            offset: 4096,
            data: vec![7; 100],
            done: true,
        };
        let WireRequest::Snapshot(back) = round_trip(&WireRequest::snapshot(&chunk)) else {
            panic!("not a snapshot");
        };
        let back = back.into_rpc().unwrap();
        assert_eq!(back.vote, chunk.vote);
        assert_eq!(back.meta, chunk.meta);
        assert_eq!(
            (back.offset, &back.data, back.done),
            (chunk.offset, &chunk.data, chunk.done)
        );

        for response in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(Some(log_id(3, 1, 11))),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(Vote::new(5, 3)),
        ] {
            let wire = WireAppendResponse::from_response(&response);
            let back: WireAppendResponse = codec::decode(&codec::encode(&wire).unwrap()).unwrap();
            assert_eq!(back.into_response(), response);
        }
    }

    #[test]
    fn malformed_memberships_are_refused() {
        // Checks that a membership with unsorted ids, no voter set, three sets or an empty
        // set is refused at decode instead of reaching openraft.
        for (configs, nodes) in [
            (
                vec![vec![2, 1]],
                vec![(1, "a".to_string()), (2, "b".to_string())],
            ),
            (vec![], vec![]),
            (vec![vec![1], vec![1], vec![1]], vec![(1, "a".to_string())]),
            (vec![vec![]], vec![]),
            (
                vec![vec![1]],
                vec![(2, "b".to_string()), (1, "a".to_string())],
            ),
        ] {
            let m = WireMembership { configs, nodes };
            assert!(m.into_membership().is_err());
        }
    }

    #[test]
    fn rpc_encoding_is_frozen() {
        // Checks the exact bytes of a vote request and of a heartbeat: the layout of released
        // peer messages must never change (fields and variants are append-only).
        let vote = WireRequest::vote(&VoteRequest {
            vote: Vote::new(4, 2),
            last_log_id: Some(log_id(3, 1, 12)),
        });
        assert_eq!(codec::encode(&vote).unwrap(), vec![1, 4, 2, 0, 1, 3, 1, 12]);
        let heartbeat = WireRequest::append(&AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        });
        assert_eq!(
            codec::encode(&heartbeat).unwrap(),
            vec![0, 3, 1, 1, 0, 0, 0]
        );
        let propose = WireRequest::Propose(vec![7, 8]);
        assert_eq!(codec::encode(&propose).unwrap(), vec![4, 2, 7, 8]);
        let answers = [
            (WireProposeResponse::Applied(vec![9]), vec![0, 1, 9]),
            (
                WireProposeResponse::NotLeader(Some((3, "n3:1".into()))),
                vec![1, 1, 3, 4, b'n', b'3', b':', b'1'],
            ),
            (
                WireProposeResponse::Unavailable("x".into()),
                vec![2, 1, b'x'],
            ),
        ];
        for (answer, bytes) in answers {
            assert_eq!(codec::encode(&answer).unwrap(), bytes, "{answer:?}");
        }
    }
}
