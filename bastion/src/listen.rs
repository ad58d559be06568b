//! Keeping a listener open: `accept()` errors never end the accept loop, and the
//! process may open as many files as its hard limit allows.
//!
//! Out of file descriptors (`EMFILE`, `ENFILE`), socket buffers (`ENOBUFS`) or memory,
//! `accept()` fails until some connection closes; a client that gave up before we
//! accepted it (`ECONNABORTED`) fails it once. None of these is the listener's fault,
//! so the loop backs off (10 ms doubling to 1 s) and tries again; while the connection
//! waits in the kernel's backlog the client sees a slow start, not a closed port. Every
//! other error is retried the same way: a bastion that stops listening stays down
//! until a human notices, while a retried error costs one log line per streak.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// While accepts keep failing, one log line this often (the first failure logs at once).
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The next connection on `listener`, however many failed accepts that takes.
pub(crate) async fn accept(listener: &TcpListener, streak: &mut FailureStreak, kind: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => {
                streak.ended(kind);
                return accepted;
            }
            Err(e) if is_connection_error(&e) => {
                // That client is gone; the listener is fine.
                tracing::debug!(listener = kind, error = %e, "accept: connection gone before it was accepted");
            }
            Err(e) => {
                let pause = streak.failed(kind, &e);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Errors about one connection rather than the listener (as hyper and tokio's examples
/// classify them).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::Interrupted
    )
}

/// Consecutive failed accepts on one listener: the back-off and the log lines.
#[derive(Debug, Default)]
pub(crate) struct FailureStreak {
    failures: u64,
    backoff: Duration,
    last_report: Option<Instant>,
}

impl FailureStreak {
    /// Records a failure; returns how long to wait before the next accept.
    fn failed(&mut self, kind: &str, error: &std::io::Error) -> Duration {
        self.failures += 1;
        self.backoff = if self.failures == 1 { FIRST_BACKOFF } else { (self.backoff * 2).min(MAX_BACKOFF) };
        let now = Instant::now();
        if self.last_report.is_none_or(|at| now.duration_since(at) >= REPORT_EVERY) {
            self.last_report = Some(now);
            tracing::warn!(
                listener = kind,
                error = %error,
                failures = self.failures,
                "accept failed; still listening, retrying with back-off"
            );
        }
        self.backoff
    }

    fn ended(&mut self, kind: &str) {
        if self.failures > 0 {
            tracing::warn!(listener = kind, failures = self.failures, "accepting connections again");
            *self = Self::default();
        }
    }
}

/// Raises the soft limit on open files to the hard limit (the systemd units set the
/// hard limit; the usual soft default of 1024 is a few hundred idle SSH connections).
/// Returns the limit now in force, `None` for unlimited.
pub fn raise_open_files_limit() -> std::io::Result<Option<u64>> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return Ok(limit.current);
    }
    let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
    setrlimit(Resource::Nofile, raised)?;
    Ok(limit.maximum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_to_a_cap_and_resets() {
        let mut s = FailureStreak::default();
        let emfile = std::io::Error::from_raw_os_error(24);
        let pauses: Vec<Duration> = (0..10).map(|_| s.failed("test", &emfile)).collect();
        assert_eq!(pauses[0], FIRST_BACKOFF);
        assert_eq!(pauses[1], FIRST_BACKOFF * 2);
        assert_eq!(*pauses.last().unwrap(), MAX_BACKOFF);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        s.ended("test");
        assert_eq!(s.failed("test", &emfile), FIRST_BACKOFF);
    }

    #[test]
    fn aborted_connections_are_not_listener_failures() {
        assert!(is_connection_error(&std::io::Error::from(std::io::ErrorKind::ConnectionAborted)));
        assert!(!is_connection_error(&std::io::Error::from_raw_os_error(24)), "EMFILE backs off");
    }

    #[test]
    fn soft_limit_is_raised_to_the_hard_limit() {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let before = getrlimit(Resource::Nofile);
        // Lower the soft limit (always allowed), then raise it back.
        let lowered = before.maximum.map_or(1024, |m| m.min(1024).saturating_sub(1).max(64));
        setrlimit(Resource::Nofile, Rlimit { current: Some(lowered), maximum: before.maximum }).unwrap();
        assert_eq!(raise_open_files_limit().unwrap(), before.maximum);
        assert_eq!(getrlimit(Resource::Nofile).current, before.maximum);
    }
}
