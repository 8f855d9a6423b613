//! The event model. A producer sends [`Record`]s; the broker stamps each with the authenticated
//! producer identity and its receive time, making an [`Event`], and stores it at an offset.
//!
//! Sequence numbers are per `(producer, sensor)`: each sensor of a producer counts `seq` from 0
//! within a [`BootEpoch`]. A sensor maps to exactly one partition, so that partition alone can
//! detect duplicates and gaps. A [`Payload::Dropped`] record declares a range of seqs the producer
//! issued but could not deliver; it occupies that whole range.

use crate::ids::{BootEpoch, Identity, Offset, SensorId, UnixMillis};
use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// A typed sensor reading.
#[derive(Clone, Debug, PartialEq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reading {
    /// Temperature in degrees Celsius.
    Temperature {
        /// °C.
        celsius: f64,
    },
    /// Relative humidity in percent.
    Humidity {
        /// % RH.
        percent: f64,
    },
    /// Any other named metric with its unit.
    Metric {
        /// Metric name, e.g. `door_open`.
        name: String,
        /// Unit, e.g. `bool`, `ppm`.
        unit: String,
        /// The value.
        value: f64,
    },
}

/// The longest metric name accepted, in bytes.
pub const METRIC_NAME_BYTES_MAX: usize = 128;
/// The longest metric unit accepted, in bytes.
pub const METRIC_UNIT_BYTES_MAX: usize = 32;

impl Reading {
    /// Checks what a reading must be wherever it is (the edge refuses it before spooling, the
    /// node before storing): a finite value, and a metric's name of 1 to
    /// [`METRIC_NAME_BYTES_MAX`] bytes and unit of at most [`METRIC_UNIT_BYTES_MAX`].
    pub fn check(&self) -> Result<(), String> {
        let (what, value) = match self {
            Reading::Temperature { celsius } => ("temperature", *celsius),
            Reading::Humidity { percent } => ("humidity", *percent),
            Reading::Metric { name, unit, value } => {
                if name.is_empty() || name.len() > METRIC_NAME_BYTES_MAX {
                    return Err(format!(
                        "metric name must be 1 to {METRIC_NAME_BYTES_MAX} bytes, got {}",
                        name.len()
                    ));
                }
                if unit.len() > METRIC_UNIT_BYTES_MAX {
                    return Err(format!(
                        "metric unit must be at most {METRIC_UNIT_BYTES_MAX} bytes, got {}",
                        unit.len()
                    ));
                }
                ("metric", *value)
            }
        };
        if value.is_finite() {
            Ok(())
        } else {
            Err(format!("{what} reading is not a finite number"))
        }
    }

    /// The numeric value, whatever the kind.
    pub fn value(&self) -> f64 {
        match self {
            Reading::Temperature { celsius } => *celsius,
            Reading::Humidity { percent } => *percent,
            Reading::Metric { value, .. } => *value,
        }
    }
}

/// Why a producer could not deliver a range of seqs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The spool was full and the policy dropped the oldest readings.
    SpoolFull,
    /// Readings outlived the spool's age bound.
    Expired,
    /// Readings issued but not yet synced when power was lost.
    PowerLoss,
    /// The node refused the reading as invalid for a reason the edge cannot check (for example
    /// a node `record_bytes_max` smaller than the edge's); declared so its sensor moves on.
    Invalid,
    /// The edge could not store the readings: its disk was full or refused a write or sync.
    Storage,
    /// The edge's stored copy was damaged on disk (it failed its checksum) and cannot be read.
    Corrupted,
}

/// What an event carries.
#[derive(Clone, Debug, PartialEq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// A typed reading.
    Reading(Reading),
    /// Opaque JSON text, e.g. scanner or runtime-security output. Stored as given.
    Json(String),
    /// Opaque bytes.
    Bytes(Vec<u8>),
    /// The producer declares seqs `record.seq ..= seq_last` lost for `reason`.
    Dropped {
        /// Last seq of the declared range (inclusive).
        seq_last: u64,
        /// Why they were lost.
        reason: DropReason,
    },
}

/// What a producer sends for one reading or event.
#[derive(Clone, Debug, PartialEq, Encode, Decode, Serialize, Deserialize)]
pub struct Record {
    /// The sensor (partitioning key).
    pub sensor: SensorId,
    /// The producer incarnation.
    pub boot_epoch: BootEpoch,
    /// Sequence number within `(producer, sensor, boot_epoch)`, from 0, without gaps.
    pub seq: u64,
    /// The device's clock when it was read; informational only.
    pub device_time: UnixMillis,
    /// The content.
    pub payload: Payload,
}

impl Record {
    /// The last seq this record occupies (a `Dropped` record covers a range).
    pub fn seq_last(&self) -> u64 {
        match self.payload {
            Payload::Dropped { seq_last, .. } => seq_last,
            _ => self.seq,
        }
    }
}

/// A record as stored: stamped by the broker.
#[derive(Clone, Debug, PartialEq, Encode, Decode, Serialize, Deserialize)]
pub struct Event {
    /// The authenticated producer, from its certificate.
    pub producer: Identity,
    /// The sensor.
    pub sensor: SensorId,
    /// The producer incarnation.
    pub boot_epoch: BootEpoch,
    /// First seq of the record.
    pub seq: u64,
    /// The device's time.
    pub device_time: UnixMillis,
    /// The broker's wall clock when it accepted the record.
    pub received_time: UnixMillis,
    /// The content.
    pub payload: Payload,
}

impl Event {
    /// Stamps a record with its producer and receive time.
    pub fn stamp(producer: Identity, received_time: UnixMillis, record: Record) -> Self {
        Self {
            producer,
            sensor: record.sensor,
            boot_epoch: record.boot_epoch,
            seq: record.seq,
            device_time: record.device_time,
            received_time,
            payload: record.payload,
        }
    }

    /// The last seq this event occupies.
    pub fn seq_last(&self) -> u64 {
        match self.payload {
            Payload::Dropped { seq_last, .. } => seq_last,
            _ => self.seq,
        }
    }
}

/// An event with its offset, as returned by a fetch.
#[derive(Clone, Debug, PartialEq, Encode, Decode, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Where it is in the partition log.
    pub offset: Offset,
    /// The event.
    pub event: Event,
}
