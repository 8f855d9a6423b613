//! `NodeConfig`: one typed struct for the node, loaded once in `main` from TOML plus `SLUICE__`
//! environment overrides (`SLUICE__INGEST__DEDUP_WINDOW_MAX=4096`), validated as a whole (every
//! problem is reported, not just the first), then handed down in pieces. Defaults live here and
//! only here; `deploy/node.example.toml` documents every key.

use figment::providers::{Env as EnvProvider, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use sluice_cluster::raft::metadata_group::MetadataGroupConfig;
use sluice_proto::msg::FetchResponse;
use sluice_proto::net::peer::node_id_of;
use sluice_proto::{Identity, NodeId, StreamName};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole node configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Who this node is and where it keeps data.
    pub node: NodeSection,
    /// The QUIC listener.
    pub transport: TransportSection,
    /// Partition logs on disk.
    #[serde(default)]
    pub storage: StorageSection,
    /// Produce and fetch limits.
    #[serde(default)]
    pub ingest: IngestSection,
    /// Restart budgets of supervised actors.
    #[serde(default)]
    pub supervision: SupervisionSection,
    /// The streams this node serves.
    #[serde(default)]
    pub streams: Vec<StreamSection>,
    /// Who may produce to and consume from which streams. Nothing is allowed unless a rule
    /// allows it.
    #[serde(default)]
    pub acl: Vec<AclRule>,
    /// This node as a voter of a replicated cluster's metadata group. Without it the node runs
    /// alone, as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSection>,
}

/// `[cluster]`: the metadata group this node is a voter of.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The voters the cluster is formed with: node id (decimal, as a TOML key) to that node's
    /// peer address (`host:port` of its listener, which serves clients and peers alike). Every
    /// member lists the same map; this node must be in it.
    pub initial_members: BTreeMap<String, String>,
    /// This node's site label (placement spreads a partition's replicas over sites).
    pub site: String,
    /// This node's rack label (a tie-break of placement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
    /// The metadata group's timing and sizes.
    #[serde(default)]
    pub metadata: MetadataSection,
}

/// `[cluster.metadata]`: timing and sizes of the metadata group (defaults from
/// `MetadataGroupConfig::default()`, sized for sites up to 150 ms apart).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataSection {
    /// The leader's heartbeat interval, also the deadline of each replication call.
    #[serde(default = "default_metadata_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// A follower hearing no leader for a random time in `[min, max)` stands for election.
    #[serde(default = "default_metadata_election_timeout_min_ms")]
    pub election_timeout_min_ms: u64,
    /// See `election_timeout_min_ms`.
    #[serde(default = "default_metadata_election_timeout_max_ms")]
    pub election_timeout_max_ms: u64,
    /// Deadline of a proposal, a read or a membership change (a proposal that misses it may
    /// still be applied).
    #[serde(default = "default_metadata_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// First wait before replicating again to an unreachable member.
    #[serde(default = "default_metadata_unreachable_backoff_initial_ms")]
    pub unreachable_backoff_initial_ms: u64,
    /// Longest such wait.
    #[serde(default = "default_metadata_unreachable_backoff_max_ms")]
    pub unreachable_backoff_max_ms: u64,
    /// Entries per replication call.
    #[serde(default = "default_metadata_entries_per_append_max")]
    pub entries_per_append_max: u64,
    /// Bytes per snapshot chunk.
    #[serde(default = "default_metadata_snapshot_chunk_bytes_max")]
    pub snapshot_chunk_bytes_max: u64,
    /// Preallocated size of a metadata log segment.
    #[serde(default = "default_metadata_segment_bytes_max")]
    pub segment_bytes_max: u64,
    /// The largest metadata log entry.
    #[serde(default = "default_metadata_entry_bytes_max")]
    pub entry_bytes_max: u32,
}

impl MetadataSection {
    /// The metadata group's configuration.
    pub fn group_config(&self) -> MetadataGroupConfig {
        MetadataGroupConfig {
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            election_timeout_min_ms: self.election_timeout_min_ms,
            election_timeout_max_ms: self.election_timeout_max_ms,
            request_timeout_ms: self.request_timeout_ms,
            unreachable_backoff_initial_ms: self.unreachable_backoff_initial_ms,
            unreachable_backoff_max_ms: self.unreachable_backoff_max_ms,
            entries_per_append_max: self.entries_per_append_max,
            snapshot_chunk_bytes_max: self.snapshot_chunk_bytes_max,
            segment_bytes_max: self.segment_bytes_max,
            entry_bytes_max: self.entry_bytes_max,
        }
    }
}

impl Default for MetadataSection {
    fn default() -> Self {
        let d = MetadataGroupConfig::default();
        MetadataSection {
            heartbeat_interval_ms: d.heartbeat_interval_ms,
            election_timeout_min_ms: d.election_timeout_min_ms,
            election_timeout_max_ms: d.election_timeout_max_ms,
            request_timeout_ms: d.request_timeout_ms,
            unreachable_backoff_initial_ms: d.unreachable_backoff_initial_ms,
            unreachable_backoff_max_ms: d.unreachable_backoff_max_ms,
            entries_per_append_max: d.entries_per_append_max,
            snapshot_chunk_bytes_max: d.snapshot_chunk_bytes_max,
            segment_bytes_max: d.segment_bytes_max,
            entry_bytes_max: d.entry_bytes_max,
        }
    }
}

fn default_metadata_heartbeat_interval_ms() -> u64 {
    MetadataSection::default().heartbeat_interval_ms
}
fn default_metadata_election_timeout_min_ms() -> u64 {
    MetadataSection::default().election_timeout_min_ms
}
fn default_metadata_election_timeout_max_ms() -> u64 {
    MetadataSection::default().election_timeout_max_ms
}
fn default_metadata_request_timeout_ms() -> u64 {
    MetadataSection::default().request_timeout_ms
}
fn default_metadata_unreachable_backoff_initial_ms() -> u64 {
    MetadataSection::default().unreachable_backoff_initial_ms
}
fn default_metadata_unreachable_backoff_max_ms() -> u64 {
    MetadataSection::default().unreachable_backoff_max_ms
}
fn default_metadata_entries_per_append_max() -> u64 {
    MetadataSection::default().entries_per_append_max
}
fn default_metadata_snapshot_chunk_bytes_max() -> u64 {
    MetadataSection::default().snapshot_chunk_bytes_max
}
fn default_metadata_segment_bytes_max() -> u64 {
    MetadataSection::default().segment_bytes_max
}
fn default_metadata_entry_bytes_max() -> u32 {
    MetadataSection::default().entry_bytes_max
}

impl ClusterSection {
    /// `initial_members` with their ids parsed; members whose key is not a node id are left
    /// out (validation lists them).
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        self.initial_members
            .iter()
            .filter_map(|(id, address)| Some((node_id_of(id)?, address.clone())))
            .collect()
    }

    fn validate(&self, node_id: u64, problems: &mut Vec<String>) {
        if self.initial_members.is_empty() {
            problems.push(
                "cluster.initial_members is empty: list every voter (id = \"host:port\")".into(),
            );
        }
        for (id, address) in &self.initial_members {
            if node_id_of(id).is_none() {
                problems.push(format!(
                    "cluster.initial_members: key {id:?} is not a node id (decimal, no leading zero)"
                ));
            }
            let port = address
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p != 0) {
                problems.push(format!(
                    "cluster.initial_members.{id} = {address:?} is not host:port"
                ));
            }
        }
        if !self.members().contains_key(&NodeId(node_id)) {
            problems.push(format!(
                "cluster.initial_members does not list this node (node.id = {node_id})"
            ));
        }
        for (what, label) in [
            ("cluster.site", Some(&self.site)),
            ("cluster.rack", self.rack.as_ref()),
        ] {
            if let Some(label) = label {
                if label.is_empty() || label.len() > 64 || label.chars().any(char::is_control) {
                    problems.push(format!(
                        "{what} must be 1 to 64 printable characters, got {label:?}"
                    ));
                }
            }
        }
        let m = &self.metadata;
        for (name, value) in [
            ("heartbeat_interval_ms", m.heartbeat_interval_ms),
            ("request_timeout_ms", m.request_timeout_ms),
            (
                "unreachable_backoff_initial_ms",
                m.unreachable_backoff_initial_ms,
            ),
            ("entries_per_append_max", m.entries_per_append_max),
            ("snapshot_chunk_bytes_max", m.snapshot_chunk_bytes_max),
            ("entry_bytes_max", u64::from(m.entry_bytes_max)),
        ] {
            if value == 0 {
                problems.push(format!("cluster.metadata.{name} must be greater than 0"));
            }
        }
        if m.election_timeout_min_ms <= m.heartbeat_interval_ms {
            problems.push(format!(
                "cluster.metadata.election_timeout_min_ms ({}) must be above heartbeat_interval_ms ({})",
                m.election_timeout_min_ms, m.heartbeat_interval_ms
            ));
        }
        if m.election_timeout_max_ms <= m.election_timeout_min_ms {
            problems.push(format!(
                "cluster.metadata.election_timeout_max_ms ({}) must be above election_timeout_min_ms ({})",
                m.election_timeout_max_ms, m.election_timeout_min_ms
            ));
        }
        if m.unreachable_backoff_max_ms < m.unreachable_backoff_initial_ms {
            problems.push(
                "cluster.metadata.unreachable_backoff_max_ms must be at least unreachable_backoff_initial_ms".into(),
            );
        }
        if m.segment_bytes_max < 1 << 20 || u64::from(m.entry_bytes_max) > m.segment_bytes_max / 2 {
            problems.push(format!(
                "cluster.metadata.segment_bytes_max ({}) must be at least 1048576 and twice entry_bytes_max ({})",
                m.segment_bytes_max, m.entry_bytes_max
            ));
        }
    }
}

/// `[node]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// This node's id; must match its certificate's `sluice://<cluster>/node/<id>`.
    pub id: u64,
    /// The cluster name; only certificates of this cluster are accepted.
    pub cluster: String,
    /// Where partition logs live.
    pub data_dir: PathBuf,
    /// How often the node logs its counters, in ms (0 turns it off).
    #[serde(default = "default_stats_interval_ms")]
    pub stats_interval_ms: u64,
}

/// `[transport]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSection {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// The cluster CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// This node's certificate (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM). Never logged.
    pub key: PathBuf,
    /// Largest frame body accepted, in bytes.
    #[serde(default = "default_frame_bytes_max")]
    pub frame_bytes_max: u32,
    /// Concurrent authenticated client connections.
    #[serde(default = "default_connections_max")]
    pub connections_max: u32,
    /// Concurrent authenticated connections of one identity.
    #[serde(default = "default_connections_per_identity_max")]
    pub connections_per_identity_max: u32,
    /// TLS handshakes in progress at once (peers not yet authenticated).
    #[serde(default = "default_handshakes_max")]
    pub handshakes_max: u32,
    /// Requests handled concurrently per connection; more wait in the stream.
    #[serde(default = "default_in_flight_per_connection_max")]
    pub in_flight_per_connection_max: u32,
    /// Concurrent streams a client may open per connection.
    #[serde(default = "default_streams_per_connection_max")]
    pub streams_per_connection_max: u32,
    /// Idle connections are closed after this long.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// TLS handshakes taking longer are abandoned.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// A frame's header, and then its body, must each arrive within this long once begun.
    #[serde(default = "default_frame_timeout_ms")]
    pub frame_timeout_ms: u64,
    /// Bytes of requests being read or handled, per connection.
    #[serde(default = "default_request_bytes_per_connection_max")]
    pub request_bytes_per_connection_max: u64,
    /// Bytes of requests being read or handled, node-wide.
    #[serde(default = "default_request_bytes_max")]
    pub request_bytes_max: u64,
    /// Bytes of answers not yet taken by the client, per connection; at the bound the node stops
    /// reading that connection.
    #[serde(default = "default_answer_bytes_per_connection_max")]
    pub answer_bytes_per_connection_max: u64,
    /// Bytes of answers not yet taken, node-wide.
    #[serde(default = "default_answer_bytes_max")]
    pub answer_bytes_max: u64,
    /// QUIC flow-control window per connection, each way.
    #[serde(default = "default_connection_window_bytes_max")]
    pub connection_window_bytes_max: u64,
}

impl TransportSection {
    /// The server's bounds, from this section.
    pub fn server_limits(&self) -> sluice_proto::net::ServerLimits {
        sluice_proto::net::ServerLimits {
            frame_bytes_max: self.frame_bytes_max,
            in_flight_per_connection_max: self.in_flight_per_connection_max,
            connections_max: self.connections_max,
            connections_per_identity_max: self.connections_per_identity_max,
            handshakes_max: self.handshakes_max,
            streams_per_connection_max: self.streams_per_connection_max,
            idle_timeout_ms: self.idle_timeout_ms,
            handshake_timeout_ms: self.handshake_timeout_ms,
            frame_timeout_ms: self.frame_timeout_ms,
            request_bytes_per_connection_max: self.request_bytes_per_connection_max,
            request_bytes_max: self.request_bytes_max,
            answer_bytes_per_connection_max: self.answer_bytes_per_connection_max,
            answer_bytes_max: self.answer_bytes_max,
            connection_window_bytes_max: self.connection_window_bytes_max,
        }
    }

    /// Checks that what clients can make the node hold (the byte budgets, every connection's
    /// windows and buffers) fits in `memory_bytes` of memory.
    pub fn check_fits_memory(&self, memory_bytes: u64) -> Result<(), ConfigError> {
        let held = self.server_limits().held_bytes_max();
        if held <= memory_bytes {
            return Ok(());
        }
        Err(ConfigError::Invalid(vec![format!(
            "clients could make this node hold {held} bytes, more than the machine's {memory_bytes} \
             bytes of memory: transport.request_bytes_max ({}) + transport.answer_bytes_max ({}) + \
             transport.connections_max ({}) x (2 x transport.connection_window_bytes_max ({}) + \
             stream buffers); lower them",
            self.request_bytes_max,
            self.answer_bytes_max,
            self.connections_max,
            self.connection_window_bytes_max,
        )]))
    }
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// Preallocated size of each segment file.
    #[serde(default = "default_segment_bytes_max")]
    pub segment_bytes_max: u64,
    /// One sparse index point per this many bytes.
    #[serde(default = "default_index_interval_bytes")]
    pub index_interval_bytes: u64,
    /// First wait before a partition that cannot write (full disk, write error) tries again.
    #[serde(default = "default_write_retry_initial_ms")]
    pub write_retry_initial_ms: u64,
    /// Longest wait between those attempts (the waits double up to it, jittered).
    #[serde(default = "default_write_retry_max_ms")]
    pub write_retry_max_ms: u64,
    /// How often, at most, each partition records its durable end in its manifest (one small
    /// write and `fdatasync` after a group commit, before its acks). Zero, the default, records
    /// after every group commit, so damage to any acknowledged entry is corruption; with a
    /// larger value, damage within the last interval can look like a torn write.
    #[serde(default = "default_durable_record_interval_ms")]
    pub durable_record_interval_ms: u64,
}

/// `[ingest]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSection {
    /// Records per produce request.
    #[serde(default = "default_batch_records_max")]
    pub batch_records_max: u32,
    /// Encoded bytes of one record's payload.
    #[serde(default = "default_record_bytes_max")]
    pub record_bytes_max: u32,
    /// Recent records per (producer, sensor) whose offsets are remembered for retries.
    #[serde(default = "default_dedup_window_max")]
    pub dedup_window_max: u32,
    /// (producer, sensor) pairs tracked with a dedup window (live) per partition.
    #[serde(default = "default_producers_max")]
    pub producers_max: u32,
    /// Live (producer, sensor) pairs one identity may hold per partition, so that one identity
    /// sending many sensor ids exhausts only its own budget; it keeps as many retired pairs
    /// (without a window) beyond those. At most `producers_max`.
    #[serde(default = "default_producers_per_identity_max")]
    pub producers_per_identity_max: u32,
    /// A (producer, sensor) pair idle this long (monotonic clock, restarted at node start) is
    /// retired: its dedup window is dropped and its live slot freed.
    #[serde(default = "default_producer_idle_expiry_ms")]
    pub producer_idle_expiry_ms: u64,
    /// Accepted bytes waiting for the next flush, per partition, before `Overloaded`.
    #[serde(default = "default_pending_bytes_max")]
    pub pending_bytes_max: u64,
    /// Requests waiting for a flush, per partition, before `Overloaded`.
    #[serde(default = "default_waiting_requests_max")]
    pub waiting_requests_max: u32,
    /// Events per stored entry.
    #[serde(default = "default_entry_events_max")]
    pub entry_events_max: u32,
    /// How long a produce may wait for its partition before failing with `Unavailable`.
    #[serde(default = "default_produce_timeout_ms")]
    pub produce_timeout_ms: u64,
    /// Events per fetch response.
    #[serde(default = "default_fetch_events_max")]
    pub fetch_events_max: u32,
    /// Bytes per fetch response (about).
    #[serde(default = "default_fetch_bytes_max")]
    pub fetch_bytes_max: u32,
    /// Longest long-poll wait of a fetch.
    #[serde(default = "default_fetch_wait_ms_max")]
    pub fetch_wait_ms_max: u32,
}

/// `[supervision]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionSection {
    /// Restarts of one actor allowed within `restart_window_ms` before the node gives up.
    #[serde(default = "default_restarts_max")]
    pub restarts_max: u32,
    /// The window of `restarts_max`.
    #[serde(default = "default_restart_window_ms")]
    pub restart_window_ms: u64,
}

/// `[[streams]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSection {
    /// Stream name.
    pub name: String,
    /// Fixed partition count; a sensor id always maps to the same partition.
    pub partitions: u32,
    /// Replicas per partition when the stream is created in a cluster's metadata group at
    /// bootstrap (default: 3, or the number of initial members if fewer). Unused alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<u32>,
    /// Retention by age (ms) recorded with the stream at bootstrap (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_age_ms_max: Option<u64>,
    /// Retention by bytes per partition recorded with the stream at bootstrap (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_bytes_max: Option<u64>,
}

impl StreamSection {
    /// A stream of `partitions` partitions with the bootstrap defaults.
    pub fn new(name: impl Into<String>, partitions: u32) -> Self {
        StreamSection {
            name: name.into(),
            partitions,
            replication_factor: None,
            retention_age_ms_max: None,
            retention_bytes_max: None,
        }
    }

    /// The replication factor this stream is bootstrapped with in a cluster of `n_members`.
    pub fn bootstrap_factor(&self, n_members: usize) -> u32 {
        self.replication_factor
            .unwrap_or_else(|| u32::try_from(n_members.min(3)).unwrap_or(3))
    }
}

/// `[[acl]]`: identities matching `identity` may produce to the streams matching `produce` and
/// consume the streams matching `consume`. Patterns use `*` for any run of characters.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// Identity URI pattern, e.g. `sluice://prod/edge/*`.
    pub identity: String,
    /// Stream patterns this identity may write.
    #[serde(default)]
    pub produce: Vec<String>,
    /// Stream patterns this identity may read.
    #[serde(default)]
    pub consume: Vec<String>,
}

fn default_stats_interval_ms() -> u64 {
    60_000
}
fn default_frame_bytes_max() -> u32 {
    4 << 20
}
fn default_connections_max() -> u32 {
    1024
}
fn default_connections_per_identity_max() -> u32 {
    8
}
fn default_handshakes_max() -> u32 {
    64
}
fn default_in_flight_per_connection_max() -> u32 {
    1024
}
fn default_streams_per_connection_max() -> u32 {
    16
}
fn default_idle_timeout_ms() -> u64 {
    30_000
}
fn default_handshake_timeout_ms() -> u64 {
    5_000
}
fn default_frame_timeout_ms() -> u64 {
    10_000
}
fn default_request_bytes_per_connection_max() -> u64 {
    8 << 20
}
fn default_request_bytes_max() -> u64 {
    128 << 20
}
fn default_answer_bytes_per_connection_max() -> u64 {
    8 << 20
}
fn default_answer_bytes_max() -> u64 {
    128 << 20
}
fn default_connection_window_bytes_max() -> u64 {
    512 << 10
}
fn default_segment_bytes_max() -> u64 {
    64 << 20
}
fn default_write_retry_initial_ms() -> u64 {
    100
}
fn default_write_retry_max_ms() -> u64 {
    30_000
}
fn default_durable_record_interval_ms() -> u64 {
    0
}
fn default_index_interval_bytes() -> u64 {
    64 << 10
}
fn default_batch_records_max() -> u32 {
    10_000
}
fn default_record_bytes_max() -> u32 {
    256 << 10
}
fn default_dedup_window_max() -> u32 {
    1024
}
fn default_producers_max() -> u32 {
    100_000
}
fn default_producers_per_identity_max() -> u32 {
    10_000
}
fn default_producer_idle_expiry_ms() -> u64 {
    7 * 24 * 3_600_000
}
fn default_pending_bytes_max() -> u64 {
    64 << 20
}
fn default_waiting_requests_max() -> u32 {
    65_536
}
fn default_entry_events_max() -> u32 {
    10_000
}
fn default_produce_timeout_ms() -> u64 {
    10_000
}
fn default_fetch_events_max() -> u32 {
    10_000
}
fn default_fetch_bytes_max() -> u32 {
    1 << 20
}
fn default_fetch_wait_ms_max() -> u32 {
    30_000
}
fn default_restarts_max() -> u32 {
    5
}
fn default_restart_window_ms() -> u64 {
    60_000
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            segment_bytes_max: default_segment_bytes_max(),
            index_interval_bytes: default_index_interval_bytes(),
            write_retry_initial_ms: default_write_retry_initial_ms(),
            write_retry_max_ms: default_write_retry_max_ms(),
            durable_record_interval_ms: default_durable_record_interval_ms(),
        }
    }
}

impl Default for IngestSection {
    fn default() -> Self {
        Self {
            batch_records_max: default_batch_records_max(),
            record_bytes_max: default_record_bytes_max(),
            dedup_window_max: default_dedup_window_max(),
            producers_max: default_producers_max(),
            producers_per_identity_max: default_producers_per_identity_max(),
            producer_idle_expiry_ms: default_producer_idle_expiry_ms(),
            pending_bytes_max: default_pending_bytes_max(),
            waiting_requests_max: default_waiting_requests_max(),
            entry_events_max: default_entry_events_max(),
            produce_timeout_ms: default_produce_timeout_ms(),
            fetch_events_max: default_fetch_events_max(),
            fetch_bytes_max: default_fetch_bytes_max(),
            fetch_wait_ms_max: default_fetch_wait_ms_max(),
        }
    }
}

impl Default for SupervisionSection {
    fn default() -> Self {
        Self {
            restarts_max: default_restarts_max(),
            restart_window_ms: default_restart_window_ms(),
        }
    }
}

/// The configuration could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment override could not be read or parsed.
    #[error("cannot load config: {0}")]
    Load(String),
    /// The values are inconsistent; every problem is listed.
    #[error("invalid config:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Loads a config file with `SLUICE__` environment overrides, and validates it.
pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
    if !path.exists() {
        return Err(ConfigError::Load(format!(
            "{} does not exist",
            path.display()
        )));
    }
    let config: NodeConfig = Figment::new()
        .merge(Toml::file(path))
        .merge(EnvProvider::prefixed("SLUICE__").split("__"))
        .extract()
        .map_err(|e| ConfigError::Load(e.to_string()))?;
    config.validate()?;
    Ok(config)
}

/// Parses a config from TOML text (no environment), and validates it.
pub fn from_toml(text: &str) -> Result<NodeConfig, ConfigError> {
    let config: NodeConfig = Figment::new()
        .merge(Toml::string(text))
        .extract()
        .map_err(|e| ConfigError::Load(e.to_string()))?;
    config.validate()?;
    Ok(config)
}

impl NodeConfig {
    /// Checks every value; returns all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut positive = |name: &str, value: u64| {
            if value == 0 {
                problems.push(format!("{name} must be greater than 0"));
            }
        };
        let t = &self.transport;
        let i = &self.ingest;
        for (name, value) in [
            ("transport.frame_bytes_max", u64::from(t.frame_bytes_max)),
            ("transport.connections_max", u64::from(t.connections_max)),
            (
                "transport.connections_per_identity_max",
                u64::from(t.connections_per_identity_max),
            ),
            ("transport.handshakes_max", u64::from(t.handshakes_max)),
            (
                "transport.in_flight_per_connection_max",
                u64::from(t.in_flight_per_connection_max),
            ),
            (
                "transport.streams_per_connection_max",
                u64::from(t.streams_per_connection_max),
            ),
            ("transport.idle_timeout_ms", t.idle_timeout_ms),
            ("transport.handshake_timeout_ms", t.handshake_timeout_ms),
            ("transport.frame_timeout_ms", t.frame_timeout_ms),
            (
                "storage.index_interval_bytes",
                self.storage.index_interval_bytes,
            ),
            (
                "storage.write_retry_initial_ms",
                self.storage.write_retry_initial_ms,
            ),
            ("ingest.batch_records_max", u64::from(i.batch_records_max)),
            ("ingest.record_bytes_max", u64::from(i.record_bytes_max)),
            ("ingest.dedup_window_max", u64::from(i.dedup_window_max)),
            ("ingest.producers_max", u64::from(i.producers_max)),
            (
                "ingest.producers_per_identity_max",
                u64::from(i.producers_per_identity_max),
            ),
            ("ingest.producer_idle_expiry_ms", i.producer_idle_expiry_ms),
            ("ingest.pending_bytes_max", i.pending_bytes_max),
            (
                "ingest.waiting_requests_max",
                u64::from(i.waiting_requests_max),
            ),
            ("ingest.entry_events_max", u64::from(i.entry_events_max)),
            ("ingest.produce_timeout_ms", i.produce_timeout_ms),
            ("ingest.fetch_events_max", u64::from(i.fetch_events_max)),
            ("ingest.fetch_bytes_max", u64::from(i.fetch_bytes_max)),
            (
                "supervision.restart_window_ms",
                self.supervision.restart_window_ms,
            ),
        ] {
            positive(name, value);
        }
        if t.frame_bytes_max as usize > sluice_proto::codec::DECODE_BYTES_MAX {
            problems.push(format!(
                "transport.frame_bytes_max must be at most {}",
                sluice_proto::codec::DECODE_BYTES_MAX
            ));
        }
        self.validate_fetch_answer(&mut problems);
        if self.storage.write_retry_max_ms < self.storage.write_retry_initial_ms {
            problems.push(
                "storage.write_retry_max_ms must be at least storage.write_retry_initial_ms".into(),
            );
        }
        if i.producers_per_identity_max > i.producers_max {
            problems.push(format!(
                "ingest.producers_per_identity_max ({}) must be at most ingest.producers_max ({})",
                i.producers_per_identity_max, i.producers_max
            ));
        }
        // One whole frame must fit each budget, and a connection's share must fit the node's.
        let frame = u64::from(t.frame_bytes_max) + sluice_proto::frame::HEADER_LEN as u64;
        for (per_connection, per_connection_value, node, node_value) in [
            (
                "transport.request_bytes_per_connection_max",
                t.request_bytes_per_connection_max,
                "transport.request_bytes_max",
                t.request_bytes_max,
            ),
            (
                "transport.answer_bytes_per_connection_max",
                t.answer_bytes_per_connection_max,
                "transport.answer_bytes_max",
                t.answer_bytes_max,
            ),
        ] {
            if per_connection_value < frame {
                problems.push(format!(
                    "{per_connection} ({per_connection_value}) must hold one whole frame: at least transport.frame_bytes_max + {} = {frame}",
                    sluice_proto::frame::HEADER_LEN
                ));
            }
            if node_value < per_connection_value {
                problems.push(format!(
                    "{node} ({node_value}) must be at least {per_connection} ({per_connection_value})"
                ));
            }
        }
        if t.connection_window_bytes_max < 16 << 10 || t.connection_window_bytes_max > 1 << 40 {
            problems.push(format!(
                "transport.connection_window_bytes_max must be 16384 to 1099511627776, got {}",
                t.connection_window_bytes_max
            ));
        }
        if self.storage.segment_bytes_max < 1 << 20 {
            problems.push("storage.segment_bytes_max must be at least 1048576".into());
        }
        if self.storage.segment_bytes_max < 2 * u64::from(t.frame_bytes_max) {
            problems.push(
                "storage.segment_bytes_max must be at least twice transport.frame_bytes_max".into(),
            );
        }
        if let Err(e) = Identity::new(
            &self.node.cluster,
            sluice_proto::Role::Node,
            &self.node.id.to_string(),
        ) {
            problems.push(format!("node.cluster: {e}"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (idx, stream) in self.streams.iter().enumerate() {
            if let Err(e) = StreamName::new(stream.name.clone()) {
                problems.push(format!("streams[{idx}].name: {e}"));
            }
            if !seen.insert(stream.name.clone()) {
                problems.push(format!(
                    "streams[{idx}]: stream {:?} is defined twice",
                    stream.name
                ));
            }
            if stream.partitions == 0 || stream.partitions > 4096 {
                problems.push(format!(
                    "streams[{idx}].partitions must be 1 to 4096, got {}",
                    stream.partitions
                ));
            }
            let n_members = self.cluster.as_ref().map_or(1, |c| c.initial_members.len());
            if let Some(factor) = stream.replication_factor {
                if factor == 0 || factor as usize > n_members.max(1) {
                    problems.push(format!(
                        "streams[{idx}].replication_factor must be 1 to the number of cluster.initial_members ({n_members}), got {factor}"
                    ));
                }
            }
            for (key, value) in [
                ("retention_age_ms_max", stream.retention_age_ms_max),
                ("retention_bytes_max", stream.retention_bytes_max),
            ] {
                if value == Some(0) {
                    problems.push(format!("streams[{idx}].{key} must be greater than 0"));
                }
            }
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate(self.node.id, &mut problems);
        }
        for (idx, rule) in self.acl.iter().enumerate() {
            if !rule
                .identity
                .starts_with(sluice_proto::ids::IDENTITY_SCHEME)
            {
                problems.push(format!(
                    "acl[{idx}].identity {:?} must start with sluice://",
                    rule.identity
                ));
            }
            if rule.produce.is_empty() && rule.consume.is_empty() {
                problems.push(format!(
                    "acl[{idx}] allows nothing: give produce or consume patterns"
                ));
            }
        }
        for (what, path) in [
            ("transport.ca_cert", &t.ca_cert),
            ("transport.cert", &t.cert),
            ("transport.key", &t.key),
        ] {
            if path.as_os_str().is_empty() {
                problems.push(format!("{what} is empty"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The largest fetch answer this node can build must fit in one frame: at most
    /// `fetch_events_max` events of together `fetch_bytes_max` bytes, or one event as large as
    /// `record_bytes_max` (a fetch always returns at least one), with their framing.
    fn validate_fetch_answer(&self, problems: &mut Vec<String>) {
        let (t, i) = (&self.transport, &self.ingest);
        let events_bytes_max = u64::from(i.fetch_bytes_max.max(i.record_bytes_max));
        let answer = FetchResponse::body_bytes_max(i.fetch_events_max, events_bytes_max);
        if answer > u64::from(t.frame_bytes_max) {
            problems.push(format!(
                "transport.frame_bytes_max ({}) is smaller than the largest fetch answer, {answer} \
                 bytes (the larger of ingest.fetch_bytes_max {} and ingest.record_bytes_max {}, \
                 plus framing of ingest.fetch_events_max {} events): raise it, or lower those",
                t.frame_bytes_max, i.fetch_bytes_max, i.record_bytes_max, i.fetch_events_max
            ));
        }
    }

    /// The config as TOML with secrets masked, for the start-up log line. Key paths are not
    /// secret; key contents never enter the config.
    pub fn masked(&self) -> String {
        toml_string(self)
    }
}

fn toml_string(config: &NodeConfig) -> String {
    serde_json::to_string(config).unwrap_or_else(|e| format!("<unprintable config: {e}>"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::testing::{toml_string, BAD_STREAM_NAMES};

    #[test]
    fn example_config_loads() {
        // Checks that the committed, fully commented example config parses and validates.
        let text = include_str!("../../deploy/node.example.toml");
        let config = from_toml(text).unwrap();
        assert_eq!(config.node.id, 1);
        assert!(!config.streams.is_empty());
    }

    #[test]
    fn producer_budgets_are_validated() {
        // Checks that the producer budgets must be positive, that an identity's budget may not
        // exceed the partition's, and that the defaults pass.
        let base = "[node]\nid = 1\ncluster = \"c\"\ndata_dir = \"d\"\n[transport]\nlisten = \"127.0.0.1:0\"\nca_cert = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        let config = from_toml(base).unwrap();
        assert_eq!(config.ingest.producers_per_identity_max, 10_000);
        assert_eq!(config.ingest.producer_idle_expiry_ms, 604_800_000);
        let text = format!(
            "{base}[ingest]\nproducers_max = 10\nproducers_per_identity_max = 11\nproducer_idle_expiry_ms = 0\n"
        );
        let Err(ConfigError::Invalid(problems)) = from_toml(&text) else {
            panic!("accepted")
        };
        assert!(
            problems
                .iter()
                .any(|p| p.contains("producers_per_identity_max (11)")),
            "{problems:#?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("producer_idle_expiry_ms must be greater than 0")),
            "{problems:#?}"
        );
    }

    #[test]
    fn every_problem_is_listed() {
        // Checks that validation reports all problems at once, not just the first.
        let text = r#"
            [node]
            id = 1
            cluster = "bad cluster"
            data_dir = "/tmp/x"
            [transport]
            listen = "127.0.0.1:0"
            ca_cert = "ca.pem"
            cert = "n.pem"
            key = "n.key"
            frame_bytes_max = 0
            [[streams]]
            name = "a/b"
            partitions = 0
            [[acl]]
            identity = "edge/*"
        "#;
        let Err(ConfigError::Invalid(problems)) = from_toml(text) else {
            panic!("accepted")
        };
        assert!(problems.len() >= 5, "{problems:#?}");
    }

    /// A minimal valid config, with `extra` appended.
    fn minimal(extra: &str) -> String {
        format!(
            "[node]\nid = 1\ncluster = \"c\"\ndata_dir = \"d\"\n[transport]\n\
             listen = \"127.0.0.1:0\"\nca_cert = \"a\"\ncert = \"b\"\nkey = \"c\"\n{extra}"
        )
    }

    fn problems(text: &str) -> Vec<String> {
        match from_toml(text) {
            Err(ConfigError::Invalid(problems)) => problems,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_frame_limit_below_the_largest_fetch_answer_is_refused() {
        // Checks the bound between transport.frame_bytes_max and the fetch limits: exactly the
        // largest answer fits, one byte less is refused naming every key involved, and a
        // record_bytes_max above fetch_bytes_max (one record is always returned) counts too.
        let answer = FetchResponse::body_bytes_max(100, 60_000);
        let limits = "fetch_events_max = 100\nfetch_bytes_max = 60000\nrecord_bytes_max = 50000\n";
        let fits = minimal(&format!("frame_bytes_max = {answer}\n[ingest]\n{limits}"));
        assert!(from_toml(&fits).is_ok(), "{:?}", from_toml(&fits));
        let short = minimal(&format!(
            "frame_bytes_max = {}\n[ingest]\n{limits}",
            answer - 1
        ));
        let found = problems(&short);
        assert_eq!(found.len(), 1, "{found:#?}");
        for key in [
            "transport.frame_bytes_max",
            "ingest.fetch_bytes_max",
            "ingest.record_bytes_max",
            "ingest.fetch_events_max",
            &answer.to_string(),
        ] {
            assert!(found[0].contains(key), "{key}: {}", found[0]);
        }
        let big_record = minimal(&format!(
            "frame_bytes_max = {answer}\n[ingest]\n\
             fetch_events_max = 100\nfetch_bytes_max = 60000\nrecord_bytes_max = 60001\n"
        ));
        assert_eq!(problems(&big_record).len(), 1);
    }

    #[test]
    fn stream_names_that_are_not_one_directory_are_refused() {
        // Checks that every stream name which is not one safe path component (the node keeps a
        // stream in data_dir/<stream>; proto's BAD_STREAM_NAMES, the list the edge and the wire
        // are tested with) is refused, each one listed.
        let mut text = minimal("");
        for name in BAD_STREAM_NAMES {
            let quoted = toml_string(name);
            text.push_str(&format!("[[streams]]\nname = {quoted}\npartitions = 1\n"));
        }
        let found = problems(&text);
        assert_eq!(found.len(), BAD_STREAM_NAMES.len(), "{found:#?}");
        for (idx, problem) in found.iter().enumerate() {
            assert!(
                problem.starts_with(&format!("streams[{idx}].name")),
                "{problem}"
            );
        }
        let long = minimal(&format!(
            "[[streams]]\nname = \"{}\"\npartitions = 1\n",
            "x".repeat(129)
        ));
        assert_eq!(problems(&long).len(), 1);
    }

    #[test]
    fn byte_budgets_must_hold_a_frame_and_fit_the_machine() {
        // Checks that a per-connection budget below one frame, and a node-wide budget below the
        // per-connection one, are both listed, and that the memory check refuses bounds that do
        // not fit (naming the keys) and accepts the defaults on a machine of 4 GiB.
        let text = r#"
            [node]
            id = 1
            cluster = "c"
            data_dir = "d"
            [transport]
            listen = "127.0.0.1:0"
            ca_cert = "a"
            cert = "b"
            key = "c"
            frame_bytes_max = 1048576
            request_bytes_per_connection_max = 1048576
            answer_bytes_max = 1048576
        "#;
        let Err(ConfigError::Invalid(problems)) = from_toml(text) else {
            panic!("accepted")
        };
        assert!(
            problems.iter().any(|p| p.starts_with(
                "transport.request_bytes_per_connection_max (1048576) must hold one whole frame"
            )),
            "{problems:#?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with(
                "transport.answer_bytes_max (1048576) must be at least transport.answer_bytes_per_connection_max"
            )),
            "{problems:#?}"
        );
        let config = from_toml(include_str!("../../deploy/node.example.toml")).unwrap();
        config.transport.check_fits_memory(4 << 30).unwrap();
        let Err(ConfigError::Invalid(problems)) = config.transport.check_fits_memory(256 << 20)
        else {
            panic!("accepted")
        };
        assert!(
            problems[0].contains("transport.request_bytes_max"),
            "{problems:#?}"
        );
    }

    /// The example config with its commented `[cluster]` block switched on.
    fn example_with_cluster() -> String {
        let text = include_str!("../../deploy/node.example.toml");
        let (head, tail) = text.split_once("# [cluster]\n").unwrap();
        let mut out = format!("{head}[cluster]\n");
        for line in tail.lines() {
            match line.strip_prefix("# ") {
                // A commented key or table header; "# # text" stays a comment.
                Some(rest) if !rest.starts_with('#') => out.push_str(rest),
                _ => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn the_example_cluster_section_loads_with_the_metadata_group_defaults() {
        // Checks that the documented [cluster] block of the example config parses and
        // validates, that its members and labels come through, that every documented timing
        // value is MetadataGroupConfig's default, and that a config without it has no cluster.
        let config = from_toml(&example_with_cluster()).unwrap();
        let cluster = config.cluster.expect("cluster section");
        assert_eq!(cluster.site, "site-a");
        assert_eq!(cluster.rack.as_deref(), Some("rack-1"));
        assert_eq!(cluster.members().len(), 3);
        assert_eq!(cluster.members()[&NodeId(2)], "127.0.0.1:7401");
        assert_eq!(
            cluster.metadata.group_config(),
            MetadataGroupConfig::default()
        );
        let defaults = from_toml(&minimal(
            "[cluster]\nsite = \"a\"\n[cluster.initial_members]\n1 = \"h:1\"\n",
        ))
        .unwrap();
        assert_eq!(
            defaults.cluster.unwrap().metadata.group_config(),
            MetadataGroupConfig::default()
        );
        let alone = from_toml(include_str!("../../deploy/node.example.toml")).unwrap();
        assert!(alone.cluster.is_none());
    }

    #[test]
    fn every_cluster_problem_is_listed() {
        // Checks that a bad [cluster] section lists each problem: a key that is no node id, an
        // address without a port, this node missing from the members, an empty site, election
        // timeouts out of order (twice), and a replication factor above the members.
        let found = problems(&minimal(
            "[[streams]]\nname = \"s\"\npartitions = 1\nreplication_factor = 3\n\
             [cluster]\nsite = \"\"\n[cluster.initial_members]\n01 = \"h:1\"\n2 = \"nowhere\"\n\
             [cluster.metadata]\nelection_timeout_min_ms = 400\nelection_timeout_max_ms = 300\n",
        ));
        for needle in [
            "key \"01\" is not a node id",
            "cluster.initial_members.2 = \"nowhere\" is not host:port",
            "does not list this node (node.id = 1)",
            "cluster.site must be 1 to 64",
            "election_timeout_min_ms (400) must be above heartbeat_interval_ms (500)",
            "election_timeout_max_ms (300) must be above election_timeout_min_ms (400)",
            "streams[0].replication_factor must be 1 to the number of cluster.initial_members (2)",
        ] {
            assert!(
                found.iter().any(|p| p.contains(needle)),
                "{needle}: {found:#?}"
            );
        }
        assert_eq!(found.len(), 7, "{found:#?}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        // Checks that a misspelt key is an error rather than silently ignored.
        let text = "[node]\nid = 1\ncluster = \"c\"\ndata_dir = \"d\"\nstats_interval = 5\n[transport]\nlisten = \"127.0.0.1:0\"\nca_cert = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        assert!(
            matches!(from_toml(text), Err(ConfigError::Load(e)) if e.contains("stats_interval"))
        );
    }
}
