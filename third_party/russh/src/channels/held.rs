//! Portcullis patch 6: a channel whose reader falls behind does not stop the connection.
//!
//! Upstream hands each incoming channel message to the channel's bounded queue with
//! `send(..).await` inside the connection's loop, and grants the peer window back as soon
//! as data arrives. One channel whose reader stops (a relay writing to a client that does
//! not read) fills its queue, the `await` never returns, and every other channel of the
//! connection stops with it — on a bastion's link to an edge agent, every session
//! through that agent.
//!
//! Here a message that finds its channel's queue full (or anything already waiting for
//! that channel) is held, in order, and the loop goes on. The window is granted back
//! only for data that reached the queue, so a peer that honours the window stops sending
//! on that channel once its window is used up, while the others flow. Held messages go
//! into the queue as it makes room ([`HeldMessages::drain`], from the connection's loop),
//! and the window is granted back once nothing is held for the channel.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;

use super::{ChannelMsg, ChannelRef};
use crate::session::Encrypted;
use crate::{ChannelId, Error};

/// What each held entry costs in [`Held::size`] on top of its data bytes (an entry is
/// a message, or a piece of joined data; about what one takes in memory besides its
/// data): so a peer cannot hold entries without bound by making them tiny (empty data is
/// not held at all). Small enough that an honest peer whose window's worth of data comes
/// in one-byte packets of alternating streams (stdout, stderr), which cannot be joined,
/// stays within the bound (2 × 8 MiB + 1 MiB is ~270,000 such entries).
const MESSAGE_COST: usize = 64;
/// Data held for a channel is joined into pieces up to this size: a packet's most, so a
/// full queue of pieces holds no more than a full queue of packets would.
const JOINED: usize = 32 * 1024;
/// How soon the connection's loop looks again while messages are held. A peer waiting
/// for the window sends nothing that would wake the loop, so this paces a held channel's
/// throughput: backing off while nothing moved (tried: 5 ms doubling to 160 ms) halved a
/// bulk download's, as its drains seldom find room at the very moment they run. A
/// stalled channel costs its connection 200 cheap wake-ups a second (waking on the
/// queue's room instead, `Sender::reserve_owned`, would cost none: not built).
const RETRY: Duration = Duration::from_millis(5);

/// Messages waiting for their channels' queues, per connection. Dropped with its
/// connection, it still hands what it holds to the readers (see its `Drop`).
#[derive(Debug, Default)]
pub(crate) struct HeldMessages {
    channels: HashMap<ChannelId, Held>,
}

#[derive(Debug)]
struct Held {
    /// The channel's queue: kept here, so what is held still arrives after the
    /// connection forgot the channel (its close is held behind its data).
    queue: Sender<ChannelMsg>,
    messages: VecDeque<ChannelMsg>,
    /// Small data being joined, after `messages`: appended to in place (joining by
    /// copying the piece so far would cost the square of its size).
    joining: Option<(Option<u32>, BytesMut)>,
    /// What is held in all: data bytes, and [`MESSAGE_COST`] per entry.
    size: usize,
}

/// What `msg` counts towards [`Held::size`]: [`MESSAGE_COST`] and every byte it carries.
/// Requests carry strings too, up to a packet each (an `env` value, an `exec` command):
/// counted at a flat cost, a peer could hold gigabytes of them on a channel whose
/// reader has stopped, as no window limits requests.
fn cost(msg: &ChannelMsg) -> usize {
    let sig = |s: &crate::Sig| match s {
        crate::Sig::Custom(name) => name.len(),
        _ => 0,
    };
    MESSAGE_COST
        + match msg {
            ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => data.len(),
            ChannelMsg::RequestPty { term, terminal_modes, .. } => {
                term.len() + terminal_modes.len() * std::mem::size_of::<(crate::Pty, u32)>()
            }
            ChannelMsg::Exec { command, .. } => command.len(),
            ChannelMsg::Signal { signal } => sig(signal),
            ChannelMsg::RequestSubsystem { name, .. } => name.len(),
            ChannelMsg::RequestX11 { x11_authentication_protocol, x11_authentication_cookie, .. } => {
                x11_authentication_protocol.len() + x11_authentication_cookie.len()
            }
            ChannelMsg::SetEnv { variable_name, variable_value, .. } => variable_name.len() + variable_value.len(),
            ChannelMsg::ExitSignal { signal_name, error_message, lang_tag, .. } => {
                sig(signal_name) + error_message.len() + lang_tag.len()
            }
            _ => 0,
        }
}

impl Held {
    fn new(queue: Sender<ChannelMsg>) -> Held {
        Held { queue, messages: VecDeque::new(), joining: None, size: 0 }
    }

    fn push(&mut self, msg: ChannelMsg) {
        let (ext, data) = match &msg {
            ChannelMsg::Data { data } => (None, data),
            ChannelMsg::ExtendedData { data, ext } => (Some(*ext), data),
            _ => {
                self.end_joining();
                self.size += cost(&msg);
                self.messages.push_back(msg);
                return;
            }
        };
        // Empty data is nothing to a reader: not held.
        if data.is_empty() {
            return;
        }
        // A peer sending small packets to a channel that is not read must not cost an
        // entry (and its overhead) per packet.
        if let Some((joining_ext, piece)) = &mut self.joining
            && *joining_ext == ext
            && piece.len() + data.len() <= JOINED
        {
            self.size += data.len();
            piece.extend_from_slice(data);
            return;
        }
        self.end_joining();
        self.size += cost(&msg);
        if data.len() >= JOINED / 2 {
            self.messages.push_back(msg);
        } else {
            // Grown as data comes (amortized doubling): a piece costs memory in
            // proportion to what it holds, which the bound counts.
            self.joining = Some((ext, BytesMut::from(&data[..])));
        }
    }

    /// The piece being joined becomes a message, after the others.
    fn end_joining(&mut self) {
        if let Some((ext, piece)) = self.joining.take() {
            let data = piece.freeze();
            self.messages.push_back(match ext {
                None => ChannelMsg::Data { data },
                Some(ext) => ChannelMsg::ExtendedData { data, ext },
            });
        }
    }

    fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.joining.is_none()
    }

    /// Moves messages into the queue as far as it has room, in order (the piece being
    /// joined last, once nothing is before it); drops them all once the reader is gone.
    fn drain(&mut self) {
        loop {
            if self.messages.is_empty() {
                self.end_joining();
            }
            let Some(msg) = self.messages.pop_front() else { return };
            let msg_cost = cost(&msg);
            match self.queue.try_send(msg) {
                Ok(()) => self.size -= msg_cost,
                Err(TrySendError::Full(msg)) => {
                    self.messages.push_front(msg);
                    return;
                }
                Err(TrySendError::Closed(_)) => {
                    self.messages.clear();
                    self.joining = None;
                    self.size = 0;
                    return;
                }
            }
        }
    }
}

/// A connection that ends (its peer went away, or sent its last message and left) still
/// delivers what it held: the readers get it, in order, as they make room — as they get
/// what was already in their queues. The tasks end when a reader has taken everything or
/// is gone, and hold no more than the connection held.
impl Drop for HeldMessages {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        for (_, mut held) in self.channels.drain() {
            held.end_joining();
            runtime.spawn(async move {
                for msg in held.messages {
                    if held.queue.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
}

impl HeldMessages {
    pub(crate) fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// When the connection's loop should look at held messages again (`None`: none held).
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        (!self.is_empty()).then_some(RETRY)
    }

    /// Hands `msg` to the channel's reader without waiting: into its queue when nothing is
    /// held for it and there is room (`true`; also when the reader is gone and it was
    /// dropped), else held behind what is (`false`). A peer that keeps sending to a
    /// channel whose reader has not taken what is held — more than twice the `window` it
    /// may use, plus 1 MiB — ignores the window: an error, which ends the connection.
    pub(crate) fn deliver(
        &mut self,
        id: ChannelId,
        chan: &ChannelRef,
        msg: ChannelMsg,
        window: u32,
    ) -> Result<bool, Error> {
        let held = match self.channels.get_mut(&id) {
            Some(held) => held,
            None => match chan.try_send(msg) {
                Ok(()) | Err(TrySendError::Closed(_)) => return Ok(true),
                Err(TrySendError::Full(msg)) => {
                    self.channels.entry(id).or_insert_with(|| Held::new(chan.sender.clone())).push(msg);
                    return Ok(false);
                }
            },
        };
        held.push(msg);
        if held.size > 2 * window as usize + (1 << 20) {
            return Err(Error::Inconsistent);
        }
        Ok(false)
    }

    /// [`HeldMessages::drain`], then grants the window (up to `target`) back to each
    /// channel that has nothing held any more.
    pub(crate) fn drain_granting(&mut self, enc: Option<&mut Encrypted>, target: u32) -> Result<(), Error> {
        if self.is_empty() {
            return Ok(());
        }
        let emptied = self.drain();
        if let Some(enc) = enc {
            for id in emptied {
                enc.adjust_window_size(id, 0, target, true)?;
            }
        }
        Ok(())
    }

    /// Moves held messages into their queues as far as they have room, in order. Returns
    /// the channels that have nothing held any more: their window may be granted back
    /// now — not before, as a grant tops the window up to its full size and the peer
    /// would fill it again while part of what it sent is still held. Messages for a
    /// channel whose reader is gone are dropped.
    pub(crate) fn drain(&mut self) -> Vec<ChannelId> {
        let mut emptied = Vec::new();
        self.channels.retain(|id, held| {
            held.drain();
            if held.is_empty() {
                emptied.push(*id);
            }
            !held.is_empty()
        });
        emptied
    }
}
