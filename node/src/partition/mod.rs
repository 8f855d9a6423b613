//! Partitions: the sans-IO [`core::PartitionCore`] and the actor shell that owns its log.
pub mod actor;
pub mod core;
