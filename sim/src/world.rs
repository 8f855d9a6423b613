//! What the tasks of one run share: the clock, the disk, the node currently serving (if any),
//! the phase, the checkers' records (of producers, consumers and edges), the trace and the
//! violations found so far.
//!
//! Simulated time as the run sees it ([`World::now`]) leaves out clock jumps: a jump moves
//! tokio's paused clock (and so every timer and wall-clock stamp) forward at once, but the
//! schedule of faults and phases goes on where it was.

use crate::edge_ledger::EdgeLedger;
use crate::env::{CrashDisk, SimClock};
use crate::history::History;
use crate::invariants::stable_reads::Reads;
use crate::invariants::Violation;
use crate::trace::Trace;
use sluice_node::service::Service;
use sluice_proto::StreamName;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// The phase of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Workload and faults.
    Safety,
    /// Faults healed, no new records: everything must converge.
    Liveness,
}

/// The node process currently serving.
#[derive(Clone)]
pub struct NodeSlot {
    /// Its request service.
    pub service: Arc<Service>,
    /// The disk generation it mounted; once the disk moves on, the process is dead.
    pub disk_generation: u64,
}

/// State shared by the tasks of one run.
pub struct World {
    /// The run's seed.
    pub seed: u64,
    /// The paused clock.
    pub clock: Arc<SimClock>,
    /// The disk (outlives every node process).
    pub disk: CrashDisk,
    /// Streams and partition counts.
    pub streams: Vec<(StreamName, u32)>,
    /// The trace hash.
    pub trace: Trace,
    node: Mutex<Option<NodeSlot>>,
    /// Bumped whenever the serving node changes, so edge connections notice a dead node.
    node_changes: watch::Sender<u64>,
    jumped: Mutex<Duration>,
    phase: AtomicU8,
    history: Mutex<History>,
    edges: Mutex<EdgeLedger>,
    reads: Mutex<Reads>,
    violations: Mutex<Vec<Violation>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl World {
    /// A world with no node running yet.
    pub fn new(
        seed: u64,
        clock: Arc<SimClock>,
        disk: CrashDisk,
        streams: Vec<(StreamName, u32)>,
    ) -> Self {
        Self {
            seed,
            clock,
            disk,
            streams,
            trace: Trace::new(),
            node: Mutex::new(None),
            node_changes: watch::channel(0).0,
            jumped: Mutex::new(Duration::ZERO),
            phase: AtomicU8::new(0),
            history: Mutex::new(History::default()),
            edges: Mutex::new(EdgeLedger::default()),
            reads: Mutex::new(Reads::default()),
            violations: Mutex::new(Vec::new()),
        }
    }

    /// Simulated time since the run started, not counting clock jumps.
    pub fn now(&self) -> Duration {
        self.clock.elapsed().saturating_sub(*lock(&self.jumped))
    }

    /// Simulated time clock jumps skipped so far.
    pub fn jumped(&self) -> Duration {
        *lock(&self.jumped)
    }

    /// Moves the clock forward by `by` at once: every timer due in between fires, every
    /// wall-clock stamp moves on, and [`World::now`] does not change.
    pub async fn jump(&self, by: Duration) {
        *lock(&self.jumped) += by;
        tokio::time::advance(by).await;
    }

    /// Adds a step to the trace at the current simulated time.
    pub fn record(&self, kind: &str, content: impl AsRef<[u8]>) {
        self.trace.record(self.now(), kind, content.as_ref());
    }

    /// The node serving now, if it is up.
    pub fn node(&self) -> Option<NodeSlot> {
        lock(&self.node).clone()
    }

    /// Publishes (or withdraws) the serving node.
    pub fn set_node(&self, slot: Option<NodeSlot>) {
        *lock(&self.node) = slot;
        self.node_changes.send_modify(|n| *n += 1);
    }

    /// Notified whenever the serving node changes (it stopped, crashed or started).
    pub fn subscribe_node(&self) -> watch::Receiver<u64> {
        self.node_changes.subscribe()
    }

    /// True while the process of `slot` has not crashed or exited.
    pub fn is_alive(&self, slot: &NodeSlot) -> bool {
        self.disk.generation() == slot.disk_generation
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        if self.phase.load(Ordering::Relaxed) == 0 {
            Phase::Safety
        } else {
            Phase::Liveness
        }
    }

    /// Enters the liveness phase.
    pub fn start_liveness(&self) {
        self.phase.store(1, Ordering::Relaxed);
    }

    /// The checkers' record of what producers were told.
    pub fn history(&self) -> MutexGuard<'_, History> {
        lock(&self.history)
    }

    /// The checkers' record of the edges: their boots, how each ended, what each accepted.
    pub fn edges(&self) -> MutexGuard<'_, EdgeLedger> {
        lock(&self.edges)
    }

    /// The checkers' record of what consumers read.
    pub fn reads(&self) -> MutexGuard<'_, Reads> {
        lock(&self.reads)
    }

    /// Reports a broken invariant found by a task.
    pub fn fail(&self, violation: Violation) {
        tracing::error!(seed = self.seed, %violation, "invariant violated");
        lock(&self.violations).push(violation);
    }

    /// The first broken invariant found by a task, if any.
    pub fn first_violation(&self) -> Option<Violation> {
        lock(&self.violations).first().cloned()
    }
}
