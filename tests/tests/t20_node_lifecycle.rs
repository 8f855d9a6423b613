//! Node lifecycle as an operator meets it: one node process per data directory.

use sluice_tests::{run_cli, TestNode};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_the_same_data_dir_refuses_to_start() {
    // Checks the data_dir lock: while a `sluice run` serves a data directory, a second one with
    // the same config exits non-zero saying another process holds the directory, even after the
    // `lock` file older versions locked was deleted (the lock is on the directory itself), and
    // the first keeps serving.
    let mut node = TestNode::builder().child_process().start().await.unwrap();
    let config = node.config_path().to_str().unwrap().to_owned();
    let data_dir = node.config().node.data_dir.clone();
    match std::fs::remove_file(data_dir.join("lock")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        other => other.unwrap(),
    }
    let second = run_cli(&["run", "--config", &config], b"", Duration::from_secs(60))
        .await
        .unwrap();
    assert_ne!(second.code, Some(0), "{second:?}");
    assert!(
        second
            .stderr
            .contains(&format!("another process holds {}", data_dir.display())),
        "{}",
        second.stderr
    );
    assert!(!second.stdout.contains("listening"), "{second:?}");
    node.admin().await.unwrap();
    node.stop().await.unwrap();
}
