//! The HTTPS API: routing, request limits, and the mapping from [`CaError`] to what a
//! client may see. Handlers live in `handlers` and are one call into [`Ca`] each.

mod bastion;
mod console;
mod enroll;
mod extract;
mod handlers;
mod inventory;
mod oidc;
mod ui;

use crate::error::CaError;
use crate::service::Ca;
use axum::Extension;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use extract::BodyLimit;
use portcullis_proto::ApiError;
use std::sync::Arc;

/// JSON bodies are small; a public key line is at most 16 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Bastion heartbeats and event batches (authenticated bastions only).
pub const BASTION_BODY_BYTES: usize = 4 * 1024 * 1024;

/// What a client that met a full disk or a lost database is told to wait.
const STORE_RETRY_AFTER: u64 = 5;

pub fn router(ca: Arc<Ca>) -> Router {
    Router::new()
        .route("/v1/health", get(|| async { "ok" }))
        // Liveness (the process answers) and readiness (it can serve): for load
        // balancers and orchestrators. Neither needs or reveals anything secret.
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/auth/login", post(handlers::login))
        .route("/v1/auth/logout", post(handlers::logout))
        .route("/v1/auth/whoami", get(handlers::whoami))
        .route("/v1/auth/browser-login", post(console::browser_login))
        .route("/v1/auth/csrf", get(console::csrf))
        .route("/v1/console/devices", get(console::devices))
        .route("/v1/console/tickets", post(console::ticket))
        .route("/v1/bastion/console/open", post(console::open))
        .route("/v1/admin/policy/history", get(console::policy_history))
        .route("/v1/auth/methods", get(oidc::methods))
        .route("/v1/auth/oidc/device", post(oidc::device_start))
        .route("/v1/auth/oidc/device/poll", post(oidc::device_poll))
        .route("/v1/auth/oidc/login", get(oidc::browser_login))
        .route("/v1/auth/oidc/callback", get(oidc::browser_callback))
        .route("/v1/certs/user", post(handlers::issue_user_cert))
        .route("/v1/certs/user/revoke", post(handlers::revoke_own_cert))
        .route("/v1/ca/{purpose}/keys", get(handlers::trusted_keys))
        .route("/v1/krl", get(handlers::krl))
        .route("/v1/bastions/host-keys", get(handlers::bastion_host_keys))
        .route("/v1/nodes/{name}/principals", get(handlers::node_principals))
        .route("/v1/admin/users", get(handlers::list_users).post(handlers::add_user))
        .route("/v1/admin/users/{name}/disable", post(handlers::disable_user))
        .route("/v1/admin/users/{name}/enable", post(handlers::enable_user))
        .route("/v1/admin/users/{name}/release", post(handlers::release_account))
        .route("/v1/admin/users/{name}/groups", put(handlers::set_groups))
        .route("/v1/admin/users/{name}/password", put(handlers::set_password))
        .route("/v1/admin/revoke", post(handlers::revoke))
        .route("/v1/admin/certs", get(handlers::list_certs))
        .route("/v1/admin/ca/keys", get(handlers::list_ca_keys))
        .route("/v1/admin/ca/{purpose}/rotate", post(handlers::rotate_ca_key))
        .route("/v1/admin/ca/{purpose}/activate", post(handlers::activate_ca_key))
        .route("/v1/admin/ca/retire", post(handlers::retire_ca_key))
        .route("/v1/admin/nodes", get(handlers::list_nodes).post(handlers::add_node))
        .route("/v1/admin/nodes/{name}", put(handlers::update_node).delete(handlers::remove_node))
        .route("/v1/admin/policy/reload", post(handlers::reload_policy))
        .route("/v1/admin/audit", get(handlers::audit_records))
        .route("/v1/admin/audit/verify", get(handlers::audit_verify))
        .route("/v1/admin/enroll-tokens", get(enroll::list_tokens).post(enroll::create_token))
        .route("/v1/admin/enroll-tokens/{id}", axum::routing::delete(enroll::revoke_token))
        .route("/v1/enroll", post(enroll::enroll))
        .route("/v1/enroll/abort", post(enroll::abort))
        .route("/v1/nodes/refresh", post(enroll::refresh))
        .route("/v1/nodes/deregister", post(enroll::deregister))
        .route("/v1/services/enroll", post(bastion::enroll))
        .route("/v1/services/certificate", post(bastion::certificate))
        .route("/v1/services/bastions", get(bastion::bastions))
        .route("/v1/services/agent/targets", get(bastion::agent_targets))
        .route("/v1/bastion/sessions/open", post(bastion::open))
        // A heartbeat lists every live session of a bastion (up to 20,000, ~100 bytes each)
        // and an event batch up to 1000 events: both outgrow the default limit.
        .route("/v1/bastion/heartbeat", post(bastion::heartbeat).layer(Extension(BodyLimit(BASTION_BODY_BYTES))))
        .route("/v1/bastion/sessions/close", post(bastion::close))
        .route("/v1/bastion/events", post(bastion::events).layer(Extension(BodyLimit(BASTION_BODY_BYTES))))
        .route("/v1/admin/sessions", get(bastion::list_sessions))
        .route("/v1/admin/sessions/{id}/kill", post(bastion::kill_session))
        .route("/v1/admin/agents", get(bastion::list_agents))
        .route("/v1/admin/bastions", get(bastion::list_bastions))
        .route("/v1/bastion/discovery/claim", post(inventory::claim))
        .route(
            "/v1/bastion/discovery/report",
            post(inventory::report).layer(Extension(BodyLimit(portcullis_proto::discovery::MAX_DISCOVERY_REPORT_BODY))),
        )
        .route("/v1/admin/inventory/{node}", get(inventory::show))
        .route("/enroll.sh", get(enroll::script))
        .route("/v1/download/portcullis-enroll", get(enroll::binary))
        .merge(ui::router())
        .fallback(|| async { CaError::NotFound("route") })
        .method_not_allowed_fallback(|| async { CaError::MethodNotAllowed })
        // Bodies are read by `extract::Body`, which applies `MAX_BODY_BYTES` or the
        // route's `BodyLimit`; axum's own limit stays as a backstop for other extractors.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(ca)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "alive": true }))
}

async fn readyz(axum::extract::State(ca): axum::extract::State<Arc<Ca>>) -> Response {
    let (ready, checks) = ca.readiness().await;
    let checks: serde_json::Map<String, serde_json::Value> =
        checks.into_iter().map(|(name, state)| (name.to_owned(), state.into())).collect();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(serde_json::json!({ "ready": ready, "checks": checks }))).into_response()
}

/// Serves the metrics listener's routes — `/metrics` (Prometheus text) beside the
/// health checks — until the process ends.
/// It is served on its own address (plain HTTP, loopback by convention), never on the
/// public API port: counts are nobody else's business.
pub async fn serve_metrics(listener: tokio::net::TcpListener, ca: Arc<Ca>) -> std::io::Result<()> {
    axum::serve(listener, metrics_router(ca)).await
}

fn metrics_router(ca: Arc<Ca>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(ca)
}

async fn metrics(axum::extract::State(ca): axum::extract::State<Arc<Ca>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], ca.metrics_text().await)
}

impl IntoResponse for CaError {
    fn into_response(self) -> Response {
        let status = match &self {
            CaError::Unauthenticated
            | CaError::InvalidCredentials
            | CaError::SignInFailed(_)
            | CaError::PasswordChangeRequired => StatusCode::UNAUTHORIZED,
            CaError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            CaError::Denied(_) | CaError::Forbidden(_) | CaError::SessionDenied { .. } => StatusCode::FORBIDDEN,
            CaError::Csrf | CaError::TicketDenied { .. } => StatusCode::FORBIDDEN,
            CaError::BadRequest(_) | CaError::UnsupportedConsoleMode => StatusCode::BAD_REQUEST,
            CaError::NotFound(_) => StatusCode::NOT_FOUND,
            CaError::IdentityProvider { unreachable: true } => StatusCode::SERVICE_UNAVAILABLE,
            CaError::IdentityProvider { unreachable: false } => StatusCode::BAD_GATEWAY,
            CaError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            CaError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            CaError::Conflict(_) => StatusCode::CONFLICT,
            CaError::Unavailable | CaError::StoreUnavailable(_) | CaError::Busy { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            CaError::Config(_) | CaError::Internal(_) | CaError::Store(_) => {
                tracing::error!(error = %self, "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let body = ApiError { error: self.code().to_owned(), message: self.public_message() };
        let mut response = (status, axum::Json(body)).into_response();
        let retry_after = match self {
            CaError::RateLimited { retry_after } | CaError::Busy { retry_after } => Some(retry_after),
            CaError::StoreUnavailable(_) => Some(STORE_RETRY_AFTER),
            _ => None,
        };
        if let Some(v) = retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}
