//! The device flow (the CLI's sign-in): headless login, step-up, sessions and certificates from the IdP's groups, refusals.

use super::*;

/// The real CLI, headless (stdout a pipe, no terminal): `portcullis login` sees OIDC in
/// `/v1/auth/methods`, prints the URL and code, and polls until the user approves.
#[tokio::test]
async fn cli_login_uses_the_device_flow_headless() {
    let s = setup(None).await;
    let home = tempfile::tempdir().unwrap();
    let (complete, child) = cli_device_login(&s, home.path(), &[]);
    let start = DeviceStart { verification_uri_complete: Some(complete), ..placeholder_start(&s.idp) };
    approve_device(&s.idp, &start, "alice", "alice-password", false).await;
    let (rest, status, stderr) = finish_cli(child);
    assert!(status.success(), "CLI failed: {rest:?}\n{stderr}");
    assert!(rest.iter().any(|l| l.starts_with("Logged in to") && l.ends_with("as oidc:alice.")), "{rest:?}");
    let principal = scoped_principal("dev-shell", "dev");
    assert!(rest.iter().any(|l| l.contains(&principal)), "{rest:?}");
}

/// Step-up from a terminal: `portcullis login --fresh` has the IdP ask for the password
/// although the user's browser is still signed in there (`max_age=0` on the device
/// authorization), and only that moves the sign-in time; an ordinary device sign-in in
/// the same browser asks nothing and keeps the old time.
#[tokio::test]
async fn login_fresh_asks_the_idp_for_the_password_again() {
    let s = setup(None).await;
    let mut browser = Browser::new(Browser::idp_client());
    let mut sign_in = async |fresh: bool| {
        let (status, body) = s.server.post_json(None, "/v1/auth/oidc/device", &json!({ "fresh": fresh })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let start: DeviceStart = serde_json::from_value(body).unwrap();
        let logins = approve_device_in(&mut browser, &s.idp, &start, "bob", "bob-password", false).await;
        let DevicePoll::Success(session) = poll_until_done(&s.server, start.handle.expose()).await else {
            panic!("device sign-in did not succeed")
        };
        let (status, me) = s.server.get_json(Some(session.token.expose()), "/v1/auth/whoami").await;
        assert_eq!(status, StatusCode::OK, "{me}");
        (logins, me["authenticated_at"].as_u64().unwrap())
    };
    let (logins, first) = sign_in(false).await;
    assert_eq!(logins, 1);
    assert!(first > 0, "the device flow reports the IdP's auth_time");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(sign_in(false).await, (0, first), "remembered by the IdP: no password, no newer sign-in");
    let (logins, fresh) = sign_in(true).await;
    assert_eq!(logins, 1, "a step-up asks for the password");
    assert!(fresh >= first + 2, "fresh {fresh}, first {first}");
    let (status, body) = s.server.post_json(None, "/v1/auth/oidc/device", &json!({ "fresh": "yes" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // The CLI's flag is that request: with the browser still signed in at the IdP, the
    // IdP asks for the password again (once the last sign-in is over a second old).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let home = tempfile::tempdir().unwrap();
    let (complete, child) = cli_device_login(&s, home.path(), &["--fresh"]);
    let start = DeviceStart { verification_uri_complete: Some(complete), ..placeholder_start(&s.idp) };
    assert_eq!(approve_device_in(&mut browser, &s.idp, &start, "bob", "bob-password", false).await, 1);
    let (rest, status, stderr) = finish_cli(child);
    assert!(status.success(), "CLI failed: {rest:?}\n{stderr}");
}

#[tokio::test]
async fn methods_name_oidc() {
    let s = setup(None).await;
    let (status, body) = s.server.get_json(None, "/v1/auth/methods").await;
    assert_eq!(status, StatusCode::OK);
    let methods: AuthMethods = serde_json::from_value(body).unwrap();
    assert!(methods.password);
    let oidc = methods.oidc.expect("OIDC offered");
    assert_eq!(oidc.issuer, s.idp.issuer);
    assert!(oidc.device && oidc.browser);
}

#[tokio::test]
async fn device_flow_gives_a_session_and_a_certificate_from_idp_groups() {
    let s = setup(None).await;
    let start = device_start(&s.server).await;
    assert!(start.handle.expose().starts_with("pcd_"));
    assert!(!start.user_code.is_empty() && start.interval >= 1 && start.expires_in > 0);
    // The device code itself never reaches the client.
    let serialized = serde_json::to_string(&start).unwrap();
    assert!(!serialized.contains("device_code"), "{serialized}");

    // Before the user acts: pending.
    let (status, body) = device_poll(&s.server, start.handle.expose()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(matches!(serde_json::from_value(body).unwrap(), DevicePoll::Pending { .. }));
    // A client that ignores the interval is told to slow down by the CA itself: the
    // answer stays the same however often it asks (the IdP's own `slow_down` would
    // raise the interval by five seconds at every poll that reached it).
    for _ in 0..5 {
        let (status, body) = device_poll(&s.server, start.handle.expose()).await;
        assert_eq!(status, StatusCode::OK);
        let poll: DevicePoll = serde_json::from_value(body).unwrap();
        assert!(matches!(poll, DevicePoll::SlowDown { interval } if interval == start.interval + 5), "{poll:?}");
    }

    approve_device(&s.idp, &start, "alice", "alice-password", false).await;
    let login: LoginResponse = match poll_until_done(&s.server, start.handle.expose()).await {
        DevicePoll::Success(login) => login,
        other => panic!("expected success, got {other:?}"),
    };
    assert_eq!(login.username, "oidc:alice");
    // The handle is single use.
    let (status, _) = device_poll(&s.server, start.handle.expose()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = s.server.get_json(Some(login.token.expose()), "/v1/auth/whoami").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let who: WhoAmI = serde_json::from_value(body).unwrap();
    assert_eq!((who.username.as_str(), who.source.as_str()), ("oidc:alice", "oidc"));
    assert_eq!(who.groups, vec!["developers"]);
    assert_eq!(who.roles, vec!["dev-shell"]);

    let (status, body) = s.server.issue_cert(login.token.expose(), &public_line(&ed25519_key())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cert: UserCertResponse = serde_json::from_value(body).unwrap();
    assert_eq!(cert.principals, vec![scoped_principal("dev-shell", "dev")]);

    let ok = s.server.audit_events("login_succeeded").await;
    assert!(ok.iter().any(|r| r.payload["username"] == "oidc:alice" && r.payload["source"] == "oidc"), "{ok:?}");
}

/// A token without the groups claim says nothing about the user's groups. Read as "no
/// groups" it would lift the deny on `oidc:suspended` for anyone the IdP was not asked
/// about: refused, audited, and explained; a user whose token lists no groups (an empty
/// list) signs in as before.
#[tokio::test]
async fn a_token_without_the_groups_claim_is_not_read_as_no_groups() {
    let s = setup(None).await;
    let start = device_start(&s.server).await;
    approve_device(&s.idp, &start, "dana", "dana-password", false).await;
    let refused = loop {
        let (status, body) = device_poll(&s.server, start.handle.expose()).await;
        if status != StatusCode::OK {
            break (status, body);
        }
        let poll: DevicePoll = serde_json::from_value(body).unwrap();
        assert!(matches!(poll, DevicePoll::Pending { .. } | DevicePoll::SlowDown { .. }), "signed in: {poll:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(refused.0.is_client_error(), "{refused:?}");
    assert!(refused.1.to_string().contains("no `groups` claim"), "{refused:?}");
    let failed = s.server.audit_events("login_failed").await;
    assert!(
        failed.iter().any(|r| r.payload["reason"] == "groups_claim_missing" && r.payload["username"] == "oidc:dana"),
        "{failed:?}"
    );
    // Stated, even empty, is known: carol signs in.
    let start = device_start(&s.server).await;
    approve_device(&s.idp, &start, "carol", "carol-password", false).await;
    assert!(matches!(poll_until_done(&s.server, start.handle.expose()).await, DevicePoll::Success(_)));
}

/// A session whose token stated no groups was let in while no deny named a group; once
/// one does — a deny added after the sign-in, an off-boarding `frozen` — its unknown
/// groups cannot be judged, and it is refused at its next request. Before, it went on
/// for the session's lifetime (12 h by default) with "no groups", past the new deny
/// (found in review, 2026-12-06).
#[tokio::test]
async fn a_session_without_stated_groups_ends_when_a_group_deny_appears() {
    let s = setup(None).await;
    let without_deny = &POLICY[..POLICY.find("[[deny]]").unwrap()];
    let (status, body) = s.server.write_policy("policy.toml", without_deny).await;
    assert!(status.is_success(), "{body}");
    let start = device_start(&s.server).await;
    approve_device(&s.idp, &start, "dana", "dana-password", false).await;
    let login: LoginResponse = match poll_until_done(&s.server, start.handle.expose()).await {
        DevicePoll::Success(login) => login,
        other => panic!("no group deny, so dana signs in: {other:?}"),
    };
    let (status, body) = s.server.get_json(Some(login.token.expose()), "/v1/auth/whoami").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = s.server.write_policy("policy.toml", POLICY).await;
    assert!(status.is_success(), "{body}");
    let (status, body) = s.server.get_json(Some(login.token.expose()), "/v1/auth/whoami").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a session of unknown groups outlived a group deny: {body}");
    let refused = s.server.audit_events("session_refused").await;
    assert!(
        refused.iter().any(|r| r.payload["username"] == "oidc:dana" && r.payload["reason"] == "groups_unknown"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn device_flow_denied_and_expired_are_answered_clearly() {
    let s = setup(Some(3)).await;
    // Denied by the user at the IdP.
    let start = device_start(&s.server).await;
    approve_device(&s.idp, &start, "alice", "alice-password", true).await;
    assert!(matches!(poll_until_done(&s.server, start.handle.expose()).await, DevicePoll::AccessDenied));
    // Nobody acts before the 3 s device code expires.
    let start = device_start(&s.server).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(matches!(poll_until_done(&s.server, start.handle.expose()).await, DevicePoll::ExpiredToken));
    let failed = s.server.audit_events("login_failed").await;
    let reasons: Vec<_> = failed.iter().map(|r| r.payload["reason"].as_str().unwrap().to_owned()).collect();
    assert!(reasons.contains(&"access_denied".to_owned()), "{reasons:?}");
    assert!(reasons.contains(&"expired_token".to_owned()), "{reasons:?}");
    // An unknown handle is no session.
    let (status, _) = device_poll(&s.server, "pcd_not-a-handle").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
