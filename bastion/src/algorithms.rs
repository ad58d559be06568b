//! The SSH algorithms the bastion offers on its listeners and prefers on the connections
//! it opens itself (onward logins, discovery, the agent's link).

use std::borrow::Cow;

use russh::{Preferred, cipher, kex, mac};
use ssh_key::{Algorithm, EcdsaCurve, HashAlg};

/// The key exchange methods the bastion offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KexProfile {
    /// `mlkem768x25519-sha256` first, then X25519 for clients older than OpenSSH 9.9
    /// (ssh-audit: 0 fail, 2 warn — X25519 alone is not post-quantum).
    #[default]
    Compatible,
    /// The post-quantum hybrid only (ssh-audit: 0 fail, 0 warn). Clients need
    /// `mlkem768x25519-sha256`: OpenSSH 9.9 or later; older ones are refused at key
    /// exchange ("no matching key exchange method").
    Strict,
}

impl std::str::FromStr for KexProfile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "compatible" => Ok(Self::Compatible),
            "strict" => Ok(Self::Strict),
            other => Err(format!("unknown key exchange profile {other:?} (compatible or strict)")),
        }
    }
}

/// Only modern algorithms (what `ssh-audit` wants): hybrid post-quantum and (unless
/// `strict`) X25519 key exchange, AEAD ciphers, encrypt-then-MAC. The extension markers
/// keep `ext-info` and strict key exchange (the Terrapin fix) on.
/// sntrup761x25519-sha512 is not offered by russh 0.65.
pub(crate) fn preferred(profile: KexProfile) -> Preferred {
    let kex = match profile {
        KexProfile::Compatible => COMPATIBLE_KEX,
        KexProfile::Strict => STRICT_KEX,
    };
    preferred_with(kex, &[cipher::CHACHA20_POLY1305, cipher::AES_256_GCM, cipher::AES_128_GCM])
}

const COMPATIBLE_KEX: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::EXTENSION_SUPPORT_AS_CLIENT,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

const STRICT_KEX: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::EXTENSION_SUPPORT_AS_CLIENT,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

/// For the connections the bastion and agent open themselves (onward logins, discovery,
/// the agent's link), where our order decides: AES-GCM first, which x86-64 and ARMv8
/// run in hardware (the bastion bench saw the node's sshd spend about a third more CPU
/// per GiB in terminated mode, consistent with ChaCha20-Poly1305), the same set otherwise.
pub(crate) fn preferred_client() -> Preferred {
    preferred_with(COMPATIBLE_KEX, &[cipher::AES_128_GCM, cipher::AES_256_GCM, cipher::CHACHA20_POLY1305])
}

fn preferred_with(kex: &'static [kex::Name], ciphers: &'static [cipher::Name]) -> Preferred {
    Preferred {
        kex: Cow::Borrowed(kex),
        // The host key is Ed25519 only (the one key we hold); the others are user
        // signature algorithms. No ssh-rsa (SHA-1) and no P-521 (the CA does not
        // certify it).
        key: Cow::Owned(vec![
            Algorithm::Ed25519,
            Algorithm::Ecdsa { curve: EcdsaCurve::NistP256 },
            Algorithm::Ecdsa { curve: EcdsaCurve::NistP384 },
            Algorithm::Rsa { hash: Some(HashAlg::Sha512) },
            Algorithm::Rsa { hash: Some(HashAlg::Sha256) },
        ]),
        host_key_certificates: Cow::Borrowed(&[]),
        cipher: Cow::Borrowed(ciphers),
        mac: Cow::Borrowed(&[mac::HMAC_SHA512_ETM, mac::HMAC_SHA256_ETM]),
        compression: Cow::Borrowed(&[russh::compression::NONE]),
    }
}
