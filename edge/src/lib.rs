//! The Sluice edge agent: sources, validation, spool, uplink. Depends only on `proto`, never on
//! `node` or `cluster`.
//!
//! [`agent::Agent`] runs it all; `main.rs` is the `sluice-edge` binary around it.
#![warn(missing_docs)]

pub mod agent;
pub mod config;
pub mod error;
pub mod metrics;
pub mod reading;
pub mod source;
pub mod spool;
pub mod status;
pub mod uplink;
pub mod validate;
