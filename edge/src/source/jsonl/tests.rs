//! The `jsonl` source against real files in temp directories, real time and a test sink.
//! Intervals are 10 ms; every wait is on an event (a reading, a flush) under a deadline.

use super::*;
use crate::source::testing::{test_context, TestInbox};
use sluice_proto::os::real_env;
use sluice_proto::Payload;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(10);
const NAME: &str = "scanner";

fn config(path: &Path) -> JsonlConfig {
    JsonlConfig {
        name: NAME.to_owned(),
        path: path.to_path_buf(),
        stream: StreamName::new("security").expect("stream name"),
        sensor: None,
        sensor_field: None,
        time_field: None,
        start_at: StartAt::Beginning,
        poll_interval_ms: 10,
        line_bytes_max: 256,
        checkpoint_interval_ms: 10,
        validation: ValidationConfig::default(),
    }
}

/// A temp directory with the followed file's path and a state directory.
struct Dirs {
    _temp: tempfile::TempDir,
    file: PathBuf,
    state: PathBuf,
}

fn dirs() -> Dirs {
    let temp = tempfile::tempdir().expect("temp dir");
    let state = temp.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    Dirs {
        file: temp.path().join("events.jsonl"),
        state,
        _temp: temp,
    }
}

/// Runs `source` on a task with a fresh test sink.
fn start(
    mut source: JsonlSource,
    state: &Path,
) -> (JoinHandle<Result<(), SourceError>>, TestInbox) {
    let (context, inbox) = test_context(NAME, real_env(7), 16, state);
    let task = tokio::spawn(async move { source.run(&context).await });
    (task, inbox)
}

fn start_file(
    config: &JsonlConfig,
    state: &Path,
) -> (JoinHandle<Result<(), SourceError>>, TestInbox) {
    start(JsonlSource::new(config).expect("source"), state)
}

fn append(path: &Path, text: &[u8]) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append");
    file.write_all(text).expect("append");
}

/// Waits until `n` readings arrived.
async fn readings(inbox: &mut TestInbox, n: usize) {
    timeout(DEADLINE, inbox.until_readings(n))
        .await
        .unwrap_or_else(|_| panic!("{n} readings in time, got {:?}", payloads(inbox)));
    assert!(
        inbox.readings.len() >= n,
        "the source stopped: {:?}",
        payloads(inbox)
    );
}

/// Waits until more than `n` flushes were requested.
async fn flushes_beyond(inbox: &mut TestInbox, n: u64) {
    let waited = timeout(DEADLINE, async {
        while inbox.n_flushes <= n && inbox.step().await {}
    });
    waited.await.expect("a flush in time");
    assert!(inbox.n_flushes > n, "the source stopped");
}

fn payloads(inbox: &TestInbox) -> Vec<String> {
    inbox
        .readings
        .iter()
        .map(|r| match &r.payload {
            Payload::Json(text) => text.clone(),
            other => panic!("not JSON: {other:?}"),
        })
        .collect()
}

/// `{"n":k}` for each k.
fn events(numbers: impl IntoIterator<Item = u32>) -> Vec<String> {
    numbers
        .into_iter()
        .map(|n| format!("{{\"n\":{n}}}"))
        .collect()
}

fn lines(numbers: impl IntoIterator<Item = u32>) -> String {
    events(numbers).iter().map(|e| format!("{e}\n")).collect()
}

// Lines appended one at a time, and several at once, all arrive in order, with the source's
// name as sensor; each is counted as read.
#[tokio::test]
async fn appended_lines_arrive_in_order() {
    let dirs = dirs();
    append(&dirs.file, lines([1]).as_bytes());
    let (_task, mut inbox) = start_file(&config(&dirs.file), &dirs.state);
    readings(&mut inbox, 1).await;
    for n in 2..=4 {
        append(&dirs.file, lines([n]).as_bytes());
        readings(&mut inbox, n as usize).await;
    }
    append(&dirs.file, lines(5..=9).as_bytes());
    readings(&mut inbox, 9).await;
    assert_eq!(payloads(&inbox), events(1..=9));
    assert!(inbox.readings.iter().all(|r| r.sensor.as_str() == NAME));
    assert_eq!(inbox.metrics.status().sources[NAME].read, 9);
}

// Malformed JSON, invalid UTF-8 and an overlong line (written in pieces) are counted by reason;
// blank lines are skipped silently; the lines after them still arrive.
#[tokio::test]
async fn bad_lines_are_rejected_by_reason_and_reading_goes_on() {
    let dirs = dirs();
    let mut content = lines([1]).into_bytes();
    content.extend_from_slice(b"{\"broken\":\n\n   \n\xff\xfe{}\n");
    let long = format!("{{\"pad\":\"{}\"}}", "x".repeat(300));
    content.extend_from_slice(&long.as_bytes()[..150]);
    append(&dirs.file, &content);
    let (_task, mut inbox) = start_file(&config(&dirs.file), &dirs.state);
    readings(&mut inbox, 1).await;
    append(&dirs.file, &long.as_bytes()[150..]);
    append(&dirs.file, format!("\n{}", lines([2])).as_bytes());
    readings(&mut inbox, 2).await;
    assert_eq!(payloads(&inbox), events(1..=2));
    let rejected = inbox.rejected(NAME);
    assert_eq!(rejected.get("malformed_json"), Some(&2), "{rejected:?}");
    assert_eq!(rejected.get("line_too_long"), Some(&1), "{rejected:?}");
    assert_eq!(rejected.len(), 2, "{rejected:?}");
}

// Rotation by rename: lines written to the old file before the rename (even the last one,
// without a newline) and to the new file afterwards all arrive, in order and once each.
#[tokio::test]
async fn rotation_reads_the_old_file_to_its_end_then_the_new_one() {
    let dirs = dirs();
    append(&dirs.file, lines(1..=2).as_bytes());
    let (_task, mut inbox) = start_file(&config(&dirs.file), &dirs.state);
    readings(&mut inbox, 2).await;
    append(
        &dirs.file,
        format!("{}{}", lines([3]), events([4])[0]).as_bytes(),
    );
    std::fs::rename(&dirs.file, dirs.file.with_extension("jsonl.1")).expect("rotate");
    append(&dirs.file, lines(5..=6).as_bytes());
    readings(&mut inbox, 6).await;
    // A marker after the rotation: anything read twice would have arrived before it.
    append(&dirs.file, lines([7]).as_bytes());
    readings(&mut inbox, 7).await;
    assert_eq!(payloads(&inbox), events(1..=7));
    assert!(inbox.rejected(NAME).is_empty());
}

// copytruncate: the file is cut to zero and written again; reading starts over at 0 and the
// new lines arrive.
#[tokio::test]
async fn truncation_starts_again_at_the_beginning() {
    let dirs = dirs();
    append(&dirs.file, lines(10..=13).as_bytes());
    let (_task, mut inbox) = start_file(&config(&dirs.file), &dirs.state);
    readings(&mut inbox, 4).await;
    let file = OpenOptions::new()
        .write(true)
        .open(&dirs.file)
        .expect("open");
    file.set_len(0).expect("truncate");
    append(&dirs.file, lines([1]).as_bytes());
    readings(&mut inbox, 5).await;
    append(&dirs.file, lines([2]).as_bytes());
    readings(&mut inbox, 6).await;
    let mut expected = events(10..=13);
    expected.extend(events(1..=2));
    assert_eq!(payloads(&inbox), expected);
}

// A new source value on the same state directory resumes after the checkpoint: lines
// checkpointed before the first one was stopped are not read again; the line read after the
// checkpoint (whose flush was never answered) is read again, at least once.
#[tokio::test]
async fn restart_resumes_after_the_checkpoint() {
    let dirs = dirs();
    let config = config(&dirs.file);
    append(&dirs.file, lines(1..=3).as_bytes());
    let (task, mut inbox) = start_file(&config, &dirs.state);
    readings(&mut inbox, 3).await;
    // A flush asked after the third reading belongs to a checkpoint of all three; the position
    // is written after its answer and before the source reads on.
    let n_flushes = inbox.n_flushes;
    flushes_beyond(&mut inbox, n_flushes).await;
    append(&dirs.file, lines([4]).as_bytes());
    readings(&mut inbox, 4).await;
    // Line 4's checkpoint waits for a flush nobody answers: stop the source there.
    task.abort();
    assert!(task.await.expect_err("aborted").is_cancelled());
    append(&dirs.file, lines([5]).as_bytes());

    let (_task, mut inbox) = start_file(&config, &dirs.state);
    readings(&mut inbox, 2).await;
    append(&dirs.file, lines([6]).as_bytes());
    readings(&mut inbox, 3).await;
    assert_eq!(payloads(&inbox), events(4..=6));
}

// With start_at = "end", lines already in the file are skipped and later ones arrive; the
// start is checkpointed at once (the flush shows the file was opened).
#[tokio::test]
async fn start_at_end_skips_what_is_there() {
    let dirs = dirs();
    append(
        &dirs.file,
        format!("{}{{\"partial", lines(1..=2)).as_bytes(),
    );
    let config = JsonlConfig {
        start_at: StartAt::End,
        ..config(&dirs.file)
    };
    let (_task, mut inbox) = start_file(&config, &dirs.state);
    flushes_beyond(&mut inbox, 0).await;
    append(&dirs.file, format!("\":3}}\n{}", lines([4])).as_bytes());
    readings(&mut inbox, 2).await;
    assert_eq!(
        payloads(&inbox),
        vec!["{\"partial\":3}".to_owned(), events([4])[0].clone()]
    );
}

// A file that does not exist when the source starts is waited for, then read.
#[tokio::test]
async fn file_created_after_start_is_picked_up() {
    let dirs = dirs();
    let (task, mut inbox) = start_file(&config(&dirs.file), &dirs.state);
    append(&dirs.file, lines(1..=2).as_bytes());
    readings(&mut inbox, 2).await;
    assert_eq!(payloads(&inbox), events(1..=2));
    assert!(!task.is_finished());
}

// A last line without its newline is held back until the newline arrives, and then arrives
// whole (not as a malformed fragment).
#[tokio::test]
async fn partial_last_line_waits_for_its_newline() {
    let dirs = dirs();
    append(&dirs.file, b"{\"n\":1}\n{\"n\":");
    let (_task, mut inbox) = start_file(&config(&dirs.file), &dirs.state);
    readings(&mut inbox, 1).await;
    append(&dirs.file, b"2");
    append(&dirs.file, b"}\n{\"n\":3}\n");
    readings(&mut inbox, 3).await;
    assert_eq!(payloads(&inbox), events(1..=3));
    assert!(inbox.rejected(NAME).is_empty());
}

/// A reader that hands out its bytes a few at a time, like a pipe.
struct Trickle {
    bytes: Vec<u8>,
    idx: usize,
}

impl Read for Trickle {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let n = buffer.len().min(3).min(self.bytes.len() - self.idx);
        buffer[..n].copy_from_slice(&self.bytes[self.idx..self.idx + n]);
        self.idx += n;
        Ok(n)
    }
}

// A stdin-like reader, read 3 bytes at a time, is read to its end (its last line needs no
// newline), with the sensor and time taken from fields; then run returns Ok.
#[tokio::test]
async fn reader_ends_with_ok_at_eof() {
    let dirs = dirs();
    let text =
        "{\"host\":\"pi-1\",\"t\":5}\nnot json\n{\"host\":\"pi-2\",\"t\":\"1970-01-01T00:00:01Z\"}";
    let config = JsonlConfig {
        path: PathBuf::from(STDIN_PATH),
        sensor_field: Some("host".to_owned()),
        time_field: Some("t".to_owned()),
        ..config(&dirs.file)
    };
    let reader = Trickle {
        bytes: text.as_bytes().to_vec(),
        idx: 0,
    };
    let source = JsonlSource::from_reader(&config, Box::new(reader)).expect("source");
    let (task, mut inbox) = start(source, &dirs.state);
    readings(&mut inbox, 2).await;
    let result = timeout(DEADLINE, task).await.expect("ended in time");
    assert_eq!(result.expect("not panicked"), Ok(()));
    let found: Vec<_> = inbox
        .readings
        .iter()
        .map(|r| (r.sensor.as_str().to_owned(), r.device_time.0))
        .collect();
    assert_eq!(found, [("pi-1".to_owned(), 5), ("pi-2".to_owned(), 1_000)]);
    assert_eq!(inbox.rejected(NAME).get("malformed_json"), Some(&1));
}

fn parse_config(text: &str) -> Result<JsonlConfig, String> {
    use figment::providers::{Format, Toml};
    figment::Figment::new()
        .merge(Toml::string(text))
        .extract()
        .map_err(|e| e.to_string())
}

fn problems(config: &JsonlConfig) -> Vec<String> {
    let mut problems = Vec::new();
    config.validate("sources.scanner", &mut problems);
    problems
}

// The defaults apply when only the required keys are given, and they are valid.
#[test]
fn config_defaults() {
    let config =
        parse_config("name = \"trivy\"\npath = \"/var/log/trivy.jsonl\"\nstream = \"security\"")
            .expect("config");
    assert_eq!(config.start_at, StartAt::Beginning);
    assert_eq!(config.poll_interval_ms, 250);
    assert_eq!(config.line_bytes_max, 65_536);
    assert_eq!(config.checkpoint_interval_ms, 1_000);
    assert_eq!(
        config.sensor_id(),
        Ok(SensorId::new("trivy").expect("sensor id"))
    );
    assert!(problems(&config).is_empty());
}

// Unknown keys and unknown start_at values are refused at load.
#[test]
fn config_unknown_keys() {
    let base = "name = \"a\"\npath = \"-\"\nstream = \"s\"\n";
    assert!(parse_config(&format!("{base}follow = true")).is_err());
    assert!(parse_config(&format!("{base}start_at = \"middle\"")).is_err());
    assert!(parse_config(&format!("{base}start_at = \"end\"")).is_ok());
}

// Every problem is reported, each prefixed by where it is.
#[test]
fn config_problems() {
    let config = parse_config(
        "name = \"bad name\"\npath = \"\"\nstream = \"s\"\nsensor_field = \"\"\n\
         poll_interval_ms = 0\ncheckpoint_interval_ms = 0\nline_bytes_max = 0",
    )
    .expect("config");
    let found = problems(&config);
    assert_eq!(found.len(), 6, "{found:#?}");
    assert!(
        found.iter().all(|p| p.starts_with("sources.scanner.")),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with("sources.scanner.sensor: unset, and the source name"),
        "{found:#?}"
    );
    assert!(matches!(config.build(), Err(SourceError::Setup { .. })));
}

// A path that names a directory fails the run with a message naming it; once a file is there,
// running the same value again reads it.
#[tokio::test]
async fn failed_run_can_be_run_again() {
    let dirs = dirs();
    std::fs::create_dir(&dirs.file).expect("a directory in the way");
    let mut source = JsonlSource::new(&config(&dirs.file)).expect("source");
    let (context, mut inbox) = test_context(NAME, real_env(7), 16, &dirs.state);
    let failed = timeout(DEADLINE, source.run(&context))
        .await
        .expect("failed in time");
    let Err(SourceError::Failed { reason, .. }) = failed else {
        panic!("expected a failure, got {failed:?}");
    };
    assert!(
        reason.contains("events.jsonl: not a regular file"),
        "{reason}"
    );
    std::fs::remove_dir(&dirs.file).expect("remove the directory");
    append(&dirs.file, lines(1..=2).as_bytes());
    let read = async {
        tokio::select! {
            biased;
            ended = source.run(&context) => panic!("the source ended: {ended:?}"),
            () = inbox.until_readings(2) => {}
        }
    };
    timeout(DEADLINE, read).await.expect("readings in time");
    assert_eq!(payloads(&inbox), events(1..=2));
}

// A FIFO at the followed path, with no writer, fails the run at once with a message naming the
// path and saying it is a FIFO, instead of blocking the source in `open` forever; the supervisor
// then restarts it like any failed run.
#[tokio::test]
async fn a_fifo_at_the_path_fails_instead_of_blocking() {
    let dirs = dirs();
    let made = std::process::Command::new("mkfifo")
        .arg(&dirs.file)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    let mut source = JsonlSource::new(&config(&dirs.file)).expect("source");
    let (context, _inbox) = test_context(NAME, real_env(7), 16, &dirs.state);
    let failed = timeout(DEADLINE, source.run(&context))
        .await
        .expect("the run failed in time instead of blocking in open");
    let Err(SourceError::Failed {
        source_name,
        reason,
    }) = failed
    else {
        panic!("expected a failure, got {failed:?}");
    };
    assert_eq!(source_name, NAME);
    assert!(
        reason.contains(&dirs.file.display().to_string()),
        "{reason}"
    );
    assert!(reason.contains("it is a FIFO"), "{reason}");
    // A second run fails the same way, at once.
    let again = timeout(DEADLINE, source.run(&context))
        .await
        .expect("the second run failed in time");
    assert!(
        matches!(again, Err(SourceError::Failed { .. })),
        "{again:?}"
    );
}
