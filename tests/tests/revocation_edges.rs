//! Revocation's edges. A pending user CA key that was revoked (compromised before it
//! ever signed) is never made the signing key — every node's KRL names it, so sshd would
//! refuse every certificate it signed — and the key the CA signs with cannot be revoked.
//! A revoked certificate stays in the KRL a while after it expires, for nodes whose clock
//! lags the CA's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_ca::keys::KeyPurpose;
use portcullis_ca::{CaError, ManualClock};
use portcullis_policies::proof;
use portcullis_proto::{RevokeRequest, UserCertRequest};
use portcullis_tests::ssh::{ed25519_key, krl_revokes, public_line};
use portcullis_tests::{ca_in_process, first_admin, sqlite_url};

const NOW: u64 = 1_800_000_000;
const POLICY: &str = r#"
[[role]]
name = "admin"
permissions = ["ca.manage", "certs.revoke"]

[[role]]
name = "ops"
logins = ["root"]
targets = 'in:devices name:%'
permissions = ["certs.issue"]

[[binding]]
group = "portcullis-admins"
roles = ["admin", "ops"]
"#;

/// A scratch directory with `POLICY` in its `policy/`.
fn work_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy");
    std::fs::create_dir(&policy).unwrap();
    std::fs::write(policy.join("policy.toml"), POLICY).unwrap();
    (dir, policy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_pending_key_never_signs_and_the_signing_key_cannot_be_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy");
    std::fs::create_dir(&policy).unwrap();
    std::fs::write(policy.join("default.toml"), portcullis_ca::policy_files::DEFAULT_POLICY).unwrap();
    let ca = ca_in_process(&sqlite_url(dir.path()), &policy, ManualClock::new(1_800_000_000)).await.unwrap();
    let admin = ca.identity().caller(&first_admin(&ca, "portcullis-admins", "127.0.0.1").await).await.unwrap();
    let keys = ca.core().authorize::<proof::CaManage>(&admin).unwrap();
    let revoke = ca.core().authorize::<proof::CertsRevoke>(&admin).unwrap();
    let by_key = |line: &str| RevokeRequest { public_key: Some(line.to_owned()), ..RevokeRequest::default() };
    let active = || ca.admin().ca_keys().into_iter().find(|k| k.purpose == "user" && k.state == "active").unwrap();
    let signing = active();

    let refused = ca.revocation().revoke(&revoke, &by_key(&signing.public_key)).await;
    assert!(matches!(refused, Err(CaError::BadRequest(_))), "the signing key: {refused:?}");

    let pending = ca.admin().rotate_ca_key(&keys, KeyPurpose::User).await.unwrap();
    ca.revocation().revoke(&revoke, &by_key(&pending.public_key)).await.unwrap();
    let refused = ca.admin().activate_ca_key(&keys, KeyPurpose::User).await;
    assert!(matches!(refused, Err(CaError::Conflict(_))), "{refused:?}");
    assert_eq!(active().fingerprint, signing.fingerprint, "the old key still signs");

    // The way on: retire the revoked key, rotate again, activate the new one.
    ca.admin().retire_ca_key(&keys, &pending.fingerprint).await.unwrap();
    let next = ca.admin().rotate_ca_key(&keys, KeyPurpose::User).await.unwrap();
    ca.admin().activate_ca_key(&keys, KeyPurpose::User).await.unwrap();
    assert_eq!(active().fingerprint, next.fingerprint);
}

/// A node whose clock is behind the CA's judges a certificate unexpired for that long
/// after the CA does: a revoked one must still be in the KRL then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_stays_in_the_krl_past_its_expiry_for_lagging_clocks() {
    let (dir, policy) = work_dir();
    let clock = ManualClock::new(NOW);
    let ca = ca_in_process(&sqlite_url(dir.path()), &policy, clock.clone()).await.unwrap();
    let admin = ca.identity().caller(&first_admin(&ca, "portcullis-admins", "127.0.0.1").await).await.unwrap();
    let request = UserCertRequest { public_key: public_line(&ed25519_key()), ttl_seconds: Some(60), roles: None };
    let issued = ca.issuance().issue(&admin, &request, "127.0.0.1").await.unwrap();
    let cert = dir.path().join("id-cert.pub");
    std::fs::write(&cert, &issued.certificate).unwrap();
    let revoke = ca.core().authorize::<proof::CertsRevoke>(&admin).unwrap();
    let by_serial = RevokeRequest { serial: Some(issued.serial.clone()), ..RevokeRequest::default() };
    ca.revocation().revoke(&revoke, &by_serial).await.unwrap();

    let listed = || async {
        let krl = dir.path().join("krl");
        std::fs::write(&krl, ca.revocation().krl().await.unwrap().as_slice()).unwrap();
        krl_revokes(&krl, &cert)
    };
    assert!(listed().await, "revoked and live");
    clock.set(NOW + 60 + 600);
    assert!(listed().await, "expired ten minutes ago by the CA's clock: still listed");
    clock.set(NOW + 60 + 2 * 3600);
    assert!(!listed().await, "long expired: dropped, the KRL does not grow for ever");
}

/// A revoked plain key is listed whole, the section every OpenSSH that reads KRLs
/// understands: revocation by SHA-256 hash needs OpenSSH 7.9, and an older sshd (Debian
/// 9, CentOS 7) that meets it refuses the whole KRL — and then every public key on the
/// node, `authorized_keys` included. `ssh-keygen -Q -l` lists a whole key as
/// `hash: SHA256:<base64> # <type>`, a SHA-256 entry in hex without the type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_listed_whole_so_older_openssh_loads_the_krl() {
    let (dir, policy) = work_dir();
    let ca = ca_in_process(&sqlite_url(dir.path()), &policy, ManualClock::new(NOW)).await.unwrap();
    let admin = ca.identity().caller(&first_admin(&ca, "portcullis-admins", "127.0.0.1").await).await.unwrap();
    let revoke = ca.core().authorize::<proof::CertsRevoke>(&admin).unwrap();
    let key = ed25519_key();
    let by_key = RevokeRequest { public_key: Some(public_line(&key)), ..RevokeRequest::default() };
    ca.revocation().revoke(&revoke, &by_key).await.unwrap();

    let krl = dir.path().join("krl");
    let published = ca.revocation().krl().await.unwrap();
    std::fs::write(&krl, published.as_slice()).unwrap();
    // The version is at least the time of the change: a CA restored from an older
    // backup publishes, at its first revocation, a version above all it had published
    // (nodes and bastions keep a KRL of a higher version than the one they are sent).
    let version = portcullis_sshcert::Krl::parse(&published).unwrap().krl_version();
    assert!(version >= NOW, "KRL version {version} is below the time of the change");
    let plain = dir.path().join("key.pub");
    std::fs::write(&plain, public_line(&key) + "\n").unwrap();
    assert!(krl_revokes(&krl, &plain));
    let out = std::process::Command::new("ssh-keygen").args(["-Q", "-l", "-f"]).arg(&krl).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let fingerprint = portcullis_sshcert::fingerprint(key.public_key().key_data());
    assert!(listing.contains(&format!("hash: {fingerprint} # ssh-ed25519")), "not listed whole:\n{listing}");
}

/// Each replica signs with the keyring it last read (every few seconds): here replica B
/// signs with the user CA key that replica A has since replaced and revoked. The
/// certificate is not stored or handed out — every node refuses it — but refused (503,
/// `cert_denied`/`ca_key_withdrawn`), and asked again B signs with the key in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_never_hands_out_a_certificate_signed_by_a_key_another_replica_withdrew() {
    let (dir, policy) = work_dir();
    let url = sqlite_url(dir.path());
    let a = ca_in_process(&url, &policy, ManualClock::new(NOW)).await.unwrap();
    let token = first_admin(&a, "portcullis-admins", "127.0.0.1").await;
    let b = ca_in_process(&url, &policy, ManualClock::new(NOW)).await.unwrap();
    let admin_b = b.identity().caller(&token).await.unwrap();
    let old = withdraw_active_key(&a, &b, &token, KeyPurpose::User).await;

    let request = UserCertRequest { public_key: public_line(&ed25519_key()), ttl_seconds: Some(60), roles: None };
    let refused = b.issuance().issue(&admin_b, &request, "127.0.0.1").await;
    assert!(matches!(refused, Err(CaError::Busy { .. })), "{refused:?}");
    let denied = portcullis_tests::audit_payloads(&b, "cert_denied").await;
    assert_eq!(denied.last().unwrap()["reason"], "ca_key_withdrawn", "{denied:?}");
    let issued = b.issuance().issue(&admin_b, &request, "127.0.0.1").await.unwrap();
    let cert = ssh_key::Certificate::from_openssh(&issued.certificate).unwrap();
    assert_ne!(portcullis_sshcert::fingerprint(cert.signature_key()), old, "signed again by the withdrawn key");
}

/// The same for a certificate signed outside the issuance writer (here a bastion's
/// internal certificate; onward session, host and discovery certificates are stored
/// the same way): replica B refuses to store it, and signs with the key in force once
/// its housekeeping has read the keyring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_never_hands_out_a_service_certificate_signed_by_a_withdrawn_key() {
    let (dir, policy) = work_dir();
    let url = sqlite_url(dir.path());
    let a = ca_in_process(&url, &policy, ManualClock::new(NOW)).await.unwrap();
    let token = first_admin(&a, "portcullis-admins", "127.0.0.1").await;
    let b = ca_in_process(&url, &policy, ManualClock::new(NOW)).await.unwrap();
    let bastion = portcullis_tests::bastion_b1(&a).await;
    let old = withdraw_active_key(&a, &b, &token, KeyPurpose::Internal).await;

    let caller = b.services().service_caller(&bastion).await.unwrap();
    let refused = b.services().renew_service_certificate(&caller).await;
    assert!(matches!(refused, Err(CaError::Busy { .. })), "{refused:?}");
    b.housekeeping().await.unwrap();
    let renewed = b.services().renew_service_certificate(&caller).await.unwrap();
    let cert = ssh_key::Certificate::from_openssh(&renewed.certificate).unwrap();
    assert_ne!(portcullis_sshcert::fingerprint(cert.signature_key()), old, "signed again by the withdrawn key");
}

/// Replica `a` replaces its active `purpose` key and revokes the old one, which replica
/// `b` still signs with (it has not read the keyring since): the old key's fingerprint.
async fn withdraw_active_key(a: &portcullis_ca::Ca, b: &portcullis_ca::Ca, token: &str, purpose: KeyPurpose) -> String {
    let active = |ca: &portcullis_ca::Ca| {
        let keys = ca.admin().ca_keys().into_iter();
        keys.filter(|k| k.purpose == purpose.as_str() && k.state == "active").map(|k| k.fingerprint).next().unwrap()
    };
    let old = active(a);
    let admin = a.identity().caller(token).await.unwrap();
    let keys = a.core().authorize::<proof::CaManage>(&admin).unwrap();
    a.admin().rotate_ca_key(&keys, purpose).await.unwrap();
    a.admin().activate_ca_key(&keys, purpose).await.unwrap();
    let revoke = a.core().authorize::<proof::CertsRevoke>(&admin).unwrap();
    let old_key = a.admin().ca_keys().into_iter().find(|k| k.fingerprint == old).unwrap().public_key;
    a.revocation().revoke(&revoke, &RevokeRequest { public_key: Some(old_key), ..Default::default() }).await.unwrap();
    assert_eq!(active(b), old, "replica B has not read the keyring since");
    old
}
