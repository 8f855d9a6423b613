//! The openraft runtime of every Sluice raft group: [`SeededRuntime`], tokio's runtime (so the
//! simulator's paused clock drives every openraft timer) with one change, the RNG.
//!
//! openraft draws a replica's election timeout from `AsyncRuntime::thread_rng()` when a `Raft`
//! is created. Tokio's thread RNG would be OS randomness, and one shared seeded stream would give
//! every replica in a simulated process the same timeouts (they would all stand for election at
//! once, for ever). So each replica gets its own stream, derived with
//! [`sluice_proto::env::rng_for`]`(seed, node id, group salt)` ([`replica_rng`]), carried in a
//! tokio task-local: a `Raft` created inside [`with_replica_rng`] draws from that stream, and
//! [`SeededRuntime::spawn`] carries the stream into every task it spawns, so openraft's core,
//! replication and state-machine tasks keep drawing from it.
//!
//! Outside any scope `thread_rng()` is a bug: it panics under `debug_assertions` (tests, the
//! simulator) and in a release build falls back to one process-wide stream seeded from
//! [`UNSCOPED_RNG_SALT`] (deterministic, never OS randomness).

use openraft::async_runtime::{AsyncRuntime, TokioOneShotSender};
use openraft::{OptionalSend, TokioInstant};
use rand::RngCore as _;
use rand_chacha::ChaCha8Rng;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The salt of the fallback stream `thread_rng()` draws from outside any replica scope:
/// `rng_for(0, 0, UNSCOPED_RNG_SALT)`.
pub const UNSCOPED_RNG_SALT: u64 = 0x5a5a_0000_0000_0001;

/// One replica's random stream. Clones share the stream (each draw advances it for all).
#[derive(Clone, Debug)]
pub struct ReplicaRng {
    stream: Arc<Mutex<ChaCha8Rng>>,
}

impl ReplicaRng {
    /// A replica stream from an already derived RNG.
    pub fn new(rng: ChaCha8Rng) -> Self {
        ReplicaRng {
            stream: Arc::new(Mutex::new(rng)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut ChaCha8Rng) -> T) -> T {
        let mut rng = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut rng)
    }
}

/// The stream of replica `node_id` of the group salted `group_salt`, under the environment's
/// `seed`: the same triple always gives the same stream.
pub fn replica_rng(seed: u64, node_id: u64, group_salt: u64) -> ReplicaRng {
    ReplicaRng::new(sluice_proto::env::rng_for(seed, node_id, group_salt))
}

// openraft asks for rand 0.8's `Rng`; the stream itself is the workspace's rand 0.9 ChaCha8.
impl rand08::RngCore for ReplicaRng {
    fn next_u32(&mut self) -> u32 {
        self.with(|r| r.next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        self.with(|r| r.next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.with(|r| r.fill_bytes(dest))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand08::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

tokio::task_local! {
    static REPLICA_RNG: ReplicaRng;
}

/// Runs `future` (typically `Raft::new(..)` and whatever else the replica does) with `rng` as
/// the replica's stream; every task [`SeededRuntime`] spawns from inside inherits it.
pub async fn with_replica_rng<F: Future>(rng: ReplicaRng, future: F) -> F::Output {
    REPLICA_RNG.scope(rng, future).await
}

/// The stream of the current scope, if any.
pub fn current_replica_rng() -> Option<ReplicaRng> {
    REPLICA_RNG.try_with(|r| r.clone()).ok()
}

fn unscoped_rng() -> ReplicaRng {
    static FALLBACK: OnceLock<ReplicaRng> = OnceLock::new();
    FALLBACK
        .get_or_init(|| replica_rng(0, 0, UNSCOPED_RNG_SALT))
        .clone()
}

/// tokio's runtime with a per-replica seeded RNG; see the module doc.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeededRuntime;

impl AsyncRuntime for SeededRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = ReplicaRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        match current_replica_rng() {
            Some(rng) => tokio::task::spawn(REPLICA_RNG.scope(rng, future)),
            None => tokio::task::spawn(future),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        match current_replica_rng() {
            Some(rng) => rng,
            None => {
                debug_assert!(
                    false,
                    "openraft drew randomness outside with_replica_rng: every raft group must be \
                     created inside its replica's scope"
                );
                unscoped_rng()
            }
        }
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::GroupConfig;
    use openraft::Config;

    const SALT: u64 = 42;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    /// Eight election timeouts as openraft draws them, inside the scope of `rng`.
    fn timeouts(rng: ReplicaRng) -> Vec<u64> {
        let config = Config::default();
        runtime().block_on(with_replica_rng(rng, async move {
            (0..8)
                .map(|_| config.new_rand_election_timeout::<SeededRuntime>())
                .collect()
        }))
    }

    #[test]
    fn replicas_with_other_seeds_draw_other_timeouts_and_one_seed_replays() {
        // Checks that two replicas (other node ids, or another environment seed) draw different
        // election-timeout sequences through openraft's own draw, and that the same
        // (seed, node, salt) replays the same sequence.
        let a = timeouts(replica_rng(7, 1, SALT));
        assert_eq!(a, timeouts(replica_rng(7, 1, SALT)));
        assert_ne!(a, timeouts(replica_rng(7, 2, SALT)));
        assert_ne!(a, timeouts(replica_rng(8, 1, SALT)));
        let config = Config::default();
        assert!(a
            .iter()
            .all(|t| (config.election_timeout_min..config.election_timeout_max).contains(t)));
    }

    #[test]
    fn spawned_tasks_inherit_the_replica_stream() {
        // Checks that a task spawned through the runtime (and a task it spawns in turn) draws
        // from the scope's stream: the draws made in nested tasks continue the very sequence a
        // single task drawing alone would see.
        let alone = timeouts(replica_rng(3, 1, SALT));
        let nested = runtime().block_on(with_replica_rng(replica_rng(3, 1, SALT), async {
            let config = Config::default();
            let first = config.new_rand_election_timeout::<SeededRuntime>();
            let inner = SeededRuntime::spawn(async move {
                let config = Config::default();
                let second = config.new_rand_election_timeout::<SeededRuntime>();
                let deeper = SeededRuntime::spawn(async move {
                    Config::default().new_rand_election_timeout::<SeededRuntime>()
                });
                (second, deeper.await.unwrap())
            });
            let (second, third) = inner.await.unwrap();
            vec![first, second, third]
        }));
        assert_eq!(nested[..], alone[..3]);
        // A task spawned outside any scope has no stream.
        let outside = runtime().block_on(async {
            SeededRuntime::spawn(async { current_replica_rng().is_none() })
                .await
                .unwrap()
        });
        assert!(outside);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "outside with_replica_rng")]
    fn drawing_outside_a_scope_fails_loudly_in_debug() {
        // Checks that openraft drawing its election timeout outside any replica scope panics
        // in a debug build instead of silently sharing a stream.
        let _ = Config::default().new_rand_election_timeout::<SeededRuntime>();
    }

    #[test]
    fn the_group_config_uses_the_seeded_runtime() {
        // Checks that the group type configuration is wired to this runtime (a compile-time
        // fact, spelled out so a change back to TokioRuntime fails here).
        fn runtime_of<C: openraft::RaftTypeConfig<AsyncRuntime = SeededRuntime>>() {}
        runtime_of::<GroupConfig>();
    }
}
