//! The bastion's web front door: browsers reach the web UI, its API calls and the
//! console's WebSocket on **one origin, the bastion's own**, so a standalone bastion
//! near the users serves consoles and the CA can stay off the users' network.
//!
//! Why one origin rather than a page from the CA and a socket to the bastion: the
//! console ticket is bound to the browser session whose cookie comes with the
//! WebSocket upgrade, and a browser sends a cookie only to the origin that set it. The
//! front door passes the UI's pages and API calls on to the CA (any replica, like every
//! other call of this bastion), so the CA's sign-in answer sets the session cookie on
//! this origin and the upgrade carries it here.
//!
//! Only what a browser needs is passed on (an allow-list: the UI, `/v1/auth/`,
//! `/v1/console/`, `/v1/admin/`); the services' and nodes' endpoints answer 404 here. A
//! path with dot segments or encoded separators is refused before anything is matched,
//! since the URL parser on the way to the CA would resolve `/ui/../v1/bastion/…`.
//! Request headers are passed on from an allow-list too, so a browser cannot send the
//! CA the forwarding headers that name a client address.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_proto::console::CSRF_HEADER;

use crate::console::ConsoleEndpoint;
use crate::control::ForwardedRequest;

/// Largest request body passed on (the CA's own limit is lower; this only bounds what
/// the front door buffers).
const MAX_REQUEST_BODY: usize = 256 * 1024;

/// Paths passed on to the CA: exact, or a prefix ending in `/`.
const PASSED_ON: &[&str] = &["/", "/ui", "/ui/", "/v1/auth/", "/v1/console/", "/v1/admin/"];

/// Request headers a browser's call keeps on its way to the CA.
static REQUEST_HEADERS: [HeaderName; 5] =
    [header::ACCEPT, header::AUTHORIZATION, header::CONTENT_TYPE, header::COOKIE, HeaderName::from_static(CSRF_HEADER)];

/// Answer headers passed back from the CA.
static ANSWER_HEADERS: [HeaderName; 11] = [
    header::CACHE_CONTROL,
    header::CONTENT_DISPOSITION,
    header::CONTENT_SECURITY_POLICY,
    header::CONTENT_TYPE,
    header::LOCATION,
    header::REFERRER_POLICY,
    header::RETRY_AFTER,
    header::SET_COOKIE,
    header::STRICT_TRANSPORT_SECURITY,
    header::X_CONTENT_TYPE_OPTIONS,
    header::X_FRAME_OPTIONS,
];

/// The console's WebSocket, and everything else a browser needs passed on to the CA.
pub fn router(console: &Arc<ConsoleEndpoint>) -> Router {
    console.router().merge(Router::new().fallback(pass_on).with_state(Arc::clone(console)))
}

/// Whether `path` is one the front door passes on: under the allow-list, with no dot
/// segment, no empty segment (but a trailing slash) and no escapes.
fn passed_on(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else { return false };
    let segments: Vec<&str> = rest.split('/').collect();
    let inner = segments.split_last().map_or(&[][..], |(_, inner)| inner);
    let plain = !path.contains(['%', '\\'])
        && segments.iter().all(|s| !matches!(*s, "." | ".."))
        && inner.iter().all(|s| !s.is_empty());
    plain && PASSED_ON.iter().any(|p| if p.len() > 1 && p.ends_with('/') { path.starts_with(p) } else { path == *p })
}

async fn pass_on(
    State(console): State<Arc<ConsoleEndpoint>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let Some(control) = console.control() else {
        return api_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the bastion is starting");
    };
    let (parts, body) = request.into_parts();
    if !passed_on(parts.uri.path()) {
        return api_error(StatusCode::NOT_FOUND, "not_found", "no such route");
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_REQUEST_BODY).await else {
        return api_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "request body too large");
    };
    let host = browser_host(&parts);
    let request = ForwardedRequest {
        method: parts.method,
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: kept(&parts.headers, &REQUEST_HEADERS),
        body,
        client_ip: peer.ip(),
        host,
    };
    match control.forward(&request).await {
        Ok(answer) => {
            let mut response = Response::new(Body::from(answer.body));
            *response.status_mut() = answer.status;
            *response.headers_mut() = kept(&answer.headers, &ANSWER_HEADERS);
            response
        }
        Err(e) => {
            tracing::warn!(error = %e, "the CA did not answer a browser's request");
            api_error(StatusCode::BAD_GATEWAY, "ca_unreachable", "the CA cannot be reached; try again shortly")
        }
    }
}

/// The `host[:port]` the browser addressed: HTTP/2's authority, else HTTP/1.1's `Host`.
fn browser_host(parts: &axum::http::request::Parts) -> Option<String> {
    let host = match parts.uri.authority() {
        Some(authority) => authority.as_str().to_owned(),
        None => parts.headers.get(header::HOST)?.to_str().ok()?.to_owned(),
    };
    portcullis_proto::console::valid_host(&host).then_some(host)
}

/// The headers of `from` named in `names` (every value of each: `Set-Cookie` repeats).
fn kept(from: &HeaderMap, names: &[HeaderName]) -> HeaderMap {
    let mut to = HeaderMap::new();
    for name in names {
        for value in from.get_all(name) {
            to.append(name.clone(), value.clone());
        }
    }
    to
}

/// An error in the CA's JSON error format, so the UI shows it like the CA's own.
fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(portcullis_proto::ApiError { error: code.to_owned(), message: message.to_owned() }))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::passed_on;

    #[test]
    fn only_the_browsers_routes_are_passed_on() {
        for path in [
            "/",
            "/ui",
            "/ui/",
            "/ui/console",
            "/ui/static/app.js",
            "/v1/auth/browser-login",
            "/v1/console/tickets",
            "/v1/admin/sessions/abc/kill",
        ] {
            assert!(passed_on(path), "{path}");
        }
        for path in [
            "/v1/bastion/heartbeat",
            "/v1/services/enroll",
            "/v1/certs/user",
            "/v1/enroll",
            "/enroll.sh",
            "/v1/krl",
            "/metrics",
            "/ui/../v1/bastion/heartbeat",
            "/ui/%2e%2e/v1/bastion/heartbeat",
            "/v1/admin/..%2fbastion",
            "/ui/./static",
            "/v1/auth//whoami",
            "/v1/auth\\..\\bastion",
            "/uix",
            "/v1/authx",
            "",
        ] {
            assert!(!passed_on(path), "{path}");
        }
    }
}
