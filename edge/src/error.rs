//! `EdgeError`: why the agent failed to start or stopped. Its own module, below `agent` and
//! `status`, so both can name it without importing each other.

use crate::source::SourceError;
use crate::spool::SpoolError;

/// The agent failed to start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// A source cannot be set up.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A spool failed; the process should exit and recover on its next start.
    #[error("spool of stream {stream}: {error}")]
    Spool {
        /// The stream.
        stream: String,
        /// What failed.
        error: SpoolError,
    },
    /// A directory or the status listener could not be set up.
    #[error("{what}: {reason}")]
    Setup {
        /// What was being set up.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// The agent loop ended without being asked to (a bug or a panic).
    #[error("agent loop ended: {0}")]
    Ended(String),
}
