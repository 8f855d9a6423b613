//! `sluice-sim`: the deterministic simulator. It runs the real node (`sluice_node::Node::start`)
//! on a simulated environment — tokio's paused clock on a seeded current-thread runtime, an
//! in-memory disk that loses unsynced writes and tears the last one on a crash, inline blocking
//! work — with simulated producers behind faulty links, crashes (between tasks, inside a disk
//! operation, inside recovery), clean restarts and failed `fdatasync` calls at seeded points,
//! and invariant checkers that keep their own record of what clients were told. One seed replays
//! one run bit for bit (same trace hash).
//!
//! It does not yet simulate a network between nodes, several nodes, edges agents, clock jumps or
//! bit flips: those arrive with the cluster work.

#[cfg(not(tokio_unstable))]
compile_error!(
    "sluice-sim needs `--cfg tokio_unstable` to seed tokio's runtime RNG; the workspace's \
     .cargo/config.toml sets it — do not override it with a bare RUSTFLAGS"
);

pub mod env;
pub mod history;
pub mod invariants;
pub mod link;
pub mod logging;
pub mod run;
pub mod scenario;
pub mod settings;
pub mod trace;
pub mod workload;
pub mod world;

pub use run::{run_seed, RunOutcome, RunSummary};
pub use settings::{Plant, Settings};
