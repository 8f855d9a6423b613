//! Sans-IO cluster cores. Today: partition placement (which partition a key belongs to) and
//! replica placement with rebalance planning (`replicas`), and the metadata state machine
//! (`metadata`). The rebalance driver and the openraft glue join this crate with the cluster
//! work; like placement, they will take time and IO only through `proto::env`.
#![warn(missing_docs)]

pub mod metadata;
pub mod placement;
pub mod replicas;
