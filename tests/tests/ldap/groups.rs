//! Group membership: nesting, search modes, paging past size limits, lists cut off, depth and references.

use super::*;

#[tokio::test]
async fn nested_groups_grant_roles_and_group_removal_shrinks_the_next_certificate() {
    let slapd = directory();
    let server = ca_with_ldap(&slapd).await;
    let token = server.login("alice", ALICE_PW).await;

    let me = whoami(&server, &token).await;
    assert_eq!(me.source, "ldap");
    let groups: BTreeSet<&str> = me.groups.iter().map(String::as_str).collect();
    assert_eq!(groups, BTreeSet::from(["admins", "ops", "staff"]), "admins only through ops");
    let before = principals(&server, &token).await;
    assert_eq!(before.len(), 2, "root (via nested admins) and staff: {before:?}");
    assert!(before.iter().any(|p| p.ends_with("_root")) && before.iter().any(|p| p.ends_with("_staff")));

    // alice leaves ops (and with it admins); her session is the same.
    slapd.ldapmodify(&format!(
        "dn: cn=ops,ou=groups,{SUFFIX}\nchangetype: modify\ndelete: member\nmember: {ALICE_DN}\n"
    ));
    let after = principals(&server, &token).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after.iter().all(|p| p.ends_with("_staff")) && after.is_subset(&before));
    assert_eq!(whoami(&server, &token).await.groups, vec!["staff".to_owned()]);

    let ok = server.audit_events("login_succeeded").await;
    assert!(ok.iter().any(|r| r.payload["username"] == "ldap:alice" && r.payload["source"] == "ldap"), "{ok:?}");
}

#[tokio::test]
async fn group_search_modes_nesting_depth_and_cycles() {
    let slapd = directory();
    let pass = SecretString::from(ALICE_PW);
    let names = |v: portcullis_ca::identity::Vouched| v.identity.groups.into_iter().collect::<Vec<_>>();

    // memberOf, nesting off: direct groups only.
    let direct = source(&slapd, "nested_depth = 0\n");
    assert_eq!(names(direct.authenticate("alice", &pass).await.unwrap()), ["ops", "staff"]);

    // groupOfNames search, nested.
    let search = source(&slapd, &format!("group_mode = \"search\"\ngroup_base = \"ou=groups,{SUFFIX}\"\n"));
    assert_eq!(names(search.authenticate("alice", &pass).await.unwrap()), ["admins", "ops", "staff"]);

    // posixGroup: memberUid holds the login name.
    let posix = source(
        &slapd,
        &format!("group_mode = \"search\"\ngroup_base = \"ou=groups,{SUFFIX}\"\ngroup_kind = \"posixGroup\"\n"),
    );
    assert_eq!(names(posix.authenticate("alice", &pass).await.unwrap()), ["unix"]);

    // A cycle (admins ∋ ops ∋ admins) ends, in both modes.
    slapd.ldapmodify(&format!(
        "dn: cn=ops,ou=groups,{SUFFIX}\nchangetype: modify\nadd: member\nmember: cn=admins,ou=groups,{SUFFIX}\n"
    ));
    let nested = source(&slapd, "");
    assert_eq!(names(nested.authenticate("alice", &pass).await.unwrap()), ["admins", "ops", "staff"]);
    assert_eq!(names(search.refresh("alice").await.unwrap().unwrap()), ["admins", "ops", "staff"]);

    // refresh: locked and vanished users.
    assert_eq!(nested.refresh("carol").await.unwrap_err(), AuthFailure::Disabled);
    assert!(nested.refresh("nobody").await.unwrap().is_none());
}

const DAVE_PW: &str = "dave-ldap-password-5";
const DAVE_DN: &str = "uid=dave,ou=people,dc=example,dc=org";

/// dave is a direct member of six groups; the last one (`quarantine`) is the kind a
/// policy denies on.
fn add_dave(slapd: &Slapd) -> BTreeSet<String> {
    let names = ["g1", "g2", "g3", "g4", "g5", "quarantine"];
    let mut ldif =
        format!("dn: {DAVE_DN}\nobjectClass: inetOrgPerson\nuid: dave\ncn: Dave\nsn: D\nuserPassword: {DAVE_PW}\n\n");
    for name in names {
        ldif.push_str(&format!(
            "dn: cn={name},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: {name}\nmember: {DAVE_DN}\n\n"
        ));
    }
    slapd.ldapadd(&ldif);
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn search_mode() -> String {
    format!("group_mode = \"search\"\ngroup_base = \"ou=groups,{SUFFIX}\"\n")
}

/// The service account may see at most 3 entries per search request; with `paged`, a
/// paged search may still read everything (RFC 2696), without it the total is capped too.
fn limited_directory(paged: bool) -> Slapd {
    let prtotal = if paged { "unlimited" } else { "3" };
    directory_with(SlapdConfig {
        database: format!("olcLimits: dn.exact=\"{SVC_DN}\" size.soft=3 size.hard=3 size.prtotal={prtotal}\n"),
        ..SlapdConfig::default()
    })
}

#[tokio::test]
async fn paged_group_search_reads_past_the_servers_size_limit() {
    let slapd = limited_directory(true);
    let all = add_dave(&slapd);
    let ldap = source(&slapd, &search_mode());
    // Unpaged, the server stops at 3 groups and `quarantine` falls off the end.
    let dave = ldap.authenticate("dave", &SecretString::from(DAVE_PW)).await.unwrap();
    assert_eq!(dave.identity.groups, all, "every group, the one past the size limit included");
    assert_eq!(ldap.refresh("dave").await.unwrap().unwrap().identity.groups, all);
    // Nested groups are read the same way.
    let alice = ldap.authenticate("alice", &SecretString::from(ALICE_PW)).await.unwrap();
    assert_eq!(alice.identity.groups.into_iter().collect::<Vec<_>>(), ["admins", "ops", "staff"]);
}

#[tokio::test]
async fn a_group_list_the_directory_cuts_off_refuses_the_sign_in_and_the_session() {
    let slapd = limited_directory(false);
    add_dave(&slapd);
    let ldap = source(&slapd, &search_mode());
    assert_eq!(
        ldap.authenticate("dave", &SecretString::from(DAVE_PW)).await.unwrap_err(),
        AuthFailure::MembershipIncomplete
    );
    assert_eq!(ldap.refresh("dave").await.unwrap_err(), AuthFailure::MembershipIncomplete);
    // Positive control, same directory and limit: fewer groups than the limit.
    let alice = ldap.authenticate("alice", &SecretString::from(ALICE_PW)).await.unwrap();
    assert_eq!(alice.identity.groups.into_iter().collect::<Vec<_>>(), ["admins", "ops", "staff"]);

    // Through portcullisd: refused with its own reason code, and a message that says why
    // without naming a group or the directory's limit.
    let server = ca_with_ldap_extra(&slapd, &search_mode()).await;
    let (status, body) = server.try_login("dave", DAVE_PW).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "sign_in_failed", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("did not list all of your groups"), "{message}");
    assert!(!message.contains("quarantine") && !message.contains("limit") && !message.contains("dc="), "{message}");
    let fails = failures(&server).await;
    assert_eq!(fails.iter().map(reason).collect::<Vec<_>>(), vec![("dave", "ldap", "membership_incomplete")]);

    // A session whose user later joins more groups than the directory will list ends.
    let bob = server.login("bob", BOB_PW).await;
    let mut ldif = String::new();
    for name in ["g1", "g2", "g3", "g4"] {
        ldif.push_str(&format!(
            "dn: cn={name},ou=groups,{SUFFIX}\nchangetype: modify\nadd: member\nmember: uid=bob,ou=people,{SUFFIX}\n\n"
        ));
    }
    slapd.ldapmodify(&ldif);
    let (status, body) = server.get_json(Some(&bob), "/v1/auth/whoami").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let refused = server.audit_events("session_refused").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].payload["reason"], "membership_incomplete");
}

#[tokio::test]
async fn nesting_deeper_than_nested_depth_refuses_in_both_group_modes() {
    let slapd = directory();
    // alice ∈ ops ⊂ admins ⊂ superadmins: three levels.
    slapd.ldapadd(&format!(
        "dn: cn=superadmins,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: superadmins\n\
         member: cn=admins,ou=groups,{SUFFIX}\n"
    ));
    let pass = SecretString::from(ALICE_PW);
    for mode in ["", search_mode().as_str()] {
        let shallow = source(&slapd, &format!("{mode}nested_depth = 1\n"));
        assert_eq!(
            shallow.authenticate("alice", &pass).await.unwrap_err(),
            AuthFailure::MembershipIncomplete,
            "{mode}"
        );
        assert_eq!(shallow.refresh("alice").await.unwrap_err(), AuthFailure::MembershipIncomplete, "{mode}");
        // bob (staff only, not nested) is not affected by the limit.
        assert!(shallow.authenticate("bob", &SecretString::from(BOB_PW)).await.is_ok(), "{mode}");
        // Positive control: deep enough.
        let deep = source(&slapd, &format!("{mode}nested_depth = 2\n"));
        let groups = deep.authenticate("alice", &pass).await.unwrap().identity.groups;
        assert_eq!(groups.into_iter().collect::<Vec<_>>(), ["admins", "ops", "staff", "superadmins"], "{mode}");
    }
}

#[tokio::test]
async fn a_search_reference_in_the_group_search_refuses_until_it_is_gone() {
    let slapd = directory();
    // A part of the group tree lives on another server: slapd answers the subtree search
    // with a continuation reference, which the CA does not chase.
    let referral = format!("cn=partner,ou=groups,{SUFFIX}");
    slapd.ldapmodify_manage_dsait(&format!(
        "dn: {referral}\nchangetype: add\nobjectClass: referral\nobjectClass: extensibleObject\ncn: partner\n\
         ref: ldap://ldap.partner.example/ou=groups,dc=partner,dc=example\n"
    ));
    let ldap = source(&slapd, &search_mode());
    let pass = SecretString::from(ALICE_PW);
    assert_eq!(ldap.authenticate("alice", &pass).await.unwrap_err(), AuthFailure::MembershipIncomplete);
    assert_eq!(ldap.refresh("alice").await.unwrap_err(), AuthFailure::MembershipIncomplete);
    // Positive control: the same directory without the reference.
    slapd.ldapmodify_manage_dsait(&format!("dn: {referral}\nchangetype: delete\n"));
    let groups = ldap.authenticate("alice", &pass).await.unwrap().identity.groups;
    assert_eq!(groups.into_iter().collect::<Vec<_>>(), ["admins", "ops", "staff"]);
}
