//! How sessions end: a bastion's closes (each audited as `session_closed` and counted),
//! and an administrator's kill order, which the bastion carries out at its next
//! heartbeat. The heartbeat's own closes (reclaimed leases) use the same event and count.

use super::{Sessions, valid_session_id};
use crate::audit::{self, AuditEvent};
use crate::error::CaError;
use crate::service::services::ServiceCaller;
use crate::store::{self, LeaseRow};
use portcullis_proto::bastion::{CloseReason, MAX_CLOSES_PER_REQUEST, SessionCloseRequest};

pub(super) fn closed_event(
    lease: &LeaseRow,
    reason: CloseReason,
    from: u64,
    to: u64,
    duration_ms: u64,
    now: u64,
) -> AuditEvent {
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
        client_ip: lease.client_ip.clone(),
        cert_serial: (lease.cert_serial != 0).then(|| lease.cert_serial.to_string()),
        started_at: lease.opened_at,
        ended_at: now,
    }
}

impl Sessions {
    /// Counts a committed close in `/metrics`.
    pub(super) fn count_close(&self, lease: &LeaseRow, reason: CloseReason, from_client: u64, to_client: u64) {
        let c = &self.core.counters;
        c.sessions_closed.inc(&[("mode", &lease.mode), ("reason", reason.as_str())]);
        c.bytes_relayed.add(&[("direction", "from_client")], from_client);
        c.bytes_relayed.add(&[("direction", "to_client")], to_client);
    }

    /// `POST /v1/bastion/sessions/close`: releases the lease; idempotent.
    pub async fn close_session(&self, bastion: &ServiceCaller, req: &SessionCloseRequest) -> Result<(), CaError> {
        self.close_sessions(bastion, std::slice::from_ref(req)).await
    }

    /// `POST /v1/bastion/sessions/closes`: releases the leases of this bastion's sessions
    /// and audits each close, in one transaction (all or none). A session that is not
    /// this bastion's, or already closed, is left as it is.
    pub async fn close_sessions(&self, bastion: &ServiceCaller, closes: &[SessionCloseRequest]) -> Result<(), CaError> {
        if closes.len() > MAX_CLOSES_PER_REQUEST {
            return Err(CaError::BadRequest(format!("at most {MAX_CLOSES_PER_REQUEST} closes per request")));
        }
        if !closes.iter().all(|c| valid_session_id(&c.session_id)) {
            return Err(CaError::BadRequest("invalid session id".into()));
        }
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        let mut closed = Vec::with_capacity(closes.len());
        for req in closes {
            if let Some(lease) = store::close_lease(tx.conn(), &req.session_id, &bastion.name).await? {
                store::end_recording(tx.conn(), &lease.session_id, now, !req.reason.before_start()).await?;
                let (from, to) = (req.bytes_from_client, req.bytes_to_client);
                let event = closed_event(&lease, req.reason, from, to, req.duration_ms, now);
                audit::record(tx.conn(), now, &event).await?;
                closed.push((lease, req));
            }
        }
        tx.commit().await?;
        for (lease, req) in closed {
            self.count_close(&lease, req.reason, req.bytes_from_client, req.bytes_to_client);
        }
        Ok(())
    }

    /// `POST /v1/admin/sessions/{id}/kill`: the bastion closes it at its next heartbeat.
    pub async fn kill_session(
        &self,
        grant: &portcullis_policies::Grant<portcullis_policies::proof::SessionsKill>,
        session_id: &str,
    ) -> Result<(), CaError> {
        if !valid_session_id(session_id) {
            return Err(CaError::BadRequest("invalid session id".into()));
        }
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        let lease = store::set_kill_reason(tx.conn(), session_id, CloseReason::AdminTerminated.as_str())
            .await?
            .ok_or(CaError::NotFound("live session"))?;
        // A role's targets scope its `sessions.kill`: another device's session is "not
        // found" alike (dropping the transaction takes the kill order back).
        if !self.core.covers(grant, &lease.device, lease.opened_at).await? {
            return Err(CaError::NotFound("live session"));
        }
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
