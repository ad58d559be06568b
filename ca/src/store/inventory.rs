//! Hardware inventory: the latest discovery run per node (claimed by one conditional
//! upsert), the current facts, and their history of changes.

use super::{Result, Store, ts, ts_from};
use sqlx::{AnyConnection, Row};

/// The latest run handed out for a node.
#[derive(Debug, Clone)]
pub struct DiscoveryRunRow {
    pub run_id: String,
    pub bastion: String,
    pub claimed_at: u64,
    pub finished_at: Option<u64>,
    pub result: Option<String>,
}

/// One change of a node's facts.
#[derive(Debug, Clone)]
pub struct InventoryHistoryRow {
    pub at: u64,
    pub run_id: String,
    pub changes_json: String,
}

/// Claims `device` for a new run if its last claim is at or before `due_before` (or it
/// has none): one statement, so of two racing claimers exactly one gets the node.
pub async fn claim_discovery_run(
    conn: &mut AnyConnection,
    device: &str,
    run_id: &str,
    bastion: &str,
    now: u64,
    due_before: u64,
    abandoned_before: u64,
) -> Result<bool> {
    // Due, and not still running: a run that was never reported counts as running until
    // `abandoned_before` (its certificate has expired by then), so a node that hangs is
    // not handed out again and again while it hangs.
    let done = sqlx::query(
        "INSERT INTO discovery_runs (device, run_id, bastion, claimed_at, finished_at, result) \
         VALUES ($1, $2, $3, $4, NULL, NULL) \
         ON CONFLICT (device) DO UPDATE SET run_id = excluded.run_id, bastion = excluded.bastion, \
         claimed_at = excluded.claimed_at, finished_at = NULL, result = NULL \
         WHERE discovery_runs.claimed_at <= $5 \
           AND (discovery_runs.finished_at IS NOT NULL OR discovery_runs.claimed_at <= $6)",
    )
    .bind(device)
    .bind(run_id)
    .bind(bastion)
    .bind(ts(now))
    .bind(ts(due_before))
    .bind(ts(abandoned_before))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Finishes the node's open run `run_id` of `bastion`; false if there is no such open run
/// (unknown, another bastion's, superseded, or already reported).
pub async fn finish_discovery_run(
    conn: &mut AnyConnection,
    device: &str,
    run_id: &str,
    bastion: &str,
    now: u64,
    result: &str,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE discovery_runs SET finished_at = $4, result = $5 \
         WHERE device = $1 AND run_id = $2 AND bastion = $3 AND finished_at IS NULL",
    )
    .bind(device)
    .bind(run_id)
    .bind(bastion)
    .bind(ts(now))
    .bind(result)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Replaces the node's facts and appends the change to its history.
pub async fn record_inventory_change(
    conn: &mut AnyConnection,
    device: &str,
    run_id: &str,
    now: u64,
    facts_json: &str,
    changes_json: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO inventory (device, facts_json, changed_at) VALUES ($1, $2, $3) \
         ON CONFLICT (device) DO UPDATE SET facts_json = excluded.facts_json, changed_at = excluded.changed_at",
    )
    .bind(device)
    .bind(facts_json)
    .bind(ts(now))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO inventory_history (device, seq, at, run_id, changes_json, facts_json) \
         SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5 FROM inventory_history WHERE device = $1",
    )
    .bind(device)
    .bind(ts(now))
    .bind(run_id)
    .bind(changes_json)
    .bind(facts_json)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The node's current facts (JSON) and when they last changed.
pub async fn inventory(conn: &mut AnyConnection, device: &str) -> Result<Option<(String, u64)>> {
    let row = sqlx::query("SELECT facts_json, changed_at FROM inventory WHERE device = $1")
        .bind(device)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| Ok((r.try_get("facts_json")?, ts_from(r.try_get("changed_at")?)))).transpose()
}

/// The node's history, newest first, at most `limit` entries.
pub async fn inventory_history(conn: &mut AnyConnection, device: &str, limit: i64) -> Result<Vec<InventoryHistoryRow>> {
    let rows = sqlx::query(
        "SELECT at, run_id, changes_json FROM inventory_history WHERE device = $1 ORDER BY seq DESC LIMIT $2",
    )
    .bind(device)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(InventoryHistoryRow {
                at: ts_from(r.try_get("at")?),
                run_id: r.try_get("run_id")?,
                changes_json: r.try_get("changes_json")?,
            })
        })
        .collect()
}

/// The latest run handed out for the node.
pub async fn discovery_run(conn: &mut AnyConnection, device: &str) -> Result<Option<DiscoveryRunRow>> {
    let row =
        sqlx::query("SELECT run_id, bastion, claimed_at, finished_at, result FROM discovery_runs WHERE device = $1")
            .bind(device)
            .fetch_optional(&mut *conn)
            .await?;
    row.map(|r| {
        Ok(DiscoveryRunRow {
            run_id: r.try_get("run_id")?,
            bastion: r.try_get("bastion")?,
            claimed_at: ts_from(r.try_get("claimed_at")?),
            finished_at: r.try_get::<Option<i64>, _>("finished_at")?.map(ts_from),
            result: r.try_get("result")?,
        })
    })
    .transpose()
}

impl Store {
    /// Every node's current facts (JSON), by node name.
    pub async fn inventories(&self) -> Result<Vec<(String, String)>> {
        let rows =
            sqlx::query("SELECT device, facts_json FROM inventory ORDER BY device").fetch_all(self.pool()).await?;
        rows.iter().map(|r| Ok((r.try_get("device")?, r.try_get("facts_json")?))).collect()
    }
}
