//! Proxmox VE inventory at scale: one all-in-one (CA, bastion and its built-in agent in
//! one process) collecting a fakepve cluster of 16 nodes and 2,000 guests — the time from
//! loading the credential rule to a complete inventory, the server's peak memory, and
//! what a second, unchanged run writes (nothing but its run record is expected).
//!
//! ```text
//! cargo build --release --bins && cargo bench -p portcullis-tests --bench pve
//! ```
//!
//! Environment: `PORTCULLIS_BENCH_PVE_NODES` (default 16), `PORTCULLIS_BENCH_PVE_GUESTS`
//! (default 2000). It prints and never judges time; it fails when the inventory is not
//! complete, because then the numbers would not mean what they say.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_proto::NodeRecord;
use portcullis_tests::fakepve::Site;
use portcullis_tests::{Server, ServerOpts};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const IDENTITY: &str = "bench@pve!inventory";
const TOKEN: &str = "00000000-bench-4000-8000-000000000000";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

fn main() {
    let nodes = env_usize("PORTCULLIS_BENCH_PVE_NODES", 16).max(1);
    let guests = env_usize("PORTCULLIS_BENCH_PVE_GUESTS", 2000);
    let node_names: Vec<String> = (1..=nodes).map(|i| format!("pve{i}")).collect();
    let guest_list: Vec<Value> = (0..guests)
        .map(|i| {
            let node = &node_names[i % nodes];
            let kind = if i % 2 == 0 { "qemu" } else { "lxc" };
            json!({ "vmid": 1000 + i, "name": format!("guest{i}"), "node": node, "type": kind,
                    "status": if i % 3 == 0 { "running" } else { "stopped" },
                    "config": { "memory": 1024, "cores": 2, "description": format!("bench guest {i}") } })
        })
        .collect();
    let mut site = Site::start(json!({
        "cluster_name": "bench",
        "tokens": { IDENTITY: TOKEN },
        "acl": [[IDENTITY, "/", ["Sys.Audit", "VM.Audit", "Datastore.Audit"]]],
        "nodes": node_names,
        "guests": guest_list,
        "ceph": true
    }));
    println!("pve inventory benchmark: {nodes} nodes, {guests} guests (fakepve, one site)");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let opts = ServerOpts { args: vec!["--pve-interval".into(), "1".into()], ..ServerOpts::default() };
        let server = Server::start_with(opts).await;
        let admin = server.admin_token().await;
        let secret = json!({ "name": "bench", "kind": "proxmox_api_token", "identity": IDENTITY, "secret": TOKEN,
                             "tls": { "mode": "pinned_sha256", "sha256": site.cert_sha256 } });
        let (status, body) = server.post_json(Some(&admin), "/v1/admin/secrets", &secret).await;
        assert!(status.is_success(), "{body}");
        let node = NodeRecord {
            name: "pve-bench".into(),
            addresses: vec![site.host.clone()],
            tags: [("provider".to_string(), "proxmox".to_string())].into(),
            ..NodeRecord::default()
        };
        server.add_node(&admin, &node).await;
        let rule = format!(
            "[[rule]]\nname = \"bench\"\npurpose = \"inventory_enrichment\"\nprovider = \"proxmox\"\n\
             auth_method = \"proxmox_api_token\"\nsecret = \"bench\"\napi_port = {}\n\
             targets = 'in:devices tags.provider:proxmox'\nscope = {{ agents = [\"local\"] }}\n",
            site.port
        );
        let idle_peak = portcullis_tests::procfs::peak_rss_kib(server.pid());
        let started = Instant::now();
        let (status, body) = server.write_policy("bench.toml", &rule).await;
        assert!(status.is_success(), "{body}");
        let view = loop {
            let (status, view) = server.get_json(Some(&admin), "/v1/admin/inventory/clusters/local/bench").await;
            if status.is_success() {
                break view;
            }
            assert!(started.elapsed() < Duration::from_secs(900), "no inventory after 15 minutes");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let complete = started.elapsed();
        let stored = view["inventory"]["guests"].as_array().map_or(0, Vec::len);
        assert_eq!(stored, guests, "the inventory is incomplete");
        let configs =
            view["inventory"]["guests"].as_array().unwrap().iter().filter(|g| g["config"]["cores"] == "2").count();
        assert_eq!(configs, guests, "guest configurations are missing");
        let requests = site.requests().len();
        println!(
            "first collection: complete inventory in {:.2} s ({requests} API requests, {stored} guests with config)",
            complete.as_secs_f64()
        );

        // The second, unchanged run.
        let drifts = server.audit_events("pve_inventory_drift").await.len();
        let before = server.audit_events("pve_collection_started").await.len();
        let second = Instant::now();
        loop {
            let (_, view) = server.get_json(Some(&admin), "/v1/admin/inventory/clusters/local/bench").await;
            let after = server.audit_events("pve_collection_started").await.len();
            if after > before && view["summary"]["last_result"] == "unchanged" {
                break;
            }
            assert!(second.elapsed() < Duration::from_secs(900), "no second run");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let new_drifts = server.audit_events("pve_inventory_drift").await.len() - drifts;
        println!(
            "second, unchanged run: done within {:.2} s; drift records written: {new_drifts}, inventory rows \
             rewritten: {} (the run row only)",
            second.elapsed().as_secs_f64(),
            if new_drifts == 0 { 0 } else { stored }
        );
        println!(
            "peak resident memory of portcullisd (CA + bastion + built-in agent): {} MiB ({} MiB before the first run)",
            portcullis_tests::procfs::peak_rss_kib(server.pid()) / 1024,
            idle_peak / 1024
        );
    });
}
