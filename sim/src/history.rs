//! The checkers' own record of what the producers sent and what they were told. It is built from
//! the producers' side only (the records they generated and the responses they received) and is
//! never filled from what the node reports about itself.

use crate::invariants::{retry_offsets, Violation};
use sluice_proto::{BootEpoch, Event, Identity, Offset, PartitionId, Record, SensorId, StreamName};
use std::collections::BTreeMap;
use std::time::Duration;

/// Identifies one record: `(producer, sensor, epoch, seq)`.
pub type RecordKey = (Identity, SensorId, BootEpoch, u64);

/// The key of a stored event.
pub fn event_key(event: &Event) -> RecordKey {
    (
        event.producer.clone(),
        event.sensor.clone(),
        event.boot_epoch,
        event.seq,
    )
}

/// The key of a record sent by `producer`.
pub fn record_key(producer: &Identity, record: &Record) -> RecordKey {
    (
        producer.clone(),
        record.sensor.clone(),
        record.boot_epoch,
        record.seq,
    )
}

/// What a producer knows about one of its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Never acknowledged (yet).
    Unacked,
    /// Acknowledged as stored at `offset` of `partition`.
    Acked {
        /// The partition the ack named.
        partition: PartitionId,
        /// The offset the ack named.
        offset: Offset,
        /// Position of the first ack in the order of all acks (see [`History::ack_clock`]).
        ack_seq: u64,
        /// Simulated time of the first ack.
        at: Duration,
        /// Whether the first ack said the record was already stored.
        duplicate: bool,
    },
    /// Refused as a duplicate older than the dedup window: stored once, offset not known.
    StoredOffsetUnknown,
    /// An edge record never answered itself, but a later seq of its sensor and epoch was
    /// acknowledged: the node refuses gaps, so it holds this one too (offset not known). Edge
    /// agents rely on exactly that and do not resend it.
    StoredImplied,
}

/// One record as its producer sent it.
#[derive(Debug, Clone)]
pub struct SentRecord {
    /// The stream it was sent to.
    pub stream: StreamName,
    /// Its content.
    pub record: Record,
    /// What the producer was told.
    pub status: Status,
}

/// Every record of the run.
#[derive(Debug, Default, Clone)]
pub struct History {
    records: BTreeMap<RecordKey, SentRecord>,
    n_unresolved: u64,
    n_acks: u64,
    n_duplicate_acks: u64,
    n_too_old: u64,
}

impl History {
    /// Notes a new record before it is first sent.
    pub fn register(&mut self, producer: &Identity, stream: &StreamName, record: &Record) {
        let key = record_key(producer, record);
        let sent = SentRecord {
            stream: stream.clone(),
            record: record.clone(),
            status: Status::Unacked,
        };
        let previous = self.records.insert(key, sent);
        assert!(
            previous.is_none(),
            "producer {producer} generated record {} of {} twice",
            record.seq,
            record.sensor
        );
        self.n_unresolved += 1;
    }

    /// Notes a record an edge agent sent, as it reaches the node. Agents resend a record until
    /// it is acknowledged (and again after a crash), so a record may arrive many times; each
    /// time it must carry the same stream and content.
    pub fn register_resend(
        &mut self,
        producer: &Identity,
        stream: &StreamName,
        record: &Record,
    ) -> Result<(), Violation> {
        let key = record_key(producer, record);
        if let Some(sent) = self.records.get(&key) {
            if &sent.stream != stream || &sent.record != record {
                return Err(Violation::new(
                    "integrity",
                    format!(
                        "{producer} sent {} epoch {} seq {} twice with different content: first \
                         {:?} to {}, now {record:?} to {stream}",
                        record.sensor, record.boot_epoch, record.seq, sent.record, sent.stream
                    ),
                ));
            }
            return Ok(());
        }
        self.register(producer, stream, record);
        Ok(())
    }

    /// Notes an `Appended` outcome; a record acknowledged again must get the same place.
    pub fn on_appended(
        &mut self,
        key: &RecordKey,
        partition: PartitionId,
        offset: Offset,
        duplicate: bool,
        at: Duration,
    ) -> Result<(), Violation> {
        let Some(sent) = self.records.get_mut(key) else {
            return Err(Violation::new(
                "acked_durability",
                format!("ack for a record never sent: {key:?}"),
            ));
        };
        retry_offsets::check(key, &sent.status, partition, offset)?;
        if duplicate {
            self.n_duplicate_acks += 1;
        }
        match sent.status {
            Status::Acked { .. } => return Ok(()),
            // Stored ones were already counted as resolved.
            Status::StoredOffsetUnknown | Status::StoredImplied => {}
            Status::Unacked => self.n_unresolved -= 1,
        }
        sent.status = Status::Acked {
            partition,
            offset,
            ack_seq: self.n_acks,
            at,
            duplicate,
        };
        self.n_acks += 1;
        Ok(())
    }

    /// Notes an `Appended` outcome of an edge record, which also answers every earlier record
    /// of its sensor and epoch (see [`Status::StoredImplied`]).
    pub fn on_edge_appended(
        &mut self,
        key: &RecordKey,
        partition: PartitionId,
        offset: Offset,
        duplicate: bool,
        at: Duration,
    ) -> Result<(), Violation> {
        self.on_appended(key, partition, offset, duplicate, at)?;
        self.imply_before(key);
        Ok(())
    }

    /// Notes a `DuplicateTooOld` outcome of an edge record (see [`History::on_edge_appended`]).
    pub fn on_edge_too_old(&mut self, key: &RecordKey) {
        self.on_too_old(key);
        self.imply_before(key);
    }

    fn imply_before(&mut self, key: &RecordKey) {
        let (producer, sensor, epoch, _) = key;
        // Keys sort by producer, sensor, epoch, then seq: this is the sensor's epoch below `key`.
        let from = (producer.clone(), sensor.clone(), *epoch, 0);
        let mut n_resolved = 0;
        for (_, sent) in self.records.range_mut(from..key.clone()) {
            if sent.status == Status::Unacked {
                sent.status = Status::StoredImplied;
                n_resolved += 1;
            }
        }
        self.n_unresolved -= n_resolved;
    }

    /// Notes a `DuplicateTooOld` outcome: the node says the record is stored.
    pub fn on_too_old(&mut self, key: &RecordKey) {
        self.n_too_old += 1;
        if let Some(sent) = self.records.get_mut(key) {
            if sent.status == Status::Unacked {
                sent.status = Status::StoredOffsetUnknown;
                self.n_unresolved -= 1;
            }
        }
    }

    /// Drops the records of every producer that sent records to one of `partitions` (of
    /// `streams`, by stream and partition count), for checks that do not apply to them: a
    /// producer whose retries to a read-only partition fill its requests in flight sends
    /// nothing else.
    pub fn forget_partitions(
        &mut self,
        streams: &[(StreamName, u32)],
        partitions: &std::collections::BTreeSet<(StreamName, sluice_proto::PartitionId)>,
    ) {
        let touched: std::collections::BTreeSet<Identity> = self
            .records
            .iter()
            .filter(|((_, sensor, _, _), sent)| {
                let partition = partition_of(streams, &sent.stream, sensor);
                partitions.contains(&(sent.stream.clone(), partition))
            })
            .map(|((producer, _, _, _), _)| producer.clone())
            .collect();
        self.records
            .retain(|(producer, _, _, _), _| !touched.contains(producer));
        self.n_unresolved = self
            .records
            .values()
            .filter(|s| s.status == Status::Unacked)
            .count() as u64;
    }

    /// True when the producer has an answer for the record (acked or known stored).
    pub fn is_resolved(&self, key: &RecordKey) -> bool {
        self.records
            .get(key)
            .is_some_and(|s| s.status != Status::Unacked)
    }

    /// Records without an answer yet.
    pub fn n_unresolved(&self) -> u64 {
        self.n_unresolved
    }

    /// Acks that said "already stored" (a retry or a duplicated request found its original).
    pub fn n_duplicate_acks(&self) -> u64 {
        self.n_duplicate_acks
    }

    /// Answers "duplicate older than the dedup window".
    pub fn n_too_old(&self) -> u64 {
        self.n_too_old
    }

    /// Records sent.
    pub fn n_records(&self) -> usize {
        self.records.len()
    }

    /// Acks so far; an ack with `ack_seq` below a value read before a fetch was given before it.
    pub fn ack_clock(&self) -> u64 {
        self.n_acks
    }

    /// The record with this key.
    pub fn get(&self, key: &RecordKey) -> Option<&SentRecord> {
        self.records.get(key)
    }

    /// Every record, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&RecordKey, &SentRecord)> {
        self.records.iter()
    }
}

/// True when a stored event carries exactly the record's content.
pub fn same_content(producer: &Identity, record: &Record, event: &Event) -> bool {
    event.producer == *producer
        && event.sensor == record.sensor
        && event.boot_epoch == record.boot_epoch
        && event.seq == record.seq
        && event.device_time == record.device_time
        && event.payload == record.payload
}

/// The partition of `stream` (of `streams`, with their partition counts) that `sensor`'s records
/// go to.
pub fn partition_of(
    streams: &[(StreamName, u32)],
    stream: &StreamName,
    sensor: &SensorId,
) -> PartitionId {
    let n = streams
        .iter()
        .find(|(s, _)| s == stream)
        .map_or(1, |(_, n)| *n);
    sluice_cluster::placement::partition_for(sensor, n)
}
