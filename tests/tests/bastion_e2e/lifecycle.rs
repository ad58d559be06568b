//! How sessions end: limits, close orders, a stopping bastion, a crowd leaving, sessions that cannot start.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sessions_end_on_idle_timeout_caps_admin_kill_policy_change_revocation_and_expiry() {
    let w = World::start("2s").await;

    // Output keeps a session alive by default (the seed's idle: "without terminal input
    // or output"): a node printing for 4 s outlives the 2 s idle limit.
    let out = w.run("ssh", &["bastion", "for i in 1 2 3 4 5 6 7 8; do echo tick; sleep 0.5; done; echo done"]);
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("done\n"), "{}", text(&out));

    // A rule with `idle_counts = "input"`: no input for 2 s closes the session although
    // the node keeps printing.
    let input_only =
        policy("2s").replace("allowed_ports = [22, 2200]\n", "allowed_ports = [22, 2200]\nidle_counts = \"input\"\n");
    assert_ne!(input_only, policy("2s"));
    let (status, body) = w.server.write_policy("prod.toml", &input_only).await;
    assert!(status.is_success(), "{body}");
    let child = w.spawn_ssh(&["bastion", "while true; do echo tick; sleep 0.3; done"]);
    let (out, took) = wait_output(child, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Warned first (a quarter of the idle limit before, at most a minute), then closed.
    let warned = stderr.find("this session closes in").unwrap_or_else(|| panic!("no idle warning: {}", text(&out)));
    assert!(stderr[warned..].contains("idle timeout"), "{}", text(&out));
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(15), "{took:?}");
    w.server.await_audit("session_closed", |r| r.payload["reason"] == "idle_timeout").await;

    // One session per user: the second is refused while the first lives.
    let capped = policy_with(r#"idle = "15m", absolute = "1h", max_per_user = 1"#, "env:prod");
    let (status, body) = w.server.write_policy("prod.toml", &capped).await;
    assert!(status.is_success(), "{body}");
    let child = w.spawn_started("bastion", "sleep 60");
    // (At ssh's default log level, as a user sees it.)
    let out = w.run("ssh", &["-o", "LogLevel=INFO", "bastion", "true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("too many concurrent sessions"), "{}", text(&out));

    // Admin kill: within about a heartbeat; the slot is free again afterwards.
    let id = w.live_session_id().await;
    let (status, body) = w.server.post_json(Some(&w.admin), &format!("/v1/admin/sessions/{id}/kill"), &json!({})).await;
    assert!(status.is_success(), "kill: {body}");
    let (out, took) = wait_output(child, Duration::from_secs(20));
    assert!(String::from_utf8_lossy(&out.stderr).contains("closed by an administrator"), "{}", text(&out));
    assert!(took < Duration::from_secs(15), "{took:?}");
    w.server.await_audit("session_closed", |r| r.payload["reason"] == "admin_terminated").await;
    let out = w.run("ssh", &["bastion", "echo slot-free"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "slot-free", "{}", text(&out));

    // A policy change that removes access closes the live session within about a second.
    let child = w.spawn_started("bastion", "sleep 60");
    let started = Instant::now();
    let (status, body) = w.server.write_policy("prod.toml", &policy_with(r#"idle = "15m""#, "env:staging")).await;
    assert!(status.is_success(), "{body}");
    let reloaded = started.elapsed();
    let (out, _) = wait_output(child, Duration::from_secs(20));
    let took = started.elapsed() - reloaded;
    assert!(String::from_utf8_lossy(&out.stderr).contains("policy change"), "{}", text(&out));
    assert!(took < Duration::from_millis(2500), "closed {took:?} after the reload");
    let (status, body) = w.server.write_policy("prod.toml", &policy("15m")).await;
    assert!(status.is_success(), "{body}");

    // A short-lived certificate: the session ends when it expires.
    let token = w.server.login("alice", portcullis_tests::bastion_world::PASSWORD).await;
    let public = std::fs::read_to_string(w.dir.path().join("id.pub")).unwrap();
    let (status, body) = w
        .server
        .post_json(Some(&token), "/v1/certs/user", &json!({ "public_key": public.trim(), "ttl_seconds": 8 }))
        .await;
    assert!(status.is_success(), "{body}");
    let long_cert = std::fs::read(w.dir.path().join("id-cert.pub")).unwrap();
    write_file(w.dir.path(), "id-cert.pub", body["certificate"].as_str().unwrap());
    let child = w.spawn_started("bastion", "sleep 60");
    let (out, took) = wait_output(child, Duration::from_secs(30));
    assert!(String::from_utf8_lossy(&out.stderr).contains("certificate expired"), "{}", text(&out));
    assert!(took < Duration::from_secs(12), "{took:?}");
    write_file(w.dir.path(), "id-cert.pub", long_cert);

    // Revocation of the user's certificate closes the live session.
    let child = w.spawn_started("bastion", "sleep 60");
    let (status, body) = w.server.post_json(Some(&w.admin), "/v1/admin/revoke", &json!({ "username": "alice" })).await;
    assert!(status.is_success(), "revoke: {body}");
    let (out, _) = wait_output(child, Duration::from_secs(20));
    assert!(String::from_utf8_lossy(&out.stderr).contains("credential revoked"), "{}", text(&out));
}

/// SIGTERM drains the bastion: each live session is closed with its user told why, and
/// the CA records `shutdown` with the session's real duration (not `lease_lost` later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_bastion_tells_its_users_and_the_ca_why() {
    let mut w = World::start("15m").await;
    let child = w.spawn_started("bastion", "sleep 60");
    // Jump mode is end to end: the reason comes on the outer connection, which ssh
    // prints at its default log level (the world's config says ERROR; INFO wins here).
    let loud = w.dir.path().join("ssh_config_loud");
    std::fs::write(&loud, format!("Host *\n  LogLevel INFO\n{}", std::fs::read_to_string(&w.config).unwrap())).unwrap();
    let jump = w.spawn_started_with(&["-F", loud.to_str().unwrap(), "node"], "sleep 60");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = w.server.terminate(Duration::from_secs(30));
    assert!(status.success(), "portcullisd exited with {status}");
    let (out, _) = wait_output(child, Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bastion shutting down"), "{}", text(&out));
    let (out, _) = wait_output(jump, Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("session closed: bastion shutting down"), "{}", text(&out));

    let ca = portcullis_tests::same_ca(&w.server, std::sync::Arc::new(portcullis_ca::SystemClock)).await;
    let closed = portcullis_tests::audit_payloads(&ca, "session_closed").await;
    assert_eq!(closed.len(), 2, "{closed:?}");
    for c in &closed {
        assert_eq!(c["reason"], "shutdown", "{closed:?}");
        assert!(c["duration_ms"].as_u64().is_some_and(|d| (1500..30_000).contains(&d)), "{closed:?}");
    }
}

/// A crowd leaving at once: the all-in-one's bastion reports the closes to its CA in
/// process (no loopback connection; a remote CA's client keeps a few connections, see
/// `bastion_control::a_burst_of_calls_leaves_a_few_connections_to_the_ca`), each session
/// audited with its real reason; and a crowd leaving just as the bastion stops loses no
/// close (none recorded as lost or as an internal error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_leaving_at_once_is_reported_in_batches_and_a_stop_loses_no_close() {
    const CROWD: usize = 16;
    let mut w = World::start("15m").await;
    let ca_port: u16 = w.server.url.rsplit_once(':').unwrap().1.parse().unwrap();
    let crowd = |w: &World| (0..CROWD).map(|_| w.spawn_started("bastion", "sleep 120")).collect::<Vec<_>>();
    let leave = |children: Vec<std::process::Child>| {
        let mut children = children;
        children.iter_mut().for_each(|c| c.kill().unwrap());
        children.iter_mut().for_each(|c| drop(c.wait()));
    };

    let first = crowd(&w);
    let pid = w.server.pid();
    // The all-in-one's data plane calls its CA in process, not on the TCP port.
    assert_eq!(portcullis_tests::procfs::established_to_port(pid, ca_port), 0, "the data plane used loopback TCP");
    leave(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = w.server.get_json(Some(&w.admin), "/v1/admin/sessions").await;
        assert!(status.is_success(), "{body}");
        if body.as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "sessions still listed: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(portcullis_tests::procfs::established_to_port(pid, ca_port), 0, "the data plane used loopback TCP");

    leave(crowd(&w));
    let status = w.server.terminate(Duration::from_secs(30));
    assert!(status.success(), "portcullisd exited with {status}");
    let ca = portcullis_tests::same_ca(&w.server, std::sync::Arc::new(portcullis_ca::SystemClock)).await;
    let closed = portcullis_tests::audit_payloads(&ca, "session_closed").await;
    assert_eq!(closed.len(), 2 * CROWD, "{closed:?}");
    let (first, second) = closed.split_at(CROWD);
    assert!(first.iter().all(|c| c["reason"] == "client_disconnect"), "{first:?}");
    // The second crowd left as the stop began: either reason is the truth.
    assert!(second.iter().all(|c| c["reason"] == "client_disconnect" || c["reason"] == "shutdown"), "{second:?}");
}

/// A session that cannot start says why, and the audit's close reason names the same
/// cause: a node whose host key is not the pinned one, and a node nobody answers for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_cannot_start_names_the_same_cause_to_the_user_and_the_audit() {
    let w = World::start("15m").await;
    let ip = loopback_ip();
    let pinned = public_line(&ed25519_key());
    let node = NewNode { pinned_host_key: Some(pinned), ..NewNode::at("pve02", &ip) };
    let _imposter = add_node_with(&w.server, &w.admin, node).await;
    let nobody = portcullis_proto::NodeRecord {
        name: "pve03".into(),
        addresses: vec![loopback_ip()],
        tags: [("env".to_owned(), "prod".to_owned())].into(),
        host_keys: vec![public_line(&ed25519_key())],
        ..Default::default()
    };
    w.server.add_node(&w.admin, &nobody).await;

    for (node, reason, says) in [
        ("pve02", "host_key_mismatch", "host key is not the one on record"),
        ("pve03", "target_unreachable", "the device cannot be reached"),
    ] {
        w.add_host(node, &format!("root%{node}"));
        let out = w.run("ssh", &["-o", "LogLevel=INFO", node, "echo never"]);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains(says), "{node}: {}", text(&out));
        // (Earlier sessions on the same device closed for other reasons.)
        w.server.await_audit("session_closed", |r| r.payload["device"] == node && r.payload["reason"] == reason).await;
    }
}
