//! Never locks anyone out: refusals before any change, rollback on failure, and runs killed between steps.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_before_any_change() {
    let ca = FakeCa::start().await;

    // An earlier drop-in already sets TrustedUserCAKeys: sshd would ignore ours.
    let node = Node::start_with(false, |root| {
        std::fs::write(root.join("etc/ssh/sshd_config.d/50-other.conf"), "TrustedUserCAKeys /etc/ssh/other_ca.pub\n")
            .unwrap();
    });
    let before = node.snapshot();
    let (code, json, _) = enroll(&node, &ca);
    assert_eq!(code, 3, "{json}");
    assert!(json["error"]["message"].as_str().unwrap().contains("50-other.conf:1"), "{json}");
    assert_untouched(&node, &before, "conflicting earlier drop-in");
    assert_eq!(ca.state.lock().unwrap().uses_left, 100, "preflight refuses before the token is used");

    // A Match block reached through nested Includes: the main config includes a site
    // directory first, and a late drop-in includes one more file. For the users they
    // match, sshd would read another principals file or CA (and `sshd -T` shows neither).
    let node = Node::start_with(false, |root| {
        let p = root.join("etc/ssh/sshd_config");
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, format!("Include {}/etc/ssh/site/*.conf\n{text}", root.display())).unwrap();
        std::fs::create_dir_all(root.join("etc/ssh/site")).unwrap();
        std::fs::write(root.join("etc/ssh/site/10-ops.conf"), "Match User alice\n  AuthorizedPrincipalsFile none\n")
            .unwrap();
        std::fs::write(root.join("etc/ssh/site/.10-hidden.conf"), "TrustedUserCAKeys /not/read/by/sshd\n").unwrap();
        std::fs::write(
            root.join("etc/ssh/sshd_config.d/90-late.conf"),
            format!("Include {}/etc/ssh/late.conf\n", root.display()),
        )
        .unwrap();
        std::fs::write(root.join("etc/ssh/late.conf"), "Match Group ops\n  TrustedUserCAKeys /etc/ssh/ops_ca.pub\n")
            .unwrap();
    });
    let before = node.snapshot();
    let (code, json, _) = enroll(&node, &ca);
    assert_eq!(code, 3, "{json}");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("site/10-ops.conf:2"), "{json}");
    assert!(message.contains("late.conf:2: trustedusercakeys /etc/ssh/ops_ca.pub inside a Match block"), "{json}");
    assert!(!message.contains("hidden"), "sshd's glob skips dot files: {json}");
    assert_untouched(&node, &before, "a Match block behind nested Includes");

    // Debian's /etc/default/ssh puts RevokedKeys on sshd's command line: it would win
    // over the drop-in and `sshd -T -f` would not show it.
    let node = Node::start_with(false, |root| {
        std::fs::create_dir_all(root.join("etc/default")).unwrap();
        std::fs::write(root.join("etc/default/ssh"), "SSHD_OPTS=\"-o RevokedKeys=/etc/ssh/other.krl\"\n").unwrap();
    });
    let before = node.snapshot();
    let (code, json, _) = enroll(&node, &ca);
    assert_eq!(code, 3, "{json}");
    assert!(json["error"]["message"].as_str().unwrap().contains("SSHD_OPTS"), "{json}");
    assert_untouched(&node, &before, "a command-line override");

    // The main config does not include sshd_config.d.
    let node = Node::start_with(false, |root| {
        let p = root.join("etc/ssh/sshd_config");
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.lines().filter(|l| !l.starts_with("Include")).collect::<Vec<_>>().join("\n")).unwrap();
    });
    let before = node.snapshot();
    let (code, json, _) = enroll(&node, &ca);
    assert_eq!(code, 3, "{json}");
    assert_untouched(&node, &before, "no Include");

    // Token expired, used up, wrong CA fingerprint: refused before any change.
    let node = Node::start(true);
    let before = node.snapshot();
    let (code, json, _) = run(enroll_cmd(&node, &ca, EXPIRED_TOKEN));
    assert_eq!(code, 5, "{json}");
    assert!(json["error"]["message"].as_str().unwrap().contains("expired"), "{json}");
    assert_untouched(&node, &before, "expired token");

    ca.state.lock().unwrap().uses_left = 0;
    let (code, json, _) = enroll(&node, &ca);
    assert_eq!(code, 5, "{json}");
    assert_untouched(&node, &before, "used-up token");
    ca.state.lock().unwrap().uses_left = 100;

    let other_pin = portcullis_proto::pin::pin_of_spki(b"not the CA's key");
    let mut cmd = node.enroll_cmd();
    cmd.args(["enroll", "--ca", &ca.url, "--token", GOOD_TOKEN, "--ca-fingerprint", &other_pin]);
    let (code, json, _) = run(cmd);
    assert_eq!(code, 5, "{json}");
    assert!(json["error"]["message"].as_str().unwrap().contains("fingerprint"), "{json}");
    assert_untouched(&node, &before, "wrong CA fingerprint");
    assert_eq!(ca.state.lock().unwrap().uses_left, 100, "a wrong pin never reaches the CA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_during_the_change_roll_back() {
    let ca = FakeCa::start().await;
    let node = Node::start(true);
    let before = node.snapshot();

    // The verification login fails (certificate from a key the node does not trust).
    ca.state.lock().unwrap().bad_verification_cert = true;
    let (code, json, _) = enroll(&node, &ca);
    assert_eq!(code, 4, "{json}");
    assert!(json["error"]["message"].as_str().unwrap().contains("verification login"), "{json}");
    assert_untouched(&node, &before, "verification login fails");
    ca.state.lock().unwrap().bad_verification_cert = false;

    // `sshd -t` rejects the new configuration (an sshd that refuses once our drop-in exists).
    let wrapper = node.dir.path().join("sshd-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = -t ] && [ -e '{}' ]; then echo 'bad configuration option' >&2; exit 255; fi\nexec /usr/sbin/sshd \"$@\"\n",
            node.path("/etc/ssh/sshd_config.d/60-portcullis.conf").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cmd = enroll_cmd(&node, &ca, GOOD_TOKEN);
    cmd.arg("--sshd").arg(&wrapper);
    let (code, json, _) = run(cmd);
    assert_eq!(code, 4, "{json}");
    assert!(json["error"]["message"].as_str().unwrap().contains("sshd -t"), "{json}");
    assert_untouched(&node, &before, "sshd -t fails");

    // Write failures (a full disk or read-only target) at different files.
    for file in ["revoked.krl", "60-portcullis.conf", "state.json"] {
        let mut cmd = enroll_cmd(&node, &ca, GOOD_TOKEN);
        cmd.env("PORTCULLIS_ENROLL_FAILPOINT", format!("write:{file}"));
        let (code, json, _) = run(cmd);
        assert_eq!(code, 4, "write failure at {file}: {json}");
        assert_untouched(&node, &before, &format!("write failure at {file}"));
    }

    // An error right after each step: rolled back in-process.
    for step in ["stage", "activate", "test", "reload", "verify", "commit"] {
        let mut cmd = enroll_cmd(&node, &ca, GOOD_TOKEN);
        cmd.env("PORTCULLIS_ENROLL_FAILPOINT", format!("{step}:error"));
        let (code, json, _) = run(cmd);
        assert_eq!(code, 4, "error after {step}: {json}");
        assert_untouched(&node, &before, &format!("error after {step}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_steps_never_locks_out_and_the_next_run_recovers() {
    let ca = FakeCa::start().await;
    let node = Node::start(true);
    let before = node.snapshot();
    for step in ["stage", "activate", "test", "reload", "verify", "commit"] {
        let mut cmd = enroll_cmd(&node, &ca, GOOD_TOKEN);
        cmd.env("PORTCULLIS_ENROLL_FAILPOINT", step);
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(99), "kill after {step}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(node.ordinary_login_works(), "killed after {step}: the ordinary key login must still work");
        assert!(node.path("/etc/ssh/portcullis/journal.json").exists(), "killed after {step}: the journal stays");
        // Any later command finishes the rollback first; `remove` then has nothing to do.
        let (code, json, _) = run({
            let mut c = node.enroll_cmd();
            c.arg("remove");
            c
        });
        assert_eq!(code, 0, "recovery after {step}: {json}");
        assert_untouched(&node, &before, &format!("recovered after a kill after {step}"));
    }
    // And a clean run then enrolls.
    let (code, json, _) = enroll(&node, &ca);
    assert_eq!(code, 0, "{json}");
    assert!(node.ordinary_login_works());
}

/// Killed after the drop-in is written and checked but before the tool's own reload —
/// and then sshd is restarted with the changed files anyway (the machine rebooted, a
/// package upgrade restarted it): the next run must undo it with a reload before
/// deleting the files the running sshd now names. (It deleted them without one, since
/// the dead run had not reloaded, and the running sshd, naming a missing KRL, refused
/// every key — the ordinary login too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_an_interrupted_run_never_locks_out() {
    let ca = FakeCa::start().await;
    let node = Node::start(true);
    let before = node.snapshot();
    let mut cmd = enroll_cmd(&node, &ca, GOOD_TOKEN);
    cmd.env("PORTCULLIS_ENROLL_FAILPOINT", "test");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(99), "{}", String::from_utf8_lossy(&out.stderr));
    // The restart: sshd loads the configuration the dead run left.
    node.reload_and_wait();
    assert!(node.ordinary_login_works(), "fixture: the restarted sshd runs with the drop-in");
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.arg("remove");
        c
    });
    assert_eq!(code, 0, "recovery: {json}");
    assert!(node.ordinary_login_works(), "the original login after the recovery");
    assert_untouched(&node, &before, "recovered after a kill and a restart");
}
