//! Registering with the real CA, and the addresses and port a node is reached at.

use super::*;

/// The same flow against the real CA (`portcullisd all-in-one`): token from the admin
/// API, `POST /v1/enroll` with the verification certificate, node-proof refresh and
/// deregistration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolls_with_the_real_ca() {
    let server = portcullis_tests::Server::start().await;
    let admin = server.admin_token().await;
    let (status, body) = server
        .post_json(Some(&admin), "/v1/admin/enroll-tokens", &serde_json::json!({ "ttl_seconds": 3600, "uses": 1 }))
        .await;
    assert!(status.is_success(), "creating an enrollment token: {body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let node = Node::start(true);
    let before = node.snapshot();

    // An enrollment that fails on the node (after the CA registered it) is undone at the
    // CA as well: no node left registered, and the one-use token has its use back.
    let mut cmd = node.enroll_cmd();
    cmd.args(["enroll", "--ca", &server.url, "--token", &token, "--ca-fingerprint", &server.pin]);
    cmd.env("PORTCULLIS_ENROLL_FAILPOINT", "verify:error");
    let (code, json, _) = run(cmd);
    assert_eq!(code, 4, "{json}");
    assert_untouched(&node, &before, "failed enrollment (real CA)");
    let (_, nodes) = server.get_json(Some(&admin), "/v1/admin/nodes").await;
    assert_eq!(nodes.as_array().unwrap().len(), 0, "a rolled-back enrollment left a node registered: {nodes}");
    let (_, tokens) = server.get_json(Some(&admin), "/v1/admin/enroll-tokens").await;
    assert_eq!(tokens[0]["uses_left"], 1, "the rolled-back enrollment kept its token use: {tokens}");
    assert_eq!(server.audit_events("node_enroll_aborted").await.len(), 1);

    let mut cmd = node.enroll_cmd();
    cmd.args(["enroll", "--ca", &server.url, "--token", &token, "--ca-fingerprint", &server.pin]);
    let (code, json, out) = run(cmd);
    assert_eq!(code, 0, "enroll: {json}\n{}\n{}", String::from_utf8_lossy(&out.stderr), server.log());
    assert!(node.ordinary_login_works());
    assert_eq!(
        std::fs::read_to_string(node.path("/etc/ssh/portcullis/user_ca.pub")).unwrap().trim(),
        server.user_ca_keys.trim()
    );

    // Re-run: no token use (it had one), no writes, no reload.
    let mut cmd = node.enroll_cmd();
    cmd.args(["enroll", "--ca", &server.url, "--token", &token, "--ca-fingerprint", &server.pin]);
    let (code, json, _) = run(cmd);
    assert_eq!((code, json["writes"].as_u64(), json["reloads"].as_u64()), (0, Some(0), Some(0)), "{json}");

    // A used-up token is refused with nothing changed.
    let other = Node::start(false);
    let other_before = other.snapshot();
    let mut cmd = other.enroll_cmd();
    cmd.args(["enroll", "--ca", &server.url, "--token", &token, "--ca-fingerprint", &server.pin, "--name", "other"]);
    let (code, json, _) = run(cmd);
    assert_eq!(code, 5, "{json}");
    assert_untouched(&other, &other_before, "used-up token (real CA)");

    let mut cmd = node.enroll_cmd();
    cmd.arg("refresh");
    let (code, json, _) = run(cmd);
    assert_eq!(code, 0, "refresh: {json}\n{}", server.log());

    let mut cmd = node.enroll_cmd();
    cmd.arg("remove");
    let (code, json, _) = run(cmd);
    assert_eq!(code, 0, "remove: {json}\n{}", server.log());
    assert_untouched(&node, &before, "after remove (real CA)");
}

/// A node whose sshd listens only on one address that is not 127.0.0.1 (a management
/// address; here another loopback address, so no interface is needed): the verification
/// login goes where `sshd -T` says sshd listens, and the CA records that port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_listening_only_on_its_management_address_enrolls() {
    let server = portcullis_tests::Server::start().await;
    let admin = server.admin_token().await;
    let request = json!({ "ttl_seconds": 600, "uses": 1 });
    let (status, body) = server.post_json(Some(&admin), "/v1/admin/enroll-tokens", &request).await;
    assert!(status.is_success(), "{body}");
    let ip = portcullis_tests::bastion_world::loopback_ip();
    let node = Node::start_on(false, &ip, |_| {});
    let mut cmd = node.enroll_cmd();
    cmd.args(["enroll", "--ca", &server.url, "--ca-fingerprint", &server.pin, "--address", &ip]);
    cmd.args(["--token", body["token"].as_str().unwrap()]);
    let (code, json, out) = run(cmd);
    assert_eq!(code, 0, "enroll: {json}\n{}\n{}", String::from_utf8_lossy(&out.stderr), node.log());
    assert!(node.log().contains(&format!("on {ip} port {}", node.port)), "{}", node.log());
    assert!(node.ordinary_login_works());
    let (_, nodes) = server.get_json(Some(&admin), "/v1/admin/nodes").await;
    assert_eq!((&nodes[0]["addresses"][0], &nodes[0]["ssh_port"]), (&json!(ip), &json!(node.port)), "{nodes}");
}

/// Without `--address` the node reports its global addresses from `ip -j addr` and its
/// FQDN from `hostname -f` — here injected through `PORTCULLIS_ENROLL_IP_CMD` /
/// `PORTCULLIS_ENROLL_HOSTNAME_CMD`, since a `--root` node is not this machine. Detection
/// that fails never fails enrollment, and `--address` wins over detection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_reports_detected_addresses_and_never_fails_on_detection() {
    let ca = FakeCa::start().await;
    let sent = |ca: &FakeCa| ca.state.lock().unwrap().facts[NODE].addresses.clone();

    let node = Node::start(true);
    let ip_json = node.dir.path().join("ip-j-addr.json");
    std::fs::write(
        &ip_json,
        r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP"],"addr_info":[
              {"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"},
              {"family":"inet6","local":"::1","prefixlen":128,"scope":"host"}]},
            {"ifindex":2,"ifname":"vmbr0","flags":["BROADCAST","UP"],"addr_info":[
              {"family":"inet","local":"192.0.2.10","prefixlen":24,"scope":"global"},
              {"family":"inet","local":"169.254.7.7","prefixlen":16,"scope":"link"},
              {"family":"inet6","local":"2001:db8::10","prefixlen":64,"scope":"global"},
              {"family":"inet6","local":"2001:db8::beef","prefixlen":64,"scope":"global","temporary":true},
              {"family":"inet6","local":"fe80::10","prefixlen":64,"scope":"link"}]}]"#,
    )
    .unwrap();
    let mut cmd = enroll_cmd(&node, &ca, GOOD_TOKEN);
    cmd.env("PORTCULLIS_ENROLL_IP_CMD", format!("cat '{}'", ip_json.display()))
        .env("PORTCULLIS_ENROLL_HOSTNAME_CMD", format!("echo {NODE}.example.com"));
    let (code, json, out) = run(cmd);
    assert_eq!(code, 0, "{json}\n{}", String::from_utf8_lossy(&out.stderr));
    let want = [format!("{NODE}.example.com"), "192.0.2.10".into(), "2001:db8::10".into()];
    assert_eq!(sent(&ca), want, "what the CA received");
    assert_eq!(json["addresses"], serde_json::json!(want), "{json}");

    // Detection fails (garbage from `ip`, `hostname -f` fails): enrolled anyway, with no
    // addresses, and the progress output says so.
    let node = Node::start(false);
    let mut cmd = enroll_cmd(&node, &ca, GOOD_TOKEN);
    cmd.env("PORTCULLIS_ENROLL_IP_CMD", "echo '1: lo: <LOOPBACK,UP> mtu 65536'")
        .env("PORTCULLIS_ENROLL_HOSTNAME_CMD", "echo 'hostname: Name or service not known' >&2; exit 1");
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "detection failure must not fail enrollment: {stderr}");
    assert!(sent(&ca).is_empty(), "{:?}", sent(&ca));
    assert!(stderr.contains("[addresses] detection: `hostname -f` failed"), "{stderr}");
    assert!(stderr.contains("[addresses] detection: `ip -j addr` printed something else"), "{stderr}");
    assert!(stderr.contains("[addresses] none detected; registering none"), "{stderr}");
    assert!(node.ordinary_login_works());
    assert!(node.path("/etc/ssh/portcullis/state.json").exists(), "enrolled");

    // `--address` is taken as given; detection does not run.
    let node = Node::start(false);
    let mut cmd = enroll_cmd(&node, &ca, GOOD_TOKEN);
    cmd.args(["--address", "198.51.100.1"])
        .env("PORTCULLIS_ENROLL_IP_CMD", format!("cat '{}'", ip_json.display()))
        .env("PORTCULLIS_ENROLL_HOSTNAME_CMD", "echo should-not-be-used.example.com");
    let (code, json, _) = run(cmd);
    assert_eq!(code, 0, "{json}");
    assert_eq!(sent(&ca), ["198.51.100.1"]);
}
