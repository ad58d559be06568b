//! The audit log's storage: an append-only hash chain.
//!
//! Record `n` stores `hash_n = SHA-256(hash_{n-1} | n | at | event | payload)`, and the
//! head row stores the newest `(seq, hash)`. Editing a record breaks its hash, deleting
//! one breaks the next record's `prev_hash` (or, for the newest, disagrees with the head).

use super::{Result, Store, StoreError, statement_chunks, ts, ts_from, values_statement};
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};

pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone)]
pub struct AuditRow {
    pub seq: u64,
    pub at: u64,
    pub event: String,
    pub payload: String,
}

/// Outcome of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainCheck {
    pub records: u64,
    pub first_bad_seq: Option<u64>,
    pub problem: Option<String>,
}

pub fn chain_hash(prev_hash: &str, seq: u64, at: u64, event: &str, payload: &str) -> String {
    let mut h = Sha256::new();
    for part in [prev_hash.as_bytes(), seq.to_string().as_bytes(), at.to_string().as_bytes(), event.as_bytes()] {
        h.update(part);
        h.update(b"\n");
    }
    h.update(payload.as_bytes());
    hex::encode(h.finalize())
}

/// Appends one record inside the caller's transaction; returns its sequence number.
pub async fn append(conn: &mut AnyConnection, at: u64, event: &str, payload: &str) -> Result<u64> {
    append_many(conn, &[(at, event, payload)]).await
}

/// Appends records in order inside the caller's transaction, moving the head once;
/// returns the last sequence number.
pub async fn append_many(conn: &mut AnyConnection, records: &[(u64, &str, &str)]) -> Result<u64> {
    let n = i64::try_from(records.len()).map_err(|_| StoreError::Corrupt("audit batch"))?;
    // The UPDATE takes the head's row lock (PostgreSQL) / the write lock (SQLite) first,
    // so concurrent appenders queue here instead of forking the chain.
    let head = sqlx::query("UPDATE audit_head SET seq = seq + $1 WHERE id = 1 RETURNING seq, hash")
        .bind(n)
        .fetch_one(&mut *conn)
        .await?;
    let last = ts_from(head.try_get("seq")?);
    let mut prev: String = head.try_get("hash")?;
    let first = last.saturating_sub(records.len() as u64) + 1;
    // Chain first, then as few statements as possible while the head's lock is held.
    let mut rows = Vec::with_capacity(records.len());
    for (seq, (at, event, payload)) in (first..).zip(records) {
        let hash = chain_hash(&prev, seq, *at, event, payload);
        rows.push((seq, *at, *event, *payload, std::mem::replace(&mut prev, hash.clone()), hash));
    }
    for (start, len) in statement_chunks(rows.len()) {
        let statement = values_statement("INSERT INTO audit_log (seq, at, event, payload, prev_hash, hash)", 6, len);
        let mut query = sqlx::query(statement);
        for (seq, at, event, payload, prev_hash, hash) in rows.iter().skip(start).take(len) {
            query = query
                .bind(ts(*seq))
                .bind(ts(*at))
                .bind(*event)
                .bind(*payload)
                .bind(prev_hash.clone())
                .bind(hash.clone());
        }
        query.execute(&mut *conn).await?;
    }
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1").bind(prev).execute(&mut *conn).await?;
    Ok(last)
}

impl Store {
    pub async fn audit_records(&self, after: u64, limit: u32) -> Result<Vec<AuditRow>> {
        let rows = sqlx::query("SELECT seq, at, event, payload FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(ts(after))
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    seq: ts_from(r.try_get("seq")?),
                    at: ts_from(r.try_get("at")?),
                    event: r.try_get("event")?,
                    payload: r.try_get("payload")?,
                })
            })
            .collect()
    }

    /// One page of records at or after `since`, of `event` (empty: any): oldest first
    /// after `from`, or newest first before `from`.
    pub async fn audit_page(
        &self,
        from: u64,
        newest_first: bool,
        since: u64,
        until: u64,
        event: &str,
        limit: u32,
    ) -> Result<Vec<AuditRow>> {
        let query = if newest_first {
            "SELECT seq, at, event, payload FROM audit_log WHERE seq < $1 AND at >= $2 AND at < $3 \
             AND ($4 = '' OR event = $4) ORDER BY seq DESC LIMIT $5"
        } else {
            "SELECT seq, at, event, payload FROM audit_log WHERE seq > $1 AND at >= $2 AND at < $3 \
             AND ($4 = '' OR event = $4) ORDER BY seq LIMIT $5"
        };
        let rows = sqlx::query(query)
            .bind(ts(from))
            .bind(ts(since))
            .bind(ts(until))
            .bind(event)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    seq: ts_from(r.try_get("seq")?),
                    at: ts_from(r.try_get("at")?),
                    event: r.try_get("event")?,
                    payload: r.try_get("payload")?,
                })
            })
            .collect()
    }

    /// Walks the whole chain in pages and reports the first break.
    pub async fn verify_audit_chain(&self) -> Result<ChainCheck> {
        const PAGE: i64 = 2000;
        let mut expected_prev = GENESIS_HASH.to_owned();
        let mut expected_seq: u64 = 1;
        let mut records = 0u64;
        let bad = |seq: u64, records: u64, why: &str| ChainCheck {
            records,
            first_bad_seq: Some(seq),
            problem: Some(why.to_owned()),
        };
        // The head first: it moves in the same transaction as each append, so every
        // record up to it is committed, and appends racing this check (a live CA keeps
        // writing) land beyond it instead of looking like records gone missing.
        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_one(self.pool()).await?;
        let head_seq = ts_from(head.try_get("seq")?);
        let head_hash: String = head.try_get("hash")?;
        loop {
            let rows = sqlx::query(
                "SELECT seq, at, event, payload, prev_hash, hash FROM audit_log \
                 WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3",
            )
            .bind(ts(expected_seq))
            .bind(ts(head_seq))
            .bind(PAGE)
            .fetch_all(self.pool())
            .await?;
            let page_len = rows.len();
            for r in rows {
                let seq = ts_from(r.try_get("seq")?);
                if seq != expected_seq {
                    return Ok(bad(expected_seq, records, "record missing (sequence gap)"));
                }
                let prev: String = r.try_get("prev_hash")?;
                if prev != expected_prev {
                    return Ok(bad(seq, records, "previous-hash link broken"));
                }
                let at = ts_from(r.try_get("at")?);
                let event: String = r.try_get("event")?;
                let payload: String = r.try_get("payload")?;
                let stored: String = r.try_get("hash")?;
                if chain_hash(&prev, seq, at, &event, &payload) != stored {
                    return Ok(bad(seq, records, "record content does not match its hash"));
                }
                expected_prev = stored;
                expected_seq += 1;
                records += 1;
            }
            if i64::try_from(page_len).unwrap_or(PAGE) < PAGE {
                break;
            }
        }
        if head_seq != records || head_hash != expected_prev {
            return Ok(bad(records + 1, records, "newest records missing (head disagrees)"));
        }
        Ok(ChainCheck { records, first_bad_seq: None, problem: None })
    }
}
