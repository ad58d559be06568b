//! Routes of the browser console and of the browser's own sign-in: password sign-in
//! into the session cookie, the session's CSRF token, the device list, tickets, the
//! bastion's redemption, and the data of the admin pages (policy history).

use super::extract::{Authed, BastionAuth, Body, ClientIp, Name, cookie, session_cookie};
use super::handlers::LoginBody;
use crate::error::CaError;
use crate::service::{Ca, csrf_token_for};
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use portcullis_policies::proof;
use portcullis_proto::bastion::SessionGrant;
use portcullis_proto::console::SESSION_COOKIE;
use portcullis_proto::console::*;
use std::sync::Arc;

type Ca_ = State<Arc<Ca>>;
type Res<T> = Result<Json<T>, CaError>;

/// `POST /v1/auth/browser-login`: the same checks, rate limits and audit as
/// `/v1/auth/login`, but the session is set as the `__Host-portcullis_session` cookie and the
/// body carries only the CSRF token. Cross-site forms cannot post here (the body must be
/// `application/json`, which a cross-site request can only send after a CORS preflight
/// we never answer), so this is no login-CSRF vector either.
#[utoipa::path(post, path = "/v1/auth/browser-login", operation_id = "browser_password_login", tag = "auth", request_body = LoginBody, responses((status = 200, description = "see the description")))]
pub async fn browser_login(
    State(ca): Ca_,
    ClientIp(ip): ClientIp,
    Body(body): Body<LoginBody>,
) -> Result<Response, CaError> {
    let session = body.sign_in(&ca, &ip).await?;
    let max_age = session.expires_at.saturating_sub(ca.core().now());
    let cookie = session_cookie(session.token.expose(), max_age)?;
    let answer = BrowserLoginResponse {
        username: session.username,
        csrf_token: csrf_token_for(session.token.expose()).into(),
        expires_at: session.expires_at,
    };
    let mut response = Json(answer).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

/// `GET /v1/auth/csrf`: the cookie session's CSRF token (bearer callers need none).
#[utoipa::path(get, path = "/v1/auth/csrf", tag = "auth", security(("bearer" = []), ("cookie" = [])), responses((status = 200, description = "see the description")))]
pub async fn csrf(Authed(caller): Authed, headers: axum::http::HeaderMap) -> Res<CsrfToken> {
    let token = match caller.csrf_token() {
        Some(t) => t.to_owned(),
        // Authenticated by a bearer token while also sending a cookie: derive from the cookie.
        None => cookie(&headers, SESSION_COOKIE).map(|t| csrf_token_for(&t)).ok_or(CaError::Unauthenticated)?,
    };
    Ok(Json(CsrfToken { csrf_token: token.into() }))
}

#[utoipa::path(get, path = "/v1/console/devices", tag = "console", security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = Vec<ConsoleDevice>)))]
pub async fn devices(State(ca): Ca_, Authed(c): Authed) -> Res<Vec<ConsoleDevice>> {
    Ok(Json(ca.sessions().console_devices(&c).await?))
}

/// One device of the caller's list in full; any other name is a 404.
#[utoipa::path(get, path = "/v1/console/devices/{name}", tag = "console", params(("name" = String, Path)), security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = DeviceDetails)))]
pub async fn device(State(ca): Ca_, Authed(c): Authed, Name(name): Name) -> Res<DeviceDetails> {
    Ok(Json(ca.sessions().device_details(&c, &name).await?))
}

#[utoipa::path(post, path = "/v1/console/tickets", tag = "console", request_body = TicketRequest, security(("bearer" = []), ("cookie" = [])), responses((status = 200, description = "see the description")))]
pub async fn ticket(
    State(ca): Ca_,
    Authed(c): Authed,
    ClientIp(ip): ClientIp,
    Body(r): Body<TicketRequest>,
) -> Res<TicketResponse> {
    Ok(Json(ca.sessions().console_ticket(&c, &r, &ip).await?))
}

#[utoipa::path(post, path = "/v1/bastion/console/open", operation_id = "bastion_console_open", tag = "services", request_body = ConsoleOpenRequest, security(("service" = [])), responses((status = 200, body = SessionGrant)))]
pub async fn open(State(ca): Ca_, BastionAuth(b): BastionAuth, Body(r): Body<ConsoleOpenRequest>) -> Res<SessionGrant> {
    Ok(Json(ca.sessions().open_console_session(&b, &r).await?))
}

/// Readable with `audit.read` or `policy.manage`.
#[utoipa::path(get, path = "/v1/admin/policy/history", tag = "admin", security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = Vec<PolicyChangeRecord>)))]
pub async fn policy_history(State(ca): Ca_, Authed(c): Authed) -> Res<Vec<PolicyChangeRecord>> {
    let grant = ca.core().authorize::<proof::PolicyRead>(&c)?;
    Ok(Json(ca.admin().policy_history(&grant).await?))
}
