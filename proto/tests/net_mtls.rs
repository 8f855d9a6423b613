//! Real QUIC + mutual TLS on loopback: `net::server::serve` with a tiny handler, `net::Client`
//! and raw quinn connections, with certificates generated here by rcgen (valid, expired, not yet
//! valid, from a foreign CA, of the wrong role). Every wait has a deadline, so a hang fails fast.
#![cfg(feature = "net")]

mod support;

use sluice_proto::frame::{FrameHeader, Kind, HEADER_LEN, MAGIC};
use sluice_proto::msg::{
    ErrorCode, ErrorResponse, FetchFrom, FetchRequest, FetchResponse, Message, MetadataRequest,
    MetadataResponse, ProduceResponse,
};
use sluice_proto::net::{
    self, Client, ClientSettings, Handler, NetError, ServerGauges, ServerLimits, TlsMaterial,
};
#[cfg(feature = "testing")]
use sluice_proto::testing;
use sluice_proto::{
    BootEpoch, Event, Identity, Offset, PartitionId, Payload, Role, SensorId, StoredEvent,
    StreamName, UnixMillis,
};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{ca, ca_named, leaf_pem, Ca, Validity};
use tokio::sync::watch;

const CLUSTER: &str = "test";

/// Fails the test instead of hanging when `future` does not complete within 20 s.
async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .expect("deadline passed")
}

/// A leaf with identity `sluice://<cluster>/<role>/<name>`, loopback SANs and both EKUs, as
/// TLS material trusting `trusted`.
fn leaf(
    issuer: &Ca,
    trusted: &Ca,
    cluster: &str,
    role: Role,
    name: &str,
    validity: Validity,
) -> TlsMaterial {
    let identity = Identity::new(cluster, role, name).unwrap();
    let (cert, key) = leaf_pem(issuer, &identity, validity);
    TlsMaterial::from_pem(trusted.pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap()
}

fn valid(ca: &Ca, role: Role, name: &str) -> TlsMaterial {
    leaf(ca, ca, CLUSTER, role, name, Validity::Now)
}

/// Answers metadata with one partition (echoing the stream), produce with no outcomes, fetch of
/// the stream `big` with one event of `bytes_max` payload bytes, other fetches with
/// UnknownStream, and panics on the stream named `panic`. Records every peer it saw.
#[derive(Default)]
struct TestHandler {
    peers: Mutex<Vec<Identity>>,
}

impl Handler for TestHandler {
    fn handle(
        &self,
        peer: Arc<Identity>,
        request: Message,
    ) -> Pin<Box<dyn Future<Output = Message> + Send + 'static>> {
        self.peers.lock().unwrap().push((*peer).clone());
        Box::pin(async move {
            match request {
                Message::MetadataRequest(m) => {
                    assert_ne!(m.stream.as_str(), "panic", "handler asked to panic");
                    // Yield a request-dependent number of times so responses complete out of order.
                    for _ in 0..(m.request_id % 7) {
                        tokio::task::yield_now().await;
                    }
                    Message::MetadataResponse(MetadataResponse {
                        request_id: m.request_id,
                        stream: m.stream,
                        n_partitions: 1,
                    })
                }
                Message::FetchRequest(f) if f.stream.as_str() == "big" => {
                    Message::FetchResponse(big_fetch_answer(&f))
                }
                Message::ProduceRequest(p) => Message::ProduceResponse(ProduceResponse {
                    request_id: p.request_id,
                    outcomes: vec![],
                }),
                other => Message::Error(ErrorResponse {
                    request_id: other.request_id(),
                    code: ErrorCode::UnknownStream,
                    message: "no such stream".to_owned(),
                }),
            }
        })
    }
}

fn big_fetch_answer(request: &FetchRequest) -> FetchResponse {
    let event = Event {
        producer: Identity::new(CLUSTER, Role::Edge, "pi-01").unwrap(),
        sensor: SensorId::new("s").unwrap(),
        boot_epoch: BootEpoch(1),
        seq: 0,
        device_time: UnixMillis(0),
        received_time: UnixMillis(0),
        payload: Payload::Bytes(vec![7; request.bytes_max as usize]),
    };
    FetchResponse {
        request_id: request.request_id,
        partition: request.partition,
        events: vec![StoredEvent {
            offset: Offset(0),
            event,
        }],
        next_offset: Offset(1),
        high_watermark: Offset(1),
        log_start: Offset(0),
    }
}

struct Server {
    addr: SocketAddr,
    handler: Arc<TestHandler>,
    gauges: Arc<ServerGauges>,
    _shutdown: watch::Sender<bool>,
}

fn start(material: &TlsMaterial, allowed_roles: Vec<Role>) -> Server {
    let limits = ServerLimits {
        handshake_timeout_ms: 5_000,
        ..ServerLimits::default()
    };
    start_with(material, allowed_roles, limits)
}

fn start_with(material: &TlsMaterial, allowed_roles: Vec<Role>, limits: ServerLimits) -> Server {
    let config = net::server_config(material, CLUSTER, &limits).unwrap();
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let handler = Arc::new(TestHandler::default());
    let gauges = Arc::new(ServerGauges::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let served = net::serve_with_gauges(
        endpoint,
        CLUSTER.to_owned(),
        allowed_roles,
        handler.clone(),
        limits,
        gauges.clone(),
        shutdown_rx,
    );
    tokio::spawn(served);
    Server {
        addr,
        handler,
        gauges,
        _shutdown: shutdown,
    }
}

fn start_node(ca: &Ca) -> Server {
    start(&valid(ca, Role::Node, "n1"), vec![Role::Edge, Role::Admin])
}

fn settings(material: TlsMaterial, server: SocketAddr) -> ClientSettings {
    let mut settings = ClientSettings::new(material, CLUSTER, vec![server.to_string()]);
    settings.connect_timeout_ms = 5_000;
    settings.request_timeout_ms = 5_000;
    settings
}

fn stream(name: &str) -> StreamName {
    StreamName::new(name).unwrap()
}

/// Connects and makes one call; returns the first error, from connecting or from the call.
async fn connect_and_call(settings: &ClientSettings) -> Result<MetadataResponse, NetError> {
    let client = within(Client::connect(settings)).await?;
    within(client.metadata(stream("s"))).await
}

#[tokio::test]
async fn valid_edge_client_is_served_as_its_certificate_identity() {
    // Checks that an edge with a valid certificate gets responses, that the handler sees the
    // identity from the certificate, that error responses become NetError::Remote, and that a
    // handler that panics answers Internal instead of leaving the call waiting.
    let ca = ca();
    let server = start_node(&ca);
    let client = within(Client::connect(&settings(
        valid(&ca, Role::Edge, "pi-01"),
        server.addr,
    )))
    .await
    .unwrap();
    assert_eq!(
        client.server(),
        &Identity::new(CLUSTER, Role::Node, "n1").unwrap()
    );
    let response = within(client.metadata(stream("temps"))).await.unwrap();
    assert_eq!(
        (response.stream.as_str(), response.n_partitions),
        ("temps", 1)
    );
    assert_eq!(
        server.handler.peers.lock().unwrap()[0],
        Identity::new(CLUSTER, Role::Edge, "pi-01").unwrap()
    );
    let fetch = FetchRequest {
        request_id: 0,
        stream: stream("temps"),
        partition: PartitionId(0),
        from: FetchFrom::Earliest,
        events_max: 1,
        bytes_max: 1024,
        wait_ms: 0,
    };
    let error = within(client.fetch(fetch)).await.unwrap_err();
    assert!(
        matches!(
            error,
            NetError::Remote {
                code: ErrorCode::UnknownStream,
                ..
            }
        ),
        "{error}"
    );
    let error = within(client.metadata(stream("panic"))).await.unwrap_err();
    assert!(
        matches!(
            error,
            NetError::Remote {
                code: ErrorCode::Internal,
                ..
            }
        ),
        "{error}"
    );
    let response = within(client.produce(stream("temps"), vec![]))
        .await
        .unwrap();
    assert!(response.outcomes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_on_one_client_correlate() {
    // Checks that 256 calls in flight at once on one shared client all complete, each with the
    // response to its own request (the handler echoes the stream name and finishes out of order).
    let ca = ca();
    let server = start_node(&ca);
    let client = within(Client::connect(&settings(
        valid(&ca, Role::Admin, "ops"),
        server.addr,
    )))
    .await
    .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..256 {
        let client = client.clone();
        tasks.spawn(async move {
            let response = client.metadata(stream(&format!("s{i}"))).await.unwrap();
            assert_eq!(response.stream.as_str(), format!("s{i}"));
            response.request_id
        });
    }
    let mut request_ids = within(tasks.join_all()).await;
    request_ids.sort_unstable();
    request_ids.dedup();
    assert_eq!(request_ids.len(), 256);
}

#[tokio::test]
async fn client_from_foreign_ca_is_refused_and_server_keeps_serving() {
    // Checks that a client certificate from another CA, whether that CA has another name or the
    // same name, fails with an error saying so, and that the server then still serves a good
    // client.
    let ca = ca();
    let server = start_node(&ca);
    for foreign in [ca_named("other ca"), ca_named("test ca")] {
        let bad = leaf(
            &foreign,
            &ca,
            CLUSTER,
            Role::Edge,
            "intruder",
            Validity::Now,
        );
        let error = connect_and_call(&settings(bad, server.addr))
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("not issued by this cluster's ca"),
            "{error}"
        );
    }
    connect_and_call(&settings(valid(&ca, Role::Edge, "pi-01"), server.addr))
        .await
        .unwrap();
}

#[tokio::test]
async fn expired_and_not_yet_valid_client_certificates_are_refused() {
    // Checks that client certificates outside their validity window are refused with the
    // certificate-expired alert in the error, and that the server keeps serving.
    let ca = ca();
    let server = start_node(&ca);
    for validity in [Validity::Expired, Validity::NotYetValid] {
        let material = leaf(&ca, &ca, CLUSTER, Role::Edge, "old", validity);
        let error = connect_and_call(&settings(material, server.addr))
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("certificate expired or not yet valid"),
            "{error}"
        );
        assert!(
            matches!(
                &error,
                NetError::Handshake {
                    alert: net::AlertDescription::CertificateExpired,
                    by_peer: true,
                    ..
                }
            ),
            "{error:?}"
        );
    }
    connect_and_call(&settings(valid(&ca, Role::Edge, "pi-01"), server.addr))
        .await
        .unwrap();
}

#[cfg(feature = "testing")]
#[tokio::test]
async fn client_without_certificate_is_refused() {
    // Checks that a raw QUIC client offering no certificate is closed with the TLS
    // certificate_required alert (crypto error 0x100 + 116) and gets no response.
    let ca = ca();
    let server = start_node(&ca);
    let config = testing::client_config_without_certificate(&valid(&ca, Role::Edge, "x")).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = endpoint
        .connect_with(config, server.addr, "localhost")
        .unwrap();
    let closed = match within(connecting).await {
        Err(error) => error,
        Ok(connection) => within(connection.closed()).await,
    };
    match closed {
        quinn::ConnectionError::ConnectionClosed(close) => {
            assert_eq!(u64::from(close.error_code), 0x100 + 116)
        }
        other => panic!("unexpected close {other}"),
    }
    connect_and_call(&settings(valid(&ca, Role::Edge, "pi-01"), server.addr))
        .await
        .unwrap();
}

#[tokio::test]
async fn role_not_allowed_is_refused_with_reason() {
    // Checks that a node certificate used as a client where only edge and admin may connect is
    // closed with the role code, and that the reason text reaches the client's error.
    let ca = ca();
    let server = start_node(&ca);
    let error = connect_and_call(&settings(valid(&ca, Role::Node, "n2"), server.addr))
        .await
        .unwrap_err();
    match &error {
        NetError::Refused { code, reason } => {
            assert_eq!(*code, u64::from(net::CLOSE_ROLE_NOT_ALLOWED));
            assert_eq!(reason, "role node not allowed here");
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(error.to_string().contains("role node not allowed here"));
}

#[tokio::test]
async fn client_refuses_server_that_is_not_a_node_of_its_ca() {
    // Checks that the client refuses a server presenting an edge certificate of the right CA,
    // and a node certificate from a foreign CA, naming the reason in the error.
    let ca = ca();
    let foreign = ca_named("other ca");
    let edge_server = start(&valid(&ca, Role::Edge, "fake-node"), vec![Role::Edge]);
    let client = settings(valid(&ca, Role::Edge, "pi-01"), edge_server.addr);
    let error = within(Client::connect(&client)).await.unwrap_err();
    assert!(error.to_string().contains("not a node"), "{error}");
    let foreign_server = start(
        &leaf(&foreign, &foreign, CLUSTER, Role::Node, "n9", Validity::Now),
        vec![Role::Edge],
    );
    let client = settings(valid(&ca, Role::Edge, "pi-01"), foreign_server.addr);
    let error = within(Client::connect(&client)).await.unwrap_err();
    assert!(
        matches!(
            &error,
            NetError::Handshake {
                alert: net::AlertDescription::UnknownCA,
                by_peer: false,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("not issued by this cluster's ca"),
        "{error}"
    );
    assert_eq!(
        net::transport::transport_error(&error, true).kind,
        sluice_proto::env::TransportErrorKind::Refused
    );
    let same_name = self::ca();
    let same_name_server = start(
        &leaf(
            &same_name,
            &same_name,
            CLUSTER,
            Role::Node,
            "n8",
            Validity::Now,
        ),
        vec![Role::Edge],
    );
    let client = settings(valid(&ca, Role::Edge, "pi-01"), same_name_server.addr);
    let error = within(Client::connect(&client)).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("not issued by this cluster's ca"),
        "{error}"
    );
    assert!(edge_server.handler.peers.lock().unwrap().is_empty());
}

/// Opens a raw stream, writes `bytes`, finishes, and returns the first frame read back.
async fn raw_exchange(
    connection: &quinn::Connection,
    bytes: &[u8],
) -> Result<Option<Message>, NetError> {
    let (mut send, mut recv) = within(connection.open_bi()).await.unwrap();
    send.write_all(bytes).await.unwrap();
    send.finish().unwrap();
    within(net::read_frame(&mut recv, 1 << 20)).await
}

fn bad_request_code(reply: Result<Option<Message>, NetError>) -> ErrorCode {
    match reply {
        Ok(Some(Message::Error(ErrorResponse {
            request_id: 0,
            code,
            ..
        }))) => code,
        other => panic!("expected an error response with request id 0, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_frames_end_only_their_stream() {
    // Checks that garbage, an oversized header and a truncated frame on raw streams each get an
    // ErrorResponse (BadRequest, TooLarge, BadRequest), that a non-request message gets
    // BadRequest with its id while its stream keeps working, and that the same connection and
    // the server keep serving.
    let ca = ca();
    let server = start_node(&ca);
    let config = net::client_config(&valid(&ca, Role::Edge, "pi-01"), CLUSTER).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connection = within(
        endpoint
            .connect_with(config, server.addr, "127.0.0.1")
            .unwrap(),
    )
    .await
    .unwrap();

    assert_eq!(
        bad_request_code(raw_exchange(&connection, b"GARBAGEGARBAGEGARBAGE").await),
        ErrorCode::BadRequest
    );
    let huge = FrameHeader {
        kind: Kind::MetadataRequest,
        body_len: u32::MAX,
    }
    .to_bytes();
    assert_eq!(
        bad_request_code(raw_exchange(&connection, &huge).await),
        ErrorCode::TooLarge
    );
    let mut truncated = FrameHeader {
        kind: Kind::MetadataRequest,
        body_len: 100,
    }
    .to_bytes()
    .to_vec();
    truncated.extend_from_slice(&[0u8; 10]);
    assert_eq!(
        bad_request_code(raw_exchange(&connection, &truncated).await),
        ErrorCode::BadRequest
    );
    let mut bad_version = MAGIC.to_vec();
    bad_version.extend_from_slice(&[0u8; HEADER_LEN - 4]);
    assert_eq!(
        bad_request_code(raw_exchange(&connection, &bad_version).await),
        ErrorCode::BadRequest
    );

    let (mut send, mut recv) = within(connection.open_bi()).await.unwrap();
    let not_a_request = Message::ProduceResponse(ProduceResponse {
        request_id: 7,
        outcomes: vec![],
    });
    within(net::write_frame(&mut send, &not_a_request))
        .await
        .unwrap();
    match within(net::read_frame(&mut recv, 1 << 20)).await.unwrap() {
        Some(Message::Error(ErrorResponse {
            request_id: 7,
            code: ErrorCode::BadRequest,
            ..
        })) => {}
        other => panic!("unexpected reply {other:?}"),
    }
    let request = Message::MetadataRequest(MetadataRequest {
        request_id: 8,
        stream: stream("ok"),
    });
    within(net::write_frame(&mut send, &request)).await.unwrap();
    match within(net::read_frame(&mut recv, 1 << 20)).await.unwrap() {
        Some(Message::MetadataResponse(MetadataResponse {
            request_id: 8,
            n_partitions: 1,
            ..
        })) => {}
        other => panic!("unexpected reply {other:?}"),
    }
    send.finish().unwrap();
    assert_eq!(
        within(net::read_frame(&mut recv, 1 << 20)).await.unwrap(),
        None
    );
    connect_and_call(&settings(valid(&ca, Role::Edge, "pi-02"), server.addr))
        .await
        .unwrap();
}

// The flood comes from `sluice_proto::testing`, which the node-level test in
// tests/tests/t30_hostile_clients.rs shares; the feature is on in every workspace test run.
#[cfg(feature = "testing")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_finish_do_not_lock_clients_out() {
    // Checks that 1,100 Initial packets starting handshakes that never finish hold at most
    // handshakes_max places (the rest are asked for a Retry they never answer), that a client
    // established before keeps being served, and that a new valid client connects and is served
    // while the abandoned handshakes (60 s deadline) still hold every place.
    let ca = ca();
    let limits = ServerLimits {
        handshakes_max: 16,
        handshake_timeout_ms: 60_000,
        ..ServerLimits::default()
    };
    let server = start_with(
        &valid(&ca, Role::Node, "n1"),
        vec![Role::Edge, Role::Admin],
        limits,
    );
    let established = within(Client::connect(&settings(
        valid(&ca, Role::Edge, "pi-01"),
        server.addr,
    )))
    .await
    .unwrap();
    within(established.metadata(stream("before")))
        .await
        .unwrap();

    let flooder = valid(&ca, Role::Edge, "flood");
    let _flood = within(testing::initials_that_never_finish(
        &flooder,
        CLUSTER,
        server.addr,
        1_100,
    ))
    .await
    .unwrap();
    let full = within(
        server
            .gauges
            .wait_until(|s| s.handshakes == 16 && s.handshakes_retried_total > 0),
    )
    .await;
    assert_eq!(full.handshakes_peak, 16, "{full:?}");

    let response = within(established.metadata(stream("during")))
        .await
        .unwrap();
    assert_eq!(response.stream.as_str(), "during");
    let newcomer = within(Client::connect(&settings(
        valid(&ca, Role::Edge, "pi-02"),
        server.addr,
    )))
    .await
    .unwrap();
    within(newcomer.produce(stream("temps"), vec![]))
        .await
        .unwrap();
    let after = server.gauges.snapshot();
    assert!(after.handshakes_peak <= 16, "{after:?}");
    assert!(after.handshakes_evicted_total >= 1, "{after:?}");
    assert_eq!(after.connections, 2, "{after:?}");
}

#[tokio::test]
async fn one_identity_cannot_hold_every_connection() {
    // Checks that an identity holding connections_per_identity_max connections is refused one
    // more with the identity-limit close code and a reason naming the bound, that another
    // identity is still served, that the identity gets a connection again once it closes one,
    // and that a node at connections_max refuses new attempts.
    let ca = ca();
    let limits = ServerLimits {
        connections_max: 3,
        connections_per_identity_max: 2,
        ..ServerLimits::default()
    };
    let server = start_with(
        &valid(&ca, Role::Node, "n1"),
        vec![Role::Edge, Role::Admin],
        limits,
    );
    let greedy = settings(valid(&ca, Role::Edge, "greedy"), server.addr);
    let first = within(Client::connect(&greedy)).await.unwrap();
    within(first.metadata(stream("a"))).await.unwrap();
    let second = within(Client::connect(&greedy)).await.unwrap();
    within(second.metadata(stream("b"))).await.unwrap();
    let error = connect_and_call(&greedy).await.unwrap_err();
    match &error {
        NetError::Refused { code, reason } => {
            assert_eq!(*code, u64::from(net::CLOSE_IDENTITY_LIMIT));
            assert!(
                reason.contains("holds 2 connections already (connections_per_identity_max)"),
                "{reason}"
            );
        }
        other => panic!("unexpected error {other}"),
    }
    let other = within(Client::connect(&settings(
        valid(&ca, Role::Edge, "pi-02"),
        server.addr,
    )))
    .await
    .unwrap();
    within(other.metadata(stream("c"))).await.unwrap();
    // The node is now full (three connections): refused before the handshake.
    let error = connect_and_call(&settings(valid(&ca, Role::Admin, "ops"), server.addr))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, NetError::Connect { reason, .. } if reason.contains("connection limit reached")),
        "{error}"
    );
    let stats = server.gauges.snapshot();
    assert_eq!(stats.connections_refused_identity_total, 1, "{stats:?}");
    assert!(stats.connections_refused_busy_total >= 1, "{stats:?}");
    assert_eq!(stats.connections_peak, 3, "{stats:?}");
    first.close();
    drop(first);
    within(server.gauges.wait_until(|s| s.connections == 2)).await;
    connect_and_call(&greedy).await.unwrap();
}

/// A raw mTLS connection as `name` (an edge), for clients that misbehave.
async fn raw_connection(ca: &Ca, server: SocketAddr, name: &str) -> quinn::Connection {
    let config = net::client_config(&valid(ca, Role::Edge, name), CLUSTER).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    within(endpoint.connect(server, "127.0.0.1").unwrap())
        .await
        .unwrap()
}

/// Opens a stream and writes the header of a metadata frame of `body_len` bytes and `sent`
/// bytes of its body, and nothing more.
async fn unfinished_frame(
    connection: &quinn::Connection,
    body_len: u32,
    sent: usize,
) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = within(connection.open_bi()).await.unwrap();
    let header = FrameHeader {
        kind: Kind::MetadataRequest,
        body_len,
    }
    .to_bytes();
    send.write_all(&header).await.unwrap();
    send.write_all(&vec![0u8; sent]).await.unwrap();
    (send, recv)
}

const SMALL_FRAME: u32 = 256 << 10;
/// Bytes one frame of SMALL_FRAME holds, header included.
const HELD: u64 = SMALL_FRAME as u64 + HEADER_LEN as u64;

fn budget_limits() -> ServerLimits {
    ServerLimits {
        frame_bytes_max: SMALL_FRAME,
        request_bytes_per_connection_max: 2 * HELD,
        request_bytes_max: 3 * HELD,
        answer_bytes_per_connection_max: 2 * HELD,
        answer_bytes_max: 3 * HELD,
        connection_window_bytes_max: 64 << 10,
        ..ServerLimits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_frames_hold_one_connections_budget_until_their_deadline() {
    // Checks that frames announced in full but never finished, on 8 streams of one connection,
    // hold at most the connection's request budget (the other streams stop being read), that a
    // well-behaved client is served meanwhile, and that each unfinished frame, and a frame
    // trickled a byte at a time, is answered with a deadline error after frame_timeout_ms, after
    // which no request bytes are held.
    let ca = ca();
    let limits = ServerLimits {
        frame_timeout_ms: 1_000,
        ..budget_limits()
    };
    let server = start_with(
        &valid(&ca, Role::Node, "n1"),
        vec![Role::Edge, Role::Admin],
        limits,
    );
    let hostile = raw_connection(&ca, server.addr, "hostile").await;
    let mut streams = Vec::new();
    for _ in 0..8 {
        streams.push(unfinished_frame(&hostile, SMALL_FRAME, 1_000).await);
    }
    let full = within(server.gauges.wait_until(|s| {
        s.request_bytes_peak >= 2 * HELD && s.reads_paused_for_requests_total >= 1
    }))
    .await;
    assert_eq!(full.request_bytes_peak, 2 * HELD, "{full:?}");
    let good = within(Client::connect(&settings(
        valid(&ca, Role::Edge, "pi-02"),
        server.addr,
    )))
    .await
    .unwrap();
    within(good.produce(stream("temps"), vec![])).await.unwrap();

    let trickler = raw_connection(&ca, server.addr, "trickler").await;
    let (mut trickle, mut trickle_recv) = unfinished_frame(&trickler, 1_000, 1).await;
    let dripping = tokio::spawn(async move {
        // The attacker's pace: one byte every 50 ms, far slower than 1,000 bytes in 1 s.
        for _ in 0..999 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if trickle.write_all(&[0]).await.is_err() {
                return;
            }
        }
    });
    let reply = within(net::read_frame(&mut trickle_recv, 1 << 20)).await;
    dripping.abort();
    let deadline_error = |reply: Result<Option<Message>, NetError>| match reply {
        Ok(Some(Message::Error(ErrorResponse {
            request_id: 0,
            code: ErrorCode::BadRequest,
            message,
        }))) => assert!(
            message.contains("did not arrive within 1000 ms"),
            "{message}"
        ),
        other => panic!("expected a deadline error, got {other:?}"),
    };
    deadline_error(reply);
    for (_send, mut recv) in streams {
        deadline_error(within(net::read_frame(&mut recv, 1 << 20)).await);
    }
    let drained = within(
        server
            .gauges
            .wait_until(|s| s.frames_timed_out_total == 9 && s.request_bytes == 0),
    )
    .await;
    assert!(drained.request_bytes_peak <= 3 * HELD, "{drained:?}");
    within(good.metadata(stream("after"))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_frames_on_many_connections_hold_at_most_the_node_budget() {
    // Checks that unfinished frames on two connections (each allowed two) hold at most the
    // node-wide request budget of three, and that closing those connections releases every
    // byte so a well-behaved client is served.
    let ca = ca();
    let limits = ServerLimits {
        frame_timeout_ms: 60_000,
        ..budget_limits()
    };
    let server = start_with(
        &valid(&ca, Role::Node, "n1"),
        vec![Role::Edge, Role::Admin],
        limits,
    );
    let mut hostile = Vec::new();
    let mut streams = Vec::new();
    for name in ["hostile-1", "hostile-2"] {
        let connection = raw_connection(&ca, server.addr, name).await;
        for _ in 0..3 {
            streams.push(unfinished_frame(&connection, SMALL_FRAME, 100).await);
        }
        hostile.push(connection);
    }
    let full = within(server.gauges.wait_until(|s| {
        s.request_bytes_peak >= 3 * HELD && s.reads_paused_for_requests_total >= 3
    }))
    .await;
    assert_eq!(full.request_bytes_peak, 3 * HELD, "{full:?}");
    for connection in &hostile {
        connection.close(quinn::VarInt::from_u32(0), b"done");
    }
    within(server.gauges.wait_until(|s| s.request_bytes == 0)).await;
    connect_and_call(&settings(valid(&ca, Role::Edge, "pi-02"), server.addr))
        .await
        .unwrap();
    assert_eq!(server.gauges.snapshot().request_bytes_peak, 3 * HELD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_answers_is_not_read_from() {
    // Checks that 200 pipelined fetches whose answers are not read hold at most the
    // connection's answer budget (the server stops reading that stream instead of buffering),
    // that a well-behaved client is served meanwhile, and that once the client reads, every
    // answer arrives and no answer bytes stay held.
    let ca = ca();
    let server = start_with(
        &valid(&ca, Role::Node, "n1"),
        vec![Role::Edge, Role::Admin],
        budget_limits(),
    );
    let hostile = raw_connection(&ca, server.addr, "hoarder").await;
    let (mut send, mut recv) = within(hostile.open_bi()).await.unwrap();
    let mut frames = Vec::new();
    for request_id in 1..=200u64 {
        let fetch = Message::FetchRequest(FetchRequest {
            request_id,
            stream: stream("big"),
            partition: PartitionId(0),
            from: FetchFrom::Earliest,
            events_max: 1,
            bytes_max: 64 << 10,
            wait_ms: 0,
        });
        net::io::encode_frame_into(&fetch, &mut frames, u32::MAX).unwrap();
    }
    within(send.write_all(&frames)).await.unwrap();
    let paused = within(
        server
            .gauges
            .wait_until(|s| s.reads_paused_for_answers_total >= 1),
    )
    .await;
    assert!(paused.answer_bytes_peak <= 2 * HELD, "{paused:?}");
    connect_and_call(&settings(valid(&ca, Role::Edge, "pi-02"), server.addr))
        .await
        .unwrap();
    let mut answered = Vec::new();
    for _ in 0..200 {
        match within(net::read_frame(&mut recv, 1 << 20)).await.unwrap() {
            Some(Message::FetchResponse(response)) => {
                assert_eq!(response.events.len(), 1);
                answered.push(response.request_id);
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }
    answered.sort_unstable();
    assert_eq!(answered, (1..=200).collect::<Vec<_>>());
    let done = within(server.gauges.wait_until(|s| s.answer_bytes == 0)).await;
    // The peak is node-wide: from the second client on, its answer may be held at the same
    // time as the hoarder's, so the node-wide budget is the bound here.
    assert!(done.answer_bytes_peak <= 3 * HELD, "{done:?}");
    assert!(done.reads_paused_for_answers_total >= 1, "{done:?}");
}
