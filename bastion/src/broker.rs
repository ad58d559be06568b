//! What every mode does around its relay: ask the CA for the session, register it, get
//! a channel to the device through its agent, and at the end release the lease with
//! the reason, bytes and duration.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use portcullis_proto::bastion::{
    CloseReason, SessionCloseRequest, SessionGrant, SessionMode, SessionOpenRequest, deny_reason,
};
use portcullis_proto::console::{ConsoleOpenRequest, deny_reason as console_deny};

use crate::agent_hub::LinkWatch;
use crate::control::ControlError;
use crate::events::{BastionEvent, escape_for_log};
use crate::sessions::{Limits, LiveSession};
use crate::shared::Shared;

/// A session the CA admitted and this bastion registered. Its life is the value's: the
/// broker's `reach` takes it and hands it back with the device connection (or ends it),
/// and `finish` consumes it, so a session cannot be finished twice or used after.
pub(crate) struct Admitted {
    pub grant: SessionGrant,
    pub live: Arc<LiveSession>,
    pub limits: Limits,
    guard: FinishGuard,
}

/// An admitted session whose device answered.
pub(crate) struct Reached {
    pub admitted: Admitted,
    pub onward: crate::agent_hub::Onward,
    pub link: LinkWatch,
}

/// Which certificate a session asks the CA about: its serial and its digest (the CA
/// refuses a certificate that is not the one it issued under that serial).
#[derive(Clone)]
pub(crate) struct Presented {
    pub serial: u64,
    pub digest: Option<String>,
}

/// Refusals that would tell a user whether a device exists: answered alike.
const HIDES_EXISTENCE: &[&str] =
    &[deny_reason::UNKNOWN_DEVICE, deny_reason::NO_AGENT, deny_reason::NOT_AUTHORIZED, deny_reason::RULE_MISMATCH];

/// The safety net under [`Shared::finish`]: a session whose task ends without it (a
/// panic, a forgotten path) is still forgotten here and its lease released at the CA as
/// `internal_error`, so it never keeps a concurrency slot.
struct FinishGuard {
    live: Arc<LiveSession>,
    sessions: Arc<crate::sessions::Registry>,
    closes: crate::closes::Closes,
    armed: std::sync::atomic::AtomicBool,
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        if !self.armed.load(Ordering::Relaxed) {
            return;
        }
        self.sessions.remove(&self.live.id);
        let request = close_request(&self.live, CloseReason::InternalError);
        tracing::error!(session = %self.live.id, "session ended without closing; releasing its lease");
        self.closes.close_later(request);
    }
}

fn close_request(live: &LiveSession, reason: CloseReason) -> SessionCloseRequest {
    SessionCloseRequest {
        session_id: live.id.clone(),
        reason,
        bytes_from_client: live.bytes_from_client.load(Ordering::Relaxed),
        bytes_to_client: live.bytes_to_client.load(Ordering::Relaxed),
        duration_ms: u64::try_from(live.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

/// Why a session did not start; `message` is safe to show to the user.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    /// Stable code (a deny reason, or a broker failure code).
    pub code: String,
    pub message: String,
}

/// A session that ended before it started: the user hears the audited reason.
impl From<CloseReason> for Refusal {
    fn from(reason: CloseReason) -> Self {
        Refusal { code: reason.as_str().to_owned(), message: reason.message().to_owned() }
    }
}

pub(crate) fn new_session_id() -> String {
    hex::encode(portcullis_sshcert::random_bytes::<16>())
}

impl Shared {
    /// Asks the CA; on a grant the session is registered (so heartbeats carry it).
    pub(crate) async fn admit(&self, request: SessionOpenRequest) -> Result<Admitted, Refusal> {
        self.refuse_while_draining()?;
        let answer = self.control.open_session(&request).await;
        self.register(answer, &request.session_id, &request.device, request.mode)
    }

    /// The browser console's admission: the CA redeems the ticket and decides at once.
    pub(crate) async fn admit_console(&self, request: ConsoleOpenRequest) -> Result<Admitted, Refusal> {
        self.refuse_while_draining()?;
        let answer = self.control.open_console(&request).await;
        self.register(answer, &request.session_id, "", SessionMode::Console)
    }

    fn refuse_while_draining(&self) -> Result<(), Refusal> {
        match self.sessions.draining() {
            true => Err(Refusal {
                code: CloseReason::Shutdown.as_str().to_owned(),
                message: "the bastion is restarting; connect again in a moment".to_owned(),
            }),
            false => Ok(()),
        }
    }

    fn register(
        &self,
        answer: Result<SessionGrant, ControlError>,
        session_id: &str,
        device: &str,
        mode: SessionMode,
    ) -> Result<Admitted, Refusal> {
        let grant = match answer {
            Ok(grant) => grant,
            Err(e) => {
                // The user hears the same for a device that does not exist as for one
                // they may not use (else refusals enumerate device names); the CA's
                // audit record keeps the real reason.
                let code = match e.deny_reason() {
                    Some(r) if HIDES_EXISTENCE.contains(&r) => "access_denied",
                    Some(r) => r,
                    None => "control_plane_unavailable",
                }
                .to_owned();
                let message = match e.deny_reason() {
                    Some(deny_reason::CAP_REACHED) => "too many concurrent sessions".to_owned(),
                    Some(console_deny::TICKET_REUSED) => "this console ticket was already used".to_owned(),
                    Some(console_deny::TICKET_EXPIRED) => "this console ticket has expired".to_owned(),
                    Some(console_deny::TICKET_INVALID) => "invalid console ticket".to_owned(),
                    // Said only to a user the policy lets in, so it reveals nothing.
                    Some(deny_reason::RECORDING_NEEDS_TERMINATED) => format!(
                        "sessions on {device:?} are recorded, and jump mode cannot be: connect with \
                         `ssh LOGIN%DEVICE@bastion` instead of -J"
                    ),
                    Some(deny_reason::FRESH_AUTH_REQUIRED) => format!(
                        "{device:?} asks for a recent sign-in: run `portcullis login --fresh`, then connect again"
                    ),
                    Some(_) if device.is_empty() => "access denied".to_owned(),
                    Some(_) => format!("access to {device:?} denied"),
                    None => "the control plane is unavailable; try again".to_owned(),
                };
                tracing::info!(
                    session = %session_id,
                    device = %escape_for_log(device),
                    mode = mode.as_str(),
                    error = %escape_for_log(&e.to_string()),
                    "session refused"
                );
                return Err(Refusal { code, message });
            }
        };
        let live = Arc::new(
            LiveSession::new(
                grant.session_id.clone(),
                grant.username.clone(),
                grant.device.clone(),
                grant.agent.clone(),
                mode,
            )
            .counting_output(grant.idle_counts_output),
        );
        let now = self.clock.now_unix();
        let limits = Limits {
            idle: Duration::from_secs(grant.idle_timeout_secs.max(1)),
            absolute: Duration::from_secs(grant.absolute_timeout_secs.max(1)),
            cert_expires_in: self
                .close_on_cert_expiry
                .then(|| Duration::from_secs(grant.cert_valid_before.saturating_sub(now))),
        };
        self.sessions.insert(Arc::clone(&live));
        // Granted while the drain began: it ends with the others.
        if self.sessions.draining() {
            live.order_close(CloseReason::Shutdown);
        }
        let guard = FinishGuard {
            live: Arc::clone(&live),
            sessions: Arc::clone(&self.sessions),
            closes: self.closes.clone(),
            armed: std::sync::atomic::AtomicBool::new(true),
        };
        Ok(Admitted { grant, live, limits, guard })
    }

    /// A connection to the granted target through the granted agent; failures are
    /// audited and the session released.
    pub(crate) async fn reach(&self, admitted: Admitted, peer: SocketAddr) -> Result<Reached, Refusal> {
        let g = &admitted.grant;
        let started = Instant::now();
        let timeout = Duration::from_millis(g.connect_timeout_ms.clamp(100, 60_000));
        let opened = tokio::time::timeout(timeout, self.agents.open(&g.agent, &g.target_host, g.target_port, peer))
            .await
            .unwrap_or(Err(crate::agent_hub::BrokerError::TargetUnreachable));
        match opened {
            Ok((onward, link)) => {
                self.events.record(BastionEvent::BrokerConnected {
                    session_id: g.session_id.clone(),
                    agent: g.agent.clone(),
                    setup_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                });
                Ok(Reached { admitted, onward, link })
            }
            Err(e) => Err(self.broker_failed(admitted, e.code()).await.into()),
        }
    }

    /// A session that could not start: the broker failure is recorded and the lease
    /// released with the close reason that names the same cause, which is also what the
    /// user is told (see `From<CloseReason> for Refusal`).
    pub(crate) async fn broker_failed(&self, admitted: Admitted, failure: &str) -> CloseReason {
        let g = &admitted.grant;
        self.events.record(BastionEvent::BrokerFailed {
            session_id: g.session_id.clone(),
            agent: g.agent.clone(),
            reason: failure.to_owned(),
        });
        let reason = match failure {
            "agent_unavailable" => CloseReason::AgentDisconnect,
            "target_unreachable" | "agent_refused" => CloseReason::TargetUnreachable,
            "host_key_mismatch" => CloseReason::HostKeyMismatch,
            "onward_auth_failed" | "credential_resolution_failed" => CloseReason::OnwardLoginFailed,
            _ => CloseReason::TargetDisconnect,
        };
        self.finish(admitted, reason).await;
        reason
    }

    /// Releases the lease at the CA (which audits the close) and forgets the session.
    pub(crate) async fn finish(&self, admitted: Admitted, reason: CloseReason) {
        admitted.guard.armed.store(false, Ordering::Relaxed);
        let live = &admitted.live;
        let request = close_request(live, reason);
        self.counters.closed(live, reason, request.bytes_from_client, request.bytes_to_client);
        tracing::info!(session = %live.id, user = %live.username, device = %live.device, reason = reason.as_str(),
            bytes_in = request.bytes_from_client, bytes_out = request.bytes_to_client, "session closed");
        // The lease also expires on its own if this call is lost.
        if let Err(e) = self.closes.close(request).await {
            tracing::warn!(session = %live.id, error = %e, "could not release the session lease; it expires on its own");
        }
        // Gone from the registry only once the CA heard of it: a drain waits for that.
        self.sessions.remove(&live.id);
    }
}

/// How long a relay whose onward side vanished waits to learn whether the agent left.
pub(crate) const AGENT_LOSS_GRACE: Duration = Duration::from_secs(2);

/// The reason for an onward side that ended without a close: the agent's link went
/// down, or only the target connection did.
pub(crate) async fn vanished(link: LinkWatch) -> CloseReason {
    if link.went_down(AGENT_LOSS_GRACE).await { CloseReason::AgentDisconnect } else { CloseReason::TargetDisconnect }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::Registry;
    use portcullis_proto::bastion::SessionMode;

    #[tokio::test]
    async fn a_session_dropped_without_finish_is_released() {
        let sessions = Arc::new(Registry::default());
        let closes = crate::closes::Closes::start(Arc::new(crate::control::unreachable(Duration::from_millis(100))));
        let live =
            Arc::new(LiveSession::new("s1".into(), "alice".into(), "pve01".into(), "a".into(), SessionMode::Jump));
        sessions.insert(Arc::clone(&live));
        let guard = |armed| FinishGuard {
            live: Arc::clone(&live),
            sessions: Arc::clone(&sessions),
            closes: closes.clone(),
            armed: std::sync::atomic::AtomicBool::new(armed),
        };
        drop(guard(false));
        assert_eq!(sessions.len(), 1, "a finished session is left to finish()");
        // E.g. the session task panicked: the guard still frees the slot.
        let task = tokio::spawn({
            let g = guard(true);
            async move {
                let _g = g;
                panic!("simulated bug in a session task");
            }
        });
        assert!(task.await.is_err());
        assert_eq!(sessions.len(), 0, "an abandoned session is forgotten (and its lease closed)");
    }
}
