//! Secrets and rules: validation, the target preview, trials, and fingerprinting candidates.

use super::*;

/// Secrets are checked on the way in and need their own permission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_validated_and_need_secrets_manage() {
    let (server, admin) = start().await;
    let pin = json!({ "mode": "pinned_sha256", "sha256": "ab".repeat(32) });
    let bad = [
        json!({ "name": "x y", "kind": "proxmox_api_token", "identity": IDENTITY, "secret": "s", "tls": pin }),
        json!({ "name": "x", "kind": "ssh_key", "identity": IDENTITY, "secret": "s", "tls": pin }),
        json!({ "name": "x", "kind": "proxmox_api_token", "identity": "no-token-id", "secret": "s", "tls": pin }),
        json!({ "name": "x", "kind": "proxmox_api_token", "identity": IDENTITY, "secret": "", "tls": pin }),
        json!({ "name": "x", "kind": "proxmox_api_token", "identity": IDENTITY, "secret": "s",
                "tls": { "mode": "pinned_sha256", "sha256": "12:34" } }),
        json!({ "name": "x", "kind": "proxmox_api_token", "identity": IDENTITY, "secret": "s",
                "tls": { "mode": "ca_bundle", "pem": "not a certificate" } }),
    ];
    for body in bad {
        let (status, answer) = server.post_json(Some(&admin), "/v1/admin/secrets", &body).await;
        assert_eq!(status.as_u16(), 400, "{body} -> {answer}");
    }
    add_secret(&server, &admin, "x", TOKEN_A, pin.clone()).await;
    let again =
        json!({ "name": "x", "kind": "proxmox_api_token", "identity": IDENTITY, "secret": TOKEN_B, "tls": pin });
    let (status, answer) = server.post_json(Some(&admin), "/v1/admin/secrets", &again).await;
    assert_eq!(status.as_u16(), 409, "{answer}");
    assert!(!answer.to_string().contains(TOKEN_B), "{answer}");

    // An operator without secrets.manage can neither list nor add.
    server.add_user(&admin, "olga", &["ops"], "olga-password-1234").await;
    let olga = server.login("olga", "olga-password-1234").await;
    let (status, _) = server.get_json(Some(&olga), "/v1/admin/secrets").await;
    assert_eq!(status.as_u16(), 403);
    let (status, _) = server.post_json(Some(&olga), "/v1/admin/secrets", &again).await;
    assert_eq!(status.as_u16(), 403);

    let resp = server.request(reqwest::Method::DELETE, Some(&admin), "/v1/admin/secrets/x", None).await;
    assert!(resp.status().is_success());
    let removed = server.await_audit("secret_removed", |r| r.payload["name"] == "x").await;
    assert_eq!(removed.payload["by"], "admin");
    // The policy change history has both, with who and the fingerprint, never the value.
    let (status, history) = server.get_json(Some(&admin), "/v1/admin/policy/history").await;
    assert!(status.is_success(), "{history}");
    let entries = history.as_array().unwrap();
    assert_eq!(entries[0]["removed"], json!(["secret:x"]), "newest first: {history}");
    let added = entries.iter().find(|e| e["added"] == json!(["secret:x"])).expect("the addition is in the history");
    assert_eq!(added["actor"], "admin");
    assert!(added["fields"].to_string().contains("fingerprint") && added["fields"].to_string().contains(IDENTITY));
    assert!(!history.to_string().contains(TOKEN_A), "{history}");
}

/// The target preview, for a loaded rule and for a policy directory not loaded yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_preview_shows_what_a_rule_reaches_before_and_after_loading() {
    let (server, admin) = start().await;
    server.add_node(&admin, &pve_node("pve-1", "192.0.2.1", "a", None)).await;
    server.add_node(&admin, &pve_node("pve-2", "192.0.2.2", "a", Some("edge1"))).await;
    server.add_node(&admin, &pve_node("other", "192.0.2.3", "b", None)).await;
    let policy = rule("site-a", "a", "local", 8006, "");
    let (status, body) = server.write_policy("pve.toml", &policy).await;
    assert!(status.is_success(), "{body}");
    let (status, previews) = server.get_json(Some(&admin), "/v1/admin/rules/site-a/preview").await;
    assert!(status.is_success(), "{previews}");
    let p = &previews[0];
    assert_eq!(p["provider"], "proxmox");
    assert_eq!(p["matched"], json!(["pve-1", "pve-2"]));
    assert_eq!(p["in_scope"], json!(["pve-1"]), "pve-2 is behind edge1, outside the scope");
    assert_eq!(p["by_agent"], json!({ "local": 1 }));

    // A directory about to be deployed: a wider rule that sorts first would decide pve-1.
    let dir = tempfile::tempdir().unwrap();
    let wider = rule("a-everything", "a", "local", 8006, "")
        .replace("scope = { agents = [\"local\"] }", "scope = { agents = [\"local\", \"edge1\"] }");
    std::fs::write(dir.path().join("pve.toml"), policy + &wider).unwrap();
    let cli = AdminCli::login(&server).await;
    let out = cli.run(&["admin", "rules", "preview", "--dir", dir.path().to_str().unwrap()], "");
    assert!(out.contains("a-everything (inventory_enrichment, provider proxmox): 2 matched, 2 in scope"), "{out}");
    assert!(out.contains("pve-1  (rule a-everything decides: it sorts first)"), "{out}");
    assert!(out.contains("per agent: edge1: 1, local: 1"), "{out}");
    // Nothing was loaded.
    let (_, loaded) = server.get_json(Some(&admin), "/v1/admin/rules/a-everything/preview").await;
    assert_eq!(loaded["error"], "not_found", "{loaded}");
    // A broken directory is refused with file and line.
    let files = json!({ "files": [{ "name": "x.toml", "text": "[[rule]]\nname = \"r\"\npurpose = \"console_access\"\nsecret = \"s\"\n" }] });
    let (status, answer) = server.post_json(Some(&admin), "/v1/admin/rules/preview", &files).await;
    assert_eq!(status.as_u16(), 400, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("x.toml:"), "{answer}");
}

/// With `auto_discovery_trials` off (the default), a device that only looks like a PVE
/// host (`metadata.proxmox_candidate:true`) but that the rule's targets do not name gets
/// no grant — and so no token — although its API (here the same site, reached by another
/// name) answers on the rule's port, while a targeted device is collected. Turned on, the
/// rule tries the candidate, and says so in the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trials_off_sends_no_credential_to_a_candidate_and_trials_on_are_audited_as_such() {
    let site = Site::start(
        json!({ "cluster_name": "known", "tokens": { IDENTITY: TOKEN_A }, "acl": auditor(IDENTITY), "nodes": ["pve1"] }),
    );
    let (server, admin) = start().await;
    add_secret(&server, &admin, "site-t", TOKEN_A, json!({ "mode": "pinned_sha256", "sha256": site.cert_sha256 }))
        .await;
    let (status, body) = server.write_policy("pve.toml", &rule("site-t", "t", "local", site.port, "")).await;
    assert!(status.is_success(), "{body}");
    server.add_node(&admin, &pve_node("pve-known", &site.host, "t", None)).await;
    let mut lookalike = pve_node("lookalike", "localhost", "elsewhere", None);
    lookalike.metadata.insert("proxmox_candidate".into(), "true".into());
    server.add_node(&admin, &lookalike).await;
    eventually(Duration::from_secs(60), "two runs of the targeted device", || async {
        (runs_of(&server, "pve-known").await >= 2).then_some(())
    })
    .await;
    let started = server.audit_events("pve_collection_started").await;
    assert!(started.iter().all(|r| r.payload["device"] != "lookalike"), "{started:?}");
    let (_, preview) = server.get_json(Some(&admin), "/v1/admin/rules/site-t/preview").await;
    assert_eq!(preview[0]["in_scope"], json!(["pve-known"]), "{preview}");

    // With trials on, the token is tried on the candidate too — each attempt a grant
    // audited as a trial — and the candidate is collected.
    let trials = rule("site-t", "t", "local", site.port, "auto_discovery_trials = true\nstrict_permissions = true");
    let (status, body) = server.write_policy("pve.toml", &trials).await;
    assert!(status.is_success(), "{body}");
    let tried = server
        .await_audit_within(Duration::from_secs(30), "pve_collection_started", |r| r.payload["device"] == "lookalike")
        .await;
    assert_eq!((tried.payload["trial"].as_bool(), tried.payload["rule"].as_str()), (Some(true), Some("site-t")));
    let known = server.audit_events("pve_collection_started").await;
    assert!(known.iter().filter(|r| r.payload["device"] == "pve-known").all(|r| r.payload["trial"] == false));
    // A second trial is handed out only once the first has reported; none failed.
    eventually(Duration::from_secs(30), "a second trial", || async {
        (runs_of(&server, "lookalike").await >= 2).then_some(())
    })
    .await;
    let failed = server.audit_events("pve_collection_failed").await;
    assert!(failed.iter().all(|r| r.payload["device"] != "lookalike"), "{failed:?}");
}

/// `--pve-fingerprint`: a device no credential rule covers is probed without any
/// credential (only unauthenticated `/version` calls reach it), marked
/// `metadata.proxmox_candidate:true`, and a rule targeting candidates then collects it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fingerprint_marks_a_candidate_without_credentials_and_a_rule_can_target_it() {
    let mut site = Site::start(json!({ "cluster_name": "found", "tokens": { IDENTITY: TOKEN_A }, "nodes": ["pve1"] }));
    let args = ["--pve-interval", "2", "--pve-fingerprint", "--pve-fingerprint-port", &site.port.to_string()];
    let opts = ServerOpts { args: args.iter().map(|a| a.to_string()).collect(), ..ServerOpts::default() };
    let server = Server::start_with(opts).await;
    let admin = server.admin_token().await;
    server.add_node(&admin, &pve_node("maybe", &site.host, "x", None)).await;
    let marked = server
        .await_audit_within(Duration::from_secs(60), "pve_candidate_marked", |r| r.payload["device"] == "maybe")
        .await;
    assert_eq!(marked.payload["candidate"], true, "{marked:?}");
    assert_eq!(marked.payload["cert_sha256"], site.cert_sha256.as_str());
    let (_, nodes) = server.get_json(Some(&admin), "/v1/admin/nodes").await;
    let node = nodes.as_array().unwrap().iter().find(|n| n["name"] == "maybe").unwrap().clone();
    assert_eq!(node["metadata"]["proxmox_candidate"], "true", "{node}");
    let requests = site.requests();
    assert!(
        !requests.is_empty() && requests.iter().all(|(m, p)| m == "GET" && p == "/api2/json/version"),
        "{requests:?}"
    );
    assert!(server.audit_events("pve_collection_started").await.is_empty(), "a fingerprint is no grant");

    add_secret(&server, &admin, "found", TOKEN_A, json!({ "mode": "pinned_sha256", "sha256": site.cert_sha256 })).await;
    let candidates = rule("found", "x", "local", site.port, "")
        .replace("targets = 'in:devices tags.site:x'", "targets = 'in:devices metadata.proxmox_candidate:true'");
    let (status, body) = server.write_policy("pve.toml", &candidates).await;
    assert!(status.is_success(), "{body}");
    eventually(Duration::from_secs(60), "cluster found", || cluster(&server, &admin, "local/found")).await;
    // Marked once: unchanged fingerprints write nothing.
    assert_eq!(server.audit_events("pve_candidate_marked").await.len(), 1);
}
