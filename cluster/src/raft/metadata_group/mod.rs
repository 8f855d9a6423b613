//! The metadata group on openraft: one replica per voter node, holding [`MetadataState`]
//! (membership, streams, partition map, ACLs) in its state machine
//! ([`state_machine`]), its log in a [`LogStore`] under the replica's directory, and talking to
//! the other replicas through the node's [`PeerTransport`] ([`crate::raft::network`], group
//! [`PeerGroup::Metadata`], the cluster's incarnation).
//!
//! [`MetadataGroup`] is the handle the node holds: [`MetadataGroup::start`] opens (or recovers)
//! the replica, [`MetadataGroup::initialize`] forms a new cluster, [`MetadataGroup::propose`]
//! commits a [`Command`] and returns what it did, [`MetadataGroup::read_linearizable`] returns
//! the state as of a linearizable point on any member (the leader confirms its leadership with
//! a quorum; a follower asks the leader for that read index over the peer link and answers once
//! it applied that far), membership changes go through [`MetadataGroup::add_learner`] and
//! [`MetadataGroup::change_membership`]. Every call has a deadline
//! ([`MetadataGroupConfig::request_timeout_ms`]) and a typed error ([`GroupError`]): a proposal
//! made to a follower is refused as [`GroupError::NotLeader`] with the leader's id and address;
//! [`MetadataGroup::propose_anywhere`] instead forwards it to the leader over the peer link
//! (`WireRequest::Propose` on the control lane, following at most [`FORWARD_HOPS_MAX`] hints,
//! waiting for an election when no leader is known), which is what the node's admin requests
//! and self-registration use.
//!
//! Not here: batching proposals into one entry (metadata changes are rare), durable snapshots
//! (the log is never purged; see `state_machine`).

pub mod state_machine;
#[cfg(test)]
mod tests;

use crate::metadata::{Applied, Command, MetadataError, MetadataState};
use crate::raft::log_store::{LogStore, LogStoreConfig, LogStoreError, LogStorePaths};
use crate::raft::network::{
    call, CallError, GroupAddress, GroupPeerHandler, PeerNetworkFactory, UnreachableBackoff,
};
use crate::raft::runtime::{replica_rng, with_replica_rng, SeededRuntime};
use crate::raft::types::{GroupConfig, GroupData, GroupNode};
use crate::raft::wire::{WireProposeResponse, WireReadIndexResponse, WireRequest};
use openraft::error::{
    CheckIsLeaderError, ClientWriteError, ForwardToLeader, InitializeError, RaftError,
};
use openraft::metrics::Wait;
use openraft::{ChangeMembers, Config, Raft, RaftMetrics, SnapshotPolicy};
use sluice_proto::codec;
use sluice_proto::env::{run_blocking, Env, PeerGroup, PeerLane, PeerTransport};
use sluice_proto::NodeId;
use state_machine::{MetadataStateMachine, Outcome};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The most leader hints [`MetadataGroup::propose_anywhere`] follows (or elections it waits for)
/// before it gives up with the last `NotLeader`.
pub const FORWARD_HOPS_MAX: u32 = 4;

/// The salt of the metadata group's replica RNG streams (`rng_for(seed, node, salt)`).
pub const METADATA_RNG_SALT: u64 = 0x4d45_5441_4441_5441;

/// Timeouts and sizes of the metadata group. Defaults are sized for the multi-site profile
/// (up to 150 ms one way between sites): openraft runs every AppendEntries under a timeout of
/// one heartbeat interval, so an append's round trip plus a follower's fsync must fit in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataGroupConfig {
    /// The leader's heartbeat interval, and the deadline of each AppendEntries (default 500).
    pub heartbeat_interval_ms: u64,
    /// A follower hearing no leader for a random time in `[min, max)` stands for election
    /// (defaults 2000 and 4000).
    pub election_timeout_min_ms: u64,
    /// See `election_timeout_min_ms`.
    pub election_timeout_max_ms: u64,
    /// The deadline of a proposal, a read, a membership change (default 10000). A proposal
    /// that misses it may or may not be applied.
    pub request_timeout_ms: u64,
    /// The first wait before replicating again to an unreachable member (default 100).
    pub unreachable_backoff_initial_ms: u64,
    /// The longest such wait (default 5000).
    pub unreachable_backoff_max_ms: u64,
    /// Entries per AppendEntries (default 64).
    pub entries_per_append_max: u64,
    /// Bytes per snapshot chunk (default 1 MiB).
    pub snapshot_chunk_bytes_max: u64,
    /// Preallocated size of a log segment (default 8 MiB).
    pub segment_bytes_max: u64,
    /// The largest log entry (default 1 MiB).
    pub entry_bytes_max: u32,
}

impl Default for MetadataGroupConfig {
    fn default() -> Self {
        MetadataGroupConfig {
            heartbeat_interval_ms: 500,
            election_timeout_min_ms: 2_000,
            election_timeout_max_ms: 4_000,
            request_timeout_ms: 10_000,
            unreachable_backoff_initial_ms: 100,
            unreachable_backoff_max_ms: 5_000,
            entries_per_append_max: 64,
            snapshot_chunk_bytes_max: 1 << 20,
            segment_bytes_max: 8 << 20,
            entry_bytes_max: 1 << 20,
        }
    }
}

impl MetadataGroupConfig {
    fn raft_config(&self, cluster: &str) -> Result<Config, StartError> {
        let config = Config {
            cluster_name: cluster.to_string(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: self.request_timeout_ms,
            max_payload_entries: self.entries_per_append_max,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes_max,
            // Purge follows retention only (the metadata group has none): no periodic
            // snapshots, so the log always holds everything and a restart replays it.
            snapshot_policy: SnapshotPolicy::Never,
            // And no purge after a snapshot either (openraft purges up to the snapshot minus
            // this): snapshots live in memory only (see `state_machine`), so the log must keep
            // everything a restart replays. With nothing purged, a leader never needs to send
            // a snapshot to catch a member up.
            max_in_snapshot_log_to_keep: u64::MAX,
            ..Config::default()
        };
        config
            .validate()
            .map_err(|e| StartError::Config(e.to_string()))
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// The cluster a metadata group belongs to: the name both ends' certificates carry and the
/// cluster's incarnation (the metadata group's, in every envelope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterIncarnation {
    /// The cluster name.
    pub cluster: String,
    /// The incarnation.
    pub incarnation: u64,
}

/// Where the leader is, as far as a replica knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderHint {
    /// The leader's node id.
    pub node: NodeId,
    /// Its peer address (empty when not known).
    pub address: String,
}

/// Why a metadata group call did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The command was committed and refused by the state machine: it changed nothing.
    #[error(transparent)]
    Rejected(#[from] MetadataError),
    /// This replica is not the leader; the leader it knows, if any. Nothing was proposed.
    #[error("not the metadata leader (leader: {leader_hint:?})")]
    NotLeader {
        /// The leader, if known.
        leader_hint: Option<LeaderHint>,
    },
    /// No quorum answered within the deadline. For a proposal the outcome is unknown: it may
    /// still be committed.
    #[error("metadata group unavailable: {reason}")]
    Unavailable {
        /// What happened.
        reason: String,
    },
    /// A membership change was refused (one is in progress, a learner is missing, …).
    #[error("membership change refused: {reason}")]
    Membership {
        /// openraft's reason.
        reason: String,
    },
    /// `initialize` on a replica that already has a log or a vote.
    #[error("the metadata group is already initialized")]
    AlreadyInitialized,
    /// The replica stopped (shut down, or a fatal storage error): supervise and restart it.
    #[error("metadata replica stopped: {reason}")]
    Stopped {
        /// Why.
        reason: String,
    },
}

/// Why a metadata replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is not one openraft accepts.
    #[error("metadata group config: {0}")]
    Config(String),
    /// The log store did not open (corruption is [`LogStoreError::Corrupt`]: rebuild the
    /// replica from its peers).
    #[error(transparent)]
    Log(#[from] LogStoreError),
    /// openraft did not start (its initial state could not be read).
    #[error("metadata raft did not start: {0}")]
    Raft(String),
}

fn hint(f: ForwardToLeader<u64, GroupNode>) -> GroupError {
    GroupError::NotLeader {
        leader_hint: f.leader_id.map(|id| LeaderHint {
            node: NodeId(id),
            address: f.leader_node.map(|n| n.address).unwrap_or_default(),
        }),
    }
}

fn write_error(error: RaftError<u64, ClientWriteError<u64, GroupNode>>) -> GroupError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => hint(f),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => GroupError::Membership {
            reason: e.to_string(),
        },
        RaftError::Fatal(f) => GroupError::Stopped {
            reason: f.to_string(),
        },
    }
}

fn read_error(error: RaftError<u64, CheckIsLeaderError<u64, GroupNode>>) -> GroupError {
    match error {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => hint(f),
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => GroupError::Unavailable {
            reason: q.to_string(),
        },
        RaftError::Fatal(f) => GroupError::Stopped {
            reason: f.to_string(),
        },
    }
}

/// The handle of one metadata replica. Cheap to clone.
#[derive(Clone)]
pub struct MetadataGroup {
    node: NodeId,
    raft: Raft<GroupConfig>,
    state_machine: MetadataStateMachine,
    transport: Arc<dyn PeerTransport>,
    address: GroupAddress,
    config: MetadataGroupConfig,
}

impl MetadataGroup {
    /// Opens (or recovers) replica `node` of the metadata group with its log under `dir`
    /// (`dir/log/` and `dir/log.manifest`, through `env.disk`), talking through `peers`. A
    /// recovered replica rebuilds its state by replaying the committed log before this returns.
    /// Register [`MetadataGroup::handler`] with the node's peer listener for group
    /// [`PeerGroup::Metadata`].
    pub async fn start(
        env: &Env,
        node: NodeId,
        dir: &Path,
        peers: Arc<dyn PeerTransport>,
        cluster: &ClusterIncarnation,
        config: &MetadataGroupConfig,
    ) -> Result<MetadataGroup, StartError> {
        let raft_config = Arc::new(config.raft_config(&cluster.cluster)?);
        let paths = LogStorePaths {
            dir: dir.join("log"),
            manifest: dir.join("log.manifest"),
        };
        let store_config = LogStoreConfig {
            segment_bytes_max: config.segment_bytes_max,
            entry_bytes_max: config.entry_bytes_max,
            ..LogStoreConfig::default()
        };
        // Recovery scans the whole log: off the async workers, as the store's later calls.
        let (disk, open_paths, blocking) = (env.disk.clone(), paths.clone(), env.blocking);
        let (log_store, _recovery) = run_blocking(blocking, move || {
            LogStore::open(disk, &open_paths, store_config, blocking)
        })
        .await?;
        let address = GroupAddress {
            cluster: cluster.cluster.clone(),
            group: PeerGroup::Metadata,
            incarnation: cluster.incarnation,
        };
        let backoff = UnreachableBackoff {
            initial: Duration::from_millis(config.unreachable_backoff_initial_ms),
            max: Duration::from_millis(config.unreachable_backoff_max_ms),
        };
        let network = PeerNetworkFactory::new(peers.clone(), node, address.clone(), backoff);
        let state_machine = MetadataStateMachine::default();
        let rng = replica_rng(env.seed, node.0, METADATA_RNG_SALT);
        let raft = with_replica_rng(
            rng,
            Raft::new(
                node.0,
                raft_config,
                network,
                log_store,
                state_machine.clone(),
            ),
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        Ok(MetadataGroup {
            node,
            raft,
            state_machine,
            transport: peers,
            address,
            config: config.clone(),
        })
    }

    /// This replica's node id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The receiving side of this replica, for the node's peer listener.
    pub fn handler(&self) -> Arc<GroupPeerHandler> {
        Arc::new(GroupPeerHandler::new(
            self.raft.clone(),
            self.address.clone(),
        ))
    }

    /// Runs `future` under the request deadline.
    async fn bounded<T>(
        &self,
        what: &str,
        future: impl Future<Output = Result<T, GroupError>>,
    ) -> Result<T, GroupError> {
        let timeout = self.config.request_timeout();
        match tokio::time::timeout(timeout, future).await {
            Ok(result) => result,
            Err(_) => Err(GroupError::Unavailable {
                reason: format!(
                    "{what} got no answer within {} ms on node {}",
                    timeout.as_millis(),
                    self.node
                ),
            }),
        }
    }

    /// Forms a new cluster whose voters are `members` (node id → peer address). Call it on one
    /// node (or on all with the same members); [`GroupError::AlreadyInitialized`] on a replica
    /// that has a log already.
    pub async fn initialize(&self, members: BTreeMap<NodeId, String>) -> Result<(), GroupError> {
        let members: BTreeMap<u64, GroupNode> = members
            .into_iter()
            .map(|(id, address)| (id.0, GroupNode { address }))
            .collect();
        self.bounded("initialize", async {
            match self.raft.initialize(members).await {
                Ok(()) => Ok(()),
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                    Err(GroupError::AlreadyInitialized)
                }
                Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                    Err(GroupError::Membership {
                        reason: e.to_string(),
                    })
                }
                Err(RaftError::Fatal(f)) => Err(GroupError::Stopped {
                    reason: f.to_string(),
                }),
            }
        })
        .await
    }

    /// Commits `command` and returns what it did, or [`GroupError::Rejected`] (committed, and
    /// changed nothing), or why it was not committed.
    pub async fn propose(&self, command: &Command) -> Result<Applied, GroupError> {
        let bytes = command.encode().map_err(|e| GroupError::Stopped {
            reason: format!("command did not encode: {e}"),
        })?;
        self.bounded("proposal", async {
            let response = self
                .raft
                .client_write(GroupData(bytes))
                .await
                .map_err(write_error)?;
            let outcome: Outcome =
                codec::decode(&response.data.0).map_err(|e| GroupError::Stopped {
                    reason: format!("state machine answer did not decode: {e}"),
                })?;
            Ok(outcome?)
        })
        .await
    }

    /// [`MetadataGroup::propose`] from any member: a replica that is not the leader forwards
    /// the command to the leader it knows over the peer link; with no leader known it waits
    /// for one (within the deadline). At most [`FORWARD_HOPS_MAX`] hints are followed.
    /// [`GroupError::Unavailable`] when the leader did not answer: the outcome is unknown.
    pub async fn propose_anywhere(&self, command: &Command) -> Result<Applied, GroupError> {
        let bytes = command.encode().map_err(|e| GroupError::Stopped {
            reason: format!("command did not encode: {e}"),
        })?;
        self.bounded("forwarded proposal", async {
            let mut last = match self.propose(command).await {
                Err(e @ GroupError::NotLeader { .. }) => e,
                other => return other,
            };
            for _ in 0..FORWARD_HOPS_MAX {
                let GroupError::NotLeader { leader_hint } = &last else {
                    return Err(last);
                };
                last = match leader_hint {
                    Some(hint) if hint.node != self.node => {
                        match self.forward(hint.node, bytes.clone()).await {
                            Err(e @ GroupError::NotLeader { .. }) => e,
                            other => return other,
                        }
                    }
                    // No leader known (an election): wait until one is.
                    _ => {
                        let mut metrics = self.raft.metrics();
                        let _ = metrics
                            .wait_for(|m| {
                                m.current_leader.is_some_and(|l| l != self.node.0)
                                    || m.state == openraft::ServerState::Leader
                            })
                            .await;
                        match self.propose(command).await {
                            Err(e @ GroupError::NotLeader { .. }) => e,
                            other => return other,
                        }
                    }
                };
            }
            Err(last)
        })
        .await
    }

    async fn forward(&self, leader: NodeId, bytes: Vec<u8>) -> Result<Applied, GroupError> {
        let answer: Result<WireProposeResponse, CallError> = call(
            &*self.transport,
            &self.address,
            (self.node, leader),
            PeerLane::Control,
            &WireRequest::Propose(bytes),
            self.config.request_timeout(),
        )
        .await;
        let answer = answer.map_err(|e| GroupError::Unavailable {
            reason: format!("proposal forwarded to leader {leader}: {e}"),
        })?;
        match answer {
            WireProposeResponse::Applied(bytes) => {
                let outcome: Outcome = codec::decode(&bytes).map_err(|e| GroupError::Stopped {
                    reason: format!("state machine answer did not decode: {e}"),
                })?;
                Ok(outcome?)
            }
            WireProposeResponse::NotLeader(h) => Err(GroupError::NotLeader {
                leader_hint: h.map(|(node, address)| LeaderHint {
                    node: NodeId(node),
                    address,
                }),
            }),
            WireProposeResponse::Unavailable(reason) => Err(GroupError::Unavailable { reason }),
        }
    }

    /// The state as of a linearizable point: it reflects every proposal committed before the
    /// call began. Served on any member: the leader confirms its leadership with a quorum; a
    /// follower asks the leader for its read index and waits until it applied that far.
    pub async fn read_linearizable(&self) -> Result<MetadataState, GroupError> {
        self.bounded("linearizable read", async {
            match self.raft.ensure_linearizable().await {
                Ok(_) => Ok(self.read_local()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    match f.leader_id {
                        Some(leader) if leader != self.node.0 => {
                            self.read_from_leader(NodeId(leader)).await
                        }
                        _ => Err(hint(f)),
                    }
                }
                Err(e) => Err(read_error(e)),
            }
        })
        .await
    }

    async fn read_from_leader(&self, leader: NodeId) -> Result<MetadataState, GroupError> {
        let answer: Result<WireReadIndexResponse, CallError> = call(
            &*self.transport,
            &self.address,
            (self.node, leader),
            PeerLane::Control,
            &WireRequest::ReadIndex,
            self.config.request_timeout(),
        )
        .await;
        let answer = answer.map_err(|e| GroupError::Unavailable {
            reason: format!("read index from leader {leader}: {e}"),
        })?;
        let read = match answer {
            WireReadIndexResponse::Index(_) => answer.read_index().flatten(),
            WireReadIndexResponse::NotLeader(h) => {
                return Err(GroupError::NotLeader {
                    leader_hint: h.map(|(node, address)| LeaderHint {
                        node: NodeId(node),
                        address,
                    }),
                })
            }
            WireReadIndexResponse::Unavailable(reason) => {
                return Err(GroupError::Unavailable { reason })
            }
        };
        if let Some(read) = read {
            self.raft
                .wait(None)
                .applied_index_at_least(Some(read.index), "follower read")
                .await
                .map_err(|e| GroupError::Stopped {
                    reason: e.to_string(),
                })?;
        }
        Ok(self.read_local())
    }

    /// The state as this replica applied it so far; not linearizable (for diagnostics, and
    /// for checks that a replica rebuilt its state from its own log).
    pub fn read_local(&self) -> MetadataState {
        self.state_machine.lock().state.clone()
    }

    /// Adds `node` (at `address`) as a learner; returns once the change is committed, without
    /// waiting for the learner to catch up (watch [`MetadataGroup::metrics`]).
    pub async fn add_learner(&self, node: NodeId, address: String) -> Result<(), GroupError> {
        self.bounded("add learner", async {
            self.raft
                .add_learner(node.0, GroupNode { address }, false)
                .await
                .map(|_| ())
                .map_err(write_error)
        })
        .await
    }

    /// Makes `voters` the voter set (through a joint configuration); members no longer voters
    /// stay learners when `retain` is set, else they leave. Returns once the final
    /// configuration is committed.
    pub async fn change_membership(
        &self,
        voters: BTreeSet<NodeId>,
        retain: bool,
    ) -> Result<(), GroupError> {
        let voters: BTreeSet<u64> = voters.into_iter().map(|n| n.0).collect();
        self.bounded("membership change", async {
            self.raft
                .change_membership(ChangeMembers::ReplaceAllVoters(voters), retain)
                .await
                .map(|_| ())
                .map_err(write_error)
        })
        .await
    }

    /// The replica's raft metrics (role, term, leader, log and applied indexes, membership).
    pub fn metrics(&self) -> tokio::sync::watch::Receiver<RaftMetrics<u64, GroupNode>> {
        self.raft.metrics()
    }

    /// Waits on the metrics for a condition, at most `timeout`.
    pub fn wait(&self, timeout: Duration) -> Wait<u64, GroupNode, SeededRuntime> {
        self.raft.wait(Some(timeout))
    }

    /// Stops the replica (its tasks end; the log stays on disk).
    pub async fn shutdown(&self) -> Result<(), GroupError> {
        self.raft.shutdown().await.map_err(|e| GroupError::Stopped {
            reason: e.to_string(),
        })
    }
}
