//! On-disk layout of a partition log, on top of [`sluice_proto::segment`].
//!
//! Segment files are `<base_offset:020>.log`, of kind [`SEGMENT_KIND`] (magic `SLUICESG`) with the
//! base offset as the segment id. Each segment entry's payload is one log entry: its base offset
//! (u64), its event count (u32, little endian), then `count` canonically encoded events.
//!
//! The partition's manifest is a small file of two [`MANIFEST_SLOT_LEN`]-byte slots, one per
//! page ([`MANIFEST_SLOT_STRIDE`] apart), written alternately and each checked by its own CRC32C,
//! so one torn write never loses the previous state. A slot holds a sequence number (the higher
//! valid one wins), the base offsets of the first and last segments, and the durable end of the
//! last segment as an offset and a byte position.

use sluice_proto::segment::SegmentKind;
use sluice_proto::Offset;

/// The kind of node log segments.
pub(crate) const SEGMENT_KIND: SegmentKind = SegmentKind {
    magic: *b"SLUICESG",
    version: 2,
};

/// Bytes before the events of an entry payload.
pub(crate) const ENTRY_PREFIX_LEN: usize = 12;

/// The name of the segment starting at `base`.
pub(crate) fn segment_name(base: Offset) -> String {
    format!("{:020}.log", base.0)
}

/// The base offset a segment file name stands for, or `None` for any other file.
pub(crate) fn parse_segment_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Offset)
}

/// The payload of one log entry.
pub(crate) fn encode_entry(base: Offset, count: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENTRY_PREFIX_LEN + body.len());
    out.extend_from_slice(&base.0.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Splits an entry payload into its base offset, event count and events.
pub(crate) fn decode_entry(payload: &[u8]) -> Result<(Offset, u32, &[u8]), String> {
    if payload.len() <= ENTRY_PREFIX_LEN {
        return Err(format!(
            "log entry of {} bytes has no events",
            payload.len()
        ));
    }
    let mut base = [0u8; 8];
    base.copy_from_slice(&payload[..8]);
    let mut count = [0u8; 4];
    count.copy_from_slice(&payload[8..12]);
    let count = u32::from_le_bytes(count);
    if count == 0 {
        return Err("log entry with zero events".into());
    }
    let base = u64::from_le_bytes(base);
    // Every offset of the entry and one past its last must exist, so callers may add freely.
    if base.checked_add(u64::from(count)).is_none() {
        return Err(format!(
            "log entry at offset {base} with {count} events runs past the largest offset"
        ));
    }
    Ok((Offset(base), count, &payload[ENTRY_PREFIX_LEN..]))
}

/// First bytes of a manifest slot.
const MANIFEST_MAGIC: [u8; 8] = *b"SLUICEMF";
/// Manifest layout version.
const MANIFEST_VERSION: u32 = 1;
/// Bytes of one manifest slot.
pub(crate) const MANIFEST_SLOT_LEN: usize = 64;
/// Distance between the two slots (one page each, so a torn write touches only one).
pub(crate) const MANIFEST_SLOT_STRIDE: u64 = 4096;

/// What a partition must hold, as its manifest records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ManifestState {
    /// Base offset of the first segment.
    pub(crate) first: Offset,
    /// Base offset of the last segment.
    pub(crate) last: Offset,
    /// Every offset below this one is durable.
    pub(crate) durable_offset: Offset,
    /// Byte position in the last segment up to which it is durable.
    pub(crate) durable_pos: u64,
}

/// One manifest slot's bytes.
pub(crate) fn encode_manifest(seq: u64, state: &ManifestState) -> [u8; MANIFEST_SLOT_LEN] {
    let mut out = [0u8; MANIFEST_SLOT_LEN];
    out[..8].copy_from_slice(&MANIFEST_MAGIC);
    out[8..12].copy_from_slice(&MANIFEST_VERSION.to_le_bytes());
    out[16..24].copy_from_slice(&seq.to_le_bytes());
    out[24..32].copy_from_slice(&state.first.0.to_le_bytes());
    out[32..40].copy_from_slice(&state.last.0.to_le_bytes());
    out[40..48].copy_from_slice(&state.durable_offset.0.to_le_bytes());
    out[48..56].copy_from_slice(&state.durable_pos.to_le_bytes());
    let crc = crc32c::crc32c(&out[..60]);
    out[60..64].copy_from_slice(&crc.to_le_bytes());
    out
}

/// A checked manifest slot: its sequence number and state; `None` when it does not check.
pub(crate) fn decode_manifest(bytes: &[u8; MANIFEST_SLOT_LEN]) -> Option<(u64, ManifestState)> {
    let u64_at = |i: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[i..i + 8]);
        u64::from_le_bytes(word)
    };
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[60..64]);
    if bytes[..8] != MANIFEST_MAGIC || u32::from_le_bytes(crc) != crc32c::crc32c(&bytes[..60]) {
        return None;
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&bytes[8..12]);
    if u32::from_le_bytes(version) != MANIFEST_VERSION {
        return None;
    }
    Some((
        u64_at(16),
        ManifestState {
            first: Offset(u64_at(24)),
            last: Offset(u64_at(32)),
            durable_offset: Offset(u64_at(40)),
            durable_pos: u64_at(48),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_payload_round_trips_and_refuses_empty_entries() {
        // Checks the entry payload layout and that entries without events, or whose offsets
        // overflow, are refused.
        let payload = encode_entry(Offset(42), 3, b"events");
        assert_eq!(decode_entry(&payload), Ok((Offset(42), 3, &b"events"[..])));
        assert!(decode_entry(&encode_entry(Offset(1), 0, b"x")).is_err());
        assert!(decode_entry(&payload[..ENTRY_PREFIX_LEN]).is_err());
        // An entry whose offsets would run past u64::MAX (a crafted or damaged base) is refused,
        // one that ends exactly at it is not.
        assert!(decode_entry(&encode_entry(Offset(u64::MAX - 1), 2, b"x")).is_err());
        assert!(decode_entry(&encode_entry(Offset(u64::MAX - 2), 2, b"x")).is_ok());
    }

    #[test]
    fn manifest_slot_round_trips_and_any_flip_is_refused() {
        // Checks the manifest slot layout and that flipping any bit makes the slot not check.
        let state = ManifestState {
            first: Offset(0),
            last: Offset(1000),
            durable_offset: Offset(1234),
            durable_pos: 5678,
        };
        let slot = encode_manifest(7, &state);
        assert_eq!(decode_manifest(&slot), Some((7, state)));
        for bit in 0..MANIFEST_SLOT_LEN * 8 {
            let mut flipped = slot;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode_manifest(&flipped), None, "flip of bit {bit}");
        }
    }

    #[test]
    fn segment_names_round_trip() {
        // Checks segment file names and that other files are not taken for segments.
        assert_eq!(
            parse_segment_name(&segment_name(Offset(9))),
            Some(Offset(9))
        );
        assert_eq!(parse_segment_name("9.log"), None);
        assert_eq!(parse_segment_name("00000000000000000009.tmp"), None);
    }
}
