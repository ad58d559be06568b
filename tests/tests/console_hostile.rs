//! The browser console against a browser that stops reading: its session still obeys
//! close orders and releases its lease. A hand-made WebSocket client (TLS pinned like
//! every client of the CA) is the "browser", because a real one cannot be told to stop
//! reading; the node is a real `sshd` reached through the all-in-one's agent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_tests::bastion_world::{CONSOLE_POLICY, PASSWORD, World};
use portcullis_tests::websocket::{BINARY, Socket, TEXT};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// alice's console on pve01 under `policy`, connected: a sign-in, the ticket sent as the first
/// frame, a terminal of `cols`×`rows` asked for, and the `connected` frame read.
async fn open_console(w: &World, policy: &str, size: (u32, u32)) -> (Socket, Value) {
    let (status, body) = w.server.write_policy("console.toml", policy).await;
    assert!(status.is_success(), "{body}");
    connect_console(w, size).await
}

/// [`open_console`] under the policy in force: a new sign-in, a new ticket, a new socket.
async fn connect_console(w: &World, (cols, rows): (u32, u32)) -> (Socket, Value) {
    let token = w.server.login("alice", PASSWORD).await;
    let (status, body) =
        w.server.post_json(Some(&token), "/v1/console/tickets", &json!({"device": "pve01", "login": "root"})).await;
    assert!(status.is_success(), "ticket: {body}");
    let mut browser =
        Socket::open(&w.server.url, &w.server.pin, body["websocket_path"].as_str().unwrap(), &token).await;
    browser.send(TEXT, body["ticket"].as_str().unwrap().as_bytes()).await;
    browser.send(TEXT, json!({"type": "resize", "cols": cols, "rows": rows}).to_string().as_bytes()).await;
    let connected = browser.control("connected").await;
    (browser, connected)
}

/// The live sessions as the CA lists them.
async fn sessions(w: &World) -> Vec<Value> {
    let (status, body) = w.server.get_json(Some(&w.admin), "/v1/admin/sessions").await;
    assert!(status.is_success(), "{body}");
    body.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_stops_reading_cannot_keep_its_session_past_a_kill() {
    let w = World::start("1h").await;
    let (mut browser, connected) = open_console(&w, CONSOLE_POLICY, (120, 40)).await;
    let id = connected["session_id"].as_str().unwrap().to_owned();

    // Endless output, and from now on the browser reads nothing: its socket buffers fill
    // and the bastion's sends to it wait.
    browser.send(BINARY, b"exec yes portcullis-console-flood\n").await;
    // Until the bastion stops getting rid of output: the byte count the CA last heard
    // of stands still across a few heartbeats.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = 0;
    let mut still = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let live = sessions(&w).await;
        let s = live.iter().find(|s| s["session_id"] == id.as_str()).expect("the session is live");
        let out = s["bytes_to_client"].as_u64().unwrap();
        still = if out == last && out > 0 { still + 1 } else { 0 };
        last = out;
        if still >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the output never backed up (at {out} bytes)");
    }

    // The kill must apply although the relay is stuck on the browser.
    let (status, body) = w.server.post_json(Some(&w.admin), &format!("/v1/admin/sessions/{id}/kill"), &json!({})).await;
    assert!(status.is_success(), "kill: {body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while sessions(&w).await.iter().any(|s| s["session_id"] == id.as_str()) {
        assert!(Instant::now() < deadline, "a killed session kept its lease while its browser did not read");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let closed = w.server.audit_events("session_closed").await;
    let ours = closed.iter().find(|r| r.payload["session_id"] == id.as_str()).expect("session_closed audited");
    assert_eq!(ours.payload["reason"], "admin_terminated", "{:?}", ours.payload);
    drop(browser);

    // The console still works for the next browser (slots released, nothing wedged).
    connect_console(&w, (80, 24)).await;
}

/// A quiet console is warned before its idle close (a control frame the page shows),
/// then closed as idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_console_is_warned_then_closed_as_idle() {
    let w = World::start("1h").await;
    let quick = CONSOLE_POLICY.replace(r#"idle = "15m""#, r#"idle = "3s""#);
    assert_ne!(quick, CONSOLE_POLICY);
    let (mut browser, _) = open_console(&w, &quick, (80, 24)).await;
    let warning = browser.control("idle_warning").await;
    assert_eq!(warning["seconds"], 1, "{warning}");
    let closed = browser.control("closed").await;
    assert_eq!(closed["reason"], "idle_timeout", "{closed}");
}

/// The seed's "missing credential": a console socket whose first frame is no ticket is
/// closed as `ticket_missing` at once, and — since an audit row per such socket would let
/// anyone grow the trail — counted into the bastion's `refusals_summarized` record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_without_a_ticket_is_closed_and_counted_as_missing_credential() {
    let opts = portcullis_tests::ServerOpts {
        args: vec!["--refusal-summary-every".into(), "2s".into()],
        ..portcullis_tests::ServerOpts::default()
    };
    let w = World::start_with("1h", opts).await;
    let token = w.server.login("alice", PASSWORD).await;
    for _ in 0..3 {
        let mut browser = Socket::open(&w.server.url, &w.server.pin, "/console/ws", &token).await;
        browser.send(TEXT, b"   ").await;
        let closed = browser.control("closed").await;
        assert_eq!(closed["reason"], "ticket_missing", "{closed}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let summaries = w.server.audit_events("refusals_summarized").await;
        let counted: u64 = summaries
            .iter()
            .flat_map(|r| r.payload["counts"].as_array().unwrap().clone())
            .filter(|c| c["reason"] == "ticket_missing" && c["source"] == "127.0.0.1")
            .map(|c| c["counted"].as_u64().unwrap())
            .sum();
        if counted == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "counted {counted} of 3: {summaries:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The console relays terminal bytes as they are: 0x03 and 0x1c (which a terminal's
/// line discipline would turn into signals) sent in a binary frame reach the node's
/// pty unchanged once the node's shell has put it in raw mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_bytes_reach_the_nodes_terminal_untouched() {
    let w = World::start("1h").await;
    let (mut browser, _) = open_console(&w, CONSOLE_POLICY, (80, 24)).await;
    // Raw mode, then read exactly the next six bytes and print them as hex. (The
    // markers are split in the command so its echo does not match them.)
    browser.send(BINARY, b"stty raw -echo; echo RE''ADY; head -c 6 | od -An -tx1 | tr -d ' '; echo EN''D\n").await;
    let mut seen = Vec::new();
    browser.read_until(&mut seen, "READY").await;
    browser.send(BINARY, &[0x03, 0x1c, b'o', b'k', 0x03, 0x1c]).await;
    browser.read_until(&mut seen, "END").await;
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.contains("031c6f6b031c"), "the node read something else: {seen:?}");
}
