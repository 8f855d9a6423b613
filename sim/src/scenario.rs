//! The shape of one run, drawn from its seed: the node's streams, partitions and bounds, the
//! producers and their sensors, how faulty the link is, the edge agents (their sensors, spool,
//! uplink, link and fault schedule) and the run's clock jumps. Every RNG of a run comes from
//! `proto::env::rng_for(seed, owner, salt)` with the owners and salts below.
//!
//! Edges are drawn after everything else, each from its own RNG, so adding them left every
//! earlier draw of a seed (streams, producers, the node's fault schedule) unchanged.

use crate::settings::Settings;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sluice_edge::config::EdgeConfig;
use sluice_edge::spool::{FullPolicy, SpoolConfig};
use sluice_node::config::{from_toml, NodeConfig};
use sluice_proto::env::rng_for;
use sluice_proto::{Identity, Role, SensorId, StreamName};
use std::collections::BTreeSet;
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
/// Owner id of edge `i` is `OWNER_EDGE_BASE + i` (its plan, link, faults, crashes, agent seed).
pub const OWNER_EDGE_BASE: u64 = 2_000;
/// Salt of an edge's plan: sensors, spool and uplink settings, link fault rates.
pub const SALT_EDGE: u64 = 0xed9e_0000;
/// Salt of an edge's link: the fate of each handshake and request.
pub const SALT_EDGE_LINK: u64 = 0xed9e_714c;
/// Salt of an edge's fault schedule (outages, flaps, power cuts, clean restarts).
pub const SALT_EDGE_FAULTS: u64 = 0xed9e_fa17;
/// Salt of an edge's disk faults (failed syncs, full disk), drawn only with
/// `Settings::edge_disk_faults`.
pub const SALT_EDGE_DISK_FAULTS: u64 = 0xed9e_d15c;
/// Salt of the crash outcomes of an edge's `k`-th power cut is `SALT_EDGE_CRASH + k`.
pub const SALT_EDGE_CRASH: u64 = 0xed9e_c000_0000;
/// Salt of the seed an edge agent's own RNGs (uplink backoff, sim sensors) derive from.
pub const SALT_EDGE_ENV: u64 = 0xed9e_e000;
/// Salt of the node disk damage drawn with `Settings::disk_corruption` (owner [`OWNER_RUN`]).
pub const SALT_DISK_DAMAGE: u64 = 0xd15c_da3a;
/// Salt of the whole-partition losses drawn with `Settings::disk_corruption` (owner
/// [`OWNER_RUN`]): an RNG of their own, so the other damage draws stay as they were.
pub const SALT_PARTITION_LOSS: u64 = 0xd15c_0105;
/// Salt of the run's clock jumps (owner [`OWNER_RUN`]).
pub const SALT_JUMPS: u64 = 0x1c4b_0000;

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
    /// Edge agents.
    pub edges: Vec<EdgePlan>,
    /// Clock jumps of the safety phase, in time order.
    pub jumps: Vec<Jump>,
}

/// One simulated sensor of an edge: a `sim` source of one device measuring one quantity, so
/// the source's counters are the sensor's.
#[derive(Debug, Clone)]
pub struct EdgeSensor {
    /// The source's name in the agent's configuration.
    pub source: String,
    /// Its sensor id, `e<edge>-d<k>-0/<quantity>`.
    pub sensor: SensorId,
    /// The stream its readings go to.
    pub stream: StreamName,
    /// `temperature` or `humidity`.
    pub quantity: &'static str,
    /// Simulated ms between two readings.
    pub interval_ms: u64,
    /// Readings per boot of the agent (the source ends after them, so the workload ends).
    pub readings_max: u64,
    /// Mixed into the source's RNG (32 bits: TOML integers are signed).
    pub seed: u64,
}

/// The agent's uplink timings, suited to simulated time.
#[derive(Debug, Clone, Copy)]
pub struct UplinkPlan {
    /// Records per produce request.
    pub batch_records_max: u32,
    /// How long a partly filled batch holds back the next one, ms.
    pub linger_ms: u64,
    /// Produce requests in flight at once.
    pub batches_in_flight_max: u32,
    /// Deadline of a connection attempt, ms.
    pub connect_timeout_ms: u64,
    /// Deadline of a produce request, ms.
    pub request_timeout_ms: u64,
    /// First backoff, ms.
    pub backoff_initial_ms: u64,
    /// Longest backoff, ms (short enough that a healed edge reconnects within the liveness
    /// bound).
    pub backoff_max_ms: u64,
}

/// A fault of one edge in the safety phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeFault {
    /// The edge's link is down for `down_ms` (outages overlap freely with other faults).
    Outage {
        /// How long, simulated ms.
        down_ms: u64,
    },
    /// The link flaps: down, up, down, … for these `(down_ms, up_ms)` periods.
    Flap {
        /// The periods.
        periods: Vec<(u64, u64)>,
    },
    /// Power cut: the agent is dropped without closing its spools and its disk loses (or
    /// tears) what was not synced; it boots again after `downtime_ms`.
    PowerCut {
        /// Fire the cut inside the `n`-th next mutating disk operation of the edge, if set.
        mid_io_ops: Option<u32>,
        /// Simulated ms until the next boot (at least 1, so boots are distinct instants).
        downtime_ms: u64,
    },
    /// `Agent::stop` (spools closed), then a new boot after `downtime_ms`.
    CleanRestart {
        /// Simulated ms until the next boot.
        downtime_ms: u64,
    },
    /// One later `fdatasync` on the edge's disk fails with `EIO`, Linux style (the unsynced
    /// pages are dropped from the write-back queue; reads still see them until a power cut).
    SyncFailure {
        /// Syncs that succeed before the failing one.
        after_syncs: u32,
    },
    /// The edge's disk is full for `full_ms`: every write or allocation that would grow a file
    /// fails with ENOSPC; then the space returns.
    DiskFull {
        /// How long, simulated ms.
        full_ms: u64,
    },
}

/// One edge agent of the run.
#[derive(Debug, Clone)]
pub struct EdgePlan {
    /// Its index; its identity is `sluice://sim/edge/e<idx>`.
    pub idx: u32,
    /// Its sensors.
    pub sensors: Vec<EdgeSensor>,
    /// Its spool settings (the whole budget; the agent splits it over the streams).
    pub spool: SpoolConfig,
    /// Its uplink settings.
    pub uplink: UplinkPlan,
    /// How its link misbehaves in the safety phase.
    pub link: LinkFaults,
    /// Its faults, at simulated ms of the safety phase (not counting clock jumps), in order.
    pub faults: Vec<(u64, EdgeFault)>,
    /// The seed of its agent's environment (each edge's RNGs differ).
    pub env_seed: u64,
}

/// A clock jump: the whole world (node, producers, edges) sleeps through `duration_ms` at once,
/// as after a suspend. It is how a run simulates edges offline for days without simulating
/// every millisecond of them: the edges in `edges_down` lose their link just before the jump and
/// get it back just after, so their spooled readings age by days (and may expire).
#[derive(Debug, Clone)]
pub struct Jump {
    /// When, in simulated ms of the safety phase.
    pub at_ms: u64,
    /// How far the clock jumps, ms.
    pub duration_ms: u64,
    /// Edges whose link is down across the jump.
    pub edges_down: Vec<u32>,
    /// Their link goes down this long before the jump, ms.
    pub down_before_ms: u64,
    /// And comes back this long after it, ms.
    pub down_after_ms: u64,
}

fn link_faults(rng: &mut ChaCha8Rng) -> LinkFaults {
    LinkFaults {
        drop_request: rng.random_range(0.0..0.08),
        drop_response: rng.random_range(0.0..0.08),
        duplicate: rng.random_range(0.0..0.05),
        delay_ms_max: rng.random_range(1..=50u64),
    }
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, weighted: &[(u32, T)]) -> T {
    let total: u32 = weighted.iter().map(|(w, _)| w).sum();
    let mut roll = rng.random_range(0..total);
    for (weight, value) in weighted {
        if roll < *weight {
            return *value;
        }
        roll -= weight;
    }
    weighted[weighted.len() - 1].1
}

const DAY_MS: u64 = 86_400_000;

impl EdgePlan {
    /// Draws edge `idx` of the run of `seed`, writing to `streams`.
    pub fn draw(seed: u64, idx: u32, streams: &[(StreamName, u32)], settings: &Settings) -> Self {
        let owner = OWNER_EDGE_BASE + u64::from(idx);
        let mut rng = rng_for(seed, owner, SALT_EDGE);
        let n_sensors = rng.random_range(1..=4u32);
        let sensors: Vec<EdgeSensor> = (0..n_sensors)
            .map(|k| draw_sensor(&mut rng, seed, idx, k, streams))
            .collect();
        let n_streams = sensors
            .iter()
            .map(|s| &s.stream)
            .collect::<BTreeSet<_>>()
            .len() as u64;
        let spool = draw_spool(&mut rng, n_streams);
        let uplink = draw_uplink(&mut rng);
        let link = link_faults(&mut rng);
        let mut faults = draw_edge_faults(&mut rng_for(seed, owner, SALT_EDGE_FAULTS), settings);
        if settings.edge_disk_faults {
            let mut rng = rng_for(seed, owner, SALT_EDGE_DISK_FAULTS);
            faults.extend(draw_edge_disk_faults(&mut rng, settings));
            faults.sort_by_key(|(at_ms, _)| *at_ms);
        }
        EdgePlan {
            idx,
            sensors,
            spool,
            uplink,
            link,
            faults,
            env_seed: rng_for(seed, owner, SALT_EDGE_ENV).random(),
        }
    }

    /// The identity the node stamps on the edge's events.
    pub fn identity(&self) -> Identity {
        Identity::new(CLUSTER, Role::Edge, &format!("e{}", self.idx))
            .unwrap_or_else(|e| panic!("edge identity e{}: {e}", self.idx))
    }

    /// The edge's data directory, on its own disk.
    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(format!("/sim/edge-{}", self.idx))
    }

    /// The agent's configuration, written the way an operator would (the status endpoint off,
    /// certificate paths unused: the simulated transport stamps the identity).
    pub fn config(&self) -> EdgeConfig {
        let (s, u) = (&self.spool, &self.uplink);
        let policy = match s.policy {
            FullPolicy::DropOldest => "drop_oldest",
            FullPolicy::Block => "block",
        };
        let mut text = format!(
            r#"
[edge]
data_dir = "{data_dir}"
stats_interval_ms = 0

[uplink]
cluster = "{CLUSTER}"
nodes = ["node-1.{CLUSTER}:7400"]
ca_cert = "/sim/certs/ca.pem"
cert = "/sim/certs/edge-{idx}.pem"
key = "/sim/certs/edge-{idx}.key"
batch_records_max = {batch_records_max}
linger_ms = {linger_ms}
batches_in_flight_max = {in_flight}
connect_timeout_ms = {connect_timeout_ms}
request_timeout_ms = {request_timeout_ms}
backoff_initial_ms = {backoff_initial_ms}
backoff_max_ms = {backoff_max_ms}

[spool]
spool_bytes_max = {spool_bytes_max}
segment_bytes_max = {segment_bytes_max}
record_age_ms_max = {record_age_ms_max}
sync_interval_ms = {sync_interval_ms}
policy = "{policy}"
record_bytes_max = {record_bytes_max}
sensors_max = {sensors_max}
seq_reserve_block = {seq_reserve_block}
send_ahead_bytes_max = {send_ahead_bytes_max}
write_buffer_bytes_max = {write_buffer_bytes_max}

[status]
listen = "off"
"#,
            data_dir = self.data_dir().display(),
            idx = self.idx,
            batch_records_max = u.batch_records_max,
            linger_ms = u.linger_ms,
            in_flight = u.batches_in_flight_max,
            connect_timeout_ms = u.connect_timeout_ms,
            request_timeout_ms = u.request_timeout_ms,
            backoff_initial_ms = u.backoff_initial_ms,
            backoff_max_ms = u.backoff_max_ms,
            spool_bytes_max = s.spool_bytes_max,
            segment_bytes_max = s.segment_bytes_max,
            record_age_ms_max = s.record_age_ms_max,
            sync_interval_ms = s.sync_interval_ms,
            record_bytes_max = s.record_bytes_max,
            sensors_max = s.sensors_max,
            seq_reserve_block = s.seq_reserve_block,
            send_ahead_bytes_max = s.send_ahead_bytes_max,
            write_buffer_bytes_max = s.write_buffer_bytes_max,
        );
        for sensor in &self.sensors {
            let prefix = sensor
                .sensor
                .as_str()
                .trim_end_matches(&format!("-0/{}", sensor.quantity))
                .to_owned();
            text.push_str(&format!(
                r#"
[[sources]]
type = "sim"
name = "{name}"
stream = "{stream}"
devices = 1
sensor_prefix = "{prefix}"
quantities = ["{quantity}"]
interval_ms = {interval_ms}
readings_max = {readings_max}
dropout_probability = 0.0
seed = {seed}
"#,
                name = sensor.source,
                stream = sensor.stream,
                quantity = sensor.quantity,
                interval_ms = sensor.interval_ms,
                readings_max = sensor.readings_max,
                seed = sensor.seed,
            ));
        }
        sluice_edge::config::from_toml(&text).unwrap_or_else(|e| {
            panic!(
                "the simulator built an invalid config for edge e{}: {e}",
                self.idx
            )
        })
    }
}

/// Sensor `k` of edge `idx`: fast sensors fill small spools during an outage, slow ones
/// trickle; each stops after a few seconds' worth of readings per boot.
fn draw_sensor(
    rng: &mut ChaCha8Rng,
    seed: u64,
    idx: u32,
    k: u32,
    streams: &[(StreamName, u32)],
) -> EdgeSensor {
    let interval_ms = match rng.random_range(0..10u8) {
        0..=3 => rng.random_range(20..=60u64),
        4..=7 => rng.random_range(60..=250u64),
        _ => rng.random_range(250..=1_000u64),
    };
    let duration_ms = rng.random_range(3_000..=15_000u64);
    let quantity = if rng.random_bool(0.5) {
        "temperature"
    } else {
        "humidity"
    };
    let name = format!("e{idx}-d{k}-0/{quantity}");
    EdgeSensor {
        source: format!("s{k}"),
        sensor: SensorId::new(name.clone())
            .unwrap_or_else(|e| panic!("seed {seed}: sensor id {name}: {e}")),
        stream: streams[rng.random_range(0..streams.len())].0.clone(),
        quantity,
        interval_ms,
        readings_max: (duration_ms / interval_ms).clamp(5, 500),
        seed: u64::from(rng.random::<u32>()),
    }
}

/// A small spool (3 to 8 segments of 4 to 64 KiB per stream), so eviction and expiry happen in
/// some runs; both policies, and sync intervals from "every append" to two seconds.
fn draw_spool(rng: &mut ChaCha8Rng, n_streams: u64) -> SpoolConfig {
    let segment_bytes_max = pick(rng, &[(3, 4096u64), (3, 8192), (2, 16384), (1, 65536)]);
    let n_segments = rng.random_range(3..=8u64);
    SpoolConfig {
        spool_bytes_max: segment_bytes_max * n_segments * n_streams,
        segment_bytes_max,
        record_age_ms_max: pick(
            rng,
            &[
                (3, 5_000u64),
                (3, 60_000),
                (4, 3_600_000),
                (5, DAY_MS),
                (5, 7 * DAY_MS),
            ],
        ),
        sync_interval_ms: if rng.random_bool(0.2) {
            0
        } else {
            rng.random_range(10..=2_000u64)
        },
        policy: if rng.random_bool(0.5) {
            FullPolicy::DropOldest
        } else {
            FullPolicy::Block
        },
        record_bytes_max: u32::try_from(segment_bytes_max / 4).unwrap_or(1024),
        sensors_max: 64,
        seq_reserve_block: pick(rng, &[(1, 1u64), (1, 4), (1, 16), (1, 64), (1, 256)]),
        send_ahead_bytes_max: rng.random_range(256..=65_536u64),
        write_buffer_bytes_max: rng.random_range(64..=65_536u64),
        downtime_ms_max: pick(
            rng,
            &[(1, 1_000u64), (2, 60_000), (2, 3_600_000), (1, DAY_MS)],
        ),
        retry_backoff_initial_ms: rng.random_range(10..=500u64),
        retry_backoff_max_ms: rng.random_range(500..=5_000u64),
    }
}

/// Uplink timings in simulated time; backoffs stay short enough for the liveness bound.
fn draw_uplink(rng: &mut ChaCha8Rng) -> UplinkPlan {
    let backoff_initial_ms = rng.random_range(10..=500u64);
    UplinkPlan {
        // At least 5: one record per request without pipelining cannot drain an outage's
        // backlog within the liveness bound even when everything works.
        batch_records_max: rng.random_range(5..=200u32),
        linger_ms: rng.random_range(0..=50u64),
        batches_in_flight_max: rng.random_range(1..=4u32),
        connect_timeout_ms: rng.random_range(200..=2_000u64),
        request_timeout_ms: rng.random_range(500..=5_000u64),
        backoff_initial_ms,
        backoff_max_ms: rng.random_range(backoff_initial_ms..=5_000u64),
    }
}

/// An edge's faults: 0 to 4, at seeded times of the safety phase.
fn draw_edge_faults(rng: &mut ChaCha8Rng, settings: &Settings) -> Vec<(u64, EdgeFault)> {
    let safety_ms = settings.safety_ms.max(10);
    let n_faults = rng.random_range(0..=4u32);
    let mut times: Vec<u64> = (0..n_faults)
        .map(|_| rng.random_range(safety_ms / 10..=safety_ms * 9 / 10))
        .collect();
    times.sort_unstable();
    times
        .into_iter()
        .map(|at_ms| {
            let fault = match rng.random_range(0..10u8) {
                0..=2 => EdgeFault::Outage {
                    down_ms: rng.random_range(100..=3_000u64),
                },
                3 => EdgeFault::Outage {
                    down_ms: rng.random_range(3_000..=safety_ms.max(3_000)),
                },
                4..=5 => EdgeFault::Flap {
                    periods: (0..rng.random_range(2..=6u32))
                        .map(|_| (rng.random_range(20..=500u64), rng.random_range(20..=500u64)))
                        .collect(),
                },
                6..=8 => EdgeFault::PowerCut {
                    mid_io_ops: rng.random_bool(0.4).then(|| rng.random_range(1..=30u32)),
                    downtime_ms: rng.random_range(1..=2_000u64),
                },
                _ => EdgeFault::CleanRestart {
                    downtime_ms: rng.random_range(1..=1_000u64),
                },
            };
            (at_ms, fault)
        })
        .collect()
}

/// An edge's disk faults: 1 to 3 failed syncs or full-disk periods, at seeded times of the
/// safety phase.
fn draw_edge_disk_faults(rng: &mut ChaCha8Rng, settings: &Settings) -> Vec<(u64, EdgeFault)> {
    let safety_ms = settings.safety_ms.max(10);
    (0..rng.random_range(1..=3u32))
        .map(|_| {
            let at_ms = rng.random_range(safety_ms / 10..=safety_ms * 9 / 10);
            let fault = if rng.random_bool(0.5) {
                EdgeFault::SyncFailure {
                    after_syncs: rng.random_range(0..=20u32),
                }
            } else {
                EdgeFault::DiskFull {
                    full_ms: rng.random_range(100..=5_000u64),
                }
            };
            (at_ms, fault)
        })
        .collect()
}

/// The run's clock jumps: with edges, three runs in ten jump once, by ten minutes to three days.
fn draw_jumps(seed: u64, edges: &[EdgePlan], settings: &Settings) -> Vec<Jump> {
    let mut rng = rng_for(seed, OWNER_RUN, SALT_JUMPS);
    if edges.is_empty() || !rng.random_bool(0.3) {
        return Vec::new();
    }
    let safety_ms = settings.safety_ms.max(10);
    let mut edges_down: Vec<u32> = edges
        .iter()
        .filter(|_| rng.random_bool(0.7))
        .map(|e| e.idx)
        .collect();
    if edges_down.is_empty() {
        edges_down.push(edges[0].idx);
    }
    vec![Jump {
        at_ms: rng.random_range(safety_ms / 5..=safety_ms * 4 / 5),
        duration_ms: pick(
            &mut rng,
            &[
                (1, 600_000u64),
                (1, 7_200_000),
                (1, DAY_MS),
                (1, 3 * DAY_MS),
            ],
        ),
        edges_down,
        down_before_ms: rng.random_range(0..=3_000u64),
        down_after_ms: rng.random_range(200..=5_000u64),
    }]
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
        let link = link_faults(&mut rng);
        let dedup_window_max = rng.random_range(8..=256u32);
        let entry_events_max = rng.random_range(1..=64u32);
        let index_interval_bytes = rng.random_range(1..=16u64) * 4096;
        let pending_bytes_max = 1 << rng.random_range(14..=26u32);
        let waiting_requests_max = 1 << rng.random_range(1..=16u32);
        let n_edges = rng.random_range(0..=settings.edges_max);
        let edges: Vec<EdgePlan> = (0..n_edges)
            .map(|idx| EdgePlan::draw(seed, idx, &streams, settings))
            .collect();
        let jumps = draw_jumps(seed, &edges, settings);
        Scenario {
            streams,
            dedup_window_max,
            entry_events_max,
            index_interval_bytes,
            pending_bytes_max,
            waiting_requests_max,
            producers,
            link,
            edges,
            jumps,
        }
    }

    /// Simulated time the run's clock jumps skip, in all.
    pub fn jumped_ms(&self) -> u64 {
        self.jumps.iter().map(|j| j.duration_ms).sum()
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
# The largest fetch answer must fit frame_bytes_max (the node refuses a config where it does not).
fetch_bytes_max = 131072
record_bytes_max = 131072

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
