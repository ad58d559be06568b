//! Session recordings at the CA, driven over HTTPS the way a bastion and an auditor drive
//! them (issue 20, part 3): a rule with `record = true` makes the grant say so and a
//! recording row exist; only the bastion holding the session adds to it, in order, up to
//! the limit, and with input only when the rule records input — each refusal audited;
//! chunks are sealed at rest; listing and playback need `recordings.read` and every
//! playback is audited; recordings past their retention are deleted. Then the relay
//! side: a real `ssh` through the all-in-one's bastion, recorded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_ca::{Ca, CaConfig, ManualClock, store};
use portcullis_policies::proof;
use portcullis_proto::NodeRecord;
use portcullis_proto::bastion::ServiceKind;
use portcullis_proto::console::session_binding;
use portcullis_proto::frames::push_frame;
use portcullis_proto::recording::{RECORDING_EVENTS_MEDIA_TYPE, RECORDING_FRAMES_MEDIA_TYPE};
use portcullis_tests::ssh::{ed25519_key, public_line};
use portcullis_tests::{Postgres, ServedCa, TEST_PASSPHRASE, first_admin, sqlite_url};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const POLICY: &str = r#"
[[role]]
name = "admin"
permissions = ["users.manage", "audit.read", "nodes.manage", "sessions.kill"]

[[role]]
name = "auditor"
permissions = ["recordings.read"]

[[role]]
name = "ops"
logins = ["root"]
targets = 'in:devices tags.env:lab'
permissions = ["devices.console.open"]

[[rule]]
name = "lab-console"
purpose = "console_access"
targets = 'in:devices tags.env:lab name:pve01'
scope = { agents = ["local"] }
record = true
record_max_mib = 1

[[rule]]
name = "lab-console-keys"
purpose = "console_access"
targets = 'in:devices tags.env:lab name:pve02'
scope = { agents = ["local"] }
record = true
record_input = true

[[rule]]
name = "lab-console-plain"
purpose = "console_access"
targets = 'in:devices tags.env:lab name:pve03'
scope = { agents = ["local"] }

[[binding]]
group = "admins"
roles = ["admin"]

[[binding]]
group = "auditors"
roles = ["auditor"]

[[binding]]
group = "ops"
roles = ["ops"]
"#;

const PASSWORD: &str = "correct-horse-battery-staple";
const IP: &str = "192.0.2.7";
const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

struct Fx {
    api: ServedCa,
    ca: Arc<Ca>,
    clock: ManualClock,
    admin: String,
    /// API tokens of bastions `b1` and `b2`.
    b1: String,
    b2: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    _postgres: Option<Postgres>,
}

/// The CA on SQLite, or on a throwaway PostgreSQL server (sealed chunks are bytes, a
/// column type the two spell differently).
async fn fixture(postgres: bool) -> Fx {
    fixture_with_sqlite_in(postgres, None).await
}

/// [`fixture`], its SQLite database (and the recordings beside it) in `sqlite_dir`.
async fn fixture_with_sqlite_in(postgres: bool, sqlite_dir: Option<&std::path::Path>) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let pg = postgres.then(|| Postgres::start().expect("throwaway PostgreSQL server"));
    let url = pg.as_ref().map_or_else(|| sqlite_url(sqlite_dir.unwrap_or(dir.path())), Postgres::url);
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("policy.toml"), POLICY).unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let clock = ManualClock::new(now);
    let mut config = CaConfig::new(url, policy_dir.clone(), SecretString::from(TEST_PASSPHRASE));
    config.default_agent = Some("local".to_owned());
    config.recording_retention = RETENTION;
    let ca = Arc::new(Ca::open(config, Arc::new(clock.clone())).await.unwrap());
    let api = ServedCa::start(Arc::clone(&ca)).await;
    let admin = first_admin(&ca, "admins", IP).await;
    let caller = ca.identity().caller(&admin).await.unwrap();
    // Making an auditor takes someone who may read recordings too (managing users is no
    // way to more control), which the fixture's administrator may not: an identity of
    // the test's own sets the users up.
    let setup = portcullis_policies::Identity {
        username: "fixture".into(),
        groups: ["admins".to_owned(), "auditors".to_owned()].into(),
        source: "local".into(),
    };
    let users = ca.core().policy().authorize::<proof::UsersManage>(&setup).unwrap();
    for (user, group) in [("alice", "ops"), ("audrey", "auditors")] {
        ca.admin().add_user(&users, user, &[group.to_owned()], Some(&SecretString::from(PASSWORD))).await.unwrap();
    }
    let nodes = ca.core().authorize::<proof::NodesManage>(&caller).unwrap();
    for name in ["pve01", "pve02", "pve03"] {
        let node = NodeRecord {
            name: name.into(),
            addresses: vec!["10.0.0.5".into()],
            tags: [("env".to_owned(), "lab".to_owned())].into(),
            host_keys: vec![public_line(&ed25519_key())],
            ..Default::default()
        };
        ca.nodes().add_node(&nodes, &node).await.unwrap();
    }
    let bastion = async |name: &str| {
        let key = public_line(&ed25519_key());
        let registered = ca.services().register_service(ServiceKind::Bastion, name, &key, Some("127.0.0.1:2223")).await;
        registered.unwrap().api_token.expose().to_owned()
    };
    let (b1, b2) = (bastion("b1").await, bastion("b2").await);
    let http = portcullis_tests::server::client_with_pin(&api.pin);
    Fx { api, ca, clock, admin, b1, b2, http, _dir: dir, _postgres: pg }
}

async fn bearer(ca: &Ca, user: &str) -> String {
    ca.identity().login_password(user, None, &SecretString::from(PASSWORD), IP).await.unwrap().token.expose().to_owned()
}

fn session_id() -> String {
    hex::encode(portcullis_sshcert::random_bytes::<16>())
}

/// A console session of alice on `device`, opened by bastion b1: its id and the grant.
async fn console_session(fx: &Fx, device: &str) -> (String, Value) {
    let alice = bearer(&fx.ca, "alice").await;
    let (status, t) =
        fx.api.post_json(Some(&alice), "/v1/console/tickets", &json!({"device": device, "login": "root"})).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    let id = session_id();
    let open = json!({
        "ticket": t["ticket"], "session_id": id, "session_public_key": public_line(&ed25519_key()),
        "client_ip": IP, "browser_session": session_binding(&alice),
    });
    let (status, grant) = fx.api.post_json(Some(&fx.b1), "/v1/bastion/console/open", &open).await;
    assert_eq!(status, StatusCode::OK, "{grant}");
    (id, grant)
}

/// A chunk as a bastion sends it: `events` (written as event lines for the reader) as
/// frames in the body, the other fields in the query.
async fn chunk(fx: &Fx, bastion: &str, id: &str, mut fields: Value) -> (StatusCode, Value) {
    let events = fields.as_object_mut().unwrap().remove("events").unwrap();
    raw_chunk(fx, bastion, id, fields, RECORDING_FRAMES_MEDIA_TYPE, frames_of(events.as_str().unwrap())).await
}

/// A chunk as a bastion older than frames sends it: `events` as event lines.
async fn lines_chunk(fx: &Fx, bastion: &str, id: &str, mut fields: Value) -> (StatusCode, Value) {
    let events = fields.as_object_mut().unwrap().remove("events").unwrap();
    let body = events.as_str().unwrap().as_bytes().to_vec();
    raw_chunk(fx, bastion, id, fields, RECORDING_EVENTS_MEDIA_TYPE, body).await
}

/// Event lines `[seconds, "code", "text"]` as frames.
fn frames_of(lines: &str) -> Vec<u8> {
    let mut frames = Vec::new();
    for line in lines.lines() {
        let (time, code, text): (f64, String, String) = serde_json::from_str(line).unwrap();
        push_frame(&mut frames, (time * 1e6).round() as u64, code.as_bytes()[0], text.as_bytes());
    }
    frames
}

async fn raw_chunk(
    fx: &Fx,
    bastion: &str,
    id: &str,
    query: Value,
    media_type: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let resp = fx
        .http
        .post(format!("{}/v1/bastion/recordings/{id}", fx.api.url))
        .query(&query)
        .bearer_auth(bastion)
        .header("content-type", media_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn audit(ca: &Ca, event: &str) -> Vec<Value> {
    portcullis_tests::audit_payloads(ca, event).await
}

/// `GET /v1/admin/recordings/{id}` as text (asciicast is not JSON as a whole).
async fn cast(fx: &Fx, token: &str, id: &str) -> (StatusCode, String, reqwest::header::HeaderMap) {
    let resp = fx.http.get(format!("{}/v1/admin/recordings/{id}", fx.api.url)).bearer_auth(token).send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, resp.text().await.unwrap(), headers)
}

mod kept;
mod sessions;
