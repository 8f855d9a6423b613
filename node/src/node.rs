//! `Node::start`: the entry point that builds a node from its config and environment — the
//! supervisor, one partition actor per partition (each recovering its log), the request service
//! — and, in production, `Node::serve` puts the QUIC listener in front of it. The simulator calls
//! `Node::start` with its own environment and talks to the service directly.

use crate::config::NodeConfig;
use crate::log::LogConfig;
use crate::metrics::Metrics;
use crate::partition::actor::{PartitionArgs, Registry};
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
    };
    let mut out = Vec::new();
    for stream in &config.streams {
        let name =
            StreamName::new(stream.name.clone()).map_err(|e| StartError::Config(e.to_string()))?;
        for partition in 0..stream.partitions {
            out.push(PartitionArgs {
                stream: name.clone(),
                partition: PartitionId(partition),
                dir: config
                    .node
                    .data_dir
                    .join("streams")
                    .join(name.as_str())
                    .join(partition.to_string()),
                env: env.clone(),
                core,
                log,
                registry: registry.clone(),
                log_guard: Arc::new(Mutex::new(())),
                durable_mark: Arc::new(std::sync::Mutex::new(None)),
            });
        }
    }
    Ok(out)
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

    /// Waits until the node fails on its own (a partition spent its restart budget).
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
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A real disk whose `fdatasync` fails while `fail_syncs` is above zero.
    struct FlakyDisk {
        inner: FsDisk,
        fail_syncs: Arc<AtomicU32>,
    }
    struct FlakyFile {
        inner: Arc<dyn DiskFile>,
        fail_syncs: Arc<AtomicU32>,
    }
    impl DiskFile for FlakyFile {
        fn size(&self) -> Result<u64, DiskError> {
            self.inner.size()
        }
        fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<usize, DiskError> {
            self.inner.read_at(pos, buf)
        }
        fn write_at(&self, pos: u64, data: &[u8]) -> Result<(), DiskError> {
            self.inner.write_at(pos, data)
        }
        fn allocate(&self, len: u64) -> Result<(), DiskError> {
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
            }))
        }
        fn remove(&self, path: &Path) -> Result<(), DiskError> {
            self.inner.remove(path)
        }
        fn sync_dir(&self, dir: &Path) -> Result<(), DiskError> {
            self.inner.sync_dir(dir)
        }
    }

    fn config(dir: &Path) -> NodeConfig {
        crate::config::from_toml(&format!(
            "[node]\nid = 1\ncluster = \"t\"\ndata_dir = \"{}\"\n[transport]\nlisten = \"127.0.0.1:0\"\nca_cert = \"x\"\ncert = \"x\"\nkey = \"x\"\n[supervision]\nrestarts_max = 3\n[[streams]]\nname = \"s\"\npartitions = 1\n[[acl]]\nidentity = \"sluice://t/edge/*\"\nproduce = [\"s\"]\nconsume = [\"s\"]\n",
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

    async fn produce(node: &Node, seq: u64) -> RecordOutcome {
        let peer = Arc::new(Identity::new("t", Role::Edge, "e").unwrap());
        let request = Message::ProduceRequest(ProduceRequest {
            request_id: 1,
            stream: StreamName::new("s").unwrap(),
            records: vec![record(seq)],
        });
        match node.service().handle(peer, request).await {
            Message::ProduceResponse(r) => r.outcomes[0].clone(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn failed_fsync_fences_the_partition_and_the_supervisor_restarts_it() {
        // Checks the fsync-failure path end to end: the record whose flush failed is not
        // acknowledged, the partition stops and is restarted by the supervisor, recovery keeps
        // what was acknowledged before, and the producer's retry of the failed record succeeds.
        let dir = tempfile::tempdir().unwrap();
        let fail_syncs = Arc::new(AtomicU32::new(0));
        let disk = Arc::new(FlakyDisk {
            inner: FsDisk,
            fail_syncs: fail_syncs.clone(),
        });
        let env = Env {
            clock: Arc::new(RealClock),
            disk,
            blocking: BlockingMode::ThreadPool,
            seed: 1,
        };
        let node = Node::start(&config(dir.path()), env).await.unwrap();
        assert!(
            matches!(produce(&node, 0).await, RecordOutcome::Appended { offset, .. } if offset.0 == 0)
        );
        fail_syncs.store(1, Ordering::SeqCst);
        let failed = produce(&node, 1).await;
        assert!(
            matches!(
                failed,
                RecordOutcome::Rejected(RecordRejection::Storage { .. })
            ),
            "{failed:?}"
        );
        // The retry may reach the partition while it restarts: retry until the deadline.
        let retry = async {
            loop {
                let outcome = produce(&node, 1).await;
                if !matches!(
                    outcome,
                    RecordOutcome::Rejected(
                        RecordRejection::Unavailable { .. } | RecordRejection::Storage { .. }
                    )
                ) {
                    return outcome;
                }
                tokio::task::yield_now().await;
            }
        };
        let outcome = tokio::time::timeout(Duration::from_secs(20), retry)
            .await
            .expect("partition did not come back within 20 s");
        // Recovery may have adopted (and made durable) the bytes whose first fdatasync failed;
        // then the retry is a duplicate. Either way the record is at offset 1 exactly once.
        assert!(
            matches!(outcome, RecordOutcome::Appended { offset, .. } if offset.0 == 1),
            "{outcome:?}"
        );
        let peer = Arc::new(Identity::new("t", Role::Edge, "e").unwrap());
        let fetch = Message::FetchRequest(FetchRequest {
            request_id: 2,
            stream: StreamName::new("s").unwrap(),
            partition: PartitionId(0),
            from: FetchFrom::Earliest,
            events_max: 10,
            bytes_max: 1 << 20,
            wait_ms: 0,
        });
        let Message::FetchResponse(read) = node.service().handle(peer, fetch).await else {
            panic!("fetch failed")
        };
        assert_eq!(
            read.events
                .iter()
                .map(|e| (e.offset.0, e.event.seq))
                .collect::<Vec<_>>(),
            vec![(0, 0), (1, 1)]
        );
        node.stop().await;
    }
}
