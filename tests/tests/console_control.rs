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
    let bastion = ca
        .services()
        .register_service(ServiceKind::Bastion, "b1", &public_line(&ed25519_key()), Some("127.0.0.1:2223"))
        .await
        .unwrap()
        .api_token
        .expose()
        .to_owned();
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
    let token =
        set_cookie.strip_prefix("portcullis_session=").and_then(|rest| rest.split(';').next()).unwrap().to_owned();
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
        .header("cookie", format!("portcullis_session={session}"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_list_shows_what_a_console_may_open() {
    let fx = fixture().await;
    let list = |token: String| {
        let fx = &fx;
        async move {
            let (status, v) = fx.api.get_json(Some(&token), "/v1/console/devices").await;
            assert_eq!(status, StatusCode::OK, "{v}");
            let devices: Vec<ConsoleDevice> = serde_json::from_value(v).unwrap();
            devices.into_iter().map(|d| (d.name, d.agent.unwrap_or_default(), d.logins)).collect::<Vec<_>>()
        }
    };
    // lab09: the rule's scope excludes edge9; prod01: no console rule; dev01: a rule,
    // but no console role targets it. pve01 is served by the default agent.
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        list(bearer(&fx.ca, "alice").await).await,
        vec![
            ("pve01".to_owned(), "local".to_owned(), s(&["deploy", "root"])),
            ("pve02".to_owned(), "edge1".to_owned(), s(&["deploy", "root"])),
        ]
    );
    // Deny statements remove logins.
    assert_eq!(
        list(bearer(&fx.ca, "dave").await).await,
        vec![
            ("pve01".to_owned(), "local".to_owned(), s(&["root"])),
            ("pve02".to_owned(), "edge1".to_owned(), s(&["root"]))
        ]
    );
    // No console permission: nothing (though carol may have certificates for the lab).
    assert!(list(bearer(&fx.ca, "carol").await).await.is_empty());
    // A browser session sees the same list without a CSRF token (GET).
    let (session, _, _, _) = browser_login(&fx, "alice").await;
    let (status, v, _) = with_cookie(&fx, reqwest::Method::GET, "/v1/console/devices", &session, None, None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 2);
    // Unauthenticated: 401.
    let (status, _) = fx.api.get_json(None, "/v1/console/devices").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Agent status: down until a bastion reports the agent connected, then only that one.
    let alice = bearer(&fx.ca, "alice").await;
    let agents_up = || async {
        let (_, v) = fx.api.get_json(Some(&alice), "/v1/console/devices").await;
        let devices: Vec<ConsoleDevice> = serde_json::from_value(v).unwrap();
        devices.into_iter().map(|d| (d.name, d.agent_connected)).collect::<Vec<_>>()
    };
    let both = |a, b| vec![("pve01".to_owned(), Some(a)), ("pve02".to_owned(), Some(b))];
    assert_eq!(agents_up().await, both(false, false));
    heartbeat(&fx, &[]).await;
    assert_eq!(agents_up().await, both(true, false));
}

/// The details page's data, from the attacker's side: a device outside the caller's
/// list reads exactly like an unknown one; a console user sees their own roles and
/// sessions only, an administrator who may also open consoles sees everyone's and who
/// holds each role; an administrator who opens no console reads every device's page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_details_show_only_what_the_caller_may_see() {
    let fx = fixture().await;
    let (alice, bob, carol) =
        (bearer(&fx.ca, "alice").await, bearer(&fx.ca, "bob").await, bearer(&fx.ca, "carol").await);
    // alice is connected to pve01 (her session reached it); bob was, and left.
    let alices = session_id();
    let (status, v) = redeem(&fx, &ticket(&fx, &alice, "pve01", "root").await, &alices).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let reached =
        json!({"events": [{"event": "broker_connected", "session_id": alices, "agent": "local", "setup_ms": 5}]});
    let (status, v) = fx.api.post_json(Some(&fx.bastion), "/v1/bastion/events", &reached).await;
    assert!(status.is_success(), "{v}");
    let bobs = session_id();
    let (status, v) = redeem(&fx, &ticket(&fx, &bob, "pve01", "deploy").await, &bobs).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let close = json!({"session_id": bobs, "reason": "browser_disconnect", "bytes_from_client": 7,
        "bytes_to_client": 4096, "duration_ms": 1500});
    let (status, v) = fx.api.post_json(Some(&fx.bastion), "/v1/bastion/sessions/close", &close).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");

    let details = |token: String, name: &'static str| {
        let fx = &fx;
        async move { fx.api.get_json(Some(&token), &format!("/v1/console/devices/{name}")).await }
    };
    let (status, d) = details(alice.clone(), "pve01").await;
    assert_eq!(status, StatusCode::OK, "{d}");
    let d: DeviceDetails = serde_json::from_value(d).unwrap();
    assert_eq!((d.device.name.as_str(), d.device.logins.clone()), ("pve01", vec!["deploy".into(), "root".into()]));
    let node = d.node.as_ref().unwrap();
    assert_eq!(node.host_keys.len(), 1, "{node:?}");
    // Seen alive when alice's session reached it.
    assert_eq!(d.device.last_seen, Some(fx.ca.core().now()), "{:?}", d.device);
    assert!(node.host_keys[0].algorithm == "ssh-ed25519" && node.host_keys[0].fingerprint.starts_with("SHA256:"));
    let rule = |purpose: &str| d.rules.iter().find(|r| r.purpose == purpose).unwrap().rule.clone();
    assert_eq!((rule("console_access"), rule("ssh_login")), (Some("lab-console".into()), None));
    // Only her own role reaches her; viewer targets pve01 too, but is not hers to see.
    let roles: Vec<_> = d.access.iter().map(|a| (a.role.as_str(), a.yours, a.holders.is_some())).collect();
    assert_eq!((roles, d.access_complete), (vec![("ops", true, false)], false));
    assert_eq!(d.access[0].idle_secs, 600);
    // Her own live session only: bob's closed one is not hers.
    let users: Vec<_> = d.sessions.iter().map(|s| (s.user.as_str(), s.ended_at.is_some())).collect();
    assert_eq!((users, d.sessions_of_everyone), (vec![("alice", false)], false));

    // Outside her list (no console rule for prod01), unknown, or no console permission at
    // all: one and the same answer.
    let refusals = [
        details(alice.clone(), "prod01").await,
        details(alice.clone(), "no-such-node").await,
        details(carol, "pve01").await,
    ];
    for (status, body) in &refusals {
        assert_eq!(*status, StatusCode::NOT_FOUND, "{body}");
    }
    assert!(refusals.iter().all(|(_, b)| *b == refusals[0].1), "{refusals:?}");
    let (status, _) = fx.api.get_json(None, "/v1/console/devices/pve01").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // An administrator who also opens consoles: every role targeting pve01 with its
    // holders, and everyone's sessions (bob's closed one with its reason and bytes).
    let admin = fx.ca.identity().caller(&fx.admin).await.unwrap();
    let users = fx.ca.core().authorize::<proof::UsersManage>(&admin).unwrap();
    fx.ca.admin().set_user_groups(&users, "bob", &["ops".to_owned(), "admins".to_owned()]).await.unwrap();
    let (status, d) = details(bearer(&fx.ca, "bob").await, "pve01").await;
    assert_eq!(status, StatusCode::OK, "{d}");
    let d: DeviceDetails = serde_json::from_value(d).unwrap();
    let roles: Vec<_> = d.access.iter().map(|a| (a.role.as_str(), a.holders.clone().unwrap_or_default())).collect();
    assert_eq!(
        (roles, d.access_complete),
        (vec![("ops", vec!["group:ops".to_owned()]), ("viewer", vec!["group:viewers".to_owned()])], true)
    );
    assert!(d.sessions_of_everyone);
    let closed = d.sessions.iter().find(|s| s.session_id == bobs).unwrap();
    assert_eq!(
        (closed.user.as_str(), closed.reason.as_deref(), closed.bytes_to_client, closed.login.as_deref()),
        ("bob", Some("browser_disconnect"), 4096, Some("deploy"))
    );
    assert!(d.sessions.iter().any(|s| s.user == "alice" && s.ended_at.is_none()), "{:?}", d.sessions);

    // An administrator who opens no console (nodes.manage, audit.read) reads every
    // device's page, each saying why no console opens for them; their console list
    // stays empty, and an unknown name is still not found.
    let (_, list) = fx.api.get_json(Some(&fx.admin), "/v1/console/devices").await;
    assert_eq!(list, json!([]));
    for (name, why) in [("pve01", "no console role of yours"), ("prod01", "no console_access rule")] {
        let (status, d) = details(fx.admin.clone(), name).await;
        assert_eq!(status, StatusCode::OK, "{name}: {d}");
        let d: DeviceDetails = serde_json::from_value(d).unwrap();
        assert!(d.device.logins.is_empty() && d.access_complete && d.sessions_of_everyone, "{name}: {d:?}");
        assert!(d.device.console_unavailable.as_deref().unwrap_or("").contains(why), "{name}: {d:?}");
    }
    assert_eq!(details(fx.admin.clone(), "no-such-node").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ticket_check_refuses_with_its_positive_control() {
    let fx = fixture().await;
    let alice = bearer(&fx.ca, "alice").await;
    let carol = bearer(&fx.ca, "carol").await;
    let dave = bearer(&fx.ca, "dave").await;

    // RBAC: devices.console.open.
    refused(&fx, &carol, &ticket_body("pve01", "root"), "missing_permission", "missing_permission").await;
    ticket(&fx, &alice, "pve01", "root").await;

    // Unsupported modes: an explicit 400, audited.
    for mode in ["termproxy", "vncwebsocket"] {
        let (status, v) = ask(&fx, &alice, &json!({"device": "pve01", "login": "root", "mode": mode})).await;
        assert_eq!((status, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("unsupported_console_mode")), "{v}");
        let last = audit(&fx.ca, "console_ticket_denied").await.pop().unwrap();
        assert_eq!((last["reason"].as_str(), last["mode"].as_str()), (Some("unsupported_mode"), Some(mode)));
    }
    let (status, v) = ask(&fx, &alice, &json!({"device": "pve01", "login": "root", "mode": "ssh"})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // An unknown mode is not a mode: 400 before anything else.
    let (status, _) = ask(&fx, &alice, &json!({"device": "pve01", "login": "root", "mode": "rdp"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Unknown device: told like an out-of-scope one (no probing), audited as unknown.
    let unknown = refused(&fx, &alice, &ticket_body("nope01", "root"), "out_of_scope", "unknown_device").await;
    // No console_access rule targets prod01 (a device alice's prod-console role lets her see).
    let no_rule = refused(&fx, &alice, &ticket_body("prod01", "root"), "rule_mismatch", "rule_mismatch").await;
    assert!(no_rule.contains("no console_access rule targets it"), "{no_rule}");
    // A rule targets lab09, but its scope does not hold lab09's agent: the seed's words.
    let scope = refused(&fx, &alice, &ticket_body("lab09", "root"), "out_of_scope", "out_of_scope").await;
    assert!(scope.contains("no scoped console rule matched this device"), "{scope}");
    // A rule holds dev01, but no console role of alice's targets it: exactly what an
    // unknown device says, so the device list cannot be probed.
    let hidden = refused(&fx, &alice, &ticket_body("dev01", "root"), "out_of_scope", "out_of_scope").await;
    assert_eq!(hidden, unknown);
    // Control for all three: pve02 through edge1.
    ticket(&fx, &alice, "pve02", "root").await;

    // A login no role grants; a login a deny statement removes.
    refused(&fx, &alice, &ticket_body("pve01", "admin"), "not_authorized", "not_authorized").await;
    refused(&fx, &dave, &ticket_body("pve01", "deploy"), "not_authorized", "not_authorized").await;
    ticket(&fx, &dave, "pve01", "root").await;
    ticket(&fx, &alice, "pve01", "deploy").await;

    // Malformed requests: 400.
    for body in [
        json!({"device": "a b", "login": "root"}),
        json!({"device": "pve01", "login": "Root"}),
        json!({"device": "pve01"}),
    ] {
        let (status, v) = ask(&fx, &alice, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
    }

    // Every request and grant is audited, with what it was bound to.
    let granted = audit(&fx.ca, "console_ticket_granted").await;
    assert_eq!(granted.len(), 5);
    let g = &granted[1];
    assert_eq!((g["user"].as_str(), g["device"].as_str()), (Some("alice"), Some("pve01")));
    assert_eq!(
        (g["agent"].as_str(), g["rule"].as_str(), g["login"].as_str()),
        (Some("local"), Some("lab-console"), Some("root"))
    );
    let requested = audit(&fx.ca, "console_ticket_requested").await;
    assert_eq!(requested.len(), 5 + 2 + 4 + 2 + 1, "{requested:?}");
}

/// Step-up on the console path (issue 20): a `console_access` rule with
/// `fresh_auth_within` grants tickets only to an API session signed in at most that long
/// ago; the refusal is audited and says what to do; a new sign-in steps up, and the
/// granted ticket records how old the sign-in was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_up_console_rule_needs_a_recent_sign_in() {
    let fx = fixture().await;
    let stepped = POLICY.replace(
        "name = \"lab-console\"\npurpose = \"console_access\"",
        "name = \"lab-console\"\npurpose = \"console_access\"\nfresh_auth_within = \"10m\"",
    );
    assert_ne!(stepped, POLICY);
    std::fs::write(fx.policy_dir.join("policy.toml"), stepped).unwrap();
    let admin = fx.ca.identity().caller(&fx.admin).await.unwrap();
    fx.ca.admin().reload_policy(&fx.ca.core().authorize::<proof::PolicyManage>(&admin).unwrap()).await.unwrap();

    let alice = bearer(&fx.ca, "alice").await;
    ticket(&fx, &alice, "pve01", "root").await;
    fx.clock.set(fx.ca.core().now() + 11 * 60);
    let message =
        refused(&fx, &alice, &ticket_body("pve01", "root"), "fresh_auth_required", "fresh_auth_required").await;
    assert!(message.contains("sign in again"), "{message}");
    // A new sign-in steps up.
    let again = bearer(&fx.ca, "alice").await;
    let fresh = ticket(&fx, &again, "pve01", "root").await;
    let (status, v) = redeem(&fx, &fresh, &session_id()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let granted: Vec<Value> = audit(&fx.ca, "console_ticket_granted").await;
    let ages: Vec<Option<u64>> = granted.iter().map(|r| r["auth_age_secs"].as_u64()).collect();
    assert_eq!(ages, vec![Some(0), Some(0)], "{granted:?}");
    let opened = audit(&fx.ca, "session_opened").await;
    assert_eq!(opened.last().unwrap()["auth_age_secs"], 0, "{opened:?}");
    // A ticket asked for just inside the ten minutes and redeemed just after them: the
    // redemption checks the sign-in's age again (a ticket lives a minute).
    fx.clock.set(fx.ca.core().now() + 9 * 60 + 30);
    let late = ticket(&fx, &again, "pve01", "root").await;
    fx.clock.set(fx.ca.core().now() + 50);
    redeem_denied(&fx, &late, "fresh_auth_required").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_requests_are_rate_limited_per_user() {
    let fx = fixture().await;
    let alice = bearer(&fx.ca, "alice").await;
    for _ in 0..20 {
        ticket(&fx, &alice, "pve01", "root").await;
    }
    let (status, v) = ask(&fx, &alice, &ticket_body("pve01", "root")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(audit(&fx.ca, "console_ticket_denied").await.pop().unwrap()["reason"], "rate_limited");
    // Another user is not affected; alice again after the window.
    ticket(&fx, &bearer(&fx.ca, "bob").await, "pve01", "root").await;
    fx.clock.set(fx.ca.core().now() + 61);
    ticket(&fx, &alice, "pve01", "root").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_redeem_once_within_their_minute() {
    tickets_redeem_once(&fixture().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_redeem_once_within_their_minute_on_postgres() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    let fx = fixture_on(Some(&pg.url()), 1).await;
    assert_eq!(fx.ca.core().store().backend(), portcullis_ca::store::Backend::Postgres);
    tickets_redeem_once(&fx).await;
}

/// Ticket states in manual time: valid → redeemed; reused; expired; unknown.
async fn tickets_redeem_once(fx: &Fx) {
    let alice = bearer(&fx.ca, "alice").await;

    // Valid → redeemed: a console session with a per-session certificate.
    let t = ticket(fx, &alice, "pve01", "root").await;
    let id = session_id();
    let (status, v) = redeem(fx, &t, &id).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let grant: SessionGrant = serde_json::from_value(v).unwrap();
    assert_eq!((grant.username.as_str(), grant.device.as_str(), grant.agent.as_str()), ("alice", "pve01", "local"));
    assert_eq!(
        (grant.rule.as_str(), grant.role.as_str(), grant.login.as_deref()),
        ("lab-console", "ops", Some("root"))
    );
    assert_eq!((grant.target_host.as_str(), grant.target_port), ("10.0.0.5", 22));
    assert!(grant.session_certificate.as_deref().unwrap().starts_with("ssh-ed25519-cert-v01@openssh.com "));
    // The console's credential lives as long as the API session that asked for it.
    let caller = fx.ca.identity().caller(&alice).await.unwrap();
    assert_eq!(grant.cert_valid_before, caller.expires_at);
    let opened = audit(&fx.ca, "session_opened").await.pop().unwrap();
    assert_eq!((opened["mode"].as_str(), opened["session_id"].as_str()), (Some("console"), Some(id.as_str())));
    assert!(opened.get("cert_serial").is_none(), "a ticket session names no user certificate: {opened}");
    assert!(opened["session_cert_serial"].is_string());
    // The seed's "user session ID": the sign-in, the ticket and the console session it
    // opened name the same API session — by a reference that is not the token.
    let signed_in = audit(&fx.ca, "login_succeeded").await.pop().unwrap();
    let user_session = signed_in["user_session"].as_str().unwrap().to_owned();
    assert_eq!(user_session.len(), 16, "{signed_in}");
    assert!(!alice.contains(&user_session) && fx.ca.core().store().session(&user_session, 0).await.unwrap().is_none());
    for event in ["console_ticket_requested", "console_ticket_granted"] {
        let rec = audit(&fx.ca, event).await.pop().unwrap();
        assert_eq!(rec["user_session"], user_session.as_str(), "{event}: {rec}");
    }
    assert_eq!(opened["user_session"], user_session.as_str(), "{opened}");
    let leases = fx.ca.core().store().leases().await.unwrap();
    assert_eq!((leases.len(), leases[0].mode.as_str()), (1, "console"));

    // Second redemption (another session id): refused before any credential is
    // resolved — no certificate signed, no lease taken.
    let (certs, held) = (count(&fx.ca, "certificates").await, count(&fx.ca, "session_leases").await);
    redeem_denied(fx, &t, "ticket_reused").await;
    // The same session id again: still reused (not a conflict, nothing new).
    let (status, v) = redeem(fx, &t, &id).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert_eq!((count(&fx.ca, "certificates").await, count(&fx.ca, "session_leases").await), (certs, held));
    let reused = audit(&fx.ca, "console_ticket_reused").await;
    assert_eq!(reused.len(), 2);
    assert_eq!((reused[0]["user"].as_str(), reused[0]["device"].as_str()), (Some("alice"), Some("pve01")));

    // Expiry in manual time: valid at 59 s, expired at 60 s and 61 s.
    let t59 = ticket(fx, &alice, "pve01", "root").await;
    let t61 = ticket(fx, &alice, "pve01", "root").await;
    let issued = fx.ca.core().now();
    fx.clock.set(issued + TICKET_TTL_SECS - 1);
    let (status, v) = redeem(fx, &t59, &session_id()).await;
    assert_eq!(status, StatusCode::OK, "a 59 s old ticket is valid: {v}");
    fx.clock.set(issued + 61);
    let (certs, held) = (count(&fx.ca, "certificates").await, count(&fx.ca, "session_leases").await);
    redeem_denied(fx, &t61, "ticket_expired").await;
    assert_eq!((count(&fx.ca, "certificates").await, count(&fx.ca, "session_leases").await), (certs, held));
    let expired = audit(&fx.ca, "console_ticket_expired").await;
    assert_eq!((expired.len(), expired[0]["user"].as_str()), (1, Some("alice")));
    // An expired ticket stays expired (it was never consumed).
    redeem_denied(fx, &t61, "ticket_expired").await;
    // Heartbeats audit a ticket that lapsed unused, once (the seed's "ticket expired");
    // the redeemed ones never lapse.
    assert!(audit(&fx.ca, "console_ticket_lapsed").await.is_empty());
    heartbeat(fx, &[]).await;
    heartbeat(fx, &[]).await;
    let lapsed = audit(&fx.ca, "console_ticket_lapsed").await;
    assert_eq!(lapsed.len(), 1, "{lapsed:?}");
    assert_eq!((lapsed[0]["user"].as_str(), lapsed[0]["device"].as_str()), (Some("alice"), Some("pve01")));
    assert_eq!(lapsed[0]["expires_at"].as_u64(), Some(issued + TICKET_TTL_SECS));
    // (Those heartbeats listed no session: the 59 s ticket's lease went as lease_lost.)
    let (certs, held) = (count(&fx.ca, "certificates").await, count(&fx.ca, "session_leases").await);

    // Unknown and malformed tickets.
    let unknown = format!("pct_{}", "A".repeat(43));
    for bogus in [unknown.as_str(), "pct_short", "not-a-ticket", ""] {
        redeem_denied(fx, bogus, "ticket_invalid").await;
    }
    // Junk from one address: the first is recorded (with its failure phase), the rest
    // counted into the window's `refusals_summarized`.
    let denied = audit(&fx.ca, "session_denied").await;
    let junk: Vec<&Value> = denied.iter().filter(|d| d["reason"] == "ticket_invalid").collect();
    assert_eq!(junk.len(), 1, "{junk:?}");
    assert_eq!(junk[0]["phase"], "ticket");
    assert_eq!((count(&fx.ca, "certificates").await, count(&fx.ca, "session_leases").await), (certs, held));

    // Only a bastion redeems: a user's session or no credential cannot.
    let t = ticket(fx, &alice, "pve01", "root").await;
    let (status, _) =
        fx.api.post_json(Some(&alice), "/v1/bastion/console/open", &open_body(fx, &t, &session_id())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = fx.api.post_json(None, "/v1/bastion/console/open", &open_body(fx, &t, &session_id())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // …and the ticket is still good for the bastion afterwards.
    let (status, v) = redeem(fx, &t, &session_id()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redemption_runs_admission_for_the_tickets_identity() {
    let fx = fixture().await;
    let alice = bearer(&fx.ca, "alice").await;
    let admin = fx.ca.identity().caller(&fx.admin).await.unwrap();

    // The user is disabled between ticket and redemption: refused, nothing signed.
    let bob = bearer(&fx.ca, "bob").await;
    let t = ticket(&fx, &bob, "pve01", "root").await;
    let users = fx.ca.core().authorize::<proof::UsersManage>(&admin).unwrap();
    fx.ca.admin().set_user_disabled(&users, "bob", true).await.unwrap();
    let certs = count(&fx.ca, "certificates").await;
    redeem_denied(&fx, &t, "credential_invalid").await;
    assert_eq!(count(&fx.ca, "certificates").await, certs);
    fx.ca.admin().set_user_disabled(&users, "bob", false).await.unwrap();

    // Signed out between ticket and redemption: refused.
    let signed_out = bearer(&fx.ca, "alice").await;
    let t = ticket(&fx, &signed_out, "pve01", "root").await;
    let (status, _) = fx.api.post_json(Some(&signed_out), "/v1/auth/logout", &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    redeem_denied(&fx, &t, "credential_invalid").await;
    assert_eq!(count(&fx.ca, "certificates").await, certs);

    // The device moves to another agent after the ticket: the ticket's route is gone.
    let t = ticket(&fx, &alice, "pve02", "root").await;
    let nodes = fx.ca.core().authorize::<proof::NodesManage>(&admin).unwrap();
    let update = portcullis_proto::NodeUpdate { agent: Some("local".to_owned()), ..Default::default() };
    fx.ca.nodes().update_node(&nodes, "pve02", &update).await.unwrap();
    redeem_denied(&fx, &t, "rule_mismatch").await;
    // Control: a ticket asked now carries the new route and is admitted.
    let t = ticket(&fx, &alice, "pve02", "root").await;
    let (status, v) = redeem(&fx, &t, &session_id()).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // Caps hold for console sessions too (ops: 5 per user; one is open).
    for _ in 0..4 {
        let t = ticket(&fx, &alice, "pve01", "root").await;
        let (status, v) = redeem(&fx, &t, &session_id()).await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    let t = ticket(&fx, &alice, "pve01", "root").await;
    redeem_denied(&fx, &t, "cap_reached").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_reevaluate_console_sessions() {
    heartbeats_reevaluate(&fixture().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_reevaluate_console_sessions_on_postgres() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    heartbeats_reevaluate(&fixture_on(Some(&pg.url()), 1).await).await;
}

/// The bastion enforces the absolute limit; the CA orders the close at the lease's
/// deadline as well, so a bastion that does not still cannot keep the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_orders_a_close_at_the_absolute_deadline() {
    let fx = fixture().await;
    let admin = fx.ca.identity().caller(&fx.admin).await.unwrap();
    let policy = fx.ca.core().authorize::<proof::PolicyManage>(&admin).unwrap();
    let short = POLICY.replace(r#"absolute = "1h""#, r#"absolute = "20s""#);
    std::fs::write(fx.policy_dir.join("policy.toml"), short).unwrap();
    fx.ca.admin().reload_policy(&policy).await.unwrap();
    let alice = bearer(&fx.ca, "alice").await;
    let id = session_id();
    let (status, v) = redeem(&fx, &ticket(&fx, &alice, "pve01", "root").await, &id).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let opened = fx.ca.core().now();
    // Heartbeats keep the lease; before the deadline nothing is ordered.
    for t in [6, 12, 19] {
        fx.clock.set(opened + t);
        assert!(heartbeat(&fx, &[&id]).await.is_empty(), "closed before the deadline (t = {t})");
    }
    fx.clock.set(opened + 20);
    assert_eq!(heartbeat(&fx, &[&id]).await, vec![(id.clone(), CloseReason::AbsoluteTimeout)]);
}

async fn heartbeats_reevaluate(fx: &Fx) {
    let alice = bearer(&fx.ca, "alice").await;
    let bob = bearer(&fx.ca, "bob").await;
    let (a, b) = (session_id(), session_id());
    let (status, v) = redeem(fx, &ticket(fx, &alice, "pve01", "root").await, &a).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = redeem(fx, &ticket(fx, &bob, "pve01", "root").await, &b).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // A console lease names no certificate, and that is not a revocation.
    assert!(heartbeat(fx, &[&a, &b]).await.is_empty());

    // Disabling a user closes their console session (revoked); the other goes on.
    let admin = fx.ca.identity().caller(&fx.admin).await.unwrap();
    let users = fx.ca.core().authorize::<proof::UsersManage>(&admin).unwrap();
    fx.ca.admin().set_user_disabled(&users, "bob", true).await.unwrap();
    assert_eq!(heartbeat(fx, &[&a, &b]).await, vec![(b.clone(), CloseReason::Revoked)]);

    // The policy stops granting the console: policy_changed.
    let policy = fx.ca.core().authorize::<proof::PolicyManage>(&admin).unwrap();
    let narrowed =
        POLICY.replace(r#"permissions = ["certs.issue", "devices.console.open"]"#, r#"permissions = ["certs.issue"]"#);
    std::fs::write(fx.policy_dir.join("policy.toml"), narrowed).unwrap();
    fx.ca.admin().reload_policy(&policy).await.unwrap();
    assert_eq!(heartbeat(fx, &[&a]).await, vec![(a.clone(), CloseReason::PolicyChanged)]);
    // Restored: the session may go on again (the decision is re-run, not latched).
    std::fs::write(fx.policy_dir.join("policy.toml"), POLICY).unwrap();
    fx.ca.admin().reload_policy(&policy).await.unwrap();
    assert!(heartbeat(fx, &[&a]).await.is_empty());

    // Removing the user's group (RBAC revoked) closes the live console at the next
    // heartbeat, though the ticket recorded the old groups; giving it back lets it go on.
    let groups = fx.ca.admin().users(&users).await.unwrap().into_iter().find(|u| u.username == "alice").unwrap().groups;
    fx.ca.admin().set_user_groups(&users, "alice", &["bystanders".to_owned()]).await.unwrap();
    assert_eq!(heartbeat(fx, &[&a]).await, vec![(a.clone(), CloseReason::PolicyChanged)]);
    fx.ca.admin().set_user_groups(&users, "alice", &groups).await.unwrap();
    assert!(heartbeat(fx, &[&a]).await.is_empty());
    // Who changed the membership, and from what to what (the seed's PaperTrail).
    let changes: Vec<Value> =
        audit(&fx.ca, "user_changed").await.into_iter().filter(|r| r["change"] == "groups_set").collect();
    let [removed, restored] = changes.as_slice() else { panic!("two group changes: {changes:?}") };
    assert_eq!(removed["actor"], "admin");
    assert_eq!((&removed["groups"]["old"], &removed["groups"]["new"]), (&json!(groups), &json!(["bystanders"])));
    assert_eq!((&restored["groups"]["old"], &restored["groups"]["new"]), (&json!(["bystanders"]), &json!(groups)));

    // The policy change history shows both reloads, newest first, with what changed.
    let (status, v) = fx.api.get_json(Some(&fx.admin), "/v1/admin/policy/history").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let history = v.as_array().unwrap();
    assert_eq!(history.len(), 2, "{v}");
    assert_eq!(history[0]["actor"], "admin");
    assert_eq!(history[0]["changed"], json!(["role:ops"]));
    // And what changed in it, with both values.
    assert_eq!(
        history[0]["fields"],
        json!([{"item": "role:ops", "field": "permissions", "old": "certs.issue",
                "new": "certs.issue, devices.console.open"}]),
        "{v}"
    );
    assert_eq!(history[0]["digest_before"], history[1]["digest_after"]);
    assert!(history[0]["seq"].as_u64() > history[1]["seq"].as_u64());
    let (status, _) = fx.api.get_json(Some(&alice), "/v1/admin/policy/history").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A refused reload is in the history too, with how many errors it had; the loaded
    // policy's digest does not move.
    std::fs::write(fx.policy_dir.join("policy.toml"), format!("{POLICY}\n[[role]]\nname = \"ops\"\n")).unwrap();
    assert!(fx.ca.admin().reload_policy(&policy).await.is_err());
    std::fs::write(fx.policy_dir.join("policy.toml"), POLICY).unwrap();
    let (_, v) = fx.api.get_json(Some(&fx.admin), "/v1/admin/policy/history").await;
    let history = v.as_array().unwrap();
    assert_eq!((history.len(), &history[0]["actor"]), (3, &json!("admin")), "{v}");
    assert!(history[0]["rejected_errors"].as_u64().is_some_and(|n| n >= 1), "{v}");
    assert!(history[1].get("rejected_errors").is_none(), "{v}");

    // Signing out of the API session the ticket was asked with ends the console.
    assert!(heartbeat(fx, &[&a]).await.is_empty());
    let (status, v) = fx.api.post_json(Some(&alice), "/v1/auth/logout", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(heartbeat(fx, &[&a]).await, vec![(a.clone(), CloseReason::Revoked)]);
}

/// A bastion — even one taken over — cannot mint a console ticket: its own credential is
/// not a user's session (alone, or dressed as a forwarded browser request), and a ticket
/// it makes up, or one asked for by another browser session, opens nothing. Only a
/// browser's own sign-in asks for tickets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bastion_cannot_mint_a_console_ticket() {
    use portcullis_proto::console::{FORWARDED_BY_HEADER, FORWARDED_FOR_HEADER};
    let fx = fixture().await;
    let body = ticket_body("pve01", "root");
    // Its bearer credential on the user's route.
    let (status, v) = ask(&fx, &fx.bastion, &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    // The same, dressed as a browser's request passed on by the web front door.
    let resp = fx
        .http
        .post(format!("{}/v1/console/tickets", fx.api.url))
        .header(FORWARDED_BY_HEADER, &fx.bastion)
        .header(FORWARDED_FOR_HEADER, IP)
        .bearer_auth(&fx.bastion)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // With its credential as the session cookie.
    let (status, v, _) =
        with_cookie(&fx, reqwest::Method::POST, "/v1/console/tickets", &fx.bastion, None, Some(&body)).await;
    assert!(matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN), "{status}: {v}");
    assert!(audit(&fx.ca, "console_ticket_granted").await.is_empty());
    // A made-up ticket of the right shape opens nothing.
    let forged = format!("pct_{}", "A".repeat(43));
    redeem_denied(&fx, &forged, "ticket_invalid").await;
    // A real ticket, redeemed as if for another browser session: refused, and still good
    // for the browser that asked for it.
    let alice = bearer(&fx.ca, "alice").await;
    let real = ticket(&fx, &alice, "pve01", "root").await;
    let mut other = open_body(&fx, &real, &session_id());
    other["browser_session"] = json!(session_binding("pcs_some-other-browser"));
    let (status, v) = fx.api.post_json(Some(&fx.bastion), "/v1/bastion/console/open", &other).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert!(fx.ca.core().store().leases().await.unwrap().is_empty(), "no session was opened");
    let (status, v) = redeem(&fx, &real, &session_id()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

/// A bastion taken over has seen users' certificates (they are not secrets). Alice's
/// roles let her open consoles on pve01 as root, and a console session gets an onward
/// certificate: asked for with her certificate instead of a ticket, on the route for
/// SSH sessions, it must get none — else the bastion could mint root on every console
/// she may open, whenever it likes. Refused, audited, nothing leased or signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bastion_cannot_open_a_console_with_a_certificate_it_has_seen() {
    let fx = fixture().await;
    let token = bearer(&fx.ca, "alice").await;
    let caller = fx.ca.identity().caller(&token).await.unwrap();
    let request = UserCertRequest { public_key: public_line(&ed25519_key()), ..Default::default() };
    let issued = fx.ca.issuance().issue(&caller, &request, IP).await.unwrap().certificate;
    let cert = ssh_key::Certificate::from_openssh(issued.trim()).unwrap();
    let digest = portcullis_sshcert::certificate_digest(&cert).unwrap();
    let signed_before = count(&fx.ca, "certificates").await;
    let body = json!({
        "session_id": session_id(), "mode": "console", "cert_serial": cert.serial().to_string(),
        "certificate_digest": digest, "login": "root", "device": "pve01", "client_ip": IP,
        "session_public_key": public_line(&ed25519_key()),
    });
    let (status, v) = fx.api.post_json(Some(&fx.bastion), "/v1/bastion/sessions/open", &body).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert!(v["message"].as_str().unwrap().starts_with(deny_reason::CONNECTION_PROOF_MISSING), "{v}");
    assert!(v.get("session_certificate").is_none(), "{v}");
    assert!(fx.ca.core().store().leases().await.unwrap().is_empty(), "no session was opened");
    assert_eq!(count(&fx.ca, "certificates").await, signed_before, "nothing was signed");
    let denied = audit(&fx.ca, "session_denied").await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(
        (denied[0]["reason"].as_str(), denied[0]["user"].as_str()),
        (Some("connection_proof_missing"), Some("alice"))
    );
    // Her browser's ticket still opens the console.
    let real = ticket(&fx, &token, "pve01", "root").await;
    let (status, v) = redeem(&fx, &real, &session_id()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["session_certificate"].is_string(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_guards_cookie_sessions_and_not_bearer_ones() {
    let fx = fixture().await;
    let (alice, alice_csrf, set_cookie, body) = browser_login(&fx, "alice").await;
    let (_bob, bob_csrf, _, _) = browser_login(&fx, "bob").await;
    let post = reqwest::Method::POST;
    let tickets = "/v1/console/tickets";
    let req = ticket_body("pve01", "root");

    // Browser sign-in: the cookie's flags, and the token never in the body.
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.split("; ").any(|a| a == flag), "{flag} missing: {set_cookie}");
    }
    assert!(alice.starts_with("pcs_"));
    assert_eq!(body["username"], "alice");
    assert!(body.get("token").is_none() && !body.to_string().contains(&alice), "{body}");
    assert_eq!(alice_csrf, portcullis_ca::csrf_token_for(&alice));
    // A wrong password: 401 and no cookie.
    let resp = fx
        .http
        .post(format!("{}/v1/auth/browser-login", fx.api.url))
        .json(&json!({"username": "alice", "password": "wrong-password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get("set-cookie").is_none());

    // The UI can fetch the token for its session.
    let (status, v, headers) = with_cookie(&fx, reqwest::Method::GET, "/v1/auth/csrf", &alice, None, None).await;
    assert_eq!((status, v["csrf_token"].as_str()), (StatusCode::OK, Some(alice_csrf.as_str())));
    assert_eq!(headers.get("cache-control").unwrap(), "no-store");

    // A cross-site-style request: the cookie comes along, the header cannot. Refused.
    let (status, v, _) = with_cookie(&fx, post.clone(), tickets, &alice, None, Some(&req)).await;
    assert_eq!((status, v["error"].as_str()), (StatusCode::FORBIDDEN, Some("csrf")), "{v}");
    assert_eq!(v["message"], "missing or invalid CSRF token");
    // Another session's token, or garbage: refused.
    for wrong in [bob_csrf.as_str(), "x", ""] {
        let (status, v, _) = with_cookie(&fx, post.clone(), tickets, &alice, Some(wrong), Some(&req)).await;
        assert_eq!((status, v["error"].as_str()), (StatusCode::FORBIDDEN, Some("csrf")), "{wrong:?}: {v}");
    }
    // Nothing was asked for: the CSRF check comes before the handler.
    assert!(audit(&fx.ca, "console_ticket_requested").await.is_empty());
    // With the session's own token: accepted.
    let (status, v, _) = with_cookie(&fx, post.clone(), tickets, &alice, Some(&alice_csrf), Some(&req)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["ticket"].as_str().unwrap().starts_with("pct_"));
    // Every state-changing route behind the cookie is covered (admin ones too).
    let (admin_session, admin_csrf, _, _) = browser_login_admin(&fx).await;
    let (status, v, _) = with_cookie(
        &fx,
        reqwest::Method::PUT,
        "/v1/admin/users/bob/groups",
        &admin_session,
        None,
        Some(&json!({"groups": ["ops"]})),
    )
    .await;
    assert_eq!((status, v["error"].as_str()), (StatusCode::FORBIDDEN, Some("csrf")), "{v}");
    let (status, v, _) = with_cookie(
        &fx,
        reqwest::Method::PUT,
        "/v1/admin/users/bob/groups",
        &admin_session,
        Some(&admin_csrf),
        Some(&json!({"groups": ["ops"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // Bearer sessions are unaffected (never sent implicitly by a browser).
    let bearer_alice = bearer(&fx.ca, "alice").await;
    let (status, v) = ask(&fx, &bearer_alice, &req).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // Logout: CSRF applies; then the server-side session is revoked and the cookie cleared.
    let (status, v, _) = with_cookie(&fx, post.clone(), "/v1/auth/logout", &alice, None, None).await;
    assert_eq!((status, v["error"].as_str()), (StatusCode::FORBIDDEN, Some("csrf")), "{v}");
    let (status, _, _) = with_cookie(&fx, reqwest::Method::GET, "/v1/auth/whoami", &alice, None, None).await;
    assert_eq!(status, StatusCode::OK, "a refused logout must not log out");
    let (status, v, headers) = with_cookie(&fx, post.clone(), "/v1/auth/logout", &alice, Some(&alice_csrf), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let cleared = headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(cleared.starts_with("portcullis_session=;") && cleared.contains("Max-Age=0"), "{cleared}");
    let (status, _, _) = with_cookie(&fx, reqwest::Method::GET, "/v1/auth/whoami", &alice, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = with_cookie(&fx, post, tickets, &alice, Some(&alice_csrf), Some(&req)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(fx.ca.identity().caller(&alice).await.is_err());
    assert_eq!(audit(&fx.ca, "logout").await.last().unwrap()["username"], "alice");
}

/// The administrator's browser session (its password is reset for the test).
async fn browser_login_admin(fx: &Fx) -> (String, String, String, Value) {
    let admin = fx.ca.identity().caller(&fx.admin).await.unwrap();
    let users = fx.ca.core().authorize::<proof::UsersManage>(&admin).unwrap();
    fx.ca.admin().set_user_password(&users, "admin", &SecretString::from(PASSWORD), false).await.unwrap();
    browser_login(fx, "admin").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_filters_for_the_admin_pages() {
    audit_filters(&fixture().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_filters_for_the_admin_pages_on_postgres() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    audit_filters(&fixture_on(Some(&pg.url()), 1).await).await;
}

async fn audit_filters(fx: &Fx) {
    let alice = bearer(&fx.ca, "alice").await;
    let dave = bearer(&fx.ca, "dave").await;
    ticket(fx, &alice, "pve01", "root").await;
    let start = fx.ca.core().now();
    fx.clock.set(start + 10);
    ticket(fx, &alice, "pve02", "root").await;
    ticket(fx, &dave, "pve02", "root").await;

    let get = |q: &'static str| async move {
        let (status, v) = fx.api.get_json(Some(&fx.admin), &format!("/v1/admin/audit?{q}")).await;
        assert_eq!(status, StatusCode::OK, "{q}: {v}");
        v.as_array().unwrap().clone()
    };
    let granted = get("event=console_ticket_granted").await;
    assert_eq!(granted.len(), 3);
    assert!(granted.iter().all(|r| r["event"] == "console_ticket_granted"));
    assert_eq!(get("event=console_ticket_granted&user=alice").await.len(), 2);
    assert_eq!(get("event=console_ticket_granted&device=pve02").await.len(), 2);
    assert_eq!(get("event=console_ticket_granted&user=alice&device=pve02").await.len(), 1);
    // `since` by time; `limit`; newest first.
    let q = format!("event=console_ticket_granted&since={}", start + 10);
    let (_, v) = fx.api.get_json(Some(&fx.admin), &format!("/v1/admin/audit?{q}")).await;
    assert_eq!(v.as_array().unwrap().len(), 2);
    // A time range: `until` excludes its own second.
    let q = format!("event=console_ticket_granted&since={start}&until={}", start + 10);
    let (_, v) = fx.api.get_json(Some(&fx.admin), &format!("/v1/admin/audit?{q}")).await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    let newest = get("event=console_ticket_granted&order=desc&limit=1").await;
    assert_eq!((newest.len(), newest[0]["payload"]["user"].as_str()), (1, Some("dave")));
    // The user filter also finds actors (admin's changes) and usernames (logins).
    assert!(get("user=admin&event=user_changed").await.len() >= 4);
    assert!(!get("user=alice&event=login_succeeded").await.is_empty());
    // The old paging still works.
    let all = get("after=0&limit=5").await;
    assert_eq!(all.len(), 5);
    assert_eq!(all[0]["seq"], 1);
    let (status, _) = fx.api.get_json(Some(&fx.admin), "/v1/admin/audit?order=sideways").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = fx.api.get_json(Some(&alice), "/v1/admin/audit").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_audit_records_or_log_lines() {
    let fx = fixture().await;
    let mut secrets = vec![PASSWORD.to_owned()];
    let (session, csrf, _, _) = browser_login(&fx, "alice").await;
    secrets.extend([session.clone(), csrf.clone()]);
    let (status, v, _) = with_cookie(
        &fx,
        reqwest::Method::POST,
        "/v1/console/tickets",
        &session,
        Some(&csrf),
        Some(&ticket_body("pve01", "root")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let used = v["ticket"].as_str().unwrap().to_owned();
    fx.asked_by(&used, &session);
    let (status, v) = redeem(&fx, &used, &session_id()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    redeem_denied(&fx, &used, "ticket_reused").await;
    let alice = bearer(&fx.ca, "alice").await;
    let late = ticket(&fx, &alice, "pve01", "root").await;
    fx.clock.set(fx.ca.core().now() + 61);
    redeem_denied(&fx, &late, "ticket_expired").await;
    let (status, _, _) = with_cookie(
        &fx,
        reqwest::Method::POST,
        "/v1/console/tickets",
        &session,
        None,
        Some(&ticket_body("pve01", "root")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let wrong = format!("pct_{}", "B".repeat(43));
    redeem_denied(&fx, &wrong, "ticket_invalid").await;
    for t in [&used, &late, &wrong] {
        secrets.push(t.clone());
        secrets.push(t.trim_start_matches("pct_").to_owned());
        secrets.push(hex::encode(sha2::Sha256::digest(t.as_bytes())));
    }
    secrets.push(alice);

    let records = fx.ca.core().store().audit_records(0, 100_000).await.unwrap();
    assert!(records.iter().any(|r| r.event == "console_ticket_reused"), "the scenario ran");
    let logs = String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned();
    assert!(logs.contains("console ticket granted"), "the log capture works");
    for secret in &secrets {
        for r in &records {
            assert!(!r.payload.contains(secret.as_str()), "secret in audit record {}: {}", r.event, r.payload);
        }
        assert!(!logs.contains(secret.as_str()), "secret {secret:?} in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_redemptions_admit_exactly_one_on_sqlite() {
    racing_redemptions(&fixture().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_redemptions_admit_exactly_one_on_postgres_with_two_replicas() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    racing_redemptions(&fixture_on(Some(&pg.url()), 2).await).await;
}

/// A ticket is worth nothing without the browser session that asked for it: presented
/// with no session cookie, with another user's, or with another session of the same
/// user, it is refused like an unknown ticket and audited as
/// `console_ticket_wrong_session`; its owner can still redeem it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_opens_only_for_the_session_that_asked_for_it() {
    let fx = fixture().await;
    let alice = bearer(&fx.ca, "alice").await;
    let t = ticket(&fx, &alice, "pve01", "root").await;
    let strangers = [
        None,
        Some(session_binding(&bearer(&fx.ca, "bob").await)),
        Some(session_binding(&bearer(&fx.ca, "alice").await)),
    ];
    for binding in &strangers {
        let mut body = open_body(&fx, &t, &session_id());
        body["browser_session"] = json!(binding);
        let (status, v) = fx.api.post_json(Some(&fx.bastion), "/v1/bastion/console/open", &body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{binding:?}: {v}");
        assert!(v["message"].as_str().unwrap().starts_with("ticket_invalid: "), "{v}");
    }
    let wrong = audit(&fx.ca, "console_ticket_wrong_session").await;
    assert_eq!(wrong.len(), strangers.len(), "{wrong:?}");
    assert_eq!((wrong[0]["user"].as_str(), wrong[0]["device"].as_str()), (Some("alice"), Some("pve01")));
    assert_eq!(count(&fx.ca, "session_leases").await, 0);

    let (status, v) = redeem(&fx, &t, &session_id()).await;
    assert_eq!(status, StatusCode::OK, "the owner's redemption: {v}");
    redeem_denied(&fx, &t, "ticket_reused").await;
}

/// 20 bastion requests redeem one ticket at once (spread over the replicas): exactly
/// one session, one session certificate, one lease; the others are `ticket_reused`.
async fn racing_redemptions(fx: &Fx) {
    let alice = bearer(&fx.ca, "alice").await;
    for round in 0..3 {
        let t = ticket(fx, &alice, "pve01", "root").await;
        let (certs, leases) = (count(&fx.ca, "certificates").await, count(&fx.ca, "session_leases").await);
        let apis: Vec<&ServedCa> = std::iter::once(&fx.api).chain(fx.replicas.iter()).collect();
        let attempts = (0..20).map(|i| {
            let api = apis[i % apis.len()];
            let body = open_body(fx, &t, &session_id());
            let bastion = fx.bastion.clone();
            async move { api.post_json(Some(&bastion), "/v1/bastion/console/open", &body).await }
        });
        let results = futures_join_all(attempts).await;
        let ok = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
        let reused = results
            .iter()
            .filter(|(s, v)| {
                *s == StatusCode::FORBIDDEN && v["message"].as_str().unwrap().starts_with("ticket_reused: ")
            })
            .count();
        assert_eq!((ok, reused), (1, 19), "round {round}: {results:?}");
        assert_eq!(count(&fx.ca, "certificates").await, certs + 1);
        assert_eq!(count(&fx.ca, "session_leases").await, leases + 1);
    }
}

/// Polls the futures concurrently (their requests are in flight together) and returns
/// their outputs in order.
async fn futures_join_all<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let futures: Vec<F> = futures.collect();
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<T>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => done[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    done.into_iter().map(Option::unwrap).collect()
}
