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
const SVC_DN: &str = "cn=portcullis,ou=services,dc=example,dc=org";
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

/// An in-process CA on a manual clock, with `directory` as its LDAP source and
/// [`SESSION_POLICY`], node `pve01` (lab) and bastion `b1` registered: for tests that
/// open sessions as the bastion and heartbeat them.
struct SessionWorld {
    ca: std::sync::Arc<portcullis_ca::Ca>,
    api: portcullis_tests::ServedCa,
    clock: portcullis_ca::ManualClock,
    /// Bastion `b1`'s API token.
    bastion: String,
    _dir: tempfile::TempDir,
}

const SESSION_IP: &str = "192.0.2.9";

async fn session_world(directory: LdapSource) -> SessionWorld {
    use portcullis_ca::{Ca, CaConfig, ManualClock};
    use portcullis_policies::proof;
    use portcullis_proto::NodeRecord;
    use portcullis_tests::{ServedCa, TEST_PASSPHRASE, first_admin, sqlite_url};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("policy.toml"), SESSION_POLICY).unwrap();
    let mut config = CaConfig::new(sqlite_url(dir.path()), policy_dir, SecretString::from(TEST_PASSPHRASE));
    config.default_agent = Some("local".to_owned());
    config.extra_sources = vec![Arc::new(directory)];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let clock = ManualClock::new(now);
    let ca = Arc::new(Ca::open(config, Arc::new(clock.clone())).await.unwrap());
    let api = ServedCa::start(Arc::clone(&ca)).await;
    let admin = first_admin(&ca, "admins", SESSION_IP).await;
    let nodes = ca.core().authorize::<proof::NodesManage>(&ca.identity().caller(&admin).await.unwrap()).unwrap();
    let node = NodeRecord {
        name: "pve01".into(),
        addresses: vec!["10.0.0.5".into()],
        tags: [("env".to_owned(), "lab".to_owned())].into(),
        host_keys: vec![public_line(&ed25519_key())],
        ..Default::default()
    };
    ca.nodes().add_node(&nodes, &node).await.unwrap();
    let bastion = portcullis_tests::bastion_b1(&ca).await;
    SessionWorld { ca, api, clock, bastion, _dir: dir }
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

mod accounts;
mod groups;
mod outage;
