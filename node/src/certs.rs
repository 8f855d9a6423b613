//! Certificate authority and node/edge/admin certificates (`sluice certs`).
//!
//! `init` creates the cluster CA (`ca.pem`, `ca.key`; ECDSA P-256, path length 0). The cluster
//! name is recorded as the CA subject's organisation, so later commands read it from `ca.pem`
//! instead of asking again. `node`, `edge` and `admin` issue leaf certificates signed by
//! `ca.key`, each carrying exactly one identity URI SAN `sluice://<cluster>/<role>/<name>`; node
//! certificates also carry DNS and IP SANs (servers are verified by name) and both the server and
//! client EKUs, edge and admin certificates the client EKU only. Leaf files hold the leaf alone;
//! `ca.pem` is distributed separately.
//!
//! Private keys are created with mode 0600, a `ca.key` that group or others may access is refused
//! (as ssh refuses such keys), and nothing is overwritten without `--force`; every
//! target is checked before anything is written. Only paths are printed, never key material.
//! This module does not revoke certificates or run an online CA.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sluice_proto::certcheck::{check_key_permissions, CertProblem};
use sluice_proto::{Identity, IdentityError, Role};
use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// File name of the CA certificate.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key.
pub const CA_KEY_FILE: &str = "ca.key";
/// The longest validity accepted, in days.
pub const DAYS_MAX: u32 = 36_500;
/// Certificates start this long before they are made, so a peer whose clock is a little behind
/// accepts them at once.
const BACKDATE: Duration = Duration::from_secs(300);

/// `sluice certs` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CertsCommand {
    /// Create the cluster CA (ca.pem, ca.key).
    Init {
        /// Cluster name; recorded in the CA and in every identity it issues.
        #[arg(long)]
        cluster: String,
        /// Where files go, and whether to overwrite.
        #[command(flatten)]
        output: OutputOptions,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a node certificate (node-<id>.pem, node-<id>.key).
    Node {
        /// Node id.
        id: String,
        /// IP address SAN (repeatable). Without --ip and --dns: localhost, 127.0.0.1 and ::1.
        #[arg(long = "ip", value_name = "IP")]
        ips: Vec<IpAddr>,
        /// DNS name SAN (repeatable).
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
        /// Output and validity.
        #[command(flatten)]
        leaf: LeafOptions,
    },
    /// Issue an edge agent certificate (edge-<id>.pem, edge-<id>.key).
    Edge {
        /// Edge id.
        id: String,
        /// Output and validity.
        #[command(flatten)]
        leaf: LeafOptions,
    },
    /// Issue an admin (CLI, CI job) certificate (admin-<name>.pem, admin-<name>.key).
    Admin {
        /// Admin name.
        name: String,
        /// Output and validity.
        #[command(flatten)]
        leaf: LeafOptions,
    },
}

/// Where certificate files go.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputOptions {
    /// Directory holding the CA and the certificates.
    #[arg(long, default_value = "certs")]
    pub dir: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// Options of leaf certificates.
#[derive(Debug, Clone, clap::Args)]
pub struct LeafOptions {
    /// Where files go, and whether to overwrite.
    #[command(flatten)]
    pub output: OutputOptions,
    /// Validity in days.
    #[arg(long, default_value_t = 825)]
    pub days: u32,
}

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A cluster or holder name is not valid.
    #[error("invalid name: {0}")]
    Name(#[from] IdentityError),
    /// A SAN is not valid.
    #[error("invalid subject alternative name {san:?}: {reason}")]
    San {
        /// The SAN as given.
        san: String,
        /// Why.
        reason: String,
    },
    /// A validity period is not usable.
    #[error("invalid validity: {reason}")]
    Validity {
        /// Why.
        reason: String,
    },
    /// A target file exists and `--force` was not given.
    #[error("{} already exists; pass --force to overwrite", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The CA files are not usable.
    #[error("ca {what}: {reason}")]
    Ca {
        /// Which CA file or property.
        what: String,
        /// Why.
        reason: String,
    },
    /// The CA key file is accessible by group or others (refused as ssh refuses such keys).
    #[error("{0}")]
    KeyTooOpen(#[from] CertProblem),
    /// rcgen refused to make a key or certificate.
    #[error("generating {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
}

fn generate_error(what: &'static str) -> impl Fn(rcgen::Error) -> CertsError {
    move |source| CertsError::Generate { what, source }
}

/// A cluster CA: its certificate and the key that signs leaves.
pub struct CaBundle {
    cluster: String,
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("CaBundle")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl CaBundle {
    /// The cluster this CA issues identities for.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Loads `ca.pem` and `ca.key` from `dir`; refuses a `ca.key` that group or others may
    /// access.
    pub fn load(dir: &Path) -> Result<Self, CertsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| CertsError::Io {
                action: "read",
                path,
                source,
            })
        };
        let (cert_pem, key_pem) = (read(CA_CERT_FILE)?, read(CA_KEY_FILE)?);
        check_key_permissions(&dir.join(CA_KEY_FILE))?;
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// Builds a CA from its PEM files' contents. The cluster is read from the certificate's
    /// subject, and the key must be the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertsError> {
        let bad = |what: &str, reason: String| CertsError::Ca {
            what: what.to_owned(),
            reason,
        };
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| bad(CA_KEY_FILE, format!("not a usable private key: {e}")))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| bad(CA_CERT_FILE, format!("not PEM: {e}")))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| bad(CA_CERT_FILE, format!("not a certificate: {e}")))?;
        let cluster = cert
            .subject()
            .iter_organization()
            .next()
            .and_then(|attribute| attribute.as_str().ok())
            .ok_or_else(|| {
                bad(
                    CA_CERT_FILE,
                    "subject names no cluster (organisation)".to_owned(),
                )
            })?
            .to_owned();
        Identity::new(&cluster, Role::Admin, "check")?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(bad(
                CA_KEY_FILE,
                format!("does not belong to {CA_CERT_FILE}"),
            ));
        }
        Ok(Self {
            cluster,
            cert_pem: cert_pem.to_owned(),
            key,
        })
    }

    /// The signer of leaves. Its subject is rebuilt from the cluster name exactly as
    /// [`generate_ca_valid`] wrote it; [`issue`] checks that the result chains by name.
    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::new(ca_params(&self.cluster), &self.key)
    }
}

/// Parameters of a cluster CA; the subject depends on the cluster name only.
fn ca_params(cluster: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("Sluice cluster CA {cluster}"));
    name.push(DnType::OrganizationName, cluster);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// The validity window `[now - 5 min, now + days]`. Reads the wall clock.
pub fn validity_days(days: u32) -> Result<(SystemTime, SystemTime), CertsError> {
    if days == 0 || days > DAYS_MAX {
        return Err(CertsError::Validity {
            reason: format!("--days must be 1 to {DAYS_MAX}, got {days}"),
        });
    }
    // Certificate validity is wall-clock time in the real world; this is the real environment.
    #[allow(clippy::disallowed_methods)]
    let now = SystemTime::now();
    let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
    let not_after = now + Duration::from_secs(u64::from(days) * 86_400);
    Ok((not_before, not_after))
}

fn set_validity(
    params: &mut CertificateParams,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(), CertsError> {
    if not_after <= not_before {
        return Err(CertsError::Validity {
            reason: "not_after must be later than not_before".to_owned(),
        });
    }
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let convert = |time: SystemTime| {
        let unrepresentable = || CertsError::Validity {
            reason: format!("{time:?} is not representable"),
        };
        let since = time
            .duration_since(UNIX_EPOCH)
            .map_err(|_| unrepresentable())?;
        epoch
            .checked_add(since.try_into().map_err(|_| unrepresentable())?)
            .ok_or_else(unrepresentable)
    };
    params.not_before = convert(not_before)?;
    params.not_after = convert(not_after)?;
    Ok(())
}

/// Creates a cluster CA valid for `days` from now.
pub fn generate_ca(cluster: &str, days: u32) -> Result<CaBundle, CertsError> {
    let (not_before, not_after) = validity_days(days)?;
    generate_ca_valid(cluster, not_before, not_after)
}

/// Creates a cluster CA valid from `not_before` to `not_after`.
pub fn generate_ca_valid(
    cluster: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CaBundle, CertsError> {
    Identity::new(cluster, Role::Admin, "check")?;
    let mut params = ca_params(cluster);
    set_validity(&mut params, not_before, not_after)?;
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate_error("ca key"))?;
    let cert = params
        .self_signed(&key)
        .map_err(generate_error("ca certificate"))?;
    Ok(CaBundle {
        cluster: cluster.to_owned(),
        cert_pem: cert.pem(),
        key,
    })
}

/// DNS and IP subject alternative names of a node certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sans {
    /// DNS names.
    pub dns: Vec<String>,
    /// IP addresses.
    pub ips: Vec<IpAddr>,
}

impl Sans {
    /// `localhost`, `127.0.0.1` and `::1`: what a node gets when no SAN is given.
    pub fn loopback() -> Self {
        Self {
            dns: vec!["localhost".to_owned()],
            ips: vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()],
        }
    }
}

/// A leaf certificate and its private key, PEM.
pub struct IssuedCert {
    /// The identity in the certificate.
    pub identity: Identity,
    /// The leaf certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("IssuedCert")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Issues a leaf certificate for `role`/`name` in the CA's cluster, valid from `not_before` to
/// `not_after` (either may be in the past or the future, for tests).
pub fn issue(
    ca: &CaBundle,
    role: Role,
    name: &str,
    sans: &Sans,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<IssuedCert, CertsError> {
    let identity = Identity::new(&ca.cluster, role, name)?;
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, identity.uri());
    subject.push(DnType::OrganizationName, ca.cluster.as_str());
    params.distinguished_name = subject;
    params.subject_alt_names = leaf_sans(&identity, sans)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Edge | Role::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, not_before, not_after)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(generate_error("leaf key"))?;
    let cert = params
        .signed_by(&key, &ca.issuer())
        .map_err(generate_error("leaf certificate"))?;
    check_chains_by_name(ca, cert.der())?;
    Ok(IssuedCert {
        identity,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn leaf_sans(identity: &Identity, sans: &Sans) -> Result<Vec<SanType>, CertsError> {
    let ia5 = |san: &str| {
        san.try_into().map_err(|e: rcgen::Error| CertsError::San {
            san: san.to_owned(),
            reason: e.to_string(),
        })
    };
    let mut out = vec![SanType::URI(ia5(&identity.uri())?)];
    for name in &sans.dns {
        if name.is_empty() {
            return Err(CertsError::San {
                san: name.clone(),
                reason: "empty dns name".to_owned(),
            });
        }
        out.push(SanType::DnsName(ia5(name)?));
    }
    out.extend(sans.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    Ok(out)
}

/// Checks that the leaf's issuer is byte for byte the CA's subject, which chain building needs.
fn check_chains_by_name(ca: &CaBundle, leaf_der: &[u8]) -> Result<(), CertsError> {
    let bad = |reason: String| CertsError::Ca {
        what: CA_CERT_FILE.to_owned(),
        reason,
    };
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der)
        .map_err(|e| bad(format!("issued leaf unreadable: {e}")))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes())
        .map_err(|e| bad(format!("not PEM: {e}")))?;
    let ca_cert = pem
        .parse_x509()
        .map_err(|e| bad(format!("not a certificate: {e}")))?;
    if leaf.issuer().as_raw() != ca_cert.subject().as_raw() {
        return Err(bad(
            "subject was not written by `sluice certs init`; leaves would not chain to it"
                .to_owned(),
        ));
    }
    Ok(())
}

/// The file stem of a leaf: `node-<id>`, `edge-<id>`, `admin-<name>`.
pub fn file_stem(role: Role, name: &str) -> String {
    format!("{role}-{name}")
}

/// Runs a `sluice certs` subcommand, printing the paths it wrote.
pub fn run(command: &CertsCommand) -> anyhow::Result<()> {
    let written = match command {
        CertsCommand::Init {
            cluster,
            output,
            days,
        } => {
            let paths = targets(&output.dir, CA_CERT_FILE, CA_KEY_FILE);
            check_free(&paths, output.force)?;
            let ca = generate_ca(cluster, *days)?;
            write_pair(
                &output.dir,
                &paths,
                ca.cert_pem(),
                &ca.key_pem(),
                output.force,
            )?
        }
        CertsCommand::Node { id, ips, dns, leaf } => {
            let sans = if ips.is_empty() && dns.is_empty() {
                Sans::loopback()
            } else {
                Sans {
                    dns: dns.clone(),
                    ips: ips.clone(),
                }
            };
            issue_files(leaf, Role::Node, id, &sans)?
        }
        CertsCommand::Edge { id, leaf } => issue_files(leaf, Role::Edge, id, &Sans::default())?,
        CertsCommand::Admin { name, leaf } => {
            issue_files(leaf, Role::Admin, name, &Sans::default())?
        }
    };
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The certificate and key paths in `dir`.
fn targets(dir: &Path, cert: &str, key: &str) -> [PathBuf; 2] {
    [dir.join(cert), dir.join(key)]
}

fn issue_files(
    leaf: &LeafOptions,
    role: Role,
    name: &str,
    sans: &Sans,
) -> Result<Vec<PathBuf>, CertsError> {
    let dir = &leaf.output.dir;
    let stem = file_stem(role, name);
    let paths = targets(dir, &format!("{stem}.pem"), &format!("{stem}.key"));
    check_free(&paths, leaf.output.force)?;
    let ca = CaBundle::load(dir)?;
    let (not_before, not_after) = validity_days(leaf.days)?;
    let issued = issue(&ca, role, name, sans, not_before, not_after)?;
    write_pair(
        dir,
        &paths,
        &issued.cert_pem,
        &issued.key_pem,
        leaf.output.force,
    )
}

/// Refuses when any target exists and `force` is not set, before anything is written.
fn check_free(paths: &[PathBuf], force: bool) -> Result<(), CertsError> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|path| path.symlink_metadata().is_ok()) {
        Some(path) => Err(CertsError::Exists { path: path.clone() }),
        None => Ok(()),
    }
}

/// Writes the key (0600) and then the certificate (0644); returns the paths written.
fn write_pair(
    dir: &Path,
    paths: &[PathBuf; 2],
    cert_pem: &str,
    key_pem: &str,
    force: bool,
) -> Result<Vec<PathBuf>, CertsError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CertsError::Io {
            action: "create directory",
            path: dir.to_owned(),
            source,
        })?;
    let [cert_path, key_path] = paths;
    write_file(key_path, key_pem, 0o600, force)?;
    write_file(cert_path, cert_pem, 0o644, force)?;
    Ok(vec![cert_path.clone(), key_path.clone()])
}

/// Writes a file with `mode`: created new unless `force`; an overwritten file gets `mode` too,
/// before any content is written.
fn write_file(path: &Path, contents: &str, mode: u32, force: bool) -> Result<(), CertsError> {
    let io = |action| {
        move |source| CertsError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let mut options = OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => CertsError::Exists {
            path: path.to_owned(),
        },
        _ => CertsError::Io {
            action: "create",
            path: path.to_owned(),
            source,
        },
    })?;
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(io("set permissions of"))?;
    file.write_all(contents.as_bytes()).map_err(io("write"))?;
    file.sync_all().map_err(io("sync"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::msg::{Message, MetadataResponse};
    use sluice_proto::net::{self, Client, ClientSettings, Handler, ServerLimits, TlsMaterial};
    use sluice_proto::StreamName;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use x509_parser::extensions::GeneralName;

    fn output(dir: &Path, force: bool) -> OutputOptions {
        OutputOptions {
            dir: dir.to_owned(),
            force,
        }
    }

    fn init(dir: &Path, force: bool) -> anyhow::Result<()> {
        run(&CertsCommand::Init {
            cluster: "prod".to_owned(),
            output: output(dir, force),
            days: 3650,
        })
    }

    fn leaf(dir: &Path, force: bool) -> LeafOptions {
        LeafOptions {
            output: output(dir, force),
            days: 825,
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    /// What a certificate file says: its URI SANs, DNS SANs, IP SANs, (server, client) EKUs.
    fn inspect(path: &Path) -> (Vec<String>, Vec<String>, Vec<IpAddr>, (bool, bool)) {
        let pem_text = read(path);
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let (mut uris, mut dns, mut ips) = (vec![], vec![], vec![]);
        for name in &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
        {
            match name {
                GeneralName::URI(uri) => uris.push(uri.to_string()),
                GeneralName::DNSName(name) => dns.push(name.to_string()),
                GeneralName::IPAddress(bytes) => ips.push(match bytes.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap()),
                    _ => IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap()),
                }),
                other => panic!("unexpected SAN {other:?}"),
            }
        }
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        (uris, dns, ips, (eku.server_auth, eku.client_auth))
    }

    #[test]
    fn init_writes_ca_files_with_a_private_key_mode() {
        // Checks that init creates ca.pem (0644) and ca.key (0600) in a new directory, and that
        // the cluster name is read back from ca.pem.
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("certs");
        init(&dir, false).unwrap();
        assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.join(CA_CERT_FILE)), 0o644);
        assert_eq!(CaBundle::load(&dir).unwrap().cluster(), "prod");
    }

    #[test]
    fn a_ca_key_others_can_read_is_refused() {
        // Checks that issuing with a ca.key of mode 0644 or 0640 is refused as ssh refuses an
        // open key ("are too open", naming the file) and writes nothing; 0600 works again.
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        init(dir, false).unwrap();
        let key = dir.join(CA_KEY_FILE);
        for mode in [0o644, 0o640] {
            std::fs::set_permissions(&key, Permissions::from_mode(mode)).unwrap();
            let error = run(&CertsCommand::Edge {
                id: "pi".to_owned(),
                leaf: leaf(dir, false),
            })
            .unwrap_err()
            .to_string();
            assert!(error.contains("are too open"), "{error}");
            assert!(error.contains(&key.display().to_string()), "{error}");
            assert!(!dir.join("edge-pi.pem").exists());
            assert!(!dir.join("edge-pi.key").exists());
        }
        std::fs::set_permissions(&key, Permissions::from_mode(0o600)).unwrap();
        run(&CertsCommand::Edge {
            id: "pi".to_owned(),
            leaf: leaf(dir, false),
        })
        .unwrap();
    }

    #[test]
    fn existing_files_are_kept_without_force_and_replaced_with_it() {
        // Checks that init and leaf commands refuse to overwrite, naming the file and --force,
        // write nothing when any target exists, and that --force replaces files keeping 0600.
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        init(dir, false).unwrap();
        let ca_key = read(&dir.join(CA_KEY_FILE));
        let error = init(dir, false).unwrap_err().to_string();
        assert!(
            error.contains("ca.pem already exists") && error.contains("--force"),
            "{error}"
        );
        assert_eq!(read(&dir.join(CA_KEY_FILE)), ca_key);

        std::fs::write(dir.join("edge-pi.key"), "old").unwrap();
        let edge = CertsCommand::Edge {
            id: "pi".to_owned(),
            leaf: leaf(dir, false),
        };
        let error = run(&edge).unwrap_err().to_string();
        assert!(error.contains("edge-pi.key already exists"), "{error}");
        assert!(!dir.join("edge-pi.pem").exists());
        std::fs::set_permissions(dir.join("edge-pi.key"), Permissions::from_mode(0o644)).unwrap();
        run(&CertsCommand::Edge {
            id: "pi".to_owned(),
            leaf: leaf(dir, true),
        })
        .unwrap();
        assert_ne!(read(&dir.join("edge-pi.key")), "old");
        assert_eq!(mode(&dir.join("edge-pi.key")), 0o600);

        init(dir, true).unwrap();
        assert_ne!(read(&dir.join(CA_KEY_FILE)), ca_key);
        assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
    }

    #[test]
    fn leaves_carry_their_identity_sans_and_usages() {
        // Checks the URI SAN, DNS/IP SANs and EKUs of node (default and explicit SANs), edge and
        // admin certificates, parsed back with x509-parser.
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        init(dir, false).unwrap();
        let node = |id: &str, ips: Vec<IpAddr>, dns: Vec<String>| CertsCommand::Node {
            id: id.to_owned(),
            ips,
            dns,
            leaf: leaf(dir, false),
        };
        run(&node("1", vec![], vec![])).unwrap();
        run(&node(
            "2",
            vec!["10.0.0.2".parse().unwrap()],
            vec!["n2.example".to_owned()],
        ))
        .unwrap();
        run(&CertsCommand::Edge {
            id: "pi-01".to_owned(),
            leaf: leaf(dir, false),
        })
        .unwrap();
        run(&CertsCommand::Admin {
            name: "ops".to_owned(),
            leaf: leaf(dir, false),
        })
        .unwrap();
        let loopback = Sans::loopback();
        let check = |file: &str, uri: &str, dns: &[String], ips: &[IpAddr], server_auth: bool| {
            let expected = (
                vec![uri.to_owned()],
                dns.to_vec(),
                ips.to_vec(),
                (server_auth, true),
            );
            assert_eq!(inspect(&dir.join(file)), expected, "{file}");
            assert_eq!(
                mode(&dir.join(file.replace(".pem", ".key"))),
                0o600,
                "{file}"
            );
        };
        check(
            "node-1.pem",
            "sluice://prod/node/1",
            &loopback.dns,
            &loopback.ips,
            true,
        );
        check(
            "node-2.pem",
            "sluice://prod/node/2",
            &["n2.example".to_owned()],
            &["10.0.0.2".parse().unwrap()],
            true,
        );
        check(
            "edge-pi-01.pem",
            "sluice://prod/edge/pi-01",
            &[],
            &[],
            false,
        );
        check("admin-ops.pem", "sluice://prod/admin/ops", &[], &[], false);
    }

    #[test]
    fn bad_names_and_validity_are_refused() {
        // Checks that invalid cluster and holder names, a zero validity and an inverted window
        // are typed errors, and that a leaf without a CA names the missing file.
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let error = run(&CertsCommand::Edge {
            id: "pi".to_owned(),
            leaf: leaf(dir, false),
        })
        .unwrap_err();
        assert!(error.to_string().contains("ca.pem"), "{error}");
        assert!(matches!(
            generate_ca("bad cluster", 1),
            Err(CertsError::Name(_))
        ));
        assert!(matches!(
            generate_ca("prod", 0),
            Err(CertsError::Validity { .. })
        ));
        let ca = generate_ca("prod", 1).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(matches!(
            issue(
                &ca,
                Role::Edge,
                "a/b",
                &Sans::default(),
                now,
                now + BACKDATE
            ),
            Err(CertsError::Name(_))
        ));
        assert!(matches!(
            issue(&ca, Role::Edge, "a", &Sans::default(), now, now),
            Err(CertsError::Validity { .. })
        ));
    }

    /// Answers every request with a one-partition metadata response.
    struct OnePartition;

    impl Handler for OnePartition {
        fn handle(
            &self,
            _peer: Arc<Identity>,
            request: Message,
        ) -> Pin<Box<dyn Future<Output = Message> + Send + 'static>> {
            let response = MetadataResponse {
                request_id: request.request_id(),
                stream: StreamName::new("s").unwrap(),
                n_partitions: 1,
            };
            Box::pin(async move { Message::MetadataResponse(response) })
        }
    }

    fn material(ca: &CaBundle, issued: &IssuedCert) -> TlsMaterial {
        TlsMaterial::from_pem(
            ca.cert_pem().as_bytes(),
            issued.cert_pem.as_bytes(),
            issued.key_pem.as_bytes(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn issued_certificates_work_with_the_net_layer() {
        // Checks end to end on loopback that a node certificate and an edge certificate from
        // this module complete mutual TLS and a request, and that an expired edge certificate
        // made by `issue` is refused. Every wait has a deadline.
        let ca = generate_ca("prod", 1).unwrap();
        let (from, until) = validity_days(1).unwrap();
        let node = issue(&ca, Role::Node, "1", &Sans::loopback(), from, until).unwrap();
        let limits = ServerLimits::default();
        let config = net::server_config(&material(&ca, &node), "prod", &limits).unwrap();
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap().to_string();
        let (_shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(net::serve(
            endpoint,
            "prod".to_owned(),
            vec![Role::Edge],
            Arc::new(OnePartition),
            limits,
            shutdown_rx,
        ));

        let deadline = Duration::from_secs(20);
        let edge = issue(&ca, Role::Edge, "pi", &Sans::default(), from, until).unwrap();
        let settings = ClientSettings::new(material(&ca, &edge), "prod", vec![addr.clone()]);
        let client = tokio::time::timeout(deadline, Client::connect(&settings))
            .await
            .unwrap()
            .unwrap();
        let stream = StreamName::new("s").unwrap();
        let response = tokio::time::timeout(deadline, client.metadata(stream.clone()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.n_partitions, 1);

        let past = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let expired = issue(
            &ca,
            Role::Edge,
            "old",
            &Sans::default(),
            past,
            past + BACKDATE,
        )
        .unwrap();
        let settings = ClientSettings::new(material(&ca, &expired), "prod", vec![addr]);
        let outcome = tokio::time::timeout(deadline, async {
            let client = Client::connect(&settings).await?;
            client.metadata(stream).await
        })
        .await
        .unwrap();
        let error = outcome.unwrap_err().to_string();
        assert!(error.contains("expired"), "{error}");
    }
}
