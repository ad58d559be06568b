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

mod admission;
mod close;
mod console;
mod details;
mod events;
mod heartbeat;
mod proof;

use super::permits::SessionPermit;
pub(crate) use admission::valid_session_id;

use super::core::Core;
use super::discovery::Discovery;
use super::identity::IdentityService;
use super::pve::Proxmox;
use super::recordings::Recordings;
use super::services::ServiceCaller;
use crate::audit::{self, AuditEvent, sanitize};
use crate::error::CaError;
use crate::keys::KeyPurpose;
use crate::ratelimit::RateLimiter;
use crate::signer::sign_session_cert;
use crate::store::{self, CertRow, LeaseRow};
use admission::{Asker, Basis, Denial, FORWARDING_EXTENSIONS, admit, denial, host_key_check, validate_open};
use portcullis_policies::{IdleCounts, OverLimit, UserSource, node_principal, parse_account};
use portcullis_proto::NodeRecord;
use portcullis_proto::bastion::{deny_reason as deny, *};
use portcullis_proto::recording::RecordingGrant;
use portcullis_sshcert::{Confirmed, parse_user_public_key};
use ssh_key::Algorithm;
use std::collections::BTreeSet;
use std::sync::Arc;
use tracing::Instrument;

/// The identity a session is decided for, and what vouches for it. Certificate- and
/// ticket-opened sessions meet here, in [`Sessions::admit_session`].
/// Console tickets one user may ask for per minute (per replica): a person opens a few
/// consoles a minute; a script spraying tickets is stopped.
const TICKETS_PER_USER_PER_MINUTE: u32 = 20;

/// The sessions service: bastion sessions (admission, leases, heartbeats, closes,
/// kills), console tickets, the device views that lead to them, and the events bastions
/// report. It asks the identity service about directory accounts, the recordings
/// service for a recorded session's row, and the inventory services what a device is.
pub struct Sessions {
    core: Arc<Core>,
    identity: Arc<IdentityService>,
    recordings: Arc<Recordings>,
    discovery: Arc<Discovery>,
    proxmox: Arc<Proxmox>,
    /// Console tickets asked per user per minute.
    ticket_requests: RateLimiter,
    /// Session opens refused per user (or per client address, before a user is known)
    /// per minute, past which refusals are summarized rather than recorded one by one.
    denials: RateLimiter,
}

/// Refused session opens per user per minute recorded one by one. A person is refused a
/// few times; a client that loops opens to an unknown host (cheap for it: one channel
/// open each) would otherwise write an audit record per try. Past this the refusals of
/// the window are recorded once per reason and address, then counted into the
/// `refusals_summarized` record; every one is still answered and counted in metrics.
const DENIALS_RECORDED_PER_MINUTE: u32 = 30;

impl Sessions {
    pub(in crate::service) fn new(
        core: Arc<Core>,
        identity: Arc<IdentityService>,
        recordings: Arc<Recordings>,
        discovery: Arc<Discovery>,
        proxmox: Arc<Proxmox>,
    ) -> Sessions {
        Sessions {
            core,
            identity,
            recordings,
            discovery,
            proxmox,
            ticket_requests: RateLimiter::new(TICKETS_PER_USER_PER_MINUTE, 60),
            denials: RateLimiter::new(DENIALS_RECORDED_PER_MINUTE, 60),
        }
    }
}

struct Subject {
    username: String,
    /// The groups the credential recorded.
    groups: Vec<String>,
    /// The user's groups now, where the CA knows them (see [`Sessions::groups_now`]).
    groups_now: Option<Vec<String>>,
    /// When the credential behind the identity expires (the bastion may close then).
    valid_before: u64,
    evidence: Evidence,
}

enum Evidence {
    /// A user certificate this CA issued, with its principals and when its user last
    /// proved who they are (step-up rules ask how long ago).
    Certificate { serial: u64, principals: BTreeSet<String>, authenticated_at: u64 },
    /// A redeemed console ticket, bound to the agent and rule it was issued under, the
    /// API session (as audit names it) that asked for it, and when that session's user
    /// proved who they are.
    Ticket { agent: String, rule: String, user_session: String, authenticated_at: u64 },
}

impl Subject {
    fn asker(&self) -> Asker {
        Asker::new(&self.username, &self.groups, self.groups_now.as_deref())
    }

    /// `confirmed`: what the user's key confirmed over a terminated session's connection.
    fn basis(&self, confirmed: Option<Confirmed>) -> Basis<'_> {
        match &self.evidence {
            Evidence::Certificate { principals, .. } => Basis::Certificate { principals, confirmed, held: None },
            Evidence::Ticket { .. } => Basis::Ticket,
        }
    }
}

/// What the bastion asks to open.
struct OpenSpec<'a> {
    session_id: &'a str,
    mode: SessionMode,
    login: Option<&'a str>,
    port: u16,
    session_public_key: Option<&'a str>,
    client_ip: &'a str,
    /// Terminated mode: the user's proven connection (see [`proof`]), claimed in the
    /// lease's transaction.
    connection: Option<proof::ProvenConnection>,
}

impl Sessions {
    /// `POST /v1/bastion/sessions/open`.
    pub async fn open_bastion_session(
        &self,
        bastion: &ServiceCaller,
        req: &SessionOpenRequest,
    ) -> Result<SessionGrant, CaError> {
        let (serial, port) = validate_open(req)?;
        let span = tracing::info_span!("session_open", session_id = %req.session_id, bastion = %bastion.name);
        let mut user = None;
        let result = self.decide_open(bastion, req, serial, port, &mut user).instrument(span.clone()).await?;
        match result {
            Ok(grant) => {
                span.in_scope(|| tracing::info!(user = %grant.username, device = %grant.device, "session opened"));
                Ok(grant)
            }
            Err(d) => {
                span.in_scope(|| tracing::info!(reason = d.reason, "session denied"));
                let who = user.clone();
                let event = AuditEvent::SessionDenied {
                    session_id: req.session_id.clone(),
                    bastion: bastion.name.clone(),
                    user,
                    device: sanitize(&req.device),
                    mode: req.mode.as_str(),
                    login: req.login.clone(),
                    reason: d.reason,
                    phase: audit::failure_phase(d.reason),
                    client_ip: req.client_ip.clone(),
                };
                let now = self.core.now();
                let key = match &who {
                    Some(user) => format!("user:{user}"),
                    None => format!("ip:{}", crate::ratelimit::source_key(&req.client_ip)),
                };
                let flooding = self.denials.blocked(&key, now).is_some();
                self.denials.hit(&key, now);
                if flooding {
                    let who = who.as_deref().unwrap_or("-");
                    self.core.audit_refusal(&req.client_ip, d.reason, who, event).await?;
                } else {
                    self.core.audit_alone(event).await?;
                }
                self.core.counters.sessions_denied.inc(&[("mode", req.mode.as_str()), ("reason", d.reason)]);
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
        port: Option<u16>,
        user: &mut Option<String>,
    ) -> Result<Result<SessionGrant, Denial>, CaError> {
        let now = self.core.now();
        let cert = match self.usable_certificate(serial, req.certificate_digest.as_deref(), now, user).await? {
            Ok(cert) => cert,
            Err(d) => return Ok(Err(d)),
        };
        // An onward certificate only against the user's own proof of this connection.
        let connection = match req.mode {
            SessionMode::Terminated => match proof::check(req, &cert) {
                Ok(proven) => Some(proven),
                Err(d) => return Ok(Err(d)),
            },
            SessionMode::Jump => None,
            // A console's proof is the ticket the user's browser asked for, redeemed
            // through `/v1/bastion/console/open`; here there is none, and a certificate a
            // bastion has seen must not stand in for it (it would be an onward
            // certificate for any console login the user's roles reach, on demand).
            SessionMode::Console => {
                return Ok(Err(denial(
                    deny::CONNECTION_PROOF_MISSING,
                    "a console session opens only with the ticket the user's browser asked for",
                )));
            }
        };
        let Some((node, target_host)) = self.resolve_device(&req.device, req.mode).await? else {
            return Ok(Err(denial(deny::UNKNOWN_DEVICE, "no such device")));
        };
        let authenticated_at = cert.authenticated_at();
        let subject = Subject {
            groups_now: self.groups_now(&cert.username).await?,
            username: cert.username,
            groups: cert.groups,
            valid_before: cert.valid_before,
            evidence: Evidence::Certificate {
                serial,
                authenticated_at,
                principals: cert.principals.into_iter().collect(),
            },
        };
        let open = OpenSpec {
            session_id: &req.session_id,
            mode: req.mode,
            login: req.login.as_deref(),
            // Jump mode names the port; every other mode dials the node's SSH port.
            port: port.unwrap_or_else(|| node.ssh_port_or_default()),
            session_public_key: req.session_public_key.as_deref(),
            client_ip: &req.client_ip,
            connection,
        };
        self.admit_session(bastion, &subject, &node, target_host, &open).await
    }

    /// Admission proper, whatever vouched for the identity (a user certificate, or a
    /// console ticket): the policy decision, the per-session certificate, the caps, the
    /// lease and `session_opened`, in one transaction.
    async fn admit_session(
        &self,
        bastion: &ServiceCaller,
        subject: &Subject,
        node: &NodeRecord,
        target_host: String,
        open: &OpenSpec<'_>,
    ) -> Result<Result<SessionGrant, Denial>, CaError> {
        let now = self.core.now();
        let port = open.port;
        let device = self.core.device(node);
        let Some(agent) = device.agent.clone() else {
            return Ok(Err(denial(deny::NO_AGENT, "no edge agent serves this device")));
        };
        let who = subject.asker();
        let policy = self.core.policy();
        let confirmed = open.connection.as_ref().map(|c| c.confirmed);
        let admission = match admit(&policy, &who, subject.basis(confirmed), &device, open.mode, open.login, port) {
            Ok(a) => a,
            Err(d) => return Ok(Err(d)),
        };
        let (role, rule, limits) = (admission.role, admission.rule, admission.limits);
        // A ticket is bound to the agent and rule it was issued under: if either moved
        // since, the user's choice was made on other terms.
        if let Evidence::Ticket { agent: bound_agent, rule: bound_rule, .. } = &subject.evidence
            && (*bound_agent != agent || bound_rule != rule.name())
        {
            return Ok(Err(denial(deny::RULE_MISMATCH, "the console's route changed; open it again")));
        }
        // Step-up: the rule asks for a sign-in at most this old — checked here for a
        // ticket too, not only when it was asked for: it may be redeemed up to a minute
        // later, under a policy reloaded since.
        let (Evidence::Certificate { authenticated_at, .. } | Evidence::Ticket { authenticated_at, .. }) =
            &subject.evidence;
        let auth_age = now.saturating_sub(*authenticated_at);
        let step_up = rule.fresh_auth_within().map(|_| auth_age);
        if rule.fresh_auth_within().is_some_and(|within| auth_age > within.as_secs()) {
            return Ok(Err(denial(
                deny::FRESH_AUTH_REQUIRED,
                "this device asks for a recent sign-in: run `portcullis login --fresh` (a new sign-in, not \
                 only a new certificate) and connect again",
            )));
        }

        // A recorded rule: jump mode is end to end and cannot be recorded.
        let recording = rule.recording();
        if recording.is_some() && open.mode == SessionMode::Jump {
            return Ok(Err(denial(
                deny::RECORDING_NEEDS_TERMINATED,
                "sessions on this device are recorded, and jump mode cannot be: connect through the bastion \
                 (ssh LOGIN%DEVICE@BASTION) instead of with -J",
            )));
        }

        // Terminated and console: the bastion's onward login, for this node and login only.
        let mut session_cert = None;
        if let (Some(login), Some(key_line)) = (open.login, open.session_public_key) {
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
                key_id: format!("session:{}:{}", open.session_id, subject.username),
                extensions,
            };
            let Some(signer) = self.core.keyring().signer(KeyPurpose::User) else {
                tracing::error!("no active user CA key for a session certificate");
                return Ok(Err(failed()));
            };
            let signed = match sign_session_cert(&permit, &key, &signer, now, self.core.clock_skew) {
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
            let row = signed.row(
                &signer.fingerprint,
                subject.username.clone(),
                vec![permit.principal.clone()],
                subject.groups.clone(),
                now,
            );
            session_cert = Some((row, text));
        }

        let cert_serial = match &subject.evidence {
            Evidence::Certificate { serial, .. } => Some(*serial),
            Evidence::Ticket { .. } => None,
        };
        let mut lease = LeaseRow {
            session_id: open.session_id.to_owned(),
            bastion: bastion.name.clone(),
            username: subject.username.clone(),
            device: node.name.clone(),
            agent: agent.clone(),
            login: open.login.map(str::to_owned),
            mode: open.mode.as_str().to_owned(),
            port,
            rule: rule.name().to_owned(),
            role: role.name().to_owned(),
            // A ticket's session has no user certificate; its identity is read back
            // from the ticket row (see `store::LeaseCheck::ticket_groups`).
            cert_serial: cert_serial.unwrap_or(0),
            client_ip: open.client_ip.to_owned(),
            opened_at: now,
            heartbeat_at: now,
            absolute_deadline: now.saturating_add(limits.absolute.as_secs()),
            kill_reason: None,
            bytes_from_client: 0,
            bytes_to_client: 0,
            confirmed,
        };
        let [agent_scope, device_scope, user_scope] = lease.scopes();
        let caps = [
            (agent_scope, limits.max_per_agent, "too many sessions through this agent"),
            (device_scope, limits.max_per_device, "too many sessions on this device"),
            (user_scope, limits.max_per_user, "you have too many sessions open"),
        ];
        let mut tx = self.core.store.begin().await?;
        let connection = open.connection.as_ref().map(|c| c.hash.as_str());
        if let Some(connection) = connection {
            let login = open.login.unwrap_or_default();
            let serial = cert_serial.unwrap_or(0);
            let used =
                store::claim_connection_proof(tx.conn(), connection, &bastion.name, serial, &node.name, login, now);
            match used.await? {
                store::ProofUse::Fresh => {}
                store::ProofUse::SameConnection { until } => {
                    lease.absolute_deadline = lease.absolute_deadline.min(until);
                }
                store::ProofUse::Replayed => {
                    drop(tx);
                    return Ok(Err(denial(
                        deny::CONNECTION_PROOF_REPLAYED,
                        "this proof of connection was used before",
                    )));
                }
            }
        }
        for (scope, cap, text) in &caps {
            if !store::take_slot(tx.conn(), scope, *cap).await? {
                drop(tx);
                return Ok(Err(denial(deny::CAP_REACHED, text)));
            }
        }
        if !store::insert_lease(tx.conn(), &lease, connection).await? {
            drop(tx);
            return Err(CaError::Conflict("a session with this id exists".into()));
        }
        if let Some((row, _)) = &session_cert {
            store::insert_cert(tx.conn(), row).await?;
        }
        if let Some(r) = recording {
            store::insert_recording(tx.conn(), &self.recordings.new_row(&lease, r)).await?;
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
                mode: open.mode.as_str(),
                login: lease.login.clone(),
                port,
                client_ip: lease.client_ip.clone(),
                cert_serial: cert_serial.map(|s| s.to_string()),
                session_cert_serial: session_cert.as_ref().map(|(row, _)| row.serial.to_string()),
                session_key_fingerprint: session_cert.as_ref().map(|(row, _)| row.key_fingerprint.clone()),
                target_kind: node.kind.clone(),
                user_session: match &subject.evidence {
                    Evidence::Ticket { user_session, .. } => Some(user_session.clone()),
                    Evidence::Certificate { .. } => None,
                },
                auth_age_secs: step_up,
                recorded: recording.is_some(),
            },
        )
        .await?;
        tx.commit().await?;
        self.core.counters.sessions_opened.inc(&[("mode", open.mode.as_str())]);

        let has = |ext: &str| role.extensions().contains(ext);
        let absolute_secs = lease.absolute_deadline.saturating_sub(now);
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
            host_ca_keys: self.core.trusted_keys(KeyPurpose::Host),
            connect_timeout_ms: u64::try_from(rule.timeout().as_millis()).unwrap_or(u64::MAX),
            idle_timeout_secs: limits.idle.as_secs(),
            idle_counts_output: rule.idle_counts() == IdleCounts::InputOrOutput,
            absolute_timeout_secs: absolute_secs,
            cert_valid_before: subject.valid_before,
            session_certificate: session_cert.map(|(_, text)| text),
            login: lease.login,
            allow_agent_forwarding: has("permit-agent-forwarding"),
            allow_port_forwarding: has("permit-port-forwarding"),
            allow_x11_forwarding: has("permit-X11-forwarding"),
            recording: recording.map(|r| RecordingGrant {
                input: r.input(),
                max_bytes: r.max_bytes(),
                close_at_limit: r.over_limit() == OverLimit::Close,
            }),
        }))
    }

    /// The user certificate a session is opened with: one this CA issued to a user (not a
    /// node, service or session certificate), unrevoked, unexpired, key not revoked, user
    /// not disabled.
    async fn usable_certificate(
        &self,
        serial: u64,
        digest: Option<&str>,
        now: u64,
        user: &mut Option<String>,
    ) -> Result<Result<CertRow, Denial>, CaError> {
        let invalid = |text| Ok(Err(denial(deny::CREDENTIAL_INVALID, text)));
        let Some(cert) = self.core.store.certificate(serial).await? else {
            return invalid("the certificate is unknown to the CA");
        };
        // The very certificate issued under this serial, not another one carrying it
        // (rows from before digests were recorded are known by serial alone).
        if cert.digest.as_deref().is_some_and(|issued| digest != Some(issued)) {
            return invalid("the certificate is not the one the CA issued under its serial");
        }
        let user_ca =
            self.core.keyring().rows().iter().any(|k| k.fingerprint == cert.ca_fingerprint && k.purpose == "user");
        // User certificates (and bastion session certificates, refused by key id) are
        // owned by an account; node, service and discovery certificates are not.
        if !user_ca || parse_account(&cert.username).is_none() || cert.key_id.starts_with("session:") {
            return invalid("not a user certificate");
        }
        *user = Some(cert.username.clone());
        if cert.revoked_at.is_some() || self.core.store.is_key_revoked(&cert.key_fingerprint).await? {
            return invalid("the certificate is revoked");
        }
        if cert.valid_before <= now {
            return invalid("the certificate has expired");
        }
        if cert.valid_after > now.saturating_add(self.core.clock_skew) {
            return invalid("the certificate is not valid yet");
        }
        if self.core.store.user(&cert.username).await?.is_some_and(|u| u.disabled) {
            return invalid("the user is disabled");
        }
        // A directory user is re-checked in the directory.
        if let Some(why) = self.identity.directory_account_refusal(&cert.username).await? {
            return invalid(why);
        }
        // Issued under an identity provider's sign-in that stated no groups: once a deny
        // names a group it could be in, it cannot be judged, like that API session.
        if self.core.policy().cannot_judge(cert.groups_unknown) {
            return invalid(
                "the identity provider stated no groups for the sign-in this certificate was issued under, and a \
                 deny now names groups: it cannot be judged",
            );
        }
        Ok(Ok(cert))
    }

    /// The groups `username` has now, where the CA knows them: the directory's answer
    /// for a directory account (asked again just before, by the credential's check), a
    /// local user's row; `None` for an identity provider's user, who cannot be asked.
    async fn groups_now(&self, username: &str) -> Result<Option<Vec<String>>, CaError> {
        if matches!(parse_account(username), Some((UserSource::Ldap, _)))
            && let Some(groups) = self.identity.directory_groups(username)
        {
            return Ok(Some(groups));
        }
        Ok(self.core.store.user(username).await?.map(|u| u.groups))
    }

    /// The node a session is for, and the address the agent connects to. Jump mode may
    /// name a node by one of its addresses; an address two nodes share names neither.
    async fn resolve_device(&self, asked: &str, mode: SessionMode) -> Result<Option<(NodeRecord, String)>, CaError> {
        if let Some(node) = self.core.store.node(asked).await? {
            let host = node.addresses.first().cloned().unwrap_or_else(|| node.name.clone());
            return Ok(Some((node, host)));
        }
        if mode != SessionMode::Jump {
            return Ok(None);
        }
        let mut matching =
            self.core.store.nodes().await?.into_iter().filter(|n| n.addresses.iter().any(|a| a == asked));
        match (matching.next(), matching.next()) {
            (Some(node), None) => Ok(Some((node, asked.to_owned()))),
            _ => Ok(None),
        }
    }
}
