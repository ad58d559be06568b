//! Policy files: loading and validating any text must never panic, and a policy that
//! loads must answer every question the services ask of it without panicking.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use portcullis_policies::{CertRequest, Device, Identity, Policy, PolicySource, Purpose, diff};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(policy) = Policy::from_sources(&[PolicySource { name: "fuzz.toml", text }]) else { return };
    let who = Identity {
        username: "alice".into(),
        groups: BTreeSet::from(["ops".to_owned(), "admins".to_owned()]),
        source: "local".into(),
    };
    let _ = policy.issue_user_cert(&who, &CertRequest::default());
    let device = Device { name: "pve-01".into(), addresses: vec!["10.0.0.5".into()], ..Device::default() };
    for purpose in [Purpose::SshLogin, Purpose::ConsoleAccess, Purpose::InventoryEnrichment] {
        let _ = policy.match_rule(purpose, &device);
    }
    let _ = policy.node_principal_lines(&device);
    let _ = diff(&Policy::empty().summary(), &policy.summary());
});
