//! Chaos, bounded in time: the split deployment — two CA replicas (`portcullisd ca`) and
//! two bastions on one PostgreSQL, one agent, a real `sshd` node — under continuous
//! certificate issuance from several clients spread over both replicas, with live stock
//! `ssh` sessions through both bastions; then a network partition between a bastion and
//! the replica it was using, and `kill -9` in turn of a CA replica, a bastion, the agent
//! and the PostgreSQL server, each started again.
//!
//! Afterwards: the audit chain verifies; every certificate a client was given is in
//! the database with its `cert_issued` record; every session that died has a
//! `session_closed` with a reason; sessions lived through the partition and the death
//! of a replica, of the other bastion and of the database; and no cap slot or lease leaked — a fresh session
//! is admitted up to the cap exactly, and the next one is refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_proto::AuditRecord;
use portcullis_tests::Postgres;
use portcullis_tests::bastion_world::{loopback_ip, text, wait_output};
use portcullis_tests::replica::CaReplica;
use portcullis_tests::server::{client_with_pin, read_audit, write_file};
use portcullis_tests::services::{
    Process, agent_connected, free_loopback_addr, spawn_agent, spawn_bastion_at, wait_line,
};
use portcullis_tests::ssh::{ed25519_key, public_line, write_key_pair};
use portcullis_tests::sshd::{NodeTrust, Sshd};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery staple";
const ADMIN_PASSWORD: &str = "chaos-admin-own-password";
/// Sessions a user may hold at once.
const CAP: usize = 3;

fn prod_policy() -> String {
    format!(
        r#"
[[role]]
name = "prod-root"
logins = ["root"]
targets = 'in:devices tags.env:prod'
permissions = ["certs.issue"]
max_cert_ttl = "1h"
extensions = ["permit-pty"]
session = {{ idle = "15m", absolute = "1h", max_per_user = {CAP} }}

[[binding]]
group = "ops"
roles = ["prod-root"]

[[rule]]
name = "via-edge1"
purpose = "ssh_login"
targets = 'in:devices tags.env:prod'
scope = {{ agents = ["edge1"] }}
"#
    )
}

/// A TCP forwarder to a CA replica that can be cut like a network partition: while
/// cut, nothing passes either way and nothing is closed (no reset, no refusal — the
/// peer just hears nothing, so its calls time out), new connections are taken and held.
struct Partition {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Partition {
    async fn to(target: &str) -> Partition {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = tokio::sync::watch::channel(false);
        let watch = cut.clone();
        let target = target.to_owned();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (target, mut cut) = (target.clone(), watch.subscribe());
                tokio::spawn(async move {
                    // Held in silence while cut; relayed while not (a cut ends the relay,
                    // but the sockets stay open until the connection's task ends).
                    until(&mut cut, false).await;
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else { return };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = until(&mut cut, true) => until(&mut cut, false).await,
                    }
                });
            }
        });
        Partition { addr, cut }
    }

    fn set(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// Until the partition is `cut` (or is gone).
async fn until(watch: &mut tokio::sync::watch::Receiver<bool>, cut: bool) {
    let _ = watch.wait_for(|c| *c == cut).await;
}

/// Certificates the issuing clients were given: serial → the replica that answered.
type Received = Arc<Mutex<BTreeMap<String, &'static str>>>;

/// One issuing client: signs in, then asks for certificates from both replicas in turn
/// until told to stop; refusals and unreachable replicas are expected during faults.
async fn issue_until(stop: Arc<AtomicBool>, replicas: Vec<(&'static str, String, String)>, received: Received) {
    let key = public_line(&ed25519_key());
    let clients: Vec<_> = replicas.iter().map(|(_, _, pin)| client_with_pin(pin)).collect();
    let mut token = None;
    let mut turn = 0usize;
    while !stop.load(Ordering::Relaxed) {
        turn += 1;
        let (name, url, _) = &replicas[turn % replicas.len()];
        let client = &clients[turn % replicas.len()];
        let Some(bearer) = token.clone() else {
            let login = client
                .post(format!("{url}/v1/auth/login"))
                .json(&json!({ "username": "alice", "password": PASSWORD }))
                .send()
                .await;
            if let Ok(resp) = login
                && resp.status() == StatusCode::OK
            {
                token = resp.json::<Value>().await.ok().and_then(|v| v["token"].as_str().map(str::to_owned));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let issued = client
            .post(format!("{url}/v1/certs/user"))
            .bearer_auth(&bearer)
            .json(&json!({ "public_key": key, "ttl_seconds": 600 }))
            .send()
            .await;
        if let Ok(resp) = issued
            && resp.status() == StatusCode::OK
            && let Ok(body) = resp.json::<Value>().await
        {
            received.lock().unwrap().insert(body["serial"].as_str().unwrap().to_owned(), *name);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `ssh HOST 'echo started; sleep 600'` in the background, returned once it runs.
fn live_session(config: &Path, host: &str) -> Child {
    let mut child = Command::new("ssh")
        .arg("-F")
        .arg(config)
        .args([host, "echo started; exec sleep 600"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    if line.trim() != "started" {
        let _ = child.kill();
        let (out, _) = wait_output(child, Duration::from_secs(10));
        panic!("session through {host} did not start (first line {line:?}): {}", text(&out));
    }
    child
}

fn alive(child: &mut Child) -> bool {
    child.try_wait().unwrap().is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_deployment_survives_kill_9_of_each_part_and_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let pg = Postgres::start().unwrap();
    let database = pg.create_database("chaos").unwrap();
    let policy = root.path().join("policy");
    std::fs::create_dir_all(&policy).unwrap();
    std::fs::write(policy.join("default.toml"), portcullis_ca::policy_files::DEFAULT_POLICY).unwrap();
    std::fs::write(policy.join("prod.toml"), prod_policy()).unwrap();

    // Two replicas started together on the empty database: one bootstrap between them.
    let mut ca1 = CaReplica::new("ca1", root.path(), &database, &policy);
    let mut ca2 = CaReplica::new("ca2", root.path(), &database, &policy);
    ca1.start();
    ca2.start();
    ca1.wait_ready().await;
    ca2.wait_ready().await;
    let passwords: Vec<String> = [&ca1, &ca2]
        .iter()
        .filter_map(|r| std::fs::read_to_string(r.dir.join("data/initial-admin-password")).ok())
        .collect();
    assert_eq!(passwords.len(), 1, "exactly one replica bootstraps the first administrator");
    let body = json!({ "username": "admin", "password": passwords[0].trim(), "new_password": ADMIN_PASSWORD });
    let (status, body) = ca2.post(None, "/v1/auth/login", &body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let admin = body["token"].as_str().unwrap().to_owned();
    let body = json!({ "username": "alice", "groups": ["ops"], "password": PASSWORD });
    let (status, body) = ca1.post(Some(&admin), "/v1/admin/users", &body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ca_urls = format!("{},{}", ca1.url, ca2.url);
    let ca_pins = format!("{},{}", ca1.pin, ca2.pin);
    // b1 reaches ca1 (its first choice) through a link that the test can cut.
    let to_ca1 = Partition::to(ca1.url.trim_start_matches("https://")).await;
    let b1_ca_urls = format!("https://{},{}", to_ca1.addr, ca2.url);

    // Two bastions and the agent, enrolled through either replica.
    let mut bastions = Vec::new();
    for name in ["b1", "b2"] {
        let state = root.path().join(name);
        let (ssh, agents) = (free_loopback_addr(), free_loopback_addr());
        let token = service_token_at(&ca1, &admin, "bastion").await;
        let urls = if name == "b1" { &b1_ca_urls } else { &ca_urls };
        let child = spawn_bastion_at(&ssh, &agents, urls, &ca_pins, name, &state, Some(&token), &[]);
        wait_line(&state, &format!("Portcullis bastion {name} listening on "));
        bastions.push((name, state, ssh, agents, Process(Some(child))));
    }
    let edge1 = root.path().join("edge1");
    let token = service_token_at(&ca2, &admin, "agent").await;
    let mut agent = Process(Some(spawn_agent(&ca_urls, &ca_pins, "edge1", &edge1, Some(&token), &[])));
    let agent_log = edge1.with_extension("log");
    for b in ["b1", "b2"] {
        wait_agent(&ca1, &admin, b, &agent_log).await;
    }

    // The node, trusting the CA's user keys, its host key pinned.
    let ip = loopback_ip();
    let node = json!({ "name": "pve01", "addresses": [ip], "tags": { "env": "prod" }, "agent": "edge1" });
    let (status, body) = ca1.post(Some(&admin), "/v1/admin/nodes", &node).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, principals) = ca1.get(&admin, "/v1/nodes/pve01/principals").await;
    let keys = client_with_pin(&ca1.pin).get(format!("{}/v1/ca/user/keys", ca1.url)).send().await.unwrap();
    let trust = NodeTrust {
        trusted_user_ca_keys: keys.text().await.unwrap(),
        principals: serde_json::from_value(principals["principals"].clone()).unwrap(),
        krl: None,
    };
    let sshd = Sshd::start_configured(&trust, &ip, 22, None, "");
    let pin = json!({ "host_keys": [sshd.host_public_key()] });
    let (status, body) = ca2.call(Method::PUT, Some(&admin), "/v1/admin/nodes/pve01", Some(&pin)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // alice's certificate and an ssh config with one host per bastion.
    let key = ed25519_key();
    let key_path = write_key_pair(root.path(), "id", &key);
    let (status, body) = ca1.post(None, "/v1/auth/login", &json!({ "username": "alice", "password": PASSWORD })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let alice = body["token"].as_str().unwrap().to_owned();
    let (status, body) = ca2
        .post(Some(&alice), "/v1/certs/user", &json!({ "public_key": public_line(&key), "ttl_seconds": 3600 }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cert = write_file(root.path(), "id-cert.pub", body["certificate"].as_str().unwrap());
    let mut config = String::new();
    for (name, _, ssh, _, _) in &bastions {
        let (host, port) = ssh.rsplit_once(':').unwrap();
        config += &format!(
            "Host {name}\n  HostName {host}\n  Port {port}\n  User root%pve01\n  IdentityFile {}\n  CertificateFile {}\n\
             \x20 IdentitiesOnly yes\n  IdentityAgent none\n  BatchMode yes\n  StrictHostKeyChecking no\n\
             \x20 UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  ConnectTimeout 20\n",
            key_path.display(),
            cert.display()
        );
    }
    let ssh_config = write_file(root.path(), "ssh_config", config);

    // Continuous issuance from three clients over both replicas.
    let stop = Arc::new(AtomicBool::new(false));
    let received: Received = Arc::default();
    let replicas = vec![("ca1", ca1.url.clone(), ca1.pin.clone()), ("ca2", ca2.url.clone(), ca2.pin.clone())];
    let issuers: Vec<_> =
        (0..3).map(|_| tokio::spawn(issue_until(Arc::clone(&stop), replicas.clone(), Arc::clone(&received)))).collect();

    let mut on_b1 = live_session(&ssh_config, "b1");
    let mut on_b2 = live_session(&ssh_config, "b2");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1. A partition between b1 and ca1, where its calls were going: the first call
    // into the silence times out, later ones go to ca2; the session goes on, and one
    // opened during the partition works.
    to_ca1.set(true);
    // Calls time out after 10 s; every one after the first timeout starts at ca2. When
    // the first call goes into the silence depends on the heartbeat's timing (later on
    // a loaded machine), so wait for its timeout to show rather than a fixed time.
    let b1_log = bastions[0].1.with_extension("log");
    let felt = Instant::now() + Duration::from_secs(40);
    while !std::fs::read_to_string(&b1_log).unwrap().contains("heartbeat failed") {
        let log = std::fs::read_to_string(&b1_log).unwrap();
        assert!(Instant::now() < felt, "the partition was not felt:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut during_partition = live_session(&ssh_config, "b1");
    assert!(alive(&mut on_b1), "a partition from one replica ended a session");
    to_ca1.set(false);
    let _ = during_partition.kill();
    let _ = during_partition.wait();

    // 2. A CA replica dies: both bastions move to the other; their sessions go on.
    ca1.kill_9();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(alive(&mut on_b1) && alive(&mut on_b2), "a replica's death ended sessions");
    ca1.start();
    ca1.wait_ready().await;

    // 3. A bastion dies: its session ends, the other bastion's goes on.
    bastions[1].4.kill_9();
    wait_output(on_b2, Duration::from_secs(20));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(alive(&mut on_b1), "the surviving bastion's session ended");
    {
        let (name, state, ssh, agents, process) = &mut bastions[1];
        process.0 = Some(spawn_bastion_at(ssh, agents, &ca_urls, &ca_pins, name, state, None, &[]));
    }
    wait_agent(&ca2, &admin, "b2", &agent_log).await;

    // 4. The agent dies: its sessions end with the reason; it comes back by itself.
    agent.kill_9();
    let (out, _) = wait_output(on_b1, Duration::from_secs(20));
    assert!(String::from_utf8_lossy(&out.stderr).contains("edge agent disconnected"), "{}", text(&out));
    agent.0 = Some(spawn_agent(&ca_urls, &ca_pins, "edge1", &edge1, None, &[]));
    for b in ["b1", "b2"] {
        wait_agent(&ca1, &admin, b, &agent_log).await;
    }

    // 5. The database dies and comes back: a live session rides it out.
    let mut through_db_crash = live_session(&ssh_config, "b1");
    pg.kill_9().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.restart().unwrap();
    ca1.wait_ready().await;
    ca2.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(alive(&mut through_db_crash), "a session ended over a short database outage");
    stop.store(true, Ordering::Relaxed);
    for issuer in issuers {
        issuer.await.unwrap();
    }
    let _ = through_db_crash.kill();
    let _ = through_db_crash.wait();

    // The audit chain verifies, on either replica.
    let (status, body) = ca2.get(&admin, "/v1/admin/audit/verify").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ok"], true, "{body}");

    // Every certificate a client received is stored, with its audit record.
    let received = received.lock().unwrap().clone();
    assert!(received.len() > 50, "too little issuance to mean anything: {}", received.len());
    assert!(received.len() < 10_000, "more than one listing holds: {}", received.len());
    assert!(received.values().any(|r| *r == "ca1") && received.values().any(|r| *r == "ca2"));
    // The listing is bounded (newest 500 unless asked): ask for all of them.
    let (status, stored) = ca1.get(&admin, "/v1/admin/certs?user=alice&limit=10000").await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    let stored: BTreeSet<&str> = stored.as_array().unwrap().iter().map(|c| c["serial"].as_str().unwrap()).collect();
    let audit = audit_log(&ca2, &admin).await;
    let audited: BTreeSet<String> = audit
        .iter()
        .filter(|r| r.event == "cert_issued")
        .map(|r| r.payload["serial"].as_str().unwrap().to_owned())
        .collect();
    for serial in received.keys() {
        assert!(stored.contains(serial.as_str()), "certificate {serial} was handed out but not stored");
        assert!(audited.contains(serial), "certificate {serial} was handed out without its audit record");
    }

    // No lease outlives its session (the dead bastion's are reclaimed by the CA's
    // timer), and every session that ended has its close with a reason.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, live) = ca1.get(&admin, "/v1/admin/sessions").await;
        assert_eq!(status, StatusCode::OK, "{live}");
        if live.as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "leases left over: {live}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let audit = audit_log(&ca2, &admin).await;
    let closed: BTreeMap<&str, &str> = audit
        .iter()
        .filter(|r| r.event == "session_closed")
        .map(|r| (r.payload["session_id"].as_str().unwrap(), r.payload["reason"].as_str().unwrap()))
        .collect();
    let opened: Vec<&str> = audit
        .iter()
        .filter(|r| r.event == "session_opened")
        .map(|r| r.payload["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(opened.len(), 4, "{opened:?}");
    let reasons: Vec<&str> = opened
        .iter()
        .map(|id| *closed.get(id).unwrap_or_else(|| panic!("session {id} has no session_closed: {closed:?}")))
        .collect();
    // The dead bastion's session is reclaimed, the agent's is closed by its bastion.
    assert!(reasons.contains(&"lease_lost") && reasons.contains(&"agent_disconnect"), "{reasons:?}");
    eprintln!(
        "chaos: {} certificates handed out ({} by ca1), all stored and audited; sessions closed as {reasons:?}",
        received.len(),
        received.values().filter(|r| **r == "ca1").count()
    );

    // No slot leaked: exactly CAP sessions are admitted, over both bastions; one more is not.
    let mut fresh: Vec<Child> = (0..CAP).map(|i| live_session(&ssh_config, ["b1", "b2"][i % 2])).collect();
    let over =
        Command::new("ssh").arg("-F").arg(&ssh_config).args(["-o", "LogLevel=INFO", "b1", "true"]).output().unwrap();
    assert!(String::from_utf8_lossy(&over.stderr).contains("too many concurrent sessions"), "{}", text(&over));
    for child in &mut fresh {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(sshd);
}

async fn service_token_at(ca: &CaReplica, admin: &str, kind: &str) -> String {
    let body = json!({ "ttl_seconds": 600, "uses": 1, "service": kind });
    let (status, body) = ca.post(Some(admin), "/v1/admin/enroll-tokens", &body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// Until the CA lists agent `edge1` as connected to `bastion`.
async fn wait_agent(ca: &CaReplica, admin: &str, bastion: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (_, body) = ca.get(admin, "/v1/admin/agents").await;
        if agent_connected(&body, "edge1", Some(bastion)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "edge1 never connected to {bastion}: {body}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The whole audit log, oldest first.
async fn audit_log(ca: &CaReplica, admin: &str) -> Vec<AuditRecord> {
    read_audit(move |path| async move { ca.get(admin, &path).await }).await
}
