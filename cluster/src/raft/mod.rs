//! The openraft glue of a raft group: its type configuration ([`types`]), the seeded runtime
//! every group runs on ([`runtime`]) and the raft log store ([`log_store`]) on the shared segment
//! layer. The store reaches the disk only through `sluice_proto::env::Disk`, so the real disk
//! and the simulator's `CrashDisk` run the same code. The state machine of a partition, the
//! network over the peer transport and the group's supervision arrive in later steps.

pub mod log_store;
pub mod runtime;
pub mod types;
