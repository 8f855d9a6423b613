//! The reader of format-1 spool segments, written by releases before the spool moved onto the
//! shared segment layer (`sluice_proto::segment`). Kept only so that an upgraded agent delivers
//! what an older one spooled: nothing writes this format any more. After the upgrade such
//! segments are read, never appended to (the first open starts a new, format-2 segment), and they
//! go away as their records are delivered, evicted or copied forward like any other segment's.
//!
//! Layout: a 32-byte header (magic `SLUICESP`, format version 1 as a u32 at byte 8, the
//! preallocated length as a u32 at byte 12 — 0 in the oldest segments —, the segment id as a u64
//! at byte 16, CRC32C of bytes 0..24 at byte 24), then frames back to back: body length (u32) and
//! CRC32C of the length and the body (u32), little endian, then the body (an [`Entry`]). A zero
//! body length ends the data. Unlike format 2, a frame does not name its segment or position.
//!
//! Recovery applies the spool's rule (see `mod.rs`) with this framing: every frame that checks is
//! kept, a damaged region between frames is reported and what it held is declared, a frame that
//! does not check is a torn tail only at the end of the last segment with no valid frame after it.

use super::core::{Loc, Replay};
use super::format::{Entry, SEGMENT_MAGIC};
use super::{corrupt, first_nonzero, Damage, SpoolError, SpoolReport};
use sluice_proto::codec;
use sluice_proto::env::{DiskError, DiskFile};
use std::path::Path;

/// Format version 1, at byte 8 of the header.
pub(crate) const VERSION: u32 = 1;
/// Bytes before the first frame of a format-1 segment.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 32;
/// Bytes of a format-1 frame header.
pub(crate) const FRAME_HEADER_LEN: usize = 8;

fn u32_at(bytes: &[u8], i: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[i..i + 4]);
    u32::from_le_bytes(word)
}

/// True when the first bytes of a segment file are an intact format-1 header.
pub(crate) fn is_v1_header(bytes: &[u8]) -> bool {
    bytes.len() >= SEGMENT_HEADER_LEN as usize
        && bytes[..8] == SEGMENT_MAGIC
        && u32_at(bytes, 8) == VERSION
        && u32_at(bytes, 24) == crc32c::crc32c(&bytes[..24])
}

/// Checks a format-1 segment header and returns the segment id it names and its preallocated
/// length (`None`: not recorded).
pub(crate) fn parse_segment_header(
    bytes: &[u8; SEGMENT_HEADER_LEN as usize],
) -> Result<(u64, Option<u64>), String> {
    if bytes[..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".into());
    }
    if u32_at(bytes, 24) != crc32c::crc32c(&bytes[..24]) {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32_at(bytes, 8);
    if version != VERSION {
        return Err(format!("unsupported segment format version {version}"));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[16..24]);
    let preallocated = u32_at(bytes, 12);
    Ok((
        u64::from_le_bytes(id),
        (preallocated != 0).then_some(u64::from(preallocated)),
    ))
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

/// The body of the whole frame `frame` (header and body), if it checks.
pub(crate) fn frame_body(frame: &[u8]) -> Option<&[u8]> {
    if frame.len() < FRAME_HEADER_LEN {
        return None;
    }
    let (header, body) = frame.split_at(FRAME_HEADER_LEN);
    let header: [u8; FRAME_HEADER_LEN] = header.try_into().ok()?;
    FrameHeader::parse(&header)
        .is_some_and(|h| h.checks(body))
        .then_some(body)
}

/// Replays the frames of one format-1 segment; returns the end of its data, or `None` when the
/// last segment has no valid header and no frame (its creation was cut short). Reads nothing at
/// or past `limit`.
///
/// A frame that does not check is a torn tail only in the last segment and only when no valid
/// frame follows it; then it and everything after it is dropped (the caller zeroes it).
/// Anything else is damage: it is reported in `report.damage` (file, byte, length), every frame
/// that checks on either side of it is kept, and the seqs it took are declared `Corrupted` by
/// the replay.
pub(crate) fn scan_segment(
    file: &dyn DiskFile,
    path: &Path,
    id: u64,
    is_last: bool,
    limit: u64,
    replay: &mut Replay,
    report: &mut SpoolReport,
) -> Result<Option<u64>, SpoolError> {
    let file_len = limit;
    let mut damage = Vec::new();
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    let got = file.read_at(0, &mut header)?;
    let parsed = if got < header.len() {
        Err("segment shorter than its header".to_string())
    } else {
        parse_segment_header(&header)
    };
    let (header_problem, preallocated) = match parsed {
        Ok((found, preallocated)) if found == id => (None, preallocated),
        Ok((found, _)) => (Some(format!("header names segment {found}")), None),
        Err(reason) => (Some(reason), None),
    };
    let mut pos = SEGMENT_HEADER_LEN;
    let mut n_frames = 0u64;
    loop {
        if let Some(body) = read_frame(file, pos, file_len)? {
            let len = (FRAME_HEADER_LEN + body.len()) as u64;
            let entry = Entry::decode(&body).map_err(|e| {
                corrupt(path, pos, format!("frame checks but does not decode: {e}"))
            })?;
            let loc = Loc {
                segment: id,
                pos,
                len: u32::try_from(len).unwrap_or(u32::MAX),
            };
            replay
                .entry(loc, entry)
                .map_err(|reason| corrupt(path, pos, reason))?;
            pos += len;
            n_frames += 1;
            continue;
        }
        // The end of the data, or a frame that does not check: is anything valid after it?
        let Some(bad) = first_nonzero(file, pos, file_len)? else {
            break;
        };
        let from = if bad == pos { pos + 1 } else { bad };
        match next_valid_frame(file, from, file_len)? {
            Some(next) => {
                damage.push((pos, next - pos, "frames do not check, valid frames follow"));
                pos = next;
            }
            None if is_last => break, // a torn tail
            None => {
                damage.push((
                    pos,
                    file_len - pos,
                    "frame does not check in a closed segment",
                ));
                break;
            }
        }
    }
    let path_name = path.display().to_string();
    if let Some(problem) = header_problem {
        let cut_short = got < header.len() || header.iter().all(|b| *b == 0);
        if is_last && n_frames == 0 && damage.is_empty() && cut_short {
            // The header is synced before any frame is written, so a last segment shorter than
            // its header (possibly a torn prefix of it) or still all zeros, without frames, is
            // a creation cut short.
            return Ok(None);
        }
        report.damage.push(Damage {
            path: path_name.clone(),
            pos: 0,
            len: SEGMENT_HEADER_LEN,
            reason: problem,
        });
    }
    for (at, len, reason) in damage {
        report.damage.push(Damage {
            path: path_name.clone(),
            pos: at,
            len,
            reason: reason.to_string(),
        });
    }
    let size = file.size()?;
    if let Some(preallocated) = preallocated.filter(|p| size < *p) {
        if is_last && n_frames == 0 && report.damage.iter().all(|d| d.path != path_name) {
            // Frames come only after the preallocation is synced: a creation cut short.
            return Ok(None);
        }
        // Never a torn write: the file was preallocated before its header was synced. Frames
        // past the cut were lost; in the last segment nothing later bounds their seqs, so the
        // replay declares beyond the reservation as many seqs as the lost bytes could hold.
        report.damage.push(Damage {
            path: path_name,
            pos: size,
            len: preallocated - size,
            reason: format!(
                "segment shorter than its preallocation ({size} of {preallocated} bytes)"
            ),
        });
        if is_last {
            replay.tail_lost(preallocated.saturating_sub(pos));
        }
    }
    report.n_frames += n_frames;
    replay.segment(id, pos, n_frames);
    Ok(Some(pos))
}

/// The position of the first frame that checks at or after `from`, if any. Frames do not depend
/// on where they are, so every position is tried (zero runs are skipped: a frame header starts
/// with its nonzero length, whose nonzero bytes come within its first 4).
fn next_valid_frame(file: &dyn DiskFile, from: u64, to: u64) -> Result<Option<u64>, DiskError> {
    let mut pos = from;
    while pos + FRAME_HEADER_LEN as u64 <= to {
        let Some(nonzero) = first_nonzero(file, pos, to)? else {
            return Ok(None);
        };
        pos = pos.max(nonzero.saturating_sub(3));
        if read_frame(file, pos, to)?.is_some() {
            return Ok(Some(pos));
        }
        pos += 1;
    }
    Ok(None)
}

/// The body of the frame at `pos`, or `None` at the end of the data or at a frame that does
/// not check (torn).
fn read_frame(file: &dyn DiskFile, pos: u64, file_len: u64) -> Result<Option<Vec<u8>>, DiskError> {
    let mut header_bytes = [0u8; FRAME_HEADER_LEN];
    if pos + FRAME_HEADER_LEN as u64 > file_len
        || file.read_at(pos, &mut header_bytes)? < FRAME_HEADER_LEN
    {
        return Ok(None);
    }
    let Some(header) = FrameHeader::parse(&header_bytes) else {
        return Ok(None);
    };
    let body_end = pos + FRAME_HEADER_LEN as u64 + u64::from(header.body_len);
    if header.body_len as usize > codec::DECODE_BYTES_MAX || body_end > file_len {
        return Ok(None);
    }
    let mut body = vec![0u8; header.body_len as usize];
    if file.read_at(pos + FRAME_HEADER_LEN as u64, &mut body)? < body.len() || !header.checks(&body)
    {
        return Ok(None);
    }
    Ok(Some(body))
}

/// True when a format-1 frame checks anywhere after the header, below `limit`.
pub(crate) fn holds_frames(file: &dyn DiskFile, limit: u64) -> Result<bool, DiskError> {
    Ok(next_valid_frame(file, SEGMENT_HEADER_LEN, limit)?.is_some())
}
