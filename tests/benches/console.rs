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

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_tests::bastion_world::{CONSOLE_POLICY, PASSWORD, World};
use std::path::Path;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
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
        let out = std::process::Command::new("node")
            .arg("console_bench.mjs")
            .arg(config.to_string())
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("browser"))
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("bench script: {}", String::from_utf8_lossy(&out.stderr)));
        assert!(report.get("error").is_none(), "{report:#}");
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
    });
}
