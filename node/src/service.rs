//! The request service: what a node does with one request from an authenticated peer. The QUIC
//! server (`proto::net::server`) calls it for every frame; the simulator calls it directly. It
//! checks the ACL, validates records, stamps them with the peer's identity and the node's clock,
//! routes them to their partitions and gathers the outcomes in request order.

use crate::acl::{Acl, Operation};
use crate::admin::Admin;
use crate::config::{IngestSection, NodeConfig};
use crate::env::run_blocking;
use crate::metrics::{add, Metrics};
use crate::partition::actor::{PartitionMsg, Registry};
use crate::partition::core::ProduceItem;
use ractor::rpc::CallResult;
use sluice_cluster::placement::partition_for;
use sluice_proto::env::{BlockingMode, Clock};
use sluice_proto::msg::{
    AdminError, AdminRequest, AdminResponse, ErrorCode, ErrorResponse, FetchFrom, FetchRequest,
    FetchResponse, Message, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    RecordOutcome, RecordRejection,
};
use sluice_proto::{codec, Event, Identity, PartitionId, Payload, Record, Role, StreamName};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::{debug, warn};

/// Serves requests for one node.
pub struct Service {
    streams: BTreeMap<StreamName, u32>,
    acl: Acl,
    ingest: IngestSection,
    registry: Arc<Registry>,
    clock: Arc<dyn Clock>,
    blocking: BlockingMode,
    metrics: Arc<Metrics>,
    /// The metadata group's admin side, once the node serves a cluster.
    admin: OnceLock<Arc<Admin>>,
}

fn error(request_id: u64, code: ErrorCode, message: impl Into<String>) -> Message {
    Message::Error(ErrorResponse {
        request_id,
        code,
        message: message.into(),
    })
}

/// Why a record is refused before it reaches its partition.
fn validate(record: &Record, record_bytes_max: u32) -> Result<(), String> {
    record.check_seqs().map_err(|e| e.to_string())?;
    match &record.payload {
        Payload::Reading(reading) => reading.check()?,
        Payload::Json(text) => {
            if text.len() > record_bytes_max as usize {
                return Err(format!(
                    "json payload of {} bytes exceeds {record_bytes_max}",
                    text.len()
                ));
            }
            serde_json::from_str::<serde::de::IgnoredAny>(text)
                .map_err(|e| format!("payload is not valid json: {e}"))?;
        }
        Payload::Bytes(bytes) => {
            if bytes.len() > record_bytes_max as usize {
                return Err(format!(
                    "payload of {} bytes exceeds {record_bytes_max}",
                    bytes.len()
                ));
            }
        }
        Payload::Dropped { .. } => {}
    }
    Ok(())
}

impl Service {
    /// A service for `config`'s streams and ACL over the partitions in `registry`.
    pub fn new(
        config: &NodeConfig,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
        blocking: BlockingMode,
        metrics: Arc<Metrics>,
    ) -> Self {
        let streams = config
            .streams
            .iter()
            .filter_map(|s| {
                StreamName::new(s.name.clone())
                    .ok()
                    .map(|n| (n, s.partitions))
            })
            .collect();
        Self {
            streams,
            acl: Acl::new(config.acl.clone()),
            ingest: config.ingest.clone(),
            registry,
            clock,
            blocking,
            metrics,
            admin: OnceLock::new(),
        }
    }

    /// Serves admin requests with `admin` from now on (set once, when the node joins its
    /// cluster's metadata group).
    pub fn set_admin(&self, admin: Arc<Admin>) {
        let _ = self.admin.set(admin);
    }

    /// The node's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Handles one request and returns its response.
    pub async fn handle(&self, peer: Arc<Identity>, request: Message) -> Message {
        match request {
            Message::ProduceRequest(req) => self.produce(peer, req).await,
            Message::FetchRequest(req) => self.fetch(&peer, req).await,
            Message::MetadataRequest(req) => self.metadata(&peer, req),
            Message::AdminRequest(req) => self.admin(&peer, req).await,
            other => {
                add(&self.metrics.ingest_bad_requests_total, 1);
                error(
                    other.request_id(),
                    ErrorCode::BadRequest,
                    format!("{:?} is not a request", other.kind()),
                )
            }
        }
    }

    /// The partition count of `stream` if `peer` may do one of `ops` on it. The ACL is checked
    /// first, on the name alone: an identity without permission gets the same `Forbidden`
    /// whether or not the stream exists, so existence cannot be probed; only an identity the
    /// ACL lets in learns that a stream is unknown.
    fn authorize(
        &self,
        peer: &Identity,
        ops: &[Operation],
        stream: &StreamName,
        request_id: u64,
    ) -> Result<u32, Message> {
        if !ops.iter().any(|op| self.acl.allows(peer, *op, stream)) {
            add(&self.metrics.acl_denied_requests_total, 1);
            warn!(peer = %peer, ?ops, %stream, "acl denied");
            let verbs: Vec<&str> = ops
                .iter()
                .map(|op| match op {
                    Operation::Produce => "produce to",
                    Operation::Consume => "consume from",
                })
                .collect();
            return Err(error(
                request_id,
                ErrorCode::Forbidden,
                format!("{peer} may not {} stream {stream}", verbs.join(" or ")),
            ));
        }
        let Some(n_partitions) = self.streams.get(stream).copied() else {
            return Err(error(
                request_id,
                ErrorCode::UnknownStream,
                format!("no stream named {stream}"),
            ));
        };
        Ok(n_partitions)
    }

    async fn produce(&self, peer: Arc<Identity>, req: ProduceRequest) -> Message {
        add(&self.metrics.ingest_produce_requests_total, 1);
        let n_partitions =
            match self.authorize(&peer, &[Operation::Produce], &req.stream, req.request_id) {
                Ok(n) => n,
                Err(response) => return response,
            };
        if req.records.len() > self.ingest.batch_records_max as usize {
            add(&self.metrics.ingest_bad_requests_total, 1);
            return error(
                req.request_id,
                ErrorCode::TooLarge,
                format!(
                    "{} records exceed batch_records_max {}",
                    req.records.len(),
                    self.ingest.batch_records_max
                ),
            );
        }
        let received = self.clock.wall();
        let mut outcomes: Vec<Option<RecordOutcome>> = vec![None; req.records.len()];
        let mut by_partition: BTreeMap<PartitionId, (Vec<usize>, Vec<ProduceItem>)> =
            BTreeMap::new();
        for (idx, record) in req.records.into_iter().enumerate() {
            if let Err(reason) = validate(&record, self.ingest.record_bytes_max) {
                outcomes[idx] = Some(RecordOutcome::Rejected(RecordRejection::Invalid { reason }));
                continue;
            }
            let partition = partition_for(&record.sensor, n_partitions);
            let (sensor, boot_epoch, seq, seq_last) = (
                record.sensor.clone(),
                record.boot_epoch,
                record.seq,
                record.seq_last(),
            );
            let event = Event::stamp((*peer).clone(), received, record);
            let encoded = match codec::encode(&event) {
                Ok(bytes) if bytes.len() <= self.ingest.record_bytes_max as usize => bytes,
                Ok(bytes) => {
                    let reason = format!(
                        "record of {} bytes exceeds record_bytes_max {}",
                        bytes.len(),
                        self.ingest.record_bytes_max
                    );
                    outcomes[idx] =
                        Some(RecordOutcome::Rejected(RecordRejection::Invalid { reason }));
                    continue;
                }
                Err(e) => {
                    outcomes[idx] = Some(RecordOutcome::Rejected(RecordRejection::Invalid {
                        reason: e.to_string(),
                    }));
                    continue;
                }
            };
            let slot = by_partition.entry(partition).or_default();
            slot.0.push(idx);
            slot.1.push(ProduceItem {
                sensor,
                boot_epoch,
                seq,
                seq_last,
                encoded,
            });
        }
        let calls = by_partition.into_iter().map(|(partition, (idxs, items))| {
            let stream = &req.stream;
            let peer = peer.clone();
            async move {
                (
                    idxs,
                    self.produce_partition(stream, partition, peer, items).await,
                )
            }
        });
        for (idxs, results) in join_all(calls).await {
            for (idx, outcome) in idxs.into_iter().zip(results) {
                outcomes[idx] = Some(outcome);
            }
        }
        let outcomes: Vec<RecordOutcome> = outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| unavailable(0, "no outcome")))
            .collect();
        self.count(&outcomes);
        Message::ProduceResponse(ProduceResponse {
            request_id: req.request_id,
            outcomes,
        })
    }

    fn count(&self, outcomes: &[RecordOutcome]) {
        let (mut appended, mut duplicate, mut rejected) = (0, 0, 0);
        for outcome in outcomes {
            match outcome {
                RecordOutcome::Appended {
                    duplicate: true, ..
                } => duplicate += 1,
                RecordOutcome::Appended { .. } => appended += 1,
                RecordOutcome::Rejected(_) => rejected += 1,
            }
        }
        add(&self.metrics.ingest_appended_records_total, appended);
        add(&self.metrics.ingest_duplicate_records_total, duplicate);
        add(&self.metrics.ingest_rejected_records_total, rejected);
    }

    async fn produce_partition(
        &self,
        stream: &StreamName,
        partition: PartitionId,
        producer: Arc<Identity>,
        items: Vec<ProduceItem>,
    ) -> Vec<RecordOutcome> {
        let n = items.len();
        let Some(handle) = self.registry.get(stream, partition) else {
            return vec![unavailable(partition.0, "partition is not running"); n];
        };
        let timeout = Duration::from_millis(self.ingest.produce_timeout_ms);
        let result = handle
            .actor
            .call(
                |reply| PartitionMsg::Produce {
                    producer,
                    items,
                    reply,
                },
                Some(timeout),
            )
            .await;
        match result {
            Ok(CallResult::Success(outcomes)) => outcomes,
            Ok(CallResult::Timeout) => vec![unavailable(partition.0, "timed out"); n],
            Ok(CallResult::SenderError) => vec![unavailable(partition.0, "partition stopped"); n],
            Err(e) => vec![unavailable(partition.0, &e.to_string()); n],
        }
    }

    async fn fetch(&self, peer: &Identity, req: FetchRequest) -> Message {
        add(&self.metrics.fetch_requests_total, 1);
        let n_partitions =
            match self.authorize(peer, &[Operation::Consume], &req.stream, req.request_id) {
                Ok(n) => n,
                Err(response) => return response,
            };
        if req.partition.0 >= n_partitions {
            return error(
                req.request_id,
                ErrorCode::UnknownPartition,
                format!(
                    "stream {} has partitions 0 to {}, not {}",
                    req.stream,
                    n_partitions.saturating_sub(1),
                    req.partition
                ),
            );
        }
        let Some(mut handle) = self.registry.get(&req.stream, req.partition) else {
            return error(
                req.request_id,
                ErrorCode::Unavailable,
                format!("partition {}/{} is not running", req.stream, req.partition),
            );
        };
        let start = handle.reader.start();
        let mut high_watermark = *handle.durable.borrow_and_update();
        let from = match req.from {
            FetchFrom::Earliest => start,
            FetchFrom::Latest => high_watermark,
            FetchFrom::Offset(offset) => offset,
        };
        if from < start || from > high_watermark {
            return error(
                req.request_id,
                ErrorCode::BadRequest,
                format!("offset {from} is outside the log [{start}, {high_watermark}]"),
            );
        }
        let wait_ms = req.wait_ms.min(self.ingest.fetch_wait_ms_max);
        if from == high_watermark && wait_ms > 0 {
            let deadline = tokio::time::sleep(Duration::from_millis(u64::from(wait_ms)));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    biased;
                    changed = handle.durable.changed() => {
                        if changed.is_err() { break; }
                        high_watermark = *handle.durable.borrow_and_update();
                        if high_watermark > from { break; }
                    }
                    () = &mut deadline => break,
                }
            }
        }
        let events_max = req.events_max.clamp(1, self.ingest.fetch_events_max);
        let bytes_max = req.bytes_max.clamp(1, self.ingest.fetch_bytes_max);
        let reader = handle.reader.clone();
        let read = run_blocking(self.blocking, move || {
            reader.read(from, high_watermark, events_max, bytes_max)
        })
        .await;
        match read {
            Ok(events) => {
                add(&self.metrics.fetch_events_total, events.len() as u64);
                // Events read are below the high watermark, so the offset after them exists.
                let next_offset = events
                    .last()
                    .map_or(from, |e| e.offset.checked_next().unwrap_or(high_watermark));
                debug!(stream = %req.stream, partition_id = req.partition.0, n_records = events.len(), "fetch");
                Message::FetchResponse(FetchResponse {
                    request_id: req.request_id,
                    partition: req.partition,
                    events,
                    next_offset,
                    high_watermark,
                    log_start: start,
                })
            }
            Err(e) => {
                warn!(stream = %req.stream, partition_id = req.partition.0, error = %e, "read failed");
                error(
                    req.request_id,
                    ErrorCode::Unavailable,
                    format!("read failed: {e}"),
                )
            }
        }
    }

    fn metadata(&self, peer: &Identity, req: MetadataRequest) -> Message {
        let allowed = self.authorize(
            peer,
            &[Operation::Consume, Operation::Produce],
            &req.stream,
            req.request_id,
        );
        match allowed {
            Ok(n_partitions) => Message::MetadataResponse(MetadataResponse {
                request_id: req.request_id,
                stream: req.stream,
                n_partitions,
            }),
            Err(response) => response,
        }
    }
}

impl Service {
    /// An admin request: only from an `admin` certificate, and only on a node of a cluster.
    async fn admin(&self, peer: &Identity, req: AdminRequest) -> Message {
        if peer.role != Role::Admin {
            add(&self.metrics.acl_denied_requests_total, 1);
            warn!(peer = %peer, "admin request refused: not an admin certificate");
            return error(
                req.request_id,
                ErrorCode::Forbidden,
                format!("{peer} may not make admin requests: they need an admin certificate"),
            );
        }
        let result = match self.admin.get() {
            Some(admin) => admin.handle(req.op).await,
            None => Err(AdminError::NotClustered),
        };
        Message::AdminResponse(AdminResponse {
            request_id: req.request_id,
            result,
        })
    }
}

fn unavailable(partition: u32, reason: &str) -> RecordOutcome {
    RecordOutcome::Rejected(RecordRejection::Unavailable {
        partition,
        reason: reason.to_owned(),
    })
}

/// Runs futures concurrently on the current task, returning their outputs in order. (Small and
/// deterministic: polls in index order, so the simulator sees one schedule per seed.)
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for (idx, future) in pending.iter_mut().enumerate() {
            if outputs[idx].is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(output) => outputs[idx] = Some(output),
                    std::task::Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Adapts [`Service`] to the QUIC server.
pub struct QuicHandler(pub Arc<Service>);

impl sluice_proto::net::server::Handler for QuicHandler {
    fn handle(
        &self,
        peer: Arc<Identity>,
        request: Message,
    ) -> Pin<Box<dyn Future<Output = Message> + Send + 'static>> {
        let service = self.0.clone();
        Box::pin(async move { service.handle(peer, request).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::{BootEpoch, DropReason, SensorId, UnixMillis};

    fn record(seq: u64, payload: Payload) -> Record {
        Record {
            sensor: SensorId::new("s").unwrap(),
            boot_epoch: BootEpoch(1),
            seq,
            device_time: UnixMillis(0),
            payload,
        }
    }

    fn dropped(seq: u64, seq_last: u64) -> Record {
        record(
            seq,
            Payload::Dropped {
                seq_last,
                reason: DropReason::SpoolFull,
            },
        )
    }

    #[test]
    fn seq_ranges_are_checked_before_a_partition_sees_them() {
        // Checks that the service refuses a drop range reaching u64::MAX, an inverted range and
        // a reading at seq u64::MAX, and accepts the widest valid range.
        for bad in [
            dropped(0, u64::MAX),
            dropped(9, 8),
            record(u64::MAX, Payload::Bytes(vec![1])),
        ] {
            assert!(validate(&bad, 1024).is_err(), "{bad:?} accepted");
        }
        assert_eq!(validate(&dropped(0, sluice_proto::SEQ_MAX), 1024), Ok(()));
    }
}
