//! The shell between lines and the sink: feeds bytes to the [`LineSplitter`], parses each
//! line and offers, rejects or skips it, one at a time, so the agent's backpressure reaches
//! the reader. Also [`read_stream`], which reads any blocking [`Read`] (stdin, a pipe, a test's
//! reader) to its end.

use super::lines::{LineSplitter, Piece};
use super::parse::{LineParser, Parsed};
use crate::source::{SinkClosed, SourceContext};
use sluice_proto::os::run_blocking;
use std::io::{self, Read};
use tracing::warn;

/// Bytes read from the input at once.
pub(crate) const CHUNK_BYTES: usize = 64 << 10;

/// Why reading stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Halt {
    /// The agent is stopping.
    SinkClosed,
    /// Reading failed (the message names the file and the operation).
    Failed(String),
}

impl From<SinkClosed> for Halt {
    fn from(_: SinkClosed) -> Self {
        Halt::SinkClosed
    }
}

/// Lines in, readings out.
#[derive(Debug)]
pub(crate) struct Intake {
    /// The splitter; its offset is the input position.
    pub(crate) splitter: LineSplitter,
    parser: LineParser,
    /// The input's name in messages (the path, or `stdin`).
    input: String,
    line_bytes_max: usize,
    /// A fallback note was logged already (they are logged once per source value).
    noted: bool,
}

impl Intake {
    /// An intake for `input` (its name in messages).
    pub(crate) fn new(parser: LineParser, input: String, line_bytes_max: usize) -> Self {
        Self {
            splitter: LineSplitter::new(line_bytes_max),
            parser,
            input,
            line_bytes_max,
            noted: false,
        }
    }

    /// The input's name in messages.
    pub(crate) fn input(&self) -> &str {
        &self.input
    }

    /// Feeds the next bytes of the input; handles every line they complete.
    pub(crate) async fn feed(
        &mut self,
        chunk: &[u8],
        context: &SourceContext,
    ) -> Result<(), SinkClosed> {
        let mut rest = chunk;
        while !rest.is_empty() {
            let (used, piece) = self.splitter.split(rest);
            rest = &rest[used..];
            if let Some(piece) = piece {
                self.handle(piece, context).await?;
            }
        }
        Ok(())
    }

    /// The input ended: handles its last line if it had no newline.
    pub(crate) async fn finish(&mut self, context: &SourceContext) -> Result<(), SinkClosed> {
        match self.splitter.finish() {
            Some(piece) => self.handle(piece, context).await,
            None => Ok(()),
        }
    }

    async fn handle(&mut self, piece: Piece, context: &SourceContext) -> Result<(), SinkClosed> {
        let sink = &context.sink;
        let (at, bytes) = match piece {
            Piece::TooLong { at } => {
                sink.reject(
                    "line_too_long",
                    format_args!(
                        "{at} of {} is longer than {} bytes (line_bytes_max); skipped",
                        self.input, self.line_bytes_max
                    ),
                );
                return Ok(());
            }
            Piece::Line { at, bytes } => (at, bytes),
        };
        let wall = context.env.clock.wall();
        match self.parser.parse(bytes, at, &self.input, wall) {
            Parsed::Blank => {}
            Parsed::Rejected { reason, detail } => sink.reject(reason, detail),
            Parsed::Reading { reading, note } => {
                if let Some(note) = note.filter(|_| !self.noted) {
                    self.noted = true;
                    warn!(source = sink.name(), %note, "configured field unusable, fallback used (logged once)");
                }
                sink.count_read();
                // A refusal is counted and logged by the agent; the line is handled either way.
                sink.offer(reading).await?;
            }
        }
        Ok(())
    }
}

/// Reads `reader` to its end, handling every line; the last line needs no newline. Each read
/// runs through `run_blocking`. Returns `Ok` at the end of the input. The reader is taken out of
/// `slot` while a read runs and put back after it, so a failed run can be retried.
pub(crate) async fn read_stream(
    slot: &mut Option<Box<dyn Read + Send>>,
    intake: &mut Intake,
    context: &SourceContext,
) -> Result<(), Halt> {
    let mut buffer = vec![0; CHUNK_BYTES];
    loop {
        let Some(mut reader) = slot.take() else {
            return Err(Halt::Failed(format!(
                "{} was lost by an interrupted read",
                intake.input()
            )));
        };
        let (reader, returned, result) = run_blocking(context.env.blocking, move || {
            let result = read_retrying(&mut reader, &mut buffer);
            (reader, buffer, result)
        })
        .await;
        *slot = Some(reader);
        buffer = returned;
        let n = result.map_err(|e| Halt::Failed(format!("read {}: {e}", intake.input())))?;
        if n == 0 {
            intake.finish(context).await?;
            return Ok(());
        }
        intake.feed(&buffer[..n], context).await?;
    }
}

/// One `read`, retried while it is interrupted by a signal.
fn read_retrying(reader: &mut dyn Read, buffer: &mut [u8]) -> io::Result<usize> {
    loop {
        match reader.read(buffer) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}
