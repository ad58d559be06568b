//! The bastion's own `/metrics`, `/healthz` and `/readyz`, on the plain-HTTP listener
//! that `portcullisd bastion --metrics-listen` names (never on a public port).

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

/// Serves `/metrics`, `/healthz` (alive) and `/readyz` (trust material loaded).
pub async fn serve(listener: tokio::net::TcpListener, bastion: Arc<Bastion>) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(bastion);
    axum::serve(listener, router).await
}

async fn metrics(State(bastion): State<Arc<Bastion>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], bastion.metrics_text())
}

async fn readyz(State(bastion): State<Arc<Bastion>>) -> impl IntoResponse {
    if bastion.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "trust material not loaded yet\n")
    }
}
