//! The checkers' own record of the edge agents, kept by the simulator as it drives them: for
//! each edge, the facts of its plan (sensors and their streams, spool policy and budget, age
//! bound), and every boot — when it started, every boot epoch each of its spools opened in,
//! how it ended (still running, clean stop, power cut) and which seqs each sensor had had
//! accepted into the spool in each epoch when it ended — plus the latest progress seen in the
//! liveness phase.
//!
//! One boot can hold several epochs of a stream: a spool whose disk failed is reopened, and a
//! sensor the node forgot (`ProducerExpired`, or `EpochStart` to a lone request) is moved to a
//! newer epoch, each without a reboot; every open starts a new epoch. The agent tells the
//! observer given to `Agent::start_observed` the epoch of every open, as it opens.
//!
//! Accepted seqs are the checkers' own: the observer records every
//! `Offered::Accepted { epoch, seq }` as the source is told it, and fails the run at once if a
//! sensor's seqs in an epoch do not rise. They may skip: a sensor moved to a newer epoch gets
//! a declaration and the readings it never sent resent there ahead of what its sources offer
//! next, and no source is told those seqs (the edge checker accounts for them from the log).
//! Offers whose source never learned the outcome (a stop ended the source first) are counted
//! too: the agent may have spooled them, so they widen the upper bound, never the lower one.
//! They are final when a boot ends (after the power is cut, before the agent is dropped; after a
//! clean stop returns). Only the spools' boot epochs are taken from the agent's report; boots,
//! their ends and the spool directories' sizes are the simulator's own observations.

use crate::env::CrashDisk;
use sluice_edge::spool::FullPolicy;
use sluice_proto::{BootEpoch, Identity, SensorId, StreamName, UnixMillis};
use std::collections::{BTreeMap, BTreeSet};
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

/// Seqs of one `(sensor, epoch)` that sources were told accepted: disjoint ranges
/// `[start, end)`, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Told {
    ranges: Vec<(u64, u64)>,
}

impl Told {
    /// Seqs `0..n`.
    pub fn first(n: u64) -> Self {
        let mut told = Self::default();
        if n > 0 {
            told.ranges.push((0, n));
        }
        told
    }

    /// Adds `seq`; false (changing nothing) unless it lies above every seq added so far.
    pub fn push(&mut self, seq: u64) -> bool {
        match self.ranges.last_mut() {
            Some((_, end)) if seq < *end => false,
            Some((_, end)) if seq == *end => {
                *end += 1;
                true
            }
            _ => {
                self.ranges.push((seq, seq + 1));
                true
            }
        }
    }

    /// How many seqs.
    pub fn n(&self) -> u64 {
        self.ranges.iter().map(|(start, end)| end - start).sum()
    }

    /// The highest seq, if any.
    pub fn last(&self) -> Option<u64> {
        self.ranges.last().map(|(_, end)| end - 1)
    }

    /// How many of the seqs `seq..=seq_last` were told.
    pub fn n_within(&self, seq: u64, seq_last: u64) -> u64 {
        self.ranges
            .iter()
            .map(|&(start, end)| {
                let low = start.max(seq);
                let high = end.min(seq_last.saturating_add(1));
                high.saturating_sub(low)
            })
            .sum()
    }

    /// The ranges `[start, end)`.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }
}

/// One boot of an agent.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Simulated time of the start (without clock jumps).
    pub started_at: Duration,
    /// The wall clock at the start (what the spools stamp and derive epochs from).
    pub started_wall: UnixMillis,
    /// Every boot epoch each stream's spool opened in during this boot, oldest first: the
    /// start's, then one per reopen after a disk failure or move after the node forgot a
    /// sensor.
    pub epochs: BTreeMap<StreamName, Vec<BootEpoch>>,
    /// How it ended.
    pub end: BootEnd,
    /// Failed syncs and refused writes of the edge's disk before this boot started.
    pub disk_errors_at_start: u64,
    /// The disk failed a sync or refused a write while this boot ran (known once it ended): a
    /// spool then down may have been left unclosed by a clean stop.
    pub disk_failed: bool,
    /// Seqs accepted per sensor and epoch (as its source was told). Final once the boot
    /// ended, or once its sources finished.
    pub accepted: BTreeMap<SensorId, BTreeMap<BootEpoch, Told>>,
    /// Offers per sensor whose source never learned the outcome (it was stopped with the offer
    /// queued or its answer on the way). The agent may have spooled each of them, in the last
    /// epoch of the sensor's stream, beyond the seqs its sources were told.
    pub unanswered: BTreeMap<SensorId, u64>,
}

impl Boot {
    /// True when `accepted` can no longer grow.
    pub fn counts_final(&self, sources_done: bool) -> bool {
        self.end != BootEnd::Running || sources_done
    }

    /// The seqs of `sensor` accepted in `epoch`.
    pub fn told(&self, sensor: &SensorId, epoch: BootEpoch) -> Option<&Told> {
        self.accepted.get(sensor).and_then(|by| by.get(&epoch))
    }

    /// Readings accepted in this boot, over every sensor and epoch.
    pub fn n_accepted(&self) -> u64 {
        self.accepted
            .values()
            .flat_map(|by| by.values())
            .map(Told::n)
            .sum()
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
    /// Every boot, in order (a boot is entered before the agent starts, so every epoch it
    /// opens has a boot to go to).
    pub boots: Vec<Boot>,
    /// `(sensor, epoch)`s the node refused a record of as `ProducerExpired` or `EpochStart`:
    /// what may move a sensor to a newer epoch and close the old one's unacknowledged seqs.
    pub expired_answers: BTreeSet<(SensorId, BootEpoch)>,
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
    /// The boot whose spool for `stream` opened in `epoch`.
    pub fn boot_of(&self, stream: &StreamName, epoch: BootEpoch) -> Option<&Boot> {
        self.boots
            .iter()
            .find(|b| b.epochs.get(stream).is_some_and(|e| e.contains(&epoch)))
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
