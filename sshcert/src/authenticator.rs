//! What a security key (an `sk-` key, FIDO) confirmed when it signed, held against what
//! the certificate asks — as OpenSSH's sshd decides it once a signature verified
//! (`auth2-pubkey.c`): a touch (user presence) unless the certificate carries the
//! `no-touch-required` extension, and user verification (a PIN or biometric) when it
//! carries the `verify-required` critical option.
//!
//! One way stricter than sshd, which ignores `verify-required` for a key that is not a
//! security key: such a signature is refused here, as one that cannot show user
//! verification — and the CA does not certify such a key under that option — so a
//! role's requirement never silently lapses.
//!
//! Used by the bastion on every certificate login and by the CA on every connection
//! proof, so a bastion that has been taken over cannot pass on a proof the user's
//! security key made without the confirmation the certificate asks for.
//!
//! Whether there are flags to read is decided by the *certificate's* key, never by the
//! algorithm name on the signature: that name is not signed, and the signature is
//! verified by the key's type whatever it says (an sk signature relabelled `rsa-sha2-256`
//! verifies all the same, and would otherwise read as a signature without flags).

use ssh_key::public::KeyData;
use ssh_key::{Certificate, Signature};

/// The extension with which a certificate lets a security key sign without a touch.
pub const NO_TOUCH_REQUIRED: &str = "no-touch-required";
/// The critical option that asks for user verification on every signature.
pub const VERIFY_REQUIRED: &str = "verify-required";
/// A security key's signature flags (FIDO `UP` and `UV`, as OpenSSH's `sk-api.h`).
pub const USER_PRESENCE: u8 = 0x01;
pub const USER_VERIFICATION: u8 = 0x04;
/// An sk signature ends with `byte flags, uint32 counter` (OpenSSH's PROTOCOL.u2f).
const SK_TRAILER: usize = 5;

/// What the signature's security key did not confirm that the certificate asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unconfirmed {
    #[error("the security key signed without a touch, which the certificate requires")]
    Presence,
    #[error(
        "the certificate requires user verification (a security key's PIN or biometric), which the signature lacks"
    )]
    Verification,
}

impl Unconfirmed {
    /// Stable machine-readable code for audit events.
    pub fn code(&self) -> &'static str {
        match self {
            Unconfirmed::Presence => "user_presence_missing",
            Unconfirmed::Verification => "user_verification_missing",
        }
    }
}

/// Whether `key` is a security key's (`sk-`): the only kind whose signatures can show
/// user verification, so the only kind the CA certifies under `verify-required`.
pub fn is_security_key(key: &KeyData) -> bool {
    matches!(key, KeyData::SkEd25519(_) | KeyData::SkEcdsaSha2NistP256(_))
}

/// What the security key that made `signature` with `key` confirmed (its flags); `None`
/// when `key` is not a security key's. A signature not of the key's own algorithm
/// confirmed nothing (0). The flags are covered by the signature: ask only about a
/// signature that verified.
pub fn confirmed_flags(key: &KeyData, signature: &Signature) -> Option<u8> {
    if !is_security_key(key) {
        return None;
    }
    let data = signature.as_bytes();
    // ssh-key decodes an sk signature only with its trailer.
    let flags = data.len().checked_sub(SK_TRAILER).and_then(|at| data.get(at)).copied().unwrap_or(0);
    Some(if signature.algorithm() == key.algorithm() { flags } else { 0 })
}

/// Whether a security key's `flags` (from [`confirmed_flags`]) show a touch.
pub fn touched(flags: Option<u8>) -> bool {
    flags.is_none_or(|f| f & USER_PRESENCE != 0)
}

/// What a signature's key confirmed, for deciding again later what a role asks (the CA
/// keeps it with each session a connection proof opened, and every heartbeat holds it
/// against the role the session runs under). A key that is not a security key's counts
/// as touched (sshd asks it for no touch) and never as verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    pub touched: bool,
    pub verified: bool,
}

impl Confirmed {
    /// What `flags` (from [`confirmed_flags`]) confirm.
    pub fn of(flags: Option<u8>) -> Self {
        Self { touched: touched(flags), verified: flags.is_some_and(|f| f & USER_VERIFICATION != 0) }
    }

    /// As kept: the FIDO bits it stands for ([`USER_PRESENCE`], [`USER_VERIFICATION`]).
    pub fn bits(self) -> u8 {
        (if self.touched { USER_PRESENCE } else { 0 }) | (if self.verified { USER_VERIFICATION } else { 0 })
    }

    /// The inverse of [`Confirmed::bits`]; other bits are ignored.
    pub fn from_bits(bits: u8) -> Self {
        Self { touched: bits & USER_PRESENCE != 0, verified: bits & USER_VERIFICATION != 0 }
    }
}

/// Checks what `signature`'s security key confirmed against `cert` (see the module
/// documentation). The flags are covered by the signature: call this only with a
/// signature that verified over this connection.
pub fn check_authenticator(cert: &Certificate, signature: &Signature) -> Result<(), Unconfirmed> {
    let verify_required = cert.critical_options().contains_key(VERIFY_REQUIRED);
    let Some(flags) = confirmed_flags(cert.public_key(), signature) else {
        return if verify_required { Err(Unconfirmed::Verification) } else { Ok(()) };
    };
    if !touched(Some(flags)) && !cert.extensions().contains_key(NO_TOUCH_REQUIRED) {
        return Err(Unconfirmed::Presence);
    }
    if flags & USER_VERIFICATION == 0 && verify_required {
        return Err(Unconfirmed::Verification);
    }
    Ok(())
}

// Tests may panic: a failed unwrap is a failed test.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use ssh_key::certificate::{Builder, CertType};
    use ssh_key::public::{KeyData, SkEd25519};
    use ssh_key::rand_core::UnwrapErr;
    use ssh_key::{Algorithm, PrivateKey, getrandom::SysRng};

    /// A software stand-in for a security key: an Ed25519 key signing what a FIDO
    /// authenticator signs, with the flags the test chooses.
    pub(crate) struct SecurityKey(PrivateKey);

    impl SecurityKey {
        const APPLICATION: &'static str = "ssh:";

        pub(crate) fn new() -> Self {
            Self(PrivateKey::random(&mut UnwrapErr(SysRng), Algorithm::Ed25519).unwrap())
        }

        pub(crate) fn public(&self) -> KeyData {
            let point = *self.0.public_key().key_data().ed25519().unwrap();
            KeyData::SkEd25519(SkEd25519::new(point, Self::APPLICATION))
        }

        /// `sha256(application) || flags || counter || sha256(message)`, signed.
        pub(crate) fn sign(&self, message: &[u8], flags: u8) -> Signature {
            let counter = 7u32.to_be_bytes();
            let mut signed = Sha256::digest(Self::APPLICATION).to_vec();
            signed.push(flags);
            signed.extend(counter);
            signed.extend(Sha256::digest(message));
            let inner: Signature = signature::Signer::try_sign(&self.0, &signed).unwrap();
            let mut data = inner.as_bytes().to_vec();
            data.push(flags);
            data.extend(counter);
            Signature::new(Algorithm::SkEd25519, data).unwrap()
        }
    }

    pub(crate) fn certificate(key: KeyData, shape: impl FnOnce(&mut Builder)) -> Certificate {
        let ca = PrivateKey::random(&mut UnwrapErr(SysRng), Algorithm::Ed25519).unwrap();
        let mut b = Builder::new_with_random_nonce(&mut UnwrapErr(SysRng), key, 0, u64::MAX >> 1).unwrap();
        b.serial(7).unwrap().key_id("alice").unwrap().cert_type(CertType::User).unwrap();
        b.valid_principal("pc_0123456789ab_root").unwrap();
        shape(&mut b);
        b.sign(&ca).unwrap()
    }

    #[test]
    fn a_security_key_must_confirm_what_the_certificate_asks() {
        let sk = SecurityKey::new();
        let plain = certificate(sk.public(), |_| {});
        let untouched = certificate(sk.public(), |b| {
            b.extension(NO_TOUCH_REQUIRED, "").unwrap();
        });
        let verified = certificate(sk.public(), |b| {
            b.critical_option(VERIFY_REQUIRED, "").unwrap();
        });
        let both = certificate(sk.public(), |b| {
            b.extension(NO_TOUCH_REQUIRED, "").unwrap();
            b.critical_option(VERIFY_REQUIRED, "").unwrap();
        });
        let (none, touch, pin, touch_pin) = (0, USER_PRESENCE, USER_VERIFICATION, USER_PRESENCE | USER_VERIFICATION);
        let cases = [
            (&plain, touch, Ok(())),
            (&plain, touch_pin, Ok(())),
            (&plain, none, Err(Unconfirmed::Presence)),
            (&plain, pin, Err(Unconfirmed::Presence)),
            // Other flag bits confirm nothing.
            (&plain, !touch, Err(Unconfirmed::Presence)),
            (&untouched, none, Ok(())),
            (&verified, touch, Err(Unconfirmed::Verification)),
            (&verified, touch_pin, Ok(())),
            (&verified, pin, Err(Unconfirmed::Presence)),
            (&both, pin, Ok(())),
            (&both, none, Err(Unconfirmed::Verification)),
        ];
        for (cert, flags, expected) in cases {
            assert_eq!(check_authenticator(cert, &sk.sign(b"m", flags)), expected, "flags {flags:#04x}");
        }
        // The signature's algorithm name is not signed: a touched-looking signature under
        // another name confirms nothing (the key's type decides how it verifies).
        let touched_sig = sk.sign(b"m", touch);
        let relabelled =
            Signature::new(Algorithm::Rsa { hash: Some(ssh_key::HashAlg::Sha256) }, touched_sig.as_bytes());
        assert_eq!(check_authenticator(&plain, &relabelled.unwrap()), Err(Unconfirmed::Presence));
        assert_eq!(check_authenticator(&untouched, &sk.sign(b"m", none)), Ok(()));
    }

    #[test]
    fn a_key_that_is_not_a_security_key_cannot_show_user_verification() {
        let key = PrivateKey::random(&mut UnwrapErr(SysRng), Algorithm::Ed25519).unwrap();
        let signature: Signature = signature::Signer::try_sign(&key, b"m").unwrap();
        let plain = certificate(key.public_key().key_data().clone(), |_| {});
        assert_eq!(check_authenticator(&plain, &signature), Ok(()));
        let verified = certificate(key.public_key().key_data().clone(), |b| {
            b.critical_option(VERIFY_REQUIRED, "").unwrap();
        });
        assert_eq!(check_authenticator(&verified, &signature), Err(Unconfirmed::Verification));
        assert_eq!(Confirmed::of(confirmed_flags(key.public_key().key_data(), &signature)).bits(), USER_PRESENCE);
    }

    /// What is kept of a signature's flags reads back as it was, and only the touch and
    /// the verification count (a FIDO authenticator sets other bits too).
    #[test]
    fn confirmations_are_kept_as_the_fido_bits() {
        for flags in 0..=u8::MAX {
            let confirmed = Confirmed::of(Some(flags));
            assert_eq!(confirmed, Confirmed::from_bits(confirmed.bits()));
            assert_eq!(confirmed.bits(), flags & (USER_PRESENCE | USER_VERIFICATION));
        }
        assert_eq!(Confirmed::of(None), Confirmed { touched: true, verified: false });
    }
}
