//! Session recordings: a row per recorded session (written in the transaction that
//! admits it) and its sealed chunks. The CA seals and opens; the store only keeps bytes.
//!
//! Where the bytes go depends on the database. PostgreSQL (several replicas, no shared
//! directory) keeps them in the chunk's row. A SQLite file keeps each chunk in a file of
//! its own beside the database ([`ChunkFiles`]), the row marked `in_file`: SQLite writes
//! a blob once to its write-ahead log and again at the checkpoint, through page-sized
//! copies, and that was most of what a recorded bulk transfer cost the all-in-one. A
//! backup puts the files' bytes back into the rows of its copy, so a backup stays one
//! file ([`Store::inline_chunk_files`]).

use super::{Result, Store, StoreError, ts, ts_from};
use sqlx::{AnyConnection, Row};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// Ended by its session's close, its last chunk never having come: its end is
    /// missing.
    pub incomplete: bool,
}

const COLUMNS: &str = "session_id, bastion, username, device, login, mode, rule, started_at, ended_at, salt, \
                       input_recorded, max_bytes, bytes, chunks, truncated, cols, rows, incomplete";

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
        incomplete: row.try_get::<i64, _>("incomplete")? != 0,
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

/// Recording chunks beside a SQLite database: `<database>.recordings/<session id>/<seq>`,
/// directories `0700`, files `0600`, each file one sealed chunk exactly as the row would
/// hold it. A chunk file is written before the row that names it is committed, and
/// removed only after its recording's row is deleted, so a committed row always has its
/// file; a file without a row (a crash between the two, a removal cut short) is removed
/// by the next retention pass.
#[derive(Debug)]
pub struct ChunkFiles {
    dir: PathBuf,
}

/// Session ids are checked by the CA before anything is stored; checked again here
/// because they become directory names.
fn session_dir_name(session_id: &str) -> std::io::Result<&str> {
    if crate::validate::valid_session_id(session_id) {
        Ok(session_id)
    } else {
        Err(std::io::Error::other("not a session id"))
    }
}

impl ChunkFiles {
    /// The directory beside the SQLite file `database` (created on the first chunk).
    pub fn beside(database: &Path) -> ChunkFiles {
        ChunkFiles { dir: super::beside_database(database, ".recordings") }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn session_dir(&self, session_id: &str) -> std::io::Result<PathBuf> {
        Ok(self.dir.join(session_dir_name(session_id)?))
    }

    /// Writes one chunk: after a crash it is there whole or not at all (a temporary file
    /// renamed into place; a retry replaces it with an equal one). Not synced to disk,
    /// like the database's own commits (WAL with `synchronous=NORMAL`): it outlives the
    /// process, not a power cut.
    fn write(&self, session_id: &str, seq: u64, sealed: &[u8]) -> std::io::Result<()> {
        let dir = self.session_dir(session_id)?;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let mut file = tempfile::NamedTempFile::new_in(&dir)?;
        file.write_all(sealed)?;
        file.persist(dir.join(seq.to_string())).map_err(|e| e.error)?;
        Ok(())
    }

    fn read(&self, session_id: &str, seq: u64) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.session_dir(session_id)?.join(seq.to_string()))
    }

    /// Removes the chunk files of every recording not in `keep`, listing the directory
    /// before `keep` is read (see [`Store::remove_unlisted_chunk_files`]).
    fn remove_except(&self, listed: Vec<String>, keep: &std::collections::HashSet<String>) -> std::io::Result<()> {
        for name in listed.into_iter().filter(|name| !keep.contains(name)) {
            match std::fs::remove_dir_all(self.session_dir(&name)?) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The recordings that have a directory (entries that are not session ids are left alone).
    fn listed(&self) -> std::io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in entries {
            if let Ok(name) = entry?.file_name().into_string()
                && session_dir_name(&name).is_ok()
            {
                names.push(name);
            }
        }
        Ok(names)
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| StoreError::Corrupt("recording file task"))?
        .map_err(|source| StoreError::ChunkFile { what, source })
}

/// Where a sealed chunk's bytes are kept: in its row, or in its file ([`ChunkFiles`]).
pub enum ChunkBytes {
    Row(Vec<u8>),
    File,
}

/// One chunk as the bastion handed it over, sealed.
pub struct ChunkAppend<'a> {
    pub session_id: &'a str,
    pub seq: u64,
    pub sealed: &'a ChunkBytes,
    /// What the chunk counts against the recording's limit.
    pub bytes: u64,
    /// The most the recording may count, this chunk included.
    pub limit: u64,
    pub size: Option<(u32, u32)>,
    pub truncated: bool,
    /// `Some(now)` for the last chunk.
    pub ended_at: Option<u64>,
}

/// Where one chunk of a recording is kept ([`Store::recording_chunk_index`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredChunk {
    pub seq: u64,
    pub in_file: bool,
}

/// What [`append_recording_chunk`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Stored,
    /// The chunk was stored before (a retry): nothing changed.
    Retry,
    /// Not taken, with the refusal's reason: the recording ended, is over its limit,
    /// stopped at its limit before, or expects another chunk.
    Refused(&'static str),
}

/// Adds a chunk and its bytes to the recording if it is the next one, the recording has
/// not ended (nor stopped at its limit) and stays within `limit`: one conditional update,
/// so whatever changed the recording since the caller looked (a close, a concurrent
/// request) is seen here.
pub async fn append_recording_chunk(conn: &mut AnyConnection, chunk: &ChunkAppend<'_>) -> Result<Appended> {
    let (cols, rows) = chunk.size.map(|(c, r)| (i64::from(c), i64::from(r))).unzip();
    let taken = sqlx::query(
        "UPDATE recordings SET bytes = bytes + $2, chunks = chunks + 1, \
         truncated = CASE WHEN $3 = 1 THEN 1 ELSE truncated END, \
         cols = COALESCE(cols, $4), rows = COALESCE(rows, $5), ended_at = COALESCE($6, ended_at) \
         WHERE session_id = $1 AND chunks = $7 AND ended_at IS NULL AND bytes + $2 <= $8 \
         AND (truncated = 0 OR $2 = 0)",
    )
    .bind(chunk.session_id)
    .bind(count(chunk.bytes))
    .bind(i64::from(chunk.truncated))
    .bind(cols)
    .bind(rows)
    .bind(chunk.ended_at.map(ts))
    .bind(count(chunk.seq))
    .bind(count(chunk.limit))
    .execute(&mut *conn)
    .await?;
    if taken.rows_affected() == 0 {
        let row = sqlx::query("SELECT chunks, ended_at FROM recordings WHERE session_id = $1")
            .bind(chunk.session_id)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(row) = row else { return Ok(Appended::Refused("not_recorded")) };
        let chunks = ts_from(row.try_get("chunks")?);
        return Ok(if chunks > chunk.seq {
            Appended::Retry
        } else if row.try_get::<Option<i64>, _>("ended_at")?.is_some() {
            Appended::Refused("recording_ended")
        } else if chunks < chunk.seq {
            Appended::Refused("out_of_order")
        } else {
            Appended::Refused("over_limit")
        });
    }
    let (sealed, in_file) = match chunk.sealed {
        ChunkBytes::Row(bytes) => (bytes.as_slice(), 0),
        ChunkBytes::File => (&[][..], 1),
    };
    sqlx::query("INSERT INTO recording_chunks (session_id, seq, sealed, in_file) VALUES ($1, $2, $3, $4)")
        .bind(chunk.session_id)
        .bind(count(chunk.seq))
        .bind(sealed)
        .bind(in_file)
        .execute(&mut *conn)
        .await?;
    Ok(Appended::Stored)
}

/// The session closed: its recording (if any) ends now unless its last chunk came
/// already — a session that never reached its node, or whose bastion died, leaves a
/// finished recording, not one that looks live forever — and, when `started` (the
/// session ran), is marked incomplete: the bastion sends the last chunk before the
/// close, so it never came. Chunks after this are refused.
pub async fn end_recording(conn: &mut AnyConnection, session_id: &str, now: u64, started: bool) -> Result<()> {
    sqlx::query("UPDATE recordings SET ended_at = $2, incomplete = $3 WHERE session_id = $1 AND ended_at IS NULL")
        .bind(session_id)
        .bind(ts(now))
        .bind(i64::from(started))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Which recordings retention deletes: those that ended before the cutoff — a session
/// longer than the retention period keeps its recording while it lives — and any that
/// never ended but started before it and whose session no lease holds any more.
macro_rules! expired {
    () => {
        "ended_at < $1 OR (ended_at IS NULL AND started_at < $1 \
         AND NOT EXISTS (SELECT 1 FROM session_leases l WHERE l.session_id = recordings.session_id))"
    };
}

/// Deletes the recordings retention let go (see `expired!`) and their chunks' rows; how
/// many. Their chunk files go after the commit ([`Store::remove_unlisted_chunk_files`]).
pub async fn delete_recordings_before(conn: &mut AnyConnection, cutoff: u64) -> Result<u64> {
    let chunks = concat!(
        "DELETE FROM recording_chunks WHERE session_id IN (SELECT session_id FROM recordings WHERE ",
        expired!(),
        ")"
    );
    sqlx::query(chunks).bind(ts(cutoff)).execute(&mut *conn).await?;
    let done =
        sqlx::query(concat!("DELETE FROM recordings WHERE ", expired!())).bind(ts(cutoff)).execute(&mut *conn).await?;
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

    /// Keeps a sealed chunk's bytes where this database keeps them: written to its file
    /// now (before the row naming it is committed), or handed back for the row.
    pub async fn place_recording_chunk(&self, session_id: &str, seq: u64, sealed: Vec<u8>) -> Result<ChunkBytes> {
        let Some(files) = self.chunk_files.clone() else { return Ok(ChunkBytes::Row(sealed)) };
        let session_id = session_id.to_owned();
        blocking("write", move || files.write(&session_id, seq, &sealed)).await?;
        Ok(ChunkBytes::File)
    }

    /// A recording's chunks, in order: where each is kept, not its bytes.
    pub async fn recording_chunk_index(&self, session_id: &str) -> Result<Vec<StoredChunk>> {
        let rows = sqlx::query("SELECT seq, in_file FROM recording_chunks WHERE session_id = $1 ORDER BY seq")
            .bind(session_id)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredChunk { seq: ts_from(row.try_get("seq")?), in_file: row.try_get::<i64, _>("in_file")? != 0 })
            })
            .collect()
    }

    /// One sealed chunk, from its row or its file.
    pub async fn recording_chunk(&self, session_id: &str, chunk: StoredChunk) -> Result<Vec<u8>> {
        if !chunk.in_file {
            let row = sqlx::query("SELECT sealed FROM recording_chunks WHERE session_id = $1 AND seq = $2")
                .bind(session_id)
                .bind(count(chunk.seq))
                .fetch_one(self.pool())
                .await?;
            return Ok(row.try_get("sealed")?);
        }
        let files =
            self.chunk_files.clone().ok_or(StoreError::Corrupt("a recording chunk in a file, without files"))?;
        let session_id = session_id.to_owned();
        blocking("read", move || files.read(&session_id, chunk.seq)).await
    }

    /// A recording's sealed chunks, in order (all at once: for small recordings and tests;
    /// playback reads them one at a time).
    pub async fn recording_chunks(&self, session_id: &str) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut chunks = Vec::new();
        for chunk in self.recording_chunk_index(session_id).await? {
            chunks.push((chunk.seq, self.recording_chunk(session_id, chunk).await?));
        }
        Ok(chunks)
    }

    /// Removes the chunk files of recordings that have no row any more: those the
    /// retention pass just deleted, and any a crash left behind. The directory is listed
    /// before the rows are read, so a recording admitted meanwhile is never taken for
    /// an orphan (its row exists before its first file).
    pub async fn remove_unlisted_chunk_files(&self) -> Result<()> {
        let Some(files) = self.chunk_files.clone() else { return Ok(()) };
        let lister = Arc::clone(&files);
        let listed = blocking("list", move || lister.listed()).await?;
        if listed.is_empty() {
            return Ok(());
        }
        let rows = sqlx::query("SELECT session_id FROM recordings").fetch_all(self.pool()).await?;
        let keep = rows.iter().map(|r| r.try_get("session_id")).collect::<Result<_, _>>()?;
        blocking("remove", move || files.remove_except(listed, &keep)).await
    }

    /// Where this store keeps chunk files (a SQLite file's store), for a backup.
    pub fn chunk_files(&self) -> Option<Arc<ChunkFiles>> {
        self.chunk_files.clone()
    }

    /// In a backup's copy of the database: puts the bytes of every chunk kept in a file
    /// (read from the live database's `files`) into its row, so the backup is one file
    /// that holds every recording.
    pub async fn inline_chunk_files(&self, files: Arc<ChunkFiles>) -> Result<()> {
        // A database from before chunk files (a backup keeps its schema) has none.
        let has_files =
            sqlx::query("SELECT COUNT(*) AS n FROM pragma_table_info('recording_chunks') WHERE name = 'in_file'")
                .fetch_one(self.pool())
                .await?
                .try_get::<i64, _>("n")?
                > 0;
        if !has_files {
            return Ok(());
        }
        let rows = sqlx::query("SELECT session_id, seq FROM recording_chunks WHERE in_file = 1")
            .fetch_all(self.pool())
            .await?;
        for row in &rows {
            let session_id: String = row.try_get("session_id")?;
            let seq: i64 = row.try_get("seq")?;
            let reader = Arc::clone(&files);
            let id = session_id.clone();
            let sealed = blocking("read", move || reader.read(&id, ts_from(seq))).await?;
            sqlx::query("UPDATE recording_chunks SET sealed = $3, in_file = 0 WHERE session_id = $1 AND seq = $2")
                .bind(&session_id)
                .bind(seq)
                .bind(sealed)
                .execute(self.pool())
                .await?;
        }
        Ok(())
    }
}
