//! The bastion's listeners against careless and hostile clients that never authenticate:
//! a flood of idle connections past the open-file limit, and a client that sends its
//! banner and stalls. After each, a real `ssh` still gets in.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_bastion::{
    Bastion, BastionConfig, BastionEvent, ControlConfig, ControlPlane, EventSink, KexProfile, RefusalReason,
    StartupLimits, SystemClock, TrustConfig, TrustSource,
};
use portcullis_tests::Server;
use portcullis_tests::bastion_world::{PASSWORD, World, text};
use portcullis_tests::procfs::{accept_queue, child_with_arg, open_fds};
use portcullis_tests::server::write_file;
use portcullis_tests::ssh::{ed25519_key, public_line, write_key_pair};
use secrecy::SecretString;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// `Max open files` of a process: (soft, hard), as `/proc` prints them.
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let mut fields = line.trim_start_matches("Max open files").split_whitespace();
    (fields.next().unwrap().to_owned(), fields.next().unwrap().to_owned())
}

fn set_open_files_limits(pid: u32, soft: &str, hard: &str) {
    let out = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={soft}:{hard}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "prlimit: {}", String::from_utf8_lossy(&out.stderr));
}

/// Reads the SSH identification line an SSH server sends first.
async fn banner(addr: SocketAddr) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        let mut b = [0u8; 1];
        if tcp.read(&mut b).await.unwrap() == 0 {
            break;
        }
        line.push(b[0]);
    }
    String::from_utf8_lossy(&line).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_keep_accepting_after_running_out_of_file_descriptors() {
    // The all-in-one inherits a soft limit below its hard limit from us, as from a shell.
    let me = std::process::id();
    let (_, hard) = open_files_limits(me);
    let soft = hard.parse::<u64>().map_or(4096, |h| (h / 2).clamp(1024, 4096)).to_string();
    set_open_files_limits(me, &soft, &hard);
    let w = World::start("15m").await;
    let pid = child_with_arg(&w.server.data_dir).expect("the all-in-one's process");
    let (soft_now, hard_now) = open_files_limits(pid);
    assert_eq!(soft_now, hard_now, "the soft open-files limit is raised to the hard one at start");

    // Now a limit a little above what it has open, and more idle connections than fit
    // (but no more than a listen backlog of 128 holds, so every connect completes).
    let open = open_fds(pid);
    let limit = (open + 64).to_string();
    set_open_files_limits(pid, &limit, &limit);
    let mut idle = Vec::new();
    for addr in [w.server.bastion, w.server.agent_listener] {
        // Ten per source address, under the per-source cap on unauthenticated connections.
        for i in 0..100 {
            idle.push(connect_from(&format!("127.0.2.{}", i / 10 + 1), addr).await);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !w.server.log().contains("Too many open files") {
        assert!(Instant::now() < deadline, "the flood never exhausted the file descriptors:\n{}", w.server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(w.server.log().contains("still listening"), "{}", w.server.log());
    drop(idle);

    // Both listeners serve again once the flood is gone. Gone means accepted and closed
    // on the server's side too: until then the flood's connections hold unauthenticated
    // slots, and a listener past `StartupLimits::start` closes a new connection before
    // the banner by design (like sshd's MaxStartups), which would make the first probe
    // a coin toss. A listener that stopped accepting leaves its queue full: timeout.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ports = [w.server.bastion.port(), w.server.agent_listener.port()];
    while open_fds(pid) > open + 8 || ports.iter().any(|&p| accept_queue(p) > 0) {
        let queued: Vec<usize> = ports.iter().map(|&p| accept_queue(p)).collect();
        assert!(Instant::now() < deadline, "the flood never drained: {} fds open, queued {queued:?}", open_fds(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let agents = tokio::time::timeout(Duration::from_secs(30), banner(w.server.agent_listener)).await;
    assert_eq!(agents.expect("agent listener answers").as_str(), "SSH-2.0-Portcullis");
    let out = w.run("ssh", &["bastion", "echo still-serving"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "still-serving", "{}", text(&out));
    assert!(!w.server.log().contains("listener failed"), "{}", w.server.log());
}

const POLICY: &str = r#"
[[role]]
name = "prod-root"
logins = ["root"]
targets = 'in:devices tags.env:prod'
permissions = ["certs.issue"]
max_cert_ttl = "1h"

[[binding]]
group = "ops"
roles = ["prod-root"]
"#;

/// A CA with alice (group ops), an in-process bastion configured by `config` in front
/// of it, and alice's key and certificate files for a real `ssh`.
struct FrontDoor {
    _server: Server,
    addr: SocketAddr,
    events: tokio::sync::broadcast::Receiver<BastionEvent>,
    key: std::path::PathBuf,
    cert: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl FrontDoor {
    async fn start(config: impl FnOnce(BastionConfig) -> BastionConfig) -> FrontDoor {
        let server = Server::start().await;
        let (status, body) = server.write_policy("team.toml", POLICY).await;
        assert!(status.is_success(), "policy: {body}");
        let admin = server.admin_token().await;
        server.add_user(&admin, "alice", &["ops"], PASSWORD).await;
        let clock: Arc<dyn portcullis_bastion::Clock> = Arc::new(SystemClock);
        let trust = Arc::new(TrustSource::new(TrustConfig::new(&server.url, &server.pin), Arc::clone(&clock)).unwrap());
        trust.refresh().await.unwrap();
        let sink = EventSink::new();
        let events = sink.subscribe();
        let control = Arc::new(
            ControlPlane::new(ControlConfig {
                ca_url: server.url.clone(),
                ca_pin: server.pin.clone(),
                in_process: None,
                api_token: SecretString::from("pcs_unused"),
                timeout: Duration::from_secs(5),
            })
            .unwrap(),
        );
        let config = config(BastionConfig::new(ed25519_key()));
        let bastion = Arc::new(Bastion::new(config, trust, control, clock, sink).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { bastion.serve(listener).await });

        let dir = tempfile::tempdir().unwrap();
        let key = ed25519_key();
        let key_path = write_key_pair(dir.path(), "id", &key);
        let token = server.login("alice", PASSWORD).await;
        let (status, body) = server.issue_cert(&token, &public_line(&key)).await;
        assert!(status.is_success(), "issue: {body}");
        let cert = write_file(dir.path(), "id-cert.pub", body["certificate"].as_str().unwrap());
        FrontDoor { _server: server, addr, events, key: key_path, cert, _dir: dir }
    }

    /// A real `ssh` from `source` (a loopback address), as alice, without a device: it
    /// authenticates and then meets the "name the device" refusal.
    async fn ssh_from(&self, source: &str) -> std::process::Output {
        self.ssh(source, &["root@127.0.0.1", "true"]).output().await.unwrap()
    }

    /// A real `ssh -N` as alice: it logs in, opens no channel and stays.
    fn ssh_idle(&self) -> tokio::process::Child {
        self.ssh("127.0.0.1", &["-N", "root@127.0.0.1"]).kill_on_drop(true).spawn().unwrap()
    }

    fn ssh(&self, source: &str, args: &[&str]) -> tokio::process::Command {
        let mut ssh = tokio::process::Command::new("ssh");
        ssh.args(["-F", "/dev/null", "-p", &self.addr.port().to_string(), "-b", source])
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20", "-o", "LogLevel=INFO"])
            .arg("-i")
            .arg(&self.key)
            .arg("-o")
            .arg(format!("CertificateFile={}", self.cert.display()))
            .args(args);
        ssh
    }

    /// The next event matching `wanted`, waiting up to 20 s.
    async fn next_event(&mut self, wanted: impl Fn(&BastionEvent) -> bool) -> BastionEvent {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Ok(event)) if wanted(&event) => return event,
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                other => panic!("no such event: {other:?}"),
            }
        }
    }
}

/// A TCP connection to `addr` from the loopback address `source`.
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_after_its_banner_is_closed_at_the_login_grace_time() {
    // A short login grace time (2 s instead of 30).
    let grace = Duration::from_secs(2);
    let mut door = FrontDoor::start(|c| BastionConfig { auth_timeout: grace, ..c }).await;
    let addr = door.addr;

    // Banner, then nothing: read whatever comes until the bastion closes the socket.
    let connected = Instant::now();
    let mut staller = TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut staller, b"SSH-2.0-OpenSSH_9.6 stalls\r\n").await.unwrap();
    let held = tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = staller.read_to_end(&mut sink).await;
        connected.elapsed()
    });

    // Meanwhile a real client logs in (past authentication; no device named, so the
    // session channel is refused with a reason).
    let out = door.ssh_from("127.0.0.1").await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("name the device"), "{out:?}");

    // Closed at the grace time, not when keepalives give up (about two minutes).
    let held = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("a stalled client was held far past the login grace time")
        .unwrap();
    assert!(held >= grace, "closed before the grace time: {held:?}");
    let mut timeouts = 0;
    let mut accepted = 0;
    while let Ok(e) = door.events.try_recv() {
        match e {
            BastionEvent::AuthRefused { reason: RefusalReason::AuthTimeout, .. } => timeouts += 1,
            BastionEvent::AuthAccepted { .. } => accepted += 1,
            _ => {}
        }
    }
    assert_eq!((timeouts, accepted), (1, 1), "one timeout (the staller), one login");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jump_target_cannot_forge_log_lines() {
    let opts = portcullis_tests::ServerOpts { env: vec![("RUST_LOG".into(), "info".into())], ..Default::default() };
    let w = World::start_with("15m", opts).await;
    // Through russh: OpenSSH's client would not send a newline in a `-W` host.
    let conn = w.russh_login("alice").await;
    let forged = "pve01\n2026-12-02T00:00:00.000000Z  INFO portcullis: forged \u{1b}[38;5;99mline";
    let opened = conn.channel_open_direct_tcpip(forged, 22, "127.0.0.1", 0).await;
    assert!(opened.is_err(), "a junk target is refused");

    // Logged before the refusal went out, escaped, on one line. (The log formatter
    // colours its own fields, so only our sequence is looked for.)
    let log = w.server.log();
    let mentions: Vec<&str> = log.lines().filter(|l| l.contains("forged")).collect();
    assert!(!mentions.is_empty(), "the refused target is logged:\n{log}");
    for line in &mentions {
        assert!(line.contains(r"pve01\n2026-12-02T00:00:00.000000Z"), "a forged log line: {line:?}");
    }
    assert!(!log.contains("\u{1b}[38;5;99m"), "the peer's escape sequence reached the log raw");
    assert!(log.contains(r"forged \u{1b}[38;5;99mline"), "{mentions:?}");

    // A flood of junk targets on one connection (a packet each, no CA call) logs the
    // first only: every one logged at info would let a logged-in client flood the journal.
    for i in 0..200 {
        let junk = format!("junk {i}");
        assert!(conn.channel_open_direct_tcpip(junk.as_str(), 22, "127.0.0.1", 0).await.is_err());
    }
    let junk_lines = w.server.log().lines().filter(|l| l.contains("junk ")).count();
    assert!(junk_lines <= 1, "{junk_lines} junk targets were logged");

    // Jump mode itself still works, on the same connection and with real ssh.
    let channel = conn.channel_open_direct_tcpip(&w.node.ip, 22, "127.0.0.1", 0).await;
    assert!(channel.is_ok(), "a real target opens");
    let out = w.run("ssh", &["node", "echo jumped"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "jumped", "{}", text(&out));
}

/// Requests count what they carry: on a channel whose node reads nothing (so the
/// bastion holds what arrives for it, russh patch 6), a client sending `env` requests of
/// 32 KiB each is cut off within the bound a data sender gets (about twice the channel's
/// window). Each request used to count 64 bytes, as no window limits requests: 4,000 of
/// them (128 MiB) were all held, and nothing bounded how many more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_piled_on_a_stalled_channel_end_the_connection() {
    let w = World::start("15m").await;
    let port = 2200;
    let (_go, _reader) = w.add_slow_reader("sink", "127.0.83.20", port).await;
    let conn = w.russh_login("alice").await;
    let channel = conn.channel_open_direct_tcpip("sink", u32::from(port), "127.0.0.1", 0).await.unwrap();
    let piece = vec![0u8; 32 * 1024];
    let mut out_of_window = false;
    for _ in 0..4096 {
        if tokio::time::timeout(Duration::from_secs(2), channel.data(&piece[..])).await.is_err() {
            out_of_window = true;
            break;
        }
    }
    assert!(out_of_window, "the window never ran out, so nothing was held");
    let value = "x".repeat(32 * 1024);
    let mut sent = 0usize;
    while sent < 128 << 20 && !conn.is_closed() {
        if tokio::time::timeout(Duration::from_secs(2), channel.set_env(false, "LC_PAD", value.clone())).await.is_err()
        {
            break;
        }
        sent += value.len();
        tokio::task::yield_now().await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !conn.is_closed() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(conn.is_closed(), "the bastion held {sent} bytes of requests and kept the connection");
    assert!(sent < 64 << 20, "cut off only after {sent} bytes of requests");
}

/// Reads the server's identification line, or `None` if it closes first.
async fn banner_on(tcp: &mut TcpStream) -> Option<String> {
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut b)).await.expect("no answer").ok()?;
        if n == 0 {
            return None;
        }
        line.push(b[0]);
    }
    Some(String::from_utf8_lossy(&line).trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_capped_per_source_and_in_total() {
    let limits = StartupLimits { per_source: 3, start: 5, rate_percent: 100, full: 5 };
    let door = FrontDoor::start(|c| BastionConfig { startups: limits, ..c }).await;

    // Three idle connections from one address are served; the fourth is closed at once.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut tcp = connect_from("127.0.0.7", door.addr).await;
        assert_eq!(banner_on(&mut tcp).await.as_deref(), Some("SSH-2.0-Portcullis"));
        held.push(tcp);
    }
    let mut over = connect_from("127.0.0.7", door.addr).await;
    assert_eq!(banner_on(&mut over).await, None, "a fourth unauthenticated connection from one address");

    // Another address still logs in while that one is at its cap.
    let out = door.ssh_from("127.0.0.8").await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("name the device"), "{out:?}");

    // Five unauthenticated in all: a sixth address is refused too.
    for _ in 0..2 {
        let mut tcp = connect_from("127.0.0.9", door.addr).await;
        assert_eq!(banner_on(&mut tcp).await.as_deref(), Some("SSH-2.0-Portcullis"));
        held.push(tcp);
    }
    let mut over = connect_from("127.0.0.10", door.addr).await;
    assert_eq!(banner_on(&mut over).await, None, "a sixth unauthenticated connection in all");

    // Slots come back when those clients leave.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut tcp = connect_from("127.0.0.7", door.addr).await;
        if banner_on(&mut tcp).await.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "slots were never released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_does_not_exist_is_refused_like_one_the_user_may_not_use() {
    let w = World::start("15m").await;
    // A device alice's role does not target (env:staging), next to her env:prod pve01.
    let staging = portcullis_proto::NodeRecord {
        name: "stage01".into(),
        addresses: vec!["127.0.3.1".into()],
        tags: [("env".to_owned(), "staging".to_owned())].into(),
        ..Default::default()
    };
    w.server.add_node(&w.admin, &staging).await;
    w.add_host("staging", "root%stage01");
    w.add_host("nowhere", "root%nosuch01");

    // Terminated mode and jump mode, each: the two answers differ only in the name.
    let answer = |out: &std::process::Output, name: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr).replace(name, "DEVICE");
        assert!(!out.status.success() && stderr.contains("denied"), "{}", text(out));
        stderr.lines().filter(|l| l.contains("DEVICE")).map(str::to_owned).collect::<Vec<_>>()
    };
    let forbidden = w.run("ssh", &["-o", "LogLevel=INFO", "staging", "true"]);
    let missing = w.run("ssh", &["-o", "LogLevel=INFO", "nowhere", "true"]);
    assert_eq!(answer(&forbidden, "stage01"), answer(&missing, "nosuch01"));
    assert!(!answer(&missing, "nosuch01").is_empty(), "{}", text(&missing));
    let forbidden = w.run("ssh", &["-o", "LogLevel=INFO", "-W", "stage01:22", "jump"]);
    let missing = w.run("ssh", &["-o", "LogLevel=INFO", "-W", "nosuch01:22", "jump"]);
    assert_eq!(answer(&forbidden, "stage01"), answer(&missing, "nosuch01"));

    // The audit trail still tells them apart.
    let denied = w.server.audit_events("session_denied").await;
    let denied = serde_json::to_string(&denied.iter().map(|r| &r.payload).collect::<Vec<_>>()).unwrap();
    assert!(denied.contains("unknown_device"), "{denied}");
    assert!(denied.contains("not_authorized") || denied.contains("rule_mismatch"), "{denied}");
}

/// One connection holds at most ten session channels (OpenSSH's `MaxSessions`): an
/// eleventh, multiplexed over a real `ssh` control master, is refused at the bastion
/// without reaching the CA; a closed channel gives its slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_holds_at_most_ten_channels() {
    let w = World::start("15m").await;
    let control = format!("ControlPath={}", w.dir.path().join("mux").display());
    let master = w.spawn_ssh(&["-o", "ControlMaster=yes", "-o", &control, "-N", "bastion"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !w.dir.path().join("mux").exists() {
        assert!(Instant::now() < deadline, "the control master did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Only through the master: ssh falls back to a connection of its own when the master
    // is refused, which `ProxyCommand=false` stops.
    let via_master = ["-o", "ControlMaster=no", "-o", control.as_str(), "-o", "ProxyCommand=false", "bastion"];
    let mut sessions: Vec<_> = (0..10).map(|_| w.spawn_started_with(&via_master, "sleep 60")).collect();
    let opened = w.server.audit_events("session_opened").await.len();

    let eleventh = |w: &World| w.run("ssh", &[&via_master[..], &["echo eleventh"]].concat());
    let out = eleventh(&w);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Session open refused by peer"), "{}", text(&out));
    assert_eq!(w.server.audit_events("session_opened").await.len(), opened, "the refusal reached the CA");

    // One session ends: its slot is free again.
    let mut first = sessions.remove(0);
    first.kill().unwrap();
    first.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = eleventh(&w);
        if String::from_utf8_lossy(&out.stdout).trim() == "eleventh" {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was not given back: {}", text(&out));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for mut s in sessions.into_iter().chain([master]) {
        let _ = s.kill();
        let _ = s.wait();
    }
}

/// ssh-audit's findings on the bastion at `addr`: (algorithm kind, name, level) for
/// every `warn` or `fail` note, and the key exchange methods offered in order.
fn ssh_audit(addr: SocketAddr) -> (Vec<String>, Vec<String>) {
    let tool = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pytools/.venv/bin/ssh-audit");
    assert!(tool.exists(), "ssh-audit is missing: ./scripts/test.sh installs it into tests/pytools/.venv");
    let out = std::process::Command::new(&tool)
        .args(["-j", "-p", &addr.port().to_string(), &addr.ip().to_string()])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ssh-audit printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    let mut findings = Vec::new();
    for kind in ["kex", "key", "enc", "mac"] {
        for alg in report[kind].as_array().unwrap() {
            for level in ["warn", "fail"] {
                if alg["notes"].get(level).is_some() {
                    findings.push(format!("{kind} {} {level}", alg["algorithm"].as_str().unwrap()));
                }
            }
        }
    }
    let kex = report["kex"].as_array().unwrap().iter().map(|a| a["algorithm"].as_str().unwrap().to_owned()).collect();
    (findings, kex)
}

/// The default profile offers the post-quantum hybrid first and keeps X25519 for older
/// clients (ssh-audit's only warnings); the strict profile scores 0 fail, 0 warn, and a
/// stock client without mlkem768x25519 is refused at key exchange while one with it
/// reaches authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_strict_key_exchange_profile_leaves_ssh_audit_nothing_to_warn_about() {
    let door = FrontDoor::start(|c| c).await;
    let (findings, kex) = ssh_audit(door.addr);
    assert_eq!(kex.first().map(String::as_str), Some("mlkem768x25519-sha256"), "{kex:?}");
    assert!(findings.iter().all(|f| f.starts_with("kex curve25519-sha256") && f.ends_with(" warn")), "{findings:?}");
    assert!(kex.iter().any(|k| k == "curve25519-sha256"), "older clients keep a way in: {kex:?}");

    let strict = FrontDoor::start(|c| BastionConfig { kex_profile: KexProfile::Strict, ..c }).await;
    let (findings, kex) = ssh_audit(strict.addr);
    assert!(findings.is_empty(), "{findings:?}");
    assert!(!kex.iter().any(|k| k.starts_with("curve25519")), "{kex:?}");

    let client_kex = std::process::Command::new("ssh").args(["-Q", "kex"]).output().unwrap();
    let client_has_mlkem = String::from_utf8_lossy(&client_kex.stdout).lines().any(|k| k == "mlkem768x25519-sha256");
    let out = strict.ssh_from("127.0.0.1").await;
    let said = String::from_utf8_lossy(&out.stderr);
    if client_has_mlkem {
        assert!(!said.contains("no matching key exchange"), "{said}");
        assert!(said.contains("name the device"), "past key exchange and authentication: {said}");
    } else {
        assert!(said.contains("no matching key exchange method found"), "{said}");
    }
}

/// The live sessions as the CA lists them.
async fn live_sessions(w: &World) -> Vec<serde_json::Value> {
    let (status, body) = w.server.get_json(Some(&w.admin), "/v1/admin/sessions").await;
    assert!(status.is_success(), "{body}");
    body.as_array().unwrap().clone()
}

/// A stock `ssh` to `host` whose remote command floods output that this test never
/// reads: once the pipe to the test and ssh's own buffers are full, ssh stops reading
/// the channel and stops granting window, so the bastion's writes to it wait. A kill
/// must still end the session and release its lease within seconds.
async fn a_client_that_stops_reading_cannot_keep_its_session(w: &World, host: &str) {
    use std::io::Read;
    let mut child = w.spawn_ssh(&[host, "echo started; exec yes portcullis-ssh-flood"]);
    // Read up to the first line, byte by byte, and keep the pipe open without reading.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while first.last() != Some(&b'\n') && stdout.read(&mut byte).unwrap() == 1 {
        first.push(byte[0]);
    }
    assert_eq!(String::from_utf8_lossy(&first).trim(), "started", "{host}: the session did not start");
    let id = w.live_session_id().await;

    // Until the bastion cannot get rid of output any more: the byte count the CA hears
    // of stands still across heartbeats.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut still) = (0, 0);
    while still < 3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let live = live_sessions(w).await;
        let s = live.iter().find(|s| s["session_id"] == id.as_str()).expect("the session is live");
        let out = s["bytes_to_client"].as_u64().unwrap();
        still = if out == last && out > 0 { still + 1 } else { 0 };
        last = out;
        assert!(Instant::now() < deadline, "{host}: the output never backed up (at {out} bytes)");
    }

    let (status, body) = w.server.post_json(Some(&w.admin), &format!("/v1/admin/sessions/{id}/kill"), &json!({})).await;
    assert!(status.is_success(), "kill: {body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while live_sessions(w).await.iter().any(|s| s["session_id"] == id.as_str()) {
        assert!(Instant::now() < deadline, "{host}: a killed session kept its lease while its client did not read");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let closed = w.server.audit_events("session_closed").await;
    let ours = closed.iter().find(|r| r.payload["session_id"] == id.as_str()).expect("session_closed audited");
    assert_eq!(ours.payload["reason"], "admin_terminated", "{host}: {:?}", ours.payload);
    let _ = child.kill();
    let _ = child.wait();
    drop(stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_session_whose_client_stops_reading_still_ends_on_a_kill() {
    let w = World::start("1h").await;
    a_client_that_stops_reading_cannot_keep_its_session(&w, "bastion").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jump_session_whose_client_stops_reading_still_ends_on_a_kill() {
    let w = World::start("1h").await;
    a_client_that_stops_reading_cannot_keep_its_session(&w, "node").await;
}

/// Logged-in connections are capped per user: a certificate cannot hold the bastion's
/// file descriptors with connections that opened nothing (`ssh -N`), past the startup
/// limits, which end at login. A connection that ends gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_holds_a_bounded_number_of_logged_in_connections() {
    let mut door = FrontDoor::start(|c| BastionConfig { max_connections_per_user: 2, ..c }).await;
    let accepted = |e: &BastionEvent| matches!(e, BastionEvent::AuthAccepted { .. });
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(door.ssh_idle());
        door.next_event(accepted).await;
    }
    let out = door.ssh_from("127.0.0.1").await;
    assert!(!String::from_utf8_lossy(&out.stderr).contains("name the device"), "a third login: {out:?}");
    let refused = door
        .next_event(|e| matches!(e, BastionEvent::AuthRefused { reason: RefusalReason::TooManyConnections, .. }))
        .await;
    assert!(matches!(refused, BastionEvent::AuthRefused { .. }));

    // One leaves: its place is alice's again.
    drop(idle.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = door.ssh_from("127.0.0.1").await;
        if String::from_utf8_lossy(&out.stderr).contains("name the device") {
            break;
        }
        assert!(Instant::now() < deadline, "the place never came back: {out:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
