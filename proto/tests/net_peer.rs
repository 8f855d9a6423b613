//! The QUIC peer transport (`net::QuicPeerTransport`) on loopback: nodes on real listeners that
//! also serve the client protocol, certificates made here by rcgen, a handler that can hold
//! calls until the test releases them. Every wait has a deadline, so a hang fails fast; nothing
//! waits for time to pass.
#![cfg(feature = "net")]

mod support;

use sluice_proto::env::{
    PeerEnvelope, PeerError, PeerErrorKind, PeerGroup, PeerHandler, PeerLane, PeerRefusal,
    PeerRequest, PeerTransport,
};
use sluice_proto::msg::{
    Message, MetadataRequest, MetadataResponse, PeerAnswer, PeerCall, PeerReply,
};
use sluice_proto::net::{
    self, ClientSettings, ClientSide, Handler, PeerLimits, QuicPeerTransport, ServerGauges,
    ServerLimits, TlsMaterial,
};
use sluice_proto::{Identity, NodeId, Role, StreamName};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{ca, ca_named, leaf_pem, Ca, Validity};
use tokio::sync::watch;

const CLUSTER: &str = "test";
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Fails the test instead of hanging when `future` does not complete within 20 s.
async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .expect("deadline passed")
}

fn material(issuer: &Ca, trusted: &Ca, cluster: &str, role: Role, name: &str) -> TlsMaterial {
    let identity = Identity::new(cluster, role, name).unwrap();
    let (cert, key) = leaf_pem(issuer, &identity, Validity::Now);
    TlsMaterial::from_pem(trusted.pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap()
}

/// Answers a control call with `<node id>:` and the body, a bulk call with its body length.
/// While `held` is on for a lane, calls of that lane wait until it is switched off; `entered`
/// counts the calls that reached the handler, per lane.
struct TestPeerHandler {
    local: NodeId,
    held: [watch::Sender<bool>; 2],
    entered: [watch::Sender<usize>; 2],
}

fn idx(lane: PeerLane) -> usize {
    match lane {
        PeerLane::Control => 0,
        PeerLane::Bulk => 1,
    }
}

impl TestPeerHandler {
    fn new(local: NodeId) -> Self {
        Self {
            local,
            held: [watch::Sender::new(false), watch::Sender::new(false)],
            entered: [watch::Sender::new(0), watch::Sender::new(0)],
        }
    }

    fn hold(&self, lane: PeerLane, on: bool) {
        self.held[idx(lane)].send_replace(on);
    }

    async fn wait_entered(&self, lane: PeerLane, n: usize) {
        let mut entered = self.entered[idx(lane)].subscribe();
        within(entered.wait_for(|got| *got >= n)).await.unwrap();
    }

    fn entered(&self, lane: PeerLane) -> usize {
        *self.entered[idx(lane)].borrow()
    }
}

impl PeerHandler for TestPeerHandler {
    fn handle(
        &self,
        request: PeerRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, PeerRefusal>> + Send + '_>> {
        Box::pin(async move {
            let lane = idx(request.lane);
            self.entered[lane].send_modify(|n| *n += 1);
            let mut held = self.held[lane].subscribe();
            let _ = held.wait_for(|on| !*on).await;
            if let PeerGroup::Partition { .. } = request.envelope.group {
                if request.envelope.incarnation != 7 {
                    return Err(PeerRefusal::StaleIncarnation {
                        got: request.envelope.incarnation,
                        current: 7,
                    });
                }
            }
            Ok(match request.lane {
                PeerLane::Control => {
                    let mut answer = format!("{}:", self.local).into_bytes();
                    answer.extend_from_slice(&request.body);
                    answer
                }
                PeerLane::Bulk => (request.body.len() as u64).to_le_bytes().to_vec(),
            })
        })
    }
}

/// Answers every client metadata request with one partition.
struct ClientHandler;

impl Handler for ClientHandler {
    fn handle(
        &self,
        _peer: Arc<Identity>,
        request: Message,
    ) -> Pin<Box<dyn Future<Output = Message> + Send + 'static>> {
        Box::pin(async move {
            match request {
                Message::MetadataRequest(m) => Message::MetadataResponse(MetadataResponse {
                    request_id: m.request_id,
                    stream: m.stream,
                    n_partitions: 1,
                }),
                other => panic!("unexpected {other:?}"),
            }
        })
    }
}

/// One node: a listener serving clients and peers, its peer transport and handler.
struct TestNode {
    id: NodeId,
    addr: SocketAddr,
    transport: QuicPeerTransport,
    handler: Arc<TestPeerHandler>,
    _shutdown: watch::Sender<bool>,
}

/// Starts node `id` with certificate name `cert_name` (normally the id).
fn start_named(ca: &Ca, id: u64, cert_name: &str, limits: PeerLimits) -> TestNode {
    let own = material(ca, ca, CLUSTER, Role::Node, cert_name);
    let server_limits = ServerLimits::default();
    let config = net::server_config(&own, CLUSTER, &server_limits).unwrap();
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let id = NodeId(id);
    let handler = Arc::new(TestPeerHandler::new(id));
    // A certificate naming another node than `id` cannot start a transport; such a node still
    // serves the peer protocol with a transport of the id its certificate names.
    let transport_id = cert_name.parse().map(NodeId).unwrap_or(id);
    let transport = QuicPeerTransport::new(
        endpoint.clone(),
        own,
        CLUSTER,
        transport_id,
        limits,
        handler.clone(),
        id.0,
    )
    .unwrap();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let clients = ClientSide {
        allowed_roles: vec![Role::Edge, Role::Admin],
        handler: Arc::new(ClientHandler),
        limits: server_limits,
        gauges: Arc::new(ServerGauges::default()),
    };
    tokio::spawn(net::serve_with_peers(
        endpoint,
        CLUSTER.to_owned(),
        clients,
        Some(transport.acceptor()),
        shutdown_rx,
    ));
    TestNode {
        id,
        addr,
        transport,
        handler,
        _shutdown: shutdown,
    }
}

fn start(ca: &Ca, id: u64, limits: PeerLimits) -> TestNode {
    start_named(ca, id, &id.to_string(), limits)
}

/// Gives every node the address book of all of them.
fn connect_all(nodes: &[&TestNode]) {
    let book: BTreeMap<NodeId, String> = nodes.iter().map(|n| (n.id, n.addr.to_string())).collect();
    for node in nodes {
        node.transport.set_peers(book.clone());
    }
}

fn envelope(from: NodeId, to: NodeId) -> PeerEnvelope {
    PeerEnvelope {
        cluster: CLUSTER.to_owned(),
        from,
        to,
        group: PeerGroup::Metadata,
        incarnation: 1,
    }
}

fn request(from: &TestNode, to: NodeId, lane: PeerLane, body: Vec<u8>) -> PeerRequest {
    PeerRequest {
        envelope: envelope(from.id, to),
        lane,
        body,
    }
}

async fn call(
    from: &TestNode,
    to: NodeId,
    lane: PeerLane,
    body: Vec<u8>,
) -> Result<Vec<u8>, PeerError> {
    within(
        from.transport
            .call(request(from, to, lane, body), CALL_TIMEOUT),
    )
    .await
}

#[tokio::test]
async fn three_nodes_exchange_calls_on_both_lanes() {
    // Checks that each of three nodes reaches each other one on both lanes (a node with the
    // higher id too, over the connection the lower one dialed), answered by the target's
    // handler; and that the handler's own refusal (a stale incarnation) comes back typed.
    let ca = ca();
    let nodes = [1, 2, 3].map(|id| start(&ca, id, PeerLimits::default()));
    connect_all(&nodes.iter().collect::<Vec<_>>());
    for from in &nodes {
        for to in nodes.iter().filter(|n| n.id != from.id) {
            let body = format!("from {}", from.id).into_bytes();
            let answer = call(from, to.id, PeerLane::Control, body).await.unwrap();
            assert_eq!(answer, format!("{}:from {}", to.id, from.id).into_bytes());
            let answer = call(from, to.id, PeerLane::Bulk, vec![5; 100_000])
                .await
                .unwrap();
            assert_eq!(answer, 100_000u64.to_le_bytes().to_vec());
        }
    }
    let mut stale = request(&nodes[2], NodeId(1), PeerLane::Control, vec![]);
    stale.envelope.group = PeerGroup::Partition {
        stream: StreamName::new("s").unwrap(),
        partition: sluice_proto::PartitionId(0),
    };
    stale.envelope.incarnation = 6;
    let error = within(nodes[2].transport.call(stale, CALL_TIMEOUT))
        .await
        .unwrap_err();
    assert_eq!(
        error.kind,
        PeerErrorKind::Remote(PeerRefusal::StaleIncarnation { got: 6, current: 7 }),
        "{error}"
    );
}

/// A raw connection of the peer protocol to `addr` with `material`, expecting node `expect`.
async fn raw_peer_connection(
    material: &TlsMaterial,
    addr: SocketAddr,
    expect: NodeId,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let config =
        net::tls::peer_client_config(material, CLUSTER, expect, quinn::TransportConfig::default())
            .unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    within(endpoint.connect(addr, "localhost").unwrap()).await
}

/// Sends one control call frame on `connection` and returns the reply.
async fn raw_call(connection: &quinn::Connection, envelope: PeerEnvelope) -> PeerReply {
    let (mut send, mut recv) = within(connection.open_bi()).await.unwrap();
    let call = Message::PeerControlCall(PeerCall {
        request_id: 9,
        envelope,
        body: b"hello".to_vec(),
    });
    net::write_frame(&mut send, &call).await.unwrap();
    send.finish().unwrap();
    match within(net::read_frame(&mut recv, 1 << 20)).await {
        Ok(Some(Message::PeerReply(reply))) => reply,
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[tokio::test]
async fn envelopes_naming_another_node_or_cluster_are_refused_typed() {
    // Checks that the receiver runs the envelope check with the certificate's node id before
    // the handler: a call naming another target, another sender than the certificate, or
    // another cluster is answered with the typed refusal and never reaches the handler, while
    // a correct envelope on the same connection is answered. Node 1 is a raw connection here
    // (no transport of its own that would replace it by dialing).
    let ca = ca();
    let two = start(&ca, 2, PeerLimits::default());
    let nowhere = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    two.transport.set_peers(BTreeMap::from([(
        NodeId(1),
        nowhere.local_addr().unwrap().to_string(),
    )]));
    let as_one = material(&ca, &ca, CLUSTER, Role::Node, "1");
    let connection = raw_peer_connection(&as_one, two.addr, NodeId(2))
        .await
        .unwrap();
    let reply = raw_call(&connection, envelope(NodeId(1), NodeId(3))).await;
    assert_eq!(
        reply.answer,
        PeerAnswer::Refused(PeerRefusal::WrongNode {
            from: NodeId(1),
            to: NodeId(3),
            receiver: NodeId(2),
            authenticated: NodeId(1),
        })
    );
    let reply = raw_call(&connection, envelope(NodeId(5), NodeId(2))).await;
    assert!(
        matches!(
            reply.answer,
            PeerAnswer::Refused(PeerRefusal::WrongNode {
                from: NodeId(5),
                authenticated: NodeId(1),
                ..
            })
        ),
        "{reply:?}"
    );
    let mut other_cluster = envelope(NodeId(1), NodeId(2));
    other_cluster.cluster = "staging".to_owned();
    let reply = raw_call(&connection, other_cluster).await;
    assert!(
        matches!(
            reply.answer,
            PeerAnswer::Refused(PeerRefusal::WrongCluster { .. })
        ),
        "{reply:?}"
    );
    assert_eq!(two.handler.entered(PeerLane::Control), 0);
    let reply = raw_call(&connection, envelope(NodeId(1), NodeId(2))).await;
    assert_eq!(reply.answer, PeerAnswer::Body(b"2:hello".to_vec()));
    assert_eq!(two.handler.entered(PeerLane::Control), 1);
}

/// How a raw peer connection ended: the application close code, or the TLS alert as 0x100 +
/// alert when the handshake refused the certificate.
async fn close_code(result: Result<quinn::Connection, quinn::ConnectionError>) -> (u64, String) {
    let error = match result {
        Ok(connection) => within(connection.closed()).await,
        Err(error) => error,
    };
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => (
            close.error_code.into_inner(),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        quinn::ConnectionError::ConnectionClosed(close) => (
            u64::from(close.error_code),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        quinn::ConnectionError::TransportError(error) => (u64::from(error.code), error.reason),
        other => panic!("unexpected end {other:?}"),
    }
}

#[tokio::test]
async fn edge_and_foreign_certificates_are_refused_on_the_peer_protocol() {
    // Checks that on the peer protocol an edge certificate of our CA, a node certificate of
    // another cluster (from its own CA, and from ours), and a node of our cluster missing from
    // the address book are all refused with their own close code and a reason naming them, and
    // that the nodes still talk to each other afterwards.
    let ca = ca();
    let one = start(&ca, 1, PeerLimits::default());
    let two = start(&ca, 2, PeerLimits::default());
    connect_all(&[&one, &two]);
    let edge = material(&ca, &ca, CLUSTER, Role::Edge, "1");
    let (code, reason) = close_code(raw_peer_connection(&edge, two.addr, NodeId(2)).await).await;
    assert_eq!(code, u64::from(net::CLOSE_ROLE_NOT_ALLOWED), "{reason}");
    assert!(reason.contains("only node certificates"), "{reason}");

    let other = ca_named("other ca");
    let foreign = material(&other, &ca, "staging", Role::Node, "1");
    let (code, reason) = close_code(raw_peer_connection(&foreign, two.addr, NodeId(2)).await).await;
    assert!(
        (0x100..0x200).contains(&code),
        "a tls alert, got {code}: {reason}"
    );

    let same_ca_other_cluster = material(&ca, &ca, "staging", Role::Node, "1");
    let (code, reason) =
        close_code(raw_peer_connection(&same_ca_other_cluster, two.addr, NodeId(2)).await).await;
    assert_eq!(code, u64::from(net::CLOSE_WRONG_CLUSTER), "{reason}");
    assert!(reason.contains("staging"), "{reason}");

    let unknown = material(&ca, &ca, CLUSTER, Role::Node, "0");
    let (code, reason) = close_code(raw_peer_connection(&unknown, two.addr, NodeId(2)).await).await;
    assert_eq!(code, u64::from(net::CLOSE_PEER_UNKNOWN), "{reason}");
    assert!(
        reason.contains("node 0 is not in the address book"),
        "{reason}"
    );

    assert_eq!(two.handler.entered(PeerLane::Control), 0);
    let answer = call(&one, two.id, PeerLane::Control, vec![1])
        .await
        .unwrap();
    assert_eq!(answer, b"2:\x01".to_vec());
}

#[tokio::test]
async fn a_node_dialed_under_another_id_than_its_certificate_is_refused() {
    // Checks that a node whose certificate names node 3, listed as node 2 in the address book,
    // is refused during the handshake: the call fails as Refused, naming both ids, and the
    // node never sees the call.
    let ca = ca();
    let one = start(&ca, 1, PeerLimits::default());
    let three = start_named(&ca, 2, "3", PeerLimits::default());
    one.transport
        .set_peers(BTreeMap::from([(NodeId(2), three.addr.to_string())]));
    let error = call(&one, NodeId(2), PeerLane::Control, vec![])
        .await
        .unwrap_err();
    assert_eq!(error.kind, PeerErrorKind::Refused, "{error}");
    assert!(error.message.contains("sluice://test/node/3"), "{error}");
    assert!(error.message.contains("names node 2"), "{error}");
    assert_eq!(three.handler.entered(PeerLane::Control), 0);
}

#[tokio::test]
async fn the_client_protocol_is_served_on_the_same_listener() {
    // Checks that a listener serving peers still serves clients (ALPN sluice/1) with the
    // client handler, and that a peer call frame sent on the client protocol is refused as
    // not a request there.
    let ca = ca();
    let one = start(&ca, 1, PeerLimits::default());
    let two = start(&ca, 2, PeerLimits::default());
    connect_all(&[&one, &two]);
    call(&one, two.id, PeerLane::Control, vec![]).await.unwrap();
    let edge = material(&ca, &ca, CLUSTER, Role::Edge, "pi-01");
    let settings = ClientSettings::new(edge, CLUSTER, vec![two.addr.to_string()]);
    let client = within(net::Client::connect(&settings)).await.unwrap();
    let answer = within(client.metadata(StreamName::new("s").unwrap()))
        .await
        .unwrap();
    assert_eq!(answer.n_partitions, 1);
    let peer_call = Message::PeerControlCall(PeerCall {
        request_id: 0,
        envelope: envelope(NodeId(1), NodeId(2)),
        body: vec![],
    });
    let error = within(client.call(peer_call)).await.unwrap_err();
    assert!(error.to_string().contains("not a request"), "{error}");
    let _ = MetadataRequest {
        request_id: 0,
        stream: StreamName::new("s").unwrap(),
    };
}

/// Polls `future` once, so that whatever it does before its first await has happened.
async fn poll_once<F: Future + Unpin>(future: &mut F) {
    tokio::select! {
        biased;
        _ = future => panic!("completed on its first poll"),
        _ = std::future::ready(()) => {}
    }
}

#[tokio::test]
async fn full_queues_fail_at_once_with_overloaded() {
    // Checks, on each lane, that with one call in flight (held by the handler) and one waiting,
    // a third call fails at once as Overloaded while the first two complete once released; and
    // that a receiver with a smaller in-flight bound than its sender refuses the excess call,
    // unread, with the typed Overloaded refusal.
    let ca = ca();
    let small = PeerLimits {
        control_in_flight_max: 1,
        control_queue_max: 1,
        bulk_in_flight_max: 1,
        bulk_queue_max: 1,
        ..PeerLimits::default()
    };
    let one = start(&ca, 1, small.clone());
    let two = start(&ca, 2, small);
    connect_all(&[&one, &two]);
    for lane in [PeerLane::Control, PeerLane::Bulk] {
        two.handler.hold(lane, true);
        let (sender, first) = (one.transport.clone(), request(&one, two.id, lane, vec![1]));
        let first = tokio::spawn(async move { sender.call(first, CALL_TIMEOUT).await });
        two.handler.wait_entered(lane, 1).await;
        let mut second = one
            .transport
            .call(request(&one, two.id, lane, vec![2]), CALL_TIMEOUT);
        poll_once(&mut second).await;
        let third = call(&one, two.id, lane, vec![3]).await.unwrap_err();
        assert_eq!(third.kind, PeerErrorKind::Overloaded, "{third}");
        two.handler.hold(lane, false);
        assert!(within(first).await.unwrap().is_ok());
        assert!(within(second).await.is_ok());
    }
    // A sender allowing four bulk calls in flight, a receiver serving one at a time.
    let three = start(
        &ca,
        3,
        PeerLimits {
            bulk_in_flight_max: 4,
            ..PeerLimits::default()
        },
    );
    three
        .transport
        .set_peers(BTreeMap::from([(two.id, two.addr.to_string())]));
    two.transport.set_peers(BTreeMap::from([
        (one.id, one.addr.to_string()),
        (three.id, three.addr.to_string()),
    ]));
    two.handler.hold(PeerLane::Bulk, true);
    let held = two.handler.entered(PeerLane::Bulk);
    let (sender, first) = (
        three.transport.clone(),
        request(&three, two.id, PeerLane::Bulk, vec![1]),
    );
    let first = tokio::spawn(async move { sender.call(first, CALL_TIMEOUT).await });
    two.handler.wait_entered(PeerLane::Bulk, held + 1).await;
    // Large enough that the receiver stops the stream before it is all sent: the refusal still
    // comes back typed.
    let error = call(&three, two.id, PeerLane::Bulk, vec![2; 4 << 20])
        .await
        .unwrap_err();
    assert_eq!(
        error.kind,
        PeerErrorKind::Remote(PeerRefusal::Overloaded),
        "{error}"
    );
    two.handler.hold(PeerLane::Bulk, false);
    assert!(within(first).await.unwrap().is_ok());
}

#[tokio::test]
async fn control_calls_are_answered_while_bulk_is_saturated() {
    // Checks that while the receiver's handler holds every bulk call in flight (large
    // messages) and more wait in the sender's bulk queue, control calls in both directions are
    // still answered; then the bulk calls complete once released.
    let ca = ca();
    let limits = PeerLimits {
        bulk_in_flight_max: 2,
        bulk_queue_max: 4,
        bulk_message_bytes_max: 4 << 20,
        ..PeerLimits::default()
    };
    let one = Arc::new(start(&ca, 1, limits.clone()));
    let two = start(&ca, 2, limits);
    connect_all(&[&one, &two]);
    call(&one, two.id, PeerLane::Control, vec![]).await.unwrap();
    two.handler.hold(PeerLane::Bulk, true);
    let done = Arc::new(AtomicUsize::new(0));
    let mut bulk = Vec::new();
    for n in 0..6u8 {
        let (one, done, to) = (one.clone(), done.clone(), two.id);
        bulk.push(tokio::spawn(async move {
            let body = vec![n; 4 << 20];
            let result = one
                .transport
                .call(request(&one, to, PeerLane::Bulk, body), CALL_TIMEOUT)
                .await;
            done.fetch_add(1, Ordering::SeqCst);
            result
        }));
    }
    two.handler.wait_entered(PeerLane::Bulk, 2).await;
    for n in 0..20u8 {
        let answer = call(&one, two.id, PeerLane::Control, vec![n])
            .await
            .unwrap();
        assert_eq!(answer, vec![b'2', b':', n]);
        let answer = call(&two, one.id, PeerLane::Control, vec![n])
            .await
            .unwrap();
        assert_eq!(answer, vec![b'1', b':', n]);
    }
    assert_eq!(
        done.load(Ordering::SeqCst),
        0,
        "a bulk call finished while held"
    );
    assert_eq!(two.handler.entered(PeerLane::Bulk), 2);
    two.handler.hold(PeerLane::Bulk, false);
    for call in bulk {
        let answer = within(call).await.unwrap().unwrap();
        assert_eq!(answer, ((4u64 << 20).to_le_bytes()).to_vec());
    }
}

#[tokio::test]
async fn removing_a_node_closes_its_connection_and_adding_it_reconnects() {
    // Checks that set_peers without a node closes the connection to it (the other side sees
    // it go), that calls to it then fail as Unreachable, and that listing it again dials it
    // again so calls go through.
    let ca = ca();
    let one = start(&ca, 1, PeerLimits::default());
    let two = start(&ca, 2, PeerLimits::default());
    connect_all(&[&one, &two]);
    within(one.transport.wait_connected(two.id, true)).await;
    within(two.transport.wait_connected(one.id, true)).await;
    one.transport.set_peers(BTreeMap::new());
    within(two.transport.wait_connected(one.id, false)).await;
    let error = call(&one, two.id, PeerLane::Control, vec![])
        .await
        .unwrap_err();
    assert_eq!(error.kind, PeerErrorKind::Unreachable, "{error}");
    connect_all(&[&one, &two]);
    let answer = call(&two, one.id, PeerLane::Control, vec![]).await.unwrap();
    assert_eq!(answer, b"1:".to_vec());
}

#[tokio::test]
async fn a_peer_that_starts_late_is_reached_after_a_failed_dial() {
    // Checks that a node dialing a peer whose listener is not up yet fails the call as
    // Unreachable, dials again with backoff, and reaches the peer once it is up.
    let ca = ca();
    let limits = PeerLimits {
        connect_timeout_ms: 500,
        reconnect_initial_ms: 50,
        reconnect_max_ms: 200,
        ..PeerLimits::default()
    };
    let one = start(&ca, 1, limits.clone());
    // Reserve a port, free it, and start node 2 there later.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    one.transport
        .set_peers(BTreeMap::from([(NodeId(2), port.to_string())]));
    let error = call(&one, NodeId(2), PeerLane::Control, vec![])
        .await
        .unwrap_err();
    assert_eq!(error.kind, PeerErrorKind::Unreachable, "{error}");
    let own = material(&ca, &ca, CLUSTER, Role::Node, "2");
    let server_limits = ServerLimits::default();
    let config = net::server_config(&own, CLUSTER, &server_limits).unwrap();
    let endpoint = quinn::Endpoint::server(config, port).unwrap();
    let handler = Arc::new(TestPeerHandler::new(NodeId(2)));
    let two = QuicPeerTransport::new(
        endpoint.clone(),
        own,
        CLUSTER,
        NodeId(2),
        limits,
        handler,
        2,
    )
    .unwrap();
    two.set_peers(BTreeMap::from([(one.id, one.addr.to_string())]));
    let (_shutdown, shutdown_rx) = watch::channel(false);
    let clients = ClientSide {
        allowed_roles: vec![Role::Edge],
        handler: Arc::new(ClientHandler),
        limits: server_limits,
        gauges: Arc::new(ServerGauges::default()),
    };
    tokio::spawn(net::serve_with_peers(
        endpoint,
        CLUSTER.to_owned(),
        clients,
        Some(two.acceptor()),
        shutdown_rx,
    ));
    within(one.transport.wait_connected(NodeId(2), true)).await;
    let answer = call(&one, NodeId(2), PeerLane::Control, vec![])
        .await
        .unwrap();
    assert_eq!(answer, b"2:".to_vec());
}
