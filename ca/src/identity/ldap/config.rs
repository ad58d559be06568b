//! The `[ldap]` configuration: parsed from TOML as [`LdapToml`], then validated once into
//! [`LdapConfig`] (files read, filters parsed, combinations checked), so the source never
//! meets a raw string it would have to re-check.

use crate::error::CaError;
use rustls::ClientConfig;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The `[ldap]` table as written by the operator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapToml {
    /// `ldaps://host:636` or `ldap://host:389` (then with `starttls = true`).
    pub url: String,
    #[serde(default)]
    pub starttls: bool,
    /// PEM bundle of the CA(s) that may sign the directory's certificate. Required for TLS:
    /// the system store is not trusted implicitly.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Plain `ldap://` without StartTLS sends every password in the clear; only with this.
    #[serde(default)]
    pub danger_cleartext_passwords: bool,
    /// The service account that searches users and groups (never used to check a password).
    pub bind_dn: String,
    pub bind_password_file: PathBuf,
    pub user_base: String,
    /// With `{username}`, replaced by the RFC 4515-escaped username.
    #[serde(default = "default_user_filter")]
    pub user_filter: String,
    /// The attribute holding the login name; it must equal what the user typed, byte for byte.
    #[serde(default = "default_username_attribute")]
    pub username_attribute: String,
    /// Entries matching this filter are locked out, on top of the built-in checks
    /// (ppolicy's `pwdAccountLockedTime`, AD's "account disabled" bit), e.g.
    /// `(employeeType=suspended)`.
    #[serde(default)]
    pub disabled_filter: Option<String>,
    #[serde(default)]
    pub group_mode: GroupMode,
    /// Base of the group search (`group_mode = "search"`).
    #[serde(default)]
    pub group_base: Option<String>,
    #[serde(default)]
    pub group_kind: GroupKind,
    /// Overrides the object class part of the group search, e.g. `(objectClass=group)` for AD.
    #[serde(default)]
    pub group_filter: Option<String>,
    #[serde(default = "default_group_name_attribute")]
    pub group_name_attribute: String,
    #[serde(default = "default_member_of_attribute")]
    pub member_of_attribute: String,
    /// How many levels of groups-in-groups are followed; nesting deeper than this refuses
    /// the sign-in (an incomplete list never decides). 0: groups are not nested, direct
    /// groups only.
    #[serde(default = "default_nested_depth")]
    pub nested_depth: u32,
    /// Active Directory: one search with LDAP_MATCHING_RULE_IN_CHAIN instead of levels.
    #[serde(default)]
    pub ad_in_chain: bool,
    #[serde(default, with = "duration_opt")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "duration_opt")]
    pub operation_timeout: Option<Duration>,
    /// Directory connections open at once (pooled service connections plus user binds).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupMode {
    /// Read the user's `memberOf` (OpenLDAP memberof overlay, Active Directory).
    #[default]
    MemberOf,
    /// Search `group_base` for groups that list the user.
    Search,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum GroupKind {
    /// `member: <dn>`
    #[default]
    #[serde(rename = "groupOfNames")]
    GroupOfNames,
    /// `uniqueMember: <dn>`
    #[serde(rename = "groupOfUniqueNames")]
    GroupOfUniqueNames,
    /// `memberUid: <username>`; such groups cannot contain groups, so no nesting.
    #[serde(rename = "posixGroup")]
    PosixGroup,
}

impl GroupKind {
    pub(super) fn member_attribute(self) -> &'static str {
        match self {
            GroupKind::GroupOfNames => "member",
            GroupKind::GroupOfUniqueNames => "uniqueMember",
            GroupKind::PosixGroup => "memberUid",
        }
    }

    fn object_class_filter(self) -> &'static str {
        match self {
            GroupKind::GroupOfNames => "(objectClass=groupOfNames)",
            GroupKind::GroupOfUniqueNames => "(objectClass=groupOfUniqueNames)",
            GroupKind::PosixGroup => "(objectClass=posixGroup)",
        }
    }
}

fn default_user_filter() -> String {
    "(&(objectClass=inetOrgPerson)(uid={username}))".to_owned()
}
fn default_username_attribute() -> String {
    "uid".to_owned()
}
fn default_group_name_attribute() -> String {
    "cn".to_owned()
}
fn default_member_of_attribute() -> String {
    "memberOf".to_owned()
}
fn default_nested_depth() -> u32 {
    5
}
fn default_max_connections() -> usize {
    8
}

mod duration_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom)).transpose()
    }
}

/// How groups are found, already decided.
#[derive(Debug, Clone)]
pub(super) enum GroupLookup {
    MemberOf { attribute: String },
    Search { base: String, object_filter: String, kind: GroupKind, in_chain: bool },
}

/// A validated `[ldap]` table.
pub struct LdapConfig {
    pub(super) url: String,
    pub(super) starttls: bool,
    pub(super) tls: Option<Arc<ClientConfig>>,
    pub(super) bind_dn: String,
    pub(super) bind_password: SecretString,
    pub(super) user_base: String,
    pub(super) user_filter: String,
    pub(super) username_attribute: String,
    pub(super) disabled_filter: Option<String>,
    pub(super) groups: GroupLookup,
    pub(super) group_name_attribute: String,
    pub(super) nested_depth: u32,
    pub(super) connect_timeout: Duration,
    pub(super) operation_timeout: Duration,
    pub(super) max_connections: usize,
}

/// Deeper nesting than this is a configuration mistake, not an organisation chart.
const MAX_NESTED_DEPTH: u32 = 20;

fn err(field: &str, why: impl std::fmt::Display) -> CaError {
    CaError::Config(format!("ldap.{field}: {why}"))
}

fn check_filter(field: &str, filter: &str) -> Result<(), CaError> {
    if !filter.starts_with('(') || ldap3::parse_filter(filter).is_err() {
        return Err(err(field, format!("{filter:?} is not a valid LDAP filter (RFC 4515)")));
    }
    Ok(())
}

fn check_attribute(field: &str, name: &str) -> Result<(), CaError> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !ok {
        return Err(err(field, format!("{name:?} is not an attribute name")));
    }
    Ok(())
}

fn check_dn(field: &str, dn: &str) -> Result<(), CaError> {
    if dn.trim().is_empty() || !dn.contains('=') {
        return Err(err(field, format!("{dn:?} is not a distinguished name")));
    }
    Ok(())
}

/// `ldap://host[:port][/]` or `ldaps://…`; returns whether the URL is LDAPS.
fn check_url(url: &str) -> Result<bool, CaError> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("ldaps://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("ldap://") {
        (false, rest)
    } else {
        return Err(err("url", format!("{url:?} must start with ldaps:// or ldap://")));
    };
    let host_port = rest.strip_suffix('/').unwrap_or(rest);
    if host_port.is_empty() || host_port.contains(['/', '?', '@', ' ']) {
        return Err(err("url", format!("{url:?} must be scheme://host[:port] (no DN, user or query)")));
    }
    Ok(tls)
}

fn load_roots(path: &std::path::Path) -> Result<Arc<ClientConfig>, CaError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err("ca_file", format!("cannot read {}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| err("ca_file", format!("{}: {e}", path.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| err("ca_file", format!("{}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(err("ca_file", format!("{} holds no PEM certificate", path.display())));
    }
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| err("ca_file", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl LdapToml {
    /// Checks everything that can be checked without the directory, and reads the
    /// password and CA files. Errors name the offending `ldap.<field>`.
    pub fn validate(self) -> Result<LdapConfig, CaError> {
        let ldaps = check_url(&self.url)?;
        if ldaps && self.starttls {
            return Err(err("starttls", "StartTLS on an ldaps:// URL: choose one"));
        }
        let tls = if ldaps || self.starttls {
            let path = self.ca_file.as_deref().ok_or_else(|| err("ca_file", "required with ldaps:// or StartTLS"))?;
            Some(load_roots(path)?)
        } else {
            if !self.danger_cleartext_passwords {
                return Err(err(
                    "url",
                    "ldap:// without StartTLS sends passwords in the clear; use ldaps://, starttls = true, \
                     or set danger_cleartext_passwords = true",
                ));
            }
            if self.ca_file.is_some() {
                return Err(err("ca_file", "set, but the connection uses no TLS"));
            }
            None
        };
        check_dn("bind_dn", &self.bind_dn)?;
        let password = std::fs::read_to_string(&self.bind_password_file).map_err(|e| {
            err("bind_password_file", format!("cannot read {}: {e}", self.bind_password_file.display()))
        })?;
        let bind_password = SecretString::from(password.trim_end_matches(['\n', '\r']).to_owned());
        if bind_password.expose_secret().is_empty() {
            // An empty simple-bind password is an anonymous bind.
            return Err(err("bind_password_file", format!("{} is empty", self.bind_password_file.display())));
        }
        check_dn("user_base", &self.user_base)?;
        if !self.user_filter.contains("{username}") {
            return Err(err("user_filter", "must contain {username}"));
        }
        check_filter("user_filter", &self.user_filter.replace("{username}", "x"))?;
        check_attribute("username_attribute", &self.username_attribute)?;
        if let Some(f) = &self.disabled_filter {
            check_filter("disabled_filter", f)?;
        }
        check_attribute("group_name_attribute", &self.group_name_attribute)?;
        check_attribute("member_of_attribute", &self.member_of_attribute)?;
        if self.nested_depth > MAX_NESTED_DEPTH {
            return Err(err("nested_depth", format!("at most {MAX_NESTED_DEPTH}")));
        }
        let groups = match self.group_mode {
            GroupMode::MemberOf => {
                if self.ad_in_chain {
                    return Err(err("ad_in_chain", "needs group_mode = \"search\""));
                }
                if self.group_base.is_some() || self.group_filter.is_some() {
                    return Err(err("group_base", "group_base and group_filter are for group_mode = \"search\""));
                }
                GroupLookup::MemberOf { attribute: self.member_of_attribute }
            }
            GroupMode::Search => {
                let base = self.group_base.ok_or_else(|| err("group_base", "required with group_mode = \"search\""))?;
                check_dn("group_base", &base)?;
                let object_filter =
                    self.group_filter.unwrap_or_else(|| self.group_kind.object_class_filter().to_owned());
                check_filter("group_filter", &object_filter)?;
                if self.ad_in_chain && self.group_kind == GroupKind::PosixGroup {
                    return Err(err("ad_in_chain", "posixGroup members are names, not DNs"));
                }
                GroupLookup::Search { base, object_filter, kind: self.group_kind, in_chain: self.ad_in_chain }
            }
        };
        let connect_timeout = self.connect_timeout.unwrap_or(Duration::from_secs(5));
        let operation_timeout = self.operation_timeout.unwrap_or(Duration::from_secs(10));
        if connect_timeout.is_zero() || operation_timeout.is_zero() {
            return Err(err("connect_timeout", "timeouts must be positive"));
        }
        if !(1..=256).contains(&self.max_connections) {
            return Err(err("max_connections", "between 1 and 256"));
        }
        Ok(LdapConfig {
            url: self.url,
            starttls: self.starttls,
            tls,
            bind_dn: self.bind_dn,
            bind_password,
            user_base: self.user_base,
            user_filter: self.user_filter,
            username_attribute: self.username_attribute,
            disabled_filter: self.disabled_filter,
            groups,
            group_name_attribute: self.group_name_attribute,
            nested_depth: self.nested_depth,
            connect_timeout,
            operation_timeout,
            max_connections: self.max_connections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(dir: &std::path::Path) -> LdapToml {
        let pw = dir.join("pw");
        std::fs::write(&pw, "service-secret\n").unwrap();
        toml::from_str(&format!(
            "url = \"ldap://127.0.0.1:3890\"\ndanger_cleartext_passwords = true\nbind_dn = \"cn=svc,dc=example,dc=org\"\n\
             bind_password_file = \"{}\"\nuser_base = \"ou=people,dc=example,dc=org\"\n",
            pw.display()
        ))
        .unwrap()
    }

    fn refused(t: LdapToml, field: &str) {
        match t.validate() {
            Err(CaError::Config(msg)) => assert!(msg.starts_with(&format!("ldap.{field}")), "{msg}"),
            Err(other) => panic!("wrong error {other}"),
            Ok(_) => panic!("accepted a config with a bad {field}"),
        }
    }

    #[test]
    fn defaults_validate() {
        let dir = tempfile::tempdir().unwrap();
        let c = base(dir.path()).validate().unwrap();
        assert_eq!(c.bind_password.expose_secret(), "service-secret");
        assert_eq!(c.nested_depth, 5);
        assert!(matches!(c.groups, GroupLookup::MemberOf { .. }));
    }

    #[test]
    fn bad_values_are_refused_with_the_field_name() {
        let dir = tempfile::tempdir().unwrap();
        let b = || base(dir.path());
        refused(LdapToml { url: "http://x".into(), ..b() }, "url");
        refused(LdapToml { url: "ldap://h/dc=x??sub".into(), ..b() }, "url");
        refused(LdapToml { danger_cleartext_passwords: false, ..b() }, "url");
        refused(LdapToml { starttls: true, ..b() }, "ca_file");
        refused(LdapToml { url: "ldaps://h".into(), starttls: true, ..b() }, "starttls");
        refused(LdapToml { user_filter: "(uid=alice)".into(), ..b() }, "user_filter");
        refused(LdapToml { user_filter: "(&(uid={username})".into(), ..b() }, "user_filter");
        refused(LdapToml { disabled_filter: Some("locked".into()), ..b() }, "disabled_filter");
        refused(LdapToml { group_mode: GroupMode::Search, ..b() }, "group_base");
        refused(LdapToml { ad_in_chain: true, ..b() }, "ad_in_chain");
        refused(LdapToml { nested_depth: 1000, ..b() }, "nested_depth");
        refused(LdapToml { group_name_attribute: "cn)(x".into(), ..b() }, "group_name_attribute");
        refused(LdapToml { bind_password_file: dir.path().join("missing"), ..b() }, "bind_password_file");
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        refused(LdapToml { bind_password_file: dir.path().join("empty"), ..b() }, "bind_password_file");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<LdapToml>("url = \"ldaps://h\"\nbind_dn = \"cn=a\"\nbind_pasword_file = \"x\"\n");
        assert!(e.is_err());
    }
}
