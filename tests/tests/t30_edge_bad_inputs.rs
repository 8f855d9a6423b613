//! Bad inputs at the edge: malformed JSON lines, out-of-range readings, a node whose
//! certificate comes from another CA, and an agent certificate of the wrong role. Each gets its
//! clear, counted error, and the agent keeps running and keeps everything it accepted.

use anyhow::Result;
use sluice_proto::{Payload, Role};
use sluice_tests::edge::{histories, sim_source, toml_path, TestEdge};
use sluice_tests::{fetch_stream, CertDir, TestNode, Validity, CLUSTER, EVENTS};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_and_out_of_range_readings_are_counted_and_the_rest_flows() -> Result<()> {
    // Checks that malformed JSON lines are rejected as `malformed_json` and out-of-range
    // temperatures as `out_of_range`, that both are counted by source and reason, and that the
    // good lines (in file order) and the plausible humidity readings still reach the node.
    let node = TestNode::in_process().await?;
    let scratch = tempfile::tempdir()?;
    let file = scratch.path().join("trivy.jsonl");
    std::fs::write(
        &file,
        concat!(
            "{\"Target\":\"Cargo.lock\",\"Vulnerabilities\":[]}\n",
            "{\"Target\": broken\n",
            "not json at all\n",
            "{\"Target\":\"Dockerfile\",\"Misconfigurations\":[{\"ID\":\"DS002\"}]}\n",
            "\n",
            "[1,2,3]\n",
        ),
    )?;
    let mut edge = TestEdge::create(
        &node,
        "pi-bad",
        &format!(
            r#"
[spool]
sync_interval_ms = 20

[[sources]]
type = "jsonl"
name = "trivy"
path = {path}
stream = "events"
sensor = "ci/trivy"
poll_interval_ms = 10

{hot}"#,
            path = toml_path(&file),
            hot = sim_source("hot", 1, 5)
                .readings_max(20)
                .no_dropouts()
                .with("spike_probability = 0.0")
                .with("validation.temperature = { min = 100.0, max = 200.0 }"),
        ),
    )?;
    edge.start().await?;
    let status = edge
        .wait_for("good lines and humidity delivered", LONG, |s| {
            s.uplink.delivered >= 3 + 20 && s.spools.values().all(|v| v.records == 0)
        })
        .await?;
    assert_eq!(
        status.sources["trivy"].rejected.get("malformed_json"),
        Some(&2)
    );
    assert_eq!(
        status.sources["hot"].rejected.get("out_of_range"),
        Some(&20)
    );
    assert_eq!(status.sources["trivy"].spooled, 3);
    edge.stop().await?;

    let admin = node.admin().await?;
    let partitions = fetch_stream(&admin, EVENTS).await?;
    let lines: Vec<String> = partitions
        .iter()
        .flatten()
        .filter(|e| e.event.sensor.as_str() == "ci/trivy")
        .filter_map(|e| match &e.event.payload {
            Payload::Json(text) => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        lines,
        [
            "{\"Target\":\"Cargo.lock\",\"Vulnerabilities\":[]}",
            "{\"Target\":\"Dockerfile\",\"Misconfigurations\":[{\"ID\":\"DS002\"}]}",
            "[1,2,3]",
        ]
    );
    let by_sensor = histories(&partitions);
    assert!(
        by_sensor
            .keys()
            .all(|(_, sensor, _)| !sensor.ends_with("temperature")),
        "no out-of-range reading was stored"
    );
    let humidity = by_sensor
        .iter()
        .find(|((_, sensor, _), _)| sensor == "sim-0/humidity")
        .map(|(_, h)| h.delivered.clone());
    assert_eq!(humidity, Some((0..20).collect()));
    Ok(())
}

/// Readings of a one-device sim source every 10 ms, forever.
fn trickle() -> String {
    sim_source("trickle", 1, 10).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_certificate_from_another_ca_is_refused_and_the_agent_keeps_spooling() -> Result<()> {
    // Checks that an agent trusting another CA (a look-alike cluster with the same name)
    // refuses the node, says why, keeps retrying with backoff, and keeps spooling readings.
    let node = TestNode::in_process().await?;
    let other = CertDir::temp(CLUSTER)?;
    let stem = other.issue(Role::Edge, "pi-lost", Validity::Now)?;
    let mut edge = TestEdge::create_from(&node, "pi-lost", &other.files(&stem), &trickle())?;
    edge.start().await?;
    let status = edge
        .wait_for("refusals while spooling", LONG, |s| {
            s.uplink.connect_failures >= 3 && s.sources["trickle"].spooled >= 30
        })
        .await?;
    assert_eq!(status.uplink.connects, 0, "{status:#?}");
    assert!(status.uplink.connected_to.is_none());
    let error = status.uplink.last_error.unwrap_or_default();
    assert!(
        error.contains("not issued by this cluster's ca") || error.contains("unknown ca"),
        "the error says the CA is wrong: {error}"
    );
    edge.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_certificate_of_the_wrong_role_is_refused_and_the_agent_keeps_spooling() -> Result<()>
{
    // Checks that an agent given a node certificate is refused by the node with a reason that
    // names the role, and keeps running and spooling.
    let node = TestNode::in_process().await?;
    let stem = node.issue(Role::Node, "7", Validity::Now)?;
    let mut edge = TestEdge::create_with(&node, "pi-node-cert", &stem, &trickle())?;
    edge.start().await?;
    let status = edge
        .wait_for("role refusals while spooling", LONG, |s| {
            s.uplink
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("role node"))
                && s.sources["trickle"].spooled >= 30
        })
        .await?;
    assert_eq!(status.uplink.delivered, 0, "{status:#?}");
    edge.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_taking_smaller_batches_than_the_edge_sends_still_gets_everything() -> Result<()> {
    // Checks that an agent whose `batch_records_max` is larger than the node's (every full
    // request refused whole as TooLarge) splits its requests and delivers every reading, in
    // order, exactly once, with nothing declared dropped, and counts the refusals.
    let node = TestNode::builder()
        .configure(|c| c.ingest.batch_records_max = 7)
        .start()
        .await?;
    let mut edge = TestEdge::builder(&node, "pi-big-batches")
        .uplink("batch_records_max = 500\nlinger_ms = 200")
        .create(&format!(
            "[spool]\nsync_interval_ms = 20\n\n{}",
            sim_source("cellar", 3, 2)
                .temperature_only()
                .readings_max(300)
                .no_dropouts()
        ))?;
    edge.start().await?;
    let status = edge
        .wait_for("900 readings delivered", LONG, |s| {
            s.uplink.delivered >= 900 && s.spools.values().all(|v| v.records == 0)
        })
        .await?;
    assert!(
        status.uplink.refused.get("too_large").copied().unwrap_or(0) > 0,
        "the node refused at least one request as too large: {status:#?}"
    );
    edge.stop().await?;
    let admin = node.admin().await?;
    let by_sensor = histories(&fetch_stream(&admin, EVENTS).await?);
    assert_eq!(by_sensor.len(), 3);
    for ((_, sensor, _), history) in &by_sensor {
        assert_eq!(history.delivered, (0..300).collect::<Vec<_>>(), "{sensor}");
        assert!(
            history.dropped.is_empty(),
            "{sensor}: {:?}",
            history.dropped
        );
    }
    Ok(())
}
