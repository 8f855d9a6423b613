//! The partition actor: the shell around [`PartitionCore`]. It owns the log writer, hands it to
//! the blocking pool for each group commit, and publishes the durable offset and a log reader so
//! fetches never queue behind produces.
//!
//! Storage faults never stop it. A failed flush (a full disk, `EIO`, a file made immutable) or a
//! log that cannot be made writable at start-up leaves the partition *degraded*: produces are
//! refused with a typed `Storage` rejection, fetches go on reading what is durable, and the
//! actor reopens the log from disk (a fresh core, recovery from what the disk really holds, never
//! from the page cache) after a capped, jittered backoff until it is writable again. A corrupt
//! log makes the partition *read-only* for good: the prefix before the damage stays readable,
//! every produce is refused naming the file and byte, and no offset past the damage is ever
//! handed out again (an operator must act; `sluice storage check` reports it).

use super::core::{CoreConfig, Input, Output, PartitionCore, ProduceItem};
use crate::catalog::PendingRecord;
use crate::env::run_blocking;
use crate::log::{self, LogConfig, LogError, LogPaths, LogReader, LogWriter, PendingEntry};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sluice_proto::backoff::Backoff;
use sluice_proto::env::{DiskError, Env};
use sluice_proto::msg::{RecordOutcome, RecordRejection};
use sluice_proto::{Identity, Offset, PartitionId, StreamName};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Mutex, OwnedMutexGuard};
use tracing::{debug, error, info, warn};

/// What fetches and produces use to reach one partition.
#[derive(Clone)]
pub struct PartitionHandle {
    /// Produce requests go here.
    pub actor: ActorRef<PartitionMsg>,
    /// Reads go straight to the log.
    pub reader: LogReader,
    /// One past the last durable offset; reads stop there.
    pub durable: watch::Receiver<Offset>,
}

/// The partitions of this node, by stream and partition. A restarted partition replaces its
/// entry.
#[derive(Default)]
pub struct Registry {
    map: RwLock<BTreeMap<(StreamName, PartitionId), PartitionHandle>>,
}

impl Registry {
    /// The handle of a partition, if it is running.
    pub fn get(&self, stream: &StreamName, partition: PartitionId) -> Option<PartitionHandle> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(stream.clone(), partition))
            .cloned()
    }

    fn insert(&self, stream: StreamName, partition: PartitionId, handle: PartitionHandle) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((stream, partition), handle);
    }

    /// Forgets a partition (it stopped).
    pub fn remove(&self, stream: &StreamName, partition: PartitionId) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(stream.clone(), partition));
    }
}

/// Messages of [`PartitionActor`].
pub enum PartitionMsg {
    /// Append records; the reply carries one outcome per item, sent once they are durable.
    Produce {
        /// The authenticated producer.
        producer: Arc<Identity>,
        /// The records.
        items: Vec<ProduceItem>,
        /// Where the outcomes go.
        reply: RpcReplyPort<Vec<RecordOutcome>>,
    },
    /// A group commit finished; the writer comes back with its result.
    Flushed {
        /// The log writer, returned by the flush task.
        writer: Box<LogWriter>,
        /// The flush result.
        result: Result<(), String>,
    },
    /// Time to try making a degraded partition writable again (stale unless `attempt` is the
    /// current one).
    Retry {
        /// Which scheduled retry this is.
        attempt: u64,
    },
}

/// How a degraded partition retries (`storage.write_retry_*`).
#[derive(Debug, Clone, Copy)]
pub struct RetryConfig {
    /// First wait after a failure.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
}

/// Arguments of [`PartitionActor`]; kept by the supervisor to restart it.
#[derive(Clone)]
pub struct PartitionArgs {
    /// Stream.
    pub stream: StreamName,
    /// Partition.
    pub partition: PartitionId,
    /// The partition's segment directory and manifest.
    pub paths: LogPaths,
    /// The environment.
    pub env: Env,
    /// Core bounds.
    pub core: CoreConfig,
    /// Log sizes.
    pub log: LogConfig,
    /// How a degraded partition retries.
    pub retry: RetryConfig,
    /// Where the handle is published.
    pub registry: Arc<Registry>,
    /// Held by a flush while it runs; a restarted actor takes it before reopening the log, so
    /// a flush of the previous incarnation can never write behind its back.
    pub log_guard: Arc<Mutex<()>>,
    /// One past the last offset this process saw made durable, kept across restarts of the
    /// actor: a reopen after a failed fsync cuts the log back to it (see `log::open`).
    pub durable_mark: Arc<std::sync::Mutex<Option<Offset>>>,
    /// The node's partition catalog record this partition still waits for (`None` when the
    /// catalog records it): until it succeeds the partition serves reads and refuses writes,
    /// trying it again at each retry.
    pub catalog: Option<Arc<PendingRecord>>,
}

/// Why a partition refuses writes.
#[derive(Debug, Clone)]
enum Fault {
    /// A storage failure; the actor retries.
    Degraded(String),
    /// The log is corrupt; read-only until an operator acts.
    Corrupt(String),
}

/// State of a running partition.
pub struct PartitionState {
    core: PartitionCore,
    writer: Option<LogWriter>,
    fault: Option<Fault>,
    retry: Backoff,
    /// The retry a `Retry` message must name to be acted on.
    retry_attempt: u64,
    tickets: HashMap<u64, RpcReplyPort<Vec<RecordOutcome>>>,
    next_ticket: u64,
    durable_tx: watch::Sender<Offset>,
    /// The reader published for fetches (its damage stops writes).
    reader: LogReader,
    /// When the durable end was last recorded in the manifest (see `LogConfig`).
    durable_recorded_at: Option<Instant>,
    args: PartitionArgs,
}

/// The partition actor.
pub struct PartitionActor;

/// A recovered partition: a fresh core replayed from the log.
struct Reopened {
    core: PartitionCore,
    /// Reads what was recovered.
    reader: LogReader,
    /// The log's writer, or why it cannot be written; `None` when it was not opened (a
    /// partition without files that the catalog does not record yet).
    writer: Option<Result<LogWriter, LogError>>,
    /// Why the node's catalog does not record the partition yet: it must not take writes.
    unrecorded: Option<String>,
}

/// Opens and recovers the log of a partition, replaying it into a fresh core. `Err` when the
/// disk cannot even be read.
fn open_partition(args: &PartitionArgs) -> Result<Reopened, LogError> {
    let mut core = PartitionCore::new(args.partition, args.core, Offset(0));
    let unrecorded = args
        .catalog
        .as_ref()
        .and_then(|pending| pending.ensure().err())
        .map(|error| error.to_string());
    if unrecorded.is_some() && !crate::catalog::paths_have_files(&*args.env.disk, &args.paths)? {
        // A partition that never held anything: nothing to read, and its directory is not
        // created before the catalog records it.
        core.finish_recovery(Offset(0));
        return Ok(Reopened {
            core,
            reader: LogReader::empty(args.log.entry_bytes_max),
            writer: None,
            unrecorded,
        });
    }
    let durable_end = *args.durable_mark.lock().unwrap_or_else(|p| p.into_inner());
    let now = args.env.clock.now();
    let opened = log::open(
        args.env.disk.clone(),
        &args.paths,
        args.log,
        durable_end,
        |offset, event| core.recover_event(now, offset, &event),
    )?;
    let recovery = &opened.recovery;
    core.finish_recovery(recovery.next_offset);
    info!(
        stream = %args.stream,
        partition_id = args.partition.0,
        n_segments = recovery.n_segments,
        n_entries = recovery.n_entries,
        next_offset = recovery.next_offset.0,
        truncated_bytes = recovery.truncated_bytes,
        "partition recovered"
    );
    if recovery.truncated_bytes > 0 {
        warn!(stream = %args.stream, partition_id = args.partition.0, bytes = recovery.truncated_bytes, "discarded a torn, unacknowledged log tail");
    }
    if opened.writer.is_ok() {
        *args.durable_mark.lock().unwrap_or_else(|p| p.into_inner()) = Some(recovery.next_offset);
    }
    Ok(Reopened {
        core,
        reader: opened.reader,
        writer: Some(opened.writer),
        unrecorded,
    })
}

/// The fault a failed open leaves, logged.
fn fault_of(args: &PartitionArgs, error: &LogError) -> Fault {
    let (stream, partition_id) = (&args.stream, args.partition.0);
    match error.corruption() {
        Some(c) => {
            error!(%stream, partition_id, file = %c.path, byte = c.pos, reason = %c.kind, "partition log is corrupt: refusing writes, serving what precedes the damage");
            Fault::Corrupt(format!(
                "partition {stream}/{partition_id} is read-only: {c}"
            ))
        }
        None => {
            warn!(%stream, partition_id, %error, no_space = error.is_no_space(), "partition cannot write: refusing writes, serving what is durable, retrying");
            Fault::Degraded(format!(
                "partition {stream}/{partition_id} cannot write: {error}"
            ))
        }
    }
}

impl PartitionState {
    fn publish(&mut self, myself: &ActorRef<PartitionMsg>, reader: LogReader) {
        self.reader = reader.clone();
        self.args.registry.insert(
            self.args.stream.clone(),
            self.args.partition,
            PartitionHandle {
                actor: myself.clone(),
                reader,
                durable: self.durable_tx.subscribe(),
            },
        );
    }

    /// Takes in a reopened log: writable, degraded or corrupt.
    fn adopt(&mut self, myself: &ActorRef<PartitionMsg>, reopened: Reopened) {
        let Reopened {
            core,
            reader,
            writer,
            unrecorded,
        } = reopened;
        self.core = core;
        self.durable_tx.send_replace(self.core.durable());
        self.publish(myself, reader);
        let (stream, partition_id) = (&self.args.stream, self.args.partition.0);
        let writer = match (writer, unrecorded) {
            // Corruption is for good; a catalog not recorded yet only waits for a retry.
            (Some(Err(error)), _) if error.corruption().is_some() => Err(error),
            (_, Some(reason)) => {
                warn!(%stream, partition_id, %reason, "partition not recorded in the node's catalog: refusing writes, serving what is durable, retrying");
                self.writer = None;
                self.fail(
                    myself,
                    Fault::Degraded(format!(
                        "partition {stream}/{partition_id} cannot write: the node's partition catalog does not record it yet: {reason}"
                    )),
                );
                return;
            }
            (Some(writer), None) => writer,
            (None, None) => Err(LogError::Disk(DiskError::Io {
                op: "open",
                path: self.args.paths.dir.display().to_string(),
                kind: std::io::ErrorKind::Other,
                message: "the log was not opened".into(),
            })),
        };
        match writer {
            Ok(writer) => {
                if self.fault.is_some() {
                    info!(stream = %self.args.stream, partition_id = self.args.partition.0, "partition writable again");
                }
                self.writer = Some(writer);
                self.fault = None;
                self.retry.reset();
            }
            Err(error) => {
                self.writer = None;
                self.fail(myself, fault_of(&self.args, &error));
            }
        }
    }

    /// Enters a fault; a degraded partition schedules its next attempt.
    fn fail(&mut self, myself: &ActorRef<PartitionMsg>, fault: Fault) {
        if let Fault::Degraded(_) = &fault {
            self.retry_attempt += 1;
            let attempt = self.retry_attempt;
            let delay = self.retry.next_delay();
            let myself = myself.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = myself.cast(PartitionMsg::Retry { attempt });
            });
        }
        self.fault = Some(fault);
    }
}

impl Actor for PartitionActor {
    type Msg = PartitionMsg;
    type State = PartitionState;
    type Arguments = PartitionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let opened = reopen(&args).await;
        let owner = u64::from(crc32c::crc32c(args.stream.as_str().as_bytes())) << 32
            | u64::from(args.partition.0);
        let retry = Backoff::new(
            args.retry.initial,
            args.retry.max,
            args.env.rng(owner, RETRY_SALT),
        );
        let (durable_tx, _) = watch::channel(Offset(0));
        let mut state = PartitionState {
            core: PartitionCore::new(args.partition, args.core, Offset(0)),
            writer: None,
            fault: None,
            retry,
            retry_attempt: 0,
            tickets: HashMap::new(),
            next_ticket: 0,
            durable_recorded_at: None,
            durable_tx,
            reader: LogReader::empty(args.log.entry_bytes_max),
            args,
        };
        match opened {
            Ok(reopened) => state.adopt(&myself, reopened),
            Err(error) => {
                // Nothing readable yet: serve an empty log until a retry reads the disk.
                state.publish(&myself, LogReader::empty(state.args.log.entry_bytes_max));
                let fault = fault_of(&state.args, &error);
                state.fail(&myself, fault);
            }
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let input = match message {
            PartitionMsg::Produce {
                producer,
                items,
                reply,
            } => {
                if let (None | Some(Fault::Degraded(_)), Some(c)) =
                    (&state.fault, state.reader.damage())
                {
                    // A fetch met damage below the durable end: stop writing here too.
                    let error = LogError::Corrupt(c);
                    state.writer = None;
                    state.fault = Some(fault_of(&state.args, &error));
                }
                if let Some(Fault::Degraded(reason) | Fault::Corrupt(reason)) = &state.fault {
                    let refusal = RecordOutcome::Rejected(RecordRejection::Storage {
                        reason: reason.clone(),
                    });
                    let _ = reply.send(vec![refusal; items.len()]);
                    return Ok(());
                }
                let ticket = state.next_ticket;
                state.next_ticket += 1;
                state.tickets.insert(ticket, reply);
                Input::Produce {
                    ticket,
                    producer,
                    items,
                }
            }
            PartitionMsg::Flushed { writer, result } => {
                if result.is_err() {
                    // What did reach the disk (a group commit may have synced part of itself
                    // before failing): a reopen keeps that and cuts the rest.
                    *state
                        .args
                        .durable_mark
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(writer.durable_offset());
                }
                state.writer = Some(*writer);
                Input::Flushed(result)
            }
            PartitionMsg::Retry { attempt } => {
                if attempt != state.retry_attempt
                    || !matches!(state.fault, Some(Fault::Degraded(_)))
                {
                    return Ok(());
                }
                // Drop the old writer first: the reopen scans and resumes the same files.
                state.writer = None;
                match reopen(&state.args).await {
                    Ok(reopened) => state.adopt(&myself, reopened),
                    Err(error) => {
                        let fault = fault_of(&state.args, &error);
                        state.fail(&myself, fault);
                    }
                }
                return Ok(());
            }
        };
        state.core.handle(state.args.env.clock.now(), input);
        self.execute(&myself, state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A clean stop records the exact durable end, so damage to the last entries is caught
        // at the next start instead of being taken for a torn write.
        if let (Some(writer), None) = (state.writer.take(), &state.fault) {
            let guard = state.args.log_guard.clone().lock_owned().await;
            let closed = run_blocking(state.args.env.blocking, move || writer.close()).await;
            drop(guard);
            if let Err(error) = closed {
                warn!(stream = %state.args.stream, partition_id = state.args.partition.0, %error, "could not record the durable end at stop");
            }
        }
        Ok(())
    }
}

/// Salt of the retry schedule's RNG.
const RETRY_SALT: u64 = 0x5354_4f52_4147_4531;

/// Reopens the log under the log guard, so a flush of an earlier writer can never write behind
/// the recovery's back.
async fn reopen(args: &PartitionArgs) -> Result<Reopened, LogError> {
    let guard = args.log_guard.clone().lock_owned().await;
    let opened = {
        let args = args.clone();
        run_blocking(args.env.blocking, move || open_partition(&args)).await
    };
    drop(guard);
    opened
}

impl PartitionActor {
    /// Executes the core's outputs. A fenced core (a failed flush) degrades the partition.
    fn execute(
        &self,
        myself: &ActorRef<PartitionMsg>,
        state: &mut PartitionState,
    ) -> Result<(), ActorProcessingErr> {
        let mut fenced = None;
        while let Some(output) = state.core.poll_output() {
            match output {
                Output::Persist(entries) => self.persist(myself, state, entries)?,
                Output::Reply { ticket, outcomes } => {
                    if let Some(port) = state.tickets.remove(&ticket) {
                        // The caller may have given up (timeout); its outcome is still durable.
                        let _ = port.send(outcomes);
                    }
                }
                Output::Durable(offset) => {
                    debug!(offset = offset.0, "durable");
                    *state
                        .args
                        .durable_mark
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(offset);
                    state.durable_tx.send_replace(offset);
                }
                Output::Fenced(reason) => fenced = Some(reason),
            }
        }
        if let Some(reason) = fenced {
            let (stream, partition_id) = (&state.args.stream, state.args.partition.0);
            warn!(%stream, partition_id, %reason, "flush failed: refusing writes, serving what is durable, retrying");
            // After a failed fdatasync the page cache cannot be trusted: drop the writer; the
            // retry recovers from the disk.
            state.writer = None;
            state.fail(
                myself,
                Fault::Degraded(format!(
                    "partition {stream}/{partition_id} cannot write: {reason}"
                )),
            );
        }
        Ok(())
    }

    fn persist(
        &self,
        myself: &ActorRef<PartitionMsg>,
        state: &mut PartitionState,
        entries: Vec<PendingEntry>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(mut writer) = state.writer.take() else {
            return Err("core asked for a flush while one is in flight".into());
        };
        let myself = myself.clone();
        let guard: OwnedMutexGuard<()> = state
            .args
            .log_guard
            .clone()
            .try_lock_owned()
            .map_err(|_| "log guard held while no flush is in flight")?;
        let mode = state.args.env.blocking;
        let now = state.args.env.clock.now();
        let record = state.durable_recorded_at.is_none_or(|at| {
            now.saturating_duration_since(at) >= state.args.log.durable_record_interval
        });
        if record {
            state.durable_recorded_at = Some(now);
        }
        // Who to name in a warning, only on the group commits that record (not on every one).
        let record = record.then(|| (state.args.stream.clone(), state.args.partition.0));
        tokio::spawn(async move {
            let (writer, result) = run_blocking(mode, move || {
                let result = writer.append(&entries).map_err(|e| e.to_string());
                if let (Some((stream, partition_id)), Ok(())) = (&record, &result) {
                    // The entries are durable whatever happens here: a failed record only keeps
                    // the older one (the manifest's other slot) until the next try.
                    if let Err(error) = writer.record_durable_end() {
                        warn!(%stream, partition_id, %error, "could not record the durable end in the manifest; will try again");
                    }
                }
                (writer, result)
            })
            .await;
            // Release the guard before reporting: the actor may start the next flush as soon
            // as it hears of this one. If the actor is gone, the writer is dropped here and a
            // restarted actor reopens the log.
            drop(guard);
            let _ = myself.cast(PartitionMsg::Flushed {
                writer: Box::new(writer),
                result,
            });
        });
        Ok(())
    }
}
