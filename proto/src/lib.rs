//! Sluice's shared vocabulary: ids, events, request and response messages, the frame format and
//! the codec (the only place bincode is called), the environment traits (`env`) that node and
//! edge code are written against so the simulator can run the same code, and the checksummed
//! segment layer (`segment`) every append-only file is written with.
//!
//! Without features this crate does no IO and has no async runtime. `net` adds the QUIC + mutual
//! TLS connection layer that nodes, edges and the CLI share; `os` adds the real environment (OS
//! clock, files, blocking pool) that nodes and edge agents run on outside the simulator; `testing`
//! adds the doubles tests and the simulator run on (`testing::CrashDisk`) and the test cases
//! every crate's tests share (always there for this crate's own unit tests).
#![warn(missing_docs)]

pub mod backoff;
#[cfg(feature = "net")]
pub mod certcheck;
pub mod codec;
pub mod env;
pub mod event;
pub mod frame;
pub mod ids;
pub mod msg;
#[cfg(feature = "net")]
pub mod net;
#[cfg(feature = "os")]
pub mod os;
pub mod segment;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use codec::{DecodeError, EncodeError};
pub use event::{
    check_seq_range, DropReason, Event, Payload, Reading, Record, SeqRange, SeqRangeError,
    StoredEvent, SEQ_MAX,
};
pub use frame::{FrameError, FrameHeader, Kind};
pub use ids::{
    BootEpoch, Identity, IdentityError, NodeId, Offset, PartitionId, Role, SensorId, StreamName,
    UnixMillis,
};

/// The protocol version this build speaks; carried in every frame header and in ALPN.
pub const PROTOCOL_VERSION: u16 = 1;

/// ALPN identifier for [`PROTOCOL_VERSION`]; a peer offering anything else is refused.
pub const ALPN: &[u8] = b"sluice/1";

/// ALPN identifier of the node-to-node protocol (`proto::net::peer`), served on the same listener
/// as [`ALPN`]; only node certificates of the cluster are admitted on it.
pub const PEER_ALPN: &[u8] = b"sluice-peer/1";
