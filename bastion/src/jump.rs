//! Jump mode: `ssh -J user@bastion root@pve01`. The client's `direct-tcpip` channel is
//! authorized by the CA and spliced to a channel through the device's agent. The bytes
//! are the user's own SSH connection to the node, encrypted end to end: the bastion
//! never interprets them (no byte is special), it only counts them and watches the
//! limits.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use portcullis_proto::bastion::{CloseReason, SessionMode, SessionOpenRequest};
use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::agent_hub::{LinkWatch, Onward};
use crate::broker::{Admitted, Presented, Reached, new_session_id};
use crate::sessions::within_close_grace;
use crate::shared::Shared;

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
    // Boxed: what comes before the splice runs once, and inline its state would keep its
    // room in the task for as long as the session lasts.
    let Some(Reached { admitted, onward, link }) = Box::pin(open(&shared, &req, reply)).await else { return };
    let reason = splice(&admitted, client, onward, link, &req.farewell).await;
    shared.finish(admitted, reason).await;
}

/// Admission, then the channel to the node through its agent; the user's channel is
/// accepted, or refused with the reason.
async fn open(shared: &Shared, req: &JumpRequest, reply: ChannelOpenHandle) -> Option<Reached> {
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
        // Jump mode gets no onward credential: SSH runs end to end.
        connection_proof: None,
    };
    let admitted = match shared.admit(request).await {
        Ok(a) => a,
        Err(refusal) => {
            reply
                .reject(ChannelOpenFailure::Other { code: ADMINISTRATIVELY_PROHIBITED, reason: refusal.message })
                .await;
            return None;
        }
    };
    let reached = match shared.reach(admitted, req.peer).await {
        Ok(reached) => reached,
        Err(refusal) => {
            reply.reject(ChannelOpenFailure::Other { code: CONNECT_FAILED, reason: refusal.message }).await;
            return None;
        }
    };
    reply.accept().await;
    Some(reached)
}

/// Copies both ways until either end closes or a limit/close order ends the session.
async fn splice(
    admitted: &Admitted,
    client: Channel<Msg>,
    onward: Onward,
    link: LinkWatch,
    farewell: &Farewell,
) -> CloseReason {
    let live = &admitted.live;
    let (mut from_client, to_client) = client.split();
    let (mut from_node, mut to_node) = node_halves(onward);
    // TCP's half-close holds both ways, as OpenSSH's jump `sshd` keeps it: one side's
    // end of sending (its EOF, the node's FIN) is passed on and the other may go on
    // sending; the session ends when both have finished, or either closes.
    let finished = AtomicU8::new(0);
    let both_finished = |side: u8| (finished.fetch_or(side, Ordering::AcqRel) | side) == (CLIENT_DONE | NODE_DONE);
    // In a block of their own, so their state is gone after it (the goodbye reuses it).
    let reason = {
        let upstream = pin!(async {
            while let Some(msg) = from_client.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        live.client_input(data.len());
                        if to_node.data(data).await.is_err() {
                            // The node's side failed: the agent's link, or only the
                            // target's connection (a reset), as terminated mode asks.
                            return crate::broker::vanished(link.clone()).await;
                        }
                    }
                    ChannelMsg::Eof => {
                        to_node.eof().await;
                        if both_finished(CLIENT_DONE) {
                            return CloseReason::TargetDisconnect;
                        }
                    }
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            CloseReason::ClientDisconnect
        });
        let downstream = pin!(async {
            loop {
                match from_node.next().await {
                    FromNode::Data(data) => {
                        live.client_output(data.len());
                        if to_client.data_bytes(data).await.is_err() {
                            return CloseReason::ClientDisconnect;
                        }
                    }
                    FromNode::Eof => {
                        let _ = to_client.eof().await;
                        if both_finished(NODE_DONE) {
                            return CloseReason::TargetDisconnect;
                        }
                    }
                    FromNode::Closed => return CloseReason::TargetDisconnect,
                    // Gone without a close: did the agent leave?
                    FromNode::Vanished => return crate::broker::vanished(link.clone()).await,
                }
            }
        });
        // Pinned where built, borrowed by the pump: see `LiveSession::relay`.
        let pump = pin!(async {
            tokio::select! {
                r = upstream => r,
                r = downstream => r,
            }
        });
        live.relay(admitted.limits, pump).await
    };
    // End to end: nothing of ours inside the channel, only the closes — and the reason
    // on the outer connection when it is ours to give.
    within_close_grace(async {
        to_node.close().await;
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

/// Sides of a jump session that have finished sending (see `splice`).
const CLIENT_DONE: u8 = 1;
const NODE_DONE: u8 = 2;

/// What the node's side of a jump session delivers next.
enum FromNode {
    Data(bytes::Bytes),
    Eof,
    /// The node (or, for a channel, the agent on its behalf) closed.
    Closed,
    /// A channel that ended without a close.
    Vanished,
}

/// Bytes read from the in-process agent's connection at a time (the size of a full
/// SSH channel data packet the client accepts).
const TCP_READ: usize = 32 * 1024;

enum NodeReader {
    Channel(ChannelReadHalf),
    /// `eof` once the node's FIN was passed on: nothing more comes (the session goes
    /// on while the client sends).
    Tcp {
        read: OwnedReadHalf,
        eof: bool,
    },
}

enum NodeWriter {
    Channel(ChannelWriteHalf<Msg>),
    Tcp(OwnedWriteHalf),
}

fn node_halves(onward: Onward) -> (NodeReader, NodeWriter) {
    match onward {
        Onward::Channel(channel) => {
            let (read, write) = channel.split();
            (NodeReader::Channel(read), NodeWriter::Channel(write))
        }
        Onward::Tcp(tcp) => {
            let (read, write) = tcp.into_split();
            (NodeReader::Tcp { read, eof: false }, NodeWriter::Tcp(write))
        }
    }
}

impl NodeReader {
    async fn next(&mut self) -> FromNode {
        match self {
            NodeReader::Channel(read) => loop {
                match read.wait().await {
                    Some(ChannelMsg::Data { data }) => return FromNode::Data(data),
                    Some(ChannelMsg::Eof) => return FromNode::Eof,
                    Some(ChannelMsg::Close) => return FromNode::Closed,
                    Some(_) => {}
                    None => return FromNode::Vanished,
                }
            },
            NodeReader::Tcp { eof: true, .. } => std::future::pending().await,
            NodeReader::Tcp { read, eof } => loop {
                // The buffer exists only while bytes are ready: an idle session holds none.
                if read.readable().await.is_err() {
                    return FromNode::Closed;
                }
                let mut buf = bytes::BytesMut::with_capacity(TCP_READ);
                match read.try_read_buf(&mut buf) {
                    Ok(0) => {
                        *eof = true;
                        return FromNode::Eof;
                    }
                    // A small read is copied out: a target that sends a byte at a time
                    // to a client that does not read would otherwise keep a buffer of
                    // `TCP_READ` per byte while they wait.
                    Ok(n) if n < TCP_READ / 8 => return FromNode::Data(bytes::Bytes::copy_from_slice(&buf)),
                    Ok(_) => return FromNode::Data(buf.freeze()),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return FromNode::Closed,
                }
            },
        }
    }
}

impl NodeWriter {
    async fn data(&mut self, data: bytes::Bytes) -> Result<(), ()> {
        match self {
            NodeWriter::Channel(write) => write.data_bytes(data).await.map_err(drop),
            NodeWriter::Tcp(write) => write.write_all(&data).await.map_err(drop),
        }
    }

    async fn eof(&mut self) {
        match self {
            NodeWriter::Channel(write) => drop(write.eof().await),
            NodeWriter::Tcp(write) => drop(write.shutdown().await),
        }
    }

    async fn close(&mut self) {
        match self {
            NodeWriter::Channel(write) => drop(write.close().await),
            // A FIN now; the socket itself closes when both halves are dropped.
            NodeWriter::Tcp(write) => drop(write.shutdown().await),
        }
    }
}
