//! The trace hash: SHA-256 over every observable step of a run — each response a producer saw,
//! each crash and restart with its simulated time, each read-back, the final log contents. One
//! seed must give one hash (`Promise 8`). Actor ids (a process-global counter in ractor) and
//! anything else that differs between two runs in one process never enter it.

use ring::digest;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// A running SHA-256 over the run's steps.
pub struct Trace {
    inner: Mutex<(digest::Context, u64)>,
}

impl Default for Trace {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace").finish_non_exhaustive()
    }
}

impl Trace {
    /// An empty trace.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new((digest::Context::new(&digest::SHA256), 0)),
        }
    }

    /// Adds one step: its simulated time, its kind and its content (length-prefixed, so no two
    /// different step sequences hash alike).
    pub fn record(&self, at: Duration, kind: &str, content: &[u8]) {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (context, n_steps) = &mut *guard;
        context.update(&at.as_nanos().to_le_bytes());
        context.update(&(kind.len() as u64).to_le_bytes());
        context.update(kind.as_bytes());
        context.update(&(content.len() as u64).to_le_bytes());
        context.update(content);
        *n_steps += 1;
    }

    /// The hash of the steps so far, and how many there were.
    pub fn finish(&self) -> ([u8; 32], u64) {
        let guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = [0u8; 32];
        out.copy_from_slice(guard.0.clone().finish().as_ref());
        (out, guard.1)
    }
}

/// Lowercase hex of a hash.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
