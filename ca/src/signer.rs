//! Builds and signs OpenSSH certificates.
//!
//! User certificates come only from a policy [`CertPermit`]: principals, lifetime,
//! extensions and critical options are the permit's; the request contributes only the
//! public key. A permit cannot be built outside `policies`, so an unchecked user
//! certificate does not compile. Host certificates and the enrollment verification
//! certificate have their own narrow constructors below, as do internal (service)
//! certificates and per-session certificates (from a session decision's permit).

use crate::error::CaError;
use crate::keys::Signer;
use crate::store::CertRow;
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

impl SignedCert {
    /// The row that records this certificate (listable, revocable): who it was issued
    /// to, by which CA key, for which principals, and the identity's groups at issuance
    /// (empty for node, service and other non-user certificates).
    pub fn row(
        &self,
        ca_fingerprint: &str,
        username: String,
        principals: Vec<String>,
        groups: Vec<String>,
        issued_at: u64,
    ) -> CertRow {
        CertRow {
            serial: self.serial,
            ca_fingerprint: ca_fingerprint.to_owned(),
            key_fingerprint: self.key_fingerprint.clone(),
            username,
            key_id: self.key_id.clone(),
            principals,
            valid_after: self.valid_after,
            valid_before: self.valid_before,
            issued_at,
            revoked_at: None,
            groups,
            digest: portcullis_sshcert::certificate_digest(&self.certificate),
            authenticated_at: None,
            groups_unknown: false,
        }
    }
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

/// Everything a certificate says, decided by one of the constructors below.
struct Contents<'a, P, E, O> {
    key: &'a PublicKey,
    cert_type: CertType,
    key_id: String,
    serial: u64,
    valid_after: u64,
    valid_before: u64,
    principals: P,
    extensions: E,
    critical_options: O,
}

fn sign<'a, P, E, O>(contents: Contents<'a, P, E, O>, signer: &Signer) -> Result<SignedCert, CaError>
where
    P: IntoIterator<Item = &'a String>,
    E: IntoIterator<Item = &'a String>,
    O: IntoIterator<Item = (&'a str, &'a str)>,
{
    let fail = |_| CaError::Internal("certificate signing failed".into());
    let c = contents;
    let mut builder =
        Builder::new(random_bytes::<32>(), c.key.key_data().clone(), c.valid_after, c.valid_before).map_err(fail)?;
    builder.serial(c.serial).map_err(fail)?;
    builder.key_id(c.key_id.clone()).map_err(fail)?;
    builder.cert_type(c.cert_type).map_err(fail)?;
    for principal in c.principals {
        builder.valid_principal(principal.clone()).map_err(fail)?;
    }
    for extension in c.extensions {
        builder.extension(extension.clone(), "").map_err(fail)?;
    }
    for (name, value) in c.critical_options {
        builder.critical_option(name, value).map_err(fail)?;
    }
    Ok(SignedCert {
        certificate: builder.sign(&signer.key).map_err(fail)?,
        serial: c.serial,
        key_id: c.key_id,
        valid_after: c.valid_after,
        valid_before: c.valid_before,
        key_fingerprint: fingerprint(c.key.key_data()),
    })
}

/// `skew` back-dates `valid_after` so a node whose clock runs a little behind accepts
/// the certificate at once. The key id is the account name (`alice`, `ldap:alice`),
/// which names the user's source too, so a node's auth.log says who logged in.
pub fn sign_user_cert(
    permit: &CertPermit,
    public_key: &PublicKey,
    signer: &Signer,
    now: u64,
    skew: u64,
    serial: u64,
) -> Result<SignedCert, CaError> {
    let contents = Contents {
        key: public_key,
        cert_type: CertType::User,
        key_id: permit.username().to_owned(),
        serial,
        valid_after: now.saturating_sub(skew),
        valid_before: now.saturating_add(permit.ttl().as_secs()),
        principals: permit.principals(),
        extensions: permit.extensions(),
        critical_options: permit.critical_options().iter().map(|(k, v)| (k.as_str(), v.as_str())),
    };
    sign(contents, signer)
}

/// How long a node's host certificate lasts; the refresh timer renews it well before.
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
    let contents = Contents {
        key: host_key,
        cert_type: CertType::Host,
        key_id: format!("node:{node}"),
        serial: new_serial(),
        valid_after: now.saturating_sub(skew),
        valid_before: now.saturating_add(HOST_CERT_TTL),
        principals,
        extensions: [],
        critical_options: [],
    };
    sign(contents, signer)
}

/// Lifetime of an enrollment verification certificate.
pub const VERIFICATION_TTL: u64 = 120;

/// The one certificate signed without a policy permit: it proves to the enrollment tool
/// that a real login through the staged configuration works. It cannot open anything
/// else: its principal is random and exists only in the principals file the tool stages
/// for the duration of the check, it runs only `true`, only from loopback, for two
/// minutes, without pty or forwarding.
/// The enrollment tool's one verification login runs on the node itself, to the
/// loopback or (when sshd listens only there) one of the node's own addresses: the
/// certificate's `source-address` is the loopback plus the IP addresses the node
/// reported (host names are not addresses and are left out).
pub fn sign_verification_cert(
    public_key: &PublicKey,
    node: &str,
    addresses: &[String],
    principal: &str,
    signer: &Signer,
    now: u64,
) -> Result<SignedCert, CaError> {
    let principals = [principal.to_owned()];
    let own = addresses.iter().filter_map(|a| a.parse::<std::net::IpAddr>().ok()).filter(|ip| !ip.is_loopback());
    let sources: Vec<String> =
        ["127.0.0.0/8".to_owned(), "::1".to_owned()].into_iter().chain(own.map(|ip| ip.to_string())).collect();
    let sources = sources.join(",");
    let contents = Contents {
        key: public_key,
        cert_type: CertType::User,
        key_id: format!("enroll-verification:{node}"),
        serial: new_serial(),
        valid_after: now.saturating_sub(60),
        valid_before: now.saturating_add(VERIFICATION_TTL),
        principals: &principals,
        extensions: [],
        critical_options: [("force-command", "true"), ("source-address", sources.as_str())],
    };
    sign(contents, signer)
}

/// An internal certificate for an enrolled bastion or agent: what agents present to
/// bastions (and bastions to agents), checked against the internal CA key only. The
/// principal names the service (`agent:NAME`), so no user-facing node accepts it and no
/// service can pass for another.
pub fn sign_service_cert(
    public_key: &PublicKey,
    key_id: &str,
    principal: &str,
    signer: &Signer,
    now: u64,
    skew: u64,
) -> Result<SignedCert, CaError> {
    let principals = [principal.to_owned()];
    let contents = Contents {
        key: public_key,
        cert_type: CertType::User,
        key_id: key_id.to_owned(),
        serial: new_serial(),
        valid_after: now.saturating_sub(skew),
        valid_before: now.saturating_add(portcullis_proto::bastion::SERVICE_CERT_TTL_SECS),
        principals: &principals,
        extensions: [],
        critical_options: [],
    };
    sign(contents, signer)
}

/// A hardware-discovery certificate. Built only from a
/// [`DiscoveryPermit`](crate::service::permits::DiscoveryPermit), which only the claim decision
/// makes (a rule with purpose `inventory_enrichment` matched the node): the node principal
/// of the discovery login on that node only, `force-command` = the fixed discovery command,
/// no extensions (no pty, no forwarding), a few minutes of life, key id
/// `discovery:<run id>:<node>`.
pub fn sign_discovery_cert(
    permit: &crate::service::permits::DiscoveryPermit,
    public_key: &PublicKey,
    signer: &Signer,
    now: u64,
    skew: u64,
) -> Result<SignedCert, CaError> {
    let principals = [permit.principal().to_owned()];
    let contents = Contents {
        key: public_key,
        cert_type: CertType::User,
        key_id: permit.key_id().to_owned(),
        serial: new_serial(),
        valid_after: now.saturating_sub(skew),
        valid_before: now.saturating_add(portcullis_proto::discovery::DISCOVERY_CERT_TTL_SECS),
        principals: &principals,
        extensions: [],
        critical_options: [("force-command", portcullis_proto::discovery::DISCOVERY_COMMAND)],
    };
    sign(contents, signer)
}

/// The per-session certificate a bastion logs in onward with (terminated mode, browser
/// console). Built only from a [`SessionPermit`](crate::service::permits::SessionPermit), which
/// only the session decision makes: one node principal (this device, this login), a
/// minute of life, the key id naming the session so the node's auth.log links to the
/// audit trail.
pub fn sign_session_cert(
    permit: &crate::service::permits::SessionPermit,
    public_key: &PublicKey,
    signer: &Signer,
    now: u64,
    skew: u64,
) -> Result<SignedCert, CaError> {
    let principals = [permit.principal().to_owned()];
    let contents = Contents {
        key: public_key,
        cert_type: CertType::User,
        key_id: permit.key_id().to_owned(),
        serial: new_serial(),
        valid_after: now.saturating_sub(skew),
        valid_before: now.saturating_add(portcullis_proto::bastion::SESSION_CERT_TTL_SECS),
        principals: &principals,
        extensions: permit.extensions(),
        critical_options: [],
    };
    sign(contents, signer)
}
