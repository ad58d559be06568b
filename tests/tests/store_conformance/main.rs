//! Storage conformance: the same sequence of CA operations against embedded SQLite and
//! a real PostgreSQL server, checked through the CA's own methods, `ssh-keygen` (for
//! the KRL) and raw SQL (for audit tampering).

// Test code: a failed expectation must fail the test, so unwrap/expect/panic/indexing
// are the right tools here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_ca::keys::KeyPurpose;
use portcullis_ca::store::{self, Backend};
use portcullis_ca::{Ca, CaError, Caller, ManualClock};
use portcullis_policies::proof;
use portcullis_proto::{RevokeRequest, UserCertRequest, UserCertResponse};
use portcullis_sshcert::fingerprint;
use portcullis_tests::ssh::{ed25519_key, krl_revokes, public_line};
use portcullis_tests::{Postgres, ca_in_process, sqlite_url};
use secrecy::SecretString;
use sqlx::Row;
use ssh_key::{Certificate, PrivateKey};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const POLICY: &str = r#"
[[role]]
name = "admin"
permissions = ["certs.revoke", "users.manage", "ca.manage", "audit.read", "policy.manage", "nodes.manage"]

[[role]]
name = "deployer"
logins = ["deploy"]
targets = 'in:devices name:%'
permissions = ["certs.issue"]
max_cert_ttl = "1h"

[[binding]]
group = "admins"
roles = ["admin"]

[[binding]]
group = "devs"
roles = ["deployer"]
"#;

const ALICE_PASSWORD: &str = "alice-password-0123456789";
const ADMIN_PASSWORD: &str = "admin-password-0123456789";
const BOB_PASSWORD: &str = "bob-password-0123456789";
const IP: &str = "192.0.2.10";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    run_conformance(&sqlite_url(dir.path()), Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    // No skip when PostgreSQL is missing: see `Postgres::start`.
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    run_conformance(&pg.url(), Backend::Postgres).await;
}

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn login(ca: &Ca, user: &str, password: &str) -> Caller {
    let resp = ca
        .identity()
        .login_password(user, None, &secret(password), IP)
        .await
        .unwrap_or_else(|e| panic!("login as {user}: {e}"));
    ca.identity().caller(resp.token.expose()).await.unwrap()
}

async fn issue(ca: &Ca, caller: &Caller, key: &PrivateKey) -> (UserCertResponse, Certificate) {
    let request = UserCertRequest { public_key: public_line(key), ..UserCertRequest::default() };
    let resp = ca
        .issuance()
        .issue(caller, &request, IP)
        .await
        .unwrap_or_else(|e| panic!("issuing for {}: {e}", caller.identity.username));
    let cert = Certificate::from_openssh(&resp.certificate).unwrap();
    assert_eq!(cert.serial().to_string(), resp.serial);
    assert_eq!(cert.public_key(), key.public_key().key_data());
    (resp, cert)
}

fn write_cert(dir: &Path, name: &str, cert: &Certificate) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, cert.to_openssh().unwrap() + "\n").unwrap();
    path
}

async fn write_krl(ca: &Ca, dir: &Path) -> PathBuf {
    let path = dir.join("krl");
    std::fs::write(&path, ca.revocation().krl().await.unwrap().as_slice()).unwrap();
    path
}

fn active_user_ca(ca: &Ca) -> String {
    let active: Vec<_> =
        ca.admin().ca_keys().into_iter().filter(|k| k.purpose == "user" && k.state == "active").collect();
    assert_eq!(active.len(), 1, "exactly one active user CA key");
    active[0].fingerprint.clone()
}

fn signer_of(cert: &Certificate) -> String {
    fingerprint(cert.signature_key())
}

/// `POLICY` as the only file of a policy directory under `work`.
fn policy_dir(work: &Path) -> PathBuf {
    let dir = work.join("policy");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    dir
}

/// The first administrator (its one-time password replaced by `ADMIN_PASSWORD`) and
/// alice (in `group`) on a new CA; the administrator's caller.
async fn admin_and_alice(ca: &Ca, group: &str) -> Caller {
    let one_time = ca.identity().bootstrap_admin("admin", "admins").await.unwrap().unwrap();
    ca.identity().login_replacing_password("admin", None, &one_time, &secret(ADMIN_PASSWORD), IP).await.unwrap();
    let admin = login(ca, "admin", ADMIN_PASSWORD).await;
    let users_grant = ca.core().authorize::<proof::UsersManage>(&admin).unwrap();
    ca.admin().add_user(&users_grant, "alice", &[group.into()], Some(&secret(ALICE_PASSWORD))).await.unwrap();
    admin
}

async fn run_conformance(url: &str, backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let policy_dir = policy_dir(work.path());
    let clock = ManualClock::new(now());
    let ca = ca_in_process(url, &policy_dir, clock.clone()).await.unwrap();
    assert_eq!(ca.core().store().backend(), backend, "the CA is not using {backend:?}");

    // --- users and sessions ------------------------------------------------------
    // The first administrator's password is for one sign-in: alone it opens nothing,
    // and of two sign-ins racing to replace it exactly one does.
    let one_time =
        ca.identity().bootstrap_admin("admin", "admins").await.unwrap().expect("first start creates the admin");
    let refused = ca.identity().login_password("admin", None, &one_time, IP).await;
    assert!(matches!(refused, Err(CaError::PasswordChangeRequired)), "{refused:?}");
    let (choice_one, choice_two) = (secret("admin-choice-one"), secret("admin-choice-two"));
    let (first, second) = tokio::join!(
        ca.identity().login_replacing_password("admin", None, &one_time, &choice_one, IP),
        ca.identity().login_replacing_password("admin", None, &one_time, &choice_two, IP),
    );
    let admin_password = match (&first, &second) {
        (Ok(_), Err(CaError::InvalidCredentials)) => "admin-choice-one",
        (Err(CaError::InvalidCredentials), Ok(_)) => "admin-choice-two",
        other => panic!("a one-time password was replaced {other:?}"),
    };
    let reused =
        ca.identity().login_replacing_password("admin", None, &one_time, &secret("admin-choice-three"), IP).await;
    assert!(matches!(reused, Err(CaError::InvalidCredentials)), "the one-time password still works: {reused:?}");
    let admin = login(&ca, "admin", admin_password).await;
    let users_grant = ca.core().authorize::<proof::UsersManage>(&admin).unwrap();
    let revoke_grant = ca.core().authorize::<proof::CertsRevoke>(&admin).unwrap();
    let ca_grant = ca.core().authorize::<proof::CaManage>(&admin).unwrap();
    let audit_grant = ca.core().authorize::<proof::AuditRead>(&admin).unwrap();
    ca.admin().add_user(&users_grant, "alice", &["devs".into()], Some(&secret(ALICE_PASSWORD))).await.unwrap();
    ca.admin().add_user(&users_grant, "bob", &["devs".into()], Some(&secret(BOB_PASSWORD))).await.unwrap();
    assert!(matches!(
        ca.admin().add_user(&users_grant, "alice", &[], Some(&secret(ALICE_PASSWORD))).await,
        Err(CaError::Conflict(_))
    ));
    assert!(matches!(
        ca.identity().login_password("alice", None, &secret("not-alices-password"), IP).await,
        Err(CaError::InvalidCredentials)
    ));
    let alice_token = ca
        .identity()
        .login_password("alice", None, &secret(ALICE_PASSWORD), IP)
        .await
        .unwrap()
        .token
        .expose()
        .to_owned();
    let alice = ca.identity().caller(&alice_token).await.unwrap();
    let bob = login(&ca, "bob", BOB_PASSWORD).await;
    assert_eq!(ca.identity().whoami(&alice).roles, vec!["deployer".to_owned()]);
    assert!(ca.core().authorize::<proof::CertsRevoke>(&alice).is_err(), "a deployer must not get admin grants");

    // --- issuance ----------------------------------------------------------------
    let original_ca = active_user_ca(&ca);
    let (key_a, key_b, key_c) = (ed25519_key(), ed25519_key(), ed25519_key());
    let (resp_a, cert_a) = issue(&ca, &alice, &key_a).await;
    let (_, cert_b) = issue(&ca, &alice, &key_b).await;
    let (_, cert_c) = issue(&ca, &alice, &key_c).await;
    let (_, cert_bob) = issue(&ca, &bob, &ed25519_key()).await;
    assert!(!resp_a.principals.is_empty(), "a deployer cert has principals");
    assert_eq!(signer_of(&cert_a), original_ca);
    let listed = ca.issuance().certificates(&revoke_grant, Some("alice"), None).await.unwrap();
    assert_eq!(listed.len(), 3, "the store lists alice's three certificates");
    assert!(listed.iter().all(|c| !c.revoked));
    // Bounded, newest first: every issued certificate (a session's too) stays on record.
    let newest = ca.issuance().certificates(&revoke_grant, Some("alice"), Some(2)).await.unwrap();
    let serials = |l: &[portcullis_proto::IssuedCert]| l.iter().map(|c| c.serial.clone()).collect::<Vec<_>>();
    assert_eq!(serials(&newest), serials(&listed[..2]));

    let files = tempfile::tempdir().unwrap();
    let path_a = write_cert(files.path(), "a-cert.pub", &cert_a);
    let path_b = write_cert(files.path(), "b-cert.pub", &cert_b);
    let path_c = write_cert(files.path(), "c-cert.pub", &cert_c);
    let path_bob = write_cert(files.path(), "bob-cert.pub", &cert_bob);
    let krl = write_krl(&ca, files.path()).await;
    for path in [&path_a, &path_b, &path_c, &path_bob] {
        assert!(!krl_revokes(&krl, path), "nothing is revoked yet");
    }

    // --- revocation by serial ------------------------------------------------------
    let by_serial = ca
        .revocation()
        .revoke(&revoke_grant, &RevokeRequest { serial: Some(resp_a.serial.clone()), ..RevokeRequest::default() })
        .await
        .unwrap();
    assert_eq!(by_serial.certificates_revoked, 1);
    let krl = write_krl(&ca, files.path()).await;
    assert!(krl_revokes(&krl, &path_a), "the revoked serial is in the KRL");
    assert!(!krl_revokes(&krl, &path_b), "other certificates are not");
    assert!(!krl_revokes(&krl, &path_bob));

    // --- revocation by key: its certificates and the key itself ---------------------
    let by_key = ca
        .revocation()
        .revoke(&revoke_grant, &RevokeRequest { public_key: Some(public_line(&key_b)), ..RevokeRequest::default() })
        .await
        .unwrap();
    assert_eq!(by_key.certificates_revoked, 1);
    assert!(by_key.key_revoked);
    assert!(by_key.krl_version > by_serial.krl_version);
    let krl = write_krl(&ca, files.path()).await;
    assert!(krl_revokes(&krl, &path_b));
    // A revoked key gets no new certificate: refused, audited, nothing stored.
    let key_refusals = || async {
        let records = ca.admin().audit_records(&audit_grant, 0, 1000).await.unwrap();
        records.iter().filter(|r| r.event == "cert_denied" && r.payload["reason"] == "key_revoked").count()
    };
    let refusals = key_refusals().await;
    let stored = ca.core().store().certificates(None, u32::MAX).await.unwrap().len();
    let again = UserCertRequest { public_key: public_line(&key_b), ..UserCertRequest::default() };
    let refused = ca.issuance().issue(&alice, &again, IP).await;
    assert!(matches!(&refused, Err(CaError::BadRequest(m)) if m.contains("revoked")), "{refused:?}");
    assert_eq!(
        ca.core().store().certificates(None, u32::MAX).await.unwrap().len(),
        stored,
        "a certificate for a revoked key was stored"
    );
    assert_eq!(key_refusals().await, refusals + 1, "the refusal is audited once");
    let pub_b = files.path().join("b.pub");
    std::fs::write(&pub_b, public_line(&key_b) + "\n").unwrap();
    assert!(krl_revokes(&krl, &pub_b), "the key itself is in the KRL");
    assert!(!krl_revokes(&krl, &path_c));
    let again = ca
        .issuance()
        .issue(&alice, &UserCertRequest { public_key: public_line(&key_b), ..UserCertRequest::default() }, IP)
        .await;
    assert!(matches!(again, Err(CaError::BadRequest(_))), "a revoked key is not certified again: {again:?}");

    // --- revocation by user: certificates and API sessions -------------------------
    let by_user = ca
        .revocation()
        .revoke(&revoke_grant, &RevokeRequest { username: Some("alice".into()), ..RevokeRequest::default() })
        .await
        .unwrap();
    assert_eq!(by_user.certificates_revoked, 1, "only cert C was still live");
    let krl = write_krl(&ca, files.path()).await;
    assert!(krl_revokes(&krl, &path_c));
    assert!(!krl_revokes(&krl, &path_bob), "bob is untouched");
    assert!(
        matches!(ca.identity().caller(&alice_token).await, Err(CaError::Unauthenticated)),
        "revoking a user ends their API sessions"
    );
    assert!(ca.issuance().certificates(&revoke_grant, Some("alice"), None).await.unwrap().iter().all(|c| c.revoked));

    // --- disabling a user ends their sessions ---------------------------------------
    let bob_token =
        ca.identity().login_password("bob", None, &secret(BOB_PASSWORD), IP).await.unwrap().token.expose().to_owned();
    ca.identity().caller(&bob_token).await.expect("bob's session works");
    ca.admin().set_user_disabled(&users_grant, "bob", true).await.unwrap();
    assert!(
        matches!(ca.identity().caller(&bob_token).await, Err(CaError::Unauthenticated)),
        "a disabled user's session is refused"
    );
    assert!(ca.identity().login_password("bob", None, &secret(BOB_PASSWORD), IP).await.is_err());
    let krl = write_krl(&ca, files.path()).await;
    assert!(krl_revokes(&krl, &path_bob), "disabling revokes live certificates");
    let _ = bob;

    let verify = ca.admin().audit_verify(&audit_grant).await.unwrap();
    assert!(verify.ok, "untouched audit chain verifies: {verify:?}");

    // --- CA key rotation: pending → active → retired --------------------------------
    let pending = ca.admin().rotate_ca_key(&ca_grant, KeyPurpose::User).await.unwrap();
    assert_eq!(pending.state, "pending");
    let trusted = ca.core().trusted_keys(KeyPurpose::User);
    assert_eq!(trusted.lines().count(), 2, "pending key is published: {trusted}");
    // Revoking a user ends sessions but does not disable them: alice logs in again.
    let alice = login(&ca, "alice", ALICE_PASSWORD).await;
    let (_, still_old) = issue(&ca, &alice, &ed25519_key()).await;
    assert_eq!(signer_of(&still_old), original_ca, "pending keys do not sign");

    ca.admin().activate_ca_key(&ca_grant, KeyPurpose::User).await.unwrap();
    assert_eq!(active_user_ca(&ca), pending.fingerprint);
    let (_, new_cert) = issue(&ca, &alice, &ed25519_key()).await;
    assert_eq!(signer_of(&new_cert), pending.fingerprint, "the new key signs");
    let trusted = ca.core().trusted_keys(KeyPurpose::User);
    assert_eq!(trusted.lines().count(), 2, "old and new keys are trusted: {trusted}");
    assert!(trusted.contains(pending.public_key.trim()));
    let old_public = ca.admin().ca_keys().into_iter().find(|k| k.fingerprint == original_ca).unwrap();
    assert_eq!(old_public.state, "previous");
    assert!(trusted.contains(old_public.public_key.trim()));
    assert!(
        ca.admin().retire_ca_key(&ca_grant, &pending.fingerprint).await.is_err(),
        "the active key cannot be retired"
    );
    ca.admin().retire_ca_key(&ca_grant, &original_ca).await.unwrap();
    let trusted = ca.core().trusted_keys(KeyPurpose::User);
    assert_eq!(trusted.lines().count(), 1, "retired key is dropped: {trusted}");
    assert!(!trusted.contains(old_public.public_key.trim()));

    // The store round-trips through a reopen (keys decrypt, chain intact).
    drop(ca);
    let ca = ca_in_process(url, &policy_dir, clock.clone()).await.unwrap();
    assert_eq!(active_user_ca(&ca), pending.fingerprint);
    let admin = login(&ca, "admin", admin_password).await;
    let audit_grant = ca.core().authorize::<proof::AuditRead>(&admin).unwrap();

    // --- audit tampering -------------------------------------------------------------
    let verify = ca.admin().audit_verify(&audit_grant).await.unwrap();
    assert!(verify.ok, "audit chain verifies after all of the above: {verify:?}");
    assert!(verify.records > 20, "the operations above were audited: {verify:?}");
    let records = ca.admin().audit_records(&audit_grant, 0, 1000).await.unwrap();
    let events: Vec<&str> = records.iter().map(|r| r.event.as_str()).collect();
    for expected in [
        "ca_key_generated",
        "policy_loaded",
        "login_succeeded",
        "login_failed",
        "cert_issued",
        "cert_denied",
        "revoked",
        "user_changed",
        "ca_key_rotated",
        "ca_key_retired",
    ] {
        assert!(events.contains(&expected), "no {expected} in {events:?}");
    }
    let newest = records.last().unwrap().seq;
    assert_eq!(newest, verify.records);
    let middle = newest / 2;
    let pool = ca.core().store().pool();

    let original_payload: String = sqlx::query("SELECT payload FROM audit_log WHERE seq = $1")
        .bind(i64::try_from(middle).unwrap())
        .fetch_one(pool)
        .await
        .unwrap()
        .try_get("payload")
        .unwrap();
    let forged = original_payload.replacen('"', "\"forged\":1,\"", 1);
    assert_ne!(forged, original_payload);
    set_payload(&ca, middle, &forged).await;
    let verify = ca.admin().audit_verify(&audit_grant).await.unwrap();
    assert!(!verify.ok);
    assert_eq!(verify.first_bad_seq, Some(middle), "edited row: {verify:?}");
    set_payload(&ca, middle, &original_payload).await;
    assert!(ca.admin().audit_verify(&audit_grant).await.unwrap().ok, "restored");

    let saved = take_row(&ca, middle).await;
    let verify = ca.admin().audit_verify(&audit_grant).await.unwrap();
    assert!(!verify.ok);
    assert_eq!(verify.first_bad_seq, Some(middle), "deleted middle row: {verify:?}");
    put_row(&ca, &saved).await;
    assert!(ca.admin().audit_verify(&audit_grant).await.unwrap().ok, "restored");

    let _ = take_row(&ca, newest).await;
    let verify = ca.admin().audit_verify(&audit_grant).await.unwrap();
    assert!(!verify.ok, "deleting the newest record is detected");
    assert_eq!(verify.first_bad_seq, Some(newest), "deleted newest row: {verify:?}");

    // --- read snapshots ------------------------------------------------------------
    // A view read from several tables sees one instant: a change committed between its
    // first and its last query is invisible to it (else a node's history could show a
    // run whose facts are not there yet).
    let mut snapshot = ca.core().store().read().await.unwrap();
    assert!(store::inventory(snapshot.conn(), "snap01").await.unwrap().is_none());
    let mut tx = ca.core().store().begin().await.unwrap();
    store::record_inventory_change(tx.conn(), "snap01", "run-1", now(), "{}", "[]").await.unwrap();
    tx.commit().await.unwrap();
    let history = store::inventory_history(snapshot.conn(), "snap01", 10).await.unwrap();
    assert!(history.is_empty(), "the snapshot saw a write committed after it began ({} rows)", history.len());
    drop(snapshot);
    let mut fresh = ca.core().store().read().await.unwrap();
    assert_eq!(store::inventory_history(fresh.conn(), "snap01", 10).await.unwrap().len(), 1);
}

async fn set_payload(ca: &Ca, seq: u64, payload: &str) {
    let done = sqlx::query("UPDATE audit_log SET payload = $1 WHERE seq = $2")
        .bind(payload)
        .bind(i64::try_from(seq).unwrap())
        .execute(ca.core().store().pool())
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
}

/// One audit row as stored: (seq, at, event, payload, prev_hash, hash).
type RawRow = (i64, i64, String, String, String, String);

async fn take_row(ca: &Ca, seq: u64) -> RawRow {
    let seq = i64::try_from(seq).unwrap();
    let row = sqlx::query("SELECT seq, at, event, payload, prev_hash, hash FROM audit_log WHERE seq = $1")
        .bind(seq)
        .fetch_one(ca.core().store().pool())
        .await
        .unwrap();
    let saved = (
        row.try_get("seq").unwrap(),
        row.try_get("at").unwrap(),
        row.try_get("event").unwrap(),
        row.try_get("payload").unwrap(),
        row.try_get("prev_hash").unwrap(),
        row.try_get("hash").unwrap(),
    );
    let done =
        sqlx::query("DELETE FROM audit_log WHERE seq = $1").bind(seq).execute(ca.core().store().pool()).await.unwrap();
    assert_eq!(done.rows_affected(), 1);
    saved
}

async fn put_row(ca: &Ca, row: &RawRow) {
    sqlx::query("INSERT INTO audit_log (seq, at, event, payload, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(row.0)
        .bind(row.1)
        .bind(row.2.clone())
        .bind(row.3.clone())
        .bind(row.4.clone())
        .bind(row.5.clone())
        .execute(ca.core().store().pool())
        .await
        .unwrap();
}

mod replicas;
mod scoping;
mod sessions;
