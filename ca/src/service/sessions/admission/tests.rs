//! Admission decisions in memory: roles, rules, ports and what a session's proof must show.

use super::*;
use crate::service::device_of;
use portcullis_policies::PolicySource;
use portcullis_proto::NodeRecord;
use std::time::Duration;

/// One generated role: does it target pve01, its idle and absolute seconds, its cap.
struct GenRole {
    grants_pve01: bool,
    idle: u64,
    absolute: u64,
    per_user: Option<u32>,
}

fn policy_of(roles: &[GenRole]) -> Policy {
    let mut toml = String::new();
    for (i, r) in roles.iter().enumerate() {
        let target = if r.grants_pve01 { "pve01" } else { "pve99" };
        let cap = r.per_user.map(|c| format!(", max_per_user = {c}")).unwrap_or_default();
        toml.push_str(&format!(
            "[[role]]\nname = \"r{i:02}\"\nlogins = [\"root\"]\ntargets = 'in:devices name:{target}'\n\
             permissions = [\"certs.issue\"]\nsession = {{ idle = \"{}s\", absolute = \"{}s\"{cap} }}\n\n",
            r.idle, r.absolute
        ));
    }
    let names: Vec<String> = (0..roles.len()).map(|i| format!("\"r{i:02}\"")).collect();
    toml.push_str(&format!("[[binding]]\ngroup = \"ops\"\nroles = [{}]\n\n", names.join(", ")));
    toml.push_str(
        "[[rule]]\nname = \"ssh\"\npurpose = \"ssh_login\"\ntargets = 'in:devices name:%'\n\
         scope = { agents = [\"local\"] }\n",
    );
    Policy::from_sources(&[PolicySource { name: "gen.toml", text: &toml }]).unwrap()
}

fn admitted_limits(roles: &[GenRole]) -> Option<SessionLimits> {
    let policy = policy_of(roles);
    let who = Identity { username: "alice".into(), groups: ["ops".to_owned()].into(), source: "local".into() };
    let node = NodeRecord { name: "pve01".into(), agent: Some("local".into()), ..NodeRecord::default() };
    let device = device_of(&node);
    let principals: BTreeSet<String> =
        (0..roles.len()).map(|i| scoped_principal(&format!("r{i:02}"), "root")).collect();
    let basis = Basis::Certificate { principals: &principals, confirmed: None, held: None };
    admit(&policy, &who.into(), basis, &device, SessionMode::Terminated, Some("root"), 22).ok().map(|a| a.limits)
}

/// `verify-required` is the CA's to check only on a terminated session's proof: a
/// console decided on a certificate (a lease from before consoles needed a ticket,
/// at its heartbeat) never counts such a role, and a terminated one counts it only
/// with the PIN shown.
#[test]
fn only_a_terminated_session_with_the_pin_runs_under_a_pin_role() {
    let toml = r#"
[[role]]
name = "pin"
logins = ["root"]
targets = 'in:devices name:%'
permissions = ["certs.issue", "devices.console.open"]
critical_options = { "verify-required" = "" }

[[binding]]
group = "ops"
roles = ["pin"]

[[rule]]
name = "ssh"
purpose = "ssh_login"
targets = 'in:devices name:%'
scope = { agents = ["local"] }

[[rule]]
name = "console"
purpose = "console_access"
targets = 'in:devices name:%'
scope = { agents = ["local"] }
"#;
    let policy = Policy::from_sources(&[PolicySource { name: "p.toml", text: toml }]).unwrap();
    let node = NodeRecord { name: "pve01".into(), agent: Some("local".into()), ..NodeRecord::default() };
    let device = device_of(&node);
    let alice = Identity { username: "alice".into(), groups: ["ops".to_owned()].into(), source: "local".into() };
    let principals: BTreeSet<String> = [scoped_principal("pin", "root")].into();
    let decide = |mode, verified| {
        let confirmed = Some(Confirmed { touched: true, verified });
        let basis = Basis::Certificate { principals: &principals, confirmed, held: None };
        admit(&policy, &alice.clone().into(), basis, &device, mode, Some("root"), 22).map(|a| a.role.name().to_owned())
    };
    assert_eq!(decide(SessionMode::Terminated, true).ok().as_deref(), Some("pin"));
    let unverified = decide(SessionMode::Terminated, false).err().map(|d| d.reason);
    assert_eq!(unverified, Some(deny::CONNECTION_PROOF_INVALID));
    assert_eq!(decide(SessionMode::Console, true).err().map(|d| d.reason), Some(deny::NOT_AUTHORIZED));
}

/// A live terminated session runs under the role it opened with: its onward
/// certificate carries that role's forwarding, and so do the bastion's flags. When
/// that role stops qualifying (a group lost) the session ends, though another role
/// still grants the login — before, it went on with forwarding no role grants now.
#[test]
fn a_session_ends_when_its_own_role_no_longer_qualifies() {
    let toml = r#"
[[role]]
name = "a-fw"
logins = ["deploy"]
targets = 'in:devices name:%'
permissions = ["certs.issue"]
extensions = ["permit-pty", "permit-port-forwarding"]

[[role]]
name = "basic"
logins = ["deploy"]
targets = 'in:devices name:%'
permissions = ["certs.issue"]

[[binding]]
group = "fw"
roles = ["a-fw"]

[[binding]]
group = "ops"
roles = ["basic"]

[[rule]]
name = "ssh"
purpose = "ssh_login"
targets = 'in:devices name:%'
scope = { agents = ["local"] }
"#;
    let policy = Policy::from_sources(&[PolicySource { name: "p.toml", text: toml }]).unwrap();
    let node = NodeRecord { name: "pve01".into(), agent: Some("local".into()), ..NodeRecord::default() };
    let device = device_of(&node);
    let principals: BTreeSet<String> = [scoped_principal("a-fw", "deploy"), scoped_principal("basic", "deploy")].into();
    let decide = |groups: &[&str], held| {
        let who = Identity {
            username: "alice".into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            source: "local".into(),
        };
        let confirmed = Some(Confirmed { touched: true, verified: false });
        let basis = Basis::Certificate { principals: &principals, confirmed, held };
        admit(&policy, &who.into(), basis, &device, SessionMode::Terminated, Some("deploy"), 22)
            .map(|a| a.role.name().to_owned())
            .map_err(|d| d.reason)
    };
    assert_eq!(decide(&["fw", "ops"], None), Ok("a-fw".to_owned()), "opened under a-fw");
    assert_eq!(decide(&["fw", "ops"], Some("a-fw")), Ok("a-fw".to_owned()));
    assert_eq!(decide(&["ops"], Some("a-fw")), Err(deny::NOT_AUTHORIZED), "went on under basic");
    assert_eq!(decide(&["ops"], None), Ok("basic".to_owned()), "a new session opens under basic");
}

/// `allowed_ports` holds in every mode: a console or terminated session dials the
/// node's SSH port, and a rule listing other ports does not reach it (before, only
/// jump mode asked, and the seed's "Allowed ports: 22" was inert on a console rule).
#[test]
fn allowed_ports_hold_for_consoles_and_terminated_sessions_too() {
    let toml = r#"
[[role]]
name = "ops"
logins = ["root"]
targets = 'in:devices name:%'
permissions = ["certs.issue", "devices.console.open"]

[[binding]]
group = "ops"
roles = ["ops"]

[[rule]]
name = "ssh"
purpose = "ssh_login"
targets = 'in:devices name:%'
scope = { agents = ["local"] }
allowed_ports = [22]

[[rule]]
name = "console"
purpose = "console_access"
targets = 'in:devices name:%'
scope = { agents = ["local"] }
allowed_ports = [22]
"#;
    let policy = Policy::from_sources(&[PolicySource { name: "p.toml", text: toml }]).unwrap();
    let alice = Identity { username: "alice".into(), groups: ["ops".to_owned()].into(), source: "local".into() };
    let principals: BTreeSet<String> = [scoped_principal("ops", "root")].into();
    let decide = |ssh_port: Option<u16>, mode| {
        let node = NodeRecord { name: "pve01".into(), agent: Some("local".into()), ssh_port, ..NodeRecord::default() };
        let device = device_of(&node);
        let confirmed = Some(Confirmed { touched: true, verified: false });
        let basis = match mode {
            SessionMode::Console => Basis::Ticket,
            _ => Basis::Certificate { principals: &principals, confirmed, held: None },
        };
        let port = node.ssh_port_or_default();
        admit(&policy, &alice.clone().into(), basis, &device, mode, Some("root"), port).err().map(|d| d.reason)
    };
    for mode in [SessionMode::Console, SessionMode::Terminated] {
        assert_eq!(decide(None, mode), None, "{mode:?} on port 22");
        assert_eq!(decide(Some(2222), mode), Some(deny::PORT_NOT_ALLOWED), "{mode:?} on port 2222");
    }
}

#[test]
fn a_forced_command_role_opens_no_jump_tcp_beside_ssh() {
    let toml = r#"
[[role]]
name = "discovery"
logins = ["root"]
targets = 'in:devices name:%'
permissions = ["certs.issue"]
critical_options = { "force-command" = "/usr/local/bin/inventory" }

[[role]]
name = "web"
logins = ["www"]
targets = 'in:devices name:%'
permissions = ["certs.issue"]

[[binding]]
group = "ops"
roles = ["discovery"]

[[binding]]
user = "bob"
roles = ["web"]

[[rule]]
name = "jump"
purpose = "ssh_login"
targets = 'in:devices name:%'
scope = { agents = ["local"] }
allowed_ports = [22, 8006]
"#;
    let policy = Policy::from_sources(&[PolicySource { name: "p.toml", text: toml }]).unwrap();
    let node = NodeRecord { name: "pve01".into(), agent: Some("local".into()), ..NodeRecord::default() };
    let device = device_of(&node);
    let jump = |who: &Identity, principals: &BTreeSet<String>, port: u16| {
        let basis = Basis::Certificate { principals, confirmed: None, held: None };
        admit(&policy, &who.clone().into(), basis, &device, SessionMode::Jump, None, port).is_ok()
    };
    let alice = Identity { username: "alice".into(), groups: ["ops".to_owned()].into(), source: "local".into() };
    let forced: BTreeSet<String> = [scoped_principal("discovery", "root")].into();
    assert!(jump(&alice, &forced, 22), "sshd enforces the forced command on port 22");
    assert!(!jump(&alice, &forced, 8006), "a forced-command certificate reached another port");
    // Control: a role without critical options may use the rule's other port.
    let bob = Identity { username: "bob".into(), groups: BTreeSet::new(), source: "local".into() };
    assert!(jump(&bob, &[scoped_principal("web", "www")].into(), 8006));
}

#[test]
fn property_limits_are_the_strictest_of_the_granting_roles_whatever_their_names() {
    let mut next = crate::test_rng::xorshift();
    for _ in 0..150 {
        let n = usize::try_from(next() % 5).unwrap_or(0) + 1;
        let mut roles: Vec<GenRole> = (0..n)
            .map(|_| GenRole {
                grants_pve01: !next().is_multiple_of(3),
                idle: next() % 3000 + 60,
                absolute: next() % 30_000 + 60,
                per_user: next().is_multiple_of(2).then(|| u32::try_from(next() % 9 + 1).unwrap_or(1)),
            })
            .collect();
        let before = admitted_limits(&roles);
        if let Some(limits) = before {
            let granting = roles.iter().filter(|r| r.grants_pve01);
            assert_eq!(limits.idle, Duration::from_secs(granting.clone().map(|r| r.idle).min().unwrap()));
            assert_eq!(limits.absolute, Duration::from_secs(granting.clone().map(|r| r.absolute).min().unwrap()));
            let cap = |r: &GenRole| r.per_user.unwrap_or(portcullis_policies::DEFAULT_MAX_PER_USER);
            assert_eq!(limits.max_per_user, granting.map(cap).min());
        } else {
            assert!(roles.iter().all(|r| !r.grants_pve01));
        }
        // One more role, sorting first by name, with the loosest limits: on a target it
        // does not grant it changes nothing; on pve01 it loosens nothing.
        let grants_pve01 = next().is_multiple_of(2);
        roles.insert(0, GenRole { grants_pve01, idle: 86_400, absolute: 864_000, per_user: None });
        let after = admitted_limits(&roles);
        match (before, after) {
            (Some(b), Some(a)) => assert_eq!(a, b, "a looser role changed the limits"),
            (None, after) => assert_eq!(after.is_some(), grants_pve01),
            (Some(_), None) => panic!("a role removed access"),
        }
    }
}

#[test]
fn session_ids_logins_devices() {
    assert!(valid_session_id("0123456789abcdef0123456789abcdef"));
    for bad in
        ["", "0123456789ABCDEF0123456789abcdef", "0123456789abcdef0123456789abcde", "g123456789abcdef0123456789abcdef"]
    {
        assert!(!valid_session_id(bad), "{bad}");
    }
    assert!(valid_login("root") && valid_login("_svc") && valid_login("a.b-c_1"));
    assert!(!valid_login("Root") && !valid_login("-x") && !valid_login("") && !valid_login("a b"));
    assert!(valid_device("pve01") && valid_device("10.0.0.5") && valid_device("fe80::1"));
    assert!(!valid_device("") && !valid_device("a/b") && !valid_device("a b"));
}
