//! The metadata linearizability checker: the history of what simulated clients asked the
//! metadata group and what they were told, kept by the checker itself, and a search (Wing &
//! Gong's, as Lowe's WGL: depth first, memoizing each visited set of linearized operations with
//! the model state it produced) for a total order that
//!
//! - respects real time: an operation that answered before another was invoked comes first;
//! - applied one by one to a fresh [`MetadataState`] gives exactly what each client was told: the
//!   same `Applied`, the same rejection, and for a linearizable read the same whole state;
//! - includes every operation with a definite answer, and any subset of those whose outcome is
//!   unknown (a timeout or `Unavailable`: it may have been committed, at any time after its
//!   invocation, or never).
//!
//! Attempts that did nothing by contract (a `NotLeader` refusal: nothing was proposed; a failed
//! read) are not recorded. Reads and rejected writes leave the state unchanged, so when one fits
//! the current state it is linearized at once without branching (moving it earlier never breaks
//! an order). The search is bounded ([`SEARCH_STEPS_MAX`]); histories are kept to tens of
//! operations by the run, so the bound is far from reached.

use sluice_cluster::metadata::{Applied, Command, MetadataError, MetadataState};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::time::Duration;

/// The most operations one history may hold (the linearized set is a `u128`).
pub const OPS_MAX: usize = 128;
/// The most search steps before the checker gives up (and says so).
pub const SEARCH_STEPS_MAX: u64 = 2_000_000;

/// What a write was told.
pub type WriteOutcome = Result<Applied, MetadataError>;

/// One operation of the history.
#[derive(Debug, Clone)]
pub struct Op {
    /// Which client.
    pub client: u32,
    /// When it was invoked (simulated time).
    pub invoked: Duration,
    /// When its answer arrived; `None` when its outcome is unknown (it may take effect at any
    /// time after `invoked`).
    pub answered: Option<Duration>,
    /// What it was.
    pub kind: OpKind,
}

/// A write or a read, with what the client saw.
#[derive(Debug, Clone)]
pub enum OpKind {
    /// A proposal, with its definite outcome (`None`: unknown).
    Write {
        /// The command.
        command: Command,
        /// What the client was told, if it was told something definite.
        outcome: Option<WriteOutcome>,
    },
    /// A linearizable read and the state it returned.
    Read {
        /// The state read.
        state: MetadataState,
    },
}

/// The checker's record of the metadata operations of one run.
#[derive(Debug, Default, Clone)]
pub struct History {
    ops: Vec<Op>,
}

impl History {
    /// Records a write with a definite outcome.
    pub fn write(
        &mut self,
        client: u32,
        invoked: Duration,
        answered: Duration,
        command: Command,
        outcome: WriteOutcome,
    ) {
        self.push(Op {
            client,
            invoked,
            answered: Some(answered),
            kind: OpKind::Write {
                command,
                outcome: Some(outcome),
            },
        });
    }

    /// Records a write whose outcome is unknown.
    pub fn write_unknown(&mut self, client: u32, invoked: Duration, command: Command) {
        self.push(Op {
            client,
            invoked,
            answered: None,
            kind: OpKind::Write {
                command,
                outcome: None,
            },
        });
    }

    /// Records a linearizable read.
    pub fn read(
        &mut self,
        client: u32,
        invoked: Duration,
        answered: Duration,
        state: MetadataState,
    ) {
        self.push(Op {
            client,
            invoked,
            answered: Some(answered),
            kind: OpKind::Read { state },
        });
    }

    fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Operations recorded.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// True when `OPS_MAX` operations are recorded (clients stop there).
    pub fn is_full(&self) -> bool {
        self.ops.len() >= OPS_MAX
    }

    /// The operations, in the order recorded.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Counts: (definite writes applied, definite rejections, unknown writes, reads).
    pub fn counts(&self) -> (u32, u32, u32, u32) {
        let mut counts = (0, 0, 0, 0);
        for op in &self.ops {
            match &op.kind {
                OpKind::Write {
                    outcome: Some(Ok(_)),
                    ..
                } => counts.0 += 1,
                OpKind::Write {
                    outcome: Some(Err(_)),
                    ..
                } => counts.1 += 1,
                OpKind::Write { outcome: None, .. } => counts.2 += 1,
                OpKind::Read { .. } => counts.3 += 1,
            }
        }
        counts
    }

    /// The history as text, one operation a line (for a violation's details).
    pub fn describe(&self) -> String {
        let mut text = String::new();
        for (idx, op) in self.ops.iter().enumerate() {
            let answered = op
                .answered
                .map_or("?".to_owned(), |a| format!("{:.3}s", a.as_secs_f64()));
            let what = match &op.kind {
                OpKind::Write { command, outcome } => format!("{command:?} -> {outcome:?}"),
                OpKind::Read { state } => format!(
                    "read -> nodes {:?} streams {:?} acls {:?} next_incarnation {}",
                    state.nodes.keys().collect::<Vec<_>>(),
                    state.streams.keys().collect::<Vec<_>>(),
                    state.acls,
                    state.next_incarnation
                ),
            };
            let _ = writeln!(
                text,
                "  #{idx} client {} [{:.3}s, {answered}] {what}",
                op.client,
                op.invoked.as_secs_f64()
            );
        }
        text
    }

    /// Searches for a linearization; `Err` says why there is none (or that the search gave up).
    pub fn check(&self) -> Result<(), String> {
        if self.ops.len() > OPS_MAX {
            return Err(format!(
                "{} operations, more than the checker's {OPS_MAX}",
                self.ops.len()
            ));
        }
        let n = self.ops.len();
        let bit = |i: usize| 1u128 << i;
        let mut definite = 0u128;
        for (i, op) in self.ops.iter().enumerate() {
            if op.answered.is_some() {
                definite |= bit(i);
            }
        }
        // before[i]: the definite operations that answered before operation i was invoked.
        let before: Vec<u128> = self
            .ops
            .iter()
            .map(|op| {
                let mut mask = 0u128;
                for (j, other) in self.ops.iter().enumerate() {
                    if other.answered.is_some_and(|a| a < op.invoked) {
                        mask |= bit(j);
                    }
                }
                mask
            })
            .collect();
        let mut search = Search {
            ops: &self.ops,
            before: &before,
            definite,
            n,
            visited: BTreeSet::new(),
            steps: 0,
            deepest: (0, 0),
        };
        match search.run(0, MetadataState::default()) {
            Found::Yes => Ok(()),
            Found::No => {
                let (_, done) = search.deepest;
                let missing: Vec<usize> = (0..n)
                    .filter(|i| definite & bit(*i) != 0 && done & bit(*i) == 0)
                    .collect();
                Err(format!(
                    "no order of the {n} metadata operations consistent with real time explains \
                     what the clients were told (the longest prefix found linearizes {} of them; \
                     unexplained then: {missing:?}):\n{}",
                    done.count_ones(),
                    self.describe()
                ))
            }
            Found::GaveUp => Err(format!(
                "the linearizability search gave up after {SEARCH_STEPS_MAX} steps on {n} \
                 operations:\n{}",
                self.describe()
            )),
        }
    }
}

enum Found {
    Yes,
    No,
    GaveUp,
}

struct Search<'a> {
    ops: &'a [Op],
    before: &'a [u128],
    definite: u128,
    n: usize,
    /// (linearized set, hash of the model state) already explored without success.
    visited: BTreeSet<(u128, u64)>,
    steps: u64,
    /// The most definite operations linearized in one branch, and that branch's set.
    deepest: (u32, u128),
}

fn state_hash(state: &MetadataState) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    format!("{state:?}").hash(&mut hasher);
    hasher.finish()
}

impl Search<'_> {
    fn run(&mut self, mut done: u128, state: MetadataState) -> Found {
        // Reads and rejections that fit the current state go in at once (no branching).
        loop {
            let mut progressed = false;
            for i in 0..self.n {
                if done & (1 << i) != 0 || self.before[i] & !done != 0 {
                    continue;
                }
                let fits = match &self.ops[i].kind {
                    OpKind::Read { state: seen } => *seen == state,
                    OpKind::Write {
                        command,
                        outcome: Some(Err(error)),
                    } => state.clone().apply(command).as_ref() == Err(error),
                    OpKind::Write { .. } => false,
                };
                if fits {
                    done |= 1 << i;
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        let n_definite = (done & self.definite).count_ones();
        if n_definite > self.deepest.0 {
            self.deepest = (n_definite, done);
        }
        if done & self.definite == self.definite {
            return Found::Yes;
        }
        if !self.visited.insert((done, state_hash(&state))) {
            return Found::No;
        }
        for i in 0..self.n {
            if done & (1 << i) != 0 || self.before[i] & !done != 0 {
                continue;
            }
            let OpKind::Write { command, outcome } = &self.ops[i].kind else {
                continue;
            };
            self.steps += 1;
            if self.steps > SEARCH_STEPS_MAX {
                return Found::GaveUp;
            }
            let mut next = state.clone();
            let result = next.apply(command);
            let fits = match outcome {
                Some(expected) => result == *expected,
                // Unknown: it takes effect here (a rejection changes nothing, so only an
                // applied one is worth a branch).
                None => result.is_ok(),
            };
            if !fits {
                continue;
            }
            match self.run(done | (1 << i), next) {
                Found::No => {}
                other => return other,
            }
        }
        Found::No
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::NodeId;

    fn add(node: u64) -> Command {
        Command::AddNode {
            node: NodeId(node),
            address: format!("n{node}:7000"),
            site: "a".into(),
            rack: None,
            storage_incarnation: 1,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn state_with(nodes: &[u64]) -> MetadataState {
        let mut state = MetadataState::default();
        for n in nodes {
            state.apply(&add(*n)).unwrap();
        }
        state
    }

    #[test]
    fn concurrent_writes_may_go_in_either_order() {
        // Checks that two overlapping writes of the same node, one applied and one rejected as a
        // duplicate, linearize whichever was invoked first, and that a read after both sees the
        // node.
        let mut h = History::default();
        h.write(
            1,
            ms(10),
            ms(50),
            add(1),
            Err(MetadataError::DuplicateNode(NodeId(1))),
        );
        h.write(2, ms(20), ms(40), add(1), Ok(Applied::NodeAdded));
        h.read(3, ms(60), ms(70), state_with(&[1]));
        assert_eq!(h.check(), Ok(()));
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        // Checks that a read which misses a write acknowledged before it began is a violation
        // (what a committed entry lost to a power cut looks like).
        let mut h = History::default();
        h.write(1, ms(10), ms(20), add(1), Ok(Applied::NodeAdded));
        h.read(2, ms(30), ms(40), MetadataState::default());
        let error = h.check().unwrap_err();
        assert!(error.contains("#1"), "{error}");
    }

    #[test]
    fn a_stale_read_and_a_double_apply_are_caught() {
        // Checks real-time order on reads (a read after another read that saw a node cannot miss
        // it) and that a write told "applied" cannot have been applied by an earlier attempt.
        let mut h = History::default();
        h.write_unknown(1, ms(0), add(1));
        h.read(2, ms(10), ms(20), state_with(&[1]));
        h.read(3, ms(30), ms(40), MetadataState::default());
        assert!(h.check().is_err());

        let mut h = History::default();
        h.write(1, ms(0), ms(10), add(1), Ok(Applied::NodeAdded));
        h.write(1, ms(20), ms(30), add(1), Ok(Applied::NodeAdded));
        assert!(h.check().is_err());
    }

    #[test]
    fn unknown_writes_may_or_may_not_take_effect_even_late() {
        // Checks that a timed-out write may be absent (never committed) or take effect after
        // later operations (committed after the client gave up), but only once.
        let mut h = History::default();
        h.write_unknown(1, ms(0), add(1));
        h.read(2, ms(100), ms(110), MetadataState::default());
        h.read(2, ms(200), ms(210), state_with(&[1]));
        h.write(
            3,
            ms(300),
            ms(310),
            add(1),
            Err(MetadataError::DuplicateNode(NodeId(1))),
        );
        assert_eq!(h.check(), Ok(()));

        let mut h = History::default();
        h.write_unknown(1, ms(0), add(1));
        h.read(2, ms(100), ms(110), MetadataState::default());
        assert_eq!(h.check(), Ok(()));

        let mut h = History::default();
        h.write_unknown(1, ms(0), add(1));
        h.write(2, ms(50), ms(60), add(1), Ok(Applied::NodeAdded));
        h.read(2, ms(100), ms(110), state_with(&[1]));
        h.write(3, ms(300), ms(310), add(1), Ok(Applied::NodeAdded));
        assert!(h.check().is_err());
    }
}
