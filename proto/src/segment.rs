//! The checksummed segment layer shared by every append-only file of Sluice: the node's partition
//! log, the edge spool, and later the cluster's raft log store. It frames opaque payloads, checks
//! them, preallocates files without ever leaving a partial preallocation behind, and applies one
//! recovery rule. It does no OS IO of its own: everything goes through [`Disk`] / [`DiskFile`],
//! so the simulator runs the same code. What a payload means (events, spool records, raft entries
//! with their term, index and kind) is the caller's business: it encodes the bytes and decodes
//! them in the callback of [`scan`].
//!
//! # Format
//!
//! A segment file starts with a [`SEGMENT_HEADER_LEN`]-byte header, little endian:
//!
//! | bytes  | field                                                            |
//! |--------|------------------------------------------------------------------|
//! | 0..8   | the caller's magic ([`SegmentKind::magic`], e.g. `SLUICESG`)     |
//! | 8..12  | this layer's format version ([`LAYER_VERSION`])                  |
//! | 12..16 | the caller's format version ([`SegmentKind::version`])           |
//! | 16..24 | the segment id (the caller's: a base offset, a sequence number)  |
//! | 24..32 | the preallocated length of the file, header included             |
//! | 32..60 | zero (reserved)                                                  |
//! | 60..64 | CRC32C of bytes 0..60                                            |
//!
//! The file is preallocated (`fallocate`, zeros) to its recorded length before the header is
//! written, so appends never allocate and a full disk shows up when a segment is created, not in
//! the middle of a group commit. Entries follow the header back to back, each an
//! [`ENTRY_HEADER_LEN`]-byte header — payload length (u32, never 0), the payload's CRC32C (u32)
//! and the header's own CRC32C (u32) — and the payload. The header CRC covers the segment id, the
//! entry's byte position in the file, the length and the payload CRC, so an entry checks only
//! where it was written: bytes copied from elsewhere (or a payload that happens to contain an
//! encoded entry) never pass as an entry. Checking a header costs a few bytes of CRC whatever the
//! payload's length, which keeps the search for a valid entry after a failure (below) linear in
//! the file's length. A zero length marks the end of the data; everything after it up to the
//! preallocated length is zeros.
//!
//! # The recovery rule
//!
//! A torn write can only be the last write. [`scan`] reads entries in order until one does not
//! check (bad length, checksum mismatch, runs past the end of the file, or nonzero bytes after the
//! zero length that ends the data). That failure is a **torn tail** — the remains of a write whose
//! `fdatasync` never returned, so never acknowledged — only if all of this holds:
//!
//! - the segment is not sealed (a later segment exists, so its own last write was synced);
//! - it lies at or after the last durable point the caller knows ([`ScanExpect::durable_end`]);
//! - no valid entry follows it anywhere in the file.
//!
//! Anything else is **corruption**: an entry that does not check followed by any valid entry,
//! damage below the last durable point, data that ends below it, a zeroed or damaged header, a
//! header naming another segment, or a file shorter than its own preallocation. Corruption is
//! reported as a [`Corruption`] naming the file and byte; the valid entries before it have
//! already been handed to the caller and stay readable. Nothing is ever repaired: the layer
//! zeroes bytes only for a torn tail ([`SegmentWriter::resume`]), which held nothing
//! acknowledged.
//!
//! Within one write the disk may persist pages in any order, so a power cut can in principle
//! leave a bad entry followed by a valid one of the same unsynced write. The rule calls that
//! corruption too: it cannot be told apart from a flipped bit in acknowledged data, and stopping
//! is the side that never loses an acknowledged entry silently.
//!
//! Looking for a valid entry after the failure checks the header CRC at every byte position of
//! the rest of the file that is not zero (zeros are skipped a window at a time), and the payload
//! of each header that checks. Random bytes pass a header check once in 2^32 positions, so the
//! payload bytes read stay within a bound of a few times the file's length unless the file was
//! crafted; a file for which the bound runs out is called corrupt ([`NotTorn::Unproven`]), the
//! side that loses nothing.
//!
//! Beside segments the layer has [`SlotFile`], the small record file (a manifest, a vote) of two
//! page-separated, CRC-checked slots written alternately, so one torn write never loses the
//! previous record.
//!
//! A torn tail the caller adopts is zeroed and synced by [`SegmentWriter::resume`] before
//! anything new is written, so stale bytes can never line up with later writes.
//!
//! After a failed `fdatasync` the page cache cannot be trusted (Linux marks the unwritten pages
//! clean: they stay readable, but never reach the disk). A [`SegmentWriter`] whose write or sync
//! failed refuses every later call ([`SegmentError::Broken`]); the caller scans the file again
//! and resumes from what it knows to be durable.

use crate::env::{Disk, DiskError, DiskFile};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes of a segment header.
pub const SEGMENT_HEADER_LEN: u64 = 64;
/// Bytes of an entry header (length, payload CRC32C, header CRC32C).
pub const ENTRY_HEADER_LEN: u64 = 12;
/// This layer's own format version, written in every header.
pub const LAYER_VERSION: u32 = 1;

/// What a segment file holds: the caller's magic and format version, checked on every scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentKind {
    /// First bytes of the file (`SLUICESG` for the node's log, `SLUICESP` for the spool, …).
    pub magic: [u8; 8],
    /// The caller's payload format version.
    pub version: u32,
}

/// The header of one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// What the segment holds.
    pub kind: SegmentKind,
    /// The caller's id of the segment (the node's log uses the base offset).
    pub id: u64,
    /// The length the file was preallocated to, header included; a shorter file is corrupt.
    pub preallocated: u64,
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut out = [0u8; SEGMENT_HEADER_LEN as usize];
        out[..8].copy_from_slice(&self.kind.magic);
        out[8..12].copy_from_slice(&LAYER_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.kind.version.to_le_bytes());
        out[16..24].copy_from_slice(&self.id.to_le_bytes());
        out[24..32].copy_from_slice(&self.preallocated.to_le_bytes());
        let crc = crc32c::crc32c(&out[..60]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Checks header bytes against the kind the caller expects; on failure, the byte position of
    /// the damage and what is wrong.
    pub fn decode(
        bytes: &[u8; SEGMENT_HEADER_LEN as usize],
        kind: SegmentKind,
    ) -> Result<SegmentHeader, (u64, CorruptionKind)> {
        if bytes.iter().all(|b| *b == 0) {
            return Err((0, CorruptionKind::HeaderZeroed));
        }
        if u32_at(bytes, 60) != crc32c::crc32c(&bytes[..60]) {
            return Err((60, CorruptionKind::HeaderChecksum));
        }
        if bytes[..8] != kind.magic {
            return Err((
                0,
                CorruptionKind::WrongMagic {
                    found: bytes[..8].try_into().unwrap_or([0; 8]),
                    expected: kind.magic,
                },
            ));
        }
        let layer = u32_at(bytes, 8);
        if layer != LAYER_VERSION {
            return Err((
                8,
                CorruptionKind::UnsupportedVersion {
                    found: layer,
                    supported: LAYER_VERSION,
                },
            ));
        }
        let version = u32_at(bytes, 12);
        if version != kind.version {
            return Err((
                12,
                CorruptionKind::UnsupportedVersion {
                    found: version,
                    supported: kind.version,
                },
            ));
        }
        let preallocated = u64_at(bytes, 24);
        if preallocated < SEGMENT_HEADER_LEN {
            return Err((
                24,
                CorruptionKind::Short {
                    size: preallocated,
                    preallocated: SEGMENT_HEADER_LEN,
                },
            ));
        }
        Ok(SegmentHeader {
            kind,
            id: u64_at(bytes, 16),
            preallocated,
        })
    }
}

fn u32_at(bytes: &[u8], i: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[i..i + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], i: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[i..i + 8]);
    u64::from_le_bytes(word)
}

/// The CRC32C of an entry header of segment `id` at byte `pos`: binds the payload's length and
/// CRC to the entry's place.
pub fn header_crc(id: u64, pos: u64, len: u32, payload_crc: u32) -> u32 {
    let mut seed = [0u8; 24];
    seed[..8].copy_from_slice(&id.to_le_bytes());
    seed[8..16].copy_from_slice(&pos.to_le_bytes());
    seed[16..20].copy_from_slice(&len.to_le_bytes());
    seed[20..24].copy_from_slice(&payload_crc.to_le_bytes());
    crc32c::crc32c(&seed)
}

/// An entry header as read: payload length and CRC, and whether the header's own CRC checks for
/// segment `id` at `pos`.
fn parse_header(id: u64, pos: u64, header: &[u8]) -> (u32, u32, bool) {
    let (len, payload_crc, crc) = (u32_at(header, 0), u32_at(header, 4), u32_at(header, 8));
    (
        len,
        payload_crc,
        header_crc(id, pos, len, payload_crc) == crc,
    )
}

/// Bytes an entry with a payload of `payload_len` bytes takes in a segment.
pub fn entry_len(payload_len: usize) -> u64 {
    ENTRY_HEADER_LEN + payload_len as u64
}

/// Appends the entry (header and payload) of segment `id` that will sit at byte `pos`.
///
/// # Panics
/// On an empty payload or one of `u32::MAX` bytes or more: callers bound payloads well below.
pub fn encode_entry(id: u64, pos: u64, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    assert!(
        len > 0 && len < u32::MAX,
        "segment entry payload of {} bytes",
        payload.len()
    );
    let payload_crc = crc32c::crc32c(payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&payload_crc.to_le_bytes());
    out.extend_from_slice(&header_crc(id, pos, len, payload_crc).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Why an entry did not check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryFault {
    /// The header's checksum does not match it (or it was written for another segment or
    /// position).
    HeaderChecksum,
    /// The header checks but the payload's checksum does not match it.
    Checksum,
    /// The length is beyond what the caller accepts.
    TooLong {
        /// The length read.
        len: u32,
        /// The largest accepted.
        max: u32,
    },
    /// The entry runs past the end of the file (or of its preallocation).
    PastEnd {
        /// Where the entry would end.
        ends_at: u64,
    },
    /// The data ends here (zero length) but a nonzero byte follows.
    Garbage {
        /// The first nonzero byte after the end of the data.
        at: u64,
    },
}

impl fmt::Display for EntryFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryFault::HeaderChecksum => write!(f, "entry header checksum mismatch"),
            EntryFault::Checksum => write!(f, "entry payload checksum mismatch"),
            EntryFault::TooLong { len, max } => {
                write!(f, "entry length {len} beyond the largest accepted {max}")
            }
            EntryFault::PastEnd { ends_at } => {
                write!(f, "entry runs past the end of the file (to byte {ends_at})")
            }
            EntryFault::Garbage { at } => {
                write!(f, "nonzero byte at {at} after the end of the data")
            }
        }
    }
}

/// Why a failed entry is corruption rather than a torn tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotTorn {
    /// A valid entry follows it: a torn write can only be the last write.
    FollowedByValid {
        /// Byte position of the valid entry.
        at: u64,
    },
    /// It lies below the last durable point the caller knows.
    BelowDurable {
        /// That durable point (byte position).
        durable_end: u64,
    },
    /// The segment is sealed: its last write was synced before a later segment was written.
    Sealed,
    /// The scan could not rule out a valid entry after it within its work bound (the rest of
    /// the file is dense with plausible entry headers), so it assumes one.
    Unproven {
        /// Where the search stopped.
        at: u64,
    },
}

impl fmt::Display for NotTorn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotTorn::FollowedByValid { at } => write!(f, "a valid entry follows at byte {at}"),
            NotTorn::BelowDurable { durable_end } => {
                write!(f, "below the durable end at byte {durable_end}")
            }
            NotTorn::Sealed => write!(f, "in a sealed segment"),
            NotTorn::Unproven { at } => write!(
                f,
                "a valid entry after it could not be ruled out (search stopped at byte {at})"
            ),
        }
    }
}

/// What is wrong with a corrupt segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorruptionKind {
    /// The header is all zeros.
    #[error("segment header is zeroed")]
    HeaderZeroed,
    /// The header does not match its checksum.
    #[error("segment header checksum mismatch")]
    HeaderChecksum,
    /// The header belongs to another kind of file.
    #[error("segment magic {found:?} is not {expected:?}")]
    WrongMagic {
        /// Magic found.
        found: [u8; 8],
        /// Magic expected.
        expected: [u8; 8],
    },
    /// A format version this build does not read.
    #[error("unsupported format version {found} (this build reads {supported})")]
    UnsupportedVersion {
        /// Version found.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The header names another segment than the one expected at this place.
    #[error("segment header names id {found}, expected {expected}")]
    WrongId {
        /// Id found.
        found: u64,
        /// Id expected.
        expected: u64,
    },
    /// The file is shorter than its header or its recorded preallocation (it was truncated).
    #[error("file is {size} bytes, shorter than its preallocation of {preallocated} bytes")]
    Short {
        /// File size.
        size: u64,
        /// Length recorded in the header (or the header's own length).
        preallocated: u64,
    },
    /// An entry does not check and cannot be a torn tail.
    #[error("{fault}, {why}")]
    Entry {
        /// What is wrong with the entry.
        fault: EntryFault,
        /// Why it is not a torn tail.
        why: NotTorn,
    },
    /// The data ends (zero length, zeros after) below the last durable point the caller knows.
    #[error("data ends below the durable end at byte {durable_end}")]
    EndsBelowDurable {
        /// The durable point (byte position).
        durable_end: u64,
    },
    /// An entry checks but the caller refused its payload.
    #[error("entry payload refused: {0}")]
    Payload(String),
    /// A file that must exist (a recorded segment, a partition's directory) is gone.
    #[error("missing: {0}")]
    Missing(String),
}

/// Damage found in a segment: the file, the byte, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt segment {path} at byte {pos}: {kind}")]
pub struct Corruption {
    /// The file.
    pub path: String,
    /// Byte position of the damage in it.
    pub pos: u64,
    /// What is wrong.
    pub kind: CorruptionKind,
}

impl Corruption {
    /// Corruption of `path` at `pos`.
    pub fn new(path: &Path, pos: u64, kind: CorruptionKind) -> Self {
        Corruption {
            path: path.display().to_string(),
            pos,
            kind,
        }
    }
}

/// A segment operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// The disk refused an operation.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A segment could not be preallocated: not enough free space. No file was left behind.
    #[error("cannot preallocate {needed} bytes for {path}: {reason}")]
    NoSpace {
        /// The segment that was being created.
        path: String,
        /// Bytes the preallocation needs.
        needed: u64,
        /// Free bytes the filesystem reported, if it did.
        available: Option<u64>,
        /// What the disk said.
        reason: String,
    },
    /// The segment is damaged.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    /// The entry does not fit in what is left of the segment's preallocation.
    #[error("entry of {needed} bytes does not fit in {path}: {room} bytes left")]
    Full {
        /// The segment.
        path: String,
        /// Bytes the entry takes.
        needed: u64,
        /// Bytes left.
        room: u64,
    },
    /// An earlier write or sync of this writer failed: what the file holds is unknown until it
    /// is scanned again.
    #[error("{path}: no more writes after a failed write or sync ({reason})")]
    Broken {
        /// The segment.
        path: String,
        /// The first failure.
        reason: String,
    },
}

impl SegmentError {
    /// True when the failure is a full disk (a failed preallocation or an `ENOSPC`).
    pub fn is_no_space(&self) -> bool {
        match self {
            SegmentError::NoSpace { .. } => true,
            SegmentError::Disk(e) => e.is_no_space(),
            _ => false,
        }
    }
}

/// What the caller knows about a segment before scanning it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanExpect {
    /// The id the header must name, if known.
    pub id: Option<u64>,
    /// Byte position below which the segment is known durable (from the caller's own durable
    /// record); data that fails or ends below it is corruption. `0` when nothing is known.
    pub durable_end: u64,
    /// The segment is closed (a later one exists): nothing in it may be torn.
    pub sealed: bool,
    /// The largest payload accepted; a longer length is an entry that does not check.
    pub entry_bytes_max: u32,
}

/// A torn tail found by [`scan`]: the remains of the last write, never acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    /// Where it starts (the end of the valid data).
    pub pos: u64,
    /// One past its last nonzero byte.
    pub end: u64,
    /// What did not check there.
    pub fault: EntryFault,
}

/// What [`scan`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The header, when it checked.
    pub header: Option<SegmentHeader>,
    /// The file's size.
    pub file_len: u64,
    /// One past the last valid entry of the prefix (the header's end when there is none).
    pub data_end: u64,
    /// Valid entries handed to the callback.
    pub n_entries: u64,
    /// The torn tail after the data, if any (never together with `corruption`).
    pub torn: Option<TornTail>,
    /// The first damage, if the segment is corrupt; the entries before it were handed over.
    pub corruption: Option<Corruption>,
}

impl Scan {
    /// The corruption as an error, or the scan.
    pub fn into_result(self) -> Result<Scan, Corruption> {
        match self.corruption {
            Some(c) => Err(c),
            None => Ok(self),
        }
    }
}

/// Reads a file through a buffer, so scanning small entries costs few reads.
struct Window<'a> {
    file: &'a dyn DiskFile,
    len: u64,
    start: u64,
    buf: Vec<u8>,
}

const WINDOW_BYTES: usize = 1 << 16;

impl<'a> Window<'a> {
    fn new(file: &'a dyn DiskFile, len: u64) -> Self {
        Window {
            file,
            len,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// The bytes `[pos, pos + n)`; `n` must not run past `len`.
    fn get(&mut self, pos: u64, n: usize) -> Result<&[u8], DiskError> {
        let end = pos + n as u64;
        let cached = pos >= self.start && end <= self.start + self.buf.len() as u64;
        if !cached {
            let want = (self.len - pos).min(WINDOW_BYTES.max(n) as u64) as usize;
            self.buf.resize(want, 0);
            let mut got = 0;
            while got < want {
                let k = self.file.read_at(pos + got as u64, &mut self.buf[got..])?;
                if k == 0 {
                    break;
                }
                got += k;
            }
            // A file that shrank under us reads as zeros past its end: the caller's checks treat
            // them like any other bytes.
            self.buf[got..].fill(0);
            self.start = pos;
        }
        let at = (pos - self.start) as usize;
        Ok(&self.buf[at..at + n])
    }

    /// The segment header at the start of the window, or where and why it does not check (a
    /// window shorter than a header: all zeros, or a file of `size` bytes cut short).
    fn header(
        &mut self,
        kind: SegmentKind,
        size: u64,
    ) -> Result<Result<SegmentHeader, (u64, CorruptionKind)>, DiskError> {
        if self.len < SEGMENT_HEADER_LEN {
            let kind = if self.first_nonzero(0)?.is_none() {
                CorruptionKind::HeaderZeroed
            } else {
                CorruptionKind::Short {
                    size,
                    preallocated: SEGMENT_HEADER_LEN,
                }
            };
            return Ok(Err((self.len, kind)));
        }
        let mut bytes = [0u8; SEGMENT_HEADER_LEN as usize];
        bytes.copy_from_slice(self.get(0, SEGMENT_HEADER_LEN as usize)?);
        Ok(SegmentHeader::decode(&bytes, kind))
    }

    /// Position of the first nonzero byte in `[from, len)`.
    fn first_nonzero(&mut self, from: u64) -> Result<Option<u64>, DiskError> {
        let mut pos = from;
        while pos < self.len {
            let n = ((self.len - pos) as usize).min(WINDOW_BYTES);
            if let Some(i) = self.get(pos, n)?.iter().position(|b| *b != 0) {
                return Ok(Some(pos + i as u64));
            }
            pos += n as u64;
        }
        Ok(None)
    }

    /// One past the last nonzero byte in `[from, len)` (`from` when all are zero).
    fn last_nonzero_end(&mut self, from: u64) -> Result<u64, DiskError> {
        let mut end = from;
        let mut pos = from;
        while pos < self.len {
            let n = ((self.len - pos) as usize).min(WINDOW_BYTES);
            if let Some(i) = self.get(pos, n)?.iter().rposition(|b| *b != 0) {
                end = pos + i as u64 + 1;
            }
            pos += n as u64;
        }
        Ok(end)
    }

    /// Checks the entry at `pos`: its payload, or why it does not check. `Ok(Ok(None))` is the
    /// clean end of the data (zero length, zeros to the end).
    fn entry(
        &mut self,
        id: u64,
        pos: u64,
        entry_bytes_max: u32,
    ) -> Result<Result<Option<Vec<u8>>, EntryFault>, DiskError> {
        if pos + ENTRY_HEADER_LEN > self.len {
            return Ok(match self.first_nonzero(pos)? {
                None => Ok(None),
                Some(at) => Err(EntryFault::Garbage { at }),
            });
        }
        let header = self.get(pos, ENTRY_HEADER_LEN as usize)?;
        let (len, payload_crc, header_ok) = parse_header(id, pos, header);
        if len == 0 {
            return Ok(match self.first_nonzero(pos)? {
                None => Ok(None),
                Some(at) => Err(EntryFault::Garbage { at }),
            });
        }
        if !header_ok {
            return Ok(Err(EntryFault::HeaderChecksum));
        }
        if len > entry_bytes_max {
            return Ok(Err(EntryFault::TooLong {
                len,
                max: entry_bytes_max,
            }));
        }
        let ends_at = pos + ENTRY_HEADER_LEN + u64::from(len);
        if ends_at > self.len {
            return Ok(Err(EntryFault::PastEnd { ends_at }));
        }
        let payload = self.get(pos + ENTRY_HEADER_LEN, len as usize)?;
        if crc32c::crc32c(payload) != payload_crc {
            return Ok(Err(EntryFault::Checksum));
        }
        Ok(Ok(Some(payload.to_vec())))
    }

    /// Whether an entry checks anywhere after `from`: the first such position, or the position
    /// where the search gave up after reading a few times the file's length of payloads whose
    /// headers checked.
    fn next_valid(
        &mut self,
        id: u64,
        from: u64,
        entry_bytes_max: u32,
    ) -> Result<Option<NotTorn>, DiskError> {
        let mut budget = 4 * self.len + (1 << 20);
        let mut pos = from;
        while pos + ENTRY_HEADER_LEN <= self.len {
            // Skip zeros fast: an entry starts with a nonzero length.
            let n = ((self.len - pos) as usize).min(WINDOW_BYTES);
            let skip = self.get(pos, n)?.iter().position(|b| *b != 0);
            let Some(skip) = skip else {
                pos += n as u64;
                continue;
            };
            // The nonzero byte may be any of the length's 4 bytes.
            let first = (pos + skip as u64).saturating_sub(3).max(pos);
            for q in first..=pos + skip as u64 {
                if q + ENTRY_HEADER_LEN > self.len {
                    return Ok(None);
                }
                let header = self.get(q, ENTRY_HEADER_LEN as usize)?;
                let (len, payload_crc, header_ok) = parse_header(id, q, header);
                let ends_at = q + ENTRY_HEADER_LEN + u64::from(len);
                if !header_ok || len == 0 || len > entry_bytes_max || ends_at > self.len {
                    continue;
                }
                if budget < u64::from(len) {
                    return Ok(Some(NotTorn::Unproven { at: q }));
                }
                budget -= u64::from(len);
                let payload = self.get(q + ENTRY_HEADER_LEN, len as usize)?;
                if crc32c::crc32c(payload) == payload_crc {
                    return Ok(Some(NotTorn::FollowedByValid { at: q }));
                }
            }
            pos += skip as u64 + 1;
        }
        Ok(None)
    }
}

/// Scans a segment under the recovery rule (see the module doc), handing each valid entry's byte
/// position and payload to `each` in order. `each` may refuse a payload (`Err(reason)`): that is
/// corruption at the entry. IO failures are `Err`; damage is reported in [`Scan::corruption`].
pub fn scan(
    file: &dyn DiskFile,
    path: &Path,
    kind: SegmentKind,
    expect: &ScanExpect,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<Scan, DiskError> {
    let file_len = file.size()?;
    let mut out = Scan {
        header: None,
        file_len,
        data_end: SEGMENT_HEADER_LEN,
        n_entries: 0,
        torn: None,
        corruption: None,
    };
    let corrupt = |pos, kind| Some(Corruption::new(path, pos, kind));
    let mut window = Window::new(file, file_len);
    let header = match window.header(kind, file_len)? {
        Ok(header) => header,
        Err((pos, kind)) => {
            out.corruption = corrupt(pos, kind);
            return Ok(out);
        }
    };
    out.header = Some(header);
    if let Some(expected) = expect.id.filter(|id| *id != header.id) {
        out.corruption = corrupt(
            16,
            CorruptionKind::WrongId {
                found: header.id,
                expected,
            },
        );
        return Ok(out);
    }
    // Entries live within the preallocation; a longer file's excess is ignored.
    window.len = file_len.min(header.preallocated);
    let mut pos = SEGMENT_HEADER_LEN;
    let fault = loop {
        match window.entry(header.id, pos, expect.entry_bytes_max)? {
            Ok(Some(payload)) => {
                if let Err(reason) = each(pos, &payload) {
                    out.data_end = pos;
                    out.corruption = corrupt(pos, CorruptionKind::Payload(reason));
                    return Ok(out);
                }
                out.n_entries += 1;
                pos += entry_len(payload.len());
            }
            Ok(None) => break None,
            Err(fault) => break Some(fault),
        }
    };
    out.data_end = pos;
    if file_len < header.preallocated {
        out.corruption = corrupt(
            file_len,
            CorruptionKind::Short {
                size: file_len,
                preallocated: header.preallocated,
            },
        );
        return Ok(out);
    }
    let Some(fault) = fault else {
        if pos < expect.durable_end {
            out.corruption = corrupt(
                pos,
                CorruptionKind::EndsBelowDurable {
                    durable_end: expect.durable_end,
                },
            );
        }
        return Ok(out);
    };
    let not_torn = if expect.sealed {
        Some(NotTorn::Sealed)
    } else if pos < expect.durable_end {
        Some(NotTorn::BelowDurable {
            durable_end: expect.durable_end,
        })
    } else {
        window.next_valid(header.id, pos + 1, expect.entry_bytes_max)?
    };
    match not_torn {
        Some(why) => out.corruption = corrupt(pos, CorruptionKind::Entry { fault, why }),
        None => {
            out.torn = Some(TornTail {
                pos,
                end: window.last_nonzero_end(pos)?,
                fault,
            })
        }
    }
    Ok(out)
}

/// What the caller of [`salvage`] knows about a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SalvageExpect {
    /// The id the segment's entries were written for (from the file's name): entries are
    /// checked against it even when the header is damaged.
    pub id: u64,
    /// As in [`ScanExpect::durable_end`].
    pub durable_end: u64,
    /// As in [`ScanExpect::sealed`].
    pub sealed: bool,
    /// As in [`ScanExpect::entry_bytes_max`].
    pub entry_bytes_max: u32,
    /// Bytes at or past this position are not read at all (a caller that trusts a file only up
    /// to a point it saw made durable); `u64::MAX` reads everything.
    pub read_end: u64,
    /// Entries may run past the preallocated length, up to the file's end (a caller whose
    /// entries may outgrow a segment lets the file grow); otherwise a longer file's excess is
    /// ignored, as by [`scan`].
    pub past_preallocation: bool,
}

/// A damaged region found by [`salvage`]: `[corruption.pos, end)` of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    /// Where it starts, and what is wrong there.
    pub corruption: Corruption,
    /// One past its end: the next entry that checks, or the end of the file's data.
    pub end: u64,
}

/// What [`salvage`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvage {
    /// The header, when it checked.
    pub header: Option<SegmentHeader>,
    /// The file's size.
    pub file_len: u64,
    /// One past the last entry that checks, refused or not (the header's end when there is
    /// none): where a writer may resume.
    pub data_end: u64,
    /// Valid entries handed to the callback and taken.
    pub n_entries: u64,
    /// The torn tail after the last valid entry, if the recovery rule allows one.
    pub torn: Option<TornTail>,
    /// Every damaged region, in file order (the header first, a short file last).
    pub damage: Vec<Damaged>,
}

/// The keep-going scan: the recovery rule of [`scan`] (same framing, same classification), for a
/// caller that must not stop at damage but keep every entry that checks and learn every region
/// that does not. Entries are handed to `each` in file order with their positions; after an
/// entry that does not check, the search resumes at the next entry that does (as [`scan`]'s
/// search for a valid entry after a failure), and the bytes between are one [`Damaged`] region.
/// A failure after which no entry checks is a torn tail under the same conditions as in
/// [`scan`]; otherwise it is damage to the end of the data. A damaged or zeroed header is damage
/// too, and the entries are still read (they check against [`SalvageExpect::id`]); a file
/// shorter than its recorded preallocation is damage from its end to the preallocation's.
/// `each` may refuse a payload (`Err(reason)`): that entry is a damaged region. IO failures are
/// `Err`.
pub fn salvage(
    file: &dyn DiskFile,
    path: &Path,
    kind: SegmentKind,
    expect: &SalvageExpect,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<Salvage, DiskError> {
    let file_len = file.size()?;
    let id = expect.id;
    let max = expect.entry_bytes_max;
    let mut out = Salvage {
        header: None,
        file_len,
        data_end: SEGMENT_HEADER_LEN,
        n_entries: 0,
        torn: None,
        damage: Vec::new(),
    };
    let damaged = |pos, end, kind| Damaged {
        corruption: Corruption::new(path, pos, kind),
        end,
    };
    let mut window = Window::new(file, file_len.min(expect.read_end));
    match window.header(kind, file_len)? {
        Err((_, kind)) if window.len < SEGMENT_HEADER_LEN => {
            // No entry fits before the end: nothing to read on.
            out.damage.push(damaged(0, SEGMENT_HEADER_LEN, kind));
            return Ok(out);
        }
        Ok(header) if header.id != id => out.damage.push(damaged(
            16,
            SEGMENT_HEADER_LEN,
            CorruptionKind::WrongId {
                found: header.id,
                expected: id,
            },
        )),
        Ok(header) => out.header = Some(header),
        Err((pos, kind)) => out.damage.push(damaged(pos, SEGMENT_HEADER_LEN, kind)),
    }
    let preallocated = out.header.map(|h| h.preallocated);
    if let Some(preallocated) = preallocated.filter(|_| !expect.past_preallocation) {
        window.len = window.len.min(preallocated);
    }
    let mut pos = SEGMENT_HEADER_LEN;
    loop {
        let fault = match window.entry(id, pos, max)? {
            Ok(Some(payload)) => {
                let next = pos + entry_len(payload.len());
                match each(pos, &payload) {
                    Ok(()) => out.n_entries += 1,
                    Err(reason) => {
                        out.damage
                            .push(damaged(pos, next, CorruptionKind::Payload(reason)));
                    }
                }
                out.data_end = next;
                pos = next;
                continue;
            }
            Ok(None) => {
                if pos < expect.durable_end {
                    let kind = CorruptionKind::EndsBelowDurable {
                        durable_end: expect.durable_end,
                    };
                    out.damage.push(damaged(pos, expect.durable_end, kind));
                }
                break;
            }
            Err(fault) => fault,
        };
        let next = window.next_valid(id, pos + 1, max)?;
        let why = match next {
            Some(NotTorn::FollowedByValid { at }) => {
                let kind = CorruptionKind::Entry {
                    fault,
                    why: NotTorn::FollowedByValid { at },
                };
                out.damage.push(damaged(pos, at, kind));
                pos = at;
                continue;
            }
            Some(why) => why,
            None if expect.sealed => NotTorn::Sealed,
            None if pos < expect.durable_end => NotTorn::BelowDurable {
                durable_end: expect.durable_end,
            },
            None => {
                let end = window.last_nonzero_end(pos)?;
                out.torn = Some(TornTail { pos, end, fault });
                break;
            }
        };
        let end = window.last_nonzero_end(pos)?.max(pos + 1).min(window.len);
        out.damage
            .push(damaged(pos, end, CorruptionKind::Entry { fault, why }));
        break;
    }
    if let Some(preallocated) = preallocated.filter(|p| file_len < *p) {
        let kind = CorruptionKind::Short {
            size: file_len,
            preallocated,
        };
        out.damage.push(damaged(file_len, preallocated, kind));
    }
    Ok(out)
}

/// Whether no entry of segment `id` checks anywhere in the file, whatever its header says: true
/// for the remains of a segment whose creation was cut short (empty, short, header zeroed or
/// torn), which never held anything. A file in which the search gives up counts as holding
/// entries (the side that loses nothing).
pub fn holds_no_entries(
    file: &dyn DiskFile,
    id: u64,
    entry_bytes_max: u32,
) -> Result<bool, DiskError> {
    let mut window = Window::new(file, file.size()?);
    Ok(window
        .next_valid(id, SEGMENT_HEADER_LEN, entry_bytes_max)?
        .is_none())
}

/// Reads the entry at `pos` of segment `id`, which the caller knows lies below the segment's
/// data end (`end`): it must check, or the segment is corrupt. Returns the payload and the
/// position of the next entry.
pub fn read_entry(
    file: &dyn DiskFile,
    path: &Path,
    id: u64,
    pos: u64,
    end: u64,
    entry_bytes_max: u32,
) -> Result<(Vec<u8>, u64), SegmentError> {
    let damaged = |fault| -> SegmentError {
        Corruption::new(
            path,
            pos,
            CorruptionKind::Entry {
                fault,
                why: NotTorn::BelowDurable { durable_end: end },
            },
        )
        .into()
    };
    // Two exact reads (header, payload): readers fetch a few entries at a time.
    let mut header = [0u8; ENTRY_HEADER_LEN as usize];
    if pos + ENTRY_HEADER_LEN > end || read_full(file, pos, &mut header)? < header.len() {
        return Err(damaged(EntryFault::PastEnd {
            ends_at: pos + ENTRY_HEADER_LEN,
        }));
    }
    let (len, payload_crc, header_ok) = parse_header(id, pos, &header);
    if len == 0 {
        return Err(Corruption::new(
            path,
            pos,
            CorruptionKind::EndsBelowDurable { durable_end: end },
        )
        .into());
    }
    if !header_ok {
        return Err(damaged(EntryFault::HeaderChecksum));
    }
    if len > entry_bytes_max {
        return Err(damaged(EntryFault::TooLong {
            len,
            max: entry_bytes_max,
        }));
    }
    let next = pos + ENTRY_HEADER_LEN + u64::from(len);
    let mut payload = vec![0u8; len as usize];
    if next > end || read_full(file, pos + ENTRY_HEADER_LEN, &mut payload)? < payload.len() {
        return Err(damaged(EntryFault::PastEnd { ends_at: next }));
    }
    if crc32c::crc32c(&payload) != payload_crc {
        return Err(damaged(EntryFault::Checksum));
    }
    Ok((payload, next))
}

/// A segment's sparse in-memory index: `(key, byte position)` of one entry every
/// `interval_bytes` of entries or so, so memory grows with the bytes a segment holds divided by
/// the interval, not with its entry count. The key is whatever the log orders entries by (the
/// first offset of an entry, a raft index); keys and positions grow with every noted entry.
/// A reader seeks to the last point at or below its key and reads forward with [`read_entry`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SparseIndex {
    points: Vec<(u64, u64)>,
    interval_bytes: u64,
}

impl SparseIndex {
    /// An empty index taking a point every `interval_bytes` (every entry when 0).
    pub fn new(interval_bytes: u64) -> SparseIndex {
        SparseIndex {
            points: Vec::new(),
            interval_bytes,
        }
    }

    /// Notes the entry with key `key` at `pos`, the next one in the segment: it becomes a point
    /// when it is the first, or at least `interval_bytes` after the last point.
    pub fn note(&mut self, key: u64, pos: u64) {
        match self.points.last() {
            Some(&(_, last)) if pos < last.saturating_add(self.interval_bytes) => {}
            _ => self.points.push((key, pos)),
        }
    }

    /// Where to start reading for `key`: the position of the last point at or below it, or
    /// `None` when every point is above it (or there is none).
    pub fn seek(&self, key: u64) -> Option<(u64, u64)> {
        let i = self.points.partition_point(|(k, _)| *k <= key);
        i.checked_sub(1).map(|i| self.points[i])
    }

    /// Forgets the points at or after `key` (a truncation from `key` on).
    pub fn truncate_from(&mut self, key: u64) {
        let keep = self.points.partition_point(|(k, _)| *k < key);
        self.points.truncate(keep);
    }

    /// How many points the index holds.
    pub fn points(&self) -> usize {
        self.points.len()
    }
}

/// Reads into all of `buf` unless the file ends first; returns the bytes read.
fn read_full(file: &dyn DiskFile, pos: u64, buf: &mut [u8]) -> Result<usize, DiskError> {
    let mut got = 0;
    while got < buf.len() {
        let n = file.read_at(pos + got as u64, &mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// What a [`SlotFile`] holds: the caller's magic and format version, and the length of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotKind {
    /// First bytes of each slot.
    pub magic: [u8; 8],
    /// The caller's layout version, written in each slot; a slot of another version does not
    /// check.
    pub version: u32,
    /// Bytes of a slot, at least [`SLOT_OVERHEAD`] and at most [`SLOT_STRIDE`]; the caller's
    /// body takes `slot_len - SLOT_OVERHEAD` of them.
    pub slot_len: usize,
}

/// Bytes of a slot that are not the caller's body: magic, version, reserved, sequence number
/// and CRC32C.
pub const SLOT_OVERHEAD: usize = 28;
/// Distance between the two slots of a [`SlotFile`]: a page each, so a torn write touches one.
pub const SLOT_STRIDE: u64 = 4096;

/// A small record file (a manifest, a vote) of two page-separated slots written alternately,
/// each checked by its own CRC32C, so one torn write never loses the previous record. A slot is,
/// little endian: the magic (8 bytes), the version (4), zero (4), a sequence number (8; the
/// higher of two valid slots wins), the caller's body, and the CRC32C of everything before it.
/// Each [`SlotFile::write`] is one slot write and one `fdatasync`.
pub struct SlotFile {
    path: PathBuf,
    file: Arc<dyn DiskFile>,
    kind: SlotKind,
    seq: u64,
}

impl fmt::Debug for SlotFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotFile")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("seq", &self.seq)
            .finish()
    }
}

impl SlotFile {
    /// Reads the newest slot that checks: `Ok(None)` when the file does not exist, corruption
    /// ([`CorruptionKind::Missing`]) when it exists and neither slot checks. The body has the
    /// full body length (what the caller wrote, then zeros).
    pub fn open(
        disk: &dyn Disk,
        path: &Path,
        kind: SlotKind,
    ) -> Result<Option<(SlotFile, Vec<u8>)>, SegmentError> {
        assert!((SLOT_OVERHEAD..=SLOT_STRIDE as usize).contains(&kind.slot_len));
        let file = match disk.open(path, false) {
            Ok(file) => file,
            Err(DiskError::Io {
                kind: std::io::ErrorKind::NotFound,
                ..
            }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut best: Option<(u64, Vec<u8>)> = None;
        for slot in 0..2u64 {
            let mut bytes = vec![0u8; kind.slot_len];
            if read_full(&*file, slot * SLOT_STRIDE, &mut bytes)? < bytes.len() {
                continue;
            }
            let crc_at = kind.slot_len - 4;
            let checks = bytes[..8] == kind.magic
                && u32_at(&bytes, 8) == kind.version
                && u32_at(&bytes, crc_at) == crc32c::crc32c(&bytes[..crc_at]);
            let seq = u64_at(&bytes, 16);
            if checks && best.as_ref().is_none_or(|(s, _)| seq > *s) {
                best = Some((seq, bytes[24..crc_at].to_vec()));
            }
        }
        let Some((seq, body)) = best else {
            return Err(Corruption::new(
                path,
                0,
                CorruptionKind::Missing("no slot of the record file checks".into()),
            )
            .into());
        };
        let slots = SlotFile {
            path: path.to_path_buf(),
            file,
            kind,
            seq,
        };
        Ok(Some((slots, body)))
    }

    /// Creates the file (replacing any there) with `body` in its first slot, and makes it and
    /// its directory entry durable.
    pub fn create(
        disk: &dyn Disk,
        path: &Path,
        kind: SlotKind,
        body: &[u8],
    ) -> Result<SlotFile, SegmentError> {
        assert!((SLOT_OVERHEAD..=SLOT_STRIDE as usize).contains(&kind.slot_len));
        let dir = path.parent().unwrap_or(Path::new("."));
        let file = disk.open(path, true)?;
        file.truncate(0)?;
        file.allocate(2 * SLOT_STRIDE)?;
        let mut slots = SlotFile {
            path: path.to_path_buf(),
            file,
            kind,
            seq: 0,
        };
        slots.write(body)?;
        disk.sync_dir(dir)?;
        Ok(slots)
    }

    /// Writes `body` into the older slot and syncs it; on failure the newer slot still holds
    /// the previous record.
    ///
    /// # Panics
    /// On a body longer than the slot's (a caller's layout bug).
    pub fn write(&mut self, body: &[u8]) -> Result<(), SegmentError> {
        let crc_at = self.kind.slot_len - 4;
        assert!(
            body.len() <= crc_at - 24,
            "record body of {} bytes",
            body.len()
        );
        let seq = self.seq + 1;
        let mut bytes = vec![0u8; self.kind.slot_len];
        bytes[..8].copy_from_slice(&self.kind.magic);
        bytes[8..12].copy_from_slice(&self.kind.version.to_le_bytes());
        bytes[16..24].copy_from_slice(&seq.to_le_bytes());
        bytes[24..24 + body.len()].copy_from_slice(body);
        let crc = crc32c::crc32c(&bytes[..crc_at]);
        bytes[crc_at..].copy_from_slice(&crc.to_le_bytes());
        self.file.write_at((seq % 2) * SLOT_STRIDE, &bytes)?;
        self.file.sync_data()?;
        self.seq = seq;
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Appends entries to one segment. Writes go to the file at once; [`SegmentWriter::sync`] makes
/// them durable. After any failed write or sync the writer refuses further calls.
pub struct SegmentWriter {
    path: PathBuf,
    file: Arc<dyn DiskFile>,
    header: SegmentHeader,
    end: u64,
    durable: u64,
    broken: Option<String>,
    buf: Vec<u8>,
}

impl fmt::Debug for SegmentWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("path", &self.path)
            .field("header", &self.header)
            .field("end", &self.end)
            .field("durable", &self.durable)
            .field("broken", &self.broken)
            .finish()
    }
}

fn no_space(path: &Path, needed: u64, available: Option<u64>, reason: String) -> SegmentError {
    SegmentError::NoSpace {
        path: path.display().to_string(),
        needed,
        available,
        reason,
    }
}

impl SegmentWriter {
    /// Creates the segment at `path` (replacing any file there): checks that the filesystem has
    /// room for `header.preallocated` bytes, preallocates them, writes the header, and makes the
    /// file and its directory entry durable. On any failure the file is removed, so no partial
    /// preallocation is left behind; a full disk is [`SegmentError::NoSpace`].
    pub fn create(
        disk: &dyn Disk,
        path: &Path,
        header: SegmentHeader,
    ) -> Result<SegmentWriter, SegmentError> {
        assert!(
            header.preallocated >= SEGMENT_HEADER_LEN,
            "segment preallocation below its header"
        );
        let dir = path.parent().unwrap_or(Path::new("."));
        let needed = header.preallocated;
        if let Some(available) = disk.available_bytes(dir)? {
            if available < needed {
                return Err(no_space(
                    path,
                    needed,
                    Some(available),
                    format!("the filesystem has {available} bytes free"),
                ));
            }
        }
        let file = disk.open(path, true)?;
        let made = (|| {
            file.truncate(0)?;
            file.allocate(needed)?;
            file.write_at(0, &header.encode())?;
            file.sync_data()?;
            disk.sync_dir(dir)
        })();
        if let Err(error) = made {
            drop(file);
            // Best effort: the error that matters is the one being returned.
            let _ = disk.remove(path);
            let _ = disk.sync_dir(dir);
            return Err(if error.is_no_space() {
                no_space(path, needed, None, error.to_string())
            } else {
                SegmentError::Disk(error)
            });
        }
        Ok(SegmentWriter {
            path: path.to_path_buf(),
            file,
            header,
            end: SEGMENT_HEADER_LEN,
            durable: SEGMENT_HEADER_LEN,
            broken: None,
            buf: Vec::new(),
        })
    }

    /// Resumes appending to a scanned segment at `end`, an entry boundary at or below
    /// `scan.data_end` (the caller may keep less than the scan found, e.g. nothing past the last
    /// point it saw made durable). Zeroes everything from `end` on that is not zero (the torn
    /// tail, the entries not kept) and syncs before returning. Refuses a corrupt scan.
    pub fn resume(
        path: &Path,
        file: Arc<dyn DiskFile>,
        scan: &Scan,
        end: u64,
    ) -> Result<SegmentWriter, SegmentError> {
        if let Some(corruption) = &scan.corruption {
            return Err(corruption.clone().into());
        }
        let Some(header) = scan.header else {
            return Err(Corruption::new(path, 0, CorruptionKind::HeaderZeroed).into());
        };
        assert!(
            (SEGMENT_HEADER_LEN..=scan.data_end).contains(&end),
            "resume at {end} outside the scanned data"
        );
        let dirty_end = scan
            .torn
            .map_or(scan.data_end, |t| t.end.max(scan.data_end));
        let writer = SegmentWriter {
            path: path.to_path_buf(),
            file,
            header,
            end,
            durable: end,
            broken: None,
            buf: Vec::new(),
        };
        if dirty_end > end {
            let zeros = vec![0u8; WINDOW_BYTES];
            let mut pos = end;
            while pos < dirty_end {
                let n = ((dirty_end - pos) as usize).min(zeros.len());
                writer.file.write_at(pos, &zeros[..n])?;
                pos += n as u64;
            }
        }
        // What the scan adopted may exist only in the page cache (a write whose fdatasync failed
        // or never ran): make it durable before anything relies on it.
        writer.file.sync_data()?;
        Ok(writer)
    }

    /// The segment's header.
    pub fn header(&self) -> SegmentHeader {
        self.header
    }

    /// The segment's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, for readers.
    pub fn file(&self) -> &Arc<dyn DiskFile> {
        &self.file
    }

    /// Where the next entry goes (one past the last written).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// One past the last entry made durable by [`SegmentWriter::sync`].
    pub fn durable_end(&self) -> u64 {
        self.durable
    }

    /// Bytes left in the preallocation.
    pub fn room(&self) -> u64 {
        self.header.preallocated.saturating_sub(self.end)
    }

    /// True when an entry with a payload of `payload_len` bytes fits in what is left.
    pub fn fits(&self, payload_len: usize) -> bool {
        entry_len(payload_len) <= self.room()
    }

    fn live(&self) -> Result<(), SegmentError> {
        match &self.broken {
            Some(reason) => Err(SegmentError::Broken {
                path: self.path.display().to_string(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Writes entries, one per payload, with one write; returns the byte position of each. Not
    /// durable until [`SegmentWriter::sync`]. All of them must fit ([`SegmentError::Full`]).
    ///
    /// # Panics
    /// On an empty payload (callers never frame nothing).
    pub fn append<P: AsRef<[u8]>>(&mut self, payloads: &[P]) -> Result<Vec<u64>, SegmentError> {
        self.live()?;
        let needed: u64 = payloads.iter().map(|p| entry_len(p.as_ref().len())).sum();
        if needed > self.room() {
            return Err(SegmentError::Full {
                path: self.path.display().to_string(),
                needed,
                room: self.room(),
            });
        }
        self.buf.clear();
        let mut positions = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let pos = self.end + self.buf.len() as u64;
            positions.push(pos);
            encode_entry(self.header.id, pos, payload.as_ref(), &mut self.buf);
        }
        if self.buf.is_empty() {
            return Ok(positions);
        }
        if let Err(error) = self.file.write_at(self.end, &self.buf) {
            self.broken = Some(error.to_string());
            return Err(error.into());
        }
        self.end += self.buf.len() as u64;
        Ok(positions)
    }

    /// Makes every entry written so far durable (`fdatasync`).
    pub fn sync(&mut self) -> Result<(), SegmentError> {
        self.live()?;
        if self.durable == self.end {
            return Ok(());
        }
        if let Err(error) = self.file.sync_data() {
            self.broken = Some(error.to_string());
            return Err(error.into());
        }
        self.durable = self.end;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
