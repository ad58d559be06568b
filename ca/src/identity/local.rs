//! Users kept in the CA's own database, with argon2id password hashes.

use super::{AuthFailure, BoxFuture, IdentitySource, Vouched};
use crate::admission::WorkLimit;
use crate::store::{Store, StoreError, UserRow};
use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use portcullis_policies::{Identity, UserSource};
use secrecy::{ExposeSecret, SecretString};
use std::sync::{Arc, OnceLock};

#[derive(Clone)]
pub struct LocalUsers {
    store: Store,
    /// Every password check hashes (unknown users against a dummy hash): this bounds
    /// how many run at once.
    hashing: Arc<WorkLimit>,
}

impl LocalUsers {
    pub fn new(store: Store, hashing: Arc<WorkLimit>) -> Self {
        LocalUsers { store, hashing }
    }

    /// Checks a local user's password and that the user may act; the row it answers
    /// carries the hash that was proved (a password change replaces exactly that one).
    /// A one-time password passes here: whether it may open a session is the caller's
    /// question.
    pub(crate) async fn verify(&self, username: &str, password: &SecretString) -> Result<UserRow, AuthFailure> {
        if password.expose_secret().is_empty() {
            return Err(AuthFailure::EmptyPassword);
        }
        let user = self.store.user(username).await.map_err(|_| AuthFailure::Unavailable)?;
        let hash = user.as_ref().and_then(|u| u.password_hash.clone()).unwrap_or_else(|| dummy_hash().to_owned());
        let pass = password.clone();
        let _turn = self.hashing.enter().await.map_err(|_| AuthFailure::Busy)?;
        // argon2 is CPU-bound by design: keep it off the async workers.
        let ok =
            tokio::task::spawn_blocking(move || verify_password(&hash, pass.expose_secret())).await.unwrap_or(false);
        let user = user.ok_or(AuthFailure::UnknownUser)?;
        if !ok || user.password_hash.is_none() {
            return Err(AuthFailure::BadPassword);
        }
        if user.disabled {
            return Err(AuthFailure::Disabled);
        }
        Ok(user)
    }
}

/// A hash of a random password, verified against when the user does not exist so that
/// "no such user" costs the same time as "wrong password".
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("portcullis-timing-equaliser").unwrap_or_default())
}

pub fn hash_password(password: &str) -> Result<String, StoreError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|_| StoreError::Corrupt("password hashing failed"))
}

fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
        .unwrap_or(false)
}

/// A local user is their own subject: the name is the identity.
pub(crate) fn vouched(user: UserRow) -> Vouched {
    let identity = Identity {
        username: user.username.clone(),
        groups: user.groups.into_iter().collect(),
        source: UserSource::Local.as_str().to_owned(),
    };
    Vouched { identity, subject: user.username, authenticated_at: None, groups_unknown: false }
}

impl IdentitySource for LocalUsers {
    fn source(&self) -> UserSource {
        UserSource::Local
    }

    fn authenticate<'a>(
        &'a self,
        username: &'a str,
        password: &'a SecretString,
    ) -> BoxFuture<'a, Result<Vouched, AuthFailure>> {
        Box::pin(async move {
            let user = self.verify(username, password).await?;
            if user.must_change_password {
                return Err(AuthFailure::PasswordChangeRequired);
            }
            Ok(vouched(user))
        })
    }

    fn refresh<'a>(&'a self, username: &'a str) -> BoxFuture<'a, Result<Option<Vouched>, AuthFailure>> {
        Box::pin(async move {
            match self.store.user(username).await.map_err(|_| AuthFailure::Unavailable)? {
                None => Ok(None),
                Some(user) if user.disabled => Err(AuthFailure::Disabled),
                Some(user) => Ok(Some(vouched(user))),
            }
        })
    }
}
