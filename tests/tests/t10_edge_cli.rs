//! The `sluice-edge` binary as an operator uses it: `run` under a real node, `status` (table
//! and JSON), `spool check` after a clean stop, `config check`, and a start-up refusal that
//! names what is wrong.

use anyhow::{Context, Result};
use sluice_edge::metrics::Status;
use sluice_proto::Role;
use sluice_tests::edge::{run_edge_cli, sim_source, toml_path, TestEdge, FAST_SYNC};
use sluice_tests::{CertDir, TestNode, Validity, CLUSTER};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_spool_check_describe_a_running_then_stopped_agent() -> Result<()> {
    // Checks that `sluice-edge status` shows the identity, the connection, readings by source
    // and the spool, that `--json` parses, and that after a clean stop (SIGTERM) `spool check`
    // finds an empty spool with nothing torn and nothing declared lost; then that a bit flipped
    // in the middle of a segment makes `spool check` name the file and fail.
    let node = TestNode::in_process().await?;
    let room = sim_source("room", 2, 5).readings_max(100);
    let mut edge = TestEdge::create(&node, "pi-cli", &format!("{FAST_SYNC}{room}"))?;
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
    // Past the segment header (the segment layer's 64 bytes) and inside the data, well before
    // its end.
    let at = 64 + (data_end - 64) / 3;
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
    // saying another process holds the directory, even after the `lock` file older versions
    // locked was deleted (the lock is on the directory itself), and so does `spool check` while
    // the agent runs; after a clean stop `spool check` works.
    let node = TestNode::in_process().await?;
    let mut edge = TestEdge::create(&node, "pi-lock", &room())?;
    edge.spawn().await?;
    let config = edge.config_path().to_string_lossy().into_owned();
    let data_dir = edge.config().edge.data_dir.clone();
    match std::fs::remove_file(data_dir.join("lock")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        other => other?,
    }
    let second = run_edge_cli(&["run", "--config", &config], LIMIT).await?;
    assert_eq!(second.code, Some(1), "{second:?}");
    let held = format!("another process holds {}", data_dir.display());
    assert!(second.stderr.contains(&held), "{}", second.stderr);
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

/// One simulated device read every 100 ms, forever.
fn room() -> String {
    sim_source("room", 1, 100).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_checks_the_certificates_and_run_refuses_a_non_edge_identity() -> Result<()> {
    // Checks that `config check` loads the uplink's certificate, key and CA and reports what is
    // wrong with them (missing, signed by another CA, expired, a key of another certificate, a
    // key others can read, an admin identity), exiting non-zero, and accepts good files naming
    // the identity; and that `run` with an admin certificate exits non-zero instead of
    // delivering as the admin.
    let node = TestNode::builder().create()?;
    let certs = node.certs();
    let good = TestEdge::create(&node, "pi-good", &room())?;
    let check = |edge: &TestEdge| {
        let config = edge.config_path().to_string_lossy().into_owned();
        async move { run_edge_cli(&["config", "check", "--config", &config], LIMIT).await }
    };
    let output = check(&good).await?;
    assert_eq!(output.code, Some(0), "{output:?}");
    assert!(
        output
            .stdout
            .contains("uplink identity sluice://itest/edge/pi-good"),
        "{output:?}"
    );

    let refused = |output: &sluice_tests::CliOutput, expected: &str| {
        assert_eq!(output.code, Some(1), "{output:?}");
        assert!(
            output.stderr.contains(expected),
            "{expected}:\n{}",
            output.stderr
        );
    };
    let ca = certs.ca_cert();
    let missing = certs.cert("edge-nobody");
    let lost = TestEdge::create_from(
        &node,
        "pi-missing",
        &[ca.clone(), missing.clone(), certs.key("edge-nobody")],
        &room(),
    )?;
    refused(
        &check(&lost).await?,
        &format!("cannot read {}", missing.display()),
    );

    let other = CertDir::temp(CLUSTER)?;
    let stem = other.issue(Role::Edge, "pi-lost", Validity::Now)?;
    let foreign = TestEdge::create_from(
        &node,
        "pi-lost",
        &[ca.clone(), other.cert(&stem), other.key(&stem)],
        &room(),
    )?;
    refused(&check(&foreign).await?, "was not issued by the ca in");

    let old = node.issue(Role::Edge, "pi-old", Validity::Expired)?;
    let expired = TestEdge::create_with(&node, "pi-old", &old, &room())?;
    refused(&check(&expired).await?, "has expired");

    let swapped = TestEdge::create_from(
        &node,
        "pi-good",
        &[ca.clone(), certs.cert("edge-pi-good"), other.key(&stem)],
        &room(),
    )?;
    refused(&check(&swapped).await?, "is not the private key of");

    let open_key = certs.key("edge-pi-good");
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644))?;
    refused(
        &check(&good).await?,
        &format!("permissions 0644 for {} are too open", open_key.display()),
    );
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o600))?;

    let admin = TestEdge::create_with(&node, "pi-admin", "admin-ops", &room())?;
    let wrong_role = "is sluice://itest/admin/ops, but this must be sluice://itest/edge/<name>";
    refused(&check(&admin).await?, wrong_role);
    let config = admin.config_path().to_string_lossy().into_owned();
    let run = run_edge_cli(&["run", "--config", &config], LIMIT).await?;
    refused(&run, wrong_role);
    assert!(
        !admin.config().edge.data_dir.join("spool").exists(),
        "the refused agent spooled: {run:?}"
    );
    Ok(())
}
