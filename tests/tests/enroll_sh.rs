//! The operator's enrollment one-liner against the real CA: `curl --pinnedpubkey …
//! /enroll.sh | sh -s -- …`, on a `--root` node with its own real sshd.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_tests::enroll_node::{Node, assert_untouched};
use std::process::Command;

/// The operator's one-liner: `curl --pinnedpubkey … /enroll.sh | sh -s -- …`. The CA
/// serves the script and the binary; the script refuses a fingerprint that is not the
/// CA's, checks the binary's SHA-256, and runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enroll_sh_one_liner_enrolls_a_node() {
    let server = portcullis_tests::Server::start().await;
    let admin = server.admin_token().await;
    let (status, body) = server
        .post_json(Some(&admin), "/v1/admin/enroll-tokens", &serde_json::json!({ "ttl_seconds": 600, "uses": 1 }))
        .await;
    assert!(status.is_success(), "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let curl_pin = portcullis_proto::pin::curl_pin(&server.pin).unwrap();
    let fetched = Command::new("curl")
        .args(["-fsS", "--pinnedpubkey", &curl_pin, "-k"])
        .arg(format!("{}/enroll.sh", server.url))
        .output()
        .unwrap();
    assert!(fetched.status.success(), "curl: {}", String::from_utf8_lossy(&fetched.stderr));
    let script = String::from_utf8(fetched.stdout).unwrap();
    let binary = std::fs::read(portcullis_tests::bin("portcullis-enroll")).unwrap();
    use sha2::Digest;
    assert!(script.contains(&hex::encode(sha2::Sha256::digest(&binary))), "script pins the served binary's hash");

    let node = Node::start(false);
    let before = node.snapshot();
    let install = node.dir.path().join("bin/portcullis-enroll");
    std::fs::create_dir_all(install.parent().unwrap()).unwrap();
    let run_script = |fingerprint: &str| {
        let mut child = Command::new("sh")
            .args(["-s", "--", "--token", &token, "--ca-fingerprint", fingerprint, "--json"])
            .arg("--root")
            .arg(&node.root)
            .arg("--reload-cmd")
            .arg(node.reload_cmd())
            .env("PORTCULLIS_ENROLL_INSTALL_TO", &install)
            .env("PORTCULLIS_ENROLL_NO_TIMER", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };

    // Another CA's fingerprint: refused by the script itself, nothing downloaded or changed.
    let wrong = portcullis_proto::pin::pin_of_spki(b"some other CA");
    let out = run_script(&wrong);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!install.exists());
    assert_untouched(&node, &before, "wrong fingerprint in enroll.sh");

    // The curl form of the right pin works as well as the SHA256: form.
    let out = run_script(&curl_pin);
    assert!(
        out.status.success(),
        "enroll.sh: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(install.exists(), "the binary is installed for the refresh timer");
    assert!(node.ordinary_login_works());

    // A certificate from this CA now opens the node.
    let dir = tempfile::tempdir().unwrap();
    let key = portcullis_tests::ssh::ed25519_key();
    let key_path = portcullis_tests::ssh::write_key_pair(dir.path(), "id", &key);
    let (status, cert) = server.issue_cert(&admin, &portcullis_tests::ssh::public_line(&key)).await;
    assert!(status.is_success(), "{cert}");
    let cert_path = dir.path().join("id-cert.pub");
    std::fs::write(&cert_path, cert["certificate"].as_str().unwrap()).unwrap();
    assert!(node.cert_login_works("root", &key_path, &cert_path), "{}", node.log());
}
