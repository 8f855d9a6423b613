//! A replicated partition on one node: the shell joining a [`PartitionCore`] to the partition's
//! raft group ([`PartitionGroup`]). Every replica feeds the committed log into a replica core
//! ([`ReplicaProducers`], the group's applier: the producer table rebuilt from the log, on
//! followers too, and again at every start). The replica that leads with its whole log applied
//! takes a successor of that core ([`PartitionCore::replicated_successor`]) and serves produce
//! requests with it: each group commit the core asks for (`Output::Persist`) becomes one batch
//! proposed to the group, and the core's flush completes only when a quorum of the replica set
//! fsynced it, so acks say `QuorumFsync`. A proposal that fails (leadership lost, no quorum in
//! time, committed void because the state was stale) fences that core: its waiting requests are
//! answered `Unavailable` (the records may have been stored; a retry is deduplicated by
//! whichever replica leads), and a new core is taken only once this replica again leads with
//! everything applied, so it never hands out an offset a committed batch holds.
//!
//! A replica that does not lead answers produce requests `Unavailable` naming the leader it
//! knows. Reads go to [`PartitionGroup::read`] on any replica: committed batches only.
//!
//! Not yet here: the node's registry and service use of it, a typed `NotLeader` answer with the
//! leader's address for clients to follow, and supervision of a stopped group (the driver ends
//! and the partition refuses produce requests).

use super::core::{CoreConfig, Input, Output, PartitionCore, ProduceItem};
use crate::log::PendingEntry;
use sluice_cluster::raft::group::{GroupStartError, ReplicaSpec};
use sluice_cluster::raft::partition_group::{
    PartitionApplier, PartitionGroup, PartitionGroupConfig, ProposeError,
};
use sluice_proto::codec;
use sluice_proto::env::{Clock, Env, PeerTransport};
use sluice_proto::msg::{RecordOutcome, RecordRejection};
use sluice_proto::{Event, Identity, Offset, PartitionId};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

/// The group's applier: a replica core fed every committed event in log order, by
/// [`PartitionCore::recover_event`] as a restart would.
pub struct ReplicaProducers {
    core: PartitionCore,
    clock: Arc<dyn Clock>,
    n_undecodable: u64,
}

impl ReplicaProducers {
    /// An empty replica core of `partition`.
    pub fn new(partition: PartitionId, config: CoreConfig, clock: Arc<dyn Clock>) -> Self {
        ReplicaProducers {
            core: PartitionCore::new(partition, config, Offset(0)),
            clock,
            n_undecodable: 0,
        }
    }

    /// Committed events that did not decode (each took its offset; its producer state is not
    /// known, so a retry of it could not be recognized). Zero unless a proposer wrote garbage.
    pub fn n_undecodable(&self) -> u64 {
        self.n_undecodable
    }
}

impl PartitionApplier for ReplicaProducers {
    fn apply(&mut self, base: Offset, count: u32, events: &[u8]) {
        let now = self.clock.now();
        let mut rest = events;
        for i in 0..count {
            let offset = Offset(base.0 + u64::from(i));
            match codec::decode_prefix::<Event>(rest) {
                Ok((event, used)) => {
                    self.core.recover_event(now, offset, &event);
                    rest = &rest[used..];
                }
                Err(e) => {
                    self.n_undecodable += u64::from(count - i);
                    error!(offset = offset.0, error = %e, "a committed batch holds an event that does not decode");
                    break;
                }
            }
        }
        self.core.finish_recovery(Offset(base.0 + u64::from(count)));
    }
}

/// Bounds of a replicated partition's shell.
#[derive(Debug, Clone, Copy)]
pub struct ReplicatedConfig {
    /// The partition core's bounds.
    pub core: CoreConfig,
    /// Produce requests queued for the driver beyond which new ones are refused `Overloaded`.
    pub queue_max: u32,
    /// How often a replica that cannot serve checks again whether it leads (the group's
    /// metrics also wake it; this bounds a missed wake-up).
    pub leadership_poll: Duration,
}

/// Why a replicated partition did not start.
pub type StartError = GroupStartError;

enum Command {
    Produce {
        producer: Arc<Identity>,
        items: Vec<ProduceItem>,
        reply: oneshot::Sender<Vec<RecordOutcome>>,
    },
}

/// The handle of one replicated partition replica. Cheap to clone.
#[derive(Clone)]
pub struct ReplicatedPartition {
    partition: PartitionId,
    group: PartitionGroup<ReplicaProducers>,
    commands: mpsc::Sender<Command>,
}

type Proposal = Pin<Box<dyn Future<Output = Result<(), ProposeError>> + Send>>;

impl ReplicatedPartition {
    /// Opens (or recovers) the replica `spec` of `partition` and starts its driver task.
    pub async fn start(
        env: &Env,
        partition: PartitionId,
        spec: ReplicaSpec<'_>,
        peers: Arc<dyn PeerTransport>,
        group_config: &PartitionGroupConfig,
        config: ReplicatedConfig,
    ) -> Result<ReplicatedPartition, StartError> {
        let applier = ReplicaProducers::new(partition, config.core, env.clock.clone());
        let group = PartitionGroup::start(env, spec, peers, group_config, applier).await?;
        let (commands, inbox) = mpsc::channel(config.queue_max.max(1) as usize);
        let driver = Driver {
            partition,
            group: group.clone(),
            clock: env.clock.clone(),
            config,
            core: None,
            in_flight: None,
            tickets: BTreeMap::new(),
            next_ticket: 0,
        };
        tokio::spawn(driver.run(inbox));
        Ok(ReplicatedPartition {
            partition,
            group,
            commands,
        })
    }

    /// The partition's raft group (reads, committed end, membership, handler, shutdown).
    pub fn group(&self) -> &PartitionGroup<ReplicaProducers> {
        &self.group
    }

    /// Appends `items` for `producer`: one outcome per item, answered once the records are
    /// committed on a quorum (or refused).
    pub async fn produce(
        &self,
        producer: Arc<Identity>,
        items: Vec<ProduceItem>,
    ) -> Vec<RecordOutcome> {
        let n = items.len();
        let refuse = |rejection: RecordRejection| vec![RecordOutcome::Rejected(rejection); n];
        let (reply, answer) = oneshot::channel();
        let command = Command::Produce {
            producer,
            items,
            reply,
        };
        match self.commands.try_send(command) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return refuse(RecordRejection::Overloaded {
                    partition: self.partition.0,
                })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return refuse(self.unavailable("the partition's driver stopped"))
            }
        }
        match answer.await {
            Ok(outcomes) => outcomes,
            Err(_) => refuse(self.unavailable("the partition's driver stopped")),
        }
    }

    fn unavailable(&self, reason: &str) -> RecordRejection {
        RecordRejection::Unavailable {
            partition: self.partition.0,
            reason: reason.to_string(),
        }
    }
}

/// The driver task's state.
struct Driver {
    partition: PartitionId,
    group: PartitionGroup<ReplicaProducers>,
    clock: Arc<dyn Clock>,
    config: ReplicatedConfig,
    /// The serving core, while this replica leads.
    core: Option<PartitionCore>,
    /// The proposal of the core's flush in flight.
    in_flight: Option<Proposal>,
    tickets: BTreeMap<u64, oneshot::Sender<Vec<RecordOutcome>>>,
    next_ticket: u64,
}

impl Driver {
    async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        let mut metrics = self.group.group().metrics();
        loop {
            self.take_leadership();
            let poll = tokio::time::sleep(self.config.leadership_poll);
            tokio::select! {
                biased;
                result = proposed(&mut self.in_flight), if self.in_flight.is_some() =>
                {
                    self.in_flight = None;
                    self.flushed(result);
                }
                command = inbox.recv() => match command {
                    Some(command) => self.command(command),
                    None => break,
                },
                changed = metrics.changed() => {
                    if changed.is_err() {
                        // The group stopped.
                        break;
                    }
                    self.check_leadership();
                }
                _ = poll, if self.core.is_none() => {}
            }
        }
        // Dropping the waiting replies answers their requests `Unavailable`.
        self.tickets.clear();
        info!(
            partition_id = self.partition.0,
            "replicated partition driver stopped"
        );
    }

    /// Takes a serving core when this replica leads with its whole log applied and has none.
    fn take_leadership(&mut self) {
        if self.core.is_some() || self.in_flight.is_some() {
            return;
        }
        if self.group.leader_next_offset().is_none() {
            return;
        }
        let core = self.group.with_applier(|replica, next| {
            debug_assert_eq!(replica.core.durable(), next);
            replica.core.replicated_successor()
        });
        info!(
            partition_id = self.partition.0,
            next_offset = core.next_offset().0,
            "leading the partition"
        );
        self.core = Some(core);
    }

    /// Fences the serving core when this replica no longer leads.
    fn check_leadership(&mut self) {
        if !self.group.group().is_leader() && self.core.is_some() && self.in_flight.is_none() {
            // Nothing in flight: requests waiting are those the core could not persist yet.
            self.fence("leadership lost".into());
        }
    }

    /// Drops the serving core. Only with nothing in flight: then nothing waits in it (a core
    /// persists whatever it accepted at once when no flush is in flight).
    fn fence(&mut self, reason: String) {
        debug_assert!(self.in_flight.is_none() && self.tickets.is_empty());
        info!(partition_id = self.partition.0, %reason, "no longer serving the partition");
        self.core = None;
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Produce {
                producer,
                items,
                reply,
            } => {
                let Some(core) = self.core.as_mut() else {
                    let leader = self.group.group().leader();
                    let reason = match leader {
                        Some(l) if l.node != self.group.group().node() => {
                            format!(
                                "not the leader; the leader is node {} at {}",
                                l.node, l.address
                            )
                        }
                        _ => "no leader ready yet".to_string(),
                    };
                    let n = items.len();
                    let rejection = RecordRejection::Unavailable {
                        partition: self.partition.0,
                        reason,
                    };
                    let _ = reply.send(vec![RecordOutcome::Rejected(rejection); n]);
                    return;
                };
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.tickets.insert(ticket, reply);
                core.handle(
                    self.clock.now(),
                    Input::Produce {
                        ticket,
                        producer,
                        items,
                    },
                );
                self.drain();
            }
        }
    }

    fn flushed(&mut self, result: Result<(), ProposeError>) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let failed = result.as_ref().err().map(|e| e.to_string());
        if let Some(reason) = &failed {
            warn!(partition_id = self.partition.0, %reason, "a proposal failed: answering its requests unavailable, serving again once leading with the whole log applied");
        }
        core.handle(
            self.clock.now(),
            Input::Flushed(result.map_err(|e| e.to_string())),
        );
        self.drain();
        if failed.is_some() {
            self.core = None;
        }
    }

    /// Executes the core's outputs.
    fn drain(&mut self) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        while let Some(output) = core.poll_output() {
            match output {
                Output::Persist(entries) => {
                    let group = self.group.clone();
                    let (base, count, events) = one_batch(entries);
                    self.in_flight = Some(Box::pin(async move {
                        group.propose(base, count, &events).await
                    }));
                }
                Output::Reply { ticket, outcomes } => {
                    if let Some(reply) = self.tickets.remove(&ticket) {
                        let _ = reply.send(outcomes);
                    }
                }
                Output::Durable(_) => {}
                Output::Fenced(_) => {}
            }
        }
    }
}

/// The outcome of the proposal in flight; never resolves without one.
async fn proposed(in_flight: &mut Option<Proposal>) -> Result<(), ProposeError> {
    match in_flight {
        Some(proposal) => proposal.await,
        None => std::future::pending().await,
    }
}

/// The entries of one group commit (contiguous, in order) as one batch.
fn one_batch(entries: Vec<PendingEntry>) -> (Offset, u32, Vec<u8>) {
    let base = entries.first().map_or(Offset(0), |e| e.base);
    let count = entries.iter().map(|e| e.count).sum();
    let mut events = Vec::with_capacity(entries.iter().map(|e| e.body.len()).sum());
    for entry in entries {
        events.extend_from_slice(&entry.body);
    }
    (base, count, events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_cluster::raft::network::GroupAddress;
    use sluice_cluster::raft::partition_group::partition_rng_salt;
    use sluice_cluster::raft::testing::{run_paused, PausedClock, TestNet};
    use sluice_proto::env::{BlockingMode, PeerGroup};
    use sluice_proto::msg::Durability;
    use sluice_proto::testing::CrashDisk;
    use sluice_proto::{
        BootEpoch, NodeId, Payload, Reading, Role, SensorId, StreamName, UnixMillis,
    };
    use std::path::Path;

    /// Virtual time any wait may take: many election timeouts.
    const WAIT: Duration = Duration::from_secs(120);

    fn config() -> ReplicatedConfig {
        ReplicatedConfig {
            core: CoreConfig {
                dedup_window_max: 64,
                producers_max: 16,
                producers_per_identity_max: 16,
                producer_idle_expiry: Duration::from_secs(3600),
                pending_bytes_max: 1 << 20,
                waiting_requests_max: 64,
                entry_events_max: 4,
            },
            queue_max: 64,
            leadership_poll: Duration::from_millis(200),
        }
    }

    fn producer() -> Arc<Identity> {
        Arc::new(Identity::new("test", Role::Edge, "pi-1").unwrap())
    }

    /// Record `seq` of sensor `s`, stamped with the producing identity as the service does.
    fn item(sensor: &str, seq: u64) -> ProduceItem {
        let event = Event {
            producer: (*producer()).clone(),
            sensor: SensorId::new(sensor).unwrap(),
            boot_epoch: BootEpoch(1),
            seq,
            device_time: UnixMillis(0),
            received_time: UnixMillis(0),
            payload: Payload::Reading(Reading::Temperature { celsius: 20.0 }),
        };
        ProduceItem {
            sensor: event.sensor.clone(),
            boot_epoch: BootEpoch(1),
            seq,
            seq_last: seq,
            encoded: codec::encode(&event).unwrap(),
        }
    }

    fn items(sensor: &str, seqs: std::ops::Range<u64>) -> Vec<ProduceItem> {
        seqs.map(|s| item(sensor, s)).collect()
    }

    /// `(offset, duplicate)` of appended outcomes, `None` for a rejection.
    fn offsets(outcomes: &[RecordOutcome]) -> Vec<Option<(u64, bool)>> {
        outcomes
            .iter()
            .map(|o| match o {
                RecordOutcome::Appended {
                    offset,
                    duplicate,
                    durability,
                    ..
                } => {
                    assert_eq!(*durability, Durability::QuorumFsync);
                    Some((offset.0, *duplicate))
                }
                RecordOutcome::Rejected(_) => None,
            })
            .collect()
    }

    struct Cluster {
        net: TestNet,
        replicas: BTreeMap<NodeId, ReplicatedPartition>,
    }

    impl Cluster {
        async fn start(seed: u64) -> Cluster {
            let net = TestNet::new("test");
            let mut replicas = BTreeMap::new();
            for id in 1..=3 {
                let id = NodeId(id);
                let env = Env {
                    clock: Arc::new(PausedClock),
                    disk: Arc::new(CrashDisk::new().mount()),
                    blocking: BlockingMode::Inline,
                    seed,
                };
                let spec = ReplicaSpec {
                    node: id,
                    dir: Path::new("/data/partitions/sensors/0"),
                    address: GroupAddress {
                        cluster: "test".into(),
                        group: PeerGroup::Partition {
                            stream: StreamName::new("sensors").unwrap(),
                            partition: PartitionId(0),
                        },
                        incarnation: 3,
                    },
                    rng_salt: partition_rng_salt(3),
                };
                let replica = ReplicatedPartition::start(
                    &env,
                    PartitionId(0),
                    spec,
                    net.transport(id),
                    &PartitionGroupConfig::default(),
                    config(),
                )
                .await
                .unwrap();
                net.register(id, replica.group().group().handler());
                replicas.insert(id, replica);
            }
            let members = (1..=3).map(|i| (NodeId(i), format!("n{i}:7000"))).collect();
            replicas[&NodeId(1)]
                .group()
                .group()
                .initialize(members)
                .await
                .unwrap();
            Cluster { net, replicas }
        }

        /// Produces on every replica of `among` until one accepts; returns it and the outcomes.
        async fn produce_on_leader(
            &self,
            among: &[NodeId],
            batch: Vec<ProduceItem>,
        ) -> (NodeId, Vec<RecordOutcome>) {
            // One receiver for the whole wait, marked seen: `changed` then waits for news.
            let mut metrics = self.replicas[&among[0]].group().group().metrics();
            metrics.borrow_and_update();
            let attempts = async {
                loop {
                    for id in among {
                        let outcomes = self.replicas[id].produce(producer(), batch.clone()).await;
                        if outcomes
                            .iter()
                            .all(|o| matches!(o, RecordOutcome::Appended { .. }))
                        {
                            return (*id, outcomes);
                        }
                    }
                    // Wait for the group to move (an election), not for a fixed time: the
                    // next change of a replica's metrics, or a heartbeat interval.
                    let _ = tokio::time::timeout(Duration::from_secs(1), metrics.changed()).await;
                }
            };
            match tokio::time::timeout(WAIT, attempts).await {
                Ok(accepted) => accepted,
                Err(_) => panic!("no replica of {among:?} accepted the batch"),
            }
        }

        fn read_offsets(&self, id: NodeId) -> Vec<(u64, u32)> {
            self.replicas[&id]
                .group()
                .read(Offset(0), usize::MAX)
                .unwrap()
                .iter()
                .map(|b| (b.base.0, b.count))
                .collect()
        }
    }

    #[test]
    fn the_leader_acks_quorum_commits_and_a_retry_after_failover_gets_the_original_offsets() {
        // Checks the replicated produce path: only the leader accepts (the others answer
        // Unavailable), acks say QuorumFsync with dense offsets, a retry on the same leader is
        // a duplicate with the original offsets; then the leader is cut off, and the same
        // retry sent to the new leader is answered with the original offsets too (the producer
        // table is part of the replicated state), new records continue the offsets, and after
        // the heal every replica reads the same batches.
        run_paused(11, async {
            let cluster = Cluster::start(11).await;
            let all: Vec<NodeId> = (1..=3).map(NodeId).collect();
            let first = items("t1", 0..6);
            let (leader, outcomes) = cluster.produce_on_leader(&all, first.clone()).await;
            let expected: Vec<Option<(u64, bool)>> = (0..6).map(|o| Some((o, false))).collect();
            assert_eq!(offsets(&outcomes), expected);
            for id in all.iter().filter(|i| **i != leader) {
                let refused = cluster.replicas[id]
                    .produce(producer(), items("t1", 6..7))
                    .await;
                assert!(
                    matches!(
                        refused[0],
                        RecordOutcome::Rejected(RecordRejection::Unavailable { .. })
                    ),
                    "{refused:?}"
                );
            }
            let again = cluster.replicas[&leader]
                .produce(producer(), first.clone())
                .await;
            let duplicates: Vec<Option<(u64, bool)>> = (0..6).map(|o| Some((o, true))).collect();
            assert_eq!(offsets(&again), duplicates);

            cluster.net.cut(leader);
            let rest: Vec<NodeId> = all.iter().copied().filter(|i| *i != leader).collect();
            let (new, retried) = cluster.produce_on_leader(&rest, first.clone()).await;
            assert_ne!(new, leader);
            assert_eq!(offsets(&retried), duplicates);
            let (_, more) = cluster.produce_on_leader(&[new], items("t1", 6..9)).await;
            let continued: Vec<Option<(u64, bool)>> = (6..9).map(|o| Some((o, false))).collect();
            assert_eq!(offsets(&more), continued);

            cluster.net.heal(leader);
            for id in &all {
                let mut committed = cluster.replicas[id].group().committed();
                tokio::time::timeout(WAIT, committed.wait_for(|c| c.next_offset >= Offset(9)))
                    .await
                    .unwrap()
                    .unwrap();
            }
            let reads = cluster.read_offsets(new);
            assert_eq!(reads.iter().map(|(_, c)| *c as u64).sum::<u64>(), 9);
            for id in &all {
                assert_eq!(cluster.read_offsets(*id), reads, "node {id}");
            }
        });
    }
}
