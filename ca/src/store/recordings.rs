//! Session recordings: a row per recorded session (written in the transaction that
//! admits it) and its sealed chunks. The CA seals and opens; the store only keeps bytes.

use super::{Result, Store, ts, ts_from};
use sqlx::{AnyConnection, Row};

#[derive(Debug, Clone)]
pub struct RecordingRow {
    pub session_id: String,
    /// The bastion that holds the session: the only one that may add chunks.
    pub bastion: String,
    pub username: String,
    pub device: String,
    pub login: Option<String>,
    pub mode: String,
    pub rule: String,
    pub started_at: u64,
    pub ended_at: Option<u64>,
    /// The salt of the recording's sealing key (base64url).
    pub salt: String,
    pub input_recorded: bool,
    pub max_bytes: u64,
    pub bytes: u64,
    pub chunks: u64,
    pub truncated: bool,
    pub size: Option<(u32, u32)>,
}

const COLUMNS: &str = "session_id, bastion, username, device, login, mode, rule, started_at, ended_at, salt, \
                       input_recorded, max_bytes, bytes, chunks, truncated, cols, rows";

fn count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn row_from(row: &sqlx::any::AnyRow) -> Result<RecordingRow> {
    let dim = |name: &str| -> Result<Option<u32>> {
        Ok(row.try_get::<Option<i64>, _>(name)?.and_then(|v| u32::try_from(v).ok()))
    };
    Ok(RecordingRow {
        session_id: row.try_get("session_id")?,
        bastion: row.try_get("bastion")?,
        username: row.try_get("username")?,
        device: row.try_get("device")?,
        login: row.try_get("login")?,
        mode: row.try_get("mode")?,
        rule: row.try_get("rule")?,
        started_at: ts_from(row.try_get("started_at")?),
        ended_at: row.try_get::<Option<i64>, _>("ended_at")?.map(ts_from),
        salt: row.try_get("salt")?,
        input_recorded: row.try_get::<i64, _>("input_recorded")? != 0,
        max_bytes: ts_from(row.try_get("max_bytes")?),
        bytes: ts_from(row.try_get("bytes")?),
        chunks: ts_from(row.try_get("chunks")?),
        truncated: row.try_get::<i64, _>("truncated")? != 0,
        size: dim("cols")?.zip(dim("rows")?),
    })
}

/// Records that `row`'s session is recorded (no chunk yet).
pub async fn insert_recording(conn: &mut AnyConnection, row: &RecordingRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO recordings (session_id, bastion, username, device, login, mode, rule, started_at, ended_at, \
         salt, input_recorded, max_bytes, bytes, chunks, truncated, cols, rows) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $10, $11, 0, 0, 0, NULL, NULL)",
    )
    .bind(&row.session_id)
    .bind(&row.bastion)
    .bind(&row.username)
    .bind(&row.device)
    .bind(&row.login)
    .bind(&row.mode)
    .bind(&row.rule)
    .bind(ts(row.started_at))
    .bind(&row.salt)
    .bind(i64::from(row.input_recorded))
    .bind(count(row.max_bytes))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One chunk as the bastion handed it over, sealed.
pub struct ChunkAppend<'a> {
    pub session_id: &'a str,
    pub seq: u64,
    pub sealed: &'a [u8],
    pub bytes: u64,
    pub size: Option<(u32, u32)>,
    pub truncated: bool,
    /// `Some(now)` for the last chunk.
    pub ended_at: Option<u64>,
}

/// Adds a chunk and its bytes to the recording; `false` when the chunk was stored before
/// (a retry), which changes nothing.
pub async fn append_recording_chunk(conn: &mut AnyConnection, chunk: &ChunkAppend<'_>) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO recording_chunks (session_id, seq, sealed) VALUES ($1, $2, $3) \
         ON CONFLICT (session_id, seq) DO NOTHING",
    )
    .bind(chunk.session_id)
    .bind(count(chunk.seq))
    .bind(chunk.sealed)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    let (cols, rows) = chunk.size.map(|(c, r)| (i64::from(c), i64::from(r))).unzip();
    sqlx::query(
        "UPDATE recordings SET bytes = bytes + $2, chunks = chunks + 1, \
         truncated = CASE WHEN $3 = 1 THEN 1 ELSE truncated END, \
         cols = COALESCE(cols, $4), rows = COALESCE(rows, $5), ended_at = COALESCE($6, ended_at) \
         WHERE session_id = $1",
    )
    .bind(chunk.session_id)
    .bind(count(chunk.bytes))
    .bind(i64::from(chunk.truncated))
    .bind(cols)
    .bind(rows)
    .bind(chunk.ended_at.map(ts))
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// The session closed: its recording (if any) ends now unless its last chunk came
/// already — a session that never reached its node, or whose bastion died, leaves a
/// finished recording, not one that looks live forever. Chunks after this are refused.
pub async fn end_recording(conn: &mut AnyConnection, session_id: &str, now: u64) -> Result<()> {
    sqlx::query("UPDATE recordings SET ended_at = $2 WHERE session_id = $1 AND ended_at IS NULL")
        .bind(session_id)
        .bind(ts(now))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Deletes the recordings started before `cutoff` and their chunks; how many.
pub async fn delete_recordings_before(conn: &mut AnyConnection, cutoff: u64) -> Result<u64> {
    sqlx::query(
        "DELETE FROM recording_chunks WHERE session_id IN (SELECT session_id FROM recordings WHERE started_at < $1)",
    )
    .bind(ts(cutoff))
    .execute(&mut *conn)
    .await?;
    let done = sqlx::query("DELETE FROM recordings WHERE started_at < $1").bind(ts(cutoff)).execute(&mut *conn).await?;
    Ok(done.rows_affected())
}

impl Store {
    /// The deployment's salt for the recordings' master key: `fresh` if none was kept
    /// yet (the first replica to ask keeps its own; the others read it).
    pub async fn recording_key_salt(&self, fresh: &str) -> Result<String> {
        sqlx::query("INSERT INTO recording_key_salt (id, salt) VALUES (1, $1) ON CONFLICT (id) DO NOTHING")
            .bind(fresh)
            .execute(self.pool())
            .await?;
        let row = sqlx::query("SELECT salt FROM recording_key_salt WHERE id = 1").fetch_one(self.pool()).await?;
        Ok(row.try_get("salt")?)
    }

    pub async fn recording(&self, session_id: &str) -> Result<Option<RecordingRow>> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM recordings WHERE session_id = $1"));
        let row = sqlx::query(sql).bind(session_id).fetch_optional(self.pool()).await?;
        row.as_ref().map(row_from).transpose()
    }

    /// Recordings, newest first, optionally of one user and/or device.
    pub async fn recordings(&self, user: Option<&str>, device: Option<&str>, limit: u32) -> Result<Vec<RecordingRow>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM recordings WHERE ($1 IS NULL OR username = $1) AND ($2 IS NULL OR device = $2) \
             ORDER BY started_at DESC, session_id LIMIT $3"
        ));
        let rows = sqlx::query(sql).bind(user).bind(device).bind(i64::from(limit)).fetch_all(self.pool()).await?;
        rows.iter().map(row_from).collect()
    }

    /// A recording's sealed chunks, in order.
    pub async fn recording_chunks(&self, session_id: &str) -> Result<Vec<(u64, Vec<u8>)>> {
        let rows = sqlx::query("SELECT seq, sealed FROM recording_chunks WHERE session_id = $1 ORDER BY seq")
            .bind(session_id)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| Ok((ts_from(r.try_get("seq")?), r.try_get("sealed")?))).collect()
    }
}
