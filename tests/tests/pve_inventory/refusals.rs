//! Runs that stop: a token that can do more than read, a run past its budget, a wrong pin, bad tokens, huge and hanging answers.

use super::*;

/// `strict_permissions`: a token holding anything beyond audit — here `Sys.Console`, a
/// root shell through termproxy, which is none of the seed's five examples — is refused
/// before any inventory request, and so is one whose privileges cannot be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_rule_reads_nothing_with_a_token_that_can_do_more_than_read_or_hides_what_it_can() {
    let mut acl = auditor(IDENTITY);
    acl.as_array_mut().unwrap().push(json!([IDENTITY, "/nodes/pve1", ["Sys.Console"]]));
    let mut site = Site::start(json!({
        "cluster_name": "sigma",
        "tokens": { IDENTITY: TOKEN_A },
        "acl": acl,
        "nodes": ["pve1"],
        "guests": [{ "vmid": 500, "name": "vm", "node": "pve1" }]
    }));
    let (server, admin) = start().await;
    add_secret(&server, &admin, "site-s", TOKEN_A, json!({ "mode": "pinned_sha256", "sha256": site.cert_sha256 }))
        .await;
    let strict = rule("site-s", "s", "local", site.port, "strict_permissions = true");
    let (status, body) = server.write_policy("pve.toml", &strict).await;
    assert!(status.is_success(), "{body}");
    server.add_node(&admin, &pve_node("pve-s", &site.host, "s", None)).await;
    let failed = |reason: &'static str| {
        move |r: &portcullis_proto::AuditRecord| r.payload["device"] == "pve-s" && r.payload["reason"] == reason
    };
    server.await_audit_within(Duration::from_secs(30), "pve_collection_failed", failed("write_privileges")).await;

    site.command(json!({ "op": "fail", "method": "GET", "suffix": "/access/permissions", "status": 403,
                         "message": "Permission check failed (/access, Sys.Audit)" }));
    server.await_audit_within(Duration::from_secs(30), "pve_collection_failed", failed("privileges_unknown")).await;
    let read: Vec<String> = site.requests().into_iter().map(|(_, path)| path).collect();
    assert!(
        read.iter().all(|p| p == "/api2/json/version" || p == "/api2/json/access/permissions"),
        "a strict run read inventory with a token it could not vouch for: {read:?}"
    );
    assert!(cluster(&server, &admin, "local/sigma").await.is_none(), "nothing was stored");
}

/// Each answer is capped, but a run asks per node and per guest: past
/// `MAX_RUN_BYTES` in all (here nine answers just under the per-answer cap) the run
/// stops and reports `too_large` — never a partial inventory as if it were complete,
/// which would record the guests it did not reach as gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_answers_add_up_past_its_budget_stops_and_stores_nothing() {
    let guests: Vec<Value> =
        (0..8).map(|i| json!({ "vmid": 600 + i, "name": format!("vm{i}"), "node": "pve1" })).collect();
    let mut site = Site::start(json!({
        "cluster_name": "omega", "tokens": { IDENTITY: TOKEN_A }, "acl": auditor(IDENTITY), "nodes": ["pve1"],
        "guests": guests
    }));
    let per_answer = portcullis_proto::pve::MAX_ENDPOINT_BYTES - (512 << 10);
    let bulk = "x".repeat(per_answer);
    let mut stuffed = vec!["/cluster/status".to_owned()];
    stuffed.extend((0..8).map(|i| format!("/qemu/{}/config", 600 + i)));
    assert!(stuffed.len() * per_answer > portcullis_proto::pve::MAX_RUN_BYTES, "the fixture passes the budget");
    for suffix in &stuffed {
        site.command(json!({ "op": "fail", "method": "GET", "suffix": suffix, "status": 200, "message": bulk }));
    }
    let (server, admin) = start().await;
    add_secret(&server, &admin, "site-o", TOKEN_A, json!({ "mode": "pinned_sha256", "sha256": site.cert_sha256 }))
        .await;
    let (status, body) = server.write_policy("pve.toml", &rule("site-o", "o", "local", site.port, "")).await;
    assert!(status.is_success(), "{body}");
    server.add_node(&admin, &pve_node("pve-o", &site.host, "o", None)).await;
    server
        .await_audit_within(Duration::from_secs(60), "pve_collection_failed", |r| {
            r.payload["device"] == "pve-o" && r.payload["reason"] == "too_large"
        })
        .await;
    assert!(cluster(&server, &admin, "local/omega").await.is_none(), "a run past its budget stored an inventory");
}

/// The TLS pin is checked before anything is sent; a wrong or revoked token fails as
/// such; an answer past the cap is refused, not stored; a hanging API times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_mismatch_sends_nothing_and_bad_tokens_huge_and_hanging_answers_fail_cleanly() {
    let mut site = Site::start(json!({
        "cluster_name": "delta",
        "tokens": { IDENTITY: TOKEN_A },
        "acl": auditor(IDENTITY),
        "nodes": ["pve1"],
        "guests": [{ "vmid": 400, "name": "vm", "node": "pve1" }]
    }));
    let (server, admin) = start().await;
    let wrong_pin = "ab".repeat(32);
    add_secret(&server, &admin, "site-d", TOKEN_A, json!({ "mode": "pinned_sha256", "sha256": wrong_pin })).await;
    let (status, body) = server.write_policy("pve.toml", &rule("site-d", "d", "local", site.port, "")).await;
    assert!(status.is_success(), "{body}");
    server.add_node(&admin, &pve_node("pve-d", &site.host, "d", None)).await;
    let failed = |reason: &'static str| {
        move |r: &portcullis_proto::AuditRecord| r.payload["device"] == "pve-d" && r.payload["reason"] == reason
    };
    server.await_audit_within(Duration::from_secs(30), "pve_collection_failed", failed("tls_rejected")).await;
    assert!(site.requests().is_empty(), "a request reached a server that failed the pin");

    // The right pin with a token the site does not know (expired or revoked): auth_failed.
    let rotate = |secret: &str, tls: Option<Value>| {
        let mut body = json!({ "secret": secret });
        if let Some(tls) = tls {
            body["tls"] = tls;
        }
        body
    };
    let pin = json!({ "mode": "pinned_sha256", "sha256": site.cert_sha256 });
    let (status, body) =
        server.put_json(Some(&admin), "/v1/admin/secrets/site-d", &rotate("not-the-token", Some(pin))).await;
    assert!(status.is_success(), "{body}");
    server.await_audit_within(Duration::from_secs(30), "pve_collection_failed", failed("auth_failed")).await;
    assert_eq!(site.requests(), [("GET".to_owned(), "/api2/json/version".to_owned())]);

    // The right token: collected; the audit trail has the rotation, not the value.
    let (status, body) = server.put_json(Some(&admin), "/v1/admin/secrets/site-d", &rotate(TOKEN_A, None)).await;
    assert!(status.is_success(), "{body}");
    let rotated = server.audit_events("secret_rotated").await;
    assert_eq!(rotated.len(), 2, "{rotated:?}");
    assert_ne!(rotated[0].payload["fingerprint"], rotated[1].payload["fingerprint"]);
    eventually(Duration::from_secs(30), "cluster delta", || cluster(&server, &admin, "local/delta")).await;

    // An endpoint the inventory is built from fails — an answer past the cap (9 MiB),
    // then a 500 — and the run with it: the inventory stored before stays, guest and
    // all. Before, the run was stored without the resources' guests, as if all were gone.
    let guests = async || {
        let view = cluster(&server, &admin, "local/delta").await.unwrap();
        view["inventory"]["guests"].as_array().unwrap().iter().map(|g| g["vmid"].clone()).collect::<Vec<_>>()
    };
    assert_eq!(guests().await, [json!(400)]);
    let huge = "x".repeat(9 << 20);
    site.command(
        json!({ "op": "fail", "method": "GET", "suffix": "/cluster/resources", "status": 200, "message": huge }),
    );
    server.await_audit_within(Duration::from_secs(60), "pve_collection_failed", failed("too_large")).await;
    assert_eq!(guests().await, [json!(400)], "a run without the cluster's resources dropped its guests");
    site.command(json!({ "op": "fail", "method": "GET", "suffix": "/cluster/resources", "status": 500,
                         "message": "cluster filesystem not ready" }));
    server.await_audit_within(Duration::from_secs(60), "pve_collection_failed", failed("incomplete")).await;
    assert_eq!(guests().await, [json!(400)], "a run without the cluster's resources dropped its guests");
    site.command(json!({ "op": "fail", "method": "GET", "suffix": "/cluster/resources", "status": 403,
                         "message": "Permission check failed (/, VM.Audit)" }));
    server.await_audit_within(Duration::from_secs(60), "pve_collection_failed", failed("forbidden")).await;
    assert_eq!(guests().await, [json!(400)], "a run the token may not read the resources of dropped its guests");

    // Every request hangs: the run ends with `timeout` (20 s per request), no hang.
    site.command(json!({ "op": "hang", "secs": 600 }));
    server.await_audit_within(Duration::from_secs(90), "pve_collection_failed", failed("timeout")).await;
}
