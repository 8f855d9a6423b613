//! The `sluice-edge` binary as an operator uses it: `run` under a real node, `status` (table
//! and JSON), `spool check` after a clean stop, `config check`, and a start-up refusal that
//! names what is wrong.

use anyhow::{Context, Result};
use sluice_edge::metrics::Status;
use sluice_tests::edge::{run_edge_cli, toml_path, TestEdge};
use sluice_tests::TestNode;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_spool_check_describe_a_running_then_stopped_agent() -> Result<()> {
    // Checks that `sluice-edge status` shows the identity, the connection, readings by source
    // and the spool, that `--json` parses, and that after a clean stop (SIGTERM) `spool check`
    // finds an empty spool with nothing torn and nothing declared lost; then that a bit flipped
    // in the middle of a segment makes `spool check` name the file and fail.
    let node = TestNode::in_process().await?;
    let mut edge = TestEdge::create(
        &node,
        "pi-cli",
        r#"
[spool]
sync_interval_ms = 20

[[sources]]
type = "sim"
name = "room"
stream = "events"
devices = 2
interval_ms = 5
readings_max = 100
"#,
    )?;
    edge.spawn().await?;
    edge.wait_for("everything delivered", LIMIT, |s| {
        s.sources["room"].spooled + s.sources["room"].rejected.values().sum::<u64>() == 400
            && s.spools.values().all(|v| v.records == 0)
    })
    .await?;
    let config = edge.config_path().to_string_lossy().into_owned();
    let table = run_edge_cli(&["status", "--config", &config], LIMIT).await?;
    assert_eq!(table.code, Some(0), "{table:?}");
    for expected in [
        "sluice://itest/edge/pi-cli",
        "connected to",
        "room",
        "events",
    ] {
        assert!(
            table.stdout.contains(expected),
            "{expected}:\n{}",
            table.stdout
        );
    }
    let json = run_edge_cli(&["status", "--config", &config, "--json"], LIMIT).await?;
    let status: Status = serde_json::from_str(&json.stdout)?;
    assert_eq!(status.sources["room"].read, 400);
    edge.stop().await?;

    let check = run_edge_cli(&["spool", "check", "--config", &config], LIMIT).await?;
    assert_eq!(check.code, Some(0), "{check:?}");
    assert!(
        check.stdout.contains("== spool of stream events"),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains("waiting records   0"),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains("power-loss ranges 0"),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains("torn tail         0 bytes"),
        "{}",
        check.stdout
    );

    // A flipped bit in the middle of a spool segment (valid frames after it) is damage, not a
    // torn tail: `spool check` names the file and byte and exits non-zero.
    let spool_dir = edge.dir().join("data").join("spool").join("events");
    let segment = std::fs::read_dir(&spool_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "spool"))
        .min()
        .context("no spool segment")?;
    let mut bytes = std::fs::read(&segment)?;
    let data_end = bytes
        .iter()
        .rposition(|b| *b != 0)
        .context("empty segment")?
        + 1;
    // Past the segment header (32 bytes) and inside the data, well before its end.
    let at = 32 + (data_end - 32) / 3;
    bytes[at] ^= 0x40;
    std::fs::write(&segment, &bytes)?;
    let damaged = run_edge_cli(&["spool", "check", "--config", &config], LIMIT).await?;
    assert_ne!(damaged.code, Some(0), "{damaged:?}");
    assert!(
        damaged.stdout.contains("CORRUPT")
            && damaged.stdout.contains(
                &segment
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            ),
        "{}",
        damaged.stdout
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_lists_problems_and_run_refuses_a_dht_off_a_pi() -> Result<()> {
    // Checks that `config check` exits non-zero listing every problem, and that `run` with a
    // DHT source on a machine without GPIO exits non-zero naming the pin, before sending
    // anything.
    let node = TestNode::in_process().await?;
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[edge]\ndata_dir = {}\n[uplink]\ncluster = \"\"\nnodes = []\nca_cert = \"c\"\n\
             cert = \"c\"\nkey = \"k\"\nbatches_in_flight_max = 0\n",
            toml_path(&dir.path().join("data"))
        ),
    )?;
    let bad = bad.to_string_lossy().into_owned();
    let output = run_edge_cli(&["config", "check", "--config", &bad], LIMIT).await?;
    assert_eq!(output.code, Some(1), "{output:?}");
    for expected in [
        "uplink.nodes",
        "uplink.cluster",
        "batches_in_flight_max",
        "no [[sources]]",
    ] {
        assert!(
            output.stderr.contains(expected),
            "{expected}:\n{}",
            output.stderr
        );
    }

    let edge = TestEdge::create(
        &node,
        "pi-gpio",
        r#"
[[sources]]
type = "dht"
name = "fridge"
stream = "events"
sensor = "fridge"
model = "dht22"
pin = 17
"#,
    )?;
    let config = edge.config_path().to_string_lossy().into_owned();
    let run = run_edge_cli(&["run", "--config", &config], LIMIT).await?;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("gpio 17"), "{}", run.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_per_data_dir_and_no_spool_check_beside_it() -> Result<()> {
    // Checks the data_dir lock: a second `sluice-edge run` on the same data_dir exits non-zero
    // saying the directory is in use, and so does `spool check` while the agent runs; after a
    // clean stop `spool check` works.
    let node = TestNode::in_process().await?;
    let mut edge = TestEdge::create(
        &node,
        "pi-lock",
        r#"
[[sources]]
type = "sim"
name = "room"
stream = "events"
devices = 1
interval_ms = 100
"#,
    )?;
    edge.spawn().await?;
    let config = edge.config_path().to_string_lossy().into_owned();
    let second = run_edge_cli(&["run", "--config", &config], LIMIT).await?;
    assert_eq!(second.code, Some(1), "{second:?}");
    assert!(second.stderr.contains("in use"), "{}", second.stderr);
    let check = run_edge_cli(&["spool", "check", "--config", &config], LIMIT).await?;
    assert_eq!(check.code, Some(1), "{check:?}");
    assert!(
        check.stderr.contains("while the agent runs"),
        "{}",
        check.stderr
    );
    edge.stop().await?;
    let check = run_edge_cli(&["spool", "check", "--config", &config], LIMIT).await?;
    assert_eq!(check.code, Some(0), "{check:?}");
    Ok(())
}
