//! Secrets and TLS for the `mqtt` source: the password file and the rustls client
//! configuration (ring provider, the configured CA as the only root, an optional client
//! certificate). Errors name the file and never quote its content.

use super::MqttTlsConfig;
use rumqttc::{TlsConfiguration, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::Arc;

/// Reads a password file: its content without the trailing newline.
pub(super) fn read_password(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("password_file {}: cannot read: {error}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// A TLS transport trusting only `config.ca_cert`, with the client certificate if configured.
pub(super) fn transport(config: &MqttTlsConfig) -> Result<Transport, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(&config.ca_cert)? {
        roots
            .add(cert)
            .map_err(|error| format!("tls.ca_cert {}: {error}", config.ca_cert.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("tls: {error}"))?
        .with_root_certificates(roots);
    let client_config = match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|error| format!("tls.cert {} and tls.key: {error}", cert.display()))?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
        client_config,
    ))))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem =
        std::fs::read(path).map_err(|error| format!("{}: cannot read: {error}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut &*pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{}: not valid PEM: {error}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem =
        std::fs::read(path).map_err(|error| format!("{}: cannot read: {error}", path.display()))?;
    rustls_pemfile::private_key(&mut &*pem)
        .map_err(|_| format!("{}: not valid PEM", path.display()))?
        .ok_or_else(|| format!("{}: no private key found", path.display()))
}
