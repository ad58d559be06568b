//! Wire types between the data plane (bastions, edge agents) and the CA.
//!
//! **Service identities.** A bastion or an agent enrolls once with a one-time enrollment
//! token minted for its kind (`portcullis admin enroll-token create --service agent`).
//! It generates an Ed25519 key locally and sends only the public half; the CA registers
//! `(kind, name, public key)` and answers with
//! - an API credential (`pcs_…`, shown once, stored hashed) used as `Authorization:
//!   Bearer` for every call below, and
//! - an **internal certificate**: an OpenSSH user certificate from the CA's `internal`
//!   key for the service key, principal [`service_principal`], lifetime
//!   [`SERVICE_CERT_TTL_SECS`]. Agents present it to bastions; bastions check it against
//!   `GET /v1/ca/internal/keys` and the KRL exactly like user certificates against the
//!   user CA. Renewed with `POST /v1/services/certificate`.
//!
//! **Sessions.** The bastion never decides policy: for every session (terminated, jump
//! or browser console) it asks `POST /v1/bastion/sessions/open`; the CA evaluates the
//! policy, takes the concurrency leases (in the shared database, so caps hold across
//! bastion replicas), and for terminated mode signs a per-session certificate for an
//! ephemeral key the bastion generated. The bastion heartbeats its live sessions every
//! second; the answer lists the sessions that must close (revoked, policy changed, admin
//! kill). A bastion that stops heartbeating loses its leases after
//! [`LEASE_TTL_SECS`], so a crashed replica's sessions stop counting against caps.

use serde::{Deserialize, Serialize};

/// Lifetime of an internal (service) certificate.
pub const SERVICE_CERT_TTL_SECS: u64 = 24 * 3600;
/// A lease not heartbeated for this long is reclaimed by any CA replica.
pub const LEASE_TTL_SECS: u64 = 15;
/// Lifetime of a per-session certificate (terminated mode, browser console).
pub const SESSION_CERT_TTL_SECS: u64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    Bastion,
    Agent,
}

impl ServiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Bastion => "bastion",
            ServiceKind::Agent => "agent",
        }
    }
}

/// The principal of a service's internal certificate: `agent:NAME` or `bastion:NAME`.
pub fn service_principal(kind: ServiceKind, name: &str) -> String {
    format!("{}:{name}", kind.as_str())
}

/// `POST /v1/services/enroll`, `Authorization: Bearer pce_…` (a token minted for `kind`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ServiceEnrollRequest {
    pub kind: ServiceKind,
    /// `[a-z0-9][a-z0-9._-]{0,62}`.
    pub name: String,
    /// OpenSSH public key line (Ed25519). For a bastion this is also its SSH host key.
    pub public_key: String,
    /// Bastions: `host:port` where agents reach the agent listener. Agents: empty.
    #[serde(default)]
    pub agent_endpoint: Option<String>,
    /// Proof of holding the private half of `public_key`; required to re-enroll a name
    /// that is already registered (its public key is public: a bastion's is its SSH host
    /// key). The enrolling process always sends one.
    #[serde(default)]
    pub proof: Option<ServiceProof>,
}

/// An SSHSIG (armored) by the service's key over [`ServiceEnrollRequest::proof_message`],
/// namespace [`ServiceProof::NAMESPACE`], made within the last few minutes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ServiceProof {
    pub timestamp: u64,
    pub signature: String,
}

impl ServiceProof {
    pub const NAMESPACE: &'static str = "portcullis-service@portcullis";
}

impl ServiceEnrollRequest {
    /// What the proof signs: everything the request claims, the enrollment token (by its
    /// SHA-256) and the time, so a proof is good for this one request with this one token.
    pub fn proof_message(&self, token: &str, timestamp: u64) -> String {
        use sha2::{Digest, Sha256};
        let token: String = Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "portcullis-service-enroll-v1\n{}\n{}\n{}\n{}\n{token}\n{timestamp}\n",
            self.kind.as_str(),
            self.name,
            self.public_key.trim(),
            self.agent_endpoint.as_deref().unwrap_or("")
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceEnrollResponse {
    pub kind: ServiceKind,
    pub name: String,
    /// `pcs_…`: the bearer credential for every later call. Shown once.
    pub api_token: crate::WireSecret,
    /// Internal certificate (OpenSSH `-cert.pub` format) for `public_key`.
    pub certificate: String,
    /// `GET /v1/ca/internal/keys` at enrollment time.
    pub internal_ca_keys: String,
}

/// `POST /v1/services/certificate` (bearer `pcs_…`): a fresh internal certificate for the
/// registered key. Also records the service as seen.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceCertificateResponse {
    pub certificate: String,
    pub valid_before: u64,
}

/// One entry of `GET /v1/services/bastions` (bearer, any service): where an agent dials
/// and which host key it must find there.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BastionDirectoryEntry {
    pub name: String,
    pub agent_endpoint: String,
    /// OpenSSH public key line of the bastion's host key (its registered service key).
    pub host_key: String,
}

/// `GET /v1/services/agent/targets` (bearer `pcs_…` of an agent): the devices assigned to
/// this agent, the default allow-list (`address:22` of each).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentTarget {
    pub device: String,
    pub addresses: Vec<String>,
    pub port: u16,
    /// API ports a credential rule collects from on this device (Proxmox VE's 8006),
    /// allowed like the SSH port. Absent from older CAs: none.
    #[serde(default)]
    pub api_ports: Vec<u16>,
}

/// One row of `GET /v1/admin/agents` and `GET /v1/admin/bastions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceInfo {
    pub kind: ServiceKind,
    pub name: String,
    pub key_fingerprint: String,
    pub enrolled_at: u64,
    /// Last contact with the CA (certificate renewal, target fetch), or, for agents, the
    /// last heartbeat of a bastion it is connected to.
    pub last_seen: Option<u64>,
    /// Bastions currently reporting this agent connected.
    #[serde(default)]
    pub connected_to: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SessionMode {
    /// `ssh root%pve01@bastion`: the bastion terminates SSH and logs in onward with a
    /// per-session certificate.
    Terminated,
    /// `ssh -J user@bastion root@pve01`: a `direct-tcpip` relay; SSH end to end.
    Jump,
    /// Browser terminal (runs like terminated mode).
    Console,
}

impl SessionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionMode::Terminated => "terminated",
            SessionMode::Jump => "jump",
            SessionMode::Console => "console",
        }
    }
}

/// `POST /v1/bastion/sessions/open` (bearer `pcs_…` of a bastion).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SessionOpenRequest {
    /// 32 lowercase hex characters, generated by the bastion; unique.
    pub session_id: String,
    pub mode: SessionMode,
    /// The user certificate the client authenticated with, already checked by the bastion
    /// (signature, validity, KRL). Decimal string. The CA looks the certificate up by
    /// serial to learn whose it is; a certificate the CA did not issue is refused.
    pub cert_serial: String,
    /// `portcullis_sshcert::certificate_digest` of the certificate as presented: the CA
    /// refuses one that is not the certificate it issued under `cert_serial`.
    #[serde(default)]
    pub certificate_digest: Option<String>,
    /// Terminated/console: the login on the device. Jump: `None` (the inner SSH
    /// authenticates end to end; the node's principals files decide the login).
    #[serde(default)]
    pub login: Option<String>,
    /// Device name; in jump mode the host the client asked for (a name or one of the
    /// device's addresses).
    pub device: String,
    /// Jump mode: the port asked for (must be in the rule's allowed ports; default 22).
    #[serde(default)]
    pub port: Option<u16>,
    pub client_ip: String,
    /// Terminated/console: OpenSSH public key line of the ephemeral key the bastion will
    /// log in onward with.
    #[serde(default)]
    pub session_public_key: Option<String>,
    /// Terminated mode: the user's own proof that they are connected to this bastion
    /// now. The CA issues an onward certificate only against it.
    #[serde(default)]
    pub connection_proof: Option<ConnectionProof>,
}

/// Between login and device in a terminated-mode SSH user name (`root%pve01`).
pub const LOGIN_DEVICE_SEPARATOR: char = '%';

/// The SSH user name that asks the bastion for `login` on `device` in terminated mode:
/// what the bastion parses, and what the CA finds in a user's proof of connection.
pub fn terminated_user(login: &str, device: &str) -> String {
    format!("{login}{LOGIN_DEVICE_SEPARATOR}{device}")
}

/// The signature the user's SSH client made when it authenticated to the bastion with
/// its certificate (RFC 4252 §7), and what it covers: the connection's session
/// identifier and the authentication request (which names the SSH user, e.g.
/// `root%pve01`, and carries the certificate). Base64 (standard, padded). Not a secret:
/// the CA accepts each connection's proof for that connection only, and refuses it once
/// the connection has no live session left.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ConnectionProof {
    pub session_id: String,
    pub request: String,
    pub signature: String,
}

impl ConnectionProof {
    pub fn new(session_id: &[u8], request: &[u8], signature: &[u8]) -> Self {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        ConnectionProof { session_id: b64(session_id), request: b64(request), signature: b64(signature) }
    }

    /// (session identifier, request, signature) as bytes; `None` if any is not base64.
    pub fn decode(&self) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        use base64::Engine as _;
        let bytes = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).ok();
        Some((bytes(&self.session_id)?, bytes(&self.request)?, bytes(&self.signature)?))
    }
}

/// How the bastion must check the device's host key (the rule's `host_key_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HostKeyCheck {
    /// Accept only `known_host_keys` or a host certificate from `host_ca_keys`.
    KnownHosts,
    /// Accept and pin the first key (the CA records it), then as `KnownHosts`.
    TrustOnFirstUse,
    /// No check (named so nobody enables it by accident).
    DangerSkipVerify,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionGrant {
    pub session_id: String,
    pub username: String,
    /// The rule (purpose `ssh_login` or `console_access`) that admitted the session.
    pub rule: String,
    /// The role that grants the login (terminated/console) or reaches the device (jump).
    pub role: String,
    pub device: String,
    /// The agent that serves the device; the bastion relays through it.
    pub agent: String,
    /// Where the agent connects: one of the device's addresses and the port.
    pub target_host: String,
    pub target_port: u16,
    pub host_key_check: HostKeyCheck,
    /// OpenSSH public key lines of the device's enrolled host keys.
    pub known_host_keys: Vec<String>,
    /// Host CA public keys, one per line.
    pub host_ca_keys: String,
    pub connect_timeout_ms: u64,
    pub idle_timeout_secs: u64,
    /// Output towards the user keeps the session from going idle, as input does (the
    /// rule's `idle_counts = "input_or_output"`, the default); `false`: input only.
    #[serde(default = "output_counts_by_default")]
    pub idle_counts_output: bool,
    pub absolute_timeout_secs: u64,
    /// When the user's certificate expires (the bastion may close the session then).
    pub cert_valid_before: u64,
    /// Terminated/console: certificate for `session_public_key`, principal valid only on
    /// this device for `login`, lifetime [`SESSION_CERT_TTL_SECS`], key id
    /// `session:<session_id>:<username>`.
    #[serde(default)]
    pub session_certificate: Option<String>,
    /// The login the session certificate is for (terminated/console).
    #[serde(default)]
    pub login: Option<String>,
    /// From the role's extensions: what the bastion may pass through in terminated mode.
    pub allow_agent_forwarding: bool,
    pub allow_port_forwarding: bool,
    pub allow_x11_forwarding: bool,
    /// Terminated/console under a rule with `record = true`: record the session and hand
    /// the recording to the CA (`POST /v1/bastion/recordings/{session_id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<crate::recording::RecordingGrant>,
}

fn output_counts_by_default() -> bool {
    true
}

/// Why the CA refused to open a session: the `error` code of the 403 [`crate::ApiError`]
/// body is `session_denied` and `message` is `"<reason>: <text>"`, with `<reason>` one of
/// these codes.
pub mod deny_reason {
    /// No role grants the login on the device, or a deny statement removes it.
    pub const NOT_AUTHORIZED: &str = "not_authorized";
    /// No `ssh_login`/`console_access` rule matches the device and its agent scope.
    pub const RULE_MISMATCH: &str = "rule_mismatch";
    pub const UNKNOWN_DEVICE: &str = "unknown_device";
    /// The device has no agent and no default agent is configured.
    pub const NO_AGENT: &str = "no_agent";
    /// A per-user, per-device or per-agent cap is reached.
    pub const CAP_REACHED: &str = "cap_reached";
    /// The certificate is unknown to the CA, revoked, or its user disabled.
    pub const CREDENTIAL_INVALID: &str = "credential_invalid";
    /// Jump mode to a port the rule does not allow.
    pub const PORT_NOT_ALLOWED: &str = "port_not_allowed";
    /// The session certificate could not be produced.
    pub const CREDENTIAL_RESOLUTION_FAILED: &str = "credential_resolution_failed";
    /// Terminated mode without the user's proof of connection (see [`super::ConnectionProof`]),
    /// or a console session asked for with a certificate instead of a browser's ticket.
    pub const CONNECTION_PROOF_MISSING: &str = "connection_proof_missing";
    /// A proof that does not verify, or is not for this certificate, login and device.
    pub const CONNECTION_PROOF_INVALID: &str = "connection_proof_invalid";
    /// A proof already used, by a connection that has no live session any more (or by
    /// another bastion, certificate or target).
    pub const CONNECTION_PROOF_REPLAYED: &str = "connection_proof_replayed";
    /// The rule asks for a recent sign-in (`fresh_auth_within`) and the certificate's
    /// is older: sign in again and get a new certificate.
    pub const FRESH_AUTH_REQUIRED: &str = "fresh_auth_required";
    /// The rule records sessions, and jump mode (end to end between the user and the
    /// device) cannot be recorded: connect in terminated mode.
    pub const RECORDING_NEEDS_TERMINATED: &str = "recording_needs_terminated_mode";
}

/// One live session in a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LiveSession {
    pub session_id: String,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
}

/// `POST /v1/bastion/heartbeat` (bearer of a bastion), about every second.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub sessions: Vec<LiveSession>,
    /// Agents currently connected to this bastion (names from their certificates).
    pub agents: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatResponse {
    /// Sessions the bastion must close now, with the reason to show and audit.
    pub close: Vec<CloseOrder>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CloseOrder {
    pub session_id: String,
    pub reason: CloseReason,
}

/// Why a session ended. Shown to the user (sanitized text from [`CloseReason::message`])
/// and recorded in the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    ClientDisconnect,
    /// The browser console's WebSocket went away (tab closed, navigation).
    BrowserDisconnect,
    TargetDisconnect,
    IdleTimeout,
    AbsoluteTimeout,
    AgentDisconnect,
    Revoked,
    PolicyChanged,
    CertExpired,
    AdminTerminated,
    /// The bastion lost its lease (no heartbeat accepted for too long).
    LeaseLost,
    /// The bastion is shutting down.
    Shutdown,
    /// The bastion's session task ended unexpectedly (a bug); its lease is released.
    InternalError,
    /// The session never started: the device could not be reached from its agent (or
    /// the agent refused the destination).
    TargetUnreachable,
    /// The session never started: the device's host key is not the one on record.
    HostKeyMismatch,
    /// The session never started: the device refused the bastion's onward login.
    OnwardLoginFailed,
    /// The recording reached its size limit, and the rule closes sessions then.
    RecordingLimit,
    /// The recording could not be handed to the CA, and the rule closes sessions then.
    RecordingFailed,
    /// The device answered with a host key pinned to another device (trust on first use
    /// refused to pin it).
    HostKeyTaken,
}

impl std::str::FromStr for CloseReason {
    type Err = serde_json::Error;

    /// The inverse of [`CloseReason::as_str`].
    fn from_str(code: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(code.to_owned()))
    }
}

impl CloseReason {
    /// The session closed before it started: nothing ran, so nothing was recorded.
    pub fn before_start(self) -> bool {
        matches!(self, CloseReason::TargetUnreachable | CloseReason::HostKeyMismatch | CloseReason::OnwardLoginFailed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientDisconnect => "client_disconnect",
            CloseReason::BrowserDisconnect => "browser_disconnect",
            CloseReason::TargetDisconnect => "target_disconnect",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::AbsoluteTimeout => "absolute_timeout",
            CloseReason::AgentDisconnect => "agent_disconnect",
            CloseReason::Revoked => "revoked",
            CloseReason::PolicyChanged => "policy_changed",
            CloseReason::CertExpired => "cert_expired",
            CloseReason::AdminTerminated => "admin_terminated",
            CloseReason::LeaseLost => "lease_lost",
            CloseReason::Shutdown => "shutdown",
            CloseReason::InternalError => "internal_error",
            CloseReason::TargetUnreachable => "target_unreachable",
            CloseReason::HostKeyMismatch => "host_key_mismatch",
            CloseReason::OnwardLoginFailed => "onward_login_failed",
            CloseReason::RecordingLimit => "recording_limit",
            CloseReason::RecordingFailed => "recording_failed",
            CloseReason::HostKeyTaken => "host_key_taken",
        }
    }

    /// The line shown to the user when the session closes.
    pub fn message(self) -> &'static str {
        match self {
            CloseReason::ClientDisconnect | CloseReason::BrowserDisconnect => "session closed",
            CloseReason::TargetDisconnect => "the device closed the connection",
            CloseReason::IdleTimeout => "session closed: idle timeout",
            CloseReason::AbsoluteTimeout => "session closed: maximum session time reached",
            CloseReason::AgentDisconnect => "session closed: the edge agent disconnected",
            CloseReason::Revoked => "session closed: credential revoked",
            CloseReason::PolicyChanged => "session closed: access removed by a policy change",
            CloseReason::CertExpired => "session closed: certificate expired",
            CloseReason::AdminTerminated => "session closed by an administrator",
            CloseReason::LeaseLost => "session closed: bastion lost contact with the control plane",
            CloseReason::Shutdown => "session closed: bastion shutting down",
            CloseReason::InternalError => "session closed: internal error",
            CloseReason::TargetUnreachable => "cannot open the session: the device cannot be reached",
            CloseReason::HostKeyMismatch => "cannot open the session: the device's host key is not the one on record",
            CloseReason::OnwardLoginFailed => "cannot open the session: the device refused the login",
            CloseReason::RecordingLimit => "session closed: the session recording reached its size limit",
            CloseReason::RecordingFailed => "session closed: the session recording could not be stored",
            CloseReason::HostKeyTaken => "session closed: the device answered with another device's host key",
        }
    }
}

/// `POST /v1/bastion/sessions/close` (bearer of a bastion): releases the leases and
/// records the close. Idempotent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SessionCloseRequest {
    pub session_id: String,
    pub reason: CloseReason,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub duration_ms: u64,
}

/// `POST /v1/bastion/sessions/closes` (bearer of a bastion): several closes in one
/// request and one transaction, all or none (a burst of disconnects costs one call, not
/// one connection per session). Idempotent, like the single close.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SessionClosesRequest {
    pub closes: Vec<SessionCloseRequest>,
}

/// Most closes one [`SessionClosesRequest`] may carry.
pub const MAX_CLOSES_PER_REQUEST: usize = 1000;

/// `POST /v1/bastion/events` (bearer of a bastion): what only the bastion sees, for the
/// audit trail. Never terminal contents, keys or tickets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BastionEventsRequest {
    pub events: Vec<BastionAuditEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum BastionAuditEvent {
    /// A client certificate was refused at the bastion (`reason` is a stable code).
    AuthRefused {
        client_ip: String,
        user: String,
        reason: String,
    },
    /// The onward connection through the agent is up (and, terminated mode, logged in).
    BrokerConnected {
        session_id: String,
        agent: String,
        setup_ms: u64,
    },
    /// The onward connection failed: `reason` is `target_unreachable`, `agent_unavailable`,
    /// `host_key_mismatch`, `onward_auth_failed`, `agent_refused` or `unsupported_mode`.
    BrokerFailed {
        session_id: String,
        agent: String,
        reason: String,
    },
    /// A session's onward login accepted this host key (an OpenSSH public key line) from
    /// a node with none pinned, under a `trust_on_first_use` rule: the CA pins it if the
    /// node still has none.
    HostKeyFirstUsed {
        session_id: String,
        host_key: String,
    },
    /// An agent connected to or left this bastion.
    AgentConnected {
        agent: String,
        remote: String,
    },
    AgentDisconnected {
        agent: String,
    },
    /// The front door's refusals counted in one window (see [`crate::refusals`]): the
    /// first of each (source, reason, user) went as `auth_refused`, the rest are here,
    /// with the refusals that are only ever counted (connection limits, channel caps,
    /// console sockets that sent no ticket).
    RefusalsSummarized {
        window_start: u64,
        window_end: u64,
        counts: Vec<crate::refusals::RefusalCount>,
        overflow: u64,
    },
}
