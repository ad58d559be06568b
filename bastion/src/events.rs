//! One structured event per authentication decision and per refused channel.
//!
//! The CA's audit API has no bastion endpoint yet, so events go to the operator log
//! (`tracing`, target `portcullis_bastion::event`) and to in-process subscribers (tests,
//! later the audit forwarder). Each variant's fields are the future audit record's
//! schema; none of them can hold key material, and the peer-supplied user name is
//! sanitized and truncated before it is stored.

use std::net::SocketAddr;

use portcullis_sshcert::Rejection;
use tokio::sync::broadcast;

/// Longest user name kept in an event (peers choose it).
const MAX_USER_CHARS: usize = 64;

/// Why an authentication attempt was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalReason {
    /// The certificate failed one of the checks in `portcullis_sshcert::check`.
    Certificate(Rejection),
    /// A plain public key without a certificate.
    PlainPublicKey,
    /// Password or keyboard-interactive: never offered, refused if tried.
    MethodNotAllowed,
    /// No trust material (never loaded, or too old): fail closed.
    TrustUnavailable,
    /// The user name is not `LOGIN` or `LOGIN%DEVICE` with a well-formed login.
    BadUserName,
    /// The client did not authenticate within the time allowed.
    AuthTimeout,
}

impl RefusalReason {
    /// Stable machine-readable code for audit records.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Certificate(r) => r.code(),
            Self::PlainPublicKey => "plain_public_key",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TrustUnavailable => "trust_unavailable",
            Self::BadUserName => "bad_user_name",
            Self::AuthTimeout => "auth_timeout",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BastionEvent {
    /// A certificate passed every check; the client is authenticated.
    AuthAccepted {
        peer: SocketAddr,
        user: String,
        login: String,
        device: Option<String>,
        key_id: String,
        serial: u64,
        matched_principal: String,
        ca_fingerprint: String,
    },
    AuthRefused {
        peer: SocketAddr,
        user: String,
        reason: RefusalReason,
    },
    /// An authenticated client asked for a channel or request the bastion does not serve yet.
    ChannelRefused {
        peer: SocketAddr,
        user: String,
        kind: &'static str,
    },
}

impl BastionEvent {
    /// Stable name of the event type.
    pub fn name(&self) -> &'static str {
        match self {
            Self::AuthAccepted { .. } => "bastion_auth_accepted",
            Self::AuthRefused { .. } => "bastion_auth_refused",
            Self::ChannelRefused { .. } => "bastion_channel_refused",
        }
    }
}

/// Keeps a peer-chosen string printable and short before it reaches a log or record.
pub(crate) fn sanitize_user(user: &str) -> String {
    user.chars().take(MAX_USER_CHARS).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Where events are written: the one function every decision goes through.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: broadcast::Sender<BastionEvent>,
}

impl Default for EventSink {
    fn default() -> Self {
        Self::new()
    }
}

impl EventSink {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(1024);
        Self { tx }
    }

    /// Events recorded from now on (a slow subscriber loses the oldest ones).
    pub fn subscribe(&self) -> broadcast::Receiver<BastionEvent> {
        self.tx.subscribe()
    }

    pub fn record(&self, event: BastionEvent) {
        match &event {
            BastionEvent::AuthAccepted {
                peer,
                user,
                login,
                device,
                key_id,
                serial,
                matched_principal,
                ca_fingerprint,
            } => {
                tracing::info!(
                    target: "portcullis_bastion::event",
                    event = event.name(), %peer, user, login, device = device.as_deref().unwrap_or(""),
                    key_id, serial, matched_principal, ca_fingerprint,
                    "accepted certificate"
                );
            }
            BastionEvent::AuthRefused { peer, user, reason } => {
                tracing::warn!(
                    target: "portcullis_bastion::event",
                    event = event.name(), %peer, user, reason = reason.code(),
                    "refused authentication"
                );
            }
            BastionEvent::ChannelRefused { peer, user, kind } => {
                tracing::info!(
                    target: "portcullis_bastion::event",
                    event = event.name(), %peer, user, kind,
                    "refused channel: not implemented yet"
                );
            }
        }
        // No subscriber is normal (production today): the log line above is the record.
        let _ = self.tx.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_sanitized_and_truncated() {
        assert_eq!(sanitize_user("root\n%x\u{1b}"), "root?%x?");
        assert_eq!(sanitize_user(&"a".repeat(500)).len(), MAX_USER_CHARS);
    }

    #[test]
    fn reason_codes_are_stable() {
        assert_eq!(RefusalReason::Certificate(Rejection::Revoked).code(), "cert_revoked");
        assert_eq!(RefusalReason::PlainPublicKey.code(), "plain_public_key");
    }
}
