//! A pipelining client: one connection to the first reachable node, one bidi stream, many
//! requests in flight on it.
//!
//! [`Client::call`] assigns the `request_id`, encodes the frame in the caller's task and hands it
//! to the stream's writer task, which batches whatever is queued into one write. A reader task
//! hands each response to the waiter registered under its `request_id`. Callers never hold a lock
//! across an await. A `Client` is a handle: clones share the connection, and the connection is
//! closed when the last clone is dropped.
//!
//! What this client does not do: reconnect or retry. When the connection or stream fails, every
//! waiting and later call fails with the same error (for example the server's refusal reason);
//! build a new client to try again.

use super::io::{encode_frame_into, read_frame, set_request_id, write_error};
use super::tls::{client_config, peer_identity, transport, TlsMaterial};
use super::{connection_error, NetError, CLOSE_DONE};
use crate::event::Record;
use crate::ids::{Identity, StreamName};
use crate::msg::{
    FetchRequest, FetchResponse, Message, MetadataRequest, MetadataResponse, ProduceRequest,
    ProduceResponse,
};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::BufReader;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{debug, info_span, warn, Instrument};

/// How to reach and talk to a cluster.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// This endpoint's certificate, key and the cluster CA.
    pub material: TlsMaterial,
    /// The cluster the nodes must belong to.
    pub cluster: String,
    /// Node addresses as `host:port`, tried in order until one connects.
    pub addrs: Vec<String>,
    /// The name the server certificate must match; default: the host part of each address.
    pub server_name: Option<String>,
    /// Deadline of one connection attempt (resolution and handshake), per address.
    pub connect_timeout_ms: u64,
    /// Deadline of one request, from the call to its response.
    pub request_timeout_ms: u64,
    /// Requests in flight at once; more calls wait for a slot (within their deadline).
    pub in_flight_max: u32,
    /// Largest frame body sent or accepted, in bytes.
    pub frame_bytes_max: u32,
    /// A connection silent for this long is closed (keep-alives are sent at a third of it).
    pub idle_timeout_ms: u64,
}

impl ClientSettings {
    /// Settings with default bounds: 5 s connect, 30 s request, 256 in flight, 4 MiB frames,
    /// 30 s idle timeout.
    pub fn new(material: TlsMaterial, cluster: impl Into<String>, addrs: Vec<String>) -> Self {
        Self {
            material,
            cluster: cluster.into(),
            addrs,
            server_name: None,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
            in_flight_max: 256,
            frame_bytes_max: 4 << 20,
            idle_timeout_ms: 30_000,
        }
    }
}

/// A connection to one node with one pipelined request stream. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.addr)
            .field("server", &self.inner.server)
            .finish()
    }
}

struct Inner {
    connection: quinn::Connection,
    /// Kept so the endpoint outlives every clone of the client.
    _endpoint: quinn::Endpoint,
    addr: String,
    server: Identity,
    frames: mpsc::Sender<Bytes>,
    waiters: Arc<Waiters>,
    in_flight: Semaphore,
    next_request_id: AtomicU64,
    request_timeout: Duration,
    frame_bytes_max: u32,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.connection
            .close(quinn::VarInt::from_u32(CLOSE_DONE), b"client done");
    }
}

type Reply = oneshot::Sender<Result<Message, NetError>>;

/// Calls waiting for their response, and the error that ended the stream once it has.
#[derive(Default)]
struct Waiters {
    state: Mutex<WaitersState>,
}

#[derive(Default)]
struct WaitersState {
    by_request_id: HashMap<u64, Reply>,
    ended: Option<NetError>,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, WaitersState> {
        // A panic while holding this lock leaves the map consistent (each operation is one map
        // call), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn register(&self, request_id: u64, reply: Reply) -> Result<(), NetError> {
        let mut state = self.lock();
        if let Some(error) = &state.ended {
            return Err(error.clone());
        }
        state.by_request_id.insert(request_id, reply);
        Ok(())
    }

    fn remove(&self, request_id: u64) -> Option<Reply> {
        self.lock().by_request_id.remove(&request_id)
    }

    /// Fails every waiting call and every later one with `error`; the first error wins.
    fn end(&self, error: NetError) {
        let waiting = {
            let mut state = self.lock();
            let error = state.ended.get_or_insert(error).clone();
            state
                .by_request_id
                .drain()
                .map(|(_, reply)| (reply, error.clone()))
                .collect::<Vec<_>>()
        };
        for (reply, error) in waiting {
            let _ = reply.send(Err(error));
        }
    }

    fn ended(&self) -> Option<NetError> {
        self.lock().ended.clone()
    }
}

/// Removes a call's waiter when the call ends for any reason (answered, timed out, cancelled).
struct WaiterGuard<'a> {
    waiters: &'a Waiters,
    request_id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.waiters.remove(self.request_id);
    }
}

impl Client {
    /// Connects to the first address in `settings.addrs` that accepts, verifying that it is a
    /// node of `settings.cluster`, and opens the request stream.
    pub async fn connect(settings: &ClientSettings) -> Result<Client, NetError> {
        if settings.addrs.is_empty() {
            return Err(NetError::Connect {
                addr: "(none)".to_owned(),
                reason: "no node address given".to_owned(),
            });
        }
        let mut config = client_config(&settings.material, &settings.cluster)?;
        config.transport_config(Arc::new(transport(0, settings.idle_timeout_ms)?));
        let mut failures = Vec::new();
        for addr in &settings.addrs {
            let attempt = connect_one(settings, &config, addr);
            let deadline = Duration::from_millis(settings.connect_timeout_ms);
            let result = match tokio::time::timeout(deadline, attempt).await {
                Ok(result) => result,
                Err(_) => Err(NetError::Timeout {
                    what: format!("connect to {addr} after {} ms", settings.connect_timeout_ms),
                }),
            };
            match result {
                Ok(client) => return Ok(client),
                Err(error) => {
                    warn!(%addr, %error, "connect failed");
                    failures.push((addr, error));
                }
            }
        }
        if failures.len() == 1 {
            if let Some((_, error)) = failures.pop() {
                return Err(error);
            }
        }
        let reason = failures
            .iter()
            .map(|(addr, error)| format!("{addr}: {error}"))
            .collect::<Vec<_>>()
            .join("; ");
        Err(NetError::Connect {
            addr: format!("all {} node addresses", failures.len()),
            reason,
        })
    }

    /// Sends one request and waits for its response. The `request_id` is assigned here (what the
    /// caller put is overwritten). An [`crate::msg::ErrorResponse`] becomes [`NetError::Remote`].
    pub async fn call(&self, request: Message) -> Result<Message, NetError> {
        let inner = &*self.inner;
        match tokio::time::timeout(inner.request_timeout, self.call_inner(request)).await {
            Ok(Ok(Message::Error(error))) => Err(NetError::Remote {
                code: error.code,
                message: error.message,
            }),
            Ok(result) => result,
            Err(_) => Err(NetError::Timeout {
                what: format!(
                    "request to {} after {} ms",
                    inner.addr,
                    inner.request_timeout.as_millis()
                ),
            }),
        }
    }

    async fn call_inner(&self, mut request: Message) -> Result<Message, NetError> {
        let inner = &*self.inner;
        let _permit = inner.in_flight.acquire().await.map_err(|_| self.ended())?;
        // Ids start at 1: 0 marks a server error about a frame it could not attribute.
        let request_id = inner.next_request_id.fetch_add(1, Ordering::Relaxed);
        set_request_id(&mut request, request_id);
        let mut frame = Vec::new();
        encode_frame_into(&request, &mut frame, inner.frame_bytes_max)?;
        let (reply, response) = oneshot::channel();
        inner.waiters.register(request_id, reply)?;
        let _guard = WaiterGuard {
            waiters: &inner.waiters,
            request_id,
        };
        inner
            .frames
            .send(frame.into())
            .await
            .map_err(|_| self.ended())?;
        response.await.map_err(|_| self.ended())?
    }

    /// The error that ended the stream, or a generic one.
    fn ended(&self) -> NetError {
        self.inner
            .waiters
            .ended()
            .unwrap_or_else(|| NetError::Closed {
                reason: "client stream ended".to_owned(),
            })
    }

    /// Appends records to a stream.
    pub async fn produce(
        &self,
        stream: StreamName,
        records: Vec<Record>,
    ) -> Result<ProduceResponse, NetError> {
        match self
            .call(Message::ProduceRequest(ProduceRequest {
                request_id: 0,
                stream,
                records,
            }))
            .await?
        {
            Message::ProduceResponse(response) => Ok(response),
            other => Err(unexpected("ProduceResponse", &other)),
        }
    }

    /// Reads a partition.
    pub async fn fetch(&self, request: FetchRequest) -> Result<FetchResponse, NetError> {
        match self.call(Message::FetchRequest(request)).await? {
            Message::FetchResponse(response) => Ok(response),
            other => Err(unexpected("FetchResponse", &other)),
        }
    }

    /// Asks how a stream is laid out.
    pub async fn metadata(&self, stream: StreamName) -> Result<MetadataResponse, NetError> {
        match self
            .call(Message::MetadataRequest(MetadataRequest {
                request_id: 0,
                stream,
            }))
            .await?
        {
            Message::MetadataResponse(response) => Ok(response),
            other => Err(unexpected("MetadataResponse", &other)),
        }
    }

    /// The node's identity, from its certificate.
    pub fn server(&self) -> &Identity {
        &self.inner.server
    }

    /// The address this client is connected to.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.connection.remote_address()
    }

    /// Closes the connection now; every clone's calls fail afterwards.
    pub fn close(&self) {
        self.inner
            .connection
            .close(quinn::VarInt::from_u32(CLOSE_DONE), b"client done");
    }
}

fn unexpected(expected: &str, got: &Message) -> NetError {
    NetError::Protocol {
        reason: format!(
            "expected a {expected}, got a {:?} for request {}",
            got.kind(),
            got.request_id()
        ),
    }
}

/// The host part of `host:port`, `[v6]:port` or a bare host.
pub(crate) fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, _port)) if !host.contains(':') => host,
        _ => addr,
    }
}

/// Resolves one `host:port` and tries each of its socket addresses in turn.
async fn connect_one(
    settings: &ClientSettings,
    config: &quinn::ClientConfig,
    addr: &str,
) -> Result<Client, NetError> {
    let resolved = tokio::net::lookup_host(addr)
        .await
        .map_err(|error| NetError::Connect {
            addr: addr.to_owned(),
            reason: format!("cannot resolve: {error}"),
        })?;
    let server_name = settings
        .server_name
        .as_deref()
        .unwrap_or_else(|| host_of(addr));
    let mut last = NetError::Connect {
        addr: addr.to_owned(),
        reason: "resolved to no address".to_owned(),
    };
    for socket_addr in resolved {
        match connect_socket(settings, config, addr, socket_addr, server_name).await {
            Ok(client) => return Ok(client),
            Err(error) => {
                debug!(%addr, %socket_addr, %error, "connect attempt failed");
                last = error;
            }
        }
    }
    Err(last)
}

async fn connect_socket(
    settings: &ClientSettings,
    config: &quinn::ClientConfig,
    addr: &str,
    socket_addr: SocketAddr,
    server_name: &str,
) -> Result<Client, NetError> {
    let bind: SocketAddr = match socket_addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let endpoint = quinn::Endpoint::client(bind).map_err(|error| NetError::Io {
        what: format!("binding a client socket on {bind}"),
        source: Arc::new(error),
    })?;
    let connecting = endpoint
        .connect_with(config.clone(), socket_addr, server_name)
        .map_err(|error| NetError::Connect {
            addr: addr.to_owned(),
            reason: error.to_string(),
        })?;
    let connection = connecting
        .await
        .map_err(|error| connection_error(addr, &error))?;
    let server = peer_identity(&connection, &settings.cluster)?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|error| connection_error(addr, &error))?;
    let in_flight_max = settings.in_flight_max.max(1) as usize;
    let (frames, frames_rx) = mpsc::channel(in_flight_max);
    let waiters = Arc::new(Waiters::default());
    let span = info_span!("client", remote = %socket_addr, peer = %server);
    let read = read_responses(
        recv,
        waiters.clone(),
        connection.clone(),
        addr.to_owned(),
        settings.frame_bytes_max,
    );
    tokio::spawn(read.instrument(span.clone()));
    let write = write_requests(
        send,
        frames_rx,
        waiters.clone(),
        connection.clone(),
        addr.to_owned(),
    );
    tokio::spawn(write.instrument(span));
    let inner = Inner {
        connection,
        _endpoint: endpoint,
        addr: addr.to_owned(),
        server,
        frames,
        waiters,
        in_flight: Semaphore::new(in_flight_max),
        next_request_id: AtomicU64::new(1),
        request_timeout: Duration::from_millis(settings.request_timeout_ms),
        frame_bytes_max: settings.frame_bytes_max,
    };
    Ok(Client {
        inner: Arc::new(inner),
    })
}

/// Prefers the connection's close reason (e.g. the server's refusal) over a stream error.
fn stream_end(connection: &quinn::Connection, addr: &str, error: NetError) -> NetError {
    match connection.close_reason() {
        Some(reason) => connection_error(addr, &reason),
        None => error,
    }
}

/// Hands each response to its waiter until the stream ends, then fails whoever still waits.
async fn read_responses(
    recv: quinn::RecvStream,
    waiters: Arc<Waiters>,
    connection: quinn::Connection,
    addr: String,
    frame_bytes_max: u32,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, recv);
    let error = loop {
        match read_frame(&mut reader, frame_bytes_max).await {
            Ok(Some(Message::Error(error))) if error.request_id == 0 => {
                // The server could not attribute a frame to a request and is ending the stream.
                break NetError::Remote {
                    code: error.code,
                    message: error.message,
                };
            }
            Ok(Some(response)) => {
                let request_id = response.request_id();
                match waiters.remove(request_id) {
                    Some(reply) => {
                        let _ = reply.send(Ok(response));
                    }
                    None => {
                        warn!(request_id, kind = ?response.kind(), "response for no waiting request ignored")
                    }
                }
            }
            Ok(None) => {
                break NetError::Closed {
                    reason: format!("{addr} finished the response stream"),
                }
            }
            Err(error) => break error,
        }
    };
    let error = stream_end(&connection, &addr, error);
    debug!(%error, "response stream ended");
    waiters.end(error);
}

/// Writes queued request frames, batching whatever is ready into one write.
async fn write_requests(
    mut send: quinn::SendStream,
    mut frames: mpsc::Receiver<Bytes>,
    waiters: Arc<Waiters>,
    connection: quinn::Connection,
    addr: String,
) {
    let mut batch = Vec::with_capacity(64);
    loop {
        if frames.recv_many(&mut batch, 64).await == 0 {
            let _ = send.finish();
            return;
        }
        if let Err(error) = send.write_all_chunks(&mut batch).await {
            let error = stream_end(&connection, &addr, write_error(error));
            debug!(%error, "request stream ended");
            waiters.end(error);
            return;
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_part_of_addresses() {
        // Checks the default server name taken from the forms of node addresses.
        assert_eq!(host_of("127.0.0.1:4433"), "127.0.0.1");
        assert_eq!(host_of("[::1]:4433"), "::1");
        assert_eq!(host_of("node-1.example:4433"), "node-1.example");
        assert_eq!(host_of("node-1"), "node-1");
        assert_eq!(host_of("::1"), "::1");
    }
}
