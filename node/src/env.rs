//! The real environment. It lives in `sluice_proto::os` so the edge agent, which may not depend
//! on `node`, runs on the same clock, disk and blocking pool; this module re-exports it under the
//! name the node's code uses.

pub use sluice_proto::os::{real_env, run_blocking, FsDisk, RealClock};
