//! A sink without an agent, for testing sources: every offer is accepted (seqs count from 0 per
//! sensor) and collected, every rejection is counted, and `flush` answers at once.

use super::{Offered, SinkRequest, SourceContext, SourceReading, SourceSink};
use crate::metrics::Metrics;
use sluice_proto::env::{Clock, Env};
use sluice_proto::SensorId;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What a test sink received.
pub struct TestInbox {
    rx: mpsc::Receiver<SinkRequest>,
    next_seq: BTreeMap<SensorId, u64>,
    /// Readings offered, in order.
    pub readings: Vec<SourceReading>,
    /// Flushes requested.
    pub n_flushes: u64,
    /// The metrics the sink counted rejections into.
    pub metrics: Arc<Metrics>,
}

impl TestInbox {
    /// Takes the next request: accepts an offer (recording it) or answers a flush. Returns
    /// false once every sink is gone.
    pub async fn step(&mut self) -> bool {
        match self.rx.recv().await {
            Some(SinkRequest::Offer { reading, reply, .. }) => {
                let seq = self.next_seq.entry(reading.sensor.clone()).or_default();
                let _ = reply.send(Offered::Accepted {
                    epoch: 1,
                    seq: *seq,
                });
                *seq += 1;
                self.readings.push(reading);
                true
            }
            Some(SinkRequest::Flush { reply }) => {
                self.n_flushes += 1;
                let _ = reply.send(());
                true
            }
            None => false,
        }
    }

    /// Steps until `n` readings have arrived (or every sink is gone).
    pub async fn until_readings(&mut self, n: usize) {
        while self.readings.len() < n && self.step().await {}
    }

    /// Rejections counted for `source` by reason.
    pub fn rejected(&self, source: &str) -> BTreeMap<String, u64> {
        self.metrics
            .status()
            .sources
            .get(source)
            .map(|s| s.rejected.clone())
            .unwrap_or_default()
    }
}

/// A context for source `name` whose sink feeds a [`TestInbox`] (queue of `queue_max`), with
/// `state_dir` as its state directory (it must exist).
pub fn test_context(
    name: &str,
    env: Env,
    queue_max: usize,
    state_dir: &Path,
) -> (SourceContext, TestInbox) {
    let (tx, rx) = mpsc::channel(queue_max.max(1));
    let metrics = Metrics::new("sluice://test/edge/test", &[name.to_owned()]);
    let clock: Arc<dyn Clock> = env.clock.clone();
    let sink = SourceSink::new(name, 0, tx, metrics.clone(), clock);
    let context = SourceContext {
        sink,
        env,
        source_idx: 0,
        state_dir: state_dir.to_path_buf(),
    };
    let inbox = TestInbox {
        rx,
        next_seq: BTreeMap::new(),
        readings: Vec::new(),
        n_flushes: 0,
        metrics,
    };
    (context, inbox)
}
