//! A generic request/response server: the node supplies a [`Handler`], this module does the rest.
//!
//! One task per connection (at most `connections_max`; extra connections are refused before the
//! handshake). After the handshake the peer's identity is read from its certificate; a peer of
//! another cluster or of a role not allowed here is closed with a `CLOSE_*` code and a reason.
//! Each bidi stream carries request frames; up to `in_flight_per_connection_max` handler calls of
//! a connection run at once, their responses are written in completion order by the stream's
//! single writer, each carrying its request's `request_id`. A bad frame gets an
//! [`ErrorResponse`] with `request_id` 0 and ends that stream only.
//!
//! What this module does not do: authorisation beyond the role (the handler checks ACLs), and
//! retries (a client retries on a new stream or connection).

use super::io::{encode_frame_into, is_request, read_frame, set_request_id};
use super::tls::connection_identity;
use super::{
    describe_connection_error, frame_error_code, NetError, CLOSE_BAD_IDENTITY,
    CLOSE_ROLE_NOT_ALLOWED, CLOSE_SHUTDOWN, CLOSE_WRONG_CLUSTER, STREAM_FRAME_ERROR,
};
use crate::ids::{Identity, Role};
use crate::msg::{ErrorCode, ErrorResponse, Message};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::BufReader;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, error, info, info_span, trace, warn, Instrument};

/// Serves requests from authenticated peers.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request from an authenticated peer and returns its response message.
    fn handle(
        &self,
        peer: Arc<Identity>,
        request: Message,
    ) -> Pin<Box<dyn Future<Output = Message> + Send + 'static>>;
}

/// Bounds of one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest frame body accepted or sent, in bytes.
    pub frame_bytes_max: u32,
    /// Handler calls running at once per connection, over all its streams.
    pub in_flight_per_connection_max: u32,
    /// Connections served at once; more are refused.
    pub connections_max: u32,
    /// Bidi streams a peer may have open at once per connection.
    pub streams_per_connection_max: u32,
    /// A connection silent for this long is closed (keep-alives are sent at a third of it).
    pub idle_timeout_ms: u64,
    /// A handshake not complete after this long is abandoned.
    pub handshake_timeout_ms: u64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            frame_bytes_max: 4 << 20,
            in_flight_per_connection_max: 256,
            connections_max: 1024,
            streams_per_connection_max: 16,
            idle_timeout_ms: 30_000,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// What every connection task of one server shares.
struct Shared {
    cluster: String,
    allowed_roles: Vec<Role>,
    handler: Arc<dyn Handler>,
    limits: ServerLimits,
}

/// Serves `endpoint` (built with [`super::server_config`]) until `shutdown` turns true or its
/// sender is dropped, then closes every connection with [`CLOSE_SHUTDOWN`].
pub async fn serve(
    endpoint: quinn::Endpoint,
    cluster: String,
    allowed_roles: Vec<Role>,
    handler: Arc<dyn Handler>,
    limits: ServerLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = endpoint
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(%local, %cluster, ?allowed_roles, "serving");
    let connections = Arc::new(Semaphore::new(limits.connections_max as usize));
    let handshake_timeout_ms = limits.handshake_timeout_ms;
    let shared = Arc::new(Shared {
        cluster,
        allowed_roles,
        handler,
        limits,
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
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            warn!(%remote, connections_max = shared.limits.connections_max, "connection refused: too many connections");
            incoming.refuse();
            continue;
        };
        let span = info_span!("connection", %remote, peer = tracing::field::Empty);
        let task = serve_connection(shared.clone(), incoming, remote, shutdown.clone());
        tokio::spawn(
            async move {
                task.await;
                drop(permit);
            }
            .instrument(span),
        );
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
    remote: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(connection) = handshake(&shared, incoming, remote).await else {
        return;
    };
    let Some(peer) = admit(&shared, &connection, remote) else {
        return;
    };
    tracing::Span::current().record("peer", tracing::field::display(&peer));
    debug!("connection accepted");
    let peer = Arc::new(peer);
    let in_flight = Arc::new(Semaphore::new(
        shared.limits.in_flight_per_connection_max.max(1) as usize,
    ));
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
                let task =
                    serve_stream(shared.clone(), peer.clone(), in_flight.clone(), send, recv);
                tokio::spawn(task.instrument(span));
            }
            Err(error) => {
                debug!(reason = %describe_connection_error(&error), "connection ended");
                return;
            }
        }
    }
}

/// Completes the TLS handshake within the limit; a failure is logged with the rustls reason.
async fn handshake(
    shared: &Shared,
    incoming: quinn::Incoming,
    remote: SocketAddr,
) -> Option<quinn::Connection> {
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(error) => {
            warn!(%remote, reason = %describe_connection_error(&error), "connection not accepted");
            return None;
        }
    };
    let limit = Duration::from_millis(shared.limits.handshake_timeout_ms);
    match tokio::time::timeout(limit, connecting).await {
        Ok(Ok(connection)) => Some(connection),
        Ok(Err(error)) => {
            warn!(%remote, reason = %describe_connection_error(&error), "tls handshake failed");
            None
        }
        Err(_) => {
            warn!(%remote, timeout_ms = shared.limits.handshake_timeout_ms, "tls handshake timed out");
            None
        }
    }
}

/// Reads the peer's identity and checks cluster and role; refuses the connection with a reason.
fn admit(shared: &Shared, connection: &quinn::Connection, remote: SocketAddr) -> Option<Identity> {
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
        Ok(peer) => Ok(peer),
    };
    match refusal {
        Ok(peer) => Some(peer),
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

/// A response on its way to the stream's writer, holding the in-flight permit until written.
type Outgoing = (Message, OwnedSemaphorePermit);

/// One stream: a reader that starts handler calls and a writer that sends their responses.
async fn serve_stream(
    shared: Arc<Shared>,
    peer: Arc<Identity>,
    in_flight: Arc<Semaphore>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    // Every queued response holds one of the connection's permits, so a channel as large as the
    // permit count never fills: responders use try_send and never wait.
    let (tx, rx) =
        mpsc::channel::<Outgoing>(shared.limits.in_flight_per_connection_max.max(1) as usize);
    let frame_bytes_max = shared.limits.frame_bytes_max;
    tokio::join!(
        read_requests(&shared, peer, in_flight, recv, tx),
        write_responses(send, rx, frame_bytes_max)
    );
    trace!("stream done");
}

/// Reads request frames and starts a handler call for each; returns at the end of the stream.
async fn read_requests(
    shared: &Shared,
    peer: Arc<Identity>,
    in_flight: Arc<Semaphore>,
    recv: quinn::RecvStream,
    tx: mpsc::Sender<Outgoing>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, recv);
    loop {
        let read = read_frame(&mut reader, shared.limits.frame_bytes_max).await;
        if tx.is_closed() {
            return; // the writer failed: nobody can answer on this stream any more
        }
        let message = match read {
            Ok(Some(message)) => message,
            Ok(None) => return,
            Err(NetError::Frame(error)) => {
                warn!(%error, "bad frame; closing the stream");
                if let Ok(permit) = in_flight.clone().acquire_owned().await {
                    let message =
                        error_response(0, frame_error_code(&error), format!("bad frame: {error}"));
                    let _ = tx.try_send((message, permit));
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
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let request_id = message.request_id();
        if !is_request(&message) {
            let text = format!("{:?} is not a request", message.kind());
            let _ = tx.try_send((
                error_response(request_id, ErrorCode::BadRequest, text),
                permit,
            ));
            continue;
        }
        let slot = ResponseSlot {
            tx: tx.clone(),
            permit: Some(permit),
            request_id,
        };
        let call = shared.handler.handle(peer.clone(), message);
        tokio::spawn(async move { slot.complete(call.await) }.in_current_span());
    }
}

/// Writes responses in completion order, batching whatever is ready into one write; finishes
/// the stream once the reader and every handler call are done.
async fn write_responses(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<Outgoing>,
    frame_bytes_max: u32,
) {
    let mut batch = Vec::with_capacity(64);
    loop {
        if rx.recv_many(&mut batch, 64).await == 0 {
            let _ = send.finish();
            return;
        }
        let mut buffer = Vec::new();
        for (message, _permit) in batch.drain(..) {
            encode_response(&message, &mut buffer, frame_bytes_max);
        }
        if let Err(error) = send.write_chunk(buffer.into()).await {
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

fn error_response(request_id: u64, code: ErrorCode, message: String) -> Message {
    Message::Error(ErrorResponse {
        request_id,
        code,
        message,
    })
}

/// Where one handler call's response goes. If the call panics or is dropped before completing,
/// the slot answers with an `Internal` error so the client is not left waiting.
struct ResponseSlot {
    tx: mpsc::Sender<Outgoing>,
    permit: Option<OwnedSemaphorePermit>,
    request_id: u64,
}

impl ResponseSlot {
    fn complete(mut self, mut response: Message) {
        set_request_id(&mut response, self.request_id);
        self.send(response);
    }

    fn send(&mut self, response: Message) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send((response, permit)) {
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
            self.send(error_response(
                self.request_id,
                ErrorCode::Internal,
                message,
            ));
        }
    }
}
