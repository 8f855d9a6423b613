//! Checks that the checkers can fail. With the planted `ack-before-fsync` bug (`fdatasync` of
//! the first partition's segment files does nothing after their first sync, so the node
//! acknowledges writes that the next crash loses) every seed tried must report a broken acked
//! durability invariant — either an acknowledged record missing from the log read back, or a
//! log the node cannot recover — while the same seeds pass without the bug. With the planted
//! `edge-ack-unstored` bug (the transport of edge 0 tells the agent that records were appended
//! which never reached the node) every seed with an edge must report a broken edge
//! no-silent-gaps invariant.

use sluice_sim::{run_seed, Plant, Settings};

#[test]
fn planted_ack_before_fsync_is_caught() {
    // Three seeds, with and without the plant; the failure must name the invariant.
    let clean = Settings {
        safety_ms: 5_000,
        producers_max: 3,
        faults_max: 4,
        ..Settings::default()
    };
    let planted = Settings {
        plant: Some(Plant::AckBeforeFsync),
        ..clean.clone()
    };
    for seed in 1..=3 {
        let outcome = run_seed(seed, &planted);
        let violation = outcome.failure.unwrap_or_else(|| {
            panic!(
                "seed {seed}: the planted bug went unnoticed: {:?}",
                outcome.summary
            )
        });
        assert_eq!(
            violation.invariant, "acked_durability",
            "seed {seed}: {violation}"
        );
        assert!(
            run_seed(seed, &clean).failure.is_none(),
            "seed {seed} fails without the plant"
        );
    }
}

#[test]
fn planted_edge_ack_unstored_is_caught() {
    // The first three seeds that draw an edge, with and without the plant. The agent drains (it
    // believes every record delivered) and the node never saw the swallowed ones, so only the
    // checkers' own record of what the agent accepted can catch the loss.
    let clean = Settings {
        safety_ms: 5_000,
        producers_max: 3,
        faults_max: 4,
        edges_max: 3,
        ..Settings::default()
    };
    let planted = Settings {
        plant: Some(Plant::EdgeAckUnstored),
        ..clean.clone()
    };
    let mut n_caught = 0;
    for seed in 1..=10 {
        let outcome = run_seed(seed, &planted);
        if outcome.summary.n_edges == 0 {
            continue;
        }
        let violation = outcome.failure.unwrap_or_else(|| {
            panic!(
                "seed {seed}: the planted bug went unnoticed: {:?}",
                outcome.summary
            )
        });
        assert_eq!(
            violation.invariant, "edge_no_silent_gaps",
            "seed {seed}: {violation}"
        );
        assert!(
            violation.details.contains("silently lost"),
            "seed {seed}: {violation}"
        );
        assert!(
            run_seed(seed, &clean).failure.is_none(),
            "seed {seed} fails without the plant"
        );
        n_caught += 1;
        if n_caught == 3 {
            return;
        }
    }
    panic!("only {n_caught} of seeds 1..=10 drew an edge");
}
