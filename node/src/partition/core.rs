//! The partition core: decides, for each record of a produce request, whether it is new, a
//! duplicate (with its original offset) or rejected; assigns offsets; groups accepted records
//! into entries for the next group commit; and releases each request's answer only once every
//! offset in it is durable. No IO, no clock, no awaits.
//!
//! Group commit: while one flush is in flight, everything that arrives is gathered into the next
//! one, so a single `fdatasync` covers every request that arrived during the previous flush.

use crate::log::PendingEntry;
use sluice_proto::msg::{Durability, RecordOutcome, RecordRejection};
use sluice_proto::{BootEpoch, Event, Identity, Offset, PartitionId, SensorId};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Bounds of one partition core.
#[derive(Debug, Clone, Copy)]
pub struct CoreConfig {
    /// Deduplication window: how many recent records of one `(producer, sensor)` remember their
    /// offsets, so that a retry returns the original offsets.
    pub dedup_window_max: u32,
    /// How many `(producer, sensor)` pairs one partition tracks.
    pub producers_max: u32,
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

/// The record of one `(producer, sensor)`.
#[derive(Debug, Clone)]
struct ProducerState {
    epoch: BootEpoch,
    next_seq: u64,
    /// Recent records: `(epoch, seq, seq_last, offset)`, oldest first.
    window: VecDeque<(BootEpoch, u64, u64, Offset)>,
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
    producers: HashMap<Identity, HashMap<SensorId, ProducerState>>,
    n_producers: u32,
    next_offset: Offset,
    durable: Offset,
    pending: Vec<PendingEntry>,
    pending_bytes: u64,
    /// End offset of the flush in flight, if any.
    in_flight: Option<Offset>,
    waiters: VecDeque<Waiter>,
    fenced: Option<String>,
    outputs: VecDeque<Output>,
}

impl PartitionCore {
    /// A core for a log whose next offset is `next_offset`, everything below it durable.
    pub fn new(partition: PartitionId, config: CoreConfig, next_offset: Offset) -> Self {
        Self {
            partition,
            config,
            producers: HashMap::new(),
            n_producers: 0,
            next_offset,
            durable: next_offset,
            pending: Vec::new(),
            pending_bytes: 0,
            in_flight: None,
            waiters: VecDeque::new(),
            fenced: None,
            outputs: VecDeque::new(),
        }
    }

    /// Replays a recovered event so duplicate detection survives restarts.
    pub fn recover_event(&mut self, offset: Offset, event: &Event) {
        let window_max = self.config.dedup_window_max as usize;
        let state = match self
            .producers
            .get_mut(&event.producer)
            .and_then(|m| m.get_mut(&event.sensor))
        {
            Some(state) => state,
            None => {
                self.n_producers += 1;
                self.producers
                    .entry(event.producer.clone())
                    .or_default()
                    .entry(event.sensor.clone())
                    .or_insert(ProducerState {
                        epoch: event.boot_epoch,
                        next_seq: 0,
                        window: VecDeque::new(),
                    })
            }
        };
        state.epoch = event.boot_epoch;
        state.next_seq = event.seq_last().saturating_add(1);
        push_window(
            state,
            window_max,
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

    /// Feeds one input.
    pub fn handle(&mut self, input: Input) {
        match input {
            Input::Produce {
                ticket,
                producer,
                items,
            } => self.handle_produce(ticket, &producer, items),
            Input::Flushed(result) => self.handle_flushed(result),
        }
        self.check_invariants();
    }

    /// The next output to execute.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn handle_produce(&mut self, ticket: u64, producer: &Identity, items: Vec<ProduceItem>) {
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
        let mut need = Offset(0);
        let mut outcomes = Vec::with_capacity(items.len());
        let mut entry = EntryBuilder::default();
        for item in items {
            let outcome = match self.judge(producer, &item) {
                Judgement::New => {
                    let offset = self.accept(producer, &item);
                    if entry.count as u32 >= self.config.entry_events_max {
                        self.push_entry(std::mem::take(&mut entry));
                    }
                    entry.add(offset, item.encoded);
                    need = need.max(Offset(offset.0 + 1));
                    self.appended(offset, false)
                }
                Judgement::Duplicate(offset) => {
                    need = need.max(Offset(offset.0 + 1));
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
            durability: Durability::LeaderFsync,
            duplicate,
        }
    }

    fn judge(&self, producer: &Identity, item: &ProduceItem) -> Judgement {
        let sensor = || item.sensor.to_string();
        if item.seq_last < item.seq {
            return Judgement::Reject(RecordRejection::Invalid {
                reason: format!("drop range {}..={} is inverted", item.seq, item.seq_last),
            });
        }
        let Some(state) = self
            .producers
            .get(producer)
            .and_then(|m| m.get(&item.sensor))
        else {
            if self.n_producers >= self.config.producers_max {
                return Judgement::Reject(RecordRejection::TooManyProducers {
                    max: self.config.producers_max,
                });
            }
            if item.seq != 0 {
                return Judgement::Reject(RecordRejection::EpochStart {
                    sensor: sensor(),
                    epoch: item.boot_epoch.0,
                    got: item.seq,
                });
            }
            return Judgement::New;
        };
        // The common case first: the next seq of the current epoch can be in no window.
        if item.boot_epoch == state.epoch && item.seq >= state.next_seq {
            if item.seq > state.next_seq {
                return Judgement::Reject(RecordRejection::SequenceGap {
                    sensor: sensor(),
                    expected: state.next_seq,
                    got: item.seq,
                });
            }
            return Judgement::New;
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
            return Judgement::New;
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
        Judgement::New
    }

    fn accept(&mut self, producer: &Identity, item: &ProduceItem) -> Offset {
        let offset = self.next_offset;
        self.next_offset = Offset(offset.0 + 1);
        let window_max = self.config.dedup_window_max as usize;
        let by_sensor = match self.producers.get_mut(producer) {
            Some(m) => m,
            None => self.producers.entry(producer.clone()).or_default(),
        };
        let state = match by_sensor.get_mut(&item.sensor) {
            Some(state) => state,
            None => {
                self.n_producers += 1;
                by_sensor
                    .entry(item.sensor.clone())
                    .or_insert(ProducerState {
                        epoch: item.boot_epoch,
                        next_seq: 0,
                        window: VecDeque::new(),
                    })
            }
        };
        state.epoch = item.boot_epoch;
        state.next_seq = item.seq_last + 1;
        push_window(
            state,
            window_max,
            (item.boot_epoch, item.seq, item.seq_last, offset),
        );
        offset
    }

    fn push_entry(&mut self, entry: EntryBuilder) {
        if let Some(pending) = entry.finish() {
            self.pending_bytes += pending.body.len() as u64;
            self.pending.push(pending);
        }
    }

    fn maybe_persist(&mut self) {
        if self.in_flight.is_some() || self.pending.is_empty() || self.fenced.is_some() {
            return;
        }
        let entries = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.in_flight = entries
            .last()
            .map(|e| Offset(e.base.0 + u64::from(e.count)));
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
                let rejection = RecordRejection::Storage {
                    reason: reason.clone(),
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
            let mut expect = self.in_flight.unwrap_or(self.durable);
            for entry in &self.pending {
                assert_eq!(entry.base, expect, "pending entries must be contiguous");
                expect = Offset(entry.base.0 + u64::from(entry.count));
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

fn push_window(state: &mut ProducerState, window_max: usize, item: (BootEpoch, u64, u64, Offset)) {
    state.window.push_back(item);
    while state.window.len() > window_max.max(1) {
        state.window.pop_front();
    }
}

enum Judgement {
    New,
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
        debug_assert_eq!(base.0 + self.count as u64, offset.0);
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

    fn config() -> CoreConfig {
        CoreConfig {
            dedup_window_max: 4,
            producers_max: 3,
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

    /// Runs the core like a shell whose flushes all succeed; returns the replies by ticket.
    fn drive(core: &mut PartitionCore, inputs: Vec<Input>) -> Vec<(u64, Vec<RecordOutcome>)> {
        let mut replies = Vec::new();
        let mut queue: VecDeque<Input> = inputs.into();
        for _ in 0..10_000 {
            let Some(input) = queue.pop_front() else {
                return replies;
            };
            core.handle(input);
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
        core.handle(produce(1, "a", vec![item("s", 1, 0)]));
        assert!(matches!(core.poll_output(), Some(Output::Persist(e)) if e.len() == 1));
        assert!(core.poll_output().is_none());
        core.handle(produce(2, "a", vec![item("s", 1, 1)]));
        core.handle(produce(3, "b", vec![item("s", 1, 0)]));
        assert!(
            core.poll_output().is_none(),
            "no second flush while one is in flight, no early reply"
        );
        core.handle(Input::Flushed(Ok(())));
        assert!(matches!(
            core.poll_output(),
            Some(Output::Durable(Offset(1)))
        ));
        assert!(matches!(
            core.poll_output(),
            Some(Output::Reply { ticket: 1, .. })
        ));
        assert!(matches!(core.poll_output(), Some(Output::Persist(e)) if e.len() == 2));
        core.handle(Input::Flushed(Ok(())));
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
        core.handle(produce(1, "a", vec![item("s", 1, 0)]));
        assert!(matches!(core.poll_output(), Some(Output::Persist(_))));
        core.handle(Input::Flushed(Err("fdatasync: EIO".into())));
        let Some(Output::Reply { outcomes, .. }) = core.poll_output() else {
            panic!("no reply")
        };
        assert!(matches!(
            &outcomes[0],
            RecordOutcome::Rejected(RecordRejection::Storage { .. })
        ));
        assert!(matches!(core.poll_output(), Some(Output::Fenced(_))));
        core.handle(produce(2, "a", vec![item("s", 1, 1)]));
        let Some(Output::Reply { outcomes, .. }) = core.poll_output() else {
            panic!("no reply")
        };
        assert!(matches!(
            &outcomes[0],
            RecordOutcome::Rejected(RecordRejection::Storage { .. })
        ));
    }

    #[test]
    fn recovered_state_deduplicates_after_restart() {
        // Checks that replaying the log into a fresh core restores duplicate detection.
        let event = sluice_proto::codec::decode::<Event>(&item("s", 1, 0).encoded).unwrap();
        let mut core = PartitionCore::new(PartitionId(0), config(), Offset(8));
        core.recover_event(Offset(7), &event);
        let replies = drive(
            &mut core,
            vec![produce(1, "p", vec![item("s", 1, 0), item("s", 1, 1)])],
        );
        assert_eq!(offsets(&replies[0].1), vec![Ok((7, true)), Ok((8, false))]);
    }
}
