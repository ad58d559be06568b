//! The upgrade path: databases written by the previous release are opened by this one
//! and migrations bring them up to date with nothing lost. The fixtures
//! (`tests/fixtures/previous-release/`, see its README) were written by `portcullisd`
//! at commit a025819 (schema at migration 0012) through its API: an administrator who
//! chose a password, alice, a node, two certificates (one revoked), an enrollment token.
//!
//! SQLite goes the way an operator upgrades a backup (`portcullisd restore`, which
//! checks and migrates); PostgreSQL the way replicas upgrade in place: two of them
//! starting at once on the old database (the migration lock lets one migrate).
//! Afterwards, on each: the audit chain verifies, the users, node and certificates are
//! there (the revoked one still revoked), a certificate issued before the upgrade still
//! validates against the CA's keys, old passwords sign in and a new certificate is issued.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_ca::{Ca, CaConfig, ManualClock};
use portcullis_sshcert::Krl;
use portcullis_tests::inprocess::validates_against;
use portcullis_tests::ssh::{ed25519_key, public_line};
use portcullis_tests::{Postgres, ServedCa, bin};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The passphrase the PostgreSQL fixture's CA keys were encrypted with (test keys only).
const PG_PASSPHRASE: &str = "previous release fixture passphrase, public";

fn fixture(part: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/previous-release").join(part)
}

/// The previous release's certificate that was kept, and the serials of both.
fn issued(dir: &str) -> (ssh_key::Certificate, String, String) {
    let cert =
        ssh_key::Certificate::from_openssh(&std::fs::read_to_string(fixture(dir).join("kept-cert.pub")).unwrap())
            .unwrap();
    let serials: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(dir).join("serials.json")).unwrap()).unwrap();
    (cert, serials["kept_serial"].as_str().unwrap().to_owned(), serials["revoked_serial"].as_str().unwrap().to_owned())
}

fn policy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("policy.toml"), dir.path().join("default.toml")).unwrap();
    dir
}

async fn open(url: &str, policy: &Path, passphrase: &str, now: u64) -> Arc<Ca> {
    let config = CaConfig::new(url.to_owned(), policy.to_owned(), SecretString::from(passphrase.to_owned()));
    Arc::new(Ca::open(config, Arc::new(ManualClock::new(now))).await.unwrap())
}

async fn check_upgraded(ca: Arc<Ca>, dir: &str) {
    let (cert, kept, revoked) = issued(dir);
    ca.housekeeping().await.expect("the tables of the new migrations are there");
    let served = ServedCa::start(Arc::clone(&ca)).await;
    let login = |user: &str, password: &str| {
        let body = json!({ "username": user, "password": password });
        let served = &served;
        async move {
            let (status, body) = served.post_json(None, "/v1/auth/login", &body).await;
            assert_eq!(status, StatusCode::OK, "{dir}: {body}");
            body["token"].as_str().unwrap().to_owned()
        }
    };
    let admin = login("admin", "previous-release-admin").await;
    let (status, body) = served.get_json(Some(&admin), "/v1/admin/audit/verify").await;
    assert_eq!((status, body["ok"].as_bool()), (StatusCode::OK, Some(true)), "{dir}: {body}");
    let (_, users) = served.get_json(Some(&admin), "/v1/admin/users").await;
    assert!(users.as_array().unwrap().iter().any(|u| u["username"] == "alice"), "{dir}: {users}");
    let (_, nodes) = served.get_json(Some(&admin), "/v1/admin/nodes").await;
    assert!(nodes.as_array().unwrap().iter().any(|n| n["name"] == "pve01"), "{dir}: {nodes}");
    let (_, certs) = served.get_json(Some(&admin), "/v1/admin/certs?user=alice").await;
    let revoked_of = |serial: &str| {
        certs.as_array().unwrap().iter().find(|c| c["serial"] == serial).unwrap_or_else(|| panic!("{dir}: {serial}"))
            ["revoked"]
            .clone()
    };
    assert_eq!((revoked_of(&kept), revoked_of(&revoked)), (json!(false), json!(true)), "{dir}: {certs}");

    // The certificate issued before the upgrade validates: same CA key, and the KRL
    // (which still revokes the other one) does not name it.
    let krl = Krl::parse(&ca.revocation().krl().await.unwrap()).unwrap();
    validates_against(&ca, &cert, Some(&krl))
        .unwrap_or_else(|e| panic!("{dir}: an old certificate no longer validates: {e:?}"));

    let alice = login("alice", "previous-release-alice").await;
    let body = json!({ "public_key": public_line(&ed25519_key()), "ttl_seconds": 600 });
    let (status, body) = served.post_json(Some(&alice), "/v1/certs/user", &body).await;
    assert_eq!(status, StatusCode::OK, "{dir}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_the_previous_release_restores_and_migrates() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("portcullisd"))
        .args(["restore", "--data-dir"])
        .arg(data.path())
        .arg("--from")
        .arg(fixture("sqlite/portcullis.db"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let passphrase = std::fs::read_to_string(fixture("sqlite/ca-passphrase")).unwrap();
    let policy = policy_dir();
    let (cert, _, _) = issued("sqlite");
    let url = format!("sqlite://{}", data.path().join("portcullis.db").display());
    check_upgraded(open(&url, policy.path(), passphrase.trim(), cert.valid_after() + 60).await, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_upgrade_the_previous_releases_postgres_database_in_place() {
    let pg = Postgres::start().unwrap();
    let url = pg.create_database("previous_release").unwrap();
    pg.load_sql("previous_release", &fixture("postgres/dump.sql")).unwrap();
    let policy = policy_dir();
    let (cert, _, _) = issued("postgres");
    let now = cert.valid_after() + 60;
    let (a, b) =
        tokio::join!(open(&url, policy.path(), PG_PASSPHRASE, now), open(&url, policy.path(), PG_PASSPHRASE, now));
    check_upgraded(a, "postgres").await;
    check_upgraded(b, "postgres").await;
}
