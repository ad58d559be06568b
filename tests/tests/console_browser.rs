//! The browser console in a real browser: Debian's headless Chromium, driven by
//! playwright-core (`tests/browser/console.mjs`), signs in to the all-in-one's web UI,
//! opens a console to a throwaway `sshd` through the built-in agent, types, pastes,
//! resizes and exits; replays a ticket; closes a tab. A foreign `Origin` is refused
//! before the WebSocket upgrade. A screenshot of the terminal is kept in
//! `target/test-artifacts/console.png`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_tests::bastion_world::{CONSOLE_POLICY, PASSWORD, World};
use portcullis_tests::browser::{run_script, screenshots};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs the console browser script; its JSON report.
fn drive_browser(config: &Value) -> Value {
    run_script("console.mjs", config)
}

/// The HTTP status line of a WebSocket upgrade to `/console/ws` with `origin`.
async fn upgrade_status(addr: &str, pin: &str, origin: &str) -> String {
    let tls = portcullis_proto::pin::pinned_client_config(pin).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    let request = format!(
        "GET /console/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_opens_a_console_through_the_bastion() {
    let w = World::start("15m").await;
    let (status, body) = w.server.write_policy("console.toml", CONSOLE_POLICY).await;
    assert!(status.is_success(), "{body}");
    let addr = w.server.url.trim_start_matches("https://").to_owned();

    // Cross-site WebSocket hijacking: a foreign page's socket is refused before the upgrade.
    assert!(upgrade_status(&addr, &w.server.pin, "https://evil.example").await.contains(" 403"));
    assert!(upgrade_status(&addr, &w.server.pin, &format!("https://{addr}")).await.contains(" 101"));

    let screenshot = screenshots().join("console.png");
    let _ = std::fs::remove_file(&screenshot);
    let report = drive_browser(&serde_json::json!({
        "url": w.server.url,
        "username": "alice",
        "password": PASSWORD,
        "device": "pve01",
        "login": "root",
        "screenshot": screenshot,
    }));
    let r = |k: &str| report.get(k).cloned().unwrap_or(Value::Null);
    assert!(r("error").is_null(), "browser: {report:#}\nserver log: {}", w.server.log());
    for step in [
        "signed_in",
        "connected",
        "typed",
        "utf8",
        "pasted",
        "copied_and_pasted",
        "resized",
        "exited",
        "reconnected",
        "replayed",
        "stolen_ticket",
        "paste_escape",
        "tab_closed",
        "fresh_link",
    ] {
        assert!(report["steps"].as_array().unwrap().iter().any(|s| s == step), "{step}: {report:#}");
    }
    assert!(r("page_errors").is_null() && r("console_errors").is_null(), "no script errors: {report:#}");
    assert_eq!(r("a11y"), json!([]), "axe-core, serious or critical: {:#}", r("a11y"));
    assert_eq!(r("copy_enabled"), json!(true), "Copy follows the selection: {report:#}");
    assert_eq!(r("devices"), serde_json::json!(["pve01"]));
    // The toolbar: the session's absolute limit (1 h) counting down, the font size, and
    // the close reason kept in the status line.
    let left = r("time_left");
    assert!(left.as_str().unwrap().starts_with("session ends in 59:") || left == "session ends in 1:00:00", "{left}");
    let font = r("font");
    assert_eq!(font["size"], 16, "{font}");
    assert!(font["cols"].as_u64() < font["cols_before"].as_u64(), "{font}");
    assert!(!r("status_after_close").as_str().unwrap().is_empty(), "{report:#}");
    // The Admin link follows the permissions whoami names: alice may kill sessions (her
    // `prod-root` role), so she has the live-sessions view.
    let alice = w.server.login("alice", PASSWORD).await;
    let (_, me) = w.server.get_json(Some(&alice), "/v1/auth/whoami").await;
    assert_eq!(me["permissions"], json!(["certs.issue", "devices.console.open", "sessions.kill"]), "{me}");
    assert_eq!(r("admin_link_visible"), Value::Bool(true), "{report:#}");
    assert_eq!(r("cookie"), serde_json::json!({ "httpOnly": true, "secure": true, "sameSite": "Strict" }));
    assert_eq!(r("cookie_visible_to_script"), Value::Bool(false));
    let csp = r("index_csp");
    let csp = csp.as_str().unwrap();
    assert!(csp.contains("script-src 'self';") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!r("console_url").as_str().unwrap().contains("pct_"), "no ticket in any URL");
    assert_eq!(r("exit"), Value::from(3));
    assert!(screenshot.exists(), "screenshot kept as an artifact");

    // Replay: the first socket connects, the second is refused as reused; unsupported
    // modes and missing CSRF are refused too.
    let replay = r("replay");
    assert_eq!(replay["first"]["type"], "connected", "{replay:#}");
    assert_eq!(replay["second"]["type"], "closed", "{replay:#}");
    assert_eq!(replay["second"]["reason"], "ticket_reused", "{replay:#}");
    assert_eq!(replay["unsupported_status"], 400, "{replay:#}");
    assert_eq!(replay["unsupported"]["error"], "unsupported_console_mode", "{replay:#}");
    assert_eq!(replay["no_csrf_status"], 403, "{replay:#}");
    assert_eq!(replay["ticket_in_url"], false);
    // A ticket presented by another browser (no session cookie) is refused like an
    // unknown one; its owner's page still opens it.
    let stolen = r("stolen");
    assert_eq!(stolen["thief"]["type"], "closed", "{stolen:#}");
    assert_eq!(stolen["thief"]["reason"], "ticket_invalid", "{stolen:#}");
    assert_eq!(stolen["owner"]["type"], "connected", "{stolen:#}");
    // Links from elsewhere: a console link waits for a click (no ticket asked for before
    // it), and the step-up page's link signs no one out. A paste that ends its own
    // bracketed paste (`ESC [201~`) runs nothing.
    assert_eq!(r("linked_console"), json!({"state": "waiting", "tickets": 0, "tickets_after_click": 1}), "{report:#}");
    assert_eq!(r("fresh_link_whoami"), json!(200), "{report:#}");
    assert_eq!(r("paste_escape_ran"), json!(false), "{report:#}");

    // Audit: the ticket's life, the sessions with mode console, the closes with reasons.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let closed = w.server.audit_events("session_closed").await;
        let reasons: Vec<String> =
            closed.iter().map(|c| c.payload["reason"].as_str().unwrap_or("").to_owned()).collect();
        if reasons.iter().any(|r| r == "browser_disconnect") {
            break;
        }
        assert!(Instant::now() < deadline, "closing the tab closes the session: {reasons:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for event in
        ["console_ticket_requested", "console_ticket_granted", "console_ticket_reused", "console_ticket_denied"]
    {
        assert!(!w.server.audit_events(event).await.is_empty(), "{event} audited");
    }
    let opened = w.server.audit_events("session_opened").await;
    assert!(opened.iter().any(|o| o.payload["mode"] == "console"), "{opened:?}");
    let all = serde_json::to_string(&w.server.audit().await.iter().map(|a| &a.payload).collect::<Vec<_>>()).unwrap();
    assert!(!all.contains("pct_") && !all.contains(PASSWORD), "no ticket or password in the audit trail");
    assert!(!w.server.log().contains("pct_"), "no ticket in the server log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_kills_a_live_session_from_the_admin_page() {
    let opts = portcullis_tests::ServerOpts { args: vec!["--pve-interval".into(), "2".into()], ..Default::default() };
    let w = World::start_with("15m", opts).await;
    // A Proxmox VE cluster collected through the built-in agent, for the clusters view.
    let site = portcullis_tests::fakepve::Site::start(serde_json::json!({
        "cluster_name": "lab",
        "tokens": { "inv@pve!ui": "ui-token" },
        "nodes": ["pve1"],
        "guests": [{ "vmid": 700, "name": "webvm", "node": "pve1" }]
    }));
    collect_cluster(&w, &site).await;
    // The administrators may open consoles on the PVE host, and their roles reach its guests.
    let (status, body) = w.server.write_policy("lab.toml", LAB_CONSOLES).await;
    assert!(status.is_success(), "{body}");
    let (status, body) = w.server.write_policy("console.toml", CONSOLE_POLICY).await;
    assert!(status.is_success(), "{body}");
    // alice has a terminated-mode session running.
    let child = w.spawn_started("bastion", "sleep 60");
    // A second administrator whose password was reset: a one-time password, which the
    // sign-in form replaces before the admin page opens.
    let admin = w.server.admin_token().await;
    // Enough audit records for the audit view to have a second page (100 a page).
    for i in 0..80 {
        let (status, body) =
            w.server.post_json(Some(&admin), "/v1/admin/users", &json!({"username": format!("crowd{i}")})).await;
        assert!(status.is_success(), "{body}");
    }
    // Someone holding no admin permission (no role at all).
    w.server.add_user(&admin, "dora", &["visitors"], PASSWORD).await;
    // Also in `ops`, so pve01 (alice's node) is in their device list, with its details.
    w.server.add_user(&admin, "ops", &["portcullis-admins", "ops"], "ops-temporary-1").await;
    let (status, body) = w
        .server
        .put_json(
            Some(&admin),
            "/v1/admin/users/ops/password",
            &serde_json::json!({"password": "ops-temporary-2", "one_time": true}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let report = run_script(
        "admin.mjs",
        &serde_json::json!({
            "url": w.server.url,
            "username": "ops",
            "password": "ops-temporary-2",
            "new_password": "ops-own-password",
            "user": "alice",
            "cluster": "local/lab",
            "guest": "webvm",
            "guest_device": "vm700.lab",
            "loaded_rule": "lab-consoles",
            "draft_policy": DRAFT_POLICY,
            "details_device": "pve01",
            "new_user": "viewer1",
            "plain_user": "dora",
            "plain_password": PASSWORD,
            "screenshots": screenshots(),
        }),
    );
    assert!(report.get("error").is_none() && report.get("page_errors").is_none(), "{report:#}");
    assert_eq!(report["signed_in_before_change"], false, "a one-time password opened a session: {report:#}");
    let wrong = report["wrong_password"].as_str().unwrap();
    assert!(wrong.starts_with("invalid username or password. Check the user name and password"), "{wrong}");
    let failed = w.server.audit_events("login_failed").await;
    assert!(failed.iter().any(|r| r.payload["reason"] == "password_change_required"), "{failed:?}");
    assert_eq!(w.server.try_login("ops", "ops-temporary-2").await.0, reqwest::StatusCode::UNAUTHORIZED);
    w.server.login("ops", "ops-own-password").await;
    for step in [
        "asked_for_new_password",
        "signed_in",
        "session_listed",
        "killed",
        "audit_filtered",
        "cluster_listed",
        "guests_shown",
        "policy_history",
        "devices_listed",
        "previewed",
        "device_details",
        "user_added_and_disabled",
        "token_created_and_revoked",
        "plain_user_sees_no_admin",
    ] {
        assert!(report["steps"].as_array().unwrap().iter().any(|s| s == step), "{step}: {report:#}");
    }
    // The guest is listed right under the PVE host it runs on (linked by host name and
    // cluster), says why it has no console, and the search keeps it with its node.
    let rows = report["device_rows"].as_array().unwrap();
    let at = |name: &str| rows.iter().position(|r| r["device"] == name).unwrap_or_else(|| panic!("{name}: {rows:?}"));
    let (node, guest) = (at("pve-lab"), at("vm700.lab"));
    assert_eq!(guest, node + 1, "{rows:?}");
    assert_eq!((rows[guest]["guest"].as_bool(), rows[guest]["parent"].as_str()), (Some(true), Some("pve-lab")));
    assert!(rows[guest]["text"].as_str().unwrap().contains("not served"), "{rows:?}");
    assert_eq!(report["search_rows"], json!(["pve-lab", "vm700.lab"]), "{report:#}");
    // Tags and agent shown; a header sorts, and the guest stays under its node.
    let host = rows[node]["text"].as_str().unwrap();
    assert!(host.contains("provider=proxmox") && host.contains("local up"), "{host}");
    assert_eq!(report["sorted"]["aria"], "descending", "{report:#}");
    let sorted = report["sorted"]["rows"].as_array().unwrap();
    let pos = |n: &str| sorted.iter().position(|r| r == n).unwrap();
    assert_eq!(pos("vm700.lab"), pos("pve-lab") + 1, "{sorted:?}");
    assert_eq!(report["search_none"], json!({ "shown": 0, "message": true }), "{report:#}");
    // Grouped by cluster: each group under its heading, the guest still under its node.
    let grouped = report["grouped"].as_array().unwrap();
    let at = |name: &str| grouped.iter().position(|r| r == name).unwrap_or_else(|| panic!("{name}: {grouped:?}"));
    assert_eq!((at("pve-lab"), at("vm700.lab")), (at("Cluster: lab") + 1, at("Cluster: lab") + 2), "{grouped:?}");
    assert!(at("Cluster: no cluster") < at("pve01"), "{grouped:?}");
    assert!(report["device_count"].as_str().unwrap().starts_with("1–"), "{report:#}");
    // The preview: the loaded rule reaches the host; the draft, not loaded, the guest.
    let loaded = report["preview_loaded"].as_array().unwrap();
    let lab = loaded.iter().find(|p| p["rule"] == "lab-consoles").unwrap();
    assert_eq!((lab["in_scope"].as_str(), lab["agents"].as_str()), (Some("1"), Some("local: 1")), "{loaded:?}");
    assert_eq!(report["preview_draft"].as_array().unwrap().len(), 1, "{report:#}");
    let draft = &report["preview_draft"][0];
    assert_eq!((draft["rule"].as_str(), draft["in_scope"].as_str()), (Some("draft-guests"), Some("1")), "{report:#}");
    assert!(draft["devices"].as_str().unwrap().contains("vm700.lab"), "{report:#}");
    let (_, rules) = w.server.get_json(Some(&admin), "/v1/admin/rules/preview").await;
    assert!(
        rules.as_array().unwrap().iter().all(|p| p["rule"] != "draft-guests"),
        "a preview loaded the draft: {rules}"
    );
    // The details page of alice's node: reached from its row; its pinned host key as
    // `ssh-keygen -lf` prints it; the rule deciding each purpose; every role reaching it
    // with who holds it (ops may read the policy); alice's live session; the logins.
    let details = &report["details"];
    assert_eq!((details["url"].as_str(), details["name"].as_str()), (Some("/ui/device?name=pve01"), Some("pve01")));
    assert_eq!(details["identity"]["Agent"], "local", "{details:#}");
    let pinned = w.node.host_public_key();
    let fingerprint = portcullis_sshcert::fingerprint(ssh_key::PublicKey::from_openssh(&pinned).unwrap().key_data());
    assert_eq!(details["host_keys"], json!([["ssh-ed25519", fingerprint]]), "{details:#}");
    assert!(details["rules"].as_array().unwrap().contains(&json!(["SSH login", "prod-ssh"])), "{details:#}");
    // (The all-in-one's own console rule sorts before the test's, so it decides.)
    let console_rule = json!(["Browser console", "console-via-local-agent"]);
    assert!(details["rules"].as_array().unwrap().contains(&console_rule), "{details:#}");
    let access = details["access"].as_array().unwrap();
    assert!(access.iter().any(|r| r[0] == "prod-console (yours)" && r[4] == "group:ops"), "{details:#}");
    let sessions = details["sessions"].as_array().unwrap();
    assert!(sessions.iter().any(|r| r[0] == "alice" && r[1] == "root" && r[5] == "live"), "{details:#}");
    assert_eq!(details["logins"], json!(["root"]), "{details:#}");
    assert!(report["details_unknown"].as_str().unwrap().contains("No device called"), "{report:#}");
    assert_eq!(report["frame_options"], "DENY");
    // The audit view reads in words: the event, who acted, on what; the time relative with
    // the absolute one beside it; and it exports what it shows.
    let row = &report["audit_rows"][0];
    assert_eq!((row["event"].as_str(), row["who"].as_str()), (Some("Session kill requested"), Some("ops")), "{row}");
    assert!(row["when"].as_str().unwrap().ends_with(" ago") && row["at"].as_str().unwrap().ends_with('Z'), "{row}");
    assert!(row["fields"].as_str().unwrap().contains("alice"), "{row}");
    let csv = report["audit_csv"]["text"].as_str().unwrap();
    assert!(
        csv.starts_with("\"seq\",\"time\",\"event\",\"payload\"\r\n") && csv.contains("session_kill_requested"),
        "{csv}"
    );
    let jsonl = report["audit_jsonl"]["text"].as_str().unwrap();
    let records: Vec<Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!records.is_empty() && records.iter().all(|r| r["event"] == "session_kill_requested"), "{jsonl}");
    // The kill asked first, naming whose session on which device.
    let questions = report["questions"].as_array().unwrap();
    assert!(questions[0].as_str().is_some_and(|q| q.contains("alice") && q.starts_with("End ")), "{report:#}");
    // One tab per view this administrator may see; the session row says who, where, from
    // where, for how long and how much.
    assert_eq!(
        report["tabs"],
        json!([
            "Sessions",
            "Audit",
            "Users",
            "Nodes",
            "Bastions & agents",
            "Enrollment tokens",
            "Proxmox VE",
            "Rule preview",
            "Policy history"
        ]),
        "{report:#}"
    );
    let session = report["session_row"].as_array().unwrap();
    assert_eq!((&session[0], &session[1], &session[3]), (&json!("alice"), &json!("pve01"), &json!("Terminated")));
    assert!(session[8].as_str().unwrap().contains(" / "), "{session:?}");
    // Audit pages: the older page ends before the first begins, and Newer comes back.
    let paging = &report["audit_paging"];
    assert_eq!(paging["older_enabled"], true, "{report:#}");
    assert!(paging["second_page"][0].as_u64() < paging["first_page"][1].as_u64(), "{paging}");
    assert!(paging["back"].as_u64() >= paging["first_page"][0].as_u64(), "{paging}");
    assert!(report["event_suggestions"].as_array().unwrap().contains(&json!("session_opened")), "{report:#}");
    assert!(report["audit_future"].as_str().unwrap().starts_with("0 record(s)"), "{report:#}");
    // The user added from the page: their groups, a one-time password that works only to
    // choose a new one, and disabled (the question named them).
    assert_eq!(report["new_user_groups"], "viewers, lab", "{report:#}");
    let one_time = report["new_user_password"].as_str().unwrap();
    assert_eq!(w.server.try_login("viewer1", one_time).await.0, reqwest::StatusCode::UNAUTHORIZED);
    let refused = |reason: &'static str| {
        let w = &w;
        async move {
            let failed = w.server.audit_events("login_failed").await;
            assert!(
                failed.iter().any(|r| r.payload["username"] == "viewer1" && r.payload["reason"] == reason),
                "{failed:?}"
            );
        }
    };
    refused("user_disabled").await;
    let (status, body) = w.server.post_json(Some(&admin), "/v1/admin/users/viewer1/enable", &json!({})).await;
    assert!(status.is_success(), "{body}");
    assert_eq!(w.server.try_login("viewer1", one_time).await.0, reqwest::StatusCode::UNAUTHORIZED);
    refused("password_change_required").await;
    assert!(questions.iter().any(|q| q.as_str().unwrap().starts_with("Disable viewer1?")), "{questions:?}");
    // Nodes and the built-in services are listed.
    assert!(report["nodes"].as_array().unwrap().iter().any(|n| n[0] == "pve01" && n[5] == "1 pinned"), "{report:#}");
    // The token was shown once, listed with its uses and tags, then revoked: nothing of it
    // is left to enroll with.
    assert!(report["token_secret"].as_str().unwrap().starts_with("pce_"), "{report:#}");
    let row = &report["token_rows"][0];
    assert_eq!((&row[1], &row[4], &row[5]), (&json!("nodes"), &json!("2"), &json!("site=lab")), "{report:#}");
    let (_, tokens) = w.server.get_json(Some(&admin), "/v1/admin/enroll-tokens").await;
    assert_eq!((tokens.as_array().unwrap().len(), &tokens[0]["uses_left"]), (1, &json!(0)), "{tokens}");
    // Someone without an admin permission sees no Admin link, and by URL no view at all.
    assert_eq!(report["plain"], json!({"admin_link": false, "tabs": 0, "views": 0}), "{report:#}");
    // The policy history names what the test's policy write changed, newest first.
    let history = report["policy_rows"].as_array().unwrap();
    // Policy reloads carry a digest; API-secret changes (the cluster's token) do not.
    let what = |r: &Value| r["what"].as_str().unwrap_or("").to_owned();
    let reloads = history.iter().filter(|r| !what(r).contains("secret:"));
    assert!(
        reloads.clone().count() > 0 && reloads.into_iter().all(|r| r["digest"].as_str().is_some_and(|d| d.len() == 16)),
        "{history:?}"
    );
    assert!(history.iter().any(|r| what(r).contains("+ secret:lab") && r["actor"] == "admin"), "{history:?}");
    assert!(!serde_json::to_string(history).unwrap().contains("ui-token"), "{history:?}");
    assert!(history.iter().any(|r| r["what"].as_str().unwrap_or("").contains("role:prod-root")), "{history:?}");
    assert_eq!(report["errors_shown"], serde_json::json!([]));
    // axe-core: no serious or critical accessibility violation on any view.
    assert_eq!(report["a11y"], json!([]), "{:#}", report["a11y"]);
    // Readable on a 1366×768 laptop and on a 4K screen, every view measured.
    let layout = report["layout"].as_array().unwrap();
    assert_eq!(layout.len(), 10, "{layout:#?}");
    for at in layout {
        assert!(at["sideways"].as_i64().unwrap() <= 0, "scrolls sideways: {at}");
        assert!(at["font_px"].as_f64().unwrap() >= 16.0, "small text: {at}");
        assert!(at["main_width"].as_u64().unwrap() <= 2000, "stretched across a 4K screen: {at}");
    }
    let (out, _) = portcullis_tests::bastion_world::wait_output(child, Duration::from_secs(20));
    assert!(String::from_utf8_lossy(&out.stderr).contains("closed by an administrator"));
}

/// Consoles on the PVE host for the administrators, and a console role reaching its
/// guests (listed, no console).
const LAB_CONSOLES: &str = r#"
[[role]]
name = "lab-console"
logins = ["root"]
targets = 'in:devices tags.provider:proxmox'
permissions = ["devices.console.open"]
session = { idle = "15m", absolute = "1h" }

[[role]]
name = "lab-guests"
logins = ["root"]
targets = 'in:devices metadata.cluster:lab'
permissions = ["devices.console.open"]
session = { idle = "15m", absolute = "1h" }

[[binding]]
group = "portcullis-admins"
roles = ["lab-console", "lab-guests"]

[[rule]]
name = "lab-consoles"
purpose = "console_access"
targets = 'in:devices tags.provider:proxmox'
scope = { agents = ["local"] }
"#;

/// A rule not loaded: previewed from the admin page's file input.
const DRAFT_POLICY: &str = r#"
[[rule]]
name = "draft-guests"
purpose = "console_access"
targets = 'in:devices type:vm'
scope = { agents = ["local"] }
"#;

/// Stores a token for `site`, a credential rule for it and a device, and waits until the
/// all-in-one has collected the cluster.
async fn collect_cluster(w: &World, site: &portcullis_tests::fakepve::Site) {
    let admin = w.server.admin_token().await;
    let secret = serde_json::json!({ "name": "lab", "kind": "proxmox_api_token", "identity": "inv@pve!ui",
        "secret": "ui-token", "tls": { "mode": "pinned_sha256", "sha256": site.cert_sha256 } });
    let (status, body) = w.server.post_json(Some(&admin), "/v1/admin/secrets", &secret).await;
    assert!(status.is_success(), "{body}");
    let rule = format!(
        "[[rule]]\nname = \"lab\"\npurpose = \"inventory_enrichment\"\nprovider = \"proxmox\"\n\
         auth_method = \"proxmox_api_token\"\nsecret = \"lab\"\napi_port = {}\n\
         targets = 'in:devices tags.provider:proxmox'\nscope = {{ agents = [\"local\"] }}\n",
        site.port
    );
    let (status, body) = w.server.write_policy("pve.toml", &rule).await;
    assert!(status.is_success(), "{body}");
    let node = portcullis_proto::NodeRecord {
        name: "pve-lab".into(),
        addresses: vec![site.host.clone()],
        // As `portcullis-enroll` reports a PVE host: which PVE node, in which cluster.
        tags: [("provider", "proxmox"), ("pve_node", "pve1"), ("pve_cluster", "lab")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
        ..Default::default()
    };
    w.server.add_node(&admin, &node).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !w.server.get_json(Some(&admin), "/v1/admin/inventory/clusters/local/lab").await.0.is_success() {
        assert!(Instant::now() < deadline, "the cluster was not collected");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Step-up in the browser: a console rule with `fresh_auth_within`, a sign-in older than
/// that — the console is refused with a "Sign in again" link, which signs the session
/// out and asks for the password; afterwards the console opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_up_console_sends_the_user_to_sign_in_again() {
    let w = World::start("15m").await;
    // Rules match by name, first to last: this one comes before the all-in-one's own.
    let policy = CONSOLE_POLICY
        .replace("scope = { agents = [\"local\"] }\n", "scope = { agents = [\"local\"] }\nfresh_auth_within = \"4s\"\n")
        .replace("name = \"prod-consoles\"", "name = \"a-step-up-consoles\"");
    let (status, body) = w.server.write_policy("console.toml", &policy).await;
    assert!(status.is_success(), "{body}");
    let report = run_script(
        "stepup.mjs",
        &json!({ "url": w.server.url, "username": "alice", "password": PASSWORD, "device": "pve01", "wait_ms": 6000 }),
    );
    assert!(report.get("error").is_none() && report.get("page_errors").is_none(), "{report:#}\n{}", w.server.log());
    assert_eq!(report["steps"], json!(["asked_again", "connected_after_step_up"]), "{report:#}");
    assert!(report["refused"].as_str().unwrap().contains("Sign in again"), "{report:#}");
    assert_eq!(report["url"], "/ui/?fresh=1", "{report:#}");
    assert!(report["notice"].as_str().unwrap().contains("recent sign-in"), "{report:#}");
    assert_eq!(report["signed_out"], true, "{report:#}");
    assert_eq!(report["a11y"], json!([]), "{report:#}");
    let denied = w.server.audit_events("console_ticket_denied").await;
    assert!(denied.iter().any(|d| d.payload["reason"] == "fresh_auth_required"), "{denied:?}");
}
