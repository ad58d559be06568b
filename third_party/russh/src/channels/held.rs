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

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;

use super::{ChannelMsg, ChannelRef};
use crate::session::Encrypted;
use crate::{ChannelId, Error};

/// What a held message other than data counts for in [`HeldMessages::size`].
const MESSAGE_COST: usize = 64;
/// Data held for a channel is joined into pieces up to this size.
const JOINED: usize = 256 * 1024;
/// How soon the connection's loop looks again while messages are held. A peer waiting
/// for the window sends nothing that would wake the loop, so this paces a held channel's
/// throughput: backing off while nothing moved (tried: 5 ms doubling to 160 ms) halved a
/// bulk download's, as its drains seldom find room at the very moment they run. A
/// stalled channel costs its connection 200 cheap wake-ups a second (waking on the
/// queue's room instead, `Sender::reserve_owned`, would cost none: not built).
const RETRY: Duration = Duration::from_millis(5);

/// Messages waiting for their channels' queues, per connection.
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
    /// What is held in all: data bytes, and [`MESSAGE_COST`] per other message.
    size: usize,
}

fn data_len(msg: &ChannelMsg) -> Option<usize> {
    match msg {
        ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => Some(data.len()),
        _ => None,
    }
}

fn join(first: &Bytes, second: &Bytes) -> Bytes {
    let mut joined = BytesMut::with_capacity(first.len() + second.len());
    joined.extend_from_slice(first);
    joined.extend_from_slice(second);
    joined.freeze()
}

impl Held {
    fn push(&mut self, msg: ChannelMsg) {
        self.size += data_len(&msg).unwrap_or(MESSAGE_COST);
        // A peer sending small packets to a channel that is not read must not cost a
        // queue entry (and its overhead) per packet.
        if let (Some(ChannelMsg::Data { data: last }), ChannelMsg::Data { data }) = (self.messages.back_mut(), &msg) {
            if last.len() + data.len() <= JOINED {
                *last = join(last, data);
                return;
            }
        }
        self.messages.push_back(msg);
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
                    let held = Held { queue: chan.sender.clone(), messages: VecDeque::new(), size: 0 };
                    self.channels.entry(id).or_insert(held).push(msg);
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
            while let Some(msg) = held.messages.pop_front() {
                let len = data_len(&msg);
                match held.queue.try_send(msg) {
                    Ok(()) => held.size -= len.unwrap_or(MESSAGE_COST),
                    Err(TrySendError::Full(msg)) => {
                        held.messages.push_front(msg);
                        break;
                    }
                    Err(TrySendError::Closed(_)) => {
                        held.messages.clear();
                        break;
                    }
                }
            }
            if held.messages.is_empty() {
                emptied.push(*id);
            }
            !held.messages.is_empty()
        });
        emptied
    }
}
