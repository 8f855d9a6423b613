//! The shape of one run, drawn from its seed: the node's streams, partitions and bounds, the
//! producers and their sensors, and how faulty the link is. Every RNG of a run comes from
//! `proto::env::rng_for(seed, owner, salt)` with the owners and salts below.

use crate::settings::Settings;
use rand::Rng;
use sluice_node::config::{from_toml, NodeConfig};
use sluice_proto::env::rng_for;
use sluice_proto::{SensorId, StreamName};
use std::path::PathBuf;

/// Owner id of run-wide RNGs (scenario, faults, consumers).
pub const OWNER_RUN: u64 = 0;
/// Owner id of producer `i` is `OWNER_PRODUCER_BASE + i`.
pub const OWNER_PRODUCER_BASE: u64 = 1_000;
/// Salt of the scenario draw.
pub const SALT_SCENARIO: u64 = 0x5ce4_a410;
/// Salt of the fault schedule.
pub const SALT_FAULTS: u64 = 0xfa17_5000;
/// Salt of crash outcomes (torn writes, directory entries).
pub const SALT_CRASH: u64 = 0xc4a5_4000;
/// Salt of a producer's workload.
pub const SALT_PRODUCER: u64 = 0x9d0d_0000;
/// Salt of a producer's link.
pub const SALT_LINK: u64 = 0x714c_0000;
/// Salt of the read-back consumer.
pub const SALT_CONSUMER: u64 = 0xc025_0000;
/// Salt of the tailing consumer.
pub const SALT_TAILER: u64 = 0x7a11_0000;

/// The node's data directory in the simulated filesystem.
pub const DATA_DIR: &str = "/sim/node-1";
/// The cluster name in every identity.
pub const CLUSTER: &str = "sim";

/// One producer of the run.
#[derive(Debug, Clone)]
pub struct ProducerPlan {
    /// Its index; its identity is `sluice://sim/edge/p<idx>`.
    pub idx: u32,
    /// Its sensors and the stream each one writes to.
    pub sensors: Vec<(SensorId, StreamName)>,
    /// Requests in flight at most.
    pub in_flight_max: usize,
    /// Simulated ms between two batches, at least and at most.
    pub interval_ms: (u64, u64),
}

/// How the link between producers and the node misbehaves during the safety phase.
#[derive(Debug, Clone, Copy)]
pub struct LinkFaults {
    /// Probability a request is lost.
    pub drop_request: f64,
    /// Probability a response is lost.
    pub drop_response: f64,
    /// Probability a request is delivered twice.
    pub duplicate: f64,
    /// Most one-way delay, in simulated ms.
    pub delay_ms_max: u64,
}

/// The shape of a run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Streams and their partition counts.
    pub streams: Vec<(StreamName, u32)>,
    /// The node's dedup window.
    pub dedup_window_max: u32,
    /// The node's events per stored entry.
    pub entry_events_max: u32,
    /// The node's sparse index interval.
    pub index_interval_bytes: u64,
    /// The node's bound on accepted, unflushed bytes per partition.
    pub pending_bytes_max: u64,
    /// The node's bound on requests waiting for a flush per partition.
    pub waiting_requests_max: u32,
    /// Producers.
    pub producers: Vec<ProducerPlan>,
    /// Link faults.
    pub link: LinkFaults,
}

fn stream(name: &str) -> StreamName {
    StreamName::new(name).unwrap_or_else(|e| panic!("stream name {name}: {e}"))
}

impl Scenario {
    /// Draws the scenario of `seed`.
    pub fn from_seed(seed: u64, settings: &Settings) -> Self {
        let mut rng = rng_for(seed, OWNER_RUN, SALT_SCENARIO);
        let mut streams = vec![(stream("sensors"), rng.random_range(1..=4u32))];
        if rng.random_bool(0.5) {
            streams.push((stream("security"), rng.random_range(1..=4u32)));
        }
        let n_producers = rng.random_range(2..=settings.producers_max.max(2));
        let producers = (0..n_producers)
            .map(|idx| {
                let n_sensors = rng.random_range(2..=6u32);
                let sensors = (0..n_sensors)
                    .map(|s| {
                        let sensor = SensorId::new(format!("p{idx}/sensor-{s}"))
                            .unwrap_or_else(|e| panic!("sensor id: {e}"));
                        let target = streams[rng.random_range(0..streams.len())].0.clone();
                        (sensor, target)
                    })
                    .collect();
                let low = rng.random_range(5..=40u64);
                ProducerPlan {
                    idx,
                    sensors,
                    in_flight_max: rng.random_range(1..=4usize),
                    interval_ms: (low, low * 3),
                }
            })
            .collect();
        let link = LinkFaults {
            drop_request: rng.random_range(0.0..0.08),
            drop_response: rng.random_range(0.0..0.08),
            duplicate: rng.random_range(0.0..0.05),
            delay_ms_max: rng.random_range(1..=50u64),
        };
        Scenario {
            streams,
            dedup_window_max: rng.random_range(8..=256u32),
            entry_events_max: rng.random_range(1..=64u32),
            index_interval_bytes: rng.random_range(1..=16u64) * 4096,
            pending_bytes_max: 1 << rng.random_range(14..=26u32),
            waiting_requests_max: 1 << rng.random_range(1..=16u32),
            producers,
            link,
        }
    }

    /// The node's configuration, built the way an operator would write it.
    pub fn node_config(&self) -> NodeConfig {
        let mut text = format!(
            r#"
[node]
id = 1
cluster = "{CLUSTER}"
data_dir = "{DATA_DIR}"
stats_interval_ms = 0

[transport]
listen = "127.0.0.1:0"
ca_cert = "/sim/certs/ca.pem"
cert = "/sim/certs/node-1.pem"
key = "/sim/certs/node-1.key"
frame_bytes_max = 262144

[storage]
segment_bytes_max = 1048576
index_interval_bytes = {index}

[ingest]
batch_records_max = 1000
dedup_window_max = {dedup}
entry_events_max = {entry}
pending_bytes_max = {pending}
waiting_requests_max = {waiting}
produce_timeout_ms = 5000
fetch_events_max = 5000

[[acl]]
identity = "sluice://{CLUSTER}/edge/*"
produce = ["*"]
consume = ["*"]
"#,
            index = self.index_interval_bytes,
            dedup = self.dedup_window_max,
            entry = self.entry_events_max,
            pending = self.pending_bytes_max,
            waiting = self.waiting_requests_max,
        );
        for (name, partitions) in &self.streams {
            text.push_str(&format!(
                "\n[[streams]]\nname = \"{name}\"\npartitions = {partitions}\n"
            ));
        }
        from_toml(&text)
            .unwrap_or_else(|e| panic!("the simulator built an invalid node config: {e}"))
    }

    /// The node's data directory.
    pub fn data_dir() -> PathBuf {
        PathBuf::from(DATA_DIR)
    }
}
