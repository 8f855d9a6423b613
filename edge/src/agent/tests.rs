//! Agent-level tests: the real loop, spools, sources and uplink core against a scripted node,
//! on paused time.

use super::*;
use crate::config::from_toml;
use crate::source::OfferObserver;
use sluice_proto::env::{BlockingMode, BoxFuture, Clock};
use sluice_proto::msg::{Durability, RecordOutcome, RecordRejection};
use sluice_proto::{BootEpoch, DropReason, Offset, PartitionId, Payload, SensorId, UnixMillis};
use tokio::sync::watch;

/// Paused tokio time for timers; a wall clock that moves with it (so readings differ in
/// `device_time`).
struct PausedClock(tokio::time::Instant);

impl Clock for PausedClock {
    #[allow(clippy::disallowed_methods)] // tokio's paused clock, as the simulator's
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
    fn wall(&self) -> UnixMillis {
        UnixMillis(1_700_000_000_000 + self.0.elapsed().as_millis() as i64)
    }
}

/// A node that has forgotten every sensor's state in the first epoch it is sent (it answers
/// `ProducerExpired`, as after `producer_idle_expiry_ms`), and stores later epochs exactly
/// once and in order.
#[derive(Default)]
struct ForgetfulNode {
    state: Mutex<NodeState>,
    seen: Option<watch::Sender<Seen>>,
}

/// What the node stored, and the readings it refused as expired (by [`value`]).
type Seen = (Vec<Record>, BTreeSet<String>);

/// A reading's identity across epochs: its device time and payload.
fn value(record: &Record) -> String {
    format!("{:?} {:?}", record.device_time, record.payload)
}

#[derive(Default)]
struct NodeState {
    forgotten: Option<BootEpoch>,
    next_seq: BTreeMap<(SensorId, BootEpoch), u64>,
    stored: Vec<Record>,
    refused: BTreeSet<String>,
}

impl ForgetfulNode {
    fn produce(&self, request: ProduceRequest) -> ProduceResponse {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut outcomes = Vec::new();
        for record in request.records {
            let forgotten = *state.forgotten.get_or_insert(record.boot_epoch);
            let key = (record.sensor.clone(), record.boot_epoch);
            let next = state.next_seq.get(&key).copied().unwrap_or(0);
            let outcome = if record.boot_epoch == forgotten {
                state.refused.insert(value(&record));
                RecordOutcome::Rejected(RecordRejection::ProducerExpired {
                    sensor: record.sensor.to_string(),
                    epoch: record.boot_epoch.0,
                })
            } else if record.seq == next {
                state.next_seq.insert(key, record.seq_last() + 1);
                state.stored.push(record);
                appended(false)
            } else if record.seq < next {
                appended(true)
            } else {
                RecordOutcome::Rejected(RecordRejection::SequenceGap {
                    sensor: record.sensor.to_string(),
                    expected: next,
                    got: record.seq,
                })
            };
            outcomes.push(outcome);
        }
        if let Some(seen) = &self.seen {
            seen.send_replace((state.stored.clone(), state.refused.clone()));
        }
        ProduceResponse {
            request_id: request.request_id,
            outcomes,
        }
    }
}

fn appended(duplicate: bool) -> RecordOutcome {
    RecordOutcome::Appended {
        partition: PartitionId(0),
        offset: Offset(0),
        durability: Durability::LeaderFsync,
        duplicate,
    }
}

struct NodeLink(Arc<ForgetfulNode>);

impl Transport for NodeLink {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Connection>, TransportError>> {
        let connection: Arc<dyn Connection> = Arc::new(NodeLink(self.0.clone()));
        Box::pin(async move { Ok(connection) })
    }
}

impl Connection for NodeLink {
    fn call(&self, request: Message) -> BoxFuture<'_, Result<Message, TransportError>> {
        Box::pin(async move {
            match request {
                Message::ProduceRequest(request) => {
                    Ok(Message::ProduceResponse(self.0.produce(request)))
                }
                other => panic!("unexpected request {other:?}"),
            }
        })
    }
    fn peer(&self) -> String {
        "forgetful-node".into()
    }
}

/// Every `(epoch, seq)` the spool gave an offered reading.
#[derive(Default)]
struct Accepted(Mutex<Vec<(u64, u64)>>);

impl OfferObserver for Accepted {
    fn offered(&self, _: &str, _: &StreamName, _: &SensorId, offered: &Offered) {
        if let Offered::Accepted { epoch, seq } = offered {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((*epoch, *seq));
        }
    }
}

fn config(data_dir: &Path, readings_max: u64) -> EdgeConfig {
    let text = format!(
        r#"
[edge]
data_dir = "{data_dir}"
stats_interval_ms = 0
[uplink]
cluster = "test"
nodes = ["127.0.0.1:7400"]
ca_cert = "ca.pem"
cert = "edge.pem"
key = "edge.key"
batch_records_max = 4
linger_ms = 0
batches_in_flight_max = 1
[status]
listen = "off"
[[sources]]
type = "sim"
name = "s"
stream = "sensors"
devices = 1
quantities = ["temperature"]
interval_ms = 100
readings_max = {readings_max}
dropout_probability = 0.0
"#,
        data_dir = data_dir.display()
    );
    from_toml(&text).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(start_paused = true)]
async fn a_forgotten_epoch_moves_to_a_new_one_and_nothing_is_stored_twice() {
    // Checks the agent recovers on its own from ProducerExpired on its current epoch: it
    // starts a newer epoch and delivers one declaration closing exactly the seqs of the
    // forgotten epoch; the readings it had handed out (which may be stored) are never resent,
    // those it never sent are, and every later reading arrives, none twice; it is counted.
    let data_dir = std::env::temp_dir().join(format!("sluice-edge-expired-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let readings_max = 30;
    let (seen_tx, mut seen_rx) = watch::channel(Seen::default());
    let node = Arc::new(ForgetfulNode {
        seen: Some(seen_tx),
        ..ForgetfulNode::default()
    });
    #[allow(clippy::disallowed_methods)] // the paused clock's origin
    let origin = tokio::time::Instant::now();
    let env = Env {
        clock: Arc::new(PausedClock(origin)),
        disk: Arc::new(sluice_proto::os::FsDisk),
        blocking: BlockingMode::Inline,
        seed: 7,
    };
    let accepted = Arc::new(Accepted::default());
    let observer: Arc<dyn OfferObserver> = accepted.clone();
    let config = config(&data_dir, readings_max);
    let transport = Arc::new(NodeLink(node.clone()));
    let agent = Agent::start_observed(&config, env, transport, "edge-1", Some(observer))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let is_reading = |r: &Record| !matches!(r.payload, Payload::Dropped { .. });
    // Done when every reading is either stored or was refused as expired.
    let done = tokio::time::timeout(
        Duration::from_secs(600),
        seen_rx.wait_for(|(stored, refused)| {
            stored.iter().filter(|r| is_reading(r)).count() + refused.len() >= readings_max as usize
        }),
    )
    .await
    .is_ok();
    assert!(done, "the agent did not recover: {:?}", *seen_rx.borrow());
    let status = agent.metrics().status();
    agent.stop().await.unwrap_or_else(|e| panic!("{e}"));
    let (stored, refused) = seen_rx.borrow().clone();
    let accepted = accepted
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let first = accepted.first().map(|(epoch, _)| *epoch);
    let n_first = accepted.iter().filter(|(e, _)| Some(*e) == first).count() as u64;
    let closing: Vec<_> = stored
        .iter()
        .filter_map(|r| match r.payload {
            Payload::Dropped { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(
        closing,
        [DropReason::ProducerExpired {
            epoch: BootEpoch(first.unwrap_or(0)),
            seq: 0,
            seq_last: n_first - 1,
        }],
        "one declaration closes the forgotten epoch's seqs"
    );
    let mut values = BTreeSet::new();
    for record in stored.iter().filter(|r| is_reading(r)) {
        assert_ne!(Some(record.boot_epoch.0), first);
        let value = value(record);
        assert!(
            !refused.contains(&value),
            "handed out, then resent: {record:?}"
        );
        assert!(values.insert(value), "stored twice: {record:?}");
    }
    let n_resent = n_first - refused.len() as u64;
    assert!(
        n_resent > 0,
        "the never-sent readings of the old epoch are resent"
    );
    assert_eq!(status.uplink.resent_new_epoch, n_resent);
    assert_eq!(status.uplink.epochs_moved, 1);
    assert!(status.uplink.refused.contains_key("producer_expired"));
    let _ = std::fs::remove_dir_all(&data_dir);
}
