//! Proxmox VE API answers → the provider-neutral inventory. Pure functions over
//! `serde_json::Value`: a missing or mistyped field is left out, never a panic, and
//! runtime counters (load, memory in use, uptime, traffic) are not read at all.

use portcullis_proto::pve::*;
use serde_json::Value;
use std::collections::BTreeMap;

/// Inventory needs only PVE's audit privileges (the `PVEAuditor` role: `Sys.Audit`,
/// `VM.Audit`, `Datastore.Audit`, …). Every other one lets the token change, open or run
/// something — the seed's examples (`VM.Allocate`, `VM.Config.*`, `Sys.Modify`,
/// `Datastore.Allocate`, `Permissions.Modify`) but also `Sys.Console` (a root shell
/// through termproxy), `VM.Monitor`, `VM.PowerMgmt`, `User.Modify` — so what is allowed is
/// listed, not what is not: PVE adds privileges with new releases.
fn read_only(privilege: &str) -> bool {
    privilege.ends_with(".Audit")
}

fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(clean(s)),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(v: &Value, key: &str) -> Option<u64> {
    match v.get(key)? {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn flag(v: &Value, key: &str) -> bool {
    match v.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_u64().is_some_and(|n| n != 0),
        Some(Value::String(s)) => s == "1",
        _ => false,
    }
}

/// Server text made safe to store and show: no control characters, bounded.
fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(1024).collect()
}

fn list(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// `/version` → `9.0.10`; `None` when it is not a PVE answer.
pub(super) fn version(v: &Value) -> Option<String> {
    text(v, "version").filter(|s| !s.is_empty())
}

/// The error message of a non-200 answer, cleaned and short.
pub(super) fn message(v: &Value) -> Option<String> {
    let m = v.get("message").and_then(Value::as_str)?;
    Some(clean(m.trim()).chars().take(200).collect())
}

/// `/access/permissions` → every privilege held beyond read-only audit, as
/// `PATH:PRIVILEGE`; `None` when the answer is not a map of paths to privileges. A
/// privilege listed is held whatever its value: PVE answers `privilege → propagate`, so a
/// `0` is a privilege granted without propagation, not one withheld.
pub(super) fn write_privileges(v: &Value) -> Option<Vec<String>> {
    let paths = v.as_object()?;
    let mut held = Vec::new();
    for (path, privs) in paths {
        for p in privs.as_object()?.keys().filter(|p| !read_only(p)) {
            held.push(format!("{}:{}", clean(path), clean(p)));
        }
    }
    held.sort();
    Some(held)
}

/// What to grant when a path answered 403: PVE names the path and privilege it checked
/// (`Permission check failed (/nodes/pve1, Sys.Audit)`); otherwise the audit privilege
/// the path needs.
pub(super) fn privilege_hint(path: &str, message: Option<&str>) -> String {
    if let Some(m) = message
        && let Some(inner) = m.split_once('(').and_then(|(_, rest)| rest.split_once(')')).map(|(inner, _)| inner)
        && let Some((p, privilege)) = inner.split_once(", ")
    {
        return format!("grant {} on {} (PVEAuditor has it)", privilege.trim(), p.trim());
    }
    let privilege = if path.contains("/qemu/") || path.contains("/lxc/") || path == "/cluster/resources" {
        "VM.Audit"
    } else if path.contains("/storage") {
        "Datastore.Audit"
    } else {
        "Sys.Audit"
    };
    format!("grant {privilege} on the path (PVEAuditor has it)")
}

/// The cluster, its nodes and the guests and storage of `/cluster/resources`.
pub(super) fn inventory(
    version: String,
    status: Option<&Value>,
    nodes: Option<&Value>,
    resources: Option<&Value>,
    device: &str,
) -> PveInventory {
    let mut inv = PveInventory { version, ..PveInventory::default() };
    let status = list(status);
    let cluster = status.iter().find(|e| e.get("type").and_then(Value::as_str) == Some("cluster"));
    let addresses: BTreeMap<String, String> = status
        .iter()
        .filter(|e| e.get("type").and_then(Value::as_str) == Some("node"))
        .filter_map(|e| Some((text(e, "name")?, text(e, "ip")?)))
        .collect();
    for n in list(nodes) {
        let Some(name) = text(n, "node") else { continue };
        inv.nodes.push(PveNode {
            status: text(n, "status").unwrap_or_else(|| "unknown".into()),
            address: addresses.get(&name).cloned(),
            cpus: number(n, "maxcpu"),
            memory_bytes: number(n, "maxmem"),
            ssl_fingerprint: text(n, "ssl_fingerprint"),
            name,
        });
    }
    match cluster {
        Some(c) => {
            inv.cluster = text(c, "name").unwrap_or_else(|| device.to_owned());
            inv.clustered = true;
            inv.quorate = Some(flag(c, "quorate"));
        }
        None => {
            // Not clustered: the node is its own "cluster".
            inv.cluster = inv.nodes.first().map_or_else(|| device.to_owned(), |n| n.name.clone());
            inv.quorate = (!status.is_empty()).then_some(true);
        }
    }
    for r in list(resources) {
        match r.get("type").and_then(Value::as_str) {
            Some(kind @ ("qemu" | "lxc")) => {
                let (Some(vmid), Some(node)) = (number(r, "vmid"), text(r, "node")) else { continue };
                let Ok(vmid) = u32::try_from(vmid) else { continue };
                let tags = text(r, "tags").unwrap_or_default();
                inv.guests.push(PveGuest {
                    vmid,
                    kind: kind.to_owned(),
                    name: text(r, "name").unwrap_or_default(),
                    node,
                    status: text(r, "status").unwrap_or_else(|| "unknown".into()),
                    template: flag(r, "template"),
                    cpus: number(r, "maxcpu"),
                    memory_bytes: number(r, "maxmem"),
                    disk_bytes: number(r, "maxdisk"),
                    tags: tags.split([';', ',']).filter(|t| !t.is_empty()).map(str::to_owned).collect(),
                    config: BTreeMap::new(),
                });
            }
            Some("storage") => {
                let (Some(name), Some(node)) = (text(r, "storage"), text(r, "node")) else { continue };
                inv.storage.push(PveStorage {
                    node,
                    name,
                    kind: text(r, "plugintype").unwrap_or_default(),
                    content: text(r, "content").unwrap_or_default(),
                    shared: flag(r, "shared"),
                    active: text(r, "status").as_deref() == Some("available"),
                    total_bytes: number(r, "maxdisk"),
                });
            }
            _ => {}
        }
    }
    inv
}

/// `/nodes/N/network`.
pub(super) fn interfaces(node: &str, v: &Value) -> Vec<PveInterface> {
    list(Some(v))
        .iter()
        .filter_map(|i| {
            Some(PveInterface {
                node: node.to_owned(),
                name: text(i, "iface")?,
                kind: text(i, "type").unwrap_or_default(),
                cidr: text(i, "cidr"),
                active: flag(i, "active"),
                bridge_ports: text(i, "bridge_ports"),
            })
        })
        .collect()
}

/// `/nodes/N/disks/list`.
pub(super) fn disks(node: &str, v: &Value) -> Vec<PveDisk> {
    list(Some(v))
        .iter()
        .filter_map(|d| {
            Some(PveDisk {
                node: node.to_owned(),
                devpath: text(d, "devpath")?,
                model: text(d, "model"),
                serial: text(d, "serial"),
                size_bytes: number(d, "size"),
                kind: text(d, "type"),
                health: text(d, "health"),
            })
        })
        .collect()
}

/// A guest's `config`, as key → value (minus `digest`, which changes with nothing).
pub(super) fn config(v: &Value) -> BTreeMap<String, String> {
    let Some(map) = v.as_object() else { return BTreeMap::new() };
    map.iter()
        .filter(|(k, _)| k.as_str() != "digest")
        .filter_map(|(k, v)| {
            let value = match v {
                Value::String(s) => clean(s),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => u8::from(*b).to_string(),
                _ => return None,
            };
            Some((clean(k), value))
        })
        .take(512)
        .collect()
}

/// `/cluster/ceph/status` → `HEALTH_OK` …
pub(super) fn ceph_health(v: &Value) -> String {
    v.get("health").and_then(|h| text(h, "status")).unwrap_or_else(|| "unknown".into())
}

/// `/nodes/N/ceph/osd`: the CRUSH tree's leaves.
pub(super) fn ceph_osds(v: &Value) -> Vec<PveCephItem> {
    fn walk(node: &Value, out: &mut Vec<PveCephItem>, depth: usize) {
        if depth > 16 {
            return;
        }
        if node.get("type").and_then(Value::as_str) == Some("osd")
            && let Some(name) = text(node, "name")
        {
            out.push(PveCephItem { name, status: text(node, "status").unwrap_or_else(|| "unknown".into()) });
        }
        for child in list(node.get("children")) {
            walk(child, out, depth + 1);
        }
    }
    let mut out = Vec::new();
    if let Some(root) = v.get("root") {
        walk(root, &mut out, 0);
    }
    out
}

/// `/nodes/N/ceph/pool` and `/ceph/fs`: one item per entry, named by `key`.
pub(super) fn ceph_named(v: &Value, key: &str) -> Vec<PveCephItem> {
    list(Some(v))
        .iter()
        .filter_map(|p| {
            let status = match (number(p, "size"), number(p, "min_size")) {
                (Some(size), Some(min)) => format!("size {size}, min {min}"),
                _ => "present".to_owned(),
            };
            Some(PveCephItem { name: text(p, key)?, status })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_403_names_the_privilege_pve_checked() {
        assert_eq!(
            privilege_hint("/nodes/pve1/disks/list", Some("Permission check failed (/nodes/pve1, Sys.Audit)")),
            "grant Sys.Audit on /nodes/pve1 (PVEAuditor has it)"
        );
        assert!(privilege_hint("/nodes/pve1/qemu/100/config", None).contains("VM.Audit"));
    }

    #[test]
    fn every_privilege_beyond_audit_is_named_propagated_or_not() {
        let v = json!({
            "/": {"Sys.Audit": 1, "VM.Audit": 1, "VM.Config.CPU": 1, "Permissions.Modify": 0},
            "/nodes/pve1": {"Sys.Console": 0},
            "/vms/100": {"VM.Allocate": 1, "VM.Monitor": 1}
        });
        assert_eq!(
            write_privileges(&v).unwrap(),
            [
                "/:Permissions.Modify",
                "/:VM.Config.CPU",
                "/nodes/pve1:Sys.Console",
                "/vms/100:VM.Allocate",
                "/vms/100:VM.Monitor"
            ]
        );
        let auditor =
            json!({"/": {"Sys.Audit": 1, "VM.Audit": 1, "Datastore.Audit": 1, "Pool.Audit": 1, "SDN.Audit": 0}});
        assert_eq!(write_privileges(&auditor).unwrap(), Vec::<String>::new());
        assert_eq!(write_privileges(&json!("garbage")), None);
        assert_eq!(write_privileges(&json!({"/": ["Sys.Modify"]})), None);
    }

    #[test]
    fn mistyped_answers_are_left_out_not_fatal() {
        let inv =
            inventory("9".into(), Some(&json!("garbage")), Some(&json!([{"node": [5]}, {}])), Some(&json!({})), "dev");
        assert!(inv.nodes.iter().all(|n| !n.name.is_empty()));
        assert_eq!(inv.cluster, "dev");
        let inv = inventory(
            "9".into(),
            None,
            None,
            Some(
                &json!([{"type": "qemu", "vmid": 5_000_000_000u64, "node": "a"}, {"type": "lxc", "vmid": 7, "node": "a", "tags": "x;y"}]),
            ),
            "dev",
        );
        assert_eq!(inv.guests.len(), 1);
        assert_eq!(inv.guests[0].tags, ["x", "y"]);
        assert!(
            ceph_osds(&json!({"root": {"children": [{"type": "osd", "name": "osd.0", "status": "up"}]}})).len() == 1
        );
        assert_eq!(
            config(&json!({"memory": 512, "digest": "abc", "name": "x\u{7}y"})).get("name").map(String::as_str),
            Some("xy")
        );
    }
}
