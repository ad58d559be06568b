//! Idle sessions: what each costs in memory, per mode; the scale phase shares its client.

use super::*;
use russh::client;
use std::sync::Arc;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum IdleMode {
    /// Through the bastion: `direct-tcpip` to the node, SSH to the node inside it.
    Jump,
    /// `root%pve01` at the bastion, one session channel (the bastion logs in onward).
    Terminated,
    /// `direct-tcpip` through the stock jump sshd, SSH to the node inside it.
    Baseline,
}

impl IdleMode {
    pub(super) fn label(self) -> &'static str {
        match self {
            IdleMode::Jump => "jump",
            IdleMode::Terminated => "terminated",
            IdleMode::Baseline => "ssh -J sshd",
        }
    }
}

pub(super) struct IdleResult {
    pub(super) mode: IdleMode,
    pub(super) opened: usize,
    /// Sessions the CA lists as live while all were held (bastion modes).
    pub(super) live: Option<usize>,
    pub(super) failed: usize,
    pub(super) before_kib: u64,
    pub(super) after_kib: u64,
    pub(super) open_time: Duration,
}

impl IdleResult {
    /// Growth divided by the sessions that were live (per the CA) when it was read.
    pub(super) fn per_session_kib(&self) -> f64 {
        (self.after_kib as f64 - self.before_kib as f64) / self.live.unwrap_or(self.opened).max(1) as f64
    }
}

/// Accepts any host key: the bench talks to servers it started itself.
pub(super) struct TrustAny;

impl client::Handler for TrustAny {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// What keeps an idle session open: its SSH connections (and channel).
pub(super) enum Held {
    Tunnelled { _outer: client::Handle<TrustAny>, _inner: client::Handle<TrustAny> },
    Terminated { _conn: client::Handle<TrustAny>, _channel: russh::Channel<client::Msg> },
}

#[derive(Clone)]
pub(super) struct Credentials {
    key: Arc<ssh_key::PrivateKey>,
    cert: ssh_key::Certificate,
}

/// `key` and `key-cert.pub`.
pub(super) fn load_credentials(key: &Path) -> Credentials {
    let cert_path = format!("{}-cert.pub", key.display());
    let key = ssh_key::PrivateKey::from_openssh(std::fs::read_to_string(key).unwrap()).unwrap();
    let cert = ssh_key::Certificate::from_openssh(std::fs::read_to_string(cert_path).unwrap().trim()).unwrap();
    Credentials { key: Arc::new(key), cert }
}

pub(super) async fn login(
    stream_or_addr: Result<russh::ChannelStream<client::Msg>, std::net::SocketAddr>,
    user: &str,
    creds: &Credentials,
) -> Result<client::Handle<TrustAny>, String> {
    let config = Arc::new(client::Config { nodelay: true, ..client::Config::default() });
    let mut handle = match stream_or_addr {
        Ok(stream) => client::connect_stream(config, stream, TrustAny).await,
        Err(addr) => client::connect(config, addr, TrustAny).await,
    }
    .map_err(|e| format!("connect: {e}"))?;
    let auth = handle
        .authenticate_openssh_cert(user, Arc::clone(&creds.key), creds.cert.clone())
        .await
        .map_err(|e| format!("authenticate as {user}: {e}"))?;
    if !auth.success() {
        return Err(format!("authentication as {user} refused"));
    }
    Ok(handle)
}

/// One session: `outer` authenticates at `front` (bastion or jump host), `inner` at the
/// node through it.
pub(super) async fn open_one(
    mode: IdleMode,
    front: std::net::SocketAddr,
    node_ip: &str,
    outer: &Credentials,
    inner: &Credentials,
) -> Result<Held, String> {
    match mode {
        IdleMode::Terminated => {
            let conn = login(Err(front), "root%pve01", outer).await?;
            let channel = conn.channel_open_session().await.map_err(|e| format!("session channel: {e}"))?;
            Ok(Held::Terminated { _conn: conn, _channel: channel })
        }
        IdleMode::Jump | IdleMode::Baseline => {
            let user = if mode == IdleMode::Jump { "alice" } else { "root" };
            let outer = login(Err(front), user, outer).await?;
            let channel = outer
                .channel_open_direct_tcpip(node_ip, 22, "127.0.0.1", 0)
                .await
                .map_err(|e| format!("direct-tcpip: {e}"))?;
            let inner = login(Ok(channel.into_stream()), "root", inner).await?;
            Ok(Held::Tunnelled { _outer: outer, _inner: inner })
        }
    }
}

pub(super) async fn open_many(
    mode: IdleMode,
    n: usize,
    front: std::net::SocketAddr,
    node_ip: &str,
    outer: &Credentials,
    inner: &Credentials,
) -> (Vec<Held>, Vec<String>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(OPEN_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (permits, node_ip, outer, inner) = (Arc::clone(&permits), node_ip.to_owned(), outer.clone(), inner.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.unwrap();
            open_one(mode, front, &node_ip, &outer, &inner).await
        });
    }
    opened(tasks).await
}

/// The sessions `tasks` opened, and why the others could not be.
pub(super) async fn opened<T: 'static>(mut tasks: tokio::task::JoinSet<Result<T, String>>) -> (Vec<T>, Vec<String>) {
    let mut held = Vec::with_capacity(tasks.len());
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("session task panicked") {
            Ok(h) => held.push(h),
            Err(why) => failures.push(why),
        }
    }
    (held, failures)
}

/// Opens `n` idle sessions in each mode, each mode against a fresh all-in-one.
pub(super) async fn idle_phase(n: usize) -> Result<Vec<IdleResult>, String> {
    println!();
    println!(
        "== idle sessions: {n} per mode, opened {OPEN_CONCURRENCY} at a time; open-files limit {} ==",
        procfs::open_files_limit().map_or_else(|| "unknown".to_owned(), |l| l.to_string())
    );
    let mut results = Vec::new();
    for mode in [IdleMode::Jump, IdleMode::Terminated, IdleMode::Baseline] {
        results.push(idle_mode(mode, n).await?);
    }
    Ok(results)
}

async fn idle_mode(mode: IdleMode, n: usize) -> Result<IdleResult, String> {
    let world = World::start(IDLE).await;
    let creds = load_credentials(&world.dir.path().join("id"));
    // The baseline's jump host, as in the other phases; for the bastion modes unused.
    let jump = (mode == IdleMode::Baseline).then(PlainJump::start);
    let (pid, front, outer_creds) = match &jump {
        Some(j) => (
            procfs::child_with_arg(&j.sshd.dir.path().join("sshd_config")),
            std::net::SocketAddr::new(j.sshd.ip.parse().unwrap(), j.sshd.port),
            load_credentials(&j.key),
        ),
        None => (procfs::child_with_arg(&world.server.data_dir), world.server.bastion, creds.clone()),
    };
    let pid = pid.ok_or("the server process was not found in /proc")?;
    // What the OpenSSH jump host holds for a session lives in its per-connection
    // processes: count the listener and all of them, each shared page once (PSS).
    let memory = |pid: u32| match jump {
        Some(_) => [pid].into_iter().chain(procfs::descendants(pid)).map(procfs::pss_kib).sum(),
        None => procfs::rss_kib(pid),
    };
    let anon = |pid: u32| match jump {
        Some(_) => 0,
        None => procfs::rss_anon_kib(pid),
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_kib = memory(pid);
    let anon_before_kib = anon(pid);
    let t0 = Instant::now();
    let (held, failures) = open_many(mode, n, front, &world.node.ip, &outer_creds, &creds).await;
    let open_time = t0.elapsed();
    if let Some(first) = failures.first() {
        println!(
            "{:<12} {} of {n} sessions could not be opened; first error: {first}; \
             the node's sshd log has {} 'past MaxStartups' drop(s)",
            mode.label(),
            failures.len(),
            world.node.log().matches("past MaxStartups").count()
        );
    }
    let opened = held.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_kib = memory(pid);
    let anon_after_kib = anon(pid);
    let live = if mode == IdleMode::Baseline {
        None
    } else {
        let (status, body) = world.server.get_json(Some(&world.admin), "/v1/admin/sessions").await;
        assert!(status.is_success(), "GET /v1/admin/sessions: {body}");
        Some(body.as_array().map_or(0, Vec::len))
    };
    if mode != IdleMode::Baseline {
        // Sessions that ended while the bench still held them, and agent link drops:
        // what would make "live" smaller than "opened".
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for r in world.server.audit_events("session_closed").await {
            *reasons.entry(r.payload["reason"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
        }
        let drops = world.server.audit_events("agent_disconnected").await.len();
        println!("{:<12} while held: sessions closed {reasons:?}; agent link drops: {drops}", mode.label());
    }
    drop(held);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let closed_kib = memory(pid);
    let result = IdleResult { mode, opened, live, failed: failures.len(), before_kib, after_kib, open_time };
    let what = if jump.is_some() { "jump sshd + its connections, PSS" } else { "portcullisd RSS" };
    println!(
        "{:<12} {what}: {} KiB before, {} KiB with {opened} idle sessions (live per the CA: {}), {} KiB after closing; \
         {:.1} KiB/session; {opened} opened in {:.1} s",
        mode.label(),
        before_kib,
        after_kib,
        live.map_or_else(|| "n/a".to_owned(), |l| l.to_string()),
        closed_kib,
        result.per_session_kib(),
        open_time.as_secs_f64()
    );
    if jump.is_none() {
        println!(
            "{:<12} portcullisd RssAnon: {anon_before_kib} → {anon_after_kib} KiB ({:.1} KiB/session)",
            "",
            (anon_after_kib as f64 - anon_before_kib as f64) / live.unwrap_or(opened).max(1) as f64
        );
    }
    Ok(result)
}
