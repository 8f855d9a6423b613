//! The Sluice edge agent: sources, validation, spool, uplink. Depends only on `proto`, never on
//! `node` or `cluster`.
//!
//! Built so far: [`spool`], the durable, bounded queue between sources and the uplink. Sources,
//! validation and the uplink are still the subject of the edge-agent issue.
#![warn(missing_docs)]

pub mod spool;
