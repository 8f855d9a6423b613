//! The simulated clock: tokio's paused clock, which only moves when every task of the run is
//! idle, so simulated time is a pure function of the seed. `wall` is a fixed epoch plus the time
//! simulated so far, so timestamps written into data are reproducible too.
//!
//! This is the only module of the simulator allowed to read a clock (`disallowed_methods`).

use sluice_proto::env::Clock;
use sluice_proto::UnixMillis;
use std::cell::Cell;
use std::time::{Duration, Instant};

/// The wall-clock time at which every simulation starts: 2026-01-01T00:00:00Z.
pub const EPOCH_WALL_MS: i64 = 1_767_225_600_000;

thread_local! {
    /// Start of the run on this thread, for log timestamps (one runtime per thread at a time).
    static RUN_START: Cell<Option<tokio::time::Instant>> = const { Cell::new(None) };
}

/// The paused clock of one run.
#[derive(Debug)]
pub struct SimClock {
    start: tokio::time::Instant,
}

impl SimClock {
    /// A clock starting now. Call it inside the run's paused runtime; it also becomes the time
    /// base of this thread's log lines.
    #[allow(clippy::disallowed_methods)] // the simulated environment is where the clock is read
    pub fn new() -> Self {
        let start = tokio::time::Instant::now();
        RUN_START.with(|s| s.set(Some(start)));
        Self { start }
    }

    /// Simulated time since the run started.
    #[allow(clippy::disallowed_methods)] // the simulated environment is where the clock is read
    pub fn elapsed(&self) -> Duration {
        tokio::time::Instant::now().saturating_duration_since(self.start)
    }

    /// The paused clock's now, as a tokio instant (for `sleep_until`).
    #[allow(clippy::disallowed_methods)] // the simulated environment is where the clock is read
    pub fn instant(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }
}

impl Default for SimClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SimClock {
    #[allow(clippy::disallowed_methods)] // the simulated environment is where the clock is read
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn wall(&self) -> UnixMillis {
        let elapsed_ms = i64::try_from(self.elapsed().as_millis()).unwrap_or(i64::MAX);
        UnixMillis(EPOCH_WALL_MS.saturating_add(elapsed_ms))
    }
}

/// Forgets this thread's run start (the run is over).
pub fn clear_thread_run() {
    RUN_START.with(|s| s.set(None));
}

/// Log timestamps in simulated time (`t=12.345678s`), so two runs of a seed give identical logs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimTimer;

impl tracing_subscriber::fmt::time::FormatTime for SimTimer {
    #[allow(clippy::disallowed_methods)] // the simulated environment is where the clock is read
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match RUN_START.with(Cell::get) {
            Some(start) => {
                let elapsed = tokio::time::Instant::now().saturating_duration_since(start);
                write!(w, "t={}.{:06}s", elapsed.as_secs(), elapsed.subsec_micros())
            }
            None => write!(w, "t=-"),
        }
    }
}
