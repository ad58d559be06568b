//! Session admission: the onward certificate's shape, each refusal with its control, and caps that stay exact under parallel opens.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_session_gets_a_certificate_for_this_node_only() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let serial = user_cert(&fx.ca, "alice").await;
    let id = session_id();
    let grant = granted(api, &fx.bastion, &terminated(&id, &serial, "pve01", "root")).await;
    assert_eq!(
        (
            grant.username.as_str(),
            grant.device.as_str(),
            grant.agent.as_str(),
            grant.rule.as_str(),
            grant.role.as_str()
        ),
        ("alice", "pve01", "local", "lab-ssh", "ops")
    );
    assert_eq!((grant.target_host.as_str(), grant.target_port), ("10.0.0.5", 22));
    assert_eq!(grant.host_key_check, HostKeyCheck::KnownHosts);
    assert_eq!(grant.known_host_keys.len(), 1);
    assert!(grant.host_ca_keys.starts_with("ssh-"));
    assert_eq!((grant.idle_timeout_secs, grant.absolute_timeout_secs), (600, 3600));
    assert_eq!(grant.connect_timeout_ms, 10_000);
    assert!(grant.allow_port_forwarding && !grant.allow_agent_forwarding && !grant.allow_x11_forwarding);
    assert_eq!(grant.login.as_deref(), Some("root"));

    let cert = grant.session_certificate.expect("terminated mode gets a session certificate");
    let (key_id, principals, mut extensions, signer) = inspect(&cert);
    assert_eq!(key_id, format!("session:{id}:alice"));
    assert_eq!(principals, [node_principal("pve01", "root")]);
    extensions.sort();
    assert_eq!(extensions, ["permit-port-forwarding", "permit-pty"]);
    let user_ca = fx.ca.core().trusted_keys(portcullis_ca::keys::KeyPurpose::User);
    let user_fp = portcullis_sshcert::fingerprint(ssh_key::PublicKey::from_openssh(user_ca.trim()).unwrap().key_data());
    assert!(signer.contains(&user_fp));
    let parsed = ssh_key::Certificate::from_openssh(&cert).unwrap();
    assert!(parsed.valid_before() - parsed.valid_after() <= SESSION_CERT_TTL_SECS + 60);
    assert!(parsed.valid_before() <= fx.clock_now() + SESSION_CERT_TTL_SECS);

    // The node lists exactly this principal for root; no other node does.
    let (_, v) = api.get_json(Some(&fx.admin), "/v1/nodes/pve01/principals").await;
    assert!(v["principals"]["root"].as_array().unwrap().iter().any(|p| p == &json!(node_principal("pve01", "root"))));
    let (_, v) = api.get_json(Some(&fx.admin), "/v1/nodes/pve02/principals").await;
    assert!(!v["principals"]["root"].as_array().unwrap().iter().any(|p| p == &json!(node_principal("pve01", "root"))));
    // Recorded like any certificate (so it can be listed and revoked).
    let (_, v) = api.get_json(Some(&fx.admin), "/v1/admin/certs?user=alice").await;
    assert!(v.as_array().unwrap().iter().any(|c| c["key_id"] == json!(format!("session:{id}:alice"))), "{v}");

    // Jump mode by address, to an allowed port; a port the rule does not allow is refused.
    let grant = granted(api, &fx.bastion, &jump(&session_id(), &serial, "10.1.0.5", Some(2222))).await;
    assert_eq!(
        (grant.device.as_str(), grant.agent.as_str(), grant.target_host.as_str(), grant.target_port),
        ("pve02", "edge1", "10.1.0.5", 2222)
    );
    assert!(grant.session_certificate.is_none() && grant.login.is_none());
    denied(api, &fx.bastion, &jump(&session_id(), &serial, "pve02", Some(8080)), deny_reason::PORT_NOT_ALLOWED).await;

    // The audit record of the open names everything.
    let opened = audit(&fx.ca, "session_opened").await;
    let rec = opened.iter().find(|e| e["session_id"] == json!(id)).unwrap();
    for (field, want) in [
        ("user", "alice"),
        ("device", "pve01"),
        ("agent", "local"),
        ("rule", "lab-ssh"),
        ("role", "ops"),
        ("mode", "terminated"),
        ("login", "root"),
        ("client_ip", IP),
        ("bastion", "b1"),
    ] {
        assert_eq!(rec[field], json!(want), "{field} in {rec}");
    }
    assert_eq!(rec["cert_serial"], json!(serial.serial));
    // The seed's credential fingerprint: the per-session certificate and its key.
    let session_cert = ssh_key::Certificate::from_openssh(cert.trim()).unwrap();
    assert_eq!(rec["session_cert_serial"], json!(session_cert.serial().to_string()));
    assert_eq!(rec["session_key_fingerprint"], json!(portcullis_sshcert::fingerprint(session_cert.public_key())));
}

/// A certificate whose validity has not begun (here: the CA's clock stepped back an hour
/// after issuing it) opens nothing until it has; within the clock skew it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_not_valid_yet_opens_no_session() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let alice = user_cert(&fx.ca, "alice").await;
    let issued_at = fx.clock_now();
    fx.clock.set(issued_at - 3600);
    let (status, v) = open(api, &fx.bastion, &terminated(&session_id(), &alice, "pve01", "root")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["message"], "credential_invalid: the certificate is not valid yet", "{v}");
    fx.clock.set(issued_at - 30);
    granted(api, &fx.bastion, &terminated(&session_id(), &alice, "pve01", "root")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_denial_has_its_reason_and_its_control() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let alice = user_cert(&fx.ca, "alice").await;
    let bob = user_cert(&fx.ca, "bob").await;
    let revoked = user_cert(&fx.ca, "alice").await;

    // Controls: each certificate opens a session before anything is taken away.
    for serial in [&alice, &bob, &revoked] {
        let id = session_id();
        granted(api, &fx.bastion, &terminated(&id, serial, "pve01", "root")).await;
        close(api, &fx.bastion, &id, "client_disconnect").await;
    }

    let unknown = Presented::serial_only("12345");
    denied(api, &fx.bastion, &terminated(&session_id(), &unknown, "pve01", "root"), deny_reason::CREDENTIAL_INVALID)
        .await;
    let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/revoke", &json!({"serial": revoked.serial})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    denied(api, &fx.bastion, &terminated(&session_id(), &revoked, "pve01", "root"), deny_reason::CREDENTIAL_INVALID)
        .await;
    let (status, _) = api.post_json(Some(&fx.admin), "/v1/admin/users/bob/disable", &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    denied(api, &fx.bastion, &terminated(&session_id(), &bob, "pve01", "root"), deny_reason::CREDENTIAL_INVALID).await;
    // A session certificate (or any non-user certificate) is no user credential.
    let grant = granted(api, &fx.bastion, &terminated(&session_id(), &alice, "pve01", "root")).await;
    let session_cert = Presented::of(&grant.session_certificate.unwrap());
    denied(
        api,
        &fx.bastion,
        &terminated(&session_id(), &session_cert, "pve01", "root"),
        deny_reason::CREDENTIAL_INVALID,
    )
    .await;
    // A certificate that is not the one issued under its serial (here: another real
    // certificate's digest, or none) is refused; the one issued still opens.
    let another = user_cert(&fx.ca, "alice").await;
    let forged = Presented { digest: another.digest.clone(), ..alice.clone() };
    for other in [forged, Presented::serial_only(&alice.serial)] {
        let (status, v) = open(api, &fx.bastion, &terminated(&session_id(), &other, "pve01", "root")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
        assert!(v["message"].as_str().unwrap().contains("not the one the CA issued"), "{v}");
    }
    granted(api, &fx.bastion, &terminated(&session_id(), &alice, "pve01", "root")).await;

    // Login the role does not grant; a device no role of hers targets.
    denied(api, &fx.bastion, &terminated(&session_id(), &alice, "pve01", "admin"), deny_reason::NOT_AUTHORIZED).await;
    denied(api, &fx.bastion, &terminated(&session_id(), &alice, "prod01", "root"), deny_reason::NOT_AUTHORIZED).await;
    // Targeted by her role, but served by an agent outside every rule's scope.
    denied(api, &fx.bastion, &terminated(&session_id(), &alice, "lab09", "root"), deny_reason::RULE_MISMATCH).await;
    denied(api, &fx.bastion, &terminated(&session_id(), &alice, "nope", "root"), deny_reason::UNKNOWN_DEVICE).await;
    // A console opens with a browser's ticket, never with a certificate (see
    // `console_control::a_bastion_cannot_open_a_console_with_a_certificate_it_has_seen`).
    let mut console = terminated(&session_id(), &alice, "pve01", "root");
    console["mode"] = json!("console");
    denied(api, &fx.bastion, &console, deny_reason::CONNECTION_PROOF_MISSING).await;
    // Carol's contract role grants deploy only.
    let carol = user_cert(&fx.ca, "carol").await;
    denied(api, &fx.bastion, &terminated(&session_id(), &carol, "pve01", "root"), deny_reason::NOT_AUTHORIZED).await;
    granted(api, &fx.bastion, &terminated(&session_id(), &carol, "pve01", "deploy")).await;

    // Malformed requests are 400, not denials.
    for body in [
        terminated("ABC", &alice, "pve01", "root"),
        terminated(&session_id(), &Presented::serial_only("x"), "pve01", "root"),
        terminated(&session_id(), &alice, "pve01", "Root!"),
        terminated(&session_id(), &alice, "pve 01", "root"),
        json!({"session_id": session_id(), "mode": "terminated", "cert_serial": alice.serial, "login": "root",
               "device": "pve01", "client_ip": IP}),
        json!({"session_id": session_id(), "mode": "jump", "cert_serial": alice.serial, "login": "root",
               "device": "pve01", "client_ip": IP}),
    ] {
        let (status, v) = open(api, &fx.bastion, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
    }

    // Each denial is audited with its reason, the user when known, and the device.
    let denials = audit(&fx.ca, "session_denied").await;
    let reasons: Vec<&str> = denials.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons,
        [
            "credential_invalid",
            "credential_invalid",
            "credential_invalid",
            "credential_invalid",
            "credential_invalid",
            "credential_invalid",
            "not_authorized",
            "not_authorized",
            "rule_mismatch",
            "unknown_device",
            "connection_proof_missing",
            "not_authorized"
        ]
    );
    // The user is known once the serial names a user certificate.
    assert_eq!(denials[0]["user"], Value::Null);
    assert_eq!(denials[1]["user"], "alice");
    assert_eq!(denials[2]["user"], "bob");
    assert_eq!(denials[3]["user"], Value::Null);
    // A certificate that is not the one issued under a serial is nobody's.
    assert_eq!((&denials[4]["user"], &denials[5]["user"]), (&Value::Null, &Value::Null));
    assert_eq!((denials[8]["user"].as_str(), denials[8]["device"].as_str()), (Some("alice"), Some("lab09")));
    assert_eq!(denials[8]["bastion"], "b1");
    assert_no_secrets(&fx.ca).await;
}

/// 200 opens at once for one user whose role allows 5, spread over twenty devices and
/// agents (and over the replicas): exactly 5 are granted; closing one admits exactly one
/// more.
async fn caps_are_exact(fx: &Fx) {
    let serial = user_cert(&fx.ca, "alice").await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let api = Arc::clone(&fx.replicas[i % fx.replicas.len()]);
        let bastion = fx.bastion.clone();
        let device = format!("fleet-{:02}", i % FLEET);
        let body = if i % 2 == 0 {
            terminated(&session_id(), &serial, &device, "root")
        } else {
            jump(&session_id(), &serial, &device, None)
        };
        tasks.spawn(async move {
            let (status, v) = open(&api, &bastion, &body).await;
            (status, v, body["session_id"].as_str().unwrap().to_owned())
        });
    }
    let mut granted_ids = Vec::new();
    let mut refused = 0;
    while let Some(done) = tasks.join_next().await {
        let (status, v, id) = done.unwrap();
        match status {
            StatusCode::OK => granted_ids.push(id),
            StatusCode::FORBIDDEN => {
                assert!(v["message"].as_str().unwrap().starts_with("cap_reached: "), "{v}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!((granted_ids.len(), refused), (5, 195));
    assert_eq!(counter(&fx.ca, "user:alice").await, 5);
    assert_eq!(audit(&fx.ca, "session_opened").await.len(), 5);
    // Every refusal is answered and counted; the first ones per user and minute are
    // recorded one by one, the rest of such a burst summarized (each replica keeps its
    // own budget and counters).
    let recorded = audit(&fx.ca, "session_denied").await.len();
    assert!((30..=195).contains(&recorded), "{recorded}");
    let mut counted = 0;
    for replica in &fx.replicas {
        let metrics = replica.ca.metrics_text().await;
        counted += metrics
            .lines()
            .filter(|l| l.starts_with("portcullis_ca_sessions_denied_total{") && l.contains("reason=\"cap_reached\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum::<u64>();
    }
    assert_eq!(counted, 195);

    let api = fx.api();
    denied(api, &fx.bastion, &terminated(&session_id(), &serial, "pve01", "root"), deny_reason::CAP_REACHED).await;
    close(fx.replicas.last().unwrap(), &fx.bastion, &granted_ids[0], "client_disconnect").await;
    assert_eq!(counter(&fx.ca, "user:alice").await, 4);
    granted(api, &fx.bastion, &terminated(&session_id(), &serial, "pve01", "root")).await;
    denied(api, &fx.bastion, &terminated(&session_id(), &serial, "pve01", "root"), deny_reason::CAP_REACHED).await;
    // Another user is not affected by alice's cap.
    let bob = user_cert(&fx.ca, "bob").await;
    granted(api, &fx.bastion, &terminated(&session_id(), &bob, "pve01", "root")).await;
    // Counters match the leases, scope by scope.
    let live = fx.ca.core().store().leases().await.unwrap();
    assert_eq!(live.len(), 6);
    for lease in &live {
        for scope in lease.scopes() {
            let held = live.iter().filter(|l| l.scopes().contains(&scope)).count();
            assert_eq!(counter(&fx.ca, &scope).await, held as i64, "{scope}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_are_exact_under_200_parallel_opens_on_sqlite() {
    let fx = fixture(None, 1).await;
    caps_are_exact(&fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_are_exact_under_200_parallel_opens_on_postgres_with_two_replicas() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    let fx = fixture(Some(&pg.url()), 2).await;
    assert_eq!(fx.ca.core().store().backend(), portcullis_ca::store::Backend::Postgres);
    caps_are_exact(&fx).await;
}

/// A role whose `session` table names no cap (carol's `contract` role has none at all)
/// still has bounded ones — the seed's "cap concurrent sessions per user, per device,
/// and per edge agent": the seventeenth concurrent session of one user is refused, and
/// closing one lets the next in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_caps_gets_bounded_defaults() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let carol = user_cert(&fx.ca, "carol").await;
    let per_user = usize::try_from(portcullis_policies::DEFAULT_MAX_PER_USER).unwrap();
    let mut open_ids = Vec::new();
    for _ in 0..per_user {
        let id = session_id();
        granted(api, &fx.bastion, &terminated(&id, &carol, "pve01", "deploy")).await;
        open_ids.push(id);
    }
    denied(api, &fx.bastion, &terminated(&session_id(), &carol, "pve01", "deploy"), deny_reason::CAP_REACHED).await;
    close(api, &fx.bastion, &open_ids[0], "client_disconnect").await;
    granted(api, &fx.bastion, &terminated(&session_id(), &carol, "pve01", "deploy")).await;
}

/// A client that loops refused opens (one channel open each, to a device that does not
/// exist) writes one audit record per refusal only up to a per-user budget; past it the
/// refusals are recorded once and counted into the window's summary — each still
/// answered as a denial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_opens_is_summarized_not_recorded_one_by_one() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let alice = user_cert(&fx.ca, "alice").await;
    for _ in 0..60 {
        denied(api, &fx.bastion, &terminated(&session_id(), &alice, "nope", "root"), deny_reason::UNKNOWN_DEVICE).await;
    }
    // Thirty one by one, then the first of the flood's window.
    assert_eq!(audit(&fx.ca, "session_denied").await.len(), 31);
    fx.clock.set(fx.clock_now() + 61);
    fx.ca.core().flush_refusals().await.unwrap();
    let summaries = audit(&fx.ca, "refusals_summarized").await;
    let counted: u64 = summaries
        .iter()
        .flat_map(|s| s["counts"].as_array().unwrap().iter())
        .filter(|c| c["reason"] == "session_denied:unknown_device")
        .map(|c| c["counted"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 29, "{summaries:?}");
}
