//! The `portcullis` CLI against a CA that has been taken over (or answers wrongly): the
//! user's machine must not become the attacker's. A small HTTPS server stands in for the
//! CA (pinned, as a user would pin the real one) and answers the login with what an
//! attacker would send; the real CLI binary runs against it with a throwaway `HOME`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_tests::cli::portcullis;
use portcullis_tests::ssh::{ed25519_key, public_line};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

/// What the stand-in CA answers to a request for `path`: status and JSON.
type Answer = Arc<dyn Fn(&str) -> (u16, Value) + Send + Sync>;

/// The CA's own HTTPS server (`portcullis_ca::server::serve`, a bootstrap certificate)
/// on a loopback port, answering every request with `answer`; returns its URL and pin.
async fn hostile_ca(answer: Answer) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let tls = portcullis_ca::tls::bootstrap_tls(dir.path(), &["127.0.0.1".to_owned()]).unwrap();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| async move {
        let (status, reply) = answer(uri.path());
        (axum::http::StatusCode::from_u16(status).unwrap(), axum::Json(reply))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    // Never shut down: the server (and its certificate's directory) lives with the test.
    tokio::spawn(portcullis_ca::server::serve(listener, tls.config, app, Default::default(), async move {
        let _dir = dir;
        std::future::pending::<()>().await;
    }));
    (url, tls.pin)
}

/// `portcullis login` as alice against the stand-in CA, with `home` as `HOME`.
fn login(home: &Path, url: &str, pin: &str) -> Output {
    let args = ["login", "--ca", url, "--ca-fingerprint", pin, "--user", "alice", "--password-stdin"];
    portcullis(home, &args, "a password\n")
}

/// A certificate for `key_line` signed by a throwaway CA key, in `-cert.pub` form.
fn certificate_for(key_line: &str) -> String {
    let key = ssh_key::PublicKey::from_openssh(key_line).unwrap();
    let ca = ed25519_key();
    let mut builder = ssh_key::certificate::Builder::new_with_random_nonce(
        &mut ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng),
        key.key_data().clone(),
        0,
        u64::MAX - 1,
    )
    .unwrap();
    builder.cert_type(ssh_key::certificate::CertType::User).unwrap();
    builder.valid_principal("pn_ops_root").unwrap();
    builder.key_id("user:alice").unwrap();
    builder.sign(&ca).unwrap().to_openssh().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A user name with a line break would put a directive of the attacker's into the
/// `~/.ssh/config` that `portcullis ssh-config` writes (`User alice` then
/// `ProxyCommand …`, run by every later `ssh`): the login is refused and nothing is
/// saved, and the refusal shows the name without its control characters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_name_that_would_inject_ssh_configuration_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let answer: Answer = Arc::new(|path| match path {
        "/v1/auth/login" => (
            200,
            json!({"token": "t0ken", "username": "alice\n  ProxyCommand touch /tmp/pwned\u{1b}]0;x\u{7}", "expires_at": u64::MAX / 2}),
        ),
        _ => (404, json!({"error": "not_found", "message": "no"})),
    });
    let (url, pin) = hostile_ca(answer).await;
    let out = login(home.path(), &url, &pin);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("which is not a user name; nothing was saved"), "{}", stderr(&out));
    assert!(!stderr(&out).chars().any(|c| c.is_control() && c != '\n'), "{:?}", stderr(&out));
    let dir = home.path().join(".ssh/portcullis");
    assert!(!dir.join("session.json").exists(), "the session was saved");
    assert!(!dir.join("id_ed25519-cert.pub").exists(), "a certificate was asked for and written");
}

/// A certificate for another key (or a host certificate) is not written where ssh would
/// take it for the user's own: the login fails and leaves no certificate file. And the
/// CA's refusal text reaches the terminal without its escape sequences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_key_is_not_written_and_refusals_are_shown_inert() {
    let home = tempfile::tempdir().unwrap();
    let answer: Answer = Arc::new(|path| match path {
        "/v1/auth/login" => (200, json!({"token": "t0ken", "username": "alice", "expires_at": u64::MAX / 2})),
        "/v1/certs/user" => {
            let other = public_line(&ed25519_key());
            (
                200,
                json!({"certificate": certificate_for(&other), "serial": "1", "key_id": "user:alice",
                       "principals": ["pn_ops_root"], "valid_after": 0, "valid_before": u64::MAX - 1}),
            )
        }
        _ => (404, json!({"error": "not_found", "message": "no"})),
    });
    let (url, pin) = hostile_ca(answer).await;
    let out = login(home.path(), &url, &pin);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("a certificate for another key; nothing was written"), "{}", stderr(&out));
    assert!(!home.path().join(".ssh/portcullis/id_ed25519-cert.pub").exists(), "the certificate was written");

    let refusing: Answer = Arc::new(|_| {
        (
            403,
            json!({"error": "denied\u{1b}[8m", "message": "open \u{1b}]8;;https://evil.example/\u{7}https://sso.example/\u{1b}]8;;\u{7}"}),
        )
    });
    let (url, pin) = hostile_ca(refusing).await;
    let out = login(home.path(), &url, &pin);
    assert!(!out.status.success(), "{}", stderr(&out));
    let shown = stderr(&out);
    assert!(shown.contains("https://sso.example/") && !shown.contains('\u{1b}'), "{shown:?}");
}

/// Single sign-on: what the identity provider (through the CA) says to show — where to
/// sign in, the code — reaches the terminal without escape sequences (an OSC 8 link
/// could show the real address and open the attacker's), and numbers the CLI waits by
/// are clamped (an `expires_in` near `u64::MAX` made it panic computing its deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_prompt_from_the_ca_is_shown_inert_and_its_numbers_are_clamped() {
    let home = tempfile::tempdir().unwrap();
    let answer: Answer = Arc::new(|path| match path {
        "/v1/auth/oidc/device" => (
            200,
            json!({"handle": "h", "user_code": "WDJB\u{1b}[8m-MJHT",
                   "verification_uri": "\u{1b}]8;;https://evil.example/\u{7}https://sso.example/device\u{1b}]8;;\u{7}",
                   "interval": 1, "expires_in": u64::MAX}),
        ),
        "/v1/auth/oidc/device/poll" => (200, json!({"status": "access_denied"})),
        _ => (404, json!({"error": "not_found", "message": "no"})),
    });
    let (url, pin) = hostile_ca(answer).await;
    let out = portcullis(home.path(), &["login", "--ca", &url, "--ca-fingerprint", &pin, "--oidc"], "");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(stderr(&out).contains("sign-in was refused at the identity provider"), "{}\n{shown}", stderr(&out));
    assert!(shown.contains("https://sso.example/device") && shown.contains("-MJHT"), "{shown:?}");
    assert!(!shown.contains('\u{1b}') && !shown.contains('\u{7}'), "{shown:?}");
}
