//! The openraft glue of a raft group: its type configuration ([`types`]), the seeded runtime
//! every group runs on ([`runtime`]), the raft log store ([`log_store`]) on the shared segment
//! layer, the network over the node-to-node transport ([`network`], RPCs in the frozen
//! [`wire`] form), one replica of a group whatever its state machine ([`group`]), and the
//! groups built from them: the metadata group ([`metadata_group`]) and the partition groups
//! ([`partition_group`]). Storage reaches
//! the disk only through `sluice_proto::env::Disk`, so the real disk and the simulator's
//! `CrashDisk` run the same code.

pub mod group;
pub mod log_store;
pub mod metadata_group;
pub mod network;
pub mod partition_group;
pub mod runtime;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod types;
pub(crate) mod wire;
