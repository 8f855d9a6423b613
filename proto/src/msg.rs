//! Request and response messages. Each is the body of one frame of its own [`Kind`]; every request
//! carries a `request_id` that its response repeats, so many requests share one stream.
//!
//! These layouts are released: never reorder, remove or retype a field, and only append enum
//! variants. `proto/tests/golden/` freezes their bytes.

use crate::env::peer::{PeerEnvelope, PeerRefusal};
use crate::event::{Record, StoredEvent};
use crate::frame::Kind;
use crate::ids::{Identity, NodeId, Offset, PartitionId, StreamName};
use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// Append records to a stream.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct ProduceRequest {
    /// Correlation id, echoed in the response.
    pub request_id: u64,
    /// Target stream.
    pub stream: StreamName,
    /// Records, in the producer's order.
    pub records: Vec<Record>,
}

/// How durable an acknowledged record is.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Encode, Decode, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// fsynced on the leader only (a single-replica partition).
    LeaderFsync,
    /// fsynced on a majority of the partition's replicas.
    QuorumFsync,
}

/// Why one record was not appended. Records are judged one by one; the rest of a batch is not
/// affected, except that later records of the same sensor fail with the same gap.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum RecordRejection {
    /// The record's seq skips ahead of what the partition expects next.
    #[error("sequence gap for sensor {sensor}: expected seq {expected}, got {got}")]
    SequenceGap {
        /// Sensor id.
        sensor: String,
        /// The next seq the partition expects.
        expected: u64,
        /// What arrived.
        got: u64,
    },
    /// A new epoch must start at seq 0.
    #[error("epoch {epoch} of sensor {sensor} must start at seq 0, got {got}")]
    EpochStart {
        /// Sensor id.
        sensor: String,
        /// The new epoch.
        epoch: u64,
        /// The first seq sent.
        got: u64,
    },
    /// The record belongs to an epoch older than the producer's current one.
    #[error("epoch {epoch} of sensor {sensor} is older than the current epoch {current}")]
    StaleEpoch {
        /// Sensor id.
        sensor: String,
        /// The record's epoch.
        epoch: u64,
        /// The producer's current epoch.
        current: u64,
    },
    /// The record repeats a seq that is older than the deduplication window, so its original
    /// offset is no longer known. It was stored once; it is not stored again.
    #[error("duplicate of sensor {sensor} seq {seq} is older than the deduplication window")]
    DuplicateTooOld {
        /// Sensor id.
        sensor: String,
        /// The seq.
        seq: u64,
    },
    /// The record is malformed (for example a non-finite reading or an inverted drop range).
    #[error("invalid record: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// The partition tracks as many producers as its configuration allows: for this identity
    /// (`producers_per_identity_max`) or in all (`producers_max`). Idle state expires, so a
    /// retry later may succeed.
    #[error("partition tracks too many producers (bound {max})")]
    TooManyProducers {
        /// The configured bound that was reached.
        max: u32,
    },
    /// The partition could not make the record durable, so it is not acknowledged. The bytes
    /// may survive (recovery keeps what it can make durable): retry, and deduplication returns
    /// the original offset if they did.
    #[error("storage failed: {reason}")]
    Storage {
        /// What failed.
        reason: String,
    },
    /// The partition is busy; retry later.
    #[error("partition {partition} is overloaded, retry")]
    Overloaded {
        /// The partition.
        partition: u32,
    },
    /// The partition did not answer in time or is restarting. The record may or may not have
    /// been stored: retry it, and deduplication returns its offset if it was.
    #[error("partition {partition} unavailable ({reason}); outcome unknown, retry")]
    Unavailable {
        /// The partition.
        partition: u32,
        /// Why.
        reason: String,
    },
    /// The partition no longer holds the state of this sensor in this epoch (it was idle
    /// beyond `producer_idle_expiry_ms` and then evicted), so it cannot tell whether the record
    /// was stored by an earlier attempt: it is not stored again. It is not stored now either;
    /// a new boot epoch starts the sensor afresh.
    #[error("state of sensor {sensor} in epoch {epoch} expired; a new epoch starts it afresh")]
    ProducerExpired {
        /// Sensor id.
        sensor: String,
        /// The record's epoch.
        epoch: u64,
    },
}

/// The outcome of one record.
#[derive(Clone, Debug, PartialEq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordOutcome {
    /// Stored (now or by an earlier attempt) at `offset`.
    Appended {
        /// The partition.
        partition: PartitionId,
        /// The record's offset.
        offset: Offset,
        /// The durability reached before this ack was sent.
        durability: Durability,
        /// True when an earlier attempt had already stored it.
        duplicate: bool,
    },
    /// Not stored.
    Rejected(RecordRejection),
}

/// The answer to a [`ProduceRequest`]: one outcome per record, in order.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct ProduceResponse {
    /// The request's id.
    pub request_id: u64,
    /// One outcome per record.
    pub outcomes: Vec<RecordOutcome>,
}

/// Where a fetch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub enum FetchFrom {
    /// The first offset still stored.
    Earliest,
    /// The end of the log: only events appended from now on.
    Latest,
    /// A given offset.
    Offset(Offset),
}

/// Read a partition from an offset.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct FetchRequest {
    /// Correlation id.
    pub request_id: u64,
    /// Stream.
    pub stream: StreamName,
    /// Partition of the stream.
    pub partition: PartitionId,
    /// Where to start.
    pub from: FetchFrom,
    /// At most this many events (the node caps it further).
    pub events_max: u32,
    /// At most about this many bytes of events (the node caps it further).
    pub bytes_max: u32,
    /// When nothing is there yet, wait up to this long for new events (long poll).
    pub wait_ms: u32,
}

/// Events read from a partition.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct FetchResponse {
    /// The request's id.
    pub request_id: u64,
    /// The partition read.
    pub partition: PartitionId,
    /// Events in offset order.
    pub events: Vec<StoredEvent>,
    /// Where the next fetch should start.
    pub next_offset: Offset,
    /// One past the last durable offset.
    pub high_watermark: Offset,
    /// The first offset still stored.
    pub log_start: Offset,
}

/// The most bytes the codec's varint encoding takes for a `u64`: a tag byte and 8 bytes.
const VARINT_U64_BYTES_MAX: u64 = 9;
/// The most bytes the codec's varint encoding takes for a `u32`: a tag byte and 4 bytes.
const VARINT_U32_BYTES_MAX: u64 = 5;

impl FetchResponse {
    /// The largest encoded body of a fetch answer (the frame header excluded) holding at most
    /// `events_max` events whose [`crate::Event`] encodings add up to at most
    /// `events_bytes_max` bytes: those bytes plus the longest varint of every id, offset and
    /// length around them. A node whose frame limit is below this builds answers it cannot send.
    pub fn body_bytes_max(events_max: u32, events_bytes_max: u64) -> u64 {
        // request_id, partition, the events' count, next_offset, high_watermark, log_start.
        let fixed = VARINT_U64_BYTES_MAX
            + VARINT_U32_BYTES_MAX
            + VARINT_U64_BYTES_MAX
            + 3 * VARINT_U64_BYTES_MAX;
        // Each event carries its offset.
        let per_event = u64::from(events_max).saturating_mul(VARINT_U64_BYTES_MAX);
        fixed
            .saturating_add(per_event)
            .saturating_add(events_bytes_max)
    }
}

/// Ask how a stream is laid out.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct MetadataRequest {
    /// Correlation id.
    pub request_id: u64,
    /// Stream.
    pub stream: StreamName,
}

/// A stream's layout.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct MetadataResponse {
    /// The request's id.
    pub request_id: u64,
    /// Stream.
    pub stream: StreamName,
    /// Its partition count.
    pub n_partitions: u32,
}

/// Error codes of whole-request failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request could not be decoded or is malformed.
    BadRequest,
    /// The caller's identity may not do this.
    Forbidden,
    /// No such stream.
    UnknownStream,
    /// No such partition.
    UnknownPartition,
    /// Too large (frame, batch or record).
    TooLarge,
    /// The node cannot serve now (starting, stopping, storage failed); retry elsewhere or later.
    Unavailable,
    /// Too many requests in flight on this connection.
    Overloaded,
    /// A bug on the node.
    Internal,
}

impl ErrorCode {
    /// Every code, in wire order (append new codes at the end, as to the enum).
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::BadRequest,
        ErrorCode::Forbidden,
        ErrorCode::UnknownStream,
        ErrorCode::UnknownPartition,
        ErrorCode::TooLarge,
        ErrorCode::Unavailable,
        ErrorCode::Overloaded,
        ErrorCode::Internal,
    ];
}

/// A whole request failed.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub struct ErrorResponse {
    /// The request's id (0 when the request could not be decoded far enough to know it).
    pub request_id: u64,
    /// What kind of failure.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

/// One node-to-node request on the peer protocol (ALPN [`crate::PEER_ALPN`]). Its lane is its
/// frame kind ([`Kind::PeerControlCall`] or [`Kind::PeerBulkCall`]), so a receiver knows the
/// lane's size bound and byte budget from the 12-byte header, before it reads the body.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct PeerCall {
    /// Correlation id, echoed in the reply.
    pub request_id: u64,
    /// Who the request is from and for.
    pub envelope: PeerEnvelope,
    /// What the group's handler decodes.
    pub body: Vec<u8>,
}

/// How a peer answered a [`PeerCall`]. Append-only.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum PeerAnswer {
    /// The handler's response body.
    Body(Vec<u8>),
    /// The receiver refused the request without (or instead of) an answer.
    Refused(PeerRefusal),
}

/// The answer to one [`PeerCall`].
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct PeerReply {
    /// The call's `request_id`.
    pub request_id: u64,
    /// The answer.
    pub answer: PeerAnswer,
}

/// An operator's request about the cluster's metadata. Only `admin` certificates may send it;
/// any voter node answers it (a node that is not the metadata leader forwards proposals to the
/// leader over the peer link). Names travel as text so that the node, not the frame decoder,
/// refuses an invalid one, with a typed [`AdminError::InvalidName`].
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct AdminRequest {
    /// Correlation id.
    pub request_id: u64,
    /// What to do.
    pub op: AdminOp,
}

/// An admin operation. Append-only.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum AdminOp {
    /// Creates a stream; the node places its replicas.
    StreamCreate {
        /// The stream's name.
        name: String,
        /// Its number of partitions.
        n_partitions: u32,
        /// Replicas per partition.
        factor: u32,
        /// Segments whose newest event is older than this many ms are deleted (`None`: no bound).
        retention_age_ms_max: Option<u64>,
        /// Oldest segments are deleted while a partition holds more (`None`: no bound).
        retention_bytes_max: Option<u64>,
    },
    /// Lists the streams (without their partitions).
    StreamList,
    /// One stream with its partitions.
    StreamDescribe {
        /// The stream's name.
        name: String,
    },
    /// Deletes a stream, its partitions and the ACL entries naming it.
    StreamDelete {
        /// The stream's name.
        name: String,
    },
    /// Allows an identity to write a stream.
    AclAdd {
        /// The identity URI, `sluice://<cluster>/<role>/<name>`.
        identity: String,
        /// The stream.
        stream: String,
    },
    /// Lists the ACL entries.
    AclList,
    /// Withdraws an identity's right to write a stream.
    AclRemove {
        /// The identity URI.
        identity: String,
        /// The stream.
        stream: String,
    },
    /// The cluster's nodes, leader and partition counts.
    ClusterStatus,
    /// Forms the cluster from the receiving node's `initial_members` and applies its config's
    /// streams and ACL rules once as bootstrap defaults.
    ClusterInit,
}

/// A stream as the metadata group holds it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize)]
pub struct StreamInfo {
    /// Its name.
    pub name: StreamName,
    /// Its number of partitions.
    pub n_partitions: u32,
    /// Replicas per partition.
    pub factor: u32,
    /// Retention by age, in ms.
    pub retention_age_ms_max: Option<u64>,
    /// Retention by bytes per partition.
    pub retention_bytes_max: Option<u64>,
    /// Its partitions (empty in a list).
    pub partitions: Vec<PartitionInfo>,
}

/// One partition in the partition map.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize)]
pub struct PartitionInfo {
    /// The partition.
    pub partition: PartitionId,
    /// Its replica group's incarnation.
    pub incarnation: u64,
    /// Its voters.
    pub replicas: Vec<NodeId>,
    /// Whether a replica move is in progress.
    pub moving: bool,
}

/// The streams one identity may write.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize)]
pub struct AclEntry {
    /// The identity.
    pub identity: Identity,
    /// The streams.
    pub streams: Vec<StreamName>,
}

/// A member node's state. Append-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminNodeState {
    /// Registered, not yet given replicas.
    Joining,
    /// Holds replicas.
    Active,
    /// Giving its replicas away.
    Draining,
    /// Gone for good.
    Removed,
}

/// One member node in a cluster status.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize)]
pub struct NodeStatus {
    /// The node.
    pub id: NodeId,
    /// Its peer address.
    pub address: String,
    /// Its site.
    pub site: String,
    /// Its rack.
    pub rack: Option<String>,
    /// Its state.
    pub state: AdminNodeState,
    /// Whether it votes in the metadata group.
    pub voter: bool,
    /// Partitions listing it as a replica.
    pub n_replicas: u32,
}

/// The cluster as the answering node sees it at a linearizable point.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, Serialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: NodeId,
    /// The metadata leader it knows.
    pub leader: Option<NodeId>,
    /// Its metadata raft term.
    pub term: u64,
    /// The last metadata log index it applied.
    pub applied_index: u64,
    /// The registered nodes, by id.
    pub nodes: Vec<NodeStatus>,
    /// Streams.
    pub n_streams: u32,
    /// Partitions over all streams.
    pub n_partitions: u32,
}

/// What an admin operation did. Append-only.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum AdminAnswer {
    /// The stream exists now, placed as shown.
    StreamCreated(StreamInfo),
    /// Streams (a list, or the one described).
    Streams(Vec<StreamInfo>),
    /// The stream is gone.
    StreamDeleted {
        /// How many partitions it had.
        n_partitions: u32,
    },
    /// An ACL entry was added or removed; `changed` is false when nothing needed to change.
    AclChanged {
        /// Whether the ACL changed.
        changed: bool,
    },
    /// The ACL entries.
    Acls(Vec<AclEntry>),
    /// The cluster's status.
    Cluster(ClusterStatus),
    /// The cluster is formed and its bootstrap defaults applied.
    ClusterInitialized {
        /// Streams created from the config.
        n_streams: u32,
        /// ACL entries added from the config.
        n_acl_entries: u32,
        /// Config ACL rules the metadata ACL cannot express (identity patterns), not applied.
        n_acl_rules_skipped: u32,
    },
}

/// Why an admin operation was refused. Append-only.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, thiserror::Error)]
pub enum AdminError {
    /// The node runs without a `[cluster]` section: it has no metadata group.
    #[error("this node is not part of a cluster (no [cluster] section in its config)")]
    NotClustered,
    /// A stream name or identity is not valid.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// What was named (`stream name`, `identity`).
        what: String,
        /// The name as sent.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// The request is malformed (the text says how).
    #[error("bad request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// A stream of that name exists.
    #[error("stream {name} already exists")]
    StreamExists {
        /// The stream.
        name: StreamName,
    },
    /// No stream of that name.
    #[error("no stream named {name}")]
    UnknownStream {
        /// The stream.
        name: StreamName,
    },
    /// The replication factor is 0 or above the active nodes.
    #[error("replication factor {factor} is not possible with {n_active} active nodes")]
    InvalidReplicationFactor {
        /// Asked for.
        factor: u32,
        /// Active nodes now.
        n_active: u64,
    },
    /// The partition count is 0 or above the bound.
    #[error("partition count {n_partitions} is outside 1..={max}")]
    InvalidPartitionCount {
        /// Asked for.
        n_partitions: u64,
        /// The bound.
        max: u32,
    },
    /// The metadata group refused the command for another reason (the text names it).
    #[error("refused: {reason}")]
    Rejected {
        /// The metadata group's reason.
        reason: String,
    },
    /// No metadata leader answered in time: for a change, the outcome is unknown (list to see).
    #[error("metadata group unavailable: {reason}")]
    Unavailable {
        /// What happened.
        reason: String,
    },
    /// `ClusterInit` on a node whose metadata group is formed already.
    #[error("the cluster is already initialized")]
    AlreadyInitialized,
}

/// The answer to an [`AdminRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct AdminResponse {
    /// The request's id.
    pub request_id: u64,
    /// What the operation did, or why it was refused.
    pub result: Result<AdminAnswer, AdminError>,
}

/// Any message that travels in a frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// See [`ProduceRequest`].
    ProduceRequest(ProduceRequest),
    /// See [`ProduceResponse`].
    ProduceResponse(ProduceResponse),
    /// See [`FetchRequest`].
    FetchRequest(FetchRequest),
    /// See [`FetchResponse`].
    FetchResponse(FetchResponse),
    /// See [`MetadataRequest`].
    MetadataRequest(MetadataRequest),
    /// See [`MetadataResponse`].
    MetadataResponse(MetadataResponse),
    /// See [`ErrorResponse`].
    Error(ErrorResponse),
    /// A [`PeerCall`] on the control lane.
    PeerControlCall(PeerCall),
    /// A [`PeerCall`] on the bulk lane.
    PeerBulkCall(PeerCall),
    /// See [`PeerReply`].
    PeerReply(PeerReply),
    /// See [`AdminRequest`].
    AdminRequest(AdminRequest),
    /// See [`AdminResponse`].
    AdminResponse(AdminResponse),
}

impl Message {
    /// The frame kind of this message.
    pub fn kind(&self) -> Kind {
        match self {
            Message::ProduceRequest(_) => Kind::ProduceRequest,
            Message::ProduceResponse(_) => Kind::ProduceResponse,
            Message::FetchRequest(_) => Kind::FetchRequest,
            Message::FetchResponse(_) => Kind::FetchResponse,
            Message::MetadataRequest(_) => Kind::MetadataRequest,
            Message::MetadataResponse(_) => Kind::MetadataResponse,
            Message::Error(_) => Kind::Error,
            Message::PeerControlCall(_) => Kind::PeerControlCall,
            Message::PeerBulkCall(_) => Kind::PeerBulkCall,
            Message::PeerReply(_) => Kind::PeerReply,
            Message::AdminRequest(_) => Kind::AdminRequest,
            Message::AdminResponse(_) => Kind::AdminResponse,
        }
    }

    /// The correlation id.
    pub fn request_id(&self) -> u64 {
        match self {
            Message::ProduceRequest(m) => m.request_id,
            Message::ProduceResponse(m) => m.request_id,
            Message::FetchRequest(m) => m.request_id,
            Message::FetchResponse(m) => m.request_id,
            Message::MetadataRequest(m) => m.request_id,
            Message::MetadataResponse(m) => m.request_id,
            Message::Error(m) => m.request_id,
            Message::PeerControlCall(m) | Message::PeerBulkCall(m) => m.request_id,
            Message::PeerReply(m) => m.request_id,
            Message::AdminRequest(m) => m.request_id,
            Message::AdminResponse(m) => m.request_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Payload, Record};
    use crate::ids::{BootEpoch, Identity, Role, SensorId, UnixMillis};

    #[test]
    fn error_code_all_lists_every_code_in_wire_order() {
        // Checks that ErrorCode::ALL is complete and ordered: its n-th code encodes as n, and
        // the first number past it decodes to no code, so a code added to the enum but not to
        // ALL fails here.
        for (idx, code) in ErrorCode::ALL.iter().enumerate() {
            let bytes = crate::codec::encode(code).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(bytes, [idx as u8], "{code:?}");
        }
        let past = [ErrorCode::ALL.len() as u8];
        assert!(crate::codec::decode::<ErrorCode>(&past).is_err());
    }

    fn event(payload_bytes: usize) -> Event {
        let producer = Identity::new(&"c".repeat(64), Role::Edge, &"e".repeat(128))
            .unwrap_or_else(|e| panic!("{e}"));
        let record = Record {
            sensor: SensorId::new("s".repeat(256)).unwrap_or_else(|e| panic!("{e}")),
            boot_epoch: BootEpoch(u64::MAX),
            seq: u64::MAX,
            device_time: UnixMillis(i64::MIN),
            payload: Payload::Bytes(vec![0xa5; payload_bytes]),
        };
        Event::stamp(producer, UnixMillis(i64::MAX), record)
    }

    #[test]
    fn fetch_answer_bound_holds_for_real_encodings() {
        // Checks FetchResponse::body_bytes_max against real encodings with every id and offset
        // at its longest varint: the encoded body never exceeds the bound, and is at most 8
        // bytes under it (the events' count is the only varint shorter than assumed).
        for sizes in [vec![], vec![0], vec![1, 300, 70_000], vec![5; 200]] {
            let events: Vec<StoredEvent> = sizes
                .iter()
                .enumerate()
                .map(|(idx, size)| StoredEvent {
                    offset: Offset(u64::MAX - idx as u64),
                    event: event(*size),
                })
                .collect();
            let events_bytes: u64 = events
                .iter()
                .map(|e| crate::codec::encode(&e.event).map_or(0, |b| b.len() as u64))
                .sum();
            let response = FetchResponse {
                request_id: u64::MAX,
                partition: PartitionId(u32::MAX),
                events,
                next_offset: Offset(u64::MAX),
                high_watermark: Offset(u64::MAX),
                log_start: Offset(u64::MAX),
            };
            let body = crate::codec::encode(&response).unwrap_or_else(|e| panic!("{e}"));
            let bound = FetchResponse::body_bytes_max(sizes.len() as u32, events_bytes);
            let body_len = body.len() as u64;
            assert!(body_len <= bound, "{body_len} > {bound} for {sizes:?}");
            assert!(bound - body_len <= 8, "{body_len} vs {bound} for {sizes:?}");
        }
    }
}
