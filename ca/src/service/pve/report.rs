//! A report's checks, ordering and drift: pure functions over the wire inventory.

use portcullis_proto::pve::*;
use std::collections::{BTreeMap, BTreeSet};

/// Bounds on a report, far above any real cluster, so a hostile bastion cannot make the
/// CA store without limit.
const MAX_NODES: usize = 1_000;
const MAX_GUESTS: usize = 100_000;
const MAX_ROWS: usize = 100_000;
const MAX_CONFIG_KEYS: usize = 512;
/// Configuration entries over all guests: 512 keys per guest alone would let a 32 MiB
/// report carry millions, each held several times over while drift is worked out. A
/// guest has some 20; this leaves room for the largest estate `MAX_GUESTS` allows.
const MAX_CONFIG_ENTRIES: usize = 20 * MAX_GUESTS;
const MAX_TEXT: usize = 4_096;
/// Bounds and names of a reported inventory.
pub(super) fn check(
    inv: &PveInventory,
    failures: &[EndpointFailure],
    privileges: &[String],
) -> Result<(), &'static str> {
    let text = |s: &str| s.len() <= MAX_TEXT && !s.chars().any(char::is_control);
    let name = |s: &str| !s.is_empty() && s.len() <= 253 && s.chars().all(|c| c.is_ascii_graphic());
    if !name(&inv.cluster) || !text(&inv.version) {
        return Err("cluster name or version");
    }
    if inv.nodes.len() > MAX_NODES || inv.guests.len() > MAX_GUESTS {
        return Err("too many nodes or guests");
    }
    if inv.guests.iter().map(|g| g.config.len()).sum::<usize>() > MAX_CONFIG_ENTRIES {
        return Err("too many guest configuration entries");
    }
    let rows = inv.storage.len() + inv.interfaces.len() + inv.disks.len();
    let ceph = inv.ceph.as_ref().map_or(0, |c| c.osds.len() + c.pools.len() + c.filesystems.len());
    if rows > MAX_ROWS || ceph > MAX_ROWS || failures.len() > MAX_ROWS || privileges.len() > MAX_ROWS {
        return Err("too many rows");
    }
    let unique = |keys: Vec<String>| {
        let n = keys.len();
        keys.into_iter().collect::<BTreeSet<_>>().len() == n
    };
    if !inv.nodes.iter().all(|n| name(&n.name) && text(&n.status))
        || !unique(inv.nodes.iter().map(|n| n.name.clone()).collect())
    {
        return Err("node names");
    }
    if !inv.guests.iter().all(|g| {
        text(&g.name)
            && name(&g.node)
            && text(&g.status)
            && matches!(g.kind.as_str(), "qemu" | "lxc")
            && g.config.len() <= MAX_CONFIG_KEYS
            && g.config.iter().all(|(k, v)| name(k) && text(v))
            && g.tags.iter().all(|t| text(t))
    }) || !unique(inv.guests.iter().map(|g| g.vmid.to_string()).collect())
    {
        return Err("guests");
    }
    let keyed = |node: &str, key: &str| name(node) && name(key);
    if !inv.storage.iter().all(|s| keyed(&s.node, &s.name) && text(&s.kind) && text(&s.content))
        || !unique(inv.storage.iter().map(|s| format!("{}/{}", s.node, s.name)).collect())
        || !inv.interfaces.iter().all(|i| keyed(&i.node, &i.name) && text(&i.kind))
        || !unique(inv.interfaces.iter().map(|i| format!("{}/{}", i.node, i.name)).collect())
        || !inv.disks.iter().all(|d| keyed(&d.node, &d.devpath))
        || !unique(inv.disks.iter().map(|d| format!("{}/{}", d.node, d.devpath)).collect())
    {
        return Err("storage, interfaces or disks");
    }
    if let Some(c) = &inv.ceph {
        let items = [&c.osds, &c.pools, &c.filesystems];
        if !text(&c.health)
            || !items.iter().all(|l| l.iter().all(|i| name(&i.name) && text(&i.status)))
            || !items.iter().all(|l| unique(l.iter().map(|i| i.name.clone()).collect()))
        {
            return Err("ceph");
        }
    }
    if !failures.iter().all(|f| text(&f.path) && text(&f.code) && f.hint.as_deref().is_none_or(text))
        || !privileges.iter().all(|p| text(p))
    {
        return Err("endpoint failures");
    }
    Ok(())
}

/// Sorts every list by its key, so two equal inventories are equal values whatever order
/// the API or the database gave.
pub(super) fn normalize(inv: &mut PveInventory) {
    inv.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    inv.guests.sort_by_key(|g| g.vmid);
    inv.storage.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
    inv.interfaces.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
    inv.disks.sort_by(|a, b| (&a.node, &a.devpath).cmp(&(&b.node, &b.devpath)));
    for g in &mut inv.guests {
        g.tags.sort();
    }
    if let Some(c) = &mut inv.ceph {
        for list in [&mut c.osds, &mut c.pools, &mut c.filesystems] {
            list.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }
}

/// The inventory as flat `path → value` fields.
fn fields(inv: &PveInventory) -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    let opt = |v: &Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    f.insert("version".into(), inv.version.clone());
    f.insert("clustered".into(), inv.clustered.to_string());
    f.insert("quorate".into(), inv.quorate.map(|q| q.to_string()).unwrap_or_default());
    for n in &inv.nodes {
        let p = format!("node.{}", n.name);
        f.insert(format!("{p}.status"), n.status.clone());
        f.insert(format!("{p}.address"), s(&n.address));
        f.insert(format!("{p}.cpus"), opt(&n.cpus));
        f.insert(format!("{p}.memory_bytes"), opt(&n.memory_bytes));
        f.insert(format!("{p}.ssl_fingerprint"), s(&n.ssl_fingerprint));
    }
    for g in &inv.guests {
        let p = format!("guest.{}", g.vmid);
        f.insert(format!("{p}.kind"), g.kind.clone());
        f.insert(format!("{p}.name"), g.name.clone());
        f.insert(format!("{p}.node"), g.node.clone());
        f.insert(format!("{p}.status"), g.status.clone());
        f.insert(format!("{p}.template"), g.template.to_string());
        f.insert(format!("{p}.cpus"), opt(&g.cpus));
        f.insert(format!("{p}.memory_bytes"), opt(&g.memory_bytes));
        f.insert(format!("{p}.disk_bytes"), opt(&g.disk_bytes));
        f.insert(format!("{p}.tags"), g.tags.join(";"));
        for (k, v) in &g.config {
            f.insert(format!("{p}.config.{k}"), v.clone());
        }
    }
    for st in &inv.storage {
        let p = format!("storage.{}/{}", st.node, st.name);
        f.insert(format!("{p}.kind"), st.kind.clone());
        f.insert(format!("{p}.content"), st.content.clone());
        f.insert(format!("{p}.shared"), st.shared.to_string());
        f.insert(format!("{p}.active"), st.active.to_string());
        f.insert(format!("{p}.total_bytes"), opt(&st.total_bytes));
    }
    for i in &inv.interfaces {
        let p = format!("interface.{}/{}", i.node, i.name);
        f.insert(format!("{p}.kind"), i.kind.clone());
        f.insert(format!("{p}.cidr"), s(&i.cidr));
        f.insert(format!("{p}.active"), i.active.to_string());
        f.insert(format!("{p}.bridge_ports"), s(&i.bridge_ports));
    }
    for d in &inv.disks {
        let p = format!("disk.{}/{}", d.node, d.devpath);
        f.insert(format!("{p}.model"), s(&d.model));
        f.insert(format!("{p}.serial"), s(&d.serial));
        f.insert(format!("{p}.size_bytes"), opt(&d.size_bytes));
        f.insert(format!("{p}.kind"), s(&d.kind));
        f.insert(format!("{p}.health"), s(&d.health));
    }
    if let Some(c) = &inv.ceph {
        f.insert("ceph.health".into(), c.health.clone());
        for (kind, list) in [("osd", &c.osds), ("pool", &c.pools), ("fs", &c.filesystems)] {
            for item in list {
                f.insert(format!("ceph.{kind}.{}", item.name), item.status.clone());
            }
        }
    }
    f
}

/// The field paths that differ (added, removed or changed).
pub(super) fn drift(old: Option<&PveInventory>, new: &PveInventory) -> Vec<String> {
    let before = old.map(fields).unwrap_or_default();
    let after = fields(new);
    let mut changed: Vec<String> =
        after.iter().filter(|(k, v)| before.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
    changed.extend(before.keys().filter(|k| !after.contains_key(*k)).cloned());
    changed.sort();
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv() -> PveInventory {
        PveInventory {
            version: "9.0.10".into(),
            cluster: "lab".into(),
            clustered: true,
            quorate: Some(true),
            nodes: vec![PveNode { name: "pve1".into(), status: "online".into(), ..PveNode::default() }],
            guests: vec![
                PveGuest {
                    vmid: 101,
                    kind: "lxc".into(),
                    name: "ct".into(),
                    node: "pve1".into(),
                    ..PveGuest::default()
                },
                PveGuest {
                    vmid: 100,
                    kind: "qemu".into(),
                    name: "vm".into(),
                    node: "pve1".into(),
                    ..PveGuest::default()
                },
            ],
            ..PveInventory::default()
        }
    }

    #[test]
    fn order_is_not_drift_and_a_status_change_is() {
        let (mut a, mut b) = (inv(), inv());
        b.guests.reverse();
        normalize(&mut a);
        normalize(&mut b);
        assert!(drift(Some(&a), &b).is_empty());
        b.guests[0].status = "running".into();
        assert_eq!(drift(Some(&a), &b), ["guest.100.status"]);
        b.guests.pop();
        assert!(drift(Some(&a), &b).iter().any(|f| f == "guest.101.kind"), "a removed guest is drift");
    }

    #[test]
    fn hostile_reports_are_refused() {
        let mut dup = inv();
        dup.guests[1].vmid = 101;
        assert_eq!(check(&dup, &[], &[]), Err("guests"));
        let mut control = inv();
        control.nodes[0].name = "pve\n1".into();
        assert!(check(&control, &[], &[]).is_err());
        let mut kind = inv();
        kind.guests[0].kind = "docker".into();
        assert!(check(&kind, &[], &[]).is_err());
        assert_eq!(check(&inv(), &[], &[]), Ok(()));
        // Within every per-guest bound, but millions of entries in all: refused (before,
        // each was held several times over while the drift was worked out).
        let mut heavy = inv();
        let config: BTreeMap<String, String> = (0..MAX_CONFIG_KEYS).map(|k| (format!("k{k}"), "v".into())).collect();
        heavy.guests = (0..=MAX_CONFIG_ENTRIES / MAX_CONFIG_KEYS)
            .map(|i| PveGuest {
                vmid: 1000 + u32::try_from(i).unwrap(),
                kind: "qemu".into(),
                name: "vm".into(),
                node: "pve1".into(),
                config: config.clone(),
                ..PveGuest::default()
            })
            .collect();
        assert_eq!(check(&heavy, &[], &[]), Err("too many guest configuration entries"));
        heavy.guests.truncate(MAX_CONFIG_ENTRIES / MAX_CONFIG_KEYS);
        assert_eq!(check(&heavy, &[], &[]), Ok(()));
    }
}
