//! Refresh: sshd changes validated and rolled back, regenerated host keys, and revocations that never wait on the rest of a bundle.

use super::*;

/// A refresh commits the trust files sshd reads at every login (KRL first, CA keys,
/// principals) on their own, then checks the reload-requiring change (drop-in, host
/// certificates) with `sshd -t` and `sshd -T` before the reload. A failing check rolls
/// back only that change: the new revocation is in force regardless, the drop-in and
/// host certificates are byte-identical to before, and the ordinary login works. Crashes
/// between and inside the two phases leave a consistent node that the next run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_that_touches_sshd_is_validated_and_rolled_back() {
    let ca = FakeCa::start().await;
    let (node, key, cert, user_key) = enrolled_with_a_login(&ca);

    // Someone edited the drop-in, and a host certificate is close to expiry: the next
    // refresh rewrites both, which needs a reload.
    let drop_in = node.path("/etc/ssh/sshd_config.d/60-portcullis.conf");
    let host_cert = node.path("/etc/ssh/portcullis/ssh_host_ed25519_key-cert.pub");
    let krl_path = node.path("/etc/ssh/portcullis/revoked.krl");
    let backup = node.path("/etc/ssh/portcullis/principals/backup");
    let mut text = std::fs::read_to_string(&drop_in).unwrap();
    text.push_str("# edited by hand\n");
    std::fs::write(&drop_in, text).unwrap();
    std::fs::write(&host_cert, near_expiry_host_cert(&node, &ca)).unwrap();
    // The same refresh brings a revocation and a new login's principals.
    let mut krl = KrlBuilder::new(3, now(), "");
    krl.revoke_key_sha256(user_key.public_key().key_data());
    let new_krl = krl.encode();
    ca.state.lock().unwrap().krl = new_krl.clone();
    ca.state.lock().unwrap().principals.insert("backup".into(), vec!["pc_backup".into()]);
    let before = node.snapshot();
    let drop_in_before = std::fs::read(&drop_in).unwrap();
    let host_cert_before = std::fs::read(&host_cert).unwrap();

    let wrapper = |name: &str, script: String| {
        let path = node.dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}exec /usr/sbin/sshd \"$@\"\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        path
    };
    let refresh_cmd = |sshd: &Path| {
        let mut c = node.enroll_cmd();
        c.arg("--sshd").arg(sshd).arg("refresh");
        c
    };
    let refresh_with_sshd = |sshd: &Path| run(refresh_cmd(sshd));
    // A kill right after `step` (exit 99, no cleanup, no JSON result).
    let refresh_killed_after = |step: &str| {
        let out = refresh_cmd(Path::new("/usr/sbin/sshd")).env("PORTCULLIS_ENROLL_FAILPOINT", step).output().unwrap();
        assert_eq!(out.status.code(), Some(99), "kill after {step}: {}", String::from_utf8_lossy(&out.stderr));
    };
    // `sshd -t` rejects the refreshed configuration (the hand-edited one still passes,
    // so the rollback can reload) — a persistent problem unrelated to revocations.
    let rejects = wrapper(
        "sshd-rejects",
        format!(
            "if [ \"$1\" = -t ] && ! grep -q 'edited by hand' '{}'; then echo 'bad configuration' >&2; exit 255; fi\n",
            drop_in.display()
        ),
    );
    let (code, json, _) = refresh_with_sshd(&rejects);
    assert_eq!(code, 4, "the failure is still reported: {json}");
    assert_eq!(json["error"]["code"], "sshd_change_rolled_back", "{json}");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("sshd -t") && message.contains("revocations"), "{json}");
    assert_eq!((&json["trust_files"], &json["sshd_change"]), (&json!("applied"), &json!("rolled_back")), "{json}");
    assert!(has_step(&json, "apply") && has_step(&json, "activate"), "{json}");
    assert!(!has_step(&json, "reload"), "the rejected configuration is never loaded: {json}");
    let after = node.snapshot();
    assert_eq!(
        changed(&before, &after),
        ["etc/ssh/portcullis/principals/backup", "etc/ssh/portcullis/revoked.krl", "etc/ssh/portcullis/state.json"],
        "only the trust files (and the state recording the new one) changed"
    );
    assert_eq!(std::fs::read(&krl_path).unwrap(), new_krl, "the new KRL is committed");
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), "pc_backup\n", "the new principals are committed");
    assert_eq!(std::fs::read(&drop_in).unwrap(), drop_in_before, "the drop-in is byte-identical");
    assert_eq!(std::fs::read(&host_cert).unwrap(), host_cert_before, "the host certificate is byte-identical");
    assert!(!node.path("/etc/ssh/portcullis/journal.json").exists());
    assert!(!node.cert_login_works("root", &key, &cert), "the new revocation is in force despite the sshd failure");
    let other = node.dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (key2, cert2, _) = user_with_cert(&other, &ca, &["pc_admins_root"]);
    assert!(node.cert_login_works("root", &key2, &cert2), "an unrevoked certificate still logs in");
    assert!(node.ordinary_login_works());

    // `sshd -T` does not show our RevokedKeys (something overrides it). The trust files
    // are current now, so only the sshd change is tried, and it goes back.
    let hides = wrapper(
        "sshd-hides-krl",
        "if [ \"$1\" = -T ]; then /usr/sbin/sshd \"$@\" | grep -v '^revokedkeys '; exit 0; fi\n".into(),
    );
    let (code, json, _) = refresh_with_sshd(&hides);
    assert_eq!(code, 4, "{json}");
    assert_eq!(json["error"]["code"], "rolled_back", "{json}");
    assert!(json["error"]["message"].as_str().unwrap().contains("sshd -T shows revokedkeys"), "{json}");
    assert_eq!((&json["trust_files"], &json["sshd_change"]), (&json!("unchanged"), &json!("rolled_back")), "{json}");
    assert_untouched(&node, &after, "refresh whose sshd -T lacks our values");

    // Killed between the phases: no journal, the new principals committed, the sshd
    // files as they were.
    ca.state.lock().unwrap().principals.insert("backup".into(), vec!["pc_backup2".into()]);
    refresh_killed_after("apply");
    assert!(!node.path("/etc/ssh/portcullis/journal.json").exists(), "phase 1 committed");
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), "pc_backup2\n");
    assert_eq!(std::fs::read(&drop_in).unwrap(), drop_in_before);
    assert_eq!(std::fs::read(&host_cert).unwrap(), host_cert_before);
    assert!(node.ordinary_login_works());
    let between = node.snapshot();

    // Killed inside phase 2 (checked, not yet reloaded): the journal holds only the sshd
    // files, so the next run restores those and keeps the trust files.
    refresh_killed_after("test");
    assert!(node.path("/etc/ssh/portcullis/journal.json").exists());
    assert!(node.ordinary_login_works());
    let (code, json, _) = refresh_with_sshd(&hides);
    assert_eq!(code, 4, "{json}");
    assert!(has_step(&json, "recover"), "{json}");
    assert_untouched(&node, &between, "recovered from a kill inside the sshd phase");
    assert!(!node.cert_login_works("root", &key, &cert), "the revocation stays in force");

    // With a sound sshd the same refresh goes through: one reload, both files replaced.
    let (code, json, _) = refresh_with_sshd(Path::new("/usr/sbin/sshd"));
    assert_eq!((code, json["reloads"].as_u64()), (0, Some(1)), "{json}");
    assert_eq!((&json["trust_files"], &json["sshd_change"]), (&json!("unchanged"), &json!("applied")), "{json}");
    let steps = json["steps"].to_string();
    assert!(steps.contains("sshd -t") && steps.contains("sshd -T shows"), "{json}");
    assert!(!std::fs::read_to_string(&drop_in).unwrap().contains("edited by hand"));
    assert_ne!(std::fs::read(&host_cert).unwrap(), host_cert_before, "the near-expiry host certificate is replaced");
    assert!(!node.cert_login_works("root", &key, &cert), "the revocation applies");
    assert!(node.cert_login_works("root", &key2, &cert2));
    assert!(node.ordinary_login_works());
}

/// A host certificate deleted by hand is certified again by the next refresh; a refresh
/// killed after its reload is rolled back by the next run, and the restored drop-in names
/// that certificate again. The rollback keeps the file rather than failing: before, it
/// refused to delete a file the configuration names, every later run (`refresh`,
/// `remove`, `enroll`) stopped at that rollback, and revocations froze until someone
/// deleted the journal by hand (found in review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_keeps_a_file_the_restored_configuration_names() {
    let ca = FakeCa::start().await;
    let (node, key, cert, user_key) = enrolled_with_a_login(&ca);
    let host_cert = node.path("/etc/ssh/portcullis/ssh_host_ed25519_key-cert.pub");
    std::fs::remove_file(&host_cert).unwrap();
    let refresh = || {
        let mut c = node.enroll_cmd();
        c.arg("refresh");
        c
    };
    let out = refresh().env("PORTCULLIS_ENROLL_FAILPOINT", "reload").output().unwrap();
    assert_eq!(out.status.code(), Some(99), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(node.path("/etc/ssh/portcullis/journal.json").exists());

    // The next run finishes the rollback and goes on: a new revocation reaches the node.
    let mut krl = KrlBuilder::new(5, now(), "");
    krl.revoke_key_sha256(user_key.public_key().key_data());
    ca.state.lock().unwrap().krl = krl.encode();
    let (code, json, _) = run(refresh());
    assert_eq!(code, 0, "{json}");
    assert!(has_step(&json, "recover"), "{json}");
    assert!(!node.path("/etc/ssh/portcullis/journal.json").exists());
    assert!(host_cert.exists(), "the host certificate is certified again");
    assert!(!node.cert_login_works("root", &key, &cert), "the new revocation is in force");
    assert!(node.ordinary_login_works());

    // The same interruption, then `remove`: it finishes the rollback and removes.
    std::fs::remove_file(&host_cert).unwrap();
    let out = refresh().env("PORTCULLIS_ENROLL_FAILPOINT", "reload").output().unwrap();
    assert_eq!(out.status.code(), Some(99), "{}", String::from_utf8_lossy(&out.stderr));
    let mut remove = node.enroll_cmd();
    remove.arg("remove");
    let (code, json, _) = run(remove);
    assert_eq!(code, 0, "{json}");
    assert!(!node.path("/etc/ssh/sshd_config.d/60-portcullis.conf").exists(), "{json}");
    assert!(node.ordinary_login_works());
}

/// A KRL this node's own OpenSSH cannot load is never installed, whatever our parser
/// says: an older sshd (before 7.9, revocation by SHA-256 hash) refuses a section it
/// predates, and while `RevokedKeys` names a KRL it cannot load it refuses every public
/// key — `authorized_keys` included — with `sshd -t` passing. Here `ssh-keygen` on the
/// node's PATH plays that older OpenSSH; `status` reports the installed KRL the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_krl_the_nodes_openssh_cannot_load_is_refused_and_the_installed_one_stays() {
    let ca = FakeCa::start().await;
    let (node, key, cert, user_key) = enrolled_with_a_login(&ca);
    let krl_path = node.path("/etc/ssh/portcullis/revoked.krl");
    let installed = std::fs::read(&krl_path).unwrap();
    let older = node.dir.path().join("older-openssh");
    std::fs::create_dir(&older).unwrap();
    let stub = older.join("ssh-keygen");
    std::fs::write(
        &stub,
        "#!/bin/sh
echo \"Invalid KRL file $3: unsupported section\" >&2
exit 255
",
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", older.display(), std::env::var("PATH").unwrap());
    let with_older = |command: &str| {
        let mut c = node.enroll_cmd();
        c.env("PATH", &path).arg(command);
        c
    };
    let mut krl = KrlBuilder::new(7, now(), "");
    krl.revoke_key_sha256(user_key.public_key().key_data());
    ca.state.lock().unwrap().krl = krl.encode();

    let (code, json, _) = run(with_older("refresh"));
    assert_ne!(code, 0, "{json}");
    let message = json["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("cannot load the CA's KRL") && message.contains("unsupported section"), "{json}");
    assert_eq!(std::fs::read(&krl_path).unwrap(), installed, "the installed KRL stays");
    assert!(node.ordinary_login_works());
    assert!(node.cert_login_works("root", &key, &cert));

    // `status` asks the node's OpenSSH about the installed KRL too.
    let (code, json, _) = run(with_older("status"));
    assert_eq!(code, 8, "{json}");

    // With the node's real OpenSSH the same KRL loads and is installed.
    let mut refresh = node.enroll_cmd();
    refresh.arg("refresh");
    let (code, json, _) = run(refresh);
    assert_eq!(code, 0, "{json}");
    assert!(!node.cert_login_works("root", &key, &cert), "the revocation applies");
    assert!(node.ordinary_login_works());
}

/// A node that missed a CA key rotation after a compromise gets a bundle that trusts
/// only the new key and revokes the old one. Written KRL first, as usual, it would trust
/// only a revoked key between the two writes — and refuse every certificate login until
/// the next run, should the run stop there. Such a KRL goes after the new trusted keys:
/// killed right after it is written, the node already takes the new key's certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_krl_revoking_the_installed_ca_key_follows_the_new_trusted_keys() {
    let ca = FakeCa::start().await;
    let (node, key, cert, _) = enrolled_with_a_login(&ca);
    let old = ca.user_ca();
    let new =
        PrivateKey::random(&mut ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng), Algorithm::Ed25519).unwrap();
    let mut krl = KrlBuilder::new(9, now(), "");
    krl.revoke_key(old.public_key().key_data());
    {
        let mut state = ca.state.lock().unwrap();
        state.user_ca = new;
        state.krl = krl.encode();
    }
    let rotated = node.dir.path().join("rotated");
    std::fs::create_dir(&rotated).unwrap();
    let (new_key, new_cert, _) = user_with_cert(&rotated, &ca, &["pc_admins_root"]);

    let mut killed = node.enroll_cmd();
    killed.env("PORTCULLIS_ENROLL_FAILPOINT", "written:revoked.krl").arg("refresh");
    let out = killed.output().unwrap();
    assert_eq!(out.status.code(), Some(99), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(node.cert_login_works("root", &new_key, &new_cert), "the new key's certificates log in after the crash");
    assert!(node.ordinary_login_works());

    // The next run finishes the rollback and applies the bundle whole.
    let mut refresh = node.enroll_cmd();
    refresh.arg("refresh");
    let (code, json, _) = run(refresh);
    assert_eq!(code, 0, "{json}");
    assert!(node.cert_login_works("root", &new_key, &new_cert));
    assert!(!node.cert_login_works("root", &key, &cert), "the old key is revoked");
}

/// A CA restored from an older backup sends a KRL of a lower version, without the
/// revocations made since: installing it would let revoked certificates in again. The
/// node keeps the installed one and says why; the CA's next KRL (a version at least the
/// time of its change) is installed as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_krl_from_a_restored_ca_does_not_undo_revocations() {
    let ca = FakeCa::start().await;
    let (node, key, cert, user_key) = enrolled_with_a_login(&ca);
    let krl_path = node.path("/etc/ssh/portcullis/revoked.krl");
    let refresh = || {
        let mut c = node.enroll_cmd();
        c.arg("refresh");
        run(c)
    };
    let mut revoking = KrlBuilder::new(now(), now(), "");
    revoking.revoke_key(user_key.public_key().key_data());
    ca.state.lock().unwrap().krl = revoking.encode();
    let (code, json, _) = refresh();
    assert_eq!(code, 0, "{json}");
    assert!(!node.cert_login_works("root", &key, &cert), "revoked");
    let installed = std::fs::read(&krl_path).unwrap();

    ca.state.lock().unwrap().krl = KrlBuilder::new(7, now(), "").encode();
    let (code, json, _) = refresh();
    assert_eq!(code, 0, "{json}");
    assert!(json["steps"].to_string().contains("older KRL"), "{json}");
    assert_eq!(std::fs::read(&krl_path).unwrap(), installed, "the older KRL was installed");
    assert!(!node.cert_login_works("root", &key, &cert), "a restored CA's KRL let a revoked certificate in");

    ca.state.lock().unwrap().krl = KrlBuilder::new(now() + 1, now(), "").encode();
    let (code, json, _) = refresh();
    assert_eq!(code, 0, "{json}");
    assert_ne!(std::fs::read(&krl_path).unwrap(), installed, "a newer KRL is installed");
    assert!(node.ordinary_login_works());
}

/// A host key regenerated after enrollment (an operator's `ssh-keygen -A`, a restored
/// image) is not the key the CA certifies: the refresh leaves it without a certificate
/// and says why, instead of installing the old key's certificate for it — and the new
/// revocations still apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regenerated_host_key_gets_no_other_keys_certificate_and_revocations_still_apply() {
    let ca = FakeCa::start().await;
    let (node, key, cert, user_key) = enrolled_with_a_login(&ca);
    let ecdsa_cert = node.path("/etc/ssh/portcullis/ssh_host_ecdsa_key-cert.pub");
    let ed25519_cert = node.path("/etc/ssh/portcullis/ssh_host_ed25519_key-cert.pub");
    assert!(ecdsa_cert.exists() && ed25519_cert.exists());

    let ecdsa = node.path("/etc/ssh/ssh_host_ecdsa_key");
    std::fs::remove_file(&ecdsa).unwrap();
    std::fs::remove_file(format!("{}.pub", ecdsa.display())).unwrap();
    let made = Command::new("ssh-keygen").args(["-q", "-t", "ecdsa", "-N", "", "-C", "", "-f"]).arg(&ecdsa).status();
    assert!(made.unwrap().success());
    let mut krl = KrlBuilder::new(3, now(), "");
    krl.revoke_key_sha256(user_key.public_key().key_data());
    ca.state.lock().unwrap().krl = krl.encode();

    let mut refresh = node.enroll_cmd();
    refresh.arg("refresh");
    let (code, json, _) = run(refresh);
    assert_eq!(code, 0, "{json}");
    let said = json["steps"].as_array().unwrap().iter().find(|s| s["step"] == "host key").map(|s| s["detail"].clone());
    let said = said.unwrap_or_default().to_string();
    assert!(said.contains("ssh_host_ecdsa_key") && said.contains("enroll"), "{json}");
    assert!(!ecdsa_cert.exists(), "the old key's certificate is not kept for the new key");
    let drop_in = std::fs::read_to_string(node.path("/etc/ssh/sshd_config.d/60-portcullis.conf")).unwrap();
    assert!(!drop_in.contains("ecdsa") && drop_in.contains(&ed25519_cert.display().to_string()), "{drop_in}");
    assert!(!node.cert_login_works("root", &key, &cert), "the revocation applies");
    assert!(node.ordinary_login_works());
}

/// A bundle the tool refuses for something other than its KRL — here a principal it
/// cannot write (a CA newer than the node could send one) — still brings its
/// revocations: the KRL goes in on its own, the other files stay as they were, and the
/// refresh reports the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_bundle_still_brings_its_revocations() {
    let ca = FakeCa::start().await;
    let (node, key, cert, user_key) = enrolled_with_a_login(&ca);
    let principals = node.path("/etc/ssh/portcullis/principals/root");
    let before = std::fs::read_to_string(&principals).unwrap();
    {
        let mut state = ca.state.lock().unwrap();
        state.principals.insert("root".into(), vec!["pc_admins_root".into(), "not one word".into()]);
        let mut krl = KrlBuilder::new(7, now(), "");
        krl.revoke_key_sha256(user_key.public_key().key_data());
        state.krl = krl.encode();
    }
    let mut refresh = node.enroll_cmd();
    refresh.arg("refresh");
    let (code, json, _) = run(refresh);
    assert_ne!(code, 0, "the bundle was refused: {json}");
    assert!(json.to_string().contains("installed on its own"), "{json}");
    assert!(!node.cert_login_works("root", &key, &cert), "the revocation applies");
    assert_eq!(std::fs::read_to_string(&principals).unwrap(), before, "the principals stay as they were");
    assert!(node.ordinary_login_works());
}
