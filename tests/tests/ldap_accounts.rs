//! Who a directory user is, against a real OpenLDAP `slapd` and a real `portcullisd`:
//! the account `ldap:NAME`, never the local user of the same bare name, held for the
//! directory entry (its `entryUUID`) that first signed in with it.

// Test code: a failed expectation must fail the test, so unwrap/expect/panic/indexing
// are the right tools here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_policies::scoped_principal;
use portcullis_proto::UserCertResponse;
use portcullis_tests::slapd::{SUFFIX, Slapd};
use portcullis_tests::ssh::{ed25519_key, public_line};
use portcullis_tests::{Server, ServerOpts};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SVC_PW: &str = "service-account-password-4";
const ADMIN_PW: &str = "directory-admin-password-1";
const ALICE_PW: &str = "alice-ldap-password-1";
const ALICE_DN: &str = "uid=alice,ou=people,dc=example,dc=org";

fn person(dn: &str, uid: &str, password: &str) -> String {
    format!("dn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nuserPassword: {password}\n")
}

fn directory() -> Slapd {
    let slapd = Slapd::start();
    slapd.ldapadd(&format!(
        "dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n\n\
         dn: cn=portcullis,ou=services,{SUFFIX}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n\
         cn: portcullis\nuserPassword: {SVC_PW}\n\n{}\n{}",
        person(&format!("uid=admin,ou=people,{SUFFIX}"), "admin", ADMIN_PW),
        person(ALICE_DN, "alice", ALICE_PW),
    ));
    slapd
}

/// A bare name binds the local user only; `ldap:alice` binds the directory's alice.
const POLICY: &str = r#"
[[role]]
name = "portcullis-admin"
permissions = ["certs.revoke", "users.manage", "audit.read"]

[[binding]]
group = "portcullis-admins"
roles = ["portcullis-admin"]

[[role]]
name = "local-root"
logins = ["root"]
targets = 'in:devices name:%'
permissions = ["certs.issue"]

[[role]]
name = "directory-staff"
logins = ["staff"]
targets = 'in:devices name:%'
permissions = ["certs.issue"]

[[binding]]
user = "alice"
roles = ["local-root"]

[[binding]]
user = "ldap:alice"
roles = ["directory-staff"]
"#;

async fn ca_with_ldap(slapd: &Slapd) -> Server {
    let pw = slapd.write_file("svc-password", &format!("{SVC_PW}\n"));
    let table = format!(
        "[ldap]\nurl = \"{}\"\ndanger_cleartext_passwords = true\nbind_dn = \"cn=portcullis,ou=services,{SUFFIX}\"\n\
         bind_password_file = \"{}\"\nuser_base = \"ou=people,{SUFFIX}\"\nconnect_timeout = \"2s\"\n",
        slapd.url,
        pw.display()
    );
    let file = slapd.write_file("ldap.toml", &table);
    Server::start_with(ServerOpts {
        policy: vec![("policy.toml".into(), POLICY.into())],
        args: vec!["--ldap-config".into(), file.display().to_string()],
        ..ServerOpts::default()
    })
    .await
}

async fn sign_in(server: &Server, body: Value) -> (StatusCode, Value) {
    server.post_json(None, "/v1/auth/login", &body).await
}

fn token(answer: (StatusCode, Value)) -> String {
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
    answer.1["token"].as_str().unwrap().to_owned()
}

/// The local `admin` shadows the directory's `admin` for the bare name — the local user
/// is asked first and its "wrong password" is final — and the directory user signs in
/// as `ldap:admin` (or with `source = "ldap"`), getting none of the local admin's rights.
#[tokio::test]
async fn a_local_user_shadows_the_bare_name_and_the_directory_user_names_its_source() {
    let slapd = directory();
    let server = ca_with_ldap(&slapd).await;

    let (status, body) = sign_in(&server, json!({ "username": "admin", "password": ADMIN_PW })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let failed = server.audit_events("login_failed").await;
    assert!(failed.iter().any(|r| r.payload["source"] == "local" && r.payload["username"] == "admin"), "{failed:?}");

    for body in [
        json!({ "username": "ldap:admin", "password": ADMIN_PW }),
        json!({ "username": "admin", "password": ADMIN_PW, "source": "ldap" }),
    ] {
        let directory_admin = token(sign_in(&server, body).await);
        let (_, me) = server.whoami(&directory_admin).await;
        assert_eq!((me["username"].as_str(), me["source"].as_str()), (Some("ldap:admin"), Some("ldap")));
        let (status, _) = server.get_json(Some(&directory_admin), "/v1/admin/audit").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "the directory's admin is not the local one");
    }
    // Positive control: the local administrator, same bare name.
    let local_admin = server.admin_token().await;
    assert_eq!(server.get_json(Some(&local_admin), "/v1/admin/audit").await.0, StatusCode::OK);
    // A source and a qualified name that disagree, or an unknown source: refused.
    let (status, _) =
        sign_in(&server, json!({ "username": "ldap:admin", "password": ADMIN_PW, "source": "local" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = sign_in(&server, json!({ "username": "admin", "password": ADMIN_PW, "source": "nis" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// `user = "alice"` binds the local alice only: the directory's alice gets what
/// `user = "ldap:alice"` gives, and revoking the local alice's certificates leaves hers.
/// A directory entry deleted and recreated under the same name is another subject: the
/// old entry's session ends at once, and the new entry is refused until an
/// administrator releases the name.
#[tokio::test]
async fn bindings_name_the_source_and_a_recreated_entry_is_another_subject() {
    let slapd = directory();
    let server = ca_with_ldap(&slapd).await;
    let admin = server.admin_token().await;

    let alice = token(sign_in(&server, json!({ "username": "alice", "password": ALICE_PW })).await);
    let (status, body) = server.issue_cert(&alice, &public_line(&ed25519_key())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cert: UserCertResponse = serde_json::from_value(body).unwrap();
    assert_eq!(cert.principals, vec![scoped_principal("directory-staff", "staff")]);
    assert_eq!(cert.key_id, "ldap:alice", "the key id names the account, source included");
    // Revoking the local alice (who does not even exist) touches nothing of hers.
    let (status, body) = server.post_json(Some(&admin), "/v1/admin/revoke", &json!({ "username": "alice" })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["certificates_revoked"], 0, "{body}");
    assert_eq!(server.whoami(&alice).await.0, StatusCode::OK);

    // The entry is deleted and a new one created with the same uid (a new entryUUID).
    slapd.ldapmodify(&format!("dn: {ALICE_DN}\nchangetype: delete\n"));
    slapd.ldapadd(&person(ALICE_DN, "alice", "new-alice-password-2"));
    let (status, _) = server.whoami(&alice).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the old entry's session must end");
    let refused = server.audit_events("session_refused").await;
    assert!(refused.iter().any(|r| r.payload["reason"] == "account_taken"), "{refused:?}");
    let (status, body) = sign_in(&server, json!({ "username": "alice", "password": "new-alice-password-2" })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["message"].as_str().unwrap().contains("admin user release ldap:alice"), "{body}");

    // Released on purpose: the old entry's live certificate is revoked with it, and the
    // new entry signs in.
    let (status, body) = server.post_json(Some(&admin), "/v1/admin/users/ldap:alice/release", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let revoked = server.audit_events("revoked").await;
    assert!(
        revoked.iter().any(|r| r.payload["target"] == "user:ldap:alice" && r.payload["certificates"] == 1),
        "{revoked:?}"
    );
    let new_alice = token(sign_in(&server, json!({ "username": "alice", "password": "new-alice-password-2" })).await);
    assert_eq!(server.whoami(&new_alice).await.1["username"], "ldap:alice");
}

/// An entry renamed in the directory (same entry, new uid) moves to its new account name,
/// and what it had under the old name ends then: otherwise the next entry given the old
/// uid would claim the freed name, and the renamed person's old session and certificates
/// would pass every check as that other person. A name the policy itself names (here a
/// binding of `ldap:alice`; a deny alike) is not shed by a rename at the source — at an
/// IdP, often the user's own to edit, that lifted a deny on the old name (found in
/// review): the sign-in under the new name is refused until an administrator releases
/// the old one.
#[tokio::test]
async fn a_renamed_entry_leaves_nothing_behind_under_its_old_name() {
    let slapd = directory();
    let server = ca_with_ldap(&slapd).await;
    let admin = server.admin_token().await;
    let old_session = token(sign_in(&server, json!({ "username": "alice", "password": ALICE_PW })).await);
    let (status, body) = server.issue_cert(&old_session, &public_line(&ed25519_key())).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    slapd.ldapmodify(&format!("dn: {ALICE_DN}\nchangetype: modrdn\nnewrdn: uid=alice2\ndeleteoldrdn: 1\n"));
    let (status, body) = sign_in(&server, json!({ "username": "alice2", "password": ALICE_PW })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a rename shed a name the policy names: {body}");
    assert!(body.to_string().contains("admin user release ldap:alice"), "{body}");
    let failed = server.audit_events("login_failed").await;
    assert!(
        failed.iter().any(|r| r.payload["username"] == "ldap:alice2" && r.payload["reason"] == "account_renamed"),
        "{failed:?}"
    );
    let (status, body) = server.post_json(Some(&admin), "/v1/admin/users/ldap:alice/release", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let renamed = token(sign_in(&server, json!({ "username": "alice2", "password": ALICE_PW })).await);
    assert_eq!(server.whoami(&renamed).await.1["username"], "ldap:alice2");
    let revoked = server.audit_events("revoked").await;
    assert!(
        revoked.iter().any(|r| r.payload["target"] == "user:ldap:alice" && r.payload["certificates"] == 1),
        "the old name's certificate is revoked: {revoked:?}"
    );

    // Someone else is given the uid alice: the freed name is theirs, and the renamed
    // person's old session is not.
    slapd.ldapadd(&person(ALICE_DN, "alice", "another-alice-password-3"));
    let other = token(sign_in(&server, json!({ "username": "alice", "password": "another-alice-password-3" })).await);
    assert_eq!(server.whoami(&other).await.1["username"], "ldap:alice");
    assert_eq!(server.whoami(&old_session).await.0, StatusCode::UNAUTHORIZED, "the old session ended");
}
