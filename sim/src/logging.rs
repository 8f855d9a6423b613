//! Logs and panics of simulation runs. Log lines are stamped with simulated time
//! ([`SimTimer`]), so two runs of one seed give the same log. When many seeds run, each worker
//! thread captures its seed's log ([`capture_start`]/[`capture_take`]) and the CLI prints it only
//! if the seed fails. Panics anywhere in a run — including those ractor catches inside an actor,
//! which the node would otherwise survive by restarting the actor — are recorded per thread, and
//! the run fails on them.

use crate::env::SimTimer;
use std::cell::RefCell;
use std::io::Write;
use std::sync::Once;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Bytes of log kept per captured seed (the tail).
const CAPTURE_BYTES_MAX: usize = 1 << 20;

thread_local! {
    static CAPTURE: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Writes a log line to this thread's capture buffer if capturing, else to stderr.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimWriter;

impl Write for SimWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let captured = CAPTURE.with(|c| match c.borrow_mut().as_mut() {
            Some(out) => {
                if out.len() + buf.len() > CAPTURE_BYTES_MAX {
                    let cut = out.len() / 2;
                    out.drain(..cut);
                }
                out.extend_from_slice(buf);
                true
            }
            None => false,
        });
        if !captured {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for SimWriter {
    type Writer = SimWriter;
    fn make_writer(&'a self) -> Self::Writer {
        SimWriter
    }
}

/// Installs the log subscriber (`filter` in `EnvFilter` syntax, e.g. `warn` or `debug`) and the
/// panic recorder. Later calls do nothing.
pub fn init(filter: &str) {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_timer(SimTimer)
            .with_writer(SimWriter)
            .with_ansi(false)
            .try_init();
    });
    install_panic_recorder();
}

/// Records every panic of this process in its thread's list (and logs it).
pub fn install_panic_recorder() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let message = info.to_string();
            PANICS.with(|p| p.borrow_mut().push(message.clone()));
            let _ = writeln!(SimWriter, "panic: {message}");
        }));
    });
}

/// Forgets this thread's recorded panics.
pub fn clear_panics() {
    PANICS.with(|p| p.borrow_mut().clear());
}

/// The first panic recorded on this thread since [`clear_panics`].
pub fn first_panic() -> Option<String> {
    PANICS.with(|p| p.borrow().first().cloned())
}

/// Starts capturing this thread's log lines.
pub fn capture_start() {
    CAPTURE.with(|c| *c.borrow_mut() = Some(Vec::new()));
}

/// Stops capturing and returns what was captured.
pub fn capture_take() -> String {
    let bytes = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}
