//! Jump mode: `ssh -J user@bastion root@pve01`. The client's `direct-tcpip` channel is
//! authorized by the CA and spliced to a channel through the device's agent. The bytes
//! are the user's own SSH connection to the node, encrypted end to end: the bastion
//! never interprets them (no byte is special), it only counts them and watches the
//! limits.

use std::net::SocketAddr;
use std::sync::Arc;

use portcullis_proto::bastion::{CloseReason, SessionMode, SessionOpenRequest};
use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure};

use crate::agent_hub::LinkWatch;
use crate::broker::{Admitted, new_session_id};
use crate::handler::Presented;
use crate::server::Shared;
use crate::sessions::within_close_grace;

/// SSH_OPEN_ADMINISTRATIVELY_PROHIBITED (RFC 4254 §5.1), with our own text.
pub(crate) const ADMINISTRATIVELY_PROHIBITED: u32 = 1;
/// SSH_OPEN_CONNECT_FAILED.
const CONNECT_FAILED: u32 = 2;

pub(crate) struct JumpRequest {
    pub peer: SocketAddr,
    pub certificate: Presented,
    pub host: String,
    pub port: u16,
    /// How to tell the user why the bastion ended the session (see [`Farewell`]).
    pub farewell: Farewell,
}

/// The user's outer connection to the bastion. The jump session inside it is end to
/// end, so the bastion has no terminal to write a reason on; when it ends the session
/// itself (shutdown, a kill, a limit, a revocation) and this is the connection's only
/// channel — an ordinary `ssh -J` — it disconnects the outer connection with the
/// reason instead, which `ssh` prints ("Received disconnect …: session closed: …").
/// A connection that carries other channels keeps them: only the channel closes.
pub(crate) struct Farewell {
    pub outer: russh::server::Handle,
    /// Open channels on the connection, this one included.
    pub channels: Arc<std::sync::atomic::AtomicUsize>,
}

impl Farewell {
    fn applies(&self, reason: CloseReason) -> bool {
        !matches!(reason, CloseReason::ClientDisconnect | CloseReason::TargetDisconnect)
            && self.channels.load(std::sync::atomic::Ordering::Acquire) == 1
    }
}

/// Runs one jump-mode session to its end (spawned per channel).
pub(crate) async fn run(shared: Arc<Shared>, req: JumpRequest, client: Channel<Msg>, reply: ChannelOpenHandle) {
    let request = SessionOpenRequest {
        session_id: new_session_id(),
        mode: SessionMode::Jump,
        cert_serial: req.certificate.serial.to_string(),
        certificate_digest: req.certificate.digest.clone(),
        login: None,
        device: req.host.clone(),
        port: Some(req.port),
        client_ip: req.peer.ip().to_string(),
        session_public_key: None,
    };
    let admitted = match shared.admit(request).await {
        Ok(a) => a,
        Err(refusal) => {
            reply
                .reject(ChannelOpenFailure::Other { code: ADMINISTRATIVELY_PROHIBITED, reason: refusal.message })
                .await;
            return;
        }
    };
    let (onward, link) = match shared.reach(&admitted, req.peer).await {
        Ok(c) => c,
        Err(refusal) => {
            reply.reject(ChannelOpenFailure::Other { code: CONNECT_FAILED, reason: refusal.message }).await;
            return;
        }
    };
    reply.accept().await;
    let reason = splice(&admitted, client, onward, link, &req.farewell).await;
    shared.finish(&admitted, reason).await;
}

/// Copies both ways until either end closes or a limit/close order ends the session.
async fn splice(
    admitted: &Admitted,
    client: Channel<Msg>,
    onward: Channel<Msg>,
    link: LinkWatch,
    farewell: &Farewell,
) -> CloseReason {
    let live = &admitted.live;
    let (mut from_client, to_client) = client.split();
    let (mut from_node, to_node) = onward.split();
    let upstream = async {
        while let Some(msg) = from_client.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    live.client_input(data.len());
                    if to_node.data_bytes(data).await.is_err() {
                        return CloseReason::AgentDisconnect;
                    }
                }
                ChannelMsg::Eof => {
                    let _ = to_node.eof().await;
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        CloseReason::ClientDisconnect
    };
    let downstream = async {
        while let Some(msg) = from_node.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    live.client_output(data.len());
                    if to_client.data_bytes(data).await.is_err() {
                        return CloseReason::ClientDisconnect;
                    }
                }
                ChannelMsg::Eof => {
                    let _ = to_client.eof().await;
                }
                ChannelMsg::Close => return CloseReason::TargetDisconnect,
                _ => {}
            }
        }
        // Gone without a close: did the agent leave?
        crate::broker::vanished(link).await
    };
    let pump = async {
        tokio::select! {
            r = upstream => r,
            r = downstream => r,
        }
    };
    let reason = live.relay(admitted.limits, pump).await;
    // End to end: nothing of ours inside the channel, only the closes — and the reason
    // on the outer connection when it is ours to give.
    within_close_grace(async {
        let _ = to_node.close().await;
        if farewell.applies(reason) {
            let why = reason.message().to_owned();
            let _ = farewell.outer.disconnect(russh::Disconnect::ByApplication, why, String::new()).await;
        } else {
            let _ = to_client.close().await;
        }
    })
    .await;
    reason
}
