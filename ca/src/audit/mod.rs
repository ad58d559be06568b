//! The audit trail: every accountable event is one variant of [`AuditEvent`], written
//! through [`record`] inside the transaction of the change it describes, so an event is
//! stored exactly when its change is.
//!
//! Payload fields are the record's schema. They never hold a secret: no password,
//! token, private key or cookie has a field here to be put in.

use serde::Serialize;

/// Who did something: a user, or the server itself (start-up, timers).
pub const SYSTEM_ACTOR: &str = "system";

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    LoginSucceeded {
        username: String,
        source: String,
        client_ip: String,
        /// The API session opened (see `service::caller::session_ref`).
        user_session: String,
    },
    LoginFailed {
        /// As typed by the client, sanitized and truncated (it may be a mistyped password,
        /// so it is kept short and never logged to the operator log).
        username: String,
        source: String,
        client_ip: String,
        reason: &'static str,
    },
    Logout {
        username: String,
    },
    /// An existing API session refused because the directory no longer vouches for its user.
    SessionRefused {
        username: String,
        source: String,
        reason: &'static str,
    },
    CertIssued {
        username: String,
        serial: String,
        key_id: String,
        principals: Vec<String>,
        roles: Vec<String>,
        valid_after: u64,
        valid_before: u64,
        key_fingerprint: String,
        ca_fingerprint: String,
        client_ip: String,
    },
    CertDenied {
        username: String,
        reason: &'static str,
        key_fingerprint: Option<String>,
        client_ip: String,
    },
    Revoked {
        actor: String,
        target: String,
        certificates: u64,
        key: bool,
        krl_version: u64,
    },
    CaKeyGenerated {
        actor: String,
        purpose: String,
        algorithm: String,
        fingerprint: String,
        state: String,
    },
    CaKeyRotated {
        actor: String,
        purpose: String,
        activated: String,
        previous: Vec<String>,
    },
    CaKeyRetired {
        actor: String,
        purpose: String,
        fingerprint: String,
    },
    PolicyLoaded {
        actor: String,
        digest: String,
    },
    PolicyChanged {
        actor: String,
        digest_before: String,
        digest_after: String,
        added: Vec<String>,
        removed: Vec<String>,
        changed: Vec<String>,
        /// Each changed field with its old and new value (policy text, never a secret).
        fields: Vec<portcullis_policies::FieldChange>,
    },
    PolicyRejected {
        actor: String,
        errors: usize,
    },
    UserChanged {
        actor: String,
        username: String,
        change: &'static str,
        /// For `added` and `groups_set`: the groups before and after (the seed's "who
        /// changed an RBAC rule", for group membership).
        #[serde(skip_serializing_if = "Option::is_none")]
        groups: Option<GroupsChange>,
    },
    NodeRegistered {
        actor: String,
        name: String,
        new: bool,
    },
    EnrollTokenCreated {
        actor: String,
        id: String,
        uses: u32,
        expires_at: u64,
        tags: std::collections::BTreeMap<String, String>,
        /// `agent` / `bastion` for a service token.
        #[serde(skip_serializing_if = "Option::is_none")]
        service: Option<&'static str>,
        /// The one node name the token may enroll, when bound.
        #[serde(skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
    EnrollTokenRevoked {
        actor: String,
        id: String,
    },
    /// The node rolled an enrollment back: a new node was removed (`restored` false) or an
    /// existing one got its earlier record back; the token's use was given back.
    NodeEnrollAborted {
        name: String,
        token_id: String,
        restored: bool,
        client_ip: String,
    },
    /// An administrator changed a node record (`fields`: which ones).
    NodeUpdated {
        actor: String,
        name: String,
        fields: Vec<&'static str>,
    },
    /// An administrator removed a node (its host certificates revoked).
    NodeRemoved {
        actor: String,
        name: String,
        host_certificates_revoked: u64,
    },
    NodeEnrolled {
        name: String,
        token_id: String,
        new: bool,
        host_key_fingerprints: Vec<String>,
        host_cert_serials: Vec<String>,
        verification_serial: String,
        client_ip: String,
    },
    EnrollRefused {
        reason: &'static str,
        client_ip: String,
    },
    NodeRefreshed {
        name: String,
        host_cert_serials: Vec<String>,
        client_ip: String,
    },
    NodeDeregistered {
        name: String,
        client_ip: String,
    },
    NodeProofRefused {
        node: String,
        reason: &'static str,
        client_ip: String,
    },
    /// A bastion or agent enrolled (or re-enrolled: new API token). `actor` is
    /// `token:<id>` or `system` (the all-in-one registering its own services).
    ServiceEnrolled {
        actor: String,
        kind: &'static str,
        name: String,
        new: bool,
        key_fingerprint: String,
        cert_serial: String,
        client_ip: String,
    },
    ServiceEnrollRefused {
        kind: &'static str,
        name: String,
        reason: &'static str,
        client_ip: String,
    },
    /// An internal certificate renewed by its service.
    ServiceCertIssued {
        kind: &'static str,
        name: String,
        serial: String,
        valid_before: u64,
    },
    SessionOpened {
        session_id: String,
        bastion: String,
        user: String,
        device: String,
        agent: String,
        rule: String,
        role: String,
        mode: &'static str,
        login: Option<String>,
        port: u16,
        client_ip: String,
        /// The user certificate the session was opened with; absent for a console
        /// session opened with a ticket.
        #[serde(skip_serializing_if = "Option::is_none")]
        cert_serial: Option<String>,
        /// Terminated/console: the per-session certificate, and its key's public
        /// fingerprint (the credential the bastion logs in onward with).
        session_cert_serial: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        session_key_fingerprint: Option<String>,
        /// The inventory's device type (`type`), when known.
        #[serde(skip_serializing_if = "Option::is_none")]
        target_kind: Option<String>,
        /// A console session: the API session its ticket was asked with.
        #[serde(skip_serializing_if = "Option::is_none")]
        user_session: Option<String>,
        /// The rule asked for a recent sign-in (step-up): how old the user's was.
        #[serde(skip_serializing_if = "Option::is_none")]
        auth_age_secs: Option<u64>,
        /// The rule records the session (its recording is listed under this session id).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        recorded: bool,
    },
    /// The CA refused to open a session (`reason`: a `deny_reason` code).
    SessionDenied {
        session_id: String,
        bastion: String,
        user: Option<String>,
        device: String,
        mode: &'static str,
        login: Option<String>,
        reason: &'static str,
        /// [`failure_phase`] of `reason`.
        phase: &'static str,
        client_ip: String,
    },
    SessionClosed {
        session_id: String,
        bastion: String,
        user: String,
        device: String,
        agent: String,
        rule: String,
        role: String,
        mode: String,
        login: Option<String>,
        reason: &'static str,
        bytes_from_client: u64,
        bytes_to_client: u64,
        duration_ms: u64,
        client_ip: String,
        /// The user certificate the session was opened with (absent for a ticket's).
        #[serde(skip_serializing_if = "Option::is_none")]
        cert_serial: Option<String>,
        /// Unix seconds: the CA's open decision, and this record.
        started_at: u64,
        ended_at: u64,
    },
    /// A session recording was played back or exported (`recordings.read`).
    RecordingPlayed {
        actor: String,
        session_id: String,
        user: String,
        device: String,
    },
    /// A recording reached its rule's size limit: the rest of the session is not in it.
    RecordingTruncated {
        session_id: String,
        user: String,
        device: String,
        bytes: u64,
    },
    /// A bastion's recording chunk was refused (not its session, not recorded, over the
    /// limit, malformed).
    RecordingRefused {
        bastion: String,
        session_id: String,
        reason: &'static str,
    },
    /// Recordings older than the retention period were deleted.
    RecordingsExpired {
        count: u64,
        retention_secs: u64,
    },
    SessionKillRequested {
        actor: String,
        session_id: String,
        bastion: String,
        user: String,
        device: String,
    },
    /// Reported by a bastion: a client certificate refused at its door.
    BastionAuthRefused {
        bastion: String,
        client_ip: String,
        user: String,
        reason: String,
    },
    /// Reported by a bastion; user/device/mode/login come from the lease when it exists.
    BrokerConnected {
        bastion: String,
        session_id: String,
        user: Option<String>,
        device: Option<String>,
        agent: String,
        mode: Option<String>,
        login: Option<String>,
        client_ip: Option<String>,
        setup_ms: u64,
    },
    /// A node's first host key, pinned under a `trust_on_first_use` rule.
    HostKeyPinned {
        bastion: String,
        session_id: String,
        device: String,
        rule: String,
        fingerprint: String,
    },
    /// A first key not pinned: it is another node's (`owner`); the session is ended.
    HostKeyPinRefused {
        bastion: String,
        session_id: String,
        device: String,
        fingerprint: String,
        owner: String,
    },
    BrokerFailed {
        bastion: String,
        session_id: String,
        user: Option<String>,
        device: Option<String>,
        agent: String,
        mode: Option<String>,
        login: Option<String>,
        client_ip: Option<String>,
        reason: String,
        /// [`failure_phase`] of `reason`.
        phase: &'static str,
    },
    AgentConnected {
        bastion: String,
        agent: String,
        remote: String,
    },
    AgentDisconnected {
        bastion: String,
        agent: String,
    },
    /// A browser asked for a console ticket (device and login as typed, sanitized). No
    /// console event ever holds the ticket or its hash.
    ConsoleTicketRequested {
        user: String,
        device: String,
        login: String,
        mode: &'static str,
        client_ip: String,
        user_session: String,
    },
    ConsoleTicketGranted {
        user: String,
        device: String,
        login: String,
        mode: &'static str,
        agent: String,
        rule: String,
        expires_at: u64,
        client_ip: String,
        user_session: String,
        /// The rule asked for a recent sign-in (step-up): how old the user's was.
        #[serde(skip_serializing_if = "Option::is_none")]
        auth_age_secs: Option<u64>,
    },
    /// `reason`: `missing_permission`, `unsupported_mode`, `unknown_device`,
    /// `rule_mismatch`, `out_of_scope`, `no_agent`, `not_authorized`, `rate_limited`.
    ConsoleTicketDenied {
        user: String,
        device: String,
        login: String,
        mode: &'static str,
        reason: &'static str,
        client_ip: String,
        user_session: String,
    },
    /// A bastion redeemed a ticket (recorded with the redemption itself, so a ticket is
    /// never used up without a trace, whatever happens to the session's open after it).
    ConsoleTicketRedeemed {
        session_id: String,
        bastion: String,
        user: String,
        device: String,
        client_ip: String,
    },
    /// A bastion tried to redeem an expired ticket.
    ConsoleTicketExpired {
        session_id: String,
        bastion: String,
        user: String,
        device: String,
        client_ip: String,
    },
    /// A ticket expired without being redeemed (the seed's "ticket expired").
    ConsoleTicketLapsed {
        user: String,
        device: String,
        login: String,
        issued_at: u64,
        expires_at: u64,
    },
    /// A bastion tried to redeem a ticket that was redeemed before.
    ConsoleTicketReused {
        session_id: String,
        bastion: String,
        user: String,
        device: String,
        client_ip: String,
    },
    /// Unauthenticated refusals counted in one window rather than recorded one by one
    /// (see `portcullis_proto::refusals`): `origin` is `ca` or the bastion that counted.
    RefusalsSummarized {
        origin: String,
        window_start: u64,
        window_end: u64,
        counts: Vec<portcullis_proto::refusals::RefusalCount>,
        overflow: u64,
    },
    /// A live ticket arrived on a WebSocket without the session cookie that asked for it
    /// (a copied or stolen ticket). The ticket stays valid for its owner.
    ConsoleTicketWrongSession {
        session_id: String,
        bastion: String,
        user: String,
        device: String,
        client_ip: String,
    },
    /// A bastion claimed a node for a discovery run; the certificate was signed for it.
    DiscoveryStarted {
        run_id: String,
        device: String,
        agent: String,
        bastion: String,
        rule: String,
        cert_serial: String,
    },
    /// A discovery run produced no usable facts.
    DiscoveryFailed {
        run_id: String,
        device: String,
        bastion: String,
        reason: &'static str,
    },
    /// A node's hardware facts changed (or were collected for the first time).
    InventoryDrift {
        run_id: String,
        device: String,
        first: bool,
        /// The changed field paths (`system.serial`, `nic.eno1.speed_mbps`, …).
        fields: Vec<String>,
    },
    /// An API secret was stored. Only its public identity and fingerprint are recorded.
    SecretAdded {
        name: String,
        kind: String,
        identity: String,
        fingerprint: String,
        tls: String,
        by: String,
    },
    /// A stored secret got a new value (and possibly identity or TLS policy).
    SecretRotated {
        name: String,
        identity: String,
        fingerprint: String,
        tls: String,
        by: String,
    },
    SecretRemoved {
        name: String,
        by: String,
    },
    /// A bastion claimed a device for a Proxmox VE collection run and received the grant
    /// (the named secret, decrypted, for this one run).
    PveCollectionStarted {
        run_id: String,
        device: String,
        agent: String,
        bastion: String,
        rule: String,
        secret: String,
        secret_fingerprint: String,
        /// An `auto_discovery_trials` attempt on a candidate the rule's targets do not name.
        trial: bool,
    },
    PveCollectionFailed {
        run_id: String,
        device: String,
        bastion: String,
        reason: &'static str,
    },
    /// A cluster's inventory changed (or was collected for the first time).
    PveInventoryDrift {
        run_id: String,
        device: String,
        cluster: String,
        first: bool,
        /// The changed field paths (`guest.100.status`, …), at most 200.
        fields: Vec<String>,
        changed: u64,
    },
    /// A credential-free fingerprint changed whether a device looks like a PVE API.
    PveCandidateMarked {
        device: String,
        candidate: bool,
        cert_sha256: String,
        bastion: String,
    },
    /// The endpoints that failed, or the write privileges the token holds, differ from the
    /// device's previous run (recorded on change only, so an unchanged run writes nothing).
    PveCollectionWarnings {
        run_id: String,
        device: String,
        endpoint_failures: Vec<String>,
        write_privileges: Vec<String>,
    },
}

/// A user's groups before and after a change.
#[derive(Debug, Clone, Serialize)]
pub struct GroupsChange {
    pub old: Vec<String>,
    pub new: Vec<String>,
}

/// The seed's "sanitized failure phase": the step of a session's start at which it was
/// refused or failed, derived from the reason code (never from peer text).
pub fn failure_phase(reason: &str) -> &'static str {
    match reason {
        "ticket_invalid" | "ticket_expired" | "ticket_reused" => "ticket",
        "credential_invalid"
        | "connection_proof_missing"
        | "connection_proof_invalid"
        | "connection_proof_replayed"
        | "fresh_auth_required" => "credential",
        "not_authorized" | "rule_mismatch" | "unknown_device" | "out_of_scope" | "port_not_allowed" | "no_agent" => {
            "authorization"
        }
        "cap_reached" => "session_limits",
        "credential_resolution_failed" => "credential_resolution",
        "agent_unavailable" | "agent_refused" => "agent",
        "target_unreachable" => "target_connect",
        "host_key_mismatch" => "host_key",
        "onward_auth_failed" => "onward_login",
        "unsupported_mode" => "console_mode",
        "recording_needs_terminated_mode" => "recording",
        _ => "admission",
    }
}

mod name;
mod write;

pub use write::{WRITES, record, record_many, sanitize};
