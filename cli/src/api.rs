//! HTTPS client for the CA API: TLS pinned to the CA's public key when a fingerprint is
//! known, otherwise verified against the system's trusted roots.

use crate::shared::printable;
use anyhow::{Context, anyhow, bail};
use portcullis_proto::ApiError;
use portcullis_proto::pin::pinned_client_config;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// The CA refused a request and said why: `code` is the stable error code
/// (`password_change_required`, `rate_limited`, …) a caller may act on.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({code})")]
pub struct Refused {
    pub code: String,
    pub message: String,
}

impl Refused {
    /// Whether `err` is the CA refusing with `code`.
    pub fn is(err: &anyhow::Error, code: &str) -> bool {
        err.downcast_ref::<Refused>().is_some_and(|r| r.code == code)
    }
}

/// The most of an answer the CLI reads (the largest are admin listings); a CA that
/// sends more is refused rather than held in memory. Recordings stream on their own.
const MAX_BODY: usize = 64 << 20;
/// The most of a refusal's body read (it is a code and a sentence).
const MAX_ERROR_BODY: usize = 64 << 10;

/// Reads `resp`'s body, refusing one longer than `limit`.
async fn read_bounded(mut resp: reqwest::Response, limit: usize) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > limit {
            bail!("the CA's answer is larger than {} MiB; refused", limit >> 20);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn json_of<R: DeserializeOwned>(resp: reqwest::Response) -> anyhow::Result<R> {
    Ok(serde_json::from_slice(&read_bounded(resp, MAX_BODY).await?)?)
}

pub struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

fn system_roots_config() -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Api {
    pub fn new(base: &str, pin: Option<&str>) -> anyhow::Result<Api> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("https://") {
            bail!("the CA URL must start with https://");
        }
        let tls = match pin {
            Some(pin) => pinned_client_config(pin)
                .ok_or_else(|| anyhow!("--ca-fingerprint must look like SHA256:<base64> (as the server prints it)"))?,
            None => system_roots_config()?,
        };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot build the HTTPS client")?;
        Ok(Api { base, http, token: None })
    }

    pub fn with_token(mut self, token: &str) -> Api {
        self.token = Some(token.to_owned());
        self
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            // reqwest's chain says whether TLS (e.g. a pin mismatch) or the network failed.
            let mut msg = format!("cannot reach the CA at {}", self.base);
            let mut source: Option<&dyn std::error::Error> = Some(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            anyhow!(msg)
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = read_bounded(resp, MAX_ERROR_BODY).await;
        match body.ok().and_then(|b| serde_json::from_slice::<ApiError>(&b).ok()) {
            // Printed as the error: neither part may drive the user's terminal.
            Some(err) => Err(Refused { code: printable(&err.error), message: printable(&err.message) }.into()),
            None => bail!("the CA answered {status}"),
        }
    }

    pub async fn get<R: DeserializeOwned>(&self, path: &str) -> anyhow::Result<R> {
        json_of(self.send(self.request(reqwest::Method::GET, path)).await?).await
    }

    /// For endpoints that answer with text (OpenSSH key lines).
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let body = read_bounded(self.send(self.request(reqwest::Method::GET, path)).await?, MAX_BODY).await?;
        String::from_utf8(body).map_err(|_| anyhow!("the CA answered with text that is not UTF-8"))
    }

    pub async fn post<B: Serialize, R: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<R> {
        json_of(self.send(self.request(reqwest::Method::POST, path).json(body)).await?).await
    }

    /// For endpoints that answer with an empty body.
    pub async fn post_unit<B: Serialize>(&self, path: &str, body: &B) -> anyhow::Result<()> {
        self.send(self.request(reqwest::Method::POST, path).json(body)).await?;
        Ok(())
    }

    pub async fn put<B: Serialize, R: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<R> {
        json_of(self.send(self.request(reqwest::Method::PUT, path).json(body)).await?).await
    }

    pub async fn put_unit<B: Serialize>(&self, path: &str, body: &B) -> anyhow::Result<()> {
        self.send(self.request(reqwest::Method::PUT, path).json(body)).await?;
        Ok(())
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.send(self.request(reqwest::Method::DELETE, path)).await?;
        Ok(())
    }
}
