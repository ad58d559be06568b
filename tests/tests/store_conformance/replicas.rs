//! Two replicas on one PostgreSQL: CA key rotation followed, and a replica stalled inside a write holds up the others only briefly.

use super::*;

/// Replicas on one PostgreSQL, a rotation made on one of them. Another replica's KRL
/// carries the revocation of a certificate the new key signed (it used to leave out, without
/// a word, serials of keys its own keyring did not hold); an activation retried on a
/// replica that still saw the key pending changes nothing (it used to demote the active
/// key and promote none, leaving no key to sign with); after their housekeeping the others
/// sign with the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_each_others_ca_key_rotation() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    let work = tempfile::tempdir().unwrap();
    let policy_dir = policy_dir(work.path());
    let clock = ManualClock::new(now());
    let url = pg.url();
    let replica = || ca_in_process(&url, &policy_dir, clock.clone());
    let a = replica().await.unwrap();
    let admin = admin_and_alice(&a, "devs").await;
    let b = replica().await.unwrap();

    let ca_grant = a.core().authorize::<proof::CaManage>(&admin).unwrap();
    let pending = a.admin().rotate_ca_key(&ca_grant, KeyPurpose::User).await.unwrap();
    let c = replica().await.unwrap(); // sees the new key pending
    let stale_grant = c.core().authorize::<proof::CaManage>(&login(&c, "admin", ADMIN_PASSWORD).await).unwrap();
    a.admin().activate_ca_key(&ca_grant, KeyPurpose::User).await.unwrap();
    let alice = login(&a, "alice", ALICE_PASSWORD).await;
    let (resp, cert) = issue(&a, &alice, &ed25519_key()).await;
    assert_eq!(signer_of(&cert), pending.fingerprint);
    let revoke_grant = a.core().authorize::<proof::CertsRevoke>(&admin).unwrap();
    let serial = Some(resp.serial.clone());
    a.revocation().revoke(&revoke_grant, &RevokeRequest { serial, ..RevokeRequest::default() }).await.unwrap();

    // B has not heard of the new key: its KRL still names the revoked serial.
    let files = tempfile::tempdir().unwrap();
    let path = write_cert(files.path(), "cert", &cert);
    assert!(krl_revokes(&write_krl(&b, files.path()).await, &path), "B's KRL leaves out a revocation");

    // C still sees the key as pending: a retried activation there changes nothing.
    let retried = c.admin().activate_ca_key(&stale_grant, KeyPurpose::User).await;
    assert!(matches!(retried, Err(CaError::Conflict(_))), "{retried:?}");
    for ca in [&b, &c] {
        ca.housekeeping().await.unwrap();
    }
    for ca in [&a, &b, &c] {
        assert_eq!(active_user_ca(ca), pending.fingerprint, "one active key, the new one");
    }
    let alice_on_b = login(&b, "alice", ALICE_PASSWORD).await;
    let (_, from_b) = issue(&b, &alice_on_b, &ed25519_key()).await;
    assert_eq!(signer_of(&from_b), pending.fingerprint, "B signs with the key A activated");
}

/// A replica that stops in the middle of a write (paused, partitioned) holds the audit
/// chain's head. Other writers fail fast (503, try again) instead of queueing behind it
/// until TCP keepalive notices — hours — and the server ends the stalled transaction,
/// after which writes go through again. The limits have defaults, and a URL's own win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stalled_in_a_write_holds_up_the_others_only_briefly() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    let work = tempfile::tempdir().unwrap();
    let policy_dir = policy_dir(work.path());
    let clock = ManualClock::new(now());
    let url = pg.url();
    let a = ca_in_process(&url, &policy_dir, clock.clone()).await.unwrap();
    assert_eq!(pg_setting(&a, "lock_timeout").await, "10s");
    assert_eq!(pg_setting(&a, "idle_in_transaction_session_timeout").await, "1min");
    admin_and_alice(&a, "devs").await;
    let quick = format!("{url}?options[lock_timeout]=1s&options[idle_in_transaction_session_timeout]=3s");
    let b = ca_in_process(&quick, &policy_dir, clock.clone()).await.unwrap();
    assert_eq!(pg_setting(&b, "lock_timeout").await, "1s");

    let mut stalled = b.core().store().begin().await.unwrap();
    store::append_audit(stalled.conn(), now(), "stalled", "{}").await.unwrap(); // holds the head
    let started = std::time::Instant::now();
    let answer = b.identity().login_password("alice", None, &secret(ALICE_PASSWORD), IP).await;
    assert!(matches!(answer, Err(CaError::StoreUnavailable(_))), "{answer:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(8), "waited {:?}", started.elapsed());

    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    login(&b, "alice", ALICE_PASSWORD).await;
    assert!(stalled.commit().await.is_err(), "the server ended the stalled transaction");
}

async fn pg_setting(ca: &Ca, name: &str) -> String {
    let show = format!("SHOW {name}");
    let row = sqlx::query(sqlx::AssertSqlSafe(show)).fetch_one(ca.core().store().pool()).await.unwrap();
    row.try_get(0).unwrap()
}

/// Each replica reads its own policy directory. A deny reloaded on replica A holds on
/// replica B after B's housekeeping (before, B went on issuing under the old policy
/// until it restarted, though the audit log named the new one in force). B restarted
/// with its older files follows the policy in force instead of undoing it; files edited
/// on B since it came into force are published by B's restart, and A follows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_a_policy_reloaded_on_one_of_them() {
    let TwoReplicas { work: _work, url, clock, dir_a, dir_b, a, admin, b } = two_replicas().await;
    issue_for_alice(&b).await.expect("no deny yet");

    reload_with_a_deny(&a, &admin, &dir_a).await;
    b.housekeeping().await.unwrap();
    let refused = issue_for_alice(&b).await;
    assert!(matches!(refused, Err(CaError::Denied(_))), "B issued under the policy A replaced: {refused:?}");

    drop(b);
    let b = ca_in_process(&url, &dir_b, clock.clone()).await.unwrap();
    let refused = issue_for_alice(&b).await;
    assert!(matches!(refused, Err(CaError::Denied(_))), "B's restart undid A's reload: {refused:?}");

    // An edit on B after the deny came into force: B's restart publishes it.
    drop(b);
    let in_a_minute = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    std::fs::File::open(dir_b.join("policy.toml")).unwrap().set_modified(in_a_minute).unwrap();
    let b = ca_in_process(&url, &dir_b, clock.clone()).await.unwrap();
    issue_for_alice(&b).await.expect("B's edited files are the policy in force");
    a.housekeeping().await.unwrap();
    issue_for_alice(&a).await.expect("A follows B's edit");
}

/// Mid-upgrade, an older replica publishes a policy's digest without its files: a
/// replica cannot follow that, keeps its own policy and says so once. When the files
/// for that digest arrive (the older replica upgraded and published again), it follows
/// them at its next housekeeping — not only at its next restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_follows_a_policy_once_its_files_are_published() {
    let TwoReplicas { work: _work, dir_a, a, admin, b, .. } = two_replicas().await;
    let grant = reload_with_a_deny(&a, &admin, &dir_a).await;
    // As an older CA leaves it: the digest, no files.
    sqlx::query("UPDATE policy_state SET sources_json = NULL").execute(a.core().store().pool()).await.unwrap();
    b.housekeeping().await.unwrap();
    b.housekeeping().await.unwrap();
    issue_for_alice(&b).await.expect("B keeps its own policy while it cannot read the one in force");

    a.admin().reload_policy(&grant).await.unwrap();
    b.housekeeping().await.unwrap();
    let refused = issue_for_alice(&b).await;
    assert!(matches!(refused, Err(CaError::Denied(_))), "B stuck on its old policy: {refused:?}");
}

/// Replicas `a` (with alice in `devs`, and `admin`) and `b` of one SQLite database, each
/// with its own policy directory holding `POLICY` as configuration management left it a
/// minute ago (files and listing).
struct TwoReplicas {
    work: tempfile::TempDir,
    url: String,
    clock: ManualClock,
    dir_a: PathBuf,
    dir_b: PathBuf,
    a: Ca,
    admin: Caller,
    b: Ca,
}

async fn two_replicas() -> TwoReplicas {
    let work = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (work.path().join("a"), work.path().join("b"));
    let a_minute_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for dir in [&dir_a, &dir_b] {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
        for path in [dir.join("policy.toml"), dir.clone()] {
            std::fs::File::open(path).unwrap().set_modified(a_minute_ago).unwrap();
        }
    }
    let url = sqlite_url(work.path());
    let clock = ManualClock::new(now());
    let a = ca_in_process(&url, &dir_a, clock.clone()).await.unwrap();
    let admin = admin_and_alice(&a, "devs").await;
    let b = ca_in_process(&url, &dir_b, clock.clone()).await.unwrap();
    TwoReplicas { work, url, clock, dir_a, dir_b, a, admin, b }
}

/// A certificate for alice (group `devs`) from `ca`, or why not.
async fn issue_for_alice(ca: &Ca) -> Result<UserCertResponse, CaError> {
    let alice = login(ca, "alice", ALICE_PASSWORD).await;
    let request = UserCertRequest { public_key: public_line(&ed25519_key()), ..UserCertRequest::default() };
    ca.issuance().issue(&alice, &request, IP).await
}

/// Writes a deny on `devs` into replica `a`'s directory (`dir`) and reloads `a`; the
/// grant, for reloading again.
async fn reload_with_a_deny(a: &Ca, admin: &Caller, dir: &Path) -> portcullis_policies::Grant<proof::PolicyManage> {
    let deny = "[[deny]]\nname = \"frozen\"\ngroups = [\"devs\"]\npermissions = [\"certs.issue\"]\n";
    std::fs::write(dir.join("policy.toml"), format!("{POLICY}{deny}")).unwrap();
    let grant = a.core().authorize::<proof::PolicyManage>(admin).unwrap();
    a.admin().reload_policy(&grant).await.unwrap();
    grant
}
