//! OpenSSH building blocks shared by Portcullis components.
//!
//! - [`keys`]: which user public keys the CA is willing to certify
//!   ([`parse_user_public_key`]), how keys are named in logs and audit events
//!   ([`fingerprint`], byte-for-byte what `ssh-keygen -lf` prints) and the OS
//!   randomness used for serials and tokens ([`random_bytes`]).
//! - [`krl`]: an encoder for OpenSSH Key Revocation Lists ([`KrlBuilder`]),
//!   the file `sshd`'s `RevokedKeys` reads.
//!
//! This crate must never panic on peer-supplied input, never echo a peer's key
//! text (or its comment) into an error, and never touch files or the network:
//! callers decide where keys come from and where a KRL is written.

pub mod keys;
pub mod krl;

pub use keys::{KeyError, MAX_PUBLIC_KEY_LEN, fingerprint, parse_user_public_key, random_bytes};
pub use krl::KrlBuilder;
