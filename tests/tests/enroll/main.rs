//! `portcullis-enroll` end to end: a real sshd started from a `--root` node's own config,
//! a pinned HTTPS CA (the stand-in in `tests/src/enroll_ca.rs`), real `ssh` logins. Every
//! failure case proves zero lockout (the ordinary authorized-key login still works) and a
//! byte-identical node afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_sshcert::KrlBuilder;
use portcullis_tests::enroll_ca::{EXPIRED_TOKEN, FakeCa, GOOD_TOKEN, now, user_cert, write_key};
use portcullis_tests::enroll_node::{NODE, Node, assert_untouched, run, snapshot};
use serde_json::{Value, json};
use ssh_key::{Algorithm, PrivateKey};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

fn enroll_cmd(node: &Node, ca: &FakeCa, token: &str) -> Command {
    let mut cmd = node.enroll_cmd();
    cmd.args(["enroll", "--ca", &ca.url, "--token", token, "--ca-fingerprint", &ca.pin]);
    cmd
}

fn enroll(node: &Node, ca: &FakeCa) -> (i32, Value, Output) {
    run(enroll_cmd(node, ca, GOOD_TOKEN))
}

/// A user key and a CA certificate for it with the node's root principal.
fn user_with_cert(dir: &Path, ca: &FakeCa, principals: &[&str]) -> (PathBuf, PathBuf, PrivateKey) {
    let key =
        PrivateKey::random(&mut ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng), Algorithm::Ed25519).unwrap();
    let key_path = dir.join("id_cert_user");
    write_key(&key_path, &key);
    let cert = user_cert(&ca.user_ca(), key.public_key(), principals);
    let cert_path = dir.join("id_cert_user-cert.pub");
    std::fs::write(&cert_path, format!("{cert}\n")).unwrap();
    (key_path, cert_path, key)
}

/// A node enrolled with `ca`, and a user certificate whose root login works there.
fn enrolled_with_a_login(ca: &FakeCa) -> (Node, PathBuf, PathBuf, PrivateKey) {
    let node = Node::start(true);
    let (code, json, _) = enroll(&node, ca);
    assert_eq!(code, 0, "{json}");
    let (key, cert, user_key) = user_with_cert(node.dir.path(), ca, &["pc_admins_root"]);
    assert!(node.cert_login_works("root", &key, &cert));
    (node, key, cert, user_key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_refresh_remove_on_a_pve_shaped_node() {
    let ca = FakeCa::start().await;
    let node = Node::start(true);
    assert!(node.ordinary_login_works(), "fixture: the ordinary login must work before enrollment");
    let before = node.snapshot();
    let pve_before = snapshot(&node.path("/etc/pve"));
    let (key, cert, user_key) = user_with_cert(node.dir.path(), &ca, &["pc_admins_root"]);
    assert!(!node.cert_login_works("root", &key, &cert), "a CA certificate must not work before enrollment");

    let (code, json, out) = enroll(&node, &ca);
    assert_eq!(code, 0, "enroll failed: {json}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json["node"], NODE);
    assert_eq!(json["reloads"], 1);
    assert!(node.cert_login_works("root", &key, &cert), "a CA certificate for root must work after enrollment");
    assert!(node.ordinary_login_works(), "the ordinary login must survive enrollment");
    let principals = std::fs::read_to_string(node.path("/etc/ssh/portcullis/principals/root")).unwrap();
    assert_eq!(principals, "pc_admins_root\n", "the verification principal must be unstaged");
    assert!(!node.path("/etc/ssh/portcullis/journal.json").exists());
    assert_eq!(snapshot(&node.path("/etc/pve")), pve_before, "/etc/pve must stay byte-identical");
    assert_eq!(
        std::fs::read_link(node.path("/root/.ssh/authorized_keys")).unwrap(),
        node.path("/etc/pve/priv/authorized_keys")
    );
    let dropin = std::fs::read_to_string(node.path("/etc/ssh/sshd_config.d/60-portcullis.conf")).unwrap();
    assert_eq!(dropin.matches("HostCertificate").count(), 2, "one host certificate per host key: {dropin}");
    // The node now presents a host certificate the host CA vouches for.
    let kh = node.dir.path().join("known_hosts_ca");
    let host_ca = ca.state.lock().unwrap().host_ca.public_key().to_openssh().unwrap();
    std::fs::write(&kh, format!("@cert-authority [127.0.0.1]:{} {host_ca}\n", node.port)).unwrap();
    let host_cert_login = Command::new("ssh")
        .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", kh.display()))
        .arg("-i")
        .arg(&node.user_key)
        .args(["-p", &node.port.to_string(), "root@127.0.0.1", "true"])
        .output()
        .unwrap();
    assert!(host_cert_login.status.success(), "host certificate: {}", String::from_utf8_lossy(&host_cert_login.stderr));

    // Idempotent: nothing changed → zero writes, zero reloads, no token use.
    let enrolled = node.snapshot();
    let uses = ca.state.lock().unwrap().uses_left;
    let started = Instant::now();
    let (code, json, _) = enroll(&node, &ca);
    let rerun = started.elapsed();
    assert_eq!(code, 0, "{json}");
    assert_eq!((json["writes"].as_u64(), json["reloads"].as_u64()), (Some(0), Some(0)), "{json}");
    assert_eq!(json["summary"], "no changes");
    assert_eq!(node.snapshot(), enrolled);
    assert_eq!(ca.state.lock().unwrap().uses_left, uses, "a re-run must not spend a token use");
    eprintln!("idempotent re-run of enroll took {rerun:?}");
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.arg("refresh");
        c
    });
    assert_eq!((code, json["writes"].as_u64()), (0, Some(0)), "{json}");

    // --check shows a pending change without making it.
    ca.state.lock().unwrap().principals.insert("backup".into(), vec!["pc_backup".into()]);
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.args(["--check", "refresh"]);
        c
    });
    assert_eq!(code, 0, "{json}");
    assert!(json["changes"].to_string().contains("principals/backup"), "{json}");
    assert_eq!(node.snapshot(), enrolled, "--check must not change anything");

    // Refresh applies principals without a reload (sshd reads them per login).
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.arg("refresh");
        c
    });
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["reloads"], 0, "{json}");
    assert_eq!(std::fs::read_to_string(node.path("/etc/ssh/portcullis/principals/backup")).unwrap(), "pc_backup\n");

    // A revocation reaches the node through refresh.
    let mut krl = KrlBuilder::new(2, now(), "");
    krl.revoke_key_sha256(user_key.public_key().key_data());
    ca.state.lock().unwrap().krl = krl.encode();
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.arg("refresh");
        c
    });
    assert_eq!(code, 0, "{json}");
    assert!(!node.cert_login_works("root", &key, &cert), "a revoked key must be refused after refresh");

    // The CA is unreachable for refresh: exit 5, the KRL (and everything) stays.
    let revoked = node.snapshot();
    ca.state.lock().unwrap().fail_refresh = true;
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.arg("refresh");
        c
    });
    assert_eq!(code, 5, "{json}");
    assert_untouched(&node, &revoked, "refresh with the CA failing");
    assert!(!node.cert_login_works("root", &key, &cert), "the old KRL must stay in force");
    ca.state.lock().unwrap().fail_refresh = false;

    // Status.
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.arg("status");
        c
    });
    assert_eq!((code, &json["enrolled"], &json["active"]), (0, &Value::Bool(true), &Value::Bool(true)), "{json}");

    // Remove: byte-identical to before enrollment, and deregistered.
    let (code, json, out) = run({
        let mut c = node.enroll_cmd();
        c.arg("remove");
        c
    });
    assert_eq!(code, 0, "remove: {json}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_untouched(&node, &before, "after remove");
    assert_eq!(ca.state.lock().unwrap().deregistered, vec![NODE.to_owned()]);
    let (_, cert2_path, _) = user_with_cert(node.dir.path(), &ca, &["pc_admins_root"]);
    assert!(!node.cert_login_works("root", &node.dir.path().join("id_cert_user"), &cert2_path));
}

/// A host certificate for the node's ed25519 key, signed by the CA's host key but with
/// little of its lifetime left, so the next refresh replaces it (and must reload sshd).
fn near_expiry_host_cert(node: &Node, ca: &FakeCa) -> String {
    use ssh_key::certificate::{Builder, CertType};
    let line = std::fs::read_to_string(node.path("/etc/ssh/ssh_host_ed25519_key.pub")).unwrap();
    let key = ssh_key::PublicKey::from_openssh(line.trim()).unwrap();
    let n = now();
    let mut b = Builder::new([5u8; 32], key.key_data().clone(), n - 3600, n + 600).unwrap();
    b.serial(4).unwrap();
    b.key_id(format!("host:{NODE}")).unwrap();
    b.cert_type(CertType::Host).unwrap();
    b.valid_principal(NODE).unwrap();
    format!("{}\n", b.sign(&ca.state.lock().unwrap().host_ca).unwrap().to_openssh().unwrap())
}

/// The paths (relative to the node's root) whose entries differ between two snapshots.
fn changed(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter().filter(|k| before.get(*k) != after.get(*k)).cloned().collect()
}

fn has_step(json: &Value, step: &str) -> bool {
    json["steps"].as_array().unwrap().iter().any(|s| s["step"] == step)
}

mod files;
mod lockout;
mod refresh;
mod registration;
