//! Properties of the codec and the frame format, over generated values of every message and
//! event: encode and decode are inverse, decoding never panics on any input, a successful decode
//! is canonical (the input is exactly the encoding of what it decoded to), and the header's body
//! length is checked against the bound before the body is touched. Ends with a seeded, bounded
//! random-input fuzz run that belongs to the normal test suite.
//!
//! Values are compared through their encodings, not with `==`: readings are `f64` and may be NaN,
//! and encode∘decode must keep every bit.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_proto::codec::{self, DecodeError};
use sluice_proto::env::{PeerEnvelope, PeerGroup, PeerRefusal};
use sluice_proto::frame::{self, FrameError, FrameHeader, Kind, HEADER_LEN, MAGIC};
use sluice_proto::msg::{
    Durability, ErrorCode, ErrorResponse, FetchFrom, FetchRequest, FetchResponse, Message,
    MetadataRequest, MetadataResponse, PeerAnswer, PeerCall, PeerReply, ProduceRequest,
    ProduceResponse, RecordOutcome, RecordRejection,
};
use sluice_proto::{
    BootEpoch, DropReason, Event, Identity, NodeId, Offset, PartitionId, Payload, Reading, Record,
    Role, SensorId, StoredEvent, StreamName, UnixMillis, PROTOCOL_VERSION,
};

/// The frame body bound used where the test does not vary it.
const BODY_BYTES_MAX: u32 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Strategies.

const NAME_CHARS: &[char] = &[
    'A', 'B', 'C', 'X', 'Y', 'Z', 'a', 'b', 'c', 'x', 'y', 'z', '0', '1', '5', '9', '.', '_', '-',
];
const SENSOR_CHARS: &[char] = &[
    'A', 'Z', 'a', 'm', 'z', '0', '7', '9', '.', '_', '-', ':', '/',
];

/// A name of `1..=max` characters from `alphabet`, mostly short.
fn name(alphabet: &'static [char], max: usize) -> impl Strategy<Value = String> {
    prop_oneof![3 => vec(select(alphabet), 1..=8), 1 => vec(select(alphabet), 1..=max)]
        .prop_map(|chars| chars.into_iter().collect())
}

fn stream_name() -> impl Strategy<Value = StreamName> {
    // A stream name must not start with '.'; the strategy draws those too, then skips them.
    name(NAME_CHARS, 128).prop_filter_map("a stream name starting with '.'", |n| {
        StreamName::new(n).ok()
    })
}

fn sensor_id() -> impl Strategy<Value = SensorId> {
    name(SENSOR_CHARS, 256).prop_map(|n| SensorId::new(n).unwrap())
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Node), Just(Role::Edge), Just(Role::Admin)]
}

fn identity() -> impl Strategy<Value = Identity> {
    (name(NAME_CHARS, 64), role(), name(NAME_CHARS, 128))
        .prop_map(|(cluster, role, name)| Identity::new(&cluster, role, &name).unwrap())
}

/// Any text, including multi-byte characters.
fn text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..24).prop_map(|chars| chars.into_iter().collect())
}

/// Integers spread over every varint size class, not just the (mostly 9-byte) uniform ones.
fn varint() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..=250u64,
        251..=0xffffu64,
        0x1_0000..=0xffff_ffffu64,
        any::<u64>()
    ]
}

fn small_u32() -> impl Strategy<Value = u32> {
    prop_oneof![0..=250u32, any::<u32>()]
}

fn millis() -> impl Strategy<Value = UnixMillis> {
    prop_oneof![-300..=300i64, any::<i64>()].prop_map(UnixMillis)
}

/// Every `f64`: finite, infinite, zero of both signs and NaN with any payload.
fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        any::<u64>().prop_map(f64::from_bits),
        select(vec![
            0.0,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            f64::MIN_POSITIVE
        ]),
    ]
}

fn reading() -> impl Strategy<Value = Reading> {
    prop_oneof![
        float().prop_map(|celsius| Reading::Temperature { celsius }),
        float().prop_map(|percent| Reading::Humidity { percent }),
        (text(), text(), float()).prop_map(|(name, unit, value)| Reading::Metric {
            name,
            unit,
            value
        }),
    ]
}

fn drop_reason() -> impl Strategy<Value = DropReason> {
    prop_oneof![
        Just(DropReason::SpoolFull),
        Just(DropReason::Expired),
        Just(DropReason::PowerLoss),
        Just(DropReason::Invalid),
        Just(DropReason::Storage),
        Just(DropReason::Corrupted),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(epoch, seq, seq_last)| {
            DropReason::ProducerExpired {
                epoch: BootEpoch(epoch),
                seq,
                seq_last,
            }
        })
    ]
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        reading().prop_map(Payload::Reading),
        text().prop_map(Payload::Json),
        vec(any::<u8>(), 0..48).prop_map(Payload::Bytes),
        (varint(), drop_reason())
            .prop_map(|(seq_last, reason)| Payload::Dropped { seq_last, reason }),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (sensor_id(), varint(), varint(), millis(), payload()).prop_map(
        |(sensor, epoch, seq, device_time, payload)| Record {
            sensor,
            boot_epoch: BootEpoch(epoch),
            seq,
            device_time,
            payload,
        },
    )
}

fn event() -> impl Strategy<Value = Event> {
    (identity(), millis(), record())
        .prop_map(|(producer, received_time, record)| Event::stamp(producer, received_time, record))
}

fn rejection() -> impl Strategy<Value = RecordRejection> {
    prop_oneof![
        (text(), varint(), varint()).prop_map(|(sensor, expected, got)| {
            RecordRejection::SequenceGap {
                sensor,
                expected,
                got,
            }
        }),
        (text(), varint(), varint()).prop_map(|(sensor, epoch, got)| RecordRejection::EpochStart {
            sensor,
            epoch,
            got
        }),
        (text(), varint(), varint()).prop_map(|(sensor, epoch, current)| {
            RecordRejection::StaleEpoch {
                sensor,
                epoch,
                current,
            }
        }),
        (text(), varint())
            .prop_map(|(sensor, seq)| RecordRejection::DuplicateTooOld { sensor, seq }),
        text().prop_map(|reason| RecordRejection::Invalid { reason }),
        small_u32().prop_map(|max| RecordRejection::TooManyProducers { max }),
        text().prop_map(|reason| RecordRejection::Storage { reason }),
        small_u32().prop_map(|partition| RecordRejection::Overloaded { partition }),
        (small_u32(), text())
            .prop_map(|(partition, reason)| RecordRejection::Unavailable { partition, reason }),
        (text(), varint())
            .prop_map(|(sensor, epoch)| RecordRejection::ProducerExpired { sensor, epoch }),
    ]
}

fn outcome() -> impl Strategy<Value = RecordOutcome> {
    let durability = prop_oneof![Just(Durability::LeaderFsync), Just(Durability::QuorumFsync)];
    prop_oneof![
        (small_u32(), varint(), durability, any::<bool>()).prop_map(
            |(p, o, durability, duplicate)| {
                RecordOutcome::Appended {
                    partition: PartitionId(p),
                    offset: Offset(o),
                    durability,
                    duplicate,
                }
            }
        ),
        rejection().prop_map(RecordOutcome::Rejected),
    ]
}

fn fetch_from() -> impl Strategy<Value = FetchFrom> {
    prop_oneof![
        Just(FetchFrom::Earliest),
        Just(FetchFrom::Latest),
        varint().prop_map(|o| FetchFrom::Offset(Offset(o)))
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    select(ErrorCode::ALL.to_vec())
}

/// Any message of any kind.
fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (varint(), stream_name(), vec(record(), 0..4)).prop_map(|(request_id, stream, records)| {
            Message::ProduceRequest(ProduceRequest {
                request_id,
                stream,
                records,
            })
        }),
        (varint(), vec(outcome(), 0..6)).prop_map(|(request_id, outcomes)| {
            Message::ProduceResponse(ProduceResponse {
                request_id,
                outcomes,
            })
        }),
        (
            varint(),
            stream_name(),
            small_u32(),
            fetch_from(),
            small_u32(),
            small_u32(),
            small_u32()
        )
            .prop_map(
                |(request_id, stream, p, from, events_max, bytes_max, wait_ms)| {
                    Message::FetchRequest(FetchRequest {
                        request_id,
                        stream,
                        partition: PartitionId(p),
                        from,
                        events_max,
                        bytes_max,
                        wait_ms,
                    })
                }
            ),
        (
            varint(),
            small_u32(),
            vec((varint(), event()), 0..4),
            varint(),
            varint(),
            varint()
        )
            .prop_map(|(request_id, p, events, next, high, start)| {
                let events = events
                    .into_iter()
                    .map(|(o, event)| StoredEvent {
                        offset: Offset(o),
                        event,
                    })
                    .collect();
                Message::FetchResponse(FetchResponse {
                    request_id,
                    partition: PartitionId(p),
                    events,
                    next_offset: Offset(next),
                    high_watermark: Offset(high),
                    log_start: Offset(start),
                })
            }),
        (varint(), stream_name()).prop_map(|(request_id, stream)| Message::MetadataRequest(
            MetadataRequest { request_id, stream }
        )),
        (varint(), stream_name(), small_u32()).prop_map(|(request_id, stream, n_partitions)| {
            Message::MetadataResponse(MetadataResponse {
                request_id,
                stream,
                n_partitions,
            })
        }),
        (varint(), error_code(), text()).prop_map(|(request_id, code, message)| Message::Error(
            ErrorResponse {
                request_id,
                code,
                message
            }
        )),
        peer_message(),
    ]
}

/// Any message of the peer protocol, boxed (the union of every message is deep enough already
/// to overflow a test thread's stack in debug builds).
fn peer_message() -> BoxedStrategy<Message> {
    prop_oneof![
        (
            varint(),
            peer_envelope(),
            vec(any::<u8>(), 0..64),
            any::<bool>()
        )
            .prop_map(|(request_id, envelope, body, bulk)| {
                let call = PeerCall {
                    request_id,
                    envelope,
                    body,
                };
                match bulk {
                    true => Message::PeerBulkCall(call),
                    false => Message::PeerControlCall(call),
                }
            }),
        (varint(), vec(any::<u8>(), 0..64), text(), varint()).prop_map(
            |(request_id, body, reason, n)| {
                let answer = match n % 3 {
                    0 => PeerAnswer::Body(body),
                    1 => PeerAnswer::Refused(PeerRefusal::Handler(reason)),
                    _ => PeerAnswer::Refused(PeerRefusal::StaleIncarnation { got: n, current: 1 }),
                };
                Message::PeerReply(PeerReply { request_id, answer })
            }
        ),
    ]
    .boxed()
}

/// Any peer envelope.
fn peer_envelope() -> impl Strategy<Value = PeerEnvelope> {
    (
        text(),
        varint(),
        varint(),
        stream_name(),
        small_u32(),
        varint(),
        0..3u8,
    )
        .prop_map(
            |(cluster, from, to, stream, partition, incarnation, group)| PeerEnvelope {
                cluster,
                from: NodeId(from),
                to: NodeId(to),
                group: match group {
                    0 => PeerGroup::Node,
                    1 => PeerGroup::Metadata,
                    _ => PeerGroup::Partition {
                        stream,
                        partition: PartitionId(partition),
                    },
                },
                incarnation,
            },
        )
}

/// One edit of a valid frame.
#[derive(Clone, Debug)]
enum Mutation {
    /// Replace the byte at `idx % len` with `value`.
    Set { idx: usize, value: u8 },
    /// Keep only the first `len % (frame length)` bytes.
    Truncate { len: usize },
    /// Append bytes.
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(idx, value)| Mutation::Set { idx, value }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        vec(any::<u8>(), 1..16).prop_map(Mutation::Append),
    ]
}

fn apply(mut bytes: Vec<u8>, mutation: &Mutation) -> Vec<u8> {
    match mutation {
        Mutation::Set { idx, value } => {
            let idx = idx % bytes.len();
            bytes[idx] = *value;
        }
        Mutation::Truncate { len } => bytes.truncate(len % bytes.len()),
        Mutation::Append(extra) => bytes.extend_from_slice(extra),
    }
    bytes
}

// ---------------------------------------------------------------------------------------------
// Checks shared by the properties and the fuzz run.

/// Decodes `bytes` as a frame; when that succeeds, asserts the input was canonical: exactly
/// the frame of what it decoded to. Returns whether it decoded.
fn check_frame_decode(bytes: &[u8]) -> Result<bool, FrameError> {
    match frame::decode(bytes, BODY_BYTES_MAX) {
        Ok(msg) => {
            let again = frame::encode(&msg).expect("a decoded message encodes");
            assert!(
                again == bytes,
                "non-canonical frame accepted:\n input {bytes:02x?}\n again {again:02x?}\n {msg:?}"
            );
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Decodes `bytes` as one stored event, and as a prefix of stored events; on success asserts
/// canonicality (the used bytes are exactly the event's encoding).
fn check_event_decode(bytes: &[u8]) -> (Result<(), DecodeError>, Result<(), DecodeError>) {
    let whole = codec::decode::<Event>(bytes).map(|event| {
        let again = codec::encode(&event).expect("a decoded event encodes");
        assert!(
            again == bytes,
            "non-canonical event accepted:\n input {bytes:02x?}\n again {again:02x?}"
        );
    });
    let prefix = codec::decode_prefix::<Event>(bytes).map(|(event, used)| {
        assert!(
            used <= bytes.len(),
            "decode_prefix used {used} of {} bytes",
            bytes.len()
        );
        let again = codec::encode(&event).expect("a decoded event encodes");
        assert!(
            again == bytes[..used],
            "non-canonical event prefix accepted:\n input {bytes:02x?}\n again {again:02x?}"
        );
    });
    (whole, prefix)
}

fn header(kind: u16, body_len: u32) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&body_len.to_be_bytes());
    out
}

// ---------------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn frame_decode_inverts_encode(msg in message()) {
        // (a) Checks that decoding the frame of any message gives a message with the very same
        // frame (bit for bit, NaN payloads included) and the same kind and request id.
        let bytes = frame::encode(&msg).unwrap();
        let decoded = frame::decode(&bytes, BODY_BYTES_MAX).unwrap();
        prop_assert_eq!(decoded.kind(), msg.kind());
        prop_assert_eq!(decoded.request_id(), msg.request_id());
        prop_assert_eq!(frame::encode(&decoded).unwrap(), bytes);
    }

    #[test]
    fn event_decode_inverts_encode(event in event(), tail in vec(any::<u8>(), 0..8)) {
        // (a) Checks that a stored event decodes back to the very same bytes, alone with
        // `codec::decode` and followed by other bytes with `codec::decode_prefix`.
        let bytes = codec::encode(&event).unwrap();
        let decoded: Event = codec::decode(&bytes).unwrap();
        prop_assert_eq!(codec::encode(&decoded).unwrap(), bytes.clone());
        let mut followed = bytes.clone();
        followed.extend_from_slice(&tail);
        let (decoded, used) = codec::decode_prefix::<Event>(&followed).unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(codec::encode(&decoded).unwrap(), bytes);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..4096)) {
        // (b) Checks that frame and event decoders return, Ok or Err, on any bytes; and that
        // whatever they accept is canonical.
        let _ = check_frame_decode(&bytes);
        let _ = check_event_decode(&bytes);
    }

    #[test]
    fn decoding_arbitrary_bodies_never_panics(
        kind in select(Kind::ALL.to_vec()),
        body in vec(any::<u8>(), 0..1024),
    ) {
        // (b) Checks the same behind a valid header announcing the right length, so that every
        // input reaches the body decoder of its kind instead of failing on the magic.
        let mut bytes = header(kind as u16, body.len() as u32);
        bytes.extend_from_slice(&body);
        match check_frame_decode(&bytes) {
            Ok(_) | Err(FrameError::Body { .. }) => {}
            Err(e) => prop_assert!(false, "a well-formed header was refused: {e}"),
        }
    }

    #[test]
    fn mutated_frames_never_panic_and_decode_canonically(
        msg in message(),
        mutations in vec(mutation(), 1..4),
    ) {
        // (c) Checks that a valid frame with random byte replacements, truncations and appended
        // bytes never panics, and that when it still decodes, the input is exactly the frame of
        // the decoded message.
        let mut bytes = frame::encode(&msg).unwrap();
        for m in &mutations {
            bytes = apply(bytes, m);
            if bytes.is_empty() {
                break;
            }
        }
        let _ = check_frame_decode(&bytes);
        // Fixing the length field up lets the body decoder see the damage too.
        if bytes.len() >= HEADER_LEN {
            let body_len = (bytes.len() - HEADER_LEN) as u32;
            bytes[8..12].copy_from_slice(&body_len.to_be_bytes());
            let _ = check_frame_decode(&bytes);
        }
    }

    #[test]
    fn oversized_header_is_refused_before_the_body(
        kind in select(Kind::ALL.to_vec()),
        max in prop_oneof![0..=64u32, any::<u32>()],
        excess in prop_oneof![1..=64u32, any::<u32>()],
        body in vec(any::<u8>(), 0..64),
    ) {
        // (d) Checks that a header announcing more than the bound is refused as TooLarge from
        // the header alone: with no body, a partial body or garbage after it, never Truncated,
        // TrailingBytes or a body error, so no body byte was needed (or allocated for).
        prop_assume!(max < u32::MAX);
        let len = max.saturating_add(excess).max(max + 1);
        let mut bytes = header(kind as u16, len);
        let expected = FrameError::TooLarge { len, max };
        let parsed = FrameHeader::parse(bytes.as_slice().try_into().unwrap(), max);
        prop_assert_eq!(parsed, Err(expected.clone()));
        prop_assert_eq!(frame::decode(&bytes, max), Err(expected.clone()));
        bytes.extend_from_slice(&body);
        prop_assert_eq!(frame::decode(&bytes, max), Err(expected));
    }

    #[test]
    fn short_body_is_truncated_not_read(
        kind in select(Kind::ALL.to_vec()),
        len in 1..=u32::MAX,
        have in 0..64usize,
    ) {
        // (d) Checks that a header within the bound but announcing more body than present is
        // refused as Truncated with the exact counts, whatever length it claims.
        let have = have.min(len as usize - 1);
        let mut bytes = header(kind as u16, len);
        bytes.resize(HEADER_LEN + have, 0);
        let needed = HEADER_LEN + len as usize;
        let got = HEADER_LEN + have;
        let expected = FrameError::Truncated { needed, got };
        prop_assert_eq!(frame::decode(&bytes, u32::MAX), Err(expected));
    }
}

// ---------------------------------------------------------------------------------------------
// Seeded fuzz run.

/// Inputs the fuzz run decodes; sized to stay well under a minute in the dev profile.
const FUZZ_INPUTS: usize = 200_000;
const FUZZ_SEED: u64 = 0x5eed_f00d;
/// Bytes that make varint and enum decoders take unusual branches.
const INTERESTING: [u8; 10] = [0x00, 0x01, 0x7f, 0x80, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff];

/// Valid frames and encoded events drawn from the strategies above with a fixed seed.
fn corpus(n: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut runner = TestRunner::deterministic();
    let frames = (0..n)
        .map(|_| frame::encode(&message().new_tree(&mut runner).unwrap().current()).unwrap())
        .collect();
    let events = (0..n)
        .map(|_| codec::encode(&event().new_tree(&mut runner).unwrap().current()).unwrap())
        .collect();
    (frames, events)
}

/// Applies one to four random edits: bit flips, byte overwrites (often with interesting
/// values), inserts, deletes, truncation, appends and slice duplication.
fn mutate(rng: &mut ChaCha8Rng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=4) {
        let len = bytes.len();
        match rng.random_range(0..8) {
            0 if len > 0 => bytes[rng.random_range(0..len)] ^= 1 << rng.random_range(0..8),
            1 if len > 0 => bytes[rng.random_range(0..len)] = rng.random(),
            2 if len > 0 => {
                bytes[rng.random_range(0..len)] =
                    INTERESTING[rng.random_range(0..INTERESTING.len())]
            }
            3 => {
                let at = rng.random_range(0..=len);
                let n = rng.random_range(1..=8);
                let insert: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                bytes.splice(at..at, insert);
            }
            4 if len > 0 => {
                let at = rng.random_range(0..len);
                let end = (at + rng.random_range(1..=8)).min(len);
                bytes.drain(at..end);
            }
            5 => bytes.truncate(rng.random_range(0..=len)),
            6 => bytes.extend((0..rng.random_range(1..=16)).map(|_| rng.random::<u8>())),
            7 if len > 1 => {
                let at = rng.random_range(0..len);
                let end = (at + rng.random_range(1..=16)).min(len);
                let chunk = bytes[at..end].to_vec();
                let to = rng.random_range(0..=len);
                bytes.splice(to..to, chunk);
            }
            _ => {}
        }
    }
}

/// Edits a frame's header: usually sets the length field to the real body length, so the body
/// decoder sees the damage; sometimes to a random, off-by-a-few or huge value, or changes the
/// kind.
fn edit_header(rng: &mut ChaCha8Rng, bytes: &mut [u8]) {
    if bytes.len() < HEADER_LEN {
        return;
    }
    let actual = (bytes.len() - HEADER_LEN) as u32;
    let body_len = match rng.random_range(0..10) {
        0..=5 => actual,
        6 => rng.random(),
        7 => actual.wrapping_add(rng.random_range(1..=3)),
        8 => actual.wrapping_sub(rng.random_range(1..=3)),
        _ => u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
    };
    bytes[8..12].copy_from_slice(&body_len.to_be_bytes());
    if rng.random_range(0..10) == 0 {
        let kind: u16 = if rng.random_bool(0.8) {
            rng.random_range(1..=7)
        } else {
            rng.random()
        };
        bytes[6..8].copy_from_slice(&kind.to_be_bytes());
    }
}

fn garbage(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut bytes = vec![0u8; rng.random_range(0..512)];
    rng.fill_bytes(&mut bytes);
    bytes
}

/// How often each outcome occurred, to show the run reached every layer.
#[derive(Debug, Default)]
struct FuzzStats {
    frame_ok: usize,
    frame_body_err: usize,
    frame_header_err: usize,
    event_ok: usize,
    event_prefix_ok: usize,
    event_err: usize,
}

#[test]
fn seeded_random_inputs_never_panic() {
    // Checks, with a fixed seed so any failure replays, that `frame::decode`,
    // `codec::decode::<Event>` and `codec::decode_prefix::<Event>` never panic on 200 000
    // inputs: pure garbage, garbage behind a valid header, and valid frames and events with
    // random edits (bit flips, byte inserts and deletes, length-field edits); and that every
    // successful decode was canonical. Asserts the run reached body decoding and successes.
    let mut rng = ChaCha8Rng::seed_from_u64(FUZZ_SEED);
    let (frames, events) = corpus(64);
    let mut stats = FuzzStats::default();
    for i in 0..FUZZ_INPUTS {
        let bytes = match rng.random_range(0..100) {
            0..=14 => garbage(&mut rng),
            15..=24 => {
                let body = garbage(&mut rng);
                let mut bytes = header(rng.random_range(1..=7), body.len() as u32);
                bytes.extend_from_slice(&body);
                bytes
            }
            25..=69 => {
                let mut bytes = frames[rng.random_range(0..frames.len())].clone();
                mutate(&mut rng, &mut bytes);
                edit_header(&mut rng, &mut bytes);
                bytes
            }
            _ => {
                let mut bytes = events[rng.random_range(0..events.len())].clone();
                mutate(&mut rng, &mut bytes);
                bytes
            }
        };
        let outcome =
            std::panic::catch_unwind(|| (check_frame_decode(&bytes), check_event_decode(&bytes)));
        let Ok((frame_result, (whole, prefix))) = outcome else {
            panic!("decoder panicked on fuzz input {i} (seed {FUZZ_SEED:#x}): {bytes:02x?}");
        };
        match frame_result {
            Ok(_) => stats.frame_ok += 1,
            Err(FrameError::Body { .. }) => stats.frame_body_err += 1,
            Err(_) => stats.frame_header_err += 1,
        }
        stats.event_ok += usize::from(whole.is_ok());
        stats.event_prefix_ok += usize::from(prefix.is_ok());
        stats.event_err += usize::from(whole.is_err());
    }
    eprintln!("fuzz stats: {stats:?}");
    assert!(
        stats.frame_ok > 1000,
        "too few mutated frames decoded: {stats:?}"
    );
    assert!(
        stats.frame_body_err > 10_000,
        "too few inputs reached a body decoder: {stats:?}"
    );
    assert!(
        stats.event_ok > 1000 && stats.event_prefix_ok > stats.event_ok,
        "{stats:?}"
    );
}

#[test]
fn decoded_names_are_validated() {
    // Checks that decoding goes through the validating constructors: a frame carrying an empty
    // stream name, or a stored event carrying an out-of-alphabet sensor id ("../x y"), is a
    // decode error rather than a value the type promises cannot exist.
    let body = [7u8, 0]; // MetadataRequest { request_id: 7, stream: "" }
    let mut bytes = header(Kind::MetadataRequest as u16, body.len() as u32);
    bytes.extend_from_slice(&body);
    assert!(matches!(
        frame::decode(&bytes, BODY_BYTES_MAX),
        Err(FrameError::Body { .. })
    ));

    let mut event = codec::encode(&Event::stamp(
        Identity::new("prod", Role::Edge, "pi-01").unwrap(),
        UnixMillis(0),
        Record {
            sensor: SensorId::new("s").unwrap(),
            boot_epoch: BootEpoch(0),
            seq: 0,
            device_time: UnixMillis(0),
            payload: Payload::Json(String::new()),
        },
    ))
    .unwrap();
    // The sensor id is the length-prefixed "s" after the identity (4+"prod", role, 5+"pi-01").
    let at = 1 + 4 + 1 + 1 + 5;
    assert_eq!(&event[at..at + 2], &[1, b's']);
    event.splice(at..at + 2, [6, b'.', b'.', b'/', b'x', b' ', b'y']);
    assert!(codec::decode::<Event>(&event).is_err());
}
