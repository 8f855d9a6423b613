//! The simulated clients: producers (edges with sensors), consumers, and edge sites running the
//! real edge agent.

pub mod consumer;
pub mod edge;
pub mod producer;
