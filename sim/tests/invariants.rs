//! Runs five seeds with the fault mix (lost, duplicated and delayed requests and responses;
//! crashes between tasks, inside disk operations and inside recovery; clean restarts) and checks
//! that every invariant holds after every restart and at the end, and that the faults the
//! checkers are meant to survive really happened. Failed `fdatasync`s (Linux semantics) are
//! part of the mix, and so are edge agents with faults of their own.

use sluice_sim::{run_seed, RunSummary, Settings};

#[test]
fn five_seeds_keep_every_invariant() {
    // Each seed must pass; together they must have crashed the node, torn a write, retried a
    // stored record (a duplicate ack) and read the log back several times.
    let settings = Settings {
        safety_ms: 5_000,
        producers_max: 3,
        faults_max: 4,
        ..Settings::default()
    };
    let mut total = RunSummary::default();
    for seed in 1..=5 {
        let outcome = run_seed(seed, &settings);
        let s = &outcome.summary;
        assert!(outcome.failure.is_none(), "seed {seed} failed: {}\n  replay: cargo run -p sluice-sim --release -- --seed {seed} --safety-ms 5000 --producers-max 3 --faults-max 4", outcome.failure.as_ref().map(ToString::to_string).unwrap_or_default());
        assert!(
            s.n_records > 0 && s.n_events == s.n_records,
            "seed {seed}: {s:?}"
        );
        assert!(
            s.n_crashes + s.n_crashes_mid_io >= 1,
            "seed {seed} never crashed: {s:?}"
        );
        total.n_crashes += s.n_crashes + s.n_crashes_mid_io;
        total.n_fired_mid_io += s.n_fired_mid_io;
        total.n_torn_writes += s.n_torn_writes;
        total.n_duplicate_acks += s.n_duplicate_acks;
        total.n_checks += s.n_checks;
    }
    assert!(
        total.n_fired_mid_io >= 1,
        "no crash fired inside a disk operation: {total:?}"
    );
    assert!(total.n_torn_writes >= 1, "no write was torn: {total:?}");
    assert!(
        total.n_duplicate_acks >= 1,
        "no retry found its original: {total:?}"
    );
    assert!(total.n_checks >= 10, "too few read-backs: {total:?}");
}

#[test]
fn fsync_failures_lose_no_acknowledged_record() {
    // Checks the fsyncgate defence: with failed `fdatasync`s in the mix (the pages leave the
    // write-back queue but reads still return them), twenty seeds keep every invariant — a
    // restarted partition cuts its log back to what was really durable instead of adopting the
    // page cache — and the fault really fired.
    let settings = Settings {
        safety_ms: 5_000,
        producers_max: 3,
        faults_max: 6,
        ..Settings::default()
    };
    let mut n_sync_errors = 0;
    for seed in 1..=20 {
        let outcome = run_seed(seed, &settings);
        assert!(
            outcome.failure.is_none(),
            "seed {seed}: {}",
            outcome
                .failure
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        n_sync_errors += outcome.summary.n_sync_errors;
    }
    assert!(n_sync_errors >= 1, "no fdatasync failed in twenty seeds");
}

#[test]
fn edges_keep_every_invariant_through_their_faults() {
    // Four seeds chosen to cover the edge fault mix: each passes, and together they cut an
    // edge's power (once inside a disk operation), restart one cleanly, take links down, jump
    // the clock by a day, and get readings declared lost to a power cut, to a full spool and
    // to expiry — so the no-silent-gaps checker saw every kind of declaration.
    let settings = Settings {
        safety_ms: 5_000,
        producers_max: 3,
        faults_max: 4,
        edges_max: 3,
        ..Settings::default()
    };
    let mut total = RunSummary::default();
    for seed in [1, 2, 8, 11] {
        let outcome = run_seed(seed, &settings);
        let s = &outcome.summary;
        assert!(outcome.failure.is_none(), "seed {seed} failed: {}\n  replay: cargo run -p sluice-sim --release -- --seed {seed} --safety-ms 5000 --producers-max 3 --faults-max 4", outcome.failure.as_ref().map(ToString::to_string).unwrap_or_default());
        assert!(
            s.n_edges >= 1 && s.edge_totals.n_events > 0 && s.n_events == s.n_records,
            "seed {seed}: {s:?}"
        );
        total.n_edge_power_cuts += s.n_edge_power_cuts;
        total.n_edge_power_cuts_mid_io += s.n_edge_power_cuts_mid_io;
        total.n_edge_clean_restarts += s.n_edge_clean_restarts;
        total.n_edge_outages += s.n_edge_outages;
        total.n_jumps += s.n_jumps;
        total.edge_totals.n_power_loss += s.edge_totals.n_power_loss;
        total.edge_totals.n_spool_full += s.edge_totals.n_spool_full;
        total.edge_totals.n_expired += s.edge_totals.n_expired;
    }
    assert!(total.n_edge_power_cuts_mid_io >= 1, "{total:?}");
    assert!(
        total.n_edge_power_cuts > total.n_edge_power_cuts_mid_io,
        "{total:?}"
    );
    assert!(total.n_edge_clean_restarts >= 1, "{total:?}");
    assert!(total.n_edge_outages >= 1 && total.n_jumps >= 1, "{total:?}");
    let t = &total.edge_totals;
    assert!(
        t.n_power_loss > 0 && t.n_spool_full > 0 && t.n_expired > 0,
        "{total:?}"
    );
}
