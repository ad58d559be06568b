//! Proxmox VE guests as policy devices (rules and the preview target them; a console
//! request for one gets the explicit unsupported answer).

use super::Proxmox;
use crate::error::CaError;
use crate::store;
use portcullis_policies::Device;

/// A guest's device name: `vm100.alpha` (QEMU) or `ct101.alpha` (LXC) — PVE's own "VM 100"
/// and "CT 101", qualified by the cluster. `None` when the cluster's name would make an
/// invalid device name.
fn guest_device_name(g: &store::GuestRow) -> Option<String> {
    let prefix = if g.kind == "lxc" { "ct" } else { "vm" };
    let name = format!("{prefix}{}.{}", g.vmid, g.cluster);
    crate::validate::node_name(&name).is_ok().then_some(name)
}

/// A guest as the policy sees it: kind `vm` (QEMU) or `lxc`, its cluster's agent, its PVE
/// tags as `tags.<tag>:true`, and `metadata.vmid`, `.cluster`, `.node` (its parent),
/// `.status`.
fn guest_device(g: &store::GuestRow) -> Option<Device> {
    let metadata = [
        ("vmid", g.vmid.to_string()),
        ("cluster", g.cluster.clone()),
        ("node", g.node.clone()),
        ("status", g.status.clone()),
    ];
    Some(Device {
        name: guest_device_name(g)?,
        kind: Some(if g.kind == "lxc" { "lxc" } else { "vm" }.to_owned()),
        vendor: Some("proxmox".to_owned()),
        source: Some("proxmox".to_owned()),
        agent: Some(g.agent.clone()),
        partition: Some(crate::service::device::DEFAULT_PARTITION.to_owned()),
        tags: g.tags.iter().map(|t| (t.clone(), "true".to_owned())).collect(),
        metadata: metadata.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ..Device::default()
    })
}

impl Proxmox {
    /// Every collected guest as a device.
    pub(crate) async fn guest_devices(&self) -> Result<Vec<(store::GuestRow, Device)>, CaError> {
        Ok(self.core.store.guests().await?.into_iter().filter_map(|g| guest_device(&g).map(|d| (g, d))).collect())
    }
}
