//! Command-line arguments.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Make this node trust the Portcullis SSH CA — safely, idempotently, reversibly.
///
/// Exit codes: 0 done or no changes; 1 failed before any change; 2 usage; 3 refused by
/// preflight (nothing changed); 4 failed and rolled back; 5 the CA refused or was
/// unreachable (nothing changed); 6 rollback incomplete (kept journal; the next run
/// completes it); 7 another run holds the lock (nothing changed); 8 `status`: enrolled
/// but needs repair; 9 `remove`: files restored but the CA did not deregister the node.
#[derive(Debug, Parser)]
#[command(name = "portcullis-enroll", version)]
pub struct Cli {
    /// Apply everything under this directory instead of `/` (tests, image builds).
    #[arg(long, global = true, default_value = "/")]
    pub root: PathBuf,
    /// Show what would change; change nothing.
    #[arg(long, global = true)]
    pub check: bool,
    /// Print one JSON result on stdout instead of progress lines.
    #[arg(long, global = true)]
    pub json: bool,
    /// The sshd binary used for `sshd -t` and `sshd -T`.
    #[arg(long, global = true, default_value = "/usr/sbin/sshd")]
    pub sshd: PathBuf,
    /// Wait at most this many seconds for another run to finish, then refuse (exit 7).
    #[arg(long, global = true, default_value_t = 60)]
    pub lock_wait: u64,
    /// Shell command that reloads sshd (default: `systemctl reload <service>`).
    #[arg(long, global = true)]
    pub reload_cmd: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll this node with a one-time enrollment token.
    Enroll(EnrollCli),
    /// Fetch the current CA keys, principals and KRL as this node and apply changes.
    Refresh,
    /// Restore the files as they were before enrollment and deregister the node.
    Remove,
    /// Show the enrollment state.
    Status,
}

#[derive(Debug, Args)]
pub struct EnrollCli {
    /// The CA's URL, https://host:port
    #[arg(long)]
    pub ca: String,
    /// The enrollment token (`pce_…`); or set PORTCULLIS_ENROLL_TOKEN.
    #[arg(long, env = "PORTCULLIS_ENROLL_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The CA's TLS public-key pin, `SHA256:…` (or curl's `sha256//…`).
    #[arg(long)]
    pub ca_fingerprint: String,
    /// The node's name (default: the short hostname).
    #[arg(long)]
    pub name: Option<String>,
    /// The port the node's sshd listens on, for the verification login (default: from `sshd -T`).
    #[arg(long)]
    pub sshd_port: Option<u16>,
    /// An address the node is reachable at (repeatable). Default: the node's global IP
    /// addresses (`ip -j addr`) and its FQDN (`hostname -f`) when it differs from the name.
    #[arg(long = "address")]
    pub addresses: Vec<String>,
    /// Also set up hardware discovery: the locked-down `portcullis-discovery` account,
    /// its forced command and a sudoers drop-in permitting only `dmidecode -t 1`/`-t 3`.
    #[arg(long)]
    pub discovery: bool,
}
