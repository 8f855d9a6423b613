//! The metadata group end to end: three replicas on their own `CrashDisk`s, connected by the
//! in-process transport of `raft::testing`, on one current-thread tokio runtime with paused time
//! and a fixed runtime seed (so every run is the same run). Waits are on the replicas' metrics
//! with a deadline of virtual time, never sleeps.

use super::*;
use crate::metadata::Retention;
use crate::raft::testing::{run_paused, PausedClock, TestNet};
use crate::replicas::NodeState;
use openraft::ServerState;
use sluice_proto::env::{BlockingMode, PeerEnvelope, PeerHandler, PeerRefusal, PeerRequest};
use sluice_proto::testing::CrashDisk;
use sluice_proto::StreamName;

const CLUSTER: &str = "test";
/// Virtual time any wait may take: many election timeouts.
const WAIT: Duration = Duration::from_secs(120);

fn address(id: u64) -> String {
    format!("n{id}:7000")
}

struct TestCluster {
    net: TestNet,
    seed: u64,
    disks: BTreeMap<NodeId, CrashDisk>,
    groups: BTreeMap<NodeId, MetadataGroup>,
}

impl TestCluster {
    /// `n` replicas, started (not initialized).
    async fn start(n: u64, seed: u64) -> TestCluster {
        let mut cluster = TestCluster {
            net: TestNet::new(CLUSTER),
            seed,
            disks: BTreeMap::new(),
            groups: BTreeMap::new(),
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
        let cluster = ClusterIncarnation {
            cluster: CLUSTER.into(),
            incarnation: 1,
        };
        let group = MetadataGroup::start(
            &env,
            id,
            Path::new("/data/metadata"),
            self.net.transport(id),
            &cluster,
            &MetadataGroupConfig::default(),
        )
        .await
        .unwrap();
        self.net.register(id, group.handler());
        self.groups.insert(id, group);
    }

    /// Stops a replica as its process would exit: it stops answering, its disk handles die.
    async fn stop_node(&mut self, id: NodeId) {
        self.net.unregister(id);
        let group = self.groups.remove(&id).unwrap();
        group.shutdown().await.unwrap();
        self.disks[&id].close_all();
    }

    fn group(&self, id: NodeId) -> &MetadataGroup {
        &self.groups[&id]
    }

    /// Initializes the group on node 1 with every node as a voter; returns the elected leader.
    async fn initialize(&self) -> NodeId {
        let members = self.groups.keys().map(|id| (*id, address(id.0))).collect();
        self.group(NodeId(1)).initialize(members).await.unwrap();
        self.agreed_leader(&self.groups.keys().copied().collect::<Vec<_>>(), None)
            .await
    }

    /// Waits until every node of `among` sees the same leader, one of `among` other than
    /// `not`, and that leader knows itself leader.
    async fn agreed_leader(&self, among: &[NodeId], not: Option<NodeId>) -> NodeId {
        let acceptable = |l: Option<u64>| {
            l.is_some_and(|l| among.contains(&NodeId(l)) && Some(NodeId(l)) != not)
        };
        let first = self.group(among[0]);
        let metrics = first
            .wait(WAIT)
            .metrics(|m| acceptable(m.current_leader), "a leader")
            .await
            .unwrap();
        let leader = metrics.current_leader.unwrap();
        for id in among {
            self.group(*id)
                .wait(WAIT)
                .metrics(|m| m.current_leader == Some(leader), "same leader")
                .await
                .unwrap();
        }
        self.group(NodeId(leader))
            .wait(WAIT)
            .state(ServerState::Leader, "leader state")
            .await
            .unwrap();
        NodeId(leader)
    }

    /// Waits until each of `nodes` applied at least `index`.
    async fn applied(&self, nodes: &[NodeId], index: u64) {
        for id in nodes {
            self.group(*id)
                .wait(WAIT)
                .applied_index_at_least(Some(index), "applied")
                .await
                .unwrap();
        }
    }

    fn applied_index(&self, id: NodeId) -> u64 {
        let metrics = self.group(id).metrics().borrow().clone();
        metrics.last_applied.map_or(0, |l| l.index)
    }
}

fn add_node(id: u64, site: &str) -> Command {
    Command::AddNode {
        node: NodeId(id),
        address: address(id),
        site: site.into(),
        rack: None,
        storage_incarnation: 1,
    }
}

fn activate(id: u64) -> Command {
    Command::SetNodeState {
        node: NodeId(id),
        state: NodeState::Active,
    }
}

fn stream(name: &str) -> StreamName {
    StreamName::new(name).unwrap()
}

fn create_stream(state: &MetadataState, name: &str) -> Command {
    Command::CreateStream {
        name: stream(name),
        factor: 3,
        retention: Retention::default(),
        replicas: state.place_new_stream(&stream(name), 2, 3),
    }
}

/// Registers and activates three nodes and creates stream `temps` through `leader`.
async fn populate(cluster: &TestCluster, leader: NodeId) -> MetadataState {
    let group = cluster.group(leader);
    for (id, site) in [(1, "a"), (2, "b"), (3, "c")] {
        assert_eq!(
            group.propose(&add_node(id, site)).await,
            Ok(Applied::NodeAdded)
        );
        assert_eq!(
            group.propose(&activate(id)).await,
            Ok(Applied::NodeStateSet {
                previous: NodeState::Joining
            })
        );
    }
    let state = group.read_linearizable().await.unwrap();
    let applied = group
        .propose(&create_stream(&state, "temps"))
        .await
        .unwrap();
    assert!(
        matches!(applied, Applied::StreamCreated { .. }),
        "{applied:?}"
    );
    group.read_linearizable().await.unwrap()
}

fn nodes(ids: &[u64]) -> Vec<NodeId> {
    ids.iter().map(|i| NodeId(*i)).collect()
}

#[test]
fn three_replicas_commit_and_every_replica_reads_linearizably() {
    // Checks that three replicas elect a leader after `initialize`, that proposals through it
    // commit and answer what the state machine did, that a linearizable read on every replica
    // (leader and followers) sees all of them, that a follower refuses a proposal with a
    // not-leader error naming the leader and its address, and that a bad command is a typed
    // rejection that changed nothing on any replica.
    run_paused(1, async {
        let cluster = TestCluster::start(3, 1).await;
        let leader = cluster.initialize().await;
        let state = populate(&cluster, leader).await;
        assert_eq!(state.nodes.len(), 3);
        assert_eq!(state.n_active(), 3);
        assert_eq!(state.streams[&stream("temps")].n_partitions, 2);
        for id in nodes(&[1, 2, 3]) {
            assert_eq!(
                cluster.group(id).read_linearizable().await.unwrap(),
                state,
                "node {id}"
            );
        }

        let follower = nodes(&[1, 2, 3])
            .into_iter()
            .find(|n| *n != leader)
            .unwrap();
        assert_eq!(
            cluster.group(follower).propose(&add_node(9, "z")).await,
            Err(GroupError::NotLeader {
                leader_hint: Some(LeaderHint {
                    node: leader,
                    address: address(leader.0),
                })
            })
        );

        let rejected = cluster
            .group(leader)
            .propose(&create_stream(&state, "temps"))
            .await;
        assert_eq!(
            rejected,
            Err(GroupError::Rejected(MetadataError::DuplicateStream(
                stream("temps")
            )))
        );
        let unknown = cluster.group(leader).propose(&activate(42)).await;
        assert_eq!(
            unknown,
            Err(GroupError::Rejected(MetadataError::UnknownNode(NodeId(42))))
        );
        for id in nodes(&[1, 2, 3]) {
            assert_eq!(
                cluster.group(id).read_linearizable().await.unwrap(),
                state,
                "node {id}"
            );
        }
        assert_eq!(
            cluster.group(leader).initialize(BTreeMap::new()).await,
            Err(GroupError::AlreadyInitialized)
        );
    });
}

#[test]
fn a_follower_forwards_a_proposal_to_the_leader() {
    // Checks `propose_anywhere` on a follower: the command is committed through the leader and
    // answered with what the state machine did (a typed rejection too, changing nothing), every
    // replica reads it; a follower cut off from everyone cannot forward and says unavailable.
    run_paused(5, async {
        let cluster = TestCluster::start(3, 5).await;
        let leader = cluster.initialize().await;
        populate(&cluster, leader).await;
        let followers: Vec<NodeId> = nodes(&[1, 2, 3])
            .into_iter()
            .filter(|n| *n != leader)
            .collect();
        let follower = cluster.group(followers[0]);
        assert_eq!(
            follower.propose_anywhere(&add_node(9, "z")).await,
            Ok(Applied::NodeAdded)
        );
        assert_eq!(
            follower.propose_anywhere(&add_node(9, "z")).await,
            Err(GroupError::Rejected(MetadataError::DuplicateNode(NodeId(
                9
            ))))
        );
        let state = cluster.group(leader).read_linearizable().await.unwrap();
        assert_eq!(state.nodes[&NodeId(9)].site, "z");
        for id in nodes(&[1, 2, 3]) {
            assert_eq!(cluster.group(id).read_linearizable().await.unwrap(), state);
        }
        cluster.net.cut(followers[1]);
        let cut_off = cluster
            .group(followers[1])
            .propose_anywhere(&add_node(10, "y"))
            .await;
        assert!(
            matches!(cut_off, Err(GroupError::Unavailable { .. })),
            "{cut_off:?}"
        );
    });
}

#[test]
fn a_cut_off_leader_is_replaced_and_cannot_commit() {
    // Checks that when the leader is cut off, the two others elect a new leader that commits,
    // while a proposal to the old leader is never committed (it times out as unavailable, and
    // after the heal the old leader follows the new one and holds the new leader's state,
    // without the proposal it was given).
    run_paused(2, async {
        let cluster = TestCluster::start(3, 2).await;
        let old = cluster.initialize().await;
        populate(&cluster, old).await;
        cluster.net.cut(old);
        let rest: Vec<NodeId> = nodes(&[1, 2, 3])
            .into_iter()
            .filter(|n| *n != old)
            .collect();
        let new = cluster.agreed_leader(&rest, Some(old)).await;

        let (to_old, to_new) = (add_node(7, "x"), add_node(8, "y"));
        let (on_old, on_new) = tokio::join!(
            cluster.group(old).propose(&to_old),
            cluster.group(new).propose(&to_new),
        );
        assert!(
            matches!(on_old, Err(GroupError::Unavailable { .. })),
            "{on_old:?}"
        );
        assert_eq!(on_new, Ok(Applied::NodeAdded));
        let on_old_read = cluster.group(old).read_linearizable().await;
        assert!(on_old_read.is_err(), "a cut-off leader served a read");

        cluster.net.heal(old);
        cluster.agreed_leader(&nodes(&[1, 2, 3]), Some(old)).await;
        let state = cluster.group(new).read_linearizable().await.unwrap();
        assert!(state.nodes.contains_key(&NodeId(8)));
        assert!(!state.nodes.contains_key(&NodeId(7)));
        cluster.applied(&[old], cluster.applied_index(new)).await;
        assert_eq!(cluster.group(old).read_linearizable().await.unwrap(), state);
        assert_eq!(cluster.group(old).read_local(), state);
    });
}

#[test]
fn a_restarted_replica_rebuilds_its_state_from_its_own_log() {
    // Checks that a replica stopped and started again from its directory replays its committed
    // log into the same state before `start` returns (while it is still cut off, so nothing
    // can have come from its peers), and then catches up with what it missed.
    run_paused(3, async {
        let mut cluster = TestCluster::start(3, 3).await;
        let leader = cluster.initialize().await;
        let state = populate(&cluster, leader).await;
        let index = cluster.applied_index(leader);
        cluster.applied(&nodes(&[1, 2, 3]), index).await;
        let follower = nodes(&[1, 2, 3])
            .into_iter()
            .find(|n| *n != leader)
            .unwrap();

        cluster.stop_node(follower).await;
        cluster.net.cut(follower);
        let missed = cluster.group(leader).propose(&add_node(5, "e")).await;
        assert_eq!(missed, Ok(Applied::NodeAdded));
        cluster.start_node(follower).await;
        assert_eq!(cluster.group(follower).read_local(), state);
        // Its metrics report the replayed log once its core runs (cut off, so from its log).
        cluster.applied(&[follower], index).await;

        cluster.net.heal(follower);
        let now = cluster.group(leader).read_linearizable().await.unwrap();
        assert!(now.nodes.contains_key(&NodeId(5)));
        assert_eq!(
            cluster.group(follower).read_linearizable().await.unwrap(),
            now
        );
    });
}

#[test]
fn a_whole_cluster_restarted_keeps_its_state_and_elects_again() {
    // Checks that after every replica stopped, the three started again from their logs agree
    // on the state, elect a leader and commit again.
    run_paused(4, async {
        let mut cluster = TestCluster::start(3, 4).await;
        let leader = cluster.initialize().await;
        let state = populate(&cluster, leader).await;
        for id in nodes(&[1, 2, 3]) {
            cluster.stop_node(id).await;
        }
        for id in nodes(&[1, 2, 3]) {
            cluster.start_node(id).await;
        }
        let leader = cluster.agreed_leader(&nodes(&[1, 2, 3]), None).await;
        assert_eq!(
            cluster.group(leader).read_linearizable().await.unwrap(),
            state
        );
        assert_eq!(
            cluster.group(leader).propose(&add_node(6, "f")).await,
            Ok(Applied::NodeAdded)
        );
    });
}

#[test]
fn a_learner_joins_and_becomes_a_voter() {
    // Checks add_learner and change_membership: a fourth replica added as a learner receives
    // the log, and after the change it is a voter that reads the same state.
    run_paused(5, async {
        let mut cluster = TestCluster::start(3, 5).await;
        let leader = cluster.initialize().await;
        let state = populate(&cluster, leader).await;
        cluster.disks.insert(NodeId(4), CrashDisk::new());
        cluster.start_node(NodeId(4)).await;
        let group = cluster.group(leader);
        group.add_learner(NodeId(4), address(4)).await.unwrap();
        group
            .change_membership(nodes(&[1, 2, 3, 4]).into_iter().collect(), false)
            .await
            .unwrap();
        let metrics = group.metrics().borrow().clone();
        let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
        assert_eq!(voters, vec![1, 2, 3, 4]);
        assert_eq!(
            cluster.group(NodeId(4)).read_linearizable().await.unwrap(),
            state
        );
    });
}

#[test]
fn the_peer_handler_refuses_other_groups_and_incarnations() {
    // Checks that a replica's handler refuses a request for another group or another
    // incarnation of the metadata group, and a body that does not decode, before openraft
    // sees any of them.
    run_paused(6, async {
        let cluster = TestCluster::start(1, 6).await;
        let handler = cluster.group(NodeId(1)).handler();
        let request = |group: PeerGroup, incarnation: u64, body: Vec<u8>| PeerRequest {
            envelope: PeerEnvelope {
                cluster: CLUSTER.into(),
                from: NodeId(2),
                to: NodeId(1),
                group,
                incarnation,
            },
            lane: PeerLane::Control,
            body,
        };
        let vote = codec::encode(&WireRequest::vote(&openraft::raft::VoteRequest {
            vote: openraft::Vote::new(1, 2),
            last_log_id: None,
        }))
        .unwrap();
        assert_eq!(
            handler
                .handle(request(PeerGroup::Node, 0, vote.clone()))
                .await,
            Err(PeerRefusal::UnknownGroup)
        );
        assert_eq!(
            handler
                .handle(request(PeerGroup::Metadata, 2, vote.clone()))
                .await,
            Err(PeerRefusal::StaleIncarnation { got: 2, current: 1 })
        );
        assert!(matches!(
            handler
                .handle(request(PeerGroup::Metadata, 1, vec![9, 9, 9]))
                .await,
            Err(PeerRefusal::Handler(_))
        ));
        assert!(handler
            .handle(request(PeerGroup::Metadata, 1, vote))
            .await
            .is_ok());
    });
}

#[test]
fn one_seed_gives_one_run() {
    // Checks determinism: the same seed (runtime and environment) elects the same leader in the
    // same term and ends with the same log and state, twice.
    fn trace(seed: u64) -> (NodeId, u64, u64, MetadataState) {
        let mut out = None;
        run_paused(seed, async {
            let cluster = TestCluster::start(3, seed).await;
            let leader = cluster.initialize().await;
            let state = populate(&cluster, leader).await;
            let metrics = cluster.group(leader).metrics().borrow().clone();
            out = Some((
                leader,
                metrics.current_term,
                cluster.applied_index(leader),
                state,
            ));
        });
        out.unwrap()
    }
    assert_eq!(trace(11), trace(11));
}
