//! Issue 15: enrollment never locks anyone out — not during `remove` or a rollback, not
//! on a crash or a double fault inside them, not with a corrupt KRL from the CA, not when
//! two runs race. Every case runs a real sshd from the node's own config and checks the
//! node's *original* way in (root with an authorized key) with a real `ssh` — before any
//! later tool run could repair anything.
//!
//! The OpenSSH fact behind most of them: while the running sshd's `RevokedKeys` names a
//! missing or unloadable file, it refuses every public key, and `sshd -t` passes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_sshcert::KrlBuilder;
use portcullis_tests::enroll_ca::{FakeCa, GOOD_TOKEN, now, user_cert, write_key};
use portcullis_tests::enroll_node::{NODE, Node, assert_untouched, run};
use serde_json::Value;
use ssh_key::{Algorithm, PrivateKey};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const FAILPOINT: &str = "PORTCULLIS_ENROLL_FAILPOINT";

/// `portcullis-enroll --root … --reload-cmd <reload>` (the node's own tool command uses a
/// plain SIGHUP; these tests sometimes need a reload that fails).
fn tool(node: &Node, reload: &str) -> Command {
    let mut cmd = Command::new(portcullis_tests::bin("portcullis-enroll"));
    cmd.arg("--root").arg(&node.root).arg("--reload-cmd").arg(reload);
    cmd.env_remove(FAILPOINT).stdin(Stdio::null());
    cmd
}

fn sub(node: &Node, args: &[&str]) -> Command {
    let mut cmd = node.enroll_cmd();
    cmd.args(args);
    cmd
}

fn enroll_args(ca: &FakeCa) -> Vec<String> {
    ["enroll", "--ca", &ca.url, "--token", GOOD_TOKEN, "--ca-fingerprint", &ca.pin].map(str::to_owned).to_vec()
}

fn enroll_cmd(node: &Node, ca: &FakeCa) -> Command {
    let mut cmd = node.enroll_cmd();
    cmd.args(enroll_args(ca));
    cmd
}

fn enroll_ok(node: &Node, ca: &FakeCa) {
    let (code, json, out) = run(enroll_cmd(node, ca));
    assert_eq!(code, 0, "enroll: {json}\n{}", String::from_utf8_lossy(&out.stderr));
}

fn user_with_cert(dir: &Path, ca: &FakeCa) -> (PathBuf, PathBuf, PrivateKey) {
    let key =
        PrivateKey::random(&mut ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng), Algorithm::Ed25519).unwrap();
    let key_path = dir.join("id_cert_user");
    write_key(&key_path, &key);
    let cert_path = dir.join("id_cert_user-cert.pub");
    std::fs::write(&cert_path, format!("{}\n", user_cert(&ca.user_ca(), key.public_key(), &["pc_admins_root"])))
        .unwrap();
    (key_path, cert_path, key)
}

fn journal(node: &Node) -> PathBuf {
    node.path("/etc/ssh/portcullis/journal.json")
}

fn krl(node: &Node) -> PathBuf {
    node.path("/etc/ssh/portcullis/revoked.krl")
}

/// A reload command that works the first `ok` times, then fails as `systemctl reload`
/// does when it cannot reload.
fn flaky_reload(node: &Node, name: &str, ok: u32) -> String {
    let counter = node.dir.path().join(format!("{name}.count"));
    let script = node.dir.path().join(format!("{name}.sh"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nn=$(cat '{c}' 2>/dev/null || echo 0)\necho $((n+1)) > '{c}'\n\
             if [ \"$n\" -ge {ok} ]; then echo 'Job for ssh.service failed.' >&2; exit 1; fi\n{reload}\n",
            c = counter.display(),
            reload = node.reload_cmd()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script.display().to_string()
}

/// Operator logins hammering the node from other threads while something runs.
struct Logins {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    refused: Arc<std::sync::Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Logins {
    fn start(node: &Node, parallel: usize) -> Logins {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(std::sync::Mutex::new(Vec::new()));
        let threads = (0..parallel)
            .map(|_| {
                let (stop, ok, refused) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&refused));
                let (port, key) = (node.port, node.user_key.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let out = Command::new("ssh")
                            .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
                            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10"])
                            .args(["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-i"])
                            .arg(&key)
                            .args(["-p", &port.to_string(), "root@127.0.0.1", "echo portcullis-ok"])
                            .stdin(Stdio::null())
                            .output()
                            .unwrap();
                        let stderr = String::from_utf8_lossy(&out.stderr);
                        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "portcullis-ok" {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else if stderr.contains("Permission denied") {
                            // The key was refused: a lockout.
                            refused.lock().unwrap().push(stderr.trim().to_owned());
                        } else {
                            // Connection refused or reset while sshd re-executes itself on
                            // SIGHUP: the listener is briefly closed, no key is refused.
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                })
            })
            .collect();
        Logins { stop, ok, refused, threads }
    }

    /// Stops and returns (successful logins, refusals).
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (self.ok.load(Ordering::Relaxed), self.refused.lock().unwrap().clone())
    }
}

/// A KRL whose body is truncated or corrupt (the magic is intact) is refused by the tool
/// — as by OpenSSH — and never replaces the KRL in force: exit 5, the old KRL and every
/// login as before. A fresh enrollment offered such a KRL changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_krl_from_the_ca_is_never_installed() {
    let ca = FakeCa::start().await;
    let node = Node::start(true);
    enroll_ok(&node, &ca);
    let (key, cert, user_key) = user_with_cert(node.dir.path(), &ca);
    assert!(node.cert_login_works("root", &key, &cert));
    let other =
        PrivateKey::random(&mut ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng), Algorithm::Ed25519).unwrap();
    let mut builder = KrlBuilder::new(5, now(), "");
    builder.revoke_key_sha256(other.public_key().key_data());
    let good = builder.encode();
    let truncated = good[..good.len() - 5].to_vec();
    let mut bad_section = good.clone();
    let last_section_type = good.len() - 32 - 4 - 4 - 1; // type byte, string length, hash length, hash
    bad_section[last_section_type] = 0x7f;

    // The premise: OpenSSH itself cannot load these (exit 255, not 0 "ok" or 1 "revoked").
    let pubkey = node.dir.path().join("user.pub");
    std::fs::write(&pubkey, user_key.public_key().to_openssh().unwrap()).unwrap();
    for (name, bytes) in [("truncated", &truncated), ("bad section", &bad_section)] {
        let f = node.dir.path().join("bad.krl");
        std::fs::write(&f, bytes).unwrap();
        let q = Command::new("ssh-keygen").arg("-Q").arg("-f").arg(&f).arg(&pubkey).output().unwrap();
        assert_eq!(q.status.code(), Some(255), "{name}: ssh-keygen -Q must refuse it");
    }

    let installed = std::fs::read(krl(&node)).unwrap();
    for (name, bytes) in [("truncated", truncated.clone()), ("bad section", bad_section)] {
        let before = node.snapshot();
        ca.state.lock().unwrap().krl = bytes;
        let (code, json, _) = run(sub(&node, &["refresh"]));
        assert_eq!(code, 5, "{name}: refresh must fail: {json}");
        let msg = json["error"]["message"].as_str().unwrap();
        assert!(msg.contains("KRL") && msg.contains("refused"), "{name}: say why: {json}");
        assert_eq!(std::fs::read(krl(&node)).unwrap(), installed, "{name}: the old KRL stays");
        assert_untouched(&node, &before, &format!("refresh offered a {name} KRL"));
        assert!(node.cert_login_works("root", &key, &cert), "{name}: certificate logins keep working");
    }

    // A fresh node offered the same: nothing is written.
    let fresh = Node::start(false);
    let before = fresh.snapshot();
    ca.state.lock().unwrap().krl = truncated;
    let (code, json, _) = run(enroll_cmd(&fresh, &ca));
    assert_eq!(code, 5, "{json}");
    assert_untouched(&fresh, &before, "enroll offered a truncated KRL");
}

/// `remove` and a rollback after the reload, with operator logins running in parallel
/// the whole time: not one key is refused. The fail point pauses each inside its
/// riskiest window (files restored, sshd not yet reloaded), which on the old order left
/// the running sshd naming a deleted KRL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_and_rollback_refuse_no_parallel_login() {
    let ca = FakeCa::start().await;
    let node = Node::start(true);
    let before = node.snapshot();
    enroll_ok(&node, &ca);

    let logins = Logins::start(&node, 4);
    let mut cmd = sub(&node, &["remove"]);
    cmd.env(FAILPOINT, "restore:pause=1500");
    let (code, json, _) = run(cmd);
    let (ok, refused) = logins.finish();
    assert_eq!(code, 0, "{json}");
    assert!(refused.is_empty(), "remove refused {} of {} logins: {refused:?}", refused.len(), ok + refused.len());
    assert!(ok >= 4, "the logins must actually have run ({ok})");
    assert_untouched(&node, &before, "after remove");

    // Rollback after the reload: the verification login fails, so everything goes back.
    ca.state.lock().unwrap().bad_verification_cert = true;
    let logins = Logins::start(&node, 4);
    let mut cmd = enroll_cmd(&node, &ca);
    cmd.env(FAILPOINT, "rollback-restore:pause=1500");
    let (code, json, _) = run(cmd);
    let (ok, refused) = logins.finish();
    assert_eq!(code, 4, "{json}");
    assert!(refused.is_empty(), "the rollback refused {} of {} logins: {refused:?}", refused.len(), ok + refused.len());
    assert!(ok >= 4, "the logins must actually have run ({ok})");
    assert_untouched(&node, &before, "after the rollback");
}

/// A crash (exit without cleanup) at every fail point inside `remove` and inside a
/// rollback: the ordinary login works right away — checked before any later run — the
/// journal stays, `status` reports it (exit 8), and the next run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_inside_remove_or_rollback_never_locks_out() {
    let ca = FakeCa::start().await;
    let node = Node::start(true);
    let before = node.snapshot();
    let status_reports_pending = |what: &str| {
        let (code, json, _) = run(sub(&node, &["status"]));
        assert_eq!(code, 8, "{what}: status must report the pending journal: {json}");
        assert!(json["error"]["message"].as_str().unwrap().contains("pending"), "{what}: {json}");
    };
    for step in ["restore", "reload", "delete"] {
        enroll_ok(&node, &ca);
        let (key, cert, _) = user_with_cert(node.dir.path(), &ca);
        let mut cmd = sub(&node, &["remove"]);
        cmd.env(FAILPOINT, step);
        let out = cmd.output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(99),
            "crash after remove's {step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(node.ordinary_login_works(), "crashed after remove's {step}: the ordinary key login must work");
        assert!(journal(&node).exists(), "crashed after remove's {step}: the journal stays");
        status_reports_pending(step);
        // The next run rolls back to the enrolled node first (certificates work again)…
        let (code, json, _) = run(sub(&node, &["refresh"]));
        assert_eq!(code, 0, "refresh after a crash in remove's {step}: {json}");
        assert!(node.cert_login_works("root", &key, &cert), "after remove's {step}: recovered to enrolled");
        // …and `remove` then completes.
        let (code, json, _) = run(sub(&node, &["remove"]));
        assert_eq!(code, 0, "remove after a crash in its {step}: {json}");
        assert_untouched(&node, &before, &format!("removed after a crash in remove's {step}"));
    }

    ca.state.lock().unwrap().bad_verification_cert = true;
    for step in ["rollback-restore", "rollback-reload", "rollback-delete"] {
        let mut cmd = enroll_cmd(&node, &ca);
        cmd.env(FAILPOINT, step);
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(99), "crash at {step}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(node.ordinary_login_works(), "crashed at {step}: the ordinary key login must work");
        assert!(journal(&node).exists(), "crashed at {step}: the journal stays");
        status_reports_pending(step);
        let (code, json, _) = run(sub(&node, &["remove"]));
        assert_eq!(code, 0, "the run after a crash at {step}: {json}");
        assert!(json["steps"].to_string().contains("recover"), "{json}");
        assert_untouched(&node, &before, &format!("recovered from a crash at {step}"));
    }
}

/// A double fault: the change fails after sshd reloaded, and the rollback's own reload
/// fails too. The KRL stays (the running sshd still names it), the journal stays, the
/// exit says so (6), `status` reports it, and the next run completes the rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_fault_keeps_the_journal_and_the_next_run_completes() {
    let ca = FakeCa::start().await;
    let node = Node::start(true);
    let before = node.snapshot();

    ca.state.lock().unwrap().bad_verification_cert = true;
    let mut cmd = tool(&node, &flaky_reload(&node, "enroll-reload", 1));
    cmd.args(enroll_args(&ca));
    let (code, json, _) = run(cmd);
    assert_eq!(code, 6, "{json}");
    let msg = json["error"]["message"].as_str().unwrap();
    assert!(msg.contains("ROLLBACK INCOMPLETE") && msg.contains("journal is kept"), "{json}");
    assert!(node.ordinary_login_works(), "double fault: the ordinary key login must work");
    assert!(journal(&node).exists() && krl(&node).exists(), "double fault: the journal and the KRL stay");
    let (code, json, _) = run(sub(&node, &["status"]));
    assert_eq!(code, 8, "{json}");
    assert!(json["error"]["message"].as_str().unwrap().contains("pending"), "{json}");
    let (code, json, _) = run(sub(&node, &["remove"]));
    assert_eq!(code, 0, "the next run completes the rollback: {json}");
    assert_untouched(&node, &before, "after the double fault was completed");
    ca.state.lock().unwrap().bad_verification_cert = false;

    // In `remove`: deleting fails after the reload, and the rollback's reload fails.
    enroll_ok(&node, &ca);
    let mut cmd = tool(&node, &flaky_reload(&node, "remove-reload", 1));
    cmd.arg("remove").env(FAILPOINT, "delete:error");
    let (code, json, _) = run(cmd);
    assert_eq!(code, 6, "{json}");
    assert!(node.ordinary_login_works(), "double fault in remove: the ordinary key login must work");
    assert!(journal(&node).exists() && krl(&node).exists(), "{json}");
    let (code, json, _) = run(sub(&node, &["remove"]));
    assert_eq!(code, 0, "{json}");
    assert_untouched(&node, &before, "after the double fault in remove was completed");
}

/// Enrolling while sshd is not running (its reload fails): the daemon never loaded the
/// change, so the rollback needs no reload — exit 4 and the original files, not 6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolling_while_sshd_is_not_running_rolls_back_cleanly() {
    let ca = FakeCa::start().await;
    let node = Node::start(false);
    let before = node.snapshot();
    let mut cmd = tool(&node, "echo 'ssh.service is not active, cannot reload.' >&2; exit 1");
    cmd.args(enroll_args(&ca));
    let (code, json, _) = run(cmd);
    assert_eq!(code, 4, "{json}");
    let msg = json["error"]["message"].as_str().unwrap();
    assert!(msg.contains("reloading sshd failed") && !msg.contains("INCOMPLETE"), "{json}");
    assert_untouched(&node, &before, "enroll with sshd not running");
}

/// Every writing command holds an exclusive lock: a run that cannot get it within
/// `--lock-wait` refuses (exit 7) before any change, and runs started together are
/// serialised — two enrollments end enrolled once, a refresh racing `remove` waits and
/// then finds nothing to refresh instead of "recovering" the live journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_are_serialised_by_a_lock() {
    let ca = FakeCa::start().await;
    let node = Node::start(true);
    let before = node.snapshot();

    let held = std::fs::File::open(node.path("/etc/ssh")).unwrap();
    held.lock().unwrap();
    let mut cmd = enroll_cmd(&node, &ca);
    cmd.args(["--lock-wait", "1"]);
    let (code, json, _) = run(cmd);
    assert_eq!(code, 7, "{json}");
    assert!(json["error"]["message"].as_str().unwrap().contains("another portcullis-enroll run"), "{json}");
    assert_untouched(&node, &before, "enroll while another run holds the lock");
    assert_eq!(ca.state.lock().unwrap().uses_left, 100, "refused before the token is used");
    drop(held);

    // Two enrollments at once: the first pauses inside its change, holding the lock.
    let mut first = enroll_cmd(&node, &ca);
    first.arg("--json").env(FAILPOINT, "verify:pause=2000").stdout(Stdio::piped()).stderr(Stdio::piped());
    let first = first.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (code2, json2, _) = run(enroll_cmd(&node, &ca));
    let out1 = first.wait_with_output().unwrap();
    let json1: Value = serde_json::from_slice(&out1.stdout).unwrap();
    assert_eq!((out1.status.code(), code2), (Some(0), 0), "first: {json1}\nsecond: {json2}");
    assert_eq!(json2["summary"], "no changes", "the second saw the first's enrollment: {json2}");
    assert_eq!(ca.state.lock().unwrap().uses_left, 99, "one token use");
    let (key, cert, _) = user_with_cert(node.dir.path(), &ca);
    assert!(node.cert_login_works("root", &key, &cert) && node.ordinary_login_works());
    assert!(!journal(&node).exists());

    // refresh racing remove: remove pauses after its reload, with its journal live.
    let mut remove = sub(&node, &["remove"]);
    remove.arg("--json").env(FAILPOINT, "reload:pause=2000").stdout(Stdio::piped()).stderr(Stdio::piped());
    let remove = remove.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // `status` meanwhile sees a run in progress, not an interrupted one needing repair.
    let (code, json, _) = run(sub(&node, &["status"]));
    assert_eq!(code, 0, "status during a live run: {json}");
    assert!(json["steps"].to_string().contains("in progress"), "{json}");
    let (code, json, _) = run(sub(&node, &["refresh"]));
    let out = remove.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "remove: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(code, 1, "refresh waits for remove, then finds the node not enrolled: {json}");
    assert!(json["error"]["message"].as_str().unwrap().contains("not enrolled"), "{json}");
    assert!(!json["steps"].to_string().contains("recover"), "refresh must not touch remove's journal: {json}");
    assert_untouched(&node, &before, "after remove raced by refresh");
}

/// A KRL deleted or corrupted by hand locks every key out (sshd's rule). `status` says so
/// and exits 8; `refresh` restores it; `status` is then clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_flags_a_missing_krl_and_refresh_repairs_it() {
    let ca = FakeCa::start().await;
    let node = Node::start(true);
    enroll_ok(&node, &ca);
    let good = std::fs::read(krl(&node)).unwrap();
    let (code, json, _) = run(sub(&node, &["status"]));
    assert_eq!((code, &json["healthy"]), (0, &Value::Bool(true)), "{json}");

    for (what, damage) in [("missing", None), ("corrupt", Some(good[..good.len() - 3].to_vec()))] {
        match &damage {
            None => std::fs::remove_file(krl(&node)).unwrap(),
            Some(bytes) => std::fs::write(krl(&node), bytes).unwrap(),
        }
        assert!(!node.ordinary_login_works(), "premise: sshd refuses every key with a {what} KRL");
        let (code, json, _) = run(sub(&node, &["status"]));
        assert_eq!(code, 8, "{what} KRL: {json}");
        let msg = json["error"]["message"].as_str().unwrap();
        assert!(msg.contains("revoked.krl") && msg.contains("portcullis-enroll refresh"), "{what}: {json}");
        let (code, json, _) = run(sub(&node, &["refresh"]));
        assert_eq!(code, 0, "refresh repairs a {what} KRL: {json}");
        assert_eq!(std::fs::read(krl(&node)).unwrap(), good);
        assert!(node.ordinary_login_works(), "{what} KRL repaired");
        let (code, json, _) = run(sub(&node, &["status"]));
        assert_eq!(code, 0, "{json}");
    }
}

/// Smaller defects from the same runs: `--check` never writes (not even the recovery of a
/// pending journal); a symlink is restored as a symlink; a journal that cannot be written
/// leaves no empty stage directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_never_writes_symlinks_come_back_and_no_empty_stage_is_left() {
    let ca = FakeCa::start().await;

    // A symlinked drop-in (config management keeps its file elsewhere).
    let node = Node::start_with(true, |root| {
        std::fs::write(root.join("etc/ssh/managed-60.conf"), "# kept by config management\n").unwrap();
        std::os::unix::fs::symlink(
            root.join("etc/ssh/managed-60.conf"),
            root.join("etc/ssh/sshd_config.d/60-portcullis.conf"),
        )
        .unwrap();
    });
    let before = node.snapshot();
    enroll_ok(&node, &ca);
    assert_eq!(
        std::fs::read_to_string(node.path("/etc/ssh/managed-60.conf")).unwrap(),
        "# kept by config management\n",
        "the link's target is never written through"
    );
    let (code, json, _) = run(sub(&node, &["remove"]));
    assert_eq!(code, 0, "{json}");
    assert_untouched(&node, &before, "remove with a symlinked drop-in");

    // --check with a pending journal: reported, not recovered.
    let mut cmd = enroll_cmd(&node, &ca);
    cmd.env(FAILPOINT, "stage");
    assert_eq!(cmd.output().unwrap().status.code(), Some(99));
    let pending = node.snapshot();
    for args in [vec!["--check", "refresh"], vec!["--check", "remove"]] {
        let (code, json, _) = run(sub(&node, &args));
        assert_eq!(code, 0, "{args:?}: {json}");
        assert_eq!(node.snapshot(), pending, "{args:?} must not write");
    }
    let mut cmd = enroll_cmd(&node, &ca);
    cmd.arg("--check");
    let (code, json, _) = run(cmd);
    assert_eq!(code, 0, "{json}");
    assert!(json["summary"].as_str().unwrap().contains("pending"), "{json}");
    assert_eq!(node.snapshot(), pending, "--check enroll must not write");
    let (code, json, _) = run(sub(&node, &["remove"]));
    assert_eq!(code, 0, "{json}");
    assert_untouched(&node, &before, "recovered");

    // The journal cannot be written (a full disk): nothing is left behind.
    let mut cmd = enroll_cmd(&node, &ca);
    cmd.env(FAILPOINT, "write:journal.json");
    let (code, json, _) = run(cmd);
    assert_ne!(code, 0, "{json}");
    assert_untouched(&node, &before, "journal write failure");
}

/// Smaller defects: a verification principal for a login the policy grants nothing on
/// the node does not outlive the commit (a re-run writes nothing); `remove` with the CA
/// failing to deregister says so with its own exit code (9), not "nothing changed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_leftover_verification_principal_and_a_failed_deregistration_is_its_own_exit() {
    let ca = FakeCa::start().await;
    let node = Node::start(true);
    let before = node.snapshot();
    ca.state.lock().unwrap().principals = [("backup".to_owned(), vec!["pc_backup".to_owned()])].into();
    enroll_ok(&node, &ca);
    assert!(
        !node.path("/etc/ssh/portcullis/principals/root").exists(),
        "the verification login's principals file existed only for the verification"
    );
    let (code, json, _) = run(enroll_cmd(&node, &ca));
    assert_eq!((code, json["writes"].as_u64()), (0, Some(0)), "a re-run changes nothing: {json}");

    ca.state.lock().unwrap().fail_deregister = true;
    let (code, json, _) = run(sub(&node, &["remove"]));
    assert_eq!(code, 9, "{json}");
    assert_eq!(json["error"]["code"], "deregister_failed", "{json}");
    // The files are back; only the record of the deregistration to retry is new.
    let pending = node.path("/var/lib/portcullis-enroll/deregister.json");
    assert!(pending.exists(), "{json}");
    let (code, json, _) = run(sub(&node, &["status"]));
    assert_eq!((code, json["pending_deregistration"].as_str()), (0, Some(NODE)), "{json}");
    // Still failing: still kept, same exit.
    let (code, _, _) = run(sub(&node, &["remove"]));
    assert_eq!(code, 9);
    // The CA answers again: the next remove deregisters, and nothing is left at all.
    ca.state.lock().unwrap().fail_deregister = false;
    let (code, json, _) = run(sub(&node, &["remove"]));
    assert_eq!(code, 0, "{json}");
    assert!(json["steps"].to_string().contains("the CA deregistered"), "{json}");
    assert_untouched(&node, &before, "remove retried after a failed deregistration");
}
