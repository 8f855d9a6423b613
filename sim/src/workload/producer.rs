//! A simulated producer: an edge with several sensors, each counting seqs from 0 in one boot
//! epoch. It sends batches of 1 to 50 records with a bounded number of requests in flight,
//! retries the *same* request after a loss or a timeout (deduplication must return the original
//! offsets), and re-sends records refused for reasons it cannot control (a sequence gap behind a
//! lost batch, an unavailable partition). Every record and every answer goes into the checkers'
//! [`History`], which is the producers' account, not the node's.
//!
//! [`Producer`] is the state (no awaits, no clock); [`run_producer`] is the task around it.

use crate::history::{record_key, History};
use crate::invariants::{well_formed_responses, Violation};
use crate::link::Link;
use crate::scenario::{ProducerPlan, CLUSTER, OWNER_PRODUCER_BASE, SALT_PRODUCER};
use crate::world::{Phase, World};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_proto::backoff::Backoff;
use sluice_proto::env::{rng_for, Clock};
use sluice_proto::msg::{Message, ProduceRequest, RecordOutcome, RecordRejection};
use sluice_proto::{BootEpoch, Identity, Payload, Reading, Record, Role, StreamName, UnixMillis};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How long a producer waits for a response before it retries the request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(2_000);
/// Records per request at most.
pub const BATCH_RECORDS_MAX: usize = 50;
/// About the first wait before a request is retried: waits fall in `[d/2, d)`, so 40 to 80 ms
/// at first, doubling up to 640 to 1,280 ms.
const RETRY_INITIAL: Duration = Duration::from_millis(80);
/// The longest wait before a request is retried.
const RETRY_MAX: Duration = Duration::from_millis(1_280);

/// One request as sent: kept to retry it unchanged.
#[derive(Debug)]
struct Batch {
    stream: StreamName,
    /// `(sensor index, seq)` of each record, in request order.
    items: Vec<(usize, u64)>,
    records: Vec<Record>,
    /// The request's retry schedule, made at its first retry (seeded from the producer's RNG).
    backoff: Option<Backoff>,
}

/// A request to send after `backoff`.
#[derive(Debug, Clone)]
pub struct Send {
    /// The producer's id for it.
    pub request_id: u64,
    /// The request.
    pub request: ProduceRequest,
    /// Wait this long before sending.
    pub backoff: Duration,
}

/// The state of one producer.
pub struct Producer {
    plan: ProducerPlan,
    identity: Arc<Identity>,
    name: String,
    epoch: BootEpoch,
    next_seq: Vec<u64>,
    /// Records refused for a reason that needs a re-send, by sensor.
    to_send: Vec<BTreeSet<u64>>,
    /// Records without an answer yet, with their content.
    unresolved: BTreeMap<(usize, u64), Record>,
    in_flight: BTreeMap<u64, Batch>,
    next_request_id: u64,
    streams: Vec<StreamName>,
    rng: ChaCha8Rng,
}

fn payload(rng: &mut ChaCha8Rng, seq: u64) -> Payload {
    match rng.random_range(0..6u8) {
        0 => Payload::Reading(Reading::Temperature {
            celsius: f64::from(rng.random_range(-400..600i32)) / 10.0,
        }),
        1 => Payload::Reading(Reading::Humidity {
            percent: f64::from(rng.random_range(0..1000i32)) / 10.0,
        }),
        2 => Payload::Reading(Reading::Metric {
            name: "door_open".into(),
            unit: "bool".into(),
            value: f64::from(rng.random_range(0..2u8)),
        }),
        3 => {
            let severity = ["low", "high", "critical"][rng.random_range(0..3usize)];
            Payload::Json(format!(
                r#"{{"scanner":"sim","finding":{seq},"severity":"{severity}"}}"#
            ))
        }
        _ => {
            let len = rng.random_range(0..=1500usize);
            Payload::Bytes((0..len).map(|_| rng.random::<u8>()).collect())
        }
    }
}

impl Producer {
    /// The producer of `plan` in the run of `seed`.
    pub fn new(plan: ProducerPlan, seed: u64) -> Self {
        let name = format!("p{}", plan.idx);
        let identity = Identity::new(CLUSTER, Role::Edge, &name)
            .unwrap_or_else(|e| panic!("producer identity {name}: {e}"));
        let mut streams: Vec<StreamName> = plan.sensors.iter().map(|(_, s)| s.clone()).collect();
        streams.sort();
        streams.dedup();
        let n = plan.sensors.len();
        let rng = rng_for(
            seed,
            OWNER_PRODUCER_BASE + u64::from(plan.idx),
            SALT_PRODUCER,
        );
        Self {
            plan,
            identity: Arc::new(identity),
            name,
            epoch: BootEpoch(1),
            next_seq: vec![0; n],
            to_send: vec![BTreeSet::new(); n],
            unresolved: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            next_request_id: 0,
            streams,
            rng,
        }
    }

    /// The authenticated identity the node will stamp.
    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    /// The producer's index.
    pub fn idx(&self) -> u32 {
        self.plan.idx
    }

    /// True when every record it generated has an answer.
    pub fn is_done(&self) -> bool {
        self.unresolved.is_empty()
    }

    /// Records without an answer yet.
    pub fn n_unresolved(&self) -> usize {
        self.unresolved.len()
    }

    /// True when another new request may be sent.
    pub fn may_send(&self) -> bool {
        self.in_flight.len() < self.plan.in_flight_max
    }

    /// Time until the next batch.
    pub fn next_interval(&mut self) -> Duration {
        let (low, high) = self.plan.interval_ms;
        Duration::from_millis(self.rng.random_range(low..=high))
    }

    /// The next batch: records waiting for a re-send first, then (when `generate`) new records,
    /// each registered in `history` before it is sent.
    pub fn next_batch(
        &mut self,
        generate: bool,
        wall: UnixMillis,
        history: &mut History,
    ) -> Option<Send> {
        let waiting = self
            .streams
            .iter()
            .find(|s| {
                self.sensors_of(s)
                    .iter()
                    .any(|i| !self.to_send[*i].is_empty())
            })
            .cloned();
        let stream = match waiting {
            Some(stream) => stream,
            None if generate => self.streams[self.rng.random_range(0..self.streams.len())].clone(),
            None => return None,
        };
        let sensors = self.sensors_of(&stream);
        let mut items = Vec::new();
        for &s in &sensors {
            while items.len() < BATCH_RECORDS_MAX {
                let Some(seq) = self.to_send[s].pop_first() else {
                    break;
                };
                items.push((s, seq));
            }
        }
        if generate {
            let target = self
                .rng
                .random_range(1..=BATCH_RECORDS_MAX)
                .max(items.len());
            while items.len() < target {
                let s = sensors[self.rng.random_range(0..sensors.len())];
                let run = self.rng.random_range(1..=10usize).min(target - items.len());
                for _ in 0..run {
                    let seq = self.new_record(s, &stream, wall, history);
                    items.push((s, seq));
                }
            }
        }
        if items.is_empty() {
            return None;
        }
        let records = items
            .iter()
            .filter_map(|k| self.unresolved.get(k).cloned())
            .collect::<Vec<_>>();
        assert_eq!(
            records.len(),
            items.len(),
            "{}: a record to send has no content",
            self.name
        );
        Some(self.send(
            Batch {
                stream,
                items,
                records,
                backoff: None,
            },
            Duration::ZERO,
        ))
    }

    fn sensors_of(&self, stream: &StreamName) -> Vec<usize> {
        self.plan
            .sensors
            .iter()
            .enumerate()
            .filter(|(_, (_, s))| s == stream)
            .map(|(i, _)| i)
            .collect()
    }

    fn new_record(
        &mut self,
        s: usize,
        stream: &StreamName,
        wall: UnixMillis,
        history: &mut History,
    ) -> u64 {
        let seq = self.next_seq[s];
        self.next_seq[s] += 1;
        let record = Record {
            sensor: self.plan.sensors[s].0.clone(),
            boot_epoch: self.epoch,
            seq,
            device_time: wall,
            payload: payload(&mut self.rng, seq),
        };
        history.register(&self.identity, stream, &record);
        self.unresolved.insert((s, seq), record);
        seq
    }

    fn send(&mut self, batch: Batch, backoff: Duration) -> Send {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let request = ProduceRequest {
            request_id,
            stream: batch.stream.clone(),
            records: batch.records.clone(),
        };
        self.in_flight.insert(request_id, batch);
        Send {
            request_id,
            request,
            backoff,
        }
    }

    /// The same records again, after the request's next [`Backoff`] wait.
    fn retry(&mut self, mut batch: Batch) -> Send {
        let rng = &mut self.rng;
        let backoff = batch
            .backoff
            .get_or_insert_with(|| {
                let seed = rng.random();
                Backoff::new(RETRY_INITIAL, RETRY_MAX, ChaCha8Rng::seed_from_u64(seed))
            })
            .next_delay();
        self.send(batch, backoff)
    }

    fn resolve(&mut self, key: (usize, u64)) {
        self.unresolved.remove(&key);
        self.to_send[key.0].remove(&key.1);
    }

    /// Handles the result of request `request_id` (`None`: lost or timed out). Returns the
    /// retry to send, if any.
    pub fn on_result(
        &mut self,
        request_id: u64,
        result: Option<Message>,
        now: Duration,
        history: &mut History,
    ) -> Result<Option<Send>, Violation> {
        let Some(batch) = self.in_flight.remove(&request_id) else {
            return Ok(None);
        };
        let response = match result {
            None => return Ok(Some(self.retry(batch))),
            Some(Message::ProduceResponse(response)) => response,
            Some(Message::Error(error)) => {
                well_formed_responses::check_error(&self.name, request_id, &error)?;
                return Ok(Some(self.retry(batch)));
            }
            Some(other) => {
                return Err(Violation::new(
                    "well_formed_responses",
                    format!(
                        "{}: request {request_id} answered with {:?}",
                        self.name,
                        other.kind()
                    ),
                ));
            }
        };
        well_formed_responses::check_envelope(
            &self.name,
            request_id,
            batch.items.len(),
            &response,
        )?;
        for ((item, record), outcome) in batch
            .items
            .iter()
            .zip(&batch.records)
            .zip(response.outcomes)
        {
            let key = record_key(&self.identity, record);
            match outcome {
                RecordOutcome::Appended {
                    partition,
                    offset,
                    duplicate,
                    ..
                } => {
                    history.on_appended(&key, partition, offset, duplicate, now)?;
                    self.resolve(*item);
                }
                RecordOutcome::Rejected(RecordRejection::DuplicateTooOld { .. }) => {
                    history.on_too_old(&key);
                    self.resolve(*item);
                }
                RecordOutcome::Rejected(rejection) => {
                    well_formed_responses::check_rejection(&self.name, request_id, &rejection)?;
                    if self.unresolved.contains_key(item) {
                        self.to_send[item.0].insert(item.1);
                    }
                }
            }
        }
        Ok(None)
    }
}

/// A short, stable description of a result for the trace (no free-text reasons, no actor ids).
pub fn summarize(result: &Option<Message>) -> String {
    match result {
        Some(message) => summarize_message(message),
        None => "lost".into(),
    }
}

/// A short, stable description of a response for the trace.
pub fn summarize_message(message: &Message) -> String {
    match message {
        Message::ProduceResponse(r) => {
            let mut out = String::new();
            for outcome in &r.outcomes {
                match outcome {
                    RecordOutcome::Appended {
                        partition,
                        offset,
                        duplicate,
                        ..
                    } => {
                        out.push_str(&format!(
                            "A{partition}:{offset}{} ",
                            if *duplicate { "d" } else { "" }
                        ));
                    }
                    RecordOutcome::Rejected(rejection) => {
                        out.push_str(&format!("R{} ", rejection_name(rejection)))
                    }
                }
            }
            out
        }
        Message::Error(e) => format!("E{:?}", e.code),
        other => format!("{:?}", other.kind()),
    }
}

fn rejection_name(rejection: &RecordRejection) -> &'static str {
    match rejection {
        RecordRejection::SequenceGap { .. } => "gap",
        RecordRejection::EpochStart { .. } => "epoch-start",
        RecordRejection::StaleEpoch { .. } => "stale-epoch",
        RecordRejection::DuplicateTooOld { .. } => "too-old",
        RecordRejection::Invalid { .. } => "invalid",
        RecordRejection::TooManyProducers { .. } => "too-many-producers",
        RecordRejection::Storage { .. } => "storage",
        RecordRejection::Overloaded { .. } => "overloaded",
        RecordRejection::Unavailable { .. } => "unavailable",
        RecordRejection::ProducerExpired { .. } => "producer-expired",
    }
}

type Results = mpsc::UnboundedSender<(u64, Option<Message>)>;

fn spawn_request(link: &Link, results: &Results, send: Send) {
    let (link, results) = (link.clone(), results.clone());
    tokio::spawn(async move {
        tokio::time::sleep(send.backoff).await;
        let call = link.call(Message::ProduceRequest(send.request));
        let result = tokio::time::timeout(REQUEST_TIMEOUT, call)
            .await
            .ok()
            .flatten();
        let _ = results.send((send.request_id, result));
    });
}

/// Runs a producer until it is told to stop, or — in the liveness phase — until every record
/// it generated has an answer.
pub async fn run_producer(
    world: Arc<World>,
    mut producer: Producer,
    link: Link,
    mut shutdown: watch::Receiver<bool>,
) {
    let (results_tx, mut results) = mpsc::unbounded_channel();
    let mut next_batch_at = world.clock.instant();
    loop {
        if world.phase() == Phase::Liveness && producer.is_done() {
            break;
        }
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            Some((request_id, result)) = results.recv() => {
                world.record("response", format!("p{} r{request_id} {}", producer.idx(), summarize(&result)));
                let outcome = producer.on_result(request_id, result, world.now(), &mut world.history());
                match outcome {
                    Ok(Some(send)) => spawn_request(&link, &results_tx, send),
                    Ok(None) => {}
                    Err(violation) => {
                        world.fail(violation);
                        break;
                    }
                }
            }
            () = tokio::time::sleep_until(next_batch_at) => {
                next_batch_at = world.clock.instant() + producer.next_interval();
                if producer.may_send() {
                    let generate = world.phase() == Phase::Safety;
                    let send = producer.next_batch(generate, world.clock.wall(), &mut world.history());
                    if let Some(send) = send {
                        spawn_request(&link, &results_tx, send);
                    }
                }
            }
        }
    }
}
