//! Test and simulation support, behind the `testing` feature (and always in this crate's own unit
//! tests): the one crash-simulating disk ([`CrashDisk`]) that unit tests, the edge spool tests and
//! the deterministic simulator all run on, and the test cases every crate's tests share
//! ([`BAD_STREAM_NAMES`], the abandoned-handshake flood). Nothing here is built into a release
//! binary.

mod cases;
pub mod disk;

#[cfg(feature = "testing")]
pub use cases::{client_config_without_certificate, initials_that_never_finish};
pub use cases::{toml_string, BAD_STREAM_NAMES};
pub use disk::{CrashDisk, CrashModel, CrashReport, DiskStats, Tear, SECTOR_BYTES};
