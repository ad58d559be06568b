//! What the device list and a device's details show each caller.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_list_shows_what_a_console_may_open() {
    let fx = fixture().await;
    let list = |token: String| {
        let fx = &fx;
        async move {
            let (status, v) = fx.api.get_json(Some(&token), "/v1/console/devices").await;
            assert_eq!(status, StatusCode::OK, "{v}");
            let devices: Vec<ConsoleDevice> = serde_json::from_value(v).unwrap();
            devices.into_iter().map(|d| (d.name, d.agent.unwrap_or_default(), d.logins)).collect::<Vec<_>>()
        }
    };
    // lab09: the rule's scope excludes edge9; prod01: no console rule; dev01: a rule,
    // but no console role targets it. pve01 is served by the default agent.
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        list(bearer(&fx.ca, "alice").await).await,
        vec![
            ("pve01".to_owned(), "local".to_owned(), s(&["deploy", "root"])),
            ("pve02".to_owned(), "edge1".to_owned(), s(&["deploy", "root"])),
        ]
    );
    // Deny statements remove logins.
    assert_eq!(
        list(bearer(&fx.ca, "dave").await).await,
        vec![
            ("pve01".to_owned(), "local".to_owned(), s(&["root"])),
            ("pve02".to_owned(), "edge1".to_owned(), s(&["root"]))
        ]
    );
    // No console permission: nothing (though carol may have certificates for the lab).
    assert!(list(bearer(&fx.ca, "carol").await).await.is_empty());
    // A browser session sees the same list without a CSRF token (GET).
    let (session, _, _, _) = browser_login(&fx, "alice").await;
    let (status, v, _) = with_cookie(&fx, reqwest::Method::GET, "/v1/console/devices", &session, None, None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 2);
    // Unauthenticated: 401.
    let (status, _) = fx.api.get_json(None, "/v1/console/devices").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Agent status: down until a bastion reports the agent connected, then only that one.
    let alice = bearer(&fx.ca, "alice").await;
    let agents_up = || async {
        let (_, v) = fx.api.get_json(Some(&alice), "/v1/console/devices").await;
        let devices: Vec<ConsoleDevice> = serde_json::from_value(v).unwrap();
        devices.into_iter().map(|d| (d.name, d.agent_connected)).collect::<Vec<_>>()
    };
    let both = |a, b| vec![("pve01".to_owned(), Some(a)), ("pve02".to_owned(), Some(b))];
    assert_eq!(agents_up().await, both(false, false));
    heartbeat(&fx, &[]).await;
    assert_eq!(agents_up().await, both(true, false));
}

/// The details page's data, from the attacker's side: a device outside the caller's
/// list reads exactly like an unknown one; a console user sees their own roles and
/// sessions only, an administrator who may also open consoles sees everyone's and who
/// holds each role; an administrator who opens no console reads every device's page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_details_show_only_what_the_caller_may_see() {
    let fx = fixture().await;
    let (alice, bob, carol) =
        (bearer(&fx.ca, "alice").await, bearer(&fx.ca, "bob").await, bearer(&fx.ca, "carol").await);
    // alice is connected to pve01 (her session reached it); bob was, and left.
    let alices = session_id();
    let (status, v) = redeem(&fx, &ticket(&fx, &alice, "pve01", "root").await, &alices).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let reached =
        json!({"events": [{"event": "broker_connected", "session_id": alices, "agent": "local", "setup_ms": 5}]});
    let (status, v) = fx.api.post_json(Some(&fx.bastion), "/v1/bastion/events", &reached).await;
    assert!(status.is_success(), "{v}");
    let bobs = session_id();
    let (status, v) = redeem(&fx, &ticket(&fx, &bob, "pve01", "deploy").await, &bobs).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let close = json!({"session_id": bobs, "reason": "browser_disconnect", "bytes_from_client": 7,
        "bytes_to_client": 4096, "duration_ms": 1500});
    let (status, v) = fx.api.post_json(Some(&fx.bastion), "/v1/bastion/sessions/close", &close).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");

    let details = |token: String, name: &'static str| {
        let fx = &fx;
        async move { fx.api.get_json(Some(&token), &format!("/v1/console/devices/{name}")).await }
    };
    let (status, d) = details(alice.clone(), "pve01").await;
    assert_eq!(status, StatusCode::OK, "{d}");
    let d: DeviceDetails = serde_json::from_value(d).unwrap();
    assert_eq!((d.device.name.as_str(), d.device.logins.clone()), ("pve01", vec!["deploy".into(), "root".into()]));
    let node = d.node.as_ref().unwrap();
    assert_eq!(node.host_keys.len(), 1, "{node:?}");
    // Seen alive when alice's session reached it.
    assert_eq!(d.device.last_seen, Some(fx.ca.core().now()), "{:?}", d.device);
    assert!(node.host_keys[0].algorithm == "ssh-ed25519" && node.host_keys[0].fingerprint.starts_with("SHA256:"));
    let rule = |purpose: &str| d.rules.iter().find(|r| r.purpose == purpose).unwrap().rule.clone();
    assert_eq!((rule("console_access"), rule("ssh_login")), (Some("lab-console".into()), None));
    // Only her own role reaches her; viewer targets pve01 too, but is not hers to see.
    let roles: Vec<_> = d.access.iter().map(|a| (a.role.as_str(), a.yours, a.holders.is_some())).collect();
    assert_eq!((roles, d.access_complete), (vec![("ops", true, false)], false));
    assert_eq!(d.access[0].idle_secs, 600);
    // Her own live session only: bob's closed one is not hers.
    let users: Vec<_> = d.sessions.iter().map(|s| (s.user.as_str(), s.ended_at.is_some())).collect();
    assert_eq!((users, d.sessions_of_everyone), (vec![("alice", false)], false));

    // Outside her list (no console rule for prod01), unknown, or no console permission at
    // all: one and the same answer.
    let refusals = [
        details(alice.clone(), "prod01").await,
        details(alice.clone(), "no-such-node").await,
        details(carol, "pve01").await,
    ];
    for (status, body) in &refusals {
        assert_eq!(*status, StatusCode::NOT_FOUND, "{body}");
    }
    assert!(refusals.iter().all(|(_, b)| *b == refusals[0].1), "{refusals:?}");
    let (status, _) = fx.api.get_json(None, "/v1/console/devices/pve01").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // An administrator who also opens consoles: every role targeting pve01 with its
    // holders, and everyone's sessions (bob's closed one with its reason and bytes).
    let admin = fx.ca.identity().caller(&fx.admin).await.unwrap();
    let users = fx.ca.core().authorize::<proof::UsersManage>(&admin).unwrap();
    fx.ca.admin().set_user_groups(&users, "bob", &["ops".to_owned(), "admins".to_owned()]).await.unwrap();
    let (status, d) = details(bearer(&fx.ca, "bob").await, "pve01").await;
    assert_eq!(status, StatusCode::OK, "{d}");
    let d: DeviceDetails = serde_json::from_value(d).unwrap();
    let roles: Vec<_> = d.access.iter().map(|a| (a.role.as_str(), a.holders.clone().unwrap_or_default())).collect();
    assert_eq!(
        (roles, d.access_complete),
        (vec![("ops", vec!["group:ops".to_owned()]), ("viewer", vec!["group:viewers".to_owned()])], true)
    );
    assert!(d.sessions_of_everyone);
    let closed = d.sessions.iter().find(|s| s.session_id == bobs).unwrap();
    assert_eq!(
        (closed.user.as_str(), closed.reason.as_deref(), closed.bytes_to_client, closed.login.as_deref()),
        ("bob", Some("browser_disconnect"), 4096, Some("deploy"))
    );
    assert!(d.sessions.iter().any(|s| s.user == "alice" && s.ended_at.is_none()), "{:?}", d.sessions);

    // An administrator who opens no console (nodes.manage, audit.read) reads every
    // device's page, each saying why no console opens for them; their console list
    // stays empty, and an unknown name is still not found.
    let (_, list) = fx.api.get_json(Some(&fx.admin), "/v1/console/devices").await;
    assert_eq!(list, json!([]));
    for (name, why) in [("pve01", "no console role of yours"), ("prod01", "no console_access rule")] {
        let (status, d) = details(fx.admin.clone(), name).await;
        assert_eq!(status, StatusCode::OK, "{name}: {d}");
        let d: DeviceDetails = serde_json::from_value(d).unwrap();
        assert!(d.device.logins.is_empty() && d.access_complete && d.sessions_of_everyone, "{name}: {d:?}");
        assert!(d.device.console_unavailable.as_deref().unwrap_or("").contains(why), "{name}: {d:?}");
    }
    assert_eq!(details(fx.admin.clone(), "no-such-node").await.0, StatusCode::NOT_FOUND);

    // A `sessions.kill` whose role targets prod does not show her everyone's sessions on
    // a lab device she opens consoles on: still only her own.
    fx.ca.admin().set_user_groups(&users, "alice", &["ops".to_owned(), "prod-killers".to_owned()]).await.unwrap();
    let (status, d) = details(bearer(&fx.ca, "alice").await, "pve01").await;
    assert_eq!(status, StatusCode::OK, "{d}");
    let d: DeviceDetails = serde_json::from_value(d).unwrap();
    assert!(!d.sessions_of_everyone && d.sessions.iter().all(|s| s.user == "alice"), "{:?}", d.sessions);
}
