//! The data plane's own `/metrics`, `/healthz` and `/readyz` (bastion and agent), on the
//! plain-HTTP listener that `--metrics-listen` names (never on a public port).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use portcullis_proto::metrics::{Exposition, LabelledCounter, labels};

use crate::Bastion;
use crate::sessions::LiveSession;
use portcullis_proto::bastion::CloseReason;

/// Counted by the bastion as sessions end (the CA counts them again from the closes it
/// hears of; these stay true when the CA is out of reach).
#[derive(Debug, Default)]
pub(crate) struct SessionCounters {
    /// By mode and reason.
    closed: LabelledCounter,
    /// By direction.
    bytes: LabelledCounter,
}

impl SessionCounters {
    pub(crate) fn closed(&self, live: &LiveSession, reason: CloseReason, from_client: u64, to_client: u64) {
        self.closed.inc(&[("mode", live.mode.as_str()), ("reason", reason.as_str())]);
        self.bytes.add(&[("direction", "from_client")], from_client);
        self.bytes.add(&[("direction", "to_client")], to_client);
    }
}

impl Bastion {
    /// The scrape: live sessions by mode, connected agents, sessions closed, bytes
    /// relayed, refusals at the front door.
    pub fn metrics_text(&self) -> String {
        let shared = self.shared();
        let mut e = Exposition::default();
        let live = shared.sessions.count_by_mode();
        e.family(
            "portcullis_bastion_sessions_live",
            "gauge",
            "Sessions open on this bastion, by mode.",
            live.into_iter().map(|(mode, n)| (labels(&[("mode", mode)]), n)),
        );
        e.family(
            "portcullis_bastion_agent_links",
            "gauge",
            "Edge agents connected to this bastion.",
            [(String::new(), shared.agents.names().len() as u64)],
        );
        e.family(
            "portcullis_bastion_sessions_closed_total",
            "counter",
            "Sessions ended on this bastion, by mode and reason.",
            shared.counters.closed.samples(),
        );
        e.family(
            "portcullis_bastion_bytes_relayed_total",
            "counter",
            "Bytes relayed by ended sessions, by direction.",
            shared.counters.bytes.samples(),
        );
        e.family(
            "portcullis_bastion_refusals_total",
            "counter",
            "Refused connections, keys, channels and console sockets, by reason (before any session).",
            shared.events.refusal_counts(),
        );
        e.finish()
    }

    /// Ready once the CA's trust material is loaded (until then every login is refused).
    pub fn ready(&self) -> bool {
        self.shared().trust.current().is_some()
    }
}

/// What a data-plane role reports on its metrics listener.
pub trait Observed: Send + Sync + 'static {
    fn metrics_text(&self) -> String;
    /// `None` when ready, else why not.
    fn not_ready(&self) -> Option<&'static str>;
}

impl Observed for Bastion {
    fn metrics_text(&self) -> String {
        Bastion::metrics_text(self)
    }
    fn not_ready(&self) -> Option<&'static str> {
        (!self.ready()).then_some("trust material not loaded yet")
    }
}

impl Observed for crate::edge::AgentStatus {
    fn metrics_text(&self) -> String {
        crate::edge::AgentStatus::metrics_text(self)
    }
    fn not_ready(&self) -> Option<&'static str> {
        (!self.ready()).then_some("not connected to any bastion")
    }
}

/// Serves `/metrics`, `/healthz` (alive) and `/readyz` of a bastion or an agent.
pub async fn serve<T: Observed>(listener: tokio::net::TcpListener, role: Arc<T>) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(metrics::<T>))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<T>))
        .with_state(role);
    axum::serve(listener, router).await
}

async fn metrics<T: Observed>(State(role): State<Arc<T>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], role.metrics_text())
}

async fn readyz<T: Observed>(State(role): State<Arc<T>>) -> impl IntoResponse {
    match role.not_ready() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}
