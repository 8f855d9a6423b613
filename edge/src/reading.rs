//! `SourceReading` and `Refusal`: what a source offers and why the agent may refuse it. The
//! types sources, validation and the agent share, in a module of their own so that `source`
//! and `validate` do not import each other.

use sluice_proto::{Payload, SensorId, StreamName, UnixMillis};

/// A reading a source offers to the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceReading {
    /// The stream it goes to.
    pub stream: StreamName,
    /// The sensor it is from (the partitioning key; its seqs are numbered per stream).
    pub sensor: SensorId,
    /// The device's clock when it was read (the agent's wall clock for sources without one).
    pub device_time: UnixMillis,
    /// The content.
    pub payload: Payload,
}

/// Why a reading was not accepted. The label is the `reason` of the rejection counter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The value is outside the configured (or the sensor model's) plausible range.
    #[error("{what} {value} outside the plausible range {min}..={max}")]
    OutOfRange {
        /// Which quantity.
        what: &'static str,
        /// The value.
        value: String,
        /// Lower bound.
        min: String,
        /// Upper bound.
        max: String,
    },
    /// A value that is not a finite number.
    #[error("{what} is not a finite number")]
    NotFinite {
        /// Which quantity.
        what: &'static str,
    },
    /// The reading breaks a rule of the wire format (a metric name or unit too long), which the
    /// node would refuse.
    #[error("invalid reading: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// The sensor sends faster than its configured rate.
    #[error("sensor {sensor} exceeds {per_second_max} readings per second")]
    RateLimited {
        /// The sensor.
        sensor: String,
        /// The configured rate.
        per_second_max: f64,
    },
    /// The same reading (sensor, device time and payload) arrived again within the window.
    #[error("duplicate reading of sensor {sensor}")]
    Duplicate {
        /// The sensor.
        sensor: String,
    },
    /// The spool refused it: too large or too many sensors (a full spool makes the offer wait
    /// instead).
    #[error("spool refused the reading: {reason}")]
    Spool {
        /// The counter label: `too_large`, `too_many_sensors` or `unknown_stream`.
        label: &'static str,
        /// What the spool said.
        reason: String,
    },
}

impl Refusal {
    /// The `reason` label of the rejection counter.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::OutOfRange { .. } => "out_of_range",
            Refusal::NotFinite { .. } => "not_finite",
            Refusal::Invalid { .. } => "invalid",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::Duplicate { .. } => "duplicate",
            Refusal::Spool { label, .. } => label,
        }
    }
}
