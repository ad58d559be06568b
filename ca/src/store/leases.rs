//! Session leases and the per-scope counters behind the concurrency caps.
//!
//! A cap is exact because a slot is taken by one conditional `UPDATE … WHERE n < cap`
//! per scope, inside the transaction that inserts the lease: on PostgreSQL the row lock
//! makes a concurrent taker wait and re-check the condition after the first commits; on
//! SQLite writers are serialized anyway. Counting rows instead would let two
//! transactions both see "4 of 5" before either inserts. Scopes are always taken and
//! released in the same (sorted) order, so two transactions never wait on each other
//! in a cycle.

use super::{
    Result, Store, StoreError, parse_list, serial_from_db, serial_to_db, statement_chunks, ts, ts_from, values_list,
};
use portcullis_proto::NodeRecord;
use portcullis_sshcert::Confirmed;
use sqlx::{AnyConnection, Row};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct LeaseRow {
    pub session_id: String,
    pub bastion: String,
    pub username: String,
    /// The node's name (also when the client asked for one of its addresses).
    pub device: String,
    pub agent: String,
    pub login: Option<String>,
    pub mode: String,
    pub port: u16,
    pub rule: String,
    pub role: String,
    pub cert_serial: u64,
    pub client_ip: String,
    pub opened_at: u64,
    pub heartbeat_at: u64,
    pub absolute_deadline: u64,
    pub kill_reason: Option<String>,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    /// What the user's key confirmed over the connection that opened the session
    /// (terminated mode's proof; see migration 0021).
    pub confirmed: Option<Confirmed>,
}

impl LeaseRow {
    /// The counters this lease holds a slot in, in the one order every transaction
    /// takes and releases them.
    pub fn scopes(&self) -> [String; 3] {
        // "agent:" < "device:" < "user:"
        [format!("agent:{}", self.agent), format!("device:{}", self.device), format!("user:{}", self.username)]
    }
}

macro_rules! lease_columns {
    () => {
        "session_id, bastion, username, device, agent, login, mode, port, rule, role, cert_serial, client_ip, \
         opened_at, heartbeat_at, absolute_deadline, kill_reason, bytes_from_client, bytes_to_client, confirmed"
    };
}

fn bytes(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A lease's columns as stored (signed integers), read from a result row or, in
/// [`Store::lease_checks`], from a JSON array in column order; one conversion to
/// [`LeaseRow`] for both.
#[derive(serde::Deserialize)]
struct StoredLease {
    session_id: String,
    bastion: String,
    username: String,
    device: String,
    agent: String,
    login: Option<String>,
    mode: String,
    port: i64,
    rule: String,
    role: String,
    cert_serial: i64,
    client_ip: String,
    opened_at: i64,
    heartbeat_at: i64,
    absolute_deadline: i64,
    kill_reason: Option<String>,
    bytes_from_client: i64,
    bytes_to_client: i64,
    confirmed: Option<i64>,
}

impl StoredLease {
    fn into_row(self) -> Result<LeaseRow> {
        Ok(LeaseRow {
            session_id: self.session_id,
            bastion: self.bastion,
            username: self.username,
            device: self.device,
            agent: self.agent,
            login: self.login,
            mode: self.mode,
            port: u16::try_from(self.port).map_err(|_| StoreError::Corrupt("lease port"))?,
            rule: self.rule,
            role: self.role,
            cert_serial: serial_from_db(self.cert_serial),
            client_ip: self.client_ip,
            opened_at: ts_from(self.opened_at),
            heartbeat_at: ts_from(self.heartbeat_at),
            absolute_deadline: ts_from(self.absolute_deadline),
            kill_reason: self.kill_reason,
            bytes_from_client: ts_from(self.bytes_from_client),
            bytes_to_client: ts_from(self.bytes_to_client),
            confirmed: match self.confirmed {
                None => None,
                Some(bits) => Some(Confirmed::from_bits(
                    u8::try_from(bits).map_err(|_| StoreError::Corrupt("lease confirmation"))?,
                )),
            },
        })
    }
}

fn lease_from(row: &sqlx::any::AnyRow) -> Result<LeaseRow> {
    StoredLease {
        session_id: row.try_get("session_id")?,
        bastion: row.try_get("bastion")?,
        username: row.try_get("username")?,
        device: row.try_get("device")?,
        agent: row.try_get("agent")?,
        login: row.try_get("login")?,
        mode: row.try_get("mode")?,
        port: row.try_get("port")?,
        rule: row.try_get("rule")?,
        role: row.try_get("role")?,
        cert_serial: row.try_get("cert_serial")?,
        client_ip: row.try_get("client_ip")?,
        opened_at: row.try_get("opened_at")?,
        heartbeat_at: row.try_get("heartbeat_at")?,
        absolute_deadline: row.try_get("absolute_deadline")?,
        kill_reason: row.try_get("kill_reason")?,
        bytes_from_client: row.try_get("bytes_from_client")?,
        bytes_to_client: row.try_get("bytes_to_client")?,
        confirmed: row.try_get("confirmed")?,
    }
    .into_row()
}

/// A lease with what the heartbeat needs to decide whether it may go on: its
/// certificate's state, its user's state and the device's current record.
#[derive(Debug, Clone)]
pub struct LeaseCheck {
    pub lease: LeaseRow,
    /// The certificate row is gone or revoked.
    pub cert_revoked: bool,
    pub cert_groups: Vec<String>,
    pub cert_principals: Vec<String>,
    pub key_revoked: bool,
    pub user_disabled: bool,
    /// A local user's groups *now* (`None`: no local user of that name).
    pub user_groups: Option<Vec<String>>,
    /// Shared by every lease on the same node (parsed once per heartbeat).
    pub node: Option<Arc<NodeRecord>>,
    /// A console session opened with a ticket: the groups the ticket was issued for (its
    /// identity; the lease names no user certificate).
    pub ticket_groups: Option<Vec<String>>,
    /// That ticket's API session is revoked, expired or gone.
    pub api_session_ended: bool,
    /// The identity provider stated no groups for the credential's sign-in: the
    /// certificate's, or for a ticketed console the ticket's API session's.
    pub groups_unknown: bool,
}

/// [`Store::lease_checks`]' statement, with the backend's JSON aggregate and array
/// functions (the only difference between SQLite and PostgreSQL here).
macro_rules! lease_checks_sql {
    ($group:literal, $array:literal) => {
        concat!(
            "SELECT COALESCE(CAST((SELECT ",
            $group,
            "(",
            $array,
            "(",
            $array,
            "( \
                 l.session_id, l.bastion, l.username, l.device, l.agent, l.login, l.mode, l.port, l.rule, \
                 l.role, l.cert_serial, l.client_ip, l.opened_at, l.heartbeat_at, l.absolute_deadline, \
                 l.kill_reason, l.bytes_from_client, l.bytes_to_client, l.confirmed), \
                 c.serial, c.revoked_at, c.groups_json, c.principals_json, c.groups_unknown, k.fingerprint, \
                 u.disabled, u.groups_json, t.groups_json, s.token_hash, s.revoked_at, s.expires_at, \
                 s.groups_unknown)) \
               FROM session_leases l \
               LEFT JOIN certificates c ON c.serial = l.cert_serial \
               LEFT JOIN revoked_keys k ON k.fingerprint = c.key_fingerprint \
               LEFT JOIN users u ON u.username = l.username \
               LEFT JOIN console_tickets t ON t.session_id = l.session_id AND l.mode = 'console' \
               LEFT JOIN sessions s ON s.token_hash = t.api_session_hash \
               WHERE l.bastion = $1) AS TEXT), '[]') AS leases, \
             COALESCE(CAST((SELECT ",
            $group,
            "(",
            $array,
            "(n.name, n.record_json)) FROM nodes n \
               WHERE n.name IN (SELECT device FROM session_leases WHERE bastion = $1)) AS TEXT), '[]') AS nodes"
        )
    };
}

impl Store {
    pub async fn leases(&self) -> Result<Vec<LeaseRow>> {
        let rows =
            sqlx::query(concat!("SELECT ", lease_columns!(), " FROM session_leases ORDER BY opened_at, session_id"))
                .fetch_all(self.pool())
                .await?;
        rows.iter().map(lease_from).collect()
    }

    pub async fn bastion_leases(&self, bastion: &str) -> Result<Vec<LeaseRow>> {
        let rows = sqlx::query(concat!("SELECT ", lease_columns!(), " FROM session_leases WHERE bastion = $1"))
            .bind(bastion)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(lease_from).collect()
    }

    /// Session ids of leases not heartbeated since `cutoff`.
    pub async fn stale_leases(&self, cutoff: u64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT session_id FROM session_leases WHERE heartbeat_at < $1 ORDER BY session_id")
            .bind(ts(cutoff))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| Ok(r.try_get("session_id")?)).collect()
    }

    /// Every lease of `bastion` with its certificate, user and device: one statement per
    /// heartbeat (one snapshot), however many sessions.
    ///
    /// The database folds the rows into two JSON arrays (the leases, and the nodes they
    /// are on) and returns them as one row. A bastion lists thousands of sessions twice a
    /// second, and sqlx's SQLite driver hands every result row from its worker thread to
    /// the caller through a channel: as rows, the heartbeat's time went mostly on those
    /// hand-overs (thread wake-ups and per-value copies), not on SQLite. Each node's
    /// record is parsed once, however many of the leases are on it.
    pub async fn lease_checks(&self, bastion: &str, now: u64) -> Result<Vec<LeaseCheck>> {
        let sql = match self.backend {
            super::Backend::Sqlite => lease_checks_sql!("json_group_array", "json_array"),
            super::Backend::Postgres => lease_checks_sql!("json_agg", "json_build_array"),
        };
        let row = sqlx::query(sql).bind(bastion).fetch_one(self.pool()).await?;
        let corrupt = |_| StoreError::Corrupt("lease check");
        let leases: Vec<CheckedLease> = serde_json::from_str(&row.try_get::<String, _>("leases")?).map_err(corrupt)?;
        let nodes: Vec<(String, String)> =
            serde_json::from_str(&row.try_get::<String, _>("nodes")?).map_err(corrupt)?;
        let nodes = nodes
            .into_iter()
            .map(|(name, json)| {
                let record = serde_json::from_str(&json).map_err(|_| StoreError::Corrupt("node record"))?;
                Ok((name, Arc::new(record)))
            })
            .collect::<Result<HashMap<String, Arc<NodeRecord>>>>()?;
        leases.into_iter().map(|l| l.check(&nodes, now)).collect()
    }
}

/// One lease as [`Store::lease_checks`]' statement lists it: its columns (an array of
/// their own), then what the joins found, in the statement's order (serde reads a struct
/// from a JSON array too).
#[derive(serde::Deserialize)]
struct CheckedLease {
    lease: StoredLease,
    c_serial: Option<i64>,
    c_revoked_at: Option<i64>,
    c_groups: Option<String>,
    c_principals: Option<String>,
    c_groups_unknown: Option<i64>,
    k_fingerprint: Option<String>,
    u_disabled: Option<i64>,
    u_groups: Option<String>,
    t_groups: Option<String>,
    s_hash: Option<String>,
    s_revoked_at: Option<i64>,
    s_expires_at: Option<i64>,
    s_groups_unknown: Option<i64>,
}

impl CheckedLease {
    fn check(self, nodes: &HashMap<String, Arc<NodeRecord>>, now: u64) -> Result<LeaseCheck> {
        let list = |json: Option<String>| json.as_deref().map(parse_list).transpose();
        // (The statement joins a ticket to console leases only.)
        let ticketed = self.t_groups.is_some();
        let groups_unknown =
            if ticketed { self.s_groups_unknown } else { self.c_groups_unknown }.is_some_and(|u| u != 0);
        Ok(LeaseCheck {
            cert_revoked: self.c_serial.is_none() || self.c_revoked_at.is_some(),
            cert_groups: list(self.c_groups)?.unwrap_or_default(),
            cert_principals: list(self.c_principals)?.unwrap_or_default(),
            key_revoked: self.k_fingerprint.is_some(),
            user_disabled: self.u_disabled.is_some_and(|d| d != 0),
            user_groups: list(self.u_groups)?,
            node: nodes.get(&self.lease.device).cloned(),
            api_session_ended: self.s_hash.is_none()
                || self.s_revoked_at.is_some()
                || self.s_expires_at.is_none_or(|e| e <= ts(now)),
            ticket_groups: list(self.t_groups)?,
            groups_unknown,
            lease: self.lease.into_row()?,
        })
    }
}

/// Takes one slot in `scope`; `false` (and nothing changed by this statement) when the
/// scope is at `cap`. `None` = unlimited, still counted.
pub async fn take_slot(conn: &mut AnyConnection, scope: &str, cap: Option<u32>) -> Result<bool> {
    sqlx::query("INSERT INTO session_counters (scope, n) VALUES ($1, 0) ON CONFLICT (scope) DO NOTHING")
        .bind(scope)
        .execute(&mut *conn)
        .await?;
    let done = match cap {
        Some(cap) => {
            sqlx::query("UPDATE session_counters SET n = n + 1 WHERE scope = $1 AND n < $2")
                .bind(scope)
                .bind(i64::from(cap))
                .execute(&mut *conn)
                .await?
        }
        None => {
            sqlx::query("UPDATE session_counters SET n = n + 1 WHERE scope = $1")
                .bind(scope)
                .execute(&mut *conn)
                .await?
        }
    };
    Ok(done.rows_affected() == 1)
}

pub async fn release_slot(conn: &mut AnyConnection, scope: &str) -> Result<()> {
    sqlx::query("UPDATE session_counters SET n = n - 1 WHERE scope = $1 AND n > 0")
        .bind(scope)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// `false` when a lease with this session id exists already.
/// Inserts a lease; `connection` is the proven connection that opened it (terminated
/// mode), which keeps that connection's proof usable while the lease lives.
pub async fn insert_lease(conn: &mut AnyConnection, l: &LeaseRow, connection: Option<&str>) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO session_leases (session_id, bastion, username, device, agent, login, mode, port, rule, role, \
         cert_serial, client_ip, opened_at, heartbeat_at, absolute_deadline, kill_reason, bytes_from_client, \
         bytes_to_client, connection, confirmed) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, NULL, 0, 0, $16, $17) \
         ON CONFLICT (session_id) DO NOTHING",
    )
    .bind(&l.session_id)
    .bind(&l.bastion)
    .bind(&l.username)
    .bind(&l.device)
    .bind(&l.agent)
    .bind(&l.login)
    .bind(&l.mode)
    .bind(i64::from(l.port))
    .bind(&l.rule)
    .bind(&l.role)
    .bind(serial_to_db(l.cert_serial))
    .bind(&l.client_ip)
    .bind(ts(l.opened_at))
    .bind(ts(l.heartbeat_at))
    .bind(ts(l.absolute_deadline))
    .bind(connection)
    .bind(l.confirmed.map(|c| i64::from(c.bits())))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A use of a connection proof (see migration 0015).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofUse {
    /// Its first use.
    Fresh,
    /// Another session on the same connection, which still has a live one; the new
    /// session ends no later than `until` (the earliest deadline of those still live).
    SameConnection { until: u64 },
    /// Seen before, and not the same live connection: a replay.
    Replayed,
}

/// What the connection proof `session_hash` may do for this open: recorded at its first
/// use; accepted again only for the same bastion, certificate, device and login while a
/// lease opened with it lives. In the lease's transaction, so two opens of one
/// connection serialize on the row.
pub async fn claim_connection_proof(
    conn: &mut AnyConnection,
    session_hash: &str,
    bastion: &str,
    cert_serial: u64,
    device: &str,
    login: &str,
    now: u64,
) -> Result<ProofUse> {
    let inserted = sqlx::query(
        "INSERT INTO connection_proofs (session_hash, bastion, cert_serial, device, login, first_used_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (session_hash) DO NOTHING",
    )
    .bind(session_hash)
    .bind(bastion)
    .bind(serial_to_db(cert_serial))
    .bind(device)
    .bind(login)
    .bind(ts(now))
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(ProofUse::Fresh);
    }
    // A session that an administrator ended, or that is past its deadline, keeps no
    // proof alive even while a bastion that ignores close orders still heartbeats it.
    let until: Option<i64> = sqlx::query_scalar(
        "SELECT MIN(l.absolute_deadline) FROM connection_proofs p \
         JOIN session_leases l ON l.connection = p.session_hash \
         WHERE p.session_hash = $1 AND p.bastion = $2 AND p.cert_serial = $3 AND p.device = $4 AND p.login = $5 \
         AND l.kill_reason IS NULL AND l.absolute_deadline > $6",
    )
    .bind(session_hash)
    .bind(bastion)
    .bind(serial_to_db(cert_serial))
    .bind(device)
    .bind(login)
    .bind(ts(now))
    .fetch_one(&mut *conn)
    .await?;
    Ok(match until {
        Some(until) => ProofUse::SameConnection { until: ts_from(until) },
        None => ProofUse::Replayed,
    })
}

/// Forgets the proofs whose certificates expired by `expired_by` (or are gone): a replay
/// of one is refused on its certificate alone. Decided by each certificate's own expiry,
/// not by how long certificates are issued for now — a setting shortened since would
/// otherwise forget proofs whose certificates still work, and take a replay for a first
/// use.
pub async fn purge_connection_proofs(conn: &mut AnyConnection, expired_by: u64) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM connection_proofs WHERE NOT EXISTS (SELECT 1 FROM certificates c \
         WHERE c.serial = connection_proofs.cert_serial AND c.valid_before > $1)",
    )
    .bind(ts(expired_by))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes `bastion`'s lease `session_id` and releases its slots; the deleted lease, or
/// `None` when there was none.
pub async fn close_lease(conn: &mut AnyConnection, session_id: &str, bastion: &str) -> Result<Option<LeaseRow>> {
    let row = sqlx::query(concat!(
        "DELETE FROM session_leases WHERE session_id = $1 AND bastion = $2 RETURNING ",
        lease_columns!()
    ))
    .bind(session_id)
    .bind(bastion)
    .fetch_optional(&mut *conn)
    .await?;
    release(conn, row).await
}

/// Deletes lease `session_id` if it is still not heartbeated since `cutoff` (another
/// replica may have swept it, or its bastion heartbeated it, in the meantime).
pub async fn sweep_lease(conn: &mut AnyConnection, session_id: &str, cutoff: u64) -> Result<Option<LeaseRow>> {
    let row = sqlx::query(concat!(
        "DELETE FROM session_leases WHERE session_id = $1 AND heartbeat_at < $2 RETURNING ",
        lease_columns!()
    ))
    .bind(session_id)
    .bind(ts(cutoff))
    .fetch_optional(&mut *conn)
    .await?;
    release(conn, row).await
}

async fn release(conn: &mut AnyConnection, row: Option<sqlx::any::AnyRow>) -> Result<Option<LeaseRow>> {
    let Some(row) = row else { return Ok(None) };
    let lease = lease_from(&row)?;
    for scope in lease.scopes() {
        release_slot(conn, &scope).await?;
    }
    Ok(Some(lease))
}

/// One session's line in a heartbeat: its id and byte counters.
pub struct Beat<'a> {
    pub session_id: &'a str,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
}

/// Heartbeats for `bastion`'s sessions in `beats`; answers the ids of those it holds no
/// live lease for (lost). A lease already older than `cutoff` is never revived: it is
/// lost, whichever replica sweeps it, so the outcome does not depend on which request
/// came first.
///
/// Up to 64 leases per statement (`UPDATE … FROM (VALUES …)`, which SQLite and
/// PostgreSQL both take): a bastion with thousands of busy sessions rewrites them all
/// every heartbeat, and one statement each was most of that heartbeat's time. A statement
/// that updates fewer rows than it lists (a lease closed or swept since the heartbeat
/// read it) is followed by one statement per lease of its chunk, which finds the lost ones
/// and rewrites the others to the same values.
pub async fn heartbeat_leases<'a>(
    conn: &mut AnyConnection,
    bastion: &str,
    now: u64,
    cutoff: u64,
    beats: &[Beat<'a>],
) -> Result<Vec<&'a str>> {
    let mut lost = Vec::new();
    for (start, len) in statement_chunks(beats.len()) {
        let chunk = beats.get(start..start + len).unwrap_or_default();
        if heartbeat_chunk(conn, bastion, now, cutoff, chunk).await? == u64::try_from(chunk.len()).unwrap_or(u64::MAX) {
            continue;
        }
        for beat in chunk {
            if heartbeat_chunk(conn, bastion, now, cutoff, std::slice::from_ref(beat)).await? == 0 {
                lost.push(beat.session_id);
            }
        }
    }
    Ok(lost)
}

/// One statement of [`heartbeat_leases`]; how many leases it rewrote.
async fn heartbeat_chunk(
    conn: &mut AnyConnection,
    bastion: &str,
    now: u64,
    cutoff: u64,
    chunk: &[Beat<'_>],
) -> Result<u64> {
    let n = chunk.len() * 3;
    // Only fixed text and placeholder numbers (see `values_statement`); the statement's
    // own placeholders follow the rows'. The VALUES columns are `column1`, `column2`, …
    // in SQLite and PostgreSQL alike.
    let sql = sqlx::AssertSqlSafe(format!(
        "UPDATE session_leases SET heartbeat_at = ${}, bytes_from_client = v.column2, bytes_to_client = v.column3 \
         FROM ({}) AS v \
         WHERE session_leases.session_id = v.column1 AND session_leases.bastion = ${} \
           AND session_leases.heartbeat_at >= ${}",
        n + 1,
        values_list(3, chunk.len()),
        n + 2,
        n + 3,
    ));
    let mut query = sqlx::query(sql);
    for beat in chunk {
        query = query.bind(beat.session_id).bind(bytes(beat.bytes_from_client)).bind(bytes(beat.bytes_to_client));
    }
    let done = query.bind(ts(now)).bind(bastion).bind(ts(cutoff)).execute(&mut *conn).await?;
    Ok(done.rows_affected())
}

/// Marks a lease to be closed at its bastion's next heartbeat; the lease, or `None`.
pub async fn set_kill_reason(conn: &mut AnyConnection, session_id: &str, reason: &str) -> Result<Option<LeaseRow>> {
    let row = sqlx::query(concat!(
        "UPDATE session_leases SET kill_reason = $1 WHERE session_id = $2 RETURNING ",
        lease_columns!()
    ))
    .bind(reason)
    .bind(session_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(lease_from).transpose()
}
