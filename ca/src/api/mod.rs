//! The HTTPS API: routing, request limits, and the mapping from [`CaError`] to what a
//! client may see. Handlers live in `handlers` and are one call into one service of [`Ca`] each.

mod bastion;
mod console;
mod enroll;
mod extract;
mod handlers;
mod inventory;
mod oidc;
mod recordings;
mod ui;

use crate::error::CaError;
use crate::service::Ca;
use axum::Extension;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use extract::BodyLimit;
use portcullis_proto::ApiError;
use std::sync::Arc;
use utoipa::OpenApi as _;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

/// JSON bodies are small; a public key line is at most 16 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Bastion heartbeats and event batches (authenticated bastions only).
pub const BASTION_BODY_BYTES: usize = 4 * 1024 * 1024;

/// What a client that met a full disk or a lost database is told to wait.
const STORE_RETRY_AFTER: u64 = 5;

pub fn router(ca: Arc<Ca>) -> Router {
    let (api, description) = api_routes().split_for_parts();
    let description = Arc::new(description);
    api.route("/v1/health", get(|| async { "ok" }))
        // Liveness (the process answers) and readiness (it can serve): for load
        // balancers and orchestrators. Neither needs or reveals anything secret.
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/openapi.json", get(move || std::future::ready(Json(Arc::clone(&description)))))
        .merge(ui::router())
        .fallback(|| async { CaError::NotFound("route") })
        .method_not_allowed_fallback(|| async { CaError::MethodNotAllowed })
        // Bodies are read by `extract::Body`, which applies `MAX_BODY_BYTES` or the
        // route's `BodyLimit`; axum's own limit stays as a backstop for other extractors.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(no_store_by_default))
        .with_state(ca)
}

/// Answers name users, audit records, inventory and tokens: no browser or proxy keeps
/// them (a shared machine's disk cache outlives the sign-out). A route whose answer may
/// be kept says so itself (the UI's static assets).
async fn no_store_by_default(mut response: axum::response::Response) -> axum::response::Response {
    let no_store = axum::http::HeaderValue::from_static("no-store");
    response.headers_mut().entry(axum::http::header::CACHE_CONTROL).or_insert(no_store);
    response
}

/// The API's description (OpenAPI 3.1), as `/v1/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().split_for_parts().1
}

/// The operations, each path and method taken from its handler's `#[utoipa::path]`:
/// what is routed is what is described, so the two cannot drift apart.
fn api_routes() -> OpenApiRouter<Arc<Ca>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(handlers::login))
        .routes(routes!(handlers::logout))
        .routes(routes!(handlers::whoami))
        .routes(routes!(console::browser_login))
        .routes(routes!(console::csrf))
        .routes(routes!(console::devices))
        .routes(routes!(console::device))
        .routes(routes!(console::ticket))
        .routes(routes!(console::open))
        .routes(routes!(console::policy_history))
        .routes(routes!(oidc::methods))
        .routes(routes!(oidc::device_start))
        .routes(routes!(oidc::device_poll))
        .routes(routes!(oidc::browser_login))
        .routes(routes!(oidc::browser_callback))
        .routes(routes!(handlers::issue_user_cert))
        .routes(routes!(handlers::revoke_own_cert))
        .routes(routes!(handlers::trusted_keys))
        .routes(routes!(handlers::krl))
        .routes(routes!(handlers::bastion_host_keys))
        .routes(routes!(handlers::node_principals))
        .routes(routes!(handlers::list_users, handlers::add_user))
        .routes(routes!(handlers::disable_user))
        .routes(routes!(handlers::enable_user))
        .routes(routes!(handlers::release_account))
        .routes(routes!(handlers::set_groups))
        .routes(routes!(handlers::set_password))
        .routes(routes!(handlers::revoke))
        .routes(routes!(handlers::list_certs))
        .routes(routes!(handlers::list_ca_keys))
        .routes(routes!(handlers::rotate_ca_key))
        .routes(routes!(handlers::activate_ca_key))
        .routes(routes!(handlers::retire_ca_key))
        .routes(routes!(handlers::list_nodes, handlers::add_node))
        .routes(routes!(handlers::update_node, handlers::remove_node))
        .routes(routes!(handlers::reload_policy))
        .routes(routes!(handlers::audit_records))
        .routes(routes!(handlers::audit_verify))
        .routes(routes!(enroll::list_tokens, enroll::create_token))
        .routes(routes!(enroll::revoke_token))
        .routes(routes!(enroll::enroll))
        .routes(routes!(enroll::abort))
        .routes(routes!(enroll::refresh))
        .routes(routes!(enroll::deregister))
        .routes(routes!(bastion::enroll))
        .routes(routes!(bastion::certificate))
        .routes(routes!(bastion::bastions))
        .routes(routes!(bastion::agent_targets))
        .routes(routes!(bastion::open))
        // A heartbeat lists every live session of a bastion (up to 20,000, ~100 bytes each)
        // and an event batch up to 1000 events: both outgrow the default limit.
        .routes(routes!(bastion::heartbeat).layer(Extension(BodyLimit(BASTION_BODY_BYTES))))
        .routes(routes!(bastion::close))
        // Up to 1000 closes of ~200 bytes each.
        .routes(routes!(bastion::closes).layer(Extension(BodyLimit(BASTION_BODY_BYTES))))
        .routes(routes!(bastion::events).layer(Extension(BodyLimit(BASTION_BODY_BYTES))))
        // One chunk of terminal text (up to 512 KiB, JSON-escaped).
        .routes(routes!(recordings::append).layer(Extension(BodyLimit(BASTION_BODY_BYTES))))
        .routes(routes!(recordings::list))
        .routes(routes!(recordings::get))
        .routes(routes!(bastion::list_sessions))
        .routes(routes!(bastion::kill_session))
        .routes(routes!(bastion::list_agents))
        .routes(routes!(bastion::list_bastions))
        .routes(routes!(inventory::claim))
        .routes(
            routes!(inventory::report)
                .layer(Extension(BodyLimit(portcullis_proto::discovery::MAX_DISCOVERY_REPORT_BODY))),
        )
        .routes(routes!(inventory::show))
        .routes(routes!(inventory::pve_claim))
        .routes(routes!(inventory::pve_report).layer(Extension(BodyLimit(portcullis_proto::pve::MAX_PVE_REPORT_BODY))))
        .routes(routes!(inventory::clusters))
        .routes(routes!(inventory::cluster))
        .routes(routes!(inventory::list_secrets, inventory::add_secret))
        .routes(routes!(inventory::rotate_secret, inventory::remove_secret))
        .routes(routes!(inventory::preview_rule))
        .routes(
            routes!(inventory::preview_rules, inventory::preview_policy)
                .layer(Extension(BodyLimit(BASTION_BODY_BYTES))),
        )
        .routes(routes!(enroll::script))
        .routes(routes!(enroll::binary))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Portcullis CA", description = "SSH certificate authority, sessions and inventory of Portcullis."),
    modifiers(&Credentials),
    tags(
        (name = "auth", description = "Sign-in: passwords, OpenID Connect, browser sessions"),
        (name = "certificates", description = "User certificates, CA keys, the KRL"),
        (name = "console", description = "The browser console: devices and tickets"),
        (name = "admin", description = "Administration (each operation names the permission it needs)"),
        (name = "nodes", description = "Node enrollment and refresh"),
        (name = "services", description = "Bastions and edge agents"),
    )
)]
struct ApiDoc;

/// How callers prove who they are: a user's `Authorization: Bearer` token or the
/// browser's session cookie (with `X-CSRF-Token` on state changes), or a bastion's or
/// agent's `pcs_…` credential.
struct Credentials;

impl utoipa::Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(what)).build())
        };
        components.add_security_scheme("bearer", bearer("A user's API token from /v1/auth/login."));
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(portcullis_proto::console::SESSION_COOKIE))),
        );
        components.add_security_scheme("service", bearer("A bastion's or agent's pcs_ credential."));
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "alive": true }))
}

async fn readyz(axum::extract::State(ca): axum::extract::State<Arc<Ca>>) -> Response {
    let (ready, checks) = ca.core().readiness().await;
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
            CaError::BadRequest(_) | CaError::UnsupportedConsoleMode | CaError::GuestConsoleUnsupported { .. } => {
                StatusCode::BAD_REQUEST
            }
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
