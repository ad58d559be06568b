//! Test harness: starts the real binaries (`portcullisd`) and real peers (PostgreSQL,
//! `ssh-keygen`) for the integration and end-to-end tests in `tests/tests/`.
//!
//! Everything here runs only inside tests. It never touches a system service: every
//! server gets its own temporary directory and a port chosen by the OS.

// This is test code: a failed expectation here must fail the test loudly, so unwrap,
// expect, panic and indexing are the right tools (the workspace denies them for code a
// peer can reach, which this is not).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

pub mod bastion_world;
pub mod bins;
pub mod browser;
pub mod cli;
pub mod enroll_ca;
pub mod enroll_node;
pub mod fakepve;
pub mod idp;
pub mod inprocess;
pub mod postgres;
pub mod procfs;
pub mod replica;
pub mod server;
pub mod services;
pub mod slapd;
pub mod small_disk;
pub mod ssh;
pub mod sshd;
pub mod websocket;

pub use bins::bin;
pub use inprocess::{
    FIRST_ADMIN_PASSWORD, ServedCa, TEST_PASSPHRASE, audit_payloads, bastion_b1, ca_in_process, first_admin, same_ca,
    sqlite_url,
};
pub use postgres::Postgres;
pub use server::{Server, ServerOpts};

/// A benchmark's numeric setting from the environment (`default` when unset); a value
/// that does not parse stops the run, so a typo never measures the default silently.
pub fn bench_setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a non-negative integer")),
        Err(_) => default,
    }
}
