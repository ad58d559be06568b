//! The edge agent: runs inside a remote network, dials **out** to every bastion, and
//! connects onward only to destinations its own allow-list permits, whatever a bastion
//! asks. It relays the bytes of SSH connections that are encrypted end to end between
//! the bastion (or the user) and the node: it never holds a user key, password or
//! certificate private key — only its own identity key.
//!
//! Per bastion: connect, check the bastion's host key against the one the CA
//! registered, authenticate with the agent's internal certificate, serve the bastion's
//! `forwarded-tcpip` channels; on any loss reconnect with jittered exponential backoff.
//! Keepalives every few seconds notice a dead bastion.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::RngExt;
use russh::client::{self, ChannelOpenHandle, Msg, Session};
use russh::keys::{PrivateKey, PublicKeyOrCertificate};
use russh::{Channel, ChannelOpenFailure};
use ssh_key::{Certificate, PublicKey};
use tokio::net::TcpStream;

use crate::clock::Clock;
use crate::control::ControlPlane;
use crate::events::escape_for_log;

/// Where the agent may connect. Exact `(host, port)` pairs (the default: each assigned
/// device's addresses, port 22, from the CA) and CIDR blocks with a port (operator
/// configuration). A host name is allowed only by an exact entry; it is never resolved
/// to test it against a block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    exact: Vec<(String, u16)>,
    blocks: Vec<(IpAddr, u8, u16)>,
}

impl AllowList {
    /// Parses `ADDR[/PREFIX]:PORT` entries (IPv6 in brackets: `[2001:db8::/32]:22`).
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut list = Self::default();
        for entry in entries {
            let (net, port) =
                entry.rsplit_once(':').ok_or_else(|| format!("{entry:?}: expected ADDR[/PREFIX]:PORT"))?;
            let port: u16 = port.parse().map_err(|_| format!("{entry:?}: bad port"))?;
            let net = net.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(net);
            let (block, prefix) = portcullis_sshcert::parse_cidr(net)
                .ok_or_else(|| format!("{entry:?}: not an address or CIDR block"))?;
            list.blocks.push((block, prefix, port));
        }
        Ok(list)
    }

    pub fn exact(pairs: impl IntoIterator<Item = (String, u16)>) -> Self {
        Self { exact: pairs.into_iter().collect(), blocks: Vec::new() }
    }

    pub fn permits(&self, host: &str, port: u16) -> bool {
        if self.exact.iter().any(|(h, p)| *p == port && h.eq_ignore_ascii_case(host)) {
            return true;
        }
        let Ok(ip) = host.parse::<IpAddr>() else { return false };
        self.blocks.iter().any(|&(block, prefix, p)| p == port && portcullis_sshcert::cidr_contains(block, prefix, ip))
    }
}

/// One bastion to keep a connection to.
#[derive(Debug, Clone)]
pub struct BastionEndpoint {
    /// `host:port` of the bastion's agent listener.
    pub address: String,
    /// The host key the bastion must present.
    pub host_key: PublicKey,
}

pub struct AgentConfig {
    pub name: String,
    pub key: Arc<PrivateKey>,
    pub control: Arc<ControlPlane>,
    /// Bastions to dial; empty: every bastion in the CA's directory.
    pub bastions: Vec<BastionEndpoint>,
    /// Operator allow-list; `None`: the devices the CA assigns to this agent (port 22).
    pub allow: Option<AllowList>,
    pub connect_timeout: Duration,
    /// What `/metrics` and `/readyz` report (see [`AgentStatus`]).
    pub status: Arc<AgentStatus>,
    /// When the internal certificate is due for renewal.
    pub clock: Arc<dyn Clock>,
}

/// The agent's state as its `/metrics`, `/healthz` and `/readyz` report it.
#[derive(Debug, Default)]
pub struct AgentStatus {
    /// Bastions this agent is connected (and authenticated) to now.
    links: std::sync::atomic::AtomicU64,
    /// Channels the bastions asked for, by outcome.
    channels: portcullis_proto::metrics::LabelledCounter,
}

impl AgentStatus {
    /// Ready once connected to at least one bastion (until then no session can use it).
    pub fn ready(&self) -> bool {
        self.links.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    pub fn metrics_text(&self) -> String {
        let mut e = portcullis_proto::metrics::Exposition::default();
        let links = self.links.load(std::sync::atomic::Ordering::Relaxed);
        e.family(
            "portcullis_agent_bastion_links",
            "gauge",
            "Bastions this agent is connected to.",
            [(String::new(), links)],
        );
        e.family(
            "portcullis_agent_channels_total",
            "counter",
            "Connections the bastions asked for, by outcome (opened, not_allowed, connect_failed).",
            self.channels.samples(),
        );
        e.finish()
    }

    fn channel(&self, outcome: &str) {
        self.channels.inc(&[("outcome", outcome)]);
    }
}

/// Counts one live bastion link for as long as it lives.
struct Linked<'a>(&'a AgentStatus);

impl<'a> Linked<'a> {
    fn new(status: &'a AgentStatus) -> Self {
        status.links.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Linked(status)
    }
}

impl Drop for Linked<'_> {
    fn drop(&mut self) {
        self.0.links.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What the agent's tasks share.
struct State {
    name: String,
    key: Arc<PrivateKey>,
    control: Arc<ControlPlane>,
    certificate: RwLock<Option<Certificate>>,
    allow: RwLock<AllowList>,
    fixed_allow: bool,
    /// When the CA-assigned allow-list was last fetched on a miss.
    last_miss_refresh: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    connect_timeout: Duration,
    status: Arc<AgentStatus>,
    clock: Arc<dyn Clock>,
}

/// Why the agent did not connect where a bastion asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DialError {
    /// Not on the allow-list (or not a port).
    NotAllowed,
    /// Allowed, but the connection failed or timed out.
    ConnectFailed,
}

impl State {
    fn certificate(&self) -> Option<Certificate> {
        self.certificate.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn allow(&self) -> AllowList {
        self.allow.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the allow-list permits `host:port`. A miss on a CA-assigned list re-reads
    /// it (at most every few seconds), so a device assigned a moment ago is reachable
    /// without waiting for the periodic refresh; the answer is still the CA's list.
    async fn permits(&self, host: &str, port: u16) -> bool {
        if self.allow().permits(host, port) {
            return true;
        }
        if self.fixed_allow {
            return false;
        }
        let mut last = self.last_miss_refresh.lock().await;
        if last.is_none_or(|t| t.elapsed() >= MISS_REFRESH_EVERY) {
            *last = Some(tokio::time::Instant::now());
            if let Err(e) = refresh_targets(self).await {
                tracing::warn!(error = %e, "cannot refresh the assigned devices");
            }
        }
        self.allow().permits(host, port)
    }

    /// The agent's one decision, whoever asks: connect to `host:port` only when the
    /// allow-list permits it, within the connect timeout.
    async fn dial(&self, host: &str, port: u32) -> Result<TcpStream, DialError> {
        let port = match u16::try_from(port) {
            Ok(port) if self.permits(host, port).await => port,
            _ => {
                tracing::warn!(
                    destination = %escape_for_log(&format!("{host}:{port}")),
                    "refused a destination outside the allow-list"
                );
                self.status.channel("not_allowed");
                return Err(DialError::NotAllowed);
            }
        };
        match tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port))).await {
            Ok(Ok(target)) => {
                let _ = target.set_nodelay(true);
                self.status.channel("opened");
                Ok(target)
            }
            _ => {
                self.status.channel("connect_failed");
                Err(DialError::ConnectFailed)
            }
        }
    }
}

/// Least time between two allow-list refreshes caused by misses.
const MISS_REFRESH_EVERY: Duration = Duration::from_secs(2);

/// Runs the agent until the process ends.
pub async fn run(mut config: AgentConfig) {
    let mut bastions = std::mem::take(&mut config.bastions);
    let state = State::start(config, Link::Ssh).await;
    while bastions.is_empty() {
        match directory(&state.control).await {
            Ok(found) if !found.is_empty() => bastions = found,
            Ok(_) => tracing::warn!("the CA lists no bastion yet"),
            Err(e) => tracing::warn!(error = %e, "cannot read the bastion directory"),
        }
        if bastions.is_empty() {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
    let mut tasks = Vec::new();
    for bastion in bastions {
        tasks.push(tokio::spawn(stay_connected(Arc::clone(&state), bastion)));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// How the agent reaches its bastion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Dials out over SSH, authenticating with its internal certificate.
    Ssh,
    /// Inside the bastion's own process: no link, no certificate.
    InProcess,
}

impl State {
    /// The agent's state with its allow-list (and, over SSH, its certificate) fetched,
    /// retrying until the CA answers, and kept fresh by a task.
    async fn start(config: AgentConfig, link: Link) -> Arc<State> {
        let state = Arc::new(State {
            name: config.name,
            key: config.key,
            control: config.control,
            certificate: RwLock::new(None),
            allow: RwLock::new(config.allow.clone().unwrap_or_default()),
            fixed_allow: config.allow.is_some(),
            last_miss_refresh: tokio::sync::Mutex::new(None),
            connect_timeout: config.connect_timeout,
            status: config.status,
            clock: config.clock,
        });
        // First (retrying), so the first dial can succeed.
        while refresh(&state, link).await.is_err() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    let _ = refresh(&state, link).await;
                }
            }
        });
        state
    }
}

/// The all-in-one's own agent, in the bastion's process. It needs no SSH link to a
/// bastion on the same machine (that link cost a second encryption and two more copies
/// of every byte on loopback): the bastion asks it directly and gets a TCP connection
/// to the device. It decides as a remote agent does — its own allow-list from the CA,
/// the same connect timeout — and holds no key a remote agent would not.
pub struct InProcessAgent {
    state: Arc<State>,
}

impl std::fmt::Debug for InProcessAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessAgent").field("name", &self.state.name).finish_non_exhaustive()
    }
}

impl InProcessAgent {
    /// Fetches the allow-list (retrying until the CA answers) and keeps it fresh.
    /// `config.bastions` is not used: the bastion attaches the agent itself.
    pub async fn start(config: AgentConfig) -> Arc<Self> {
        let state = State::start(config, Link::InProcess).await;
        state.status.links.store(1, std::sync::atomic::Ordering::Relaxed);
        Arc::new(Self { state })
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub(crate) async fn dial(&self, host: &str, port: u16) -> Result<TcpStream, DialError> {
        self.state.dial(host, u32::from(port)).await
    }
}

/// Renews the internal certificate when due (over SSH) and refreshes the CA-assigned
/// allow-list.
async fn refresh(state: &State, link: Link) -> Result<(), String> {
    let now = state.clock.now_unix();
    let due = link == Link::Ssh
        && state.certificate().is_none_or(|c| {
            let (after, before) = (c.valid_after(), c.valid_before());
            now >= after + (before.saturating_sub(after)) / 2
        });
    if due {
        let renewed = state.control.renew_certificate().await.map_err(|e| e.to_string())?;
        let cert = Certificate::from_openssh(renewed.certificate.trim()).map_err(|e| e.to_string())?;
        *state.certificate.write().unwrap_or_else(|p| p.into_inner()) = Some(cert);
    }
    if !state.fixed_allow {
        refresh_targets(state).await?;
    }
    Ok(())
}

async fn refresh_targets(state: &State) -> Result<(), String> {
    let targets = state.control.agent_targets().await.map_err(|e| e.to_string())?;
    let pairs = targets.into_iter().flat_map(|t| {
        let ports: Vec<u16> = std::iter::once(t.port).chain(t.api_ports).collect();
        t.addresses.into_iter().flat_map(move |a| ports.clone().into_iter().map(move |p| (a.clone(), p)))
    });
    *state.allow.write().unwrap_or_else(|p| p.into_inner()) = AllowList::exact(pairs);
    Ok(())
}

async fn directory(control: &ControlPlane) -> Result<Vec<BastionEndpoint>, String> {
    let entries = control.bastions().await.map_err(|e| e.to_string())?;
    Ok(entries
        .into_iter()
        .filter_map(|e| {
            let host_key = PublicKey::from_openssh(e.host_key.trim()).ok()?;
            Some(BastionEndpoint { address: e.agent_endpoint, host_key })
        })
        .collect())
}

/// Keeps one bastion connection up for ever: connect, serve, back off, repeat.
async fn stay_connected(state: Arc<State>, bastion: BastionEndpoint) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let started = tokio::time::Instant::now();
        match serve_once(&state, &bastion).await {
            Ok(()) => tracing::warn!(bastion = %bastion.address, "bastion connection closed"),
            Err(e) => {
                tracing::warn!(bastion = %bastion.address, error = %escape_for_log(&e.to_string()), "bastion connection failed")
            }
        }
        // A connection that lived a while resets the backoff.
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(250);
        }
        let jitter = rand::rng().random_range(0.5..1.5);
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// `BastionConfig::dead_peer_after` for agent links, at both ends: a link that takes
/// nothing holds every session through it, and agents are machines on links of our
/// choosing.
pub(crate) const AGENT_DEAD_PEER_AFTER: Duration = Duration::from_secs(120);

async fn serve_once(state: &Arc<State>, bastion: &BastionEndpoint) -> Result<(), String> {
    let cert = state.certificate().ok_or("no certificate yet")?;
    let config = Arc::new(client::Config {
        preferred: crate::algorithms::preferred_client(),
        keepalive_interval: Some(Duration::from_secs(3)),
        keepalive_max: 2,
        // A bastion that takes nothing (a write waiting this long) is given up on, as
        // one that stops answering keepalives is.
        inactivity_timeout: Some(AGENT_DEAD_PEER_AFTER),
        window_size: 8 * 1024 * 1024,
        channel_buffer_size: 256,
        nodelay: true,
        ..client::Config::default()
    });
    let handler = AgentSide { state: Arc::clone(state), bastion_key: bastion.host_key.clone() };
    let stream = tokio::time::timeout(state.connect_timeout, TcpStream::connect(&bastion.address))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut session = client::connect_stream(config, stream, handler).await.map_err(|e| e.to_string())?;
    let auth = session
        .authenticate_openssh_cert(state.name.clone(), Arc::clone(&state.key), cert)
        .await
        .map_err(|e| e.to_string())?;
    if !auth.success() {
        return Err("the bastion refused this agent's certificate".into());
    }
    tracing::info!(bastion = %bastion.address, "connected to bastion");
    let _linked = Linked::new(&state.status);
    // Serves channels (in the handler) until the connection ends.
    session.await.map_err(|e| e.to_string())
}

/// The agent's end of one bastion connection.
struct AgentSide {
    state: Arc<State>,
    bastion_key: PublicKey,
}

impl client::Handler for AgentSide {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(
            matches!(key, PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.bastion_key.key_data()),
        )
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<Msg>,
        connected_address: &str,
        connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let host = connected_address.to_owned();
        let state = Arc::clone(&self.state);
        // Decide and connect in a task: this connection keeps serving other channels.
        tokio::spawn(async move {
            match state.dial(&host, connected_port).await {
                Ok(target) => {
                    reply.accept().await;
                    relay(channel, target).await;
                }
                Err(DialError::NotAllowed) => reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await,
                Err(DialError::ConnectFailed) => reply.reject(ChannelOpenFailure::ConnectFailed).await,
            }
        });
        Ok(())
    }
}

/// Copies bytes both ways until both directions are done.
async fn relay(channel: Channel<Msg>, mut target: TcpStream) {
    let mut stream = channel.into_stream();
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut target, 64 * 1024, 64 * 1024).await;
}

/// For tests and the all-in-one: the address a listener is bound to, as an endpoint.
pub fn endpoint(address: SocketAddr, host_key: PublicKey) -> BastionEndpoint {
    BastionEndpoint { address: address.to_string(), host_key }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-process agent decides as a remote one does: its allow-list, then connect.
    #[tokio::test]
    async fn the_in_process_agent_connects_only_where_its_allow_list_permits() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().port();
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let allow = AllowList::exact([("127.0.0.1".to_owned(), open), ("127.0.0.1".to_owned(), closed)]);
        let status = Arc::new(AgentStatus::default());
        let agent = InProcessAgent::start(AgentConfig {
            name: "local".into(),
            key: Arc::new(PrivateKey::random(&mut rand::rng(), ssh_key::Algorithm::Ed25519).unwrap()),
            control: Arc::new(crate::control::unreachable(Duration::from_millis(100))),
            bastions: Vec::new(),
            allow: Some(allow),
            connect_timeout: Duration::from_secs(2),
            status: Arc::clone(&status),
            clock: Arc::new(crate::clock::SystemClock),
        })
        .await;
        assert!(agent.dial("127.0.0.1", open).await.is_ok());
        assert_eq!(agent.dial("127.0.0.2", open).await.err(), Some(DialError::NotAllowed), "other host");
        assert_eq!(agent.dial("127.0.0.1", open + 1).await.err(), Some(DialError::NotAllowed), "other port");
        assert_eq!(agent.dial("127.0.0.1", closed).await.err(), Some(DialError::ConnectFailed));
        assert!(status.ready(), "an in-process agent is always linked");
        let metrics = status.metrics_text();
        assert!(metrics.contains(r#"outcome="not_allowed"} 2"#), "{metrics}");
    }

    #[test]
    fn allow_list_is_exact_or_by_block_and_port() {
        let list = AllowList::parse(&["10.0.0.0/24:22".into(), "[2001:db8::/32]:2222".into()]).unwrap();
        assert!(list.permits("10.0.0.7", 22));
        assert!(!list.permits("10.0.0.7", 23), "other port");
        assert!(!list.permits("10.0.1.7", 22), "outside the block");
        assert!(list.permits("2001:db8::1", 2222));
        assert!(!list.permits("localhost", 22), "names are never resolved to test a block");
        let exact = AllowList::exact([("pve01.lan".to_owned(), 22)]);
        assert!(exact.permits("PVE01.lan", 22));
        assert!(!exact.permits("pve01.lan", 80));
        assert!(!exact.permits("pve02.lan", 22));
        assert!(!AllowList::default().permits("127.0.0.1", 22), "empty: nothing");
        for bad in ["10.0.0.0/24", "10.0.0.0/33:22", "host:22", "10.0.0.1:99999"] {
            assert!(AllowList::parse(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }
}
