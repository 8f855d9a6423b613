//! The node-to-node transport, as the cluster code sees it: request in, response out, between
//! two nodes of one cluster, for one raft group (or for the node pair itself).
//!
//! Every request carries a [`PeerEnvelope`] naming the cluster, the sender, the target node, the
//! group and the group's incarnation. The transport checks what it can know (the sender is the
//! authenticated peer, the target is this node, the cluster is ours) before the request reaches
//! the [`PeerHandler`]; the handler checks the group and its incarnation, which only the node's
//! group registry knows, and refuses a stale one with [`PeerRefusal::StaleIncarnation`].
//!
//! Requests travel on one of two [`PeerLane`]s, each with its own bounded queue per peer, so bulk
//! replication and segment transfer can never delay a vote or a heartbeat behind them.
//!
//! Implementations: QUIC + mTLS on the node's listener in production (`net::QuicPeerTransport`;
//! only `sluice://<cluster>/node/<id>` certificates are admitted on the peer protocol), and the
//! simulator's link with loss, delay, duplication, reordering and partitions
//! (`sluice_sim::peer_link`). The wire messages are `msg::PeerCall` and `msg::PeerReply`.

use std::collections::BTreeMap;
use std::time::Duration;

use bincode::{Decode, Encode};

use super::BoxFuture;
use crate::ids::{NodeId, PartitionId, StreamName};

/// The group a peer message is for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub enum PeerGroup {
    /// Messages about the node pair itself (coalesced heartbeats for every group the two nodes
    /// share, segment-transfer control); the envelope's incarnation is 0.
    Node,
    /// The metadata group on the voter nodes; the incarnation is the cluster's.
    Metadata,
    /// A partition's group; the incarnation is the partition's (a stream deleted and created
    /// again is a new group with a new incarnation).
    Partition {
        /// The stream.
        stream: StreamName,
        /// The partition.
        partition: PartitionId,
    },
}

/// Who a peer message is from and for. Encoded in front of every request body.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct PeerEnvelope {
    /// The cluster name both nodes' certificates were issued for.
    pub cluster: String,
    /// The sending node; must be the node the connection authenticated.
    pub from: NodeId,
    /// The node the message is for; a node refuses a message naming another node.
    pub to: NodeId,
    /// The group the message is for.
    pub group: PeerGroup,
    /// The group's incarnation as the sender knows it.
    pub incarnation: u64,
}

/// Which queue a request waits in and which streams carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub enum PeerLane {
    /// Votes, heartbeats, metadata: small and latency-critical, never queued behind bulk.
    Control,
    /// Log replication and segment transfer: large, throttled, may wait.
    Bulk,
}

/// One request to a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRequest {
    /// Who it is from and for.
    pub envelope: PeerEnvelope,
    /// The lane it travels on.
    pub lane: PeerLane,
    /// What the group's handler decodes (an encoded raft RPC, a batch of heartbeats, …).
    pub body: Vec<u8>,
}

/// Why the receiving node refused a request without handling it. Append-only (on the wire).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, thiserror::Error)]
pub enum PeerRefusal {
    /// The envelope names another cluster than the receiver's.
    #[error("message for cluster {got:?}, this is cluster {ours:?}")]
    WrongCluster {
        /// The cluster the message named.
        got: String,
        /// The receiver's cluster.
        ours: String,
    },
    /// The envelope names another target node than the receiver, or a sender other than the
    /// node the connection authenticated.
    #[error("message from node {from} for node {to}, received by node {receiver} from node {authenticated}")]
    WrongNode {
        /// The sender the envelope named.
        from: NodeId,
        /// The target the envelope named.
        to: NodeId,
        /// The node that received it.
        receiver: NodeId,
        /// The node the connection authenticated.
        authenticated: NodeId,
    },
    /// The receiver has no replica of the group.
    #[error("this node has no replica of the group")]
    UnknownGroup,
    /// The receiver's replica of the group has another incarnation than the envelope names.
    #[error("group incarnation {got} is stale, the replica here is incarnation {current}")]
    StaleIncarnation {
        /// The incarnation the message named.
        got: u64,
        /// The receiver's incarnation of the group.
        current: u64,
    },
    /// The receiver's queue for this peer and lane is full; retry later.
    #[error("the receiver is overloaded")]
    Overloaded,
    /// The body did not decode or the handler refused it; the text says why.
    #[error("refused by the handler: {0}")]
    Handler(String),
}

/// What kind of peer transport failure happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerErrorKind {
    /// The target node is not in the address book, or it could not be reached.
    Unreachable,
    /// The handshake failed: wrong CA, not a node certificate, another cluster, another node id
    /// than the address book says. Retrying will not help until someone fixes the setup.
    Refused,
    /// This node's queue for the target and lane is full (the bound is configuration).
    Overloaded,
    /// No response within the deadline; the request may or may not have been handled.
    Timeout,
    /// The connection ended before the response came.
    Closed,
    /// The target refused the request.
    Remote(PeerRefusal),
    /// The peer sent something the protocol does not allow, or a frame did not decode.
    Protocol,
    /// The request's body exceeds its lane's bound (configuration); split it or send less.
    TooLarge,
}

/// A peer transport failure, with a message naming the peer and what failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PeerError {
    /// What kind of failure.
    pub kind: PeerErrorKind,
    /// A description a user can act on.
    pub message: String,
}

impl PeerError {
    /// An error of `kind` with `message`.
    pub fn new(kind: PeerErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The sending side of the node-to-node transport. One connection per node pair carries every
/// group; the implementation opens it on first use and again after it fails.
pub trait PeerTransport: Send + Sync + 'static {
    /// This node's id.
    fn local(&self) -> NodeId;
    /// Replaces the address book (`host:port` of each peer's listener), as membership changes.
    /// Connections to nodes no longer listed are closed.
    fn set_peers(&self, peers: BTreeMap<NodeId, String>);
    /// Sends `request` to `request.envelope.to` on its lane and waits for the response body,
    /// at most `timeout` (queueing included). A full queue fails at once with
    /// [`PeerErrorKind::Overloaded`] rather than waiting.
    fn call(
        &self,
        request: PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Vec<u8>, PeerError>>;
}

/// The receiving side: what a node runs for each peer request that passed the transport's checks
/// (cluster, target, authenticated sender). It checks the group and its incarnation.
pub trait PeerHandler: Send + Sync + 'static {
    /// Handles one request and returns the response body.
    fn handle(&self, request: PeerRequest) -> BoxFuture<'_, Result<Vec<u8>, PeerRefusal>>;
}

/// The transport's own checks of an envelope received on a connection authenticated as
/// `authenticated`, at node `receiver` of `cluster`: the one implementation every transport uses.
pub fn check_envelope(
    envelope: &PeerEnvelope,
    cluster: &str,
    receiver: NodeId,
    authenticated: NodeId,
) -> Result<(), PeerRefusal> {
    if envelope.cluster != cluster {
        return Err(PeerRefusal::WrongCluster {
            got: envelope.cluster.clone(),
            ours: cluster.to_owned(),
        });
    }
    if envelope.to != receiver || envelope.from != authenticated {
        return Err(PeerRefusal::WrongNode {
            from: envelope.from,
            to: envelope.to,
            receiver,
            authenticated,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> PeerEnvelope {
        PeerEnvelope {
            cluster: "prod".into(),
            from: NodeId(1),
            to: NodeId(2),
            group: PeerGroup::Metadata,
            incarnation: 1,
        }
    }

    // Checks that the transport's envelope check refuses another cluster, another target and a
    // sender other than the authenticated node, and passes the right one.
    #[test]
    fn envelope_check_refuses_wrong_cluster_target_and_sender() {
        let e = envelope();
        assert_eq!(check_envelope(&e, "prod", NodeId(2), NodeId(1)), Ok(()));
        assert!(matches!(
            check_envelope(&e, "staging", NodeId(2), NodeId(1)),
            Err(PeerRefusal::WrongCluster { .. })
        ));
        assert!(matches!(
            check_envelope(&e, "prod", NodeId(3), NodeId(1)),
            Err(PeerRefusal::WrongNode { .. })
        ));
        assert!(matches!(
            check_envelope(&e, "prod", NodeId(2), NodeId(3)),
            Err(PeerRefusal::WrongNode { .. })
        ));
    }
}
