//! The checkers' own record of the edge agents, kept by the simulator as it drives them: for
//! each edge, the facts of its plan (sensors and their streams, spool policy and budget, age
//! bound), and every boot — when it started, the boot epoch of each of its spools, how it ended
//! (still running, clean stop, power cut) and how many readings each sensor had had accepted
//! into the spool when it ended — plus the latest progress seen in the liveness phase.
//!
//! Accepted counts are the checkers' own: an observer given to `Agent::start_observed` records
//! every `Offered::Accepted { epoch, seq }` as the source is told it, and fails the run at once
//! if a sensor's seqs in an epoch do not come 0, 1, 2, …; so a count `n` stands for seqs `0..n`.
//! Offers whose source never learned the outcome (a stop ended the source first) are counted
//! too: the agent may have spooled them, so they widen the upper bound, never the lower one.
//! They are final when a boot ends (after the power is cut, before the agent is dropped; after a
//! clean stop returns). Only the spools' boot epochs are taken from the agent's report; boots,
//! their ends and the spool directories' sizes are the simulator's own observations.

use crate::env::CrashDisk;
use sluice_edge::spool::FullPolicy;
use sluice_proto::{BootEpoch, Identity, SensorId, StreamName, UnixMillis};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How a boot of an agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEnd {
    /// It is still running.
    Running,
    /// `Agent::stop` returned: spools closed.
    Clean,
    /// The power was cut (between tasks or inside a disk operation).
    PowerCut,
}

/// One boot of an agent.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Simulated time of the start (without clock jumps).
    pub started_at: Duration,
    /// The wall clock at the start (what the spools stamp and derive epochs from).
    pub started_wall: UnixMillis,
    /// The boot epoch of each stream's spool.
    pub epochs: BTreeMap<StreamName, BootEpoch>,
    /// How it ended.
    pub end: BootEnd,
    /// Readings accepted per sensor: seqs `0..n` of the sensor's stream in this boot's epoch.
    /// Final once the boot ended, or once its sources finished.
    pub accepted: BTreeMap<SensorId, u64>,
    /// Offers per sensor whose source never learned the outcome (it was stopped with the offer
    /// queued or its answer on the way). The agent may have spooled each of them, so a boot's
    /// seqs of a sensor end somewhere in `accepted..=accepted + unanswered`.
    pub unanswered: BTreeMap<SensorId, u64>,
}

impl Boot {
    /// True when `accepted` can no longer grow.
    pub fn counts_final(&self, sources_done: bool) -> bool {
        self.end != BootEnd::Running || sources_done
    }
}

/// What the liveness phase last saw of an edge.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Sources finished, spools empty, nothing in flight.
    pub drained: bool,
    /// Since when `drained` has had its value.
    pub since: Duration,
    /// What is still pending, for the violation message.
    pub detail: String,
}

/// Everything the checkers know about one edge.
#[derive(Debug, Clone)]
pub struct EdgeRecord {
    /// Its index.
    pub idx: u32,
    /// The identity the node stamps on its events.
    pub identity: Identity,
    /// Its sensors and the stream each writes to.
    pub sensors: BTreeMap<SensorId, StreamName>,
    /// What its spools do when full.
    pub policy: FullPolicy,
    /// Segment files one stream's spool may use.
    pub n_segments_max: u64,
    /// Age after which never-sent readings expire, ms.
    pub record_age_ms_max: u64,
    /// Each stream's spool directory on the edge's disk.
    pub spool_dirs: BTreeMap<StreamName, PathBuf>,
    /// The edge's disk (for the size its spool directories reached).
    pub disk: CrashDisk,
    /// Every boot, in order.
    pub boots: Vec<Boot>,
    /// A boot is starting and not in `boots` yet: its epoch may already show in the log.
    pub booting: bool,
    /// Latest liveness-phase progress.
    pub progress: Option<Progress>,
    /// Power cuts (including those inside a disk operation).
    pub n_power_cuts: u32,
    /// Power cuts that fired inside a disk operation.
    pub n_power_cuts_mid_io: u32,
    /// Clean restarts.
    pub n_clean_restarts: u32,
    /// Link outages (each flap period counts).
    pub n_outages: u32,
    /// `fdatasync` failures armed on its disk (each fires at a later sync, if one comes).
    pub n_sync_failures_armed: u32,
    /// Periods its disk was full.
    pub n_disk_full: u32,
}

impl EdgeRecord {
    /// The boot whose spool for `stream` had `epoch`.
    pub fn boot_of(&self, stream: &StreamName, epoch: BootEpoch) -> Option<&Boot> {
        self.boots
            .iter()
            .find(|b| b.epochs.get(stream) == Some(&epoch))
    }

    /// The current boot, if the agent is running.
    pub fn running(&mut self) -> Option<&mut Boot> {
        self.boots.last_mut().filter(|b| b.end == BootEnd::Running)
    }

    /// True when the liveness phase has seen it drained for at least `hold`.
    pub fn drained_for(&self, now: Duration, hold: Duration) -> bool {
        self.progress
            .as_ref()
            .is_some_and(|p| p.drained && now.saturating_sub(p.since) >= hold)
    }

    /// Records liveness progress.
    pub fn set_progress(&mut self, now: Duration, drained: bool, detail: String) {
        let since = match &self.progress {
            Some(p) if p.drained == drained => p.since,
            _ => now,
        };
        self.progress = Some(Progress {
            drained,
            since,
            detail,
        });
    }
}

/// The record of every edge of the run.
#[derive(Debug, Default)]
pub struct EdgeLedger {
    /// By index.
    pub edges: Vec<EdgeRecord>,
}

impl EdgeLedger {
    /// The edge with this identity.
    pub fn by_identity(&self, identity: &Identity) -> Option<&EdgeRecord> {
        self.edges.iter().find(|e| &e.identity == identity)
    }

    /// True when every edge has been seen drained for at least `hold`.
    pub fn all_drained(&self, now: Duration, hold: Duration) -> bool {
        self.edges.iter().all(|e| e.drained_for(now, hold))
    }
}
