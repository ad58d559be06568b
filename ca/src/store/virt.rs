//! Virtualization inventory (Proxmox VE so far): the latest collection run per device
//! (claimed like discovery runs), and per cluster its nodes, guests, storage, interfaces,
//! disks and Ceph, in provider-neutral tables. A cluster's rows are replaced together, and
//! only when something changed.

use super::{Result, Store, ts, ts_from};
use portcullis_proto::pve::*;
use sqlx::{AnyConnection, Row};

/// The latest collection run of a device.
#[derive(Debug, Clone)]
pub struct PveRunRow {
    pub device: String,
    pub run_id: String,
    pub bastion: String,
    pub claimed_at: u64,
    pub finished_at: Option<u64>,
    pub result: Option<String>,
    pub cluster: Option<String>,
    pub failures_json: Option<String>,
}

/// A hypervisor node with its cluster's identity (for linking it to an enrolled node).
#[derive(Debug, Clone)]
pub struct PveNodeRow {
    pub cluster_id: String,
    pub cluster: String,
    pub clustered: bool,
    pub agent: String,
    pub name: String,
    pub status: String,
}

/// A guest as the policy's device list needs it.
#[derive(Debug, Clone)]
pub struct GuestRow {
    pub vmid: u32,
    pub kind: String,
    pub name: String,
    pub node: String,
    pub status: String,
    pub tags: Vec<String>,
    pub agent: String,
    pub cluster: String,
}

/// A cluster's own row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRow {
    pub id: String,
    pub name: String,
    pub agent: String,
    pub version: String,
    pub clustered: bool,
    pub quorate: Option<bool>,
    pub collected_from: String,
    pub changed_at: u64,
}

fn big(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn unbig(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

/// Claims `device` for a collection run when due (see `claim_discovery_run`).
pub async fn claim_pve_run(
    conn: &mut AnyConnection,
    device: &str,
    run_id: &str,
    bastion: &str,
    now: u64,
    due_before: u64,
    abandoned_before: u64,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO pve_runs (device, run_id, bastion, claimed_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (device) DO UPDATE SET run_id = excluded.run_id, bastion = excluded.bastion, \
         claimed_at = excluded.claimed_at, finished_at = NULL, result = NULL \
         WHERE pve_runs.claimed_at <= $5 AND (pve_runs.finished_at IS NOT NULL OR pve_runs.claimed_at <= $6)",
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

/// Finishes the device's open run `run_id` of `bastion`; false when there is none.
#[allow(clippy::too_many_arguments)]
pub async fn finish_pve_run(
    conn: &mut AnyConnection,
    device: &str,
    run_id: &str,
    bastion: &str,
    now: u64,
    result: &str,
    cluster: Option<&str>,
    warnings_json: Option<&str>,
) -> Result<bool> {
    // A failed run keeps the last warnings: the next collected run compares with them.
    let done = sqlx::query(
        "UPDATE pve_runs SET finished_at = $4, result = $5, cluster = COALESCE($6, cluster), \
         failures_json = COALESCE($7, failures_json) \
         WHERE device = $1 AND run_id = $2 AND bastion = $3 AND finished_at IS NULL",
    )
    .bind(device)
    .bind(run_id)
    .bind(bastion)
    .bind(ts(now))
    .bind(result)
    .bind(cluster)
    .bind(warnings_json)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The warnings (JSON) the device's last collected run recorded.
pub async fn pve_run_warnings(conn: &mut AnyConnection, device: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT failures_json FROM pve_runs WHERE device = $1")
        .bind(device)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|r| r.try_get::<Option<String>, _>("failures_json")).transpose()?.flatten())
}

/// Deletes every row of a cluster, children first.
const DELETES: [&str; 8] = [
    "DELETE FROM virt_nodes WHERE cluster = $1",
    "DELETE FROM virt_guests WHERE cluster = $1",
    "DELETE FROM virt_storage WHERE cluster = $1",
    "DELETE FROM virt_interfaces WHERE cluster = $1",
    "DELETE FROM virt_disks WHERE cluster = $1",
    "DELETE FROM virt_ceph_items WHERE cluster = $1",
    "DELETE FROM virt_ceph WHERE cluster = $1",
    "DELETE FROM virt_clusters WHERE id = $1",
];

/// Replaces everything stored for the cluster with `inv` and appends the change to its
/// history.
pub async fn replace_cluster(
    conn: &mut AnyConnection,
    row: &ClusterRow,
    inv: &PveInventory,
    run_id: &str,
    changes_json: &str,
) -> Result<()> {
    let id = row.id.as_str();
    for delete in DELETES {
        sqlx::query(delete).bind(id).execute(&mut *conn).await?;
    }
    sqlx::query(
        "INSERT INTO virt_clusters (id, name, agent, provider, version, clustered, quorate, collected_from, \
         changed_at) VALUES ($1, $2, $3, 'proxmox', $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(&row.name)
    .bind(&row.agent)
    .bind(&row.version)
    .bind(flag(row.clustered))
    .bind(row.quorate.map(flag))
    .bind(&row.collected_from)
    .bind(ts(row.changed_at))
    .execute(&mut *conn)
    .await?;
    for n in &inv.nodes {
        sqlx::query(
            "INSERT INTO virt_nodes (cluster, name, status, address, cpus, memory_bytes, ssl_fingerprint) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(&n.name)
        .bind(&n.status)
        .bind(&n.address)
        .bind(big(n.cpus))
        .bind(big(n.memory_bytes))
        .bind(&n.ssl_fingerprint)
        .execute(&mut *conn)
        .await?;
    }
    for g in &inv.guests {
        sqlx::query(
            "INSERT INTO virt_guests (cluster, vmid, kind, name, node, status, template, cpus, memory_bytes, \
             disk_bytes, tags_json, config_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(id)
        .bind(i64::from(g.vmid))
        .bind(&g.kind)
        .bind(&g.name)
        .bind(&g.node)
        .bind(&g.status)
        .bind(flag(g.template))
        .bind(big(g.cpus))
        .bind(big(g.memory_bytes))
        .bind(big(g.disk_bytes))
        .bind(serde_json::to_string(&g.tags).unwrap_or_else(|_| "[]".into()))
        .bind(serde_json::to_string(&g.config).unwrap_or_else(|_| "{}".into()))
        .execute(&mut *conn)
        .await?;
    }
    for s in &inv.storage {
        sqlx::query(
            "INSERT INTO virt_storage (cluster, node, name, kind, content, shared, active, total_bytes) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(&s.node)
        .bind(&s.name)
        .bind(&s.kind)
        .bind(&s.content)
        .bind(flag(s.shared))
        .bind(flag(s.active))
        .bind(big(s.total_bytes))
        .execute(&mut *conn)
        .await?;
    }
    for i in &inv.interfaces {
        sqlx::query(
            "INSERT INTO virt_interfaces (cluster, node, name, kind, cidr, active, bridge_ports) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(&i.node)
        .bind(&i.name)
        .bind(&i.kind)
        .bind(&i.cidr)
        .bind(flag(i.active))
        .bind(&i.bridge_ports)
        .execute(&mut *conn)
        .await?;
    }
    for d in &inv.disks {
        sqlx::query(
            "INSERT INTO virt_disks (cluster, node, devpath, model, serial, size_bytes, kind, health) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(&d.node)
        .bind(&d.devpath)
        .bind(&d.model)
        .bind(&d.serial)
        .bind(big(d.size_bytes))
        .bind(&d.kind)
        .bind(&d.health)
        .execute(&mut *conn)
        .await?;
    }
    if let Some(ceph) = &inv.ceph {
        sqlx::query("INSERT INTO virt_ceph (cluster, health) VALUES ($1, $2)")
            .bind(id)
            .bind(&ceph.health)
            .execute(&mut *conn)
            .await?;
        let items = [("osd", &ceph.osds), ("pool", &ceph.pools), ("fs", &ceph.filesystems)];
        for (kind, list) in items {
            for item in list {
                sqlx::query("INSERT INTO virt_ceph_items (cluster, kind, name, status) VALUES ($1, $2, $3, $4)")
                    .bind(id)
                    .bind(kind)
                    .bind(&item.name)
                    .bind(&item.status)
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    sqlx::query(
        "INSERT INTO virt_history (cluster, seq, at, run_id, changes_json) \
         SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4 FROM virt_history WHERE cluster = $1",
    )
    .bind(id)
    .bind(ts(row.changed_at))
    .bind(run_id)
    .bind(changes_json)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn cluster_row(r: &sqlx::any::AnyRow) -> Result<ClusterRow> {
    Ok(ClusterRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        agent: r.try_get("agent")?,
        version: r.try_get("version")?,
        clustered: r.try_get::<i64, _>("clustered")? != 0,
        quorate: r.try_get::<Option<i64>, _>("quorate")?.map(|q| q != 0),
        collected_from: r.try_get("collected_from")?,
        changed_at: ts_from(r.try_get("changed_at")?),
    })
}

macro_rules! cluster_columns {
    () => {
        "id, name, agent, version, clustered, quorate, collected_from, changed_at"
    };
}

/// The cluster's stored inventory, exactly as `replace_cluster` wrote it (rows in key
/// order), or `None` when it was never collected.
pub async fn load_cluster(conn: &mut AnyConnection, id: &str) -> Result<Option<(ClusterRow, PveInventory)>> {
    let Some(r) = sqlx::query(concat!("SELECT ", cluster_columns!(), " FROM virt_clusters WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let row = cluster_row(&r)?;
    let mut inv = PveInventory {
        version: row.version.clone(),
        cluster: row.name.clone(),
        clustered: row.clustered,
        quorate: row.quorate,
        ..PveInventory::default()
    };
    let q = |sql: &'static str| sqlx::query(sql).bind(id.to_owned());
    for r in q("SELECT name, status, address, cpus, memory_bytes, ssl_fingerprint FROM virt_nodes \
                WHERE cluster = $1 ORDER BY name")
    .fetch_all(&mut *conn)
    .await?
    {
        inv.nodes.push(PveNode {
            name: r.try_get("name")?,
            status: r.try_get("status")?,
            address: r.try_get("address")?,
            cpus: unbig(r.try_get("cpus")?),
            memory_bytes: unbig(r.try_get("memory_bytes")?),
            ssl_fingerprint: r.try_get("ssl_fingerprint")?,
        });
    }
    for r in q("SELECT vmid, kind, name, node, status, template, cpus, memory_bytes, disk_bytes, tags_json, \
                config_json FROM virt_guests WHERE cluster = $1 ORDER BY vmid")
    .fetch_all(&mut *conn)
    .await?
    {
        let corrupt = |_| super::StoreError::Corrupt("guest row");
        inv.guests.push(PveGuest {
            vmid: u32::try_from(r.try_get::<i64, _>("vmid")?).map_err(|_| super::StoreError::Corrupt("vmid"))?,
            kind: r.try_get("kind")?,
            name: r.try_get("name")?,
            node: r.try_get("node")?,
            status: r.try_get("status")?,
            template: r.try_get::<i64, _>("template")? != 0,
            cpus: unbig(r.try_get("cpus")?),
            memory_bytes: unbig(r.try_get("memory_bytes")?),
            disk_bytes: unbig(r.try_get("disk_bytes")?),
            tags: serde_json::from_str(&r.try_get::<String, _>("tags_json")?).map_err(corrupt)?,
            config: serde_json::from_str(&r.try_get::<String, _>("config_json")?).map_err(corrupt)?,
        });
    }
    for r in q("SELECT node, name, kind, content, shared, active, total_bytes FROM virt_storage \
                WHERE cluster = $1 ORDER BY node, name")
    .fetch_all(&mut *conn)
    .await?
    {
        inv.storage.push(PveStorage {
            node: r.try_get("node")?,
            name: r.try_get("name")?,
            kind: r.try_get("kind")?,
            content: r.try_get("content")?,
            shared: r.try_get::<i64, _>("shared")? != 0,
            active: r.try_get::<i64, _>("active")? != 0,
            total_bytes: unbig(r.try_get("total_bytes")?),
        });
    }
    for r in q("SELECT node, name, kind, cidr, active, bridge_ports FROM virt_interfaces \
                WHERE cluster = $1 ORDER BY node, name")
    .fetch_all(&mut *conn)
    .await?
    {
        inv.interfaces.push(PveInterface {
            node: r.try_get("node")?,
            name: r.try_get("name")?,
            kind: r.try_get("kind")?,
            cidr: r.try_get("cidr")?,
            active: r.try_get::<i64, _>("active")? != 0,
            bridge_ports: r.try_get("bridge_ports")?,
        });
    }
    for r in q("SELECT node, devpath, model, serial, size_bytes, kind, health FROM virt_disks \
                WHERE cluster = $1 ORDER BY node, devpath")
    .fetch_all(&mut *conn)
    .await?
    {
        inv.disks.push(PveDisk {
            node: r.try_get("node")?,
            devpath: r.try_get("devpath")?,
            model: r.try_get("model")?,
            serial: r.try_get("serial")?,
            size_bytes: unbig(r.try_get("size_bytes")?),
            kind: r.try_get("kind")?,
            health: r.try_get("health")?,
        });
    }
    if let Some(r) = q("SELECT health FROM virt_ceph WHERE cluster = $1").fetch_optional(&mut *conn).await? {
        let mut ceph = PveCeph { health: r.try_get("health")?, ..PveCeph::default() };
        for r in q("SELECT kind, name, status FROM virt_ceph_items WHERE cluster = $1 ORDER BY kind, name")
            .fetch_all(&mut *conn)
            .await?
        {
            let item = PveCephItem { name: r.try_get("name")?, status: r.try_get("status")? };
            match r.try_get::<String, _>("kind")?.as_str() {
                "osd" => ceph.osds.push(item),
                "pool" => ceph.pools.push(item),
                _ => ceph.filesystems.push(item),
            }
        }
        inv.ceph = Some(ceph);
    }
    Ok(Some((row, inv)))
}

fn run_row(r: &sqlx::any::AnyRow) -> Result<PveRunRow> {
    Ok(PveRunRow {
        device: r.try_get("device")?,
        run_id: r.try_get("run_id")?,
        bastion: r.try_get("bastion")?,
        claimed_at: ts_from(r.try_get("claimed_at")?),
        finished_at: r.try_get::<Option<i64>, _>("finished_at")?.map(ts_from),
        result: r.try_get("result")?,
        cluster: r.try_get("cluster")?,
        failures_json: r.try_get("failures_json")?,
    })
}

impl Store {
    pub async fn clusters(&self) -> Result<Vec<ClusterRow>> {
        let rows = sqlx::query(concat!("SELECT ", cluster_columns!(), " FROM virt_clusters ORDER BY id"))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(cluster_row).collect()
    }

    /// Guests per cluster and PVE nodes per cluster, for listings.
    pub async fn cluster_counts(&self) -> Result<Vec<(String, u64, u64)>> {
        let rows = sqlx::query(
            "SELECT c.id AS id, (SELECT COUNT(*) FROM virt_nodes n WHERE n.cluster = c.id) AS nodes, \
             (SELECT COUNT(*) FROM virt_guests g WHERE g.cluster = c.id) AS guests FROM virt_clusters c",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((r.try_get("id")?, ts_from(r.try_get::<i64, _>("nodes")?), ts_from(r.try_get::<i64, _>("guests")?)))
            })
            .collect()
    }

    pub async fn cluster(&self, id: &str) -> Result<Option<(ClusterRow, PveInventory)>> {
        load_cluster(self.read().await?.conn(), id).await
    }

    /// Every stored hypervisor node with its cluster's name, kind and agent.
    pub async fn pve_nodes(&self) -> Result<Vec<PveNodeRow>> {
        let rows = sqlx::query(
            "SELECT c.id AS id, c.name AS cluster, c.clustered AS clustered, c.agent AS agent, n.name AS name, \
             n.status AS status FROM virt_nodes n JOIN virt_clusters c ON c.id = n.cluster ORDER BY c.id, n.name",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PveNodeRow {
                    cluster_id: r.try_get("id")?,
                    cluster: r.try_get("cluster")?,
                    clustered: r.try_get::<i64, _>("clustered")? != 0,
                    agent: r.try_get("agent")?,
                    name: r.try_get("name")?,
                    status: r.try_get("status")?,
                })
            })
            .collect()
    }

    /// Every stored guest with its cluster's agent and name.
    pub async fn guests(&self) -> Result<Vec<GuestRow>> {
        let rows = sqlx::query(
            "SELECT g.vmid AS vmid, g.kind AS kind, g.name AS name, g.node AS node, g.status AS status, \
             g.tags_json AS tags_json, c.agent AS agent, c.name AS cluster FROM virt_guests g \
             JOIN virt_clusters c ON c.id = g.cluster ORDER BY c.id, g.vmid",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(GuestRow {
                    vmid: u32::try_from(r.try_get::<i64, _>("vmid")?)
                        .map_err(|_| super::StoreError::Corrupt("vmid"))?,
                    kind: r.try_get("kind")?,
                    name: r.try_get("name")?,
                    node: r.try_get("node")?,
                    status: r.try_get("status")?,
                    tags: serde_json::from_str(&r.try_get::<String, _>("tags_json")?)
                        .map_err(|_| super::StoreError::Corrupt("guest tags"))?,
                    agent: r.try_get("agent")?,
                    cluster: r.try_get("cluster")?,
                })
            })
            .collect()
    }

    /// When each device's run was last claimed (what a claim orders devices by).
    pub async fn pve_claim_times(&self) -> Result<std::collections::HashMap<String, u64>> {
        let rows = sqlx::query("SELECT device, claimed_at FROM pve_runs").fetch_all(self.pool()).await?;
        rows.iter().map(|r| Ok((r.try_get("device")?, ts_from(r.try_get("claimed_at")?)))).collect()
    }

    pub async fn pve_runs(&self) -> Result<Vec<PveRunRow>> {
        let rows = sqlx::query(
            "SELECT device, run_id, bastion, claimed_at, finished_at, result, cluster, failures_json \
             FROM pve_runs ORDER BY device",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(run_row).collect()
    }
}
