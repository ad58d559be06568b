//! Admission checks for OpenSSH user certificates presented to the bastion.
//!
//! russh verifies a certificate's own signature and validity window and nothing
//! else; [`check_user_certificate`] is everything sshd would also check, done in
//! one place. It returns an [`AcceptedCert`] only when every check passed:
//!
//! 1. signed by one of the trusted CA keys, and the signature verifies;
//! 2. a *user* certificate (a host certificate is refused);
//! 3. `valid_after - skew <= now < valid_before + skew`;
//! 4. at least one principal, and one of them is acceptable to the caller (an
//!    empty list means "any principal" to OpenSSH; we refuse it);
//! 5. no critical option other than `force-command`, `source-address` and
//!    `verify-required`;
//! 6. the client address is inside `source-address`, when present (a malformed
//!    list refuses the certificate);
//! 7. not revoked by the KRL, when one is given.
//!
//! Each failure is a distinct [`Rejection`] with a stable [`Rejection::code`]
//! for audit events. The caller must still enforce what the accepted
//! certificate asks for: [`AcceptedCert::force_command`], and what the
//! signature's security key confirmed
//! ([`check_authenticator`](crate::authenticator::check_authenticator): a touch, and
//! user verification under `verify-required`).

use std::net::IpAddr;

use ssh_key::certificate::CertType;
use ssh_key::public::KeyData;
use ssh_key::{Certificate, HashAlg};

use crate::krl_parse::Krl;

const FORCE_COMMAND: &str = "force-command";
const SOURCE_ADDRESS: &str = "source-address";
const VERIFY_REQUIRED: &str = "verify-required";
const KNOWN_CRITICAL_OPTIONS: &[&str] = &[FORCE_COMMAND, SOURCE_ADDRESS, VERIFY_REQUIRED];

/// Longest critical option name quoted back in a [`Rejection`].
const MAX_QUOTED_NAME: usize = 64;

/// Everything the checks need besides the certificate. Time is injected.
#[derive(Debug, Clone, Copy)]
pub struct CheckContext<'a> {
    /// CA public keys whose user certificates are trusted (several while a CA
    /// key is being rotated).
    pub trusted_cas: &'a [KeyData],
    /// Current time, seconds since the epoch.
    pub now_unix: u64,
    /// Clock difference tolerated at both ends of the validity window.
    pub max_clock_skew_secs: u64,
    /// The principals that would let this login through; the certificate must
    /// carry at least one of them.
    pub acceptable_principals: &'a [&'a str],
    /// Where the connection comes from, for `source-address`.
    pub client_ip: IpAddr,
    /// Revocations to apply, if any.
    pub krl: Option<&'a Krl>,
}

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the certificate is not signed by a trusted CA key")]
    UntrustedCa,
    #[error("the certificate's validity window is empty")]
    EmptyValidityWindow,
    #[error("the certificate's signature does not verify")]
    BadSignature,
    #[error("this is a host certificate, not a user certificate")]
    NotUserCertificate,
    #[error("the certificate is not valid yet")]
    NotYetValid,
    #[error("the certificate has expired")]
    Expired,
    #[error("the certificate lists no principals")]
    NoPrincipals,
    #[error("none of the certificate's principals is allowed for this login")]
    PrincipalMismatch,
    #[error("the certificate has an unsupported critical option {name:?}")]
    UnknownCriticalOption { name: String },
    #[error("the certificate's source-address option is malformed")]
    MalformedSourceAddress,
    #[error("the connection does not come from an address the certificate allows")]
    SourceAddressMismatch,
    #[error("the certificate has been revoked")]
    Revoked,
}

impl Rejection {
    /// Stable machine-readable code for audit events; unlike the message it
    /// will not change wording.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UntrustedCa => "cert_untrusted_ca",
            Self::EmptyValidityWindow => "cert_empty_validity",
            Self::BadSignature => "cert_bad_signature",
            Self::NotUserCertificate => "cert_not_user",
            Self::NotYetValid => "cert_not_yet_valid",
            Self::Expired => "cert_expired",
            Self::NoPrincipals => "cert_no_principals",
            Self::PrincipalMismatch => "cert_principal_mismatch",
            Self::UnknownCriticalOption { .. } => "cert_unknown_critical_option",
            Self::MalformedSourceAddress => "cert_source_address_malformed",
            Self::SourceAddressMismatch => "cert_source_address_mismatch",
            Self::Revoked => "cert_revoked",
        }
    }
}

/// A certificate that passed every check. Only [`check_user_certificate`]
/// makes one, so holding one is proof the checks ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedCert {
    key_id: String,
    serial: u64,
    principals: Vec<String>,
    matched_principal: String,
    force_command: Option<String>,
    verify_required: bool,
    extensions: Vec<(String, String)>,
    valid_before: u64,
    ca_fingerprint: String,
}

impl AcceptedCert {
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// Every principal in the certificate.
    pub fn principals(&self) -> &[String] {
        &self.principals
    }

    /// The first of the certificate's principals that the caller accepted.
    pub fn matched_principal(&self) -> &str {
        &self.matched_principal
    }

    /// The command the session must run instead of what the client asks for.
    pub fn force_command(&self) -> Option<&str> {
        self.force_command.as_deref()
    }

    /// The CA asked for FIDO user verification on every signature
    /// ([`check_authenticator`](crate::authenticator::check_authenticator) checks it).
    pub fn verify_required(&self) -> bool {
        self.verify_required
    }

    /// Extensions (`permit-pty`, `permit-port-forwarding`, ...) in name order.
    pub fn extensions(&self) -> &[(String, String)] {
        &self.extensions
    }

    pub fn has_extension(&self, name: &str) -> bool {
        self.extensions.iter().any(|(n, _)| n == name)
    }

    /// End of the validity window (seconds since the epoch), so a session can
    /// be closed when its certificate expires.
    pub fn valid_before(&self) -> u64 {
        self.valid_before
    }

    /// `SHA256:...` fingerprint of the CA key that signed the certificate.
    pub fn ca_fingerprint(&self) -> &str {
        &self.ca_fingerprint
    }
}

/// Run every check on a user certificate; see the module documentation.
pub fn check_user_certificate(cert: &Certificate, ctx: &CheckContext<'_>) -> Result<AcceptedCert, Rejection> {
    check_signature(cert, ctx.trusted_cas)?;

    if cert.cert_type() != CertType::User {
        return Err(Rejection::NotUserCertificate);
    }
    check_validity(cert, ctx.now_unix, ctx.max_clock_skew_secs)?;
    let matched_principal = check_principals(cert, ctx.acceptable_principals)?;

    let options = cert.critical_options();
    if let Some(name) = options.keys().find(|name| !KNOWN_CRITICAL_OPTIONS.contains(&name.as_str())) {
        return Err(Rejection::UnknownCriticalOption { name: quoted_name(name) });
    }
    if let Some(list) = options.get(SOURCE_ADDRESS)
        && !source_address_allows(list, ctx.client_ip)?
    {
        return Err(Rejection::SourceAddressMismatch);
    }
    if ctx.krl.is_some_and(|krl| krl.is_revoked(cert)) {
        return Err(Rejection::Revoked);
    }

    Ok(AcceptedCert {
        key_id: cert.key_id().to_owned(),
        serial: cert.serial(),
        principals: cert.valid_principals().to_vec(),
        matched_principal,
        force_command: options.get(FORCE_COMMAND).cloned(),
        verify_required: options.contains_key(VERIFY_REQUIRED),
        extensions: cert.extensions().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        valid_before: cert.valid_before(),
        ca_fingerprint: crate::fingerprint(cert.signature_key()),
    })
}

/// Trust by our own comparison of the whole key, then the signature through
/// ssh-key's validation (which also re-checks the CA by fingerprint).
fn check_signature(cert: &Certificate, trusted_cas: &[KeyData]) -> Result<(), Rejection> {
    let signer = cert.signature_key();
    if !trusted_cas.iter().any(|ca| ca == signer) {
        return Err(Rejection::UntrustedCa);
    }
    // ssh-key's `validate_at` verifies the signature only together with a
    // time inside the window, and has no notion of skew. Our own time check
    // (with skew) comes later, so hand it a time that is always inside: the
    // window's start. An empty window has no such time.
    if cert.valid_after() >= cert.valid_before() {
        return Err(Rejection::EmptyValidityWindow);
    }
    let fingerprints: Vec<_> = trusted_cas.iter().map(|ca| ca.fingerprint(HashAlg::Sha256)).collect();
    cert.validate_at(cert.valid_after(), &fingerprints).map_err(|_| Rejection::BadSignature)
}

fn check_validity(cert: &Certificate, now: u64, skew: u64) -> Result<(), Rejection> {
    if now.saturating_add(skew) < cert.valid_after() {
        return Err(Rejection::NotYetValid);
    }
    if now >= cert.valid_before().saturating_add(skew) {
        return Err(Rejection::Expired);
    }
    Ok(())
}

fn check_principals(cert: &Certificate, acceptable: &[&str]) -> Result<String, Rejection> {
    let principals = cert.valid_principals();
    if principals.is_empty() {
        return Err(Rejection::NoPrincipals);
    }
    principals.iter().find(|p| acceptable.contains(&p.as_str())).cloned().ok_or(Rejection::PrincipalMismatch)
}

/// OpenSSH's `addr_match_cidr_list`: comma-separated addresses or CIDR
/// blocks, no spaces, no negation, no empty entries. Host bits under the mask
/// are ignored, as OpenSSH does.
fn source_address_allows(list: &str, client: IpAddr) -> Result<bool, Rejection> {
    // An IPv4 client seen through an IPv6 socket is matched as IPv4 (OpenSSH
    // normalises v4-mapped addresses the same way).
    let client = client.to_canonical();
    let mut allowed = false;
    // Every entry is parsed even after a match, so a malformed list is always
    // refused rather than only for some clients.
    for entry in list.split(',') {
        let (block, prefix) = parse_cidr(entry).ok_or(Rejection::MalformedSourceAddress)?;
        allowed |= cidr_contains(block, prefix, client);
    }
    Ok(allowed)
}

/// `ADDR` or `ADDR/PREFIX` (IPv4 or IPv6), strictly as OpenSSH writes them.
pub fn parse_cidr(entry: &str) -> Option<(IpAddr, u8)> {
    if entry.is_empty() || !entry.bytes().all(|b| b.is_ascii_hexdigit() || b":./".contains(&b)) {
        return None;
    }
    let (addr, prefix) = match entry.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (entry, None),
    };
    let addr: IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
        Some(_) => return None,
    };
    (prefix <= max).then_some((addr, prefix))
}

/// Whether `addr` is inside `block/prefix` (never across address families).
pub fn cidr_contains(block: IpAddr, prefix: u8, client: IpAddr) -> bool {
    match (block, client) {
        (IpAddr::V4(block), IpAddr::V4(client)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(block) & mask == u32::from(client) & mask
        }
        (IpAddr::V6(block), IpAddr::V6(client)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(block) & mask == u128::from(client) & mask
        }
        _ => false,
    }
}

/// A CA-signed but still foreign string: keep it short and printable.
fn quoted_name(name: &str) -> String {
    name.chars().take(MAX_QUOTED_NAME).flat_map(char::escape_default).collect()
}

// Tests may panic: a failed unwrap is a failed test.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_lists_parse_like_openssh() {
        assert_eq!(source_address_allows("10.0.0.0/8", ip("10.1.2.3")), Ok(true));
        assert_eq!(source_address_allows("10.0.0.0/8", ip("11.1.2.3")), Ok(false));
        assert_eq!(source_address_allows("192.0.2.7", ip("192.0.2.7")), Ok(true));
        assert_eq!(source_address_allows("192.0.2.7", ip("192.0.2.8")), Ok(false));
        assert_eq!(source_address_allows("0.0.0.0/0", ip("203.0.113.9")), Ok(true));
        assert_eq!(source_address_allows("192.0.2.0/24,2001:db8::/32", ip("2001:db8::1")), Ok(true));
        assert_eq!(source_address_allows("2001:db8::/32", ip("2001:db9::1")), Ok(false));
        assert_eq!(source_address_allows("::/0", ip("::1")), Ok(true));
        // v4-mapped IPv6 client matches the IPv4 block; families never cross otherwise.
        assert_eq!(source_address_allows("192.0.2.0/24", ip("::ffff:192.0.2.1")), Ok(true));
        assert_eq!(source_address_allows("::/0", ip("192.0.2.1")), Ok(false));
        // Host bits under the mask are ignored.
        assert_eq!(source_address_allows("192.0.2.77/24", ip("192.0.2.1")), Ok(true));
    }

    #[test]
    fn malformed_cidr_lists_are_refused_whatever_the_client() {
        for bad in [
            "",
            ",",
            "10.0.0.0/8,",
            ",10.0.0.0/8",
            "10.0.0.0/33",
            "2001:db8::/129",
            "10.0.0.0/",
            "10.0.0.0/8/8",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/0008",
            " 10.0.0.0/8",
            "10.0.0.0/8, 10.1.0.0/16",
            "!10.0.0.0/8",
            "*",
            "example.com",
            "10.0.0",
            "fe80::1%eth0",
        ] {
            for client in ["10.0.0.1", "2001:db8::1"] {
                assert_eq!(source_address_allows(bad, ip(client)), Err(Rejection::MalformedSourceAddress), "{bad:?}");
            }
        }
        // A match earlier in the list does not excuse a malformed entry later.
        assert_eq!(source_address_allows("10.0.0.0/8,bogus", ip("10.0.0.1")), Err(Rejection::MalformedSourceAddress));
    }

    #[test]
    fn quoted_names_are_short_and_printable() {
        assert_eq!(quoted_name("no-touch\n"), "no-touch\\n");
        assert_eq!(quoted_name(&"x".repeat(1000)).len(), MAX_QUOTED_NAME);
    }

    #[test]
    fn rejection_codes_are_distinct() {
        let all = [
            Rejection::UntrustedCa,
            Rejection::EmptyValidityWindow,
            Rejection::BadSignature,
            Rejection::NotUserCertificate,
            Rejection::NotYetValid,
            Rejection::Expired,
            Rejection::NoPrincipals,
            Rejection::PrincipalMismatch,
            Rejection::UnknownCriticalOption { name: String::new() },
            Rejection::MalformedSourceAddress,
            Rejection::SourceAddressMismatch,
            Rejection::Revoked,
        ];
        let mut codes: Vec<_> = all.iter().map(Rejection::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}
