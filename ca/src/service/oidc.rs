//! Single sign-on through OpenID Connect: the device flow the CA runs for the CLI, and
//! the browser's authorization code flow (PKCE, `state`, `nonce`, a browser-binding
//! cookie). Both end in the same API session as a password login, with source `oidc`
//! and the groups the IdP vouched for.

use super::IdentityService;
use super::caller::{random_token, token_hash};
use crate::audit::{AuditEvent, sanitize};
use crate::error::CaError;
use crate::identity::Vouched;
use crate::identity::oidc::{Oidc, OidcIdentity, RedirectMissing, TokenError, TokenInvalid};
use crate::store::{self, PollTurn};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::{Nonce, PkceCodeChallenge, PkceCodeVerifier};
use portcullis_policies::{Identity, UserSource};
use portcullis_proto::LoginResponse;
use portcullis_proto::oidc::{AuthMethods, DevicePoll, DeviceStart, OidcMethods};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// The `max_age` of an ordinary sign-in: long, only so the IdP reports `auth_time`
/// (OpenID Connect Core §3.1.2.1); `0` for a step-up, which makes the IdP ask again.
fn max_age(fresh: bool) -> &'static str {
    if fresh { "0" } else { "2592000" }
}

/// A browser sign-in must come back from the IdP within this many seconds.
const LOGIN_TTL: u64 = 600;
/// The `source` of OIDC identities in sessions and audit records.
const SOURCE: &str = UserSource::Oidc.as_str();
/// The device flow's default poll interval (RFC 8628 §3.2).
const DEFAULT_INTERVAL: u64 = 5;
/// How many sign-ins may be in progress (both flows together, all replicas): a source's
/// share — an office behind one NAT address starts a few dozen in ten minutes, the rate
/// limit allows 300 — and the table's, which a flood from fewer sources than it has rows
/// cannot fill against others (see [`store::PendingCaps`]).
const PENDING_CAPS: store::PendingCaps = store::PendingCaps { per_source: 64, total: 10_000 };
/// What a source at its share of sign-ins in progress is told to wait: a sign-in it
/// abandoned is forgotten within `LOGIN_TTL`, most sooner.
const PENDING_RETRY_AFTER: u64 = 60;
/// Longest `pcd_…` handle accepted: the random part and the IdP's device code.
pub const MAX_DEVICE_HANDLE: usize = 4096;

/// The CLI's handle of a device sign-in: `pcd_<random>.<device code, base64url>`. The
/// IdP's device code travels with the client that polls (as it would without us in
/// between) instead of resting in the database; the row is keyed by the hash of the
/// whole handle, so an altered device code finds nothing.
fn device_handle(device_code: &SecretString) -> String {
    format!("{}.{}", random_token("pcd_"), URL_SAFE_NO_PAD.encode(device_code.expose_secret()))
}

fn device_code_of(handle: &str) -> Option<SecretString> {
    let (_, code) = handle.strip_prefix("pcd_")?.split_once('.')?;
    let code = String::from_utf8(URL_SAFE_NO_PAD.decode(code).ok()?).ok()?;
    Some(SecretString::from(code))
}

/// The browser flow's PKCE verifier or nonce, derived from its binding cookie, which
/// only the browser that started the sign-in holds (the database keeps the cookie's
/// hash, under another label): no replica stores what completes a sign-in, and an
/// authorization code intercepted on its way back is useless without that browser.
fn from_binding(binding: &str, what: &str) -> String {
    let digest = Sha256::digest(format!("portcullis-oidc-{what}:{binding}").as_bytes());
    URL_SAFE_NO_PAD.encode(digest)
}

/// Where to send the browser, and the cookie that binds the sign-in to it.
pub struct BrowserLogin {
    pub redirect_to: String,
    pub binding: String,
}

/// The IdP's redirect back to us, parameters already checked for presence and size.
pub enum Callback {
    Code { code: String, state: String, iss: Option<String> },
    Error { error: String, state: Option<String> },
}

impl IdentityService {
    fn oidc(&self) -> Result<&Oidc, CaError> {
        self.oidc.as_ref().ok_or(CaError::NotFound("OIDC sign-in"))
    }

    pub fn auth_methods(&self) -> AuthMethods {
        AuthMethods {
            password: true,
            oidc: self.oidc.as_ref().map(|o| OidcMethods {
                issuer: o.issuer().to_owned(),
                device: true,
                browser: o.browser_enabled(),
            }),
        }
    }

    /// A turn to call the identity provider (bounded, see [`crate::admission`]).
    async fn idp_turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, CaError> {
        self.idp_work.enter().await.map_err(|busy| CaError::Busy { retry_after: busy.retry_after })
    }

    /// Per-address rate limit shared with password logins.
    async fn oidc_rate_limit(&self, client_ip: &str) -> Result<(), CaError> {
        let now = self.core.now();
        let ip_key = format!("ip:{}", crate::ratelimit::source_key(client_ip));
        let limited = self.ip_attempts.blocked(&ip_key, now);
        self.ip_attempts.hit(&ip_key, now);
        if let Some(retry_after) = limited {
            self.audit_oidc_failure("-", client_ip, "rate_limited").await?;
            return Err(CaError::RateLimited { retry_after });
        }
        Ok(())
    }

    /// Stores a sign-in in progress; a refusal is audited.
    async fn admit_pending(&self, pending: &store::NewPending<'_>, client_ip: &str, now: u64) -> Result<(), CaError> {
        match self.core.store.insert_oidc_pending(pending, now, PENDING_CAPS).await? {
            store::PendingAdmission::Stored => Ok(()),
            store::PendingAdmission::SourceFull => {
                self.audit_oidc_failure("-", client_ip, "too_many_pending").await?;
                Err(CaError::RateLimited { retry_after: PENDING_RETRY_AFTER })
            }
            store::PendingAdmission::Full => {
                self.audit_oidc_failure("-", client_ip, "pending_full").await?;
                Err(CaError::Unavailable)
            }
        }
    }

    async fn audit_oidc_failure(&self, username: &str, client_ip: &str, reason: &'static str) -> Result<(), CaError> {
        let username = sanitize(username);
        let event = AuditEvent::LoginFailed {
            username: username.clone(),
            source: SOURCE.to_owned(),
            client_ip: client_ip.to_owned(),
            reason,
        };
        self.core.audit_refusal(client_ip, reason, &username, event).await
    }

    /// An IdP failure: audited with its reason, answered without the IdP's words.
    async fn idp_failure(&self, client_ip: &str, error: TokenError) -> CaError {
        if let Err(e) = self.audit_oidc_failure("-", client_ip, error.reason()).await {
            return e;
        }
        match error {
            TokenError::Unreachable => CaError::IdentityProvider { unreachable: true },
            TokenError::BadResponse => CaError::IdentityProvider { unreachable: false },
            TokenError::OAuth(code) => CaError::SignInFailed(format!("the identity provider answered `{code}`")),
        }
    }

    async fn token_failure(&self, client_ip: &str, why: TokenInvalid) -> CaError {
        tracing::warn!(reason = why.reason(), "OIDC ID token refused");
        if let Err(e) = self.audit_oidc_failure("-", client_ip, why.reason()).await {
            return e;
        }
        CaError::SignInFailed(match why {
            TokenInvalid::GroupsClaim => {
                let claim = self.oidc.as_ref().map_or("groups", |o| o.groups_claim());
                format!(
                    "the identity provider's `{claim}` claim is not a list of group names (or names a source \
                     to fetch them from, as for a user in too many groups)"
                )
            }
            TokenInvalid::IssuedInFuture => {
                "the identity provider's token is dated in the future (check its clock)".into()
            }
            _ => "the identity provider's token was refused".into(),
        })
    }

    /// The same session row and audit record as a password login.
    async fn open_oidc_session(&self, who: OidcIdentity, client_ip: &str) -> Result<LoginResponse, CaError> {
        // Groups the token did not state are unknown, not none: read as none, they would
        // lift every deny statement on a group. Refused when one could apply, like a
        // directory's incomplete group list; otherwise unknown groups can only take
        // access away (no group binding matches), and the sign-in goes ahead.
        if !who.groups_stated && self.core.policy().denies_groups_of(UserSource::Oidc) {
            self.audit_oidc_failure(&who.username, client_ip, "groups_claim_missing").await?;
            let claim = self.oidc.as_ref().map_or("groups", |o| o.groups_claim());
            return Err(CaError::SignInFailed(format!(
                "the identity provider's token has no `{claim}` claim, and the policy denies by group, so access \
                 cannot be decided; ask an administrator to have the identity provider send it"
            )));
        }
        tracing::info!(username = %who.username, email = who.email.as_deref().unwrap_or("-"), "OIDC sign-in");
        let identity =
            Identity { username: who.username, groups: who.groups.into_iter().collect(), source: SOURCE.to_owned() };
        // Without the IdP's `auth_time` nobody knows how old its sign-in is: never fresh
        // enough for a step-up rule (0), and no other decision asks.
        let vouched = Vouched {
            identity,
            subject: who.subject,
            authenticated_at: Some(who.auth_time.unwrap_or(0)),
            groups_unknown: !who.groups_stated,
        };
        self.open_session(vouched, client_ip).await
    }

    /// Starts the device authorization grant at the IdP. The device code stays here; the
    /// CLI gets a handle of our own.
    /// `fresh`: the user must sign in at the IdP again (`max_age=0`), to step up for a
    /// `fresh_auth_within` rule.
    pub async fn oidc_device_start(&self, client_ip: &str, fresh: bool) -> Result<DeviceStart, CaError> {
        let oidc = self.oidc()?;
        self.oidc_rate_limit(client_ip).await?;
        let _turn = self.idp_turn().await?;
        let now = self.core.now();
        let provider = match oidc.provider().await {
            Ok(p) => p,
            Err(e) => return Err(self.idp_failure(client_ip, e).await),
        };
        if provider.device_authorization_endpoint.is_none() {
            return Err(CaError::SignInFailed("the identity provider does not offer the device flow".into()));
        }
        // A step-up asks `max_age=1`, not `0`: providers may read `0` as `prompt=login`,
        // which the device flow does not carry (oidc-provider drops it), so the user
        // would not be asked again. The CA checks `auth_time` itself either way.
        let max_age = if fresh { "1" } else { max_age(false) };
        let auth = match oidc.device_authorize(&provider, max_age).await {
            Ok(a) => a,
            Err(e) => return Err(self.idp_failure(client_ip, e).await),
        };
        let interval = auth.interval.unwrap_or(DEFAULT_INTERVAL).clamp(1, 60);
        let expires_in = auth.expires_in.clamp(1, 3600);
        let handle = device_handle(&auth.device_code);
        let key = token_hash(&handle);
        let pending = store::NewPending {
            key_hash: &key,
            device_interval: Some(interval),
            binding_hash: "",
            source: &crate::ratelimit::source_key(client_ip),
            expires_at: now + expires_in,
        };
        self.admit_pending(&pending, client_ip, now).await?;
        Ok(DeviceStart {
            handle: handle.into(),
            verification_uri: auth.verification_uri,
            verification_uri_complete: auth.verification_uri_complete,
            user_code: auth.user_code,
            interval,
            expires_in,
        })
    }

    /// Polls the IdP's token endpoint once for a device sign-in.
    pub async fn oidc_device_poll(&self, handle: &str, client_ip: &str) -> Result<DevicePoll, CaError> {
        let oidc = self.oidc()?;
        let now = self.core.now();
        let key = token_hash(handle);
        let device_code = device_code_of(handle).ok_or(CaError::NotFound("device sign-in (unknown or finished)"))?;
        // RFC 8628 §3.5: the client waits `interval` between polls. One that does not is
        // told to slow down here; only polls that keep the interval reach the IdP.
        let interval = match self.core.store.oidc_poll_turn(&key, now).await? {
            PollTurn::Granted { interval } => interval,
            PollTurn::TooSoon { interval } => return Ok(DevicePoll::SlowDown { interval: interval.saturating_add(5) }),
            PollTurn::Expired => {
                self.audit_oidc_failure("-", client_ip, "expired_token").await?;
                return Ok(DevicePoll::ExpiredToken);
            }
            PollTurn::Unknown => return Err(CaError::NotFound("device sign-in (unknown or finished)")),
        };
        let _turn = self.idp_turn().await?;
        let provider = match oidc.provider().await {
            Ok(p) => p,
            Err(e) => return Err(self.idp_failure(client_ip, e).await),
        };
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device_code.expose_secret()),
            ("client_id", oidc.client_id()),
        ];
        let id_token = match oidc.token(&provider, &form).await {
            Ok(t) => t,
            Err(TokenError::OAuth(code)) if code == "authorization_pending" => {
                return Ok(DevicePoll::Pending { interval });
            }
            Err(TokenError::OAuth(code)) if code == "slow_down" => {
                // RFC 8628 §3.5: add five seconds to the interval for this and later polls.
                let interval = self.core.store.slow_oidc_device(&key).await?.unwrap_or(DEFAULT_INTERVAL);
                return Ok(DevicePoll::SlowDown { interval });
            }
            Err(TokenError::OAuth(code)) if code == "access_denied" || code == "expired_token" => {
                self.core.store.remove_oidc_pending(&key).await?;
                let reason = if code == "access_denied" { "access_denied" } else { "expired_token" };
                self.audit_oidc_failure("-", client_ip, reason).await?;
                return Ok(if code == "access_denied" { DevicePoll::AccessDenied } else { DevicePoll::ExpiredToken });
            }
            Err(e @ TokenError::OAuth(_)) => {
                self.core.store.remove_oidc_pending(&key).await?;
                return Err(self.idp_failure(client_ip, e).await);
            }
            Err(e) => return Err(self.idp_failure(client_ip, e).await),
        };
        self.core.store.remove_oidc_pending(&key).await?;
        let who = match oidc.verify_id_token(&provider, &id_token, None, now).await {
            Ok(who) => who,
            Err(why) => return Err(self.token_failure(client_ip, why).await),
        };
        Ok(DevicePoll::Success(self.open_oidc_session(who, client_ip).await?))
    }
    /// Starts a browser sign-in: remembers `state` → (nonce, PKCE verifier, binding) and
    /// answers with the IdP URL to redirect to.
    /// `host`: the origin the browser addressed, which picks the callback.
    /// `fresh`: the user must sign in at the IdP again (`prompt=login`, `max_age=0`), to
    /// step up for a `fresh_auth_within` rule.
    pub async fn oidc_browser_start(
        &self,
        client_ip: &str,
        host: Option<&str>,
        fresh: bool,
    ) -> Result<BrowserLogin, CaError> {
        let oidc = self.oidc()?;
        let redirect_url = redirect_for(oidc, host)?;
        self.oidc_rate_limit(client_ip).await?;
        let _turn = self.idp_turn().await?;
        let now = self.core.now();
        let provider = match oidc.provider().await {
            Ok(p) => p,
            Err(e) => return Err(self.idp_failure(client_ip, e).await),
        };
        let state = random_token("");
        let binding = random_token("");
        let nonce = from_binding(&binding, "nonce");
        let verifier = PkceCodeVerifier::new(from_binding(&binding, "pkce-verifier"));
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&verifier);
        let mut url = provider.authorization_endpoint.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", oidc.client_id())
            .append_pair("redirect_uri", redirect_url.as_str())
            .append_pair("scope", &oidc.scope())
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", challenge.as_str())
            .append_pair("code_challenge_method", "S256")
            // `max_age` makes the IdP send `auth_time` (OpenID Connect Core §3.1.2.1), which
            // step-up rules go by; a month never asks for more than the IdP would.
            .append_pair("max_age", max_age(fresh));
        if fresh {
            url.query_pairs_mut().append_pair("prompt", "login");
        }
        let (key, binding_hash) = (token_hash(&state), token_hash(&binding));
        let pending = store::NewPending {
            key_hash: &key,
            device_interval: None,
            binding_hash: &binding_hash,
            source: &crate::ratelimit::source_key(client_ip),
            expires_at: now + LOGIN_TTL,
        };
        self.admit_pending(&pending, client_ip, now).await?;
        Ok(BrowserLogin { redirect_to: url.to_string(), binding })
    }

    /// The IdP sent the browser back. `binding`: the cookie set at the start.
    pub async fn oidc_browser_callback(
        &self,
        callback: Callback,
        binding: Option<&str>,
        client_ip: &str,
        host: Option<&str>,
    ) -> Result<LoginResponse, CaError> {
        let oidc = self.oidc()?;
        let _turn = self.idp_turn().await?;
        // The callback arrives at the origin the start sent the IdP to, so the same
        // choice gives the same URL (the code exchange must repeat it exactly).
        let redirect_url = redirect_for(oidc, host)?;
        let now = self.core.now();
        let (code, state, iss) = match callback {
            Callback::Error { error, state } => {
                // The sign-in is over either way: forget its state.
                if let Some(state) = state {
                    self.core.store.take_oidc_login(&token_hash(&state), now).await?;
                }
                return Err(self.idp_failure(client_ip, TokenError::OAuth(error)).await);
            }
            Callback::Code { code, state, iss } => (code, state, iss),
        };
        let Some(pending) = self.core.store.take_oidc_login(&token_hash(&state), now).await? else {
            self.audit_oidc_failure("-", client_ip, "state_invalid").await?;
            return Err(CaError::SignInFailed("unknown, expired or already used sign-in; start again".into()));
        };
        let Some(binding) = binding.filter(|b| token_hash(b) == pending.binding_hash) else {
            self.audit_oidc_failure("-", client_ip, "state_unbound").await?;
            return Err(CaError::SignInFailed("this sign-in was started in another browser; start again".into()));
        };
        let verifier = from_binding(binding, "pkce-verifier");
        // RFC 9207: an `iss` in the response must be our issuer (mix-up defence).
        if iss.as_deref().is_some_and(|i| i != oidc.issuer()) {
            return Err(self.token_failure(client_ip, TokenInvalid::Issuer).await);
        }
        let provider = match oidc.provider().await {
            Ok(p) => p,
            Err(e) => return Err(self.idp_failure(client_ip, e).await),
        };
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_url.as_str()),
            ("code_verifier", verifier.as_str()),
            ("client_id", oidc.client_id()),
        ];
        let id_token = match oidc.token(&provider, &form).await {
            Ok(t) => t,
            Err(e) => return Err(self.idp_failure(client_ip, e).await),
        };
        let nonce = Nonce::new(from_binding(binding, "nonce"));
        let who = match oidc.verify_id_token(&provider, &id_token, Some(&nonce), now).await {
            Ok(who) => who,
            Err(why) => return Err(self.token_failure(client_ip, why).await),
        };
        self.open_oidc_session(who, client_ip).await
    }
}

/// The callback URL for a browser at `host`, or why there is none (in words an operator
/// can act on: the host comes from the request, checked to be a plain `host[:port]`).
fn redirect_for(oidc: &Oidc, host: Option<&str>) -> Result<url::Url, CaError> {
    match oidc.redirect_url_for(host) {
        Ok(url) => Ok(url.clone()),
        Err(RedirectMissing::NoBrowserFlow) => Err(CaError::NotFound("OIDC browser sign-in")),
        Err(RedirectMissing::UnknownOrigin) => Err(CaError::BadRequest(match host {
            Some(host) => format!(
                "single sign-on is not set up for {host}: register https://{host}/v1/auth/oidc/callback at the \
                 identity provider and add it to [oidc] redirect_urls"
            ),
            None => "single sign-on needs the address this page was reached at (no Host header)".into(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_handle_carries_the_device_code_and_nothing_else_reads_as_one() {
        let code = SecretString::from("GmRhmhcxhwAzkoEqiMEg_DnyEysNkuNhszIySk9eS".to_owned());
        let handle = device_handle(&code);
        assert!(handle.starts_with("pcd_") && handle.len() < MAX_DEVICE_HANDLE, "{handle}");
        assert_eq!(device_code_of(&handle).unwrap().expose_secret(), code.expose_secret());
        assert_ne!(device_handle(&code), handle, "the random part differs per sign-in");
        for junk in ["", "pcd_", "pcd_abc", "xyz_abc.Zm9v", "pcd_abc.***", "pcd_abc./w"] {
            assert!(device_code_of(junk).is_none(), "{junk}");
        }
    }

    #[test]
    fn verifier_and_nonce_are_distinct_valid_pkce_values_bound_to_the_cookie() {
        let verifier = from_binding("binding-a", "pkce-verifier");
        // RFC 7636 §4.1: 43–128 characters of [A-Za-z0-9-._~].
        assert!((43..=128).contains(&verifier.len()), "{verifier}");
        assert!(verifier.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)));
        assert_ne!(verifier, from_binding("binding-a", "nonce"));
        assert_ne!(verifier, from_binding("binding-b", "pkce-verifier"));
        assert_ne!(verifier, token_hash("binding-a"), "the stored hash is not the verifier");
    }
}
