//! The split deployment: a standalone `portcullisd bastion` (its own SSH listener and
//! its own HTTPS web front door) and a standalone `portcullisd agent`, both enrolled
//! with service tokens, in front of a CA; a real `sshd` node only the agent serves.
//! Stock `ssh` and a browser (the hand-made WebSocket client, over the front door's
//! pinned TLS) reach the node through the standalone bastion; the front door passes
//! only browsers' routes on, and only a bastion may name a browser's address to the CA.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_tests::ServerOpts;
use portcullis_tests::bastion_world::{CONSOLE_POLICY, PASSWORD, World, add_node, loopback_ip, text};
use portcullis_tests::server::{client_from, client_with_pin, status_and_json};
use portcullis_tests::services::{service_token, spawn_agent, spawn_bastion, wait_connected_to, wait_line};
use portcullis_tests::ssh::{ed25519_key, write_key_pair};
use portcullis_tests::websocket::{BINARY, Socket, TEXT};
use serde_json::json;

/// Stock ssh and consoles through agent `edge1` on `env:prod` devices.
fn edge_policy() -> String {
    let ssh = "[[rule]]\nname = \"via-edge1\"\npurpose = \"ssh_login\"\ntargets = 'in:devices tags.env:prod'\n\
               scope = { agents = [\"edge1\"] }\n";
    let console = CONSOLE_POLICY.replace("prod-consoles", "edge1-consoles").replace("[\"local\"]", "[\"edge1\"]");
    // (Only the rule: the role and binding are already in console.toml.)
    let rule = &console[console.find("[[rule]]").unwrap()..];
    format!("{ssh}\n{rule}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_bastion_serves_ssh_and_the_browser_console_on_its_own_origin() {
    let metrics = vec!["--metrics-listen".to_owned(), "127.0.0.1:0".to_owned()];
    let w = World::start_with("15m", ServerOpts { args: metrics.clone(), ..ServerOpts::default() }).await;
    for (file, toml) in [("console.toml", CONSOLE_POLICY.to_owned()), ("edge.toml", edge_policy())] {
        let (status, body) = w.server.write_policy(file, &toml).await;
        assert!(status.is_success(), "{file}: {body}");
    }
    let (url, pin) = (&w.server.url, &w.server.pin);

    let b1 = w.dir.path().join("b1");
    let token = service_token(&w.server, &w.admin, "bastion").await;
    let extra = [&["--web-listen".to_owned(), "127.0.0.1:0".to_owned()][..], &metrics].concat();
    let mut bastion = spawn_bastion(url, pin, "b1", &b1, Some(&token), &extra);
    let web = wait_line(&b1, "Web UI (browser console): ");
    let (web_url, web_pin) = web.split_once(" (TLS public-key pin ").unwrap();
    let web_url = web_url.trim_end_matches("/ui/").to_owned();
    let web_pin = web_pin.trim_end_matches(')').to_owned();
    let ssh_addr: std::net::SocketAddr =
        wait_line(&b1, "Portcullis bastion b1 listening on ").split_once(' ').unwrap().0.parse().unwrap();
    let b1_metrics = wait_line(&b1, "Metrics on ");

    let edge1 = w.dir.path().join("edge1");
    let token = service_token(&w.server, &w.admin, "agent").await;
    let mut agent = spawn_agent(url, pin, "edge1", &edge1, Some(&token), &metrics);
    wait_connected_to(&w.server, &w.admin, "edge1", Some("b1"), &edge1.with_extension("log")).await;
    let node = add_node(&w.server, &w.admin, "pve02", &loopback_ip(), Some("edge1"), None).await;

    // Stock ssh, terminated mode, through the standalone bastion.
    w.add_host_via("b1-pve02", "root%pve02", ssh_addr);
    let out = w.run("ssh", &["b1-pve02", "echo via-b1"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "via-b1", "{}\nnode: {}", text(&out), node.log());

    // The browser, from its own address, at the bastion's origin only: the UI page, the
    // sign-in (the CA's cookie lands on this origin), a ticket, the console socket.
    let browser_ip: std::net::IpAddr = "127.0.0.77".parse().unwrap();
    let browser = client_from(&web_pin, browser_ip);
    let page = browser.get(format!("{web_url}/ui/")).send().await.unwrap();
    assert!(page.status().is_success(), "{}", page.status());
    assert!(page.headers().contains_key("content-security-policy"), "{:?}", page.headers());
    // A browser cannot choose the address the CA records: the front door drops the header.
    let signed_in = browser
        .post(format!("{web_url}/v1/auth/browser-login"))
        .header("x-portcullis-forwarded-for", "203.0.113.9")
        .json(&json!({ "username": "alice", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let cookie = signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .find_map(|v| v.to_str().unwrap().strip_prefix("__Host-portcullis_session="))
        .map(|v| v.split(';').next().unwrap().to_owned())
        .expect("the sign-in sets the session cookie on the bastion's origin");
    let (status, body) = status_and_json(signed_in).await;
    assert!(status.is_success(), "{body}");
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    let login = w
        .server
        .await_audit("login_succeeded", |r| r.payload["username"] == "alice" && r.payload["client_ip"] != "127.0.0.1")
        .await;
    assert_eq!(login.payload["client_ip"], browser_ip.to_string(), "{:?}", login.payload);

    let ticket = browser
        .post(format!("{web_url}/v1/console/tickets"))
        .header("cookie", format!("__Host-portcullis_session={cookie}"))
        .header("x-csrf-token", &csrf)
        .json(&json!({ "device": "pve02", "login": "root" }))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(ticket).await;
    assert!(status.is_success(), "ticket: {body}");
    let mut socket = Socket::open(&web_url, &web_pin, body["websocket_path"].as_str().unwrap(), &cookie).await;
    socket.send(TEXT, body["ticket"].as_str().unwrap().as_bytes()).await;
    socket.send(TEXT, json!({"type": "resize", "cols": 100, "rows": 30}).to_string().as_bytes()).await;
    socket.control("connected").await;
    socket.send(BINARY, b"echo split-$((6*7))\n").await;
    socket.read_until(&mut Vec::new(), "split-42").await;
    let opened = w
        .server
        .await_audit("session_opened", |r| r.payload["mode"] == "console" && r.payload["device"] == "pve02")
        .await;
    assert_eq!(opened.payload["bastion"], "b1", "{:?}", opened.payload);

    // A key without a certificate is refused at b1's front door, and counted.
    let plain = write_key_pair(w.dir.path(), "plain", &ed25519_key());
    let refused = std::process::Command::new("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(&plain)
        .args(["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes"])
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-p"])
        .arg(ssh_addr.port().to_string())
        .args(["root%pve02@127.0.0.1", "true"])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{}", text(&refused));

    // Each role's metrics: b1's own (the console live, the ssh session closed, the
    // refusal, the agent), and the CA's (opens by mode, issuance latency, agent links).
    let scrape = |url: String| async move { reqwest::get(&url).await.unwrap().text().await.unwrap() };
    let b1_scrape = scrape(b1_metrics.clone()).await;
    for wanted in [
        "portcullis_bastion_sessions_live{mode=\"console\"} 1\n",
        "portcullis_bastion_agent_links 1\n",
        "portcullis_bastion_sessions_closed_total{mode=\"terminated\",reason=",
        "portcullis_bastion_bytes_relayed_total{direction=\"to_client\"} ",
        "portcullis_bastion_refusals_total{reason=\"plain_public_key\"} 1\n",
    ] {
        assert!(b1_scrape.contains(wanted), "{wanted:?} not in b1's metrics:\n{b1_scrape}");
    }
    let ca = w.server.metrics().await;
    for wanted in [
        "portcullis_ca_sessions_opened_total{mode=\"console\"} 1\n",
        "portcullis_ca_sessions_opened_total{mode=\"terminated\"} ",
        "portcullis_ca_sessions_closed_total{mode=\"terminated\",reason=",
        "portcullis_ca_issuance_seconds_bucket{le=\"+Inf\"} ",
        "portcullis_ca_audit_write_seconds_count ",
        "portcullis_ca_sessions_live{mode=\"console\"} 1\n",
        "portcullis_ca_agent_links 2\n",
        "portcullis_ca_krl_version ",
    ] {
        assert!(ca.contains(wanted), "{wanted:?} not in the CA's metrics:\n{ca}");
    }
    let ready = reqwest::get(b1_metrics.replace("/metrics", "/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    // The agent's: linked to both bastions (the all-in-one's and b1), the channels it opened.
    let agent_metrics = wait_line(&edge1, "Metrics on ");
    let agent_scrape = scrape(agent_metrics.clone()).await;
    for wanted in ["portcullis_agent_bastion_links 2\n", "portcullis_agent_channels_total{outcome=\"opened\"} "] {
        assert!(agent_scrape.contains(wanted), "{wanted:?} not in edge1's metrics:\n{agent_scrape}");
    }
    let ready = reqwest::get(agent_metrics.replace("/metrics", "/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);

    // Only browsers' routes are passed on: a service credential gets nothing through it.
    let agent_token = std::fs::read_to_string(edge1.join("api-token")).unwrap();
    let direct = client_with_pin(&web_pin);
    for path in ["/v1/services/bastions", "/v1/services/agent/targets", "/v1/krl", "/enroll.sh"] {
        let resp = direct.get(format!("{web_url}{path}")).bearer_auth(agent_token.trim()).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path} must not be passed on");
    }

    // At the CA itself, naming a client address takes a bastion's credential.
    let ca = client_with_pin(pin);
    let forged = |by: Option<&str>| {
        let mut r = ca
            .post(format!("{url}/v1/auth/login"))
            .header("x-portcullis-forwarded-for", "203.0.113.9")
            .json(&json!({ "username": "alice", "password": PASSWORD }));
        if let Some(by) = by {
            r = r.header("x-portcullis-forwarded-by", by);
        }
        r.send()
    };
    assert_eq!(forged(None).await.unwrap().status(), 401);
    assert_eq!(forged(Some("pcs_not-a-credential")).await.unwrap().status(), 401);
    assert_eq!(forged(Some(agent_token.trim())).await.unwrap().status(), 403, "an agent is not a bastion");
    let logins = w.server.audit_events("login_succeeded").await;
    assert!(logins.iter().all(|r| r.payload["client_ip"] != "203.0.113.9"), "{logins:?}");

    let _ = bastion.kill();
    let _ = agent.kill();
    let _ = bastion.wait();
    let _ = agent.wait();
}

/// `systemctl reload` sends SIGHUP. A standalone bastion without a web front door had
/// no handler for it, so the signal's default action ended the process — which systemd
/// takes as a clean exit and does not restart (`Restart=on-failure`): every session
/// dropped, the bastion gone until someone noticed (found in review, 2026-12-06). An
/// agent alike. Both now stay up and keep their link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_signal_leaves_a_bastion_and_an_agent_running() {
    let w = World::start("15m").await;
    let (url, pin) = (&w.server.url, &w.server.pin);
    let b1 = w.dir.path().join("b1");
    let token = service_token(&w.server, &w.admin, "bastion").await;
    let mut bastion = spawn_bastion(url, pin, "b1", &b1, Some(&token), &[]);
    wait_line(&b1, "Portcullis bastion b1 listening on ");
    let edge1 = w.dir.path().join("edge1");
    let token = service_token(&w.server, &w.admin, "agent").await;
    let mut agent = spawn_agent(url, pin, "edge1", &edge1, Some(&token), &[]);
    wait_connected_to(&w.server, &w.admin, "edge1", Some("b1"), &edge1.with_extension("log")).await;

    for child in [&bastion, &agent] {
        let sent = std::process::Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
        assert!(sent.success());
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    for (what, child, state) in [("bastion", &mut bastion, &b1), ("agent", &mut agent, &edge1)] {
        let log = std::fs::read_to_string(state.with_extension("log")).unwrap_or_default();
        assert!(child.try_wait().unwrap().is_none(), "the {what} ended on SIGHUP:\n{log}");
    }
    wait_connected_to(&w.server, &w.admin, "edge1", Some("b1"), &edge1.with_extension("log")).await;
    for child in [&mut bastion, &mut agent] {
        let _ = child.kill();
        let _ = child.wait();
    }
}
