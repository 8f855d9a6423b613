//! The edge agent through its environment's worst days: a node outage while 10k readings are
//! produced, `kill -9` of the agent during heavy spooling, and a spool that overflows under
//! `drop_oldest`. Each checks, from what the node stores, that nothing is lost silently or
//! stored twice.

use anyhow::Result;
use sluice_tests::edge::{histories, sim_source, TestEdge};
use sluice_tests::{fetch_stream, free_udp_port, TestNode, EVENTS, SINGLE};
use std::net::SocketAddr;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

/// A node on a fixed port (so an agent finds it again after a restart), not started yet.
fn fixed_port_node() -> Result<TestNode> {
    let port = free_udp_port()?;
    TestNode::builder()
        .configure(move |c| c.transport.listen = SocketAddr::from(([127, 0, 0, 1], port)))
        .create()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_outage_loses_and_duplicates_nothing() -> Result<()> {
    // Checks that readings produced while the node is down (10k in all) are spooled, then all
    // delivered after the node comes back, in per-sensor order, each exactly once.
    let mut node = fixed_port_node()?;
    node.start().await?;
    let mut edge = TestEdge::create(
        &node,
        "pi-outage",
        &format!(
            r#"
[spool]
sync_interval_ms = 50
{}"#,
            sim_source("fridges", 10, 2)
                .temperature_only()
                .readings_max(1000)
                .no_dropouts()
        ),
    )?;
    edge.start().await?;
    edge.wait_for("first readings delivered", LONG, |s| {
        s.uplink.delivered >= 100
    })
    .await?;
    node.stop().await?;
    let during = edge
        .wait_for("all 10k readings spooled", LONG, |s| {
            s.sources["fridges"].spooled == 10_000
        })
        .await?;
    assert!(
        during.uplink.delivered < 10_000,
        "the outage must cover part of the production: {during:#?}"
    );
    node.start().await?;
    let status = edge
        .wait_for("10k readings delivered", LONG, |s| {
            s.spools.values().all(|v| v.records == 0) && s.uplink.delivered >= 10_000
        })
        .await?;
    assert!(status.uplink.connects >= 2, "{status:#?}");
    edge.stop().await?;

    let admin = node.admin().await?;
    let by_sensor = histories(&fetch_stream(&admin, EVENTS).await?);
    assert_eq!(by_sensor.len(), 10);
    for ((_, sensor, _), history) in &by_sensor {
        assert_eq!(history.delivered, (0..1000).collect::<Vec<_>>(), "{sensor}");
        assert!(
            history.dropped.is_empty(),
            "{sensor}: {:?}",
            history.dropped
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_heavy_spooling_leaves_no_silent_gap() -> Result<()> {
    // Checks the no-silent-gaps rule across a crash: the agent process is killed with SIGKILL
    // while spooling fast, restarted, and run to completion; for every sensor and boot epoch
    // the node's delivered seqs and declared drops tile 0..end with no hole and no overlap,
    // the killed epoch accounts for at least every reading it had acknowledged spooling, only
    // power-loss declarations appear in it, and none of them took a reading the agent had
    // reported synced before the kill: the killed epoch delivers at least as many readings as
    // its spool's `synced` counter (readings a successful fdatasync covered) showed then,
    // whatever the machine's speed.
    let node = TestNode::in_process().await?;
    let mut edge = TestEdge::create(
        &node,
        "pi-crash",
        &format!(
            r#"
[spool]
sync_interval_ms = 100
seq_reserve_block = 256
write_buffer_bytes_max = 4096
{}"#,
            sim_source("lab", 10, 1)
                .temperature_only()
                .readings_max(3000)
                .no_dropouts()
        ),
    )?;
    edge.spawn().await?;
    let before = edge
        .wait_for("heavy spooling", LONG, |s| {
            s.sources["lab"].spooled >= 5_000
        })
        .await?;
    edge.kill().await?;
    edge.spawn().await?;
    edge.wait_for(
        "the new epoch spooled and everything delivered",
        LONG,
        |s| s.sources["lab"].spooled == 30_000 && s.spools.values().all(|v| v.records == 0),
    )
    .await?;
    edge.stop().await?;

    let admin = node.admin().await?;
    let by_sensor = histories(&fetch_stream(&admin, EVENTS).await?);
    let epochs: std::collections::BTreeSet<u64> = by_sensor.keys().map(|k| k.2).collect();
    assert_eq!(epochs.len(), 2, "two boot epochs: {epochs:?}");
    let first = *epochs.iter().next().unwrap_or(&0);
    let mut first_epoch_seqs = 0;
    let mut first_epoch_delivered = 0u64;
    for ((_, sensor, epoch), history) in &by_sensor {
        let end = history.check_tiles(&format!("{sensor} epoch {epoch}"))?;
        if *epoch == first {
            first_epoch_seqs += end;
            first_epoch_delivered += history.delivered.len() as u64;
            for (_, _, reason) in &history.dropped {
                assert_eq!(reason, "PowerLoss", "{sensor}: {history:?}");
            }
            assert!(!history.delivered.is_empty(), "{sensor}: nothing delivered");
        } else {
            assert_eq!(end, 3000, "{sensor}: the clean epoch delivers everything");
            assert!(history.dropped.is_empty(), "{sensor}: {history:?}");
        }
    }
    // What a sync covered before the kill was durable: it is delivered, never declared lost.
    let synced_before: u64 = before.spools.values().map(|s| s.synced).sum();
    assert!(
        synced_before > 0,
        "nothing synced before the kill: {before:#?}"
    );
    assert!(
        first_epoch_delivered >= synced_before,
        "the killed epoch delivered {first_epoch_delivered} readings, but {synced_before} were synced before the kill"
    );
    let spooled_before = before.sources["lab"].spooled;
    assert!(
        first_epoch_seqs >= spooled_before,
        "the killed epoch accounts for {first_epoch_seqs} seqs, but {spooled_before} were spooled"
    );
    Ok(())
}

/// A `[spool]` of 4 KiB segments, 512-byte records and `spool_bytes_max` in all, so a few
/// thousand readings fill it, with `policy` when it is full.
fn small_spool(policy: &str, spool_bytes_max: u64) -> String {
    format!(
        "[spool]\nsync_interval_ms = 20\nsegment_bytes_max = 4096\n\
         spool_bytes_max = {spool_bytes_max}\nrecord_bytes_max = 512\npolicy = \"{policy}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_under_drop_oldest_declares_every_lost_seq() -> Result<()> {
    // Checks that when the spool overflows while the node is unreachable, the oldest readings
    // are replaced by Dropped{SpoolFull} records that are delivered like data and account for
    // every lost seq: per sensor, delivered seqs and declared ranges tile 0..2000 exactly.
    let mut node = fixed_port_node()?;
    let mut edge = TestEdge::create(
        &node,
        "pi-full",
        &format!(
            "{}{}",
            small_spool("drop_oldest", 16384),
            sim_source("door", 2, 1)
                .temperature_only()
                .readings_max(2000)
                .no_dropouts()
        ),
    )?;
    edge.start().await?;
    let offline = edge
        .wait_for("4000 readings taken while the node is down", LONG, |s| {
            s.sources["door"].spooled == 4000
        })
        .await?;
    let dropped_full: u64 = offline
        .spools
        .values()
        .map(|v| v.dropped["spool_full"])
        .sum();
    assert!(dropped_full > 0, "the spool must overflow: {offline:#?}");
    node.start().await?;
    let status = edge
        .wait_for("spool drained", LONG, |s| {
            s.spools.values().all(|v| v.records == 0)
        })
        .await?;
    edge.stop().await?;

    let admin = node.admin().await?;
    let by_sensor = histories(&fetch_stream(&admin, EVENTS).await?);
    assert_eq!(by_sensor.len(), 2);
    let mut declared = 0;
    for ((_, sensor, _), history) in &by_sensor {
        assert_eq!(history.check_tiles(sensor)?, 2000, "{sensor}");
        assert!(!history.dropped.is_empty(), "{sensor}: nothing declared");
        for (first, last, reason) in &history.dropped {
            assert_eq!(reason, "SpoolFull");
            declared += last - first + 1;
        }
    }
    let counted: u64 = status
        .spools
        .values()
        .map(|v| v.dropped["spool_full"])
        .sum();
    assert_eq!(declared, counted, "declared seqs match the agent's count");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_under_block_holds_readings_back_and_drops_nothing() -> Result<()> {
    // Checks backpressure: with policy `block`, a full spool makes the source wait (offers are
    // held, not dropped) while the node is unreachable; once it is back every reading arrives
    // and no drop is declared.
    let mut node = fixed_port_node()?;
    let mut edge = TestEdge::create(
        &node,
        "pi-block",
        &format!(
            "{}{}",
            small_spool("block", 16384),
            sim_source("press", 2, 1)
                .temperature_only()
                .readings_max(1000)
                .no_dropouts()
        ),
    )?;
    edge.start().await?;
    let blocked = edge
        .wait_for("the source held back", LONG, |s| s.offers_held > 0)
        .await?;
    assert!(blocked.sources["press"].spooled < 2000, "{blocked:#?}");
    node.start().await?;
    let status = edge
        .wait_for("everything delivered", LONG, |s| {
            s.sources["press"].spooled == 2000 && s.spools.values().all(|v| v.records == 0)
        })
        .await?;
    for spool in status.spools.values() {
        assert!(spool.dropped.values().all(|n| *n == 0), "{status:#?}");
    }
    edge.stop().await?;

    let admin = node.admin().await?;
    for ((_, sensor, _), history) in histories(&fetch_stream(&admin, EVENTS).await?) {
        assert_eq!(history.delivered, (0..1000).collect::<Vec<_>>(), "{sensor}");
        assert!(history.dropped.is_empty(), "{sensor}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_fails_over_to_the_next_node_address() -> Result<()> {
    // Checks failover at connect: the first configured address has no node, the second does;
    // the agent delivers through the second.
    let node = TestNode::in_process().await?;
    let dead = SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
    let nodes = [dead.to_string(), node.addr().to_string()];
    let mut edge = TestEdge::builder(&node, "pi-failover")
        .nodes(&nodes)
        .create(&format!(
            r#"
[spool]
sync_interval_ms = 20
{}"#,
            sim_source("s", 1, 5).readings_max(20)
        ))?;
    edge.start().await?;
    let status = edge
        .wait_for("delivered through the second node", LONG, |s| {
            s.uplink.delivered >= 40
        })
        .await?;
    let peer = status.uplink.connected_to.unwrap_or_default();
    assert!(peer.contains(&node.addr().to_string()), "{peer}");
    edge.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_stream_does_not_hold_back_the_others() -> Result<()> {
    // Checks that under `block`, a full spool holds back only its own stream's sources: while
    // the fast source of `events` waits, the slow source of `single` still gets its readings
    // spooled, and once the node is back both streams deliver everything.
    let mut node = fixed_port_node()?;
    let mut edge = TestEdge::create(
        &node,
        "pi-two-streams",
        &format!(
            "{}{}{}",
            small_spool("block", 32768),
            sim_source("fast", 2, 1)
                .temperature_only()
                .readings_max(1000)
                .no_dropouts(),
            sim_source("slow", 1, 100)
                .on_stream(SINGLE)
                .with("sensor_prefix = \"slow\"")
                .with("quantities = [\"humidity\"]")
                .readings_max(20)
                .no_dropouts(),
        ),
    )?;
    edge.start().await?;
    let held = edge
        .wait_for(
            "the fast source held back and the slow one done",
            LONG,
            |s| s.offers_held > 0 && s.sources["slow"].spooled == 20,
        )
        .await?;
    assert!(held.sources["fast"].spooled < 2000, "{held:#?}");
    node.start().await?;
    edge.wait_for("everything delivered", LONG, |s| {
        s.sources["fast"].spooled == 2000 && s.spools.values().all(|v| v.records == 0)
    })
    .await?;
    edge.stop().await?;
    let admin = node.admin().await?;
    let single = histories(&fetch_stream(&admin, "single").await?);
    assert_eq!(single.len(), 1);
    for history in single.values() {
        assert_eq!(history.delivered, (0..20).collect::<Vec<_>>());
    }
    Ok(())
}
