//! The CA's HTTP edge against hostile and careless callers, through the real
//! `portcullisd`: password guessing from many addresses never locks the real user out,
//! and malformed input (control characters, huge bodies, bad paths and queries, hostile
//! node records) gets a clean JSON error with nothing stored.

// Test code: a failed expectation must fail the test, so unwrap/expect/panic/indexing
// are the right tools here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_tests::server::{client_from, status_and_json};
use portcullis_tests::{Postgres, ServedCa, Server, ServerOpts, ca_in_process};
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr};

const ALICE_PASSWORD: &str = "alice-password-0123456789";
const WRONG_PASSWORD: &str = "not-the-password-0123";

fn addr(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

async fn login_from(server: &Server, from: IpAddr, user: &str, password: &str) -> reqwest::Response {
    client_from(&server.pin, from)
        .post(server.endpoint("/v1/auth/login"))
        .json(&json!({ "username": user, "password": password }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn failures_from_other_addresses_never_lock_the_real_user_out() {
    let server = Server::start().await;
    let admin = server.admin_token().await;
    server.add_user(&admin, "alice", &["staff"], ALICE_PASSWORD).await;

    // The attack that used to lock alice out: ten wrong passwords from ten addresses.
    for i in 0..10 {
        let resp = login_from(&server, addr(20 + i), "alice", WRONG_PASSWORD).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "guess {i}");
    }
    // Alice, from her own machine (no failures of its own), gets in.
    let resp = login_from(&server, addr(2), "alice", ALICE_PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::OK, "the real user was locked out by other addresses' failures");

    // The attacker's side: one address guessing is slowed down after a few free tries,
    // with Retry-After, and then even the right password waits out the back-off there.
    let attacker = addr(50);
    let mut unauthorized = 0;
    let mut limited = None;
    for _ in 0..12 {
        let resp = login_from(&server, attacker, "alice", WRONG_PASSWORD).await;
        match resp.status() {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited = Some(resp);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let limited = limited.expect("one address guessing was never slowed down");
    assert!((5..=10).contains(&unauthorized), "{unauthorized} guesses before the back-off");
    let retry_after: u64 = limited.headers()[RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1, "Retry-After: {retry_after}");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    // Meanwhile alice still signs in from her address.
    let resp = login_from(&server, addr(2), "alice", ALICE_PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let failed = server.audit_events("login_failed").await;
    assert!(failed.iter().any(|r| r.payload["reason"] == "rate_limited"), "the refusal is audited");
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_anonymous_logins_is_refused_as_busy_not_hashed_at_once() {
    let server = Server::start_with(ServerOpts {
        args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
        ..ServerOpts::default()
    })
    .await;
    server.admin_token().await;
    let before = peak_rss_kib(server.pid());
    // 300 sign-ins at once, each from its own address (so no per-address limit applies),
    // each costing an argon2id hash (unknown users hash against a dummy).
    let mut tasks = Vec::new();
    for i in 0..300u16 {
        let [hi, lo] = (i + 1).to_be_bytes();
        let client = client_from(&server.pin, IpAddr::V4(Ipv4Addr::new(127, 1, hi, lo)));
        let url = server.endpoint("/v1/auth/login");
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .json(&json!({ "username": format!("nobody{i}"), "password": "wrong-password-0123" }))
                .send()
                .await
                .unwrap();
            let retry_after = resp.headers().get(RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
            (resp.status(), retry_after, resp.json::<Value>().await.unwrap())
        }));
    }
    let mut busy = 0u64;
    for task in tasks {
        let (status, retry_after, body) = task.await.unwrap();
        match status {
            StatusCode::UNAUTHORIZED => assert_eq!(body["error"], "invalid_credentials"),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["error"], "busy", "{body}");
                assert!(retry_after.is_some_and(|v| v.parse::<u64>().unwrap() >= 1), "503 busy carries Retry-After");
                busy += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(busy > 0, "300 simultaneous hashes were all admitted");
    let grown_mib = peak_rss_kib(server.pid()).saturating_sub(before) / 1024;
    // Unbounded, each concurrent argon2id holds ~19 MiB (300 × 19 MiB ≈ 5.6 GiB).
    // Bounded, the 300 TLS connections themselves cost most of the growth: 300–400 MiB
    // on a loaded 2-core machine, so the bound leaves room and still sits far below.
    assert!(grown_mib < 800, "peak memory grew by {grown_mib} MiB under the flood");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(&format!("portcullis_ca_busy_refusals_total{{work=\"password_hashing\"}} {busy}\n")),
        "the refusals are counted: {metrics}"
    );
    let refused = 300 - busy;
    assert!(
        metrics.contains(&format!("portcullis_ca_refusals_total{{reason=\"login_failed:unknown_user\"}} {refused}\n")),
        "each refused guess is counted by reason: {metrics}"
    );
    // Counts are nobody's business on the public port.
    let (status, _) = server.get_text(None, "/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The real user still signs in once the flood is over, and is counted.
    server.login("admin", &server.admin_password().await).await;
    assert!(server.metrics().await.contains("portcullis_ca_sign_ins_total{source=\"local\"} "), "sign-ins counted");
}

/// A NUL in a user name is refused before any lookup, with the same 400 on both
/// databases, and nothing is audited under another name.
async fn nul_user_name_is_a_clean_400(send: impl AsyncFn(&str, Value) -> (StatusCode, Value)) {
    for name in ["admin\u{0}", "ad\u{0}min", "admin\n", "\u{1b}[31madmin"] {
        let (status, body) = send("/v1/auth/login", json!({ "username": name, "password": "whatever-password" })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}: {body}");
        assert_eq!(body["error"], "bad_request", "{body}");
        assert!(!body["message"].as_str().unwrap().contains('\u{0}'), "{body}");
    }
}

#[tokio::test]
async fn control_characters_in_identifiers_are_refused_alike_on_sqlite_and_postgres() {
    let server = Server::start().await;
    nul_user_name_is_a_clean_400(async |path: &str, body: Value| server.post_json(None, path, &body).await).await;
    let failed = server.audit_events("login_failed").await;
    assert!(failed.is_empty(), "a refused name was audited: {failed:?}");
    // Positive control: the real admin still signs in.
    server.admin_token().await;

    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    let work = tempfile::tempdir().unwrap();
    let policy_dir = work.path().join("policy");
    std::fs::create_dir(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("policy.toml"), "").unwrap();
    let ca = ca_in_process(&pg.url(), &policy_dir, portcullis_ca::SystemClock).await.unwrap();
    let password = ca.identity().bootstrap_admin("admin", "admins").await.unwrap().unwrap();
    let served = ServedCa::start(std::sync::Arc::new(ca)).await;
    nul_user_name_is_a_clean_400(async |path: &str, body: Value| {
        served.send(reqwest::Method::POST, None, path, Some(&body)).await
    })
    .await;
    let (status, body) = served
        .send(
            reqwest::Method::POST,
            None,
            "/v1/auth/login",
            Some(&json!({
                "username": "admin",
                "password": secrecy::ExposeSecret::expose_secret(&password),
                "new_password": "admin-own-password",
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let raw = sqlx::query_scalar::<_, String>("SELECT payload FROM audit_log WHERE event = 'login_failed'")
        .fetch_all(served.ca.core().store().pool())
        .await
        .unwrap();
    assert!(raw.is_empty(), "a refused name was audited on PostgreSQL: {raw:?}");
}

#[tokio::test]
async fn malformed_requests_get_json_errors() {
    let server = Server::start().await;
    let admin = server.admin_token().await;
    let client = server.client();

    // A 10 MiB body, sent in full before the answer is read: 413 with the JSON error.
    let huge = format!("{{\"username\":\"admin\",\"password\":\"{}\"}}", "x".repeat(10 * 1024 * 1024));
    let resp = client
        .post(server.endpoint("/v1/auth/login"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("a 10 MiB body gets an HTTP answer");
    let (status, body) = status_and_json(resp).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"], "too_large");

    // Malformed paths and query strings: JSON, not axum's plain text.
    for path in [
        "/v1/admin/certs?user=%ZZ&user=a",
        "/v1/admin/audit?after=minus-one",
        "/v1/admin/audit?limit=99999999999999999999",
        "/v1/admin/users/al%00ice/disable",
        "/v1/admin/inventory/pve%0a01",
        "/v1/nodes/%FF%FE/principals",
    ] {
        let method = if path.ends_with("/disable") { reqwest::Method::POST } else { reqwest::Method::GET };
        let resp = server.request(method, Some(&admin), path, None).await;
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: {status} is not JSON: {text:?}"));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"], "bad_request", "{path}: {body}");
    }
    // A known path with the wrong method: JSON too.
    let resp = server.request(reqwest::Method::DELETE, Some(&admin), "/v1/auth/login", None).await;
    let (status, body) = status_and_json(resp).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_eq!(body["error"], "method_not_allowed");
    // Positive control: a well-formed query works.
    let (status, _) = server.get_json(Some(&admin), "/v1/admin/audit?after=0&limit=5").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn hostile_node_records_are_refused_and_nothing_is_stored() {
    let server = Server::start().await;
    let admin = server.admin_token().await;
    let long_key = "k".repeat(300);
    let hostile = [
        json!({ "name": ".." }),
        json!({ "name": ".hidden" }),
        json!({ "name": "pve01;reboot" }),
        json!({ "name": "pve01", "addresses": ["127.0.0.1:22; rm -rf /"] }),
        json!({ "name": "pve01", "addresses": ["a".repeat(3000)] }),
        json!({ "name": "pve01", "addresses": ["$(reboot)"] }),
        json!({ "name": "pve01", "tags": { long_key: "x" } }),
        json!({ "name": "pve01", "tags": { "a\"b": "x" } }),
        json!({ "name": "pve01", "tags": { "cluster\u{0}": "prod" } }),
        json!({ "name": "pve01", "tags": { "cluster": "prod\u{0}" } }),
        json!({ "name": "pve01", "agent": "../../etc" }),
    ];
    for node in &hostile {
        let (status, body) = server.post_json(Some(&admin), "/v1/admin/nodes", node).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{node}: {body}");
        assert_eq!(body["error"], "bad_request");
    }
    let (status, nodes) = server.get_json(Some(&admin), "/v1/admin/nodes").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(nodes.as_array().unwrap().len(), 0, "a refused record was stored: {nodes}");
    // Positive control: a well-formed record with a port and tags is stored.
    let good = json!({
        "name": "pve01",
        "addresses": ["10.0.0.5", "pve01.example:2222", "[2001:db8::5]:22"],
        "tags": { "cluster": "prod", "rack": "r12 / row 3" },
    });
    let (status, body) = server.post_json(Some(&admin), "/v1/admin/nodes", &good).await;
    assert!(status.is_success(), "{body}");
    let (_, nodes) = server.get_json(Some(&admin), "/v1/admin/nodes").await;
    assert_eq!(nodes.as_array().unwrap().len(), 1);
}

/// A TLS connection from `from` to the server, handshake done, nothing sent; `Err` when
/// the server closes it first.
async fn silent_connection(
    server: &Server,
    from: IpAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let to: std::net::SocketAddr = server.url.strip_prefix("https://").unwrap().parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(from, 0))?;
    let tcp = socket.connect(to).await?;
    let config = portcullis_proto::pin::pinned_client_config(&server.pin).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::from(to.ip());
    connector.connect(name, tcp).await
}

/// Connections held open cannot take the CA's descriptors. Past the per-source cap a new
/// connection from that address is closed before its TLS handshake (and the refusals
/// logged), while another address is still served; a place comes back when a connection
/// closes; and a connection that completes its handshake and then sends nothing (a
/// slowloris) is closed by the server instead of being held for ever.
#[tokio::test]
async fn connections_held_open_take_only_their_sources_share() {
    let server = Server::start_with(ServerOpts {
        args: vec!["--https-connections-per-source".into(), "4".into()],
        ..ServerOpts::default()
    })
    .await;
    let hog = addr(2);
    let mut held = Vec::new();
    for n in 1..=4 {
        held.push(silent_connection(&server, hog).await.unwrap_or_else(|e| panic!("connection {n}: {e}")));
    }
    assert!(silent_connection(&server, hog).await.is_err(), "a fifth connection from the same address");
    let other = client_from(&server.pin, addr(3)).get(server.endpoint("/v1/ca/user/keys")).send().await.unwrap();
    assert_eq!(other.status(), StatusCode::OK, "another address is served");
    assert!(server.log().contains("HTTPS connections refused"), "the refusal is logged: {}", server.log());

    drop(held.pop());
    let given_back = async {
        loop {
            if let Ok(conn) = silent_connection(&server, hog).await {
                return conn;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let conn = tokio::time::timeout(std::time::Duration::from_secs(10), given_back).await.expect("a place comes back");
    held.push(conn);

    // Nothing sent: the server waits for a request's head only so long.
    let mut silent = held.swap_remove(0);
    let mut byte = [0u8; 1];
    let wait = portcullis_ca::server::HEADER_READ_TIMEOUT + std::time::Duration::from_secs(15);
    let read = tokio::time::timeout(wait, tokio::io::AsyncReadExt::read(&mut silent, &mut byte)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "a silent connection is closed by the server: {read:?}");
}
