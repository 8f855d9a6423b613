//! Frames: a fixed 12-byte header (magic, protocol version, kind, body length, all big endian)
//! followed by a codec body. The header is checked, body length first against the caller's bound,
//! before a single byte of the body is allocated.

use crate::codec::{self, DecodeError, EncodeError};
use crate::msg::Message;
use crate::PROTOCOL_VERSION;

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"SLCE";
/// Length of the fixed header.
pub const HEADER_LEN: usize = 12;

/// Message kinds. Append-only: a released number never changes meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u16)]
pub enum Kind {
    /// [`crate::msg::ProduceRequest`]
    ProduceRequest = 1,
    /// [`crate::msg::ProduceResponse`]
    ProduceResponse = 2,
    /// [`crate::msg::FetchRequest`]
    FetchRequest = 3,
    /// [`crate::msg::FetchResponse`]
    FetchResponse = 4,
    /// [`crate::msg::MetadataRequest`]
    MetadataRequest = 5,
    /// [`crate::msg::MetadataResponse`]
    MetadataResponse = 6,
    /// [`crate::msg::ErrorResponse`]
    Error = 7,
    /// [`crate::msg::PeerCall`] on the control lane (peer ALPN only).
    PeerControlCall = 8,
    /// [`crate::msg::PeerCall`] on the bulk lane (peer ALPN only).
    PeerBulkCall = 9,
    /// [`crate::msg::PeerReply`] (peer ALPN only).
    PeerReply = 10,
    /// [`crate::msg::AdminRequest`]
    AdminRequest = 11,
    /// [`crate::msg::AdminResponse`]
    AdminResponse = 12,
}

impl Kind {
    /// Every kind, in number order.
    pub const ALL: [Kind; 12] = [
        Kind::ProduceRequest,
        Kind::ProduceResponse,
        Kind::FetchRequest,
        Kind::FetchResponse,
        Kind::MetadataRequest,
        Kind::MetadataResponse,
        Kind::Error,
        Kind::PeerControlCall,
        Kind::PeerBulkCall,
        Kind::PeerReply,
        Kind::AdminRequest,
        Kind::AdminResponse,
    ];

    /// The kind with this number, if any.
    pub fn from_u16(n: u16) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u16 == n)
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not a Sluice frame.
    #[error("bad magic {found:02x?}")]
    BadMagic {
        /// The first four bytes found.
        found: [u8; 4],
    },
    /// A protocol version this build does not speak.
    #[error("unsupported protocol version {found} (this build speaks {supported})")]
    UnsupportedVersion {
        /// The version in the header.
        found: u16,
        /// The version spoken here.
        supported: u16,
    },
    /// A kind number nobody assigned.
    #[error("unknown frame kind {kind}")]
    UnknownKind {
        /// The number in the header.
        kind: u16,
    },
    /// The body is longer than allowed.
    #[error("frame body of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced body length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The input ended inside the frame.
    #[error("truncated frame: needed {needed} bytes, got {got}")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// Bytes follow the frame where none should.
    #[error("{n} trailing bytes after the frame")]
    TrailingBytes {
        /// How many.
        n: usize,
    },
    /// The body does not decode as its kind.
    #[error("{kind:?} body: {error}")]
    Body {
        /// The frame's kind.
        kind: Kind,
        /// What was wrong.
        error: DecodeError,
    },
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message kind.
    pub kind: Kind,
    /// The body length in bytes.
    pub body_len: u32,
}

impl FrameHeader {
    /// Parses and checks a header: magic, version, kind, and `body_len <= body_bytes_max`.
    pub fn parse(bytes: &[u8; HEADER_LEN], body_bytes_max: u32) -> Result<FrameHeader, FrameError> {
        let [m0, m1, m2, m3, v0, v1, k0, k1, l0, l1, l2, l3] = *bytes;
        let found = [m0, m1, m2, m3];
        if found != MAGIC {
            return Err(FrameError::BadMagic { found });
        }
        let version = u16::from_be_bytes([v0, v1]);
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion {
                found: version,
                supported: PROTOCOL_VERSION,
            });
        }
        let kind_n = u16::from_be_bytes([k0, k1]);
        let kind = Kind::from_u16(kind_n).ok_or(FrameError::UnknownKind { kind: kind_n })?;
        let body_len = u32::from_be_bytes([l0, l1, l2, l3]);
        if body_len > body_bytes_max {
            return Err(FrameError::TooLarge {
                len: body_len,
                max: body_bytes_max,
            });
        }
        Ok(FrameHeader { kind, body_len })
    }

    /// The header's bytes.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        out[6..8].copy_from_slice(&(self.kind as u16).to_be_bytes());
        out[8..12].copy_from_slice(&self.body_len.to_be_bytes());
        out
    }
}

/// Encodes a message as one whole frame.
pub fn encode(msg: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0u8; HEADER_LEN];
    match msg {
        Message::ProduceRequest(m) => codec::encode_into(m, &mut out),
        Message::ProduceResponse(m) => codec::encode_into(m, &mut out),
        Message::FetchRequest(m) => codec::encode_into(m, &mut out),
        Message::FetchResponse(m) => codec::encode_into(m, &mut out),
        Message::MetadataRequest(m) => codec::encode_into(m, &mut out),
        Message::MetadataResponse(m) => codec::encode_into(m, &mut out),
        Message::Error(m) => codec::encode_into(m, &mut out),
        Message::PeerControlCall(m) | Message::PeerBulkCall(m) => codec::encode_into(m, &mut out),
        Message::PeerReply(m) => codec::encode_into(m, &mut out),
        Message::AdminRequest(m) => codec::encode_into(m, &mut out),
        Message::AdminResponse(m) => codec::encode_into(m, &mut out),
    }?;
    let body_len =
        u32::try_from(out.len() - HEADER_LEN).map_err(|_| EncodeError::too_large(out.len()))?;
    out[..HEADER_LEN].copy_from_slice(
        &FrameHeader {
            kind: msg.kind(),
            body_len,
        }
        .to_bytes(),
    );
    Ok(out)
}

/// Decodes the body of a frame of `kind`.
pub fn decode_body(kind: Kind, body: &[u8]) -> Result<Message, FrameError> {
    let wrap = |error| FrameError::Body { kind, error };
    Ok(match kind {
        Kind::ProduceRequest => Message::ProduceRequest(codec::decode(body).map_err(wrap)?),
        Kind::ProduceResponse => Message::ProduceResponse(codec::decode(body).map_err(wrap)?),
        Kind::FetchRequest => Message::FetchRequest(codec::decode(body).map_err(wrap)?),
        Kind::FetchResponse => Message::FetchResponse(codec::decode(body).map_err(wrap)?),
        Kind::MetadataRequest => Message::MetadataRequest(codec::decode(body).map_err(wrap)?),
        Kind::MetadataResponse => Message::MetadataResponse(codec::decode(body).map_err(wrap)?),
        Kind::Error => Message::Error(codec::decode(body).map_err(wrap)?),
        Kind::PeerControlCall => Message::PeerControlCall(codec::decode(body).map_err(wrap)?),
        Kind::PeerBulkCall => Message::PeerBulkCall(codec::decode(body).map_err(wrap)?),
        Kind::PeerReply => Message::PeerReply(codec::decode(body).map_err(wrap)?),
        Kind::AdminRequest => Message::AdminRequest(codec::decode(body).map_err(wrap)?),
        Kind::AdminResponse => Message::AdminResponse(codec::decode(body).map_err(wrap)?),
    })
}

/// Decodes exactly one frame occupying all of `bytes`.
pub fn decode(bytes: &[u8], body_bytes_max: u32) -> Result<Message, FrameError> {
    let Some(header) = bytes.first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::Truncated {
            needed: HEADER_LEN,
            got: bytes.len(),
        });
    };
    let header = FrameHeader::parse(header, body_bytes_max)?;
    // `body_len` is at most `body_bytes_max`, but a u32 plus the header can still exceed a
    // 32-bit usize (a Pi): such a frame cannot be held in memory at all.
    let Some(needed) = usize::try_from(header.body_len)
        .ok()
        .and_then(|len| len.checked_add(HEADER_LEN))
    else {
        return Err(FrameError::TooLarge {
            len: header.body_len,
            max: body_bytes_max,
        });
    };
    if bytes.len() < needed {
        return Err(FrameError::Truncated {
            needed,
            got: bytes.len(),
        });
    }
    if bytes.len() > needed {
        return Err(FrameError::TrailingBytes {
            n: bytes.len() - needed,
        });
    }
    decode_body(header.kind, &bytes[HEADER_LEN..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_body_length_is_a_typed_error_not_an_overflow() {
        // Checks that a header announcing a u32::MAX body under a u32::MAX bound gives a typed
        // error (Truncated on 64-bit, TooLarge where header + body overflow usize), never an
        // overflowing length.
        let header = FrameHeader {
            kind: Kind::ProduceRequest,
            body_len: u32::MAX,
        }
        .to_bytes();
        match decode(&header, u32::MAX) {
            Err(FrameError::Truncated { needed, got }) => {
                assert_eq!(needed as u64, u64::from(u32::MAX) + HEADER_LEN as u64);
                assert_eq!(got, HEADER_LEN);
            }
            Err(FrameError::TooLarge { len, .. }) => assert_eq!(len, u32::MAX),
            other => panic!("unexpected {other:?}"),
        }
    }
}
