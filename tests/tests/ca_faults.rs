//! The CA under faults: a full disk (SQLite on a small tmpfs) and connections killed
//! under issuance (PostgreSQL). The property checked is "acknowledged means committed":
//! every certificate a client received is in the certificate table with its audit
//! record, revocable by serial and listed in the KRL — and the store recovers by itself
//! once the fault is gone.

// Test code: a failed expectation must fail the test, so unwrap/expect/panic/indexing
// are the right tools here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_ca::keys::KeyPurpose;
use portcullis_ca::store::{Unavailable, serial_from_db};
use portcullis_ca::{Ca, CaError, Caller, ManualClock};
use portcullis_policies::proof;
use portcullis_proto::{RevokeRequest, UserCertRequest};
use portcullis_tests::small_disk::SmallDisk;
use portcullis_tests::ssh::{ed25519_key, public_line, ssh_keygen};
use portcullis_tests::{Postgres, ca_in_process, first_admin, sqlite_url};
use secrecy::SecretString;
use sqlx::Row;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const POLICY: &str = r#"
[[role]]
name = "admin"
permissions = ["certs.revoke", "users.manage", "audit.read"]

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
const IP: &str = "192.0.2.10";
/// Concurrent issuers: enough that the writer batches and the pool hands out every
/// connection while the fault hits.
const ISSUERS: usize = 16;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn setup(url: &str, work: &Path) -> (Arc<Ca>, Caller, Caller) {
    let policy_dir = work.join("policy");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("policy.toml"), POLICY).unwrap();
    let ca = ca_in_process(url, &policy_dir, ManualClock::new(now())).await.unwrap();
    let admin = ca.identity().caller(&first_admin(&ca, "admins", IP).await).await.unwrap();
    let users = ca.core().authorize::<proof::UsersManage>(&admin).unwrap();
    ca.admin()
        .add_user(&users, "alice", &["devs".into()], Some(&SecretString::from(ALICE_PASSWORD.to_owned())))
        .await
        .unwrap();
    let alice = login(&ca, "alice", ALICE_PASSWORD).await;
    (Arc::new(ca), admin, alice)
}

async fn login(ca: &Ca, user: &str, password: &str) -> Caller {
    let token = ca
        .identity()
        .login_password(user, None, &SecretString::from(password.to_owned()), IP)
        .await
        .unwrap()
        .token
        .expose()
        .to_owned();
    ca.identity().caller(&token).await.unwrap()
}

/// What a run of concurrent issuers received.
#[derive(Default)]
struct Outcome {
    /// serial -> certificate line, for every certificate a caller was handed.
    received: Vec<(u64, String)>,
    refused: Vec<String>,
}

/// `ISSUERS` tasks issue `per_task` certificates each, keeping going through errors.
async fn issue_concurrently(ca: &Arc<Ca>, alice: &Caller, per_task: usize) -> Outcome {
    let mut tasks = Vec::new();
    for _ in 0..ISSUERS {
        let (ca, alice) = (Arc::clone(ca), alice.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            for _ in 0..per_task {
                let request = UserCertRequest { public_key: public_line(&ed25519_key()), ..UserCertRequest::default() };
                match ca.issuance().issue(&alice, &request, IP).await {
                    Ok(resp) => out.received.push((resp.serial.parse().unwrap(), resp.certificate)),
                    Err(e) => out.refused.push(describe(&e)),
                }
            }
            out
        }));
    }
    let mut all = Outcome::default();
    for task in tasks {
        let out = task.await.unwrap();
        all.received.extend(out.received);
        all.refused.extend(out.refused);
    }
    all
}

fn describe(e: &CaError) -> String {
    format!("{}: {e}", e.code())
}

/// Every certificate a caller received is stored, audited, revocable by serial and in
/// the KRL; the audit chain verifies on every pooled connection.
async fn assert_acknowledged_means_committed(ca: &Ca, admin: &Caller, received: &[(u64, String)], work: &Path) {
    let stored: BTreeSet<u64> = sqlx::query("SELECT serial FROM certificates")
        .fetch_all(ca.core().store().pool())
        .await
        .unwrap()
        .iter()
        .map(|r| serial_from_db(r.get("serial")))
        .collect();
    let audited: BTreeSet<u64> = sqlx::query("SELECT payload FROM audit_log WHERE event = 'cert_issued'")
        .fetch_all(ca.core().store().pool())
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let payload: serde_json::Value = serde_json::from_str(&r.get::<String, _>("payload")).unwrap();
            payload["serial"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    let lost: Vec<u64> = received.iter().map(|(s, _)| *s).filter(|s| !stored.contains(s)).collect();
    assert!(lost.is_empty(), "{} of {} received certificates are not stored: {lost:?}", lost.len(), received.len());
    let unaudited: Vec<u64> = received.iter().map(|(s, _)| *s).filter(|s| !audited.contains(s)).collect();
    assert!(unaudited.is_empty(), "received certificates without an audit record: {unaudited:?}");
    assert_eq!(stored, audited, "the certificate table and the audit chain disagree");

    let audit = ca.core().authorize::<proof::AuditRead>(admin).unwrap();
    for _ in 0..8 {
        let check = ca.admin().audit_verify(&audit).await.unwrap();
        assert!(check.ok, "the audit chain verifies on every pooled connection: {check:?}");
    }

    // Revocable by serial: the newest received certificate (the one closest to the fault).
    let revoke = ca.core().authorize::<proof::CertsRevoke>(admin).unwrap();
    let (last_serial, _) = received.last().unwrap();
    let by_serial = ca
        .revocation()
        .revoke(&revoke, &RevokeRequest { serial: Some(last_serial.to_string()), ..RevokeRequest::default() })
        .await
        .unwrap();
    assert_eq!(by_serial.certificates_revoked, 1, "serial {last_serial} is revocable");
    // And all of them by user: every received certificate is in the KRL.
    ca.revocation()
        .revoke(&revoke, &RevokeRequest { username: Some("alice".into()), ..RevokeRequest::default() })
        .await
        .unwrap();
    let files = work.join("received");
    std::fs::create_dir_all(&files).unwrap();
    let krl = files.join("krl");
    std::fs::write(&krl, ca.revocation().krl().await.unwrap().as_slice()).unwrap();
    let mut args = vec!["-Q".to_owned(), "-f".to_owned(), krl.display().to_string()];
    for (serial, line) in received {
        let path = files.join(format!("{serial}-cert.pub"));
        std::fs::write(&path, format!("{line}\n")).unwrap();
        args.push(path.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ssh_keygen(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let revoked = stdout.lines().filter(|l| l.contains("REVOKED")).count();
    assert_eq!(revoked, received.len(), "every received certificate is in the KRL:\n{stdout}");
}

/// Issues until one succeeds: the store must come back by itself once the fault is gone.
async fn issue_after_recovery(ca: &Ca, alice: &Caller) -> (u64, String) {
    let mut last = String::new();
    for _ in 0..50 {
        let request = UserCertRequest { public_key: public_line(&ed25519_key()), ..UserCertRequest::default() };
        match ca.issuance().issue(alice, &request, IP).await {
            Ok(resp) => return (resp.serial.parse().unwrap(), resp.certificate),
            Err(e) => last = describe(&e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the store did not recover after the fault was removed; last error: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_full_disk_never_acknowledges_an_unstored_certificate() {
    let disk = SmallDisk::mount("24m");
    let work = tempfile::tempdir().unwrap();
    let (ca, admin, alice) = setup(&sqlite_url(disk.path()), work.path()).await;

    let mut before = issue_concurrently(&ca, &alice, 4).await;
    assert!(before.refused.is_empty(), "issuance works before the fault: {:?}", before.refused);

    let filler = disk.fill();
    let during = issue_concurrently(&ca, &alice, 40).await;
    assert!(!during.refused.is_empty(), "the full disk refused nothing: the test did not reach the fault");
    let disk_full = CaError::StoreUnavailable(Unavailable::DiskFull);
    for refusal in &during.refused {
        assert!(refusal.starts_with("store_unavailable: "), "a refusal on a full disk says so: {refusal}");
    }
    assert!(
        during.refused.iter().any(|r| *r == describe(&disk_full)),
        "at least one refusal names the full disk: {:?}",
        &during.refused[..during.refused.len().min(5)]
    );

    std::fs::remove_file(filler).unwrap();
    let after = issue_after_recovery(&ca, &alice).await;
    let again = issue_concurrently(&ca, &alice, 4).await;
    assert!(again.refused.is_empty(), "issuance works again once space is back: {:?}", again.refused);

    before.received.extend(during.received);
    before.received.push(after);
    before.received.extend(again.received);
    assert_acknowledged_means_committed(&ca, &admin, &before.received, work.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_under_issuance_lose_no_acknowledged_certificate() {
    // No skip when PostgreSQL is missing: see `Postgres::start`.
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    let work = tempfile::tempdir().unwrap();
    let (ca, admin, alice) = setup(&pg.url(), work.path()).await;

    // A second connection terminates every other backend of the CA's database, again and
    // again, while the issuers run: some die mid-statement, some during COMMIT.
    let killer_pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&pg.url()).await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut kills = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let killed = sqlx::query(
                    "SELECT count(*) AS n FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
                )
                .fetch_one(&killer_pool)
                .await
                .map(|r| r.get::<i64, _>("n"))
                .unwrap_or(0);
                kills += u64::try_from(killed).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            kills
        })
    };
    let mut during = issue_concurrently(&ca, &alice, 30).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let kills = killer.await.unwrap();
    assert!(kills > 0, "no connection was killed: the test did not reach the fault");
    assert!(!during.refused.is_empty(), "killed connections refused nothing: the test did not reach the fault");
    for refusal in &during.refused {
        assert!(
            refusal.starts_with("store_unavailable: "),
            "a refusal under lost connections is a clean 503: {refusal}"
        );
    }
    during.received.push(issue_after_recovery(&ca, &alice).await);
    assert_acknowledged_means_committed(&ca, &admin, &during.received, work.path()).await;
}

/// Two replicas opening one empty database at the same instant: each would generate the
/// missing CA keys and create the first administrator. Afterwards there is exactly one
/// active key per purpose (both replicas sign with it), one administrator whose
/// one-time password only the winner shows, and one audit record of each.
async fn two_replicas_start_at_once(url: &str, work: &Path) {
    let policy_dir = work.join("policy");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("policy.toml"), POLICY).unwrap();
    let (a, b) = tokio::join!(
        ca_in_process(url, &policy_dir, ManualClock::new(now())),
        ca_in_process(url, &policy_dir, ManualClock::new(now()))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    for purpose in KeyPurpose::ALL {
        assert_eq!(a.core().trusted_keys(purpose), b.core().trusted_keys(purpose), "{purpose}");
        assert_eq!(a.core().trusted_keys(purpose).lines().count(), 1, "{purpose}: one trusted key");
    }
    let records = a.core().store().audit_records(0, 1000).await.unwrap();
    assert_eq!(records.iter().filter(|r| r.event == "ca_key_generated").count(), 3, "one per purpose");

    let (pa, pb) =
        tokio::join!(a.identity().bootstrap_admin("admin", "admins"), b.identity().bootstrap_admin("admin", "admins"));
    let shown: Vec<_> = [pa.unwrap(), pb.unwrap()].into_iter().flatten().collect();
    assert_eq!(shown.len(), 1, "exactly one replica shows a one-time password");
    let records = a.core().store().audit_records(0, 1000).await.unwrap();
    let created = records.iter().filter(|r| r.event == "user_changed" && r.payload.contains("bootstrap_admin_created"));
    assert_eq!(created.count(), 1);
    // The one shown is the one that works.
    let own = SecretString::from("an-own-password-for-admin".to_owned());
    a.identity().login_replacing_password("admin", None, &shown[0], &own, IP).await.unwrap();
    assert_eq!(a.core().store().verify_audit_chain().await.unwrap().first_bad_seq, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_starting_at_once_share_one_key_per_purpose_and_one_admin_on_postgres() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    // The race is narrow: several fresh databases, each opened by two replicas at once.
    for round in 0..4 {
        let url = pg.create_database(&format!("race{round}")).unwrap();
        let work = tempfile::tempdir().unwrap();
        two_replicas_start_at_once(&url, work.path()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_starting_at_once_share_one_key_per_purpose_and_one_admin_on_sqlite() {
    for _ in 0..4 {
        let work = tempfile::tempdir().unwrap();
        two_replicas_start_at_once(&sqlite_url(work.path()), work.path()).await;
    }
}

/// `/healthz` says the process answers; `/readyz` says whether it can serve, and follows
/// the database: ready on a live PostgreSQL, 503 naming the database once it is gone,
/// while `/healthz` still answers (a load balancer takes the replica out, a supervisor
/// does not restart it for a database outage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database_and_liveness_does_not() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    let work = tempfile::tempdir().unwrap();
    let (ca, _, _) = setup(&pg.url(), work.path()).await;
    let api = portcullis_tests::ServedCa::start(Arc::clone(&ca)).await;
    let (status, v) = api.get_json(None, "/readyz").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, serde_json::json!({"ready": true, "checks": {"database": "ok", "ca_keys": "ok"}}));

    drop(pg);
    let (status, v) = api.get_json(None, "/readyz").await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["ready"], false);
    assert!(v["checks"]["database"].as_str().unwrap().starts_with("failing"), "{v}");
    assert_eq!(v["checks"]["ca_keys"], "ok");
    let (status, v) = api.get_json(None, "/healthz").await;
    assert_eq!((status.as_u16(), v), (200, serde_json::json!({"alive": true})));
}

/// The chain is checked while the CA keeps writing to it (a live CA always does, and
/// the chaos test's check once met an append): records appended during a check must
/// never read as newest records gone missing.
async fn the_chain_verifies_while_the_ca_writes(url: &str, work: &Path) {
    let (ca, _admin, alice) = setup(url, work).await;
    // Some history first, so each check reads for a while.
    issue_concurrently(&ca, &alice, 20).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (ca, alice, stop) = (Arc::clone(&ca), alice.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut written = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let request = UserCertRequest { public_key: public_line(&ed25519_key()), ..UserCertRequest::default() };
                if ca.issuance().issue(&alice, &request, IP).await.is_ok() {
                    written += 1;
                }
            }
            written
        })
    };
    for round in 0..40 {
        let check = ca.core().store().verify_audit_chain().await.unwrap();
        assert_eq!(check.first_bad_seq, None, "round {round}: {check:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert!(written > 0, "nothing was written during the checks");
    let check = ca.core().store().verify_audit_chain().await.unwrap();
    assert_eq!(check.first_bad_seq, None, "{check:?}");
    // Truncation is still caught: the newest record deleted behind the CA's back.
    sqlx::query("DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)")
        .execute(ca.core().store().pool())
        .await
        .unwrap();
    let check = ca.core().store().verify_audit_chain().await.unwrap();
    assert_eq!(check.problem.as_deref(), Some("newest records missing (head disagrees)"), "{check:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_verifies_while_the_ca_writes_on_postgres() {
    let pg = Postgres::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    the_chain_verifies_while_the_ca_writes(&pg.url(), work.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_verifies_while_the_ca_writes_on_sqlite() {
    let work = tempfile::tempdir().unwrap();
    the_chain_verifies_while_the_ca_writes(&sqlite_url(work.path()), work.path()).await;
}
