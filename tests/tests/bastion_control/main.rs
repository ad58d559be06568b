//! The CA's side of the bastion contract (`proto::bastion`), driven over HTTPS the way a
//! bastion and an agent drive it: service enrollment with tokens of the right kind,
//! session admission (each refusal with its positive control), caps that stay exact
//! under 200 parallel opens on SQLite and on PostgreSQL with two CA replicas, leases
//! reclaimed from a bastion that went quiet, close orders (admin kill, revocation,
//! policy change), and the audit trail.
//!
//! The CA runs in the test's process, served by its own router and TLS server loop
//! (`ServedCa`), so time is a `ManualClock` (lease expiry without sleeping) and two
//! replicas can share one PostgreSQL database.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_ca::{Ca, CaConfig, ManualClock};
use portcullis_policies::principal::node_principal;
use portcullis_policies::proof;
use portcullis_proto::bastion::*;
use portcullis_proto::{NodeRecord, UserCertRequest};
use portcullis_tests::ssh::{SoftSecurityKey, connection_proof_signed, ed25519_key, public_line, ssh_keygen_ok};
use portcullis_tests::{Postgres, ServedCa, TEST_PASSPHRASE, first_admin, sqlite_url};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const POLICY_BASE: &str = r#"
[[role]]
name = "admin"
permissions = ["certs.revoke", "users.manage", "audit.read", "policy.manage", "nodes.manage", "sessions.kill", "ca.manage"]

[[role]]
name = "ops"
logins = ["root", "deploy"]
targets = 'in:devices tags.env:lab'
permissions = ["certs.issue", "devices.console.open"]
max_cert_ttl = "8h"
extensions = ["permit-pty", "permit-port-forwarding"]
session = { max_per_user = 5, idle = "10m", absolute = "1h" }

[[rule]]
name = "lab-ssh"
purpose = "ssh_login"
targets = 'in:devices tags.env:lab'
scope = { agents = ["local", "edge1"] }
allowed_ports = [22, 2222]

# The fleet: twenty nodes, each behind its own agent (so in the cap test nothing but the
# user's own counter is shared between concurrent opens).
[[rule]]
name = "fleet-ssh"
purpose = "ssh_login"
targets = 'in:devices tags.fleet:yes'
scope = { partitions = ["fleet"] }

[[binding]]
group = "admins"
roles = ["admin"]

[[binding]]
group = "ops"
roles = ["ops"]
"#;

/// Removed by the policy-change test.
const POLICY_CONTRACT: &str = r#"
[[role]]
name = "contract"
logins = ["deploy"]
targets = 'in:devices tags.env:lab'
permissions = ["certs.issue"]
max_cert_ttl = "8h"

[[binding]]
group = "contractors"
roles = ["contract"]
"#;

const FLEET: usize = 20;
const PASSWORD: &str = "correct-horse-battery-staple";
const IP: &str = "192.0.2.7";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn session_id() -> String {
    hex::encode(portcullis_sshcert::random_bytes::<16>())
}

struct Fx {
    /// Replicas of one CA (one on SQLite; two on PostgreSQL).
    replicas: Vec<Arc<ServedCa>>,
    ca: Arc<Ca>,
    clock: ManualClock,
    admin: String,
    /// Bastion `b1`'s API token.
    bastion: String,
    policy_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fx {
    fn api(&self) -> &ServedCa {
        &self.replicas[0]
    }
}

async fn open_ca(url: &str, policy_dir: &Path, clock: &ManualClock) -> Arc<Ca> {
    let mut config = CaConfig::new(url.to_owned(), policy_dir.to_owned(), SecretString::from(TEST_PASSPHRASE));
    config.default_agent = Some("local".to_owned());
    Arc::new(Ca::open(config, Arc::new(clock.clone())).await.unwrap())
}

/// A CA (or `replicas` CAs on one database) with users alice, bob (group ops) and carol
/// (contractors), nodes pve01 (lab, default agent), pve02 (lab, edge1), lab09 (lab, an
/// agent outside the rule's scope) and prod01, and a registered bastion `b1`.
async fn fixture(db_url: Option<&str>, replicas: usize) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("policy.toml"), format!("{POLICY_BASE}{POLICY_CONTRACT}")).unwrap();
    let url = db_url.map(str::to_owned).unwrap_or_else(|| sqlite_url(dir.path()));
    let clock = ManualClock::new(now());
    let ca = open_ca(&url, &policy_dir, &clock).await;
    let mut served = vec![Arc::new(ServedCa::start(Arc::clone(&ca)).await)];
    for _ in 1..replicas {
        served.push(Arc::new(ServedCa::start(open_ca(&url, &policy_dir, &clock).await).await));
    }

    let admin = first_admin(&ca, "admins", IP).await;
    let caller = ca.identity().caller(&admin).await.unwrap();
    let users = ca.core().authorize::<proof::UsersManage>(&caller).unwrap();
    let pw = SecretString::from(PASSWORD);
    for (user, group) in [("alice", "ops"), ("bob", "ops"), ("carol", "contractors")] {
        ca.admin().add_user(&users, user, &[group.to_owned()], Some(&pw)).await.unwrap();
    }
    let nodes = ca.core().authorize::<proof::NodesManage>(&caller).unwrap();
    // Each node its own host key: a key pinned to one node registers no other.
    for (name, env, agent, address) in [
        ("pve01", "lab", None, "10.0.0.5"),
        ("pve02", "lab", Some("edge1"), "10.1.0.5"),
        ("lab09", "lab", Some("edge9"), "10.9.0.5"),
        ("prod01", "prod", None, "10.2.0.5"),
    ] {
        let node = NodeRecord {
            name: name.into(),
            addresses: vec![address.into()],
            agent: agent.map(str::to_owned),
            tags: [("env".to_owned(), env.to_owned())].into(),
            host_keys: vec![public_line(&ed25519_key())],
            ..Default::default()
        };
        ca.nodes().add_node(&nodes, &node).await.unwrap();
    }
    for i in 0..FLEET {
        let node = NodeRecord {
            name: format!("fleet-{i:02}"),
            addresses: vec![format!("10.3.0.{i}")],
            agent: Some(format!("edge-{i:02}")),
            partition: Some("fleet".to_owned()),
            tags: [("env".to_owned(), "lab".to_owned()), ("fleet".to_owned(), "yes".to_owned())].into(),
            host_keys: vec![public_line(&ed25519_key())],
            ..Default::default()
        };
        ca.nodes().add_node(&nodes, &node).await.unwrap();
    }
    let bastion = portcullis_tests::bastion_b1(&ca).await;
    Fx { replicas: served, ca, clock, admin, bastion, policy_dir, _dir: dir }
}

/// A certificate as a bastion names it to the CA: its serial and its digest; and, for a
/// user's own certificate, the user's key and certificate, with which each terminated
/// open below carries a real proof of a new connection (as a client logging in makes).
#[derive(Clone)]
struct Presented {
    serial: String,
    digest: Option<String>,
    holder: Option<Arc<(ssh_key::PrivateKey, ssh_key::Certificate)>>,
}

impl Presented {
    fn of(certificate: &str) -> Presented {
        let cert = ssh_key::Certificate::from_openssh(certificate.trim()).unwrap();
        Presented {
            serial: cert.serial().to_string(),
            digest: portcullis_sshcert::certificate_digest(&cert),
            holder: None,
        }
    }

    /// A serial with no certificate behind it (or a malformed one).
    fn serial_only(serial: &str) -> Presented {
        Presented { serial: serial.to_owned(), digest: None, holder: None }
    }

    /// A proof of a new connection (a fresh session identifier) logging in as
    /// `login%device`; `None` without the user's key.
    fn proof(&self, device: &str, login: &str) -> Option<ConnectionProof> {
        let (key, cert) = self.holder.as_deref()?;
        let session = portcullis_sshcert::random_bytes::<32>();
        Some(portcullis_tests::ssh::connection_proof(key, cert, &terminated_user(login, device), &session))
    }
}

/// Logs `user` in and has a certificate issued for a fresh key.
async fn user_cert(ca: &Ca, user: &str) -> Presented {
    let key = ed25519_key();
    let text = issue_for(ca, user, &public_line(&key)).await;
    let cert = ssh_key::Certificate::from_openssh(text.trim()).unwrap();
    Presented { holder: Some(Arc::new((key, cert))), ..Presented::of(&text) }
}

/// Logs `user` in and has a certificate issued for `public_key` (an OpenSSH line).
async fn issue_for(ca: &Ca, user: &str, public_key: &str) -> String {
    let login = ca.identity().login_password(user, None, &SecretString::from(PASSWORD), IP).await.unwrap();
    let caller = ca.identity().caller(login.token.expose()).await.unwrap();
    let request = UserCertRequest { public_key: public_key.to_owned(), ..Default::default() };
    ca.issuance().issue(&caller, &request, IP).await.unwrap().certificate
}

/// Runs `sql` with `cert`'s serial as `$1`: a row as an older CA or replica left it.
async fn on_certificate_row(fx: &Fx, sql: &'static str, cert: &Presented) {
    let serial = portcullis_ca::store::serial_to_db(cert.serial.parse().unwrap());
    sqlx::query(sql).bind(serial).execute(fx.ca.core().store().pool()).await.unwrap();
}

/// A terminated-mode open, with a proof of a new connection when the user's key is at
/// hand.
fn terminated(id: &str, cert: &Presented, device: &str, login: &str) -> Value {
    terminated_with(id, cert, device, login, cert.proof(device, login))
}

fn terminated_with(id: &str, cert: &Presented, device: &str, login: &str, proof: Option<ConnectionProof>) -> Value {
    json!({
        "session_id": id, "mode": "terminated", "cert_serial": cert.serial, "certificate_digest": cert.digest,
        "login": login, "device": device, "client_ip": IP, "session_public_key": public_line(&ed25519_key()),
        "connection_proof": proof,
    })
}

fn jump(id: &str, cert: &Presented, device: &str, port: Option<u16>) -> Value {
    json!({
        "session_id": id, "mode": "jump", "cert_serial": cert.serial, "certificate_digest": cert.digest,
        "device": device, "port": port, "client_ip": IP,
    })
}

async fn open(api: &ServedCa, bastion: &str, body: &Value) -> (StatusCode, Value) {
    api.post_json(Some(bastion), "/v1/bastion/sessions/open", body).await
}

/// Opens and expects a grant.
async fn granted(api: &ServedCa, bastion: &str, body: &Value) -> SessionGrant {
    let (status, v) = open(api, bastion, body).await;
    assert_eq!(status, StatusCode::OK, "open refused: {v}");
    serde_json::from_value(v).unwrap()
}

/// Opens and expects a denial with `reason`.
async fn denied(api: &ServedCa, bastion: &str, body: &Value, reason: &str) {
    let (status, v) = open(api, bastion, body).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "expected {reason}: {v}");
    assert_eq!(v["error"], "session_denied", "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(message.starts_with(&format!("{reason}: ")), "expected {reason}, got {message:?}");
}

async fn heartbeat(api: &ServedCa, bastion: &str, sessions: &[&str], agents: &[&str]) -> Vec<(String, CloseReason)> {
    let sessions: Vec<Value> =
        sessions.iter().map(|id| json!({"session_id": id, "bytes_from_client": 10, "bytes_to_client": 20})).collect();
    let (status, v) =
        api.post_json(Some(bastion), "/v1/bastion/heartbeat", &json!({"sessions": sessions, "agents": agents})).await;
    assert_eq!(status, StatusCode::OK, "heartbeat: {v}");
    let resp: HeartbeatResponse = serde_json::from_value(v).unwrap();
    let mut out: Vec<_> = resp.close.into_iter().map(|c| (c.session_id, c.reason)).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

async fn close(api: &ServedCa, bastion: &str, id: &str, reason: &str) {
    let body = json!({"session_id": id, "reason": reason, "bytes_from_client": 111, "bytes_to_client": 222,
                      "duration_ms": 3456});
    let (status, v) = api.post_json(Some(bastion), "/v1/bastion/sessions/close", &body).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "close: {v}");
}

async fn audit(ca: &Ca, event: &str) -> Vec<Value> {
    portcullis_tests::audit_payloads(ca, event).await
}

/// Registers bastion `b2` beside the fixture's `b1`; its API token.
async fn second_bastion(fx: &Fx) -> String {
    let key = public_line(&ed25519_key());
    fx.ca
        .services()
        .register_service(ServiceKind::Bastion, "b2", &key, None)
        .await
        .unwrap()
        .api_token
        .expose()
        .to_owned()
}

async fn counter(ca: &Ca, scope: &str) -> i64 {
    use sqlx::Row;
    sqlx::query("SELECT n FROM session_counters WHERE scope = $1")
        .bind(scope)
        .fetch_optional(ca.core().store().pool())
        .await
        .unwrap()
        .map_or(0, |r| r.try_get::<i64, _>("n").unwrap())
}

/// `ssh-keygen -L` of a certificate: (key id, principals, extensions, signing CA line).
fn inspect(cert: &str) -> (String, Vec<String>, Vec<String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c-cert.pub");
    std::fs::write(&path, format!("{cert}\n")).unwrap();
    let out = ssh_keygen_ok(&["-L", "-f", path.to_str().unwrap()]);
    let (mut key_id, mut signer) = (String::new(), String::new());
    let (mut principals, mut extensions) = (Vec::new(), Vec::new());
    let mut section = "";
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Key ID: ") {
            key_id = v.trim_matches('"').to_owned();
        } else if let Some(v) = t.strip_prefix("Signing CA: ") {
            signer = v.to_owned();
        }
        if t.ends_with(':') || t.contains(": ") {
            section = if t.starts_with("Principals:") {
                "p"
            } else if t.starts_with("Extensions:") {
                "e"
            } else {
                ""
            };
            continue;
        }
        match section {
            "p" => principals.push(t.to_owned()),
            "e" => extensions.push(t.to_owned()),
            _ => {}
        }
    }
    (key_id, principals, extensions, signer)
}

async fn create_token(api: &ServedCa, admin: &str, service: Option<&str>, uses: u32) -> String {
    let (status, v) = api
        .post_json(
            Some(admin),
            "/v1/admin/enroll-tokens",
            &json!({"ttl_seconds": 600, "uses": uses, "service": service}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

fn enroll_body(kind: &str, name: &str, key: &str, endpoint: Option<&str>) -> Value {
    json!({"kind": kind, "name": name, "public_key": key, "agent_endpoint": endpoint})
}

/// No API credential or enrollment token in any audit record.
async fn assert_no_secrets(ca: &Ca) {
    for r in ca.core().store().audit_records(0, 100_000).await.unwrap() {
        assert!(!r.payload.contains("pcs_") && !r.payload.contains("pce_"), "secret in audit record: {}", r.payload);
    }
}

impl Fx {
    fn clock_now(&self) -> u64 {
        portcullis_ca::Clock::now_unix(&self.clock)
    }
}

mod admission;
mod leases;
mod operations;
mod proofs;
mod services;
