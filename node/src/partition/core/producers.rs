//! The producer table of one partition: per `(identity, sensor)` the current epoch, the next seq
//! and a window of recent records with their offsets, which is what exactly-once needs. It is
//! bounded so that one identity cannot take what the others need:
//!
//! - **Live** states (with their dedup window) are bounded per identity
//!   (`producers_per_identity_max`) and per partition (`producers_max`); a new sensor beyond
//!   either bound is refused `TooManyProducers`, so a flooding identity exhausts only its own.
//! - A live state idle for `producer_idle_expiry` (no record accepted for it for that long; a
//!   duplicate is not activity; measured on the monotonic clock, `now` passed in, checked when
//!   a produce reaches the partition) is **retired**: its window is dropped and it stops counting against the live bounds,
//!   but its epoch and next seq are kept, so the sensor resumes where it was and a retry of an
//!   older seq is refused `DuplicateTooOld` (it was stored; its offset is no longer known).
//! - Retired states are bounded per identity by `producers_per_identity_max` too. Beyond it the
//!   identity's least recently retired state is **forgotten**, and the identity's *expiry floor*
//!   rises to that state's epoch: a record of a sensor the table does not know, in an epoch at
//!   or below the floor, may be a retry of a forgotten record, so it is refused
//!   `ProducerExpired` rather than risking a second append. A new boot epoch starts afresh.
//!
//! Restart: the table is rebuilt by replaying the log. A replayed state counts as active at the
//! moment of recovery (the `now` passed in), so a restart restarts every idle clock: state never
//! expires earlier than configured, measured within one process. The wall-clock stamps in the
//! log are data, never timers. Replay never refuses: where the log holds more sensors than the
//! bounds allow, the least recently written are retired (then forgotten) in log order, by the
//! same rules. Everything stored is in the log, so whatever the rebuilt table knows is exact and
//! whatever it forgot is below a floor: a retry is never appended twice.
//!
//! No IO, no clock reads; the maps iterated (`BTreeMap`s keyed by a touch serial) give one order
//! for one input sequence.

use sluice_proto::{BootEpoch, Identity, Offset, SensorId};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bounds of a [`ProducerTable`].
#[derive(Debug, Clone, Copy)]
pub(super) struct ProducerBounds {
    /// Live states in the partition.
    pub(super) producers_max: u32,
    /// Live states of one identity, and retired states of one identity.
    pub(super) per_identity_max: u32,
    /// Idle time after which a live state is retired.
    pub(super) idle_expiry: Duration,
    /// Records remembered per live state.
    pub(super) window_max: u32,
}

/// One remembered record: `(epoch, seq, seq_last, offset)`.
pub(super) type WindowItem = (BootEpoch, u64, u64, Offset);

/// The state of one `(identity, sensor)`.
#[derive(Debug, Clone)]
pub(super) struct ProducerState {
    /// The sensor's current epoch.
    pub(super) epoch: BootEpoch,
    /// The next seq expected in `epoch`.
    pub(super) next_seq: u64,
    /// Recent records, oldest first; empty once retired.
    pub(super) window: VecDeque<WindowItem>,
    /// Position in the identity's live or retired order.
    serial: u64,
    /// `Some(last activity)` while live, `None` once retired.
    active: Option<Instant>,
}

impl ProducerState {
    /// True while the state holds a live slot (and its window).
    pub(super) fn is_live(&self) -> bool {
        self.active.is_some()
    }
}

#[derive(Debug, Default, Clone)]
struct IdentityState {
    sensors: HashMap<SensorId, ProducerState>,
    /// Live sensors by serial: least recently active first.
    live: BTreeMap<u64, SensorId>,
    /// Retired sensors by serial: least recently retired first.
    retired: BTreeMap<u64, SensorId>,
    /// The highest epoch of a forgotten state.
    floor: Option<BootEpoch>,
}

/// What the table knows about a sensor it is asked about.
pub(super) enum Known<'a> {
    /// Its state, live or retired.
    State(&'a ProducerState),
    /// Nothing; `floor` is the identity's expiry floor, if any state of it was forgotten.
    Unknown {
        /// See [`Known::Unknown`].
        floor: Option<BootEpoch>,
    },
}

/// Why a state cannot take a live slot now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Full {
    /// The identity holds `per_identity_max` live states.
    Identity(u32),
    /// The partition holds `producers_max` live states.
    Partition(u32),
}

/// The producer table of one partition. See the module documentation.
#[derive(Debug, Clone)]
pub(super) struct ProducerTable {
    bounds: ProducerBounds,
    identities: HashMap<Arc<Identity>, IdentityState>,
    /// Live states by serial, least recently active first (serials grow with `now`).
    live: BTreeMap<u64, (Arc<Identity>, SensorId)>,
    next_serial: u64,
    n_retired: u64,
    n_forgotten: u64,
}

impl ProducerTable {
    /// An empty table.
    pub(super) fn new(bounds: ProducerBounds) -> Self {
        Self {
            bounds,
            identities: HashMap::new(),
            live: BTreeMap::new(),
            next_serial: 0,
            n_retired: 0,
            n_forgotten: 0,
        }
    }

    /// Live states in the partition.
    pub(super) fn n_live(&self) -> usize {
        self.live.len()
    }

    /// States retired since start (by idleness or, in recovery, by the bounds).
    pub(super) fn n_retired_total(&self) -> u64 {
        self.n_retired
    }

    /// States forgotten since start.
    pub(super) fn n_forgotten_total(&self) -> u64 {
        self.n_forgotten
    }

    /// What the table knows about `(who, sensor)`.
    pub(super) fn get(&self, who: &Identity, sensor: &SensorId) -> Known<'_> {
        match self.identities.get(who) {
            None => Known::Unknown { floor: None },
            Some(identity) => match identity.sensors.get(sensor) {
                Some(state) => Known::State(state),
                None => Known::Unknown {
                    floor: identity.floor,
                },
            },
        }
    }

    /// Whether `(who, sensor)` could take a live slot now (true when it holds one).
    pub(super) fn room_for(&self, who: &Identity, sensor: &SensorId) -> Result<(), Full> {
        let identity = self.identities.get(who);
        if identity
            .and_then(|i| i.sensors.get(sensor))
            .is_some_and(ProducerState::is_live)
        {
            return Ok(());
        }
        if identity.map_or(0, |i| i.live.len()) >= self.bounds.per_identity_max as usize {
            return Err(Full::Identity(self.bounds.per_identity_max));
        }
        if self.live.len() >= self.bounds.producers_max as usize {
            return Err(Full::Partition(self.bounds.producers_max));
        }
        Ok(())
    }

    /// Retires every live state idle for at least the expiry at `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some((_, (who, sensor))) = self.live.first_key_value() {
            let idle = self
                .identities
                .get(who)
                .and_then(|i| i.sensors.get(sensor))
                .and_then(|s| s.active)
                .map(|active| now.saturating_duration_since(active));
            match idle {
                Some(idle) if idle < self.bounds.idle_expiry => break,
                _ => {
                    let (who, sensor) = (who.clone(), sensor.clone());
                    self.retire(&who, &sensor);
                }
            }
        }
    }

    /// Records an accepted record of `(who, sensor)` at `now`: the sensor is in `epoch`, expects
    /// `next_seq`, and `item` joins its window. The caller checked [`Self::room_for`].
    pub(super) fn accept(
        &mut self,
        now: Instant,
        who: &Identity,
        sensor: &SensorId,
        epoch: BootEpoch,
        next_seq: u64,
        item: WindowItem,
    ) {
        let serial = self.take_serial();
        let window_max = (self.bounds.window_max as usize).max(1);
        // One `Arc` per identity, shared by its entries in the partition order.
        let who = match self.identities.get_key_value(who) {
            Some((key, _)) => key.clone(),
            None => Arc::new(who.clone()),
        };
        let identity = self.identities.entry(who.clone()).or_default();
        let state = match identity.sensors.get_mut(sensor) {
            Some(state) => {
                match state.active {
                    Some(_) => {
                        identity.live.remove(&state.serial);
                        self.live.remove(&state.serial);
                    }
                    None => {
                        identity.retired.remove(&state.serial);
                    }
                }
                state
            }
            None => identity
                .sensors
                .entry(sensor.clone())
                .or_insert(ProducerState {
                    epoch,
                    next_seq,
                    window: VecDeque::new(),
                    serial,
                    active: None,
                }),
        };
        state.epoch = epoch;
        state.next_seq = next_seq;
        state.serial = serial;
        state.active = Some(now);
        state.window.push_back(item);
        while state.window.len() > window_max {
            state.window.pop_front();
        }
        identity.live.insert(serial, sensor.clone());
        self.live.insert(serial, (who.clone(), sensor.clone()));
    }

    /// Replays a record found in the log, at `now` (the time of recovery). Never refuses: where
    /// the bounds are reached, the least recently written states make room (see the module
    /// documentation).
    pub(super) fn recover(
        &mut self,
        now: Instant,
        who: &Identity,
        sensor: &SensorId,
        epoch: BootEpoch,
        next_seq: u64,
        item: WindowItem,
    ) {
        loop {
            match self.room_for(who, sensor) {
                Ok(()) => break,
                Err(Full::Identity(_)) => {
                    let oldest = self
                        .identities
                        .get(who)
                        .and_then(|i| i.live.first_key_value())
                        .map(|(_, s)| s.clone());
                    match oldest {
                        Some(oldest) => self.retire(who, &oldest),
                        None => break,
                    }
                }
                Err(Full::Partition(_)) => {
                    let oldest = self.live.first_key_value().map(|(_, v)| v.clone());
                    match oldest {
                        Some((owner, oldest)) => self.retire(&owner, &oldest),
                        None => break,
                    }
                }
            }
        }
        self.accept(now, who, sensor, epoch, next_seq, item);
    }

    fn take_serial(&mut self) -> u64 {
        let serial = self.next_serial;
        // A serial per accepted record: u64 does not run out.
        self.next_serial = self.next_serial.saturating_add(1);
        serial
    }

    /// Retires a live state: drops its window and frees its live slot, keeping epoch and next
    /// seq; forgets the identity's oldest retired state beyond the bound.
    fn retire(&mut self, who: &Identity, sensor: &SensorId) {
        let serial = self.take_serial();
        let per_identity_max = self.bounds.per_identity_max as usize;
        let Some(identity) = self.identities.get_mut(who) else {
            return;
        };
        let Some(state) = identity.sensors.get_mut(sensor) else {
            return;
        };
        if state.active.take().is_none() {
            return;
        }
        identity.live.remove(&state.serial);
        self.live.remove(&state.serial);
        state.window = VecDeque::new();
        state.serial = serial;
        identity.retired.insert(serial, sensor.clone());
        self.n_retired += 1;
        while identity.retired.len() > per_identity_max {
            let Some((_, forgotten)) = identity.retired.pop_first() else {
                break;
            };
            if let Some(state) = identity.sensors.remove(&forgotten) {
                identity.floor = Some(identity.floor.map_or(state.epoch, |f| f.max(state.epoch)));
                self.n_forgotten += 1;
            }
        }
    }

    /// Checks the table's bookkeeping (O(n): call under `debug_assertions`).
    pub(super) fn check_invariants(&self) {
        let mut n_live = 0;
        for (who, identity) in &self.identities {
            assert!(identity.live.len() <= self.bounds.per_identity_max as usize);
            assert!(identity.retired.len() <= self.bounds.per_identity_max as usize);
            for (sensor, state) in &identity.sensors {
                let order = if state.is_live() {
                    n_live += 1;
                    assert!(
                        self.live
                            .get(&state.serial)
                            .is_some_and(|(w, s)| w == who && s == sensor),
                        "live state of {sensor} missing from the partition order"
                    );
                    &identity.live
                } else {
                    assert!(state.window.is_empty(), "retired state keeps a window");
                    &identity.retired
                };
                assert_eq!(order.get(&state.serial), Some(sensor));
            }
            assert_eq!(
                identity.live.len() + identity.retired.len(),
                identity.sensors.len()
            );
        }
        assert_eq!(n_live, self.live.len());
    }
}
