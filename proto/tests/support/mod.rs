//! Certificates for proto's integration tests (`certcheck.rs`, `net_mtls.rs`), made with rcgen:
//! CAs and leaves of any identity, valid now, expired or not yet valid. One copy here, so both
//! files test with the same certificates.
// Each test file uses part of this module.
#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use sluice_proto::Identity;

/// A CA: what it needs to issue, and its certificate.
pub(crate) struct Ca {
    pub(crate) params: CertificateParams,
    pub(crate) key: KeyPair,
    /// The CA certificate, PEM.
    pub(crate) pem: String,
}

/// A CA named `name`; two CAs of one name differ only by key, like two clusters both
/// initialised with the same cluster name.
pub(crate) fn ca_named(name: &str) -> Ca {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { params, key, pem }
}

/// A CA named `test ca`.
pub(crate) fn ca() -> Ca {
    ca_named("test ca")
}

/// Validity windows of test certificates: 2020 to 2200, 2001 to 2002, 2300 to 2301.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Validity {
    Now,
    Expired,
    NotYetValid,
}

/// A leaf of `identity` issued by `issuer`, with loopback SANs (`localhost`, `127.0.0.1`) and
/// both EKUs, so it serves as a client or a server: (certificate PEM, key PEM).
pub(crate) fn leaf_pem(issuer: &Ca, identity: &Identity, validity: Validity) -> (String, String) {
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::URI(identity.uri().try_into().unwrap()));
    params
        .distinguished_name
        .push(DnType::CommonName, identity.name.as_str());
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let (from, until) = match validity {
        Validity::Now => ((2020, 1, 1), (2200, 1, 1)),
        Validity::Expired => ((2001, 1, 1), (2002, 1, 1)),
        Validity::NotYetValid => ((2300, 1, 1), (2301, 1, 1)),
    };
    params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
    let key = KeyPair::generate().unwrap();
    let cert = params
        .signed_by(&key, &Issuer::from_params(&issuer.params, &issuer.key))
        .unwrap();
    (cert.pem(), key.serialize_pem())
}
