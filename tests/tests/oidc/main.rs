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
    let cookie = page.set_cookies.iter().find(|c| c.starts_with("__Host-portcullis_session=")).expect("session cookie");
    cookie.split(';').next().unwrap().trim_start_matches("__Host-portcullis_session=").to_owned()
}

mod accounts;
mod browser;
mod device;
