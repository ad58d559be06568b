//! Request extractors that fail with sanitized [`CaError`]s in the JSON error format
//! instead of axum's plain-text rejections (which can echo parts of the request back).

use crate::error::CaError;
use crate::service::{Ca, Caller, ServiceCaller, csrf_token_for, csrf_token_matches};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::Method;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use portcullis_proto::bastion::ServiceKind;
use portcullis_proto::console::{
    CSRF_HEADER, FORWARDED_BY_HEADER, FORWARDED_FOR_HEADER, FORWARDED_HOST_HEADER, SESSION_COOKIE, valid_host,
};
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A JSON body; any problem becomes one sanitized 400 (or 413 for size).
pub struct Body<T>(pub T);

/// The body limit of a route, when it is not [`super::MAX_BODY_BYTES`].
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// How much of an oversized body is read and thrown away so the client, still sending,
/// receives the 413 instead of a connection reset; beyond this the connection is dropped.
const DRAIN_MAX: usize = 16 * 1024 * 1024;
/// How long reading a body (and draining an oversized one) may take.
const BODY_DEADLINE: Duration = Duration::from_secs(30);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = CaError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, CaError> {
        let is_json = media_type(&req)
            .is_some_and(|v| v == "application/json" || (v.starts_with("application/") && v.ends_with("+json")));
        let bytes = read_body(req).await?;
        if !is_json {
            return Err(CaError::BadRequest("expected Content-Type: application/json".into()));
        }
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|_| CaError::BadRequest("request body is not valid JSON for this endpoint".into()))
    }
}

/// A body that is not JSON (a recording's frames) and its media type (lower case,
/// without parameters); the handler checks both.
pub struct RawBody {
    pub media_type: Option<String>,
    pub bytes: axum::body::Bytes,
}

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = CaError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, CaError> {
        let media_type = media_type(&req);
        Ok(RawBody { media_type, bytes: read_body(req).await? })
    }
}

/// The request's `Content-Type` without parameters, lower case.
fn media_type(req: &Request) -> Option<String> {
    let value = req.headers().get(CONTENT_TYPE)?.to_str().ok()?;
    value.split(';').next().map(|v| v.trim().to_ascii_lowercase())
}

/// The body, within the route's limit ([`BodyLimit`]) and [`BODY_DEADLINE`].
async fn read_body(req: Request) -> Result<axum::body::Bytes, CaError> {
    let limit = req.extensions().get::<BodyLimit>().map_or(super::MAX_BODY_BYTES, |l| l.0);
    tokio::time::timeout(BODY_DEADLINE, read_limited(req.into_body(), limit))
        .await
        .map_err(|_| CaError::BadRequest("request body too slow".into()))?
}

/// Reads at most `limit` bytes. Past the limit, the rest is read and dropped (up to
/// [`DRAIN_MAX`]) before answering 413: a client that sends its whole body before
/// reading gets the answer instead of a reset.
async fn read_limited(mut body: axum::body::Body, limit: usize) -> Result<axum::body::Bytes, CaError> {
    use hyper::body::Body as _;
    // Kept as the pieces arrive, not sized from what the client announces: a client that
    // announces much and sends slowly holds no more memory than it sent. Joined once at
    // the end, so each byte is copied once (growing one buffer copied a megabyte
    // recording chunk about twice), and not at all when it came in one piece (the
    // all-in-one's bastion calls its CA in process with the body as one buffer).
    let mut pieces: Vec<axum::body::Bytes> = Vec::new();
    let mut seen = 0usize;
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|_| CaError::BadRequest("request body could not be read".into()))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen > DRAIN_MAX {
            return Err(CaError::TooLarge);
        }
        if seen <= limit {
            pieces.push(data);
        }
    }
    match pieces.len() {
        _ if seen > limit => Err(CaError::TooLarge),
        1 => Ok(pieces.swap_remove(0)),
        _ => Ok(pieces.concat().into()),
    }
}

/// Path parameters; a malformed one is a JSON 400.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = CaError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, CaError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(_) => Err(CaError::BadRequest("malformed path parameter".into())),
        }
    }
}

/// One name from the path (a user, a node, a session id), checked by
/// [`crate::validate::identifier`] before any lookup.
pub struct Name(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Name {
    type Rejection = CaError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, CaError> {
        let Path(name) = Path::<String>::from_request_parts(parts, state).await?;
        crate::validate::identifier("the name in the path", &name)?;
        Ok(Name(name))
    }
}

/// A query string; a malformed one is a JSON 400.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = CaError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, CaError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(_) => Err(CaError::BadRequest("malformed query string".into())),
        }
    }
}

/// The caller named by `Authorization: Bearer <token>`, or else by the
/// `__Host-portcullis_session` cookie of a browser sign-in (the same server-side session).
///
/// A cookie is sent by the browser whoever made the page, so a state-changing request
/// (anything but GET, HEAD, OPTIONS) authenticated by the cookie must also carry the
/// session's CSRF token in `X-CSRF-Token` ([`crate::csrf_token_for`]); a page on another
/// site can neither read it nor set the header without a CORS preflight we never
/// answer. SameSite=Strict already keeps the cookie off cross-site requests; the token
/// also covers same-site attackers (a sibling subdomain) and older browsers. Bearer
/// tokens are never sent implicitly and need no CSRF token.
pub struct Authed(pub Caller);

impl FromRequestParts<Arc<Ca>> for Authed {
    type Rejection = CaError;

    async fn from_request_parts(parts: &mut Parts, ca: &Arc<Ca>) -> Result<Self, CaError> {
        let bearer = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .map(str::to_owned);
        let (token, via_cookie) = match bearer {
            Some(t) => (t, false),
            None => (cookie(&parts.headers, SESSION_COOKIE).ok_or(CaError::Unauthenticated)?, true),
        };
        if token.is_empty() || token.len() > 256 {
            return Err(CaError::Unauthenticated);
        }
        let caller = ca.identity().caller(&token).await?;
        if !via_cookie {
            return Ok(Authed(caller));
        }
        if !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
            let presented = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
            if !csrf_token_matches(&token, presented) {
                tracing::info!(user = %caller.identity.username, path = %parts.uri.path(), "CSRF token missing or wrong");
                return Err(CaError::Csrf);
            }
        }
        Ok(Authed(caller.with_csrf_token(csrf_token_for(&token))))
    }
}

/// The bearer token of `Authorization: Bearer <prefix>…`, bounded in size. Never logged.
pub fn bearer<'a>(headers: &'a axum::http::HeaderMap, prefix: &str) -> Option<&'a str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| t.starts_with(prefix) && t.len() <= 128)
}

/// An enrolled bastion or agent, by its `pcs_…` bearer token: unknown → 401.
pub struct ServiceAuth(pub ServiceCaller);

impl FromRequestParts<Arc<Ca>> for ServiceAuth {
    type Rejection = CaError;

    async fn from_request_parts(parts: &mut Parts, ca: &Arc<Ca>) -> Result<Self, CaError> {
        let token = bearer(&parts.headers, "pcs_").ok_or(CaError::Unauthenticated)?;
        Ok(ServiceAuth(ca.services().service_caller(token).await?))
    }
}

async fn service_of_kind(parts: &mut Parts, ca: &Arc<Ca>, kind: ServiceKind) -> Result<ServiceCaller, CaError> {
    let ServiceAuth(caller) = ServiceAuth::from_request_parts(parts, ca).await?;
    if caller.kind != kind {
        return Err(CaError::Forbidden(match kind {
            ServiceKind::Bastion => "this endpoint is for bastions",
            ServiceKind::Agent => "this endpoint is for agents",
        }));
    }
    Ok(caller)
}

/// A bastion's credential; another service's → 403.
pub struct BastionAuth(pub ServiceCaller);

impl FromRequestParts<Arc<Ca>> for BastionAuth {
    type Rejection = CaError;

    async fn from_request_parts(parts: &mut Parts, ca: &Arc<Ca>) -> Result<Self, CaError> {
        Ok(BastionAuth(service_of_kind(parts, ca, ServiceKind::Bastion).await?))
    }
}

/// An agent's credential; another service's → 403.
pub struct AgentAuth(pub ServiceCaller);

impl FromRequestParts<Arc<Ca>> for AgentAuth {
    type Rejection = CaError;

    async fn from_request_parts(parts: &mut Parts, ca: &Arc<Ca>) -> Result<Self, CaError> {
        Ok(AgentAuth(service_of_kind(parts, ca, ServiceKind::Agent).await?))
    }
}

/// Checks that a request speaking for a browser comes from a bastion: its `pcs_…`
/// credential beside the forwarded headers.
async fn forwarding_bastion(parts: &Parts, ca: &Ca) -> Result<(), CaError> {
    let credential = parts
        .headers
        .get(FORWARDED_BY_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|t| t.starts_with("pcs_") && t.len() <= 128)
        .ok_or(CaError::Unauthenticated)?;
    if ca.services().service_caller(credential).await?.kind != ServiceKind::Bastion {
        return Err(CaError::Forbidden("only a bastion may pass on a browser's request"));
    }
    Ok(())
}

/// The `host[:port]` the browser addressed — the origin single sign-on returns it to: the
/// one a bastion's front door names beside its credential, else this request's own
/// (HTTP/2 authority or `Host`). `None` when neither is a plausible host.
pub struct BrowserHost(pub Option<String>);

impl FromRequestParts<Arc<Ca>> for BrowserHost {
    type Rejection = CaError;

    async fn from_request_parts(parts: &mut Parts, ca: &Arc<Ca>) -> Result<Self, CaError> {
        let host = match parts.headers.get(FORWARDED_HOST_HEADER) {
            Some(forwarded) => {
                forwarding_bastion(parts, ca).await?;
                Some(forwarded.to_str().map_err(|_| CaError::BadRequest("malformed forwarded host".into()))?.to_owned())
            }
            None => match parts.uri.authority() {
                Some(authority) => Some(authority.as_str().to_owned()),
                None => parts.headers.get(axum::http::header::HOST).and_then(|v| v.to_str().ok()).map(str::to_owned),
            },
        };
        Ok(BrowserHost(host.filter(|h| valid_host(h))))
    }
}

/// The `Set-Cookie` value of a browser's API session: host-only, HTTPS-only, out of
/// scripts' reach, never sent on cross-site requests.
pub fn session_cookie(token: &str, max_age: u64) -> Result<axum::http::HeaderValue, CaError> {
    axum::http::HeaderValue::try_from(format!(
        "{SESSION_COOKIE}={token}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict"
    ))
    .map_err(|_| CaError::Internal("cookie header".into()))
}

/// The value of cookie `name` from the request's `Cookie` headers ([`portcullis_proto::console::cookie`]).
pub fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    portcullis_proto::console::cookie(
        headers.get_all(axum::http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()),
        name,
    )
}

/// The client's address, as text for rate limits and audit records: the TCP peer's, or
/// — on a call a bastion's web front door passes on for a browser — the browser's, which
/// the CA believes only beside a valid bastion credential (a forged header without one
/// is refused, never ignored: the caller meant to speak for someone).
pub struct ClientIp(pub String);

impl FromRequestParts<Arc<Ca>> for ClientIp {
    type Rejection = CaError;

    async fn from_request_parts(parts: &mut Parts, ca: &Arc<Ca>) -> Result<Self, CaError> {
        if let Some(forwarded) = parts.headers.get(FORWARDED_FOR_HEADER) {
            forwarding_bastion(parts, ca).await?;
            let ip: std::net::IpAddr = forwarded
                .to_str()
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| CaError::BadRequest("malformed forwarded address".into()))?;
            return Ok(ClientIp(ip.to_string()));
        }
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string())
            .unwrap_or_else(|| "unknown".to_owned());
        Ok(ClientIp(ip))
    }
}
