//! The browser console's control plane: the device list, single-use tickets, and their
//! redemption by a bastion.
//!
//! Guarantees:
//! - A ticket is issued only after, in order: the permission `devices.console.open`, a
//!   supported mode, a known device, a `console_access` rule whose targets and scope
//!   hold it, a console role targeting it, and a role granting the login. Each refusal
//!   is a `console_ticket_denied` record with its reason.
//! - The CA keeps only the ticket's SHA-256; no audit record or log line holds either.
//! - Redemption consumes the ticket with one conditional `UPDATE` before anything else
//!   happens: an unknown, expired or used ticket is refused before any credential is
//!   resolved (no session certificate, no lease). Then the session is admitted exactly
//!   like terminated mode, for the ticket's identity ([`Sessions::admit_session`]).

use super::Sessions;
use super::admission::{console_logins, console_roles, denial, valid_login, valid_session_id};
use super::{Evidence, OpenSpec, Subject};
use crate::audit::{self, AuditEvent, sanitize};
use crate::error::CaError;
use crate::service::caller::{random_token, token_hash};
use crate::service::pve::Link;
use crate::service::{Caller, ServiceCaller};
use crate::store::{self, Redeemed, TicketRow, TicketState};
use portcullis_policies::{DenyReason, Grant, Identity, Permission, Policy, Purpose, proof};
use portcullis_proto::bastion::{SessionGrant, SessionMode, deny_reason as deny};
use portcullis_proto::console::{
    ConsoleDevice, ConsoleGuest, ConsoleMode, ConsoleOpenRequest, TICKET_TTL_SECS, TicketRequest, TicketResponse,
    deny_reason as ticket_deny,
};
use std::collections::HashMap;
use tracing::Instrument;

/// The bastion's console WebSocket, relative to the page's origin.
pub const WEBSOCKET_PATH: &str = "/console/ws";
/// Used and expired tickets are forgotten this long after expiry (unless their session
/// still lives: its identity is read from the ticket).
const TICKET_RETENTION_SECS: u64 = 600;

/// Ticket text: `pct_` + 43 characters of URL-safe base64 (32 bytes).
fn valid_ticket(t: &str) -> bool {
    t.strip_prefix("pct_")
        .is_some_and(|b| b.len() == 43 && b.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
}

fn valid_device_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// A ticket refusal: the audited reason, and what the user is told (an unknown device
/// reads like one out of the user's scope, so the list of devices cannot be probed).
struct Refusal {
    audited: &'static str,
    error: CaError,
}

fn refuse(audited: &'static str, public: &'static str, message: &'static str) -> Refusal {
    Refusal { audited, error: CaError::TicketDenied { reason: public, message } }
}

/// What the device list says on a guest's row.
const GUEST_CONSOLE_UNAVAILABLE: &str =
    "Proxmox VE guest consoles (termproxy, vncwebsocket) are not served yet; open the console of its node";

/// A guest is listed to, and told apart from an unknown device for, whoever holds a
/// console role targeting it (its `console_access` rule is not asked: no console opens).
fn sees_guest(policy: &Policy, who: &Identity, guest: &portcullis_policies::Device) -> bool {
    !console_roles(policy, who, guest).is_empty()
}

/// What a node's row says when the caller may read it but opens no console there.
const NO_CONSOLE_ROLE: &str = "no console role of yours reaches this device";
const NO_CONSOLE_RULE: &str = "no console_access rule covers this device, or no agent reaches it";

impl Sessions {
    /// `GET /v1/console/devices`: the devices the caller may open a console to, with the
    /// logins a console may use there (and PVE's cluster and status for a linked host),
    /// then the Proxmox VE guests a console role of theirs reaches, listed without a console.
    pub async fn console_devices(&self, caller: &Caller) -> Result<Vec<ConsoleDevice>, CaError> {
        self.device_list(caller, None).await
    }

    /// The console user's list; with the proof that the caller may read the inventory,
    /// every node and guest, each saying why the caller opens no console there when they
    /// cannot (the details pages then cover every device).
    pub(crate) async fn device_list(
        &self,
        caller: &Caller,
        inventory: Option<&Grant<proof::InventoryRead>>,
    ) -> Result<Vec<ConsoleDevice>, CaError> {
        let policy = self.core.policy();
        let who = &caller.identity;
        let inventory = inventory.is_some();
        if !inventory && policy.holds(who, Permission::DevicesConsoleOpen).is_err() {
            return Ok(Vec::new());
        }
        let mut hardware = self.discovery.hardware_facts().await?;
        // (agent, cluster, PVE node) → the enrolled node it is, and the reverse with PVE's
        // view of it.
        let mut parent_of = HashMap::new();
        let mut pve_of = HashMap::new();
        let nodes = self.core.store.nodes().await?;
        for (pve, link) in self.proxmox.pve_links(&nodes).await? {
            if let Link::Enrolled(name) = link {
                parent_of.insert((pve.agent, pve.cluster.clone(), pve.name), name.clone());
                pve_of.insert(name, (pve.cluster, pve.status));
            }
        }
        let connected: std::collections::BTreeSet<String> =
            self.core.live_bastions().await?.into_iter().flat_map(|b| b.agents).collect();
        let up = |agent: &Option<String>| agent.as_ref().map(|a| connected.contains(a));
        let mut last_seen = self.core.store.nodes_last_seen().await?;
        let mut out = Vec::new();
        for node in nodes {
            let device = self.core.device(&node);
            let covered = device.agent.is_some() && policy.match_rule(Purpose::ConsoleAccess, &device).is_ok();
            let logins = if covered { console_logins(&policy, who, &device) } else { Default::default() };
            let console_unavailable = match (covered, logins.is_empty()) {
                (true, false) => None,
                _ if !inventory => continue,
                (false, _) => Some(NO_CONSOLE_RULE.to_owned()),
                (true, true) => Some(NO_CONSOLE_ROLE.to_owned()),
            };
            let (cluster, status) = pve_of.remove(&node.name).unzip();
            let seen = last_seen.remove(&node.name);
            out.push(ConsoleDevice {
                hardware: hardware.remove(&node.name),
                name: node.name,
                addresses: node.addresses,
                agent_connected: up(&device.agent),
                last_seen: seen,
                agent: device.agent,
                logins: logins.into_iter().collect(),
                tags: node.tags,
                cluster,
                status,
                guest: None,
                console_unavailable,
            });
        }
        for (guest, device) in self.proxmox.guest_devices().await? {
            if !inventory && !sees_guest(&policy, who, &device) {
                continue;
            }
            let parent = parent_of.get(&(guest.agent, guest.cluster.clone(), guest.node.clone())).cloned();
            out.push(ConsoleDevice {
                name: device.name,
                addresses: Vec::new(),
                agent_connected: up(&device.agent),
                last_seen: None,
                agent: device.agent,
                logins: Vec::new(),
                tags: device.tags,
                hardware: None,
                cluster: Some(guest.cluster),
                status: Some(guest.status),
                guest: Some(ConsoleGuest {
                    vmid: guest.vmid,
                    kind: guest.kind,
                    name: guest.name,
                    node: guest.node,
                    parent,
                }),
                console_unavailable: Some(GUEST_CONSOLE_UNAVAILABLE.to_owned()),
            });
        }
        Ok(out)
    }

    /// Why a device that is no node gets no ticket: a Proxmox VE guest the caller may see
    /// gets the explicit unsupported-console answer (its consoles, `termproxy` and
    /// `vncwebsocket`, are not served); anything else reads like an unknown device.
    async fn guest_refusal(&self, policy: &Policy, who: &Identity, name: &str) -> Result<Refusal, CaError> {
        let guests = self.proxmox.guest_devices().await?;
        let visible = guests.iter().find(|(_, d)| d.name == name).filter(|(_, d)| sees_guest(policy, who, d));
        Ok(match visible {
            Some((guest, device)) => Refusal {
                audited: "guest_console_unsupported",
                error: CaError::GuestConsoleUnsupported { device: device.name.clone(), node: guest.node.clone() },
            },
            None => refuse("unknown_device", "out_of_scope", "this device is not available to you"),
        })
    }

    /// `POST /v1/console/tickets`.
    pub async fn console_ticket(
        &self,
        caller: &Caller,
        req: &TicketRequest,
        client_ip: &str,
    ) -> Result<TicketResponse, CaError> {
        if !valid_device_name(&req.device) || !valid_login(&req.login) {
            return Err(CaError::BadRequest("invalid ticket request: device or login".into()));
        }
        let user = caller.identity.username.clone();
        let span = tracing::info_span!("console_ticket", %user, device = %req.device);
        let (device, login, mode) = (sanitize(&req.device), sanitize(&req.login), req.mode.as_str());
        self.core
            .audit_alone(AuditEvent::ConsoleTicketRequested {
                user: user.clone(),
                device: device.clone(),
                login: login.clone(),
                mode,
                client_ip: client_ip.to_owned(),
                user_session: caller.session_ref(),
            })
            .await?;
        let decided = self.decide_ticket(caller, req).instrument(span.clone()).await?;
        let row = match decided {
            Ok(row) => row,
            Err(refusal) => {
                span.in_scope(|| tracing::info!(reason = refusal.audited, "console ticket denied"));
                self.core
                    .audit_alone(AuditEvent::ConsoleTicketDenied {
                        user,
                        device,
                        login,
                        mode,
                        reason: refusal.audited,
                        client_ip: client_ip.to_owned(),
                        user_session: caller.session_ref(),
                    })
                    .await?;
                return Err(refusal.error);
            }
        };
        let ticket = random_token("pct_");
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        store::purge_tickets(tx.conn(), now.saturating_sub(TICKET_RETENTION_SECS)).await?;
        store::insert_ticket(tx.conn(), &token_hash(&ticket), &row).await?;
        audit::record(
            tx.conn(),
            now,
            &AuditEvent::ConsoleTicketGranted {
                user: row.username.clone(),
                device: row.device.clone(),
                login: row.login.clone(),
                mode,
                agent: row.agent.clone(),
                rule: row.rule.clone(),
                expires_at: row.expires_at,
                client_ip: client_ip.to_owned(),
                user_session: caller.session_ref(),
                auth_age_secs: self
                    .core
                    .policy()
                    .rule(&row.rule)
                    .and_then(|r| r.fresh_auth_within())
                    .map(|_| now.saturating_sub(caller.authenticated_at)),
            },
        )
        .await?;
        tx.commit().await?;
        span.in_scope(|| tracing::info!(rule = %row.rule, agent = %row.agent, "console ticket granted"));
        Ok(TicketResponse {
            ticket: ticket.into(),
            expires_at: row.expires_at,
            websocket_path: WEBSOCKET_PATH.to_owned(),
        })
    }

    /// The ticket checks in the documented order; the first failure is the refusal.
    async fn decide_ticket(&self, caller: &Caller, req: &TicketRequest) -> Result<Result<TicketRow, Refusal>, CaError> {
        let now = self.core.now();
        let who = &caller.identity;
        let limiter_key = format!("user:{}", who.username);
        if let Some(retry_after) = self.ticket_requests.blocked(&limiter_key, now) {
            return Ok(Err(Refusal { audited: "rate_limited", error: CaError::RateLimited { retry_after } }));
        }
        self.ticket_requests.hit(&limiter_key, now);
        let policy = self.core.policy();
        if policy.holds(who, Permission::DevicesConsoleOpen).is_err() {
            return Ok(Err(refuse(
                "missing_permission",
                "missing_permission",
                "the browser console is not granted to you",
            )));
        }
        if req.mode != ConsoleMode::Ssh {
            return Ok(Err(Refusal { audited: "unsupported_mode", error: CaError::UnsupportedConsoleMode }));
        }
        let unavailable = "this device is not available to you";
        let Some(node) = self.core.store.node(&req.device).await? else {
            return Ok(Err(self.guest_refusal(&policy, who, &req.device).await?));
        };
        let device = self.core.device(&node);
        // Only a user a console role lets see the device learns more than "not available":
        // for anyone else an existing device reads like an unknown one.
        if console_roles(&policy, who, &device).is_empty() {
            return Ok(Err(refuse("out_of_scope", "out_of_scope", unavailable)));
        }
        let rule = match policy.match_rule(Purpose::ConsoleAccess, &device) {
            Ok(rule) => rule,
            // The seed's "No scoped console credential rule matched this device".
            Err(d) if d.reason == DenyReason::OutOfScope => {
                return Ok(Err(refuse(
                    "out_of_scope",
                    "out_of_scope",
                    "no scoped console rule matched this device: a console_access rule targets it, but its scope \
                     does not hold the device's agent, gateway or partition (ask an administrator)",
                )));
            }
            Err(_) => {
                return Ok(Err(refuse(
                    "rule_mismatch",
                    "rule_mismatch",
                    "no console rule matched this device: no console_access rule targets it (ask an administrator)",
                )));
            }
        };
        let Some(agent) = device.agent.clone() else {
            return Ok(Err(refuse("no_agent", "no_agent", "no edge agent serves this device")));
        };
        if !console_logins(&policy, who, &device).contains(&req.login) {
            return Ok(Err(refuse("not_authorized", "not_authorized", "no role grants this login on this device")));
        }
        // Step-up: the rule asks for a sign-in at most this old.
        if rule.fresh_auth_within().is_some_and(|within| now.saturating_sub(caller.authenticated_at) > within.as_secs())
        {
            return Ok(Err(refuse(
                ticket_deny::FRESH_AUTH_REQUIRED,
                ticket_deny::FRESH_AUTH_REQUIRED,
                "this device asks for a recent sign-in: sign out, sign in again, then open the console",
            )));
        }
        Ok(Ok(TicketRow {
            username: who.username.clone(),
            groups: who.groups.iter().cloned().collect(),
            device: node.name,
            login: req.login.clone(),
            mode: req.mode.as_str().to_owned(),
            agent,
            rule: rule.name().to_owned(),
            credential_expires_at: caller.expires_at,
            api_session_hash: caller.token_hash().to_owned(),
            issued_at: now,
            expires_at: now.saturating_add(TICKET_TTL_SECS),
        }))
    }

    /// `POST /v1/bastion/console/open`: redeem a ticket and open its session.
    pub async fn open_console_session(
        &self,
        bastion: &ServiceCaller,
        req: &ConsoleOpenRequest,
    ) -> Result<SessionGrant, CaError> {
        if !valid_session_id(&req.session_id) {
            return Err(CaError::BadRequest("invalid console request: session_id".into()));
        }
        if req.client_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(CaError::BadRequest("invalid console request: client_ip".into()));
        }
        if req.session_public_key.is_empty() || req.session_public_key.len() > 16 * 1024 {
            return Err(CaError::BadRequest("invalid console request: session_public_key".into()));
        }
        let span = tracing::info_span!("console_open", session_id = %req.session_id, bastion = %bastion.name);
        let now = self.core.now();
        // First and before anything else: consume the ticket.
        let consumed = if valid_ticket(req.ticket.expose()) {
            let mut tx = self.core.store.begin().await?;
            // Bound to the browser session that asked for it; no cookie binds to nothing.
            let binding = req.browser_session.as_deref().unwrap_or("");
            let row = store::consume_ticket(tx.conn(), &token_hash(req.ticket.expose()), &req.session_id, binding, now)
                .await?;
            // In the same transaction: the open may still fail (the database, the
            // directory, the bastion giving up), and a ticket must not be used up
            // without a trace — its retry would read as a replay.
            if let Some(ticket) = &row {
                let redeemed = AuditEvent::ConsoleTicketRedeemed {
                    session_id: req.session_id.clone(),
                    bastion: bastion.name.clone(),
                    user: ticket.username.clone(),
                    device: ticket.device.clone(),
                    client_ip: req.client_ip.clone(),
                };
                audit::record(tx.conn(), now, &redeemed).await?;
            }
            tx.commit().await?;
            row
        } else {
            None
        };
        let Some(ticket) = consumed else {
            return Err(self.ticket_refused(bastion, req, now).instrument(span).await?);
        };
        let (user, device, login) = (ticket.username.clone(), ticket.device.clone(), ticket.login.clone());
        let result = self.redeem(bastion, req, ticket).instrument(span.clone()).await?;
        match result {
            Ok(grant) => {
                span.in_scope(|| tracing::info!(%user, %device, "console session opened"));
                Ok(grant)
            }
            Err(d) => {
                span.in_scope(|| tracing::info!(%user, reason = d.reason, "console session denied"));
                self.core
                    .audit_alone(AuditEvent::SessionDenied {
                        session_id: req.session_id.clone(),
                        bastion: bastion.name.clone(),
                        user: Some(user),
                        device,
                        mode: SessionMode::Console.as_str(),
                        login: Some(login),
                        reason: d.reason,
                        phase: audit::failure_phase(d.reason),
                        client_ip: req.client_ip.clone(),
                    })
                    .await?;
                self.core
                    .counters
                    .sessions_denied
                    .inc(&[("mode", SessionMode::Console.as_str()), ("reason", d.reason)]);
                Err(CaError::SessionDenied { reason: d.reason, message: d.text.to_owned() })
            }
        }
    }

    /// Why a ticket could not be consumed: audited, and the bastion's answer.
    async fn ticket_refused(
        &self,
        bastion: &ServiceCaller,
        req: &ConsoleOpenRequest,
        now: u64,
    ) -> Result<CaError, CaError> {
        let state = if valid_ticket(req.ticket.expose()) {
            self.core.store.ticket_state(&token_hash(req.ticket.expose()), now).await?
        } else {
            TicketState::Unknown
        };
        let (session_id, bastion_name, client_ip) =
            (req.session_id.clone(), bastion.name.clone(), req.client_ip.clone());
        let junk = matches!(state, TicketState::Unknown);
        let expired = matches!(state, TicketState::Expired(_));
        let (reason, text, event) = match state {
            TicketState::Unknown => (
                ticket_deny::TICKET_INVALID,
                "the console ticket is not valid",
                AuditEvent::SessionDenied {
                    session_id,
                    bastion: bastion_name,
                    user: None,
                    device: String::new(),
                    mode: SessionMode::Console.as_str(),
                    login: None,
                    reason: ticket_deny::TICKET_INVALID,
                    phase: audit::failure_phase(ticket_deny::TICKET_INVALID),
                    client_ip,
                },
            ),
            TicketState::Expired(t) => (
                ticket_deny::TICKET_EXPIRED,
                "the console ticket has expired; open the console again",
                AuditEvent::ConsoleTicketExpired {
                    session_id,
                    bastion: bastion_name,
                    user: t.username,
                    device: t.device,
                    client_ip,
                },
            ),
            // Public answer as for an unknown ticket: the presenter holds no session of
            // the owner's, so it learns nothing more.
            TicketState::OtherSession(t) => (
                ticket_deny::TICKET_INVALID,
                "the console ticket is not valid",
                AuditEvent::ConsoleTicketWrongSession {
                    session_id,
                    bastion: bastion_name,
                    user: t.username,
                    device: t.device,
                    client_ip,
                },
            ),
            TicketState::Used(t) => (
                ticket_deny::TICKET_REUSED,
                "the console ticket was used already",
                AuditEvent::ConsoleTicketReused {
                    session_id,
                    bastion: bastion_name,
                    user: t.username,
                    device: t.device,
                    client_ip,
                },
            ),
        };
        tracing::info!(reason, "console ticket refused");
        // Junk costs its sender nothing: recorded once per source and window, then
        // counted. A real ticket's fate is always recorded (tickets are rate-limited).
        if junk {
            self.core.audit_refusal(&req.client_ip, reason, "", event).await?;
        } else {
            let mut tx = self.core.store.begin().await?;
            // An expired ticket presented has its record here: housekeeping's record of
            // its lapse would be a second one for the same ticket.
            if expired {
                store::claim_lapsed_ticket(tx.conn(), &token_hash(req.ticket.expose())).await?;
            }
            audit::record(tx.conn(), now, &event).await?;
            tx.commit().await?;
        }
        self.core.counters.sessions_denied.inc(&[("mode", SessionMode::Console.as_str()), ("reason", reason)]);
        Ok(CaError::SessionDenied { reason, message: text.to_owned() })
    }

    /// Admission for a consumed ticket: the ticket's identity, the same decision as
    /// terminated mode.
    async fn redeem(
        &self,
        bastion: &ServiceCaller,
        req: &ConsoleOpenRequest,
        ticket: Redeemed,
    ) -> Result<Result<SessionGrant, super::admission::Denial>, CaError> {
        let ticket = ticket.into_row();
        if self.core.store.user(&ticket.username).await?.is_some_and(|u| u.disabled) {
            return Ok(Err(denial(deny::CREDENTIAL_INVALID, "the user is disabled")));
        }
        let Some((api_session, _)) = self.core.store.session(&ticket.api_session_hash, self.core.now()).await? else {
            return Ok(Err(denial(deny::CREDENTIAL_INVALID, "you have signed out")));
        };
        if self.core.policy().cannot_judge(api_session.groups_unknown) {
            return Ok(Err(denial(
                deny::CREDENTIAL_INVALID,
                "the identity provider stated no groups for your sign-in, and a deny now names groups: it cannot be \
                 judged",
            )));
        }
        if let Some(why) = self.identity.directory_account_refusal(&ticket.username).await? {
            return Ok(Err(denial(deny::CREDENTIAL_INVALID, why)));
        }
        let Some(node) = self.core.store.node(&ticket.device).await? else {
            return Ok(Err(denial(deny::UNKNOWN_DEVICE, "no such device")));
        };
        let target_host = node.addresses.first().cloned().unwrap_or_else(|| node.name.clone());
        let subject = Subject {
            groups_now: self.groups_now(&ticket.username).await?,
            username: ticket.username,
            groups: ticket.groups,
            valid_before: ticket.credential_expires_at,
            evidence: Evidence::Ticket {
                agent: ticket.agent,
                rule: ticket.rule,
                user_session: crate::service::caller::session_ref(&ticket.api_session_hash),
                authenticated_at: api_session.authenticated_at,
            },
        };
        let open = OpenSpec {
            session_id: &req.session_id,
            mode: SessionMode::Console,
            login: Some(&ticket.login),
            port: node.ssh_port_or_default(),
            session_public_key: Some(&req.session_public_key),
            client_ip: &req.client_ip,
            // The browser's fresh ticket, consumed above, is this session's proof.
            connection: None,
        };
        self.admit_session(bastion, &subject, &node, target_host, &open).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_shape() {
        let t = random_token("pct_");
        assert!(valid_ticket(&t), "{t}");
        assert!(!valid_ticket(&t[..t.len() - 1]));
        assert!(!valid_ticket(&t.replace("pct_", "pcs_")));
        assert!(!valid_ticket("pct_!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"));
    }
}
