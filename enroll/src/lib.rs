//! `portcullis-enroll`: makes an OpenSSH node (Proxmox VE first) trust the Portcullis CA,
//! keeps that trust fresh, and takes it away again.
//!
//! What it must never do: lock anyone out. It never regenerates host keys and never
//! touches authorized_keys files, `PermitRootLogin`, `AuthorizedKeysFile`,
//! `Allow*`/`Deny*`, `AuthenticationMethods` or `Match` blocks; it adds one drop-in
//! (`sshd_config.d/60-portcullis.conf`) and files under `/etc/ssh/portcullis/` (with
//! `--discovery` also the discovery command, a sudoers drop-in and one account), writes
//! them atomically under a journal ([`txn`]), proves a real login works before
//! committing, and otherwise restores the original bytes.

pub mod account;
pub mod addresses;
pub mod args;
pub mod client;
pub mod commands;
mod discovery;
pub mod error;
pub mod failpoint;
pub mod fsx;
pub mod lock;
pub mod plan;
pub mod preflight;
pub mod proof;
pub mod refresh;
pub mod report;
pub mod root;
pub mod run;
pub mod secret;
pub mod sshd;
pub mod sshd_config;
pub mod state;
pub mod txn;

pub use error::{Error, Result};
