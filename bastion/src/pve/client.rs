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
use crate::server::Shared;

/// Reconnections after a broken or timed-out request, per run.
const MAX_RECONNECTS: u32 = 3;

/// The answer of one endpoint.
pub(super) enum Fetch {
    /// `data` of a 200 answer.
    Ok(serde_json::Value),
    /// 401: the token is not (or no longer) valid.
    Unauthorized,
    Failed(EndpointFailure),
}

impl Fetch {
    /// The data, or `None` with the failure added to `failures`.
    pub(super) fn ok(self, failures: &mut Vec<EndpointFailure>) -> Option<serde_json::Value> {
        match self {
            Fetch::Ok(v) => Some(v),
            Fetch::Unauthorized => None,
            Fetch::Failed(f) => {
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
}

impl<'a> Api<'a> {
    /// Connects, and proves the server passes the TLS policy, before anything is sent.
    pub(super) async fn connect(shared: &'a Shared, job: &'a PveJob) -> Result<Api<'a>, PveFailure> {
        let config = portcullis_proto::pin::api_client_config(&job.tls).map_err(|_| PveFailure::TlsRejected)?;
        let mut authorization =
            HeaderValue::try_from(format!("PVEAPIToken={}={}", job.token_identity, job.token_secret))
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
        };
        api.sender = Some(api.open().await?);
        Ok(api)
    }

    async fn open(&self) -> Result<SendRequest<Empty<Bytes>>, PveFailure> {
        let job = self.job;
        let timeout = Duration::from_secs(PVE_CONNECT_TIMEOUT_SECS);
        let originator = SocketAddr::from(([127, 0, 0, 1], 0));
        let opened = tokio::time::timeout(
            timeout,
            self.shared.agents.open(&job.agent, &job.target_host, job.target_port, originator),
        )
        .await
        .map_err(|_| PveFailure::Timeout)?;
        let channel = match opened {
            Ok((channel, _link)) => channel,
            Err(BrokerError::AgentUnavailable) => return Err(PveFailure::AgentUnavailable),
            Err(_) => return Err(PveFailure::TargetUnreachable),
        };
        let name = ServerName::try_from(job.target_host.clone()).map_err(|_| PveFailure::TargetUnreachable)?;
        let handshake = tokio::time::timeout(timeout, self.tls.connect(name, channel.into_stream()))
            .await
            .map_err(|_| PveFailure::Timeout)?;
        let stream = match handshake {
            Ok(stream) => stream,
            // rustls reports a certificate that fails the policy as invalid data.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Err(PveFailure::TlsRejected),
            Err(_) => return Err(PveFailure::TargetUnreachable),
        };
        let (sender, connection) =
            tokio::time::timeout(timeout, hyper::client::conn::http1::handshake(TokioIo::new(stream)))
                .await
                .map_err(|_| PveFailure::Timeout)?
                .map_err(|_| PveFailure::TargetUnreachable)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// `GET /api2/json{path}`.
    pub(super) async fn get(&mut self, path: &str) -> Fetch {
        let failed = |code: &str, status: Option<u16>, hint: Option<String>| {
            Fetch::Failed(EndpointFailure { path: path.to_owned(), code: code.to_owned(), status, hint })
        };
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
            let body = Limited::new(response.into_body(), MAX_ENDPOINT_BYTES).collect().await;
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
            Ok(Err(code)) => return failed(code, None, None),
            Ok(Ok(answer)) => answer,
        };
        self.sender = Some(sender);
        let message =
            || serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| super::parse::message(&v));
        match status {
            200 => match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(mut v) => Fetch::Ok(v.get_mut("data").map(serde_json::Value::take).unwrap_or_default()),
                Err(_) => failed("invalid", Some(status), None),
            },
            401 => Fetch::Unauthorized,
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

fn host_header(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}
