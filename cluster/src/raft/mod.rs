//! The openraft glue of a raft group: its type configuration ([`types`]), the seeded runtime
//! every group runs on ([`runtime`]), the raft log store ([`log_store`]) on the shared segment
//! layer, the network over the node-to-node transport ([`network`], RPCs in the frozen
//! [`wire`] form), and the metadata group built from them ([`metadata_group`]). Storage reaches
//! the disk only through `sluice_proto::env::Disk`, so the real disk and the simulator's
//! `CrashDisk` run the same code. The partition groups arrive in later steps.

pub mod log_store;
pub mod metadata_group;
pub mod network;
pub mod runtime;
#[cfg(test)]
pub(crate) mod testing;
pub mod types;
pub(crate) mod wire;
