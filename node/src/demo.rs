//! `sluice demo`: a local demonstration on an embedded default. It creates a CA and certificates,
//! starts a node with QUIC + mTLS on loopback, runs simulated edge agents producing temperature
//! and humidity readings, tails the stream, shows a deduplicated retry and an ACL refusal, then
//! restarts the node and checks that every acknowledged reading came back from disk.

use crate::certs::{self, CertsCommand, LeafOptions, OutputOptions};
use crate::config;
use crate::env::{real_env, RealClock};
use crate::node::Node;
use anyhow::{bail, Context};
use rand::Rng;
use sluice_proto::env::Clock;
use sluice_proto::msg::{FetchFrom, FetchRequest, RecordOutcome};
use sluice_proto::net::{Client, ClientSettings, NetError, TlsMaterial};
use sluice_proto::{
    BootEpoch, Offset, PartitionId, Payload, Reading, Record, SensorId, StreamName,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `sluice demo`
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Working directory (certificates, config, data); recreated on every run.
    #[arg(long, default_value = "demo-data")]
    pub dir: PathBuf,
    /// How long the edges produce, in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Simulated edge agents.
    #[arg(long, default_value_t = 4)]
    pub edges: u32,
}

const CLUSTER: &str = "demo";
const STREAM: &str = "sensors";
const PARTITIONS: u32 = 4;

fn write_certs(dir: &Path, edges: u32) -> anyhow::Result<()> {
    let output = OutputOptions {
        dir: dir.to_path_buf(),
        force: true,
    };
    let leaf = LeafOptions {
        output: output.clone(),
        days: 30,
    };
    certs::run(&CertsCommand::Init {
        cluster: CLUSTER.into(),
        output,
        days: 30,
    })?;
    certs::run(&CertsCommand::Node {
        id: "1".into(),
        ips: vec![],
        dns: vec![],
        leaf: leaf.clone(),
    })?;
    certs::run(&CertsCommand::Admin {
        name: "demo".into(),
        leaf: leaf.clone(),
    })?;
    for i in 1..=edges {
        certs::run(&CertsCommand::Edge {
            id: format!("e{i}"),
            leaf: leaf.clone(),
        })?;
    }
    Ok(())
}

fn node_toml(dir: &Path) -> String {
    let certs = dir.join("certs");
    format!(
        r#"[node]
id = 1
cluster = "{CLUSTER}"
data_dir = "{data}"
stats_interval_ms = 0

[transport]
listen = "127.0.0.1:0"
ca_cert = "{ca}"
cert = "{cert}"
key = "{key}"

[storage]
segment_bytes_max = 8388608

[[streams]]
name = "{STREAM}"
partitions = {PARTITIONS}

[[acl]]
identity = "sluice://{CLUSTER}/edge/*"
produce = ["{STREAM}"]

[[acl]]
identity = "sluice://{CLUSTER}/admin/*"
produce = ["*"]
consume = ["*"]
"#,
        data = dir.join("data").display(),
        ca = certs.join("ca.pem").display(),
        cert = certs.join("node-1.pem").display(),
        key = certs.join("node-1.key").display(),
    )
}

async fn connect(certs: &Path, stem: &str, addr: std::net::SocketAddr) -> anyhow::Result<Client> {
    let material = TlsMaterial::load(
        &certs.join("ca.pem"),
        &certs.join(format!("{stem}.pem")),
        &certs.join(format!("{stem}.key")),
    )?;
    Ok(Client::connect(&ClientSettings::new(
        material,
        CLUSTER,
        vec![addr.to_string()],
    ))
    .await?)
}

/// What every simulated edge reports.
#[derive(Default)]
struct Tally {
    acked: AtomicU64,
    rejected: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
    /// Every acked offset by partition, to check after the restart.
    offsets: Mutex<BTreeMap<u32, Vec<u64>>>,
}

fn reading(rng: &mut rand_chacha::ChaCha8Rng, t_s: f64, base: f64, humidity: bool) -> Reading {
    // A compressed day (one minute), sensor noise, and now and then a spike.
    let cycle = (t_s / 60.0 * std::f64::consts::TAU).sin();
    let spike = if rng.random_bool(0.002) { 15.0 } else { 0.0 };
    let noise: f64 = rng.random_range(-0.3..0.3);
    if humidity {
        Reading::Humidity {
            percent: (base + 10.0 * cycle + noise + spike).clamp(0.0, 100.0),
        }
    } else {
        Reading::Temperature {
            celsius: base + 3.0 * cycle + noise + spike,
        }
    }
}

async fn run_edge(
    client: Client,
    idx: u32,
    stop: Arc<AtomicU64>,
    tally: Arc<Tally>,
) -> anyhow::Result<Vec<Record>> {
    let clock = RealClock;
    let start = clock.now();
    let mut rng = sluice_proto::env::rng_for(7, u64::from(idx), 0xde30);
    let sensors: Vec<(SensorId, f64, bool)> = vec![
        (SensorId::new(format!("e{idx}/fridge-temp"))?, 4.0, false),
        (SensorId::new(format!("e{idx}/room-temp"))?, 21.0, false),
        (SensorId::new(format!("e{idx}/room-humidity"))?, 45.0, true),
    ];
    let mut seqs = vec![0u64; sensors.len()];
    let stream = StreamName::new(STREAM)?;
    let mut last_batch = Vec::new();
    while stop.load(Ordering::Relaxed) == 0 {
        let t_s = clock.now().duration_since(start).as_secs_f64();
        let mut batch = Vec::new();
        for _ in 0..25 {
            for (i, (sensor, base, humidity)) in sensors.iter().enumerate() {
                batch.push(Record {
                    sensor: sensor.clone(),
                    boot_epoch: BootEpoch(1),
                    seq: seqs[i],
                    device_time: clock.wall(),
                    payload: Payload::Reading(reading(&mut rng, t_s, *base, *humidity)),
                });
                seqs[i] += 1;
            }
        }
        let sent = clock.now();
        let response = match client.produce(stream.clone(), batch.clone()).await {
            Ok(r) => r,
            Err(NetError::Timeout { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let latency = clock.now().duration_since(sent).as_micros() as u64;
        tally
            .latencies_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(latency);
        for outcome in &response.outcomes {
            match outcome {
                RecordOutcome::Appended {
                    partition, offset, ..
                } => {
                    tally.acked.fetch_add(1, Ordering::Relaxed);
                    tally
                        .offsets
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(partition.0)
                        .or_default()
                        .push(offset.0);
                }
                RecordOutcome::Rejected(r) => {
                    tally.rejected.fetch_add(1, Ordering::Relaxed);
                    eprintln!("  edge e{idx}: rejected: {r}");
                }
            }
        }
        last_batch = batch;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(last_batch)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs the demo.
pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("cannot clear {}", args.dir.display()))?;
    }
    let certs_dir = args.dir.join("certs");
    println!("== sluice demo in {}", args.dir.display());
    println!(
        "-- creating a cluster CA and certificates for node 1, {} edges and an admin",
        args.edges
    );
    write_certs(&certs_dir, args.edges)?;
    let config_path = args.dir.join("node.toml");
    std::fs::write(&config_path, node_toml(&args.dir))?;
    let config = config::load(&config_path)?;
    let mut node = Node::start(&config, real_env(1)).await?;
    let addr = node.serve(&config).await?;
    println!("-- node 1 listening on {addr} (QUIC + mutual TLS), stream {STREAM:?} with {PARTITIONS} partitions");

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicU64::new(0));
    let mut edges = Vec::new();
    for i in 1..=args.edges {
        let client = connect(&certs_dir, &format!("edge-e{i}"), addr).await?;
        edges.push((
            client.clone(),
            tokio::spawn(run_edge(client, i, stop.clone(), tally.clone())),
        ));
    }
    println!(
        "-- {} edges producing 3 sensors each, batches of 75 readings, ack after fdatasync",
        args.edges
    );
    let admin = connect(&certs_dir, "admin-demo", addr).await?;
    let mut tail_from = Offset(0);
    let mut previous = 0u64;
    for second in 1..=args.seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let acked = tally.acked.load(Ordering::Relaxed);
        let mut lat = tally
            .latencies_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        lat.sort_unstable();
        println!(
            "t={second:>3}s  acked {acked:>8}  (+{:>6}/s)  rejected {}  batch ack p50 {:.1} ms  p99 {:.1} ms",
            acked - previous,
            tally.rejected.load(Ordering::Relaxed),
            percentile(&lat, 0.5) as f64 / 1000.0,
            percentile(&lat, 0.99) as f64 / 1000.0
        );
        previous = acked;
        let fetched = admin
            .fetch(FetchRequest {
                request_id: 0,
                stream: StreamName::new(STREAM)?,
                partition: PartitionId(0),
                from: FetchFrom::Offset(tail_from),
                events_max: 1,
                bytes_max: 4096,
                wait_ms: 0,
            })
            .await?;
        if let Some(e) = fetched.events.first() {
            println!(
                "        tail p0@{}: {} {:?} from {}",
                e.offset, e.event.sensor, e.event.payload, e.event.producer
            );
            tail_from = Offset(
                fetched
                    .high_watermark
                    .0
                    .saturating_sub(1)
                    .max(e.offset.0 + 1),
            );
        }
    }
    stop.store(1, Ordering::Relaxed);
    let mut last_batches = Vec::new();
    for (client, task) in edges {
        last_batches.push((client, task.await.context("edge task")??));
    }

    println!("-- an edge resends its last batch (as after a lost ack): the node deduplicates it");
    if let Some((client, batch)) = last_batches.first() {
        let response = client
            .produce(StreamName::new(STREAM)?, batch.clone())
            .await?;
        let duplicates = response
            .outcomes
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    RecordOutcome::Appended {
                        duplicate: true,
                        ..
                    }
                )
            })
            .count();
        println!(
            "   {} of {} records answered as duplicates with their original offsets",
            duplicates,
            batch.len()
        );
    }
    println!("-- an edge tries to read the stream (its ACL only allows produce):");
    if let Some((client, _)) = last_batches.first() {
        let request = FetchRequest {
            request_id: 0,
            stream: StreamName::new(STREAM)?,
            partition: PartitionId(0),
            from: FetchFrom::Earliest,
            events_max: 1,
            bytes_max: 4096,
            wait_ms: 0,
        };
        match client.fetch(request).await {
            Err(e) => println!("   refused: {e}"),
            Ok(_) => bail!("the ACL let an edge read"),
        }
    }
    for (client, _) in &last_batches {
        client.close();
    }
    admin.close();

    println!("-- restarting the node: partitions recover from their segment files");
    node.stop().await;
    let mut node = Node::start(&config, real_env(1)).await?;
    let addr = node.serve(&config).await?;
    let admin = connect(&certs_dir, "admin-demo", addr).await?;
    let offsets = std::mem::take(&mut *tally.offsets.lock().unwrap_or_else(|p| p.into_inner()));
    let mut n_checked = 0u64;
    for (partition, acked) in offsets {
        let mut present = std::collections::BTreeSet::new();
        let mut from = Offset(0);
        loop {
            let r = admin
                .fetch(FetchRequest {
                    request_id: 0,
                    stream: StreamName::new(STREAM)?,
                    partition: PartitionId(partition),
                    from: FetchFrom::Offset(from),
                    events_max: 10_000,
                    bytes_max: 1 << 20,
                    wait_ms: 0,
                })
                .await?;
            present.extend(r.events.iter().map(|e| e.offset.0));
            if r.next_offset >= r.high_watermark {
                break;
            }
            from = r.next_offset;
        }
        for offset in acked {
            if !present.contains(&offset) {
                bail!("acknowledged offset {offset} of partition {partition} is missing after restart");
            }
            n_checked += 1;
        }
    }
    println!("   all {n_checked} acknowledged readings are present after the restart");
    admin.close();
    node.stop().await;
    println!(
        "== done. Data, config and certificates are in {}",
        args.dir.display()
    );
    Ok(())
}
