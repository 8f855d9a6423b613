//! `Node::start`: the entry point that builds a node from its config and environment — the
//! supervisor, one partition actor per partition (each recovering its log), the request service
//! — and, in production, `Node::serve` puts the QUIC listener in front of it. The simulator calls
//! `Node::start` with its own environment and talks to the service directly.

use crate::config::NodeConfig;
use crate::log::{LogConfig, LogPaths};
use crate::metrics::Metrics;
use crate::partition::actor::{PartitionArgs, Registry, RetryConfig};
use crate::partition::core::CoreConfig;
use crate::service::{QuicHandler, Service};
use crate::supervisor::{NodeSupervisor, SupervisorArgs, SupervisorMsg};
use ractor::{Actor, ActorRef};
use sluice_proto::certcheck::{load_checked, CertProblems, ExpectedIdentity, TlsFiles};
use sluice_proto::env::{Clock, Env};
use sluice_proto::net::server::{serve_with_gauges, ServerGauges};
use sluice_proto::net::{self, NetError};
use sluice_proto::{PartitionId, Role, StreamName};
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
}

fn partition_args(
    config: &NodeConfig,
    env: &Env,
    registry: &Arc<Registry>,
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
            out.push(PartitionArgs {
                stream: name.clone(),
                partition: PartitionId(partition),
                paths: partition_paths(&config.node.data_dir, &name, partition),
                env: env.clone(),
                core,
                log,
                retry,
                registry: registry.clone(),
                log_guard: Arc::new(Mutex::new(())),
                durable_mark: Arc::new(std::sync::Mutex::new(None)),
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
    LogPaths {
        dir: data_dir
            .join("streams")
            .join(stream.as_str())
            .join(partition.to_string()),
        manifest: data_dir
            .join("manifests")
            .join(stream.as_str())
            .join(format!("{partition}.manifest")),
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
        let args = SupervisorArgs {
            partitions: partition_args(config, &env, &registry)?,
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
        let task = tokio::spawn(
            serve_with_gauges(
                endpoint.clone(),
                config.node.cluster.clone(),
                vec![Role::Edge, Role::Admin],
                handler,
                limits,
                self.server_gauges.clone(),
                shutdown_rx,
            )
            .instrument(span),
        );
        info!(%addr, "listening");
        self.server = Some((shutdown_tx, task, endpoint));
        Ok(addr)
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

    /// Stops the listener, then the partitions in reverse start order, then the supervisor.
    pub async fn stop(self) {
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
    use crate::env::{FsDisk, RealClock};
    use sluice_proto::env::{BlockingMode, Disk, DiskError, DiskFile};
    use sluice_proto::msg::{
        FetchFrom, FetchRequest, Message, ProduceRequest, RecordOutcome, RecordRejection,
    };
    use sluice_proto::Identity;
    use sluice_proto::{BootEpoch, Payload, Reading, Record, SensorId, UnixMillis};
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    /// A real disk whose `fdatasync` fails while `fail_syncs` is above zero, and which is full
    /// (every write, allocation and free-space query says `ENOSPC`) while `full` is set.
    struct FlakyDisk {
        inner: FsDisk,
        fail_syncs: Arc<AtomicU32>,
        full: Arc<AtomicBool>,
    }
    struct FlakyFile {
        inner: Arc<dyn DiskFile>,
        fail_syncs: Arc<AtomicU32>,
        full: Arc<AtomicBool>,
    }
    fn no_space(op: &'static str) -> DiskError {
        DiskError::io(
            op,
            Path::new("flaky"),
            std::io::Error::new(std::io::ErrorKind::StorageFull, "injected ENOSPC"),
        )
    }
    impl DiskFile for FlakyFile {
        fn size(&self) -> Result<u64, DiskError> {
            self.inner.size()
        }
        fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<usize, DiskError> {
            self.inner.read_at(pos, buf)
        }
        fn write_at(&self, pos: u64, data: &[u8]) -> Result<(), DiskError> {
            if self.full.load(Ordering::SeqCst) {
                return Err(no_space("write"));
            }
            self.inner.write_at(pos, data)
        }
        fn allocate(&self, len: u64) -> Result<(), DiskError> {
            if self.full.load(Ordering::SeqCst) {
                return Err(no_space("fallocate"));
            }
            self.inner.allocate(len)
        }
        fn truncate(&self, len: u64) -> Result<(), DiskError> {
            self.inner.truncate(len)
        }
        fn sync_data(&self) -> Result<(), DiskError> {
            if self.fail_syncs.load(Ordering::SeqCst) > 0 {
                self.fail_syncs.fetch_sub(1, Ordering::SeqCst);
                return Err(DiskError::io(
                    "fdatasync",
                    Path::new("flaky"),
                    std::io::Error::other("injected EIO"),
                ));
            }
            self.inner.sync_data()
        }
    }
    impl Disk for FlakyDisk {
        fn create_dir_all(&self, dir: &Path) -> Result<(), DiskError> {
            self.inner.create_dir_all(dir)
        }
        fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError> {
            self.inner.list(dir)
        }
        fn open(&self, path: &Path, create: bool) -> Result<Arc<dyn DiskFile>, DiskError> {
            Ok(Arc::new(FlakyFile {
                inner: self.inner.open(path, create)?,
                fail_syncs: self.fail_syncs.clone(),
                full: self.full.clone(),
            }))
        }
        fn remove(&self, path: &Path) -> Result<(), DiskError> {
            self.inner.remove(path)
        }
        fn sync_dir(&self, dir: &Path) -> Result<(), DiskError> {
            self.inner.sync_dir(dir)
        }
        fn available_bytes(&self, dir: &Path) -> Result<Option<u64>, DiskError> {
            if self.full.load(Ordering::SeqCst) {
                return Ok(Some(0));
            }
            self.inner.available_bytes(dir)
        }
    }

    struct Faults {
        fail_syncs: Arc<AtomicU32>,
        full: Arc<AtomicBool>,
    }

    fn flaky_env() -> (Env, Faults) {
        let faults = Faults {
            fail_syncs: Arc::new(AtomicU32::new(0)),
            full: Arc::new(AtomicBool::new(false)),
        };
        let disk = Arc::new(FlakyDisk {
            inner: FsDisk,
            fail_syncs: faults.fail_syncs.clone(),
            full: faults.full.clone(),
        });
        let env = Env {
            clock: Arc::new(RealClock),
            disk,
            blocking: BlockingMode::ThreadPool,
            seed: 1,
        };
        (env, faults)
    }

    fn config(dir: &Path) -> NodeConfig {
        crate::config::from_toml(&format!(
            "[node]\nid = 1\ncluster = \"t\"\ndata_dir = \"{}\"\n[transport]\nlisten = \"127.0.0.1:0\"\nca_cert = \"x\"\ncert = \"x\"\nkey = \"x\"\n[storage]\nwrite_retry_initial_ms = 10\nwrite_retry_max_ms = 50\n[supervision]\nrestarts_max = 3\n[[streams]]\nname = \"s\"\npartitions = 1\n[[streams]]\nname = \"t\"\npartitions = 1\n[[acl]]\nidentity = \"sluice://t/edge/*\"\nproduce = [\"s\", \"t\"]\nconsume = [\"s\", \"t\"]\n",
            dir.display()
        ))
        .unwrap()
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

    async fn produce_to(node: &Node, stream: &str, seq: u64) -> RecordOutcome {
        let peer = Arc::new(Identity::new("t", Role::Edge, "e").unwrap());
        let request = Message::ProduceRequest(ProduceRequest {
            request_id: 1,
            stream: StreamName::new(stream).unwrap(),
            records: vec![record(seq)],
        });
        match node.service().handle(peer, request).await {
            Message::ProduceResponse(r) => r.outcomes[0].clone(),
            other => panic!("unexpected {other:?}"),
        }
    }

    async fn produce(node: &Node, seq: u64) -> RecordOutcome {
        produce_to(node, "s", seq).await
    }

    /// `(offset, seq)` of everything fetchable from stream `stream`.
    async fn fetch_all(node: &Node, stream: &str) -> Vec<(u64, u64)> {
        let peer = Arc::new(Identity::new("t", Role::Edge, "e").unwrap());
        let fetch = Message::FetchRequest(FetchRequest {
            request_id: 2,
            stream: StreamName::new(stream).unwrap(),
            partition: PartitionId(0),
            from: FetchFrom::Earliest,
            events_max: 1000,
            bytes_max: 1 << 20,
            wait_ms: 0,
        });
        match node.service().handle(peer, fetch).await {
            Message::FetchResponse(read) => read
                .events
                .iter()
                .map(|e| (e.offset.0, e.event.seq))
                .collect(),
            other => panic!("fetch failed: {other:?}"),
        }
    }

    fn is_storage(outcome: &RecordOutcome) -> bool {
        matches!(
            outcome,
            RecordOutcome::Rejected(RecordRejection::Storage { .. })
        )
    }

    /// Produces `seq` until it is no longer refused for storage or availability, within 20 s.
    async fn produce_until_stored(node: &Node, seq: u64) -> RecordOutcome {
        let retry = async {
            loop {
                let outcome = produce(node, seq).await;
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
        let dir = tempfile::tempdir().unwrap();
        let (env, faults) = flaky_env();
        let node = Node::start(&config(dir.path()), env).await.unwrap();
        assert!(
            matches!(produce(&node, 0).await, RecordOutcome::Appended { offset, .. } if offset.0 == 0)
        );
        faults.fail_syncs.store(1, Ordering::SeqCst);
        let failed = produce(&node, 1).await;
        assert!(is_storage(&failed), "{failed:?}");
        assert_eq!(fetch_all(&node, "s").await, vec![(0, 0)]);
        let outcome = produce_until_stored(&node, 1).await;
        // Recovery may have adopted (and made durable) the bytes whose first fdatasync failed;
        // then the retry is a duplicate. Either way the record is at offset 1 exactly once.
        assert!(
            matches!(outcome, RecordOutcome::Appended { offset, .. } if offset.0 == 1),
            "{outcome:?}"
        );
        assert_eq!(fetch_all(&node, "s").await, vec![(0, 0), (1, 1)]);
        node.stop().await;
    }

    #[tokio::test]
    async fn a_full_disk_refuses_writes_keeps_reads_and_recovers_when_space_returns() {
        // Checks the full-disk path: with every write failing ENOSPC the node stays up, produces
        // are refused with a Storage error, fetches still return what was acknowledged, and once
        // space returns the partition takes writes again without a restart.
        let dir = tempfile::tempdir().unwrap();
        let (env, faults) = flaky_env();
        let node = Node::start(&config(dir.path()), env).await.unwrap();
        for seq in 0..3 {
            assert!(matches!(
                produce(&node, seq).await,
                RecordOutcome::Appended { .. }
            ));
        }
        faults.full.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            let refused = produce(&node, 3).await;
            assert!(is_storage(&refused), "{refused:?}");
            assert_eq!(fetch_all(&node, "s").await, vec![(0, 0), (1, 1), (2, 2)]);
        }
        faults.full.store(false, Ordering::SeqCst);
        let outcome = produce_until_stored(&node, 3).await;
        assert!(
            matches!(outcome, RecordOutcome::Appended { offset, .. } if offset.0 == 3),
            "{outcome:?}"
        );
        assert_eq!(fetch_all(&node, "s").await.len(), 4);
        node.stop().await;
    }

    #[tokio::test]
    async fn a_node_started_on_a_full_disk_serves_what_it_has() {
        // Checks that a node whose disk is full at start-up starts, serves the acknowledged
        // records, refuses produces with a Storage error, and takes them once space returns.
        let dir = tempfile::tempdir().unwrap();
        let (env, faults) = flaky_env();
        let node = Node::start(&config(dir.path()), env.clone()).await.unwrap();
        for seq in 0..2 {
            assert!(matches!(
                produce(&node, seq).await,
                RecordOutcome::Appended { .. }
            ));
        }
        node.stop().await;
        faults.full.store(true, Ordering::SeqCst);
        let node = Node::start(&config(dir.path()), env).await.unwrap();
        assert_eq!(fetch_all(&node, "s").await, vec![(0, 0), (1, 1)]);
        let refused = produce(&node, 2).await;
        assert!(is_storage(&refused), "{refused:?}");
        // Stream t never had a segment: it cannot preallocate one, and says so.
        let refused = produce_to(&node, "t", 0).await;
        assert!(is_storage(&refused), "{refused:?}");
        faults.full.store(false, Ordering::SeqCst);
        let outcome = produce_until_stored(&node, 2).await;
        assert!(
            matches!(outcome, RecordOutcome::Appended { offset, .. } if offset.0 == 2),
            "{outcome:?}"
        );
        node.stop().await;
    }

    #[tokio::test]
    async fn a_corrupt_partition_is_read_only_and_the_rest_of_the_node_goes_on() {
        // Checks the reported bug at node level: a flipped bit in an acknowledged entry in the
        // middle of the active segment makes that partition refuse produces with a Storage
        // error naming the file and byte, its prefix stays fetchable, no later offset is handed
        // to a new record, and another stream on the same node works as before.
        let dir = tempfile::tempdir().unwrap();
        let (env, _faults) = flaky_env();
        let node = Node::start(&config(dir.path()), env.clone()).await.unwrap();
        for seq in 0..6 {
            assert!(matches!(
                produce(&node, seq).await,
                RecordOutcome::Appended { .. }
            ));
        }
        node.stop().await;
        let segment = partition_paths(dir.path(), &StreamName::new("s").unwrap(), 0)
            .dir
            .join("00000000000000000000.log");
        let mut bytes = std::fs::read(&segment).unwrap();
        // Entry 3 of 6 (one record per entry): skip the segment header and three entries.
        let mut pos = sluice_proto::segment::SEGMENT_HEADER_LEN as usize;
        for _ in 0..3 {
            pos += sluice_proto::segment::ENTRY_HEADER_LEN as usize
                + u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        }
        bytes[pos + 16] ^= 0x08;
        std::fs::write(&segment, &bytes).unwrap();

        let node = Node::start(&config(dir.path()), env).await.unwrap();
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
        assert!(matches!(
            produce_to(&node, "t", 0).await,
            RecordOutcome::Appended { offset, .. } if offset.0 == 0
        ));
        assert_eq!(fetch_all(&node, "t").await, vec![(0, 0)]);
        node.stop().await;
        assert_eq!(
            std::fs::read(&segment).unwrap(),
            bytes,
            "corruption was repaired"
        );
    }

    #[tokio::test]
    async fn damage_a_fetch_meets_while_running_stops_writes() {
        // Checks that an entry damaged under a running node is reported by the fetch that meets
        // it (an error, never a short answer) and that the partition then refuses produces with
        // a Storage error naming the file and byte, while another stream goes on.
        let dir = tempfile::tempdir().unwrap();
        let (env, _faults) = flaky_env();
        let node = Node::start(&config(dir.path()), env).await.unwrap();
        for seq in 0..4 {
            assert!(matches!(
                produce(&node, seq).await,
                RecordOutcome::Appended { .. }
            ));
        }
        let segment = partition_paths(dir.path(), &StreamName::new("s").unwrap(), 0)
            .dir
            .join("00000000000000000000.log");
        let mut bytes = std::fs::read(&segment).unwrap();
        let first = sluice_proto::segment::SEGMENT_HEADER_LEN as usize;
        let pos = first
            + sluice_proto::segment::ENTRY_HEADER_LEN as usize
            + u32::from_le_bytes(bytes[first..first + 4].try_into().unwrap()) as usize;
        bytes[pos + 16] ^= 0x08;
        std::fs::write(&segment, &bytes).unwrap();
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
        node.stop().await;
    }
}
