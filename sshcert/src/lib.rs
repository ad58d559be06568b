//! OpenSSH building blocks shared by Portcullis components.
//!
//! - [`keys`]: which user public keys the CA is willing to certify
//!   ([`parse_user_public_key`]), how keys are named in logs and audit events
//!   ([`fingerprint`], byte-for-byte what `ssh-keygen -lf` prints) and the OS
//!   randomness used for serials and tokens ([`random_bytes`]).
//! - [`krl`]: an encoder for OpenSSH Key Revocation Lists ([`KrlBuilder`]),
//!   the file `sshd`'s `RevokedKeys` reads.
//! - [`krl_parse`]: the matching decoder ([`Krl::parse`]) and the revocation
//!   check OpenSSH applies ([`Krl::is_revoked`]).
//! - [`blob`]: a certificate blob decoded as strictly as OpenSSH does
//!   ([`parse_certificate_strict`]: nothing may follow the signature).
//! - [`check`]: everything a server must check on a user certificate beyond
//!   its own signature ([`check_user_certificate`]), for the bastion.
//! - [`authenticator`]: what a security key's signature must confirm (a touch, user
//!   verification) under a certificate ([`check_authenticator`]).
//!
//! This crate must never panic on peer-supplied input, never echo a peer's key
//! text (or its comment) into an error, and never touch files or the network:
//! callers decide where keys come from and where a KRL is written.

pub mod authenticator;
pub mod blob;
pub mod check;
pub mod keys;
pub mod krl;
pub mod krl_parse;
pub mod proof;

pub use authenticator::{Confirmed, Unconfirmed, check_authenticator, is_security_key};
pub use blob::{BlobError, MAX_CERTIFICATE_BLOB, parse_certificate_strict};
pub use check::{AcceptedCert, CheckContext, Rejection, check_user_certificate, cidr_contains, parse_cidr};
pub use keys::{KeyError, MAX_PUBLIC_KEY_LEN, certificate_digest, fingerprint, parse_user_public_key, random_bytes};
pub use krl::KrlBuilder;
pub use krl_parse::{Krl, KrlError, MAX_KRL_LEN};
pub use proof::{ProofError, ProvenRequest, signature_fits_key, verify_connection_proof};
