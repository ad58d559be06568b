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

/// Runs `portcullisd ARGS…` under the usual umask 022: what it writes for its owner only
/// must not rely on a stricter one.
fn portcullisd(args: &[&str]) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg("umask 022; exec \"$0\" \"$@\"")
        .arg(bin("portcullisd"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

/// The permission bits of `path`.
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
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
    // Password hashes, sealed CA keys and the audit trail: the owner's only (it was 0644).
    assert_eq!(mode(&backup), 0o600, "the backup is readable by others");
    let again = portcullisd(&["backup", "--data-dir", &data, "--out", backup.to_str().unwrap()]);
    assert!(!again.status.success(), "a backup never overwrites");

    // Restore into a fresh directory; never over an existing database.
    let fresh = work.path().join("restored");
    std::fs::create_dir(&fresh).unwrap();
    let fresh_s = fresh.display().to_string();
    std::fs::set_permissions(&backup, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = portcullisd(&["restore", "--data-dir", &fresh_s, "--from", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&fresh.join("portcullis.db")), 0o600, "the restored database took the backup file's mode");
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

/// The newest migration a database at `url` has applied.
async fn schema_version(url: &str) -> i64 {
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let version =
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success").fetch_one(&pool).await.unwrap();
    pool.close().await;
    version
}

/// `portcullisd backup` is what an operator runs before an upgrade, often with the new
/// release's binary already installed while the old release still serves. It changes
/// nothing of the live database: a database one migration behind this release stays
/// there, and so does its backup (the release that wrote it can restore it), which this
/// release restores, migrated. A database from a newer release is refused with nothing
/// written, and a database that does not exist is not created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_leaves_the_live_database_and_its_schema_as_they_are() {
    sqlx::any::install_default_drivers();
    let work = tempfile::tempdir().unwrap();
    // One release behind: every migration but the newest.
    let older = work.path().join("older-migrations");
    std::fs::create_dir(&older).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../ca/migrations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let newest = files.pop().unwrap();
    for file in &files {
        std::fs::copy(file, older.join(file.file_name().unwrap())).unwrap();
    }
    let data = work.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let live = format!("sqlite://{}?mode=rwc", data.join("portcullis.db").display());
    let pool = sqlx::AnyPool::connect(&live).await.unwrap();
    sqlx::migrate::Migrator::new(older.as_path()).await.unwrap().run(&pool).await.unwrap();
    pool.close().await;
    let behind = schema_version(&live).await;
    assert!(newest.file_name().unwrap().to_str().unwrap().starts_with(&format!("{:04}", behind + 1)), "{newest:?}");

    let backup = work.path().join("backup.db");
    let out = portcullisd(&["backup", "--data-dir", data.to_str().unwrap(), "--out", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("hash chain verified"), "{out:?}");
    assert_eq!(schema_version(&live).await, behind, "the live database was migrated by a backup");
    assert_eq!(schema_version(&format!("sqlite://{}", backup.display())).await, behind, "the backup's schema");
    let leftovers: Vec<_> = std::fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!leftovers.iter().any(|n| n.to_string_lossy().contains("checking")), "{leftovers:?}");

    let fresh = work.path().join("restored");
    std::fs::create_dir(&fresh).unwrap();
    let out = portcullisd(&["restore", "--data-dir", fresh.to_str().unwrap(), "--from", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(schema_version(&format!("sqlite://{}", fresh.join("portcullis.db").display())).await, behind + 1);

    // Written by a release newer than this one: refused, nothing written.
    let pool = sqlx::AnyPool::connect(&live).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99999, 'from the future', TRUE, x'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let refused = work.path().join("refused.db");
    let out = portcullisd(&["backup", "--data-dir", data.to_str().unwrap(), "--out", refused.to_str().unwrap()]);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("newer portcullisd"), "{out:?}");
    assert!(!refused.exists());

    // No database: nothing to back up, and none created.
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let nowhere = work.path().join("nowhere.db");
    let out = portcullisd(&["backup", "--data-dir", empty.to_str().unwrap(), "--out", nowhere.to_str().unwrap()]);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"), "{out:?}");
    assert!(!empty.join("portcullis.db").exists() && !nowhere.exists());
}
