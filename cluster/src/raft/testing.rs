//! An in-process peer transport for the raft tests (this crate's, and other crates' through the
//! `testing` feature): every node's [`PeerTransport`] routes a
//! request straight to the target's registered [`PeerHandler`] (run on a task of its own, as a
//! real receiver would), after the transport's envelope check. Nodes can be cut off: a request
//! from or to a cut node fails as unreachable, like a lost connection.

use sluice_proto::env::{
    check_envelope, BoxFuture, Clock, PeerError, PeerErrorKind, PeerHandler, PeerRequest,
    PeerTransport,
};
use sluice_proto::{NodeId, UnixMillis};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The clock of a test on paused tokio time (as the simulator's): monotonic time is tokio's,
/// the wall clock a fixed instant.
pub struct PausedClock;

impl Clock for PausedClock {
    #[allow(clippy::disallowed_methods)] // tokio's paused clock, as the simulator's
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
    fn wall(&self) -> UnixMillis {
        UnixMillis(1_700_000_000_000)
    }
}

/// Runs `test` on a current-thread tokio runtime with paused time and the runtime seed `seed`,
/// so one seed is one run.
pub fn run_paused<F: Future<Output = ()>>(seed: u64, test: F) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()))
        .build()
        .unwrap_or_else(|e| panic!("test runtime: {e}"));
    runtime.block_on(test);
}

#[derive(Default)]
struct NetState {
    handlers: BTreeMap<NodeId, Arc<dyn PeerHandler>>,
    cut: BTreeSet<NodeId>,
}

/// The network of one test cluster. Clones share it.
#[derive(Clone)]
pub struct TestNet {
    cluster: String,
    state: Arc<Mutex<NetState>>,
}

impl TestNet {
    /// The network of a test cluster named `cluster`.
    pub fn new(cluster: &str) -> Self {
        TestNet {
            cluster: cluster.to_string(),
            state: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transport node `local` sends with.
    pub fn transport(&self, local: NodeId) -> Arc<dyn PeerTransport> {
        Arc::new(TestTransport {
            net: self.clone(),
            local,
        })
    }

    /// Routes requests for `node` to `handler` (replacing an earlier one).
    pub fn register(&self, node: NodeId, handler: Arc<dyn PeerHandler>) {
        self.lock().handlers.insert(node, handler);
    }

    /// Requests for `node` find nobody (a stopped process).
    pub fn unregister(&self, node: NodeId) {
        self.lock().handlers.remove(&node);
    }

    /// Cuts `node` off from every other node.
    pub fn cut(&self, node: NodeId) {
        self.lock().cut.insert(node);
    }

    /// Joins `node` to the others again.
    pub fn heal(&self, node: NodeId) {
        self.lock().cut.remove(&node);
    }
}

struct TestTransport {
    net: TestNet,
    local: NodeId,
}

impl PeerTransport for TestTransport {
    fn local(&self) -> NodeId {
        self.local
    }

    fn set_peers(&self, _peers: BTreeMap<NodeId, String>) {}

    fn call(
        &self,
        request: PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Vec<u8>, PeerError>> {
        Box::pin(async move {
            let to = request.envelope.to;
            let handler = {
                let state = self.net.lock();
                if state.cut.contains(&self.local) || state.cut.contains(&to) {
                    None
                } else {
                    state.handlers.get(&to).cloned()
                }
            };
            let Some(handler) = handler else {
                return Err(PeerError::new(
                    PeerErrorKind::Unreachable,
                    format!("node {to} unreachable from node {}", self.local),
                ));
            };
            check_envelope(&request.envelope, &self.net.cluster, to, self.local)
                .map_err(|r| PeerError::new(PeerErrorKind::Remote(r.clone()), r.to_string()))?;
            let task = tokio::spawn(async move { handler.handle(request).await });
            match tokio::time::timeout(timeout, task).await {
                Err(_) => Err(PeerError::new(
                    PeerErrorKind::Timeout,
                    format!("node {to} did not answer within {timeout:?}"),
                )),
                Ok(Err(join)) => Err(PeerError::new(PeerErrorKind::Closed, join.to_string())),
                Ok(Ok(Err(refusal))) => Err(PeerError::new(
                    PeerErrorKind::Remote(refusal.clone()),
                    refusal.to_string(),
                )),
                Ok(Ok(Ok(body))) => Ok(body),
            }
        })
    }
}
