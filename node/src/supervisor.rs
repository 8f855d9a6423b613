//! The node supervisor: starts the partition actors in a fixed order (streams as configured,
//! partitions ascending), restarts a failed one within a bounded budget (`restarts_max` per
//! `restart_window_ms`), and beyond it leaves that partition stopped (its requests are answered
//! `Unavailable`) while the rest of the node goes on. It stops its children in the reverse order.
//!
//! Storage faults do not reach it: a partition that cannot write or whose log is corrupt stays
//! up, degraded or read-only (see `partition::actor`). What it restarts is a partition actor that
//! failed for another reason (a bug).

use crate::config::SupervisionSection;
use crate::partition::actor::{PartitionActor, PartitionArgs, PartitionMsg};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use sluice_proto::env::Clock;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Arguments of [`NodeSupervisor`].
pub struct SupervisorArgs {
    /// One entry per partition, in start order.
    pub partitions: Vec<PartitionArgs>,
    /// Restart budget.
    pub supervision: SupervisionSection,
    /// Time, for the restart window.
    pub clock: Arc<dyn Clock>,
}

/// Messages of [`NodeSupervisor`].
pub enum SupervisorMsg {
    /// Stops every child in reverse start order, then answers.
    StopChildren(ractor::RpcReplyPort<()>),
}

struct Child {
    args: PartitionArgs,
    actor: Option<ActorRef<PartitionMsg>>,
    restarts: VecDeque<Instant>,
}

/// State of the supervisor.
pub struct SupervisorState {
    children: Vec<Child>,
    by_id: BTreeMap<ActorId, usize>,
    supervision: SupervisionSection,
    clock: Arc<dyn Clock>,
    stopping: bool,
}

/// Supervises the partition actors of one node.
pub struct NodeSupervisor;

async fn spawn_child(
    myself: &ActorCell,
    args: PartitionArgs,
) -> Result<ActorRef<PartitionMsg>, ActorProcessingErr> {
    let what = format!("partition {}/{}", args.stream, args.partition);
    let (actor, _join) = Actor::spawn_linked(None, PartitionActor, args, myself.clone())
        .await
        .map_err(|e| format!("{what} failed to start: {e}"))?;
    Ok(actor)
}

impl Actor for NodeSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            children: Vec::with_capacity(args.partitions.len()),
            by_id: BTreeMap::new(),
            supervision: args.supervision,
            clock: args.clock,
            stopping: false,
        };
        for partition in args.partitions {
            let actor = spawn_child(&myself.get_cell(), partition.clone()).await?;
            state.by_id.insert(actor.get_id(), state.children.len());
            state.children.push(Child {
                args: partition,
                actor: Some(actor),
                restarts: VecDeque::new(),
            });
        }
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::StopChildren(reply) => {
                state.stopping = true;
                for child in state.children.iter_mut().rev() {
                    if let Some(actor) = child.actor.take() {
                        child
                            .args
                            .registry
                            .remove(&child.args.stream, child.args.partition);
                        let _ = actor
                            .stop_and_wait(None, Some(Duration::from_secs(30)))
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
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let Some(idx) = state.by_id.remove(&cell.get_id()) else {
            return Ok(());
        };
        if state.stopping {
            return Ok(());
        }
        let now = state.clock.now();
        let window = Duration::from_millis(state.supervision.restart_window_ms);
        let child = &mut state.children[idx];
        child.actor = None;
        child
            .args
            .registry
            .remove(&child.args.stream, child.args.partition);
        while child
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            child.restarts.pop_front();
        }
        let (stream, partition) = (child.args.stream.clone(), child.args.partition.0);
        if child.restarts.len() >= state.supervision.restarts_max as usize {
            error!(%stream, partition_id = partition, %reason, restarts = child.restarts.len(), "partition keeps failing; restart budget spent, leaving it stopped");
            return Ok(());
        }
        child.restarts.push_back(now);
        warn!(%stream, partition_id = partition, %reason, "partition stopped; restarting");
        match spawn_child(&myself.get_cell(), child.args.clone()).await {
            Ok(actor) => {
                state.by_id.insert(actor.get_id(), idx);
                state.children[idx].actor = Some(actor);
                info!(%stream, partition_id = partition, "partition restarted");
            }
            Err(error) => {
                error!(%stream, partition_id = partition, %error, "partition could not be restarted; leaving it stopped");
            }
        }
        Ok(())
    }
}
