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

mod collection;
mod refusals;
mod rules;
