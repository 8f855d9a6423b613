//! The QUIC + mutual TLS connection layer shared by nodes, edge agents and the CLI.
//!
//! - [`tls`] loads PEM material and builds quinn configurations: TLS 1.3 only, the ring provider,
//!   ALPN [`crate::ALPN`], no 0-RTT, client certificates required and checked against the
//!   cluster CA, and servers required to present a `node` identity of the same cluster.
//! - [`io`] reads and writes frames on QUIC streams, checking the body length before allocating.
//! - [`server`] accepts connections (handshakes in progress bounded apart from authenticated
//!   connections, which are bounded per node and per identity), authenticates the peer's
//!   identity and role, and runs a [`server::Handler`] for every request, pipelined per stream;
//!   [`server::serve_with_peers`] also hands connections of the peer protocol to [`peer`].
//! - [`client`] connects to the first reachable node and pipelines requests over one stream.
//! - [`transport`] is the real [`crate::env::Transport`]: a client per connection, rotating
//!   through the node addresses on reconnect.
//! - [`peer`] is the real [`crate::env::PeerTransport`]: node-to-node calls on the same
//!   listener under ALPN [`crate::PEER_ALPN`], one connection per node pair, two lanes.
//!
//! Identities come from certificates only (URI SAN `sluice://<cluster>/<role>/<name>`); nothing
//! here trusts an identity claimed in a payload. The client layer does not retry requests or
//! reconnect after a connection is lost: callers decide, because only they know what is
//! idempotent. The peer transport reconnects (it owns one connection per peer), but never
//! retries a request either.

pub mod client;
pub mod io;
pub mod peer;
pub mod server;
pub mod tls;
pub mod transport;

pub use client::{Client, ClientSettings};
pub use io::{read_frame, write_frame};
pub use peer::{PeerAcceptor, PeerLaneQueue, PeerLimits, QuicPeerTransport};
pub use server::{
    serve, serve_with_gauges, serve_with_peers, ClientSide, Handler, ServerGauges, ServerLimits,
    ServerStats,
};
pub use tls::{client_config, peer_identity, server_config, TlsMaterial};
pub use transport::QuicTransport;

use crate::frame::FrameError;
use crate::msg::ErrorCode;
pub use rustls::AlertDescription;
use std::sync::Arc;

/// Application close code: the connection ended normally (the client is done).
pub const CLOSE_DONE: u32 = 0;
/// Application close code: the server is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 1;
/// Application close code: the peer's role may not use this endpoint.
pub const CLOSE_ROLE_NOT_ALLOWED: u32 = 2;
/// Application close code: the peer's certificate is for another cluster.
pub const CLOSE_WRONG_CLUSTER: u32 = 3;
/// Application close code: the peer's certificate carries no usable identity.
pub const CLOSE_BAD_IDENTITY: u32 = 4;
/// Application close code: the node serves `connections_max` connections already.
pub const CLOSE_BUSY: u32 = 5;
/// Application close code: the peer's identity holds `connections_per_identity_max` already.
pub const CLOSE_IDENTITY_LIMIT: u32 = 6;
/// Application close code (peer protocol): the dialing node is not in this node's address book.
pub const CLOSE_PEER_UNKNOWN: u32 = 7;
/// Application close code (peer protocol): the node with the lower id dials; a dial from the
/// higher one only asks it to (see [`peer`]).
pub const CLOSE_PEER_LOWER_DIALS: u32 = 8;
/// Application close code (peer protocol): the node was removed from the address book.
pub const CLOSE_PEER_REMOVED: u32 = 9;
/// Application close code (peer protocol): a newer connection of the node pair replaced this one.
pub const CLOSE_PEER_REPLACED: u32 = 10;
/// Stream error code (reset or stop) after a frame error.
pub const STREAM_FRAME_ERROR: u32 = 1;

/// What went wrong on a connection, phrased so that a user can act on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NetError {
    /// A certificate or key file (or in-memory PEM) could not be used.
    #[error("certificate material {file}: {reason}")]
    Certificate {
        /// The file (or a description of the in-memory source).
        file: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A TLS configuration could not be built from otherwise readable material.
    #[error("tls configuration: {reason}")]
    Tls {
        /// What rustls or quinn refused.
        reason: String,
    },
    /// The peer's certificate carries no acceptable identity.
    #[error("peer identity: {reason}")]
    Identity {
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS handshake failed with an alert: a certificate was refused, by the peer or by us.
    #[error("connect to {addr}: {}", describe_alert(*.alert, *.by_peer, .reason))]
    Handshake {
        /// The address tried.
        addr: String,
        /// The TLS alert.
        alert: AlertDescription,
        /// True when the peer sent the alert (it refused us), false when we refused the peer.
        by_peer: bool,
        /// rustls's reason, as the close carried it.
        reason: String,
    },
    /// No connection could be made, or the handshake failed without a TLS alert.
    #[error("connect to {addr}: {reason}")]
    Connect {
        /// The address (or addresses) tried.
        addr: String,
        /// Why it failed, including the TLS alert when there was one.
        reason: String,
    },
    /// The peer closed the connection with an application close code and a reason.
    #[error("connection refused by peer (code {code}): {reason}")]
    Refused {
        /// The application close code, one of the `CLOSE_*` constants.
        code: u64,
        /// The peer's reason.
        reason: String,
    },
    /// A frame could not be read or written.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// A message could not be encoded.
    #[error("encode: {reason}")]
    Encode {
        /// What failed.
        reason: String,
    },
    /// The peer answered with an error response.
    #[error("remote error {code:?}: {message}")]
    Remote {
        /// The error code.
        code: ErrorCode,
        /// The peer's message.
        message: String,
    },
    /// The peer sent something the protocol does not allow here.
    #[error("protocol violation: {reason}")]
    Protocol {
        /// What arrived.
        reason: String,
    },
    /// A deadline passed.
    #[error("timed out: {what}")]
    Timeout {
        /// What did not complete in time.
        what: String,
    },
    /// The connection or stream is closed.
    #[error("closed: {reason}")]
    Closed {
        /// Who closed it and how.
        reason: String,
    },
    /// An operating system IO error.
    #[error("io error while {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: Arc<std::io::Error>,
    },
}

/// The error code of a frame error sent back to the peer.
pub(crate) fn frame_error_code(error: &FrameError) -> ErrorCode {
    match error {
        FrameError::TooLarge { .. } => ErrorCode::TooLarge,
        _ => ErrorCode::BadRequest,
    }
}

/// The TLS alert a QUIC crypto error code (0x100 + alert) carries, if it is one.
fn tls_alert(code: quinn::TransportErrorCode) -> Option<AlertDescription> {
    let raw = u64::from(code);
    (0x100..0x200)
        .contains(&raw)
        .then(|| AlertDescription::from((raw & 0xff) as u8))
}

/// What an alert means for a user, for the alerts rustls sends when a certificate check fails.
fn alert_hint(alert: AlertDescription) -> Option<&'static str> {
    use rustls::CertificateError as C;
    // A chain that ends at an unknown issuer, or at a same-named CA whose signature does not
    // verify (two clusters both initialised as "prod"), both mean "another CA".
    let hint = if alert == AlertDescription::from(C::UnknownIssuer)
        || alert == AlertDescription::from(C::BadSignature)
    {
        "the certificate was not issued by this cluster's ca"
    } else if alert == AlertDescription::from(C::Expired) {
        "certificate expired or not yet valid"
    } else if alert == AlertDescription::from(C::NotValidForName) {
        "the certificate is malformed or does not name this server"
    } else if alert == AlertDescription::from(C::InvalidPurpose) {
        "the certificate is not for this use (extended key usage)"
    } else if alert == AlertDescription::from(C::Revoked) {
        "the certificate is revoked"
    } else if alert == AlertDescription::CertificateRequired {
        "a client certificate is required"
    } else if alert == AlertDescription::NoApplicationProtocol {
        "the peer does not speak this protocol version (alpn)"
    } else {
        return None;
    };
    Some(hint)
}

/// Describes a handshake that ended in a TLS alert.
fn describe_alert(alert: AlertDescription, by_peer: bool, reason: &str) -> String {
    let who = if by_peer {
        "refused by peer with"
    } else {
        "refused here with"
    };
    let hint = alert_hint(alert)
        .map(|hint| format!(": {hint}"))
        .unwrap_or_default();
    match reason.is_empty() {
        true => format!("{who} tls alert {alert:?}{hint}"),
        false => format!("{who} tls alert {alert:?}{hint} ({reason})"),
    }
}

/// Describes a transport close: the TLS alert for handshake failures, or the code.
fn describe_close(code: quinn::TransportErrorCode, reason: &str, by_peer: bool) -> String {
    if let Some(alert) = tls_alert(code) {
        return describe_alert(alert, by_peer, reason);
    }
    let code = if code == quinn::TransportErrorCode::CONNECTION_REFUSED {
        "server refused the connection (connection limit reached or shutting down)".to_owned()
    } else {
        code.to_string()
    };
    match reason.is_empty() {
        true => code,
        false => format!("{code} ({reason})"),
    }
}

/// Describes a connection error in words a user can act on.
pub(crate) fn describe_connection_error(error: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    match error {
        E::TransportError(e) => describe_close(e.code, &e.reason, false),
        E::ConnectionClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason);
            format!(
                "closed by peer: {}",
                describe_close(close.error_code, &reason, true)
            )
        }
        E::ApplicationClosed(close) => {
            format!(
                "closed by peer with code {}: {}",
                close.error_code,
                String::from_utf8_lossy(&close.reason)
            )
        }
        E::VersionMismatch => "peer speaks no supported QUIC version".to_owned(),
        E::Reset => "connection reset by peer".to_owned(),
        E::TimedOut => "connection timed out (peer unreachable or idle)".to_owned(),
        E::LocallyClosed => "connection closed locally".to_owned(),
        E::CidsExhausted => "connection ids exhausted".to_owned(),
    }
}

/// Maps a connection error to a [`NetError`]; `addr` names the peer for handshake failures.
pub(crate) fn connection_error(addr: &str, error: &quinn::ConnectionError) -> NetError {
    use quinn::ConnectionError as E;
    let alert = match error {
        E::TransportError(e) => tls_alert(e.code).map(|alert| (alert, false, e.reason.clone())),
        E::ConnectionClosed(close) => tls_alert(close.error_code).map(|alert| {
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            (alert, true, reason)
        }),
        _ => None,
    };
    if let Some((alert, by_peer, reason)) = alert {
        return NetError::Handshake {
            addr: addr.to_owned(),
            alert,
            by_peer,
            reason,
        };
    }
    match error {
        E::ApplicationClosed(close) => NetError::Refused {
            code: close.error_code.into_inner(),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        E::LocallyClosed => NetError::Closed {
            reason: describe_connection_error(error),
        },
        E::TimedOut => NetError::Timeout {
            what: format!("connection to {addr} (peer unreachable or idle)"),
        },

        _ => NetError::Connect {
            addr: addr.to_owned(),
            reason: describe_connection_error(error),
        },
    }
}
