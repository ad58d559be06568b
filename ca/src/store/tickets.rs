//! Browser console tickets: stored as their SHA-256, consumed by one conditional update.

use super::{Result, Store, json_list, parse_list, ts, ts_from};
use sqlx::{AnyConnection, Row};

/// A ticket as issued: what it is bound to.
#[derive(Debug, Clone)]
pub struct TicketRow {
    pub username: String,
    pub groups: Vec<String>,
    pub device: String,
    pub login: String,
    pub mode: String,
    pub agent: String,
    pub rule: String,
    pub credential_expires_at: u64,
    /// The API session (its token's hash) the ticket was asked with.
    pub api_session_hash: String,
    pub issued_at: u64,
    pub expires_at: u64,
}

/// A ticket its one redemption consumed: only [`consume_ticket`]'s conditional update
/// makes one (the field is private to this module), and opening a console session takes
/// one, so a session cannot be admitted on a ticket that was not redeemed — nor redeemed
/// twice, since the update matches an unused row only once.
#[derive(Debug)]
pub struct Redeemed(TicketRow);

impl Redeemed {
    /// What the redeemed ticket was bound to.
    pub fn into_row(self) -> TicketRow {
        self.0
    }
}

impl std::ops::Deref for Redeemed {
    type Target = TicketRow;

    fn deref(&self) -> &TicketRow {
        &self.0
    }
}

/// Why a ticket could not be consumed.
#[derive(Debug, Clone)]
pub enum TicketState {
    Unknown,
    /// Expired unused: its row, for the audit record.
    Expired(TicketRow),
    /// Already redeemed.
    Used(TicketRow),
    /// Live, but asked for by another browser session than the one presenting it.
    OtherSession(TicketRow),
}

fn ticket_from(row: &sqlx::any::AnyRow) -> Result<TicketRow> {
    Ok(TicketRow {
        username: row.try_get("username")?,
        groups: parse_list(&row.try_get::<String, _>("groups_json")?)?,
        device: row.try_get("device")?,
        login: row.try_get("login")?,
        mode: row.try_get("mode")?,
        agent: row.try_get("agent")?,
        rule: row.try_get("rule")?,
        credential_expires_at: ts_from(row.try_get("credential_expires_at")?),
        api_session_hash: row.try_get("api_session_hash")?,
        issued_at: ts_from(row.try_get("issued_at")?),
        expires_at: ts_from(row.try_get("expires_at")?),
    })
}

macro_rules! ticket_columns {
    () => {
        "username, groups_json, device, login, mode, agent, rule, credential_expires_at, api_session_hash, issued_at, \
         expires_at"
    };
}

pub async fn insert_ticket(conn: &mut AnyConnection, ticket_hash: &str, t: &TicketRow) -> Result<()> {
    sqlx::query(concat!(
        "INSERT INTO console_tickets (ticket_hash, ",
        ticket_columns!(),
        ", used_at, session_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL, NULL)"
    ))
    .bind(ticket_hash)
    .bind(&t.username)
    .bind(json_list(&t.groups))
    .bind(&t.device)
    .bind(&t.login)
    .bind(&t.mode)
    .bind(&t.agent)
    .bind(&t.rule)
    .bind(ts(t.credential_expires_at))
    .bind(&t.api_session_hash)
    .bind(ts(t.issued_at))
    .bind(ts(t.expires_at))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Consumes the ticket for `session_id` if it is unused and unexpired: one conditional
/// `UPDATE`, so of two racing redemptions (on any replica) exactly one changes the row.
pub async fn consume_ticket(
    conn: &mut AnyConnection,
    ticket_hash: &str,
    session_id: &str,
    api_session_hash: &str,
    now: u64,
) -> Result<Option<Redeemed>> {
    let row = sqlx::query(concat!(
        "UPDATE console_tickets SET used_at = $1, session_id = $2 \
         WHERE ticket_hash = $3 AND api_session_hash = $4 AND used_at IS NULL AND expires_at > $1 RETURNING ",
        ticket_columns!()
    ))
    .bind(ts(now))
    .bind(session_id)
    .bind(ticket_hash)
    .bind(api_session_hash)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.as_ref().map(ticket_from).transpose()?.map(Redeemed))
}

/// A ticket that expired unused, not audited yet.
#[derive(Debug, Clone)]
pub struct LapsedTicket {
    pub ticket_hash: String,
    pub username: String,
    pub device: String,
    pub login: String,
    pub issued_at: u64,
    pub expires_at: u64,
}

/// Claims a lapsed ticket for its one audit record: true for exactly one caller, on
/// any number of replicas.
pub async fn claim_lapsed_ticket(conn: &mut AnyConnection, ticket_hash: &str) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE console_tickets SET lapse_audited = 1 \
         WHERE ticket_hash = $1 AND lapse_audited = 0 AND used_at IS NULL",
    )
    .bind(ticket_hash)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Forgets tickets expired before `before` whose session (if any) is over.
pub async fn purge_tickets(conn: &mut AnyConnection, before: u64) -> Result<u64> {
    let done = sqlx::query(
        // A ticket that lapsed unused goes only once its lapse is on record (that is
        // audited by heartbeats and housekeeping; with every bastion down for longer
        // than the retention, it was deleted unrecorded).
        "DELETE FROM console_tickets WHERE expires_at < $1 AND (used_at IS NOT NULL OR lapse_audited = 1) \
         AND (session_id IS NULL OR session_id NOT IN (SELECT session_id FROM session_leases))",
    )
    .bind(ts(before))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

impl Store {
    /// Up to `limit` tickets that expired unused and are not audited yet (a read: the
    /// heartbeat that asks costs no write when there are none).
    pub async fn lapsed_tickets(&self, now: u64, limit: i64) -> Result<Vec<LapsedTicket>> {
        let rows = sqlx::query(
            "SELECT ticket_hash, username, device, login, issued_at, expires_at FROM console_tickets \
             WHERE used_at IS NULL AND lapse_audited = 0 AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
        )
        .bind(ts(now))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LapsedTicket {
                    ticket_hash: row.try_get("ticket_hash")?,
                    username: row.try_get("username")?,
                    device: row.try_get("device")?,
                    login: row.try_get("login")?,
                    issued_at: ts_from(row.try_get("issued_at")?),
                    expires_at: ts_from(row.try_get("expires_at")?),
                })
            })
            .collect()
    }

    /// Why a ticket that could not be consumed was refused.
    pub async fn ticket_state(&self, ticket_hash: &str, now: u64) -> Result<TicketState> {
        let row =
            sqlx::query(concat!("SELECT used_at, ", ticket_columns!(), " FROM console_tickets WHERE ticket_hash = $1"))
                .bind(ticket_hash)
                .fetch_optional(self.pool())
                .await?;
        let Some(row) = row else { return Ok(TicketState::Unknown) };
        let ticket = ticket_from(&row)?;
        Ok(if row.try_get::<Option<i64>, _>("used_at")?.is_some() {
            TicketState::Used(ticket)
        } else if ticket.expires_at > now {
            TicketState::OtherSession(ticket)
        } else {
            TicketState::Expired(ticket)
        })
    }
}
