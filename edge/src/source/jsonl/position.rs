//! The position checkpoint, `<state_dir>/position.json`: which file (device and inode) and how
//! far into it every line was handled. It is written only after the sink's `flush` returned, so
//! every line before the position is durable in the spool; it is written atomically (temporary
//! file, fsync, rename, fsync of the directory), so a crash leaves the old or the new position,
//! never a torn one. Lines after the position may be in the spool too: they are read again
//! after a crash (at-least-once from the file to the spool).
//!
//! Also here: where reading of a newly opened file starts ([`start_of`]).

use super::lines::LineAt;
use super::StartAt;
use serde::{Deserialize, Serialize};
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The checkpoint's file name in the source's state directory.
pub(crate) const POSITION_FILE: &str = "position.json";
const POSITION_TEMP_FILE: &str = "position.json.tmp";
/// A larger checkpoint file is not ours.
const POSITION_BYTES_MAX: u64 = 4096;

/// Which file a path names: it changes when the file is replaced (rotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    /// The device holding the file.
    pub(crate) device: u64,
    /// The file's inode on that device.
    pub(crate) inode: u64,
}

impl FileIdentity {
    /// The identity of the file `metadata` describes.
    pub(crate) fn of(metadata: &Metadata) -> Self {
        Self {
            device: metadata.dev(),
            inode: metadata.ino(),
        }
    }
}

/// A place in a file: everything before `offset` was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Position {
    /// The file's device.
    pub(crate) device: u64,
    /// The file's inode.
    pub(crate) inode: u64,
    /// The byte offset of the first line not yet handled.
    pub(crate) offset: u64,
    /// That line's 1-based number, when known.
    #[serde(default)]
    pub(crate) line: Option<u64>,
}

impl Position {
    /// The position `at` of the file `identity`.
    pub(crate) fn new(identity: FileIdentity, at: LineAt) -> Self {
        Self {
            device: identity.device,
            inode: identity.inode,
            offset: at.offset,
            line: at.number,
        }
    }

    /// The file it is in.
    pub(crate) fn identity(&self) -> FileIdentity {
        FileIdentity {
            device: self.device,
            inode: self.inode,
        }
    }

    /// The line it points at.
    pub(crate) fn line_at(&self) -> LineAt {
        LineAt {
            number: self.line,
            offset: self.offset,
        }
    }
}

/// Where reading of a newly opened file starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// At a position handled before (a checkpoint, or where a failed run stopped).
    Resume(LineAt),
    /// At the first byte.
    Beginning,
    /// After the last complete line.
    End,
}

/// Where reading of a newly opened file `identity` of `size` bytes starts: at `resume` if it is
/// a place in this file; otherwise by `start_at` if this is the file found at the source's
/// first attempt to open its path; otherwise (a file that appeared later, or replaced the one
/// read before) at its beginning, since all of it was written after the source started.
pub(crate) fn start_of(
    resume: Option<Position>,
    identity: FileIdentity,
    size: u64,
    first_open: bool,
    start_at: StartAt,
) -> Start {
    match resume {
        Some(p) if p.identity() == identity && p.offset <= size => Start::Resume(p.line_at()),
        _ if first_open && start_at == StartAt::End => Start::End,
        _ => Start::Beginning,
    }
}

/// Reads the checkpoint in `dir`: `Ok(None)` if there is none, `Err` (a message) if it cannot
/// be read or is not a checkpoint.
pub(crate) fn load(dir: &Path) -> Result<Option<Position>, String> {
    let path = dir.join(POSITION_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("open {}: {e}", path.display())),
    };
    let mut text = Vec::new();
    file.take(POSITION_BYTES_MAX + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    if text.len() as u64 > POSITION_BYTES_MAX {
        return Err(format!(
            "{} is longer than {POSITION_BYTES_MAX} bytes",
            path.display()
        ));
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `position` as the checkpoint in `dir`, atomically and durably.
pub(crate) fn save(dir: &Path, position: &Position) -> Result<(), String> {
    let temp = dir.join(POSITION_TEMP_FILE);
    let target = dir.join(POSITION_FILE);
    let text = serde_json::to_vec(position).map_err(|e| format!("encode position: {e}"))?;
    let written = File::create(&temp).and_then(|mut file| {
        file.write_all(&text)?;
        file.sync_all()
    });
    written.map_err(|e| format!("write {}: {e}", temp.display()))?;
    std::fs::rename(&temp, &target)
        .map_err(|e| format!("rename {} to {}: {e}", temp.display(), target.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("fsync directory {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: FileIdentity = FileIdentity {
        device: 1,
        inode: 10,
    };
    const OTHER: FileIdentity = FileIdentity {
        device: 1,
        inode: 11,
    };

    fn at(offset: u64) -> Option<Position> {
        Some(Position::new(
            FILE,
            LineAt {
                number: Some(3),
                offset,
            },
        ))
    }

    fn check(
        resume: Option<Position>,
        identity: FileIdentity,
        size: u64,
        first_open: bool,
        start_at: StartAt,
        expected: Start,
    ) {
        assert_eq!(
            start_of(resume, identity, size, first_open, start_at),
            expected
        );
    }

    // A position in the same file resumes, even at its very end; start_at does not matter.
    #[test]
    fn same_file_resumes() {
        let resumed = Start::Resume(LineAt {
            number: Some(3),
            offset: 50,
        });
        check(at(50), FILE, 80, true, StartAt::End, resumed);
        check(at(50), FILE, 50, false, StartAt::Beginning, resumed);
    }

    // A position in another file, or beyond the end of a truncated one, is not used: the
    // first file follows start_at.
    #[test]
    fn stale_position_applies_start_at() {
        check(at(50), OTHER, 80, true, StartAt::End, Start::End);
        check(at(50), FILE, 49, true, StartAt::End, Start::End);
        check(
            at(50),
            OTHER,
            80,
            true,
            StartAt::Beginning,
            Start::Beginning,
        );
        check(None, FILE, 80, true, StartAt::End, Start::End);
    }

    // A file that appears later, or replaces the one read before, is read from its beginning
    // even with start_at = "end".
    #[test]
    fn later_files_start_at_the_beginning() {
        check(None, FILE, 80, false, StartAt::End, Start::Beginning);
        check(at(50), OTHER, 80, false, StartAt::End, Start::Beginning);
    }

    // A saved checkpoint loads back; a missing one is None; garbage is an error, not a panic.
    #[test]
    fn save_and_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(load(dir.path()), Ok(None));
        let position = Position::new(
            FILE,
            LineAt {
                number: None,
                offset: 7,
            },
        );
        save(dir.path(), &position).expect("save");
        assert_eq!(load(dir.path()), Ok(Some(position)));
        assert!(!dir.path().join(POSITION_TEMP_FILE).exists());
        std::fs::write(dir.path().join(POSITION_FILE), b"{\"device\":").expect("write");
        assert!(load(dir.path()).is_err());
        std::fs::write(dir.path().join(POSITION_FILE), vec![b' '; 5000]).expect("write");
        assert!(load(dir.path()).is_err());
    }
}
