//! A WebSocket client speaking just enough RFC 6455 for the browser console, over TLS
//! pinned like every client of Portcullis: the "browser" of tests that need one that
//! misbehaves (stops reading, sends no ticket, presents another session's cookie),
//! which a real browser cannot be told to do.

use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A WebSocket client speaking just enough RFC 6455 for the console: masked frames out,
/// whole unfragmented frames in.
pub struct Socket {
    tls: TlsStream<TcpStream>,
}

pub const TEXT: u8 = 1;
pub const BINARY: u8 = 2;

impl Socket {
    /// A WebSocket upgrade carrying `session` as the browser's session cookie (a ticket
    /// opens only for the session that asked for it).
    pub async fn open(url: &str, pin: &str, path: &str, session: &str) -> Socket {
        let host = url.strip_prefix("https://").unwrap().trim_end_matches('/').to_owned();
        let tcp = TcpStream::connect(&host).await.unwrap();
        let config = portcullis_proto::pin::pinned_client_config(pin).unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let ip = host.rsplit_once(':').unwrap().0.to_owned();
        let name = rustls::pki_types::ServerName::try_from(ip).unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: https://{host}\r\nUpgrade: websocket\r\n\
             Cookie: __Host-portcullis_session={session}\r\nConnection: Upgrade\r\nSec-WebSocket-Key: cG9ydGN1bGxpcy10ZXN0IQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tls.write_all(request.as_bytes()).await.unwrap();
        // The answer's head, byte by byte so no frame is read with it.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "no upgrade: {head}");
        Socket { tls }
    }

    pub async fn send(&mut self, opcode: u8, payload: &[u8]) {
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend((n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend((n as u64).to_be_bytes());
            }
        }
        let mask = [0x5a, 0x13, 0xc4, 0x7e];
        frame.extend(mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tls.write_all(&frame).await.unwrap();
    }

    pub async fn recv(&mut self) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        self.tls.read_exact(&mut h).await.unwrap();
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            self.tls.read_exact(&mut b).await.unwrap();
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            self.tls.read_exact(&mut b).await.unwrap();
            len = u64::from_be_bytes(b);
        }
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let mut payload = vec![0u8; usize::try_from(len).unwrap()];
        self.tls.read_exact(&mut payload).await.unwrap();
        (h[0] & 0x0f, payload)
    }

    /// Terminal output (binary frames) into `seen` until it holds `marker`, within 20 s.
    pub async fn read_until(&mut self, seen: &mut Vec<u8>, marker: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !String::from_utf8_lossy(seen).contains(marker) {
            let left = deadline.saturating_duration_since(Instant::now());
            let (op, payload) = tokio::time::timeout(left, self.recv())
                .await
                .unwrap_or_else(|_| panic!("no {marker} from the node in time: {:?}", String::from_utf8_lossy(seen)));
            if op == BINARY {
                seen.extend(payload);
            }
        }
    }

    /// Frames until a JSON control frame of type `kind`.
    pub async fn control(&mut self, kind: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (op, payload) = tokio::time::timeout(left, self.recv()).await.expect("no control frame in time");
            if op == TEXT {
                let v: Value = serde_json::from_slice(&payload).unwrap();
                if v["type"] == kind {
                    return v;
                }
                assert_ne!(v["type"], "closed", "closed while waiting for {kind}: {v}");
            }
        }
    }
}
