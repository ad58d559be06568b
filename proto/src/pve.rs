//! Wire types for Proxmox VE inventory (purpose `inventory_enrichment`, provider
//! `proxmox`): stored API-token secrets, the bastion's collection claim and report, and
//! the inventory views.
//!
//! The token is a stored secret (`POST /v1/admin/secrets`); nothing here ever carries it
//! back out except a [`PveJob`], the short-lived grant of one collection run that the CA
//! hands the bastion holding the device's agent. Every type that carries it prints it as
//! `<redacted>` in `Debug`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The one secret kind so far: a Proxmox VE API token (`USER@REALM!TOKENID` + UUID).
pub const PROXMOX_API_TOKEN: &str = "proxmox_api_token";
/// Longest secret value accepted (a PVE token secret is a 36-character UUID).
pub const MAX_SECRET_BYTES: usize = 512;
/// Largest CA bundle accepted for a secret's TLS policy.
pub const MAX_CA_BUNDLE_BYTES: usize = 64 * 1024;
/// Largest answer the collector reads from one API endpoint; more is `too_large`.
pub const MAX_ENDPOINT_BYTES: usize = 8 << 20;
/// What one collection run may read from the PVE API in all. Each answer is capped,
/// but a run asks per node and per guest, as many as the server lists: without a total,
/// a hostile or compromised server (or a fake one that a trial reached) listing 100,000
/// guests could make the bastion — which carries every user's session too — hold
/// gigabytes. Twice the CA's report limit: answers carry more than the report keeps.
pub const MAX_RUN_BYTES: usize = 2 * MAX_PVE_REPORT_BODY;
/// Body limit of the report endpoint (a cluster with thousands of guests and their configs).
pub const MAX_PVE_REPORT_BODY: usize = 32 << 20;
/// Connect (agent channel + TCP + TLS) and per-request timeouts of a collection run.
pub const PVE_CONNECT_TIMEOUT_SECS: u64 = 10;
pub const PVE_REQUEST_TIMEOUT_SECS: u64 = 20;
/// A whole run ends after this, whatever it has collected.
pub const PVE_RUN_TIMEOUT_SECS: u64 = 600;
/// Most jobs one claim hands out.
pub const MAX_PVE_JOBS_PER_CLAIM: u32 = 64;

/// How the collector checks the API's TLS certificate. Per secret, because the token and
/// the server it may be sent to belong together.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum TlsPolicy {
    /// The chain must verify against these PEM certificates and name the device's address.
    CaBundle { pem: String },
    /// The server's certificate must have this SHA-256 fingerprint (hex, colons allowed:
    /// what `pvenode cert info` and the PVE web UI show). PVE's self-signed certificate
    /// is the common case.
    PinnedSha256 { sha256: String },
    /// No verification: for a lab only, and named so.
    DangerSkipVerify,
}

impl std::fmt::Debug for TlsPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl TlsPolicy {
    /// A one-line description for listings and audit records.
    pub fn describe(&self) -> String {
        match self {
            TlsPolicy::CaBundle { pem } => {
                let certs = pem.matches("-----BEGIN CERTIFICATE-----").count();
                format!("ca_bundle ({certs} certificate{})", if certs == 1 { "" } else { "s" })
            }
            TlsPolicy::PinnedSha256 { sha256 } => {
                format!("pinned_sha256 {}", normalize_sha256(sha256).unwrap_or_else(|| "(invalid)".into()))
            }
            TlsPolicy::DangerSkipVerify => "danger_skip_verify".into(),
        }
    }
}

/// A certificate fingerprint as 64 lowercase hex digits; `None` unless it is 32 bytes of
/// hex, with or without colons.
pub fn normalize_sha256(s: &str) -> Option<String> {
    let hex: String = s.trim().chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// A PVE API token identity: `USER@REALM!TOKENID`.
pub fn valid_token_identity(s: &str) -> bool {
    let Some((user, token)) = s.split_once('!') else { return false };
    let Some((name, realm)) = user.split_once('@') else { return false };
    let part = |p: &str, extra: &[char]| {
        !p.is_empty()
            && p.len() <= 64
            && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c) || extra.contains(&c))
    };
    part(name, &[]) && part(realm, &[]) && part(token, &[])
}

/// `POST /v1/admin/secrets` (`secrets.manage`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SecretAddRequest {
    pub name: String,
    /// [`PROXMOX_API_TOKEN`].
    pub kind: String,
    /// The public half: `USER@REALM!TOKENID`.
    pub identity: String,
    /// The token secret. Stored encrypted; never rendered back.
    pub secret: crate::WireSecret,
    pub tls: TlsPolicy,
}

/// `PUT /v1/admin/secrets/{name}` (`secrets.manage`): rotation. What is not given stays.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SecretRotateRequest {
    pub secret: crate::WireSecret,
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub tls: Option<TlsPolicy>,
}

/// A stored secret as every listing shows it: never the value.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretInfo {
    pub name: String,
    pub kind: String,
    pub identity: String,
    /// Identifies the value without revealing it: 16 hex digits of a keyed SHA-256 over
    /// the name and the value (a rotation changes it).
    pub fingerprint: String,
    /// [`TlsPolicy::describe`].
    pub tls: String,
    pub created_at: u64,
    pub rotated_at: Option<u64>,
    pub changed_by: String,
    /// Credential rules of the loaded policy that name this secret.
    #[serde(default)]
    pub rules: Vec<String>,
}

/// `POST /v1/bastion/pve/claim` (bastion bearer).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PveClaimRequest {
    /// Agents connected to this bastion now; only devices behind them are handed out.
    pub agents: Vec<String>,
    /// At most this many jobs, ≤ [`MAX_PVE_JOBS_PER_CLAIM`].
    pub max_jobs: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PveClaimResponse {
    /// The CA's `[pve] enabled`. When false, `jobs` is empty.
    pub enabled: bool,
    pub next_claim_secs: u64,
    pub concurrency: u32,
    pub jobs: Vec<PveJob>,
    /// Devices to fingerprint without any credential (`[pve] fingerprint`).
    #[serde(default)]
    pub probes: Vec<PveProbe>,
}

/// Fingerprint one device's API port without a credential: TLS (any certificate: nothing
/// secret is sent) and an unauthenticated `GET /api2/json/version`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PveProbe {
    pub run_id: String,
    pub device: String,
    pub agent: String,
    pub target_host: String,
    pub target_port: u16,
}

/// The grant of one collection run: where, through which agent, with which token and
/// TLS policy. Valid until `expires_at`; the bastion keeps it in memory only and drops it
/// when the run ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PveJob {
    /// 32 lowercase hex characters; the report names it.
    pub run_id: String,
    pub device: String,
    pub agent: String,
    pub target_host: String,
    pub target_port: u16,
    pub rule: String,
    /// The token identity (`USER@REALM!TOKENID`).
    pub token_identity: String,
    pub token_secret: crate::WireSecret,
    pub tls: TlsPolicy,
    /// Refuse (rather than warn) when the token holds write privileges.
    pub strict_permissions: bool,
    pub expires_at: u64,
}

/// Why a run collected nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PveFailure {
    AgentUnavailable,
    TargetUnreachable,
    Timeout,
    /// The certificate did not pass the secret's TLS policy; no request (and so no
    /// token) was sent.
    TlsRejected,
    /// 401: the token is wrong, expired or revoked.
    AuthFailed,
    /// The server did not answer like a PVE API.
    NotProxmox,
    /// The token holds a privilege beyond read-only audit and the rule is
    /// `strict_permissions`.
    WritePrivileges,
    /// The rule is `strict_permissions` and the token's privileges could not be read
    /// (`/access/permissions` failed or answered something else).
    PrivilegesUnknown,
    /// The grant expired before the run started.
    GrantExpired,
    /// The answers came to more than [`MAX_RUN_BYTES`]: nothing is reported as collected.
    TooLarge,
    /// An endpoint the inventory is built from (cluster status, nodes, resources) did
    /// not answer: what it would have listed is not known to be gone, so nothing is
    /// reported as collected.
    Incomplete,
    /// One of those refused the token (403): it lacks the audit privileges (the
    /// bastion's log names the path and the privilege).
    Forbidden,
}

impl PveFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            PveFailure::AgentUnavailable => "agent_unavailable",
            PveFailure::TargetUnreachable => "target_unreachable",
            PveFailure::Timeout => "timeout",
            PveFailure::TlsRejected => "tls_rejected",
            PveFailure::AuthFailed => "auth_failed",
            PveFailure::NotProxmox => "not_proxmox",
            PveFailure::WritePrivileges => "write_privileges",
            PveFailure::PrivilegesUnknown => "privileges_unknown",
            PveFailure::GrantExpired => "grant_expired",
            PveFailure::TooLarge => "too_large",
            PveFailure::Incomplete => "incomplete",
            PveFailure::Forbidden => "forbidden",
        }
    }
}

/// `POST /v1/bastion/pve/report`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PveReportRequest {
    pub run_id: String,
    pub device: String,
    pub outcome: PveOutcome,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum PveOutcome {
    Collected {
        inventory: Box<PveInventory>,
        /// Endpoints that did not answer; what they would have given is missing, the
        /// rest is stored.
        #[serde(default)]
        endpoint_failures: Vec<EndpointFailure>,
        /// Write privileges the token holds (from `/access/permissions`), as `PATH:PRIV`.
        #[serde(default)]
        write_privileges: Vec<String>,
    },
    Failed {
        reason: PveFailure,
    },
    /// A fingerprint: whether the port answers like a PVE API, and its certificate.
    Probed {
        candidate: bool,
        cert_sha256: Option<String>,
    },
}

/// One endpoint that gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EndpointFailure {
    /// The API path, e.g. `/nodes/pve1/disks/list`.
    pub path: String,
    /// `forbidden`, `unavailable` (node offline, Ceph down, 5xx), `timeout`, `too_large`,
    /// `invalid`.
    pub code: String,
    /// HTTP status, when there was one.
    pub status: Option<u16>,
    /// What to do, e.g. the smallest audit privilege the path needs.
    pub hint: Option<String>,
}

/// What one run saw, normalized (runtime counters such as CPU load, memory in use or
/// uptime are left out: they change every run and are not inventory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PveInventory {
    /// `/version`: e.g. `9.0.10`.
    pub version: String,
    /// The cluster name, or the node's own name when it is not clustered.
    pub cluster: String,
    pub clustered: bool,
    /// `None` when `/cluster/status` did not answer.
    pub quorate: Option<bool>,
    pub nodes: Vec<PveNode>,
    pub guests: Vec<PveGuest>,
    pub storage: Vec<PveStorage>,
    pub interfaces: Vec<PveInterface>,
    pub disks: Vec<PveDisk>,
    pub ceph: Option<PveCeph>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PveNode {
    pub name: String,
    /// `online`, `offline`, `unknown`.
    pub status: String,
    pub address: Option<String>,
    pub cpus: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub ssl_fingerprint: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PveGuest {
    pub vmid: u32,
    /// `qemu` or `lxc`.
    pub kind: String,
    pub name: String,
    pub node: String,
    pub status: String,
    pub template: bool,
    pub cpus: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
    pub tags: Vec<String>,
    /// The guest's configuration (`/nodes/N/qemu|lxc/ID/config`) as key → value, minus
    /// `digest`; empty when it could not be read.
    pub config: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PveStorage {
    pub node: String,
    pub name: String,
    pub kind: String,
    pub content: String,
    pub shared: bool,
    pub active: bool,
    pub total_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PveInterface {
    pub node: String,
    pub name: String,
    pub kind: String,
    pub cidr: Option<String>,
    pub active: bool,
    pub bridge_ports: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PveDisk {
    pub node: String,
    pub devpath: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub size_bytes: Option<u64>,
    pub kind: Option<String>,
    pub health: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PveCeph {
    /// `HEALTH_OK`, `HEALTH_WARN`, `HEALTH_ERR`, or `unavailable` when Ceph did not answer.
    pub health: String,
    pub osds: Vec<PveCephItem>,
    pub pools: Vec<PveCephItem>,
    pub filesystems: Vec<PveCephItem>,
}

/// An OSD, pool or file system: its name and a status line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PveCephItem {
    pub name: String,
    pub status: String,
}

/// What the CA made of a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PveReportResponse {
    /// `unchanged`, `changed`, `first`, or a failure code.
    pub result: String,
    #[serde(default)]
    pub changed_fields: Vec<String>,
}

/// `GET /v1/admin/inventory/clusters`: one row per cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterSummary {
    /// `AGENT/CLUSTER`: a cluster is known within the site (agent) that reaches it.
    pub id: String,
    pub name: String,
    pub agent: String,
    pub version: String,
    pub quorate: Option<bool>,
    pub nodes: u64,
    pub guests: u64,
    pub collected_from: String,
    pub changed_at: u64,
    pub last_run_at: Option<u64>,
    pub last_result: Option<String>,
    /// Endpoint failures of the last run, as `PATH: CODE (HINT)`.
    #[serde(default)]
    pub last_endpoint_failures: Vec<String>,
}

/// `GET /v1/admin/inventory/clusters/{id}`: everything stored for one cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterView {
    pub summary: ClusterSummary,
    pub inventory: PveInventory,
    /// PVE node → the enrolled Portcullis node it is (same PVE host name, and no
    /// contradicting cluster or agent).
    #[serde(default)]
    pub node_links: BTreeMap<String, String>,
    /// PVE nodes that several enrolled nodes fit, so none is linked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ambiguous_nodes: BTreeMap<String, Vec<String>>,
}
