//! The filters this source's persistent session holds at the broker, remembered in
//! `<state_dir>/subscriptions.json`. A broker keeps a persistent session's subscriptions across
//! reconnects and restarts, and offers no way to list them; without this record a filter that a
//! newer configuration dropped would keep delivering (as `unrouted_topic`) forever.
//!
//! Before subscribing, the source writes the union of the remembered and the configured filters
//! (so a crash never forgets a filter the broker may hold), unsubscribes the remembered ones the
//! configuration no longer has, and writes the configured ones alone once the broker confirmed.
//! The file is tiny and written only at connect time, so it is written synchronously.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The record's file name in the source's state directory.
pub(super) const FILE_NAME: &str = "subscriptions.json";

/// The remembered filters (none when the file does not exist); an unreadable record is an error
/// the caller reports and treats as empty.
pub(super) fn load(state_dir: &Path) -> Result<BTreeSet<String>, String> {
    let path = state_dir.join(FILE_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not a list of filters: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Replaces the record with `filters`: a temp file, fsync, rename, fsync of the directory.
pub(super) fn store(state_dir: &Path, filters: &BTreeSet<String>) -> Result<(), String> {
    let path = state_dir.join(FILE_NAME);
    let temp: PathBuf = state_dir.join(format!("{FILE_NAME}.tmp"));
    let write = || -> std::io::Result<()> {
        let text = serde_json::to_vec(filters).map_err(std::io::Error::other)?;
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)?;
        std::fs::File::open(state_dir)?.sync_all()
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_a_missing_one_is_empty() {
        // Checks load/store, and that no file means no remembered filter.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(load(dir.path()), Ok(BTreeSet::new()));
        let filters: BTreeSet<String> = ["a/#".to_owned(), "b/+/c".to_owned()].into();
        assert_eq!(store(dir.path(), &filters), Ok(()));
        assert_eq!(load(dir.path()), Ok(filters));
    }

    #[test]
    fn a_damaged_record_is_an_error() {
        // Checks that garbage in the file is reported, not taken for filters.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap_or_else(|e| panic!("{e}"));
        assert!(load(dir.path()).is_err());
    }
}
