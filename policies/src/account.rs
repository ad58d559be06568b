//! Who a user is: an **account name** that is unique across identity sources.
//!
//! A local user is known by a bare name (`alice`); a directory or IdP user by the source
//! and the name the source vouches for (`ldap:alice`, `oidc:alice@example.com`). The
//! account name is what `user = …` bindings and deny statements match, what certificates
//! carry as their key id, what caps, revocations and the audit trail are keyed by. So an
//! IdP account that calls itself `alice` is never the local `alice`, and disabling or
//! revoking one never touches the other.
//!
//! One alphabet for the name part, whatever the source ([`valid_user_name`]): ASCII
//! letters, digits, `.`, `_`, `-` and `@`, starting with a letter or digit, at most 64
//! bytes. Names outside it (`star*`, `paren)(`, `back\slash`, non-ASCII) are refused at
//! sign-in, not mapped: a mapping would let two directory names meet in one account.
//! The `:` is never part of a name, so `ldap:alice` cannot be created as a local user.

use std::fmt;

/// Where an identity comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UserSource {
    Local,
    Ldap,
    Oidc,
}

impl UserSource {
    pub const ALL: [UserSource; 3] = [UserSource::Local, UserSource::Ldap, UserSource::Oidc];

    pub const fn as_str(self) -> &'static str {
        match self {
            UserSource::Local => "local",
            UserSource::Ldap => "ldap",
            UserSource::Oidc => "oidc",
        }
    }

    pub fn parse(s: &str) -> Option<UserSource> {
        UserSource::ALL.into_iter().find(|source| source.as_str() == s)
    }
}

impl fmt::Display for UserSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest name part of an account.
pub const MAX_USER_NAME: usize = 64;

/// [`valid_user_name`] in words, for every message that refuses a name.
pub const USER_NAME_RULE: &str =
    "letters, digits, '.', '_', '-' and '@', starting with a letter or digit, at most 64 bytes";

/// The one alphabet of user names, for every source (see the module documentation).
pub fn valid_user_name(name: &str) -> bool {
    name.len() <= MAX_USER_NAME
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// The account name of `name` at `source`: bare for local users, `source:name` otherwise.
pub fn account_name(source: UserSource, name: &str) -> String {
    match source {
        UserSource::Local => name.to_owned(),
        other => format!("{other}:{name}"),
    }
}

/// A policy's group name split into the source it is qualified with and the group
/// (`ldap:admins` → `(Ldap, "admins")`); `None` for a bare name.
pub(crate) fn qualified_group(named: &str) -> Option<(UserSource, &str)> {
    let (source, group) = named.split_once(':')?;
    Some((UserSource::parse(source)?, group))
}

/// Splits an account name into its source and name; `None` when it is not one.
pub fn parse_account(account: &str) -> Option<(UserSource, &str)> {
    let (source, name) = match account.split_once(':') {
        None => (UserSource::Local, account),
        Some((prefix, name)) => match UserSource::parse(prefix) {
            Some(UserSource::Local) | None => return None,
            Some(source) => (source, name),
        },
    };
    valid_user_name(name).then_some((source, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        for ok in ["alice", "a", "alice.smith", "alice@example.com", "svc_bot-2", "0day"] {
            assert!(valid_user_name(ok), "{ok}");
        }
        for bad in ["", "star*", "paren)(", "back\\slash", "zoë", "al ice", ".hidden", "-x", "a:b", "@x", "a\0"] {
            assert!(!valid_user_name(bad), "{bad:?}");
        }
        assert!(valid_user_name(&"a".repeat(64)) && !valid_user_name(&"a".repeat(65)));
    }

    #[test]
    fn accounts() {
        assert_eq!(parse_account("alice"), Some((UserSource::Local, "alice")));
        assert_eq!(parse_account("ldap:alice"), Some((UserSource::Ldap, "alice")));
        assert_eq!(parse_account("oidc:a@example.com"), Some((UserSource::Oidc, "a@example.com")));
        for bad in ["local:alice", "ldap:", "nis:alice", "ldap:star*", "ldap:oidc:alice", "node:pve01", "service:a:b"] {
            assert_eq!(parse_account(bad), None, "{bad}");
        }
    }

    proptest! {
        /// Account names are a bijection with (source, name): two identities from
        /// different sources, or with different names, never share an account.
        #[test]
        fn account_names_round_trip_and_never_collide(
            a in "[a-z0-9][a-z0-9.@_-]{0,10}", b in "[a-z0-9][a-z0-9.@_-]{0,10}",
            sa in 0usize..3, sb in 0usize..3,
        ) {
            let (sa, sb) = (UserSource::ALL[sa], UserSource::ALL[sb]);
            let (x, y) = (account_name(sa, &a), account_name(sb, &b));
            prop_assert_eq!(parse_account(&x), Some((sa, a.as_str())));
            prop_assert_eq!(x == y, sa == sb && a == b);
        }
    }
}
