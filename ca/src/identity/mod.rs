//! Who is asking: identity sources turn credentials into an [`Identity`].
//!
//! Every source (local users now; LDAP and OIDC next) implements [`IdentitySource`] and
//! answers with a username and groups, or an [`AuthFailure`] whose reason code goes to
//! the audit trail while the peer only ever hears "invalid username or password".

mod ldap;
mod local;
pub mod oidc;

pub use ldap::{GroupKind, GroupMode, LdapConfig, LdapSource, LdapToml};
pub use local::{LocalUsers, hash_password};

use portcullis_policies::Identity;
use secrecy::SecretString;
use std::future::Future;
use std::pin::Pin;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    EmptyPassword,
    UnknownUser,
    BadPassword,
    Disabled,
    /// The directory could not be asked: never a reason to let anyone in.
    Unavailable,
    /// Too many sign-ins are being checked at once; not the user's fault, not counted
    /// as a failure.
    Busy,
    /// The password is right, but the directory says it must be changed first (OpenLDAP
    /// ppolicy `pwdReset`, Active Directory `pwdLastSet = 0`). Only ever answered after a
    /// successful password check, so it tells nobody else anything.
    PasswordChangeRequired,
    /// The directory could not list the user's groups completely (a size, time or
    /// administrative limit, a referral, nesting deeper than allowed): an incomplete
    /// list must never decide, so nobody is let in on it.
    MembershipIncomplete,
}

impl AuthFailure {
    pub fn code(self) -> &'static str {
        match self {
            AuthFailure::EmptyPassword => "empty_password",
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::BadPassword => "bad_credentials",
            AuthFailure::Disabled => "user_disabled",
            AuthFailure::Unavailable => "directory_unavailable",
            AuthFailure::Busy => "busy",
            AuthFailure::PasswordChangeRequired => "password_change_required",
            AuthFailure::MembershipIncomplete => "membership_incomplete",
        }
    }
}

pub trait IdentitySource: Send + Sync {
    /// The source's name as it appears in identities, key ids and audit records.
    fn name(&self) -> &'static str;

    fn authenticate<'a>(
        &'a self,
        username: &'a str,
        password: &'a SecretString,
    ) -> BoxFuture<'a, Result<Identity, AuthFailure>>;

    /// The current groups of a user this source authenticated earlier, so an API session
    /// sees group removals and account locks at its next request. `Ok(None)`: the user
    /// no longer exists; `Err(Disabled)`: locked.
    fn refresh<'a>(&'a self, username: &'a str) -> BoxFuture<'a, Result<Option<Identity>, AuthFailure>>;
}
