//! Core tests of the uplink: scripted connects, sends and answers on a hand-advanced clock.

use super::*;
use sluice_proto::env::rng_for;
use sluice_proto::msg::Durability;
use sluice_proto::{BootEpoch, Offset, PartitionId, Payload, SensorId, UnixMillis};

fn limits() -> UplinkLimits {
    UplinkLimits {
        batches_in_flight_max: 2,
        batch_records_max: 3,
        linger: Duration::from_millis(10),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(1000),
    }
}

fn origin() -> Instant {
    // Any origin will do: the core only compares and adds.
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}

fn record(sensor: &str, seq: u64) -> Record {
    Record {
        sensor: SensorId::new(sensor).unwrap_or_else(|e| panic!("{e}")),
        boot_epoch: BootEpoch(1),
        seq,
        device_time: UnixMillis(0),
        payload: Payload::Bytes(vec![]),
    }
}

/// The declaration of `sensor`'s seqs `seq..=seq_last` as dropped (reason `Invalid`).
fn declaration(sensor: &str, seq: u64, seq_last: u64) -> Record {
    let mut drop = record(sensor, seq);
    drop.payload = Payload::Dropped {
        seq_last,
        reason: sluice_proto::DropReason::Invalid,
    };
    drop
}

fn key(sensor: &str) -> StreamKey {
    StreamKey {
        sensor: SensorId::new(sensor).unwrap_or_else(|e| panic!("{e}")),
        epoch: BootEpoch(1),
    }
}

fn stream() -> StreamName {
    StreamName::new("sensors").unwrap_or_else(|e| panic!("{e}"))
}

fn appended() -> RecordOutcome {
    RecordOutcome::Appended {
        partition: PartitionId(0),
        offset: Offset(0),
        durability: Durability::LeaderFsync,
        duplicate: false,
    }
}

fn rejected(rejection: RecordRejection) -> RecordOutcome {
    RecordOutcome::Rejected(rejection)
}

fn overloaded() -> RecordOutcome {
    rejected(RecordRejection::Overloaded { partition: 0 })
}

fn response(outcomes: Vec<RecordOutcome>) -> Result<ProduceResponse, TransportError> {
    Ok(ProduceResponse {
        request_id: 1,
        outcomes,
    })
}

fn outputs(core: &mut UplinkCore) -> Vec<Output> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

/// A core that is connected (attempt 1) at `t0`.
fn connected(t0: Instant) -> UplinkCore {
    let mut core = UplinkCore::new(limits(), t0, rng_for(1, 2, 3));
    core.handle_tick(t0);
    assert_eq!(outputs(&mut core), [Output::Connect { attempt: 1 }]);
    core.handle_connected(1);
    core
}

fn ack(sensor: &str, seq_through: u64) -> Output {
    Output::Ack {
        stream: stream(),
        key: key(sensor),
        seq_through,
    }
}

#[test]
fn connect_failures_back_off_exponentially_with_jitter() {
    // Checks that failed connects are retried after 0.5..1 x 100, 200, 400, ... ms, capped at
    // 1000 ms, and that nothing can be sent while down.
    let t0 = origin();
    let mut core = UplinkCore::new(limits(), t0, rng_for(1, 2, 3));
    let mut now = t0;
    for (attempt, full_ms) in (1..).zip([100u64, 200, 400, 800, 1000, 1000]) {
        core.handle_tick(now);
        assert_eq!(outputs(&mut core), [Output::Connect { attempt }]);
        assert!(!core.can_send(now));
        core.handle_connect_failed(now, attempt);
        let retry_at = core.poll_timeout().unwrap_or(now);
        let waited = retry_at - now;
        assert!(
            waited >= Duration::from_millis(full_ms / 2)
                && waited <= Duration::from_millis(full_ms),
            "attempt {attempt}: waited {waited:?}"
        );
        core.handle_tick(retry_at - Duration::from_millis(1));
        assert_eq!(outputs(&mut core), []);
        now = retry_at;
    }
}

#[test]
fn window_and_linger_bound_sends() {
    // Checks that at most batches_in_flight_max requests are out, that a partial batch holds
    // the next send back for linger_ms, and that a full one does not.
    let t0 = origin();
    let mut core = connected(t0);
    assert!(core.can_send(t0));
    core.handle_sent(
        t0,
        stream(),
        &[record("a", 0), record("a", 1), record("a", 2)],
    );
    assert!(core.can_send(t0), "a full batch does not linger");
    core.handle_sent(t0, stream(), &[record("a", 3)]);
    assert!(!core.can_send(t0), "window of 2 is full");
    assert_eq!(core.n_in_flight_records(), 4);
    let report = core.handle_response(t0, 1, 1, response(vec![appended(); 3]));
    assert_eq!(report.n_delivered, 3);
    assert!(!core.can_send(t0), "lingering after the partial batch");
    assert!(core.can_send(t0 + Duration::from_millis(10)));
    assert_eq!(outputs(&mut core), [ack("a", 2)]);
}

#[test]
fn refusal_acks_only_the_stored_prefix_then_rewinds_after_drain() {
    // Checks the per-sensor prefix rule (a refused record holds back everything after it of
    // that sensor), that other sensors are acked, that sends stop until the in-flight requests
    // answered, and that the rewind comes once they have.
    let t0 = origin();
    let mut core = connected(t0);
    core.handle_sent(
        t0,
        stream(),
        &[record("a", 0), record("a", 1), record("b", 0)],
    );
    core.handle_sent(
        t0,
        stream(),
        &[record("a", 2), record("a", 3), record("a", 4)],
    );
    let report = core.handle_response(
        t0,
        1,
        1,
        response(vec![appended(), overloaded(), appended()]),
    );
    assert_eq!(report.n_delivered, 2);
    assert_eq!(report.refusals.len(), 1);
    assert_eq!(report.refusals[0].0, "overloaded");
    assert_eq!(outputs(&mut core), [ack("a", 0), ack("b", 0)]);
    assert!(!core.can_send(t0 + Duration::from_secs(60)), "holding");
    let gap = rejected(RecordRejection::SequenceGap {
        sensor: "a".into(),
        expected: 1,
        got: 2,
    });
    core.handle_response(t0, 1, 2, response(vec![gap.clone(), gap.clone(), gap]));
    assert_eq!(outputs(&mut core), [Output::Rewind]);
    let resume = core.poll_timeout().unwrap_or(t0);
    assert!(resume > t0);
    assert!(!core.can_send(resume - Duration::from_millis(1)));
    core.handle_tick(resume);
    assert!(core.can_send(resume));
    // A clean batch resets the backoff.
    core.handle_sent(
        resume,
        stream(),
        &[record("a", 1), record("a", 2), record("a", 3)],
    );
    core.handle_response(resume, 1, 3, response(vec![appended(); 3]));
    assert_eq!(core.failures(), 0);
}

#[test]
fn old_duplicates_count_as_stored() {
    // Checks that DuplicateTooOld releases the record (it was stored by an earlier attempt).
    let t0 = origin();
    let mut core = connected(t0);
    core.handle_sent(t0, stream(), &[record("a", 0), record("a", 1)]);
    let old = rejected(RecordRejection::DuplicateTooOld {
        sensor: "a".into(),
        seq: 0,
    });
    let report = core.handle_response(t0, 1, 1, response(vec![old, appended()]));
    assert_eq!(report.n_delivered, 2);
    assert!(report.refusals.is_empty());
    assert_eq!(outputs(&mut core), [ack("a", 1)]);
}

#[test]
fn lost_connection_rewinds_and_ignores_late_answers() {
    // Checks that a transport failure drops the connection, forgets the requests in flight,
    // rewinds, reconnects after a backoff, and that answers from the old connection are ignored.
    let t0 = origin();
    let mut core = connected(t0);
    core.handle_sent(
        t0,
        stream(),
        &[record("a", 0), record("a", 1), record("a", 2)],
    );
    core.handle_sent(
        t0,
        stream(),
        &[record("a", 3), record("a", 4), record("a", 5)],
    );
    let timeout = TransportError::new(TransportErrorKind::Timeout, "request timed out");
    let report = core.handle_response(t0, 1, 1, Err(timeout));
    assert_eq!(report.refusals[0].0, "timeout");
    assert_eq!(outputs(&mut core), [Output::Disconnect, Output::Rewind]);
    assert_eq!(core.n_in_flight(), 0);
    assert!(!core.can_send(t0));
    let late = core.handle_response(t0, 1, 2, response(vec![appended(); 3]));
    assert_eq!(late.n_delivered, 0);
    assert_eq!(outputs(&mut core), []);
    let retry_at = core.poll_timeout().unwrap_or(t0);
    core.handle_tick(retry_at);
    assert_eq!(outputs(&mut core), [Output::Connect { attempt: 2 }]);
    core.handle_connected(2);
    assert!(core.can_send(retry_at));
}

#[test]
fn whole_request_refusals_keep_the_connection() {
    // Checks that an ACL refusal is reported as needing an operator, keeps the connection,
    // and leads to a rewind and a backoff rather than a reconnect.
    let t0 = origin();
    let mut core = connected(t0);
    core.handle_sent(t0, stream(), &[record("a", 0)]);
    let forbidden = TransportError::new(
        TransportErrorKind::Remote(ErrorCode::Forbidden),
        "edge may not produce to sensors",
    );
    let report = core.handle_response(t0, 1, 1, Err(forbidden));
    assert_eq!(report.refusals[0].0, "forbidden");
    assert_eq!(report.refusals[0].1, Severity::NeedsOperator);
    assert_eq!(outputs(&mut core), [Output::Rewind]);
    assert_eq!(core.connection(), Some(1));
}

#[test]
fn wrong_outcome_count_is_a_protocol_error() {
    // Checks that a response that does not match its request drops the connection.
    let t0 = origin();
    let mut core = connected(t0);
    core.handle_sent(t0, stream(), &[record("a", 0), record("a", 1)]);
    let report = core.handle_response(t0, 1, 1, response(vec![appended()]));
    assert_eq!(report.n_delivered, 0);
    assert_eq!(report.refusals[0].0, "protocol");
    assert_eq!(outputs(&mut core), [Output::Disconnect, Output::Rewind]);
}

fn too_large() -> Result<ProduceResponse, TransportError> {
    Err(TransportError::new(
        TransportErrorKind::Remote(ErrorCode::TooLarge),
        "3 records exceed batch_records_max 1",
    ))
}

#[test]
fn a_request_too_large_for_the_node_is_resent_in_halves_down_to_one_reading() {
    // Checks that a request the node refuses whole as TooLarge (a node bound smaller than the
    // edge's) halves the records per request and rewinds at once without a failure; that a
    // lone reading still too large is asked to be declared (Output::Refused) instead of being
    // retried forever; and that a new connection starts again from the configured bound.
    let t0 = origin();
    let mut core = connected(t0);
    assert_eq!(core.batch_records_max(), 3);
    core.handle_sent(
        t0,
        stream(),
        &[record("a", 0), record("a", 1), record("a", 2)],
    );
    let report = core.handle_response(t0, 1, 1, too_large());
    assert_eq!(report.refusals[0].0, "too_large");
    assert_eq!(report.refusals[0].1, Severity::Split);
    assert_eq!(outputs(&mut core), [Output::Rewind]);
    assert_eq!(core.batch_records_max(), 1, "half of 3, at least one");
    assert_eq!(core.failures(), 0);
    assert!(core.can_send(t0), "resent at once");

    core.handle_sent(t0, stream(), &[record("a", 0)]);
    let report = core.handle_response(t0, 1, 2, too_large());
    assert_eq!(report.refusals[0].1, Severity::Declared);
    let out = outputs(&mut core);
    assert!(
        matches!(&out[..], [Output::Refused { key: k, seq: 0, reason, .. }, Output::Rewind]
            if *k == key("a") && reason.contains("too large")),
        "{out:?}"
    );
    assert_eq!(core.failures(), 0);
    assert!(core.can_send(t0), "no backoff");

    // A new connection may reach a reconfigured node: back to the configured bound.
    let failed = TransportError::new(TransportErrorKind::Closed, "gone");
    core.handle_sent(t0, stream(), &[record("a", 1)]);
    core.handle_response(t0, 1, 3, Err(failed));
    let retry = t0 + Duration::from_secs(5);
    core.handle_tick(retry);
    assert!(outputs(&mut core).contains(&Output::Connect { attempt: 2 }));
    core.handle_connected(2);
    assert_eq!(core.batch_records_max(), 3);
}

#[test]
fn a_lone_declaration_refused_as_too_large_backs_off() {
    // Checks that a Dropped declaration refused as TooLarge (nothing to split or declare) is
    // an ordinary refusal needing an operator: a failure counted, a backoff before resending.
    let t0 = origin();
    let mut core = connected(t0);
    core.handle_sent(t0, stream(), &[declaration("a", 0, 4)]);
    let report = core.handle_response(t0, 1, 1, too_large());
    assert_eq!(report.refusals[0].1, Severity::NeedsOperator);
    assert_eq!(outputs(&mut core), [Output::Rewind]);
    assert_eq!(core.failures(), 1);
    assert!(!core.can_send(t0), "backing off");
}

fn gap(expected: u64, got: u64) -> RecordOutcome {
    rejected(RecordRejection::SequenceGap {
        sensor: "a".into(),
        expected,
        got,
    })
}

#[test]
fn a_request_that_overtook_another_is_resent_at_once() {
    // Checks that sequence gaps of a request sent while another was in flight (it overtook
    // it) hold sends until the earlier one answered, then rewind and resume without a backoff
    // and without counting a failure; the earlier request's records are acked meanwhile.
    let t0 = origin();
    let mut core = connected(t0);
    core.handle_sent(
        t0,
        stream(),
        &[record("a", 0), record("a", 1), record("a", 2)],
    );
    core.handle_sent(
        t0,
        stream(),
        &[record("a", 3), record("a", 4), record("a", 5)],
    );
    let report = core.handle_response(t0, 1, 2, response(vec![gap(0, 3), gap(0, 4), gap(0, 5)]));
    assert_eq!(report.refusals[0].1, Severity::Reordered);
    assert!(!core.can_send(t0), "held until the earlier request answers");
    assert_eq!(outputs(&mut core), []);
    core.handle_response(t0, 1, 1, response(vec![appended(); 3]));
    assert_eq!(outputs(&mut core), [ack("a", 2), Output::Rewind]);
    assert!(core.can_send(t0), "resent at once");
    assert_eq!(core.failures(), 0);
}

#[test]
fn a_gap_in_a_request_sent_alone_backs_off() {
    // Checks that a sequence gap of a request that had nothing to overtake is a real refusal
    // (the node lost what it had): rewind, a backoff, a counted failure.
    let t0 = origin();
    let mut core = connected(t0);
    core.handle_sent(t0, stream(), &[record("a", 7)]);
    let report = core.handle_response(t0, 1, 1, response(vec![gap(0, 7)]));
    assert_eq!(report.refusals[0].1, Severity::Transient);
    assert_eq!(outputs(&mut core), [Output::Rewind]);
    assert!(!core.can_send(t0));
    assert_eq!(core.failures(), 1);
}

fn invalid() -> RecordOutcome {
    rejected(RecordRejection::Invalid {
        reason: "record of 900 bytes exceeds record_bytes_max 512".into(),
    })
}

#[test]
fn a_reading_refused_as_invalid_is_declared_and_resent_at_once() {
    // Checks that a reading the node refuses as Invalid asks the spool to declare it
    // (Output::Refused) after acking the stored prefix, that the gaps the later records of its
    // sensor met do not count as failures, and that the spool is rewound without a backoff.
    let t0 = origin();
    let mut core = connected(t0);
    core.handle_sent(
        t0,
        stream(),
        &[record("a", 0), record("a", 1), record("a", 2)],
    );
    let report = core.handle_response(t0, 1, 1, response(vec![appended(), invalid(), gap(1, 2)]));
    assert_eq!(report.n_delivered, 1);
    assert!(report
        .refusals
        .iter()
        .any(|(label, severity, _)| *label == "invalid" && *severity == Severity::Declared));
    let out = outputs(&mut core);
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(out[0], ack("a", 0));
    assert!(
        matches!(&out[1], Output::Refused { key: k, seq: 1, .. } if *k == key("a")),
        "{out:?}"
    );
    assert_eq!(out[2], Output::Rewind);
    assert_eq!(core.failures(), 0);
    assert!(core.can_send(t0), "no backoff");
}

#[test]
fn a_declaration_refused_as_invalid_backs_off_and_is_not_redeclared() {
    // Checks that an Invalid refusal of a Dropped record (which the spool cannot replace) is an
    // ordinary refusal: no Output::Refused, a failure counted, a backoff before resending.
    let t0 = origin();
    let mut core = connected(t0);
    core.handle_sent(t0, stream(), &[declaration("a", 0, 4)]);
    let report = core.handle_response(t0, 1, 1, response(vec![invalid()]));
    assert_eq!(report.refusals[0].1, Severity::NeedsOperator);
    let out = outputs(&mut core);
    assert_eq!(out, [Output::Rewind]);
    assert_eq!(core.failures(), 1);
    assert!(!core.can_send(t0), "backing off");
}

fn producer_expired(sensor: &str) -> RecordOutcome {
    rejected(RecordRejection::ProducerExpired {
        sensor: sensor.into(),
        epoch: 1,
    })
}

#[test]
fn a_forgotten_producer_moves_its_stream_to_a_new_epoch_and_resends_at_once() {
    // Checks that ProducerExpired no longer holds a sensor forever: the stored prefix is acked,
    // the first expired record of each stream asks for one Output::Expired (not one per record),
    // other streams of the batch are unaffected, nothing counts as a failure, and the spool is
    // rewound without a backoff.
    let t0 = origin();
    let mut core = connected(t0);
    core.handle_sent(
        t0,
        stream(),
        &[record("a", 0), record("a", 1), record("a", 2)],
    );
    let report = core.handle_response(
        t0,
        1,
        1,
        response(vec![
            appended(),
            producer_expired("a"),
            producer_expired("a"),
        ]),
    );
    assert_eq!(report.n_delivered, 1);
    assert_eq!(report.refusals.len(), 1, "{:?}", report.refusals);
    assert_eq!(report.refusals[0].0, "producer_expired");
    assert_eq!(report.refusals[0].1, Severity::Declared);
    let out = outputs(&mut core);
    assert_eq!(
        out,
        [
            ack("a", 0),
            Output::Expired {
                stream: stream(),
                key: key("a"),
            },
            Output::Rewind
        ]
    );
    assert_eq!(core.failures(), 0);
    assert!(core.can_send(t0), "no backoff");
}

#[test]
fn a_forgotten_producer_behind_another_refusal_waits_for_its_turn() {
    // Checks that ProducerExpired of a record behind a transient refusal of its stream is not
    // acted on (the transient one decides: backoff, resend) and asks for no epoch move yet.
    let t0 = origin();
    let mut core = connected(t0);
    core.handle_sent(t0, stream(), &[record("a", 0), record("a", 1)]);
    let report = core.handle_response(
        t0,
        1,
        1,
        response(vec![overloaded(), producer_expired("a")]),
    );
    assert!(report
        .refusals
        .iter()
        .all(|(_, severity, _)| *severity == Severity::Transient));
    assert_eq!(outputs(&mut core), [Output::Rewind]);
    assert_eq!(core.failures(), 1);
}

fn epoch_start(got: u64) -> RecordOutcome {
    rejected(RecordRejection::EpochStart {
        sensor: "a".into(),
        epoch: 1,
        got,
    })
}

#[test]
fn an_epoch_the_node_does_not_know_moves_to_a_new_one_unless_it_was_overtaken() {
    // Checks that EpochStart to a request sent alone (the node holds nothing of the epoch, so
    // the released seqs can never be resent) asks for Output::Expired and resends at once,
    // while EpochStart to a pipelined request (it overtook the epoch's first records) is only
    // an ordering refusal: rewind, no epoch move.
    let t0 = origin();
    let mut core = connected(t0);
    core.handle_sent(t0, stream(), &[record("a", 5), record("a", 6)]);
    let report = core.handle_response(t0, 1, 1, response(vec![epoch_start(5), epoch_start(6)]));
    assert_eq!(report.refusals.len(), 1, "{:?}", report.refusals);
    assert_eq!(report.refusals[0].1, Severity::Declared);
    assert_eq!(
        outputs(&mut core),
        [
            Output::Expired {
                stream: stream(),
                key: key("a"),
            },
            Output::Rewind
        ]
    );
    assert!(core.can_send(t0), "no backoff");
    core.handle_sent(t0, stream(), &[record("a", 0)]);
    core.handle_sent(t0, stream(), &[record("a", 1)]);
    let report = core.handle_response(t0, 1, 3, response(vec![epoch_start(1)]));
    assert_eq!(report.refusals[0].1, Severity::Reordered);
    core.handle_response(t0, 1, 2, response(vec![appended()]));
    assert_eq!(outputs(&mut core), [ack("a", 0), Output::Rewind]);
}

#[test]
fn a_partly_stored_batch_does_not_grow_the_backoff() {
    // Checks that a batch the node partly stores (a sensor it keeps refusing beside one it
    // stores) waits only the first backoff step each round instead of doubling, so the other
    // sensor is not slowed to the longest wait, while batches of refusals alone grow it.
    let t0 = origin();
    let mut core = connected(t0);
    let storage = rejected(RecordRejection::Storage {
        reason: "read-only".into(),
    });
    let mut now = t0;
    let mut batch_id = 0;
    for seq in 0..3 {
        batch_id += 1;
        core.handle_sent(now, stream(), &[record("a", 0), record("b", seq)]);
        let report = core.handle_response(
            now,
            1,
            batch_id,
            response(vec![storage.clone(), appended()]),
        );
        assert_eq!(report.n_delivered, 1);
        assert_eq!(core.failures(), 1, "round {seq}");
        now = core.poll_timeout().unwrap_or(now);
        core.handle_tick(now);
        outputs(&mut core);
    }
    for n in 2..4 {
        batch_id += 1;
        core.handle_sent(now, stream(), &[record("a", 0)]);
        core.handle_response(now, 1, batch_id, response(vec![storage.clone()]));
        assert_eq!(core.failures(), n);
        now = core.poll_timeout().unwrap_or(now);
        core.handle_tick(now);
        outputs(&mut core);
    }
}
