//! The bastion (data plane) and the edge agent.
//!
//! - The **front door** (`server`, `handler`): an SSH listener (russh) that authenticates
//!   **only** OpenSSH user certificates signed by the CA's trusted user-CA keys, checked
//!   by [`portcullis_sshcert::check_user_certificate`] against the CA's current KRL.
//! - **Sessions** (`broker`, `terminated`, `jump`, `sessions`): every session is decided
//!   by the CA (`control`), which also holds the concurrency leases; the bastion relays
//!   through the device's edge agent and enforces idle, absolute and expiry limits and
//!   the CA's close orders.
//! - **Agents** (`agent_hub` on the bastion, `edge` in the agent): agents dial out and
//!   authenticate with internal certificates; the bastion opens channels to them.
//!
//! What it must never do: accept a plain public key, a password or keyboard-interactive
//! login; accept anything before trust material has been loaded (fail closed); log key
//! material or terminal contents; interpret the bytes it relays.

mod agent_hub;
mod agent_listener;
mod algorithms;
mod broker;
mod ca_client;
mod clock;
mod closes;
pub mod console;
mod control;
mod discovery;
pub mod edge;
mod error;
mod events;
mod grace;
mod handler;
mod host_keys;
mod jump;
mod listen;
mod logged_in;
mod login;
pub mod metrics;
mod pve;
mod recording;
mod run_limit;
mod server;
mod sessions;
mod shared;
mod startups;
mod terminated;
mod trust;
pub mod web;

pub use agent_hub::BrokerError;
pub use algorithms::KexProfile;
pub use ca_client::InProcessCa;
pub use clock::{Clock, SystemClock};
pub use control::{ControlConfig, ControlError, ControlPlane};
pub use error::BastionError;
pub use events::{BastionEvent, EventSink, RefusalReason, escape_for_log};
pub use listen::raise_open_files_limit;
pub use login::{RequestedLogin, acceptable_principals};
pub use server::{Bastion, BastionConfig};
pub use sessions::{Limits, LiveSession};
pub use startups::StartupLimits;
pub use trust::{TrustConfig, TrustError, TrustSnapshot, TrustSource};

/// The vendored russh keeps its queue messages small (`third_party/russh/PATCHES.md`):
/// a Tokio queue allocates a block of 32 slots when it is created and each SSH
/// connection creates four or five, so a message's size is paid about 150 times per
/// connection, idle or not. Unpatched, a client `Msg` holds a certificate inline (552
/// bytes: ~17 KiB per queue).
#[cfg(test)]
mod russh_queue_slots {
    #[test]
    fn russh_queue_messages_stay_small() {
        let client = size_of::<russh::client::Msg>();
        let server = size_of::<russh::server::Msg>();
        assert!(client <= 96, "russh::client::Msg is {client} bytes");
        assert!(server <= 96, "russh::server::Msg is {server} bytes");
    }
}

/// A session's task keeps the memory of its future's largest state for the session's
/// whole life, so what an idle session costs is mostly decided here, at compile time.
#[cfg(test)]
mod session_task_sizes {
    use std::future::Future;

    fn future_size<A, B, C, D, F: Future>(_: fn(A, B, C, D) -> F) -> usize {
        size_of::<F>()
    }

    fn future_size5<A, B, C, D, E, F: Future>(_: fn(A, B, C, D, E) -> F) -> usize {
        size_of::<F>()
    }

    #[test]
    fn idle_session_tasks_stay_small() {
        let terminated = future_size5(crate::terminated::run);
        let jump = future_size(crate::jump::run);
        // 16,352 and 9,008 bytes when each relay's pump was moved into `relay` (stored
        // twice, and its parts twice inside it) and admission and the onward login were
        // inline.
        assert!(terminated <= 6 * 1024, "terminated::run is {terminated} bytes");
        assert!(jump <= 4 * 1024, "jump::run is {jump} bytes");
    }
}
