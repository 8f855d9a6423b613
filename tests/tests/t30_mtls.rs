//! Mutual TLS refusals at a real node (`Node::start` + `Node::serve`), with certificates made by
//! `sluice_node::certs`. `proto/tests/net_mtls.rs` covers the generic connection layer with a toy
//! handler; this file checks that the node wires it up the same way: each bad client is refused
//! with an error naming the reason, and the node keeps serving a good client afterwards.

use sluice_proto::net::{self, Client, NetError, TlsMaterial};
use sluice_proto::{testing, Role};
use sluice_tests::{
    fetch_partition, produce_acked, stream, tagged_records, within, CertDir, TestNode, Validity,
    CLUSTER, SINGLE, STEP,
};

/// Connects with `material` and makes one metadata call; the first error, from either.
async fn connect_and_call(node: &TestNode, material: TlsMaterial) -> Result<(), NetError> {
    let settings = node.settings_for(material);
    let client = within("connect", STEP, Client::connect(&settings))
        .await
        .expect("connect hung")?;
    within("metadata", STEP, client.metadata(stream(SINGLE).unwrap()))
        .await
        .expect("metadata hung")?;
    Ok(())
}

/// Checks that the node still serves a good edge: a produce is acknowledged and read back.
async fn still_serves(node: &TestNode, seq: u64) {
    let edge = node.edge_client("good").await.unwrap();
    let records = tagged_records("mtls", 1, seq..seq + 1, 40).unwrap();
    let acks = produce_acked(&edge, SINGLE, records.clone()).await.unwrap();
    let admin = node.admin().await.unwrap();
    let events = fetch_partition(&admin, SINGLE, 0).await.unwrap();
    let stored = &events[acks[0].offset.0 as usize];
    assert_eq!(stored.event.payload, records[0].payload);
}

#[tokio::test]
async fn certificate_of_another_ca_is_refused() {
    // Checks that client certificates issued by a foreign CA (one of another cluster name, and
    // one of the same name but another key) are refused with "not issued by this cluster's ca",
    // and that the node keeps serving.
    let node = TestNode::in_process().await.unwrap();
    still_serves(&node, 0).await;
    for (i, cluster) in ["elsewhere", CLUSTER].into_iter().enumerate() {
        let foreign = CertDir::temp(cluster).unwrap();
        let stem = foreign
            .issue(Role::Edge, "intruder", Validity::Now)
            .unwrap();
        let material = foreign.material_trusting(&stem, node.certs()).unwrap();
        let error = connect_and_call(&node, material).await.unwrap_err();
        assert!(
            error
                .to_string()
                .contains("not issued by this cluster's ca"),
            "{cluster}: {error}"
        );
        still_serves(&node, i as u64 + 1).await;
    }
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused() {
    // Checks that an edge certificate that expired yesterday and one valid only from tomorrow
    // are refused with the certificate-expired TLS alert named in the error, and that the node
    // keeps serving.
    let node = TestNode::in_process().await.unwrap();
    for (i, validity) in [Validity::Expired, Validity::NotYetValid]
        .into_iter()
        .enumerate()
    {
        let stem = node.issue(Role::Edge, &format!("v{i}"), validity).unwrap();
        let error = connect_and_call(&node, node.material(&stem).unwrap())
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("certificate expired or not yet valid"),
            "{validity:?}: {error}"
        );
        still_serves(&node, i as u64).await;
    }
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    // Checks that a QUIC client that offers no certificate at all is closed during the handshake
    // with the TLS certificate_required alert (QUIC crypto error 0x100 + 116), and that the node
    // keeps serving.
    let node = TestNode::in_process().await.unwrap();
    let admin = node.material(sluice_tests::ADMIN).unwrap();
    let config = testing::client_config_without_certificate(&admin).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = endpoint
        .connect_with(config, node.addr(), "localhost")
        .unwrap();
    let closed = match within("handshake", STEP, connecting).await.unwrap() {
        Err(error) => error,
        Ok(connection) => within("close", STEP, connection.closed()).await.unwrap(),
    };
    match &closed {
        quinn::ConnectionError::ConnectionClosed(close) => {
            assert_eq!(u64::from(close.error_code), 0x100 + 116, "{closed}");
            let reason = String::from_utf8_lossy(&close.reason).to_lowercase();
            assert!(reason.contains("certificate"), "{closed}");
        }
        other => panic!("unexpected close {other}"),
    }
    still_serves(&node, 0).await;
}

#[tokio::test]
async fn node_certificate_used_as_client_is_refused_by_role() {
    // Checks that the node's own certificate (role node) presented by a client is refused after
    // the handshake with the role close code and the reason "role node not allowed here", and
    // that the node keeps serving.
    let node = TestNode::in_process().await.unwrap();
    let error = connect_and_call(&node, node.material("node-1").unwrap())
        .await
        .unwrap_err();
    match &error {
        NetError::Refused { code, reason } => {
            assert_eq!(*code, u64::from(net::CLOSE_ROLE_NOT_ALLOWED), "{error}");
            assert_eq!(reason, "role node not allowed here");
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(error.to_string().contains("role node not allowed here"));
    still_serves(&node, 0).await;
}
