//! Refusals of unauthenticated clients cost them nothing, so they must not cost one
//! hash-chained audit record each: the first refusal of each source, reason and user in
//! a window is recorded on its own, repeats are counted into one `refusals_summarized`
//! record per window — at the CA (sign-in) and at the bastion's front door (refused
//! keys, connections over the per-source limit), which sends its summary to the CA.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_ca::ManualClock;
use portcullis_proto::AuditRecord;
use portcullis_tests::ssh::{ed25519_key, write_key_pair};
use portcullis_tests::{ServedCa, Server, ServerOpts, audit_payloads, ca_in_process, first_admin, sqlite_url};
use reqwest::StatusCode;
use serde_json::{Value, json};

const GUESSES: usize = 40;

/// The counts of `summaries` for `reason`, summed over the windows.
fn counted(summaries: &[Value], source: &str, reason: &str) -> u64 {
    summaries
        .iter()
        .flat_map(|s| s["counts"].as_array().unwrap().iter())
        .filter(|c| c["source"] == source && c["reason"] == reason)
        .map(|c| c["counted"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_guesser_costs_one_record_per_reason_and_one_summary_per_window() {
    let dir = tempfile::tempdir().unwrap();
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("policy.toml"), "").unwrap();
    let clock = ManualClock::new(1_800_000_000);
    let ca = Arc::new(ca_in_process(&sqlite_url(dir.path()), &policy_dir, clock.clone()).await.unwrap());
    first_admin(&ca, "admins", "192.0.2.1").await;
    let api = ServedCa::start(Arc::clone(&ca)).await;

    let mut statuses = Vec::new();
    for _ in 0..GUESSES {
        let body = json!({"username": "mallory", "password": "guess-guess-guess"});
        statuses.push(api.post_json(None, "/v1/auth/login", &body).await.0);
    }
    let refused = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    let limited = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!(refused + limited, GUESSES, "{statuses:?}");
    assert!(limited > 0, "the address was slowed down too: {statuses:?}");

    let records = |event: &'static str| audit_payloads(&ca, event);
    // One record per (source, reason, user): the first unknown-user guess and the
    // first rate-limited one. Every guess still answered as before.
    let failed = records("login_failed").await;
    let reasons: Vec<&str> = failed.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["unknown_user", "rate_limited"], "{failed:?}");
    assert!(records("refusals_summarized").await.is_empty(), "the window is still open");

    // The window ends: its counts become one summary, also without any new refusal.
    clock.set(1_800_000_000 + 61);
    ca.core().flush_refusals().await.unwrap();
    let summaries = records("refusals_summarized").await;
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    let s = &summaries[0];
    assert_eq!(s["origin"], "ca");
    assert_eq!(s["overflow"], 0);
    assert_eq!(counted(&summaries, "127.0.0.1", "login_failed:unknown_user"), refused as u64 - 1);
    assert_eq!(counted(&summaries, "127.0.0.1", "login_failed:rate_limited"), limited as u64 - 1);
    assert!(s["counts"].as_array().unwrap().iter().all(|c| c["users"] == json!(["mallory"])), "{s}");
    assert!(!s.to_string().contains("guess-guess"), "no password in the summary");
    // Nothing more to report: a second flush writes nothing.
    clock.set(1_800_000_000 + 200);
    ca.core().flush_refusals().await.unwrap();
    assert_eq!(records("refusals_summarized").await.len(), 1);

    // At shutdown the window still open is written too (it went with the process).
    clock.set(1_800_000_000 + 400);
    for _ in 0..3 {
        let body = json!({"username": "mallory", "password": "guess-guess-guess"});
        api.post_json(None, "/v1/auth/login", &body).await;
    }
    ca.core().flush_refusals().await.unwrap();
    assert_eq!(records("refusals_summarized").await.len(), 1, "the window is still open");
    ca.core().flush_refusals_now().await.unwrap();
    let summaries = records("refusals_summarized").await;
    assert_eq!(summaries.len(), 2, "{summaries:?}");
    assert!(counted(&summaries[1..], "127.0.0.1", "login_failed:rate_limited") >= 1, "{summaries:?}");
}

/// Runs a stock `ssh` with a plain key (no certificate) at the bastion: refused.
fn ssh_with_plain_key(bastion: SocketAddr, key: &std::path::Path) -> std::process::Output {
    std::process::Command::new("ssh")
        .args(["-F", "/dev/null", "-p", &bastion.port().to_string()])
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"])
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .arg("-i")
        .arg(key)
        .args(["root%pve01@127.0.0.1", "true"])
        .output()
        .expect("ssh")
}

async fn poll_audit(server: &Server, event: &str, done: impl Fn(&[AuditRecord]) -> bool) -> Vec<AuditRecord> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = server.audit_events(event).await;
        if done(&found) || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bastion_front_door_records_the_first_refusal_and_summarizes_the_rest() {
    let server = Server::start_with(ServerOpts {
        args: vec!["--refusal-summary-every".into(), "2s".into()],
        ..ServerOpts::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key = write_key_pair(dir.path(), "plain", &ed25519_key());
    const TRIES: u64 = 5;
    for _ in 0..TRIES {
        let out = ssh_with_plain_key(server.bastion, &key);
        assert!(!out.status.success(), "a plain key got in");
    }
    // Idle connections from one address beyond the per-source limit (16) are closed
    // before the banner: counted only.
    let socket = |_: usize| async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.9:0".parse().unwrap()).unwrap();
        s.connect(server.bastion).await
    };
    let mut idle = Vec::new();
    for i in 0..20 {
        idle.push(socket(i).await.unwrap());
    }

    let summaries = poll_audit(&server, "refusals_summarized", |found| {
        let payloads: Vec<Value> = found.iter().map(|r| r.payload.clone()).collect();
        counted(&payloads, "127.0.0.1", "plain_public_key") >= TRIES - 1
            && counted(&payloads, "127.0.0.9", "connection_limit") >= 4
    })
    .await;
    let payloads: Vec<Value> = summaries.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(counted(&payloads, "127.0.0.1", "plain_public_key"), TRIES - 1, "{payloads:#?}");
    assert_eq!(counted(&payloads, "127.0.0.9", "connection_limit"), 4, "{payloads:#?}");
    assert!(payloads.iter().all(|p| p["origin"] == "local"), "the bastion that counted: {payloads:?}");
    let refused = server.audit_events("bastion_auth_refused").await;
    let plain: Vec<&AuditRecord> = refused.iter().filter(|r| r.payload["reason"] == "plain_public_key").collect();
    assert_eq!(plain.len(), 1, "one record for the first refusal: {refused:#?}");
    assert_eq!(plain[0].payload["user"], "root%pve01");
    drop(idle);
}

/// A stopping bastion hands the CA what its open window counted: the forwarding task
/// went with the process, and with it every refusal counted since the last summary
/// (a minute's worth by default; found in review, 2026-12-06).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_bastion_reports_the_refusals_it_counted() {
    let mut server = Server::start_with(ServerOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let key = write_key_pair(dir.path(), "plain", &ed25519_key());
    for _ in 0..3 {
        assert!(!ssh_with_plain_key(server.bastion, &key).status.success(), "a plain key got in");
    }
    let status = server.terminate(Duration::from_secs(30));
    assert!(status.success(), "portcullisd exited with {status}");
    let ca = portcullis_tests::same_ca(&server, Arc::new(portcullis_ca::SystemClock)).await;
    let summaries = audit_payloads(&ca, "refusals_summarized").await;
    assert_eq!(counted(&summaries, "127.0.0.1", "plain_public_key"), 2, "{summaries:#?}");
}

/// Refusals reach the operator log too, one line each (for fail2ban or a SIEM), never
/// with the typed name; with `--log-format json` each line is one JSON object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_is_a_json_log_line_without_the_typed_name() {
    let server =
        Server::start_with(ServerOpts { args: vec!["--log-format".into(), "json".into()], ..ServerOpts::default() })
            .await;
    for _ in 0..3 {
        let (status, _) = server.try_login("mallory-typed-this", "not-the-password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let log = std::fs::read_to_string(&server.log_path).unwrap();
    let refusals: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|v| v["target"] == "portcullis_ca::refusal")
        .collect();
    assert_eq!(refusals.len(), 3, "{log}");
    for r in &refusals {
        assert_eq!(r["fields"]["reason"], "login_failed:unknown_user", "{r}");
        assert_eq!(r["fields"]["client_ip"], "127.0.0.1", "{r}");
    }
    assert!(!log.contains("mallory-typed-this"), "the typed name stays out of the log");
}

#[test]
fn the_version_names_the_revision() {
    let out = std::process::Command::new(portcullis_tests::bin("portcullisd")).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    let revision = version.trim().rsplit_once(" (").map(|(_, r)| r.trim_end_matches(')')).unwrap_or_default();
    assert!(
        revision == "unknown" || (revision.len() == 12 && revision.chars().all(|c| c.is_ascii_hexdigit())),
        "{version}"
    );
}
