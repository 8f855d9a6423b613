//! [`TestEdge`]: an edge agent fixture for the integration tests. It writes an `edge.toml` for a
//! [`TestNode`] (certificates issued by the node's CA, the node's address, a data dir in its own
//! temp dir) around the `[[sources]]` and overrides a test gives, and runs the agent either in
//! this process ([`Agent::start`] on the real environment and QUIC transport) or as a child
//! process (`sluice-edge run`, which a test can `kill -9`).
//!
//! Every wait has a deadline; a child process is killed by PID when its guard drops.

use crate::{clean_command, edge_bin, within, TestNode, CLUSTER, EVENTS, STEP};
use anyhow::{anyhow, bail, Context, Result};
use sluice_edge::agent::Agent;
use sluice_edge::config::{self, EdgeConfig};
use sluice_edge::metrics::Status;
use sluice_proto::net::QuicTransport;
use sluice_proto::os::real_env;
use sluice_proto::{Payload, StoredEvent};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

/// How an agent runs.
enum Running {
    Stopped,
    InProcess(Box<Agent>),
    Child(tokio::process::Child),
}

/// One edge agent with its own config and data dir.
pub struct TestEdge {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    config: EdgeConfig,
    identity: String,
    status_addr: SocketAddr,
    running: Running,
    n_starts: u64,
}

/// A `[spool]` table that syncs every 20 ms, so tests waiting for deliveries do not wait for the
/// default interval.
pub const FAST_SYNC: &str = "[spool]\nsync_interval_ms = 20\n";

/// A `[[sources]]` table of a simulated source (on stream `events` unless
/// [`SimSource::on_stream`] says otherwise), for a [`TestEdge`] body:
/// `devices` devices each read every `interval_ms`, forever unless [`SimSource::readings_max`]
/// says otherwise. It renders with `Display`.
#[derive(Clone, Debug)]
pub struct SimSource {
    name: String,
    stream: String,
    devices: u32,
    interval_ms: u64,
    lines: Vec<String>,
}

/// A simulated source `name`; see [`SimSource`].
pub fn sim_source(name: &str, devices: u32, interval_ms: u64) -> SimSource {
    SimSource {
        name: name.to_owned(),
        stream: EVENTS.to_owned(),
        devices,
        interval_ms,
        lines: Vec::new(),
    }
}

impl SimSource {
    /// Writes to `stream` instead of `events`.
    pub fn on_stream(mut self, stream: &str) -> Self {
        self.stream = stream.to_owned();
        self
    }

    /// Stops each device after `n` readings.
    pub fn readings_max(self, n: u64) -> Self {
        self.with(&format!("readings_max = {n}"))
    }

    /// Every reading is taken (no dropouts), so counts are exact.
    pub fn no_dropouts(self) -> Self {
        self.with("dropout_probability = 0.0")
    }

    /// Temperatures only: one sensor per device.
    pub fn temperature_only(self) -> Self {
        self.with("quantities = [\"temperature\"]")
    }

    /// Any other key of the source, as a TOML line.
    pub fn with(mut self, line: &str) -> Self {
        self.lines.push(line.to_owned());
        self
    }
}

impl std::fmt::Display for SimSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "\n[[sources]]\ntype = \"sim\"")?;
        writeln!(f, "name = {}", serde_json::json!(self.name))?;
        writeln!(f, "stream = {}", serde_json::json!(self.stream))?;
        writeln!(f, "devices = {}", self.devices)?;
        writeln!(f, "interval_ms = {}", self.interval_ms)?;
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Quotes a path for TOML.
pub fn toml_path(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap_or_else(|_| "\"\"".into())
}

/// Builds a [`TestEdge`] whose config differs from [`TestEdge::create`]'s in its uplink: see
/// [`TestEdge::builder`].
pub struct EdgeBuilder<'a> {
    node: &'a TestNode,
    name: &'a str,
    nodes: Option<Vec<String>>,
    uplink: String,
}

impl EdgeBuilder<'_> {
    /// The uplink's node addresses, instead of the node's own.
    pub fn nodes(mut self, nodes: &[String]) -> Self {
        self.nodes = Some(nodes.to_vec());
        self
    }

    /// `key = value` lines added to the `[uplink]` table (which the body cannot reopen).
    pub fn uplink(mut self, lines: &str) -> Self {
        self.uplink = format!("{lines}\n");
        self
    }

    /// Writes the config, with `body` appended as in [`TestEdge::create`].
    pub fn create(self, body: &str) -> Result<TestEdge> {
        let stem = self.node.edge(self.name)?;
        TestEdge::build(
            self.node,
            self.name,
            &self.node.certs().files(&stem),
            self.nodes.as_deref(),
            &self.uplink,
            body,
        )
    }
}

impl TestEdge {
    /// Writes the config of agent `name` for `node` (its certificate issued by the node's CA
    /// unless `cert_stem` names another in the node's certs dir), with `body` appended (sources
    /// and any `[spool]`/`[uplink]` overrides written as dotted keys or tables).
    pub fn create(node: &TestNode, name: &str, body: &str) -> Result<TestEdge> {
        let stem = node.edge(name)?;
        Self::create_with(node, name, &stem, body)
    }

    /// Like [`TestEdge::create`] with the uplink certificate `cert_stem` from the node's certs
    /// directory.
    pub fn create_with(
        node: &TestNode,
        name: &str,
        cert_stem: &str,
        body: &str,
    ) -> Result<TestEdge> {
        Self::create_from(node, name, &node.certs().files(cert_stem), body)
    }

    /// A builder for agent `name` of `node`, for configs [`TestEdge::create`] cannot write: other
    /// node addresses, or `[uplink]` keys.
    pub fn builder<'a>(node: &'a TestNode, name: &'a str) -> EdgeBuilder<'a> {
        EdgeBuilder {
            node,
            name,
            nodes: None,
            uplink: String::new(),
        }
    }

    /// Like [`TestEdge::create`] with the uplink's `[ca_cert, cert, key]` files given.
    pub fn create_from(
        node: &TestNode,
        name: &str,
        material: &[PathBuf; 3],
        body: &str,
    ) -> Result<TestEdge> {
        Self::build(node, name, material, None, "", body)
    }

    fn build(
        node: &TestNode,
        name: &str,
        material: &[PathBuf; 3],
        nodes: Option<&[String]>,
        uplink: &str,
        body: &str,
    ) -> Result<TestEdge> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-edge-test-")
            .tempdir()
            .context("creating the edge's temp dir")?;
        let status_port = free_tcp_port()?;
        // A node not started yet has no address; its configured one is what it will use.
        let node_addr = match node.addr().port() {
            0 => node.config().transport.listen,
            _ => node.addr(),
        };
        let nodes = match nodes {
            Some(nodes) => serde_json::to_string(nodes)?,
            None => format!("[\"{node_addr}\"]"),
        };
        let text = format!(
            r#"
[edge]
data_dir = {data}
stats_interval_ms = 0

[uplink]
cluster = "{CLUSTER}"
nodes = {nodes}
ca_cert = {ca}
cert = {cert}
key = {key}
connect_timeout_ms = 2000
request_timeout_ms = 10000
backoff_initial_ms = 20
backoff_max_ms = 500
{uplink}
[status]
listen = "127.0.0.1:{status_port}"

{body}
"#,
            data = toml_path(&dir.path().join("data")),
            ca = toml_path(&material[0]),
            cert = toml_path(&material[1]),
            key = toml_path(&material[2]),
        );
        let config_path = dir.path().join("edge.toml");
        std::fs::write(&config_path, &text)?;
        let config =
            config::load(&config_path).map_err(|e| anyhow!("edge config:\n{text}\n{e}"))?;
        Ok(TestEdge {
            dir,
            config_path,
            config,
            identity: format!("sluice://{CLUSTER}/edge/{name}"),
            status_addr: SocketAddr::from(([127, 0, 0, 1], status_port)),
            running: Running::Stopped,
            n_starts: 0,
        })
    }

    /// The fixture's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config as loaded.
    pub fn config(&self) -> &EdgeConfig {
        &self.config
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Starts the agent in this process.
    pub async fn start(&mut self) -> Result<()> {
        if !matches!(self.running, Running::Stopped) {
            bail!("agent is already running");
        }
        self.n_starts += 1;
        let u = &self.config.uplink;
        let material = sluice_proto::net::TlsMaterial::load(&u.ca_cert, &u.cert, &u.key)?;
        // The same settings as `sluice-edge run` builds from the config.
        let transport = Arc::new(QuicTransport::new(u.client_settings(material)));
        let agent = within(
            "agent start",
            STEP,
            Agent::start(
                &self.config,
                real_env(self.n_starts),
                transport,
                &self.identity,
            ),
        )
        .await??;
        self.running = Running::InProcess(Box::new(agent));
        Ok(())
    }

    /// Starts `sluice-edge run --config edge.toml` as a child process (log in `edge.log`) and
    /// waits until its status endpoint answers.
    pub async fn spawn(&mut self) -> Result<()> {
        if !matches!(self.running, Running::Stopped) {
            bail!("agent is already running");
        }
        self.n_starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("edge.log"))?;
        let mut command = clean_command(&edge_bin()?)?;
        command
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .env("SLUICE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let child = command.spawn().context("spawning sluice-edge run")?;
        self.running = Running::Child(child);
        let addr = self.status_addr;
        let ready = within("sluice-edge status endpoint", STEP, async move {
            loop {
                if tokio::task::spawn_blocking(move || sluice_edge::status::fetch(addr, 500))
                    .await?
                    .is_ok()
                {
                    return anyhow::Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if let Err(error) = ready.and_then(|r| r) {
            return Err(error.context(format!("edge log:\n{}", self.log())));
        }
        Ok(())
    }

    /// The process id of the child process, when the agent runs as one.
    pub fn pid(&self) -> Option<u32> {
        match &self.running {
            Running::Child(child) => child.id(),
            _ => None,
        }
    }

    /// The agent's status (in process: its metrics; child: `GET /status`).
    pub async fn status(&self) -> Result<Status> {
        match &self.running {
            Running::InProcess(agent) => Ok(agent.metrics().status()),
            Running::Child(_) => {
                let addr = self.status_addr;
                tokio::task::spawn_blocking(move || sluice_edge::status::fetch(addr, 2_000))
                    .await?
                    .map_err(|e| anyhow!(e))
            }
            Running::Stopped => bail!("agent is not running"),
        }
    }

    /// Polls the status until `done` holds, within `limit` (polling is the only way to observe
    /// a child process; the interval is short and the wait bounded).
    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&Status) -> bool,
    ) -> Result<Status> {
        let waited = within(what, limit, async {
            loop {
                if let Ok(status) = self.status().await {
                    if done(&status) {
                        return status;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        match waited {
            Ok(status) => Ok(status),
            Err(error) => {
                let last = self.status().await.ok();
                Err(error.context(format!("last status: {last:#?}\nedge log:\n{}", self.log())))
            }
        }
    }

    /// Stops the agent: cleanly in process, `SIGTERM` and wait for a child.
    pub async fn stop(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::Stopped => Ok(()),
            Running::InProcess(agent) => Ok(within("agent stop", STEP, agent.stop()).await??),
            Running::Child(mut child) => {
                if let Some(pid) = child.id() {
                    let pid = rustix::process::Pid::from_raw(pid as i32)
                        .ok_or_else(|| anyhow!("bad pid {pid}"))?;
                    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
                }
                let status = within("sluice-edge to exit", STEP, child.wait()).await??;
                if !status.success() {
                    bail!("sluice-edge exited with {status}; log:\n{}", self.log());
                }
                Ok(())
            }
        }
    }

    /// `kill -9` of the child process, waiting until it is gone.
    pub async fn kill(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::Child(mut child) => {
                child.start_kill()?;
                within("killed sluice-edge to exit", STEP, child.wait()).await??;
                Ok(())
            }
            other => {
                self.running = other;
                bail!("only a child-process agent can be killed")
            }
        }
    }

    /// The child's log (`edge.log`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("edge.log")).unwrap_or_default()
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the test binds it again right after).
pub fn free_tcp_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// What a stream holds for one sensor of one producer epoch: the seqs delivered as readings or
/// data, and the ranges declared dropped (with their reasons).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SensorHistory {
    /// Seqs of stored events that are not drop declarations, in offset order.
    pub delivered: Vec<u64>,
    /// Declared ranges `(seq, seq_last, reason)`, in offset order.
    pub dropped: Vec<(u64, u64, String)>,
}

impl SensorHistory {
    /// Checks the no-silent-gaps rule: delivered seqs and declared ranges tile `0..end` exactly
    /// (no hole, no overlap, no seq twice), in seq order; returns `end`.
    pub fn check_tiles(&self, what: &str) -> Result<u64> {
        let mut pieces: Vec<(u64, u64)> = self.delivered.iter().map(|s| (*s, *s)).collect();
        pieces.extend(self.dropped.iter().map(|(a, b, _)| (*a, *b)));
        pieces.sort_unstable();
        let mut next = 0u64;
        for (first, last) in pieces {
            if first != next {
                bail!("{what}: expected seq {next}, found {first}..={last}: {self:?}");
            }
            next = last + 1;
        }
        Ok(next)
    }
}

/// Groups the events of a stream (all partitions) by `(producer, sensor, epoch)`.
pub fn histories(
    partitions: &[Vec<StoredEvent>],
) -> BTreeMap<(String, String, u64), SensorHistory> {
    let mut out: BTreeMap<(String, String, u64), SensorHistory> = BTreeMap::new();
    for events in partitions {
        for stored in events {
            let e = &stored.event;
            let key = (e.producer.to_string(), e.sensor.to_string(), e.boot_epoch.0);
            let history = out.entry(key).or_default();
            match &e.payload {
                Payload::Dropped { seq_last, reason } => {
                    history
                        .dropped
                        .push((e.seq, *seq_last, format!("{reason:?}")))
                }
                _ => history.delivered.push(e.seq),
            }
        }
    }
    out
}

/// Runs `sluice-edge <args>` (environment `SLUICE_*` cleared) within `limit`.
pub async fn run_edge_cli(args: &[&str], limit: Duration) -> Result<crate::CliOutput> {
    let mut command = clean_command(&edge_bin()?)?;
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = within(
        &format!("sluice-edge {}", args.join(" ")),
        limit,
        command.output(),
    )
    .await??;
    Ok(crate::CliOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
