//! The one retry schedule every component uses: capped exponential backoff with seeded jitter.
//!
//! The n-th consecutive failure waits a random time in `[d/2, d)` where
//! `d = min(initial * 2^(n-1), max)`, so many agents that failed together do not retry in
//! lockstep, and no wait is longer than `max`. The schedule itself comes from `backon`'s
//! exponential builder; the jitter is drawn from a seed taken from the caller's RNG (itself
//! derived from `Env::rng`), so one simulator seed replays the same waits.
//!
//! This is a value, not a timer: callers ask for the next delay and arm their own timer on the
//! monotonic clock. It never sleeps and never reads a clock.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rand::RngCore;
use rand_chacha::ChaCha8Rng;

/// Capped exponential backoff with seeded jitter; see the module doc.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    schedule: ExponentialBackoff,
    rng: ChaCha8Rng,
    max: Duration,
    n_failures: u32,
}

impl Backoff {
    /// A schedule whose first wait is about `initial` and whose waits never exceed `max`.
    /// `initial` is raised to at least 1 ms and `max` to at least `initial`.
    pub fn new(initial: Duration, max: Duration, mut rng: ChaCha8Rng) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        let max = max.max(initial);
        // backon adds a jitter in [0, d) on top of d, so the halves give waits in [d/2, d).
        let builder = ExponentialBuilder::new()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(initial / 2)
            .with_max_delay(max / 2)
            .without_max_times();
        let schedule = builder.with_jitter_seed(rng.next_u64()).build();
        Self {
            builder,
            schedule,
            rng,
            max,
            n_failures: 0,
        }
    }

    /// Counts one more failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.n_failures = self.n_failures.saturating_add(1);
        // Without `max_times` the schedule never ends; `max` is only a fallback.
        self.schedule.next().unwrap_or(self.max).min(self.max)
    }

    /// Consecutive failures since the last [`Backoff::reset`].
    pub fn n_failures(&self) -> u32 {
        self.n_failures
    }

    /// Forgets the failures (after a success): the next wait is short again.
    pub fn reset(&mut self) {
        self.n_failures = 0;
        self.schedule = self.builder.with_jitter_seed(self.rng.next_u64()).build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::rng_for;

    fn backoff(initial_ms: u64, max_ms: u64) -> Backoff {
        Backoff::new(
            Duration::from_millis(initial_ms),
            Duration::from_millis(max_ms),
            rng_for(7, 1, 2),
        )
    }

    /// Checks that the n-th wait lies in [d/2, d) for d = min(initial * 2^(n-1), max).
    fn check_ceilings(backoff: &mut Backoff, ceilings_ms: &[u64]) {
        for (idx, ceiling_ms) in ceilings_ms.iter().enumerate() {
            let delay = backoff.next_delay();
            let ceiling = Duration::from_millis(*ceiling_ms);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "wait {idx}: {delay:?} not in [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            assert_eq!(backoff.n_failures(), idx as u32 + 1);
        }
    }

    // Waits double from the initial value up to the cap, each jittered into [d/2, d].
    #[test]
    fn waits_double_up_to_the_cap() {
        check_ceilings(
            &mut backoff(100, 1_000),
            &[100, 200, 400, 800, 1_000, 1_000],
        );
    }

    // A reset (after a success) starts again from the initial wait.
    #[test]
    fn reset_starts_again_from_the_first_wait() {
        let mut b = backoff(100, 10_000);
        check_ceilings(&mut b, &[100, 200, 400]);
        b.reset();
        assert_eq!(b.n_failures(), 0);
        check_ceilings(&mut b, &[100, 200]);
    }

    // Many failures neither overflow nor exceed the cap.
    #[test]
    fn many_failures_stay_at_the_cap() {
        let mut b = backoff(1, 60_000);
        for _ in 0..10_000 {
            assert!(b.next_delay() <= Duration::from_millis(60_000));
        }
        assert_eq!(b.n_failures(), 10_000);
    }

    // The same seed gives the same waits (replayable runs); another seed gives others.
    #[test]
    fn same_seed_same_waits_other_seed_other_waits() {
        let waits = |seed| {
            let mut b = Backoff::new(
                Duration::from_millis(1_000),
                Duration::from_secs(60),
                rng_for(seed, 1, 2),
            );
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(waits(1), waits(1));
        assert_ne!(waits(1), waits(2));
    }

    // A zero initial wait and a max of zero give 1 ms waits, not a spin or a panic.
    #[test]
    fn degenerate_bounds_are_raised() {
        let mut b = backoff(0, 0);
        let delay = b.next_delay();
        assert!(delay <= Duration::from_millis(1), "{delay:?}");
    }
}
