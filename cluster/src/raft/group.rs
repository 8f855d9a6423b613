//! One replica of a raft group, whatever its state machine: the log store under the replica's
//! directory, openraft created inside the replica's RNG scope, the network over the node's
//! [`PeerTransport`], and typed calls with deadlines. The partition groups
//! ([`crate::raft::partition_group`]) are built on it.
//!
//! [`RaftGroup::start`] opens (or recovers) the replica, [`RaftGroup::initialize`] forms the
//! group, [`RaftGroup::propose`] commits one entry of opaque bytes and returns the state
//! machine's answer and the entry's log id, membership goes through [`RaftGroup::add_learner`] and
//! [`RaftGroup::change_membership`], and [`RaftGroup::handler`] is the receiving side for the
//! node's peer listener. Every call has a deadline ([`RaftGroupConfig::request_timeout_ms`]) and
//! a typed error ([`RaftGroupError`]).

use crate::raft::log_store::{
    LogStore, LogStoreConfig, LogStoreError, LogStorePaths, LogStoreReader,
};
use crate::raft::network::{
    GroupAddress, GroupPeerHandler, PeerNetworkFactory, UnreachableBackoff,
};
use crate::raft::runtime::{replica_rng, with_replica_rng, SeededRuntime};
use crate::raft::types::{GroupConfig, GroupData, GroupLogId, GroupNode, GroupResponse};
use openraft::error::{ClientWriteError, ForwardToLeader, InitializeError, RaftError};
use openraft::metrics::Wait;
use openraft::storage::RaftStateMachine;
use openraft::{ChangeMembers, Config, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use sluice_proto::env::{run_blocking, Env, PeerTransport};
use sluice_proto::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Timeouts and sizes of one raft group. The defaults are sized for the multi-site profile (up
/// to 150 ms one way between sites): openraft runs every AppendEntries under a timeout of one
/// heartbeat interval, so an append's round trip plus a follower's fsync must fit in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftGroupConfig {
    /// The leader's heartbeat interval, and the deadline of each AppendEntries (default 500).
    pub heartbeat_interval_ms: u64,
    /// A follower hearing no leader for a random time in `[min, max)` stands for election
    /// (defaults 2000 and 4000).
    pub election_timeout_min_ms: u64,
    /// See `election_timeout_min_ms`.
    pub election_timeout_max_ms: u64,
    /// The deadline of a proposal, a membership change, an initialization (default 10000). A
    /// proposal that misses it may or may not be committed.
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

impl Default for RaftGroupConfig {
    fn default() -> Self {
        RaftGroupConfig {
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

impl RaftGroupConfig {
    fn raft_config(&self, cluster: &str) -> Result<Config, GroupStartError> {
        let config = Config {
            cluster_name: cluster.to_string(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: self.request_timeout_ms,
            max_payload_entries: self.entries_per_append_max,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes_max,
            // Purge follows retention only: no periodic snapshots, so the log holds everything
            // it has not been told to drop, and a restart replays it.
            snapshot_policy: SnapshotPolicy::Never,
            // No purge after a snapshot either (openraft purges up to the snapshot minus this).
            max_in_snapshot_log_to_keep: u64::MAX,
            ..Config::default()
        };
        config
            .validate()
            .map_err(|e| GroupStartError::Config(e.to_string()))
    }

    /// The deadline of one call.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Where a group's leader is, as far as a replica knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLeader {
    /// The leader's node id.
    pub node: NodeId,
    /// Its peer address (empty when not known).
    pub address: String,
}

/// Why a call on a raft group did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftGroupError {
    /// This replica is not the leader; the leader it knows, if any. Nothing was proposed.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader, if known.
        leader: Option<GroupLeader>,
    },
    /// No quorum answered within the deadline. For a proposal the outcome is unknown: it may
    /// still be committed.
    #[error("group unavailable: {reason}")]
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
    #[error("the group is already initialized")]
    AlreadyInitialized,
    /// The replica stopped (shut down, or a fatal storage error): supervise and restart it.
    #[error("replica stopped: {reason}")]
    Stopped {
        /// Why.
        reason: String,
    },
}

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum GroupStartError {
    /// The configuration is not one openraft accepts.
    #[error("raft group config: {0}")]
    Config(String),
    /// The log store did not open (corruption is [`LogStoreError::Corrupt`]: rebuild the
    /// replica from its peers).
    #[error(transparent)]
    Log(#[from] LogStoreError),
    /// openraft did not start (its initial state could not be read).
    #[error("raft did not start: {0}")]
    Raft(String),
}

/// The leader a `ForwardToLeader` names.
pub(crate) fn leader_of(f: ForwardToLeader<u64, GroupNode>) -> Option<GroupLeader> {
    f.leader_id.map(|id| GroupLeader {
        node: NodeId(id),
        address: f.leader_node.map(|n| n.address).unwrap_or_default(),
    })
}

fn write_error(error: RaftError<u64, ClientWriteError<u64, GroupNode>>) -> RaftGroupError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => RaftGroupError::NotLeader {
            leader: leader_of(f),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            RaftGroupError::Membership {
                reason: e.to_string(),
            }
        }
        RaftError::Fatal(f) => RaftGroupError::Stopped {
            reason: f.to_string(),
        },
    }
}

/// What identifies one replica of a group: its node, where its log lives, its RNG salt.
#[derive(Debug, Clone)]
pub struct ReplicaSpec<'a> {
    /// This replica's node.
    pub node: NodeId,
    /// The replica's directory: the log under `dir/log/`, its manifest `dir/log.manifest`.
    pub dir: &'a Path,
    /// The group (cluster, group, incarnation) every envelope names.
    pub address: GroupAddress,
    /// Salt of the replica's RNG stream (`replica_rng(seed, node, salt)`): groups on one node
    /// draw different election timeouts.
    pub rng_salt: u64,
}

/// The handle of one replica. Cheap to clone.
#[derive(Clone)]
pub struct RaftGroup {
    node: NodeId,
    raft: Raft<GroupConfig>,
    reader: LogStoreReader,
    address: GroupAddress,
    config: RaftGroupConfig,
}

impl RaftGroup {
    /// Opens (or recovers) the replica `spec` with `state_machine`, talking through `peers`. A
    /// recovered replica has re-applied its committed log to `state_machine` (openraft's
    /// initial state) before this returns. Register [`RaftGroup::handler`] with the node's
    /// peer listener for the spec's group.
    pub async fn start<SM: RaftStateMachine<GroupConfig>>(
        env: &Env,
        spec: ReplicaSpec<'_>,
        peers: Arc<dyn PeerTransport>,
        config: &RaftGroupConfig,
        state_machine: SM,
    ) -> Result<RaftGroup, GroupStartError> {
        let raft_config = Arc::new(config.raft_config(&spec.address.cluster)?);
        let paths = LogStorePaths {
            dir: spec.dir.join("log"),
            manifest: spec.dir.join("log.manifest"),
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
        let reader = log_store.reader();
        let backoff = UnreachableBackoff {
            initial: Duration::from_millis(config.unreachable_backoff_initial_ms),
            max: Duration::from_millis(config.unreachable_backoff_max_ms),
        };
        let network = PeerNetworkFactory::new(peers, spec.node, spec.address.clone(), backoff);
        let rng = replica_rng(env.seed, spec.node.0, spec.rng_salt);
        let raft = with_replica_rng(
            rng,
            Raft::new(spec.node.0, raft_config, network, log_store, state_machine),
        )
        .await
        .map_err(|e| GroupStartError::Raft(e.to_string()))?;
        Ok(RaftGroup {
            node: spec.node,
            raft,
            reader,
            address: spec.address,
            config: config.clone(),
        })
    }

    /// This replica's node id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The group this replica belongs to.
    pub fn address(&self) -> &GroupAddress {
        &self.address
    }

    /// The receiving side of this replica, for the node's peer listener.
    pub fn handler(&self) -> Arc<GroupPeerHandler> {
        Arc::new(GroupPeerHandler::new(
            self.raft.clone(),
            self.address.clone(),
        ))
    }

    /// Reads this replica's log (committed or not: bound reads by what the state machine
    /// applied).
    pub fn reader(&self) -> &LogStoreReader {
        &self.reader
    }

    /// Runs `future` under the request deadline.
    async fn bounded<T>(
        &self,
        what: &str,
        future: impl Future<Output = Result<T, RaftGroupError>>,
    ) -> Result<T, RaftGroupError> {
        let timeout = self.config.request_timeout();
        match tokio::time::timeout(timeout, future).await {
            Ok(result) => result,
            Err(_) => Err(RaftGroupError::Unavailable {
                reason: format!(
                    "{what} got no answer within {} ms on node {}",
                    timeout.as_millis(),
                    self.node
                ),
            }),
        }
    }

    /// Forms the group with `members` (node id → peer address) as its voters. Call it on one
    /// member (or on all with the same members); [`RaftGroupError::AlreadyInitialized`] on a
    /// replica that has a log already.
    pub async fn initialize(
        &self,
        members: BTreeMap<NodeId, String>,
    ) -> Result<(), RaftGroupError> {
        let members: BTreeMap<u64, GroupNode> = members
            .into_iter()
            .map(|(id, address)| (id.0, GroupNode { address }))
            .collect();
        self.bounded("initialize", async {
            match self.raft.initialize(members).await {
                Ok(()) => Ok(()),
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                    Err(RaftGroupError::AlreadyInitialized)
                }
                Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                    Err(RaftGroupError::Membership {
                        reason: e.to_string(),
                    })
                }
                Err(RaftError::Fatal(f)) => Err(RaftGroupError::Stopped {
                    reason: f.to_string(),
                }),
            }
        })
        .await
    }

    /// Commits one entry holding `data` and returns its log id and what the state machine
    /// answered for it. [`RaftGroupError::NotLeader`] means nothing was proposed;
    /// [`RaftGroupError::Unavailable`] (the deadline passed) means the entry may still commit.
    pub async fn propose(
        &self,
        data: Vec<u8>,
    ) -> Result<(GroupLogId, GroupResponse), RaftGroupError> {
        self.bounded("proposal", async {
            let response = self
                .raft
                .client_write(GroupData(data))
                .await
                .map_err(write_error)?;
            Ok((response.log_id, response.data))
        })
        .await
    }

    /// Adds `node` (at `address`) as a learner; returns once the change is committed, without
    /// waiting for the learner to catch up (watch [`RaftGroup::metrics`]).
    pub async fn add_learner(&self, node: NodeId, address: String) -> Result<(), RaftGroupError> {
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
    ) -> Result<(), RaftGroupError> {
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

    /// Whether this replica leads with everything in its log applied, an entry of its own
    /// term among them: then every entry any earlier leader committed is applied here, and
    /// nothing of its own is in flight, so its state machine is the whole committed state.
    pub fn leads_with_all_applied(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader
            && m.current_leader == Some(self.node.0)
            && m.last_applied.is_some_and(|applied| {
                applied.leader_id.term == m.current_term && Some(applied.index) == m.last_log_index
            })
    }

    /// Whether this replica is the leader now (its log may not be applied yet).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<GroupLeader> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let address = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.address.clone())
            .unwrap_or_default();
        Some(GroupLeader {
            node: NodeId(id),
            address,
        })
    }

    /// Waits on the metrics for a condition, at most `timeout`.
    pub fn wait(&self, timeout: Duration) -> Wait<u64, GroupNode, SeededRuntime> {
        self.raft.wait(Some(timeout))
    }

    /// Stops the replica (its tasks end; the log stays on disk).
    pub async fn shutdown(&self) -> Result<(), RaftGroupError> {
        self.raft
            .shutdown()
            .await
            .map_err(|e| RaftGroupError::Stopped {
                reason: e.to_string(),
            })
    }
}
