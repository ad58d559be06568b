//! Onward certificates only against the user's live proof (issue 20), security keys, PINs and step-up.

use super::*;

/// Issue 20: a bastion taken over holds real bastion credentials and every certificate
/// it has seen, and asks the CA for onward certificates. Without the user's own
/// signature over a live connection it gets none; each attempt is refused and audited,
/// and a real proof still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_bastion_gets_no_onward_certificate_without_the_users_live_proof() {
    no_onward_certificate_without_a_live_proof(&fixture(None, 1).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_bastion_gets_no_onward_certificate_without_the_users_live_proof_on_postgres() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    no_onward_certificate_without_a_live_proof(&fixture(Some(&pg.url()), 2).await).await;
}

async fn no_onward_certificate_without_a_live_proof(fx: &Fx) {
    let api = fx.api();
    let alice = user_cert(&fx.ca, "alice").await;
    let bob = user_cert(&fx.ca, "bob").await;
    let (key, cert) = alice.holder.as_deref().unwrap();
    let connection = portcullis_sshcert::random_bytes::<32>();
    let proof = |user: &str| portcullis_tests::ssh::connection_proof(key, cert, user, &connection);
    let real = proof("root%pve01");

    // Alice connects: her proof opens a session (and, on the same connection, another).
    let first = session_id();
    let grant = granted(api, &fx.bastion, &terminated_with(&first, &alice, "pve01", "root", Some(real.clone()))).await;
    assert!(grant.session_certificate.is_some());
    granted(api, &fx.bastion, &terminated_with(&session_id(), &alice, "pve01", "root", Some(real.clone()))).await;

    // Her certificate alone, as a bastion has it: nothing.
    let missing = terminated_with(&session_id(), &alice, "pve01", "root", None);
    denied(api, &fx.bastion, &missing, deny_reason::CONNECTION_PROOF_MISSING).await;
    // Her live proof for another node or login than she asked for.
    let elsewhere = terminated_with(&session_id(), &alice, "pve02", "root", Some(real.clone()));
    denied(api, &fx.bastion, &elsewhere, deny_reason::CONNECTION_PROOF_INVALID).await;
    let other_login = terminated_with(&session_id(), &alice, "pve01", "deploy", Some(real.clone()));
    denied(api, &fx.bastion, &other_login, deny_reason::CONNECTION_PROOF_INVALID).await;
    // A proof the bastion forges with its own key for a new session, or one that says
    // pve02 but is signed over pve01.
    let own_key = ed25519_key();
    let forged = portcullis_tests::ssh::connection_proof(&own_key, cert, "root%pve02", &[9; 32]);
    let forged_open = terminated_with(&session_id(), &alice, "pve02", "root", Some(forged));
    denied(api, &fx.bastion, &forged_open, deny_reason::CONNECTION_PROOF_INVALID).await;
    let retargeted =
        portcullis_proto::bastion::ConnectionProof { request: proof("root%pve02").request, ..real.clone() };
    let retargeted_open = terminated_with(&session_id(), &alice, "pve02", "root", Some(retargeted));
    denied(api, &fx.bastion, &retargeted_open, deny_reason::CONNECTION_PROOF_INVALID).await;
    // Alice's proof under Bob's certificate.
    let bobs = terminated_with(&session_id(), &bob, "pve01", "root", Some(real.clone()));
    denied(api, &fx.bastion, &bobs, deny_reason::CONNECTION_PROOF_INVALID).await;
    // Another bastion replaying her live proof (to another CA replica, when there are two).
    let b2 = second_bastion(fx).await;
    let replay = terminated_with(&session_id(), &alice, "pve01", "root", Some(real.clone()));
    denied(fx.replicas.last().unwrap(), &b2, &replay, deny_reason::CONNECTION_PROOF_REPLAYED).await;

    // A certificate row from before the CA kept digests is known by serial: the bastion
    // certifies its own key under Carol's serial and signs the proof with it. Refused
    // (the certified key is not hers).
    let carol = user_cert(&fx.ca, "carol").await;
    on_certificate_row(fx, "UPDATE certificates SET cert_digest = NULL WHERE serial = $1", &carol).await;
    let own_ca = ed25519_key();
    let now = fx.clock_now();
    let mut b =
        ssh_key::certificate::Builder::new([7u8; 32], own_key.public_key().key_data().clone(), now - 60, now + 3600)
            .unwrap();
    b.serial(carol.serial.parse().unwrap()).unwrap();
    b.key_id("carol").unwrap();
    b.cert_type(ssh_key::certificate::CertType::User).unwrap();
    b.valid_principal("deploy%pve01").unwrap();
    let own_cert = b.sign(&own_ca).unwrap();
    let own_proof = portcullis_tests::ssh::connection_proof(&own_key, &own_cert, "deploy%pve01", &[8; 32]);
    let digestless = Presented { digest: None, ..carol.clone() };
    let own_open = terminated_with(&session_id(), &digestless, "pve01", "deploy", Some(own_proof));
    denied(api, &fx.bastion, &own_open, deny_reason::CONNECTION_PROOF_INVALID).await;

    // Later on her connection, another session: it ends when the first one must (an
    // hour after her first open), not an hour from now — a connection's sessions do not
    // pass her proof on from one to the next.
    fx.clock.set(now + 1800);
    let later =
        granted(api, &fx.bastion, &terminated_with(&session_id(), &alice, "pve01", "root", Some(real.clone()))).await;
    assert!((1799..=1800).contains(&later.absolute_timeout_secs), "{}", later.absolute_timeout_secs);
    // An administrator ends her connection's sessions. A bastion that ignores the close
    // orders and goes on listing them gets nothing more with her proof.
    let hers: Vec<String> = fx.ca.core().store().leases().await.unwrap().into_iter().map(|l| l.session_id).collect();
    for id in &hers {
        let (status, v) = api.post_json(Some(&fx.admin), &format!("/v1/admin/sessions/{id}/kill"), &json!({})).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    }
    let ids: Vec<&str> = hers.iter().map(String::as_str).collect();
    assert_eq!(heartbeat(api, &fx.bastion, &ids, &[]).await.len(), hers.len(), "each is ordered closed");
    denied(api, &fx.bastion, &replay, deny_reason::CONNECTION_PROOF_REPLAYED).await;

    // She leaves: once no session of that connection lives, her proof opens nothing.
    for id in &hers {
        close(api, &fx.bastion, id, "client_disconnect").await;
    }
    denied(api, &fx.bastion, &replay, deny_reason::CONNECTION_PROOF_REPLAYED).await;
    // A new connection of hers (a new session identifier) works as ever, and is worth
    // nothing past its session's deadline, even if that session is never closed.
    let next = alice.proof("pve01", "root");
    granted(api, &fx.bastion, &terminated_with(&session_id(), &alice, "pve01", "root", next.clone())).await;
    fx.clock.set(now + 1800 + 3601);
    let stale = terminated_with(&session_id(), &alice, "pve01", "root", next);
    denied(api, &fx.bastion, &stale, deny_reason::CONNECTION_PROOF_REPLAYED).await;

    // Every refusal is a `session_denied` naming its reason.
    let reasons: Vec<String> =
        audit(&fx.ca, "session_denied").await.iter().map(|r| r["reason"].as_str().unwrap().to_owned()).collect();
    let count = |r: &str| reasons.iter().filter(|x| *x == r).count();
    assert_eq!(
        (
            count(deny_reason::CONNECTION_PROOF_MISSING),
            count(deny_reason::CONNECTION_PROOF_INVALID),
            count(deny_reason::CONNECTION_PROOF_REPLAYED)
        ),
        (1, 6, 4),
        "{reasons:?}"
    );
    let denied_records = audit(&fx.ca, "session_denied").await;
    assert!(denied_records.iter().all(|r| r["phase"] == "credential"), "{denied_records:?}");
    // Nothing of a proof (identifier, request, signature) is in the audit trail.
    let trail = serde_json::to_string(&audit(&fx.ca, "session_opened").await).unwrap();
    assert!(!trail.contains(&real.signature) && !trail.contains(&real.session_id), "{trail}");
}

/// Proofs are forgotten once their certificates have expired, not once they are older
/// than the longest certificate the CA issues now: a replica started with a shorter
/// `max_cert_ttl` (an operator tightening it) still refuses the replay of a proof whose
/// 8-hour certificate, issued before, works for hours yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_certificate_lifetime_forgets_no_live_proof() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let alice = user_cert(&fx.ca, "alice").await;
    let real = alice.proof("pve01", "root");
    let first = session_id();
    granted(api, &fx.bastion, &terminated_with(&first, &alice, "pve01", "root", real.clone())).await;
    close(api, &fx.bastion, &first, "client_disconnect").await;
    let replay = terminated_with(&session_id(), &alice, "pve01", "root", real);
    denied(api, &fx.bastion, &replay, deny_reason::CONNECTION_PROOF_REPLAYED).await;

    let mut config =
        CaConfig::new(sqlite_url(fx._dir.path()), fx.policy_dir.clone(), SecretString::from(TEST_PASSPHRASE));
    config.default_agent = Some("local".to_owned());
    config.max_cert_ttl = Duration::from_secs(3600);
    let tightened = Arc::new(Ca::open(config, Arc::new(fx.clock.clone())).await.unwrap());
    let served = ServedCa::start(Arc::clone(&tightened)).await;
    fx.clock.set(fx.clock_now() + 2 * 3600);
    tightened.housekeeping().await.unwrap();
    denied(&served, &fx.bastion, &replay, deny_reason::CONNECTION_PROOF_REPLAYED).await;
    // Once the certificate has expired, its proof goes; a replay fails on the certificate.
    fx.clock.set(fx.clock_now() + 7 * 3600);
    tightened.housekeeping().await.unwrap();
    use sqlx::Row;
    let kept = sqlx::query("SELECT COUNT(*) AS n FROM connection_proofs").fetch_one(tightened.core().store().pool());
    assert_eq!(kept.await.unwrap().get::<i64, _>("n"), 0);
    denied(&served, &fx.bastion, &replay, deny_reason::CREDENTIAL_INVALID).await;
}

/// A bastion taken over cannot pass on a signature the user's security key made without
/// the touch her certificate asks for (a key made `-O no-touch-required` signing for
/// malware on her machine, say): the CA checks the key's flags as the node's sshd
/// would — including that a certificate carrying `no-touch-required` for one role (it
/// carries every role's extensions) waives the touch only where that role admits the
/// session, as the node's principals line does. Touched proofs are the positive control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_security_keys_proof_without_the_touch_its_certificate_asks_opens_nothing() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    // One key; `flags` are what its authenticator reports for a signature.
    let mut key = SoftSecurityKey::new(0);
    let (untouched, touched) = (0, SoftSecurityKey::TOUCH);
    let public_key = key.public_key().to_openssh().unwrap();
    let mut open = |flags: u8, cert_text: &str, device: &str| {
        key.flags = flags;
        let cert = ssh_key::Certificate::from_openssh(cert_text.trim()).unwrap();
        let connection = portcullis_sshcert::random_bytes::<32>();
        let user = terminated_user("root", device);
        let proof = connection_proof_signed(&|signed| key.sign(signed), &cert, &user, &connection);
        terminated_with(&session_id(), &Presented::of(cert_text), device, "root", Some(proof))
    };
    let text = issue_for(&fx.ca, "alice", &public_key).await;
    denied(api, &fx.bastion, &open(untouched, &text, "pve01"), deny_reason::CONNECTION_PROOF_INVALID).await;
    let denials = audit(&fx.ca, "session_denied").await;
    assert!(
        denials.iter().any(|r| r["reason"] == deny_reason::CONNECTION_PROOF_INVALID && r["user"] == "alice"),
        "{denials:?}"
    );
    assert!(granted(api, &fx.bastion, &open(touched, &text, "pve01")).await.session_certificate.is_some());

    // A role that waives the touch on the fleet: alice's new certificate carries
    // `no-touch-required`, which holds on a fleet node (the role admitting her there,
    // first by name, waives it) and not on pve01 (only `ops`, which does not).
    let quiet = "[[role]]\nname = \"fleet-quiet\"\nlogins = [\"root\"]\ntargets = 'in:devices tags.fleet:yes'\n\
                 permissions = [\"certs.issue\"]\nmax_cert_ttl = \"8h\"\nextensions = [\"no-touch-required\"]\n\
                 [[binding]]\ngroup = \"ops\"\nroles = [\"fleet-quiet\"]\n";
    std::fs::write(fx.policy_dir.join("policy.toml"), format!("{POLICY_BASE}{POLICY_CONTRACT}{quiet}")).unwrap();
    let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/policy/reload", &json!({})).await;
    assert!(status.is_success(), "{v}");
    let text = issue_for(&fx.ca, "alice", &public_key).await;
    assert!(inspect(&text).2.iter().any(|e| e == "no-touch-required"), "{:?}", inspect(&text));
    granted(api, &fx.bastion, &open(untouched, &text, "fleet-00")).await;
    denied(api, &fx.bastion, &open(untouched, &text, "pve01"), deny_reason::CONNECTION_PROOF_INVALID).await;
    granted(api, &fx.bastion, &open(touched, &text, "pve01")).await;
}

/// A role that asks for user verification (`verify-required`) in terminated mode: the
/// onward certificate cannot carry it to the node, so the CA holds the user's proof of
/// the connection against it — at open, and at every heartbeat against the confirmation
/// kept with the lease. The role gains the option after alice's certificate was issued
/// (so the certificate does not carry it and her proofs pass the certificate's own
/// check): a proof without the PIN opens nothing under it and its session ends at the
/// next heartbeat — also though another role of hers (`view`) would admit it: a live
/// session stays on the role it opened under (found in review); a proof with the PIN
/// opens and lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_asks_for_a_pin_admits_only_verified_proofs_at_open_and_at_every_heartbeat() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let view = "[[role]]\nname = \"view\"\nlogins = [\"root\"]\ntargets = 'in:devices name:pve01'\n\
                permissions = [\"certs.issue\"]\nmax_cert_ttl = \"8h\"\n\
                [[binding]]\ngroup = \"ops\"\nroles = [\"view\"]\n";
    let reload = async |text: String| {
        std::fs::write(fx.policy_dir.join("policy.toml"), text).unwrap();
        let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/policy/reload", &json!({})).await;
        assert!(status.is_success(), "{v}");
    };
    reload(format!("{POLICY_BASE}{POLICY_CONTRACT}{view}")).await;
    let mut key = SoftSecurityKey::new(0);
    let (touch, pin) = (SoftSecurityKey::TOUCH, SoftSecurityKey::VERIFIED);
    let text = issue_for(&fx.ca, "alice", &key.public_key().to_openssh().unwrap()).await;
    let mut open = |flags: u8, id: &str| {
        key.flags = flags;
        let cert = ssh_key::Certificate::from_openssh(text.trim()).unwrap();
        let connection = portcullis_sshcert::random_bytes::<32>();
        let proof =
            connection_proof_signed(&|signed| key.sign(signed), &cert, &terminated_user("root", "pve01"), &connection);
        terminated_with(id, &Presented::of(&text), "pve01", "root", Some(proof))
    };
    let (unverified, verified) = (session_id(), session_id());
    assert_eq!(granted(api, &fx.bastion, &open(touch, &unverified)).await.role, "ops");
    granted(api, &fx.bastion, &open(touch | pin, &verified)).await;
    assert!(heartbeat(api, &fx.bastion, &[&unverified, &verified], &[]).await.is_empty());

    let pin_role = format!("{POLICY_BASE}{POLICY_CONTRACT}{view}").replace(
        "extensions = [\"permit-pty\", \"permit-port-forwarding\"]\n",
        "extensions = [\"permit-pty\", \"permit-port-forwarding\"]\ncritical_options = { \"verify-required\" = \"\" }\n",
    );
    reload(pin_role.clone()).await;
    assert_eq!(
        heartbeat(api, &fx.bastion, &[&unverified, &verified], &[]).await,
        [(unverified.clone(), CloseReason::PolicyChanged)],
        "the session whose proof showed no PIN ends; the verified one lives on"
    );
    // A new session without the PIN runs under the role that does not ask for it; with
    // only the PIN role, it is refused.
    assert_eq!(granted(api, &fx.bastion, &open(touch, &session_id())).await.role, "view");
    reload(pin_role.replace(view, "")).await;
    denied(api, &fx.bastion, &open(touch, &session_id()), deny_reason::CONNECTION_PROOF_INVALID).await;
    let denials = audit(&fx.ca, "session_denied").await;
    assert!(
        denials.iter().any(|r| r["reason"] == deny_reason::CONNECTION_PROOF_INVALID && r["user"] == "alice"),
        "{denials:?}"
    );
    assert_eq!(granted(api, &fx.bastion, &open(touch | pin, &session_id())).await.role, "ops");
    // A certificate issued now carries the option, for the node's sshd in jump mode.
    let reissued = issue_for(&fx.ca, "alice", &key.public_key().to_openssh().unwrap()).await;
    let reissued = ssh_key::Certificate::from_openssh(reissued.trim()).unwrap();
    assert!(reissued.critical_options().contains_key("verify-required"), "{:?}", reissued.critical_options());
}

/// Step-up (issue 20): a rule with `fresh_auth_within` opens sessions only for a
/// certificate whose user signed in at most that long ago — the sign-in, not the
/// issuance: a new certificate from an old API session does not step up. In both modes;
/// the sessions a fresh sign-in opens record how old it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_up_rule_needs_a_recent_sign_in_not_just_a_new_certificate() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let stepped = format!("{POLICY_BASE}{POLICY_CONTRACT}")
        .replace("allowed_ports = [22, 2222]", "allowed_ports = [22, 2222]\nfresh_auth_within = \"10m\"");
    std::fs::write(fx.policy_dir.join("policy.toml"), stepped).unwrap();
    let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/policy/reload", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // Signed in just now: both modes open, and say how old the sign-in was.
    let login = fx.ca.identity().login_password("alice", None, &SecretString::from(PASSWORD), IP).await.unwrap();
    let token = login.token.expose().to_owned();
    let issue = |token: String| {
        let ca = Arc::clone(&fx.ca);
        async move {
            let caller = ca.identity().caller(&token).await.unwrap();
            let key = ed25519_key();
            let request = UserCertRequest { public_key: public_line(&key), ..Default::default() };
            let text = ca.issuance().issue(&caller, &request, IP).await.unwrap().certificate;
            let cert = ssh_key::Certificate::from_openssh(text.trim()).unwrap();
            Presented { holder: Some(Arc::new((key, cert))), ..Presented::of(&text) }
        }
    };
    let fresh = issue(token.clone()).await;
    granted(api, &fx.bastion, &terminated(&session_id(), &fresh, "pve01", "root")).await;
    granted(api, &fx.bastion, &jump(&session_id(), &fresh, "pve01", None)).await;
    let opened = audit(&fx.ca, "session_opened").await;
    assert!(opened.iter().all(|r| r["auth_age_secs"] == 0), "{opened:?}");

    // Eleven minutes on: that certificate is refused in both modes, and so is a new one
    // issued from the same (old) API session.
    fx.clock.set(fx.clock_now() + 11 * 60);
    denied(api, &fx.bastion, &terminated(&session_id(), &fresh, "pve01", "root"), deny_reason::FRESH_AUTH_REQUIRED)
        .await;
    denied(api, &fx.bastion, &jump(&session_id(), &fresh, "pve01", None), deny_reason::FRESH_AUTH_REQUIRED).await;
    let reissued = issue(token).await;
    let (status, v) = open(api, &fx.bastion, &terminated(&session_id(), &reissued, "pve01", "root")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("portcullis login --fresh"),
        "the refusal says how to step up: {v}"
    );
    // Signing in again steps up.
    let again = user_cert(&fx.ca, "alice").await;
    granted(api, &fx.bastion, &terminated(&session_id(), &again, "pve01", "root")).await;
    // A certificate row that does not say when its user signed in (written before step-up,
    // or by a replica older than it) is never fresh — not as fresh as its issue time.
    let unknown = user_cert(&fx.ca, "alice").await;
    on_certificate_row(&fx, "UPDATE certificates SET authenticated_at = NULL WHERE serial = $1", &unknown).await;
    denied(api, &fx.bastion, &terminated(&session_id(), &unknown, "pve01", "root"), deny_reason::FRESH_AUTH_REQUIRED)
        .await;
    let refused: Vec<Value> =
        audit(&fx.ca, "session_denied").await.into_iter().filter(|r| r["reason"] == "fresh_auth_required").collect();
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert!(refused.iter().all(|r| r["phase"] == "credential" && r["user"] == "alice"), "{refused:?}");
}
