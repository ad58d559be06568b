//! `portcullisd backup` and `restore` on a running all-in-one: the copy is taken online,
//! checked (audit chain, users, nodes, CA keys), restored into a fresh data directory —
//! never over a database — and the restored CA holds the same users, the same CA keys
//! and an intact audit chain, so certificates issued before the backup still validate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::process::Command;
use std::sync::Arc;

use portcullis_ca::{Ca, CaConfig, ManualClock};
use portcullis_tests::bin;
use portcullis_tests::inprocess::validates_against;
use portcullis_tests::ssh::{ed25519_key, public_line};
use portcullis_tests::{Server, ServerOpts};
use secrecy::SecretString;

fn portcullisd(args: &[&str]) -> std::process::Output {
    Command::new(bin("portcullisd")).args(args).env_remove("RUST_BACKTRACE").output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_online_restores_into_a_ca_that_still_trusts_its_certificates() {
    let server = Server::start_with(ServerOpts::default()).await;
    let admin = server.admin_token().await;
    server.add_user(&admin, "alice", &["portcullis-admins"], "alice-password-0123").await;
    let alice = server.login("alice", "alice-password-0123").await;
    let key = ed25519_key();
    let (status, body) = server.issue_cert(&alice, &public_line(&key)).await;
    assert!(status.is_success(), "{body}");
    let cert = ssh_key::Certificate::from_openssh(body["certificate"].as_str().unwrap()).unwrap();

    // Online: the server keeps running (and writing) meanwhile.
    let work = tempfile::tempdir().unwrap();
    let backup = work.path().join("portcullis-backup.db");
    let data = server.data_dir.display().to_string();
    let out = portcullisd(&["backup", "--data-dir", &data, "--out", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("hash chain verified") && said.contains("CA key(s)"), "{said}");
    assert!(said.contains("passphrase is not in the backup"), "{said}");
    let again = portcullisd(&["backup", "--data-dir", &data, "--out", backup.to_str().unwrap()]);
    assert!(!again.status.success(), "a backup never overwrites");

    // Restore into a fresh directory; never over an existing database.
    let fresh = work.path().join("restored");
    std::fs::create_dir(&fresh).unwrap();
    let fresh_s = fresh.display().to_string();
    let out = portcullisd(&["restore", "--data-dir", &fresh_s, "--from", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let out = portcullisd(&["restore", "--data-dir", &data, "--from", backup.to_str().unwrap()]);
    assert!(!out.status.success(), "restoring over the live database must be refused: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("never overwrites"), "{out:?}");

    // A backup whose audit trail was edited is refused, and leaves nothing behind.
    let tampered = work.path().join("tampered.db");
    std::fs::copy(&backup, &tampered).unwrap();
    {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", tampered.display())).await.unwrap();
        sqlx::query("UPDATE audit_log SET payload = replace(payload, 'alice', 'mallory')")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let elsewhere = work.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let out =
        portcullisd(&["restore", "--data-dir", elsewhere.to_str().unwrap(), "--from", tampered.to_str().unwrap()]);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("audit chain breaks"), "{out:?}");
    assert!(!elsewhere.join("portcullis.db").exists());

    // The restored CA, with the passphrase kept apart: same users, same trust, same chain.
    let passphrase = std::fs::read_to_string(server.data_dir.join("ca-passphrase")).unwrap();
    let config = CaConfig::new(
        format!("sqlite://{}", fresh.join("portcullis.db").display()),
        server.policy_dir(),
        SecretString::from(passphrase.trim().to_owned()),
    );
    let restored = Arc::new(Ca::open(config, Arc::new(ManualClock::new(cert.valid_after() + 60))).await.unwrap());
    assert!(restored.core().store().user("alice").await.unwrap().is_some());
    assert_eq!(restored.core().store().verify_audit_chain().await.unwrap().first_bad_seq, None);
    let user_keys = restored.core().trusted_keys(portcullis_ca::keys::KeyPurpose::User);
    assert_eq!(user_keys, server.user_ca_keys, "the restored CA signs and trusts with the same user key");
    validates_against(&restored, &cert, None)
        .expect("a certificate issued before the backup validates after the restore");
}
