//! Retried records keep their offsets: whenever a record is acknowledged again (a retry after a
//! lost response, a duplicated request, a retry after a restart) the ack names the partition and
//! offset of the first ack. Checked online, as each ack arrives.

use super::Violation;
use crate::history::{RecordKey, Status};
use sluice_proto::{Offset, PartitionId};

/// Checks a new ack against what the producer was told before.
pub fn check(
    key: &RecordKey,
    previous: &Status,
    partition: PartitionId,
    offset: Offset,
) -> Result<(), Violation> {
    match *previous {
        Status::Acked { partition: p0, offset: o0, .. } if (p0, o0) != (partition, offset) => Err(Violation::new(
            "retry_offsets",
            format!("record {} {} epoch {} seq {} was acked at partition {p0} offset {o0}, then again at partition {partition} offset {offset}", key.0, key.1, key.2, key.3),
        )),
        _ => Ok(()),
    }
}
