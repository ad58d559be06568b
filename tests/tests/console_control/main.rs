//! The CA's side of the browser console (issue 7), over HTTPS the way a browser and a
//! bastion use it: browser password sign-in into the session cookie, CSRF on
//! cookie-authenticated state changes, the device list, each ticket check with its
//! positive control, unsupported modes, ticket redemption in manual time (valid →
//! redeemed, reused, expired at 61 s, unknown) with nothing signed or leased for a
//! refused ticket, heartbeat re-evaluation of console leases, logout, the admin data
//! (audit filters, policy history), and no secret in any audit record or log line.
//!
//! The CA runs in the test's process (`ServedCa`), so time is a `ManualClock`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_ca::{Ca, CaConfig, ManualClock};
use portcullis_policies::proof;
use portcullis_proto::bastion::*;
use portcullis_proto::console::{CSRF_HEADER, ConsoleDevice, DeviceDetails, TICKET_TTL_SECS, session_binding};
use portcullis_proto::{NodeRecord, UserCertRequest};
use portcullis_tests::ssh::{ed25519_key, public_line};
use portcullis_tests::{Postgres, ServedCa, TEST_PASSPHRASE, first_admin, sqlite_url};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use sha2::Digest;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

const POLICY: &str = r#"
[[role]]
name = "admin"
permissions = ["users.manage", "audit.read", "policy.manage", "nodes.manage", "sessions.kill"]

[[role]]
name = "ops"
logins = ["root", "deploy"]
targets = 'in:devices tags.env:lab'
permissions = ["certs.issue", "devices.console.open"]
max_cert_ttl = "8h"
session = { max_per_user = 5, idle = "10m", absolute = "1h" }

# Lets ops see prod devices for consoles, which no console rule targets.
[[role]]
name = "prod-console"
logins = ["root"]
targets = 'in:devices tags.env:prod'
permissions = ["devices.console.open"]

[[role]]
name = "viewer"
logins = ["root"]
targets = 'in:devices tags.env:lab'
permissions = ["certs.issue"]
max_cert_ttl = "8h"

[[deny]]
name = "interns-no-deploy"
groups = ["interns"]
logins = ["deploy"]

[[rule]]
name = "lab-console"
purpose = "console_access"
targets = 'in:devices tags.env:lab'
scope = { agents = ["local", "edge1"] }

[[rule]]
name = "dev-console"
purpose = "console_access"
targets = 'in:devices tags.env:dev'
scope = { agents = ["local"] }

[[binding]]
group = "admins"
roles = ["admin"]

[[binding]]
group = "ops"
roles = ["ops", "prod-console"]

[[binding]]
group = "viewers"
roles = ["viewer"]

# May end prod's sessions only: sees everyone's sessions there, not in the lab.
[[role]]
name = "prod-killer"
targets = 'in:devices tags.env:prod'
permissions = ["sessions.kill"]

[[binding]]
group = "prod-killers"
roles = ["prod-killer"]
"#;

const PASSWORD: &str = "correct-horse-battery-staple";
const IP: &str = "192.0.2.7";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn session_id() -> String {
    hex::encode(portcullis_sshcert::random_bytes::<16>())
}

/// Every log line of this test process (all tests share it), to search for secrets.
fn log_buffer() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || LogWriter(Arc::clone(&sink)))
            .try_init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Fx {
    api: ServedCa,
    /// Further CA replicas on the same database (PostgreSQL tests).
    replicas: Vec<ServedCa>,
    ca: Arc<Ca>,
    clock: ManualClock,
    admin: String,
    bastion: String,
    policy_dir: PathBuf,
    /// A client that keeps no cookies: each test sets the Cookie header itself.
    http: reqwest::Client,
    /// The session token each ticket was asked for with: a redemption presents its
    /// binding, as the bastion does from the WebSocket's cookie.
    askers: Mutex<std::collections::HashMap<String, String>>,
    _dir: tempfile::TempDir,
}

impl Fx {
    fn asked_by(&self, ticket: &str, session: &str) {
        self.askers.lock().unwrap().insert(ticket.to_owned(), session.to_owned());
    }
}

/// Users: alice, bob (ops), carol (viewers: no console), dave (ops + interns: no
/// `deploy`). Nodes: pve01 (lab, default agent `local`), pve02 (lab, edge1), lab09
/// (lab, edge9: outside the console rule's scope), prod01 (no console rule), dev01 (a
/// console rule, but no role targets it). Bastion `b1`.
async fn fixture() -> Fx {
    fixture_on(None, 1).await
}

async fn open_ca(url: &str, policy_dir: &std::path::Path, clock: &ManualClock) -> Arc<Ca> {
    let mut config = CaConfig::new(url.to_owned(), policy_dir.to_owned(), SecretString::from(TEST_PASSPHRASE));
    config.default_agent = Some("local".to_owned());
    Arc::new(Ca::open(config, Arc::new(clock.clone())).await.unwrap())
}

/// The fixture on `db_url` (default: SQLite in a temporary directory), served by
/// `replicas` CAs.
async fn fixture_on(db_url: Option<&str>, replicas: usize) -> Fx {
    let _ = log_buffer();
    let dir = tempfile::tempdir().unwrap();
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("policy.toml"), POLICY).unwrap();
    let clock = ManualClock::new(now());
    let url = db_url.map(str::to_owned).unwrap_or_else(|| sqlite_url(dir.path()));
    let ca = open_ca(&url, &policy_dir, &clock).await;
    let api = ServedCa::start(Arc::clone(&ca)).await;
    let mut others = Vec::new();
    for _ in 1..replicas {
        others.push(ServedCa::start(open_ca(&url, &policy_dir, &clock).await).await);
    }

    let admin = first_admin(&ca, "admins", IP).await;
    let caller = ca.identity().caller(&admin).await.unwrap();
    let users = ca.core().authorize::<proof::UsersManage>(&caller).unwrap();
    let pw = SecretString::from(PASSWORD);
    for (user, groups) in
        [("alice", &["ops"][..]), ("bob", &["ops"][..]), ("carol", &["viewers"][..]), ("dave", &["ops", "interns"][..])]
    {
        let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        ca.admin().add_user(&users, user, &groups, Some(&pw)).await.unwrap();
    }
    let nodes = ca.core().authorize::<proof::NodesManage>(&caller).unwrap();
    for (name, env, agent, address) in [
        ("pve01", "lab", None, "10.0.0.5"),
        ("pve02", "lab", Some("edge1"), "10.1.0.5"),
        ("lab09", "lab", Some("edge9"), "10.9.0.5"),
        ("prod01", "prod", None, "10.2.0.5"),
        ("dev01", "dev", None, "10.4.0.5"),
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
    let bastion = portcullis_tests::bastion_b1(&ca).await;
    let http = portcullis_tests::server::client_with_pin(&api.pin);
    Fx { api, replicas: others, ca, clock, admin, bastion, policy_dir, http, askers: Default::default(), _dir: dir }
}

/// A bearer API session for `user`.
async fn bearer(ca: &Ca, user: &str) -> String {
    ca.identity().login_password(user, None, &SecretString::from(PASSWORD), IP).await.unwrap().token.expose().to_owned()
}

/// A browser session by `POST /v1/auth/browser-login`: (session token from the cookie,
/// CSRF token from the body, the Set-Cookie header, the body).
async fn browser_login(fx: &Fx, user: &str) -> (String, String, String, Value) {
    let resp = fx
        .http
        .post(format!("{}/v1/auth/browser-login", fx.api.url))
        .json(&json!({"username": user, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let set_cookie = resp.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
    assert_eq!(resp.headers().get("cache-control").unwrap(), "no-store");
    let body: Value = resp.json().await.unwrap();
    let token = set_cookie
        .strip_prefix("__Host-portcullis_session=")
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_owned();
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    (token, csrf, set_cookie, body)
}

/// A request with the session cookie and, optionally, an `X-CSRF-Token` header.
async fn with_cookie(
    fx: &Fx,
    method: reqwest::Method,
    path: &str,
    session: &str,
    csrf: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let mut req = fx
        .http
        .request(method, format!("{}{path}", fx.api.url))
        .header("cookie", format!("__Host-portcullis_session={session}"));
    if let Some(csrf) = csrf {
        req = req.header(CSRF_HEADER, csrf);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = req.send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let text = resp.text().await.unwrap();
    let value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() };
    (status, value, headers)
}

fn ticket_body(device: &str, login: &str) -> Value {
    json!({"device": device, "login": login})
}

/// Asks for a ticket with a bearer session; the answer.
async fn ask(fx: &Fx, token: &str, body: &Value) -> (StatusCode, Value) {
    fx.api.post_json(Some(token), "/v1/console/tickets", body).await
}

async fn ticket(fx: &Fx, token: &str, device: &str, login: &str) -> String {
    let (status, v) = ask(fx, token, &ticket_body(device, login)).await;
    assert_eq!(status, StatusCode::OK, "ticket for {device}/{login} refused: {v}");
    assert_eq!(v["websocket_path"], "/console/ws");
    let t = v["ticket"].as_str().unwrap().to_owned();
    assert!(t.starts_with("pct_") && t.len() == 47, "{t}");
    fx.asked_by(&t, token);
    t
}

/// Expects a ticket refusal: 403 `ticket_denied` with public reason `public`, and the
/// newest `console_ticket_denied` record with reason `audited`.
/// Asks for a ticket that must be refused as `public` (audited as `audited`); the
/// message the user is shown.
async fn refused(fx: &Fx, token: &str, body: &Value, public: &str, audited: &str) -> String {
    let (status, v) = ask(fx, token, body).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "expected {audited}: {v}");
    assert_eq!(v["error"], "ticket_denied", "{v}");
    let message = v["message"].as_str().unwrap().to_owned();
    assert!(message.starts_with(&format!("{public}: ")), "{v}");
    let last = audit(&fx.ca, "console_ticket_denied").await.pop().unwrap();
    assert_eq!(last["reason"], audited, "{last}");
    assert_eq!(last["device"], body["device"], "{last}");
    message
}

/// A redemption body, bound to the session that asked for the ticket (none for a
/// ticket the fixture did not hand out).
fn open_body(fx: &Fx, ticket: &str, id: &str) -> Value {
    let binding = fx.askers.lock().unwrap().get(ticket).map(|session| session_binding(session));
    json!({
        "ticket": ticket,
        "session_id": id,
        "session_public_key": public_line(&ed25519_key()),
        "client_ip": IP,
        "browser_session": binding,
    })
}

async fn redeem(fx: &Fx, ticket: &str, id: &str) -> (StatusCode, Value) {
    fx.api.post_json(Some(&fx.bastion), "/v1/bastion/console/open", &open_body(fx, ticket, id)).await
}

async fn redeem_denied(fx: &Fx, ticket: &str, reason: &str) {
    let (status, v) = redeem(fx, ticket, &session_id()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "expected {reason}: {v}");
    assert_eq!(v["error"], "session_denied", "{v}");
    assert!(v["message"].as_str().unwrap().starts_with(&format!("{reason}: ")), "expected {reason}: {v}");
}

async fn audit(ca: &Ca, event: &str) -> Vec<Value> {
    portcullis_tests::audit_payloads(ca, event).await
}

async fn count(ca: &Ca, table: &str) -> i64 {
    use sqlx::Row;
    let query = match table {
        "certificates" => "SELECT COUNT(*) AS n FROM certificates",
        "session_leases" => "SELECT COUNT(*) AS n FROM session_leases",
        _ => unreachable!(),
    };
    sqlx::query(query).fetch_one(ca.core().store().pool()).await.unwrap().try_get::<i64, _>("n").unwrap()
}

async fn heartbeat(fx: &Fx, sessions: &[&str]) -> Vec<(String, CloseReason)> {
    let sessions: Vec<Value> =
        sessions.iter().map(|id| json!({"session_id": id, "bytes_from_client": 1, "bytes_to_client": 2})).collect();
    let (status, v) = fx
        .api
        .post_json(Some(&fx.bastion), "/v1/bastion/heartbeat", &json!({"sessions": sessions, "agents": ["local"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "heartbeat: {v}");
    let resp: HeartbeatResponse = serde_json::from_value(v).unwrap();
    resp.close.into_iter().map(|c| (c.session_id, c.reason)).collect()
}

/// The administrator's browser session (its password is reset for the test).
async fn browser_login_admin(fx: &Fx) -> (String, String, String, Value) {
    let admin = fx.ca.identity().caller(&fx.admin).await.unwrap();
    let users = fx.ca.core().authorize::<proof::UsersManage>(&admin).unwrap();
    fx.ca.admin().set_user_password(&users, "admin", &SecretString::from(PASSWORD), false).await.unwrap();
    browser_login(fx, "admin").await
}

mod admin_pages;
mod attacks;
mod devices;
mod sessions;
mod tickets;
