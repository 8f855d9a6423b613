//! Shared helpers of the integration tests (`tests/tests/tNN_*.rs`) and of the benchmark
//! binaries (`src/bin/bench.rs`, `src/bin/edge_bench.rs`; their measuring helpers are in
//! [`measure`]).
//!
//! [`TestNode`] is a single-node fixture (no cluster): a temp dir holding a fresh cluster CA and
//! node, admin and edge certificates made with `sluice_node::certs` and written to files the way
//! `sluice certs` writes them, a generated config (streams, ACL) written to `node.toml`, and the
//! node itself, run either in this process (`Node::start` + `Node::serve`, [`Mode::InProcess`]) or
//! as a child process of the `sluice` binary (`sluice run --config node.toml`, [`Mode::Child`]).
//!
//! The `sluice` binary belongs to package `sluice-node`, and Cargo builds (and names in
//! `CARGO_BIN_EXE_*`) only the binaries of the package under test. [`sluice_bin`] therefore looks
//! for it next to the running executable, in `target/<profile>/sluice` (tests run from
//! `target/<profile>/deps/`), and runs `cargo build -p sluice-node --bin sluice` for that profile
//! and target dir, once per process, when the binary is missing or older than a source file of
//! `node`, `proto`, `cluster` or `edge` (the demo runs edge agents). `SLUICE_BIN=/path/to/sluice`
//! skips both and uses that binary; `SLUICE_EDGE_BIN` does the same for [`edge_bin`].
//!
//! Every wait here has a deadline; child processes are killed by PID when their guard drops, so a
//! failing test never leaves a node behind.

pub mod edge;
pub mod measure;
pub mod mosquitto;

use anyhow::{anyhow, bail, Context, Result};
use sluice_node::certs::{self, CaBundle, Sans};
use sluice_node::config::{self, NodeConfig};
use sluice_node::env::{real_env, RealClock};
use sluice_node::Node;
use sluice_proto::env::{Clock, Env};
use sluice_proto::msg::{FetchFrom, FetchRequest, RecordOutcome};
use sluice_proto::net::{Client, ClientSettings, TlsMaterial};
use sluice_proto::{
    BootEpoch, Offset, PartitionId, Payload, Record, Role, SensorId, StoredEvent, StreamName,
    UnixMillis,
};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The cluster name of every test node.
pub const CLUSTER: &str = "itest";
/// The node id of every test node.
pub const NODE_ID: u64 = 1;
/// Stem of the admin certificate every test node gets (`admin-ops.pem`, `admin-ops.key`).
pub const ADMIN: &str = "admin-ops";
/// A stream of 4 partitions; edges may produce to it, admins may do anything.
pub const EVENTS: &str = "events";
/// A stream of 1 partition; edges may produce to it.
pub const SINGLE: &str = "single";
/// A stream of 1 partition that only admins may use.
pub const PRIVATE: &str = "private";
/// The default deadline of one step (connect, a request, a node start).
pub const STEP: Duration = Duration::from_secs(30);

/// Bytes of a segment file header (the shared layer, `proto::segment`).
pub const SEGMENT_HEADER_LEN: u64 = sluice_proto::segment::SEGMENT_HEADER_LEN;
/// Bytes of an entry header (the shared layer, `proto::segment`).
pub const ENTRY_HEADER_LEN: u64 = sluice_proto::segment::ENTRY_HEADER_LEN;

/// Runs `future`, failing with an error naming `what` if it takes longer than `limit`.
pub async fn within<F: Future>(what: &str, limit: Duration, future: F) -> Result<F::Output> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| anyhow!("{what}: no result within {limit:?}"))
}

/// The wall clock, read through the node's real environment.
pub fn wall_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(RealClock.wall().0).unwrap_or(0))
}

/// A free UDP port on 127.0.0.1: bound, read and released. Another process could take it before
/// it is used; on loopback in a test run that is unlikely.
pub fn free_udp_port() -> Result<u16> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").context("binding a probe socket")?;
    Ok(socket.local_addr()?.port())
}

/// When a test certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// From five minutes ago to 30 days from now.
    Now,
    /// Ended yesterday.
    Expired,
    /// Starts tomorrow.
    NotYetValid,
}

impl Validity {
    /// The `(not_before, not_after)` window.
    pub fn window(self) -> (SystemTime, SystemTime) {
        let now = wall_now();
        let day = Duration::from_secs(86_400);
        match self {
            Validity::Now => (now - Duration::from_secs(300), now + 30 * day),
            Validity::Expired => (now - 30 * day, now - day),
            Validity::NotYetValid => (now + day, now + 30 * day),
        }
    }
}

/// The certificate file stem of a role and name, as `sluice certs` names files.
pub fn stem(role: Role, name: &str) -> String {
    format!("{}-{name}", role.as_str())
}

/// Writes `contents` to `path` with `mode`, replacing what was there.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// A cluster CA and the certificates it issued, as files in one directory laid out the way
/// `sluice certs` writes them: `ca.pem`, `ca.key` (0600), and `<stem>.pem` with `<stem>.key`
/// (0600) per certificate, the stem being `<role>-<name>`. Every test that needs certificate
/// files, the node's own or another cluster's, makes them here.
pub struct CertDir {
    path: PathBuf,
    ca: CaBundle,
    _temp: Option<tempfile::TempDir>,
}

impl CertDir {
    /// A new CA of `cluster`, valid now, written into `dir` (created when missing).
    pub fn create_in(dir: &Path, cluster: &str) -> Result<CertDir> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (from, until) = Validity::Now.window();
        let ca = certs::generate_ca_valid(cluster, from, until)?;
        write_file(&dir.join(certs::CA_KEY_FILE), &ca.key_pem(), 0o600)?;
        write_file(&dir.join(certs::CA_CERT_FILE), ca.cert_pem(), 0o644)?;
        Ok(CertDir {
            path: dir.to_path_buf(),
            ca,
            _temp: None,
        })
    }

    /// A new CA of `cluster` in a temp dir removed when this drops: another cluster's CA, or a
    /// look-alike of a test node's when `cluster` is [`CLUSTER`].
    pub fn temp(cluster: &str) -> Result<CertDir> {
        let temp = tempfile::Builder::new()
            .prefix("sluice-certs-")
            .tempdir()
            .context("creating a temp dir for certificates")?;
        let mut dir = Self::create_in(temp.path(), cluster)?;
        dir._temp = Some(temp);
        Ok(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The CA.
    pub fn ca(&self) -> &CaBundle {
        &self.ca
    }

    /// The CA certificate file.
    pub fn ca_cert(&self) -> PathBuf {
        self.path.join(certs::CA_CERT_FILE)
    }

    /// The certificate file of `stem`.
    pub fn cert(&self, stem: &str) -> PathBuf {
        self.path.join(format!("{stem}.pem"))
    }

    /// The key file of `stem`.
    pub fn key(&self, stem: &str) -> PathBuf {
        self.path.join(format!("{stem}.key"))
    }

    /// `[ca_cert, cert, key]` of `stem`, as an agent's uplink names them.
    pub fn files(&self, stem: &str) -> [PathBuf; 3] {
        [self.ca_cert(), self.cert(stem), self.key(stem)]
    }

    /// Issues a certificate for `role`/`name` (loopback SANs for a node), overwriting an earlier
    /// one; returns its stem.
    pub fn issue(&self, role: Role, name: &str, validity: Validity) -> Result<String> {
        let sans = if role == Role::Node {
            Sans::loopback()
        } else {
            Sans::default()
        };
        let (not_before, not_after) = validity.window();
        let issued = certs::issue(&self.ca, role, name, &sans, not_before, not_after)?;
        let stem = stem(role, name);
        write_file(&self.key(&stem), &issued.key_pem, 0o600)?;
        write_file(&self.cert(&stem), &issued.cert_pem, 0o644)?;
        Ok(stem)
    }

    /// The TLS material of certificate `stem`, trusting this CA.
    pub fn material(&self, stem: &str) -> Result<TlsMaterial> {
        self.material_trusting(stem, self)
    }

    /// The TLS material of certificate `stem`, trusting the CA of `trusted`: a client of
    /// another cluster that knows where it connects.
    pub fn material_trusting(&self, stem: &str, trusted: &CertDir) -> Result<TlsMaterial> {
        Ok(TlsMaterial::load(
            &trusted.ca_cert(),
            &self.cert(stem),
            &self.key(stem),
        )?)
    }
}

/// Where a [`TestNode`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `Node::start` + `Node::serve` on the caller's tokio runtime.
    InProcess,
    /// `sluice run --config` as a child process, on a fixed port picked at creation.
    Child,
}

type Configure = Box<dyn FnOnce(&mut NodeConfig) + Send>;

/// Builds a [`TestNode`].
pub struct TestNodeBuilder {
    mode: Mode,
    parent_dir: Option<PathBuf>,
    env: Option<Env>,
    configure: Option<Configure>,
}

impl TestNodeBuilder {
    /// Runs the node as a child process of the `sluice` binary.
    pub fn child_process(mut self) -> Self {
        self.mode = Mode::Child;
        self
    }

    /// Creates the node's temp dir inside `dir` instead of the system temp dir.
    pub fn parent_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.parent_dir = Some(dir.into());
        self
    }

    /// Runs an in-process node on `env` instead of `real_env`.
    pub fn env(mut self, env: Env) -> Self {
        self.env = Some(env);
        self
    }

    /// Changes the generated config (paths, streams, ACL are set already) before the start.
    pub fn configure(mut self, configure: impl FnOnce(&mut NodeConfig) + Send + 'static) -> Self {
        self.configure = Some(Box::new(configure));
        self
    }

    /// Creates the directory, certificates and config, and starts the node.
    pub async fn start(self) -> Result<TestNode> {
        let mut node = self.create()?;
        node.start().await?;
        Ok(node)
    }

    /// Creates the directory, certificates and config (written to `node.toml`) without starting
    /// the node; [`TestNode::start`] starts it.
    pub fn create(self) -> Result<TestNode> {
        let dir = match &self.parent_dir {
            Some(parent) => tempfile::Builder::new()
                .prefix("sluice-test-")
                .tempdir_in(parent),
            None => tempfile::Builder::new().prefix("sluice-test-").tempdir(),
        }
        .context("creating the node's temp dir")?;
        let certs = CertDir::create_in(&dir.path().join("certs"), CLUSTER)?;
        certs.issue(Role::Node, &NODE_ID.to_string(), Validity::Now)?;
        certs.issue(Role::Admin, "ops", Validity::Now)?;
        let mut config = default_config(dir.path(), &certs)?;
        if self.mode == Mode::Child {
            config.transport.listen = SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
        }
        if let Some(configure) = self.configure {
            configure(&mut config);
        }
        let config_path = dir.path().join("node.toml");
        write_file(&config_path, &to_toml(&config)?, 0o644)?;
        Ok(TestNode {
            dir,
            certs,
            config,
            config_path,
            mode: self.mode,
            env: self.env,
            running: Running::Stopped,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            n_starts: 0,
        })
    }
}

enum Running {
    Stopped,
    InProcess(Node),
    Child(Box<NodeProcess>),
}

/// One node with its own CA, certificates, config and data dir, all in a temp dir that is removed
/// when the fixture drops.
pub struct TestNode {
    dir: tempfile::TempDir,
    certs: CertDir,
    config: NodeConfig,
    config_path: PathBuf,
    mode: Mode,
    env: Option<Env>,
    running: Running,
    addr: SocketAddr,
    n_starts: u64,
}

impl TestNode {
    /// A builder: in-process on `real_env`, in the system temp dir, default config.
    pub fn builder() -> TestNodeBuilder {
        TestNodeBuilder {
            mode: Mode::InProcess,
            parent_dir: None,
            env: None,
            configure: None,
        }
    }

    /// An in-process node with the default config.
    pub async fn in_process() -> Result<TestNode> {
        Self::builder().start().await
    }

    /// The fixture's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the CA and the certificates are.
    pub fn certs_dir(&self) -> PathBuf {
        self.certs.path().to_path_buf()
    }

    /// The CA and the certificates it issued.
    pub fn certs(&self) -> &CertDir {
        &self.certs
    }

    /// The node's config as started.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The config file (`node.toml`), written for every mode.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Changes the config and rewrites `node.toml`; takes effect at the next start.
    pub fn reconfigure(&mut self, configure: impl FnOnce(&mut NodeConfig)) -> Result<()> {
        configure(&mut self.config);
        write_file(&self.config_path, &to_toml(&self.config)?, 0o644)
    }

    /// The cluster CA.
    pub fn ca(&self) -> &CaBundle {
        self.certs.ca()
    }

    /// The address the node listens on (it changes on restart for in-process nodes).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The in-process node, if it runs in this process.
    pub fn node(&self) -> Option<&Node> {
        match &self.running {
            Running::InProcess(node) => Some(node),
            _ => None,
        }
    }

    /// A counter of the in-process node, by name (`acl_denied_requests_total`, …).
    pub fn counter(&self, name: &str) -> Result<u64> {
        let node = self
            .node()
            .ok_or_else(|| anyhow!("counters are only readable from an in-process node"))?;
        node.service()
            .metrics()
            .snapshot()
            .into_iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
            .ok_or_else(|| anyhow!("no counter named {name}"))
    }

    /// The directory of a partition's segment files.
    pub fn partition_dir(&self, stream: &str, partition: u32) -> PathBuf {
        self.config
            .node
            .data_dir
            .join("streams")
            .join(stream)
            .join(partition.to_string())
    }

    /// Issues a certificate for `role`/`name` (overwriting an earlier one); returns its stem.
    pub fn issue(&self, role: Role, name: &str, validity: Validity) -> Result<String> {
        self.certs.issue(role, name, validity)
    }

    /// Issues a valid edge certificate unless it exists; returns its stem.
    pub fn edge(&self, name: &str) -> Result<String> {
        let stem = stem(Role::Edge, name);
        if self.certs.cert(&stem).exists() {
            return Ok(stem);
        }
        self.issue(Role::Edge, name, Validity::Now)
    }

    /// The TLS material of certificate `stem`.
    pub fn material(&self, stem: &str) -> Result<TlsMaterial> {
        self.certs.material(stem)
    }

    /// Client settings for `material` against this node, with test deadlines.
    pub fn settings_for(&self, material: TlsMaterial) -> ClientSettings {
        let mut settings = ClientSettings::new(material, CLUSTER, vec![self.addr.to_string()]);
        settings.connect_timeout_ms = 10_000;
        settings.request_timeout_ms = 20_000;
        settings
    }

    /// Client settings for certificate `stem`.
    pub fn settings(&self, stem: &str) -> Result<ClientSettings> {
        Ok(self.settings_for(self.material(stem)?))
    }

    /// A connected client using certificate `stem`.
    pub async fn client(&self, stem: &str) -> Result<Client> {
        let settings = self.settings(stem)?;
        Ok(within("connect", STEP, Client::connect(&settings)).await??)
    }

    /// A connected admin client.
    pub async fn admin(&self) -> Result<Client> {
        self.client(ADMIN).await
    }

    /// A connected client of edge `name` (its certificate is issued if needed).
    pub async fn edge_client(&self, name: &str) -> Result<Client> {
        let stem = self.edge(name)?;
        self.client(&stem).await
    }

    /// Starts the node (again) on the same data dir; returns its address.
    pub async fn start(&mut self) -> Result<SocketAddr> {
        if !matches!(self.running, Running::Stopped) {
            bail!("node is already running");
        }
        self.n_starts += 1;
        match self.mode {
            Mode::InProcess => {
                let env = match &self.env {
                    Some(env) => env.clone(),
                    None => real_env(self.n_starts),
                };
                let config = self.config.clone();
                let (node, addr) = within("in-process node start", STEP, async move {
                    let mut node = Node::start(&config, env).await?;
                    let addr = node.serve(&config).await?;
                    anyhow::Ok((node, addr))
                })
                .await??;
                self.running = Running::InProcess(node);
                self.addr = addr;
            }
            Mode::Child => {
                let log = self.dir.path().join("node.log");
                let (process, addr) = NodeProcess::spawn(&self.config_path, &log).await?;
                self.running = Running::Child(Box::new(process));
                self.addr = addr;
            }
        }
        Ok(self.addr)
    }

    /// Stops the node: gracefully in process, with SIGKILL for a child (see [`Self::kill`]).
    pub async fn stop(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::Stopped => Ok(()),
            Running::InProcess(node) => within("node stop", STEP, node.stop()).await,
            Running::Child(mut process) => process.kill().await,
        }
    }

    /// `kill -9` of the child process, waiting until it is gone.
    pub async fn kill(&mut self) -> Result<()> {
        if self.mode != Mode::Child {
            bail!("only a child-process node can be killed");
        }
        self.stop().await
    }

    /// Stops and starts the node on the same data dir; returns its (maybe new) address.
    pub async fn restart(&mut self) -> Result<SocketAddr> {
        self.stop().await?;
        self.start().await
    }

    /// The node's log (child process only: its stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }
}

/// The config every test node starts from: three streams, edges may produce to `events` and
/// `single`, admins may do anything; 8 MiB segments; no periodic stats.
fn default_config(dir: &Path, certs: &CertDir) -> Result<NodeConfig> {
    let node_stem = stem(Role::Node, &NODE_ID.to_string());
    let quote = |path: PathBuf| serde_json::to_string(&path.display().to_string());
    let text = format!(
        r#"
[node]
id = {NODE_ID}
cluster = "{CLUSTER}"
data_dir = {data}
stats_interval_ms = 0

[transport]
listen = "127.0.0.1:0"
ca_cert = {ca}
cert = {cert}
key = {key}
handshake_timeout_ms = 5000

[storage]
segment_bytes_max = 8388608

[[streams]]
name = "{EVENTS}"
partitions = 4

[[streams]]
name = "{SINGLE}"
partitions = 1

[[streams]]
name = "{PRIVATE}"
partitions = 1

[[acl]]
identity = "sluice://{CLUSTER}/edge/*"
produce = ["{EVENTS}", "{SINGLE}"]

[[acl]]
identity = "sluice://{CLUSTER}/admin/*"
produce = ["*"]
consume = ["*"]
"#,
        data = quote(dir.join("data"))?,
        ca = quote(certs.ca_cert())?,
        cert = quote(certs.cert(&node_stem))?,
        key = quote(certs.key(&node_stem))?,
    );
    Ok(config::from_toml(&text)?)
}

/// Renders a config as TOML (through its serde form, so fields added later come along): plain
/// tables first, then arrays of tables. `None` fields are left out.
pub fn to_toml(config: &NodeConfig) -> Result<String> {
    let serde_json::Value::Object(top) = serde_json::to_value(config)? else {
        bail!("config does not serialize to a table");
    };
    let mut out = String::new();
    for (key, value) in &top {
        if let Some(text) = toml_value(value)? {
            out.push_str(&format!("{key} = {text}\n"));
        }
    }
    for (key, value) in &top {
        if let serde_json::Value::Object(table) = value {
            toml_table(&mut out, key, table)?;
        }
    }
    for (key, value) in &top {
        if let serde_json::Value::Array(items) = value {
            for item in items {
                if let serde_json::Value::Object(table) = item {
                    out.push_str(&format!("\n[[{key}]]\n"));
                    toml_entries(&mut out, table)?;
                }
            }
        }
    }
    Ok(out)
}

fn toml_table(
    out: &mut String,
    path: &str,
    table: &serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    out.push_str(&format!("\n[{path}]\n"));
    toml_entries(out, table)?;
    for (key, value) in table {
        if let serde_json::Value::Object(inner) = value {
            toml_table(out, &format!("{path}.{key}"), inner)?;
        }
    }
    Ok(())
}

fn toml_entries(
    out: &mut String,
    table: &serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    for (key, value) in table {
        if let Some(text) = toml_value(value)? {
            out.push_str(&format!("{key} = {text}\n"));
        }
    }
    Ok(())
}

/// A scalar or an array of scalars as TOML; `None` for tables, arrays of tables and nulls.
fn toml_value(value: &serde_json::Value) -> Result<Option<String>> {
    use serde_json::Value;
    Ok(match value {
        Value::Null | Value::Object(_) => None,
        // JSON string escapes are valid TOML basic-string escapes.
        Value::String(_) | Value::Bool(_) | Value::Number(_) => Some(value.to_string()),
        Value::Array(items) if items.iter().any(Value::is_object) => None,
        Value::Array(items) => {
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                parts.push(
                    toml_value(item)?
                        .ok_or_else(|| anyhow!("nested array or null in config: {value}"))?,
                );
            }
            Some(format!("[{}]", parts.join(", ")))
        }
    })
}

/// A running `sluice run` child process. Dropping it kills the process (SIGKILL by PID).
pub struct NodeProcess {
    child: tokio::process::Child,
    log: PathBuf,
}

impl NodeProcess {
    /// Starts `sluice run --config <config>` with stderr appended to `log`, and waits for the
    /// line announcing its address.
    pub async fn spawn(config: &Path, log: &Path) -> Result<(NodeProcess, SocketAddr)> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut command = sluice_command()?;
        command
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("SLUICE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = command.spawn().context("spawning sluice run")?;
        let stdout = child.stdout.take();
        let mut process = NodeProcess {
            child,
            log: log.to_path_buf(),
        };
        let Some(stdout) = stdout else {
            bail!("child stdout was not captured");
        };
        let mut lines = BufReader::new(stdout).lines();
        let ready = within("sluice run to listen", STEP, async {
            while let Some(line) = lines.next_line().await? {
                if let Some((_, addr)) = line.split_once("listening on ") {
                    return Ok(addr.trim().parse::<SocketAddr>()?);
                }
            }
            Err(anyhow!("sluice run exited before listening"))
        })
        .await
        .and_then(|result| result);
        match ready {
            Ok(addr) => {
                // Keep draining stdout so the child never blocks on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                Ok((process, addr))
            }
            Err(error) => {
                let _ = process.kill().await;
                let log = std::fs::read_to_string(&process.log).unwrap_or_default();
                Err(error.context(format!("node log:\n{log}")))
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGKILL and waits until the process is gone.
    pub async fn kill(&mut self) -> Result<()> {
        // Already exited is fine: `kill` after exit fails, `wait` still succeeds.
        let _ = self.child.start_kill();
        within("killed node to exit", STEP, self.child.wait()).await??;
        Ok(())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // SIGKILL by PID; tokio reaps the process later.
        let _ = self.child.start_kill();
    }
}

/// The `sluice` binary: `SLUICE_BIN`, or `target/<profile>/sluice` next to the running
/// executable, built first (once per process) when missing or older than the node sources.
pub fn sluice_bin() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        locate_or_build(
            "SLUICE_BIN",
            "sluice-node",
            "sluice",
            &["node", "proto", "cluster", "edge"],
        )
        .map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(|e| anyhow!("sluice binary: {e}"))
}

/// The `sluice-edge` binary: `SLUICE_EDGE_BIN`, or `target/<profile>/sluice-edge`, built the
/// same way as [`sluice_bin`] when missing or older than the edge sources.
pub fn edge_bin() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        locate_or_build(
            "SLUICE_EDGE_BIN",
            "sluice-edge",
            "sluice-edge",
            &["edge", "proto"],
        )
        .map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(|e| anyhow!("sluice-edge binary: {e}"))
}

fn locate_or_build(
    env_var: &str,
    package: &str,
    bin_name: &str,
    sources: &[&str],
) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut profile_dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent", exe.display()))?;
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir = profile_dir
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent", profile_dir.display()))?;
    }
    let bin = profile_dir.join(bin_name);
    if needs_build(&bin, sources)? {
        build_bin(profile_dir, package, bin_name)?;
    }
    if !bin.exists() {
        bail!("{} does not exist after building it", bin.display());
    }
    Ok(bin)
}

/// The workspace root (this package lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn needs_build(bin: &Path, sources: &[&str]) -> Result<bool> {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return Ok(true);
    };
    let root = workspace_root();
    let mut pending: Vec<PathBuf> = sources.iter().map(|c| root.join(c)).collect();
    pending.push(root.join("Cargo.lock"));
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)?.flatten() {
                let name = entry.file_name();
                if name != "target" && !name.to_string_lossy().starts_with('.') {
                    pending.push(entry.path());
                }
            }
        } else if meta.modified().is_ok_and(|m| m > built) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn build_bin(profile_dir: &Path, package: &str, bin_name: &str) -> Result<()> {
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent", profile_dir.display()))?;
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let mut command = std::process::Command::new(cargo);
    command
        .current_dir(workspace_root())
        .args(["build", "-p", package, "--bin", bin_name, "--target-dir"])
        .arg(target_dir);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(other) => {
            command.args(["--profile", other]);
        }
        None => bail!("cannot tell the profile of {}", profile_dir.display()),
    }
    let status = command
        .status()
        .with_context(|| format!("running {cargo} build -p {package} --bin {bin_name}"))?;
    if !status.success() {
        bail!("cargo build -p {package} --bin {bin_name} failed: {status}");
    }
    Ok(())
}

/// A `sluice` command with the `SLUICE_*` environment cleared (so the caller's shell cannot
/// change what a test runs), killed by PID if its handle drops before it exits.
pub fn sluice_command() -> Result<tokio::process::Command> {
    clean_command(&sluice_bin()?)
}

/// A command running `bin` with the `SLUICE_*` environment cleared, killed by PID if its handle
/// drops before it exits.
pub fn clean_command(bin: &Path) -> Result<tokio::process::Command> {
    let mut command = tokio::process::Command::new(bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SLUICE") {
            command.env_remove(key);
        }
    }
    command.kill_on_drop(true);
    Ok(command)
}

/// What a finished CLI run printed.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `sluice <args>` with `stdin`, within `limit`; the process is killed if the limit passes.
pub async fn run_cli(args: &[&str], stdin: &[u8], limit: Duration) -> Result<CliOutput> {
    run_cli_env(args, &[], stdin, limit).await
}

/// [`run_cli`] with extra environment variables.
pub async fn run_cli_env(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
    limit: Duration,
) -> Result<CliOutput> {
    let mut command = sluice_command()?;
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("spawning sluice")?;
    let mut input = child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("stdin not captured"))?;
    let stdin = stdin.to_vec();
    let run = async move {
        // Write stdin while the output is read, so neither side can fill a pipe and block.
        let writer = async move {
            let written = input.write_all(&stdin).await;
            drop(input);
            written
        };
        let (written, output) = tokio::join!(writer, child.wait_with_output());
        let output = output?;
        if let Err(error) = written {
            // A child that exits early closes its stdin; only report it if the run succeeded.
            if output.status.success() {
                return Err(anyhow::Error::from(error).context("writing stdin"));
            }
        }
        anyhow::Ok(output)
    };
    let output = within(&format!("sluice {}", args.join(" ")), limit, run).await??;
    Ok(CliOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// A stream name.
pub fn stream(name: &str) -> Result<StreamName> {
    Ok(StreamName::new(name)?)
}

/// A record of `sensor` in `epoch` at `seq` with `payload`.
pub fn record(sensor: &str, epoch: u64, seq: u64, payload: Payload) -> Result<Record> {
    Ok(Record {
        sensor: SensorId::new(sensor)?,
        boot_epoch: BootEpoch(epoch),
        seq,
        device_time: UnixMillis(1_700_000_000_000 + i64::try_from(seq).unwrap_or(0)),
        payload,
    })
}

/// Deterministic opaque bytes naming the sensor and seq, padded to `len` bytes (at least the
/// name), so a stored event can be checked against what was sent.
pub fn tagged_payload(sensor: &str, epoch: u64, seq: u64, len: usize) -> Payload {
    let mut bytes = format!("{sensor}/{epoch}/{seq};").into_bytes();
    let mut fill = seq.wrapping_mul(31).wrapping_add(7);
    while bytes.len() < len {
        fill = fill.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        bytes.push(b'a' + (fill >> 59) as u8);
    }
    Payload::Bytes(bytes)
}

/// Records `seqs` of `sensor` in `epoch`, each with a [`tagged_payload`] of `len` bytes.
pub fn tagged_records(
    sensor: &str,
    epoch: u64,
    seqs: std::ops::Range<u64>,
    len: usize,
) -> Result<Vec<Record>> {
    seqs.map(|seq| record(sensor, epoch, seq, tagged_payload(sensor, epoch, seq, len)))
        .collect()
}

/// Where an acknowledged record is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The partition.
    pub partition: PartitionId,
    /// The offset.
    pub offset: Offset,
    /// True when an earlier attempt had stored it.
    pub duplicate: bool,
}

/// Produces `records` and returns one [`Ack`] per record; any rejection is an error.
pub async fn produce_acked(
    client: &Client,
    stream: &str,
    records: Vec<Record>,
) -> Result<Vec<Ack>> {
    let n = records.len();
    let response = within(
        "produce",
        STEP,
        client.produce(self::stream(stream)?, records),
    )
    .await??;
    if response.outcomes.len() != n {
        bail!("{} outcomes for {n} records", response.outcomes.len());
    }
    response
        .outcomes
        .into_iter()
        .enumerate()
        .map(|(idx, outcome)| match outcome {
            RecordOutcome::Appended {
                partition,
                offset,
                duplicate,
                ..
            } => Ok(Ack {
                partition,
                offset,
                duplicate,
            }),
            RecordOutcome::Rejected(rejection) => {
                Err(anyhow!("record {idx} rejected: {rejection}"))
            }
        })
        .collect()
}

/// Reads a whole partition from its first offset until caught up with its high watermark.
pub async fn fetch_partition(
    client: &Client,
    stream: &str,
    partition: u32,
) -> Result<Vec<StoredEvent>> {
    let name = self::stream(stream)?;
    let mut out: Vec<StoredEvent> = Vec::new();
    let mut from = FetchFrom::Earliest;
    // Bounded: every round returns at least one event or ends the loop.
    for _ in 0..1_000_000 {
        let request = FetchRequest {
            request_id: 0,
            stream: name.clone(),
            partition: PartitionId(partition),
            from,
            events_max: 10_000,
            bytes_max: 4 << 20,
            wait_ms: 0,
        };
        let response = within("fetch", STEP, client.fetch(request)).await??;
        let n = response.events.len();
        out.extend(response.events);
        if response.next_offset >= response.high_watermark || n == 0 {
            return Ok(out);
        }
        from = FetchFrom::Offset(response.next_offset);
    }
    bail!("partition {stream}/{partition} did not end within a million fetches")
}

/// Reads every partition of `stream`; index `p` holds partition `p`.
pub async fn fetch_stream(client: &Client, stream: &str) -> Result<Vec<Vec<StoredEvent>>> {
    let metadata = within("metadata", STEP, client.metadata(self::stream(stream)?)).await??;
    let mut out = Vec::new();
    for partition in 0..metadata.n_partitions {
        out.push(fetch_partition(client, stream, partition).await?);
    }
    Ok(out)
}

/// The segment files of a partition directory, in offset order.
pub fn segment_files(partition_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(partition_dir)
        .with_context(|| format!("listing {}", partition_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    Ok(files)
}

/// The byte position where the data of a segment file ends: entries are walked from the header
/// by their body lengths until a zero length (the preallocated zeros). See `proto::segment`.
pub fn segment_data_end(bytes: &[u8]) -> Result<u64> {
    let mut pos = SEGMENT_HEADER_LEN;
    loop {
        let at = usize::try_from(pos)?;
        let Some(len) = bytes.get(at..at + 4) else {
            return Ok(pos);
        };
        let body_len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
        if body_len == 0 {
            return Ok(pos);
        }
        let next = pos + ENTRY_HEADER_LEN + u64::from(body_len);
        if next > bytes.len() as u64 {
            bail!("entry at {pos} runs past the end of the file");
        }
        pos = next;
    }
}
