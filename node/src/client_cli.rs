//! Client commands of the CLI: `sluice produce` (JSON lines on stdin into a stream) and
//! `sluice tail` (follow a stream). Both speak QUIC + mTLS with an admin or edge certificate.

use anyhow::{bail, Context};
use sluice_proto::msg::{FetchFrom, FetchRequest, RecordOutcome, RecordRejection};
use sluice_proto::net::{Client, ClientSettings, NetError, TlsMaterial};
use sluice_proto::{
    BootEpoch, Offset, PartitionId, Payload, Record, SensorId, StreamName, UnixMillis,
};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

/// How a CLI command reaches the cluster.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectOptions {
    /// Node address (repeatable; tried in order).
    #[arg(long = "node", env = "SLUICE_NODE", default_value = "127.0.0.1:7400")]
    pub nodes: Vec<String>,
    /// Directory of the CA and this client's certificate.
    #[arg(long, env = "SLUICE_CERTS", default_value = "certs")]
    pub certs: PathBuf,
    /// Certificate file stem inside --certs, e.g. `admin-ops` (default: the first admin-*.pem).
    #[arg(long = "as", env = "SLUICE_AS")]
    pub identity: Option<String>,
}

impl ConnectOptions {
    /// Loads the certificate and connects.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let stem = match &self.identity {
            Some(stem) => stem.clone(),
            None => first_admin(&self.certs)?,
        };
        let material = TlsMaterial::load(
            &self.certs.join("ca.pem"),
            &self.certs.join(format!("{stem}.pem")),
            &self.certs.join(format!("{stem}.key")),
        )?;
        let cluster = material.identity()?.cluster;
        let settings = ClientSettings::new(material, cluster, self.nodes.clone());
        Ok(Client::connect(&settings).await?)
    }
}

fn first_admin(dir: &std::path::Path) -> anyhow::Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read certificate directory {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("admin-") && n.ends_with(".pem"))
        .collect();
    names.sort();
    match names.first() {
        Some(name) => Ok(name.trim_end_matches(".pem").to_owned()),
        None => bail!(
            "no admin-*.pem in {}; create one with `sluice certs admin <name>` or pass --as",
            dir.display()
        ),
    }
}

/// `sluice produce`
#[derive(Debug, Clone, clap::Args)]
pub struct ProduceArgs {
    /// Target stream.
    pub stream: String,
    /// Sensor id the lines are recorded under (the partitioning key).
    #[arg(long, default_value = "stdin")]
    pub sensor: String,
    /// Lines per produce request.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Attempts per batch when the node is unavailable (retries are deduplicated).
    #[arg(long, default_value_t = 10)]
    pub attempts: u32,
    /// Connection.
    #[command(flatten)]
    pub connect: ConnectOptions,
}

/// Reads JSON lines from stdin and produces each as an opaque JSON event. A line that is not JSON
/// is reported with its number and skipped; the exit status says whether any line failed.
pub async fn produce(args: &ProduceArgs, epoch: UnixMillis) -> anyhow::Result<()> {
    let stream = StreamName::new(args.stream.clone())?;
    let sensor = SensorId::new(args.sensor.clone())?;
    let client = args.connect.connect().await?;
    let boot_epoch = BootEpoch(epoch.0.max(0) as u64);
    let (mut seq, mut n_ok, mut n_bad) = (0u64, 0u64, 0u64);
    let mut batch = Vec::with_capacity(args.batch);
    let stdin = std::io::stdin();
    for (line_idx, line) in stdin.lock().lines().enumerate() {
        let line = line.context("cannot read stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&line) {
            eprintln!("line {}: not JSON ({e}); skipped", line_idx + 1);
            n_bad += 1;
            continue;
        }
        batch.push(Record {
            sensor: sensor.clone(),
            boot_epoch,
            seq,
            device_time: epoch,
            payload: Payload::Json(line),
        });
        seq += 1;
        if batch.len() >= args.batch.max(1) {
            n_ok += send(&client, &stream, std::mem::take(&mut batch), args.attempts).await?;
        }
    }
    if !batch.is_empty() {
        n_ok += send(&client, &stream, batch, args.attempts).await?;
    }
    client.close();
    eprintln!(
        "produced {n_ok} events to {stream} (sensor {sensor}, epoch {})",
        boot_epoch.0
    );
    if n_bad > 0 {
        bail!("{n_bad} lines were not JSON and were skipped");
    }
    Ok(())
}

async fn send(
    client: &Client,
    stream: &StreamName,
    records: Vec<Record>,
    attempts: u32,
) -> anyhow::Result<u64> {
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=attempts.max(1) {
        let result = client.produce(stream.clone(), records.clone()).await;
        let retry = match &result {
            Ok(response) => response.outcomes.iter().any(|o| {
                matches!(
                    o,
                    RecordOutcome::Rejected(
                        RecordRejection::Unavailable { .. } | RecordRejection::Overloaded { .. }
                    )
                )
            }),
            Err(NetError::Timeout { .. }) => true,
            Err(_) => false,
        };
        if retry && attempt < attempts {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            continue;
        }
        let response = result?;
        for (record, outcome) in records.iter().zip(&response.outcomes) {
            if let RecordOutcome::Rejected(rejection) = outcome {
                bail!("record seq {} rejected: {rejection}", record.seq);
            }
        }
        return Ok(records.len() as u64);
    }
    bail!("gave up after {attempts} attempts")
}

/// `sluice tail`
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// Stream to follow.
    pub stream: String,
    /// Where to start: `earliest`, `latest` or an offset (per partition).
    #[arg(long, default_value = "latest")]
    pub from: String,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// Stop after this many events.
    #[arg(long)]
    pub max_events: Option<u64>,
    /// Stop once caught up instead of following.
    #[arg(long)]
    pub no_follow: bool,
    /// Connection.
    #[command(flatten)]
    pub connect: ConnectOptions,
}

/// Prints a stream's events as JSON lines: `{"partition":…,"offset":…,"event":{…}}`.
pub async fn tail(args: &TailArgs) -> anyhow::Result<()> {
    let stream = StreamName::new(args.stream.clone())?;
    let from = match args.from.as_str() {
        "earliest" => FetchFrom::Earliest,
        "latest" => FetchFrom::Latest,
        n => FetchFrom::Offset(Offset(n.parse().with_context(|| {
            format!("--from must be earliest, latest or an offset, not {n:?}")
        })?)),
    };
    let client = args.connect.connect().await?;
    let n_partitions = client.metadata(stream.clone()).await?.n_partitions;
    let partitions: Vec<u32> = match args.partition {
        Some(p) if p < n_partitions => vec![p],
        Some(p) => {
            bail!("stream {stream} has {n_partitions} partitions; there is no partition {p}")
        }
        None => (0..n_partitions).collect(),
    };
    let mut positions: Vec<FetchFrom> = vec![from; partitions.len()];
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    loop {
        let mut caught_up = true;
        let wait_ms = if partitions.len() == 1 && !args.no_follow {
            1000
        } else {
            0
        };
        for (idx, partition) in partitions.iter().enumerate() {
            let request = FetchRequest {
                request_id: 0,
                stream: stream.clone(),
                partition: PartitionId(*partition),
                from: positions[idx],
                events_max: 1000,
                bytes_max: 1 << 20,
                wait_ms,
            };
            let response = client.fetch(request).await?;
            if response.next_offset < response.high_watermark {
                caught_up = false;
            }
            let mut out = stdout.lock();
            for stored in &response.events {
                let line = serde_json::json!({ "partition": partition, "offset": stored.offset, "event": stored.event });
                writeln!(out, "{line}").context("cannot write to stdout")?;
                printed += 1;
                if args.max_events.is_some_and(|m| printed >= m) {
                    return Ok(());
                }
            }
            positions[idx] = FetchFrom::Offset(response.next_offset);
        }
        if caught_up {
            if args.no_follow {
                return Ok(());
            }
            if partitions.len() > 1 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
