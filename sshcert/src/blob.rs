//! A certificate as it arrives on the wire: one blob, decoded as strictly as OpenSSH.
//!
//! OpenSSH refuses a certificate blob with anything after the signature
//! (`sshkey_from_blob`: "invalid format"). A lenient decoder accepts such a blob as
//! the certificate it starts with, so one certificate has unboundedly many encodings
//! that all authenticate (and hash differently). [`parse_certificate_strict`] refuses
//! them, and says how many bytes were left over.

use ssh_key::Certificate;
use ssh_key::encoding::Decode;

/// Larger than any certificate the CA issues (an RSA-16384 certificate with many
/// principals stays well below it); OpenSSH's own limit on a key blob is similar.
pub const MAX_CERTIFICATE_BLOB: usize = 64 * 1024;

/// Why a certificate blob was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("the certificate blob is larger than {MAX_CERTIFICATE_BLOB} bytes")]
    TooLarge,
    #[error("the blob is not an OpenSSH certificate")]
    Malformed,
    #[error("{0} bytes follow the certificate's signature")]
    TrailingBytes(usize),
}

impl BlobError {
    /// Stable machine-readable code for audit events.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge => "cert_too_large",
            Self::Malformed => "cert_malformed",
            Self::TrailingBytes(_) => "cert_trailing_bytes",
        }
    }
}

/// Decodes the binary certificate (`ssh-ed25519-cert-v01@openssh.com …` without the
/// base64), refusing a blob that does not end exactly where the signature does. Its
/// signature and validity are *not* checked here: that is [`crate::check_user_certificate`].
pub fn parse_certificate_strict(blob: &[u8]) -> Result<Certificate, BlobError> {
    if blob.len() > MAX_CERTIFICATE_BLOB {
        return Err(BlobError::TooLarge);
    }
    let mut rest = blob;
    let certificate = Certificate::decode(&mut rest).map_err(|_| BlobError::Malformed)?;
    if !rest.is_empty() {
        return Err(BlobError::TrailingBytes(rest.len()));
    }
    Ok(certificate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::certificate::{Builder, CertType};
    use ssh_key::rand_core::UnwrapErr;
    use ssh_key::{Algorithm, PrivateKey};

    fn certificate_blob() -> Vec<u8> {
        let mut rng = UnwrapErr(ssh_key::getrandom::SysRng);
        let ca = PrivateKey::random(&mut rng, Algorithm::Ed25519).unwrap();
        let user = PrivateKey::random(&mut rng, Algorithm::Ed25519).unwrap();
        let mut b =
            Builder::new_with_random_nonce(&mut rng, user.public_key().key_data().clone(), 0, u64::MAX).unwrap();
        b.serial(1).unwrap().key_id("alice").unwrap().cert_type(CertType::User).unwrap();
        b.valid_principal("root").unwrap();
        b.sign(&ca).unwrap().to_bytes().unwrap()
    }

    #[test]
    fn exactly_one_certificate_and_nothing_after_it() {
        let blob = certificate_blob();
        assert_eq!(parse_certificate_strict(&blob).unwrap().key_id(), "alice");
        for extra in [&b"\0"[..], b"\0\0\0\0", b"trailing garbage"] {
            let mut longer = blob.clone();
            longer.extend_from_slice(extra);
            assert_eq!(parse_certificate_strict(&longer), Err(BlobError::TrailingBytes(extra.len())));
        }
        // The lenient decoder (what russh 0.65 uses) takes the longer blob.
        let mut longer = blob.clone();
        longer.extend_from_slice(b"xyz");
        assert!(Certificate::decode(&mut longer.as_slice()).is_ok());
    }

    #[test]
    fn truncated_empty_and_oversized_blobs() {
        let blob = certificate_blob();
        for cut in [0, 1, 4, blob.len() / 2, blob.len() - 1] {
            assert_eq!(parse_certificate_strict(&blob[..cut]).unwrap_err(), BlobError::Malformed, "cut at {cut}");
        }
        assert_eq!(parse_certificate_strict(&vec![0; MAX_CERTIFICATE_BLOB + 1]), Err(BlobError::TooLarge));
        assert_eq!(BlobError::TrailingBytes(3).code(), "cert_trailing_bytes");
    }
}
