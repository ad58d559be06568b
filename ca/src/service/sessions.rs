//! Session admission for the bastions: the CA decides, the bastion enforces.
//!
//! Guarantees:
//! - A session never exceeds the certificate the user authenticated with: only roles
//!   whose scoped principal for the login is on that certificate count, evaluated for
//!   the identity (name and groups) recorded at issuance under the *current* policy.
//! - Caps are exact across bastion and CA replicas: slots are taken by conditional
//!   updates in the lease's own transaction (see `store::leases`), and every lease
//!   deletion (close, sweep) releases them in the same transaction.
//! - The per-session certificate is built only from a [`SessionPermit`], which only the
//!   admission decision makes: one node principal, a minute of life.
//! - Every refusal is a `session_denied` audit record with a stable reason code; the
//!   bastion gets the code and a fixed text, never an echo of its input.

use super::Ca;
use super::certs::device_of;
use super::services::{ServiceCaller, valid_service_name};
use crate::audit::{self, AuditEvent, sanitize};
use crate::error::CaError;
use crate::keys::KeyPurpose;
use crate::signer::sign_session_cert;
use crate::store::{self, CertRow, LeaseCheck, LeaseRow};
use portcullis_policies::{
    Device, HostKeyPolicy, Identity, Permission, Policy, Purpose, Role, Rule, node_principal, scoped_principal,
};
use portcullis_proto::NodeRecord;
use portcullis_proto::bastion::{deny_reason as deny, *};
use portcullis_sshcert::parse_user_public_key;
use ssh_key::Algorithm;
use std::collections::{BTreeMap, BTreeSet};

/// Extensions a role may pass on to a per-session certificate (besides `permit-pty`).
const FORWARDING_EXTENSIONS: [&str; 3] = ["permit-agent-forwarding", "permit-port-forwarding", "permit-X11-forwarding"];
/// Most sessions one heartbeat may list.
const MAX_HEARTBEAT_SESSIONS: usize = 20_000;
const MAX_HEARTBEAT_AGENTS: usize = 1_000;

/// Proof that a per-session certificate with exactly these contents may be signed. Only
/// [`Ca::open_bastion_session`] makes one, after the admission decision.
pub struct SessionPermit {
    principal: String,
    key_id: String,
    extensions: Vec<String>,
}

impl SessionPermit {
    pub fn principal(&self) -> &str {
        &self.principal
    }
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }
}

/// A refusal: stable code, fixed text for the user.
struct Denial {
    reason: &'static str,
    text: &'static str,
}

fn denial(reason: &'static str, text: &'static str) -> Denial {
    Denial { reason, text }
}

/// What the policy admits a session under.
struct Admission<'p> {
    role: &'p Role,
    rule: &'p Rule,
}

pub fn valid_session_id(id: &str) -> bool {
    id.len() == 32 && id.chars().all(|c| c.is_ascii_digit() || matches!(c, 'a'..='f'))
}

/// Login names as policies accept them.
fn valid_login(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
}

/// A device name or address as a client may type it.
fn valid_device(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
}

fn purpose_of(mode: SessionMode) -> Purpose {
    match mode {
        SessionMode::Terminated | SessionMode::Jump => Purpose::SshLogin,
        SessionMode::Console => Purpose::ConsoleAccess,
    }
}

fn mode_from(s: &str) -> Option<SessionMode> {
    match s {
        "terminated" => Some(SessionMode::Terminated),
        "jump" => Some(SessionMode::Jump),
        "console" => Some(SessionMode::Console),
        _ => None,
    }
}

/// The policy part of admission, shared by open and by every heartbeat (so a policy
/// change that would refuse the session now closes it). Pure and in memory.
fn admit<'p>(
    policy: &'p Policy,
    who: &Identity,
    cert_principals: &BTreeSet<String>,
    device: &Device,
    mode: SessionMode,
    login: Option<&str>,
    port: u16,
) -> Result<Admission<'p>, Denial> {
    let denies = policy.denies_of(who);
    let not_authorized = || denial(deny::NOT_AUTHORIZED, "no role grants this login on this device");
    if denies.iter().any(|d| d.removes_permission(Permission::CertsIssue)) {
        return Err(not_authorized());
    }
    if mode == SessionMode::Console && policy.authorize(who, Permission::DevicesConsoleOpen).is_err() {
        return Err(denial(deny::NOT_AUTHORIZED, "the browser console is not granted to you"));
    }
    let usable = |role: &Role, login: &str| {
        role.logins().contains(login)
            && cert_principals.contains(&scoped_principal(role.name(), login))
            && !denies.iter().any(|d| d.removes_login(login))
    };
    let role = policy
        .roles_of(who)
        .into_iter()
        .filter(|r| r.has_permission(Permission::CertsIssue))
        .filter(|r| r.targets().is_some_and(|q| q.matches(device)))
        .find(|r| match (mode, login) {
            (SessionMode::Jump, _) => r.logins().iter().any(|l| usable(r, l)),
            // The per-session certificate carries no critical options, so a role that
            // restricts its certificates (force-command, source-address) can only be used
            // end to end, in jump mode, where the user's own certificate carries them.
            (_, Some(login)) => r.critical_options().is_empty() && usable(r, login),
            (_, None) => false,
        })
        .ok_or_else(not_authorized)?;
    let rule = policy
        .match_rule(purpose_of(mode), device)
        .map_err(|_| denial(deny::RULE_MISMATCH, "no rule allows this kind of session to this device"))?;
    if mode == SessionMode::Jump && !rule.allowed_ports().contains(&port) {
        return Err(denial(deny::PORT_NOT_ALLOWED, "this port is not allowed on this device"));
    }
    Ok(Admission { role, rule })
}

/// The inventory record as policy sees it, with the default agent filled in.
fn policy_device(node: &NodeRecord, default_agent: Option<&str>) -> Device {
    let mut device = device_of(node);
    if device.agent.is_none() {
        device.agent = default_agent.map(str::to_owned);
    }
    device
}

fn host_key_check(policy: HostKeyPolicy) -> HostKeyCheck {
    match policy {
        HostKeyPolicy::KnownHosts => HostKeyCheck::KnownHosts,
        HostKeyPolicy::TrustOnFirstUse => HostKeyCheck::TrustOnFirstUse,
        HostKeyPolicy::DangerSkipVerify => HostKeyCheck::DangerSkipVerify,
    }
}

/// Checks the request's shape; returns the certificate serial and the port.
fn validate_open(req: &SessionOpenRequest) -> Result<(u64, u16), CaError> {
    let bad = |what: &str| Err(CaError::BadRequest(format!("invalid session request: {what}")));
    if !valid_session_id(&req.session_id) {
        return bad("session_id must be 32 lowercase hex characters");
    }
    let Ok(serial) = req.cert_serial.parse::<u64>() else { return bad("cert_serial must be a decimal number") };
    if !valid_device(&req.device) {
        return bad("device");
    }
    if req.client_ip.parse::<std::net::IpAddr>().is_err() {
        return bad("client_ip must be an IP address");
    }
    match req.mode {
        SessionMode::Jump => {
            if req.login.is_some() || req.session_public_key.is_some() {
                return bad("jump mode takes no login and no session key");
            }
            if req.port == Some(0) {
                return bad("port");
            }
            Ok((serial, req.port.unwrap_or(22)))
        }
        SessionMode::Terminated | SessionMode::Console => {
            if !req.login.as_deref().is_some_and(valid_login) {
                return bad("login");
            }
            if req.session_public_key.is_none() {
                return bad("session_public_key is required");
            }
            if req.port.is_some_and(|p| p != 22) {
                return bad("only jump mode chooses a port");
            }
            Ok((serial, 22))
        }
    }
}

fn closed_event(lease: &LeaseRow, reason: CloseReason, from: u64, to: u64, duration_ms: u64) -> AuditEvent {
    AuditEvent::SessionClosed {
        session_id: lease.session_id.clone(),
        bastion: lease.bastion.clone(),
        user: lease.username.clone(),
        device: lease.device.clone(),
        agent: lease.agent.clone(),
        rule: lease.rule.clone(),
        role: lease.role.clone(),
        mode: lease.mode.clone(),
        login: lease.login.clone(),
        reason: reason.as_str(),
        bytes_from_client: from,
        bytes_to_client: to,
        duration_ms,
    }
}

impl Ca {
    /// `POST /v1/bastion/sessions/open`.
    pub async fn open_bastion_session(
        &self,
        bastion: &ServiceCaller,
        req: &SessionOpenRequest,
    ) -> Result<SessionGrant, CaError> {
        let (serial, port) = validate_open(req)?;
        let span = tracing::info_span!("session_open", session_id = %req.session_id, bastion = %bastion.name);
        let _entered = span.enter();
        let mut user = None;
        let result = self.decide_open(bastion, req, serial, port, &mut user).await?;
        match result {
            Ok(grant) => Ok(grant),
            Err(d) => {
                tracing::info!(reason = d.reason, "session denied");
                self.audit_alone(AuditEvent::SessionDenied {
                    session_id: req.session_id.clone(),
                    bastion: bastion.name.clone(),
                    user,
                    device: sanitize(&req.device),
                    mode: req.mode.as_str(),
                    login: req.login.clone(),
                    reason: d.reason,
                    client_ip: req.client_ip.clone(),
                })
                .await?;
                Err(CaError::SessionDenied { reason: d.reason, message: d.text.to_owned() })
            }
        }
    }

    /// The open decision in the documented order; `user` is set once the certificate
    /// names one (for the denial's audit record).
    async fn decide_open(
        &self,
        bastion: &ServiceCaller,
        req: &SessionOpenRequest,
        serial: u64,
        port: u16,
        user: &mut Option<String>,
    ) -> Result<Result<SessionGrant, Denial>, CaError> {
        let now = self.now();
        let cert = match self.usable_certificate(serial, now, user).await? {
            Ok(cert) => cert,
            Err(d) => return Ok(Err(d)),
        };
        let Some((node, target_host)) = self.resolve_device(&req.device, req.mode).await? else {
            return Ok(Err(denial(deny::UNKNOWN_DEVICE, "no such device")));
        };
        let device = policy_device(&node, self.default_agent.as_deref());
        let Some(agent) = device.agent.clone() else {
            return Ok(Err(denial(deny::NO_AGENT, "no edge agent serves this device")));
        };
        let who = Identity {
            username: cert.username.clone(),
            groups: cert.groups.iter().cloned().collect(),
            ..Default::default()
        };
        let principals: BTreeSet<String> = cert.principals.iter().cloned().collect();
        let policy = self.policy();
        let admission = match admit(&policy, &who, &principals, &device, req.mode, req.login.as_deref(), port) {
            Ok(a) => a,
            Err(d) => return Ok(Err(d)),
        };
        let (role, rule) = (admission.role, admission.rule);

        // Terminated and console: the bastion's onward login, for this node and login only.
        let mut session_cert = None;
        if let (Some(login), Some(key_line)) = (&req.login, &req.session_public_key) {
            let failed = || denial(deny::CREDENTIAL_RESOLUTION_FAILED, "the session credential could not be issued");
            let key = match parse_user_public_key(key_line) {
                Ok(k) if matches!(k.algorithm(), Algorithm::Ed25519 | Algorithm::Ecdsa { .. }) => k,
                _ => return Ok(Err(failed())),
            };
            let mut extensions = vec!["permit-pty".to_owned()];
            extensions.extend(
                FORWARDING_EXTENSIONS.iter().filter(|e| role.extensions().contains(**e)).map(|e| (*e).to_owned()),
            );
            let permit = SessionPermit {
                principal: node_principal(&node.name, login),
                key_id: format!("session:{}:{}", req.session_id, cert.username),
                extensions,
            };
            let Some(signer) = self.keyring().signer(KeyPurpose::User) else {
                tracing::error!("no active user CA key for a session certificate");
                return Ok(Err(failed()));
            };
            let signed = match sign_session_cert(&permit, &key, &signer, now, self.clock_skew) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "signing a session certificate failed");
                    return Ok(Err(failed()));
                }
            };
            let text = match signed.certificate.to_openssh() {
                Ok(t) => t,
                Err(_) => return Ok(Err(failed())),
            };
            let row = CertRow {
                serial: signed.serial,
                ca_fingerprint: signer.fingerprint.clone(),
                key_fingerprint: signed.key_fingerprint.clone(),
                username: cert.username.clone(),
                key_id: signed.key_id.clone(),
                principals: vec![permit.principal.clone()],
                valid_after: signed.valid_after,
                valid_before: signed.valid_before,
                issued_at: now,
                revoked_at: None,
                groups: cert.groups.clone(),
            };
            session_cert = Some((row, text));
        }

        let limits = role.session();
        let lease = LeaseRow {
            session_id: req.session_id.clone(),
            bastion: bastion.name.clone(),
            username: cert.username.clone(),
            device: node.name.clone(),
            agent: agent.clone(),
            login: req.login.clone(),
            mode: req.mode.as_str().to_owned(),
            port,
            rule: rule.name().to_owned(),
            role: role.name().to_owned(),
            cert_serial: serial,
            client_ip: req.client_ip.clone(),
            opened_at: now,
            heartbeat_at: now,
            absolute_deadline: now.saturating_add(limits.absolute.as_secs()),
            kill_reason: None,
            bytes_from_client: 0,
            bytes_to_client: 0,
        };
        let [agent_scope, device_scope, user_scope] = lease.scopes();
        let caps = [
            (agent_scope, limits.max_per_agent, "too many sessions through this agent"),
            (device_scope, limits.max_per_device, "too many sessions on this device"),
            (user_scope, limits.max_per_user, "you have too many sessions open"),
        ];
        let mut tx = self.store.begin().await?;
        for (scope, cap, text) in &caps {
            if !store::take_slot(tx.conn(), scope, *cap).await? {
                drop(tx);
                return Ok(Err(denial(deny::CAP_REACHED, text)));
            }
        }
        if !store::insert_lease(tx.conn(), &lease).await? {
            drop(tx);
            return Err(CaError::Conflict("a session with this id exists".into()));
        }
        if let Some((row, _)) = &session_cert {
            store::insert_cert(tx.conn(), row).await?;
        }
        audit::record(
            tx.conn(),
            now,
            &AuditEvent::SessionOpened {
                session_id: lease.session_id.clone(),
                bastion: lease.bastion.clone(),
                user: lease.username.clone(),
                device: lease.device.clone(),
                agent: agent.clone(),
                rule: lease.rule.clone(),
                role: lease.role.clone(),
                mode: req.mode.as_str(),
                login: lease.login.clone(),
                port,
                client_ip: lease.client_ip.clone(),
                cert_serial: serial.to_string(),
                session_cert_serial: session_cert.as_ref().map(|(row, _)| row.serial.to_string()),
            },
        )
        .await?;
        tx.commit().await?;

        let has = |ext: &str| role.extensions().contains(ext);
        Ok(Ok(SessionGrant {
            session_id: lease.session_id,
            username: lease.username,
            rule: lease.rule,
            role: lease.role,
            device: lease.device,
            agent,
            target_host,
            target_port: port,
            host_key_check: host_key_check(rule.host_key_policy()),
            known_host_keys: node.host_keys.clone(),
            host_ca_keys: self.trusted_keys(KeyPurpose::Host),
            connect_timeout_ms: u64::try_from(rule.timeout().as_millis()).unwrap_or(u64::MAX),
            idle_timeout_secs: limits.idle.as_secs(),
            absolute_timeout_secs: limits.absolute.as_secs(),
            cert_valid_before: cert.valid_before,
            session_certificate: session_cert.map(|(_, text)| text),
            login: lease.login,
            allow_agent_forwarding: has("permit-agent-forwarding"),
            allow_port_forwarding: has("permit-port-forwarding"),
            allow_x11_forwarding: has("permit-X11-forwarding"),
        }))
    }

    /// The user certificate a session is opened with: one this CA issued to a user (not a
    /// node, service or session certificate), unrevoked, unexpired, key not revoked, user
    /// not disabled.
    async fn usable_certificate(
        &self,
        serial: u64,
        now: u64,
        user: &mut Option<String>,
    ) -> Result<Result<CertRow, Denial>, CaError> {
        let invalid = |text| Ok(Err(denial(deny::CREDENTIAL_INVALID, text)));
        let Some(cert) = self.store.certificate(serial).await? else {
            return invalid("the certificate is unknown to the CA");
        };
        let user_ca = self.keyring().rows().iter().any(|k| k.fingerprint == cert.ca_fingerprint && k.purpose == "user");
        if !user_ca || cert.username.contains(':') || cert.key_id.starts_with("session:") {
            return invalid("not a user certificate");
        }
        *user = Some(cert.username.clone());
        if cert.revoked_at.is_some() || self.store.is_key_revoked(&cert.key_fingerprint).await? {
            return invalid("the certificate is revoked");
        }
        if cert.valid_before <= now {
            return invalid("the certificate has expired");
        }
        if self.store.user(&cert.username).await?.is_some_and(|u| u.disabled) {
            return invalid("the user is disabled");
        }
        Ok(Ok(cert))
    }

    /// The node a session is for, and the address the agent connects to. Jump mode may
    /// name a node by one of its addresses; an address two nodes share names neither.
    async fn resolve_device(&self, asked: &str, mode: SessionMode) -> Result<Option<(NodeRecord, String)>, CaError> {
        if let Some(node) = self.store.node(asked).await? {
            let host = node.addresses.first().cloned().unwrap_or_else(|| node.name.clone());
            return Ok(Some((node, host)));
        }
        if mode != SessionMode::Jump {
            return Ok(None);
        }
        let mut matching = self.store.nodes().await?.into_iter().filter(|n| n.addresses.iter().any(|a| a == asked));
        match (matching.next(), matching.next()) {
            (Some(node), None) => Ok(Some((node, asked.to_owned()))),
            _ => Ok(None),
        }
    }

    /// `POST /v1/bastion/heartbeat`: keeps this bastion's leases, reclaims every lease
    /// whose bastion went quiet, and answers which listed sessions must close.
    pub async fn heartbeat(
        &self,
        bastion: &ServiceCaller,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, CaError> {
        if req.sessions.len() > MAX_HEARTBEAT_SESSIONS || req.agents.len() > MAX_HEARTBEAT_AGENTS {
            return Err(CaError::BadRequest("heartbeat too large".into()));
        }
        if !req.sessions.iter().all(|s| valid_session_id(&s.session_id)) {
            return Err(CaError::BadRequest("invalid session id in heartbeat".into()));
        }
        if !req.agents.iter().all(|a| valid_service_name(a)) {
            return Err(CaError::BadRequest("invalid agent name in heartbeat".into()));
        }
        let now = self.now();
        let cutoff = now.saturating_sub(LEASE_TTL_SECS);
        let listed: BTreeMap<&str, &LiveSession> = req.sessions.iter().map(|s| (s.session_id.as_str(), s)).collect();
        let agents: Vec<String> = req.agents.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();

        let mut lost = Vec::new();
        let mut tx = self.store.begin().await?;
        for (id, s) in &listed {
            let alive = store::heartbeat_lease(
                tx.conn(),
                id,
                &bastion.name,
                now,
                cutoff,
                s.bytes_from_client,
                s.bytes_to_client,
            )
            .await?;
            if !alive {
                lost.push((*id).to_owned());
            }
        }
        store::record_bastion_heartbeat(tx.conn(), &bastion.name, &agents, now).await?;
        for agent in &agents {
            store::touch_service(tx.conn(), ServiceKind::Agent.as_str(), agent, now).await?;
        }
        tx.commit().await?;

        self.sweep_leases(cutoff).await?;

        let policy = self.policy();
        let mut close: Vec<CloseOrder> =
            lost.into_iter().map(|session_id| CloseOrder { session_id, reason: CloseReason::LeaseLost }).collect();
        for check in self.store.lease_checks(&bastion.name).await? {
            if !listed.contains_key(check.lease.session_id.as_str()) {
                continue;
            }
            if let Some(reason) = self.must_close(&policy, &check) {
                close.push(CloseOrder { session_id: check.lease.session_id, reason });
            }
        }
        Ok(HeartbeatResponse { close })
    }

    /// Why a live session must end now, if it must.
    fn must_close(&self, policy: &Policy, check: &LeaseCheck) -> Option<CloseReason> {
        let lease = &check.lease;
        if lease.kill_reason.is_some() {
            return Some(CloseReason::AdminTerminated);
        }
        if check.cert_revoked || check.key_revoked || check.user_disabled {
            return Some(CloseReason::Revoked);
        }
        let (Some(node), Some(mode)) = (&check.node, mode_from(&lease.mode)) else {
            return Some(CloseReason::PolicyChanged);
        };
        let device = policy_device(node, self.default_agent.as_deref());
        let who = Identity {
            username: lease.username.clone(),
            groups: check.cert_groups.iter().cloned().collect(),
            ..Default::default()
        };
        let principals: BTreeSet<String> = check.cert_principals.iter().cloned().collect();
        match admit(policy, &who, &principals, &device, mode, lease.login.as_deref(), lease.port) {
            Ok(_) => None,
            Err(_) => Some(CloseReason::PolicyChanged),
        }
    }

    /// Deletes every lease not heartbeated since `cutoff`, one transaction each (so no
    /// transaction holds counters of several leases), releasing its slots.
    async fn sweep_leases(&self, cutoff: u64) -> Result<(), CaError> {
        for id in self.store.stale_leases(cutoff).await? {
            let now = self.now();
            let mut tx = self.store.begin().await?;
            if let Some(lease) = store::sweep_lease(tx.conn(), &id, cutoff).await? {
                let duration_ms = now.saturating_sub(lease.opened_at).saturating_mul(1000);
                let event = closed_event(
                    &lease,
                    CloseReason::LeaseLost,
                    lease.bytes_from_client,
                    lease.bytes_to_client,
                    duration_ms,
                );
                audit::record(tx.conn(), now, &event).await?;
                tracing::warn!(session_id = %lease.session_id, bastion = %lease.bastion, "lease lost: reclaimed");
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// `POST /v1/bastion/sessions/close`: releases the lease; idempotent.
    pub async fn close_session(&self, bastion: &ServiceCaller, req: &SessionCloseRequest) -> Result<(), CaError> {
        if !valid_session_id(&req.session_id) {
            return Err(CaError::BadRequest("invalid session id".into()));
        }
        let now = self.now();
        let mut tx = self.store.begin().await?;
        if let Some(lease) = store::close_lease(tx.conn(), &req.session_id, &bastion.name).await? {
            let event = closed_event(&lease, req.reason, req.bytes_from_client, req.bytes_to_client, req.duration_ms);
            audit::record(tx.conn(), now, &event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// `GET /v1/admin/sessions`.
    pub async fn live_sessions(
        &self,
        _grant: &portcullis_policies::Grant,
    ) -> Result<Vec<portcullis_proto::SessionInfo>, CaError> {
        Ok(self
            .store
            .leases()
            .await?
            .into_iter()
            .map(|l| portcullis_proto::SessionInfo {
                session_id: l.session_id,
                bastion: l.bastion,
                user: l.username,
                device: l.device,
                agent: l.agent,
                login: l.login,
                mode: l.mode,
                rule: l.rule,
                role: l.role,
                client_ip: l.client_ip,
                opened_at: l.opened_at,
                heartbeat_at: l.heartbeat_at,
                absolute_deadline: l.absolute_deadline,
                kill_requested: l.kill_reason.is_some(),
                bytes_from_client: l.bytes_from_client,
                bytes_to_client: l.bytes_to_client,
            })
            .collect())
    }

    /// `POST /v1/admin/sessions/{id}/kill`: the bastion closes it at its next heartbeat.
    pub async fn kill_session(&self, grant: &portcullis_policies::Grant, session_id: &str) -> Result<(), CaError> {
        if !valid_session_id(session_id) {
            return Err(CaError::BadRequest("invalid session id".into()));
        }
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let lease = store::set_kill_reason(tx.conn(), session_id, CloseReason::AdminTerminated.as_str())
            .await?
            .ok_or(CaError::NotFound("live session"))?;
        audit::record(
            tx.conn(),
            now,
            &AuditEvent::SessionKillRequested {
                actor: grant.username().to_owned(),
                session_id: lease.session_id,
                bastion: lease.bastion,
                user: lease.username,
                device: lease.device,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_logins_devices() {
        assert!(valid_session_id("0123456789abcdef0123456789abcdef"));
        for bad in [
            "",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcde",
            "g123456789abcdef0123456789abcdef",
        ] {
            assert!(!valid_session_id(bad), "{bad}");
        }
        assert!(valid_login("root") && valid_login("_svc") && valid_login("a.b-c_1"));
        assert!(!valid_login("Root") && !valid_login("-x") && !valid_login("") && !valid_login("a b"));
        assert!(valid_device("pve01") && valid_device("10.0.0.5") && valid_device("fe80::1"));
        assert!(!valid_device("") && !valid_device("a/b") && !valid_device("a b"));
    }
}
