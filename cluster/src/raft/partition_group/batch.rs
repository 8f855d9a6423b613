//! The data of a partition group's normal entry, and the state machine's answer to it.
//!
//! A batch is one contiguous range of offsets: `[version = 1][base: u64 LE][count: u32 LE]`
//! then the `count` events, each canonically encoded, back to back (the node's proposer puts
//! everything one group commit gathered into one batch, so one entry and one fsync per replica
//! carry many produce requests). The group never parses the events; it checks the header and
//! that the range continues the partition. Frozen by `batch_encoding_is_frozen`.

use sluice_proto::Offset;

/// The batch format version.
pub const BATCH_VERSION: u8 = 1;
/// Bytes before the events.
pub const BATCH_HEADER_LEN: usize = 13;

/// A batch as read from an entry: its range and its events' bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRef<'a> {
    /// The offset of the first event.
    pub base: Offset,
    /// How many events.
    pub count: u32,
    /// The events, canonically encoded, back to back.
    pub events: &'a [u8],
}

impl BatchRef<'_> {
    /// One past the last offset (checked by [`decode_batch`] to exist).
    pub fn end(&self) -> Offset {
        Offset(self.base.0 + u64::from(self.count))
    }
}

/// Why entry bytes are no batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, bincode::Encode, bincode::Decode)]
pub enum BatchError {
    /// Shorter than the header, or without events.
    #[error("batch of {len} bytes has no events")]
    Short {
        /// The entry's length.
        len: u64,
    },
    /// A version this build does not know.
    #[error("batch version {0} is unknown")]
    Version(u8),
    /// Zero events.
    #[error("batch with zero events")]
    Empty,
    /// The range runs past the largest offset.
    #[error("batch at offset {base} with {count} events runs past the largest offset")]
    Overflow {
        /// The base offset.
        base: u64,
        /// The event count.
        count: u32,
    },
}

/// Encodes a batch of `count` events from `base`.
pub fn encode_batch(base: Offset, count: u32, events: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BATCH_HEADER_LEN + events.len());
    out.push(BATCH_VERSION);
    out.extend_from_slice(&base.0.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(events);
    out
}

/// Decodes entry bytes as a batch.
pub fn decode_batch(bytes: &[u8]) -> Result<BatchRef<'_>, BatchError> {
    if bytes.len() <= BATCH_HEADER_LEN {
        return Err(BatchError::Short {
            len: bytes.len() as u64,
        });
    }
    if bytes[0] != BATCH_VERSION {
        return Err(BatchError::Version(bytes[0]));
    }
    let mut base = [0u8; 8];
    base.copy_from_slice(&bytes[1..9]);
    let mut count = [0u8; 4];
    count.copy_from_slice(&bytes[9..13]);
    let (base, count) = (u64::from_le_bytes(base), u32::from_le_bytes(count));
    if count == 0 {
        return Err(BatchError::Empty);
    }
    if base.checked_add(u64::from(count)).is_none() {
        return Err(BatchError::Overflow { base, count });
    }
    Ok(BatchRef {
        base: Offset(base),
        count,
        events: &bytes[BATCH_HEADER_LEN..],
    })
}

/// What the state machine answered for one normal entry (every replica answers the same).
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum BatchOutcome {
    /// The batch is part of the partition: offsets `base..base + count`.
    Appended {
        /// The first offset.
        base: u64,
        /// How many.
        count: u32,
    },
    /// The entry is void: it holds no offsets, and readers skip it. A batch whose base is not
    /// the partition's next offset (a proposer that did not start from the whole committed
    /// state) or bytes that are no batch.
    Void(VoidReason),
}

/// Why an entry is void.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum VoidReason {
    /// The batch starts elsewhere than the partition's next offset.
    NotNext {
        /// The partition's next offset when the entry applied.
        expected: u64,
        /// The batch's base.
        got: u64,
    },
    /// The bytes are no batch.
    Undecodable(BatchError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::codec;

    #[test]
    fn batch_encoding_is_frozen() {
        // Checks the exact bytes of a batch and of the state machine's answers, which replicas
        // of different builds exchange and keep in their logs.
        let bytes = encode_batch(Offset(0x0102), 2, b"ab");
        assert_eq!(bytes, [1, 2, 1, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, b'a', b'b']);
        let batch = decode_batch(&bytes).unwrap();
        assert_eq!(
            (batch.base, batch.count, batch.events, batch.end()),
            (Offset(0x0102), 2, &b"ab"[..], Offset(0x0104))
        );
        let appended = codec::encode(&BatchOutcome::Appended { base: 5, count: 3 }).unwrap();
        assert_eq!(appended, [0, 5, 3]);
        let void = codec::encode(&BatchOutcome::Void(VoidReason::NotNext {
            expected: 7,
            got: 9,
        }))
        .unwrap();
        assert_eq!(void, [1, 0, 7, 9]);
        let undecodable = codec::encode(&BatchOutcome::Void(VoidReason::Undecodable(
            BatchError::Empty,
        )))
        .unwrap();
        assert_eq!(undecodable, [1, 1, 2]);
    }

    #[test]
    fn bytes_that_are_no_batch_are_typed_errors() {
        // Checks every way entry bytes can fail to be a batch: too short (no events), another
        // version, zero events, a range past the largest offset.
        assert_eq!(
            decode_batch(&encode_batch(Offset(1), 1, b"")),
            Err(BatchError::Short { len: 13 })
        );
        let mut other = encode_batch(Offset(1), 1, b"x");
        other[0] = 2;
        assert_eq!(decode_batch(&other), Err(BatchError::Version(2)));
        assert_eq!(
            decode_batch(&encode_batch(Offset(1), 0, b"x")),
            Err(BatchError::Empty)
        );
        assert_eq!(
            decode_batch(&encode_batch(Offset(u64::MAX - 1), 2, b"xy")),
            Err(BatchError::Overflow {
                base: u64::MAX - 1,
                count: 2
            })
        );
        assert!(decode_batch(&encode_batch(Offset(u64::MAX - 2), 2, b"xy")).is_ok());
    }
}
