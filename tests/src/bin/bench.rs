//! `sluice-bench`: ingest throughput and ack latency of one in-process node over QUIC + mTLS on
//! loopback, against the raw `fdatasync` rate of the same disk.
//!
//! ```text
//! cargo run --release -p sluice-tests --bin sluice-bench -- [--events N] [--seconds S] [--dir PATH]
//! ```
//!
//! The node keeps its data in a temp dir created inside `--dir` (default: the system temp dir);
//! point `--dir` at the disk you want to measure, since acks wait for `fdatasync`. The run:
//!
//! 1. the reference: 4 KiB `pwrite` + `fdatasync` in a loop on a preallocated file in that dir;
//! 2. shape `single`: one record per produce request, `--window` (256) requests in flight on one
//!    client, one sensor per in-flight slot so every sensor's seqs stay in order;
//! 3. shape `batch`: `--batch` (100) records per request, one request in flight
//!    (`--batches-in-flight` raises that, to see what pipelining would give).
//!
//! Each shape runs until `--seconds` (10) pass or `--events` are acknowledged. Events carry a
//! `--payload` (100) byte opaque payload. The node's disk is wrapped to count its `fdatasync`
//! calls, so the output gives the node's syncs per second and events per sync next to the
//! reference rate. Nothing here asserts a target; BENCHMARKS.md records the figures.

use anyhow::{bail, Result};
use clap::Parser;
use sluice_node::config::{AclRule, StreamSection};
use sluice_node::env::{real_env, RealClock};
use sluice_proto::env::{Clock, Env};
use sluice_proto::msg::RecordOutcome;
use sluice_proto::net::Client;
use sluice_proto::{codec, Event, Identity, Payload, Record, Role};
use sluice_tests::measure::{
    fsync_reference, load_average, ms, n_cpus, percentiles, CountingDisk, CpuSnapshot,
    DiskCounters, Percentiles,
};
use sluice_tests::{record, stream, TestNode, CLUSTER};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "sluice-bench",
    about = "Ingest throughput and ack latency of one node"
)]
struct Args {
    /// Most events per shape; a shape also stops after --seconds.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Seconds per shape.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Directory the node's temp data dir is created in: put it on the disk to measure.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Partitions of the benchmark stream.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Requests in flight in the single-event shape.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Events per request in the batch shape.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Requests in flight in the batch shape (the target shape has 1).
    #[arg(long, default_value_t = 1)]
    batches_in_flight: usize,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Seconds of the raw fdatasync reference.
    #[arg(long, default_value_t = 3)]
    fsync_seconds: u64,
    /// The node's `storage.durable_record_interval_ms` (default: the node's default, a record
    /// of the durable end after every group commit).
    #[arg(long)]
    durable_record_interval_ms: Option<u64>,
}

/// What one shape measured.
struct ShapeResult {
    name: String,
    events: u64,
    requests: u64,
    elapsed: Duration,
    latency: Percentiles,
    node_syncs: u64,
    /// CPU seconds the whole process (node and client) used during the shape.
    cpu_seconds: Option<f64>,
    /// CPU seconds every other process of the machine used during the shape.
    other_cpu_seconds: Option<f64>,
}

impl ShapeResult {
    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
    fn syncs_per_s(&self) -> f64 {
        self.node_syncs as f64 / self.elapsed.as_secs_f64()
    }
}

fn payload(len: usize, seq: u64) -> Payload {
    let mut bytes = vec![0u8; len];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (seq as usize).wrapping_add(i) as u8;
    }
    Payload::Bytes(bytes)
}

fn check_appended(outcomes: &[RecordOutcome]) -> Result<()> {
    for outcome in outcomes {
        if let RecordOutcome::Rejected(rejection) = outcome {
            bail!("record rejected: {rejection}");
        }
    }
    Ok(())
}

/// Shape `single`: `window` tasks, each with its own sensor and one request in flight.
async fn single_shape(client: &Client, args: &Args, syncs: &AtomicU64) -> Result<ShapeResult> {
    let clock = RealClock;
    let claimed = Arc::new(AtomicU64::new(0));
    let syncs_before = syncs.load(Ordering::Relaxed);
    let start = clock.now();
    let end = start + Duration::from_secs(args.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..args.window {
        let (client, claimed, cap, len) =
            (client.clone(), claimed.clone(), args.events, args.payload);
        tasks.spawn(async move {
            let sensor = format!("single-{w}");
            let name = stream("bench")?;
            let mut latencies = Vec::new();
            let mut seq = 0u64;
            while RealClock.now() < end && claimed.fetch_add(1, Ordering::Relaxed) < cap {
                let records = vec![record(&sensor, 1, seq, payload(len, seq))?];
                let t = RealClock.now();
                let response = client.produce(name.clone(), records).await?;
                latencies.push(RealClock.now().duration_since(t).as_micros() as u64);
                check_appended(&response.outcomes)?;
                seq += 1;
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(result) = tasks.join_next().await {
        latencies.extend(result??);
    }
    let elapsed = clock.now().duration_since(start);
    let n = latencies.len() as u64;
    Ok(ShapeResult {
        name: format!("single (1 event/request, {} in flight)", args.window),
        events: n,
        requests: n,
        elapsed,
        latency: percentiles(latencies),
        node_syncs: syncs.load(Ordering::Relaxed) - syncs_before,
        cpu_seconds: None,
        other_cpu_seconds: None,
    })
}

/// Shape `batch`: `batch` events per request over 10 sensors; `--batches-in-flight` tasks (1 by
/// default), each with its own sensors and one request in flight.
async fn batch_shape(client: &Client, args: &Args, syncs: &AtomicU64) -> Result<ShapeResult> {
    let clock = RealClock;
    let claimed = Arc::new(AtomicU64::new(0));
    let syncs_before = syncs.load(Ordering::Relaxed);
    let start = clock.now();
    let end = start + Duration::from_secs(args.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..args.batches_in_flight.max(1) {
        let client = client.clone();
        let claimed = claimed.clone();
        let (cap, batch, len) = (args.events, args.batch, args.payload);
        tasks.spawn(async move {
            let name = stream("bench")?;
            let n_sensors = 10usize;
            let sensors: Vec<String> = (0..n_sensors)
                .map(|s| format!("batch-{task}-{s}"))
                .collect();
            let mut seqs = vec![0u64; n_sensors];
            let mut latencies = Vec::new();
            while RealClock.now() < end && claimed.fetch_add(batch as u64, Ordering::Relaxed) < cap
            {
                let mut records: Vec<Record> = Vec::with_capacity(batch);
                for i in 0..batch {
                    let s = i % n_sensors;
                    records.push(record(&sensors[s], 1, seqs[s], payload(len, seqs[s]))?);
                    seqs[s] += 1;
                }
                let t = RealClock.now();
                let response = client.produce(name.clone(), records).await?;
                latencies.push(RealClock.now().duration_since(t).as_micros() as u64);
                check_appended(&response.outcomes)?;
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(result) = tasks.join_next().await {
        latencies.extend(result??);
    }
    let elapsed = clock.now().duration_since(start);
    let requests = latencies.len() as u64;
    Ok(ShapeResult {
        name: format!(
            "batch ({} events/request, {} in flight)",
            args.batch,
            args.batches_in_flight.max(1)
        ),
        events: requests * args.batch as u64,
        requests,
        elapsed,
        latency: percentiles(latencies),
        node_syncs: syncs.load(Ordering::Relaxed) - syncs_before,
        cpu_seconds: None,
        other_cpu_seconds: None,
    })
}

fn encoded_event_bytes(args: &Args) -> Result<usize> {
    let producer = Identity::new(CLUSTER, Role::Edge, "bench")?;
    let sample = record("single-100", 1, 12_345, payload(args.payload, 0))?;
    Ok(codec::encode(&Event::stamp(producer, RealClock.wall(), sample))?.len())
}

async fn run(args: Args) -> Result<()> {
    let (disk, counters) = CountingDisk::new();
    let env = Env {
        disk: Arc::new(disk),
        ..real_env(1)
    };
    let partitions = args.partitions;
    let durable_record_interval_ms = args.durable_record_interval_ms;
    let mut builder = TestNode::builder().env(env).configure(move |config| {
        config.streams.push(StreamSection::new("bench", partitions));
        config.acl.push(AclRule {
            identity: format!("sluice://{CLUSTER}/edge/bench"),
            produce: vec!["bench".into()],
            consume: vec![],
        });
        config.storage.segment_bytes_max = 64 << 20;
        if let Some(ms) = durable_record_interval_ms {
            config.storage.durable_record_interval_ms = ms;
        }
    });
    if let Some(dir) = &args.dir {
        builder = builder.parent_dir(dir);
    }
    let mut node = builder.start().await?;
    let measured = measure(&node, &args, &counters).await;
    // Stop the node even after a failure, so no partition writes into the temp dir as it goes.
    node.stop().await?;
    measured
}

async fn measure(node: &TestNode, args: &Args, counters: &DiskCounters) -> Result<()> {
    let data_dir = node.dir().to_path_buf();
    let cpus = n_cpus();
    let syncs = &counters.n_syncs;
    println!(
        "sluice-bench: node data in {} ({cpus} cpus, load average {})",
        data_dir.display(),
        load_average()
    );
    println!(
        "  stream bench: {} partition(s); payload {} bytes, {} bytes per stored event; {} s per shape",
        args.partitions,
        args.payload,
        encoded_event_bytes(args)?,
        args.seconds
    );

    let (fsync_rate, fsync_latency) = {
        let (dir, seconds) = (data_dir.clone(), args.fsync_seconds);
        tokio::task::spawn_blocking(move || fsync_reference(&dir, seconds)).await??
    };
    println!(
        "reference: 4 KiB pwrite + fdatasync: {fsync_rate:.0} /s  (p50 {}, p99 {}, p99.9 {})",
        ms(fsync_latency.p50),
        ms(fsync_latency.p99),
        ms(fsync_latency.p999)
    );

    let mut settings = node.settings(&node.edge("bench")?)?;
    settings.in_flight_max = u32::try_from(args.window.max(1))?;
    let client = Client::connect(&settings).await?;
    let mut results = Vec::new();
    for shape in ["single", "batch"] {
        let cpu_before = CpuSnapshot::take();
        let mut result = match shape {
            "single" => single_shape(&client, args, syncs).await?,
            _ => batch_shape(&client, args, syncs).await?,
        };
        (result.cpu_seconds, result.other_cpu_seconds) = CpuSnapshot::take().since(&cpu_before);
        results.push(result);
    }
    for r in &results {
        println!("{}:", r.name);
        println!(
            "  {:.0} events/s  ({} events, {} requests in {:.1} s)",
            r.events_per_s(),
            r.events,
            r.requests,
            r.elapsed.as_secs_f64()
        );
        println!(
            "  ack latency p50 {}  p99 {}  p99.9 {}",
            ms(r.latency.p50),
            ms(r.latency.p99),
            ms(r.latency.p999)
        );
        println!(
            "  node fdatasync: {:.0} /s ({:.0}% of the reference rate), {:.1} events per fdatasync; {:.1} events/s per reference fdatasync/s",
            r.syncs_per_s(),
            100.0 * r.syncs_per_s() / fsync_rate,
            r.events as f64 / (r.node_syncs.max(1)) as f64,
            r.events_per_s() / fsync_rate
        );
        if let Some(cpu) = r.cpu_seconds {
            println!(
                "  process cpu: {:.2} of {cpus} cores busy, {:.1} us cpu per event, {:.0} us cpu per request",
                cpu / r.elapsed.as_secs_f64(),
                1e6 * cpu / r.events.max(1) as f64,
                1e6 * cpu / r.requests.max(1) as f64
            );
        }
        if let Some(others) = r.other_cpu_seconds {
            println!(
                "  other processes of the machine: {:.2} cores busy",
                others / r.elapsed.as_secs_f64()
            );
        }
    }
    println!("load average at the end: {}", load_average());
    client.close();
    Ok(())
}

fn main() -> std::process::ExitCode {
    sluice_tests::measure::bench_main(run(Args::parse()))
}
