//! The files enrollment installs: discovery's forced command and sudoers, and modes every login can read.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_with_discovery_installs_the_forced_command_and_sudoers_and_remove_takes_them_away() {
    use std::os::unix::fs::PermissionsExt;
    let ca = FakeCa::start().await;
    let node = Node::start(true);
    let before = node.snapshot();
    let mut cmd = enroll_cmd(&node, &ca, GOOD_TOKEN);
    cmd.arg("--discovery");
    let (code, json, out) = run(cmd);
    assert_eq!(code, 0, "enroll --discovery failed: {json}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(has_step(&json, "discovery"), "{json}");
    let script = node.path("/usr/local/libexec/portcullis-discovery");
    let sudoers = node.path("/etc/sudoers.d/portcullis-discovery");
    assert_eq!(
        std::fs::read_to_string(&script).unwrap(),
        include_str!("../../../discovery/node/portcullis-discovery.sh")
    );
    assert_eq!(std::fs::metadata(&script).unwrap().permissions().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read_to_string(&sudoers).unwrap(), include_str!("../../../discovery/node/sudoers"));
    assert_eq!(std::fs::metadata(&sudoers).unwrap().permissions().mode() & 0o7777, 0o440);
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(node.path("/etc/ssh/portcullis/state.json")).unwrap()).unwrap();
    assert_eq!(state["discovery"], true, "{state}");
    assert!(node.ordinary_login_works());

    // A refresh keeps them (they are managed, not leftovers).
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.arg("refresh");
        c
    });
    assert_eq!((code, json["writes"].as_u64()), (0, Some(0)), "{json}");
    assert!(script.exists() && sudoers.exists());

    // A tampered script is put back by the next refresh.
    std::fs::write(&script, "#!/bin/sh\nexec /bin/sh\n").unwrap();
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.arg("refresh");
        c
    });
    assert_eq!(code, 0, "{json}");
    assert_eq!(
        std::fs::read_to_string(&script).unwrap(),
        include_str!("../../../discovery/node/portcullis-discovery.sh")
    );

    // remove: every file as it was (the script, the drop-in and the directories gone).
    let (code, json, _) = run({
        let mut c = node.enroll_cmd();
        c.arg("remove");
        c
    });
    assert_eq!(code, 0, "{json}");
    assert!(!script.exists() && !sudoers.exists());
    assert_eq!(node.snapshot(), before, "remove restores the node byte for byte");
}

/// Run by an operator whose umask is 077, enrollment still leaves its directories 0755:
/// sshd reads a login's principals file as that user, so a 0700 directory would refuse
/// every certificate login but root's (and the verification logs in only as root). The
/// files inside keep their own modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_umask_leaves_the_principals_readable_by_every_login() {
    use std::os::unix::fs::PermissionsExt;
    let ca = FakeCa::start().await;
    let node = Node::start(false);
    let inner = enroll_cmd(&node, &ca, GOOD_TOKEN);
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "umask 077; exec \"$@\"", "sh"]).arg(inner.get_program()).args(inner.get_args());
    cmd.env_remove("PORTCULLIS_ENROLL_FAILPOINT").stdin(std::process::Stdio::null());
    let (code, json, out) = run(cmd);
    assert_eq!(code, 0, "enroll failed: {json}\n{}", String::from_utf8_lossy(&out.stderr));
    let mode = |p: &str| std::fs::metadata(node.path(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("/etc/ssh/portcullis"), 0o755);
    assert_eq!(mode("/etc/ssh/portcullis/principals"), 0o755);
    assert_eq!(mode("/etc/ssh/portcullis/principals/root"), 0o644);
}

/// A stage or principals directory that exists already with a closed mode (made by an
/// image, configuration management or an older run under umask 077) is opened to 0755
/// by the next enroll or refresh: sshd reads the principals as the user logging in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_directories_from_before_are_opened_for_every_login() {
    use std::os::unix::fs::PermissionsExt;
    let ca = FakeCa::start().await;
    let node = Node::start(false);
    let mode = |p: &str| std::fs::metadata(node.path(p)).unwrap().permissions().mode() & 0o777;
    let close = |p: &str| std::fs::set_permissions(node.path(p), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::create_dir_all(node.path("/etc/ssh/portcullis")).unwrap();
    close("/etc/ssh/portcullis");
    let (code, json, _) = enroll(&node, &ca);
    assert_eq!(code, 0, "{json}");
    assert_eq!(mode("/etc/ssh/portcullis"), 0o755, "{json}");

    close("/etc/ssh/portcullis/principals");
    let mut refresh = node.enroll_cmd();
    refresh.arg("refresh");
    let (code, json, _) = run(refresh);
    assert_eq!(code, 0, "{json}");
    assert_eq!(mode("/etc/ssh/portcullis/principals"), 0o755, "{json}");
}
