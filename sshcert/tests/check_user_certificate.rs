//! Every rule of [`check_user_certificate`], each by a refused certificate and
//! an accepted control that differs from it in that one property, so each test
//! fails if its check is removed. Certificates are built here with ssh-key's
//! `Builder`, signed by Ed25519 and P-256 CAs.

// Tests may panic: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::net::IpAddr;

use common::*;
use portcullis_sshcert::{CheckContext, Krl, KrlBuilder, Rejection, check_user_certificate};
use ssh_key::certificate::{Builder, CertType};
use ssh_key::public::KeyData;
use ssh_key::{Certificate, PrivateKey};

const NOW: u64 = 1_700_000_000;
const SKEW: u64 = 60;
const VALID_AFTER: u64 = NOW - 3600;
const VALID_BEFORE: u64 = NOW + 3600;

/// One certificate's contents; tests change one field from [`Spec::good`].
#[derive(Clone)]
struct Spec<'a> {
    ca: &'a PrivateKey,
    user: &'a PrivateKey,
    cert_type: CertType,
    valid_after: u64,
    valid_before: u64,
    principals: Vec<&'a str>,
    critical: Vec<(&'a str, &'a str)>,
    extensions: Vec<(&'a str, &'a str)>,
    serial: u64,
    key_id: &'a str,
}

impl<'a> Spec<'a> {
    fn good(ca: &'a PrivateKey, user: &'a PrivateKey) -> Self {
        Self {
            ca,
            user,
            cert_type: CertType::User,
            valid_after: VALID_AFTER,
            valid_before: VALID_BEFORE,
            principals: vec!["alice"],
            critical: vec![],
            extensions: vec![("permit-pty", "")],
            serial: 1234,
            key_id: "alice@laptop",
        }
    }

    fn build(&self) -> Certificate {
        let key = self.user.public_key().key_data().clone();
        let mut b = Builder::new(vec![7u8; 16], key, self.valid_after, self.valid_before).unwrap();
        b.cert_type(self.cert_type).unwrap();
        b.serial(self.serial).unwrap();
        b.key_id(self.key_id).unwrap();
        if self.principals.is_empty() {
            b.all_principals_valid().unwrap();
        }
        for p in &self.principals {
            b.valid_principal(*p).unwrap();
        }
        for (name, data) in &self.critical {
            b.critical_option(*name, *data).unwrap();
        }
        for (name, data) in &self.extensions {
            b.extension(*name, *data).unwrap();
        }
        b.sign(self.ca).unwrap()
    }
}

struct Fixture {
    ca_ed25519: PrivateKey,
    ca_p256: PrivateKey,
    untrusted: PrivateKey,
    user: PrivateKey,
    trusted: Vec<KeyData>,
}

impl Fixture {
    fn new() -> Self {
        let (ca_ed25519, ca_p256) = (ed25519_key(), p256_key());
        let trusted = vec![ca_ed25519.public_key().key_data().clone(), ca_p256.public_key().key_data().clone()];
        Self { ca_ed25519, ca_p256, untrusted: ed25519_key(), user: ed25519_key(), trusted }
    }

    fn good(&self) -> Spec<'_> {
        Spec::good(&self.ca_ed25519, &self.user)
    }

    fn ctx(&self) -> CheckContext<'_> {
        CheckContext {
            trusted_cas: &self.trusted,
            now_unix: NOW,
            max_clock_skew_secs: SKEW,
            acceptable_principals: &["alice"],
            client_ip: ip("192.0.2.10"),
            krl: None,
        }
    }

    fn check(&self, spec: &Spec<'_>) -> Result<portcullis_sshcert::AcceptedCert, Rejection> {
        check_user_certificate(&spec.build(), &self.ctx())
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Replaces the only occurrence of `from` in the certificate's wire encoding.
fn tamper(cert: &Certificate, from: &[u8], to: &[u8]) -> Certificate {
    assert_eq!(from.len(), to.len());
    let mut bytes = cert.to_bytes().unwrap();
    let hits: Vec<usize> = bytes.windows(from.len()).enumerate().filter(|(_, w)| *w == from).map(|(i, _)| i).collect();
    assert_eq!(hits.len(), 1, "pattern must occur exactly once");
    bytes[hits[0]..hits[0] + from.len()].copy_from_slice(to);
    Certificate::from_bytes(&bytes).unwrap()
}

fn assert_refused(result: Result<portcullis_sshcert::AcceptedCert, Rejection>, expected: Rejection) {
    let err = result.expect_err("certificate was accepted");
    assert_eq!(err, expected);
}

#[test]
fn good_certificates_from_each_trusted_ca_are_accepted() {
    let fx = Fixture::new();
    for ca in [&fx.ca_ed25519, &fx.ca_p256] {
        let mut spec = Spec::good(ca, &fx.user);
        spec.principals = vec!["bob", "alice"];
        spec.critical = vec![("force-command", "/usr/bin/true"), ("verify-required", "")];
        spec.extensions = vec![("permit-pty", ""), ("unknown-extension@example.org", "x")];
        let ok = fx.check(&spec).unwrap();
        assert_eq!(ok.key_id(), "alice@laptop");
        assert_eq!(ok.serial(), 1234);
        assert_eq!(ok.principals(), ["bob", "alice"]);
        assert_eq!(ok.matched_principal(), "alice");
        assert_eq!(ok.force_command(), Some("/usr/bin/true"));
        assert!(ok.verify_required());
        assert!(ok.has_extension("permit-pty"));
        assert!(!ok.has_extension("permit-port-forwarding"));
        assert_eq!(ok.extensions().len(), 2);
        assert_eq!(ok.valid_before(), VALID_BEFORE);
        assert_eq!(ok.ca_fingerprint(), portcullis_sshcert::fingerprint(ca.public_key().key_data()));
    }
    let plain = fx.check(&fx.good()).unwrap();
    assert_eq!((plain.force_command(), plain.verify_required()), (None, false));
}

#[test]
fn certificate_from_an_untrusted_ca_is_refused() {
    let fx = Fixture::new();
    for untrusted in [&fx.untrusted, &p256_key()] {
        assert_refused(fx.check(&Spec::good(untrusted, &fx.user)), Rejection::UntrustedCa);
    }
    fx.check(&fx.good()).unwrap();
}

#[test]
fn rotated_ca_keys_are_both_trusted_and_a_retired_one_is_not() {
    let fx = Fixture::new();
    let (old, new) = (ed25519_key(), p256_key());
    let (old_cert, new_cert) = (Spec::good(&old, &fx.user).build(), Spec::good(&new, &fx.user).build());
    let both = [old.public_key().key_data().clone(), new.public_key().key_data().clone()];
    let ctx = CheckContext { trusted_cas: &both, ..fx.ctx() };
    check_user_certificate(&old_cert, &ctx).unwrap();
    check_user_certificate(&new_cert, &ctx).unwrap();
    let ctx = CheckContext { trusted_cas: &both[1..], ..fx.ctx() };
    assert_refused(check_user_certificate(&old_cert, &ctx), Rejection::UntrustedCa);
    check_user_certificate(&new_cert, &ctx).unwrap();
    let ctx = CheckContext { trusted_cas: &[], ..fx.ctx() };
    assert_refused(check_user_certificate(&new_cert, &ctx), Rejection::UntrustedCa);
}

#[test]
fn tampered_certificate_is_refused_for_its_signature() {
    let fx = Fixture::new();
    let good = fx.good().build();
    check_user_certificate(&good, &fx.ctx()).unwrap();
    // A changed key ID, still "signed" by the trusted CA.
    let forged = tamper(&good, b"alice@laptop", b"alice@laptoq");
    assert_eq!(forged.key_id(), "alice@laptoq");
    assert_refused(check_user_certificate(&forged, &fx.ctx()), Rejection::BadSignature);
    // Signature check comes first: an expired forgery is reported as forged.
    let late = CheckContext { now_unix: VALID_BEFORE + 10 * SKEW, ..fx.ctx() };
    assert_refused(check_user_certificate(&forged, &late), Rejection::BadSignature);
}

#[test]
fn certificate_relabelled_with_a_trusted_ca_key_is_refused() {
    let fx = Fixture::new();
    // Signed by an untrusted Ed25519 key, then its signature key swapped for
    // the trusted Ed25519 CA's (same length): only the signature catches it.
    let cert = Spec::good(&fx.untrusted, &fx.user).build();
    let (from, to) = (fx.untrusted.public_key().key_data(), fx.ca_ed25519.public_key().key_data());
    let from = ssh_key::encoding::Encode::encode_vec(from).unwrap();
    let to = ssh_key::encoding::Encode::encode_vec(to).unwrap();
    let relabelled = tamper(&cert, &from, &to);
    assert_eq!(relabelled.signature_key(), fx.ca_ed25519.public_key().key_data());
    assert_refused(check_user_certificate(&relabelled, &fx.ctx()), Rejection::BadSignature);
}

#[test]
fn empty_validity_window_is_refused() {
    let fx = Fixture::new();
    // Builder cannot sign an empty window, so shrink a good one on the wire.
    let good = fx.good().build();
    let window = [VALID_AFTER.to_be_bytes(), VALID_BEFORE.to_be_bytes()].concat();
    let empty = [VALID_AFTER.to_be_bytes(), VALID_AFTER.to_be_bytes()].concat();
    let cert = tamper(&good, &window, &empty);
    // Even with a clock skew that would cover it.
    let ctx = CheckContext { now_unix: VALID_AFTER, ..fx.ctx() };
    assert_refused(check_user_certificate(&cert, &ctx), Rejection::EmptyValidityWindow);
    check_user_certificate(&good, &ctx).unwrap();
}

#[test]
fn host_certificate_is_refused() {
    let fx = Fixture::new();
    for ca in [&fx.ca_ed25519, &fx.ca_p256] {
        let mut spec = Spec::good(ca, &fx.user);
        fx.check(&spec).unwrap();
        spec.cert_type = CertType::Host;
        assert_refused(fx.check(&spec), Rejection::NotUserCertificate);
    }
}

#[test]
fn validity_window_boundaries_with_skew() {
    let fx = Fixture::new();
    let cert = fx.good().build();
    let at = |now: u64, skew: u64| {
        let ctx = CheckContext { now_unix: now, max_clock_skew_secs: skew, ..fx.ctx() };
        check_user_certificate(&cert, &ctx)
    };
    // With skew: valid_after - skew <= now < valid_before + skew.
    at(VALID_AFTER - SKEW, SKEW).unwrap();
    assert_refused(at(VALID_AFTER - SKEW - 1, SKEW), Rejection::NotYetValid);
    at(VALID_BEFORE + SKEW - 1, SKEW).unwrap();
    assert_refused(at(VALID_BEFORE + SKEW, SKEW), Rejection::Expired);
    // Without skew the window is exactly the certificate's.
    at(VALID_AFTER, 0).unwrap();
    assert_refused(at(VALID_AFTER - 1, 0), Rejection::NotYetValid);
    at(VALID_BEFORE - 1, 0).unwrap();
    assert_refused(at(VALID_BEFORE, 0), Rejection::Expired);
    // Extremes saturate instead of wrapping.
    assert_refused(at(u64::MAX, u64::MAX), Rejection::Expired);
    assert_refused(at(0, 0), Rejection::NotYetValid);
}

#[test]
fn certificate_valid_forever_stays_valid() {
    let fx = Fixture::new();
    let mut spec = fx.good();
    (spec.valid_after, spec.valid_before) = (0, u64::MAX);
    let ctx = CheckContext { now_unix: u64::MAX - 1, max_clock_skew_secs: SKEW, ..fx.ctx() };
    check_user_certificate(&spec.build(), &ctx).unwrap();
}

#[test]
fn wrong_principal_is_refused() {
    let fx = Fixture::new();
    let mut spec = fx.good();
    spec.principals = vec!["bob", "alice2", "ALICE"];
    assert_refused(fx.check(&spec), Rejection::PrincipalMismatch);
    spec.principals = vec!["bob", "alice"];
    fx.check(&spec).unwrap();
    // The caller may accept several principals; none at all accepts nothing.
    let cert = spec.build();
    let several = CheckContext { acceptable_principals: &["root", "bob"], ..fx.ctx() };
    assert_eq!(check_user_certificate(&cert, &several).unwrap().matched_principal(), "bob");
    let none = CheckContext { acceptable_principals: &[], ..fx.ctx() };
    assert_refused(check_user_certificate(&cert, &none), Rejection::PrincipalMismatch);
}

#[test]
fn empty_principal_list_is_refused() {
    let fx = Fixture::new();
    let mut spec = fx.good();
    spec.principals = vec![];
    assert_refused(fx.check(&spec), Rejection::NoPrincipals);
    spec.principals = vec!["alice"];
    fx.check(&spec).unwrap();
}

#[test]
fn unknown_critical_option_is_refused_but_unknown_extension_is_not() {
    let fx = Fixture::new();
    let mut spec = fx.good();
    spec.critical = vec![("force-command", "id"), ("no-such-option@example.org", "")];
    let err = fx.check(&spec).unwrap_err();
    assert_eq!(err, Rejection::UnknownCriticalOption { name: "no-such-option@example.org".into() });
    assert_eq!(err.code(), "cert_unknown_critical_option");
    // A known name as an extension is fine, and so is an unknown extension.
    spec.critical = vec![("force-command", "id")];
    spec.extensions = vec![("no-such-option@example.org", ""), ("permit-pty", "")];
    fx.check(&spec).unwrap();
}

#[test]
fn source_address_is_honoured_for_ipv4_and_ipv6() {
    let fx = Fixture::new();
    let mut spec = fx.good();
    spec.critical = vec![("source-address", "198.51.100.0/24,192.0.2.10,2001:db8::/32")];
    let cert = spec.build();
    let from = |addr: &str| check_user_certificate(&cert, &CheckContext { client_ip: ip(addr), ..fx.ctx() });
    for inside in ["192.0.2.10", "198.51.100.200", "2001:db8::5", "2001:db8:ffff::1", "::ffff:192.0.2.10"] {
        from(inside).unwrap_or_else(|e| panic!("{inside}: {e}"));
    }
    for outside in ["192.0.2.11", "198.51.101.1", "2001:db9::5", "::1", "127.0.0.1", "::ffff:192.0.2.11"] {
        assert_refused(from(outside), Rejection::SourceAddressMismatch);
    }
}

#[test]
fn malformed_source_address_is_refused() {
    let fx = Fixture::new();
    let mut spec = fx.good();
    spec.critical = vec![("source-address", "192.0.2.0/24, 10.0.0.0/8")];
    assert_refused(fx.check(&spec), Rejection::MalformedSourceAddress);
    spec.critical = vec![("source-address", "192.0.2.0/24,10.0.0.0/8")];
    fx.check(&spec).unwrap();
    spec.critical = vec![("source-address", "")];
    assert_refused(fx.check(&spec), Rejection::MalformedSourceAddress);
}

fn krl(build: impl FnOnce(&mut KrlBuilder)) -> Krl {
    let mut builder = KrlBuilder::new(1, NOW, "");
    build(&mut builder);
    Krl::parse(&builder.encode()).unwrap()
}

#[test]
fn revoked_by_serial_is_refused() {
    let fx = Fixture::new();
    let cert = Spec::good(&fx.ca_p256, &fx.user).build();
    let ca = fx.ca_p256.public_key().key_data();
    let revoked = krl(|b| b.revoke_serial(ca, 1234));
    let other = krl(|b| b.revoke_serial(ca, 1235));
    let with = |k| check_user_certificate(&cert, &CheckContext { krl: Some(k), ..fx.ctx() });
    assert_refused(with(&revoked), Rejection::Revoked);
    with(&other).unwrap();
    check_user_certificate(&cert, &fx.ctx()).unwrap();
}

#[test]
fn revoked_by_key_id_is_refused() {
    let fx = Fixture::new();
    let cert = fx.good().build();
    let ca = fx.ca_ed25519.public_key().key_data();
    let revoked = krl(|b| b.revoke_key_id(ca, "alice@laptop"));
    let other = krl(|b| b.revoke_key_id(ca, "alice@desktop"));
    let with = |k| check_user_certificate(&cert, &CheckContext { krl: Some(k), ..fx.ctx() });
    assert_refused(with(&revoked), Rejection::Revoked);
    with(&other).unwrap();
}

#[test]
fn revoked_by_key_is_refused() {
    let fx = Fixture::new();
    let cert = fx.good().build();
    let revoked = krl(|b| b.revoke_key_sha256(fx.user.public_key().key_data()));
    let other = krl(|b| b.revoke_key_sha256(ed25519_key().public_key().key_data()));
    let with = |k| check_user_certificate(&cert, &CheckContext { krl: Some(k), ..fx.ctx() });
    assert_refused(with(&revoked), Rejection::Revoked);
    with(&other).unwrap();
}
