//! A partition group end to end: three replicas on their own `CrashDisk`s, connected by the
//! in-process transport of `raft::testing`, on one current-thread tokio runtime with paused time
//! and a fixed runtime seed. Waits are on the replicas' metrics and committed ends with a
//! deadline of virtual time, never sleeps.

use super::*;
use crate::raft::network::GroupAddress;
use crate::raft::testing::{run_paused, PausedClock, TestNet};
use openraft::ServerState;
use sluice_proto::env::{BlockingMode, PeerGroup};
use sluice_proto::testing::CrashDisk;
use sluice_proto::{NodeId, PartitionId, StreamName};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const CLUSTER: &str = "test";
/// Virtual time any wait may take: many election timeouts.
const WAIT: Duration = Duration::from_secs(120);

/// Records every committed range it is given, as the node's producer table would learn them.
#[derive(Default)]
struct Recorder(Vec<(u64, u32, Vec<u8>)>);

impl PartitionApplier for Recorder {
    fn apply(&mut self, base: Offset, count: u32, events: &[u8]) {
        self.0.push((base.0, count, events.to_vec()));
    }
}

type Replica = PartitionGroup<Recorder>;

fn group_address() -> GroupAddress {
    GroupAddress {
        cluster: CLUSTER.into(),
        group: PeerGroup::Partition {
            stream: StreamName::new("sensors").unwrap(),
            partition: PartitionId(0),
        },
        incarnation: 7,
    }
}

struct TestCluster {
    net: TestNet,
    seed: u64,
    disks: BTreeMap<NodeId, CrashDisk>,
    replicas: BTreeMap<NodeId, Replica>,
}

impl TestCluster {
    async fn start(n: u64, seed: u64) -> TestCluster {
        let mut cluster = TestCluster {
            net: TestNet::new(CLUSTER),
            seed,
            disks: BTreeMap::new(),
            replicas: BTreeMap::new(),
        };
        for id in 1..=n {
            cluster.disks.insert(NodeId(id), CrashDisk::new());
            cluster.start_node(NodeId(id)).await;
        }
        cluster
    }

    async fn start_node(&mut self, id: NodeId) {
        let env = Env {
            clock: Arc::new(PausedClock),
            disk: Arc::new(self.disks[&id].mount()),
            blocking: BlockingMode::Inline,
            seed: self.seed,
        };
        let spec = ReplicaSpec {
            node: id,
            dir: Path::new("/data/partitions/sensors/0"),
            address: group_address(),
            rng_salt: partition_rng_salt(7),
        };
        let config = PartitionGroupConfig {
            // Small enough that the reads below start from several index points.
            index_interval_bytes: 8,
            read_entries_per_step: 2,
            ..PartitionGroupConfig::default()
        };
        let replica = PartitionGroup::start(
            &env,
            spec,
            self.net.transport(id),
            &config,
            Recorder::default(),
        )
        .await
        .unwrap();
        self.net.register(id, replica.group().handler());
        self.replicas.insert(id, replica);
    }

    async fn stop_node(&mut self, id: NodeId) {
        self.net.unregister(id);
        let replica = self.replicas.remove(&id).unwrap();
        replica.group().shutdown().await.unwrap();
        self.disks[&id].close_all();
    }

    fn replica(&self, id: NodeId) -> &Replica {
        &self.replicas[&id]
    }

    async fn initialize(&self) -> NodeId {
        let members = self
            .replicas
            .keys()
            .map(|id| (*id, format!("n{}:7000", id.0)))
            .collect();
        self.replica(NodeId(1))
            .group()
            .initialize(members)
            .await
            .unwrap();
        self.ready_leader(&self.replicas.keys().copied().collect::<Vec<_>>(), None)
            .await
    }

    /// Waits until a replica of `among` other than `not` leads with its whole log applied.
    async fn ready_leader(&self, among: &[NodeId], not: Option<NodeId>) -> NodeId {
        let metrics = self
            .replica(among[0])
            .group()
            .wait(WAIT)
            .metrics(
                |m| {
                    m.current_leader
                        .is_some_and(|l| among.contains(&NodeId(l)) && Some(NodeId(l)) != not)
                },
                "a leader",
            )
            .await
            .unwrap();
        let leader = NodeId(metrics.current_leader.unwrap());
        let group = self.replica(leader).group();
        group
            .wait(WAIT)
            .metrics(
                |m| {
                    m.state == ServerState::Leader
                        && m.last_applied.is_some_and(|a| {
                            a.leader_id.term == m.current_term && Some(a.index) == m.last_log_index
                        })
                },
                "leader with its log applied",
            )
            .await
            .unwrap();
        assert!(self.replica(leader).leader_next_offset().is_some());
        leader
    }

    /// Waits until each of `nodes` has committed offsets up to `end`.
    async fn committed(&self, nodes: &[NodeId], end: u64) {
        for id in nodes {
            let mut committed = self.replica(*id).committed();
            tokio::time::timeout(WAIT, committed.wait_for(|c| c.next_offset >= Offset(end)))
                .await
                .unwrap()
                .unwrap();
        }
    }

    fn read_all(&self, id: NodeId) -> Vec<(u64, u32, Vec<u8>)> {
        self.replica(id)
            .read(Offset(0), usize::MAX)
            .unwrap()
            .into_iter()
            .map(|b| (b.base.0, b.count, b.events))
            .collect()
    }

    fn applied_ranges(&self, id: NodeId) -> Vec<(u64, u32, Vec<u8>)> {
        self.replica(id).with_applier(|r, _| r.0.clone())
    }
}

fn nodes(ids: &[u64]) -> Vec<NodeId> {
    ids.iter().map(|i| NodeId(*i)).collect()
}

/// `count` one-byte events, all `byte`.
fn events(count: u32, byte: u8) -> Vec<u8> {
    vec![byte; count as usize]
}

/// Proposes batches of 1..=`n` events on `leader` from its next offset; returns the end.
async fn propose_some(cluster: &TestCluster, leader: NodeId, n: u32, byte: u8) -> u64 {
    let replica = cluster.replica(leader);
    let mut next = replica.leader_next_offset().unwrap();
    for count in 1..=n {
        replica
            .propose(next, count, &events(count, byte))
            .await
            .unwrap();
        next = Offset(next.0 + u64::from(count));
    }
    next.0
}

#[test]
fn three_replicas_commit_batches_with_dense_offsets_and_every_replica_reads_them() {
    // Checks that batches committed on the leader take dense offsets from 0 although raft
    // indexes also count the initial membership and the leader's blank entry; that every
    // replica reads the same batches at the same offsets and fed its applier the same ranges;
    // and that a read from an offset inside a batch starts with that batch and a bounded read
    // stops after the bytes it was given.
    run_paused(1, async {
        let cluster = TestCluster::start(3, 1).await;
        let leader = cluster.initialize().await;
        assert_eq!(
            cluster.replica(leader).leader_next_offset(),
            Some(Offset(0))
        );
        let end = propose_some(&cluster, leader, 5, b'a').await;
        assert_eq!(end, 15);
        let all = nodes(&[1, 2, 3]);
        cluster.committed(&all, end).await;

        let expected: Vec<(u64, u32, Vec<u8>)> = [(0, 1), (1, 2), (3, 3), (6, 4), (10, 5)]
            .into_iter()
            .map(|(base, count)| (base, count, events(count, b'a')))
            .collect();
        for id in &all {
            assert_eq!(cluster.read_all(*id), expected, "node {id}");
            assert_eq!(cluster.applied_ranges(*id), expected, "node {id}");
        }
        let first = cluster.replica(leader).read(Offset(0), 1).unwrap();
        assert_eq!(first.len(), 1);
        // Index 0 holds the initial membership, 1 the leader's blank entry.
        assert_eq!((first[0].base, first[0].index), (Offset(0), 2));
        let inside = cluster.replica(NodeId(2)).read(Offset(7), 5).unwrap();
        let bases: Vec<u64> = inside.iter().map(|b| b.base.0).collect();
        assert_eq!(bases, vec![6, 10]);
        let bounded = cluster.replica(NodeId(3)).read(Offset(2), 3).unwrap();
        let bases: Vec<u64> = bounded.iter().map(|b| b.base.0).collect();
        assert_eq!(bases, vec![1, 3]);
        assert!(cluster
            .replica(leader)
            .read(Offset(15), 100)
            .unwrap()
            .is_empty());
    });
}

#[test]
fn a_batch_from_a_stale_state_is_void_on_every_replica() {
    // Checks that a batch whose base is not the partition's next offset is committed void: the
    // proposer gets NotNext with the real next offset, no replica reads it or applies it, and
    // the partition goes on from where it was.
    run_paused(2, async {
        let cluster = TestCluster::start(3, 2).await;
        let leader = cluster.initialize().await;
        let end = propose_some(&cluster, leader, 2, b'a').await;
        let stale = cluster.replica(leader).propose(Offset(1), 2, b"zz").await;
        assert_eq!(
            stale,
            Err(ProposeError::NotNext {
                expected: Offset(end),
                got: Offset(1)
            })
        );
        cluster
            .replica(leader)
            .propose(Offset(end), 1, b"b")
            .await
            .unwrap();
        let all = nodes(&[1, 2, 3]);
        cluster.committed(&all, end + 1).await;
        for id in &all {
            let read = cluster.read_all(*id);
            assert_eq!(read.len(), 3, "node {id}");
            assert!(read.iter().all(|(_, _, e)| !e.contains(&b'z')));
            assert_eq!(cluster.applied_ranges(*id), read);
        }
        // Every replica applied the void entry too, and counted it.
        for id in &all {
            let group = cluster.replica(*id).group();
            group
                .wait(WAIT)
                .applied_index_at_least(
                    cluster
                        .replica(leader)
                        .group()
                        .metrics()
                        .borrow()
                        .last_applied
                        .map(|l| l.index),
                    "applied",
                )
                .await
                .unwrap();
            assert_eq!(cluster.replica(*id).n_void(), 1, "node {id}");
        }
    });
}

#[test]
fn a_cut_off_leader_commits_nothing_and_its_successor_continues_the_offsets() {
    // Checks that a leader cut off from the others cannot commit (its proposal is unavailable
    // and its own replica never reads the uncommitted batch), that the others elect a leader
    // which continues from the committed end, and that after the heal the old leader holds
    // exactly the new leader's partition, without the batch it was given.
    run_paused(3, async {
        let cluster = TestCluster::start(3, 3).await;
        let old = cluster.initialize().await;
        let end = propose_some(&cluster, old, 3, b'a').await;
        let all = nodes(&[1, 2, 3]);
        cluster.committed(&all, end).await;

        cluster.net.cut(old);
        let lost = cluster.replica(old).propose(Offset(end), 2, b"xx").await;
        assert!(
            matches!(
                lost,
                Err(ProposeError::Group(RaftGroupError::Unavailable { .. }))
            ),
            "{lost:?}"
        );
        assert_eq!(
            cluster.replica(old).committed().borrow().next_offset,
            Offset(end)
        );
        assert_eq!(cluster.read_all(old).len(), 3);

        let rest: Vec<NodeId> = all.iter().copied().filter(|n| *n != old).collect();
        let new = cluster.ready_leader(&rest, Some(old)).await;
        assert_eq!(cluster.replica(new).leader_next_offset(), Some(Offset(end)));
        let end = propose_some(&cluster, new, 2, b'b').await;

        cluster.net.heal(old);
        cluster.committed(&all, end).await;
        let expected = cluster.read_all(new);
        assert_eq!(expected.len(), 5);
        for id in &all {
            assert_eq!(cluster.read_all(*id), expected, "node {id}");
            assert_eq!(cluster.applied_ranges(*id), expected, "node {id}");
            assert!(cluster
                .read_all(*id)
                .iter()
                .all(|(_, _, e)| !e.contains(&b'x')));
        }
    });
}

#[test]
fn a_restarted_replica_rebuilds_its_offsets_and_applier_from_its_own_log() {
    // Checks that a replica stopped and started again from its disk (cut off, so nothing can
    // come from its peers) has re-applied its committed log before `start` returns: the same
    // committed end, reads and applier ranges as before; and that it then catches up.
    run_paused(4, async {
        let mut cluster = TestCluster::start(3, 4).await;
        let leader = cluster.initialize().await;
        let end = propose_some(&cluster, leader, 4, b'a').await;
        let all = nodes(&[1, 2, 3]);
        cluster.committed(&all, end).await;
        let follower = all.iter().copied().find(|n| *n != leader).unwrap();
        let before = cluster.read_all(follower);

        cluster.stop_node(follower).await;
        cluster.net.cut(follower);
        cluster.start_node(follower).await;
        assert_eq!(
            cluster.replica(follower).committed().borrow().next_offset,
            Offset(end)
        );
        assert_eq!(cluster.read_all(follower), before);
        assert_eq!(cluster.applied_ranges(follower), before);

        let leader = cluster
            .ready_leader(
                &all.iter()
                    .copied()
                    .filter(|n| *n != follower)
                    .collect::<Vec<_>>(),
                None,
            )
            .await;
        let end = propose_some(&cluster, leader, 2, b'b').await;
        cluster.net.heal(follower);
        cluster.committed(&[follower], end).await;
        assert_eq!(cluster.read_all(follower), cluster.read_all(leader));
    });
}
