//! Checks that the checkers can fail. With the planted `ack-before-fsync` bug (`fdatasync` of
//! the first partition's segment files does nothing after their first sync, so the node
//! acknowledges writes that the next crash loses) every seed tried must report a broken acked
//! durability invariant — either an acknowledged record missing from the log read back, or a
//! log the node cannot recover — while the same seeds pass without the bug.

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
