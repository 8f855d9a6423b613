//! Basics of the edge agent against a real node over QUIC + mTLS: simulated sensors' readings
//! arrive once each, in per-sensor order, stamped with the agent's certificate identity.

use anyhow::Result;
use sluice_tests::edge::{histories, sim_source, TestEdge, FAST_SYNC};
use sluice_tests::{fetch_stream, TestNode, EVENTS};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_readings_arrive_once_in_order() -> Result<()> {
    // Checks the whole path: 8 simulated sensors x 50 readings go through validation, the
    // spool and the uplink; the node holds each seq exactly once, in seq order per sensor, from
    // the agent's identity, and the agent's status accounts for every reading.
    let node = TestNode::in_process().await?;
    let room = sim_source("room", 4, 5).readings_max(50).no_dropouts();
    let mut edge = TestEdge::create(&node, "pi-1", &format!("{FAST_SYNC}{room}"))?;
    edge.start().await?;
    let status = edge
        .wait_for("400 readings delivered", Duration::from_secs(60), |s| {
            s.uplink.delivered >= 400 && s.spools.values().all(|v| v.records == 0)
        })
        .await?;
    assert_eq!(status.sources["room"].read, 400);
    assert_eq!(status.sources["room"].spooled, 400);
    assert_eq!(status.uplink.delivered, 400, "{status:#?}");
    edge.stop().await?;

    let admin = node.admin().await?;
    let by_sensor = histories(&fetch_stream(&admin, EVENTS).await?);
    assert_eq!(by_sensor.len(), 8, "{by_sensor:#?}");
    for ((producer, sensor, _epoch), history) in &by_sensor {
        assert_eq!(producer, "sluice://itest/edge/pi-1");
        assert_eq!(history.delivered, (0..50).collect::<Vec<_>>(), "{sensor}");
        assert!(history.dropped.is_empty(), "{sensor}: {history:?}");
    }
    Ok(())
}
