//! Leases: reclaimed from a quiet bastion, released by closes, closed by heartbeats' orders, found lost in batches.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_bastions_leases_are_reclaimed_after_the_ttl() {
    leases_are_reclaimed(&fixture(None, 1).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_bastions_leases_are_reclaimed_after_the_ttl_on_postgres() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    leases_are_reclaimed(&fixture(Some(&pg.url()), 2).await).await;
}

/// A bastion that stops heartbeating loses its leases after `LEASE_TTL_SECS`, reclaimed
/// by another bastion's heartbeat (on another replica when there are two).
async fn leases_are_reclaimed(fx: &Fx) {
    let api = fx.api();
    let other = fx.replicas.last().unwrap();
    let b2 = second_bastion(fx).await;
    let serial = user_cert(&fx.ca, "alice").await;
    let t0 = fx.clock_now();
    // b1 holds alice's five sessions and keeps one of them alive for a while.
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = session_id();
        granted(api, &fx.bastion, &terminated(&id, &serial, "pve01", "root")).await;
        ids.push(id);
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    // Control: heartbeats keep leases alive well past the TTL.
    for step in 1..=3 {
        fx.clock.set(t0 + step * (LEASE_TTL_SECS - 2));
        assert!(heartbeat(api, &fx.bastion, &refs, &[]).await.is_empty());
    }
    let t1 = fx.clock_now();
    denied(api, &fx.bastion, &terminated(&session_id(), &serial, "pve01", "root"), deny_reason::CAP_REACHED).await;

    // b1 goes quiet. At exactly the TTL the leases still count...
    fx.clock.set(t1 + LEASE_TTL_SECS);
    assert!(heartbeat(other, &b2, &[], &[]).await.is_empty());
    denied(other, &b2, &terminated(&session_id(), &serial, "pve01", "root"), deny_reason::CAP_REACHED).await;
    // ...one second later any heartbeat reclaims them.
    fx.clock.set(t1 + LEASE_TTL_SECS + 1);
    assert!(heartbeat(other, &b2, &[], &[]).await.is_empty());
    assert_eq!(counter(&fx.ca, "user:alice").await, 0);
    assert!(fx.ca.core().store().leases().await.unwrap().is_empty());
    let lost: Vec<Value> = audit(&fx.ca, "session_closed").await;
    assert_eq!(lost.len(), 5);
    assert!(lost.iter().all(|e| e["reason"] == "lease_lost" && e["user"] == "alice" && e["bytes_to_client"] == 20));
    granted(other, &b2, &terminated(&session_id(), &serial, "pve01", "root")).await;
    // When b1 comes back, its sessions are gone: it must close them.
    let orders = heartbeat(api, &fx.bastion, &refs, &[]).await;
    assert_eq!(orders.len(), 5);
    assert!(orders.iter().all(|(_, r)| *r == CloseReason::LeaseLost));
}

/// The only bastion dies: no heartbeat will ever come. The CA's own timer reclaims its
/// leases after the TTL, so a capped user is admitted again and the sessions are audited
/// as lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cas_timer_reclaims_a_dead_bastions_leases_without_any_heartbeat() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let serial = user_cert(&fx.ca, "alice").await;
    let t0 = fx.clock_now();
    for _ in 0..5 {
        granted(api, &fx.bastion, &terminated(&session_id(), &serial, "pve01", "root")).await;
    }
    denied(api, &fx.bastion, &terminated(&session_id(), &serial, "pve01", "root"), deny_reason::CAP_REACHED).await;
    fx.clock.set(t0 + LEASE_TTL_SECS);
    fx.ca.housekeeping().await.unwrap();
    assert_eq!(fx.ca.core().store().leases().await.unwrap().len(), 5, "at exactly the TTL the leases still count");
    fx.clock.set(t0 + LEASE_TTL_SECS + 1);
    fx.ca.housekeeping().await.unwrap();
    assert!(fx.ca.core().store().leases().await.unwrap().is_empty());
    assert_eq!(counter(&fx.ca, "user:alice").await, 0);
    let lost = audit(&fx.ca, "session_closed").await;
    assert_eq!(lost.iter().filter(|e| e["reason"] == "lease_lost").count(), 5, "{lost:?}");
}

/// A batch of closes commits together: each of the bastion's own sessions is released and
/// audited with its reason, another bastion's session named in the batch is left alone,
/// and a batch with one malformed id (or too many entries) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_closes_releases_only_the_bastions_own_sessions_all_or_none() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let b2 = second_bastion(&fx).await;
    let alice = user_cert(&fx.ca, "alice").await;
    let bob = user_cert(&fx.ca, "bob").await;
    let mine: Vec<String> = (0..3).map(|_| session_id()).collect();
    for id in &mine {
        granted(api, &fx.bastion, &terminated(id, &alice, "pve01", "root")).await;
    }
    let theirs = session_id();
    granted(api, &b2, &terminated(&theirs, &bob, "pve01", "root")).await;
    let entry = |id: &str, reason: &str| json!({"session_id": id, "reason": reason, "bytes_from_client": 5, "bytes_to_client": 7, "duration_ms": 90});
    let closes = |entries: Vec<Value>| json!({ "closes": entries });
    let bastion = fx.bastion.as_str();
    let post = |body: Value| async move { api.post_json(Some(bastion), "/v1/bastion/sessions/closes", &body).await };

    // Hostile or broken batches: refused whole, nothing released.
    let (status, v) =
        post(closes(vec![entry(&mine[0], "client_disconnect"), entry("../x", "client_disconnect")])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let too_many = (0..=MAX_CLOSES_PER_REQUEST).map(|_| entry(&mine[0], "client_disconnect")).collect();
    let (status, v) = post(closes(too_many)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(fx.ca.core().store().leases().await.unwrap().len(), 4);
    assert!(audit(&fx.ca, "session_closed").await.is_empty());

    let batch = vec![
        entry(&mine[0], "client_disconnect"),
        entry(&mine[1], "idle_timeout"),
        entry(&mine[2], "shutdown"),
        entry(&theirs, "client_disconnect"),
    ];
    let (status, v) = post(closes(batch.clone())).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    let leases = fx.ca.core().store().leases().await.unwrap();
    assert_eq!(leases.iter().map(|l| l.session_id.as_str()).collect::<Vec<_>>(), [theirs.as_str()]);
    let closed = audit(&fx.ca, "session_closed").await;
    let reasons: BTreeMap<&str, &str> =
        closed.iter().map(|c| (c["session_id"].as_str().unwrap(), c["reason"].as_str().unwrap())).collect();
    let expected: BTreeMap<&str, &str> =
        [(mine[0].as_str(), "client_disconnect"), (mine[1].as_str(), "idle_timeout"), (mine[2].as_str(), "shutdown")]
            .into();
    assert_eq!(reasons, expected);
    assert_eq!(counter(&fx.ca, "user:alice").await, 0);
    // Idempotent: the same batch again records nothing more.
    let (status, v) = post(closes(batch)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(audit(&fx.ca, "session_closed").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_order_closes_for_kill_revocation_and_policy_change() {
    close_orders(&fixture(None, 1).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_order_closes_for_kill_revocation_and_policy_change_on_postgres() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    close_orders(&fixture(Some(&pg.url()), 1).await).await;
}

async fn close_orders(fx: &Fx) {
    let api = fx.api();
    let (alice, bob, carol) =
        (user_cert(&fx.ca, "alice").await, user_cert(&fx.ca, "bob").await, user_cert(&fx.ca, "carol").await);
    let dave = user_cert(&fx.ca, "alice").await;
    let ids: Vec<String> = (0..4).map(|_| session_id()).collect();
    granted(api, &fx.bastion, &terminated(&ids[0], &alice, "pve01", "root")).await;
    granted(api, &fx.bastion, &jump(&ids[1], &bob, "pve02", None)).await;
    granted(api, &fx.bastion, &terminated(&ids[2], &carol, "pve01", "deploy")).await;
    granted(api, &fx.bastion, &terminated(&ids[3], &dave, "pve01", "deploy")).await;
    let all: Vec<&str> = ids.iter().map(String::as_str).collect();
    // Control: nothing to close.
    assert!(heartbeat(api, &fx.bastion, &all, &["local"]).await.is_empty());

    // The admin list shows them; alice (no admin permission) may not read it.
    let (status, v) = api.get_json(Some(&fx.admin), "/v1/admin/sessions").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let live: Vec<portcullis_proto::SessionInfo> = serde_json::from_value(v).unwrap();
    assert_eq!(live.len(), 4);
    assert!(live.iter().all(|s| s.bytes_to_client == 20 && !s.kill_requested));
    let alice_api = fx
        .ca
        .identity()
        .login_password("alice", None, &SecretString::from(PASSWORD), IP)
        .await
        .unwrap()
        .token
        .expose()
        .to_owned();
    let (status, _) = api.get_json(Some(&alice_api), "/v1/admin/sessions").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.post_json(Some(&alice_api), &format!("/v1/admin/sessions/{}/kill", ids[0]), &json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Admin kill.
    let (status, v) = api.post_json(Some(&fx.admin), &format!("/v1/admin/sessions/{}/kill", ids[0]), &json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    let (status, _) =
        api.post_json(Some(&fx.admin), &format!("/v1/admin/sessions/{}/kill", session_id()), &json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(heartbeat(api, &fx.bastion, &all, &[]).await, [(ids[0].clone(), CloseReason::AdminTerminated)]);
    let kill = audit(&fx.ca, "session_kill_requested").await;
    assert_eq!((kill[0]["actor"].as_str(), kill[0]["session_id"].as_str()), (Some("admin"), Some(ids[0].as_str())));

    // Revoking bob's certificate closes his session.
    let (status, _) = api.post_json(Some(&fx.admin), "/v1/admin/revoke", &json!({"serial": bob.serial})).await;
    assert_eq!(status, StatusCode::OK);
    let mut want = vec![(ids[0].clone(), CloseReason::AdminTerminated), (ids[1].clone(), CloseReason::Revoked)];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(heartbeat(api, &fx.bastion, &all, &[]).await, want);

    // A policy change that removes carol's role closes her session; alice's second
    // session (role ops, also for deploy) stays.
    std::fs::write(fx.policy_dir.join("policy.toml"), POLICY_BASE).unwrap();
    let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/policy/reload", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    want.push((ids[2].clone(), CloseReason::PolicyChanged));
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(heartbeat(api, &fx.bastion, &all, &[]).await, want);

    // The bastion closes them; each close is audited once with bytes and duration.
    for (id, reason) in &want {
        close(api, &fx.bastion, id, reason.as_str()).await;
        close(api, &fx.bastion, id, reason.as_str()).await; // idempotent
    }
    assert!(heartbeat(api, &fx.bastion, &[&ids[3]], &[]).await.is_empty());
    let closed = audit(&fx.ca, "session_closed").await;
    assert_eq!(closed.len(), 3);
    let rec = closed.iter().find(|e| e["session_id"] == json!(ids[1])).unwrap();
    for (field, want) in [
        ("reason", json!("revoked")),
        ("user", json!("bob")),
        ("device", json!("pve02")),
        ("agent", json!("edge1")),
        ("mode", json!("jump")),
        ("rule", json!("lab-ssh")),
        ("bytes_from_client", json!(111)),
        ("bytes_to_client", json!(222)),
        ("duration_ms", json!(3456)),
        ("client_ip", json!(IP)),
        ("cert_serial", json!(bob.serial)),
    ] {
        assert_eq!(rec[field], want, "{field} in {rec}");
    }
    // Start and end, not only the duration.
    let (started, ended) = (rec["started_at"].as_u64().unwrap(), rec["ended_at"].as_u64().unwrap());
    assert!(started > 0 && started <= ended && ended <= fx.clock_now(), "{rec}");
    assert_eq!(counter(&fx.ca, "user:bob").await, 0);
    assert_eq!(counter(&fx.ca, "user:alice").await, 1);
    // Another bastion cannot close b1's session.
    let b2 = second_bastion(fx).await;
    close(api, &b2, &ids[3], "client_disconnect").await;
    assert_eq!(fx.ca.core().store().leases().await.unwrap().len(), 1);

    // Disabling a user closes the sessions of her certificates.
    let (status, _) = api.post_json(Some(&fx.admin), "/v1/admin/users/alice/disable", &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(heartbeat(api, &fx.bastion, &[&ids[3]], &[]).await, [(ids[3].clone(), CloseReason::Revoked)]);
}

/// The heartbeat rewrites leases 64 to a statement; a statement that rewrites fewer than
/// it lists falls back to one per lease to find the lost ones. Here 70 live leases (two
/// statements) share a heartbeat with a lease of another bastion, one that never
/// existed and one past the TTL: exactly those three are lost, the 70 carry their new
/// counters, and the lost ones are not touched (the stale lease is not revived).
async fn batched_lease_heartbeats_find_each_lost_lease(store: &portcullis_ca::store::Store) {
    use portcullis_ca::store::{self, Beat, LeaseRow};
    let (now, cutoff) = (now(), now() - LEASE_TTL_SECS);
    let lease = |id: String, bastion: &str, heartbeat_at: u64| LeaseRow {
        session_id: id,
        bastion: bastion.to_owned(),
        username: "alice".to_owned(),
        device: "pve01".to_owned(),
        agent: "local".to_owned(),
        login: None,
        mode: "jump".to_owned(),
        port: 22,
        rule: "lab-ssh".to_owned(),
        role: "ops".to_owned(),
        cert_serial: 1,
        client_ip: IP.to_owned(),
        opened_at: heartbeat_at,
        heartbeat_at,
        absolute_deadline: now + 3600,
        kill_reason: None,
        bytes_from_client: 0,
        bytes_to_client: 0,
        confirmed: None,
    };
    let live: Vec<String> = (0..70).map(|_| session_id()).collect();
    let (elsewhere, never, stale) = (session_id(), session_id(), session_id());
    let mut tx = store.begin().await.unwrap();
    for id in &live {
        assert!(store::insert_lease(tx.conn(), &lease(id.clone(), "b1", now - 10), None).await.unwrap());
    }
    store::insert_lease(tx.conn(), &lease(elsewhere.clone(), "b2", now - 10), None).await.unwrap();
    store::insert_lease(tx.conn(), &lease(stale.clone(), "b1", cutoff - 1), None).await.unwrap();
    tx.commit().await.unwrap();

    let mut listed: Vec<&str> = live.iter().map(String::as_str).collect();
    listed.insert(3, &elsewhere);
    listed.insert(40, &never);
    listed.push(&stale);
    let beats: Vec<Beat> = listed
        .iter()
        .enumerate()
        .map(|(i, id)| Beat { session_id: id, bytes_from_client: i as u64 + 1, bytes_to_client: 1000 + i as u64 })
        .collect();
    let mut tx = store.begin().await.unwrap();
    let mut lost = store::heartbeat_leases(tx.conn(), "b1", now, cutoff, &beats).await.unwrap();
    tx.commit().await.unwrap();
    lost.sort_unstable();
    let mut expected = vec![elsewhere.as_str(), never.as_str(), stale.as_str()];
    expected.sort_unstable();
    assert_eq!(lost, expected);

    let rows: BTreeMap<String, LeaseRow> =
        store.leases().await.unwrap().into_iter().map(|l| (l.session_id.clone(), l)).collect();
    for (i, id) in listed.iter().enumerate() {
        let row = &rows.get(*id);
        if expected.contains(id) {
            assert!(row.is_none_or(|r| r.heartbeat_at < now && r.bytes_from_client == 0), "{id} was touched");
        } else {
            let row = row.unwrap();
            assert_eq!(
                (row.heartbeat_at, row.bytes_from_client, row.bytes_to_client),
                (now, i as u64 + 1, 1000 + i as u64)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_lease_heartbeats_find_each_lost_lease_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = portcullis_ca::store::Store::open(&sqlite_url(dir.path())).await.unwrap();
    batched_lease_heartbeats_find_each_lost_lease(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_lease_heartbeats_find_each_lost_lease_on_postgres() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    let store = portcullis_ca::store::Store::open(&pg.url()).await.unwrap();
    batched_lease_heartbeats_find_each_lost_lease(&store).await;
}

/// A deny statement on a group the user joins after their certificate was issued: groups
/// only ever shrink what a certificate grants, but a deny applies for a group recorded
/// *or* joined since. Added to `frozen`, alice loses her live sessions at the next
/// heartbeat and opens no new one with the certificate she holds; taken out again, it
/// works again (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_group_a_deny_names_ends_live_sessions_and_opens_no_new_one() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let frozen = "[[deny]]\nname = \"frozen\"\ngroups = [\"frozen\"]\nlogins = [\"*\"]\n";
    std::fs::write(fx.policy_dir.join("policy.toml"), format!("{POLICY_BASE}{POLICY_CONTRACT}{frozen}")).unwrap();
    let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/policy/reload", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let alice = user_cert(&fx.ca, "alice").await;
    let ids = [session_id(), session_id()];
    granted(api, &fx.bastion, &terminated(&ids[0], &alice, "pve01", "root")).await;
    granted(api, &fx.bastion, &jump(&ids[1], &alice, "pve02", None)).await;
    let live = [ids[0].as_str(), ids[1].as_str()];
    assert!(heartbeat(api, &fx.bastion, &live, &[]).await.is_empty(), "alice is in no denied group yet");

    let caller = fx.ca.identity().caller(&fx.admin).await.unwrap();
    let users = fx.ca.core().authorize::<proof::UsersManage>(&caller).unwrap();
    let groups = |names: &[&str]| names.iter().map(|g| (*g).to_owned()).collect::<Vec<_>>();
    fx.ca.admin().set_user_groups(&users, "alice", &groups(&["ops", "frozen"])).await.unwrap();
    let mut closed = heartbeat(api, &fx.bastion, &live, &[]).await;
    closed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want: Vec<(String, CloseReason)> = ids.iter().map(|id| (id.clone(), CloseReason::PolicyChanged)).collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(closed, want, "joining a denied group left live sessions open");
    denied(api, &fx.bastion, &terminated(&session_id(), &alice, "pve01", "root"), deny_reason::NOT_AUTHORIZED).await;
    denied(api, &fx.bastion, &jump(&session_id(), &alice, "pve02", None), deny_reason::NOT_AUTHORIZED).await;

    fx.ca.admin().set_user_groups(&users, "alice", &groups(&["ops"])).await.unwrap();
    granted(api, &fx.bastion, &terminated(&session_id(), &alice, "pve01", "root")).await;
}

/// A certificate issued under an identity provider's sign-in that stated no groups (the
/// API session is planted as `identity::oidc` writes it; `oidc::device` covers that
/// part): while no deny names a group it opens sessions; once one does, its unknown
/// groups cannot be judged — its live sessions end at the next heartbeat and it opens no
/// new one, as its API session is refused. Before, the certificate went on with "no
/// groups" until it expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_a_sign_in_of_unknown_groups_stops_when_a_group_deny_appears() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let dana = "[[binding]]\nuser = \"oidc:dana\"\nroles = [\"ops\"]\n";
    let reload = async |extra: &str| {
        std::fs::write(fx.policy_dir.join("policy.toml"), format!("{POLICY_BASE}{POLICY_CONTRACT}{dana}{extra}"))
            .unwrap();
        let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/policy/reload", &json!({})).await;
        assert_eq!(status, StatusCode::OK, "{v}");
    };
    reload("").await;
    let token = "pcs_dana-session-of-unknown-groups";
    let session = portcullis_ca::store::SessionRow {
        username: "oidc:dana".into(),
        source: "oidc".into(),
        groups: Vec::new(),
        expires_at: now() + 3600,
        authenticated_at: now(),
        groups_unknown: true,
    };
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token));
    let mut tx = fx.ca.core().store().begin().await.unwrap();
    portcullis_ca::store::insert_session(tx.conn(), &hash, &session, now()).await.unwrap();
    tx.commit().await.unwrap();
    let caller = fx.ca.identity().caller(token).await.unwrap();
    let key = ed25519_key();
    let request = UserCertRequest { public_key: public_line(&key), ..Default::default() };
    let text = fx.ca.issuance().issue(&caller, &request, IP).await.unwrap().certificate;
    let cert = ssh_key::Certificate::from_openssh(text.trim()).unwrap();
    let dana_cert = Presented { holder: Some(Arc::new((key, cert))), ..Presented::of(&text) };
    let ids = [session_id(), session_id()];
    granted(api, &fx.bastion, &terminated(&ids[0], &dana_cert, "pve01", "root")).await;
    granted(api, &fx.bastion, &jump(&ids[1], &dana_cert, "pve02", None)).await;
    let live = [ids[0].as_str(), ids[1].as_str()];
    assert!(heartbeat(api, &fx.bastion, &live, &[]).await.is_empty(), "no deny names a group yet");

    reload("[[deny]]\nname = \"frozen\"\ngroups = [\"frozen\"]\nlogins = [\"*\"]\n").await;
    let closed = heartbeat(api, &fx.bastion, &live, &[]).await;
    let mut want: Vec<(String, CloseReason)> = ids.iter().map(|id| (id.clone(), CloseReason::PolicyChanged)).collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(closed, want, "sessions of unknown groups outlived a group deny");
    let refused = terminated(&session_id(), &dana_cert, "pve01", "root");
    denied(api, &fx.bastion, &refused, deny_reason::CREDENTIAL_INVALID).await;
    denied(api, &fx.bastion, &jump(&session_id(), &dana_cert, "pve02", None), deny_reason::CREDENTIAL_INVALID).await;
}

/// Jump mode is end to end: the node's sshd takes any principal the certificate carries
/// that its principals file lists, whatever login the user then asks for. A deny on one
/// of the certificate's logins (here `root`, for a group alice joins after issuance)
/// therefore ends her live jump session and refuses new ones with that certificate,
/// though `deploy` is still hers; a terminated session, whose onward certificate carries
/// only the login admitted, still opens as `deploy`. Before, jump went on through
/// `deploy`'s grant and `ssh -J … root@pve02` logged in as root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jump_session_ends_when_any_login_its_certificate_carries_is_denied() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let frozen = "[[deny]]\nname = \"no-root\"\ngroups = [\"frozen\"]\nlogins = [\"root\"]\n";
    std::fs::write(fx.policy_dir.join("policy.toml"), format!("{POLICY_BASE}{POLICY_CONTRACT}{frozen}")).unwrap();
    let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/policy/reload", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let alice = user_cert(&fx.ca, "alice").await;
    let id = session_id();
    granted(api, &fx.bastion, &jump(&id, &alice, "pve02", None)).await;
    assert!(heartbeat(api, &fx.bastion, &[&id], &[]).await.is_empty(), "alice is in no denied group yet");

    let caller = fx.ca.identity().caller(&fx.admin).await.unwrap();
    let users = fx.ca.core().authorize::<proof::UsersManage>(&caller).unwrap();
    let groups = |names: &[&str]| names.iter().map(|g| (*g).to_owned()).collect::<Vec<_>>();
    fx.ca.admin().set_user_groups(&users, "alice", &groups(&["ops", "frozen"])).await.unwrap();
    assert_eq!(heartbeat(api, &fx.bastion, &[&id], &[]).await, vec![(id.clone(), CloseReason::PolicyChanged)]);
    denied(api, &fx.bastion, &jump(&session_id(), &alice, "pve02", None), deny_reason::NOT_AUTHORIZED).await;
    denied(api, &fx.bastion, &terminated(&session_id(), &alice, "pve01", "root"), deny_reason::NOT_AUTHORIZED).await;
    granted(api, &fx.bastion, &terminated(&session_id(), &alice, "pve01", "deploy")).await;
    // A fresh certificate leaves out the denied login, and jumps again.
    let fresh = user_cert(&fx.ca, "alice").await;
    granted(api, &fx.bastion, &jump(&session_id(), &fresh, "pve02", None)).await;
}
