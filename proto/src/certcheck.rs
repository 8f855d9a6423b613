//! Checks of one endpoint's TLS files before it runs (feature `net`): each file exists and
//! parses, the private key is not readable by group or others (refused as ssh refuses such
//! keys), the key belongs to the certificate, the certificate chains to the CA with the same
//! verifier the handshake uses and is valid now, and it carries the identity the endpoint is
//! configured as. Every problem is reported, not just the first, each naming its file(s).
//!
//! Files are read synchronously: this runs once at start-up or from a `config check`, before any
//! connection exists. The time to check validity against is passed in (`now`), never read here.

use crate::ids::{Identity, Role, UnixMillis, IDENTITY_SCHEME};
use crate::net::tls::certificate_identity;
use crate::net::TlsMaterial;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The identity an endpoint's certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedIdentity {
    /// The cluster it is configured for.
    pub cluster: String,
    /// Its role.
    pub role: Role,
    /// Its name, when the configuration fixes it (a node's id); `None` accepts any name.
    pub name: Option<String>,
}

impl ExpectedIdentity {
    fn matches(&self, found: &Identity) -> bool {
        found.cluster == self.cluster
            && found.role == self.role
            && self.name.as_ref().is_none_or(|name| *name == found.name)
    }
}

impl fmt::Display for ExpectedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name.as_deref().unwrap_or("<name>");
        write!(f, "{IDENTITY_SCHEME}{}/{}/{name}", self.cluster, self.role)
    }
}

/// One problem with an endpoint's certificate, key or CA file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertProblem {
    /// A file is missing or cannot be read.
    #[error("cannot read {}: {reason}", file.display())]
    Unreadable {
        /// The file.
        file: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// A file does not hold what it should (no PEM, no certificate, an unusable key, no
    /// identity URI).
    #[error("{}: {reason}", file.display())]
    Malformed {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A private key is accessible by group or others.
    #[error(
        "permissions {mode:04o} for {} are too open: a private key must not be accessible by \
         group or others (chmod 600 {})",
        file.display(),
        file.display()
    )]
    KeyTooOpen {
        /// The key file.
        file: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key is not the certificate's.
    #[error("{} is not the private key of {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The certificate does not chain to the CA (another CA signed it, or it is not usable for
    /// client authentication).
    #[error("{} was not issued by the ca in {}: {reason}", cert.display(), ca.display())]
    NotSignedByCa {
        /// The certificate file.
        cert: PathBuf,
        /// The CA file.
        ca: PathBuf,
        /// What the verifier said.
        reason: String,
    },
    /// The certificate (or the CA) is past its validity.
    #[error("{} has expired: {reason}", cert.display())]
    Expired {
        /// The certificate file.
        cert: PathBuf,
        /// What the verifier said.
        reason: String,
    },
    /// The certificate (or the CA) is not valid yet.
    #[error("{} is not valid yet: {reason}", cert.display())]
    NotYetValid {
        /// The certificate file.
        cert: PathBuf,
        /// What the verifier said.
        reason: String,
    },
    /// The certificate carries another identity than the endpoint is configured as.
    #[error("{} is {found}, but this must be {expected}", cert.display())]
    WrongIdentity {
        /// The certificate file.
        cert: PathBuf,
        /// The identity in the certificate.
        found: Box<Identity>,
        /// What the configuration says it must be.
        expected: Box<ExpectedIdentity>,
    },
}

/// Every problem found with an endpoint's TLS files, one per line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct CertProblems(pub Vec<CertProblem>);

/// The paths of one endpoint's TLS files.
#[derive(Clone, Copy, Debug)]
pub struct TlsFiles<'a> {
    /// The cluster CA certificate (PEM).
    pub ca_cert: &'a Path,
    /// The endpoint's certificate chain, leaf first (PEM).
    pub cert: &'a Path,
    /// The endpoint's private key (PEM).
    pub key: &'a Path,
}

/// Refuses a private key file that group or others may access, as ssh does.
pub fn check_key_permissions(key: &Path) -> Result<(), CertProblem> {
    let metadata = std::fs::metadata(key).map_err(|error| CertProblem::Unreadable {
        file: key.to_path_buf(),
        reason: error.to_string(),
    })?;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CertProblem::KeyTooOpen {
            file: key.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Loads and checks an endpoint's TLS files (see the module doc); returns the material when
/// nothing is wrong, else every problem found.
pub fn load_checked(
    files: TlsFiles<'_>,
    expected: &ExpectedIdentity,
    now: UnixMillis,
) -> Result<TlsMaterial, CertProblems> {
    let mut problems = Vec::new();
    let ca = read(files.ca_cert, &mut problems);
    let cert = read(files.cert, &mut problems);
    let key = read(files.key, &mut problems);
    if key.is_some() {
        if let Err(problem) = check_key_permissions(files.key) {
            problems.push(problem);
        }
    }
    let ca_certs = ca
        .as_deref()
        .and_then(|pem| certs(files.ca_cert, pem, &mut problems));
    let chain = cert
        .as_deref()
        .and_then(|pem| certs(files.cert, pem, &mut problems));
    let private_key = key
        .as_deref()
        .and_then(|pem| private_key(files.key, pem, &mut problems));
    if let Some(chain) = &chain {
        check_identity(files.cert, &chain[0], expected, &mut problems);
        if let Some(private_key) = private_key {
            check_key_matches(files, chain, private_key, &mut problems);
        }
        if let Some(ca_certs) = &ca_certs {
            check_chain(files, ca_certs, chain, now, &mut problems);
        }
    }
    if !problems.is_empty() {
        return Err(CertProblems(problems));
    }
    match (ca, cert, key) {
        (Some(ca), Some(cert), Some(key)) => {
            TlsMaterial::from_pem(&ca, &cert, &key).map_err(|error| {
                CertProblems(vec![CertProblem::Malformed {
                    file: files.cert.to_path_buf(),
                    reason: error.to_string(),
                }])
            })
        }
        // Every missing file pushed a problem above.
        _ => Err(CertProblems(problems)),
    }
}

fn read(path: &Path, problems: &mut Vec<CertProblem>) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            problems.push(CertProblem::Unreadable {
                file: path.to_path_buf(),
                reason: error.to_string(),
            });
            None
        }
    }
}

fn malformed(path: &Path, reason: impl Into<String>) -> CertProblem {
    CertProblem::Malformed {
        file: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn certs(
    path: &Path,
    pem: &[u8],
    problems: &mut Vec<CertProblem>,
) -> Option<Vec<CertificateDer<'static>>> {
    match rustls_pemfile::certs(&mut &*pem).collect::<Result<Vec<_>, _>>() {
        Ok(certs) if certs.is_empty() => {
            problems.push(malformed(path, "no PEM certificate found"));
            None
        }
        Ok(certs) => Some(certs),
        Err(error) => {
            problems.push(malformed(path, format!("not valid PEM: {error}")));
            None
        }
    }
}

fn private_key(
    path: &Path,
    pem: &[u8],
    problems: &mut Vec<CertProblem>,
) -> Option<PrivateKeyDer<'static>> {
    match rustls_pemfile::private_key(&mut &*pem) {
        Ok(Some(key)) => Some(key),
        Ok(None) => {
            problems.push(malformed(path, "no PEM private key found"));
            None
        }
        Err(error) => {
            problems.push(malformed(path, format!("not valid PEM: {error}")));
            None
        }
    }
}

fn check_identity(
    path: &Path,
    leaf: &CertificateDer<'_>,
    expected: &ExpectedIdentity,
    problems: &mut Vec<CertProblem>,
) {
    match certificate_identity(leaf) {
        Ok(found) if expected.matches(&found) => {}
        Ok(found) => problems.push(CertProblem::WrongIdentity {
            cert: path.to_path_buf(),
            found: Box::new(found),
            expected: Box::new(expected.clone()),
        }),
        Err(error) => problems.push(malformed(path, error.to_string())),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn check_key_matches(
    files: TlsFiles<'_>,
    chain: &[CertificateDer<'static>],
    key: PrivateKeyDer<'static>,
    problems: &mut Vec<CertProblem>,
) {
    let signing_key = match provider().key_provider.load_private_key(key) {
        Ok(signing_key) => signing_key,
        Err(error) => {
            problems.push(malformed(files.key, format!("not a usable key: {error}")));
            return;
        }
    };
    match rustls::sign::CertifiedKey::new(chain.to_vec(), signing_key).keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => problems
            .push(CertProblem::KeyMismatch {
                cert: files.cert.to_path_buf(),
                key: files.key.to_path_buf(),
            }),
        Err(error) => problems.push(malformed(
            files.key,
            format!("cannot compare with {}: {error}", files.cert.display()),
        )),
    }
}

fn check_chain(
    files: TlsFiles<'_>,
    ca_certs: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
    now: UnixMillis,
    problems: &mut Vec<CertProblem>,
) {
    let mut roots = RootCertStore::empty();
    for ca in ca_certs {
        if let Err(error) = roots.add(ca.clone()) {
            problems.push(malformed(
                files.ca_cert,
                format!("not a usable trust anchor: {error}"),
            ));
            return;
        }
    }
    // The verifier nodes run on every client handshake: every role's certificate is a client
    // certificate (nodes' carry server and client authentication).
    let verifier =
        match WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build() {
            Ok(verifier) => verifier,
            Err(error) => {
                problems.push(malformed(files.ca_cert, error.to_string()));
                return;
            }
        };
    let millis = u64::try_from(now.0).unwrap_or(0);
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_millis(millis));
    let Err(error) = verifier.verify_client_cert(&chain[0], &chain[1..], now) else {
        return;
    };
    let cert = files.cert.to_path_buf();
    let reason = error.to_string();
    problems.push(match error {
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => CertProblem::Expired { cert, reason },
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => CertProblem::NotYetValid { cert, reason },
        _ => CertProblem::NotSignedByCa {
            cert,
            ca: files.ca_cert.to_path_buf(),
            reason,
        },
    });
}
