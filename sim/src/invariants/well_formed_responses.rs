//! Well-formed responses: every response answers its own request (same id, one outcome per
//! record), and the node never refuses a well-formed record of an honest producer for a reason
//! that producer cannot have caused (stale epoch, invalid record, too many producers) or with an
//! error code other than "unavailable" or "overloaded".

use super::Violation;
use sluice_proto::msg::{ErrorResponse, ProduceResponse, RecordRejection};

fn fail(details: String) -> Violation {
    Violation::new("well_formed_responses", details)
}

/// Checks the envelope of a produce response to request `request_id` of `n_records` records.
pub fn check_envelope(
    producer: &str,
    request_id: u64,
    n_records: usize,
    response: &ProduceResponse,
) -> Result<(), Violation> {
    if response.request_id != request_id {
        return Err(fail(format!(
            "{producer}: response to request {request_id} carries id {}",
            response.request_id
        )));
    }
    if response.outcomes.len() != n_records {
        return Err(fail(format!(
            "{producer}: request {request_id} had {n_records} records, response has {} outcomes",
            response.outcomes.len()
        )));
    }
    Ok(())
}

/// Checks that a record rejection is one an honest producer must expect under faults.
pub fn check_rejection(
    producer: &str,
    request_id: u64,
    rejection: &RecordRejection,
) -> Result<(), Violation> {
    match rejection {
        RecordRejection::SequenceGap { .. }
        | RecordRejection::EpochStart { .. }
        | RecordRejection::DuplicateTooOld { .. }
        | RecordRejection::Storage { .. }
        | RecordRejection::Overloaded { .. }
        | RecordRejection::Unavailable { .. } => Ok(()),
        RecordRejection::StaleEpoch { .. }
        | RecordRejection::Invalid { .. }
        | RecordRejection::TooManyProducers { .. }
        | RecordRejection::ProducerExpired { .. } => Err(fail(format!(
            "{producer}: request {request_id}: unexpected rejection: {rejection}"
        ))),
    }
}

/// Checks that a record rejection is one an honest edge agent must expect under faults. Unlike
/// a simulated producer, an agent changes epochs and pipelines requests: a request carrying an
/// old epoch's record can reach the node after a later request already completed that epoch
/// and started the next (the agent had the old record acknowledged through the later ack), so
/// the node may call it stale. A stale record that was really never stored would show as an
/// edge that never drains or as a silent gap, which other invariants catch.
pub fn check_edge_rejection(
    edge: &str,
    request_id: u64,
    rejection: &RecordRejection,
) -> Result<(), Violation> {
    match rejection {
        RecordRejection::StaleEpoch { .. } => Ok(()),
        other => check_rejection(edge, request_id, other),
    }
}

/// Checks that a whole-request error is one a client must expect under faults.
pub fn check_error(
    producer: &str,
    request_id: u64,
    error: &ErrorResponse,
) -> Result<(), Violation> {
    use sluice_proto::msg::ErrorCode;
    match error.code {
        ErrorCode::Unavailable | ErrorCode::Overloaded => Ok(()),
        code => Err(fail(format!(
            "{producer}: request {request_id}: unexpected error {code:?}: {}",
            error.message
        ))),
    }
}
