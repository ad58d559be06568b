//! How the data plane's calls reach the CA: pinned HTTPS to its replicas, or — inside the
//! all-in-one — the CA's own router in this process ([`InProcessCa`]).
//!
//! Either way a call is the same HTTP request to the same router and handlers, and a
//! service's calls carry its `pcs_…` credential, which the CA checks on every one. In
//! process the request is handed to the router as a value: nothing is encrypted, written
//! to a socket or parsed again on the way (see ARCHITECTURE.md, "The all-in-one's data
//! plane calls its CA in process").

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use tower::ServiceExt;

use crate::error::BastionError;

/// Idle connections kept to each CA replica.
const MAX_IDLE_CONNECTIONS: usize = 4;
/// Calls in flight at once (each over its own HTTP/1.1 connection): a burst — a thousand
/// sessions closing together — queues here instead of opening a connection per call,
/// which also keeps the service within the CA's per-source connection cap
/// (`portcullis_ca::server::ConnectionLimits`, 256 by default).
pub(crate) const MAX_CALLS_IN_FLIGHT: usize = 64;

/// The CA replicas a service talks to: `https://ca1:8443,https://ca2:8443` (any may
/// answer; they share one database). Calls go to the one that answered last; a replica
/// that cannot be connected to, or answers 502/503/504, hands the call to the next at
/// once — a request that never reached a CA is safe to repeat. A timeout (the request
/// may have been served) is not repeated, but the next call starts at the next replica.
struct CaReplicas {
    bases: Vec<String>,
    current: AtomicUsize,
}

impl CaReplicas {
    /// Refuses an empty list.
    fn new(urls: &str) -> Result<Self, BastionError> {
        let bases: Vec<String> =
            urls.split(',').map(|u| u.trim().trim_end_matches('/').to_owned()).filter(|u| !u.is_empty()).collect();
        if bases.is_empty() {
            return Err(BastionError::HttpClient("no CA URL given".into()));
        }
        Ok(Self { bases, current: AtomicUsize::new(0) })
    }

    /// Sends `request(base)` to the replicas in turn, starting with the one that answered
    /// last (see the type's doc).
    async fn call<T, E, F, Fut>(&self, request: F) -> Result<T, E>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, Attempt<E>>>,
    {
        let n = self.bases.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut k = 0;
        loop {
            let i = (start + k) % n;
            let base = self.bases.get(i).cloned().unwrap_or_default();
            match request(base).await {
                Ok(answer) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(Attempt::TryNext(_)) if k + 1 < n => k += 1,
                Err(Attempt::TryNext(e) | Attempt::Final(e)) => return Err(e),
                Err(Attempt::FinalMoveOn(e)) => {
                    self.current.store((i + 1) % n, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
    }

    fn describe(&self) -> String {
        self.bases.join(",")
    }
}

/// How one attempt at one replica ended, when it did not succeed.
enum Attempt<E> {
    /// Never reached the CA (or the CA said it cannot serve): the next replica may.
    TryNext(E),
    /// The answer stands (a refusal, or a request that may have been served).
    Final(E),
    /// The answer stands, but later calls should start at the next replica (a timeout).
    FinalMoveOn(E),
}

impl<E> Attempt<E> {
    /// How a transport error counts: never connected → the next replica may serve it;
    /// timed out → it may have been served; anything else → as it is.
    fn kind_of(e: &reqwest::Error) -> fn(E) -> Self {
        if e.is_connect() {
            Attempt::TryNext
        } else if e.is_timeout() {
            Attempt::FinalMoveOn
        } else {
            Attempt::Final
        }
    }
}

/// The all-in-one's CA, called in this process: its API router, as it is served.
#[derive(Clone)]
pub struct InProcessCa {
    router: axum::Router,
}

impl InProcessCa {
    pub fn new(router: axum::Router) -> Self {
        Self { router }
    }

    async fn call(&self, request: &CaRequest, max: usize) -> Result<CaAnswer, NoAnswer> {
        let mut http = axum::http::Request::builder()
            .method(request.method.clone())
            .uri(request.path_and_query.as_str())
            .body(axum::body::Body::from(request.body.clone()))
            .map_err(|e| NoAnswer::Failed(format!("cannot make the request: {e}")))?;
        *http.headers_mut() = request.headers.clone();
        // Seen as loopback, as the same calls were over loopback TCP.
        http.extensions_mut().insert(axum::extract::ConnectInfo(IN_PROCESS_PEER));
        let response = match self.router.clone().oneshot(http).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        let body = match http_body_util::Limited::new(body, max).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(NoAnswer::TooLarge),
            Err(e) => return Err(NoAnswer::Failed(format!("the answer could not be read: {e}"))),
        };
        Ok(CaAnswer { status: parts.status, headers: parts.headers, body: body.to_vec() })
    }
}

impl std::fmt::Debug for InProcessCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InProcessCa")
    }
}

/// Where calls to the in-process CA come from, for the CA's records.
const IN_PROCESS_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// One call to the CA: `path_and_query` starts with `/`.
pub(crate) struct CaRequest {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The CA's answer, whatever its status.
pub(crate) struct CaAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Why a call got no answer.
#[derive(Debug)]
pub(crate) enum NoAnswer {
    /// Not sent, or not answered in time (the text names no URL and no credential).
    Failed(String),
    /// The answer grew past the caller's limit.
    TooLarge,
}

/// Why an attempt at one replica did not give the final answer.
enum Unanswered {
    /// The replica answered 502–504: the next may serve it; if none does, this answer.
    Busy(CaAnswer),
    No(NoAnswer),
}

/// A transport error, classified ([`Attempt::kind_of`]) and told without its URL.
fn failed(e: reqwest::Error) -> Attempt<Unanswered> {
    let kind = Attempt::kind_of(&e);
    kind(Unanswered::No(NoAnswer::Failed(e.without_url().to_string())))
}

/// A client of the CA: its replicas over pinned HTTPS, or its router in this process.
pub(crate) struct CaClient(Route);

enum Route {
    Https { replicas: CaReplicas, client: reqwest::Client, in_flight: tokio::sync::Semaphore, timeout: Duration },
    InProcess { ca: InProcessCa, timeout: Duration },
}

impl CaClient {
    /// The in-process CA when given (the all-in-one; `urls` and `pin` are then not used),
    /// else HTTPS to `urls` trusting exactly the CA key `pin` names — and nothing but
    /// HTTPS: a credential rides on every call and must not go out in clear.
    pub(crate) fn new(
        urls: &str,
        pin: &str,
        in_process: Option<&InProcessCa>,
        timeout: Duration,
    ) -> Result<Self, BastionError> {
        if let Some(ca) = in_process {
            return Ok(CaClient(Route::InProcess { ca: ca.clone(), timeout }));
        }
        let tls = portcullis_proto::pin::pinned_client_config(pin).ok_or(BastionError::BadPin)?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            // A burst (a thousand sessions opening at once) may open many connections;
            // only a few stay for later calls.
            .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
            .redirect(reqwest::redirect::Policy::none())
            .use_preconfigured_tls(tls)
            .https_only(true)
            .build()
            .map_err(|e| BastionError::HttpClient(e.to_string()))?;
        let in_flight = tokio::sync::Semaphore::new(MAX_CALLS_IN_FLIGHT);
        Ok(CaClient(Route::Https { replicas: CaReplicas::new(urls)?, client, in_flight, timeout }))
    }

    /// The replicas' URLs, or that the CA is in process (for logs).
    pub(crate) fn describe(&self) -> String {
        match &self.0 {
            Route::Https { replicas, .. } => replicas.describe(),
            Route::InProcess { .. } => "in process".to_owned(),
        }
    }

    /// Sends `request` and reads the answer, up to `max` bytes. With replicas, each in turn
    /// until one answers (see [`CaReplicas`]); a 502–504 from the last is its answer.
    pub(crate) async fn call(&self, request: &CaRequest, max: usize) -> Result<CaAnswer, NoAnswer> {
        let (replicas, client, _turn) = match &self.0 {
            Route::InProcess { ca, timeout } => {
                return tokio::time::timeout(*timeout, ca.call(request, max))
                    .await
                    .unwrap_or_else(|_| Err(NoAnswer::Failed("the CA did not answer in time".into())));
            }
            Route::Https { replicas, client, in_flight, timeout } => {
                // Waiting for a turn is bounded like the call itself.
                let Ok(Ok(turn)) = tokio::time::timeout(*timeout, in_flight.acquire()).await else {
                    return Err(NoAnswer::Failed("the CA did not answer in time".into()));
                };
                (replicas, client, turn)
            }
        };
        let attempt = |base: String| async move {
            let sent = client
                .request(request.method.clone(), format!("{base}{}", request.path_and_query))
                .headers(request.headers.clone())
                .body(request.body.clone())
                .send()
                .await;
            let mut response = sent.map_err(failed)?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = match read_capped(&mut response, max).await {
                Ok(Some(body)) => body,
                Ok(None) => return Err(Attempt::Final(Unanswered::No(NoAnswer::TooLarge))),
                Err(e) => return Err(failed(e)),
            };
            let answer = CaAnswer { status, headers, body };
            if matches!(status.as_u16(), 502..=504) {
                return Err(Attempt::TryNext(Unanswered::Busy(answer)));
            }
            Ok(answer)
        };
        match replicas.call(attempt).await {
            Ok(answer) | Err(Unanswered::Busy(answer)) => Ok(answer),
            Err(Unanswered::No(no)) => Err(no),
        }
    }
}

/// Reads a whole answer, `None` once it grows past `max` bytes (the control plane and
/// the trust refresher bound what a CA — or an impostor with a stolen pin — can make
/// them hold).
async fn read_capped(resp: &mut reqwest::Response, max: usize) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}
