//! OpenID Connect single sign-on against a real provider (`oidc-provider` under node),
//! through a real `portcullisd`: the device flow as the CLI runs it, the browser's code
//! flow with its cookie, replayed `state`, refusal at the IdP, an expired device code,
//! and malformed callbacks. ID-token forgeries are unit-tested in `ca` (identity::oidc).

// Test code: a failed expectation must fail the test, so unwrap/expect/panic/indexing
// are the right tools here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_ca::identity::oidc::OidcConfig;
use portcullis_ca::{Ca, CaConfig, SystemClock};
use portcullis_policies::scoped_principal;
use portcullis_proto::oidc::{AuthMethods, DevicePoll, DeviceStart};
use portcullis_proto::{LoginResponse, UserCertResponse, WhoAmI};
use portcullis_tests::browser::{run_script, screenshots};
use portcullis_tests::idp::{Browser, CLIENT_ID, CLIENT_SECRET, Idp, form_of, free_port, sign_in_at_idp, through_idp};
use portcullis_tests::server::client_with_pin;
use portcullis_tests::services::{free_loopback_addr, service_token, spawn_bastion, wait_line};
use portcullis_tests::ssh::{ed25519_key, public_line};
use portcullis_tests::{Postgres, ServedCa, Server, ServerOpts, TEST_PASSPHRASE};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

/// IdP group `developers` may log in as `dev` anywhere.
const POLICY: &str = r#"
[[role]]
name = "dev-shell"
logins = ["dev"]
targets = 'in:devices name:%'
permissions = ["certs.issue"]

[[binding]]
group = "developers"
roles = ["dev-shell"]

[[role]]
name = "portcullis-admin"
permissions = ["certs.revoke", "users.manage", "ca.manage", "audit.read", "policy.manage", "nodes.manage", "sessions.kill"]

[[binding]]
group = "portcullis-admins"
roles = ["portcullis-admin"]

[[binding]]
user = "oidc:dana"
roles = ["dev-shell"]

[[deny]]
name = "suspended"
groups = ["oidc:suspended"]
permissions = ["*"]
logins = ["*"]
"#;

struct Setup {
    idp: Idp,
    server: Server,
    _dir: tempfile::TempDir,
}

async fn setup(device_code_ttl: Option<u64>) -> Setup {
    setup_with(device_code_ttl, &[]).await
}

/// The CA's own callback and `more` (bastion front doors'), registered at the IdP and
/// configured.
async fn setup_with(device_code_ttl: Option<u64>, more: &[&str]) -> Setup {
    let port = free_port();
    let ca_url = format!("https://127.0.0.1:{port}");
    let callback = format!("{ca_url}/v1/auth/oidc/callback");
    let callbacks: Vec<&str> = std::iter::once(callback.as_str()).chain(more.iter().copied()).collect();
    let idp = Idp::start(&callbacks.join(" "), device_code_ttl);
    let dir = tempfile::tempdir().unwrap();
    let config = idp.oidc_config_file(dir.path(), &callbacks);
    let server = Server::start_with(ServerOpts {
        policy: vec![("policy.toml".into(), POLICY.into())],
        args: vec!["--oidc-config".into(), config.display().to_string()],
        listen: Some(format!("127.0.0.1:{port}")),
        ..ServerOpts::default()
    })
    .await;
    assert_eq!(server.url, ca_url);
    Setup { idp, server, _dir: dir }
}

fn ca_browser(server: &Server) -> Browser {
    pinned_browser(&server.pin)
}

/// A browser for the CA whose TLS key is `pin`.
fn pinned_browser(pin: &str) -> Browser {
    let tls = portcullis_proto::pin::pinned_client_config(pin).unwrap();
    Browser::new(
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
    )
}

/// A finished browser sign-in goes on to the web UI, on this same origin.
fn assert_signed_in_to_the_ui(done: &portcullis_tests::idp::Page) {
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let origin = done.url.split("/v1/").next().unwrap();
    assert_eq!(done.location, Some(format!("{origin}/ui/")), "{}", done.body);
}

async fn device_start(server: &Server) -> DeviceStart {
    let (status, body) = server.post_json(None, "/v1/auth/oidc/device", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "device start: {body}");
    serde_json::from_value(body).unwrap()
}

async fn device_poll(server: &Server, handle: &str) -> (StatusCode, serde_json::Value) {
    server.post_json(None, "/v1/auth/oidc/device/poll", &json!({ "handle": handle })).await
}

/// The user's side of the device flow: open the complete URL, confirm the code, then
/// sign in (or abort) at the IdP.
async fn approve_device(idp: &Idp, start: &DeviceStart, user: &str, password: &str, abort: bool) {
    approve_device_in(&mut Browser::new(Browser::idp_client()), idp, start, user, password, abort).await;
}

/// [`approve_device`] in `browser`, which may hold a sign-in at the IdP already; how
/// many times the IdP asked for the password.
async fn approve_device_in(
    browser: &mut Browser,
    idp: &Idp,
    start: &DeviceStart,
    user: &str,
    password: &str,
    abort: bool,
) -> usize {
    let complete = start.verification_uri_complete.clone().expect("verification_uri_complete");
    assert!(complete.starts_with(&idp.issuer), "{complete}");
    assert!(start.verification_uri.starts_with(&idp.issuer));
    // The page auto-posts the user code; then the IdP asks to confirm it.
    let page = browser.get(&complete).await;
    let (action, inputs) = form_of(&page);
    let inputs: Vec<(&str, &str)> = inputs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let confirm = browser.post_form(&action, &inputs).await;
    assert_eq!(confirm.status, StatusCode::OK, "confirm page: {}", confirm.body);
    let (action, inputs) = form_of(&confirm);
    let mut form: Vec<(&str, &str)> =
        inputs.iter().filter(|(k, _)| k != "confirm").map(|(k, v)| (k.as_str(), v.as_str())).collect();
    form.push(if abort { ("abort", "yes") } else { ("confirm", "yes") });
    let page = browser.post_form(&action, &form).await;
    if abort {
        return 0;
    }
    let (done, logins) = through_idp(browser, idp, page, user, password).await;
    assert_eq!(done.status, StatusCode::OK, "device flow end page: {}", done.body);
    logins
}

/// Polls like the CLI: honours `interval` and `slow_down` (with a test-sized cap).
async fn poll_until_done(server: &Server, handle: &str) -> DevicePoll {
    for _ in 0..60 {
        let (status, body) = device_poll(server, handle).await;
        assert_eq!(status, StatusCode::OK, "poll: {body}");
        let poll: DevicePoll = serde_json::from_value(body).unwrap();
        match poll {
            DevicePoll::Pending { interval } | DevicePoll::SlowDown { interval } => {
                tokio::time::sleep(Duration::from_secs(interval.min(6))).await;
            }
            done => return done,
        }
    }
    panic!("the device flow never finished");
}

/// Runs `portcullis login` (plus `args`) headless against `s`: the sign-in URL with the
/// code filled in that it printed (after checking it said where to go and which code),
/// and the still-running CLI, whose stdout has been read up to there.
fn cli_device_login(
    s: &Setup,
    home: &std::path::Path,
    args: &[&str],
) -> (String, (std::process::Child, std::io::Lines<std::io::BufReader<std::process::ChildStdout>>)) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(portcullis_tests::bin("portcullis"))
        .args(["login", "--ca", &s.server.url, "--ca-fingerprint", &s.server.pin])
        .args(args)
        .env("HOME", home)
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let complete = loop {
        let line = lines.next().expect("the CLI ended before printing the sign-in URL").unwrap();
        printed.push(line.clone());
        if let Some(rest) = line.strip_prefix("(or open ") {
            break rest.split_whitespace().next().unwrap().trim_end_matches(',').to_owned();
        }
    };
    assert!(printed.iter().any(|l| l.starts_with("To sign in, open ")), "{printed:?}");
    assert!(printed.iter().any(|l| l.starts_with("and enter the code: ")), "{printed:?}");
    (complete, (child, lines))
}

/// Waits for the CLI of [`cli_device_login`]: the rest of its output, its exit status and
/// its standard error.
fn finish_cli(
    (mut child, lines): (std::process::Child, std::io::Lines<std::io::BufReader<std::process::ChildStdout>>),
) -> (Vec<String>, std::process::ExitStatus, String) {
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (rest, status, stderr)
}

/// A device sign-in as the CLI printed it: only the complete URL is known to the test.
fn placeholder_start(idp: &Idp) -> DeviceStart {
    DeviceStart {
        handle: Default::default(),
        verification_uri: idp.issuer.clone(),
        verification_uri_complete: None,
        user_code: String::new(),
        interval: 5,
        expires_in: 600,
    }
}

/// The real CLI, headless (stdout a pipe, no terminal): `portcullis login` sees OIDC in
/// `/v1/auth/methods`, prints the URL and code, and polls until the user approves.
#[tokio::test]
async fn cli_login_uses_the_device_flow_headless() {
    let s = setup(None).await;
    let home = tempfile::tempdir().unwrap();
    let (complete, child) = cli_device_login(&s, home.path(), &[]);
    let start = DeviceStart { verification_uri_complete: Some(complete), ..placeholder_start(&s.idp) };
    approve_device(&s.idp, &start, "alice", "alice-password", false).await;
    let (rest, status, stderr) = finish_cli(child);
    assert!(status.success(), "CLI failed: {rest:?}\n{stderr}");
    assert!(rest.iter().any(|l| l.starts_with("Logged in to") && l.ends_with("as oidc:alice.")), "{rest:?}");
    let principal = scoped_principal("dev-shell", "dev");
    assert!(rest.iter().any(|l| l.contains(&principal)), "{rest:?}");
}

/// Step-up from a terminal: `portcullis login --fresh` has the IdP ask for the password
/// although the user's browser is still signed in there (`max_age=0` on the device
/// authorization), and only that moves the sign-in time; an ordinary device sign-in in
/// the same browser asks nothing and keeps the old time.
#[tokio::test]
async fn login_fresh_asks_the_idp_for_the_password_again() {
    let s = setup(None).await;
    let mut browser = Browser::new(Browser::idp_client());
    let mut sign_in = async |fresh: bool| {
        let (status, body) = s.server.post_json(None, "/v1/auth/oidc/device", &json!({ "fresh": fresh })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let start: DeviceStart = serde_json::from_value(body).unwrap();
        let logins = approve_device_in(&mut browser, &s.idp, &start, "bob", "bob-password", false).await;
        let DevicePoll::Success(session) = poll_until_done(&s.server, start.handle.expose()).await else {
            panic!("device sign-in did not succeed")
        };
        let (status, me) = s.server.get_json(Some(session.token.expose()), "/v1/auth/whoami").await;
        assert_eq!(status, StatusCode::OK, "{me}");
        (logins, me["authenticated_at"].as_u64().unwrap())
    };
    let (logins, first) = sign_in(false).await;
    assert_eq!(logins, 1);
    assert!(first > 0, "the device flow reports the IdP's auth_time");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(sign_in(false).await, (0, first), "remembered by the IdP: no password, no newer sign-in");
    let (logins, fresh) = sign_in(true).await;
    assert_eq!(logins, 1, "a step-up asks for the password");
    assert!(fresh >= first + 2, "fresh {fresh}, first {first}");
    let (status, body) = s.server.post_json(None, "/v1/auth/oidc/device", &json!({ "fresh": "yes" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // The CLI's flag is that request: with the browser still signed in at the IdP, the
    // IdP asks for the password again (once the last sign-in is over a second old).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let home = tempfile::tempdir().unwrap();
    let (complete, child) = cli_device_login(&s, home.path(), &["--fresh"]);
    let start = DeviceStart { verification_uri_complete: Some(complete), ..placeholder_start(&s.idp) };
    assert_eq!(approve_device_in(&mut browser, &s.idp, &start, "bob", "bob-password", false).await, 1);
    let (rest, status, stderr) = finish_cli(child);
    assert!(status.success(), "CLI failed: {rest:?}\n{stderr}");
}

#[tokio::test]
async fn methods_name_oidc() {
    let s = setup(None).await;
    let (status, body) = s.server.get_json(None, "/v1/auth/methods").await;
    assert_eq!(status, StatusCode::OK);
    let methods: AuthMethods = serde_json::from_value(body).unwrap();
    assert!(methods.password);
    let oidc = methods.oidc.expect("OIDC offered");
    assert_eq!(oidc.issuer, s.idp.issuer);
    assert!(oidc.device && oidc.browser);
}

#[tokio::test]
async fn device_flow_gives_a_session_and_a_certificate_from_idp_groups() {
    let s = setup(None).await;
    let start = device_start(&s.server).await;
    assert!(start.handle.expose().starts_with("pcd_"));
    assert!(!start.user_code.is_empty() && start.interval >= 1 && start.expires_in > 0);
    // The device code itself never reaches the client.
    let serialized = serde_json::to_string(&start).unwrap();
    assert!(!serialized.contains("device_code"), "{serialized}");

    // Before the user acts: pending.
    let (status, body) = device_poll(&s.server, start.handle.expose()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(matches!(serde_json::from_value(body).unwrap(), DevicePoll::Pending { .. }));
    // A client that ignores the interval is told to slow down by the CA itself: the
    // answer stays the same however often it asks (the IdP's own `slow_down` would
    // raise the interval by five seconds at every poll that reached it).
    for _ in 0..5 {
        let (status, body) = device_poll(&s.server, start.handle.expose()).await;
        assert_eq!(status, StatusCode::OK);
        let poll: DevicePoll = serde_json::from_value(body).unwrap();
        assert!(matches!(poll, DevicePoll::SlowDown { interval } if interval == start.interval + 5), "{poll:?}");
    }

    approve_device(&s.idp, &start, "alice", "alice-password", false).await;
    let login: LoginResponse = match poll_until_done(&s.server, start.handle.expose()).await {
        DevicePoll::Success(login) => login,
        other => panic!("expected success, got {other:?}"),
    };
    assert_eq!(login.username, "oidc:alice");
    // The handle is single use.
    let (status, _) = device_poll(&s.server, start.handle.expose()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = s.server.get_json(Some(login.token.expose()), "/v1/auth/whoami").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let who: WhoAmI = serde_json::from_value(body).unwrap();
    assert_eq!((who.username.as_str(), who.source.as_str()), ("oidc:alice", "oidc"));
    assert_eq!(who.groups, vec!["developers"]);
    assert_eq!(who.roles, vec!["dev-shell"]);

    let (status, body) = s.server.issue_cert(login.token.expose(), &public_line(&ed25519_key())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cert: UserCertResponse = serde_json::from_value(body).unwrap();
    assert_eq!(cert.principals, vec![scoped_principal("dev-shell", "dev")]);

    let ok = s.server.audit_events("login_succeeded").await;
    assert!(ok.iter().any(|r| r.payload["username"] == "oidc:alice" && r.payload["source"] == "oidc"), "{ok:?}");
}

/// A token without the groups claim says nothing about the user's groups. Read as "no
/// groups" it would lift the deny on `oidc:suspended` for anyone the IdP was not asked
/// about: refused, audited, and explained; a user whose token lists no groups (an empty
/// list) signs in as before.
#[tokio::test]
async fn a_token_without_the_groups_claim_is_not_read_as_no_groups() {
    let s = setup(None).await;
    let start = device_start(&s.server).await;
    approve_device(&s.idp, &start, "dana", "dana-password", false).await;
    let refused = loop {
        let (status, body) = device_poll(&s.server, start.handle.expose()).await;
        if status != StatusCode::OK {
            break (status, body);
        }
        let poll: DevicePoll = serde_json::from_value(body).unwrap();
        assert!(matches!(poll, DevicePoll::Pending { .. } | DevicePoll::SlowDown { .. }), "signed in: {poll:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(refused.0.is_client_error(), "{refused:?}");
    assert!(refused.1.to_string().contains("no `groups` claim"), "{refused:?}");
    let failed = s.server.audit_events("login_failed").await;
    assert!(
        failed.iter().any(|r| r.payload["reason"] == "groups_claim_missing" && r.payload["username"] == "oidc:dana"),
        "{failed:?}"
    );
    // Stated, even empty, is known: carol signs in.
    let start = device_start(&s.server).await;
    approve_device(&s.idp, &start, "carol", "carol-password", false).await;
    assert!(matches!(poll_until_done(&s.server, start.handle.expose()).await, DevicePoll::Success(_)));
}

#[tokio::test]
async fn device_flow_denied_and_expired_are_answered_clearly() {
    let s = setup(Some(3)).await;
    // Denied by the user at the IdP.
    let start = device_start(&s.server).await;
    approve_device(&s.idp, &start, "alice", "alice-password", true).await;
    assert!(matches!(poll_until_done(&s.server, start.handle.expose()).await, DevicePoll::AccessDenied));
    // Nobody acts before the 3 s device code expires.
    let start = device_start(&s.server).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(matches!(poll_until_done(&s.server, start.handle.expose()).await, DevicePoll::ExpiredToken));
    let failed = s.server.audit_events("login_failed").await;
    let reasons: Vec<_> = failed.iter().map(|r| r.payload["reason"].as_str().unwrap().to_owned()).collect();
    assert!(reasons.contains(&"access_denied".to_owned()), "{reasons:?}");
    assert!(reasons.contains(&"expired_token".to_owned()), "{reasons:?}");
    // An unknown handle is no session.
    let (status, _) = device_poll(&s.server, "pcd_not-a-handle").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

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
    let cookie = done.set_cookies.iter().find(|c| c.starts_with("portcullis_session=")).expect("session cookie");
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.split("; ").any(|a| a == attr), "{attr} missing: {cookie}");
    }
    let token = cookie.split(';').next().unwrap().trim_start_matches("portcullis_session=").to_owned();

    // The cookie alone authenticates.
    let http = client_with_pin(&s.server.pin);
    let whoami = |cookie: String| {
        let http = http.clone();
        let url = s.server.endpoint("/v1/auth/whoami");
        async move { http.get(url).header("cookie", cookie).send().await.unwrap() }
    };
    let resp = whoami(format!("portcullis_session={token}")).await;
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
            .header("cookie", format!("portcullis_session={token}"))
            .json(&json!({}));
        if let Some(csrf) = csrf {
            req = req.header(portcullis_proto::console::CSRF_HEADER, csrf);
        }
        req.send()
    };
    assert_eq!(logout(None).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(whoami(format!("portcullis_session={token}")).await.status(), StatusCode::OK);
    let resp = logout(Some(portcullis_ca::csrf_token_for(&token))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cleared = resp.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
    assert!(cleared.starts_with("portcullis_session=;") && cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(whoami(format!("portcullis_session={token}")).await.status(), StatusCode::UNAUTHORIZED);
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

/// Signs `user` in at the IdP through the browser code flow; the CA's answer to the
/// callback (a fresh browser on both sides, as another person's would be).
async fn code_flow_sign_in(s: &Setup, user: &str, password: &str) -> portcullis_tests::idp::Page {
    let mut ca = ca_browser(&s.server);
    let start = ca.get(&s.server.endpoint("/v1/auth/oidc/login")).await;
    let mut idp_browser = Browser::new(Browser::idp_client());
    let page = idp_browser.get(&start.location.expect("the CA sends the browser to the IdP")).await;
    let back = sign_in_at_idp(&mut idp_browser, &s.idp, page, user, password).await;
    ca.get(&back.location.expect("the IdP redirects back to the CA")).await
}

/// The API session token a successful sign-in set as the cookie.
fn session_of(page: &portcullis_tests::idp::Page) -> String {
    let cookie = page.set_cookies.iter().find(|c| c.starts_with("portcullis_session=")).expect("session cookie");
    cookie.split(';').next().unwrap().trim_start_matches("portcullis_session=").to_owned()
}

/// An IdP account is `oidc:NAME`, held for its (issuer, `sub`): one named like a local
/// user gets none of that user's bindings and survives that user's disabling; one that
/// calls itself by another IdP user's name (a different `sub`) is refused — audited,
/// nothing issued — until an administrator releases the name, which also ends what the
/// previous holder had under it.
#[tokio::test]
async fn idp_accounts_never_inherit_a_local_users_or_another_subjects_name() {
    let s = setup(None).await;
    let admin = s.server.admin_token().await;
    let (status, body) = s
        .server
        .write_policy(
            "names.toml",
            r#"
[[role]]
name = "auditor"
permissions = ["audit.read"]

[[binding]]
user = "ops-lead"
roles = ["auditor"]

[[binding]]
user = "oidc:bob"
roles = ["auditor"]
"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s.server.add_user(&admin, "ops-lead", &[], "local-ops-lead-password").await;

    // The IdP's `ops-lead` is not the local one: no binding, no audit log.
    let idp_lead = session_of(&code_flow_sign_in(&s, "ops-lead", "ops-lead-password").await);
    let (_, body) = s.server.whoami(&idp_lead).await;
    assert_eq!(body["username"], "oidc:ops-lead");
    assert_eq!(body["roles"], json!([]), "{body}");
    let (status, _) = s.server.get_json(Some(&idp_lead), "/v1/admin/audit").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Positive controls: the local ops-lead has the role, and so does the IdP's bob,
    // bound by his account name.
    let local_lead = s.server.login("ops-lead", "local-ops-lead-password").await;
    assert_eq!(s.server.get_json(Some(&local_lead), "/v1/admin/audit").await.0, StatusCode::OK);
    let idp_bob = session_of(&code_flow_sign_in(&s, "bob", "bob-password").await);
    assert_eq!(s.server.get_json(Some(&idp_bob), "/v1/admin/audit").await.0, StatusCode::OK);
    // Disabling the local ops-lead ends the local sessions only.
    let (status, body) = s.server.post_json(Some(&admin), "/v1/admin/users/ops-lead/disable", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(s.server.whoami(&local_lead).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.server.whoami(&idp_lead).await.0, StatusCode::OK);

    // alice (sub "alice") holds oidc:alice; mallory's token says preferred_username
    // alice, with sub "mallory": refused, nothing opened.
    let alice = session_of(&code_flow_sign_in(&s, "alice", "alice-password").await);
    assert_eq!(s.server.whoami(&alice).await.1["username"], "oidc:alice");
    let refused = code_flow_sign_in(&s, "mallory", "mallory-password").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    assert!(refused.body.contains("admin user release oidc:alice"), "{}", refused.body);
    assert!(!refused.set_cookies.iter().any(|c| c.starts_with("portcullis_session=") && !c.contains("Max-Age=0")));
    let failed = s.server.audit_events("login_failed").await;
    assert!(
        failed.iter().any(|r| r.payload["username"] == "oidc:alice" && r.payload["reason"] == "account_taken"),
        "{failed:?}"
    );
    assert_eq!(s.server.whoami(&alice).await.0, StatusCode::OK, "the holder is untouched");

    // Released on purpose: alice's session ends, and the name goes to the next subject.
    let (status, body) = s.server.post_json(Some(&admin), "/v1/admin/users/oidc:alice/release", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(s.server.whoami(&alice).await.0, StatusCode::UNAUTHORIZED);
    let mallory = session_of(&code_flow_sign_in(&s, "mallory", "mallory-password").await);
    assert_eq!(s.server.whoami(&mallory).await.1["username"], "oidc:alice");
    // Only directory and IdP accounts are held for a subject.
    let (status, _) = s.server.post_json(Some(&admin), "/v1/admin/users/ops-lead/release", &json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// Two CA replicas on one PostgreSQL share the sign-ins in progress: a browser sign-in
/// started on one finishes on the other (and its `state` then works on neither again),
/// and a device sign-in started on one is polled on both, the interval holding across
/// them — without sticky routing in front of the replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_in_progress_are_shared_by_replicas_on_postgres() {
    let pg = Postgres::start().unwrap();
    let db = pg.create_database("oidc_replicas").unwrap();
    let callback_base = format!("https://127.0.0.1:{}", free_port());
    let callback = format!("{callback_base}/v1/auth/oidc/callback");
    let idp = Idp::start(&callback, None);
    let policy = tempfile::tempdir().unwrap();
    std::fs::write(policy.path().join("policy.toml"), POLICY).unwrap();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let mut config =
            CaConfig::new(db.clone(), policy.path().to_owned(), secrecy::SecretString::from(TEST_PASSPHRASE));
        config.oidc = Some(OidcConfig {
            redirect_urls: vec![callback.clone()],
            ..OidcConfig::new(idp.issuer.clone(), CLIENT_ID.into(), secrecy::SecretString::from(CLIENT_SECRET))
        });
        let ca = Ca::open(config, std::sync::Arc::new(SystemClock)).await.unwrap();
        replicas.push(ServedCa::start(std::sync::Arc::new(ca)).await);
    }
    let (a, b) = (&replicas[0], &replicas[1]);

    // Browser: started on A, back from the IdP at B (with the binding cookie A set).
    let mut on_a = pinned_browser(&a.pin);
    let start = on_a.get(&format!("{}/v1/auth/oidc/login", a.url)).await;
    let mut idp_browser = Browser::new(Browser::idp_client());
    let page = idp_browser.get(&start.location.expect("A sends the browser to the IdP")).await;
    let back = sign_in_at_idp(&mut idp_browser, &idp, page, "bob", "bob-password").await;
    let back = back.location.expect("the IdP redirects back");
    let mut on_b = pinned_browser(&b.pin);
    on_b.cookies = on_a.cookies.clone();
    let done = on_b.get(&back.replace(&callback_base, &b.url)).await;
    assert_signed_in_to_the_ui(&done);
    assert!(done.set_cookies.iter().any(|c| c.starts_with("portcullis_session=")), "{:?}", done.set_cookies);
    let replay = on_a.get(&back.replace(&callback_base, &a.url)).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED, "{}", replay.body);
    assert!(replay.body.contains("already used"), "{}", replay.body);

    // Device flow: started on A; a poll on B right after one on A is told to slow down.
    let (status, body) = a.post_json(None, "/v1/auth/oidc/device", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let start: DeviceStart = serde_json::from_value(body).unwrap();
    async fn poll(ca: &ServedCa, handle: &str) -> DevicePoll {
        let (status, body) = ca.post_json(None, "/v1/auth/oidc/device/poll", &json!({ "handle": handle })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_value(body).unwrap()
    }
    assert!(matches!(poll(a, start.handle.expose()).await, DevicePoll::Pending { .. }));
    assert!(matches!(poll(b, start.handle.expose()).await, DevicePoll::SlowDown { .. }));
    approve_device(&idp, &start, "bob", "bob-password", false).await;
    let mut done = None;
    for i in 0..20 {
        tokio::time::sleep(Duration::from_secs(start.interval.min(6))).await;
        match poll(if i % 2 == 0 { b } else { a }, start.handle.expose()).await {
            DevicePoll::Pending { .. } | DevicePoll::SlowDown { .. } => {}
            other => {
                done = Some(other);
                break;
            }
        }
    }
    let Some(DevicePoll::Success(session)) = done else { panic!("the device sign-in did not succeed: {done:?}") };
    assert_eq!(session.username, "oidc:bob");
    // Finished: the handle is gone on both.
    let (status, _) = a.post_json(None, "/v1/auth/oidc/device/poll", &json!({ "handle": start.handle })).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
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
    assert!(done.set_cookies.iter().any(|c| c.starts_with("portcullis_session=")), "{:?}", done.set_cookies);
    // Door 2's callback taken to door 1 (even with door 2's binding cookie) signs nobody
    // in: the code was issued for door 2's callback.
    let (second, callback) = pending.remove(0);
    let mut elsewhere = pinned_browser(&pins[0]);
    elsewhere.cookies = second.cookies.clone();
    let moved = elsewhere.get(&callback.replace(&doors[1], &doors[0])).await;
    assert_ne!(moved.status, StatusCode::OK, "{}", moved.body);
    assert!(moved.set_cookies.iter().all(|c| !c.starts_with("portcullis_session=")), "{:?}", moved.set_cookies);

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
