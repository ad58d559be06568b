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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_are_kept_sealed_in_order_from_their_bastion_and_shown_only_to_auditors() {
    kept_sealed_in_order(fixture(false).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_are_kept_sealed_in_order_on_postgres_too() {
    kept_sealed_in_order(fixture(true).await).await;
}

async fn kept_sealed_in_order(fx: Fx) {
    // Off unless the rule says so: no recording asked for, none kept.
    let (plain, grant) = console_session(&fx, "pve03").await;
    assert!(grant.get("recording").is_none(), "{grant}");
    let (status, _) = chunk(&fx, &fx.b1, &plain, json!({"seq": 0, "events": "", "bytes": 0})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A user sees on the device's page, before opening a console, that it is recorded.
    let alice = bearer(&fx.ca, "alice").await;
    for (device, recorded) in [("pve01", true), ("pve03", false)] {
        let (status, details) = fx.api.get_json(Some(&alice), &format!("/v1/console/devices/{device}")).await;
        assert_eq!(status, StatusCode::OK, "{details}");
        let console = details["rules"].as_array().unwrap().iter().find(|r| r["purpose"] == "console_access").unwrap();
        assert_eq!(console["recorded"].as_bool().unwrap_or(false), recorded, "{device}: {details}");
    }

    let (id, grant) = console_session(&fx, "pve01").await;
    assert_eq!(grant["recording"], json!({"input": false, "max_bytes": 1 << 20, "close_at_limit": false}));
    let opened = audit(&fx.ca, "session_opened").await;
    assert!(opened.iter().any(|o| o["session_id"] == id.as_str() && o["recorded"] == true), "{opened:?}");
    assert!(opened.iter().any(|o| o["session_id"] == plain.as_str() && o.get("recorded").is_none()), "{opened:?}");

    // What a chunk counts against the limit is what its frames hold: the size's text
    // and the output.
    let first = json!({"seq": 0, "events": "[0.1, \"r\", \"100x30\"]\n[0.2, \"o\", \"secret-output$ \"]\n",
        "bytes": 21, "cols": 100, "rows": 30});
    assert_eq!(chunk(&fx, &fx.b1, &id, first.clone()).await.0, StatusCode::NO_CONTENT);
    // A retry of a stored chunk changes nothing.
    assert_eq!(chunk(&fx, &fx.b1, &id, first).await.0, StatusCode::NO_CONTENT);
    // From the attacker's side, each refused and audited: another bastion, a gap, input
    // the rule does not record, a malformed event, more than the limit.
    let big = "x".repeat((1 << 20) + (64 << 10) + 1);
    let refusals = [
        (
            &fx.b2,
            json!({"seq": 1, "events": "[0.3, \"o\", \"forged\"]\n", "bytes": 6}),
            StatusCode::FORBIDDEN,
            "not_your_session",
        ),
        (
            &fx.b1,
            json!({"seq": 5, "events": "[0.3, \"o\", \"x\"]\n", "bytes": 1}),
            StatusCode::CONFLICT,
            "out_of_order",
        ),
        (
            &fx.b1,
            json!({"seq": 1, "events": "[0.3, \"i\", \"hunter2\"]\n", "bytes": 7}),
            StatusCode::BAD_REQUEST,
            "input_not_recorded",
        ),
        (
            &fx.b1,
            json!({"seq": 1, "events": "[0.3, \"x\", \"?\"]\n", "bytes": 1}),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        // Frames carry their own lengths: fewer bytes declared than they hold (to stay
        // under the limit) is malformed too.
        (
            &fx.b1,
            json!({"seq": 1, "events": "[0.3, \"o\", \"more than declared\"]\n", "bytes": 4}),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            &fx.b1,
            json!({"seq": 1, "events": format!("[0.3, \"o\", \"{big}\"]\n"), "bytes": big.len()}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "over_limit",
        ),
        // Sizes count like output: a chunk of sizes alone that declares nothing, to fill
        // the disk past the limit, does not hold what it declares.
        (
            &fx.b1,
            json!({"seq": 1, "events": "[0.3, \"r\", \"80x24\"]\n[0.4, \"r\", \"81x24\"]\n", "bytes": 0}),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        // A frame that holds nothing (it would take room and count nothing).
        (&fx.b1, json!({"seq": 1, "events": "[0.3, \"o\", \"\"]\n", "bytes": 0}), StatusCode::BAD_REQUEST, "malformed"),
        // A size no player can draw, as an event or in the chunk's header.
        (
            &fx.b1,
            json!({"seq": 1, "events": "[0.3, \"r\", \"70000x24\"]\n", "bytes": 8}),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            &fx.b1,
            json!({"seq": 1, "events": "[0.3, \"o\", \"x\"]\n", "bytes": 1, "cols": 70000, "rows": 24}),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
    ];
    for (bastion, body, status, reason) in &refusals {
        let (got, v) = chunk(&fx, bastion, &id, body.clone()).await;
        assert_eq!(got, *status, "{reason}: {v}");
        let last = audit(&fx.ca, "recording_refused").await.pop().unwrap();
        assert_eq!((last["reason"].as_str(), last["session_id"].as_str()), (Some(*reason), Some(id.as_str())));
    }
    // Event lines that are not UTF-8, and frames cut short, are malformed too (audited);
    // a body of another media type, or a query with a field nobody defined, is not a
    // chunk at all.
    let whole = frames_of("[0.3, \"o\", \"x\"]\n");
    for (media_type, body) in
        [(RECORDING_EVENTS_MEDIA_TYPE, vec![0xff]), (RECORDING_FRAMES_MEDIA_TYPE, whole[..whole.len() - 1].to_vec())]
    {
        let invalid = raw_chunk(&fx, &fx.b1, &id, json!({"seq": 1, "bytes": 1}), media_type, body);
        assert_eq!(invalid.await.0, StatusCode::BAD_REQUEST, "{media_type}");
        let last = audit(&fx.ca, "recording_refused").await.pop().unwrap();
        assert_eq!(last["reason"], "malformed");
    }
    // Event lines from a bastion older than frames count as the text they are, whatever
    // they declare (lines of sizes or escapes would otherwise be free); a chunk of them
    // must end its last line (chunks are joined as they are at playback).
    let lines_refusals = [
        (json!({"seq": 1, "events": format!("[0.3, \"o\", \"{big}\"]\n"), "bytes": 0}), "over_limit"),
        (json!({"seq": 1, "events": "[0.3, \"o\", \"x\"]", "bytes": 1}), "malformed"),
    ];
    for (body, reason) in lines_refusals {
        let (status, v) = lines_chunk(&fx, &fx.b1, &id, body).await;
        assert!(status.is_client_error(), "{reason}: {v}");
        let last = audit(&fx.ca, "recording_refused").await.pop().unwrap();
        assert_eq!(last["reason"], reason);
    }
    let events = b"[0.3, \"o\", \"x\"]\n".to_vec();
    let refused_before = audit(&fx.ca, "recording_refused").await.len();
    for (query, media_type) in [
        (json!({"seq": 1, "bytes": 1}), "application/json"),
        (json!({"seq": 1, "bytes": 1, "sealed": "yes"}), RECORDING_EVENTS_MEDIA_TYPE),
        (json!({"bytes": 1}), RECORDING_EVENTS_MEDIA_TYPE),
    ] {
        let (status, v) = raw_chunk(&fx, &fx.b1, &id, query.clone(), media_type, events.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query} {media_type}: {v}");
    }
    assert_eq!(audit(&fx.ca, "recording_refused").await.len(), refused_before);
    // A bastion older than frames sends event lines; both play back as one recording.
    let last_line = "[1.5, \"o\", \"exit\\r\\n\"]\n";
    let last = json!({"seq": 1, "events": last_line, "bytes": 6, "truncated": true, "last": true});
    assert_eq!(lines_chunk(&fx, &fx.b1, &id, last).await.0, StatusCode::NO_CONTENT);
    let (status, _) = chunk(&fx, &fx.b1, &id, json!({"seq": 2, "events": "", "bytes": 0})).await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing is added after the last chunk");
    let truncated = audit(&fx.ca, "recording_truncated").await;
    assert_eq!(truncated.len(), 1, "{truncated:?}");

    // Sealed at rest: neither the database nor the files beside it hold terminal text.
    // PostgreSQL keeps a chunk's bytes in its row; a SQLite file keeps each chunk in a
    // file of its own (written once, not to the WAL and again at the checkpoint).
    use sqlx::Row;
    let store = fx.ca.core().store();
    let rows = sqlx::query("SELECT sealed, in_file FROM recording_chunks").fetch_all(store.pool()).await.unwrap();
    assert_eq!(rows.len(), 2);
    let chunk_files = store.chunk_files();
    for row in &rows {
        let (sealed, in_file): (Vec<u8>, i64) = (row.try_get("sealed").unwrap(), row.try_get("in_file").unwrap());
        assert_eq!((in_file == 1, sealed.is_empty()), (chunk_files.is_some(), chunk_files.is_some()));
    }
    let mut sealed = store.recording_chunks(&id).await.unwrap();
    if let Some(files) = &chunk_files {
        let mut on_disk = std::fs::read_dir(files.dir().join(&id)).unwrap().map(|e| e.unwrap()).collect::<Vec<_>>();
        on_disk.sort_by_key(std::fs::DirEntry::file_name);
        assert_eq!(on_disk.iter().map(|e| e.file_name().into_string().unwrap()).collect::<Vec<_>>(), ["0", "1"]);
        use std::os::unix::fs::PermissionsExt;
        for entry in &on_disk {
            assert_eq!(entry.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(std::fs::metadata(files.dir()).unwrap().permissions().mode() & 0o777, 0o700);
        let read: Vec<_> = on_disk.iter().map(|e| std::fs::read(e.path()).unwrap()).collect();
        assert_eq!(read, sealed.iter().map(|(_, bytes)| bytes.clone()).collect::<Vec<_>>());
    }
    assert_eq!(sealed.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), [0, 1]);
    // The version byte: frames, then event lines.
    for ((_, bytes), version) in sealed.drain(..).zip([2, 1]) {
        let readable = |word: &[u8]| bytes.windows(word.len()).any(|w| w == word);
        assert!(bytes.first() == Some(&version) && !readable(b"secret") && !readable(b"exit"), "{bytes:?}");
    }
    if chunk_files.is_some() {
        backup_holds_the_recording(&fx, &id).await;
    }

    // Only holders of recordings.read list and play; an administrator without it does not.
    let audrey = bearer(&fx.ca, "audrey").await;
    for token in [&fx.admin, &bearer(&fx.ca, "alice").await] {
        assert_eq!(fx.api.get_json(Some(token), "/v1/admin/recordings").await.0, StatusCode::FORBIDDEN);
        assert_eq!(cast(&fx, token, &id).await.0, StatusCode::FORBIDDEN);
    }
    let (status, list) = fx.api.get_json(Some(&audrey), "/v1/admin/recordings").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let entry = &list[0];
    assert_eq!(
        (entry["session_id"].as_str(), entry["user"].as_str(), entry["device"].as_str()),
        (Some(id.as_str()), Some("alice"), Some("pve01"))
    );
    assert_eq!(
        (entry["bytes"].as_u64(), entry["truncated"].as_bool(), entry["mode"].as_str()),
        (Some(21 + last_line.len() as u64), Some(true), Some("console"))
    );
    assert!(entry["ended_at"].as_u64().is_some() && entry["incomplete"] == false, "{entry}");
    let (_, by_user) = fx.api.get_json(Some(&audrey), "/v1/admin/recordings?user=bob").await;
    assert_eq!(by_user, json!([]));

    let (status, text, headers) = cast(&fx, &audrey, &id).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(headers["content-type"], "application/x-asciicast");
    assert!(headers["content-disposition"].to_str().unwrap().contains(&format!("{id}.cast")));
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(
        (header["version"].as_u64(), header["width"].as_u64(), header["height"].as_u64()),
        (Some(2), Some(100), Some(30))
    );
    assert_eq!(header["title"], "alice as root on pve01");
    let events: Vec<Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        events,
        vec![json!([0.1, "r", "100x30"]), json!([0.2, "o", "secret-output$ "]), json!([1.5, "o", "exit\r\n"])]
    );
    let played = audit(&fx.ca, "recording_played").await;
    assert_eq!(played.len(), 1, "{played:?}");
    assert_eq!((played[0]["actor"].as_str(), played[0]["user"].as_str()), (Some("audrey"), Some("alice")));
    // No terminal text in the audit trail.
    let all = serde_json::to_string(&portcullis_tests::audit_payloads(&fx.ca, "recording_played").await).unwrap();
    assert!(!all.contains("secret-output"));

    // Played a chunk at a time (what playback holds is one chunk's text): the header,
    // then one piece per chunk, which together are the file served above.
    let auditor = fx.ca.identity().caller(&audrey).await.unwrap();
    let read = fx.ca.core().authorize::<proof::RecordingsRead>(&auditor).unwrap();
    let (_, mut playback) = fx.ca.recordings().cast(&read, &id).await.unwrap();
    let mut pieces = Vec::new();
    while let Some(piece) = playback.next().await.unwrap() {
        pieces.push(piece);
    }
    assert_eq!((pieces.len(), pieces.concat()), (3, text.clone()));

    // A rule that records input takes keystrokes.
    let (keys, grant) = console_session(&fx, "pve02").await;
    assert_eq!(grant["recording"]["input"], true);
    let typed = json!({"seq": 0, "events": "[0.3, \"i\", \"ls\\r\"]\n", "bytes": 3, "last": true});
    assert_eq!(chunk(&fx, &fx.b1, &keys, typed).await.0, StatusCode::NO_CONTENT);

    // A session that closes without a last chunk ends its recording at the close;
    // nothing is added after. One that never reached its node recorded nothing and
    // misses nothing; one that ran (its bastion could not hand the end over) is marked
    // as missing its end.
    let (never, _) = console_session(&fx, "pve01").await;
    let close = json!({"session_id": never, "reason": "target_unreachable", "bytes_from_client": 0,
        "bytes_to_client": 0, "duration_ms": 10});
    let (status, v) = fx.api.post_json(Some(&fx.b1), "/v1/bastion/sessions/close", &close).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    let (_, list) = fx.api.get_json(Some(&audrey), "/v1/admin/recordings?device=pve01").await;
    let ended = list.as_array().unwrap().iter().find(|r| r["session_id"] == never.as_str()).unwrap();
    assert!(ended["ended_at"].is_u64() && ended["bytes"] == 0 && ended["incomplete"] == false, "{ended}");
    let (cut, _) = console_session(&fx, "pve01").await;
    let begun = json!({"seq": 0, "events": "[0.1, \"o\", \"begun\"]\n", "bytes": 5});
    assert_eq!(chunk(&fx, &fx.b1, &cut, begun).await.0, StatusCode::NO_CONTENT);
    let close = json!({"session_id": cut, "reason": "browser_disconnect", "bytes_from_client": 0,
        "bytes_to_client": 5, "duration_ms": 10});
    assert_eq!(fx.api.post_json(Some(&fx.b1), "/v1/bastion/sessions/close", &close).await.0, StatusCode::NO_CONTENT);
    let (_, list) = fx.api.get_json(Some(&audrey), "/v1/admin/recordings?device=pve01").await;
    let ended = list.as_array().unwrap().iter().find(|r| r["session_id"] == cut.as_str()).unwrap();
    assert!(ended["ended_at"].is_u64() && ended["bytes"] == 5 && ended["incomplete"] == true, "{ended}");
    let (status, _) =
        chunk(&fx, &fx.b1, &never, json!({"seq": 0, "events": "[0.1, \"o\", \"late\"]\n", "bytes": 4})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    // The append itself re-checks what the service read before it: a chunk that reaches
    // the store after a close ended the recording (the two racing) is not taken.
    let late = store::ChunkAppend {
        session_id: &never,
        seq: 0,
        sealed: &store::ChunkBytes::Row(vec![1]),
        bytes: 4,
        limit: 1 << 30,
        size: None,
        truncated: false,
        ended_at: None,
    };
    let mut tx = fx.ca.core().store().begin().await.unwrap();
    let appended = store::append_recording_chunk(tx.conn(), &late).await.unwrap();
    assert_eq!(appended, store::Appended::Refused("recording_ended"));
    drop(tx);

    // A session still live when the others expire: its recording started before the
    // retention cutoff, but is kept while the session lives.
    let (long, _) = console_session(&fx, "pve01").await;
    let output = json!({"seq": 0, "events": "[0.1, \"o\", \"still here\"]\n", "bytes": 10});
    assert_eq!(chunk(&fx, &fx.b1, &long, output).await.0, StatusCode::NO_CONTENT);

    // A recording missing a chunk (a store changed behind the CA's back) is not played
    // as if it were whole.
    sqlx::query("DELETE FROM recording_chunks WHERE session_id = $1").bind(&keys).execute(store.pool()).await.unwrap();
    let (status, body, _) = cast(&fx, &audrey, &keys).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");

    // Retention: a week later all are gone, and that is audited. Chunk files go with
    // their rows, and so do any a crash left without a row; what is not a recording's
    // directory is left alone.
    let orphan = chunk_files.as_ref().map(|files| {
        let (orphan, other) = (files.dir().join(session_id()), files.dir().join("not-a-recording"));
        for dir in [&orphan, &other] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("0"), b"sealed").unwrap();
        }
        (orphan, other)
    });
    fx.clock.set(fx.ca.core().now() + RETENTION.as_secs() + 1);
    fx.ca.housekeeping().await.unwrap();
    let audrey = bearer(&fx.ca, "audrey").await;
    let (_, list) = fx.api.get_json(Some(&audrey), "/v1/admin/recordings").await;
    let kept: Vec<&str> = list.as_array().unwrap().iter().map(|r| r["session_id"].as_str().unwrap()).collect();
    assert_eq!(kept, [long.as_str()]);
    assert_eq!(cast(&fx, &audrey, &id).await.0, StatusCode::NOT_FOUND);
    let rows =
        sqlx::query("SELECT session_id FROM recording_chunks").fetch_all(fx.ca.core().store().pool()).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.get::<String, _>("session_id")).collect::<Vec<_>>(), [long.as_str()]);
    let expired = audit(&fx.ca, "recordings_expired").await;
    assert_eq!(expired.last().unwrap()["count"], 4, "{expired:?}");
    if let (Some(files), Some((orphan, other))) = (&chunk_files, orphan) {
        assert!(!files.dir().join(&id).exists() && !files.dir().join(&keys).exists() && !orphan.exists());
        assert!(other.join("0").exists());
    }
}

/// `portcullisd backup` of a SQLite CA whose recordings are kept in files: the backup is
/// one file that holds them (in its rows), and the restored CA plays them.
async fn backup_holds_the_recording(fx: &Fx, id: &str) {
    let out = fx._dir.path().join("backup.db");
    let url = sqlite_url(fx._dir.path());
    portcullis_ca::backup::backup(&url, &out).await.unwrap();
    let restored_dir = fx._dir.path().join("restored");
    std::fs::create_dir(&restored_dir).unwrap();
    let restored_url = sqlite_url(&restored_dir);
    portcullis_ca::backup::restore(&out, &restored_url).await.unwrap();
    let config = CaConfig::new(restored_url, fx._dir.path().join("policy"), SecretString::from(TEST_PASSPHRASE));
    let restored = Ca::open(config, Arc::new(fx.clock.clone())).await.unwrap();
    let store = restored.core().store();
    assert_eq!(store.recording_chunks(id).await.unwrap(), fx.ca.core().store().recording_chunks(id).await.unwrap());
    assert!(!store.chunk_files().unwrap().dir().exists(), "the restored chunks are in their rows");
    let audrey = restored.identity().caller(&bearer(&restored, "audrey").await).await.unwrap();
    let read = restored.core().authorize::<proof::RecordingsRead>(&audrey).unwrap();
    let (_, playback) = restored.recordings().cast(&read, id).await.unwrap();
    let cast = playback.text().await.unwrap();
    assert!(cast.contains("secret-output$ ") && cast.contains("exit\\r\\n"), "{cast}");
    restored.core().store().close().await;
}

/// A chunk arriving when the disk is full (SQLite on a small tmpfs): refused with a 503
/// that says so, and nothing half-written — no row, no partial or temporary file — so the
/// bastion's retry of the same chunk is taken once space is back, and the recording plays
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_a_chunk_cleanly_and_its_retry_is_taken_once_space_is_back() {
    let disk = portcullis_tests::small_disk::SmallDisk::mount("24m");
    let fx = fixture_with_sqlite_in(false, Some(disk.path())).await;
    let (id, _) = console_session(&fx, "pve01").await;
    let first = json!({"seq": 0, "events": "[0.1, \"o\", \"before the disk filled\"]\n", "bytes": 22});
    assert_eq!(chunk(&fx, &fx.b1, &id, first).await.0, StatusCode::NO_CONTENT);

    let filler = disk.fill();
    let text = "after ".repeat(10_000);
    let second = json!({"seq": 1, "events": format!("[0.2, \"o\", \"{text}\"]\n"), "bytes": text.len(), "last": true});
    let (status, refusal) = chunk(&fx, &fx.b1, &id, second.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refusal}");
    assert_eq!(refusal["error"], "store_unavailable", "{refusal}");
    assert!(refusal["message"].as_str().unwrap().contains("disk full"), "{refusal}");
    let files = fx.ca.core().store().chunk_files().unwrap();
    let on_disk = || -> Vec<String> {
        let entries = std::fs::read_dir(files.dir().join(&id)).unwrap();
        let mut names: Vec<String> = entries.map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    };
    assert_eq!(on_disk(), ["0"], "no partial or temporary file is left");
    assert_eq!(fx.ca.core().store().recording_chunks(&id).await.unwrap().len(), 1, "no row without its file");

    std::fs::remove_file(filler).unwrap();
    assert_eq!(chunk(&fx, &fx.b1, &id, second).await.0, StatusCode::NO_CONTENT);
    assert_eq!(on_disk(), ["0", "1"]);
    let audrey = bearer(&fx.ca, "audrey").await;
    let (status, played, _) = cast(&fx, &audrey, &id).await;
    assert_eq!(status, StatusCode::OK, "{played}");
    // The output as the terminal showed it (a long frame plays as several events).
    let shown: String = played
        .lines()
        .skip(1)
        .map(|line| serde_json::from_str::<(f64, String, String)>(line).unwrap())
        .filter(|(_, code, _)| code == "o")
        .map(|(_, _, text)| text)
        .collect();
    assert_eq!(shown, format!("before the disk filled{text}"), "the recording plays whole");
}

/// A client may claim any terminal size (SSH carries 32-bit numbers; a real terminal's
/// are 16-bit). Claiming one no player can draw — to make the CA refuse the recording
/// (which then stops, under a `stop` rule) or to make playback draw billions of cells —
/// leaves the session recorded, its sizes within what a player draws; the same size
/// again is not recorded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_claiming_a_huge_terminal_is_still_recorded() {
    use portcullis_tests::bastion_world::{World, policy};
    use russh::ChannelMsg;
    let w = World::start("15m").await;
    let recorded = policy("15m").replace("allowed_ports = [22, 2200]\n", "allowed_ports = [22, 2200]\nrecord = true\n");
    let auditor = "[[role]]\nname = \"auditor\"\npermissions = [\"recordings.read\"]\n\n\
                   [[binding]]\nuser = \"admin\"\nroles = [\"auditor\"]\n";
    for (file, text) in [("prod.toml", recorded.as_str()), ("auditor.toml", auditor)] {
        let (status, body) = w.server.write_policy(file, text).await;
        assert!(status.is_success(), "{file}: {body}");
    }
    // Through russh: OpenSSH sends its terminal's real size.
    let conn = w.russh_login("root%pve01").await;
    let mut channel = conn.channel_open_session().await.unwrap();
    channel.request_pty(true, "xterm", 70_000, 24, 0, 0, &[]).await.unwrap();
    channel.request_shell(true).await.unwrap();
    for _ in 0..3 {
        channel.window_change(4_000_000_000, 100, 0, 0).await.unwrap();
    }
    channel.data(&b"echo sized-$((6*7)); exit\n"[..]).await.unwrap();
    let mut shown = Vec::new();
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => shown.extend_from_slice(&data),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    assert!(String::from_utf8_lossy(&shown).contains("sized-42"), "{}", String::from_utf8_lossy(&shown));

    let id = loop {
        let (status, list) = w.server.get_json(Some(&w.admin), "/v1/admin/recordings").await;
        assert_eq!(status, StatusCode::OK, "{list}");
        if let Some(r) = list.as_array().unwrap().iter().find(|r| r["ended_at"].is_u64()) {
            break r["session_id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(w.server.audit_events("recording_refused").await.is_empty(), "every chunk was taken");
    let (status, cast) = w.server.get_text(Some(&w.admin), &format!("/v1/admin/recordings/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{cast}");
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!((header["width"].as_u64(), header["height"].as_u64()), (Some(1000), Some(24)), "{header}");
    let events: Vec<(f64, String, String)> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let sizes: Vec<&str> = events.iter().filter(|e| e.1 == "r").map(|e| e.2.as_str()).collect();
    assert_eq!(sizes, ["1000x24", "1000x100"], "{cast}");
    let output: String = events.iter().filter(|e| e.1 == "o").map(|e| e.2.as_str()).collect();
    assert!(output.contains("sized-42"), "{cast}");
}

/// A real `ssh` through the all-in-one under a rule that records input and closes at a
/// 1 MiB limit: the user is told at the start; the recording holds what the terminal
/// showed and what was typed, in order; jump mode is refused with the reason; a session
/// printing more than the limit is closed with the reason, its recording marked cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_ssh_session_is_recorded_through_the_bastion_and_jump_mode_is_refused() {
    use portcullis_tests::bastion_world::{World, add_node, loopback_ip, policy, text, wait_output};
    use std::io::Write;
    let w = World::start("15m").await;
    let recorded = policy("15m").replace(
        "allowed_ports = [22, 2200]\n",
        "allowed_ports = [22, 2200]\nrecord = true\nrecord_input = true\nrecord_max_mib = 1\nrecord_over_limit = \"close\"\n",
    );
    let auditor = "[[role]]\nname = \"auditor\"\npermissions = [\"recordings.read\"]\n\n\
                   [[binding]]\nuser = \"admin\"\nroles = [\"auditor\"]\n";
    for (file, text) in [("prod.toml", recorded.as_str()), ("auditor.toml", auditor)] {
        let (status, body) = w.server.write_policy(file, text).await;
        assert!(status.is_success(), "{file}: {body}");
    }

    let mut child = w.spawn_ssh(&["-tt", "bastion"]);
    child.stdin.take().unwrap().write_all(b"echo typed-$((6*7)); exit\n").unwrap();
    let (out, _) = wait_output(child, Duration::from_secs(30));
    assert!(out.status.success(), "{}\n{}", text(&out), w.server.log());
    assert!(String::from_utf8_lossy(&out.stderr).contains("this session is recorded"), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("typed-42"), "{}", text(&out));

    let recordings = async || {
        for _ in 0..100 {
            let (status, list) = w.server.get_json(Some(&w.admin), "/v1/admin/recordings").await;
            assert_eq!(status, StatusCode::OK, "{list}");
            let list = list.as_array().unwrap().clone();
            if !list.is_empty() && list.iter().all(|r| r["ended_at"].is_u64()) {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the recording never ended")
    };
    let list = recordings().await;
    assert_eq!(list.len(), 1, "{list:?}");
    let id = list[0]["session_id"].as_str().unwrap();
    assert_eq!((list[0]["mode"].as_str(), list[0]["truncated"].as_bool()), (Some("terminated"), Some(false)));
    let (status, cast) = w.server.get_text(Some(&w.admin), &format!("/v1/admin/recordings/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{cast}");
    let events: Vec<(f64, String, String)> = cast.lines().skip(1).map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |code: &str| events.iter().filter(|e| e.1 == code).map(|e| e.2.as_str()).collect::<String>();
    assert!(of("o").contains("typed-42"), "{cast}");
    assert!(of("i").contains("echo typed-$((6*7)); exit"), "{cast}");
    assert!(events.windows(2).all(|p| p[0].0 <= p[1].0), "in time order: {cast}");
    // The CLI lists, exports (the same file) and plays it back; each fetch is audited.
    let cli = portcullis_tests::cli::AdminCli::login(&w.server).await;
    let listed = cli.run(&["admin", "recordings", "list", "--user", "alice"], "");
    assert!(listed.contains(id) && listed.contains("keystrokes"), "{listed}");
    assert!(!cli.run(&["admin", "recordings", "list", "--device", "pve02"], "").contains(id));
    assert_eq!(cli.run(&["admin", "recordings", "export", id], ""), cast);
    let played = cli.run(&["admin", "recordings", "play", id, "--speed", "100"], "");
    assert!(played.contains("typed-42"), "{played}");
    let audited = w.server.audit_events("recording_played").await;
    assert_eq!(audited.len(), 3, "{audited:?}");

    // Jump mode cannot be recorded: refused, and the user is told why (what `-J` runs:
    // `ssh -W`, whose channel refusal OpenSSH logs at INFO).
    let target = format!("{}:22", w.node.ip);
    let out = w.run("ssh", &["-o", "LogLevel=INFO", "-W", &target, "jump"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("recorded"), "{}", text(&out));
    let denied = w.server.audit_events("session_denied").await;
    assert!(denied.iter().any(|d| d.payload["reason"] == "recording_needs_terminated_mode"), "{denied:?}");

    // Over the limit, the rule closes the session.
    let child = w.spawn_ssh(&["bastion", "head -c 3000000 /dev/zero | od -v"]);
    let (out, _) = wait_output(child, Duration::from_secs(60));
    assert!(String::from_utf8_lossy(&out.stderr).contains("recording reached its size limit"), "{}", text(&out));
    w.server.await_audit("session_closed", |c| c.payload["reason"] == "recording_limit").await;
    let list = recordings().await;
    let cut = list.iter().find(|r| r["session_id"] != id).unwrap();
    assert_eq!(cut["truncated"], true, "{cut}");
    let bytes = cut["bytes"].as_u64().unwrap();
    assert!(bytes <= 1 << 20, "{bytes}");
    assert!(!w.server.audit_events("recording_truncated").await.is_empty());

    // A rule that stops recording at the limit lets the session go on: all the output
    // arrives, the recording ends where the limit was.
    let _pve02 = add_node(&w.server, &w.admin, "pve02", &loopback_ip(), None, None).await;
    let stop = "[[rule]]\nname = \"a-recorded-stop\"\npurpose = \"ssh_login\"\ntargets = 'in:devices name:pve02'\n\
                scope = { agents = [\"local\"] }\nrecord = true\nrecord_max_mib = 1\n";
    let (status, body) = w.server.write_policy("stop.toml", stop).await;
    assert!(status.is_success(), "{body}");
    w.add_host("pve02", "root%pve02");
    // The agent learns of a new node within a few seconds.
    for attempt in 0.. {
        let out = w.run("ssh", &["pve02", "true"]);
        if out.status.success() {
            break;
        }
        assert!(attempt < 40, "pve02 never became reachable: {}", text(&out));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = w.run("ssh", &["pve02", "head -c 3000000 /dev/zero | od -v"]);
    assert!(out.status.success() && out.stdout.len() > 2 << 20, "{}", String::from_utf8_lossy(&out.stderr));
    let list = recordings().await;
    let stopped: Vec<_> = list.iter().filter(|r| r["device"] == "pve02").collect();
    let big = stopped.iter().find(|r| r["truncated"] == true).expect("the long one is cut");
    assert!(big["bytes"].as_u64().unwrap() <= 1 << 20, "{big}");

    // A command given on the ssh command line is input too: recorded under a rule that
    // records input (`ssh host 'cmd; history -c'` must not leave only its output).
    let before: Vec<String> = list.iter().map(|r| r["session_id"].as_str().unwrap().to_owned()).collect();
    let out = w.run("ssh", &["bastion", "echo exec-$((2*21))"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("exec-42"), "{}", text(&out));
    let list = recordings().await;
    let exec = list.iter().find(|r| !before.contains(&r["session_id"].as_str().unwrap().to_owned())).unwrap();
    let path = format!("/v1/admin/recordings/{}", exec["session_id"].as_str().unwrap());
    let (status, cast) = w.server.get_text(Some(&w.admin), &path).await;
    assert_eq!(status, StatusCode::OK, "{cast}");
    let events: Vec<(f64, String, String)> = cast.lines().skip(1).map(|l| serde_json::from_str(l).unwrap()).collect();
    let typed: String = events.iter().filter(|e| e.1 == "i").map(|e| e.2.as_str()).collect();
    assert!(typed.contains("echo exec-$((2*21))"), "{cast}");
}

/// In Chromium: a console under a recorded rule says so in its status line; the
/// auditor finds the recording on the admin page and plays it in asciinema-player, on a
/// page whose CSP allows WebAssembly and nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_console_is_announced_and_plays_back_in_the_browser() {
    use portcullis_tests::bastion_world::{CONSOLE_POLICY, PASSWORD as ALICE_PASSWORD, World};
    use portcullis_tests::browser::{run_script, screenshots};
    let w = World::start("15m").await;
    // Rules match by name, first to last: this one comes before the all-in-one's own.
    let console = CONSOLE_POLICY
        .replace("scope = { agents = [\"local\"] }\n", "scope = { agents = [\"local\"] }\nrecord = true\n")
        .replace("name = \"prod-consoles\"", "name = \"audited-consoles\"");
    assert_ne!(console, CONSOLE_POLICY);
    let auditor = "[[role]]\nname = \"auditor\"\npermissions = [\"recordings.read\"]\n\n\
                   [[binding]]\nuser = \"admin\"\nroles = [\"auditor\"]\n";
    for (file, text) in [("console.toml", console.as_str()), ("auditor.toml", auditor)] {
        let (status, body) = w.server.write_policy(file, text).await;
        assert!(status.is_success(), "{file}: {body}");
    }
    let report = run_script(
        "recording.mjs",
        &json!({
            "url": w.server.url,
            "user": "alice",
            "password": ALICE_PASSWORD,
            "device": "pve01",
            "auditor": "admin",
            "auditor_password": w.server.admin_password().await,
            "screenshot": screenshots().join("recording.png"),
        }),
    );
    assert!(report.get("error").is_none() && report.get("page_errors").is_none(), "{report:#}\n{}", w.server.log());
    assert!(report.get("console_errors").is_none(), "{report:#}");
    assert_eq!(report["steps"], json!(["recorded_console", "played"]), "{report:#}");
    assert!(report["console_status"].as_str().unwrap().contains("this session is recorded"), "{report:#}");
    assert!(report["tabs"].as_array().unwrap().iter().any(|t| t == "Recordings"), "{report:#}");
    assert_eq!(report["title"], "alice as root on pve01", "{report:#}");
    assert_eq!(report["played"], true);
    let csp = report["csp"].as_str().unwrap();
    assert!(csp.contains("script-src 'self' 'wasm-unsafe-eval';") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(report["a11y"], json!([]), "axe-core, serious or critical: {report:#}");
    let played = w.server.audit_events("recording_played").await;
    assert!(played.iter().any(|p| p.payload["actor"] == "admin" && p.payload["user"] == "alice"), "{played:?}");
}
