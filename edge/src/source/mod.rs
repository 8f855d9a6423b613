//! Sources: where readings come from. Each configured source is one [`Source`] value run by its
//! own supervised actor (`supervisor.rs`); a source that fails is restarted after a backoff and
//! never stops the others.
//!
//! A source turns its input (a GPIO pin, an MQTT subscription, a file of JSON lines, a seeded
//! generator) into [`SourceReading`]s and offers each to the agent through its [`SourceSink`].
//! The agent validates the reading, gives it its `(boot_epoch, seq)` in the spool and answers
//! with an [`Offered`]. While the spool cannot take more (policy `block`), `offer` waits: that is
//! the backpressure a source feels, and it must not buffer around it without a bound.
//!
//! Inputs a source cannot turn into a reading (a malformed MQTT payload or JSON line, a DHT
//! checksum error) are reported with [`SourceSink::reject`]: counted by reason, logged (at most
//! once per second per source and reason), and never fatal.
//!
//! What sources do not do: validation of values (the agent does it, see `validate.rs`), seq
//! numbering, spooling or sending.

pub mod dht;
pub mod jsonl;
pub mod mqtt;
pub mod sim;
mod spec;
pub(crate) mod supervisor;
pub mod testing;

pub use crate::reading::{Refusal, SourceReading};
pub use spec::SourceSpec;
pub use supervisor::SupervisionSection;

use crate::metrics::Metrics;
use sluice_proto::env::{BoxFuture, Clock, Env};
use sluice_proto::{BootEpoch, SensorId, StreamName};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// What became of an offered reading.
#[derive(Debug, Clone, PartialEq)]
pub enum Offered {
    /// In the spool with this seq of `(sensor, boot_epoch)`; durable within the spool's sync
    /// interval, or at once after [`SourceSink::flush`].
    Accepted {
        /// The boot epoch.
        epoch: u64,
        /// The seq.
        seq: u64,
    },
    /// Not accepted (counted and logged by the agent).
    Refused(Refusal),
}

/// The agent stopped (or is stopping): no more readings are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the agent is stopping")]
pub struct SinkClosed;

/// A source failed. The supervisor logs it, counts it and restarts the source after a backoff.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The source cannot be set up at all (bad configuration, no such device, not a Raspberry
    /// Pi). Returned by a source's `build`; the agent refuses to start.
    #[error("source {source_name}: {reason}")]
    Setup {
        /// The source's configured name.
        source_name: String,
        /// What is wrong, naming the pin, file or broker involved.
        reason: String,
    },
    /// The source failed while running (device gone, file unreadable, broker unreachable too
    /// long); it is restarted.
    #[error("source {source_name}: {reason}")]
    Failed {
        /// The source's configured name.
        source_name: String,
        /// What happened.
        reason: String,
    },
}

/// One request from a source to the agent.
#[derive(Debug)]
pub(crate) enum SinkRequest {
    /// Validate and spool a reading.
    Offer {
        /// Index of the source in the configuration.
        source_idx: usize,
        /// The reading.
        reading: SourceReading,
        /// The answer.
        reply: oneshot::Sender<Offered>,
    },
    /// Make everything spooled so far durable, then answer.
    Flush {
        /// The answer.
        reply: oneshot::Sender<()>,
    },
}

/// Sees what every source was told about every offer. The simulator's checkers keep their own
/// record of accepted seqs this way instead of trusting the agent's counters.
pub trait OfferObserver: Send + Sync + 'static {
    /// Source `source` is about to offer a reading of `sensor` for `stream`. An offer whose
    /// source stops before it learns the outcome (a source task ended by a stop) may still have
    /// been spooled: it is seen here and never in [`OfferObserver::offered`].
    fn offering(&self, _source: &str, _stream: &StreamName, _sensor: &SensorId) {}
    /// Source `source` offered a reading of `sensor` for `stream` and was told `offered`.
    fn offered(&self, source: &str, stream: &StreamName, sensor: &SensorId, offered: &Offered);
    /// The spool of `stream` opened in boot epoch `epoch`: at the start, and again within one
    /// run of the agent when a failed spool is reopened or a sensor is moved to a newer epoch
    /// after the node forgot its producer state. Seqs accepted from then on are in `epoch`.
    fn spool_opened(&self, _stream: &StreamName, _epoch: BootEpoch) {}
}

/// A source's way into the agent. Cheap to clone.
#[derive(Clone)]
pub struct SourceSink {
    name: Arc<str>,
    source_idx: usize,
    tx: mpsc::Sender<SinkRequest>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    last_logged: Arc<Mutex<BTreeMap<&'static str, Instant>>>,
    observer: Option<Arc<dyn OfferObserver>>,
}

impl fmt::Debug for SourceSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceSink")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Rejections of one source and reason are logged at most this often.
const REJECT_LOG_INTERVAL: Duration = Duration::from_secs(1);

impl SourceSink {
    pub(crate) fn new(
        name: &str,
        source_idx: usize,
        tx: mpsc::Sender<SinkRequest>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            name: name.into(),
            source_idx,
            tx,
            metrics,
            clock,
            last_logged: Arc::default(),
            observer: None,
        }
    }

    /// This sink, telling `observer` every outcome.
    pub(crate) fn observed_by(mut self, observer: Option<Arc<dyn OfferObserver>>) -> Self {
        self.observer = observer;
        self
    }

    /// The source's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Offers a reading. Waits while the agent applies backpressure (bounded queue, full
    /// spool with policy `block`); returns what became of it.
    pub async fn offer(&self, reading: SourceReading) -> Result<Offered, SinkClosed> {
        let observed = self
            .observer
            .as_ref()
            .map(|o| (o.clone(), reading.stream.clone(), reading.sensor.clone()));
        if let Some((observer, stream, sensor)) = &observed {
            observer.offering(&self.name, stream, sensor);
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(SinkRequest::Offer {
                source_idx: self.source_idx,
                reading,
                reply,
            })
            .await
            .map_err(|_| SinkClosed)?;
        let offered = answer.await.map_err(|_| SinkClosed)?;
        if let Some((observer, stream, sensor)) = observed {
            observer.offered(&self.name, &stream, &sensor, &offered);
        }
        Ok(offered)
    }

    /// Waits until everything this agent spooled so far is durable (an `fdatasync` of the
    /// spool). Use it before recording that input was consumed (a file position, say).
    pub async fn flush(&self) -> Result<(), SinkClosed> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(SinkRequest::Flush { reply })
            .await
            .map_err(|_| SinkClosed)?;
        answer.await.map_err(|_| SinkClosed)
    }

    /// Reports an input that could not become a reading: counted under
    /// `edge_readings_rejected_total{source, reason}` and logged (rate-limited). Never fatal.
    /// `reason` is a short snake_case label (`malformed_payload`, `dht_checksum`, …); `detail`
    /// says what arrived and why it was refused.
    pub fn reject(&self, reason: &'static str, detail: impl fmt::Display) {
        self.metrics.rejected(&self.name, reason);
        let now = self.clock.now();
        let mut last = self
            .last_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let due = last
            .get(reason)
            .is_none_or(|t| now.duration_since(*t) >= REJECT_LOG_INTERVAL);
        if due {
            last.insert(reason, now);
            warn!(source = %self.name, reason, %detail, "input rejected");
        }
    }

    /// Counts a reading read from the device or input (before validation).
    pub fn count_read(&self) {
        self.metrics.read(&self.name);
    }
}

/// What a running source is given.
#[derive(Clone)]
pub struct SourceContext {
    /// Where readings go.
    pub sink: SourceSink,
    /// Time (wall clock for `device_time`, monotonic for intervals) and the seed for any
    /// randomness (`env.rng(owner, salt)`).
    pub env: Env,
    /// This source's index in the configuration, for seeding per-source RNGs.
    pub source_idx: usize,
    /// A directory of this source's own (`<data_dir>/sources/<name>/`, created by the agent)
    /// for small state such as a file position.
    pub state_dir: PathBuf,
}

/// A source of readings. `run` is called by the source's actor; when it returns an error the
/// supervisor waits a backoff and calls `run` again on the same value (so a source may keep
/// state, such as a file position, across restarts). `Ok(())` means the input ended for good
/// (stdin closed) or the sink closed: the source is not restarted.
pub trait Source: Send + 'static {
    /// Runs until the input ends, the sink closes, or something fails.
    fn run<'a>(&'a mut self, context: &'a SourceContext) -> BoxFuture<'a, Result<(), SourceError>>;
}
