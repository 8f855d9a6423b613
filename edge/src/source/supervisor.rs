//! The source supervisor: one [`SourceActor`] per configured source, started in configuration
//! order and stopped in reverse. A source whose `run` fails (or panics) is restarted after a
//! jittered backoff (`proto::backoff`) that doubles with each failure, from
//! `restart_backoff_initial_ms` up to `restart_backoff_max_ms`, and starts again from the
//! initial wait once a source ran `restart_window_ms` without failing; it is never given up on,
//! because a sensor that comes back should be read again, and one failing source never stops
//! the others. A source whose input ended for good (`run` returned `Ok`) is not restarted.
//!
//! The source value survives a failure (the actor hands it back), so state such as a file
//! position carries over; after a panic it is rebuilt from its configuration.

use super::SourceSpec;
use super::{Source, SourceContext};
use crate::metrics::Metrics;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Deserialize;
use sluice_proto::backoff::Backoff;
use sluice_proto::env::Clock;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::task::AbortHandle;
use tracing::{error, info, warn, Instrument};

/// `[supervision]`
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionSection {
    /// First wait before restarting a failed source, ms; doubled (with jitter) per failure.
    pub restart_backoff_initial_ms: u64,
    /// Longest wait before restarting a failed source, ms.
    pub restart_backoff_max_ms: u64,
    /// A source that ran this long without failing starts again from the first wait, ms.
    pub restart_window_ms: u64,
}

impl Default for SupervisionSection {
    fn default() -> Self {
        Self {
            restart_backoff_initial_ms: 500,
            restart_backoff_max_ms: 60_000,
            restart_window_ms: 600_000,
        }
    }
}

/// Salt of a source's restart-backoff RNG (`env.rng(source_idx, RESTART_SALT)`).
const RESTART_SALT: u64 = 0x5253_5441_5254; // "RSTART"

/// Where a source value waits between runs.
type Slot = Arc<Mutex<Option<Box<dyn Source>>>>;

fn take(slot: &Slot) -> Option<Box<dyn Source>> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// One source to supervise.
pub(crate) struct ChildSpec {
    /// Its configuration (to rebuild it after a panic).
    pub(crate) spec: SourceSpec,
    /// The built source.
    pub(crate) source: Box<dyn Source>,
    /// What it runs with.
    pub(crate) context: SourceContext,
}

/// Arguments of [`SourceSupervisor`].
pub(crate) struct SupervisorArgs {
    pub(crate) children: Vec<ChildSpec>,
    pub(crate) supervision: SupervisionSection,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: Arc<Metrics>,
}

/// Messages of [`SourceSupervisor`].
pub(crate) enum SupervisorMsg {
    /// Restart child `idx` (its backoff elapsed).
    Restart(usize),
    /// Stops every source in reverse start order, then answers.
    StopChildren(RpcReplyPort<()>),
}

struct Child {
    spec: SourceSpec,
    context: SourceContext,
    slot: Slot,
    actor: Option<ActorRef<SourceMsg>>,
    backoff: Backoff,
    /// When it last failed; a failure more than `restart_window_ms` later resets the backoff.
    failed_at: Option<Instant>,
}

/// State of [`SourceSupervisor`].
pub(crate) struct SupervisorState {
    children: Vec<Child>,
    by_id: BTreeMap<ActorId, usize>,
    supervision: SupervisionSection,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    stopping: bool,
}

/// Supervises the sources of one agent.
pub(crate) struct SourceSupervisor;

impl SupervisorState {
    fn name(&self, idx: usize) -> &str {
        self.children[idx].spec.name()
    }

    async fn spawn(&mut self, myself: &ActorRef<SupervisorMsg>, idx: usize) {
        let child = &self.children[idx];
        let args = SourceArgs {
            slot: child.slot.clone(),
            context: child.context.clone(),
        };
        match Actor::spawn_linked(None, SourceActor, args, myself.get_cell()).await {
            Ok((actor, _join)) => {
                self.by_id.insert(actor.get_id(), idx);
                self.children[idx].actor = Some(actor);
            }
            Err(e) => {
                let reason = format!("actor failed to start: {e}");
                self.failed(myself, idx, &reason);
            }
        }
    }

    /// Counts a failure of child `idx` and schedules its restart after the backoff.
    fn failed(&mut self, myself: &ActorRef<SupervisorMsg>, idx: usize, reason: &str) {
        let now = self.clock.now();
        let window = Duration::from_millis(self.supervision.restart_window_ms);
        let child = &mut self.children[idx];
        if child
            .failed_at
            .is_some_and(|t| now.saturating_duration_since(t) > window)
        {
            child.backoff.reset();
        }
        child.failed_at = Some(now);
        let delay = child.backoff.next_delay();
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let name = self.name(idx).to_owned();
        self.metrics.source_failed(&name, reason);
        warn!(source = %name, %reason, restart_in_ms = delay_ms, "source failed");
        myself.send_after(delay, move || SupervisorMsg::Restart(idx));
    }
}

impl Actor for SourceSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            children: Vec::with_capacity(args.children.len()),
            by_id: BTreeMap::new(),
            supervision: args.supervision,
            clock: args.clock,
            metrics: args.metrics,
            stopping: false,
        };
        for child in args.children {
            let rng = child
                .context
                .env
                .rng(child.context.source_idx as u64, RESTART_SALT);
            let backoff = Backoff::new(
                Duration::from_millis(state.supervision.restart_backoff_initial_ms),
                Duration::from_millis(state.supervision.restart_backoff_max_ms),
                rng,
            );
            state.children.push(Child {
                spec: child.spec,
                context: child.context,
                slot: Arc::new(Mutex::new(Some(child.source))),
                actor: None,
                backoff,
                failed_at: None,
            });
        }
        for idx in 0..state.children.len() {
            state.spawn(&myself, idx).await;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Restart(idx) => {
                if state.stopping || state.children[idx].actor.is_some() {
                    return Ok(());
                }
                let slot = state.children[idx].slot.clone();
                let empty = slot
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_none();
                if empty {
                    // The source panicked and took its value with it: build a fresh one.
                    match state.children[idx].spec.build() {
                        Ok(source) => {
                            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(source)
                        }
                        Err(e) => {
                            state.failed(&myself, idx, &e.to_string());
                            return Ok(());
                        }
                    }
                }
                let name = state.name(idx).to_owned();
                state.metrics.source_running(&name);
                info!(source = %name, "source restarting");
                state.spawn(&myself, idx).await;
            }
            SupervisorMsg::StopChildren(reply) => {
                state.stopping = true;
                for child in state.children.iter_mut().rev() {
                    if let Some(actor) = child.actor.take() {
                        let _ = actor
                            .stop_and_wait(None, Some(Duration::from_secs(10)))
                            .await;
                    }
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            _ => return Ok(()),
        };
        let Some(idx) = state.by_id.remove(&cell.get_id()) else {
            return Ok(());
        };
        state.children[idx].actor = None;
        if state.stopping {
            return Ok(());
        }
        match failure {
            Some(reason) => state.failed(&myself, idx, &reason),
            None => info!(source = %state.name(idx), "source finished: its input ended"),
        }
        Ok(())
    }
}

/// Arguments of [`SourceActor`].
pub(crate) struct SourceArgs {
    slot: Slot,
    context: SourceContext,
}

/// Messages of [`SourceActor`].
pub(crate) enum SourceMsg {
    /// The source's `run` returned (or panicked: `Err` with the panic message).
    Ended(Result<(), String>),
}

/// State of [`SourceActor`]: the task running the source.
pub(crate) struct SourceState {
    task: Option<AbortOnDrop>,
}

/// Aborts the source's task when dropped. ractor skips `post_stop` for a killed actor (a
/// supervisor stopped by force, an agent dropped), but it always drops the state, so the task
/// never outlives its actor.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one source on a task and turns its end into a failure or a normal stop.
pub(crate) struct SourceActor;

impl Actor for SourceActor {
    type Msg = SourceMsg;
    type State = SourceState;
    type Arguments = SourceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let Some(mut source) = take(&args.slot) else {
            return Err("source value missing".into());
        };
        let context = args.context;
        let span = tracing::info_span!("source", source = %context.sink.name());
        let task = tokio::spawn(
            async move {
                let result = source.run(&context).await;
                (source, result)
            }
            .instrument(span),
        );
        let abort = task.abort_handle();
        let slot = args.slot;
        tokio::spawn(async move {
            let ended = match task.await {
                Ok((source, result)) => {
                    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(source);
                    result.map_err(|e| e.to_string())
                }
                Err(e) if e.is_panic() => {
                    let panic = e.into_panic();
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".to_owned());
                    error!(%message, "source panicked");
                    Err(format!("panicked: {message}"))
                }
                // Aborted because the actor stopped: nobody is listening.
                Err(_) => return,
            };
            let _ = myself.cast(SourceMsg::Ended(ended));
        });
        Ok(SourceState {
            task: Some(AbortOnDrop(abort)),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SourceMsg::Ended(Ok(())) => {
                state.task = None;
                myself.stop(Some("input ended".into()));
                Ok(())
            }
            SourceMsg::Ended(Err(reason)) => {
                state.task = None;
                Err(reason.into())
            }
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Dropping the guard aborts the task.
        state.task = None;
        Ok(())
    }
}
