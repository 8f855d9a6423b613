//! The simulated link between one producer and the node: it delays requests and responses, and
//! during the safety phase loses some requests, loses some responses and delivers some requests
//! twice. It calls `Service::handle` directly (no QUIC). A response computed by a node process
//! that has crashed or exited since is lost: a dead process answers nothing.

use crate::scenario::LinkFaults;
use crate::world::{Phase, World};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sluice_proto::msg::Message;
use sluice_proto::Identity;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// What the link decided for one request.
#[derive(Debug, Clone, Copy)]
pub struct Fate {
    /// Delay on the way to the node.
    pub request_delay: Duration,
    /// The request is lost.
    pub drop_request: bool,
    /// The request is delivered a second time, this long after the first.
    pub duplicate_delay: Option<Duration>,
    /// Delay on the way back.
    pub response_delay: Duration,
    /// The response is lost.
    pub drop_response: bool,
}

/// One producer's (or edge's) link to the node. Cheap to clone; clones share the RNG.
#[derive(Clone)]
pub struct Link {
    world: Arc<World>,
    identity: Arc<Identity>,
    faults: LinkFaults,
    rng: Arc<Mutex<ChaCha8Rng>>,
}

impl Link {
    /// A link for `identity` with the run's fault rates and its own RNG.
    pub fn new(
        world: Arc<World>,
        identity: Arc<Identity>,
        faults: LinkFaults,
        rng: ChaCha8Rng,
    ) -> Self {
        Self {
            world,
            identity,
            faults,
            rng: Arc::new(Mutex::new(rng)),
        }
    }

    /// Draws the fate of one request (faultless in the liveness phase).
    pub fn fate(&self) -> Fate {
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        let faulty = self.world.phase() == Phase::Safety;
        let f = self.faults;
        let delay =
            |rng: &mut ChaCha8Rng| Duration::from_millis(rng.random_range(0..=f.delay_ms_max));
        let request_delay = delay(&mut rng);
        let response_delay = delay(&mut rng);
        let drop_request = faulty && rng.random_bool(f.drop_request);
        let drop_response = faulty && rng.random_bool(f.drop_response);
        let duplicate = faulty && rng.random_bool(f.duplicate);
        let duplicate_delay =
            duplicate.then(|| Duration::from_millis(rng.random_range(0..=4 * f.delay_ms_max)));
        Fate {
            request_delay,
            drop_request,
            duplicate_delay,
            response_delay,
            drop_response,
        }
    }

    /// Sends a request and returns the response, or `None` when it was lost on the way, on
    /// the way back, or because no live node answered.
    pub async fn call(&self, request: Message) -> Option<Message> {
        let fate = self.fate();
        tokio::time::sleep(fate.request_delay).await;
        if fate.drop_request {
            return None;
        }
        let slot = self.world.node()?;
        if let Some(delay) = fate.duplicate_delay {
            let (service, identity, copy) =
                (slot.service.clone(), self.identity.clone(), request.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                // The copy's answer goes nowhere: the producer waits for one response only.
                let _ = service.handle(identity, copy).await;
            });
        }
        let response = slot.service.handle(self.identity.clone(), request).await;
        if !self.world.is_alive(&slot) {
            return None;
        }
        tokio::time::sleep(fate.response_delay).await;
        if fate.drop_response {
            return None;
        }
        Some(response)
    }
}
