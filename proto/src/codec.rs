//! The codec: the only place bincode is called. One pinned configuration (varint integers, little
//! endian, a decode limit), strict decoding (no trailing bytes) and canonical decoding: a body
//! that would not re-encode to the very same bytes is refused, so anything hashed or signed has
//! exactly one encoding.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use bincode::{Decode, Encode};

/// The most bytes one decode may claim; bounds every allocation a decoder makes.
pub const DECODE_BYTES_MAX: usize = 16 << 20;

type Config = Configuration<LittleEndian, Varint, Limit<DECODE_BYTES_MAX>>;

const fn config() -> Config {
    bincode::config::standard().with_limit::<DECODE_BYTES_MAX>()
}

/// A value could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("encode failed: {0}")]
pub struct EncodeError(String);

impl EncodeError {
    pub(crate) fn too_large(len: usize) -> Self {
        EncodeError(format!("encoding of {len} bytes does not fit a frame"))
    }
}

/// Bytes could not be decoded into the expected value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a valid encoding (truncated, bad tag, bad UTF-8, over the limit, …).
    #[error("malformed body: {0}")]
    Malformed(String),
    /// The value ended before the input did.
    #[error("{n} trailing bytes after the value")]
    TrailingBytes {
        /// How many bytes were left over.
        n: usize,
    },
    /// The bytes decode, but are not the canonical encoding of what they decode to.
    #[error("non-canonical encoding")]
    NonCanonical,
}

/// Encodes a value.
pub fn encode<T: Encode>(value: &T) -> Result<Vec<u8>, EncodeError> {
    bincode::encode_to_vec(value, config()).map_err(|e| EncodeError(e.to_string()))
}

/// Encodes a value at the end of `out`, returning how many bytes were written.
pub fn encode_into<T: Encode>(value: &T, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    bincode::encode_into_std_write(value, out, config()).map_err(|e| EncodeError(e.to_string()))
}

/// Decodes exactly one canonical value from all of `bytes`.
pub fn decode<T: Decode<()> + Encode>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, used): (T, usize) = bincode::decode_from_slice(bytes, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError::TrailingBytes {
            n: bytes.len().saturating_sub(used),
        });
    }
    let again = encode(&value).map_err(|_| DecodeError::NonCanonical)?;
    if again != bytes {
        return Err(DecodeError::NonCanonical);
    }
    Ok(value)
}

/// Decodes one canonical value from the start of `bytes`, returning it and how many bytes it
/// used; for sequences of values stored back to back.
pub fn decode_prefix<T: Decode<()> + Encode>(bytes: &[u8]) -> Result<(T, usize), DecodeError> {
    let (value, used): (T, usize) = bincode::decode_from_slice(bytes, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let again = encode(&value).map_err(|_| DecodeError::NonCanonical)?;
    if again != bytes[..used] {
        return Err(DecodeError::NonCanonical);
    }
    Ok((value, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_minimal_varint_is_refused() {
        // Checks that a value encoded with a longer varint than needed is refused as
        // non-canonical instead of being accepted with two encodings.
        assert_eq!(encode(&5u64).unwrap(), vec![5]);
        // 251 announces a u16 follows; 5 fits in one byte, so this is not canonical.
        assert_eq!(decode::<u64>(&[251, 5, 0]), Err(DecodeError::NonCanonical));
        assert_eq!(
            decode::<u64>(&[5, 0]),
            Err(DecodeError::TrailingBytes { n: 1 })
        );
        assert!(matches!(decode::<u64>(&[]), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn huge_claimed_length_does_not_allocate() {
        // Checks that a body claiming a 2^60-byte vector fails on the decode limit instead of
        // trying to allocate it.
        let mut bytes = vec![255u8];
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(matches!(
            decode::<Vec<u8>>(&bytes),
            Err(DecodeError::Malformed(_))
        ));
    }
}
