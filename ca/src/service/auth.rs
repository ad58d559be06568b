//! Logging in and recognising callers: passwords become short-lived API sessions whose
//! bearer token is stored only as a SHA-256 hash.

use super::IdentityService;
use super::caller::{Caller, random_token, session_ref, token_hash};
use super::directory::{self, Refusal, Standing};
use crate::audit::{self, AuditEvent, sanitize};
use crate::error::CaError;
use crate::identity::{AuthFailure, Vouched};
use crate::store::{self, AccountClaim, SessionRow};
use portcullis_policies::{Identity, Permission, USER_NAME_RULE, UserSource, parse_account, valid_user_name};
use portcullis_proto::{LoginResponse, WhoAmI};
use secrecy::{ExposeSecret, SecretString};
use std::collections::{BTreeSet, HashMap};

/// What a sign-in refused as "busy" is told to wait (the hashing queue's deadline).
const BUSY_RETRY_AFTER: u64 = 3;

/// What a sign-in name asks for: the name part, and the one source to ask when the
/// user named it (`ldap:alice`, or `alice` with `source = "ldap"`); a bare name without a
/// source is asked of the sources in order (local users first).
fn sign_in_name(typed: &str, source: Option<UserSource>) -> Result<(Option<UserSource>, &str), CaError> {
    let invalid = || {
        CaError::BadRequest(format!("not a valid user name ({USER_NAME_RULE}), optionally after `ldap:` or `oidc:`"))
    };
    let (named, name) = match typed.split_once(':') {
        Some(_) => parse_account(typed).map(|(s, n)| (Some(s), n)).ok_or_else(invalid)?,
        None if valid_user_name(typed) => (None, typed),
        None => return Err(invalid()),
    };
    match (named, source) {
        (Some(a), Some(b)) if a != b => Err(CaError::BadRequest(format!("`{typed}` is not a {b} user name"))),
        (Some(_), _) => Ok((named, name)),
        (None, source) => Ok((source, name)),
    }
}

impl IdentityService {
    pub async fn login_password(
        &self,
        typed: &str,
        source: Option<UserSource>,
        password: &SecretString,
        client_ip: &str,
    ) -> Result<LoginResponse, CaError> {
        self.sign_in_with_password(typed, source, password, None, client_ip).await
    }

    /// Signs a local user in and replaces their password in one step, the current one
    /// being the proof: how a one-time password (the first administrator's, or a reset)
    /// is used, and how any local user changes their own. The user's other API sessions
    /// end. Directory passwords are changed with the directory's own tools.
    pub async fn login_replacing_password(
        &self,
        typed: &str,
        source: Option<UserSource>,
        password: &SecretString,
        new_password: &SecretString,
        client_ip: &str,
    ) -> Result<LoginResponse, CaError> {
        self.sign_in_with_password(typed, source, password, Some(new_password), client_ip).await
    }

    async fn sign_in_with_password(
        &self,
        typed: &str,
        source: Option<UserSource>,
        password: &SecretString,
        new_password: Option<&SecretString>,
        client_ip: &str,
    ) -> Result<LoginResponse, CaError> {
        crate::validate::identifier("user name", typed)?;
        let now = self.core.now();
        // Attempts count per source (an IPv6 /64), audit records name the address.
        let origin = crate::ratelimit::source_key(client_ip);
        let ip_key = format!("ip:{origin}");
        let limited = self.ip_attempts.blocked(&ip_key, now);
        self.ip_attempts.hit(&ip_key, now);
        // A name outside the alphabet is refused like one with control characters: it
        // reaches no source and no audit record (it cannot be anyone's).
        let (only, name) = sign_in_name(typed, source)?;
        if let Some(new) = new_password {
            if only.is_some_and(|s| s != UserSource::Local) {
                return Err(CaError::BadRequest(
                    "directory passwords are changed with the directory's own tools, not here".into(),
                ));
            }
            super::admin::check_password_rule(new)?;
            if new.expose_secret() == password.expose_secret() {
                return Err(CaError::BadRequest("the new password must differ from the current one".into()));
            }
        }
        // One back-off per name, whichever source it is asked of: `alice` and
        // `ldap:alice` are guesses at the same password when local has no alice.
        let limited = limited.or_else(|| self.login_throttle.blocked(name, &origin, now));
        if let Some(retry_after) = limited {
            self.audit_login_failure(typed, "any", client_ip, "rate_limited").await?;
            return Err(CaError::RateLimited { retry_after });
        }
        let outcome = match new_password {
            None => self.authenticate_password(name, only, password).await,
            Some(new) => self.replace_own_password(name, password, new).await?,
        };
        let vouched = match outcome {
            Ok(vouched) => vouched,
            Err((_, AuthFailure::Busy)) => return Err(CaError::Busy { retry_after: BUSY_RETRY_AFTER }),
            Err((source, failure)) => {
                // Not a wrong guess: the directory's fault, or the password was right.
                let guess = !matches!(
                    failure,
                    AuthFailure::Unavailable | AuthFailure::MembershipIncomplete | AuthFailure::PasswordChangeRequired
                );
                if guess {
                    self.login_throttle.failed(name, &origin, now);
                }
                self.audit_login_failure(typed, source.as_str(), client_ip, failure.code()).await?;
                return Err(match failure {
                    AuthFailure::Unavailable => CaError::Unavailable,
                    AuthFailure::PasswordChangeRequired if source == UserSource::Local => {
                        CaError::PasswordChangeRequired
                    }
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
        self.login_throttle.succeeded(name, &origin);
        self.open_session(vouched, client_ip).await
    }

    /// Replaces a local user's password after checking the current one. The update
    /// names the hash that was proved, so of two sign-ins racing with one one-time
    /// password only the first changes it; the other finds it no longer current.
    async fn replace_own_password(
        &self,
        name: &str,
        current: &SecretString,
        new: &SecretString,
    ) -> Result<Result<Vouched, (UserSource, AuthFailure)>, CaError> {
        let local = |failure| Err((UserSource::Local, failure));
        let user = match self.local.verify(name, current).await {
            Ok(user) => user,
            Err(failure) => return Ok(local(failure)),
        };
        let Some(old_hash) = user.password_hash.as_deref() else { return Ok(local(AuthFailure::BadPassword)) };
        let new_hash = super::admin::hash_new_password(new).await?;
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        if !store::replace_own_password(tx.conn(), name, old_hash, &new_hash, now).await? {
            return Ok(local(AuthFailure::BadPassword));
        }
        store::revoke_user_sessions(tx.conn(), name, now).await?;
        let change = if user.must_change_password { "one_time_password_replaced" } else { "password_changed" };
        let event = AuditEvent::UserChanged { actor: name.to_owned(), username: name.to_owned(), change, groups: None };
        audit::record(tx.conn(), now, &event).await?;
        tx.commit().await?;
        self.initial_password_replaced(name);
        Ok(Ok(crate::identity::local_vouched(user)))
    }

    /// Creates an API session (what every sign-in method ends with) and audits it. A
    /// directory or IdP account name is held for the subject that signed in with it
    /// first; another subject is refused (see [`store::claim_account`]).
    pub(super) async fn open_session(&self, vouched: Vouched, client_ip: &str) -> Result<LoginResponse, CaError> {
        let Vouched { identity, subject, authenticated_at, groups_unknown } = vouched;
        let now = self.core.now();
        let token = random_token("pcs_");
        let session = SessionRow {
            username: identity.username,
            source: identity.source,
            groups: identity.groups.into_iter().collect(),
            expires_at: now.saturating_add(self.session_ttl),
            authenticated_at: sign_in_time(authenticated_at, now, self.core.clock_skew),
            groups_unknown,
        };
        let mut tx = self.core.store.begin().await?;
        if session.source != UserSource::Local.as_str() {
            // A rename at the source moves the subject to its new name and frees the old
            // one (below). A name the policy itself names — a deny, a user binding — is
            // not shed that way: renaming oneself at the IdP (a user-editable claim at
            // many) would lift a deny on the old name. An administrator releases it,
            // having moved the policy to the new name.
            let policy = self.core.policy();
            let held = store::accounts_of(tx.conn(), &session.source, &subject).await?;
            if let Some(old) = held.iter().find(|old| **old != session.username && policy.names_user(old)) {
                drop(tx);
                tracing::warn!(account = %session.username, "sign-in refused: renamed from an account the policy names");
                self.audit_login_failure(&session.username, &session.source, client_ip, "account_renamed").await?;
                return Err(CaError::SignInFailed(format!(
                    "this account was known as {old}, which the access policy names; an administrator can move the \
                     policy to {} and release the old name with `portcullis admin user release {old}`",
                    session.username
                )));
            }
            let claim = store::claim_account(tx.conn(), &session.username, &session.source, &subject, now).await?;
            if let AccountClaim::Held { released } = &claim {
                // Renamed at its source: the old name's sessions and certificates end
                // with it, before another subject can be given that name.
                for old in released {
                    super::admin::end_sessions_and_certificates(&mut tx, &session.username, old, now).await?;
                }
            }
            if claim == AccountClaim::Taken {
                drop(tx);
                tracing::warn!(account = %session.username, "sign-in refused: the account name belongs to another subject");
                self.audit_login_failure(&session.username, &session.source, client_ip, "account_taken").await?;
                return Err(CaError::SignInFailed(format!(
                    "the account {} belongs to another {} account; an administrator can release it with \
                     `portcullis admin user release {}`",
                    session.username,
                    if session.source == UserSource::Oidc.as_str() { "identity-provider" } else { "directory" },
                    session.username,
                )));
            }
        }
        store::insert_session(tx.conn(), &token_hash(&token), &session, now).await?;
        audit::record(
            tx.conn(),
            now,
            &AuditEvent::LoginSucceeded {
                username: session.username.clone(),
                source: session.source.clone(),
                client_ip: client_ip.to_owned(),
                user_session: session_ref(&token_hash(&token)),
            },
        )
        .await?;
        tx.commit().await?;
        self.core.counters.sign_ins.inc(&[("source", &session.source)]);
        Ok(LoginResponse { token: token.into(), username: session.username, expires_at: session.expires_at })
    }

    /// Asks the sources in order (or only `only`); a source that does not know the user
    /// passes it on, any other answer (including "directory unavailable") is final — so a
    /// local user shadows a directory user of the same bare name, who signs in as
    /// `ldap:NAME` (or with `--source ldap`).
    async fn authenticate_password(
        &self,
        name: &str,
        only: Option<UserSource>,
        password: &SecretString,
    ) -> Result<Vouched, (UserSource, AuthFailure)> {
        let mut last = (only.unwrap_or(UserSource::Local), AuthFailure::UnknownUser);
        for source in self.sources.iter().filter(|s| only.is_none_or(|o| o == s.source())) {
            // Local users are bounded by their hashing limit; other sources wait on a
            // directory server.
            let _turn = match source.source() {
                UserSource::Local => None,
                other => Some(self.directory_work.enter().await.map_err(|_| (other, AuthFailure::Busy))?),
            };
            match source.authenticate(name, password).await {
                Ok(vouched) => return Ok(vouched),
                Err(AuthFailure::UnknownUser) => last = (source.source(), AuthFailure::UnknownUser),
                Err(other) => return Err((source.source(), other)),
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
        let username = sanitize(username);
        let event = AuditEvent::LoginFailed {
            username: username.clone(),
            source: source.to_owned(),
            client_ip: client_ip.to_owned(),
            reason,
        };
        self.core.audit_refusal(client_ip, reason, &username, event).await
    }

    /// Resolves a bearer token. Local users are re-read on every call, so disabling a
    /// user or changing their groups takes effect at their next request.
    pub async fn caller(&self, token: &str) -> Result<Caller, CaError> {
        let hash = token_hash(token);
        let (session, user) = self.core.store.session(&hash, self.core.now()).await?.ok_or(CaError::Unauthenticated)?;
        let groups = match UserSource::parse(&session.source) {
            // Fast path: the user row came with the session lookup.
            Some(UserSource::Local) => match user {
                Some(u) if !u.disabled => u.groups,
                _ => return Err(CaError::Unauthenticated),
            },
            // OIDC is not a directory we can ask again: the groups the IdP vouched for at
            // sign-in hold for the session's lifetime (bounded by the session TTL). Groups
            // it did not state are unknown: once a deny names a group they could hold — a
            // deny added after the sign-in too — the session cannot be judged, and ends.
            Some(UserSource::Oidc) if self.core.policy().cannot_judge(session.groups_unknown) => {
                let event = AuditEvent::SessionRefused {
                    username: session.username.clone(),
                    source: session.source.clone(),
                    reason: "groups_unknown",
                };
                self.core.audit_alone(event).await?;
                return Err(CaError::Unauthenticated);
            }
            Some(UserSource::Oidc) => session.groups,
            Some(UserSource::Ldap) | None => match self.recheck_directory(&session.username).await? {
                Ok(groups) => groups,
                Err(refusal) => {
                    // A session whose user was locked or removed in the directory since
                    // sign-in: refused, and worth an audit record.
                    let event = AuditEvent::SessionRefused {
                        username: session.username.clone(),
                        source: session.source.clone(),
                        reason: refusal.reason,
                    };
                    self.core.audit_alone(event).await?;
                    return Err(if refusal.unavailable { CaError::Unavailable } else { CaError::Unauthenticated });
                }
            },
        };
        Ok(Caller {
            identity: Identity {
                username: session.username,
                groups: groups.into_iter().collect(),
                source: session.source,
            },
            expires_at: session.expires_at,
            authenticated_at: session.authenticated_at,
            groups_unknown: session.groups_unknown,
            token_hash: hash,
            csrf_token: None,
        })
    }

    /// Asks the directory again about an account it vouched for: its current groups, or
    /// why it may no longer act — locked, removed, told to change its password, or the
    /// name now belonging to another entry than the one that signed in. Every definite
    /// answer is also what live sessions of the account go by (see
    /// `sessions::directory`), so a fresh "yes" at a session's open is not overruled by
    /// an older "no".
    pub(crate) async fn recheck_directory(&self, account: &str) -> Result<Result<Vec<String>, Refusal>, CaError> {
        let answer = self.ask_directory(account).await?;
        self.directory_answers.remember(account, self.core.now(), Some(&answer));
        Ok(answer)
    }

    async fn ask_directory(&self, account: &str) -> Result<Result<Vec<String>, Refusal>, CaError> {
        let refuse = |reason, text| Ok(Err(Refusal { reason, text, unavailable: false }));
        let Some((kind, name)) = parse_account(account) else {
            return refuse("unknown_user", "the account is not a directory account");
        };
        let Some(directory) = self.sources.iter().find(|s| s.source() == kind) else {
            return refuse("unknown_source", "the account's directory is no longer configured");
        };
        match directory.refresh(name).await {
            Ok(Some(vouched)) => {
                if self.core.store.account_subject(account).await?.as_deref() != Some(vouched.subject.as_str()) {
                    return refuse("account_taken", "the account now belongs to another directory entry");
                }
                Ok(Ok(vouched.identity.groups.into_iter().collect()))
            }
            Ok(None) => refuse("unknown_user", "the user no longer exists in the directory"),
            Err(AuthFailure::Disabled) => refuse("user_disabled", "the user is disabled"),
            Err(AuthFailure::PasswordChangeRequired) => {
                refuse("password_change_required", "the password must be changed; sign in again after changing it")
            }
            Err(AuthFailure::Unavailable) => Ok(Err(Refusal {
                reason: "directory_unavailable",
                text: "the identity directory cannot be asked",
                unavailable: true,
            })),
            Err(other) => refuse(other.code(), "the user's directory account cannot be checked"),
        }
    }

    /// The groups the directory last listed for `account` (a directory account).
    pub(crate) fn directory_groups(&self, account: &str) -> Option<Vec<String>> {
        self.directory_answers.groups(account)
    }

    /// Whether a directory account may still open a bastion session or redeem a console
    /// ticket: the source is asked again (as [`IdentityService::caller`] does for API requests), so a
    /// user locked, removed or told to change their password in the directory since the
    /// certificate or ticket was issued is refused. `Some(text)`: refused, with the text
    /// for the denial. Local users are checked by the callers against the store; OIDC
    /// cannot be asked again.
    pub(crate) async fn directory_account_refusal(&self, account: &str) -> Result<Option<&'static str>, CaError> {
        let source = match parse_account(account) {
            Some((UserSource::Local | UserSource::Oidc, _)) => return Ok(None),
            Some((source, _)) => source.as_str(),
            None => "unknown",
        };
        let Err(refusal) = self.recheck_directory(account).await? else {
            return Ok(None);
        };
        let event = AuditEvent::SessionRefused {
            username: account.to_owned(),
            source: source.to_owned(),
            reason: refusal.reason,
        };
        self.core.audit_alone(event).await?;
        Ok(Some(refusal.text))
    }

    /// The standing of each directory account in `accounts`, asking the directory about
    /// those not asked within [`directory::RECHECK_SECS`]. An account the directory cannot be asked
    /// about keeps its last answer (or has none): a directory outage stops new sessions,
    /// it does not end live ones.
    pub(super) async fn directory_standings(
        &self,
        accounts: &BTreeSet<&str>,
    ) -> Result<HashMap<String, Standing>, CaError> {
        let now = self.core.now();
        let due = self.directory_answers.due(accounts, now);
        // Side by side under one deadline (see `directory::RECHECK_TIMEOUT`); an account
        // whose question is cut off counts as asked, so a hung directory is not asked
        // about it again at every heartbeat.
        let deadline = tokio::time::Instant::now() + directory::RECHECK_TIMEOUT;
        let asks = due.iter().map(|account| async move {
            (*account, tokio::time::timeout_at(deadline, self.recheck_directory(account)).await)
        });
        for (account, answer) in futures_util::future::join_all(asks).await {
            // `recheck_directory` keeps what it hears (see `DirectoryAnswers::remember`).
            match answer {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err(refusal))) if !refusal.unavailable => {
                    let event = AuditEvent::SessionRefused {
                        username: account.to_owned(),
                        source: "ldap".to_owned(),
                        reason: refusal.reason,
                    };
                    self.core.audit_alone(event).await?;
                }
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Err(_))) | Err(_) => {
                    self.directory_answers.remember(account, now, None);
                    tracing::warn!(%account, "the directory could not be asked about a live session; its last answer stands");
                }
            }
        }
        Ok(self.directory_answers.standings(accounts, now))
    }

    pub async fn logout(&self, caller: &Caller) -> Result<(), CaError> {
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        store::revoke_session(tx.conn(), &caller.token_hash, now).await?;
        audit::record(tx.conn(), now, &AuditEvent::Logout { username: caller.identity.username.clone() }).await?;
        tx.commit().await?;
        Ok(())
    }

    pub fn whoami(&self, caller: &Caller) -> WhoAmI {
        let policy = self.core.policy();
        WhoAmI {
            username: caller.identity.username.clone(),
            source: caller.identity.source.clone(),
            groups: caller.identity.groups.iter().cloned().collect(),
            roles: policy.roles_of(&caller.identity).iter().map(|r| r.name().to_owned()).collect(),
            permissions: Permission::ALL
                .iter()
                .filter(|p| policy.holds(&caller.identity, **p).is_ok())
                .map(|p| p.as_str().to_owned())
                .collect(),
            session_expires_at: caller.expires_at,
            authenticated_at: caller.authenticated_at,
        }
    }
}

/// When a sign-in happened, for step-up rules: now for a password just checked (`None`);
/// what an IdP says otherwise, never later than now — and a time further ahead than the
/// clock skew allows is not believed at all (0, never fresh): a sign-in from the future
/// would otherwise count as one made this instant.
fn sign_in_time(claimed: Option<u64>, now: u64, skew: u64) -> u64 {
    match claimed {
        None => now,
        Some(t) if t > now.saturating_add(skew) => 0,
        Some(t) => t.min(now),
    }
}

#[cfg(test)]
mod tests {
    use super::sign_in_time;

    #[test]
    fn a_sign_in_from_the_future_is_not_believed() {
        let now = 1_800_000_000;
        assert_eq!(sign_in_time(None, now, 60), now, "a password checked now");
        assert_eq!(sign_in_time(Some(now - 300), now, 60), now - 300);
        assert_eq!(sign_in_time(Some(now + 30), now, 60), now, "within the skew: now");
        assert_eq!(sign_in_time(Some(now + 3600), now, 60), 0, "an hour ahead: never fresh");
        assert_eq!(sign_in_time(Some(0), now, 60), 0, "no auth_time from the IdP");
    }
}
