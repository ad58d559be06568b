//! OpenID Connect single sign-on: the CA is a confidential OIDC client.
//!
//! Guarantees: an [`OidcIdentity`] exists only for an ID token whose signature verifies
//! against the issuer's JWKS with an allow-listed asymmetric algorithm (never `none`,
//! never an HMAC), whose `iss` is the configured issuer, whose `aud` is our client id
//! (and only that), whose `azp` (when present) is our client id, which has not expired
//! (a small clock skew allowed), and whose `nonce` is the one we sent when we sent one.
//! The IdP is reached only over HTTPS — plain HTTP is accepted for loopback issuers
//! only (tests and a same-host IdP) — through our own rustls client that never follows
//! redirects. Nothing peer-supplied is echoed unsanitized; the device code and the
//! client secret never leave this module except in the request to the IdP.

mod idp;
#[cfg(test)]
mod tests;

pub use idp::{DeviceAuthorization, TokenError};

use crate::error::CaError;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJwsSigningAlgorithm};
use openidconnect::{ClaimsVerificationError, ClientId, IssuerUrl, Nonce, NonceVerifier, SignatureVerificationError};
use portcullis_policies::{UserSource, account_name, valid_user_name};
use secrecy::SecretString;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use url::Url;

/// An ID token larger than this is refused before it is parsed.
pub const MAX_ID_TOKEN_BYTES: usize = 16 * 1024;
/// The JWKS is re-fetched for an unknown `kid` at most this often.
const JWKS_REFRESH_INTERVAL: u64 = 60;

/// OIDC settings as the operator wrote them (portcullisd's `[oidc]` table).
#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub scopes: Vec<String>,
    pub username_claim: String,
    pub email_claim: String,
    pub groups_claim: String,
    /// The callback URLs registered at the IdP — the CA's own, and each bastion web front
    /// door's (`https://HOST/v1/auth/oidc/callback`); empty disables the browser flow.
    pub redirect_urls: Vec<String>,
    /// PEM bundle trusted for the IdP's TLS (in addition to the system roots).
    pub ca_file: Option<PathBuf>,
    /// JWS algorithms accepted for ID tokens.
    pub allowed_algs: Vec<String>,
    pub clock_skew: Duration,
}

impl OidcConfig {
    pub fn new(issuer: String, client_id: String, client_secret: SecretString) -> Self {
        OidcConfig {
            issuer,
            client_id,
            client_secret,
            scopes: vec!["openid".into(), "profile".into(), "email".into(), "groups".into()],
            username_claim: "preferred_username".into(),
            email_claim: "email".into(),
            groups_claim: "groups".into(),
            redirect_urls: Vec::new(),
            ca_file: None,
            allowed_algs: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
            clock_skew: Duration::from_secs(60),
        }
    }
}

/// Which ID-token check refused a token: the suffix of the audit reason
/// `token_invalid:<check>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenInvalid {
    Malformed,
    Algorithm,
    UnknownKey,
    Signature,
    Issuer,
    Audience,
    AuthorizedParty,
    Expired,
    Nonce,
    /// The username claim is missing or unusable.
    Claims,
    /// The groups claim is there but is not a list of group names.
    GroupsClaim,
    /// `iat` lies in the future beyond the allowed clock skew.
    IssuedInFuture,
}

impl TokenInvalid {
    pub fn reason(self) -> &'static str {
        match self {
            TokenInvalid::Malformed => "token_invalid:malformed",
            TokenInvalid::Algorithm => "token_invalid:algorithm",
            TokenInvalid::UnknownKey => "token_invalid:unknown_key",
            TokenInvalid::Signature => "token_invalid:signature",
            TokenInvalid::Issuer => "token_invalid:issuer",
            TokenInvalid::Audience => "token_invalid:audience",
            TokenInvalid::AuthorizedParty => "token_invalid:azp",
            TokenInvalid::Expired => "token_invalid:expired",
            TokenInvalid::Nonce => "token_invalid:nonce",
            TokenInvalid::Claims => "token_invalid:claims",
            TokenInvalid::GroupsClaim => "token_invalid:groups_claim",
            TokenInvalid::IssuedInFuture => "token_invalid:issued_in_future",
        }
    }
}

/// A person the IdP vouched for, read from a verified ID token.
#[derive(Debug, Clone)]
pub struct OidcIdentity {
    /// The account name, `oidc:<username claim>`.
    pub username: String,
    /// `<issuer> <sub>`: what the account name is held for (an IdP's `preferred_username`
    /// is often the user's to change; `sub` is not).
    pub subject: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// Whether the token stated the groups (an empty list states "none"); an absent or
    /// null claim states nothing — the IdP may not have been asked for them (a scope not
    /// granted, a mapper missing).
    pub groups_stated: bool,
    /// The IdP's `auth_time`: when the user last signed in there (step-up checks it).
    pub auth_time: Option<u64>,
}

/// What discovery told us, with every endpoint already checked against the scheme rule.
#[derive(Debug)]
pub(crate) struct Provider {
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    pub device_authorization_endpoint: Option<Url>,
    pub jwks_uri: Url,
    /// The signing keys, and when an unknown key id last made us refetch them.
    jwks: Mutex<(Arc<CoreJsonWebKeySet>, u64)>,
}

pub struct Oidc {
    issuer: IssuerUrl,
    client_id: ClientId,
    client_secret: SecretString,
    scopes: Vec<String>,
    username_claim: String,
    email_claim: String,
    groups_claim: String,
    redirect_urls: Vec<Url>,
    allowed_algs: Vec<CoreJwsSigningAlgorithm>,
    clock_skew: u64,
    http: reqwest::Client,
    provider: tokio::sync::Mutex<Option<Arc<Provider>>>,
}

/// `https://`, or `http://` to a loopback address: an IdP reached in clear text over a
/// network could be impersonated by anyone on the path.
fn check_scheme(url: &Url, what: &str) -> Result<(), CaError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if matches!(url.host_str(), Some("127.0.0.1" | "[::1]" | "localhost")) => Ok(()),
        _ => Err(CaError::Config(format!("OIDC {what} must be https:// (http:// only for a loopback address)"))),
    }
}

fn parse_alg(name: &str) -> Result<CoreJwsSigningAlgorithm, CaError> {
    let alg = match name {
        "RS256" => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        "RS384" => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
        "RS512" => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
        "PS256" => CoreJwsSigningAlgorithm::RsaSsaPssSha256,
        "PS384" => CoreJwsSigningAlgorithm::RsaSsaPssSha384,
        "PS512" => CoreJwsSigningAlgorithm::RsaSsaPssSha512,
        "ES256" => CoreJwsSigningAlgorithm::EcdsaP256Sha256,
        "ES384" => CoreJwsSigningAlgorithm::EcdsaP384Sha384,
        "EdDSA" => CoreJwsSigningAlgorithm::EdDsa,
        // HMAC would make the client secret a signing key shared with the IdP, and
        // `none` is no signature at all.
        other => return Err(CaError::Config(format!("OIDC allowed_algs: `{other}` is not an accepted algorithm"))),
    };
    Ok(alg)
}

fn alg_name(alg: &CoreJwsSigningAlgorithm) -> Option<&'static str> {
    Some(match alg {
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256 => "RS256",
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384 => "RS384",
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512 => "RS512",
        CoreJwsSigningAlgorithm::RsaSsaPssSha256 => "PS256",
        CoreJwsSigningAlgorithm::RsaSsaPssSha384 => "PS384",
        CoreJwsSigningAlgorithm::RsaSsaPssSha512 => "PS512",
        CoreJwsSigningAlgorithm::EcdsaP256Sha256 => "ES256",
        CoreJwsSigningAlgorithm::EcdsaP384Sha384 => "ES384",
        CoreJwsSigningAlgorithm::EdDsa => "EdDSA",
        _ => return None,
    })
}

fn claim_name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_graphic())
}

/// `iss` and `sub` are compared, never shown: any printable text of sane length.
fn claim_value_ok(value: &str) -> bool {
    !value.is_empty() && value.len() <= 1024 && !value.chars().any(char::is_control)
}

fn group_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && !name.chars().any(char::is_control)
}

impl Oidc {
    /// Validates the settings; the IdP itself is contacted at the first sign-in.
    pub fn new(config: OidcConfig) -> Result<Oidc, CaError> {
        let issuer_url =
            Url::parse(&config.issuer).map_err(|_| CaError::Config("OIDC issuer is not a valid URL".into()))?;
        check_scheme(&issuer_url, "issuer")?;
        let issuer = IssuerUrl::new(config.issuer.clone())
            .map_err(|_| CaError::Config("OIDC issuer is not a valid URL".into()))?;
        if config.client_id.is_empty() || config.client_id.len() > 256 {
            return Err(CaError::Config("OIDC client_id must be 1 to 256 characters".into()));
        }
        if !config.scopes.iter().any(|s| s == "openid") {
            return Err(CaError::Config("OIDC scopes must include `openid`".into()));
        }
        if let Some(bad) = config.scopes.iter().find(|s| !claim_name_ok(s)) {
            return Err(CaError::Config(format!("OIDC scope `{bad}` is not a valid scope token")));
        }
        for (what, claim) in [
            ("username_claim", &config.username_claim),
            ("email_claim", &config.email_claim),
            ("groups_claim", &config.groups_claim),
        ] {
            if !claim_name_ok(claim) {
                return Err(CaError::Config(format!("OIDC {what} must be a claim name")));
            }
        }
        let redirect_urls = config
            .redirect_urls
            .iter()
            .map(|u| {
                let url =
                    Url::parse(u).map_err(|_| CaError::Config(format!("OIDC redirect URL {u:?} is not a URL")))?;
                if url.scheme() != "https" || url.host_str().is_none() {
                    return Err(CaError::Config(format!("OIDC redirect URL {u:?} must be https://HOST/…")));
                }
                Ok(url)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if config.allowed_algs.is_empty() {
            return Err(CaError::Config("OIDC allowed_algs must not be empty".into()));
        }
        let allowed_algs = config.allowed_algs.iter().map(|a| parse_alg(a)).collect::<Result<Vec<_>, _>>()?;
        let http = idp::http_client(config.ca_file.as_deref())?;
        Ok(Oidc {
            issuer,
            client_id: ClientId::new(config.client_id),
            client_secret: config.client_secret,
            scopes: config.scopes,
            username_claim: config.username_claim,
            email_claim: config.email_claim,
            groups_claim: config.groups_claim,
            redirect_urls,
            allowed_algs,
            clock_skew: config.clock_skew.as_secs(),
            http,
            provider: tokio::sync::Mutex::new(None),
        })
    }

    /// The claim groups are read from (named in sign-in errors).
    pub fn groups_claim(&self) -> &str {
        &self.groups_claim
    }

    pub fn issuer(&self) -> &str {
        self.issuer.as_str()
    }

    pub fn client_id(&self) -> &str {
        self.client_id.as_str()
    }

    pub fn scope(&self) -> String {
        self.scopes.join(" ")
    }

    pub fn browser_enabled(&self) -> bool {
        !self.redirect_urls.is_empty()
    }

    /// The callback for a browser that addressed `host` (`host[:port]`): the registered
    /// URL of that origin, so the IdP sends the browser back to where its binding cookie
    /// is. With one URL registered it is the one (a proxy may present another host).
    pub fn redirect_url_for(&self, host: Option<&str>) -> Result<&Url, RedirectMissing> {
        match self.redirect_urls.as_slice() {
            [] => Err(RedirectMissing::NoBrowserFlow),
            [only] => Ok(only),
            several => {
                let host = host.ok_or(RedirectMissing::UnknownOrigin)?;
                several.iter().find(|u| authority(u).eq_ignore_ascii_case(host)).ok_or(RedirectMissing::UnknownOrigin)
            }
        }
    }

    /// Discovery, once; a failed discovery is retried at the next sign-in.
    pub(crate) async fn provider(&self) -> Result<Arc<Provider>, TokenError> {
        let mut cached = self.provider.lock().await;
        if let Some(p) = cached.as_ref() {
            return Ok(Arc::clone(p));
        }
        let provider = Arc::new(self.discover().await?);
        *cached = Some(Arc::clone(&provider));
        Ok(provider)
    }

    /// Verifies an ID token and reads the identity from it. `nonce`: the one we sent
    /// (browser flow); `None` where no nonce was sent (device flow).
    pub(crate) async fn verify_id_token(
        &self,
        provider: &Provider,
        id_token: &str,
        nonce: Option<&Nonce>,
        now: u64,
    ) -> Result<OidcIdentity, TokenInvalid> {
        if id_token.len() > MAX_ID_TOKEN_BYTES {
            return Err(TokenInvalid::Malformed);
        }
        // The allow-list is checked on the raw header before the library sees the token:
        // `alg: none` and HMAC tokens go no further.
        let header = decode_segment(id_token, 0).ok_or(TokenInvalid::Malformed)?;
        let alg = header.get("alg").and_then(|a| a.as_str()).ok_or(TokenInvalid::Malformed)?;
        if !self.allowed_algs.iter().any(|a| alg_name(a) == Some(alg)) {
            return Err(TokenInvalid::Algorithm);
        }
        let token = CoreIdToken::from_str(id_token).map_err(|_| TokenInvalid::Malformed)?;
        let jwks = provider.jwks();
        match self.check(&token, jwks, nonce, now) {
            Err(TokenInvalid::UnknownKey) => {
                // Key rotation: a new `kid` makes us re-fetch the JWKS, at most once a minute
                // so a stream of forged kids cannot turn us into a JWKS-fetching loop.
                let refreshed = self.refresh_jwks(provider, now).await.ok_or(TokenInvalid::UnknownKey)?;
                self.check(&token, refreshed, nonce, now)?;
            }
            other => other?,
        }
        let claims = decode_segment(id_token, 1).ok_or(TokenInvalid::Malformed)?;
        // The library does not check `azp`; with a single trusted audience it must be us.
        if let Some(azp) = claims.get("azp") {
            if azp.as_str() != Some(self.client_id.as_str()) {
                return Err(TokenInvalid::AuthorizedParty);
            }
        } else if claims.get("aud").and_then(|a| a.as_array()).is_some_and(|a| a.len() > 1) {
            return Err(TokenInvalid::AuthorizedParty);
        }
        self.check_issued_at(&claims, now)?;
        self.identity_from(&claims)
    }

    fn check(
        &self,
        token: &CoreIdToken,
        jwks: Arc<CoreJsonWebKeySet>,
        nonce: Option<&Nonce>,
        now: u64,
    ) -> Result<(), TokenInvalid> {
        let skewed = i64::try_from(now.saturating_sub(self.clock_skew)).unwrap_or(i64::MAX);
        let verifier =
            CoreIdTokenVerifier::new_public_client(self.client_id.clone(), self.issuer.clone(), (*jwks).clone())
                .set_allowed_algs(self.allowed_algs.iter().cloned())
                // `exp` is compared with this time: the skew lets a token live that much longer.
                .set_time_fn(move || chrono::DateTime::from_timestamp(skewed, 0).unwrap_or_default());
        let result = match nonce {
            Some(n) => token.claims(&verifier, n).map(|_| ()),
            None => token.claims(&verifier, NoNonce).map(|_| ()),
        };
        result.map_err(|e| match e {
            ClaimsVerificationError::InvalidIssuer(_) => TokenInvalid::Issuer,
            ClaimsVerificationError::InvalidAudience(_) => TokenInvalid::Audience,
            ClaimsVerificationError::Expired(_) => TokenInvalid::Expired,
            ClaimsVerificationError::InvalidNonce(_) => TokenInvalid::Nonce,
            ClaimsVerificationError::SignatureVerification(s) => match s {
                SignatureVerificationError::NoMatchingKey => TokenInvalid::UnknownKey,
                SignatureVerificationError::DisallowedAlg(_)
                | SignatureVerificationError::UnsupportedAlg(_)
                | SignatureVerificationError::NoSignature => TokenInvalid::Algorithm,
                _ => TokenInvalid::Signature,
            },
            _ => TokenInvalid::Malformed,
        })
    }

    /// A token issued in the future (beyond the skew) comes from a broken or hostile
    /// clock; openidconnect checks `exp` but not `iat`.
    fn check_issued_at(&self, claims: &serde_json::Value, now: u64) -> Result<(), TokenInvalid> {
        let iat = claims.get("iat").and_then(serde_json::Value::as_u64).ok_or(TokenInvalid::Malformed)?;
        if iat > now.saturating_add(self.clock_skew) {
            return Err(TokenInvalid::IssuedInFuture);
        }
        Ok(())
    }

    fn identity_from(&self, claims: &serde_json::Value) -> Result<OidcIdentity, TokenInvalid> {
        let name = claims
            .get(&self.username_claim)
            .and_then(|v| v.as_str())
            .filter(|u| valid_user_name(u))
            .ok_or(TokenInvalid::Claims)?;
        let username = account_name(UserSource::Oidc, name);
        let text = |claim: &str| claims.get(claim).and_then(|v| v.as_str()).filter(|v| claim_value_ok(v));
        let (Some(issuer), Some(sub)) = (text("iss"), text("sub")) else {
            return Err(TokenInvalid::Claims);
        };
        let subject = format!("{issuer} {sub}");
        let email = claims.get(&self.email_claim).and_then(|v| v.as_str()).map(crate::audit::sanitize);
        // Groups decide roles (and `deny`s): anything but a list of names is refused,
        // never coerced — a string, a number or an object may be an IdP misconfiguration
        // that would otherwise drop a group silently. A groups claim the IdP moved
        // elsewhere (OIDC's distributed claims, `_claim_names`: how Entra ID answers for a
        // user in more than 200 groups) is not in the token at all: refused, not read as
        // "no groups", which would lift every group `deny`.
        let moved = claims.get("_claim_names").and_then(|names| names.get(&self.groups_claim)).is_some();
        if moved {
            return Err(TokenInvalid::GroupsClaim);
        }
        let groups_stated = !matches!(claims.get(&self.groups_claim), None | Some(serde_json::Value::Null));
        let groups = match claims.get(&self.groups_claim) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(items)) if items.len() <= 1024 => items
                .iter()
                .map(|g| g.as_str().map(str::to_owned).ok_or(TokenInvalid::GroupsClaim))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(TokenInvalid::GroupsClaim),
        };
        if !groups.iter().all(|g| group_ok(g)) {
            return Err(TokenInvalid::GroupsClaim);
        }
        let auth_time = claims.get("auth_time").and_then(serde_json::Value::as_u64);
        Ok(OidcIdentity { username, subject, email, groups, groups_stated, auth_time })
    }
}

impl Provider {
    fn jwks(&self) -> Arc<CoreJsonWebKeySet> {
        Arc::clone(&self.jwks.lock().unwrap_or_else(|e| e.into_inner()).0)
    }
}

/// The device flow sends no nonce; the token comes straight from the token endpoint.
struct NoNonce;

impl NonceVerifier for NoNonce {
    fn verify(self, _nonce: Option<&Nonce>) -> Result<(), String> {
        Ok(())
    }
}

/// The JSON of a compact JWS's header (0) or payload (1), without verifying anything.
fn decode_segment(jwt: &str, index: usize) -> Option<serde_json::Value> {
    let segment = jwt.split('.').nth(index)?;
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    serde_json::from_slice(&bytes).ok().filter(serde_json::Value::is_object)
}

/// Why a browser sign-in has no callback to return to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectMissing {
    /// No redirect URL is configured: device flow only.
    NoBrowserFlow,
    /// Several are, and none is at the origin the browser used.
    UnknownOrigin,
}

/// `host[:port]` of a URL as a browser writes it in `Host` (default port left out).
fn authority(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => String::new(),
    }
}
