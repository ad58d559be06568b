//! One-time passwords, from the attacker's side and the operator's: the first
//! administrator's generated password (and an administrator's reset) opens no session
//! and works for exactly one sign-in, which chooses the user's own password; the file
//! holding the generated password is deleted when it is used. Driven through real
//! `portcullisd` and the real `portcullis` CLI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_tests::cli::{portcullis, text};
use portcullis_tests::{Server, ca_in_process, sqlite_url};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;

async fn sign_in(server: &Server, body: Value) -> (StatusCode, Value) {
    server.post_json(None, "/v1/auth/login", &body).await
}

fn changes_of(records: &[portcullis_proto::AuditRecord], user: &str) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.payload["username"] == user)
        .map(|r| r.payload["change"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_administrators_password_opens_one_sign_in_that_replaces_it() {
    let server = Server::start().await;
    let file = server.data_dir.join("initial-admin-password");
    let one_time = server.initial_admin_password.clone();
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(server.stdout().contains("It opens no session"), "{}", server.stdout());

    // Alone, the one-time password opens nothing — however often it is tried (a right
    // password is not a failed guess, so this never locks the administrator out).
    for _ in 0..3 {
        let (status, body) = sign_in(&server, json!({"username": "admin", "password": one_time})).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"], "password_change_required", "{body}");
        assert!(body.get("token").is_none(), "{body}");
    }
    // The browser sign-in sets no cookie for it either.
    let resp = server
        .request(
            reqwest::Method::POST,
            None,
            "/v1/auth/browser-login",
            Some(&json!({"username": "admin", "password": one_time})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get(reqwest::header::SET_COOKIE).is_none(), "a one-time password got a cookie");

    // A replacement needs the current password, a new one that follows the rule and
    // differs, and a local account.
    let own = server.admin_password_to_choose().to_owned();
    let refusals = [
        (
            json!({"username": "admin", "password": "not-the-one-time-password", "new_password": own}),
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        ),
        (
            json!({"username": "admin", "password": one_time, "new_password": "short"}),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            json!({"username": "admin", "password": one_time, "new_password": one_time}),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            json!({"username": "ldap:admin", "password": one_time, "new_password": own}),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (body, status, code) in refusals {
        let (got, answer) = sign_in(&server, body.clone()).await;
        assert_eq!((got, answer["error"].as_str().unwrap()), (status, code), "{body} → {answer}");
    }
    assert!(file.exists(), "the file went before the password was replaced");

    // Positive control: the sign-in that replaces it opens a session.
    let (status, body) =
        sign_in(&server, json!({"username": "admin", "password": one_time, "new_password": own})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(server.whoami(&token).await.0, StatusCode::OK);
    assert!(!file.exists(), "the used one-time password file is still on disk");

    // The one-time password is dead, with or without a new one; the chosen one works.
    for body in [
        json!({"username": "admin", "password": one_time}),
        json!({"username": "admin", "password": one_time, "new_password": "yet-another-password"}),
    ] {
        let (status, answer) = sign_in(&server, body).await;
        assert_eq!((status, answer["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_credentials")));
    }
    server.login("admin", &own).await;
    server.admin_token().await;

    let failed = server.audit_events("login_failed").await;
    assert!(failed.iter().any(|r| r.payload["reason"] == "password_change_required"), "{failed:?}");
    let changed = server.audit_events("user_changed").await;
    assert_eq!(changes_of(&changed, "admin"), ["bootstrap_admin_created", "one_time_password_replaced"]);
    let trail = serde_json::to_string(&server.audit().await.iter().map(|r| &r.payload).collect::<Vec<_>>()).unwrap();
    assert!(!trail.contains(&one_time) && !trail.contains(&own), "a password reached the audit trail");
    assert!(!server.log().contains(&one_time) && !server.log().contains(&own), "a password reached the log");
}

/// An administrator's reset is a one-time password too: it ends the user's sessions,
/// and the user's next `portcullis login` asks for their own password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_is_one_time_and_the_cli_asks_for_a_new_password() {
    let server = Server::start().await;
    let admin = server.admin_token().await;
    server.add_user(&admin, "bob", &["portcullis-admins"], "bob-original-password").await;
    let bob_session = server.login("bob", "bob-original-password").await;

    let admin_home = tempfile::tempdir().unwrap();
    let login = ["login", "--ca", &server.url, "--ca-fingerprint", &server.pin, "--password-stdin", "--user"];
    let admin_password = server.admin_password().await;
    let out = portcullis(admin_home.path(), &[&login[..], &["admin"]].concat(), &format!("{admin_password}\n"));
    assert!(out.status.success(), "{}", text(&out));
    let reset = ["admin", "user", "set-password", "bob", "--one-time", "--password-stdin"];
    let out = portcullis(admin_home.path(), &reset, "bob-temporary-pass\n");
    assert!(out.status.success() && text(&out).contains("One-time password set for bob"), "{}", text(&out));

    // bob's session ended with the reset; the temporary password alone opens nothing.
    assert_eq!(server.whoami(&bob_session).await.0, StatusCode::UNAUTHORIZED);
    let (status, body) = server.try_login("bob", "bob-temporary-pass").await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("password_change_required")));

    // The CLI is told, and reads the new password as the next line.
    let bob_home = tempfile::tempdir().unwrap();
    let bob_login = [&login[..], &["bob"]].concat();
    let out = portcullis(bob_home.path(), &bob_login, "bob-temporary-pass\nbob-own-password-1\n");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("for one sign-in only") && text(&out).contains("Logged in"), "{}", text(&out));
    assert_eq!(server.try_login("bob", "bob-temporary-pass").await.0, StatusCode::UNAUTHORIZED);
    server.login("bob", "bob-own-password-1").await;

    // Any local user may change their own password, proving the current one.
    let change = [&bob_login[..], &["--change-password"]].concat();
    let out = portcullis(bob_home.path(), &change, "wrong-current-password\nbob-own-password-2\n");
    assert!(!out.status.success(), "{}", text(&out));
    let out = portcullis(bob_home.path(), &change, "bob-own-password-1\nbob-own-password-2\n");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(server.try_login("bob", "bob-own-password-1").await.0, StatusCode::UNAUTHORIZED);
    server.login("bob", "bob-own-password-2").await;

    let changed = server.audit_events("user_changed").await;
    assert_eq!(
        changes_of(&changed, "bob"),
        ["added", "one_time_password_set", "one_time_password_replaced", "password_changed"]
    );
}

/// The generated password's file goes when the password is replaced — also when that
/// happened while this process was not running (another replica, before a restart),
/// and a copy put back later (a restored backup) is removed at the next start.
#[tokio::test]
async fn the_initial_password_file_goes_once_the_password_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("policy.toml"), "").unwrap();
    let url = sqlite_url(dir.path());
    let file = dir.path().join("initial-admin-password");
    let ca = ca_in_process(&url, &policy_dir, portcullis_ca::SystemClock).await.unwrap();
    let one_time = ca.identity().bootstrap_admin("admin", "admins").await.unwrap().unwrap();
    assert!(
        ca.identity().bootstrap_admin("admin", "admins").await.unwrap().is_none(),
        "a second admin on the next start"
    );
    std::fs::write(&file, "x").unwrap();
    assert!(ca.identity().forget_initial_password_when_replaced("admin", file.clone()).await.unwrap());
    assert!(file.exists(), "the file went before the password was used");
    drop(ca);

    // Replaced by a process that was told nothing about the file: it stays for now...
    let other = ca_in_process(&url, &policy_dir, portcullis_ca::SystemClock).await.unwrap();
    let own = SecretString::from("admin-own-password");
    other.identity().login_replacing_password("admin", None, &one_time, &own, "127.0.0.1").await.unwrap();
    assert!(file.exists());
    // ...and goes at the next start.
    let ca = ca_in_process(&url, &policy_dir, portcullis_ca::SystemClock).await.unwrap();
    assert!(!ca.identity().forget_initial_password_when_replaced("admin", file.clone()).await.unwrap());
    assert!(!file.exists(), "a used one-time password file survived a restart");
}
