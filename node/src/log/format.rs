//! On-disk layout of a partition log, on top of [`sluice_proto::segment`].
//!
//! Segment files are `<base_offset:020>.log`, of kind [`SEGMENT_KIND`] (magic `SLUICESG`) with the
//! base offset as the segment id. Each segment entry's payload is one log entry: its base offset
//! (u64), its event count (u32, little endian), then `count` canonically encoded events.
//!
//! The partition's manifest is a [`sluice_proto::segment::SlotFile`] of [`MANIFEST_KIND`] (two
//! 64-byte slots a page apart, written alternately, each checked by its own CRC32C, the higher
//! sequence number winning) whose body holds the base offsets of the first and last segments and
//! the durable end of the last segment as an offset and a byte position.

#[cfg(test)]
use sluice_proto::segment::SlotFile;
use sluice_proto::segment::{SegmentKind, SlotKind};
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

/// The kind of a partition manifest: a [`SlotFile`] of 64-byte slots.
pub(crate) const MANIFEST_KIND: SlotKind = SlotKind {
    magic: *b"SLUICEMF",
    version: 1,
    slot_len: 64,
};

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

/// Bytes of a manifest slot's body.
pub(crate) const MANIFEST_BODY_LEN: usize = 32;

/// A manifest slot's body: the first and last segments' base offsets, the durable offset and
/// byte position, little endian.
pub(crate) fn encode_manifest(state: &ManifestState) -> [u8; MANIFEST_BODY_LEN] {
    let mut out = [0u8; MANIFEST_BODY_LEN];
    out[..8].copy_from_slice(&state.first.0.to_le_bytes());
    out[8..16].copy_from_slice(&state.last.0.to_le_bytes());
    out[16..24].copy_from_slice(&state.durable_offset.0.to_le_bytes());
    out[24..32].copy_from_slice(&state.durable_pos.to_le_bytes());
    out
}

/// The state in a manifest slot's body (which the slot file checked); `None` when it is short.
pub(crate) fn decode_manifest(body: &[u8]) -> Option<ManifestState> {
    let u64_at = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(body.get(i..i + 8)?.try_into().ok()?))
    };
    Some(ManifestState {
        first: Offset(u64_at(0)?),
        last: Offset(u64_at(8)?),
        durable_offset: Offset(u64_at(16)?),
        durable_pos: u64_at(24)?,
    })
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
    fn manifest_slot_layout_is_frozen_and_any_flip_is_refused() {
        // Checks that a manifest written through the slot file has the layout earlier releases
        // wrote (magic, version, zero, sequence number, the state, zeros, CRC32C: golden bytes),
        // that it reads back, and that flipping any bit of the slot makes it not check.
        let state = ManifestState {
            first: Offset(0),
            last: Offset(1000),
            durable_offset: Offset(1234),
            durable_pos: 5678,
        };
        let disk = sluice_proto::testing::CrashDisk::new();
        let path = std::path::Path::new("/m/p.manifest");
        sluice_proto::env::Disk::create_dir_all(&disk, std::path::Path::new("/m"))
            .unwrap_or_else(|e| panic!("{e}"));
        SlotFile::create(&disk, path, MANIFEST_KIND, &encode_manifest(&state))
            .unwrap_or_else(|e| panic!("{e}"));
        let bytes = disk
            .files()
            .remove(path)
            .unwrap_or_else(|| panic!("no manifest"));
        let mut golden = Vec::new();
        golden.extend_from_slice(b"SLUICEMF");
        golden.extend_from_slice(&1u32.to_le_bytes());
        golden.extend_from_slice(&0u32.to_le_bytes());
        golden.extend_from_slice(&1u64.to_le_bytes());
        for word in [0u64, 1000, 1234, 5678] {
            golden.extend_from_slice(&word.to_le_bytes());
        }
        golden.extend_from_slice(&[0u8; 4]);
        let crc = crc32c::crc32c(&golden);
        golden.extend_from_slice(&crc.to_le_bytes());
        // Sequence number 1 goes to the second slot.
        assert_eq!(&bytes[4096..4096 + 64], &golden[..]);
        let read = |disk: &sluice_proto::testing::CrashDisk| {
            SlotFile::open(disk, path, MANIFEST_KIND)
                .ok()
                .flatten()
                .and_then(|(_, body)| decode_manifest(&body))
        };
        assert_eq!(read(&disk), Some(state));
        for bit in 0..64 * 8u64 {
            let flip = || {
                disk.flip_bit(path, 4096 + bit / 8, (bit % 8) as u8)
                    .unwrap_or_else(|e| panic!("{e}"))
            };
            flip();
            assert_eq!(read(&disk), None, "flip of bit {bit}");
            flip();
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
