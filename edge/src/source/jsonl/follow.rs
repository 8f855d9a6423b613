//! Following a file by polling: read to the end, then every `poll_interval_ms` look again.
//!
//! - Growth: new bytes are read in chunks of [`CHUNK_BYTES`] and handled line by line.
//! - Rotation (the path names another file: device or inode changed): the open file is read to
//!   its end, its last line is handled even without a newline, and the new file is read from its
//!   beginning. A path that names nothing keeps the open file (it may have been renamed and its
//!   successor not yet created).
//! - Truncation (copytruncate: the file is shorter than the read position): reading starts
//!   again at 0. Lines written between the copy and the truncation are lost (that is
//!   copytruncate's race, not ours); a file truncated and regrown past the read position
//!   between two polls is not noticed.
//! - A path that names nothing yet is waited for; one that names a FIFO, socket, device or
//!   directory is a failure naming the path and what it is (the source is restarted after a
//!   backoff, and keeps failing until it is fixed). Opening never blocks, even on a FIFO
//!   nobody writes to.
//! - The position is checkpointed (see `position.rs`) every `checkpoint_interval_ms` while it
//!   moves, and at once when a file is opened anywhere but at a checkpoint or found truncated,
//!   so `start_at = "end"` is applied once and not again after a crash.
//!
//! Files are told apart by device and inode only: after a restart, a new file that reuses the
//! checkpointed inode and is at least as long is taken for the old one (while a file is open its
//! inode cannot be reused, so this needs the old file deleted while the agent was down).
//!
//! Not done: finding rotated files by name (`app.log.1`) after a restart, inotify.

use super::intake::{Halt, Intake, CHUNK_BYTES};
use super::lines::LineAt;
use super::position::{self, start_of, FileIdentity, Position, Start};
use super::StartAt;
use crate::source::SourceContext;
use sluice_proto::os::{open_regular_file, run_blocking};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How a followed file is read.
#[derive(Debug, Clone)]
pub(crate) struct FollowSettings {
    /// The file.
    pub(crate) path: PathBuf,
    /// Where the first file is read from when there is no usable checkpoint.
    pub(crate) start_at: StartAt,
    /// How often an idle file is looked at again.
    pub(crate) poll_interval: Duration,
    /// How often the position is checkpointed while it moves.
    pub(crate) checkpoint_interval: Duration,
    /// The longest line; also how far back `start_at = "end"` looks for a line start.
    pub(crate) line_bytes_max: usize,
}

/// The open file.
#[derive(Debug)]
struct OpenFile {
    file: Arc<File>,
    identity: FileIdentity,
}

/// What the path names now, compared with the open file.
enum PathState {
    /// The open file, now this long.
    Same { size: u64 },
    /// Another file.
    Replaced,
    /// Nothing.
    Missing,
}

/// Follows one file. Kept across runs of the source: after a failed run it reopens the file
/// and resumes after the last line handled.
#[derive(Debug)]
pub(crate) struct Follower {
    settings: FollowSettings,
    intake: Intake,
    file: Option<OpenFile>,
    /// Where to resume when a file is opened: a loaded checkpoint, or the last line handled
    /// before a run failed.
    resume: Option<Position>,
    /// The checkpoint was loaded (once per source value).
    loaded: bool,
    /// No attempt to open the path was made yet: `start_at` applies to what it finds.
    first_open: bool,
    /// The position last checkpointed.
    saved: Option<Position>,
    /// When a checkpoint was last attempted.
    saved_at: Option<Instant>,
    /// Checkpoint at the next occasion, whatever the interval.
    checkpoint_now: bool,
    buffer: Vec<u8>,
}

impl Follower {
    /// A follower of `settings.path` handing lines to `intake`.
    pub(crate) fn new(settings: FollowSettings, intake: Intake) -> Self {
        Self {
            settings,
            intake,
            file: None,
            resume: None,
            loaded: false,
            first_open: true,
            saved: None,
            saved_at: None,
            checkpoint_now: false,
            buffer: Vec::new(),
        }
    }

    /// Follows the file until the sink closes or reading fails.
    pub(crate) async fn run(&mut self, context: &SourceContext) -> Result<(), Halt> {
        if !self.loaded {
            self.loaded = true;
            let dir = context.state_dir.clone();
            match run_blocking(context.env.blocking, move || position::load(&dir)).await {
                Ok(saved) => self.resume = saved,
                Err(error) => warn!(
                    source = context.sink.name(),
                    %error,
                    "position checkpoint unusable; reading as start_at says"
                ),
            }
            self.saved = self.resume;
        }
        let result = self.follow(context).await;
        if let Err(Halt::Failed(_)) = &result {
            // Reopen on the next run and resume after the last line handled.
            self.resume = self.cursor().or(self.resume);
            self.file = None;
        }
        result
    }

    async fn follow(&mut self, context: &SourceContext) -> Result<(), Halt> {
        loop {
            if self.file.is_none() && !self.open(context).await? {
                self.idle(context).await?;
                continue;
            }
            if self.read_chunk(context).await? > 0 {
                self.checkpoint_if_due(context).await?;
                continue;
            }
            match self.path_state(context).await? {
                PathState::Same { size } if size < self.intake.splitter.offset() => {
                    info!(source = context.sink.name(), path = %self.settings.path.display(), size, "file truncated; reading it again from its beginning");
                    self.intake.splitter.restart(LineAt::START);
                    // The old position lies beyond the new end: replace it at once.
                    self.checkpoint_now = true;
                    continue;
                }
                // Written between the read and the look: read on at once.
                PathState::Same { size } if size > self.intake.splitter.offset() => continue,
                PathState::Same { .. } | PathState::Missing => {}
                PathState::Replaced => {
                    self.finish_replaced(context).await?;
                    continue;
                }
            }
            self.idle(context).await?;
        }
    }

    /// Where reading resumes without loss: the open file and its first line not yet handled.
    fn cursor(&self) -> Option<Position> {
        let open = self.file.as_ref()?;
        Some(Position::new(
            open.identity,
            self.intake.splitter.line_start(),
        ))
    }

    /// Checkpoints if due, then waits a poll interval.
    async fn idle(&mut self, context: &SourceContext) -> Result<(), Halt> {
        self.checkpoint_if_due(context).await?;
        tokio::time::sleep(self.settings.poll_interval).await;
        Ok(())
    }

    /// Opens the path; `Ok(false)` if it names nothing yet. On failure nothing changes, so the
    /// next run decides the start the same way.
    async fn open(&mut self, context: &SourceContext) -> Result<bool, Halt> {
        let path = self.settings.path.clone();
        let opened = run_blocking(context.env.blocking, move || {
            // A FIFO would block a plain open until a writer came, possibly forever, and
            // read_at fails on pipes and sockets: only regular files are opened, without
            // blocking, and anything else fails the run saying what it is.
            let file = open_regular_file(&path).map_err(|e| match e.kind() {
                io::ErrorKind::InvalidInput => io::Error::new(
                    e.kind(),
                    format!("{e} (use path = \"-\" and a pipe to stdin)"),
                ),
                _ => e,
            })?;
            let metadata = file.metadata()?;
            Ok::<_, io::Error>((file, FileIdentity::of(&metadata), metadata.len()))
        })
        .await;
        let (file, identity, size) = match opened {
            Ok(opened) => opened,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.first_open = false;
                return Ok(false);
            }
            Err(e) => return Err(self.failed("open", &e)),
        };
        let file = Arc::new(file);
        let start_at = self.settings.start_at;
        let start = start_of(self.resume, identity, size, self.first_open, start_at);
        let at = match start {
            Start::Resume(at) => at,
            Start::Beginning => LineAt::START,
            Start::End => {
                // One byte more than a line, so a longest line's newline before it is in reach.
                let (file, window) = (file.clone(), self.settings.line_bytes_max + 1);
                let found = run_blocking(context.env.blocking, move || {
                    last_line_start(&file, size, window)
                })
                .await;
                let offset = found.map_err(|e| self.failed("read", &e))?;
                LineAt {
                    number: None,
                    offset,
                }
            }
        };
        self.first_open = false;
        self.resume = None;
        // Anywhere but at a checkpoint, pin the start at once (start_at = "end" must not be
        // applied again after a crash, nor a rotation forgotten).
        self.checkpoint_now = !matches!(start, Start::Resume(_));
        info!(source = context.sink.name(), path = %self.settings.path.display(), offset = at.offset, ?start, "following file");
        self.intake.splitter.restart(at);
        self.file = Some(OpenFile { file, identity });
        Ok(true)
    }

    /// Reads the next chunk of the open file and handles its lines; 0 at the end of the file.
    async fn read_chunk(&mut self, context: &SourceContext) -> Result<usize, Halt> {
        let Some(open) = &self.file else {
            return Ok(0);
        };
        let file = open.file.clone();
        let offset = self.intake.splitter.offset();
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.resize(CHUNK_BYTES, 0);
        let (buffer, result) = run_blocking(context.env.blocking, move || {
            let result = read_at_retrying(&file, &mut buffer, offset);
            (buffer, result)
        })
        .await;
        self.buffer = buffer;
        let n = result.map_err(|e| self.failed("read", &e))?;
        self.intake.feed(&self.buffer[..n], context).await?;
        Ok(n)
    }

    async fn path_state(&self, context: &SourceContext) -> Result<PathState, Halt> {
        let Some(open) = &self.file else {
            return Ok(PathState::Missing);
        };
        let path = self.settings.path.clone();
        match run_blocking(context.env.blocking, move || std::fs::metadata(path)).await {
            Ok(metadata) if FileIdentity::of(&metadata) == open.identity => Ok(PathState::Same {
                size: metadata.len(),
            }),
            Ok(_) => Ok(PathState::Replaced),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(PathState::Missing),
            Err(e) => Err(self.failed("stat", &e)),
        }
    }

    /// The path names another file: reads the open one to its end (its last line needs no
    /// newline), then closes it; the next open reads the new file from its beginning.
    async fn finish_replaced(&mut self, context: &SourceContext) -> Result<(), Halt> {
        while self.read_chunk(context).await? > 0 {}
        self.intake.finish(context).await?;
        info!(source = context.sink.name(), path = %self.settings.path.display(), "file replaced (rotated); the old one was read to its end");
        self.file = None;
        self.resume = None;
        Ok(())
    }

    /// Checkpoints the position if it moved and the interval passed (or one is due at once):
    /// first waits until everything offered is durable, then writes the position. A failed
    /// write is logged and retried after an interval; it only widens what a crash re-reads.
    async fn checkpoint_if_due(&mut self, context: &SourceContext) -> Result<(), Halt> {
        let Some(position) = self.cursor() else {
            return Ok(());
        };
        let now = context.env.clock.now();
        let interval_passed = self
            .saved_at
            .is_none_or(|t| now.duration_since(t) >= self.settings.checkpoint_interval);
        if self.saved == Some(position) || !(self.checkpoint_now || interval_passed) {
            return Ok(());
        }
        context.sink.flush().await?;
        let dir = context.state_dir.clone();
        let written = run_blocking(context.env.blocking, move || {
            position::save(&dir, &position)
        })
        .await;
        self.saved_at = Some(context.env.clock.now());
        self.checkpoint_now = false;
        match written {
            Ok(()) => self.saved = Some(position),
            Err(error) => {
                warn!(source = context.sink.name(), %error, "position checkpoint failed; retrying later")
            }
        }
        Ok(())
    }

    fn failed(&self, op: &str, error: &io::Error) -> Halt {
        Halt::Failed(format!("{op} {}: {error}", self.settings.path.display()))
    }
}

/// One positional read, retried while it is interrupted by a signal.
fn read_at_retrying(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    loop {
        match file.read_at(buffer, offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Where the line after the last newline of the first `size` bytes of `file` starts, looking
/// back at most `window` bytes: so `start_at = "end"` does not begin in the middle of a line
/// being written. Without a newline in reach: 0 if the window covers the file, else `size` (the
/// line is too long anyway, and its tail is rejected).
fn last_line_start(file: &File, size: u64, window: usize) -> io::Result<u64> {
    let from = size.saturating_sub(window as u64);
    let mut tail = vec![0; (size - from) as usize];
    let mut filled = 0;
    while filled < tail.len() {
        match read_at_retrying(file, &mut tail[filled..], from + filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(match tail[..filled].iter().rposition(|&b| b == b'\n') {
        Some(idx) => from + idx as u64 + 1,
        None if from == 0 => 0,
        None => size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn check(content: &str, window: usize, expected: u64) {
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(content.as_bytes()).expect("write");
        let found = last_line_start(&file, content.len() as u64, window).expect("read");
        assert_eq!(found, expected, "{content:?} window {window}");
    }

    // start_at = "end" begins after the last newline, so a line being written is read whole.
    #[test]
    fn end_starts_after_the_last_newline() {
        check("", 8, 0);
        check("a\nb\n", 8, 4);
        check("a\nbc", 8, 2);
        check("abc", 8, 0);
        check("a\nbcdefghij", 4, 11);
        check("a\nbcd", 4, 2);
    }
}
