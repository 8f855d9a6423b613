//! [`QuicTransport`]: the real [`Transport`], a QUIC + mTLS [`Client`] per connection.
//!
//! `connect` tries the configured node addresses one after another, starting after the address
//! of the last connection it handed out, so a caller that reconnects after a failure fails over
//! to the next node before coming back to the one that failed.

use super::client::{Client, ClientSettings};
use super::NetError;
use crate::env::{BoxFuture, Connection, Transport, TransportError, TransportErrorKind};
use crate::msg::Message;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tracing::warn;

/// The production transport: QUIC + mutual TLS to a list of node addresses.
#[derive(Debug)]
pub struct QuicTransport {
    settings: ClientSettings,
    /// Index of the address to try first on the next `connect`.
    cursor: AtomicUsize,
}

impl QuicTransport {
    /// A transport over `settings` (its `addrs` are the nodes, tried in rotation).
    pub fn new(settings: ClientSettings) -> Self {
        Self {
            settings,
            cursor: AtomicUsize::new(0),
        }
    }

    async fn connect_inner(&self) -> Result<Arc<dyn Connection>, TransportError> {
        let n = self.settings.addrs.len();
        if n == 0 {
            return Err(TransportError::new(
                TransportErrorKind::Local,
                "no node address configured",
            ));
        }
        let start = self.cursor.load(Ordering::Relaxed) % n;
        let mut failures = Vec::with_capacity(n);
        let mut refused = true;
        for step in 0..n {
            let idx = (start + step) % n;
            let mut one = self.settings.clone();
            one.addrs = vec![self.settings.addrs[idx].clone()];
            match Client::connect(&one).await {
                Ok(client) => {
                    self.cursor.store(idx + 1, Ordering::Relaxed);
                    return Ok(Arc::new(QuicConnection { client }));
                }
                Err(error) => {
                    let error = transport_error(&error, true);
                    warn!(addr = %one.addrs[0], %error, "node unreachable");
                    refused &= error.kind == TransportErrorKind::Refused;
                    failures.push(format!("{}: {}", one.addrs[0], error.message));
                }
            }
        }
        self.cursor.store(start + 1, Ordering::Relaxed);
        // Refused only if every node refused: then the setup, not the network, is at fault.
        let kind = if refused {
            TransportErrorKind::Refused
        } else {
            TransportErrorKind::Unreachable
        };
        Err(TransportError::new(kind, failures.join("; ")))
    }
}

impl Transport for QuicTransport {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Connection>, TransportError>> {
        Box::pin(self.connect_inner())
    }
}

struct QuicConnection {
    client: Client,
}

impl Connection for QuicConnection {
    fn call(&self, request: Message) -> BoxFuture<'_, Result<Message, TransportError>> {
        Box::pin(async move {
            self.client
                .call(request)
                .await
                .map_err(|error| transport_error(&error, false))
        })
    }

    fn peer(&self) -> String {
        format!(
            "{} at {}",
            self.client.server(),
            self.client.remote_address()
        )
    }
}

impl Drop for QuicConnection {
    fn drop(&mut self) {
        self.client.close();
    }
}

/// Classifies a [`NetError`]; `connecting` says whether it happened while connecting.
pub fn transport_error(error: &NetError, connecting: bool) -> TransportError {
    use TransportErrorKind as K;
    let kind = match error {
        NetError::Certificate { .. } | NetError::Tls { .. } | NetError::Encode { .. } => K::Local,
        // A node shutting down closes its connections: come back later, or to another node.
        NetError::Refused { code, .. } if *code == u64::from(super::CLOSE_SHUTDOWN) => K::Closed,
        // A busy node may have room later, and another node may have room now.
        NetError::Refused { code, .. } if *code == u64::from(super::CLOSE_BUSY) => K::Unreachable,
        NetError::Identity { .. } | NetError::Refused { .. } => K::Refused,
        // A handshake that ended in a TLS alert is a refusal of our certificate (or theirs).
        NetError::Handshake { .. } => K::Refused,
        NetError::Connect { .. } | NetError::Io { .. } => K::Unreachable,
        NetError::Timeout { .. } if connecting => K::Unreachable,
        NetError::Timeout { .. } => K::Timeout,
        NetError::Closed { .. } => K::Closed,
        NetError::Frame(_) | NetError::Protocol { .. } => K::Protocol,
        NetError::Remote { code, .. } => K::Remote(*code),
    };
    TransportError::new(kind, error.to_string())
}
