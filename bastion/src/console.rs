//! The browser console's WebSocket endpoint (`/console/ws`).
//!
//! The page's origin must be an allowed one (cross-site WebSocket hijacking: a foreign
//! page can make the browser open this socket with the user's cookies, so the Origin
//! header is checked before the upgrade, and the socket carries no authority until a
//! ticket arrives anyway). The **first frame** is the single-use ticket — never a URL
//! or query parameter; the CA redeems it, for the browser session whose cookie came
//! with the upgrade only, and admits the session in one step. The
//! session then runs like terminated mode: a per-session certificate logs in through
//! the agent, a pty of the browser's size runs the login shell, binary frames carry
//! terminal bytes both ways, JSON text frames carry resizes (in) and connected/exit/
//! closed notices (out). Idle time counts what the rule's `idle_counts` says. Every end sends the
//! sanitized reason before the socket closes.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use portcullis_proto::bastion::CloseReason;
use portcullis_proto::console::{self, ConsoleControl, ConsoleOpenRequest};
use portcullis_proto::recording::MAX_TERMINAL_SIDE;
use russh::{ChannelMsg, client};

use crate::Bastion;
use crate::broker::{Admitted, new_session_id};
use crate::recording::Recorder;
use crate::sessions::{LiveSession, within_close_grace};
use crate::shared::Shared;
use crate::terminated::{Onward, log_in_onward, session_key};

/// The path browsers connect to (the CA's ticket answer names it).
pub const CONSOLE_WS_PATH: &str = "/console/ws";
/// The ticket must arrive this soon after the upgrade.
const TICKET_WAIT: Duration = Duration::from_secs(10);
/// Longest first frame accepted as a ticket.
const MAX_TICKET_LEN: usize = 256;
/// Largest frame accepted from a browser (pastes are split by xterm.js well below this).
const MAX_FRAME: usize = 64 * 1024;
/// Output coalesced into one frame at most.
const MAX_OUT_FRAME: usize = 256 * 1024;

/// The WebSocket endpoint, routable before the bastion exists (the all-in-one mounts
/// it on the CA's HTTPS server, then starts the bastion, then attaches it).
#[derive(Default)]
pub struct ConsoleEndpoint {
    shared: OnceLock<Arc<Shared>>,
    /// Allowed `Origin` values (`https://host[:port]`); empty: the request's own host.
    origins: Vec<String>,
}

impl std::fmt::Debug for ConsoleEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleEndpoint").field("origins", &self.origins).finish_non_exhaustive()
    }
}

impl ConsoleEndpoint {
    pub fn new(origins: Vec<String>) -> Arc<Self> {
        Arc::new(Self { shared: OnceLock::new(), origins })
    }

    /// Serves consoles through `bastion` from now on.
    pub fn attach(&self, bastion: &Bastion) {
        let _ = self.shared.set(bastion.shared());
    }

    /// The CA client of the attached bastion (`None` before [`Self::attach`]).
    pub(crate) fn control(&self) -> Option<Arc<crate::ControlPlane>> {
        self.shared.get().map(|s| Arc::clone(&s.control))
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new().route(CONSOLE_WS_PATH, get(upgrade)).with_state(Arc::clone(self))
    }

    /// Same-origin by default: the page that asked for the ticket is served by this
    /// host. A missing Origin (not a browser) is refused too.
    fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return false };
        if !self.origins.is_empty() {
            return self.origins.iter().any(|o| o == origin);
        }
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        !host.is_empty() && origin == format!("https://{host}")
    }
}

async fn upgrade(
    State(endpoint): State<Arc<ConsoleEndpoint>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(shared) = endpoint.shared.get().cloned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "console not available yet").into_response();
    };
    if !endpoint.origin_allowed(&headers) {
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).unwrap_or("");
        shared
            .events
            .record(crate::BastionEvent::ConsoleOriginRefused { peer, origin: crate::events::sanitize_user(origin) });
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    // The ticket is redeemed only for the browser session whose cookie came with the
    // upgrade; only its hash travels on (see `session_binding`).
    let browser_session = console::cookie(
        headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()),
        console::SESSION_COOKIE,
    )
    .map(|token| console::session_binding(&token));
    ws.max_frame_size(MAX_FRAME)
        .max_message_size(MAX_FRAME)
        .on_upgrade(move |socket| run(shared, socket, peer, browser_session))
}

async fn send_control(socket: &mut WebSocket, control: &ConsoleControl) -> bool {
    match serde_json::to_string(control) {
        Ok(text) => socket.send(Message::Text(text.into())).await.is_ok(),
        Err(_) => false,
    }
}

async fn close_with(socket: &mut WebSocket, reason: &str, message: &str) {
    let _ =
        send_control(socket, &ConsoleControl::Closed { reason: reason.to_owned(), message: message.to_owned() }).await;
    let _ = socket.send(Message::Close(None)).await;
}

/// The ticket: the first frame, text or binary, printable and short.
async fn read_ticket(socket: &mut WebSocket) -> Option<String> {
    let frame = tokio::time::timeout(TICKET_WAIT, socket.recv()).await.ok()??.ok()?;
    let text = match frame {
        Message::Text(t) => t.to_string(),
        Message::Binary(b) => String::from_utf8(b.to_vec()).ok()?,
        _ => return None,
    };
    let text = text.trim().to_owned();
    (!text.is_empty() && text.len() <= MAX_TICKET_LEN && text.bytes().all(|b| b.is_ascii_graphic())).then_some(text)
}

async fn run(shared: Arc<Shared>, mut socket: WebSocket, peer: SocketAddr, browser_session: Option<String>) {
    // Boxed: what comes before the relay runs once, and inline its state would keep its
    // room in the task for as long as the session lasts.
    let Some(onward) = Box::pin(open(&shared, &mut socket, peer, browser_session)).await else { return };
    let recorder = Recorder::start(&shared.control, &onward.admitted.live, onward.admitted.grant.recording);
    let reason = relay(&onward.admitted, &mut socket, onward.channel, onward.link, recorder.as_ref()).await;
    drop(onward.session);
    if let Some(recorder) = recorder {
        recorder.finish().await;
    }
    // The lease is released whatever the browser does; the goodbye gets a deadline, since
    // a browser that stopped reading would hold this task (and the socket) forever.
    let goodbye = within_close_grace(close_with(&mut socket, reason.as_str(), reason.message()));
    let ((), _) = tokio::join!(shared.finish(onward.admitted, reason), goodbye);
}

/// The ticket, admission, then the onward login; a refusal is told to the browser and
/// closes the socket.
async fn open(
    shared: &Shared,
    socket: &mut WebSocket,
    peer: SocketAddr,
    browser_session: Option<String>,
) -> Option<Onward> {
    let Some(ticket) = read_ticket(socket).await else {
        // The seed's "missing credential": counted into the audit summary (an audit row
        // per ticketless socket would let anyone grow the trail).
        shared.events.count_refusal(peer.ip(), "ticket_missing");
        close_with(socket, "ticket_missing", "no console ticket received").await;
        return None;
    };
    let Some((key, public_line)) = session_key() else {
        close_with(socket, "internal", "cannot start a session").await;
        return None;
    };
    let request = ConsoleOpenRequest {
        ticket: ticket.into(),
        session_id: new_session_id(),
        session_public_key: public_line,
        client_ip: peer.ip().to_string(),
        browser_session,
    };
    let refused = match shared.admit_console(request).await {
        Ok(admitted) => match log_in_onward(shared, admitted, peer, key).await {
            Ok(onward) => return Some(onward),
            Err(refusal) => refusal,
        },
        Err(refusal) => refusal,
    };
    close_with(socket, &refused.code, &refused.message).await;
    None
}

/// The terminal: a pty the size the browser asks for (first resize, else 80×24), the
/// login shell, then bytes and control frames both ways until either end or a limit.
/// The pump waits in a WebSocket send while the browser does not read (backpressure, on
/// purpose); [`LiveSession::relay`] keeps the watchdog running meanwhile.
async fn relay(
    admitted: &Admitted,
    socket: &mut WebSocket,
    onward: russh::Channel<client::Msg>,
    link: crate::agent_hub::LinkWatch,
    recorder: Option<&Recorder>,
) -> CloseReason {
    let live = &admitted.live;
    let closes_in = live.ends_in(&admitted.limits).map(|d| d.as_secs());
    let pump = std::pin::pin!(pump(live, closes_in, socket, onward, link, recorder));
    live.relay(admitted.limits, pump).await
}

async fn pump(
    live: &LiveSession,
    closes_in: Option<u64>,
    socket: &mut WebSocket,
    onward: russh::Channel<client::Msg>,
    link: crate::agent_hub::LinkWatch,
    recorder: Option<&Recorder>,
) -> CloseReason {
    let (mut from_node, to_node) = onward.split();
    let (cols, rows) = first_size(socket).await.unwrap_or((80, 24));
    // xterm.js speaks UTF-8; say so (nodes accept LANG by default: `AcceptEnv LANG LC_*`).
    let _ = to_node.set_env(false, "LANG", "C.UTF-8").await;
    let started = to_node.request_pty(true, "xterm-256color", cols, rows, 0, 0, &[]).await.is_ok()
        && to_node.request_shell(true).await.is_ok();
    if !started {
        return CloseReason::TargetDisconnect;
    }
    if let Some(r) = recorder {
        r.resize(cols, rows).await;
    }
    let connected = ConsoleControl::Connected {
        session_id: live.id.clone(),
        device: live.device.clone(),
        closes_in,
        recorded: recorder.is_some(),
    };
    if !send_control(socket, &connected).await {
        return CloseReason::BrowserDisconnect;
    }
    // A message read while coalescing output that is not output: handled next round.
    let mut stash: Option<Option<ChannelMsg>> = None;
    let mut warnings = live.idle_warnings();
    loop {
        tokio::select! {
            Ok(()) = warnings.changed() => {
                let left = *warnings.borrow_and_update();
                if let Some(seconds) = left
                    && !send_control(socket, &ConsoleControl::IdleWarning { seconds }).await
                {
                    return CloseReason::BrowserDisconnect;
                }
            }
            frame = socket.recv() => match frame {
                Some(Ok(Message::Binary(data))) => {
                    live.client_input(data.len());
                    if let Some(r) = recorder {
                        r.input(&data).await;
                    }
                    if to_node.data_bytes(data).await.is_err() {
                        // The onward connection is gone, with the agent's link or alone.
                        return crate::broker::vanished(link.clone()).await;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    if let Ok(ConsoleControl::Resize { cols, rows }) = serde_json::from_str(&text) {
                        live.touch();
                        let (cols, rows) = (cols.clamp(1, MAX_TERMINAL_SIDE), rows.clamp(1, MAX_TERMINAL_SIDE));
                        if let Some(r) = recorder {
                            r.resize(cols, rows).await;
                        }
                        let _ = to_node.window_change(cols, rows, 0, 0).await;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return CloseReason::BrowserDisconnect,
            },
            msg = async { match stash.take() { Some(m) => m, None => from_node.wait().await } } => match msg {
                Some(ChannelMsg::Data { data }) | Some(ChannelMsg::ExtendedData { data, .. }) => {
                    // Output already waiting goes out in the same frame: a browser pays per
                    // frame (an event, a parse call), so fewer, larger frames are faster.
                    let mut out = bytes::BytesMut::from(data.as_ref());
                    while out.len() < MAX_OUT_FRAME {
                        match tokio::time::timeout(Duration::ZERO, from_node.wait()).await {
                            Ok(Some(ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. })) => {
                                out.extend_from_slice(&data)
                            }
                            Ok(other) => {
                                stash = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    live.client_output(out.len());
                    let out = out.freeze();
                    if let Some(r) = recorder {
                        r.output(&out).await;
                    }
                    if socket.send(Message::Binary(out)).await.is_err() {
                        return CloseReason::BrowserDisconnect;
                    }
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    let _ = send_control(socket, &ConsoleControl::Exit { status: exit_status }).await;
                }
                Some(ChannelMsg::Close) => return CloseReason::TargetDisconnect,
                Some(_) => {}
                None => return crate::broker::vanished(link).await,
            },
        }
    }
}

/// The browser's first resize, if it sends one right after the ticket.
async fn first_size(socket: &mut WebSocket) -> Option<(u32, u32)> {
    let frame = tokio::time::timeout(Duration::from_secs(2), socket.recv()).await.ok()??.ok()?;
    match frame {
        Message::Text(text) => match serde_json::from_str(&text).ok()? {
            ConsoleControl::Resize { cols, rows } => {
                Some((cols.clamp(1, MAX_TERMINAL_SIDE), rows.clamp(1, MAX_TERMINAL_SIDE)))
            }
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn origin_must_be_this_host_or_listed() {
        let same = ConsoleEndpoint::new(Vec::new());
        assert!(same.origin_allowed(&headers(Some("https://ca.example:8443"), "ca.example:8443")));
        assert!(!same.origin_allowed(&headers(Some("https://evil.example"), "ca.example:8443")));
        assert!(!same.origin_allowed(&headers(Some("http://ca.example:8443"), "ca.example:8443")), "scheme counts");
        assert!(!same.origin_allowed(&headers(None, "ca.example:8443")), "no Origin: refused");
        let listed = ConsoleEndpoint::new(vec!["https://portal.example".into()]);
        assert!(listed.origin_allowed(&headers(Some("https://portal.example"), "bastion.internal")));
        assert!(!listed.origin_allowed(&headers(Some("https://bastion.internal"), "bastion.internal")));
    }
}
