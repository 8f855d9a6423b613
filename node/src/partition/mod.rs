//! Partitions: the sans-IO [`core::PartitionCore`], the actor shell that owns its log, and the
//! shell of a replicated partition ([`replicated`]) joining the core to its raft group.
pub mod actor;
pub mod core;
pub mod replicated;
