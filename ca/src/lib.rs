//! Portcullis control plane: authenticates people, asks the policy engine, signs
//! short-lived OpenSSH certificates, keeps the inventory, revocations and a
//! tamper-evident audit log, and serves all of it over an HTTPS API.
//!
//! It must never: sign without a policy `Permit`, take principals or lifetimes from a
//! request, store a private key or password unencrypted/unhashed, or put a secret in a
//! log line, audit record, URL or error message.

pub mod admission;
pub mod api;
pub mod audit;
pub mod backup;
pub mod clock;
pub mod enroll_script;
pub mod error;
pub mod fsutil;
pub mod identity;
pub mod keys;
pub mod policy_files;
pub mod ratelimit;
pub mod sealed;
pub mod server;
pub mod service;
pub mod signer;
pub mod store;
#[cfg(test)]
mod test_rng;
pub mod tls;
pub mod validate;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::CaError;
pub use service::{
    Ca, CaConfig, Caller, Core, DiscoverySettings, IdentityService, Issuance, PveSettings, Recordings, Revocation,
    csrf_token_for,
};
