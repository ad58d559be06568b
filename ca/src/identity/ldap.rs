//! Users and groups from an LDAP directory (OpenLDAP, Active Directory, …).
//!
//! Guarantees:
//! - **Search, then bind.** The service account finds exactly one entry for the username
//!   (zero or several: "unknown user"); the password is checked by a simple bind as that
//!   entry's DN on a connection of its own. The service account never checks passwords.
//! - **An empty password never reaches the directory**: a simple bind with an empty
//!   password is an anonymous bind, which "succeeds".
//! - **The username cannot change the filter**: it is escaped per RFC 4515 before it is
//!   put into `user_filter`; names with control characters (NUL included) or over 256
//!   bytes are refused as unknown without asking the directory; and the entry's
//!   `username_attribute` must equal the typed name exactly, so `ALICE` or `al*ce` never
//!   becomes `alice`.
//! - **Locked accounts** are refused before any password bind: ppolicy's
//!   `pwdAccountLockedTime`, Active Directory's `userAccountControl` "account disabled"
//!   bit (read always, so the shipped config is safe without a filter), and whatever the
//!   optional `disabled_filter` matches.
//! - **"Must change password"** (ppolicy `pwdReset: TRUE`, AD `pwdLastSet: 0`) is refused
//!   after the password bind succeeded — [`AuthFailure::PasswordChangeRequired`], whose
//!   message tells the user to change it — and refused by `refresh` as well.
//! - **Group lists are complete or nothing**: a cut-off group search or nesting deeper
//!   than `nested_depth` is [`AuthFailure::MembershipIncomplete`] (see `groups`).
//! - **No fallback**: when the directory cannot be asked (down, timeout, service account
//!   refused), the answer is [`AuthFailure::Unavailable`], which lets nobody in.
//! - `refresh` re-reads the user and groups with the service account, so an API session
//!   loses a group (and the principals it gave) at its next request.

mod config;
mod conn;
mod groups;

pub use config::{GroupKind, GroupMode, LdapConfig, LdapToml};

use super::{AuthFailure, BoxFuture, IdentitySource, Vouched};
use conn::{BindOutcome, DirError, Pool};
use ldap3::{Scope, SearchEntry, ldap_escape};
use portcullis_policies::{Identity, UserSource, account_name};
use secrecy::{ExposeSecret, SecretString};

/// Longer names are refused without a search (RFC 4515 escaping can triple the length).
const MAX_USERNAME_BYTES: usize = 256;

pub struct LdapSource {
    config: LdapConfig,
    pool: Pool,
}

/// The one entry a username resolved to.
struct UserEntry {
    dn: String,
    username: String,
    /// The entry's stable identity ([`subject_of`]).
    subject: String,
    member_of: Vec<String>,
    /// `member_of` holds only a range of the values (see [`ranged`]).
    member_of_partial: bool,
    state: AccountState,
}

/// What the directory's own account attributes say, whatever the configured filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AccountState {
    Usable,
    Locked,
    MustChangePassword,
}

/// ppolicy (OpenLDAP): locked since / must change. Operational, so asked for by name.
const PWD_ACCOUNT_LOCKED_TIME: &str = "pwdAccountLockedTime";
const PWD_RESET: &str = "pwdReset";
/// Active Directory: flags (bit 0x2 = ACCOUNTDISABLE) and the last password change (0 =
/// must change at next logon).
const USER_ACCOUNT_CONTROL: &str = "userAccountControl";
const PWD_LAST_SET: &str = "pwdLastSet";
const UAC_ACCOUNTDISABLE: u64 = 0x2;
/// Active Directory: the flags it computes (constructed, so asked for by name) — locked
/// out now (0x10; `lockoutTime` alone stays set after the lockout ran out) and password
/// expired (0x800000) — and when the account expires.
const UAC_COMPUTED: &str = "msDS-User-Account-Control-Computed";
const UAC_LOCKOUT: u64 = 0x10;
const UAC_PASSWORD_EXPIRED: u64 = 0x80_0000;
const ACCOUNT_EXPIRES: &str = "accountExpires";
/// The entry no refusal's bind finds (see `LdapSource::bind_as_nobody`).
const NOBODY_RDN: &str = "portcullis-no-such-entry";

/// `accountExpires`: 100-nanosecond intervals since 1601-01-01 UTC; 0 and the largest
/// value mean never. `None`: never; `Some(unix seconds)` otherwise, `Some(0)` for a value
/// that does not read (it fails closed).
fn account_expiry(value: &str) -> Option<u64> {
    const NEVER: u64 = i64::MAX as u64;
    const SECONDS_1601_TO_1970: u64 = 11_644_473_600;
    match value.trim().parse::<u64>() {
        Ok(0 | NEVER) => None,
        Ok(ticks) => Some((ticks / 10_000_000).saturating_sub(SECONDS_1601_TO_1970)),
        Err(_) => Some(0),
    }
}

fn account_state(entry: &SearchEntry, now: u64) -> AccountState {
    let flags = |name| attrs(entry, name).map(|v| v.trim().parse::<u64>().ok());
    // Unreadable flags fail closed.
    let locked = attrs(entry, PWD_ACCOUNT_LOCKED_TIME).next().is_some()
        || flags(USER_ACCOUNT_CONTROL).any(|f| f.is_none_or(|f| f & UAC_ACCOUNTDISABLE != 0))
        || flags(UAC_COMPUTED).any(|f| f.is_none_or(|f| f & UAC_LOCKOUT != 0))
        || attrs(entry, ACCOUNT_EXPIRES).filter_map(account_expiry).any(|expiry| expiry <= now);
    if locked {
        return AccountState::Locked;
    }
    let must_change = attrs(entry, PWD_RESET).any(|v| v.trim().eq_ignore_ascii_case("TRUE"))
        || attrs(entry, PWD_LAST_SET).any(|v| v.trim() == "0")
        || flags(UAC_COMPUTED).any(|f| f.is_some_and(|f| f & UAC_PASSWORD_EXPIRED != 0));
    if must_change { AccountState::MustChangePassword } else { AccountState::Usable }
}

/// OpenLDAP's `entryUUID` (operational, so asked for by name) and Active Directory's
/// `objectGUID` (binary): what stays the same when an entry is renamed and changes when
/// it is deleted and recreated under the same name.
const ENTRY_UUID: &str = "entryUUID";
const OBJECT_GUID: &str = "objectGUID";

/// The stable subject of an entry: its UUID or GUID, else its DN (a directory with
/// neither still tells a moved entry from the old one).
fn subject_of(entry: &SearchEntry) -> String {
    if let Some(uuid) = attr(entry, ENTRY_UUID) {
        return format!("entryUUID:{}", uuid.to_ascii_lowercase());
    }
    let guid = entry.bin_attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(OBJECT_GUID)).and_then(|(_, v)| v.first());
    match guid {
        Some(bytes) => format!("objectGUID:{}", hex::encode(bytes)),
        None => format!("dn:{}", entry.dn.to_ascii_lowercase()),
    }
}

/// Values of an attribute, whatever case the server used for its name.
fn attrs<'e>(entry: &'e SearchEntry, name: &str) -> impl Iterator<Item = &'e str> {
    entry
        .attrs
        .iter()
        .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.iter().map(String::as_str))
}

/// Whether the server sent only a range of the attribute's values (Active Directory's
/// ranged retrieval, `memberOf;range=0-1499`): the rest would need more reads, so a list
/// built from it is incomplete.
fn ranged(entry: &SearchEntry, name: &str) -> bool {
    entry.attrs.keys().any(|k| {
        k.split_once(';').is_some_and(|(attr, option)| {
            attr.eq_ignore_ascii_case(name) && option.get(..6).is_some_and(|o| o.eq_ignore_ascii_case("range="))
        })
    })
}

/// The first value of an attribute, if printable.
fn attr<'e>(entry: &'e SearchEntry, name: &str) -> Option<&'e str> {
    attrs(entry, name).find(|v| !v.is_empty() && !v.chars().any(char::is_control))
}

/// Names the directory is never asked about.
fn plausible_username(username: &str) -> bool {
    !username.is_empty() && username.len() <= MAX_USERNAME_BYTES && !username.chars().any(char::is_control)
}

fn unavailable(what: &'static str, e: DirError) -> AuthFailure {
    if let DirError::Incomplete(_) = e {
        tracing::warn!(error = %e, "LDAP {what}: the directory did not answer completely; refusing");
        return AuthFailure::MembershipIncomplete;
    }
    tracing::warn!(error = %e, "LDAP {what} failed; refusing (directory unavailable)");
    AuthFailure::Unavailable
}

impl LdapSource {
    /// No connection is made here: a directory that is down at start-up refuses logins
    /// until it is back, it does not stop the CA.
    pub fn new(config: LdapConfig) -> LdapSource {
        let pool = Pool::new(&config);
        LdapSource { config, pool }
    }

    /// Finds the user's entry and whether it is locked. `Ok(None)`: no such user (or
    /// several entries, which is a directory mistake nobody may profit from).
    async fn find_user(&self, username: &str) -> Result<Option<(UserEntry, bool)>, AuthFailure> {
        if !plausible_username(username) {
            return Ok(None);
        }
        let filter = self.config.user_filter.replace("{username}", &ldap_escape(username));
        let mut wanted = vec![
            self.config.username_attribute.as_str(),
            PWD_ACCOUNT_LOCKED_TIME,
            PWD_RESET,
            USER_ACCOUNT_CONTROL,
            PWD_LAST_SET,
            UAC_COMPUTED,
            ACCOUNT_EXPIRES,
            ENTRY_UUID,
            OBJECT_GUID,
        ];
        if let config::GroupLookup::MemberOf { attribute } = &self.config.groups {
            wanted.push(attribute.as_str());
        }
        let mut conn = self.pool.service().await.map_err(|e| unavailable("service connection", e))?;
        // A size limit of 2 is enough to tell "one" from "several".
        let mut entries = conn
            .search(&self.config.user_base, Scope::Subtree, &filter, &wanted, 2)
            .await
            .map_err(|e| unavailable("user search", e))?;
        if entries.len() > 1 {
            tracing::warn!(?username, "several directory entries match this username; refusing");
            return Ok(None);
        }
        let Some(entry) = entries.pop() else { return Ok(None) };
        if entry.dn.is_empty() || !attrs(&entry, &self.config.username_attribute).any(|v| v == username) {
            return Ok(None);
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let state = account_state(&entry, now);
        let disabled = state == AccountState::Locked
            || match &self.config.disabled_filter {
                None => false,
                Some(filter) => !conn
                    .search(&entry.dn, Scope::Base, filter, &["1.1"], 1)
                    .await
                    .map_err(|e| unavailable("disabled check", e))?
                    .is_empty(),
            };
        let (member_of, member_of_partial) = match &self.config.groups {
            config::GroupLookup::MemberOf { attribute } => {
                (attrs(&entry, attribute).map(str::to_owned).collect(), ranged(&entry, attribute))
            }
            config::GroupLookup::Search { .. } => (Vec::new(), false),
        };
        let subject = subject_of(&entry);
        let user =
            UserEntry { dn: entry.dn, username: username.to_owned(), subject, member_of, member_of_partial, state };
        Ok(Some((user, disabled)))
    }

    /// A refusal that needs no bind (no such user, a locked one) still makes one, as a DN
    /// that names nobody, so it takes as long as a wrong password: the time a refusal
    /// takes must not tell which names the directory holds. The answer is not read; the
    /// password goes only where a real user's would.
    async fn bind_as_nobody(&self, password: &SecretString) {
        let nobody = format!("cn={NOBODY_RDN},{}", self.config.user_base);
        let _ = self.pool.user_bind(&nobody, password).await;
    }

    async fn identity(&self, user: UserEntry) -> Result<Vouched, AuthFailure> {
        if user.member_of_partial {
            let e = DirError::Incomplete("the user's memberOf came as a range of its values".to_owned());
            return Err(unavailable("group lookup", e));
        }
        let mut conn = self.pool.service().await.map_err(|e| unavailable("service connection", e))?;
        let member = groups::Member { dn: &user.dn, username: &user.username, member_of: user.member_of };
        let groups = groups::resolve(
            &mut conn,
            &self.config.groups,
            &self.config.group_name_attribute,
            self.config.nested_depth,
            member,
        )
        .await
        .map_err(|e| unavailable("group lookup", e))?;
        let identity = Identity {
            username: account_name(UserSource::Ldap, &user.username),
            groups,
            source: UserSource::Ldap.as_str().to_owned(),
        };
        Ok(Vouched { identity, subject: user.subject, authenticated_at: None, groups_unknown: false })
    }
}

impl IdentitySource for LdapSource {
    fn source(&self) -> UserSource {
        UserSource::Ldap
    }

    fn authenticate<'a>(
        &'a self,
        username: &'a str,
        password: &'a SecretString,
    ) -> BoxFuture<'a, Result<Vouched, AuthFailure>> {
        Box::pin(async move {
            if password.expose_secret().is_empty() {
                return Err(AuthFailure::EmptyPassword);
            }
            let Some((user, disabled)) = self.find_user(username).await? else {
                self.bind_as_nobody(password).await;
                return Err(AuthFailure::UnknownUser);
            };
            if disabled {
                self.bind_as_nobody(password).await;
                return Err(AuthFailure::Disabled);
            }
            match self.pool.user_bind(&user.dn, password).await {
                Ok(BindOutcome::Accepted) => {}
                Ok(BindOutcome::Refused(rc)) => {
                    tracing::debug!(rc, "LDAP password bind refused");
                    return Err(AuthFailure::BadPassword);
                }
                Err(e) => return Err(unavailable("password bind", e)),
            }
            // Checked after the bind: only someone who knows the password learns it must
            // be changed.
            if user.state == AccountState::MustChangePassword {
                return Err(AuthFailure::PasswordChangeRequired);
            }
            self.identity(user).await
        })
    }

    fn refresh<'a>(&'a self, username: &'a str) -> BoxFuture<'a, Result<Option<Vouched>, AuthFailure>> {
        Box::pin(async move {
            match self.find_user(username).await? {
                None => Ok(None),
                Some((_, true)) => Err(AuthFailure::Disabled),
                // An administrator reset the password since sign-in: the session ends too.
                Some((user, false)) if user.state == AccountState::MustChangePassword => {
                    Err(AuthFailure::PasswordChangeRequired)
                }
                Some((user, false)) => self.identity(user).await.map(Some),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implausible_usernames_are_not_asked_about() {
        assert!(plausible_username("alice"));
        assert!(plausible_username("*)(uid=*"), "escaped, not refused: the directory finds nothing");
        assert!(!plausible_username(""));
        assert!(!plausible_username("alice\0"));
        assert!(!plausible_username("alice\n"));
        assert!(!plausible_username("alice\u{7f}"));
        assert!(!plausible_username(&"a".repeat(257)));
        assert!(plausible_username(&"a".repeat(256)));
    }

    fn entry(attributes: &[(&str, &str)]) -> SearchEntry {
        let mut attrs = std::collections::HashMap::new();
        for (k, v) in attributes {
            attrs.entry((*k).to_owned()).or_insert_with(Vec::new).push((*v).to_owned());
        }
        SearchEntry { dn: "uid=a,dc=x".into(), attrs, bin_attrs: Default::default() }
    }

    #[test]
    fn account_state_reads_ppolicy_and_active_directory() {
        use AccountState::*;
        let account_state = |e: &SearchEntry| account_state(e, 1_800_000_000);
        assert_eq!(account_state(&entry(&[("uid", "a")])), Usable);
        assert_eq!(account_state(&entry(&[("pwdAccountLockedTime", "000001010000Z")])), Locked);
        assert_eq!(account_state(&entry(&[("pwdreset", "TRUE")])), MustChangePassword);
        assert_eq!(account_state(&entry(&[("pwdReset", "FALSE")])), Usable);
        assert_eq!(account_state(&entry(&[("pwdLastSet", "0")])), MustChangePassword);
        assert_eq!(account_state(&entry(&[("pwdLastSet", "133497000000000000")])), Usable);
        assert_eq!(account_state(&entry(&[("userAccountControl", "512")])), Usable);
        assert_eq!(account_state(&entry(&[("userAccountControl", "514")])), Locked);
        assert_eq!(account_state(&entry(&[("userAccountControl", "garbage")])), Locked, "unreadable flags fail closed");
        // Locked wins over must-change: the password is never tried.
        assert_eq!(account_state(&entry(&[("userAccountControl", "514"), ("pwdLastSet", "0")])), Locked);
        // What AD computes: locked out now, password expired.
        assert_eq!(account_state(&entry(&[("msDS-User-Account-Control-Computed", "0")])), Usable);
        assert_eq!(account_state(&entry(&[("msDS-User-Account-Control-Computed", "16")])), Locked);
        assert_eq!(account_state(&entry(&[("msDS-User-Account-Control-Computed", "8388608")])), MustChangePassword);
        assert_eq!(account_state(&entry(&[("msDS-User-Account-Control-Computed", "x")])), Locked);
        // accountExpires: 1_800_000_000 is 2027-01-15; ticks of 100 ns since 1601.
        let ticks = |unix: u64| ((unix + 11_644_473_600) * 10_000_000).to_string();
        for never in ["0", "9223372036854775807"] {
            assert_eq!(account_state(&entry(&[("accountExpires", never)])), Usable, "{never}");
        }
        assert_eq!(account_state(&entry(&[("accountExpires", &ticks(1_800_000_001))])), Usable);
        assert_eq!(account_state(&entry(&[("accountExpires", &ticks(1_800_000_000))])), Locked, "expired now");
        assert_eq!(account_state(&entry(&[("accountExpires", &ticks(1_700_000_000))])), Locked);
        assert_eq!(account_state(&entry(&[("accountExpires", "soon")])), Locked, "unreadable fails closed");
    }

    #[test]
    fn ranged_values_are_noticed() {
        assert!(!ranged(&entry(&[("memberOf", "cn=a")]), "memberOf"));
        assert!(ranged(&entry(&[("memberOf;range=0-1499", "cn=a")]), "memberOf"));
        assert!(ranged(&entry(&[("MEMBEROF;Range=0-*", "cn=a")]), "memberOf"));
        assert!(!ranged(&entry(&[("member;range=0-1499", "cn=a")]), "memberOf"));
        assert!(!ranged(&entry(&[("memberOf;binary", "x")]), "memberOf"));
    }

    #[tokio::test]
    async fn empty_password_and_bad_names_never_reach_the_directory() {
        // Port 9 on loopback: nothing listens, so any attempt to ask would be `Unavailable`.
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "x").unwrap();
        let config: LdapToml = toml::from_str(&format!(
            "url = \"ldap://127.0.0.1:9\"\ndanger_cleartext_passwords = true\nbind_dn = \"cn=svc,dc=example,dc=org\"\n\
             bind_password_file = \"{}\"\nuser_base = \"dc=example,dc=org\"\nconnect_timeout = \"2s\"\n",
            pw.display()
        ))
        .unwrap();
        let source = LdapSource::new(config.validate().unwrap());
        let pass = SecretString::from("secret");
        assert_eq!(
            source.authenticate("alice", &SecretString::from("")).await.unwrap_err(),
            AuthFailure::EmptyPassword
        );
        assert_eq!(source.authenticate("al\0ice", &pass).await.unwrap_err(), AuthFailure::UnknownUser);
        assert_eq!(source.authenticate(&"a".repeat(300), &pass).await.unwrap_err(), AuthFailure::UnknownUser);
        assert!(source.refresh("bob\r").await.unwrap().is_none());
        // And the directory really is unreachable, so the answers above did not come from it.
        assert_eq!(source.authenticate("alice", &pass).await.unwrap_err(), AuthFailure::Unavailable);
    }
}
