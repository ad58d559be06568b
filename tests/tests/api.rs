//! The HTTPS API of a real `portcullisd all-in-one`, driven as a client would: bad input
//! gets a clear, sanitized JSON error (never a panic, never an echo of the input),
//! authentication and authorization hold, and each refusal leaves an audit record.

// Test code: a failed expectation must fail the test, so unwrap/expect/panic/indexing
// are the right tools here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_proto::AuditRecord;
use portcullis_tests::Server;
use portcullis_tests::server::{client_with_pin, write_file};
use portcullis_tests::ssh::{ed25519_key, krl_revokes, path_str, public_line, ssh_keygen, ssh_keygen_public_line};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde_json::{Value, json};

const ALICE_PASSWORD: &str = "alice-correct-horse-battery";
/// A wrong password with a marker that must never show up in any output.
const WRONG_PASSWORD: &str = "WRONG-pw-marker-7c1f9e2a";

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_else(|| panic!("no message in {body}"))
}

/// Asserts a sanitized error body: a stable code, a message, and nothing else.
fn assert_api_error(status: StatusCode, body: &Value, want_status: StatusCode, code: &str) {
    assert_eq!(status, want_status, "body: {body}");
    assert_eq!(body["error"], code, "body: {body}");
    assert!(!message(body).is_empty());
    assert_eq!(body.as_object().unwrap().len(), 2, "only error and message: {body}");
}

fn reasons(records: &[AuditRecord]) -> Vec<String> {
    records.iter().map(|r| r.payload["reason"].as_str().unwrap_or("").to_owned()).collect()
}

/// Posts raw bytes as JSON (or with another content type), bypassing serde.
async fn post_raw(
    server: &Server,
    token: Option<&str>,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let mut req = server.client().post(server.endpoint(path)).body(body);
    if let Some(ct) = content_type {
        req = req.header(CONTENT_TYPE, ct);
    }
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("status {status}: error body is not JSON: {text:?}"));
    (status, value)
}

async fn assert_alive(server: &Server) {
    let (status, text) = server.get_text(None, "/v1/health").await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "ok"));
    assert!(!server.log().contains("panicked"), "server log: {}", server.log());
}

#[tokio::test]
async fn malformed_bodies_get_sanitized_400s() {
    let server = Server::start().await;
    let admin = server.admin_token().await;
    const MARKER: &str = "ECHO-MARKER-51d0";
    let json = Some("application/json");

    // Truncated JSON.
    let (status, body) = post_raw(&server, None, "/v1/auth/login", json, format!(r#"{{"username": "{MARKER}"#)).await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    assert!(!body.to_string().contains(MARKER), "input echoed: {body}");

    // Wrong type.
    let (status, body) = post_raw(&server, None, "/v1/auth/login", json, r#"{"username": 5, "password": "x"}"#).await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");

    // Unknown fields are refused, not ignored: a client cannot ask for principals.
    let (status, body) = server
        .post_json(
            None,
            "/v1/auth/login",
            &json!({"username": "admin", "password": server.admin_password().await, MARKER: true}),
        )
        .await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    assert!(!body.to_string().contains(MARKER), "input echoed: {body}");
    let (status, body) = server
        .post_json(
            Some(&admin),
            "/v1/certs/user",
            &json!({"public_key": public_line(&ed25519_key()), "principals": ["root"]}),
        )
        .await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");

    // No JSON content type.
    let (status, body) =
        post_raw(&server, None, "/v1/auth/login", Some("text/plain"), r#"{"username": "admin", "password": "x"}"#)
            .await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    assert!(message(&body).contains("Content-Type"), "{body}");

    // Over the 64 KiB limit.
    let big = json!({"username": "admin", "password": "p".repeat(70 * 1024)}).to_string();
    let (status, body) = post_raw(&server, None, "/v1/auth/login", json, big).await;
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE,
        "oversized body: {status} {body}"
    );
    assert!(message(&body).contains("too large"), "{body}");
    let (status, body) = post_raw(
        &server,
        Some(&admin),
        "/v1/certs/user",
        json,
        json!({"public_key": "x".repeat(100 * 1024)}).to_string(),
    )
    .await;
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE,
        "oversized body: {status} {body}"
    );

    // Unknown route: JSON error too.
    let (status, body) = server.get_json(None, "/v1/no-such-route").await;
    assert_api_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    assert_alive(&server).await;
}

#[tokio::test]
async fn bad_public_keys_are_refused_clearly_and_audited() {
    let server = Server::start().await;
    let admin = server.admin_token().await;
    let keys = tempfile::tempdir().unwrap();

    // A real certificate, to submit where a key belongs.
    let (status, issued) = server.issue_cert(&admin, &public_line(&ed25519_key())).await;
    assert_eq!(status, StatusCode::OK, "{issued}");
    let certificate = issued["certificate"].as_str().unwrap().to_owned();

    const MARKER: &str = "KEY-MARKER-0b7e";
    let cases: Vec<(&str, String, &str)> = vec![
        ("empty", String::new(), "empty"),
        ("garbage", format!("{MARKER} garbage"), "allow-list"),
        ("one word", MARKER.to_owned(), "not a well-formed"),
        ("bad base64", format!("ssh-ed25519 !!{MARKER}!! comment"), "not a well-formed"),
        ("DSA", ssh_keygen_public_line(keys.path(), "dsa", "dsa", None), "ssh-dss"),
        ("RSA-2048", ssh_keygen_public_line(keys.path(), "rsa", "rsa", Some(2048)), "2048 bits; at least 3072"),
        ("certificate", certificate, "this is a certificate"),
        (
            "private key",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----".into(),
            "private key",
        ),
        ("too long", "A".repeat(20 * 1024), "longer than"),
    ];
    for (what, key, expected) in &cases {
        let (status, body) = server.issue_cert(&admin, key).await;
        assert_api_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
        assert!(message(&body).contains(expected), "{what}: expected {expected:?} in {body}");
        assert!(!body.to_string().contains(MARKER), "{what}: input echoed: {body}");
    }

    let denied = server.audit_events("cert_denied").await;
    assert_eq!(denied.len(), cases.len(), "one cert_denied per refusal: {denied:?}");
    let reasons: std::collections::BTreeSet<_> = denied.iter().filter_map(|r| r.payload["reason"].as_str()).collect();
    assert!(reasons.contains("key_rsa_too_small") && reasons.contains("key_is_certificate"), "{reasons:?}");
    for record in &denied {
        // The specific refusal (key_malformed, key_rsa_too_small, …), never a free-text echo.
        let reason = record.payload["reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with("key_"), "{record:?}");
        assert_eq!(record.payload["username"], "admin");
        assert!(!record.payload.to_string().contains(MARKER));
    }
    assert_eq!(server.audit_events("cert_issued").await.len(), 1);
    assert_alive(&server).await;
}

#[tokio::test]
async fn unknown_user_and_wrong_password_look_the_same_and_are_audited() {
    let server = Server::start().await;
    let admin = server.admin_token().await;
    server.add_user(&admin, "alice", &["staff"], ALICE_PASSWORD).await;

    let (status_unknown, body_unknown) = server.try_login("nobody", WRONG_PASSWORD).await;
    let (status_wrong, body_wrong) = server.try_login("alice", WRONG_PASSWORD).await;
    assert_api_error(status_unknown, &body_unknown, StatusCode::UNAUTHORIZED, "invalid_credentials");
    assert_eq!(status_wrong, status_unknown);
    assert_eq!(body_wrong, body_unknown, "no user enumeration through messages");

    let (status, body) = server.try_login("alice", "").await;
    assert_api_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_credentials");
    server.login("alice", ALICE_PASSWORD).await;

    let failed = server.audit_events("login_failed").await;
    let mut got = reasons(&failed);
    got.sort();
    assert_eq!(got, ["bad_credentials", "empty_password", "unknown_user"], "{failed:?}");
    let by_user = |name: &str| failed.iter().filter(|r| r.payload["username"] == name).count();
    assert_eq!((by_user("nobody"), by_user("alice")), (1, 2));

    let (status, raw_audit) = server.get_text(Some(&admin), "/v1/admin/audit?limit=1000").await;
    assert_eq!(status, StatusCode::OK);
    assert!(raw_audit.contains("login_failed"), "the audit text was read");
    assert!(!raw_audit.contains(WRONG_PASSWORD), "a password reached the audit log");
    assert!(!raw_audit.contains(ALICE_PASSWORD), "a password reached the audit log");
    assert!(!server.log().contains(WRONG_PASSWORD), "a password reached the server log");
}

#[tokio::test]
async fn repeated_login_failures_from_one_address_back_off() {
    let server = Server::start().await;
    let admin = server.admin_token().await;
    server.add_user(&admin, "alice", &["staff"], ALICE_PASSWORD).await;
    // A few failures are free (typos); then the address backs off, growing with each
    // further failure (see ca/src/ratelimit.rs).
    let mut failures = 0;
    loop {
        let (status, body) = server.try_login("alice", WRONG_PASSWORD).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED, "failure {failures}: {body}");
        failures += 1;
        assert!(failures <= 10, "ten failures from one address and no back-off");
    }
    assert!(failures >= 5, "backed off after only {failures} failures");
    let to = &server;
    let attempt = move |password: &'static str| {
        let body = json!({"username": "alice", "password": password});
        async move { to.request(reqwest::Method::POST, None, "/v1/auth/login", Some(&body)).await }
    };
    // Grow the back-off to a few seconds — each failure once it has run out doubles it —
    // so that the right password below arrives well within it even on a loaded machine.
    let mut retry_after = 0;
    for _ in 0..20 {
        let resp = attempt(WRONG_PASSWORD).await;
        if resp.status() == StatusCode::UNAUTHORIZED {
            continue; // the back-off had run out: this failure doubled it
        }
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        retry_after =
            resp.headers().get(RETRY_AFTER).expect("429 carries Retry-After").to_str().unwrap().parse().unwrap();
        assert!((1..=900).contains(&retry_after), "Retry-After: {retry_after}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "rate_limited");
        if retry_after >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(retry_after)).await;
    }
    assert!(retry_after >= 4, "the back-off never grew");
    // Backed off, even the right password is not tried.
    let resp = attempt(ALICE_PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "the right password during the back-off");
    // The back-off is per user and address: the administrator still logs in from here.
    server.login("admin", &server.admin_password().await).await;
    let failed = server.audit_events("login_failed").await;
    assert!(reasons(&failed).iter().any(|r| r == "rate_limited"), "{failed:?}");
}

#[tokio::test]
async fn requests_need_a_valid_bearer_token() {
    let server = Server::start().await;
    let admin = server.admin_token().await;
    for path in ["/v1/auth/whoami", "/v1/admin/users", "/v1/admin/audit"] {
        let (status, body) = server.get_json(None, path).await;
        assert_api_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
        let (status, body) = server.get_json(Some("pcs_not-a-real-token"), path).await;
        assert_api_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
        let resp = server
            .client()
            .get(server.endpoint(path))
            .header("Authorization", format!("Basic {admin}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path} with Basic");
        let (status, body) = server.get_json(Some(&admin), path).await;
        assert_eq!(status, StatusCode::OK, "{path} with the real token: {body}");
        // No browser or proxy keeps an answer that names users or audit records.
        let resp = server.client().get(server.endpoint(path)).bearer_auth(&admin).send().await.unwrap();
        assert_eq!(resp.headers()[reqwest::header::CACHE_CONTROL], "no-store", "{path}");
    }
    let (status, body) = server.issue_cert("garbage", &public_line(&ed25519_key())).await;
    assert_api_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");

    // A logged-out token is dead.
    let (status, _) = server.post_json(Some(&admin), "/v1/auth/logout", &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.get_json(Some(&admin), "/v1/auth/whoami").await;
    assert_api_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn non_admins_get_403_on_admin_routes() {
    let server = Server::start().await;
    let admin = server.admin_token().await;
    server.add_user(&admin, "alice", &["staff"], ALICE_PASSWORD).await;
    let alice = server.login("alice", ALICE_PASSWORD).await;
    let (status, me) = server.get_json(Some(&alice), "/v1/auth/whoami").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["username"], "alice");

    let gets = [
        "/v1/admin/users",
        "/v1/admin/audit",
        "/v1/admin/audit/verify",
        "/v1/admin/certs",
        "/v1/admin/ca/keys",
        "/v1/admin/nodes",
    ];
    for path in gets {
        let (status, body) = server.get_json(Some(&alice), path).await;
        assert_api_error(status, &body, StatusCode::FORBIDDEN, "denied");
        let (status, body) = server.get_json(Some(&admin), path).await;
        assert_eq!(status, StatusCode::OK, "admin on {path}: {body}");
    }
    let posts = [
        ("/v1/admin/users", json!({"username": "mallory", "groups": ["portcullis-admins"]})),
        ("/v1/admin/revoke", json!({"username": "admin"})),
        ("/v1/admin/policy/reload", json!({})),
        ("/v1/admin/ca/user/rotate", json!({})),
        ("/v1/admin/users/admin/disable", json!({})),
    ];
    for (path, body) in &posts {
        let (status, resp) = server.post_json(Some(&alice), path, body).await;
        assert_api_error(status, &resp, StatusCode::FORBIDDEN, "denied");
    }
    let (status, body) =
        server.put_json(Some(&alice), "/v1/admin/users/alice/groups", &json!({"groups": ["portcullis-admins"]})).await;
    assert_api_error(status, &body, StatusCode::FORBIDDEN, "denied");

    // None of it happened.
    let (_, users) = server.get_json(Some(&admin), "/v1/admin/users").await;
    assert_eq!(users.as_array().unwrap().len(), 2, "{users}");
    let (_, me) = server.get_json(Some(&alice), "/v1/auth/whoami").await;
    assert_eq!(me["groups"], json!(["staff"]));
    let (_, keys) = server.get_json(Some(&admin), "/v1/admin/ca/keys").await;
    assert!(keys.as_array().unwrap().iter().all(|k| k["state"] != "pending"), "{keys}");
    let (status, _) = server.get_json(Some(&admin), "/v1/auth/whoami").await;
    assert_eq!(status, StatusCode::OK, "the admin was not revoked or disabled");
}

/// Managing users is no way to more control of Portcullis: a help desk holding only
/// `users.manage` can make users and give them access to devices, but not give anyone —
/// itself included — an administrative permission it does not hold, nor reset the
/// password of (or disable, or regroup) a user who holds one. Until 2026-12-05 it could
/// add itself to the administrators' group (found in review).
#[tokio::test]
async fn a_user_manager_cannot_make_anyone_more_powerful_than_itself() {
    let server = Server::start().await;
    let admin = server.admin_token().await;
    let helpdesk = "[[role]]\nname = \"helpdesk\"\npermissions = [\"users.manage\"]\n\n\
                    [[role]]\nname = \"staff-ssh\"\nlogins = [\"deploy\"]\ntargets = 'in:devices tags.env:lab'\n\
                    permissions = [\"certs.issue\"]\n\n\
                    [[binding]]\ngroup = \"helpdesk\"\nroles = [\"helpdesk\"]\n\n\
                    [[binding]]\ngroup = \"staff\"\nroles = [\"staff-ssh\"]\n";
    let (status, body) = server.write_policy("helpdesk.toml", helpdesk).await;
    assert!(status.is_success(), "{body}");
    server.add_user(&admin, "helen", &["helpdesk"], ALICE_PASSWORD).await;
    let helen = server.login("helen", ALICE_PASSWORD).await;

    let refused = [
        server
            .post_json(
                Some(&helen),
                "/v1/admin/users",
                &json!({"username": "mallory", "groups": ["portcullis-admins"]}),
            )
            .await,
        server
            .put_json(
                Some(&helen),
                "/v1/admin/users/helen/groups",
                &json!({"groups": ["helpdesk", "portcullis-admins"]}),
            )
            .await,
        server
            .put_json(Some(&helen), "/v1/admin/users/admin/password", &json!({"password": "a new password for admin"}))
            .await,
        server.post_json(Some(&helen), "/v1/admin/users/admin/disable", &json!({})).await,
        server.put_json(Some(&helen), "/v1/admin/users/admin/groups", &json!({"groups": []})).await,
    ];
    for (status, body) in &refused {
        assert_api_error(*status, body, StatusCode::FORBIDDEN, "forbidden");
    }
    let (_, me) = server.get_json(Some(&helen), "/v1/auth/whoami").await;
    assert_eq!(me["groups"], json!(["helpdesk"]));
    let (status, _) = server.get_json(Some(&admin), "/v1/auth/whoami").await;
    assert_eq!(status, StatusCode::OK, "the admin was not disabled");
    server.login("admin", &server.admin_password().await).await;

    // What a help desk is for: users with access to devices, and their passwords.
    let (status, body) =
        server.post_json(Some(&helen), "/v1/admin/users", &json!({"username": "sam", "groups": ["staff"]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) =
        server.put_json(Some(&helen), "/v1/admin/users/sam/password", &json!({"password": "sam's new password"})).await;
    assert!(status.is_success(), "{body}");
}

#[tokio::test]
async fn a_client_with_the_wrong_pin_refuses_to_connect() {
    let server = Server::start().await;
    let wrong = portcullis_proto::pin::pin_of_spki(b"some other public key");
    assert_ne!(wrong, server.pin);
    let result = client_with_pin(&wrong).get(server.endpoint("/v1/health")).send().await;
    let err = result.expect_err("a mismatched pin must fail the TLS handshake");
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    // The same request with the right pin works, so the failure above was the pin.
    let ok = client_with_pin(&server.pin).get(server.endpoint("/v1/health")).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn krl_endpoint_serves_a_krl_that_ssh_keygen_reads() {
    let server = Server::start().await;
    let admin = server.admin_token().await;
    let dir = tempfile::tempdir().unwrap();

    let (status, empty) = server.get_bytes(None, "/v1/krl").await;
    assert_eq!(status, StatusCode::OK);
    let empty_krl = write_file(dir.path(), "empty.krl", &empty);
    let out = ssh_keygen(&["-Q", "-l", "-f", path_str(&empty_krl)]);
    assert!(out.status.success(), "ssh-keygen -Q -l rejects the KRL: {}", String::from_utf8_lossy(&out.stderr));

    let (status, issued) = server.issue_cert(&admin, &public_line(&ed25519_key())).await;
    assert_eq!(status, StatusCode::OK, "{issued}");
    let cert = write_file(dir.path(), "id-cert.pub", format!("{}\n", issued["certificate"].as_str().unwrap()));
    assert!(!krl_revokes(&empty_krl, &cert));
    let serial = issued["serial"].as_str().unwrap();
    let (status, body) = server.post_json(Some(&admin), "/v1/admin/revoke", &json!({"serial": serial})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["certificates_revoked"], 1);

    let (_, bytes) = server.get_bytes(None, "/v1/krl").await;
    let krl = write_file(dir.path(), "revoked.krl", &bytes);
    let out = ssh_keygen(&["-Q", "-l", "-f", path_str(&krl)]);
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains(serial), "serial {serial} not listed:\n{listing}");
    assert!(krl_revokes(&krl, &cert), "ssh-keygen -Q finds the revoked certificate");

    // The key the CA signs user certificates with is not revoked while it signs: every
    // node would refuse every certificate (and refuse such a KRL, so revocations would
    // stop reaching them). The refusal says to rotate first.
    let (status, keys) = server.get_text(None, "/v1/ca/user/keys").await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    let signing = keys.lines().find(|l| !l.trim().is_empty()).unwrap();
    let (status, body) = server.post_json(Some(&admin), "/v1/admin/revoke", &json!({"public_key": signing})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["message"].as_str().unwrap().contains("rotate it first"), "{body}");
}

const BROKEN_DEFAULT: &str = r#"# line 1
[[role]]
name = "portcullis-admin"
permisions = ["users.manage"]
"#;

const EXTRA_POLICY: &str = r#"
[[role]]
name = "auditor"
permissions = ["audit.read"]

[[binding]]
group = "auditors"
roles = ["auditor"]
"#;

#[tokio::test]
async fn a_broken_policy_is_refused_and_the_old_one_stays_in_force() {
    let server = Server::start().await;
    let admin = server.admin_token().await;

    // Replace the whole default policy with a broken file: were any of it applied,
    // the admin would lose both certificate and admin rights.
    let (status, body) = server.write_policy("default.toml", BROKEN_DEFAULT).await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    assert!(message(&body).contains("default.toml:4"), "the error names file:line: {body}");
    let (status, issued) = server.issue_cert(&admin, &public_line(&ed25519_key())).await;
    assert_eq!(status, StatusCode::OK, "old policy still grants certs: {issued}");
    let (status, _) = server.get_json(Some(&admin), "/v1/admin/users").await;
    assert_eq!(status, StatusCode::OK, "old policy still grants admin");
    let rejected = server.audit_events("policy_rejected").await;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].payload["actor"], "admin");
    assert!(server.audit_events("policy_changed").await.is_empty());

    // Fix it and add a file: the change is applied and its diff audited.
    std::fs::write(server.policy_dir().join("default.toml"), portcullis_ca::policy_files::DEFAULT_POLICY).unwrap();
    let (status, body) = server.write_policy("extra.toml", EXTRA_POLICY).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["changed"], true);
    let added: Vec<&str> = body["added"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(added.contains(&"role:auditor"), "{body}");
    assert!(added.contains(&"binding:group:auditors"), "{body}");
    let changed = server.audit_events("policy_changed").await;
    assert_eq!(changed.len(), 1, "{changed:?}");
    let payload = &changed[0].payload;
    assert_eq!(payload["actor"], "admin");
    assert!(payload["added"].as_array().unwrap().contains(&json!("role:auditor")), "{payload}");
    assert_ne!(payload["digest_before"], payload["digest_after"]);

    // The new role works: an auditor can read the audit log and nothing else.
    server.add_user(&admin, "audrey", &["auditors"], ALICE_PASSWORD).await;
    let audrey = server.login("audrey", ALICE_PASSWORD).await;
    let (status, _) = server.get_json(Some(&audrey), "/v1/admin/audit").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.get_json(Some(&audrey), "/v1/admin/users").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// A user may revoke their own certificates (what `portcullis logout` does) and nobody
/// else's: another user's serial is "not found" exactly like an unknown one, and stays
/// valid.
#[tokio::test]
async fn users_revoke_their_own_certificates_and_nobody_elses() {
    let server = Server::start().await;
    let admin = server.admin_token().await;
    server.add_user(&admin, "bob", &["portcullis-admins"], ALICE_PASSWORD).await;
    let bob = server.login("bob", ALICE_PASSWORD).await;
    let serial = |body: Value| body["serial"].as_str().unwrap().to_owned();
    let (status, body) = server.issue_cert(&admin, &public_line(&ed25519_key())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let admins = serial(body);
    let (status, body) = server.issue_cert(&bob, &public_line(&ed25519_key())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bobs = serial(body);
    let revoke = |token: String, serial: String| {
        let server = &server;
        async move { server.post_json(Some(&token), "/v1/certs/user/revoke", &json!({ "serial": serial })).await }
    };

    let (status, body) = revoke(bob.clone(), admins.clone()).await;
    assert_api_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, unknown) = revoke(bob.clone(), "12345".into()).await;
    assert_eq!((status, message(&unknown)), (StatusCode::NOT_FOUND, message(&body)), "indistinguishable");
    let (status, body) = revoke(bob.clone(), bobs.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["certificates_revoked"], 1);

    let (_, certs) = server.get_json(Some(&admin), "/v1/admin/certs").await;
    let revoked = |s: &str| certs.as_array().unwrap().iter().find(|c| c["serial"] == s).unwrap()["revoked"].clone();
    assert_eq!(revoked(&admins), json!(false), "someone else's certificate stays valid");
    assert_eq!(revoked(&bobs), json!(true));
}
