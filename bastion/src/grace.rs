//! The login grace time must close the socket, whatever state the SSH session is in.
//!
//! russh runs each connection in a task of its own that only ends when its I/O fails or
//! the protocol says so; a client that sends its banner and then nothing keeps that task
//! (and its socket) waiting for a key exchange until keepalives give up, minutes later.
//! [`Severable`] wraps the connection's stream so that [`Severer::sever`] makes every
//! read see end-of-file and every write fail at once, which ends russh's task and drops
//! the socket.
//!
//! Until the client has logged in, it also acknowledges what it reads at once
//! ([`AckNow`]). OpenSSH's client leaves Nagle's algorithm on until it has a session, so
//! its key-exchange packet waits until its `KEXINIT` is acknowledged; we have nothing to
//! send between reading that `KEXINIT` and the client's next packet, so the kernel held
//! the acknowledgement back for its delayed-ACK time (40 ms on Linux), and every login
//! at the bastion waited that long (seen with `tcpdump`: the client's `KEX_ECDH_INIT`
//! left 42 ms after its `KEXINIT`, right after our bare ACK). A key exchange slow enough
//! to outlast the timer (OpenSSH's default `sntrup761x25519`) hides it; the X25519 the
//! bastion prefers for such clients did not.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug, Default)]
struct State {
    severed: AtomicBool,
    /// The client has logged in: reads are acknowledged as the kernel sees fit.
    logged_in: AtomicBool,
    /// The tasks waiting to read and to write, woken on sever.
    waiting: Mutex<[Option<Waker>; 2]>,
}

const READ: usize = 0;
const WRITE: usize = 1;

impl State {
    fn park(&self, slot: usize, cx: &Context<'_>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(w) = waiting.get_mut(slot)
            && !w.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
        {
            *w = Some(cx.waker().clone());
        }
    }

    fn is_severed(&self) -> bool {
        self.severed.load(Ordering::Acquire)
    }
}

/// A stream that can be cut from outside (see the module doc).
#[derive(Debug)]
pub(crate) struct Severable<S> {
    inner: S,
    state: Arc<State>,
}

/// Cuts its [`Severable`]; cheap to keep next to the session.
#[derive(Debug, Clone)]
pub(crate) struct Severer(Arc<State>);

impl<S> Severable<S> {
    pub(crate) fn new(inner: S) -> (Self, Severer) {
        let state = Arc::new(State::default());
        (Self { inner, state: Arc::clone(&state) }, Severer(state))
    }
}

impl Severer {
    /// The client logged in: its reads need no early acknowledgement any more.
    pub(crate) fn logged_in(&self) {
        self.0.logged_in.store(true, Ordering::Relaxed);
    }

    pub(crate) fn sever(&self) {
        self.0.severed.store(true, Ordering::Release);
        let mut waiting = self.0.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for waker in waiting.iter_mut().filter_map(Option::take) {
            waker.wake();
        }
    }
}

/// A stream that can send the acknowledgement the kernel holds back for what was read.
pub(crate) trait AckNow {
    fn ack_now(&self) {}
}

impl AckNow for tokio::net::TcpStream {
    fn ack_now(&self) {
        // Not sticky: it sends a pending ACK now and leaves delayed-ACK mode until the
        // kernel enters it again, so it is set again after each read.
        let _ = rustix::net::sockopt::set_tcp_quickack(self, true);
    }
}

impl AckNow for tokio::io::DuplexStream {}

fn severed_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "connection closed by the bastion")
}

impl<S: AsyncRead + AckNow + Unpin> AsyncRead for Severable<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        // Park before checking, so a sever between the check and `Pending` still wakes us.
        self.state.park(READ, cx);
        if self.state.is_severed() {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before && !self.state.logged_in.load(Ordering::Relaxed) {
            self.inner.ack_now();
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Severable<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.state.park(WRITE, cx);
        if self.state.is_severed() {
            return Poll::Ready(Err(severed_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.state.park(WRITE, cx);
        if self.state.is_severed() {
            return Poll::Ready(Err(severed_error()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stream that counts the acknowledgements asked of it.
    struct Counting {
        inner: tokio::io::DuplexStream,
        acks: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AsyncRead for Counting {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AckNow for Counting {
        fn ack_now(&self) {
            self.acks.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn what_a_client_sends_before_it_logs_in_is_acknowledged_at_once() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let acks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (mut stream, severer) = Severable::new(Counting { inner: ours, acks: Arc::clone(&acks) });
        let mut buf = [0u8; 4];
        theirs.write_all(b"KEX1").await.unwrap();
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(acks.load(Ordering::Relaxed), 1, "a read before login is acknowledged");
        severer.logged_in();
        theirs.write_all(b"data").await.unwrap();
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(acks.load(Ordering::Relaxed), 1, "after login the kernel decides");
    }

    #[tokio::test]
    async fn sever_wakes_a_pending_read_with_end_of_file() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let (mut stream, severer) = Severable::new(ours);
        theirs.write_all(b"SSH-2.0-x\r\n").await.unwrap();
        let mut buf = [0u8; 11];
        stream.read_exact(&mut buf).await.unwrap();
        let read = tokio::spawn(async move {
            let mut rest = Vec::new();
            let n = stream.read_to_end(&mut rest).await;
            (n.unwrap(), stream)
        });
        tokio::task::yield_now().await;
        severer.sever();
        let (n, mut stream) = read.await.unwrap();
        assert_eq!(n, 0, "end of file, although the peer never closed");
        assert!(stream.write_all(b"late").await.is_err(), "writes fail after sever");
        drop(theirs);
    }

    #[tokio::test]
    async fn sever_wakes_a_write_blocked_on_a_peer_that_does_not_read() {
        let (ours, _theirs) = tokio::io::duplex(8);
        let (mut stream, severer) = Severable::new(ours);
        let write = tokio::spawn(async move { stream.write_all(&[0u8; 1024]).await });
        tokio::task::yield_now().await;
        severer.sever();
        assert!(write.await.unwrap().is_err());
    }
}
