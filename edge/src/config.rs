//! `EdgeConfig`: one typed struct for the agent, loaded once in `main` from `edge.toml` plus
//! `SLUICE_EDGE__` environment overrides (`SLUICE_EDGE__UPLINK__LINGER_MS=20`), validated as a
//! whole (every problem is reported, not just the first), then handed down in pieces. Defaults
//! live here and in each source's module; `deploy/edge.example.toml` documents every key.

pub use crate::source::{SourceSpec, SupervisionSection};
use crate::spool::SpoolConfig;
use figment::providers::{Env as EnvProvider, Format, Toml};
use figment::Figment;
use serde::Deserialize;
use sluice_proto::StreamName;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Where the agent keeps its spool, and its own limits.
    pub edge: EdgeSection,
    /// How readings reach the cluster.
    pub uplink: UplinkConfig,
    /// The durable queue between sources and the uplink.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// The status and metrics endpoint.
    #[serde(default)]
    pub status: StatusSection,
    /// How failed sources are restarted.
    #[serde(default)]
    pub supervision: SupervisionSection,
    /// Where readings come from.
    #[serde(default)]
    pub sources: Vec<SourceSpec>,
}

/// `[edge]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSection {
    /// Where the spools live (one directory per destination stream under `spool/`).
    pub data_dir: PathBuf,
    /// How often the agent logs its counters, ms (0 turns it off).
    #[serde(default = "default_stats_interval_ms")]
    pub stats_interval_ms: u64,
    /// Readings waiting between the sources and the spool; sources wait when it is full.
    #[serde(default = "default_sink_queue_max")]
    pub sink_queue_max: u32,
}

/// `[uplink]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// The cluster name; the nodes' certificates must belong to it.
    pub cluster: String,
    /// Node addresses (`host:port`), tried in rotation.
    pub nodes: Vec<String>,
    /// The cluster CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// This agent's certificate (PEM), `sluice://<cluster>/edge/<name>`.
    pub cert: PathBuf,
    /// This agent's private key (PEM). Never logged.
    pub key: PathBuf,
    /// The name node certificates must match; default: the host part of each address.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Records per produce request.
    #[serde(default = "default_batch_records_max")]
    pub batch_records_max: u32,
    /// Bytes of records per produce request (at least one record is always sent).
    #[serde(default = "default_batch_bytes_max")]
    pub batch_bytes_max: u64,
    /// How long a partly filled batch waits for more records before it is sent, ms.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Produce requests in flight at once.
    #[serde(default = "default_batches_in_flight_max")]
    pub batches_in_flight_max: u32,
    /// Deadline of one connection attempt per node, ms.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Deadline of one produce request, ms.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// A silent connection is closed after this long, ms.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// First wait after a failure, ms; doubled per consecutive failure, with jitter.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Longest wait after failures, ms.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Largest frame sent or accepted, bytes.
    #[serde(default = "default_frame_bytes_max")]
    pub frame_bytes_max: u32,
}

/// `[status]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSection {
    /// Where `/status` (JSON) and `/metrics` (Prometheus) are served; `"off"` turns it off.
    /// Keep it on loopback unless a firewall protects it.
    #[serde(default = "default_status_listen", deserialize_with = "listen_or_off")]
    pub listen: Option<SocketAddr>,
}

impl Default for StatusSection {
    fn default() -> Self {
        Self {
            listen: default_status_listen(),
        }
    }
}

/// The configuration of one stream's spool when `n_streams` spools share the `[spool]` budget.
pub fn spool_share(config: &EdgeConfig, n_streams: usize) -> SpoolConfig {
    SpoolConfig {
        spool_bytes_max: config.spool.spool_bytes_max / n_streams.max(1) as u64,
        ..config.spool
    }
}

fn default_stats_interval_ms() -> u64 {
    60_000
}
fn default_sink_queue_max() -> u32 {
    1024
}
fn default_batch_records_max() -> u32 {
    500
}
fn default_batch_bytes_max() -> u64 {
    256 << 10
}
fn default_linger_ms() -> u64 {
    20
}
fn default_batches_in_flight_max() -> u32 {
    4
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_request_timeout_ms() -> u64 {
    15_000
}
fn default_idle_timeout_ms() -> u64 {
    30_000
}
fn default_backoff_initial_ms() -> u64 {
    200
}
fn default_backoff_max_ms() -> u64 {
    30_000
}
fn default_frame_bytes_max() -> u32 {
    4 << 20
}
/// `"off"` (or an empty string) is `None`; anything else must be a socket address.
fn listen_or_off<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    match text.trim() {
        "" | "off" => Ok(None),
        addr => addr
            .parse()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("status.listen {addr:?}: {e}"))),
    }
}

fn default_status_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 7401)))
}

/// The configuration could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed, or a key has the wrong type or is unknown.
    #[error("{0}")]
    Load(String),
    /// The values are invalid; every problem is listed.
    #[error("invalid configuration:\n  - {}", problems.join("\n  - "))]
    Invalid {
        /// Every problem found.
        problems: Vec<String>,
    },
}

/// Room a spooled record needs beyond its payload (sensor id, seqs, times, framing).
const RECORD_OVERHEAD_BYTES: u64 = 1024;

/// The environment prefix of overrides: `SLUICE_EDGE__SPOOL__SYNC_INTERVAL_MS=200`.
pub const ENV_PREFIX: &str = "SLUICE_EDGE__";

/// Loads `path`, applies environment overrides, and validates.
pub fn load(path: &Path) -> Result<EdgeConfig, ConfigError> {
    if !path.exists() {
        return Err(ConfigError::Load(format!(
            "config file {} does not exist (start from deploy/edge.example.toml)",
            path.display()
        )));
    }
    let config: EdgeConfig = Figment::new()
        .merge(Toml::file(path))
        .merge(EnvProvider::prefixed(ENV_PREFIX).split("__"))
        .extract()
        .map_err(|e| ConfigError::Load(format!("{}: {e}", path.display())))?;
    config.validate()?;
    Ok(config)
}

/// Parses and validates a configuration from TOML text (no environment overrides).
pub fn from_toml(text: &str) -> Result<EdgeConfig, ConfigError> {
    let config: EdgeConfig = Figment::new()
        .merge(Toml::string(text))
        .extract()
        .map_err(|e| ConfigError::Load(e.to_string()))?;
    config.validate()?;
    Ok(config)
}

impl UplinkConfig {
    /// The QUIC client settings this section describes, with `material` (the agent's
    /// certificate, key and the cluster CA).
    pub fn client_settings(
        &self,
        material: sluice_proto::net::TlsMaterial,
    ) -> sluice_proto::net::ClientSettings {
        let mut settings = sluice_proto::net::ClientSettings::new(
            material,
            self.cluster.clone(),
            self.nodes.clone(),
        );
        settings.server_name = self.server_name.clone();
        settings.connect_timeout_ms = self.connect_timeout_ms;
        settings.request_timeout_ms = self.request_timeout_ms;
        settings.idle_timeout_ms = self.idle_timeout_ms;
        settings.in_flight_max = self.batches_in_flight_max;
        settings.frame_bytes_max = self.frame_bytes_max;
        settings
    }
}

impl EdgeConfig {
    /// Every destination stream of every source, sorted.
    pub fn streams(&self) -> Vec<StreamName> {
        let set: BTreeSet<StreamName> = self.sources.iter().flat_map(|s| s.streams()).collect();
        set.into_iter().collect()
    }

    /// Checks the whole configuration; returns every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let u = &self.uplink;
        if u.nodes.is_empty() {
            problems.push("uplink.nodes must list at least one node address".to_owned());
        }
        if u.cluster.is_empty() {
            problems.push("uplink.cluster must not be empty".to_owned());
        }
        for (name, value) in [
            ("batch_records_max", u64::from(u.batch_records_max)),
            ("batch_bytes_max", u.batch_bytes_max),
            ("batches_in_flight_max", u64::from(u.batches_in_flight_max)),
            ("connect_timeout_ms", u.connect_timeout_ms),
            ("request_timeout_ms", u.request_timeout_ms),
            ("idle_timeout_ms", u.idle_timeout_ms),
            ("backoff_initial_ms", u.backoff_initial_ms),
        ] {
            if value == 0 {
                problems.push(format!("uplink.{name} must be positive"));
            }
        }
        if u.backoff_max_ms < u.backoff_initial_ms {
            problems.push("uplink.backoff_max_ms must be at least backoff_initial_ms".to_owned());
        }
        // A batch always holds at least one record, so one as large as the spool accepts must
        // fit a frame too, with room for the request around it.
        let record_bytes_max = u64::from(self.spool.record_bytes_max);
        if u.batch_bytes_max.max(record_bytes_max) + 64 * 1024 > u64::from(u.frame_bytes_max) {
            problems.push(format!(
                "uplink.batch_bytes_max ({}) and spool.record_bytes_max ({record_bytes_max}, a \
                 batch holds at least one record) must leave 64 KiB of uplink.frame_bytes_max ({})",
                u.batch_bytes_max, u.frame_bytes_max
            ));
        }
        if self.edge.sink_queue_max == 0 {
            problems.push("edge.sink_queue_max must be positive".to_owned());
        }
        let s = &self.supervision;
        if s.restart_backoff_initial_ms == 0
            || s.restart_backoff_max_ms < s.restart_backoff_initial_ms
        {
            problems.push(
                "supervision: restart_backoff_initial_ms must be positive and at most restart_backoff_max_ms"
                    .to_owned(),
            );
        }
        self.validate_spool(&mut problems);
        self.validate_sources(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }

    fn validate_spool(&self, problems: &mut Vec<String>) {
        if let Err(found) = self.spool.validate() {
            problems.extend(found);
        }
        let n_streams = self.streams().len().max(1) as u64;
        let share = self.spool_share();
        if n_streams > 1 && share.validate().is_err() {
            problems.push(format!(
                "spool.spool_bytes_max ({}) split over {n_streams} streams leaves {} bytes each, \
                 less than 3 segments of {}",
                self.spool.spool_bytes_max, share.spool_bytes_max, self.spool.segment_bytes_max
            ));
        }
    }

    fn validate_sources(&self, problems: &mut Vec<String>) {
        if self.sources.is_empty() {
            problems.push("no [[sources]] configured: the agent would have nothing to send".into());
        }
        let mut names = BTreeSet::new();
        for source in &self.sources {
            if source.name().is_empty() {
                problems.push("a source has an empty name".to_owned());
            } else if !names.insert(source.name()) {
                problems.push(format!("two sources are named {:?}", source.name()));
            }
            source.validate(problems);
            if let SourceSpec::Jsonl(jsonl) = source {
                // A line becomes one record: the spool must be able to hold the longest one.
                let needed = u64::from(jsonl.line_bytes_max) + RECORD_OVERHEAD_BYTES;
                if needed > u64::from(self.spool.record_bytes_max) {
                    problems.push(format!(
                        "sources.{}.line_bytes_max ({}) needs spool.record_bytes_max of at least {needed}, it is {}",
                        jsonl.name, jsonl.line_bytes_max, self.spool.record_bytes_max
                    ));
                }
            }
        }
    }

    /// The spool configuration of one stream's spool: the budget split evenly over the
    /// configured destination streams (the agent also counts spools of streams no longer
    /// configured; see [`spool_share`]).
    pub fn spool_share(&self) -> SpoolConfig {
        spool_share(self, self.streams().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::FullPolicy;
    use sluice_proto::testing::{toml_string, BAD_STREAM_NAMES};

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/edge.example.toml")
    }

    #[test]
    fn config_problems_reach_the_agent_config() {
        // Checks the edge config's validation includes the DHT table's problems under its name.
        let text = r#"
            [edge]
            data_dir = "/tmp/sluice-edge"
            [uplink]
            cluster = "test"
            nodes = ["127.0.0.1:7400"]
            ca_cert = "ca.pem"
            cert = "edge.pem"
            key = "edge.key"
            [[sources]]
            type = "dht"
            name = "fridge"
            stream = "sensors"
            sensor = "fridge-1"
            model = "dht22"
            pin = 99
            interval_ms = 100
        "#;
        let Err(ConfigError::Invalid { problems }) = from_toml(text) else {
            panic!("expected an invalid configuration");
        };
        assert!(problems
            .iter()
            .any(|p| p.starts_with("sources.fridge.interval_ms")));
        assert!(problems.iter().any(|p| p.starts_with("sources.fridge.pin")));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn the_committed_example_loads_with_every_source_kind() {
        // Checks that deploy/edge.example.toml parses and validates, and that its values are
        // the documented defaults where it says so. Inside a Jail: environment overrides set by
        // another test must not leak in (Jails take turns).
        figment::Jail::expect_with(|_| {
            check_example();
            Ok(())
        });
    }

    fn check_example() {
        let config = load(&example_path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.sources.len(), 3);
        assert!(matches!(config.sources[0], SourceSpec::Dht(_)));
        assert!(matches!(config.sources[1], SourceSpec::Mqtt(_)));
        assert!(matches!(config.sources[2], SourceSpec::Jsonl(_)));
        let streams: Vec<String> = config.streams().iter().map(|s| s.to_string()).collect();
        assert_eq!(streams, ["security", "sensors"]);
        let defaults = SpoolConfig::default();
        assert_eq!(config.spool, defaults);
        assert_eq!(config.uplink.linger_ms, default_linger_ms());
        assert_eq!(config.status.listen, default_status_listen());
        assert_eq!(
            config.spool_share().spool_bytes_max,
            defaults.spool_bytes_max / 2
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn environment_overrides_win_over_the_file() {
        // Checks the SLUICE_EDGE__ overrides, as the example's header documents them.
        figment::Jail::expect_with(|jail| {
            jail.set_env("SLUICE_EDGE__SPOOL__SYNC_INTERVAL_MS", "250");
            jail.set_env("SLUICE_EDGE__SPOOL__POLICY", "block");
            jail.set_env("SLUICE_EDGE__STATUS__LISTEN", "off");
            let config = load(&example_path()).map_err(|e| e.to_string())?;
            assert_eq!(config.spool.sync_interval_ms, 250);
            assert_eq!(config.spool.policy, FullPolicy::Block);
            assert_eq!(config.status.listen, None);
            Ok(())
        });
    }

    #[test]
    fn invalid_config_lists_every_problem() {
        // Checks that independent problems across sections are all reported at once.
        let text = r#"
[edge]
data_dir = "/tmp/x"
sink_queue_max = 0

[uplink]
cluster = ""
nodes = []
ca_cert = "ca.pem"
cert = "e.pem"
key = "e.key"
batches_in_flight_max = 0
backoff_initial_ms = 100
backoff_max_ms = 10

[spool]
segment_bytes_max = 100

[[sources]]
type = "sim"
name = "a"
stream = "s"
devices = 0

[[sources]]
type = "jsonl"
name = "a"
path = "/var/log/x.jsonl"
stream = "s"
line_bytes_max = 1000000
"#;
        let Err(ConfigError::Invalid { problems }) = from_toml(text) else {
            panic!("expected an invalid config");
        };
        let joined = problems.join("\n");
        for expected in [
            "uplink.nodes",
            "uplink.cluster",
            "uplink.batches_in_flight_max",
            "uplink.backoff_max_ms",
            "edge.sink_queue_max",
            "segment_bytes_max",
            "two sources are named",
            "sources.a.devices",
            "line_bytes_max",
        ] {
            assert!(
                joined.contains(expected),
                "{expected} missing from:\n{joined}"
            );
        }
    }

    #[test]
    fn a_frame_limit_below_one_batch_is_refused() {
        // Checks that uplink.frame_bytes_max must hold a whole batch: batch_bytes_max or, when
        // larger, one record of spool.record_bytes_max, each with 64 KiB of room; exactly that
        // fits.
        let base = "[edge]\ndata_dir = \"/x\"\n[[sources]]\ntype = \"sim\"\nname = \"s\"\n\
                    stream = \"s\"\n[uplink]\ncluster = \"c\"\nnodes = [\"a:1\"]\n\
                    ca_cert = \"c\"\ncert = \"c\"\nkey = \"k\"\nbatch_bytes_max = 100000\n";
        let spool = "[spool]\nsegment_bytes_max = 4194304\nspool_bytes_max = 67108864\n";
        let check = |frame: u64, record: u64| {
            from_toml(&format!(
                "{base}frame_bytes_max = {frame}\n{spool}record_bytes_max = {record}\n"
            ))
        };
        assert!(check(100_000 + 65_536, 1000).is_ok());
        assert!(check(200_000 + 65_536, 200_000).is_ok());
        for (frame, record) in [(100_000 + 65_535, 1000), (200_000 + 65_535, 200_000)] {
            match check(frame, record) {
                Err(ConfigError::Invalid { problems }) => {
                    assert_eq!(problems.len(), 1, "{problems:#?}");
                    assert!(
                        problems[0].contains("uplink.frame_bytes_max"),
                        "{problems:?}"
                    );
                    assert!(
                        problems[0].contains("spool.record_bytes_max"),
                        "{problems:?}"
                    );
                }
                other => panic!("frame {frame}, record {record} accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn stream_names_that_are_not_one_directory_are_refused() {
        // Checks that every stream name which is not one safe path component (the agent spools
        // a stream in data_dir/spool/<stream>; proto's BAD_STREAM_NAMES, the list the node and
        // the wire are tested with, and an overlong one) is refused naming the problem, in every
        // kind of source that names a stream.
        let base = "[edge]\ndata_dir = \"/x\"\n[uplink]\ncluster = \"c\"\nnodes = [\"a:1\"]\n\
                    ca_cert = \"c\"\ncert = \"c\"\nkey = \"k\"\n";
        let long = "x".repeat(129);
        for name in BAD_STREAM_NAMES.iter().copied().chain([long.as_str()]) {
            let quoted = toml_string(name);
            for source in [
                format!("type = \"sim\"\nname = \"s\"\nstream = {quoted}\n"),
                format!("type = \"jsonl\"\nname = \"j\"\npath = \"/l\"\nstream = {quoted}\n"),
            ] {
                let text = format!("{base}[[sources]]\n{source}");
                match from_toml(&text) {
                    Err(ConfigError::Load(e)) => {
                        assert!(e.contains("stream name"), "{name:?}: {e}")
                    }
                    other => panic!("{name:?} accepted: {other:?}"),
                }
            }
        }
        let good = format!("{base}[[sources]]\ntype = \"sim\"\nname = \"s\"\nstream = \"a..b\"\n");
        assert!(from_toml(&good).is_ok(), "{:?}", from_toml(&good));
    }

    #[test]
    fn unknown_keys_and_source_types_are_refused() {
        // Checks that typos fail loudly instead of being ignored.
        let base = "[edge]\ndata_dir = \"/x\"\n[uplink]\ncluster = \"c\"\nnodes = [\"a:1\"]\n\
                    ca_cert = \"c\"\ncert = \"c\"\nkey = \"k\"\n";
        for extra in [
            "[spool]\nsync_interval = 5\n",
            "[[sources]]\ntype = \"gps\"\nname = \"g\"\n",
            "[[sources]]\ntype = \"sim\"\nname = \"s\"\nstream = \"s\"\ncolour = 1\n",
        ] {
            let text = format!("{base}{extra}");
            assert!(
                matches!(from_toml(&text), Err(ConfigError::Load(_))),
                "{extra}"
            );
        }
    }
}
