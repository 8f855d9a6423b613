//! Test support shared by the tests of every crate (feature `testing`; always in this crate's
//! own unit tests): the stream names every check must refuse, a TOML quoting helper so config
//! tests can embed them, and (with the feature) hostile QUIC clients: a flood of handshakes that
//! never finish, and a client that offers no certificate.
//!
//! Nothing here is used by production code; it exists so that the node's, the edge's and this
//! crate's tests check the same cases with one copy of the code.

/// Stream names that are not one safe path component (empty, `.`/`..`, hidden, a path, a NUL,
/// a space, a newline, a non-ASCII letter). `StreamName::new`, both configs and every decoded
/// frame must refuse each of them.
pub const BAD_STREAM_NAMES: &[&str] = &[
    "",
    ".",
    "..",
    ".hidden",
    "/",
    "a/b",
    "../etc",
    "a\0b",
    "nul\u{0}",
    "sp ace",
    "new\nline",
    "é",
];

/// `text` as a TOML basic string, quotes included: `"`, `\` and control characters escaped, so
/// any of [`BAD_STREAM_NAMES`] can be written into a config file and read back unchanged.
pub fn toml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(feature = "testing")]
pub use hostile::{client_config_without_certificate, initials_that_never_finish};

#[cfg(feature = "testing")]
mod hostile {
    use crate::net::{self, TlsMaterial};
    use std::io;
    use std::net::SocketAddr;
    use std::sync::Arc;

    /// Sends `n` QUIC Initial packets to `server` from one UDP socket, each starting a new
    /// handshake (a new connection id) as a client of `material` that never continues it.
    /// Returns the socket, which must stay open so the server's answers are not bounced.
    pub async fn initials_that_never_finish(
        material: &TlsMaterial,
        cluster: &str,
        server: SocketAddr,
        n: usize,
    ) -> io::Result<tokio::net::UdpSocket> {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let config = net::client_config(material, cluster).map_err(io::Error::other)?;
        let mut endpoint = quinn_proto::Endpoint::new(
            Arc::new(quinn_proto::EndpointConfig::default()),
            None,
            false,
            None,
        );
        // quinn-proto is driven by hand here and needs an instant; nothing depends on its value.
        #[allow(clippy::disallowed_methods)]
        let now = std::time::Instant::now();
        for _ in 0..n {
            let (_, mut connection) = endpoint
                .connect(now, config.clone(), server, "localhost")
                .map_err(|e| io::Error::other(format!("starting a handshake: {e}")))?;
            let mut datagram = Vec::new();
            let transmit = connection
                .poll_transmit(now, 1, &mut datagram)
                .ok_or_else(|| io::Error::other("no initial packet to send"))?;
            socket.send_to(&datagram[..transmit.size], server).await?;
        }
        Ok(socket)
    }

    /// A QUIC client config that trusts the CA of `material` and speaks TLS 1.3 with Sluice's
    /// ALPN like a real client, but offers no client certificate at all.
    pub fn client_config_without_certificate(
        material: &TlsMaterial,
    ) -> io::Result<quinn::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in &material.ca {
            roots.add(ca.clone()).map_err(io::Error::other)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![crate::ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
            .map_err(io::Error::other)?;
        Ok(quinn::ClientConfig::new(Arc::new(quic)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_escape_quotes_backslashes_and_controls() {
        // Checks the quoting of names config tests embed: plain text is only quoted, and a
        // quote, a backslash, a NUL and a newline become TOML escapes.
        assert_eq!(toml_string("a/b"), "\"a/b\"");
        assert_eq!(toml_string("é"), "\"é\"");
        assert_eq!(toml_string("q\"b\\"), "\"q\\\"b\\\\\"");
        assert_eq!(toml_string("a\0b\n"), "\"a\\u0000b\\u000A\"");
    }
}
