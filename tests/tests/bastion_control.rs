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
    let host_key = public_line(&ed25519_key());
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
            host_keys: vec![host_key.clone()],
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
            host_keys: vec![host_key.clone()],
            ..Default::default()
        };
        ca.nodes().add_node(&nodes, &node).await.unwrap();
    }
    let bastion = ca
        .services()
        .register_service(ServiceKind::Bastion, "b1", &public_line(&ed25519_key()), Some("127.0.0.1:2223"))
        .await
        .unwrap()
        .api_token
        .expose()
        .to_owned();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_enroll_only_with_tokens_of_their_kind() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let agent_private = ed25519_key();
    let agent_key = public_line(&agent_private);
    let node_token = create_token(api, &fx.admin, None, 5).await;
    let agent_token = create_token(api, &fx.admin, Some("agent"), 1).await;
    let bastion_token = create_token(api, &fx.admin, Some("bastion"), 5).await;

    // A node token cannot enroll a service; a bastion token cannot enroll an agent.
    for token in [&node_token, &bastion_token] {
        let (status, v) =
            api.post_json(Some(token), "/v1/services/enroll", &enroll_body("agent", "edge1", &agent_key, None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    }
    // A service token cannot enroll a node.
    let node = json!({"facts": {"name": "n1", "host_keys": [public_line(&ed25519_key())]},
                      "verification_public_key": public_line(&ed25519_key())});
    let (status, v) = api.post_json(Some(&agent_token), "/v1/enroll", &node).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    // Control: the node token enrolls a node.
    let (status, v) = api.post_json(Some(&node_token), "/v1/enroll", &node).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // Control: the agent token enrolls the agent; the answer carries an API credential
    // and an internal certificate for the agent's key.
    let (status, v) = api
        .post_json(Some(&agent_token), "/v1/services/enroll", &enroll_body("agent", "edge1", &agent_key, None))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let enrolled: ServiceEnrollResponse = serde_json::from_value(v).unwrap();
    assert!(enrolled.api_token.expose().starts_with("pcs_"));
    let (key_id, principals, extensions, signer) = inspect(&enrolled.certificate);
    assert_eq!(key_id, "service:agent:edge1");
    assert_eq!(principals, ["agent:edge1"]);
    assert!(extensions.is_empty() || extensions == ["(none)"], "{extensions:?}");
    let internal = fx.ca.core().trusted_keys(portcullis_ca::keys::KeyPurpose::Internal);
    assert_eq!(enrolled.internal_ca_keys, internal);
    let internal_fp =
        portcullis_sshcert::fingerprint(ssh_key::PublicKey::from_openssh(internal.trim()).unwrap().key_data());
    assert!(signer.contains(&internal_fp), "signed by {signer}, internal key is {internal_fp}");

    // The one-use token is spent.
    let (status, _) = api
        .post_json(Some(&agent_token), "/v1/services/enroll", &enroll_body("agent", "edge1", &agent_key, None))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Re-enrolling the same name: with another key → 409 (token not spent); with the
    // same *public* key but no proof of holding the private one (anyone can read a
    // service's public key) → 409; with a proof bound to another token → 409; with the
    // key's proof → a new API credential, and the old one stops working.
    let again = create_token(api, &fx.admin, Some("agent"), 1).await;
    let other_key = public_line(&ed25519_key());
    let (status, v) =
        api.post_json(Some(&again), "/v1/services/enroll", &enroll_body("agent", "edge1", &other_key, None)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let (status, v) =
        api.post_json(Some(&again), "/v1/services/enroll", &enroll_body("agent", "edge1", &agent_key, None)).await;
    assert_eq!(status, StatusCode::CONFLICT, "a public key alone re-enrolled a service: {v}");
    let proven = |token: &str| {
        let mut request: portcullis_proto::bastion::ServiceEnrollRequest =
            serde_json::from_value(enroll_body("agent", "edge1", &agent_key, None)).unwrap();
        let timestamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let message = request.proof_message(token, timestamp);
        let namespace = portcullis_proto::bastion::ServiceProof::NAMESPACE;
        let signature = agent_private.sign(namespace, ssh_key::HashAlg::Sha512, message.as_bytes()).unwrap();
        let signature = signature.to_pem(ssh_key::LineEnding::LF).unwrap();
        request.proof = Some(portcullis_proto::bastion::ServiceProof { timestamp, signature });
        serde_json::to_value(request).unwrap()
    };
    let (status, v) = api.post_json(Some(&again), "/v1/services/enroll", &proven(&agent_token)).await;
    assert_eq!(status, StatusCode::CONFLICT, "a proof for another token was accepted: {v}");
    let (status, v) = api.post_json(Some(&again), "/v1/services/enroll", &proven(&again)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let renewed: ServiceEnrollResponse = serde_json::from_value(v).unwrap();
    let (status, _) = api.get_json(Some(enrolled.api_token.expose()), "/v1/services/agent/targets").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the old API credential still works");
    let agent = renewed.api_token.expose().to_owned();

    // A bastion with its endpoint; the directory lists it for agents.
    let bastion_key = public_line(&ed25519_key());
    let (status, v) = api
        .post_json(
            Some(&bastion_token),
            "/v1/services/enroll",
            &enroll_body("bastion", "b2", &bastion_key, Some("bastion.example:2223")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let b2: ServiceEnrollResponse = serde_json::from_value(v).unwrap();
    let (status, v) = api.get_json(Some(&agent), "/v1/services/bastions").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let dir: Vec<BastionDirectoryEntry> = serde_json::from_value(v).unwrap();
    let entry = dir.iter().find(|e| e.name == "b2").expect("b2 in the directory");
    assert_eq!(entry.agent_endpoint, "bastion.example:2223");
    assert_eq!(entry.host_key, bastion_key);
    // Invalid requests are refused before any token is spent.
    for body in [
        enroll_body("bastion", "B!", &bastion_key, None),
        enroll_body("bastion", "b3", &bastion_key, Some("no-port")),
        enroll_body("agent", "a3", &agent_key, Some("x:22")),
    ] {
        let (status, v) = api.post_json(Some(&bastion_token), "/v1/services/enroll", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
    }

    // Credentials of one kind are refused on the other kind's endpoints; unknown → 401.
    let (status, v) =
        api.post_json(Some(&agent), "/v1/bastion/heartbeat", &json!({"sessions": [], "agents": []})).await;
    assert_eq!((status, v["error"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{v}");
    let (status, _) = api
        .post_json(
            Some(&agent),
            "/v1/bastion/sessions/open",
            &jump(&session_id(), &Presented::serial_only("1"), "pve01", None),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.get_json(Some(b2.api_token.expose()), "/v1/services/agent/targets").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) =
        api.post_json(Some("pcs_unknown"), "/v1/bastion/heartbeat", &json!({"sessions": [], "agents": []})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) =
        api.post_json(Some(&fx.admin), "/v1/bastion/heartbeat", &json!({"sessions": [], "agents": []})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a user's API session is not a service credential");
    // Control: the bastion's own credential works there.
    let (status, v) = api
        .post_json(Some(b2.api_token.expose()), "/v1/bastion/heartbeat", &json!({"sessions": [], "agents": ["edge1"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // A bastion with thousands of live sessions heartbeats in one request (far past the
    // API's 64 KiB default body limit, which once cut heartbeats off near 700 sessions);
    // sessions without a lease are answered `lease_lost`.
    let many: Vec<String> = (0..5000).map(|_| session_id()).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let orders = heartbeat(api, b2.api_token.expose(), &many, &["edge1"]).await;
    assert_eq!(orders.len(), 5000);
    assert!(orders.iter().all(|(_, reason)| *reason == CloseReason::LeaseLost));

    // Targets: edge1 serves pve02 only; the default agent (`local`) serves the nodes
    // assigned to no agent.
    let (status, v) = api.get_json(Some(&agent), "/v1/services/agent/targets").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let targets: Vec<AgentTarget> = serde_json::from_value(v).unwrap();
    assert_eq!(targets.iter().map(|t| t.device.as_str()).collect::<Vec<_>>(), ["pve02"]);
    assert_eq!((targets[0].addresses.clone(), targets[0].port), (vec!["10.1.0.5".to_owned()], 22));
    let local = fx
        .ca
        .services()
        .register_service(ServiceKind::Agent, "local", &public_line(&ed25519_key()), None)
        .await
        .unwrap();
    let (_, v) = api.get_json(Some(local.api_token.expose()), "/v1/services/agent/targets").await;
    let targets: Vec<AgentTarget> = serde_json::from_value(v).unwrap();
    let mut names: Vec<_> = targets.iter().map(|t| t.device.as_str()).collect();
    names.sort();
    assert_eq!(names, ["n1", "prod01", "pve01"]);

    // Certificate renewal.
    let (status, v) = api.post_json(Some(&agent), "/v1/services/certificate", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let renewal: ServiceCertificateResponse = serde_json::from_value(v).unwrap();
    assert_eq!(inspect(&renewal.certificate).1, ["agent:edge1"]);
    assert!(renewal.valid_before > now());

    // Admin view: agents with last contact and the bastions reporting them connected.
    let (status, v) = api.get_json(Some(&fx.admin), "/v1/admin/agents").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let agents: Vec<ServiceInfo> = serde_json::from_value(v).unwrap();
    let edge1 = agents.iter().find(|a| a.name == "edge1").unwrap();
    assert_eq!(edge1.connected_to, ["b2"]);
    assert!(edge1.last_seen.is_some());
    let (_, v) = api.get_json(Some(&fx.admin), "/v1/admin/bastions").await;
    let bastions: Vec<ServiceInfo> = serde_json::from_value(v).unwrap();
    assert_eq!(bastions.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), ["b1", "b2"]);

    // Audit: enrollments and refusals, and no credential anywhere in the trail.
    let enrolled = audit(&fx.ca, "service_enrolled").await;
    assert!(
        enrolled.iter().any(|e| e["name"] == "edge1"
            && e["kind"] == "agent"
            && e["actor"].as_str().unwrap().starts_with("token:"))
    );
    let refused: Vec<String> = audit(&fx.ca, "service_enroll_refused")
        .await
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect();
    for reason in ["token_invalid", "name_taken", "invalid_request"] {
        assert!(refused.iter().any(|r| r == reason), "{reason} not audited: {refused:?}");
    }
    assert_no_secrets(&fx.ca).await;

    // A revoked service key is no caller at all (until 2026-12-05 only its certificate
    // renewal was refused: a revoked bastion kept heartbeating, claiming Proxmox VE
    // credentials and opening sessions).
    let beat = json!({"sessions": [], "agents": ["edge1"]});
    let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/revoke", &json!({"public_key": bastion_key})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, _) = api.post_json(Some(b2.api_token.expose()), "/v1/bastion/heartbeat", &beat).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a revoked bastion still heartbeats");
    let (status, _) = api.post_json(Some(b2.api_token.expose()), "/v1/bastion/pve/claim", &json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a revoked bastion still claims");
    let (status, _) = api.get_json(Some(&agent), "/v1/services/agent/targets").await;
    assert_eq!(status, StatusCode::OK, "another service is not affected");

    // Enrolling a bastion or an agent takes `ca.manage` besides `nodes.manage`: it is
    // handed the Proxmox VE tokens and discovery keys of its agents.
    let enroller = "[[role]]\nname = \"enroller\"\npermissions = [\"nodes.manage\"]\n\
                    [[binding]]\nuser = \"carol\"\nroles = [\"enroller\"]\n";
    std::fs::write(fx.policy_dir.join("policy.toml"), format!("{POLICY_BASE}{POLICY_CONTRACT}{enroller}")).unwrap();
    let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/policy/reload", &json!({})).await;
    assert!(status.is_success(), "{v}");
    let login = fx.ca.identity().login_password("carol", None, &SecretString::from(PASSWORD), IP).await.unwrap();
    let carol = login.token.expose().to_owned();
    for service in ["bastion", "agent"] {
        let body = json!({"ttl_seconds": 600, "uses": 1, "service": service});
        let (status, v) = api.post_json(Some(&carol), "/v1/admin/enroll-tokens", &body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{service}: {v}");
    }
    create_token(api, &carol, None, 1).await;
}

/// No API credential or enrollment token in any audit record.
async fn assert_no_secrets(ca: &Ca) {
    for r in ca.core().store().audit_records(0, 100_000).await.unwrap() {
        assert!(!r.payload.contains("pcs_") && !r.payload.contains("pce_"), "secret in audit record: {}", r.payload);
    }
}

/// Issue 20: a bastion taken over holds real bastion credentials and every certificate
/// it has seen, and asks the CA for onward certificates. Without the user's own
/// signature over a live connection it gets none; each attempt is refused and audited,
/// and a real proof still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_bastion_gets_no_onward_certificate_without_the_users_live_proof() {
    no_onward_certificate_without_a_live_proof(&fixture(None, 1).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_bastion_gets_no_onward_certificate_without_the_users_live_proof_on_postgres() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    no_onward_certificate_without_a_live_proof(&fixture(Some(&pg.url()), 2).await).await;
}

async fn no_onward_certificate_without_a_live_proof(fx: &Fx) {
    let api = fx.api();
    let alice = user_cert(&fx.ca, "alice").await;
    let bob = user_cert(&fx.ca, "bob").await;
    let (key, cert) = alice.holder.as_deref().unwrap();
    let connection = portcullis_sshcert::random_bytes::<32>();
    let proof = |user: &str| portcullis_tests::ssh::connection_proof(key, cert, user, &connection);
    let real = proof("root%pve01");

    // Alice connects: her proof opens a session (and, on the same connection, another).
    let first = session_id();
    let grant = granted(api, &fx.bastion, &terminated_with(&first, &alice, "pve01", "root", Some(real.clone()))).await;
    assert!(grant.session_certificate.is_some());
    granted(api, &fx.bastion, &terminated_with(&session_id(), &alice, "pve01", "root", Some(real.clone()))).await;

    // Her certificate alone, as a bastion has it: nothing.
    let missing = terminated_with(&session_id(), &alice, "pve01", "root", None);
    denied(api, &fx.bastion, &missing, deny_reason::CONNECTION_PROOF_MISSING).await;
    // Her live proof for another node or login than she asked for.
    let elsewhere = terminated_with(&session_id(), &alice, "pve02", "root", Some(real.clone()));
    denied(api, &fx.bastion, &elsewhere, deny_reason::CONNECTION_PROOF_INVALID).await;
    let other_login = terminated_with(&session_id(), &alice, "pve01", "deploy", Some(real.clone()));
    denied(api, &fx.bastion, &other_login, deny_reason::CONNECTION_PROOF_INVALID).await;
    // A proof the bastion forges with its own key for a new session, or one that says
    // pve02 but is signed over pve01.
    let own_key = ed25519_key();
    let forged = portcullis_tests::ssh::connection_proof(&own_key, cert, "root%pve02", &[9; 32]);
    let forged_open = terminated_with(&session_id(), &alice, "pve02", "root", Some(forged));
    denied(api, &fx.bastion, &forged_open, deny_reason::CONNECTION_PROOF_INVALID).await;
    let retargeted =
        portcullis_proto::bastion::ConnectionProof { request: proof("root%pve02").request, ..real.clone() };
    let retargeted_open = terminated_with(&session_id(), &alice, "pve02", "root", Some(retargeted));
    denied(api, &fx.bastion, &retargeted_open, deny_reason::CONNECTION_PROOF_INVALID).await;
    // Alice's proof under Bob's certificate.
    let bobs = terminated_with(&session_id(), &bob, "pve01", "root", Some(real.clone()));
    denied(api, &fx.bastion, &bobs, deny_reason::CONNECTION_PROOF_INVALID).await;
    // Another bastion replaying her live proof (to another CA replica, when there are two).
    let b2 = second_bastion(fx).await;
    let replay = terminated_with(&session_id(), &alice, "pve01", "root", Some(real.clone()));
    denied(fx.replicas.last().unwrap(), &b2, &replay, deny_reason::CONNECTION_PROOF_REPLAYED).await;

    // A certificate row from before the CA kept digests is known by serial: the bastion
    // certifies its own key under Carol's serial and signs the proof with it. Refused
    // (the certified key is not hers).
    let carol = user_cert(&fx.ca, "carol").await;
    on_certificate_row(fx, "UPDATE certificates SET cert_digest = NULL WHERE serial = $1", &carol).await;
    let own_ca = ed25519_key();
    let now = fx.clock_now();
    let mut b =
        ssh_key::certificate::Builder::new([7u8; 32], own_key.public_key().key_data().clone(), now - 60, now + 3600)
            .unwrap();
    b.serial(carol.serial.parse().unwrap()).unwrap();
    b.key_id("carol").unwrap();
    b.cert_type(ssh_key::certificate::CertType::User).unwrap();
    b.valid_principal("deploy%pve01").unwrap();
    let own_cert = b.sign(&own_ca).unwrap();
    let own_proof = portcullis_tests::ssh::connection_proof(&own_key, &own_cert, "deploy%pve01", &[8; 32]);
    let digestless = Presented { digest: None, ..carol.clone() };
    let own_open = terminated_with(&session_id(), &digestless, "pve01", "deploy", Some(own_proof));
    denied(api, &fx.bastion, &own_open, deny_reason::CONNECTION_PROOF_INVALID).await;

    // Later on her connection, another session: it ends when the first one must (an
    // hour after her first open), not an hour from now — a connection's sessions do not
    // pass her proof on from one to the next.
    fx.clock.set(now + 1800);
    let later =
        granted(api, &fx.bastion, &terminated_with(&session_id(), &alice, "pve01", "root", Some(real.clone()))).await;
    assert!((1799..=1800).contains(&later.absolute_timeout_secs), "{}", later.absolute_timeout_secs);
    // An administrator ends her connection's sessions. A bastion that ignores the close
    // orders and goes on listing them gets nothing more with her proof.
    let hers: Vec<String> = fx.ca.core().store().leases().await.unwrap().into_iter().map(|l| l.session_id).collect();
    for id in &hers {
        let (status, v) = api.post_json(Some(&fx.admin), &format!("/v1/admin/sessions/{id}/kill"), &json!({})).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    }
    let ids: Vec<&str> = hers.iter().map(String::as_str).collect();
    assert_eq!(heartbeat(api, &fx.bastion, &ids, &[]).await.len(), hers.len(), "each is ordered closed");
    denied(api, &fx.bastion, &replay, deny_reason::CONNECTION_PROOF_REPLAYED).await;

    // She leaves: once no session of that connection lives, her proof opens nothing.
    for id in &hers {
        close(api, &fx.bastion, id, "client_disconnect").await;
    }
    denied(api, &fx.bastion, &replay, deny_reason::CONNECTION_PROOF_REPLAYED).await;
    // A new connection of hers (a new session identifier) works as ever, and is worth
    // nothing past its session's deadline, even if that session is never closed.
    let next = alice.proof("pve01", "root");
    granted(api, &fx.bastion, &terminated_with(&session_id(), &alice, "pve01", "root", next.clone())).await;
    fx.clock.set(now + 1800 + 3601);
    let stale = terminated_with(&session_id(), &alice, "pve01", "root", next);
    denied(api, &fx.bastion, &stale, deny_reason::CONNECTION_PROOF_REPLAYED).await;

    // Every refusal is a `session_denied` naming its reason.
    let reasons: Vec<String> =
        audit(&fx.ca, "session_denied").await.iter().map(|r| r["reason"].as_str().unwrap().to_owned()).collect();
    let count = |r: &str| reasons.iter().filter(|x| *x == r).count();
    assert_eq!(
        (
            count(deny_reason::CONNECTION_PROOF_MISSING),
            count(deny_reason::CONNECTION_PROOF_INVALID),
            count(deny_reason::CONNECTION_PROOF_REPLAYED)
        ),
        (1, 6, 4),
        "{reasons:?}"
    );
    let denied_records = audit(&fx.ca, "session_denied").await;
    assert!(denied_records.iter().all(|r| r["phase"] == "credential"), "{denied_records:?}");
    // Nothing of a proof (identifier, request, signature) is in the audit trail.
    let trail = serde_json::to_string(&audit(&fx.ca, "session_opened").await).unwrap();
    assert!(!trail.contains(&real.signature) && !trail.contains(&real.session_id), "{trail}");
}

/// Proofs are forgotten once their certificates have expired, not once they are older
/// than the longest certificate the CA issues now: a replica started with a shorter
/// `max_cert_ttl` (an operator tightening it) still refuses the replay of a proof whose
/// 8-hour certificate, issued before, works for hours yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_certificate_lifetime_forgets_no_live_proof() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let alice = user_cert(&fx.ca, "alice").await;
    let real = alice.proof("pve01", "root");
    let first = session_id();
    granted(api, &fx.bastion, &terminated_with(&first, &alice, "pve01", "root", real.clone())).await;
    close(api, &fx.bastion, &first, "client_disconnect").await;
    let replay = terminated_with(&session_id(), &alice, "pve01", "root", real);
    denied(api, &fx.bastion, &replay, deny_reason::CONNECTION_PROOF_REPLAYED).await;

    let mut config =
        CaConfig::new(sqlite_url(fx._dir.path()), fx.policy_dir.clone(), SecretString::from(TEST_PASSPHRASE));
    config.default_agent = Some("local".to_owned());
    config.max_cert_ttl = Duration::from_secs(3600);
    let tightened = Arc::new(Ca::open(config, Arc::new(fx.clock.clone())).await.unwrap());
    let served = ServedCa::start(Arc::clone(&tightened)).await;
    fx.clock.set(fx.clock_now() + 2 * 3600);
    tightened.housekeeping().await.unwrap();
    denied(&served, &fx.bastion, &replay, deny_reason::CONNECTION_PROOF_REPLAYED).await;
    // Once the certificate has expired, its proof goes; a replay fails on the certificate.
    fx.clock.set(fx.clock_now() + 7 * 3600);
    tightened.housekeeping().await.unwrap();
    use sqlx::Row;
    let kept = sqlx::query("SELECT COUNT(*) AS n FROM connection_proofs").fetch_one(tightened.core().store().pool());
    assert_eq!(kept.await.unwrap().get::<i64, _>("n"), 0);
    denied(&served, &fx.bastion, &replay, deny_reason::CREDENTIAL_INVALID).await;
}

/// A bastion taken over cannot pass on a signature the user's security key made without
/// the touch her certificate asks for (a key made `-O no-touch-required` signing for
/// malware on her machine, say): the CA checks the key's flags as the node's sshd
/// would — including that a certificate carrying `no-touch-required` for one role (it
/// carries every role's extensions) waives the touch only where that role admits the
/// session, as the node's principals line does. Touched proofs are the positive control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_security_keys_proof_without_the_touch_its_certificate_asks_opens_nothing() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    // One key; `flags` are what its authenticator reports for a signature.
    let mut key = SoftSecurityKey::new(0);
    let (untouched, touched) = (0, SoftSecurityKey::TOUCH);
    let public_key = key.public_key().to_openssh().unwrap();
    let mut open = |flags: u8, cert_text: &str, device: &str| {
        key.flags = flags;
        let cert = ssh_key::Certificate::from_openssh(cert_text.trim()).unwrap();
        let connection = portcullis_sshcert::random_bytes::<32>();
        let user = terminated_user("root", device);
        let proof = connection_proof_signed(&|signed| key.sign(signed), &cert, &user, &connection);
        terminated_with(&session_id(), &Presented::of(cert_text), device, "root", Some(proof))
    };
    let text = issue_for(&fx.ca, "alice", &public_key).await;
    denied(api, &fx.bastion, &open(untouched, &text, "pve01"), deny_reason::CONNECTION_PROOF_INVALID).await;
    let denials = audit(&fx.ca, "session_denied").await;
    assert!(
        denials.iter().any(|r| r["reason"] == deny_reason::CONNECTION_PROOF_INVALID && r["user"] == "alice"),
        "{denials:?}"
    );
    assert!(granted(api, &fx.bastion, &open(touched, &text, "pve01")).await.session_certificate.is_some());

    // A role that waives the touch on the fleet: alice's new certificate carries
    // `no-touch-required`, which holds on a fleet node (the role admitting her there,
    // first by name, waives it) and not on pve01 (only `ops`, which does not).
    let quiet = "[[role]]\nname = \"fleet-quiet\"\nlogins = [\"root\"]\ntargets = 'in:devices tags.fleet:yes'\n\
                 permissions = [\"certs.issue\"]\nmax_cert_ttl = \"8h\"\nextensions = [\"no-touch-required\"]\n\
                 [[binding]]\ngroup = \"ops\"\nroles = [\"fleet-quiet\"]\n";
    std::fs::write(fx.policy_dir.join("policy.toml"), format!("{POLICY_BASE}{POLICY_CONTRACT}{quiet}")).unwrap();
    let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/policy/reload", &json!({})).await;
    assert!(status.is_success(), "{v}");
    let text = issue_for(&fx.ca, "alice", &public_key).await;
    assert!(inspect(&text).2.iter().any(|e| e == "no-touch-required"), "{:?}", inspect(&text));
    granted(api, &fx.bastion, &open(untouched, &text, "fleet-00")).await;
    denied(api, &fx.bastion, &open(untouched, &text, "pve01"), deny_reason::CONNECTION_PROOF_INVALID).await;
    granted(api, &fx.bastion, &open(touched, &text, "pve01")).await;
}

/// A role that asks for user verification (`verify-required`) in terminated mode: the
/// onward certificate cannot carry it to the node, so the CA holds the user's proof of
/// the connection against it — at open, and at every heartbeat against the confirmation
/// kept with the lease. The role gains the option after alice's certificate was issued
/// (so the certificate does not carry it and her proofs pass the certificate's own
/// check): a proof without the PIN opens nothing under it and its session ends at the
/// next heartbeat — also though another role of hers (`view`) would admit it: a live
/// session stays on the role it opened under (found in review); a proof with the PIN
/// opens and lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_asks_for_a_pin_admits_only_verified_proofs_at_open_and_at_every_heartbeat() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let view = "[[role]]\nname = \"view\"\nlogins = [\"root\"]\ntargets = 'in:devices name:pve01'\n\
                permissions = [\"certs.issue\"]\nmax_cert_ttl = \"8h\"\n\
                [[binding]]\ngroup = \"ops\"\nroles = [\"view\"]\n";
    let reload = async |text: String| {
        std::fs::write(fx.policy_dir.join("policy.toml"), text).unwrap();
        let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/policy/reload", &json!({})).await;
        assert!(status.is_success(), "{v}");
    };
    reload(format!("{POLICY_BASE}{POLICY_CONTRACT}{view}")).await;
    let mut key = SoftSecurityKey::new(0);
    let (touch, pin) = (SoftSecurityKey::TOUCH, SoftSecurityKey::VERIFIED);
    let text = issue_for(&fx.ca, "alice", &key.public_key().to_openssh().unwrap()).await;
    let mut open = |flags: u8, id: &str| {
        key.flags = flags;
        let cert = ssh_key::Certificate::from_openssh(text.trim()).unwrap();
        let connection = portcullis_sshcert::random_bytes::<32>();
        let proof =
            connection_proof_signed(&|signed| key.sign(signed), &cert, &terminated_user("root", "pve01"), &connection);
        terminated_with(id, &Presented::of(&text), "pve01", "root", Some(proof))
    };
    let (unverified, verified) = (session_id(), session_id());
    assert_eq!(granted(api, &fx.bastion, &open(touch, &unverified)).await.role, "ops");
    granted(api, &fx.bastion, &open(touch | pin, &verified)).await;
    assert!(heartbeat(api, &fx.bastion, &[&unverified, &verified], &[]).await.is_empty());

    let pin_role = format!("{POLICY_BASE}{POLICY_CONTRACT}{view}").replace(
        "extensions = [\"permit-pty\", \"permit-port-forwarding\"]\n",
        "extensions = [\"permit-pty\", \"permit-port-forwarding\"]\ncritical_options = { \"verify-required\" = \"\" }\n",
    );
    reload(pin_role.clone()).await;
    assert_eq!(
        heartbeat(api, &fx.bastion, &[&unverified, &verified], &[]).await,
        [(unverified.clone(), CloseReason::PolicyChanged)],
        "the session whose proof showed no PIN ends; the verified one lives on"
    );
    // A new session without the PIN runs under the role that does not ask for it; with
    // only the PIN role, it is refused.
    assert_eq!(granted(api, &fx.bastion, &open(touch, &session_id())).await.role, "view");
    reload(pin_role.replace(view, "")).await;
    denied(api, &fx.bastion, &open(touch, &session_id()), deny_reason::CONNECTION_PROOF_INVALID).await;
    let denials = audit(&fx.ca, "session_denied").await;
    assert!(
        denials.iter().any(|r| r["reason"] == deny_reason::CONNECTION_PROOF_INVALID && r["user"] == "alice"),
        "{denials:?}"
    );
    assert_eq!(granted(api, &fx.bastion, &open(touch | pin, &session_id())).await.role, "ops");
    // A certificate issued now carries the option, for the node's sshd in jump mode.
    let reissued = issue_for(&fx.ca, "alice", &key.public_key().to_openssh().unwrap()).await;
    let reissued = ssh_key::Certificate::from_openssh(reissued.trim()).unwrap();
    assert!(reissued.critical_options().contains_key("verify-required"), "{:?}", reissued.critical_options());
}

/// Step-up (issue 20): a rule with `fresh_auth_within` opens sessions only for a
/// certificate whose user signed in at most that long ago — the sign-in, not the
/// issuance: a new certificate from an old API session does not step up. In both modes;
/// the sessions a fresh sign-in opens record how old it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_up_rule_needs_a_recent_sign_in_not_just_a_new_certificate() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let stepped = format!("{POLICY_BASE}{POLICY_CONTRACT}")
        .replace("allowed_ports = [22, 2222]", "allowed_ports = [22, 2222]\nfresh_auth_within = \"10m\"");
    std::fs::write(fx.policy_dir.join("policy.toml"), stepped).unwrap();
    let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/policy/reload", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // Signed in just now: both modes open, and say how old the sign-in was.
    let login = fx.ca.identity().login_password("alice", None, &SecretString::from(PASSWORD), IP).await.unwrap();
    let token = login.token.expose().to_owned();
    let issue = |token: String| {
        let ca = Arc::clone(&fx.ca);
        async move {
            let caller = ca.identity().caller(&token).await.unwrap();
            let key = ed25519_key();
            let request = UserCertRequest { public_key: public_line(&key), ..Default::default() };
            let text = ca.issuance().issue(&caller, &request, IP).await.unwrap().certificate;
            let cert = ssh_key::Certificate::from_openssh(text.trim()).unwrap();
            Presented { holder: Some(Arc::new((key, cert))), ..Presented::of(&text) }
        }
    };
    let fresh = issue(token.clone()).await;
    granted(api, &fx.bastion, &terminated(&session_id(), &fresh, "pve01", "root")).await;
    granted(api, &fx.bastion, &jump(&session_id(), &fresh, "pve01", None)).await;
    let opened = audit(&fx.ca, "session_opened").await;
    assert!(opened.iter().all(|r| r["auth_age_secs"] == 0), "{opened:?}");

    // Eleven minutes on: that certificate is refused in both modes, and so is a new one
    // issued from the same (old) API session.
    fx.clock.set(fx.clock_now() + 11 * 60);
    denied(api, &fx.bastion, &terminated(&session_id(), &fresh, "pve01", "root"), deny_reason::FRESH_AUTH_REQUIRED)
        .await;
    denied(api, &fx.bastion, &jump(&session_id(), &fresh, "pve01", None), deny_reason::FRESH_AUTH_REQUIRED).await;
    let reissued = issue(token).await;
    let (status, v) = open(api, &fx.bastion, &terminated(&session_id(), &reissued, "pve01", "root")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("portcullis login --fresh"),
        "the refusal says how to step up: {v}"
    );
    // Signing in again steps up.
    let again = user_cert(&fx.ca, "alice").await;
    granted(api, &fx.bastion, &terminated(&session_id(), &again, "pve01", "root")).await;
    // A certificate row that does not say when its user signed in (written before step-up,
    // or by a replica older than it) is never fresh — not as fresh as its issue time.
    let unknown = user_cert(&fx.ca, "alice").await;
    on_certificate_row(&fx, "UPDATE certificates SET authenticated_at = NULL WHERE serial = $1", &unknown).await;
    denied(api, &fx.bastion, &terminated(&session_id(), &unknown, "pve01", "root"), deny_reason::FRESH_AUTH_REQUIRED)
        .await;
    let refused: Vec<Value> =
        audit(&fx.ca, "session_denied").await.into_iter().filter(|r| r["reason"] == "fresh_auth_required").collect();
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert!(refused.iter().all(|r| r["phase"] == "credential" && r["user"] == "alice"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_session_gets_a_certificate_for_this_node_only() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let serial = user_cert(&fx.ca, "alice").await;
    let id = session_id();
    let grant = granted(api, &fx.bastion, &terminated(&id, &serial, "pve01", "root")).await;
    assert_eq!(
        (
            grant.username.as_str(),
            grant.device.as_str(),
            grant.agent.as_str(),
            grant.rule.as_str(),
            grant.role.as_str()
        ),
        ("alice", "pve01", "local", "lab-ssh", "ops")
    );
    assert_eq!((grant.target_host.as_str(), grant.target_port), ("10.0.0.5", 22));
    assert_eq!(grant.host_key_check, HostKeyCheck::KnownHosts);
    assert_eq!(grant.known_host_keys.len(), 1);
    assert!(grant.host_ca_keys.starts_with("ssh-"));
    assert_eq!((grant.idle_timeout_secs, grant.absolute_timeout_secs), (600, 3600));
    assert_eq!(grant.connect_timeout_ms, 10_000);
    assert!(grant.allow_port_forwarding && !grant.allow_agent_forwarding && !grant.allow_x11_forwarding);
    assert_eq!(grant.login.as_deref(), Some("root"));

    let cert = grant.session_certificate.expect("terminated mode gets a session certificate");
    let (key_id, principals, mut extensions, signer) = inspect(&cert);
    assert_eq!(key_id, format!("session:{id}:alice"));
    assert_eq!(principals, [node_principal("pve01", "root")]);
    extensions.sort();
    assert_eq!(extensions, ["permit-port-forwarding", "permit-pty"]);
    let user_ca = fx.ca.core().trusted_keys(portcullis_ca::keys::KeyPurpose::User);
    let user_fp = portcullis_sshcert::fingerprint(ssh_key::PublicKey::from_openssh(user_ca.trim()).unwrap().key_data());
    assert!(signer.contains(&user_fp));
    let parsed = ssh_key::Certificate::from_openssh(&cert).unwrap();
    assert!(parsed.valid_before() - parsed.valid_after() <= SESSION_CERT_TTL_SECS + 60);
    assert!(parsed.valid_before() <= fx.clock_now() + SESSION_CERT_TTL_SECS);

    // The node lists exactly this principal for root; no other node does.
    let (_, v) = api.get_json(Some(&fx.admin), "/v1/nodes/pve01/principals").await;
    assert!(v["principals"]["root"].as_array().unwrap().iter().any(|p| p == &json!(node_principal("pve01", "root"))));
    let (_, v) = api.get_json(Some(&fx.admin), "/v1/nodes/pve02/principals").await;
    assert!(!v["principals"]["root"].as_array().unwrap().iter().any(|p| p == &json!(node_principal("pve01", "root"))));
    // Recorded like any certificate (so it can be listed and revoked).
    let (_, v) = api.get_json(Some(&fx.admin), "/v1/admin/certs?user=alice").await;
    assert!(v.as_array().unwrap().iter().any(|c| c["key_id"] == json!(format!("session:{id}:alice"))), "{v}");

    // Jump mode by address, to an allowed port; a port the rule does not allow is refused.
    let grant = granted(api, &fx.bastion, &jump(&session_id(), &serial, "10.1.0.5", Some(2222))).await;
    assert_eq!(
        (grant.device.as_str(), grant.agent.as_str(), grant.target_host.as_str(), grant.target_port),
        ("pve02", "edge1", "10.1.0.5", 2222)
    );
    assert!(grant.session_certificate.is_none() && grant.login.is_none());
    denied(api, &fx.bastion, &jump(&session_id(), &serial, "pve02", Some(8080)), deny_reason::PORT_NOT_ALLOWED).await;

    // The audit record of the open names everything.
    let opened = audit(&fx.ca, "session_opened").await;
    let rec = opened.iter().find(|e| e["session_id"] == json!(id)).unwrap();
    for (field, want) in [
        ("user", "alice"),
        ("device", "pve01"),
        ("agent", "local"),
        ("rule", "lab-ssh"),
        ("role", "ops"),
        ("mode", "terminated"),
        ("login", "root"),
        ("client_ip", IP),
        ("bastion", "b1"),
    ] {
        assert_eq!(rec[field], json!(want), "{field} in {rec}");
    }
    assert_eq!(rec["cert_serial"], json!(serial.serial));
    // The seed's credential fingerprint: the per-session certificate and its key.
    let session_cert = ssh_key::Certificate::from_openssh(cert.trim()).unwrap();
    assert_eq!(rec["session_cert_serial"], json!(session_cert.serial().to_string()));
    assert_eq!(rec["session_key_fingerprint"], json!(portcullis_sshcert::fingerprint(session_cert.public_key())));
}

impl Fx {
    fn clock_now(&self) -> u64 {
        portcullis_ca::Clock::now_unix(&self.clock)
    }
}

/// A certificate whose validity has not begun (here: the CA's clock stepped back an hour
/// after issuing it) opens nothing until it has; within the clock skew it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_not_valid_yet_opens_no_session() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let alice = user_cert(&fx.ca, "alice").await;
    let issued_at = fx.clock_now();
    fx.clock.set(issued_at - 3600);
    let (status, v) = open(api, &fx.bastion, &terminated(&session_id(), &alice, "pve01", "root")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["message"], "credential_invalid: the certificate is not valid yet", "{v}");
    fx.clock.set(issued_at - 30);
    granted(api, &fx.bastion, &terminated(&session_id(), &alice, "pve01", "root")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_denial_has_its_reason_and_its_control() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let alice = user_cert(&fx.ca, "alice").await;
    let bob = user_cert(&fx.ca, "bob").await;
    let revoked = user_cert(&fx.ca, "alice").await;

    // Controls: each certificate opens a session before anything is taken away.
    for serial in [&alice, &bob, &revoked] {
        let id = session_id();
        granted(api, &fx.bastion, &terminated(&id, serial, "pve01", "root")).await;
        close(api, &fx.bastion, &id, "client_disconnect").await;
    }

    let unknown = Presented::serial_only("12345");
    denied(api, &fx.bastion, &terminated(&session_id(), &unknown, "pve01", "root"), deny_reason::CREDENTIAL_INVALID)
        .await;
    let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/revoke", &json!({"serial": revoked.serial})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    denied(api, &fx.bastion, &terminated(&session_id(), &revoked, "pve01", "root"), deny_reason::CREDENTIAL_INVALID)
        .await;
    let (status, _) = api.post_json(Some(&fx.admin), "/v1/admin/users/bob/disable", &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    denied(api, &fx.bastion, &terminated(&session_id(), &bob, "pve01", "root"), deny_reason::CREDENTIAL_INVALID).await;
    // A session certificate (or any non-user certificate) is no user credential.
    let grant = granted(api, &fx.bastion, &terminated(&session_id(), &alice, "pve01", "root")).await;
    let session_cert = Presented::of(&grant.session_certificate.unwrap());
    denied(
        api,
        &fx.bastion,
        &terminated(&session_id(), &session_cert, "pve01", "root"),
        deny_reason::CREDENTIAL_INVALID,
    )
    .await;
    // A certificate that is not the one issued under its serial (here: another real
    // certificate's digest, or none) is refused; the one issued still opens.
    let another = user_cert(&fx.ca, "alice").await;
    let forged = Presented { digest: another.digest.clone(), ..alice.clone() };
    for other in [forged, Presented::serial_only(&alice.serial)] {
        let (status, v) = open(api, &fx.bastion, &terminated(&session_id(), &other, "pve01", "root")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
        assert!(v["message"].as_str().unwrap().contains("not the one the CA issued"), "{v}");
    }
    granted(api, &fx.bastion, &terminated(&session_id(), &alice, "pve01", "root")).await;

    // Login the role does not grant; a device no role of hers targets.
    denied(api, &fx.bastion, &terminated(&session_id(), &alice, "pve01", "admin"), deny_reason::NOT_AUTHORIZED).await;
    denied(api, &fx.bastion, &terminated(&session_id(), &alice, "prod01", "root"), deny_reason::NOT_AUTHORIZED).await;
    // Targeted by her role, but served by an agent outside every rule's scope.
    denied(api, &fx.bastion, &terminated(&session_id(), &alice, "lab09", "root"), deny_reason::RULE_MISMATCH).await;
    denied(api, &fx.bastion, &terminated(&session_id(), &alice, "nope", "root"), deny_reason::UNKNOWN_DEVICE).await;
    // A console opens with a browser's ticket, never with a certificate (see
    // `console_control::a_bastion_cannot_open_a_console_with_a_certificate_it_has_seen`).
    let mut console = terminated(&session_id(), &alice, "pve01", "root");
    console["mode"] = json!("console");
    denied(api, &fx.bastion, &console, deny_reason::CONNECTION_PROOF_MISSING).await;
    // Carol's contract role grants deploy only.
    let carol = user_cert(&fx.ca, "carol").await;
    denied(api, &fx.bastion, &terminated(&session_id(), &carol, "pve01", "root"), deny_reason::NOT_AUTHORIZED).await;
    granted(api, &fx.bastion, &terminated(&session_id(), &carol, "pve01", "deploy")).await;

    // Malformed requests are 400, not denials.
    for body in [
        terminated("ABC", &alice, "pve01", "root"),
        terminated(&session_id(), &Presented::serial_only("x"), "pve01", "root"),
        terminated(&session_id(), &alice, "pve01", "Root!"),
        terminated(&session_id(), &alice, "pve 01", "root"),
        json!({"session_id": session_id(), "mode": "terminated", "cert_serial": alice.serial, "login": "root",
               "device": "pve01", "client_ip": IP}),
        json!({"session_id": session_id(), "mode": "jump", "cert_serial": alice.serial, "login": "root",
               "device": "pve01", "client_ip": IP}),
    ] {
        let (status, v) = open(api, &fx.bastion, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
    }

    // Each denial is audited with its reason, the user when known, and the device.
    let denials = audit(&fx.ca, "session_denied").await;
    let reasons: Vec<&str> = denials.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons,
        [
            "credential_invalid",
            "credential_invalid",
            "credential_invalid",
            "credential_invalid",
            "credential_invalid",
            "credential_invalid",
            "not_authorized",
            "not_authorized",
            "rule_mismatch",
            "unknown_device",
            "connection_proof_missing",
            "not_authorized"
        ]
    );
    // The user is known once the serial names a user certificate.
    assert_eq!(denials[0]["user"], Value::Null);
    assert_eq!(denials[1]["user"], "alice");
    assert_eq!(denials[2]["user"], "bob");
    assert_eq!(denials[3]["user"], Value::Null);
    // A certificate that is not the one issued under a serial is nobody's.
    assert_eq!((&denials[4]["user"], &denials[5]["user"]), (&Value::Null, &Value::Null));
    assert_eq!((denials[8]["user"].as_str(), denials[8]["device"].as_str()), (Some("alice"), Some("lab09")));
    assert_eq!(denials[8]["bastion"], "b1");
    assert_no_secrets(&fx.ca).await;
}

/// 200 opens at once for one user whose role allows 5, spread over twenty devices and
/// agents (and over the replicas): exactly 5 are granted; closing one admits exactly one
/// more.
async fn caps_are_exact(fx: &Fx) {
    let serial = user_cert(&fx.ca, "alice").await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let api = Arc::clone(&fx.replicas[i % fx.replicas.len()]);
        let bastion = fx.bastion.clone();
        let device = format!("fleet-{:02}", i % FLEET);
        let body = if i % 2 == 0 {
            terminated(&session_id(), &serial, &device, "root")
        } else {
            jump(&session_id(), &serial, &device, None)
        };
        tasks.spawn(async move {
            let (status, v) = open(&api, &bastion, &body).await;
            (status, v, body["session_id"].as_str().unwrap().to_owned())
        });
    }
    let mut granted_ids = Vec::new();
    let mut refused = 0;
    while let Some(done) = tasks.join_next().await {
        let (status, v, id) = done.unwrap();
        match status {
            StatusCode::OK => granted_ids.push(id),
            StatusCode::FORBIDDEN => {
                assert!(v["message"].as_str().unwrap().starts_with("cap_reached: "), "{v}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!((granted_ids.len(), refused), (5, 195));
    assert_eq!(counter(&fx.ca, "user:alice").await, 5);
    assert_eq!(audit(&fx.ca, "session_opened").await.len(), 5);
    assert_eq!(audit(&fx.ca, "session_denied").await.len(), 195);

    let api = fx.api();
    denied(api, &fx.bastion, &terminated(&session_id(), &serial, "pve01", "root"), deny_reason::CAP_REACHED).await;
    close(fx.replicas.last().unwrap(), &fx.bastion, &granted_ids[0], "client_disconnect").await;
    assert_eq!(counter(&fx.ca, "user:alice").await, 4);
    granted(api, &fx.bastion, &terminated(&session_id(), &serial, "pve01", "root")).await;
    denied(api, &fx.bastion, &terminated(&session_id(), &serial, "pve01", "root"), deny_reason::CAP_REACHED).await;
    // Another user is not affected by alice's cap.
    let bob = user_cert(&fx.ca, "bob").await;
    granted(api, &fx.bastion, &terminated(&session_id(), &bob, "pve01", "root")).await;
    // Counters match the leases, scope by scope.
    let live = fx.ca.core().store().leases().await.unwrap();
    assert_eq!(live.len(), 6);
    for lease in &live {
        for scope in lease.scopes() {
            let held = live.iter().filter(|l| l.scopes().contains(&scope)).count();
            assert_eq!(counter(&fx.ca, &scope).await, held as i64, "{scope}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_are_exact_under_200_parallel_opens_on_sqlite() {
    let fx = fixture(None, 1).await;
    caps_are_exact(&fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_are_exact_under_200_parallel_opens_on_postgres_with_two_replicas() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    let fx = fixture(Some(&pg.url()), 2).await;
    assert_eq!(fx.ca.core().store().backend(), portcullis_ca::store::Backend::Postgres);
    caps_are_exact(&fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_bastions_leases_are_reclaimed_after_the_ttl() {
    leases_are_reclaimed(&fixture(None, 1).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_bastions_leases_are_reclaimed_after_the_ttl_on_postgres() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    leases_are_reclaimed(&fixture(Some(&pg.url()), 2).await).await;
}

/// A bastion that stops heartbeating loses its leases after `LEASE_TTL_SECS`, reclaimed
/// by another bastion's heartbeat (on another replica when there are two).
async fn leases_are_reclaimed(fx: &Fx) {
    let api = fx.api();
    let other = fx.replicas.last().unwrap();
    let b2 = second_bastion(fx).await;
    let serial = user_cert(&fx.ca, "alice").await;
    let t0 = fx.clock_now();
    // b1 holds alice's five sessions and keeps one of them alive for a while.
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = session_id();
        granted(api, &fx.bastion, &terminated(&id, &serial, "pve01", "root")).await;
        ids.push(id);
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    // Control: heartbeats keep leases alive well past the TTL.
    for step in 1..=3 {
        fx.clock.set(t0 + step * (LEASE_TTL_SECS - 2));
        assert!(heartbeat(api, &fx.bastion, &refs, &[]).await.is_empty());
    }
    let t1 = fx.clock_now();
    denied(api, &fx.bastion, &terminated(&session_id(), &serial, "pve01", "root"), deny_reason::CAP_REACHED).await;

    // b1 goes quiet. At exactly the TTL the leases still count...
    fx.clock.set(t1 + LEASE_TTL_SECS);
    assert!(heartbeat(other, &b2, &[], &[]).await.is_empty());
    denied(other, &b2, &terminated(&session_id(), &serial, "pve01", "root"), deny_reason::CAP_REACHED).await;
    // ...one second later any heartbeat reclaims them.
    fx.clock.set(t1 + LEASE_TTL_SECS + 1);
    assert!(heartbeat(other, &b2, &[], &[]).await.is_empty());
    assert_eq!(counter(&fx.ca, "user:alice").await, 0);
    assert!(fx.ca.core().store().leases().await.unwrap().is_empty());
    let lost: Vec<Value> = audit(&fx.ca, "session_closed").await;
    assert_eq!(lost.len(), 5);
    assert!(lost.iter().all(|e| e["reason"] == "lease_lost" && e["user"] == "alice" && e["bytes_to_client"] == 20));
    granted(other, &b2, &terminated(&session_id(), &serial, "pve01", "root")).await;
    // When b1 comes back, its sessions are gone: it must close them.
    let orders = heartbeat(api, &fx.bastion, &refs, &[]).await;
    assert_eq!(orders.len(), 5);
    assert!(orders.iter().all(|(_, r)| *r == CloseReason::LeaseLost));
}

/// The only bastion dies: no heartbeat will ever come. The CA's own timer reclaims its
/// leases after the TTL, so a capped user is admitted again and the sessions are audited
/// as lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cas_timer_reclaims_a_dead_bastions_leases_without_any_heartbeat() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let serial = user_cert(&fx.ca, "alice").await;
    let t0 = fx.clock_now();
    for _ in 0..5 {
        granted(api, &fx.bastion, &terminated(&session_id(), &serial, "pve01", "root")).await;
    }
    denied(api, &fx.bastion, &terminated(&session_id(), &serial, "pve01", "root"), deny_reason::CAP_REACHED).await;
    fx.clock.set(t0 + LEASE_TTL_SECS);
    fx.ca.housekeeping().await.unwrap();
    assert_eq!(fx.ca.core().store().leases().await.unwrap().len(), 5, "at exactly the TTL the leases still count");
    fx.clock.set(t0 + LEASE_TTL_SECS + 1);
    fx.ca.housekeeping().await.unwrap();
    assert!(fx.ca.core().store().leases().await.unwrap().is_empty());
    assert_eq!(counter(&fx.ca, "user:alice").await, 0);
    let lost = audit(&fx.ca, "session_closed").await;
    assert_eq!(lost.iter().filter(|e| e["reason"] == "lease_lost").count(), 5, "{lost:?}");
}

/// A batch of closes commits together: each of the bastion's own sessions is released and
/// audited with its reason, another bastion's session named in the batch is left alone,
/// and a batch with one malformed id (or too many entries) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_closes_releases_only_the_bastions_own_sessions_all_or_none() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let b2 = second_bastion(&fx).await;
    let alice = user_cert(&fx.ca, "alice").await;
    let bob = user_cert(&fx.ca, "bob").await;
    let mine: Vec<String> = (0..3).map(|_| session_id()).collect();
    for id in &mine {
        granted(api, &fx.bastion, &terminated(id, &alice, "pve01", "root")).await;
    }
    let theirs = session_id();
    granted(api, &b2, &terminated(&theirs, &bob, "pve01", "root")).await;
    let entry = |id: &str, reason: &str| json!({"session_id": id, "reason": reason, "bytes_from_client": 5, "bytes_to_client": 7, "duration_ms": 90});
    let closes = |entries: Vec<Value>| json!({ "closes": entries });
    let bastion = fx.bastion.as_str();
    let post = |body: Value| async move { api.post_json(Some(bastion), "/v1/bastion/sessions/closes", &body).await };

    // Hostile or broken batches: refused whole, nothing released.
    let (status, v) =
        post(closes(vec![entry(&mine[0], "client_disconnect"), entry("../x", "client_disconnect")])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let too_many = (0..=MAX_CLOSES_PER_REQUEST).map(|_| entry(&mine[0], "client_disconnect")).collect();
    let (status, v) = post(closes(too_many)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(fx.ca.core().store().leases().await.unwrap().len(), 4);
    assert!(audit(&fx.ca, "session_closed").await.is_empty());

    let batch = vec![
        entry(&mine[0], "client_disconnect"),
        entry(&mine[1], "idle_timeout"),
        entry(&mine[2], "shutdown"),
        entry(&theirs, "client_disconnect"),
    ];
    let (status, v) = post(closes(batch.clone())).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    let leases = fx.ca.core().store().leases().await.unwrap();
    assert_eq!(leases.iter().map(|l| l.session_id.as_str()).collect::<Vec<_>>(), [theirs.as_str()]);
    let closed = audit(&fx.ca, "session_closed").await;
    let reasons: BTreeMap<&str, &str> =
        closed.iter().map(|c| (c["session_id"].as_str().unwrap(), c["reason"].as_str().unwrap())).collect();
    let expected: BTreeMap<&str, &str> =
        [(mine[0].as_str(), "client_disconnect"), (mine[1].as_str(), "idle_timeout"), (mine[2].as_str(), "shutdown")]
            .into();
    assert_eq!(reasons, expected);
    assert_eq!(counter(&fx.ca, "user:alice").await, 0);
    // Idempotent: the same batch again records nothing more.
    let (status, v) = post(closes(batch)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(audit(&fx.ca, "session_closed").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_order_closes_for_kill_revocation_and_policy_change() {
    close_orders(&fixture(None, 1).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_order_closes_for_kill_revocation_and_policy_change_on_postgres() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    close_orders(&fixture(Some(&pg.url()), 1).await).await;
}

async fn close_orders(fx: &Fx) {
    let api = fx.api();
    let (alice, bob, carol) =
        (user_cert(&fx.ca, "alice").await, user_cert(&fx.ca, "bob").await, user_cert(&fx.ca, "carol").await);
    let dave = user_cert(&fx.ca, "alice").await;
    let ids: Vec<String> = (0..4).map(|_| session_id()).collect();
    granted(api, &fx.bastion, &terminated(&ids[0], &alice, "pve01", "root")).await;
    granted(api, &fx.bastion, &jump(&ids[1], &bob, "pve02", None)).await;
    granted(api, &fx.bastion, &terminated(&ids[2], &carol, "pve01", "deploy")).await;
    granted(api, &fx.bastion, &terminated(&ids[3], &dave, "pve01", "deploy")).await;
    let all: Vec<&str> = ids.iter().map(String::as_str).collect();
    // Control: nothing to close.
    assert!(heartbeat(api, &fx.bastion, &all, &["local"]).await.is_empty());

    // The admin list shows them; alice (no admin permission) may not read it.
    let (status, v) = api.get_json(Some(&fx.admin), "/v1/admin/sessions").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let live: Vec<portcullis_proto::SessionInfo> = serde_json::from_value(v).unwrap();
    assert_eq!(live.len(), 4);
    assert!(live.iter().all(|s| s.bytes_to_client == 20 && !s.kill_requested));
    let alice_api = fx
        .ca
        .identity()
        .login_password("alice", None, &SecretString::from(PASSWORD), IP)
        .await
        .unwrap()
        .token
        .expose()
        .to_owned();
    let (status, _) = api.get_json(Some(&alice_api), "/v1/admin/sessions").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.post_json(Some(&alice_api), &format!("/v1/admin/sessions/{}/kill", ids[0]), &json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Admin kill.
    let (status, v) = api.post_json(Some(&fx.admin), &format!("/v1/admin/sessions/{}/kill", ids[0]), &json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    let (status, _) =
        api.post_json(Some(&fx.admin), &format!("/v1/admin/sessions/{}/kill", session_id()), &json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(heartbeat(api, &fx.bastion, &all, &[]).await, [(ids[0].clone(), CloseReason::AdminTerminated)]);
    let kill = audit(&fx.ca, "session_kill_requested").await;
    assert_eq!((kill[0]["actor"].as_str(), kill[0]["session_id"].as_str()), (Some("admin"), Some(ids[0].as_str())));

    // Revoking bob's certificate closes his session.
    let (status, _) = api.post_json(Some(&fx.admin), "/v1/admin/revoke", &json!({"serial": bob.serial})).await;
    assert_eq!(status, StatusCode::OK);
    let mut want = vec![(ids[0].clone(), CloseReason::AdminTerminated), (ids[1].clone(), CloseReason::Revoked)];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(heartbeat(api, &fx.bastion, &all, &[]).await, want);

    // A policy change that removes carol's role closes her session; alice's second
    // session (role ops, also for deploy) stays.
    std::fs::write(fx.policy_dir.join("policy.toml"), POLICY_BASE).unwrap();
    let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/policy/reload", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    want.push((ids[2].clone(), CloseReason::PolicyChanged));
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(heartbeat(api, &fx.bastion, &all, &[]).await, want);

    // The bastion closes them; each close is audited once with bytes and duration.
    for (id, reason) in &want {
        close(api, &fx.bastion, id, reason.as_str()).await;
        close(api, &fx.bastion, id, reason.as_str()).await; // idempotent
    }
    assert!(heartbeat(api, &fx.bastion, &[&ids[3]], &[]).await.is_empty());
    let closed = audit(&fx.ca, "session_closed").await;
    assert_eq!(closed.len(), 3);
    let rec = closed.iter().find(|e| e["session_id"] == json!(ids[1])).unwrap();
    for (field, want) in [
        ("reason", json!("revoked")),
        ("user", json!("bob")),
        ("device", json!("pve02")),
        ("agent", json!("edge1")),
        ("mode", json!("jump")),
        ("rule", json!("lab-ssh")),
        ("bytes_from_client", json!(111)),
        ("bytes_to_client", json!(222)),
        ("duration_ms", json!(3456)),
        ("client_ip", json!(IP)),
        ("cert_serial", json!(bob.serial)),
    ] {
        assert_eq!(rec[field], want, "{field} in {rec}");
    }
    // Start and end, not only the duration.
    let (started, ended) = (rec["started_at"].as_u64().unwrap(), rec["ended_at"].as_u64().unwrap());
    assert!(started > 0 && started <= ended && ended <= fx.clock_now(), "{rec}");
    assert_eq!(counter(&fx.ca, "user:bob").await, 0);
    assert_eq!(counter(&fx.ca, "user:alice").await, 1);
    // Another bastion cannot close b1's session.
    let b2 = second_bastion(fx).await;
    close(api, &b2, &ids[3], "client_disconnect").await;
    assert_eq!(fx.ca.core().store().leases().await.unwrap().len(), 1);

    // Disabling a user closes the sessions of her certificates.
    let (status, _) = api.post_json(Some(&fx.admin), "/v1/admin/users/alice/disable", &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(heartbeat(api, &fx.bastion, &[&ids[3]], &[]).await, [(ids[3].clone(), CloseReason::Revoked)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bastion_events_become_typed_audit_records() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let serial = user_cert(&fx.ca, "alice").await;
    let id = session_id();
    granted(api, &fx.bastion, &terminated(&id, &serial, "pve01", "root")).await;
    let events = json!({"events": [
        {"event": "auth_refused", "client_ip": "198.51.100.9", "user": "mallory\u{1b}[31m", "reason": "expired"},
        {"event": "broker_connected", "session_id": id, "agent": "local", "setup_ms": 42},
        {"event": "broker_failed", "session_id": session_id(), "agent": "edge1", "reason": "target_unreachable"},
        {"event": "agent_connected", "agent": "edge1", "remote": "203.0.113.4:51234"},
        {"event": "agent_disconnected", "agent": "edge1"},
    ]});
    let (status, v) = api.post_json(Some(&fx.bastion), "/v1/bastion/events", &events).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    let refused = audit(&fx.ca, "bastion_auth_refused").await;
    assert_eq!((refused[0]["user"].as_str(), refused[0]["bastion"].as_str()), (Some("mallory[31m"), Some("b1")));
    let connected = audit(&fx.ca, "broker_connected").await;
    for (field, want) in [
        ("session_id", json!(id)),
        ("user", json!("alice")),
        ("device", json!("pve01")),
        ("agent", json!("local")),
        ("mode", json!("terminated")),
        ("login", json!("root")),
        ("client_ip", json!(IP)),
        ("setup_ms", json!(42)),
    ] {
        assert_eq!(connected[0][field], want, "{field}");
    }
    let failed = audit(&fx.ca, "broker_failed").await;
    assert_eq!(
        (failed[0]["reason"].as_str(), failed[0]["phase"].as_str()),
        (Some("target_unreachable"), Some("target_connect"))
    );
    assert_eq!(audit(&fx.ca, "agent_connected").await.len(), 1);
    assert_eq!(audit(&fx.ca, "agent_disconnected").await.len(), 1);

    // Bad input: an unknown failure code, a bad session id, an oversized batch, an
    // unknown field. Nothing of a refused batch is recorded.
    let before = fx.ca.core().store().audit_records(0, 100_000).await.unwrap().len();
    let many: Vec<Value> = (0..1001).map(|_| json!({"event": "agent_disconnected", "agent": "e"})).collect();
    for body in [
        json!({"events": [{"event": "agent_disconnected", "agent": "ok"},
                          {"event": "broker_failed", "session_id": id, "agent": "edge1", "reason": "because"}]}),
        json!({"events": [{"event": "broker_connected", "session_id": "x", "agent": "edge1", "setup_ms": 1}]}),
        json!({"events": many}),
        json!({"events": [{"event": "agent_disconnected", "agent": "edge1", "extra": 1}]}),
    ] {
        let (status, v) = api.post_json(Some(&fx.bastion), "/v1/bastion/events", &body).await;
        assert!(status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE, "{status}: {v}");
    }
    assert_eq!(fx.ca.core().store().audit_records(0, 100_000).await.unwrap().len(), before);
}

/// Runs the real `portcullis` CLI with `home` as its home directory.
fn cli(home: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let out = portcullis_tests::cli::portcullis(home, args, stdin);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_and_kills_sessions_lists_agents_and_mints_service_tokens() {
    let fx = fixture(None, 1).await;
    let api = Arc::clone(&fx.replicas[0]);
    let caller = fx.ca.identity().caller(&fx.admin).await.unwrap();
    let users = fx.ca.core().authorize::<proof::UsersManage>(&caller).unwrap();
    let groups = ["admins".to_owned(), "ops".to_owned()];
    fx.ca.admin().add_user(&users, "opsadmin", &groups, Some(&SecretString::from(PASSWORD))).await.unwrap();
    fx.ca.services().register_service(ServiceKind::Agent, "edge1", &public_line(&ed25519_key()), None).await.unwrap();
    let serial = user_cert(&fx.ca, "alice").await;
    let id = session_id();
    granted(&api, &fx.bastion, &terminated(&id, &serial, "pve01", "root")).await;
    assert!(heartbeat(&api, &fx.bastion, &[&id], &["edge1"]).await.is_empty());

    let home = tempfile::tempdir().unwrap();
    let home = home.path().to_owned();
    let (url, pin) = (api.url.clone(), api.pin.clone());
    // The CLI is blocking; run it off the runtime that serves the CA.
    let run = move |args: Vec<String>, stdin: String| {
        let home = home.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&home, &args, &stdin)
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let (ok, out, err) = run(
        args(&["login", "--ca", &url, "--ca-fingerprint", &pin, "--user", "opsadmin", "--password-stdin"]),
        format!("{PASSWORD}\n"),
    )
    .await
    .unwrap();
    assert!(ok, "login: {out}{err}");

    let (ok, out, err) = run(args(&["admin", "sessions", "list"]), String::new()).await.unwrap();
    assert!(ok, "{err}");
    let row = out.lines().find(|l| l.starts_with(&id)).unwrap_or_else(|| panic!("session not listed:\n{out}"));
    for word in ["alice", "pve01", "root", "terminated", "local", "b1", IP] {
        assert!(row.split_whitespace().any(|w| w == word), "{word} missing in {row:?}");
    }

    let (ok, out, err) = run(args(&["admin", "sessions", "kill", &id]), String::new()).await.unwrap();
    assert!(ok, "kill: {out}{err}");
    assert_eq!(heartbeat(&api, &fx.bastion, &[&id], &["edge1"]).await, [(id.clone(), CloseReason::AdminTerminated)]);
    let (ok, _, err) = run(args(&["admin", "sessions", "kill", "not-a-session"]), String::new()).await.unwrap();
    assert!(!ok && err.contains("32 hexadecimal"), "{err}");

    let (ok, out, err) = run(args(&["admin", "agents", "list"]), String::new()).await.unwrap();
    assert!(ok, "{err}");
    let row = out.lines().find(|l| l.starts_with("edge1 ")).unwrap_or_else(|| panic!("edge1 not listed:\n{out}"));
    assert!(row.trim_end().ends_with("b1"), "connected to b1: {row:?}");
    let (ok, out, _) = run(args(&["admin", "bastions", "list"]), String::new()).await.unwrap();
    assert!(ok && out.lines().any(|l| l.starts_with("b1 ")), "{out}");

    // A service token from the CLI enrolls an agent (and is refused for a node).
    let (ok, token, err) =
        run(args(&["admin", "enroll-token", "create", "--service", "agent", "--ttl", "10m"]), String::new())
            .await
            .unwrap();
    assert!(ok, "{err}");
    let token = token.trim().to_owned();
    assert!(token.starts_with("pce_"));
    let body = enroll_body("agent", "edge7", &public_line(&ed25519_key()), None);
    let (status, v) = api.post_json(Some(&token), "/v1/services/enroll", &body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (ok, out, _) = run(args(&["admin", "enroll-token", "list"]), String::new()).await.unwrap();
    assert!(ok && out.lines().any(|l| l.split_whitespace().nth(1) == Some("agent")), "{out}");
    let (ok, _, _) =
        run(args(&["admin", "enroll-token", "create", "--service", "agent", "--tags", "a=b"]), String::new())
            .await
            .unwrap();
    assert!(!ok, "service tokens take no tags");
}

/// A bastion given several CA replicas (`--ca URL1,URL2`, one pin per replica key) keeps
/// working when one is down: a replica that cannot be connected to hands the call to
/// the next at once, its sessions stay open through a replica's death, and its trust
/// material still refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bastion_fails_over_between_ca_replicas_and_keeps_its_sessions() {
    use portcullis_bastion::{ControlConfig, ControlPlane, SystemClock, TrustConfig, TrustSource};
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    let mut fx = fixture(Some(&pg.url()), 2).await;
    let (r0, r1) = (Arc::clone(&fx.replicas[0]), Arc::clone(&fx.replicas[1]));
    assert_ne!(r0.pin, r1.pin, "each replica has a TLS key of its own: a pin set");
    let dead = "https://127.0.0.1:1";
    let control = ControlPlane::new(ControlConfig {
        ca_url: format!("{dead},{},{}", r0.url, r1.url),
        ca_pin: format!("{},{}", r0.pin, r1.pin),
        in_process: None,
        api_token: SecretString::from(fx.bastion.clone()),
        timeout: std::time::Duration::from_secs(5),
    })
    .unwrap();
    let request: SessionOpenRequest =
        serde_json::from_value(terminated(&session_id(), &user_cert(&fx.ca, "alice").await, "pve01", "root")).unwrap();
    let grant = control.open_session(&request).await.expect("opened past the dead replica");
    let live = LiveSession { session_id: grant.session_id.clone(), bytes_from_client: 1, bytes_to_client: 2 };
    let beat = || HeartbeatRequest { sessions: vec![live.clone()], agents: vec![] };
    assert!(control.heartbeat(&beat()).await.unwrap().close.is_empty());

    // The replica that answered dies; the next call goes to the other, the session lives.
    let (gone_url, gone_pin) = (r0.url.clone(), r0.pin.clone());
    fx.replicas.remove(0);
    drop(r0);
    let only_the_dead_one = ControlPlane::new(ControlConfig {
        ca_url: gone_url,
        ca_pin: gone_pin,
        in_process: None,
        api_token: SecretString::from(fx.bastion.clone()),
        timeout: std::time::Duration::from_secs(5),
    })
    .unwrap();
    assert!(only_the_dead_one.heartbeat(&beat()).await.is_err(), "the first replica is really down");
    for _ in 0..3 {
        let answer = control.heartbeat(&beat()).await.expect("a replica is up");
        assert!(answer.close.is_empty(), "the session survives a replica's death: {:?}", answer.close);
    }
    assert_eq!(fx.ca.core().store().leases().await.unwrap().len(), 1);

    let trust = TrustSource::new(TrustConfig::new(format!("{dead},{}", r1.url), r1.pin.clone()), Arc::new(SystemClock))
        .unwrap();
    trust.refresh().await.expect("trust material from the live replica");
}

/// A burst of calls through one bastion's client of a remote CA (a crowd of sessions
/// closing at once) leaves a few connections open to the CA, not one per call: the
/// client keeps at most four idle. (The all-in-one's crowd test used to count this on
/// loopback; its data plane now calls the CA in process, so it is counted here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_calls_leaves_a_few_connections_to_the_ca() {
    use portcullis_bastion::{ControlConfig, ControlPlane};
    let fx = fixture(None, 1).await;
    let ca = &fx.replicas[0];
    let port: u16 = ca.url.rsplit_once(':').unwrap().1.parse().unwrap();
    let control = Arc::new(
        ControlPlane::new(ControlConfig {
            ca_url: ca.url.clone(),
            ca_pin: ca.pin.clone(),
            in_process: None,
            api_token: SecretString::from(fx.bastion.clone()),
            timeout: std::time::Duration::from_secs(10),
        })
        .unwrap(),
    );
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let control = Arc::clone(&control);
            tokio::spawn(async move { control.heartbeat(&HeartbeatRequest { sessions: vec![], agents: vec![] }).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("heartbeat");
    }
    let held = || portcullis_tests::procfs::established_to_port(std::process::id(), port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while held() > 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let held = held();
    // Not vacuous: the client keeps some for later calls.
    assert!((1..=4).contains(&held), "{held} connections to the CA after 32 concurrent calls");
}

/// The all-in-one's bastion, agent and trust refresher call its CA's router in process
/// (no socket, no TLS): the same API, so a call with the bastion's credential is served,
/// and one with a forged credential, or none, is refused as it would be on the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_ca_asks_every_caller_for_its_credential() {
    use portcullis_bastion::{ControlConfig, ControlError, ControlPlane, InProcessCa, SystemClock, TrustConfig};
    let fx = fixture(None, 1).await;
    let ca = InProcessCa::new(portcullis_ca::api::router(Arc::clone(&fx.ca)));
    // Nothing listens on port 1: a call that left the process would fail.
    let nowhere = "https://127.0.0.1:1";
    let control = |token: &str| {
        ControlPlane::new(ControlConfig {
            ca_url: nowhere.into(),
            ca_pin: fx.replicas[0].pin.clone(),
            in_process: Some(ca.clone()),
            api_token: SecretString::from(token.to_owned()),
            timeout: std::time::Duration::from_secs(5),
        })
        .unwrap()
    };
    let request: SessionOpenRequest =
        serde_json::from_value(terminated(&session_id(), &user_cert(&fx.ca, "alice").await, "pve01", "root")).unwrap();
    let grant = control(&fx.bastion).open_session(&request).await.expect("served in process");
    let live = LiveSession { session_id: grant.session_id.clone(), bytes_from_client: 1, bytes_to_client: 2 };
    let beat = HeartbeatRequest { sessions: vec![live], agents: vec![] };
    assert!(control(&fx.bastion).heartbeat(&beat).await.unwrap().close.is_empty());
    assert_eq!(fx.ca.core().store().leases().await.unwrap().len(), 1);
    let forged = "pcs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for token in [forged, ""] {
        let e = control(token).heartbeat(&beat).await.unwrap_err();
        assert!(matches!(e, ControlError::Refused { status: 401, .. }), "{token:?}: {e}");
        assert!(!e.to_string().contains("AAAAAAAA"), "{e}");
    }
    let trust = portcullis_bastion::TrustSource::new(
        TrustConfig { in_process: Some(ca.clone()), ..TrustConfig::new(nowhere, fx.replicas[0].pin.clone()) },
        Arc::new(SystemClock),
    )
    .unwrap();
    trust.refresh().await.expect("trust material in process");
}

/// The heartbeat rewrites leases 64 to a statement; a statement that rewrites fewer than
/// it lists falls back to one per lease to find the lost ones. Here 70 live leases (two
/// statements) share a heartbeat with a lease of another bastion, one that never
/// existed and one past the TTL: exactly those three are lost, the 70 carry their new
/// counters, and the lost ones are not touched (the stale lease is not revived).
async fn batched_lease_heartbeats_find_each_lost_lease(store: &portcullis_ca::store::Store) {
    use portcullis_ca::store::{self, Beat, LeaseRow};
    let (now, cutoff) = (now(), now() - LEASE_TTL_SECS);
    let lease = |id: String, bastion: &str, heartbeat_at: u64| LeaseRow {
        session_id: id,
        bastion: bastion.to_owned(),
        username: "alice".to_owned(),
        device: "pve01".to_owned(),
        agent: "local".to_owned(),
        login: None,
        mode: "jump".to_owned(),
        port: 22,
        rule: "lab-ssh".to_owned(),
        role: "ops".to_owned(),
        cert_serial: 1,
        client_ip: IP.to_owned(),
        opened_at: heartbeat_at,
        heartbeat_at,
        absolute_deadline: now + 3600,
        kill_reason: None,
        bytes_from_client: 0,
        bytes_to_client: 0,
        confirmed: None,
    };
    let live: Vec<String> = (0..70).map(|_| session_id()).collect();
    let (elsewhere, never, stale) = (session_id(), session_id(), session_id());
    let mut tx = store.begin().await.unwrap();
    for id in &live {
        assert!(store::insert_lease(tx.conn(), &lease(id.clone(), "b1", now - 10), None).await.unwrap());
    }
    store::insert_lease(tx.conn(), &lease(elsewhere.clone(), "b2", now - 10), None).await.unwrap();
    store::insert_lease(tx.conn(), &lease(stale.clone(), "b1", cutoff - 1), None).await.unwrap();
    tx.commit().await.unwrap();

    let mut listed: Vec<&str> = live.iter().map(String::as_str).collect();
    listed.insert(3, &elsewhere);
    listed.insert(40, &never);
    listed.push(&stale);
    let beats: Vec<Beat> = listed
        .iter()
        .enumerate()
        .map(|(i, id)| Beat { session_id: id, bytes_from_client: i as u64 + 1, bytes_to_client: 1000 + i as u64 })
        .collect();
    let mut tx = store.begin().await.unwrap();
    let mut lost = store::heartbeat_leases(tx.conn(), "b1", now, cutoff, &beats).await.unwrap();
    tx.commit().await.unwrap();
    lost.sort_unstable();
    let mut expected = vec![elsewhere.as_str(), never.as_str(), stale.as_str()];
    expected.sort_unstable();
    assert_eq!(lost, expected);

    let rows: BTreeMap<String, LeaseRow> =
        store.leases().await.unwrap().into_iter().map(|l| (l.session_id.clone(), l)).collect();
    for (i, id) in listed.iter().enumerate() {
        let row = &rows.get(*id);
        if expected.contains(id) {
            assert!(row.is_none_or(|r| r.heartbeat_at < now && r.bytes_from_client == 0), "{id} was touched");
        } else {
            let row = row.unwrap();
            assert_eq!(
                (row.heartbeat_at, row.bytes_from_client, row.bytes_to_client),
                (now, i as u64 + 1, 1000 + i as u64)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_lease_heartbeats_find_each_lost_lease_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = portcullis_ca::store::Store::open(&sqlite_url(dir.path())).await.unwrap();
    batched_lease_heartbeats_find_each_lost_lease(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_lease_heartbeats_find_each_lost_lease_on_postgres() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    let store = portcullis_ca::store::Store::open(&pg.url()).await.unwrap();
    batched_lease_heartbeats_find_each_lost_lease(&store).await;
}
