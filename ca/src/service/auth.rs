//! Logging in and recognising callers: passwords become short-lived API sessions whose
//! bearer token is stored only as a SHA-256 hash.

use super::Ca;
use crate::audit::{self, AuditEvent, sanitize};
use crate::error::CaError;
use crate::identity::AuthFailure;
use crate::store::{self, SessionRow};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_policies::{Grant, Identity, Permission};
use portcullis_proto::{LoginResponse, WhoAmI};
use portcullis_sshcert::random_bytes;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

/// An authenticated API caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    pub expires_at: u64,
    token_hash: String,
    /// Set when the caller came with the session cookie (a browser): the token its
    /// state-changing requests must carry.
    csrf_token: Option<String>,
}

impl Caller {
    /// The CSRF token of a cookie-authenticated caller (for server-rendered pages).
    pub fn csrf_token(&self) -> Option<&str> {
        self.csrf_token.as_deref()
    }

    /// The hash of the caller's API session token (what the store keys sessions by).
    pub(crate) fn token_hash(&self) -> &str {
        &self.token_hash
    }

    pub(crate) fn with_csrf_token(mut self, token: String) -> Caller {
        self.csrf_token = Some(token);
        self
    }
}

/// The CSRF token of a browser session: base64url(SHA-256("portcullis-csrf-v1\0" ||
/// session token)). Derived rather than stored, so every replica computes the same one
/// without a write; knowing it without the (HttpOnly) cookie is worth nothing, and it
/// cannot be turned back into the session token.
pub fn csrf_token_for(session_token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"portcullis-csrf-v1\0");
    h.update(session_token.as_bytes());
    URL_SAFE_NO_PAD.encode(h.finalize())
}

/// Whether `presented` is the CSRF token of `session_token`, compared in constant time.
pub fn csrf_token_matches(session_token: &str, presented: &str) -> bool {
    let expected = csrf_token_for(session_token);
    let (a, b) = (expected.as_bytes(), presented.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 256 random bits, URL-safe, with a prefix that makes leaked tokens easy to grep for.
pub(crate) fn random_token(prefix: &str) -> String {
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
}

pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What a sign-in refused as "busy" is told to wait (the hashing queue's deadline).
const BUSY_RETRY_AFTER: u64 = 3;

impl Ca {
    pub async fn login_password(
        &self,
        username: &str,
        password: &SecretString,
        client_ip: &str,
    ) -> Result<LoginResponse, CaError> {
        crate::validate::identifier("user name", username)?;
        let now = self.now();
        let ip_key = format!("ip:{client_ip}");
        let limited =
            self.ip_attempts.blocked(&ip_key, now).or_else(|| self.login_throttle.blocked(username, client_ip, now));
        self.ip_attempts.hit(&ip_key, now);
        if let Some(retry_after) = limited {
            self.audit_login_failure(username, "any", client_ip, "rate_limited").await?;
            return Err(CaError::RateLimited { retry_after });
        }
        let identity = match self.authenticate_password(username, password).await {
            Ok(identity) => identity,
            Err((_, AuthFailure::Busy)) => return Err(CaError::Busy { retry_after: BUSY_RETRY_AFTER }),
            Err((source, failure)) => {
                // Not a wrong guess: the directory's fault, or the password was right.
                let guess = !matches!(
                    failure,
                    AuthFailure::Unavailable | AuthFailure::MembershipIncomplete | AuthFailure::PasswordChangeRequired
                );
                if guess {
                    self.login_throttle.failed(username, client_ip, now);
                }
                self.audit_login_failure(username, source, client_ip, failure.code()).await?;
                return Err(match failure {
                    AuthFailure::Unavailable => CaError::Unavailable,
                    AuthFailure::PasswordChangeRequired => CaError::SignInFailed(
                        "your password has expired or was reset and must be changed; change it with your \
                         directory's password tool, then sign in again"
                            .into(),
                    ),
                    AuthFailure::MembershipIncomplete => CaError::SignInFailed(
                        "the directory did not list all of your groups, so access cannot be decided; \
                         ask an administrator"
                            .into(),
                    ),
                    _ => CaError::InvalidCredentials,
                });
            }
        };
        self.login_throttle.succeeded(username, client_ip);
        let groups = identity.groups.iter().cloned().collect();
        self.open_session(identity.username, identity.source, groups, client_ip).await
    }

    /// Creates an API session (what every sign-in method ends with) and audits it.
    pub(super) async fn open_session(
        &self,
        username: String,
        source: String,
        groups: Vec<String>,
        client_ip: &str,
    ) -> Result<LoginResponse, CaError> {
        let now = self.now();
        let token = random_token("pcs_");
        let session = SessionRow { username, source, groups, expires_at: now.saturating_add(self.session_ttl) };
        let mut tx = self.store.begin().await?;
        store::insert_session(tx.conn(), &token_hash(&token), &session, now).await?;
        audit::record(
            tx.conn(),
            now,
            &AuditEvent::LoginSucceeded {
                username: session.username.clone(),
                source: session.source.clone(),
                client_ip: client_ip.to_owned(),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(LoginResponse { token, username: session.username, expires_at: session.expires_at })
    }

    /// Asks the sources in order; a source that does not know the user passes it on, any
    /// other answer (including "directory unavailable") is final.
    async fn authenticate_password(
        &self,
        username: &str,
        password: &SecretString,
    ) -> Result<Identity, (&'static str, AuthFailure)> {
        let mut last = ("local", AuthFailure::UnknownUser);
        for source in &self.sources {
            // Local users are bounded by their hashing limit; other sources wait on a
            // directory server.
            let _turn = match source.name() {
                "local" => None,
                _ => Some(self.directory_work.enter().await.map_err(|_| (source.name(), AuthFailure::Busy))?),
            };
            match source.authenticate(username, password).await {
                Ok(identity) => return Ok(identity),
                Err(AuthFailure::UnknownUser) => last = (source.name(), AuthFailure::UnknownUser),
                Err(other) => return Err((source.name(), other)),
            }
        }
        Err(last)
    }

    async fn audit_login_failure(
        &self,
        username: &str,
        source: &str,
        client_ip: &str,
        reason: &'static str,
    ) -> Result<(), CaError> {
        self.audit_alone(AuditEvent::LoginFailed {
            username: sanitize(username),
            source: source.to_owned(),
            client_ip: client_ip.to_owned(),
            reason,
        })
        .await?;
        Ok(())
    }

    /// Resolves a bearer token. Local users are re-read on every call, so disabling a
    /// user or changing their groups takes effect at their next request.
    pub async fn caller(&self, token: &str) -> Result<Caller, CaError> {
        let hash = token_hash(token);
        let (session, user) = self.store.session(&hash, self.now()).await?.ok_or(CaError::Unauthenticated)?;
        let groups = if session.source == "local" {
            // Fast path: the user row came with the session lookup.
            match user {
                Some(u) if !u.disabled => u.groups,
                _ => return Err(CaError::Unauthenticated),
            }
        } else if session.source == crate::identity::oidc::SOURCE {
            // OIDC is not a directory we can ask again: the groups the IdP vouched for at
            // sign-in hold for the session's lifetime (bounded by the session TTL).
            session.groups
        } else {
            let source = self.sources.iter().find(|s| s.name() == session.source).ok_or(CaError::Unauthenticated)?;
            let refused = match source.refresh(&session.username).await {
                Ok(Some(identity)) => Ok(identity.groups.into_iter().collect()),
                Ok(None) => Err(("unknown_user", CaError::Unauthenticated)),
                Err(AuthFailure::Disabled) => Err(("user_disabled", CaError::Unauthenticated)),
                Err(AuthFailure::Unavailable) => Err(("directory_unavailable", CaError::Unavailable)),
                Err(other) => Err((other.code(), CaError::Unauthenticated)),
            };
            match refused {
                Ok(groups) => groups,
                Err((reason, error)) => {
                    // A session whose user was locked or removed in the directory since
                    // sign-in: refused, and worth an audit record.
                    let event = AuditEvent::SessionRefused {
                        username: session.username.clone(),
                        source: session.source.clone(),
                        reason,
                    };
                    self.audit_alone(event).await?;
                    return Err(error);
                }
            }
        };
        Ok(Caller {
            identity: Identity {
                username: session.username,
                groups: groups.into_iter().collect(),
                source: session.source,
            },
            expires_at: session.expires_at,
            token_hash: hash,
            csrf_token: None,
        })
    }

    /// Whether a directory account may still open a bastion session or redeem a console
    /// ticket: the source is asked again (as [`Ca::caller`] does for API requests), so a
    /// user locked, removed or told to change their password in the directory since the
    /// certificate or ticket was issued is refused. `Some(text)`: refused, with the text
    /// for the denial. Local users are checked by the callers against the store; OIDC
    /// cannot be asked again (and a source no longer configured is left to the caller).
    pub(crate) async fn directory_account_refusal(
        &self,
        source: &str,
        username: &str,
    ) -> Result<Option<&'static str>, CaError> {
        if source == "local" || source == crate::identity::oidc::SOURCE {
            return Ok(None);
        }
        let Some(directory) = self.sources.iter().find(|s| s.name() == source) else {
            return Ok(None);
        };
        let refusal = match directory.refresh(username).await {
            Ok(Some(_)) => return Ok(None),
            Ok(None) => ("unknown_user", "the user no longer exists in the directory"),
            Err(AuthFailure::Disabled) => ("user_disabled", "the user is disabled"),
            Err(AuthFailure::PasswordChangeRequired) => {
                ("password_change_required", "the password must be changed; sign in again after changing it")
            }
            Err(AuthFailure::Unavailable) => ("directory_unavailable", "the identity directory cannot be asked"),
            Err(other) => (other.code(), "the user's directory account cannot be checked"),
        };
        let event =
            AuditEvent::SessionRefused { username: username.to_owned(), source: source.to_owned(), reason: refusal.0 };
        self.audit_alone(event).await?;
        Ok(Some(refusal.1))
    }

    pub async fn logout(&self, caller: &Caller) -> Result<(), CaError> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        store::revoke_session(tx.conn(), &caller.token_hash, now).await?;
        audit::record(tx.conn(), now, &AuditEvent::Logout { username: caller.identity.username.clone() }).await?;
        tx.commit().await?;
        Ok(())
    }

    pub fn whoami(&self, caller: &Caller) -> WhoAmI {
        let policy = self.policy();
        WhoAmI {
            username: caller.identity.username.clone(),
            source: caller.identity.source.clone(),
            groups: caller.identity.groups.iter().cloned().collect(),
            roles: policy.roles_of(&caller.identity).iter().map(|r| r.name().to_owned()).collect(),
            session_expires_at: caller.expires_at,
        }
    }

    /// The proof an administrative operation needs.
    pub fn authorize(&self, caller: &Caller, permission: Permission) -> Result<Grant, CaError> {
        self.policy().authorize(&caller.identity, permission).map_err(CaError::Denied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens() {
        let t = csrf_token_for("pcs_a");
        assert_eq!(t.len(), 43);
        assert_ne!(t, csrf_token_for("pcs_b"));
        assert!(csrf_token_matches("pcs_a", &t));
        assert!(!csrf_token_matches("pcs_b", &t));
        assert!(!csrf_token_matches("pcs_a", ""));
        assert!(!csrf_token_matches("pcs_a", &t[..42]));
    }
}
