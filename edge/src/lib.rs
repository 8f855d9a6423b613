//! The Sluice edge agent (sources, validation, spool, uplink). Not built yet: it is the subject
//! of the edge-agent issue. This crate exists so the workspace has its final shape; it depends
//! only on `proto`, never on `node` or `cluster`.
