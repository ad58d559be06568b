//! The code flow (the browser's sign-in): cookies, state, callbacks, step-up and the way back to a bastion.

use super::*;

#[tokio::test]
async fn code_flow_sets_a_strict_cookie_that_authenticates_and_state_cannot_be_replayed() {
    let s = setup(None).await;
    let mut ca = ca_browser(&s.server);
    let start = ca.get(&s.server.endpoint("/v1/auth/oidc/login")).await;
    assert_eq!(start.status, StatusCode::SEE_OTHER);
    let to_idp = start.location.clone().unwrap();
    assert!(to_idp.starts_with(&s.idp.issuer), "{to_idp}");
    for needed in ["code_challenge_method=S256", "code_challenge=", "state=", "nonce=", "response_type=code"] {
        assert!(to_idp.contains(needed), "{needed} missing from {to_idp}");
    }

    let mut idp_browser = Browser::new(Browser::idp_client());
    let page = idp_browser.get(&to_idp).await;
    let back = sign_in_at_idp(&mut idp_browser, &s.idp, page, "bob", "bob-password").await;
    let callback = back.location.expect("the IdP redirects back to the CA");
    assert!(callback.starts_with(&s.server.endpoint("/v1/auth/oidc/callback")), "{callback}");

    let done = ca.get(&callback).await;
    assert_signed_in_to_the_ui(&done);
    let cookie = done.set_cookies.iter().find(|c| c.starts_with("__Host-portcullis_session=")).expect("session cookie");
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.split("; ").any(|a| a == attr), "{attr} missing: {cookie}");
    }
    let token = cookie.split(';').next().unwrap().trim_start_matches("__Host-portcullis_session=").to_owned();

    // The cookie alone authenticates.
    let http = client_with_pin(&s.server.pin);
    let whoami = |cookie: String| {
        let http = http.clone();
        let url = s.server.endpoint("/v1/auth/whoami");
        async move { http.get(url).header("cookie", cookie).send().await.unwrap() }
    };
    let resp = whoami(format!("__Host-portcullis_session={token}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let who: WhoAmI = resp.json().await.unwrap();
    assert_eq!((who.username.as_str(), who.source.as_str()), ("oidc:bob", "oidc"));
    assert_eq!(who.groups, vec!["developers", "ops"]);

    // Replaying the same callback (same state and code) is refused.
    let replay = ca.get(&callback).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED, "{}", replay.body);
    assert!(replay.body.contains("already used"), "{}", replay.body);
    let failed = s.server.audit_events("login_failed").await;
    assert!(failed.iter().any(|r| r.payload["reason"] == "state_invalid"), "{failed:?}");

    // Logout with the cookie is a state change: without the session's CSRF token it is
    // refused (and the session lives on); with it, it revokes the cookie's session and
    // clears the cookie.
    let logout = |csrf: Option<String>| {
        let mut req = http
            .post(s.server.endpoint("/v1/auth/logout"))
            .header("cookie", format!("__Host-portcullis_session={token}"))
            .json(&json!({}));
        if let Some(csrf) = csrf {
            req = req.header(portcullis_proto::console::CSRF_HEADER, csrf);
        }
        req.send()
    };
    assert_eq!(logout(None).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(whoami(format!("__Host-portcullis_session={token}")).await.status(), StatusCode::OK);
    let resp = logout(Some(portcullis_ca::csrf_token_for(&token))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cleared = resp.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
    assert!(cleared.starts_with("__Host-portcullis_session=;") && cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(whoami(format!("__Host-portcullis_session={token}")).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn callbacks_from_another_browser_or_malformed_are_refused() {
    let s = setup(None).await;
    // A sign-in started in one browser, finished in another (login CSRF): refused.
    let mut victim = ca_browser(&s.server);
    let start = victim.get(&s.server.endpoint("/v1/auth/oidc/login")).await;
    let mut idp_browser = Browser::new(Browser::idp_client());
    let page = idp_browser.get(&start.location.unwrap()).await;
    let back = sign_in_at_idp(&mut idp_browser, &s.idp, page, "alice", "alice-password").await;
    let mut other = ca_browser(&s.server);
    let refused = other.get(&back.location.unwrap()).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    assert!(refused.body.contains("another browser"), "{}", refused.body);

    // Wrong password at the IdP: the IdP itself refuses (its fixture check works).
    let mut ca = ca_browser(&s.server);
    let start = ca.get(&s.server.endpoint("/v1/auth/oidc/login")).await;
    let mut idp_browser = Browser::new(Browser::idp_client());
    let first = idp_browser.get(&start.location.unwrap()).await;
    let page = idp_browser.follow(first, &s.idp.issuer).await;
    let (action, _) = form_of(&page);
    let wrong = idp_browser.post_form(&action, &[("prompt", "login"), ("login", "alice"), ("password", "nope")]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    let cb = |q: &str| s.server.endpoint(&format!("/v1/auth/oidc/callback{q}"));
    for (query, status, needle) in [
        ("", StatusCode::BAD_REQUEST, "`code` is missing"),
        ("?code=a", StatusCode::BAD_REQUEST, "`state` is missing"),
        ("?code=a&state=b&state=c", StatusCode::BAD_REQUEST, "more than once"),
        ("?code=a&state=unknown", StatusCode::UNAUTHORIZED, "start again"),
        ("?error=access_denied&error_description=%3Cscript%3E&state=x", StatusCode::UNAUTHORIZED, "access_denied"),
    ] {
        let page = ca.get(&cb(query)).await;
        assert_eq!(page.status, status, "{query}: {}", page.body);
        assert!(page.body.contains(needle), "{query}: {}", page.body);
        assert!(!page.body.contains("<script>"), "{query}: {}", page.body);
    }
    let long = format!("?code={}&state=b", "x".repeat(5000));
    let page = ca.get(&cb(&long)).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.body.contains("too long"), "{}", page.body);
}

/// Single sign-on as a person does it, in Chromium: the sign-in page offers the button,
/// the provider asks for the password and consent, and the browser lands on the device
/// list signed in (the callback hands on to `/ui/`, where the `SameSite=Strict` cookie
/// is sent). The step-up link makes the provider ask for the password again and moves
/// the sign-in time; a callback the provider refused shows advice, not the query.
#[tokio::test]
async fn a_browser_signs_in_with_single_sign_on() {
    let s = setup(None).await;
    let report = run_script(
        "sso.mjs",
        &json!({
            "url": s.server.url,
            "issuer": s.idp.issuer,
            "username": "bob",
            "password": "bob-password",
            "screenshot": screenshots().join("sign-in-sso.png"),
        }),
    );
    assert!(report.get("error").is_none() && report.get("page_errors").is_none(), "{report:#}\n{}", s.server.log());
    assert_eq!(report["steps"], json!(["signed_in", "stepped_up", "refused_shown"]), "{report:#}");
    let ui = format!("{}/ui/", s.server.url);
    for signed_in in [&report["first"], &report["fresh"]] {
        assert_eq!(signed_in["url"], ui.as_str(), "{report:#}");
        assert_eq!(signed_in["shown_as"], "oidc:bob", "{report:#}");
        assert_eq!(signed_in["me"]["source"], "oidc", "{report:#}");
    }
    assert_eq!(report["cookie"], json!({ "httpOnly": true, "secure": true, "sameSite": "Strict" }));
    assert_eq!(report["first_logins"], 1, "{report:#}");
    assert_eq!(report["fresh_logins"], 1, "the step-up asks for the password again: {report:#}");
    assert_eq!(report["fresh_signed_out"], true, "{report:#}");
    assert!(report["fresh_notice"].as_str().unwrap().contains("recent sign-in"), "{report:#}");
    let (first, fresh) = (&report["first"]["me"]["authenticated_at"], &report["fresh"]["me"]["authenticated_at"]);
    assert!(fresh.as_u64().unwrap() > first.as_u64().unwrap(), "the step-up moves the sign-in time: {report:#}");
    let refused = &report["refused"];
    assert_eq!(refused["url"], ui.as_str(), "the error code leaves the address bar: {report:#}");
    let advice = refused["advice"].as_str().unwrap();
    assert!(advice.contains("Single sign-on did not sign you in") && advice.contains("Start again"), "{advice}");
    assert!(!advice.contains("555"), "the provider's description is not shown: {advice}");
    assert_eq!(report["a11y"], json!([]), "axe-core, serious or critical: {report:#}");
}

/// Step-up through single sign-on (issue 20): a session's sign-in time is the IdP's
/// `auth_time`, so signing in again while the IdP's own session holds (no password asked)
/// is no fresher than before; `?fresh=1` makes the IdP ask for the password again
/// (`prompt=login`, `max_age=0`), and only that counts as a recent sign-in.
#[tokio::test]
async fn only_a_fresh_sign_in_at_the_idp_counts_as_recent() {
    let s = setup(None).await;
    let mut idp_browser = Browser::new(Browser::idp_client());
    let mut sign_in = async |path: &str| {
        let mut ca = ca_browser(&s.server);
        let start = ca.get(&s.server.endpoint(path)).await;
        let to_idp = start.location.expect("the CA sends the browser to the IdP");
        let page = idp_browser.get(&to_idp).await;
        let (back, logins) = through_idp(&mut idp_browser, &s.idp, page, "bob", "bob-password").await;
        let done = ca.get(&back.location.expect("the IdP redirects back to the CA")).await;
        assert_signed_in_to_the_ui(&done);
        let (status, me) = s.server.get_json(Some(&session_of(&done)), "/v1/auth/whoami").await;
        assert_eq!(status, StatusCode::OK, "{me}");
        (to_idp, logins, me["authenticated_at"].as_u64().unwrap())
    };
    let (url, logins, first) = sign_in("/v1/auth/oidc/login").await;
    assert!(url.contains("max_age=") && !url.contains("prompt=login"), "{url}");
    assert_eq!(logins, 1);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(first > 0 && first.abs_diff(now) <= 5, "auth_time {first}, now {now}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The IdP's session still holds: no password, and the sign-in is as old as it was.
    let (_, logins, again) = sign_in("/v1/auth/oidc/login").await;
    assert_eq!((logins, again), (0, first));
    // Asked to sign in afresh, the IdP asks for the password, and the time moves.
    let (url, logins, fresh) = sign_in("/v1/auth/oidc/login?fresh=1").await;
    assert!(url.contains("prompt=login") && url.contains("max_age=0"), "{url}");
    assert_eq!(logins, 1);
    assert!(fresh >= first + 2, "fresh {fresh}, first {first}");
    let odd = ca_browser(&s.server).get(&s.server.endpoint("/v1/auth/oidc/login?fresh=maybe")).await;
    assert_eq!(odd.status, StatusCode::BAD_REQUEST);
}

/// Single sign-on through two bastions' web front doors: each browser is sent back to the
/// callback of the front door it started at (each registered at the IdP and in
/// `redirect_urls`); a callback taken to the other door signs nobody in; a host nobody
/// registered is told what to configure; and only a bastion may name the browser's host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_sign_on_returns_each_browser_to_the_bastion_it_started_at() {
    let doors = [free_loopback_addr(), free_loopback_addr()];
    let callbacks = doors.clone().map(|d| format!("https://{d}/v1/auth/oidc/callback"));
    let Setup { idp, server, _dir: dir } = setup_with(None, &[&callbacks[0], &callbacks[1]]).await;
    let admin = server.admin_token().await;
    let mut bastions = Vec::new();
    let mut pins = Vec::new();
    for (name, door) in ["b1", "b2"].into_iter().zip(&doors) {
        let state = dir.path().join(name);
        let token = service_token(&server, &admin, "bastion").await;
        let web = vec!["--web-listen".to_owned(), door.clone()];
        bastions.push(spawn_bastion(&server.url, &server.pin, name, &state, Some(&token), &web));
        let line = wait_line(&state, "Web UI (browser console): ");
        pins.push(line.split_once(" (TLS public-key pin ").unwrap().1.trim_end_matches(')').to_owned());
    }

    let mut pending = Vec::new();
    for (i, door) in doors.iter().enumerate() {
        let mut browser = pinned_browser(&pins[i]);
        let start = browser.get(&format!("https://{door}/v1/auth/oidc/login")).await;
        assert_eq!(start.status, StatusCode::SEE_OTHER, "{}", start.body);
        let to_idp = start.location.unwrap();
        let mut idp_browser = Browser::new(Browser::idp_client());
        let page = idp_browser.get(&to_idp).await;
        let back = sign_in_at_idp(&mut idp_browser, &idp, page, "bob", "bob-password").await;
        let callback = back.location.expect("the IdP redirects back");
        assert!(callback.starts_with(&callbacks[i]), "door {door}: back to {callback}");
        pending.push((browser, callback));
    }
    // Door 1's sign-in finishes at door 1.
    let (mut first, callback) = pending.remove(0);
    let done = first.get(&callback).await;
    assert_signed_in_to_the_ui(&done);
    assert!(done.set_cookies.iter().any(|c| c.starts_with("__Host-portcullis_session=")), "{:?}", done.set_cookies);
    // Door 2's callback taken to door 1 (even with door 2's binding cookie) signs nobody
    // in: the code was issued for door 2's callback.
    let (second, callback) = pending.remove(0);
    let mut elsewhere = pinned_browser(&pins[0]);
    elsewhere.cookies = second.cookies.clone();
    let moved = elsewhere.get(&callback.replace(&doors[1], &doors[0])).await;
    assert_ne!(moved.status, StatusCode::OK, "{}", moved.body);
    assert!(moved.set_cookies.iter().all(|c| !c.starts_with("__Host-portcullis_session=")), "{:?}", moved.set_cookies);

    // A host nobody registered: told what to add, nothing sent to the IdP.
    let http = client_with_pin(&server.pin);
    let login = server.endpoint("/v1/auth/oidc/login");
    let unknown = http.get(&login).header("host", "sso.example:8443").send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    let text = unknown.text().await.unwrap();
    assert!(
        text.contains("https://sso.example:8443/v1/auth/oidc/callback") && text.contains("redirect_urls"),
        "{text}"
    );
    // Naming the browser's host takes a bastion's credential.
    let forged = http.get(&login).header("x-portcullis-forwarded-host", doors[1].as_str()).send().await.unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    for mut b in bastions {
        b.kill().unwrap();
        b.wait().unwrap();
    }
}
