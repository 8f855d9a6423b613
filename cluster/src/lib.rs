//! Sans-IO cluster cores. Today: partition placement (which partition a key belongs to). The
//! metadata state machine, replica placement, rebalancing and the openraft glue join this crate
//! with the cluster work; like placement, they will take time and IO only through `proto::env`.
#![warn(missing_docs)]

pub mod placement;
