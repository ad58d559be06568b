//! Stored API secrets (sealed; see `crate::sealed`).

use super::{Result, Store, ts, ts_from};
use sqlx::{AnyConnection, Row};

/// A secret's row. `sealed` is the encrypted value; nothing else here is secret.
#[derive(Debug, Clone)]
pub struct SecretRow {
    pub name: String,
    pub kind: String,
    pub identity: String,
    pub sealed: String,
    pub fingerprint: String,
    pub tls_json: String,
    pub created_at: u64,
    pub rotated_at: Option<u64>,
    pub changed_by: String,
}

fn row(r: &sqlx::any::AnyRow) -> Result<SecretRow> {
    Ok(SecretRow {
        name: r.try_get("name")?,
        kind: r.try_get("kind")?,
        identity: r.try_get("identity")?,
        sealed: r.try_get("sealed")?,
        fingerprint: r.try_get("fingerprint")?,
        tls_json: r.try_get("tls_json")?,
        created_at: ts_from(r.try_get("created_at")?),
        rotated_at: r.try_get::<Option<i64>, _>("rotated_at")?.map(ts_from),
        changed_by: r.try_get("changed_by")?,
    })
}

macro_rules! columns {
    () => {
        "name, kind, identity, sealed, fingerprint, tls_json, created_at, rotated_at, changed_by"
    };
}

/// Inserts a new secret; false when the name exists.
pub async fn insert_secret(conn: &mut AnyConnection, s: &SecretRow) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO secrets (name, kind, identity, sealed, fingerprint, tls_json, created_at, rotated_at, \
         changed_by) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8) ON CONFLICT (name) DO NOTHING",
    )
    .bind(&s.name)
    .bind(&s.kind)
    .bind(&s.identity)
    .bind(&s.sealed)
    .bind(&s.fingerprint)
    .bind(&s.tls_json)
    .bind(ts(s.created_at))
    .bind(&s.changed_by)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Replaces the value (and identity and TLS policy) of an existing secret; false when
/// there is none.
pub async fn rotate_secret(conn: &mut AnyConnection, s: &SecretRow, now: u64) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE secrets SET identity = $2, sealed = $3, fingerprint = $4, tls_json = $5, rotated_at = $6, \
         changed_by = $7 WHERE name = $1",
    )
    .bind(&s.name)
    .bind(&s.identity)
    .bind(&s.sealed)
    .bind(&s.fingerprint)
    .bind(&s.tls_json)
    .bind(ts(now))
    .bind(&s.changed_by)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn delete_secret(conn: &mut AnyConnection, name: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM secrets WHERE name = $1").bind(name).execute(&mut *conn).await?;
    Ok(done.rows_affected() == 1)
}

impl Store {
    pub async fn secrets(&self) -> Result<Vec<SecretRow>> {
        let rows =
            sqlx::query(concat!("SELECT ", columns!(), " FROM secrets ORDER BY name")).fetch_all(self.pool()).await?;
        rows.iter().map(row).collect()
    }

    pub async fn secret(&self, name: &str) -> Result<Option<SecretRow>> {
        let r = sqlx::query(concat!("SELECT ", columns!(), " FROM secrets WHERE name = $1"))
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        r.as_ref().map(row).transpose()
    }
}
