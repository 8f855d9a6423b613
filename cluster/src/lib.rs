//! Sans-IO cluster cores. Today: partition placement (which partition a key belongs to),
//! replica placement with rebalance planning (`replicas`), the metadata state machine
//! (`metadata`), the rebalance driver (`rebalance`), and the openraft glue (`raft`: the group
//! type configuration, the seeded runtime, the raft log store on the segment layer, the network
//! over the peer transport, and the metadata group running on them). Like these cores, it takes
//! time and IO only through `proto::env`.
#![warn(missing_docs)]

pub mod metadata;
pub mod placement;
pub mod raft;
pub mod rebalance;
pub mod replicas;
