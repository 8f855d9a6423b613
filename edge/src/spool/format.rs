//! On-disk layout of the spool. Pure: bytes in, values out; no IO.
//!
//! The spool is a directory of segment files `<id:020>.spool`. Since format 2 they are segments
//! of the shared segment layer (`sluice_proto::segment`: its 64-byte header with magic
//! `SLUICESP`, caller version [`SEGMENT_KIND`]`.version`, the segment id and the preallocated
//! length; entries framed with a 12-byte header whose CRC binds the entry to its segment and
//! position; preallocation to `segment_bytes_max`; its recovery classification). Segments of
//! format 1, written by earlier releases, are read by `v1.rs` and never written.
//!
//! An entry's payload is one [`Entry`]: a kind byte followed by the codec encoding of the
//! entry's fields (`proto::codec`, so this crate never calls bincode itself).
//!
//! Times in entries are on the *spool clock* (milliseconds, see `core.rs`), not the wall clock:
//! `Entry::Record::spooled_at` and `Entry::Clock::spool_ms`. Spools written before the spool
//! clock existed stamped records with the wall clock; the spool clock starts from the wall clock,
//! so those stamps read as spool-clock times.

use sluice_proto::segment::{self, SegmentKind};
use sluice_proto::{codec, BootEpoch, DecodeError, Record, SensorId, UnixMillis};

/// First bytes of every segment file, of either format.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"SLUICESP";
/// What a format-2 spool segment holds, for the segment layer.
pub(crate) const SEGMENT_KIND: SegmentKind = SegmentKind {
    magic: SEGMENT_MAGIC,
    version: 2,
};
/// Bytes before the first entry of a format-2 segment.
pub(crate) const SEGMENT_HEADER_LEN: u64 = segment::SEGMENT_HEADER_LEN;
/// Bytes of a format-2 entry header.
pub(crate) const FRAME_HEADER_LEN: u64 = segment::ENTRY_HEADER_LEN;
/// The largest entry body a spool reads (the codec's decode bound).
pub(crate) const BODY_BYTES_MAX: u32 = codec::DECODE_BYTES_MAX as u32;

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

/// Appends the format-2 entry of `body` that will sit at byte `pos` of segment `segment` to
/// `out`; returns its length (header and body).
pub(crate) fn encode_frame(segment: u64, pos: u64, body: &[u8], out: &mut Vec<u8>) -> u32 {
    segment::encode_entry(segment, pos, body, out);
    u32::try_from(segment::entry_len(body.len())).unwrap_or(u32::MAX)
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
        // any single bit of a frame is caught by the segment layer's entry checks.
        let path = std::path::Path::new("/d/x");
        for entry in entries() {
            let body = entry.encode();
            assert_eq!(Entry::decode(&body).unwrap(), entry);
            let mut frame = vec![0u8; 64];
            let len = encode_frame(9, 64, &body, &mut frame);
            assert_eq!(len as usize + 64, frame.len());
            let file = |bytes: &[u8]| {
                let disk = sluice_proto::testing::CrashDisk::new();
                use sluice_proto::env::Disk;
                disk.create_dir_all(std::path::Path::new("/d")).unwrap();
                let file = disk.open(path, true).unwrap();
                file.write_at(0, bytes).unwrap();
                file
            };
            let end = frame.len() as u64;
            let read = |bytes: &[u8]| {
                segment::read_entry(&*file(bytes), path, 9, 64, end, BODY_BYTES_MAX)
                    .map(|(body, _)| body)
            };
            assert_eq!(read(&frame), Ok(body.clone()));
            for bit in 64 * 8..frame.len() * 8 {
                let mut flipped = frame.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert!(read(&flipped).is_err(), "flip of bit {bit} not detected");
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
    fn segment_names() {
        // Checks segment file names round-trip and other names are refused.
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.spool"), None);
        assert_eq!(parse_segment_name("00000000000000000042.log"), None);
    }
}
