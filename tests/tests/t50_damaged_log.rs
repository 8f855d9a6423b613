//! Damaged logs end to end: a flipped bit in an acknowledged entry in the middle of the active
//! segment must be reported, never discarded, by the node and by `sluice storage check`.

use sluice_proto::msg::{RecordOutcome, RecordRejection};
use sluice_tests::{
    fetch_partition, produce_acked, run_cli, segment_data_end, segment_files, stream,
    tagged_records, within, TestNode, ENTRY_HEADER_LEN, EVENTS, SEGMENT_HEADER_LEN, SINGLE, STEP,
};
use std::time::Duration;

/// Byte positions of the entries of a segment file.
fn entry_positions(bytes: &[u8]) -> Vec<u64> {
    let end = segment_data_end(bytes).unwrap();
    let mut pos = SEGMENT_HEADER_LEN;
    let mut out = Vec::new();
    while pos < end {
        out.push(pos);
        let at = pos as usize;
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        pos += ENTRY_HEADER_LEN + u64::from(len);
    }
    out
}

#[tokio::test]
async fn a_flipped_bit_mid_segment_is_reported_and_nothing_after_it_is_reused() {
    // Checks the reported bug through the real node and CLI: after one bit of the middle entry
    // of the active segment flips, `sluice storage check` exits 1 naming the file and byte, the
    // node still starts, serves the records before the damage, refuses produces to that
    // partition with a Storage error naming the file and byte (so no offset of the lost entries
    // is handed to a new record), serves other streams as before, and never rewrites the file.
    let mut node = TestNode::in_process().await.unwrap();
    let edge = node.edge_client("pi").await.unwrap();
    let mut sent = Vec::new();
    for chunk in 0..3u64 {
        let records = tagged_records("flip", 1, chunk * 20..chunk * 20 + 20, 50).unwrap();
        produce_acked(&edge, SINGLE, records.clone()).await.unwrap();
        sent.extend(records);
    }
    produce_acked(&edge, EVENTS, tagged_records("other", 1, 0..5, 50).unwrap())
        .await
        .unwrap();
    drop(edge);
    node.stop().await.unwrap();

    let path = segment_files(&node.partition_dir(SINGLE, 0))
        .unwrap()
        .pop()
        .expect("no segment file");
    let mut bytes = std::fs::read(&path).unwrap();
    let positions = entry_positions(&bytes);
    assert_eq!(positions.len(), 3, "one entry per request");
    let victim = positions[1];
    bytes[victim as usize + 40] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();

    let data_dir = node.config().node.data_dir.display().to_string();
    let out = run_cli(
        &["storage", "check", "--data-dir", &data_dir],
        b"",
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(out.code, Some(1), "{out:?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{SINGLE}/0:")))
        .unwrap_or_else(|| panic!("no line for {SINGLE}/0: {out:?}"));
    assert!(
        line.contains("CORRUPT")
            && line.contains(path.to_str().unwrap())
            && line.contains(&format!("byte {victim}")),
        "{line}"
    );
    assert!(
        out.stdout.contains(&format!("{EVENTS}/0: ok")),
        "{}",
        out.stdout
    );

    node.start().await.unwrap();
    let admin = node.admin().await.unwrap();
    let events = fetch_partition(&admin, SINGLE, 0).await.unwrap();
    assert_eq!(events.len(), 20, "the prefix before the damage");
    for (stored, record) in events.iter().zip(&sent) {
        assert_eq!(
            (stored.event.seq, &stored.event.payload),
            (record.seq, &record.payload)
        );
    }
    let edge = node.edge_client("pi").await.unwrap();
    let more = tagged_records("flip", 1, 60..61, 50).unwrap();
    let response = within("produce", STEP, edge.produce(stream(SINGLE).unwrap(), more))
        .await
        .unwrap()
        .unwrap();
    match &response.outcomes[0] {
        RecordOutcome::Rejected(RecordRejection::Storage { reason }) => assert!(
            reason.contains(path.to_str().unwrap()) && reason.contains(&format!("byte {victim}")),
            "{reason}"
        ),
        other => panic!("a corrupt partition answered {other:?}"),
    }
    let acks = produce_acked(
        &edge,
        EVENTS,
        tagged_records("other", 1, 5..10, 50).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(acks.len(), 5);
    node.stop().await.unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the damage was rewritten"
    );
}

#[tokio::test]
async fn a_partition_whose_directory_and_manifest_are_both_deleted_is_reported_not_restarted_empty()
{
    // Checks the node's partition catalog end to end: a data directory without one (an earlier
    // release's) adopts it at start; after both the segment directory and the manifest of a
    // partition holding acknowledged records are deleted, `sluice storage check` exits 1 naming
    // that partition as corrupt, and the node starts but refuses produces to it with a Storage
    // error naming its directory (it never starts it empty, handing its offsets to new
    // records), while other streams go on.
    let mut node = TestNode::in_process().await.unwrap();
    let edge = node.edge_client("pi").await.unwrap();
    produce_acked(&edge, SINGLE, tagged_records("gone", 1, 0..10, 50).unwrap())
        .await
        .unwrap();
    drop(edge);
    node.stop().await.unwrap();
    let data_dir = node.config().node.data_dir.clone();
    let catalog = sluice_node::catalog::catalog_path(&data_dir);
    std::fs::remove_file(&catalog).unwrap();
    node.start().await.unwrap();
    node.stop().await.unwrap();
    assert!(catalog.exists(), "the catalog was not adopted");

    let paths = sluice_node::node::partition_paths(&data_dir, &stream(SINGLE).unwrap(), 0);
    std::fs::remove_dir_all(&paths.dir).unwrap();
    std::fs::remove_file(&paths.manifest).unwrap();
    let dir = paths.dir.display().to_string();
    let out = run_cli(
        &[
            "storage",
            "check",
            "--data-dir",
            &data_dir.display().to_string(),
        ],
        b"",
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(out.code, Some(1), "{out:?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{SINGLE}/0:")))
        .unwrap_or_else(|| panic!("no line for {SINGLE}/0: {out:?}"));
    assert!(line.contains("CORRUPT") && line.contains(&dir), "{line}");

    node.start().await.unwrap();
    let edge = node.edge_client("pi").await.unwrap();
    let more = tagged_records("gone", 1, 10..11, 50).unwrap();
    let response = within("produce", STEP, edge.produce(stream(SINGLE).unwrap(), more))
        .await
        .unwrap()
        .unwrap();
    match &response.outcomes[0] {
        RecordOutcome::Rejected(RecordRejection::Storage { reason }) => {
            assert!(reason.contains(&dir), "{reason}")
        }
        other => panic!("a lost partition answered {other:?}"),
    }
    let acks = produce_acked(&edge, EVENTS, tagged_records("other", 1, 0..5, 50).unwrap())
        .await
        .unwrap();
    assert_eq!(acks.len(), 5);
    node.stop().await.unwrap();
    assert!(!paths.dir.exists(), "the lost partition was started empty");
}
