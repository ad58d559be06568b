//! LDAP over TLS against a real OpenLDAP `slapd` whose certificate comes from a CA made
//! here with rcgen: StartTLS and LDAPS logins succeed with that CA as `ca_file`, and the
//! password bind only ever travels inside TLS; a certificate from another CA, or for
//! another host, makes the directory "unavailable" (503) before slapd hears any bind;
//! plain `ldap://` is refused at start-up unless `danger_cleartext_passwords = true`.

// Test code: a failed expectation must fail the test, so unwrap/expect/panic/indexing
// are the right tools here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_ca::CaError;
use portcullis_ca::identity::{AuthFailure, IdentitySource, LdapSource, LdapToml};
use portcullis_tests::bin;
use portcullis_tests::slapd::{SUFFIX, Slapd, SlapdTls};
use portcullis_tests::{Server, ServerOpts};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ALICE_PW: &str = "alice-tls-password-1";
const SVC_PW: &str = "service-account-password-2";
const ALICE_DN: &str = "uid=alice,ou=people,dc=example,dc=org";
const SVC_DN: &str = "cn=portcullis,ou=services,dc=example,dc=org";

/// A test certificate authority, generated per test and never written anywhere but the
/// test's temporary directories.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa { issuer: Issuer::new(params, key), pem }
    }

    /// slapd's TLS material: a leaf for `names` (DNS names or IP addresses) signed by this CA.
    fn server_tls(&self, names: &[&str]) -> SlapdTls {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "slapd under test");
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        SlapdTls { cert_pem: cert.pem(), key_pem: key.serialize_pem(), ca_pem: self.pem.clone() }
    }
}

/// A TLS-enabled slapd with a service account and alice (in `ops`).
fn directory(tls: SlapdTls) -> Slapd {
    let slapd = Slapd::start_with(Some(tls));
    slapd.ldapadd(&format!(
        "dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n\
         dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n\n\
         dn: {SVC_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n\
         cn: portcullis\nuserPassword: {SVC_PW}\n\n\
         dn: {ALICE_DN}\nobjectClass: inetOrgPerson\nuid: alice\ncn: Alice\nsn: A\nuserPassword: {ALICE_PW}\n\n\
         dn: cn=ops,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: ops\nmember: {ALICE_DN}\n"
    ));
    slapd
}

/// The `[ldap]` table for `url`; `transport` holds `starttls`/`ca_file`/`danger_…` lines.
fn ldap_table(slapd: &Slapd, url: &str, transport: &str) -> String {
    let pw = slapd.write_file("svc-password", &format!("{SVC_PW}\n"));
    format!(
        "url = \"{url}\"\n{transport}bind_dn = \"{SVC_DN}\"\nbind_password_file = \"{}\"\n\
         user_base = \"ou=people,{SUFFIX}\"\nconnect_timeout = \"3s\"\noperation_timeout = \"3s\"\n",
        pw.display()
    )
}

/// `ca_file = …` naming a file in the slapd's directory that holds `pem`.
fn ca_file(slapd: &Slapd, name: &str, pem: &str) -> String {
    format!("ca_file = \"{}\"\n", slapd.write_file(name, pem).display())
}

fn source(slapd: &Slapd, url: &str, transport: &str) -> LdapSource {
    let table: LdapToml = toml::from_str(&ldap_table(slapd, url, transport)).unwrap();
    LdapSource::new(table.validate().unwrap())
}

/// The connection number of a slapd `stats` line (`conn=1004 op=1 BIND …` → `1004`).
fn conn_id(line: &str) -> Option<&str> {
    line.split_whitespace().find_map(|w| w.strip_prefix("conn="))
}

/// Checks that slapd saw alice's password bind in `log`, and that every bind (hers and
/// the service account's) came on a connection that had finished a TLS handshake before.
fn assert_binds_only_inside_tls(log: &str) {
    let mut tls_conns = BTreeSet::new();
    let mut alice_bound = false;
    for line in log.lines() {
        let Some(conn) = conn_id(line) else { continue };
        if line.contains("TLS established") {
            tls_conns.insert(conn.to_owned());
        } else if line.contains(" BIND dn=") {
            assert!(tls_conns.contains(conn), "a bind outside TLS: {line}\n{log}");
            alice_bound |= line.contains(&format!("BIND dn=\"{ALICE_DN}\""));
        }
    }
    assert!(alice_bound, "alice's password bind never reached slapd:\n{log}");
}

/// Checks that slapd heard no bind at all in `log` (neither the service account's nor,
/// above all, one carrying alice's password).
fn assert_no_bind(log: &str) {
    assert!(!log.contains(" BIND "), "slapd saw a bind:\n{log}");
    assert!(!log.contains(ALICE_PW), "the password is in slapd's log:\n{log}");
}

#[tokio::test]
async fn starttls_login_through_portcullisd_with_the_test_ca() {
    let ca = TestCa::new("Portcullis test LDAP CA");
    let slapd = directory(ca.server_tls(&["127.0.0.1", "localhost"]));
    let transport = format!("starttls = true\n{}", ca_file(&slapd, "ldap-ca.pem", &ca.pem));
    let config = slapd.write_file("ldap.toml", &format!("[ldap]\n{}", ldap_table(&slapd, &slapd.url, &transport)));
    let server = Server::start_with(ServerOpts {
        args: vec!["--ldap-config".into(), config.display().to_string()],
        ..ServerOpts::default()
    })
    .await;

    let mark = slapd.log_mark();
    let token = server.login("alice", ALICE_PW).await;
    let log = slapd.log_since(mark);
    // StartTLS is the extended operation 1.3.6.1.4.1.1466.20037 on the plain port.
    assert!(log.contains("oid=1.3.6.1.4.1.1466.20037"), "no StartTLS request:\n{log}");
    assert_binds_only_inside_tls(&log);

    let (status, body) = server.get_json(Some(&token), "/v1/auth/whoami").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["source"], "ldap");
    assert_eq!(body["groups"], serde_json::json!(["ops"]));
}

#[tokio::test]
async fn ldaps_login_verifies_the_name_or_address_in_the_url() {
    let ca = TestCa::new("Portcullis test LDAP CA");
    let slapd = directory(ca.server_tls(&["127.0.0.1", "localhost"]));
    let ldaps = slapd.ldaps_url.clone().unwrap();
    let port = ldaps.rsplit(':').next().unwrap();
    let transport = ca_file(&slapd, "ldap-ca.pem", &ca.pem);

    // An IP address SAN for 127.0.0.1, a DNS SAN for localhost.
    for url in [ldaps.clone(), format!("ldaps://localhost:{port}")] {
        let mark = slapd.log_mark();
        let ldap = source(&slapd, &url, &transport);
        let alice = ldap.authenticate("alice", &SecretString::from(ALICE_PW)).await.unwrap();
        assert_eq!(alice.identity.username, "ldap:alice");
        assert_eq!(alice.identity.groups, BTreeSet::from(["ops".to_owned()]));
        let log = slapd.log_since(mark);
        assert!(!log.contains("oid=1.3.6.1.4.1.1466.20037"), "StartTLS on ldaps://:\n{log}");
        assert_binds_only_inside_tls(&log);
        assert_eq!(
            ldap.authenticate("alice", &SecretString::from("wrong-password")).await.unwrap_err(),
            AuthFailure::BadPassword,
            "a refused bind over TLS is a bad password, not an unavailable directory"
        );
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_unavailable_and_hears_no_bind() {
    let ca = TestCa::new("Portcullis test LDAP CA");
    let other = TestCa::new("Some other CA");
    let slapd = directory(ca.server_tls(&["127.0.0.1", "localhost"]));
    let ldaps = slapd.ldaps_url.clone().unwrap();
    let wrong = ca_file(&slapd, "other-ca.pem", &other.pem);

    // Through portcullisd, StartTLS: 503, audited as the directory being unavailable.
    let config = slapd.write_file(
        "ldap.toml",
        &format!("[ldap]\n{}", ldap_table(&slapd, &slapd.url, &format!("starttls = true\n{wrong}"))),
    );
    let server = Server::start_with(ServerOpts {
        args: vec!["--ldap-config".into(), config.display().to_string()],
        ..ServerOpts::default()
    })
    .await;
    let mark = slapd.log_mark();
    let (status, body) = server.try_login("alice", ALICE_PW).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["message"], "identity directory unavailable");
    let log = slapd.log_since(mark);
    assert!(log.contains("oid=1.3.6.1.4.1.1466.20037"), "the StartTLS attempt did reach slapd:\n{log}");
    assert_no_bind(&log);
    let fails = server.audit_events("login_failed").await;
    let reasons: Vec<_> = fails.iter().map(|r| (r.payload["username"].clone(), r.payload["reason"].clone())).collect();
    assert_eq!(reasons, [(Value::from("alice"), Value::from("directory_unavailable"))]);

    // The source itself, both transports.
    for (url, transport) in [(slapd.url.clone(), format!("starttls = true\n{wrong}")), (ldaps.clone(), wrong.clone())] {
        let mark = slapd.log_mark();
        let ldap = source(&slapd, &url, &transport);
        assert_eq!(
            ldap.authenticate("alice", &SecretString::from(ALICE_PW)).await.unwrap_err(),
            AuthFailure::Unavailable
        );
        assert_eq!(ldap.refresh("alice").await.unwrap_err(), AuthFailure::Unavailable);
        assert_no_bind(&slapd.log_since(mark));
    }

    // For contrast, the same directory with both CAs in the bundle: the log check above
    // does see binds when they happen.
    let both = ca_file(&slapd, "both-cas.pem", &format!("{}{}", other.pem, ca.pem));
    let mark = slapd.log_mark();
    source(&slapd, &ldaps, &both).authenticate("alice", &SecretString::from(ALICE_PW)).await.unwrap();
    assert_binds_only_inside_tls(&slapd.log_since(mark));
}

#[tokio::test]
async fn a_certificate_for_another_host_is_unavailable() {
    let ca = TestCa::new("Portcullis test LDAP CA");
    let slapd = directory(ca.server_tls(&["ldap.example.org"]));
    let ldaps = slapd.ldaps_url.clone().unwrap();
    let trusted = ca_file(&slapd, "ldap-ca.pem", &ca.pem);
    for (url, transport) in [(slapd.url.clone(), format!("starttls = true\n{trusted}")), (ldaps, trusted.clone())] {
        let mark = slapd.log_mark();
        let ldap = source(&slapd, &url, &transport);
        assert_eq!(
            ldap.authenticate("alice", &SecretString::from(ALICE_PW)).await.unwrap_err(),
            AuthFailure::Unavailable
        );
        assert_no_bind(&slapd.log_since(mark));
    }
}

/// Runs `portcullisd all-in-one --ldap-config FILE` and returns its stderr, which must
/// come with a failed exit within 30 s (a server that starts instead is killed).
fn portcullisd_refuses(config: &std::path::Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    let mut child = Command::new(bin("portcullisd"))
        .arg("all-in-one")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--ldap-config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("portcullisd started with {}", config.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(&stderr).unwrap();
    assert!(!status.success(), "{err}");
    err
}

#[tokio::test]
async fn cleartext_ldap_is_refused_at_start_up_unless_dangerous() {
    let ca = TestCa::new("Portcullis test LDAP CA");
    let slapd = directory(ca.server_tls(&["127.0.0.1"]));
    let plain = |transport: &str| toml::from_str::<LdapToml>(&ldap_table(&slapd, &slapd.url, transport)).unwrap();

    match plain("").validate() {
        Err(CaError::Config(msg)) => assert!(msg.starts_with("ldap.url:") && msg.contains("clear"), "{msg}"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("ldap:// without StartTLS was accepted"),
    }
    // A CA bundle does not make a cleartext connection safe; it is refused as a mistake.
    let with_ca = format!("danger_cleartext_passwords = true\n{}", ca_file(&slapd, "ldap-ca.pem", &ca.pem));
    assert!(matches!(plain(&with_ca).validate(), Err(CaError::Config(msg)) if msg.starts_with("ldap.ca_file:")));
    // StartTLS without a CA bundle: the system store is not trusted implicitly.
    assert!(
        matches!(plain("starttls = true\n").validate(), Err(CaError::Config(msg)) if msg.starts_with("ldap.ca_file:"))
    );

    // The real binary does not start with it either.
    let config = slapd.write_file("ldap.toml", &format!("[ldap]\n{}", ldap_table(&slapd, &slapd.url, "")));
    let err = portcullisd_refuses(&config);
    assert!(err.contains("ldap.url"), "{err}");

    // With the switch it validates and works (and the bind really is in the clear).
    let mark = slapd.log_mark();
    let ldap = LdapSource::new(plain("danger_cleartext_passwords = true\n").validate().unwrap());
    assert_eq!(
        ldap.authenticate("alice", &SecretString::from(ALICE_PW)).await.unwrap().identity.username,
        "ldap:alice"
    );
    let log = slapd.log_since(mark);
    assert!(log.contains(&format!("BIND dn=\"{ALICE_DN}\"")) && !log.contains("TLS established"), "{log}");
}
