//! Hostile and broken clients at a real node (`Node::start` + `Node::serve`): handshakes that
//! never finish, one identity opening many connections, a client that never reads its answers,
//! and bounds that do not fit the machine. Each test checks the bound through the node's
//! `ServerGauges` and that a well-behaved client is served meanwhile. `proto/tests/net_mtls.rs`
//! covers the same mechanisms on the connection layer alone.

use sluice_proto::env::TransportErrorKind;
use sluice_proto::msg::{FetchFrom, FetchRequest, Message};
use sluice_proto::net::{self, transport::transport_error, NetError, ServerGauges};
use sluice_proto::{testing, PartitionId, Role};
use sluice_tests::{
    fetch_partition, produce_acked, stem, stream, tagged_records, within, TestNode, CLUSTER,
    SINGLE, STEP,
};
use std::sync::Arc;

fn gauges(node: &TestNode) -> Arc<ServerGauges> {
    node.node()
        .expect("in-process node")
        .server_gauges()
        .clone()
}

/// Checks that the node still serves a good edge: a produce is acknowledged and read back.
async fn still_serves(node: &TestNode, name: &str, seq: u64) {
    let edge = node.edge_client(name).await.unwrap();
    let records = tagged_records(name, 1, seq..seq + 1, 40).unwrap();
    let acks = produce_acked(&edge, SINGLE, records.clone()).await.unwrap();
    let admin = node.admin().await.unwrap();
    let events = fetch_partition(&admin, SINGLE, 0).await.unwrap();
    assert_eq!(
        events[acks[0].offset.0 as usize].event.payload,
        records[0].payload
    );
}

/// Sends `n` QUIC Initial packets to `node`, each starting a handshake its sender never
/// continues (the same flood `proto/tests/net_mtls.rs` sends the bare connection layer).
async fn initials_that_never_finish(node: &TestNode, n: usize) -> tokio::net::UdpSocket {
    let material = node.material(&node.edge("flood").unwrap()).unwrap();
    within(
        "flood",
        STEP,
        testing::initials_that_never_finish(&material, CLUSTER, node.addr(), n),
    )
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_finish_do_not_lock_edges_out() {
    // Checks that 1,100 UDP packets starting handshakes that are never finished hold at most
    // handshakes_max places at the node, and that an edge connected before and a new edge both
    // produce while the abandoned handshakes (60 s deadline) still hold every place.
    let node = TestNode::builder()
        .configure(|config| {
            config.transport.handshakes_max = 8;
            config.transport.handshake_timeout_ms = 60_000;
        })
        .start()
        .await
        .unwrap();
    let before = node.edge_client("before").await.unwrap();
    let _flood = initials_that_never_finish(&node, 1_100).await;
    let gauges = gauges(&node);
    let full = within(
        "handshake places taken",
        STEP,
        gauges.wait_until(|s| s.handshakes == 8 && s.handshakes_retried_total > 0),
    )
    .await
    .unwrap();
    assert_eq!(full.handshakes_peak, 8, "{full:?}");
    let records = tagged_records("before", 1, 0..1, 40).unwrap();
    produce_acked(&before, SINGLE, records).await.unwrap();
    still_serves(&node, "newcomer", 0).await;
    let after = gauges.snapshot();
    assert!(after.handshakes_peak <= 8, "{after:?}");
    assert!(after.handshakes_evicted_total >= 1, "{after:?}");
}

#[tokio::test]
async fn one_edge_identity_cannot_take_every_connection() {
    // Checks that an edge identity at connections_per_identity_max is refused one more
    // connection with the identity-limit code and a reason naming the key, that the refusal is
    // a Refused transport error, and that other edges are still served.
    let node = TestNode::builder()
        .configure(|config| config.transport.connections_per_identity_max = 2)
        .start()
        .await
        .unwrap();
    let greedy = node.edge_client("greedy").await.unwrap();
    let again = node.edge_client("greedy").await.unwrap();
    for client in [&greedy, &again] {
        within("metadata", STEP, client.metadata(stream(SINGLE).unwrap()))
            .await
            .unwrap()
            .unwrap();
    }
    let third = node.edge_client("greedy").await.unwrap();
    let error = within("metadata", STEP, third.metadata(stream(SINGLE).unwrap()))
        .await
        .unwrap()
        .unwrap_err();
    match &error {
        NetError::Refused { code, reason } => {
            assert_eq!(*code, u64::from(net::CLOSE_IDENTITY_LIMIT));
            assert!(reason.contains("connections_per_identity_max"), "{reason}");
        }
        other => panic!("unexpected error {other}"),
    }
    assert_eq!(
        transport_error(&error, false).kind,
        TransportErrorKind::Refused
    );
    still_serves(&node, "modest", 0).await;
    assert_eq!(
        gauges(&node).snapshot().connections_refused_identity_total,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_does_not_read_its_answers_is_not_read_from() {
    // Checks that 400 pipelined fetches whose answers are not read hold at most the
    // connection's answer budget at the node (it stops reading the stream), that an edge is
    // served meanwhile, and that once the consumer reads, every answer arrives in full.
    const ANSWER_BUDGET: u64 = 3 << 20;
    let node = TestNode::builder()
        .configure(|config| {
            config.transport.frame_bytes_max = 2 << 20;
            config.transport.answer_bytes_per_connection_max = ANSWER_BUDGET;
        })
        .start()
        .await
        .unwrap();
    let admin = node.admin().await.unwrap();
    let records = tagged_records("bulk", 1, 0..400, 1_000).unwrap();
    produce_acked(&admin, SINGLE, records).await.unwrap();

    let material = node.material(&stem(Role::Admin, "ops")).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(net::client_config(&material, CLUSTER).unwrap());
    let connection = within(
        "connect",
        STEP,
        endpoint.connect(node.addr(), "127.0.0.1").unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let mut frames = Vec::new();
    for request_id in 1..=400u64 {
        let fetch = Message::FetchRequest(FetchRequest {
            request_id,
            stream: stream(SINGLE).unwrap(),
            partition: PartitionId(0),
            from: FetchFrom::Earliest,
            events_max: 10_000,
            bytes_max: 64 << 10,
            wait_ms: 0,
        });
        net::io::encode_frame_into(&fetch, &mut frames, u32::MAX).unwrap();
    }
    within("requests written", STEP, send.write_all(&frames))
        .await
        .unwrap()
        .unwrap();
    let gauges = gauges(&node);
    let paused = within(
        "reading paused",
        STEP,
        gauges.wait_until(|s| s.reads_paused_for_answers_total >= 1),
    )
    .await
    .unwrap();
    assert!(paused.answer_bytes_peak <= ANSWER_BUDGET, "{paused:?}");
    still_serves(&node, "meanwhile", 0).await;
    let mut answered = Vec::new();
    for _ in 0..400 {
        let reply = within("answer", STEP, net::read_frame(&mut recv, 4 << 20))
            .await
            .unwrap()
            .unwrap();
        match reply {
            Some(Message::FetchResponse(response)) => {
                assert!(!response.events.is_empty());
                answered.push(response.request_id);
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }
    answered.sort_unstable();
    assert_eq!(answered, (1..=400).collect::<Vec<_>>());
    let done = within(
        "answers released",
        STEP,
        gauges.wait_until(|s| s.answer_bytes == 0),
    )
    .await
    .unwrap();
    // Node-wide, the peak also counts the well-behaved clients' answers.
    let answer_bytes_max = node.config().transport.answer_bytes_max;
    assert!(done.answer_bytes_peak <= answer_bytes_max, "{done:?}");
}

#[tokio::test]
async fn bounds_that_do_not_fit_the_machine_fail_the_start() {
    // Checks that byte budgets larger than the machine's memory make the node refuse to start
    // with a config error naming the keys, instead of accepting clients it cannot hold.
    let mut node = TestNode::builder()
        .configure(|config| {
            config.transport.request_bytes_max = 1 << 50;
            config.transport.answer_bytes_max = 1 << 50;
        })
        .create()
        .unwrap();
    let error = node.start().await.unwrap_err().to_string();
    assert!(error.contains("more than the machine's"), "{error}");
    assert!(error.contains("transport.request_bytes_max"), "{error}");
}
