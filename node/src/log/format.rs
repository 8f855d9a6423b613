//! On-disk layout of partition log segments.
//!
//! A segment file `<base_offset:020>.log` starts with a 32-byte header (magic, format version,
//! base offset, CRC32C of those) and is preallocated to `segment_bytes_max` bytes of zeros.
//! Entries follow back to back. An entry is a 20-byte header — body length (u32), CRC32C of the
//! rest of the header and the body (u32), base offset (u64), event count (u32), little endian —
//! and a body of `count` canonically encoded events. A zero body length marks the end of the data.

use sluice_proto::Offset;

/// First bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"SLUICESG";
/// Segment layout version.
pub(crate) const SEGMENT_FORMAT_VERSION: u32 = 1;
/// Bytes before the first entry.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 32;
/// Bytes of an entry header.
pub(crate) const ENTRY_HEADER_LEN: usize = 20;

/// The header of a new segment.
pub(crate) fn segment_header(base: Offset) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut out = [0u8; SEGMENT_HEADER_LEN as usize];
    out[..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    out[16..24].copy_from_slice(&base.0.to_le_bytes());
    let crc = crc32c::crc32c(&out[..24]);
    out[24..28].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a segment header and returns its base offset.
pub(crate) fn parse_segment_header(
    bytes: &[u8; SEGMENT_HEADER_LEN as usize],
) -> Result<Offset, String> {
    if bytes[..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".into());
    }
    let crc = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    if crc != crc32c::crc32c(&bytes[..24]) {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != SEGMENT_FORMAT_VERSION {
        return Err(format!("unsupported segment format version {version}"));
    }
    let mut base = [0u8; 8];
    base.copy_from_slice(&bytes[16..24]);
    Ok(Offset(u64::from_le_bytes(base)))
}

/// Appends one entry (header and body) to `out`.
pub(crate) fn encode_entry(base: Offset, count: u32, body: &[u8], out: &mut Vec<u8>) {
    let body_len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    assert!(
        body_len < u32::MAX && body_len > 0,
        "entry body of {} bytes",
        body.len()
    );
    let start = out.len();
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&base.0.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A parsed entry header, not yet checked against its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryHeader {
    pub(crate) body_len: u32,
    pub(crate) crc: u32,
    pub(crate) base: Offset,
    pub(crate) count: u32,
}

impl EntryHeader {
    /// Parses the header; `None` marks the end of the data (a zero body length).
    pub(crate) fn parse(bytes: &[u8; ENTRY_HEADER_LEN]) -> Option<EntryHeader> {
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let body_len = u32_at(0);
        if body_len == 0 {
            return None;
        }
        let mut base = [0u8; 8];
        base.copy_from_slice(&bytes[8..16]);
        Some(EntryHeader {
            body_len,
            crc: u32_at(4),
            base: Offset(u64::from_le_bytes(base)),
            count: u32_at(16),
        })
    }

    /// True when the header and body match the checksum.
    pub(crate) fn checks(&self, header: &[u8; ENTRY_HEADER_LEN], body: &[u8]) -> bool {
        let mut crc = crc32c::crc32c(&header[8..]);
        crc = crc32c::crc32c_append(crc, body);
        crc == self.crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips_and_detects_flips() {
        // Checks that an encoded entry parses back and that flipping any single bit of it is
        // caught by the header checks or the checksum.
        let mut out = Vec::new();
        encode_entry(Offset(42), 3, b"hello world", &mut out);
        let header: [u8; ENTRY_HEADER_LEN] = out[..ENTRY_HEADER_LEN].try_into().unwrap();
        let parsed = EntryHeader::parse(&header).unwrap();
        assert_eq!(
            (parsed.base, parsed.count, parsed.body_len),
            (Offset(42), 3, 11)
        );
        assert!(parsed.checks(&header, &out[ENTRY_HEADER_LEN..]));
        for bit in 0..out.len() * 8 {
            let mut flipped = out.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let header: [u8; ENTRY_HEADER_LEN] = flipped[..ENTRY_HEADER_LEN].try_into().unwrap();
            let ok = match EntryHeader::parse(&header) {
                None => false,
                Some(h) => h.body_len == 11 && h.checks(&header, &flipped[ENTRY_HEADER_LEN..]),
            };
            assert!(!ok, "flip of bit {bit} not detected");
        }
    }

    #[test]
    fn segment_header_round_trips() {
        // Checks the segment header format and that corruption of it is refused.
        let h = segment_header(Offset(7));
        assert_eq!(parse_segment_header(&h), Ok(Offset(7)));
        let mut bad = h;
        bad[17] ^= 1;
        assert!(parse_segment_header(&bad).is_err());
    }
}
