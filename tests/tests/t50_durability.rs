//! Durability under crashes and damaged files: `kill -9` of a `sluice run` child process while
//! producers are producing, and recovery from a torn tail appended to the last segment file.

use rand::{Rng, SeedableRng};
use sluice_proto::msg::{RecordOutcome, RecordRejection};
use sluice_proto::net::Client;
use sluice_proto::{Record, StoredEvent};
use sluice_tests::{
    fetch_partition, fetch_stream, produce_acked, segment_data_end, segment_files, stream,
    tagged_payload, tagged_records, within, Ack, TestNode, ENTRY_HEADER_LEN, EVENTS, SINGLE, STEP,
};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::watch;

const PRODUCERS: usize = 3;
const SENSORS: usize = 4;
const PER_SENSOR_PER_BATCH: u64 = 10;
const BATCHES: u64 = 60;
/// Acknowledged events before the node is killed (of 7,200 in all).
const KILL_AFTER: u64 = 1_500;

/// What one producer saw: every record with its final ack, and how often it lost the node.
struct ProducerLog {
    name: String,
    acked: Vec<(Record, Ack)>,
    interrupted: u32,
    duplicates: u64,
}

fn batch(p: usize, batch: u64) -> Vec<Record> {
    let mut records = Vec::new();
    for seq in batch * PER_SENSOR_PER_BATCH..(batch + 1) * PER_SENSOR_PER_BATCH {
        for s in 0..SENSORS {
            let sensor = format!("k{p}-s{s}");
            records.extend(tagged_records(&sensor, 1, seq..seq + 1, 48).unwrap());
        }
    }
    records
}

/// Produces BATCHES batches, one in flight. A batch whose ack does not come (the node died) is
/// sent again, unchanged, once the node is back (`generation` moves); at most 5 attempts each.
async fn produce(
    node_settings: sluice_proto::net::ClientSettings,
    p: usize,
    acked_total: watch::Sender<u64>,
    mut generation: watch::Receiver<u64>,
) -> ProducerLog {
    let name = format!("k{p}");
    let mut client = Client::connect(&node_settings).await.unwrap();
    let mut log = ProducerLog {
        name,
        acked: Vec::new(),
        interrupted: 0,
        duplicates: 0,
    };
    let mut seen_generation = 0;
    for b in 0..BATCHES {
        let records = batch(p, b);
        let mut attempt = 0;
        loop {
            attempt += 1;
            assert!(
                attempt <= 5,
                "{}: batch {b} not acknowledged after 4 retries",
                log.name
            );
            let sent = client
                .produce(stream(EVENTS).unwrap(), records.clone())
                .await;
            let outcomes = match sent {
                Ok(response) => response.outcomes,
                Err(_) => {
                    // The node is gone: wait until it has been restarted, then reconnect.
                    log.interrupted += 1;
                    within(
                        "node restart",
                        Duration::from_secs(60),
                        generation.wait_for(|g| *g > seen_generation),
                    )
                    .await
                    .unwrap()
                    .unwrap();
                    seen_generation = *generation.borrow();
                    client = within("reconnect", STEP, Client::connect(&node_settings))
                        .await
                        .unwrap()
                        .unwrap();
                    continue;
                }
            };
            let retry = outcomes.iter().any(|o| {
                matches!(
                    o,
                    RecordOutcome::Rejected(
                        RecordRejection::Unavailable { .. } | RecordRejection::Overloaded { .. }
                    )
                )
            });
            if retry {
                continue;
            }
            for (record, outcome) in records.iter().zip(outcomes) {
                match outcome {
                    RecordOutcome::Appended {
                        partition,
                        offset,
                        duplicate,
                        ..
                    } => {
                        log.duplicates += u64::from(duplicate);
                        log.acked.push((
                            record.clone(),
                            Ack {
                                partition,
                                offset,
                                duplicate,
                            },
                        ));
                    }
                    RecordOutcome::Rejected(r) => panic!(
                        "{}: {} seq {} rejected: {r}",
                        log.name, record.sensor, record.seq
                    ),
                }
            }
            acked_total.send_modify(|n| *n += records.len() as u64);
            break;
        }
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_loses_no_acknowledged_event_and_retries_do_not_duplicate() {
    // Checks that after `kill -9` of the node process while three producers are producing
    // batches, a restart on the same data dir serves every event whose ack a producer received at
    // its acked offset with the same content; that producers retrying their unacknowledged batch
    // after the restart are answered without duplicates (the log holds every (producer, sensor,
    // seq) once, seqs gapless in offset order, offsets dense); and that the crash interrupted
    // production.
    let mut node = TestNode::builder().child_process().start().await.unwrap();
    let mut settings = Vec::new();
    for p in 0..PRODUCERS {
        let mut s = node
            .settings(&node.edge(&format!("k{p}")).unwrap())
            .unwrap();
        // A killed node never answers: the connection times out instead of the request.
        s.idle_timeout_ms = 2_000;
        s.request_timeout_ms = 15_000;
        settings.push(s);
    }
    let (acked_tx, mut acked_rx) = watch::channel(0u64);
    let (generation_tx, generation_rx) = watch::channel(0u64);
    let mut producers = tokio::task::JoinSet::new();
    for (p, s) in settings.into_iter().enumerate() {
        producers.spawn(produce(s, p, acked_tx.clone(), generation_rx.clone()));
    }
    let before_kill = within(
        "acks before the kill",
        Duration::from_secs(60),
        acked_rx.wait_for(|n| *n >= KILL_AFTER),
    )
    .await
    .unwrap()
    .map(|n| *n)
    .unwrap();
    node.kill().await.unwrap();
    node.start().await.unwrap();
    generation_tx.send_replace(1);
    let logs = within("producers", Duration::from_secs(120), producers.join_all())
        .await
        .unwrap();

    let admin = node.admin().await.unwrap();
    let partitions = fetch_stream(&admin, EVENTS).await.unwrap();
    let total = (PRODUCERS as u64) * SENSORS as u64 * PER_SENSOR_PER_BATCH * BATCHES;
    let mut keys = BTreeSet::new();
    let mut next_seq = std::collections::BTreeMap::new();
    for (p, events) in partitions.iter().enumerate() {
        for (i, stored) in events.iter().enumerate() {
            assert_eq!(stored.offset.0, i as u64, "partition {p} offsets not dense");
            let e = &stored.event;
            assert!(
                keys.insert((
                    e.producer.name.clone(),
                    e.sensor.to_string(),
                    e.boot_epoch,
                    e.seq
                )),
                "duplicate {e:?}"
            );
            let want = next_seq
                .entry((e.producer.name.clone(), e.sensor.to_string()))
                .or_insert(0u64);
            assert_eq!(
                e.seq, *want,
                "seq gap for {} {} at {p}/{i}",
                e.producer.name, e.sensor
            );
            *want += 1;
        }
    }
    assert_eq!(keys.len() as u64, total);
    let mut interrupted = 0;
    for log in &logs {
        interrupted += log.interrupted;
        assert_eq!(log.acked.len() as u64, total / PRODUCERS as u64);
        for (record, ack) in &log.acked {
            let stored = partitions[ack.partition.0 as usize]
                .get(ack.offset.0 as usize)
                .unwrap_or_else(|| panic!("{}: acked {ack:?} is missing", log.name));
            let e = &stored.event;
            assert_eq!(e.producer.name, log.name);
            assert_eq!(
                (&e.sensor, e.boot_epoch, e.seq, &e.payload),
                (
                    &record.sensor,
                    record.boot_epoch,
                    record.seq,
                    &record.payload
                )
            );
        }
    }
    assert!(interrupted >= 1, "the kill interrupted no producer");
    eprintln!(
        "acked before kill: {before_kill}; interrupted producers: {interrupted}; duplicates answered: {}",
        logs.iter().map(|l| l.duplicates).sum::<u64>()
    );
    node.stop().await.unwrap();
}

/// The last segment file of `SINGLE`'s only partition, its bytes and the end of its data.
fn last_segment(node: &TestNode) -> (std::path::PathBuf, Vec<u8>, u64) {
    let path = segment_files(&node.partition_dir(SINGLE, 0))
        .unwrap()
        .pop()
        .expect("no segment file");
    let bytes = std::fs::read(&path).unwrap();
    let end = segment_data_end(&bytes).unwrap();
    (path, bytes, end)
}

fn write_at(path: &std::path::Path, pos: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(data, pos).unwrap();
    file.sync_all().unwrap();
}

/// Reads `SINGLE` and checks it holds exactly `sent`, in order from offset 0.
async fn assert_log_is(client: &Client, sent: &[Record]) {
    let events: Vec<StoredEvent> = fetch_partition(client, SINGLE, 0).await.unwrap();
    assert_eq!(events.len(), sent.len());
    for (i, (stored, record)) in events.iter().zip(sent).enumerate() {
        assert_eq!(stored.offset.0, i as u64);
        assert_eq!(
            (stored.event.seq, &stored.event.payload),
            (record.seq, &record.payload)
        );
    }
}

/// Produces seqs `seqs` of sensor `torn` and checks they get the offsets right after `sent`.
async fn append(node: &TestNode, sent: &mut Vec<Record>, seqs: std::ops::Range<u64>) {
    let edge = node.edge_client("pi").await.unwrap();
    for chunk in seqs.step_by(20) {
        let records = tagged_records("torn", 1, chunk..chunk + 20, 50).unwrap();
        let acks = produce_acked(&edge, SINGLE, records.clone()).await.unwrap();
        let want: Vec<u64> = (sent.len() as u64..sent.len() as u64 + 20).collect();
        assert_eq!(acks.iter().map(|a| a.offset.0).collect::<Vec<_>>(), want);
        assert!(acks.iter().all(|a| !a.duplicate));
        sent.extend(records);
    }
}

#[tokio::test]
async fn torn_tail_is_discarded_on_restart_and_appends_continue() {
    // Checks restart recovery when the last segment's data region is followed by garbage, once
    // seeded random bytes and once the first half of a plausible next entry (a torn write): the
    // node starts, every acknowledged event is there unchanged, the garbage is zeroed on disk,
    // new appends get the next offsets and read back, also after one more restart.
    let mut node = TestNode::in_process().await.unwrap();
    let mut sent = Vec::new();
    append(&node, &mut sent, 0..60).await;
    node.stop().await.unwrap();

    let (path, _, end) = last_segment(&node);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(50);
    let mut garbage: Vec<u8> = (0..300).map(|_| rng.random()).collect();
    garbage[0] |= 1;
    write_at(&path, end, &garbage);
    node.start().await.unwrap();
    assert_log_is(&node.admin().await.unwrap(), &sent).await;
    let (_, bytes, end_after) = last_segment(&node);
    assert_eq!(end_after, end);
    assert!(
        bytes[end as usize..].iter().all(|b| *b == 0),
        "garbage was not zeroed"
    );
    append(&node, &mut sent, 60..80).await;
    assert_log_is(&node.admin().await.unwrap(), &sent).await;
    node.stop().await.unwrap();

    // A torn copy of the next entry: the last entry with the next base offset in its payload,
    // and half of its body.
    let (path, bytes, end) = last_segment(&node);
    let mut last_start = sluice_tests::SEGMENT_HEADER_LEN;
    while last_start < end {
        let at = last_start as usize;
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let next = last_start + ENTRY_HEADER_LEN + u64::from(len);
        if next == end {
            break;
        }
        last_start = next;
    }
    let mut torn = bytes[last_start as usize..end as usize].to_vec();
    torn[8..16].copy_from_slice(&(sent.len() as u64).to_le_bytes());
    torn.truncate(torn.len() / 2 + 10);
    write_at(&path, end, &torn);
    node.start().await.unwrap();
    assert_log_is(&node.admin().await.unwrap(), &sent).await;
    append(&node, &mut sent, 80..100).await;
    node.restart().await.unwrap();
    let admin = node.admin().await.unwrap();
    assert_log_is(&admin, &sent).await;
    let (_, bytes, end) = last_segment(&node);
    assert!(
        bytes[end as usize..].iter().all(|b| *b == 0),
        "torn bytes resurfaced"
    );
    let payload = tagged_payload("torn", 1, 99, 50);
    assert_eq!(sent.last().map(|r| &r.payload), Some(&payload));
}
