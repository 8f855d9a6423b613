//! The agent's counters and gauges, and the two views of them: [`Status`] (JSON for
//! `sluice-edge status` and the periodic log line) and the Prometheus text format for `/metrics`.
//!
//! Counts are kept in `BTreeMap`s so every output lists them in one order; the Prometheus
//! encoding itself (escaping, `HELP`/`TYPE`, `# EOF`) is `prometheus-client`'s, through a
//! collector that reads this state on each scrape.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Per-source counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// Readings read from the device or input, before validation.
    pub read: u64,
    /// Readings accepted into the spool.
    pub spooled: u64,
    /// Rejections by reason (at the source or by validation and the spool).
    pub rejected: BTreeMap<String, u64>,
    /// Times the source failed and was restarted.
    pub restarts: u64,
    /// The last failure, if the source is failing now.
    pub failing: Option<String>,
}

/// Per-stream spool figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolStatus {
    /// The spool's boot epoch.
    pub epoch: u64,
    /// Records (readings and drop declarations) waiting for delivery.
    pub records: u64,
    /// Bytes of those records.
    pub bytes: u64,
    /// Segment files in use.
    pub segments: u64,
    /// Age of the oldest waiting record, ms.
    pub oldest_age_ms: Option<u64>,
    /// Readings accepted since the spool was opened that a sync made durable.
    #[serde(default)]
    pub synced: u64,
    /// Seqs declared dropped since start, by reason (`spool_full`, `expired`, `power_loss`).
    pub dropped: BTreeMap<String, u64>,
}

/// Uplink figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkStatus {
    /// The node connected to, if any.
    pub connected_to: Option<String>,
    /// Successful connections.
    pub connects: u64,
    /// Failed connection attempts.
    pub connect_failures: u64,
    /// Produce requests answered.
    pub batches: u64,
    /// Produce requests that failed as a whole (error response, timeout, lost connection).
    pub batches_failed: u64,
    /// Records the node acknowledged as durable (including duplicates of earlier attempts).
    pub delivered: u64,
    /// Records refused by the node, by reason; they stay spooled and are retried.
    pub refused: BTreeMap<String, u64>,
    /// Records sent and not yet acknowledged.
    pub in_flight: u64,
    /// Sensor streams moved to a newer epoch because the node forgot their producer state
    /// (`ProducerExpired`); their unacknowledged seqs are declared closed.
    #[serde(default)]
    pub epochs_moved: u64,
    /// Readings never sent in such a forgotten epoch, resent with new seqs in the newer one.
    #[serde(default)]
    pub resent_new_epoch: u64,
    /// The last error, cleared by the next success.
    pub last_error: Option<String>,
}

/// Everything `sluice-edge status` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The agent's identity (from its certificate).
    pub identity: String,
    /// By source name.
    pub sources: BTreeMap<String, SourceStatus>,
    /// By stream name.
    pub spools: BTreeMap<String, SpoolStatus>,
    /// The uplink.
    pub uplink: UplinkStatus,
    /// Offers held back because a spool is full (policy `block`, or everything pinned): the
    /// sources that made them wait.
    #[serde(default)]
    pub offers_held: u64,
}

/// The agent's metrics. Cheap to share (`Arc`); every update takes a short lock.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<Status>,
}

impl Metrics {
    /// Metrics for an agent with `identity`, listing `sources` from the start (so a source
    /// that never reads shows zeros rather than nothing).
    pub fn new(identity: &str, sources: &[String]) -> Arc<Metrics> {
        let status = Status {
            identity: identity.to_owned(),
            sources: sources
                .iter()
                .map(|name| (name.clone(), SourceStatus::default()))
                .collect(),
            ..Status::default()
        };
        Arc::new(Metrics {
            state: Mutex::new(status),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Status> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn source(&self, name: &str, update: impl FnOnce(&mut SourceStatus)) {
        let mut state = self.lock();
        update(state.sources.entry(name.to_owned()).or_default());
    }

    /// A source read one reading.
    pub fn read(&self, source: &str) {
        self.source(source, |s| s.read += 1);
    }

    /// A reading of `source` entered the spool.
    pub fn spooled(&self, source: &str) {
        self.source(source, |s| s.spooled += 1);
    }

    /// A reading of `source` was rejected for `reason`.
    pub fn rejected(&self, source: &str, reason: &str) {
        self.source(source, |s| {
            *s.rejected.entry(reason.to_owned()).or_default() += 1
        });
    }

    /// `source` failed with `error` and will be restarted.
    pub fn source_failed(&self, source: &str, error: &str) {
        self.source(source, |s| {
            s.restarts += 1;
            s.failing = Some(error.to_owned());
        });
    }

    /// `source` is running again.
    pub fn source_running(&self, source: &str) {
        self.source(source, |s| s.failing = None);
    }

    /// Replaces the figures of one stream's spool.
    pub fn set_spool(&self, stream: &str, spool: SpoolStatus) {
        self.lock().spools.insert(stream.to_owned(), spool);
    }

    /// Sets how many offers wait for spool space.
    pub fn set_offers_held(&self, n: u64) {
        self.lock().offers_held = n;
    }

    /// Updates the uplink figures.
    pub fn uplink(&self, update: impl FnOnce(&mut UplinkStatus)) {
        update(&mut self.lock().uplink);
    }

    /// A copy of everything.
    pub fn status(&self) -> Status {
        self.lock().clone()
    }

    /// The Prometheus text exposition of everything.
    pub fn prometheus(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// Encodes one labelled family of values.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: prometheus_client::metrics::MetricType,
    rows: Vec<(Vec<(&str, &str)>, M)>,
) -> Result<(), std::fmt::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (label_set, value) in rows {
        value.encode(metric.encode_family(&label_set)?)?;
    }
    Ok(())
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType::{Counter, Gauge};
        let s = self.status();
        let per_source = |f: fn(&SourceStatus) -> u64| -> Vec<_> {
            s.sources
                .iter()
                .map(|(name, v)| (vec![("source", name.as_str())], ConstCounter::new(f(v))))
                .collect()
        };
        family(
            &mut encoder,
            "edge_source_readings",
            "Readings read by each source, before validation",
            Counter,
            per_source(|v| v.read),
        )?;
        family(
            &mut encoder,
            "edge_source_spooled",
            "Readings of each source accepted into the spool",
            Counter,
            per_source(|v| v.spooled),
        )?;
        family(
            &mut encoder,
            "edge_source_restarts",
            "Times each source failed and was restarted",
            Counter,
            per_source(|v| v.restarts),
        )?;
        let rejected = s
            .sources
            .iter()
            .flat_map(|(name, v)| {
                v.rejected.iter().map(move |(reason, n)| {
                    (
                        vec![("source", name.as_str()), ("reason", reason.as_str())],
                        ConstCounter::new(*n),
                    )
                })
            })
            .collect();
        family(
            &mut encoder,
            "edge_readings_rejected",
            "Readings rejected, by source and reason",
            Counter,
            rejected,
        )?;
        let per_stream = |f: fn(&SpoolStatus) -> i64| -> Vec<_> {
            s.spools
                .iter()
                .map(|(name, v)| (vec![("stream", name.as_str())], ConstGauge::new(f(v))))
                .collect()
        };
        family(
            &mut encoder,
            "edge_spool_records",
            "Records waiting in the spool",
            Gauge,
            per_stream(|v| gauge(v.records)),
        )?;
        family(
            &mut encoder,
            "edge_spool_bytes",
            "Bytes of records waiting in the spool",
            Gauge,
            per_stream(|v| gauge(v.bytes)),
        )?;
        family(
            &mut encoder,
            "edge_spool_oldest_age_ms",
            "Age of the oldest waiting record",
            Gauge,
            per_stream(|v| gauge(v.oldest_age_ms.unwrap_or(0))),
        )?;
        let dropped = s
            .spools
            .iter()
            .flat_map(|(name, v)| {
                v.dropped.iter().map(move |(reason, n)| {
                    (
                        vec![("stream", name.as_str()), ("reason", reason.as_str())],
                        ConstCounter::new(*n),
                    )
                })
            })
            .collect();
        family(
            &mut encoder,
            "edge_spool_dropped_seqs",
            "Seqs declared dropped, by stream and reason",
            Counter,
            dropped,
        )?;
        let u = &s.uplink;
        let one = |v: u64| vec![(Vec::new(), ConstCounter::new(v))];
        family(
            &mut encoder,
            "edge_uplink_connects",
            "Connections made to a node",
            Counter,
            one(u.connects),
        )?;
        family(
            &mut encoder,
            "edge_uplink_connect_failures",
            "Failed connection attempts",
            Counter,
            one(u.connect_failures),
        )?;
        family(
            &mut encoder,
            "edge_uplink_batches",
            "Produce requests answered",
            Counter,
            one(u.batches),
        )?;
        family(
            &mut encoder,
            "edge_uplink_batches_failed",
            "Produce requests failed as a whole",
            Counter,
            one(u.batches_failed),
        )?;
        family(
            &mut encoder,
            "edge_uplink_delivered_records",
            "Records acknowledged durable by the cluster",
            Counter,
            one(u.delivered),
        )?;
        let refused = u
            .refused
            .iter()
            .map(|(reason, n)| (vec![("reason", reason.as_str())], ConstCounter::new(*n)))
            .collect();
        family(
            &mut encoder,
            "edge_uplink_refused_records",
            "Records refused by the node, by reason (kept and retried)",
            Counter,
            refused,
        )?;
        family(
            &mut encoder,
            "edge_uplink_epochs_moved",
            "Sensor streams moved to a newer epoch after the node forgot their producer state",
            Counter,
            one(u.epochs_moved),
        )?;
        family(
            &mut encoder,
            "edge_uplink_resent_new_epoch_records",
            "Never-sent readings of a forgotten epoch resent in a newer one",
            Counter,
            one(u.resent_new_epoch),
        )?;
        family(
            &mut encoder,
            "edge_uplink_in_flight_records",
            "Records sent and not yet acknowledged",
            Gauge,
            vec![(Vec::new(), ConstGauge::new(gauge(u.in_flight)))],
        )?;
        family(
            &mut encoder,
            "edge_uplink_connected",
            "1 while connected to a node",
            Gauge,
            vec![(
                Vec::new(),
                ConstGauge::new(i64::from(u.connected_to.is_some())),
            )],
        )?;
        Ok(())
    }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_lists_labelled_counts_in_order() {
        // Checks the exposition format (names, labels, EOF) and that label sets come out sorted.
        let metrics = Metrics::new("sluice://c/edge/pi", &["b".into(), "a".into()]);
        metrics.read("b");
        metrics.rejected("a", "out_of_range");
        metrics.rejected("a", "duplicate");
        let text = metrics.prometheus();
        assert!(
            text.contains("edge_source_readings_total{source=\"a\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("edge_source_readings_total{source=\"b\"} 1\n"),
            "{text}"
        );
        let dup = text.find("reason=\"duplicate\"").unwrap_or(usize::MAX);
        let range = text.find("reason=\"out_of_range\"").unwrap_or(0);
        assert!(dup < range, "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        let a = text.find("source=\"a\"").unwrap_or(usize::MAX);
        let b = text.find("source=\"b\"").unwrap_or(0);
        assert!(a < b, "{text}");
    }
}
