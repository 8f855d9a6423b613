//! `sluice demo`: a local demonstration on an embedded default. It creates a CA and certificates,
//! starts a node with QUIC + mTLS on loopback, and runs real edge agents (`sluice_edge::Agent`,
//! in this process) reading simulated sensors into their durable spools. It tails the stream,
//! takes the node down for a few seconds while the edges keep spooling, brings it back so they
//! deliver their backlog, then checks from the stored events that every reading the edges
//! spooled is there exactly once and in order, shows a deduplicated retry and an ACL refusal,
//! and restarts the node to show that everything comes back from disk.
//!
//! The node crate depends on `edge` for this demo only: it is the one place that runs both.

use crate::certs::{self, CertsCommand, LeafOptions, OutputOptions};
use crate::config;
use crate::env::real_env;
use crate::node::Node;
use anyhow::{bail, Context};
use sluice_edge::agent::Agent;
use sluice_proto::msg::{FetchFrom, FetchRequest, RecordOutcome};
use sluice_proto::net::{Client, ClientSettings, NetError, QuicTransport, TlsMaterial};
use sluice_proto::{Offset, PartitionId, Payload, Record, StoredEvent, StreamName};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `sluice demo`
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Working directory (certificates, config, data); recreated on every run.
    #[arg(long, default_value = "demo-data")]
    pub dir: PathBuf,
    /// How long the node serves the edges, in seconds (around the outage).
    #[arg(long, default_value_t = 8)]
    pub seconds: u64,
    /// How long the node is down in the middle, in seconds.
    #[arg(long, default_value_t = 4)]
    pub outage_seconds: u64,
    /// Edge agents.
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

fn edge_toml(dir: &Path, idx: u32, addr: std::net::SocketAddr) -> String {
    let certs = dir.join("certs");
    format!(
        r#"[edge]
data_dir = "{data}"
stats_interval_ms = 0

[uplink]
cluster = "{CLUSTER}"
nodes = ["{addr}"]
ca_cert = "{ca}"
cert = "{cert}"
key = "{key}"
backoff_initial_ms = 100
backoff_max_ms = 1000
connect_timeout_ms = 1000

[spool]
sync_interval_ms = 200

[status]
listen = "off"

[[sources]]
type = "sim"
name = "room"
stream = "{STREAM}"
devices = 2
sensor_prefix = "e{idx}-room"
interval_ms = 50
day_ms = 60000
seed = {idx}
validation.temperature = {{ min = -40.0, max = 80.0 }}
"#,
        data = dir.join(format!("edge-e{idx}")).display(),
        ca = certs.join("ca.pem").display(),
        cert = certs.join(format!("edge-e{idx}.pem")).display(),
        key = certs.join(format!("edge-e{idx}.key")).display(),
    )
}

/// The demo's edge agents.
struct Edges {
    agents: Vec<Agent>,
}

impl Edges {
    async fn start(dir: &Path, n: u32, addr: std::net::SocketAddr) -> anyhow::Result<Edges> {
        let mut agents = Vec::new();
        for idx in 1..=n {
            let path = dir.join(format!("edge-e{idx}.toml"));
            std::fs::write(&path, edge_toml(dir, idx, addr))?;
            let config = sluice_edge::config::load(&path)?;
            let u = &config.uplink;
            let material = TlsMaterial::load(&u.ca_cert, &u.cert, &u.key)?;
            let settings = u.client_settings(material);
            let transport = Arc::new(QuicTransport::new(settings));
            let identity = format!("sluice://{CLUSTER}/edge/e{idx}");
            let seed = u64::from(idx);
            agents.push(Agent::start(&config, real_env(seed), transport, &identity).await?);
        }
        Ok(Edges { agents })
    }

    fn totals(&self) -> (u64, u64, u64, u64, bool) {
        let (mut spooled, mut delivered, mut waiting, mut refused) = (0, 0, 0, 0);
        let mut connected = true;
        for agent in &self.agents {
            let s = agent.metrics().status();
            spooled += s.sources.values().map(|v| v.spooled).sum::<u64>();
            refused += s
                .sources
                .values()
                .flat_map(|v| v.rejected.values())
                .sum::<u64>();
            delivered += s.uplink.delivered;
            waiting += s.spools.values().map(|v| v.records).sum::<u64>();
            connected &= s.uplink.connected_to.is_some();
        }
        (spooled, delivered, waiting, refused, connected)
    }

    async fn stop(self) -> anyhow::Result<()> {
        for agent in self.agents {
            agent.stop().await?;
        }
        Ok(())
    }
}

/// Prints one line per second for `seconds`, with a reading from the tail.
async fn watch(
    edges: &Edges,
    admin: Option<&Client>,
    seconds: u64,
    clock_s: &mut u64,
    tail_from: &mut Offset,
) -> anyhow::Result<()> {
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        *clock_s += 1;
        let (spooled, delivered, waiting, refused, connected) = edges.totals();
        println!(
            "t={:>3}s  spooled {spooled:>6}  delivered {delivered:>6}  waiting in spools {waiting:>5}  refused {refused}  {}",
            clock_s,
            if connected { "connected" } else { "node unreachable: spooling" }
        );
        if let Some(admin) = admin {
            let fetched = admin
                .fetch(FetchRequest {
                    request_id: 0,
                    stream: StreamName::new(STREAM)?,
                    partition: PartitionId(0),
                    from: FetchFrom::Offset(*tail_from),
                    events_max: 1,
                    bytes_max: 4096,
                    wait_ms: 0,
                })
                .await?;
            if let Some(e) = fetched.events.first() {
                let value = match &e.event.payload {
                    Payload::Reading(r) => format!("{:.2}", r.value()),
                    other => format!("{other:?}"),
                };
                println!(
                    "        tail p0@{}: {} = {value} (seq {} of epoch {}) from {}",
                    e.offset, e.event.sensor, e.event.seq, e.event.boot_epoch, e.event.producer
                );
                *tail_from = Offset(
                    fetched
                        .high_watermark
                        .0
                        .saturating_sub(1)
                        .max(e.offset.0 + 1),
                );
            }
        }
    }
    Ok(())
}

/// Reads every partition of the stream.
async fn read_stream(admin: &Client) -> anyhow::Result<Vec<StoredEvent>> {
    let mut out = Vec::new();
    for partition in 0..PARTITIONS {
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
            let n = r.events.len();
            out.extend(r.events);
            if r.next_offset >= r.high_watermark || n == 0 {
                break;
            }
            from = r.next_offset;
        }
    }
    Ok(out)
}

/// Checks that, per sensor and epoch, stored seqs are 0..n once each in offset order; returns
/// the number of readings.
fn check_stream(events: &[StoredEvent]) -> anyhow::Result<(u64, usize)> {
    let mut by_sensor: BTreeMap<(String, String, u64), Vec<u64>> = BTreeMap::new();
    for e in events {
        let key = (
            e.event.producer.to_string(),
            e.event.sensor.to_string(),
            e.event.boot_epoch.0,
        );
        by_sensor.entry(key).or_default().push(e.event.seq);
    }
    let mut n = 0u64;
    for ((producer, sensor, epoch), seqs) in &by_sensor {
        for (expected, seq) in seqs.iter().enumerate() {
            if *seq != expected as u64 {
                bail!("{producer} {sensor} epoch {epoch}: expected seq {expected}, found {seq}");
            }
        }
        n += seqs.len() as u64;
    }
    Ok((n, by_sensor.len()))
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
    let mut config = config::load(&config_path)?;
    let mut node = Node::start(&config, real_env(1)).await?;
    let addr = node.serve(&config).await?;
    // Restarts listen on the same port, so the edges find the node again.
    config.transport.listen = addr;
    println!("-- node 1 listening on {addr} (QUIC + mutual TLS), stream {STREAM:?} with {PARTITIONS} partitions");
    let edges = Edges::start(&args.dir, args.edges, addr).await?;
    println!(
        "-- {} edge agents started: 2 simulated devices each (temperature and humidity, every 50 ms), validated, spooled \
         durably (sync every 200 ms), sent in batches; acks only after the node's fdatasync",
        args.edges
    );
    let admin = connect(&certs_dir, "admin-demo", addr).await?;
    let (mut clock_s, mut tail_from) = (0u64, Offset(0));
    let first = args.seconds.div_ceil(2);
    watch(&edges, Some(&admin), first, &mut clock_s, &mut tail_from).await?;
    admin.close();

    println!(
        "-- the node goes down for {} s; the edges keep reading and spooling",
        args.outage_seconds
    );
    node.stop().await;
    watch(
        &edges,
        None,
        args.outage_seconds,
        &mut clock_s,
        &mut tail_from,
    )
    .await?;
    println!("-- the node is back: the edges reconnect and deliver their backlog");
    let mut node = Node::start(&config, real_env(2)).await?;
    node.serve(&config).await?;
    let admin = connect(&certs_dir, "admin-demo", addr).await?;
    watch(
        &edges,
        Some(&admin),
        args.seconds - first,
        &mut clock_s,
        &mut tail_from,
    )
    .await?;
    println!("-- stopping the sensors; the edges deliver what they still hold, then stop cleanly");
    for agent in &edges.agents {
        agent.stop_sources().await;
    }
    // Bounded: the spools hold a few hundred readings and the node is up. Nothing is dropped
    // in the demo, so every spooled reading is delivered once.
    for _ in 0..100 {
        let (spooled, delivered, waiting, _, _) = edges.totals();
        if waiting == 0 && delivered == spooled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (spooled, delivered, waiting, refused, _) = edges.totals();
    edges.stop().await?;

    println!("-- checking the stream against what the edges spooled");
    let events = read_stream(&admin).await?;
    let (n_stored, n_sensors) = check_stream(&events)?;
    println!(
        "   {n_sensors} sensors: {n_stored} readings stored, each seq exactly once and in order \
         (edges spooled {spooled}, delivered {delivered}, {waiting} still waiting, {refused} refused by validation)"
    );
    if n_stored != spooled {
        bail!(
            "the edges spooled {spooled} readings but {n_stored} are stored ({waiting} still wait)"
        );
    }

    println!("-- an edge resends a stored reading (as after a lost ack): the node deduplicates it");
    let edge = connect(&certs_dir, "edge-e1", addr).await?;
    if let Some(stored) = events
        .iter()
        .find(|e| e.event.producer.to_string().ends_with("/e1"))
    {
        let e = &stored.event;
        let record = Record {
            sensor: e.sensor.clone(),
            boot_epoch: e.boot_epoch,
            seq: e.seq,
            device_time: e.device_time,
            payload: e.payload.clone(),
        };
        let response = edge.produce(StreamName::new(STREAM)?, vec![record]).await?;
        match response.outcomes.first() {
            Some(RecordOutcome::Appended {
                offset,
                duplicate: true,
                ..
            }) => println!(
                "   answered as a duplicate with its original offset {offset} (stored at {})",
                stored.offset
            ),
            other => bail!("expected a duplicate, got {other:?}"),
        }
    }
    println!("-- the edge tries to read the stream (its ACL only allows produce):");
    let request = FetchRequest {
        request_id: 0,
        stream: StreamName::new(STREAM)?,
        partition: PartitionId(0),
        from: FetchFrom::Earliest,
        events_max: 1,
        bytes_max: 4096,
        wait_ms: 0,
    };
    match edge.fetch(request).await {
        Err(NetError::Remote { message, .. }) => println!("   refused: {message}"),
        Err(e) => bail!("unexpected error: {e}"),
        Ok(_) => bail!("the ACL let an edge read"),
    }
    edge.close();
    admin.close();

    println!("-- restarting the node: partitions recover from their segment files");
    node.stop().await;
    let mut node = Node::start(&config, real_env(3)).await?;
    let addr = node.serve(&config).await?;
    let admin = connect(&certs_dir, "admin-demo", addr).await?;
    let after = read_stream(&admin).await?;
    if after.len() != events.len() {
        bail!(
            "{} events before the restart, {} after",
            events.len(),
            after.len()
        );
    }
    println!(
        "   all {} stored readings are present after the restart",
        after.len()
    );
    admin.close();
    node.stop().await;
    println!(
        "== done. Data, configs and certificates are in {}",
        args.dir.display()
    );
    Ok(())
}
