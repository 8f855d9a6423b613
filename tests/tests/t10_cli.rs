//! The client commands of the real `sluice` binary against an in-process node: `sluice produce`
//! piping JSON lines from stdin, and `sluice tail --from earliest --no-follow` reading them back.

use sluice_proto::Payload;
use sluice_tests::{fetch_stream, run_cli, TestNode, ADMIN, EVENTS};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn connect_args(node: &TestNode, stem: &str) -> Vec<String> {
    vec![
        "--node".into(),
        node.addr().to_string(),
        "--certs".into(),
        node.certs_dir().display().to_string(),
        "--as".into(),
        stem.into(),
    ]
}

async fn sluice(args: Vec<String>, stdin: &[u8]) -> sluice_tests::CliOutput {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_cli(&args, stdin, LIMIT).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_reports_bad_lines_and_tail_reads_the_good_ones_back() {
    // Checks that `sluice produce` as an edge stores every JSON line of stdin in order under its
    // sensor, reports the malformed line by its line number and exits non-zero because of it;
    // and that `sluice tail --from earliest --no-follow` as an admin prints exactly the stored
    // lines as JSON (partition, offset, event) and stops, `--max-events` stops early, and an
    // edge (produce-only ACL) is refused by tail.
    let node = TestNode::in_process().await.unwrap();
    let edge = node.edge("cli").unwrap();
    let lines = [
        r#"{"n":1}"#,
        r#"{"n":2,"tags":["a","b"]}"#,
        "not json {",
        "",
        r#"{"n":3}"#,
        "[4]",
    ];
    let stdin = lines.join("\n") + "\n";
    let mut args: Vec<String> = ["produce", EVENTS, "--sensor", "cli-1", "--batch", "2"]
        .map(String::from)
        .to_vec();
    args.extend(connect_args(&node, &edge));
    let output = sluice(args, stdin.as_bytes()).await;
    assert_ne!(output.code, Some(0), "{output:?}");
    assert!(
        output.stderr.contains("line 3: not JSON"),
        "{}",
        output.stderr
    );
    assert!(
        output.stderr.contains("produced 4 events"),
        "{}",
        output.stderr
    );
    assert!(
        output.stderr.contains("1 lines were not JSON"),
        "{}",
        output.stderr
    );

    let good: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.is_empty() && *l != "not json {")
        .collect();
    let admin = node.admin().await.unwrap();
    let partitions = fetch_stream(&admin, EVENTS).await.unwrap();
    let partition = partitions.iter().position(|p| !p.is_empty()).unwrap();
    let stored = &partitions[partition];
    assert_eq!(stored.len(), good.len());
    for (i, (event, line)) in stored.iter().zip(&good).enumerate() {
        assert_eq!(event.event.payload, Payload::Json(line.to_string()));
        assert_eq!(
            (event.event.sensor.as_str(), event.event.seq),
            ("cli-1", i as u64)
        );
        assert_eq!(event.event.producer.name, "cli");
    }

    let mut args: Vec<String> = ["tail", EVENTS, "--from", "earliest", "--no-follow"]
        .map(String::from)
        .to_vec();
    args.extend(connect_args(&node, ADMIN));
    let output = sluice(args.clone(), b"").await;
    assert_eq!(output.code, Some(0), "{output:?}");
    let printed: Vec<serde_json::Value> = output
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed.len(), good.len(), "{}", output.stdout);
    for (i, (value, line)) in printed.iter().zip(&good).enumerate() {
        assert_eq!(value["offset"], serde_json::json!(i), "{value}");
        assert_eq!(value["partition"], serde_json::json!(partition), "{value}");
        assert_eq!(
            value["event"]["payload"]["json"],
            serde_json::json!(line),
            "{value}"
        );
        assert_eq!(value["event"]["sensor"], "cli-1");
        assert_eq!(value["event"]["seq"], serde_json::json!(i));
    }

    args.extend(["--max-events".to_string(), "2".to_string()]);
    let output = sluice(args, b"").await;
    assert_eq!(output.code, Some(0), "{output:?}");
    assert_eq!(output.stdout.lines().count(), 2, "{}", output.stdout);

    let mut args: Vec<String> = ["tail", EVENTS, "--from", "earliest", "--no-follow"]
        .map(String::from)
        .to_vec();
    args.extend(connect_args(&node, &edge));
    let output = sluice(args, b"").await;
    assert_ne!(output.code, Some(0), "{output:?}");
    assert!(
        output.stderr.contains("Forbidden") && output.stderr.contains("may not consume"),
        "{}",
        output.stderr
    );
}

#[tokio::test]
async fn demo_runs_to_completion_and_checks_itself() {
    // Checks that the README's first command works: `sluice demo` (shortened) starts a node and
    // edge agents, survives its staged outage, finds every spooled reading stored exactly once,
    // and exits 0.
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let output = run_cli(
        &[
            "demo",
            "--dir",
            demo_dir.to_str().unwrap(),
            "--seconds",
            "2",
            "--outage-seconds",
            "1",
            "--edges",
            "2",
        ],
        b"",
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    assert_eq!(output.code, Some(0), "{output:?}");
    for expected in [
        "node goes down",
        "each seq exactly once and in order",
        "deduplicates",
        "refused:",
        "present after the restart",
    ] {
        assert!(
            output.stdout.contains(expected),
            "{expected}:\n{}",
            output.stdout
        );
    }
}
