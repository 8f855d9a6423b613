//! The `jsonl` source: security events and other records as JSON lines, from a file that is
//! followed across rotation and truncation, or from stdin. Made for scanner output
//! (`trivy fs --format json . | jq -c '.Results[]?'`) and runtime-security output (Falco's
//! `json_output`).
//!
//! Each non-blank line must be one JSON value (any value; objects are usual); it becomes a
//! reading with `Payload::Json` holding the line trimmed of surrounding whitespace. Its sensor is
//! the configured `sensor`, or the value of the top-level string field `sensor_field` when that
//! is a valid sensor id; its device time is the agent's wall clock, or the value of the
//! top-level field `time_field` (unix milliseconds, or an RFC 3339 time such as Falco's
//! `"time"`). A line that is not UTF-8 or not JSON is rejected as `malformed_json`, one longer
//! than `line_bytes_max` as `line_too_long` (skipped without being buffered); both are counted
//! and logged, and reading goes on. Blank lines are skipped silently.
//!
//! A file is polled every `poll_interval_ms` (see `follow.rs` for rotation, truncation and
//! files that do not exist yet). A last line without a newline waits for it, except at the end
//! of stdin or of a rotated file, where it is taken as it is.
//!
//! **Delivery guarantee.** At-least-once from the file into the spool: the position (device,
//! inode, offset) is checkpointed in `<state_dir>/position.json` every
//! `checkpoint_interval_ms` while lines are consumed, each time after `flush` made every
//! reading offered so far durable. After a crash or restart of the agent, the lines between
//! the last checkpoint and the crash are read and spooled again, as new readings with new seqs
//! (a consumer that must not see repeats deduplicates on content). A source run that fails
//! inside a running agent resumes after the last line it handled, repeating nothing. Lines
//! are lost only when the file is replaced or truncated faster than it is read, and, after a
//! restart, when the checkpointed file was rotated away meanwhile (its unread tail is not
//! looked for under other names). stdin has no position: what was read before a crash is gone
//! from the pipe.
//!
//! Not done here: validation of values (the agent does it), parsing JSON beyond the two
//! fields, reading compressed or rotated-away files, inotify.

mod follow;
mod intake;
mod lines;
mod parse;
mod position;
#[cfg(test)]
mod tests;

use super::{Source, SourceContext, SourceError};
use crate::validate::ValidationConfig;
use follow::{FollowSettings, Follower};
use intake::{read_stream, Halt, Intake};
use parse::LineParser;
use serde::Deserialize;
use sluice_proto::env::BoxFuture;
use sluice_proto::{SensorId, StreamName};
use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;
use tracing::info;

/// The `path` that means stdin.
pub const STDIN_PATH: &str = "-";
/// The largest `line_bytes_max` accepted (a line must fit in one frame).
pub const LINE_BYTES_LIMIT: u32 = 4 << 20;
/// The largest `poll_interval_ms` accepted.
pub const POLL_INTERVAL_MS_MAX: u64 = 60_000;
/// The largest `checkpoint_interval_ms` accepted.
pub const CHECKPOINT_INTERVAL_MS_MAX: u64 = 3_600_000;

/// `[[sources]] type = "jsonl"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// The source's name (unique in the config; a label in metrics).
    pub name: String,
    /// The file to follow, or `"-"` for stdin.
    pub path: PathBuf,
    /// The stream its readings go to.
    pub stream: StreamName,
    /// The sensor id of its readings (of lines without a usable `sensor_field`); default: the
    /// source's name.
    #[serde(default)]
    pub sensor: Option<String>,
    /// A top-level string field whose value, when it is a valid sensor id, is the line's sensor
    /// id (e.g. Falco's `"hostname"`).
    #[serde(default)]
    pub sensor_field: Option<String>,
    /// A top-level field holding the line's time as unix milliseconds or an RFC 3339 string
    /// (e.g. Falco's `"time"`); unset, missing or unreadable: the agent's clock.
    #[serde(default)]
    pub time_field: Option<String>,
    /// Where a file is read from when there is no usable checkpoint: `"beginning"` (default)
    /// or `"end"` (after its last complete line). Only for the file found at start; files that
    /// appear or replace it later are read from their beginning.
    #[serde(default = "default_start_at")]
    pub start_at: StartAt,
    /// How often a file that has no new lines (or does not exist yet) is looked at, ms.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// The longest line accepted, bytes (newline excluded); longer ones are rejected as
    /// `line_too_long`. Keep it within `spool.record_bytes_max`, or the spool refuses them.
    #[serde(default = "default_line_bytes_max")]
    pub line_bytes_max: u32,
    /// How often the file position is checkpointed while lines are consumed, ms. A crash
    /// re-reads at most about this much.
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// Plausibility bounds and limits.
    #[serde(default)]
    pub validation: ValidationConfig,
}

/// Where a file without a usable checkpoint is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    /// From its first byte: nothing already in the file is missed.
    Beginning,
    /// After its last complete line: only what is written from now on.
    End,
}

fn default_start_at() -> StartAt {
    StartAt::Beginning
}
fn default_poll_interval_ms() -> u64 {
    250
}
fn default_line_bytes_max() -> u32 {
    64 << 10
}
fn default_checkpoint_interval_ms() -> u64 {
    1_000
}

impl JsonlConfig {
    /// The streams its readings go to.
    pub fn streams(&self) -> Vec<StreamName> {
        vec![self.stream.clone()]
    }

    /// Adds every problem to `problems`, prefixed by `at`.
    pub fn validate(&self, at: &str, problems: &mut Vec<String>) {
        if self.path.as_os_str().is_empty() {
            problems.push(format!("{at}.path must name a file, or \"-\" for stdin"));
        }
        if let Err(reason) = self.sensor_id() {
            problems.push(format!("{at}.sensor: {reason}"));
        }
        for (key, field) in [
            ("sensor_field", &self.sensor_field),
            ("time_field", &self.time_field),
        ] {
            if field.as_deref() == Some("") {
                problems.push(format!(
                    "{at}.{key} must not be empty (leave it out instead)"
                ));
            }
        }
        for (key, value, max) in [
            (
                "poll_interval_ms",
                self.poll_interval_ms,
                POLL_INTERVAL_MS_MAX,
            ),
            (
                "checkpoint_interval_ms",
                self.checkpoint_interval_ms,
                CHECKPOINT_INTERVAL_MS_MAX,
            ),
            (
                "line_bytes_max",
                u64::from(self.line_bytes_max),
                u64::from(LINE_BYTES_LIMIT),
            ),
        ] {
            if !(1..=max).contains(&value) {
                problems.push(format!("{at}.{key} must be 1 to {max}, got {value}"));
            }
        }
    }

    /// Builds the source. Nothing is opened yet: a file that does not exist is waited for.
    pub fn build(&self) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(JsonlSource::new(self)?))
    }

    /// The sensor id of lines without a usable `sensor_field`.
    fn sensor_id(&self) -> Result<SensorId, String> {
        match &self.sensor {
            Some(sensor) => SensorId::new(sensor.as_str()).map_err(|e| e.to_string()),
            None => SensorId::new(self.name.as_str()).map_err(|e| {
                format!("unset, and the source name is not a valid sensor id ({e}); set sensor")
            }),
        }
    }

    fn is_stdin(&self) -> bool {
        self.path.as_os_str() == STDIN_PATH
    }

    /// The input's name in messages.
    fn input_name(&self) -> String {
        if self.is_stdin() {
            "stdin".to_owned()
        } else {
            self.path.display().to_string()
        }
    }

    fn intake(&self) -> Result<Intake, SourceError> {
        let parser = LineParser {
            stream: self.stream.clone(),
            sensor: self.sensor_id().map_err(|reason| SourceError::Setup {
                source_name: self.name.clone(),
                reason: format!("sensor: {reason}"),
            })?,
            sensor_field: self.sensor_field.clone(),
            time_field: self.time_field.clone(),
        };
        Ok(Intake::new(
            parser,
            self.input_name(),
            self.line_bytes_max as usize,
        ))
    }
}

/// A running `jsonl` source: follows a file, or reads stdin (or another reader) to its end.
pub struct JsonlSource {
    name: String,
    input: Input,
}

enum Input {
    File(Box<Follower>),
    Stream {
        /// The reader; `None` between its creation and the first run (stdin), or if a read
        /// was interrupted.
        reader: Option<Box<dyn Read + Send>>,
        /// The reader is stdin (so a lost one can be taken again).
        stdin: bool,
        intake: Box<Intake>,
    },
}

impl fmt::Debug for JsonlSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonlSource")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl JsonlSource {
    /// The source `config` describes: it follows `config.path`, or reads stdin for `"-"`.
    pub fn new(config: &JsonlConfig) -> Result<Self, SourceError> {
        let intake = config.intake()?;
        let input = if config.is_stdin() {
            Input::Stream {
                reader: None,
                stdin: true,
                intake: Box::new(intake),
            }
        } else {
            let settings = FollowSettings {
                path: config.path.clone(),
                start_at: config.start_at,
                poll_interval: Duration::from_millis(config.poll_interval_ms.max(1)),
                checkpoint_interval: Duration::from_millis(config.checkpoint_interval_ms),
                line_bytes_max: config.line_bytes_max as usize,
            };
            Input::File(Box::new(Follower::new(settings, intake)))
        };
        Ok(Self {
            name: config.name.clone(),
            input,
        })
    }

    /// A source that reads `reader` (a pipe, a socket, a test's bytes) to its end, as it would
    /// read stdin; `config.path` only names it in messages, and the file settings are unused.
    pub fn from_reader(
        config: &JsonlConfig,
        reader: Box<dyn Read + Send>,
    ) -> Result<Self, SourceError> {
        Ok(Self {
            name: config.name.clone(),
            input: Input::Stream {
                reader: Some(reader),
                stdin: false,
                intake: Box::new(config.intake()?),
            },
        })
    }
}

impl Source for JsonlSource {
    fn run<'a>(&'a mut self, context: &'a SourceContext) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move {
            let result = match &mut self.input {
                Input::File(follower) => follower.run(context).await,
                Input::Stream {
                    reader,
                    stdin,
                    intake,
                } => {
                    if reader.is_none() && *stdin {
                        *reader = Some(Box::new(std::io::stdin()));
                    }
                    let result = read_stream(reader, intake, context).await;
                    if result.is_ok() {
                        info!(source = %self.name, input = intake.input(), "input ended");
                    }
                    result
                }
            };
            match result {
                Ok(()) | Err(Halt::SinkClosed) => Ok(()),
                Err(Halt::Failed(reason)) => Err(SourceError::Failed {
                    source_name: self.name.clone(),
                    reason,
                }),
            }
        })
    }
}
