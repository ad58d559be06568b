//! Certificate issuance through the HTTPS API, with persistence and audit: on SQLite
//! (the all-in-one), then on PostgreSQL with two CA replicas (`portcullisd ca`) sharing
//! one database and the clients spread over both — compared in the same run with stock
//! OpenSSH (`ssh-keygen -s`, one process per certificate, no persistence — a naive
//! shell CA).
//!
//! Run (the harness starts the `portcullisd` built next to this bench executable):
//!
//! ```text
//! cargo build --release --bins && cargo bench -p portcullis-tests --bench issuance
//! ```
//!
//! Environment: `PORTCULLIS_BENCH_CERTS` (measured certificates per phase, default 8000),
//! `PORTCULLIS_BENCH_CONCURRENCY` (default 16), `PORTCULLIS_BENCH_KEYGEN_CERTS`
//! (ssh-keygen baseline, default 200).
//!
//! This is a benchmark: it prints and never judges time. It does fail (non-zero exit)
//! when any request is not a 200 or when the database does not hold every certificate
//! it was told to issue, because then the numbers would not mean what they say.
//!
//! The client and the server share the machine, so on a small box the client's own TLS
//! and HTTP work is part of what is measured; the CPU each side used is printed.

// Bench code: a failed expectation must stop the run loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_proto::{AuditVerifyResponse, IssuedCert};
use portcullis_tests::replica::CaReplica;
use portcullis_tests::ssh::{SSH_KEYGEN, ed25519_key, public_line, write_key_pair};
use portcullis_tests::{Server, bench_setting, procfs};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const DEFAULT_CERTS: usize = 8000;
const DEFAULT_CONCURRENCY: usize = 16;
const DEFAULT_KEYGEN_CERTS: usize = 200;
const WARMUP_CERTS: usize = 200;
/// The default policy lets the bootstrap admin log in as root.
const PRINCIPAL: &str = "root";

fn main() -> ExitCode {
    let certs = bench_setting("PORTCULLIS_BENCH_CERTS", DEFAULT_CERTS).max(1);
    let concurrency = bench_setting("PORTCULLIS_BENCH_CONCURRENCY", DEFAULT_CONCURRENCY).max(1);
    let keygen_certs = bench_setting("PORTCULLIS_BENCH_KEYGEN_CERTS", DEFAULT_KEYGEN_CERTS).max(2);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("issuance benchmark: {certs} certificates, concurrency {concurrency}, {cores} CPU core(s)");

    // The baseline runs first, alone, so the idle server does not share its CPU.
    let keygen = keygen_baseline(keygen_certs);

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let portcullis = match runtime.block_on(portcullis_run(certs, concurrency)) {
        Ok(rate) => rate,
        Err(why) => {
            eprintln!("FAILED: {why}");
            return ExitCode::FAILURE;
        }
    };
    let postgres = match runtime.block_on(postgres_run(certs, concurrency)) {
        Ok(rate) => rate,
        Err(why) => {
            eprintln!("FAILED (PostgreSQL): {why}");
            return ExitCode::FAILURE;
        }
    };

    println!();
    println!("== comparison ==");
    println!(
        "portcullis (HTTPS + SQLite + audit, c={concurrency}) / ssh-keygen sequential: {:.1}x",
        portcullis / keygen.sequential
    );
    println!(
        "portcullis (HTTPS + SQLite + audit, c={concurrency}) / ssh-keygen 2 parallel:  {:.1}x",
        portcullis / keygen.parallel
    );
    println!(
        "portcullis (2 replicas + PostgreSQL + audit, c={concurrency}) / SQLite all-in-one: {:.2}x ({postgres:.0}/s)",
        postgres / portcullis
    );
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------
// Portcullis through its API

/// Runs the measured load; returns certificates per second, or why the run is invalid.
async fn portcullis_run(certs: usize, concurrency: usize) -> Result<f64, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server = Server::start().await;
    let token = server.admin_token().await;
    let server_pid = procfs::child_with_arg(&server.data_dir);

    // One client for every worker: a pool of keep-alive HTTP/1.1 connections, each with
    // its TLS handshake done once.
    let client = pooled_client(&server.pin, concurrency);

    // One key per worker: the CA signs whatever key it is given, and fresh keys per
    // request would only measure the client's key generation.
    let bodies: Vec<Arc<Vec<u8>>> = (0..concurrency)
        .map(|_| {
            let line = public_line(&ed25519_key());
            Arc::new(serde_json::to_vec(&serde_json::json!({ "public_key": line })).unwrap())
        })
        .collect();
    let url = Arc::new(server.endpoint("/v1/certs/user"));
    let token = Arc::new(token);

    let targets = [(client, url)];
    let warm = load(&targets, &token, &bodies, WARMUP_CERTS).await;
    warm.check("warm-up")?;

    let certs_before = count_certs(&server, &token).await;
    let issued_before = server.audit_events("cert_issued").await.len();
    let server_cpu_before = server_pid.map(procfs::cpu_seconds);
    let client_cpu_before = procfs::cpu_seconds(std::process::id());
    let machine_before = procfs::machine_cpu_seconds();
    let switches_before = server_pid.map(context_switches);

    let run = load(&targets, &token, &bodies, certs).await;

    let server_cpu = server_pid.map(|pid| procfs::cpu_seconds(pid) - server_cpu_before.unwrap_or(0.0));
    let client_cpu = procfs::cpu_seconds(std::process::id()) - client_cpu_before;
    let machine_busy = procfs::machine_cpu_seconds() - machine_before;
    let switches = server_pid.map(|pid| context_switches(pid) - switches_before.unwrap_or(0));
    run.check("measured run")?;

    let rate = certs as f64 / run.elapsed.as_secs_f64();
    println!();
    println!("== portcullis: POST /v1/certs/user over HTTPS, SQLite, audit ==");
    println!("HTTP version:        {:?}", run.version.unwrap_or_default());
    println!("warm-up:             {WARMUP_CERTS} certificates");
    println!("measured:            {certs} certificates in {:.3} s", run.elapsed.as_secs_f64());
    println!("throughput:          {rate:.0} certificates/s");
    print_latencies(run.latencies);
    match server_cpu {
        Some(s) => println!(
            "CPU during run:      server {s:.2} s ({:.0} µs/cert), bench client {client_cpu:.2} s ({:.0} µs/cert), wall {:.2} s",
            s * 1e6 / certs as f64,
            client_cpu * 1e6 / certs as f64,
            run.elapsed.as_secs_f64()
        ),
        None => println!("CPU during run:      bench client {client_cpu:.2} s (server process not found in /proc)"),
    }

    if let Some(n) = switches {
        println!("server ctx switches: {n} ({:.1} per cert)", n as f64 / certs as f64);
    }

    // Other processes on the machine (a compiler, say) take CPU from both sides.
    let wall = run.elapsed.as_secs_f64();
    let others = (machine_busy - server_cpu.unwrap_or(0.0) - client_cpu).max(0.0);
    println!(
        "machine during run:  {:.2} of {cores} cores busy; other processes {:.2} cores; load average {}",
        machine_busy / wall,
        others / wall,
        load_average()
    );

    // The numbers only count if every certificate was persisted with its audit record.
    let certs_after = count_certs(&server, &token).await;
    let issued_after = server.audit_events("cert_issued").await.len();
    println!(
        "persisted:           certificates {certs_before} -> {certs_after} (+{}), cert_issued audit records +{}",
        certs_after - certs_before,
        issued_after - issued_before
    );
    if certs_after - certs_before != certs || issued_after - issued_before != certs {
        return Err(format!(
            "the database does not hold the {certs} certificates issued \
             (certificates +{}, audit records +{})",
            certs_after - certs_before,
            issued_after - issued_before
        ));
    }
    let (status, body) = server.get_json(Some(&token), "/v1/admin/audit/verify").await;
    if status != StatusCode::OK {
        return Err(format!("GET /v1/admin/audit/verify: {status}: {body}"));
    }
    let verify: AuditVerifyResponse = serde_json::from_value(body).unwrap();
    println!("audit chain:         ok={} over {} records", verify.ok, verify.records);
    if !verify.ok {
        return Err(format!("audit chain broken at {:?}: {:?}", verify.first_bad_seq, verify.problem));
    }
    Ok(rate)
}

struct LoadResult {
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// Requests that were not a 200 (or did not complete), with the first few reasons.
    failures: usize,
    reasons: Vec<String>,
    version: Option<reqwest::Version>,
}

impl LoadResult {
    fn check(&self, phase: &str) -> Result<(), String> {
        if self.failures == 0 {
            return Ok(());
        }
        Err(format!("{phase}: {} request(s) failed; first: {}", self.failures, self.reasons.join(" | ")))
    }
}

/// `total` requests from one task per body, each task taking the next request as soon
/// as its previous one is answered (closed loop).
/// Worker `i` sends to `targets[i % targets.len()]` (a client and the URL it serves).
async fn load(
    targets: &[(reqwest::Client, Arc<String>)],
    token: &Arc<String>,
    bodies: &[Arc<Vec<u8>>],
    total: usize,
) -> LoadResult {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            let (client, url) = &targets[i % targets.len()];
            let (client, url, token, body, next) =
                (client.clone(), Arc::clone(url), Arc::clone(token), Arc::clone(body), Arc::clone(&next));
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(total / 8 + 1);
                let mut failures = 0;
                let mut reasons = Vec::new();
                let mut version = None;
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let t0 = Instant::now();
                    let outcome = issue_once(&client, &url, &token, &body).await;
                    latencies.push(t0.elapsed());
                    match outcome {
                        Ok(v) => version = Some(v),
                        Err(why) => {
                            failures += 1;
                            if reasons.len() < 3 {
                                reasons.push(why);
                            }
                        }
                    }
                }
                (latencies, failures, reasons, version)
            })
        })
        .collect();
    let mut result = LoadResult {
        elapsed: Duration::ZERO,
        latencies: Vec::with_capacity(total),
        failures: 0,
        reasons: Vec::new(),
        version: None,
    };
    for worker in workers {
        let (latencies, failures, reasons, version) = worker.await.expect("worker panicked");
        result.latencies.extend(latencies);
        result.failures += failures;
        result.reasons.extend(reasons.into_iter().take(3 - result.reasons.len().min(3)));
        result.version = result.version.or(version);
    }
    result.elapsed = start.elapsed();
    result
}

/// One issuance; the body is read in full so the latency covers the whole answer.
async fn issue_once(client: &reqwest::Client, url: &str, token: &str, body: &[u8]) -> Result<reqwest::Version, String> {
    let resp = client
        .post(url)
        .bearer_auth(token)
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| format!("transport: {e}"))?;
    let status = resp.status();
    let version = resp.version();
    let text = resp.text().await.map_err(|e| format!("body: {e}"))?;
    if status != StatusCode::OK {
        return Err(format!("{status}: {text}"));
    }
    if !text.contains("-cert-v01@openssh.com ") {
        return Err(format!("200 without a certificate: {text}"));
    }
    Ok(version)
}

async fn count_certs(server: &Server, token: &str) -> usize {
    let (status, body) = server.get_json(Some(token), "/v1/admin/certs").await;
    assert_eq!(status, StatusCode::OK, "GET /v1/admin/certs: {body}");
    let certs: Vec<IssuedCert> = serde_json::from_value(body).unwrap();
    certs.len()
}

// ---------------------------------------------------------------------------------------
// Two CA replicas on one PostgreSQL

/// The same load against two `portcullisd ca` replicas on one PostgreSQL, half the
/// workers on each; certificates per second, or why the run is invalid.
async fn postgres_run(certs: usize, concurrency: usize) -> Result<f64, String> {
    let pg = portcullis_tests::Postgres::start().map_err(|e| format!("{e:#}"))?;
    let database = pg.url();
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let policy = root.path().join("policy");
    std::fs::create_dir_all(&policy).map_err(|e| e.to_string())?;
    std::fs::write(policy.join("default.toml"), portcullis_ca::policy_files::DEFAULT_POLICY)
        .map_err(|e| e.to_string())?;
    let mut replicas = vec![
        CaReplica::new("ca1", root.path(), &database, &policy),
        CaReplica::new("ca2", root.path(), &database, &policy),
    ];
    for r in &mut replicas {
        r.start();
    }
    for r in &mut replicas {
        r.wait_ready().await;
    }
    let password = replicas
        .iter()
        .find_map(|r| std::fs::read_to_string(r.dir.join("data/initial-admin-password")).ok())
        .ok_or("no replica wrote the first administrator's password")?;
    let body =
        serde_json::json!({ "username": "admin", "password": password.trim(), "new_password": "bench-admin-password" });
    let (status, body) = replicas[0].post(None, "/v1/auth/login", &body).await;
    if status != StatusCode::OK {
        return Err(format!("admin sign-in: {status}: {body}"));
    }
    let token = Arc::new(body["token"].as_str().unwrap_or_default().to_owned());
    let targets: Vec<(reqwest::Client, Arc<String>)> = replicas
        .iter()
        .map(|r| (pooled_client(&r.pin, concurrency), Arc::new(format!("{}/v1/certs/user", r.url))))
        .collect();
    let bodies: Vec<Arc<Vec<u8>>> = (0..concurrency)
        .map(|_| {
            Arc::new(serde_json::to_vec(&serde_json::json!({ "public_key": public_line(&ed25519_key()) })).unwrap())
        })
        .collect();
    load(&targets, &token, &bodies, WARMUP_CERTS).await.check("PostgreSQL warm-up")?;
    let replica_pids: Vec<u32> = replicas.iter().filter_map(CaReplica::pid).collect();
    let cpu = || {
        let replicas: f64 = replica_pids.iter().map(|p| procfs::cpu_seconds(*p)).sum();
        (
            replicas,
            pg.pid().map_or(0.0, |pid| {
                procfs::cpu_seconds(pid) + procfs::descendants(pid).into_iter().map(procfs::cpu_seconds).sum::<f64>()
            }),
            procfs::cpu_seconds(std::process::id()),
            procfs::machine_cpu_seconds(),
        )
    };
    let before = cpu();
    let run = load(&targets, &token, &bodies, certs).await;
    let after = cpu();
    run.check("PostgreSQL measured run")?;
    let rate = certs as f64 / run.elapsed.as_secs_f64();
    println!();
    println!("== portcullis: two CA replicas on one PostgreSQL, clients over both ==");
    println!("measured:            {certs} certificates in {:.3} s", run.elapsed.as_secs_f64());
    println!("throughput:          {rate:.0} certificates/s");
    print_latencies(run.latencies);
    let per_cert = |s: f64| s / certs as f64 * 1e6;
    let (replicas_cpu, pg_cpu, client_cpu) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    println!(
        "CPU during run:      replicas {replicas_cpu:.2} s ({:.0} µs/cert), PostgreSQL {pg_cpu:.2} s ({:.0} µs/cert), \
         bench client {client_cpu:.2} s ({:.0} µs/cert); machine {:.2} of 2 cores busy",
        per_cert(replicas_cpu),
        per_cert(pg_cpu),
        per_cert(client_cpu),
        (after.3 - before.3) / run.elapsed.as_secs_f64()
    );
    // Every certificate and audit record in the one database, the chain intact.
    let (status, body) = replicas[1].get(&token, "/v1/admin/certs").await;
    let stored = body.as_array().map_or(0, Vec::len);
    let (_, verify) = replicas[1].get(&token, "/v1/admin/audit/verify").await;
    println!(
        "persisted:           {stored} certificates (warm-up included); audit chain ok={} over {} records",
        verify["ok"], verify["records"]
    );
    if status != StatusCode::OK || stored != certs + WARMUP_CERTS || verify["ok"] != true {
        return Err(format!(
            "the database does not hold every certificate, or the chain is broken: {stored} stored, {verify}"
        ));
    }
    Ok(rate)
}

// ---------------------------------------------------------------------------------------
// Baseline: stock OpenSSH

struct KeygenRates {
    sequential: f64,
    parallel: f64,
}

/// `ssh-keygen -s CA -I id -n root -V +1h key.pub`, one process per certificate.
fn keygen_baseline(n: usize) -> KeygenRates {
    let dir = tempfile::Builder::new().prefix("portcullis-bench-keygen-").tempdir().expect("temporary directory");
    let ca = write_key_pair(dir.path(), "ca", &ed25519_key());
    // One user key per parallel worker: ssh-keygen writes `<key>-cert.pub` beside it.
    let keys: Vec<PathBuf> = (0..2)
        .map(|i| {
            write_key_pair(dir.path(), &format!("user{i}"), &ed25519_key());
            dir.path().join(format!("user{i}.pub"))
        })
        .collect();
    keygen_sign(&ca, &keys[0], 0); // warm the page cache

    let t0 = Instant::now();
    for i in 0..n {
        keygen_sign(&ca, &keys[0], i);
    }
    let sequential = t0.elapsed();

    let t0 = Instant::now();
    std::thread::scope(|s| {
        for (w, key) in keys.iter().enumerate() {
            let ca = &ca;
            s.spawn(move || {
                for i in (w..n).step_by(2) {
                    keygen_sign(ca, key, i);
                }
            });
        }
    });
    let parallel = t0.elapsed();

    let rates =
        KeygenRates { sequential: n as f64 / sequential.as_secs_f64(), parallel: n as f64 / parallel.as_secs_f64() };
    println!();
    println!("== baseline: {SSH_KEYGEN} -s (one process per certificate, no persistence) ==");
    println!(
        "sequential:          {n} certificates in {:.3} s = {:.0} certificates/s ({} per cert)",
        sequential.as_secs_f64(),
        rates.sequential,
        ms(sequential / n as u32)
    );
    println!(
        "2 parallel:          {n} certificates in {:.3} s = {:.0} certificates/s",
        parallel.as_secs_f64(),
        rates.parallel
    );
    rates
}

fn keygen_sign(ca: &Path, key: &Path, serial: usize) {
    let status = Command::new(SSH_KEYGEN)
        .arg("-q")
        .arg("-s")
        .arg(ca)
        .args(["-I", &format!("bench-{serial}"), "-n", PRINCIPAL, "-V", "+1h"])
        .args(["-z", &serial.to_string()])
        .arg(key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {SSH_KEYGEN} (install openssh-client): {e}"));
    assert!(status.success(), "ssh-keygen -s failed: {status}");
}

// ---------------------------------------------------------------------------------------
// Measurement helpers

/// One keep-alive HTTP/1.1 pool for the workers, TLS pinned to `pin`, each connection's
/// handshake done once.
fn pooled_client(pin: &str, concurrency: usize) -> reqwest::Client {
    let tls = portcullis_proto::pin::pinned_client_config(pin).expect("malformed pin");
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .http1_only()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client")
}

fn print_latencies(mut lat: Vec<Duration>) {
    lat.sort_unstable();
    println!(
        "latency:             p50 {}  p90 {}  p99 {}  max {}",
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.90)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
    );
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Voluntary and involuntary context switches of all of a process's threads so far.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}
