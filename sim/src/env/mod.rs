//! The simulated environment a node runs on: the paused clock ([`SimClock`]), the in-memory
//! disk that loses unsynced writes (`sluice_proto::testing::CrashDisk`, built by [`sim_disk`]),
//! inline blocking work, and the run's seed.

pub mod clock;

pub use clock::{SimClock, SimTimer};
pub use sluice_proto::testing::{CrashDisk, CrashReport, DiskStats};

use sluice_proto::env::{BlockingMode, Env};
use sluice_proto::testing::{CrashModel, Tear};
use std::sync::Arc;

/// The power-cut model of every simulated disk (node and edges): a torn last write keeps a
/// prefix, and `remove` is not a crash point. Changing either changes what every recorded seed
/// (`sim/seeds.txt`) replays, so it is a deliberate choice, not a default.
pub const SIM_CRASH_MODEL: CrashModel = CrashModel {
    tear: Tear::Prefix,
    remove_is_crash_point: false,
};

/// A fresh, empty simulated disk with [`SIM_CRASH_MODEL`].
pub fn sim_disk() -> CrashDisk {
    CrashDisk::with_model(SIM_CRASH_MODEL)
}

/// The environment of one node process: a fresh mount of `disk` (whose handles die with the
/// process), the run's clock, blocking work inline so it is part of the seeded schedule.
pub fn process_env(clock: &Arc<SimClock>, disk: &CrashDisk, seed: u64) -> Env {
    Env {
        clock: clock.clone(),
        disk: Arc::new(disk.mount()),
        blocking: BlockingMode::Inline,
        seed,
    }
}
