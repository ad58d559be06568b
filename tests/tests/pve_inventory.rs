//! Proxmox VE inventory end to end, against fakepve sites (the PyPI fake of the PVE API):
//! tokens stored sealed at the CA, credential rules scoping each token to its site's
//! agent, the all-in-one's bastion collecting through the built-in agent and an external
//! one, and the CA storing clusters, nodes, guests, storage and Ceph with drift.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_proto::NodeRecord;
use portcullis_tests::cli::AdminCli;
use portcullis_tests::fakepve::Site;
use portcullis_tests::services::{service_token, spawn_agent, wait_connected};
use portcullis_tests::{Server, ServerOpts};
use serde_json::{Value, json};
use std::future::Future;
use std::time::{Duration, Instant};

const IDENTITY: &str = "inv@pve!portcullis";
/// Canary token values: they must never appear anywhere but in the sites' own memory.
const TOKEN_A: &str = "5e0d7c1a-aaaa-4b2f-9c1d-canary0000a1";
const TOKEN_B: &str = "9f3b2e4d-bbbb-4c3a-8d2e-canary0000b2";

/// The read-only privileges of PVE's `PVEAuditor` role, on `/`.
fn auditor(token: &str) -> Value {
    json!([[token, "/", ["Sys.Audit", "VM.Audit", "Datastore.Audit", "Pool.Audit", "SDN.Audit"]]])
}

/// carol may open consoles on QEMU guests of cluster alpha — which Portcullis refuses to
/// serve, explicitly.
const GUEST_CONSOLES: &str = r#"
[[role]]
name = "guest-console"
logins = ["root"]
targets = 'in:devices type:vm'
permissions = ["devices.console.open"]
session = { idle = "15m", absolute = "1h" }

[[binding]]
group = "vmops"
roles = ["guest-console"]

[[rule]]
name = "guest-consoles"
purpose = "console_access"
targets = 'in:devices type:vm metadata.cluster:alpha'
scope = { agents = ["local"] }
"#;

fn rule(name: &str, site: &str, agent: &str, port: u16, extra: &str) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\npurpose = \"inventory_enrichment\"\nprovider = \"proxmox\"\n\
         auth_method = \"proxmox_api_token\"\nsecret = \"{name}\"\napi_port = {port}\n\
         targets = 'in:devices tags.site:{site}'\nscope = {{ agents = [\"{agent}\"] }}\n{extra}\n"
    )
}

fn pve_node(name: &str, host: &str, site: &str, agent: Option<&str>) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        addresses: vec![host.into()],
        agent: agent.map(str::to_owned),
        tags: [("site".to_string(), site.to_string())].into(),
        ..NodeRecord::default()
    }
}

async fn start() -> (Server, String) {
    let opts = ServerOpts { args: vec!["--pve-interval".into(), "2".into()], ..ServerOpts::default() };
    let server = Server::start_with(opts).await;
    let admin = server.admin_token().await;
    (server, admin)
}

async fn add_secret(server: &Server, admin: &str, name: &str, token: &str, tls: Value) -> Value {
    let body = json!({ "name": name, "kind": "proxmox_api_token", "identity": IDENTITY, "secret": token, "tls": tls });
    let (status, answer) = server.post_json(Some(admin), "/v1/admin/secrets", &body).await;
    assert!(status.is_success(), "{answer}");
    answer
}

/// Waits up to `within` for `check` to give `Some`.
async fn eventually<T, F, Fut>(within: Duration, what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn cluster(server: &Server, admin: &str, id: &str) -> Option<Value> {
    let (status, view) = server.get_json(Some(admin), &format!("/v1/admin/inventory/clusters/{id}")).await;
    status.is_success().then_some(view)
}

async fn runs_of(server: &Server, device: &str) -> usize {
    let started = server.audit_events("pve_collection_started").await;
    started.iter().filter(|r| r.payload["device"] == device).count()
}

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

    // An answer past the cap (9 MiB): that endpoint is refused, the rest is stored.
    let huge = "x".repeat(9 << 20);
    site.command(
        json!({ "op": "fail", "method": "GET", "suffix": "/cluster/resources", "status": 200, "message": huge }),
    );
    let summary = eventually(Duration::from_secs(60), "a too_large failure", || async {
        let view = cluster(&server, &admin, "local/delta").await?;
        let failures = view["summary"]["last_endpoint_failures"].to_string();
        failures.contains("/cluster/resources: too_large").then_some(view)
    })
    .await;
    assert_eq!(summary["inventory"]["nodes"][0]["name"], "pve1");

    // Every request hangs: the run ends with `timeout` (20 s per request), no hang.
    site.command(json!({ "op": "hang", "secs": 600 }));
    server.await_audit_within(Duration::from_secs(90), "pve_collection_failed", failed("timeout")).await;
}

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
