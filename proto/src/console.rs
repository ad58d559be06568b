//! Wire types of the browser console (issue 7): the device list, single-use tickets,
//! and the bastion's redemption of a ticket.
//!
//! Flow: the browser (cookie session + `X-CSRF-Token`) asks the CA for a ticket for one
//! device; the CA checks, in order, the RBAC permission `devices.console.open`, a
//! matching `console_access` rule (targets and agent/gateway/partition scope) and the
//! device being in scope, then stores the SHA-256 of 32 random bytes, valid
//! [`TICKET_TTL_SECS`], bound to user, device, login, mode, agent and rule. The browser
//! sends the ticket as the **first WebSocket frame** to the bastion (never in a URL,
//! query string, cookie name, log or audit payload); the bastion redeems it with
//! `POST /v1/bastion/console/open`, which consumes it atomically and admits the session
//! like terminated mode (per-session certificate, leases, caps). A second redemption is
//! refused before any credential is resolved (`ticket_reused`). A ticket is bound to
//! the browser session that asked for it: the WebSocket upgrade must carry that
//! session's cookie ([`session_binding`]), so a ticket copied to another client is
//! worth nothing there, even within its 60 s.

use serde::{Deserialize, Serialize};

use crate::bastion::SessionMode;

/// A ticket is valid this long after it was issued.
pub const TICKET_TTL_SECS: u64 = 60;
/// The browser session's cookie, set by the CA at sign-in (`HttpOnly`, `Secure`,
/// `SameSite=Strict`). The console's WebSocket upgrade carries it. `__Host-`: a browser
/// takes it only from this origin itself (HTTPS, `Path=/`, no `Domain`), so a sibling
/// subdomain cannot plant one — signing a victim in as the attacker.
pub const SESSION_COOKIE: &str = "__Host-portcullis_session";
/// The header carrying the CSRF token on state-changing cookie-authenticated requests.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A bastion's web front door passes browsers' API calls on to the CA: this header names
/// the browser's address, and [`FORWARDED_BY_HEADER`] carries the bastion's own `pcs_…`
/// credential, without which the CA refuses the request (nobody else may choose the
/// address that rate limits and audit records go by).
pub const FORWARDED_FOR_HEADER: &str = "x-portcullis-forwarded-for";
pub const FORWARDED_BY_HEADER: &str = "x-portcullis-forwarded-by";
/// The host (and port) the browser addressed at the front door: single sign-on returns
/// the browser to that origin's callback. Believed under the same condition.
pub const FORWARDED_HOST_HEADER: &str = "x-portcullis-forwarded-host";

/// Whether `host` is a plausible `host[:port]` (a DNS name, IPv4, or bracketed IPv6): what
/// a front door passes on and the CA accepts as the browser's origin.
pub fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// Console flavours of the seed. Only `ssh` is served; the others are answered with an
/// explicit unsupported-console error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConsoleMode {
    Ssh,
    Termproxy,
    Vncwebsocket,
}

impl ConsoleMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleMode::Ssh => "ssh",
            ConsoleMode::Termproxy => "termproxy",
            ConsoleMode::Vncwebsocket => "vncwebsocket",
        }
    }
}

/// One device of the signed-in user's list (`GET /v1/console/devices`): a node they may
/// open a console to, or a Proxmox VE guest their console roles reach (listed, with why
/// no console opens).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsoleDevice {
    pub name: String,
    pub addresses: Vec<String>,
    pub agent: Option<String>,
    /// Whether a bastion reports its agent connected now (`None` without an agent): a
    /// console through an agent that is down cannot open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_connected: Option<bool>,
    /// When the node was last seen alive: its own refresh, or a session reaching it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
    /// Logins a console may use on it (from the roles holding `devices.console.open`).
    pub logins: Vec<String>,
    pub tags: std::collections::BTreeMap<String, String>,
    /// Hardware facts from discovery (`system.serial`, `nic.eno1.speed_mbps`, …), when
    /// the node has been discovered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<std::collections::BTreeMap<String, String>>,
    /// The Proxmox VE cluster it belongs to (a hypervisor node linked to its PVE record,
    /// or a guest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// PVE's status: `online`/`offline` for a hypervisor node, `running`/`stopped` for a
    /// guest, as of the last collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Set for a Proxmox VE guest, listed under its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<ConsoleGuest>,
    /// Why no console opens here (then `logins` is empty), in words for the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_unavailable: Option<String>,
}

/// `GET /v1/console/devices/{name}`: one device of the caller's list in full — the
/// details page a console is opened from. Shown only for a device the list holds for
/// the caller; any other name reads like an unknown one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceDetails {
    /// The device as the list shows it (logins, tags, cluster, status, guest).
    pub device: ConsoleDevice,
    /// What enrollment and the inventory recorded about a node (absent for a guest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<DeviceNode>,
    /// Hardware facts with their change history (a discovered node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<crate::discovery::InventoryView>,
    /// For each purpose, the rule that decides it here (`None`: no rule matches, so
    /// nothing of that purpose reaches the device).
    pub rules: Vec<DeviceRule>,
    /// Roles that target the device. The caller's own for everyone; every role, with
    /// who holds it, for a caller who may read the policy (`policy.manage`/`audit.read`).
    pub access: Vec<DeviceAccess>,
    /// `true` when `access` lists every role (the caller may read the policy).
    pub access_complete: bool,
    /// Live and recent sessions on the device, newest first: the caller's own, or
    /// everyone's for a caller who may list sessions (`audit.read`/`sessions.kill`).
    pub sessions: Vec<DeviceSession>,
    /// `true` when `sessions` holds everyone's.
    pub sessions_of_everyone: bool,
}

/// A node's enrollment record, as the details page shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceNode {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub vendor: Option<String>,
    pub os: Option<String>,
    pub sshd_version: Option<String>,
    pub partition: Option<String>,
    pub ssh_port: u16,
    /// The host keys the bastion pins for it (never trust on first use).
    pub host_keys: Vec<HostKeyFingerprint>,
}

/// A pinned host key: its algorithm and SHA-256 fingerprint (`SHA256:…`, as
/// `ssh-keygen -lf` prints it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostKeyFingerprint {
    pub algorithm: String,
    pub fingerprint: String,
}

/// The rule deciding one purpose on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceRule {
    /// `ssh_login`, `console_access` or `inventory_enrichment`.
    pub purpose: String,
    pub rule: Option<String>,
    /// The rule records sessions (`record = true`): what a user should know before
    /// opening one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recorded: bool,
}

/// A role that targets a device: which logins and permissions it grants there, and to
/// whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceAccess {
    pub role: String,
    pub logins: Vec<String>,
    pub permissions: Vec<String>,
    /// The session limits it sets, in seconds.
    pub idle_secs: u64,
    pub absolute_secs: u64,
    /// The caller holds it.
    pub yours: bool,
    /// Who is bound to it (`group:ops`, `user:alice`); only in a complete list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holders: Option<Vec<String>>,
}

/// A session on a device: live (no `ended_at`) or closed (from the audit trail).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceSession {
    pub session_id: String,
    pub user: String,
    pub login: Option<String>,
    /// `terminated`, `jump` or `console`.
    pub mode: String,
    pub client_ip: String,
    pub started_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    /// Why it closed (`idle_timeout`, `client_closed`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
}

/// A Proxmox VE guest in the device list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsoleGuest {
    pub vmid: u32,
    /// `qemu` or `lxc`.
    pub kind: String,
    /// The guest's name in PVE.
    pub name: String,
    /// The PVE node it runs on.
    pub node: String,
    /// The enrolled node that PVE node is, when linked (the list nests the guest there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// `POST /v1/console/tickets` (cookie session or bearer; cookie requests need the CSRF
/// header).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    pub device: String,
    pub login: String,
    #[serde(default = "default_mode")]
    pub mode: ConsoleMode,
}

fn default_mode() -> ConsoleMode {
    ConsoleMode::Ssh
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TicketResponse {
    /// `pct_…`, 32 random bytes; shown once, the CA keeps only its hash.
    pub ticket: crate::WireSecret,
    pub expires_at: u64,
    /// Path of the bastion's WebSocket endpoint, relative to the page's origin.
    pub websocket_path: String,
}

/// `POST /v1/bastion/console/open` (bastion bearer): redeem a ticket and open the
/// session in one step. The answer is a [`crate::bastion::SessionGrant`] with mode
/// [`SessionMode::Console`]; refusals are 403 `session_denied` with reasons
/// `ticket_invalid`, `ticket_expired`, `ticket_reused` or any session deny reason.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ConsoleOpenRequest {
    pub ticket: crate::WireSecret,
    /// 32 lowercase hex characters, generated by the bastion.
    pub session_id: String,
    /// The ephemeral key the bastion logs in onward with (OpenSSH public key line).
    pub session_public_key: String,
    /// The browser's address as the bastion saw it.
    pub client_ip: String,
    /// [`session_binding`] of the session cookie the WebSocket upgrade carried (`None`:
    /// it carried none). The ticket is redeemed only for the session that asked for it.
    #[serde(default)]
    pub browser_session: Option<String>,
}

/// What binds a ticket to its browser session: the SHA-256 (hex) of the session token,
/// which is also how the CA stores the session. The bastion forwards this, never the
/// cookie: the hash signs nobody in.
pub fn session_binding(session_token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(session_token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of cookie `name` in `Cookie` header values; `None` when absent or present
/// more than once (an attacker on a sibling domain could add a second one).
pub fn cookie<'a>(header_values: impl IntoIterator<Item = &'a str>, name: &str) -> Option<String> {
    let mut found = None;
    for text in header_values {
        for pair in text.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=')
                && k == name
            {
                if found.is_some() {
                    return None;
                }
                found = Some(v.to_owned());
            }
        }
    }
    found
}

/// The console's session mode on the wire (for symmetry with terminated mode).
pub const CONSOLE_MODE: SessionMode = SessionMode::Console;

/// Extra deny reasons of console redemption.
pub mod deny_reason {
    pub const TICKET_INVALID: &str = "ticket_invalid";
    pub const TICKET_EXPIRED: &str = "ticket_expired";
    pub const TICKET_REUSED: &str = "ticket_reused";
    /// A ticket refused because the device's rule asks for a more recent sign-in.
    pub const FRESH_AUTH_REQUIRED: &str = "fresh_auth_required";
}

/// Frames on the console WebSocket after the ticket: binary frames carry terminal bytes
/// both ways; text frames carry these JSON control messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ConsoleControl {
    /// Browser → bastion: the terminal's size.
    Resize { cols: u32, rows: u32 },
    /// Bastion → browser: the session is connected; it ends in `closes_in` seconds
    /// whatever the activity (the absolute limit, or the certificate's expiry if sooner).
    Connected {
        session_id: String,
        device: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        closes_in: Option<u64>,
        /// The rule records this session (shown to the user).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        recorded: bool,
    },
    /// Bastion → browser: the remote command ended with this status.
    Exit { status: u32 },
    /// Bastion → browser: the session closed; `message` is safe to show.
    Closed { reason: String, message: String },
    /// Bastion → browser: without activity the session closes in `seconds`.
    IdleWarning { seconds: u64 },
}

/// `POST /v1/auth/browser-login` (JSON `{username, password}`, like `/v1/auth/login`):
/// the session comes as the `__Host-portcullis_session` cookie, never in the body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BrowserLoginResponse {
    pub username: String,
    /// Send it as [`CSRF_HEADER`] on every state-changing request of this session.
    pub csrf_token: crate::WireSecret,
    pub expires_at: u64,
}

/// `GET /v1/auth/csrf` (cookie session): the session's CSRF token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CsrfToken {
    pub csrf_token: crate::WireSecret,
}

/// One entry of `GET /v1/admin/policy/history`, newest first: a reload that changed
/// the policy (from its `policy_changed` audit record).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyChangeRecord {
    /// The audit record's sequence number and time.
    pub seq: u64,
    pub at: u64,
    /// Who reloaded (a username, `system` at start-up, `operator:SIGHUP`).
    pub actor: String,
    pub digest_before: String,
    pub digest_after: String,
    /// Names of roles, rules, bindings and deny statements, as `kind:name`.
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// What changed in the changed items: each field with its old and new value.
    #[serde(default)]
    pub fields: Vec<PolicyFieldChange>,
    /// A reload that was refused (the loaded policy stayed): how many errors it had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_errors: Option<u64>,
}

/// One field of a changed policy item (`rule:prod-ssh`, `targets`, old, new).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyFieldChange {
    pub item: String,
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
}
