//! [`QuicPeerTransport`]: the real [`PeerTransport`], node to node over QUIC + mutual TLS.
//!
//! **One listener.** Peers connect to the same endpoint as clients, under ALPN
//! [`crate::PEER_ALPN`]; [`super::server::serve_with_peers`] hands every connection of that
//! protocol to [`PeerAcceptor::accept`] once its handshake is done. On it only the certificate
//! `sluice://<our cluster>/node/<id>` issued by our CA is admitted, for a node in the address book
//! other than ourselves: another CA fails the handshake, an edge or admin certificate, another
//! cluster or an unknown node is closed with a `CLOSE_*` code and a reason that is logged at
//! `warn`. A node dialing a peer requires, during the handshake, the certificate of the node id
//! the address book names at that address, so it never shows its own certificate to another.
//!
//! **One connection per node pair, dialed by the lower id.** Of two nodes, the one with the lower
//! id dials (at once when the peer enters its address book, and again with [`Backoff`] after a
//! failure), so simultaneous dials cannot happen and need no tie-break. The higher one never
//! dials to use the connection: while it has none, it *nudges*: after a backoff delay it opens a
//! connection that the lower node authenticates, closes with [`super::CLOSE_PEER_LOWER_DIALS`]
//! and answers by dialing afresh. That covers a lower node still holding a connection that died
//! silently (the higher one restarted: its stateless resets do not match), which it would
//! otherwise notice only at the idle timeout. A newer connection from the lower id replaces the
//! older one on both sides; the older stops taking calls and is closed once the calls on it in
//! either direction have finished.
//!
//! **Lanes.** Every call is one bidirectional stream: the request frame, then the reply frame.
//! The lane is the request's frame kind ([`Kind::PeerControlCall`], [`Kind::PeerBulkCall`]), so
//! the receiver knows the lane's bound from the 12-byte header before it reads the body. Per peer
//! and lane the sender has `*_in_flight_max` calls on the wire and `*_queue_max` waiting for one
//! of those places (or for the connection); a call beyond both fails at once with
//! [`PeerErrorKind::Overloaded`]. Control streams are sent at a higher priority than bulk ones.
//! The receiver never waits to read: a request beyond the lane's in-flight bound on that
//! connection, or whose bytes do not fit the lane's node-wide budget (`*_held_bytes_max`, a
//! [`Held`] reservation), is answered [`PeerRefusal::Overloaded`] without its body being read. So
//! unread bulk data never sits in the connection's flow-control window, and a vote cannot wait
//! behind a segment transfer. Each request's envelope is checked by [`check_envelope`] against
//! the node id the certificate authenticated before the [`PeerHandler`] sees it, and refusals go
//! back as typed [`PeerRefusal`]s in a [`PeerReply`].
//!
//! All nodes of a cluster are expected to run with the same [`PeerLimits`]: the QUIC stream
//! limit each side grants is `control_in_flight_max + bulk_in_flight_max`.
//!
//! What this module does not do: retry a call (its outcome is unknown after a timeout or a lost
//! connection; raft resends), coalesce heartbeats (the caller sends one call per node pair on
//! [`PeerGroup::Node`](crate::env::PeerGroup::Node)), or throttle bulk bytes per second.

use super::client::host_of;
use super::io::{encode_frame_into, read_body, read_header, write_error};
use super::server::{permits, Budget, BytePools, Held};
use super::tls::{connection_identity, peer_client_config, transport, TlsMaterial};
use super::{
    connection_error, describe_connection_error, NetError, ServerGauges, CLOSE_BAD_IDENTITY,
    CLOSE_PEER_LOWER_DIALS, CLOSE_PEER_REMOVED, CLOSE_PEER_REPLACED, CLOSE_PEER_UNKNOWN,
    CLOSE_ROLE_NOT_ALLOWED, CLOSE_WRONG_CLUSTER, STREAM_FRAME_ERROR,
};
use crate::backoff::Backoff;
use crate::env::{
    check_envelope, rng_for, BoxFuture, PeerError, PeerErrorKind, PeerHandler, PeerLane,
    PeerRefusal, PeerRequest, PeerTransport,
};
use crate::frame::{FrameHeader, Kind, HEADER_LEN};
use crate::ids::{NodeId, Role};
use crate::msg::{Message, PeerAnswer, PeerCall, PeerReply};
use crate::PEER_ALPN;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, info_span, trace, warn, Instrument};

/// Salt of the reconnect backoff's RNG (`rng_for(seed, local, SALT ^ peer)`).
const SALT_PEER_BACKOFF: u64 = 0x7065_6572_6261_636b;

/// Bytes a peer frame's body may hold beyond the caller's message: request id, envelope (cluster
/// name, ids, group with its stream name, incarnation) and length prefixes.
pub const PEER_FRAME_OVERHEAD_BYTES: u32 = 1024;

/// The longest refusal text sent back for a handler's refusal; longer texts are cut.
const REFUSAL_TEXT_BYTES_MAX: usize = 512;

/// Bounds of the peer transport, per peer and lane unless said otherwise. Every node of a
/// cluster should use the same values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerLimits {
    /// Control calls on the wire at once to one peer (and served at once from one peer).
    pub control_in_flight_max: u32,
    /// Control calls waiting for a place in flight (or for the connection); beyond, a call
    /// fails at once with `Overloaded`.
    pub control_queue_max: u32,
    /// Largest body of a control request or response, in bytes.
    pub control_message_bytes_max: u32,
    /// Bytes of control requests being read or handled and of answers not yet sent, node-wide.
    pub control_held_bytes_max: u64,
    /// Bulk calls on the wire at once to one peer (and served at once from one peer).
    pub bulk_in_flight_max: u32,
    /// Bulk calls waiting for a place in flight (or for the connection).
    pub bulk_queue_max: u32,
    /// Largest body of a bulk request or response, in bytes.
    pub bulk_message_bytes_max: u32,
    /// Bytes of bulk requests being read or handled and of answers not yet sent, node-wide.
    pub bulk_held_bytes_max: u64,
    /// A begun frame (header, then body) must arrive within this long.
    pub frame_timeout_ms: u64,
    /// Deadline of one dial (resolution and handshake).
    pub connect_timeout_ms: u64,
    /// A connection silent for this long is closed (keep-alives are sent at a third of it).
    pub idle_timeout_ms: u64,
    /// First wait before dialing again after a failure (and before a nudge).
    pub reconnect_initial_ms: u64,
    /// Longest wait between dials.
    pub reconnect_max_ms: u64,
}

impl Default for PeerLimits {
    fn default() -> Self {
        Self {
            control_in_flight_max: 64,
            control_queue_max: 256,
            control_message_bytes_max: 256 << 10,
            control_held_bytes_max: 64 << 20,
            bulk_in_flight_max: 4,
            bulk_queue_max: 64,
            bulk_message_bytes_max: 8 << 20,
            bulk_held_bytes_max: 256 << 20,
            frame_timeout_ms: 10_000,
            connect_timeout_ms: 5_000,
            idle_timeout_ms: 10_000,
            reconnect_initial_ms: 100,
            reconnect_max_ms: 5_000,
        }
    }
}

/// The bounds of one lane.
#[derive(Clone, Copy, Debug)]
struct LaneLimits {
    in_flight_max: u32,
    queue_max: u32,
    message_bytes_max: u32,
    held_bytes_max: u64,
}

impl LaneLimits {
    /// The largest frame body of this lane: the message plus the envelope.
    fn frame_bytes_max(&self) -> u32 {
        self.message_bytes_max
            .saturating_add(PEER_FRAME_OVERHEAD_BYTES)
    }
}

impl PeerLimits {
    fn lane(&self, lane: PeerLane) -> LaneLimits {
        match lane {
            PeerLane::Control => LaneLimits {
                in_flight_max: self.control_in_flight_max,
                queue_max: self.control_queue_max,
                message_bytes_max: self.control_message_bytes_max,
                held_bytes_max: self.control_held_bytes_max,
            },
            PeerLane::Bulk => LaneLimits {
                in_flight_max: self.bulk_in_flight_max,
                queue_max: self.bulk_queue_max,
                message_bytes_max: self.bulk_message_bytes_max,
                held_bytes_max: self.bulk_held_bytes_max,
            },
        }
    }

    /// Every problem with these limits (empty when usable).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let decode_max = crate::codec::DECODE_BYTES_MAX as u64;
        for (name, lane) in [("control", PeerLane::Control), ("bulk", PeerLane::Bulk)] {
            let l = self.lane(lane);
            if l.in_flight_max == 0 {
                problems.push(format!("{name}_in_flight_max must be at least 1"));
            }
            let frame = u64::from(l.frame_bytes_max()) + HEADER_LEN as u64;
            if frame > decode_max {
                problems.push(format!(
                    "{name}_message_bytes_max = {} does not fit a decodable frame ({} bytes \
                     with the envelope, the codec decodes at most {decode_max})",
                    l.message_bytes_max, frame
                ));
            }
            if l.held_bytes_max < frame {
                problems.push(format!(
                    "{name}_held_bytes_max = {} is below one {name} frame ({frame} bytes)",
                    l.held_bytes_max
                ));
            }
        }
        if self
            .control_in_flight_max
            .saturating_add(self.bulk_in_flight_max)
            > 1 << 16
        {
            problems.push("control_in_flight_max + bulk_in_flight_max exceeds 65536".to_owned());
        }
        if self.connect_timeout_ms == 0 || self.frame_timeout_ms == 0 {
            problems.push("connect_timeout_ms and frame_timeout_ms must be above 0".to_owned());
        }
        problems
    }
}

fn lane_idx(lane: PeerLane) -> usize {
    match lane {
        PeerLane::Control => 0,
        PeerLane::Bulk => 1,
    }
}

const LANES: [PeerLane; 2] = [PeerLane::Control, PeerLane::Bulk];

/// True if the connection negotiated the peer protocol.
pub(crate) fn is_peer_protocol(connection: &quinn::Connection) -> bool {
    connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
        .is_some_and(|protocol| protocol == PEER_ALPN)
}

/// The node id of a node identity's name: canonical decimal (no sign, no leading zero), so two
/// spellings never name one node.
pub fn node_id_of(name: &str) -> Option<NodeId> {
    let canonical = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_digit())
        && (name == "0" || !name.starts_with('0'));
    canonical
        .then(|| name.parse::<u64>().ok().map(NodeId))
        .flatten()
}

/// One lane's sending queue to one peer: `in_flight_max` places in flight and at most
/// `queue_max` calls waiting for one. The one implementation of the peer queue bound: the QUIC
/// transport and the simulator's peer link both use it.
pub struct PeerLaneQueue {
    in_flight: Arc<Semaphore>,
    waiting: AtomicU32,
    in_flight_max: u32,
    queue_max: u32,
}

/// Counts a call waiting for a place until it leaves the wait, however it leaves.
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PeerLaneQueue {
    /// A queue with `in_flight_max` places (at least one) and room for `queue_max` waiting.
    pub fn new(in_flight_max: u32, queue_max: u32) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(in_flight_max.max(1) as usize)),
            waiting: AtomicU32::new(0),
            in_flight_max,
            queue_max,
        }
    }

    /// Takes a place in flight, waiting for one if fewer than `queue_max` calls wait already;
    /// otherwise fails at once with [`PeerErrorKind::Overloaded`]. The decision is made on the
    /// first poll, before any await.
    pub async fn enter(
        &self,
        peer: NodeId,
        lane: PeerLane,
    ) -> Result<OwnedSemaphorePermit, PeerError> {
        let closed = || PeerError::new(PeerErrorKind::Closed, "peer transport closed");
        if let Ok(permit) = self.in_flight.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let n = self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        if n >= self.queue_max {
            return Err(PeerError::new(
                PeerErrorKind::Overloaded,
                format!(
                    "queue to node {peer} on the {lane:?} lane is full ({} in flight, {} waiting)",
                    self.in_flight_max, self.queue_max
                ),
            ));
        }
        self.in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed())
    }
}

/// A lane's queue to one peer and the limits of its messages.
struct LaneQueue {
    queue: PeerLaneQueue,
    limits: LaneLimits,
}

impl LaneQueue {
    fn new(limits: LaneLimits) -> Self {
        Self {
            queue: PeerLaneQueue::new(limits.in_flight_max, limits.queue_max),
            limits,
        }
    }

    async fn enter(&self, peer: NodeId, lane: PeerLane) -> Result<OwnedSemaphorePermit, PeerError> {
        self.queue.enter(peer, lane).await
    }
}

/// One established connection to a peer, whichever side dialed it.
struct PeerConnection {
    connection: quinn::Connection,
    /// Calls on it now, in both directions; a retired connection closes when this reaches 0.
    active: AtomicUsize,
    retired: AtomicBool,
    /// Requests of each lane being served from this connection.
    serving: [Arc<Semaphore>; 2],
    /// This connection's share of each lane's byte budget.
    bytes: [Arc<Semaphore>; 2],
}

impl PeerConnection {
    fn new(connection: quinn::Connection, limits: &PeerLimits) -> Arc<Self> {
        let lane = |lane| limits.lane(lane);
        let serving = LANES.map(|l| Arc::new(Semaphore::new(lane(l).in_flight_max as usize)));
        let bytes = LANES.map(|l| {
            let frame = u64::from(lane(l).frame_bytes_max()) + HEADER_LEN as u64;
            Arc::new(Semaphore::new(permits(
                frame.saturating_mul(u64::from(lane(l).in_flight_max)),
            )))
        });
        Arc::new(Self {
            connection,
            active: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            serving,
            bytes,
        })
    }

    fn same(&self, other: &PeerConnection) -> bool {
        self.connection.stable_id() == other.connection.stable_id()
    }

    /// Marks one call on the connection until the guard drops.
    fn begin(self: &Arc<Self>) -> ActiveCall {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveCall(self.clone())
    }

    /// Stops new calls from choosing it; closes it now if idle, else after its last call.
    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        if self.active.load(Ordering::Acquire) == 0 {
            self.close(CLOSE_PEER_REPLACED, "replaced by a newer connection");
        }
    }

    fn close(&self, code: u32, reason: &str) {
        self.connection
            .close(quinn::VarInt::from_u32(code), reason.as_bytes());
    }
}

/// One call on a connection; the last one on a retired connection closes it.
struct ActiveCall(Arc<PeerConnection>);

impl Drop for ActiveCall {
    fn drop(&mut self) {
        let left = self.0.active.fetch_sub(1, Ordering::AcqRel) - 1;
        if left == 0 && self.0.retired.load(Ordering::Acquire) {
            self.0
                .close(CLOSE_PEER_REPLACED, "replaced by a newer connection");
        }
    }
}

/// What a link has now: the connection calls use, or why there is none.
#[derive(Clone, Default)]
struct LinkState {
    connection: Option<Arc<PeerConnection>>,
    /// The last dial's (or nudge's) failure, until a connection is established.
    failure: Option<PeerError>,
    removed: bool,
}

/// Everything about one peer in the address book.
struct PeerLink {
    id: NodeId,
    addr: String,
    lanes: [LaneQueue; 2],
    state: watch::Sender<LinkState>,
    /// Woken by a nudge from the peer: dial afresh.
    redial: Notify,
}

impl PeerLink {
    /// The connection to use, waiting for one; fails at once with the last dial failure.
    async fn connection(&self) -> Result<Arc<PeerConnection>, PeerError> {
        let mut state = self.state.subscribe();
        loop {
            {
                let now = state.borrow_and_update();
                if now.removed {
                    return Err(not_in_book(self.id));
                }
                if let Some(connection) = &now.connection {
                    return Ok(connection.clone());
                }
                if let Some(failure) = &now.failure {
                    return Err(failure.clone());
                }
            }
            if state.changed().await.is_err() {
                return Err(not_in_book(self.id));
            }
        }
    }

    /// Makes `connection` the one calls use; the one before is retired.
    fn adopt(&self, connection: Arc<PeerConnection>) {
        let mut old = None;
        self.state.send_modify(|state| {
            old = state.connection.replace(connection);
            state.failure = None;
        });
        if let Some(old) = old {
            debug!(peer_id = %self.id, "connection replaced by a newer one");
            old.retire();
        }
    }

    /// Forgets `connection` if it is the current one (it ended).
    fn forget(&self, connection: &PeerConnection) {
        self.state.send_if_modified(|state| {
            let current = state
                .connection
                .as_ref()
                .is_some_and(|c| c.same(connection));
            if current {
                state.connection = None;
            }
            current
        });
    }

    fn fail(&self, error: PeerError) {
        self.state.send_if_modified(|state| {
            if state.connection.is_some() {
                return false;
            }
            state.failure = Some(error);
            true
        });
    }

    fn remove(&self, local: NodeId) {
        let mut old = None;
        self.state.send_modify(|state| {
            state.removed = true;
            old = state.connection.take();
        });
        if let Some(old) = old {
            let reason = format!(
                "node {} removed from the address book of node {local}",
                self.id
            );
            old.close(CLOSE_PEER_REMOVED, &reason);
        }
    }

    fn removed(&self) -> bool {
        self.state.borrow().removed
    }
}

fn not_in_book(peer: NodeId) -> PeerError {
    PeerError::new(
        PeerErrorKind::Unreachable,
        format!("node {peer} is not in the address book"),
    )
}

/// What the transport and its acceptor share.
struct Inner {
    local: NodeId,
    cluster: String,
    endpoint: quinn::Endpoint,
    material: TlsMaterial,
    limits: PeerLimits,
    handler: Arc<dyn PeerHandler>,
    links: Mutex<BTreeMap<NodeId, Arc<PeerLink>>>,
    /// Each lane's node-wide byte budget.
    held: [Arc<Semaphore>; 2],
    gauges: Arc<ServerGauges>,
    seed: u64,
    next_request_id: AtomicU64,
}

impl Inner {
    // Every operation under this lock is a few map calls, so a poisoned lock is still usable.
    fn links(&self) -> MutexGuard<'_, BTreeMap<NodeId, Arc<PeerLink>>> {
        self.links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn link(&self, peer: NodeId) -> Option<Arc<PeerLink>> {
        self.links().get(&peer).cloned()
    }

    fn pools<'a>(&'a self, connection: &'a PeerConnection, lane: PeerLane) -> BytePools<'a> {
        let idx = lane_idx(lane);
        BytePools {
            gauges: &self.gauges,
            connection: &connection.bytes[idx],
            node: &self.held[idx],
            cap: self.limits.lane(lane).held_bytes_max,
        }
    }

    fn streams_max(&self) -> u32 {
        self.limits
            .control_in_flight_max
            .saturating_add(self.limits.bulk_in_flight_max)
    }
}

/// The production peer transport; see the module doc. Cheap to clone.
#[derive(Clone)]
pub struct QuicPeerTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QuicPeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicPeerTransport")
            .field("local", &self.inner.local)
            .field("cluster", &self.inner.cluster)
            .finish_non_exhaustive()
    }
}

/// Hands connections of the peer protocol from the listener to the transport.
#[derive(Clone)]
pub struct PeerAcceptor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PeerAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerAcceptor")
            .field("local", &self.inner.local)
            .finish_non_exhaustive()
    }
}

impl QuicPeerTransport {
    /// A transport for node `local` of `cluster`, dialing from `endpoint` (the node's listener,
    /// whose server also hands it incoming peer connections through [`Self::acceptor`]) with
    /// `material` (which must be the certificate of `sluice://<cluster>/node/<local>`), serving
    /// requests with `handler`. `seed` seeds the reconnect jitter. No peer is known until
    /// [`PeerTransport::set_peers`].
    pub fn new(
        endpoint: quinn::Endpoint,
        material: TlsMaterial,
        cluster: &str,
        local: NodeId,
        limits: PeerLimits,
        handler: Arc<dyn PeerHandler>,
        seed: u64,
    ) -> Result<Self, NetError> {
        let own = material.identity()?;
        if own.cluster != cluster || own.role != Role::Node || node_id_of(&own.name) != Some(local)
        {
            return Err(NetError::Certificate {
                file: "own certificate".to_owned(),
                reason: format!("identity {own} is not sluice://{cluster}/node/{local}"),
            });
        }
        let problems = limits.problems();
        if !problems.is_empty() {
            return Err(NetError::Tls {
                reason: format!("peer limits: {}", problems.join("; ")),
            });
        }
        let held =
            LANES.map(|lane| Arc::new(Semaphore::new(permits(limits.lane(lane).held_bytes_max))));
        Ok(Self {
            inner: Arc::new(Inner {
                local,
                cluster: cluster.to_owned(),
                endpoint,
                material,
                limits,
                handler,
                links: Mutex::new(BTreeMap::new()),
                held,
                gauges: Arc::new(ServerGauges::default()),
                seed,
                next_request_id: AtomicU64::new(1),
            }),
        })
    }

    /// What the listener hands peer connections to ([`super::server::serve_with_peers`]).
    pub fn acceptor(&self) -> PeerAcceptor {
        PeerAcceptor {
            inner: self.inner.clone(),
        }
    }

    /// Bytes held for peers' requests and answers (the `request_bytes` and `answer_bytes`
    /// gauges, both lanes) and how often a request was refused for a spent budget
    /// (`reads_paused_for_requests_total`).
    pub fn gauges(&self) -> Arc<ServerGauges> {
        self.inner.gauges.clone()
    }

    /// Waits until the connection to `peer` is up (`true`) or down (`false`). A peer not in the
    /// address book is down.
    pub async fn wait_connected(&self, peer: NodeId, connected: bool) {
        let Some(link) = self.inner.link(peer) else {
            if connected {
                std::future::pending::<()>().await;
            }
            return;
        };
        let mut state = link.state.subscribe();
        let _ = state
            .wait_for(|s| (s.connection.is_some() && !s.removed) == connected)
            .await;
    }

    /// Closes every peer connection; later calls fail as unreachable.
    pub fn close(&self) {
        self.set_peers(BTreeMap::new());
    }

    async fn call_inner(&self, request: PeerRequest) -> Result<Vec<u8>, PeerError> {
        let inner = &self.inner;
        let to = request.envelope.to;
        if to == inner.local {
            return Err(PeerError::new(
                PeerErrorKind::Unreachable,
                format!("node {to} is this node"),
            ));
        }
        let link = inner.link(to).ok_or_else(|| not_in_book(to))?;
        let lane = link.lanes[lane_idx(request.lane)].limits;
        if request.body.len() as u64 > u64::from(lane.message_bytes_max) {
            return Err(PeerError::new(
                PeerErrorKind::TooLarge,
                format!(
                    "request of {} bytes to node {to} exceeds the {:?} lane's bound of {} bytes",
                    request.body.len(),
                    request.lane,
                    lane.message_bytes_max
                ),
            ));
        }
        let _place = link.lanes[lane_idx(request.lane)]
            .enter(to, request.lane)
            .await?;
        let connection = link.connection().await?;
        let _active = connection.begin();
        let request_id = inner.next_request_id.fetch_add(1, Ordering::Relaxed);
        exchange(inner, &connection, request, request_id)
            .instrument(info_span!("peer_call", peer_id = %to, request_id))
            .await
    }
}

impl PeerTransport for QuicPeerTransport {
    fn local(&self) -> NodeId {
        self.inner.local
    }

    fn set_peers(&self, peers: BTreeMap<NodeId, String>) {
        let inner = &self.inner;
        let mut removed = Vec::new();
        let mut added = Vec::new();
        {
            let mut links = inner.links();
            links.retain(|id, link| {
                let keep = peers.get(id) == Some(&link.addr);
                if !keep {
                    removed.push(link.clone());
                }
                keep
            });
            for (id, addr) in &peers {
                if *id == inner.local || links.contains_key(id) {
                    continue;
                }
                let link = Arc::new(PeerLink {
                    id: *id,
                    addr: addr.clone(),
                    lanes: LANES.map(|lane| LaneQueue::new(inner.limits.lane(lane))),
                    state: watch::Sender::new(LinkState::default()),
                    redial: Notify::new(),
                });
                links.insert(*id, link.clone());
                added.push(link);
            }
        }
        for link in removed {
            info!(peer_id = %link.id, addr = %link.addr, "peer removed from the address book");
            link.remove(inner.local);
        }
        for link in added {
            info!(peer_id = %link.id, addr = %link.addr, "peer added to the address book");
            let span = info_span!("peer", peer_id = %link.id);
            tokio::spawn(maintain(inner.clone(), link).instrument(span));
        }
    }

    fn call(
        &self,
        request: PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Vec<u8>, PeerError>> {
        Box::pin(async move {
            let to = request.envelope.to;
            let lane = request.lane;
            match tokio::time::timeout(timeout, self.call_inner(request)).await {
                Ok(result) => result,
                Err(_) => Err(PeerError::new(
                    PeerErrorKind::Timeout,
                    format!(
                        "{lane:?} call to node {to}: no answer within {} ms",
                        timeout.as_millis()
                    ),
                )),
            }
        })
    }
}

/// One call on one stream: the request frame out, the reply frame back.
async fn exchange(
    inner: &Inner,
    connection: &PeerConnection,
    request: PeerRequest,
    request_id: u64,
) -> Result<Vec<u8>, PeerError> {
    let to = request.envelope.to;
    let lane = inner.limits.lane(request.lane);
    let closed = |error: NetError| {
        PeerError::new(PeerErrorKind::Closed, format!("call to node {to}: {error}"))
    };
    let (mut send, mut recv) = connection
        .connection
        .open_bi()
        .await
        .map_err(|error| closed(connection_error(&to.to_string(), &error)))?;
    // Votes and heartbeats go first when both lanes have data to send.
    let _ = send.set_priority(match request.lane {
        PeerLane::Control => 1,
        PeerLane::Bulk => 0,
    });
    let call = PeerCall {
        request_id,
        envelope: request.envelope,
        body: request.body,
    };
    let message = match request.lane {
        PeerLane::Control => Message::PeerControlCall(call),
        PeerLane::Bulk => Message::PeerBulkCall(call),
    };
    let mut frame = Vec::new();
    encode_frame_into(&message, &mut frame, lane.frame_bytes_max()).map_err(|error| {
        PeerError::new(
            PeerErrorKind::TooLarge,
            format!("call to node {to}: {error}"),
        )
    })?;
    drop(message);
    match send.write_chunk(frame.into()).await {
        // A receiver refusing the call unread stops the stream, then sends its refusal.
        Ok(()) | Err(quinn::WriteError::Stopped(_)) => {}
        Err(error) => return Err(closed(write_error(error))),
    }
    let _ = send.finish();
    let deadline = Some(Duration::from_millis(inner.limits.frame_timeout_ms));
    let reply = read_reply(&mut recv, lane.frame_bytes_max(), deadline)
        .await
        .map_err(|(kind, reason)| PeerError::new(kind, format!("call to node {to}: {reason}")))?;
    match reply.answer {
        PeerAnswer::Body(body) => Ok(body),
        PeerAnswer::Refused(refusal) => Err(PeerError::new(
            PeerErrorKind::Remote(refusal.clone()),
            format!("node {to} refused the call: {refusal}"),
        )),
    }
}

/// Reads the reply frame of a call, at most `frame_bytes_max` of body.
async fn read_reply(
    recv: &mut quinn::RecvStream,
    frame_bytes_max: u32,
    deadline: Option<Duration>,
) -> Result<PeerReply, (PeerErrorKind, String)> {
    let failed = |error: NetError| match error {
        NetError::Frame(_) => (PeerErrorKind::Protocol, error.to_string()),
        other => (PeerErrorKind::Closed, other.to_string()),
    };
    let header = read_header(recv, frame_bytes_max, deadline)
        .await
        .map_err(failed)?
        .ok_or_else(|| {
            let reason = "stream ended without a reply".to_owned();
            (PeerErrorKind::Closed, reason)
        })?;
    if header.kind != Kind::PeerReply {
        let reason = format!("a {:?} frame instead of a reply", header.kind);
        return Err((PeerErrorKind::Protocol, reason));
    }
    match read_body(recv, &header, deadline).await.map_err(failed)? {
        Message::PeerReply(reply) => Ok(reply),
        other => {
            let reason = format!("a {:?} instead of a reply", other.kind());
            Err((PeerErrorKind::Protocol, reason))
        }
    }
}

/// Keeps the link to one peer: dials (lower id) or nudges (higher id), with backoff, until the
/// peer leaves the address book.
async fn maintain(inner: Arc<Inner>, link: Arc<PeerLink>) {
    let rng = rng_for(inner.seed, inner.local.0, SALT_PEER_BACKOFF ^ link.id.0);
    let mut backoff = Backoff::new(
        Duration::from_millis(inner.limits.reconnect_initial_ms),
        Duration::from_millis(inner.limits.reconnect_max_ms),
        rng,
    );
    let dials = inner.local < link.id;
    let mut state = link.state.subscribe();
    while !link.removed() {
        if !dials {
            // Wait while connected; then nudge after a backoff delay unless the peer dialed.
            let _ = state
                .wait_for(|s| s.connection.is_none() || s.removed)
                .await
                .is_ok();
            if link.removed() {
                break;
            }
            let delay = backoff.next_delay();
            let connected = tokio::time::timeout(delay, async {
                state
                    .wait_for(|s| s.connection.is_some() || s.removed)
                    .await
                    .is_ok()
            })
            .await
            .is_ok();
            if connected {
                backoff.reset();
                continue;
            }
            nudge(&inner, &link).await;
            continue;
        }
        match dial(&inner, &link).await {
            Ok(connection) => {
                backoff.reset();
                let connection = PeerConnection::new(connection, &inner.limits);
                info!(peer_id = %link.id, addr = %link.addr, "peer connected (dialed)");
                link.adopt(connection.clone());
                let span = info_span!("peer_connection", peer_id = %link.id);
                tokio::spawn(
                    serve_connection(inner.clone(), link.clone(), connection.clone())
                        .instrument(span),
                );
                // Until it ends, or the peer nudges (its side of it is gone): then dial again.
                tokio::select! {
                    biased;
                    _ = link.redial.notified() => debug!(peer_id = %link.id, "nudged; dialing again"),
                    _ = connection.connection.closed() => {}
                }
            }
            Err(error) => {
                let delay = backoff.next_delay();
                warn!(peer_id = %link.id, addr = %link.addr, %error, retry_in_ms = delay.as_millis() as u64, "dialing peer failed");
                link.fail(error);
                tokio::select! {
                    biased;
                    _ = link.redial.notified() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    debug!(peer_id = %link.id, "peer link ended");
}

/// Dials `link`'s address, requiring its node's certificate.
async fn dial(inner: &Inner, link: &PeerLink) -> Result<quinn::Connection, PeerError> {
    let addr = &link.addr;
    let unreachable = |reason: String| {
        PeerError::new(
            PeerErrorKind::Unreachable,
            format!("dial node {} at {addr}: {reason}", link.id),
        )
    };
    let limit = Duration::from_millis(inner.limits.connect_timeout_ms);
    let attempt = async {
        let mut resolved = tokio::net::lookup_host(addr.as_str())
            .await
            .map_err(|error| unreachable(format!("cannot resolve: {error}")))?;
        let socket_addr = resolved
            .next()
            .ok_or_else(|| unreachable("resolved to no address".to_owned()))?;
        let transport = transport(inner.streams_max(), inner.limits.idle_timeout_ms)
            .map_err(|error| unreachable(error.to_string()))?;
        let config = peer_client_config(&inner.material, &inner.cluster, link.id, transport)
            .map_err(|error| unreachable(error.to_string()))?;
        let connecting = inner
            .endpoint
            .connect_with(config, socket_addr, host_of(addr))
            .map_err(|error| unreachable(error.to_string()))?;
        connecting
            .await
            .map_err(|error| dial_error(link.id, addr, &connection_error(addr, &error)))
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(result) => result,
        Err(_) => Err(unreachable(format!(
            "no connection within connect_timeout_ms = {}",
            inner.limits.connect_timeout_ms
        ))),
    }
}

/// Classifies a failed dial: a refused certificate or a refusal by the peer is `Refused`.
fn dial_error(peer: NodeId, addr: &str, error: &NetError) -> PeerError {
    let kind = match error {
        NetError::Handshake { .. } | NetError::Identity { .. } | NetError::Refused { .. } => {
            PeerErrorKind::Refused
        }
        _ => PeerErrorKind::Unreachable,
    };
    PeerError::new(kind, format!("dial node {peer} at {addr}: {error}"))
}

/// Asks the lower-id peer to dial us: a connection it authenticates and closes at once with
/// [`CLOSE_PEER_LOWER_DIALS`]. Any other outcome is the link's failure until it connects.
async fn nudge(inner: &Inner, link: &PeerLink) {
    trace!(peer_id = %link.id, "nudging the peer to dial");
    let failure = match dial(inner, link).await {
        Ok(connection) => {
            let error = connection.closed().await;
            match &error {
                quinn::ConnectionError::ApplicationClosed(close)
                    if close.error_code == quinn::VarInt::from_u32(CLOSE_PEER_LOWER_DIALS) =>
                {
                    return;
                }
                _ => PeerError::new(
                    PeerErrorKind::Refused,
                    format!(
                        "node {} at {}: {}",
                        link.id,
                        link.addr,
                        describe_connection_error(&error)
                    ),
                ),
            }
        }
        Err(error) => error,
    };
    debug!(peer_id = %link.id, error = %failure, "nudge failed");
    link.fail(failure);
}

impl PeerAcceptor {
    /// Takes a connection of the peer protocol whose handshake the listener completed: checks
    /// the identity, then serves it (or closes it with a reason).
    pub fn accept(&self, connection: quinn::Connection, remote: SocketAddr) {
        let inner = self.inner.clone();
        let span = info_span!("peer_connection", %remote, peer_id = tracing::field::Empty);
        tokio::spawn(
            async move {
                let (peer, link) = match admit(&inner, &connection) {
                    Ok(admitted) => admitted,
                    Err((code, reason, quietly)) => {
                        if quietly {
                            debug!(%remote, %reason, "peer connection closed");
                        } else {
                            warn!(%remote, %reason, "peer connection refused");
                        }
                        connection.close(quinn::VarInt::from_u32(code), reason.as_bytes());
                        return;
                    }
                };
                tracing::Span::current().record("peer_id", tracing::field::display(peer));
                connection
                    .set_max_concurrent_bi_streams(quinn::VarInt::from_u32(inner.streams_max()));
                let connection = PeerConnection::new(connection, &inner.limits);
                info!(peer_id = %peer, "peer connected (accepted)");
                link.adopt(connection.clone());
                serve_connection(inner, link, connection).await;
            }
            .instrument(span),
        );
    }
}

/// Who an incoming peer connection is, or why it is refused: close code, reason, and whether
/// the refusal is part of the protocol (a nudge) rather than a problem.
#[allow(clippy::type_complexity)]
fn admit(
    inner: &Inner,
    connection: &quinn::Connection,
) -> Result<(NodeId, Arc<PeerLink>), (u32, String, bool)> {
    let identity = connection_identity(connection)
        .map_err(|error| (CLOSE_BAD_IDENTITY, error.to_string(), false))?;
    let ours = &inner.cluster;
    if identity.cluster != *ours {
        let reason = format!(
            "{identity} is of cluster {}, this is cluster {ours}",
            identity.cluster
        );
        return Err((CLOSE_WRONG_CLUSTER, reason, false));
    }
    if identity.role != Role::Node {
        let reason = format!(
            "{identity} may not use the peer protocol: only node certificates of cluster {ours}"
        );
        return Err((CLOSE_ROLE_NOT_ALLOWED, reason, false));
    }
    let Some(peer) = node_id_of(&identity.name) else {
        let reason = format!("{identity} does not name a node id (a decimal number)");
        return Err((CLOSE_BAD_IDENTITY, reason, false));
    };
    let local = inner.local;
    let link = inner.link(peer).filter(|_| peer != local).ok_or_else(|| {
        let reason = format!("node {peer} is not in the address book of node {local}");
        (CLOSE_PEER_UNKNOWN, reason, false)
    })?;
    if peer > local {
        // A nudge: the peer has no connection to us. Dial it afresh.
        link.redial.notify_waiters();
        let reason = format!("node {local} dials node {peer} (the lower id dials); dialing now");
        return Err((CLOSE_PEER_LOWER_DIALS, reason, true));
    }
    Ok((peer, link))
}

/// Serves the calls the peer opens on `connection` until it ends, then forgets it.
async fn serve_connection(inner: Arc<Inner>, link: Arc<PeerLink>, connection: Arc<PeerConnection>) {
    loop {
        match connection.connection.accept_bi().await {
            Ok((send, recv)) => {
                let active = connection.begin();
                let task = serve_call(inner.clone(), link.id, connection.clone(), send, recv);
                tokio::spawn(
                    async move {
                        task.await;
                        drop(active);
                    }
                    .in_current_span(),
                );
            }
            Err(error) => {
                let reason = describe_connection_error(&error);
                match error {
                    quinn::ConnectionError::ApplicationClosed(_)
                    | quinn::ConnectionError::LocallyClosed => {
                        debug!(peer_id = %link.id, %reason, "peer connection ended")
                    }
                    _ => warn!(peer_id = %link.id, %reason, "peer connection lost"),
                }
                link.forget(&connection);
                return;
            }
        }
    }
}

fn stop(recv: &mut quinn::RecvStream) {
    let _ = recv.stop(quinn::VarInt::from_u32(STREAM_FRAME_ERROR));
}

/// Serves one call: reads the request within the lane's bounds (refusing, unread, what does not
/// fit), checks its envelope, runs the handler, writes the reply.
async fn serve_call(
    inner: Arc<Inner>,
    peer: NodeId,
    connection: Arc<PeerConnection>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let deadline = Some(Duration::from_millis(inner.limits.frame_timeout_ms));
    let Some((lane, header)) = read_call_header(&inner, peer, &mut recv).await else {
        return;
    };
    let (request_id, answer) = match take_place(&inner, &connection, peer, lane, &header) {
        Err(refusal) => {
            stop(&mut recv);
            (0, PeerAnswer::Refused(refusal))
        }
        Ok((serving, held)) => match read_body(&mut recv, &header, deadline).await {
            Ok(Message::PeerControlCall(call) | Message::PeerBulkCall(call)) => {
                let request_id = call.request_id;
                let answer = handle(&inner, peer, lane, call).await;
                drop(held);
                // The place is free before the reply can reach the sender, so a sender at its
                // in-flight bound never finds the place still taken by a call it saw answered.
                drop(serving);
                (request_id, answer)
            }
            Ok(_) => return,
            Err(error) => {
                warn!(peer_id = %peer, %error, "bad peer request body");
                stop(&mut recv);
                return;
            }
        },
    };
    let bytes = encode_reply(request_id, answer, inner.limits.lane(lane));
    let pools = inner.pools(&connection, lane);
    let _answer_held = Held::reserve_from(&pools, Budget::Answer, bytes.len() as u64).await;
    if let Err(error) = send.write_chunk(bytes.into()).await {
        debug!(peer_id = %peer, error = %write_error(error), "peer reply not sent");
        return;
    }
    let _ = send.finish();
    // The answer's bytes stay held until the peer acknowledged them (or the stream failed).
    let _ = send.stopped().await;
}

/// Reads a call's frame header, whose kind is its lane; `None` (the stream stopped) for
/// anything else.
async fn read_call_header(
    inner: &Inner,
    peer: NodeId,
    recv: &mut quinn::RecvStream,
) -> Option<(PeerLane, FrameHeader)> {
    let limits = &inner.limits;
    let deadline = Some(Duration::from_millis(limits.frame_timeout_ms));
    let largest = limits
        .lane(PeerLane::Control)
        .frame_bytes_max()
        .max(limits.lane(PeerLane::Bulk).frame_bytes_max());
    let header = match read_header(recv, largest, deadline).await {
        Ok(Some(header)) => header,
        Ok(None) => return None,
        Err(error) => {
            warn!(peer_id = %peer, %error, "bad peer request frame");
            stop(recv);
            return None;
        }
    };
    let lane = match header.kind {
        Kind::PeerControlCall => PeerLane::Control,
        Kind::PeerBulkCall => PeerLane::Bulk,
        other => {
            warn!(peer_id = %peer, kind = ?other, "not a peer call; stream closed");
            stop(recv);
            return None;
        }
    };
    Some((lane, header))
}

/// Takes the call's place among the connection's calls of its lane and holds its bytes from
/// the lane's budget, or refuses it without waiting: too large for the lane, or `Overloaded`.
fn take_place(
    inner: &Inner,
    connection: &PeerConnection,
    peer: NodeId,
    lane: PeerLane,
    header: &FrameHeader,
) -> Result<(OwnedSemaphorePermit, Held), PeerRefusal> {
    let frame_bytes_max = inner.limits.lane(lane).frame_bytes_max();
    if header.body_len > frame_bytes_max {
        return Err(PeerRefusal::Handler(format!(
            "{lane:?} frame of {} bytes exceeds the lane's bound of {frame_bytes_max}",
            header.body_len
        )));
    }
    let Ok(serving) = connection.serving[lane_idx(lane)]
        .clone()
        .try_acquire_owned()
    else {
        debug!(peer_id = %peer, ?lane, "peer calls in flight at the bound; refused as overloaded");
        return Err(PeerRefusal::Overloaded);
    };
    let bytes = HEADER_LEN as u64 + u64::from(header.body_len);
    let pools = inner.pools(connection, lane);
    let Some(held) = Held::try_reserve_from(&pools, Budget::Request, bytes) else {
        debug!(peer_id = %peer, ?lane, bytes, "peer byte budget spent; refused as overloaded");
        return Err(PeerRefusal::Overloaded);
    };
    Ok((serving, held))
}

/// Runs the transport's envelope check, then the handler.
async fn handle(inner: &Inner, peer: NodeId, lane: PeerLane, call: PeerCall) -> PeerAnswer {
    if let Err(refusal) = check_envelope(&call.envelope, &inner.cluster, inner.local, peer) {
        debug!(peer_id = %peer, %refusal, "peer request refused by the envelope check");
        return PeerAnswer::Refused(refusal);
    }
    let request = PeerRequest {
        envelope: call.envelope,
        lane,
        body: call.body,
    };
    match inner.handler.handle(request).await {
        Ok(body) => PeerAnswer::Body(body),
        Err(PeerRefusal::Handler(mut text)) => {
            if text.len() > REFUSAL_TEXT_BYTES_MAX {
                let mut cut = REFUSAL_TEXT_BYTES_MAX;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            PeerAnswer::Refused(PeerRefusal::Handler(text))
        }
        Err(refusal) => PeerAnswer::Refused(refusal),
    }
}

/// Encodes a reply frame; an answer over the lane's bound becomes a refusal saying so.
fn encode_reply(request_id: u64, answer: PeerAnswer, lane: LaneLimits) -> Vec<u8> {
    let mut bytes = Vec::new();
    let reply = Message::PeerReply(PeerReply { request_id, answer });
    if let Err(error) = encode_frame_into(&reply, &mut bytes, lane.frame_bytes_max()) {
        warn!(request_id, %error, "peer answer not sendable; refusing instead");
        let text = format!(
            "answer exceeds the lane's bound of {} bytes",
            lane.message_bytes_max
        );
        let refusal = Message::PeerReply(PeerReply {
            request_id,
            answer: PeerAnswer::Refused(PeerRefusal::Handler(text)),
        });
        bytes.clear();
        if let Err(error) = encode_frame_into(&refusal, &mut bytes, lane.frame_bytes_max()) {
            warn!(request_id, %error, "peer refusal not sendable");
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    // Checks that only canonical decimal names are node ids, so "01" and "1" are not one node.
    #[test]
    fn node_ids_are_canonical_decimals() {
        assert_eq!(node_id_of("0"), Some(NodeId(0)));
        assert_eq!(node_id_of("17"), Some(NodeId(17)));
        assert_eq!(node_id_of("18446744073709551615"), Some(NodeId(u64::MAX)));
        for bad in ["", "01", "+1", "-1", "1a", "node1", "18446744073709551616"] {
            assert_eq!(node_id_of(bad), None, "{bad:?}");
        }
    }

    // Checks that the default limits are usable and that unusable ones are named.
    #[test]
    fn limits_problems_name_what_is_wrong() {
        assert_eq!(PeerLimits::default().problems(), Vec::<String>::new());
        let bad = PeerLimits {
            bulk_in_flight_max: 0,
            bulk_message_bytes_max: 32 << 20,
            control_held_bytes_max: 10,
            ..PeerLimits::default()
        };
        let problems = bad.problems().join("\n");
        assert!(problems.contains("bulk_in_flight_max"), "{problems}");
        assert!(problems.contains("bulk_message_bytes_max"), "{problems}");
        assert!(problems.contains("control_held_bytes_max"), "{problems}");
    }
}
