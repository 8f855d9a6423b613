//! The node's side of the metadata group: the peer listener's router ([`PeerRouter`], which hands
//! `PeerGroup::Metadata` requests to the group), the node's self-registration (each member
//! records itself, with its site and rack, as an active node once the group has a leader), the
//! cluster's bootstrap (`sluice cluster init`: form the group from `initial_members`, then apply
//! the config's `[[streams]]` and `[[acl]]` once), and the admin requests of the client
//! protocol ([`Admin::handle`]: streams, ACLs, cluster status).
//!
//! Every change goes through [`MetadataGroup::propose_anywhere`], so any member answers any
//! admin request (a follower forwards the proposal to the leader over the peer link); every
//! read that decides or reports anything is [`MetadataGroup::read_linearizable`].
//!
//! Not here: the data path. Produce and fetch still use the node's own partitions from its
//! config; the metadata group's streams, partition map and ACL are recorded and reported, not
//! yet served.

use crate::acl::glob_matches;
use crate::config::NodeConfig;
use sluice_cluster::metadata::{
    Applied, Command, MetadataError, MetadataState, Retention, STREAM_PARTITIONS_MAX,
};
use sluice_cluster::raft::metadata_group::{GroupError, MetadataGroup};
use sluice_cluster::replicas::{NodeState, PartitionKey};
use sluice_proto::backoff::Backoff;
use sluice_proto::env::{BoxFuture, PeerGroup, PeerHandler, PeerRefusal, PeerRequest};
use sluice_proto::msg::{
    AclEntry, AdminAnswer, AdminError, AdminNodeState, AdminOp, ClusterStatus, NodeStatus,
    PartitionInfo, StreamInfo,
};
use sluice_proto::{Identity, NodeId, PartitionId, StreamName};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// The incarnation of the metadata group in every peer envelope (one cluster, one group).
pub const METADATA_INCARNATION: u64 = 1;

/// The salt of the registration retry jitter (`Env::rng(node, salt)`).
const REGISTRATION_RNG_SALT: u64 = 0x7265_6769_7374_6572;

/// Hands each peer request to the group it names. Only the metadata group is registered today;
/// every other group is refused as unknown (the sender treats that as unreachable).
#[derive(Default)]
pub struct PeerRouter {
    metadata: OnceLock<Arc<dyn PeerHandler>>,
}

impl PeerRouter {
    /// Registers the metadata group's handler (once).
    pub fn set_metadata(&self, handler: Arc<dyn PeerHandler>) {
        let _ = self.metadata.set(handler);
    }
}

impl PeerHandler for PeerRouter {
    fn handle(&self, request: PeerRequest) -> BoxFuture<'_, Result<Vec<u8>, PeerRefusal>> {
        Box::pin(async move {
            match (&request.envelope.group, self.metadata.get()) {
                (PeerGroup::Metadata, Some(handler)) => handler.handle(request).await,
                _ => Err(PeerRefusal::UnknownGroup),
            }
        })
    }
}

/// This node as a member of the metadata group, and the admin requests it serves.
pub struct Admin {
    group: MetadataGroup,
    node: NodeId,
    /// `initial_members`, parsed.
    members: BTreeMap<NodeId, String>,
    /// What this node registers itself with.
    registration: Command,
    /// The config, for the bootstrap's streams and ACL rules.
    config: NodeConfig,
}

impl Admin {
    /// The admin side of `group` for a node configured by `config` (which has a `[cluster]`).
    pub fn new(group: MetadataGroup, config: &NodeConfig) -> Admin {
        let node = NodeId(config.node.id);
        let members = config
            .cluster
            .as_ref()
            .map(|c| c.members())
            .unwrap_or_default();
        let (site, rack) = config
            .cluster
            .as_ref()
            .map(|c| (c.site.clone(), c.rack.clone()))
            .unwrap_or_default();
        let registration = Command::AddNode {
            node,
            address: members.get(&node).cloned().unwrap_or_default(),
            site,
            rack,
            storage_incarnation: 1,
        };
        Admin {
            group,
            node,
            members,
            registration,
            config: config.clone(),
        }
    }

    /// The metadata group.
    pub fn group(&self) -> &MetadataGroup {
        &self.group
    }

    /// Registers this node (as `Active`) once the group has a leader, retrying with backoff
    /// until it is registered or `stop` turns true.
    pub async fn register(&self, mut backoff: Backoff, mut stop: watch::Receiver<bool>) {
        let mut metrics = self.group.metrics();
        loop {
            let has_leader = async {
                let _ = metrics.wait_for(|m| m.current_leader.is_some()).await;
            };
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return,
                () = has_leader => {}
            }
            match self.register_once().await {
                Ok(()) => {
                    info!(node_id = self.node.0, "registered in the metadata group");
                    return;
                }
                Err(error) => warn!(%error, node_id = self.node.0, "registration failed; retrying"),
            }
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    async fn register_once(&self) -> Result<(), GroupError> {
        let state = self.group.read_linearizable().await?;
        let current = state.nodes.get(&self.node).map(|n| n.state);
        if current.is_none() {
            match self.group.propose_anywhere(&self.registration).await {
                Ok(_) | Err(GroupError::Rejected(MetadataError::DuplicateNode(_))) => {}
                Err(e) => return Err(e),
            }
        }
        if matches!(current, None | Some(NodeState::Joining)) {
            let active = Command::SetNodeState {
                node: self.node,
                state: NodeState::Active,
            };
            self.group.propose_anywhere(&active).await?;
        }
        Ok(())
    }

    /// A fresh registration backoff for this node.
    pub fn registration_backoff(&self, env: &sluice_proto::env::Env) -> Backoff {
        Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(5),
            env.rng(self.node.0, REGISTRATION_RNG_SALT),
        )
    }

    /// Serves one admin operation.
    pub async fn handle(&self, op: AdminOp) -> Result<AdminAnswer, AdminError> {
        match op {
            AdminOp::StreamCreate {
                name,
                n_partitions,
                factor,
                retention_age_ms_max,
                retention_bytes_max,
            } => {
                let name = stream_name(&name)?;
                let retention = Retention {
                    age_ms_max: retention_age_ms_max,
                    bytes_max: retention_bytes_max,
                };
                self.create_stream(name, n_partitions, factor, retention)
                    .await
            }
            AdminOp::StreamList => {
                let state = self.read().await?;
                let streams = state
                    .streams
                    .keys()
                    .filter_map(|name| stream_info(&state, name, false))
                    .collect();
                Ok(AdminAnswer::Streams(streams))
            }
            AdminOp::StreamDescribe { name } => {
                let name = stream_name(&name)?;
                let state = self.read().await?;
                let info =
                    stream_info(&state, &name, true).ok_or(AdminError::UnknownStream { name })?;
                Ok(AdminAnswer::Streams(vec![info]))
            }
            AdminOp::StreamDelete { name } => {
                let name = stream_name(&name)?;
                match self.propose(Command::DeleteStream { name }).await? {
                    Applied::StreamDeleted { n_partitions } => {
                        Ok(AdminAnswer::StreamDeleted { n_partitions })
                    }
                    other => Err(unexpected(&other)),
                }
            }
            AdminOp::AclAdd { identity, stream } => {
                let command = Command::AclAdd {
                    identity: identity_of(&identity)?,
                    stream: stream_name(&stream)?,
                };
                match self.propose(command).await? {
                    Applied::AclAdded { changed } => Ok(AdminAnswer::AclChanged { changed }),
                    other => Err(unexpected(&other)),
                }
            }
            AdminOp::AclRemove { identity, stream } => {
                let command = Command::AclRemove {
                    identity: identity_of(&identity)?,
                    stream: stream_name(&stream)?,
                };
                match self.propose(command).await? {
                    Applied::AclRemoved { changed } => Ok(AdminAnswer::AclChanged { changed }),
                    other => Err(unexpected(&other)),
                }
            }
            AdminOp::AclList => {
                let state = self.read().await?;
                let entries = state
                    .acls
                    .iter()
                    .map(|(identity, streams)| AclEntry {
                        identity: identity.clone(),
                        streams: streams.iter().cloned().collect(),
                    })
                    .collect();
                Ok(AdminAnswer::Acls(entries))
            }
            AdminOp::ClusterStatus => self.status().await,
            AdminOp::ClusterInit => self.init().await,
        }
    }

    /// A linearizable read; during an election of an initialized group it waits (within the
    /// metadata deadline) for a leader rather than failing at once.
    async fn read(&self) -> Result<MetadataState, AdminError> {
        self.wait_for_leader().await;
        self.group.read_linearizable().await.map_err(admin_error)
    }

    /// Waits until the group knows a leader, at most the metadata deadline; at once when the
    /// group was never initialized (no voters: no leader will come).
    async fn wait_for_leader(&self) {
        let mut metrics = self.group.metrics();
        let initialized = metrics
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .next()
            .is_some();
        if initialized {
            let _ = tokio::time::timeout(
                self.request_timeout(),
                metrics.wait_for(|m| m.current_leader.is_some()),
            )
            .await;
        }
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(
            self.config
                .cluster
                .as_ref()
                .map_or(10_000, |c| c.metadata.request_timeout_ms),
        )
    }

    async fn propose(&self, command: Command) -> Result<Applied, AdminError> {
        self.group
            .propose_anywhere(&command)
            .await
            .map_err(admin_error)
    }

    async fn create_stream(
        &self,
        name: StreamName,
        n_partitions: u32,
        factor: u32,
        retention: Retention,
    ) -> Result<AdminAnswer, AdminError> {
        if n_partitions == 0 || n_partitions > STREAM_PARTITIONS_MAX {
            return Err(AdminError::InvalidPartitionCount {
                n_partitions: u64::from(n_partitions),
                max: STREAM_PARTITIONS_MAX,
            });
        }
        if retention.age_ms_max == Some(0) || retention.bytes_max == Some(0) {
            return Err(AdminError::InvalidRequest {
                reason: "a retention bound of 0 would delete everything".into(),
            });
        }
        // The placement is decided on a linearizable read; the state machine checks it again
        // (active nodes, set sizes) when it applies the command.
        let state = self.read().await?;
        let n_active = state.n_active() as u64;
        if factor == 0 || u64::from(factor) > n_active {
            return Err(AdminError::InvalidReplicationFactor { factor, n_active });
        }
        let replicas = state.place_new_stream(&name, n_partitions, factor);
        let command = Command::CreateStream {
            name: name.clone(),
            factor,
            retention,
            replicas: replicas.clone(),
        };
        match self.propose(command).await? {
            Applied::StreamCreated { first_incarnation } => {
                let partitions = (0u32..)
                    .zip(&replicas)
                    .map(|(idx, set)| PartitionInfo {
                        partition: PartitionId(idx),
                        incarnation: first_incarnation + u64::from(idx),
                        replicas: set.iter().copied().collect(),
                        moving: false,
                    })
                    .collect();
                Ok(AdminAnswer::StreamCreated(StreamInfo {
                    name,
                    n_partitions,
                    factor,
                    retention_age_ms_max: retention.age_ms_max,
                    retention_bytes_max: retention.bytes_max,
                    partitions,
                }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn status(&self) -> Result<AdminAnswer, AdminError> {
        let state = self.read().await?;
        let metrics = self.group.metrics().borrow().clone();
        let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
        let nodes = state
            .nodes
            .iter()
            .map(|(id, record)| NodeStatus {
                id: *id,
                address: record.address.clone(),
                site: record.site.clone(),
                rack: record.rack.clone(),
                state: match record.state {
                    NodeState::Joining => AdminNodeState::Joining,
                    NodeState::Active => AdminNodeState::Active,
                    NodeState::Draining => AdminNodeState::Draining,
                    NodeState::Removed => AdminNodeState::Removed,
                },
                voter: voters.contains(&id.0),
                n_replicas: state
                    .partitions
                    .values()
                    .filter(|p| p.replicas.contains(id))
                    .count() as u32,
            })
            .collect();
        Ok(AdminAnswer::Cluster(ClusterStatus {
            node: self.node,
            leader: metrics.current_leader.map(NodeId),
            term: metrics.current_term,
            applied_index: metrics.last_applied.map_or(0, |l| l.index),
            nodes,
            n_streams: state.streams.len() as u32,
            n_partitions: state.partitions.len() as u32,
        }))
    }

    /// Forms the group from `initial_members`, waits until every member registered itself,
    /// then creates the config's streams and records its exact-identity ACL rules.
    async fn init(&self) -> Result<AdminAnswer, AdminError> {
        match self.group.initialize(self.members.clone()).await {
            Ok(()) => {}
            Err(GroupError::AlreadyInitialized) => return Err(AdminError::AlreadyInitialized),
            Err(e) => return Err(admin_error(e)),
        }
        info!(n_members = self.members.len(), "metadata group initialized");
        self.wait_for_members().await?;
        let mut n_streams = 0;
        for stream in &self.config.streams {
            let name = stream_name(&stream.name)?;
            let retention = Retention {
                age_ms_max: stream.retention_age_ms_max,
                bytes_max: stream.retention_bytes_max,
            };
            let factor = stream.bootstrap_factor(self.members.len());
            match self
                .create_stream(name, stream.partitions, factor, retention)
                .await
            {
                Ok(_) => n_streams += 1,
                Err(AdminError::StreamExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let (entries, n_acl_rules_skipped) = bootstrap_acl(&self.config);
        let mut n_acl_entries = 0;
        for (identity, stream) in entries {
            if let Applied::AclAdded { changed: true } =
                self.propose(Command::AclAdd { identity, stream }).await?
            {
                n_acl_entries += 1;
            }
        }
        info!(
            n_streams,
            n_acl_entries, n_acl_rules_skipped, "cluster bootstrap applied"
        );
        Ok(AdminAnswer::ClusterInitialized {
            n_streams,
            n_acl_entries,
            n_acl_rules_skipped,
        })
    }

    /// Waits (within the metadata deadline, retried) until every initial member is registered
    /// and active, so the bootstrap streams are placed over all of them.
    async fn wait_for_members(&self) -> Result<(), AdminError> {
        let mut metrics = self.group.metrics();
        let deadline = self.request_timeout();
        let wait = async {
            loop {
                let state = match self.read().await {
                    Ok(state) => state,
                    // An election right after the initialization: wait for its outcome.
                    Err(AdminError::Unavailable { .. }) => {
                        let _ = metrics.wait_for(|m| m.current_leader.is_some()).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let missing = self.members.keys().any(|id| {
                    state
                        .nodes
                        .get(id)
                        .is_none_or(|n| n.state != NodeState::Active)
                });
                if !missing {
                    return Ok(());
                }
                // The next applied entry may be a registration.
                let applied = metrics.borrow_and_update().last_applied;
                let _ = metrics.wait_for(|m| m.last_applied != applied).await;
            }
        };
        match tokio::time::timeout(deadline, wait).await {
            Ok(result) => result,
            Err(_) => Err(AdminError::Unavailable {
                reason: format!(
                    "not every initial member registered within {} ms: start them all, then \
                     create the config's streams with `sluice streams create`",
                    deadline.as_millis()
                ),
            }),
        }
    }
}

/// The metadata ACL entries the config's `[[acl]]` rules give at bootstrap (identity, stream),
/// and how many rules could not be expressed: the metadata ACL names exact identities, so a
/// rule whose identity has a `*` is left out; each produce pattern is expanded against the
/// config's streams.
pub fn bootstrap_acl(config: &NodeConfig) -> (Vec<(Identity, StreamName)>, u32) {
    let mut entries = Vec::new();
    let mut skipped = 0;
    for rule in &config.acl {
        let Ok(identity) = Identity::parse_uri(&rule.identity) else {
            skipped += 1;
            continue;
        };
        for stream in &config.streams {
            let Ok(name) = StreamName::new(stream.name.clone()) else {
                continue;
            };
            if rule.produce.iter().any(|p| glob_matches(p, &stream.name)) {
                entries.push((identity.clone(), name));
            }
        }
    }
    (entries, skipped)
}

fn stream_info(state: &MetadataState, name: &StreamName, partitions: bool) -> Option<StreamInfo> {
    let record = state.streams.get(name)?;
    let partitions = if partitions {
        (0..record.n_partitions)
            .filter_map(|idx| {
                let key = PartitionKey {
                    stream: name.clone(),
                    partition: PartitionId(idx),
                };
                let p = state.partitions.get(&key)?;
                Some(PartitionInfo {
                    partition: PartitionId(idx),
                    incarnation: p.incarnation,
                    replicas: p.replicas.iter().copied().collect(),
                    moving: p.moving.is_some(),
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    Some(StreamInfo {
        name: name.clone(),
        n_partitions: record.n_partitions,
        factor: record.factor,
        retention_age_ms_max: record.retention.age_ms_max,
        retention_bytes_max: record.retention.bytes_max,
        partitions,
    })
}

fn stream_name(name: &str) -> Result<StreamName, AdminError> {
    StreamName::new(name).map_err(|e| AdminError::InvalidName {
        what: "stream name".into(),
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

fn identity_of(uri: &str) -> Result<Identity, AdminError> {
    Identity::parse_uri(uri).map_err(|e| AdminError::InvalidName {
        what: "identity".into(),
        name: uri.to_owned(),
        reason: e.to_string(),
    })
}

fn unexpected(applied: &Applied) -> AdminError {
    AdminError::Rejected {
        reason: format!("unexpected answer of the metadata group: {applied:?}"),
    }
}

/// The admin error a metadata group error is.
fn admin_error(error: GroupError) -> AdminError {
    match error {
        GroupError::Rejected(e) => match e {
            MetadataError::DuplicateStream(name) => AdminError::StreamExists { name },
            MetadataError::UnknownStream(name) => AdminError::UnknownStream { name },
            MetadataError::InvalidReplicationFactor { factor, n_active } => {
                AdminError::InvalidReplicationFactor { factor, n_active }
            }
            MetadataError::InvalidPartitionCount { n_partitions, max } => {
                AdminError::InvalidPartitionCount { n_partitions, max }
            }
            other => AdminError::Rejected {
                reason: other.to_string(),
            },
        },
        GroupError::AlreadyInitialized => AdminError::AlreadyInitialized,
        GroupError::Membership { reason } => AdminError::Rejected { reason },
        e @ (GroupError::NotLeader { .. }
        | GroupError::Unavailable { .. }
        | GroupError::Stopped { .. }) => AdminError::Unavailable {
            reason: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_acl_expands_exact_identities_and_skips_patterns() {
        // Checks the bootstrap's translation of [[acl]] rules: an exact identity gets one entry
        // per configured stream its produce patterns match, a rule with an identity pattern is
        // counted as skipped, consume patterns add nothing.
        let config = crate::config::from_toml(
            "[node]\nid = 1\ncluster = \"c\"\ndata_dir = \"d\"\n[transport]\nlisten = \"127.0.0.1:0\"\n\
             ca_cert = \"a\"\ncert = \"b\"\nkey = \"c\"\n\
             [[streams]]\nname = \"temps\"\npartitions = 1\n[[streams]]\nname = \"doors\"\npartitions = 1\n\
             [[streams]]\nname = \"audit\"\npartitions = 1\n\
             [[acl]]\nidentity = \"sluice://c/edge/pi-1\"\nproduce = [\"t*\", \"doors\"]\nconsume = [\"audit\"]\n\
             [[acl]]\nidentity = \"sluice://c/edge/*\"\nproduce = [\"*\"]\n",
        )
        .unwrap();
        let (entries, skipped) = bootstrap_acl(&config);
        let pi = Identity::parse_uri("sluice://c/edge/pi-1").unwrap();
        let names: Vec<(Identity, String)> = entries
            .into_iter()
            .map(|(i, s)| (i, s.as_str().to_owned()))
            .collect();
        assert_eq!(
            names,
            vec![(pi.clone(), "temps".to_owned()), (pi, "doors".to_owned())]
        );
        assert_eq!(skipped, 1);
    }

    #[test]
    fn metadata_rejections_become_typed_admin_errors() {
        // Checks the mapping of the metadata group's errors to what an admin client is told.
        let name = StreamName::new("s").unwrap();
        for (error, expected) in [
            (
                GroupError::Rejected(MetadataError::DuplicateStream(name.clone())),
                AdminError::StreamExists { name: name.clone() },
            ),
            (
                GroupError::Rejected(MetadataError::UnknownStream(name.clone())),
                AdminError::UnknownStream { name: name.clone() },
            ),
            (
                GroupError::AlreadyInitialized,
                AdminError::AlreadyInitialized,
            ),
            (
                GroupError::Unavailable { reason: "x".into() },
                AdminError::Unavailable {
                    reason: "metadata group unavailable: x".into(),
                },
            ),
        ] {
            assert_eq!(admin_error(error), expected);
        }
        assert_eq!(
            stream_name("../x").map_err(|e| matches!(e, AdminError::InvalidName { .. })),
            Err(true)
        );
    }
}
