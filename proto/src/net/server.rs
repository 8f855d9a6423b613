//! A generic request/response server: the node supplies a [`Handler`], this module does the rest.
//!
//! **Unauthenticated peers hold almost nothing.** A connection attempt first takes one of
//! `handshakes_max` handshake places, for at most `handshake_timeout_ms`. When every place is
//! taken, an attempt from an address that has not proven it receives our packets gets a QUIC
//! Retry (stateless: it holds nothing until it answers), and a validated one evicts the oldest
//! handshake of the address holding the most places, so a flood of handshakes that never finish
//! can delay a valid client by one round trip but not lock it out. Established connections never
//! compete with handshakes: their slots (`connections_max`) are taken only once the peer is
//! authenticated, and at most `connections_per_identity_max` of them by one identity.
//!
//! After the handshake the peer's identity is read from its certificate; a peer of another
//! cluster or of a role not allowed here, one more connection than the node or the identity may
//! hold, is closed with a `CLOSE_*` code and a reason. Each bidi stream carries request frames;
//! up to `in_flight_per_connection_max` handler calls of a connection run at once, their
//! responses are written in completion order by the stream's single writer, each carrying its
//! request's `request_id`. A bad frame gets an [`ErrorResponse`] with `request_id` 0 and ends
//! that stream only.
//!
//! [`ServerGauges`] counts what clients hold (handshakes, connections) and what was refused, for
//! the node's stats and for tests.
//!
//! What this module does not do: authorisation beyond the role (the handler checks ACLs), and
//! retries (a client retries on a new stream or connection).

use super::io::{encode_frame_into, is_request, read_body, read_header, set_request_id};
use super::peer::PeerAcceptor;
use super::tls::connection_identity;
use super::{
    describe_connection_error, frame_error_code, NetError, CLOSE_BAD_IDENTITY, CLOSE_BUSY,
    CLOSE_IDENTITY_LIMIT, CLOSE_ROLE_NOT_ALLOWED, CLOSE_SHUTDOWN, CLOSE_WRONG_CLUSTER,
    STREAM_FRAME_ERROR,
};
use crate::frame::HEADER_LEN;
use crate::ids::{Identity, Role};
use crate::msg::{ErrorCode, ErrorResponse, Message};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::BufReader;
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tracing::{debug, error, info, info_span, trace, warn, Instrument};

/// Serves requests from authenticated peers.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request from an authenticated peer and returns its response message.
    fn handle(
        &self,
        peer: Arc<Identity>,
        request: Message,
    ) -> Pin<Box<dyn Future<Output = Message> + Send + 'static>>;

    /// An upper estimate of the encoded size of the answer to `request`, held from the answer
    /// byte budgets before the call starts and corrected to the actual size once the answer is
    /// encoded. The default is [`answer_bytes_estimate`]; a handler that caps its answers more
    /// tightly (a node's `fetch_bytes_max`) can say so here.
    fn answer_bytes_estimate(&self, request: &Message, frame_bytes_max: u32) -> u64 {
        answer_bytes_estimate(request, frame_bytes_max)
    }
}

/// Bounds of one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest frame body accepted or sent, in bytes.
    pub frame_bytes_max: u32,
    /// Handler calls running at once per connection, over all its streams.
    pub in_flight_per_connection_max: u32,
    /// Authenticated connections served at once; more are refused.
    pub connections_max: u32,
    /// Authenticated connections one identity may hold at once; more are refused.
    pub connections_per_identity_max: u32,
    /// Handshakes in progress at once (peers not yet authenticated).
    pub handshakes_max: u32,
    /// Bidi streams a peer may have open at once per connection.
    pub streams_per_connection_max: u32,
    /// A connection silent for this long is closed (keep-alives are sent at a third of it).
    pub idle_timeout_ms: u64,
    /// A handshake not complete after this long is abandoned.
    pub handshake_timeout_ms: u64,
    /// A frame's header, and then its body, must each arrive within this long once begun.
    pub frame_timeout_ms: u64,
    /// Bytes of requests being read or handled on one connection.
    pub request_bytes_per_connection_max: u64,
    /// Bytes of requests being read or handled on the whole node.
    pub request_bytes_max: u64,
    /// Bytes of answers not yet taken by the client (being computed or waiting to be sent) on
    /// one connection; at the bound the server stops reading that connection's requests.
    pub answer_bytes_per_connection_max: u64,
    /// Bytes of answers not yet taken, on the whole node.
    pub answer_bytes_max: u64,
    /// The QUIC flow-control window of one connection, each way: bytes the transport buffers
    /// for a connection beyond the budgets above (received but not read, written but not acked).
    pub connection_window_bytes_max: u64,
}

/// Capacity of a stream's read buffer.
const STREAM_READ_BUFFER_BYTES: usize = 8 << 10;

impl ServerLimits {
    /// The most memory clients can make this server hold for them, in bytes: the node-wide
    /// budgets, every connection's transport windows and read buffers, and the connection
    /// attempts quinn buffers. Checked at start-up against the machine's memory.
    pub fn held_bytes_max(&self) -> u64 {
        let per_connection = self
            .connection_window_bytes_max
            .saturating_mul(2)
            .saturating_add(
                u64::from(self.streams_per_connection_max)
                    .saturating_mul(STREAM_READ_BUFFER_BYTES as u64),
            );
        let incoming = super::tls::incoming_max(self.handshakes_max) as u64
            * (super::tls::INCOMING_BUFFER_BYTES + 1500);
        self.request_bytes_max
            .saturating_add(self.answer_bytes_max)
            .saturating_add(u64::from(self.connections_max).saturating_mul(per_connection))
            .saturating_add(incoming)
    }
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            frame_bytes_max: 4 << 20,
            in_flight_per_connection_max: 256,
            connections_max: 1024,
            connections_per_identity_max: 8,
            handshakes_max: 64,
            streams_per_connection_max: 16,
            idle_timeout_ms: 30_000,
            handshake_timeout_ms: 5_000,
            frame_timeout_ms: 10_000,
            request_bytes_per_connection_max: 8 << 20,
            request_bytes_max: 128 << 20,
            answer_bytes_per_connection_max: 8 << 20,
            answer_bytes_max: 128 << 20,
            connection_window_bytes_max: 512 << 10,
        }
    }
}

/// Live counters of one server: what clients hold now, the most they ever held, and what was
/// refused. Shared by the server and whoever reports or tests it; [`ServerGauges::wait_until`]
/// waits for a condition on them without polling.
#[derive(Debug, Default)]
pub struct ServerGauges {
    handshakes: AtomicU64,
    handshakes_peak: AtomicU64,
    handshakes_retried: AtomicU64,
    handshakes_evicted: AtomicU64,
    handshakes_timed_out: AtomicU64,
    handshakes_failed: AtomicU64,
    connections: AtomicU64,
    connections_peak: AtomicU64,
    connections_refused_busy: AtomicU64,
    connections_refused_identity: AtomicU64,
    request_bytes: AtomicU64,
    request_bytes_peak: AtomicU64,
    answer_bytes: AtomicU64,
    answer_bytes_peak: AtomicU64,
    reads_paused_for_requests: AtomicU64,
    reads_paused_for_answers: AtomicU64,
    frames_timed_out: AtomicU64,
    changed: Notify,
}

/// A snapshot of [`ServerGauges`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Handshakes in progress now.
    pub handshakes: u64,
    /// The most handshakes ever in progress at once.
    pub handshakes_peak: u64,
    /// Connection attempts answered with a stateless Retry because every handshake place was
    /// taken.
    pub handshakes_retried_total: u64,
    /// Handshakes abandoned to make room for a newer, address-validated attempt.
    pub handshakes_evicted_total: u64,
    /// Handshakes abandoned at `handshake_timeout_ms`.
    pub handshakes_timed_out_total: u64,
    /// Handshakes that failed (TLS alert, bad packets, peer gave up).
    pub handshakes_failed_total: u64,
    /// Authenticated connections served now.
    pub connections: u64,
    /// The most authenticated connections ever served at once.
    pub connections_peak: u64,
    /// Connections refused because the node served `connections_max` already.
    pub connections_refused_busy_total: u64,
    /// Connections refused because their identity held `connections_per_identity_max` already.
    pub connections_refused_identity_total: u64,
    /// Bytes of requests being read or handled now, node-wide.
    pub request_bytes: u64,
    /// The most request bytes ever held at once.
    pub request_bytes_peak: u64,
    /// Bytes of answers not yet taken by their clients now, node-wide.
    pub answer_bytes: u64,
    /// The most answer bytes ever held at once.
    pub answer_bytes_peak: u64,
    /// Times a stream stopped reading until request bytes were released.
    pub reads_paused_for_requests_total: u64,
    /// Times a stream stopped reading until answer bytes were taken by their client.
    pub reads_paused_for_answers_total: u64,
    /// Frames that did not arrive within `frame_timeout_ms`.
    pub frames_timed_out_total: u64,
}

impl ServerGauges {
    /// The current values.
    pub fn snapshot(&self) -> ServerStats {
        let get = |gauge: &AtomicU64| gauge.load(Ordering::Relaxed);
        ServerStats {
            handshakes: get(&self.handshakes),
            handshakes_peak: get(&self.handshakes_peak),
            handshakes_retried_total: get(&self.handshakes_retried),
            handshakes_evicted_total: get(&self.handshakes_evicted),
            handshakes_timed_out_total: get(&self.handshakes_timed_out),
            handshakes_failed_total: get(&self.handshakes_failed),
            connections: get(&self.connections),
            connections_peak: get(&self.connections_peak),
            connections_refused_busy_total: get(&self.connections_refused_busy),
            connections_refused_identity_total: get(&self.connections_refused_identity),
            request_bytes: get(&self.request_bytes),
            request_bytes_peak: get(&self.request_bytes_peak),
            answer_bytes: get(&self.answer_bytes),
            answer_bytes_peak: get(&self.answer_bytes_peak),
            reads_paused_for_requests_total: get(&self.reads_paused_for_requests),
            reads_paused_for_answers_total: get(&self.reads_paused_for_answers),
            frames_timed_out_total: get(&self.frames_timed_out),
        }
    }

    /// Waits until `condition` holds on a snapshot (checked now and after every change).
    pub async fn wait_until(&self, condition: impl Fn(&ServerStats) -> bool) -> ServerStats {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let stats = self.snapshot();
            if condition(&stats) {
                return stats;
            }
            changed.await;
        }
    }

    fn bump(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Sets a current value and raises its peak.
    fn set_with_peak(&self, current: &AtomicU64, peak: &AtomicU64, value: u64) {
        current.store(value, Ordering::Relaxed);
        peak.fetch_max(value, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    fn add_with_peak(&self, current: &AtomicU64, peak: &AtomicU64, delta: u64) {
        let value = current.fetch_add(delta, Ordering::Relaxed) + delta;
        peak.fetch_max(value, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    fn sub(&self, current: &AtomicU64, delta: u64) {
        current.fetch_sub(delta, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
}

/// Handshakes in progress, oldest first. Each has a cancel channel: dropping its sender makes
/// the handshake task give up.
struct Handshakes {
    next_seq: u64,
    by_seq: BTreeMap<u64, (IpAddr, oneshot::Sender<()>)>,
}

impl Handshakes {
    /// Evicts the oldest handshake of the address holding the most places; returns its address.
    fn evict_one(&mut self) -> Option<IpAddr> {
        let mut held = BTreeMap::<IpAddr, usize>::new();
        for (ip, _) in self.by_seq.values() {
            *held.entry(*ip).or_default() += 1;
        }
        let most = held.values().copied().max()?;
        let seq = self
            .by_seq
            .iter()
            .find(|(_, (ip, _))| held.get(ip) == Some(&most))
            .map(|(seq, _)| *seq)?;
        // Dropping the sender cancels the handshake task.
        self.by_seq.remove(&seq).map(|(ip, _)| ip)
    }
}

/// One handshake place; frees it when dropped.
struct HandshakePlace {
    shared: Arc<Shared>,
    seq: u64,
}

impl Drop for HandshakePlace {
    fn drop(&mut self) {
        let mut table = self.shared.handshakes();
        table.by_seq.remove(&self.seq);
        let n = table.by_seq.len() as u64;
        drop(table);
        let gauges = &self.shared.gauges;
        gauges.set_with_peak(&gauges.handshakes, &gauges.handshakes_peak, n);
    }
}

/// One authenticated connection's slot in the node's and its identity's counts.
struct ConnectionSlot {
    shared: Arc<Shared>,
    identity: Identity,
    _permit: OwnedSemaphorePermit,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut by_identity = self.shared.by_identity();
        if let Some(n) = by_identity.get_mut(&self.identity) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_identity.remove(&self.identity);
            }
        }
        drop(by_identity);
        let gauges = &self.shared.gauges;
        gauges.sub(&gauges.connections, 1);
    }
}

/// What every connection task of one server shares.
struct Shared {
    cluster: String,
    peers: Option<PeerAcceptor>,
    allowed_roles: Vec<Role>,
    handler: Arc<dyn Handler>,
    limits: ServerLimits,
    gauges: Arc<ServerGauges>,
    connections: Arc<Semaphore>,
    handshakes: Mutex<Handshakes>,
    by_identity: Mutex<BTreeMap<Identity, u32>>,
    request_bytes: Arc<Semaphore>,
    answer_bytes: Arc<Semaphore>,
}

impl Shared {
    // Every operation under these locks is a few map calls that cannot leave them inconsistent,
    // so a poisoned lock is still usable.
    fn handshakes(&self) -> MutexGuard<'_, Handshakes> {
        self.handshakes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn by_identity(&self) -> MutexGuard<'_, BTreeMap<Identity, u32>> {
        self.by_identity
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a handshake place for `incoming`, or answers it without holding anything.
    fn place_for(
        self: &Arc<Self>,
        incoming: quinn::Incoming,
    ) -> Option<(quinn::Incoming, HandshakePlace, oneshot::Receiver<()>)> {
        let remote = incoming.remote_address();
        let max = self.limits.handshakes_max.max(1) as usize;
        let mut table = self.handshakes();
        if table.by_seq.len() >= max {
            if !incoming.remote_address_validated() && incoming.may_retry() {
                drop(table);
                self.gauges.bump(&self.gauges.handshakes_retried);
                trace!(%remote, "every handshake place taken; asking for address validation");
                if let Err(error) = incoming.retry() {
                    error.into_incoming().ignore();
                }
                return None;
            }
            if let Some(evicted) = table.evict_one() {
                self.gauges.bump(&self.gauges.handshakes_evicted);
                debug!(%remote, %evicted, handshakes_max = max, "every handshake place taken; evicted the oldest of the address holding the most");
            }
        }
        let seq = table.next_seq;
        table.next_seq += 1;
        let (cancel_tx, cancel_rx) = oneshot::channel();
        table.by_seq.insert(seq, (remote.ip(), cancel_tx));
        let n = table.by_seq.len() as u64;
        drop(table);
        self.gauges
            .set_with_peak(&self.gauges.handshakes, &self.gauges.handshakes_peak, n);
        let place = HandshakePlace {
            shared: self.clone(),
            seq,
        };
        Some((incoming, place, cancel_rx))
    }

    /// Takes a connection slot for `peer`, or says why not (close code and reason).
    fn slot_for(self: &Arc<Self>, peer: &Identity) -> Result<ConnectionSlot, (u32, String)> {
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            self.gauges.bump(&self.gauges.connections_refused_busy);
            let reason = format!(
                "node busy: it serves connections_max = {} connections already",
                self.limits.connections_max
            );
            return Err((CLOSE_BUSY, reason));
        };
        let mut by_identity = self.by_identity();
        let held = by_identity.entry(peer.clone()).or_default();
        if *held >= self.limits.connections_per_identity_max {
            let reason =
                format!("{peer} holds {held} connections already (connections_per_identity_max)");
            if *held == 0 {
                by_identity.remove(peer);
            }
            drop(by_identity);
            self.gauges.bump(&self.gauges.connections_refused_identity);
            return Err((CLOSE_IDENTITY_LIMIT, reason));
        }
        *held += 1;
        drop(by_identity);
        let gauges = &self.gauges;
        gauges.add_with_peak(&gauges.connections, &gauges.connections_peak, 1);
        Ok(ConnectionSlot {
            shared: self.clone(),
            identity: peer.clone(),
            _permit: permit,
        })
    }
}

/// Serves `endpoint` (built with [`super::server_config`]) until `shutdown` turns true or its
/// sender is dropped, then closes every connection with [`CLOSE_SHUTDOWN`].
pub async fn serve(
    endpoint: quinn::Endpoint,
    cluster: String,
    allowed_roles: Vec<Role>,
    handler: Arc<dyn Handler>,
    limits: ServerLimits,
    shutdown: watch::Receiver<bool>,
) {
    let gauges = Arc::new(ServerGauges::default());
    serve_with_gauges(
        endpoint,
        cluster,
        allowed_roles,
        handler,
        limits,
        gauges,
        shutdown,
    )
    .await
}

/// [`serve`], counting into `gauges`.
pub async fn serve_with_gauges(
    endpoint: quinn::Endpoint,
    cluster: String,
    allowed_roles: Vec<Role>,
    handler: Arc<dyn Handler>,
    limits: ServerLimits,
    gauges: Arc<ServerGauges>,
    shutdown: watch::Receiver<bool>,
) {
    let clients = ClientSide {
        allowed_roles,
        handler,
        limits,
        gauges,
    };
    serve_with_peers(endpoint, cluster, clients, None, shutdown).await
}

/// The client protocol's side of a server: who may connect, what serves them, their bounds.
pub struct ClientSide {
    /// The roles admitted on the client protocol ([`crate::ALPN`]).
    pub allowed_roles: Vec<Role>,
    /// What serves their requests.
    pub handler: Arc<dyn Handler>,
    /// Their bounds.
    pub limits: ServerLimits,
    /// Where what they hold is counted.
    pub gauges: Arc<ServerGauges>,
}

/// [`serve_with_gauges`], and connections of the peer protocol ([`crate::PEER_ALPN`]) on the
/// same endpoint handed to `peers` (a [`super::peer::QuicPeerTransport`]'s acceptor) once their
/// handshake is done. Without `peers`, a peer connection is closed with a reason. Peer
/// connections do not take client connection slots: only nodes in the address book are
/// admitted, one connection each.
pub async fn serve_with_peers(
    endpoint: quinn::Endpoint,
    cluster: String,
    clients: ClientSide,
    peers: Option<PeerAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ClientSide {
        allowed_roles,
        handler,
        limits,
        gauges,
    } = clients;
    let local = endpoint
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(%local, %cluster, ?allowed_roles, "serving");
    let handshake_timeout_ms = limits.handshake_timeout_ms;
    let request_bytes = Arc::new(Semaphore::new(permits(limits.request_bytes_max)));
    let answer_bytes = Arc::new(Semaphore::new(permits(limits.answer_bytes_max)));
    let shared = Arc::new(Shared {
        cluster,
        peers,
        allowed_roles,
        handler,
        connections: Arc::new(Semaphore::new(limits.connections_max as usize)),
        limits,
        gauges,
        handshakes: Mutex::new(Handshakes {
            next_seq: 0,
            by_seq: BTreeMap::new(),
        }),
        by_identity: Mutex::new(BTreeMap::new()),
        request_bytes,
        answer_bytes,
    });
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let incoming = tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { break };
        let remote = incoming.remote_address();
        if shared.connections.available_permits() == 0 {
            // No slot would be free after the handshake: do not spend one on it.
            shared.gauges.bump(&shared.gauges.connections_refused_busy);
            warn!(%remote, connections_max = shared.limits.connections_max, "connection refused: too many connections");
            incoming.refuse();
            continue;
        }
        let Some((incoming, place, cancel)) = shared.place_for(incoming) else {
            continue;
        };
        let span = info_span!("connection", %remote, peer = tracing::field::Empty);
        let task = serve_connection(
            shared.clone(),
            incoming,
            place,
            cancel,
            remote,
            shutdown.clone(),
        );
        tokio::spawn(task.instrument(span));
    }
    info!(%local, "shutting down");
    endpoint.close(
        quinn::VarInt::from_u32(CLOSE_SHUTDOWN),
        b"server shutting down",
    );
    // Give peers the close frame; a peer that never answers does not hold shutdown hostage.
    let _ = tokio::time::timeout(
        Duration::from_millis(handshake_timeout_ms),
        endpoint.wait_idle(),
    )
    .await;
}

/// One connection: handshake, identity and role checks, then one task per stream.
async fn serve_connection(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    place: HandshakePlace,
    cancel: oneshot::Receiver<()>,
    remote: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(connection) = handshake(&shared, incoming, cancel, remote).await else {
        return;
    };
    drop(place);
    if super::peer::is_peer_protocol(&connection) {
        match &shared.peers {
            Some(peers) => peers.accept(connection, remote),
            None => {
                let reason = "the peer protocol is not served on this listener";
                warn!(%remote, reason, "connection refused");
                connection.close(
                    quinn::VarInt::from_u32(CLOSE_ROLE_NOT_ALLOWED),
                    reason.as_bytes(),
                );
            }
        }
        return;
    }
    let Some((peer, _slot)) = admit(&shared, &connection, remote) else {
        return;
    };
    tracing::Span::current().record("peer", tracing::field::display(&peer));
    debug!("connection accepted");
    let peer = Arc::new(peer);
    let budgets = Arc::new(ConnectionBudgets {
        in_flight: Arc::new(Semaphore::new(
            shared.limits.in_flight_per_connection_max.max(1) as usize,
        )),
        request_bytes: Arc::new(Semaphore::new(permits(
            shared.limits.request_bytes_per_connection_max,
        ))),
        answer_bytes: Arc::new(Semaphore::new(permits(
            shared.limits.answer_bytes_per_connection_max,
        ))),
    });
    loop {
        let accepted = tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_ok() && !*shutdown.borrow_and_update() {
                    continue;
                }
                connection.close(quinn::VarInt::from_u32(CLOSE_SHUTDOWN), b"server shutting down");
                return;
            }
            accepted = connection.accept_bi() => accepted,
        };
        match accepted {
            Ok((send, recv)) => {
                let span = info_span!("stream", stream_id = %send.id());
                let task = serve_stream(shared.clone(), peer.clone(), budgets.clone(), send, recv);
                tokio::spawn(task.instrument(span));
            }
            Err(error) => {
                debug!(reason = %describe_connection_error(&error), "connection ended");
                return;
            }
        }
    }
}

/// Completes the TLS handshake within the limit, unless evicted; a failure is logged with the
/// rustls reason. Dropping the `Connecting` abandons the handshake.
async fn handshake(
    shared: &Shared,
    incoming: quinn::Incoming,
    mut cancel: oneshot::Receiver<()>,
    remote: SocketAddr,
) -> Option<quinn::Connection> {
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(error) => {
            shared.gauges.bump(&shared.gauges.handshakes_failed);
            warn!(%remote, reason = %describe_connection_error(&error), "connection not accepted");
            return None;
        }
    };
    let limit = Duration::from_millis(shared.limits.handshake_timeout_ms);
    tokio::select! {
        biased;
        _ = &mut cancel => {
            debug!(%remote, "handshake evicted");
            None
        }
        done = tokio::time::timeout(limit, connecting) => match done {
            Ok(Ok(connection)) => Some(connection),
            Ok(Err(error)) => {
                shared.gauges.bump(&shared.gauges.handshakes_failed);
                warn!(%remote, reason = %describe_connection_error(&error), "tls handshake failed");
                None
            }
            Err(_) => {
                shared.gauges.bump(&shared.gauges.handshakes_timed_out);
                warn!(%remote, timeout_ms = shared.limits.handshake_timeout_ms, "tls handshake timed out");
                None
            }
        },
    }
}

/// Reads the peer's identity, checks cluster and role and takes a connection slot; refuses the
/// connection with a reason.
fn admit(
    shared: &Arc<Shared>,
    connection: &quinn::Connection,
    remote: SocketAddr,
) -> Option<(Identity, ConnectionSlot)> {
    let refusal = match connection_identity(connection) {
        Err(error) => Err((CLOSE_BAD_IDENTITY, None, error.to_string())),
        Ok(peer) if peer.cluster != shared.cluster => {
            let reason = format!(
                "cluster {} not served here (this is cluster {})",
                peer.cluster, shared.cluster
            );
            Err((CLOSE_WRONG_CLUSTER, Some(peer), reason))
        }
        Ok(peer) if !shared.allowed_roles.contains(&peer.role) => {
            let reason = format!("role {} not allowed here", peer.role);
            Err((CLOSE_ROLE_NOT_ALLOWED, Some(peer), reason))
        }
        Ok(peer) => match shared.slot_for(&peer) {
            Ok(slot) => Ok((peer, slot)),
            Err((code, reason)) => Err((code, Some(peer), reason)),
        },
    };
    match refusal {
        Ok(admitted) => Some(admitted),
        Err((code, peer, reason)) => {
            let peer = peer
                .map(|p| p.to_string())
                .unwrap_or_else(|| "unknown".to_owned());
            warn!(%remote, %peer, %reason, "connection refused");
            connection.close(quinn::VarInt::from_u32(code), reason.as_bytes());
            None
        }
    }
}

/// The bounds one connection shares over its streams.
struct ConnectionBudgets {
    /// Handler calls running at once.
    in_flight: Arc<Semaphore>,
    /// Bytes of requests being read or handled.
    request_bytes: Arc<Semaphore>,
    /// Bytes of answers not yet taken by the client.
    answer_bytes: Arc<Semaphore>,
}

/// Semaphore permits standing for a byte budget (tokio's limit is far above any memory).
pub(super) fn permits(bytes: u64) -> usize {
    usize::try_from(bytes)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS)
}

/// Which byte budget a [`Held`] is from.
#[derive(Clone, Copy, Debug)]
pub(super) enum Budget {
    Request,
    Answer,
}

impl ServerGauges {
    fn held(&self, budget: Budget) -> (&AtomicU64, &AtomicU64, &AtomicU64) {
        match budget {
            Budget::Request => (
                &self.request_bytes,
                &self.request_bytes_peak,
                &self.reads_paused_for_requests,
            ),
            Budget::Answer => (
                &self.answer_bytes,
                &self.answer_bytes_peak,
                &self.reads_paused_for_answers,
            ),
        }
    }
}

/// The two byte pools one reservation draws from: a connection's and the node's.
pub(super) struct BytePools<'a> {
    /// Where the reservation is counted.
    pub(super) gauges: &'a Arc<ServerGauges>,
    /// The connection's pool.
    pub(super) connection: &'a Arc<Semaphore>,
    /// The node's pool.
    pub(super) node: &'a Arc<Semaphore>,
    /// The smaller pool's size: a larger reservation is cut to it.
    pub(super) cap: u64,
}

impl BytePools<'_> {
    fn permits_for(&self, bytes: u64) -> u32 {
        bytes.min(self.cap).min(u64::from(u32::MAX)) as u32
    }
}

/// Bytes held from one connection's budget and the node's at once; released when dropped.
pub(super) struct Held {
    connection: OwnedSemaphorePermit,
    node: OwnedSemaphorePermit,
    gauges: Arc<ServerGauges>,
    budget: Budget,
}

impl Held {
    /// Waits until `bytes` fit both the connection's budget and the node's, then holds them.
    /// Waiting is how a stream stops reading: QUIC flow control then stops its client. A
    /// reservation larger than a budget is cut to the budget (validation keeps budgets above
    /// the largest frame). `None` if a budget is closed.
    async fn reserve(
        shared: &Shared,
        connection: &Arc<Semaphore>,
        budget: Budget,
        bytes: u64,
    ) -> Option<Held> {
        let (node, connection_max, node_max) = match budget {
            Budget::Request => (
                &shared.request_bytes,
                shared.limits.request_bytes_per_connection_max,
                shared.limits.request_bytes_max,
            ),
            Budget::Answer => (
                &shared.answer_bytes,
                shared.limits.answer_bytes_per_connection_max,
                shared.limits.answer_bytes_max,
            ),
        };
        let pools = BytePools {
            gauges: &shared.gauges,
            connection,
            node,
            cap: connection_max.min(node_max),
        };
        Held::reserve_from(&pools, budget, bytes).await
    }

    /// [`Held::reserve`] from any pair of pools (the peer transport's per-lane budgets too).
    pub(super) async fn reserve_from(
        pools: &BytePools<'_>,
        budget: Budget,
        bytes: u64,
    ) -> Option<Held> {
        let n = pools.permits_for(bytes);
        let gauges = pools.gauges;
        let (current, peak, paused) = gauges.held(budget);
        // A reservation that has to wait is counted once, when it finds a budget spent (trying
        // first, so a budget taken between a look and the wait is counted too).
        let mut counted = false;
        let mut acquire =
            async |semaphore: &Arc<Semaphore>| match semaphore.clone().try_acquire_many_owned(n) {
                Ok(permit) => Some(permit),
                Err(TryAcquireError::Closed) => None,
                Err(TryAcquireError::NoPermits) => {
                    if !counted {
                        counted = true;
                        gauges.bump(paused);
                        trace!(
                            ?budget,
                            bytes = n,
                            "byte budget spent; stream reading paused"
                        );
                    }
                    semaphore.clone().acquire_many_owned(n).await.ok()
                }
            };
        let connection = acquire(pools.connection).await?;
        let node = acquire(pools.node).await?;
        gauges.add_with_peak(current, peak, u64::from(n));
        Some(Held {
            connection,
            node,
            gauges: gauges.clone(),
            budget,
        })
    }

    /// Holds `bytes` from both pools if they fit now; never waits. For a reader that must not
    /// leave data unread in the connection's flow-control window (the peer transport, where a
    /// bulk stream waiting for a budget could otherwise hold up a vote behind it).
    pub(super) fn try_reserve_from(
        pools: &BytePools<'_>,
        budget: Budget,
        bytes: u64,
    ) -> Option<Held> {
        let n = pools.permits_for(bytes);
        let gauges = pools.gauges;
        let (current, peak, paused) = gauges.held(budget);
        let taken = pools
            .connection
            .clone()
            .try_acquire_many_owned(n)
            .and_then(|connection| {
                let node = pools.node.clone().try_acquire_many_owned(n)?;
                Ok((connection, node))
            });
        let Ok((connection, node)) = taken else {
            gauges.bump(paused);
            return None;
        };
        gauges.add_with_peak(current, peak, u64::from(n));
        Some(Held {
            connection,
            node,
            gauges: gauges.clone(),
            budget,
        })
    }

    pub(super) fn bytes(&self) -> usize {
        self.connection.num_permits()
    }

    /// Gives back what is held beyond `bytes`.
    fn shrink_to(&mut self, bytes: usize) {
        let extra = self.bytes().saturating_sub(bytes);
        if extra == 0 {
            return;
        }
        drop(self.connection.split(extra));
        drop(self.node.split(extra));
        self.gauges
            .sub(self.gauges.held(self.budget).0, extra as u64);
    }

    /// Waits until `bytes` in all are held (no more than either budget).
    async fn grow_to(&mut self, bytes: usize) {
        let connection = self.connection.semaphore().clone();
        let node = self.node.semaphore().clone();
        let extra = bytes.saturating_sub(self.bytes());
        let Ok(extra) = u32::try_from(extra) else {
            return;
        };
        if extra == 0 {
            return;
        }
        let (current, peak, paused) = self.gauges.held(self.budget);
        if connection.available_permits() < extra as usize
            || node.available_permits() < extra as usize
        {
            self.gauges.bump(paused);
        }
        let (Ok(more_connection), Ok(more_node)) = (
            connection.acquire_many_owned(extra).await,
            node.acquire_many_owned(extra).await,
        ) else {
            return;
        };
        self.connection.merge(more_connection);
        self.node.merge(more_node);
        self.gauges.add_with_peak(current, peak, u64::from(extra));
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let n = self.bytes() as u64;
        self.gauges.sub(self.gauges.held(self.budget).0, n);
    }
}

/// An encoded answer on its way to the stream's writer, holding its in-flight permit and its
/// answer bytes until written.
type Outgoing = (Vec<u8>, OwnedSemaphorePermit, Option<Held>);

/// One stream: a reader that starts handler calls and a writer that sends their responses.
async fn serve_stream(
    shared: Arc<Shared>,
    peer: Arc<Identity>,
    budgets: Arc<ConnectionBudgets>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    // Every queued response holds one of the connection's permits, so a channel as large as the
    // permit count never fills: responders use try_send and never wait.
    let (tx, rx) =
        mpsc::channel::<Outgoing>(shared.limits.in_flight_per_connection_max.max(1) as usize);
    tokio::join!(
        read_requests(&shared, peer, &budgets, recv, tx),
        write_responses(send, rx)
    );
    trace!("stream done");
}

/// Reads one request frame within the frame deadline, holding its bytes from the request
/// budgets from the moment its header announces them; `Ok(None)` at the end of the stream.
async fn read_request<R>(
    shared: &Shared,
    budgets: &ConnectionBudgets,
    reader: &mut R,
) -> Result<Option<(Message, Held)>, NetError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let deadline = Some(Duration::from_millis(shared.limits.frame_timeout_ms));
    let Some(header) = read_header(reader, shared.limits.frame_bytes_max, deadline).await? else {
        return Ok(None);
    };
    let bytes = (HEADER_LEN as u64) + u64::from(header.body_len);
    let held = Held::reserve(shared, &budgets.request_bytes, Budget::Request, bytes)
        .await
        .ok_or_else(|| NetError::Closed {
            reason: "server shutting down".to_owned(),
        })?;
    let message = read_body(reader, &header, deadline).await?;
    Ok(Some((message, held)))
}

/// Reads request frames and starts a handler call for each; returns at the end of the stream.
async fn read_requests(
    shared: &Arc<Shared>,
    peer: Arc<Identity>,
    budgets: &ConnectionBudgets,
    recv: quinn::RecvStream,
    tx: mpsc::Sender<Outgoing>,
) {
    let frame_bytes_max = shared.limits.frame_bytes_max;
    let mut reader = BufReader::with_capacity(STREAM_READ_BUFFER_BYTES, recv);
    loop {
        let read = read_request(shared, budgets, &mut reader).await;
        if tx.is_closed() {
            return; // the writer failed: nobody can answer on this stream any more
        }
        let (message, request) = match read {
            Ok(Some(read)) => read,
            Ok(None) => return,
            Err(error @ (NetError::Frame(_) | NetError::Timeout { .. })) => {
                let (code, text) = match &error {
                    NetError::Frame(error) => {
                        (frame_error_code(error), format!("bad frame: {error}"))
                    }
                    other => {
                        shared.gauges.bump(&shared.gauges.frames_timed_out);
                        (ErrorCode::BadRequest, format!("{other} (frame_timeout_ms)"))
                    }
                };
                warn!(%error, "bad frame; closing the stream");
                if let Ok(permit) = budgets.in_flight.clone().acquire_owned().await {
                    let mut bytes = Vec::new();
                    encode_response(&error_response(0, code, text), &mut bytes, frame_bytes_max);
                    let _ = tx.try_send((bytes, permit, None));
                }
                let _ = reader
                    .into_inner()
                    .stop(quinn::VarInt::from_u32(STREAM_FRAME_ERROR));
                return;
            }
            Err(error) => {
                debug!(%error, "stream read ended");
                return;
            }
        };
        let Ok(permit) = budgets.in_flight.clone().acquire_owned().await else {
            return;
        };
        let request_id = message.request_id();
        if !is_request(&message) {
            let text = format!("{:?} is not a request", message.kind());
            let mut bytes = Vec::new();
            let response = error_response(request_id, ErrorCode::BadRequest, text);
            encode_response(&response, &mut bytes, frame_bytes_max);
            let _ = tx.try_send((bytes, permit, None));
            continue;
        }
        let estimate = shared
            .handler
            .answer_bytes_estimate(&message, frame_bytes_max);
        let Some(answer) =
            Held::reserve(shared, &budgets.answer_bytes, Budget::Answer, estimate).await
        else {
            return;
        };
        let slot = ResponseSlot {
            tx: tx.clone(),
            permit: Some(permit),
            answer: Some(answer),
            request: Some(request),
            request_id,
            frame_bytes_max,
        };
        let call = shared.handler.handle(peer.clone(), message);
        tokio::spawn(async move { slot.complete(call.await).await }.in_current_span());
    }
}

/// Writes responses in completion order, batching whatever is ready into one write; releases
/// their permits and answer bytes once quinn has taken them; finishes the stream once the
/// reader and every handler call are done.
async fn write_responses(mut send: quinn::SendStream, mut rx: mpsc::Receiver<Outgoing>) {
    let mut batch = Vec::with_capacity(64);
    loop {
        if rx.recv_many(&mut batch, 64).await == 0 {
            let _ = send.finish();
            return;
        }
        let mut buffer = Vec::new();
        for (bytes, _, _) in &batch {
            buffer.extend_from_slice(bytes);
        }
        let written = send.write_chunk(buffer.into()).await;
        batch.clear();
        if let Err(error) = written {
            debug!(error = %super::io::write_error(error), "response write failed");
            return;
        }
    }
}

/// Encodes a response, replacing one that cannot be sent by an error response.
fn encode_response(message: &Message, buffer: &mut Vec<u8>, frame_bytes_max: u32) {
    let Err(error) = encode_frame_into(message, buffer, frame_bytes_max) else {
        return;
    };
    let request_id = message.request_id();
    warn!(request_id, %error, "response not sendable; answering with an error");
    let code = match error {
        NetError::Frame(_) => ErrorCode::TooLarge,
        _ => ErrorCode::Internal,
    };
    let replacement = error_response(request_id, code, format!("response not sendable: {error}"));
    if let Err(error) = encode_frame_into(&replacement, buffer, frame_bytes_max) {
        error!(request_id, %error, "error response not sendable");
    }
}

/// An estimate of the encoded size of the answer to `request`, frame header included, and never
/// above a full frame: 128 bytes per produced record, the fetch's own `bytes_max` plus 64 KiB
/// for the event that may cross it, the stream name for metadata.
pub fn answer_bytes_estimate(request: &Message, frame_bytes_max: u32) -> u64 {
    let body = match request {
        Message::ProduceRequest(p) => 64 + 128 * p.records.len() as u64,
        Message::FetchRequest(f) => u64::from(f.bytes_max) + (64 << 10),
        Message::MetadataRequest(m) => 64 + m.stream.as_str().len() as u64,
        _ => 256,
    };
    HEADER_LEN as u64 + body.min(u64::from(frame_bytes_max))
}

fn error_response(request_id: u64, code: ErrorCode, message: String) -> Message {
    Message::Error(ErrorResponse {
        request_id,
        code,
        message,
    })
}

/// Where one handler call's response goes, with the call's in-flight permit, its request bytes
/// (held until the call ends) and its answer bytes (held until written). If the call panics or
/// is dropped before completing, the slot answers with an `Internal` error so the client is not
/// left waiting.
struct ResponseSlot {
    tx: mpsc::Sender<Outgoing>,
    permit: Option<OwnedSemaphorePermit>,
    answer: Option<Held>,
    request: Option<Held>,
    request_id: u64,
    frame_bytes_max: u32,
}

impl ResponseSlot {
    async fn complete(mut self, mut response: Message) {
        set_request_id(&mut response, self.request_id);
        let mut bytes = Vec::new();
        encode_response(&response, &mut bytes, self.frame_bytes_max);
        drop(response);
        self.request = None;
        if let Some(answer) = &mut self.answer {
            if bytes.len() > answer.bytes() {
                // Larger than estimated: the answer waits until its bytes fit the budgets.
                answer.grow_to(bytes.len()).await;
            } else {
                answer.shrink_to(bytes.len());
            }
        }
        self.send(bytes);
    }

    fn send(&mut self, bytes: Vec<u8>) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) =
            self.tx.try_send((bytes, permit, self.answer.take()))
        {
            error!(
                request_id = self.request_id,
                "response queue full despite permits; response dropped"
            );
        }
    }
}

impl Drop for ResponseSlot {
    fn drop(&mut self) {
        if self.permit.is_some() {
            warn!(request_id = self.request_id, "handler did not complete");
            let message = format!("handler for request {} failed", self.request_id);
            let response = error_response(self.request_id, ErrorCode::Internal, message);
            let mut bytes = Vec::new();
            encode_response(&response, &mut bytes, self.frame_bytes_max);
            self.send(bytes);
        }
    }
}
