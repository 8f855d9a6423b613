//! `sluice-sim`: the deterministic simulator. It runs the real node (`sluice_node::Node::start`)
//! on a simulated environment — tokio's paused clock on a seeded current-thread runtime, an
//! in-memory disk that loses unsynced writes and tears the last one on a crash, inline blocking
//! work — with simulated producers behind faulty links, crashes (between tasks, inside a disk
//! operation, inside recovery), clean restarts and failed `fdatasync` calls at seeded points,
//! and invariant checkers that keep their own record of what clients were told. One seed replays
//! one run bit for bit (same trace hash).
//!
//! It also runs the real edge agent (`sluice_edge::agent::Agent::start`): each run draws up to
//! `--edges-max` edges, each on a simulated disk of its own with seeded `sim` sensors, a small
//! spool and an uplink through a simulated transport ([`edge_link`]) with loss, delay,
//! duplication, outages and flaps; edges are power-cut (their unsynced writes lost or torn) and
//! restarted cleanly at seeded points, node crashes break their connections, and clock jumps put
//! them offline for simulated days. The edge no-silent-gaps checker compares the log with its
//! own record of what each agent accepted and how each boot ended ([`edge_ledger`]).
//!
//! With `--nodes 3..5` a run is a cluster run instead ([`cluster`]): replicas of the real
//! metadata group, each on its own simulated disk, over [`peer_link`] (the simulated network
//! between nodes: a `PeerTransport` with loss, duplication, reordering, delay, partitions and
//! pauses), with crashes, power loss of every node at once, clients following leader hints, and
//! checkers for linearizability, committed-log agreement, convergence and liveness. Without
//! `--nodes` runs are unchanged (same RNG draws, same traces).

#[cfg(not(tokio_unstable))]
compile_error!(
    "sluice-sim needs `--cfg tokio_unstable` to seed tokio's runtime RNG; the workspace's \
     .cargo/config.toml sets it — do not override it with a bare RUSTFLAGS"
);

pub mod cluster;
pub mod edge_ledger;
pub mod edge_link;
pub mod env;
pub mod history;
pub mod invariants;
pub mod link;
pub mod logging;
pub mod peer_link;
pub mod run;
pub mod scenario;
pub mod settings;
pub mod trace;
pub mod workload;
pub mod world;

pub use run::{run_seed, RunOutcome, RunSummary};
pub use settings::{Plant, Settings};
