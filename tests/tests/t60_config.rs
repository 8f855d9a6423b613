//! `sluice run --config` with bad configs, run as the real binary: it must exit non-zero before
//! serving anything and say what is wrong, every problem at once. (That the committed
//! `deploy/node.example.toml` loads is a unit test in `node/src/config.rs`.)

use sluice_tests::{run_cli, run_cli_env, CertDir, CliOutput, TestNode, CLUSTER};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

async fn run_config(path: &Path, env: &[(&str, &str)]) -> CliOutput {
    let path = path.to_str().unwrap();
    run_cli_env(&["run", "--config", path], env, b"", LIMIT)
        .await
        .unwrap()
}

fn assert_failed_with(output: &CliOutput, expected: &[&str]) {
    assert_ne!(output.code, Some(0), "{output:?}");
    assert!(output.code.is_some(), "killed by a signal: {output:?}");
    assert!(!output.stdout.contains("listening"), "{output:?}");
    for text in expected {
        assert!(
            output.stderr.contains(text),
            "{text:?} missing from stderr:\n{}",
            output.stderr
        );
    }
}

#[tokio::test]
async fn invalid_config_lists_every_problem_and_exits_non_zero() {
    // Checks that a config with ten independent problems makes `sluice run` exit non-zero
    // naming all ten, without creating the data dir.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let text = format!(
        r#"
[node]
id = 1
cluster = "bad cluster"
data_dir = "{}"

[transport]
listen = "127.0.0.1:0"
ca_cert = ""
cert = "node.pem"
key = "node.key"
frame_bytes_max = 0

[storage]
segment_bytes_max = 1000

[[streams]]
name = "a/b"
partitions = 0

[[streams]]
name = "dup"
partitions = 1

[[streams]]
name = "dup"
partitions = 5000

[[acl]]
identity = "edge/*"
"#,
        data.display()
    );
    let path = dir.path().join("node.toml");
    std::fs::write(&path, text).unwrap();
    let output = run_config(&path, &[]).await;
    assert_failed_with(
        &output,
        &[
            "invalid config",
            "transport.frame_bytes_max must be greater than 0",
            "storage.segment_bytes_max must be at least 1048576",
            "node.cluster:",
            "streams[0].name:",
            "streams[0].partitions must be 1 to 4096, got 0",
            "streams[2]: stream \"dup\" is defined twice",
            "streams[2].partitions must be 1 to 4096, got 5000",
            "acl[0].identity \"edge/*\" must start with sluice://",
            "acl[0] allows nothing",
            "transport.ca_cert is empty",
        ],
    );
    assert!(
        !data.exists(),
        "the data dir was created by an invalid config"
    );
}

#[tokio::test]
async fn unreadable_configs_are_named() {
    // Checks that a missing file, a misspelt key and a value of the wrong type each make
    // `sluice run` exit non-zero with the file, key or value named.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let output = run_config(&missing, &[]).await;
    assert_failed_with(&output, &["does not exist", "missing.toml"]);

    let node = TestNode::builder().child_process().create().unwrap();
    let valid = std::fs::read_to_string(node.config_path()).unwrap();
    for (name, text, expected) in [
        (
            "misspelt.toml",
            valid.replace("stats_interval_ms", "stats_interval"),
            "stats_interval",
        ),
        (
            "wrong-type.toml",
            valid.replace("partitions = 4", "partitions = \"four\""),
            "partitions",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let output = run_config(&path, &[]).await;
        assert_failed_with(&output, &["cannot load config", expected]);
    }
}

#[tokio::test]
async fn environment_overrides_are_validated_too() {
    // Checks that a valid file made invalid by SLUICE__ environment overrides is refused with the
    // overridden keys named, and that a node certificate that does not match node.id stops the
    // start with both identities named.
    let mut node = TestNode::builder().child_process().create().unwrap();
    let dedup = ("SLUICE__INGEST__DEDUP_WINDOW_MAX", "0");
    let connections = ("SLUICE__TRANSPORT__CONNECTIONS_MAX", "0");
    let output = run_config(node.config_path(), &[dedup]).await;
    assert_failed_with(&output, &["ingest.dedup_window_max must be greater than 0"]);
    let output = run_config(node.config_path(), &[dedup, connections]).await;
    assert_failed_with(
        &output,
        &[
            "ingest.dedup_window_max must be greater than 0",
            "transport.connections_max must be greater than 0",
        ],
    );

    node.reconfigure(|c| c.node.id = 2).unwrap();
    let output = run_config(node.config_path(), &[]).await;
    assert_failed_with(&output, &["sluice://itest/node/1", "sluice://itest/node/2"]);
    let output = run_cli(&["run"], b"", LIMIT).await.unwrap();
    assert_failed_with(&output, &["--config"]);
}

#[tokio::test]
async fn configs_and_files_that_cannot_work_are_refused() {
    // Checks that `sluice run` refuses, naming what is wrong: a frame limit below the largest
    // fetch answer, a stream named `..`, a ca_cert that did not sign the node's certificate
    // (both files named), and a node key readable by group and others ("are too open").
    let mut node = TestNode::builder().child_process().create().unwrap();
    let frame = ("SLUICE__TRANSPORT__FRAME_BYTES_MAX", "65536");
    let output = run_config(node.config_path(), &[frame]).await;
    assert_failed_with(
        &output,
        &["transport.frame_bytes_max (65536) is smaller than the largest fetch answer"],
    );

    let name = node.config().streams[0].name.clone();
    node.reconfigure(|c| c.streams[0].name = "..".to_owned())
        .unwrap();
    let output = run_config(node.config_path(), &[]).await;
    assert_failed_with(&output, &["streams[0].name", "must not start with '.'"]);
    node.reconfigure(|c| c.streams[0].name = name).unwrap();

    let foreign = CertDir::temp(CLUSTER).unwrap();
    let foreign_path = foreign.ca_cert();
    let own_ca = node.config().transport.ca_cert.clone();
    let cert = node.config().transport.cert.display().to_string();
    node.reconfigure(|c| c.transport.ca_cert = foreign_path.clone())
        .unwrap();
    let output = run_config(node.config_path(), &[]).await;
    assert_failed_with(
        &output,
        &[&format!(
            "{cert} was not issued by the ca in {}",
            foreign_path.display()
        )],
    );
    node.reconfigure(|c| c.transport.ca_cert = own_ca).unwrap();

    let key = node.config().transport.key.clone();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = run_config(node.config_path(), &[]).await;
    assert_failed_with(
        &output,
        &[&format!(
            "permissions 0644 for {} are too open",
            key.display()
        )],
    );
}
