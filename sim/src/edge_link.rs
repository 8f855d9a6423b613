//! The simulated uplink of an edge agent: a [`Transport`] (the trait the real QUIC transport
//! implements) whose connections reach the node currently serving by calling
//! `Service::handle` through the faulty [`Link`], stamping the edge's identity
//! (`sluice://sim/edge/e<idx>`).
//!
//! - `connect` takes a handshake's delay, and succeeds only while the edge's link is up, a live
//!   node serves and the handshake was not lost; otherwise it fails as `Unreachable` once the
//!   agent's connect deadline passed.
//! - A connection belongs to one node process and one stretch of link uptime: when that process
//!   dies or stops, or the link goes down, the connection breaks and every call on it (in flight
//!   or later) fails as `Closed`.
//! - `call` delays the request and the response, loses either (the call then fails as
//!   `Timeout` at the agent's request deadline), or delivers the request twice (the copy's
//!   answer goes nowhere). An error response is `Remote(code)`.
//!
//! It is also the checkers' observer of the edge: every record that reaches the node is noted in
//! the [`crate::history::History`] (with its content, checked on every resend), and every answer
//! that reaches the agent is noted there too, so the producers' invariants (integrity, acked
//! durability, retry offsets, convergence) cover edge records. Rejections and error responses
//! are checked only while the boot that sent them is alive: a dead agent is told nothing.
//!
//! The link's state (how many outages are holding it down, whether the liveness phase healed
//! it) is shared by the agent's transports and the edge's fault tasks.

use crate::history::record_key;
use crate::invariants::{well_formed_responses, Violation};
use crate::link::Link;
use crate::scenario::{EdgePlan, OWNER_EDGE_BASE, SALT_EDGE_LINK};
use crate::workload::producer::summarize_message;
use crate::world::{NodeSlot, World};
use sluice_proto::env::{
    rng_for, BoxFuture, Connection, Transport, TransportError, TransportErrorKind,
};
use sluice_proto::msg::{
    Durability, Message, ProduceRequest, ProduceResponse, RecordOutcome, RecordRejection,
};
use sluice_proto::{BootEpoch, Identity, Offset, PartitionId, Payload, Record, SensorId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// The state of an edge's link.
#[derive(Debug, Clone, Copy, Default)]
struct LinkState {
    /// Outages holding it down now.
    n_down: u32,
    /// The liveness phase healed it for good.
    healed: bool,
    /// Bumped each time it goes down: connections opened before are broken.
    generation: u64,
}

impl LinkState {
    fn is_up(&self) -> bool {
        self.healed || self.n_down == 0
    }
}

/// The planted bug's state: the sensor stream whose readings it swallows, and the seq of its
/// first reading sent (which reaches the node).
#[derive(Debug, Default)]
struct PlantState {
    victim: Option<(SensorId, BootEpoch, u64)>,
}

/// One edge's link to the cluster. Shared by its transports (one per boot) and fault tasks.
pub struct EdgeLink {
    world: Arc<World>,
    idx: u32,
    name: String,
    identity: Arc<Identity>,
    link: Link,
    state: watch::Sender<LinkState>,
    request_timeout: Duration,
    connect_timeout: Duration,
    plant: Option<Mutex<PlantState>>,
}

impl std::fmt::Debug for EdgeLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeLink")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl EdgeLink {
    /// The link of edge `plan`; with `plant`, edge 0's link swallows records (see
    /// [`crate::settings::Plant::EdgeAckUnstored`]).
    pub fn new(world: Arc<World>, plan: &EdgePlan, plant: bool) -> Arc<Self> {
        let identity = Arc::new(plan.identity());
        let rng = rng_for(
            world.seed,
            OWNER_EDGE_BASE + u64::from(plan.idx),
            SALT_EDGE_LINK,
        );
        let link = Link::new(world.clone(), identity.clone(), plan.link, rng);
        Arc::new(Self {
            world,
            idx: plan.idx,
            name: format!("edge e{}", plan.idx),
            identity,
            link,
            state: watch::channel(LinkState::default()).0,
            request_timeout: Duration::from_millis(plan.uplink.request_timeout_ms),
            connect_timeout: Duration::from_millis(plan.uplink.connect_timeout_ms),
            plant: (plant && plan.idx == 0).then(|| Mutex::new(PlantState::default())),
        })
    }

    /// True while the link is up.
    pub fn is_up(&self) -> bool {
        self.state.borrow().is_up()
    }

    /// One more outage holds the link down (connections break when it goes down).
    pub fn down(&self) {
        let mut went_down = false;
        self.state.send_modify(|s| {
            if s.is_up() && !s.healed {
                s.generation += 1;
                went_down = true;
            }
            s.n_down += 1;
        });
        if went_down {
            self.world
                .record("edge-link", format!("e{} down", self.idx));
        }
    }

    /// An outage ended.
    pub fn up(&self) {
        let mut went_up = false;
        self.state.send_modify(|s| {
            let was_up = s.is_up();
            s.n_down = s.n_down.saturating_sub(1);
            went_up = !was_up && s.is_up();
        });
        if went_up {
            self.world.record("edge-link", format!("e{} up", self.idx));
        }
    }

    /// The liveness phase: the link stays up from now on.
    pub fn heal(&self) {
        self.state
            .send_if_modified(|s| !std::mem::replace(&mut s.healed, true));
    }

    /// A transport for one boot of the agent; `alive` is cleared when that boot ends.
    pub fn transport(self: &Arc<Self>, alive: Arc<AtomicBool>) -> Arc<dyn Transport> {
        Arc::new(EdgeTransport {
            link: self.clone(),
            alive,
        })
    }

    fn error(&self, kind: TransportErrorKind, what: &str) -> TransportError {
        TransportError::new(kind, format!("{}: {what}", self.name))
    }

    /// Splits a request into what reaches the node and the positions the planted bug swallows.
    fn plant_split(&self, request: &ProduceRequest) -> (ProduceRequest, Vec<usize>) {
        let Some(plant) = &self.plant else {
            return (request.clone(), Vec::new());
        };
        let mut state = plant.lock().unwrap_or_else(PoisonError::into_inner);
        let mut forward = ProduceRequest {
            request_id: request.request_id,
            stream: request.stream.clone(),
            records: Vec::with_capacity(request.records.len()),
        };
        let mut swallowed = Vec::new();
        for (idx, record) in request.records.iter().enumerate() {
            // The victim is the sensor stream of the first reading sent (a declaration may be
            // all that is left of an epoch); its records after that first one are swallowed.
            let is_reading = !matches!(record.payload, Payload::Dropped { .. });
            if state.victim.is_none() && is_reading {
                state.victim = Some((record.sensor.clone(), record.boot_epoch, record.seq));
            }
            let swallow = state.victim.as_ref().is_some_and(|(sensor, epoch, first)| {
                *sensor == record.sensor && *epoch == record.boot_epoch && record.seq > *first
            });
            if swallow {
                swallowed.push(idx);
            } else {
                forward.records.push(record.clone());
            }
        }
        (forward, swallowed)
    }

    /// Notes the records reaching the node; fails on a resend whose content changed.
    fn register(&self, request: &ProduceRequest) -> Result<(), Violation> {
        let mut history = self.world.history();
        for record in &request.records {
            history.register_resend(&self.identity, &request.stream, record)?;
        }
        Ok(())
    }

    /// Notes in the ledger that the node refused `record`'s epoch as forgotten (what lets the
    /// agent move its sensor to a newer epoch and declare the old one's seqs closed).
    fn note_expired(&self, record: &Record) {
        let mut ledger = self.world.edges();
        if let Some(edge) = ledger.edges.iter_mut().find(|e| e.idx == self.idx) {
            edge.expired_answers
                .insert((record.sensor.clone(), record.boot_epoch));
        }
    }

    /// Notes the answer the agent receives for `request` (what reached the node of it).
    fn observe(
        &self,
        request: &ProduceRequest,
        response: &Message,
        alive: bool,
    ) -> Result<(), Violation> {
        self.world.record(
            "edge-response",
            format!("e{} {}", self.idx, summarize_message(response)),
        );
        if tracing::enabled!(tracing::Level::DEBUG) {
            let records: Vec<String> = request
                .records
                .iter()
                .map(|r| format!("{}@{}:{}..={}", r.sensor, r.boot_epoch, r.seq, r.seq_last()))
                .collect();
            tracing::debug!(
                edge = self.idx,
                alive,
                records = ?records,
                response = %summarize_message(response),
                "edge request answered"
            );
        }
        let id = request.request_id;
        match response {
            Message::ProduceResponse(r) => {
                well_formed_responses::check_envelope(&self.name, id, request.records.len(), r)?;
                let now = self.world.now();
                let mut history = self.world.history();
                for (record, outcome) in request.records.iter().zip(&r.outcomes) {
                    let key = record_key(&self.identity, record);
                    match outcome {
                        RecordOutcome::Appended {
                            partition,
                            offset,
                            duplicate,
                            ..
                        } => {
                            history.on_edge_appended(&key, *partition, *offset, *duplicate, now)?
                        }
                        RecordOutcome::Rejected(RecordRejection::DuplicateTooOld { .. }) => {
                            history.on_edge_too_old(&key)
                        }
                        RecordOutcome::Rejected(rejection) if alive => {
                            if matches!(
                                rejection,
                                RecordRejection::ProducerExpired { .. }
                                    | RecordRejection::EpochStart { .. }
                            ) {
                                self.note_expired(record);
                            }
                            well_formed_responses::check_edge_rejection(&self.name, id, rejection)?
                        }
                        RecordOutcome::Rejected(_) => {}
                    }
                }
                Ok(())
            }
            Message::Error(error) if alive => {
                well_formed_responses::check_error(&self.name, id, error)
            }
            Message::Error(_) => Ok(()),
            other => Err(Violation::new(
                "well_formed_responses",
                format!(
                    "{}: produce request answered with {:?}",
                    self.name,
                    other.kind()
                ),
            )),
        }
    }
}

/// The planted bug's answer: the node's outcomes, with "appended" for every swallowed record.
fn plant_merge(response: Message, swallowed: &[usize], n_records: usize) -> Message {
    if swallowed.is_empty() {
        return response;
    }
    let Message::ProduceResponse(real) = response else {
        return response;
    };
    let mut real_outcomes = real.outcomes.into_iter();
    let outcomes = (0..n_records)
        .filter_map(|idx| {
            if swallowed.contains(&idx) {
                Some(RecordOutcome::Appended {
                    partition: PartitionId(0),
                    offset: Offset(u64::MAX),
                    durability: Durability::LeaderFsync,
                    duplicate: false,
                })
            } else {
                real_outcomes.next()
            }
        })
        .collect();
    Message::ProduceResponse(ProduceResponse {
        request_id: real.request_id,
        outcomes,
    })
}

/// The transport of one boot of an edge agent.
struct EdgeTransport {
    link: Arc<EdgeLink>,
    alive: Arc<AtomicBool>,
}

impl Transport for EdgeTransport {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Connection>, TransportError>> {
        Box::pin(async move {
            let link = &self.link;
            let fate = link.link.fate();
            let handshake = fate.request_delay + fate.response_delay;
            tokio::time::sleep(handshake).await;
            let generation = link.state.borrow().generation;
            let slot = link.world.node().filter(|s| link.world.is_alive(s));
            match slot {
                Some(slot) if link.is_up() && !fate.drop_request && !fate.drop_response => {
                    link.world
                        .record("edge-connect", format!("e{} ok", link.idx));
                    Ok(Arc::new(EdgeConnection {
                        link: link.clone(),
                        slot,
                        generation,
                        alive: self.alive.clone(),
                    }) as Arc<dyn Connection>)
                }
                _ => {
                    tokio::time::sleep(link.connect_timeout.saturating_sub(handshake)).await;
                    link.world
                        .record("edge-connect", format!("e{} failed", link.idx));
                    Err(link.error(
                        TransportErrorKind::Unreachable,
                        "no node answered the handshake in time",
                    ))
                }
            }
        })
    }
}

/// One connection of an edge agent to one node process.
struct EdgeConnection {
    link: Arc<EdgeLink>,
    slot: NodeSlot,
    generation: u64,
    alive: Arc<AtomicBool>,
}

impl EdgeConnection {
    /// True once the node process died or stopped serving, or the link went down since.
    fn is_broken(&self) -> bool {
        let world = &self.link.world;
        let state = *self.link.state.borrow();
        let serving = world
            .node()
            .is_some_and(|n| Arc::ptr_eq(&n.service, &self.slot.service));
        state.generation != self.generation
            || !state.is_up()
            || !serving
            || !world.is_alive(&self.slot)
    }

    /// Resolves once the connection is broken.
    async fn broken(&self) {
        let mut node_changes = self.link.world.subscribe_node();
        let mut link_changes = self.link.state.subscribe();
        loop {
            if self.is_broken() {
                return;
            }
            let changed = tokio::select! {
                biased;
                r = node_changes.changed() => r.is_ok(),
                r = link_changes.changed() => r.is_ok(),
            };
            if !changed {
                // A sender is gone: the run is ending; nothing will change any more.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Carries one request through the link; pending forever when it or its answer is lost
    /// (the caller's deadline turns that into a timeout).
    async fn exchange(&self, request: Message) -> Result<Message, TransportError> {
        let link = &self.link;
        let fate = link.link.fate();
        tokio::time::sleep(fate.request_delay).await;
        if fate.drop_request {
            return std::future::pending().await;
        }
        let Message::ProduceRequest(request) = request else {
            return Err(link.error(
                TransportErrorKind::Protocol,
                "the simulated uplink carries produce requests only",
            ));
        };
        let (forward, swallowed) = link.plant_split(&request);
        if let Err(violation) = link.register(&forward) {
            link.world.fail(violation);
            return std::future::pending().await;
        }
        if let Some(delay) = fate.duplicate_delay.filter(|_| !forward.records.is_empty()) {
            let (service, identity, copy) = (
                self.slot.service.clone(),
                link.identity.clone(),
                forward.clone(),
            );
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                // The copy's answer goes nowhere: the agent waits for one response only.
                let _ = service
                    .handle(identity, Message::ProduceRequest(copy))
                    .await;
            });
        }
        let response = if forward.records.is_empty() {
            Message::ProduceResponse(ProduceResponse {
                request_id: forward.request_id,
                outcomes: Vec::new(),
            })
        } else {
            let message = Message::ProduceRequest(forward.clone());
            self.slot
                .service
                .handle(link.identity.clone(), message)
                .await
        };
        if !link.world.is_alive(&self.slot) {
            // A dead process answers nothing; `broken` ends the call.
            return std::future::pending().await;
        }
        tokio::time::sleep(fate.response_delay).await;
        if fate.drop_response {
            return std::future::pending().await;
        }
        if let Err(violation) =
            link.observe(&forward, &response, self.alive.load(Ordering::Relaxed))
        {
            link.world.fail(violation);
        }
        match plant_merge(response, &swallowed, request.records.len()) {
            Message::Error(error) => Err(TransportError::new(
                TransportErrorKind::Remote(error.code),
                format!("{}: {}", link.name, error.message),
            )),
            other => Ok(other),
        }
    }
}

impl Connection for EdgeConnection {
    fn call(&self, request: Message) -> BoxFuture<'_, Result<Message, TransportError>> {
        Box::pin(async move {
            let closed = || {
                self.link.error(
                    TransportErrorKind::Closed,
                    "connection lost (node gone or link down)",
                )
            };
            if self.is_broken() {
                return Err(closed());
            }
            let deadline = self.link.request_timeout;
            tokio::select! {
                biased;
                () = self.broken() => Err(closed()),
                result = tokio::time::timeout(deadline, self.exchange(request)) => {
                    result.unwrap_or_else(|_| {
                        Err(self.link.error(TransportErrorKind::Timeout, "no response within the request deadline"))
                    })
                }
            }
        })
    }

    fn peer(&self) -> String {
        format!("sluice://{}/node/1", crate::scenario::CLUSTER)
    }
}
