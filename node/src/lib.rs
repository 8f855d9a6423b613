//! The Sluice broker node: ingest over QUIC + mTLS, partition logs on disk, the supervision
//! tree, and the `sluice` CLI's commands. `node::Node::start` is the entry point both `main` and
//! the simulator use.
pub mod acl;
pub mod admin;
pub mod admin_cli;
pub mod catalog;
pub mod certs;
pub mod client_cli;
pub mod config;
pub mod demo;
pub mod env;
pub mod log;
pub mod metrics;
pub mod node;
pub mod partition;
pub mod service;
pub mod storage_cli;
pub mod supervisor;

pub use node::{Node, StartError};
