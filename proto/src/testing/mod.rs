//! Test and simulation doubles of the environment, behind the `testing` feature: the one
//! crash-simulating disk ([`CrashDisk`]) that unit tests, the edge spool tests and the
//! deterministic simulator all run on. Nothing here is built into a release binary.

pub mod disk;

pub use disk::{CrashDisk, CrashModel, CrashReport, DiskStats, Tear, SECTOR_BYTES};
