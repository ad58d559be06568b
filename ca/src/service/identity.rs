//! The identity service: who a caller is. Password sign-in over the identity sources
//! (local users first, then directories), OpenID Connect, the API sessions they open,
//! the bearer tokens that name them, the first administrator's one-time password, and
//! what directories last said about accounts with live sessions. Its methods live in
//! `auth.rs` (passwords, sessions, directory rechecks) and `oidc.rs`; its state is here,
//! the directory answers' bookkeeping in `directory.rs`.

use super::core::Core;
use super::directory::DirectoryAnswers;
use crate::admission::WorkLimit;
use crate::audit::{self, AuditEvent, SYSTEM_ACTOR};
use crate::error::CaError;
use crate::identity::oidc::{Oidc, OidcConfig};
use crate::identity::{IdentitySource, LocalUsers, hash_password};
use crate::ratelimit::{LoginThrottle, RateLimiter};
use crate::store;
use secrecy::SecretString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The identity service.
pub struct IdentityService {
    pub(super) core: Arc<Core>,
    /// Asked in order at password login; the first that knows the user decides.
    pub(super) sources: Vec<Arc<dyn IdentitySource>>,
    /// The first of `sources`, also asked directly when a user replaces their password.
    pub(super) local: LocalUsers,
    pub(super) oidc: Option<Oidc>,
    /// Lifetime of an API session, in seconds.
    pub(super) session_ttl: u64,
    pub(super) login_throttle: LoginThrottle,
    pub(super) ip_attempts: RateLimiter,
    /// Bounds on what anonymous callers can make us do (see [`crate::admission`]).
    password_work: Arc<WorkLimit>,
    pub(super) directory_work: WorkLimit,
    pub(super) idp_work: WorkLimit,
    /// What the directory last said about accounts with live sessions.
    pub(super) directory_answers: DirectoryAnswers,
    /// Where the first administrator's generated password was written, deleted once
    /// that user has replaced it (see [`IdentityService::forget_initial_password_when_replaced`]).
    initial_password_file: Mutex<Option<(String, PathBuf)>>,
}

/// What [`IdentityService::new`] needs, already validated.
pub(super) struct IdentityConfig {
    pub session_ttl: Duration,
    pub login_failures_per_user: u32,
    pub login_attempts_per_ip: u32,
    pub extra_sources: Vec<Arc<dyn IdentitySource>>,
    pub oidc: Option<OidcConfig>,
}

impl IdentityService {
    pub(super) fn new(core: Arc<Core>, config: IdentityConfig) -> Result<IdentityService, CaError> {
        let password_work = Arc::new(WorkLimit::password_hashing());
        let local = LocalUsers::new(core.store.clone(), Arc::clone(&password_work));
        Ok(IdentityService {
            oidc: config.oidc.map(Oidc::new).transpose()?,
            sources: std::iter::once(Arc::new(local.clone()) as Arc<dyn IdentitySource>)
                .chain(config.extra_sources)
                .collect(),
            local,
            session_ttl: config.session_ttl.as_secs(),
            login_throttle: LoginThrottle::new(config.login_failures_per_user, 3600),
            ip_attempts: RateLimiter::new(config.login_attempts_per_ip, 60),
            password_work,
            directory_work: WorkLimit::remote("directory"),
            idp_work: WorkLimit::remote("identity_provider"),
            directory_answers: Default::default(),
            initial_password_file: Mutex::new(None),
            core,
        })
    }

    /// The work limits of anonymous callers, each with how many it refused (for
    /// `/metrics`).
    pub(super) fn work_limits(&self) -> [&WorkLimit; 3] {
        [&*self.password_work, &self.directory_work, &self.idp_work]
    }

    /// Creates the first administrator when there are no users at all; returns the
    /// generated password, stored only as a hash. It is one-time: it opens no session,
    /// and the first sign-in with it must choose the administrator's own password.
    pub async fn bootstrap_admin(&self, username: &str, group: &str) -> Result<Option<SecretString>, CaError> {
        if self.core.store.user_count().await? > 0 {
            return Ok(None);
        }
        let password = super::caller::random_token("");
        let hash = {
            let pw = password.clone();
            tokio::task::spawn_blocking(move || hash_password(&pw))
                .await
                .map_err(|_| CaError::Internal("hashing task".into()))??
        };
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        let one_time = store::NewPassword { hash: &hash, one_time: true };
        if !store::insert_user(tx.conn(), username, Some(one_time), &[group.to_owned()], now).await? {
            // Another replica starting at the same instant created it: its password is
            // the one; this one was never stored, so it is neither shown nor audited.
            return Ok(None);
        }
        audit::record(
            tx.conn(),
            now,
            &AuditEvent::UserChanged {
                actor: SYSTEM_ACTOR.to_owned(),
                username: username.to_owned(),
                change: "bootstrap_admin_created",
                groups: Some(audit::GroupsChange { old: Vec::new(), new: vec![group.to_owned()] }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Some(SecretString::from(password)))
    }

    /// `file` holds `username`'s one-time password: it is deleted when that password is
    /// replaced — at once, if it already was (on another replica, or before a restart).
    /// Answers whether the file is still needed.
    pub async fn forget_initial_password_when_replaced(&self, username: &str, file: PathBuf) -> Result<bool, CaError> {
        let pending = self.core.store.user(username).await?.is_some_and(|u| u.must_change_password);
        if pending {
            *self.initial_password_file.lock().unwrap_or_else(|e| e.into_inner()) = Some((username.to_owned(), file));
        } else {
            remove_initial_password_file(&file);
        }
        Ok(pending)
    }

    /// Called when `username` has chosen their own password.
    pub(super) fn initial_password_replaced(&self, username: &str) {
        let mut slot = self.initial_password_file.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|(user, _)| user == username)
            && let Some((_, file)) = slot.take()
        {
            remove_initial_password_file(&file);
        }
    }
}

fn remove_initial_password_file(file: &Path) {
    match std::fs::remove_file(file) {
        Ok(()) => {
            tracing::info!(file = %file.display(), "the one-time administrator password was replaced; its file is deleted")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %file.display(), error = %e, "cannot delete the used one-time password file"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::keys::KeyAlgorithm;
    use crate::service::core::CoreConfig;

    const IP: &str = "192.0.2.7";

    /// The identity service needs only the core: no issuance writer, no sessions, no
    /// `Ca`. Sign-in, the caller a token names, and sign-out, on a fresh database.
    #[tokio::test]
    async fn the_identity_service_works_on_the_core_alone() {
        let dir = tempfile::tempdir().unwrap();
        let policy_dir = dir.path().join("policy");
        std::fs::create_dir(&policy_dir).unwrap();
        std::fs::write(policy_dir.join("default.toml"), crate::policy_files::DEFAULT_POLICY).unwrap();
        let config = CoreConfig {
            database_url: format!("sqlite://{}", dir.path().join("ca.db").display()),
            policy_dir,
            passphrase: SecretString::from("core alone"),
            key_algorithm: KeyAlgorithm::Ed25519,
            clock_skew: Duration::from_secs(60),
            refusal_summary_every: Duration::from_secs(60),
            default_agent: None,
            key_record: None,
        };
        let core = Arc::new(Core::open(config, Arc::new(ManualClock::new(1_800_000_000))).await.unwrap());
        let identity = IdentityService::new(
            core,
            IdentityConfig {
                session_ttl: Duration::from_secs(3600),
                login_failures_per_user: 5,
                login_attempts_per_ip: 30,
                extra_sources: Vec::new(),
                oidc: None,
            },
        )
        .unwrap();

        let one_time = identity.bootstrap_admin("admin", "portcullis-admins").await.unwrap().unwrap();
        assert!(identity.bootstrap_admin("admin", "portcullis-admins").await.unwrap().is_none(), "one bootstrap");
        let refused = identity.login_password("admin", None, &one_time, IP).await;
        assert!(matches!(refused, Err(CaError::PasswordChangeRequired)), "{refused:?}");
        let own = SecretString::from("correct horse battery staple");
        let login = identity.login_replacing_password("admin", None, &one_time, &own, IP).await.unwrap();
        let wrong = identity.login_password("admin", None, &one_time, IP).await;
        assert!(matches!(wrong, Err(CaError::InvalidCredentials)), "the one-time password is spent: {wrong:?}");

        let caller = identity.caller(login.token.expose()).await.unwrap();
        assert_eq!(caller.identity.username, "admin");
        assert!(caller.identity.groups.contains("portcullis-admins"));
        assert!(identity.whoami(&caller).permissions.iter().any(|p| p == "users.manage"));
        identity.logout(&caller).await.unwrap();
        let after = identity.caller(login.token.expose()).await;
        assert!(matches!(after, Err(CaError::Unauthenticated)), "a signed-out token names nobody: {after:?}");
    }
}
