//! The bastion end to end with real OpenSSH on both sides: stock `ssh`, `scp` and
//! `sftp` through the all-in-one's bastion and its built-in edge agent to a throwaway
//! `sshd` listening on port 22 of its own loopback address, in terminated mode
//! (`root%node@bastion`, per-session certificate) and jump mode (`ProxyJump`, the
//! user's own certificate end to end); limits and close orders end live sessions with
//! the reason shown to the user and audited.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_tests::bastion_world::{
    NewNode, World, add_node_with, loopback_ip, policy, policy_with, text, wait_output,
};
use portcullis_tests::server::write_file;
use portcullis_tests::ssh::{ed25519_key, public_line};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

mod lifecycle;
mod routes;
mod transfer;
