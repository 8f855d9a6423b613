//! Counters of one node. Names follow `<subsystem>_<name>_<unit>[_total]`; they are logged
//! periodically and read by tests (a Prometheus endpoint comes with the HTTP work).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// The node's counters.
        #[derive(Debug, Default)]
        pub struct Metrics { $(
            #[doc = concat!("`", stringify!($name), "`")]
            pub $name: AtomicU64,
        )* }

        impl Metrics {
            /// Every counter with its name, in a fixed order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed))),*]
            }
        }
    };
}

counters!(
    ingest_produce_requests_total,
    ingest_appended_records_total,
    ingest_duplicate_records_total,
    ingest_rejected_records_total,
    ingest_bad_requests_total,
    acl_denied_requests_total,
    fetch_requests_total,
    fetch_events_total,
);

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
