//! End to end with the real OpenSSH: `portcullis login` against a running
//! `portcullisd`, then `ssh` into throwaway `sshd`s that trust the CA exactly as an
//! enrolled node does (TrustedUserCAKeys, AuthorizedPrincipalsFile from the API,
//! RevokedKeys). Every refusal has a positive control on the same sshd, so a refusal
//! caused by broken plumbing cannot pass for a working check.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_ca::keys::KeyPurpose;
use portcullis_ca::{Ca, Clock, ManualClock, SystemClock};
use portcullis_proto::{NodePrincipals, NodeRecord, PrincipalLine, UserCertRequest};
use portcullis_tests::cli::portcullis;
use portcullis_tests::ssh::{ed25519_key, krl_revokes, public_line, write_key_pair};
use portcullis_tests::sshd::{NodeTrust, Sshd};
use portcullis_tests::{Server, ServerOpts, bin, same_ca};
use secrecy::SecretString;
use ssh_key::certificate::{Builder, CertType};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

const TEAM_POLICY: &str = r#"
[[role]]
name = "prod-root"
logins = ["root"]
targets = 'in:devices tags.env:prod'
permissions = ["certs.issue"]
max_cert_ttl = "1h"
extensions = ["permit-pty"]

[[role]]
name = "dev-root"
logins = ["root"]
targets = 'in:devices tags.env:dev'
permissions = ["certs.issue"]

[[binding]]
group = "ops"
roles = ["prod-root"]

[[binding]]
group = "devs"
roles = ["dev-root"]
"#;

const PASSWORD: &str = "correct horse battery staple";

fn node(name: &str, env: &str) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        addresses: vec!["127.0.0.1".into()],
        tags: [("env".to_owned(), env.to_owned())].into(),
        ..Default::default()
    }
}

/// A node's sshd, trusting exactly what the CA says this node should trust.
async fn node_sshd(server: &Server, admin: &str, name: &str, krl: Option<Vec<u8>>) -> Sshd {
    let (status, body) = server.get_json(Some(admin), &format!("/v1/nodes/{name}/principals")).await;
    assert!(status.is_success(), "principals for {name}: {body}");
    let principals: NodePrincipals = serde_json::from_value(body).unwrap();
    Sshd::start(&NodeTrust {
        trusted_user_ca_keys: server.user_ca_keys.clone(),
        // The lines with their options, as enrollment writes them.
        principals: principals
            .lines
            .into_iter()
            .map(|(login, lines)| (login, lines.iter().map(PrincipalLine::render).collect()))
            .collect(),
        krl,
    })
}

/// Runs the real CLI as a user whose home is `home`.
fn cli_login(server: &Server, home: &Path, user: &str, password: &str) -> (PathBuf, PathBuf) {
    let out = portcullis(
        home,
        &["login", "--ca", &server.url, "--ca-fingerprint", &server.pin, "--user", user, "--password-stdin"],
        &format!("{password}\n"),
    );
    assert!(
        out.status.success(),
        "login as {user} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = home.join(".ssh/portcullis");
    (dir.join("id_ed25519"), dir.join("id_ed25519-cert.pub"))
}

async fn team_server() -> (Server, String) {
    let server = Server::start_with(ServerOpts::default()).await;
    let (status, body) = server.write_policy("team.toml", TEAM_POLICY).await;
    assert!(status.is_success(), "policy: {body}");
    let admin = server.admin_token().await;
    server.add_node(&admin, &node("pve-prod", "prod")).await;
    server.add_node(&admin, &node("pve-dev", "dev")).await;
    server.add_user(&admin, "alice", &["ops"], PASSWORD).await;
    server.add_user(&admin, "bob", &["devs"], PASSWORD).await;
    (server, admin)
}

/// The same people may be root on prod and on lab, but only the lab role allows port
/// forwarding.
const SPLIT_POLICY: &str = r#"
[[role]]
name = "prod-shell"
logins = ["root"]
targets = 'in:devices tags.env:prod'
permissions = ["certs.issue"]
extensions = ["permit-pty"]

[[role]]
name = "lab-shell"
logins = ["root"]
targets = 'in:devices tags.env:lab'
permissions = ["certs.issue"]
extensions = ["permit-pty", "permit-port-forwarding"]

[[binding]]
group = "ops"
roles = ["prod-shell", "lab-shell"]
"#;

/// One certificate carries both roles' principals and the union of their extensions,
/// yet `permit-port-forwarding` works only on the nodes the lab role covers: each role's
/// principals line on a node restricts the certificate to what that role grants, and a
/// prod node lists only the prod role's line. Real sshd, real `ssh -W`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_applies_only_on_nodes_of_the_role_that_grants_it() {
    let server = Server::start_with(ServerOpts::default()).await;
    let (status, body) = server.write_policy("split.toml", SPLIT_POLICY).await;
    assert!(status.is_success(), "policy: {body}");
    let admin = server.admin_token().await;
    server.add_node(&admin, &node("pve-prod", "prod")).await;
    server.add_node(&admin, &node("pve-lab", "lab")).await;
    server.add_user(&admin, "carol", &["ops"], PASSWORD).await;
    let prod = node_sshd(&server, &admin, "pve-prod", None).await;
    let lab = node_sshd(&server, &admin, "pve-lab", None).await;
    let home = tempfile::tempdir().unwrap();
    let (key, cert) = cli_login(&server, home.path(), "carol", PASSWORD);
    let listing = String::from_utf8_lossy(&Command::new("ssh-keygen").arg("-Lf").arg(&cert).output().unwrap().stdout)
        .into_owned();
    assert!(listing.contains("permit-port-forwarding"), "the certificate carries the union: {listing}");

    // Positive controls: carol logs in on both, and forwards through lab (to lab's own
    // sshd, whose banner comes back).
    assert!(prod.accepts("root", &key, &cert), "{}", prod.log());
    assert!(lab.accepts("root", &key, &cert), "{}", lab.log());
    let target = format!("127.0.0.1:{}", lab.port);
    let through_lab = lab.forward_stdio("root", &key, &cert, &target);
    assert!(
        String::from_utf8_lossy(&through_lab.stdout).starts_with("SSH-2.0-"),
        "forwarding through lab: {}",
        String::from_utf8_lossy(&through_lab.stderr)
    );
    // The same certificate forwards nothing through prod.
    let through_prod = prod.forward_stdio("root", &key, &cert, &target);
    assert!(!String::from_utf8_lossy(&through_prod.stdout).contains("SSH-2.0-"), "prod forwarded");
    let said = String::from_utf8_lossy(&through_prod.stderr);
    assert!(said.contains("administratively prohibited"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_certificate_logs_in_where_policy_allows_and_nowhere_else() {
    let (server, admin) = team_server().await;
    let empty_krl = server.get_bytes(None, "/v1/krl").await.1;
    let prod = node_sshd(&server, &admin, "pve-prod", Some(empty_krl)).await;
    let dev = node_sshd(&server, &admin, "pve-dev", None).await;

    let alice_home = tempfile::tempdir().unwrap();
    let (alice_key, alice_cert) = cli_login(&server, alice_home.path(), "alice", PASSWORD);
    let bob_home = tempfile::tempdir().unwrap();
    let (bob_key, bob_cert) = cli_login(&server, bob_home.path(), "bob", PASSWORD);

    // The CLI's files are what OpenSSH expects, and the key never left the machine.
    let key_mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&alice_key).unwrap().permissions());
    assert_eq!(key_mode & 0o077, 0, "private key must be owner-only");
    let listing = Command::new("ssh-keygen").arg("-L").arg("-f").arg(&alice_cert).output().unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains("Key ID: \"alice\""), "the key id is the account name");

    assert!(prod.accepts("root", &alice_key, &alice_cert), "alice on prod: {}", prod.log());
    assert!(dev.accepts("root", &bob_key, &bob_cert), "bob on dev: {}", dev.log());

    // Scoped principals: same CA, same login, but the node's principals file for root
    // lists only the roles whose targets cover it.
    assert!(!dev.accepts("root", &alice_key, &alice_cert), "alice must not reach the dev node");
    assert!(!prod.accepts("root", &bob_key, &bob_cert), "bob must not reach the prod node");
    // Wrong principal: a login no role grants her.
    assert!(!prod.accepts("nobody", &alice_key, &alice_cert));

    // `portcullis status` reports the certificate.
    let status = portcullis(alice_home.path(), &["status"], "");
    assert!(String::from_utf8_lossy(&status.stdout).contains("principals: pc_"));

    // Revocation through the admin CLI, enforced by sshd through the published KRL.
    let admin_home = tempfile::tempdir().unwrap();
    cli_login(&server, admin_home.path(), "admin", &server.admin_password().await);
    let serial = listing_serial(&alice_cert);
    let out = portcullis(admin_home.path(), &["admin", "revoke", "--serial", &serial], "");
    assert!(out.status.success(), "revoke: {}", String::from_utf8_lossy(&out.stderr));
    // The listing names it revoked; `--limit` bounds it to the newest.
    let certs = |args: &[&str]| {
        let out = portcullis(admin_home.path(), &[&["admin", "certs"], args].concat(), "");
        assert!(out.status.success(), "certs: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    };
    let alices = certs(&["--user", "alice"]);
    assert_eq!(alices.len(), 1, "{alices:?}");
    assert_eq!((alices[0]["serial"].as_str(), alices[0]["revoked"].as_bool()), (Some(serial.as_str()), Some(true)));
    let (all, newest) = (certs(&[]), certs(&["--limit", "2"]));
    assert!(all.len() >= 3, "alice's, bob's and the admin's: {all:?}");
    assert_eq!(newest, all[..2], "the newest two");
    let out = portcullis(admin_home.path(), &["admin", "certs", "--limit", "0"], "");
    assert!(!out.status.success(), "a limit of 0 is refused before asking the CA");
    let krl = server.get_bytes(None, "/v1/krl").await.1;
    let krl_path = alice_home.path().join("krl");
    std::fs::write(&krl_path, &krl).unwrap();
    let q = Command::new("ssh-keygen").arg("-Q").arg("-f").arg(&krl_path).arg(&alice_cert).output().unwrap();
    assert!(!q.status.success(), "ssh-keygen -Q must report the certificate revoked");
    prod.set_krl(&krl);
    assert!(!prod.accepts("root", &alice_key, &alice_cert), "revoked certificate must be refused");
    assert!(prod.log().contains("revoked"), "sshd should say why: {}", prod.log());

    // After logging in again she has a new serial and gets in again; logout removes it all.
    let (alice_key, alice_cert) = cli_login(&server, alice_home.path(), "alice", PASSWORD);
    assert!(prod.accepts("root", &alice_key, &alice_cert));
    let out = portcullis(alice_home.path(), &["logout"], "");
    assert!(out.status.success());
    assert!(!alice_key.exists() && !alice_cert.exists());
}

/// A role that asks for a security key's PIN on every login.
const PIN_POLICY: &str = r#"
[[role]]
name = "prod-pin"
logins = ["root"]
targets = 'in:devices tags.env:prod'
permissions = ["certs.issue"]
critical_options = { verify-required = "" }

[[binding]]
group = "fido"
roles = ["prod-pin"]
"#;

/// `portcullis login --key` certifies a key of the user's own — as a security key's must
/// be, for roles that ask for a PIN — writing only its certificate beside it: `ssh -i`
/// uses it against a real sshd, `status` shows it, `logout` revokes and removes the
/// certificate and leaves the key. A plain key under a PIN role is refused with how to
/// make a security key; a security key's public half is certified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_certifies_a_key_of_the_users_own_and_logout_leaves_the_key() {
    let (server, admin) = team_server().await;
    let prod = node_sshd(&server, &admin, "pve-prod", None).await;
    let home = tempfile::tempdir().unwrap();
    let key = home.path().join("mine");
    portcullis_tests::ssh::ssh_keygen_ok(&["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()]);
    let public_before = std::fs::read(home.path().join("mine.pub")).unwrap();
    let login = |user: &str, key: &Path| {
        let args = ["login", "--ca", &server.url, "--ca-fingerprint", &server.pin, "--user", user, "--password-stdin"];
        let key = key.to_str().unwrap();
        portcullis(home.path(), &[&args[..], &["--key", key]].concat(), &format!("{PASSWORD}\n"))
    };
    let out = login("alice", &key);
    assert!(out.status.success(), "{}", portcullis_tests::cli::text(&out));
    let cert = home.path().join("mine-cert.pub");
    assert!(prod.accepts("root", &key, &cert), "her own key's certificate on prod: {}", prod.log());
    assert!(!home.path().join(".ssh/portcullis/id_ed25519").exists(), "the CLI made a key of its own");
    let status = portcullis(home.path(), &["status"], "");
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("mine-cert.pub"),
        "{}",
        portcullis_tests::cli::text(&status)
    );
    let serial = listing_serial(&cert);
    let out = portcullis(home.path(), &["logout"], "");
    assert!(out.status.success(), "{}", portcullis_tests::cli::text(&out));
    assert!(!cert.exists() && key.exists(), "logout removes the certificate, never her key");
    assert_eq!(std::fs::read(home.path().join("mine.pub")).unwrap(), public_before);
    let revoked = async |serial: &str| {
        let (_, certs) = server.get_json(Some(&admin), "/v1/admin/certs?user=alice").await;
        let listed = certs.as_array().unwrap().iter().find(|c| c["serial"] == serial).cloned();
        listed.is_some_and(|c| c["revoked"] == true)
    };
    assert!(revoked(&serial).await, "logout revokes it");

    // A later login with the CLI's own key does not make logout forget her key's
    // certificate (it did: only the last login's was revoked and removed).
    assert!(login("alice", &key).status.success());
    let serial = listing_serial(&cert);
    let args = ["login", "--ca", &server.url, "--ca-fingerprint", &server.pin, "--user", "alice", "--password-stdin"];
    let out = portcullis(home.path(), &args, &format!("{PASSWORD}\n"));
    assert!(out.status.success(), "{}", portcullis_tests::cli::text(&out));
    let out = portcullis(home.path(), &["logout"], "");
    assert!(out.status.success(), "{}", portcullis_tests::cli::text(&out));
    assert!(!cert.exists() && key.exists(), "{}", portcullis_tests::cli::text(&out));
    assert!(revoked(&serial).await, "logout revokes every certificate it installed");
    // A certificate file that holds another certificate by now is not the CLI's to remove.
    assert!(login("alice", &key).status.success());
    let other = home.path().join("other");
    portcullis_tests::ssh::ssh_keygen_ok(&["-q", "-t", "ed25519", "-N", "", "-f", other.to_str().unwrap()]);
    assert!(login("alice", &other).status.success());
    std::fs::copy(home.path().join("other-cert.pub"), &cert).unwrap();
    let out = portcullis(home.path(), &["logout"], "");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("holds another certificate"),
        "{}",
        portcullis_tests::cli::text(&out)
    );
    assert!(cert.exists(), "a certificate the CLI did not write there was removed");

    // A role asking for a PIN: a plain key is refused, saying how to make a security
    // key; a security key's public half (its handle stays on the user's machine) passes.
    let (status, body) = server.write_policy("pin.toml", PIN_POLICY).await;
    assert!(status.is_success(), "policy: {body}");
    server.add_user(&admin, "carol", &["fido"], PASSWORD).await;
    let out = login("carol", &key);
    assert!(
        !out.status.success() && portcullis_tests::cli::text(&out).contains("ed25519-sk"),
        "{}",
        portcullis_tests::cli::text(&out)
    );
    let sk = portcullis_tests::ssh::SoftSecurityKey::new(0);
    std::fs::write(home.path().join("sk.pub"), format!("{}\n", sk.public_key().to_openssh().unwrap())).unwrap();
    let out = login("carol", &home.path().join("sk"));
    assert!(out.status.success(), "{}", portcullis_tests::cli::text(&out));
    let sk_cert = home.path().join("sk-cert.pub");
    let listing = portcullis_tests::ssh::ssh_keygen_ok(&["-L", "-f", sk_cert.to_str().unwrap()]);
    assert!(listing.contains("verify-required") && listing.contains("sk-ssh-ed25519"), "{listing}");
}

fn listing_serial(cert: &Path) -> String {
    let text = std::fs::read_to_string(cert).unwrap();
    ssh_key::Certificate::from_openssh(text.trim()).unwrap().serial().to_string()
}

async fn issue_at(ca: &Ca, clock: &ManualClock, at: u64, public_key: &str) -> String {
    clock.set(at);
    let login = ca.identity().login_password("alice", None, &SecretString::from(PASSWORD), "127.0.0.1").await.unwrap();
    let caller = ca.identity().caller(login.token.expose()).await.unwrap();
    let request = UserCertRequest { public_key: public_key.to_owned(), ttl_seconds: Some(3600), roles: None };
    ca.issuance().issue(&caller, &request, "127.0.0.1").await.unwrap().certificate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_outside_their_validity_window_are_refused() {
    let (server, admin) = team_server().await;
    let prod = node_sshd(&server, &admin, "pve-prod", None).await;
    let now = SystemClock.now_unix();
    let clock = ManualClock::new(now);
    let ca = same_ca(&server, Arc::new(clock.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519_key();
    let key_path = write_key_pair(dir.path(), "id", &key);
    let cert_path = dir.path().join("id-cert.pub");

    let current = issue_at(&ca, &clock, now, &public_line(&key)).await;
    std::fs::write(&cert_path, current).unwrap();
    assert!(prod.accepts("root", &key_path, &cert_path), "control: {}", prod.log());

    let expired = issue_at(&ca, &clock, now - 10 * 3600, &public_line(&key)).await;
    std::fs::write(&cert_path, expired).unwrap();
    assert!(!prod.accepts("root", &key_path, &cert_path), "expired certificate must be refused");

    let future = issue_at(&ca, &clock, now + 3600, &public_line(&key)).await;
    std::fs::write(&cert_path, future).unwrap();
    assert!(!prod.accepts("root", &key_path, &cert_path), "not-yet-valid certificate must be refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_ca_and_host_type_certificates_are_refused() {
    let (server, admin) = team_server().await;
    let prod = node_sshd(&server, &admin, "pve-prod", None).await;
    let ca = same_ca(&server, Arc::new(SystemClock)).await;
    let principal = portcullis_policies::scoped_principal("prod-root", "root");
    let user_ca = ca.core().keyring().signer(KeyPurpose::User).unwrap();
    let foreign_ca = ed25519_key();
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519_key();
    let key_path = write_key_pair(dir.path(), "id", &key);
    let cert_path = dir.path().join("id-cert.pub");
    let now = SystemClock.now_unix();

    let sign = |signer: &ssh_key::PrivateKey, cert_type: CertType| {
        let mut b = Builder::new_with_random_nonce(
            &mut ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng),
            key.public_key().key_data().clone(),
            now - 60,
            now + 600,
        )
        .unwrap();
        b.serial(42).unwrap().key_id("forged").unwrap().cert_type(cert_type).unwrap();
        b.valid_principal(principal.clone()).unwrap();
        b.sign(signer).unwrap().to_openssh().unwrap()
    };

    std::fs::write(&cert_path, sign(&user_ca.key, CertType::User)).unwrap();
    assert!(prod.accepts("root", &key_path, &cert_path), "control: {}", prod.log());

    std::fs::write(&cert_path, sign(&foreign_ca, CertType::User)).unwrap();
    assert!(!prod.accepts("root", &key_path, &cert_path), "certificate from another CA must be refused");

    std::fs::write(&cert_path, sign(&user_ca.key, CertType::Host)).unwrap();
    assert!(!prod.accepts("root", &key_path, &cert_path), "host certificate must not work as a user certificate");
}

/// A real ssh-agent: after `portcullis login` it holds the key and certificate (for the
/// certificate's lifetime), and plain `ssh` through the agent gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_loads_the_certificate_into_ssh_agent() {
    let (server, admin) = team_server().await;
    let prod = node_sshd(&server, &admin, "pve-prod", None).await;
    let home = tempfile::tempdir().unwrap();
    let socket = home.path().join("agent.sock");
    let mut agent = Command::new("ssh-agent").arg("-D").arg("-a").arg(&socket).stdout(Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "ssh-agent did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A key of the user's own, loaded before: Portcullis must leave it alone.
    let own = home.path().join("own_key");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "my-own-key", "-f"])
        .arg(&own)
        .output()
        .unwrap();
    assert!(keygen.status.success());
    assert!(Command::new("ssh-add").arg(&own).env("SSH_AUTH_SOCK", &socket).output().unwrap().status.success());
    let agent_lines = || {
        let listed = Command::new("ssh-add").arg("-L").env("SSH_AUTH_SOCK", &socket).output().unwrap();
        String::from_utf8_lossy(&listed.stdout).lines().map(str::to_owned).collect::<Vec<_>>()
    };
    let login = || {
        let out = Command::new(bin("portcullis"))
            .args([
                "login",
                "--ca",
                &server.url,
                "--ca-fingerprint",
                &server.pin,
                "--user",
                "alice",
                "--password-stdin",
            ])
            .env("HOME", home.path())
            .env("SSH_AUTH_SOCK", &socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("Added to ssh-agent"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    login();
    let listed = Command::new("ssh-add").arg("-l").env("SSH_AUTH_SOCK", &socket).output().unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("ED25519-CERT"), "agent holds the certificate");
    let via_agent = prod.ssh_with_agent("root", &socket);
    assert!(via_agent.status.success(), "ssh via agent: {}", prod.log());

    // A second login replaces the first certificate in the agent instead of adding to it.
    login();
    let certs = agent_lines().into_iter().filter(|l| l.contains("-cert-v01@openssh.com")).count();
    assert_eq!(certs, 1, "earlier logins' certificates stay in the agent: {:?}", agent_lines());

    // Logout takes every Portcullis key and certificate out of the agent, and nothing
    // else, and revokes the certificate it had installed (a copy left elsewhere stops
    // working where the KRL reaches).
    let cert_file = home.path().join(".ssh/portcullis/id_ed25519-cert.pub");
    let copy = home.path().join("copied-cert.pub");
    std::fs::copy(&cert_file, &copy).unwrap();
    let krl = home.path().join("krl");
    std::fs::write(&krl, server.get_bytes(None, "/v1/krl").await.1).unwrap();
    assert!(!krl_revokes(&krl, &copy), "control: not revoked before logout");
    let out = portcullis_with_agent(home.path(), &socket, &["logout"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Revoked certificate serial"), "{out:?}");
    std::fs::write(&krl, server.get_bytes(None, "/v1/krl").await.1).unwrap();
    assert!(krl_revokes(&krl, &copy), "logout must revoke the certificate it installed");
    let left = agent_lines();
    assert!(!left.iter().any(|l| l.contains("-cert-v01@openssh.com") || l.ends_with(" portcullis")), "{left:?}");
    assert!(left.iter().any(|l| l.ends_with("my-own-key")), "logout removed the user's own key: {left:?}");
    assert!(!prod.ssh_with_agent("root", &socket).status.success(), "logged out: agent must not log in");
    // The CA's URL and pin, and the user name, stay: the next login needs only the password.
    let again = portcullis(home.path(), &["login", "--password-stdin"], &format!("{PASSWORD}\n"));
    assert!(
        again.status.success(),
        "{}{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
    let _ = agent.kill();
    let _ = agent.wait();
}

fn portcullis_with_agent(home: &Path, socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("portcullis"))
        .args(args)
        .env("HOME", home)
        .env("SSH_AUTH_SOCK", socket)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}
