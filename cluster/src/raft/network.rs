//! A raft group's network over the node-to-node transport ([`PeerTransport`]): the sending side
//! ([`PeerNetworkFactory`], openraft's `RaftNetworkFactory`) and the receiving side
//! ([`GroupPeerHandler`], a [`PeerHandler`] dispatching to the local `Raft`). Every RPC is a
//! [`wire`](super::wire) message encoded by `proto::codec` in a [`PeerRequest`] whose envelope
//! names the cluster, the two nodes, the group and its incarnation.
//!
//! Lanes: votes and heartbeats (appends without entries) travel on [`PeerLane::Control`], appends
//! with entries and snapshot chunks on [`PeerLane::Bulk`], so catch-up never delays an election.
//!
//! Failures, and what each does to openraft's replication stream to that peer (openraft 0.9.25
//! `replication/mod.rs`): `Unreachable` makes the stream back off (our [`Backoff`] schedule,
//! capped exponential with seeded jitter) until an RPC succeeds; `Network` and `Timeout` are
//! retried at the next heartbeat or event without a backoff. So:
//! - the peer is not reachable (no address, no connection, a refused handshake), or it answered
//!   that it has no running replica of this group (or another incarnation, cluster or node):
//!   `Unreachable`; retrying at once cannot help;
//! - no answer within the deadline: `Timeout`;
//! - a full queue here or there, a connection that closed under the request, a body that did
//!   not decode: `Network`, transient, retried at the next heartbeat.

use crate::raft::runtime::SeededRuntime;
use crate::raft::types::{GroupConfig, GroupData, GroupNode};
use crate::raft::wire::{
    WireAppendResponse, WireProposeResponse, WireReadIndexResponse, WireRequest,
    WireSnapshotResponse, WireVoteResponse,
};
use openraft::error::{
    CheckIsLeaderError, ClientWriteError, InstallSnapshotError, NetworkError, PayloadTooLarge,
    RPCError, RaftError, RemoteError, SnapshotMismatch, Timeout, Unreachable,
};
use openraft::network::{Backoff as RaftBackoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AsyncRuntime, RPCTypes, Raft, RaftNetwork, RaftNetworkFactory};
use rand::SeedableRng as _;
use rand08::RngCore as _;
use rand_chacha::ChaCha8Rng;
use sluice_proto::backoff::Backoff;
use sluice_proto::codec;
use sluice_proto::env::{
    BoxFuture, PeerEnvelope, PeerError, PeerErrorKind, PeerGroup, PeerHandler, PeerLane,
    PeerRefusal, PeerRequest, PeerTransport,
};
use sluice_proto::NodeId;
use std::sync::Arc;
use std::time::Duration;

/// Which group a network speaks for: the envelope fields every request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupAddress {
    /// The cluster name.
    pub cluster: String,
    /// The group.
    pub group: PeerGroup,
    /// The group's incarnation.
    pub incarnation: u64,
}

/// How a group's network retries an unreachable peer: openraft's replication stream to it
/// waits `[d/2, d)` with `d` doubling from `initial` up to `max` (see `proto::backoff`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnreachableBackoff {
    /// The first wait.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

/// openraft's network factory of one replica: one [`PeerNetwork`] per target.
pub struct PeerNetworkFactory {
    transport: Arc<dyn PeerTransport>,
    local: NodeId,
    address: Arc<GroupAddress>,
    backoff: UnreachableBackoff,
}

impl PeerNetworkFactory {
    /// The network of replica `local` of the group at `address`.
    pub fn new(
        transport: Arc<dyn PeerTransport>,
        local: NodeId,
        address: GroupAddress,
        backoff: UnreachableBackoff,
    ) -> Self {
        PeerNetworkFactory {
            transport,
            local,
            address: Arc::new(address),
            backoff,
        }
    }
}

impl RaftNetworkFactory<GroupConfig> for PeerNetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, _node: &GroupNode) -> PeerNetwork {
        PeerNetwork {
            transport: self.transport.clone(),
            local: self.local,
            target: NodeId(target),
            address: self.address.clone(),
            backoff: self.backoff,
        }
    }
}

/// openraft's network to one target replica.
pub struct PeerNetwork {
    transport: Arc<dyn PeerTransport>,
    local: NodeId,
    target: NodeId,
    address: Arc<GroupAddress>,
    backoff: UnreachableBackoff,
}

type RpcError<E = openraft::error::Infallible> = RPCError<u64, GroupNode, RaftError<u64, E>>;

/// A failed call, before it is typed for the RPC at hand.
pub(crate) enum CallError {
    Peer(PeerError),
    Undecodable(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Peer(e) => write!(f, "{e}"),
            CallError::Undecodable(reason) => write!(f, "response did not decode: {reason}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

/// Calls `to` with `request` on `lane` for the group at `address`, decoding the answer.
pub(crate) async fn call<T: bincode::Decode<()> + bincode::Encode>(
    transport: &dyn PeerTransport,
    address: &GroupAddress,
    (from, to): (NodeId, NodeId),
    lane: PeerLane,
    request: &WireRequest,
    timeout: Duration,
) -> Result<T, CallError> {
    let body = codec::encode(request).map_err(|e| CallError::Undecodable(e.to_string()))?;
    let request = PeerRequest {
        envelope: PeerEnvelope {
            cluster: address.cluster.clone(),
            from,
            to,
            group: address.group.clone(),
            incarnation: address.incarnation,
        },
        lane,
        body,
    };
    let answer = transport
        .call(request, timeout)
        .await
        .map_err(CallError::Peer)?;
    codec::decode(&answer).map_err(|e| CallError::Undecodable(e.to_string()))
}

impl PeerNetwork {
    /// Types a failed call for openraft; see the module doc for the choice of variant.
    fn rpc_error<E: std::error::Error>(
        &self,
        error: CallError,
        action: RPCTypes,
        timeout: Duration,
    ) -> RpcError<E> {
        let failure = Failure(format!(
            "{action:?} to node {} of {:?}: {error}",
            self.target, self.address.group
        ));
        let CallError::Peer(peer) = error else {
            return RPCError::Network(NetworkError::new(&failure));
        };
        match peer.kind {
            PeerErrorKind::Unreachable
            | PeerErrorKind::Refused
            | PeerErrorKind::Remote(
                PeerRefusal::UnknownGroup
                | PeerRefusal::StaleIncarnation { .. }
                | PeerRefusal::WrongCluster { .. }
                | PeerRefusal::WrongNode { .. },
            ) => RPCError::Unreachable(Unreachable::new(&failure)),
            PeerErrorKind::Timeout => RPCError::Timeout(Timeout {
                action,
                id: self.local.0,
                target: self.target.0,
                timeout,
            }),
            // A lone entry or a vote over the lane's bound: configuration (`entry_bytes_max`
            // above the peer message bound); retried, and logged by openraft.
            PeerErrorKind::TooLarge
            | PeerErrorKind::Overloaded
            | PeerErrorKind::Closed
            | PeerErrorKind::Protocol
            | PeerErrorKind::Remote(PeerRefusal::Overloaded | PeerRefusal::Handler(_)) => {
                RPCError::Network(NetworkError::new(&failure))
            }
        }
    }

    async fn call<T: bincode::Decode<()> + bincode::Encode>(
        &self,
        lane: PeerLane,
        request: &WireRequest,
        timeout: Duration,
    ) -> Result<T, CallError> {
        call(
            &*self.transport,
            &self.address,
            (self.local, self.target),
            lane,
            request,
            timeout,
        )
        .await
    }
}

impl RaftNetwork<GroupConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<GroupConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcError> {
        let lane = if rpc.entries.is_empty() {
            PeerLane::Control
        } else {
            PeerLane::Bulk
        };
        let timeout = option.hard_ttl();
        let n_entries = rpc.entries.len() as u64;
        let answer: WireAppendResponse = self
            .call(lane, &WireRequest::append(&rpc), timeout)
            .await
            .map_err(|e| match e {
                // Over the bulk lane's message bound: openraft sends fewer entries next time.
                CallError::Peer(PeerError {
                    kind: PeerErrorKind::TooLarge,
                    ..
                }) if n_entries > 1 => {
                    RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(n_entries / 2))
                }
                e => self.rpc_error(e, RPCTypes::AppendEntries, timeout),
            })?;
        Ok(answer.into_response())
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<GroupConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcError<InstallSnapshotError>> {
        let timeout = option.hard_ttl();
        let answer: WireSnapshotResponse = self
            .call(PeerLane::Bulk, &WireRequest::snapshot(&rpc), timeout)
            .await
            .map_err(|e| self.rpc_error(e, RPCTypes::InstallSnapshot, timeout))?;
        match answer {
            WireSnapshotResponse::Accepted(vote) => {
                Ok(InstallSnapshotResponse { vote: vote.into() })
            }
            WireSnapshotResponse::Mismatch { expect, got } => {
                let mismatch = SnapshotMismatch {
                    expect: expect.into_segment(),
                    got: got.into_segment(),
                };
                Err(RPCError::RemoteError(RemoteError::new(
                    self.target.0,
                    RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch)),
                )))
            }
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcError> {
        let timeout = option.hard_ttl();
        let answer: WireVoteResponse = self
            .call(PeerLane::Control, &WireRequest::vote(&rpc), timeout)
            .await
            .map_err(|e| self.rpc_error(e, RPCTypes::Vote, timeout))?;
        Ok(answer.into_response())
    }

    fn backoff(&self) -> RaftBackoff {
        // Called on the replication task, which runs in the replica's RNG scope: the jitter
        // seed comes from the replica's stream, so one simulator seed replays the waits.
        let seed = SeededRuntime::thread_rng().next_u64();
        let mut schedule = Backoff::new(
            self.backoff.initial,
            self.backoff.max,
            ChaCha8Rng::seed_from_u64(seed),
        );
        RaftBackoff::new(std::iter::repeat_with(move || schedule.next_delay()))
    }
}

/// The receiving side of one replica: checks the group and its incarnation, decodes the RPC and
/// hands it to the local `Raft`. A replica whose raft stopped answers
/// [`PeerRefusal::UnknownGroup`] (it has no running replica), which the sender takes as
/// unreachable.
pub struct GroupPeerHandler {
    raft: Raft<GroupConfig>,
    address: GroupAddress,
}

impl GroupPeerHandler {
    /// The handler of the replica `raft` of the group at `address`.
    pub fn new(raft: Raft<GroupConfig>, address: GroupAddress) -> Self {
        GroupPeerHandler { raft, address }
    }

    fn check(&self, envelope: &PeerEnvelope) -> Result<(), PeerRefusal> {
        if envelope.group != self.address.group {
            return Err(PeerRefusal::UnknownGroup);
        }
        if envelope.incarnation != self.address.incarnation {
            return Err(PeerRefusal::StaleIncarnation {
                got: envelope.incarnation,
                current: self.address.incarnation,
            });
        }
        Ok(())
    }

    async fn dispatch(&self, request: PeerRequest) -> Result<Vec<u8>, PeerRefusal> {
        self.check(&request.envelope)?;
        let refused = |e: String| PeerRefusal::Handler(e);
        let rpc: WireRequest = codec::decode(&request.body).map_err(|e| refused(e.to_string()))?;
        let encoded = match rpc {
            WireRequest::Append(append) => {
                let rpc = append.into_rpc().map_err(refused)?;
                let response = self.raft.append_entries(rpc).await.map_err(stopped)?;
                codec::encode(&WireAppendResponse::from_response(&response))
            }
            WireRequest::Vote(vote) => {
                let response = self.raft.vote(vote.into_rpc()).await.map_err(stopped)?;
                codec::encode(&WireVoteResponse::from_response(&response))
            }
            WireRequest::Snapshot(chunk) => {
                let rpc = chunk.into_rpc().map_err(refused)?;
                let answer = match self.raft.install_snapshot(rpc).await {
                    Ok(response) => WireSnapshotResponse::accepted(&response),
                    Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => {
                        WireSnapshotResponse::Mismatch {
                            expect: crate::raft::wire::WireSegmentId::from_segment(&m.expect),
                            got: crate::raft::wire::WireSegmentId::from_segment(&m.got),
                        }
                    }
                    Err(RaftError::Fatal(f)) => return Err(stopped(RaftError::<u64>::Fatal(f))),
                };
                codec::encode(&answer)
            }
            WireRequest::ReadIndex => codec::encode(&self.read_index().await),
            WireRequest::Propose(data) => codec::encode(&self.propose(data).await),
        };
        encoded.map_err(|e| refused(e.to_string()))
    }

    /// A client write a member forwarded: committed here if this replica leads, else the
    /// leader it knows.
    async fn propose(&self, data: Vec<u8>) -> WireProposeResponse {
        match self.raft.client_write(GroupData(data)).await {
            Ok(response) => WireProposeResponse::Applied(response.data.0),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                WireProposeResponse::NotLeader(
                    f.leader_id
                        .map(|id| (id, f.leader_node.map(|n| n.address).unwrap_or_default())),
                )
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                WireProposeResponse::Unavailable(e.to_string())
            }
            Err(RaftError::Fatal(f)) => WireProposeResponse::Unavailable(f.to_string()),
        }
    }

    async fn read_index(&self) -> WireReadIndexResponse {
        match self.raft.get_read_log_id().await {
            Ok((read, _applied)) => WireReadIndexResponse::index(read),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                WireReadIndexResponse::NotLeader(
                    f.leader_id
                        .map(|id| (id, f.leader_node.map(|n| n.address).unwrap_or_default())),
                )
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                WireReadIndexResponse::Unavailable(q.to_string())
            }
            Err(RaftError::Fatal(f)) => WireReadIndexResponse::Unavailable(f.to_string()),
        }
    }
}

fn stopped<E: std::error::Error>(_: RaftError<u64, E>) -> PeerRefusal {
    PeerRefusal::UnknownGroup
}

impl PeerHandler for GroupPeerHandler {
    fn handle(&self, request: PeerRequest) -> BoxFuture<'_, Result<Vec<u8>, PeerRefusal>> {
        Box::pin(self.dispatch(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::testing::TestNet;

    fn network() -> PeerNetwork {
        PeerNetwork {
            transport: TestNet::new("test").transport(NodeId(1)),
            local: NodeId(1),
            target: NodeId(2),
            address: Arc::new(GroupAddress {
                cluster: "test".into(),
                group: PeerGroup::Metadata,
                incarnation: 1,
            }),
            backoff: UnreachableBackoff {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(100),
            },
        }
    }

    /// The openraft variant a peer error of `kind` becomes: U(nreachable), T(imeout), N(etwork).
    fn variant(kind: PeerErrorKind) -> char {
        let error = CallError::Peer(PeerError::new(kind, "x"));
        let typed: RpcError = network().rpc_error(error, RPCTypes::Vote, Duration::from_secs(1));
        match typed {
            RPCError::Unreachable(_) => 'U',
            RPCError::Timeout(_) => 'T',
            RPCError::Network(_) => 'N',
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn peer_errors_map_to_the_openraft_variant_that_retries_right() {
        // Checks the mapping the module doc gives: what retrying at once cannot fix backs off
        // (Unreachable), no answer is a Timeout, transient trouble is a Network error retried
        // at the next heartbeat; an answer that does not decode is a Network error too.
        for (kind, expected) in [
            (PeerErrorKind::Unreachable, 'U'),
            (PeerErrorKind::Refused, 'U'),
            (PeerErrorKind::Remote(PeerRefusal::UnknownGroup), 'U'),
            (
                PeerErrorKind::Remote(PeerRefusal::StaleIncarnation { got: 1, current: 2 }),
                'U',
            ),
            (PeerErrorKind::Timeout, 'T'),
            (PeerErrorKind::Overloaded, 'N'),
            (PeerErrorKind::TooLarge, 'N'),
            (PeerErrorKind::Closed, 'N'),
            (PeerErrorKind::Protocol, 'N'),
            (PeerErrorKind::Remote(PeerRefusal::Overloaded), 'N'),
            (
                PeerErrorKind::Remote(PeerRefusal::Handler("bad".into())),
                'N',
            ),
        ] {
            assert_eq!(variant(kind.clone()), expected, "{kind:?}");
        }
        let undecodable = CallError::Undecodable("short".into());
        let typed: RpcError = network().rpc_error(undecodable, RPCTypes::Vote, Duration::ZERO);
        assert!(matches!(typed, RPCError::Network(_)));
    }
}
