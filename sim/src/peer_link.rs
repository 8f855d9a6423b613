//! The simulated node-to-node network: a [`PeerTransport`] per simulated node over one
//! [`PeerNet`], on tokio's paused clock, with the same envelope check as the QUIC transport
//! ([`check_envelope`]) and the same queue semantics.
//!
//! - Every call draws its fate from the net's one seeded RNG, in call order: a delay each way
//!   (the pair's range, or the net's), whether the request or the response is lost, and whether
//!   the request is delivered a second time later (the copy's answer goes nowhere). Delays are
//!   drawn per message, so messages between two nodes overtake each other: that is the
//!   reordering.
//! - Partitions are the caller's: [`PeerNet::cut`] (both ways), [`PeerNet::cut_one_way`]
//!   (requests from `a` to `b` and responses from `a` to `b` are lost, the other direction
//!   delivers), [`PeerNet::flap`] (a pair cut and healed on a period), [`PeerNet::heal`]. A
//!   message is judged when it arrives: a cut made while it travels loses it.
//! - A lost request or response, a cut, or a detached target (a crashed node) leaves the call
//!   waiting until its timeout: [`PeerErrorKind::Timeout`], as over QUIC.
//! - Per sending node, peer and lane, `in_flight_max` calls travel at once and `queue_max` wait;
//!   a call beyond both fails at once with [`PeerErrorKind::Overloaded`]. Per receiving node,
//!   sender and lane, `in_flight_max` calls are served at once; beyond, the typed
//!   [`PeerRefusal::Overloaded`] goes back.
//!
//! Every delivery decision is appended to a trace ([`PeerNet::trace`]) stamped with simulated
//! time, so two runs of one seed can be compared. The cluster runs (`--nodes`, [`crate::cluster`])
//! use it; a node's process is [`PeerNet::detach`]ed when it crashes (its transport sends
//! nothing more) and may be [`PeerNet::pause`]d (its messages in and out are held, not lost).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sluice_proto::env::{
    check_envelope, BoxFuture, PeerError, PeerErrorKind, PeerHandler, PeerLane, PeerRefusal,
    PeerRequest, PeerTransport,
};
use sluice_proto::net::PeerLaneQueue;
use sluice_proto::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::env::SimClock;

/// Fault rates and bounds of a [`PeerNet`].
#[derive(Clone, Debug, PartialEq)]
pub struct PeerNetConfig {
    /// Probability that a request is lost.
    pub loss_request: f64,
    /// Probability that a response is lost.
    pub loss_response: f64,
    /// Probability that a request is delivered twice.
    pub duplicate: f64,
    /// One-way delay range of a message, in milliseconds, unless the pair has its own.
    pub delay_ms: (u64, u64),
    /// Per lane (control, bulk): calls in flight per sender, peer and lane, and served at once
    /// per receiver, sender and lane.
    pub in_flight_max: [u32; 2],
    /// Per lane: calls waiting for a place in flight.
    pub queue_max: [u32; 2],
    /// Per lane: the largest request body.
    pub message_bytes_max: [u32; 2],
}

impl Default for PeerNetConfig {
    fn default() -> Self {
        Self {
            loss_request: 0.0,
            loss_response: 0.0,
            duplicate: 0.0,
            delay_ms: (1, 5),
            in_flight_max: [64, 4],
            queue_max: [256, 64],
            message_bytes_max: [256 << 10, 8 << 20],
        }
    }
}

fn lane_idx(lane: PeerLane) -> usize {
    match lane {
        PeerLane::Control => 0,
        PeerLane::Bulk => 1,
    }
}

/// A pair cut and healed on a period, starting cut.
#[derive(Clone, Copy, Debug)]
struct Flap {
    start: Instant,
    down: Duration,
    up: Duration,
}

impl Flap {
    fn is_down(&self, now: Instant) -> bool {
        let period = (self.down + self.up).as_millis().max(1);
        let at = now.saturating_duration_since(self.start).as_millis() % period;
        at < self.down.as_millis()
    }
}

#[derive(Default)]
struct NetState {
    handlers: BTreeMap<NodeId, Arc<dyn PeerHandler>>,
    /// Directed cuts: messages from the first node to the second are lost.
    cuts: BTreeSet<(NodeId, NodeId)>,
    flaps: BTreeMap<(NodeId, NodeId), Flap>,
    delays: BTreeMap<(NodeId, NodeId), (u64, u64)>,
    /// Calls being served per (receiver, sender, lane).
    serving: BTreeMap<(NodeId, NodeId, usize), Arc<Semaphore>>,
    /// Each node's boot: bumped by [`PeerNet::detach`], so a crashed process's transport
    /// sends nothing more.
    boots: BTreeMap<NodeId, u64>,
    /// Paused nodes, with the end of their pause.
    paused: BTreeMap<NodeId, Instant>,
    /// No loss and no duplication (the faults healed).
    calm: bool,
}

impl NetState {
    fn boot(&self, id: NodeId) -> u64 {
        self.boots.get(&id).copied().unwrap_or(0)
    }

    fn pause_end(&self, id: NodeId, now: Instant) -> Option<Instant> {
        self.paused.get(&id).copied().filter(|end| *end > now)
    }

    fn is_cut(&self, from: NodeId, to: NodeId, now: Instant) -> bool {
        self.cuts.contains(&(from, to))
            || [(from, to), (to, from)]
                .iter()
                .any(|pair| self.flaps.get(pair).is_some_and(|f| f.is_down(now)))
    }
}

struct NetInner {
    cluster: String,
    config: PeerNetConfig,
    clock: Arc<SimClock>,
    start: Instant,
    rng: Mutex<ChaCha8Rng>,
    state: Mutex<NetState>,
    trace: Mutex<Vec<String>>,
}

/// What one call's messages meet, drawn when it starts.
#[derive(Clone, Copy, Debug)]
struct Fate {
    request_delay: Duration,
    request_lost: bool,
    duplicate_delay: Option<Duration>,
    response_delay: Duration,
    response_lost: bool,
}

impl NetInner {
    fn now(&self) -> Instant {
        self.clock.instant()
    }

    fn state(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn note(&self, event: String) {
        let at = self.now().saturating_duration_since(self.start).as_millis();
        self.trace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(format!("{at} {event}"));
    }

    fn fate(&self, from: NodeId, to: NodeId) -> Fate {
        let (forward, back) = {
            let state = self.state();
            let delay = |pair| state.delays.get(&pair).copied();
            (
                delay((from, to)).unwrap_or(self.config.delay_ms),
                delay((to, from)).unwrap_or(self.config.delay_ms),
            )
        };
        let calm = self.state().calm;
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        let c = &self.config;
        let mut draw = |(low, high): (u64, u64)| {
            Duration::from_millis(rng.random_range(low.min(high)..=high.max(low)))
        };
        let request_delay = draw(forward);
        let response_delay = draw(back);
        let duplicate_extra = draw(forward) * 4;
        let request_lost = rng.random_bool(c.loss_request) && !calm;
        let response_lost = rng.random_bool(c.loss_response) && !calm;
        let duplicate = rng.random_bool(c.duplicate) && !calm;
        Fate {
            request_delay,
            request_lost,
            duplicate_delay: duplicate.then_some(request_delay + duplicate_extra),
            response_delay,
            response_lost,
        }
    }

    /// The request arriving at `to` after `delay`: lost to a cut or a detached node (`None`),
    /// refused, or handled.
    async fn deliver(
        self: &Arc<Self>,
        from: NodeId,
        request: PeerRequest,
        delay: Duration,
        copy: bool,
    ) -> Option<Result<Vec<u8>, PeerRefusal>> {
        tokio::time::sleep(delay).await;
        let to = request.envelope.to;
        self.hold_while_paused(to).await;
        let lane = request.lane;
        let what = if copy { "copy" } else { "request" };
        let (handler, serving) = {
            let mut state = self.state();
            if state.is_cut(from, to, self.now()) {
                drop(state);
                self.note(format!("{from}->{to} {lane:?} {what} lost to a cut"));
                return None;
            }
            let Some(handler) = state.handlers.get(&to).cloned() else {
                drop(state);
                self.note(format!("{from}->{to} {lane:?} {what} lost: node down"));
                return None;
            };
            let in_flight = self.config.in_flight_max[lane_idx(lane)].max(1) as usize;
            let serving = state
                .serving
                .entry((to, from, lane_idx(lane)))
                .or_insert_with(|| Arc::new(Semaphore::new(in_flight)))
                .clone();
            (handler, serving)
        };
        if let Err(refusal) = check_envelope(&request.envelope, &self.cluster, to, from) {
            self.note(format!("{from}->{to} {lane:?} {what} refused: {refusal}"));
            return Some(Err(refusal));
        }
        let Ok(_serving) = serving.try_acquire_owned() else {
            self.note(format!("{from}->{to} {lane:?} {what} refused: overloaded"));
            return Some(Err(PeerRefusal::Overloaded));
        };
        self.note(format!("{from}->{to} {lane:?} {what} delivered"));
        Some(handler.handle(request).await)
    }
}

impl NetInner {
    /// Waits while `id` is paused: what it sends or receives meanwhile is held, not lost.
    async fn hold_while_paused(&self, id: NodeId) {
        loop {
            let end = self.state().pause_end(id, self.now());
            match end {
                Some(end) => tokio::time::sleep_until(end).await,
                None => return,
            }
        }
    }
}

/// The simulated network between the nodes of one world. Cheap to clone.
#[derive(Clone)]
pub struct PeerNet {
    inner: Arc<NetInner>,
}

impl PeerNet {
    /// A network for `cluster` with `config`'s faults, drawing every fate from `rng`, timed by
    /// the world's `clock` (flapping periods, trace stamps).
    pub fn new(
        cluster: &str,
        config: PeerNetConfig,
        clock: Arc<SimClock>,
        rng: ChaCha8Rng,
    ) -> Self {
        Self {
            inner: Arc::new(NetInner {
                cluster: cluster.to_owned(),
                config,
                start: clock.instant(),
                clock,
                rng: Mutex::new(rng),
                state: Mutex::new(NetState::default()),
                trace: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Puts node `id` on the network, answering with `handler`, and returns its transport.
    pub fn attach(&self, id: NodeId, handler: Arc<dyn PeerHandler>) -> SimPeerTransport {
        let transport = self.transport(id);
        self.register(id, handler);
        transport
    }

    /// The transport of node `id`'s current process, before it answers anything (a process
    /// that needs its transport to build its handler registers the handler after).
    pub fn transport(&self, id: NodeId) -> SimPeerTransport {
        SimPeerTransport {
            net: self.inner.clone(),
            local: id,
            boot: self.inner.state().boot(id),
            peers: Mutex::new(BTreeMap::new()),
            queues: Mutex::new(BTreeMap::new()),
        }
    }

    /// Node `id` answers with `handler` from now on.
    pub fn register(&self, id: NodeId, handler: Arc<dyn PeerHandler>) {
        self.inner.state().handlers.insert(id, handler);
    }

    /// Takes node `id` off the network (its process crashed or exited): requests to it are
    /// lost from now on, and its transports send nothing more (a call fails as closed).
    pub fn detach(&self, id: NodeId) {
        let mut state = self.inner.state();
        state.handlers.remove(&id);
        *state.boots.entry(id).or_insert(0) += 1;
    }

    /// Pauses node `id` for `length` (a stopped-the-world process): what it sends and what
    /// reaches it meanwhile is held and delivered when the pause ends.
    pub fn pause(&self, id: NodeId, length: Duration) {
        let end = self.inner.now() + length;
        self.inner.state().paused.insert(id, end);
        self.inner
            .note(format!("{id} paused for {} ms", length.as_millis()));
    }

    /// Waits until node `id` is not paused.
    pub async fn wait_unpaused(&self, id: NodeId) {
        self.inner.hold_while_paused(id).await;
    }

    /// Stops (`true`) or resumes (`false`) the configured loss and duplication; every call
    /// still draws its fate, so the draws after are the same either way.
    pub fn set_calm(&self, calm: bool) {
        self.inner.state().calm = calm;
    }

    /// Cuts `a` and `b` apart, both ways.
    pub fn cut(&self, a: NodeId, b: NodeId) {
        let mut state = self.inner.state();
        state.cuts.insert((a, b));
        state.cuts.insert((b, a));
    }

    /// Loses every message from `from` to `to` (requests and responses); the other way
    /// delivers.
    pub fn cut_one_way(&self, from: NodeId, to: NodeId) {
        self.inner.state().cuts.insert((from, to));
    }

    /// Cuts `a` and `b` apart for `down`, then joins them for `up`, and so on, starting now.
    pub fn flap(&self, a: NodeId, b: NodeId, down: Duration, up: Duration) {
        let flap = Flap {
            start: self.inner.now(),
            down,
            up,
        };
        self.inner.state().flaps.insert((a, b), flap);
    }

    /// Ends every cut, every flap and every pause.
    pub fn heal(&self) {
        let mut state = self.inner.state();
        state.cuts.clear();
        state.flaps.clear();
        state.paused.clear();
    }

    /// Ends every per-pair delay (back to the configured range).
    pub fn clear_delays(&self) {
        self.inner.state().delays.clear();
    }

    /// Sets the one-way delay range between `a` and `b` (both ways), in milliseconds.
    pub fn set_delay(&self, a: NodeId, b: NodeId, low_ms: u64, high_ms: u64) {
        let mut state = self.inner.state();
        state.delays.insert((a, b), (low_ms, high_ms));
        state.delays.insert((b, a), (low_ms, high_ms));
    }

    /// Every delivery decision so far, each stamped with simulated milliseconds since the
    /// network was made.
    pub fn trace(&self) -> Vec<String> {
        self.inner
            .trace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One simulated node's side of the [`PeerNet`].
pub struct SimPeerTransport {
    net: Arc<NetInner>,
    local: NodeId,
    boot: u64,
    peers: Mutex<BTreeMap<NodeId, String>>,
    queues: Mutex<BTreeMap<(NodeId, usize), Arc<PeerLaneQueue>>>,
}

impl SimPeerTransport {
    fn queue(&self, to: NodeId, lane: PeerLane) -> Arc<PeerLaneQueue> {
        let idx = lane_idx(lane);
        let config = &self.net.config;
        self.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((to, idx))
            .or_insert_with(|| {
                Arc::new(PeerLaneQueue::new(
                    config.in_flight_max[idx],
                    config.queue_max[idx],
                ))
            })
            .clone()
    }

    async fn call_inner(&self, request: PeerRequest) -> Result<Vec<u8>, PeerError> {
        let (from, to, lane) = (self.local, request.envelope.to, request.lane);
        let known = self
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&to);
        if !known || to == from {
            return Err(PeerError::new(
                PeerErrorKind::Unreachable,
                format!("node {to} is not in the address book of node {from}"),
            ));
        }
        let bound = self.net.config.message_bytes_max[lane_idx(lane)];
        if request.body.len() as u64 > u64::from(bound) {
            return Err(PeerError::new(
                PeerErrorKind::TooLarge,
                format!("request of {} bytes exceeds {bound}", request.body.len()),
            ));
        }
        self.net.hold_while_paused(from).await;
        if self.net.state().boot(from) != self.boot {
            return Err(PeerError::new(
                PeerErrorKind::Closed,
                format!("node {from}'s process is gone"),
            ));
        }
        let queue = self.queue(to, lane);
        let _place = queue.enter(to, lane).await?;
        let fate = self.net.fate(from, to);
        if let Some(delay) = fate.duplicate_delay {
            let (net, copy) = (self.net.clone(), request.clone());
            tokio::spawn(async move {
                let _ = net.deliver(from, copy, delay, true).await;
            });
        }
        if fate.request_lost {
            self.net.note(format!("{from}->{to} {lane:?} request lost"));
            return std::future::pending().await;
        }
        let Some(answer) = self
            .net
            .deliver(from, request, fate.request_delay, false)
            .await
        else {
            return std::future::pending().await;
        };
        tokio::time::sleep(fate.response_delay).await;
        self.net.hold_while_paused(from).await;
        let cut = self.net.state().is_cut(to, from, self.net.now());
        if fate.response_lost || cut {
            let why = if cut { "to a cut" } else { "" };
            self.net
                .note(format!("{to}->{from} {lane:?} response lost {why}"));
            return std::future::pending().await;
        }
        self.net
            .note(format!("{to}->{from} {lane:?} response delivered"));
        answer.map_err(|refusal| {
            PeerError::new(
                PeerErrorKind::Remote(refusal.clone()),
                format!("node {to} refused: {refusal}"),
            )
        })
    }
}

impl PeerTransport for SimPeerTransport {
    fn local(&self) -> NodeId {
        self.local
    }

    fn set_peers(&self, peers: BTreeMap<NodeId, String>) {
        *self.peers.lock().unwrap_or_else(PoisonError::into_inner) = peers;
    }

    fn call(
        &self,
        request: PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Vec<u8>, PeerError>> {
        Box::pin(async move {
            let (to, lane) = (request.envelope.to, request.lane);
            match tokio::time::timeout(timeout, self.call_inner(request)).await {
                Ok(result) => result,
                Err(_) => Err(PeerError::new(
                    PeerErrorKind::Timeout,
                    format!("{lane:?} call to node {to}: no answer within {timeout:?}"),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::env::{rng_for, PeerEnvelope, PeerGroup};
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::sync::watch;

    /// Answers `<id>:<body>`; holds calls while `held` is on; counts calls.
    struct Echo {
        id: NodeId,
        held: watch::Sender<bool>,
        n_calls: AtomicU32,
    }

    impl PeerHandler for Echo {
        fn handle(&self, request: PeerRequest) -> BoxFuture<'_, Result<Vec<u8>, PeerRefusal>> {
            Box::pin(async move {
                self.n_calls.fetch_add(1, Ordering::Relaxed);
                let mut held = self.held.subscribe();
                let _ = held.wait_for(|on| !*on).await;
                let mut answer = format!("{}:", self.id).into_bytes();
                answer.extend_from_slice(&request.body);
                Ok(answer)
            })
        }
    }

    struct Net {
        net: PeerNet,
        nodes: Vec<(Arc<Echo>, SimPeerTransport)>,
    }

    fn net(seed: u64, config: PeerNetConfig) -> Net {
        let clock = Arc::new(SimClock::new());
        let net = PeerNet::new("sim", config, clock, rng_for(seed, 0, 7));
        let book: BTreeMap<NodeId, String> =
            (1..=3).map(|id| (NodeId(id), format!("n{id}"))).collect();
        let nodes = (1..=3)
            .map(|id| {
                let echo = Arc::new(Echo {
                    id: NodeId(id),
                    held: watch::Sender::new(false),
                    n_calls: AtomicU32::new(0),
                });
                let transport = net.attach(NodeId(id), echo.clone());
                transport.set_peers(book.clone());
                (echo, transport)
            })
            .collect();
        Net { net, nodes }
    }

    fn request(from: u64, to: u64, lane: PeerLane, body: &[u8]) -> PeerRequest {
        PeerRequest {
            envelope: PeerEnvelope {
                cluster: "sim".into(),
                from: NodeId(from),
                to: NodeId(to),
                group: PeerGroup::Node,
                incarnation: 0,
            },
            lane,
            body: body.to_vec(),
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(1);

    impl Net {
        fn transport(&self, id: u64) -> &SimPeerTransport {
            &self.nodes[id as usize - 1].1
        }

        fn echo(&self, id: u64) -> &Echo {
            &self.nodes[id as usize - 1].0
        }

        async fn call(&self, from: u64, to: u64, lane: PeerLane) -> Result<Vec<u8>, PeerError> {
            self.transport(from)
                .call(request(from, to, lane, b"x"), TIMEOUT)
                .await
        }
    }

    /// Every pair calling each other on both lanes at once, many rounds; the trace.
    async fn busy_trace(seed: u64) -> (Vec<String>, Vec<String>) {
        let config = PeerNetConfig {
            loss_request: 0.1,
            loss_response: 0.1,
            duplicate: 0.2,
            delay_ms: (1, 40),
            ..PeerNetConfig::default()
        };
        let net = Arc::new(net(seed, config));
        let mut calls = tokio::task::JoinSet::new();
        for round in 0..20u64 {
            for (from, to) in [(1, 2), (2, 1), (1, 3), (3, 2)] {
                for lane in [PeerLane::Control, PeerLane::Bulk] {
                    let net = net.clone();
                    calls.spawn(async move {
                        tokio::time::sleep(Duration::from_millis(round * 3)).await;
                        let result = net.call(from, to, lane).await;
                        format!(
                            "{round} {from}->{to} {lane:?} {:?}",
                            result.map_err(|e| e.kind)
                        )
                    });
                }
            }
        }
        let mut results = Vec::new();
        while let Some(result) = calls.join_next().await {
            results.push(result.unwrap());
        }
        results.sort();
        (net.net.trace(), results)
    }

    // Checks that one seed gives one delivery trace (and one set of outcomes), that another
    // seed gives another, and that the faults happened: losses, copies, and overtaking.
    #[tokio::test(start_paused = true)]
    async fn same_seed_same_trace_other_seed_other_trace() {
        let (trace, results) = busy_trace(11).await;
        assert_eq!((trace.clone(), results.clone()), busy_trace(11).await);
        assert_ne!(trace, busy_trace(12).await.0);
        let text = trace.join("\n");
        assert!(text.contains("request lost"), "{text}");
        assert!(text.contains("copy delivered"), "{text}");
        assert!(results.iter().any(|r| r.contains("Timeout")), "{results:?}");
        assert!(results.iter().any(|r| r.contains("Ok")), "{results:?}");
    }

    // Checks that a symmetric cut loses calls both ways, a one-way cut loses requests one way
    // and responses (after handling) the other way, and heal restores both.
    #[tokio::test(start_paused = true)]
    async fn cuts_lose_messages_until_healed() {
        let n = net(1, PeerNetConfig::default());
        n.net.cut(NodeId(1), NodeId(2));
        for (from, to) in [(1, 2), (2, 1)] {
            let error = n.call(from, to, PeerLane::Control).await.unwrap_err();
            assert_eq!(error.kind, PeerErrorKind::Timeout);
        }
        assert_eq!(n.echo(1).n_calls.load(Ordering::Relaxed), 0);
        assert_eq!(n.echo(2).n_calls.load(Ordering::Relaxed), 0);
        assert_eq!(n.call(1, 3, PeerLane::Control).await.unwrap(), b"3:x");
        n.net.heal();
        n.net.cut_one_way(NodeId(1), NodeId(2));
        let error = n.call(1, 2, PeerLane::Control).await.unwrap_err();
        assert_eq!(error.kind, PeerErrorKind::Timeout);
        assert_eq!(n.echo(2).n_calls.load(Ordering::Relaxed), 0);
        let error = n.call(2, 1, PeerLane::Control).await.unwrap_err();
        assert_eq!(error.kind, PeerErrorKind::Timeout);
        assert_eq!(
            n.echo(1).n_calls.load(Ordering::Relaxed),
            1,
            "handled, answer lost"
        );
        n.net.heal();
        assert_eq!(n.call(1, 2, PeerLane::Bulk).await.unwrap(), b"2:x");
        assert_eq!(n.call(2, 1, PeerLane::Bulk).await.unwrap(), b"1:x");
    }

    // Checks that a flapping pair loses calls in its down phases and delivers them in its up
    // phases, and that per-pair delays apply in simulated time.
    #[tokio::test(start_paused = true)]
    async fn flapping_follows_its_period_and_delays_apply() {
        let n = net(2, PeerNetConfig::default());
        n.net.set_delay(NodeId(1), NodeId(2), 50, 50);
        let start = n.net.inner.now();
        assert_eq!(n.call(1, 2, PeerLane::Control).await.unwrap(), b"2:x");
        let took = n.net.inner.now().saturating_duration_since(start);
        assert_eq!(took, Duration::from_millis(100));
        n.net.set_delay(NodeId(1), NodeId(2), 0, 0);
        n.net.flap(
            NodeId(1),
            NodeId(2),
            Duration::from_secs(10),
            Duration::from_secs(10),
        );
        // 0 s: down.
        let error = n.call(1, 2, PeerLane::Control).await.unwrap_err();
        assert_eq!(error.kind, PeerErrorKind::Timeout);
        tokio::time::sleep(Duration::from_secs(10)).await;
        // 11 s: up.
        assert_eq!(n.call(2, 1, PeerLane::Control).await.unwrap(), b"1:x");
        tokio::time::sleep(Duration::from_secs(9)).await;
        // 20 s: down again.
        let error = n.call(2, 1, PeerLane::Control).await.unwrap_err();
        assert_eq!(error.kind, PeerErrorKind::Timeout);
    }

    // Checks that a pause holds messages instead of losing them (a call to a paused node is
    // answered once the pause ends, within its timeout), and that a detached node's old
    // transport sends nothing more while a new one works.
    #[tokio::test(start_paused = true)]
    async fn pauses_hold_messages_and_detach_closes_the_old_transport() {
        let n = net(5, PeerNetConfig::default());
        n.net.set_delay(NodeId(1), NodeId(2), 0, 0);
        n.net.pause(NodeId(2), Duration::from_millis(600));
        let start = n.net.inner.now();
        assert_eq!(n.call(1, 2, PeerLane::Control).await.unwrap(), b"2:x");
        let took = n.net.inner.now().saturating_duration_since(start);
        assert_eq!(took, Duration::from_millis(600));
        n.net.pause(NodeId(1), Duration::from_secs(5));
        let error = n.call(1, 3, PeerLane::Control).await.unwrap_err();
        assert_eq!(error.kind, PeerErrorKind::Timeout, "held past the timeout");
        n.net.heal();

        n.net.detach(NodeId(1));
        let error = n.call(1, 2, PeerLane::Control).await.unwrap_err();
        assert_eq!(error.kind, PeerErrorKind::Closed);
        let error = n.call(2, 1, PeerLane::Control).await.unwrap_err();
        assert_eq!(
            error.kind,
            PeerErrorKind::Timeout,
            "nobody answers for node 1"
        );
        let fresh = n.net.transport(NodeId(1));
        fresh.set_peers(n.transport(1).peers.lock().unwrap().clone());
        n.net.register(NodeId(1), n.nodes[0].0.clone());
        let answer = fresh
            .call(request(1, 2, PeerLane::Control, b"y"), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(answer, b"2:y");
        assert_eq!(n.call(2, 1, PeerLane::Control).await.unwrap(), b"1:x");
    }

    // Checks that the receiver runs the envelope check: another target, another sender or
    // another cluster is refused with the typed refusal and never reaches the handler.
    #[tokio::test(start_paused = true)]
    async fn envelopes_are_checked_at_the_receiver() {
        let n = net(3, PeerNetConfig::default());
        let mut forged = request(3, 2, PeerLane::Control, b"");
        let error = n
            .transport(1)
            .call(forged.clone(), TIMEOUT)
            .await
            .unwrap_err();
        assert!(
            matches!(
                error.kind,
                PeerErrorKind::Remote(PeerRefusal::WrongNode {
                    from: NodeId(3),
                    authenticated: NodeId(1),
                    ..
                })
            ),
            "{error}"
        );
        forged.envelope.from = NodeId(1);
        forged.envelope.cluster = "other".into();
        let error = n.transport(1).call(forged, TIMEOUT).await.unwrap_err();
        assert!(
            matches!(
                error.kind,
                PeerErrorKind::Remote(PeerRefusal::WrongCluster { .. })
            ),
            "{error}"
        );
        assert_eq!(n.echo(2).n_calls.load(Ordering::Relaxed), 0);
        let error = n.call(1, 9, PeerLane::Control).await.unwrap_err();
        assert_eq!(error.kind, PeerErrorKind::Unreachable);
    }

    // Checks that with every place in flight taken (held by the handler) and the queue full, a
    // call fails at once with Overloaded, and that the held and queued calls complete after.
    // The handler holds every lane, so this checks the bulk lane's queue alone.
    #[tokio::test(start_paused = true)]
    async fn full_queue_fails_at_once() {
        let config = PeerNetConfig {
            in_flight_max: [1, 1],
            queue_max: [1, 1],
            delay_ms: (0, 0),
            ..PeerNetConfig::default()
        };
        let n = Arc::new(net(4, config));
        n.echo(2).held.send_replace(true);
        let mut held = tokio::task::JoinSet::new();
        for _ in 0..2 {
            let n = n.clone();
            held.spawn(async move { n.call(1, 2, PeerLane::Bulk).await });
        }
        // Let both reach the queue (paused time: no timer fires while tasks can run).
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let error = n.call(1, 2, PeerLane::Bulk).await.unwrap_err();
        assert_eq!(error.kind, PeerErrorKind::Overloaded);
        n.echo(2).held.send_replace(false);
        while let Some(result) = held.join_next().await {
            assert_eq!(result.unwrap().unwrap(), b"2:x");
        }
    }
}
