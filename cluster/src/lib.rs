//! Sans-IO cluster cores. Today: partition placement (which partition a key belongs to),
//! replica placement with rebalance planning (`replicas`), the metadata state machine
//! (`metadata`), the rebalance driver (`rebalance`), and the first openraft glue (`raft`: the
//! group type configuration and the raft log store on the segment layer). Like these cores, it
//! takes time and IO only through `proto::env`.
#![warn(missing_docs)]

pub mod metadata;
pub mod placement;
pub mod raft;
pub mod rebalance;
pub mod replicas;
