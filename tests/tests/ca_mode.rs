//! `portcullisd ca --config FILE`, the service mode: configuration from a file, the CA
//! passphrase from the environment, and a first administrator whose one-time password is
//! written to a 0600 file but never printed (the service's stdout is a journal).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_tests::bin;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_mode_keeps_the_first_password_off_stdout_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let policy = dir.path().join("policy");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&policy).unwrap();
    std::fs::write(policy.join("default.toml"), portcullis_ca::policy_files::DEFAULT_POLICY).unwrap();
    let config = dir.path().join("portcullisd.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\npolicy_dir = \"{}\"\nmax_cert_ttl = \"2h\"\n",
            data.display(),
            policy.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(bin("portcullisd"))
        .args(["ca", "--config"])
        .arg(&config)
        .env("PORTCULLIS_CA_PASSPHRASE", "a passphrase from the environment")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !printed.iter().any(|l: &String| l.starts_with("First administrator")) {
        let left = deadline.saturating_duration_since(Instant::now());
        printed.push(rx.recv_timeout(left).expect("portcullisd ca did not start"));
    }
    let url = printed.iter().find_map(|l| l.strip_prefix("Portcullis CA listening on ")).unwrap().to_owned();
    let pin = printed.iter().find_map(|l| l.strip_prefix("TLS public-key pin: ")).unwrap().to_owned();

    let password_file = data.join("initial-admin-password");
    let password = std::fs::read_to_string(&password_file).unwrap();
    assert_eq!(std::fs::metadata(&password_file).unwrap().permissions().mode() & 0o077, 0);
    let stdout = printed.join("\n");
    assert!(!stdout.contains(password.trim()), "password printed: {stdout}");
    assert!(stdout.contains(&password_file.display().to_string()), "{stdout}");

    // The password works once, to choose admin's own (the file goes then), and even at
    // debug level neither reaches the log.
    let own = "admin-own-password";
    let client = portcullis_tests::server::client_with_pin(&pin);
    let response = client
        .post(format!("{url}/v1/auth/login"))
        .json(&serde_json::json!({ "username": "admin", "password": password.trim(), "new_password": own }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap_or_default());
    assert!(!password_file.exists(), "the used one-time password file is still there");
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains(password.trim()) && !log.contains(own), "password in the log");
    assert!(!log.contains("a passphrase from the environment"), "passphrase in the log");
}

/// Offline checks, as an operator or a pre-commit hook runs them: `portcullisd check`
/// (the shipped example configuration and policy, pointed at a temporary directory) and
/// `portcullis admin policy check` (no session, no CA). A broken policy file is named
/// with its line and column and the exit status is 1; nothing is created or opened.
#[test]
fn configuration_and_policy_checks_run_offline_and_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy");
    std::fs::create_dir_all(&policy).unwrap();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    std::fs::copy(example.join("examples/policy/pve.toml"), policy.join("pve.toml")).unwrap();
    let shipped = std::fs::read_to_string(example.join("portcullisd.toml")).unwrap();
    let data = dir.path().join("data");
    let config_text = shipped
        .replace("/etc/portcullis/policy", &policy.display().to_string())
        .replace("/var/lib/portcullis", &data.display().to_string());
    let config = dir.path().join("portcullisd.toml");
    std::fs::write(&config, config_text).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let run = |program: &str, args: &[&std::ffi::OsStr]| {
        Command::new(bin(program)).args(args).env("HOME", &home).env_remove("RUST_BACKTRACE").output().unwrap()
    };
    let check = || run("portcullisd", &["check".as_ref(), "--config".as_ref(), config.as_os_str()]);
    let policy_check =
        || run("portcullis", &["admin".as_ref(), "policy".as_ref(), "check".as_ref(), policy.as_os_str()]);

    let out = check();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Configuration OK. Policy: 4 role(s)"), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("without a source"), "local users only: {out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hold for every device"), "{out:?}");
    let out = policy_check();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Policy OK: 1 file(s), 4 role(s)"), "{out:?}");
    assert!(!data.exists(), "a check creates nothing");

    // With a directory too, group names that match every source's group are pointed out.
    let ca_pem = portcullis_ca::tls::bootstrap_tls(dir.path(), &["ldap.example.com".to_owned()]).unwrap();
    drop(ca_pem);
    std::fs::write(dir.path().join("ldap-password"), "secret\n").unwrap();
    let with_ldap = format!(
        "{}\n[ldap]\nurl = \"ldaps://ldap.example.com\"\nca_file = \"{}\"\nbind_dn = \"cn=portcullis,dc=example,dc=com\"\n\
         bind_password_file = \"{}\"\nuser_base = \"ou=people,dc=example,dc=com\"\n",
        std::fs::read_to_string(&config).unwrap(),
        dir.path().join("bootstrap-cert.pem").display(),
        dir.path().join("ldap-password").display()
    );
    // A targeted role with a permission its targets do not limit is pointed out too.
    let lab_operator = "[[role]]\nname = \"lab-operator\"\nlogins = [\"ops\"]\ntargets = 'in:devices tags.cluster:lab'\n\
                        permissions = [\"nodes.manage\", \"sessions.kill\", \"audit.read\"]\n";
    std::fs::write(policy.join("lab.toml"), lab_operator).unwrap();
    let ldap_config = dir.path().join("with-ldap.toml");
    std::fs::write(&ldap_config, with_ldap).unwrap();
    let out = run("portcullisd", &["check".as_ref(), "--config".as_ref(), ldap_config.as_os_str()]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("names groups without a source (auditors, contractors, portcullis-admins, pve-admins)")
            && said.contains("local users, LDAP alike"),
        "{said}"
    );
    assert!(
        said.contains("these permissions of targeted roles hold for every device: lab-operator (audit.read)."),
        "{said}"
    );

    // A mistake in the configuration is named by line and column, never quoted: toml's
    // own message printed the whole line, here a database password, to the journal.
    let typo = dir.path().join("typo.toml");
    // (With a quote inside: serde escapes it, which pairing quotes up misread.)
    let secret = "pg-password\\\"not-for-logs";
    std::fs::write(
        &typo,
        format!(
            "{}databse_url = \"postgres://portcullis:{secret}@db/portcullis\"\n",
            std::fs::read_to_string(&config).unwrap()
        ),
    )
    .unwrap();
    let wrong_type = dir.path().join("wrong-type.toml");
    // serde quotes a value it cannot take: `invalid type: string "…", expected usize`.
    std::fs::write(&wrong_type, format!("https_connections = \"{secret}\"\n")).unwrap();
    for file in [&typo, &wrong_type] {
        let out = run("portcullisd", &["check".as_ref(), "--config".as_ref(), file.as_os_str()]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(said.contains("at line"), "{said}");
        assert!(
            !said.contains("pg-password") && !said.contains("not-for-logs"),
            "the secret reached the error: {said}"
        );
    }

    std::fs::write(policy.join("zz-broken.toml"), "[[role]]\nname = \"typo\"\nlogin = [\"root\"]\n").unwrap();
    for out in [check(), policy_check()] {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("zz-broken.toml:3:1: unknown field `login`"), "{said}");
    }
}

/// Under systemd (`Type=notify`) the server says `READY=1` on `$NOTIFY_SOCKET` once its
/// listeners accept: by the time the datagram arrives, the API answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_notified_to_systemd_once_the_api_answers() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let server = portcullis_tests::Server::start_with(portcullis_tests::ServerOpts {
        env: vec![("NOTIFY_SOCKET".into(), socket_path.display().to_string())],
        ..portcullis_tests::ServerOpts::default()
    })
    .await;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("no READY=1 from portcullisd");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(message.starts_with("READY=1\nSTATUS=serving on https://"), "{message}");
    let (status, v) = server.get_json(None, "/readyz").await;
    assert_eq!(status, 200, "{v}");
}

/// The all-in-one serves an operator's certificate (`--tls-cert`, `--tls-key`) and reads
/// it again on SIGHUP (`systemctl reload`) and when it changes on disk: a renewal is
/// served from the next handshake without a restart; a broken file changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_certificate_is_served_and_renewed_on_sighup_or_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key.to_str().unwrap()]);
    let issue = |cn: &str| {
        let subject = format!("/CN={cn}");
        let (k, c) = (key.to_str().unwrap(), cert.to_str().unwrap());
        openssl(&["req", "-new", "-x509", "-key", k, "-out", c, "-days", "2", "-subj", &subject]);
    };
    issue("portcullis-first");
    let server = portcullis_tests::Server::start_with(portcullis_tests::ServerOpts {
        args: vec!["--tls-cert".into(), cert.display().to_string(), "--tls-key".into(), key.display().to_string()],
        ..portcullis_tests::ServerOpts::default()
    })
    .await;
    let served_subject = || {
        let host = server.url.trim_start_matches("https://").to_owned();
        let mut child = Command::new("openssl")
            .args(["s_client", "-connect", &host])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut text).unwrap();
        let _ = child.wait();
        text.lines().find_map(|l| l.strip_prefix("subject=")).unwrap_or_default().to_owned()
    };
    assert!(served_subject().contains("portcullis-first"), "{}", served_subject());
    let pem = std::fs::read_to_string(&cert).unwrap();
    let der = <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::from_pem_slice(pem.as_bytes());
    assert_eq!(server.pin, portcullis_proto::pin::pin_of_certificate(&der.unwrap()).unwrap());

    let hup = || Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().unwrap();
    let eventually = |wanted: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !served_subject().contains(wanted) {
            assert!(Instant::now() < deadline, "still serving {}", served_subject());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    issue("portcullis-renewed");
    hup();
    eventually("portcullis-renewed");
    // The pin (the key) is the same, so pinned clients go on working.
    let (status, _) = server.get_json(None, "/v1/auth/methods").await;
    assert_eq!(status, 200);

    std::fs::write(&cert, "not a certificate").unwrap();
    hup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("TLS certificate reload failed") {
        assert!(Instant::now() < deadline, "no failed-reload log line:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served_subject().contains("portcullis-renewed"), "a broken file replaced the certificate");
    // A renewal written to disk, no signal (certbot or cert-manager without a hook).
    issue("portcullis-watched");
    eventually("portcullis-watched");
}

/// A `ca` pointed at an empty database after it has run — a mistyped `database_url`,
/// another PostgreSQL database, a SQLite path not there yet — refuses, saying what to
/// check, instead of starting a new CA with keys no node trusts and a new first
/// administrator; so does one pointed at another CA's database. Its own database still
/// starts; deleting the record named in the message starts a new CA on purpose.
#[test]
fn a_ca_pointed_at_an_empty_database_after_it_ran_does_not_become_a_new_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (data, policy) = (dir.path().join("data"), dir.path().join("policy"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&policy).unwrap();
    std::fs::write(policy.join("default.toml"), portcullis_ca::policy_files::DEFAULT_POLICY).unwrap();
    let config = dir.path().join("portcullisd.toml");
    let configure_in = |data: &std::path::Path, database: &str| {
        std::fs::create_dir_all(data).unwrap();
        let url = format!("sqlite://{}", dir.path().join(database).display());
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\npolicy_dir = \"{}\"\ndatabase_url = \"{url}\"\n",
            data.display(),
            policy.display()
        );
        std::fs::write(&config, text).unwrap();
    };
    let configure = |database: &str| configure_in(&data, database);
    // Runs `portcullisd ca` until it listens (then stops it: `Ok`) or exits (`Err(stderr)`).
    let run = || {
        let mut child = Command::new(bin("portcullisd"))
            .args(["ca", "--config"])
            .arg(&config)
            .env("PORTCULLIS_CA_PASSPHRASE", "a passphrase from the environment")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let listening = stdout.lines().map_while(Result::ok).any(|l| l.starts_with("Portcullis CA listening on "));
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        if listening { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
    };
    configure("first.db");
    run().expect("a first start makes the CA");
    let record = std::fs::read_to_string(data.join("ca-keys")).unwrap();
    assert!(record.lines().any(|l| l.starts_with("user SHA256:")), "{record}");

    configure("typo.db");
    let refused = run().expect_err("an empty database made a new CA");
    assert!(refused.contains("the database holds no CA keys"), "{refused}");
    assert!(refused.contains(&data.join("ca-keys").display().to_string()), "{refused}");
    configure("first.db");
    run().expect("its own database still starts");
    // Another CA's database (that CA's own start made it).
    configure_in(&dir.path().join("other-data"), "other.db");
    run().expect("another CA");
    configure("other.db");
    let refused = run().expect_err("another CA's database took this one's place");
    assert!(refused.contains("the database holds another CA's keys"), "{refused}");

    configure("typo.db");
    std::fs::remove_file(data.join("ca-keys")).unwrap();
    run().expect("a new CA on purpose");
    assert_ne!(std::fs::read_to_string(data.join("ca-keys")).unwrap(), record, "the new CA's keys are recorded");
}
