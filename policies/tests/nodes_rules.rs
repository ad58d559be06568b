#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Node principals, rule matching, reason codes and policy digests.

mod common;

use std::collections::BTreeSet;

use common::{BASE, p, policy, reason, set, who};
use portcullis_policies::principal::node_principal;
use portcullis_policies::{CertRequest, DenyReason, Device, Permission, Policy, PolicySource, Purpose, diff};
#[test]
fn node_principals_only_for_matching_devices() {
    let pol = policy(BASE);
    let prod = Device {
        name: "pve01".into(),
        kind: Some("hypervisor".into()),
        tags: [("env".to_string(), "prod".to_string())].into(),
        ..Device::default()
    };
    let np = pol.node_principals(&prod);
    assert_eq!(np.keys().map(String::as_str).collect::<Vec<_>>(), ["admin", "discovery", "ops", "root"]);
    // Each login lists the roles' scoped principals and this node's own principal (for
    // the bastion's per-session certificates), which no other node lists.
    assert_eq!(np["root"], set(&[p("admin", "root"), node_principal("pve01", "root")]));
    assert_eq!(np["discovery"], set(&[p("discovery", "discovery"), node_principal("pve01", "discovery")]));

    let stage =
        Device { name: "s1".into(), tags: [("env".to_string(), "stage".to_string())].into(), ..Device::default() };
    let np = pol.node_principals(&stage);
    assert_eq!(np.keys().map(String::as_str).collect::<Vec<_>>(), ["ops"]);
    assert!(np["ops"].contains(&node_principal("s1", "ops")));
    assert!(!np["ops"].contains(&node_principal("pve01", "ops")));
    // `nocert` targets every device but cannot issue certificates, so it never appears.
    assert!(pol.node_principals(&Device { name: "x".into(), ..Device::default() }).is_empty());

    // A certificate from one role is accepted exactly where the node lists its principal.
    let permit = pol.issue_user_cert(&who("olga", &[]), &CertRequest::default()).unwrap();
    let on_stage: BTreeSet<_> = pol.node_principals(&stage).into_values().flatten().collect();
    assert!(permit.principals().is_subset(&on_stage));
}

#[test]
fn rules_match_targets_and_scope() {
    let text = r#"
[[rule]]
name = "b-consoles"
purpose = "console_access"
targets = 'in:devices tags.env:prod'
scope = { agents = ["agent-1"] }

[[rule]]
name = "a-consoles"
purpose = "console_access"
targets = 'in:devices tags.env:prod'
scope = { partitions = ["default"], gateways = ["gw"] }

[[rule]]
name = "login"
purpose = "ssh_login"
targets = 'in:devices name:x'
scope = { partitions = ["default"] }
"#;
    let pol = policy(text);
    let mut d = Device {
        name: "pve".into(),
        agent: Some("agent-1".into()),
        partition: Some("default".into()),
        gateway: Some("gw".into()),
        tags: [("env".to_string(), "prod".to_string())].into(),
        ..Device::default()
    };
    // Both hold the device: the first by name decides (see the next test for what the
    // others add).
    assert_eq!(pol.match_rule(Purpose::ConsoleAccess, &d).unwrap().name(), "a-consoles");
    d.gateway = None;
    assert_eq!(pol.match_rule(Purpose::ConsoleAccess, &d).unwrap().name(), "b-consoles");
    d.agent = Some("agent-2".into());
    assert_eq!(reason(pol.match_rule(Purpose::ConsoleAccess, &d)), DenyReason::OutOfScope);
    assert_eq!(reason(pol.match_rule(Purpose::SshLogin, &d)), DenyReason::TargetMismatch);
    assert_eq!(reason(pol.match_rule(Purpose::InventoryEnrichment, &d)), DenyReason::NoMatchingRule);
}

#[test]
fn deny_reasons_have_stable_codes_and_sanitized_messages() {
    let all = [
        DenyReason::NoRoles,
        DenyReason::MissingPermission(Permission::CaManage),
        DenyReason::NoLogins,
        DenyReason::DeniedByStatement("secret-deny-name".into()),
        DenyReason::UnknownRole("<script>".into()),
        DenyReason::RoleNotHeld("<script>".into()),
        DenyReason::ConflictingCriticalOptions,
        DenyReason::InvalidTtl,
        DenyReason::NoMatchingRule,
        DenyReason::TargetMismatch,
        DenyReason::OutOfScope,
    ];
    let codes: BTreeSet<&str> = all.iter().map(|r| r.code()).collect();
    assert_eq!(codes.len(), all.len());
    for r in &all {
        assert!(r.code().chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        let msg = r.to_string();
        assert!(!msg.contains("secret-deny-name") && !msg.contains("<script>"), "{msg}");
    }
}

#[test]
fn summary_digest_and_diff() {
    let a = policy(BASE);
    // Reformatting and reordering do not change digests.
    let reordered = BASE
        .replace("max_cert_ttl = \"8h\"\n", "")
        .replace("name = \"admin\"\n", "name = \"admin\"\nmax_cert_ttl = \"480m\"\n");
    let b = Policy::from_sources(&[PolicySource { name: "x", text: &reordered }]).unwrap();
    assert_eq!(a.digest(), b.digest());
    assert_eq!(
        a.summary().binding.keys().map(String::as_str).collect::<Vec<_>>(),
        ["group:admins", "group:readers", "user:olga"]
    );

    let changed = BASE.replace("max_cert_ttl = \"2h\"", "max_cert_ttl = \"3h\"").replace(
        "[[binding]]\ngroup = \"readers\"\nroles = [\"nocert\"]\n",
        "[[rule]]\nname = 'r'\npurpose = 'ssh_login'\ntargets = 'in:devices name:a'\nscope = { agents = ['a'] }\n",
    );
    let c = Policy::from_sources(&[PolicySource { name: "x", text: &changed }]).unwrap();
    assert_ne!(a.digest(), c.digest());
    let d = diff(&a.summary(), &c.summary());
    assert_eq!(d.added, ["rule:r"]);
    assert_eq!(d.removed, ["binding:group:readers"]);
    assert_eq!(d.changed, ["role:ops"]);
    // The change says what it was, with both values.
    let ttl = portcullis_policies::FieldChange {
        item: "role:ops".into(),
        field: "max_cert_ttl_ns".into(),
        old: Some((2 * 3600 * 1_000_000_000u128).to_string()),
        new: Some((3 * 3600 * 1_000_000_000u128).to_string()),
    };
    assert_eq!(d.fields, [ttl]);
    assert!(diff(&a.summary(), &b.summary()).is_empty());
    // A summary stored before fields were kept (digests only) still compares.
    let legacy: portcullis_policies::PolicySummary =
        serde_json::from_str(r#"{"role": {"ops": "00"}, "binding": {}, "deny": {}, "rule": {}}"#).unwrap();
    let d = diff(&legacy, &a.summary());
    assert!(d.changed == ["role:ops"] && d.fields.is_empty(), "{d:?}");
    // Round trip as stored.
    let stored = serde_json::to_string(&a.summary()).unwrap();
    assert_eq!(serde_json::from_str::<portcullis_policies::PolicySummary>(&stored).unwrap(), a.summary());
    assert_ne!(Policy::empty().digest(), a.digest());
    assert_eq!(Policy::empty().digest(), Policy::empty().digest());
}

/// Several rules holding one device: the first by name decides, with the protections
/// it lacks and the others have. Before, adding a broad `all-ssh` that sorts first ended
/// the recording and the step-up `prod-recorded` asked for on prod. What the first rule
/// sets itself (its ports, its own recording's cap) stays: a narrower rule sets those
/// on purpose under a broad default.
#[test]
fn a_rule_sorting_first_keeps_the_recording_and_step_up_others_ask_for() {
    let text = r#"
[[rule]]
name = "all-ssh"
purpose = "ssh_login"
targets = 'in:devices name:%'
scope = { agents = ["a1"] }
allowed_ports = [22, 3306]

[[rule]]
name = "prod-recorded"
purpose = "ssh_login"
targets = 'in:devices tags.env:prod'
scope = { agents = ["a1"] }
record = true
record_input = true
record_max_mib = 64
fresh_auth_within = "10m"
"#;
    let device = |env: &str| Device {
        name: "db1".into(),
        agent: Some("a1".into()),
        tags: [("env".to_string(), env.to_string())].into(),
        ..Device::default()
    };
    let pol = policy(text);
    let lab = pol.match_rule(Purpose::SshLogin, &device("lab")).unwrap();
    assert_eq!((lab.name(), lab.fresh_auth_within(), lab.recording()), ("all-ssh", None, None));

    let prod = device("prod");
    let rule = pol.match_rule(Purpose::SshLogin, &prod).unwrap();
    assert_eq!(rule.name(), "all-ssh");
    assert_eq!(rule.fresh_auth_within(), Some(std::time::Duration::from_secs(600)), "step-up stripped");
    let recording = rule.recording().expect("recording stripped");
    assert!(recording.input() && recording.max_bytes() == 64 << 20);
    assert!(rule.permits_port(&prod, 3306), "the first rule's ports");

    // A first rule that records keeps its own recording's settings (a 1 MiB cap here).
    let own = policy(&text.replacen(
        "allowed_ports = [22, 3306]\n",
        "allowed_ports = [22, 3306]\nrecord = true\nrecord_max_mib = 1\n",
        1,
    ));
    let recording = own.match_rule(Purpose::SshLogin, &prod).unwrap().recording().unwrap();
    assert!(!recording.input() && recording.max_bytes() == 1 << 20);
}
