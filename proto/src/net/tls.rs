//! TLS material and quinn configurations.
//!
//! Both sides use the ring provider explicitly, TLS 1.3 only, ALPN [`crate::ALPN`] and no 0-RTT.
//! A server requires a client certificate chaining to the cluster CA; which roles may connect is
//! decided after the handshake by [`super::server::serve`], so that a refusal carries a reason.
//! A client requires the server certificate to chain to the CA, to match the server name (node
//! certificates carry DNS and IP SANs), and to carry the `node` identity of the same cluster.
//!
//! Files are read synchronously: this runs once at startup, before any connection exists.

use super::server::ServerLimits;
use super::NetError;
use crate::ids::NodeId;
use crate::ids::{Identity, Role, IDENTITY_SCHEME};
use crate::{ALPN, PEER_ALPN};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The certificates and key one endpoint presents and trusts.
pub struct TlsMaterial {
    /// The cluster CA certificates (trust roots).
    pub ca: Vec<CertificateDer<'static>>,
    /// This endpoint's certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        Self {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TlsMaterial")
            .field("n_ca", &self.ca.len())
            .field("n_chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Loads PEM files: the CA certificate(s), this endpoint's certificate chain (leaf first) and
    /// its private key. Errors name the file.
    pub fn load(ca_path: &Path, cert_path: &Path, key_path: &Path) -> Result<Self, NetError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|error| NetError::Certificate {
                file: path.display().to_string(),
                reason: format!("cannot read: {error}"),
            })
        };
        Self::parse(
            (&ca_path.display().to_string(), &read(ca_path)?),
            (&cert_path.display().to_string(), &read(cert_path)?),
            (&key_path.display().to_string(), &read(key_path)?),
        )
    }

    /// Builds material from PEM text already in memory (tests, generated demo clusters).
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, NetError> {
        Self::parse(
            ("<ca pem>", ca_pem),
            ("<certificate pem>", cert_pem),
            ("<key pem>", key_pem),
        )
    }

    fn parse(ca: (&str, &[u8]), cert: (&str, &[u8]), key: (&str, &[u8])) -> Result<Self, NetError> {
        let ca_certs = parse_certs(ca.0, ca.1)?;
        let chain = parse_certs(cert.0, cert.1)?;
        let bad_key = |reason: String| NetError::Certificate {
            file: key.0.to_owned(),
            reason,
        };
        let private_key = rustls_pemfile::private_key(&mut &*key.1)
            .map_err(|error| bad_key(format!("not valid PEM: {error}")))?
            .ok_or_else(|| bad_key("no private key found".to_owned()))?;
        Ok(Self {
            ca: ca_certs,
            chain,
            key: private_key,
        })
    }

    /// The identity in this endpoint's own leaf certificate.
    pub fn identity(&self) -> Result<Identity, NetError> {
        let leaf = self.chain.first().ok_or_else(|| NetError::Certificate {
            file: "own certificate".to_owned(),
            reason: "empty certificate chain".to_owned(),
        })?;
        certificate_identity(leaf)
    }
}

fn parse_certs(file: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let certs = rustls_pemfile::certs(&mut &*pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| NetError::Certificate {
            file: file.to_owned(),
            reason: format!("not valid PEM: {error}"),
        })?;
    if certs.is_empty() {
        return Err(NetError::Certificate {
            file: file.to_owned(),
            reason: "no certificate found".to_owned(),
        });
    }
    Ok(certs)
}

/// The identity in a certificate: its one `sluice://` URI SAN.
pub fn certificate_identity(der: &CertificateDer<'_>) -> Result<Identity, NetError> {
    let bad = |reason: String| NetError::Identity { reason };
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|error| bad(format!("certificate does not parse: {error}")))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|error| bad(format!("subject alternative names do not parse: {error}")))?;
    let mut uris = sans
        .iter()
        .flat_map(|sans| sans.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with(IDENTITY_SCHEME) => {
                Some(*uri)
            }
            _ => None,
        });
    let (Some(uri), None) = (uris.next(), uris.next()) else {
        let n = sans
            .iter()
            .flat_map(|sans| sans.value.general_names.iter())
            .count();
        return Err(bad(format!(
            "certificate must carry exactly one sluice:// URI SAN ({n} SANs present)"
        )));
    };
    Identity::parse_uri(uri).map_err(|error| bad(error.to_string()))
}

/// The authenticated identity of a connection's peer, which must belong to `cluster`.
pub fn peer_identity(connection: &quinn::Connection, cluster: &str) -> Result<Identity, NetError> {
    let identity = connection_identity(connection)?;
    if identity.cluster != cluster {
        return Err(NetError::Identity {
            reason: format!(
                "peer {identity} belongs to cluster {}, not {cluster}",
                identity.cluster
            ),
        });
    }
    Ok(identity)
}

/// The identity of a connection's peer, whatever its cluster.
pub(crate) fn connection_identity(connection: &quinn::Connection) -> Result<Identity, NetError> {
    let none = || NetError::Identity {
        reason: "peer presented no certificate".to_owned(),
    };
    let certs = connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(none)?;
    certificate_identity(certs.first().ok_or_else(none)?)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(material: &TlsMaterial) -> Result<Arc<RootCertStore>, NetError> {
    let mut roots = RootCertStore::empty();
    for cert in &material.ca {
        roots
            .add(cert.clone())
            .map_err(|error| NetError::Certificate {
                file: "ca certificate".to_owned(),
                reason: format!("not a usable trust anchor: {error}"),
            })?;
    }
    Ok(Arc::new(roots))
}

fn tls_error(what: &str) -> impl Fn(rustls::Error) -> NetError + '_ {
    move |error| NetError::Tls {
        reason: format!("{what}: {error}"),
    }
}

/// A transport configuration: bounded streams, an idle timeout and keep-alives at a third of it.
pub(crate) fn transport(
    bidi_streams_max: u32,
    idle_timeout_ms: u64,
) -> Result<quinn::TransportConfig, NetError> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(bidi_streams_max));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    if idle_timeout_ms > 0 {
        let idle = Duration::from_millis(idle_timeout_ms);
        let timeout = quinn::IdleTimeout::try_from(idle).map_err(|_| NetError::Tls {
            reason: format!("idle timeout of {idle_timeout_ms} ms is too large"),
        })?;
        transport.max_idle_timeout(Some(timeout));
        transport.keep_alive_interval(Some(idle / 3));
    } else {
        transport.max_idle_timeout(None);
    }
    Ok(transport)
}

/// Bytes quinn buffers for one connection attempt beyond its first packet, until it is placed.
pub(crate) const INCOMING_BUFFER_BYTES: u64 = 16 << 10;

/// Connection attempts quinn may hold before the accept loop places them.
pub(crate) fn incoming_max(handshakes_max: u32) -> usize {
    (handshakes_max as usize).saturating_mul(4).max(64)
}

/// A server configuration: this node's certificate, client certificates required and verified
/// against the cluster CA, transport limits from `limits`. The own certificate must carry an
/// identity of `cluster`, which catches a node started with another cluster's files.
pub fn server_config(
    material: &TlsMaterial,
    cluster: &str,
    limits: &ServerLimits,
) -> Result<quinn::ServerConfig, NetError> {
    let own = material.identity()?;
    if own.cluster != cluster {
        return Err(NetError::Certificate {
            file: "own certificate".to_owned(),
            reason: format!("identity {own} is not of cluster {cluster}"),
        });
    }
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(material)?, provider.clone())
        .build()
        .map_err(|error| NetError::Tls {
            reason: format!("client certificate verifier: {error}"),
        })?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error("tls 1.3 with ring"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.chain.clone(), material.key.clone_key())
        .map_err(tls_error("own certificate and key"))?;
    // The peer protocol shares the listener; `serve_with_peers` dispatches on the ALPN chosen.
    tls.alpn_protocols = vec![ALPN.to_vec(), PEER_ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let quic =
        quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls)).map_err(|error| {
            NetError::Tls {
                reason: format!("quic server: {error}"),
            }
        })?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = transport(limits.streams_per_connection_max, limits.idle_timeout_ms)?;
    // Bytes quinn buffers per connection, each way, beside the server's byte budgets.
    let window = limits.connection_window_bytes_max;
    let window_varint = quinn::VarInt::from_u64(window).map_err(|_| NetError::Tls {
        reason: format!("connection window of {window} bytes is too large"),
    })?;
    transport.stream_receive_window(window_varint);
    transport.receive_window(window_varint);
    transport.send_window(window);
    config.transport_config(Arc::new(transport));
    // Connection attempts quinn holds until the accept loop places them (it does at once);
    // beyond this quinn refuses statelessly. Handshake packets after the first are small.
    let incoming_max = incoming_max(limits.handshakes_max);
    config.max_incoming(incoming_max);
    config.incoming_buffer_size(INCOMING_BUFFER_BYTES);
    config.incoming_buffer_size_total(INCOMING_BUFFER_BYTES.saturating_mul(incoming_max as u64));
    Ok(config)
}

/// A client configuration: this endpoint's certificate for client authentication, and a server
/// verifier that requires a chain to the cluster CA, the server name, and a `node` identity of
/// `cluster`. The transport has a 30 s idle timeout; [`super::Client`] sets its own.
pub fn client_config(
    material: &TlsMaterial,
    cluster: &str,
) -> Result<quinn::ClientConfig, NetError> {
    dialing_config(material, cluster, None, ALPN, transport(0, 30_000)?)
}

/// A client configuration of the peer protocol ([`PEER_ALPN`]) for dialing node `node`: the
/// server must present the certificate of `sluice://<cluster>/node/<node>` issued by the CA (and
/// match the server name), checked during the handshake, so this node's own certificate is
/// never shown to anyone else. `transport` carries the peer limits (streams the dialed node may
/// open towards us, idle timeout).
pub fn peer_client_config(
    material: &TlsMaterial,
    cluster: &str,
    node: NodeId,
    transport: quinn::TransportConfig,
) -> Result<quinn::ClientConfig, NetError> {
    dialing_config(material, cluster, Some(node), PEER_ALPN, transport)
}

/// The one client configuration builder: a verifier of a node of `cluster` (of `node` only,
/// when given), this endpoint's certificate, `alpn` and `transport`.
fn dialing_config(
    material: &TlsMaterial,
    cluster: &str,
    node: Option<NodeId>,
    alpn: &[u8],
    transport: quinn::TransportConfig,
) -> Result<quinn::ClientConfig, NetError> {
    let provider = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(roots(material)?, provider.clone())
        .build()
        .map_err(|error| NetError::Tls {
            reason: format!("server certificate verifier: {error}"),
        })?;
    let verifier = Arc::new(NodeVerifier {
        inner,
        cluster: cluster.to_owned(),
        node: node.map(|n| n.to_string()),
    });
    let tls = client_tls(material, provider, verifier, alpn)?;
    let quic =
        quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).map_err(|error| {
            NetError::Tls {
                reason: format!("quic client: {error}"),
            }
        })?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

fn client_tls(
    material: &TlsMaterial,
    provider: Arc<rustls::crypto::CryptoProvider>,
    verifier: Arc<NodeVerifier>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, NetError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error("tls 1.3 with ring"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(material.chain.clone(), material.key.clone_key())
        .map_err(tls_error("own certificate and key"))?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.enable_early_data = false;
    Ok(tls)
}

/// Why a server certificate was refused beyond what webpki checks.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotANode(String);

/// The webpki server verifier plus the check that the server is a node of our cluster (and, when
/// dialing a peer, the node the address book names).
#[derive(Debug)]
struct NodeVerifier {
    inner: Arc<WebPkiServerVerifier>,
    cluster: String,
    node: Option<String>,
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let refuse = |reason: String| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                NotANode(reason),
            ))))
        };
        let identity =
            certificate_identity(end_entity).map_err(|error| refuse(format!("server {error}")))?;
        if identity.role != Role::Node {
            return Err(refuse(format!(
                "server certificate is {identity}, not a node"
            )));
        }
        if identity.cluster != self.cluster {
            return Err(refuse(format!(
                "server certificate is {identity}, not of cluster {}",
                self.cluster
            )));
        }
        if let Some(node) = self.node.as_ref().filter(|node| **node != identity.name) {
            return Err(refuse(format!(
                "server certificate is {identity}, but the address book names node {node} there"
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
