//! Golden bytes: the released wire and disk layouts, frozen. Every released message kind (with
//! every variant of the enums it carries) and the stored `Event` encoding has one fixed value
//! here and a committed fixture `tests/golden/<name>.hex` holding its exact bytes. A change to
//! those bytes means a change to a released layout, which deployed edge agents and existing
//! segment files cannot follow: add a new message kind or protocol version instead.
//!
//! A missing fixture is written only when `SLUICE_BLESS=1` is set; an existing one is never
//! rewritten by the test.

use sluice_proto::codec;
use sluice_proto::env::{PeerEnvelope, PeerGroup, PeerRefusal};
use sluice_proto::frame;
use sluice_proto::msg::{
    AclEntry, AdminAnswer, AdminError, AdminNodeState, AdminOp, AdminRequest, AdminResponse,
    ClusterStatus, NodeStatus, PartitionInfo, StreamInfo,
};
use sluice_proto::msg::{
    Durability, ErrorCode, ErrorResponse, FetchFrom, FetchRequest, FetchResponse, Message,
    MetadataRequest, MetadataResponse, PeerAnswer, PeerCall, PeerReply, ProduceRequest,
    ProduceResponse, RecordOutcome, RecordRejection,
};
use sluice_proto::NodeId;
use sluice_proto::{
    BootEpoch, DropReason, Event, Identity, Offset, PartitionId, Payload, Reading, Record, Role,
    SensorId, StoredEvent, StreamName, UnixMillis,
};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

/// The bound passed to `frame::decode`; far above any fixture.
const FRAME_BODY_BYTES_MAX: u32 = 1 << 20;
/// Hex characters per fixture line.
const HEX_LINE_CHARS: usize = 64;

// ---------------------------------------------------------------------------------------------
// Fixed values. Integers are picked across varint size classes (1, 3, 5 and 9 bytes, negative
// zigzag) so the fixtures freeze the integer encoding too.

fn stream() -> StreamName {
    StreamName::new("sensors.temp-1").unwrap()
}

fn sensor(name: &str) -> SensorId {
    SensorId::new(name).unwrap()
}

fn producer(role: Role) -> Identity {
    Identity::new("prod", role, "pi-01").unwrap()
}

/// One payload of every `Payload`, `Reading` and `DropReason` variant, with its case name.
///
/// The exhaustive matches in [`payload_name`] break the build when a variant is appended: give
/// the new variant a payload at the end here, then run once with `SLUICE_BLESS=1` (it gets its
/// own `event_<name>` fixture; the message fixtures keep their first
/// [`MESSAGE_FIXTURE_PAYLOADS`] payloads).
fn payloads() -> Vec<Payload> {
    vec![
        Payload::Reading(Reading::Temperature { celsius: 21.5 }),
        Payload::Reading(Reading::Humidity { percent: 48.25 }),
        Payload::Reading(Reading::Metric {
            name: "door_open".into(),
            unit: "bool".into(),
            value: -0.0,
        }),
        Payload::Json(r#"{"cve":"CVE-2024-0001","severity":"high","score":9.8}"#.into()),
        Payload::Bytes(vec![0x00, 0x01, 0x7f, 0x80, 0xfa, 0xfb, 0xfe, 0xff]),
        Payload::Dropped {
            seq_last: 300,
            reason: DropReason::SpoolFull,
        },
        Payload::Dropped {
            seq_last: 70_000,
            reason: DropReason::Expired,
        },
        Payload::Dropped {
            seq_last: 1 << 40,
            reason: DropReason::PowerLoss,
        },
        Payload::Dropped {
            seq_last: 0,
            reason: DropReason::Invalid,
        },
        Payload::Dropped {
            seq_last: 1_000,
            reason: DropReason::Storage,
        },
        Payload::Dropped {
            seq_last: u64::MAX - 1,
            reason: DropReason::Corrupted,
        },
        Payload::Dropped {
            seq_last: 65_536,
            reason: DropReason::ProducerExpired {
                epoch: BootEpoch(1 << 33),
                seq: 251,
                seq_last: u64::MAX - 1,
            },
        },
    ]
}

/// Payloads the released message fixtures (`produce_request`, `fetch_response`) carry: the ones
/// that existed when they were frozen. Variants appended later are frozen by their own event
/// fixtures, so appending one never changes a released message's bytes.
const MESSAGE_FIXTURE_PAYLOADS: usize = 8;

fn payload_name(payload: &Payload) -> &'static str {
    match payload {
        Payload::Reading(Reading::Temperature { .. }) => "temperature",
        Payload::Reading(Reading::Humidity { .. }) => "humidity",
        Payload::Reading(Reading::Metric { .. }) => "metric",
        Payload::Json(_) => "json",
        Payload::Bytes(_) => "bytes",
        Payload::Dropped { reason, .. } => match reason {
            DropReason::SpoolFull => "dropped_spool_full",
            DropReason::Expired => "dropped_expired",
            DropReason::PowerLoss => "dropped_power_loss",
            DropReason::Invalid => "dropped_invalid",
            DropReason::Storage => "dropped_storage",
            DropReason::Corrupted => "dropped_corrupted",
            DropReason::ProducerExpired { .. } => "dropped_producer_expired",
        },
    }
}

/// The role of the producer stamped on the event carrying payload `idx`, so every `Role`
/// variant is frozen as well.
fn role_for(idx: usize) -> Role {
    match idx % 3 {
        0 => Role::Edge,
        1 => Role::Node,
        _ => Role::Admin,
    }
}

fn seq_for(idx: usize) -> u64 {
    [0, 250, 251, 65_535, 65_536, 1 << 32, u64::MAX - 1, 7][idx % 8]
}

fn record(idx: usize, payload: Payload) -> Record {
    Record {
        sensor: sensor(&format!("fridge-{idx}/temp:0")),
        boot_epoch: BootEpoch([0, 1, 300, 1 << 33][idx % 4]),
        seq: seq_for(idx),
        device_time: UnixMillis([1_714_000_000_000, -1, 0, i64::MIN][idx % 4]),
        payload,
    }
}

fn event(idx: usize, payload: Payload) -> Event {
    Event::stamp(
        producer(role_for(idx)),
        UnixMillis(1_714_000_000_123 + idx as i64),
        record(idx, payload),
    )
}

fn produce_request() -> ProduceRequest {
    let records = payloads()
        .into_iter()
        .take(MESSAGE_FIXTURE_PAYLOADS)
        .enumerate()
        .map(|(idx, p)| record(idx, p))
        .collect();
    ProduceRequest {
        request_id: 1,
        stream: stream(),
        records,
    }
}

/// One of every `RecordRejection` variant.
fn rejections() -> Vec<RecordRejection> {
    vec![
        RecordRejection::SequenceGap {
            sensor: "fridge-3/temp:0".into(),
            expected: 17,
            got: 19,
        },
        RecordRejection::EpochStart {
            sensor: "fridge-3/temp:0".into(),
            epoch: 4,
            got: 12,
        },
        RecordRejection::StaleEpoch {
            sensor: "fridge-3/temp:0".into(),
            epoch: 2,
            current: 3,
        },
        RecordRejection::DuplicateTooOld {
            sensor: "fridge-3/temp:0".into(),
            seq: 65_536,
        },
        RecordRejection::Invalid {
            reason: "non-finite reading".into(),
        },
        RecordRejection::TooManyProducers { max: 10_000 },
        RecordRejection::Storage {
            reason: "disk full".into(),
        },
        RecordRejection::Overloaded { partition: 7 },
        RecordRejection::Unavailable {
            partition: 300,
            reason: "restarting".into(),
        },
        RecordRejection::ProducerExpired {
            sensor: "fridge-3/temp:0".into(),
            epoch: 1_700_000_000_000,
        },
    ]
}

fn rejection_name(rejection: &RecordRejection) -> &'static str {
    match rejection {
        RecordRejection::SequenceGap { .. } => "sequence_gap",
        RecordRejection::EpochStart { .. } => "epoch_start",
        RecordRejection::StaleEpoch { .. } => "stale_epoch",
        RecordRejection::DuplicateTooOld { .. } => "duplicate_too_old",
        RecordRejection::Invalid { .. } => "invalid",
        RecordRejection::TooManyProducers { .. } => "too_many_producers",
        RecordRejection::Storage { .. } => "storage",
        RecordRejection::Overloaded { .. } => "overloaded",
        RecordRejection::Unavailable { .. } => "unavailable",
        RecordRejection::ProducerExpired { .. } => "producer_expired",
    }
}

fn appended(partition: u32, offset: u64, durability: Durability, duplicate: bool) -> RecordOutcome {
    RecordOutcome::Appended {
        partition: PartitionId(partition),
        offset: Offset(offset),
        durability,
        duplicate,
    }
}

/// `Appended` with both `Durability` variants and both duplicate flags.
fn appended_outcomes() -> Vec<RecordOutcome> {
    // Exhaustive on purpose: a new `Durability` variant must be added to the outcomes below.
    let _ = |d: Durability| match d {
        Durability::LeaderFsync | Durability::QuorumFsync => (),
    };
    vec![
        appended(0, 0, Durability::LeaderFsync, false),
        appended(3, 251, Durability::QuorumFsync, false),
        appended(70_000, 1 << 40, Durability::QuorumFsync, true),
        appended(u32::MAX, u64::MAX, Durability::LeaderFsync, true),
    ]
}

fn fetch_froms() -> Vec<FetchFrom> {
    vec![
        FetchFrom::Earliest,
        FetchFrom::Latest,
        FetchFrom::Offset(Offset(65_536)),
    ]
}

fn fetch_from_name(from: &FetchFrom) -> &'static str {
    match from {
        FetchFrom::Earliest => "earliest",
        FetchFrom::Latest => "latest",
        FetchFrom::Offset(_) => "offset",
    }
}

fn fetch_request(from: FetchFrom) -> FetchRequest {
    FetchRequest {
        request_id: 3,
        stream: stream(),
        partition: PartitionId(2),
        from,
        events_max: 500,
        bytes_max: 1 << 20,
        wait_ms: 0,
    }
}

fn fetch_response() -> FetchResponse {
    let events = payloads()
        .into_iter()
        .take(MESSAGE_FIXTURE_PAYLOADS)
        .enumerate()
        .map(|(idx, p)| StoredEvent {
            offset: Offset(1000 + idx as u64),
            event: event(idx, p),
        })
        .collect();
    FetchResponse {
        request_id: 4,
        partition: PartitionId(2),
        events,
        next_offset: Offset(1008),
        high_watermark: Offset(1010),
        log_start: Offset(250),
    }
}

fn empty_fetch_response() -> FetchResponse {
    FetchResponse {
        request_id: u64::MAX,
        partition: PartitionId(0),
        events: Vec::new(),
        next_offset: Offset(0),
        high_watermark: Offset(0),
        log_start: Offset(0),
    }
}

fn error_code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadRequest => "bad_request",
        ErrorCode::Forbidden => "forbidden",
        ErrorCode::UnknownStream => "unknown_stream",
        ErrorCode::UnknownPartition => "unknown_partition",
        ErrorCode::TooLarge => "too_large",
        ErrorCode::Unavailable => "unavailable",
        ErrorCode::Overloaded => "overloaded",
        ErrorCode::Internal => "internal",
    }
}

/// Every message case, named. The exhaustive `match` makes a new `Message` variant a build
/// error here until it has a case.
fn message_cases() -> Vec<(String, Message)> {
    let mut cases: Vec<(String, Message)> = Vec::new();
    let mut add = |name: String, msg: Message| {
        match &msg {
            Message::ProduceRequest(_)
            | Message::ProduceResponse(_)
            | Message::FetchRequest(_)
            | Message::FetchResponse(_)
            | Message::MetadataRequest(_)
            | Message::MetadataResponse(_)
            | Message::Error(_)
            | Message::PeerControlCall(_)
            | Message::PeerBulkCall(_)
            | Message::PeerReply(_)
            | Message::AdminRequest(_)
            | Message::AdminResponse(_) => {}
        }
        cases.push((name, msg));
    };
    add(
        "produce_request".into(),
        Message::ProduceRequest(produce_request()),
    );
    add(
        "produce_request_empty".into(),
        Message::ProduceRequest(ProduceRequest {
            request_id: 0,
            stream: StreamName::new("a").unwrap(),
            records: vec![],
        }),
    );
    add(
        "produce_response_appended".into(),
        Message::ProduceResponse(ProduceResponse {
            request_id: 1,
            outcomes: appended_outcomes(),
        }),
    );
    for rejection in rejections() {
        let name = format!("produce_response_rejected_{}", rejection_name(&rejection));
        let outcomes = vec![RecordOutcome::Rejected(rejection)];
        add(
            name,
            Message::ProduceResponse(ProduceResponse {
                request_id: 2,
                outcomes,
            }),
        );
    }
    for from in fetch_froms() {
        add(
            format!("fetch_request_{}", fetch_from_name(&from)),
            Message::FetchRequest(fetch_request(from)),
        );
    }
    add(
        "fetch_response".into(),
        Message::FetchResponse(fetch_response()),
    );
    add(
        "fetch_response_empty".into(),
        Message::FetchResponse(empty_fetch_response()),
    );
    add(
        "metadata_request".into(),
        Message::MetadataRequest(MetadataRequest {
            request_id: 5,
            stream: stream(),
        }),
    );
    add(
        "metadata_response".into(),
        Message::MetadataResponse(MetadataResponse {
            request_id: 5,
            stream: stream(),
            n_partitions: 16,
        }),
    );
    add_peer_cases(&mut add);
    add_admin_cases(&mut add);
    for code in ErrorCode::ALL {
        let message = format!("{} for request 6", error_code_name(code).replace('_', " "));
        add(
            format!("error_{}", error_code_name(code)),
            Message::Error(ErrorResponse {
                request_id: 6,
                code,
                message,
            }),
        );
    }
    cases
}

/// Every peer group, with its fixture name.
fn peer_groups() -> Vec<(&'static str, PeerGroup)> {
    vec![
        ("node", PeerGroup::Node),
        ("metadata", PeerGroup::Metadata),
        (
            "partition",
            PeerGroup::Partition {
                stream: stream(),
                partition: PartitionId(70_000),
            },
        ),
    ]
}

/// Every peer refusal, with its fixture name.
fn peer_refusals() -> Vec<(&'static str, PeerRefusal)> {
    let refusals = vec![
        PeerRefusal::WrongCluster {
            got: "staging".into(),
            ours: "prod".into(),
        },
        PeerRefusal::WrongNode {
            from: NodeId(1),
            to: NodeId(3),
            receiver: NodeId(2),
            authenticated: NodeId(u64::MAX),
        },
        PeerRefusal::UnknownGroup,
        PeerRefusal::StaleIncarnation {
            got: 4,
            current: 70_000,
        },
        PeerRefusal::Overloaded,
        PeerRefusal::Handler("body does not decode".into()),
    ];
    refusals
        .into_iter()
        .map(|refusal| {
            // A new refusal must get a fixture here.
            let name = match &refusal {
                PeerRefusal::WrongCluster { .. } => "wrong_cluster",
                PeerRefusal::WrongNode { .. } => "wrong_node",
                PeerRefusal::UnknownGroup => "unknown_group",
                PeerRefusal::StaleIncarnation { .. } => "stale_incarnation",
                PeerRefusal::Overloaded => "overloaded",
                PeerRefusal::Handler(_) => "handler",
            };
            (name, refusal)
        })
        .collect()
}

/// The peer protocol's messages: a call of each group on each lane, a reply with a body and one
/// with each refusal.
fn add_peer_cases(add: &mut impl FnMut(String, Message)) {
    for (name, group) in peer_groups() {
        let call = PeerCall {
            request_id: 300,
            envelope: PeerEnvelope {
                cluster: "prod".into(),
                from: NodeId(1),
                to: NodeId(70_000),
                group,
                incarnation: u64::MAX,
            },
            body: vec![0, 1, 0xfe, 0xff],
        };
        add(
            format!("peer_control_call_{name}"),
            Message::PeerControlCall(call.clone()),
        );
        add(
            format!("peer_bulk_call_{name}"),
            Message::PeerBulkCall(call),
        );
    }
    add(
        "peer_reply_body".into(),
        Message::PeerReply(PeerReply {
            request_id: 300,
            answer: PeerAnswer::Body(vec![7; 3]),
        }),
    );
    for (name, refusal) in peer_refusals() {
        add(
            format!("peer_reply_refused_{name}"),
            Message::PeerReply(PeerReply {
                request_id: 301,
                answer: PeerAnswer::Refused(refusal),
            }),
        );
    }
}

/// Every admin operation, with its fixture name. The exhaustive `match` makes a new operation
/// a build error here until it has a case.
fn admin_ops() -> Vec<(&'static str, AdminOp)> {
    let ops = vec![
        AdminOp::StreamCreate {
            name: "sensors.temp-1".into(),
            n_partitions: 300,
            factor: 3,
            retention_age_ms_max: Some(604_800_000),
            retention_bytes_max: None,
        },
        AdminOp::StreamList,
        AdminOp::StreamDescribe {
            name: "sensors.temp-1".into(),
        },
        AdminOp::StreamDelete {
            name: "../etc".into(),
        },
        AdminOp::AclAdd {
            identity: "sluice://prod/edge/pi-01".into(),
            stream: "sensors.temp-1".into(),
        },
        AdminOp::AclList,
        AdminOp::AclRemove {
            identity: "sluice://prod/edge/pi-01".into(),
            stream: "sensors.temp-1".into(),
        },
        AdminOp::ClusterStatus,
        AdminOp::ClusterInit,
    ];
    ops.into_iter()
        .map(|op| {
            let name = match &op {
                AdminOp::StreamCreate { .. } => "stream_create",
                AdminOp::StreamList => "stream_list",
                AdminOp::StreamDescribe { .. } => "stream_describe",
                AdminOp::StreamDelete { .. } => "stream_delete",
                AdminOp::AclAdd { .. } => "acl_add",
                AdminOp::AclList => "acl_list",
                AdminOp::AclRemove { .. } => "acl_remove",
                AdminOp::ClusterStatus => "cluster_status",
                AdminOp::ClusterInit => "cluster_init",
            };
            (name, op)
        })
        .collect()
}

fn stream_info() -> StreamInfo {
    StreamInfo {
        name: stream(),
        n_partitions: 2,
        factor: 3,
        retention_age_ms_max: None,
        retention_bytes_max: Some(50 << 30),
        partitions: vec![
            PartitionInfo {
                partition: PartitionId(0),
                incarnation: 0,
                replicas: vec![NodeId(1), NodeId(2), NodeId(70_000)],
                moving: false,
            },
            PartitionInfo {
                partition: PartitionId(1),
                incarnation: 1 << 33,
                replicas: vec![NodeId(1), NodeId(3), NodeId(u64::MAX)],
                moving: true,
            },
        ],
    }
}

/// Every admin answer (with every node state), with its fixture name.
fn admin_answers() -> Vec<(&'static str, AdminAnswer)> {
    let node = |id: u64, state: AdminNodeState, rack: Option<&str>| NodeStatus {
        id: NodeId(id),
        address: format!("10.0.0.{id}:7400"),
        site: "site-a".into(),
        rack: rack.map(str::to_owned),
        state,
        voter: id != 4,
        n_replicas: 300,
    };
    let answers = vec![
        AdminAnswer::StreamCreated(stream_info()),
        AdminAnswer::Streams(vec![
            StreamInfo {
                partitions: vec![],
                ..stream_info()
            },
            StreamInfo {
                name: StreamName::new("a").unwrap(),
                n_partitions: 4096,
                factor: 1,
                retention_age_ms_max: Some(1),
                retention_bytes_max: None,
                partitions: vec![],
            },
        ]),
        AdminAnswer::StreamDeleted { n_partitions: 300 },
        AdminAnswer::AclChanged { changed: true },
        AdminAnswer::Acls(vec![AclEntry {
            identity: producer(Role::Edge),
            streams: vec![stream(), StreamName::new("a").unwrap()],
        }]),
        AdminAnswer::Cluster(ClusterStatus {
            node: NodeId(2),
            leader: Some(NodeId(1)),
            term: 70_000,
            applied_index: 1 << 40,
            nodes: vec![
                node(1, AdminNodeState::Joining, Some("r1")),
                node(2, AdminNodeState::Active, None),
                node(3, AdminNodeState::Draining, None),
                node(4, AdminNodeState::Removed, None),
            ],
            n_streams: 2,
            n_partitions: 4098,
        }),
        AdminAnswer::ClusterInitialized {
            n_streams: 2,
            n_acl_entries: 3,
            n_acl_rules_skipped: 1,
        },
    ];
    answers
        .into_iter()
        .map(|answer| {
            let name = match &answer {
                AdminAnswer::StreamCreated(_) => "stream_created",
                AdminAnswer::Streams(_) => "streams",
                AdminAnswer::StreamDeleted { .. } => "stream_deleted",
                AdminAnswer::AclChanged { .. } => "acl_changed",
                AdminAnswer::Acls(_) => "acls",
                AdminAnswer::Cluster(_) => "cluster",
                AdminAnswer::ClusterInitialized { .. } => "cluster_initialized",
            };
            (name, answer)
        })
        .collect()
}

/// Every admin error, with its fixture name.
fn admin_errors() -> Vec<(&'static str, AdminError)> {
    let errors = vec![
        AdminError::NotClustered,
        AdminError::InvalidName {
            what: "stream name".into(),
            name: "../etc".into(),
            reason: "stream name \"../etc\" holds '/'".into(),
        },
        AdminError::InvalidRequest {
            reason: "retention of 0 ms".into(),
        },
        AdminError::StreamExists { name: stream() },
        AdminError::UnknownStream { name: stream() },
        AdminError::InvalidReplicationFactor {
            factor: 5,
            n_active: 3,
        },
        AdminError::InvalidPartitionCount {
            n_partitions: 1 << 32,
            max: 4096,
        },
        AdminError::Rejected {
            reason: "node 9 still holds 3 replicas".into(),
        },
        AdminError::Unavailable {
            reason: "no leader".into(),
        },
        AdminError::AlreadyInitialized,
    ];
    errors
        .into_iter()
        .map(|error| {
            let name = match &error {
                AdminError::NotClustered => "not_clustered",
                AdminError::InvalidName { .. } => "invalid_name",
                AdminError::InvalidRequest { .. } => "invalid_request",
                AdminError::StreamExists { .. } => "stream_exists",
                AdminError::UnknownStream { .. } => "unknown_stream",
                AdminError::InvalidReplicationFactor { .. } => "invalid_replication_factor",
                AdminError::InvalidPartitionCount { .. } => "invalid_partition_count",
                AdminError::Rejected { .. } => "rejected",
                AdminError::Unavailable { .. } => "unavailable",
                AdminError::AlreadyInitialized => "already_initialized",
            };
            (name, error)
        })
        .collect()
}

/// The admin protocol's messages: a request of each operation, an answer of each kind and a
/// refusal of each error.
fn add_admin_cases(add: &mut impl FnMut(String, Message)) {
    for (name, op) in admin_ops() {
        add(
            format!("admin_request_{name}"),
            Message::AdminRequest(AdminRequest {
                request_id: 400,
                op,
            }),
        );
    }
    for (name, answer) in admin_answers() {
        add(
            format!("admin_response_{name}"),
            Message::AdminResponse(AdminResponse {
                request_id: 401,
                result: Ok(answer),
            }),
        );
    }
    for (name, error) in admin_errors() {
        add(
            format!("admin_response_error_{name}"),
            Message::AdminResponse(AdminResponse {
                request_id: 65_536,
                result: Err(error),
            }),
        );
    }
}

/// Every stored-event case, named `event_<payload>`.
fn event_cases() -> Vec<(String, Event)> {
    payloads()
        .into_iter()
        .enumerate()
        .map(|(idx, p)| (format!("event_{}", payload_name(&p)), event(idx, p)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Fixture plumbing.

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
}

fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2 + bytes.len() / 32 + 1);
    for line in bytes.chunks(HEX_LINE_CHARS / 2) {
        for b in line {
            write!(out, "{b:02x}").unwrap();
        }
        out.push('\n');
    }
    out
}

fn from_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err(format!("odd number of hex digits ({})", digits.len()));
    }
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
            u8::from_str_radix(pair, 16).map_err(|e| format!("bad hex {pair:?}: {e}"))
        })
        .collect()
}

fn bless_enabled() -> bool {
    std::env::var("SLUICE_BLESS").is_ok_and(|v| v == "1")
}

/// Compares `actual` with fixture `name`, writing the fixture if it is missing and blessing is
/// on. Returns the fixture's bytes, or a description of the failure.
fn check_fixture(name: &str, actual: &[u8]) -> Result<Vec<u8>, String> {
    let path = golden_dir().join(format!("{name}.hex"));
    let shown = format!("proto/tests/golden/{name}.hex");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !bless_enabled() {
                return Err(format!(
                    "{name}: fixture {shown} is missing. If `{name}` is a NEW message kind or \
                     version, create it once with SLUICE_BLESS=1; released layouts are frozen"
                ));
            }
            std::fs::create_dir_all(golden_dir())
                .map_err(|e| format!("{name}: create dir: {e}"))?;
            std::fs::write(&path, to_hex(actual))
                .map_err(|e| format!("{name}: write {shown}: {e}"))?;
            return Ok(actual.to_vec());
        }
        Err(e) => return Err(format!("{name}: read {shown}: {e}")),
    };
    if text
        .lines()
        .any(|l| l.len() > HEX_LINE_CHARS || l.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(format!(
            "{name}: {shown} is not lowercase hex with {HEX_LINE_CHARS} characters a line"
        ));
    }
    let expected = from_hex(&text).map_err(|e| format!("{name}: {shown}: {e}"))?;
    if expected != actual {
        let first_diff = expected
            .iter()
            .zip(actual)
            .position(|(a, b)| a != b)
            .unwrap_or(expected.len().min(actual.len()));
        return Err(format!(
            "{name}: the encoding of `{name}` changed (first difference at byte {first_diff}; \
             {} bytes expected, {} now). Released layouts are frozen: do not edit {shown}; add a \
             new message kind or protocol version instead.\n\
             --- expected ({shown})\n{}--- actual\n{}",
            expected.len(),
            actual.len(),
            to_hex(&expected),
            to_hex(actual),
        ));
    }
    Ok(expected)
}

fn fail_if_any(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} golden case(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn messages_match_golden_frames() {
    // Checks that every released message case, encoded as a whole frame by `frame::encode`, is
    // byte-for-byte its committed fixture, and that `frame::decode` of the fixture gives back the
    // very value (decode of encode is the identity). All cases run, so one failure lists every
    // changed message.
    let mut failures = Vec::new();
    for (name, msg) in message_cases() {
        let actual = frame::encode(&msg).unwrap_or_else(|e| panic!("{name}: encode failed: {e}"));
        match check_fixture(&name, &actual) {
            Ok(fixture) => match frame::decode(&fixture, FRAME_BODY_BYTES_MAX) {
                Ok(decoded) if decoded == msg => {}
                Ok(decoded) => failures.push(format!(
                    "{name}: fixture decodes to {decoded:?}, expected {msg:?}"
                )),
                Err(e) => failures.push(format!("{name}: fixture does not decode: {e}")),
            },
            Err(failure) => failures.push(failure),
        }
    }
    fail_if_any(failures);
}

#[test]
fn stored_events_match_golden_bytes() {
    // Checks that `codec::encode` of an `Event`, the form segment files store, is byte-for-byte
    // its committed fixture for every payload kind and producer role, and that both
    // `codec::decode` and `codec::decode_prefix` (what the log reader uses) give the event back.
    let mut failures = Vec::new();
    for (name, event) in event_cases() {
        let actual = codec::encode(&event).unwrap_or_else(|e| panic!("{name}: encode failed: {e}"));
        let fixture = match check_fixture(&name, &actual) {
            Ok(fixture) => fixture,
            Err(failure) => {
                failures.push(failure);
                continue;
            }
        };
        match codec::decode::<Event>(&fixture) {
            Ok(decoded) if decoded == event => {}
            Ok(decoded) => failures.push(format!(
                "{name}: fixture decodes to {decoded:?}, expected {event:?}"
            )),
            Err(e) => failures.push(format!("{name}: fixture does not decode: {e}")),
        }
        let mut two = fixture.clone();
        two.extend_from_slice(&fixture);
        match codec::decode_prefix::<Event>(&two) {
            Ok((decoded, used)) if decoded == event && used == fixture.len() => {}
            other => failures.push(format!(
                "{name}: decode_prefix of two copies gave {other:?}"
            )),
        }
    }
    fail_if_any(failures);
}

#[test]
fn every_fixture_belongs_to_a_case() {
    // Checks that `tests/golden/` holds no fixture without a case, so removing or renaming a
    // case cannot silently unfreeze a released layout.
    let names: BTreeSet<String> = message_cases()
        .into_iter()
        .map(|(n, _)| n)
        .chain(event_cases().into_iter().map(|(n, _)| n))
        .collect();
    assert_eq!(
        names.len(),
        message_cases().len() + event_cases().len(),
        "two cases share a name"
    );
    let Ok(dir) = std::fs::read_dir(golden_dir()) else {
        assert!(bless_enabled(), "proto/tests/golden/ is missing");
        return;
    };
    let orphans: Vec<String> = dir
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|file| {
            file.strip_suffix(".hex")
                .is_none_or(|stem| !names.contains(stem))
        })
        .collect();
    assert!(
        orphans.is_empty(),
        "fixtures without a case in proto/tests/golden.rs: {orphans:?}; a released layout stays \
         frozen, so keep its case (add a new kind or version for new layouts)"
    );
}

#[test]
fn hex_helpers_round_trip() {
    // Checks the fixture format itself: lowercase hex, 64 characters a line, and back.
    let bytes: Vec<u8> = (0..=255u8).chain(0..7).collect();
    let text = to_hex(&bytes);
    assert!(text.lines().all(|l| l.len() <= HEX_LINE_CHARS));
    assert_eq!(text.lines().next().unwrap().len(), HEX_LINE_CHARS);
    assert!(!text.bytes().any(|b| b.is_ascii_uppercase()));
    assert_eq!(from_hex(&text).unwrap(), bytes);
}
