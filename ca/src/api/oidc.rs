//! Single sign-on routes. The callback's query is parsed by hand so that a missing,
//! repeated or oversized parameter gets its own clear answer.

use super::extract::{Body, BrowserHost, ClientIp, Query, cookie, session_cookie};
use crate::error::CaError;
use crate::service::Ca;
use crate::service::oidc::Callback;
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_proto::oidc::{AuthMethods, DevicePoll, DevicePollRequest, DeviceStart, DeviceStartRequest};
use std::sync::Arc;

/// The API session cookie: the same server-side session as a bearer token.
/// Binds a browser sign-in to the browser that started it (login CSRF defence).
/// SameSite=Lax, not Strict: it must come along on the IdP's cross-site redirect back.
/// `__Host-`: a browser takes this cookie only from this very origin, over HTTPS, for
/// path `/` — never from a sibling subdomain (a compromised `*.example.com` host),
/// which could otherwise plant its own binding and sign the victim in as the attacker
/// (login CSRF). The session cookie is named the same way (`SESSION_COOKIE`).
const BINDING_COOKIE: &str = "__Host-portcullis_oidc_binding";
const MAX_QUERY_BYTES: usize = 8 * 1024;
const MAX_PARAM_BYTES: usize = 4 * 1024;

type Ca_ = State<Arc<Ca>>;

#[utoipa::path(get, path = "/v1/auth/methods", tag = "auth", responses((status = 200, body = AuthMethods)))]
pub async fn methods(State(ca): Ca_) -> Json<AuthMethods> {
    Json(ca.identity().auth_methods())
}

#[utoipa::path(post, path = "/v1/auth/oidc/device", tag = "auth", request_body = DeviceStartRequest, responses((status = 200, body = DeviceStart)))]
pub async fn device_start(
    State(ca): Ca_,
    ClientIp(ip): ClientIp,
    Body(body): Body<DeviceStartRequest>,
) -> Result<Json<DeviceStart>, CaError> {
    Ok(Json(ca.identity().oidc_device_start(&ip, body.fresh).await?))
}

#[utoipa::path(post, path = "/v1/auth/oidc/device/poll", tag = "auth", request_body = DevicePollRequest, responses((status = 200, body = DevicePoll)))]
pub async fn device_poll(
    State(ca): Ca_,
    ClientIp(ip): ClientIp,
    Body(body): Body<DevicePollRequest>,
) -> Result<Json<DevicePoll>, CaError> {
    let handle = body.handle.expose();
    if handle.is_empty() || handle.len() > crate::service::oidc::MAX_DEVICE_HANDLE {
        return Err(CaError::BadRequest("malformed device sign-in handle".into()));
    }
    Ok(Json(ca.identity().oidc_device_poll(handle, &ip).await?))
}

/// `?fresh=1`: sign in at the identity provider again (step-up).
#[derive(serde::Deserialize)]
pub struct BrowserLoginQuery {
    fresh: Option<String>,
}

fn header_value(s: String) -> Result<HeaderValue, CaError> {
    HeaderValue::try_from(s).map_err(|_| CaError::Internal("header value".into()))
}

#[utoipa::path(get, path = "/v1/auth/oidc/login", operation_id = "oidc_browser_login", tag = "auth", responses((status = 200, description = "see the description")))]
pub async fn browser_login(
    State(ca): Ca_,
    ClientIp(ip): ClientIp,
    BrowserHost(host): BrowserHost,
    Query(q): Query<BrowserLoginQuery>,
) -> Result<Response, CaError> {
    let fresh = match q.fresh.as_deref() {
        None | Some("0") | Some("false") => false,
        Some("1") | Some("true") => true,
        Some(_) => return Err(CaError::BadRequest("fresh is 1 or 0".into())),
    };
    let login = ca.identity().oidc_browser_start(&ip, host.as_deref(), fresh).await?;
    let mut response = see_other(&login.redirect_to)?;
    response.headers_mut().insert(
        header::SET_COOKIE,
        header_value(format!(
            "{BINDING_COOKIE}={}; Path=/; Max-Age=600; Secure; HttpOnly; SameSite=Lax",
            login.binding
        ))?,
    );
    Ok(response)
}

/// Splits the callback query into its parameters, refusing repeats and oversize values.
pub fn parse_callback(query: Option<&str>) -> Result<Callback, CaError> {
    let query = query.unwrap_or("");
    if query.len() > MAX_QUERY_BYTES {
        return Err(CaError::BadRequest("callback query too long".into()));
    }
    let (mut code, mut state, mut error, mut iss) = (None, None, None, None);
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let slot = match name.as_ref() {
            "code" => &mut code,
            "state" => &mut state,
            "error" => &mut error,
            "iss" => &mut iss,
            // error_description, error_uri, session_state…: not ours to show or keep.
            _ => continue,
        };
        if value.len() > MAX_PARAM_BYTES {
            return Err(CaError::BadRequest(format!("callback parameter `{name}` is too long")));
        }
        if slot.is_some() {
            return Err(CaError::BadRequest(format!("callback parameter `{name}` appears more than once")));
        }
        *slot = Some(value.into_owned());
    }
    if let Some(error) = error {
        let error: String = error.chars().filter(|c| c.is_ascii_lowercase() || *c == '_').take(64).collect();
        return Ok(Callback::Error { error, state });
    }
    match (code.filter(|c| !c.is_empty()), state.filter(|s| !s.is_empty())) {
        (Some(code), Some(state)) => Ok(Callback::Code { code, state, iss }),
        (None, _) => Err(CaError::BadRequest("callback parameter `code` is missing".into())),
        (_, None) => Err(CaError::BadRequest("callback parameter `state` is missing".into())),
    }
}

/// The IdP's redirect back. Signed in, the browser goes on to the web UI (`303` to
/// `/ui/`): the session cookie is `SameSite=Strict`, so it is not sent on this
/// cross-site redirect chain, but the page's own requests are same-site and carry it.
/// A refused callback answers with its status and message, except to a browser
/// navigating (`Accept: text/html`), which is sent to the sign-in page with the error's
/// code only (`/ui/?sso_error=CODE`): the page words the advice itself, so nothing the
/// IdP or an attacker put in the query is reflected.
#[utoipa::path(get, path = "/v1/auth/oidc/callback", tag = "auth", responses((status = 303, description = "signed in: on to the web UI")))]
pub async fn browser_callback(
    State(ca): Ca_,
    ClientIp(ip): ClientIp,
    BrowserHost(host): BrowserHost,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, CaError> {
    let signed_in = async {
        let callback = parse_callback(query.as_deref())?;
        let binding = cookie(&headers, BINDING_COOKIE);
        ca.identity().oidc_browser_callback(callback, binding.as_deref(), &ip, host.as_deref()).await
    };
    let session = match signed_in.await {
        Ok(session) => session,
        Err(e) if navigating(&headers) => return see_other(&format!("/ui/?sso_error={}", e.code())),
        Err(e) => return Err(e),
    };
    let max_age = session.expires_at.saturating_sub(ca.core().now());
    let mut response = see_other("/ui/")?;
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, session_cookie(session.token.expose(), max_age)?);
    headers.append(
        header::SET_COOKIE,
        header_value(format!("{BINDING_COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax"))?,
    );
    Ok(response)
}

/// A browser's top-level navigation (it asks for a page), not an API client.
fn navigating(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| accept.contains("text/html"))
}

/// `303 See Other` to `location` (never cached, as every API answer: `no_store_by_default`).
fn see_other(location: &str) -> Result<Response, CaError> {
    let mut response = StatusCode::SEE_OTHER.into_response();
    response.headers_mut().insert(header::LOCATION, header_value(location.to_owned())?);
    Ok(response)
}

/// Clears the session cookie in the browser (the server-side record is revoked by logout).
pub fn clear_session_cookie() -> (header::HeaderName, HeaderValue) {
    (
        header::SET_COOKIE,
        HeaderValue::from_static("__Host-portcullis_session=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_parameters() {
        assert!(matches!(parse_callback(Some("code=a&state=b")), Ok(Callback::Code { .. })));
        assert!(matches!(parse_callback(Some("code=a&state=b&iss=x&session_state=y")), Ok(Callback::Code { .. })));
        let msg = |q: Option<&str>| match parse_callback(q) {
            Err(e) => e.to_string(),
            Ok(_) => "accepted".into(),
        };
        assert_eq!(msg(None), "callback parameter `code` is missing");
        assert_eq!(msg(Some("state=b")), "callback parameter `code` is missing");
        assert_eq!(msg(Some("code=a")), "callback parameter `state` is missing");
        assert_eq!(msg(Some("code=a&state=")), "callback parameter `state` is missing");
        assert_eq!(msg(Some("code=a&state=b&state=c")), "callback parameter `state` appears more than once");
        assert_eq!(msg(Some("code=a&code=a&state=b")), "callback parameter `code` appears more than once");
        let long = format!("code={}&state=b", "x".repeat(MAX_PARAM_BYTES + 1));
        assert_eq!(msg(Some(&long)), "callback parameter `code` is too long");
        let huge = format!("code=a&state=b&pad={}", "x".repeat(MAX_QUERY_BYTES));
        assert_eq!(msg(Some(&huge)), "callback query too long");
        match parse_callback(Some("error=access_denied%3Cscript%3E&error_description=%3Cb%3E&state=s")) {
            Ok(Callback::Error { error, state }) => {
                assert_eq!(error, "access_deniedscript");
                assert_eq!(state.as_deref(), Some("s"));
            }
            _ => panic!("an IdP error must be recognised"),
        }
    }
}
