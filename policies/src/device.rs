//! The device attributes that target queries are evaluated against.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A device as the inventory describes it. Every attribute except the name is optional:
/// a query filter on a missing attribute is false (and its negation true).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Device {
    /// Device name (SRQL key `name`).
    pub name: String,
    /// All addresses of the device (SRQL key `ip` matches any of them).
    pub addresses: Vec<String>,
    /// Device type (SRQL key `type`).
    pub kind: Option<String>,
    /// SRQL key `vendor`.
    pub vendor: Option<String>,
    /// Discovery source (SRQL key `source`).
    pub source: Option<String>,
    /// Agent that reaches the device (SRQL key `agent`).
    pub agent: Option<String>,
    /// Gateway in front of the agent (SRQL key `gateway`).
    pub gateway: Option<String>,
    /// Network partition (SRQL key `partition`).
    pub partition: Option<String>,
    /// SRQL keys `tags.<k>`.
    pub tags: BTreeMap<String, String>,
    /// SRQL keys `metadata.<k>`.
    pub metadata: BTreeMap<String, String>,
    /// The port the device's sshd listens on (`None`: 22). Not an SRQL key: it is the
    /// port a rule without `allowed_ports` opens in jump mode, and the one where a
    /// certificate's critical options hold.
    pub ssh_port: Option<u16>,
}

/// The SSH port of a device that does not say otherwise.
pub const DEFAULT_SSH_PORT: u16 = 22;

impl Device {
    pub fn ssh_port_or_default(&self) -> u16 {
        self.ssh_port.unwrap_or(DEFAULT_SSH_PORT)
    }
}
