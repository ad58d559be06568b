#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Decisions: bindings, permissions, denies and certificate contents.

mod common;

use std::time::Duration;

use common::{BASE, p, policy, reason, set, who};
use portcullis_policies::{CertRequest, DenyReason, Identity, Permission, Policy, proof};
#[test]
fn group_and_user_bindings() {
    let pol = policy(BASE);
    let names = |i: &Identity| pol.roles_of(i).iter().map(|r| r.name().to_string()).collect::<Vec<_>>();
    assert_eq!(names(&who("x", &["admins"])), ["admin", "discovery"]);
    assert_eq!(names(&who("olga", &[])), ["auditor", "ops"]);
    assert_eq!(names(&who("olga", &["admins"])), ["admin", "auditor", "discovery", "ops"]);
    assert!(names(&who("Olga", &["Admins"])).is_empty());

    assert!(pol.holds(&who("x", &["admins"]), Permission::SessionsKill).is_ok());
    let g = pol.authorize::<proof::AuditRead>(&who("olga", &[])).unwrap();
    assert_eq!((g.username(), g.permission()), ("olga", Permission::AuditRead));
    // A proof of either of two permissions: made by whichever is held, refused naming
    // the first.
    let either = pol.authorize::<proof::PolicyRead>(&who("olga", &[])).unwrap();
    assert_eq!(either.permission(), Permission::AuditRead);
    assert_eq!(reason(pol.authorize::<proof::PolicyRead>(&who("nobody-much", &[]))), DenyReason::NoRoles);
    assert_eq!(
        reason(pol.holds(&who("olga", &[]), Permission::CaManage)),
        DenyReason::MissingPermission(Permission::CaManage)
    );
    assert_eq!(reason(pol.holds(&who("nobody", &[]), Permission::AuditRead)), DenyReason::NoRoles);
    assert_eq!(reason(Policy::empty().holds(&who("olga", &[]), Permission::AuditRead)), DenyReason::NoRoles);
}

#[test]
fn default_cert_excludes_force_command_roles() {
    let pol = policy(BASE);
    let permit = pol.issue_user_cert(&who("alice", &["admins"]), &CertRequest::default()).unwrap();
    assert_eq!(permit.username(), "alice");
    assert_eq!(permit.principals(), &set(&[p("admin", "admin"), p("admin", "root")]));
    assert_eq!(permit.ttl(), Duration::from_secs(8 * 3600));
    assert!(permit.critical_options().is_empty());
    assert_eq!(permit.roles(), ["admin"]);
    assert_eq!(permit.extensions().len(), 2);
}

#[test]
fn explicit_force_command_role() {
    let pol = policy(BASE);
    let req = CertRequest { ttl: None, roles: Some(vec!["discovery".into()]) };
    let permit = pol.issue_user_cert(&who("alice", &["admins"]), &req).unwrap();
    assert_eq!(permit.principals(), &set(&[p("discovery", "discovery")]));
    assert_eq!(permit.critical_options()["force-command"], "/usr/sbin/dmidecode");
    assert_eq!(permit.ttl(), Duration::from_secs(300));
    assert!(permit.extensions().is_empty());

    // Mixing: the force-command applies to the whole certificate (more restrictive), and
    // the shortest TTL wins.
    let req = CertRequest { ttl: None, roles: Some(vec!["admin".into(), "discovery".into(), "admin".into()]) };
    let permit = pol.issue_user_cert(&who("alice", &["admins"]), &req).unwrap();
    assert_eq!(permit.principals().len(), 3);
    assert_eq!(permit.critical_options()["force-command"], "/usr/sbin/dmidecode");
    assert_eq!(permit.ttl(), Duration::from_secs(300));
    assert_eq!(permit.roles(), ["admin", "discovery"]);
}

#[test]
fn requested_roles_must_exist_be_held_and_issue() {
    let pol = policy(BASE);
    let alice = who("alice", &["admins"]);
    let req = |r: &str| CertRequest { ttl: None, roles: Some(vec![r.into()]) };
    assert_eq!(reason(pol.issue_user_cert(&alice, &req("nope"))), DenyReason::UnknownRole("nope".into()));
    assert_eq!(reason(pol.issue_user_cert(&alice, &req("ops"))), DenyReason::RoleNotHeld("ops".into()));
    let olga = who("olga", &["readers"]);
    assert_eq!(
        reason(pol.issue_user_cert(&olga, &req("auditor"))),
        DenyReason::MissingPermission(Permission::CertsIssue)
    );
    assert_eq!(
        reason(pol.issue_user_cert(&olga, &req("nocert"))),
        DenyReason::MissingPermission(Permission::CertsIssue)
    );
    let none = CertRequest { ttl: None, roles: Some(vec![]) };
    assert_eq!(reason(pol.issue_user_cert(&olga, &none)), DenyReason::NoLogins);
    assert_eq!(
        reason(pol.issue_user_cert(&who("r", &["readers"]), &CertRequest::default())),
        DenyReason::MissingPermission(Permission::CertsIssue)
    );
    assert_eq!(reason(pol.issue_user_cert(&who("nobody", &[]), &CertRequest::default())), DenyReason::NoRoles);
}

#[test]
fn ttl_is_the_minimum() {
    let pol = policy(BASE);
    let both = who("olga", &["admins"]);
    let permit = pol.issue_user_cert(&both, &CertRequest::default()).unwrap();
    assert_eq!(permit.ttl(), Duration::from_secs(2 * 3600));
    let short = CertRequest { ttl: Some(Duration::from_secs(60)), roles: None };
    assert_eq!(pol.issue_user_cert(&both, &short).unwrap().ttl(), Duration::from_secs(60));
    let long = CertRequest { ttl: Some(Duration::from_secs(30 * 86400)), roles: None };
    assert_eq!(pol.issue_user_cert(&both, &long).unwrap().ttl(), Duration::from_secs(2 * 3600));
    let zero = CertRequest { ttl: Some(Duration::ZERO), roles: None };
    assert_eq!(reason(pol.issue_user_cert(&both, &zero)), DenyReason::InvalidTtl);
    // Extensions are the union of contributing roles.
    assert_eq!(pol.issue_user_cert(&both, &CertRequest::default()).unwrap().extensions().len(), 2);
}

#[test]
fn denies_remove_logins_and_permissions() {
    let extra = r#"
[[deny]]
name = "contractors-no-root"
groups = ["contractors"]
logins = ["root"]

[[deny]]
name = "olga-no-kill"
users = ["olga"]
permissions = ["sessions.kill", "audit.read"]

[[deny]]
name = "frozen"
users = ["mallory"]
permissions = ["*"]

[[deny]]
name = "no-logins"
users = ["eve"]
logins = ["*"]
"#;
    let pol = policy(&format!("{BASE}{extra}"));
    // What a sign-in under a new name must not shed (the CA refuses such a rename).
    assert!(pol.names_user("mallory") && pol.names_user("olga"), "named by a deny");
    assert!(!pol.names_user("carl") && !pol.names_user("contractors"), "a group is not a user");
    let c = who("carl", &["admins", "contractors"]);
    let permit = pol.issue_user_cert(&c, &CertRequest::default()).unwrap();
    assert_eq!(permit.principals(), &set(&[p("admin", "admin")]));
    // The TTL is computed before denies: removing roles by deny can't lengthen it.
    let both = who("carl", &["admins", "contractors"]);
    assert_eq!(pol.issue_user_cert(&both, &CertRequest::default()).unwrap().ttl(), Duration::from_secs(8 * 3600));

    let olga = who("olga", &["admins"]);
    assert_eq!(
        reason(pol.holds(&olga, Permission::SessionsKill)),
        DenyReason::DeniedByStatement("olga-no-kill".into())
    );
    assert_eq!(reason(pol.holds(&olga, Permission::AuditRead)), DenyReason::DeniedByStatement("olga-no-kill".into()));
    assert!(pol.issue_user_cert(&olga, &CertRequest::default()).is_ok());

    let m = who("mallory", &["admins"]);
    for perm in Permission::ALL {
        assert!(pol.holds(&m, *perm).is_err());
    }
    assert_eq!(
        reason(pol.issue_user_cert(&m, &CertRequest::default())),
        DenyReason::DeniedByStatement("frozen".into())
    );

    let e = who("eve", &["admins"]);
    assert_eq!(
        reason(pol.issue_user_cert(&e, &CertRequest::default())),
        DenyReason::DeniedByStatement("no-logins".into())
    );
    assert!(pol.holds(&e, Permission::SessionsKill).is_ok());

    // Deny of certs.issue removes issuance entirely.
    let pol = policy(&format!("{BASE}[[deny]]\nname = 'n'\ngroups = ['admins']\npermissions = ['certs.issue']\n"));
    assert_eq!(
        reason(pol.issue_user_cert(&who("a", &["admins"]), &CertRequest::default())),
        DenyReason::DeniedByStatement("n".into())
    );
}

#[test]
fn conflicting_critical_options() {
    let text = r#"
[[role]]
name = "a"
logins = ["a"]
targets = 'in:devices name:%'
permissions = ["certs.issue"]
critical_options = { source-address = "10.0.0.0/8" }

[[role]]
name = "b"
logins = ["b"]
targets = 'in:devices name:%'
permissions = ["certs.issue"]
critical_options = { source-address = "192.168.0.0/16" }

[[role]]
name = "c"
logins = ["c"]
targets = 'in:devices name:%'
permissions = ["certs.issue"]

[[binding]]
group = "g"
roles = ["a", "b", "c"]
"#;
    let pol = policy(text);
    let g = who("u", &["g"]);
    assert_eq!(reason(pol.issue_user_cert(&g, &CertRequest::default())), DenyReason::ConflictingCriticalOptions);
    let ac = CertRequest { ttl: None, roles: Some(vec!["a".into(), "c".into()]) };
    let permit = pol.issue_user_cert(&g, &ac).unwrap();
    assert_eq!(permit.critical_options()["source-address"], "10.0.0.0/8");
    assert_eq!(permit.principals().len(), 2);
    assert_eq!(DenyReason::ConflictingCriticalOptions.code(), "conflicting_critical_options");
}

#[test]
fn empty_principals_are_impossible() {
    // Every path that would produce no principal is a Deny, never a permit.
    let pol = policy(BASE);
    for groups in [&[][..], &["admins"], &["readers"], &["admins", "readers"]] {
        for user in ["olga", "x"] {
            for roles in [None, Some(vec![]), Some(vec!["discovery".to_string()]), Some(vec!["auditor".to_string()])] {
                if let Ok(permit) = pol.issue_user_cert(&who(user, groups), &CertRequest { ttl: None, roles }) {
                    assert!(!permit.principals().is_empty());
                    assert!(!permit.ttl().is_zero());
                }
            }
        }
    }
}

/// A group named with its source (`ldap:admins`) is that source's group only: an identity
/// provider's or a local user's group of the same name grants nothing through it, and a
/// deny naming one source's group leaves the others' alone. A bare name matches a group
/// of that name from every source, and the policy says which names those are.
#[test]
fn a_group_named_with_its_source_is_that_sources_group_only() {
    let pol = policy(
        r#"
[[role]]
name = "admin"
permissions = ["audit.read", "sessions.kill"]

[[role]]
name = "reader"
permissions = ["audit.read"]

[[binding]]
group = "ldap:admins"
roles = ["admin"]

[[binding]]
group = "staff"
roles = ["reader"]

[[deny]]
name = "no-kill-for-idp-contractors"
groups = ["oidc:contractors"]
permissions = ["sessions.kill"]

[[deny]]
name = "no-kill-for-interns"
groups = ["interns"]
permissions = ["sessions.kill"]
"#,
    );
    let with = |user: &str, groups: &[&str]| who(user, groups);
    let roles = |i: &Identity| pol.roles_of(i).iter().map(|r| r.name().to_string()).collect::<Vec<_>>();
    assert_eq!(roles(&with("ldap:alice", &["admins"])), ["admin"]);
    for elsewhere in ["oidc:mallory", "mallory"] {
        assert!(roles(&with(elsewhere, &["admins"])).is_empty(), "{elsewhere}'s admins is not LDAP's");
    }
    // Not an account name: no source, so no qualified group.
    assert!(roles(&with("ldap:", &["admins"])).is_empty());
    for anywhere in ["ldap:bob", "oidc:bob", "bob"] {
        assert_eq!(roles(&with(anywhere, &["staff"])), ["reader"], "{anywhere}");
    }
    let kill = |user: &str, groups: &[&str]| pol.holds(&with(user, groups), Permission::SessionsKill);
    assert!(kill("ldap:alice", &["admins", "contractors"]).is_ok(), "LDAP's contractors is not the IdP's");
    assert_eq!(
        reason(kill("ldap:alice", &["admins", "interns"])),
        DenyReason::DeniedByStatement("no-kill-for-interns".into())
    );
    assert_eq!(pol.groups_from_any_source().into_iter().collect::<Vec<_>>(), ["interns", "staff"]);
}
