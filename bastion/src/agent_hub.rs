//! The bastion's side of edge agents.
//!
//! Agents dial **out** to the bastion's agent listener and authenticate as SSH clients
//! with an internal certificate ([`crate::agent_listener`]). From then on the roles
//! reverse: for each onward
//! connection the bastion opens a `forwarded-tcpip` channel *to* the agent naming the
//! destination, and the agent decides — by its own allow-list — whether to connect.
//! The agent only relays bytes of an SSH connection encrypted end to end between the
//! bastion (or, in jump mode, the user) and the node.
//!
//! The all-in-one's own agent is served in process instead ([`InProcessAgent`]): asked
//! directly, it answers with a TCP connection to the device.
//!
//! An agent that connects again replaces its previous link; when a link goes away,
//! every session through that agent is closed with `agent_disconnect`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use portcullis_proto::bastion::CloseReason;
use russh::server::Msg;
use russh::{Channel, ChannelOpenFailure};
use tokio::sync::watch;

use crate::edge::{DialError, InProcessAgent};
use crate::events::{BastionEvent, EventSink};
use crate::sessions::Registry;

/// Why the bastion could not get a connection to the device through its agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("the edge agent for this device is not connected")]
    AgentUnavailable,
    #[error("the edge agent refused the destination")]
    AgentRefused,
    #[error("the device is unreachable from its edge agent")]
    TargetUnreachable,
}

impl BrokerError {
    pub fn code(&self) -> &'static str {
        match self {
            BrokerError::AgentUnavailable => "agent_unavailable",
            BrokerError::AgentRefused => "agent_refused",
            BrokerError::TargetUnreachable => "target_unreachable",
        }
    }
}

struct Link {
    conn: u64,
    route: Route,
    /// Becomes `true` when this link is gone (the agent disconnected or was replaced).
    down: watch::Sender<bool>,
}

/// How the bastion reaches an agent.
#[derive(Clone)]
enum Route {
    /// The agent's SSH connection: each onward connection is a channel in it.
    Ssh(russh::server::Handle),
    /// The all-in-one's agent, in this process: asked directly.
    InProcess(Arc<InProcessAgent>),
}

/// An onward connection through an agent, as the session uses it.
pub(crate) enum Onward {
    /// A channel of a remote agent's link.
    Channel(Channel<Msg>),
    /// The in-process agent's TCP connection to the device.
    Tcp(tokio::net::TcpStream),
}

/// An [`Onward`] connection as one byte stream (for the onward SSH or TLS client).
pub(crate) type OnwardStream = tokio_util::either::Either<russh::ChannelStream<Msg>, tokio::net::TcpStream>;

impl Onward {
    pub(crate) fn into_stream(self) -> OnwardStream {
        match self {
            Onward::Channel(channel) => tokio_util::either::Either::Left(channel.into_stream()),
            Onward::Tcp(tcp) => tokio_util::either::Either::Right(tcp),
        }
    }
}

/// Watches one agent link: a relay whose onward channel vanished asks it whether the
/// agent went away (`agent_disconnect`) or only the target did.
#[derive(Debug, Clone)]
pub(crate) struct LinkWatch(watch::Receiver<bool>);

impl LinkWatch {
    /// Whether the link goes down within `grace` (the connection's end reaches the
    /// hub a moment after its channels end).
    pub(crate) async fn went_down(mut self, grace: std::time::Duration) -> bool {
        tokio::time::timeout(grace, self.0.wait_for(|down| *down)).await.is_ok_and(|r| r.is_ok())
    }
}

pub struct AgentHub {
    links: Mutex<HashMap<String, Link>>,
    next_conn: AtomicU64,
    sessions: Arc<Registry>,
    events: EventSink,
}

impl std::fmt::Debug for AgentHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHub").field("agents", &self.names()).finish_non_exhaustive()
    }
}

impl AgentHub {
    pub fn new(sessions: Arc<Registry>, events: EventSink) -> Self {
        Self { links: Mutex::new(HashMap::new()), next_conn: AtomicU64::new(1), sessions, events }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Link>> {
        self.links.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Names of the agents connected now.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().keys().cloned().collect();
        names.sort();
        names
    }

    /// A connection to `host:port` through `agent`; the agent connects (or refuses).
    pub(crate) async fn open(
        &self,
        agent: &str,
        host: &str,
        port: u16,
        originator: SocketAddr,
    ) -> Result<(Onward, LinkWatch), BrokerError> {
        let (route, down) = self
            .lock()
            .get(agent)
            .map(|l| (l.route.clone(), LinkWatch(l.down.subscribe())))
            .ok_or(BrokerError::AgentUnavailable)?;
        let handle = match route {
            Route::Ssh(handle) => handle,
            Route::InProcess(agent) => {
                return match agent.dial(host, port).await {
                    Ok(tcp) => Ok((Onward::Tcp(tcp), down)),
                    Err(DialError::NotAllowed) => Err(BrokerError::AgentRefused),
                    Err(DialError::ConnectFailed) => Err(BrokerError::TargetUnreachable),
                };
            }
        };
        let opened = handle
            .channel_open_forwarded_tcpip(
                host,
                u32::from(port),
                originator.ip().to_string(),
                u32::from(originator.port()),
            )
            .await;
        match opened {
            Ok(channel) => Ok((Onward::Channel(channel), down)),
            Err(russh::Error::ChannelOpenFailure(ChannelOpenFailure::AdministrativelyProhibited)) => {
                Err(BrokerError::AgentRefused)
            }
            Err(russh::Error::ChannelOpenFailure(_)) => Err(BrokerError::TargetUnreachable),
            Err(_) => Err(BrokerError::AgentUnavailable),
        }
    }

    /// Serves `agent` from this process (see [`InProcessAgent`]). It stays attached for
    /// the bastion's lifetime; a remote agent of the same name would replace it.
    pub(crate) fn attach_in_process(&self, agent: Arc<InProcessAgent>) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let name = agent.name().to_owned();
        let link = Link { conn, route: Route::InProcess(agent), down: watch::channel(false).0 };
        self.lock().insert(name, link);
    }

    pub(crate) fn connected(&self, agent: &str, peer: SocketAddr, handle: russh::server::Handle) -> u64 {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let link = Link { conn, route: Route::Ssh(handle), down: watch::channel(false).0 };
        let previous = self.lock().insert(agent.to_owned(), link);
        if let Some(old) = previous {
            old.down.send_replace(true);
            // The agent reconnected (its old TCP connection may not know yet): the old
            // link's sessions are gone with it.
            self.sessions.close_where(CloseReason::AgentDisconnect, |s| s.agent == agent);
            if let Route::Ssh(handle) = old.route {
                tokio::spawn(async move {
                    let _ = handle
                        .disconnect(
                            russh::Disconnect::ByApplication,
                            "replaced by a newer connection".into(),
                            String::new(),
                        )
                        .await;
                });
            }
        }
        self.events.record(BastionEvent::AgentConnected { agent: agent.to_owned(), remote: peer });
        conn
    }

    pub(crate) fn disconnected(&self, agent: &str, conn: u64) {
        let mut links = self.lock();
        if links.get(agent).is_some_and(|l| l.conn == conn) {
            if let Some(link) = links.remove(agent) {
                link.down.send_replace(true);
            }
            drop(links);
            self.sessions.close_where(CloseReason::AgentDisconnect, |s| s.agent == agent);
            self.events.record(BastionEvent::AgentDisconnected { agent: agent.to_owned() });
        }
    }
}
