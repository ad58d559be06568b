//! Heartbeats: a bastion's leases kept alive, quiet bastions' leases reclaimed, and
//! the close orders for sessions that may not go on.

use super::Sessions;
use super::admission::{Asker, Basis, admit, mode_from, valid_session_id};
use super::close::closed_event;
use crate::audit::{self, AuditEvent};
use crate::error::CaError;
use crate::service::directory::Standing;
use crate::service::services::{ServiceCaller, valid_service_name};
use crate::store::{self, LeaseCheck};
use portcullis_policies::{Device, Policy, UserSource, parse_account};
use portcullis_proto::bastion::*;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Most sessions one heartbeat may list.
const MAX_HEARTBEAT_SESSIONS: usize = 20_000;
const MAX_HEARTBEAT_AGENTS: usize = 1_000;
/// A live lease is rewritten at least this often (well inside `LEASE_TTL_SECS`).
const REFRESH_AFTER_SECS: u64 = 5;

impl Sessions {
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
        // Heartbeats are the CA's steady pulse: a finished refusal window is written here
        // even when nobody is refused any more.
        self.core.flush_refusals().await?;
        let now = self.core.now();
        let cutoff = now.saturating_sub(LEASE_TTL_SECS);
        let listed: BTreeMap<&str, &LiveSession> = req.sessions.iter().map(|s| (s.session_id.as_str(), s)).collect();
        let agents: Vec<String> = req.agents.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();

        // One read for all of this bastion's leases, with what the close decision needs;
        // found by reference (thousands of wide rows are neither moved nor sorted).
        let read = self.core.store.lease_checks(&bastion.name, now).await?;
        let checks: HashMap<&str, &LeaseCheck> = read.iter().map(|c| (c.lease.session_id.as_str(), c)).collect();
        let mut lost = HashSet::new();
        let mut due = Vec::new();
        for (id, s) in &listed {
            let Some(lease) = checks.get(*id).map(|c| &c.lease).filter(|l| l.heartbeat_at >= cutoff) else {
                lost.insert(*id);
                continue;
            };
            // An idle session costs a read, not a write, per heartbeat: its lease is
            // rewritten when its counters moved or every few seconds.
            if lease.heartbeat_at.saturating_add(REFRESH_AFTER_SECS) <= now
                || lease.bytes_from_client != s.bytes_from_client
                || lease.bytes_to_client != s.bytes_to_client
            {
                due.push(store::Beat {
                    session_id: id,
                    bytes_from_client: s.bytes_from_client,
                    bytes_to_client: s.bytes_to_client,
                });
            }
        }
        let mut tx = self.core.store.begin().await?;
        lost.extend(store::heartbeat_leases(tx.conn(), &bastion.name, now, cutoff, &due).await?);
        store::record_bastion_heartbeat(tx.conn(), &bastion.name, &agents, now).await?;
        for agent in &agents {
            store::touch_service(tx.conn(), ServiceKind::Agent.as_str(), agent, now).await?;
        }
        tx.commit().await?;

        self.sweep_leases(cutoff).await?;
        self.audit_lapsed_tickets(now).await?;

        let directory_accounts: BTreeSet<&str> = listed
            .keys()
            .filter_map(|id| checks.get(*id))
            .map(|c| c.lease.username.as_str())
            .filter(|u| matches!(parse_account(u), Some((UserSource::Ldap, _))))
            .collect();
        let standings = self.identity.directory_standings(&directory_accounts).await?;

        let policy = self.core.policy();
        // Every lease on a node sees the same record (one statement read them all), so
        // the node is turned into the policy's view of it once per heartbeat.
        let mut devices: HashMap<&str, Device> = HashMap::new();
        let mut close = Vec::new();
        for id in listed.keys() {
            let reason = match checks.get(*id) {
                _ if lost.contains(id) => Some(CloseReason::LeaseLost),
                Some(check) => {
                    let device = check.node.as_deref().map(|node| {
                        &*devices.entry(check.lease.device.as_str()).or_insert_with(|| self.core.device(node))
                    });
                    self.must_close(&policy, check, device, standings.get(&check.lease.username))
                }
                None => Some(CloseReason::LeaseLost),
            };
            if let Some(reason) = reason {
                close.push(CloseOrder { session_id: (*id).to_owned(), reason });
            }
        }
        Ok(HeartbeatResponse { close })
    }

    /// Why a live session must end now, if it must; `directory` is what the directory
    /// last said about a directory user's account.
    /// `device` is the policy's view of the lease's node (`None`: the node is gone).
    fn must_close(
        &self,
        policy: &Policy,
        check: &LeaseCheck,
        device: Option<&Device>,
        directory: Option<&Standing>,
    ) -> Option<CloseReason> {
        let lease = &check.lease;
        if let Some(reason) = &lease.kill_reason {
            // An administrator's kill, or the CA's own (a first host key that is
            // another node's).
            return Some(reason.parse().unwrap_or(CloseReason::AdminTerminated));
        }
        // The bastion enforces the absolute limit itself; this is the backstop that holds
        // even if it does not (a bug, a clock jump on its side).
        if self.core.now() >= lease.absolute_deadline {
            return Some(CloseReason::AbsoluteTimeout);
        }
        // A console session opened with a ticket names no user certificate: its
        // identity is the ticket's, and it lives as long as the API session (cookie) the
        // ticket was asked with: logout or revoking the user ends it.
        let ticketed = check.ticket_groups.as_ref().filter(|_| lease.mode == SessionMode::Console.as_str());
        let credential_ended = match ticketed {
            Some(_) => check.api_session_ended,
            None => check.cert_revoked || check.key_revoked,
        };
        if check.user_disabled || credential_ended || matches!(directory, Some(Standing::Refused)) {
            return Some(CloseReason::Revoked);
        }
        let (Some(device), Some(mode)) = (device, mode_from(&lease.mode)) else {
            return Some(CloseReason::PolicyChanged);
        };
        // Opened on an identity provider's word that stated no groups: once a deny names
        // a group the user could be in, the session cannot be judged (as its API
        // session cannot, see `IdentityService::caller`).
        if policy.cannot_judge(check.groups_unknown) {
            return Some(CloseReason::PolicyChanged);
        }
        let recorded = ticketed.unwrap_or(&check.cert_groups);
        // Groups as of sign-in or issuance, against the user's now (a local user's row,
        // or the directory's last answer): removing a group ends the sessions it granted
        // (the seed: close when RBAC is revoked), joining one a deny names ends them too,
        // and a session never gains access it was not opened with (see `Asker`).
        let current = match directory {
            Some(Standing::Groups(groups)) => Some(groups),
            _ => check.user_groups.as_ref(),
        };
        let who = Asker::new(&lease.username, recorded, current.map(Vec::as_slice));
        let principals: BTreeSet<String> = check.cert_principals.iter().cloned().collect();
        let basis = match ticketed {
            Some(_) => Basis::Ticket,
            None => Basis::Certificate { principals: &principals, confirmed: lease.confirmed, held: Some(&lease.role) },
        };
        match admit(policy, &who, basis, device, mode, lease.login.as_deref(), lease.port) {
            Ok(_) => None,
            Err(_) => Some(CloseReason::PolicyChanged),
        }
    }

    /// Audits console tickets that expired unused (a few per heartbeat and per
    /// housekeeping round, each once).
    pub(in crate::service) async fn audit_lapsed_tickets(&self, now: u64) -> Result<(), CaError> {
        let lapsed = self.core.store.lapsed_tickets(now, 100).await?;
        if lapsed.is_empty() {
            return Ok(());
        }
        let mut tx = self.core.store.begin().await?;
        for t in lapsed {
            if !store::claim_lapsed_ticket(tx.conn(), &t.ticket_hash).await? {
                continue;
            }
            let event = AuditEvent::ConsoleTicketLapsed {
                user: t.username,
                device: t.device,
                login: t.login,
                issued_at: t.issued_at,
                expires_at: t.expires_at,
            };
            audit::record(tx.conn(), now, &event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes every lease not heartbeated since `cutoff`, one transaction each (so no
    /// transaction holds counters of several leases), releasing its slots.
    pub(in crate::service) async fn sweep_leases(&self, cutoff: u64) -> Result<(), CaError> {
        for id in self.core.store.stale_leases(cutoff).await? {
            let now = self.core.now();
            let mut tx = self.core.store.begin().await?;
            let mut reclaimed = None;
            if let Some(lease) = store::sweep_lease(tx.conn(), &id, cutoff).await? {
                store::end_recording(tx.conn(), &lease.session_id, now, true).await?;
                let duration_ms = now.saturating_sub(lease.opened_at).saturating_mul(1000);
                let event = closed_event(
                    &lease,
                    CloseReason::LeaseLost,
                    lease.bytes_from_client,
                    lease.bytes_to_client,
                    duration_ms,
                    now,
                );
                audit::record(tx.conn(), now, &event).await?;
                tracing::warn!(session_id = %lease.session_id, bastion = %lease.bastion, "lease lost: reclaimed");
                reclaimed = Some(lease);
            }
            tx.commit().await?;
            if let Some(lease) = reclaimed {
                self.count_close(&lease, CloseReason::LeaseLost, lease.bytes_from_client, lease.bytes_to_client);
            }
        }
        Ok(())
    }
}
