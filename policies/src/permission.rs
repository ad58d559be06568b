//! The closed set of control-plane permissions.
//!
//! The set is closed on purpose: an unknown permission string in a policy file is a load
//! error, so a typo can never silently grant (or fail to deny) something.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A control-plane permission that a role may grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Permission {
    /// Obtain a user certificate.
    CertsIssue,
    /// Revoke certificates.
    CertsRevoke,
    /// Open a browser console on a device.
    DevicesConsoleOpen,
    /// Terminate other users' sessions (on the devices the role's targets match, when it
    /// has targets).
    SessionsKill,
    /// Manage local users.
    UsersManage,
    /// Manage CA keys and rotation.
    CaManage,
    /// Read the audit trail.
    AuditRead,
    /// Change the policy.
    PolicyManage,
    /// Enroll, change and retire nodes (those the role's targets match, when it has
    /// targets).
    NodesManage,
    /// Store, rotate and remove API secrets (e.g. Proxmox VE tokens); never read them.
    SecretsManage,
    /// List, play back and export session recordings (every playback is audited); of the
    /// devices the role's targets match, when it has targets.
    RecordingsRead,
}

impl Permission {
    /// Every permission, in declaration order.
    pub const ALL: &'static [Permission] = &[
        Permission::CertsIssue,
        Permission::CertsRevoke,
        Permission::DevicesConsoleOpen,
        Permission::SessionsKill,
        Permission::UsersManage,
        Permission::CaManage,
        Permission::AuditRead,
        Permission::PolicyManage,
        Permission::NodesManage,
        Permission::SecretsManage,
        Permission::RecordingsRead,
    ];

    /// Whether it controls Portcullis itself rather than reaching devices: all but
    /// `certs.issue` and `devices.console.open`.
    pub fn is_administrative(self) -> bool {
        !matches!(self, Permission::CertsIssue | Permission::DevicesConsoleOpen)
    }

    /// Whether a role's `targets` limit it to the devices they match (certificates and
    /// consoles reach only there; sessions killed, recordings read and nodes managed
    /// only there). The others hold everywhere, whatever the role's targets.
    pub fn scoped_by_targets(self) -> bool {
        matches!(
            self,
            Permission::CertsIssue
                | Permission::DevicesConsoleOpen
                | Permission::SessionsKill
                | Permission::RecordingsRead
                | Permission::NodesManage
        )
    }

    /// The string form used in policy files, audit events and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::CertsIssue => "certs.issue",
            Permission::CertsRevoke => "certs.revoke",
            Permission::DevicesConsoleOpen => "devices.console.open",
            Permission::SessionsKill => "sessions.kill",
            Permission::UsersManage => "users.manage",
            Permission::CaManage => "ca.manage",
            Permission::AuditRead => "audit.read",
            Permission::PolicyManage => "policy.manage",
            Permission::NodesManage => "nodes.manage",
            Permission::SecretsManage => "secrets.manage",
            Permission::RecordingsRead => "recordings.read",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string did not name a known permission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown permission `{0}`")]
pub struct UnknownPermission(pub String);

impl FromStr for Permission {
    type Err = UnknownPermission;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Permission::ALL.iter().copied().find(|p| p.as_str() == s).ok_or_else(|| UnknownPermission(s.to_owned()))
    }
}

impl TryFrom<String> for Permission {
    type Error = UnknownPermission;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Permission> for String {
    fn from(p: Permission) -> String {
        p.as_str().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_forms_roundtrip_and_are_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>(), Ok(*p));
            assert!(seen.insert(p.as_str()));
        }
        assert_eq!(seen.len(), 11);
        assert!("certs.Issue".parse::<Permission>().is_err());
        assert!("".parse::<Permission>().is_err());
    }
}
