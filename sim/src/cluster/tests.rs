//! Cluster runs end to end: determinism of a seed, a clean run passing every checker, and the
//! planted bug caught.

use super::*;

fn settings(plant: Option<Plant>) -> Settings {
    Settings {
        plant,
        nodes: Some(3),
        ..Settings::default()
    }
}

#[test]
fn one_seed_gives_one_cluster_run() {
    // Checks determinism: one seed twice gives the same trace hash (every operation, fault,
    // outcome and network delivery), and the run passes every checker with faults and
    // operations actually happening.
    let first = run_seed(1, &settings(None), 3);
    let second = run_seed(1, &settings(None), 3);
    assert_eq!(first.failure, None, "{:?}", first.failure);
    assert_eq!(first.summary.trace_hash, second.summary.trace_hash);
    assert_eq!(first.summary.n_steps, second.summary.n_steps);
    let s = &first.summary;
    assert!(s.n_applied + s.n_rejected > 0, "{s:?}");
    assert!(s.n_reads > 0, "{s:?}");
    let other = run_seed(2, &settings(None), 3);
    assert_ne!(first.summary.trace_hash, other.summary.trace_hash);
}

#[test]
fn the_planted_unsynced_append_is_caught() {
    // Checks that the checkers catch the planted `metadata-ack-before-fsync` bug (appends that
    // complete openraft's flush without fdatasync) within a few seeds, while the same seeds
    // pass without it.
    let caught: Vec<u64> = (1..=5)
        .filter(|seed| {
            let outcome = run_seed(*seed, &settings(Some(Plant::MetadataAckBeforeFsync)), 3);
            if let Some(failure) = &outcome.failure {
                assert!(failure.invariant.starts_with("cluster-"), "{failure}");
            }
            outcome.failure.is_some()
        })
        .collect();
    assert!(!caught.is_empty(), "no seed of 1..=5 caught the plant");
    for seed in &caught {
        let clean = run_seed(*seed, &settings(None), 3);
        assert_eq!(clean.failure, None, "seed {seed} fails without the plant");
    }
}

#[test]
fn five_nodes_pass_every_checker() {
    // Checks a five-node run end to end: it passes every checker and its replicas committed
    // the clients' writes.
    let mut five = settings(None);
    five.nodes = Some(5);
    let outcome = run_seed(3, &five, 5);
    assert_eq!(outcome.failure, None, "{:?}", outcome.failure);
    assert!(outcome.summary.n_applied > 0, "{:?}", outcome.summary);
    assert!(outcome.summary.last_index > 0, "{:?}", outcome.summary);
}
