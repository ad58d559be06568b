//! LDAP identity against a real OpenLDAP `slapd`: search-then-bind through a real
//! `portcullisd`, nested groups to policy roles to certificate principals, every refusal
//! audited with its reason code, filter injection, group removal in a live session,
//! the directory going down; and the group lookup modes through the source itself.

// Test code: a failed expectation must fail the test, so unwrap/expect/panic/indexing
// are the right tools here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_ca::identity::{AuthFailure, IdentitySource, LdapSource, LdapToml};
use portcullis_proto::{AuditRecord, UserCertResponse, WhoAmI};
use portcullis_tests::slapd::{SUFFIX, Slapd, SlapdConfig};
use portcullis_tests::ssh::{ed25519_key, public_line};
use portcullis_tests::{Server, ServerOpts};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const ALICE_PW: &str = "alice-ldap-password-1";
const BOB_PW: &str = "bob-ldap-password-2";
const CAROL_PW: &str = "carol-ldap-password-3";
const SVC_PW: &str = "service-account-password-4";
const ALICE_DN: &str = "uid=alice,ou=people,dc=example,dc=org";
const CAROL_DN: &str = "uid=carol,ou=people,dc=example,dc=org";
/// groupOfNames needs a member; this one keeps `ops` valid when alice leaves it.
const PLACEHOLDER: &str = "cn=placeholder,dc=example,dc=org";

/// alice ∈ ops ⊂ admins, alice ∈ staff, bob ∈ staff; carol is locked (ppolicy's
/// pwdAccountLockedTime); the service account may read everything but passwords.
fn directory() -> Slapd {
    directory_with(SlapdConfig::default())
}

fn directory_with(config: SlapdConfig) -> Slapd {
    let slapd = Slapd::start_configured(config);
    slapd.ldapadd(&format!(
        "dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n\
         dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n\n\
         dn: cn=portcullis,ou=services,{SUFFIX}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n\
         cn: portcullis\nuserPassword: {SVC_PW}\n\n\
         dn: {ALICE_DN}\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\nuid: alice\ncn: Alice\nsn: A\n\
         uidNumber: 1001\ngidNumber: 1001\nhomeDirectory: /home/alice\nuserPassword: {ALICE_PW}\n\n\
         dn: uid=bob,ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: bob\ncn: Bob\nsn: B\nuserPassword: {BOB_PW}\n\n\
         dn: {CAROL_DN}\nobjectClass: inetOrgPerson\nuid: carol\ncn: Carol\nsn: C\nuserPassword: {CAROL_PW}\n\
         pwdAccountLockedTime: 000001010000Z\n\n\
         dn: cn=ops,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: ops\nmember: {ALICE_DN}\nmember: {PLACEHOLDER}\n\n\
         dn: cn=admins,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: admins\nmember: cn=ops,ou=groups,{SUFFIX}\n\n\
         dn: cn=staff,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: staff\nmember: {ALICE_DN}\n\
         member: uid=bob,ou=people,{SUFFIX}\n\n\
         dn: cn=unix,ou=groups,{SUFFIX}\nobjectClass: posixGroup\ncn: unix\ngidNumber: 5000\nmemberUid: alice\n"
    ));
    slapd
}

/// The `[ldap]` table for this directory; `extra` lines are appended.
fn ldap_table(slapd: &Slapd, extra: &str) -> String {
    let pw = slapd.write_file("svc-password", &format!("{SVC_PW}\n"));
    format!(
        "url = \"{}\"\ndanger_cleartext_passwords = true\nbind_dn = \"cn=portcullis,ou=services,{SUFFIX}\"\n\
         bind_password_file = \"{}\"\nuser_base = \"ou=people,{SUFFIX}\"\n\
         disabled_filter = \"(pwdAccountLockedTime=*)\"\nconnect_timeout = \"2s\"\noperation_timeout = \"3s\"\n{extra}",
        slapd.url,
        pw.display()
    )
}

fn source(slapd: &Slapd, extra: &str) -> LdapSource {
    let table: LdapToml = toml::from_str(&ldap_table(slapd, extra)).unwrap();
    LdapSource::new(table.validate().unwrap())
}

/// `admins` (reached only through the nested `ops`) may be root, `staff` may be `staff`.
const POLICY: &str = r#"
[[role]]
name = "portcullis-admin"
permissions = ["certs.revoke", "users.manage", "ca.manage", "audit.read", "policy.manage", "nodes.manage", "sessions.kill"]

[[role]]
name = "node-root"
logins = ["root"]
targets = 'in:devices name:%'
permissions = ["certs.issue"]

[[role]]
name = "staff-shell"
logins = ["staff"]
targets = 'in:devices name:%'
permissions = ["certs.issue"]

[[binding]]
group = "portcullis-admins"
roles = ["portcullis-admin"]

[[binding]]
group = "admins"
roles = ["node-root"]

[[binding]]
group = "staff"
roles = ["staff-shell"]
"#;

async fn ca_with_ldap(slapd: &Slapd) -> Server {
    ca_with_ldap_extra(slapd, "").await
}

async fn ca_with_ldap_extra(slapd: &Slapd, extra: &str) -> Server {
    let file = slapd.write_file("ldap.toml", &format!("[ldap]\n{}", ldap_table(slapd, extra)));
    Server::start_with(ServerOpts {
        policy: vec![("policy.toml".into(), POLICY.into())],
        args: vec!["--ldap-config".into(), file.display().to_string()],
        ..ServerOpts::default()
    })
    .await
}

async fn whoami(server: &Server, token: &str) -> WhoAmI {
    let (status, body) = server.get_json(Some(token), "/v1/auth/whoami").await;
    assert_eq!(status, StatusCode::OK, "whoami: {body}");
    serde_json::from_value(body).unwrap()
}

async fn principals(server: &Server, token: &str) -> BTreeSet<String> {
    let (status, body) = server.issue_cert(token, &public_line(&ed25519_key())).await;
    assert_eq!(status, StatusCode::OK, "certificate: {body}");
    let cert: UserCertResponse = serde_json::from_value(body).unwrap();
    cert.principals.into_iter().collect()
}

/// Every `login_failed` audit record, oldest first.
async fn failures(server: &Server) -> Vec<AuditRecord> {
    server.audit_events("login_failed").await
}

fn reason(record: &AuditRecord) -> (&str, &str, &str) {
    (
        record.payload["username"].as_str().unwrap_or(""),
        record.payload["source"].as_str().unwrap_or(""),
        record.payload["reason"].as_str().unwrap_or(""),
    )
}

/// A refused login: 401 with the one generic message, whatever the reason.
fn assert_refused(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "body: {body}");
    assert_eq!(body["error"], "invalid_credentials", "body: {body}");
}

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
async fn refusals_are_audited_and_locked_or_empty_never_bind() {
    let slapd = directory();
    let server = ca_with_ldap(&slapd).await;

    let (status, body) = server.try_login("alice", "not-alices-password").await;
    assert_refused(status, &body);
    // No such user: a bind all the same (as an entry that names nobody), so the refusal
    // takes as long as a wrong password's and tells no one which names exist.
    let nobody_bind = format!("BIND dn=\"cn=portcullis-no-such-entry,ou=people,{SUFFIX}\"");
    let mark = slapd.log_mark();
    let (status, body) = server.try_login("nobody", "whatever-password").await;
    assert_refused(status, &body);
    assert!(slapd.log_since(mark).contains(&nobody_bind), "{}", slapd.log_since(mark));

    // Locked: the right password, refused before any bind as carol (the same stand-in
    // bind instead).
    let mark = slapd.log_mark();
    let (status, body) = server.try_login("carol", CAROL_PW).await;
    assert_refused(status, &body);
    let log = slapd.log_since(mark);
    assert!(log.contains("SRCH"), "carol was looked up: {log}");
    assert!(!log.contains(&format!("BIND dn=\"{CAROL_DN}\"")), "a locked account was bound: {log}");
    assert!(log.contains(&nobody_bind), "{log}");

    // Empty password: refused before the directory hears of it (an empty simple bind is
    // an anonymous bind that "succeeds").
    let mark = slapd.log_mark();
    let (status, body) = server.try_login("alice", "").await;
    assert_refused(status, &body);
    let log = slapd.log_since(mark);
    assert!(!log.contains("BIND"), "a bind happened for an empty password: {log}");

    let got: Vec<(String, String, String)> = failures(&server)
        .await
        .iter()
        .map(reason)
        .map(|(u, s, r)| (u.to_owned(), s.to_owned(), r.to_owned()))
        .collect();
    let want: Vec<(String, String, String)> = [
        ("alice", "ldap", "bad_credentials"),
        ("nobody", "ldap", "unknown_user"),
        ("carol", "ldap", "user_disabled"),
        ("alice", "local", "empty_password"),
    ]
    .iter()
    .map(|(u, s, r)| ((*u).to_owned(), (*s).to_owned(), (*r).to_owned()))
    .collect();
    assert_eq!(got, want);
    // Bob, for contrast, gets in: the refusals above are about the input, not the setup.
    server.login("bob", BOB_PW).await;
}

#[tokio::test]
async fn filter_metacharacters_and_nul_find_nobody() {
    let slapd = directory();
    let server = ca_with_ldap(&slapd).await;

    // Names outside the one user-name alphabet (filter metacharacters, control
    // characters, over-long) are refused at the edge (400) without asking the directory
    // or writing an audit record. Unescaped, the first three would select alice alone
    // and let her password in under a name of the attacker's choosing; the fourth
    // matches everyone.
    let mark = slapd.log_mark();
    let hostile = ["alice)(|(uid=*", "ali*", "alice)(uid=alice", "*)(uid=*", "back\\slash", "zoë"];
    for name in hostile.iter().copied().chain(["alice\0", "ali\nce", &"a".repeat(300)]) {
        let (status, body) = server.try_login(name, ALICE_PW).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}: {body}");
        assert_eq!(body["error"], "bad_request", "{body}");
    }
    let log = slapd.log_since(mark);
    assert!(!log.contains("SRCH"), "the directory was searched for an impossible name: {log}");
    assert!(failures(&server).await.is_empty());

    // Below the edge the source still escapes what it is given (defence in depth).
    let ldap = source(&slapd, "");
    let mark = slapd.log_mark();
    for name in hostile {
        let refused = ldap.authenticate(name, &SecretString::from(ALICE_PW)).await.unwrap_err();
        assert_eq!(refused, AuthFailure::UnknownUser, "{name}");
    }
    let log = slapd.log_since(mark);
    assert!(log.contains(r"(uid=\2A\29\28uid=\2A)"), "the filter went out escaped: {log}");

    // The directory still works for the real name.
    server.login("alice", ALICE_PW).await;
}

#[tokio::test]
async fn directory_down_is_503_and_audited_while_local_users_log_in() {
    let mut slapd = directory();
    let server = ca_with_ldap(&slapd).await;
    let alice = server.login("alice", ALICE_PW).await;

    slapd.kill();
    let (status, body) = server.try_login("alice", ALICE_PW).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["message"], "identity directory unavailable");
    // An existing LDAP session is not waved through on stale groups either.
    let (status, body) = server.issue_cert(&alice, &public_line(&ed25519_key())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let refused = server.audit_events("session_refused").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].payload["reason"], "directory_unavailable");
    // Local users are not affected.
    server.login("admin", &server.admin_password().await).await;

    let fails = failures(&server).await;
    assert_eq!(fails.iter().map(reason).collect::<Vec<_>>(), vec![("alice", "ldap", "directory_unavailable")]);

    // Back up: pooled connections to the dead server are not reused.
    slapd.restart();
    assert_eq!(principals(&server, &alice).await.len(), 2);
    server.login("alice", ALICE_PW).await;
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

#[tokio::test]
async fn a_directory_that_never_answers_times_out_as_unavailable() {
    // Accepts TCP connections and says nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, SVC_PW).unwrap();
    let table: LdapToml = toml::from_str(&format!(
        "url = \"ldap://127.0.0.1:{port}\"\ndanger_cleartext_passwords = true\nbind_dn = \"cn=x,{SUFFIX}\"\n\
         bind_password_file = \"{}\"\nuser_base = \"{SUFFIX}\"\noperation_timeout = \"1s\"\n",
        pw.display()
    ))
    .unwrap();
    let source = LdapSource::new(table.validate().unwrap());
    let started = Instant::now();
    let got = source.authenticate("alice", &SecretString::from(ALICE_PW)).await;
    assert_eq!(got.unwrap_err(), AuthFailure::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(30), "the timeout did not end the wait");
}

#[tokio::test]
async fn empty_password_is_refused_by_the_ldap_source_before_any_bind() {
    let slapd = directory();
    let ldap = source(&slapd, "");
    let mark = slapd.log_mark();
    let got = ldap.authenticate("alice", &SecretString::from("")).await;
    assert_eq!(got.unwrap_err(), AuthFailure::EmptyPassword);
    let log = slapd.log_since(mark);
    assert!(!log.contains("BIND"), "the directory saw a bind for an empty password: {log}");
    // The same source does bind for a real password.
    let mark = slapd.log_mark();
    assert_eq!(
        ldap.authenticate("alice", &SecretString::from(ALICE_PW)).await.unwrap().identity.username,
        "ldap:alice"
    );
    assert!(slapd.log_since(mark).contains(&format!("BIND dn=\"{ALICE_DN}\"")));
}

const DAVE_PW: &str = "dave-ldap-password-5";
const DAVE_DN: &str = "uid=dave,ou=people,dc=example,dc=org";
const SVC_DN: &str = "cn=portcullis,ou=services,dc=example,dc=org";

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
async fn a_password_the_administrator_reset_must_be_changed_before_sign_in() {
    let policy = format!("cn=default,ou=policies,{SUFFIX}");
    let slapd = directory_with(SlapdConfig { ppolicy_default: Some(policy.clone()), ..SlapdConfig::default() });
    slapd.ldapadd(&format!(
        "dn: ou=policies,{SUFFIX}\nobjectClass: organizationalUnit\nou: policies\n\n\
         dn: {policy}\nobjectClass: organizationalRole\nobjectClass: pwdPolicy\ncn: default\n\
         pwdAttribute: userPassword\npwdMustChange: TRUE\n"
    ));
    // The shipped example's [ldap] table has no filter for this: none here either.
    let server = ca_with_ldap_extra(&slapd, "").await;
    let session = server.login("alice", ALICE_PW).await;

    // The administrator resets alice's password; ppolicy marks it `pwdReset: TRUE`.
    const RESET_PW: &str = "temporary-reset-password-6";
    slapd.ldapmodify(&format!("dn: {ALICE_DN}\nchangetype: modify\nreplace: userPassword\nuserPassword: {RESET_PW}\n"));

    // The session from before the reset ends at its next request.
    let (status, body) = server.get_json(Some(&session), "/v1/auth/whoami").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let refused = server.audit_events("session_refused").await;
    assert_eq!(
        refused.iter().map(|r| r.payload["reason"].as_str().unwrap()).collect::<Vec<_>>(),
        ["password_change_required"]
    );

    // Signing in with the reset password: refused, and told to change it.
    let (status, body) = server.try_login("alice", RESET_PW).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "sign_in_failed", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("must be changed") && message.contains("change it"), "{message}");
    assert!(!message.contains("dc=") && !message.contains("pwdReset") && !message.contains(RESET_PW), "{message}");
    // A wrong password learns nothing about the account's state.
    let (status, body) = server.try_login("alice", "not-alices-password").await;
    assert_refused(status, &body);
    let fails = failures(&server).await;
    assert_eq!(
        fails.iter().map(reason).collect::<Vec<_>>(),
        vec![("alice", "ldap", "password_change_required"), ("alice", "ldap", "bad_credentials")]
    );
    // Locked accounts are still refused (carol), the same policy does not touch bob.
    let (status, body) = server.try_login("carol", CAROL_PW).await;
    assert_refused(status, &body);
    server.login("bob", BOB_PW).await;

    // Positive control: alice changes the password herself, then signs in with it.
    const NEW_PW: &str = "alices-own-new-password-7";
    slapd.change_own_password(ALICE_DN, RESET_PW, NEW_PW);
    let token = server.login("alice", NEW_PW).await;
    assert_eq!(whoami(&server, &token).await.username, "ldap:alice");
}

#[tokio::test]
async fn locked_accounts_are_refused_without_a_disabled_filter() {
    let slapd = directory();
    // The shipped example: no `disabled_filter`. carol carries pwdAccountLockedTime.
    let pw = slapd.write_file("svc-password-2", &format!("{SVC_PW}\n"));
    let table: LdapToml = toml::from_str(&format!(
        "url = \"{}\"\ndanger_cleartext_passwords = true\nbind_dn = \"{SVC_DN}\"\nbind_password_file = \"{}\"\n\
         user_base = \"ou=people,{SUFFIX}\"\n",
        slapd.url,
        pw.display()
    ))
    .unwrap();
    let ldap = LdapSource::new(table.validate().unwrap());
    let mark = slapd.log_mark();
    assert_eq!(ldap.authenticate("carol", &SecretString::from(CAROL_PW)).await.unwrap_err(), AuthFailure::Disabled);
    assert!(!slapd.log_since(mark).contains(&format!("BIND dn=\"{CAROL_DN}\"")), "a locked account was bound");
    assert_eq!(ldap.refresh("carol").await.unwrap_err(), AuthFailure::Disabled);
    // Unlocked, the same account signs in.
    slapd.ldapmodify(&format!("dn: {CAROL_DN}\nchangetype: modify\ndelete: pwdAccountLockedTime\n"));
    assert_eq!(
        ldap.authenticate("carol", &SecretString::from(CAROL_PW)).await.unwrap().identity.username,
        "ldap:carol"
    );
    assert!(ldap.refresh("carol").await.unwrap().is_some());
}

/// bob's `staff` group may open the lab node's console and an SSH session to it as
/// `staff`; the local `admins` may manage nodes.
const SESSION_POLICY: &str = r#"
[[role]]
name = "admin"
permissions = ["nodes.manage"]

[[role]]
name = "staff-shell"
logins = ["staff"]
targets = 'in:devices tags.env:lab'
permissions = ["certs.issue", "devices.console.open"]
max_cert_ttl = "8h"

[[rule]]
name = "lab-ssh"
purpose = "ssh_login"
targets = 'in:devices tags.env:lab'
scope = { agents = ["local"] }

[[rule]]
name = "lab-console"
purpose = "console_access"
targets = 'in:devices tags.env:lab'
scope = { agents = ["local"] }

[[binding]]
group = "admins"
roles = ["admin"]

[[binding]]
group = "staff"
roles = ["staff-shell"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_account_is_rechecked_at_session_open_and_console_ticket_redemption() {
    use portcullis_ca::{Ca, CaConfig, Clock, ManualClock};
    use portcullis_policies::proof;
    use portcullis_proto::bastion::ServiceKind;
    use portcullis_proto::{NodeRecord, UserCertRequest};
    use portcullis_tests::{ServedCa, TEST_PASSPHRASE, first_admin, sqlite_url};
    use serde_json::json;
    use std::sync::Arc;
    const IP: &str = "192.0.2.9";

    let slapd = directory();
    let dir = tempfile::tempdir().unwrap();
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("policy.toml"), SESSION_POLICY).unwrap();
    let mut config = CaConfig::new(sqlite_url(dir.path()), policy_dir, SecretString::from(TEST_PASSPHRASE));
    config.default_agent = Some("local".to_owned());
    config.extra_sources = vec![Arc::new(source(&slapd, ""))];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let clock = ManualClock::new(now);
    let ca = Arc::new(Ca::open(config, Arc::new(clock.clone())).await.unwrap());
    let api = ServedCa::start(Arc::clone(&ca)).await;

    let admin = first_admin(&ca, "admins", IP).await;
    let nodes = ca.core().authorize::<proof::NodesManage>(&ca.identity().caller(&admin).await.unwrap()).unwrap();
    let node = NodeRecord {
        name: "pve01".into(),
        addresses: vec!["10.0.0.5".into()],
        tags: [("env".to_owned(), "lab".to_owned())].into(),
        host_keys: vec![public_line(&ed25519_key())],
        ..Default::default()
    };
    ca.nodes().add_node(&nodes, &node).await.unwrap();
    let bastion = ca
        .services()
        .register_service(ServiceKind::Bastion, "b1", &public_line(&ed25519_key()), Some("127.0.0.1:2223"))
        .await
        .unwrap()
        .api_token
        .expose()
        .to_owned();

    // bob signs in from the directory, gets a certificate and two console tickets.
    let bob = ca
        .identity()
        .login_password("bob", None, &SecretString::from(BOB_PW), IP)
        .await
        .unwrap()
        .token
        .expose()
        .to_owned();
    let caller = ca.identity().caller(&bob).await.unwrap();
    assert_eq!(caller.identity.source, "ldap");
    let key = ed25519_key();
    let request = UserCertRequest { public_key: public_line(&key), ..Default::default() };
    let issued = ca.issuance().issue(&caller, &request, IP).await.unwrap();
    let cert = ssh_key::Certificate::from_openssh(&issued.certificate).unwrap();
    let digest = portcullis_sshcert::certificate_digest(&cert);
    // Each open is a new connection of bob's, with his proof of it.
    let proof = || {
        let session = portcullis_sshcert::random_bytes::<32>();
        portcullis_tests::ssh::connection_proof(&key, &cert, "staff%pve01", &session)
    };
    let serial = issued.serial;
    let ticket = || async {
        let (status, v) =
            api.post_json(Some(&bob), "/v1/console/tickets", &json!({"device": "pve01", "login": "staff"})).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v["ticket"].as_str().unwrap().to_owned()
    };
    let (before, after) = (ticket().await, ticket().await);
    let session_id = || hex::encode(portcullis_sshcert::random_bytes::<16>());
    let open_as = |serial: String, id: String| {
        let body = json!({
            "session_id": id, "mode": "terminated", "cert_serial": serial, "certificate_digest": digest, "login": "staff",
            "device": "pve01", "client_ip": IP, "session_public_key": public_line(&ed25519_key()),
            "connection_proof": proof(),
        });
        let api = &api;
        let bastion = &bastion;
        async move { api.post_json(Some(bastion), "/v1/bastion/sessions/open", &body).await }
    };
    let open = |serial: String| open_as(serial, session_id());
    // The close orders a heartbeat listing `id` gets, after `seconds` more of heartbeats
    // (10 s apart, well inside the lease TTL).
    let heartbeat_after = |id: String, seconds: u64| {
        let (api, bastion, clock) = (&api, &bastion, &clock);
        async move {
            let body =
                json!({"sessions": [{"session_id": id, "bytes_from_client": 0, "bytes_to_client": 0}], "agents": []});
            let mut passed = 0;
            loop {
                let (status, v) = api.post_json(Some(bastion), "/v1/bastion/heartbeat", &body).await;
                assert_eq!(status, StatusCode::OK, "{v}");
                if passed >= seconds || !v["close"].as_array().unwrap().is_empty() {
                    return v["close"].clone();
                }
                let step = (seconds - passed).min(10);
                passed += step;
                clock.set(clock.now_unix() + step);
            }
        }
    };
    let redeem = |ticket: String| {
        let body = json!({
            "ticket": ticket, "session_id": session_id(), "session_public_key": public_line(&ed25519_key()), "client_ip": IP,
            "browser_session": portcullis_proto::console::session_binding(&bob),
        });
        let api = &api;
        let bastion = &bastion;
        async move { api.post_json(Some(bastion), "/v1/bastion/console/open", &body).await }
    };
    let assert_denied = |(status, v): (StatusCode, Value)| {
        assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
        assert_eq!(v["error"], "session_denied", "{v}");
        assert!(v["message"].as_str().unwrap().starts_with("credential_invalid: "), "{v}");
    };

    // Positive control: while the account is fine, both open.
    let live = session_id();
    let (status, v) = open_as(serial.to_string(), live.clone()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = redeem(before).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(heartbeat_after(live.clone(), 0).await, json!([]), "the directory vouches for bob");

    // Locked in the directory: the certificate and the ticket issued before stop working.
    slapd.ldapmodify(&format!(
        "dn: uid=bob,ou=people,{SUFFIX}\nchangetype: modify\nadd: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n"
    ));
    assert_denied(open(serial.to_string()).await);
    assert_denied(redeem(after).await);
    let refused = ca.core().store().audit_records(0, 100_000).await.unwrap();
    let reasons: Vec<String> = refused
        .iter()
        .filter(|r| r.event == "session_refused")
        .map(|r| serde_json::from_str::<Value>(&r.payload).unwrap()["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasons, ["user_disabled", "user_disabled"]);
    // The live session ends too, once the directory's answer is due again (a minute).
    let close = heartbeat_after(live, 70).await;
    assert_eq!(close[0]["reason"], "revoked", "{close}");

    // Unlocked: the certificate works again; taken out of `staff` in the directory, the
    // session it granted ends (RBAC revoked) within a minute.
    slapd.ldapmodify(&format!("dn: uid=bob,ou=people,{SUFFIX}\nchangetype: modify\ndelete: pwdAccountLockedTime\n"));
    let live = session_id();
    let (status, v) = open_as(serial.to_string(), live.clone()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(heartbeat_after(live.clone(), 70).await, json!([]), "nothing changed, nothing closes");
    let member = format!("uid=bob,ou=people,{SUFFIX}");
    let staff = format!("dn: cn=staff,ou=groups,{SUFFIX}\nchangetype: modify\n");
    slapd.ldapmodify(&format!("{staff}delete: member\nmember: {member}\n"));
    let close = heartbeat_after(live, 70).await;
    assert_eq!(close[0]["reason"], "policy_changed", "{close}");
    slapd.ldapmodify(&format!("{staff}add: member\nmember: {member}\n"));

    // Removed from the directory: the certificate opens nothing.
    slapd.ldapmodify(&format!("dn: uid=bob,ou=people,{SUFFIX}\nchangetype: delete\n"));
    assert_denied(open(serial.to_string()).await);
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
