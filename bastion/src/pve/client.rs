//! A minimal read-only client for the Proxmox VE API, spoken through an agent channel:
//! TLS under the secret's policy, HTTP/1.1 keep-alive, GET only, every answer capped and
//! every request timed. A request that times out or breaks the connection costs only
//! that endpoint: the next one reconnects (a few times per run at most).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{ACCEPT, AUTHORIZATION, HOST, HeaderValue};
use hyper_util::rt::TokioIo;
use portcullis_proto::pve::*;
use rustls_pki_types::ServerName;

use crate::agent_hub::BrokerError;
use crate::shared::Shared;

/// Reconnections after a broken or timed-out request, per run.
const MAX_RECONNECTS: u32 = 3;

/// The answer of one endpoint.
pub(super) enum Fetch {
    /// `data` of a 200 answer.
    Ok(serde_json::Value),
    /// 401: the token is not (or no longer) valid (`unauthorized`, as a failure).
    Unauthorized(EndpointFailure),
    Failed(EndpointFailure),
}

impl Fetch {
    /// The data, or `None` with the failure added to `failures`.
    pub(super) fn ok(self, failures: &mut Vec<EndpointFailure>) -> Option<serde_json::Value> {
        match self {
            Fetch::Ok(v) => Some(v),
            // Unauthorized: the token lost its validity mid-run; recorded like any
            // endpoint that did not answer, never taken for an empty answer.
            Fetch::Unauthorized(f) | Fetch::Failed(f) => {
                failures.push(f);
                None
            }
        }
    }
}

/// The feature behind the endpoint is not installed (e.g. no Ceph on this cluster).
pub(super) fn not_installed(f: &EndpointFailure) -> bool {
    f.code == "not_installed"
}

pub(super) struct Api<'a> {
    shared: &'a Shared,
    job: &'a PveJob,
    tls: tokio_rustls::TlsConnector,
    authorization: HeaderValue,
    sender: Option<SendRequest<Empty<Bytes>>>,
    reconnects: u32,
    /// What is left of the run's [`MAX_RUN_BYTES`].
    budget: usize,
    over_budget: bool,
}

impl<'a> Api<'a> {
    /// Connects, and proves the server passes the TLS policy, before anything is sent.
    pub(super) async fn connect(shared: &'a Shared, job: &'a PveJob) -> Result<Api<'a>, PveFailure> {
        let config = portcullis_proto::pin::api_client_config(&job.tls).map_err(|_| PveFailure::TlsRejected)?;
        let mut authorization =
            HeaderValue::try_from(format!("PVEAPIToken={}={}", job.token_identity, job.token_secret.expose()))
                .map_err(|_| PveFailure::AuthFailed)?;
        // hyper keeps a sensitive header out of its own debug output.
        authorization.set_sensitive(true);
        let mut api = Api {
            shared,
            job,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            authorization,
            sender: None,
            reconnects: 0,
            budget: MAX_RUN_BYTES,
            over_budget: false,
        };
        api.sender = Some(api.open().await?);
        Ok(api)
    }

    async fn open(&self) -> Result<SendRequest<Empty<Bytes>>, PveFailure> {
        let job = self.job;
        let (sender, _certificate) =
            open(self.shared, &self.tls, &job.agent, &job.target_host, job.target_port).await?;
        Ok(sender)
    }

    /// Whether the run's answers came to more than [`MAX_RUN_BYTES`] (then every
    /// request after the one that passed it fails without being sent).
    pub(super) fn over_budget(&self) -> bool {
        self.over_budget
    }

    /// `GET /api2/json{path}`.
    pub(super) async fn get(&mut self, path: &str) -> Fetch {
        let failed = |code: &str, status: Option<u16>, hint: Option<String>| {
            Fetch::Failed(EndpointFailure { path: path.to_owned(), code: code.to_owned(), status, hint })
        };
        if self.over_budget {
            return failed("too_large", None, None);
        }
        let limit = MAX_ENDPOINT_BYTES.min(self.budget);
        let sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => {
                if self.reconnects >= MAX_RECONNECTS {
                    return failed("unavailable", None, Some("the API connection kept failing".into()));
                }
                self.reconnects += 1;
                match self.open().await {
                    Ok(s) => s,
                    Err(PveFailure::Timeout) => return failed("timeout", None, None),
                    Err(_) => return failed("unavailable", None, None),
                }
            }
        };
        let mut sender = sender;
        let request = hyper::Request::get(format!("/api2/json{path}"))
            .header(HOST, host_header(&self.job.target_host, self.job.target_port))
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, self.authorization.clone())
            .body(Empty::<Bytes>::new());
        let Ok(request) = request else { return failed("invalid", None, None) };
        let timeout = Duration::from_secs(PVE_REQUEST_TIMEOUT_SECS);
        let exchange = async {
            let response = sender.send_request(request).await.map_err(|_| "unavailable")?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), limit).collect().await;
            match body {
                Ok(body) => Ok((status, body.to_bytes())),
                Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err("too_large"),
                Err(_) => Err("unavailable"),
            }
        };
        let (status, body) = match tokio::time::timeout(timeout, exchange).await {
            // The connection is dropped with the exchange: a late answer cannot be read
            // as the next request's.
            Err(_) => return failed("timeout", None, None),
            Ok(Err(code)) => {
                self.over_budget |= code == "too_large" && limit < MAX_ENDPOINT_BYTES;
                return failed(code, None, None);
            }
            Ok(Ok(answer)) => answer,
        };
        self.budget = self.budget.saturating_sub(body.len());
        self.sender = Some(sender);
        let message =
            || serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| super::parse::message(&v));
        match status {
            200 => match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(mut v) => Fetch::Ok(v.get_mut("data").map(serde_json::Value::take).unwrap_or_default()),
                Err(_) => failed("invalid", Some(status), None),
            },
            401 => Fetch::Unauthorized(EndpointFailure {
                path: path.to_owned(),
                code: "unauthorized".into(),
                status: Some(401),
                hint: None,
            }),
            403 => failed("forbidden", Some(status), Some(super::parse::privilege_hint(path, message().as_deref()))),
            501 => failed("not_installed", Some(status), None),
            _ => {
                let text = message().unwrap_or_default();
                if text.contains("not installed") || text.contains("not initialized") {
                    failed("not_installed", Some(status), None)
                } else {
                    failed("unavailable", Some(status), (!text.is_empty()).then_some(text))
                }
            }
        }
    }
}

/// An HTTP/1.1 connection over TLS over an agent channel, and the SHA-256 of the server's
/// certificate. Nothing is sent before the TLS policy has accepted the certificate.
async fn open(
    shared: &Shared,
    tls: &tokio_rustls::TlsConnector,
    agent: &str,
    host: &str,
    port: u16,
) -> Result<(SendRequest<Empty<Bytes>>, Option<String>), PveFailure> {
    let timeout = Duration::from_secs(PVE_CONNECT_TIMEOUT_SECS);
    let originator = SocketAddr::from(([127, 0, 0, 1], 0));
    let opened = tokio::time::timeout(timeout, shared.agents.open(agent, host, port, originator))
        .await
        .map_err(|_| PveFailure::Timeout)?;
    let channel = match opened {
        Ok((channel, _link)) => channel,
        Err(BrokerError::AgentUnavailable) => return Err(PveFailure::AgentUnavailable),
        Err(_) => return Err(PveFailure::TargetUnreachable),
    };
    let name = ServerName::try_from(host.to_owned()).map_err(|_| PveFailure::TargetUnreachable)?;
    let handshake = tokio::time::timeout(timeout, tls.connect(name, channel.into_stream()))
        .await
        .map_err(|_| PveFailure::Timeout)?;
    let stream = match handshake {
        Ok(stream) => stream,
        // rustls reports a certificate that fails the policy as invalid data.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Err(PveFailure::TlsRejected),
        Err(_) => return Err(PveFailure::TargetUnreachable),
    };
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|der| portcullis_proto::pin::hex_sha256(der));
    let (sender, connection) =
        tokio::time::timeout(timeout, hyper::client::conn::http1::handshake(TokioIo::new(stream)))
            .await
            .map_err(|_| PveFailure::Timeout)?
            .map_err(|_| PveFailure::TargetUnreachable)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((sender, certificate))
}

/// A credential-free fingerprint: does `host:port` answer an unauthenticated
/// `GET /api2/json/version` the way a PVE API does (401, asking for a ticket)? Any
/// certificate is accepted — nothing secret is sent — and recorded.
pub(super) async fn probe(shared: &Shared, probe: &PveProbe) -> PveOutcome {
    let Ok(config) = portcullis_proto::pin::api_client_config(&TlsPolicy::DangerSkipVerify) else {
        return PveOutcome::Failed { reason: PveFailure::TlsRejected };
    };
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    let (mut sender, certificate) = match open(shared, &tls, &probe.agent, &probe.target_host, probe.target_port).await
    {
        Ok(opened) => opened,
        Err(reason @ (PveFailure::AgentUnavailable | PveFailure::Timeout)) => return PveOutcome::Failed { reason },
        // Nothing that speaks TLS there: not a PVE API.
        Err(_) => return PveOutcome::Probed { candidate: false, cert_sha256: None },
    };
    let request = hyper::Request::get("/api2/json/version")
        .header(HOST, host_header(&probe.target_host, probe.target_port))
        .header(ACCEPT, "application/json")
        .body(Empty::<Bytes>::new());
    let Ok(request) = request else { return PveOutcome::Probed { candidate: false, cert_sha256: certificate } };
    let timeout = Duration::from_secs(PVE_REQUEST_TIMEOUT_SECS);
    let candidate = match tokio::time::timeout(timeout, sender.send_request(request)).await {
        Ok(Ok(response)) => looks_like_pve(&response),
        Ok(Err(_)) => false,
        Err(_) => return PveOutcome::Failed { reason: PveFailure::Timeout },
    };
    PveOutcome::Probed { candidate, cert_sha256: certificate }
}

/// PVE answers an unauthenticated API call with 401 and a reason asking for a ticket
/// ("No ticket"), from `pve-api-daemon`.
fn looks_like_pve<B>(response: &hyper::Response<B>) -> bool {
    let server = response.headers().get(hyper::header::SERVER).and_then(|v| v.to_str().ok()).unwrap_or("");
    let reason = response
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).to_ascii_lowercase())
        .unwrap_or_default();
    response.status() == hyper::StatusCode::UNAUTHORIZED
        && (server.starts_with("pve-api-daemon") || reason.contains("ticket"))
}

fn host_header(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, server: Option<&str>, reason: Option<&'static str>) -> hyper::Response<()> {
        let mut r = hyper::Response::builder().status(status);
        if let Some(server) = server {
            r = r.header(hyper::header::SERVER, server);
        }
        let mut r = r.body(()).unwrap();
        if let Some(reason) = reason {
            r.extensions_mut().insert(hyper::ext::ReasonPhrase::from_static(reason.as_bytes()));
        }
        r
    }

    #[test]
    fn only_a_401_asking_for_a_ticket_looks_like_pve() {
        assert!(looks_like_pve(&response(401, Some("pve-api-daemon/3.0"), Some("No ticket"))));
        assert!(looks_like_pve(&response(401, None, Some("permission denied - invalid PVE ticket"))));
        assert!(!looks_like_pve(&response(401, Some("nginx"), None)), "any 401 is not PVE");
        assert!(!looks_like_pve(&response(200, Some("pve-api-daemon/3.0"), None)));
        assert!(!looks_like_pve(&response(404, None, Some("Not Found"))));
    }
}
