//! Turns a policy [`CertPermit`] and a user's public key into an OpenSSH certificate.
//!
//! Everything that matters — principals, lifetime, extensions, critical options — comes
//! from the permit; the request contributes only the public key. A permit cannot be
//! built outside `policies`, so an unchecked certificate does not compile.

use crate::error::CaError;
use crate::keys::Signer;
use portcullis_policies::CertPermit;
use portcullis_sshcert::{fingerprint, random_bytes};
use ssh_key::certificate::{Builder, CertType};
use ssh_key::{Certificate, PublicKey};

pub struct SignedCert {
    pub certificate: Certificate,
    pub serial: u64,
    pub key_id: String,
    pub valid_after: u64,
    pub valid_before: u64,
    pub key_fingerprint: String,
}

/// A random non-zero serial: unique without coordination between replicas (the
/// database's primary key catches the 2^-64 collision).
pub fn new_serial() -> u64 {
    loop {
        let serial = u64::from_be_bytes(random_bytes::<8>());
        if serial != 0 {
            return serial;
        }
    }
}

/// `skew` back-dates `valid_after` so a node whose clock runs a little behind accepts
/// the certificate at once.
pub fn sign_user_cert(
    permit: &CertPermit,
    source: &str,
    public_key: &PublicKey,
    signer: &Signer,
    now: u64,
    skew: u64,
    serial: u64,
) -> Result<SignedCert, CaError> {
    let valid_after = now.saturating_sub(skew);
    let valid_before = now.saturating_add(permit.ttl().as_secs());
    let key_id = format!("{}@{}", permit.username(), source);
    let nonce = random_bytes::<32>();
    let fail = |_| CaError::Internal("certificate signing failed".into());
    let mut builder = Builder::new(nonce, public_key.key_data().clone(), valid_after, valid_before).map_err(fail)?;
    builder.serial(serial).map_err(fail)?;
    builder.key_id(key_id.clone()).map_err(fail)?;
    builder.cert_type(CertType::User).map_err(fail)?;
    for principal in permit.principals() {
        builder.valid_principal(principal.clone()).map_err(fail)?;
    }
    for extension in permit.extensions() {
        builder.extension(extension.clone(), "").map_err(fail)?;
    }
    for (name, value) in permit.critical_options() {
        builder.critical_option(name.clone(), value.clone()).map_err(fail)?;
    }
    let certificate = builder.sign(&signer.key).map_err(fail)?;
    Ok(SignedCert {
        certificate,
        serial,
        key_id,
        valid_after,
        valid_before,
        key_fingerprint: fingerprint(public_key.key_data()),
    })
}

/// How long a node's host certificate lasts; the refresh timer renews it daily.
pub const HOST_CERT_TTL: u64 = 30 * 24 * 3600;

/// A host certificate for an enrolled node's existing host key. Principals are the names
/// clients use for the node: its name and addresses.
pub fn sign_host_cert(
    host_key: &PublicKey,
    node: &str,
    principals: &[String],
    signer: &Signer,
    now: u64,
    skew: u64,
) -> Result<SignedCert, CaError> {
    let fail = |_| CaError::Internal("host certificate signing failed".into());
    let valid_after = now.saturating_sub(skew);
    let valid_before = now.saturating_add(HOST_CERT_TTL);
    let serial = new_serial();
    let key_id = format!("node:{node}");
    let mut builder =
        Builder::new(random_bytes::<32>(), host_key.key_data().clone(), valid_after, valid_before).map_err(fail)?;
    builder.serial(serial).map_err(fail)?;
    builder.key_id(key_id.clone()).map_err(fail)?;
    builder.cert_type(CertType::Host).map_err(fail)?;
    for principal in principals {
        builder.valid_principal(principal.clone()).map_err(fail)?;
    }
    let certificate = builder.sign(&signer.key).map_err(fail)?;
    Ok(SignedCert {
        certificate,
        serial,
        key_id,
        valid_after,
        valid_before,
        key_fingerprint: fingerprint(host_key.key_data()),
    })
}

/// Lifetime of an enrollment verification certificate.
pub const VERIFICATION_TTL: u64 = 120;

/// The one certificate signed without a policy permit: it proves to the enrollment tool
/// that a real login through the staged configuration works. It cannot open anything
/// else: its principal is random and exists only in the principals file the tool stages
/// for the duration of the check, it runs only `true`, only from loopback, for two
/// minutes, without pty or forwarding.
pub fn sign_verification_cert(
    public_key: &PublicKey,
    node: &str,
    principal: &str,
    signer: &Signer,
    now: u64,
) -> Result<SignedCert, CaError> {
    let fail = |_| CaError::Internal("verification certificate signing failed".into());
    let serial = new_serial();
    let key_id = format!("enroll-verification:{node}");
    let valid_after = now.saturating_sub(60);
    let valid_before = now.saturating_add(VERIFICATION_TTL);
    let mut builder =
        Builder::new(random_bytes::<32>(), public_key.key_data().clone(), valid_after, valid_before).map_err(fail)?;
    builder.serial(serial).map_err(fail)?;
    builder.key_id(key_id.clone()).map_err(fail)?;
    builder.cert_type(CertType::User).map_err(fail)?;
    builder.valid_principal(principal.to_owned()).map_err(fail)?;
    builder.critical_option("force-command", "true").map_err(fail)?;
    builder.critical_option("source-address", "127.0.0.0/8,::1").map_err(fail)?;
    let certificate = builder.sign(&signer.key).map_err(fail)?;
    Ok(SignedCert {
        certificate,
        serial,
        key_id,
        valid_after,
        valid_before,
        key_fingerprint: fingerprint(public_key.key_data()),
    })
}
