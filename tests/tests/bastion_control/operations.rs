//! Running it: bastion events as audit records, the CLI, replica failover, the CA client's connections, the in-process CA.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bastion_events_become_typed_audit_records() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let serial = user_cert(&fx.ca, "alice").await;
    let id = session_id();
    granted(api, &fx.bastion, &terminated(&id, &serial, "pve01", "root")).await;
    let events = json!({"events": [
        {"event": "auth_refused", "client_ip": "198.51.100.9", "user": "mallory\u{1b}[31m", "reason": "expired"},
        {"event": "broker_connected", "session_id": id, "agent": "local", "setup_ms": 42},
        {"event": "broker_failed", "session_id": session_id(), "agent": "edge1", "reason": "target_unreachable"},
        {"event": "agent_connected", "agent": "edge1", "remote": "203.0.113.4:51234"},
        {"event": "agent_disconnected", "agent": "edge1"},
    ]});
    let (status, v) = api.post_json(Some(&fx.bastion), "/v1/bastion/events", &events).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    let refused = audit(&fx.ca, "bastion_auth_refused").await;
    assert_eq!((refused[0]["user"].as_str(), refused[0]["bastion"].as_str()), (Some("mallory[31m"), Some("b1")));
    let connected = audit(&fx.ca, "broker_connected").await;
    for (field, want) in [
        ("session_id", json!(id)),
        ("user", json!("alice")),
        ("device", json!("pve01")),
        ("agent", json!("local")),
        ("mode", json!("terminated")),
        ("login", json!("root")),
        ("client_ip", json!(IP)),
        ("setup_ms", json!(42)),
    ] {
        assert_eq!(connected[0][field], want, "{field}");
    }
    let failed = audit(&fx.ca, "broker_failed").await;
    assert_eq!(
        (failed[0]["reason"].as_str(), failed[0]["phase"].as_str()),
        (Some("target_unreachable"), Some("target_connect"))
    );
    assert_eq!(audit(&fx.ca, "agent_connected").await.len(), 1);
    assert_eq!(audit(&fx.ca, "agent_disconnected").await.len(), 1);

    // Bad input: an unknown failure code, a bad session id, an oversized batch, an
    // unknown field. Nothing of a refused batch is recorded.
    let before = fx.ca.core().store().audit_records(0, 100_000).await.unwrap().len();
    let many: Vec<Value> = (0..1001).map(|_| json!({"event": "agent_disconnected", "agent": "e"})).collect();
    for body in [
        json!({"events": [{"event": "agent_disconnected", "agent": "ok"},
                          {"event": "broker_failed", "session_id": id, "agent": "edge1", "reason": "because"}]}),
        json!({"events": [{"event": "broker_connected", "session_id": "x", "agent": "edge1", "setup_ms": 1}]}),
        json!({"events": many}),
        json!({"events": [{"event": "agent_disconnected", "agent": "edge1", "extra": 1}]}),
    ] {
        let (status, v) = api.post_json(Some(&fx.bastion), "/v1/bastion/events", &body).await;
        assert!(status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE, "{status}: {v}");
    }
    assert_eq!(fx.ca.core().store().audit_records(0, 100_000).await.unwrap().len(), before);
}

/// Runs the real `portcullis` CLI with `home` as its home directory.
fn cli(home: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let out = portcullis_tests::cli::portcullis(home, args, stdin);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_and_kills_sessions_lists_agents_and_mints_service_tokens() {
    let fx = fixture(None, 1).await;
    let api = Arc::clone(&fx.replicas[0]);
    let caller = fx.ca.identity().caller(&fx.admin).await.unwrap();
    let users = fx.ca.core().authorize::<proof::UsersManage>(&caller).unwrap();
    let groups = ["admins".to_owned(), "ops".to_owned()];
    fx.ca.admin().add_user(&users, "opsadmin", &groups, Some(&SecretString::from(PASSWORD))).await.unwrap();
    fx.ca.services().register_service(ServiceKind::Agent, "edge1", &public_line(&ed25519_key()), None).await.unwrap();
    let serial = user_cert(&fx.ca, "alice").await;
    let id = session_id();
    granted(&api, &fx.bastion, &terminated(&id, &serial, "pve01", "root")).await;
    assert!(heartbeat(&api, &fx.bastion, &[&id], &["edge1"]).await.is_empty());

    let home = tempfile::tempdir().unwrap();
    let home = home.path().to_owned();
    let (url, pin) = (api.url.clone(), api.pin.clone());
    // The CLI is blocking; run it off the runtime that serves the CA.
    let run = move |args: Vec<String>, stdin: String| {
        let home = home.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&home, &args, &stdin)
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let (ok, out, err) = run(
        args(&["login", "--ca", &url, "--ca-fingerprint", &pin, "--user", "opsadmin", "--password-stdin"]),
        format!("{PASSWORD}\n"),
    )
    .await
    .unwrap();
    assert!(ok, "login: {out}{err}");

    let (ok, out, err) = run(args(&["admin", "sessions", "list"]), String::new()).await.unwrap();
    assert!(ok, "{err}");
    let row = out.lines().find(|l| l.starts_with(&id)).unwrap_or_else(|| panic!("session not listed:\n{out}"));
    for word in ["alice", "pve01", "root", "terminated", "local", "b1", IP] {
        assert!(row.split_whitespace().any(|w| w == word), "{word} missing in {row:?}");
    }

    let (ok, out, err) = run(args(&["admin", "sessions", "kill", &id]), String::new()).await.unwrap();
    assert!(ok, "kill: {out}{err}");
    assert_eq!(heartbeat(&api, &fx.bastion, &[&id], &["edge1"]).await, [(id.clone(), CloseReason::AdminTerminated)]);
    let (ok, _, err) = run(args(&["admin", "sessions", "kill", "not-a-session"]), String::new()).await.unwrap();
    assert!(!ok && err.contains("32 hexadecimal"), "{err}");

    let (ok, out, err) = run(args(&["admin", "agents", "list"]), String::new()).await.unwrap();
    assert!(ok, "{err}");
    let row = out.lines().find(|l| l.starts_with("edge1 ")).unwrap_or_else(|| panic!("edge1 not listed:\n{out}"));
    assert!(row.trim_end().ends_with("b1"), "connected to b1: {row:?}");
    let (ok, out, _) = run(args(&["admin", "bastions", "list"]), String::new()).await.unwrap();
    assert!(ok && out.lines().any(|l| l.starts_with("b1 ")), "{out}");

    // A service token from the CLI enrolls an agent (and is refused for a node).
    let (ok, token, err) =
        run(args(&["admin", "enroll-token", "create", "--service", "agent", "--ttl", "10m"]), String::new())
            .await
            .unwrap();
    assert!(ok, "{err}");
    let token = token.trim().to_owned();
    assert!(token.starts_with("pce_"));
    let body = enroll_body("agent", "edge7", &public_line(&ed25519_key()), None);
    let (status, v) = api.post_json(Some(&token), "/v1/services/enroll", &body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (ok, out, _) = run(args(&["admin", "enroll-token", "list"]), String::new()).await.unwrap();
    assert!(ok && out.lines().any(|l| l.split_whitespace().nth(1) == Some("agent")), "{out}");
    let (ok, _, _) =
        run(args(&["admin", "enroll-token", "create", "--service", "agent", "--tags", "a=b"]), String::new())
            .await
            .unwrap();
    assert!(!ok, "service tokens take no tags");
}

/// A bastion given several CA replicas (`--ca URL1,URL2`, one pin per replica key) keeps
/// working when one is down: a replica that cannot be connected to hands the call to
/// the next at once, its sessions stay open through a replica's death, and its trust
/// material still refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bastion_fails_over_between_ca_replicas_and_keeps_its_sessions() {
    use portcullis_bastion::{ControlConfig, ControlPlane, SystemClock, TrustConfig, TrustSource};
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    let mut fx = fixture(Some(&pg.url()), 2).await;
    let (r0, r1) = (Arc::clone(&fx.replicas[0]), Arc::clone(&fx.replicas[1]));
    assert_ne!(r0.pin, r1.pin, "each replica has a TLS key of its own: a pin set");
    let dead = "https://127.0.0.1:1";
    let control = ControlPlane::new(ControlConfig {
        ca_url: format!("{dead},{},{}", r0.url, r1.url),
        ca_pin: format!("{},{}", r0.pin, r1.pin),
        in_process: None,
        api_token: SecretString::from(fx.bastion.clone()),
        timeout: std::time::Duration::from_secs(5),
    })
    .unwrap();
    let request: SessionOpenRequest =
        serde_json::from_value(terminated(&session_id(), &user_cert(&fx.ca, "alice").await, "pve01", "root")).unwrap();
    let grant = control.open_session(&request).await.expect("opened past the dead replica");
    let live = LiveSession { session_id: grant.session_id.clone(), bytes_from_client: 1, bytes_to_client: 2 };
    let beat = || HeartbeatRequest { sessions: vec![live.clone()], agents: vec![] };
    assert!(control.heartbeat(&beat()).await.unwrap().close.is_empty());

    // The replica that answered dies; the next call goes to the other, the session lives.
    let (gone_url, gone_pin) = (r0.url.clone(), r0.pin.clone());
    fx.replicas.remove(0);
    drop(r0);
    let only_the_dead_one = ControlPlane::new(ControlConfig {
        ca_url: gone_url,
        ca_pin: gone_pin,
        in_process: None,
        api_token: SecretString::from(fx.bastion.clone()),
        timeout: std::time::Duration::from_secs(5),
    })
    .unwrap();
    assert!(only_the_dead_one.heartbeat(&beat()).await.is_err(), "the first replica is really down");
    for _ in 0..3 {
        let answer = control.heartbeat(&beat()).await.expect("a replica is up");
        assert!(answer.close.is_empty(), "the session survives a replica's death: {:?}", answer.close);
    }
    assert_eq!(fx.ca.core().store().leases().await.unwrap().len(), 1);

    let trust = TrustSource::new(TrustConfig::new(format!("{dead},{}", r1.url), r1.pin.clone()), Arc::new(SystemClock))
        .unwrap();
    trust.refresh().await.expect("trust material from the live replica");
}

/// A burst of calls through one bastion's client of a remote CA (a crowd of sessions
/// closing at once) leaves a few connections open to the CA, not one per call: the
/// client keeps at most four idle. (The all-in-one's crowd test used to count this on
/// loopback; its data plane now calls the CA in process, so it is counted here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_calls_leaves_a_few_connections_to_the_ca() {
    use portcullis_bastion::{ControlConfig, ControlPlane};
    let fx = fixture(None, 1).await;
    let ca = &fx.replicas[0];
    let port: u16 = ca.url.rsplit_once(':').unwrap().1.parse().unwrap();
    let control = Arc::new(
        ControlPlane::new(ControlConfig {
            ca_url: ca.url.clone(),
            ca_pin: ca.pin.clone(),
            in_process: None,
            api_token: SecretString::from(fx.bastion.clone()),
            timeout: std::time::Duration::from_secs(10),
        })
        .unwrap(),
    );
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let control = Arc::clone(&control);
            tokio::spawn(async move { control.heartbeat(&HeartbeatRequest { sessions: vec![], agents: vec![] }).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("heartbeat");
    }
    let held = || portcullis_tests::procfs::established_to_port(std::process::id(), port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while held() > 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let held = held();
    // Not vacuous: the client keeps some for later calls.
    assert!((1..=4).contains(&held), "{held} connections to the CA after 32 concurrent calls");
}

/// The all-in-one's bastion, agent and trust refresher call its CA's router in process
/// (no socket, no TLS): the same API, so a call with the bastion's credential is served,
/// and one with a forged credential, or none, is refused as it would be on the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_ca_asks_every_caller_for_its_credential() {
    use portcullis_bastion::{ControlConfig, ControlError, ControlPlane, InProcessCa, SystemClock, TrustConfig};
    let fx = fixture(None, 1).await;
    let ca = InProcessCa::new(portcullis_ca::api::router(Arc::clone(&fx.ca)));
    // Nothing listens on port 1: a call that left the process would fail.
    let nowhere = "https://127.0.0.1:1";
    let control = |token: &str| {
        ControlPlane::new(ControlConfig {
            ca_url: nowhere.into(),
            ca_pin: fx.replicas[0].pin.clone(),
            in_process: Some(ca.clone()),
            api_token: SecretString::from(token.to_owned()),
            timeout: std::time::Duration::from_secs(5),
        })
        .unwrap()
    };
    let request: SessionOpenRequest =
        serde_json::from_value(terminated(&session_id(), &user_cert(&fx.ca, "alice").await, "pve01", "root")).unwrap();
    let grant = control(&fx.bastion).open_session(&request).await.expect("served in process");
    let live = LiveSession { session_id: grant.session_id.clone(), bytes_from_client: 1, bytes_to_client: 2 };
    let beat = HeartbeatRequest { sessions: vec![live], agents: vec![] };
    assert!(control(&fx.bastion).heartbeat(&beat).await.unwrap().close.is_empty());
    assert_eq!(fx.ca.core().store().leases().await.unwrap().len(), 1);
    let forged = "pcs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for token in [forged, ""] {
        let e = control(token).heartbeat(&beat).await.unwrap_err();
        assert!(matches!(e, ControlError::Refused { status: 401, .. }), "{token:?}: {e}");
        assert!(!e.to_string().contains("AAAAAAAA"), "{e}");
    }
    let trust = portcullis_bastion::TrustSource::new(
        TrustConfig { in_process: Some(ca.clone()), ..TrustConfig::new(nowhere, fx.replicas[0].pin.clone()) },
        Arc::new(SystemClock),
    )
    .unwrap();
    trust.refresh().await.expect("trust material in process");
}

/// Trust on first use, from the CA's side: a bastion's report of a node's first host key
/// pins it only for a session of that bastion's own, on a node with no key pinned, under
/// a rule that trusts on first use. Another bastion naming the session, a node pinned
/// already, a rule that checks known_hosts: nothing pinned. A key that does not parse is
/// refused outright.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_key_report_pins_only_what_trust_on_first_use_covers() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let caller = fx.ca.identity().caller(&fx.admin).await.unwrap();
    let nodes = fx.ca.core().authorize::<proof::NodesManage>(&caller).unwrap();
    let bare = NodeRecord {
        name: "bare01".into(),
        addresses: vec!["10.0.0.9".into()],
        tags: [("env".to_owned(), "lab".to_owned())].into(),
        ..Default::default()
    };
    fx.ca.nodes().add_node(&nodes, &bare).await.unwrap();
    let alice = user_cert(&fx.ca, "alice").await;
    let (on_bare, on_pinned) = (session_id(), session_id());
    granted(api, &fx.bastion, &terminated(&on_bare, &alice, "bare01", "root")).await;
    granted(api, &fx.bastion, &terminated(&on_pinned, &alice, "pve01", "root")).await;
    let report = |bastion: String, id: String, key: String| async move {
        let events = json!({"events": [{"event": "host_key_first_used", "session_id": id, "host_key": key}]});
        api.post_json(Some(&bastion), "/v1/bastion/events", &events).await
    };
    let pins = || async { fx.ca.core().store().node("bare01").await.unwrap().unwrap().host_keys };
    let key = public_line(&ed25519_key());

    // The rule checks known_hosts: nothing pinned.
    let (status, v) = report(fx.bastion.clone(), on_bare.clone(), key.clone()).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    assert!(pins().await.is_empty(), "a known_hosts rule pinned a reported key");

    let tofu = POLICY_BASE
        .replace("allowed_ports = [22, 2222]", "allowed_ports = [22, 2222]\nhost_key_policy = \"trust_on_first_use\"");
    std::fs::write(fx.policy_dir.join("policy.toml"), format!("{tofu}{POLICY_CONTRACT}")).unwrap();
    let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/policy/reload", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // Another bastion cannot name this bastion's session; a pinned node keeps its keys.
    let other = second_bastion(&fx).await;
    let (status, _) = report(other, on_bare.clone(), key.clone()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(pins().await.is_empty(), "another bastion's report pinned a key");
    let before = fx.ca.core().store().node("pve01").await.unwrap().unwrap().host_keys;
    report(fx.bastion.clone(), on_pinned.clone(), key.clone()).await;
    assert_eq!(fx.ca.core().store().node("pve01").await.unwrap().unwrap().host_keys, before);
    let (status, _) = report(fx.bastion.clone(), on_bare.clone(), "ssh-ed25519 garbage".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(audit(&fx.ca, "host_key_pinned").await.is_empty());

    // What answered at bare01's address holds pve01's key: that machine is pve01 (or a
    // clone), so bare01 is not bound to it, and the session it carries is ended.
    let on_clone = session_id();
    granted(api, &fx.bastion, &terminated(&on_clone, &alice, "bare01", "root")).await;
    report(fx.bastion.clone(), on_clone.clone(), before[0].clone()).await;
    assert!(pins().await.is_empty(), "another node's host key was pinned");
    assert_eq!(heartbeat(api, &fx.bastion, &[&on_clone], &[]).await, [(on_clone.clone(), CloseReason::HostKeyTaken)]);
    let refused = audit(&fx.ca, "host_key_pin_refused").await;
    assert_eq!(
        (refused.len(), refused[0]["device"].as_str(), refused[0]["owner"].as_str()),
        (1, Some("bare01"), Some("pve01"))
    );

    // The bastion's own session on the unpinned node, under a first-use rule: pinned once.
    report(fx.bastion.clone(), on_bare.clone(), key.clone()).await;
    assert_eq!(pins().await, std::slice::from_ref(&key));
    report(fx.bastion.clone(), on_bare.clone(), public_line(&ed25519_key())).await;
    assert_eq!(pins().await, [key], "a later report replaced the pin");
    let pinned = audit(&fx.ca, "host_key_pinned").await;
    assert_eq!(
        (pinned.len(), pinned[0]["device"].as_str(), pinned[0]["session_id"].as_str()),
        (1, Some("bare01"), Some(on_bare.as_str()))
    );
}
