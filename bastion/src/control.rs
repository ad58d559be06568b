//! The data plane's client of the CA: session decisions, heartbeats, audit events,
//! service certificates (see `portcullis_proto::bastion` for the contract).
//!
//! Every call carries the service's `pcs_…` bearer credential, which lives only in this
//! struct (never in a log line or an error: errors carry the path and the CA's sanitized
//! message), over TLS pinned to the CA's key — or, in the all-in-one, to the CA's router
//! in the same process (see [`crate::ca_client`]).

use std::time::Duration;

use portcullis_proto::ApiError;
use portcullis_proto::bastion::*;
use portcullis_proto::console::{FORWARDED_BY_HEADER, FORWARDED_FOR_HEADER, FORWARDED_HOST_HEADER};
use portcullis_proto::recording::{RECORDING_FRAMES_MEDIA_TYPE, RecordingChunkMeta};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ca_client::{CaClient, CaRequest, InProcessCa, NoAnswer};
use crate::error::BastionError;

/// Largest JSON answer accepted from the CA.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

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
    /// The all-in-one's own CA: when set, calls go to it, not to `ca_url`.
    pub in_process: Option<InProcessCa>,
    pub api_token: SecretString,
    pub timeout: Duration,
}

impl std::fmt::Debug for ControlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlConfig").field("ca_url", &self.ca_url).finish_non_exhaustive()
    }
}

pub struct ControlPlane {
    ca: CaClient,
    token: SecretString,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").field("ca", &self.ca.describe()).finish_non_exhaustive()
    }
}

impl ControlPlane {
    pub fn new(config: ControlConfig) -> Result<Self, BastionError> {
        let ca = CaClient::new(&config.ca_url, &config.ca_pin, config.in_process.as_ref(), config.timeout)?;
        Ok(Self { ca, token: config.api_token })
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
            in_process: None,
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
    /// not know the batch route yet (404: a rolling upgrade) gets them one by one — all
    /// of them, whatever happens to one; the first failure is the answer.
    pub async fn close_sessions(&self, closes: Vec<SessionCloseRequest>) -> Result<(), ControlError> {
        let batch = SessionClosesRequest { closes };
        match self.post_no_answer("/v1/bastion/sessions/closes", &batch).await {
            Err(ControlError::Refused { status: 404, .. }) => {
                let mut first_failure = None;
                for close in &batch.closes {
                    if let Err(e) = self.close_session(close).await {
                        first_failure.get_or_insert(e);
                    }
                }
                first_failure.map_or(Ok(()), Err)
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
        let body = RequestBody { bytes: events, media_type: RECORDING_FRAMES_MEDIA_TYPE };
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
        let mut headers = request.headers.clone();
        let mut add = |name: &'static str, value: &str, secret: bool| -> Result<(), ControlError> {
            let mut value = HeaderValue::from_str(value).map_err(|e| unencodable(PATH, e))?;
            value.set_sensitive(secret);
            headers.insert(HeaderName::from_static(name), value);
            Ok(())
        };
        add(FORWARDED_FOR_HEADER, &request.client_ip.to_string(), false)?;
        add(FORWARDED_BY_HEADER, self.token.expose_secret(), true)?;
        if let Some(host) = &request.host {
            add(FORWARDED_HOST_HEADER, host, false)?;
        }
        let outgoing = CaRequest {
            method: request.method.clone(),
            path_and_query: request.path_and_query.clone(),
            headers,
            body: request.body.clone(),
        };
        let answer = self.ca.call(&outgoing, MAX_ANSWER).await.map_err(|e| unanswered(PATH, e))?;
        let status = answer.status;
        if matches!(status.as_u16(), 502..=504) {
            return Err(ControlError::Refused {
                path: PATH,
                status: status.as_u16(),
                code: String::new(),
                message: String::new(),
            });
        }
        Ok(ForwardedAnswer { status, headers: answer.headers, body: answer.body })
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
    /// errors name `path` only).
    async fn send(
        &self,
        path: &'static str,
        tail: &str,
        method: reqwest::Method,
        body: Option<RequestBody>,
    ) -> Result<Vec<u8>, ControlError> {
        let mut headers = HeaderMap::new();
        let mut bearer = HeaderValue::from_str(&format!("Bearer {}", self.token.expose_secret()))
            .map_err(|e| unencodable(path, e))?;
        bearer.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, bearer);
        let body = match body {
            Some(body) => {
                headers.insert(reqwest::header::CONTENT_TYPE, HeaderValue::from_static(body.media_type));
                body.bytes
            }
            None => bytes::Bytes::new(),
        };
        let request = CaRequest { method, path_and_query: format!("{path}{tail}"), headers, body };
        let answer = self.ca.call(&request, MAX_ANSWER).await.map_err(|e| unanswered(path, e))?;
        if answer.status.is_success() {
            return Ok(answer.body);
        }
        let (code, message) = match serde_json::from_slice::<ApiError>(&answer.body) {
            Ok(e) => (e.error, e.message),
            Err(_) => ("http_error".to_owned(), format!("HTTP {}", answer.status.as_u16())),
        };
        Err(ControlError::Refused { path, status: answer.status.as_u16(), code, message })
    }
}

/// A call to `path` that got no answer.
fn unanswered(path: &'static str, e: NoAnswer) -> ControlError {
    let detail = match e {
        NoAnswer::Failed(detail) => detail,
        NoAnswer::TooLarge => "answer too large".into(),
    };
    ControlError::Unreachable { path, detail }
}

/// A request's body, encoded once: each replica tried (or the in-process CA) gets the
/// same buffer (`Bytes`), not a copy of it (a recording chunk is a megabyte).
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
    test_control(None, timeout)
}

/// A control plane whose CA is `router`, called in process, for unit tests.
#[cfg(test)]
pub(crate) fn answered_by(router: axum::Router) -> ControlPlane {
    test_control(Some(InProcessCa::new(router)), Duration::from_secs(5))
}

#[cfg(test)]
fn test_control(in_process: Option<InProcessCa>, timeout: Duration) -> ControlPlane {
    #[allow(clippy::unwrap_used)]
    ControlPlane::new(ControlConfig {
        ca_url: "https://127.0.0.1:1".into(),
        ca_pin: "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU".into(),
        in_process,
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
            in_process: None,
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
