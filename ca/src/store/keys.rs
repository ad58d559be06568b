//! CA key rows. Private keys are stored only in encrypted OpenSSH format.

use super::{Result, Store, ts, ts_from};
use sqlx::{AnyConnection, Row};

#[derive(Debug, Clone)]
pub struct CaKeyRow {
    pub fingerprint: String,
    pub purpose: String,
    pub state: String,
    pub algorithm: String,
    pub public_key: String,
    pub encrypted_key: String,
    pub created_at: u64,
}

impl Store {
    pub async fn ca_keys(&self) -> Result<Vec<CaKeyRow>> {
        let rows = sqlx::query(
            "SELECT fingerprint, purpose, state, algorithm, public_key, encrypted_key, created_at \
             FROM ca_keys ORDER BY purpose, created_at, fingerprint",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(CaKeyRow {
                    fingerprint: row.try_get("fingerprint")?,
                    purpose: row.try_get("purpose")?,
                    state: row.try_get("state")?,
                    algorithm: row.try_get("algorithm")?,
                    public_key: row.try_get("public_key")?,
                    encrypted_key: row.try_get("encrypted_key")?,
                    created_at: ts_from(row.try_get("created_at")?),
                })
            })
            .collect()
    }
}

pub async fn insert_ca_key(conn: &mut AnyConnection, key: &CaKeyRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO ca_keys (fingerprint, purpose, state, algorithm, public_key, encrypted_key, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&key.fingerprint)
    .bind(&key.purpose)
    .bind(&key.state)
    .bind(&key.algorithm)
    .bind(&key.public_key)
    .bind(&key.encrypted_key)
    .bind(ts(key.created_at))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Moves every key of `purpose` in state `from` to state `to`; returns how many moved.
pub async fn move_ca_keys(conn: &mut AnyConnection, purpose: &str, from: &str, to: &str) -> Result<u64> {
    let done = sqlx::query("UPDATE ca_keys SET state = $1 WHERE purpose = $2 AND state = $3")
        .bind(to)
        .bind(purpose)
        .bind(from)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

pub async fn set_ca_key_state(conn: &mut AnyConnection, fingerprint: &str, from: &str, to: &str) -> Result<bool> {
    let done = sqlx::query("UPDATE ca_keys SET state = $1 WHERE fingerprint = $2 AND state = $3")
        .bind(to)
        .bind(fingerprint)
        .bind(from)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The state of the CA key with `fingerprint` (`None`: not a CA key), its row locked
/// until the transaction ends on PostgreSQL: a revocation of the key and its activation
/// on another replica are then ordered, so neither acts on a state the other is
/// changing (SQLite's write transactions run one at a time).
pub async fn ca_key_state(tx: &mut super::WriteTx<'_>, fingerprint: &str) -> Result<Option<String>> {
    let statement = match tx.backend() {
        super::Backend::Sqlite => "SELECT state FROM ca_keys WHERE fingerprint = $1",
        super::Backend::Postgres => "SELECT state FROM ca_keys WHERE fingerprint = $1 FOR UPDATE",
    };
    let row = sqlx::query(statement).bind(fingerprint).fetch_optional(tx.conn()).await?;
    Ok(row.map(|r| r.try_get("state")).transpose()?)
}
