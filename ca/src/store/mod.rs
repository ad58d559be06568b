//! Persistence through sqlx's `Any` driver: one schema and one set of queries for the
//! embedded SQLite default and for PostgreSQL (several CA replicas).
//!
//! Guarantees: every multi-row change happens in one transaction (nothing half-written),
//! and on SQLite write transactions are serialized in-process, because SQLite allows one
//! writer and a deferred transaction that upgrades to a write lock can fail with `BUSY`
//! instead of waiting.
//!
//! Acknowledged means committed: [`WriteTx::commit`] returns `Ok` only when the database
//! said COMMIT succeeded, and a connection that comes back to the pool still inside a
//! transaction (its COMMIT or ROLLBACK failed, e.g. on a full disk) is closed, never
//! reused. sqlx counts transaction depth itself and lowers it only when COMMIT/ROLLBACK
//! succeed; reusing such a connection would turn the next `BEGIN` into a `SAVEPOINT` and
//! its "commit" into a `RELEASE` that commits nothing while the connection keeps the
//! write lock. Closing it drops SQLite's lock and PostgreSQL's session, so the store
//! recovers by itself once the fault (disk space, network) is gone.

mod audit;
mod certs;
mod enroll;
mod inventory;
mod keys;
mod leases;
mod misc;
mod oidc;
mod recordings;
mod secrets;
mod services;
mod tickets;
mod users;
mod virt;

pub use audit::GENESIS_HASH;
pub use audit::{AuditRow, ChainCheck};
pub use certs::CertRow;
pub use certs::RevokeTarget;
pub use enroll::{
    EnrollAttemptRow, EnrollTokenRow, HostCertRow, consume_enroll_token, consume_service_token, delete_host_certs,
    delete_node, host_cert, insert_enroll_attempt, insert_enroll_token, return_token_use, revoke_enroll_token,
    save_host_cert, take_enroll_attempt,
};
pub use inventory::{
    DiscoveryRunRow, InventoryHistoryRow, claim_discovery_run, discovery_run, finish_discovery_run, inventory,
    inventory_history, record_inventory_change,
};
pub use keys::CaKeyRow;
pub use leases::{
    Beat, LeaseCheck, LeaseRow, ProofUse, claim_connection_proof, close_lease, heartbeat_leases, insert_lease,
    purge_connection_proofs, release_slot, set_kill_reason, sweep_lease, take_slot,
};
pub use oidc::{NewPending, PendingAdmission, PendingCaps, PendingLogin as PendingOidcLogin, PollTurn};
pub use recordings::{
    Appended, ChunkAppend, ChunkBytes, ChunkFiles, RecordingRow, StoredChunk, append_recording_chunk,
    delete_recordings_before, end_recording, insert_recording,
};
pub use secrets::{SecretRow, delete_secret, insert_secret, rotate_secret};
pub use services::{ServiceRow, record_bastion_heartbeat, touch_service, upsert_service};
pub use tickets::{
    LapsedTicket, Redeemed, TicketRow, TicketState, claim_lapsed_ticket, consume_ticket, insert_ticket, purge_tickets,
};
pub use users::{AccountClaim, NewPassword, SessionRow, UserRow, accounts_of, claim_account, release_account};
pub use virt::{
    ClusterRow, GuestRow, PveNodeRow, PveRunRow, claim_pve_run, finish_pve_run, load_cluster, pve_run_warnings,
    replace_cluster,
};

pub use audit::{append as append_audit, append_many as append_audit_many};
pub use certs::{
    bump_krl_version, insert_cert, insert_certs, insert_revoked_key, revoke_certs, revoked_among, signers_in_force,
};
pub use keys::{ca_key_state, insert_ca_key, move_ca_keys, set_ca_key_state};
pub use misc::{
    PublishedPolicy, insert_node, node_for_update, nodes_for_identity, nodes_on, save_policy_state, touch_node,
    upsert_node,
};
pub use users::{
    insert_session, insert_user, live_sessions_among, replace_own_password, revoke_session, revoke_user_sessions,
    set_user_disabled, set_user_groups, set_user_password,
};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Transaction};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, MutexGuard};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL (use sqlite:// or postgres://)")]
    UnsupportedUrl,
    #[error("corrupt row: {0}")]
    Corrupt(&'static str),
    /// A certificate's signing CA key was retired or revoked (by another replica) after
    /// this replica last read the keyring; see [`insert_cert`].
    #[error("the signing CA key was withdrawn meanwhile")]
    SignerWithdrawn,
    #[error("cannot lock the database file for migrations: {0}")]
    MigrationLock(std::io::Error),
    /// A recording chunk's file beside a SQLite database (see [`ChunkFiles`]).
    #[error("recording chunk file {what}: {source}")]
    ChunkFile { what: &'static str, source: std::io::Error },
}

/// Why the store cannot take a request right now, as opposed to a bug or a bad row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// SQLITE_FULL, or PostgreSQL's `disk_full` (53100).
    DiskFull,
    /// Locked or busy, connection lost, pool exhausted, I/O error, server shutting down.
    Database,
}

impl StoreError {
    /// `Some` when the failure is the database's state (retrying later can succeed), not
    /// the request's or the code's.
    pub fn unavailable(&self) -> Option<Unavailable> {
        let e = match self {
            StoreError::Db(e) => e,
            StoreError::ChunkFile { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                return Some(Unavailable::DiskFull);
            }
            _ => return None,
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => Some(Unavailable::Database),
            sqlx::Error::Database(db) => {
                let code = db.code()?;
                match backend_of_code(&code) {
                    Backend::Sqlite => match code.parse::<i32>().ok()? & 0xff {
                        13 => Some(Unavailable::DiskFull),
                        // BUSY, LOCKED, READONLY, IOERR, CANTOPEN: the file, not the request.
                        5 | 6 | 8 | 10 | 14 => Some(Unavailable::Database),
                        _ => None,
                    },
                    Backend::Postgres => match code.as_ref() {
                        "53100" => Some(Unavailable::DiskFull),
                        // Connection, resources, operator intervention; a lock not had
                        // in time, a transaction ended for sitting idle (see
                        // `POSTGRES_DEFAULTS`), a deadlock or serialization failure.
                        c if c.starts_with("08")
                            || c.starts_with("53")
                            || c.starts_with("57P")
                            || c.starts_with("40")
                            || c == "55P03"
                            || c == "25P03" =>
                        {
                            Some(Unavailable::Database)
                        }
                        _ => None,
                    },
                }
            }
            _ => None,
        }
    }
}

/// PostgreSQL: how long a statement waits for a lock, and how long a session may stay
/// idle inside a transaction. A replica that stops in the middle of a write (paused,
/// partitioned: the server notices a vanished client only when TCP keepalive gives up,
/// hours by default) holds the audit chain's head, and without these every other
/// replica's writes wait behind it that long; with them they fail fast (503, try again)
/// and the server ends the stalled transaction within a minute.
const POSTGRES_DEFAULTS: &str = "options[lock_timeout]=10s&options[idle_in_transaction_session_timeout]=60s";

/// `url` with [`POSTGRES_DEFAULTS`] put first: PostgreSQL applies startup settings in
/// order, so the URL's own (`options[lock_timeout]=2s`) still win.
fn with_postgres_defaults(url: &str) -> String {
    match url.split_once('?') {
        Some((base, query)) => format!("{base}?{POSTGRES_DEFAULTS}&{query}"),
        None => format!("{url}?{POSTGRES_DEFAULTS}"),
    }
}

/// SQLite reports numeric result codes of at most four digits, PostgreSQL
/// five-character SQLSTATEs.
fn backend_of_code(code: &str) -> Backend {
    if code.bytes().all(|b| b.is_ascii_digit()) && code.len() != 5 { Backend::Sqlite } else { Backend::Postgres }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Present on SQLite only; see the module doc.
    write_lock: Option<Arc<Mutex<()>>>,
    /// Present for a SQLite file: where recording chunks are kept (see [`ChunkFiles`]).
    chunk_files: Option<Arc<ChunkFiles>>,
}

/// A write transaction. Dropping it without `commit` rolls back.
pub struct WriteTx<'a> {
    tx: Transaction<'static, sqlx::Any>,
    backend: Backend,
    _guard: Option<MutexGuard<'a, ()>>,
}

/// A read-only view of one instant: every query inside sees the same committed state, so a
/// view assembled from several tables never mixes rows from before and after a concurrent
/// write. Dropping it ends it (nothing to commit).
pub struct ReadTx {
    tx: Transaction<'static, sqlx::Any>,
}

impl ReadTx {
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

impl WriteTx<'_> {
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The file of a `sqlite:` URL; `None` for another database or an in-memory one.
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let path = url.strip_prefix("sqlite:")?.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.starts_with(':')).then(|| std::path::PathBuf::from(path))
}

/// Beside a SQLite file: the lock its migrations take.
pub fn migration_lock_file(database: &std::path::Path) -> std::path::PathBuf {
    beside_database(database, ".migrate-lock")
}

/// A path named after the SQLite file `database`, with `suffix` added to its name.
fn beside_database(database: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// An exclusive lock on [`migration_lock_file`], held while migrations run (`None` for
/// an in-memory database). Released when the file is dropped.
async fn sqlite_migration_lock(url: &str) -> Result<Option<std::fs::File>> {
    let Some(database) = sqlite_file(url) else { return Ok(None) };
    let lock_path = migration_lock_file(&database);
    let locked = tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
        file.lock()?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(|_| StoreError::Corrupt("migration lock task"))?;
    Ok(Some(locked.map_err(StoreError::MigrationLock)?))
}

/// How a SQLite file is opened (sqlite's `mode=`), unless the URL says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteMode {
    /// Created when missing (a CA's own database).
    Create,
    /// Must exist; written to.
    ReadWrite,
    /// Must exist; never written to.
    ReadOnly,
}

impl Store {
    /// Connects, creating the SQLite file when missing, and applies migrations.
    pub async fn open(url: &str) -> Result<Store> {
        let store = Store::connect(url, SqliteMode::Create).await?;
        store.migrate(url).await?;
        Ok(store)
    }

    /// Connects to a database as it is: nothing created, no migration applied — for
    /// copying a database (`portcullisd backup`) without changing it under the CA that
    /// runs on it, whatever release that is.
    pub async fn open_as_is(url: &str, mode: SqliteMode) -> Result<Store> {
        Store::connect(url, mode).await
    }

    /// The newest migration applied to this database (`None`: none yet).
    pub async fn schema_version(&self) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT MAX(version) AS version FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await?;
        Ok(sqlx::Row::try_get(&row, "version")?)
    }

    /// The newest migration this release knows.
    pub fn known_schema_version() -> i64 {
        MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
    }

    async fn connect(url: &str, mode: SqliteMode) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                let mode = match mode {
                    SqliteMode::Create => "rwc",
                    SqliteMode::ReadWrite => "rw",
                    SqliteMode::ReadOnly => "ro",
                };
                format!("{url}{sep}mode={mode}")
            }
            Backend::Postgres => with_postgres_defaults(url),
            Backend::Sqlite => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            // SQLite: one connection is the issuance writer's; the others serve the
            // per-request reads (session, revoked key). With 4 the reads queued behind each
            // other (p99 12 ms at 16 concurrent issuances); 8 measured 9–11 ms.
            .max_connections(match backend {
                Backend::Sqlite => 8,
                Backend::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(10))
            // A local SQLite connection cannot go stale; pinging it before every
            // checkout only costs a round trip to sqlx's worker thread.
            .test_before_acquire(backend == Backend::Postgres)
            // See the module doc: a connection left inside a transaction is never reused.
            // SQLite's worker thread runs the rollback a dropped transaction queued
            // asynchronously: the ping (a local round trip) lets it finish first, so only
            // connections whose ROLLBACK (or COMMIT) failed are closed. PostgreSQL's
            // driver lowers the depth when it queues the rollback: no round trip needed.
            .after_release(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.ping().await?;
                    }
                    Ok(!conn.is_in_transaction())
                })
            })
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite && mode == SqliteMode::ReadOnly {
                        // A file only read (copied) stays in its journal mode.
                        conn.execute("PRAGMA busy_timeout=10000;").await?;
                    } else if backend == Backend::Sqlite {
                        // WAL: readers never block the writer; NORMAL sync is durable
                        // across application crashes and is SQLite's advice for WAL.
                        conn.execute(
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
                             PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Store {
            pool,
            backend,
            write_lock: (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(()))),
            chunk_files: sqlite_file(&url).map(|database| Arc::new(ChunkFiles::beside(&database))),
        })
    }

    async fn migrate(&self, url: &str) -> Result<()> {
        match self.backend {
            Backend::Sqlite => {
                // sqlx's migrator locks PostgreSQL (an advisory lock) but not SQLite: two
                // processes opening one new file would both run migration 1.
                let _exclusive = sqlite_migration_lock(url).await?;
                MIGRATOR.run(&self.pool).await?;
            }
            Backend::Postgres => {
                // Waiting for another replica's migrations (the advisory lock) may take
                // longer than any request should wait for a lock: a connection of its
                // own without the limit, closed afterwards.
                let mut conn = self.pool.acquire().await?.detach();
                sqlx::query("SET lock_timeout = 0").execute(&mut conn).await?;
                MIGRATOR.run(&mut conn).await?;
                conn.close().await?;
            }
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn begin(&self) -> Result<WriteTx<'_>> {
        let guard = match &self.write_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        // SQLite: IMMEDIATE takes the write lock at BEGIN. A deferred transaction that
        // reads first and writes later fails at once (SQLITE_BUSY_SNAPSHOT, no busy wait)
        // when another connection wrote in between — a statement outside `begin` (an
        // OIDC sign-in's pending row, a recording chunk) or another process on the file.
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(WriteTx { tx, backend: self.backend, _guard: guard })
    }

    /// A snapshot for multi-query reads. SQLite (WAL): a deferred transaction reads one
    /// snapshot from its first query on and takes no write lock. PostgreSQL: the default
    /// READ COMMITTED would take a fresh snapshot per statement, so ask for REPEATABLE READ.
    pub async fn read(&self) -> Result<ReadTx> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        }
        Ok(ReadTx { tx })
    }

    /// SQLite: a consistent copy of the whole database into a new file (`backup`).
    pub async fn vacuum_into(&self, path: &str) -> Result<()> {
        sqlx::query("VACUUM INTO $1").bind(path).execute(&self.pool).await?;
        Ok(())
    }

    /// One round trip to the database (readiness).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Splits `rows` rows into multi-row statements of power-of-two sizes up to 64 (`(start,
/// len)` pairs), so a statement has at most seven shapes for the database to prepare and
/// the connection to cache, whatever the batch size.
pub(crate) fn statement_chunks(rows: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut start = 0;
    std::iter::from_fn(move || {
        let left = rows - start;
        (left > 0).then(|| {
            let len = 1 << left.min(64).ilog2();
            start += len;
            (start - len, len)
        })
    })
}

/// `HEAD VALUES ($1, …, $columns), …` for `rows` rows. Only fixed text and placeholder
/// numbers go in, never a value, so this is safe to assemble at run time (sqlx's
/// `QueryBuilder` would write `?` placeholders, which PostgreSQL does not take through the
/// `Any` driver).
pub(crate) fn values_statement(head: &'static str, columns: usize, rows: usize) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!("{head} {}", values_list(columns, rows)))
}

/// `VALUES ($1, …, $columns), …` for `rows` rows.
pub(crate) fn values_list(columns: usize, rows: usize) -> String {
    let tuples: Vec<String> = (0..rows).map(|row| format!("({})", placeholders(row * columns, columns))).collect();
    format!("VALUES {}", tuples.join(", "))
}

/// Which of `values` the query `SELECT column FROM … WHERE column IN (values) tail` finds,
/// one statement per chunk of [`statement_chunks`]. `select` is the text up to `IN` and
/// `tail` what follows the list; both are fixed text (same safety argument as
/// [`values_statement`]), and `column` is the selected column.
pub(crate) async fn found_among(
    conn: &mut AnyConnection,
    select: &'static str,
    tail: &'static str,
    column: &'static str,
    values: &[&str],
) -> Result<std::collections::HashSet<String>> {
    let mut found = std::collections::HashSet::new();
    for (start, len) in statement_chunks(values.len()) {
        let statement = sqlx::AssertSqlSafe(format!("{select} ({}){tail}", placeholders(0, len)));
        let mut query = sqlx::query(statement);
        for value in values.iter().skip(start).take(len) {
            query = query.bind(*value);
        }
        for row in query.fetch_all(&mut *conn).await? {
            found.insert(sqlx::Row::try_get(&row, column)?);
        }
    }
    Ok(found)
}

/// `$first+1, …, $first+n`.
fn placeholders(first: usize, n: usize) -> String {
    (first + 1..=first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// Serials are u64; the column is a signed BIGINT holding the same 64 bits.
pub fn serial_to_db(serial: u64) -> i64 {
    i64::from_ne_bytes(serial.to_ne_bytes())
}

pub fn serial_from_db(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// Timestamps are unix seconds; they fit an i64 for the next few hundred billion years.
pub(crate) fn ts(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn ts_from(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".to_owned())
}

pub(crate) fn parse_list(s: &str) -> Result<Vec<String>> {
    serde_json::from_str(s).map_err(|_| StoreError::Corrupt("json list"))
}
