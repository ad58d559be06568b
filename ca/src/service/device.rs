//! The policy's view of an inventory record. A leaf: every service that asks the policy
//! about a node starts here.

use portcullis_policies::Device;
use portcullis_proto::NodeRecord;

/// The partition of a node whose record names none.
pub const DEFAULT_PARTITION: &str = "default";

/// The policy engine's view of an inventory record.
pub fn device_of(node: &NodeRecord) -> Device {
    Device {
        name: node.name.clone(),
        addresses: node.addresses.clone(),
        kind: node.kind.clone(),
        vendor: node.vendor.clone(),
        source: Some("portcullis".to_owned()),
        agent: node.agent.clone(),
        gateway: None,
        // A node enrolled or added without a partition is in the `default` one, so a
        // rule scoped to `partitions = ["default"]` (the shipped example) covers it.
        partition: Some(node.partition.clone().unwrap_or_else(|| DEFAULT_PARTITION.to_owned())),
        tags: node.tags.clone(),
        metadata: node.metadata.clone(),
        ssh_port: node.ssh_port,
    }
}
