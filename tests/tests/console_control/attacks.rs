//! From the attacker's side: a bastion minting tickets or reusing certificates, cross-site requests, secrets in records and logs.

use super::*;

/// A bastion — even one taken over — cannot mint a console ticket: its own credential is
/// not a user's session (alone, or dressed as a forwarded browser request), and a ticket
/// it makes up, or one asked for by another browser session, opens nothing. Only a
/// browser's own sign-in asks for tickets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bastion_cannot_mint_a_console_ticket() {
    use portcullis_proto::console::{FORWARDED_BY_HEADER, FORWARDED_FOR_HEADER};
    let fx = fixture().await;
    let body = ticket_body("pve01", "root");
    // Its bearer credential on the user's route.
    let (status, v) = ask(&fx, &fx.bastion, &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    // The same, dressed as a browser's request passed on by the web front door.
    let resp = fx
        .http
        .post(format!("{}/v1/console/tickets", fx.api.url))
        .header(FORWARDED_BY_HEADER, &fx.bastion)
        .header(FORWARDED_FOR_HEADER, IP)
        .bearer_auth(&fx.bastion)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // With its credential as the session cookie.
    let (status, v, _) =
        with_cookie(&fx, reqwest::Method::POST, "/v1/console/tickets", &fx.bastion, None, Some(&body)).await;
    assert!(matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN), "{status}: {v}");
    assert!(audit(&fx.ca, "console_ticket_granted").await.is_empty());
    // A made-up ticket of the right shape opens nothing.
    let forged = format!("pct_{}", "A".repeat(43));
    redeem_denied(&fx, &forged, "ticket_invalid").await;
    // A real ticket, redeemed as if for another browser session: refused, and still good
    // for the browser that asked for it.
    let alice = bearer(&fx.ca, "alice").await;
    let real = ticket(&fx, &alice, "pve01", "root").await;
    let mut other = open_body(&fx, &real, &session_id());
    other["browser_session"] = json!(session_binding("pcs_some-other-browser"));
    let (status, v) = fx.api.post_json(Some(&fx.bastion), "/v1/bastion/console/open", &other).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert!(fx.ca.core().store().leases().await.unwrap().is_empty(), "no session was opened");
    let (status, v) = redeem(&fx, &real, &session_id()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

/// A bastion taken over has seen users' certificates (they are not secrets). Alice's
/// roles let her open consoles on pve01 as root, and a console session gets an onward
/// certificate: asked for with her certificate instead of a ticket, on the route for
/// SSH sessions, it must get none — else the bastion could mint root on every console
/// she may open, whenever it likes. Refused, audited, nothing leased or signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bastion_cannot_open_a_console_with_a_certificate_it_has_seen() {
    let fx = fixture().await;
    let token = bearer(&fx.ca, "alice").await;
    let caller = fx.ca.identity().caller(&token).await.unwrap();
    let request = UserCertRequest { public_key: public_line(&ed25519_key()), ..Default::default() };
    let issued = fx.ca.issuance().issue(&caller, &request, IP).await.unwrap().certificate;
    let cert = ssh_key::Certificate::from_openssh(issued.trim()).unwrap();
    let digest = portcullis_sshcert::certificate_digest(&cert).unwrap();
    let signed_before = count(&fx.ca, "certificates").await;
    let body = json!({
        "session_id": session_id(), "mode": "console", "cert_serial": cert.serial().to_string(),
        "certificate_digest": digest, "login": "root", "device": "pve01", "client_ip": IP,
        "session_public_key": public_line(&ed25519_key()),
    });
    let (status, v) = fx.api.post_json(Some(&fx.bastion), "/v1/bastion/sessions/open", &body).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert!(v["message"].as_str().unwrap().starts_with(deny_reason::CONNECTION_PROOF_MISSING), "{v}");
    assert!(v.get("session_certificate").is_none(), "{v}");
    assert!(fx.ca.core().store().leases().await.unwrap().is_empty(), "no session was opened");
    assert_eq!(count(&fx.ca, "certificates").await, signed_before, "nothing was signed");
    let denied = audit(&fx.ca, "session_denied").await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(
        (denied[0]["reason"].as_str(), denied[0]["user"].as_str()),
        (Some("connection_proof_missing"), Some("alice"))
    );
    // Her browser's ticket still opens the console.
    let real = ticket(&fx, &token, "pve01", "root").await;
    let (status, v) = redeem(&fx, &real, &session_id()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["session_certificate"].is_string(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_guards_cookie_sessions_and_not_bearer_ones() {
    let fx = fixture().await;
    let (alice, alice_csrf, set_cookie, body) = browser_login(&fx, "alice").await;
    let (_bob, bob_csrf, _, _) = browser_login(&fx, "bob").await;
    let post = reqwest::Method::POST;
    let tickets = "/v1/console/tickets";
    let req = ticket_body("pve01", "root");

    // Browser sign-in: the cookie's flags, and the token never in the body.
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.split("; ").any(|a| a == flag), "{flag} missing: {set_cookie}");
    }
    assert!(alice.starts_with("pcs_"));
    // A cookie a sibling subdomain can set (`Domain=example.com`, no `__Host-` prefix) is
    // not read: planted, it signed a victim in as the attacker (login CSRF). Only the
    // `__Host-` name — which browsers take from this origin alone — is.
    assert!(set_cookie.starts_with("__Host-") && !set_cookie.contains("Domain="), "{set_cookie}");
    let planted = fx
        .http
        .get(format!("{}/v1/auth/whoami", fx.api.url))
        .header("cookie", format!("portcullis_session={alice}"))
        .send()
        .await
        .unwrap();
    assert_eq!(planted.status(), StatusCode::UNAUTHORIZED, "a cookie without the __Host- prefix was read");
    assert_eq!(body["username"], "alice");
    assert!(body.get("token").is_none() && !body.to_string().contains(&alice), "{body}");
    assert_eq!(alice_csrf, portcullis_ca::csrf_token_for(&alice));
    // A wrong password: 401 and no cookie.
    let resp = fx
        .http
        .post(format!("{}/v1/auth/browser-login", fx.api.url))
        .json(&json!({"username": "alice", "password": "wrong-password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get("set-cookie").is_none());

    // The UI can fetch the token for its session.
    let (status, v, headers) = with_cookie(&fx, reqwest::Method::GET, "/v1/auth/csrf", &alice, None, None).await;
    assert_eq!((status, v["csrf_token"].as_str()), (StatusCode::OK, Some(alice_csrf.as_str())));
    assert_eq!(headers.get("cache-control").unwrap(), "no-store");

    // A cross-site-style request: the cookie comes along, the header cannot. Refused.
    let (status, v, _) = with_cookie(&fx, post.clone(), tickets, &alice, None, Some(&req)).await;
    assert_eq!((status, v["error"].as_str()), (StatusCode::FORBIDDEN, Some("csrf")), "{v}");
    assert_eq!(v["message"], "missing or invalid CSRF token");
    // Another session's token, or garbage: refused.
    for wrong in [bob_csrf.as_str(), "x", ""] {
        let (status, v, _) = with_cookie(&fx, post.clone(), tickets, &alice, Some(wrong), Some(&req)).await;
        assert_eq!((status, v["error"].as_str()), (StatusCode::FORBIDDEN, Some("csrf")), "{wrong:?}: {v}");
    }
    // Nothing was asked for: the CSRF check comes before the handler.
    assert!(audit(&fx.ca, "console_ticket_requested").await.is_empty());
    // With the session's own token: accepted.
    let (status, v, _) = with_cookie(&fx, post.clone(), tickets, &alice, Some(&alice_csrf), Some(&req)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["ticket"].as_str().unwrap().starts_with("pct_"));
    // Every state-changing route behind the cookie is covered (admin ones too).
    let (admin_session, admin_csrf, _, _) = browser_login_admin(&fx).await;
    let (status, v, _) = with_cookie(
        &fx,
        reqwest::Method::PUT,
        "/v1/admin/users/bob/groups",
        &admin_session,
        None,
        Some(&json!({"groups": ["ops"]})),
    )
    .await;
    assert_eq!((status, v["error"].as_str()), (StatusCode::FORBIDDEN, Some("csrf")), "{v}");
    let (status, v, _) = with_cookie(
        &fx,
        reqwest::Method::PUT,
        "/v1/admin/users/bob/groups",
        &admin_session,
        Some(&admin_csrf),
        Some(&json!({"groups": ["ops"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // Bearer sessions are unaffected (never sent implicitly by a browser).
    let bearer_alice = bearer(&fx.ca, "alice").await;
    let (status, v) = ask(&fx, &bearer_alice, &req).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // Logout: CSRF applies; then the server-side session is revoked and the cookie cleared.
    let (status, v, _) = with_cookie(&fx, post.clone(), "/v1/auth/logout", &alice, None, None).await;
    assert_eq!((status, v["error"].as_str()), (StatusCode::FORBIDDEN, Some("csrf")), "{v}");
    let (status, _, _) = with_cookie(&fx, reqwest::Method::GET, "/v1/auth/whoami", &alice, None, None).await;
    assert_eq!(status, StatusCode::OK, "a refused logout must not log out");
    let (status, v, headers) = with_cookie(&fx, post.clone(), "/v1/auth/logout", &alice, Some(&alice_csrf), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let cleared = headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(cleared.starts_with("__Host-portcullis_session=;") && cleared.contains("Max-Age=0"), "{cleared}");
    let (status, _, _) = with_cookie(&fx, reqwest::Method::GET, "/v1/auth/whoami", &alice, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = with_cookie(&fx, post, tickets, &alice, Some(&alice_csrf), Some(&req)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(fx.ca.identity().caller(&alice).await.is_err());
    assert_eq!(audit(&fx.ca, "logout").await.last().unwrap()["username"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_audit_records_or_log_lines() {
    let fx = fixture().await;
    let mut secrets = vec![PASSWORD.to_owned()];
    let (session, csrf, _, _) = browser_login(&fx, "alice").await;
    secrets.extend([session.clone(), csrf.clone()]);
    let (status, v, _) = with_cookie(
        &fx,
        reqwest::Method::POST,
        "/v1/console/tickets",
        &session,
        Some(&csrf),
        Some(&ticket_body("pve01", "root")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let used = v["ticket"].as_str().unwrap().to_owned();
    fx.asked_by(&used, &session);
    let (status, v) = redeem(&fx, &used, &session_id()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    redeem_denied(&fx, &used, "ticket_reused").await;
    let alice = bearer(&fx.ca, "alice").await;
    let late = ticket(&fx, &alice, "pve01", "root").await;
    fx.clock.set(fx.ca.core().now() + 61);
    redeem_denied(&fx, &late, "ticket_expired").await;
    let (status, _, _) = with_cookie(
        &fx,
        reqwest::Method::POST,
        "/v1/console/tickets",
        &session,
        None,
        Some(&ticket_body("pve01", "root")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let wrong = format!("pct_{}", "B".repeat(43));
    redeem_denied(&fx, &wrong, "ticket_invalid").await;
    for t in [&used, &late, &wrong] {
        secrets.push(t.clone());
        secrets.push(t.trim_start_matches("pct_").to_owned());
        secrets.push(hex::encode(sha2::Sha256::digest(t.as_bytes())));
    }
    secrets.push(alice);

    let records = fx.ca.core().store().audit_records(0, 100_000).await.unwrap();
    assert!(records.iter().any(|r| r.event == "console_ticket_reused"), "the scenario ran");
    let logs = String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned();
    assert!(logs.contains("console ticket granted"), "the log capture works");
    for secret in &secrets {
        for r in &records {
            assert!(!r.payload.contains(secret.as_str()), "secret in audit record {}: {}", r.event, r.payload);
        }
        assert!(!logs.contains(secret.as_str()), "secret {secret:?} in the log");
    }
}
