//! The agent: wires sources → validation → spool → uplink, and runs them.
//!
//! [`Agent::start`] opens one spool per destination stream under `<data_dir>/spool/<stream>/`
//! (the `[spool]` budget split evenly), builds every source (a setup error refuses to start),
//! spawns the agent loop and the source supervisor, and serves `/status` and `/metrics` when
//! configured. The loop is one task that owns the spools and the [`UplinkCore`]: it takes offers
//! from the sources' bounded queue, validates and spools them, runs the spools' timers (syncs,
//! expiry), pulls durable records into produce requests, and applies the answers. Spool calls
//! run through `run_blocking` (the blocking pool in production, inline in the simulator).
//!
//! Backpressure: when a spool is full (policy `block`, or every evictable segment pinned), the
//! offer is parked (and so are later offers for that stream, in order) until acknowledgements or
//! expiry free space; its source feels it as an `offer` that does not return, while sources of
//! other streams go on. Parked offers are bounded by `sink_queue_max`: beyond it the loop stops
//! taking offers at all, so nothing grows without bound.
//!
//! A spool error (a full disk, a failed write or `fdatasync`, corruption) never ends the loop:
//! that stream's spool is dropped (its files are trusted only up to its last successful sync,
//! see `spool`), offers for the stream are refused (`spool_unavailable`, no seq issued), the
//! other streams go on, and the spool is reopened with a capped, jittered backoff
//! (`spool.retry_backoff_*_ms`). The reopen declares the seqs issued but not durable as
//! `Dropped { reason: Storage }` and delivers what the disk holds. A spool that cannot be opened
//! at start (a disk already full) starts in that state too, so the agent always starts. A clean [`Agent::stop`] stops the
//! sources, gives requests in flight a short grace, and closes the spools (syncing and giving
//! back seq reservations, so the next start declares nothing lost).

pub use crate::config::spool_share;
use crate::config::{EdgeConfig, SourceSpec};
pub use crate::error::EdgeError;
use crate::metrics::{Metrics, SpoolStatus};
use crate::source::supervisor::{ChildSpec, SourceSupervisor, SupervisorArgs, SupervisorMsg};
use crate::source::{
    OfferObserver, Offered, Refusal, SinkRequest, SourceContext, SourceReading, SourceSink,
};
use crate::spool::{DurablePoint, Now, Rejected, Spool, SpoolConfig, SpoolError, StreamKey};
use crate::uplink::{Output, Severity, UplinkCore, UplinkLimits};
use crate::validate::Validator;
use ractor::{Actor, ActorRef};
use sluice_proto::backoff::Backoff;
use sluice_proto::env::{Connection, Disk, Env, Transport, TransportError, TransportErrorKind};
use sluice_proto::msg::{Message, ProduceRequest, ProduceResponse};
use sluice_proto::os::run_blocking;
use sluice_proto::{Record, StreamName};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn, Instrument};

/// Salt of the uplink's backoff RNG.
const UPLINK_RNG_SALT: u64 = 0x5550_4c49_4e4b; // "UPLINK"
/// Salt of the spool-reopen backoff RNGs (owner: the stream's index).
const SPOOL_RETRY_RNG_SALT: u64 = 0x5350_4f4f_4c52; // "SPOOLR"
/// Offers taken from the queue at once (one blocking spool call for all of them).
const OFFERS_PER_STEP_MAX: usize = 256;
/// How often spool figures are refreshed in the metrics.
const METRICS_REFRESH: Duration = Duration::from_secs(1);
/// How long a clean stop waits for requests in flight.
const STOP_GRACE_MAX: Duration = Duration::from_secs(5);
/// Validation refusals of one source and reason are logged at most this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// A running agent.
pub struct Agent {
    metrics: Arc<Metrics>,
    supervisor: ActorRef<SupervisorMsg>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), EdgeError>>>,
    status: Option<(SocketAddr, JoinHandle<()>)>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").finish_non_exhaustive()
    }
}

impl Agent {
    /// Starts the agent with `config` on `env`, reaching the cluster through `transport`.
    /// `identity` names the agent in its status (its certificate's identity).
    pub async fn start(
        config: &EdgeConfig,
        env: Env,
        transport: Arc<dyn Transport>,
        identity: &str,
    ) -> Result<Agent, EdgeError> {
        Self::start_observed(config, env, transport, identity, None).await
    }

    /// [`Agent::start`], telling `observer` the outcome of every offer as its source learns it
    /// (the simulator's checkers record accepted seqs this way).
    pub async fn start_observed(
        config: &EdgeConfig,
        env: Env,
        transport: Arc<dyn Transport>,
        identity: &str,
        observer: Option<Arc<dyn OfferObserver>>,
    ) -> Result<Agent, EdgeError> {
        let names: Vec<String> = config.sources.iter().map(|s| s.name().to_owned()).collect();
        let metrics = Metrics::new(identity, &names);
        let spools = open_spools(config, &env, observer.clone()).await?;
        let mut children = Vec::with_capacity(config.sources.len());
        let (sink_tx, sink_rx) = mpsc::channel(config.edge.sink_queue_max.max(1) as usize);
        for (idx, spec) in config.sources.iter().enumerate() {
            let source = spec.build()?;
            let state_dir = config.edge.data_dir.join("sources").join(spec.name());
            env.disk
                .create_dir_all(&state_dir)
                .map_err(|e| setup(&format!("source directory {}", state_dir.display()), e))?;
            let sink = SourceSink::new(
                spec.name(),
                idx,
                sink_tx.clone(),
                metrics.clone(),
                env.clock.clone(),
            )
            .observed_by(observer.clone());
            let context = SourceContext {
                sink,
                env: env.clone(),
                source_idx: idx,
                state_dir,
            };
            children.push(ChildSpec {
                spec: spec.clone(),
                source,
                context,
            });
        }
        drop(sink_tx);
        let status = match config.status.listen {
            Some(listen) => Some(crate::status::serve(listen, metrics.clone()).await?),
            None => None,
        };
        let agent_loop = AgentLoop::new(config, env.clone(), spools, transport, sink_rx, &metrics);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(agent_loop.run(stop_rx).in_current_span());
        let args = SupervisorArgs {
            children,
            supervision: config.supervision,
            clock: env.clock.clone(),
            metrics: metrics.clone(),
        };
        let (supervisor, _join) = Actor::spawn(None, SourceSupervisor, args)
            .await
            .map_err(|e| setup("source supervisor", e))?;
        info!(
            n_sources = config.sources.len(),
            n_streams = config.streams().len(),
            "edge agent started"
        );
        Ok(Agent {
            metrics,
            supervisor,
            stop: Some(stop_tx),
            task: Some(task),
            status,
        })
    }

    /// The agent's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Where `/status` and `/metrics` are served, if they are.
    pub fn status_addr(&self) -> Option<SocketAddr> {
        self.status.as_ref().map(|(addr, _)| *addr)
    }

    /// Stops the sources (in reverse start order) and keeps delivering what is spooled; for a
    /// drain before [`Agent::stop`].
    pub async fn stop_sources(&self) {
        let _ = ractor::call!(self.supervisor, SupervisorMsg::StopChildren);
    }

    /// Waits until the agent loop ends on its own (it only does on an error).
    pub async fn failed(&mut self) -> EdgeError {
        let Some(task) = self.task.as_mut() else {
            return EdgeError::Ended("already stopped".into());
        };
        let result = task.await;
        self.task = None;
        match result {
            Ok(Err(error)) => error,
            Ok(Ok(())) => EdgeError::Ended("the loop returned".into()),
            Err(e) => EdgeError::Ended(e.to_string()),
        }
    }

    /// Stops cleanly: sources first, then the loop (which closes the spools).
    pub async fn stop(mut self) -> Result<(), EdgeError> {
        let _ = ractor::call!(self.supervisor, SupervisorMsg::StopChildren);
        self.supervisor.stop(None);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some((_, server)) = self.status.take() {
            server.abort();
        }
        match self.task.take() {
            Some(task) => match task.await {
                Ok(result) => result,
                Err(e) => Err(EdgeError::Ended(e.to_string())),
            },
            None => Ok(()),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Dropped without `stop` (a test, a crash path): tear down without closing the spools.
        self.supervisor.stop(None);
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some((_, server)) = self.status.take() {
            server.abort();
        }
    }
}

fn setup(what: &str, error: impl std::fmt::Display) -> EdgeError {
    EdgeError::Setup {
        what: what.to_owned(),
        reason: error.to_string(),
    }
}

/// The spools of every destination stream, and a cursor for round-robin sending.
struct Spools {
    by_stream: BTreeMap<StreamName, Spool>,
    /// Streams whose spool failed, waiting to be reopened.
    down: BTreeMap<StreamName, Down>,
    /// Reopen schedule per stream (reset once the reopened spool takes a reading).
    backoffs: BTreeMap<StreamName, Backoff>,
    disk: Arc<dyn Disk>,
    root: PathBuf,
    share: SpoolConfig,
    cursor: usize,
    /// Told the epoch of every open (the simulator's checkers follow epochs this way).
    observer: Option<Arc<dyn OfferObserver>>,
}

/// A stream whose spool failed.
struct Down {
    /// `Some(point)`: the spool failed while open, trust its files up to `point`
    /// ([`Spool::reopen`]); `None`: it never opened ([`Spool::open`]).
    after: Option<Option<DurablePoint>>,
    retry_at: Instant,
    error: String,
}

type SharedSpools = Arc<Mutex<Spools>>;

fn lock(spools: &SharedSpools) -> MutexGuard<'_, Spools> {
    spools.lock().unwrap_or_else(PoisonError::into_inner)
}

fn spool_error(stream: &StreamName, error: SpoolError) -> EdgeError {
    EdgeError::Spool {
        stream: stream.to_string(),
        error,
    }
}

/// The streams that have (or get) a spool: every configured one, and any a spool directory
/// exists for (records spooled before a configuration change are still delivered). Sorted.
pub fn spool_streams(config: &EdgeConfig, disk: &dyn Disk) -> Vec<StreamName> {
    let root = config.edge.data_dir.join("spool");
    let mut streams = config.streams();
    if let Ok(names) = disk.list(&root) {
        for name in names {
            // Only stream directories live at the top of the spool directory.
            if let Ok(stream) = StreamName::new(name) {
                if !streams.contains(&stream) {
                    streams.push(stream);
                }
            }
        }
    }
    streams.sort();
    streams
}

/// Opens the spool of every stream of [`spool_streams`].
async fn open_spools(
    config: &EdgeConfig,
    env: &Env,
    observer: Option<Arc<dyn OfferObserver>>,
) -> Result<SharedSpools, EdgeError> {
    let root = config.edge.data_dir.join("spool");
    env.disk
        .create_dir_all(&root)
        .map_err(|e| setup(&format!("spool directory {}", root.display()), e))?;
    let streams = spool_streams(config, &*env.disk);
    let configured = config.streams();
    for stream in streams.iter().filter(|s| !configured.contains(s)) {
        warn!(%stream, "spool of a stream no longer configured: delivering what it holds");
    }
    let share = spool_share(config, streams.len());
    let mut spools = Spools {
        by_stream: BTreeMap::new(),
        down: BTreeMap::new(),
        backoffs: BTreeMap::new(),
        disk: env.disk.clone(),
        root,
        share,
        cursor: 0,
        observer,
    };
    let (initial, max) = (
        Duration::from_millis(share.retry_backoff_initial_ms),
        Duration::from_millis(share.retry_backoff_max_ms),
    );
    for (idx, stream) in streams.into_iter().enumerate() {
        let rng = env.rng(idx as u64, SPOOL_RETRY_RNG_SALT);
        spools
            .backoffs
            .insert(stream.clone(), Backoff::new(initial, max, rng));
        let dir = spools.root.join(stream.as_str());
        let disk = env.disk.clone();
        let now = Now {
            mono: env.clock.now(),
            wall: env.clock.wall(),
        };
        let opened = run_blocking(env.blocking, move || Spool::open(disk, &dir, share, now)).await;
        match opened {
            Ok((spool, report)) => {
                spools.opened(&stream, &report);
                spools.by_stream.insert(stream, spool);
            }
            Err(error) => spools.fail(&stream, None, &error, now),
        }
    }
    Ok(Arc::new(Mutex::new(spools)))
}

fn log_opened(stream: &StreamName, report: &crate::spool::SpoolReport) {
    for damage in &report.damage {
        error!(%stream, path = %damage.path, pos = damage.pos, len = damage.len,
            reason = %damage.reason,
            "spool segment damaged: kept every frame that checks, declared what it held (corrupted)");
    }
    for declared in &report.power_loss {
        warn!(%stream, sensor = %declared.key.sensor, epoch = %declared.key.epoch,
            seq = declared.seq, seq_last = declared.seq_last, reason = ?declared.reason,
            "readings lost to a power cut or a failed disk declared dropped");
    }
    info!(%stream, epoch = %report.epoch, n_records = report.n_records,
        truncated_bytes = report.truncated_bytes,
        downtime_counted_ms = report.downtime_counted_ms,
        downtime_wall_ms = report.downtime_wall_ms, "spool opened");
}

/// What an append came to.
enum Appended {
    Accepted {
        epoch: u64,
        seq: u64,
    },
    /// The spool is full: the reading waits (it comes back).
    Full(SourceReading),
    Refused(Refusal),
    /// The spool issued the reading seq `seq` of `key`, then failed before the append
    /// returned: the reading is stored, declared lost (`Storage`) by the reopen, or never
    /// counted (the reservation of its seq did not reach the disk). The reopened spool tells
    /// which ([`Spools::in_doubt_outcome`]); until then the source waits for its answer.
    InDoubt {
        stream: StreamName,
        key: StreamKey,
        seq: u64,
    },
}

/// An offer whose append failed after its seq was issued, waiting for the spool's reopen.
struct InDoubt {
    source_idx: usize,
    stream: StreamName,
    key: StreamKey,
    seq: u64,
    reply: oneshot::Sender<Offered>,
}

/// An offer waiting for its append.
struct Pending {
    source_idx: usize,
    reading: SourceReading,
    reply: oneshot::Sender<Offered>,
}

impl Spools {
    /// Logs what the open of `stream`'s spool found and tells the observer its epoch.
    fn opened(&self, stream: &StreamName, report: &crate::spool::SpoolReport) {
        log_opened(stream, report);
        if let Some(observer) = &self.observer {
            observer.spool_opened(stream, report.epoch);
        }
    }

    /// Takes the spool of `stream` out of service after `error` and schedules its reopen.
    /// `after` says what to trust on reopen (see [`Down`]).
    fn fail(
        &mut self,
        stream: &StreamName,
        after: Option<Option<DurablePoint>>,
        error: &SpoolError,
        now: Now,
    ) {
        self.by_stream.remove(stream);
        let wait = self.backoffs.get_mut(stream).map_or(
            Duration::from_millis(self.share.retry_backoff_max_ms),
            |b| b.next_delay(),
        );
        error!(%stream, %error, retry_in_ms = wait.as_millis() as u64,
            "spool failed: its readings are refused until it reopens; the other streams go on");
        // A retry keeps the first failure's durable point: nothing written since is trusted.
        let after = match self.down.remove(stream) {
            Some(previous) => previous.after,
            None => after,
        };
        self.down.insert(
            stream.clone(),
            Down {
                after,
                retry_at: now.mono + wait,
                error: error.to_string(),
            },
        );
    }

    /// Takes an open spool that just failed out of service.
    fn failed(&mut self, stream: &StreamName, error: &SpoolError, now: Now) {
        let point = self.by_stream.get(stream).map(|s| s.durable_point());
        self.fail(stream, Some(point.flatten()), error, now);
    }

    /// Whether seq `seq` of `key`, issued by the spool of `stream` just before it failed
    /// ([`Appended::InDoubt`]), is accounted for: `None` while the spool is still down; after
    /// the reopen, true when the recovered spool holds it, as a record or inside a `Storage`
    /// declaration (it lay under a durable reservation), false when the disk never got its
    /// reservation (no seq of it survives).
    fn in_doubt_outcome(&self, stream: &StreamName, key: &StreamKey, seq: u64) -> Option<bool> {
        if self.down.contains_key(stream) {
            return None;
        }
        let spool = self.by_stream.get(stream)?;
        Some(
            spool
                .core()
                .stream_ends(key)
                .is_some_and(|(_, issued_end)| issued_end > seq),
        )
    }

    /// Reopens the failed spools whose retry is due.
    fn reopen_due(&mut self, now: Now) {
        let due: Vec<StreamName> = self
            .down
            .iter()
            .filter(|(_, d)| d.retry_at <= now.mono)
            .map(|(s, _)| s.clone())
            .collect();
        for stream in due {
            let Some(down) = self.down.get(&stream) else {
                continue;
            };
            let dir = self.root.join(stream.as_str());
            let disk = self.disk.clone();
            let opened = match down.after {
                Some(point) => Spool::reopen(disk, &dir, self.share, now, point),
                None => Spool::open(disk, &dir, self.share, now),
            };
            match opened {
                Ok((spool, report)) => {
                    self.down.remove(&stream);
                    self.opened(&stream, &report);
                    self.by_stream.insert(stream, spool);
                }
                Err(error) => self.fail(&stream, None, &error, now),
            }
        }
    }

    fn append(&mut self, now: Now, reading: SourceReading) -> Result<Appended, EdgeError> {
        if let Some(down) = self.down.get(&reading.stream) {
            return Ok(Appended::Refused(Refusal::Spool {
                label: "spool_unavailable",
                reason: format!(
                    "the spool of stream {} failed ({}); it is being reopened",
                    reading.stream, down.error
                ),
            }));
        }
        let Some(spool) = self.by_stream.get_mut(&reading.stream) else {
            return Ok(Appended::Refused(Refusal::Spool {
                label: "unknown_stream",
                reason: format!("no spool for stream {}", reading.stream),
            }));
        };
        let key = StreamKey {
            sensor: reading.sensor.clone(),
            epoch: spool.epoch(),
        };
        let issued = |spool: &Spool| spool.core().stream_ends(&key).map_or(0, |(_, end)| end);
        let issued_before = issued(spool);
        let result = match spool.append(
            now,
            reading.sensor.clone(),
            reading.device_time,
            reading.payload.clone(),
        ) {
            Ok(result) => result,
            Err(error) => {
                let issued_after = issued(spool);
                self.failed(&reading.stream, &error, now);
                if issued_after > issued_before {
                    // A later write or sync of the append failed after the seq was issued:
                    // the reading may be stored or declared, so "refused" could be a lie (found
                    // by `sluice-sim --seed 24 --edge-disk-faults`). The reopen tells.
                    return Ok(Appended::InDoubt {
                        stream: reading.stream.clone(),
                        key,
                        seq: issued_before,
                    });
                }
                // The reading got no seq: its source is told, the others go on.
                return Ok(Appended::Refused(Refusal::Spool {
                    label: "spool_unavailable",
                    reason: format!("the spool of stream {} failed: {error}", reading.stream),
                }));
            }
        };
        Ok(match result {
            Ok(a) => {
                if let Some(backoff) = self.backoffs.get_mut(&reading.stream) {
                    if backoff.n_failures() > 0 {
                        backoff.reset();
                    }
                }
                Appended::Accepted {
                    epoch: a.epoch.0,
                    seq: a.seq,
                }
            }
            Err(Rejected::Full) => Appended::Full(reading),
            Err(rejected) => {
                let (label, reason) = match rejected {
                    Rejected::TooLarge { bytes, max } => (
                        "too_large",
                        format!(
                            "a reading of {bytes} bytes exceeds spool.record_bytes_max ({max})"
                        ),
                    ),
                    Rejected::TooManySensors { max } => (
                        "too_many_sensors",
                        format!(
                            "sensor {} would exceed spool.sensors_max ({max}) of stream {}",
                            reading.sensor, reading.stream
                        ),
                    ),
                    other => ("reserved_payload", format!("{other:?}")),
                };
                Appended::Refused(Refusal::Spool { label, reason })
            }
        })
    }

    /// Durable records of the next stream (round-robin) that has any.
    fn next_batch(
        &mut self,
        now: Now,
        records_max: u32,
        bytes_max: u64,
    ) -> Result<Option<(StreamName, Vec<Record>)>, EdgeError> {
        let n = self.by_stream.len();
        let mut failed = Vec::new();
        let mut found = None;
        for step in 0..n {
            let idx = (self.cursor + step) % n;
            let Some((stream, spool)) = self.by_stream.iter_mut().nth(idx) else {
                continue;
            };
            match spool.next_batch(records_max, bytes_max) {
                Ok(records) if !records.is_empty() => {
                    self.cursor = idx + 1;
                    found = Some((stream.clone(), records));
                    break;
                }
                Ok(_) => {}
                Err(error) => failed.push((stream.clone(), error)),
            }
        }
        for (stream, error) in failed {
            self.failed(&stream, &error, now);
        }
        Ok(found)
    }

    /// Applies the uplink's verdicts in order: acknowledgements, and readings the node refused
    /// as invalid (replaced by declarations). Returns how many records the acks released.
    fn apply(&mut self, now: Now, verdicts: &[Verdict]) -> Result<Applied, EdgeError> {
        let mut n = 0;
        let mut moved = Moved::default();
        for verdict in verdicts {
            let (stream, key) = match verdict {
                Verdict::Ack { stream, key, .. } | Verdict::Refused { stream, key, .. } => {
                    (stream, key)
                }
                Verdict::Expired { stream, key } => {
                    self.expired(now, stream, key, &mut moved);
                    continue;
                }
            };
            // A spool that failed forgets the verdicts: its records are resent after the
            // reopen (the node deduplicates) and a refused reading is refused again.
            let Some(spool) = self.by_stream.get_mut(stream) else {
                continue;
            };
            let result = match verdict {
                Verdict::Ack { seq_through, .. } => {
                    spool.ack(now, key, *seq_through).map(|acked| n += acked)
                }
                Verdict::Expired { .. } => Ok(()),
                Verdict::Refused { seq, reason, .. } => {
                    spool.refused(now, key, *seq).map(|declared| {
                        if declared {
                            error!(%stream, sensor = %key.sensor, epoch = %key.epoch, seq, %reason,
                                "node refused a reading as invalid; declared it dropped (invalid) so its sensor moves on");
                        }
                    })
                }
            };
            if let Err(error) = result {
                let stream = stream.clone();
                self.failed(&stream, &error, now);
            }
        }
        Ok((n, moved))
    }

    /// The node forgot the producer state of `key` (`ProducerExpired`): when `key` is in the
    /// spool's current epoch, the spool is closed and opened again, which starts a newer
    /// epoch as a boot does (what to resend is read first: a reopen pins everything below the
    /// send mark); then the spool closes `key`'s unacknowledged range with a
    /// declaration and resends its never-sent readings in the current epoch. A spool that
    /// fails on the way is taken out of service like any failed spool (its records are resent
    /// after the reopen and refused again, which brings the verdict back).
    fn expired(&mut self, now: Now, stream: &StreamName, key: &StreamKey, moved: &mut Moved) {
        let mut resend = None;
        if self
            .by_stream
            .get(stream)
            .is_some_and(|s| s.epoch() == key.epoch)
        {
            let Some(mut spool) = self.by_stream.remove(stream) else {
                return;
            };
            // Asked before the reopen, which forgets what was handed out (the current epoch's
            // items were all issued in this open, so what it says is exact).
            match spool.to_resend(now, key) {
                Ok(records) => resend = Some(records),
                Err(error) => {
                    let point = spool.durable_point();
                    self.fail(stream, Some(point), &error, now);
                    return;
                }
            }
            let point = spool.durable_point();
            if let Err(error) = spool.close(now) {
                self.fail(stream, Some(point), &error, now);
                return;
            }
            let dir = self.root.join(stream.as_str());
            match Spool::open(self.disk.clone(), &dir, self.share, now) {
                Ok((spool, report)) => {
                    self.opened(stream, &report);
                    self.by_stream.insert(stream.clone(), spool);
                }
                Err(error) => {
                    self.fail(stream, None, &error, now);
                    return;
                }
            }
        }
        let Some(spool) = self.by_stream.get_mut(stream) else {
            return;
        };
        let resent_before = spool.stats().n_resent_new_epoch;
        match spool.expired(now, key, resend) {
            Ok(Some((seq, seq_last))) => {
                let n_resent = spool.stats().n_resent_new_epoch - resent_before;
                moved.n_streams += 1;
                moved.n_resent += n_resent;
                warn!(%stream, sensor = %key.sensor, epoch = %key.epoch, seq, seq_last, n_resent,
                    new_epoch = %spool.epoch(),
                    "node forgot this sensor's epoch; declared its unacknowledged seqs closed (producer_expired), resending the never-sent readings in the new epoch");
            }
            Ok(None) => {}
            Err(error) => self.failed(stream, &error, now),
        }
    }

    /// Runs the timers of every spool that has one due (on the monotonic clock), and reopens
    /// the failed spools whose retry is due.
    fn timeout(&mut self, now: Now) -> Result<(), EdgeError> {
        let mut failed = Vec::new();
        for (stream, spool) in self.by_stream.iter_mut() {
            if spool.poll_timeout().is_some_and(|t| t <= now.mono) {
                if let Err(error) = spool.handle_timeout(now) {
                    failed.push((stream.clone(), error));
                }
            }
        }
        for (stream, error) in failed {
            self.failed(&stream, &error, now);
        }
        self.reopen_due(now);
        Ok(())
    }

    fn sync(&mut self, now: Now) -> Result<(), EdgeError> {
        let mut failed = Vec::new();
        for (stream, spool) in self.by_stream.iter_mut() {
            if let Err(error) = spool.sync(now) {
                failed.push((stream.clone(), error));
            }
        }
        for (stream, error) in failed {
            self.failed(&stream, &error, now);
        }
        Ok(())
    }

    /// Closes every spool (even after one failed, so the others give back their reservations);
    /// returns the first error.
    fn close(&mut self, now: Now) -> Result<(), EdgeError> {
        let by_stream = std::mem::take(&mut self.by_stream);
        let mut first = None;
        for (stream, spool) in by_stream {
            if let Err(e) = spool.close(now) {
                first.get_or_insert(spool_error(&stream, e));
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn n_syncs(&self) -> u64 {
        self.by_stream.values().map(|s| s.stats().n_syncs).sum()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let retries = self.down.values().map(|d| d.retry_at);
        self.by_stream
            .values()
            .filter_map(|s| s.poll_timeout())
            .chain(retries)
            .min()
    }

    /// The figures of every spool; `oldest_age` walks every queued item, so it is asked for on
    /// the metrics timer only (`None` leaves the age out).
    fn status(&self, now: Instant, oldest_age: bool) -> Vec<(String, SpoolStatus)> {
        self.by_stream
            .iter()
            .map(|(stream, spool)| {
                let core = spool.core();
                let stats = spool.stats();
                let dropped = [
                    ("spool_full", stats.n_dropped_full),
                    ("expired", stats.n_dropped_expired),
                    ("power_loss", stats.n_dropped_power_loss),
                    ("invalid", stats.n_dropped_invalid),
                    ("storage", stats.n_dropped_storage),
                    ("corrupted", stats.n_dropped_corrupted),
                    ("producer_expired", stats.n_dropped_producer_expired),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
                let status = SpoolStatus {
                    epoch: spool.epoch().0,
                    records: core.n_records(),
                    bytes: core.live_bytes(),
                    segments: core.n_segments(),
                    oldest_age_ms: oldest_age.then(|| core.oldest_age_ms(now)).flatten(),
                    synced: stats.n_synced,
                    dropped,
                };
                (stream.to_string(), status)
            })
            .collect()
    }
}

/// Sensor streams moved to a newer epoch by one [`Spools::apply`], and readings resent.
#[derive(Debug, Default, Clone, Copy)]
struct Moved {
    n_streams: u64,
    n_resent: u64,
}

/// Records the acks of one [`Spools::apply`] released, and what it moved.
type Applied = (u64, Moved);

/// What the uplink decided about records in the spool.
enum Verdict {
    Ack {
        stream: StreamName,
        key: StreamKey,
        seq_through: u64,
    },
    Refused {
        stream: StreamName,
        key: StreamKey,
        seq: u64,
        reason: String,
    },
    /// The node forgot `key`'s producer state: move it to a newer epoch.
    Expired { stream: StreamName, key: StreamKey },
}

/// Something the uplink's tasks report to the loop.
enum Event {
    Connected {
        attempt: u64,
        connection: Arc<dyn Connection>,
    },
    ConnectFailed {
        attempt: u64,
        error: TransportError,
    },
    Answered {
        attempt: u64,
        batch_id: u64,
        result: Result<ProduceResponse, TransportError>,
    },
}

/// The loop's state. See the module documentation.
struct AgentLoop {
    env: Env,
    spools: SharedSpools,
    validators: Vec<Validator>,
    source_names: Vec<String>,
    uplink: UplinkCore,
    batch_bytes_max: u64,
    request_timeout: Duration,
    stats_interval: Option<Duration>,
    transport: Arc<dyn Transport>,
    connection: Option<(u64, Arc<dyn Connection>)>,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    sink_rx: mpsc::Receiver<SinkRequest>,
    sink_closed: bool,
    parked: VecDeque<Pending>,
    /// Offers whose append failed after their seq was issued, answered once their spool
    /// reopens (at most one per stream: a failed spool refuses appends until it reopens).
    in_doubt: Vec<InDoubt>,
    /// Most offers parked before the loop stops taking offers (`sink_queue_max`).
    parked_max: usize,
    /// Records may be ready to send (a sync, an ack, a rewind or a connect happened since the
    /// last empty `next_batch`).
    maybe_sendable: bool,
    n_syncs_seen: u64,
    metrics: Arc<Metrics>,
    refusals_logged: BTreeMap<(usize, &'static str), Instant>,
}

impl AgentLoop {
    fn new(
        config: &EdgeConfig,
        env: Env,
        spools: SharedSpools,
        transport: Arc<dyn Transport>,
        sink_rx: mpsc::Receiver<SinkRequest>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let u = &config.uplink;
        let limits = UplinkLimits {
            batches_in_flight_max: u.batches_in_flight_max,
            batch_records_max: u.batch_records_max,
            linger: Duration::from_millis(u.linger_ms),
            backoff_initial: Duration::from_millis(u.backoff_initial_ms),
            backoff_max: Duration::from_millis(u.backoff_max_ms),
        };
        let rng = env.rng(0, UPLINK_RNG_SALT);
        let uplink = UplinkCore::new(limits, env.clock.now(), rng);
        let validators = config
            .sources
            .iter()
            .map(|s: &SourceSpec| Validator::new(s.validation(), config.spool.sensors_max))
            .collect();
        let (events_tx, events_rx) = mpsc::channel(u.batches_in_flight_max as usize + 2);
        Self {
            env,
            spools,
            validators,
            source_names: config.sources.iter().map(|s| s.name().to_owned()).collect(),
            uplink,
            batch_bytes_max: u.batch_bytes_max,
            request_timeout: Duration::from_millis(u.request_timeout_ms),
            stats_interval: (config.edge.stats_interval_ms > 0)
                .then(|| Duration::from_millis(config.edge.stats_interval_ms)),
            transport,
            connection: None,
            events_tx,
            events_rx,
            sink_rx,
            sink_closed: false,
            parked: VecDeque::new(),
            in_doubt: Vec::new(),
            parked_max: config.edge.sink_queue_max.max(1) as usize,
            maybe_sendable: true,
            n_syncs_seen: 0,
            metrics: metrics.clone(),
            refusals_logged: BTreeMap::new(),
        }
    }

    fn now(&self) -> Instant {
        self.env.clock.now()
    }

    /// The time for a spool call: the monotonic clock runs its timers, the wall clock stamps.
    fn spool_now(&self) -> Now {
        Now {
            mono: self.env.clock.now(),
            wall: self.env.clock.wall(),
        }
    }

    /// Runs `work` on the spools through the environment's blocking mode.
    async fn spools<R: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Spools, Now) -> Result<R, EdgeError> + Send + 'static,
    ) -> Result<R, EdgeError> {
        let spools = self.spools.clone();
        let now = self.spool_now();
        let (result, n_syncs) = run_blocking(self.env.blocking, move || {
            let mut guard = lock(&spools);
            let result = work(&mut guard, now);
            (result, guard.n_syncs())
        })
        .await;
        if n_syncs != self.n_syncs_seen {
            self.n_syncs_seen = n_syncs;
            self.maybe_sendable = true;
        }
        result
    }

    async fn run(mut self, mut stop: oneshot::Receiver<()>) -> Result<(), EdgeError> {
        let result = self.run_until_stopped(&mut stop).await;
        match result {
            Ok(()) => self.shutdown().await,
            Err(error) => {
                error!(%error, "edge agent failed");
                Err(error)
            }
        }
    }

    async fn run_until_stopped(
        &mut self,
        stop: &mut oneshot::Receiver<()>,
    ) -> Result<(), EdgeError> {
        let start = self.now();
        let mut stats_at = self.stats_interval.map(|i| start + i);
        let mut metrics_at = start;
        loop {
            self.pump().await?;
            let now = self.now();
            if now >= metrics_at {
                self.refresh_metrics();
                metrics_at = now + METRICS_REFRESH;
            }
            if stats_at.is_some_and(|t| now >= t) {
                self.log_stats();
                stats_at = self.stats_interval.map(|i| now + i);
            }
            let deadline = self.deadline(now, [Some(metrics_at), stats_at]);
            let take_offers = self.parked.len() < self.parked_max && !self.sink_closed;
            tokio::select! {
                biased;
                _ = &mut *stop => return Ok(()),
                Some(event) = self.events_rx.recv() => self.on_event(event).await?,
                _ = tokio::time::sleep_until(deadline.into()) => self.on_timer().await?,
                request = self.sink_rx.recv(), if take_offers => match request {
                    Some(request) => self.on_sink(request).await?,
                    None => self.sink_closed = true,
                },
            }
        }
    }

    /// The earliest of the uplink's, the spools' and the given deadlines (all monotonic).
    fn deadline(&self, now: Instant, others: [Option<Instant>; 2]) -> Instant {
        let spool = lock(&self.spools).poll_timeout();
        [self.uplink.poll_timeout(), spool]
            .into_iter()
            .chain(others)
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_secs(3600))
    }

    async fn on_timer(&mut self) -> Result<(), EdgeError> {
        let had_parked = !self.parked.is_empty();
        self.spools(|s, now| s.timeout(now)).await?;
        self.resolve_in_doubt();
        if had_parked {
            // Expiry may have freed space.
            self.retry_parked().await?;
        }
        Ok(())
    }

    /// Connects when due, executes the uplink's outputs, and sends while the window allows.
    async fn pump(&mut self) -> Result<(), EdgeError> {
        let now = self.now();
        self.uplink.handle_tick(now);
        self.execute_outputs().await?;
        while self.maybe_sendable && self.uplink.can_send(now) {
            let Some((attempt, connection)) = self.connection.clone() else {
                break;
            };
            let (records_max, bytes_max) = (self.uplink.batch_records_max(), self.batch_bytes_max);
            let batch = self
                .spools(move |s, now| s.next_batch(now, records_max, bytes_max))
                .await?;
            let Some((stream, records)) = batch else {
                self.maybe_sendable = false;
                break;
            };
            let batch_id = self.uplink.handle_sent(now, stream.clone(), &records);
            debug!(batch_id, %stream, n_records = records.len(), "sending batch");
            let events = self.events_tx.clone();
            let request = Message::ProduceRequest(ProduceRequest {
                request_id: 0,
                stream,
                records,
            });
            tokio::spawn(
                async move {
                    let result = match connection.call(request).await {
                        Ok(Message::ProduceResponse(response)) => Ok(response),
                        Ok(other) => Err(TransportError::new(
                            TransportErrorKind::Protocol,
                            format!("expected a produce response, got {:?}", other.kind()),
                        )),
                        Err(error) => Err(error),
                    };
                    let _ = events
                        .send(Event::Answered {
                            attempt,
                            batch_id,
                            result,
                        })
                        .await;
                }
                .in_current_span(),
            );
        }
        let in_flight = self.uplink.n_in_flight_records();
        self.metrics.uplink(|u| u.in_flight = in_flight);
        Ok(())
    }

    async fn execute_outputs(&mut self) -> Result<(), EdgeError> {
        let mut acks = Vec::new();
        while let Some(output) = self.uplink.poll_output() {
            match output {
                Output::Connect { attempt } => self.connect(attempt),
                Output::Disconnect => {
                    if self.connection.take().is_some() {
                        self.metrics.uplink(|u| u.connected_to = None);
                    }
                }
                Output::Ack {
                    stream,
                    key,
                    seq_through,
                } => acks.push(Verdict::Ack {
                    stream,
                    key,
                    seq_through,
                }),
                Output::Refused {
                    stream,
                    key,
                    seq,
                    reason,
                } => acks.push(Verdict::Refused {
                    stream,
                    key,
                    seq,
                    reason,
                }),
                Output::Expired { stream, key } => acks.push(Verdict::Expired { stream, key }),
                Output::Rewind => {
                    if !acks.is_empty() {
                        let batch = std::mem::take(&mut acks);
                        let (_, moved) = self.spools(move |s, now| s.apply(now, &batch)).await?;
                        self.count_moved(moved);
                    }
                    let mut spools = lock(&self.spools);
                    for spool in spools.by_stream.values_mut() {
                        spool.rewind();
                    }
                    drop(spools);
                    self.maybe_sendable = true;
                }
            }
        }
        if !acks.is_empty() {
            let (_, moved) = self.spools(move |s, now| s.apply(now, &acks)).await?;
            self.count_moved(moved);
            self.maybe_sendable = true;
            self.refresh_counts();
            if !self.parked.is_empty() {
                self.retry_parked().await?;
            }
        }
        Ok(())
    }

    fn count_moved(&self, moved: Moved) {
        if moved.n_streams > 0 {
            self.metrics.uplink(|u| {
                u.epochs_moved += moved.n_streams;
                u.resent_new_epoch += moved.n_resent;
            });
        }
    }

    fn connect(&mut self, attempt: u64) {
        let transport = self.transport.clone();
        let events = self.events_tx.clone();
        tokio::spawn(
            async move {
                let event = match transport.connect().await {
                    Ok(connection) => Event::Connected {
                        attempt,
                        connection,
                    },
                    Err(error) => Event::ConnectFailed { attempt, error },
                };
                let _ = events.send(event).await;
            }
            .in_current_span(),
        );
    }

    async fn on_event(&mut self, event: Event) -> Result<(), EdgeError> {
        let now = self.now();
        match event {
            Event::Connected {
                attempt,
                connection,
            } => {
                self.uplink.handle_connected(attempt);
                if self.uplink.connection() == Some(attempt) {
                    let peer = connection.peer();
                    info!(%peer, "uplink connected");
                    self.metrics.uplink(|u| {
                        u.connects += 1;
                        u.connected_to = Some(peer);
                        u.last_error = None;
                    });
                    self.connection = Some((attempt, connection));
                    self.maybe_sendable = true;
                }
            }
            Event::ConnectFailed { attempt, error } => {
                self.uplink.handle_connect_failed(now, attempt);
                match error.kind {
                    TransportErrorKind::Refused | TransportErrorKind::Local => {
                        error!(%error, "uplink refused; check certificates, cluster name and ACLs")
                    }
                    _ => warn!(%error, "uplink cannot reach any node; readings stay spooled"),
                }
                let message = error.message;
                self.metrics.uplink(|u| {
                    u.connect_failures += 1;
                    u.last_error = Some(message);
                });
            }
            Event::Answered {
                attempt,
                batch_id,
                result,
            } => {
                let failed_whole = result.is_err();
                let report = self.uplink.handle_response(now, attempt, batch_id, result);
                for (label, severity, example) in &report.refusals {
                    match severity {
                        Severity::Reordered => {
                            debug!(reason = label, %example, "a request overtook an earlier one; resending in order")
                        }
                        Severity::Transient => {
                            warn!(reason = label, %example, "batch partly refused; will resend")
                        }
                        Severity::Split => {
                            warn!(reason = label, %example, "the node takes smaller requests than uplink.batch_records_max; resending in smaller ones")
                        }
                        Severity::NeedsOperator => {
                            error!(reason = label, %example, "node refuses records; they stay spooled and are retried")
                        }
                        // Logged when the spool declares it.
                        Severity::Declared => {}
                    }
                }
                self.metrics.uplink(|u| {
                    u.batches += 1;
                    u.batches_failed += u64::from(failed_whole);
                    u.delivered += report.n_delivered;
                    for (label, severity, example) in &report.refusals {
                        if *severity == Severity::Reordered {
                            *u.refused.entry("reordered".to_owned()).or_default() += 1;
                            continue;
                        }
                        *u.refused.entry((*label).to_owned()).or_default() += 1;
                        u.last_error = Some(example.clone());
                    }
                    if report.refusals.is_empty() {
                        u.last_error = None;
                    }
                });
            }
        }
        if self.uplink.connection().is_none() && self.connection.take().is_some() {
            self.metrics.uplink(|u| u.connected_to = None);
        }
        self.execute_outputs().await
    }

    async fn on_sink(&mut self, first: SinkRequest) -> Result<(), EdgeError> {
        let mut requests = vec![first];
        while requests.len() < OFFERS_PER_STEP_MAX {
            match self.sink_rx.try_recv() {
                Ok(request) => requests.push(request),
                Err(_) => break,
            }
        }
        let now = self.now();
        let mut pending = Vec::new();
        let mut flushes = Vec::new();
        for request in requests {
            match request {
                SinkRequest::Offer {
                    source_idx,
                    reading,
                    reply,
                } => {
                    let verdict = match self.validators.get_mut(source_idx) {
                        Some(validator) => validator.check(now, &reading),
                        None => Ok(()),
                    };
                    match verdict {
                        Ok(()) => pending.push(Pending {
                            source_idx,
                            reading,
                            reply,
                        }),
                        Err(refusal) => {
                            self.refused(source_idx, &refusal, now);
                            let _ = reply.send(Offered::Refused(refusal));
                        }
                    }
                }
                SinkRequest::Flush { reply } => flushes.push(reply),
            }
        }
        self.append(pending).await?;
        if !flushes.is_empty() {
            self.spools(|s, now| s.sync(now)).await?;
            for reply in flushes {
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    fn refused(&mut self, source_idx: usize, refusal: &Refusal, now: Instant) {
        let name = self
            .source_names
            .get(source_idx)
            .map_or("?", String::as_str);
        self.metrics.rejected(name, refusal.label());
        let key = (source_idx, refusal.label());
        let due = self
            .refusals_logged
            .get(&key)
            .is_none_or(|t| now.saturating_duration_since(*t) >= REFUSAL_LOG_INTERVAL);
        if due {
            self.refusals_logged.insert(key, now);
            warn!(source = name, reason = refusal.label(), %refusal, "reading refused");
        }
    }

    /// Appends validated offers in one blocking call; full spools park theirs.
    async fn append(&mut self, pending: Vec<Pending>) -> Result<(), EdgeError> {
        // Offers for a stream that already has parked ones wait behind them, in order.
        let blocked: BTreeSet<StreamName> = self
            .parked
            .iter()
            .map(|p| p.reading.stream.clone())
            .collect();
        let (pending, behind): (Vec<Pending>, Vec<Pending>) = pending
            .into_iter()
            .partition(|p| !blocked.contains(&p.reading.stream));
        self.parked.extend(behind);
        if pending.is_empty() {
            self.metrics.set_offers_held(self.parked.len() as u64);
            return Ok(());
        }
        let (meta, readings): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .map(|p| ((p.source_idx, p.reply), p.reading))
            .unzip();
        let results = self
            .spools(move |s, now| {
                readings
                    .into_iter()
                    .map(|reading| s.append(now, reading))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        let now = self.now();
        for ((source_idx, reply), result) in meta.into_iter().zip(results) {
            match result {
                Appended::Accepted { epoch, seq } => {
                    if let Some(name) = self.source_names.get(source_idx) {
                        self.metrics.spooled(name);
                    }
                    let _ = reply.send(Offered::Accepted { epoch, seq });
                }
                Appended::Full(reading) => self.parked.push_back(Pending {
                    source_idx,
                    reading,
                    reply,
                }),
                Appended::Refused(refusal) => {
                    self.refused(source_idx, &refusal, now);
                    let _ = reply.send(Offered::Refused(refusal));
                }
                Appended::InDoubt { stream, key, seq } => self.in_doubt.push(InDoubt {
                    source_idx,
                    stream,
                    key,
                    seq,
                    reply,
                }),
            }
        }
        if !self.parked.is_empty() {
            debug!(n_parked = self.parked.len(), "spool full: holding offers");
        }
        self.refresh_counts();
        Ok(())
    }

    /// Answers the offers in doubt whose spool reopened: accepted with their seq when the
    /// reopened spool accounts for it, refused when no seq of theirs survived.
    fn resolve_in_doubt(&mut self) {
        if self.in_doubt.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.in_doubt);
        let mut resolved = Vec::new();
        {
            let spools = lock(&self.spools);
            for doubt in waiting {
                match spools.in_doubt_outcome(&doubt.stream, &doubt.key, doubt.seq) {
                    Some(kept) => resolved.push((doubt, kept)),
                    None => self.in_doubt.push(doubt),
                }
            }
        }
        let now = self.now();
        for (doubt, kept) in resolved {
            if kept {
                if let Some(name) = self.source_names.get(doubt.source_idx) {
                    self.metrics.spooled(name);
                }
                info!(stream = %doubt.stream, sensor = %doubt.key.sensor, epoch = %doubt.key.epoch,
                    seq = doubt.seq, "a reading whose append failed survived in the reopened spool (stored or declared): accepted");
                let _ = doubt.reply.send(Offered::Accepted {
                    epoch: doubt.key.epoch.0,
                    seq: doubt.seq,
                });
            } else {
                let refusal = Refusal::Spool {
                    label: "spool_unavailable",
                    reason: format!(
                        "the spool of stream {} failed before the reading was stored",
                        doubt.stream
                    ),
                };
                self.refused(doubt.source_idx, &refusal, now);
                let _ = doubt.reply.send(Offered::Refused(refusal));
            }
        }
    }

    async fn retry_parked(&mut self) -> Result<(), EdgeError> {
        let parked: Vec<Pending> = self.parked.drain(..).collect();
        self.append(parked).await
    }

    /// Refreshes every spool figure (the timer's job: the oldest age walks the queues).
    fn refresh_metrics(&self) {
        self.metrics.set_offers_held(self.parked.len() as u64);
        let status = lock(&self.spools).status(self.now(), true);
        for (stream, spool) in status {
            self.metrics.set_spool(&stream, spool);
        }
    }

    /// Refreshes the cheap spool figures (records, bytes, drops) after appends and acks, keeping
    /// the last oldest age, so the status never lags the spools by a timer period.
    fn refresh_counts(&self) {
        self.metrics.set_offers_held(self.parked.len() as u64);
        let previous = self.metrics.status().spools;
        let status = lock(&self.spools).status(self.now(), false);
        for (stream, mut spool) in status {
            spool.oldest_age_ms = previous.get(&stream).and_then(|p| p.oldest_age_ms);
            self.metrics.set_spool(&stream, spool);
        }
    }

    fn log_stats(&self) {
        let s = self.metrics.status();
        let read: u64 = s.sources.values().map(|v| v.read).sum();
        let spooled: u64 = s.sources.values().map(|v| v.spooled).sum();
        let rejected: u64 = s.sources.values().flat_map(|v| v.rejected.values()).sum();
        let waiting: u64 = s.spools.values().map(|v| v.records).sum();
        let bytes: u64 = s.spools.values().map(|v| v.bytes).sum();
        let oldest = s.spools.values().filter_map(|v| v.oldest_age_ms).max();
        info!(
            read,
            spooled,
            rejected,
            delivered = s.uplink.delivered,
            in_flight = s.uplink.in_flight,
            spool_records = waiting,
            spool_bytes = bytes,
            oldest_age_ms = oldest,
            connected = s.uplink.connected_to.is_some(),
            "edge stats"
        );
    }

    /// Clean stop: refuse parked offers, let requests in flight answer (briefly), close.
    async fn shutdown(&mut self) -> Result<(), EdgeError> {
        self.sink_rx.close();
        for pending in self.parked.drain(..) {
            drop(pending.reply);
        }
        for doubt in self.in_doubt.drain(..) {
            drop(doubt.reply);
        }
        let grace = self.request_timeout.min(STOP_GRACE_MAX);
        let until = self.now() + grace;
        while self.uplink.n_in_flight() > 0 {
            tokio::select! {
                biased;
                Some(event) = self.events_rx.recv() => self.on_event(event).await?,
                _ = tokio::time::sleep_until(until.into()) => break,
            }
        }
        self.refresh_metrics();
        self.spools(|s, now| s.close(now)).await?;
        info!("edge agent stopped; spools closed");
        Ok(())
    }
}

/// The spool directory of `stream` under `data_dir`.
pub fn spool_dir(data_dir: &Path, stream: &StreamName) -> PathBuf {
    data_dir.join("spool").join(stream.as_str())
}

#[cfg(test)]
mod tests;
