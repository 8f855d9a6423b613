//! `sluice-edge`: the edge agent. `run` starts it; `status` asks a running agent what it is doing;
//! `spool check` reports what the spools hold without changing them; `config check` validates a
//! configuration and prints what it would do.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_edge::agent::{spool_dir, spool_share, spool_streams, Agent};
use sluice_edge::config::{self, EdgeConfig};
use sluice_edge::metrics::Status;
use sluice_edge::spool::{Now, Spool};
use sluice_proto::env::Clock;
use sluice_proto::net::{QuicTransport, TlsMaterial};
use sluice_proto::os::{real_env, DirLock, FsDisk, RealClock};
use sluice_proto::Role;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::{error, info, warn, Instrument};

#[derive(Parser)]
#[command(
    name = "sluice-edge",
    version,
    about = "Sluice edge agent: reads sensors, MQTT and JSON logs, spools durably, forwards over QUIC + mTLS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
    Run {
        /// The agent's config file (see deploy/edge.example.toml).
        #[arg(long, default_value = "/etc/sluice/edge.toml")]
        config: PathBuf,
    },
    /// Show what a running agent is doing: readings by source, rejections by reason, spools,
    /// the uplink.
    Status {
        /// Read the status address from this config file.
        #[arg(long, default_value = "/etc/sluice/edge.toml")]
        config: PathBuf,
        /// Ask this address instead (`host:port` of `[status] listen`).
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Inspect the spools.
    #[command(subcommand)]
    Spool(SpoolCommand),
    /// Validate a config file and print what it would do.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Report what recovery would find in each spool, without writing anything.
    Check {
        /// The agent's config file.
        #[arg(long, default_value = "/etc/sluice/edge.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load, validate and summarise the configuration.
    Check {
        /// The agent's config file.
        #[arg(long, default_value = "/etc/sluice/edge.toml")]
        config: PathBuf,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(config),
        Command::Status { config, addr, json } => status(config, addr, json),
        Command::Spool(SpoolCommand::Check { config }) => spool_check(config),
        Command::Config(ConfigCommand::Check { config }) => config_check(config),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sluice-edge: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A summary of the effective configuration, without secrets.
fn summary(config: &EdgeConfig) -> String {
    let sources: Vec<String> = config
        .sources
        .iter()
        .map(|s| {
            let kind = match s {
                config::SourceSpec::Dht(_) => "dht",
                config::SourceSpec::Mqtt(_) => "mqtt",
                config::SourceSpec::Jsonl(_) => "jsonl",
                config::SourceSpec::Sim(_) => "sim",
            };
            format!("{} ({kind})", s.name())
        })
        .collect();
    let streams: Vec<String> = config.streams().iter().map(|s| s.to_string()).collect();
    format!(
        "cluster {} via {}; sources: {}; streams: {}; spool {} bytes in {} ({:?}, sync every {} ms); status {}",
        config.uplink.cluster,
        config.uplink.nodes.join(", "),
        sources.join(", "),
        streams.join(", "),
        config.spool.spool_bytes_max,
        config.edge.data_dir.display(),
        config.spool.policy,
        config.spool.sync_interval_ms,
        config
            .status
            .listen
            .map_or("off".to_owned(), |a| format!("on http://{a}")),
    )
}

fn run(path: PathBuf) -> anyhow::Result<()> {
    init_tracing();
    let config = config::load(&path)?;
    info!(config = %summary(&config), "configuration loaded");
    let u = &config.uplink;
    let material = TlsMaterial::load(&u.ca_cert, &u.cert, &u.key)
        .with_context(|| "loading the uplink's certificates")?;
    let identity = material
        .identity()
        .with_context(|| format!("reading the identity of {}", u.cert.display()))?;
    if identity.role != Role::Edge {
        // The node decides what this identity may do; the agent keeps spooling either way.
        error!(%identity, "uplink.cert is not an edge certificate; create one with `sluice certs edge <name>`");
    }
    if identity.cluster != u.cluster {
        error!(%identity, cluster = %u.cluster, "uplink.cert belongs to another cluster than uplink.cluster");
    }
    let transport = Arc::new(QuicTransport::new(u.client_settings(material)));
    // One agent per data directory: a second would write the same spools.
    let _lock = DirLock::acquire(&config.edge.data_dir, true).with_context(|| {
        format!(
            "cannot lock data_dir {}; is another sluice-edge running on it?",
            config.edge.data_dir.display()
        )
    })?;
    let identity_text = identity.to_string();
    let seed = (RealClock.wall().0 as u64) ^ fnv(identity_text.as_bytes());
    // Two workers are plenty for an agent (the loop, the uplink's QUIC and the sources), and
    // each worker costs memory on a small board.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let span = tracing::info_span!("edge", identity = %identity_text);
    let run = async move {
        let mut agent = Agent::start(&config, real_env(seed), transport, &identity_text).await?;
        let signal = shutdown_signal();
        tokio::select! {
            biased;
            error = agent.failed() => return Err(error.into()),
            () = signal => info!("stopping"),
        }
        agent.stop().await?;
        Ok(())
    };
    let result = runtime.block_on(run.instrument(span));
    // A blocking read of stdin (a `jsonl` source on "-") would hold a plain drop forever.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                biased;
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(error) => {
            warn!(%error, "cannot watch SIGTERM; stopping on ctrl-c only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn status(path: PathBuf, addr: Option<SocketAddr>, json: bool) -> anyhow::Result<()> {
    let addr = match addr {
        Some(addr) => addr,
        None => config::load(&path)?
            .status
            .listen
            .context("[status] listen is off in the config; pass --addr")?,
    };
    let status = sluice_edge::status::fetch(addr, 5_000).map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// The status as a table for people.
fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "agent   {}", s.identity);
    let u = &s.uplink;
    let _ = writeln!(
        out,
        "uplink  {}; delivered {}, in flight {}, batches {} ({} failed), connects {} ({} failed)",
        u.connected_to
            .as_deref()
            .map_or("disconnected".to_owned(), |p| format!("connected to {p}")),
        u.delivered,
        u.in_flight,
        u.batches,
        u.batches_failed,
        u.connects,
        u.connect_failures
    );
    if let Some(e) = &u.last_error {
        let _ = writeln!(out, "        last error: {e}");
    }
    for (reason, n) in &u.refused {
        let _ = writeln!(out, "        refused by the node ({reason}): {n}");
    }
    let _ = writeln!(
        out,
        "\nsource               read    spooled  restarts  rejected"
    );
    for (name, v) in &s.sources {
        let rejected: Vec<String> = v.rejected.iter().map(|(r, n)| format!("{r}={n}")).collect();
        let _ = writeln!(
            out,
            "{name:<18} {:>7} {:>10} {:>9}  {}",
            v.read,
            v.spooled,
            v.restarts,
            if rejected.is_empty() {
                "-".to_owned()
            } else {
                rejected.join(" ")
            }
        );
        if let Some(f) = &v.failing {
            let _ = writeln!(out, "{:<18} failing: {f}", "");
        }
    }
    let _ = writeln!(
        out,
        "\nspool (stream)   records      bytes  oldest      dropped"
    );
    for (stream, v) in &s.spools {
        let dropped: Vec<String> = v
            .dropped
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        let _ = writeln!(
            out,
            "{stream:<16} {:>7} {:>10}  {:<10}  {}",
            v.records,
            v.bytes,
            v.oldest_age_ms
                .map_or("-".to_owned(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
            if dropped.is_empty() {
                "-".to_owned()
            } else {
                dropped.join(" ")
            }
        );
    }
    out
}

fn spool_check(path: PathBuf) -> anyhow::Result<()> {
    let config = config::load(&path)?;
    // A running agent changes the spools under the check's feet.
    let _lock = DirLock::acquire(&config.edge.data_dir, false).with_context(|| {
        format!(
            "cannot check the spools in {} while the agent runs; stop it, or see `sluice-edge status`",
            config.edge.data_dir.display()
        )
    })?;
    let streams = spool_streams(&config, &FsDisk);
    let share = spool_share(&config, streams.len());
    let now = Now {
        mono: RealClock.now(),
        wall: RealClock.wall(),
    };
    let mut problems = 0;
    for stream in streams {
        let dir = spool_dir(&config.edge.data_dir, &stream);
        println!("== spool of stream {stream} ({})", dir.display());
        match Spool::check(&FsDisk, &dir, share, now) {
            Ok(report) => print!("{report}"),
            Err(error) => {
                problems += 1;
                println!("error: {error}");
            }
        }
    }
    anyhow::ensure!(
        problems == 0,
        "{problems} spool(s) cannot be recovered as they are"
    );
    Ok(())
}

fn config_check(path: PathBuf) -> anyhow::Result<()> {
    let config = config::load(&path)?;
    println!("{} is valid: {}", path.display(), summary(&config));
    Ok(())
}
