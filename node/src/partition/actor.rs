//! The partition actor: the shell around [`PartitionCore`]. It owns the log writer, hands it to
//! the blocking pool for each group commit, and publishes the durable offset and a log reader so
//! fetches never queue behind produces. A failed flush stops the actor (the supervisor restarts
//! it, and recovery reads what the disk really holds).

use super::core::{CoreConfig, Input, Output, PartitionCore, ProduceItem};
use crate::env::run_blocking;
use crate::log::{LogConfig, LogError, LogReader, LogWriter, PendingEntry};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sluice_proto::env::{BlockingMode, Clock, Env};
use sluice_proto::msg::RecordOutcome;
use sluice_proto::{Identity, Offset, PartitionId, StreamName};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tokio::sync::{watch, Mutex, OwnedMutexGuard};
use tracing::{debug, info, warn};

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
        writer: LogWriter,
        /// The flush result.
        result: Result<(), String>,
    },
}

/// Arguments of [`PartitionActor`]; kept by the supervisor to restart it.
#[derive(Clone)]
pub struct PartitionArgs {
    /// Stream.
    pub stream: StreamName,
    /// Partition.
    pub partition: PartitionId,
    /// The partition's directory.
    pub dir: PathBuf,
    /// The environment.
    pub env: Env,
    /// Core bounds.
    pub core: CoreConfig,
    /// Log sizes.
    pub log: LogConfig,
    /// Where the handle is published.
    pub registry: Arc<Registry>,
    /// Held by a flush while it runs; a restarted actor takes it before reopening the log, so
    /// a flush of the previous incarnation can never write behind its back.
    pub log_guard: Arc<Mutex<()>>,
    /// One past the last offset this process saw made durable, kept across restarts of the
    /// actor: a restart after a failed fsync cuts the log back to it (see `LogWriter::open`).
    pub durable_mark: Arc<std::sync::Mutex<Option<Offset>>>,
}

/// State of a running partition.
pub struct PartitionState {
    core: PartitionCore,
    writer: Option<LogWriter>,
    tickets: HashMap<u64, RpcReplyPort<Vec<RecordOutcome>>>,
    next_ticket: u64,
    durable_tx: watch::Sender<Offset>,
    log_guard: Arc<Mutex<()>>,
    durable_mark: Arc<std::sync::Mutex<Option<Offset>>>,
    blocking: BlockingMode,
    clock: Arc<dyn Clock>,
}

/// The partition actor.
pub struct PartitionActor;

/// Opens and recovers the log of a partition, replaying it into a fresh core.
fn open_partition(args: &PartitionArgs) -> Result<(PartitionCore, LogWriter, LogReader), LogError> {
    let mut core = PartitionCore::new(args.partition, args.core, Offset(0));
    let durable_end = *args.durable_mark.lock().unwrap_or_else(|p| p.into_inner());
    let now = args.env.clock.now();
    let (writer, reader, recovery) = LogWriter::open(
        args.env.disk.clone(),
        &args.dir,
        args.log,
        durable_end,
        |offset, event| core.recover_event(now, offset, &event),
    )?;
    core.finish_recovery(recovery.next_offset);
    *args.durable_mark.lock().unwrap_or_else(|p| p.into_inner()) = Some(recovery.next_offset);
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
    Ok((core, writer, reader))
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
        let guard = args.log_guard.clone().lock_owned().await;
        let opened = {
            let args = args.clone();
            run_blocking(args.env.blocking, move || open_partition(&args)).await
        };
        drop(guard);
        let (core, writer, reader) = opened?;
        let (durable_tx, durable_rx) = watch::channel(core.durable());
        args.registry.insert(
            args.stream.clone(),
            args.partition,
            PartitionHandle {
                actor: myself,
                reader,
                durable: durable_rx,
            },
        );
        Ok(PartitionState {
            core,
            writer: Some(writer),
            tickets: HashMap::new(),
            next_ticket: 0,
            durable_tx,
            log_guard: args.log_guard.clone(),
            durable_mark: args.durable_mark.clone(),
            blocking: args.env.blocking,
            clock: args.env.clock.clone(),
        })
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
                state.writer = Some(writer);
                Input::Flushed(result)
            }
        };
        state.core.handle(state.clock.now(), input);
        self.execute(&myself, state)
    }
}

impl PartitionActor {
    /// Executes the core's outputs. Returns an error (stopping the actor) when the core fenced.
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
                    *state.durable_mark.lock().unwrap_or_else(|p| p.into_inner()) = Some(offset);
                    state.durable_tx.send_replace(offset);
                }
                Output::Fenced(reason) => fenced = Some(reason),
            }
        }
        match fenced {
            Some(reason) => Err(format!("partition fenced after a failed flush: {reason}").into()),
            None => Ok(()),
        }
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
            .log_guard
            .clone()
            .try_lock_owned()
            .map_err(|_| "log guard held while no flush is in flight")?;
        let mode = state.blocking;
        tokio::spawn(async move {
            let (writer, result) = run_blocking(mode, move || {
                let result = writer.append(&entries).map_err(|e| e.to_string());
                (writer, result)
            })
            .await;
            // Release the guard before reporting: the actor may start the next flush as soon
            // as it hears of this one. If the actor is gone, the writer is dropped here and a
            // restarted actor reopens the log.
            drop(guard);
            let _ = myself.cast(PartitionMsg::Flushed { writer, result });
        });
        Ok(())
    }
}
