//! The edge agent fed by a real Mosquitto broker: a paho-mqtt publisher shaped like a typical
//! Raspberry Pi script and `mosquitto_pub` JSON messages end up as events in a real node, in
//! publish order, and malformed payloads are counted while the rest flows.

use anyhow::Result;
use sluice_proto::{Payload, Reading};
use sluice_tests::edge::TestEdge;
use sluice_tests::mosquitto::{free_port, Broker};
use sluice_tests::{fetch_stream, TestNode, EVENTS};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_readings_reach_the_node_in_order() -> Result<()> {
    // Checks Mosquitto -> mqtt source -> validation -> spool -> QUIC uplink -> node: the paho
    // publisher's plain numbers become temperature readings and the JSON messages door metrics
    // (with their own timestamps), each sensor's events are stored in publish order exactly
    // once, and the two malformed payloads are counted, not stored.
    let node = TestNode::in_process().await?;
    let scratch = tempfile::tempdir()?;
    let mut broker = Broker::start(scratch.path(), free_port()).await;
    let mut edge = TestEdge::create(
        &node,
        "pi-mqtt",
        &format!(
            r#"
[spool]
sync_interval_ms = 20

[[sources]]
type = "mqtt"
name = "mosquitto"
host = "127.0.0.1"
port = {port}
client_id = "sluice-edge-e2e"

[[sources.routes]]
filter = "devsecops/sensors/+"
stream = "events"
sensor = "lab/{{2}}"
format = "number"
reading = "temperature"

[[sources.routes]]
filter = "site/+/door"
stream = "events"
sensor = "{{1}}/door"
format = "json"
reading = "metric"
metric_name = "door_open"
unit = "bool"
time_field = "ts"
"#,
            port = broker.port
        ),
    )?;
    edge.start().await?;
    broker.wait_log("Sending SUBACK to sluice-edge-e2e").await;

    let temperatures = ["21", "21.5", "22.25", "-4.5", "0", "19.875", "23.456", "30"];
    broker.publish_with_paho(&temperatures).await;
    let doors = [
        r#"{"value": 1, "ts": 1700000000000}"#,
        r#"{"value": 0, "ts": 1700000005000}"#,
        r#"{"value": "open"}"#,
        r#"{"value": 1, "ts": 1700000009000}"#,
        "not json",
    ];
    broker.publish_lines("site/pharmacy/door", &doors).await;

    let status = edge
        .wait_for("11 readings delivered", LONG, |s| {
            s.uplink.delivered >= 11 && s.spools.values().all(|v| v.records == 0)
        })
        .await?;
    assert_eq!(
        status.sources["mosquitto"]
            .rejected
            .get("malformed_payload"),
        Some(&2),
        "{status:#?}"
    );
    edge.stop().await?;

    let admin = node.admin().await?;
    let events: Vec<_> = fetch_stream(&admin, EVENTS)
        .await?
        .into_iter()
        .flatten()
        .collect();
    let of = |sensor: &str| -> Vec<(u64, Payload, i64)> {
        let mut found: Vec<_> = events
            .iter()
            .filter(|e| e.event.sensor.as_str() == sensor)
            .map(|e| (e.event.seq, e.event.payload.clone(), e.event.device_time.0))
            .collect();
        found.sort_by_key(|(seq, _, _)| *seq);
        found
    };
    let lab = of("lab/temperature");
    let celsius: Vec<f64> = lab
        .iter()
        .map(|(_, p, _)| match p {
            Payload::Reading(Reading::Temperature { celsius }) => *celsius,
            other => panic!("not a temperature: {other:?}"),
        })
        .collect();
    let want: Vec<f64> = temperatures
        .iter()
        .map(|t| t.parse().unwrap_or(f64::NAN))
        .collect();
    assert_eq!(celsius, want);
    assert_eq!(
        lab.iter().map(|(s, _, _)| *s).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
    let door = of("pharmacy/door");
    let door_values: Vec<(f64, i64)> = door
        .iter()
        .map(|(_, p, t)| match p {
            Payload::Reading(Reading::Metric { name, value, .. }) if name == "door_open" => {
                (*value, *t)
            }
            other => panic!("not a door reading: {other:?}"),
        })
        .collect();
    assert_eq!(
        door_values,
        [
            (1.0, 1_700_000_000_000),
            (0.0, 1_700_000_005_000),
            (1.0, 1_700_000_009_000)
        ]
    );
    Ok(())
}
