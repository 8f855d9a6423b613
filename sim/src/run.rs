//! One seeded run: a current-thread tokio runtime with paused time and a seeded RNG, one node on
//! the simulated disk, producers behind faulty links, edge agents on disks of their own behind
//! faulty, flapping links (with outages, power cuts and clean restarts of their own), a tailing
//! consumer, clock jumps, and a controller that crashes, restarts and fails `fdatasync` calls
//! at seeded points (safety phase), then heals everything and waits for every record to be
//! acknowledged and every edge to drain (liveness phase). The log is read back and checked after
//! every restart and at the end.

use crate::edge_ledger::{Boot, EdgeLedger};
use crate::edge_link::EdgeLink;
use crate::env::{clock, process_env, sim_disk, SimClock};
use crate::invariants::disk_corruption::{self, PartitionKey};
use crate::invariants::edge_no_silent_gaps::{self, EdgeTotals};
use crate::invariants::{self, convergence, no_panics, LogSnapshot, Violation};
use crate::link::Link;
use crate::logging;
use crate::scenario::{
    Scenario, DATA_DIR, OWNER_PRODUCER_BASE, OWNER_RUN, SALT_CONSUMER, SALT_CRASH,
    SALT_DISK_DAMAGE, SALT_FAULTS, SALT_LINK, SALT_PARTITION_LOSS, SALT_TAILER,
};
use crate::settings::{Plant, Settings};
use crate::workload::consumer::{probe, read_all, run_tailer};
use crate::workload::edge::{run_jump, EdgeRunner};
use crate::workload::producer::{run_producer, Producer};
use crate::world::{NodeSlot, World};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sluice_node::config::NodeConfig;
use sluice_node::Node;
use sluice_proto::codec;
use sluice_proto::env::{rng_for, Clock};
use sluice_proto::segment::SEGMENT_HEADER_LEN;
use sluice_proto::{PartitionId, StreamName};
use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long the controller waits for an armed mid-IO crash before crashing anyway.
const ARMED_CRASH_WAIT: Duration = Duration::from_secs(5);
/// Slack, beyond both phases, before a run that does not finish is declared stuck.
const RUN_SLACK: Duration = Duration::from_secs(300);
/// How long an edge must be seen drained (its status is refreshed every second) to count.
const EDGE_DRAINED_HOLD: Duration = Duration::from_millis(1_500);

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// The seed.
    pub seed: u64,
    /// SHA-256 over every observable step.
    pub trace_hash: [u8; 32],
    /// Steps hashed.
    pub n_steps: u64,
    /// Simulated time the run took.
    pub sim_time: Duration,
    /// Records the producers generated.
    pub n_records: usize,
    /// Events in the final log.
    pub n_events: usize,
    /// Power losses between tasks.
    pub n_crashes: u32,
    /// Power losses inside a disk operation.
    pub n_crashes_mid_io: u32,
    /// Clean restarts.
    pub n_clean_restarts: u32,
    /// `fdatasync` failures injected.
    pub n_sync_errors: u32,
    /// Full read-backs checked.
    pub n_checks: u32,
    /// Crashes that fired inside the node's recovery (then it recovers again).
    pub n_recovery_crashes: u32,
    /// Armed crashes that fired inside a disk operation (the rest fell back to a plain crash).
    pub n_fired_mid_io: u64,
    /// Last writes torn by crashes.
    pub n_torn_writes: u64,
    /// Acks of records already stored (retries and duplicated requests).
    pub n_duplicate_acks: u64,
    /// Records answered "duplicate older than the dedup window".
    pub n_too_old: u64,
    /// Disk operations by a node process after `Node::stop` returned.
    pub n_ops_after_stop: u64,
    /// Edge agents.
    pub n_edges: u32,
    /// Boots of edge agents (the first included).
    pub n_edge_boots: u32,
    /// Edge power cuts (those inside a disk operation included).
    pub n_edge_power_cuts: u32,
    /// Edge power cuts that fired inside a disk operation.
    pub n_edge_power_cuts_mid_io: u32,
    /// Clean edge restarts.
    pub n_edge_clean_restarts: u32,
    /// Edge link outages (each flap counts).
    pub n_edge_outages: u32,
    /// `fdatasync` failures that fired on edge disks.
    pub n_edge_sync_failures: u64,
    /// Periods an edge disk was full.
    pub n_edge_disk_full: u32,
    /// Edge writes refused with ENOSPC.
    pub n_edge_no_space: u64,
    /// Readings edge agents accepted into their spools.
    pub n_edge_accepted: u64,
    /// Seqs declared dropped in the final log, by reason, and edge events in it.
    pub edge_totals: EdgeTotals,
    /// Damage done to node partition files at rest (`--disk-corruption`).
    pub n_disk_damage: u32,
    /// Damaged partitions that lost acked records and reported corruption.
    pub n_corruption_reports: u32,
    /// Clock jumps.
    pub n_jumps: u32,
    /// Simulated time the clock jumps skipped (not in `sim_time`).
    pub jumped: Duration,
}

/// The result of a run: its summary, and the first broken invariant if any.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// What the run did (as far as it got).
    pub summary: RunSummary,
    /// The first broken invariant.
    pub failure: Option<Violation>,
}

/// Runs one seed on a fresh runtime.
pub fn run_seed(seed: u64, settings: &Settings) -> RunOutcome {
    logging::install_panic_recorder();
    logging::clear_panics();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()))
        .unhandled_panic(tokio::runtime::UnhandledPanic::ShutdownRuntime)
        .build()
        .unwrap_or_else(|e| panic!("seed {seed}: cannot build the simulation runtime: {e}"));
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(simulate(seed, settings.clone()))
    }));
    drop(runtime);
    clock::clear_thread_run();
    let mut outcome = match result {
        Ok(outcome) => outcome,
        Err(_) => RunOutcome {
            summary: RunSummary {
                seed,
                ..RunSummary::default()
            },
            failure: None,
        },
    };
    if outcome.failure.is_none() {
        outcome.failure = no_panics::check().err();
    }
    logging::clear_panics();
    outcome
}

/// How the controller ends a node process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Power loss between two tasks.
    Crash,
    /// Power loss inside a disk operation (maybe between a write and its fsync).
    CrashMidIo,
    /// The process stops cleanly and starts again.
    CleanRestart,
    /// One `fdatasync` fails with `EIO`, Linux style; the process keeps running.
    SyncError,
}

struct Controller {
    world: Arc<World>,
    config: NodeConfig,
    settings: Settings,
    node: Option<Node>,
    fault_rng: ChaCha8Rng,
    consumer_rng: ChaCha8Rng,
    edge_links: Vec<Arc<EdgeLink>>,
    summary: RunSummary,
    /// Draws the disk damage of `--disk-corruption` (used only then).
    damage_rng: ChaCha8Rng,
    /// Draws the loss of a whole partition (its directory and manifest) with
    /// `--disk-corruption`, apart from `damage_rng` so its draws stay as they were.
    partition_loss_rng: ChaCha8Rng,
    /// Partitions whose files were damaged, with what was done.
    damaged: BTreeMap<PartitionKey, Vec<String>>,
    /// Damaged partitions that reported corruption, with the refusal's reason.
    reported: BTreeMap<PartitionKey, String>,
}

async fn simulate(seed: u64, settings: Settings) -> RunOutcome {
    let scenario = Scenario::from_seed(seed, &settings);
    let config = scenario.node_config();
    let clock = Arc::new(SimClock::new());
    let disk = sim_disk();
    if settings.plant == Some(Plant::AckBeforeFsync) {
        let (first_stream, _) = &scenario.streams[0];
        disk.plant_noop_sync(
            &Scenario::data_dir()
                .join("streams")
                .join(first_stream.as_str())
                .join("0"),
        );
    }
    let world = Arc::new(World::new(seed, clock, disk, scenario.streams.clone()));
    let mut controller = Controller {
        world: world.clone(),
        config,
        settings: settings.clone(),
        node: None,
        fault_rng: rng_for(seed, OWNER_RUN, SALT_FAULTS),
        consumer_rng: rng_for(seed, OWNER_RUN, SALT_CONSUMER),
        edge_links: Vec::new(),
        summary: RunSummary {
            seed,
            ..RunSummary::default()
        },
        damage_rng: rng_for(seed, OWNER_RUN, SALT_DISK_DAMAGE),
        partition_loss_rng: rng_for(seed, OWNER_RUN, SALT_PARTITION_LOSS),
        damaged: BTreeMap::new(),
        reported: BTreeMap::new(),
    };
    let bound = Duration::from_millis(settings.safety_ms + settings.liveness_ms)
        + Duration::from_millis(scenario.jumped_ms())
        + RUN_SLACK;
    let failure = match tokio::time::timeout(bound, controller.run(&scenario)).await {
        Ok(Ok(())) => None,
        Ok(Err(violation)) => Some(violation),
        Err(_) => Some(Violation::new(
            "convergence",
            format!(
                "the run did not finish within {} simulated seconds",
                bound.as_secs()
            ),
        )),
    };
    let mut summary = controller.summary;
    let (hash, n_steps) = world.trace.finish();
    summary.trace_hash = hash;
    summary.n_steps = n_steps;
    summary.sim_time = world.now();
    summary.jumped = world.jumped();
    summary.n_jumps = u32::try_from(scenario.jumps.len()).unwrap_or(u32::MAX);
    add_edge_counts(&world.edges(), &mut summary);
    {
        let history = world.history();
        summary.n_records = history.n_records();
        summary.n_duplicate_acks = history.n_duplicate_acks();
        summary.n_too_old = history.n_too_old();
    }
    let disk_stats = world.disk.stats();
    summary.n_torn_writes = disk_stats.n_torn_writes;
    summary.n_fired_mid_io = disk_stats.n_crashes_mid_io;
    summary.n_ops_after_stop = disk_stats.n_ops_after_exit;
    RunOutcome {
        summary,
        failure: failure.or_else(|| world.first_violation()),
    }
}

/// Adds what the edges did to the summary.
fn add_edge_counts(ledger: &EdgeLedger, summary: &mut RunSummary) {
    summary.n_edges = u32::try_from(ledger.edges.len()).unwrap_or(u32::MAX);
    for edge in &ledger.edges {
        summary.n_edge_boots += u32::try_from(edge.boots.len()).unwrap_or(u32::MAX);
        summary.n_edge_power_cuts += edge.n_power_cuts;
        summary.n_edge_power_cuts_mid_io += edge.n_power_cuts_mid_io;
        summary.n_edge_clean_restarts += edge.n_clean_restarts;
        summary.n_edge_outages += edge.n_outages;
        let disk = edge.disk.stats();
        summary.n_edge_sync_failures += disk.n_sync_failures;
        summary.n_edge_disk_full += edge.n_disk_full;
        summary.n_edge_no_space += disk.n_no_space;
        summary.n_edge_accepted += edge.boots.iter().map(Boot::n_accepted).sum::<u64>();
    }
}

impl Controller {
    async fn run(&mut self, scenario: &Scenario) -> Result<(), Violation> {
        let world = self.world.clone();
        let seed = world.seed;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        self.start_node().await?;
        for plan in &scenario.producers {
            let producer = Producer::new(plan.clone(), seed);
            let owner = OWNER_PRODUCER_BASE + u64::from(plan.idx);
            let link = Link::new(
                world.clone(),
                producer.identity().clone(),
                scenario.link,
                rng_for(seed, owner, SALT_LINK),
            );
            tokio::spawn(run_producer(
                world.clone(),
                producer,
                link,
                shutdown_rx.clone(),
            ));
        }
        self.spawn_edges(scenario, &shutdown_rx);
        tokio::spawn(run_tailer(
            world.clone(),
            rng_for(seed, OWNER_RUN, SALT_TAILER),
            shutdown_rx,
        ));
        self.safety_phase().await?;
        self.liveness_phase().await?;
        let _ = shutdown_tx.send(true);
        self.stop_node().await;
        Ok(())
    }

    /// Starts every edge site and the clock jumps that take some of them offline.
    fn spawn_edges(&mut self, scenario: &Scenario, shutdown: &watch::Receiver<bool>) {
        let world = &self.world;
        let plant = self.settings.plant == Some(Plant::EdgeAckUnstored);
        for plan in &scenario.edges {
            tracing::info!(edge = plan.idx, ?plan, "edge plan");
            let link = EdgeLink::new(world.clone(), plan, plant);
            self.edge_links.push(link.clone());
            let runner = EdgeRunner::new(world.clone(), plan.clone(), link);
            tokio::spawn(runner.run(shutdown.clone()));
        }
        for jump in &scenario.jumps {
            tracing::info!(?jump, "clock jump planned");
            let links = self.edge_links.clone();
            tokio::spawn(run_jump(world.clone(), jump.clone(), links));
        }
    }

    /// Faults at seeded times; the first is always a crash.
    async fn safety_phase(&mut self) -> Result<(), Violation> {
        let safety_ms = self.settings.safety_ms.max(10);
        let n_faults = self
            .fault_rng
            .random_range(1..=self.settings.faults_max.max(1));
        let mut times: Vec<u64> = (0..n_faults)
            .map(|_| {
                self.fault_rng
                    .random_range(safety_ms / 10..=safety_ms * 9 / 10)
            })
            .collect();
        times.sort_unstable();
        for (idx, at_ms) in times.into_iter().enumerate() {
            self.wait_until(Duration::from_millis(at_ms)).await?;
            let fault = match (idx, self.fault_rng.random_range(0..10u8)) {
                (0, roll) if roll < 5 => Fault::Crash,
                (0, _) => Fault::CrashMidIo,
                (_, 0..=2) => Fault::Crash,
                (_, 3..=5) => Fault::CrashMidIo,
                (_, 6..=7) => Fault::CleanRestart,
                _ => Fault::SyncError,
            };
            let fault = match fault {
                Fault::SyncError if !self.settings.sync_errors => Fault::CleanRestart,
                other => other,
            };
            if fault == Fault::SyncError {
                self.sync_error().await?;
                continue;
            }
            self.fault(fault).await?;
            if self.settings.disk_corruption && self.damage_rng.random_bool(0.5) {
                self.damage_disk();
            }
            if self.settings.disk_corruption && self.partition_loss_rng.random_bool(0.1) {
                self.lose_partition();
            }
            let downtime = Duration::from_millis(self.fault_rng.random_range(0..=1_000u64));
            tokio::time::sleep(downtime).await;
            self.restart().await?;
            self.check("restart").await?;
        }
        self.wait_until(Duration::from_millis(safety_ms)).await
    }

    /// No faults, no new records from producers, edge links healed: every record must get an
    /// answer and every edge must drain within the bound; then every seq an edge accepted must
    /// be delivered or declared.
    async fn liveness_phase(&mut self) -> Result<(), Violation> {
        self.world.start_liveness();
        for link in &self.edge_links {
            link.heal();
        }
        self.world.record("liveness", []);
        let deadline = self.world.now() + Duration::from_millis(self.settings.liveness_ms);
        while self.world.now() < deadline && !self.converged() {
            let step = (self.world.now() + Duration::from_millis(100)).min(deadline);
            self.wait_until(step).await?;
        }
        let snapshot = self.check("final").await?;
        // A partition that reported corruption is read-only: what its sensors send stays
        // unanswered and their edges cannot drain. Only those are exempt, and only from what
        // follows the damage; every other record and sensor must converge.
        let reported: BTreeSet<PartitionKey> = self.reported.keys().cloned().collect();
        let exempt = self.exempt_sensors();
        convergence::check_edges(
            &self.world.edges(),
            self.world.now(),
            EDGE_DRAINED_HOLD,
            &exempt,
        )?;
        self.summary.edge_totals = edge_no_silent_gaps::check_except(
            &self.world.edges(),
            &snapshot,
            self.world.clock.wall(),
            true,
            &exempt,
        )?;
        convergence::check(
            &self.world.history(),
            &snapshot,
            &self.world.streams,
            &reported,
        )?;
        self.summary.n_events = snapshot.n_events();
        for ((stream, partition), log) in &snapshot.partitions {
            let mut bytes = Vec::new();
            for stored in &log.events {
                bytes.extend_from_slice(&stored.offset.0.to_le_bytes());
                codec::encode_into(&stored.event, &mut bytes).map_err(|e| {
                    Violation::new("integrity", format!("stored event does not encode: {e}"))
                })?;
            }
            self.world
                .record(&format!("log {stream}/{partition}"), bytes);
        }
        Ok(())
    }

    /// Damages one node partition file at rest (the node is down): flips a bit in, zeroes a
    /// range of or truncates the written part of a segment or manifest, or deletes a segment.
    /// (`lose_partition` deletes a whole partition, from an RNG of its own.)
    fn damage_disk(&mut self) {
        let data_dir = Path::new(DATA_DIR);
        let files: Vec<(std::path::PathBuf, Vec<u8>, PartitionKey)> = self
            .world
            .disk
            .files()
            .into_iter()
            .filter_map(|(path, bytes)| {
                let part = partition_of(data_dir, &path)?;
                Some((path, bytes, part))
            })
            .collect();
        if files.is_empty() {
            return;
        }
        let rng = &mut self.damage_rng;
        let (path, bytes, part) = &files[rng.random_range(0..files.len())];
        let is_segment = path.extension().is_some_and(|e| e == "log");
        // The written part: up to the last non-zero byte (a segment's preallocation is zeros).
        let end = bytes
            .iter()
            .rposition(|b| *b != 0)
            .map_or(0, |i| i as u64 + 1);
        if end == 0 {
            return;
        }
        let low = if is_segment && end > SEGMENT_HEADER_LEN && rng.random_bool(0.8) {
            SEGMENT_HEADER_LEN
        } else {
            0
        };
        let pos = rng.random_range(low..end);
        let disk = &self.world.disk;
        let (what, result) = match rng.random_range(0..4u8) {
            0 => {
                let bit = rng.random_range(0..8u8);
                (
                    format!("flip bit {bit} of byte {pos}"),
                    disk.flip_bit(path, pos, bit),
                )
            }
            1 => {
                let len = rng.random_range(1..=64u64).min(end - pos);
                (
                    format!("zero {len} bytes at {pos}"),
                    disk.zero_range(path, pos, len),
                )
            }
            2 => (
                format!("truncate to {pos} bytes"),
                disk.truncate_file(path, pos),
            ),
            _ if is_segment => ("delete".to_owned(), disk.delete_file(path)),
            _ => (
                format!("flip bit 0 of byte {pos}"),
                disk.flip_bit(path, pos, 0),
            ),
        };
        let line = format!("{} {what} {result:?}", path.display());
        tracing::info!(damage = %line, "disk damage");
        self.world.record("disk-damage", line.as_bytes());
        self.summary.n_disk_damage += 1;
        self.damaged.entry(part.clone()).or_default().push(line);
        self.world.reads().exempt.insert(part.clone());
    }

    /// Deletes every file of one node partition that has any (its segments and its manifest),
    /// as an operator's `rm -r` of both would, while the node is down: the node's partition
    /// catalog must make that corruption, never an empty partition.
    fn lose_partition(&mut self) {
        let data_dir = Path::new(DATA_DIR);
        let mut by_partition: BTreeMap<PartitionKey, Vec<std::path::PathBuf>> = BTreeMap::new();
        for path in self.world.disk.files().into_keys() {
            if let Some(part) = partition_of(data_dir, &path) {
                by_partition.entry(part).or_default().push(path);
            }
        }
        if by_partition.is_empty() {
            return;
        }
        let idx = self.partition_loss_rng.random_range(0..by_partition.len());
        let Some((part, paths)) = by_partition.into_iter().nth(idx) else {
            return;
        };
        let results: Vec<String> = paths
            .iter()
            .map(|p| format!("{} {:?}", p.display(), self.world.disk.delete_file(p)))
            .collect();
        let line = format!(
            "partition {}/{} lost: delete {}",
            part.0,
            part.1,
            results.join(", ")
        );
        tracing::info!(damage = %line, "disk damage");
        self.world.record("disk-damage", line.as_bytes());
        self.summary.n_disk_damage += 1;
        self.damaged.entry(part.clone()).or_default().push(line);
        self.world.reads().exempt.insert(part);
    }

    /// Holds the damaged partitions to `disk_corruption`: acked records not read back must be
    /// reported lost (a resend of one is refused: the partition is read-only, naming a file).
    async fn check_damaged(
        &mut self,
        ack_clock: u64,
        snapshot: &LogSnapshot,
        service: &sluice_node::service::Service,
    ) -> Result<(), Violation> {
        let damaged: BTreeSet<PartitionKey> = self.damaged.keys().cloned().collect();
        let missing =
            disk_corruption::missing(&self.world.history(), ack_clock, snapshot, &damaged)?;
        let lossy: BTreeSet<PartitionKey> = missing.keys().cloned().collect();
        for (part, lost) in missing {
            if self.reported.contains_key(&part) {
                continue;
            }
            let Some(first) = lost.first() else { continue };
            let Some(request) = disk_corruption::resend(&self.world.history(), first) else {
                continue;
            };
            let answer = service.handle(Arc::new(first.0.clone()), request).await;
            let reason =
                disk_corruption::require_report(&part, first, lost.len(), &answer, DATA_DIR)
                    .map_err(|mut v| {
                        v.details
                            .push_str(&format!("; damage: {:?}", self.damaged.get(&part)));
                        v
                    })?;
            self.world.record(
                "corruption-reported",
                format!("{}/{} {reason}", part.0, part.1),
            );
            self.summary.n_corruption_reports += 1;
            self.reported.insert(part, reason);
        }
        // Damage that lost no acknowledged record may still have made a partition read-only
        // (a truncation into the preallocated zeros): ask it, so that what is sent to it is not
        // expected to converge.
        for part in &damaged {
            if self.reported.contains_key(part) || lossy.contains(part) {
                continue;
            }
            let Some(key) =
                disk_corruption::probe_record(&self.world.history(), &self.world.streams, part)
            else {
                continue;
            };
            let Some(request) = disk_corruption::resend(&self.world.history(), &key) else {
                continue;
            };
            let answer = service.handle(Arc::new(key.0.clone()), request).await;
            if let Some(reason) = disk_corruption::read_only_reason(&answer, DATA_DIR) {
                self.world.record(
                    "corruption-reported",
                    format!("{}/{} {reason}", part.0, part.1),
                );
                self.summary.n_corruption_reports += 1;
                self.reported.insert(part.clone(), reason);
            }
        }
        Ok(())
    }

    /// The edges' sensors whose partition reported corruption.
    fn exempt_sensors(&self) -> edge_no_silent_gaps::Exempt {
        let mut out = edge_no_silent_gaps::Exempt::new();
        if self.reported.is_empty() {
            return out;
        }
        for edge in &self.world.edges().edges {
            for (sensor, stream) in &edge.sensors {
                let partition = crate::history::partition_of(&self.world.streams, stream, sensor);
                if self.reported.contains_key(&(stream.clone(), partition)) {
                    out.insert((edge.idx, sensor.clone()));
                }
            }
        }
        out
    }

    /// True when every record has an answer and every edge drained.
    fn converged(&self) -> bool {
        self.world.history().n_unresolved() == 0
            && self
                .world
                .edges()
                .all_drained(self.world.now(), EDGE_DRAINED_HOLD)
    }

    /// Sleeps until `at` (simulated time since the start), failing early on a violation found
    /// by another task or when the node stops on its own.
    async fn wait_until(&mut self, at: Duration) -> Result<(), Violation> {
        loop {
            if let Some(violation) = self.world.first_violation() {
                return Err(violation);
            }
            no_panics::check()?;
            let now = self.world.now();
            if now >= at {
                return Ok(());
            }
            let step = (at - now).min(Duration::from_millis(500));
            let node = self.node.as_mut();
            tokio::select! {
                biased;
                () = node_failed(node) => {
                    self.node = None;
                    self.world.set_node(None);
                    return Err(Violation::new("convergence", "the node stopped on its own: a partition spent its restart budget"));
                }
                () = tokio::time::sleep(step) => {}
            }
        }
    }

    /// Starts the node again; sometimes a crash is armed to fire inside its recovery (only
    /// recoveries that write — a torn tail to zero, a half-created segment to rebuild — reach
    /// it), and then it recovers once more.
    async fn restart(&mut self) -> Result<(), Violation> {
        for attempt in 0..3u32 {
            let armed = attempt < 2 && self.fault_rng.random_bool(0.3);
            if armed {
                let n_ops = self.fault_rng.random_range(1..=8u32);
                let rng = rng_for(
                    self.world.seed,
                    0x8ec0 + u64::from(self.summary.n_recovery_crashes),
                    SALT_CRASH,
                );
                self.world.disk.arm_power_cut(n_ops, rng);
            }
            let generation = self.world.disk.generation();
            let started = self.start_node().await;
            if self.world.disk.generation() == generation {
                self.world.disk.disarm_power_cut();
                return started;
            }
            self.world
                .record("crash-in-recovery", format!("{}", started.is_ok()));
            self.summary.n_recovery_crashes += 1;
            self.stop_node().await;
        }
        self.start_node().await
    }

    async fn start_node(&mut self) -> Result<(), Violation> {
        let world = &self.world;
        let env = process_env(&world.clock, &world.disk, world.seed);
        let disk_generation = world.disk.generation();
        match Node::start(&self.config, env).await {
            Ok(node) => {
                world.set_node(Some(NodeSlot {
                    service: node.service().clone(),
                    disk_generation,
                }));
                world.record("start", format!("generation {disk_generation}"));
                self.node = Some(node);
                Ok(())
            }
            Err(e) => Err(Violation::new(
                "acked_durability",
                format!("the node failed to start on the recovered disk: {e}"),
            )),
        }
    }

    async fn stop_node(&mut self) {
        self.world.set_node(None);
        if let Some(node) = self.node.take() {
            node.stop().await;
        }
    }

    async fn fault(&mut self, fault: Fault) -> Result<(), Violation> {
        let world = self.world.clone();
        let crash_rng = rng_for(
            world.seed,
            u64::from(self.summary.n_crashes + self.summary.n_crashes_mid_io),
            SALT_CRASH,
        );
        match fault {
            Fault::Crash => {
                let report = world.disk.power_cut(&mut crash_rng.clone());
                world.record("crash", format!("{report:?}"));
                self.summary.n_crashes += 1;
            }
            Fault::CrashMidIo => {
                let n_ops = self.fault_rng.random_range(1..=40u32);
                world.disk.arm_power_cut(n_ops, crash_rng.clone());
                let fired = tokio::select! {
                    biased;
                    report = world.disk.wait_power_cut() => Some(report),
                    () = tokio::time::sleep(ARMED_CRASH_WAIT) => None,
                };
                let report = match fired {
                    Some(report) => report,
                    None => {
                        world.disk.disarm_power_cut();
                        world.disk.power_cut(&mut crash_rng.clone())
                    }
                };
                world.record(
                    "crash-mid-io",
                    format!("{n_ops} {} {report:?}", fired.is_some()),
                );
                self.summary.n_crashes_mid_io += 1;
            }
            Fault::SyncError => return self.sync_error().await,
            Fault::CleanRestart => {
                self.stop_node().await;
                world.disk.close_all();
                world.record("clean-stop", []);
                self.summary.n_clean_restarts += 1;
            }
        }
        // The crashed process is dead: tear down what is left of it (its disk handles fail).
        self.stop_node().await;
        Ok(())
    }

    /// Fails one of the next few `fdatasync` calls; the node must fence the partition, restart
    /// it from what the disk really holds, and acknowledge nothing that is not durable.
    async fn sync_error(&mut self) -> Result<(), Violation> {
        let before = self.world.disk.stats().n_sync_failures;
        let n_ok = self.fault_rng.random_range(0..=5u32);
        self.world.disk.arm_sync_failure(n_ok);
        let deadline = self.world.now() + Duration::from_secs(3);
        while self.world.disk.stats().n_sync_failures == before && self.world.now() < deadline {
            self.wait_until(self.world.now() + Duration::from_millis(50))
                .await?;
        }
        let fired = !self.world.disk.disarm_sync_failures();
        self.world.record("sync-error", format!("{n_ok} {fired}"));
        self.summary.n_sync_errors += u32::from(fired);
        // Give the supervisor time to restart the fenced partition before reading it back.
        self.wait_until(self.world.now() + Duration::from_millis(500))
            .await?;
        self.check("sync-error").await.map(|_| ())
    }

    /// Reads every partition back and runs every log invariant.
    async fn check(&mut self, when: &str) -> Result<LogSnapshot, Violation> {
        let Some(slot) = self.world.node() else {
            return Err(Violation::new(
                "convergence",
                format!("no node to read back from ({when})"),
            ));
        };
        let ack_clock = self.world.history().ack_clock();
        let snapshot = read_all(&slot.service, &self.world.streams, &mut self.consumer_rng).await?;
        {
            let history = self.world.history();
            let mut reads = self.world.reads();
            invariants::check_log(&history, ack_clock, &snapshot, &mut reads)?;
        }
        if !self.damaged.is_empty() {
            self.check_damaged(ack_clock, &snapshot, &slot.service)
                .await?;
        }
        // The readable prefix of a corrupt partition tiles like any log: checked for every
        // sensor.
        edge_no_silent_gaps::check(
            &self.world.edges(),
            &snapshot,
            self.world.clock.wall(),
            false,
        )?;
        for ((stream, partition), log) in &snapshot.partitions {
            // The probes' reads are checked against the snapshot just remembered.
            probe(
                &self.world,
                &slot.service,
                stream,
                *partition,
                log.log_start..log.high_watermark,
                8,
                &mut self.consumer_rng,
            )
            .await?;
        }
        let marks: Vec<String> = snapshot
            .partitions
            .iter()
            .map(|((s, p), log)| format!("{s}/{p}:{}", log.high_watermark))
            .collect();
        self.world.record(&format!("check {when}"), marks.join(" "));
        self.summary.n_checks += 1;
        Ok(snapshot)
    }
}

/// The partition a node file belongs to: `streams/<stream>/<partition>/<segment>` or
/// `manifests/<stream>/<partition>.manifest` under `data_dir`.
fn partition_of(data_dir: &Path, path: &Path) -> Option<PartitionKey> {
    let rest = path.strip_prefix(data_dir).ok()?;
    let parts: Vec<&str> = rest.iter().filter_map(|c| c.to_str()).collect();
    let (stream, partition) = match parts.as_slice() {
        ["streams", stream, partition, name] if name.ends_with(".log") => (*stream, *partition),
        ["manifests", stream, file] => (*stream, file.strip_suffix(".manifest")?),
        _ => return None,
    };
    Some((
        StreamName::new(stream).ok()?,
        PartitionId(partition.parse().ok()?),
    ))
}

async fn node_failed(node: Option<&mut Node>) {
    match node {
        Some(node) => node.failed().await,
        None => std::future::pending().await,
    }
}
