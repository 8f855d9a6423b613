//! The cluster mode of the simulator (`sluice-sim --nodes 3..5`): per seed, `n` replicas of the
//! real metadata group ([`MetadataGroup`], on openraft with the seeded runtime), each on its own
//! simulated disk ([`sim_disk`], mounted per process by [`process_env`]), talking over the
//! simulated peer network ([`PeerNet`]), on the run's paused clock.
//!
//! Safety phase: the network loses, duplicates, reorders and delays messages at rates drawn from
//! the seed, and a fault controller applies one seeded fault at a time, then undoes it:
//! symmetric partitions (often isolating the leader), one-way cuts, a flapping pair, delay
//! spikes, a crash of one node (power cut: its unsynced writes lost, the last one maybe torn)
//! and its restart, a pause longer than the election timeout (the node's messages in and out
//! held), and at most once a power loss of every node at once. Up to four clients submit random
//! metadata commands (nodes, node states, streams, ACLs; many invalid, so rejections happen) and
//! linearizable reads to random nodes, following `NotLeader` hints, each call under a deadline.
//!
//! Liveness phase: every fault healed, every node up, no more loss. Then the checkers, each on
//! its own record:
//! - liveness: a new proposal commits within `--liveness-ms`;
//! - convergence: every replica applies the leader's whole log within that bound, and all end
//!   in the same state;
//! - committed logs: read back from each replica's disk after a clean stop, every two logs hold
//!   the same entries at the same indexes up to the smaller committed index;
//! - linearizability ([`linearizability`]) of every operation the clients saw answered.
//!
//! Every operation, fault and outcome enters the trace hash, with the network's delivery trace,
//! so one seed replays one run. The runs draw from RNG streams of their own (salts below), and
//! nothing here changes what a single-node run (no `--nodes`) draws.

pub mod linearizability;

use crate::env::{clock, process_env, sim_disk, CrashDisk, SimClock};
use crate::invariants::{no_panics, Violation};
use crate::logging;
use crate::peer_link::{PeerNet, PeerNetConfig};
use crate::settings::{Plant, Settings};
use crate::trace::Trace;
use linearizability::History;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sluice_cluster::metadata::{Command, MetadataState, Retention};
use sluice_cluster::raft::log_store::{LogStore, LogStoreConfig, LogStorePaths};
use sluice_cluster::raft::metadata_group::{
    ClusterIncarnation, GroupError, MetadataGroup, MetadataGroupConfig,
};
use sluice_cluster::replicas::NodeState;
use sluice_proto::env::{rng_for, BlockingMode, PeerTransport};
use sluice_proto::{Identity, NodeId, Role, StreamName};
use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The fewest nodes of a cluster run.
pub const NODES_MIN: u32 = 3;
/// The most nodes of a cluster run.
pub const NODES_MAX: u32 = 5;

/// The cluster's name on the peer network.
const CLUSTER: &str = "sim";
/// Where each node keeps its metadata replica.
const METADATA_DIR: &str = "/data/metadata";
/// The owner of the run's RNG streams (`rng_for(seed, owner, salt)`).
const OWNER_CLUSTER: u64 = 3_000;
const SALT_NET_CONFIG: u64 = 0xc105_0001;
const SALT_NET: u64 = 0xc105_0002;
const SALT_FAULTS: u64 = 0xc105_0003;
const SALT_POWER: u64 = 0xc105_0004;
const SALT_CLIENT: u64 = 0xc105_0100;
/// Most clients per run (each run draws 2 to this many).
const CLIENTS_MAX: u32 = 4;
/// Operations one client records at most.
const CLIENT_OPS_MAX: usize = 20;
/// A client's deadline on one call (beyond the group's own request timeout).
const CLIENT_DEADLINE: Duration = Duration::from_secs(12);
/// How long a stopped replica's tasks get to end.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// Slack, beyond both phases, before a run that does not finish is declared stuck.
const RUN_SLACK: Duration = Duration::from_secs(300);
/// The node id of the liveness probe's `AddNode` (the clients use 1..=7).
const PROBE_NODE: u64 = 1_000;
/// The client id the liveness probe records under.
const PROBE_CLIENT: u32 = 99;

/// What a cluster run did.
#[derive(Debug, Clone, Default)]
pub struct ClusterSummary {
    /// The seed.
    pub seed: u64,
    /// Nodes.
    pub n_nodes: u32,
    /// SHA-256 over every observable step.
    pub trace_hash: [u8; 32],
    /// Steps hashed.
    pub n_steps: u64,
    /// Simulated time the run took.
    pub sim_time: Duration,
    /// Clients.
    pub n_clients: u32,
    /// Writes answered applied.
    pub n_applied: u32,
    /// Writes answered rejected.
    pub n_rejected: u32,
    /// Writes with unknown outcome (timeout, unavailable, replica stopped).
    pub n_unknown: u32,
    /// Linearizable reads answered.
    pub n_reads: u32,
    /// Symmetric partitions.
    pub n_partitions: u32,
    /// One-way cuts.
    pub n_one_way: u32,
    /// Flapping pairs.
    pub n_flaps: u32,
    /// Delay spikes.
    pub n_delay_spikes: u32,
    /// Crashes of one node (power cut, then restart).
    pub n_crashes: u32,
    /// Pauses of one node.
    pub n_pauses: u32,
    /// Power losses of every node at once.
    pub n_power_losses: u32,
    /// Last writes torn by power cuts.
    pub n_torn_writes: u64,
    /// The leader's last log index at the end.
    pub last_index: u64,
}

/// The result of a cluster run.
#[derive(Debug, Clone)]
pub struct ClusterOutcome {
    /// What the run did (as far as it got).
    pub summary: ClusterSummary,
    /// The first broken invariant.
    pub failure: Option<Violation>,
}

/// Runs one seed of the cluster mode with `n_nodes` nodes on a fresh runtime.
pub fn run_seed(seed: u64, settings: &Settings, n_nodes: u32) -> ClusterOutcome {
    logging::install_panic_recorder();
    logging::clear_panics();
    let planted = settings.plant == Some(Plant::MetadataAckBeforeFsync);
    sluice_cluster::raft::log_store::plant::set_append_unsynced(planted);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()))
        .unhandled_panic(tokio::runtime::UnhandledPanic::ShutdownRuntime)
        .build()
        .unwrap_or_else(|e| panic!("seed {seed}: cannot build the simulation runtime: {e}"));
    let n_nodes = n_nodes.clamp(NODES_MIN, NODES_MAX);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(simulate(seed, settings.clone(), n_nodes))
    }));
    drop(runtime);
    sluice_cluster::raft::log_store::plant::set_append_unsynced(false);
    clock::clear_thread_run();
    let mut outcome = result.unwrap_or_else(|_| ClusterOutcome {
        summary: ClusterSummary {
            seed,
            n_nodes,
            ..ClusterSummary::default()
        },
        failure: None,
    });
    if outcome.failure.is_none() {
        outcome.failure = no_panics::check().err();
    }
    logging::clear_panics();
    outcome
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the tasks of one cluster run share.
struct Sim {
    seed: u64,
    clock: Arc<SimClock>,
    net: PeerNet,
    disks: BTreeMap<NodeId, CrashDisk>,
    book: BTreeMap<NodeId, String>,
    config: MetadataGroupConfig,
    /// The replicas whose process runs.
    up: Mutex<BTreeMap<NodeId, MetadataGroup>>,
    history: Mutex<History>,
    trace: Trace,
    /// Draws what each power cut keeps.
    power_rng: Mutex<ChaCha8Rng>,
    summary: Mutex<ClusterSummary>,
    safety: AtomicBool,
}

impl Sim {
    fn now(&self) -> Duration {
        self.clock.elapsed()
    }

    fn record(&self, kind: &str, content: impl AsRef<[u8]>) {
        self.trace.record(self.now(), kind, content.as_ref());
    }

    fn group(&self, id: NodeId) -> Option<MetadataGroup> {
        lock(&self.up).get(&id).cloned()
    }

    fn node_ids(&self) -> Vec<NodeId> {
        self.disks.keys().copied().collect()
    }

    /// The leader the replica with the highest term believes in, if any.
    fn leader(&self) -> Option<NodeId> {
        let up = lock(&self.up);
        up.values()
            .map(|g| {
                let m = g.metrics().borrow().clone();
                (m.current_term, m.current_leader)
            })
            .max()
            .and_then(|(_, leader)| leader.map(NodeId))
    }

    /// Starts node `id`'s replica from its disk.
    async fn start_node(&self, id: NodeId) -> Result<(), Violation> {
        let env = process_env(&self.clock, &self.disks[&id], self.seed);
        let transport = self.net.transport(id);
        transport.set_peers(self.book.clone());
        let transport: Arc<dyn PeerTransport> = Arc::new(transport);
        let cluster = ClusterIncarnation {
            cluster: CLUSTER.into(),
            incarnation: 1,
        };
        let group = MetadataGroup::start(
            &env,
            id,
            Path::new(METADATA_DIR),
            transport,
            &cluster,
            &self.config,
        )
        .await
        .map_err(|e| {
            Violation::new(
                "cluster-replica-start",
                format!("node {id}'s metadata replica did not start from its disk: {e}"),
            )
        })?;
        self.net.register(id, group.handler());
        lock(&self.up).insert(id, group);
        self.record("start", id.0.to_le_bytes());
        Ok(())
    }

    /// Takes node `id`'s process down: a power cut (`crash`) or a clean exit.
    async fn stop_node(&self, id: NodeId, crash: bool) {
        let Some(group) = lock(&self.up).remove(&id) else {
            return;
        };
        self.net.detach(id);
        let disk = &self.disks[&id];
        if crash {
            let report = disk.power_cut(&mut lock(&self.power_rng));
            lock(&self.summary).n_torn_writes += u64::from(report.torn_bytes_kept > 0);
            self.record("crash", format!("{id} {report:?}"));
        }
        // Its disk handles fail from now on (a crash) or after the stop (a clean exit).
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, group.shutdown()).await;
        if !crash {
            disk.close_all();
            self.record("stop", id.0.to_le_bytes());
        }
    }

    /// Starts every node that is down.
    async fn start_down_nodes(&self) -> Result<(), Violation> {
        for id in self.node_ids() {
            if self.group(id).is_none() {
                self.start_node(id).await?;
            }
        }
        Ok(())
    }
}

async fn simulate(seed: u64, settings: Settings, n_nodes: u32) -> ClusterOutcome {
    let clock = Arc::new(SimClock::new());
    let mut net_rng = rng_for(seed, OWNER_CLUSTER, SALT_NET_CONFIG);
    let delay_high = net_rng.random_range(2..=60u64);
    let net_config = PeerNetConfig {
        loss_request: net_rng.random_range(0.0..0.05),
        loss_response: net_rng.random_range(0.0..0.05),
        duplicate: net_rng.random_range(0.0..0.05),
        delay_ms: (1, delay_high),
        ..PeerNetConfig::default()
    };
    let n_clients = net_rng.random_range(2..=CLIENTS_MAX);
    let net = PeerNet::new(
        CLUSTER,
        net_config.clone(),
        clock.clone(),
        rng_for(seed, OWNER_CLUSTER, SALT_NET),
    );
    let ids: Vec<NodeId> = (1..=u64::from(n_nodes)).map(NodeId).collect();
    let sim = Arc::new(Sim {
        seed,
        clock,
        net,
        disks: ids.iter().map(|id| (*id, sim_disk())).collect(),
        book: ids.iter().map(|id| (*id, address(*id))).collect(),
        config: MetadataGroupConfig::default(),
        up: Mutex::new(BTreeMap::new()),
        history: Mutex::new(History::default()),
        trace: Trace::new(),
        power_rng: Mutex::new(rng_for(seed, OWNER_CLUSTER, SALT_POWER)),
        summary: Mutex::new(ClusterSummary {
            seed,
            n_nodes,
            n_clients,
            ..ClusterSummary::default()
        }),
        safety: AtomicBool::new(true),
    });
    sim.record("net", format!("{net_config:?} clients {n_clients}"));
    let bound = Duration::from_millis(settings.safety_ms + settings.liveness_ms) + RUN_SLACK;
    let failure = match tokio::time::timeout(bound, run(&sim, &settings, n_clients)).await {
        Ok(Ok(())) => None,
        Ok(Err(violation)) => Some(violation),
        Err(_) => Some(Violation::new(
            "cluster-liveness",
            format!(
                "the cluster run did not finish within {} simulated seconds",
                bound.as_secs()
            ),
        )),
    };
    // Whatever is still running stops, so no task outlives the run's checks.
    for id in sim.node_ids() {
        sim.stop_node(id, false).await;
    }
    sim.record("net-trace", sim.net.trace().join("\n"));
    let mut summary = lock(&sim.summary).clone();
    let (hash, n_steps) = sim.trace.finish();
    summary.trace_hash = hash;
    summary.n_steps = n_steps;
    summary.sim_time = sim.now();
    let (applied, rejected, unknown, reads) = lock(&sim.history).counts();
    summary.n_applied = applied;
    summary.n_rejected = rejected;
    summary.n_unknown = unknown;
    summary.n_reads = reads;
    ClusterOutcome { summary, failure }
}

fn address(id: NodeId) -> String {
    format!("n{}:7000", id.0)
}

async fn run(sim: &Arc<Sim>, settings: &Settings, n_clients: u32) -> Result<(), Violation> {
    for id in sim.node_ids() {
        sim.start_node(id).await?;
    }
    let first = sim.group(NodeId(1)).ok_or_else(|| {
        Violation::new("cluster-replica-start", "node 1 is not up after the start")
    })?;
    first.initialize(sim.book.clone()).await.map_err(|e| {
        Violation::new(
            "cluster-liveness",
            format!("initialize on node 1 failed: {e}"),
        )
    })?;
    sim.record("initialized", b"");

    let safety_end = sim.now() + Duration::from_millis(settings.safety_ms);
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..n_clients {
        let rng = rng_for(sim.seed, OWNER_CLUSTER, SALT_CLIENT + u64::from(client));
        clients.spawn(run_client(sim.clone(), client, rng, safety_end));
    }
    let faults_rng = rng_for(sim.seed, OWNER_CLUSTER, SALT_FAULTS);
    let faults = run_faults(sim, faults_rng, safety_end).await;
    // Clients finish their calls in flight (each under its deadline).
    while clients.join_next().await.is_some() {}
    faults?;

    sim.safety.store(false, Ordering::Relaxed);
    sim.net.heal();
    sim.net.clear_delays();
    sim.net.set_calm(true);
    sim.start_down_nodes().await?;
    sim.record("healed", b"");
    let liveness = Duration::from_millis(settings.liveness_ms);
    let deadline = sim.now() + liveness;
    let leader = liveness_probe(sim, deadline).await?;
    converge(sim, leader, deadline).await?;
    for id in sim.node_ids() {
        sim.stop_node(id, false).await;
    }
    check_logs(sim)?;
    let history = lock(&sim.history).clone();
    sim.record("history", history.describe());
    history
        .check()
        .map_err(|details| Violation::new("cluster-linearizability", details))
}

/// Applies seeded faults one at a time until `safety_end`, undoing each before the next.
async fn run_faults(
    sim: &Arc<Sim>,
    mut rng: ChaCha8Rng,
    safety_end: Duration,
) -> Result<(), Violation> {
    let ids = sim.node_ids();
    let n = ids.len();
    let mut powered_off_once = false;
    loop {
        let gap = Duration::from_millis(rng.random_range(300..2_500));
        tokio::time::sleep(gap).await;
        if sim.now() >= safety_end {
            return Ok(());
        }
        let hold = Duration::from_millis(rng.random_range(1_000..6_000));
        let roll = rng.random_range(0..100u32);
        // Half the targeted faults hit the leader, the rest a node at random.
        let random_node = ids[rng.random_range(0..n)];
        let target = match (rng.random_bool(0.5), sim.leader()) {
            (true, Some(leader)) => leader,
            _ => random_node,
        };
        let other =
            ids[(ids.iter().position(|i| *i == target).unwrap_or(0) + rng.random_range(1..n)) % n];
        match roll {
            0..=19 => {
                // A minority containing the target, cut from the rest both ways.
                let size = rng.random_range(1..=(n - 1) / 2);
                let mut minority = BTreeSet::from([target]);
                while minority.len() < size {
                    minority.insert(ids[rng.random_range(0..n)]);
                }
                for a in &minority {
                    for b in ids.iter().filter(|b| !minority.contains(b)) {
                        sim.net.cut(*a, *b);
                    }
                }
                lock(&sim.summary).n_partitions += 1;
                sim.record("partition", format!("{minority:?} for {hold:?}"));
                tokio::time::sleep(hold).await;
                sim.net.heal();
            }
            20..=31 => {
                sim.net.cut_one_way(target, other);
                if rng.random_bool(0.5) {
                    // The target hears nobody either (or nobody hears it, the other way).
                    let third = ids[rng.random_range(0..n)];
                    if third != target {
                        sim.net.cut_one_way(third, target);
                    }
                }
                lock(&sim.summary).n_one_way += 1;
                sim.record("one-way", format!("{target}->{other} for {hold:?}"));
                tokio::time::sleep(hold).await;
                sim.net.heal();
            }
            32..=43 => {
                let down = Duration::from_millis(rng.random_range(200..1_500));
                let up = Duration::from_millis(rng.random_range(200..1_500));
                sim.net.flap(target, other, down, up);
                lock(&sim.summary).n_flaps += 1;
                sim.record(
                    "flap",
                    format!("{target}<->{other} {down:?}/{up:?} for {hold:?}"),
                );
                tokio::time::sleep(hold * 2).await;
                sim.net.heal();
            }
            44..=51 => {
                let high = rng.random_range(100..400);
                sim.net.set_delay(target, other, high / 2, high);
                lock(&sim.summary).n_delay_spikes += 1;
                sim.record(
                    "delay",
                    format!("{target}<->{other} {high} ms for {hold:?}"),
                );
                tokio::time::sleep(hold).await;
                sim.net.clear_delays();
            }
            52..=71 => {
                let down = Duration::from_millis(rng.random_range(100..4_000));
                sim.stop_node(target, true).await;
                lock(&sim.summary).n_crashes += 1;
                tokio::time::sleep(down).await;
                sim.start_node(target).await?;
            }
            72..=85 => {
                // Longer than the longest election timeout.
                let length = Duration::from_millis(rng.random_range(4_500..9_000));
                sim.net.pause(target, length);
                lock(&sim.summary).n_pauses += 1;
                sim.record("pause", format!("{target} for {length:?}"));
                tokio::time::sleep(length).await;
            }
            _ => {
                if powered_off_once {
                    continue;
                }
                powered_off_once = true;
                let down = Duration::from_millis(rng.random_range(100..3_000));
                for id in &ids {
                    sim.stop_node(*id, true).await;
                }
                lock(&sim.summary).n_power_losses += 1;
                sim.record("power-loss", format!("{down:?}"));
                tokio::time::sleep(down).await;
                sim.start_down_nodes().await?;
            }
        }
    }
}

const STREAMS: [&str; 3] = ["temps", "logs", "alerts"];

fn stream(rng: &mut ChaCha8Rng) -> StreamName {
    let name = STREAMS[rng.random_range(0..STREAMS.len())];
    StreamName::new(name).unwrap_or_else(|e| panic!("stream name {name}: {e}"))
}

fn identity(rng: &mut ChaCha8Rng) -> Identity {
    let name = ["pi-1", "pi-2"][rng.random_range(0..2)];
    Identity::new(CLUSTER, Role::Edge, name).unwrap_or_else(|e| panic!("identity {name}: {e}"))
}

/// A random metadata command over a small universe (nodes 1..=7, three streams, two
/// identities), so conflicts and rejections are common.
fn random_command(rng: &mut ChaCha8Rng) -> Command {
    match rng.random_range(0..10u32) {
        0 | 1 => {
            let node = rng.random_range(1..=6u64);
            Command::AddNode {
                node: NodeId(node),
                address: address(NodeId(node)),
                site: format!("site-{}", node % 3),
                rack: None,
                storage_incarnation: 1,
            }
        }
        2 | 3 => {
            let states = [
                NodeState::Active,
                NodeState::Active,
                NodeState::Draining,
                NodeState::Removed,
                NodeState::Joining,
            ];
            Command::SetNodeState {
                node: NodeId(rng.random_range(1..=7)),
                state: states[rng.random_range(0..states.len())],
            }
        }
        4 | 5 => {
            let factor = rng.random_range(1..=2u32);
            let n_partitions = rng.random_range(1..=2);
            let replicas = (0..n_partitions)
                .map(|_| {
                    let mut set = BTreeSet::new();
                    while set.len() < factor as usize {
                        set.insert(NodeId(rng.random_range(1..=6)));
                    }
                    set
                })
                .collect();
            Command::CreateStream {
                name: stream(rng),
                factor,
                retention: Retention::default(),
                replicas,
            }
        }
        6 => Command::DeleteStream { name: stream(rng) },
        7 | 8 => Command::AclAdd {
            identity: identity(rng),
            stream: stream(rng),
        },
        _ => Command::AclRemove {
            identity: identity(rng),
            stream: stream(rng),
        },
    }
}

/// What one call to a replica ended as.
enum Answer<T> {
    /// A definite answer.
    Done(T),
    /// Refused as not the leader: nothing was done; maybe a hint.
    NotLeader(Option<NodeId>),
    /// Timed out, unavailable, stopped: for a write the outcome is unknown.
    Unknown(String),
    /// The node is down (connection refused): nothing was sent.
    Down,
}

/// Calls `node` with `call` under the client's deadline, as a client connected to it would
/// (a paused node answers once it runs again).
async fn call_node<T, F, Fut>(sim: &Sim, node: NodeId, call: F) -> Answer<Result<T, GroupError>>
where
    F: FnOnce(MetadataGroup) -> Fut,
    Fut: std::future::Future<Output = Result<T, GroupError>>,
{
    let Some(group) = sim.group(node) else {
        return Answer::Down;
    };
    let result = tokio::time::timeout(CLIENT_DEADLINE, async {
        sim.net.wait_unpaused(node).await;
        call(group).await
    })
    .await;
    match result {
        Err(_) => Answer::Unknown(format!("no answer from node {node} within the deadline")),
        Ok(Err(GroupError::NotLeader { leader_hint })) => {
            Answer::NotLeader(leader_hint.map(|h| h.node))
        }
        Ok(Err(e @ GroupError::Rejected(_))) => Answer::Done(Err(e)),
        Ok(Ok(value)) => Answer::Done(Ok(value)),
        Ok(Err(e)) => Answer::Unknown(e.to_string()),
    }
}

/// One client: random commands and reads to random nodes (or the leader a hint named) until
/// the safety phase ends or it recorded its share of the history.
async fn run_client(sim: Arc<Sim>, client: u32, mut rng: ChaCha8Rng, safety_end: Duration) {
    let n = sim.disks.len() as u64;
    let mut hint: Option<NodeId> = None;
    let mut pending: Option<Command> = None;
    let mut n_ops = 0usize;
    while sim.now() < safety_end && n_ops < CLIENT_OPS_MAX && sim.safety.load(Ordering::Relaxed) {
        if pending.is_none() {
            let think = Duration::from_millis(rng.random_range(100..1_200));
            tokio::time::sleep(think).await;
        }
        if lock(&sim.history).is_full() {
            return;
        }
        let node = hint
            .take()
            .unwrap_or_else(|| NodeId(rng.random_range(1..=n)));
        let is_read = pending.is_none() && rng.random_bool(0.3);
        let invoked = sim.now();
        if is_read {
            let answer =
                call_node(&sim, node, |g| async move { g.read_linearizable().await }).await;
            let what = match answer {
                Answer::Done(Ok(state)) => {
                    let text = format!("read at {node}: {} nodes", state.nodes.len());
                    lock(&sim.history).read(client, invoked, sim.now(), state);
                    n_ops += 1;
                    text
                }
                Answer::NotLeader(h) => {
                    hint = h;
                    format!("read at {node}: not leader, hint {h:?}")
                }
                Answer::Done(Err(e)) => format!("read at {node} failed: {e}"),
                Answer::Unknown(why) => format!("read at {node} failed: {why}"),
                Answer::Down => format!("read at {node}: down"),
            };
            sim.record("client", format!("{client} {what}"));
            continue;
        }
        let command = pending.take().unwrap_or_else(|| random_command(&mut rng));
        let answer = {
            let command = command.clone();
            call_node(&sim, node, |g| async move { g.propose(&command).await }).await
        };
        let what = match answer {
            Answer::Done(result) => {
                let outcome = result.map_err(|e| match e {
                    GroupError::Rejected(e) => e,
                    // `call_node` gives only rejections as definite errors.
                    other => sluice_cluster::metadata::MetadataError::Undecodable {
                        reason: other.to_string(),
                    },
                });
                let text = format!("{command:?} at {node}: {outcome:?}");
                lock(&sim.history).write(client, invoked, sim.now(), command, outcome);
                n_ops += 1;
                text
            }
            Answer::NotLeader(h) => {
                hint = h;
                pending = Some(command);
                if h.is_none() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                format!("at {node}: not leader, hint {h:?}")
            }
            Answer::Unknown(why) => {
                let text = format!("{command:?} at {node}: unknown ({why})");
                lock(&sim.history).write_unknown(client, invoked, command);
                n_ops += 1;
                text
            }
            Answer::Down => {
                pending = Some(command);
                tokio::time::sleep(Duration::from_millis(50)).await;
                format!("at {node}: down")
            }
        };
        sim.record("client", format!("{client} {what}"));
    }
}

/// After the heal: a new proposal must commit before `deadline`. Returns the node that
/// committed it (the leader).
async fn liveness_probe(sim: &Arc<Sim>, deadline: Duration) -> Result<NodeId, Violation> {
    let command = Command::AddNode {
        node: NodeId(PROBE_NODE),
        address: address(NodeId(PROBE_NODE)),
        site: "site-probe".into(),
        rack: None,
        storage_incarnation: 1,
    };
    let ids = sim.node_ids();
    let mut hint = None;
    let mut attempt = 0usize;
    let started = sim.now();
    while sim.now() < deadline {
        let node = hint.take().unwrap_or(ids[attempt % ids.len()]);
        attempt += 1;
        let invoked = sim.now();
        let remaining = deadline.saturating_sub(invoked);
        let answer = {
            let command = command.clone();
            call_node(sim, node, |g| async move {
                match tokio::time::timeout(remaining, g.propose(&command)).await {
                    Ok(result) => result,
                    Err(_) => Err(GroupError::Unavailable {
                        reason: "liveness deadline".into(),
                    }),
                }
            })
            .await
        };
        match answer {
            Answer::Done(result) => {
                let outcome = result.map_err(|e| match e {
                    GroupError::Rejected(e) => e,
                    other => sluice_cluster::metadata::MetadataError::Undecodable {
                        reason: other.to_string(),
                    },
                });
                sim.record("probe", format!("at {node}: {outcome:?}"));
                lock(&sim.history).write(PROBE_CLIENT, invoked, sim.now(), command, outcome);
                return Ok(node);
            }
            Answer::NotLeader(h) => {
                hint = h;
                if h.is_none() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            Answer::Unknown(why) => {
                sim.record("probe", format!("at {node}: unknown ({why})"));
                lock(&sim.history).write_unknown(PROBE_CLIENT, invoked, command.clone());
            }
            Answer::Down => {
                return Err(Violation::new(
                    "cluster-liveness",
                    format!("node {node} is down after the heal"),
                ))
            }
        }
    }
    Err(Violation::new(
        "cluster-liveness",
        format!(
            "no proposal committed within {:.1} s after every fault healed ({attempt} attempts \
             from t={:.3}s)",
            deadline.saturating_sub(started).as_secs_f64(),
            started.as_secs_f64()
        ),
    ))
}

/// Every replica applies the leader's log up to its last index before `deadline`, and all
/// end in the same state.
async fn converge(sim: &Arc<Sim>, leader: NodeId, deadline: Duration) -> Result<(), Violation> {
    let group = sim
        .group(leader)
        .ok_or_else(|| Violation::new("cluster-convergence", "the leader went down"))?;
    let last = group.metrics().borrow().last_log_index.unwrap_or(0);
    lock(&sim.summary).last_index = last;
    let mut states: Vec<(NodeId, MetadataState)> = Vec::new();
    for id in sim.node_ids() {
        let replica = sim
            .group(id)
            .ok_or_else(|| Violation::new("cluster-convergence", format!("node {id} went down")))?;
        let remaining = deadline.saturating_sub(sim.now());
        replica
            .wait(remaining)
            .applied_index_at_least(Some(last), "converged")
            .await
            .map_err(|e| {
                Violation::new(
                    "cluster-convergence",
                    format!(
                        "node {id} did not apply the leader's log up to index {last} within \
                         the liveness bound after the heal: {e}"
                    ),
                )
            })?;
        states.push((id, replica.read_local()));
    }
    sim.record("converged", format!("{last}"));
    let (first_id, first) = &states[0];
    for (id, state) in &states[1..] {
        if state != first {
            return Err(Violation::new(
                "cluster-convergence",
                format!(
                    "after applying the log up to index {last}, node {id}'s state differs from \
                     node {first_id}'s:\n  {id}: {state:?}\n  {first_id}: {first:?}"
                ),
            ));
        }
    }
    Ok(())
}

/// Reads every replica's log back from its disk (all stopped cleanly) and checks that any two
/// hold the same entries at the same indexes up to the smaller committed index.
fn check_logs(sim: &Sim) -> Result<(), Violation> {
    let defaults = MetadataGroupConfig::default();
    let config = LogStoreConfig {
        segment_bytes_max: defaults.segment_bytes_max,
        entry_bytes_max: defaults.entry_bytes_max,
        ..LogStoreConfig::default()
    };
    let paths = LogStorePaths {
        dir: Path::new(METADATA_DIR).join("log"),
        manifest: Path::new(METADATA_DIR).join("log.manifest"),
    };
    let mut logs: Vec<(NodeId, u64, BTreeMap<u64, String>)> = Vec::new();
    for (id, disk) in &sim.disks {
        let bad = |what: String| Violation::new("cluster-committed-logs", what);
        let mount = disk.mount();
        let (store, _) = LogStore::open(Arc::new(mount), &paths, config, BlockingMode::Inline)
            .map_err(|e| bad(format!("node {id}'s log does not open: {e}")))?;
        let Some(committed) = store.committed() else {
            logs.push((*id, 0, BTreeMap::new()));
            disk.close_all();
            continue;
        };
        let entries = store
            .reader()
            .entries(0, committed.index + 1)
            .map_err(|e| bad(format!("node {id}'s committed entries do not read: {e}")))?;
        let contiguous = entries
            .windows(2)
            .all(|w| w[1].log_id.index == w[0].log_id.index + 1);
        if !contiguous || entries.last().map(|e| e.log_id) != Some(committed) {
            return Err(bad(format!(
                "node {id}'s log does not hold every entry up to its committed log id \
                 {committed} ({} entries read)",
                entries.len()
            )));
        }
        let log: BTreeMap<u64, String> = entries
            .iter()
            .map(|e| (e.log_id.index, format!("{e:?}")))
            .collect();
        logs.push((*id, committed.index, log));
        drop(store);
        disk.close_all();
    }
    for (a, a_committed, a_log) in &logs {
        for (b, b_committed, b_log) in &logs {
            if a >= b {
                continue;
            }
            let upto = (*a_committed).min(*b_committed);
            let differs = a_log
                .range(..=upto)
                .find(|(index, entry)| b_log.get(index).is_some_and(|other| other != *entry));
            if let Some((index, entry)) = differs {
                return Err(Violation::new(
                    "cluster-committed-logs",
                    format!(
                        "nodes {a} and {b} committed different entries at index {index}:\n  \
                         {a}: {entry}\n  {b}: {}",
                        b_log[index]
                    ),
                ));
            }
        }
    }
    let lengths: Vec<String> = logs
        .iter()
        .map(|(id, len, _)| format!("{id}:{len}"))
        .collect();
    sim.record("logs", lengths.join(" "));
    Ok(())
}

#[cfg(test)]
mod tests;
