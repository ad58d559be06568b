//! The listener: russh configuration, accept loop, per-connection authentication deadline.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::server::Config;
use russh::{MethodKind, MethodSet, SshId};
use ssh_key::Algorithm;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::Instrument;

use portcullis_proto::bastion::{CloseReason, HeartbeatRequest, LEASE_TTL_SECS};

use crate::agent_hub::AgentHub;
use crate::agent_listener::AgentConnection;
use crate::algorithms::{KexProfile, preferred};
use crate::clock::Clock;
use crate::control::ControlPlane;
use crate::error::BastionError;
use crate::events::{BastionEvent, EventSink, RefusalReason, escape_for_log};
use crate::grace::Severable;
use crate::handler::Connection;
use crate::sessions::Registry;
use crate::shared::Shared;
use crate::startups::{StartupLimits, Startups};
use crate::trust::TrustSource;

#[derive(Debug, Clone)]
pub struct BastionConfig {
    /// Must be Ed25519.
    pub host_key: PrivateKey,
    /// From TCP accept to successful authentication.
    pub auth_timeout: Duration,
    /// Refused authentication requests before the connection is closed.
    pub max_auth_attempts: usize,
    /// Tolerated clock difference at both ends of a certificate's validity window.
    pub max_clock_skew_secs: u64,
    /// Every rejection takes this long, so timing tells a prober nothing.
    pub auth_rejection_time: Duration,
    /// Close a session when the user's certificate expires.
    pub close_on_cert_expiry: bool,
    /// How often live sessions are reported to the CA (and close orders collected).
    pub heartbeat_every: Duration,
    /// Unauthenticated connections per address and in total, per listener.
    pub startups: StartupLimits,
    /// Key exchange offered on both listeners.
    pub kex_profile: KexProfile,
    /// A user's connection whose client takes nothing sent to it for this long (its
    /// socket full: a client that stopped reading, a suspended process) is dropped with
    /// what was queued for it. Keepalives cannot tell: the connection's task is waiting
    /// on the write, not reading them. Generous, as one write can hold a whole window
    /// (a few MiB) for a client on a slow link.
    pub dead_peer_after: Duration,
    /// Logged-in connections one user (the certificate's key id) may hold at once; past
    /// it, a login is refused (`too_many_connections`).
    pub max_connections_per_user: usize,
}

/// The users' listener's SSH settings (the agents' start from them).
fn front_door_config(config: &BastionConfig) -> Config {
    Config {
        server_id: SshId::Standard(Cow::Borrowed("SSH-2.0-Portcullis")),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: config.auth_rejection_time,
        // OpenSSH clients start with a "none" probe; answering it at once costs nothing.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![config.host_key.clone()],
        max_auth_attempts: config.max_auth_attempts,
        preferred: preferred(config.kex_profile),
        // Session limits are the watchdog's job; this reaps peers that take nothing.
        // (russh resets it whenever its loop goes round; it fires only when a write has
        // waited this long, or nothing at all came or went.)
        inactivity_timeout: Some(config.dead_peer_after),
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        nodelay: true,
        ..Config::default()
    }
}

impl BastionConfig {
    pub fn new(host_key: PrivateKey) -> Self {
        Self {
            host_key,
            auth_timeout: Duration::from_secs(30),
            max_auth_attempts: 6,
            max_clock_skew_secs: 30,
            auth_rejection_time: Duration::from_millis(200),
            close_on_cert_expiry: true,
            heartbeat_every: Duration::from_millis(500),
            startups: StartupLimits::default(),
            kex_profile: KexProfile::Compatible,
            dead_peer_after: Duration::from_secs(600),
            max_connections_per_user: crate::logged_in::DEFAULT_PER_USER,
        }
    }
}

/// How long a stopping bastion waits for its audit events to reach the CA.
const EVENTS_FLUSH_WITHIN: Duration = Duration::from_secs(3);

pub struct Bastion {
    users: Arc<Config>,
    agents: Arc<Config>,
    shared: Arc<Shared>,
    auth_timeout: Duration,
    heartbeat_every: Duration,
    host_key: PrivateKey,
    startups: StartupLimits,
}

impl Bastion {
    /// Shutdown: orders every session closed as `shutdown` (the user is told the bastion
    /// is restarting; the CA gets the real reason and duration) and waits up to `within`
    /// for them to reach the CA. New sessions are refused meanwhile. Returns how many
    /// were still open at the deadline (their leases expire on their own).
    pub async fn drain(&self, within: Duration) -> usize {
        let sessions = &self.shared.sessions;
        sessions.drain();
        let deadline = tokio::time::Instant::now() + within;
        while sessions.len() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = sessions.len();
        // Then what the front door refused meanwhile (and counted in its open window)
        // reaches the CA before the process goes.
        self.shared.events.flush(EVENTS_FLUSH_WITHIN).await;
        left
    }

    pub fn new(
        config: BastionConfig,
        trust: Arc<TrustSource>,
        control: Arc<ControlPlane>,
        clock: Arc<dyn Clock>,
        events: EventSink,
    ) -> Result<Self, BastionError> {
        if config.host_key.algorithm() != Algorithm::Ed25519 {
            return Err(BastionError::HostKeyAlgorithm(config.host_key.algorithm().to_string()));
        }
        // Every connection is a file descriptor; the soft limit is often 1024 while the
        // hard limit (systemd's `LimitNOFILE`) allows far more.
        match crate::listen::raise_open_files_limit() {
            Ok(limit) => tracing::debug!(?limit, "open files limit"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
        }
        let users = front_door_config(&config);
        // Agents: a dead agent must be noticed within seconds (its sessions are closed
        // with `agent_disconnect`), so keepalives are frequent. Larger windows and
        // packets: one agent connection carries many sessions' bulk data.
        let agents = Config {
            keepalive_interval: Some(Duration::from_secs(3)),
            keepalive_max: 2,
            window_size: 8 * 1024 * 1024,
            channel_buffer_size: 256,
            inactivity_timeout: Some(crate::edge::AGENT_DEAD_PEER_AFTER.min(config.dead_peer_after)),
            ..front_door_config(&config)
        };
        let sessions = Arc::new(Registry::default());
        let hub = Arc::new(AgentHub::new(Arc::clone(&sessions), events.clone()));
        let shared = Arc::new(Shared {
            trust,
            clock,
            events,
            max_clock_skew_secs: config.max_clock_skew_secs,
            closes: crate::closes::Closes::start(Arc::clone(&control)),
            control,
            agents: hub,
            sessions,
            close_on_cert_expiry: config.close_on_cert_expiry,
            logged_in: crate::logged_in::LoggedIn::new(config.max_connections_per_user),
            counters: Default::default(),
        });
        Ok(Self {
            users: Arc::new(users),
            agents: Arc::new(agents),
            shared,
            auth_timeout: config.auth_timeout,
            heartbeat_every: config.heartbeat_every,
            host_key: config.host_key,
            startups: config.startups,
        })
    }

    pub fn host_public_key(&self) -> &ssh_key::PublicKey {
        self.host_key.public_key()
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Serves an agent from this process (the all-in-one's own; see
    /// [`crate::edge::InProcessAgent`]).
    pub fn attach_in_process_agent(&self, agent: Arc<crate::edge::InProcessAgent>) {
        self.shared.agents.attach_in_process(agent);
    }

    /// The agents connected now.
    pub fn connected_agents(&self) -> Vec<String> {
        self.shared.agents.names()
    }

    /// Sessions live on this bastion now.
    pub fn live_sessions(&self) -> usize {
        self.shared.sessions.len()
    }

    /// Users' SSH connections, each in its own task. Never returns: failed accepts
    /// (out of file descriptors, …) are retried with a back-off.
    pub async fn serve(&self, listener: TcpListener) -> Result<(), BastionError> {
        let startups = Startups::new(self.startups);
        accept_loop(listener, &self.users, &self.shared, self.auth_timeout, startups, "ssh_connection", Connection::new)
            .await
    }

    /// Edge agents' connections, like [`Bastion::serve`].
    pub async fn serve_agents(&self, listener: TcpListener) -> Result<(), BastionError> {
        let startups = Startups::new(self.startups);
        let make = AgentConnection::new;
        accept_loop(listener, &self.agents, &self.shared, self.auth_timeout, startups, "agent_connection", make).await
    }

    /// Asks the CA for hardware-discovery work and runs it (`discovery`): nothing but
    /// the claim request while the CA has discovery off.
    pub fn spawn_discovery(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(crate::discovery::run(Arc::clone(&self.shared)))
    }

    /// Asks the CA for Proxmox VE collection grants and runs them (`pve`): the CA hands out
    /// work only where a credential rule says so.
    pub fn spawn_pve(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(crate::pve::run(Arc::clone(&self.shared)))
    }

    /// Reports live sessions and connected agents to the CA every `heartbeat_every` and
    /// carries out its close orders. While the CA cannot be reached for longer than a
    /// lease lives, the CA has reclaimed this bastion's leases: every session is closed
    /// (`lease_lost`) so caps stay true.
    pub fn spawn_heartbeat(&self) -> tokio::task::JoinHandle<()> {
        let shared = Arc::clone(&self.shared);
        let every = self.heartbeat_every;
        tokio::spawn(async move {
            let lease = Duration::from_secs(LEASE_TTL_SECS);
            let mut last_ok = tokio::time::Instant::now();
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let request = HeartbeatRequest { sessions: shared.sessions.snapshot(), agents: shared.agents.names() };
                match shared.control.heartbeat(&request).await {
                    Ok(answer) => {
                        last_ok = tokio::time::Instant::now();
                        for order in answer.close {
                            if let Some(s) = shared.sessions.get(&order.session_id) {
                                s.order_close(order.reason);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "heartbeat failed");
                        if last_ok.elapsed() + every * 2 >= lease {
                            shared.sessions.close_where(CloseReason::LeaseLost, |_| true);
                        }
                    }
                }
            }
        })
    }
}

/// Never returns: accept errors are retried (`listen`), so the `Result` of `serve` is
/// only ever pending.
async fn accept_loop<H, F>(
    listener: TcpListener,
    russh: &Arc<Config>,
    shared: &Arc<Shared>,
    auth_timeout: Duration,
    startups: Arc<Startups>,
    span_name: &'static str,
    make: F,
) -> Result<(), BastionError>
where
    H: russh::server::Handler<Error = russh::Error> + Send + 'static,
    F: Fn(SocketAddr, Arc<Shared>, oneshot::Sender<()>) -> H,
{
    let next_id = AtomicU64::new(1);
    let mut streak = crate::listen::FailureStreak::default();
    loop {
        let (stream, peer) = crate::listen::accept(&listener, &mut streak, span_name).await;
        let Some(slot) = startups.admit(peer.ip(), span_name) else {
            // Closed before the banner: the cheapest answer there is (counted for the
            // audit summary, no record of its own).
            drop(stream);
            shared.events.count_refusal(peer.ip(), "connection_limit");
            continue;
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("connection", kind = span_name, conn = id, %peer);
        let (authed_tx, authed_rx) = oneshot::channel();
        let handler = make(peer, Arc::clone(shared), authed_tx);
        let russh = Arc::clone(russh);
        let events = shared.events.clone();
        tokio::spawn(
            async move {
                let _ = stream.set_nodelay(true);
                let conn = run_connection(russh, handler, authed_rx, events, (stream, peer), auth_timeout, slot);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %escape_for_log(&e.to_string()), "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
}

/// How long a client that ran out of login grace time may take to read our goodbye.
const DISCONNECT_GRACE: Duration = Duration::from_secs(1);

async fn run_connection<H: russh::server::Handler<Error = russh::Error> + Send + 'static>(
    russh: Arc<Config>,
    handler: H,
    authed_rx: oneshot::Receiver<()>,
    events: EventSink,
    (stream, peer): (tokio::net::TcpStream, SocketAddr),
    auth_timeout: Duration,
    unauthenticated: crate::startups::Slot,
) -> Result<(), BastionError> {
    let deadline = tokio::time::Instant::now() + auth_timeout;
    let session_error = |detail: String| BastionError::Session { peer, detail };
    let timed_out =
        || events.record(BastionEvent::AuthRefused { peer, user: String::new(), reason: RefusalReason::AuthTimeout });
    let (stream, severer) = Severable::new(stream);
    let session = match tokio::time::timeout_at(deadline, russh::server::run_stream(russh, stream, handler)).await {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => return Err(session_error(e.to_string())),
        Err(_) => {
            timed_out();
            return Ok(());
        }
    };
    let handle = session.handle();
    tokio::pin!(session);
    tokio::select! {
        result = &mut session => return result.map_err(|e| session_error(e.to_string())),
        // Authenticated (or the handler is gone because the session ended): from here
        // on keepalives and the session watchdogs govern the connection.
        _ = authed_rx => {
            severer.logged_in();
            drop(unauthenticated);
        }
        () = tokio::time::sleep_until(deadline) => {
            timed_out();
            // Say why if the protocol state allows it, briefly; then cut the socket,
            // whatever state the session is in (a client stalled before or inside the
            // key exchange never reads a disconnect message).
            let goodbye = async {
                let _ = handle
                    .disconnect(russh::Disconnect::ByApplication, "authentication timed out".into(), String::new())
                    .await;
                (&mut session).await
            };
            if let Ok(ended) = tokio::time::timeout(DISCONNECT_GRACE, goodbye).await {
                return ended.map_err(|e| session_error(e.to_string()));
            }
            severer.sever();
        }
    }
    session.await.map_err(|e| session_error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
    use russh::{Channel, keys::PrivateKeyWithHashAlg};
    use std::pin::Pin;
    use std::sync::atomic::AtomicBool;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::TcpStream;

    /// Accepts any key, then answers a session channel with output as fast as it goes.
    struct Flood;

    impl russh::server::Handler for Flood {
        type Error = russh::Error;

        async fn auth_publickey(
            &mut self,
            _: &str,
            _: russh::server::VerifiedPublicKey<'_>,
        ) -> Result<Auth, Self::Error> {
            Ok(Auth::Accept)
        }

        async fn channel_open_session(
            &mut self,
            channel: Channel<Msg>,
            reply: ChannelOpenHandle,
            _: &mut Session,
        ) -> Result<(), Self::Error> {
            reply.accept().await;
            tokio::spawn(async move {
                let chunk = vec![b'x'; 32 * 1024];
                while channel.data(&chunk[..]).await.is_ok() {}
            });
            Ok(())
        }
    }

    /// A client's socket that stops being read once `paused` is set (a client that
    /// stopped reading, or was suspended).
    struct Pausable {
        tcp: TcpStream,
        paused: Arc<AtomicBool>,
    }

    impl AsyncRead for Pausable {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.paused.load(Ordering::Relaxed) {
                return Poll::Pending;
            }
            Pin::new(&mut self.tcp).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Pausable {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.tcp).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.tcp).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.tcp).poll_shutdown(cx)
        }
    }

    struct AnyHost;

    impl russh::client::Handler for AnyHost {
        type Error = russh::Error;

        async fn check_server_key(&mut self, _: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
    }

    /// A client that stops reading while output is on its way to it leaves the front
    /// door's connection task waiting on a write, where keepalives are never looked at:
    /// the connection (and what is queued for it) must still go, after
    /// `dead_peer_after`. (Before, the front door set no such limit and held it for
    /// good.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_stops_reading_loses_its_connection() {
        let dead_peer_after = Duration::from_secs(2);
        let config = BastionConfig { dead_peer_after, ..BastionConfig::new(key()) };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let session = russh::server::run_stream(Arc::new(front_door_config(&config)), tcp, Flood).await.unwrap();
            let started = std::time::Instant::now();
            let _ = session.await;
            started.elapsed()
        });

        // A small receive buffer and a large window: the output backs up into the
        // server's socket quickly, and the window never stops it first.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        let paused = Arc::new(AtomicBool::new(false));
        let stream = Pausable { tcp: socket.connect(addr).await.unwrap(), paused: Arc::clone(&paused) };
        let client = russh::client::Config { window_size: 64 * 1024 * 1024, ..Default::default() };
        let mut conn = russh::client::connect_stream(Arc::new(client), stream, AnyHost).await.unwrap();
        let auth = conn.authenticate_publickey("user", PrivateKeyWithHashAlg::new(Arc::new(key()), None)).await;
        assert!(auth.unwrap().success());
        let mut channel = conn.channel_open_session().await.unwrap();
        assert!(matches!(channel.wait().await, Some(russh::ChannelMsg::Data { .. })), "the output flows");
        paused.store(true, Ordering::Relaxed);

        let held = tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("the connection of a client that stopped reading was held")
            .unwrap();
        assert!(held >= dead_peer_after, "dropped before the limit: {held:?}");
        drop(conn);
    }
}
