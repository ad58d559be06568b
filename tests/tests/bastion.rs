//! The bastion's SSH front door against a real CA and the real OpenSSH client: a valid
//! certificate gets past authentication (and then, without a device in the user name,
//! meets the "name the device" channel refusal); everything else is refused *at
//! authentication*, each asserted by the bastion's structured event, with the valid
//! certificate as the positive control on the same listener.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_bastion::{
    Bastion, BastionConfig, BastionEvent, ControlConfig, ControlPlane, EventSink, RefusalReason, SystemClock,
    TrustConfig, TrustSource,
};
use portcullis_ca::{Clock, ManualClock};
use portcullis_proto::{NodeRecord, UserCertRequest};
use portcullis_sshcert::{Rejection, Unconfirmed};
use portcullis_tests::server::write_file;
use portcullis_tests::ssh::{SoftSecurityKey, TrustAnyHost, ed25519_key, public_line, write_key_pair};
use portcullis_tests::{Server, same_ca};
use secrecy::SecretString;
use serde_json::json;
use ssh_key::certificate::{Builder, CertType};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::broadcast;

const POLICY: &str = r#"
[[role]]
name = "prod-root"
logins = ["root"]
targets = 'in:devices tags.env:prod'
permissions = ["certs.issue"]
max_cert_ttl = "1h"

[[binding]]
group = "ops"
roles = ["prod-root"]

# User verification on every login: a security key's PIN.
[[role]]
name = "prod-fido"
logins = ["root"]
targets = 'in:devices tags.env:prod'
permissions = ["certs.issue"]
max_cert_ttl = "1h"
critical_options = { verify-required = "" }

[[binding]]
group = "fido"
roles = ["prod-fido"]
"#;

const PASSWORD: &str = "correct horse battery staple";

struct Attempt {
    stderr: String,
    events: Vec<BastionEvent>,
}

impl Attempt {
    fn accepted(&self) -> bool {
        self.events.iter().any(|e| matches!(e, BastionEvent::AuthAccepted { .. }))
    }

    fn refused_for(&self, want: &RefusalReason) -> bool {
        self.events.iter().any(|e| matches!(e, BastionEvent::AuthRefused { reason, .. } if reason == want))
    }
}

/// Real `ssh` with only the given key (and certificate, if any), no agent, no config.
async fn ssh(
    port: u16,
    user: &str,
    key: &Path,
    cert: Option<&Path>,
    rx: &mut broadcast::Receiver<BastionEvent>,
) -> Attempt {
    let mut cmd = tokio::process::Command::new("/usr/bin/ssh");
    cmd.args(["-F", "/dev/null", "-p", &port.to_string()])
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"])
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20", "-o", "LogLevel=INFO"])
        .arg("-i")
        .arg(key)
        .env_remove("SSH_AUTH_SOCK");
    if let Some(cert) = cert {
        cmd.arg("-o").arg(format!("CertificateFile={}", cert.display()));
    }
    let out = cmd.arg(format!("{user}@127.0.0.1")).arg("true").output().await.unwrap();
    assert!(!out.status.success(), "nothing here may open a session");
    // Events are recorded before the answer goes out, so after ssh exits they are here.
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    Attempt { stderr: String::from_utf8_lossy(&out.stderr).into_owned(), events }
}

/// A bastion trusting exactly what `server`'s CA publishes, with a node `pve-prod`
/// (tag `env:prod`) and alice (group `ops`) on it: its port and its event stream.
async fn front_door(server: &Server) -> (u16, broadcast::Receiver<BastionEvent>, Arc<TrustSource>) {
    let (status, body) = server.write_policy("team.toml", POLICY).await;
    assert!(status.is_success(), "policy: {body}");
    let admin = server.admin_token().await;
    let node = NodeRecord {
        name: "pve-prod".into(),
        addresses: vec!["127.0.0.1".into()],
        tags: [("env".to_owned(), "prod".to_owned())].into(),
        ..Default::default()
    };
    server.add_node(&admin, &node).await;
    server.add_user(&admin, "alice", &["ops"], PASSWORD).await;

    let clock: Arc<dyn portcullis_bastion::Clock> = Arc::new(SystemClock);
    let trust = Arc::new(TrustSource::new(TrustConfig::new(&server.url, &server.pin), Arc::clone(&clock)).unwrap());
    assert!(trust.current().is_none());
    trust.refresh().await.unwrap();
    let events = EventSink::new();
    let rx = events.subscribe();
    // Authentication never asks the CA, so a control plane with a dummy credential
    // suffices here (sessions are tested with real service identities elsewhere).
    let control = Arc::new(
        ControlPlane::new(ControlConfig {
            ca_url: server.url.clone(),
            ca_pin: server.pin.clone(),
            in_process: None,
            api_token: SecretString::from("pcs_unused"),
            timeout: std::time::Duration::from_secs(5),
        })
        .unwrap(),
    );
    let bastion =
        Arc::new(Bastion::new(BastionConfig::new(ed25519_key()), Arc::clone(&trust), control, clock, events).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { bastion.serve(listener).await });
    (port, rx, trust)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bastion_admits_only_valid_user_certificates_from_the_ca() {
    let server = Server::start().await;
    let (port, mut rx, trust) = front_door(&server).await;
    let admin = server.admin_token().await;

    let dir = tempfile::tempdir().unwrap();
    let key = ed25519_key();
    let key_path = write_key_pair(dir.path(), "id", &key);
    let token = server.login("alice", PASSWORD).await;
    let (status, body) = server.issue_cert(&token, &public_line(&key)).await;
    assert!(status.is_success(), "issue: {body}");
    let good_cert = write_file(dir.path(), "good-cert.pub", body["certificate"].as_str().unwrap());
    let serial = body["serial"].as_str().unwrap().to_owned();

    // Positive control: past authentication, then the channel refusal saying why.
    let a = ssh(port, "root", &key_path, Some(&good_cert), &mut rx).await;
    assert!(a.accepted(), "valid certificate must authenticate: {:?} / {}", a.events, a.stderr);
    assert!(a.stderr.contains("name the device"), "channel refusal must say why: {}", a.stderr);
    assert!(a.events.iter().any(|e| matches!(e, BastionEvent::ChannelRefused { kind: "session", .. })));
    let a = ssh(port, "root%pve-prod", &key_path, Some(&good_cert), &mut rx).await;
    assert!(
        a.events.iter().any(|e| matches!(e, BastionEvent::AuthAccepted { login, device: Some(d), .. } if login == "root" && d == "pve-prod")),
        "LOGIN%DEVICE: {:?}",
        a.events
    );

    // Wrong principal: no role gives alice `nobody`.
    let a = ssh(port, "nobody%pve-prod", &key_path, Some(&good_cert), &mut rx).await;
    assert!(
        !a.accepted() && a.refused_for(&RefusalReason::Certificate(Rejection::PrincipalMismatch)),
        "{:?}",
        a.events
    );
    assert!(a.stderr.contains("Permission denied"), "{}", a.stderr);

    // Plain key, no certificate (in its own directory: ssh would pick up `id-cert.pub`).
    let plain_dir = tempfile::tempdir().unwrap();
    let plain_key = write_key_pair(plain_dir.path(), "plain", &ed25519_key());
    let a = ssh(port, "root", &plain_key, None, &mut rx).await;
    assert!(!a.accepted() && a.refused_for(&RefusalReason::PlainPublicKey), "{:?}", a.events);

    // Another CA, otherwise a perfect certificate.
    let now = portcullis_ca::SystemClock.now_unix();
    let principal = portcullis_policies::scoped_principal("prod-root", "root");
    let mut b = Builder::new_with_random_nonce(
        &mut ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng),
        key.public_key().key_data().clone(),
        now - 60,
        now + 600,
    )
    .unwrap();
    b.serial(42).unwrap().key_id("forged").unwrap().cert_type(CertType::User).unwrap();
    b.valid_principal(principal).unwrap();
    let forged = b.sign(&ed25519_key()).unwrap().to_openssh().unwrap();
    let forged_cert = write_file(dir.path(), "forged-cert.pub", &forged);
    let a = ssh(port, "root", &key_path, Some(&forged_cert), &mut rx).await;
    assert!(!a.accepted() && a.refused_for(&RefusalReason::Certificate(Rejection::UntrustedCa)), "{:?}", a.events);

    // Expired: signed by the real CA key, ten hours ago.
    let manual = ManualClock::new(now - 10 * 3600);
    let ca = same_ca(&server, Arc::new(manual.clone())).await;
    let login = ca.identity().login_password("alice", None, &SecretString::from(PASSWORD), "127.0.0.1").await.unwrap();
    let caller = ca.identity().caller(login.token.expose()).await.unwrap();
    let request = UserCertRequest { public_key: public_line(&key), ttl_seconds: Some(3600), roles: None };
    let expired = ca.issuance().issue(&caller, &request, "127.0.0.1").await.unwrap().certificate;
    let expired_cert = write_file(dir.path(), "expired-cert.pub", &expired);
    let a = ssh(port, "root", &key_path, Some(&expired_cert), &mut rx).await;
    // russh itself refuses a certificate outside its validity window before asking the
    // handler (by the system clock), so the refusal shows as "no acceptance" plus the
    // client's own "Permission denied"; the plain-key fallback ssh then tries is
    // refused by us with its own event.
    assert!(!a.accepted(), "expired certificate must be refused: {:?}", a.events);
    assert!(a.stderr.contains("Permission denied"), "{}", a.stderr);
    assert!(a.refused_for(&RefusalReason::PlainPublicKey), "{:?}", a.events);

    // Certificates signed by the real user CA key but wrong in one way each, offered for
    // `root%pve-prod` (terminated mode) so the principal check would otherwise pass.
    let ca_key = ca.core().keyring().signer(portcullis_ca::keys::KeyPurpose::User).unwrap().key.clone();
    let craft_typed = |name: &str, cert_type: CertType, shape: &dyn Fn(&mut Builder)| -> std::path::PathBuf {
        let mut b = Builder::new_with_random_nonce(
            &mut ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng),
            key.public_key().key_data().clone(),
            now - 60,
            now + 600,
        )
        .unwrap();
        b.serial(7).unwrap().key_id("crafted").unwrap().cert_type(cert_type).unwrap();
        shape(&mut b);
        write_file(dir.path(), &format!("{name}-cert.pub"), b.sign(&ca_key).unwrap().to_openssh().unwrap())
    };
    let craft = |name: &str, shape: &dyn Fn(&mut Builder)| craft_typed(name, CertType::User, shape);
    let principal = portcullis_policies::scoped_principal("prod-root", "root");
    // Positive control for the crafting itself.
    let fine = craft("fine", &|b| {
        b.valid_principal(principal.clone()).unwrap();
    });
    let a = ssh(port, "root%pve-prod", &key_path, Some(&fine), &mut rx).await;
    assert!(a.accepted(), "a well-formed crafted certificate authenticates: {:?}", a.events);
    // No principals: OpenSSH would read that as "any principal"; we refuse it.
    let empty = craft("empty", &|b| {
        b.all_principals_valid().unwrap();
    });
    let a = ssh(port, "root%pve-prod", &key_path, Some(&empty), &mut rx).await;
    assert!(!a.accepted() && a.refused_for(&RefusalReason::Certificate(Rejection::NoPrincipals)), "{:?}", a.events);
    // A critical option the bastion does not understand.
    let unknown = craft("unknown-option", &|b| {
        b.valid_principal(principal.clone()).unwrap();
        b.critical_option("portcullis-test-unknown@example.org", "").unwrap();
    });
    let a = ssh(port, "root%pve-prod", &key_path, Some(&unknown), &mut rx).await;
    let unknown_refusal = RefusalReason::Certificate(Rejection::UnknownCriticalOption {
        name: "portcullis-test-unknown@example.org".into(),
    });
    assert!(!a.accepted() && a.refused_for(&unknown_refusal), "{:?}", a.events);
    // source-address that excludes the client.
    let elsewhere = craft("source-address", &|b| {
        b.valid_principal(principal.clone()).unwrap();
        b.critical_option("source-address", "192.0.2.0/24").unwrap();
    });
    let a = ssh(port, "root%pve-prod", &key_path, Some(&elsewhere), &mut rx).await;
    assert!(
        !a.accepted() && a.refused_for(&RefusalReason::Certificate(Rejection::SourceAddressMismatch)),
        "{:?}",
        a.events
    );
    // verify-required (FIDO user verification) on a key that is not a security key's,
    // which can never show it (sshd would ignore the option; the CA never issues this).
    let uv = craft("verify-required", &|b| {
        b.valid_principal(principal.clone()).unwrap();
        b.critical_option("verify-required", "").unwrap();
    });
    let a = ssh(port, "root%pve-prod", &key_path, Some(&uv), &mut rx).await;
    assert!(!a.accepted() && a.refused_for(&RefusalReason::Unconfirmed(Unconfirmed::Verification)), "{:?}", a.events);
    // A host certificate offered as a user certificate.
    let host = craft_typed("host", CertType::Host, &|b| {
        b.valid_principal(principal.clone()).unwrap();
    });
    let a = ssh(port, "root%pve-prod", &key_path, Some(&host), &mut rx).await;
    // OpenSSH's client (or russh) drops it before our handler sees it, so only the
    // plain-key fallback arrives; `sshcert`'s unit tests cover our own type check.
    assert!(!a.accepted(), "a host certificate must never authenticate a user: {:?}", a.events);

    // Revoked through the admin API: refused once the bastion has refreshed its trust.
    let (status, body) = server.post_json(Some(&admin), "/v1/admin/revoke", &json!({ "serial": serial })).await;
    assert!(status.is_success(), "revoke: {body}");
    trust.refresh().await.unwrap();
    let a = ssh(port, "root", &key_path, Some(&good_cert), &mut rx).await;
    assert!(!a.accepted() && a.refused_for(&RefusalReason::Certificate(Rejection::Revoked)), "{:?}", a.events);
}

/// Logs in with a security key through russh (a client that can leave out the touch):
/// whether the bastion let it in, and what it recorded.
async fn login_with_security_key(
    port: u16,
    user: &str,
    certificate: &str,
    key: &mut SoftSecurityKey,
    rx: &mut broadcast::Receiver<BastionEvent>,
) -> Attempt {
    let cert = ssh_key::Certificate::from_openssh(certificate.trim()).unwrap();
    let config = Arc::new(russh::client::Config::default());
    let mut conn = russh::client::connect(config, ("127.0.0.1", port), TrustAnyHost).await.unwrap();
    let auth = conn.authenticate_certificate_with(user, cert, None, key).await.unwrap();
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    let attempt = Attempt { stderr: String::new(), events };
    assert_eq!(auth.success(), attempt.accepted(), "{:?}", attempt.events);
    attempt
}

/// A security key must confirm what the certificate asks, as sshd requires (russh only
/// checks that the signature verifies): a touch, and under `verify-required` the
/// user's PIN; and the CA certifies no other kind of key under `verify-required`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_security_key_must_confirm_what_its_certificate_asks() {
    let server = Server::start().await;
    let (port, mut rx, _trust) = front_door(&server).await;
    let admin = server.admin_token().await;
    server.add_user(&admin, "bob", &["fido"], PASSWORD).await;
    let (touch, pin) = (SoftSecurityKey::TOUCH, SoftSecurityKey::VERIFIED);

    // Alice's role asks for a touch only (no `no-touch-required`).
    let alice = server.login("alice", PASSWORD).await;
    let mut key = SoftSecurityKey::new(touch);
    let (status, body) = server.issue_cert(&alice, &key.public_key().to_openssh().unwrap()).await;
    assert!(status.is_success(), "a security key is certified: {body}");
    let cert = body["certificate"].as_str().unwrap().to_owned();
    let a = login_with_security_key(port, "root%pve-prod", &cert, &mut key, &mut rx).await;
    assert!(a.accepted(), "touched: {:?}", a.events);
    key.flags = 0;
    let a = login_with_security_key(port, "root%pve-prod", &cert, &mut key, &mut rx).await;
    assert!(a.refused_for(&RefusalReason::Unconfirmed(Unconfirmed::Presence)), "untouched: {:?}", a.events);

    // Bob's role asks for user verification: not certified for a plain key at all…
    let bob = server.login("bob", PASSWORD).await;
    let (status, body) = server.issue_cert(&bob, &public_line(&ed25519_key())).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("ed25519-sk -O verify-required"), "says how: {body}");
    let denied = server.audit_events("cert_denied").await;
    assert!(
        denied
            .iter()
            .any(|d| d.payload["username"] == "bob" && d.payload["reason"] == "verify_required_needs_security_key"),
        "{denied:?}"
    );
    // …and a security key's login must show the PIN as well as the touch.
    let mut key = SoftSecurityKey::new(touch | pin);
    let (status, body) = server.issue_cert(&bob, &key.public_key().to_openssh().unwrap()).await;
    assert!(status.is_success(), "{body}");
    let cert = body["certificate"].as_str().unwrap().to_owned();
    let a = login_with_security_key(port, "root%pve-prod", &cert, &mut key, &mut rx).await;
    assert!(a.accepted(), "touch and PIN: {:?}", a.events);
    key.flags = touch;
    let a = login_with_security_key(port, "root%pve-prod", &cert, &mut key, &mut rx).await;
    assert!(a.refused_for(&RefusalReason::Unconfirmed(Unconfirmed::Verification)), "no PIN: {:?}", a.events);
}
