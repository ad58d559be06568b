//! Terminated mode: `ssh -p 2222 root%pve01@bastion`. The bastion ends the user's SSH
//! connection and logs in to the node itself, through the node's agent, with a
//! per-session certificate: an ephemeral key generated here for this session only, a
//! certificate the CA signs for it (principal valid on this node only, about a minute
//! of life, key id naming the session), and the node's host key checked against what
//! enrollment pinned. The private key never leaves this process and dies with the
//! session.
//!
//! Between the two channels the bastion forwards what a shell, exec or sftp session
//! needs — pty, window changes, allow-listed environment variables, signals, data,
//! EOF, exit status and signal — and refuses agent and X11 forwarding.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use portcullis_proto::bastion::{CloseReason, ConnectionProof, SessionMode, SessionOpenRequest};
use russh::client;
use russh::keys::PrivateKey;
use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure};
use ssh_key::rand_core::UnwrapErr;
use ssh_key::{Algorithm, Certificate};

use crate::agent_hub::LinkWatch;
use crate::broker::Presented;
use crate::broker::{Admitted, Reached, Refusal, new_session_id};
use crate::events::{BastionEvent, escape_for_log};
use crate::host_keys::{HostKeyChecker, HostKeys};
use crate::jump::ADMINISTRATIVELY_PROHIBITED;
use crate::recording::{ANNOUNCEMENT, Recorder};
use crate::sessions::within_close_grace;
use crate::shared::Shared;

pub(crate) struct TerminatedRequest {
    pub peer: SocketAddr,
    pub certificate: Presented,
    /// The user's proof of this connection, which the CA asks for every onward
    /// certificate.
    pub proof: Option<Arc<ConnectionProof>>,
    pub login: String,
    pub device: String,
    pub mode: SessionMode,
}

/// Environment variables passed to the node (names; `LC_*` as a prefix).
fn env_allowed(name: &str) -> bool {
    matches!(name, "LANG" | "TERM" | "COLORTERM") || name.starts_with("LC_")
}

/// Runs one terminated-mode session channel to its end.
pub(crate) async fn run(
    shared: Arc<Shared>,
    req: TerminatedRequest,
    client: Channel<Msg>,
    reply: ChannelOpenHandle,
    handle: russh::server::Handle,
) {
    // Boxed: what comes before the relay runs once, and inline its state would keep its
    // room in the task for as long as the session lasts.
    let Some(onward) = Box::pin(open(&shared, &req, reply)).await else { return };
    let recorder = Recorder::start(&shared.control, &onward.admitted.live, onward.admitted.grant.recording);
    let reason = proxy(&onward.admitted, client, onward.channel, onward.link, &handle, recorder.as_ref()).await;
    drop(onward.session);
    if let Some(recorder) = recorder {
        recorder.finish().await;
    }
    shared.finish(onward.admitted, reason).await;
}

/// Admission, then the onward login; the user's channel is accepted, or refused with
/// the reason.
async fn open(shared: &Shared, req: &TerminatedRequest, reply: ChannelOpenHandle) -> Option<Onward> {
    let Some((key, public_line)) = session_key() else {
        reply.reject(ChannelOpenFailure::ResourceShortage).await;
        return None;
    };
    let request = SessionOpenRequest {
        session_id: new_session_id(),
        mode: req.mode,
        cert_serial: req.certificate.serial.to_string(),
        certificate_digest: req.certificate.digest.clone(),
        login: Some(req.login.clone()),
        device: req.device.clone(),
        port: None,
        client_ip: req.peer.ip().to_string(),
        session_public_key: Some(public_line),
        connection_proof: req.proof.as_deref().cloned(),
    };
    let admitted = match shared.admit(request).await {
        Ok(a) => a,
        Err(refusal) => {
            refuse(reply, refusal).await;
            return None;
        }
    };
    match log_in_onward(shared, admitted, req.peer, key).await {
        Ok(onward) => {
            reply.accept().await;
            Some(onward)
        }
        Err(refusal) => {
            refuse(reply, refusal).await;
            None
        }
    }
}

/// An ephemeral Ed25519 key for one session, and its public line for the CA.
/// How long the onward connection may take nothing (see `BastionConfig::dead_peer_after`).
const ONWARD_DEAD_PEER_AFTER: Duration = Duration::from_secs(600);

pub(crate) fn session_key() -> Option<(PrivateKey, String)> {
    let key = PrivateKey::random(&mut UnwrapErr(ssh_key::getrandom::SysRng), Algorithm::Ed25519).ok()?;
    let line = key.public_key().to_openssh().ok()?;
    Some((key, line))
}

async fn refuse(reply: ChannelOpenHandle, refusal: Refusal) {
    reply.reject(ChannelOpenFailure::Other { code: ADMINISTRATIVELY_PROHIBITED, reason: refusal.message }).await;
}

pub(crate) struct Onward {
    pub admitted: Admitted,
    /// Keeps the onward SSH connection alive.
    pub session: client::Handle<HostKeyChecker<OnwardError>>,
    pub channel: Channel<client::Msg>,
    pub link: LinkWatch,
}

/// Agent channel → SSH handshake with host-key check → certificate login → session channel.
pub(crate) async fn log_in_onward(
    shared: &Shared,
    admitted: Admitted,
    peer: SocketAddr,
    key: PrivateKey,
) -> Result<Onward, Refusal> {
    let g = &admitted.grant;
    let Some(cert) = g.session_certificate.as_deref().and_then(|c| Certificate::from_openssh(c.trim()).ok()) else {
        return Err(shared.broker_failed(admitted, "credential_resolution_failed").await.into());
    };
    let Reached { admitted, onward: channel, link } = shared.reach(admitted, peer).await?;
    let g = &admitted.grant;
    let stream = channel.into_stream();
    let host_keys = HostKeys::new(g.host_key_check, &g.known_host_keys);
    let first_used = host_keys.first_used();
    let checker = host_keys.checker();
    let config = Arc::new(client::Config {
        preferred: crate::algorithms::preferred_client(),
        nodelay: true,
        // A node that stops answering, or stops taking what is sent to it, does not keep
        // the onward connection's task (and the agent's channel or socket) for good:
        // dropping the session does not end that task, these limits do.
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        inactivity_timeout: Some(ONWARD_DEAD_PEER_AFTER),
        ..client::Config::default()
    });
    let timeout = Duration::from_millis(g.connect_timeout_ms.clamp(100, 60_000));
    // Boxed: the handshake's state is the largest a session ever needs, and only once;
    // inline, each session's task would keep room for it as long as the session lasts.
    let connected = tokio::time::timeout(
        timeout,
        Box::pin(async {
            let mut session = client::connect_stream(config, stream, checker).await?;
            let login = g.login.clone().unwrap_or_default();
            let auth = session.authenticate_openssh_cert(login, Arc::new(key), cert).await?;
            if !auth.success() {
                return Err(OnwardError::AuthFailed);
            }
            let channel = session.channel_open_session().await?;
            Ok::<_, OnwardError>((session, channel))
        }),
    )
    .await;
    let code = match connected {
        Ok(Ok((session, channel))) => {
            if let Some(key) = first_used.get() {
                let host_key = ssh_key::PublicKey::new(key.clone(), "").to_openssh().unwrap_or_default();
                shared.events.record(BastionEvent::HostKeyFirstUsed { session_id: g.session_id.clone(), host_key });
            }
            return Ok(Onward { admitted, session, channel, link });
        }
        // An agent that vanished mid-handshake looks like any failure from here.
        _ if link.clone().went_down(Duration::from_millis(200)).await => "agent_unavailable",
        Ok(Err(e)) => {
            tracing::info!(
                session = %g.session_id,
                device = %escape_for_log(&g.device),
                error = %escape_for_log(&e.to_string()),
                "onward login failed"
            );
            e.code()
        }
        Err(_) => "target_unreachable",
    };
    Err(shared.broker_failed(admitted, code).await.into())
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum OnwardError {
    #[error("host key not recognised")]
    HostKey,
    #[error("the node refused the session certificate")]
    AuthFailed,
    #[error("SSH: {0}")]
    Ssh(russh::Error),
}

impl From<russh::Error> for OnwardError {
    fn from(e: russh::Error) -> Self {
        match e {
            russh::Error::UnknownKey => OnwardError::HostKey,
            e => OnwardError::Ssh(e),
        }
    }
}

impl OnwardError {
    fn code(&self) -> &'static str {
        match self {
            OnwardError::HostKey => "host_key_mismatch",
            OnwardError::AuthFailed => "onward_auth_failed",
            OnwardError::Ssh(_) => "target_unreachable",
        }
    }
}

/// Forwards requests and data between the user's channel and the node's until one
/// side closes or the session must end; the reason is shown to the user.
async fn proxy(
    admitted: &Admitted,
    client: Channel<Msg>,
    onward: Channel<client::Msg>,
    link: LinkWatch,
    handle: &russh::server::Handle,
    recorder: Option<&Recorder>,
) -> CloseReason {
    let live = &admitted.live;
    let client_id = client.id();
    let (mut from_client, to_client) = client.split();
    if recorder.is_some() {
        let line = format!("{ANNOUNCEMENT}\r\n");
        within_close_grace(to_client.extended_data_bytes(1, bytes::Bytes::from(line.into_bytes()))).await;
    }
    let (mut from_node, to_node) = onward.split();
    // How many forwarded requests await the node's answer: answers come back in order
    // and are relayed to the user's channel (unsolicited ones are dropped).
    let pending = AtomicUsize::new(0);
    let expect_reply = || pending.fetch_add(1, Ordering::Relaxed);
    let take_reply = || pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();

    // In a block of their own, so their state is gone after it (the goodbye reuses it).
    let reason = {
        let upstream = pin!(async {
            while let Some(msg) = from_client.wait().await {
                let sent = match msg {
                    ChannelMsg::Data { data } => {
                        live.client_input(data.len());
                        if let Some(r) = recorder {
                            r.input(&data).await;
                        }
                        to_node.data_bytes(data).await
                    }
                    ChannelMsg::Eof => to_node.eof().await,
                    ChannelMsg::Close => break,
                    ChannelMsg::RequestPty {
                        term,
                        col_width,
                        row_height,
                        pix_width,
                        pix_height,
                        terminal_modes,
                        ..
                    } => {
                        live.touch();
                        expect_reply();
                        if let Some(r) = recorder {
                            r.resize(col_width, row_height).await;
                        }
                        to_node
                            .request_pty(true, &term, col_width, row_height, pix_width, pix_height, &terminal_modes)
                            .await
                    }
                    ChannelMsg::RequestShell { .. } => {
                        expect_reply();
                        to_node.request_shell(true).await
                    }
                    ChannelMsg::Exec { command, .. } => {
                        expect_reply();
                        // The command is what the user typed (on the ssh command line):
                        // input, recorded when the rule records input.
                        if let Some(r) = recorder {
                            let mut typed = command.clone();
                            typed.push(b'\n');
                            r.input(&bytes::Bytes::from(typed)).await;
                        }
                        to_node.exec(true, command).await
                    }
                    ChannelMsg::RequestSubsystem { name, .. } => {
                        expect_reply();
                        to_node.request_subsystem(true, name).await
                    }
                    ChannelMsg::SetEnv { variable_name, variable_value, .. } => {
                        if env_allowed(&variable_name) {
                            to_node.set_env(false, variable_name, variable_value).await
                        } else {
                            Ok(())
                        }
                    }
                    ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height } => {
                        live.touch();
                        if let Some(r) = recorder {
                            r.resize(col_width, row_height).await;
                        }
                        to_node.window_change(col_width, row_height, pix_width, pix_height).await
                    }
                    ChannelMsg::Signal { signal } => {
                        live.touch();
                        to_node.signal(signal).await
                    }
                    ChannelMsg::RequestX11 { .. } => {
                        // Refused (russh answers agent forwarding itself).
                        let _ = handle.channel_failure(client_id).await;
                        Ok(())
                    }
                    _ => Ok(()),
                };
                if sent.is_err() {
                    // The onward connection is gone, with the agent's link or alone.
                    return crate::broker::vanished(link.clone()).await;
                }
            }
            CloseReason::ClientDisconnect
        });
        let downstream = pin!(async {
            // Whether the node said how the command ended: a close without it may be the
            // agent's link going down under the channel, which the user is told about.
            let mut ended = false;
            while let Some(msg) = from_node.wait().await {
                ended |= matches!(msg, ChannelMsg::ExitStatus { .. } | ChannelMsg::ExitSignal { .. });
                let sent = match msg {
                    ChannelMsg::Data { data } => {
                        live.client_output(data.len());
                        if let Some(r) = recorder {
                            r.output(&data).await;
                        }
                        to_client.data_bytes(data).await.map_err(drop)
                    }
                    ChannelMsg::ExtendedData { data, ext } => {
                        live.client_output(data.len());
                        if let Some(r) = recorder {
                            r.output(&data).await;
                        }
                        to_client.extended_data_bytes(ext, data).await.map_err(drop)
                    }
                    ChannelMsg::Eof => to_client.eof().await.map_err(drop),
                    ChannelMsg::ExitStatus { exit_status } => to_client.exit_status(exit_status).await.map_err(drop),
                    ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, lang_tag } => {
                        handle.exit_signal_request(client_id, signal_name, core_dumped, error_message, lang_tag).await
                    }
                    ChannelMsg::Success if take_reply() => handle.channel_success(client_id).await,
                    ChannelMsg::Failure if take_reply() => handle.channel_failure(client_id).await,
                    ChannelMsg::Close if ended => return CloseReason::TargetDisconnect,
                    ChannelMsg::Close => return crate::broker::vanished(link.clone()).await,
                    _ => Ok(()),
                };
                if sent.is_err() {
                    return CloseReason::ClientDisconnect;
                }
            }
            // The onward connection vanished without a close: did the agent leave?
            crate::broker::vanished(link.clone()).await
        });
        // Shortly before an idle close, a line on the user's stderr says so (the line itself
        // is no activity).
        let warnings = pin!(async {
            let mut warnings = live.idle_warnings();
            while warnings.changed().await.is_ok() {
                let Some(left) = *warnings.borrow_and_update() else { continue };
                let line = format!("\r\nportcullis: no activity: this session closes in {left} s unless you type\r\n");
                let write = to_client.extended_data_bytes(1, bytes::Bytes::from(line.into_bytes()));
                within_close_grace(write).await;
            }
            std::future::pending::<CloseReason>().await
        });
        // Each part is pinned where it is built and the pump borrows them: see
        // `LiveSession::relay` on why nothing is moved into another future.
        let pump = pin!(async {
            tokio::select! {
                r = upstream => r,
                r = downstream => r,
                r = warnings => r,
            }
        });
        live.relay(admitted.limits, pump).await
    };
    within_close_grace(to_node.close()).await;
    // The reason line needs the client's window: a client that never grants any must not
    // keep the session (and its lease) alive after a close order, so the goodbye has a
    // deadline and the close goes out regardless.
    let goodbye = async {
        if !matches!(reason, CloseReason::ClientDisconnect | CloseReason::TargetDisconnect) {
            let line = format!("\r\nportcullis: {}\r\n", reason.message());
            let _ = to_client.extended_data_bytes(1, bytes::Bytes::from(line.into_bytes())).await;
        }
        let _ = to_client.eof().await;
    };
    within_close_grace(goodbye).await;
    within_close_grace(to_client.close()).await;
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_allow_list() {
        for ok in ["LANG", "LC_ALL", "TERM"] {
            assert!(env_allowed(ok), "{ok}");
        }
        for bad in ["LD_PRELOAD", "PATH", "BASH_ENV", "lang"] {
            assert!(!env_allowed(bad), "{bad}");
        }
    }
}
