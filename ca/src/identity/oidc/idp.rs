//! Talking to the IdP: discovery, JWKS, the device authorization endpoint and the token
//! endpoint. Every answer is size-limited and parsed into our own types; an answer that
//! is not the JSON we expect becomes [`TokenError::BadResponse`], never a panic, and
//! nothing of its body reaches the user.

use super::{JWKS_REFRESH_INTERVAL, Oidc, Provider, check_scheme};
use crate::error::CaError;
use openidconnect::core::CoreJsonWebKeySet;
use rustls_pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use url::Url;

const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Why a request to the IdP did not give us what we asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Network, TLS or timeout.
    Unreachable,
    /// Not JSON, not the expected JSON, too large, or an endpoint that breaks the scheme rule.
    BadResponse,
    /// An OAuth error code from the IdP (`authorization_pending`, `access_denied`, …),
    /// reduced to `[a-z0-9_]`.
    OAuth(String),
}

impl TokenError {
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Unreachable => "idp_unavailable",
            TokenError::BadResponse => "idp_bad_response",
            TokenError::OAuth(code) => match code.as_str() {
                "access_denied" => "access_denied",
                "expired_token" => "expired_token",
                "invalid_grant" => "invalid_grant",
                _ => "idp_error",
            },
        }
    }
}

/// The IdP's answer to a device authorization request.
#[derive(Debug, Deserialize)]
pub struct DeviceAuthorization {
    pub device_code: SecretString,
    pub user_code: String,
    pub verification_uri: String,
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    #[serde(default)]
    pub interval: Option<u64>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    device_authorization_endpoint: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
}

/// rustls with the system roots plus the operator's bundle; no redirects (an IdP
/// endpoint that redirects is misconfigured, and following it could leak the secret).
pub(super) fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client, CaError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| CaError::Config(format!("cannot read OIDC ca_file {}: {e}", path.display())))?;
        let mut added = 0;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|_| CaError::Config(format!("OIDC ca_file {} is not PEM", path.display())))?;
            roots
                .add(cert)
                .map_err(|_| CaError::Config(format!("OIDC ca_file {}: unusable certificate", path.display())))?;
            added += 1;
        }
        if added == 0 {
            return Err(CaError::Config(format!("OIDC ca_file {} holds no certificate", path.display())));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| CaError::Config("TLS setup for OIDC".into()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|_| CaError::Config("cannot build the OIDC HTTP client".into()))
}

fn endpoint(raw: &str) -> Result<Url, TokenError> {
    let url = Url::parse(raw).map_err(|_| TokenError::BadResponse)?;
    check_scheme(&url, "endpoint").map_err(|_| TokenError::BadResponse)?;
    Ok(url)
}

/// Reads a body of at most [`MAX_RESPONSE_BYTES`].
async fn limited_body(mut resp: reqwest::Response) -> Result<Vec<u8>, TokenError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|_| TokenError::Unreachable)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(TokenError::BadResponse);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error with its causes (reqwest's own text omits them: an untrusted certificate
/// shows only as "error sending request").
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Only the error code: lowercase letters, digits and underscores, at most 64.
fn sanitize_code(code: &str) -> String {
    code.chars().filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').take(64).collect()
}

impl Oidc {
    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &Url) -> Result<T, TokenError> {
        let resp = self.http.get(url.clone()).send().await.map_err(|e| {
            tracing::warn!(error = %error_chain(&e), url = %url, "OIDC provider unreachable");
            TokenError::Unreachable
        })?;
        if !resp.status().is_success() {
            tracing::warn!(status = %resp.status(), url = %url, "OIDC provider answered with an error");
            return Err(TokenError::BadResponse);
        }
        let body = limited_body(resp).await?;
        serde_json::from_slice(&body).map_err(|_| {
            tracing::warn!(url = %url, "OIDC provider answer is not the expected JSON");
            TokenError::BadResponse
        })
    }

    pub(super) async fn discover(&self) -> Result<Provider, TokenError> {
        let base = self.issuer.as_str().trim_end_matches('/');
        let url = endpoint(&format!("{base}/.well-known/openid-configuration"))?;
        let d: Discovery = self.get_json(&url).await?;
        // OpenID Connect Discovery §4.3: the issuer in the document must be ours exactly.
        if d.issuer != self.issuer.as_str() {
            tracing::warn!("OIDC discovery document names another issuer");
            return Err(TokenError::BadResponse);
        }
        let jwks_uri = endpoint(&d.jwks_uri)?;
        let jwks: CoreJsonWebKeySet = self.get_json(&jwks_uri).await?;
        Ok(Provider {
            authorization_endpoint: endpoint(&d.authorization_endpoint)?,
            token_endpoint: endpoint(&d.token_endpoint)?,
            device_authorization_endpoint: d.device_authorization_endpoint.as_deref().map(endpoint).transpose()?,
            jwks_uri,
            // The slot counts refetches for unknown key ids only: the discovery fetch does
            // not use it up, so a key rotated just after it is accepted at once.
            jwks: Mutex::new((Arc::new(jwks), 0)),
        })
    }

    /// Re-fetches the JWKS unless it was fetched less than a minute ago; `None` when
    /// rate-limited or the fetch failed.
    pub(super) async fn refresh_jwks(&self, provider: &Provider, now: u64) -> Option<Arc<CoreJsonWebKeySet>> {
        {
            let mut guard = provider.jwks.lock().unwrap_or_else(|e| e.into_inner());
            if now < guard.1.saturating_add(JWKS_REFRESH_INTERVAL) {
                return None;
            }
            // Claim the slot before the fetch so concurrent requests do not all fetch.
            guard.1 = now;
        }
        let jwks: CoreJsonWebKeySet = self.get_json(&provider.jwks_uri).await.ok()?;
        let jwks = Arc::new(jwks);
        provider.jwks.lock().unwrap_or_else(|e| e.into_inner()).0 = Arc::clone(&jwks);
        tracing::info!("OIDC signing keys refreshed for an unknown key id");
        Some(jwks)
    }

    /// A form POST with client_secret_basic (RFC 6749 §2.3.1: both parts form-encoded).
    async fn post_form(&self, url: &Url, form: &[(&str, &str)]) -> Result<Vec<u8>, TokenError> {
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let resp = self
            .http
            .post(url.clone())
            .basic_auth(enc(self.client_id.as_str()), Some(enc(self.client_secret.expose_secret())))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %error_chain(&e), url = %url, "OIDC provider unreachable");
                TokenError::Unreachable
            })?;
        let status = resp.status();
        let body = limited_body(resp).await?;
        if status.is_success() {
            return Ok(body);
        }
        match serde_json::from_slice::<OAuthErrorBody>(&body) {
            Ok(e) if status.is_client_error() => Err(TokenError::OAuth(sanitize_code(&e.error))),
            _ => {
                tracing::warn!(%status, url = %url, "OIDC provider answered with a non-OAuth error");
                Err(TokenError::BadResponse)
            }
        }
    }

    /// `max_age`: as in an authorization request, so the ID token reports `auth_time`.
    pub(crate) async fn device_authorize(
        &self,
        provider: &Provider,
        max_age: &str,
    ) -> Result<DeviceAuthorization, TokenError> {
        let url = provider.device_authorization_endpoint.as_ref().ok_or(TokenError::BadResponse)?;
        let scope = self.scopes.join(" ");
        let form = [("client_id", self.client_id.as_str()), ("scope", &scope), ("max_age", max_age)];
        let body = self.post_form(url, &form).await?;
        let auth: DeviceAuthorization = serde_json::from_slice(&body).map_err(|_| TokenError::BadResponse)?;
        // These are shown to the user and opened in a browser: the verification URI must
        // be a web URL and the user code short and printable.
        let uri_ok = |u: &str| Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "https" | "http"));
        if !uri_ok(&auth.verification_uri)
            || auth.verification_uri_complete.as_deref().is_some_and(|u| !uri_ok(u))
            || auth.user_code.is_empty()
            || auth.user_code.len() > 64
            || auth.user_code.chars().any(|c| c.is_control())
        {
            return Err(TokenError::BadResponse);
        }
        Ok(auth)
    }

    /// One token request; `Ok` holds the ID token.
    pub(crate) async fn token(&self, provider: &Provider, form: &[(&str, &str)]) -> Result<String, TokenError> {
        let body = self.post_form(&provider.token_endpoint, form).await?;
        let resp: TokenResponse = serde_json::from_slice(&body).map_err(|_| TokenError::BadResponse)?;
        resp.id_token.ok_or(TokenError::BadResponse)
    }
}
