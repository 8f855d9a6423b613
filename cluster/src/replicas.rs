//! Replica placement and rebalance planning: which nodes hold each partition's replicas, and the
//! steps that get the cluster from where it is to there. Pure functions of their input (no IO, no
//! clock, only `BTree` collections), so the same view always gives the same plan.
//!
//! Rules, in priority order:
//! 1. never two replicas of a partition on one node; replicas only on `Active` nodes (draining,
//!    joining and removed nodes are given none, and lose the ones they have);
//! 2. maximal site spread: a partition's replicas go to distinct sites when there are at least as
//!    many sites as replicas, else as evenly over the sites as the nodes allow;
//! 3. replica counts per node balanced (within ±1 whenever the site rule leaves room for it);
//! 4. racks: among equally good sites, a node on a rack the partition does not use yet.
//!
//! A step is what one raft membership change does: add a learner, wait until it caught up, then
//! one joint change that adds it and removes the old replica ([`Step::Replace`]). A step never
//! takes a partition below its replication factor: a replica on a node that must be emptied is
//! only removed together with the addition of its replacement, and kept when no replacement
//! exists. This module plans; it does not track moves in flight (the rebalance driver does).

use bincode::{Decode, Encode};
use sluice_proto::{NodeId, PartitionId, StreamName};
use std::collections::{BTreeMap, BTreeSet};

/// Where a node is in its life in the cluster. Encoded in metadata commands: variants are
/// append-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub enum NodeState {
    /// Registered, not yet given replicas.
    Joining,
    /// Holds replicas and takes new ones.
    Active,
    /// Being emptied: its replicas move away, it takes none.
    Draining,
    /// Out of the cluster: holds nothing.
    Removed,
}

/// What placement needs to know about a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlacement {
    /// The site label (a data centre, a building): replicas spread over sites first.
    pub site: String,
    /// The optional rack label inside the site: a secondary spread.
    pub rack: Option<String>,
    /// The node's state; only `Active` nodes are given replicas.
    pub state: NodeState,
}

/// A partition of a stream: the unit that has a replica set (and, later, a raft group).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct PartitionKey {
    /// The stream.
    pub stream: StreamName,
    /// The partition in the stream.
    pub partition: PartitionId,
}

/// A partition's current replicas and how many it should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionReplicas {
    /// The nodes holding a replica now (the voters of the partition's group).
    pub replicas: BTreeSet<NodeId>,
    /// The replication factor (at least 1).
    pub factor: u32,
}

/// The input of planning: every node and every partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Every known node.
    pub nodes: BTreeMap<NodeId, NodePlacement>,
    /// Every partition with its replicas.
    pub partitions: BTreeMap<PartitionKey, PartitionReplicas>,
}

/// One membership change of one partition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// The partition has fewer replicas than its factor: add `node` (learner, catch up, promote).
    Add {
        /// The partition.
        partition: PartitionKey,
        /// The node that gets a new replica.
        node: NodeId,
    },
    /// Move a replica: add `add` as a learner, wait until it caught up, then one joint change
    /// that makes it a voter and removes `remove`. The replica count never drops.
    Replace {
        /// The partition.
        partition: PartitionKey,
        /// The node that gets the new replica.
        add: NodeId,
        /// The node whose replica goes, once the new one caught up.
        remove: NodeId,
    },
    /// The partition has more replicas than its factor: remove `node`'s replica.
    Remove {
        /// The partition.
        partition: PartitionKey,
        /// The node that loses its replica.
        node: NodeId,
    },
}

impl Step {
    /// The partition the step changes.
    pub fn partition(&self) -> &PartitionKey {
        match self {
            Step::Add { partition, .. }
            | Step::Replace { partition, .. }
            | Step::Remove { partition, .. } => partition,
        }
    }

    /// Applies the step to a replica set (what the membership looks like once it finished).
    pub fn apply(&self, replicas: &mut BTreeSet<NodeId>) {
        match self {
            Step::Add { node, .. } => {
                replicas.insert(*node);
            }
            Step::Replace { add, remove, .. } => {
                replicas.insert(*add);
                replicas.remove(remove);
            }
            Step::Remove { node, .. } => {
                replicas.remove(node);
            }
        }
    }
}

/// A rebalance plan: the target replica sets and the steps that reach them from the view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The replica set each partition should end with.
    pub targets: BTreeMap<PartitionKey, BTreeSet<NodeId>>,
    /// The steps, in partition order and, per partition, in the order to run them.
    pub steps: Vec<Step>,
}

impl Plan {
    /// The steps to start now: at most `moves_in_flight_max` minus the moves already in flight,
    /// at most one per partition (raft runs one membership change at a time per group), and none
    /// for a partition that has a move in flight.
    pub fn startable(
        &self,
        in_flight: &BTreeSet<PartitionKey>,
        moves_in_flight_max: usize,
    ) -> Vec<&Step> {
        let mut budget = moves_in_flight_max.saturating_sub(in_flight.len());
        let mut busy = in_flight.clone();
        let mut out = Vec::new();
        for step in &self.steps {
            if budget == 0 {
                break;
            }
            if busy.insert(step.partition().clone()) {
                out.push(step);
                budget -= 1;
            }
        }
        out
    }

    /// Whether the plan has nothing to do.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// Replica counts per node; every `Active` node appears, with 0 if it holds nothing.
fn counts_of(
    view: &ClusterView,
    sets: &BTreeMap<PartitionKey, BTreeSet<NodeId>>,
) -> BTreeMap<NodeId, usize> {
    let mut counts: BTreeMap<NodeId, usize> = view
        .nodes
        .iter()
        .filter(|(_, node)| node.state == NodeState::Active)
        .map(|(id, _)| (*id, 0))
        .collect();
    for set in sets.values() {
        for node in set {
            *counts.entry(*node).or_insert(0) += 1;
        }
    }
    counts
}

/// The number of replicas per site of a set, sorted from the most loaded site down. A smaller
/// vector (lexicographically) is a better spread: fewer replicas share the most shared site.
pub fn site_spread(view: &ClusterView, set: &BTreeSet<NodeId>) -> Vec<usize> {
    let mut per_site: BTreeMap<&str, usize> = BTreeMap::new();
    for node in set {
        let site = view.nodes.get(node).map_or("", |n| n.site.as_str());
        *per_site.entry(site).or_insert(0) += 1;
    }
    let mut spread: Vec<usize> = per_site.into_values().collect();
    spread.sort_unstable_by(|a, b| b.cmp(a));
    spread
}

/// How good a node is for the next replica of a partition; smaller is better: replicas on its
/// site, not a current replica, replicas on its rack, its load, its id.
type PickScore = (usize, bool, usize, usize, NodeId);

/// The replica set a partition should have, chosen greedily: each pick goes to a site with the
/// fewest replicas of the partition so far (water-filling, which gives the best spread), then
/// prefers a node already holding a replica (no data to move), then an unused rack, then the
/// least loaded node, then the lowest id.
fn choose_set(
    view: &ClusterView,
    current: &BTreeSet<NodeId>,
    factor: usize,
    counts: &BTreeMap<NodeId, usize>,
) -> BTreeSet<NodeId> {
    let mut chosen = BTreeSet::new();
    while chosen.len() < factor {
        let mut best: Option<(PickScore, NodeId)> = None;
        for (id, node) in &view.nodes {
            if node.state != NodeState::Active || chosen.contains(id) {
                continue;
            }
            let same_site = chosen
                .iter()
                .filter(|c| view.nodes.get(c).is_some_and(|n| n.site == node.site))
                .count();
            let same_rack = chosen
                .iter()
                .filter(|c| {
                    view.nodes
                        .get(c)
                        .is_some_and(|n| n.site == node.site && n.rack == node.rack)
                })
                .count();
            let load = counts.get(id).copied().unwrap_or(0);
            let score = (same_site, !current.contains(id), same_rack, load, *id);
            if best.as_ref().is_none_or(|(b, _)| score < *b) {
                best = Some((score, *id));
            }
        }
        match best {
            Some((_, id)) => {
                chosen.insert(id);
            }
            None => break,
        }
    }
    // Too few active nodes for the factor: keep replicas on emptying nodes rather than drop the
    // partition below its factor; they go once a replacement exists.
    for node in current {
        if chosen.len() >= factor {
            break;
        }
        chosen.insert(*node);
    }
    chosen
}

/// Phase 1: a well spread replica set for every partition, keeping replicas where the rules
/// allow. Loads are updated as partitions are decided so later picks see earlier ones.
fn spread_targets(view: &ClusterView) -> BTreeMap<PartitionKey, BTreeSet<NodeId>> {
    let mut targets: BTreeMap<PartitionKey, BTreeSet<NodeId>> = view
        .partitions
        .iter()
        .map(|(key, p)| (key.clone(), p.replicas.clone()))
        .collect();
    let mut counts = counts_of(view, &targets);
    for (key, partition) in &view.partitions {
        let factor = usize::try_from(partition.factor.max(1)).unwrap_or(usize::MAX);
        let set = choose_set(view, &partition.replicas, factor, &counts);
        for node in &partition.replicas {
            if let Some(c) = counts.get_mut(node) {
                *c = c.saturating_sub(1);
            }
        }
        for node in &set {
            *counts.entry(*node).or_insert(0) += 1;
        }
        targets.insert(key.clone(), set);
    }
    targets
}

/// One replica move inside the target computation.
type Hop = (PartitionKey, NodeId, NodeId);

/// Whether moving `set`'s replica from `source` to `target` keeps its site spread.
fn keeps_spread(
    view: &ClusterView,
    set: &BTreeSet<NodeId>,
    source: NodeId,
    target: NodeId,
) -> bool {
    if !set.contains(&source) || set.contains(&target) {
        return false;
    }
    let mut moved = set.clone();
    moved.remove(&source);
    moved.insert(target);
    site_spread(view, &moved) <= site_spread(view, set)
}

/// A chain of moves that takes one replica off a node with the most replicas and gives one to a
/// node with at least two fewer, every intermediate node keeping its count. Found by breadth
/// first search over "some partition on `a` may move to `b` without hurting its spread", so
/// a site-bound imbalance can be resolved through other nodes (node 3 cannot give to node 10 on
/// another site, but node 6 on node 3's site can, and node 3 can give to node 6).
fn find_balance_chain(
    view: &ClusterView,
    targets: &BTreeMap<PartitionKey, BTreeSet<NodeId>>,
    counts: &BTreeMap<NodeId, usize>,
) -> Option<Vec<Hop>> {
    let active: Vec<NodeId> = view
        .nodes
        .iter()
        .filter(|(_, n)| n.state == NodeState::Active)
        .map(|(id, _)| *id)
        .collect();
    let count = |id: &NodeId| counts.get(id).copied().unwrap_or(0);
    let mut sources = active.clone();
    sources.sort_by_key(|id| (std::cmp::Reverse(count(id)), *id));
    for source in sources {
        let mut previous: BTreeMap<NodeId, Hop> = BTreeMap::new();
        let mut frontier = vec![source];
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for from in frontier {
                for (key, set) in targets {
                    if !set.contains(&from) {
                        continue;
                    }
                    for &to in &active {
                        if to == source || previous.contains_key(&to) {
                            continue;
                        }
                        if !keeps_spread(view, set, from, to) {
                            continue;
                        }
                        previous.insert(to, (key.clone(), from, to));
                        if count(&to) + 2 <= count(&source) {
                            let mut chain = vec![previous[&to].clone()];
                            while chain[0].1 != source {
                                chain.insert(0, previous[&chain[0].1].clone());
                            }
                            return Some(chain);
                        }
                        next.push(to);
                    }
                }
            }
            frontier = next;
        }
    }
    None
}

/// Phase 2: move replicas from the most to the least loaded nodes while that keeps every
/// partition's site spread, until counts are within ±1 or no such chain exists. Each applied
/// chain lowers the sum of squared counts, so this ends.
fn balance_targets(view: &ClusterView, targets: &mut BTreeMap<PartitionKey, BTreeSet<NodeId>>) {
    let mut counts = counts_of(view, targets);
    while let Some(chain) = find_balance_chain(view, targets, &counts) {
        // A chain may use one partition twice; each hop is checked again as it is applied and
        // the chain stops at the first that no longer holds.
        let mut applied_to_end = true;
        for (key, source, target) in &chain {
            let Some(set) = targets.get_mut(key) else {
                applied_to_end = false;
                break;
            };
            if !keeps_spread(view, set, *source, *target) {
                applied_to_end = false;
                break;
            }
            set.remove(source);
            set.insert(*target);
            if let Some(c) = counts.get_mut(source) {
                *c -= 1;
            }
            *counts.entry(*target).or_insert(0) += 1;
        }
        if !applied_to_end {
            break;
        }
    }
}

/// The steps from `current` to `target` for one partition: pairs of (add, remove) as
/// replacements, then plain additions (under-replicated) or removals (over-replicated).
fn steps_for(
    key: &PartitionKey,
    current: &BTreeSet<NodeId>,
    target: &BTreeSet<NodeId>,
) -> Vec<Step> {
    let adds: Vec<NodeId> = target.difference(current).copied().collect();
    let removes: Vec<NodeId> = current.difference(target).copied().collect();
    let mut steps = Vec::new();
    for idx in 0..adds.len().max(removes.len()) {
        let partition = key.clone();
        steps.push(match (adds.get(idx), removes.get(idx)) {
            (Some(&add), Some(&remove)) => Step::Replace {
                partition,
                add,
                remove,
            },
            (Some(&node), None) => Step::Add { partition, node },
            (None, Some(&node)) => Step::Remove { partition, node },
            (None, None) => continue,
        });
    }
    // Additions before removals, so an under-replicated partition heals first.
    steps.sort_by_key(|s| matches!(s, Step::Remove { .. }));
    steps
}

/// Plans the rebalance of `view`: target replica sets and the steps to reach them. Planning the
/// view that results from applying every step gives an empty plan.
pub fn plan(view: &ClusterView) -> Plan {
    let mut targets = spread_targets(view);
    balance_targets(view, &mut targets);
    let mut steps = Vec::new();
    for (key, partition) in &view.partitions {
        if let Some(target) = targets.get(key) {
            steps.extend(steps_for(key, &partition.replicas, target));
        }
    }
    Plan { targets, steps }
}

/// Moving a partition's leadership from one replica to another.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaderTransfer {
    /// The partition.
    pub partition: PartitionKey,
    /// The current leader.
    pub source: NodeId,
    /// The replica that should lead.
    pub target: NodeId,
}

/// Plans leader transfers so leaders spread evenly over active nodes: a leader on a node that is
/// not active moves to the least loaded active replica; then, while a node leads at least two
/// more partitions than another node that holds a replica of one of them, one such partition
/// moves. `leaders` maps partitions to their current leader; partitions without a known leader,
/// or whose leader is not one of their replicas, are left to their election.
pub fn plan_leaders(
    view: &ClusterView,
    leaders: &BTreeMap<PartitionKey, NodeId>,
) -> Vec<LeaderTransfer> {
    let is_active = |id: &NodeId| {
        view.nodes
            .get(id)
            .is_some_and(|n| n.state == NodeState::Active)
    };
    let mut current: BTreeMap<PartitionKey, NodeId> = BTreeMap::new();
    for (key, leader) in leaders {
        if view
            .partitions
            .get(key)
            .is_some_and(|p| p.replicas.contains(leader))
        {
            current.insert(key.clone(), *leader);
        }
    }
    let mut counts: BTreeMap<NodeId, usize> = view
        .nodes
        .keys()
        .filter(|id| is_active(id))
        .map(|id| (*id, 0))
        .collect();
    for leader in current.values() {
        *counts.entry(*leader).or_insert(0) += 1;
    }
    let mut chosen = current.clone();
    // Leaders on nodes that are not active go first.
    for (key, leader) in &current {
        if is_active(leader) {
            continue;
        }
        let replicas = &view.partitions[key].replicas;
        let best = replicas
            .iter()
            .filter(|id| is_active(id))
            .min_by_key(|id| (counts.get(id).copied().unwrap_or(0), **id));
        if let Some(&target) = best {
            *counts.entry(target).or_insert(0) += 1;
            if let Some(c) = counts.get_mut(leader) {
                *c -= 1;
            }
            chosen.insert(key.clone(), target);
        }
    }
    // Then even out: each transfer lowers the sum of squared counts, so this ends.
    loop {
        let mut found = None;
        'search: for (key, leader) in &chosen {
            let leader_count = counts.get(leader).copied().unwrap_or(0);
            for replica in &view.partitions[key].replicas {
                let replica_count = counts.get(replica).copied().unwrap_or(0);
                if is_active(replica) && replica_count + 2 <= leader_count {
                    found = Some((key.clone(), *leader, *replica));
                    break 'search;
                }
            }
        }
        let Some((key, source, target)) = found else {
            break;
        };
        if let Some(c) = counts.get_mut(&source) {
            *c -= 1;
        }
        *counts.entry(target).or_insert(0) += 1;
        chosen.insert(key, target);
    }
    chosen
        .into_iter()
        .filter_map(|(key, target)| {
            let source = current[&key];
            (source != target).then_some(LeaderTransfer {
                partition: key,
                source,
                target,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(p: u32) -> PartitionKey {
        PartitionKey {
            stream: StreamName::new("s").unwrap(),
            partition: PartitionId(p),
        }
    }

    fn node(site: &str, rack: Option<&str>, state: NodeState) -> NodePlacement {
        NodePlacement {
            site: site.to_string(),
            rack: rack.map(str::to_string),
            state,
        }
    }

    /// `sites[i]` is the site of node `i + 1`; every node active.
    fn view_of(sites: &[&str], partitions: &[(Vec<u64>, u32)]) -> ClusterView {
        ClusterView {
            nodes: sites
                .iter()
                .enumerate()
                .map(|(i, s)| (NodeId(i as u64 + 1), node(s, None, NodeState::Active)))
                .collect(),
            partitions: partitions
                .iter()
                .enumerate()
                .map(|(i, (replicas, factor))| {
                    let replicas = replicas.iter().map(|n| NodeId(*n)).collect();
                    (
                        key(i as u32),
                        PartitionReplicas {
                            replicas,
                            factor: *factor,
                        },
                    )
                })
                .collect(),
        }
    }

    /// Applies a whole plan to the view.
    fn apply(view: &mut ClusterView, plan: &Plan) {
        for step in &plan.steps {
            step.apply(&mut view.partitions.get_mut(step.partition()).unwrap().replicas);
        }
    }

    fn ids(v: &[u64]) -> BTreeSet<NodeId> {
        v.iter().map(|n| NodeId(*n)).collect()
    }

    fn counts(view: &ClusterView) -> BTreeMap<NodeId, usize> {
        let sets = view
            .partitions
            .iter()
            .map(|(k, p)| (k.clone(), p.replicas.clone()))
            .collect();
        counts_of(view, &sets)
    }

    #[test]
    fn new_partitions_go_to_distinct_sites() {
        // Checks that empty partitions with factor 3 over three sites of two nodes each get one
        // replica per site, and that counts end within ±1 (6 partitions × 3 = 18 over 6 nodes).
        let mut view = view_of(&["a", "a", "b", "b", "c", "c"], &vec![(vec![], 3); 6]);
        let plan = plan(&view);
        assert!(plan.steps.iter().all(|s| matches!(s, Step::Add { .. })));
        apply(&mut view, &plan);
        for p in view.partitions.values() {
            assert_eq!(site_spread(&view, &p.replicas), vec![1, 1, 1]);
        }
        assert!(
            counts(&view).values().all(|c| *c == 3),
            "{:?}",
            counts(&view)
        );
    }

    #[test]
    fn added_node_takes_a_share_by_replacement() {
        // Checks that a fourth node on a single site receives replicas through Replace steps
        // (never a plain removal), ending 3 replicas per node for 4 partitions of factor 3.
        let mut view = view_of(&["a", "a", "a", "a"], &vec![(vec![1, 2, 3], 3); 4]);
        let plan = plan(&view);
        assert_eq!(plan.steps.len(), 3);
        assert!(plan
            .steps
            .iter()
            .all(|s| matches!(s, Step::Replace { add: NodeId(4), .. })));
        apply(&mut view, &plan);
        assert!(counts(&view).values().all(|c| *c == 3));
    }

    #[test]
    fn draining_node_is_emptied_and_stuck_without_replacement() {
        // Checks that a draining node's replicas are replaced by the spare node, and that with
        // no spare (three nodes, factor 3) the replica stays rather than drop below the factor.
        let mut view = view_of(&["a", "b", "c", "c"], &[(vec![1, 2, 3], 3)]);
        view.nodes.get_mut(&NodeId(3)).unwrap().state = NodeState::Draining;
        let p = plan(&view);
        assert_eq!(
            p.steps,
            vec![Step::Replace {
                partition: key(0),
                add: NodeId(4),
                remove: NodeId(3)
            }]
        );
        view.nodes.remove(&NodeId(4));
        assert!(plan(&view).is_empty());
        assert_eq!(plan(&view).targets[&key(0)], ids(&[1, 2, 3]));
    }

    #[test]
    fn new_site_gets_a_replica() {
        // Checks that replicas doubled up on one site move to a site added later.
        let view = view_of(&["a", "a", "b", "c"], &[(vec![1, 2, 3], 3)]);
        let p = plan(&view);
        assert_eq!(p.steps.len(), 1);
        assert!(matches!(p.steps[0], Step::Replace { add: NodeId(4), .. }));
    }

    #[test]
    fn over_and_under_replicated() {
        // Checks that a partition above its factor gets a Remove and one below gets an Add.
        let view = view_of(&["a", "b", "c"], &[(vec![1, 2, 3], 2), (vec![1], 2)]);
        let p = plan(&view);
        assert_eq!(p.steps.len(), 2);
        assert!(matches!(p.steps[0], Step::Remove { .. }));
        assert!(matches!(p.steps[1], Step::Add { .. }));
    }

    #[test]
    fn racks_spread_inside_a_site() {
        // Checks that with one site and two racks, a factor-2 partition uses both racks.
        let mut view = view_of(&["a", "a", "a"], &[(vec![], 2)]);
        view.nodes.get_mut(&NodeId(1)).unwrap().rack = Some("r1".into());
        view.nodes.get_mut(&NodeId(2)).unwrap().rack = Some("r1".into());
        view.nodes.get_mut(&NodeId(3)).unwrap().rack = Some("r2".into());
        assert_eq!(plan(&view).targets[&key(0)], ids(&[1, 3]));
    }

    #[test]
    fn startable_respects_the_in_flight_bound() {
        // Checks that at most `moves_in_flight_max` steps start, at most one per partition, none
        // for a partition already moving, in plan order.
        let replace = |p: u32, add: u64| Step::Replace {
            partition: key(p),
            add: NodeId(add),
            remove: NodeId(1),
        };
        let plan = Plan {
            targets: BTreeMap::new(),
            steps: vec![
                replace(0, 4),
                replace(1, 4),
                replace(1, 5),
                replace(2, 4),
                replace(3, 4),
            ],
        };
        let busy: BTreeSet<_> = [key(0)].into();
        let start: Vec<Step> = plan.startable(&busy, 3).into_iter().cloned().collect();
        assert_eq!(start, vec![replace(1, 4), replace(2, 4)]);
        assert!(plan.startable(&busy, 1).is_empty());
        assert_eq!(plan.startable(&BTreeSet::new(), 9).len(), 4);
    }

    #[test]
    fn leaders_spread_and_leave_draining_nodes() {
        // Checks that four partitions all led by node 1 end with leaders spread 2/1/1 or better,
        // and that a leader on a draining node moves to an active replica.
        let mut view = view_of(&["a", "b", "c"], &vec![(vec![1, 2, 3], 3); 4]);
        let leaders: BTreeMap<_, _> = (0..4).map(|p| (key(p), NodeId(1))).collect();
        let transfers = plan_leaders(&view, &leaders);
        let mut after = leaders.clone();
        for t in &transfers {
            assert_eq!(after[&t.partition], t.source);
            after.insert(t.partition.clone(), t.target);
        }
        let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
        for l in after.values() {
            *per_node.entry(*l).or_insert(0) += 1;
        }
        assert_eq!(per_node.len(), 3, "{per_node:?}");
        assert!(per_node.values().all(|c| (1..=2).contains(c)));
        view.nodes.get_mut(&NodeId(1)).unwrap().state = NodeState::Draining;
        let t = plan_leaders(&view, &leaders);
        assert_eq!(t.len(), 4);
        assert!(t.iter().all(|t| t.target != NodeId(1)));
    }

    /// A random cluster: 1..=4 sites of `per_site` nodes, some draining or removed, partitions
    /// with random current replicas and factors 1..=3.
    fn arb_view() -> impl Strategy<Value = ClusterView> {
        (1usize..=4, 1usize..=4, 1usize..=24, any::<u64>()).prop_map(
            |(n_sites, per_site, n_partitions, seed)| {
                let mut rng = seed;
                let mut next = move || {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    rng >> 33
                };
                let n_nodes = n_sites * per_site;
                let mut view = ClusterView::default();
                for i in 0..n_nodes {
                    let state = match next() % 10 {
                        0 => NodeState::Draining,
                        1 => NodeState::Removed,
                        2 => NodeState::Joining,
                        _ => NodeState::Active,
                    };
                    let rack = (next() % 2 == 0).then(|| format!("r{}", next() % 2));
                    view.nodes.insert(
                        NodeId(i as u64 + 1),
                        NodePlacement {
                            site: format!("s{}", i % n_sites),
                            rack,
                            state,
                        },
                    );
                }
                for p in 0..n_partitions {
                    let factor = 1 + (next() % 3) as u32;
                    let n_current = (next() % 4) as usize;
                    let replicas = (0..n_current)
                        .map(|_| NodeId(1 + next() % n_nodes as u64))
                        .collect();
                    view.partitions
                        .insert(key(p as u32), PartitionReplicas { replicas, factor });
                }
                view
            },
        )
    }

    /// The best spread of `factor` replicas over the active nodes, by water-filling sites.
    fn best_spread(view: &ClusterView, factor: usize) -> Vec<usize> {
        let mut capacity: BTreeMap<&str, usize> = BTreeMap::new();
        for n in view.nodes.values().filter(|n| n.state == NodeState::Active) {
            *capacity.entry(n.site.as_str()).or_insert(0) += 1;
        }
        let mut used: BTreeMap<&str, usize> = capacity.keys().map(|s| (*s, 0)).collect();
        for _ in 0..factor {
            let site = used
                .iter()
                .filter(|(s, u)| **u < capacity[**s])
                .min_by_key(|(s, u)| (**u, **s))
                .map(|(s, _)| *s);
            match site {
                Some(s) => *used.get_mut(s).unwrap() += 1,
                None => break,
            }
        }
        let mut spread: Vec<usize> = used.into_values().filter(|u| *u > 0).collect();
        spread.sort_unstable_by(|a, b| b.cmp(a));
        spread
    }

    proptest! {
        #[test]
        fn plans_are_safe_spread_balanced_and_idempotent(view in arb_view()) {
            // Checks, for random clusters: the same view gives the same plan; no step reduces a
            // partition below its factor; after applying the plan no node holds two replicas of
            // a partition (sets make that structural, so check sizes), only active nodes hold
            // replicas when enough exist, the site spread is the best possible, counts are
            // within ±1 when every site has the same number of active nodes, and planning again
            // gives nothing to do.
            let first = plan(&view);
            prop_assert_eq!(&first, &plan(&view.clone()));
            let mut after = view.clone();
            for step in &first.steps {
                let p = after.partitions.get_mut(step.partition()).unwrap();
                let before = p.replicas.len();
                step.apply(&mut p.replicas);
                let factor = p.factor as usize;
                prop_assert!(p.replicas.len() >= before.min(factor), "{:?}", step);
            }
            let n_active = view.nodes.values().filter(|n| n.state == NodeState::Active).count();
            for (k, p) in &after.partitions {
                let factor = p.factor as usize;
                prop_assert_eq!(&p.replicas, &first.targets[k]);
                let active: BTreeSet<NodeId> = p.replicas.iter().copied()
                    .filter(|id| after.nodes[id].state == NodeState::Active).collect();
                prop_assert_eq!(active.len(), factor.min(n_active));
                if n_active >= factor {
                    prop_assert_eq!(p.replicas.len(), factor);
                    prop_assert_eq!(site_spread(&after, &p.replicas), best_spread(&after, factor));
                }
            }
            let mut per_site: BTreeMap<&str, usize> = BTreeMap::new();
            for n in view.nodes.values().filter(|n| n.state == NodeState::Active) {
                *per_site.entry(n.site.as_str()).or_insert(0) += 1;
            }
            let even_sites = per_site.values().collect::<BTreeSet<_>>().len() <= 1;
            let all_fit = view.partitions.values().all(|p| p.factor as usize <= n_active);
            if even_sites && all_fit {
                let c = counts(&after);
                let active_counts: Vec<usize> = c.iter()
                    .filter(|(id, _)| after.nodes[id].state == NodeState::Active)
                    .map(|(_, c)| *c).collect();
                if let (Some(max), Some(min)) = (active_counts.iter().max(), active_counts.iter().min()) {
                    prop_assert!(max - min <= 1, "{:?}", c);
                }
            }
            prop_assert!(plan(&after).is_empty(), "{:?}", plan(&after).steps);
        }

        #[test]
        fn losing_a_site_of_three_keeps_a_majority(n_per_site in 1usize..=4, n_partitions in 1u32..=30) {
            // Checks that with factor 3 over three equal sites, after the plan every partition
            // keeps 2 of its 3 replicas (a majority) when any one whole site is lost.
            let sites: Vec<String> = (0..3 * n_per_site).map(|i| format!("s{}", i % 3)).collect();
            let sites: Vec<&str> = sites.iter().map(String::as_str).collect();
            let parts: Vec<(Vec<u64>, u32)> = (0..n_partitions).map(|_| (vec![], 3)).collect();
            let mut view = view_of(&sites, &parts);
            let p = plan(&view);
            apply(&mut view, &p);
            for lost in ["s0", "s1", "s2"] {
                for p in view.partitions.values() {
                    let left = p.replicas.iter().filter(|id| view.nodes[id].site != lost).count();
                    prop_assert!(left >= 2);
                }
            }
        }

        #[test]
        fn leader_plans_are_valid_and_deterministic(view in arb_view(), pick in any::<u64>()) {
            // Checks that leader transfers start at the current leader, end on an active replica,
            // come out the same twice, and never make the leader counts less even.
            let mut view = view;
            let p = plan(&view);
            apply(&mut view, &p);
            let leaders: BTreeMap<PartitionKey, NodeId> = view.partitions.iter()
                .filter_map(|(k, p)| {
                    let v: Vec<_> = p.replicas.iter().collect();
                    (!v.is_empty()).then(|| (k.clone(), *v[(pick as usize) % v.len()]))
                }).collect();
            let t = plan_leaders(&view, &leaders);
            prop_assert_eq!(&t, &plan_leaders(&view, &leaders));
            let mut after = leaders.clone();
            for tr in &t {
                prop_assert_eq!(after[&tr.partition], tr.source);
                prop_assert!(view.partitions[&tr.partition].replicas.contains(&tr.target));
                prop_assert_eq!(view.nodes[&tr.target].state, NodeState::Active);
                after.insert(tr.partition.clone(), tr.target);
            }
            let spread = |l: &BTreeMap<PartitionKey, NodeId>| {
                let mut c: BTreeMap<NodeId, usize> = view.nodes.iter()
                    .filter(|(_, n)| n.state == NodeState::Active).map(|(id, _)| (*id, 0)).collect();
                for n in l.values() { *c.entry(*n).or_insert(0) += 1; }
                c.values().max().copied().unwrap_or(0) - c.values().min().copied().unwrap_or(0)
            };
            if leaders.values().all(|l| view.nodes[l].state == NodeState::Active) {
                prop_assert!(spread(&after) <= spread(&leaders));
            }
        }
    }
}
