//! On-disk layout of a raft log store, on [`sluice_proto::segment`].
//!
//! Segment files are `<id:020>.raft`, of kind [`SEGMENT_KIND`] (magic `SLUICERL`). A segment's
//! id is the index of the first entry it was created for; ids increase along the log. Each
//! segment entry's payload is one raft entry, a [`StoredEntry`] encoded by `proto::codec`: the
//! log id (leader term, leader node, index) and the payload (blank, normal data bytes, or a
//! membership: the joint configs and every member's address).
//!
//! The manifest is a [`SlotFile`](sluice_proto::segment::SlotFile) of kind [`MANIFEST_KIND`]
//! whose body is [`ManifestState`] in a fixed little-endian layout: the vote, the committed and
//! the last purged log id, the first and last segment ids, how far the last segment is known
//! durable, and the truncation point of a `truncate` in progress.

use crate::raft::types::{
    GroupData, GroupEntry, GroupLogId, GroupMembership, GroupNode, GroupVote,
};
use bincode::{Decode, Encode};
use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};
use sluice_proto::segment::{SegmentKind, SlotKind, SLOT_OVERHEAD};
use std::collections::{BTreeMap, BTreeSet};

/// The kind of raft log segments.
pub(crate) const SEGMENT_KIND: SegmentKind = SegmentKind {
    magic: *b"SLUICERL",
    version: 1,
};

/// Bytes of the manifest body.
const MANIFEST_BODY_LEN: usize = 100;

/// The kind of the raft log manifest.
pub(crate) const MANIFEST_KIND: SlotKind = SlotKind {
    magic: *b"SLUICERM",
    version: 1,
    slot_len: MANIFEST_BODY_LEN + SLOT_OVERHEAD,
};

/// The name of segment `id`.
pub(crate) fn segment_name(id: u64) -> String {
    format!("{id:020}.raft")
}

/// The id a segment file name stands for, or `None` for any other file.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".raft")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A raft entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct StoredEntry {
    /// Term of the leader that proposed it.
    pub(crate) term: u64,
    /// Node id of that leader.
    pub(crate) leader: u64,
    /// Log index.
    pub(crate) index: u64,
    /// What it carries.
    pub(crate) payload: StoredPayload,
}

/// The payload of a stored entry. Variants are append-only.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) enum StoredPayload {
    /// A leader's first entry of its term.
    Blank,
    /// Data for the state machine.
    Normal(Vec<u8>),
    /// A membership: the joint configs (voter ids, ascending) and every member's address
    /// (voters and learners, by ascending id).
    Membership {
        /// One or two voter sets.
        configs: Vec<Vec<u64>>,
        /// Every member and its address.
        nodes: Vec<(u64, String)>,
    },
}

impl StoredEntry {
    /// The stored form of an entry.
    pub(crate) fn from_entry(entry: &GroupEntry) -> StoredEntry {
        let payload = match &entry.payload {
            EntryPayload::Blank => StoredPayload::Blank,
            EntryPayload::Normal(data) => StoredPayload::Normal(data.0.clone()),
            EntryPayload::Membership(m) => StoredPayload::Membership {
                configs: m
                    .get_joint_config()
                    .iter()
                    .map(|c| c.iter().copied().collect())
                    .collect(),
                nodes: m.nodes().map(|(id, n)| (*id, n.address.clone())).collect(),
            },
        };
        StoredEntry {
            term: entry.log_id.leader_id.term,
            leader: entry.log_id.leader_id.node_id,
            index: entry.log_id.index,
            payload,
        }
    }

    /// The entry's log id.
    pub(crate) fn log_id(&self) -> GroupLogId {
        LogId::new(CommittedLeaderId::new(self.term, self.leader), self.index)
    }

    /// The openraft entry; a membership whose ids are not strictly ascending is refused (it was
    /// never written by [`StoredEntry::from_entry`]).
    pub(crate) fn into_entry(self) -> Result<GroupEntry, String> {
        let log_id = self.log_id();
        let payload = match self.payload {
            StoredPayload::Blank => EntryPayload::Blank,
            StoredPayload::Normal(bytes) => EntryPayload::Normal(GroupData(bytes)),
            StoredPayload::Membership { configs, nodes } => {
                let ascending = |ids: &[u64]| ids.windows(2).all(|w| w[0] < w[1]);
                let node_ids: Vec<u64> = nodes.iter().map(|(id, _)| *id).collect();
                if !configs.iter().all(|c| ascending(c)) || !ascending(&node_ids) {
                    return Err(format!("membership entry {log_id} with unsorted ids"));
                }
                let configs: Vec<BTreeSet<u64>> = configs
                    .into_iter()
                    .map(|c| c.into_iter().collect())
                    .collect();
                let nodes: BTreeMap<u64, GroupNode> = nodes
                    .into_iter()
                    .map(|(id, address)| (id, GroupNode { address }))
                    .collect();
                EntryPayload::Membership(GroupMembership::new(configs, nodes))
            }
        };
        Ok(GroupEntry { log_id, payload })
    }
}

/// What the manifest records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ManifestState {
    /// The last vote saved.
    pub(crate) vote: Option<GroupVote>,
    /// The last committed log id saved.
    pub(crate) committed: Option<GroupLogId>,
    /// Every entry up to this one is purged.
    pub(crate) purged: Option<GroupLogId>,
    /// Id of the first segment.
    pub(crate) first: u64,
    /// Id of the last segment.
    pub(crate) last: u64,
    /// Byte position in the last segment below which its entries are known durable.
    pub(crate) durable_pos: u64,
    /// A truncation in progress: everything in the last segment from this byte on is discarded,
    /// and segments after the last are removed, at the next open.
    pub(crate) cut: Option<u64>,
}

const HAS_VOTE: u8 = 1;
const VOTE_COMMITTED: u8 = 2;
const HAS_COMMITTED: u8 = 4;
const HAS_PURGED: u8 = 8;
const HAS_CUT: u8 = 16;

fn put_log_id(out: &mut Vec<u8>, log_id: &Option<GroupLogId>) {
    let (term, node, index) = log_id.map_or((0, 0, 0), |l| {
        (l.leader_id.term, l.leader_id.node_id, l.index)
    });
    for word in [term, node, index] {
        out.extend_from_slice(&word.to_le_bytes());
    }
}

impl ManifestState {
    /// The manifest body.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut flags = 0u8;
        for (set, bit) in [
            (self.vote.is_some(), HAS_VOTE),
            (self.vote.is_some_and(|v| v.committed), VOTE_COMMITTED),
            (self.committed.is_some(), HAS_COMMITTED),
            (self.purged.is_some(), HAS_PURGED),
            (self.cut.is_some(), HAS_CUT),
        ] {
            if set {
                flags |= bit;
            }
        }
        let mut out = Vec::with_capacity(MANIFEST_BODY_LEN);
        out.push(flags);
        let (vote_term, vote_node) = self
            .vote
            .map_or((0, 0), |v| (v.leader_id.term, v.leader_id.node_id));
        out.extend_from_slice(&vote_term.to_le_bytes());
        out.extend_from_slice(&vote_node.to_le_bytes());
        put_log_id(&mut out, &self.committed);
        put_log_id(&mut out, &self.purged);
        for word in [
            self.first,
            self.last,
            self.durable_pos,
            self.cut.unwrap_or(0),
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.resize(MANIFEST_BODY_LEN, 0);
        out
    }

    /// Decodes a manifest body (of a slot that checked); unknown flags are refused.
    pub(crate) fn decode(body: &[u8]) -> Result<ManifestState, String> {
        if body.len() < MANIFEST_BODY_LEN {
            return Err(format!("manifest body of {} bytes", body.len()));
        }
        let flags = body[0];
        if flags & !(HAS_VOTE | VOTE_COMMITTED | HAS_COMMITTED | HAS_PURGED | HAS_CUT) != 0 {
            return Err(format!("manifest flags {flags:#x} unknown"));
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&body[1 + 8 * i..9 + 8 * i]);
            u64::from_le_bytes(w)
        };
        let log_id = |present: bool, i: usize| {
            present.then(|| LogId::new(CommittedLeaderId::new(word(i), word(i + 1)), word(i + 2)))
        };
        let vote = (flags & HAS_VOTE != 0).then(|| {
            if flags & VOTE_COMMITTED != 0 {
                Vote::new_committed(word(0), word(1))
            } else {
                Vote::new(word(0), word(1))
            }
        });
        Ok(ManifestState {
            vote,
            committed: log_id(flags & HAS_COMMITTED != 0, 2),
            purged: log_id(flags & HAS_PURGED != 0, 5),
            first: word(8),
            last: word(9),
            durable_pos: word(10),
            cut: (flags & HAS_CUT != 0).then(|| word(11)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips() {
        // Checks the manifest body layout with every field set, and the empty manifest.
        let state = ManifestState {
            vote: Some(Vote::new_committed(7, 3)),
            committed: Some(LogId::new(CommittedLeaderId::new(6, 2), 99)),
            purged: Some(LogId::new(CommittedLeaderId::new(5, 1), 40)),
            first: 41,
            last: 90,
            durable_pos: 4096,
            cut: Some(128),
        };
        assert_eq!(ManifestState::decode(&state.encode()), Ok(state));
        let empty = ManifestState::default();
        assert_eq!(ManifestState::decode(&empty.encode()), Ok(empty));
        assert_eq!(empty.encode().len(), MANIFEST_BODY_LEN);
    }

    #[test]
    fn entries_round_trip_with_their_kind() {
        // Checks that blank, normal and membership entries (with a learner) come back equal.
        let log_id = LogId::new(CommittedLeaderId::new(3, 1), 12);
        let node = |a: &str| GroupNode { address: a.into() };
        let membership = GroupMembership::new(
            vec![BTreeSet::from([1, 2]), BTreeSet::from([2, 3])],
            BTreeMap::from([
                (1, node("a")),
                (2, node("b")),
                (3, node("c")),
                (4, node("d")),
            ]),
        );
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Normal(GroupData(b"batch".to_vec())),
            EntryPayload::Membership(membership),
        ] {
            let entry = GroupEntry { log_id, payload };
            let stored = StoredEntry::from_entry(&entry);
            let bytes = sluice_proto::codec::encode(&stored).unwrap();
            let back: StoredEntry = sluice_proto::codec::decode(&bytes).unwrap();
            assert_eq!(back.into_entry().unwrap(), entry);
        }
    }
}
