//! The spool's manifest: a durable record, outside the log, of what the spool must hold. It is a
//! [`SlotFile`] (the segment layer's two-slot record file, as the node's partition manifest is)
//! named `manifest` in the spool directory, whose body records the segments the spool holds,
//! the last one (the one appended to) and how far that one is durable. Recovery checks the
//! directory against it, so a deleted segment, a last segment cut inside its header (which
//! would otherwise look like a creation cut short) and a file shorter than its recorded durable
//! end are damage, not silence; see `mod.rs` for when it is written.
//!
//! Body layout (little endian): the last segment's id (u64), its durable end (u64), the first
//! segment's id (u64), then `n` (u32) and what it announces:
//! - `n = RUNS` (`u32::MAX`, what this release writes): a u32 count of runs, then each run of
//!   held ids as its first id (u64) and its length (u32). Every set of held segments fits as
//!   long as it has at most [`RUNS_MAX`] runs, which the configuration guarantees
//!   ([`SEGMENTS_LISTED_MAX`], checked by `SpoolConfig::validate`); a set that still does not
//!   fit is a typed error, never a shorter list.
//! - `1 <= n <= LISTED_SPAN_MAX` (written by the first release of the manifest): a bitmap of
//!   `n` bits, bit `i` set when segment `first + i` is held; `n` is `last - first + 1`.
//! - `n = 0` (the same release, when the ids spanned more than its bitmap): only the last
//!   segment is recorded. Read, never written.

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

/// The largest span of segment ids the bitmap layout (read, never written) lists.
const LISTED_SPAN_MAX: u64 = ((MANIFEST_KIND.slot_len - SLOT_OVERHEAD - FIXED_LEN) * 8) as u64;

/// The value of `n` announcing the runs layout.
const RUNS: u32 = u32::MAX;

/// Bytes of one run: its first id (u64) and its length (u32).
const RUN_LEN: usize = 12;

/// The most runs of held segment ids a slot lists (after the fixed part and the run count).
pub(crate) const RUNS_MAX: usize =
    (MANIFEST_KIND.slot_len - SLOT_OVERHEAD - FIXED_LEN - 4) / RUN_LEN;

/// The most segments a spool may be configured to hold (`spool_bytes_max / segment_bytes_max`):
/// even when every held segment is a run of its own, the manifest lists them all, with room to
/// spare for the segments control frames may add beyond the budget.
pub const SEGMENTS_LISTED_MAX: u64 = 256;

const _: () = assert!(SEGMENTS_LISTED_MAX as usize + 64 <= RUNS_MAX);

/// The most segments a manifest lists (in runs): far more than a spool ever holds, a bound on
/// what a crafted file can make recovery allocate.
const HELD_MAX: usize = 1 << 16;

/// The held segments do not fit one manifest slot (more runs than [`RUNS_MAX`], or more
/// segments than it ever lists).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the spool holds {n_segments} segments in {n_runs} runs of ids; its manifest lists at most \
     {RUNS_MAX} runs and {HELD_MAX} segments"
)]
pub(crate) struct TooManyRuns {
    /// Segments held.
    pub(crate) n_segments: usize,
    /// Runs of consecutive ids among them.
    pub(crate) n_runs: usize,
}

/// What the spool must hold, as its manifest records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ManifestState {
    /// The last segment: the one appended to.
    pub(crate) last: u64,
    /// The byte position up to which the last segment is durable.
    pub(crate) durable_pos: u64,
    /// Every segment held, `last` included; `None` only in a manifest of the first release
    /// whose ids spanned more than its bitmap (then only `last` was recorded).
    pub(crate) segments: Option<BTreeSet<u64>>,
}

impl ManifestState {
    /// The state of a spool holding `segments` (not empty), whose last is durable up to
    /// `durable_pos`.
    pub(crate) fn new(segments: &BTreeSet<u64>, durable_pos: u64) -> Option<ManifestState> {
        Some(ManifestState {
            last: *segments.last()?,
            durable_pos,
            segments: Some(segments.clone()),
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

    /// The slot body (the runs layout); `Err` when the held segments form more runs than a
    /// slot lists.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, TooManyRuns> {
        let held = self.expected();
        let runs = runs_of(&held);
        if runs.len() > RUNS_MAX || held.len() > HELD_MAX {
            return Err(TooManyRuns {
                n_segments: held.len(),
                n_runs: runs.len(),
            });
        }
        let first = held.first().copied().unwrap_or(self.last);
        let mut out = Vec::with_capacity(FIXED_LEN + 4 + runs.len() * RUN_LEN);
        out.extend_from_slice(&self.last.to_le_bytes());
        out.extend_from_slice(&self.durable_pos.to_le_bytes());
        out.extend_from_slice(&first.to_le_bytes());
        out.extend_from_slice(&RUNS.to_le_bytes());
        out.extend_from_slice(&(runs.len() as u32).to_le_bytes());
        for (start, len) in runs {
            out.extend_from_slice(&start.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
        }
        Ok(out)
    }

    /// The state in a slot body (which the slot file checked); `None` when it does not hold
    /// together (a layout bug or a crafted file).
    pub(crate) fn decode(body: &[u8]) -> Option<ManifestState> {
        let u64_at = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(body.get(i..i + 8)?.try_into().ok()?))
        };
        let (last, durable_pos, first) = (u64_at(0)?, u64_at(8)?, u64_at(16)?);
        let n = u64::from(u32::from_le_bytes(body.get(24..28)?.try_into().ok()?));
        let segments = match n {
            0 => {
                return Some(ManifestState {
                    last,
                    durable_pos,
                    segments: None,
                })
            }
            n if n == u64::from(RUNS) => decode_runs(body)?,
            n => decode_bitmap(body, first, last, n)?,
        };
        if segments.first() != Some(&first) || segments.last() != Some(&last) {
            return None;
        }
        Some(ManifestState {
            last,
            durable_pos,
            segments: Some(segments),
        })
    }
}

/// Runs of consecutive ids in `ids`: `(first, length)`. A run longer than `u32::MAX` ids is
/// split (it cannot occur: a spool holds a few hundred segments).
fn runs_of(ids: &BTreeSet<u64>) -> Vec<(u64, u32)> {
    let mut runs: Vec<(u64, u32)> = Vec::new();
    for id in ids {
        match runs.last_mut() {
            Some((start, len))
                if *len < u32::MAX && start.checked_add(u64::from(*len)) == Some(*id) =>
            {
                *len += 1
            }
            _ => runs.push((*id, 1)),
        }
    }
    runs
}

/// The ids of a runs body; `None` when they do not hold together (overlapping or unordered
/// runs, a count past the slot).
fn decode_runs(body: &[u8]) -> Option<BTreeSet<u64>> {
    let n_runs = u32::from_le_bytes(body.get(FIXED_LEN..FIXED_LEN + 4)?.try_into().ok()?);
    let n_runs = usize::try_from(n_runs).ok().filter(|n| *n <= RUNS_MAX)?;
    let mut out = BTreeSet::new();
    let mut next_min = 0u64;
    for i in 0..n_runs {
        let at = FIXED_LEN + 4 + i * RUN_LEN;
        let start = u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?);
        let len = u32::from_le_bytes(body.get(at + 8..at + RUN_LEN)?.try_into().ok()?);
        let end = start.checked_add(u64::from(len))?;
        if len == 0 || start < next_min || out.len() + len as usize > HELD_MAX {
            return None;
        }
        out.extend(start..end);
        next_min = end;
    }
    Some(out)
}

/// The ids of a bitmap body (the first release's layout).
fn decode_bitmap(body: &[u8], first: u64, last: u64, n: u64) -> Option<BTreeSet<u64>> {
    if n > LISTED_SPAN_MAX || first.checked_add(n - 1) != Some(last) {
        return None;
    }
    let bitmap = body.get(FIXED_LEN..FIXED_LEN + n.div_ceil(8) as usize)?;
    Some(
        (0..n)
            .filter(|i| bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0)
            .map(|i| first + i)
            .collect(),
    )
}

/// Recording a state failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ManifestError {
    /// The disk (or the slot file) refused.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// The state does not fit a slot.
    #[error(transparent)]
    TooMany(#[from] TooManyRuns),
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
    ) -> Result<Manifest, ManifestError> {
        let body = state.encode()?;
        let slots = SlotFile::create(disk, &Manifest::path(dir), MANIFEST_KIND, &body)?;
        Ok(Manifest { slots, state })
    }

    /// What it last recorded.
    pub(crate) fn state(&self) -> &ManifestState {
        &self.state
    }

    /// Records `state` (one slot write and `fdatasync`) unless it is the one recorded.
    pub(crate) fn write(&mut self, state: ManifestState) -> Result<(), ManifestError> {
        if state != self.state {
            self.slots.write(&state.encode()?)?;
            self.state = state;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of the first release's layouts: the bitmap of `held` (all in `first..=last`), or
    /// with `n = 0` the last segment alone.
    fn first_release_body(held: &[u64], durable_pos: u64, wide: bool) -> Vec<u8> {
        let (first, last) = (held[0], held[held.len() - 1]);
        let mut out = Vec::new();
        for v in [last, durable_pos, first] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        if wide {
            out.extend_from_slice(&0u32.to_le_bytes());
            return out;
        }
        let n = last - first + 1;
        out.extend_from_slice(&(n as u32).to_le_bytes());
        let mut bitmap = vec![0u8; n.div_ceil(8) as usize];
        for id in held {
            let i = id - first;
            bitmap[(i / 8) as usize] |= 1 << (i % 8);
        }
        out.extend_from_slice(&bitmap);
        out
    }

    #[test]
    fn manifest_states_round_trip_whatever_their_span_and_never_overflow_silently() {
        // Checks the body layout: listed segments (gaps included) round-trip; ids spanning more
        // than the first release's bitmap (which then recorded the last segment alone, so a
        // deleted older segment went unnoticed) still list every segment; the most segments a
        // configuration allows, each a run of its own, fit; one run more than a slot lists is
        // a typed error instead of a shorter list; the first release's layouts still decode;
        // bodies that do not hold together are refused.
        let listed = BTreeSet::from([3, 4, 7, 9]);
        let state = ManifestState::new(&listed, 1234).unwrap();
        assert_eq!(state.segments.as_ref(), Some(&listed));
        let body = state.encode().unwrap();
        assert_eq!(ManifestState::decode(&body), Some(state.clone()));
        assert!(state.holds(7) && !state.holds(5) && !state.holds(10));
        let wide = BTreeSet::from([1, 2, 1 + LISTED_SPAN_MAX, 5 + LISTED_SPAN_MAX * 4]);
        let state = ManifestState::new(&wide, 64).unwrap();
        let decoded = ManifestState::decode(&state.encode().unwrap()).unwrap();
        assert_eq!(decoded.expected(), wide);
        assert!(decoded.holds(1) && decoded.holds(2) && !decoded.holds(3));
        let sparse: BTreeSet<u64> = (0..SEGMENTS_LISTED_MAX + 64).map(|i| i * 2).collect();
        let state = ManifestState::new(&sparse, 9).unwrap();
        assert_eq!(
            ManifestState::decode(&state.encode().unwrap()),
            Some(state.clone())
        );
        let contiguous: BTreeSet<u64> = (10..10 + 40_000).collect();
        let state = ManifestState::new(&contiguous, 9).unwrap();
        assert_eq!(
            ManifestState::decode(&state.encode().unwrap()),
            Some(state.clone())
        );
        let too_many: BTreeSet<u64> = (0..=RUNS_MAX as u64).map(|i| i * 2).collect();
        assert_eq!(
            ManifestState::new(&too_many, 9).unwrap().encode(),
            Err(TooManyRuns {
                n_segments: RUNS_MAX + 1,
                n_runs: RUNS_MAX + 1
            })
        );
        // The first release's layouts.
        let old = first_release_body(&[3, 4, 7, 9], 77, false);
        assert_eq!(ManifestState::decode(&old), ManifestState::new(&listed, 77));
        let old_wide = ManifestState::decode(&first_release_body(&[3, 9], 77, true)).unwrap();
        assert_eq!(old_wide.expected(), BTreeSet::from([9]));
        let mut bad = first_release_body(&[3, 4, 7, 9], 1, false);
        bad[28] &= !1; // first segment's bit
        assert_eq!(ManifestState::decode(&bad), None);
        // Runs that do not hold together: the last id not the recorded last, runs out of order
        // or overlapping, an empty run, a count past what a slot holds.
        let good = ManifestState::new(&listed, 1).unwrap().encode().unwrap();
        let mut bad = good.clone();
        bad[0] = 2; // last before first
        assert_eq!(ManifestState::decode(&bad), None);
        let run_at = |i: usize| FIXED_LEN + 4 + i * RUN_LEN;
        let mut bad = good.clone();
        bad[run_at(1)] = 2; // second run (7) starts at 2, inside the first (3..5)
        assert_eq!(ManifestState::decode(&bad), None);
        let mut bad = good.clone();
        bad[run_at(0) + 8] = 0; // an empty run
        assert_eq!(ManifestState::decode(&bad), None);
        let mut bad = good.clone();
        bad[FIXED_LEN..FIXED_LEN + 4].copy_from_slice(&(RUNS_MAX as u32 + 1).to_le_bytes());
        assert_eq!(ManifestState::decode(&bad), None);
        let mut huge = good.clone();
        huge[run_at(2) + 8..run_at(2) + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(ManifestState::decode(&huge), None);
        assert_eq!(ManifestState::decode(&[0u8; 10]), None);
        // A slot body is zero-padded: the state decodes from the full body too.
        let mut padded = ManifestState::new(&listed, 9).unwrap().encode().unwrap();
        padded.resize(MANIFEST_KIND.slot_len - SLOT_OVERHEAD, 0);
        assert_eq!(
            ManifestState::decode(&padded),
            ManifestState::new(&listed, 9)
        );
    }
}
