//! Wire types for hardware discovery (purpose `inventory_enrichment`).
//!
//! The CA holds the policy, the keys and the inventory; only a bastion holds agent
//! connections. So a bastion asks `POST /v1/bastion/discovery/claim` every
//! `next_claim_secs` (bastion bearer) with the agents connected to it and one ephemeral
//! public key; while discovery is off the CA answers `enabled: false` and no work, and the
//! bastion opens no connection to any node. When on, the CA answers, per due node it may
//! reach, a [`DiscoveryJob`]: where to connect, the pinned host keys (never trust on first
//! use) and a certificate for the key (principal valid for [`DISCOVERY_LOGIN`] on that node
//! only, `force-command` = [`DISCOVERY_COMMAND`], no extensions, a few minutes of life, key
//! id `discovery:<run id>:<node>`). The bastion runs the command through the node's agent
//! and posts what it captured, or why it could not, to `POST /v1/bastion/discovery/report`.

use serde::{Deserialize, Serialize};

/// The node account discovery logs in as (created by `portcullis-enroll --discovery`).
pub const DISCOVERY_LOGIN: &str = "portcullis-discovery";
/// The fixed command the certificate forces.
pub const DISCOVERY_COMMAND: &str = "/usr/local/libexec/portcullis-discovery";
/// Lifetime of a discovery certificate.
pub const DISCOVERY_CERT_TTL_SECS: u64 = 180;
/// Largest captured output (stdout) the bastion accepts and forwards.
pub const MAX_DISCOVERY_OUTPUT_BYTES: usize = 1 << 20;
/// Body limit of the report endpoint: the output plus JSON escaping headroom.
pub const MAX_DISCOVERY_REPORT_BODY: usize = 3 * MAX_DISCOVERY_OUTPUT_BYTES;
pub const DISCOVERY_CONNECT_TIMEOUT_SECS: u64 = 10;
pub const DISCOVERY_EXEC_TIMEOUT_SECS: u64 = 30;
/// Most jobs one claim hands out.
pub const MAX_JOBS_PER_CLAIM: u32 = 256;

/// `POST /v1/bastion/discovery/claim`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DiscoveryClaimRequest {
    /// Agents connected to this bastion now; only their nodes are handed out.
    pub agents: Vec<String>,
    /// An ephemeral Ed25519 public key (OpenSSH line) generated for this round.
    pub public_key: String,
    /// At most this many jobs (the bastion's free capacity), ≤ [`MAX_JOBS_PER_CLAIM`].
    pub max_jobs: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiscoveryClaimResponse {
    /// The CA's `[discovery] enabled`. When false, `jobs` is empty.
    pub enabled: bool,
    /// When to ask again.
    pub next_claim_secs: u64,
    /// How many jobs the bastion runs at once.
    pub concurrency: u32,
    pub jobs: Vec<DiscoveryJob>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiscoveryJob {
    /// 32 lowercase hex characters; the report names it.
    pub run_id: String,
    pub device: String,
    pub agent: String,
    pub target_host: String,
    pub target_port: u16,
    /// OpenSSH public key lines pinned at enrollment; the only host keys accepted.
    pub known_host_keys: Vec<String>,
    /// The login the certificate is for ([`DISCOVERY_LOGIN`]).
    pub login: String,
    /// OpenSSH certificate for the claim's public key.
    pub certificate: String,
}

/// Why a run produced no output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryFailure {
    HostKeyMismatch,
    TargetUnreachable,
    AgentUnavailable,
    AuthFailed,
    Timeout,
    OutputTooLarge,
    /// The command exited non-zero or was killed by a signal.
    CommandFailed,
    /// The output is not UTF-8.
    OutputInvalid,
}

impl DiscoveryFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            DiscoveryFailure::HostKeyMismatch => "host_key_mismatch",
            DiscoveryFailure::TargetUnreachable => "target_unreachable",
            DiscoveryFailure::AgentUnavailable => "agent_unavailable",
            DiscoveryFailure::AuthFailed => "auth_failed",
            DiscoveryFailure::Timeout => "timeout",
            DiscoveryFailure::OutputTooLarge => "output_too_large",
            DiscoveryFailure::CommandFailed => "command_failed",
            DiscoveryFailure::OutputInvalid => "output_invalid",
        }
    }
}

/// `POST /v1/bastion/discovery/report`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DiscoveryReportRequest {
    pub run_id: String,
    pub device: String,
    pub outcome: DiscoveryOutcome,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum DiscoveryOutcome {
    /// The command's stdout, at most [`MAX_DISCOVERY_OUTPUT_BYTES`].
    Output {
        stdout: String,
    },
    Failed {
        reason: DiscoveryFailure,
    },
}

/// What the CA made of a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiscoveryReportResponse {
    /// `unchanged`, `changed`, `first`, or a failure code (`output_invalid`, …).
    pub result: String,
    /// Changed field paths, when `changed` or `first`.
    #[serde(default)]
    pub changed_fields: Vec<String>,
}

/// `GET /v1/admin/inventory/{node}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InventoryView {
    pub device: String,
    /// The current facts as flat `path → value` (`system.serial`, `nic.eno1.mac`, …).
    pub facts: std::collections::BTreeMap<String, String>,
    /// When these facts were first seen as they are now.
    pub changed_at: u64,
    /// The last run (any outcome) and its result.
    pub last_run_at: Option<u64>,
    pub last_result: Option<String>,
    /// Newest first.
    pub history: Vec<InventoryHistoryEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InventoryHistoryEntry {
    pub at: u64,
    pub run_id: String,
    /// Each `{change: added|removed|changed, field, value | old,new}`.
    pub changes: Vec<serde_json::Value>,
}

/// Whether `s` is a run id (32 lowercase hex characters).
pub fn valid_run_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
