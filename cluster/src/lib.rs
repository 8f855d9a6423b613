//! Sans-IO cluster cores. Today: partition placement (which partition a key belongs to),
//! replica placement with rebalance planning (`replicas`), the metadata state machine
//! (`metadata`), and the rebalance driver (`rebalance`). The openraft glue joins this crate
//! with the cluster work; like these cores, it takes time and IO only through `proto::env`.
#![warn(missing_docs)]

pub mod metadata;
pub mod placement;
pub mod rebalance;
pub mod replicas;
