//! Who is asking: identity sources turn credentials into an [`Identity`].
//!
//! Every password source (local users, LDAP) implements [`IdentitySource`] and answers
//! with an account name, groups and a stable subject ([`Vouched`]), or an
//! [`AuthFailure`] whose reason code goes to the audit trail while the peer only ever
//! hears "invalid username or password". OIDC signs in through its own flows and ends in
//! the same place.

mod ldap;
mod local;
pub mod oidc;

pub use ldap::{GroupKind, GroupMode, LdapConfig, LdapSource, LdapToml};
pub(crate) use local::vouched as local_vouched;
pub use local::{LocalUsers, hash_password};

use portcullis_policies::{Identity, UserSource};
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

/// An identity a source vouched for, with the stable subject behind its account name:
/// the local user's name, an LDAP entry's `entryUUID` (`objectGUID` on Active Directory,
/// the DN when the directory has neither), an IdP's issuer and `sub`. The CA holds each
/// directory or IdP account name for one subject (see `Ca::claim_account`), so a
/// recreated entry or a renamed IdP account never inherits someone else's name.
#[derive(Debug, Clone)]
pub struct Vouched {
    /// `username` is the account name (`alice`, `ldap:alice`; [`portcullis_policies::account`]).
    pub identity: Identity,
    pub subject: String,
    /// When the user proved who they are, if earlier than now: an identity provider's
    /// `auth_time` (its own sign-in may predate ours). `None`: now (a password typed).
    pub authenticated_at: Option<u64>,
    /// The identity provider stated no groups (see `SessionRow::groups_unknown`).
    pub groups_unknown: bool,
}

pub trait IdentitySource: Send + Sync {
    fn source(&self) -> UserSource;

    /// Checks `name`'s password; `name` is the name part of the account (`alice`, never
    /// `ldap:alice`) and already in the one user-name alphabet.
    fn authenticate<'a>(
        &'a self,
        name: &'a str,
        password: &'a SecretString,
    ) -> BoxFuture<'a, Result<Vouched, AuthFailure>>;

    /// The current groups of a user this source authenticated earlier, so an API session
    /// sees group removals and account locks at its next request. `Ok(None)`: the user
    /// no longer exists; `Err(Disabled)`: locked.
    fn refresh<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Vouched>, AuthFailure>>;
}
