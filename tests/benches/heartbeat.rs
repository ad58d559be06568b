//! What bastion heartbeats cost the CA at scale, measured in process (no TLS, no SSH, no
//! bastion): `PORTCULLIS_BENCH_LEASES` live jump sessions (default 10,000) of 50 users
//! over 200 nodes, all held by one bastion, then heartbeats listing every one of them —
//! the CA's whole per-heartbeat work: reading the leases with what the close decision
//! needs, rewriting the leases that are due, and deciding every session again under the
//! current policy.
//!
//! Run:
//!
//! ```text
//! cargo bench -p portcullis-tests --bench heartbeat
//! ```
//!
//! Three phases, `PORTCULLIS_BENCH_HEARTBEATS` heartbeats each (default 20):
//! - **idle**: no counter moved and no lease is due: reads and decisions only;
//! - **steady**: time advances half a second per heartbeat (the bastion's pace), so each
//!   lease is rewritten every few seconds, as in production;
//! - **busy**: every session's byte counters moved: every lease is rewritten.
//!
//! A bastion heartbeats every 500 ms, so a heartbeat that takes 50 ms of CPU is a tenth
//! of a core for that bastion. The bench prints time per heartbeat (p50, max) and per
//! listed session. It fails (non-zero exit) when a heartbeat orders a close: then the
//! sessions were not all live and the numbers would not mean what they say.

// Bench code: a failed expectation must stop the run loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_ca::{Ca, CaConfig, ManualClock};
use portcullis_policies::proof;
use portcullis_proto::bastion::{HeartbeatRequest, LiveSession, ServiceKind, SessionMode, SessionOpenRequest};
use portcullis_proto::{NodeRecord, UserCertRequest};
use portcullis_tests::ssh::{ed25519_key, public_line};
use portcullis_tests::{TEST_PASSPHRASE, bench_setting, first_admin, sqlite_url};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const USERS: usize = 50;
const NODES: usize = 200;
const PASSWORD: &str = "correct-horse-battery-staple";

const POLICY: &str = r#"
[[role]]
name = "admin"
permissions = ["users.manage", "nodes.manage"]

[[role]]
name = "ops"
logins = ["root"]
targets = 'in:devices tags.env:lab'
permissions = ["certs.issue"]
max_cert_ttl = "8h"
extensions = ["permit-pty", "permit-port-forwarding"]
session = { max_per_user = 100000, max_per_device = 100000, max_per_agent = 100000 }

[[rule]]
name = "lab-ssh"
purpose = "ssh_login"
targets = 'in:devices tags.env:lab'
scope = { agents = ["local"] }

[[binding]]
group = "admins"
roles = ["admin"]

[[binding]]
group = "ops"
roles = ["ops"]
"#;

fn main() {
    let leases = bench_setting("PORTCULLIS_BENCH_LEASES", 10_000).max(1);
    let heartbeats = bench_setting("PORTCULLIS_BENCH_HEARTBEATS", 20).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run(leases, heartbeats));
}

async fn run(leases: usize, heartbeats: usize) {
    let dir = tempfile::tempdir().unwrap();
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("policy.toml"), POLICY).unwrap();
    let start = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let clock = ManualClock::new(start);
    let mut config = CaConfig::new(sqlite_url(dir.path()), policy_dir, SecretString::from(TEST_PASSPHRASE));
    config.default_agent = Some("local".to_owned());
    let ca = Arc::new(Ca::open(config, Arc::new(clock.clone())).await.unwrap());

    let admin = first_admin(&ca, "admins", "192.0.2.1").await;
    let caller = ca.identity().caller(&admin).await.unwrap();
    let users_grant = ca.core().authorize::<proof::UsersManage>(&caller).unwrap();
    let nodes_grant = ca.core().authorize::<proof::NodesManage>(&caller).unwrap();
    let host_key = public_line(&ed25519_key());
    for i in 0..NODES {
        let node = NodeRecord {
            name: format!("pve{i:03}"),
            addresses: vec![format!("10.0.{}.{}", i / 250, i % 250 + 1)],
            tags: [("env".to_owned(), "lab".to_owned())].into(),
            host_keys: vec![host_key.clone()],
            ..Default::default()
        };
        ca.nodes().add_node(&nodes_grant, &node).await.unwrap();
    }
    let password = SecretString::from(PASSWORD);
    let mut certs = Vec::new();
    for i in 0..USERS {
        let user = format!("user{i:02}");
        let ip = format!("192.0.2.{}", i + 10);
        ca.admin().add_user(&users_grant, &user, &["ops".to_owned()], Some(&password)).await.unwrap();
        let login = ca.identity().login_password(&user, None, &password, &ip).await.unwrap();
        let caller = ca.identity().caller(login.token.expose()).await.unwrap();
        let request = UserCertRequest { public_key: public_line(&ed25519_key()), ..Default::default() };
        let text = ca.issuance().issue(&caller, &request, &ip).await.unwrap().certificate;
        let cert = ssh_key::Certificate::from_openssh(text.trim()).unwrap();
        certs.push((cert.serial().to_string(), portcullis_sshcert::certificate_digest(&cert)));
    }
    let token = ca
        .services()
        .register_service(ServiceKind::Bastion, "b1", &public_line(&ed25519_key()), None)
        .await
        .unwrap()
        .api_token
        .expose()
        .to_owned();
    let bastion = ca.services().service_caller(&token).await.unwrap();

    let opened = Instant::now();
    let mut ids = Vec::with_capacity(leases);
    for i in 0..leases {
        let (serial, digest) = &certs[i % USERS];
        let id = hex::encode(portcullis_sshcert::random_bytes::<16>());
        let request = SessionOpenRequest {
            session_id: id.clone(),
            mode: SessionMode::Jump,
            cert_serial: serial.clone(),
            certificate_digest: digest.clone(),
            login: None,
            device: format!("pve{:03}", (i / USERS) % NODES),
            port: Some(22),
            client_ip: "198.51.100.7".to_owned(),
            session_public_key: None,
            connection_proof: None,
        };
        ca.sessions().open_bastion_session(&bastion, &request).await.unwrap();
        ids.push(id);
    }
    let open_secs = opened.elapsed().as_secs_f64();
    println!(
        "heartbeat benchmark: {leases} live jump sessions, {USERS} users, {NODES} nodes, one bastion \
         (opened at {:.0}/s)",
        leases as f64 / open_secs
    );

    let mut moved = 0u64;
    for phase in ["idle", "steady", "busy"] {
        let mut times = Vec::with_capacity(heartbeats);
        for beat in 0..heartbeats {
            match phase {
                "steady" if beat % 2 == 1 => clock.set(ca.core().now() + 1),
                "busy" => moved += 1,
                _ => {}
            }
            let request = HeartbeatRequest {
                sessions: ids
                    .iter()
                    .map(|id| LiveSession { session_id: id.clone(), bytes_from_client: moved, bytes_to_client: moved })
                    .collect(),
                agents: vec!["local".to_owned()],
            };
            let took = Instant::now();
            let response = ca.sessions().heartbeat(&bastion, &request).await.unwrap();
            times.push(took.elapsed());
            assert!(response.close.is_empty(), "{phase}: {} sessions ordered closed", response.close.len());
        }
        report(phase, leases, &mut times);
    }
}

fn report(phase: &str, leases: usize, times: &mut [Duration]) {
    times.sort();
    let p50 = times[times.len() / 2];
    let max = times[times.len() - 1];
    // A bastion heartbeats every 500 ms: the share of one core this pace costs.
    let core = p50.as_secs_f64() / 0.5 * 100.0;
    println!(
        "  {phase:<6} heartbeat p50 {:>7.1} ms, max {:>7.1} ms, {:>5.2} µs per session, ≈{core:.0} % of a core at 2/s",
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        p50.as_secs_f64() * 1e6 / leases as f64,
    );
}
