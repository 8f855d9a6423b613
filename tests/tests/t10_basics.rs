//! Basics against a real in-process node over QUIC + mTLS: a produce and fetch round trip with
//! every payload kind, a long-polling fetch, and 100k events from four concurrent producers read
//! back complete and in order.

use sluice_proto::msg::{FetchFrom, FetchRequest};
use sluice_proto::{DropReason, Identity, Offset, PartitionId, Payload, Reading, Role};
use sluice_tests::{
    fetch_partition, fetch_stream, produce_acked, record, stream, tagged_payload, tagged_records,
    within, TestNode, CLUSTER, EVENTS, SINGLE, STEP,
};
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test]
async fn produced_events_read_back_stamped_with_the_producer() {
    // Checks that records of every payload kind are acknowledged at dense offsets and read back
    // unchanged, stamped with the producer identity from the client certificate and a receive
    // time, and that a long-polling fetch at the end of the log is woken by a later produce.
    let node = TestNode::in_process().await.unwrap();
    let edge = node.edge_client("pi-01").await.unwrap();
    let payloads = [
        Payload::Reading(Reading::Temperature { celsius: 21.5 }),
        Payload::Reading(Reading::Metric {
            name: "door_open".into(),
            unit: "bool".into(),
            value: 1.0,
        }),
        Payload::Json(r#"{"alert":"scan","severity":3}"#.into()),
        Payload::Bytes(vec![0, 1, 2, 255]),
        Payload::Dropped {
            seq_last: 9,
            reason: DropReason::SpoolFull,
        },
        Payload::Reading(Reading::Humidity { percent: 40.0 }),
    ];
    let records: Vec<_> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| record("room", 1, if i == 5 { 10 } else { i as u64 }, p.clone()).unwrap())
        .collect();
    let acks = produce_acked(&edge, SINGLE, records.clone()).await.unwrap();
    assert_eq!(
        acks.iter().map(|a| a.offset.0).collect::<Vec<_>>(),
        (0..6).collect::<Vec<_>>()
    );

    let admin = node.admin().await.unwrap();
    let events = fetch_partition(&admin, SINGLE, 0).await.unwrap();
    assert_eq!(events.len(), records.len());
    let producer = Identity::new(CLUSTER, Role::Edge, "pi-01").unwrap();
    for (stored, sent) in events.iter().zip(&records) {
        assert_eq!(stored.event.producer, producer);
        assert_eq!(
            (&stored.event.sensor, stored.event.seq),
            (&sent.sensor, sent.seq)
        );
        assert_eq!(stored.event.payload, sent.payload);
        assert!(
            stored.event.received_time.0 > 1_600_000_000_000,
            "{:?}",
            stored.event.received_time
        );
    }

    // A fetch at the end of the log waits; once the node has it (its counter moved), a produce
    // must wake it with the new event.
    let fetches = node.counter("fetch_requests_total").unwrap();
    let waiting = {
        let admin = admin.clone();
        tokio::spawn(async move {
            let request = FetchRequest {
                request_id: 0,
                stream: stream(SINGLE).unwrap(),
                partition: PartitionId(0),
                from: FetchFrom::Offset(Offset(6)),
                events_max: 10,
                bytes_max: 1 << 20,
                wait_ms: 20_000,
            };
            admin.fetch(request).await
        })
    };
    within("fetch to arrive", STEP, async {
        while node.counter("fetch_requests_total").unwrap() == fetches {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    let late = tagged_records("room", 1, 11..12, 10).unwrap();
    let ack = produce_acked(&edge, SINGLE, late.clone()).await.unwrap()[0];
    let response = within("long poll", STEP, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.events.len(), 1, "{response:?}");
    assert_eq!(response.events[0].offset, ack.offset);
    assert_eq!(response.events[0].event.payload, late[0].payload);
    assert!(response.high_watermark > Offset(6));
}

const PRODUCERS: usize = 4;
const SENSORS: usize = 5;
const BATCHES: u64 = 50;
const PER_SENSOR_PER_BATCH: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_events_from_four_producers_read_back_in_order() {
    // Checks that 100,000 events produced concurrently by 4 edge identities, each writing the
    // same 5 sensor ids in batches of 500, are all acknowledged and read back exactly once: per
    // partition the offsets are dense from 0, per (producer, sensor) the seqs run 0, 1, 2, ...
    // without gaps in offset order, every acknowledged offset holds the record sent, and the
    // total is exactly 100,000.
    let node = TestNode::in_process().await.unwrap();
    let total = PRODUCERS as u64 * SENSORS as u64 * BATCHES * PER_SENSOR_PER_BATCH;
    assert_eq!(total, 100_000);
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..PRODUCERS {
        let edge = node.edge_client(&format!("p{p}")).await.unwrap();
        tasks.spawn(async move {
            // (partition, offset) -> (sensor, seq) of every ack.
            let mut acked = BTreeMap::new();
            for batch in 0..BATCHES {
                let seqs = batch * PER_SENSOR_PER_BATCH..(batch + 1) * PER_SENSOR_PER_BATCH;
                let mut records = Vec::new();
                for seq in seqs {
                    for s in 0..SENSORS {
                        let sensor = format!("s{s}");
                        let payload = tagged_payload(&format!("p{p}/{sensor}"), 1, seq, 40);
                        records.push(record(&sensor, 1, seq, payload).unwrap());
                    }
                }
                let keys: Vec<_> = records
                    .iter()
                    .map(|r| (r.sensor.to_string(), r.seq))
                    .collect();
                let acks = produce_acked(&edge, EVENTS, records).await.unwrap();
                for (ack, key) in acks.into_iter().zip(keys) {
                    assert!(!ack.duplicate);
                    assert!(acked.insert((ack.partition.0, ack.offset.0), key).is_none());
                }
            }
            (p, acked)
        });
    }
    let results = within("producers", Duration::from_secs(150), tasks.join_all())
        .await
        .unwrap();

    let admin = node.admin().await.unwrap();
    let partitions = fetch_stream(&admin, EVENTS).await.unwrap();
    let stored: usize = partitions.iter().map(Vec::len).sum();
    assert_eq!(stored as u64, total);
    // (producer, sensor) -> next seq expected.
    let mut next: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (p, events) in partitions.iter().enumerate() {
        for (i, stored) in events.iter().enumerate() {
            assert_eq!(stored.offset.0, i as u64, "partition {p} offsets not dense");
            let e = &stored.event;
            let key = (e.producer.name.clone(), e.sensor.to_string());
            let want = next.entry(key.clone()).or_insert(0);
            assert_eq!(e.seq, *want, "{key:?} in partition {p} at offset {i}");
            *want += 1;
            assert_eq!(
                e.payload,
                tagged_payload(&format!("{}/{}", key.0, key.1), 1, e.seq, 40)
            );
        }
    }
    assert_eq!(next.len(), PRODUCERS * SENSORS);
    assert!(
        next.values().all(|n| *n == BATCHES * PER_SENSOR_PER_BATCH),
        "{next:?}"
    );
    for (p, acked) in results {
        assert_eq!(acked.len() as u64, total / PRODUCERS as u64);
        for ((partition, offset), (sensor, seq)) in acked {
            let e = &partitions[partition as usize][offset as usize].event;
            assert_eq!(
                (e.producer.name.as_str(), e.sensor.as_str(), e.seq),
                (format!("p{p}").as_str(), sensor.as_str(), seq)
            );
        }
    }
}
