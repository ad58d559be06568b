#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Policy loading: field-level validation of roles, bindings, denies and rules.

mod common;

use common::{load, one_error};
use portcullis_policies::{HostKeyPolicy, Policy, PolicySource};
#[test]
fn unknown_permission_and_extension() {
    one_error(
        "[[role]]\nname = 'r'\npermissions = ['certs.issue', 'certs.isue']\n",
        3,
        31,
        "unknown permission `certs.isue`",
    );
    one_error(
        "[[role]]\nname = 'r'\nextensions = ['permit-pty', 'permit-x11-forwarding']\n",
        3,
        29,
        "unknown extension",
    );
    one_error("[[deny]]\nname = 'd'\nusers = ['u']\npermissions = ['*', 'root']\n", 4, 21, "unknown permission `root`");
}

#[test]
fn unknown_role_in_binding_even_across_files() {
    one_error("[[binding]]\ngroup = 'g'\nroles = ['nope']\n", 3, 10, "unknown role `nope`");
    let ok = load(&[("b.toml", "[[binding]]\ngroup = 'g'\nroles = ['r']\n"), ("a.toml", "[[role]]\nname = 'r'\n")]);
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn empty_scope_is_an_error() {
    let text = "[[rule]]\nname = 'x'\npurpose = 'ssh_login'\ntargets = 'in:devices name:a'\nscope = { partitions = [], agents = [] }\n";
    one_error(text, 5, 9, "empty scope never means \"any scope\"");
    let missing = "[[rule]]\nname = 'x'\npurpose = 'ssh_login'\ntargets = 'in:devices name:a'\n";
    one_error(missing, 1, 1, "missing field `scope`");
}

#[test]
fn durations() {
    one_error("[[role]]\nname = 'r'\nmax_cert_ttl = '8 hourz'\n", 3, 16, "invalid duration");
    one_error("[[role]]\nname = 'r'\nmax_cert_ttl = '0s'\n", 3, 16, "greater than zero");
    one_error("[[role]]\nname = 'r'\nmax_cert_ttl = '8d'\n", 3, 16, "at most 7 days");
    assert!(load(&[("p", "[[role]]\nname = 'r'\nmax_cert_ttl = '7d'\n")]).is_ok());
    one_error("[[role]]\nname = 'r'\nsession = { idle = 'soon' }\n", 3, 20, "invalid duration");
    // Session limits are bounded: a bastion adds them to clock readings.
    one_error("[[role]]\nname = 'r'\nsession = { absolute = '18446744073709551615s' }\n", 3, 24, "at most 365 days");
    one_error("[[role]]\nname = 'r'\nsession = { idle = '366d' }\n", 3, 20, "at most 365 days");
    assert!(load(&[("p", "[[role]]\nname = 'r'\nsession = { idle = '365d', absolute = '365d' }\n")]).is_ok());
    one_error("[[role]]\nname = 'r'\nsession = { max_per_user = 0 }\n", 3, 28, "at least 1");
    one_error("[[role]]\nname = 'r'\nsession = { max_per_user = -1 }\n", 3, 28, "");
}

#[test]
fn critical_options() {
    one_error(
        "[[role]]\nname = 'r'\ncritical_options = { source-address = '10.0.0.0/8,10.1.0.1/16' }\n",
        3,
        39,
        "host bits",
    );
    one_error(
        "[[role]]\nname = 'r'\ncritical_options = { source-address = 'example.com' }\n",
        3,
        39,
        "not an IP address",
    );
    one_error(
        "[[role]]\nname = 'r'\ncritical_options = { source-address = '10.0.0.0/8, ::1' }\n",
        3,
        39,
        "not an IP address",
    );
    one_error("[[role]]\nname = 'r'\ncritical_options = { force-command = '' }\n", 3, 38, "force-command");
    one_error("[[role]]\nname = 'r'\ncritical_options = { force-command = \"a\\nb\" }\n", 3, 38, "newline");
    one_error("[[role]]\nname = 'r'\ncritical_options = { verify-required = 'yes' }\n", 3, 40, "verify-required");
}

#[test]
fn role_shape() {
    one_error("[[role]]\nname = 'r'\nlogins = ['root']\n", 2, 8, "no `targets`");
    one_error("[[role]]\nname = 'r'\ntargets = 'in:devices name:a'\n", 3, 11, "no effect");
    let issuing_without_logins = "[[role]]\nname = 'r'\ntargets = 'in:devices name:a'\npermissions = ['certs.issue']\n";
    one_error(issuing_without_logins, 3, 11, "no effect");
    // Targets scope the administrative permissions they name, logins or not.
    for scoped in ["nodes.manage", "sessions.kill", "recordings.read"] {
        let role = format!("[[role]]\nname = 'r'\ntargets = 'in:devices name:a'\npermissions = ['{scoped}']\n");
        let loaded = load(&[("a.toml", role.as_str())]);
        assert!(loaded.is_ok(), "{scoped}: {loaded:?}");
    }
    one_error("[[role]]\nname = 'r'\nlogins = ['Root']\ntargets = 'in:devices name:a'\n", 3, 11, "invalid login");
    one_error("[[role]]\nname = 'a role'\n", 2, 8, "invalid role name");
}

#[test]
fn binding_and_deny_shape() {
    one_error(
        "[[binding]]\ngroup = 'g'\nuser = 'u'\nroles = ['r']\n[[role]]\nname = 'r'\n",
        1,
        1,
        "exactly one of `group` or `user`",
    );
    one_error("[[binding]]\nroles = ['r']\n[[role]]\nname = 'r'\n", 1, 1, "exactly one");
    one_error("[[binding]]\ngroup = 'g'\nroles = []\n", 3, 9, "must not be empty");
    one_error("[[deny]]\nname = 'd'\nlogins = ['root']\n", 2, 8, "no users or groups");
    one_error("[[deny]]\nname = 'd'\nusers = ['u']\n", 2, 8, "removes no logins or permissions");
    one_error("[[deny]]\nname = 'd'\nusers = ['u']\nlogins = ['ROOT']\n", 4, 11, "invalid login");
}

#[test]
fn rule_fields() {
    let base = "[[rule]]\nname = 'x'\ntargets = 'in:devices name:a'\nscope = { agents = ['a'] }\n";
    one_error(&format!("{base}purpose = 'shell'\n"), 5, 11, "unknown variant `shell`");
    one_error(&format!("{base}purpose = 'ssh_login'\nhost_key_policy = 'skip'\n"), 6, 19, "unknown variant");
    one_error(&format!("{base}purpose = 'ssh_login'\ntimeout_ms = 0\n"), 6, 14, "timeout_ms");
    one_error(&format!("{base}purpose = 'ssh_login'\ntimeout_ms = 120001\n"), 6, 14, "timeout_ms");
    one_error(&format!("{base}purpose = 'ssh_login'\nallowed_ports = []\n"), 6, 17, "must not be empty");
    one_error(&format!("{base}purpose = 'ssh_login'\nallowed_ports = [22, 0]\n"), 6, 22, "port 0");
    one_error(&format!("{base}purpose = 'ssh_login'\nallowed_ports = [70000]\n"), 6, 18, "");
}

#[test]
fn the_seeds_skip_verify_is_an_alias_of_danger_skip_verify() {
    let base =
        "[[rule]]\nname = 'x'\ntargets = 'in:devices name:a'\nscope = { agents = ['a'] }\npurpose = 'ssh_login'\n";
    for name in ["skip_verify", "danger_skip_verify"] {
        let text = format!("{base}host_key_policy = '{name}'\n");
        let policy = Policy::from_sources(&[PolicySource { name: "p.toml", text: &text }]).unwrap();
        assert_eq!(policy.rule("x").unwrap().host_key_policy(), HostKeyPolicy::DangerSkipVerify, "{name}");
    }
}

#[test]
fn binding_to_an_invalid_role_reports_only_the_role() {
    let text = "[[role]]\nname = 'r'\npermissions = ['bogus']\n[[binding]]\ngroup = 'g'\nroles = ['r']\n";
    one_error(text, 3, 16, "unknown permission");
}

#[test]
fn idle_counts_defaults_to_input_or_output() {
    let rule = |extra: &str| {
        format!(
            "[[rule]]\nname = 'x'\npurpose = 'ssh_login'\ntargets = 'in:devices name:a'\nscope = {{ agents = ['a'] }}\n{extra}"
        )
    };
    let idle_counts = |extra: &str| load(&[("p.toml", &rule(extra))]).unwrap().rule("x").unwrap().idle_counts();
    assert_eq!(idle_counts(""), portcullis_policies::IdleCounts::InputOrOutput);
    assert_eq!(idle_counts("idle_counts = 'input'\n"), portcullis_policies::IdleCounts::Input);
    assert_eq!(idle_counts("idle_counts = 'input_or_output'\n"), portcullis_policies::IdleCounts::InputOrOutput);
    one_error(&rule("idle_counts = 'output'\n"), 6, 15, "unknown variant `output`");
}

#[test]
fn fresh_auth_within_is_for_login_and_console_rules() {
    let rule = |purpose: &str, fresh: &str| {
        format!(
            "[[rule]]\nname = 'prod'\npurpose = '{purpose}'\ntargets = 'in:devices tags.env:prod'\n\
             scope = {{ agents = ['local'] }}\nfresh_auth_within = '{fresh}'\n"
        )
    };
    for purpose in ["ssh_login", "console_access"] {
        let policy = load(&[("p.toml", &rule(purpose, "10m"))]).unwrap();
        let within = policy.rule("prod").unwrap().fresh_auth_within();
        assert_eq!(within, Some(std::time::Duration::from_secs(600)), "{purpose}");
    }
    one_error(
        &rule("inventory_enrichment", "10m"),
        6,
        21,
        "`fresh_auth_within` is for `ssh_login` and `console_access` rules",
    );
    one_error(&rule("ssh_login", "soon"), 6, 21, "invalid duration");
    one_error(&rule("ssh_login", "0s"), 6, 21, "must be greater than zero");
    // Without it, a rule asks nothing more (and hashes as it always did).
    let plain = rule("ssh_login", "1m").replace("fresh_auth_within = '1m'\n", "");
    assert_eq!(load(&[("p.toml", &plain)]).unwrap().rule("prod").unwrap().fresh_auth_within(), None);
}

#[test]
fn recording_is_opt_in_per_login_or_console_rule_and_bounded() {
    let rule = |purpose: &str, extra: &str| {
        format!(
            "[[rule]]\nname = 'prod'\npurpose = '{purpose}'\ntargets = 'in:devices tags.env:prod'\n\
             scope = {{ agents = ['local'] }}\n{extra}"
        )
    };
    let recording =
        |extra: &str| load(&[("p.toml", &rule("ssh_login", extra))]).unwrap().rule("prod").unwrap().recording();
    // Off unless asked for.
    assert_eq!(recording(""), None);
    assert_eq!(recording("record = false\n"), None);
    let on = recording("record = true\n").unwrap();
    assert_eq!((on.input(), on.max_bytes(), on.over_limit()), (false, 16 << 20, portcullis_policies::OverLimit::Stop));
    let full =
        recording("record = true\nrecord_input = true\nrecord_max_mib = 2\nrecord_over_limit = 'close'\n").unwrap();
    assert_eq!(
        (full.input(), full.max_bytes(), full.over_limit()),
        (true, 2 << 20, portcullis_policies::OverLimit::Close)
    );
    let console = load(&[("p.toml", &rule("console_access", "record = true\n"))]).unwrap();
    assert!(console.rule("prod").unwrap().recording().is_some());
    one_error(
        &rule("inventory_enrichment", "record = true\n"),
        6,
        10,
        "`record` is for `ssh_login` and `console_access` rules",
    );
    // A recording detail without `record = true` is an error, not a silent no-op.
    one_error(&rule("ssh_login", "record_input = true\n"), 6, 16, "need `record = true`");
    one_error(
        &rule("ssh_login", "record = true\nrecord_max_mib = 0\n"),
        7,
        18,
        "`record_max_mib` must be between 1 and 1024",
    );
    one_error(&rule("ssh_login", "record = true\nrecord_over_limit = 'drop'\n"), 7, 21, "unknown variant `drop`");
}
