//! Enrollment tokens.

use super::{Result, Store, StoreError, ts, ts_from};
use sqlx::{AnyConnection, Row};
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct EnrollTokenRow {
    pub id: String,
    pub created_by: String,
    pub expires_at: u64,
    pub uses_left: u32,
    pub tags: BTreeMap<String, String>,
    pub partition: Option<String>,
    pub agent: Option<String>,
    /// `None`: a node token; `Some("agent" | "bastion")`: a service token of that kind.
    pub service_kind: Option<String>,
    /// The one node name this token may enroll, when bound.
    pub node: Option<String>,
    /// The target queries a node it enrolls must match one of (its creator's reach);
    /// `None`: any node.
    pub reach: Option<Vec<String>>,
}

fn token_from(row: &sqlx::any::AnyRow) -> Result<EnrollTokenRow> {
    Ok(EnrollTokenRow {
        id: row.try_get("id")?,
        created_by: row.try_get("created_by")?,
        expires_at: ts_from(row.try_get("expires_at")?),
        uses_left: u32::try_from(row.try_get::<i64, _>("uses_left")?).unwrap_or(0),
        tags: serde_json::from_str(&row.try_get::<String, _>("tags_json")?)
            .map_err(|_| StoreError::Corrupt("token tags"))?,
        partition: row.try_get("partition")?,
        agent: row.try_get("agent")?,
        service_kind: row.try_get("service_kind")?,
        node: row.try_get("node")?,
        reach: match row.try_get::<Option<String>, _>("reach_json")? {
            Some(json) => Some(serde_json::from_str(&json).map_err(|_| StoreError::Corrupt("token reach"))?),
            None => None,
        },
    })
}

impl Store {
    pub async fn enroll_tokens(&self) -> Result<Vec<EnrollTokenRow>> {
        let rows = sqlx::query(
            "SELECT id, created_by, expires_at, uses_left, tags_json, partition, agent, service_kind, node, reach_json FROM enroll_tokens \
             ORDER BY created_at, id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(token_from).collect()
    }
}

pub async fn insert_enroll_token(
    conn: &mut AnyConnection,
    token_hash: &str,
    row: &EnrollTokenRow,
    now: u64,
) -> Result<()> {
    let tags = serde_json::to_string(&row.tags).map_err(|_| StoreError::Corrupt("token tags"))?;
    let reach = match &row.reach {
        Some(queries) => Some(serde_json::to_string(queries).map_err(|_| StoreError::Corrupt("token reach"))?),
        None => None,
    };
    sqlx::query(
        "INSERT INTO enroll_tokens (id, token_hash, created_by, created_at, expires_at, uses_left, tags_json, \
         partition, agent, service_kind, node, reach_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&row.id)
    .bind(token_hash)
    .bind(&row.created_by)
    .bind(ts(now))
    .bind(ts(row.expires_at))
    .bind(i64::from(row.uses_left))
    .bind(tags)
    .bind(&row.partition)
    .bind(&row.agent)
    .bind(&row.service_kind)
    .bind(&row.node)
    .bind(reach)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Takes one use of a live *node* token for node `node`; `None` when it is unknown,
/// expired, used up, minted for a service or bound to another name.
pub async fn consume_enroll_token(
    conn: &mut AnyConnection,
    token_hash: &str,
    node: &str,
    now: u64,
) -> Result<Option<EnrollTokenRow>> {
    let row = sqlx::query(
        "UPDATE enroll_tokens SET uses_left = uses_left - 1 \
         WHERE token_hash = $1 AND uses_left > 0 AND expires_at > $2 AND service_kind IS NULL \
         AND (node IS NULL OR node = $3) \
         RETURNING id, created_by, expires_at, uses_left, tags_json, partition, agent, service_kind, node, reach_json",
    )
    .bind(token_hash)
    .bind(ts(now))
    .bind(node)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(token_from).transpose()
}

/// Takes one use of a live token minted for services of `kind`; `None` when it is
/// unknown, expired, used up, a node token or for the other kind.
pub async fn consume_service_token(
    conn: &mut AnyConnection,
    token_hash: &str,
    kind: &str,
    now: u64,
) -> Result<Option<EnrollTokenRow>> {
    let row = sqlx::query(
        "UPDATE enroll_tokens SET uses_left = uses_left - 1 \
         WHERE token_hash = $1 AND uses_left > 0 AND expires_at > $2 AND service_kind = $3 \
         RETURNING id, created_by, expires_at, uses_left, tags_json, partition, agent, service_kind, node, reach_json",
    )
    .bind(token_hash)
    .bind(ts(now))
    .bind(kind)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(token_from).transpose()
}

/// Ends a token (no uses left); `false` when no token has that id.
pub async fn revoke_enroll_token(conn: &mut AnyConnection, id: &str) -> Result<bool> {
    let done = sqlx::query("UPDATE enroll_tokens SET uses_left = 0 WHERE id = $1").bind(id).execute(&mut *conn).await?;
    Ok(done.rows_affected() == 1)
}

/// Removes a node with what was collected about it (hardware facts and their history,
/// its discovery and Proxmox VE runs): another machine registered under the name later
/// starts with none of it — its details page would show the old machine's hardware,
/// and its first discovery would read as a change to it.
pub async fn delete_node(conn: &mut AnyConnection, name: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM nodes WHERE name = $1").bind(name).execute(&mut *conn).await?;
    for statement in [
        "DELETE FROM inventory WHERE device = $1",
        "DELETE FROM inventory_history WHERE device = $1",
        "DELETE FROM discovery_runs WHERE device = $1",
        "DELETE FROM pve_runs WHERE device = $1",
    ] {
        sqlx::query(statement).bind(name).execute(&mut *conn).await?;
    }
    Ok(done.rows_affected() == 1)
}

#[derive(Debug, Clone)]
pub struct HostCertRow {
    pub ca_fingerprint: String,
    pub certificate: String,
    pub valid_before: u64,
}

/// The host certificate kept for `node`'s key, read on the caller's transaction.
pub async fn host_cert(conn: &mut AnyConnection, node: &str, key_fingerprint: &str) -> Result<Option<HostCertRow>> {
    let row = sqlx::query(
        // A revoked certificate is never handed out again (the KRL lists it, but only
        // clients that check host-certificate revocation would notice).
        "SELECT h.ca_fingerprint, h.certificate, h.valid_before FROM host_certs h \
         WHERE h.node = $1 AND h.key_fingerprint = $2 AND NOT EXISTS \
         (SELECT 1 FROM certificates c WHERE c.serial = h.serial AND c.revoked_at IS NOT NULL)",
    )
    .bind(node)
    .bind(key_fingerprint)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        Ok(HostCertRow {
            ca_fingerprint: r.try_get("ca_fingerprint")?,
            certificate: r.try_get("certificate")?,
            valid_before: ts_from(r.try_get("valid_before")?),
        })
    })
    .transpose()
}

pub async fn save_host_cert(
    conn: &mut AnyConnection,
    node: &str,
    key_fingerprint: &str,
    serial: u64,
    row: &HostCertRow,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO host_certs (node, key_fingerprint, ca_fingerprint, serial, certificate, valid_before) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (node, key_fingerprint) DO UPDATE SET \
         ca_fingerprint = excluded.ca_fingerprint, serial = excluded.serial, certificate = excluded.certificate, \
         valid_before = excluded.valid_before",
    )
    .bind(node)
    .bind(key_fingerprint)
    .bind(&row.ca_fingerprint)
    .bind(super::serial_to_db(serial))
    .bind(&row.certificate)
    .bind(ts(row.valid_before))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn delete_host_certs(conn: &mut AnyConnection, node: &str) -> Result<()> {
    sqlx::query("DELETE FROM host_certs WHERE node = $1").bind(node).execute(&mut *conn).await?;
    Ok(())
}

/// An enrollment a node may still roll back (see migration 0007).
#[derive(Debug, Clone)]
pub struct EnrollAttemptRow {
    pub verification_principal: String,
    pub node: String,
    pub token_id: String,
    pub verification_serial: u64,
    /// The node record before the enrollment; `None` when it was new.
    pub previous_json: Option<String>,
    pub expires_at: u64,
}

pub async fn insert_enroll_attempt(conn: &mut AnyConnection, row: &EnrollAttemptRow, now: u64) -> Result<()> {
    // Expired attempts can no longer be rolled back at the CA: forget them as we go.
    sqlx::query("DELETE FROM enroll_attempts WHERE expires_at <= $1").bind(ts(now)).execute(&mut *conn).await?;
    sqlx::query(
        "INSERT INTO enroll_attempts (verification_principal, node, token_id, verification_serial, previous_json, \
         expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&row.verification_principal)
    .bind(&row.node)
    .bind(&row.token_id)
    .bind(super::serial_to_db(row.verification_serial))
    .bind(&row.previous_json)
    .bind(ts(row.expires_at))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Takes (deletes and returns) a live attempt of `node`; `None` when unknown or expired.
pub async fn take_enroll_attempt(
    conn: &mut AnyConnection,
    verification_principal: &str,
    node: &str,
    now: u64,
) -> Result<Option<EnrollAttemptRow>> {
    let row = sqlx::query(
        "DELETE FROM enroll_attempts WHERE verification_principal = $1 AND node = $2 AND expires_at > $3 \
         RETURNING verification_principal, node, token_id, verification_serial, previous_json, expires_at",
    )
    .bind(verification_principal)
    .bind(node)
    .bind(ts(now))
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        Ok(EnrollAttemptRow {
            verification_principal: r.try_get("verification_principal")?,
            node: r.try_get("node")?,
            token_id: r.try_get("token_id")?,
            verification_serial: super::serial_from_db(r.try_get("verification_serial")?),
            previous_json: r.try_get("previous_json")?,
            expires_at: ts_from(r.try_get("expires_at")?),
        })
    })
    .transpose()
}

/// Gives one use back to a token (an enrollment with it was rolled back).
pub async fn return_token_use(conn: &mut AnyConnection, token_id: &str) -> Result<()> {
    sqlx::query("UPDATE enroll_tokens SET uses_left = uses_left + 1 WHERE id = $1")
        .bind(token_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
