//! The rebalance driver: given the metadata state and what partition leaders report about their
//! groups, the next actions that move the cluster toward `replicas::plan`'s targets. A pure
//! function, re-run whenever either input changes; it never remembers anything itself, so a
//! move interrupted by a leader change or a crash (for example a group left in its joint
//! configuration) is picked up again from the reports.
//!
//! A move runs: `BeginMove` recorded in metadata → the new node added as a learner → once it
//! caught up, one membership change to the final voters (openraft goes joint, then uniform) →
//! `FinishMove` recorded once the group's uniform voters are the final ones. The old replica is
//! never removed before the new one caught up.

use crate::metadata::{Command, MetadataState, MoveState};
use crate::replicas::{PartitionKey, Step};
use sluice_proto::NodeId;
use std::collections::{BTreeMap, BTreeSet};

/// What a partition's leader reports about its raft group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupProgress {
    /// The voters of the current configuration (of the new half when joint).
    pub voters: BTreeSet<NodeId>,
    /// Whether the configuration is joint (a change started and not finished).
    pub joint: bool,
    /// The learners.
    pub learners: BTreeSet<NodeId>,
    /// The learners whose log is close enough to the leader's to be promoted.
    pub caught_up: BTreeSet<NodeId>,
}

/// One thing to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Propose this command to the metadata group.
    Propose(Command),
    /// Ask the partition's leader to add `node` as a learner.
    AddLearner {
        /// The partition.
        partition: PartitionKey,
        /// The new replica.
        node: NodeId,
    },
    /// Ask the partition's leader to change its voters to `voters` (joint, then uniform; also
    /// what finishes a change left joint).
    ChangeMembership {
        /// The partition.
        partition: PartitionKey,
        /// The final voters.
        voters: BTreeSet<NodeId>,
    },
}

/// The replica set once `moving` finished.
fn final_voters(replicas: &BTreeSet<NodeId>, moving: &MoveState) -> BTreeSet<NodeId> {
    let mut voters = replicas.clone();
    if let Some(id) = moving.add {
        voters.insert(id);
    }
    if let Some(id) = moving.remove {
        voters.remove(&id);
    }
    voters
}

/// The next step of one move in flight, from its group's report.
fn advance(
    key: &PartitionKey,
    final_set: BTreeSet<NodeId>,
    add: Option<NodeId>,
    progress: &GroupProgress,
) -> Option<Action> {
    if progress.voters == final_set && !progress.joint {
        return Some(Action::Propose(Command::FinishMove {
            partition: key.clone(),
        }));
    }
    if progress.joint {
        return Some(Action::ChangeMembership {
            partition: key.clone(),
            voters: final_set,
        });
    }
    match add {
        Some(node) if !progress.learners.contains(&node) && !progress.voters.contains(&node) => {
            Some(Action::AddLearner {
                partition: key.clone(),
                node,
            })
        }
        Some(node) if !progress.caught_up.contains(&node) => None,
        _ => Some(Action::ChangeMembership {
            partition: key.clone(),
            voters: final_set,
        }),
    }
}

/// The actions to take now: advance every move in flight whose group reported, then start new
/// moves from the plan (computed as if the moves in flight had finished) while fewer than
/// `moves_in_flight_max` are in flight. Partitions without a report are left alone.
pub fn next_actions(
    state: &MetadataState,
    progress: &BTreeMap<PartitionKey, GroupProgress>,
    moves_in_flight_max: usize,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut in_flight = BTreeSet::new();
    let mut view = state.cluster_view();
    for (key, partition) in &state.partitions {
        let Some(moving) = &partition.moving else {
            continue;
        };
        in_flight.insert(key.clone());
        let final_set = final_voters(&partition.replicas, moving);
        if let Some(report) = progress.get(key) {
            actions.extend(advance(key, final_set.clone(), moving.add, report));
        }
        if let Some(p) = view.partitions.get_mut(key) {
            p.replicas = final_set;
        }
    }
    let plan = crate::replicas::plan(&view);
    for step in plan.startable(&in_flight, moves_in_flight_max) {
        let (add, remove) = match step {
            Step::Add { node, .. } => (Some(*node), None),
            Step::Replace { add, remove, .. } => (Some(*add), Some(*remove)),
            Step::Remove { node, .. } => (None, Some(*node)),
        };
        actions.push(Action::Propose(Command::BeginMove {
            partition: step.partition().clone(),
            step: MoveState { add, remove },
        }));
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{Applied, Retention};
    use crate::replicas::NodeState;
    use sluice_proto::{PartitionId, StreamName};

    fn state_with_fourth_node() -> MetadataState {
        let mut state = MetadataState::default();
        for id in 1..=4u64 {
            let add = Command::AddNode {
                node: NodeId(id),
                address: format!("n{id}:7000"),
                site: "a".into(),
                rack: None,
                storage_incarnation: 1,
            };
            state.apply(&add).unwrap();
            if id < 4 {
                let active = Command::SetNodeState {
                    node: NodeId(id),
                    state: NodeState::Active,
                };
                state.apply(&active).unwrap();
            }
        }
        let name = StreamName::new("temp").unwrap();
        let create = Command::CreateStream {
            name: name.clone(),
            factor: 3,
            retention: Retention::default(),
            replicas: state.place_new_stream(&name, 4, 3),
        };
        state.apply(&create).unwrap();
        let active = Command::SetNodeState {
            node: NodeId(4),
            state: NodeState::Active,
        };
        state.apply(&active).unwrap();
        state
    }

    /// A report of a group whose voters are its replicas and that has no learners.
    fn settled(state: &MetadataState) -> BTreeMap<PartitionKey, GroupProgress> {
        state
            .partitions
            .iter()
            .map(|(k, p)| {
                let report = GroupProgress {
                    voters: p.replicas.clone(),
                    ..GroupProgress::default()
                };
                (k.clone(), report)
            })
            .collect()
    }

    #[test]
    fn a_move_runs_learner_catch_up_joint_finish() {
        // Checks one move through every stage with moves_in_flight_max = 1: begin, add the
        // learner, wait while it is behind, change membership once caught up, finish a change
        // left joint (interrupted), record the finish; and that no second move starts meanwhile.
        let mut state = state_with_fourth_node();
        let mut progress = settled(&state);
        let actions = next_actions(&state, &progress, 1);
        assert_eq!(actions.len(), 1, "{actions:?}");
        let Action::Propose(begin @ Command::BeginMove { partition, step }) = &actions[0] else {
            panic!("{actions:?}");
        };
        assert_eq!(step.add, Some(NodeId(4)));
        let (key, step) = (partition.clone(), *step);
        assert_eq!(state.apply(begin), Ok(Applied::MoveBegun));
        let add_learner = Action::AddLearner {
            partition: key.clone(),
            node: NodeId(4),
        };
        assert_eq!(next_actions(&state, &progress, 1), vec![add_learner]);
        let report = progress.get_mut(&key).unwrap();
        report.learners.insert(NodeId(4));
        assert_eq!(next_actions(&state, &progress, 1), vec![]);
        progress.get_mut(&key).unwrap().caught_up.insert(NodeId(4));
        let voters = final_voters(&state.partitions[&key].replicas, &step);
        let change = Action::ChangeMembership {
            partition: key.clone(),
            voters: voters.clone(),
        };
        assert_eq!(next_actions(&state, &progress, 1), vec![change.clone()]);
        let report = progress.get_mut(&key).unwrap();
        report.voters = voters.clone();
        report.joint = true;
        assert_eq!(next_actions(&state, &progress, 1), vec![change]);
        progress.get_mut(&key).unwrap().joint = false;
        let finish = Command::FinishMove {
            partition: key.clone(),
        };
        let actions = next_actions(&state, &progress, 1);
        assert_eq!(actions, vec![Action::Propose(finish.clone())]);
        state.apply(&finish).unwrap();
        assert_eq!(state.partitions[&key].replicas, voters);
    }

    #[test]
    fn driving_to_the_end_balances_the_cluster() {
        // Checks that running the driver with obedient groups until it proposes nothing leaves
        // every node with 3 replicas (12 over 4 nodes), never more than 2 moves in flight, and
        // takes a bounded number of rounds.
        let mut state = state_with_fourth_node();
        let mut progress = settled(&state);
        for _ in 0..200 {
            let actions = next_actions(&state, &progress, 2);
            if actions.is_empty() {
                break;
            }
            for action in actions {
                match action {
                    Action::Propose(command) => {
                        state.apply(&command).unwrap();
                    }
                    Action::AddLearner { partition, node } => {
                        let report = progress.get_mut(&partition).unwrap();
                        report.learners.insert(node);
                        report.caught_up.insert(node);
                    }
                    Action::ChangeMembership { partition, voters } => {
                        let report = progress.get_mut(&partition).unwrap();
                        report.learners.retain(|l| !voters.contains(l));
                        report.voters = voters;
                    }
                }
            }
            let n_moving = state
                .partitions
                .values()
                .filter(|p| p.moving.is_some())
                .count();
            assert!(n_moving <= 2);
        }
        assert!(next_actions(&state, &progress, 2).is_empty());
        let mut counts: BTreeMap<NodeId, usize> = BTreeMap::new();
        for p in state.partitions.values() {
            assert!(p.moving.is_none());
            for id in &p.replicas {
                *counts.entry(*id).or_insert(0) += 1;
            }
        }
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![3; 4]);
        assert!(state.partitions.contains_key(&PartitionKey {
            stream: StreamName::new("temp").unwrap(),
            partition: PartitionId(3),
        }));
    }

    /// A cluster of `n_old` active nodes over `n_sites` sites with a stream of `n_partitions`
    /// of factor `factor`, then `n_new` more nodes made active.
    fn grown(
        n_sites: u64,
        n_old: u64,
        n_new: u64,
        n_partitions: u32,
        factor: u32,
    ) -> MetadataState {
        let mut state = MetadataState::default();
        let activate = |state: &mut MetadataState, id: u64| {
            let add = Command::AddNode {
                node: NodeId(id),
                address: format!("n{id}:7000"),
                site: format!("s{}", id % n_sites),
                rack: None,
                storage_incarnation: 1,
            };
            state.apply(&add).unwrap();
            let active = Command::SetNodeState {
                node: NodeId(id),
                state: NodeState::Active,
            };
            state.apply(&active).unwrap();
        };
        for id in 1..=n_old {
            activate(&mut state, id);
        }
        let name = StreamName::new("s").unwrap();
        let create = Command::CreateStream {
            name: name.clone(),
            factor,
            retention: Retention::default(),
            replicas: state.place_new_stream(&name, n_partitions, factor),
        };
        state.apply(&create).unwrap();
        for id in n_old + 1..=n_old + n_new {
            activate(&mut state, id);
        }
        state
    }

    proptest::proptest! {
        #[test]
        fn moves_never_promote_a_learner_that_is_behind(
            n_sites in 1u64..=3, n_old in 3u64..=5, n_new in 1u64..=3, n_partitions in 1u32..=12,
            factor in 1u32..=3, obey in proptest::collection::vec(proptest::bool::ANY, 64),
            moves_in_flight_max in 1usize..=3,
        ) {
            // Checks, with groups that carry out each action or not at random (a leader that is
            // slow or lost the request), and learners that catch up only on some rounds: every
            // membership change names final voters that include the added node only once it
            // caught up, every proposed command is accepted by the state machine, moves in
            // flight stay within the bound, and once groups obey the cluster converges to an
            // empty plan.
            let mut state = grown(n_sites, n_old, n_new, n_partitions, factor);
            let mut progress = settled(&state);
            for round in 0..400usize {
                let actions = next_actions(&state, &progress, moves_in_flight_max);
                // Nothing to do while a learner catches up is waiting, not the end.
                if actions.is_empty() && state.partitions.values().all(|p| p.moving.is_none()) {
                    break;
                }
                for (idx, action) in actions.into_iter().enumerate() {
                    let obeys = round >= 64 || obey[(round + idx) % obey.len()];
                    match action {
                        Action::Propose(command) => {
                            proptest::prop_assert!(state.apply(&command).is_ok(), "{:?}", command);
                        }
                        Action::AddLearner { partition, node } => {
                            if obeys {
                                progress.get_mut(&partition).unwrap().learners.insert(node);
                            }
                        }
                        Action::ChangeMembership { partition, voters } => {
                            let report = progress.get_mut(&partition).unwrap();
                            let moving = state.partitions[&partition].moving.unwrap();
                            if let Some(add) = moving.add {
                                proptest::prop_assert!(report.caught_up.contains(&add));
                                proptest::prop_assert!(voters.contains(&add));
                            }
                            if obeys {
                                report.learners.retain(|l| !voters.contains(l));
                                report.voters = voters;
                            }
                        }
                    }
                }
                // Learners catch up on some rounds only.
                if round >= 64 || obey[round % obey.len()] {
                    for report in progress.values_mut() {
                        let learners = report.learners.clone();
                        report.caught_up.extend(learners);
                    }
                }
                let n_moving = state.partitions.values().filter(|p| p.moving.is_some()).count();
                proptest::prop_assert!(n_moving <= moves_in_flight_max);
            }
            proptest::prop_assert!(next_actions(&state, &progress, moves_in_flight_max).is_empty());
            proptest::prop_assert!(crate::replicas::plan(&state.cluster_view()).is_empty());
        }
    }
}
