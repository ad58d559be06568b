//! HTTPS to the CA, TLS pinned to its public key (the same pin as the CLI and the
//! `curl --pinnedpubkey` one-liner). Every failure is [`Error::Ca`]: nothing on the node
//! has changed when one is returned.

use crate::error::{Error, Result};
use crate::secret::{ExposeSecret, Token};
use portcullis_proto::ApiError;
use portcullis_proto::enroll::{EnrollAbortRequest, EnrollRequest, EnrollResponse, NodeBundle, NodeProof};
use portcullis_proto::pin::pinned_client_config;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, pin: &str) -> Result<Api> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("https://") {
            return Err(Error::Usage("--ca must start with https://".into()));
        }
        let tls = pinned_client_config(pin).ok_or_else(|| {
            Error::Usage("--ca-fingerprint must look like SHA256:<base64> (as the CA prints it)".into())
        })?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Failed(format!("cannot build the HTTPS client: {e}")))?;
        Ok(Api { base, http })
    }

    async fn post<B: Serialize, R: DeserializeOwned>(&self, path: &str, token: Option<&Token>, body: &B) -> Result<R> {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t.expose_secret());
        }
        let resp = req.send().await.map_err(|e| {
            // The chain says whether TLS (a pin mismatch) or the network failed.
            let mut msg = format!("cannot reach {}", self.base);
            let mut source: Option<&dyn std::error::Error> = Some(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            Error::Ca(msg)
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(match resp.json::<ApiError>().await {
                Ok(err) => Error::Ca(format!("{} ({}, HTTP {})", err.message, err.error, status.as_u16())),
                Err(_) => Error::Ca(format!("answered HTTP {status}")),
            });
        }
        resp.json().await.map_err(|e| Error::Ca(format!("unexpected answer to {path}: {e}")))
    }

    pub async fn enroll(&self, token: &Token, req: &EnrollRequest) -> Result<EnrollResponse> {
        self.post("/v1/enroll", Some(token), req).await
    }

    pub async fn refresh(&self, proof: &NodeProof) -> Result<NodeBundle> {
        self.post("/v1/nodes/refresh", None, proof).await
    }

    /// The enrollment was rolled back on the node: the CA undoes its registration.
    pub async fn abort_enrollment(&self, request: &EnrollAbortRequest) -> Result<()> {
        let _: serde_json::Value = self.post("/v1/enroll/abort", None, request).await.or_else(|e| match e {
            Error::Ca(m) if m.starts_with("unexpected answer") => Ok(serde_json::Value::Null),
            e => Err(e),
        })?;
        Ok(())
    }

    pub async fn deregister(&self, proof: &NodeProof) -> Result<()> {
        let _: serde_json::Value = self.post("/v1/nodes/deregister", None, proof).await.or_else(|e| match e {
            // An empty 2xx body is fine.
            Error::Ca(m) if m.starts_with("unexpected answer") => Ok(serde_json::Value::Null),
            e => Err(e),
        })?;
        Ok(())
    }
}
