//! Console tickets: each check with its control, step-up, rate limits, single redemption (also raced), and the session that asked.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ticket_check_refuses_with_its_positive_control() {
    let fx = fixture().await;
    let alice = bearer(&fx.ca, "alice").await;
    let carol = bearer(&fx.ca, "carol").await;
    let dave = bearer(&fx.ca, "dave").await;

    // RBAC: devices.console.open.
    refused(&fx, &carol, &ticket_body("pve01", "root"), "missing_permission", "missing_permission").await;
    ticket(&fx, &alice, "pve01", "root").await;

    // Unsupported modes: an explicit 400, audited.
    for mode in ["termproxy", "vncwebsocket"] {
        let (status, v) = ask(&fx, &alice, &json!({"device": "pve01", "login": "root", "mode": mode})).await;
        assert_eq!((status, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("unsupported_console_mode")), "{v}");
        let last = audit(&fx.ca, "console_ticket_denied").await.pop().unwrap();
        assert_eq!((last["reason"].as_str(), last["mode"].as_str()), (Some("unsupported_mode"), Some(mode)));
    }
    let (status, v) = ask(&fx, &alice, &json!({"device": "pve01", "login": "root", "mode": "ssh"})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // An unknown mode is not a mode: 400 before anything else.
    let (status, _) = ask(&fx, &alice, &json!({"device": "pve01", "login": "root", "mode": "rdp"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Unknown device: told like an out-of-scope one (no probing), audited as unknown.
    let unknown = refused(&fx, &alice, &ticket_body("nope01", "root"), "out_of_scope", "unknown_device").await;
    // No console_access rule targets prod01 (a device alice's prod-console role lets her see).
    let no_rule = refused(&fx, &alice, &ticket_body("prod01", "root"), "rule_mismatch", "rule_mismatch").await;
    assert!(no_rule.contains("no console_access rule targets it"), "{no_rule}");
    // A rule targets lab09, but its scope does not hold lab09's agent: the seed's words.
    let scope = refused(&fx, &alice, &ticket_body("lab09", "root"), "out_of_scope", "out_of_scope").await;
    assert!(scope.contains("no scoped console rule matched this device"), "{scope}");
    // A rule holds dev01, but no console role of alice's targets it: exactly what an
    // unknown device says, so the device list cannot be probed.
    let hidden = refused(&fx, &alice, &ticket_body("dev01", "root"), "out_of_scope", "out_of_scope").await;
    assert_eq!(hidden, unknown);
    // Control for all three: pve02 through edge1.
    ticket(&fx, &alice, "pve02", "root").await;

    // A login no role grants; a login a deny statement removes.
    refused(&fx, &alice, &ticket_body("pve01", "admin"), "not_authorized", "not_authorized").await;
    refused(&fx, &dave, &ticket_body("pve01", "deploy"), "not_authorized", "not_authorized").await;
    ticket(&fx, &dave, "pve01", "root").await;
    ticket(&fx, &alice, "pve01", "deploy").await;

    // Malformed requests: 400.
    for body in [
        json!({"device": "a b", "login": "root"}),
        json!({"device": "pve01", "login": "Root"}),
        json!({"device": "pve01"}),
    ] {
        let (status, v) = ask(&fx, &alice, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
    }

    // Every request and grant is audited, with what it was bound to.
    let granted = audit(&fx.ca, "console_ticket_granted").await;
    assert_eq!(granted.len(), 5);
    let g = &granted[1];
    assert_eq!((g["user"].as_str(), g["device"].as_str()), (Some("alice"), Some("pve01")));
    assert_eq!(
        (g["agent"].as_str(), g["rule"].as_str(), g["login"].as_str()),
        (Some("local"), Some("lab-console"), Some("root"))
    );
    let requested = audit(&fx.ca, "console_ticket_requested").await;
    assert_eq!(requested.len(), 5 + 2 + 4 + 2 + 1, "{requested:?}");
}

/// Step-up on the console path (issue 20): a `console_access` rule with
/// `fresh_auth_within` grants tickets only to an API session signed in at most that long
/// ago; the refusal is audited and says what to do; a new sign-in steps up, and the
/// granted ticket records how old the sign-in was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_up_console_rule_needs_a_recent_sign_in() {
    let fx = fixture().await;
    let stepped = POLICY.replace(
        "name = \"lab-console\"\npurpose = \"console_access\"",
        "name = \"lab-console\"\npurpose = \"console_access\"\nfresh_auth_within = \"10m\"",
    );
    assert_ne!(stepped, POLICY);
    std::fs::write(fx.policy_dir.join("policy.toml"), stepped).unwrap();
    let admin = fx.ca.identity().caller(&fx.admin).await.unwrap();
    fx.ca.admin().reload_policy(&fx.ca.core().authorize::<proof::PolicyManage>(&admin).unwrap()).await.unwrap();

    let alice = bearer(&fx.ca, "alice").await;
    ticket(&fx, &alice, "pve01", "root").await;
    fx.clock.set(fx.ca.core().now() + 11 * 60);
    let message =
        refused(&fx, &alice, &ticket_body("pve01", "root"), "fresh_auth_required", "fresh_auth_required").await;
    assert!(message.contains("sign in again"), "{message}");
    // A new sign-in steps up.
    let again = bearer(&fx.ca, "alice").await;
    let fresh = ticket(&fx, &again, "pve01", "root").await;
    let (status, v) = redeem(&fx, &fresh, &session_id()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let granted: Vec<Value> = audit(&fx.ca, "console_ticket_granted").await;
    let ages: Vec<Option<u64>> = granted.iter().map(|r| r["auth_age_secs"].as_u64()).collect();
    assert_eq!(ages, vec![Some(0), Some(0)], "{granted:?}");
    let opened = audit(&fx.ca, "session_opened").await;
    assert_eq!(opened.last().unwrap()["auth_age_secs"], 0, "{opened:?}");
    // A ticket asked for just inside the ten minutes and redeemed just after them: the
    // redemption checks the sign-in's age again (a ticket lives a minute).
    fx.clock.set(fx.ca.core().now() + 9 * 60 + 30);
    let late = ticket(&fx, &again, "pve01", "root").await;
    fx.clock.set(fx.ca.core().now() + 50);
    redeem_denied(&fx, &late, "fresh_auth_required").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_requests_are_rate_limited_per_user() {
    let fx = fixture().await;
    let alice = bearer(&fx.ca, "alice").await;
    for _ in 0..20 {
        ticket(&fx, &alice, "pve01", "root").await;
    }
    let (status, v) = ask(&fx, &alice, &ticket_body("pve01", "root")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(audit(&fx.ca, "console_ticket_denied").await.pop().unwrap()["reason"], "rate_limited");
    // Another user is not affected; alice again after the window.
    ticket(&fx, &bearer(&fx.ca, "bob").await, "pve01", "root").await;
    fx.clock.set(fx.ca.core().now() + 61);
    ticket(&fx, &alice, "pve01", "root").await;
}

/// A ticket that lapsed unused is on record even when no bastion heartbeat came while
/// it was kept: tickets are deleted ten minutes after their expiry, and one that lapsed
/// while every bastion was down went without its `console_ticket_lapsed` (found in
/// review, 2026-12-06). Housekeeping records lapses too, and only recorded ones go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_that_lapsed_while_no_bastion_beat_is_still_recorded() {
    let fx = fixture().await;
    let alice = bearer(&fx.ca, "alice").await;
    ticket(&fx, &alice, "pve01", "root").await;
    fx.clock.set(fx.ca.core().now() + TICKET_TTL_SECS + 700);
    // Asking for a ticket deletes the old ones.
    ticket(&fx, &alice, "pve01", "root").await;
    fx.ca.housekeeping().await.unwrap();
    let lapsed = audit(&fx.ca, "console_ticket_lapsed").await;
    assert_eq!(lapsed.len(), 1, "{lapsed:?}");

    // One presented after its minute has its `console_ticket_expired` record, and no
    // second one for its lapse.
    let late = ticket(&fx, &alice, "pve01", "root").await;
    fx.clock.set(fx.ca.core().now() + TICKET_TTL_SECS + 1);
    let (status, v) = redeem(&fx, &late, &session_id()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    fx.ca.housekeeping().await.unwrap();
    assert_eq!(audit(&fx.ca, "console_ticket_expired").await.len(), 1);
    let lapsed = audit(&fx.ca, "console_ticket_lapsed").await;
    assert_eq!(lapsed.len(), 2, "the first two lapsed; the presented one has its record already: {lapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_redeem_once_within_their_minute() {
    tickets_redeem_once(&fixture().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_redeem_once_within_their_minute_on_postgres() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    let fx = fixture_on(Some(&pg.url()), 1).await;
    assert_eq!(fx.ca.core().store().backend(), portcullis_ca::store::Backend::Postgres);
    tickets_redeem_once(&fx).await;
}

/// Ticket states in manual time: valid → redeemed; reused; expired; unknown.
async fn tickets_redeem_once(fx: &Fx) {
    let alice = bearer(&fx.ca, "alice").await;

    // Valid → redeemed: a console session with a per-session certificate.
    let t = ticket(fx, &alice, "pve01", "root").await;
    let id = session_id();
    let (status, v) = redeem(fx, &t, &id).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let grant: SessionGrant = serde_json::from_value(v).unwrap();
    assert_eq!((grant.username.as_str(), grant.device.as_str(), grant.agent.as_str()), ("alice", "pve01", "local"));
    assert_eq!(
        (grant.rule.as_str(), grant.role.as_str(), grant.login.as_deref()),
        ("lab-console", "ops", Some("root"))
    );
    assert_eq!((grant.target_host.as_str(), grant.target_port), ("10.0.0.5", 22));
    assert!(grant.session_certificate.as_deref().unwrap().starts_with("ssh-ed25519-cert-v01@openssh.com "));
    // The console's credential lives as long as the API session that asked for it.
    let caller = fx.ca.identity().caller(&alice).await.unwrap();
    assert_eq!(grant.cert_valid_before, caller.expires_at);
    let opened = audit(&fx.ca, "session_opened").await.pop().unwrap();
    assert_eq!((opened["mode"].as_str(), opened["session_id"].as_str()), (Some("console"), Some(id.as_str())));
    assert!(opened.get("cert_serial").is_none(), "a ticket session names no user certificate: {opened}");
    assert!(opened["session_cert_serial"].is_string());
    // The seed's "user session ID": the sign-in, the ticket and the console session it
    // opened name the same API session — by a reference that is not the token.
    let signed_in = audit(&fx.ca, "login_succeeded").await.pop().unwrap();
    let user_session = signed_in["user_session"].as_str().unwrap().to_owned();
    assert_eq!(user_session.len(), 16, "{signed_in}");
    assert!(!alice.contains(&user_session) && fx.ca.core().store().session(&user_session, 0).await.unwrap().is_none());
    for event in ["console_ticket_requested", "console_ticket_granted"] {
        let rec = audit(&fx.ca, event).await.pop().unwrap();
        assert_eq!(rec["user_session"], user_session.as_str(), "{event}: {rec}");
    }
    assert_eq!(opened["user_session"], user_session.as_str(), "{opened}");
    let leases = fx.ca.core().store().leases().await.unwrap();
    assert_eq!((leases.len(), leases[0].mode.as_str()), (1, "console"));

    // Second redemption (another session id): refused before any credential is
    // resolved — no certificate signed, no lease taken.
    let (certs, held) = (count(&fx.ca, "certificates").await, count(&fx.ca, "session_leases").await);
    redeem_denied(fx, &t, "ticket_reused").await;
    // The same session id again: still reused (not a conflict, nothing new).
    let (status, v) = redeem(fx, &t, &id).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert_eq!((count(&fx.ca, "certificates").await, count(&fx.ca, "session_leases").await), (certs, held));
    let reused = audit(&fx.ca, "console_ticket_reused").await;
    assert_eq!(reused.len(), 2);
    assert_eq!((reused[0]["user"].as_str(), reused[0]["device"].as_str()), (Some("alice"), Some("pve01")));

    // Expiry in manual time: valid at 59 s, expired at 60 s and 61 s.
    let t59 = ticket(fx, &alice, "pve01", "root").await;
    let t61 = ticket(fx, &alice, "pve01", "root").await;
    let _never_presented = ticket(fx, &alice, "pve01", "root").await;
    let issued = fx.ca.core().now();
    fx.clock.set(issued + TICKET_TTL_SECS - 1);
    let (status, v) = redeem(fx, &t59, &session_id()).await;
    assert_eq!(status, StatusCode::OK, "a 59 s old ticket is valid: {v}");
    fx.clock.set(issued + 61);
    let (certs, held) = (count(&fx.ca, "certificates").await, count(&fx.ca, "session_leases").await);
    redeem_denied(fx, &t61, "ticket_expired").await;
    assert_eq!((count(&fx.ca, "certificates").await, count(&fx.ca, "session_leases").await), (certs, held));
    let expired = audit(&fx.ca, "console_ticket_expired").await;
    assert_eq!((expired.len(), expired[0]["user"].as_str()), (1, Some("alice")));
    // An expired ticket stays expired (it was never consumed).
    redeem_denied(fx, &t61, "ticket_expired").await;
    // Heartbeats audit a ticket that lapsed unused, once (the seed's "ticket expired");
    // the redeemed ones never lapse, and the expired one presented has its record.
    assert!(audit(&fx.ca, "console_ticket_lapsed").await.is_empty());
    heartbeat(fx, &[]).await;
    heartbeat(fx, &[]).await;
    let lapsed = audit(&fx.ca, "console_ticket_lapsed").await;
    assert_eq!(lapsed.len(), 1, "{lapsed:?}");
    assert_eq!((lapsed[0]["user"].as_str(), lapsed[0]["device"].as_str()), (Some("alice"), Some("pve01")));
    assert_eq!(lapsed[0]["expires_at"].as_u64(), Some(issued + TICKET_TTL_SECS));
    // (Those heartbeats listed no session: the 59 s ticket's lease went as lease_lost.)
    let (certs, held) = (count(&fx.ca, "certificates").await, count(&fx.ca, "session_leases").await);

    // Unknown and malformed tickets.
    let unknown = format!("pct_{}", "A".repeat(43));
    for bogus in [unknown.as_str(), "pct_short", "not-a-ticket", ""] {
        redeem_denied(fx, bogus, "ticket_invalid").await;
    }
    // Junk from one address: the first is recorded (with its failure phase), the rest
    // counted into the window's `refusals_summarized`.
    let denied = audit(&fx.ca, "session_denied").await;
    let junk: Vec<&Value> = denied.iter().filter(|d| d["reason"] == "ticket_invalid").collect();
    assert_eq!(junk.len(), 1, "{junk:?}");
    assert_eq!(junk[0]["phase"], "ticket");
    assert_eq!((count(&fx.ca, "certificates").await, count(&fx.ca, "session_leases").await), (certs, held));

    // Only a bastion redeems: a user's session or no credential cannot.
    let t = ticket(fx, &alice, "pve01", "root").await;
    let (status, _) =
        fx.api.post_json(Some(&alice), "/v1/bastion/console/open", &open_body(fx, &t, &session_id())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = fx.api.post_json(None, "/v1/bastion/console/open", &open_body(fx, &t, &session_id())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // …and the ticket is still good for the bastion afterwards.
    let (status, v) = redeem(fx, &t, &session_id()).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // A ticket is never used up without a trace: this one is redeemed, then its session
    // cannot open (the bastion named a session id that is taken). The redemption is on
    // record with the redemption itself; before, nothing said the ticket was gone, and
    // its retry read as a replay.
    let live = session_id();
    let (status, v) = redeem(fx, &ticket(fx, &alice, "pve01", "root").await, &live).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let before = audit(&fx.ca, "console_ticket_redeemed").await;
    assert!(before.iter().any(|r| r["session_id"] == live.as_str()), "the redemption: {before:?}");
    let taken = ticket(fx, &alice, "pve01", "root").await;
    let (status, v) = redeem(fx, &taken, &live).await;
    assert!(!status.is_success(), "{v}");
    let after = audit(&fx.ca, "console_ticket_redeemed").await;
    assert_eq!(after.len(), before.len() + 1, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redemption_runs_admission_for_the_tickets_identity() {
    let fx = fixture().await;
    let alice = bearer(&fx.ca, "alice").await;
    let admin = fx.ca.identity().caller(&fx.admin).await.unwrap();

    // The user is disabled between ticket and redemption: refused, nothing signed.
    let bob = bearer(&fx.ca, "bob").await;
    let t = ticket(&fx, &bob, "pve01", "root").await;
    let users = fx.ca.core().authorize::<proof::UsersManage>(&admin).unwrap();
    fx.ca.admin().set_user_disabled(&users, "bob", true).await.unwrap();
    let certs = count(&fx.ca, "certificates").await;
    redeem_denied(&fx, &t, "credential_invalid").await;
    assert_eq!(count(&fx.ca, "certificates").await, certs);
    fx.ca.admin().set_user_disabled(&users, "bob", false).await.unwrap();

    // Signed out between ticket and redemption: refused.
    let signed_out = bearer(&fx.ca, "alice").await;
    let t = ticket(&fx, &signed_out, "pve01", "root").await;
    let (status, _) = fx.api.post_json(Some(&signed_out), "/v1/auth/logout", &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    redeem_denied(&fx, &t, "credential_invalid").await;
    assert_eq!(count(&fx.ca, "certificates").await, certs);

    // The device moves to another agent after the ticket: the ticket's route is gone.
    let t = ticket(&fx, &alice, "pve02", "root").await;
    let nodes = fx.ca.core().authorize::<proof::NodesManage>(&admin).unwrap();
    let update = portcullis_proto::NodeUpdate { agent: Some("local".to_owned()), ..Default::default() };
    fx.ca.nodes().update_node(&nodes, "pve02", &update).await.unwrap();
    redeem_denied(&fx, &t, "rule_mismatch").await;
    // Control: a ticket asked now carries the new route and is admitted.
    let t = ticket(&fx, &alice, "pve02", "root").await;
    let (status, v) = redeem(&fx, &t, &session_id()).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // Caps hold for console sessions too (ops: 5 per user; one is open).
    for _ in 0..4 {
        let t = ticket(&fx, &alice, "pve01", "root").await;
        let (status, v) = redeem(&fx, &t, &session_id()).await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    let t = ticket(&fx, &alice, "pve01", "root").await;
    redeem_denied(&fx, &t, "cap_reached").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_redemptions_admit_exactly_one_on_sqlite() {
    racing_redemptions(&fixture().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_redemptions_admit_exactly_one_on_postgres_with_two_replicas() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    racing_redemptions(&fixture_on(Some(&pg.url()), 2).await).await;
}

/// A ticket is worth nothing without the browser session that asked for it: presented
/// with no session cookie, with another user's, or with another session of the same
/// user, it is refused like an unknown ticket and audited as
/// `console_ticket_wrong_session`; its owner can still redeem it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_opens_only_for_the_session_that_asked_for_it() {
    let fx = fixture().await;
    let alice = bearer(&fx.ca, "alice").await;
    let t = ticket(&fx, &alice, "pve01", "root").await;
    let strangers = [
        None,
        Some(session_binding(&bearer(&fx.ca, "bob").await)),
        Some(session_binding(&bearer(&fx.ca, "alice").await)),
    ];
    for binding in &strangers {
        let mut body = open_body(&fx, &t, &session_id());
        body["browser_session"] = json!(binding);
        let (status, v) = fx.api.post_json(Some(&fx.bastion), "/v1/bastion/console/open", &body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{binding:?}: {v}");
        assert!(v["message"].as_str().unwrap().starts_with("ticket_invalid: "), "{v}");
    }
    let wrong = audit(&fx.ca, "console_ticket_wrong_session").await;
    assert_eq!(wrong.len(), strangers.len(), "{wrong:?}");
    assert_eq!((wrong[0]["user"].as_str(), wrong[0]["device"].as_str()), (Some("alice"), Some("pve01")));
    assert_eq!(count(&fx.ca, "session_leases").await, 0);

    let (status, v) = redeem(&fx, &t, &session_id()).await;
    assert_eq!(status, StatusCode::OK, "the owner's redemption: {v}");
    redeem_denied(&fx, &t, "ticket_reused").await;
}

/// 20 bastion requests redeem one ticket at once (spread over the replicas): exactly
/// one session, one session certificate, one lease; the others are `ticket_reused`.
async fn racing_redemptions(fx: &Fx) {
    let alice = bearer(&fx.ca, "alice").await;
    for round in 0..3 {
        let t = ticket(fx, &alice, "pve01", "root").await;
        let (certs, leases) = (count(&fx.ca, "certificates").await, count(&fx.ca, "session_leases").await);
        let apis: Vec<&ServedCa> = std::iter::once(&fx.api).chain(fx.replicas.iter()).collect();
        let attempts = (0..20).map(|i| {
            let api = apis[i % apis.len()];
            let body = open_body(fx, &t, &session_id());
            let bastion = fx.bastion.clone();
            async move { api.post_json(Some(&bastion), "/v1/bastion/console/open", &body).await }
        });
        let results = futures_join_all(attempts).await;
        let ok = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
        let reused = results
            .iter()
            .filter(|(s, v)| {
                *s == StatusCode::FORBIDDEN && v["message"].as_str().unwrap().starts_with("ticket_reused: ")
            })
            .count();
        assert_eq!((ok, reused), (1, 19), "round {round}: {results:?}");
        assert_eq!(count(&fx.ca, "certificates").await, certs + 1);
        assert_eq!(count(&fx.ca, "session_leases").await, leases + 1);
    }
}

/// Polls the futures concurrently (their requests are in flight together) and returns
/// their outputs in order.
async fn futures_join_all<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let futures: Vec<F> = futures.collect();
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<T>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => done[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    done.into_iter().map(Option::unwrap).collect()
}

/// A console asked for under an identity provider's sign-in that stated no groups: once
/// a deny names groups, a ticket asked for before is refused at redemption and a live
/// console of that sign-in ends at the next heartbeat (the API session itself is refused
/// at its next request, `oidc::device`). The API session is planted as `identity::oidc`
/// writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_of_a_sign_in_of_unknown_groups_stops_when_a_group_deny_appears() {
    let fx = fixture().await;
    let deny_start = POLICY.find("[[deny]]").unwrap();
    let deny_end = deny_start + POLICY[deny_start..].find("[[rule]]").unwrap();
    let without_deny = format!("{}{}", &POLICY[..deny_start], &POLICY[deny_end..]);
    let dana = "\n[[binding]]\nuser = \"oidc:dana\"\nroles = [\"ops\"]\n";
    let reload = async |text: String| {
        std::fs::write(fx.policy_dir.join("policy.toml"), text).unwrap();
        let (status, v) = fx.api.post_json(Some(&fx.admin), "/v1/admin/policy/reload", &json!({})).await;
        assert_eq!(status, StatusCode::OK, "{v}");
    };
    reload(format!("{without_deny}{dana}")).await;
    let token = "pcs_dana-console-session-of-unknown-groups";
    let session = portcullis_ca::store::SessionRow {
        username: "oidc:dana".into(),
        source: "oidc".into(),
        groups: Vec::new(),
        expires_at: fx.ca.core().now() + 3600,
        authenticated_at: fx.ca.core().now(),
        groups_unknown: true,
    };
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token));
    let mut tx = fx.ca.core().store().begin().await.unwrap();
    portcullis_ca::store::insert_session(tx.conn(), &hash, &session, fx.ca.core().now()).await.unwrap();
    tx.commit().await.unwrap();
    let live = session_id();
    let (status, v) = redeem(&fx, &ticket(&fx, token, "pve01", "root").await, &live).await;
    assert_eq!(status, StatusCode::OK, "no deny names a group yet: {v}");
    let waiting = ticket(&fx, token, "pve01", "root").await;
    assert!(heartbeat(&fx, &[&live]).await.is_empty());

    reload(format!("{POLICY}{dana}")).await;
    assert_eq!(heartbeat(&fx, &[&live]).await, vec![(live.clone(), CloseReason::PolicyChanged)]);
    redeem_denied(&fx, &waiting, "credential_invalid").await;
}
