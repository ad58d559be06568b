#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Property: adding a deny statement never grants more.

use std::time::Duration;

use portcullis_policies::{CertRequest, Identity, Permission, Policy, PolicySource, PolicySummary};
use proptest::prelude::*;
use proptest::sample::subsequence;

const LOGINS: &[&str] = &["root", "admin", "ops"];
const PERMS: &[&str] = &["certs.issue", "sessions.kill", "audit.read"];
const EXTS: &[&str] = &["permit-pty", "permit-agent-forwarding"];
const OPTS: &[&str] = &[
    "",
    "critical_options = { force-command = '/bin/a' }\n",
    "critical_options = { force-command = '/bin/b' }\n",
    "critical_options = { source-address = '10.0.0.0/8' }\n",
];
const TTLS: &[&str] = &["1h", "2h", "8h"];
const SUBJECTS: &[&str] = &["group = 'g0'", "group = 'g1'", "group = 'g2'", "user = 'u0'", "user = 'u1'"];
const USERS: &[&str] = &["u0", "u1"];
const GROUPS: &[&str] = &["g0", "g1", "g2"];

fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("'{i}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// (logins, permissions, ttl index, extensions, options index, binding subjects)
type GenRole = (Vec<&'static str>, Vec<&'static str>, usize, Vec<&'static str>, usize, Vec<&'static str>);

fn role() -> impl Strategy<Value = GenRole> {
    (
        subsequence(LOGINS, 0..=3),
        subsequence(PERMS, 0..=3),
        0..TTLS.len(),
        subsequence(EXTS, 0..=2),
        0..OPTS.len(),
        subsequence(SUBJECTS, 0..=2),
    )
}

fn policy_text() -> impl Strategy<Value = String> {
    prop::collection::vec(role(), 1..4).prop_map(|roles| {
        let mut s = String::new();
        for (i, (logins, perms, ttl, exts, opts, subjects)) in roles.into_iter().enumerate() {
            s += &format!("[[role]]\nname = 'r{i}'\nlogins = {}\npermissions = {}\n", list(&logins), list(&perms));
            if !logins.is_empty() {
                s += "targets = 'in:devices name:%'\n";
            }
            s += &format!("max_cert_ttl = '{}'\nextensions = {}\n{}", TTLS[ttl], list(&exts), OPTS[opts]);
            for subj in subjects {
                s += &format!("[[binding]]\n{subj}\nroles = ['r{i}']\n");
            }
        }
        s
    })
}

fn deny_text() -> impl Strategy<Value = String> {
    (
        subsequence(USERS, 0..=2),
        subsequence(GROUPS, 0..=2),
        subsequence(&["root", "admin", "ops", "*"][..], 0..=2),
        subsequence(&["certs.issue", "sessions.kill", "audit.read", "*"][..], 0..=2),
    )
        .prop_map(|(mut users, groups, mut logins, perms)| {
            if users.is_empty() && groups.is_empty() {
                users.push("u0");
            }
            if logins.is_empty() && perms.is_empty() {
                logins.push("root");
            }
            format!(
                "[[deny]]\nname = 'added'\nusers = {}\ngroups = {}\nlogins = {}\npermissions = {}\n",
                list(&users),
                list(&groups),
                list(&logins),
                list(&perms)
            )
        })
}

fn identity() -> impl Strategy<Value = Identity> {
    (prop::sample::select(USERS), subsequence(GROUPS, 0..=3)).prop_map(|(u, g)| Identity {
        username: u.into(),
        groups: g.into_iter().map(String::from).collect(),
        source: "local".into(),
    })
}

fn request() -> impl Strategy<Value = CertRequest> {
    (
        prop::option::of(prop::sample::select(vec![Duration::from_secs(1800), Duration::from_secs(36_000)])),
        prop::option::of(subsequence(&["r0", "r1", "r2", "zz"][..], 0..=2)),
    )
        .prop_map(|(ttl, roles)| CertRequest { ttl, roles: roles.map(|r| r.into_iter().map(String::from).collect()) })
}

fn load(text: &str) -> Policy {
    Policy::from_sources(&[PolicySource { name: "gen.toml", text }]).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn adding_a_deny_never_grants_more(text in policy_text(), deny in deny_text(), who in identity(), req in request()) {
        let before = load(&text);
        let after = load(&format!("{text}{deny}"));

        if let Ok(new) = after.issue_user_cert(&who, &req) {
            let old = before.issue_user_cert(&who, &req);
            prop_assert!(old.is_ok(), "deny turned {:?} into a permit", old);
            let old = old.unwrap();
            prop_assert!(new.principals().is_subset(old.principals()));
            prop_assert!(new.extensions().is_subset(old.extensions()));
            prop_assert!(new.ttl() <= old.ttl());
            prop_assert_eq!(new.critical_options(), old.critical_options());
            prop_assert!(!new.principals().is_empty());
        }
        for perm in Permission::ALL {
            if after.holds(&who, *perm).is_ok() {
                prop_assert!(before.holds(&who, *perm).is_ok(), "{perm} appeared");
            }
        }
    }

    #[test]
    fn permits_are_consistent_with_node_principals(text in policy_text(), who in identity(), req in request()) {
        let pol = load(&text);
        if let Ok(permit) = pol.issue_user_cert(&who, &req) {
            // Every principal in a certificate is listed on a node the role targets.
            let d = portcullis_policies::Device { name: "n".into(), ..Default::default() };
            let listed: std::collections::BTreeSet<String> = pol.node_principals(&d).into_values().flatten().collect();
            prop_assert!(permit.principals().is_subset(&listed));
            let cap = permit.roles().iter().map(|r| pol.role(r).unwrap().max_cert_ttl()).min().unwrap();
            prop_assert!(permit.ttl() <= cap);
        }
    }
}

#[test]
fn summary_roundtrips_through_serde() {
    let pol = load("[[role]]\nname = 'r'\npermissions = ['audit.read']\n[[binding]]\nuser = 'u'\nroles = ['r']\n");
    let s = pol.summary();
    let text = toml::to_string(&s).unwrap();
    let back: PolicySummary = toml::from_str(&text).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.digest(), pol.digest());
}
