//! Stable reads: whatever a consumer once read at an offset (fetches return only durable
//! events) is still there, unchanged, after any crash; the high watermark never falls below what
//! was read.

use super::{LogSnapshot, Violation};
use ring::digest;
use sluice_proto::{codec, Offset, PartitionId, StoredEvent, StreamName};
use std::collections::{BTreeMap, BTreeSet};

/// What consumers have read so far: a digest of each event, per partition, by offset.
#[derive(Debug, Default)]
pub struct Reads {
    seen: BTreeMap<(StreamName, PartitionId), Vec<[u8; 32]>>,
    /// Partitions whose files the simulator damaged (`--disk-corruption`): their high
    /// watermark may fall (what was read past the damage is gone), but an offset still never
    /// names a different event.
    pub exempt: BTreeSet<(StreamName, PartitionId)>,
}

fn event_digest(stored: &StoredEvent) -> [u8; 32] {
    let bytes = codec::encode(&stored.event)
        .unwrap_or_else(|e| panic!("stored event does not encode: {e}"));
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, &bytes).as_ref());
    out
}

impl Reads {
    /// Offsets read so far in a partition.
    pub fn n_read(&self, stream: &StreamName, partition: PartitionId) -> u64 {
        self.seen
            .get(&(stream.clone(), partition))
            .map_or(0, |v| v.len() as u64)
    }

    /// Notes events read from `stream/partition`, checking them against earlier reads.
    pub fn observe(
        &mut self,
        stream: &StreamName,
        partition: PartitionId,
        events: &[StoredEvent],
    ) -> Result<(), Violation> {
        let seen = self.seen.entry((stream.clone(), partition)).or_default();
        for stored in events {
            let digest = event_digest(stored);
            let at = usize::try_from(stored.offset.0).unwrap_or(usize::MAX);
            match seen.get(at) {
                Some(earlier) if *earlier != digest => {
                    return Err(Violation::new(
                        "stable_reads",
                        format!("{stream}/{partition} offset {} changed since a consumer read it; now {:?}", stored.offset, stored.event),
                    ));
                }
                Some(_) => {}
                None if at == seen.len() => seen.push(digest),
                None => {}
            }
        }
        Ok(())
    }

    /// Notes a high watermark a fetch reported: it may not be below what was read before.
    pub fn check_high_watermark(
        &self,
        stream: &StreamName,
        partition: PartitionId,
        high_watermark: Offset,
    ) -> Result<(), Violation> {
        let n_read = self.n_read(stream, partition);
        if high_watermark.0 < n_read && !self.exempt.contains(&(stream.clone(), partition)) {
            return Err(Violation::new(
                "stable_reads",
                format!("{stream}/{partition}: consumers read offsets up to {}, but the high watermark is now {high_watermark}", n_read - 1),
            ));
        }
        Ok(())
    }

    /// Checks a full snapshot against earlier reads, then remembers it.
    pub fn check_snapshot(&mut self, snapshot: &LogSnapshot) -> Result<(), Violation> {
        for ((stream, partition), log) in &snapshot.partitions {
            self.check_high_watermark(stream, *partition, log.high_watermark)?;
            self.observe(stream, *partition, &log.events)?;
        }
        Ok(())
    }
}
