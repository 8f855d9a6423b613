//! No panics: nothing in a run panics — not the simulator, and not the node, even where ractor
//! would catch the panic inside an actor and the supervisor would quietly restart it. A panic is
//! a broken assertion, which no input may trigger (`Promise 6`).

use super::Violation;
use crate::logging;

/// Fails with the first panic recorded on this thread during the run.
pub fn check() -> Result<(), Violation> {
    match logging::first_panic() {
        Some(message) => Err(Violation::new("no_panics", message)),
        None => Ok(()),
    }
}
