//! The Sluice edge agent: sources, validation, spool, uplink. Depends only on `proto`, never on
//! `node` or `cluster`.
#![warn(missing_docs)]

pub mod config;
pub mod metrics;
pub mod source;
pub mod spool;
pub mod validate;
