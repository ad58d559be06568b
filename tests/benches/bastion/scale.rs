//! Scale: many idle jump sessions through a remote agent to a TCP sink, then churn.

use super::idle::*;
use super::*;
use portcullis_tests::services;
use std::sync::Arc;

/// Set in the environment when this bench runs itself again as the scale phase's node:
/// the address the sink listens on.
pub(super) const SINK_ENV: &str = "PORTCULLIS_BENCH_SINK";

/// The scale phase's node: holds every TCP connection made to `addr`, says `listening`
/// once bound, and ends when its standard input closes (the bench is done or died).
pub(super) fn run_sink(addr: &str) -> ExitCode {
    let listener = match std::net::TcpListener::bind(addr) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("sink {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening");
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0)
    });
    let mut held = Vec::new();
    for socket in listener.incoming() {
        match socket {
            Ok(socket) => held.push(socket),
            Err(e) => {
                eprintln!("sink accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    ExitCode::SUCCESS
}

/// This bench run again as a TCP sink on `ip:22` ([`run_sink`]): a process of its own,
/// so the sessions' node-side descriptors count against its own open-files limit.
struct Sink {
    _process: services::Process,
    pid: u32,
    /// Descriptors it held before the first session (standard streams, the listener).
    base_fds: usize,
}

impl Sink {
    fn start(ip: &str) -> Result<Sink, String> {
        use std::io::BufRead;
        let exe = std::env::current_exe().map_err(|e| format!("sink: {e}"))?;
        let mut child = Command::new(exe)
            .env(SINK_ENV, format!("{ip}:22"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("sink: {e}"))?;
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or("sink: no stdout")?;
        let pid = child.id();
        let process = services::Process::new(child);
        std::io::BufReader::new(stdout).read_line(&mut line).map_err(|e| format!("sink: {e}"))?;
        if line.trim() != "listening" {
            return Err(format!("sink did not start: {line:?}"));
        }
        Ok(Sink { _process: process, pid, base_fds: procfs::open_fds(pid) })
    }

    fn holds(&self) -> usize {
        procfs::open_fds(self.pid).saturating_sub(self.base_fds)
    }
}

/// What the scale phase reads about one process.
struct Usage {
    rss_kib: u64,
    cpu_seconds: f64,
}

impl Usage {
    fn of(pid: u32) -> Usage {
        Usage { rss_kib: procfs::rss_kib(pid), cpu_seconds: procfs::cpu_seconds(pid) }
    }
}

/// Jump-mode sessions held through one all-in-one (CA and bastion) and one remote edge
/// agent (`portcullisd agent`, its link to the bastion up throughout), each a
/// `direct-tcpip` channel to a TCP sink (the node is not what is measured: an sshd per
/// session would need 16 GiB for 10,000), then sessions opened and closed for a while.
///
/// Each of the four processes (this bench's clients, portcullisd, the agent, the sink)
/// holds one descriptor per session, so a session count up to about the open-files
/// limit fits; with the built-in agent, portcullisd would hold two per session.
pub(super) async fn scale_phase(n: usize) -> Result<(), String> {
    const CONCURRENCY: usize = 8;
    const CHURN_FOR: Duration = Duration::from_secs(20);
    const AGENT: &str = "edge1";
    println!();
    println!(
        "== scale: {n} idle jump sessions through remote agent {AGENT} to a TCP sink, \
         opened {CONCURRENCY} at a time; then churn =="
    );
    let world = World::start(IDLE).await;
    let creds = load_credentials(&world.dir.path().join("id"));
    let (status, body) = world.server.write_policy("edge.toml", &services::agent_rule(AGENT)).await;
    if !status.is_success() {
        return Err(format!("policy: {body}"));
    }
    let state = world.dir.path().join(AGENT);
    let token = services::service_token(&world.server, &world.admin, "agent").await;
    let agent = services::Process::new(services::spawn_agent(
        &world.server.url,
        &world.server.pin,
        AGENT,
        &state,
        Some(&token),
        &[],
    ));
    services::wait_connected(&world.server, &world.admin, AGENT, &state.with_extension("log")).await;
    let sink_ip = loopback_ip();
    let sink = Sink::start(&sink_ip)?;
    let record = portcullis_proto::NodeRecord {
        name: "sink".into(),
        addresses: vec![sink_ip.clone()],
        tags: [("env".to_owned(), "prod".to_owned())].into(),
        agent: Some(AGENT.into()),
        ..Default::default()
    };
    world.server.add_node(&world.admin, &record).await;
    let pid = procfs::child_with_arg(&world.server.data_dir).ok_or("portcullisd not found in /proc")?;
    let agent_pid = agent.id().ok_or("the agent is not running")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (server_before, agent_before) = (Usage::of(pid), Usage::of(agent_pid));

    let open = {
        let (front, creds, sink_ip) = (world.server.bastion, creds.clone(), sink_ip.clone());
        move |permits: Arc<tokio::sync::Semaphore>| {
            let (creds, sink_ip) = (creds.clone(), sink_ip.clone());
            async move {
                let _permit = permits.acquire_owned().await.unwrap();
                let outer = login(Err(front), "alice", &creds).await?;
                let channel = outer
                    .channel_open_direct_tcpip(sink_ip.as_str(), 22, "127.0.0.1", 0)
                    .await
                    .map_err(|e| format!("direct-tcpip: {e}"))?;
                Ok::<_, String>((outer, channel))
            }
        }
    };
    let t0 = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        tasks.spawn(open(Arc::clone(&permits)));
    }
    let (held, failures) = opened(tasks).await;
    let open_time = t0.elapsed();
    if let Some(first) = failures.first() {
        println!("{} of {n} sessions could not be opened; first error: {first}", failures.len());
    }
    // Held a while: heartbeats for all of them every 500 ms is the steady cost.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (server_held0, agent_held0) = (Usage::of(pid), Usage::of(agent_pid));
    let hold = Duration::from_secs(20);
    tokio::time::sleep(hold).await;
    let (server_held, agent_held) = (Usage::of(pid), Usage::of(agent_pid));
    let (status, body) = world.server.get_json(Some(&world.admin), "/v1/admin/sessions").await;
    assert!(status.is_success(), "GET /v1/admin/sessions: {body}");
    let live = body.as_array().map_or(0, Vec::len);
    let (status, agents) = world.server.get_json(Some(&world.admin), "/v1/admin/agents").await;
    let agent_up = status.is_success() && services::agent_connected(&agents, AGENT, None);
    let closed_early = world.server.audit_events("session_closed").await.len();
    let link_drops = world.server.audit_events("agent_disconnected").await.len();
    println!(
        "opened {} of {n} in {:.0} s ({:.0}/s); live per the CA: {live}; closed while held: {closed_early}; \
         agent {AGENT} connected: {agent_up}, link drops: {link_drops}; sink holds {}",
        held.len(),
        open_time.as_secs_f64(),
        held.len() as f64 / open_time.as_secs_f64(),
        sink.holds()
    );
    for (name, pid, before, held0, held) in [
        ("portcullisd (CA + bastion)", pid, &server_before, &server_held0, &server_held),
        ("portcullisd agent", agent_pid, &agent_before, &agent_held0, &agent_held),
    ] {
        println!(
            "{name}: RSS {} → {} KiB ({:.1} KiB/session), {} descriptors, {:.0} % of a core while holding them, \
             {:.1} s CPU to open them",
            before.rss_kib,
            held.rss_kib,
            (held.rss_kib as f64 - before.rss_kib as f64) / live.max(1) as f64,
            procfs::open_fds(pid),
            (held.cpu_seconds - held0.cpu_seconds) / hold.as_secs_f64() * 100.0,
            held0.cpu_seconds - before.cpu_seconds
        );
    }

    // Churn beside the held sessions: open, close, repeat, for a while.
    let churn_start = Instant::now();
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut churners = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (open, opened) = (open.clone(), Arc::clone(&opened));
        churners.spawn(async move {
            let permits = Arc::new(tokio::sync::Semaphore::new(1));
            while churn_start.elapsed() < CHURN_FOR {
                if let Ok((outer, channel)) = open(Arc::clone(&permits)).await {
                    drop(channel);
                    let _ = outer.disconnect(russh::Disconnect::ByApplication, "", "").await;
                    opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    churners.join_all().await;
    let churned = opened.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "churn beside them: {churned} sessions opened and closed in {:.0} s ({:.0}/s, {CONCURRENCY} at a time)",
        churn_start.elapsed().as_secs_f64(),
        churned as f64 / churn_start.elapsed().as_secs_f64()
    );
    drop(held);
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!(
        "RSS 5 s after closing them all: portcullisd {} KiB, agent {} KiB",
        procfs::rss_kib(pid),
        procfs::rss_kib(agent_pid)
    );
    if failures.is_empty() && live == n && agent_up {
        Ok(())
    } else {
        Err(format!("{} sessions failed to open, {live} of {n} live, agent connected: {agent_up}", failures.len()))
    }
}
