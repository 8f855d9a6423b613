//! API corner cases against a real in-process node over QUIC + mTLS: ACL denials, retries and
//! sequence rules of produce, and malformed or oversized frames on raw QUIC streams.

use rand::{Rng, SeedableRng};
use sluice_proto::frame::{self, FrameHeader, Kind, HEADER_LEN, MAGIC};
use sluice_proto::msg::{
    ErrorCode, ErrorResponse, FetchFrom, FetchRequest, Message, MetadataRequest, MetadataResponse,
    ProduceRequest, ProduceResponse, RecordOutcome, RecordRejection,
};
use sluice_proto::net::{self, Client, NetError};
use sluice_proto::{PartitionId, Payload};
use sluice_tests::{
    fetch_partition, fetch_stream, produce_acked, record, stream, tagged_records, within, Ack,
    TestNode, ADMIN, EVENTS, PRIVATE, SINGLE, STEP,
};

fn fetch_request(name: &str) -> FetchRequest {
    FetchRequest {
        request_id: 0,
        stream: stream(name).unwrap(),
        partition: PartitionId(0),
        from: FetchFrom::Earliest,
        events_max: 100,
        bytes_max: 1 << 20,
        wait_ms: 0,
    }
}

fn assert_remote(error: &NetError, want: ErrorCode, words: &[&str]) {
    match error {
        NetError::Remote { code, message } => {
            assert_eq!(*code, want, "{error}");
            for word in words {
                assert!(message.contains(word), "{word:?} not in {message:?}");
            }
        }
        other => panic!("expected a remote {want:?} error, got {other}"),
    }
}

#[tokio::test]
async fn acl_denials_are_typed_forbidden_and_counted() {
    // Checks that an edge producing to a stream its ACL does not list, and consuming a stream it
    // may only produce to, each get a typed Forbidden error naming the identity and stream; that
    // `acl_denied_requests_total` counts both; that the ACL is checked before existence (an
    // identity without permission gets Forbidden for an unknown stream too, so it cannot probe
    // which streams exist, while an identity the ACL lets in learns UnknownStream); and that
    // allowed requests on the same connection work.
    let node = TestNode::in_process().await.unwrap();
    let edge = node.edge_client("pi").await.unwrap();
    let before = node.counter("acl_denied_requests_total").unwrap();

    let records = tagged_records("door", 1, 0..3, 20).unwrap();
    let error = within(
        "produce",
        STEP,
        edge.produce(stream(PRIVATE).unwrap(), records.clone()),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_remote(
        &error,
        ErrorCode::Forbidden,
        &["sluice://itest/edge/pi", "produce", PRIVATE],
    );
    assert_eq!(
        node.counter("acl_denied_requests_total").unwrap(),
        before + 1
    );

    let error = within("fetch", STEP, edge.fetch(fetch_request(EVENTS)))
        .await
        .unwrap()
        .unwrap_err();
    assert_remote(
        &error,
        ErrorCode::Forbidden,
        &["sluice://itest/edge/pi", "consume", EVENTS],
    );
    assert_eq!(
        node.counter("acl_denied_requests_total").unwrap(),
        before + 2
    );

    // Unknown and existing streams the edge may not use get the same answer, for every request
    // naming a stream.
    for name in ["nope", PRIVATE] {
        let error = within("metadata", STEP, edge.metadata(stream(name).unwrap()))
            .await
            .unwrap()
            .unwrap_err();
        assert_remote(
            &error,
            ErrorCode::Forbidden,
            &["sluice://itest/edge/pi", "may not", name],
        );
        let error = within(
            "produce",
            STEP,
            edge.produce(stream(name).unwrap(), records.clone()),
        )
        .await
        .unwrap()
        .unwrap_err();
        assert_remote(&error, ErrorCode::Forbidden, &["produce", name]);
        let error = within("fetch", STEP, edge.fetch(fetch_request(name)))
            .await
            .unwrap()
            .unwrap_err();
        assert_remote(&error, ErrorCode::Forbidden, &["consume", name]);
    }
    assert_eq!(
        node.counter("acl_denied_requests_total").unwrap(),
        before + 8
    );
    let admin = node.admin().await.unwrap();
    let error = within("metadata", STEP, admin.metadata(stream("nope").unwrap()))
        .await
        .unwrap()
        .unwrap_err();
    assert_remote(&error, ErrorCode::UnknownStream, &["nope"]);
    assert_eq!(
        node.counter("acl_denied_requests_total").unwrap(),
        before + 8
    );
    // The largest partition id is named in the refusal, not wrapped.
    let mut request = fetch_request(SINGLE);
    request.partition = PartitionId(u32::MAX);
    let error = within("fetch", STEP, admin.fetch(request))
        .await
        .unwrap()
        .unwrap_err();
    assert_remote(&error, ErrorCode::UnknownPartition, &["4294967295"]);

    // The connection is still usable for what the ACL allows.
    let acks = produce_acked(&edge, SINGLE, records).await.unwrap();
    assert_eq!(acks.len(), 3);
    assert!(fetch_partition(&admin, PRIVATE, 0)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(fetch_partition(&admin, SINGLE, 0).await.unwrap().len(), 3);
}

fn offsets(acks: &[Ack]) -> Vec<u64> {
    acks.iter().map(|a| a.offset.0).collect()
}

fn rejection(outcome: &RecordOutcome) -> &RecordRejection {
    match outcome {
        RecordOutcome::Rejected(rejection) => rejection,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn retries_get_original_offsets_and_sequence_rules_are_typed() {
    // Checks the produce rules end to end: a retried batch is answered with its original offsets
    // and duplicate=true without storing anything again; a batch overlapping the end of the last
    // one gets old offsets for the old part and new ones for the rest; a seq gap is a typed
    // SequenceGap (for that record and the later ones of its sensor) while other sensors in the
    // batch are stored; a first record or a new epoch not starting at seq 0 is EpochStart; a new
    // epoch at 0 is accepted; and the old epoch is StaleEpoch afterwards.
    let node = TestNode::in_process().await.unwrap();
    let edge = node.edge_client("pi").await.unwrap();
    let name = stream(SINGLE).unwrap();

    let first = tagged_records("temp", 1, 0..10, 30).unwrap();
    let acks = produce_acked(&edge, SINGLE, first.clone()).await.unwrap();
    assert_eq!(offsets(&acks), (0..10).collect::<Vec<_>>());
    assert!(acks.iter().all(|a| !a.duplicate));

    let again = produce_acked(&edge, SINGLE, first.clone()).await.unwrap();
    assert_eq!(offsets(&again), offsets(&acks));
    assert!(again.iter().all(|a| a.duplicate), "{again:?}");

    let overlap = tagged_records("temp", 1, 5..15, 30).unwrap();
    let acks = produce_acked(&edge, SINGLE, overlap).await.unwrap();
    assert_eq!(offsets(&acks), (5..15).collect::<Vec<_>>());
    assert_eq!(
        acks.iter().map(|a| a.duplicate).collect::<Vec<_>>(),
        [[true; 5], [false; 5]].concat()
    );

    // A gap: seqs 17 and 18 skip 15 and 16; the humidity sensor in the same batch is stored.
    let mut batch = tagged_records("temp", 1, 17..19, 30).unwrap();
    batch.extend(tagged_records("humidity", 1, 0..2, 30).unwrap());
    let response = within("produce", STEP, edge.produce(name.clone(), batch))
        .await
        .unwrap()
        .unwrap();
    for (i, got) in [17, 18].into_iter().enumerate() {
        assert_eq!(
            rejection(&response.outcomes[i]),
            &RecordRejection::SequenceGap {
                sensor: "temp".into(),
                expected: 15,
                got
            }
        );
    }
    assert!(response.outcomes[2..].iter().all(|o| matches!(
        o,
        RecordOutcome::Appended {
            duplicate: false,
            ..
        }
    )));

    // A sensor never seen must start at 0; so must a new epoch of a known sensor.
    let late_start = vec![record("fresh", 1, 3, Payload::Json("{}".into())).unwrap()];
    let new_epoch_mid = vec![record("temp", 2, 5, Payload::Json("{}".into())).unwrap()];
    for (batch, epoch, got, sensor) in [(late_start, 1, 3, "fresh"), (new_epoch_mid, 2, 5, "temp")]
    {
        let response = within("produce", STEP, edge.produce(name.clone(), batch))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            rejection(&response.outcomes[0]),
            &RecordRejection::EpochStart {
                sensor: sensor.into(),
                epoch,
                got
            }
        );
    }
    let epoch_two = tagged_records("temp", 2, 0..3, 30).unwrap();
    let acks = produce_acked(&edge, SINGLE, epoch_two).await.unwrap();
    assert_eq!(offsets(&acks), (17..20).collect::<Vec<_>>());
    let stale = tagged_records("temp", 1, 15..16, 30).unwrap();
    let response = within("produce", STEP, edge.produce(name.clone(), stale))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        rejection(&response.outcomes[0]),
        &RecordRejection::StaleEpoch {
            sensor: "temp".into(),
            epoch: 1,
            current: 2
        }
    );

    // The log holds each accepted record once, in order.
    let admin = node.admin().await.unwrap();
    let events = fetch_partition(&admin, SINGLE, 0).await.unwrap();
    let got: Vec<(String, u64, u64)> = events
        .iter()
        .map(|e| {
            (
                e.event.sensor.to_string(),
                e.event.boot_epoch.0,
                e.event.seq,
            )
        })
        .collect();
    let mut want: Vec<(String, u64, u64)> = (0..15).map(|s| ("temp".into(), 1, s)).collect();
    want.extend((0..2).map(|s| ("humidity".into(), 1, s)));
    want.extend((0..3).map(|s| ("temp".into(), 2, s)));
    assert_eq!(got, want);
    assert!(events
        .iter()
        .enumerate()
        .all(|(i, e)| e.offset.0 == i as u64));
}

/// Opens a raw stream, writes `bytes` (the peer may stop reading early), finishes, and returns
/// the first frame read back, or the error that ended the stream; then drains the stream.
async fn raw_exchange(
    connection: &quinn::Connection,
    bytes: &[u8],
) -> Result<Option<Message>, NetError> {
    let (mut send, mut recv) = within("open stream", STEP, connection.open_bi())
        .await
        .unwrap()
        .unwrap();
    let write = async {
        // The node stops the stream after a bad header, so this write may fail; that is fine.
        let _ = send.write_all(bytes).await;
        let _ = send.finish();
    };
    let read = async {
        let first = net::read_frame(&mut recv, 1 << 20).await;
        let _ = recv.read_to_end(1 << 20).await;
        first
    };
    let ((), first) = within("raw exchange", STEP, async { tokio::join!(write, read) })
        .await
        .unwrap();
    first
}

/// Asserts that a raw exchange got an error response with request id 0 and `code`.
fn assert_frame_error(reply: &Result<Option<Message>, NetError>, code: ErrorCode) {
    match reply {
        Ok(Some(Message::Error(ErrorResponse {
            request_id: 0,
            code: got,
            ..
        }))) if *got == code => {}
        other => panic!("expected an error response {code:?} with request id 0, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_oversized_frames_do_not_hurt_the_node() {
    // Checks, on raw QUIC streams of an authenticated admin connection to a node whose frame
    // limit is 64 KiB: garbage bytes, a wrong protocol version, a valid header with a body that
    // does not decode and a truncated frame each get BadRequest; a header announcing 4 GiB and a
    // real 80 KiB produce frame each get TooLarge; 30 seeded random byte strings each get an
    // error response or a closed stream; a pipelining client whose frame is over the node's
    // limit gets a TooLarge error; a too-large batch is refused whole; and after all of it the
    // same connection still answers, and the events acknowledged before are intact.
    let node = TestNode::builder()
        .configure(|c| {
            c.transport.frame_bytes_max = 64 << 10;
            c.ingest.batch_records_max = 100;
        })
        .start()
        .await
        .unwrap();
    let edge = node.edge_client("pi").await.unwrap();
    let before = tagged_records("temp", 1, 0..50, 60).unwrap();
    produce_acked(&edge, EVENTS, before.clone()).await.unwrap();
    let admin = node.admin().await.unwrap();
    let stored_before = fetch_stream(&admin, EVENTS).await.unwrap();

    let config = net::client_config(&node.material(ADMIN).unwrap(), sluice_tests::CLUSTER).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = endpoint
        .connect_with(config, node.addr(), "127.0.0.1")
        .unwrap();
    let connection = within("connect", STEP, connecting).await.unwrap().unwrap();

    assert_frame_error(
        &raw_exchange(&connection, b"GARBAGE GARBAGE GARBAGE").await,
        ErrorCode::BadRequest,
    );
    let mut bad_version = MAGIC.to_vec();
    bad_version.extend_from_slice(&[0, 99, 0, 5, 0, 0, 0, 0]);
    assert_frame_error(
        &raw_exchange(&connection, &bad_version).await,
        ErrorCode::BadRequest,
    );
    let mut bad_body = FrameHeader {
        kind: Kind::ProduceRequest,
        body_len: 64,
    }
    .to_bytes()
    .to_vec();
    bad_body.extend_from_slice(&[0xff; 64]);
    assert_frame_error(
        &raw_exchange(&connection, &bad_body).await,
        ErrorCode::BadRequest,
    );
    let mut truncated = FrameHeader {
        kind: Kind::MetadataRequest,
        body_len: 100,
    }
    .to_bytes()
    .to_vec();
    truncated.extend_from_slice(&[1; 10]);
    assert_frame_error(
        &raw_exchange(&connection, &truncated).await,
        ErrorCode::BadRequest,
    );

    let huge = FrameHeader {
        kind: Kind::ProduceRequest,
        body_len: u32::MAX,
    }
    .to_bytes();
    assert_frame_error(&raw_exchange(&connection, &huge).await, ErrorCode::TooLarge);
    let big_records = vec![record("temp", 1, 50, Payload::Bytes(vec![7; 80 << 10])).unwrap()];
    let big = frame::encode(&Message::ProduceRequest(ProduceRequest {
        request_id: 1,
        stream: stream(EVENTS).unwrap(),
        records: big_records.clone(),
    }))
    .unwrap();
    assert!(big.len() > HEADER_LEN + (64 << 10));
    assert_frame_error(&raw_exchange(&connection, &big).await, ErrorCode::TooLarge);

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(30);
    for i in 0..30 {
        let len = rng.random_range(1..2000);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if i % 3 == 0 && bytes.len() >= HEADER_LEN {
            // A valid header over random bytes reaches the body decoder.
            let kind = Kind::ALL[i % Kind::ALL.len()];
            let header = FrameHeader {
                kind,
                body_len: (len - HEADER_LEN) as u32,
            }
            .to_bytes();
            bytes[..HEADER_LEN].copy_from_slice(&header);
        }
        match raw_exchange(&connection, &bytes).await {
            Ok(Some(Message::Error(_))) | Ok(None) | Err(_) => {}
            Ok(Some(other)) => panic!("random frame {i} was answered with {other:?}"),
        }
    }

    // A non-request message is answered by id, and the same stream then serves a request.
    let (mut send, mut recv) = within("open", STEP, connection.open_bi())
        .await
        .unwrap()
        .unwrap();
    let not_a_request = Message::ProduceResponse(ProduceResponse {
        request_id: 7,
        outcomes: vec![],
    });
    within("write", STEP, net::write_frame(&mut send, &not_a_request))
        .await
        .unwrap()
        .unwrap();
    match within("read", STEP, net::read_frame(&mut recv, 1 << 20))
        .await
        .unwrap()
        .unwrap()
    {
        Some(Message::Error(ErrorResponse {
            request_id: 7,
            code: ErrorCode::BadRequest,
            ..
        })) => {}
        other => panic!("unexpected reply {other:?}"),
    }
    let request = Message::MetadataRequest(MetadataRequest {
        request_id: 8,
        stream: stream(EVENTS).unwrap(),
    });
    within("write", STEP, net::write_frame(&mut send, &request))
        .await
        .unwrap()
        .unwrap();
    match within("read", STEP, net::read_frame(&mut recv, 1 << 20))
        .await
        .unwrap()
        .unwrap()
    {
        Some(Message::MetadataResponse(MetadataResponse {
            request_id: 8,
            n_partitions: 4,
            ..
        })) => {}
        other => panic!("unexpected reply {other:?}"),
    }

    // The pipelining client sends a frame over the node's limit: its stream is ended with the
    // node's TooLarge error, which the call reports.
    let big_client = node.edge_client("big").await.unwrap();
    let error = within(
        "produce",
        STEP,
        big_client.produce(stream(EVENTS).unwrap(), big_records),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(
            error,
            NetError::Remote {
                code: ErrorCode::TooLarge,
                ..
            }
        ),
        "{error}"
    );
    // A batch over batch_records_max is refused whole with TooLarge, and the client goes on.
    let error = within(
        "produce",
        STEP,
        edge.produce(
            stream(EVENTS).unwrap(),
            tagged_records("temp", 1, 50..151, 10).unwrap(),
        ),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(
            error,
            NetError::Remote {
                code: ErrorCode::TooLarge,
                ..
            }
        ),
        "{error}"
    );

    // Still serving, and nothing acknowledged before was damaged.
    let fresh = Client::connect(&node.settings(ADMIN).unwrap())
        .await
        .unwrap();
    assert_eq!(fetch_stream(&fresh, EVENTS).await.unwrap(), stored_before);
    let stored: Vec<_> = stored_before
        .into_iter()
        .flatten()
        .map(|e| e.event.payload)
        .collect();
    let sent: Vec<_> = before.into_iter().map(|r| r.payload).collect();
    assert_eq!(
        stored, sent,
        "the one sensor lives in one partition, in order"
    );
    produce_acked(
        &edge,
        EVENTS,
        tagged_records("temp", 1, 50..60, 60).unwrap(),
    )
    .await
    .unwrap();
    let events: usize = fetch_stream(&fresh, EVENTS)
        .await
        .unwrap()
        .iter()
        .map(Vec::len)
        .sum();
    assert_eq!(events, 60);
    endpoint.close(0u32.into(), b"done");
}

#[tokio::test]
async fn one_identity_flooding_sensor_ids_does_not_stop_another_identitys_new_sensors() {
    // Checks the per-identity producer budget over the wire: an edge sending 5,000 distinct
    // sensor ids to a one-partition stream whose partition tracks 1,000 producers gets exactly
    // its budget of 200 stored and a typed TooManyProducers for the rest, its stored sensors
    // go on, and another edge's new sensors are all stored.
    let node = TestNode::builder()
        .configure(|config| {
            config.ingest.producers_max = 1_000;
            config.ingest.producers_per_identity_max = 200;
        })
        .start()
        .await
        .unwrap();
    let flood = node.edge_client("flood").await.unwrap();
    let mut n_stored = 0;
    for chunk in 0..5 {
        let records = (0..1_000)
            .map(|i| record(&format!("id-{chunk}-{i}"), 1, 0, Payload::Bytes(vec![1])).unwrap())
            .collect();
        let response = within(
            "produce",
            STEP,
            flood.produce(stream(SINGLE).unwrap(), records),
        )
        .await
        .unwrap()
        .unwrap();
        for outcome in &response.outcomes {
            match outcome {
                RecordOutcome::Appended { .. } => n_stored += 1,
                RecordOutcome::Rejected(RecordRejection::TooManyProducers { max: 200 }) => {}
                other => panic!("unexpected outcome {other:?}"),
            }
        }
    }
    assert_eq!(n_stored, 200);
    // A sensor within the flooder's budget goes on.
    let acks = produce_acked(
        &flood,
        SINGLE,
        vec![record("id-0-0", 1, 1, Payload::Bytes(vec![2])).unwrap()],
    )
    .await
    .unwrap();
    assert_eq!(acks[0].offset.0, 200);
    // Another identity's new sensors are all stored.
    let other = node.edge_client("other").await.unwrap();
    let records = (0..150)
        .map(|i| record(&format!("fresh-{i}"), 1, 0, Payload::Bytes(vec![3])).unwrap())
        .collect();
    let acks = produce_acked(&other, SINGLE, records).await.unwrap();
    assert_eq!(acks.len(), 150);
    assert!(acks.iter().all(|a| !a.duplicate));
}
