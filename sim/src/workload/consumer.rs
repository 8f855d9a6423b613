//! Simulated consumers. [`read_all`] reads every partition back from `Earliest` with fetches of
//! random sizes (the checkers' view of the log). [`run_tailer`] follows every partition while the
//! workload runs, so that what a consumer read *before* a crash is checked after it
//! ([`crate::invariants::stable_reads`]).

use crate::invariants::{LogSnapshot, PartitionLog, Violation};
use crate::scenario::CLUSTER;
use crate::world::World;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sluice_node::service::Service;
use sluice_proto::msg::{FetchFrom, FetchRequest, FetchResponse, Message};
use sluice_proto::{Identity, Offset, PartitionId, Role, StreamName};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The identity consumers use.
pub fn consumer_identity() -> Arc<Identity> {
    Arc::new(
        Identity::new(CLUSTER, Role::Edge, "consumer")
            .unwrap_or_else(|e| panic!("consumer identity: {e}")),
    )
}

/// Limits of one fetch.
#[derive(Debug, Clone, Copy)]
struct Limits {
    events_max: u32,
    bytes_max: u32,
    wait_ms: u32,
}

impl Limits {
    /// Random limits: sometimes tiny (one event, a few bytes), to exercise the paging edges.
    fn draw(rng: &mut ChaCha8Rng, wait: bool) -> Self {
        let events_max = if rng.random_bool(0.1) {
            1
        } else {
            rng.random_range(1..=3000u32)
        };
        let bytes_max = if rng.random_bool(0.2) {
            rng.random_range(1..=4096u32)
        } else {
            1 << 20
        };
        let wait_ms = if wait && rng.random_bool(0.3) {
            rng.random_range(1..=500u32)
        } else {
            0
        };
        Self {
            events_max,
            bytes_max,
            wait_ms,
        }
    }
}

async fn fetch(
    service: &Service,
    who: &Arc<Identity>,
    stream: &StreamName,
    partition: PartitionId,
    from: FetchFrom,
    limits: Limits,
) -> Result<FetchResponse, String> {
    let Limits {
        events_max,
        bytes_max,
        wait_ms,
    } = limits;
    let request = FetchRequest {
        request_id: 0,
        stream: stream.clone(),
        partition,
        from,
        events_max,
        bytes_max,
        wait_ms,
    };
    match service
        .handle(who.clone(), Message::FetchRequest(request))
        .await
    {
        Message::FetchResponse(response) => Ok(response),
        Message::Error(e) => Err(format!("{:?}: {}", e.code, e.message)),
        other => Err(format!("answered with {:?}", other.kind())),
    }
}

/// Reads one partition from its start up to the high watermark of the first response.
async fn read_partition(
    service: &Service,
    who: &Arc<Identity>,
    stream: &StreamName,
    partition: PartitionId,
    rng: &mut ChaCha8Rng,
) -> Result<PartitionLog, Violation> {
    let fail = |what: String| {
        Violation::new(
            "dense_offsets",
            format!("reading {stream}/{partition} back: {what}"),
        )
    };
    let mut log = PartitionLog::default();
    let mut from = FetchFrom::Earliest;
    let mut target = None;
    loop {
        let response = fetch(
            service,
            who,
            stream,
            partition,
            from,
            Limits::draw(rng, false),
        )
        .await
        .map_err(|e| fail(format!("fetch failed: {e}")))?;
        let target = *target.get_or_insert_with(|| {
            log.log_start = response.log_start;
            response.high_watermark
        });
        let requested = match from {
            FetchFrom::Offset(offset) => offset,
            _ => response.log_start,
        };
        if let Some(first) = response.events.first() {
            if first.offset != requested {
                return Err(fail(format!(
                    "fetch from {requested} started at {}",
                    first.offset
                )));
            }
        }
        let next = response.next_offset;
        let n_events = response.events.len();
        log.events.extend(response.events);
        log.high_watermark = target.max(next);
        if next >= target {
            return Ok(log);
        }
        if n_events == 0 || next <= requested {
            return Err(fail(format!(
                "fetch from {requested} made no progress below the high watermark {target}"
            )));
        }
        from = FetchFrom::Offset(next);
    }
}

/// Reads every partition of `streams` back from its start.
pub async fn read_all(
    service: &Service,
    streams: &[(StreamName, u32)],
    rng: &mut ChaCha8Rng,
) -> Result<LogSnapshot, Violation> {
    let who = consumer_identity();
    let mut snapshot = LogSnapshot::default();
    for (stream, n_partitions) in streams {
        for p in 0..*n_partitions {
            let log = read_partition(service, &who, stream, PartitionId(p), rng).await?;
            snapshot
                .partitions
                .insert((stream.clone(), PartitionId(p)), log);
        }
    }
    Ok(snapshot)
}

/// Reads from random offsets of the `readable` range (log start to high watermark) of a
/// partition already read back, checking that every read
/// starts where it was asked to and agrees with earlier reads (the sparse index must find the
/// right entry wherever a fetch starts).
pub async fn probe(
    world: &World,
    service: &Service,
    stream: &StreamName,
    partition: PartitionId,
    readable: std::ops::Range<Offset>,
    n_probes: u32,
    rng: &mut ChaCha8Rng,
) -> Result<(), Violation> {
    let who = consumer_identity();
    let high_watermark = readable.end;
    for _ in 0..n_probes {
        if readable.start >= readable.end {
            return Ok(());
        }
        let from = Offset(rng.random_range(readable.start.0..readable.end.0));
        let response = fetch(
            service,
            &who,
            stream,
            partition,
            FetchFrom::Offset(from),
            Limits::draw(rng, false),
        )
        .await
        .map_err(|e| {
            Violation::new(
                "stable_reads",
                format!("{stream}/{partition}: fetch from {from} failed: {e}"),
            )
        })?;
        match response.events.first() {
            Some(first) if first.offset == from => {}
            first => {
                let got = first
                    .map(|e| e.offset.to_string())
                    .unwrap_or_else(|| "nothing".into());
                return Err(Violation::new("stable_reads", format!("{stream}/{partition}: fetch from {from} below the high watermark {high_watermark} returned {got}")));
            }
        }
        world.reads().observe(stream, partition, &response.events)?;
    }
    Ok(())
}

/// Follows every partition, checking each read against what consumers read before.
pub async fn run_tailer(
    world: Arc<World>,
    mut rng: ChaCha8Rng,
    mut shutdown: watch::Receiver<bool>,
) {
    let who = consumer_identity();
    loop {
        let pause = Duration::from_millis(rng.random_range(100..=1000u64));
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(pause) => {}
        }
        let Some(slot) = world.node() else { continue };
        for (stream, n_partitions) in world.streams.clone() {
            for p in 0..n_partitions {
                let partition = PartitionId(p);
                let from = Offset(world.reads().n_read(&stream, partition));
                let limits = Limits::draw(&mut rng, true);
                let result = fetch(
                    &slot.service,
                    &who,
                    &stream,
                    partition,
                    FetchFrom::Offset(from),
                    limits,
                )
                .await;
                if !world.is_alive(&slot) {
                    break;
                }
                let checked = match result {
                    Ok(response) => {
                        world.record(
                            "tail",
                            format!(
                                "{stream}/{p} from {from} got {} hw {}",
                                response.events.len(),
                                response.high_watermark
                            ),
                        );
                        let mut reads = world.reads();
                        reads
                            .check_high_watermark(&stream, partition, response.high_watermark)
                            .and_then(|()| reads.observe(&stream, partition, &response.events))
                    }
                    // Refused because `from` is beyond the end of the log: what was read is gone
                    // (which only `disk_corruption` may excuse, for a partition the simulator
                    // damaged).
                    Err(e) if e.starts_with("BadRequest") => {
                        if world.reads().exempt.contains(&(stream.clone(), partition)) {
                            Ok(())
                        } else {
                            reads_lost(&stream, partition, from, &e)
                        }
                    }
                    Err(_) => Ok(()),
                };
                if let Err(violation) = checked {
                    world.fail(violation);
                    return;
                }
            }
        }
    }
}

fn reads_lost(
    stream: &StreamName,
    partition: PartitionId,
    from: Offset,
    error: &str,
) -> Result<(), Violation> {
    Err(Violation::new("stable_reads", format!("{stream}/{partition}: consumers read up to offset {from} (exclusive), but a fetch from there fails: {error}")))
}
