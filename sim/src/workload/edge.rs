//! A simulated edge site: the real agent (`sluice_edge::agent::Agent`) on a disk of its own (an
//! edge's disk is not the node's), reading seeded `sim` sensors and reaching the node through
//! its [`EdgeLink`], driven through its fault schedule in the safety phase:
//!
//! - link outages and flaps (tasks of their own, so they overlap other faults);
//! - power cuts: between tasks, or inside the `n`-th next disk operation of the edge; the disk
//!   loses (or tears) what was not synced, the agent is dropped without closing its spools, and
//!   a new boot (a new boot epoch) starts on the recovered disk after a downtime;
//! - clean restarts: `Agent::stop` (spools closed), then a new boot;
//! - with `--edge-disk-faults`: a failed `fdatasync` (Linux semantics) and a full disk for a
//!   while.
//!
//! Every boot, how it ended and what it had accepted go into the checkers'
//! [`crate::edge_ledger::EdgeLedger`]. In the liveness phase the link is healed and the runner
//! reports the agent's progress (sources finished, spools empty, nothing in flight) until the
//! run ends. [`run_jump`] drives a clock jump with the outages around it.

use crate::edge_ledger::{Boot, BootEnd, EdgeRecord, Told};
use crate::edge_link::EdgeLink;
use crate::env::{sim_disk, CrashDisk};
use crate::invariants::Violation;
use crate::scenario::{EdgeFault, EdgePlan, Jump, OWNER_EDGE_BASE, SALT_EDGE_CRASH};
use crate::world::{Phase, World};
use sluice_edge::agent::{spool_dir, Agent, EdgeError};
use sluice_edge::config::EdgeConfig;
use sluice_edge::source::{OfferObserver, Offered};
use sluice_edge::spool::SpoolError;
use sluice_proto::env::{rng_for, BlockingMode, Clock, Env};
use sluice_proto::{BootEpoch, SensorId, StreamName};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long the runner waits for an armed mid-IO power cut before cutting anyway.
const ARMED_CUT_WAIT: Duration = Duration::from_secs(3);
/// How often the liveness phase looks at the agent's progress.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Longest sleep of the safety phase between two looks at the schedule.
const SCHEDULE_STEP: Duration = Duration::from_millis(500);

/// Sleeps until `at` of the run's time (which clock jumps do not advance).
pub async fn sleep_until(world: &World, at: Duration) {
    loop {
        let now = world.now();
        if now >= at {
            return;
        }
        tokio::time::sleep((at - now).min(SCHEDULE_STEP)).await;
    }
}

/// One edge site and its agent.
pub struct EdgeRunner {
    world: Arc<World>,
    plan: EdgePlan,
    config: EdgeConfig,
    link: Arc<EdgeLink>,
    disk: CrashDisk,
    agent: Option<Agent>,
    /// Cleared when the current boot ends (its transport's answers are then told to no one).
    alive: Arc<AtomicBool>,
    /// What the current boot's sources were told, recorded as they were told it.
    accepts: Arc<AcceptLog>,
}

/// The checkers' own record of what an edge's sources were told: per sensor and boot epoch, the
/// seqs of `Offered::Accepted`. They must rise within an epoch (a seq is issued once); anything
/// else is a violation at once. They may skip seqs the agent issued itself (a sensor moved to a
/// newer epoch gets a declaration and its never-sent readings resent there first). It also
/// counts the offers whose outcome the source never learned (made, never answered): a stop can
/// end a source while its offer is queued or its answer is on the way, and the agent may have
/// spooled that reading (sources are at-least-once into the spool), so each of them may account
/// for one more seq. And it enters the epoch of every spool open into its boot's record, as
/// the agent reports it.
struct AcceptLog {
    world: Arc<World>,
    edge_idx: u32,
    /// The index of its boot in the edge's record.
    boot_idx: usize,
    state: std::sync::Mutex<Offers>,
}

#[derive(Default)]
struct Offers {
    /// Per sensor and epoch: the seqs its sources were told.
    told: BTreeMap<SensorId, BTreeMap<BootEpoch, Told>>,
    /// Per sensor: offers made minus offers answered.
    unanswered: BTreeMap<SensorId, u64>,
}

impl AcceptLog {
    fn new(world: Arc<World>, edge_idx: u32, boot_idx: usize) -> Self {
        Self {
            world,
            edge_idx,
            boot_idx,
            state: std::sync::Mutex::new(Offers::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Offers> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Seqs accepted per sensor and epoch.
    fn accepted(&self) -> BTreeMap<SensorId, BTreeMap<BootEpoch, Told>> {
        self.lock().told.clone()
    }

    /// Offers per sensor whose source has not been told their outcome.
    fn unanswered(&self) -> BTreeMap<SensorId, u64> {
        self.lock()
            .unanswered
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| (s.clone(), *n))
            .collect()
    }
}

impl OfferObserver for AcceptLog {
    fn offering(&self, _source: &str, _stream: &StreamName, sensor: &SensorId) {
        *self.lock().unanswered.entry(sensor.clone()).or_default() += 1;
    }

    fn offered(&self, _source: &str, _stream: &StreamName, sensor: &SensorId, offered: &Offered) {
        let mut state = self.lock();
        if let Some(n) = state.unanswered.get_mut(sensor) {
            *n = n.saturating_sub(1);
        }
        let Offered::Accepted { epoch, seq } = offered else {
            return;
        };
        let told = state
            .told
            .entry(sensor.clone())
            .or_default()
            .entry(BootEpoch(*epoch))
            .or_default();
        let last = told.last();
        if !told.push(*seq) {
            self.world.fail(Violation::new(
                "edge_no_silent_gaps",
                format!(
                    "edge e{}: sensor {sensor} epoch {epoch} was told seq {seq}, but it had \
                     already been told seq {last:?} of that epoch",
                    self.edge_idx
                ),
            ));
        }
    }

    fn spool_opened(&self, stream: &StreamName, epoch: BootEpoch) {
        tracing::debug!(edge = self.edge_idx, %stream, %epoch, "edge spool opened");
        let mut ledger = self.world.edges();
        let Some(edge) = ledger.edges.iter_mut().find(|e| e.idx == self.edge_idx) else {
            return;
        };
        let Some(boot) = edge.boots.get_mut(self.boot_idx) else {
            return;
        };
        if boot.end != BootEnd::Running {
            // A boot that ended opens nothing the checkers should believe.
            return;
        }
        let epochs = boot.epochs.entry(stream.clone()).or_default();
        if !epochs.contains(&epoch) {
            epochs.push(epoch);
        }
    }
}

impl std::fmt::Debug for EdgeRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeRunner")
            .field("idx", &self.plan.idx)
            .finish_non_exhaustive()
    }
}

/// The boot epoch of each spool, as the agent publishes it.
fn read_epochs(agent: &Agent) -> BTreeMap<StreamName, BootEpoch> {
    let status = agent.metrics().status();
    status
        .spools
        .iter()
        .filter_map(|(name, spool)| {
            StreamName::new(name.clone())
                .ok()
                .map(|stream| (stream, BootEpoch(spool.epoch)))
        })
        .collect()
}

impl EdgeRunner {
    /// The runner of `plan`, entered in the ledger (no agent runs yet).
    pub fn new(world: Arc<World>, plan: EdgePlan, link: Arc<EdgeLink>) -> Self {
        let config = plan.config();
        let disk = sim_disk();
        let spool_dirs: BTreeMap<StreamName, _> = config
            .streams()
            .into_iter()
            .map(|stream| {
                let dir = spool_dir(&config.edge.data_dir, &stream);
                disk.track_dir(&dir);
                (stream, dir)
            })
            .collect();
        world.edges().edges.push(EdgeRecord {
            idx: plan.idx,
            identity: plan.identity(),
            sensors: plan
                .sensors
                .iter()
                .map(|s| (s.sensor.clone(), s.stream.clone()))
                .collect(),
            policy: plan.spool.policy,
            n_segments_max: config.spool_share().n_segments_max(),
            record_age_ms_max: plan.spool.record_age_ms_max,
            spool_dirs,
            disk: disk.clone(),
            boots: Vec::new(),
            expired_answers: BTreeSet::new(),
            progress: None,
            n_power_cuts: 0,
            n_power_cuts_mid_io: 0,
            n_clean_restarts: 0,
            n_outages: 0,
            n_sync_failures_armed: 0,
            n_disk_full: 0,
        });
        let accepts = Arc::new(AcceptLog::new(world.clone(), plan.idx, 0));
        Self {
            world,
            plan,
            config,
            link,
            disk,
            agent: None,
            alive: Arc::new(AtomicBool::new(false)),
            accepts,
        }
    }

    fn with_record<R>(&self, f: impl FnOnce(&mut EdgeRecord) -> R) -> Option<R> {
        let mut ledger = self.world.edges();
        ledger
            .edges
            .iter_mut()
            .find(|e| e.idx == self.plan.idx)
            .map(f)
    }

    /// Runs the site until `shutdown`: boots the agent, plays the fault schedule in the safety
    /// phase, reports progress in the liveness phase.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.boot().await;
        let mut faults = self.plan.faults.clone().into_iter().peekable();
        loop {
            let now = self.world.now();
            let step = match (self.world.phase(), faults.peek()) {
                (Phase::Safety, Some((at_ms, _))) => Duration::from_millis(*at_ms)
                    .saturating_sub(now)
                    .min(SCHEDULE_STEP),
                (Phase::Safety, None) => SCHEDULE_STEP,
                (Phase::Liveness, _) => PROGRESS_INTERVAL,
            };
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                error = agent_failed(self.agent.as_mut()) => {
                    self.agent = None;
                    self.world.fail(Violation::new(
                        "convergence",
                        format!("edge e{}: the agent stopped on its own: {error}", self.plan.idx),
                    ));
                    break;
                }
                () = tokio::time::sleep(step) => {}
            }
            match self.world.phase() {
                Phase::Safety => {
                    let world = self.world.clone();
                    let due = |(at_ms, _): &(u64, EdgeFault)| {
                        world.phase() == Phase::Safety
                            && Duration::from_millis(*at_ms) <= world.now()
                    };
                    while let Some((at_ms, fault)) = faults.next_if(due) {
                        tracing::debug!(edge = self.plan.idx, at_ms, ?fault, "edge fault");
                        self.fault(fault).await;
                    }
                }
                Phase::Liveness => {
                    self.link.heal();
                    self.progress();
                }
            }
        }
        self.alive.store(false, Ordering::Relaxed);
    }

    async fn fault(&mut self, fault: EdgeFault) {
        match fault {
            EdgeFault::Outage { down_ms } => self.outage(vec![(down_ms, 0)]),
            EdgeFault::Flap { periods } => self.outage(periods),
            EdgeFault::PowerCut {
                mid_io_ops,
                downtime_ms,
            } => {
                if self.power_cut(mid_io_ops).await {
                    tokio::time::sleep(Duration::from_millis(downtime_ms.max(1))).await;
                    self.boot().await;
                }
            }
            EdgeFault::CleanRestart { downtime_ms } => {
                if self.clean_stop().await {
                    tokio::time::sleep(Duration::from_millis(downtime_ms.max(1))).await;
                    self.boot().await;
                }
            }
            EdgeFault::SyncFailure { after_syncs } => {
                self.with_record(|e| e.n_sync_failures_armed += 1);
                self.disk.arm_sync_failure(after_syncs);
            }
            EdgeFault::DiskFull { full_ms } => {
                self.with_record(|e| e.n_disk_full += 1);
                self.world
                    .record("edge-disk-full", format!("e{} {full_ms} ms", self.plan.idx));
                let disk = self.disk.clone();
                disk.set_full(true);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(full_ms)).await;
                    disk.set_full(false);
                });
            }
        }
    }

    /// Takes the link down for each `(down_ms, up_ms)` period in turn, in a task of its own.
    fn outage(&self, periods: Vec<(u64, u64)>) {
        let n = u32::try_from(periods.len()).unwrap_or(u32::MAX);
        self.with_record(|e| e.n_outages += n);
        let link = self.link.clone();
        tokio::spawn(async move {
            for (down_ms, up_ms) in periods {
                link.down();
                tokio::time::sleep(Duration::from_millis(down_ms)).await;
                link.up();
                tokio::time::sleep(Duration::from_millis(up_ms)).await;
            }
        });
    }

    /// Starts a boot of the agent on the (recovered) disk.
    async fn boot(&mut self) {
        let world = self.world.clone();
        self.alive = Arc::new(AtomicBool::new(true));
        let env = Env {
            clock: world.clock.clone(),
            disk: Arc::new(self.disk.mount()),
            blocking: BlockingMode::Inline,
            seed: self.plan.env_seed,
        };
        let transport = self.link.transport(self.alive.clone());
        let started_wall = world.clock.wall();
        let started_at = world.now();
        let identity = self.plan.identity().to_string();
        // The boot is entered first: the agent reports each spool's epoch into it as it opens.
        let boot_idx = self
            .with_record(|e| {
                e.boots.push(Boot {
                    started_at,
                    started_wall,
                    epochs: BTreeMap::new(),
                    end: BootEnd::Running,
                    disk_errors_at_start: disk_errors(&self.disk),
                    disk_failed: false,
                    accepted: BTreeMap::new(),
                    unanswered: BTreeMap::new(),
                });
                e.boots.len() - 1
            })
            .unwrap_or(0);
        self.accepts = Arc::new(AcceptLog::new(world.clone(), self.plan.idx, boot_idx));
        let observer: Arc<dyn OfferObserver> = self.accepts.clone();
        let started =
            Agent::start_observed(&self.config, env, transport, &identity, Some(observer)).await;
        let agent = match started {
            Ok(agent) => agent,
            Err(error) => {
                self.with_record(|e| e.boots.truncate(boot_idx));
                world.fail(Violation::new(
                    "edge_no_silent_gaps",
                    format!(
                        "edge e{} cannot start on its recovered disk (its spooled readings are \
                         stuck): {error}",
                        self.plan.idx
                    ),
                ));
                return;
            }
        };
        let epochs = self
            .with_record(|e| e.boots.get(boot_idx).map(|b| b.epochs.clone()))
            .flatten()
            .unwrap_or_default();
        world.record(
            "edge-start",
            format!(
                "e{} wall {} epochs {epochs:?}",
                self.plan.idx, started_wall.0
            ),
        );
        self.agent = Some(agent);
    }

    /// Ends the current boot in the ledger with its final counts.
    fn end_boot(&self, agent: &Agent, end: BootEnd) {
        self.check_epochs(agent);
        let accepted = self.accepts.accepted();
        let unanswered = self.accepts.unanswered();
        let errors = disk_errors(&self.disk);
        self.with_record(|e| {
            if let Some(boot) = e.running() {
                boot.accepted = accepted;
                boot.unanswered = unanswered;
                boot.disk_failed = errors > boot.disk_errors_at_start;
                boot.end = end;
            }
        });
    }

    /// Cuts the power (between tasks, or inside a disk operation); false if no agent ran.
    async fn power_cut(&mut self, mid_io_ops: Option<u32>) -> bool {
        if self.agent.is_none() {
            return false;
        }
        let n_cuts = self.with_record(|e| e.n_power_cuts).unwrap_or(0);
        let mut rng = rng_for(
            self.world.seed,
            OWNER_EDGE_BASE + u64::from(self.plan.idx),
            SALT_EDGE_CRASH + u64::from(n_cuts),
        );
        let fired = match mid_io_ops {
            Some(n_ops) => {
                self.disk.arm_power_cut(n_ops, rng.clone());
                tokio::select! {
                    biased;
                    report = self.disk.wait_power_cut() => Some(report),
                    () = tokio::time::sleep(ARMED_CUT_WAIT) => None,
                }
            }
            None => None,
        };
        let mid_io = fired.is_some();
        let report = match fired {
            Some(report) => report,
            None => {
                self.disk.disarm_power_cut();
                self.disk.power_cut(&mut rng)
            }
        };
        // The power is off: nothing the agent does from here on reaches the disk or a source.
        self.alive.store(false, Ordering::Relaxed);
        if let Some(agent) = self.agent.take() {
            self.end_boot(&agent, BootEnd::PowerCut);
            drop(agent);
        }
        self.with_record(|e| {
            e.n_power_cuts += 1;
            e.n_power_cuts_mid_io += u32::from(mid_io);
        });
        self.world.record(
            "edge-power-cut",
            format!("e{} {mid_io} {report:?}", self.plan.idx),
        );
        true
    }

    /// Fails the run if the agent's status names a spool epoch the agent never reported
    /// opening in this boot.
    fn check_epochs(&self, agent: &Agent) {
        let reported = read_epochs(agent);
        let known = self
            .with_record(|e| e.running().map(|b| b.epochs.clone()))
            .flatten()
            .unwrap_or_default();
        for (stream, epoch) in reported {
            if !known.get(&stream).is_some_and(|e| e.contains(&epoch)) {
                self.world.fail(Violation::new(
                    "edge_no_silent_gaps",
                    format!(
                        "edge e{}: the spool of {stream} is in epoch {epoch}, but the agent \
                         reported opening it only in {:?}",
                        self.plan.idx,
                        known.get(&stream)
                    ),
                ));
            }
        }
    }

    /// Stops the agent cleanly; false if no agent ran.
    async fn clean_stop(&mut self) -> bool {
        let Some(agent) = self.agent.take() else {
            return false;
        };
        self.check_epochs(&agent);
        let stopped = agent.stop().await;
        self.disk.close_all();
        self.alive.store(false, Ordering::Relaxed);
        let accepted = self.accepts.accepted();
        let unanswered = self.accepts.unanswered();
        let errors = disk_errors(&self.disk);
        let disk_failed = self
            .with_record(|e| {
                let mut failed = false;
                if let Some(boot) = e.running() {
                    boot.accepted = accepted;
                    boot.unanswered = unanswered;
                    boot.disk_failed = errors > boot.disk_errors_at_start;
                    boot.end = BootEnd::Clean;
                    failed = boot.disk_failed;
                }
                e.n_clean_restarts += 1;
                failed
            })
            .unwrap_or(false);
        self.world.record(
            "edge-stop",
            format!("e{} {}", self.plan.idx, stopped.is_ok()),
        );
        match stopped {
            // The disk failed a sync or refused a write while the spools closed (found by seed
            // 199 with `--edge-disk-faults`): the stop says so, and the next boot finds the
            // spool unclosed; the edge checker accounts for what that boot declares.
            Err(EdgeError::Spool {
                error: SpoolError::Disk(_),
                ..
            }) if disk_failed => {}
            Err(error) => self.world.fail(Violation::new(
                "convergence",
                format!("edge e{}: a clean stop failed: {error}", self.plan.idx),
            )),
            Ok(()) => {}
        }
        true
    }

    /// Liveness phase: notes whether the agent drained (sources finished, spools empty, nothing
    /// in flight) and the running boot's counts.
    fn progress(&self) {
        let now = self.world.now();
        let Some(agent) = &self.agent else {
            self.with_record(|e| e.set_progress(now, false, "no agent running".into()));
            return;
        };
        let status = agent.metrics().status();
        let mut sources_done = true;
        for sensor in &self.plan.sensors {
            let done = status.sources.get(&sensor.source).is_some_and(|v| {
                let answered = v.spooled + v.rejected.values().sum::<u64>();
                v.read >= sensor.readings_max && answered >= v.read
            });
            sources_done &= done;
        }
        let n_spooled: u64 = status.spools.values().map(|v| v.records).sum();
        let in_flight = status.uplink.in_flight;
        let drained = sources_done && n_spooled == 0 && in_flight == 0;
        let detail = format!(
            "sources finished: {sources_done}, {n_spooled} records spooled, {in_flight} in \
             flight, connected: {}, last error: {:?}",
            status.uplink.connected_to.is_some(),
            status.uplink.last_error
        );
        let accepted = self.accepts.accepted();
        let unanswered = self.accepts.unanswered();
        self.with_record(|e| {
            if let Some(boot) = e.running() {
                boot.accepted = accepted;
                boot.unanswered = unanswered;
            }
            e.set_progress(now, drained, detail);
        });
    }
}

/// Failed syncs and refused writes of `disk` so far.
fn disk_errors(disk: &CrashDisk) -> u64 {
    let stats = disk.stats();
    stats.n_sync_failures + stats.n_no_space
}

async fn agent_failed(agent: Option<&mut Agent>) -> EdgeError {
    match agent {
        Some(agent) => agent.failed().await,
        None => std::future::pending().await,
    }
}

/// Plays one clock jump: the chosen edges lose their link `down_before_ms` before it, the
/// clock jumps, and they get it back `down_after_ms` after.
pub async fn run_jump(world: Arc<World>, jump: Jump, links: Vec<Arc<EdgeLink>>) {
    let down: Vec<Arc<EdgeLink>> = links
        .into_iter()
        .enumerate()
        .filter(|(idx, _)| u32::try_from(*idx).is_ok_and(|idx| jump.edges_down.contains(&idx)))
        .map(|(_, link)| link)
        .collect();
    let at = Duration::from_millis(jump.at_ms);
    sleep_until(
        &world,
        at.saturating_sub(Duration::from_millis(jump.down_before_ms)),
    )
    .await;
    for link in &down {
        link.down();
    }
    sleep_until(&world, at).await;
    world.record(
        "jump",
        format!(
            "{} ms, edges {:?} offline",
            jump.duration_ms, jump.edges_down
        ),
    );
    tracing::info!(
        duration_ms = jump.duration_ms,
        "clock jump: the world sleeps, edges stay offline"
    );
    world.jump(Duration::from_millis(jump.duration_ms)).await;
    tokio::time::sleep(Duration::from_millis(jump.down_after_ms)).await;
    for link in &down {
        link.up();
    }
}
