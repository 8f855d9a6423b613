//! The uplink core: when to connect, when to send, what an answer means for the spool. Sans IO:
//! the agent's loop feeds it events with the time as `now` and executes its [`Output`]s
//! (connect, ack records in the spool, rewind the spool, drop the connection).
//!
//! Rules:
//! - At most `batches_in_flight_max` produce requests are in flight. A partly filled batch holds
//!   back the next one for `linger_ms`, so a trickle of records still travels in batches.
//! - A record leaves the spool only when the node acknowledged it durable (`Appended`, or
//!   `DuplicateTooOld`: it was stored by an earlier attempt). Per sensor stream, only the prefix
//!   of a batch up to the first record that was not stored is acknowledged, so nothing after a
//!   refused record can be released ahead of it.
//! - Any refusal (a whole-request error, or a record the node did not store) stops new sends;
//!   once every request in flight has answered, the spool is rewound (everything unacknowledged
//!   is sent again, in seq order) after a backoff. The node deduplicates by
//!   `(producer, boot_epoch, seq)`, so resending is always safe.
//! - Requests in flight together may reach a partition out of order, and the later one is then
//!   refused as a sequence gap (or an epoch out of turn). Such ordering refusals of a request
//!   sent while others were in flight are the agent's own doing: they stop new sends and rewind
//!   the spool like any refusal, but without a backoff and without counting as a failure. The
//!   oldest request in flight cannot be reordered, so every round stores at least one batch;
//!   an ordering refusal of a request sent alone is real and backs off.
//! - A reading the node refuses as `Invalid` is something the edge cannot fix by resending (the
//!   node checks bounds the edge cannot see, such as a smaller `record_bytes_max`), and would
//!   hold every later reading of its sensor back forever. The core asks the spool to replace it
//!   by a `Dropped { reason: Invalid }` declaration ([`Output::Refused`]) and rewinds at once,
//!   without a backoff: the sequence gaps the later records of that batch met are its
//!   consequence. A declaration refused as `Invalid` stays a refusal (retried with backoff).
//! - A record the node refuses as `ProducerExpired` cannot be stored in its epoch ever again:
//!   the node forgot that sensor's state in that epoch and cannot tell a retry from a new
//!   record. Resending would hold the sensor back forever, so the core asks the agent to move
//!   the stream to a newer epoch ([`Output::Expired`]; the spool closes the old epoch's
//!   unacknowledged range with a `Dropped { reason: ProducerExpired }` declaration and resends
//!   the readings it never sent) and rewinds at once, without a backoff. An `EpochStart`
//!   refusal of a request sent alone is handled the same way: the node knows nothing of the
//!   epoch (it lost it) and the epoch's first seqs were already released from the spool.
//! - A request the node refuses whole as `TooLarge` (its `batch_records_max` or frame bound is
//!   smaller than the edge's) would be refused again on every resend. The core halves the
//!   records per request from that request's size ([`UplinkCore::batch_records_max`]) and
//!   rewinds at once, without a backoff; a lone reading still too large is asked to be declared
//!   like an invalid one ([`Output::Refused`]). The bound returns to the configured one on each
//!   new connection (the node may have been reconfigured).
//! - A connection that fails (timeout, close, protocol error) is dropped: requests in flight on
//!   it are forgotten, the spool is rewound, and a new connection is tried after a backoff.
//! - Backoff is the project's one schedule, [`sluice_proto::backoff::Backoff`]: it doubles per
//!   consecutive failure from `backoff_initial_ms` to `backoff_max_ms`, with jitter seeded from
//!   the RNG the shell hands in (derived from `Env::rng`); a fully stored batch resets it, and
//!   so does a refused batch that stored some records (progress: one sensor the node keeps
//!   refusing must not slow the others to the longest wait), whose wait is then the first step.

use crate::spool::StreamKey;
use rand_chacha::ChaCha8Rng;
use sluice_proto::backoff::Backoff;
use sluice_proto::env::{TransportError, TransportErrorKind};
use sluice_proto::msg::{ErrorCode, ProduceResponse, RecordOutcome, RecordRejection};
use sluice_proto::{Payload, Record, StreamName};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Bounds and timings of the uplink core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UplinkLimits {
    /// Requests in flight at once.
    pub batches_in_flight_max: u32,
    /// Records per request (a batch this full does not linger).
    pub batch_records_max: u32,
    /// How long a partly filled batch holds back the next one.
    pub linger: Duration,
    /// First backoff.
    pub backoff_initial: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Start connecting; answer with [`UplinkCore::handle_connected`] or
    /// [`UplinkCore::handle_connect_failed`], passing `attempt`.
    Connect {
        /// Identifies this attempt.
        attempt: u64,
    },
    /// Drop the current connection.
    Disconnect,
    /// The node holds every record of `key` in `stream` up to `seq_through`.
    Ack {
        /// The stream (which spool).
        stream: StreamName,
        /// The sensor stream.
        key: StreamKey,
        /// Last seq stored.
        seq_through: u64,
    },
    /// The node refused reading `seq` of `key` as invalid: replace it by a declaration (see
    /// `SpoolCore::handle_refused`). Comes before the [`Output::Rewind`] that resends it.
    Refused {
        /// The stream (which spool).
        stream: StreamName,
        /// The sensor stream.
        key: StreamKey,
        /// The refused reading's seq.
        seq: u64,
        /// What the node said.
        reason: String,
    },
    /// The node forgot the producer state of `key` (`ProducerExpired`) and refuses everything
    /// of it: move its unacknowledged records to a newer epoch (see `Spool::expired`). Comes
    /// before the [`Output::Rewind`] that sends them again.
    Expired {
        /// The stream (which spool).
        stream: StreamName,
        /// The sensor stream the node forgot.
        key: StreamKey,
    },
    /// Everything handed out and not acknowledged must be handed out again.
    Rewind,
}

/// How serious a refusal is, for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Expected now and then (overload, a node restarting); retried after a backoff.
    Transient,
    /// A request overtook an earlier one in flight; resent at once, not a failure.
    Reordered,
    /// The node refused a request as too large (its bound is smaller than the edge's): its
    /// records are resent at once in smaller requests, not a failure; an operator should
    /// still learn of the mismatch (counted, logged).
    Split,
    /// Will not pass without someone acting (ACL, certificate, a node that lost data).
    NeedsOperator,
    /// The spool resolves the refusal with a declaration, so the sensor moves on: a reading
    /// refused as invalid is declared dropped (`Invalid`) in its place; a sensor whose producer
    /// state the node forgot moves to a newer epoch (`ProducerExpired`). Resent at once, not a
    /// failure; an operator should still learn why (counted, logged).
    Declared,
}

/// What the shell should report about an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Records acknowledged by this answer.
    pub n_delivered: u64,
    /// Refused records or the whole-request failure, by counter label, with one example.
    pub refusals: Vec<(&'static str, Severity, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Not connected; try again at this time.
    Down { retry_at: Instant },
    /// A connection attempt is under way.
    Connecting { attempt: u64 },
    /// Connected.
    Up { attempt: u64 },
}

/// A request in flight: the records it carries, in order.
#[derive(Debug, Clone)]
struct Batch {
    stream: StreamName,
    /// `(key, seq, seq_last, is a declaration)` of each record.
    records: Vec<(StreamKey, u64, u64, bool)>,
    /// Other requests were in flight when it was sent, so it may overtake them.
    pipelined: bool,
}

/// Why sends are held until the requests in flight have answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Hold {
    /// Only ordering refusals of pipelined requests: rewind and resend at once.
    Reordered,
    /// A real refusal: rewind, then wait the backoff.
    Refused,
}

/// The uplink's decisions. See the module documentation.
#[derive(Debug)]
pub struct UplinkCore {
    limits: UplinkLimits,
    backoff: Backoff,
    link: Link,
    attempts: u64,
    in_flight: BTreeMap<u64, Batch>,
    n_in_flight_records: u64,
    next_batch_id: u64,
    /// Records per request now: `limits.batch_records_max`, or less after `TooLarge`.
    batch_records_cap: u32,
    /// A refusal happened: no new sends until the in-flight requests answered and the spool
    /// was rewound.
    hold: Option<Hold>,
    /// No sends before this time (backoff after a refusal, or linger).
    resume_at: Option<Instant>,
    outputs: VecDeque<Output>,
}

impl UplinkCore {
    /// A core that connects at once.
    pub fn new(limits: UplinkLimits, now: Instant, rng: ChaCha8Rng) -> Self {
        Self {
            limits,
            backoff: Backoff::new(limits.backoff_initial, limits.backoff_max, rng),
            link: Link::Down { retry_at: now },
            attempts: 0,
            in_flight: BTreeMap::new(),
            n_in_flight_records: 0,
            next_batch_id: 1,
            batch_records_cap: limits.batch_records_max.max(1),
            hold: None,
            resume_at: None,
            outputs: VecDeque::new(),
        }
    }

    // ----- getters -----

    /// The attempt id of the live connection, if connected.
    pub fn connection(&self) -> Option<u64> {
        match self.link {
            Link::Up { attempt } => Some(attempt),
            _ => None,
        }
    }

    /// Records sent and not yet answered.
    pub fn n_in_flight_records(&self) -> u64 {
        self.n_in_flight_records
    }

    /// Requests in flight.
    pub fn n_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Most records the next request may carry: the configured bound, or less after the node
    /// refused a request as too large on this connection.
    pub fn batch_records_max(&self) -> u32 {
        self.batch_records_cap
    }

    /// Consecutive failures (the backoff exponent).
    pub fn failures(&self) -> u32 {
        self.backoff.n_failures()
    }

    /// True when a new request may be sent now.
    pub fn can_send(&self, now: Instant) -> bool {
        matches!(self.link, Link::Up { .. })
            && self.hold.is_none()
            && self.resume_at.is_none_or(|t| now >= t)
            && self.in_flight.len() < self.limits.batches_in_flight_max as usize
    }

    /// The next time [`UplinkCore::handle_tick`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.link {
            Link::Down { retry_at } => Some(retry_at),
            Link::Up { .. } if self.hold.is_none() => self.resume_at,
            _ => None,
        }
    }

    /// The next output to execute.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    // ----- inputs -----

    /// Time passed: start a connection attempt when one is due.
    pub fn handle_tick(&mut self, now: Instant) {
        if let Link::Down { retry_at } = self.link {
            if now >= retry_at {
                self.attempts += 1;
                self.link = Link::Connecting {
                    attempt: self.attempts,
                };
                self.outputs.push_back(Output::Connect {
                    attempt: self.attempts,
                });
            }
        }
        if self.resume_at.is_some_and(|t| now >= t) && self.hold.is_none() {
            self.resume_at = None;
        }
        self.check_invariants();
    }

    /// Connection attempt `attempt` succeeded. A stale attempt changes nothing: the shell keeps
    /// a connection only when [`UplinkCore::connection`] names its attempt afterwards.
    pub fn handle_connected(&mut self, attempt: u64) {
        if self.link == (Link::Connecting { attempt }) {
            self.link = Link::Up { attempt };
            self.batch_records_cap = self.limits.batch_records_max.max(1);
        }
        self.check_invariants();
    }

    /// Connection attempt `attempt` failed.
    pub fn handle_connect_failed(&mut self, now: Instant, attempt: u64) {
        if self.link == (Link::Connecting { attempt }) {
            self.link = Link::Down {
                retry_at: now + self.backoff.next_delay(),
            };
        }
        self.check_invariants();
    }

    /// A request with `records` (in order) was sent on connection `attempt`; returns its id.
    pub fn handle_sent(&mut self, now: Instant, stream: StreamName, records: &[Record]) -> u64 {
        let id = self.next_batch_id;
        self.next_batch_id += 1;
        let records: Vec<_> = records
            .iter()
            .map(|r| {
                let key = StreamKey {
                    sensor: r.sensor.clone(),
                    epoch: r.boot_epoch,
                };
                let is_drop = matches!(r.payload, Payload::Dropped { .. });
                (key, r.seq, r.seq_last(), is_drop)
            })
            .collect();
        self.n_in_flight_records += records.len() as u64;
        let pipelined = !self.in_flight.is_empty();
        if records.len() < self.batch_records_cap as usize && !self.limits.linger.is_zero() {
            self.resume_at = Some(now + self.limits.linger);
        }
        self.in_flight.insert(
            id,
            Batch {
                stream,
                records,
                pipelined,
            },
        );
        self.check_invariants();
        id
    }

    /// The answer to request `batch_id` sent on connection `attempt`.
    pub fn handle_response(
        &mut self,
        now: Instant,
        attempt: u64,
        batch_id: u64,
        result: Result<ProduceResponse, TransportError>,
    ) -> Report {
        let mut report = Report {
            n_delivered: 0,
            refusals: Vec::new(),
        };
        if self.connection() != Some(attempt) {
            // From a connection we already dropped and rewound: nothing to learn.
            return report;
        }
        let Some(batch) = self.in_flight.remove(&batch_id) else {
            return report;
        };
        self.n_in_flight_records -= batch.records.len() as u64;
        match result {
            Ok(response) if response.outcomes.len() == batch.records.len() => {
                let declared = self.outcomes(&batch, &response.outcomes, &mut report);
                // After a declared reading, the later records of its stream met a gap.
                let reordered = (batch.pipelined || declared)
                    && report.refusals.iter().all(|(label, severity, _)| {
                        ORDERING_LABELS.contains(label) || *severity == Severity::Declared
                    });
                if report.refusals.is_empty() {
                    self.backoff.reset();
                } else if reordered {
                    for refusal in &mut report.refusals {
                        if refusal.1 != Severity::Declared {
                            refusal.1 = Severity::Reordered;
                        }
                    }
                    self.hold = self.hold.max(Some(Hold::Reordered));
                } else {
                    if report.n_delivered > 0 {
                        // Partly stored: the round made progress (a sensor the node keeps
                        // refusing must not slow the others to the longest wait); the backoff
                        // grows again once nothing but refusals comes back.
                        self.backoff.reset();
                    }
                    self.refused(now);
                }
            }
            Ok(response) => {
                let reason = format!(
                    "node answered {} outcomes for {} records",
                    response.outcomes.len(),
                    batch.records.len()
                );
                report
                    .refusals
                    .push(("protocol", Severity::NeedsOperator, reason));
                self.connection_lost(now);
            }
            Err(error) if error.kind == TransportErrorKind::Remote(ErrorCode::TooLarge) => {
                self.too_large(now, &batch, error.message, &mut report);
            }
            Err(error) => {
                let (label, severity, fatal_to_connection) = classify_error(&error);
                report.refusals.push((label, severity, error.message));
                if fatal_to_connection {
                    self.connection_lost(now);
                } else {
                    self.refused(now);
                }
            }
        }
        self.release_if_drained(now);
        self.check_invariants();
        report
    }

    /// Applies the outcomes of `batch`; returns true when a reading refused as invalid is to
    /// be declared.
    fn outcomes(&mut self, batch: &Batch, outcomes: &[RecordOutcome], report: &mut Report) -> bool {
        // Per sensor stream: the last seq of the stored prefix, and whether the prefix broke.
        let mut prefix: BTreeMap<&StreamKey, (Option<u64>, bool)> = BTreeMap::new();
        let mut refused = Vec::new();
        let mut expired: Vec<&StreamKey> = Vec::new();
        for ((key, seq, seq_last, is_drop), outcome) in batch.records.iter().zip(outcomes) {
            let entry = prefix.entry(key).or_insert((None, false));
            let stored = match outcome {
                RecordOutcome::Appended { .. } => true,
                RecordOutcome::Rejected(RecordRejection::DuplicateTooOld { .. }) => true,
                // The first record of its stream not stored in this batch: what the node said
                // is about it, not a consequence of an earlier refusal.
                RecordOutcome::Rejected(RecordRejection::Invalid { reason })
                    if !is_drop && !entry.1 =>
                {
                    if !report.refusals.iter().any(|(l, _, _)| *l == "invalid") {
                        let example = format!("seq {seq} of sensor {}: {reason}", key.sensor);
                        report
                            .refusals
                            .push(("invalid", Severity::Declared, example));
                    }
                    refused.push((key.clone(), *seq, reason.clone()));
                    false
                }
                // Nothing of this epoch of the sensor can be stored any more: the spool moves
                // it to a newer epoch. Later records of the stream got the same answer. An
                // `EpochStart` to a request sent alone (so not overtaking the epoch's first
                // records) says the same: the node holds nothing of the epoch, and a seq the
                // spool already released can never be sent again.
                RecordOutcome::Rejected(
                    rejection @ (RecordRejection::ProducerExpired { .. }
                    | RecordRejection::EpochStart { .. }),
                ) if !entry.1
                    && (!batch.pipelined
                        || matches!(rejection, RecordRejection::ProducerExpired { .. })) =>
                {
                    let (label, _) = classify_rejection(rejection);
                    if !report.refusals.iter().any(|(l, _, _)| *l == label) {
                        let example = format!("seq {seq}: {rejection}");
                        report.refusals.push((label, Severity::Declared, example));
                    }
                    if !expired.contains(&key) {
                        expired.push(key);
                    }
                    false
                }
                RecordOutcome::Rejected(rejection) => {
                    let (label, severity) = classify_rejection(rejection);
                    if !report.refusals.iter().any(|(l, _, _)| *l == label) {
                        report
                            .refusals
                            .push((label, severity, rejection.to_string()));
                    }
                    false
                }
            };
            if stored && !entry.1 {
                entry.0 = Some(*seq_last);
                report.n_delivered += 1;
            } else if !stored {
                entry.1 = true;
            }
        }
        for (key, (through, _)) in prefix {
            if let Some(seq_through) = through {
                self.outputs.push_back(Output::Ack {
                    stream: batch.stream.clone(),
                    key: key.clone(),
                    seq_through,
                });
            }
        }
        let declared = !refused.is_empty() || !expired.is_empty();
        for key in expired {
            self.outputs.push_back(Output::Expired {
                stream: batch.stream.clone(),
                key: key.clone(),
            });
        }
        for (key, seq, reason) in refused {
            self.outputs.push_back(Output::Refused {
                stream: batch.stream.clone(),
                key,
                seq,
                reason,
            });
        }
        declared
    }

    /// The node refused `batch` whole as too large: resend its records in requests of half
    /// its size, or declare a lone reading that is too large by itself.
    fn too_large(&mut self, now: Instant, batch: &Batch, message: String, report: &mut Report) {
        let n = u32::try_from(batch.records.len()).unwrap_or(u32::MAX);
        match batch.records.as_slice() {
            [(key, seq, _, false)] => {
                let reason = format!("too large for the node: {message}");
                report.refusals.push((
                    "too_large",
                    Severity::Declared,
                    format!("seq {seq} of sensor {}: {reason}", key.sensor),
                ));
                self.outputs.push_back(Output::Refused {
                    stream: batch.stream.clone(),
                    key: key.clone(),
                    seq: *seq,
                    reason,
                });
                self.hold = self.hold.max(Some(Hold::Reordered));
            }
            [_, _, ..] => {
                self.batch_records_cap = self.batch_records_cap.min(n / 2).max(1);
                let example = format!(
                    "{message}; sending at most {} records per request",
                    self.batch_records_cap
                );
                report
                    .refusals
                    .push(("too_large", Severity::Split, example));
                self.hold = self.hold.max(Some(Hold::Reordered));
            }
            // A lone declaration (small, fixed size) or nothing: nothing to split or declare.
            _ => {
                report
                    .refusals
                    .push(("too_large", Severity::NeedsOperator, message));
                self.refused(now);
            }
        }
    }

    fn refused(&mut self, now: Instant) {
        self.hold = Some(Hold::Refused);
        self.resume_at = Some(now + self.backoff.next_delay());
    }

    fn connection_lost(&mut self, now: Instant) {
        self.outputs.push_back(Output::Disconnect);
        self.in_flight.clear();
        self.n_in_flight_records = 0;
        self.outputs.push_back(Output::Rewind);
        self.hold = None;
        self.resume_at = None;
        self.link = Link::Down {
            retry_at: now + self.backoff.next_delay(),
        };
    }

    /// The connection the shell holds failed on its own (the transport noticed first).
    pub fn handle_connection_failed(&mut self, now: Instant, attempt: u64) {
        if self.connection() == Some(attempt) {
            self.connection_lost(now);
        }
        self.check_invariants();
    }

    /// Once nothing is in flight after a refusal, rewind and wait for the backoff.
    fn release_if_drained(&mut self, now: Instant) {
        if !self.in_flight.is_empty() {
            return;
        }
        match self.hold.take() {
            None => {}
            Some(Hold::Reordered) => {
                self.outputs.push_back(Output::Rewind);
                self.resume_at = None;
            }
            Some(Hold::Refused) => {
                self.outputs.push_back(Output::Rewind);
                if self.resume_at.is_none() {
                    self.resume_at = Some(now + self.backoff.next_delay());
                }
            }
        }
    }

    /// Cheap consistency checks; run at the end of every input.
    pub fn check_invariants(&self) {
        let n: u64 = self
            .in_flight
            .values()
            .map(|b| b.records.len() as u64)
            .sum();
        assert_eq!(n, self.n_in_flight_records, "in-flight record count");
        if !matches!(self.link, Link::Up { .. }) {
            assert!(
                self.in_flight.is_empty(),
                "requests in flight without a link"
            );
        }
        assert!(
            self.in_flight.len() <= self.limits.batches_in_flight_max as usize,
            "window exceeded"
        );
    }
}

/// Labels of refusals that a request overtaking an earlier one in flight causes.
const ORDERING_LABELS: [&str; 3] = ["sequence_gap", "epoch_start", "stale_epoch"];

/// The counter label and severity of a refused record.
pub fn classify_rejection(rejection: &RecordRejection) -> (&'static str, Severity) {
    use RecordRejection as R;
    match rejection {
        R::Overloaded { .. } => ("overloaded", Severity::Transient),
        R::Unavailable { .. } => ("unavailable", Severity::Transient),
        R::Storage { .. } => ("storage", Severity::Transient),
        R::TooManyProducers { .. } => ("too_many_producers", Severity::Transient),
        // With several requests in flight a later one can reach the partition first; the
        // rewind resends in order. A gap that persists means the node lost what it had.
        R::SequenceGap { .. } => ("sequence_gap", Severity::Transient),
        // A request sent alone moves the stream to a newer epoch (see `outcomes`); one that
        // overtook the epoch's first records is an ordering refusal.
        R::EpochStart { .. } => ("epoch_start", Severity::NeedsOperator),
        R::StaleEpoch { .. } => ("stale_epoch", Severity::NeedsOperator),
        R::Invalid { .. } => ("invalid", Severity::NeedsOperator),
        R::DuplicateTooOld { .. } => ("duplicate_too_old", Severity::Transient),
        // The node forgot this epoch of the sensor: the first such record of its stream in a
        // batch moves the stream to a newer epoch (see `outcomes`); one behind another refusal
        // is resent and handled then.
        R::ProducerExpired { .. } => ("producer_expired", Severity::Transient),
    }
}

/// The counter label and severity of a whole-request failure, and whether it ends the
/// connection.
fn classify_error(error: &TransportError) -> (&'static str, Severity, bool) {
    use TransportErrorKind as K;
    match error.kind {
        K::Remote(ErrorCode::Forbidden) => ("forbidden", Severity::NeedsOperator, false),
        K::Remote(ErrorCode::UnknownStream) => ("unknown_stream", Severity::NeedsOperator, false),
        K::Remote(ErrorCode::TooLarge) => ("too_large", Severity::NeedsOperator, false),
        K::Remote(ErrorCode::Overloaded) => ("overloaded", Severity::Transient, false),
        K::Remote(ErrorCode::Unavailable) => ("unavailable", Severity::Transient, false),
        K::Remote(_) => ("remote_error", Severity::NeedsOperator, false),
        K::Timeout => ("timeout", Severity::Transient, true),
        K::Closed | K::Unreachable => ("connection_lost", Severity::Transient, true),
        K::Refused => ("refused", Severity::NeedsOperator, true),
        K::Protocol | K::Local => ("protocol", Severity::NeedsOperator, true),
    }
}

#[cfg(test)]
mod tests;
