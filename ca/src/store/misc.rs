//! Node inventory and the last loaded policy's summary.

use super::{Result, Store, StoreError, ts, ts_from};
use portcullis_proto::NodeRecord;
use sqlx::{AnyConnection, Row};

fn node_of(row: &sqlx::any::AnyRow) -> Result<NodeRecord> {
    serde_json::from_str(&row.try_get::<String, _>("record_json")?).map_err(|_| StoreError::Corrupt("node record"))
}

impl Store {
    pub async fn node(&self, name: &str) -> Result<Option<NodeRecord>> {
        let row =
            sqlx::query("SELECT record_json FROM nodes WHERE name = $1").bind(name).fetch_optional(self.pool()).await?;
        row.as_ref().map(node_of).transpose()
    }

    /// The node called `name` with when it was registered (an enrollment or a change
    /// keeps that time; a node removed and registered again under the name has a new one).
    pub async fn node_registered(&self, name: &str) -> Result<Option<(NodeRecord, u64)>> {
        let row = sqlx::query("SELECT record_json, registered_at FROM nodes WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| {
            let node = serde_json::from_str(&r.try_get::<String, _>("record_json")?)
                .map_err(|_| StoreError::Corrupt("node record"))?;
            Ok((node, ts_from(r.try_get("registered_at")?)))
        })
        .transpose()
    }

    pub async fn nodes(&self) -> Result<Vec<NodeRecord>> {
        let rows = sqlx::query("SELECT record_json FROM nodes ORDER BY name").fetch_all(self.pool()).await?;
        rows.iter().map(node_of).collect()
    }

    /// When each node was last seen alive (nodes never seen are missing).
    pub async fn nodes_last_seen(&self) -> Result<std::collections::HashMap<String, u64>> {
        let rows =
            sqlx::query("SELECT name, last_seen FROM nodes WHERE last_seen IS NOT NULL").fetch_all(self.pool()).await?;
        rows.iter().map(|r| Ok((r.try_get("name")?, ts_from(r.try_get("last_seen")?)))).collect()
    }

    /// `(digest, summary JSON)` of the policy loaded last, if any.
    pub async fn policy_state(&self) -> Result<Option<(String, String)>> {
        let row = sqlx::query("SELECT digest, summary_json FROM policy_state WHERE id = 1")
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| Ok((r.try_get("digest")?, r.try_get("summary_json")?))).transpose()
    }

    /// The policy in force as the replica that loaded it last published it; see
    /// [`save_policy_state`].
    pub async fn published_policy(&self) -> Result<Option<PublishedPolicy>> {
        let row = sqlx::query("SELECT digest, sources_json, loaded_at FROM policy_state WHERE id = 1")
            .fetch_optional(self.pool())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let sources = match row.try_get::<Option<String>, _>("sources_json")? {
            Some(json) => Some(serde_json::from_str(&json).map_err(|_| StoreError::Corrupt("policy sources"))?),
            None => None,
        };
        Ok(Some(PublishedPolicy {
            digest: row.try_get("digest")?,
            sources,
            loaded_at: ts_from(row.try_get("loaded_at")?),
        }))
    }

    /// The digest of the policy in force (what each replica's housekeeping compares).
    pub async fn policy_digest(&self) -> Result<Option<String>> {
        let row = sqlx::query("SELECT digest FROM policy_state WHERE id = 1").fetch_optional(self.pool()).await?;
        row.map(|r| Ok(r.try_get("digest")?)).transpose()
    }
}

/// The policy in force, shared by the replicas through the database.
#[derive(Debug, Clone)]
pub struct PublishedPolicy {
    pub digest: String,
    /// Its files, `(name, text)`; `None` when published by a CA older than this.
    pub sources: Option<Vec<(String, String)>>,
    /// When this digest came into force.
    pub loaded_at: u64,
}

/// Inserts or replaces a node; returns true when it was new.
/// The node called `name`, read inside a write transaction and, on PostgreSQL, locked
/// until it ends, so a change made from it cannot undo one committed in between (SQLite's
/// write transactions run one at a time). Reading it on the transaction's own connection
/// also keeps a transaction from waiting on the pool for a second one: enough of them at
/// once would each hold a connection and wait for another.
pub async fn node_for_update(tx: &mut super::WriteTx<'_>, name: &str) -> Result<Option<NodeRecord>> {
    let statement = match tx.backend() {
        super::Backend::Sqlite => "SELECT record_json FROM nodes WHERE name = $1",
        super::Backend::Postgres => "SELECT record_json FROM nodes WHERE name = $1 FOR UPDATE",
    };
    let row = sqlx::query(statement).bind(name).fetch_optional(tx.conn()).await?;
    row.as_ref().map(node_of).transpose()
}

/// Every node, read on `conn` (inside a transaction: see [`node_for_update`]).
/// Every node, read for a decision on node identities (a name, its addresses, its host
/// keys against every other node's): on PostgreSQL under a transaction-scoped advisory
/// lock, so two such decisions at once — two clones of one image enrolling together —
/// take turns and the second sees the first's node. (Under READ COMMITTED each read the
/// other nodes before either committed, and both passed.) SQLite's writers take turns
/// already.
pub async fn nodes_for_identity(tx: &mut super::WriteTx<'_>) -> Result<Vec<NodeRecord>> {
    /// The lock's key: any number no other advisory lock of ours uses.
    const NODE_IDENTITIES: i64 = 0x706f_7274_6e6f_6465;
    if tx.backend() == super::Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(NODE_IDENTITIES).execute(tx.conn()).await?;
    }
    nodes_on(tx.conn()).await
}

pub async fn nodes_on(conn: &mut AnyConnection) -> Result<Vec<NodeRecord>> {
    let rows = sqlx::query("SELECT record_json FROM nodes ORDER BY name").fetch_all(&mut *conn).await?;
    rows.iter().map(node_of).collect()
}

/// Registers a new node; `false` (and nothing written) when the name exists.
pub async fn insert_node(conn: &mut AnyConnection, node: &NodeRecord, now: u64) -> Result<bool> {
    let json = serde_json::to_string(node).map_err(|_| StoreError::Corrupt("node record"))?;
    let done = sqlx::query(
        "INSERT INTO nodes (name, record_json, registered_at, updated_at) VALUES ($1, $2, $3, $3) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(&node.name)
    .bind(&json)
    .bind(ts(now))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn upsert_node(conn: &mut AnyConnection, node: &NodeRecord, now: u64) -> Result<bool> {
    let json = serde_json::to_string(node).map_err(|_| StoreError::Corrupt("node record"))?;
    let updated = sqlx::query("UPDATE nodes SET record_json = $1, updated_at = $2 WHERE name = $3")
        .bind(&json)
        .bind(ts(now))
        .bind(&node.name)
        .execute(&mut *conn)
        .await?;
    if updated.rows_affected() == 1 {
        return Ok(false);
    }
    sqlx::query("INSERT INTO nodes (name, record_json, registered_at, updated_at) VALUES ($1, $2, $3, $3)")
        .bind(&node.name)
        .bind(&json)
        .bind(ts(now))
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

/// Publishes the policy a replica loaded: its digest, summary and files. `loaded_at`
/// moves only when the digest does (it is when this policy came into force).
pub async fn save_policy_state(
    conn: &mut AnyConnection,
    digest: &str,
    summary_json: &str,
    sources: &[(String, String)],
    now: u64,
) -> Result<()> {
    let sources = serde_json::to_string(sources).map_err(|_| StoreError::Corrupt("policy sources"))?;
    sqlx::query(
        "INSERT INTO policy_state (id, digest, summary_json, sources_json, loaded_at) VALUES (1, $1, $2, $3, $4) \
         ON CONFLICT (id) DO UPDATE SET digest = excluded.digest, summary_json = excluded.summary_json, \
         sources_json = excluded.sources_json, loaded_at = CASE WHEN policy_state.digest = excluded.digest \
         THEN policy_state.loaded_at ELSE excluded.loaded_at END",
    )
    .bind(digest)
    .bind(summary_json)
    .bind(sources)
    .bind(ts(now))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Marks `name` as seen alive at `now` (never moves back).
pub async fn touch_node(conn: &mut AnyConnection, name: &str, now: u64) -> Result<()> {
    sqlx::query("UPDATE nodes SET last_seen = $2 WHERE name = $1 AND (last_seen IS NULL OR last_seen < $2)")
        .bind(name)
        .bind(ts(now))
        .execute(&mut *conn)
        .await?;
    Ok(())
}
