//! `certcheck::load_checked` on real files written here (rcgen certificates: valid, expired, not
//! yet valid, from a foreign CA, of the wrong identity; keys with open permissions, of another
//! certificate, or missing).
#![cfg(feature = "net")]

mod support;

use sluice_proto::certcheck::{
    check_key_permissions, load_checked, CertProblem, CertProblems, ExpectedIdentity, TlsFiles,
};
use sluice_proto::{Identity, Role, UnixMillis};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use support::{ca, leaf_pem, Validity};

/// 2026-01-01T00:00:00Z: inside the validity of `Validity::Now` certificates.
const NOW: UnixMillis = UnixMillis(1_767_225_600_000);

struct Files {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn tls(&self) -> TlsFiles<'_> {
        TlsFiles {
            ca_cert: &self.ca,
            cert: &self.cert,
            key: &self.key,
        }
    }
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes `ca.pem`, `leaf.pem` and `leaf.key` (0600).
fn files(ca_pem: &str, leaf: &(String, String)) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let files = Files {
        ca: dir.path().join("ca.pem"),
        cert: dir.path().join("leaf.pem"),
        key: dir.path().join("leaf.key"),
        _dir: dir,
    };
    write(&files.ca, ca_pem, 0o644);
    write(&files.cert, &leaf.0, 0o644);
    write(&files.key, &leaf.1, 0o600);
    files
}

fn edge_of(cluster: &str) -> ExpectedIdentity {
    ExpectedIdentity {
        cluster: cluster.to_owned(),
        role: Role::Edge,
        name: None,
    }
}

fn identity(role: Role, name: &str) -> Identity {
    Identity::new("prod", role, name).unwrap()
}

fn problems(files: &Files, expected: &ExpectedIdentity) -> Vec<CertProblem> {
    match load_checked(files.tls(), expected, NOW) {
        Ok(_) => panic!("accepted"),
        Err(CertProblems(problems)) => problems,
    }
}

#[test]
fn good_files_load() {
    // Checks that a valid edge certificate, its 0600 key and its CA load, and that a node's
    // certificate loads where that node (cluster, role and name) is expected.
    let ca = ca();
    let edge = files(
        &ca.pem,
        &leaf_pem(&ca, &identity(Role::Edge, "pi"), Validity::Now),
    );
    let material = load_checked(edge.tls(), &edge_of("prod"), NOW).unwrap();
    assert_eq!(material.identity().unwrap(), identity(Role::Edge, "pi"));
    let node = files(
        &ca.pem,
        &leaf_pem(&ca, &identity(Role::Node, "3"), Validity::Now),
    );
    let expected = ExpectedIdentity {
        cluster: "prod".to_owned(),
        role: Role::Node,
        name: Some("3".to_owned()),
    };
    assert!(load_checked(node.tls(), &expected, NOW).is_ok());
}

#[test]
fn missing_and_garbage_files_are_each_named() {
    // Checks that three missing files give three problems naming each file, and that files
    // holding no PEM give one problem per file.
    let dir = tempfile::tempdir().unwrap();
    let missing = Files {
        ca: dir.path().join("no-ca.pem"),
        cert: dir.path().join("no-leaf.pem"),
        key: dir.path().join("no-leaf.key"),
        _dir: tempfile::tempdir().unwrap(),
    };
    let found = problems(&missing, &edge_of("prod"));
    assert_eq!(found.len(), 3, "{found:#?}");
    for (problem, file) in found
        .iter()
        .zip(["no-ca.pem", "no-leaf.pem", "no-leaf.key"])
    {
        assert!(
            matches!(problem, CertProblem::Unreadable { .. }),
            "{problem:?}"
        );
        assert!(problem.to_string().contains(file), "{problem}");
    }
    let garbage = files("not pem", &("not pem".to_owned(), "not pem".to_owned()));
    let found = problems(&garbage, &edge_of("prod"));
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found
        .iter()
        .all(|p| matches!(p, CertProblem::Malformed { .. })));
}

#[test]
fn a_key_readable_by_others_is_too_open() {
    // Checks the ssh-style permission rule: 0640, 0644 and 0604 keys are refused with "are too
    // open" naming the file; 0600 and 0400 are fine.
    let ca = ca();
    let good = files(
        &ca.pem,
        &leaf_pem(&ca, &identity(Role::Edge, "pi"), Validity::Now),
    );
    for mode in [0o640, 0o644, 0o604] {
        std::fs::set_permissions(&good.key, std::fs::Permissions::from_mode(mode)).unwrap();
        let found = problems(&good, &edge_of("prod"));
        assert_eq!(found.len(), 1, "{found:#?}");
        let text = found[0].to_string();
        assert!(text.contains(&format!("permissions {mode:04o}")), "{text}");
        assert!(text.contains("are too open"), "{text}");
        assert!(text.contains(&good.key.display().to_string()), "{text}");
    }
    for mode in [0o600, 0o400] {
        std::fs::set_permissions(&good.key, std::fs::Permissions::from_mode(mode)).unwrap();
        assert!(check_key_permissions(&good.key).is_ok());
    }
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    // Checks that a key that is not the certificate's is named together with the certificate.
    let ca = ca();
    let mine = leaf_pem(&ca, &identity(Role::Edge, "pi"), Validity::Now);
    let other = leaf_pem(&ca, &identity(Role::Edge, "pi"), Validity::Now);
    let swapped = files(&ca.pem, &(mine.0, other.1));
    let found = problems(&swapped, &edge_of("prod"));
    assert_eq!(
        found,
        vec![CertProblem::KeyMismatch {
            cert: swapped.cert.clone(),
            key: swapped.key.clone(),
        }]
    );
}

#[test]
fn a_certificate_of_another_ca_or_outside_its_validity_is_refused() {
    // Checks that a leaf the configured CA did not sign is refused naming both files, and that
    // expired and not yet valid leaves are told apart.
    let ca = ca();
    let foreign = self::ca();
    let lost = files(
        &ca.pem,
        &leaf_pem(&foreign, &identity(Role::Edge, "pi"), Validity::Now),
    );
    let found = problems(&lost, &edge_of("prod"));
    assert!(
        matches!(&found[..], [CertProblem::NotSignedByCa { cert, ca, .. }]
            if *cert == lost.cert && *ca == lost.ca),
        "{found:#?}"
    );
    let text = found[0].to_string();
    assert!(
        text.contains("leaf.pem") && text.contains("ca.pem"),
        "{text}"
    );
    let old = files(
        &ca.pem,
        &leaf_pem(&ca, &identity(Role::Edge, "pi"), Validity::Expired),
    );
    assert!(matches!(
        &problems(&old, &edge_of("prod"))[..],
        [CertProblem::Expired { .. }]
    ));
    let early = files(
        &ca.pem,
        &leaf_pem(&ca, &identity(Role::Edge, "pi"), Validity::NotYetValid),
    );
    assert!(matches!(
        &problems(&early, &edge_of("prod"))[..],
        [CertProblem::NotYetValid { .. }]
    ));
}

#[test]
fn a_certificate_of_another_identity_is_refused_with_every_other_problem() {
    // Checks that an admin certificate where an edge is expected, one of another cluster, and
    // a node of another id are each refused naming found and expected identities, and that
    // problems add up: a wrong role with a too-open key gives both.
    let ca = ca();
    let admin = files(
        &ca.pem,
        &leaf_pem(&ca, &identity(Role::Admin, "ops"), Validity::Now),
    );
    let found = problems(&admin, &edge_of("prod"));
    let text = found[0].to_string();
    assert!(
        text.contains("is sluice://prod/admin/ops, but this must be sluice://prod/edge/<name>"),
        "{text}"
    );
    assert!(matches!(
        &problems(&admin, &edge_of("staging"))[..],
        [CertProblem::WrongIdentity { .. }]
    ));
    let node = files(
        &ca.pem,
        &leaf_pem(&ca, &identity(Role::Node, "3"), Validity::Now),
    );
    let node_4 = ExpectedIdentity {
        cluster: "prod".to_owned(),
        role: Role::Node,
        name: Some("4".to_owned()),
    };
    assert!(matches!(
        &problems(&node, &node_4)[..],
        [CertProblem::WrongIdentity { .. }]
    ));
    std::fs::set_permissions(&admin.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let found = problems(&admin, &edge_of("prod"));
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found
        .iter()
        .any(|p| matches!(p, CertProblem::KeyTooOpen { .. })));
    assert!(found
        .iter()
        .any(|p| matches!(p, CertProblem::WrongIdentity { .. })));
}
