#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Helpers and fixtures shared by the integration tests.

use std::collections::BTreeSet;

use portcullis_policies::{Deny, DenyReason, Identity, LoadError, Policy, PolicySource, scoped_principal};

pub fn load(files: &[(&str, &str)]) -> Result<Policy, Vec<LoadError>> {
    let sources: Vec<PolicySource<'_>> = files.iter().map(|(name, text)| PolicySource { name, text }).collect();
    Policy::from_sources(&sources).map_err(|e| e.0)
}

pub fn errors(text: &str) -> Vec<String> {
    match load(&[("p.toml", text)]) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

/// Asserts exactly one error, at `line:col`, containing `needle`.
pub fn one_error(text: &str, line: usize, col: usize, needle: &str) {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let prefix = format!("p.toml:{line}:{col}: ");
    assert!(errs[0].starts_with(&prefix) && errs[0].contains(needle), "got {:?}, want {prefix}…{needle}…", errs[0]);
}

pub fn policy(text: &str) -> Policy {
    Policy::from_sources(&[PolicySource { name: "p.toml", text }]).unwrap_or_else(|e| panic!("{e}"))
}

pub fn who(user: &str, groups: &[&str]) -> Identity {
    Identity { username: user.into(), groups: groups.iter().map(|g| g.to_string()).collect(), source: "ldap".into() }
}

pub fn reason<T: std::fmt::Debug>(r: Result<T, Deny>) -> DenyReason {
    r.unwrap_err().reason
}

pub const BASE: &str = r#"
[[role]]
name = "admin"
logins = ["root", "admin"]
targets = 'in:devices tags.env:prod'
permissions = ["certs.issue", "sessions.kill"]
max_cert_ttl = "8h"
extensions = ["permit-pty", "permit-agent-forwarding"]

[[role]]
name = "ops"
logins = ["ops"]
targets = 'in:devices tags.env:(prod,stage)'
permissions = ["certs.issue"]
max_cert_ttl = "2h"
extensions = ["permit-pty"]

[[role]]
name = "discovery"
logins = ["discovery"]
targets = 'in:devices type:hypervisor'
permissions = ["certs.issue"]
max_cert_ttl = "5m"
critical_options = { force-command = "/usr/sbin/dmidecode" }

[[role]]
name = "auditor"
permissions = ["audit.read"]

[[role]]
name = "nocert"
logins = ["nocert"]
targets = 'in:devices name:%'
permissions = ["audit.read"]

[[binding]]
group = "admins"
roles = ["admin", "discovery"]

[[binding]]
user = "olga"
roles = ["ops"]

[[binding]]
user = "olga"
roles = ["auditor"]

[[binding]]
group = "readers"
roles = ["nocert"]
"#;

pub fn p(r: &str, l: &str) -> String {
    scoped_principal(r, l)
}

pub fn set(items: &[String]) -> BTreeSet<String> {
    items.iter().cloned().collect()
}
