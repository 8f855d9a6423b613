//! The simulated environment a node runs on: the paused clock ([`SimClock`]), the in-memory
//! disk that loses unsynced writes ([`SimDisk`]), inline blocking work, and the run's seed.

pub mod clock;
pub mod disk;

pub use clock::{SimClock, SimTimer};
pub use disk::{CrashReport, DiskStats, SimDisk};

use sluice_proto::env::{BlockingMode, Env};
use std::sync::Arc;

/// The environment of one node process: a fresh mount of `disk` (whose handles die with the
/// process), the run's clock, blocking work inline so it is part of the seeded schedule.
pub fn process_env(clock: &Arc<SimClock>, disk: &SimDisk, seed: u64) -> Env {
    Env {
        clock: clock.clone(),
        disk: Arc::new(disk.mount()),
        blocking: BlockingMode::Inline,
        seed,
    }
}
