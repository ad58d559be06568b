//! Writing events into the chain, and making peer text fit for a record.

use super::AuditEvent;
use crate::store::{self, StoreError};
use sqlx::AnyConnection;

/// The one way an audit event is written.
pub async fn record(conn: &mut AnyConnection, at: u64, event: &AuditEvent) -> Result<u64, StoreError> {
    let payload = serde_json::to_string(event).map_err(|_| StoreError::Corrupt("audit event"))?;
    let started = std::time::Instant::now();
    let seq = store::append_audit(conn, at, event.name(), &payload).await;
    WRITES.observe(started.elapsed());
    seq
}

/// How long appending to the chain takes (its head's row is the one every writer
/// waits for), for `/metrics`; one per process, like the chain it measures.
pub static WRITES: std::sync::LazyLock<portcullis_proto::metrics::Histogram> =
    std::sync::LazyLock::new(portcullis_proto::metrics::Histogram::default);

/// Writes several events in order, in one move of the chain's head (the issuance
/// writer's batches).
pub async fn record_many(conn: &mut AnyConnection, events: &[(u64, &AuditEvent)]) -> Result<u64, StoreError> {
    let payloads = events
        .iter()
        .map(|(at, e)| serde_json::to_string(e).map(|p| (*at, e.name(), p)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| StoreError::Corrupt("audit event"))?;
    let records: Vec<(u64, &str, &str)> = payloads.iter().map(|(at, name, p)| (*at, *name, p.as_str())).collect();
    let started = std::time::Instant::now();
    let seq = store::append_audit_many(conn, &records).await;
    WRITES.observe(started.elapsed());
    seq
}

/// Peer-supplied text going into an audit record: printable, at most 64 characters.
pub fn sanitize(s: &str) -> String {
    s.chars().filter(|&c| !c.is_control() && !portcullis_proto::is_invisible_format(c)).take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_strips_controls_and_truncates() {
        assert_eq!(sanitize("a\nb\u{1b}[31m"), "ab[31m");
        // A name that would display as another: the override and zero-width space go.
        assert_eq!(sanitize("admin\u{202e}nimda\u{200b}"), "adminnimda");
        assert_eq!(sanitize(&"x".repeat(500)).len(), 64);
    }
}
