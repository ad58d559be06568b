//! API sessions: guessing budgets per IPv6 /64, and no certificate outlives the session it was asked in.

use super::*;

/// A password guesser with an IPv6 /64 — what one host is routinely given — gets the free
/// tries and back-off of one address, not a fresh budget per address; another /64 and an
/// IPv4 address are not held back by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_guesser_gets_one_budget_per_64_not_per_address() {
    let work = tempfile::tempdir().unwrap();
    let policy_dir = policy_dir(work.path());
    let ca = ca_in_process(&sqlite_url(work.path()), &policy_dir, ManualClock::new(now())).await.unwrap();
    admin_and_alice(&ca, "devs").await;

    let guess = |ip: String| {
        let ca = &ca;
        async move { ca.identity().login_password("alice", None, &secret("a-guess-at-alices-password"), &ip).await }
    };
    // The free tries and the first back-off step, each from a new address of the /64.
    for n in 1..=portcullis_ca::ratelimit::FREE_FAILURES + 1 {
        let answer = guess(format!("2001:db8:7:1::{n:x}")).await;
        assert!(matches!(answer, Err(CaError::InvalidCredentials)), "try {n}: {answer:?}");
    }
    let answer = guess("2001:db8:7:1:abcd::1".into()).await;
    assert!(matches!(answer, Err(CaError::RateLimited { .. })), "a new address of the same /64: {answer:?}");
    for elsewhere in ["2001:db8:7:2::1", "198.51.100.20"] {
        let answer = guess(elsewhere.into()).await;
        assert!(matches!(answer, Err(CaError::InvalidCredentials)), "{elsewhere}: {answer:?}");
    }
}

/// A certificate asked for in an API session that is revoked before the certificate is
/// stored — an administrator disables the user while the request is on its way — is
/// never handed out: it would otherwise be stored after the revocation swept the user's
/// certificates, and be valid for its whole lifetime on every node. SQLite: the request
/// authenticated before the revocation, stored after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_no_certificate_outlives_the_session_it_was_asked_in() {
    let work = tempfile::tempdir().unwrap();
    no_certificate_outlives_the_session_it_was_asked_in(&sqlite_url(work.path()), work.path()).await;
}

/// The same on PostgreSQL, and with the revocation in flight while the certificate is
/// stored: the storing transaction waits for it (it locks the session's row) and then
/// refuses, rather than storing a certificate the revocation's sweep has already missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_no_certificate_outlives_the_session_it_was_asked_in() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    let work = tempfile::tempdir().unwrap();
    let ca = no_certificate_outlives_the_session_it_was_asked_in(&pg.url(), work.path()).await;

    let admin = login(&ca, "admin", ADMIN_PASSWORD).await;
    let users = ca.core().authorize::<proof::UsersManage>(&admin).unwrap();
    ca.admin().set_user_disabled(&users, "alice", false).await.unwrap();
    let alice = login(&ca, "alice", ALICE_PASSWORD).await;
    let pool = ca.core().store().pool();
    let mut revoking = pool.begin().await.unwrap();
    for table in ["sessions", "certificates"] {
        let sweep = format!("UPDATE {table} SET revoked_at = $1 WHERE username = 'alice' AND revoked_at IS NULL");
        sqlx::query(sqlx::AssertSqlSafe(sweep))
            .bind(i64::try_from(now()).unwrap())
            .execute(&mut *revoking)
            .await
            .unwrap();
    }
    let key = ed25519_key();
    let request = UserCertRequest { public_key: public_line(&key), ..UserCertRequest::default() };
    let issuing = ca.issuance().issue(&alice, &request, IP);
    tokio::pin!(issuing);
    let waited = async {
        loop {
            let waiting: i64 = sqlx::query("SELECT COUNT(*) AS n FROM pg_locks WHERE NOT granted")
                .fetch_one(pool)
                .await
                .unwrap()
                .try_get("n")
                .unwrap();
            if waiting > 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        answer = &mut issuing => panic!("answered while the revocation was in flight: {answer:?}"),
        () = waited => {}
        () = tokio::time::sleep(std::time::Duration::from_secs(20)) => panic!("the issuance never waited"),
    }
    revoking.commit().await.unwrap();
    let answer = issuing.await;
    assert!(matches!(answer, Err(CaError::Unauthenticated)), "{answer:?}");
    assert_no_live_certificate_for_alice(&ca, &admin).await;
}

/// Runs the stale-request case on a new CA at `url`; returns the CA, alice disabled.
async fn no_certificate_outlives_the_session_it_was_asked_in(url: &str, work: &Path) -> Ca {
    let ca = ca_in_process(url, &policy_dir(work), ManualClock::new(now())).await.unwrap();
    let admin = admin_and_alice(&ca, "devs").await;
    let alice = login(&ca, "alice", ALICE_PASSWORD).await; // authenticated, then…
    let users = ca.core().authorize::<proof::UsersManage>(&admin).unwrap();
    ca.admin().set_user_disabled(&users, "alice", true).await.unwrap();
    let request = UserCertRequest { public_key: public_line(&ed25519_key()), ..UserCertRequest::default() };
    let answer = ca.issuance().issue(&alice, &request, IP).await; // …stored after.
    assert!(matches!(answer, Err(CaError::Unauthenticated)), "{answer:?}");
    assert_no_live_certificate_for_alice(&ca, &admin).await;
    let denied = ca.core().store().audit_records(0, 1000).await.unwrap();
    assert!(
        denied.iter().any(|r| r.event == "cert_denied" && r.payload.contains("\"session_ended\"")),
        "the refusal is audited"
    );
    ca
}

async fn assert_no_live_certificate_for_alice(ca: &Ca, admin: &Caller) {
    let grant = ca.core().authorize::<proof::CertsRevoke>(admin).unwrap();
    let live: Vec<_> = ca
        .issuance()
        .certificates(&grant, Some("alice"), None)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| !c.revoked)
        .collect();
    assert!(live.is_empty(), "a live certificate for a revoked session: {live:?}");
}
