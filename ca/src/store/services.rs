//! Enrolled services (bastions, edge agents). Only the SHA-256 of a service's API token
//! is stored.

use super::{Result, Store, json_list, parse_list, ts, ts_from};
use sqlx::{AnyConnection, Row};

#[derive(Debug, Clone)]
pub struct ServiceRow {
    /// `agent` or `bastion`.
    pub kind: String,
    pub name: String,
    pub public_key: String,
    pub key_fingerprint: String,
    pub agent_endpoint: Option<String>,
    pub enrolled_at: u64,
    pub last_seen: Option<u64>,
    /// Bastions: agents connected at the last heartbeat.
    pub agents: Vec<String>,
}

macro_rules! service_columns {
    () => {
        "kind, name, public_key, key_fingerprint, agent_endpoint, enrolled_at, last_seen, agents_json"
    };
}

fn service_from(row: &sqlx::any::AnyRow) -> Result<ServiceRow> {
    Ok(ServiceRow {
        kind: row.try_get("kind")?,
        name: row.try_get("name")?,
        public_key: row.try_get("public_key")?,
        key_fingerprint: row.try_get("key_fingerprint")?,
        agent_endpoint: row.try_get("agent_endpoint")?,
        enrolled_at: ts_from(row.try_get("enrolled_at")?),
        last_seen: row.try_get::<Option<i64>, _>("last_seen")?.map(ts_from),
        agents: parse_list(&row.try_get::<String, _>("agents_json")?)?,
    })
}

impl Store {
    pub async fn service(&self, kind: &str, name: &str) -> Result<Option<ServiceRow>> {
        let row = sqlx::query(concat!("SELECT ", service_columns!(), " FROM services WHERE kind = $1 AND name = $2"))
            .bind(kind)
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(service_from).transpose()
    }

    /// The service whose API token hashes to `token_hash` — unless its key has been
    /// revoked: a revoked bastion or agent is no caller at all (it kept calling, claiming
    /// credentials and opening sessions, until 2026-12-05; only its certificate renewal
    /// was refused).
    pub async fn service_by_token(&self, token_hash: &str) -> Result<Option<ServiceRow>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            service_columns!(),
            " FROM services WHERE api_token_hash = $1 \
             AND NOT EXISTS (SELECT 1 FROM revoked_keys k WHERE k.fingerprint = services.key_fingerprint)"
        ))
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(service_from).transpose()
    }

    pub async fn services(&self, kind: &str) -> Result<Vec<ServiceRow>> {
        let rows = sqlx::query(concat!("SELECT ", service_columns!(), " FROM services WHERE kind = $1 ORDER BY name"))
            .bind(kind)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(service_from).collect()
    }
}

/// Registers a service or re-registers it with a new API token and endpoint, in one
/// statement (so two racing enrollments cannot both win). Unless `replace_key`, an
/// existing registration keeps its key: `false` when it has another one.
/// `enrolled_at` keeps the first enrollment's time.
pub async fn upsert_service(
    conn: &mut AnyConnection,
    row: &ServiceRow,
    token_hash: &str,
    replace_key: bool,
    now: u64,
) -> Result<bool> {
    let query = if replace_key {
        sqlx::query(
            "INSERT INTO services (kind, name, public_key, key_fingerprint, api_token_hash, agent_endpoint, \
             enrolled_at, last_seen, agents_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, '[]') \
             ON CONFLICT (kind, name) DO UPDATE SET public_key = excluded.public_key, \
             key_fingerprint = excluded.key_fingerprint, api_token_hash = excluded.api_token_hash, \
             agent_endpoint = excluded.agent_endpoint, last_seen = excluded.last_seen",
        )
    } else {
        sqlx::query(
            "INSERT INTO services (kind, name, public_key, key_fingerprint, api_token_hash, agent_endpoint, \
             enrolled_at, last_seen, agents_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, '[]') \
             ON CONFLICT (kind, name) DO UPDATE SET public_key = excluded.public_key, \
             key_fingerprint = excluded.key_fingerprint, api_token_hash = excluded.api_token_hash, \
             agent_endpoint = excluded.agent_endpoint, last_seen = excluded.last_seen \
             WHERE services.key_fingerprint = excluded.key_fingerprint",
        )
    };
    let done = query
        .bind(&row.kind)
        .bind(&row.name)
        .bind(&row.public_key)
        .bind(&row.key_fingerprint)
        .bind(token_hash)
        .bind(&row.agent_endpoint)
        .bind(ts(now))
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Records contact with a service.
pub async fn touch_service(conn: &mut AnyConnection, kind: &str, name: &str, now: u64) -> Result<()> {
    sqlx::query("UPDATE services SET last_seen = $1 WHERE kind = $2 AND name = $3")
        .bind(ts(now))
        .bind(kind)
        .bind(name)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A bastion's heartbeat: when it was seen and which agents it reported connected.
pub async fn record_bastion_heartbeat(
    conn: &mut AnyConnection,
    bastion: &str,
    agents: &[String],
    now: u64,
) -> Result<()> {
    sqlx::query("UPDATE services SET last_seen = $1, agents_json = $2 WHERE kind = 'bastion' AND name = $3")
        .bind(ts(now))
        .bind(json_list(agents))
        .bind(bastion)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
