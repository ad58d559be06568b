#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Policy loading: a full example with defaults, and errors with file:line:col.

mod common;

use std::time::Duration;

use common::{load, one_error};
use portcullis_policies::{HostKeyPolicy, Permission, Policy, Purpose, Subject};
const FULL: &str = r#"
[[role]]
name        = "pve-admin"
logins      = ["root"]
targets     = 'in:devices tags.cluster:prod'
permissions = ["certs.issue", "devices.console.open", "sessions.kill"]
max_cert_ttl = "4h"
extensions  = ["permit-pty"]
critical_options = { source-address = "10.0.0.0/8,192.168.1.5", verify-required = "" }
session     = { idle = "15m", absolute = "1h", max_per_user = 5, max_per_device = 10, max_per_agent = 50 }

[[role]]
name = "auditor"
permissions = ["audit.read"]

[[binding]]
group = "pve-admins"
roles = ["pve-admin"]

[[binding]]
user = "alice"
roles = ["auditor"]

[[deny]]
name = "contractors-no-root"
groups = ["contractors"]
logins = ["root"]

[[rule]]
name      = "prod-consoles"
purpose   = "console_access"
targets   = 'in:devices tags.env:prod'
scope     = { partitions = ["default"], agents = ["agent-fra-1"], gateways = [] }
host_key_policy = "danger_skip_verify"
timeout_ms = 5000
allowed_ports = [22, 8006]

[[rule]]
name    = "discovery"
purpose = "inventory_enrichment"
targets = 'in:devices type:hypervisor'
scope   = { agents = ["agent-fra-1"] }
"#;

#[test]
fn full_example_loads_with_values_and_defaults() {
    let p = load(&[("full.toml", FULL)]).unwrap();
    let r = p.role("pve-admin").unwrap();
    assert_eq!(r.logins().iter().collect::<Vec<_>>(), ["root"]);
    assert_eq!(r.targets().unwrap().to_string(), "in:devices tags.cluster:prod");
    assert!(r.has_permission(Permission::SessionsKill));
    assert_eq!(r.max_cert_ttl(), Duration::from_secs(4 * 3600));
    assert_eq!(r.critical_options()["source-address"], "10.0.0.0/8,192.168.1.5");
    assert_eq!(r.critical_options()["verify-required"], "");
    let s = r.session();
    assert_eq!((s.idle, s.absolute), (Duration::from_secs(900), Duration::from_secs(3600)));
    assert_eq!((s.max_per_user, s.max_per_device, s.max_per_agent), (Some(5), Some(10), Some(50)));

    let a = p.role("auditor").unwrap();
    assert!(a.logins().is_empty() && a.targets().is_none());
    assert_eq!(a.max_cert_ttl(), Duration::from_secs(8 * 3600));
    let caps = (a.session().max_per_user, a.session().max_per_device, a.session().max_per_agent);
    let defaults = (
        portcullis_policies::DEFAULT_MAX_PER_USER,
        portcullis_policies::DEFAULT_MAX_PER_DEVICE,
        portcullis_policies::DEFAULT_MAX_PER_AGENT,
    );
    assert_eq!(caps, (Some(defaults.0), Some(defaults.1), Some(defaults.2)), "a role naming no cap gets the defaults");

    assert_eq!(p.bindings().len(), 2);
    assert!(p.bindings().contains_key(&Subject::User("alice".into())));
    assert_eq!(p.denies().count(), 1);

    let rule = p.rule("prod-consoles").unwrap();
    assert_eq!(rule.purpose(), Purpose::ConsoleAccess);
    assert_eq!(rule.host_key_policy(), HostKeyPolicy::DangerSkipVerify);
    assert_eq!(rule.timeout(), Duration::from_millis(5000));
    assert_eq!(rule.allowed_ports().unwrap().iter().copied().collect::<Vec<_>>(), [22, 8006]);
    let d = p.rule("discovery").unwrap();
    assert_eq!(d.host_key_policy(), HostKeyPolicy::KnownHosts);
    assert_eq!(d.timeout(), Duration::from_millis(10_000));
    // Naming no ports opens the device's own SSH port, wherever its sshd listens.
    assert_eq!(d.allowed_ports(), None);
    let on = |ssh_port| portcullis_policies::Device { name: "n".into(), ssh_port, ..Default::default() };
    assert!(d.permits_port(&on(None), 22) && !d.permits_port(&on(None), 2222));
    assert!(d.permits_port(&on(Some(2222)), 2222) && !d.permits_port(&on(Some(2222)), 22));
    assert!(rule.permits_port(&on(Some(2222)), 8006) && !rule.permits_port(&on(Some(2222)), 2222));
    assert!(d.scope().includes(None, Some("agent-fra-1"), None));
    assert!(!d.scope().includes(Some("x"), None, None));
}

#[test]
fn empty_sources_and_empty_files_grant_nothing() {
    assert_eq!(load(&[]).unwrap(), Policy::empty());
    assert_eq!(load(&[("a.toml", ""), ("b.toml", "# nothing\n")]).unwrap(), Policy::empty());
}

#[test]
fn bad_srql_points_into_the_query() {
    one_error(
        "[[role]]\nname = 'r'\nlogins = ['root']\ntargets = 'in:devices hostname:x'\n",
        4,
        23,
        "unknown key `hostname`",
    );
    one_error("[[role]]\nname = 'r'\nlogins = ['root']\ntargets = \"in:devices\"\n", 4, 22, "positive filter");
    one_error(
        "[[role]]\nname = 'r'\nlogins = ['root']\ntargets = '''\nin:devices name:(a,)'''\n",
        5,
        20,
        "empty list element",
    );
    // With escapes the column falls back to the start of the string.
    one_error("[[role]]\nname = 'r'\nlogins = ['root']\ntargets = \"in:devices x:\\\"a\\\"\"\n", 4, 11, "unknown key");
}

#[test]
fn unknown_fields_are_errors() {
    one_error("[[role]]\nname = 'r'\nlogin = ['root']\n", 3, 1, "unknown field `login`");
    one_error("[[role]]\nname = 'r'\nsession = { idel = '1m' }\n", 3, 13, "unknown field `idel`");
    one_error(
        "[[role]]\nname = 'r'\ncritical_options = { force_command = 'x' }\n",
        3,
        22,
        "unknown field `force_command`",
    );
    one_error("[[binding]]\ngroup = 'g'\nroles = ['r']\nrole = 'x'\n", 4, 1, "unknown field `role`");
    one_error(
        "[[rule]]\nname='x'\npurpose='ssh_login'\ntargets='in:devices name:a'\nscope={agents=['a'], agent=['b']}\n",
        5,
        22,
        "unknown field `agent`",
    );
    one_error("[roles]\nname = 'r'\n", 1, 2, "unknown top-level key `roles`");
    one_error("[role]\nname = 'r'\n", 1, 2, "array of tables");
}

#[test]
fn duplicate_role_across_files_names_both_places() {
    let errs = load(&[("a.toml", "[[role]]\nname = 'r'\n"), ("b.toml", "\n\n[[role]]\nname = 'r'\n")]).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].to_string(), "b.toml:4:8: duplicate role `r` (first defined at a.toml:2:8)");
}

#[test]
fn all_errors_are_collected_across_items_and_files() {
    let a = "[[role]]\nname = 'r1'\npermissions = ['nope']\nmax_cert_ttl = 'x'\n\n[[role]]\nname = 'r2'\nlogin = []\n";
    let b = "[[binding]]\ngroup = 'g'\nroles = ['missing']\n\nnot toml at all";
    let c = "[[binding]]\ngroup = 'g'\nroles = ['missing']\n";
    let errs = load(&[("a.toml", a), ("b.toml", b), ("c.toml", c)]).unwrap_err();
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 5, "{text:#?}");
    assert!(text[0].starts_with("a.toml:3:16: unknown permission"), "{text:#?}");
    assert!(text[1].starts_with("a.toml:4:16: invalid duration"), "{text:#?}");
    assert!(text[2].starts_with("a.toml:8:1: unknown field `login`"), "{text:#?}");
    assert!(text[3].starts_with("b.toml:5:"), "{text:#?}");
    assert!(text[4].starts_with("c.toml:3:10: unknown role `missing`"), "{text:#?}");
    // The Display of the whole set lists every error, one per line.
    let all = portcullis_policies::LoadErrors(errs).to_string();
    assert_eq!(all.lines().count(), 5);
}

#[test]
fn toml_syntax_error_has_position() {
    one_error("[[role]]\nname = 'r\n", 2, 10, "");
}

/// A deny's group named with a mis-spelled source or a stray space loaded as a bare
/// group no directory reports: the deny denied nobody, without a word. Refused now; a
/// correct qualified name and an unusual bare one (`team:ops`) still load. (A binding
/// so named grants nothing, which fails safe: it still loads.)
#[test]
fn deny_groups_a_directory_could_never_report_are_refused() {
    for bad in ["LDAP:contractors", "ldap:", "ldap: contractors", " contractors", "Oidc:x", "contractors "] {
        let deny = format!("[[deny]]\nname = 'd'\ngroups = [{bad:?}]\nlogins = ['root']\n");
        one_error(&deny, 3, 11, "invalid group name");
    }
    let binding = "[[role]]\nname = 'r'\n\n[[binding]]\ngroup = 'LDAP:x'\nroles = ['r']\n";
    load(&[("b.toml", binding)]).expect("a binding so named grants nothing, and loads");
    for good in ["ldap:contractors", "contractors", "team:ops", "local:ops"] {
        let deny = format!("[[deny]]\nname = 'd'\ngroups = [{good:?}]\nlogins = ['root']\n");
        load(&[("a.toml", deny.as_str())]).unwrap();
    }
}
