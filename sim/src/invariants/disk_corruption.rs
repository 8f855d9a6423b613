//! Disk corruption (runs with `--disk-corruption`): damage the simulator did to a node
//! partition's files at rest may lose acknowledged records only if the partition says so. Every
//! record acknowledged at an offset of a damaged partition is either still read there with the
//! content it was acknowledged with, or the partition reports corruption: a produce to it is
//! refused with a `Storage` error saying it is read-only and naming a file of the node. An
//! offset never names a record other than the one acknowledged there (checked here for acked
//! records, and by [`super::stable_reads`] for everything read).

use super::{LogSnapshot, Violation};
use crate::history::{partition_of, same_content, History, RecordKey, Status};
use sluice_proto::msg::{Message, ProduceRequest, RecordOutcome, RecordRejection};
use sluice_proto::{PartitionId, StreamName};
use std::collections::{BTreeMap, BTreeSet};

/// A partition, by stream and id.
pub type PartitionKey = (StreamName, PartitionId);

/// The acknowledged records (acked before the snapshot was read) of the `damaged` partitions
/// that are not read back at their offsets, per partition. Fails when an acked offset holds a
/// different record.
pub fn missing(
    history: &History,
    ack_clock: u64,
    snapshot: &LogSnapshot,
    damaged: &BTreeSet<PartitionKey>,
) -> Result<BTreeMap<PartitionKey, Vec<RecordKey>>, Violation> {
    let mut out: BTreeMap<PartitionKey, Vec<RecordKey>> = BTreeMap::new();
    for (key, sent) in history.iter() {
        let Status::Acked {
            partition,
            offset,
            ack_seq,
            ..
        } = sent.status
        else {
            continue;
        };
        let part = (sent.stream.clone(), partition);
        if ack_seq >= ack_clock || !damaged.contains(&part) {
            continue;
        }
        let stored = snapshot.partitions.get(&part).and_then(|log| {
            let idx = offset.0.checked_sub(log.log_start.0)?;
            (offset < log.high_watermark)
                .then(|| log.events.get(usize::try_from(idx).ok()?))
                .flatten()
        });
        match stored {
            Some(stored) if stored.offset == offset => {
                if !same_content(&key.0, &sent.record, &stored.event) {
                    return Err(Violation::new(
                        "disk_corruption",
                        format!(
                            "{}/{partition} offset {offset} was acked for {} {} epoch {} seq {} but now holds {:?}",
                            sent.stream, key.0, key.1, key.2, key.3, stored.event
                        ),
                    ));
                }
            }
            _ => out.entry(part).or_default().push(key.clone()),
        }
    }
    Ok(out)
}

/// What the node answered a resend of a lost acknowledged record: the corruption report when
/// it is a `Storage` refusal saying the partition is read-only and naming a file under
/// `data_dir`, otherwise a violation (the record was lost silently).
pub fn require_report(
    part: &PartitionKey,
    lost: &RecordKey,
    n_lost: usize,
    answer: &Message,
    data_dir: &str,
) -> Result<String, Violation> {
    if let Some(reason) = read_only_reason(answer, data_dir) {
        return Ok(reason);
    }
    Err(Violation::new(
        "disk_corruption",
        format!(
            "{}/{}: {n_lost} acked records are gone after disk damage (first {} {} epoch {} seq {}), but the partition does not report corruption: a resend was answered {answer:?}",
            part.0, part.1, lost.0, lost.1, lost.2, lost.3
        ),
    ))
}

/// The resend of `key` as its producer would send it.
pub fn resend(history: &History, key: &RecordKey) -> Option<Message> {
    let sent = history.get(key)?;
    Some(Message::ProduceRequest(ProduceRequest {
        request_id: u64::MAX,
        stream: sent.stream.clone(),
        records: vec![sent.record.clone()],
    }))
}

/// The reason of a `Storage` refusal saying the partition is read-only and naming a file under
/// `data_dir`, if `answer` is one.
pub fn read_only_reason(answer: &Message, data_dir: &str) -> Option<String> {
    let Message::ProduceResponse(r) = answer else {
        return None;
    };
    match r.outcomes.first() {
        Some(RecordOutcome::Rejected(RecordRejection::Storage { reason }))
            if reason.contains("read-only") && reason.contains(data_dir) =>
        {
            Some(reason.clone())
        }
        _ => None,
    }
}

/// A record to probe a damaged partition that lost no acknowledged record with (damage past the
/// acknowledged data, such as a truncation into the preallocated zeros, still makes it
/// read-only): its last acknowledged record, whose resend a writable partition answers as a
/// duplicate; else any record sent to it.
pub fn probe_record(
    history: &History,
    streams: &[(StreamName, u32)],
    part: &PartitionKey,
) -> Option<RecordKey> {
    let mut acked: Option<(u64, RecordKey)> = None;
    let mut any: Option<RecordKey> = None;
    for (key, sent) in history.iter() {
        if sent.stream != part.0 {
            continue;
        }
        if partition_of(streams, &sent.stream, &key.1) != part.1 {
            continue;
        }
        if let Status::Acked { ack_seq, .. } = sent.status {
            if acked.as_ref().is_none_or(|(seq, _)| ack_seq > *seq) {
                acked = Some((ack_seq, key.clone()));
            }
        }
        if any.is_none() {
            any = Some(key.clone());
        }
    }
    acked.map(|(_, key)| key).or(any)
}
