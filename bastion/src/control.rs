//! The data plane's client of the CA: session decisions, heartbeats, audit events,
//! service certificates (see `portcullis_proto::bastion` for the contract).
//!
//! Every call goes over TLS pinned to the CA's key and carries the service's `pcs_…`
//! bearer credential, which lives only in this struct (never in a log line or an error:
//! errors carry the path and the CA's sanitized message).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use portcullis_proto::ApiError;
use portcullis_proto::bastion::*;
use portcullis_proto::console::{FORWARDED_BY_HEADER, FORWARDED_FOR_HEADER, FORWARDED_HOST_HEADER};
use portcullis_proto::recording::{RECORDING_EVENTS_MEDIA_TYPE, RecordingChunkMeta};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::BastionError;

/// Idle connections kept to each CA replica.
const MAX_IDLE_CONNECTIONS: usize = 4;

/// Largest JSON answer accepted from the CA.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// The CA replicas a service talks to: `https://ca1:8443,https://ca2:8443` (any may
/// answer; they share one database). Calls go to the one that answered last; a replica
/// that cannot be connected to, or answers 502/503/504, hands the call to the next at
/// once — a request that never reached a CA is safe to repeat. A timeout (the request
/// may have been served) is not repeated, but the next call starts at the next replica.
pub(crate) struct CaReplicas {
    bases: Vec<String>,
    current: AtomicUsize,
}

impl CaReplicas {
    /// Refuses an empty list.
    pub(crate) fn new(urls: &str) -> Result<Self, BastionError> {
        let bases: Vec<String> =
            urls.split(',').map(|u| u.trim().trim_end_matches('/').to_owned()).filter(|u| !u.is_empty()).collect();
        if bases.is_empty() {
            return Err(BastionError::HttpClient("no CA URL given".into()));
        }
        Ok(Self { bases, current: AtomicUsize::new(0) })
    }

    /// Sends `request(base)` to the replicas in turn, starting with the one that answered
    /// last (see the type's doc).
    pub(crate) async fn call<T, E, F, Fut>(&self, request: F) -> Result<T, E>
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

    pub(crate) fn describe(&self) -> String {
        self.bases.join(",")
    }
}

/// Reads a whole answer from the CA, `None` once it grows past `max` bytes (the
/// control plane and the trust refresher bound what a CA — or an impostor with a
/// stolen pin — can make them hold).
pub(crate) async fn read_capped(resp: &mut reqwest::Response, max: usize) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// How one attempt at one replica ended, when it did not succeed.
pub(crate) enum Attempt<E> {
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
    pub(crate) fn kind_of(e: &reqwest::Error) -> fn(E) -> Self {
        if e.is_connect() {
            Attempt::TryNext
        } else if e.is_timeout() {
            Attempt::FinalMoveOn
        } else {
            Attempt::Final
        }
    }

    /// Classifies an HTTP status that is not a success.
    pub(crate) fn of_status(status: u16, error: E) -> Self {
        if matches!(status, 502..=504) { Attempt::TryNext(error) } else { Attempt::Final(error) }
    }
}

impl Attempt<ControlError> {
    /// The transport error of a call to `path`, classified by [`Attempt::kind_of`].
    pub(crate) fn unreachable(path: &'static str) -> impl Fn(reqwest::Error) -> Self + Copy {
        move |e| {
            let kind = Attempt::kind_of(&e);
            kind(ControlError::Unreachable { path, detail: e.without_url().to_string() })
        }
    }
}

/// The base of every URL on the all-in-one's local socket (the host is not looked up).
const LOCAL_SOCKET_BASE: &str = "http://portcullis-ca";

/// The CA's replicas and a client for them: HTTPS that trusts exactly the CA key named
/// by `pin` (and nothing but HTTPS), or — `socket` given, in the all-in-one — plain HTTP
/// on the CA's own Unix socket, where `urls` and `pin` are not used.
pub(crate) fn ca_client(
    urls: &str,
    pin: &str,
    socket: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<(CaReplicas, reqwest::Client), BastionError> {
    let builder = reqwest::Client::builder()
        .timeout(timeout)
        // A burst (a thousand sessions opening at once) may open many connections; only a
        // few stay for later calls.
        .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
        .redirect(reqwest::redirect::Policy::none());
    let (bases, builder) = match socket {
        Some(socket) => (LOCAL_SOCKET_BASE, builder.unix_socket(socket)),
        None => {
            let tls = portcullis_proto::pin::pinned_client_config(pin).ok_or(BastionError::BadPin)?;
            // A credential is on every call: a `http://` URL must not carry it in clear.
            (urls, builder.use_preconfigured_tls(tls).https_only(true))
        }
    };
    let client = builder.build().map_err(|e| BastionError::HttpClient(e.to_string()))?;
    Ok((CaReplicas::new(bases)?, client))
}

/// Why a call to the CA failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// The CA answered with a refusal: `code` is the API error code, `message` is safe to
    /// show (for `session_denied`, `"<reason>: <text>"`).
    #[error("{path}: {code}: {message}")]
    Refused { path: &'static str, status: u16, code: String, message: String },
    /// The CA could not be reached or answered garbage.
    #[error("{path}: {detail}")]
    Unreachable { path: &'static str, detail: String },
}

impl ControlError {
    /// The deny reason of a refused session open (`not_authorized`, `cap_reached`, …).
    pub fn deny_reason(&self) -> Option<&str> {
        match self {
            ControlError::Refused { code, message, .. } if code == "session_denied" => {
                Some(message.split_once(':').map_or(message.as_str(), |(reason, _)| reason.trim()))
            }
            _ => None,
        }
    }
}

/// A browser's request as the web front door passes it on (headers already filtered).
pub(crate) struct ForwardedRequest {
    pub method: reqwest::Method,
    pub path_and_query: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
    pub client_ip: std::net::IpAddr,
    /// The `host[:port]` the browser addressed (its origin, for single sign-on).
    pub host: Option<String>,
}

/// The CA's answer to a [`ForwardedRequest`].
pub(crate) struct ForwardedAnswer {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

/// Where the CA is and how this service proves who it is.
#[derive(Clone)]
pub struct ControlConfig {
    pub ca_url: String,
    pub ca_pin: String,
    /// The all-in-one's own CA socket: when set, calls go there (see [`ca_client`]).
    pub ca_socket: Option<std::path::PathBuf>,
    pub api_token: SecretString,
    pub timeout: Duration,
}

impl std::fmt::Debug for ControlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlConfig").field("ca_url", &self.ca_url).finish_non_exhaustive()
    }
}

pub struct ControlPlane {
    replicas: CaReplicas,
    token: SecretString,
    client: reqwest::Client,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").field("ca_url", &self.replicas.describe()).finish_non_exhaustive()
    }
}

impl ControlPlane {
    pub fn new(config: ControlConfig) -> Result<Self, BastionError> {
        let (replicas, client) =
            ca_client(&config.ca_url, &config.ca_pin, config.ca_socket.as_deref(), config.timeout)?;
        Ok(Self { replicas, token: config.api_token, client })
    }

    /// One-time enrollment of a bastion or agent with an enrollment token (`pce_…`):
    /// the answer carries the service's `pcs_…` credential and internal certificate.
    pub async fn enroll(
        ca_url: &str,
        ca_pin: &str,
        enroll_token: &SecretString,
        request: &ServiceEnrollRequest,
    ) -> Result<ServiceEnrollResponse, ControlError> {
        let once = ControlPlane::new(ControlConfig {
            ca_url: ca_url.to_owned(),
            ca_pin: ca_pin.to_owned(),
            ca_socket: None,
            api_token: enroll_token.clone(),
            timeout: Duration::from_secs(30),
        })
        .map_err(|e| ControlError::Unreachable { path: "/v1/services/enroll", detail: e.to_string() })?;
        once.post("/v1/services/enroll", request).await
    }

    pub async fn open_session(&self, request: &SessionOpenRequest) -> Result<SessionGrant, ControlError> {
        self.post("/v1/bastion/sessions/open", request).await
    }

    pub async fn open_console(
        &self,
        request: &portcullis_proto::console::ConsoleOpenRequest,
    ) -> Result<SessionGrant, ControlError> {
        self.post("/v1/bastion/console/open", request).await
    }

    pub async fn heartbeat(&self, request: &HeartbeatRequest) -> Result<HeartbeatResponse, ControlError> {
        self.post("/v1/bastion/heartbeat", request).await
    }

    pub async fn close_session(&self, request: &SessionCloseRequest) -> Result<(), ControlError> {
        self.post_no_answer("/v1/bastion/sessions/close", request).await
    }

    /// Several closes in one call (at most [`MAX_CLOSES_PER_REQUEST`]). A CA that does
    /// not know the batch route yet (404: a rolling upgrade) gets them one by one.
    pub async fn close_sessions(&self, closes: Vec<SessionCloseRequest>) -> Result<(), ControlError> {
        let batch = SessionClosesRequest { closes };
        match self.post_no_answer("/v1/bastion/sessions/closes", &batch).await {
            Err(ControlError::Refused { status: 404, .. }) => {
                for close in &batch.closes {
                    self.close_session(close).await?;
                }
                Ok(())
            }
            done => done,
        }
    }

    pub async fn events(&self, events: Vec<BastionAuditEvent>) -> Result<(), ControlError> {
        self.post_no_answer("/v1/bastion/events", &BastionEventsRequest { events }).await
    }

    /// Hands over the next chunk of a session's recording: `events` as the body, what
    /// they are in the query.
    pub async fn recording_chunk(
        &self,
        session_id: &str,
        chunk: &RecordingChunkMeta,
        events: bytes::Bytes,
    ) -> Result<(), ControlError> {
        let path = "/v1/bastion/recordings/";
        let query = serde_urlencoded::to_string(chunk).map_err(|e| unencodable(path, e))?;
        let body = RequestBody { bytes: events, media_type: RECORDING_EVENTS_MEDIA_TYPE };
        self.send(path, &format!("{session_id}?{query}"), reqwest::Method::POST, Some(body)).await.map(drop)
    }

    pub async fn renew_certificate(&self) -> Result<ServiceCertificateResponse, ControlError> {
        self.post("/v1/services/certificate", &serde_json::json!({})).await
    }

    pub async fn bastions(&self) -> Result<Vec<BastionDirectoryEntry>, ControlError> {
        self.get("/v1/services/bastions").await
    }

    pub async fn agent_targets(&self) -> Result<Vec<AgentTarget>, ControlError> {
        self.get("/v1/services/agent/targets").await
    }

    pub async fn claim_discovery(
        &self,
        request: &portcullis_proto::discovery::DiscoveryClaimRequest,
    ) -> Result<portcullis_proto::discovery::DiscoveryClaimResponse, ControlError> {
        self.post("/v1/bastion/discovery/claim", request).await
    }

    pub async fn report_discovery(
        &self,
        request: &portcullis_proto::discovery::DiscoveryReportRequest,
    ) -> Result<portcullis_proto::discovery::DiscoveryReportResponse, ControlError> {
        self.post("/v1/bastion/discovery/report", request).await
    }

    pub async fn claim_pve(
        &self,
        request: &portcullis_proto::pve::PveClaimRequest,
    ) -> Result<portcullis_proto::pve::PveClaimResponse, ControlError> {
        self.post("/v1/bastion/pve/claim", request).await
    }

    pub async fn report_pve(
        &self,
        request: &portcullis_proto::pve::PveReportRequest,
    ) -> Result<portcullis_proto::pve::PveReportResponse, ControlError> {
        self.post("/v1/bastion/pve/report", request).await
    }

    /// Passes a browser's request on to the CA (the web front door, [`crate::web`]): the
    /// browser's own credentials (cookie, CSRF token) travel as they came, and the
    /// browser's address with this bastion's credential beside it, which is what lets
    /// the CA believe that address. The CA's answer comes back whatever its status.
    pub(crate) async fn forward(&self, request: &ForwardedRequest) -> Result<ForwardedAnswer, ControlError> {
        const PATH: &str = "(web front door)";
        self.replicas
            .call(|base| async move {
                let unreachable = Attempt::unreachable(PATH);
                let mut outgoing = self
                    .client
                    .request(request.method.clone(), format!("{base}{}", request.path_and_query))
                    .headers(request.headers.clone())
                    .header(FORWARDED_FOR_HEADER, request.client_ip.to_string())
                    .header(FORWARDED_BY_HEADER, self.token.expose_secret());
                if let Some(host) = &request.host {
                    outgoing = outgoing.header(FORWARDED_HOST_HEADER, host);
                }
                let mut outgoing = outgoing.body(request.body.clone()).send().await.map_err(unreachable)?;
                let status = outgoing.status();
                let headers = outgoing.headers().clone();
                let Some(body) = read_capped(&mut outgoing, MAX_ANSWER).await.map_err(unreachable)? else {
                    return Err(Attempt::Final(ControlError::Unreachable {
                        path: PATH,
                        detail: "answer too large".into(),
                    }));
                };
                if matches!(status.as_u16(), 502..=504) {
                    let busy = ControlError::Refused {
                        path: PATH,
                        status: status.as_u16(),
                        code: String::new(),
                        message: String::new(),
                    };
                    return Err(Attempt::TryNext(busy));
                }
                Ok(ForwardedAnswer { status, headers, body })
            })
            .await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &'static str, body: &B) -> Result<T, ControlError> {
        let bytes = self.send(path, "", reqwest::Method::POST, Some(RequestBody::json(path, body)?)).await?;
        read_answer(path, &bytes)
    }

    async fn post_no_answer<B: Serialize>(&self, path: &'static str, body: &B) -> Result<(), ControlError> {
        self.send(path, "", reqwest::Method::POST, Some(RequestBody::json(path, body)?)).await.map(drop)
    }

    async fn get<T: DeserializeOwned>(&self, path: &'static str) -> Result<T, ControlError> {
        let bytes = self.send(path, "", reqwest::Method::GET, None).await?;
        read_answer(path, &bytes)
    }

    /// One call to `path` + `tail` (a name in the path, e.g. a session id, and a query;
    /// errors name `path` only), to the replicas in turn (see [`CaReplicas`]).
    async fn send(
        &self,
        path: &'static str,
        tail: &str,
        method: reqwest::Method,
        body: Option<RequestBody>,
    ) -> Result<Vec<u8>, ControlError> {
        self.replicas
            .call(|base| {
                let mut request = self.client.request(method.clone(), format!("{base}{path}{tail}"));
                if let Some(body) = &body {
                    request = request.header(reqwest::header::CONTENT_TYPE, body.media_type).body(body.bytes.clone());
                }
                self.send_once(path, request)
            })
            .await
    }

    async fn send_once(
        &self,
        path: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, Attempt<ControlError>> {
        let unreachable = Attempt::unreachable(path);
        let mut resp = request.bearer_auth(self.token.expose_secret()).send().await.map_err(unreachable)?;
        let status = resp.status();
        let Some(body) = read_capped(&mut resp, MAX_ANSWER).await.map_err(unreachable)? else {
            return Err(Attempt::Final(ControlError::Unreachable { path, detail: "answer too large".into() }));
        };
        if status.is_success() {
            return Ok(body);
        }
        let (code, message) = match serde_json::from_slice::<ApiError>(&body) {
            Ok(e) => (e.error, e.message),
            Err(_) => ("http_error".to_owned(), format!("HTTP {}", status.as_u16())),
        };
        let error = ControlError::Refused { path, status: status.as_u16(), code, message };
        Err(Attempt::of_status(status.as_u16(), error))
    }
}

/// A request's body, encoded once: each replica tried gets the same buffer (`Bytes`), not
/// a copy of it (a recording chunk is a megabyte).
struct RequestBody {
    bytes: bytes::Bytes,
    media_type: &'static str,
}

impl RequestBody {
    fn json<B: Serialize>(path: &'static str, body: &B) -> Result<RequestBody, ControlError> {
        let bytes = serde_json::to_vec(body).map_err(|e| unencodable(path, e))?;
        Ok(RequestBody { bytes: bytes.into(), media_type: "application/json" })
    }
}

/// A request to `path` that could not be encoded (it never left).
fn unencodable(path: &'static str, e: impl std::fmt::Display) -> ControlError {
    ControlError::Unreachable { path, detail: format!("cannot encode the request: {e}") }
}

/// The CA's answer, decoded. A malformed one is reported by position only: serde's message
/// can quote a value, and some answers carry secrets (a collection grant's token).
fn read_answer<T: DeserializeOwned>(path: &'static str, bytes: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(bytes).map_err(|e| ControlError::Unreachable {
        path,
        detail: format!("unreadable answer ({:?} at line {} column {})", e.classify(), e.line(), e.column()),
    })
}

/// A control plane whose CA nobody answers for (port 1), for unit tests.
#[cfg(test)]
pub(crate) fn unreachable(timeout: Duration) -> ControlPlane {
    #[allow(clippy::unwrap_used)]
    ControlPlane::new(ControlConfig {
        ca_url: "https://127.0.0.1:1".into(),
        ca_pin: "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU".into(),
        ca_socket: None,
        api_token: SecretString::from("pcs_test"),
        timeout,
    })
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_reason_is_the_code_before_the_colon() {
        let e = ControlError::Refused {
            path: "/x",
            status: 403,
            code: "session_denied".into(),
            message: "cap_reached: too many sessions for alice".into(),
        };
        assert_eq!(e.deny_reason(), Some("cap_reached"));
        let other =
            ControlError::Refused { path: "/x", status: 401, code: "unauthenticated".into(), message: "".into() };
        assert_eq!(other.deny_reason(), None);
    }

    /// A CA URL that is not `https://` is never called: the credential would go in clear.
    #[tokio::test]
    async fn a_plain_http_ca_url_is_never_called() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let control = ControlPlane::new(ControlConfig {
            ca_url: format!("http://{}", listener.local_addr().unwrap()),
            ca_pin: "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU".into(),
            ca_socket: None,
            api_token: SecretString::from("pcs_canary"),
            timeout: Duration::from_secs(5),
        })
        .unwrap();
        let e = control.heartbeat(&HeartbeatRequest { sessions: Vec::new(), agents: Vec::new() }).await.unwrap_err();
        assert!(matches!(e, ControlError::Unreachable { .. }), "{e}");
        let connected = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(connected.is_err(), "the bastion connected to a plain-HTTP CA URL");
    }

    #[test]
    fn an_unreadable_answer_quotes_nothing_from_it() {
        let answer = br#"{"enabled": true, "next_claim_secs": "pve-token-canary-1234"}"#;
        let e = read_answer::<portcullis_proto::pve::PveClaimResponse>("/v1/bastion/pve/claim", answer).unwrap_err();
        assert!(!e.to_string().contains("canary"), "{e}");
        assert!(e.to_string().contains("unreadable answer"), "{e}");
    }
}
