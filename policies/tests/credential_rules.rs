#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Credential rules (an API token for `inventory_enrichment`) and SSH rules never mix.

mod common;

use common::{errors, policy, reason};
use portcullis_policies::{DenyReason, Device, Provider, Purpose};

const PVE_RULE: &str = r#"
[[rule]]
name = "pve-inventory"
purpose = "inventory_enrichment"
provider = "proxmox"
auth_method = "proxmox_api_token"
secret = "pve-site-a"
targets = 'in:devices tags.proxmox:true'
scope = { agents = ["agent-a"] }

[[rule]]
name = "ssh-discovery"
purpose = "inventory_enrichment"
targets = 'in:devices tags.proxmox:true'
scope = { agents = ["agent-a"] }
"#;

fn pve(agent: &str) -> Device {
    Device {
        name: "pve1".into(),
        agent: Some(agent.into()),
        tags: [("proxmox".to_string(), "true".to_string())].into(),
        ..Device::default()
    }
}

#[test]
fn a_credential_rule_is_found_only_as_a_credential_rule() {
    let pol = policy(PVE_RULE);
    let rule = pol.match_credential_rule(Provider::Proxmox, &pve("agent-a")).unwrap();
    assert_eq!(rule.name(), "pve-inventory");
    let k = rule.credential().unwrap();
    assert_eq!(
        (k.secret(), k.api_port(), k.auto_discovery_trials(), k.strict_permissions()),
        ("pve-site-a", 8006, false, false)
    );
    // SSH discovery sees only its own rule, though the token rule sorts first by name.
    let ssh = pol.match_rule(Purpose::InventoryEnrichment, &pve("agent-a")).unwrap();
    assert_eq!(ssh.name(), "ssh-discovery");
    assert!(ssh.credential().is_none());
    // Scope holds for credential rules too: agent B never gets site A's token.
    assert_eq!(reason(pol.match_credential_rule(Provider::Proxmox, &pve("agent-b"))), DenyReason::OutOfScope);
}

#[test]
fn a_token_rule_alone_opens_no_console_and_no_login() {
    let only_token = PVE_RULE.split("[[rule]]\nname = \"ssh-discovery\"").next().unwrap();
    let pol = policy(only_token);
    for purpose in [Purpose::ConsoleAccess, Purpose::SshLogin, Purpose::InventoryEnrichment] {
        assert!(pol.match_rule(purpose, &pve("agent-a")).is_err(), "{purpose} matched a token rule");
    }
}

#[test]
fn a_console_or_login_rule_never_carries_a_token() {
    for purpose in ["console_access", "ssh_login"] {
        let text = format!(
            "[[rule]]\nname = \"r\"\npurpose = \"{purpose}\"\nprovider = \"proxmox\"\nauth_method = \"proxmox_api_token\"\n\
             secret = \"s\"\ntargets = 'in:devices'\nscope = {{ agents = [\"a\"] }}\n"
        );
        let errs = errors(&text);
        assert!(errs.iter().any(|e| e.contains("carries no API credential")), "{purpose}: {errs:?}");
    }
}

#[test]
fn a_credential_rule_is_complete_or_refused() {
    let partial = "[[rule]]\nname = \"r\"\npurpose = \"inventory_enrichment\"\nsecret = \"s\"\n\
                   targets = 'in:devices'\nscope = { agents = [\"a\"] }\n";
    assert!(errors(partial).iter().any(|e| e.contains("needs all of `provider`, `auth_method` and `secret`")));
    let bad_name = PVE_RULE.replace("\"pve-site-a\"", "\"has space\"");
    assert!(errors(&bad_name).iter().any(|e| e.contains("invalid secret name")));
    // A name no secret can have (the CA stores 1-64 characters) is refused at load time.
    let long = "s".repeat(65);
    let too_long = PVE_RULE.replace("secret = \"pve-site-a\"", &format!("secret = \"{long}\""));
    assert!(errors(&too_long).iter().any(|e| e.contains("invalid secret name") && e.contains("1-64")), "{too_long}");
    let longest = PVE_RULE.replace("secret = \"pve-site-a\"", &format!("secret = \"{}\"", "s".repeat(64)));
    assert_eq!(policy(&longest).rule("pve-inventory").and_then(|r| r.credential()).map(|c| c.secret().len()), Some(64));
    let ports = PVE_RULE.replace("secret = \"pve-site-a\"", "secret = \"pve-site-a\"\nallowed_ports = [22]");
    assert!(errors(&ports).iter().any(|e| e.contains("`allowed_ports` is for SSH rules")));
    let trials = PVE_RULE.replace("secret = \"pve-site-a\"", "secret = \"pve-site-a\"\nauto_discovery_trials = true");
    assert!(errors(&trials).iter().any(|e| e.contains("needs `strict_permissions = true`")), "{trials}");
    let checked =
        trials.replace("auto_discovery_trials = true", "auto_discovery_trials = true\nstrict_permissions = true");
    let checked = policy(&checked);
    let k = checked.rule("pve-inventory").and_then(|r| r.credential()).unwrap();
    assert!(k.auto_discovery_trials() && k.strict_permissions());
    let unknown = PVE_RULE.replace("provider = \"proxmox\"", "provider = \"vmware\"");
    assert!(!errors(&unknown).is_empty());
}

#[test]
fn credential_fields_change_the_digest_and_ssh_rules_keep_theirs() {
    let a = policy(PVE_RULE);
    let b = policy(&PVE_RULE.replace("\"pve-site-a\"", "\"pve-site-b\""));
    assert_ne!(a.summary().rule["pve-inventory"], b.summary().rule["pve-inventory"]);
    assert_eq!(a.summary().rule["ssh-discovery"], b.summary().rule["ssh-discovery"]);
}
