//! The partition core: decides, for each record of a produce request, whether it is new, a
//! duplicate (with its original offset) or rejected; assigns offsets; groups accepted records
//! into entries for the next group commit; and releases each request's answer only once every
//! offset in it is durable. No IO, no clock, no awaits.
//!
//! Group commit: while one flush is in flight, everything that arrives is gathered into the next
//! one, so a single `fdatasync` covers every request that arrived during the previous flush.

use crate::log::PendingEntry;
use producers::{Full, Known, ProducerBounds, ProducerState, ProducerTable};
use sluice_proto::msg::{Durability, RecordOutcome, RecordRejection};
use sluice_proto::{check_seq_range, BootEpoch, Event, Identity, Offset, PartitionId, SensorId};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod producers;

/// Bounds of one partition core.
#[derive(Debug, Clone, Copy)]
pub struct CoreConfig {
    /// Deduplication window: how many recent records of one `(producer, sensor)` remember their
    /// offsets, so that a retry returns the original offsets.
    pub dedup_window_max: u32,
    /// How many `(producer, sensor)` pairs one partition tracks with a dedup window (live).
    pub producers_max: u32,
    /// How many live `(producer, sensor)` pairs one identity may hold in one partition, and how
    /// many retired ones (without a window) it keeps beyond those.
    pub producers_per_identity_max: u32,
    /// A live pair idle this long (monotonic clock) is retired: its window is dropped.
    pub producer_idle_expiry: Duration,
    /// Bytes of accepted but not yet flushed entries beyond which new records are refused with
    /// `Overloaded`.
    pub pending_bytes_max: u64,
    /// Requests waiting for their flush beyond which new requests are refused.
    pub waiting_requests_max: u32,
    /// Events per entry at most (a request is split into several entries beyond it).
    pub entry_events_max: u32,
}

/// One record of a produce request, as the core sees it: identity fields plus the encoded event.
#[derive(Debug, Clone)]
pub struct ProduceItem {
    /// The sensor.
    pub sensor: SensorId,
    /// The producer incarnation.
    pub boot_epoch: BootEpoch,
    /// First seq.
    pub seq: u64,
    /// Last seq (equal to `seq` except for `Dropped`).
    pub seq_last: u64,
    /// The stamped event, canonically encoded.
    pub encoded: Vec<u8>,
}

/// Inputs of the core.
#[derive(Debug)]
pub enum Input {
    /// A produce request for this partition. `ticket` identifies it in the matching reply.
    Produce {
        /// Caller's correlation.
        ticket: u64,
        /// The authenticated producer.
        producer: Arc<Identity>,
        /// The records, in order.
        items: Vec<ProduceItem>,
    },
    /// The flush started by the last [`Output::Persist`] finished.
    Flushed(Result<(), String>),
}

/// Outputs of the core, in the order they must be executed.
#[derive(Debug)]
pub enum Output {
    /// Write these entries and `fdatasync`; answer with [`Input::Flushed`]. At most one is in
    /// flight at a time.
    Persist(Vec<PendingEntry>),
    /// Answer a produce request: one outcome per record, in order.
    Reply {
        /// The request's ticket.
        ticket: u64,
        /// Outcomes.
        outcomes: Vec<RecordOutcome>,
    },
    /// Everything below this offset is durable now.
    Durable(Offset),
    /// A flush failed: the partition must stop and recover from disk; no later input is served.
    Fenced(String),
}

/// A request waiting for its offsets to become durable.
#[derive(Debug)]
struct Waiter {
    ticket: u64,
    /// Every offset below this must be durable before the reply.
    need: Offset,
    outcomes: Vec<RecordOutcome>,
}

/// Replication-free state of one partition on one node.
#[derive(Debug)]
pub struct PartitionCore {
    partition: PartitionId,
    config: CoreConfig,
    producers: ProducerTable,
    next_offset: Offset,
    durable: Offset,
    pending: Vec<PendingEntry>,
    pending_bytes: u64,
    /// End offset of the flush in flight, if any.
    in_flight: Option<Offset>,
    waiters: VecDeque<Waiter>,
    fenced: Option<String>,
    outputs: VecDeque<Output>,
    /// The core of a replicated partition's leader: its flushes are quorum commits, so acks
    /// say `QuorumFsync` and a failed one (leadership lost, no quorum) is `Unavailable`.
    replicated: bool,
}

impl PartitionCore {
    /// A core for a log whose next offset is `next_offset`, everything below it durable.
    pub fn new(partition: PartitionId, config: CoreConfig, next_offset: Offset) -> Self {
        Self {
            partition,
            config,
            producers: ProducerTable::new(ProducerBounds {
                producers_max: config.producers_max,
                per_identity_max: config.producers_per_identity_max,
                idle_expiry: config.producer_idle_expiry,
                window_max: config.dedup_window_max,
            }),
            next_offset,
            durable: next_offset,
            pending: Vec::new(),
            pending_bytes: 0,
            in_flight: None,
            waiters: VecDeque::new(),
            fenced: None,
            outputs: VecDeque::new(),
            replicated: false,
        }
    }

    /// A core continuing from this one's durable state for the leader of a replicated
    /// partition: the same producer table and next offset, nothing pending or waiting; its
    /// flushes are quorum commits (acks say `QuorumFsync`; a failed one answers `Unavailable`).
    /// `self` is a replica's table, fed only by [`PartitionCore::recover_event`].
    pub fn replicated_successor(&self) -> PartitionCore {
        let mut next = PartitionCore::new(self.partition, self.config, self.durable);
        next.producers = self.producers.clone();
        next.replicated = true;
        next
    }

    /// Replays a recovered event so duplicate detection survives restarts. `now` is the
    /// monotonic time of recovery: every replayed producer state counts as active then (see
    /// `producers`).
    pub fn recover_event(&mut self, now: Instant, offset: Offset, event: &Event) {
        // Records are checked before they are stored (`check_seq_range`), so `seq_last + 1` does
        // not overflow; saturating keeps a range an older build stored from wrapping to 0 (the
        // sensor then accepts nothing more in that epoch, which is safe).
        let next_seq = event.seq_last().saturating_add(1);
        self.producers.recover(
            now,
            &event.producer,
            &event.sensor,
            event.boot_epoch,
            next_seq,
            (event.boot_epoch, event.seq, event.seq_last(), offset),
        );
    }

    /// Ends recovery: the log's next offset is `next_offset`, and everything below it is durable.
    pub fn finish_recovery(&mut self, next_offset: Offset) {
        assert!(
            self.pending.is_empty() && self.in_flight.is_none(),
            "recovery after traffic"
        );
        self.next_offset = next_offset;
        self.durable = next_offset;
    }

    /// The offset the next accepted record gets.
    pub fn next_offset(&self) -> Offset {
        self.next_offset
    }

    /// One past the last durable offset (the high watermark).
    pub fn durable(&self) -> Offset {
        self.durable
    }

    /// Live producer states (with a dedup window) in the partition.
    pub fn n_live_producers(&self) -> usize {
        self.producers.n_live()
    }

    /// Producer states retired (idle beyond the expiry, or over the bounds at recovery) and
    /// forgotten (beyond the retired bound) since start.
    pub fn n_expired_producers(&self) -> (u64, u64) {
        (
            self.producers.n_retired_total(),
            self.producers.n_forgotten_total(),
        )
    }

    /// Feeds one input at monotonic time `now`.
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Produce {
                ticket,
                producer,
                items,
            } => self.handle_produce(now, ticket, &producer, items),
            Input::Flushed(result) => self.handle_flushed(result),
        }
        self.check_invariants();
    }

    /// The next output to execute.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn handle_produce(
        &mut self,
        now: Instant,
        ticket: u64,
        producer: &Identity,
        items: Vec<ProduceItem>,
    ) {
        if let Some(reason) = &self.fenced {
            let outcome = RecordOutcome::Rejected(RecordRejection::Storage {
                reason: reason.clone(),
            });
            self.outputs.push_back(Output::Reply {
                ticket,
                outcomes: vec![outcome; items.len()],
            });
            return;
        }
        let overloaded = self.pending_bytes >= self.config.pending_bytes_max
            || self.waiters.len() >= self.config.waiting_requests_max as usize;
        if overloaded {
            let outcome = RecordOutcome::Rejected(RecordRejection::Overloaded {
                partition: self.partition.0,
            });
            self.outputs.push_back(Output::Reply {
                ticket,
                outcomes: vec![outcome; items.len()],
            });
            return;
        }
        self.producers.expire(now);
        let mut need = Offset(0);
        let mut outcomes = Vec::with_capacity(items.len());
        let mut entry = EntryBuilder::default();
        for item in items {
            let outcome = match self.judge(producer, &item) {
                Judgement::New(next_seq) => match self.next_offset.checked_next() {
                    Some(after) => {
                        let offset = self.accept(now, producer, &item, next_seq, after);
                        if entry.count as u32 >= self.config.entry_events_max {
                            self.push_entry(std::mem::take(&mut entry));
                        }
                        entry.add(offset, item.encoded);
                        need = need.max(after);
                        self.appended(offset, false)
                    }
                    None => RecordOutcome::Rejected(RecordRejection::Storage {
                        reason: format!("partition {} has no offsets left", self.partition),
                    }),
                },
                Judgement::Duplicate(offset) => {
                    need = need.max(after(offset));
                    self.appended(offset, true)
                }
                Judgement::Reject(rejection) => RecordOutcome::Rejected(rejection),
            };
            outcomes.push(outcome);
        }
        self.push_entry(entry);
        if need <= self.durable {
            self.outputs.push_back(Output::Reply { ticket, outcomes });
        } else {
            self.waiters.push_back(Waiter {
                ticket,
                need,
                outcomes,
            });
        }
        self.maybe_persist();
    }

    fn appended(&self, offset: Offset, duplicate: bool) -> RecordOutcome {
        RecordOutcome::Appended {
            partition: self.partition,
            offset,
            durability: if self.replicated {
                Durability::QuorumFsync
            } else {
                Durability::LeaderFsync
            },
            duplicate,
        }
    }

    fn judge(&self, producer: &Identity, item: &ProduceItem) -> Judgement {
        let next_seq = match check_seq_range(item.seq, item.seq_last) {
            Ok(range) => range.next(),
            Err(e) => {
                return Judgement::Reject(RecordRejection::Invalid {
                    reason: e.to_string(),
                })
            }
        };
        let state = match self.producers.get(producer, &item.sensor) {
            Known::State(state) => state,
            Known::Unknown { floor } => {
                if floor.is_some_and(|floor| item.boot_epoch <= floor) {
                    // This sensor's state in this epoch may have been forgotten: a retry of a
                    // stored record cannot be told from a new one.
                    return Judgement::Reject(RecordRejection::ProducerExpired {
                        sensor: item.sensor.to_string(),
                        epoch: item.boot_epoch.0,
                    });
                }
                if let Err(full) = self.producers.room_for(producer, &item.sensor) {
                    return Judgement::Reject(too_many(full));
                }
                if item.seq != 0 {
                    return Judgement::Reject(RecordRejection::EpochStart {
                        sensor: item.sensor.to_string(),
                        epoch: item.boot_epoch.0,
                        got: item.seq,
                    });
                }
                return Judgement::New(next_seq);
            }
        };
        let judgement = judge_known(state, item, next_seq);
        if matches!(judgement, Judgement::New(_)) && !state.is_live() {
            // A retired state resuming needs a live slot again.
            if let Err(full) = self.producers.room_for(producer, &item.sensor) {
                return Judgement::Reject(too_many(full));
            }
        }
        judgement
    }

    /// Records `item` as accepted at the next offset; `next_seq` is the seq after it and
    /// `after` the offset after it, both checked by the caller.
    fn accept(
        &mut self,
        now: Instant,
        producer: &Identity,
        item: &ProduceItem,
        next_seq: u64,
        after: Offset,
    ) -> Offset {
        let offset = self.next_offset;
        self.next_offset = after;
        self.producers.accept(
            now,
            producer,
            &item.sensor,
            item.boot_epoch,
            next_seq,
            (item.boot_epoch, item.seq, item.seq_last, offset),
        );
        offset
    }

    fn push_entry(&mut self, entry: EntryBuilder) {
        if let Some(pending) = entry.finish() {
            self.pending_bytes = self.pending_bytes.saturating_add(pending.body.len() as u64);
            self.pending.push(pending);
        }
    }

    fn maybe_persist(&mut self) {
        if self.in_flight.is_some() || self.pending.is_empty() || self.fenced.is_some() {
            return;
        }
        let entries = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.in_flight = entries.last().map(entry_end);
        self.outputs.push_back(Output::Persist(entries));
    }

    fn handle_flushed(&mut self, result: Result<(), String>) {
        let Some(end) = self.in_flight.take() else {
            panic!(
                "partition {}: flush reported with none in flight",
                self.partition
            );
        };
        match result {
            Ok(()) => {
                self.durable = end;
                self.outputs.push_back(Output::Durable(end));
                let durable = self.durable;
                let mut still = VecDeque::with_capacity(self.waiters.len());
                for waiter in self.waiters.drain(..) {
                    if waiter.need <= durable {
                        self.outputs.push_back(Output::Reply {
                            ticket: waiter.ticket,
                            outcomes: waiter.outcomes,
                        });
                    } else {
                        still.push_back(waiter);
                    }
                }
                self.waiters = still;
                self.maybe_persist();
            }
            Err(reason) => {
                // After a failed fsync the page cache can no longer be trusted (its dirty pages
                // may be dropped): answer everything not durable with an error and stop, so the
                // partition restarts from what the disk really holds.
                let rejection = if self.replicated {
                    RecordRejection::Unavailable {
                        partition: self.partition.0,
                        reason: reason.clone(),
                    }
                } else {
                    RecordRejection::Storage {
                        reason: reason.clone(),
                    }
                };
                for waiter in self.waiters.drain(..) {
                    let outcomes = waiter
                        .outcomes
                        .into_iter()
                        .map(|o| match o {
                            RecordOutcome::Appended { offset, .. } if offset >= self.durable => {
                                RecordOutcome::Rejected(rejection.clone())
                            }
                            other => other,
                        })
                        .collect();
                    self.outputs.push_back(Output::Reply {
                        ticket: waiter.ticket,
                        outcomes,
                    });
                }
                self.pending.clear();
                self.pending_bytes = 0;
                self.fenced = Some(reason.clone());
                self.outputs.push_back(Output::Fenced(reason));
            }
        }
    }

    fn check_invariants(&self) {
        assert!(
            self.durable <= self.next_offset,
            "durable {} beyond next {}",
            self.durable,
            self.next_offset
        );
        if let Some(end) = self.in_flight {
            assert!(self.durable < end && end <= self.next_offset);
        }
        if cfg!(debug_assertions) {
            self.producers.check_invariants();
            let mut expect = self.in_flight.unwrap_or(self.durable);
            for entry in &self.pending {
                assert_eq!(entry.base, expect, "pending entries must be contiguous");
                expect = entry_end(entry);
            }
            if self.fenced.is_none() {
                assert_eq!(
                    expect, self.next_offset,
                    "every assigned offset is pending, in flight or durable"
                );
            }
        }
    }
}

/// Judges a record of a sensor whose state is known (live or retired: a retired state has no
/// window, so an older seq is `DuplicateTooOld`).
fn judge_known(state: &ProducerState, item: &ProduceItem, next_seq: u64) -> Judgement {
    let sensor = || item.sensor.to_string();
    // The common case first: the next seq of the current epoch can be in no window.
    if item.boot_epoch == state.epoch && item.seq >= state.next_seq {
        if item.seq > state.next_seq {
            return Judgement::Reject(RecordRejection::SequenceGap {
                sensor: sensor(),
                expected: state.next_seq,
                got: item.seq,
            });
        }
        return Judgement::New(next_seq);
    }
    let known = state.window.iter().rev().find(|(e, first, last, _)| {
        *e == item.boot_epoch && *first <= item.seq && item.seq <= *last
    });
    if let Some((_, first, last, offset)) = known {
        if *first == item.seq && *last == item.seq_last {
            return Judgement::Duplicate(*offset);
        }
        return Judgement::Reject(RecordRejection::Invalid {
            reason: format!(
                "seqs {}..={} overlap an earlier record {}..={} of sensor {}",
                item.seq, item.seq_last, first, last, item.sensor
            ),
        });
    }
    if item.boot_epoch < state.epoch {
        return Judgement::Reject(RecordRejection::StaleEpoch {
            sensor: sensor(),
            epoch: item.boot_epoch.0,
            current: state.epoch.0,
        });
    }
    if item.boot_epoch > state.epoch {
        if item.seq != 0 {
            return Judgement::Reject(RecordRejection::EpochStart {
                sensor: sensor(),
                epoch: item.boot_epoch.0,
                got: item.seq,
            });
        }
        return Judgement::New(next_seq);
    }
    if item.seq < state.next_seq {
        return Judgement::Reject(RecordRejection::DuplicateTooOld {
            sensor: sensor(),
            seq: item.seq,
        });
    }
    if item.seq > state.next_seq {
        return Judgement::Reject(RecordRejection::SequenceGap {
            sensor: sensor(),
            expected: state.next_seq,
            got: item.seq,
        });
    }
    Judgement::New(next_seq)
}

fn too_many(full: Full) -> RecordRejection {
    let max = match full {
        Full::Identity(max) | Full::Partition(max) => max,
    };
    RecordRejection::TooManyProducers { max }
}

/// The offset after `offset`, one the core handed out: it is below `next_offset`, so this never
/// saturates.
fn after(offset: Offset) -> Offset {
    Offset(offset.0.saturating_add(1))
}

/// One past the last offset of an entry the core built (its offsets were handed out, so the
/// sum is at most `next_offset`).
fn entry_end(entry: &PendingEntry) -> Offset {
    Offset(entry.base.0.saturating_add(u64::from(entry.count)))
}

enum Judgement {
    /// Accept it; the sensor's next seq is then this.
    New(u64),
    Duplicate(Offset),
    Reject(RecordRejection),
}

#[derive(Default)]
struct EntryBuilder {
    base: Option<Offset>,
    count: usize,
    body: Vec<u8>,
}

impl EntryBuilder {
    fn add(&mut self, offset: Offset, encoded: Vec<u8>) {
        let base = *self.base.get_or_insert(offset);
        debug_assert_eq!(base.0.checked_add(self.count as u64), Some(offset.0));
        if self.body.is_empty() {
            self.body = encoded;
        } else {
            self.body.extend_from_slice(&encoded);
        }
        self.count += 1;
    }

    fn finish(self) -> Option<PendingEntry> {
        let base = self.base?;
        Some(PendingEntry {
            base,
            count: self.count as u32,
            body: self.body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::{Payload, Reading, Role, UnixMillis};

    /// Some monotonic instant; tests measure from it.
    fn origin() -> Instant {
        #[allow(clippy::disallowed_methods)] // a fixed origin for scripted times
        Instant::now()
    }

    fn config() -> CoreConfig {
        CoreConfig {
            dedup_window_max: 4,
            producers_max: 3,
            producers_per_identity_max: 3,
            producer_idle_expiry: Duration::from_secs(3600),
            pending_bytes_max: 1 << 20,
            waiting_requests_max: 100,
            entry_events_max: 100,
        }
    }

    fn producer(name: &str) -> Arc<Identity> {
        Arc::new(Identity::new("test", Role::Edge, name).unwrap())
    }

    fn item(sensor: &str, epoch: u64, seq: u64) -> ProduceItem {
        let event = Event {
            producer: Identity::new("test", Role::Edge, "p").unwrap(),
            sensor: SensorId::new(sensor).unwrap(),
            boot_epoch: BootEpoch(epoch),
            seq,
            device_time: UnixMillis(0),
            received_time: UnixMillis(0),
            payload: Payload::Reading(Reading::Temperature { celsius: 20.0 }),
        };
        ProduceItem {
            sensor: event.sensor.clone(),
            boot_epoch: BootEpoch(epoch),
            seq,
            seq_last: seq,
            encoded: sluice_proto::codec::encode(&event).unwrap(),
        }
    }

    fn dropped(sensor: &str, epoch: u64, seq: u64, seq_last: u64) -> ProduceItem {
        ProduceItem {
            seq_last,
            ..item(sensor, epoch, seq)
        }
    }

    /// Runs the core like a shell whose flushes all succeed; returns the replies by ticket.
    fn drive(core: &mut PartitionCore, inputs: Vec<Input>) -> Vec<(u64, Vec<RecordOutcome>)> {
        drive_at(core, origin(), inputs)
    }

    /// [`drive`] with every input fed at `now`.
    fn drive_at(
        core: &mut PartitionCore,
        now: Instant,
        inputs: Vec<Input>,
    ) -> Vec<(u64, Vec<RecordOutcome>)> {
        let mut replies = Vec::new();
        let mut queue: VecDeque<Input> = inputs.into();
        for _ in 0..10_000 {
            let Some(input) = queue.pop_front() else {
                return replies;
            };
            core.handle(now, input);
            while let Some(output) = core.poll_output() {
                match output {
                    Output::Persist(_) => queue.push_back(Input::Flushed(Ok(()))),
                    Output::Reply { ticket, outcomes } => replies.push((ticket, outcomes)),
                    Output::Durable(_) | Output::Fenced(_) => {}
                }
            }
        }
        panic!("core did not settle");
    }

    fn produce(ticket: u64, who: &str, items: Vec<ProduceItem>) -> Input {
        Input::Produce {
            ticket,
            producer: producer(who),
            items,
        }
    }

    fn offsets(outcomes: &[RecordOutcome]) -> Vec<Result<(u64, bool), RecordRejection>> {
        outcomes
            .iter()
            .map(|o| match o {
                RecordOutcome::Appended {
                    offset, duplicate, ..
                } => Ok((offset.0, *duplicate)),
                RecordOutcome::Rejected(r) => Err(r.clone()),
            })
            .collect()
    }

    fn check(inputs: Vec<Input>, expected: Vec<Vec<Result<(u64, bool), RecordRejection>>>) {
        let mut core = PartitionCore::new(PartitionId(0), config(), Offset(0));
        let replies = drive(&mut core, inputs);
        let got: Vec<_> = replies.iter().map(|(_, o)| offsets(o)).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn new_records_get_dense_offsets() {
        // Checks that accepted records get dense offsets in arrival order across sensors.
        check(
            vec![produce(
                1,
                "a",
                vec![item("s1", 1, 0), item("s2", 1, 0), item("s1", 1, 1)],
            )],
            vec![vec![Ok((0, false)), Ok((1, false)), Ok((2, false))]],
        );
    }

    #[test]
    fn retry_returns_original_offsets() {
        // Checks that a retried batch is not appended again and returns the original offsets.
        check(
            vec![
                produce(1, "a", vec![item("s", 1, 0), item("s", 1, 1)]),
                produce(
                    2,
                    "a",
                    vec![item("s", 1, 0), item("s", 1, 1), item("s", 1, 2)],
                ),
            ],
            vec![
                vec![Ok((0, false)), Ok((1, false))],
                vec![Ok((0, true)), Ok((1, true)), Ok((2, false))],
            ],
        );
    }

    #[test]
    fn gap_is_an_error_and_blocks_later_seqs() {
        // Checks that a skipped seq is refused with the expected seq named, for it and later ones.
        let gap = |got| {
            Err(RecordRejection::SequenceGap {
                sensor: "s".into(),
                expected: 1,
                got,
            })
        };
        check(
            vec![produce(
                1,
                "a",
                vec![item("s", 1, 0), item("s", 1, 2), item("s", 1, 3)],
            )],
            vec![vec![Ok((0, false)), gap(2), gap(3)]],
        );
    }

    #[test]
    fn epochs_start_at_zero_and_never_go_back() {
        // Checks the epoch rules: first contact and new epochs start at seq 0; older epochs are
        // refused unless the record is a remembered duplicate.
        check(
            vec![produce(
                1,
                "a",
                vec![
                    item("s", 1, 5),
                    item("s", 1, 0),
                    item("s", 2, 3),
                    item("s", 2, 0),
                    item("s", 1, 1),
                    item("s", 1, 0),
                ],
            )],
            vec![vec![
                Err(RecordRejection::EpochStart {
                    sensor: "s".into(),
                    epoch: 1,
                    got: 5,
                }),
                Ok((0, false)),
                Err(RecordRejection::EpochStart {
                    sensor: "s".into(),
                    epoch: 2,
                    got: 3,
                }),
                Ok((1, false)),
                Err(RecordRejection::StaleEpoch {
                    sensor: "s".into(),
                    epoch: 1,
                    current: 2,
                }),
                Ok((0, true)),
            ]],
        );
    }

    #[test]
    fn producers_are_separate_and_bounded() {
        // Checks that the same sensor id from two producers is two sequences, and that the
        // producer bound is enforced with a typed rejection.
        check(
            vec![
                produce(1, "a", vec![item("s", 1, 0), item("t", 1, 0)]),
                produce(2, "b", vec![item("s", 1, 0), item("u", 1, 0)]),
            ],
            vec![
                vec![Ok((0, false)), Ok((1, false))],
                vec![
                    Ok((2, false)),
                    Err(RecordRejection::TooManyProducers { max: 3 }),
                ],
            ],
        );
    }

    #[test]
    fn duplicates_beyond_the_window_are_refused_not_stored() {
        // Checks that a retry older than the dedup window is refused rather than appended twice.
        let items: Vec<_> = (0..6).map(|s| item("s", 1, s)).collect();
        let mut core = PartitionCore::new(PartitionId(0), config(), Offset(0));
        drive(&mut core, vec![produce(1, "a", items)]);
        let replies = drive(
            &mut core,
            vec![produce(2, "a", vec![item("s", 1, 0), item("s", 1, 5)])],
        );
        assert_eq!(
            offsets(&replies[0].1),
            vec![
                Err(RecordRejection::DuplicateTooOld {
                    sensor: "s".into(),
                    seq: 0
                }),
                Ok((5, true))
            ]
        );
        assert_eq!(core.next_offset(), Offset(6));
    }

    #[test]
    fn group_commit_gathers_requests_during_a_flush() {
        // Checks group commit: requests arriving while a flush runs share the next flush, and no
        // reply is released before its offsets are durable.
        let mut core = PartitionCore::new(PartitionId(0), config(), Offset(0));
        core.handle(origin(), produce(1, "a", vec![item("s", 1, 0)]));
        assert!(matches!(core.poll_output(), Some(Output::Persist(e)) if e.len() == 1));
        assert!(core.poll_output().is_none());
        core.handle(origin(), produce(2, "a", vec![item("s", 1, 1)]));
        core.handle(origin(), produce(3, "b", vec![item("s", 1, 0)]));
        assert!(
            core.poll_output().is_none(),
            "no second flush while one is in flight, no early reply"
        );
        core.handle(origin(), Input::Flushed(Ok(())));
        assert!(matches!(
            core.poll_output(),
            Some(Output::Durable(Offset(1)))
        ));
        assert!(matches!(
            core.poll_output(),
            Some(Output::Reply { ticket: 1, .. })
        ));
        assert!(matches!(core.poll_output(), Some(Output::Persist(e)) if e.len() == 2));
        core.handle(origin(), Input::Flushed(Ok(())));
        assert!(matches!(
            core.poll_output(),
            Some(Output::Durable(Offset(3)))
        ));
        assert!(matches!(
            core.poll_output(),
            Some(Output::Reply { ticket: 2, .. })
        ));
        assert!(matches!(
            core.poll_output(),
            Some(Output::Reply { ticket: 3, .. })
        ));
    }

    #[test]
    fn failed_flush_fences_and_acks_nothing_undurable() {
        // Checks that after a failed fsync no waiting record is acknowledged and the partition
        // refuses further writes until it is restarted.
        let mut core = PartitionCore::new(PartitionId(0), config(), Offset(0));
        core.handle(origin(), produce(1, "a", vec![item("s", 1, 0)]));
        assert!(matches!(core.poll_output(), Some(Output::Persist(_))));
        core.handle(origin(), Input::Flushed(Err("fdatasync: EIO".into())));
        let Some(Output::Reply { outcomes, .. }) = core.poll_output() else {
            panic!("no reply")
        };
        assert!(matches!(
            &outcomes[0],
            RecordOutcome::Rejected(RecordRejection::Storage { .. })
        ));
        assert!(matches!(core.poll_output(), Some(Output::Fenced(_))));
        core.handle(origin(), produce(2, "a", vec![item("s", 1, 1)]));
        let Some(Output::Reply { outcomes, .. }) = core.poll_output() else {
            panic!("no reply")
        };
        assert!(matches!(
            &outcomes[0],
            RecordOutcome::Rejected(RecordRejection::Storage { .. })
        ));
    }

    #[test]
    fn drop_range_to_u64_max_is_refused_and_seq_0_is_not_appended_again() {
        // Checks the exact case that broke exactly-once: `Dropped{seq_last = u64::MAX}` once
        // wrapped the next expected seq to 0, so seq 0 was appended a second time. Now the range
        // is refused as invalid and the retried seq 0 is a duplicate of its first offset.
        let invalid = Err(RecordRejection::Invalid {
            reason: sluice_proto::SeqRangeError::Overflow {
                first: 1,
                last: u64::MAX,
            }
            .to_string(),
        });
        check(
            vec![
                produce(1, "a", vec![item("s", 1, 0)]),
                produce(2, "a", vec![dropped("s", 1, 1, u64::MAX), item("s", 1, 0)]),
                produce(3, "a", vec![item("s", 1, 1)]),
            ],
            vec![
                vec![Ok((0, false))],
                vec![invalid, Ok((0, true))],
                vec![Ok((1, false))],
            ],
        );
    }

    #[test]
    fn widest_drop_range_is_accepted_and_nothing_follows_it() {
        // Checks that a range up to SEQ_MAX is stored, that the sensor then expects u64::MAX,
        // which no record may carry, and that seq 0 is still a duplicate.
        let mut core = PartitionCore::new(PartitionId(0), config(), Offset(0));
        let replies = drive(
            &mut core,
            vec![produce(
                1,
                "a",
                vec![
                    dropped("s", 1, 0, sluice_proto::SEQ_MAX),
                    item("s", 1, u64::MAX),
                    dropped("s", 1, 0, sluice_proto::SEQ_MAX),
                ],
            )],
        );
        let got = offsets(&replies[0].1);
        assert_eq!(got[0], Ok((0, false)));
        assert!(matches!(&got[1], Err(RecordRejection::Invalid { .. })));
        assert_eq!(got[2], Ok((0, true)));
        assert_eq!(core.next_offset(), Offset(1));
    }

    #[test]
    fn inverted_range_is_refused() {
        // Checks that a drop range ending before it starts is refused and not stored.
        let mut core = PartitionCore::new(PartitionId(0), config(), Offset(0));
        let replies = drive(
            &mut core,
            vec![produce(1, "a", vec![dropped("s", 1, 3, 2)])],
        );
        assert!(matches!(
            offsets(&replies[0].1)[0],
            Err(RecordRejection::Invalid { .. })
        ));
        assert_eq!(core.next_offset(), Offset(0));
    }

    #[test]
    fn last_offset_is_never_handed_out_twice() {
        // Checks that a partition at the end of the offset space refuses new records with a
        // typed error instead of wrapping its next offset to 0.
        let mut core = PartitionCore::new(PartitionId(0), config(), Offset(u64::MAX - 1));
        let replies = drive(
            &mut core,
            vec![produce(1, "a", vec![item("s", 1, 0), item("s", 1, 1)])],
        );
        let got = offsets(&replies[0].1);
        assert_eq!(got[0], Ok((u64::MAX - 1, false)));
        assert!(matches!(&got[1], Err(RecordRejection::Storage { .. })));
        assert_eq!(core.next_offset(), Offset(u64::MAX));
    }

    #[test]
    fn recovered_range_to_u64_max_does_not_wrap() {
        // Checks that a range reaching u64::MAX found in the log (stored by an older build)
        // leaves the sensor expecting nothing more rather than seq 0 again.
        let mut event = sluice_proto::codec::decode::<Event>(&item("s", 1, 0).encoded).unwrap();
        event.payload = Payload::Dropped {
            seq_last: u64::MAX,
            reason: sluice_proto::DropReason::PowerLoss,
        };
        let mut core = PartitionCore::new(PartitionId(0), config(), Offset(1));
        core.recover_event(origin(), Offset(0), &event);
        core.finish_recovery(Offset(1));
        let replies = drive(&mut core, vec![produce(1, "p", vec![item("s", 1, 0)])]);
        assert!(matches!(
            offsets(&replies[0].1)[0],
            Err(RecordRejection::Invalid { .. })
        ));
        assert_eq!(core.next_offset(), Offset(1));
    }

    /// Per identity 2 live pairs, 10 in the partition, expiry after 60 s.
    fn budgets() -> CoreConfig {
        CoreConfig {
            producers_max: 10,
            producers_per_identity_max: 2,
            producer_idle_expiry: Duration::from_secs(60),
            ..config()
        }
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    /// One record through a core at `now`: its outcome as in [`offsets`].
    fn one(
        core: &mut PartitionCore,
        now: Instant,
        who: &str,
        item: ProduceItem,
    ) -> Result<(u64, bool), RecordRejection> {
        let replies = drive_at(core, now, vec![produce(0, who, vec![item])]);
        offsets(&replies[0].1).remove(0)
    }

    fn too_many(max: u32) -> Result<(u64, bool), RecordRejection> {
        Err(RecordRejection::TooManyProducers { max })
    }

    fn too_old(sensor: &str, seq: u64) -> Result<(u64, bool), RecordRejection> {
        Err(RecordRejection::DuplicateTooOld {
            sensor: sensor.into(),
            seq,
        })
    }

    fn expired(sensor: &str, epoch: u64) -> Result<(u64, bool), RecordRejection> {
        Err(RecordRejection::ProducerExpired {
            sensor: sensor.into(),
            epoch,
        })
    }

    #[test]
    fn one_identity_exhausts_only_its_own_budget() {
        // Checks that an identity past producers_per_identity_max gets TooManyProducers for its
        // new sensors while another identity's new sensors are accepted, and that the first
        // identity's known sensors go on.
        let t0 = origin();
        let mut core = PartitionCore::new(PartitionId(0), budgets(), Offset(0));
        assert_eq!(one(&mut core, t0, "a", item("s1", 1, 0)), Ok((0, false)));
        assert_eq!(one(&mut core, t0, "a", item("s2", 1, 0)), Ok((1, false)));
        assert_eq!(one(&mut core, t0, "a", item("s3", 1, 0)), too_many(2));
        assert_eq!(one(&mut core, t0, "b", item("s3", 1, 0)), Ok((2, false)));
        assert_eq!(one(&mut core, t0, "b", item("s4", 1, 0)), Ok((3, false)));
        assert_eq!(one(&mut core, t0, "b", item("s5", 1, 0)), too_many(2));
        assert_eq!(one(&mut core, t0, "a", item("s1", 1, 1)), Ok((4, false)));
        assert_eq!(one(&mut core, t0, "c", item("s1", 1, 0)), Ok((5, false)));
        assert_eq!(core.n_live_producers(), 5);
    }

    #[test]
    fn partition_bound_holds_across_identities() {
        // Checks that producers_max still bounds the partition when every identity is within
        // its own budget.
        let t0 = origin();
        let config = CoreConfig {
            producers_max: 3,
            ..budgets()
        };
        let mut core = PartitionCore::new(PartitionId(0), config, Offset(0));
        assert_eq!(one(&mut core, t0, "a", item("s1", 1, 0)), Ok((0, false)));
        assert_eq!(one(&mut core, t0, "a", item("s2", 1, 0)), Ok((1, false)));
        assert_eq!(one(&mut core, t0, "b", item("s1", 1, 0)), Ok((2, false)));
        assert_eq!(one(&mut core, t0, "b", item("s2", 1, 0)), too_many(3));
    }

    #[test]
    fn idle_state_expires_and_frees_the_budget() {
        // Checks that state idle for the expiry is retired (its slot freed for a new sensor),
        // that a retired sensor resumes at its next seq, and that a retry of its older record
        // is refused DuplicateTooOld, never appended again.
        let t0 = origin();
        let mut core = PartitionCore::new(PartitionId(0), budgets(), Offset(0));
        assert_eq!(one(&mut core, t0, "a", item("s1", 1, 0)), Ok((0, false)));
        assert_eq!(one(&mut core, t0, "a", item("s2", 1, 0)), Ok((1, false)));
        assert_eq!(
            one(&mut core, secs(t0, 59), "a", item("s3", 1, 0)),
            too_many(2)
        );
        // Accepted records are activity (a duplicate is not): s1 is touched at 59 s.
        assert_eq!(
            one(&mut core, secs(t0, 59), "a", item("s1", 1, 1)),
            Ok((2, false))
        );
        // At 60 s only s2 has been idle for the expiry.
        assert_eq!(
            one(&mut core, secs(t0, 60), "a", item("s3", 1, 0)),
            Ok((3, false))
        );
        assert_eq!(
            one(&mut core, secs(t0, 60), "a", item("s2", 1, 0)),
            too_old("s2", 0)
        );
        assert_eq!(
            one(&mut core, secs(t0, 60), "a", item("s2", 1, 1)),
            too_many(2)
        );
        // At 119 s s1 has been idle for 60 s, s3 for 59 s.
        assert_eq!(
            one(&mut core, secs(t0, 119), "a", item("s2", 1, 1)),
            Ok((4, false))
        );
        assert_eq!(
            one(&mut core, secs(t0, 119), "a", item("s2", 1, 1)),
            Ok((4, true))
        );
        assert_eq!(
            one(&mut core, secs(t0, 119), "a", item("s3", 1, 0)),
            Ok((3, true))
        );
        assert_eq!(core.next_offset(), Offset(5));
        assert_eq!(core.n_expired_producers(), (2, 0));
    }

    #[test]
    fn retry_after_expiry_is_never_a_second_append() {
        // Checks that a record retried after its state expired gets a typed refusal and leaves
        // the log as it was, for readings and for drop ranges.
        let t0 = origin();
        let mut core = PartitionCore::new(PartitionId(0), budgets(), Offset(0));
        assert_eq!(one(&mut core, t0, "a", item("s", 1, 0)), Ok((0, false)));
        assert_eq!(
            one(&mut core, t0, "a", dropped("s", 1, 1, 9)),
            Ok((1, false))
        );
        let later = secs(t0, 3600);
        assert_eq!(one(&mut core, later, "a", item("s", 1, 0)), too_old("s", 0));
        assert_eq!(
            one(&mut core, later, "a", dropped("s", 1, 1, 9)),
            too_old("s", 1)
        );
        assert_eq!(core.next_offset(), Offset(2));
        assert_eq!(one(&mut core, later, "a", item("s", 1, 10)), Ok((2, false)));
    }

    #[test]
    fn forgotten_state_refuses_its_epoch_and_a_new_epoch_starts_afresh() {
        // Checks that once retired state is pushed out by newer retired state, a record of that
        // identity in an epoch up to the forgotten one is refused ProducerExpired (it might be a
        // retry), that sensors still retired resume, and that a newer epoch is accepted.
        let t0 = origin();
        let mut core = PartitionCore::new(PartitionId(0), budgets(), Offset(0));
        for (n, sensor) in ["s1", "s2"].into_iter().enumerate() {
            assert_eq!(
                one(&mut core, t0, "a", item(sensor, 1, 0)),
                Ok((n as u64, false))
            );
        }
        for (n, sensor) in ["s3", "s4"].into_iter().enumerate() {
            assert_eq!(
                one(&mut core, secs(t0, 60), "a", item(sensor, 1, 0)),
                Ok((2 + n as u64, false))
            );
        }
        let t = secs(t0, 120);
        // s3 and s4 retire now and push s1 and s2 out of the retired bound.
        assert_eq!(one(&mut core, t, "a", item("s1", 1, 0)), expired("s1", 1));
        assert_eq!(core.n_expired_producers(), (4, 2));
        assert_eq!(one(&mut core, t, "a", item("s9", 1, 0)), expired("s9", 1));
        assert_eq!(one(&mut core, t, "a", item("s3", 1, 0)), too_old("s3", 0));
        assert_eq!(one(&mut core, t, "a", item("s3", 1, 1)), Ok((4, false)));
        assert_eq!(one(&mut core, t, "a", item("s1", 2, 0)), Ok((5, false)));
        assert_eq!(one(&mut core, t, "b", item("s1", 1, 0)), Ok((6, false)));
        assert_eq!(core.next_offset(), Offset(7));
    }

    #[test]
    fn recovery_rebuilds_within_budgets_and_restarts_idle_clocks() {
        // Checks that replaying more sensors of one identity than its budget keeps the most
        // recently written live, retires the older ones (a retry of theirs is DuplicateTooOld,
        // a retry of a live one gets its offset back), forgets beyond the retired bound, and
        // that idle time counts from recovery, not from the log's wall-clock stamps.
        let t_recovery = origin();
        let mut core = PartitionCore::new(PartitionId(0), budgets(), Offset(0));
        for (n, sensor) in ["s1", "s2", "s3", "s4", "s5"].into_iter().enumerate() {
            let event = sluice_proto::codec::decode::<Event>(&item(sensor, 1, 0).encoded).unwrap();
            core.recover_event(t_recovery, Offset(n as u64), &event);
        }
        core.finish_recovery(Offset(5));
        assert_eq!(core.n_live_producers(), 2);
        assert_eq!(core.n_expired_producers(), (3, 1));
        let t = secs(t_recovery, 59);
        assert_eq!(one(&mut core, t, "p", item("s1", 1, 0)), expired("s1", 1));
        assert_eq!(one(&mut core, t, "p", item("s2", 1, 0)), too_old("s2", 0));
        assert_eq!(one(&mut core, t, "p", item("s3", 1, 0)), too_old("s3", 0));
        assert_eq!(one(&mut core, t, "p", item("s4", 1, 0)), Ok((3, true)));
        assert_eq!(one(&mut core, t, "p", item("s5", 1, 0)), Ok((4, true)));
        assert_eq!(one(&mut core, t, "p", item("s2", 1, 1)), too_many(2));
        // At 60 s after recovery s4 and s5 retire, pushing s2 and s3 out.
        let t = secs(t_recovery, 60);
        assert_eq!(one(&mut core, t, "p", item("s5", 1, 0)), too_old("s5", 0));
        assert_eq!(core.n_expired_producers(), (5, 3));
        assert_eq!(one(&mut core, t, "p", item("s2", 1, 1)), expired("s2", 1));
        assert_eq!(one(&mut core, t, "p", item("s5", 1, 1)), Ok((5, false)));
        assert_eq!(core.next_offset(), Offset(6));
    }

    #[test]
    fn recovery_never_refuses_past_the_partition_bound() {
        // Checks that a log holding more producers than producers_max replays completely, the
        // least recently written retired, so nothing stored can be appended again.
        let t0 = origin();
        let config = CoreConfig {
            producers_max: 2,
            ..budgets()
        };
        let mut core = PartitionCore::new(PartitionId(0), config, Offset(0));
        let mut event = sluice_proto::codec::decode::<Event>(&item("s", 1, 0).encoded).unwrap();
        for (n, who) in ["a", "b", "c"].into_iter().enumerate() {
            event.producer = Identity::new("test", Role::Edge, who).unwrap();
            core.recover_event(t0, Offset(n as u64), &event);
        }
        core.finish_recovery(Offset(3));
        assert_eq!(core.n_live_producers(), 2);
        assert_eq!(one(&mut core, t0, "a", item("s", 1, 0)), too_old("s", 0));
        assert_eq!(one(&mut core, t0, "c", item("s", 1, 0)), Ok((2, true)));
    }

    #[test]
    fn recovered_state_deduplicates_after_restart() {
        // Checks that replaying the log into a fresh core restores duplicate detection.
        let event = sluice_proto::codec::decode::<Event>(&item("s", 1, 0).encoded).unwrap();
        let mut core = PartitionCore::new(PartitionId(0), config(), Offset(8));
        core.recover_event(origin(), Offset(7), &event);
        let replies = drive(
            &mut core,
            vec![produce(1, "p", vec![item("s", 1, 0), item("s", 1, 1)])],
        );
        assert_eq!(offsets(&replies[0].1), vec![Ok((7, true)), Ok((8, false))]);
    }
}
