//! What only a bastion sees (refused certificates, onward connections, agents coming
//! and going), turned into typed audit records. The bastion is trusted to report, not to
//! write free text into the trail: codes are checked, names validated, peer-typed text
//! sanitized and truncated, the batch bounded.

use super::Sessions;
use super::valid_session_id;
use crate::audit::{self, AuditEvent, sanitize};
use crate::error::CaError;
use crate::service::services::{ServiceCaller, valid_service_name};
use crate::store::LeaseRow;
use portcullis_proto::bastion::{BastionAuditEvent, BastionEventsRequest, CloseReason};
use portcullis_proto::refusals::{MAX_KEYS, RefusalCount};
use std::collections::BTreeMap;

pub const MAX_EVENTS: usize = 1000;

/// `reason` of `broker_failed`, as the contract lists them.
const BROKER_FAILURES: [&str; 6] = [
    "target_unreachable",
    "agent_unavailable",
    "host_key_mismatch",
    "onward_auth_failed",
    "agent_refused",
    "unsupported_mode",
];

/// A stable reason code: `[a-z0-9_]{1,64}`.
fn valid_code(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn bad(what: &str) -> CaError {
    CaError::BadRequest(format!("invalid bastion event: {what}"))
}

impl Sessions {
    /// `POST /v1/bastion/events`: all records of a batch commit together, or none.
    pub async fn bastion_events(&self, bastion: &ServiceCaller, req: &BastionEventsRequest) -> Result<(), CaError> {
        if req.events.len() > MAX_EVENTS {
            return Err(bad("too many events in one batch"));
        }
        let needs_leases = req.events.iter().any(|e| {
            matches!(
                e,
                BastionAuditEvent::BrokerConnected { .. }
                    | BastionAuditEvent::BrokerFailed { .. }
                    | BastionAuditEvent::HostKeyFirstUsed { .. }
            )
        });
        let leases: BTreeMap<String, LeaseRow> = if needs_leases {
            self.core
                .store
                .bastion_leases(&bastion.name)
                .await?
                .into_iter()
                .map(|l| (l.session_id.clone(), l))
                .collect()
        } else {
            BTreeMap::new()
        };
        let name = || bastion.name.clone();
        let mut events = Vec::with_capacity(req.events.len());
        let mut first_keys = Vec::new();
        for event in &req.events {
            events.push(match event {
                BastionAuditEvent::HostKeyFirstUsed { session_id, host_key } => {
                    if !valid_session_id(session_id) {
                        return Err(bad("session_id"));
                    }
                    let key = ssh_key::PublicKey::from_openssh(host_key.trim()).map_err(|_| bad("host_key"))?;
                    // Only for a session of this bastion's: it cannot name another node.
                    if let Some(lease) = leases.get(session_id) {
                        first_keys.push((lease, key));
                    }
                    continue;
                }
                BastionAuditEvent::AuthRefused { client_ip, user, reason } => {
                    if client_ip.parse::<std::net::IpAddr>().is_err() {
                        return Err(bad("client_ip"));
                    }
                    if !valid_code(reason) {
                        return Err(bad("reason"));
                    }
                    // `user` is what the client typed: kept, but sanitized and short.
                    AuditEvent::BastionAuthRefused {
                        bastion: name(),
                        client_ip: client_ip.clone(),
                        user: sanitize(user),
                        reason: reason.clone(),
                    }
                }
                BastionAuditEvent::BrokerConnected { session_id, agent, setup_ms } => {
                    if !valid_session_id(session_id) || !valid_service_name(agent) {
                        return Err(bad("session_id or agent"));
                    }
                    let lease = leases.get(session_id);
                    AuditEvent::BrokerConnected {
                        bastion: name(),
                        session_id: session_id.clone(),
                        user: lease.map(|l| l.username.clone()),
                        device: lease.map(|l| l.device.clone()),
                        agent: agent.clone(),
                        mode: lease.map(|l| l.mode.clone()),
                        login: lease.and_then(|l| l.login.clone()),
                        client_ip: lease.map(|l| l.client_ip.clone()),
                        setup_ms: *setup_ms,
                    }
                }
                BastionAuditEvent::BrokerFailed { session_id, agent, reason } => {
                    if !valid_session_id(session_id) || !valid_service_name(agent) {
                        return Err(bad("session_id or agent"));
                    }
                    if !BROKER_FAILURES.contains(&reason.as_str()) {
                        return Err(bad("reason"));
                    }
                    let lease = leases.get(session_id);
                    AuditEvent::BrokerFailed {
                        bastion: name(),
                        session_id: session_id.clone(),
                        user: lease.map(|l| l.username.clone()),
                        device: lease.map(|l| l.device.clone()),
                        agent: agent.clone(),
                        mode: lease.map(|l| l.mode.clone()),
                        login: lease.and_then(|l| l.login.clone()),
                        client_ip: lease.map(|l| l.client_ip.clone()),
                        reason: reason.clone(),
                        phase: audit::failure_phase(reason),
                    }
                }
                BastionAuditEvent::AgentConnected { agent, remote } => {
                    if !valid_service_name(agent) {
                        return Err(bad("agent"));
                    }
                    AuditEvent::AgentConnected { bastion: name(), agent: agent.clone(), remote: sanitize(remote) }
                }
                BastionAuditEvent::AgentDisconnected { agent } => {
                    if !valid_service_name(agent) {
                        return Err(bad("agent"));
                    }
                    AuditEvent::AgentDisconnected { bastion: name(), agent: agent.clone() }
                }
                BastionAuditEvent::RefusalsSummarized { window_start, window_end, counts: summarized, overflow } => {
                    if summarized.len() > MAX_KEYS || window_end < window_start {
                        return Err(bad("refusal summary"));
                    }
                    let mut counts = Vec::with_capacity(summarized.len());
                    for c in summarized {
                        if c.source.parse::<std::net::IpAddr>().is_err() || !valid_code(&c.reason) || c.users.len() > 4
                        {
                            return Err(bad("refusal count"));
                        }
                        counts.push(RefusalCount { users: c.users.iter().map(|u| sanitize(u)).collect(), ..c.clone() });
                    }
                    AuditEvent::RefusalsSummarized {
                        origin: name(),
                        window_start: *window_start,
                        window_end: *window_end,
                        counts,
                        overflow: *overflow,
                    }
                }
            });
        }
        if events.is_empty() && first_keys.is_empty() {
            return Ok(());
        }
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        for (lease, key) in first_keys {
            if let Some(pinned) = self.pin_first_key(&mut tx, bastion, lease, &key, now).await? {
                events.push(pinned);
            }
        }
        let records: Vec<(u64, &AuditEvent)> = events.iter().map(|e| (now, e)).collect();
        audit::record_many(tx.conn(), &records).await?;
        // A session reached its node: the node is alive.
        for event in &events {
            if let AuditEvent::BrokerConnected { device: Some(device), .. } = event {
                crate::store::touch_node(tx.conn(), device, now).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Trust on first use: pins `key` as the host key of `lease`'s node when the node
    /// still has none and the rule the session was admitted under (as the policy says
    /// now) trusts on first use. Read and written on the batch's transaction, so two
    /// first uses at once pin one key, and an administrator's or an enrollment's pin is
    /// never replaced.
    async fn pin_first_key(
        &self,
        tx: &mut crate::store::WriteTx<'_>,
        bastion: &ServiceCaller,
        lease: &LeaseRow,
        key: &ssh_key::PublicKey,
        now: u64,
    ) -> Result<Option<AuditEvent>, CaError> {
        let trusts_first_use = self
            .core
            .policy()
            .rule(&lease.rule)
            .is_some_and(|r| r.host_key_policy() == portcullis_policies::HostKeyPolicy::TrustOnFirstUse);
        if !trusts_first_use {
            return Ok(None);
        }
        let Some(mut node) = crate::store::node_for_update(tx, &lease.device).await? else { return Ok(None) };
        if !node.host_keys.is_empty() {
            return Ok(None);
        }
        let fingerprint = portcullis_sshcert::fingerprint(key.key_data());
        // A key pinned to another node means the machine that answered at this node's
        // address is that node (or a clone of it): pinning it would bind this name to
        // that machine for good, the way `identity_clash` refuses at enrollment. The
        // session already reached it, so it is ended at the bastion's next heartbeat.
        let nodes = crate::store::nodes_for_identity(tx).await?;
        if let Some(owner) = crate::service::nodes::host_key_owner(&node.name, std::slice::from_ref(key), &nodes) {
            crate::store::set_kill_reason(tx.conn(), &lease.session_id, CloseReason::HostKeyTaken.as_str()).await?;
            return Ok(Some(AuditEvent::HostKeyPinRefused {
                bastion: bastion.name.clone(),
                session_id: lease.session_id.clone(),
                device: node.name,
                fingerprint,
                owner: owner.name.clone(),
            }));
        }
        let line = ssh_key::PublicKey::new(key.key_data().clone(), "")
            .to_openssh()
            .map_err(|_| CaError::Internal("key encoding".into()))?;
        node.host_keys = vec![line];
        crate::store::upsert_node(tx.conn(), &node, now).await?;
        Ok(Some(AuditEvent::HostKeyPinned {
            bastion: bastion.name.clone(),
            session_id: lease.session_id.clone(),
            device: node.name,
            rule: lease.rule.clone(),
            fingerprint,
        }))
    }
}
