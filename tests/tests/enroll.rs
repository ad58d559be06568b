//! `portcullis-enroll` end to end: a real sshd started from a `--root` node's own config,
//! a pinned HTTPS CA (the stand-in in `tests/src/enroll_ca.rs`), real `ssh` logins. Every
//! failure case proves zero lockout (the ordinary authorized-key login still works) and a
//! byte-identical node afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_sshcert::KrlBuilder;
use portcullis_tests::enroll_ca::{EXPIRED_TOKEN, FakeCa, GOOD_TOKEN, now, user_cert, write_key};
use portcullis_tests::enroll_node::{NODE, Node, assert_untouched, run, snapshot};
use serde_json::{Value, json};
use ssh_key::{Algorithm, PrivateKey};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

fn enroll_cmd(node: &Node, ca: &FakeCa, token: &str) -> Command {
    let mut cmd = node.enroll_cmd();
    cmd.args(["enroll", "--ca", &ca.url, "--token", token, "--ca-fingerprint", &ca.pin]);
    cmd
}

fn enroll(node: &Node, ca: &FakeCa) -> (i32, Value, Output) {
    run(enroll_cmd(node, ca, GOOD_TOKEN))
}

/// A user key and a CA certificate for it with the node's root principal.
fn user_with_cert(dir: &Path, ca: &FakeCa, principals: &[&str]) -> (PathBuf, PathBuf, PrivateKey) {
    let key =
        PrivateKey::random(&mut ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng), Algorithm::Ed25519).unwrap();
    let key_path = dir.join("id_cert_user");
    write_key(&key_path, &key);
    let cert = user_cert(&ca.user_ca(), key.public_key(), principals);
    let cert_path = dir.join("id_cert_user-cert.pub");
    std::fs::write(&cert_path, format!("{cert}\n")).unwrap();
    (key_path, cert_path, key)
}

/// A node enrolled with `ca`, and a user certificate whose root login works there.
fn enrolled_with_a_login(ca: &FakeCa) -> (Node, PathBuf, PathBuf, PrivateKey) {
    let node = Node::start(true);
    let (code, json, _) = enroll(&node, ca);
    assert_eq!(code, 0, "{json}");
    let (key, cert, user_key) = user_with_cert(node.dir.path(), ca, &["pc_admins_root"]);
    assert!(node.cert_login_works("root", &key, &cert));
    (node, key, cert, user_key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_refresh_remove_on_a_pve_shaped_node() {
    let ca = FakeCa::start().await;
    let node = Node::start(true);
    assert!(node.ordinary_login_works(), "fixture: the ordinary login must work before enrollment");
    let before = node.snapshot();
    let pve_before = snapshot(&node.path("/etc/pve"));
    let (key, cert, user_key) = user_with_cert(node.dir.path(), &ca, &["pc_admins_root"]);
    assert!(!node.cert_login_works("root", &key, &cert), "a CA certificate must not work before enrollment");

    let (code, json, out) = enroll(&node, &ca);
    assert_eq!(code, 0, "enroll failed: {json}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json["node"], NODE);
    assert_eq!(json["reloads"], 1);
    assert!(node.cert_login_works("root", &key, &cert), "a CA certificate for root must work after enrollment");
    assert!(node.ordinary_login_works(), "the ordinary login must survive enrollment");
    let principals = std::fs::read_to_string(node.path("/etc/ssh/portcullis/principals/root")).unwrap();
    assert_eq!(principals, "pc_admins_root\n", "the verification principal must be unstaged");
    assert!(!node.path("/etc/ssh/portcullis/journal.json").exists());
    assert_eq!(snapshot(&node.path("/etc/pve")), pve_before, "/etc/pve must stay byte-identical");
    assert_eq!(
        std::fs::read_link(node.path("/root/.ssh/authorized_keys")).unwrap(),
        node.path("/etc/pve/priv/authorized_keys")
    );
    let dropin = std::fs::read_to_string(node.path("/etc/ssh/sshd_config.d/60-portcullis.conf")).unwrap();
    assert_eq!(dropin.matches("HostCertificate").count(), 2, "one host certificate per host key: {dropin}");
    // The node now presents a host certificate the host CA vouches for.
    let kh = node.dir.path().join("known_hosts_ca");
    let host_ca = ca.state.lock().unwrap().host_ca.public_key().to_openssh().unwrap();
    std::fs::write(&kh, format!("@cert-authority [127.0.0.1]:{} {host_ca}\n", node.port)).unwrap();
    let host_cert_login = Command::new("ssh")
        .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", kh.display()))
        .arg("-i")
        .arg(&node.user_key)
        .args(["-p", &node.port.to_string(), "root@127.0.0.1", "true"])
        .output()
        .unwrap();
    assert!(host_cert_login.status.success(), "host certificate: {}", String::from_utf8_lossy(&host_cert_login.stderr));

    // Idempotent: nothing changed → zero writes, zero reloads, no token use.
    let enrolled = node.snapshot();
    let uses = ca.state.lock().unwrap().uses_left;
    let started = Instant::now();
    let (code, json, _) = enroll(&node, &ca);
    let rerun = started.elapsed();
    assert_eq!(code, 0, "{json}");
    assert_eq!((json["writes"].as_u64(), json["reloads"].as_u64()), (Some(0), Some(0)), "{json}");
    assert_eq!(json["summary"], "no changes");
    assert_eq!(node.snapshot(), enrolled);
    assert_eq!(ca.state.lock().unwrap().uses_left, uses, "a re-run must not spend a token use");
    eprintln!("idempotent re-run of enroll took {rerun:?}");
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.arg("refresh");
        c
    });
    assert_eq!((code, json["writes"].as_u64()), (0, Some(0)), "{json}");

    // --check shows a pending change without making it.
    ca.state.lock().unwrap().principals.insert("backup".into(), vec!["pc_backup".into()]);
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.args(["--check", "refresh"]);
        c
    });
    assert_eq!(code, 0, "{json}");
    assert!(json["changes"].to_string().contains("principals/backup"), "{json}");
    assert_eq!(node.snapshot(), enrolled, "--check must not change anything");

    // Refresh applies principals without a reload (sshd reads them per login).
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.arg("refresh");
        c
    });
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["reloads"], 0, "{json}");
    assert_eq!(std::fs::read_to_string(node.path("/etc/ssh/portcullis/principals/backup")).unwrap(), "pc_backup\n");

    // A revocation reaches the node through refresh.
    let mut krl = KrlBuilder::new(2, now(), "");
    krl.revoke_key_sha256(user_key.public_key().key_data());
    ca.state.lock().unwrap().krl = krl.encode();
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.arg("refresh");
        c
    });
    assert_eq!(code, 0, "{json}");
    assert!(!node.cert_login_works("root", &key, &cert), "a revoked key must be refused after refresh");

    // The CA is unreachable for refresh: exit 5, the KRL (and everything) stays.
    let revoked = node.snapshot();
    ca.state.lock().unwrap().fail_refresh = true;
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.arg("refresh");
        c
    });
    assert_eq!(code, 5, "{json}");
    assert_untouched(&node, &revoked, "refresh with the CA failing");
    assert!(!node.cert_login_works("root", &key, &cert), "the old KRL must stay in force");
    ca.state.lock().unwrap().fail_refresh = false;

    // Status.
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.arg("status");
        c
    });
    assert_eq!((code, &json["enrolled"], &json["active"]), (0, &Value::Bool(true), &Value::Bool(true)), "{json}");

    // Remove: byte-identical to before enrollment, and deregistered.
    let (code, json, out) = run({
        let mut c = node.enroll_cmd();
        c.arg("remove");
        c
    });
    assert_eq!(code, 0, "remove: {json}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_untouched(&node, &before, "after remove");
    assert_eq!(ca.state.lock().unwrap().deregistered, vec![NODE.to_owned()]);
    let (_, cert2_path, _) = user_with_cert(node.dir.path(), &ca, &["pc_admins_root"]);
    assert!(!node.cert_login_works("root", &node.dir.path().join("id_cert_user"), &cert2_path));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_before_any_change() {
    let ca = FakeCa::start().await;

    // An earlier drop-in already sets TrustedUserCAKeys: sshd would ignore ours.
    let node = Node::start_with(false, |root| {
        std::fs::write(root.join("etc/ssh/sshd_config.d/50-other.conf"), "TrustedUserCAKeys /etc/ssh/other_ca.pub\n")
            .unwrap();
    });
    let before = node.snapshot();
    let (code, json, _) = enroll(&node, &ca);
    assert_eq!(code, 3, "{json}");
    assert!(json["error"]["message"].as_str().unwrap().contains("50-other.conf:1"), "{json}");
    assert_untouched(&node, &before, "conflicting earlier drop-in");
    assert_eq!(ca.state.lock().unwrap().uses_left, 100, "preflight refuses before the token is used");

    // Debian's /etc/default/ssh puts RevokedKeys on sshd's command line: it would win
    // over the drop-in and `sshd -T -f` would not show it.
    let node = Node::start_with(false, |root| {
        std::fs::create_dir_all(root.join("etc/default")).unwrap();
        std::fs::write(root.join("etc/default/ssh"), "SSHD_OPTS=\"-o RevokedKeys=/etc/ssh/other.krl\"\n").unwrap();
    });
    let before = node.snapshot();
    let (code, json, _) = enroll(&node, &ca);
    assert_eq!(code, 3, "{json}");
    assert!(json["error"]["message"].as_str().unwrap().contains("SSHD_OPTS"), "{json}");
    assert_untouched(&node, &before, "a command-line override");

    // The main config does not include sshd_config.d.
    let node = Node::start_with(false, |root| {
        let p = root.join("etc/ssh/sshd_config");
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.lines().filter(|l| !l.starts_with("Include")).collect::<Vec<_>>().join("\n")).unwrap();
    });
    let before = node.snapshot();
    let (code, json, _) = enroll(&node, &ca);
    assert_eq!(code, 3, "{json}");
    assert_untouched(&node, &before, "no Include");

    // Token expired, used up, wrong CA fingerprint: refused before any change.
    let node = Node::start(true);
    let before = node.snapshot();
    let (code, json, _) = run(enroll_cmd(&node, &ca, EXPIRED_TOKEN));
    assert_eq!(code, 5, "{json}");
    assert!(json["error"]["message"].as_str().unwrap().contains("expired"), "{json}");
    assert_untouched(&node, &before, "expired token");

    ca.state.lock().unwrap().uses_left = 0;
    let (code, json, _) = enroll(&node, &ca);
    assert_eq!(code, 5, "{json}");
    assert_untouched(&node, &before, "used-up token");
    ca.state.lock().unwrap().uses_left = 100;

    let other_pin = portcullis_proto::pin::pin_of_spki(b"not the CA's key");
    let mut cmd = node.enroll_cmd();
    cmd.args(["enroll", "--ca", &ca.url, "--token", GOOD_TOKEN, "--ca-fingerprint", &other_pin]);
    let (code, json, _) = run(cmd);
    assert_eq!(code, 5, "{json}");
    assert!(json["error"]["message"].as_str().unwrap().contains("fingerprint"), "{json}");
    assert_untouched(&node, &before, "wrong CA fingerprint");
    assert_eq!(ca.state.lock().unwrap().uses_left, 100, "a wrong pin never reaches the CA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_during_the_change_roll_back() {
    let ca = FakeCa::start().await;
    let node = Node::start(true);
    let before = node.snapshot();

    // The verification login fails (certificate from a key the node does not trust).
    ca.state.lock().unwrap().bad_verification_cert = true;
    let (code, json, _) = enroll(&node, &ca);
    assert_eq!(code, 4, "{json}");
    assert!(json["error"]["message"].as_str().unwrap().contains("verification login"), "{json}");
    assert_untouched(&node, &before, "verification login fails");
    ca.state.lock().unwrap().bad_verification_cert = false;

    // `sshd -t` rejects the new configuration (an sshd that refuses once our drop-in exists).
    let wrapper = node.dir.path().join("sshd-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = -t ] && [ -e '{}' ]; then echo 'bad configuration option' >&2; exit 255; fi\nexec /usr/sbin/sshd \"$@\"\n",
            node.path("/etc/ssh/sshd_config.d/60-portcullis.conf").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cmd = enroll_cmd(&node, &ca, GOOD_TOKEN);
    cmd.arg("--sshd").arg(&wrapper);
    let (code, json, _) = run(cmd);
    assert_eq!(code, 4, "{json}");
    assert!(json["error"]["message"].as_str().unwrap().contains("sshd -t"), "{json}");
    assert_untouched(&node, &before, "sshd -t fails");

    // Write failures (a full disk or read-only target) at different files.
    for file in ["revoked.krl", "60-portcullis.conf", "state.json"] {
        let mut cmd = enroll_cmd(&node, &ca, GOOD_TOKEN);
        cmd.env("PORTCULLIS_ENROLL_FAILPOINT", format!("write:{file}"));
        let (code, json, _) = run(cmd);
        assert_eq!(code, 4, "write failure at {file}: {json}");
        assert_untouched(&node, &before, &format!("write failure at {file}"));
    }

    // An error right after each step: rolled back in-process.
    for step in ["stage", "activate", "test", "reload", "verify", "commit"] {
        let mut cmd = enroll_cmd(&node, &ca, GOOD_TOKEN);
        cmd.env("PORTCULLIS_ENROLL_FAILPOINT", format!("{step}:error"));
        let (code, json, _) = run(cmd);
        assert_eq!(code, 4, "error after {step}: {json}");
        assert_untouched(&node, &before, &format!("error after {step}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_steps_never_locks_out_and_the_next_run_recovers() {
    let ca = FakeCa::start().await;
    let node = Node::start(true);
    let before = node.snapshot();
    for step in ["stage", "activate", "test", "reload", "verify", "commit"] {
        let mut cmd = enroll_cmd(&node, &ca, GOOD_TOKEN);
        cmd.env("PORTCULLIS_ENROLL_FAILPOINT", step);
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(99), "kill after {step}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(node.ordinary_login_works(), "killed after {step}: the ordinary key login must still work");
        assert!(node.path("/etc/ssh/portcullis/journal.json").exists(), "killed after {step}: the journal stays");
        // Any later command finishes the rollback first; `remove` then has nothing to do.
        let (code, json, _) = run({
            let mut c = node.enroll_cmd();
            c.arg("remove");
            c
        });
        assert_eq!(code, 0, "recovery after {step}: {json}");
        assert_untouched(&node, &before, &format!("recovered after a kill after {step}"));
    }
    // And a clean run then enrolls.
    let (code, json, _) = enroll(&node, &ca);
    assert_eq!(code, 0, "{json}");
    assert!(node.ordinary_login_works());
}

/// Killed after the drop-in is written and checked but before the tool's own reload —
/// and then sshd is restarted with the changed files anyway (the machine rebooted, a
/// package upgrade restarted it): the next run must undo it with a reload before
/// deleting the files the running sshd now names. (It deleted them without one, since
/// the dead run had not reloaded, and the running sshd, naming a missing KRL, refused
/// every key — the ordinary login too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_an_interrupted_run_never_locks_out() {
    let ca = FakeCa::start().await;
    let node = Node::start(true);
    let before = node.snapshot();
    let mut cmd = enroll_cmd(&node, &ca, GOOD_TOKEN);
    cmd.env("PORTCULLIS_ENROLL_FAILPOINT", "test");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(99), "{}", String::from_utf8_lossy(&out.stderr));
    // The restart: sshd loads the configuration the dead run left.
    node.reload_and_wait();
    assert!(node.ordinary_login_works(), "fixture: the restarted sshd runs with the drop-in");
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.arg("remove");
        c
    });
    assert_eq!(code, 0, "recovery: {json}");
    assert!(node.ordinary_login_works(), "the original login after the recovery");
    assert_untouched(&node, &before, "recovered after a kill and a restart");
}

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

/// A host certificate for the node's ed25519 key, signed by the CA's host key but with
/// little of its lifetime left, so the next refresh replaces it (and must reload sshd).
fn near_expiry_host_cert(node: &Node, ca: &FakeCa) -> String {
    use ssh_key::certificate::{Builder, CertType};
    let line = std::fs::read_to_string(node.path("/etc/ssh/ssh_host_ed25519_key.pub")).unwrap();
    let key = ssh_key::PublicKey::from_openssh(line.trim()).unwrap();
    let n = now();
    let mut b = Builder::new([5u8; 32], key.key_data().clone(), n - 3600, n + 600).unwrap();
    b.serial(4).unwrap();
    b.key_id(format!("host:{NODE}")).unwrap();
    b.cert_type(CertType::Host).unwrap();
    b.valid_principal(NODE).unwrap();
    format!("{}\n", b.sign(&ca.state.lock().unwrap().host_ca).unwrap().to_openssh().unwrap())
}

/// The paths (relative to the node's root) whose entries differ between two snapshots.
fn changed(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter().filter(|k| before.get(*k) != after.get(*k)).cloned().collect()
}

fn has_step(json: &Value, step: &str) -> bool {
    json["steps"].as_array().unwrap().iter().any(|s| s["step"] == step)
}

/// A refresh commits the trust files sshd reads at every login (KRL first, CA keys,
/// principals) on their own, then checks the reload-requiring change (drop-in, host
/// certificates) with `sshd -t` and `sshd -T` before the reload. A failing check rolls
/// back only that change: the new revocation is in force regardless, the drop-in and
/// host certificates are byte-identical to before, and the ordinary login works. Crashes
/// between and inside the two phases leave a consistent node that the next run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_that_touches_sshd_is_validated_and_rolled_back() {
    let ca = FakeCa::start().await;
    let (node, key, cert, user_key) = enrolled_with_a_login(&ca);

    // Someone edited the drop-in, and a host certificate is close to expiry: the next
    // refresh rewrites both, which needs a reload.
    let drop_in = node.path("/etc/ssh/sshd_config.d/60-portcullis.conf");
    let host_cert = node.path("/etc/ssh/portcullis/ssh_host_ed25519_key-cert.pub");
    let krl_path = node.path("/etc/ssh/portcullis/revoked.krl");
    let backup = node.path("/etc/ssh/portcullis/principals/backup");
    let mut text = std::fs::read_to_string(&drop_in).unwrap();
    text.push_str("# edited by hand\n");
    std::fs::write(&drop_in, text).unwrap();
    std::fs::write(&host_cert, near_expiry_host_cert(&node, &ca)).unwrap();
    // The same refresh brings a revocation and a new login's principals.
    let mut krl = KrlBuilder::new(3, now(), "");
    krl.revoke_key_sha256(user_key.public_key().key_data());
    let new_krl = krl.encode();
    ca.state.lock().unwrap().krl = new_krl.clone();
    ca.state.lock().unwrap().principals.insert("backup".into(), vec!["pc_backup".into()]);
    let before = node.snapshot();
    let drop_in_before = std::fs::read(&drop_in).unwrap();
    let host_cert_before = std::fs::read(&host_cert).unwrap();

    let wrapper = |name: &str, script: String| {
        let path = node.dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}exec /usr/sbin/sshd \"$@\"\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        path
    };
    let refresh_cmd = |sshd: &Path| {
        let mut c = node.enroll_cmd();
        c.arg("--sshd").arg(sshd).arg("refresh");
        c
    };
    let refresh_with_sshd = |sshd: &Path| run(refresh_cmd(sshd));
    // A kill right after `step` (exit 99, no cleanup, no JSON result).
    let refresh_killed_after = |step: &str| {
        let out = refresh_cmd(Path::new("/usr/sbin/sshd")).env("PORTCULLIS_ENROLL_FAILPOINT", step).output().unwrap();
        assert_eq!(out.status.code(), Some(99), "kill after {step}: {}", String::from_utf8_lossy(&out.stderr));
    };
    // `sshd -t` rejects the refreshed configuration (the hand-edited one still passes,
    // so the rollback can reload) — a persistent problem unrelated to revocations.
    let rejects = wrapper(
        "sshd-rejects",
        format!(
            "if [ \"$1\" = -t ] && ! grep -q 'edited by hand' '{}'; then echo 'bad configuration' >&2; exit 255; fi\n",
            drop_in.display()
        ),
    );
    let (code, json, _) = refresh_with_sshd(&rejects);
    assert_eq!(code, 4, "the failure is still reported: {json}");
    assert_eq!(json["error"]["code"], "sshd_change_rolled_back", "{json}");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("sshd -t") && message.contains("revocations"), "{json}");
    assert_eq!((&json["trust_files"], &json["sshd_change"]), (&json!("applied"), &json!("rolled_back")), "{json}");
    assert!(has_step(&json, "apply") && has_step(&json, "activate"), "{json}");
    assert!(!has_step(&json, "reload"), "the rejected configuration is never loaded: {json}");
    let after = node.snapshot();
    assert_eq!(
        changed(&before, &after),
        ["etc/ssh/portcullis/principals/backup", "etc/ssh/portcullis/revoked.krl", "etc/ssh/portcullis/state.json"],
        "only the trust files (and the state recording the new one) changed"
    );
    assert_eq!(std::fs::read(&krl_path).unwrap(), new_krl, "the new KRL is committed");
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), "pc_backup\n", "the new principals are committed");
    assert_eq!(std::fs::read(&drop_in).unwrap(), drop_in_before, "the drop-in is byte-identical");
    assert_eq!(std::fs::read(&host_cert).unwrap(), host_cert_before, "the host certificate is byte-identical");
    assert!(!node.path("/etc/ssh/portcullis/journal.json").exists());
    assert!(!node.cert_login_works("root", &key, &cert), "the new revocation is in force despite the sshd failure");
    let other = node.dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (key2, cert2, _) = user_with_cert(&other, &ca, &["pc_admins_root"]);
    assert!(node.cert_login_works("root", &key2, &cert2), "an unrevoked certificate still logs in");
    assert!(node.ordinary_login_works());

    // `sshd -T` does not show our RevokedKeys (something overrides it). The trust files
    // are current now, so only the sshd change is tried, and it goes back.
    let hides = wrapper(
        "sshd-hides-krl",
        "if [ \"$1\" = -T ]; then /usr/sbin/sshd \"$@\" | grep -v '^revokedkeys '; exit 0; fi\n".into(),
    );
    let (code, json, _) = refresh_with_sshd(&hides);
    assert_eq!(code, 4, "{json}");
    assert_eq!(json["error"]["code"], "rolled_back", "{json}");
    assert!(json["error"]["message"].as_str().unwrap().contains("sshd -T shows revokedkeys"), "{json}");
    assert_eq!((&json["trust_files"], &json["sshd_change"]), (&json!("unchanged"), &json!("rolled_back")), "{json}");
    assert_untouched(&node, &after, "refresh whose sshd -T lacks our values");

    // Killed between the phases: no journal, the new principals committed, the sshd
    // files as they were.
    ca.state.lock().unwrap().principals.insert("backup".into(), vec!["pc_backup2".into()]);
    refresh_killed_after("apply");
    assert!(!node.path("/etc/ssh/portcullis/journal.json").exists(), "phase 1 committed");
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), "pc_backup2\n");
    assert_eq!(std::fs::read(&drop_in).unwrap(), drop_in_before);
    assert_eq!(std::fs::read(&host_cert).unwrap(), host_cert_before);
    assert!(node.ordinary_login_works());
    let between = node.snapshot();

    // Killed inside phase 2 (checked, not yet reloaded): the journal holds only the sshd
    // files, so the next run restores those and keeps the trust files.
    refresh_killed_after("test");
    assert!(node.path("/etc/ssh/portcullis/journal.json").exists());
    assert!(node.ordinary_login_works());
    let (code, json, _) = refresh_with_sshd(&hides);
    assert_eq!(code, 4, "{json}");
    assert!(has_step(&json, "recover"), "{json}");
    assert_untouched(&node, &between, "recovered from a kill inside the sshd phase");
    assert!(!node.cert_login_works("root", &key, &cert), "the revocation stays in force");

    // With a sound sshd the same refresh goes through: one reload, both files replaced.
    let (code, json, _) = refresh_with_sshd(Path::new("/usr/sbin/sshd"));
    assert_eq!((code, json["reloads"].as_u64()), (0, Some(1)), "{json}");
    assert_eq!((&json["trust_files"], &json["sshd_change"]), (&json!("unchanged"), &json!("applied")), "{json}");
    let steps = json["steps"].to_string();
    assert!(steps.contains("sshd -t") && steps.contains("sshd -T shows"), "{json}");
    assert!(!std::fs::read_to_string(&drop_in).unwrap().contains("edited by hand"));
    assert_ne!(std::fs::read(&host_cert).unwrap(), host_cert_before, "the near-expiry host certificate is replaced");
    assert!(!node.cert_login_works("root", &key, &cert), "the revocation applies");
    assert!(node.cert_login_works("root", &key2, &cert2));
    assert!(node.ordinary_login_works());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_with_discovery_installs_the_forced_command_and_sudoers_and_remove_takes_them_away() {
    use std::os::unix::fs::PermissionsExt;
    let ca = FakeCa::start().await;
    let node = Node::start(true);
    let before = node.snapshot();
    let mut cmd = enroll_cmd(&node, &ca, GOOD_TOKEN);
    cmd.arg("--discovery");
    let (code, json, out) = run(cmd);
    assert_eq!(code, 0, "enroll --discovery failed: {json}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(has_step(&json, "discovery"), "{json}");
    let script = node.path("/usr/local/libexec/portcullis-discovery");
    let sudoers = node.path("/etc/sudoers.d/portcullis-discovery");
    assert_eq!(std::fs::read_to_string(&script).unwrap(), include_str!("../../discovery/node/portcullis-discovery.sh"));
    assert_eq!(std::fs::metadata(&script).unwrap().permissions().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read_to_string(&sudoers).unwrap(), include_str!("../../discovery/node/sudoers"));
    assert_eq!(std::fs::metadata(&sudoers).unwrap().permissions().mode() & 0o7777, 0o440);
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(node.path("/etc/ssh/portcullis/state.json")).unwrap()).unwrap();
    assert_eq!(state["discovery"], true, "{state}");
    assert!(node.ordinary_login_works());

    // A refresh keeps them (they are managed, not leftovers).
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.arg("refresh");
        c
    });
    assert_eq!((code, json["writes"].as_u64()), (0, Some(0)), "{json}");
    assert!(script.exists() && sudoers.exists());

    // A tampered script is put back by the next refresh.
    std::fs::write(&script, "#!/bin/sh\nexec /bin/sh\n").unwrap();
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.arg("refresh");
        c
    });
    assert_eq!(code, 0, "{json}");
    assert_eq!(std::fs::read_to_string(&script).unwrap(), include_str!("../../discovery/node/portcullis-discovery.sh"));

    // remove: every file as it was (the script, the drop-in and the directories gone).
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.arg("remove");
        c
    });
    assert_eq!(code, 0, "{json}");
    assert!(!script.exists() && !sudoers.exists());
    assert_eq!(node.snapshot(), before, "remove restores the node byte for byte");
}

/// Run by an operator whose umask is 077, enrollment still leaves its directories 0755:
/// sshd reads a login's principals file as that user, so a 0700 directory would refuse
/// every certificate login but root's (and the verification logs in only as root). The
/// files inside keep their own modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_umask_leaves_the_principals_readable_by_every_login() {
    use std::os::unix::fs::PermissionsExt;
    let ca = FakeCa::start().await;
    let node = Node::start(false);
    let inner = enroll_cmd(&node, &ca, GOOD_TOKEN);
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "umask 077; exec \"$@\"", "sh"]).arg(inner.get_program()).args(inner.get_args());
    cmd.env_remove("PORTCULLIS_ENROLL_FAILPOINT").stdin(std::process::Stdio::null());
    let (code, json, out) = run(cmd);
    assert_eq!(code, 0, "enroll failed: {json}\n{}", String::from_utf8_lossy(&out.stderr));
    let mode = |p: &str| std::fs::metadata(node.path(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("/etc/ssh/portcullis"), 0o755);
    assert_eq!(mode("/etc/ssh/portcullis/principals"), 0o755);
    assert_eq!(mode("/etc/ssh/portcullis/principals/root"), 0o644);
}

/// A host key regenerated after enrollment (an operator's `ssh-keygen -A`, a restored
/// image) is not the key the CA certifies: the refresh leaves it without a certificate
/// and says why, instead of installing the old key's certificate for it — and the new
/// revocations still apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regenerated_host_key_gets_no_other_keys_certificate_and_revocations_still_apply() {
    let ca = FakeCa::start().await;
    let (node, key, cert, user_key) = enrolled_with_a_login(&ca);
    let ecdsa_cert = node.path("/etc/ssh/portcullis/ssh_host_ecdsa_key-cert.pub");
    let ed25519_cert = node.path("/etc/ssh/portcullis/ssh_host_ed25519_key-cert.pub");
    assert!(ecdsa_cert.exists() && ed25519_cert.exists());

    let ecdsa = node.path("/etc/ssh/ssh_host_ecdsa_key");
    std::fs::remove_file(&ecdsa).unwrap();
    std::fs::remove_file(format!("{}.pub", ecdsa.display())).unwrap();
    let made = Command::new("ssh-keygen").args(["-q", "-t", "ecdsa", "-N", "", "-C", "", "-f"]).arg(&ecdsa).status();
    assert!(made.unwrap().success());
    let mut krl = KrlBuilder::new(3, now(), "");
    krl.revoke_key_sha256(user_key.public_key().key_data());
    ca.state.lock().unwrap().krl = krl.encode();

    let mut refresh = node.enroll_cmd();
    refresh.arg("refresh");
    let (code, json, _) = run(refresh);
    assert_eq!(code, 0, "{json}");
    let said = json["steps"].as_array().unwrap().iter().find(|s| s["step"] == "host key").map(|s| s["detail"].clone());
    let said = said.unwrap_or_default().to_string();
    assert!(said.contains("ssh_host_ecdsa_key") && said.contains("enroll"), "{json}");
    assert!(!ecdsa_cert.exists(), "the old key's certificate is not kept for the new key");
    let drop_in = std::fs::read_to_string(node.path("/etc/ssh/sshd_config.d/60-portcullis.conf")).unwrap();
    assert!(!drop_in.contains("ecdsa") && drop_in.contains(&ed25519_cert.display().to_string()), "{drop_in}");
    assert!(!node.cert_login_works("root", &key, &cert), "the revocation applies");
    assert!(node.ordinary_login_works());
}

/// A bundle the tool refuses for something other than its KRL — here a principal it
/// cannot write (a CA newer than the node could send one) — still brings its
/// revocations: the KRL goes in on its own, the other files stay as they were, and the
/// refresh reports the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_bundle_still_brings_its_revocations() {
    let ca = FakeCa::start().await;
    let (node, key, cert, user_key) = enrolled_with_a_login(&ca);
    let principals = node.path("/etc/ssh/portcullis/principals/root");
    let before = std::fs::read_to_string(&principals).unwrap();
    {
        let mut state = ca.state.lock().unwrap();
        state.principals.insert("root".into(), vec!["pc_admins_root".into(), "not one word".into()]);
        let mut krl = KrlBuilder::new(7, now(), "");
        krl.revoke_key_sha256(user_key.public_key().key_data());
        state.krl = krl.encode();
    }
    let mut refresh = node.enroll_cmd();
    refresh.arg("refresh");
    let (code, json, _) = run(refresh);
    assert_ne!(code, 0, "the bundle was refused: {json}");
    assert!(json.to_string().contains("installed on its own"), "{json}");
    assert!(!node.cert_login_works("root", &key, &cert), "the revocation applies");
    assert_eq!(std::fs::read_to_string(&principals).unwrap(), before, "the principals stay as they were");
    assert!(node.ordinary_login_works());
}

/// A stage or principals directory that exists already with a closed mode (made by an
/// image, configuration management or an older run under umask 077) is opened to 0755
/// by the next enroll or refresh: sshd reads the principals as the user logging in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_directories_from_before_are_opened_for_every_login() {
    use std::os::unix::fs::PermissionsExt;
    let ca = FakeCa::start().await;
    let node = Node::start(false);
    let mode = |p: &str| std::fs::metadata(node.path(p)).unwrap().permissions().mode() & 0o777;
    let close = |p: &str| std::fs::set_permissions(node.path(p), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::create_dir_all(node.path("/etc/ssh/portcullis")).unwrap();
    close("/etc/ssh/portcullis");
    let (code, json, _) = enroll(&node, &ca);
    assert_eq!(code, 0, "{json}");
    assert_eq!(mode("/etc/ssh/portcullis"), 0o755, "{json}");

    close("/etc/ssh/portcullis/principals");
    let mut refresh = node.enroll_cmd();
    refresh.arg("refresh");
    let (code, json, _) = run(refresh);
    assert_eq!(code, 0, "{json}");
    assert_eq!(mode("/etc/ssh/portcullis/principals"), 0o755, "{json}");
}
