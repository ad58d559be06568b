//! One structured event per authentication decision and per refused channel.
//!
//! Events go to the operator log (`tracing`, target `portcullis_bastion::event`), to
//! in-process subscribers (tests), and to the CA's audit trail (`POST /v1/bastion/events`).
//! None of the fields can hold key material, and the peer-supplied user name is
//! sanitized and truncated before it is stored.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_proto::bastion::BastionAuditEvent;
use portcullis_proto::metrics::LabelledCounter;
use portcullis_proto::refusals::{RefusalTally, Verdict};
use portcullis_sshcert::{Rejection, Unconfirmed};
use tokio::sync::{broadcast, mpsc};

use crate::clock::Clock;
use crate::control::ControlPlane;

/// Longest user name kept in an event (peers choose it).
const MAX_USER_CHARS: usize = 64;

/// Why an authentication attempt was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalReason {
    /// The certificate failed one of the checks in `portcullis_sshcert::check`.
    Certificate(Rejection),
    /// A security key signed without the touch or user verification the certificate
    /// asks for.
    Unconfirmed(Unconfirmed),
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
    /// The certificate's user already holds all the logged-in connections they may.
    TooManyConnections,
}

impl RefusalReason {
    /// Stable machine-readable code for audit records.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Certificate(r) => r.code(),
            Self::Unconfirmed(u) => u.code(),
            Self::PlainPublicKey => "plain_public_key",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TrustUnavailable => "trust_unavailable",
            Self::BadUserName => "bad_user_name",
            Self::AuthTimeout => "auth_timeout",
            Self::TooManyConnections => "too_many_connections",
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
    /// An authenticated client asked for a channel the bastion does not serve.
    ChannelRefused {
        peer: SocketAddr,
        user: String,
        kind: &'static str,
    },
    /// An edge agent's certificate was refused at the agent listener.
    AgentRefused {
        peer: SocketAddr,
        agent: String,
        reason: RefusalReason,
    },
    AgentConnected {
        agent: String,
        remote: SocketAddr,
    },
    /// A browser console WebSocket from a foreign origin (cross-site hijacking attempt).
    ConsoleOriginRefused {
        peer: SocketAddr,
        origin: String,
    },
    AgentDisconnected {
        agent: String,
    },
    /// The onward connection of a session is up.
    BrokerConnected {
        session_id: String,
        agent: String,
        setup_ms: u64,
    },
    /// The onward connection failed (`reason`: a stable code).
    BrokerFailed {
        session_id: String,
        agent: String,
        reason: String,
    },
    /// A session's onward login accepted a node's first host key (trust on first use);
    /// `host_key` is its OpenSSH public key line, for the CA to pin.
    HostKeyFirstUsed {
        session_id: String,
        host_key: String,
    },
}

impl BastionEvent {
    /// Stable name of the event type.
    pub fn name(&self) -> &'static str {
        match self {
            Self::AuthAccepted { .. } => "bastion_auth_accepted",
            Self::AuthRefused { .. } => "bastion_auth_refused",
            Self::ChannelRefused { .. } => "bastion_channel_refused",
            Self::AgentRefused { .. } => "bastion_agent_refused",
            Self::AgentConnected { .. } => "agent_connected",
            Self::ConsoleOriginRefused { .. } => "console_origin_refused",
            Self::AgentDisconnected { .. } => "agent_disconnected",
            Self::BrokerConnected { .. } => "broker_connected",
            Self::BrokerFailed { .. } => "broker_failed",
            Self::HostKeyFirstUsed { .. } => "host_key_first_used",
        }
    }

    /// The client's address, for events about one.
    fn peer(&self) -> Option<IpAddr> {
        match self {
            Self::AuthAccepted { peer, .. }
            | Self::AuthRefused { peer, .. }
            | Self::ChannelRefused { peer, .. }
            | Self::AgentRefused { peer, .. }
            | Self::ConsoleOriginRefused { peer, .. } => Some(peer.ip()),
            _ => None,
        }
    }

    /// The CA audit record for this event, when it has one. Accepted authentications
    /// are audited by the CA as `session_opened` (with the decision), so not here.
    fn audit(&self) -> Option<BastionAuditEvent> {
        Some(match self {
            Self::AuthRefused { peer, user, reason } => BastionAuditEvent::AuthRefused {
                client_ip: peer.ip().to_string(),
                user: user.clone(),
                reason: reason.code().to_owned(),
            },
            Self::AgentRefused { peer, agent, reason } => BastionAuditEvent::AuthRefused {
                client_ip: peer.ip().to_string(),
                user: format!("agent:{agent}"),
                reason: reason.code().to_owned(),
            },
            Self::ConsoleOriginRefused { peer, origin } => BastionAuditEvent::AuthRefused {
                client_ip: peer.ip().to_string(),
                user: format!("console origin {origin}"),
                reason: "console_origin_refused".to_owned(),
            },
            Self::AgentConnected { agent, remote } => {
                BastionAuditEvent::AgentConnected { agent: agent.clone(), remote: remote.to_string() }
            }
            Self::AgentDisconnected { agent } => BastionAuditEvent::AgentDisconnected { agent: agent.clone() },
            Self::BrokerConnected { session_id, agent, setup_ms } => BastionAuditEvent::BrokerConnected {
                session_id: session_id.clone(),
                agent: agent.clone(),
                setup_ms: *setup_ms,
            },
            Self::BrokerFailed { session_id, agent, reason } => BastionAuditEvent::BrokerFailed {
                session_id: session_id.clone(),
                agent: agent.clone(),
                reason: reason.clone(),
            },
            Self::HostKeyFirstUsed { session_id, host_key } => {
                BastionAuditEvent::HostKeyFirstUsed { session_id: session_id.clone(), host_key: host_key.clone() }
            }
            Self::AuthAccepted { .. } | Self::ChannelRefused { .. } => return None,
        })
    }
}

/// Keeps a peer-chosen string printable and short before it reaches a log or record:
/// control characters become `?`, characters that only change how the text around them
/// is shown (direction overrides, zero-width ones) are dropped.
pub fn sanitize_user(user: &str) -> String {
    user.chars()
        .filter(|&c| !portcullis_proto::is_invisible_format(c))
        .take(MAX_USER_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Longest peer-supplied string written to a log line.
const MAX_LOGGED_CHARS: usize = 256;

/// A peer-chosen string made safe for a log line: control characters (newlines, ANSI
/// escapes) and invisible direction overrides are escaped the way Rust writes them
/// (`\n`, `\u{1b}`), backslashes doubled so the escaping is unambiguous, and the whole
/// truncated. A peer can then neither forge a log line nor repaint a terminal that
/// views the log.
pub fn escape_for_log(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_LOGGED_CHARS));
    for c in text.chars().take(MAX_LOGGED_CHARS) {
        if c.is_control() || c == '\\' || portcullis_proto::is_invisible_format(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    if text.chars().nth(MAX_LOGGED_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// How often counted refusals are summarized when the caller does not say.
const DEFAULT_SUMMARY_EVERY: Duration = Duration::from_secs(60);

fn now_unix() -> u64 {
    crate::clock::SystemClock.now_unix()
}

/// Events waiting to be sent to the CA; beyond this many the newest are dropped (and
/// the operator log still has them).
const FORWARD_QUEUE: usize = 10_000;

/// Where events are written: the one function every decision goes through. Each event
/// goes to the operator log, to in-process subscribers, and (when attached) to the
/// CA's audit trail through [`EventSink::forward_to`].
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: broadcast::Sender<BastionEvent>,
    forward: Option<mpsc::Sender<BastionAuditEvent>>,
    /// Front-door refusals: the first of each (source, reason, user) per window is
    /// forwarded, the rest counted into the window's summary.
    refusals: Arc<Mutex<RefusalTally>>,
    /// Every refusal by reason, recorded or only counted (for `/metrics`).
    refused: Arc<LabelledCounter>,
    /// Audit events queued for the CA and not yet sent (see [`EventSink::flush`]).
    unsent: Arc<std::sync::atomic::AtomicUsize>,
}

impl Default for EventSink {
    fn default() -> Self {
        Self::new()
    }
}

impl EventSink {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(1024);
        Self {
            tx,
            forward: None,
            refusals: Arc::new(Mutex::new(RefusalTally::new(DEFAULT_SUMMARY_EVERY.as_secs()))),
            refused: Arc::default(),
            unsent: Arc::default(),
        }
    }

    /// At shutdown: queues what the open refusal window counted so far, and waits up to
    /// `within` for every queued event to reach the CA — the forwarding task would
    /// otherwise go with the process, and with it the refusals of the drain.
    pub async fn flush(&self, within: Duration) {
        let Some(forward) = &self.forward else { return };
        let so_far = self.refusals.lock().ok().and_then(|mut t| t.take(now_unix()));
        if let Some(s) = so_far {
            let summary = BastionAuditEvent::RefusalsSummarized {
                window_start: s.window_start,
                window_end: s.window_end,
                counts: s.counts,
                overflow: s.overflow,
            };
            self.queue(forward, summary);
        }
        let deadline = tokio::time::Instant::now() + within;
        while self.unsent.load(std::sync::atomic::Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Queues `event` for the CA without waiting (a full queue keeps it in the log only).
    fn queue(&self, forward: &mpsc::Sender<BastionAuditEvent>, event: BastionAuditEvent) {
        self.unsent.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if forward.try_send(event).is_err() {
            self.unsent.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            tracing::warn!("bastion audit queue full; event kept only in this log");
        }
    }

    /// Events recorded from now on (a slow subscriber loses the oldest ones).
    pub fn subscribe(&self) -> broadcast::Receiver<BastionEvent> {
        self.tx.subscribe()
    }

    /// Sends every auditable event to the CA in batches (from a background task), and
    /// every `summary_every` the counted refusals of the window that ended.
    pub fn forward_to(&mut self, control: Arc<ControlPlane>, summary_every: Duration) -> tokio::task::JoinHandle<()> {
        let (tx, mut rx) = mpsc::channel(FORWARD_QUEUE);
        self.forward = Some(tx);
        self.refusals = Arc::new(Mutex::new(RefusalTally::new(summary_every.as_secs())));
        let refusals = Arc::clone(&self.refusals);
        let unsent = Arc::clone(&self.unsent);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            // Events of `batch` that came through the queue (counted in `unsent`).
            let mut from_queue = 0;
            let mut tick = tokio::time::interval(summary_every.clamp(Duration::from_secs(1), Duration::from_secs(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    n = rx.recv_many(&mut batch, 500) => if n == 0 { break } else { from_queue += n },
                    _ = tick.tick() => {
                        let due = refusals.lock().ok().and_then(|mut t| t.take_due(now_unix()));
                        let Some(s) = due else { continue };
                        let counted = s.counts.iter().map(|c| c.counted).sum::<u64>() + s.overflow;
                        tracing::warn!(
                            target: "portcullis_bastion::event",
                            counted,
                            sources = s.counts.len(),
                            "refusals counted without a line of their own in the last window (summarized to the CA)"
                        );
                        batch.push(BastionAuditEvent::RefusalsSummarized {
                            window_start: s.window_start,
                            window_end: s.window_end,
                            counts: s.counts,
                            overflow: s.overflow,
                        });
                    }
                }
                if let Err(e) = control.events(std::mem::take(&mut batch)).await {
                    tracing::warn!(error = %e, "could not send bastion events to the CA audit trail");
                }
                unsent.fetch_sub(std::mem::take(&mut from_queue), std::sync::atomic::Ordering::AcqRel);
            }
        })
    }

    /// Counts a refusal that never gets an audit record of its own (a full connection
    /// table, a channel over the cap, a console socket that sent no ticket): the
    /// window's summary reports how many, from where.
    pub fn count_refusal(&self, peer: IpAddr, reason: &'static str) {
        self.refused.inc(&[("reason", reason)]);
        if let Ok(mut tally) = self.refusals.lock() {
            tally.count_only(now_unix(), &peer.to_string(), reason);
        }
    }

    /// Whether a front-door refusal gets its own audit record (the first of its source,
    /// reason and user in this window) or is only counted.
    fn first_of_window(&self, peer: IpAddr, reason: &str, user: &str) -> bool {
        self.refused.inc(&[("reason", reason)]);
        self.refusals
            .lock()
            .map_or(true, |mut tally| tally.note(now_unix(), &peer.to_string(), reason, user) == Verdict::Record)
    }

    /// Refusals so far by reason, as `/metrics` samples.
    pub fn refusal_counts(&self) -> Vec<(String, u64)> {
        self.refused.samples()
    }

    pub fn record(&self, event: BastionEvent) {
        let audit = event.audit();
        // A refusal at the door gets its own audit record and log line only as the first
        // of its source, reason and user in the window; the rest are counted (metrics,
        // the window's summary) and logged at debug level, so a client that repeats a
        // refused attempt floods neither. Channel refusals are counted by their caller.
        let counted_only = match &audit {
            Some(BastionAuditEvent::AuthRefused { user, reason, .. }) => {
                event.peer().is_some_and(|peer| !self.first_of_window(peer, reason, user))
            }
            _ => false,
        };
        // Every field is either ours or sanitized (user names) and none holds key material.
        match &event {
            _ if counted_only || matches!(event, BastionEvent::ChannelRefused { .. }) => {
                tracing::debug!(target: "portcullis_bastion::event", event = event.name(), detail = ?event)
            }
            BastionEvent::AuthRefused { .. }
            | BastionEvent::AgentRefused { .. }
            | BastionEvent::BrokerFailed { .. } => {
                tracing::warn!(target: "portcullis_bastion::event", event = event.name(), detail = ?event)
            }
            _ => tracing::info!(target: "portcullis_bastion::event", event = event.name(), detail = ?event),
        }
        let audit = audit.filter(|_| !counted_only);
        if let (Some(forward), Some(audit)) = (&self.forward, audit) {
            self.queue(forward, audit);
        }
        // No subscriber is normal: the log line above is the record.
        let _ = self.tx.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `record` logs at info level and above, as text.
    fn logged(record: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, record);
        let written = lines.0.lock().map(|l| l.clone()).unwrap_or_default();
        String::from_utf8_lossy(&written).into_owned()
    }

    /// A client repeating a refused attempt gets one log line per window (and source,
    /// reason and user), not one per attempt; channel refusals, counted for the CA's
    /// summary, none.
    #[test]
    fn repeated_refusals_log_one_line_per_window() {
        let sink = EventSink::new();
        let peer = |last: u8| SocketAddr::from(([192, 0, 2, last], 40000));
        let text = logged(|| {
            for _ in 0..100 {
                let reason = RefusalReason::PlainPublicKey;
                sink.record(BastionEvent::AuthRefused { peer: peer(1), user: "mallory".into(), reason });
                sink.record(BastionEvent::ChannelRefused { peer: peer(1), user: "mallory".into(), kind: "x11" });
            }
            let reason = RefusalReason::PlainPublicKey;
            sink.record(BastionEvent::AuthRefused { peer: peer(2), user: "mallory".into(), reason });
        });
        assert_eq!(text.matches("bastion_auth_refused").count(), 2, "{text}");
        assert_eq!(text.matches("bastion_channel_refused").count(), 0, "{text}");
        assert_eq!(sink.refusal_counts().iter().map(|(_, n)| n).sum::<u64>(), 101, "every refusal is still counted");
    }

    #[test]
    fn user_names_are_sanitized_and_truncated() {
        assert_eq!(sanitize_user("root\n%x\u{1b}"), "root?%x?");
        assert_eq!(sanitize_user("root\u{202e}%\u{2066}x\u{200d}"), "root%x", "nothing that repaints the name");
        assert_eq!(sanitize_user(&"a".repeat(500)).len(), MAX_USER_CHARS);
    }

    #[test]
    fn peer_strings_cannot_forge_log_lines() {
        let forged = "pve01\n2026-12-02T00:00:00Z  INFO admin logged in\u{1b}[2J\r\u{202e}";
        let escaped = escape_for_log(forged);
        assert!(!escaped.chars().any(|c| c.is_control()), "{escaped}");
        assert_eq!(escaped, "pve01\\n2026-12-02T00:00:00Z  INFO admin logged in\\u{1b}[2J\\r\\u{202e}");
        assert_eq!(escape_for_log("a\\nb"), "a\\\\nb", "a literal backslash-n stays distinguishable");
        assert_eq!(escape_for_log("pve01.example"), "pve01.example");
        let long = escape_for_log(&"x".repeat(10_000));
        assert_eq!(long.chars().count(), MAX_LOGGED_CHARS + 1);
    }

    #[test]
    fn reason_codes_are_stable() {
        assert_eq!(RefusalReason::Certificate(Rejection::Revoked).code(), "cert_revoked");
        assert_eq!(RefusalReason::PlainPublicKey.code(), "plain_public_key");
    }
}
