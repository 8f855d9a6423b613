//! The simulated clients: producers (edges with sensors) and consumers.

pub mod consumer;
pub mod producer;
