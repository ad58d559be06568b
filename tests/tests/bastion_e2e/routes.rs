//! Where sessions go and on what terms: the CLI's ssh config, other ports, forced commands, security keys.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_an_ssh_config_that_works_in_both_modes() {
    let w = World::start("15m").await;
    let home = tempfile::tempdir().unwrap();
    let cli = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(portcullis_tests::bin("portcullis"))
            .args(args)
            .env("HOME", home.path())
            .env_remove("SSH_AUTH_SOCK")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "portcullis {args:?}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let password = format!("{}\n", portcullis_tests::bastion_world::PASSWORD);
    cli(
        &["login", "--ca", &w.server.url, "--ca-fingerprint", &w.server.pin, "--user", "alice", "--password-stdin"],
        &password,
    );
    let bastion = w.server.bastion.to_string();
    let config = cli(&["ssh-config", "--bastion", &bastion, "--hosts", &w.node.ip], "");
    // The bastion is pinned from the CA: strict host key checking, no trust on first use.
    // (This test node was added by the harness, not enrolled, so it has no host
    // certificate for the `@cert-authority` line to vouch for: its key is accepted here.)
    let node_block = format!("Host {}\n    StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n", w.node.ip);
    let config =
        format!("{node_block}{config}Host *\n    BatchMode yes\n    StrictHostKeyChecking yes\n    LogLevel ERROR\n");
    let path = write_file(w.dir.path(), "cli_ssh_config", &config);
    let ssh = |args: &[&str]| {
        std::process::Command::new("ssh").arg("-F").arg(&path).args(args).env("HOME", home.path()).output().unwrap()
    };
    let out = ssh(&["root%pve01@portcullis", "echo terminated"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "terminated", "{config}\n{}", text(&out));
    let out = ssh(&[&format!("root@{}", w.node.ip), "echo jumped"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "jumped", "{config}\n{}", text(&out));

    // What the file holds: the CA's host CA keys as `@cert-authority`, and the bastion's
    // key at the address given, exactly as the CA and the server's banner say.
    let known_hosts = std::fs::read_to_string(home.path().join(".ssh/portcullis/known_hosts")).unwrap();
    let host_cas = w.server.get_text(None, "/v1/ca/host/keys").await.1;
    for line in host_cas.lines() {
        assert!(known_hosts.contains(&format!("@cert-authority * {line}")), "{known_hosts}");
    }
    let pinned = format!("[{}]:{} ssh-ed25519 ", w.server.bastion.ip(), w.server.bastion.port());
    assert_eq!(known_hosts.matches(&pinned).count(), 1, "{known_hosts}");
    assert!(config.contains(&w.server.bastion_fingerprint()), "the fingerprint is shown: {config}");

    // Negative control: another key pinned for the bastion address, and the login stops.
    let imposter = public_line(&ed25519_key());
    let replaced: String = known_hosts
        .lines()
        .map(|l| {
            if l.starts_with(&pinned) {
                format!("{} {imposter}\n", pinned.trim_end_matches(" ssh-ed25519 "))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(home.path().join(".ssh/portcullis/known_hosts"), replaced).unwrap();
    let out = ssh(&["root%pve01@portcullis", "echo terminated"]);
    assert!(!out.status.success(), "a wrong pinned key must stop the login: {}", text(&out));
    assert!(text(&out).contains("Host key verification failed"), "{}", text(&out));
}

/// A node whose sshd listens on another port than 22: the inventory's `ssh_port` is
/// where terminated mode dials and the one port jump mode opens by default (a rule
/// without `allowed_ports` means the node's SSH port, not 22).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_another_ssh_port_is_reached_there_and_only_there() {
    let w = World::start("15m").await;
    // The rule names no ports: each node's own SSH port.
    let without_ports = policy("15m").replace("allowed_ports = [22, 2200]\n", "");
    assert_ne!(without_ports, policy("15m"));
    let (status, body) = w.server.write_policy("prod.toml", &without_ports).await;
    assert!(status.is_success(), "{body}");
    let ip = loopback_ip();
    let node = NewNode { ssh_port: Some(2222), ..NewNode::at("pve02", &ip) };
    let pve02 = add_node_with(&w.server, &w.admin, node).await;
    w.add_host("terminated-2222", "root%pve02");
    w.add_jump_host("jump-2222", &ip, 2222);
    w.add_jump_host("jump-22", &ip, 22);

    let out = w.run("ssh", &["terminated-2222", "echo on-2222"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "on-2222", "{}\n{}", text(&out), w.server.log());
    assert!(pve02.log().contains("ID session:"), "{}", pve02.log());
    let out = w.run("ssh", &["jump-2222", "echo jumped-2222"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "jumped-2222", "{}", text(&out));

    // Port 22 of the same node is not its SSH port: the CA refuses it, whatever listens.
    let out = w.run("ssh", &["jump-22", "echo never"]);
    assert!(!out.status.success(), "{}", text(&out));
    let denied = w.server.audit_events("session_denied").await;
    assert!(
        denied.iter().any(|r| r.payload["device"] == ip.as_str() && r.payload["reason"] == "port_not_allowed"),
        "{denied:?}"
    );
}

/// A certificate that forces a command (here because one of the user's two roles
/// does) serves jump mode only, where the node's sshd runs that command: terminated
/// mode cannot carry the option onto its per-session certificate, so it refuses rather
/// than run a shell the certificate does not allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_with_a_forced_command_is_refused_in_terminated_mode_and_forced_in_jump_mode() {
    let w = World::start("15m").await;
    let out = w.run("ssh", &["bastion", "echo shell"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "shell", "control: {}", text(&out));

    let forced = format!(
        "{}\n[[role]]\nname = \"prod-forced\"\nlogins = [\"root\"]\ntargets = 'in:devices tags.env:prod'\n\
         permissions = [\"certs.issue\"]\ncritical_options = {{ \"force-command\" = \"echo forced-only\" }}\n\n\
         [[binding]]\ngroup = \"ops\"\nroles = [\"prod-forced\"]\n",
        policy("15m")
    );
    let (status, body) = w.server.write_policy("prod.toml", &forced).await;
    assert!(status.is_success(), "{body}");
    // alice asks for both roles: the certificate carries the forced command and the
    // principal of the role without one.
    let token = w.server.login("alice", portcullis_tests::bastion_world::PASSWORD).await;
    let public = std::fs::read_to_string(w.dir.path().join("id.pub")).unwrap();
    let request = json!({ "public_key": public.trim(), "roles": ["prod-root", "prod-forced"] });
    let (status, body) = w.server.post_json(Some(&token), "/v1/certs/user", &request).await;
    assert!(status.is_success(), "{body}");
    let cert = write_file(w.dir.path(), "id-cert.pub", body["certificate"].as_str().unwrap());
    let listing = std::process::Command::new("ssh-keygen").arg("-Lf").arg(&cert).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert!(listing.contains("force-command echo forced-only") && listing.contains("_root"), "{listing}");

    // (ssh prints a refused channel's reason at INFO.)
    let out = w.run("ssh", &["-o", "LogLevel=INFO", "bastion", "echo shell"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use jump mode"), "{}", text(&out));
    let out = w.run("ssh", &["node", "echo shell"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "forced-only", "{}", text(&out));
}

/// What a command run through the bastion in terminated mode showed (stdout, stderr),
/// logging in as `user` with a security key (`key`, signing with its `flags`) and its
/// certificate; `None` when the bastion refused the login.
async fn run_with_security_key(
    w: &World,
    user: &str,
    certificate: &str,
    key: &mut portcullis_tests::ssh::SoftSecurityKey,
    command: &str,
) -> Option<(String, String)> {
    use russh::ChannelMsg;
    let cert = ssh_key::Certificate::from_openssh(certificate.trim()).unwrap();
    let config = std::sync::Arc::new(russh::client::Config::default());
    let mut conn = russh::client::connect(config, w.server.bastion, portcullis_tests::ssh::TrustAnyHost).await.unwrap();
    if !conn.authenticate_certificate_with(user, cert, None, key).await.unwrap().success() {
        return None;
    }
    let mut channel = conn.channel_open_session().await.unwrap();
    channel.exec(true, command).await.unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => out.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, .. } => err.extend_from_slice(&data),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    Some((String::from_utf8_lossy(&out).into_owned(), String::from_utf8_lossy(&err).into_owned()))
}

/// A role that asks for the security key's PIN (`verify-required`) gets terminated-mode
/// sessions (until 2026-12-05 jump mode only, so under a recorded rule — which refuses
/// jump mode — such a role could not connect at all): the onward certificate cannot
/// carry the option to the node, so the bastion checks the PIN at login and the CA on
/// the user's proof of the connection. A client signing as a security key runs a
/// command on the real node's sshd with touch and PIN, under a recorded rule; without
/// the PIN it gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_role_gets_terminated_sessions_against_a_verified_proof() {
    use portcullis_tests::bastion_world::PASSWORD;
    use portcullis_tests::ssh::SoftSecurityKey;
    let w = World::start("15m").await;
    let pin_and_recorded = policy("15m")
        .replace(
            "extensions = [\"permit-pty\"]\n",
            "extensions = [\"permit-pty\"]\ncritical_options = { \"verify-required\" = \"\" }\n",
        )
        .replace("allowed_ports = [22, 2200]\n", "allowed_ports = [22, 2200]\nrecord = true\n");
    let (status, body) = w.server.write_policy("prod.toml", &pin_and_recorded).await;
    assert!(status.is_success(), "{body}");
    let token = w.server.login("alice", PASSWORD).await;
    let mut key = SoftSecurityKey::new(SoftSecurityKey::TOUCH | SoftSecurityKey::VERIFIED);
    let (status, body) = w.server.issue_cert(&token, &key.public_key().to_openssh().unwrap()).await;
    assert!(status.is_success(), "{body}");
    let cert = body["certificate"].as_str().unwrap().to_owned();

    let ran = run_with_security_key(&w, "root%pve01", &cert, &mut key, "echo verified-$((6*7))").await;
    let (out, err) = ran.expect("touch and PIN: logged in");
    assert!(out.contains("verified-42"), "stdout {out:?}, stderr {err:?}\n{}", w.server.log());
    assert!(err.contains("this session is recorded"), "stderr {err:?}");
    let opened = w.server.audit_events("session_opened").await;
    assert!(opened.iter().any(|e| e.payload["mode"] == "terminated" && e.payload["recorded"] == true), "{opened:?}");

    key.flags = SoftSecurityKey::TOUCH;
    assert_eq!(run_with_security_key(&w, "root%pve01", &cert, &mut key, "true").await, None, "no PIN, no login");
}

/// `trust_on_first_use`: a node added by hand with no host key pinned is reached, and
/// the key it answered with is pinned at the CA from that first login (audited); a
/// machine answering at that address later with another key is refused as a host-key
/// mismatch, and the pin stays. (Before, nothing was recorded: an unpinned node
/// accepted any key at every connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_on_first_use_pins_the_first_key_and_refuses_another_after() {
    use portcullis_tests::sshd::{NodeTrust, Sshd};
    let w = World::start("15m").await;
    let tofu = policy("15m")
        .replace("allowed_ports = [22, 2200]", "allowed_ports = [22]\nhost_key_policy = \"trust_on_first_use\"");
    let (status, body) = w.server.write_policy("prod.toml", &tofu).await;
    assert!(status.is_success(), "{body}");
    let ip = loopback_ip();
    let record = portcullis_proto::NodeRecord {
        name: "pve09".into(),
        addresses: vec![ip.clone()],
        tags: [("env".to_owned(), "prod".to_owned())].into(),
        ..Default::default()
    };
    w.server.add_node(&w.admin, &record).await;
    let (status, principals) = w.server.get_json(Some(&w.admin), "/v1/nodes/pve09/principals").await;
    assert!(status.is_success(), "{principals}");
    let trust = NodeTrust {
        trusted_user_ca_keys: w.server.user_ca_keys.clone(),
        principals: serde_json::from_value(principals["principals"].clone()).unwrap(),
        krl: None,
    };
    let first = Sshd::start_configured(&trust, &ip, 22, None, "");
    w.add_host("pve09", "root%pve09");
    let out = w.run("ssh", &["pve09", "echo first-use"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "first-use", "{}", text(&out));

    let pinned = w.server.await_audit("host_key_pinned", |r| r.payload["device"] == "pve09").await;
    assert_eq!(pinned.payload["rule"], "prod-ssh", "{pinned:?}");
    let host_keys = || async {
        let (_, nodes) = w.server.get_json(Some(&w.admin), "/v1/admin/nodes").await;
        let node = nodes.as_array().unwrap().iter().find(|n| n["name"] == "pve09").unwrap().clone();
        node["host_keys"].clone()
    };
    let first_key = first.host_public_key();
    let key_text =
        |v: &serde_json::Value| v[0].as_str().unwrap().split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let expected = first_key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    assert_eq!(key_text(&host_keys().await), expected, "the first key is pinned");

    // Another machine at the address, with its own key: refused, and the pin stays.
    drop(first);
    let _imposter = Sshd::start_configured(&trust, &ip, 22, None, "");
    let out = w.run("ssh", &["-o", "LogLevel=INFO", "pve09", "echo never"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("host key is not the one on record"), "{}", text(&out));
    assert_eq!(key_text(&host_keys().await), expected, "the pin was replaced");
}
