//! `sluice`: run a node, make certificates, produce, tail, the local demo, and the cluster's
//! admin commands (streams, acl, cluster).

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_node::admin_cli::{self, AclCommand, ClusterCommand, StreamsCommand};
use sluice_node::client_cli::{self, ProduceArgs, TailArgs};
use sluice_node::demo::{self, DemoArgs};
use sluice_node::env::{real_env, RealClock};
use sluice_node::{certs, config, Node};
use sluice_proto::env::Clock;
use sluice_proto::os::DirLock;
use std::path::PathBuf;
use std::time::Duration;
use tracing::{error, info};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: sensor and security events from the edge into a durable, audited cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Run {
        /// The node's config file (see deploy/node.example.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Create the cluster CA and node, edge and admin certificates.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Produce JSON lines from stdin into a stream.
    Produce(ProduceArgs),
    /// Follow a stream, printing events as JSON lines.
    Tail(TailArgs),
    /// Run the local demo: a node, edge agents on simulated sensors, an outage, a restart.
    Demo(DemoArgs),
    /// Inspect the node's storage.
    #[command(subcommand)]
    Storage(StorageCommand),
    /// Create, list, describe and delete the cluster's streams (admin certificate).
    #[command(subcommand)]
    Streams(StreamsCommand),
    /// Add, list and remove the cluster's ACL entries (admin certificate).
    #[command(subcommand)]
    Acl(AclCommand),
    /// Form the cluster and watch it (admin certificate).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand)]
enum StorageCommand {
    /// Check every partition log under a data directory (read-only; not beside a running
    /// node): prints each as ok or CORRUPT with the file and byte; exits 1 if any is corrupt.
    Check {
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Certs(command) => certs::run(command),
        Command::Storage(StorageCommand::Check { data_dir }) => {
            match sluice_node::storage_cli::run_check(data_dir) {
                Ok(true) => Ok(()),
                Ok(false) => return std::process::ExitCode::FAILURE,
                Err(e) => Err(e),
            }
        }
        other => match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(run_async(other)),
            Err(e) => Err(e.into()),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_async(command: &Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config } => run_node(config).await,
        Command::Produce(args) => {
            init_tracing("warn");
            client_cli::produce(args, RealClock.wall()).await
        }
        Command::Tail(args) => {
            init_tracing("warn");
            client_cli::tail(args).await
        }
        Command::Demo(args) => {
            // The demo prints its own story; the outage it stages would otherwise fill the
            // screen with expected warnings. SLUICE_LOG=warn shows them.
            init_tracing("error");
            demo::run(args).await
        }
        Command::Streams(command) => {
            init_tracing("warn");
            admin_cli::streams(command).await
        }
        Command::Acl(command) => {
            init_tracing("warn");
            admin_cli::acl(command).await
        }
        Command::Cluster(command) => {
            init_tracing("warn");
            admin_cli::cluster(command).await
        }
        Command::Certs(_) | Command::Storage(_) => Ok(()),
    }
}

async fn run_node(path: &std::path::Path) -> anyhow::Result<()> {
    init_tracing("info");
    let config = config::load(path)?;
    info!(config = %config.masked(), "effective config");
    // One node process per data directory: a second would write the same logs.
    let _lock = DirLock::acquire(&config.node.data_dir, true).context("node.data_dir")?;
    let seed = RealClock.wall().0 as u64;
    let mut node = Node::start(&config, real_env(seed))
        .await
        .context("node failed to start")?;
    let addr = node.serve(&config).await.context("node failed to listen")?;
    println!("sluice node {} listening on {addr}", config.node.id);
    let stats = spawn_stats(
        node.service().metrics().clone(),
        config.node.stats_interval_ms,
    );
    let outcome = tokio::select! {
        biased;
        _ = shutdown_signal() => { info!("shutting down"); Ok(()) }
        () = node.failed() => { error!("the node supervisor stopped"); Err(anyhow::anyhow!("node failed")) }
    };
    if let Some(task) = stats {
        task.abort();
    }
    node.stop().await;
    outcome
}

fn spawn_stats(
    metrics: std::sync::Arc<sluice_node::metrics::Metrics>,
    interval_ms: u64,
) -> Option<tokio::task::JoinHandle<()>> {
    if interval_ms == 0 {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms));
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let line: Vec<String> = metrics
                .snapshot()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            info!(counters = %line.join(" "), "stats");
        }
    }))
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
