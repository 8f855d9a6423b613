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
    /// The node forgot the producer state of this sensor in boot epoch `epoch` (it answered
    /// `RecordRejection::ProducerExpired`, or `EpochStart` to a record past the epoch's first
    /// when the producer had already released those), so seqs `seq..=seq_last` *of that
    /// epoch* can never be delivered under it: this declaration, sent in a newer epoch, closes
    /// them. Those the
    /// producer had handed out may or may not have been stored and are not sent again (a second
    /// copy could be stored); readings it had never sent follow this declaration in its own
    /// epoch, with new seqs. The declaration's own seq range (in its own epoch) carries nothing
    /// else.
    ProducerExpired {
        /// The expired epoch.
        epoch: BootEpoch,
        /// First seq of that epoch closed.
        seq: u64,
        /// Last seq of that epoch closed (inclusive).
        seq_last: u64,
    },
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

    /// Checks the seqs this record occupies (see [`check_seq_range`]); the node refuses a
    /// record that fails as `Invalid` before it reaches a partition, and the edge refuses to
    /// spool or recover one.
    pub fn check_seqs(&self) -> Result<SeqRange, SeqRangeError> {
        check_seq_range(self.seq, self.seq_last())
    }
}

/// The largest seq a record may occupy. One more is kept free so that the seq expected after
/// any accepted record (`seq_last + 1`) is itself a seq, and nothing wraps back to 0.
pub const SEQ_MAX: u64 = u64::MAX - 1;

/// Why the seqs of a record are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SeqRangeError {
    /// The range ends before it starts.
    #[error("seq range {first}..={last} is inverted")]
    Inverted {
        /// First seq.
        first: u64,
        /// Last seq.
        last: u64,
    },
    /// The range reaches beyond [`SEQ_MAX`]: no seq could follow it.
    #[error("seq range {first}..={last} goes beyond the largest seq {SEQ_MAX}")]
    Overflow {
        /// First seq.
        first: u64,
        /// Last seq.
        last: u64,
    },
}

/// A checked range of seqs, `first ..= last`, with `last <= SEQ_MAX`: its length and the seq
/// after it are computed without overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqRange {
    first: u64,
    last: u64,
}

impl SeqRange {
    /// First seq.
    pub fn first(self) -> u64 {
        self.first
    }

    /// Last seq (inclusive).
    pub fn last(self) -> u64 {
        self.last
    }

    /// The seq that follows the range (`last + 1`, at most `u64::MAX`).
    pub fn next(self) -> u64 {
        // last <= SEQ_MAX, so this cannot overflow.
        self.last + 1
    }

    /// How many seqs the range holds (at least 1).
    pub fn len(self) -> u64 {
        // last - first <= SEQ_MAX, so adding 1 cannot overflow.
        self.last - self.first + 1
    }

    /// Always false: a range holds at least one seq.
    pub fn is_empty(self) -> bool {
        false
    }
}

/// The one check of a seq range, shared by the node (before a record reaches its partition, and
/// in the partition core) and the edge (when it spools and recovers records): `first <= last`
/// and `last <= SEQ_MAX`.
pub fn check_seq_range(first: u64, last: u64) -> Result<SeqRange, SeqRangeError> {
    if last < first {
        return Err(SeqRangeError::Inverted { first, last });
    }
    if last > SEQ_MAX {
        return Err(SeqRangeError::Overflow { first, last });
    }
    Ok(SeqRange { first, last })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dropped(seq: u64, seq_last: u64) -> Record {
        Record {
            sensor: SensorId::new("s").unwrap(),
            boot_epoch: BootEpoch(1),
            seq,
            device_time: UnixMillis(0),
            payload: Payload::Dropped {
                seq_last,
                reason: DropReason::Expired,
            },
        }
    }

    #[test]
    fn drop_range_reaching_u64_max_is_refused() {
        // Checks the exact case that once wrapped the next expected seq to 0: a declared range
        // ending at u64::MAX is refused, and so is a reading at seq u64::MAX.
        assert_eq!(
            dropped(0, u64::MAX).check_seqs(),
            Err(SeqRangeError::Overflow {
                first: 0,
                last: u64::MAX
            })
        );
        let mut reading = dropped(u64::MAX, u64::MAX);
        reading.payload = Payload::Bytes(vec![]);
        assert!(matches!(
            reading.check_seqs(),
            Err(SeqRangeError::Overflow { .. })
        ));
    }

    #[test]
    fn inverted_range_is_refused() {
        // Checks that a declared range ending before it starts is refused as inverted.
        assert_eq!(
            dropped(5, 4).check_seqs(),
            Err(SeqRangeError::Inverted { first: 5, last: 4 })
        );
    }

    #[test]
    fn largest_range_has_a_next_seq_and_a_length() {
        // Checks that the widest accepted range computes its length and successor without
        // overflow, and that one seq ranges have length 1.
        let all = check_seq_range(0, SEQ_MAX).unwrap();
        assert_eq!((all.first(), all.last()), (0, SEQ_MAX));
        assert_eq!(all.next(), u64::MAX);
        assert_eq!(all.len(), u64::MAX);
        let one = check_seq_range(7, 7).unwrap();
        assert_eq!((one.len(), one.next()), (1, 8));
        assert!(!one.is_empty());
    }
}
