//! systemd's readiness protocol (`Type=notify`): once the listeners are bound and the
//! keys loaded, one `READY=1` datagram to `$NOTIFY_SOCKET`; `STOPPING=1` when a stop
//! begins. Outside systemd (no `NOTIFY_SOCKET`) these do nothing. A few lines of std
//! rather than a crate: the protocol is one datagram.

use std::os::unix::net::UnixDatagram;

fn send(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let result = UnixDatagram::unbound().and_then(|socket| {
        let bytes = target.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket (systemd's usual choice).
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), &target),
        }
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// The service is ready: its listeners accept and it can serve.
pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={status}\n"));
}

/// A stop has begun (the drain that follows may take a few seconds).
pub fn stopping() {
    send("STOPPING=1\n");
}
