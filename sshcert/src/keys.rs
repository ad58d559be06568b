//! Which user public keys the CA will certify, and how keys are named.
//!
//! Guarantees: [`parse_user_public_key`] never panics, whatever the input; a key
//! it returns is a plain (non-certificate) key of an allow-listed algorithm with
//! an empty comment; and no [`KeyError`] message contains any part of the input,
//! so errors can be shown to the user and written to logs as they are.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ssh_key::getrandom::SysRng;
use ssh_key::public::KeyData;
use ssh_key::rand_core::{Rng as _, UnwrapErr};
use ssh_key::{EcdsaCurve, HashAlg, PublicKey};

/// Longest OpenSSH public key line accepted. A 16384-bit RSA key (the largest
/// OpenSSH will use) is about 2.8 KiB of text, so anything beyond this is not a
/// key we would certify and is refused before any decoding work.
pub const MAX_PUBLIC_KEY_LEN: usize = 16 * 1024;

/// Smallest RSA modulus accepted (NIST SP 800-57: 3072 bits for use past 2030).
pub const MIN_RSA_BITS: u32 = 3072;

/// Largest RSA modulus accepted; OpenSSH refuses larger keys, so a certificate
/// for one would be useless, and huge moduli make every verification slow.
pub const MAX_RSA_BITS: u32 = 16384;

/// Accepted algorithm names, as they appear at the start of a `.pub` line.
pub const ACCEPTED_ALGORITHMS: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Algorithms OpenSSH knows but this CA refuses. Only these names (never the
/// peer's own text) are ever put into [`KeyError::UnsupportedAlgorithm`].
const REFUSED_ALGORITHMS: &[&str] = &["ssh-dss", "ecdsa-sha2-nistp521", "ssh-xmss@openssh.com"];

/// What [`KeyError::UnsupportedAlgorithm`] carries for a name we do not know.
const UNRECOGNISED: &str = "unrecognised";

/// Suffix of every OpenSSH certificate algorithm name.
const CERT_SUFFIX: &str = "-cert-v01@openssh.com";

/// Why a submitted public key was refused. Messages are safe to show the user
/// and to log: they name the rule that failed, never the submitted text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the public key is empty")]
    Empty,
    #[error("the public key is longer than {MAX_PUBLIC_KEY_LEN} bytes")]
    TooLarge,
    #[error("expected a single public key line, got several lines")]
    MultipleLines,
    #[error("this looks like a private key; send the public key (the .pub file) instead")]
    PrivateKey,
    #[error("this is a certificate; send the plain public key (the .pub file, not -cert.pub)")]
    Certificate,
    #[error("not a well-formed OpenSSH public key line")]
    Malformed,
    #[error(
        "key algorithm {0} is not in this CA's allow-list (accepted: ssh-ed25519, \
         ecdsa-sha2-nistp256, ecdsa-sha2-nistp384, ssh-rsa of at least 3072 bits, \
         sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com)"
    )]
    UnsupportedAlgorithm(String),
    #[error("the RSA key is {bits} bits; at least {MIN_RSA_BITS} bits are required")]
    RsaTooSmall { bits: u32 },
    #[error("the RSA key is {bits} bits; at most {MAX_RSA_BITS} bits are accepted")]
    RsaTooLarge { bits: u32 },
}

impl KeyError {
    /// Stable machine-readable code for audit events and API responses; unlike
    /// the message it will not change wording.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Self::Empty => "key_empty",
            Self::TooLarge => "key_too_large",
            Self::MultipleLines => "key_multiple_lines",
            Self::PrivateKey => "key_is_private",
            Self::Certificate => "key_is_certificate",
            Self::Malformed => "key_malformed",
            Self::UnsupportedAlgorithm(_) => "key_algorithm_unsupported",
            Self::RsaTooSmall { .. } => "key_rsa_too_small",
            Self::RsaTooLarge { .. } => "key_rsa_too_large",
        }
    }
}

/// Parse one OpenSSH public key line (`<algorithm> <base64> [comment]`) that a
/// user wants certified, applying the CA's acceptance rules.
///
/// The comment is discarded before decoding: it is peer-chosen text and must
/// not flow into certificates or logs.
pub fn parse_user_public_key(openssh_line: &str) -> Result<PublicKey, KeyError> {
    // Size first, on the untrimmed input, so no further work is spent on a flood.
    if openssh_line.len() > MAX_PUBLIC_KEY_LEN {
        return Err(KeyError::TooLarge);
    }
    let line = openssh_line.trim();
    if line.is_empty() {
        return Err(KeyError::Empty);
    }
    // Checked before the line count: a pasted private key is multi-line, and
    // "that is your private key" is the error the user needs to see.
    let pem_private = line.starts_with("-----BEGIN") && line.contains("PRIVATE KEY-----");
    if pem_private || line.starts_with("PuTTY-User-Key-File-") {
        return Err(KeyError::PrivateKey);
    }
    if line.contains(['\n', '\r']) {
        return Err(KeyError::MultipleLines);
    }
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(KeyError::Malformed);
    }

    let mut fields = line.split_ascii_whitespace();
    let (Some(algorithm), Some(base64)) = (fields.next(), fields.next()) else {
        return Err(KeyError::Malformed);
    };
    check_algorithm_name(algorithm)?;

    // Re-assembled without the comment, and with OpenSSH's tab separators
    // (which ssh-key does not accept) normalised to a single space.
    let mut key = PublicKey::from_openssh(&format!("{algorithm} {base64}")).map_err(|_| KeyError::Malformed)?;
    check_key_data(key.key_data())?;
    // ssh-key has already verified the text name matches the blob's own
    // algorithm; this re-check guards against that ever changing upstream.
    if key.algorithm().as_str() != algorithm {
        return Err(KeyError::Malformed);
    }
    key.set_comment("");
    Ok(key)
}

/// Rejects by name before any base64 decoding, so refusals of well-known
/// algorithms are clear even when the blob would not decode.
fn check_algorithm_name(name: &str) -> Result<(), KeyError> {
    if name.ends_with(CERT_SUFFIX) {
        return Err(KeyError::Certificate);
    }
    if ACCEPTED_ALGORITHMS.contains(&name) {
        return Ok(());
    }
    let known = REFUSED_ALGORITHMS.iter().find(|refused| **refused == name);
    Err(KeyError::UnsupportedAlgorithm(known.copied().unwrap_or(UNRECOGNISED).to_owned()))
}

/// The authoritative check, on the decoded key rather than its label.
fn check_key_data(key: &KeyData) -> Result<(), KeyError> {
    match key {
        KeyData::Ed25519(_) | KeyData::SkEd25519(_) | KeyData::SkEcdsaSha2NistP256(_) => Ok(()),
        KeyData::Ecdsa(ecdsa) => match ecdsa.curve() {
            EcdsaCurve::NistP256 | EcdsaCurve::NistP384 => Ok(()),
            EcdsaCurve::NistP521 => Err(unsupported("ecdsa-sha2-nistp521")),
        },
        KeyData::Rsa(rsa) => {
            let bits = modulus_bits(rsa.n().as_positive_bytes()).ok_or(KeyError::Malformed)?;
            if bits < MIN_RSA_BITS {
                Err(KeyError::RsaTooSmall { bits })
            } else if bits > MAX_RSA_BITS {
                Err(KeyError::RsaTooLarge { bits })
            } else {
                Ok(())
            }
        }
        KeyData::Dsa(_) => Err(unsupported("ssh-dss")),
        KeyData::Certificate(_) => Err(KeyError::Certificate),
        _ => Err(unsupported(UNRECOGNISED)),
    }
}

fn unsupported(name: &str) -> KeyError {
    KeyError::UnsupportedAlgorithm(name.to_owned())
}

/// Exact bit length of a big-endian modulus, as OpenSSH's `BN_num_bits` counts
/// it. ssh-key's own `key_size()` rounds up to whole bytes, which would let a
/// 3065-bit modulus pass as 3072.
fn modulus_bits(positive_be: Option<&[u8]>) -> Option<u32> {
    let bytes = positive_be?;
    let first = bytes.iter().position(|b| *b != 0)?;
    let significant = bytes.get(first..)?;
    let leading = significant.first()?.leading_zeros();
    u32::try_from(significant.len()).ok()?.checked_mul(8)?.checked_sub(leading)
}

/// SHA-256 fingerprint in OpenSSH's notation, `SHA256:<unpadded base64>`,
/// identical to what `ssh-keygen -lf` prints. For a certificate this is the
/// fingerprint of the certified key, again as `ssh-keygen -lf` does.
pub fn fingerprint(key: &KeyData) -> String {
    let plain = key.certificate().map_or(key, |cert| cert.public_key());
    let digest = plain.fingerprint(HashAlg::Sha256);
    format!("SHA256:{}", STANDARD_NO_PAD.encode(digest.as_bytes()))
}

/// SHA-256 of a certificate's whole wire encoding (key, serial, principals, validity,
/// options, signature), `SHA256:<unpadded base64>`: what names *this* certificate,
/// where [`fingerprint`] names only its key. The CA records it at issuance, and a
/// certificate presented under a serial must have the digest the CA issued under it.
pub fn certificate_digest(cert: &ssh_key::Certificate) -> Option<String> {
    use sha2::{Digest, Sha256};
    let blob = cert.to_bytes().ok()?;
    Some(format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(blob))))
}

/// `N` bytes from the operating system's CSPRNG, for serials, nonces and tokens.
///
/// Panics only if the OS cannot supply randomness: no peer can cause that, and
/// carrying on without randomness would be worse than stopping.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    UnwrapErr(SysRng).fill_bytes(&mut out);
    out
}

// Tests may panic: a failed unwrap is a failed test.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_bits_counts_exactly() {
        assert_eq!(modulus_bits(Some(&[0x01])), Some(1));
        assert_eq!(modulus_bits(Some(&[0x80, 0x00])), Some(16));
        assert_eq!(modulus_bits(Some(&[0x00, 0x7f, 0x00])), Some(15));
        let mut n = vec![0xffu8; 384];
        assert_eq!(modulus_bits(Some(&n)), Some(3072));
        n[0] = 0x01;
        assert_eq!(modulus_bits(Some(&n)), Some(3065));
        assert_eq!(modulus_bits(Some(&[])), None);
        assert_eq!(modulus_bits(Some(&[0, 0])), None);
        assert_eq!(modulus_bits(None), None);
    }

    #[test]
    fn algorithm_names_are_sorted_into_the_right_errors() {
        assert_eq!(check_algorithm_name("ssh-ed25519"), Ok(()));
        assert_eq!(check_algorithm_name("ssh-ed25519-cert-v01@openssh.com"), Err(KeyError::Certificate));
        assert_eq!(check_algorithm_name("ecdsa-sha2-nistp521"), Err(unsupported("ecdsa-sha2-nistp521")));
        assert_eq!(check_algorithm_name("ssh-dss"), Err(unsupported("ssh-dss")));
        // The peer's text is never echoed back.
        assert_eq!(check_algorithm_name("<script>"), Err(unsupported(UNRECOGNISED)));
    }

    #[test]
    fn errors_never_echo_the_input() {
        let secret = "ssh-frobnicate AAAAsecretsecret user@secret-host";
        let err = parse_user_public_key(secret).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(!shown.contains("frobnicate"), "{shown}");
    }

    #[test]
    fn random_bytes_differ_between_calls() {
        let a = random_bytes::<32>();
        let b = random_bytes::<32>();
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 32]);
        assert_eq!(random_bytes::<0>(), []);
    }

    #[test]
    fn reason_codes_are_distinct() {
        let all = [
            KeyError::Empty,
            KeyError::TooLarge,
            KeyError::MultipleLines,
            KeyError::PrivateKey,
            KeyError::Certificate,
            KeyError::Malformed,
            KeyError::UnsupportedAlgorithm(String::new()),
            KeyError::RsaTooSmall { bits: 0 },
            KeyError::RsaTooLarge { bits: 0 },
        ];
        let mut codes: Vec<_> = all.iter().map(KeyError::reason_code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}
