//! Collection: two sites through their own agents, unchanged runs, partial answers.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sites_are_collected_each_through_its_own_agent_and_an_unchanged_run_writes_nothing() {
    let mut site_a = Site::start(json!({
        "cluster_name": "alpha",
        "tokens": { IDENTITY: TOKEN_A },
        "acl": auditor(IDENTITY),
        "nodes": ["pve1", "pve2"],
        "ceph": true,
        "guests": [
            { "vmid": 100, "name": "web", "node": "pve1", "status": "stopped",
              "config": { "memory": 2048, "cores": 2, "scsi0": "local-lvm:vm-100-disk-0,size=32G" } },
            { "vmid": 101, "name": "dns", "node": "pve2", "type": "lxc", "status": "running",
              "config": { "hostname": "dns", "memory": 512 } }
        ]
    }));
    // Site B gives its token every privilege (no ACL): collected, with a warning.
    let site_b = Site::start(json!({
        "cluster_name": "beta",
        "tokens": { IDENTITY: TOKEN_B },
        "nodes": ["pveb1"],
        "guests": [{ "vmid": 200, "name": "db", "node": "pveb1" }]
    }));
    let (server, admin) = start().await;
    let state = tempfile::tempdir().unwrap();
    let edge = state.path().join("edge1");
    let token = service_token(&server, &admin, "agent").await;
    let mut agent = spawn_agent(&server.url, &server.pin, "edge1", &edge, Some(&token), &[]);
    wait_connected(&server, &admin, "edge1", &edge.with_extension("log")).await;

    // Site A's token is pinned to its certificate; site B's pin is written the way the
    // PVE web UI shows it (colon-separated, upper case).
    add_secret(&server, &admin, "site-a", TOKEN_A, json!({ "mode": "pinned_sha256", "sha256": site_a.cert_sha256 }))
        .await;
    let colons: Vec<String> =
        site_b.cert_sha256.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).to_uppercase()).collect();
    add_secret(&server, &admin, "site-b", TOKEN_B, json!({ "mode": "pinned_sha256", "sha256": colons.join(":") }))
        .await;
    let policy = rule("site-a", "a", "local", site_a.port, "") + &rule("site-b", "b", "edge1", site_b.port, "");
    let (status, body) = server.write_policy("pve.toml", &policy).await;
    assert!(status.is_success(), "{body}");
    // The enrolled nodes say which PVE host they are (as `portcullis-enroll` reports it).
    let host_of = |mut node: NodeRecord, pve_node: &str, cluster: &str| {
        node.tags.insert("pve_node".into(), pve_node.into());
        node.tags.insert("pve_cluster".into(), cluster.into());
        node
    };
    server.add_node(&admin, &host_of(pve_node("pve-a", &site_a.host, "a", None), "pve1", "alpha")).await;
    server.add_node(&admin, &host_of(pve_node("pve-b", &site_b.host, "b", Some("edge1")), "pveb1", "beta")).await;
    // Tagged for site A but behind edge1: site A's rule is scoped to `local`, so its
    // token is never handed out for this device (nor through edge1); and though it
    // claims to be alpha's pve1, it is in another site, so it is not linked to it.
    server
        .add_node(&admin, &host_of(pve_node("pve-a-shadow", &site_a.host, "a", Some("edge1")), "pve1", "alpha"))
        .await;
    // Alpha's second host's name, in another cluster: another machine.
    server.add_node(&admin, &host_of(pve_node("pve2", "192.0.2.2", "z", Some("edge1")), "pve2", "beta")).await;

    let alpha = eventually(Duration::from_secs(60), "cluster alpha", || cluster(&server, &admin, "local/alpha")).await;
    let beta = eventually(Duration::from_secs(60), "cluster beta", || cluster(&server, &admin, "edge1/beta")).await;

    let inv = &alpha["inventory"];
    assert_eq!(inv["version"], "9.0.10");
    assert_eq!(inv["quorate"], true);
    let names: Vec<&str> = inv["nodes"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["pve1", "pve2"]);
    let guests = inv["guests"].as_array().unwrap();
    assert_eq!(guests.len(), 2, "{inv}");
    assert_eq!((guests[0]["vmid"].as_u64(), guests[0]["kind"].as_str()), (Some(100), Some("qemu")));
    assert_eq!(guests[0]["config"]["memory"], "2048");
    assert_eq!(guests[0]["config"]["scsi0"], "local-lvm:vm-100-disk-0,size=32G");
    assert_eq!((guests[1]["kind"].as_str(), guests[1]["node"].as_str()), (Some("lxc"), Some("pve2")));
    assert!(inv["storage"].as_array().unwrap().iter().any(|s| s["name"] == "local-lvm" && s["active"] == true));
    assert!(inv["interfaces"].as_array().unwrap().iter().any(|i| i["name"] == "vmbr0"));
    assert!(!inv["disks"].as_array().unwrap().is_empty(), "{inv}");
    assert_eq!(inv["ceph"]["health"], "HEALTH_OK");
    assert!(inv["ceph"]["osds"].as_array().unwrap().iter().any(|o| o["name"] == "osd.0"));
    assert_eq!(beta["inventory"]["guests"][0]["name"], "db");
    // PVE hosts link to the enrolled nodes they are, never by a bare name across sites.
    assert_eq!(alpha["node_links"], json!({ "pve1": "pve-a" }), "{alpha}");
    assert_eq!(beta["node_links"], json!({ "pveb1": "pve-b" }), "{beta}");

    // Each grant went to its own site's device and agent; the shadow device got none.
    let started = server.audit_events("pve_collection_started").await;
    assert!(started.iter().any(|r| r.payload["device"] == "pve-a" && r.payload["agent"] == "local"));
    assert!(started.iter().any(|r| r.payload["device"] == "pve-b" && r.payload["agent"] == "edge1"));
    assert!(started.iter().all(|r| r.payload["device"] != "pve-a-shadow"), "{started:?}");
    assert!(started.iter().all(|r| r.payload["device"] != "pve-a" || r.payload["rule"] == "site-a"));
    // Site B's token holds write privileges: collected anyway, and said so.
    let warned = server.await_audit("pve_collection_warnings", |r| r.payload["device"] == "pve-b").await;
    assert!(warned.payload["write_privileges"].to_string().contains("VM.Allocate"), "{warned:?}");

    // Unchanged runs write nothing but their run rows.
    let drifts = server.audit_events("pve_inventory_drift").await.len();
    let changed_at = alpha["summary"]["changed_at"].clone();
    let runs = runs_of(&server, "pve-a").await;
    eventually(Duration::from_secs(60), "two more runs", || async {
        let view = cluster(&server, &admin, "local/alpha").await?;
        (runs_of(&server, "pve-a").await >= runs + 2 && view["summary"]["last_result"] == "unchanged").then_some(())
    })
    .await;
    assert_eq!(server.audit_events("pve_inventory_drift").await.len(), drifts, "an unchanged run recorded drift");
    assert_eq!(cluster(&server, &admin, "local/alpha").await.unwrap()["summary"]["changed_at"], changed_at);
    let warnings = server.audit_events("pve_collection_warnings").await.len();

    // A guest starts: one drift record naming the field.
    site_a.command(json!({ "op": "set_status", "vmid": 100, "status": "running" }));
    let drift = server
        .await_audit_within(Duration::from_secs(30), "pve_inventory_drift", |r| {
            r.payload["cluster"] == "local/alpha" && r.payload["first"] == false
        })
        .await;
    assert_eq!(drift.payload["fields"], json!(["guest.100.status"]));
    assert_eq!(server.audit_events("pve_collection_warnings").await.len(), warnings, "unchanged warnings repeated");

    // Guests are devices: a rule can target them (the preview shows it), and a console
    // request for one gets the explicit unsupported answer, not a ticket.
    let (status, body) = server.write_policy("guests.toml", GUEST_CONSOLES).await;
    assert!(status.is_success(), "{body}");
    let (_, previews) = server.get_json(Some(&admin), "/v1/admin/rules/guest-consoles/preview").await;
    assert_eq!(previews[0]["in_scope"], json!(["vm100.alpha"]), "{previews}");
    server.add_user(&admin, "carol", &["vmops"], "carol-password-1234").await;
    let carol = server.login("carol", "carol-password-1234").await;
    let ticket = |device: &str| json!({ "device": device, "login": "root", "mode": "ssh" });
    let (status, answer) = server.post_json(Some(&carol), "/v1/console/tickets", &ticket("vm100.alpha")).await;
    assert_eq!((status.as_u16(), answer["error"].as_str()), (400, Some("unsupported_console_mode")), "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("node pve1"), "{answer}");
    server.await_audit("console_ticket_denied", |r| r.payload["reason"] == "guest_console_unsupported").await;
    // A guest no role of hers targets reads like an unknown device.
    let (status, answer) = server.post_json(Some(&carol), "/v1/console/tickets", &ticket("ct101.alpha")).await;
    assert_eq!(status.as_u16(), 403, "{answer}");
    // Her device list shows the guests her role reaches, each under the enrolled node it
    // runs on, saying why no console opens; the container and the nodes are not hers.
    let (_, devices) = server.get_json(Some(&carol), "/v1/console/devices").await;
    let listed: Vec<(&str, &str, &str)> = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert!(d["logins"].as_array().unwrap().is_empty() && d["console_unavailable"].is_string(), "{d}");
            (d["name"].as_str().unwrap(), d["guest"]["parent"].as_str().unwrap_or("-"), d["status"].as_str().unwrap())
        })
        .collect();
    assert_eq!(listed, [("vm200.beta", "pve-b", "stopped"), ("vm100.alpha", "pve-a", "running")], "{devices}");

    // The CLI lists both clusters, one in detail, and the secrets without their values.
    let cli = AdminCli::login(&server).await;
    let mut out = cli.run(&["admin", "inventory", "clusters"], "");
    assert!(out.contains("local/alpha") && out.contains("edge1/beta"), "{out}");
    out += &cli.run(&["admin", "inventory", "cluster", "local/alpha"], "");
    assert!(out.contains("web") && out.contains("HEALTH_OK") && out.contains("enrolled as pve-a"), "{out}");
    out += &cli.run(&["admin", "secret", "list"], "");
    assert!(out.contains("site-a") && out.contains(IDENTITY), "{out}");

    // Canary: no token value in any log, audit record, API answer or CLI output, and not
    // in the database in the clear.
    let audit = serde_json::to_string(&server.audit().await.iter().map(|r| &r.payload).collect::<Vec<_>>()).unwrap();
    let (_, secrets) = server.get_json(Some(&admin), "/v1/admin/secrets").await;
    let (_, clusters) = server.get_json(Some(&admin), "/v1/admin/inventory/clusters").await;
    let db = std::fs::read(server.data_dir.join("portcullis.db")).unwrap_or_default();
    let agent_log = std::fs::read_to_string(edge.with_extension("log")).unwrap_or_default();
    let places = [
        ("server log", server.log() + &server.stdout()),
        ("agent log", agent_log),
        ("audit", audit),
        ("secrets", secrets.to_string()),
        ("clusters", clusters.to_string()),
        ("cluster view", alpha.to_string() + &beta.to_string()),
        ("cli", out),
        ("database", String::from_utf8_lossy(&db).into_owned()),
    ];
    for (place, text) in places {
        for token in [TOKEN_A, TOKEN_B] {
            assert!(!text.contains(token) && !text.contains(&token[..18]), "a token is in the {place}");
        }
    }
    agent.kill().unwrap();
    agent.wait().unwrap();
}

/// A 403 on one endpoint, an offline node, lost quorum and Ceph down: each reported,
/// the rest stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_answers_are_reported_per_endpoint_and_the_rest_is_stored() {
    let mut site = Site::start(json!({
        "cluster_name": "gamma",
        "tokens": { IDENTITY: TOKEN_A },
        "acl": auditor(IDENTITY),
        "nodes": ["pve1", "pve2"],
        "ceph": true,
        "guests": [{ "vmid": 300, "name": "app", "node": "pve1" }, { "vmid": 301, "name": "gone", "node": "pve2" }]
    }));
    site.command(json!({ "op": "fail", "method": "GET", "suffix": "/nodes/pve1/disks/list", "status": 403,
                         "message": "Permission check failed (/nodes/pve1, Sys.Audit)" }));
    site.command(json!({ "op": "offline", "node": "pve2" }));
    site.command(json!({ "op": "lose_quorum" }));
    site.command(json!({ "op": "ceph_down" }));
    let (server, admin) = start().await;
    add_secret(&server, &admin, "site-g", TOKEN_A, json!({ "mode": "pinned_sha256", "sha256": site.cert_sha256 }))
        .await;
    let (status, body) = server.write_policy("pve.toml", &rule("site-g", "g", "local", site.port, "")).await;
    assert!(status.is_success(), "{body}");
    server.add_node(&admin, &pve_node("pve-g", &site.host, "g", None)).await;

    let view = eventually(Duration::from_secs(60), "cluster gamma", || cluster(&server, &admin, "local/gamma")).await;
    let inv = &view["inventory"];
    assert_eq!(inv["quorate"], false, "{inv}");
    let pve2 = inv["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "pve2").unwrap();
    assert_eq!(pve2["status"], "offline");
    // The guest on the offline node is listed (from the cluster's resources) without config.
    let gone = inv["guests"].as_array().unwrap().iter().find(|g| g["vmid"] == 301).unwrap();
    assert!(gone["config"].as_object().unwrap().is_empty(), "{gone}");
    assert_eq!(inv["guests"][0]["name"], "app");
    assert!(inv["disks"].as_array().unwrap().is_empty(), "the forbidden endpoint gave nothing: {inv}");
    assert!(!inv["interfaces"].as_array().unwrap().is_empty(), "the other endpoints of pve1 were read: {inv}");
    assert_eq!(inv["ceph"]["health"], "unavailable");
    let failures = view["summary"]["last_endpoint_failures"].to_string();
    assert!(
        failures.contains("/nodes/pve1/disks/list: forbidden (grant Sys.Audit on /nodes/pve1"),
        "the 403 names the privilege to add: {failures}"
    );
    assert!(failures.contains("/cluster/ceph/status: unavailable"), "{failures}");
    let warned = server.await_audit("pve_collection_warnings", |r| r.payload["device"] == "pve-g").await;
    assert!(warned.payload["endpoint_failures"].to_string().contains("disks/list"), "{warned:?}");
}
