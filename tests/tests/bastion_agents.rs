//! Edge agents as separate `portcullisd agent` processes: enrollment with a service
//! token, dialing out to the bastion, relaying sessions; losing the agent closes its
//! sessions with `agent_disconnect`, and the agent reconnects by itself. A network
//! namespace stands in for a remote site whose node only the agent can reach.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_tests::ServerOpts;
use portcullis_tests::bastion_world::{World, add_node, loopback_ip, text, wait_output};
use portcullis_tests::services::{agent_rule, service_token, spawn_agent, spawn_agent_in, wait_connected};
use serde_json::json;
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_agent_relays_and_its_loss_closes_its_sessions() {
    let w = World::start("15m").await;
    let (status, body) = w.server.write_policy("edge.toml", &agent_rule("edge1")).await;
    assert!(status.is_success(), "{body}");
    let state = w.dir.path().join("edge1");
    let log = state.with_extension("log");

    // A node token cannot enroll an agent; the agent token can, once.
    let (_, node_token) =
        w.server.post_json(Some(&w.admin), "/v1/admin/enroll-tokens", &json!({ "ttl_seconds": 600, "uses": 1 })).await;
    let mut refused = spawn_agent(&w.server.url, &w.server.pin, "edge1", &state, node_token["token"].as_str(), &[]);
    let status = refused.wait().unwrap();
    assert!(!status.success(), "a node token must not enroll an agent");
    std::fs::remove_file(state.join("api-token")).ok();

    let token = service_token(&w.server, &w.admin, "agent").await;
    let mut agent = spawn_agent(&w.server.url, &w.server.pin, "edge1", &state, Some(&token), &[]);
    wait_connected(&w.server, &w.admin, "edge1", &log).await;

    let node = add_node(&w.server, &w.admin, "pve02", &loopback_ip(), Some("edge1"), None).await;
    w.add_host("pve02", "root%pve02");
    let out = w.run("ssh", &["pve02", "echo via-edge1"]);
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "via-edge1", "{}\nagent: {}", text(&out), agent_log());

    // The agent dies mid-session: the session ends with the reason, at once.
    let child = w.spawn_started("pve02", "sleep 60");
    agent.kill().unwrap();
    agent.wait().unwrap();
    let (out, took) = wait_output(child, Duration::from_secs(30));
    let closed = w.server.audit_events("session_closed").await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("edge agent disconnected"),
        "{}\n{closed:?}\n{}",
        text(&out),
        node.log()
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    w.server.await_audit("session_closed", |r| r.payload["reason"] == "agent_disconnect").await;
    let out = w.run("ssh", &["pve02", "true"]);
    assert!(!out.status.success(), "no agent, no session: {}", text(&out));

    // Restarted without a token (it is enrolled), it reconnects and serves again. The
    // CA's list of connected agents can still name the killed one for a heartbeat, so
    // wait for the new link's own `agent_connected` (recorded once the bastion routes
    // through it).
    let links_before = w.server.audit_events("agent_connected").await.len();
    let mut agent = spawn_agent(&w.server.url, &w.server.pin, "edge1", &state, None, &[]);
    wait_connected(&w.server, &w.admin, "edge1", &log).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while w.server.audit_events("agent_connected").await.len() <= links_before {
        assert!(std::time::Instant::now() < deadline, "the agent never reconnected: {}", agent_log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = w.run("ssh", &["pve02", "echo back"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "back", "{}", text(&out));
    for event in ["agent_connected", "agent_disconnected", "service_enrolled"] {
        assert!(!w.server.audit_events(event).await.is_empty(), "{event} audited");
    }
    agent.kill().unwrap();
    agent.wait().unwrap();
    drop(node);
}

/// A network namespace with a veth link to this one; deleted on drop.
struct Site {
    ns: String,
    /// This namespace's end of the link.
    host_ip: String,
    /// Device addresses blackholed here (routes to delete on drop).
    blocked: Vec<String>,
}

impl Site {
    fn create() -> Result<Site, String> {
        let tag = hex::encode(portcullis_sshcert::random_bytes::<3>());
        let ns = format!("pcl-{tag}");
        let [a, b] = portcullis_sshcert::random_bytes::<2>();
        let (host_ip, site_ip) = (format!("10.{}.{}.1", 100 + a % 100, b), format!("10.{}.{}.2", 100 + a % 100, b));
        let (outer, inner) = (format!("pa{tag}"), format!("pb{tag}"));
        let site = Site { ns: ns.clone(), host_ip: host_ip.clone(), blocked: Vec::new() };
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip").args(args).output().map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
            }
        };
        run(&["netns", "add", &ns])?;
        run(&["link", "add", &outer, "type", "veth", "peer", "name", &inner])?;
        run(&["link", "set", &inner, "netns", &ns])?;
        run(&["addr", "add", &format!("{host_ip}/30"), "dev", &outer])?;
        run(&["link", "set", &outer, "up"])?;
        run(&["netns", "exec", &ns, "ip", "addr", "add", &format!("{site_ip}/30"), "dev", &inner])?;
        run(&["netns", "exec", &ns, "ip", "link", "set", &inner, "up"])?;
        run(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        Ok(site)
    }

    /// Adds an address to the site's loopback: a device only the site can reach. Here
    /// (the bastion's network) the address gets an `unreachable` route, so nothing —
    /// not even a transparent proxy of the test machine — can answer for it.
    fn add_device_address(&mut self, ip: &str) {
        let run = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&["netns", "exec", &self.ns, "ip", "addr", "add", &format!("{ip}/32"), "dev", "lo"]);
        run(&["route", "add", "unreachable", &format!("{ip}/32")]);
        self.blocked.push(ip.to_owned());
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth pair, and with it ours.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        for ip in &self.blocked {
            let _ = Command::new("ip").args(["route", "del", "unreachable", &format!("{ip}/32")]).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_only_the_agent_can_reach_through_a_network_namespace() {
    // A test whose peer is missing fails: it never skips and passes (CI runs as root,
    // where namespaces work).
    let mut site = Site::create().unwrap_or_else(|why| panic!("network namespaces are not available here: {why}"));
    // The CA and the bastion's agent listener must be reachable over the link.
    let opts = ServerOpts {
        listen: Some("0.0.0.0:0".into()),
        args: vec!["--agent-listen".into(), "0.0.0.0:0".into()],
        ..Default::default()
    };
    let w = World::start_with("15m", opts).await;
    let (status, body) = w.server.write_policy("site.toml", &agent_rule("site1")).await;
    assert!(status.is_success(), "{body}");

    let [x, y] = portcullis_sshcert::random_bytes::<2>();
    let device_ip = format!("10.99.{x}.{}", y.clamp(2, 254));
    site.add_device_address(&device_ip);
    let node = add_node(&w.server, &w.admin, "pve-site", &device_ip, Some("site1"), Some(&site.ns)).await;
    // From here (the bastion's network) the node cannot be reached at all.
    let direct =
        std::net::TcpStream::connect_timeout(&format!("{device_ip}:22").parse().unwrap(), Duration::from_secs(2));
    assert!(direct.is_err(), "the node must be reachable only from the site");

    // The agent, inside the site, dials the bastion over the link.
    let bastion_key = Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(w.server.data_dir.join("bastion").join("identity"))
        .output()
        .unwrap();
    assert!(bastion_key.status.success());
    let bastion_key = String::from_utf8(bastion_key.stdout).unwrap();
    let port = w.server.url.rsplit(':').next().unwrap().to_owned();
    let ca_url = format!("https://{}:{port}", site.host_ip);
    let agents = format!("{}:{}={}", site.host_ip, w.server.agent_listener.port(), bastion_key.trim());
    let state = w.dir.path().join("site1");
    let token = service_token(&w.server, &w.admin, "agent").await;
    let mut agent = spawn_agent_in(
        Some(&site.ns),
        &ca_url,
        &w.server.pin,
        "site1",
        &state,
        Some(&token),
        &["--bastion".into(), agents],
    );
    wait_connected(&w.server, &w.admin, "site1", &state.with_extension("log")).await;

    // Terminated mode and jump mode both reach the node through the agent.
    w.add_host("site", "root%pve-site");
    let out = w.run("ssh", &["site", "echo from-the-site"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "from-the-site", "{}", text(&out));
    w.add_jump_host("site-direct", &device_ip, 22);
    let out = w.run("ssh", &["site-direct", "echo jumped-in"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "jumped-in", "{}", text(&out));
    agent.kill().unwrap();
    agent.wait().unwrap();
    drop(node);
}

/// One agent link carries every session through its agent. A user who sends a flood
/// through it — jump mode to a port that streams without end (no SSH inside to hold it
/// back) — and stops reading must not stop the others. Before, that session's full
/// queue made the link's loop wait, and every session through the agent stood still, a
/// new login through it too; now its window is not granted back until its reader takes
/// what is held, so the agent stops sending for that session alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_stall_the_other_sessions_through_its_agent() {
    use std::io::Read;
    use tokio::io::AsyncWriteExt;
    let w = World::start("15m").await;
    let rule = format!("{}allowed_ports = [22, 2200]\n", agent_rule("edge1"));
    let (status, body) = w.server.write_policy("edge.toml", &rule).await;
    assert!(status.is_success(), "{body}");
    let state = w.dir.path().join("edge1");
    let log = state.with_extension("log");
    let token = service_token(&w.server, &w.admin, "agent").await;
    let mut agent = spawn_agent(&w.server.url, &w.server.pin, "edge1", &state, Some(&token), &[]);
    wait_connected(&w.server, &w.admin, "edge1", &log).await;
    let ip = loopback_ip();
    let node = add_node(&w.server, &w.admin, "pve02", &ip, Some("edge1"), None).await;
    w.add_host("pve02", "root%pve02");
    w.add_jump_host("pve02-jump", &ip, 22);
    // A target behind the same agent that streams to whoever connects, as fast as it
    // can (what a node the user controls can do at its SSH port).
    let flood_ip = loopback_ip();
    let record = portcullis_proto::NodeRecord {
        name: "flood01".into(),
        addresses: vec![flood_ip.clone()],
        tags: [("env".to_owned(), "prod".to_owned())].into(),
        agent: Some("edge1".into()),
        ssh_port: Some(2200),
        ..Default::default()
    };
    w.server.add_node(&w.admin, &record).await;
    let flood = tokio::net::TcpListener::bind((flood_ip.as_str(), 2200)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = flood.accept().await {
            tokio::spawn(async move {
                let chunk = vec![b'x'; 16 * 1024];
                while tcp.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    let out = w.run("ssh", &["pve02", "echo before"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "before", "{}", text(&out));

    // The flood, read up to its first bytes and then never again.
    let target = format!("{flood_ip}:2200");
    let mut flooded = w.spawn_ssh(&["-W", &target, "jump"]);
    let mut stdout = flooded.stdout.take().unwrap();
    let mut first = [0u8; 1024];
    if stdout.read_exact(&mut first).is_err() {
        let mut err = String::new();
        flooded.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        panic!("the flood did not start: {err}\n{}", w.server.log());
    }
    // Until the output backs up: what the CA hears the session sent stands still.
    let (mut last, mut still) = (0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while still < 3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (_, live) = w.server.get_json(Some(&w.admin), "/v1/admin/sessions").await;
        let sent = live.as_array().unwrap().iter().map(|s| s["bytes_to_client"].as_u64().unwrap()).max().unwrap_or(0);
        still = if sent == last && sent > 0 { still + 1 } else { 0 };
        last = sent;
        assert!(std::time::Instant::now() < deadline, "the flood never backed up");
    }
    // Other sessions through the same agent, in both modes, log in and run.
    for host in ["pve02", "pve02-jump"] {
        let child = w.spawn_ssh(&[host, "echo still-flowing"]);
        let (out, took) = wait_output(child, Duration::from_secs(30));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "still-flowing", "{host}: {}", text(&out));
        assert!(took < Duration::from_secs(15), "{host}: {took:?}");
    }
    flooded.kill().unwrap();
    flooded.wait().unwrap();
    drop(stdout);
    agent.kill().unwrap();
    agent.wait().unwrap();
    drop(node);
}
