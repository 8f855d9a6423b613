//! `Node::start`: the entry point that builds a node from its config and environment — the
//! supervisor, one partition actor per partition (each recovering its log), the request service
//! — and, in production, `Node::serve` puts the QUIC listener in front of it. The simulator calls
//! `Node::start` with its own environment and talks to the service directly.

use crate::admin::{Admin, PeerRouter, METADATA_INCARNATION};
use crate::catalog::{self, Created};
use crate::config::NodeConfig;
use crate::env::run_blocking;
use crate::log::{LogConfig, LogPaths};
use crate::metrics::Metrics;
use crate::partition::actor::{PartitionArgs, Registry, RetryConfig};
use crate::partition::core::CoreConfig;
use crate::service::{QuicHandler, Service};
use crate::supervisor::{NodeSupervisor, SupervisorArgs, SupervisorMsg};
use ractor::{Actor, ActorRef};
use sluice_cluster::raft::metadata_group::{ClusterIncarnation, MetadataGroup};
use sluice_proto::certcheck::{load_checked, CertProblems, ExpectedIdentity, TlsFiles};
use sluice_proto::env::PeerTransport as _;
use sluice_proto::env::{Clock, Env};
use sluice_proto::net::server::{serve_with_peers, ClientSide, ServerGauges};
use sluice_proto::net::{self, NetError, PeerAcceptor, PeerLimits, QuicPeerTransport, TlsMaterial};
use sluice_proto::{NodeId, PartitionId, Role, StreamName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tracing::{info, Instrument};

/// A node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error("config: {0}")]
    Config(String),
    /// A partition could not start (its log is unreadable or corrupt, the disk failed, …).
    #[error("{0}")]
    Storage(String),
    /// Certificates could not be loaded or do not fit this node.
    #[error("tls: {0}")]
    Tls(#[from] NetError),
    /// The certificate, key or CA files are unusable for this node; every problem is listed.
    #[error("tls files:\n  - {}", .0.0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  - "))]
    Certificates(#[from] CertProblems),
    /// The metadata group (or its peer transport) could not start.
    #[error("metadata group: {0}")]
    Metadata(String),
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// A running node.
pub struct Node {
    service: Arc<Service>,
    supervisor: ActorRef<SupervisorMsg>,
    /// `None` once `failed` has seen the supervisor end.
    supervisor_join: Option<JoinHandle<()>>,
    server: Option<(watch::Sender<bool>, JoinHandle<()>, quinn::Endpoint)>,
    /// Certificates are checked against its wall time.
    clock: Arc<dyn Clock>,
    /// What clients hold at the listener (handshakes, connections, bytes).
    server_gauges: Arc<ServerGauges>,
    /// The environment, and what `serve` starts for `[cluster]` (boxed: `Node` stays small).
    cluster: Box<ClusterSlot>,
}

/// The environment the metadata group starts on, and the cluster parts once started.
struct ClusterSlot {
    env: Env,
    parts: Option<ClusterParts>,
}

/// What a node of a cluster runs besides its partitions: the metadata replica, the peer
/// transport it talks through, and the task registering this node.
struct ClusterParts {
    admin: Arc<Admin>,
    transport: QuicPeerTransport,
    registration: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

/// The partitions of `config`, each told whether the catalog recorded it before (`created`)
/// and, when the catalog does not durably record it, handed the record still to be made.
fn partition_args(
    config: &NodeConfig,
    env: &Env,
    registry: &Arc<Registry>,
    prepared: &catalog::Prepared,
    pending: Option<&Arc<catalog::PendingRecord>>,
) -> Result<Vec<PartitionArgs>, StartError> {
    let core = CoreConfig {
        dedup_window_max: config.ingest.dedup_window_max,
        producers_max: config.ingest.producers_max,
        producers_per_identity_max: config.ingest.producers_per_identity_max,
        producer_idle_expiry: std::time::Duration::from_millis(
            config.ingest.producer_idle_expiry_ms,
        ),
        pending_bytes_max: config.ingest.pending_bytes_max,
        waiting_requests_max: config.ingest.waiting_requests_max,
        entry_events_max: config.ingest.entry_events_max,
    };
    let log = LogConfig {
        segment_bytes_max: config.storage.segment_bytes_max,
        index_interval_bytes: config.storage.index_interval_bytes,
        entry_bytes_max: config.storage.segment_bytes_max.min(u64::from(u32::MAX)) as u32,
        durable_record_interval: Duration::from_millis(config.storage.durable_record_interval_ms),
    };
    let retry = RetryConfig {
        initial: Duration::from_millis(config.storage.write_retry_initial_ms),
        max: Duration::from_millis(config.storage.write_retry_max_ms),
    };
    let mut out = Vec::new();
    for stream in &config.streams {
        let name =
            StreamName::new(stream.name.clone()).map_err(|e| StartError::Config(e.to_string()))?;
        for partition in 0..stream.partitions {
            let mut paths = partition_paths(&config.node.data_dir, &name, partition);
            paths.created = prepared
                .known
                .get(&stream.name)
                .is_some_and(|n| partition < *n);
            let catalog = pending
                .filter(|_| !prepared.records(&stream.name, partition))
                .cloned();
            out.push(PartitionArgs {
                stream: name.clone(),
                partition: PartitionId(partition),
                paths,
                env: env.clone(),
                core,
                log,
                retry,
                registry: registry.clone(),
                log_guard: Arc::new(Mutex::new(())),
                durable_mark: Arc::new(std::sync::Mutex::new(None)),
                catalog,
            });
        }
    }
    Ok(out)
}

/// Where partition `partition` of `stream` keeps its log under `data_dir`: segments in
/// `streams/<stream>/<partition>/`, the manifest in `manifests/<stream>/<partition>.manifest`
/// (apart, so that losing the segment directory is detected).
pub fn partition_paths(
    data_dir: &std::path::Path,
    stream: &StreamName,
    partition: u32,
) -> LogPaths {
    partition_paths_of(data_dir, stream.as_str(), partition)
}

/// [`partition_paths`] of a stream name already checked (as one the catalog recorded).
pub(crate) fn partition_paths_of(
    data_dir: &std::path::Path,
    stream: &str,
    partition: u32,
) -> LogPaths {
    LogPaths {
        dir: data_dir
            .join("streams")
            .join(stream)
            .join(partition.to_string()),
        manifest: data_dir
            .join("manifests")
            .join(stream)
            .join(format!("{partition}.manifest")),
        created: false,
    }
}

impl Node {
    /// Starts the node's actors on `env` and recovers every partition. No network yet.
    pub async fn start(config: &NodeConfig, env: Env) -> Result<Node, StartError> {
        config
            .validate()
            .map_err(|e| StartError::Config(e.to_string()))?;
        let registry = Arc::new(Registry::default());
        let metrics = Arc::new(Metrics::default());
        // Every partition is recorded in the catalog (synced) before it takes a write; the
        // ones recorded before must be found.
        let configured: Created = config
            .streams
            .iter()
            .map(|s| (s.name.clone(), s.partitions))
            .collect();
        let (disk, data_dir) = (env.disk.clone(), config.node.data_dir.clone());
        let streams = configured.clone();
        let prepared = run_blocking(env.blocking, move || {
            catalog::prepare(&*disk, &data_dir, &streams)
        })
        .await;
        let pending = match &prepared.result {
            Ok(()) => None,
            Err(error) => {
                // A full or failing disk degrades partitions, never the node: the ones it does
                // not record refuse writes (reads go on) until a retry records them.
                tracing::error!(%error, "partition catalog not recorded: the partitions it does not record refuse writes until it is, retrying");
                Some(Arc::new(catalog::PendingRecord::new(
                    env.disk.clone(),
                    config.node.data_dir.clone(),
                    configured,
                )))
            }
        };
        let args = SupervisorArgs {
            partitions: partition_args(config, &env, &registry, &prepared, pending.as_ref())?,
            supervision: config.supervision.clone(),
            clock: env.clock.clone(),
        };
        let span = tracing::info_span!("node", node_id = config.node.id);
        let (supervisor, supervisor_join) = Actor::spawn(None, NodeSupervisor, args)
            .instrument(span)
            .await
            .map_err(|e| StartError::Storage(spawn_error_text(&e)))?;
        let service = Arc::new(Service::new(
            config,
            registry,
            env.clock.clone(),
            env.blocking,
            metrics,
        ));
        info!(
            node_id = config.node.id,
            n_streams = config.streams.len(),
            "node started"
        );
        Ok(Node {
            service,
            supervisor,
            supervisor_join: Some(supervisor_join),
            server: None,
            clock: env.clock.clone(),
            server_gauges: Arc::new(ServerGauges::default()),
            cluster: Box::new(ClusterSlot { env, parts: None }),
        })
    }

    /// Starts the QUIC + mTLS listener; returns the address it listens on.
    pub async fn serve(&mut self, config: &NodeConfig) -> Result<SocketAddr, StartError> {
        let t = &config.transport;
        // The files must make a working node: its own key, a certificate of this very node
        // that the configured CA signed and that is valid now.
        let files = TlsFiles {
            ca_cert: &t.ca_cert,
            cert: &t.cert,
            key: &t.key,
        };
        let expected = ExpectedIdentity {
            cluster: config.node.cluster.clone(),
            role: Role::Node,
            name: Some(config.node.id.to_string()),
        };
        let material = load_checked(files, &expected, self.clock.wall())?;
        let limits = t.server_limits();
        if let Some(memory) = total_memory_bytes() {
            t.check_fits_memory(memory)
                .map_err(|e| StartError::Config(e.to_string()))?;
        }
        let server_config = net::server_config(&material, &config.node.cluster, &limits)?;
        let endpoint =
            quinn::Endpoint::server(server_config, t.listen).map_err(|e| StartError::Bind {
                addr: t.listen,
                reason: e.to_string(),
            })?;
        let addr = endpoint.local_addr().map_err(|e| StartError::Bind {
            addr: t.listen,
            reason: e.to_string(),
        })?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let handler = Arc::new(QuicHandler(self.service.clone()));
        let span = tracing::info_span!("node", node_id = config.node.id);
        let peers = match self.start_cluster(config, &endpoint, &material).await {
            Ok(peers) => peers,
            Err(e) => {
                endpoint.close(0u32.into(), b"start failed");
                return Err(e);
            }
        };
        let clients = ClientSide {
            allowed_roles: vec![Role::Edge, Role::Admin],
            handler,
            limits,
            gauges: self.server_gauges.clone(),
        };
        let task = tokio::spawn(
            serve_with_peers(
                endpoint.clone(),
                config.node.cluster.clone(),
                clients,
                peers,
                shutdown_rx,
            )
            .instrument(span),
        );
        info!(%addr, "listening");
        self.server = Some((shutdown_tx, task, endpoint));
        Ok(addr)
    }

    /// With `[cluster]`: the peer transport on `endpoint`, the metadata replica under
    /// `<data_dir>/metadata/` registered for `PeerGroup::Metadata`, the admin requests and the
    /// self-registration task. Returns what the listener hands peer connections to.
    async fn start_cluster(
        &mut self,
        config: &NodeConfig,
        endpoint: &quinn::Endpoint,
        material: &TlsMaterial,
    ) -> Result<Option<PeerAcceptor>, StartError> {
        let Some(section) = &config.cluster else {
            return Ok(None);
        };
        let node = NodeId(config.node.id);
        let router = Arc::new(PeerRouter::default());
        let transport = QuicPeerTransport::new(
            endpoint.clone(),
            material.clone(),
            &config.node.cluster,
            node,
            PeerLimits::default(),
            router.clone(),
            self.cluster.env.seed,
        )
        .map_err(|e| StartError::Metadata(e.to_string()))?;
        transport.set_peers(section.members());
        let cluster = ClusterIncarnation {
            cluster: config.node.cluster.clone(),
            incarnation: METADATA_INCARNATION,
        };
        let group = MetadataGroup::start(
            &self.cluster.env,
            node,
            &config.node.data_dir.join("metadata"),
            Arc::new(transport.clone()),
            &cluster,
            &section.metadata.group_config(),
        )
        .await
        .map_err(|e| StartError::Metadata(e.to_string()))?;
        router.set_metadata(group.handler());
        let admin = Arc::new(Admin::new(group, config));
        self.service.set_admin(admin.clone());
        let (stop, stop_rx) = watch::channel(false);
        let backoff = admin.registration_backoff(&self.cluster.env);
        let registering = admin.clone();
        let span = tracing::info_span!("node", node_id = config.node.id);
        let registration = tokio::spawn(
            async move { registering.register(backoff, stop_rx).await }.instrument(span),
        );
        info!(
            n_members = section.initial_members.len(),
            "metadata group started"
        );
        let acceptor = transport.acceptor();
        self.cluster.parts = Some(ClusterParts {
            admin,
            transport,
            registration,
            stop,
        });
        Ok(Some(acceptor))
    }

    /// The metadata group's admin side, when the node serves a cluster.
    pub fn admin(&self) -> Option<&Arc<Admin>> {
        self.cluster.parts.as_ref().map(|c| &c.admin)
    }

    /// What clients hold at the listener now and at most (handshakes, connections, bytes).
    pub fn server_gauges(&self) -> &Arc<ServerGauges> {
        &self.server_gauges
    }

    /// The request service (the simulator and tests call it directly).
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Waits until the node fails on its own (its supervisor stopped). Storage faults never do
    /// this: they degrade the partition they concern.
    pub async fn failed(&mut self) {
        match self.supervisor_join.as_mut() {
            Some(join) => {
                let _ = join.await;
                self.supervisor_join = None;
            }
            None => std::future::pending::<()>().await,
        }
    }

    /// Stops the metadata replica and its peer transport, the listener, then the partitions in
    /// reverse start order, then the supervisor.
    pub async fn stop(self) {
        if let Some(cluster) = self.cluster.parts {
            let _ = cluster.stop.send(true);
            let _ = cluster.registration.await;
            if let Err(error) = cluster.admin.group().shutdown().await {
                tracing::warn!(%error, "metadata replica did not stop cleanly");
            }
            cluster.transport.close();
        }
        if let Some((shutdown, task, endpoint)) = self.server {
            let _ = shutdown.send(true);
            let _ = task.await;
            endpoint.wait_idle().await;
        }
        let _ = self
            .supervisor
            .call(SupervisorMsg::StopChildren, Some(Duration::from_secs(60)))
            .await;
        self.supervisor.stop(None);
        if let Some(join) = self.supervisor_join {
            let _ = join.await;
        }
        info!("node stopped");
    }
}

fn spawn_error_text(e: &ractor::SpawnErr) -> String {
    match e {
        ractor::SpawnErr::StartupFailed(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

/// The machine's memory in bytes (`MemTotal` of `/proc/meminfo`); `None` where it cannot be read,
/// and then the start-up memory check is skipped.
fn total_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::RealClock;
    use sluice_proto::env::BlockingMode;
    use sluice_proto::msg::{
        FetchFrom, FetchRequest, Message, ProduceRequest, RecordOutcome, RecordRejection,
    };
    use sluice_proto::testing::CrashDisk;
    use sluice_proto::Identity;
    use sluice_proto::{BootEpoch, Offset, Payload, Reading, Record, SensorId, UnixMillis};
    use std::path::{Path, PathBuf};

    /// Where the tests' nodes keep their data on the simulated disk.
    const DATA_DIR: &str = "/data";

    /// A node environment on a fresh [`CrashDisk`]; the disk is returned to inject faults and
    /// damage through.
    fn crash_env() -> (Env, CrashDisk) {
        let disk = CrashDisk::new();
        (env_on(&disk), disk)
    }

    /// An environment for a new node process on `disk`.
    fn env_on(disk: &CrashDisk) -> Env {
        Env {
            clock: Arc::new(RealClock),
            disk: Arc::new(disk.mount()),
            blocking: BlockingMode::ThreadPool,
            seed: 1,
        }
    }

    /// Stops `node` and ends its process: its file handles die with it.
    async fn stop(node: Node, disk: &CrashDisk) {
        node.stop().await;
        disk.close_all();
    }

    /// The first segment of partition 0 of `stream`.
    fn first_segment(stream: &str) -> PathBuf {
        partition_paths(Path::new(DATA_DIR), &StreamName::new(stream).unwrap(), 0)
            .dir
            .join("00000000000000000000.log")
    }

    /// The tests' node configuration: streams s and t, and whatever `extra` adds to it (TOML
    /// keys for `[transport]`, `[storage]` and more `[[streams]]`, each prefixed by its table).
    fn config_with(extra: &Extra) -> NodeConfig {
        let Extra {
            transport,
            storage,
            streams,
        } = extra;
        crate::config::from_toml(&format!(
            "[node]\nid = 1\ncluster = \"t\"\ndata_dir = \"{DATA_DIR}\"\n[transport]\nlisten = \"127.0.0.1:0\"\nca_cert = \"x\"\ncert = \"x\"\nkey = \"x\"\n{transport}[storage]\nwrite_retry_initial_ms = 10\nwrite_retry_max_ms = 50\n{storage}[supervision]\nrestarts_max = 3\n[[streams]]\nname = \"s\"\npartitions = 1\n[[streams]]\nname = \"t\"\npartitions = 1\n{streams}[[acl]]\nidentity = \"sluice://t/edge/*\"\nproduce = [\"*\"]\nconsume = [\"*\"]\n",
        ))
        .unwrap()
    }

    /// Configuration lines [`config_with`] adds.
    #[derive(Default)]
    struct Extra {
        transport: &'static str,
        storage: &'static str,
        streams: &'static str,
    }

    fn config() -> NodeConfig {
        config_with(&Extra::default())
    }

    fn record(seq: u64) -> Record {
        Record {
            sensor: SensorId::new("x").unwrap(),
            boot_epoch: BootEpoch(1),
            seq,
            device_time: UnixMillis(0),
            payload: Payload::Reading(Reading::Temperature { celsius: 1.0 }),
        }
    }

    /// A record of 200 KiB of opaque bytes.
    fn big_record(seq: u64) -> Record {
        Record {
            payload: Payload::Bytes(vec![seq as u8; 200 << 10]),
            ..record(seq)
        }
    }

    async fn produce_record(node: &Node, stream: &str, record: Record) -> RecordOutcome {
        let peer = Arc::new(Identity::new("t", Role::Edge, "e").unwrap());
        let request = Message::ProduceRequest(ProduceRequest {
            request_id: 1,
            stream: StreamName::new(stream).unwrap(),
            records: vec![record],
        });
        match node.service().handle(peer, request).await {
            Message::ProduceResponse(r) => r.outcomes[0].clone(),
            other => panic!("unexpected {other:?}"),
        }
    }

    async fn produce_to(node: &Node, stream: &str, seq: u64) -> RecordOutcome {
        produce_record(node, stream, record(seq)).await
    }

    async fn produce(node: &Node, seq: u64) -> RecordOutcome {
        produce_to(node, "s", seq).await
    }

    fn appended_at(outcome: &RecordOutcome, offset: u64) -> bool {
        matches!(outcome, RecordOutcome::Appended { offset: o, .. } if o.0 == offset)
    }

    /// `(offset, seq)` of everything fetchable from stream `stream`, fetched in as many answers
    /// as it takes.
    async fn fetch_all(node: &Node, stream: &str) -> Vec<(u64, u64)> {
        let peer = Arc::new(Identity::new("t", Role::Edge, "e").unwrap());
        let mut all = Vec::new();
        let mut from = FetchFrom::Earliest;
        loop {
            let fetch = Message::FetchRequest(FetchRequest {
                request_id: 2,
                stream: StreamName::new(stream).unwrap(),
                partition: PartitionId(0),
                from,
                events_max: 1000,
                bytes_max: 1 << 20,
                wait_ms: 0,
            });
            let events = match node.service().handle(peer.clone(), fetch).await {
                Message::FetchResponse(read) => read.events,
                other => panic!("fetch failed: {other:?}"),
            };
            let Some(last) = events.last() else {
                return all;
            };
            from = FetchFrom::Offset(Offset(last.offset.0 + 1));
            all.extend(events.iter().map(|e| (e.offset.0, e.event.seq)));
        }
    }

    fn is_storage(outcome: &RecordOutcome) -> bool {
        matches!(
            outcome,
            RecordOutcome::Rejected(RecordRejection::Storage { .. })
        )
    }

    /// Produces `record` to `stream` until it is no longer refused for storage or
    /// availability, within 20 s.
    async fn produce_until_stored(node: &Node, stream: &str, record: Record) -> RecordOutcome {
        let retry = async {
            loop {
                let outcome = produce_record(node, stream, record.clone()).await;
                if !is_storage(&outcome)
                    && !matches!(
                        outcome,
                        RecordOutcome::Rejected(RecordRejection::Unavailable { .. })
                    )
                {
                    return outcome;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), retry)
            .await
            .expect("partition did not take writes again within 20 s")
    }

    #[tokio::test]
    async fn failed_fsync_degrades_the_partition_until_it_recovers_from_disk() {
        // Checks the fsync-failure path end to end: the record whose flush failed is not
        // acknowledged, the partition refuses writes with a Storage error while reads go on,
        // it reopens from disk by itself, recovery keeps what was acknowledged before, and the
        // producer's retry of the failed record lands at offset 1 exactly once.
        let (env, disk) = crash_env();
        let node = Node::start(&config(), env).await.unwrap();
        assert!(appended_at(&produce(&node, 0).await, 0));
        disk.arm_sync_failure(0);
        let failed = produce(&node, 1).await;
        assert!(is_storage(&failed), "{failed:?}");
        assert_eq!(fetch_all(&node, "s").await, vec![(0, 0)]);
        let outcome = produce_until_stored(&node, "s", record(1)).await;
        // Recovery may have adopted (and made durable) the bytes whose fdatasync failed (Linux
        // keeps them in the page cache); then the retry is a duplicate. Either way the record
        // is at offset 1 exactly once.
        assert!(appended_at(&outcome, 1), "{outcome:?}");
        assert_eq!(fetch_all(&node, "s").await, vec![(0, 0), (1, 1)]);
        stop(node, &disk).await;
    }

    #[tokio::test]
    async fn a_disk_full_at_a_segment_roll_refuses_writes_keeps_reads_and_recovers() {
        // Checks the full-disk path where it happens in practice, at a segment roll: on a full
        // disk the active segment takes records into its preallocated space until it is used
        // up, then `fallocate` of the next segment fails ENOSPC part way; the node stays up, the
        // produce is refused with a Storage error, no partial segment is left, fetches still
        // return everything acknowledged, and once space returns the partition rolls and takes
        // the record at the next offset without a restart.
        let (env, disk) = crash_env();
        let config = config_with(&Extra {
            storage: "segment_bytes_max = 8388608\n",
            ..Extra::default()
        });
        let node = Node::start(&config, env).await.unwrap();
        let n_files = disk.n_files();
        disk.set_full(true);
        disk.set_partial_allocate(true);
        // 41 records of 200 KiB cannot fit in one segment of 8 MiB.
        let mut acked = Vec::new();
        let refused_seq = loop {
            let seq = acked.len() as u64;
            assert!(seq <= 41, "a full disk never refused a roll");
            let outcome = produce_record(&node, "s", big_record(seq)).await;
            if is_storage(&outcome) {
                break seq;
            }
            assert!(appended_at(&outcome, seq), "{outcome:?}");
            acked.push((seq, seq));
        };
        assert!(
            refused_seq >= 30,
            "refused before the preallocation was used up"
        );
        for _ in 0..3 {
            let refused = produce_record(&node, "s", big_record(refused_seq)).await;
            assert!(is_storage(&refused), "{refused:?}");
            assert_eq!(fetch_all(&node, "s").await, acked);
        }
        assert_eq!(disk.n_files(), n_files, "a partial segment was left behind");
        disk.set_full(false);
        let outcome = produce_until_stored(&node, "s", big_record(refused_seq)).await;
        assert!(appended_at(&outcome, refused_seq), "{outcome:?}");
        assert_eq!(fetch_all(&node, "s").await.len() as u64, refused_seq + 1);
        assert_eq!(disk.n_files(), n_files + 1);
        stop(node, &disk).await;
    }

    #[tokio::test]
    async fn a_write_error_inside_a_segment_refuses_writes_keeps_reads_and_recovers() {
        // Checks the write-error path inside an existing (preallocated) segment: while every
        // change to the active segment fails (EPERM, as for an immutable file) the node stays
        // up, produces are refused with a Storage error, fetches return what was acknowledged,
        // another stream works, and once the file is writable again the partition takes writes
        // without a restart, at the next offset.
        let (env, disk) = crash_env();
        let node = Node::start(&config(), env).await.unwrap();
        for seq in 0..3 {
            assert!(appended_at(&produce(&node, seq).await, seq));
        }
        disk.set_immutable(&first_segment("s"), true);
        for _ in 0..3 {
            let refused = produce(&node, 3).await;
            assert!(is_storage(&refused), "{refused:?}");
            assert_eq!(fetch_all(&node, "s").await, vec![(0, 0), (1, 1), (2, 2)]);
        }
        assert!(appended_at(&produce_to(&node, "t", 0).await, 0));
        disk.set_immutable(&first_segment("s"), false);
        let outcome = produce_until_stored(&node, "s", record(3)).await;
        assert!(appended_at(&outcome, 3), "{outcome:?}");
        assert_eq!(fetch_all(&node, "s").await.len(), 4);
        stop(node, &disk).await;
    }

    #[tokio::test]
    async fn a_node_started_on_a_full_disk_serves_what_it_has() {
        // Checks that a node whose disk is full at start-up (no free space reported, every
        // growth ENOSPC) starts, serves the acknowledged records, keeps taking records into the
        // space its segments preallocated, refuses with a Storage error a stream configured
        // since, which needs a new segment, and creates that segment once space returns.
        let (env, disk) = crash_env();
        let node = Node::start(&config(), env).await.unwrap();
        for seq in 0..2 {
            assert!(appended_at(&produce(&node, seq).await, seq));
        }
        stop(node, &disk).await;
        disk.set_full(true);
        disk.set_available_bytes(Some(0));
        let config = config_with(&Extra {
            streams: "[[streams]]\nname = \"u\"\npartitions = 1\n",
            ..Extra::default()
        });
        let node = Node::start(&config, env_on(&disk)).await.unwrap();
        assert_eq!(fetch_all(&node, "s").await, vec![(0, 0), (1, 1)]);
        let outcome = produce(&node, 2).await;
        assert!(appended_at(&outcome, 2), "{outcome:?}");
        assert!(appended_at(&produce_to(&node, "t", 0).await, 0));
        // Stream u never had a segment: it cannot preallocate one, and says so.
        for _ in 0..3 {
            let refused = produce_to(&node, "u", 0).await;
            assert!(is_storage(&refused), "{refused:?}");
        }
        disk.set_full(false);
        disk.set_available_bytes(None);
        let outcome = produce_until_stored(&node, "u", record(0)).await;
        assert!(appended_at(&outcome, 0), "{outcome:?}");
        stop(node, &disk).await;
    }

    /// The reason of a `Storage` refusal, or a panic naming what `outcome` was.
    fn storage_reason(outcome: RecordOutcome) -> String {
        match outcome {
            RecordOutcome::Rejected(RecordRejection::Storage { reason }) => reason,
            other => panic!("not a Storage refusal: {other:?}"),
        }
    }

    #[tokio::test]
    async fn partitions_the_catalog_cannot_record_refuse_writes_until_it_can() {
        // Checks a catalog write that fails at start (ENOSPC, as the full-disk tests inject
        // it: a data dir whose catalog is gone, on a full disk where creating one needs room):
        // the node starts and serves every acknowledged record, but the partitions the catalog
        // does not durably record refuse writes with a Storage error naming the catalog (a
        // partition taking writes unrecorded would start empty, undetected, if its directory
        // were deleted later); once space returns, a retry records the catalog and the same
        // partitions take writes at the next offset, without a restart.
        let (env, disk) = crash_env();
        let node = Node::start(&config(), env).await.unwrap();
        for seq in 0..2 {
            assert!(appended_at(&produce(&node, seq).await, seq));
        }
        stop(node, &disk).await;
        let catalog_path = catalog::catalog_path(Path::new(DATA_DIR));
        disk.delete_file(&catalog_path).unwrap();
        disk.set_full(true);
        let node = Node::start(&config(), env_on(&disk)).await.unwrap();
        assert_eq!(fetch_all(&node, "s").await, vec![(0, 0), (1, 1)]);
        for _ in 0..3 {
            for stream in ["s", "t"] {
                let reason = storage_reason(produce_to(&node, stream, 2).await);
                assert!(reason.contains("catalog"), "{reason}");
            }
            assert_eq!(fetch_all(&node, "s").await, vec![(0, 0), (1, 1)]);
        }
        assert!(disk
            .bytes(&catalog_path)
            .is_none_or(|b| b.iter().all(|x| *x == 0)));
        disk.set_full(false);
        let outcome = produce_until_stored(&node, "s", record(2)).await;
        assert!(appended_at(&outcome, 2), "{outcome:?}");
        let outcome = produce_until_stored(&node, "t", record(0)).await;
        assert!(appended_at(&outcome, 0), "{outcome:?}");
        let found = catalog::read(&disk.mount(), Path::new(DATA_DIR)).unwrap();
        let both = Created::from([("s".to_owned(), 1), ("t".to_owned(), 1)]);
        assert_eq!(found, catalog::Found::Recorded(both));
        stop(node, &disk).await;
    }

    #[tokio::test]
    async fn a_new_partition_the_catalog_cannot_record_waits_while_recorded_ones_go_on() {
        // Checks that only the partitions the catalog does not record are held back: with the
        // catalog unwritable (EPERM, an immutable file) a node restarted with a new stream u
        // takes writes on s and t, which the catalog recorded before, refuses u's with a
        // Storage error naming the catalog (without creating u's directory), and takes them
        // once the catalog can be written, with u recorded.
        let (env, disk) = crash_env();
        let node = Node::start(&config(), env).await.unwrap();
        assert!(appended_at(&produce(&node, 0).await, 0));
        stop(node, &disk).await;
        let catalog_path = catalog::catalog_path(Path::new(DATA_DIR));
        disk.set_immutable(&catalog_path, true);
        let config = config_with(&Extra {
            streams: "[[streams]]\nname = \"u\"\npartitions = 1\n",
            ..Extra::default()
        });
        let node = Node::start(&config, env_on(&disk)).await.unwrap();
        assert!(appended_at(&produce(&node, 1).await, 1));
        assert!(appended_at(&produce_to(&node, "t", 0).await, 0));
        for _ in 0..3 {
            let reason = storage_reason(produce_to(&node, "u", 0).await);
            assert!(reason.contains("catalog"), "{reason}");
        }
        let u_dir = partition_paths(Path::new(DATA_DIR), &StreamName::new("u").unwrap(), 0).dir;
        assert!(
            disk.files().keys().all(|p| !p.starts_with(&u_dir)),
            "u used before it was recorded"
        );
        disk.set_immutable(&catalog_path, false);
        let outcome = produce_until_stored(&node, "u", record(0)).await;
        assert!(appended_at(&outcome, 0), "{outcome:?}");
        let found = catalog::read(&disk.mount(), Path::new(DATA_DIR)).unwrap();
        let catalog::Found::Recorded(recorded) = found else {
            panic!("catalog not recorded: {found:?}");
        };
        assert_eq!(recorded.get("u"), Some(&1));
        stop(node, &disk).await;
    }

    /// The position of entry `i` (one record per entry) of segment `bytes`.
    fn entry_pos(bytes: &[u8], i: usize) -> usize {
        let mut pos = sluice_proto::segment::SEGMENT_HEADER_LEN as usize;
        for _ in 0..i {
            pos += sluice_proto::segment::ENTRY_HEADER_LEN as usize
                + u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        }
        pos
    }

    #[tokio::test]
    async fn a_corrupt_partition_is_read_only_and_the_rest_of_the_node_goes_on() {
        // Checks the reported bug at node level: a flipped bit in an acknowledged entry in the
        // middle of the active segment makes that partition refuse produces with a Storage
        // error naming the file and byte, its prefix stays fetchable, no later offset is handed
        // to a new record, and another stream on the same node works as before.
        let (env, disk) = crash_env();
        let node = Node::start(&config(), env).await.unwrap();
        for seq in 0..6 {
            assert!(appended_at(&produce(&node, seq).await, seq));
        }
        stop(node, &disk).await;
        let segment = first_segment("s");
        // Entry 3 of 6: skip the segment header and three entries.
        let pos = entry_pos(&disk.bytes(&segment).unwrap(), 3);
        disk.flip_bit(&segment, pos as u64 + 16, 3).unwrap();
        let bytes = disk.bytes(&segment).unwrap();

        let node = Node::start(&config(), env_on(&disk)).await.unwrap();
        assert_eq!(fetch_all(&node, "s").await, vec![(0, 0), (1, 1), (2, 2)]);
        for seq in [3, 6] {
            let RecordOutcome::Rejected(RecordRejection::Storage { reason }) =
                produce(&node, seq).await
            else {
                panic!("corrupt partition took a write");
            };
            assert!(
                reason.contains(segment.to_str().unwrap())
                    && reason.contains(&format!("byte {pos}")),
                "{reason}"
            );
        }
        assert!(appended_at(&produce_to(&node, "t", 0).await, 0));
        assert_eq!(fetch_all(&node, "t").await, vec![(0, 0)]);
        stop(node, &disk).await;
        assert_eq!(
            disk.bytes(&segment).unwrap(),
            bytes,
            "corruption was repaired"
        );
    }

    #[tokio::test]
    async fn damage_a_fetch_meets_while_running_stops_writes() {
        // Checks that an entry damaged under a running node is reported by the fetch that meets
        // it (an error, never a short answer) and that the partition then refuses produces with
        // a Storage error naming the file and byte, while another stream goes on.
        let (env, disk) = crash_env();
        let node = Node::start(&config(), env).await.unwrap();
        for seq in 0..4 {
            assert!(appended_at(&produce(&node, seq).await, seq));
        }
        let segment = first_segment("s");
        let pos = entry_pos(&disk.bytes(&segment).unwrap(), 1);
        disk.flip_bit(&segment, pos as u64 + 16, 3).unwrap();
        let peer = Arc::new(Identity::new("t", Role::Edge, "e").unwrap());
        let fetch = Message::FetchRequest(FetchRequest {
            request_id: 2,
            stream: StreamName::new("s").unwrap(),
            partition: PartitionId(0),
            from: FetchFrom::Earliest,
            events_max: 1000,
            bytes_max: 1 << 20,
            wait_ms: 0,
        });
        let answer = node.service().handle(peer, fetch).await;
        assert!(
            !matches!(answer, Message::FetchResponse(_)),
            "damaged read answered: {answer:?}"
        );
        let RecordOutcome::Rejected(RecordRejection::Storage { reason }) = produce(&node, 4).await
        else {
            panic!("damaged partition took a write");
        };
        assert!(
            reason.contains(segment.to_str().unwrap()) && reason.contains(&format!("byte {pos}")),
            "{reason}"
        );
        assert!(matches!(
            produce_to(&node, "t", 0).await,
            RecordOutcome::Appended { .. }
        ));
        stop(node, &disk).await;
    }
}
