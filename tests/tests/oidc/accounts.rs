//! Accounts and replicas: an IdP account never inherits another's name, and sign-ins in progress are shared by replicas.

use super::*;

/// An IdP account is `oidc:NAME`, held for its (issuer, `sub`): one named like a local
/// user gets none of that user's bindings and survives that user's disabling; one that
/// calls itself by another IdP user's name (a different `sub`) is refused — audited,
/// nothing issued — until an administrator releases the name, which also ends what the
/// previous holder had under it.
#[tokio::test]
async fn idp_accounts_never_inherit_a_local_users_or_another_subjects_name() {
    let s = setup(None).await;
    let admin = s.server.admin_token().await;
    let (status, body) = s
        .server
        .write_policy(
            "names.toml",
            r#"
[[role]]
name = "auditor"
permissions = ["audit.read"]

[[binding]]
user = "ops-lead"
roles = ["auditor"]

[[binding]]
user = "oidc:bob"
roles = ["auditor"]
"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s.server.add_user(&admin, "ops-lead", &[], "local-ops-lead-password").await;

    // The IdP's `ops-lead` is not the local one: no binding, no audit log.
    let idp_lead = session_of(&code_flow_sign_in(&s, "ops-lead", "ops-lead-password").await);
    let (_, body) = s.server.whoami(&idp_lead).await;
    assert_eq!(body["username"], "oidc:ops-lead");
    assert_eq!(body["roles"], json!([]), "{body}");
    let (status, _) = s.server.get_json(Some(&idp_lead), "/v1/admin/audit").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Positive controls: the local ops-lead has the role, and so does the IdP's bob,
    // bound by his account name.
    let local_lead = s.server.login("ops-lead", "local-ops-lead-password").await;
    assert_eq!(s.server.get_json(Some(&local_lead), "/v1/admin/audit").await.0, StatusCode::OK);
    let idp_bob = session_of(&code_flow_sign_in(&s, "bob", "bob-password").await);
    assert_eq!(s.server.get_json(Some(&idp_bob), "/v1/admin/audit").await.0, StatusCode::OK);
    // Disabling the local ops-lead ends the local sessions only.
    let (status, body) = s.server.post_json(Some(&admin), "/v1/admin/users/ops-lead/disable", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(s.server.whoami(&local_lead).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.server.whoami(&idp_lead).await.0, StatusCode::OK);

    // alice (sub "alice") holds oidc:alice; mallory's token says preferred_username
    // alice, with sub "mallory": refused, nothing opened.
    let alice = session_of(&code_flow_sign_in(&s, "alice", "alice-password").await);
    assert_eq!(s.server.whoami(&alice).await.1["username"], "oidc:alice");
    let refused = code_flow_sign_in(&s, "mallory", "mallory-password").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    assert!(refused.body.contains("admin user release oidc:alice"), "{}", refused.body);
    assert!(
        !refused.set_cookies.iter().any(|c| c.starts_with("__Host-portcullis_session=") && !c.contains("Max-Age=0"))
    );
    let failed = s.server.audit_events("login_failed").await;
    assert!(
        failed.iter().any(|r| r.payload["username"] == "oidc:alice" && r.payload["reason"] == "account_taken"),
        "{failed:?}"
    );
    assert_eq!(s.server.whoami(&alice).await.0, StatusCode::OK, "the holder is untouched");

    // Released on purpose: alice's session ends, and the name goes to the next subject.
    let (status, body) = s.server.post_json(Some(&admin), "/v1/admin/users/oidc:alice/release", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(s.server.whoami(&alice).await.0, StatusCode::UNAUTHORIZED);
    let mallory = session_of(&code_flow_sign_in(&s, "mallory", "mallory-password").await);
    assert_eq!(s.server.whoami(&mallory).await.1["username"], "oidc:alice");
    // Only directory and IdP accounts are held for a subject.
    let (status, _) = s.server.post_json(Some(&admin), "/v1/admin/users/ops-lead/release", &json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// Two CA replicas on one PostgreSQL share the sign-ins in progress: a browser sign-in
/// started on one finishes on the other (and its `state` then works on neither again),
/// and a device sign-in started on one is polled on both, the interval holding across
/// them — without sticky routing in front of the replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_in_progress_are_shared_by_replicas_on_postgres() {
    let pg = Postgres::start().unwrap();
    let db = pg.create_database("oidc_replicas").unwrap();
    let callback_base = format!("https://127.0.0.1:{}", free_port());
    let callback = format!("{callback_base}/v1/auth/oidc/callback");
    let idp = Idp::start(&callback, None);
    let policy = tempfile::tempdir().unwrap();
    std::fs::write(policy.path().join("policy.toml"), POLICY).unwrap();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let mut config =
            CaConfig::new(db.clone(), policy.path().to_owned(), secrecy::SecretString::from(TEST_PASSPHRASE));
        config.oidc = Some(OidcConfig {
            redirect_urls: vec![callback.clone()],
            ..OidcConfig::new(idp.issuer.clone(), CLIENT_ID.into(), secrecy::SecretString::from(CLIENT_SECRET))
        });
        let ca = Ca::open(config, std::sync::Arc::new(SystemClock)).await.unwrap();
        replicas.push(ServedCa::start(std::sync::Arc::new(ca)).await);
    }
    let (a, b) = (&replicas[0], &replicas[1]);

    // Browser: started on A, back from the IdP at B (with the binding cookie A set).
    let mut on_a = pinned_browser(&a.pin);
    let start = on_a.get(&format!("{}/v1/auth/oidc/login", a.url)).await;
    let mut idp_browser = Browser::new(Browser::idp_client());
    let page = idp_browser.get(&start.location.expect("A sends the browser to the IdP")).await;
    let back = sign_in_at_idp(&mut idp_browser, &idp, page, "bob", "bob-password").await;
    let back = back.location.expect("the IdP redirects back");
    let mut on_b = pinned_browser(&b.pin);
    on_b.cookies = on_a.cookies.clone();
    let done = on_b.get(&back.replace(&callback_base, &b.url)).await;
    assert_signed_in_to_the_ui(&done);
    assert!(done.set_cookies.iter().any(|c| c.starts_with("__Host-portcullis_session=")), "{:?}", done.set_cookies);
    let replay = on_a.get(&back.replace(&callback_base, &a.url)).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED, "{}", replay.body);
    assert!(replay.body.contains("already used"), "{}", replay.body);

    // Device flow: started on A; a poll on B right after one on A is told to slow down.
    let (status, body) = a.post_json(None, "/v1/auth/oidc/device", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let start: DeviceStart = serde_json::from_value(body).unwrap();
    async fn poll(ca: &ServedCa, handle: &str) -> DevicePoll {
        let (status, body) = ca.post_json(None, "/v1/auth/oidc/device/poll", &json!({ "handle": handle })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_value(body).unwrap()
    }
    assert!(matches!(poll(a, start.handle.expose()).await, DevicePoll::Pending { .. }));
    assert!(matches!(poll(b, start.handle.expose()).await, DevicePoll::SlowDown { .. }));
    approve_device(&idp, &start, "bob", "bob-password", false).await;
    let mut done = None;
    for i in 0..20 {
        tokio::time::sleep(Duration::from_secs(start.interval.min(6))).await;
        match poll(if i % 2 == 0 { b } else { a }, start.handle.expose()).await {
            DevicePoll::Pending { .. } | DevicePoll::SlowDown { .. } => {}
            other => {
                done = Some(other);
                break;
            }
        }
    }
    let Some(DevicePoll::Success(session)) = done else { panic!("the device sign-in did not succeed: {done:?}") };
    assert_eq!(session.username, "oidc:bob");
    // Finished: the handle is gone on both.
    let (status, _) = a.post_json(None, "/v1/auth/oidc/device/poll", &json!({ "handle": start.handle })).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
