//! Serves the API over TLS until told to stop.
//!
//! What a client can hold is bounded, so that neither a slow client nor a crowd of them
//! can exhaust the process's descriptors (a CA that cannot accept a connection signs
//! nothing, and in the all-in-one the bastion shares those descriptors):
//! - every connection, from `accept()` until its socket closes — a WebSocket console
//!   included, which outlives hyper's part of the connection — counts against a cap per
//!   source (an IPv4 address, an IPv6 /64, as the sign-in limits count) and a total cap
//!   ([`ConnectionLimits`]); beyond either, it is closed at once, before the TLS
//!   handshake, and the refusals are summarized in the log;
//! - the TLS handshake must end within [`HANDSHAKE_TIMEOUT`];
//! - HTTP/1.1: a request's head must arrive within [`HEADER_READ_TIMEOUT`] of the
//!   server's waiting for it — which also ends a connection left idle between requests,
//!   or a client that sends nothing after the handshake (slowloris);
//! - HTTP/2 (when ALPN chose it): a bounded number of streams, and pings that end a
//!   connection whose peer stopped answering.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/1.1: how long the server waits for a request's head (see the module doc).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2: concurrent requests on one connection.
const MAX_STREAMS: u32 = 128;
/// HTTP/2: a ping after this much silence, and the connection closed when its answer
/// takes longer than [`H2_PING_TIMEOUT`].
const H2_PING_EVERY: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Refusals are logged at most this often (a flood must not become a flood of lines).
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// How many connections one listener keeps open: per source (0: no cap — for a listener
/// behind a reverse proxy, where every client shares the proxy's address) and in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub per_source: usize,
    pub total: usize,
}

impl Default for ConnectionLimits {
    /// A browser opens at most six connections to a host, a CLI one, a bastion at most
    /// its CA client's concurrency (64): 256 leaves room for a site's users behind one
    /// NAT address. The total stays well inside the units' `LimitNOFILE=65536`, with
    /// room for the bastion's sessions in the all-in-one.
    fn default() -> Self {
        Self { per_source: 256, total: 8192 }
    }
}

pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let open = Arc::new(OpenConnections::new(limits));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            // Shutdown first: once it is asked for, a connection waiting to be accepted
            // is refused, not served (a random pick served one now and then).
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Refused: dropped before any TLS work, no task spawned.
        let Some(place) = open.admit(peer.ip()) else { continue };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            serve_connection(Counted { io: tls, _place: place }, peer, app, h2).await;
        });
    }
}

async fn serve_connection<IO>(io: IO, peer: SocketAddr, app: Router, h2: bool)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let io = TokioIo::new(io);
    // The protocol is the one ALPN agreed on (no ALPN: HTTP/1.1), not sniffed from the
    // first bytes: sniffing would wait for them without a deadline.
    let served = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS)
            .keep_alive_interval(H2_PING_EVERY)
            .keep_alive_timeout(H2_PING_TIMEOUT)
            .serve_connection(io, service)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(io, service)
            .with_upgrades()
            .await
    };
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// The connections one listener holds, by source.
struct OpenConnections {
    limits: ConnectionLimits,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
    /// Refusals since the last log line, and when that was.
    unreported: u64,
    reported_at: Option<Instant>,
}

/// One connection's place; given back when the connection's socket is dropped.
struct Place {
    owner: Arc<OpenConnections>,
    source: IpAddr,
}

impl OpenConnections {
    fn new(limits: ConnectionLimits) -> Self {
        Self { limits, counts: Mutex::new(Counts::default()) }
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Place> {
        let source = crate::ratelimit::source_prefix(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let from_source = counts.by_source.get(&source).copied().unwrap_or(0);
        let over_source = self.limits.per_source != 0 && from_source >= self.limits.per_source;
        if over_source || counts.total >= self.limits.total {
            counts.unreported += 1;
            let now = Instant::now();
            if counts.reported_at.is_none_or(|at| now.duration_since(at) >= REPORT_EVERY) {
                tracing::warn!(
                    refused = counts.unreported,
                    last_source = %source,
                    open = counts.total,
                    per_source = self.limits.per_source,
                    total = self.limits.total,
                    "HTTPS connections refused: too many open (from one source, or in all); behind a reverse \
                     proxy every client shares its address — raise or lift the per-source cap"
                );
                counts.unreported = 0;
                counts.reported_at = Some(now);
            }
            return None;
        }
        counts.total += 1;
        *counts.by_source.entry(source).or_insert(0) += 1;
        Some(Place { owner: Arc::clone(self), source })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.by_source.remove(&self.source);
            }
        }
    }
}

/// A connection's stream holding its [`Place`]: an upgraded connection (a WebSocket)
/// owns the stream after hyper lets go of it, so the place is held until the socket
/// itself is dropped.
struct Counted<IO> {
    io: IO,
    _place: Place,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_source_and_in_all_and_given_back() {
        let open = Arc::new(OpenConnections::new(ConnectionLimits { per_source: 2, total: 3 }));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let b_again: IpAddr = "2001:db8::2".parse().unwrap(); // the same /64
        let first = open.admit(a).unwrap();
        let _second = open.admit(a).unwrap();
        assert!(open.admit(a).is_none(), "a third from one source");
        let _third = open.admit(b).unwrap();
        assert!(open.admit("198.51.100.7".parse().unwrap()).is_none(), "over the total");
        drop(first);
        assert!(open.admit(b_again).is_some(), "a place given back is taken again");
        let unlimited = Arc::new(OpenConnections::new(ConnectionLimits { per_source: 0, total: 3 }));
        let held: Vec<_> = (0..3).map(|_| unlimited.admit(a).unwrap()).collect();
        assert_eq!(held.len(), 3);
        assert!(unlimited.admit(a).is_none(), "no per-source cap, the total still holds");
    }
}
