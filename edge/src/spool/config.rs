//! The spool's configuration: the `[spool]` section of `edge.toml`. Defaults live here.

use super::manifest::SEGMENTS_LISTED_MAX;
use serde::Deserialize;

/// What the spool does when a new reading would exceed its disk budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Evict the oldest never-sent readings (a whole segment's worth at a time) and declare them
    /// with `Dropped { reason: SpoolFull }` records.
    DropOldest,
    /// Refuse the reading with [`crate::spool::Rejected::Full`]; no seq is issued, and the
    /// caller waits for acknowledgements (or expiry) to free space.
    Block,
}

/// Bounds and timings of the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Disk budget: segment files (preallocated) never take more than this between two inputs.
    /// Readings may fill all segments but one; the last is kept for declarations, acks, marks
    /// and relocation, and the core frees a segment whenever that last one comes into use.
    pub spool_bytes_max: u64,
    /// Size of one segment file; space is reclaimed a whole segment at a time.
    pub segment_bytes_max: u64,
    /// Readings older than this that were never sent are expired and declared with
    /// `Dropped { reason: Expired }`. Ages are measured on the spool clock: the monotonic clock
    /// while the agent runs, plus at most `downtime_ms_max` per restart (see `spool::core`).
    pub record_age_ms_max: u64,
    /// Across a restart, record ages grow by the time the wall clock says the agent was down,
    /// but by at most this much: a wall clock stepped forward by NTP (a Pi without a
    /// battery-backed clock) must not expire every unsent reading at once. A wall clock that
    /// went back counts nothing. Downtime beyond this bound is not counted towards ages.
    pub downtime_ms_max: u64,
    /// Appended readings are made durable (`fdatasync`) at most this long after their append;
    /// a power cut loses at most this interval of readings, and declares them. 0 syncs every
    /// append.
    pub sync_interval_ms: u64,
    /// What happens when the budget is exhausted.
    pub policy: FullPolicy,
    /// Largest encoded reading accepted.
    pub record_bytes_max: u32,
    /// Sensors of the current boot epoch the spool tracks at most.
    pub sensors_max: u32,
    /// Seqs reserved (durably) per sensor ahead of use. A power cut declares lost every seq up
    /// to the reservation, so this bounds how far a declaration can overstate the loss.
    pub seq_reserve_block: u64,
    /// Before records are handed to the uplink, a durable *send mark* says how far a stream may
    /// have been sent; it is advanced this many bytes of records ahead, so one sync covers many
    /// batches. After a crash, records below the mark are resent first and never evicted or
    /// expired (declaring them could overlap a delivery the broker holds).
    pub send_ahead_bytes_max: u64,
    /// Buffered frames are written (not synced) once they reach this size.
    pub write_buffer_bytes_max: u64,
    /// After its disk failed (full, or a write or sync refused), a spool is reopened after this
    /// wait, doubling per consecutive failure (with jitter) up to `retry_backoff_max_ms`.
    pub retry_backoff_initial_ms: u64,
    /// Longest wait between two reopen attempts of a failed spool.
    pub retry_backoff_max_ms: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            spool_bytes_max: 64 << 20,
            segment_bytes_max: 1 << 20,
            record_age_ms_max: 7 * 24 * 3600 * 1000,
            downtime_ms_max: 3600 * 1000,
            retry_backoff_initial_ms: 1000,
            retry_backoff_max_ms: 60_000,
            sync_interval_ms: 1000,
            policy: FullPolicy::DropOldest,
            record_bytes_max: 128 << 10,
            sensors_max: 64,
            seq_reserve_block: 256,
            send_ahead_bytes_max: 256 << 10,
            write_buffer_bytes_max: 64 << 10,
        }
    }
}

/// Smallest segment accepted.
pub const SEGMENT_BYTES_MIN: u64 = 4096;

impl SpoolConfig {
    /// Segment files the budget allows.
    pub fn n_segments_max(&self) -> u64 {
        self.spool_bytes_max / self.segment_bytes_max.max(1)
    }

    /// Checks the configuration; returns every problem, not just the first.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.segment_bytes_max < SEGMENT_BYTES_MIN {
            problems.push(format!(
                "spool.segment_bytes_max is {}, must be at least {SEGMENT_BYTES_MIN}",
                self.segment_bytes_max
            ));
        }
        if self.n_segments_max() < 3 {
            problems.push(format!(
                "spool.spool_bytes_max ({}) must hold at least 3 segments of {} bytes",
                self.spool_bytes_max, self.segment_bytes_max
            ));
        }
        if self.n_segments_max() > SEGMENTS_LISTED_MAX {
            problems.push(format!(
                "spool.spool_bytes_max ({}) holds {} segments of {} bytes; the spool's manifest \
                 lists at most {SEGMENTS_LISTED_MAX}: raise segment_bytes_max",
                self.spool_bytes_max,
                self.n_segments_max(),
                self.segment_bytes_max
            ));
        }
        if u64::from(self.record_bytes_max) * 4 > self.segment_bytes_max {
            problems.push(format!(
                "spool.record_bytes_max ({}) must be at most a quarter of segment_bytes_max ({})",
                self.record_bytes_max, self.segment_bytes_max
            ));
        }
        if self.record_bytes_max < 64 {
            problems.push("spool.record_bytes_max must be at least 64".into());
        }
        for (name, value) in [
            ("record_age_ms_max", self.record_age_ms_max),
            ("seq_reserve_block", self.seq_reserve_block),
            ("send_ahead_bytes_max", self.send_ahead_bytes_max),
            ("write_buffer_bytes_max", self.write_buffer_bytes_max),
            ("sensors_max", u64::from(self.sensors_max)),
            ("retry_backoff_initial_ms", self.retry_backoff_initial_ms),
        ] {
            if value == 0 {
                problems.push(format!("spool.{name} must be positive"));
            }
        }
        if self.retry_backoff_max_ms < self.retry_backoff_initial_ms {
            problems.push(format!(
                "spool.retry_backoff_max_ms ({}) must be at least retry_backoff_initial_ms ({})",
                self.retry_backoff_max_ms, self.retry_backoff_initial_ms
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_all_reported() {
        // Checks that the defaults are valid and that validation lists every problem at once.
        assert_eq!(SpoolConfig::default().validate(), Ok(()));
        let bad = SpoolConfig {
            segment_bytes_max: 100,
            spool_bytes_max: 100,
            seq_reserve_block: 0,
            ..SpoolConfig::default()
        };
        let problems = bad.validate().unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        // The manifest lists every segment the budget allows, never more.
        let most = SpoolConfig {
            spool_bytes_max: SEGMENTS_LISTED_MAX * 4096,
            segment_bytes_max: 4096,
            record_bytes_max: 1024,
            ..SpoolConfig::default()
        };
        assert_eq!(most.validate(), Ok(()));
        let over = SpoolConfig {
            spool_bytes_max: most.spool_bytes_max + 4096,
            ..most
        };
        let problems = over.validate().unwrap_err();
        assert!(problems[0].contains("manifest"), "{problems:?}");
    }
}
