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

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// Browser requests passed on at once: from the first byte of the request body to the
/// last byte of the answer, so what the front door holds for browsers is bounded
/// (each at most [`MAX_REQUEST_BODY`] plus the answer) whatever they send or fail to read.
const MAX_FORWARDS_HELD: usize = 128;
/// Of those, how many may be waiting for the CA at once. The CA client has 64 turns for
/// all of this bastion's calls (`ca_client`); browsers — anyone, before signing in —
/// may take at most this many, so heartbeats, session opens and closes always find one
/// (a flood of browser requests kept every turn busy, heartbeats failed, and the
/// bastion closed every session for a lost lease).
const MAX_FORWARDS_CALLING: usize = 16;
/// A browser's request body arrives within this, or the request is refused.
const BODY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a request waits for one of the [`MAX_FORWARDS_CALLING`] turns.
const TURN_WAIT: Duration = Duration::from_secs(5);
/// The answer is handed to the connection this much at a time, so an answer a browser
/// does not read stays here, counted by its turn, not in the connection's buffers.
const ANSWER_FRAME: usize = 16 * 1024;

/// The front door's share of the bastion: see [`MAX_FORWARDS_HELD`] and
/// [`MAX_FORWARDS_CALLING`]. Past either, a browser gets 503 and may try again.
struct Turns {
    held: Arc<Semaphore>,
    calling: Semaphore,
}

impl Turns {
    fn new(held: usize, calling: usize) -> Self {
        Self { held: Arc::new(Semaphore::new(held)), calling: Semaphore::new(calling) }
    }

    /// A turn to hold a request and its answer, or `None` at once.
    fn to_hold(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.held).try_acquire_owned().ok()
    }

    /// A turn to wait for the CA, or `None` after [`TURN_WAIT`].
    async fn to_call(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        tokio::time::timeout(TURN_WAIT, self.calling.acquire()).await.ok()?.ok()
    }
}

// Browsers never take more than a quarter of the CA client's turns.
const _: () = assert!(MAX_FORWARDS_CALLING * 4 <= crate::ca_client::MAX_CALLS_IN_FLIGHT);

/// The console's WebSocket, and everything else a browser needs passed on to the CA.
pub fn router(console: &Arc<ConsoleEndpoint>) -> Router {
    let turns = Arc::new(Turns::new(MAX_FORWARDS_HELD, MAX_FORWARDS_CALLING));
    console.router().merge(Router::new().fallback(pass_on).with_state((Arc::clone(console), turns)))
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
    State((console, turns)): State<(Arc<ConsoleEndpoint>, Arc<Turns>)>,
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
    let Some(held) = turns.to_hold() else {
        return busy();
    };
    let body = match tokio::time::timeout(BODY_DEADLINE, axum::body::to_bytes(body, MAX_REQUEST_BODY)).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => return api_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "request body too large"),
        Err(_) => return api_error(StatusCode::REQUEST_TIMEOUT, "timeout", "the request body did not arrive in time"),
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
    let Some(calling) = turns.to_call().await else {
        return busy();
    };
    let forwarded = control.forward(&request).await;
    drop(calling);
    match forwarded {
        Ok(answer) => {
            let mut response = Response::new(Body::new(Answer { rest: answer.body.into(), _held: held }));
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

fn busy() -> Response {
    let mut response = api_error(StatusCode::SERVICE_UNAVAILABLE, "busy", "the bastion is busy; try again shortly");
    response.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
    response
}

/// The CA's answer on its way to a browser, with the turn it holds until the last of it
/// is taken (see [`ANSWER_FRAME`]).
struct Answer {
    rest: Bytes,
    _held: OwnedSemaphorePermit,
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(ANSWER_FRAME);
        Poll::Ready(Some(Ok(http_body::Frame::data(self.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.rest.len() as u64)
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
    use super::*;
    use http_body_util::BodyExt;

    /// A flood of browser requests waiting on the CA takes its share of turns and no more:
    /// the next waits [`TURN_WAIT`] and is refused, and a turn comes back when a call ends.
    #[tokio::test(start_paused = true)]
    async fn browsers_take_at_most_their_share_of_the_ca_clients_turns() {
        let turns = Turns::new(MAX_FORWARDS_HELD, MAX_FORWARDS_CALLING);
        let calls: Vec<_> = take_calls(&turns, MAX_FORWARDS_CALLING).await;
        assert_eq!(calls.len(), MAX_FORWARDS_CALLING);
        let started = tokio::time::Instant::now();
        assert!(turns.to_call().await.is_none(), "a browser took more than its share");
        assert_eq!(started.elapsed(), TURN_WAIT);
        drop(calls);
        assert!(turns.to_call().await.is_some());
    }

    async fn take_calls(turns: &Turns, n: usize) -> Vec<tokio::sync::SemaphorePermit<'_>> {
        let mut taken = Vec::new();
        for _ in 0..n {
            taken.push(turns.to_call().await.expect("a free turn"));
        }
        taken
    }

    /// An answer a browser does not read keeps its turn, so unread answers cannot pile up
    /// past [`MAX_FORWARDS_HELD`]; it is handed out a frame at a time, and the turn comes
    /// back once the answer is dropped.
    #[tokio::test]
    async fn an_unread_answer_holds_its_turn_until_it_is_gone() {
        let turns = Turns::new(2, 1);
        let mut answer = Answer { rest: Bytes::from(vec![7u8; 3 * ANSWER_FRAME + 1]), _held: turns.to_hold().unwrap() };
        let _other = turns.to_hold().unwrap();
        assert!(turns.to_hold().is_none(), "more answers held than turns");
        let first = answer.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), ANSWER_FRAME);
        assert!(turns.to_hold().is_none(), "a half-sent answer gave its turn back");
        let rest = answer.collect().await.unwrap().to_bytes();
        assert_eq!(rest.len(), 2 * ANSWER_FRAME + 1);
        assert!(turns.to_hold().is_some(), "the turn did not come back");
    }

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
