//! On-disk layout of the spool. Pure: bytes in, values out; no IO.
//!
//! The spool is a directory of segment files `<id:020>.spool`. A segment starts with a 32-byte
//! header (magic `SLUICESP`, format version, segment id, CRC32C of those) and is preallocated to
//! `segment_bytes_max` bytes of zeros. Frames follow back to back: an 8-byte frame header — body
//! length (u32) and CRC32C of the length and the body (u32), little endian — then the body. A
//! zero body length marks the end of the data.
//!
//! A body is one [`Entry`]: a kind byte followed by the codec encoding of the entry's fields
//! (`proto::codec`, so this crate never calls bincode itself).
//!
//! Times in entries are on the *spool clock* (milliseconds, see `core.rs`), not the wall clock:
//! `Entry::Record::spooled_at` and `Entry::Clock::spool_ms`. Spools written before the spool
//! clock existed stamped records with the wall clock; the spool clock starts from the wall clock,
//! so those stamps read as spool-clock times.

use sluice_proto::{codec, BootEpoch, DecodeError, Record, SensorId, UnixMillis};

/// First bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"SLUICESP";
/// Segment layout version.
pub(crate) const SEGMENT_FORMAT_VERSION: u32 = 1;
/// Bytes before the first frame of a segment.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 32;
/// Bytes of a frame header.
pub(crate) const FRAME_HEADER_LEN: usize = 8;

const KIND_RECORD: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_RESERVE: u8 = 3;
const KIND_CHECKPOINT: u8 = 4;
const KIND_SENT: u8 = 5;
const KIND_OPEN: u8 = 6;
const KIND_CLOCK: u8 = 7;

/// The name of segment `id`.
pub(crate) fn segment_name(id: u64) -> String {
    format!("{id:020}.spool")
}

/// The id of a segment file name, or `None` for any other file.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".spool")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The header of segment `id`.
pub(crate) fn segment_header(id: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut out = [0u8; SEGMENT_HEADER_LEN as usize];
    out[..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    out[16..24].copy_from_slice(&id.to_le_bytes());
    let crc = crc32c::crc32c(&out[..24]);
    out[24..28].copy_from_slice(&crc.to_le_bytes());
    out
}

fn u32_at(bytes: &[u8], i: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[i..i + 4]);
    u32::from_le_bytes(word)
}

/// Checks a segment header and returns the segment id it names.
pub(crate) fn parse_segment_header(
    bytes: &[u8; SEGMENT_HEADER_LEN as usize],
) -> Result<u64, String> {
    if bytes[..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".into());
    }
    if u32_at(bytes, 24) != crc32c::crc32c(&bytes[..24]) {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32_at(bytes, 8);
    if version != SEGMENT_FORMAT_VERSION {
        return Err(format!("unsupported segment format version {version}"));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[16..24]);
    Ok(u64::from_le_bytes(id))
}

/// Appends one frame (header and body) to `out`; returns its length.
pub(crate) fn encode_frame(body: &[u8], out: &mut Vec<u8>) -> u32 {
    let body_len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    assert!(
        body_len > 0 && body_len < u32::MAX,
        "frame body of {} bytes",
        body.len()
    );
    let len_bytes = body_len.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), body);
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
    body_len + FRAME_HEADER_LEN as u32
}

/// A parsed frame header, not yet checked against its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub(crate) body_len: u32,
    pub(crate) crc: u32,
}

impl FrameHeader {
    /// Parses a frame header; `None` marks the end of the data (a zero body length).
    pub(crate) fn parse(bytes: &[u8; FRAME_HEADER_LEN]) -> Option<FrameHeader> {
        let body_len = u32_at(bytes, 0);
        (body_len != 0).then(|| FrameHeader {
            body_len,
            crc: u32_at(bytes, 4),
        })
    }

    /// True when `body` is the body this header announced.
    pub(crate) fn checks(&self, body: &[u8]) -> bool {
        let crc = crc32c::crc32c_append(crc32c::crc32c(&self.body_len.to_le_bytes()), body);
        body.len() == self.body_len as usize && crc == self.crc
    }
}

/// The durable state of one stream `(sensor, epoch)` as a checkpoint records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamMark {
    pub(crate) sensor: SensorId,
    pub(crate) epoch: BootEpoch,
    /// Every seq below this one was delivered.
    pub(crate) acked_end: u64,
    /// Seqs below this one may have been issued.
    pub(crate) reserved_end: u64,
    /// Records below this seq may have been handed to the uplink.
    pub(crate) sent_end: u64,
}

/// One spool entry: the body of one frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Entry {
    /// A reading or a drop declaration (`Payload::Dropped`), with the spool clock at writing.
    Record {
        spooled_at: UnixMillis,
        record: Record,
    },
    /// Every seq of the stream below `seq_end` was delivered.
    Ack {
        sensor: SensorId,
        epoch: BootEpoch,
        seq_end: u64,
    },
    /// Seqs of the stream below `seq_end` may be issued from now on.
    Reserve {
        sensor: SensorId,
        epoch: BootEpoch,
        seq_end: u64,
    },
    /// Records of the stream below `seq_end` may be handed to the uplink from now on.
    Sent {
        sensor: SensorId,
        epoch: BootEpoch,
        seq_end: u64,
    },
    /// The state of every stream, and the boot epoch current when it was written. First entry
    /// of every segment.
    Checkpoint {
        epoch: BootEpoch,
        streams: Vec<StreamMark>,
    },
    /// The spool was opened in this boot epoch (synced before its first seq is issued).
    Open { epoch: BootEpoch },
    /// The spool clock read `spool_ms` when the wall clock read `wall` (written at syncs, so the
    /// next open knows how old every record is and when the agent stopped).
    Clock { spool_ms: u64, wall: UnixMillis },
}

type MarkTuple = (SensorId, BootEpoch, u64, u64, u64);

impl Entry {
    /// The frame body of this entry.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec fails only on types bincode cannot represent; ours all can.
        let failed = |e| panic!("spool entry does not encode: {e}");
        match self {
            Entry::Record { spooled_at, record } => {
                out.push(KIND_RECORD);
                codec::encode_into(&(*spooled_at, record), &mut out).unwrap_or_else(failed);
            }
            Entry::Ack {
                sensor,
                epoch,
                seq_end,
            }
            | Entry::Reserve {
                sensor,
                epoch,
                seq_end,
            }
            | Entry::Sent {
                sensor,
                epoch,
                seq_end,
            } => {
                out.push(match self {
                    Entry::Ack { .. } => KIND_ACK,
                    Entry::Reserve { .. } => KIND_RESERVE,
                    _ => KIND_SENT,
                });
                codec::encode_into(&(sensor, *epoch, *seq_end), &mut out).unwrap_or_else(failed);
            }
            Entry::Open { epoch } => {
                out.push(KIND_OPEN);
                codec::encode_into(epoch, &mut out).unwrap_or_else(failed);
            }
            Entry::Clock { spool_ms, wall } => {
                out.push(KIND_CLOCK);
                codec::encode_into(&(*spool_ms, *wall), &mut out).unwrap_or_else(failed);
            }
            Entry::Checkpoint { epoch, streams } => {
                out.push(KIND_CHECKPOINT);
                let marks: Vec<MarkTuple> = streams
                    .iter()
                    .map(|m| {
                        (
                            m.sensor.clone(),
                            m.epoch,
                            m.acked_end,
                            m.reserved_end,
                            m.sent_end,
                        )
                    })
                    .collect();
                codec::encode_into(&(*epoch, marks), &mut out).unwrap_or_else(failed);
            }
        }
        out
    }

    /// Decodes a frame body. Never panics, whatever the bytes.
    pub(crate) fn decode(body: &[u8]) -> Result<Entry, DecodeError> {
        let Some((kind, rest)) = body.split_first() else {
            return Err(DecodeError::Malformed("empty entry".into()));
        };
        match *kind {
            KIND_RECORD => {
                let (spooled_at, record): (UnixMillis, Record) = codec::decode(rest)?;
                Ok(Entry::Record { spooled_at, record })
            }
            KIND_ACK | KIND_RESERVE | KIND_SENT => {
                let (sensor, epoch, seq_end): (SensorId, BootEpoch, u64) = codec::decode(rest)?;
                Ok(match *kind {
                    KIND_ACK => Entry::Ack {
                        sensor,
                        epoch,
                        seq_end,
                    },
                    KIND_RESERVE => Entry::Reserve {
                        sensor,
                        epoch,
                        seq_end,
                    },
                    _ => Entry::Sent {
                        sensor,
                        epoch,
                        seq_end,
                    },
                })
            }
            KIND_CHECKPOINT => {
                let (epoch, marks): (BootEpoch, Vec<MarkTuple>) = codec::decode(rest)?;
                let streams = marks
                    .into_iter()
                    .map(
                        |(sensor, epoch, acked_end, reserved_end, sent_end)| StreamMark {
                            sensor,
                            epoch,
                            acked_end,
                            reserved_end,
                            sent_end,
                        },
                    )
                    .collect();
                Ok(Entry::Checkpoint { epoch, streams })
            }
            KIND_OPEN => Ok(Entry::Open {
                epoch: codec::decode(rest)?,
            }),
            KIND_CLOCK => {
                let (spool_ms, wall): (u64, UnixMillis) = codec::decode(rest)?;
                Ok(Entry::Clock { spool_ms, wall })
            }
            other => Err(DecodeError::Malformed(format!(
                "unknown entry kind {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::{DropReason, Payload, Reading};

    fn sensor() -> SensorId {
        SensorId::new("room/1").unwrap()
    }

    fn entries() -> Vec<Entry> {
        let record = |seq, payload| Record {
            sensor: sensor(),
            boot_epoch: BootEpoch(3),
            seq,
            device_time: UnixMillis(17),
            payload,
        };
        vec![
            Entry::Record {
                spooled_at: UnixMillis(1000),
                record: record(5, Payload::Reading(Reading::Temperature { celsius: 21.5 })),
            },
            Entry::Record {
                spooled_at: UnixMillis(1001),
                record: record(
                    6,
                    Payload::Dropped {
                        seq_last: 9,
                        reason: DropReason::SpoolFull,
                    },
                ),
            },
            Entry::Ack {
                sensor: sensor(),
                epoch: BootEpoch(3),
                seq_end: 7,
            },
            Entry::Reserve {
                sensor: sensor(),
                epoch: BootEpoch(3),
                seq_end: 256,
            },
            Entry::Sent {
                sensor: sensor(),
                epoch: BootEpoch(3),
                seq_end: 9,
            },
            Entry::Checkpoint {
                epoch: BootEpoch(4),
                streams: vec![StreamMark {
                    sensor: sensor(),
                    epoch: BootEpoch(3),
                    acked_end: 7,
                    reserved_end: 256,
                    sent_end: 9,
                }],
            },
            Entry::Open {
                epoch: BootEpoch(5),
            },
            Entry::Clock {
                spool_ms: 1_700_000_000_123,
                wall: UnixMillis(-5),
            },
        ]
    }

    #[test]
    fn entries_round_trip_and_frames_detect_flips() {
        // Checks that every entry kind decodes back to itself from its frame, and that flipping
        // any single bit of a frame is caught by the frame header or its checksum.
        for entry in entries() {
            let body = entry.encode();
            assert_eq!(Entry::decode(&body).unwrap(), entry);
            let mut frame = Vec::new();
            let len = encode_frame(&body, &mut frame);
            assert_eq!(len as usize, frame.len());
            for bit in 0..frame.len() * 8 {
                let mut flipped = frame.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                let header: [u8; FRAME_HEADER_LEN] =
                    flipped[..FRAME_HEADER_LEN].try_into().unwrap();
                let body = &flipped[FRAME_HEADER_LEN..];
                let ok = FrameHeader::parse(&header)
                    .is_some_and(|h| h.body_len as usize == body.len() && h.checks(body));
                assert!(!ok, "flip of bit {bit} not detected");
            }
        }
    }

    #[test]
    fn garbage_bodies_give_errors_not_panics() {
        // Checks that decoding truncated bodies, unknown kinds and random bytes returns an error
        // instead of panicking.
        for entry in entries() {
            let body = entry.encode();
            for cut in 0..body.len() {
                assert!(
                    Entry::decode(&body[..cut]).is_err(),
                    "prefix {cut} accepted"
                );
            }
        }
        assert!(Entry::decode(&[9, 1, 2, 3]).is_err());
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            let _ = Entry::decode(&bytes);
        }
    }

    #[test]
    fn segment_names_and_headers() {
        // Checks segment file names and headers round-trip and that a damaged header is refused.
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.spool"), None);
        assert_eq!(parse_segment_name("00000000000000000042.log"), None);
        let header = segment_header(42);
        assert_eq!(parse_segment_header(&header), Ok(42));
        let mut bad = header;
        bad[17] ^= 1;
        assert!(parse_segment_header(&bad).is_err());
    }
}
