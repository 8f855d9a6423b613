//! The spool's manifest: a durable record, outside the log, of what the spool must hold. It is a
//! [`SlotFile`] (the segment layer's two-slot record file, as the node's partition manifest is)
//! named `manifest` in the spool directory, whose body records the segments the spool holds,
//! the last one (the one appended to) and how far that one is durable. Recovery checks the
//! directory against it, so a deleted segment, a last segment cut inside its header (which
//! would otherwise look like a creation cut short) and a file shorter than its recorded durable
//! end are damage, not silence; see `mod.rs` for when it is written.
//!
//! Body layout (little endian): the last segment's id (u64), its durable end (u64), the first
//! segment's id (u64), then `n` (u32) and a bitmap of `n` bits: bit `i` set when segment
//! `first + i` is held. `n` is `last - first + 1`, or 0 when the segments span more ids than a
//! slot's bitmap holds; then only the last segment is recorded.

use sluice_proto::env::Disk;
use sluice_proto::segment::{
    Corruption, CorruptionKind, SegmentError, SlotFile, SlotKind, SLOT_OVERHEAD,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The manifest's file name in the spool directory (never a segment name).
pub(crate) const MANIFEST_NAME: &str = "manifest";

/// The kind of a spool manifest: a [`SlotFile`] of page-long slots.
pub(crate) const MANIFEST_KIND: SlotKind = SlotKind {
    magic: *b"SLUICESM",
    version: 1,
    slot_len: 4096,
};

/// Bytes of the body before the bitmap.
const FIXED_LEN: usize = 28;

/// The largest span of segment ids the bitmap lists.
pub(crate) const LISTED_SPAN_MAX: u64 =
    ((MANIFEST_KIND.slot_len - SLOT_OVERHEAD - FIXED_LEN) * 8) as u64;

/// What the spool must hold, as its manifest records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ManifestState {
    /// The last segment: the one appended to.
    pub(crate) last: u64,
    /// The byte position up to which the last segment is durable.
    pub(crate) durable_pos: u64,
    /// Every segment held, `last` included; `None` when they span more than
    /// [`LISTED_SPAN_MAX`] ids (then only `last` is recorded).
    pub(crate) segments: Option<BTreeSet<u64>>,
}

impl ManifestState {
    /// The state of a spool holding `segments` (not empty), whose last is durable up to
    /// `durable_pos`.
    pub(crate) fn new(segments: &BTreeSet<u64>, durable_pos: u64) -> Option<ManifestState> {
        let (first, last) = (*segments.first()?, *segments.last()?);
        Some(ManifestState {
            last,
            durable_pos,
            segments: (last - first < LISTED_SPAN_MAX).then(|| segments.clone()),
        })
    }

    /// Whether the manifest says segment `id` must exist.
    pub(crate) fn holds(&self, id: u64) -> bool {
        id == self.last || self.segments.as_ref().is_some_and(|s| s.contains(&id))
    }

    /// Every segment that must exist.
    pub(crate) fn expected(&self) -> BTreeSet<u64> {
        self.segments
            .clone()
            .unwrap_or_else(|| BTreeSet::from([self.last]))
    }

    /// The slot body.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + 64);
        let first = self
            .segments
            .as_ref()
            .and_then(|s| s.first().copied())
            .unwrap_or(self.last);
        out.extend_from_slice(&self.last.to_le_bytes());
        out.extend_from_slice(&self.durable_pos.to_le_bytes());
        out.extend_from_slice(&first.to_le_bytes());
        match &self.segments {
            Some(segments) => {
                let n = self.last - first + 1;
                out.extend_from_slice(&(n as u32).to_le_bytes());
                let mut bitmap = vec![0u8; n.div_ceil(8) as usize];
                for id in segments {
                    let i = id - first;
                    bitmap[(i / 8) as usize] |= 1 << (i % 8);
                }
                out.extend_from_slice(&bitmap);
            }
            None => out.extend_from_slice(&0u32.to_le_bytes()),
        }
        out
    }

    /// The state in a slot body (which the slot file checked); `None` when it does not hold
    /// together (a layout bug or a crafted file).
    pub(crate) fn decode(body: &[u8]) -> Option<ManifestState> {
        let u64_at = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(body.get(i..i + 8)?.try_into().ok()?))
        };
        let (last, durable_pos, first) = (u64_at(0)?, u64_at(8)?, u64_at(16)?);
        let n = u64::from(u32::from_le_bytes(body.get(24..28)?.try_into().ok()?));
        if n == 0 {
            return Some(ManifestState {
                last,
                durable_pos,
                segments: None,
            });
        }
        if n > LISTED_SPAN_MAX || first.checked_add(n - 1) != Some(last) {
            return None;
        }
        let bitmap = body.get(FIXED_LEN..FIXED_LEN + n.div_ceil(8) as usize)?;
        let segments: BTreeSet<u64> = (0..n)
            .filter(|i| bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0)
            .map(|i| first + i)
            .collect();
        if segments.first() != Some(&first) || !segments.contains(&last) {
            return None;
        }
        Some(ManifestState {
            last,
            durable_pos,
            segments: Some(segments),
        })
    }
}

/// The manifest file and the state it last recorded.
pub(crate) struct Manifest {
    slots: SlotFile,
    state: ManifestState,
}

impl Manifest {
    /// The manifest's path in spool directory `dir`.
    pub(crate) fn path(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_NAME)
    }

    /// Reads the manifest of `dir`: `Ok(None)` when there is none (a spool of an earlier
    /// release, or one whose manifest was never completed), corruption when one exists and no
    /// slot holding a state checks.
    pub(crate) fn read(disk: &dyn Disk, dir: &Path) -> Result<Option<Manifest>, SegmentError> {
        let path = Manifest::path(dir);
        let Some((slots, body)) = SlotFile::open(disk, &path, MANIFEST_KIND)? else {
            return Ok(None);
        };
        let state = ManifestState::decode(&body).ok_or_else(|| {
            Corruption::new(
                &path,
                0,
                CorruptionKind::Missing("a spool manifest slot that does not hold a state".into()),
            )
        })?;
        Ok(Some(Manifest { slots, state }))
    }

    /// Creates the manifest of `dir` (replacing whatever is there) with its first state, and
    /// makes it and its directory entry durable.
    pub(crate) fn create(
        disk: &dyn Disk,
        dir: &Path,
        state: ManifestState,
    ) -> Result<Manifest, SegmentError> {
        let slots = SlotFile::create(disk, &Manifest::path(dir), MANIFEST_KIND, &state.encode())?;
        Ok(Manifest { slots, state })
    }

    /// What it last recorded.
    pub(crate) fn state(&self) -> &ManifestState {
        &self.state
    }

    /// Records `state` (one slot write and `fdatasync`) unless it is the one recorded.
    pub(crate) fn write(&mut self, state: ManifestState) -> Result<(), SegmentError> {
        if state != self.state {
            self.slots.write(&state.encode())?;
            self.state = state;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_states_round_trip_and_wide_spans_record_only_the_last() {
        // Checks the body layout: listed segments (gaps included) round-trip, a span wider than
        // the bitmap records the last segment alone, and bodies that do not hold together
        // (first after last, a bitmap whose first or last bit is clear) are refused.
        let listed = BTreeSet::from([3, 4, 7, 9]);
        let state = ManifestState::new(&listed, 1234).unwrap();
        assert_eq!(state.segments.as_ref(), Some(&listed));
        assert_eq!(ManifestState::decode(&state.encode()), Some(state.clone()));
        assert!(state.holds(7) && !state.holds(5) && !state.holds(10));
        let wide = BTreeSet::from([1, 1 + LISTED_SPAN_MAX]);
        let state = ManifestState::new(&wide, 64).unwrap();
        assert_eq!(state.segments, None);
        assert_eq!(state.expected(), BTreeSet::from([1 + LISTED_SPAN_MAX]));
        assert_eq!(ManifestState::decode(&state.encode()), Some(state));
        let edge = BTreeSet::from([1, LISTED_SPAN_MAX]);
        assert!(ManifestState::new(&edge, 64).unwrap().segments.is_some());
        let mut bad = ManifestState::new(&listed, 1).unwrap().encode();
        bad[28] &= !1; // first segment's bit
        assert_eq!(ManifestState::decode(&bad), None);
        let mut bad = ManifestState::new(&listed, 1).unwrap().encode();
        bad[0] = 2; // last before first
        assert_eq!(ManifestState::decode(&bad), None);
        assert_eq!(ManifestState::decode(&[0u8; 10]), None);
        // A slot body is zero-padded: the state decodes from the full body too.
        let mut padded = ManifestState::new(&listed, 9).unwrap().encode();
        padded.resize(MANIFEST_KIND.slot_len - SLOT_OVERHEAD, 0);
        assert_eq!(
            ManifestState::decode(&padded),
            ManifestState::new(&listed, 9)
        );
    }
}
