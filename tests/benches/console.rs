//! Browser-terminal benchmark (issue 7): output throughput into xterm.js and keystroke
//! echo latency, in Debian's headless Chromium, through the all-in-one's web UI, bastion
//! and built-in agent to a node's `sshd`.
//!
//! ```sh
//! cargo build --release --bins && cargo bench -p portcullis-tests --bench console
//! ```
//!
//! `PORTCULLIS_BENCH_CONSOLE_BYTES` (default 32 MiB) and `PORTCULLIS_BENCH_KEYS`
//! (default 300) size the two measurements. Targets: ≥ 10 MB/s (floor 2), echo p99
//! < 20 ms (floor 50).
//!
//! Then the device list (issue 19) with `PORTCULLIS_BENCH_DEVICES` (default 5,000)
//! nodes the user may open: the list's API call, the first rendered page after a page
//! load, and in the page a search down to one device, clearing it, the next page and a
//! re-sort. Target: first render < 1 s, each step < 100 ms.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_tests::bastion_world::{CONSOLE_POLICY, PASSWORD, World};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs `tests/browser/<script>`; its JSON report, which must hold no error.
fn run_script(script: &str, config: &serde_json::Value) -> serde_json::Value {
    let report = portcullis_tests::browser::run_script(script, config);
    assert!(report.get("error").is_none(), "{report:#}");
    report
}

/// Adds `n` prod nodes alice may open a console to, and measures her device list.
async fn device_list(w: &World, n: u64) {
    let started = std::time::Instant::now();
    for i in 0..n {
        let node = portcullis_proto::NodeRecord {
            name: format!("bench-{i:05}"),
            addresses: vec![format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)],
            tags: [("env".to_owned(), "prod".to_owned()), ("rack".to_owned(), format!("r{}", i % 40))].into(),
            ..Default::default()
        };
        w.server.add_node(&w.admin, &node).await;
    }
    let added = started.elapsed().as_secs_f64();
    let needle = format!("bench-{:05}", n / 2);
    let config =
        serde_json::json!({ "url": w.server.url, "username": "alice", "password": PASSWORD, "needle": needle });
    let r = run_script("device_list_bench.mjs", &config);
    let ms = |k: &str| r[k].as_f64().unwrap();
    println!("device list ({} devices; {n} added through the API in {added:.1} s)", r["devices"]);
    println!("  GET /v1/console/devices  {:>8.1} ms", ms("api_ms"));
    println!("  first rendered page      {:>8.1} ms   (page load to rows)   target < 1000", ms("first_render_ms"));
    println!("  search to one device     {:>8.1} ms   ({} row(s))   target < 100", ms("filter_ms"), r["filter_rows"]);
    println!("  clear the search         {:>8.1} ms   target < 100", ms("clear_ms"));
    println!("  next page                {:>8.1} ms   target < 100", ms("next_page_ms"));
    println!("  sort by status           {:>8.1} ms   target < 100   ({})", ms("sort_ms"), r["count"]);
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let w = World::start("1h").await;
        let (status, body) = w.server.write_policy("console.toml", CONSOLE_POLICY).await;
        assert!(status.is_success(), "{body}");
        let bytes = env_or("PORTCULLIS_BENCH_CONSOLE_BYTES", 32 * 1024 * 1024);
        let keys = env_or("PORTCULLIS_BENCH_KEYS", 300);
        let config = serde_json::json!({
            "url": w.server.url, "username": "alice", "password": PASSWORD,
            "device": "pve01", "login": "root", "bytes": bytes, "keys": keys,
        });
        let report = run_script("console_bench.mjs", &config);
        let mib_s = report["throughput_mib_s"].as_f64().unwrap();
        let mb_s = mib_s * 1.048_576;
        let echo = &report["echo_ms"];
        println!("browser console (headless Chromium, xterm.js 5.5, through bastion + agent)");
        println!(
            "  output throughput  {:>8.1} MB/s  ({} bytes in {:.2} s)   target >= 10, floor 2",
            mb_s,
            bytes,
            report["seconds"].as_f64().unwrap()
        );
        println!(
            "  keystroke echo     p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms  (n = {})   target p99 < 20, floor 50",
            echo["p50"].as_f64().unwrap(),
            echo["p99"].as_f64().unwrap(),
            echo["max"].as_f64().unwrap(),
            echo["n"]
        );
        device_list(&w, env_or("PORTCULLIS_BENCH_DEVICES", 5000)).await;
    });
}
