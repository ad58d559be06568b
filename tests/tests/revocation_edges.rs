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
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy");
    std::fs::create_dir(&policy).unwrap();
    std::fs::write(policy.join("policy.toml"), POLICY).unwrap();
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
