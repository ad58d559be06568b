//! The bastion's SSH front door.
//!
//! What exists: an SSH listener (russh) that authenticates **only** OpenSSH user
//! certificates signed by the CA's trusted user-CA keys, checked by
//! [`portcullis_sshcert::check_user_certificate`] against the CA's current KRL; trust
//! material fetched from the CA's public endpoints over pinned TLS and refreshed in the
//! background; one typed event per authentication decision.
//!
//! What it must never do: accept a plain public key, a password or keyboard-interactive
//! login; accept anything before trust material has been loaded (fail closed); log key
//! material. After authentication every channel and global request is refused: the
//! terminated and jump modes (issue 6) are not implemented yet, and this crate does not
//! pretend they are.

mod clock;
mod error;
mod events;
mod handler;
mod login;
mod server;
mod trust;

pub use clock::{Clock, SystemClock};
pub use error::BastionError;
pub use events::{BastionEvent, EventSink, RefusalReason};
pub use login::{RequestedLogin, acceptable_principals};
pub use server::{Bastion, BastionConfig, NOT_IMPLEMENTED_MESSAGE};
pub use trust::{TrustConfig, TrustError, TrustSnapshot, TrustSource};
