//! Proof that a user is connected now: the signature their SSH client makes in
//! "publickey" user authentication (RFC 4252 §7) over the connection's session
//! identifier and the authentication request, by the certificate's key.
//!
//! A bastion that terminates SSH receives this signature from every user who logs in,
//! and passes it on to the CA, which verifies it here before it issues an onward
//! certificate. A bastion that has been taken over cannot make such a signature (it
//! holds no user key); it can only replay one it saw, which the CA refuses by its
//! session identifier. So it can act only for users connecting while it is compromised.
//!
//! Checked here, in the order a forger would try to get around them: the request is a
//! publickey request for `ssh-connection` that carries a signature; the key blob in it
//! parses strictly as a certificate; the signature is by that certificate's key over
//! `string(session_identifier) || request`, with an algorithm at least as strong as
//! SHA-256 (no `ssh-rsa` SHA-1); and a security key's signature confirms what the
//! certificate asks ([`check_authenticator`]: a touch, user verification). What the
//! certificate and user name must be is the caller's decision ([`ProvenRequest`]).

use crate::authenticator::{Confirmed, Unconfirmed, check_authenticator, confirmed_flags};
use crate::blob::parse_certificate_strict;
use signature::Verifier;
use ssh_key::encoding::{Decode, Encode, Reader};
use ssh_key::{Algorithm, Certificate, PublicKey, Signature};

/// `SSH_MSG_USERAUTH_REQUEST`.
const USERAUTH_REQUEST: u8 = 50;
/// An SSH session identifier is a hash (SHA-256 to SHA-512 for every key exchange in
/// use): at most 64 bytes.
pub const MAX_SESSION_ID: usize = 64;
/// A request is a user name, two short names, an algorithm and a certificate blob.
pub const MAX_REQUEST: usize = crate::blob::MAX_CERTIFICATE_BLOB + 1024;
/// An RSA-16384 signature and its algorithm name fit well within this.
pub const MAX_SIGNATURE: usize = 4096;

/// What a verified proof says: who logged in under which user name, with which
/// certificate.
#[derive(Debug, Clone)]
pub struct ProvenRequest {
    /// The SSH user name the client asked for (`root%pve01` in terminated mode).
    pub user: String,
    pub certificate: Certificate,
    /// What the signature's key confirmed (a touch, always, for a key that is not a
    /// security key's). The certificate's `no-touch-required` may have let it in
    /// without a touch; the role a session runs under decides again.
    pub confirmed: Confirmed,
}

/// Why a proof was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("the connection proof is malformed")]
    Malformed,
    #[error("the connection proof is not a publickey authentication with a certificate")]
    NotCertificateAuth,
    #[error("the connection proof is signed with SHA-1")]
    WeakAlgorithm,
    #[error("the connection proof's signature does not verify")]
    BadSignature,
    #[error("the connection proof: {0}")]
    Unconfirmed(Unconfirmed),
}

impl ProofError {
    /// Stable machine-readable code for audit events.
    pub fn code(&self) -> &'static str {
        match self {
            ProofError::Malformed => "proof_malformed",
            ProofError::NotCertificateAuth => "proof_not_certificate_auth",
            ProofError::WeakAlgorithm => "proof_weak_algorithm",
            ProofError::BadSignature => "proof_bad_signature",
            ProofError::Unconfirmed(unconfirmed) => unconfirmed.code(),
        }
    }
}

/// Verifies a connection proof (see the module documentation).
pub fn verify_connection_proof(
    session_id: &[u8],
    request: &[u8],
    signature: &[u8],
) -> Result<ProvenRequest, ProofError> {
    if session_id.is_empty()
        || session_id.len() > MAX_SESSION_ID
        || request.len() > MAX_REQUEST
        || signature.len() > MAX_SIGNATURE
    {
        return Err(ProofError::Malformed);
    }
    let (user, algorithm, blob) = parse_request(request)?;
    let certificate = parse_certificate_strict(&blob).map_err(|_| ProofError::NotCertificateAuth)?;
    let mut reader = signature;
    let sig = Signature::decode(&mut reader).map_err(|_| ProofError::Malformed)?;
    if !reader.is_finished() {
        return Err(ProofError::Malformed);
    }
    if sig.algorithm() == (Algorithm::Rsa { hash: None }) {
        return Err(ProofError::WeakAlgorithm);
    }
    // The request names a certificate algorithm, the certificate's own (an RSA key with
    // any of its hashes), and the signature is of that algorithm (RFC 4252 §7;
    // `rsa-sha2-512-cert-v01@openssh.com` → `rsa-sha2-512`). Names are not signed, and
    // the signature verifies by the key's type whatever it is called, so a name that is
    // not the key's is refused, as sshd refuses a key type mismatch.
    let named = algorithm.strip_suffix("-cert-v01@openssh.com").ok_or(ProofError::NotCertificateAuth)?;
    if sig.algorithm().as_str().trim_end_matches("@openssh.com") != named {
        return Err(ProofError::NotCertificateAuth);
    }
    if !signature_fits_key(&sig, certificate.public_key()) {
        return Err(ProofError::NotCertificateAuth);
    }
    let mut signed = Vec::with_capacity(4 + session_id.len() + request.len());
    session_id.encode(&mut signed).map_err(|_| ProofError::Malformed)?;
    signed.extend_from_slice(request);
    let key = PublicKey::from(certificate.public_key().clone());
    Verifier::verify(&key, &signed, &sig).map_err(|_| ProofError::BadSignature)?;
    check_authenticator(&certificate, &sig).map_err(ProofError::Unconfirmed)?;
    let confirmed = Confirmed::of(confirmed_flags(certificate.public_key(), &sig));
    Ok(ProvenRequest { user, certificate, confirmed })
}

/// Whether `signature` is of `key`'s own algorithm (an RSA key's with any of its
/// hashes). The name on a signature is not signed and ssh-key verifies by the key's type
/// whatever the name says, so a caller that acts on the name — reads a security key's
/// flags, say — must check this first; sshd refuses a mismatch outright.
pub fn signature_fits_key(signature: &Signature, key: &ssh_key::public::KeyData) -> bool {
    match (signature.algorithm(), key.algorithm()) {
        (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
        (signed, certified) => signed == certified,
    }
}

/// `byte 50, string user, string "ssh-connection", string "publickey", TRUE,
/// string algorithm, string blob` and nothing after: (user, algorithm, blob).
fn parse_request(request: &[u8]) -> Result<(String, String, Vec<u8>), ProofError> {
    let mut r = request;
    let malformed = |_| ProofError::Malformed;
    if u8::decode(&mut r).map_err(malformed)? != USERAUTH_REQUEST {
        return Err(ProofError::Malformed);
    }
    let user = String::decode(&mut r).map_err(malformed)?;
    let service = String::decode(&mut r).map_err(malformed)?;
    let method = String::decode(&mut r).map_err(malformed)?;
    let has_signature = bool::decode(&mut r).map_err(malformed)?;
    if service != "ssh-connection" || method != "publickey" || !has_signature {
        return Err(ProofError::NotCertificateAuth);
    }
    let algorithm = String::decode(&mut r).map_err(malformed)?;
    let blob = Vec::<u8>::decode(&mut r).map_err(malformed)?;
    if !r.is_finished() {
        return Err(ProofError::Malformed);
    }
    Ok((user, algorithm, blob))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authenticator::{USER_PRESENCE, USER_VERIFICATION};
    use ssh_key::rand_core::UnwrapErr;
    use ssh_key::{PrivateKey, certificate};

    fn random_key() -> PrivateKey {
        PrivateKey::random(&mut UnwrapErr(ssh_key::getrandom::SysRng), Algorithm::Ed25519).unwrap()
    }

    fn certificate(user_key: &PrivateKey) -> Certificate {
        let ca = random_key();
        let mut rng = UnwrapErr(ssh_key::getrandom::SysRng);
        let mut b =
            certificate::Builder::new_with_random_nonce(&mut rng, user_key.public_key(), 0, u64::MAX >> 1).unwrap();
        b.serial(7).unwrap().key_id("alice").unwrap().cert_type(certificate::CertType::User).unwrap();
        b.valid_principal("pc_0123456789ab_root").unwrap();
        b.sign(&ca).unwrap()
    }

    fn request(user: &str, algorithm: &str, cert: &Certificate) -> Vec<u8> {
        let mut r = vec![USERAUTH_REQUEST];
        for s in [user, "ssh-connection", "publickey"] {
            s.encode(&mut r).unwrap();
        }
        true.encode(&mut r).unwrap();
        algorithm.encode(&mut r).unwrap();
        cert.to_bytes().unwrap().encode(&mut r).unwrap();
        r
    }

    fn sign(key: &PrivateKey, session_id: &[u8], request: &[u8]) -> Vec<u8> {
        let mut signed = Vec::new();
        session_id.encode(&mut signed).unwrap();
        signed.extend_from_slice(request);
        let sig: Signature = signature::Signer::try_sign(key, &signed).unwrap();
        let mut out = Vec::new();
        sig.encode(&mut out).unwrap();
        out
    }

    #[test]
    fn a_signature_by_the_certificates_key_over_this_session_is_a_proof() {
        let key = random_key();
        let cert = certificate(&key);
        let req = request("root%pve01", "ssh-ed25519-cert-v01@openssh.com", &cert);
        let session = [7u8; 32];
        let proven = verify_connection_proof(&session, &req, &sign(&key, &session, &req)).unwrap();
        assert_eq!((proven.user.as_str(), proven.certificate.serial()), ("root%pve01", 7));

        // Another session's identifier, another user name, another key: no proof.
        let other = [8u8; 32];
        assert_eq!(
            verify_connection_proof(&other, &req, &sign(&key, &session, &req)).unwrap_err(),
            ProofError::BadSignature
        );
        let renamed = request("root%pve02", "ssh-ed25519-cert-v01@openssh.com", &cert);
        assert_eq!(
            verify_connection_proof(&session, &renamed, &sign(&key, &session, &req)).unwrap_err(),
            ProofError::BadSignature
        );
        let stranger = random_key();
        assert_eq!(
            verify_connection_proof(&session, &req, &sign(&stranger, &session, &req)).unwrap_err(),
            ProofError::BadSignature
        );
        // Malformed or oversized parts, a plain key, trailing bytes.
        let sig = sign(&key, &session, &req);
        assert_eq!(verify_connection_proof(&[], &req, &sig).unwrap_err(), ProofError::Malformed);
        assert_eq!(verify_connection_proof(&[1; 65], &req, &sig).unwrap_err(), ProofError::Malformed);
        let mut trailing = req.clone();
        trailing.push(0);
        assert_eq!(verify_connection_proof(&session, &trailing, &sig).unwrap_err(), ProofError::Malformed);
        let mut long_sig = sig.clone();
        long_sig.push(0);
        assert_eq!(verify_connection_proof(&session, &req, &long_sig).unwrap_err(), ProofError::Malformed);
        let mut plain = vec![USERAUTH_REQUEST];
        for s in ["root%pve01", "ssh-connection", "publickey"] {
            s.encode(&mut plain).unwrap();
        }
        true.encode(&mut plain).unwrap();
        "ssh-ed25519".encode(&mut plain).unwrap();
        key.public_key().key_data().encode_prefixed(&mut plain).unwrap();
        assert_eq!(
            verify_connection_proof(&session, &plain, &sign(&key, &session, &plain)).unwrap_err(),
            ProofError::NotCertificateAuth
        );
        // The algorithm named must be the certificate's.
        let misnamed = request("root%pve01", "ecdsa-sha2-nistp256-cert-v01@openssh.com", &cert);
        assert_eq!(
            verify_connection_proof(&session, &misnamed, &sign(&key, &session, &misnamed)).unwrap_err(),
            ProofError::NotCertificateAuth
        );
    }

    #[test]
    fn a_security_keys_proof_must_show_the_touch_its_certificate_asks_for() {
        use crate::authenticator::tests::{SecurityKey, certificate};
        let sk = SecurityKey::new();
        let cert = certificate(sk.public(), |_| {});
        let req = request("root%pve01", "sk-ssh-ed25519-cert-v01@openssh.com", &cert);
        let session = [7u8; 32];
        let mut signed = Vec::new();
        session.as_slice().encode(&mut signed).unwrap();
        signed.extend_from_slice(&req);
        let proof = |flags| {
            let mut out = Vec::new();
            sk.sign(&signed, flags).encode(&mut out).unwrap();
            out
        };
        let touched = verify_connection_proof(&session, &req, &proof(USER_PRESENCE)).unwrap();
        let unverified = Confirmed { touched: true, verified: false };
        assert_eq!((touched.certificate.serial(), touched.confirmed), (7, unverified));
        let verified = verify_connection_proof(&session, &req, &proof(USER_PRESENCE | USER_VERIFICATION)).unwrap();
        assert_eq!(verified.confirmed, Confirmed { touched: true, verified: true });
        assert_eq!(
            verify_connection_proof(&session, &req, &proof(0)).unwrap_err(),
            ProofError::Unconfirmed(Unconfirmed::Presence)
        );
        // The flags are signed: setting them afterwards breaks the signature.
        let mut forged = proof(0);
        let at = forged.len() - 5;
        forged[at] = USER_PRESENCE;
        assert_eq!(verify_connection_proof(&session, &req, &forged).unwrap_err(), ProofError::BadSignature);

        // The untouched signature relabelled as RSA, and the request naming an RSA
        // certificate around the security key's: names are not signed, the key's type
        // decides how the signature verifies — so it would verify, and read as a
        // signature without flags to check.
        let relabelled_req = request("root%pve01", "rsa-sha2-256-cert-v01@openssh.com", &cert);
        let mut signed = Vec::new();
        session.as_slice().encode(&mut signed).unwrap();
        signed.extend_from_slice(&relabelled_req);
        let untouched = sk.sign(&signed, 0);
        let rsa = Algorithm::Rsa { hash: Some(ssh_key::HashAlg::Sha256) };
        let mut relabelled = Vec::new();
        Signature::new(rsa, untouched.as_bytes()).unwrap().encode(&mut relabelled).unwrap();
        assert_eq!(
            verify_connection_proof(&session, &relabelled_req, &relabelled).unwrap_err(),
            ProofError::NotCertificateAuth
        );
    }

    #[test]
    fn no_input_panics() {
        for n in 0..200usize {
            let junk: Vec<u8> = (0..n).map(|i| (i * 31 + n) as u8).collect();
            let _ = verify_connection_proof(&junk, &junk, &junk);
            let _ = verify_connection_proof(&[1; 32], &junk, &junk);
        }
    }
}
