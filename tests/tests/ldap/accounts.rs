//! Accounts: refusals audited, locked and reset accounts, passwords, filters, and re-checks at session open.

use super::*;

#[tokio::test]
async fn refusals_are_audited_and_locked_or_empty_never_bind() {
    let slapd = directory();
    let server = ca_with_ldap(&slapd).await;

    let (status, body) = server.try_login("alice", "not-alices-password").await;
    assert_refused(status, &body);
    // No such user: a bind all the same (as an entry that names nobody), so the refusal
    // takes as long as a wrong password's and tells no one which names exist.
    let nobody_bind = format!("BIND dn=\"cn=portcullis-no-such-entry,ou=people,{SUFFIX}\"");
    let mark = slapd.log_mark();
    let (status, body) = server.try_login("nobody", "whatever-password").await;
    assert_refused(status, &body);
    assert!(slapd.log_since(mark).contains(&nobody_bind), "{}", slapd.log_since(mark));

    // Locked: the right password, refused before any bind as carol (the same stand-in
    // bind instead).
    let mark = slapd.log_mark();
    let (status, body) = server.try_login("carol", CAROL_PW).await;
    assert_refused(status, &body);
    let log = slapd.log_since(mark);
    assert!(log.contains("SRCH"), "carol was looked up: {log}");
    assert!(!log.contains(&format!("BIND dn=\"{CAROL_DN}\"")), "a locked account was bound: {log}");
    assert!(log.contains(&nobody_bind), "{log}");

    // Empty password: refused before the directory hears of it (an empty simple bind is
    // an anonymous bind that "succeeds").
    let mark = slapd.log_mark();
    let (status, body) = server.try_login("alice", "").await;
    assert_refused(status, &body);
    let log = slapd.log_since(mark);
    assert!(!log.contains("BIND"), "a bind happened for an empty password: {log}");

    let got: Vec<(String, String, String)> = failures(&server)
        .await
        .iter()
        .map(reason)
        .map(|(u, s, r)| (u.to_owned(), s.to_owned(), r.to_owned()))
        .collect();
    let want: Vec<(String, String, String)> = [
        ("alice", "ldap", "bad_credentials"),
        ("nobody", "ldap", "unknown_user"),
        ("carol", "ldap", "user_disabled"),
        ("alice", "local", "empty_password"),
    ]
    .iter()
    .map(|(u, s, r)| ((*u).to_owned(), (*s).to_owned(), (*r).to_owned()))
    .collect();
    assert_eq!(got, want);
    // Bob, for contrast, gets in: the refusals above are about the input, not the setup.
    server.login("bob", BOB_PW).await;
}

#[tokio::test]
async fn filter_metacharacters_and_nul_find_nobody() {
    let slapd = directory();
    let server = ca_with_ldap(&slapd).await;

    // Names outside the one user-name alphabet (filter metacharacters, control
    // characters, over-long) are refused at the edge (400) without asking the directory
    // or writing an audit record. Unescaped, the first three would select alice alone
    // and let her password in under a name of the attacker's choosing; the fourth
    // matches everyone.
    let mark = slapd.log_mark();
    let hostile = ["alice)(|(uid=*", "ali*", "alice)(uid=alice", "*)(uid=*", "back\\slash", "zoë"];
    for name in hostile.iter().copied().chain(["alice\0", "ali\nce", &"a".repeat(300)]) {
        let (status, body) = server.try_login(name, ALICE_PW).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}: {body}");
        assert_eq!(body["error"], "bad_request", "{body}");
    }
    let log = slapd.log_since(mark);
    assert!(!log.contains("SRCH"), "the directory was searched for an impossible name: {log}");
    assert!(failures(&server).await.is_empty());

    // Below the edge the source still escapes what it is given (defence in depth).
    let ldap = source(&slapd, "");
    let mark = slapd.log_mark();
    for name in hostile {
        let refused = ldap.authenticate(name, &SecretString::from(ALICE_PW)).await.unwrap_err();
        assert_eq!(refused, AuthFailure::UnknownUser, "{name}");
    }
    let log = slapd.log_since(mark);
    assert!(log.contains(r"(uid=\2A\29\28uid=\2A)"), "the filter went out escaped: {log}");

    // The directory still works for the real name.
    server.login("alice", ALICE_PW).await;
}

#[tokio::test]
async fn directory_down_is_503_and_audited_while_local_users_log_in() {
    let mut slapd = directory();
    let server = ca_with_ldap(&slapd).await;
    let alice = server.login("alice", ALICE_PW).await;

    slapd.kill();
    let (status, body) = server.try_login("alice", ALICE_PW).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["message"], "identity directory unavailable");
    // An existing LDAP session is not waved through on stale groups either.
    let (status, body) = server.issue_cert(&alice, &public_line(&ed25519_key())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let refused = server.audit_events("session_refused").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].payload["reason"], "directory_unavailable");
    // Local users are not affected.
    server.login("admin", &server.admin_password().await).await;

    let fails = failures(&server).await;
    assert_eq!(fails.iter().map(reason).collect::<Vec<_>>(), vec![("alice", "ldap", "directory_unavailable")]);

    // Back up: pooled connections to the dead server are not reused.
    slapd.restart();
    assert_eq!(principals(&server, &alice).await.len(), 2);
    server.login("alice", ALICE_PW).await;
}

#[tokio::test]
async fn a_directory_that_never_answers_times_out_as_unavailable() {
    // Accepts TCP connections and says nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, SVC_PW).unwrap();
    let table: LdapToml = toml::from_str(&format!(
        "url = \"ldap://127.0.0.1:{port}\"\ndanger_cleartext_passwords = true\nbind_dn = \"cn=x,{SUFFIX}\"\n\
         bind_password_file = \"{}\"\nuser_base = \"{SUFFIX}\"\noperation_timeout = \"1s\"\n",
        pw.display()
    ))
    .unwrap();
    let source = LdapSource::new(table.validate().unwrap());
    let started = Instant::now();
    let got = source.authenticate("alice", &SecretString::from(ALICE_PW)).await;
    assert_eq!(got.unwrap_err(), AuthFailure::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(30), "the timeout did not end the wait");
}

#[tokio::test]
async fn empty_password_is_refused_by_the_ldap_source_before_any_bind() {
    let slapd = directory();
    let ldap = source(&slapd, "");
    let mark = slapd.log_mark();
    let got = ldap.authenticate("alice", &SecretString::from("")).await;
    assert_eq!(got.unwrap_err(), AuthFailure::EmptyPassword);
    let log = slapd.log_since(mark);
    assert!(!log.contains("BIND"), "the directory saw a bind for an empty password: {log}");
    // The same source does bind for a real password.
    let mark = slapd.log_mark();
    assert_eq!(
        ldap.authenticate("alice", &SecretString::from(ALICE_PW)).await.unwrap().identity.username,
        "ldap:alice"
    );
    assert!(slapd.log_since(mark).contains(&format!("BIND dn=\"{ALICE_DN}\"")));
}

#[tokio::test]
async fn a_password_the_administrator_reset_must_be_changed_before_sign_in() {
    let policy = format!("cn=default,ou=policies,{SUFFIX}");
    let slapd = directory_with(SlapdConfig { ppolicy_default: Some(policy.clone()), ..SlapdConfig::default() });
    slapd.ldapadd(&format!(
        "dn: ou=policies,{SUFFIX}\nobjectClass: organizationalUnit\nou: policies\n\n\
         dn: {policy}\nobjectClass: organizationalRole\nobjectClass: pwdPolicy\ncn: default\n\
         pwdAttribute: userPassword\npwdMustChange: TRUE\n"
    ));
    // The shipped example's [ldap] table has no filter for this: none here either.
    let server = ca_with_ldap_extra(&slapd, "").await;
    let session = server.login("alice", ALICE_PW).await;

    // The administrator resets alice's password; ppolicy marks it `pwdReset: TRUE`.
    const RESET_PW: &str = "temporary-reset-password-6";
    slapd.ldapmodify(&format!("dn: {ALICE_DN}\nchangetype: modify\nreplace: userPassword\nuserPassword: {RESET_PW}\n"));

    // The session from before the reset ends at its next request.
    let (status, body) = server.get_json(Some(&session), "/v1/auth/whoami").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let refused = server.audit_events("session_refused").await;
    assert_eq!(
        refused.iter().map(|r| r.payload["reason"].as_str().unwrap()).collect::<Vec<_>>(),
        ["password_change_required"]
    );

    // Signing in with the reset password: refused, and told to change it.
    let (status, body) = server.try_login("alice", RESET_PW).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "sign_in_failed", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("must be changed") && message.contains("change it"), "{message}");
    assert!(!message.contains("dc=") && !message.contains("pwdReset") && !message.contains(RESET_PW), "{message}");
    // A wrong password learns nothing about the account's state.
    let (status, body) = server.try_login("alice", "not-alices-password").await;
    assert_refused(status, &body);
    let fails = failures(&server).await;
    assert_eq!(
        fails.iter().map(reason).collect::<Vec<_>>(),
        vec![("alice", "ldap", "password_change_required"), ("alice", "ldap", "bad_credentials")]
    );
    // Locked accounts are still refused (carol), the same policy does not touch bob.
    let (status, body) = server.try_login("carol", CAROL_PW).await;
    assert_refused(status, &body);
    server.login("bob", BOB_PW).await;

    // Positive control: alice changes the password herself, then signs in with it.
    const NEW_PW: &str = "alices-own-new-password-7";
    slapd.change_own_password(ALICE_DN, RESET_PW, NEW_PW);
    let token = server.login("alice", NEW_PW).await;
    assert_eq!(whoami(&server, &token).await.username, "ldap:alice");
}

#[tokio::test]
async fn locked_accounts_are_refused_without_a_disabled_filter() {
    let slapd = directory();
    // The shipped example: no `disabled_filter`. carol carries pwdAccountLockedTime.
    let pw = slapd.write_file("svc-password-2", &format!("{SVC_PW}\n"));
    let table: LdapToml = toml::from_str(&format!(
        "url = \"{}\"\ndanger_cleartext_passwords = true\nbind_dn = \"{SVC_DN}\"\nbind_password_file = \"{}\"\n\
         user_base = \"ou=people,{SUFFIX}\"\n",
        slapd.url,
        pw.display()
    ))
    .unwrap();
    let ldap = LdapSource::new(table.validate().unwrap());
    let mark = slapd.log_mark();
    assert_eq!(ldap.authenticate("carol", &SecretString::from(CAROL_PW)).await.unwrap_err(), AuthFailure::Disabled);
    assert!(!slapd.log_since(mark).contains(&format!("BIND dn=\"{CAROL_DN}\"")), "a locked account was bound");
    assert_eq!(ldap.refresh("carol").await.unwrap_err(), AuthFailure::Disabled);
    // Unlocked, the same account signs in.
    slapd.ldapmodify(&format!("dn: {CAROL_DN}\nchangetype: modify\ndelete: pwdAccountLockedTime\n"));
    assert_eq!(
        ldap.authenticate("carol", &SecretString::from(CAROL_PW)).await.unwrap().identity.username,
        "ldap:carol"
    );
    assert!(ldap.refresh("carol").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_account_is_rechecked_at_session_open_and_console_ticket_redemption() {
    use portcullis_ca::Clock;
    use portcullis_proto::UserCertRequest;
    use serde_json::json;
    const IP: &str = SESSION_IP;

    let slapd = directory();
    let SessionWorld { ca, api, clock, bastion, _dir } = session_world(source(&slapd, "")).await;

    // bob signs in from the directory, gets a certificate and two console tickets.
    let bob = ca
        .identity()
        .login_password("bob", None, &SecretString::from(BOB_PW), IP)
        .await
        .unwrap()
        .token
        .expose()
        .to_owned();
    let caller = ca.identity().caller(&bob).await.unwrap();
    assert_eq!(caller.identity.source, "ldap");
    let key = ed25519_key();
    let request = UserCertRequest { public_key: public_line(&key), ..Default::default() };
    let issued = ca.issuance().issue(&caller, &request, IP).await.unwrap();
    let cert = ssh_key::Certificate::from_openssh(&issued.certificate).unwrap();
    let digest = portcullis_sshcert::certificate_digest(&cert);
    // Each open is a new connection of bob's, with his proof of it.
    let proof = || {
        let session = portcullis_sshcert::random_bytes::<32>();
        portcullis_tests::ssh::connection_proof(&key, &cert, "staff%pve01", &session)
    };
    let serial = issued.serial;
    let ticket = || async {
        let (status, v) =
            api.post_json(Some(&bob), "/v1/console/tickets", &json!({"device": "pve01", "login": "staff"})).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v["ticket"].as_str().unwrap().to_owned()
    };
    let (before, after) = (ticket().await, ticket().await);
    let session_id = || hex::encode(portcullis_sshcert::random_bytes::<16>());
    let open_as = |serial: String, id: String| {
        let body = json!({
            "session_id": id, "mode": "terminated", "cert_serial": serial, "certificate_digest": digest, "login": "staff",
            "device": "pve01", "client_ip": IP, "session_public_key": public_line(&ed25519_key()),
            "connection_proof": proof(),
        });
        let api = &api;
        let bastion = &bastion;
        async move { api.post_json(Some(bastion), "/v1/bastion/sessions/open", &body).await }
    };
    let open = |serial: String| open_as(serial, session_id());
    // The close orders a heartbeat listing `id` gets, after `seconds` more of heartbeats
    // (10 s apart, well inside the lease TTL).
    let heartbeat_after = |id: String, seconds: u64| {
        let (api, bastion, clock) = (&api, &bastion, &clock);
        async move {
            let body =
                json!({"sessions": [{"session_id": id, "bytes_from_client": 0, "bytes_to_client": 0}], "agents": []});
            let mut passed = 0;
            loop {
                let (status, v) = api.post_json(Some(bastion), "/v1/bastion/heartbeat", &body).await;
                assert_eq!(status, StatusCode::OK, "{v}");
                if passed >= seconds || !v["close"].as_array().unwrap().is_empty() {
                    return v["close"].clone();
                }
                let step = (seconds - passed).min(10);
                passed += step;
                clock.set(clock.now_unix() + step);
            }
        }
    };
    let redeem = |ticket: String| {
        let body = json!({
            "ticket": ticket, "session_id": session_id(), "session_public_key": public_line(&ed25519_key()), "client_ip": IP,
            "browser_session": portcullis_proto::console::session_binding(&bob),
        });
        let api = &api;
        let bastion = &bastion;
        async move { api.post_json(Some(bastion), "/v1/bastion/console/open", &body).await }
    };
    let assert_denied = |(status, v): (StatusCode, Value)| {
        assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
        assert_eq!(v["error"], "session_denied", "{v}");
        assert!(v["message"].as_str().unwrap().starts_with("credential_invalid: "), "{v}");
    };

    // Positive control: while the account is fine, both open.
    let live = session_id();
    let (status, v) = open_as(serial.to_string(), live.clone()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = redeem(before).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(heartbeat_after(live.clone(), 0).await, json!([]), "the directory vouches for bob");

    // Locked in the directory: the certificate and the ticket issued before stop working.
    slapd.ldapmodify(&format!(
        "dn: uid=bob,ou=people,{SUFFIX}\nchangetype: modify\nadd: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n"
    ));
    assert_denied(open(serial.to_string()).await);
    assert_denied(redeem(after).await);
    let refused = ca.core().store().audit_records(0, 100_000).await.unwrap();
    let reasons: Vec<String> = refused
        .iter()
        .filter(|r| r.event == "session_refused")
        .map(|r| serde_json::from_str::<Value>(&r.payload).unwrap()["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasons, ["user_disabled", "user_disabled"]);
    // The live session ends too, once the directory's answer is due again (a minute).
    let close = heartbeat_after(live, 70).await;
    assert_eq!(close[0]["reason"], "revoked", "{close}");

    // Unlocked: the certificate works again; taken out of `staff` in the directory, the
    // session it granted ends (RBAC revoked) within a minute.
    slapd.ldapmodify(&format!("dn: uid=bob,ou=people,{SUFFIX}\nchangetype: modify\ndelete: pwdAccountLockedTime\n"));
    let live = session_id();
    let (status, v) = open_as(serial.to_string(), live.clone()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(heartbeat_after(live.clone(), 70).await, json!([]), "nothing changed, nothing closes");
    let member = format!("uid=bob,ou=people,{SUFFIX}");
    let staff = format!("dn: cn=staff,ou=groups,{SUFFIX}\nchangetype: modify\n");
    slapd.ldapmodify(&format!("{staff}delete: member\nmember: {member}\n"));
    let close = heartbeat_after(live, 70).await;
    assert_eq!(close[0]["reason"], "policy_changed", "{close}");
    slapd.ldapmodify(&format!("{staff}add: member\nmember: {member}\n"));

    // Removed from the directory: the certificate opens nothing.
    slapd.ldapmodify(&format!("dn: uid=bob,ou=people,{SUFFIX}\nchangetype: delete\n"));
    assert_denied(open(serial.to_string()).await);
}
