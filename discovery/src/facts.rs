//! The combined facts for one node, and drift between two runs.
//!
//! Drift compares a flat, ordered view of the facts (`system.serial`, `nic.eno1.mac`, …),
//! so two runs over identical output yield no changes, and a report lists changes in a
//! stable order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dmi::{ChassisInfo, SystemInfo};
use crate::error::{Command, ParseError};
use crate::ethtool::{DriverInfo, LinkSettings};
use crate::link::{Link, Links};

/// Everything discovery learned about one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardwareFacts {
    pub system: SystemInfo,
    pub chassis: ChassisInfo,
    pub nics: BTreeMap<String, Nic>,
}

/// One interface: `ip -o link`, plus `ethtool` results when they were collected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub link: Link,
    pub settings: Option<LinkSettings>,
    pub driver: Option<DriverInfo>,
}

/// One field that differs between two runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum Change {
    Added { field: String, value: String },
    Removed { field: String, value: String },
    Changed { field: String, old: String, new: String },
}

impl Change {
    /// The dotted field path, e.g. `nic.eno1.mac`.
    pub fn field(&self) -> &str {
        match self {
            Change::Added { field, .. } | Change::Removed { field, .. } | Change::Changed { field, .. } => field,
        }
    }
}

impl HardwareFacts {
    /// Facts from the two `dmidecode` sections and the interface list.
    pub fn new(system: SystemInfo, chassis: ChassisInfo, links: Links) -> Self {
        let nics = links.into_iter().map(|(name, link)| (name, Nic { link, settings: None, driver: None })).collect();
        Self { system, chassis, nics }
    }

    /// Whether the report had no SMBIOS facts at all: on hardware, a node whose sudoers
    /// drop-in does not let the discovery account run dmidecode.
    pub fn lacks_dmi(&self) -> bool {
        self.system == SystemInfo::default() && self.chassis == ChassisInfo::default()
    }

    /// Attaches `ethtool IFACE` results; the interface must be one `ip -o link` listed.
    pub fn set_link_settings(&mut self, iface: &str, settings: LinkSettings) -> Result<(), ParseError> {
        self.nic_mut(Command::Ethtool, iface)?.settings = Some(settings);
        Ok(())
    }

    /// Attaches `ethtool -i IFACE` results; the interface must be one `ip -o link` listed.
    pub fn set_driver(&mut self, iface: &str, driver: DriverInfo) -> Result<(), ParseError> {
        self.nic_mut(Command::EthtoolDriver, iface)?.driver = Some(driver);
        Ok(())
    }

    fn nic_mut(&mut self, command: Command, iface: &str) -> Result<&mut Nic, ParseError> {
        let name = || iface.chars().take(crate::MAX_FIELD_BYTES).collect();
        self.nics.get_mut(iface).ok_or_else(|| ParseError::UnknownInterface { command, name: name() })
    }

    /// Every known field as `path → value`, in a stable order; absent fields are left out.
    /// Paths are `system.KEY`, `chassis.KEY` and `nic.NAME.KEY`; NAME may itself contain dots
    /// (`vmbr0.100`) but KEY never does, so the last segment is always the key.
    pub fn fields(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut put = |path: String, value: Option<String>| {
            if let Some(value) = value {
                out.insert(path, value);
            }
        };
        let s = &self.system;
        for (key, value) in [
            ("manufacturer", &s.manufacturer),
            ("product", &s.product),
            ("version", &s.version),
            ("serial", &s.serial),
            ("uuid", &s.uuid),
            ("sku", &s.sku),
            ("family", &s.family),
        ] {
            put(format!("system.{key}"), value.clone());
        }
        let c = &self.chassis;
        for (key, value) in [
            ("manufacturer", &c.manufacturer),
            ("type", &c.chassis_type),
            ("serial", &c.serial),
            ("asset_tag", &c.asset_tag),
        ] {
            put(format!("chassis.{key}"), value.clone());
        }
        for (name, nic) in &self.nics {
            let l = &nic.link;
            let altnames = (!l.altnames.is_empty()).then(|| l.altnames.iter().cloned().collect::<Vec<_>>().join(","));
            let settings = nic.settings.as_ref();
            let driver = nic.driver.as_ref();
            for (key, value) in [
                ("mac", l.mac.clone()),
                ("permaddr", l.permaddr.clone()),
                ("parent", l.parent.clone()),
                ("master", l.master.clone()),
                ("mtu", Some(l.mtu.to_string())),
                ("state", Some(l.state.as_str().to_owned())),
                ("altnames", altnames),
                ("speed_mbps", settings.and_then(|s| s.speed_mbps).map(|v| v.to_string())),
                ("duplex", settings.and_then(|s| s.duplex).map(|d| d.as_str().to_owned())),
                ("link_detected", settings.and_then(|s| s.link_detected).map(|v| v.to_string())),
                ("driver", driver.map(|d| d.driver.clone())),
                ("firmware_version", driver.and_then(|d| d.firmware_version.clone())),
                ("bus_info", driver.and_then(|d| d.bus_info.clone())),
            ] {
                put(format!("nic.{name}.{key}"), value);
            }
        }
        out
    }
}

/// What changed from `old` to `new`, ordered by field path; empty when nothing did.
pub fn drift(old: &HardwareFacts, new: &HardwareFacts) -> Vec<Change> {
    let (old, mut new) = (old.fields(), new.fields());
    let mut changes = Vec::new();
    for (field, old_value) in old {
        match new.remove(&field) {
            None => changes.push(Change::Removed { field, value: old_value }),
            Some(new_value) if new_value != old_value => {
                changes.push(Change::Changed { field, old: old_value, new: new_value })
            }
            Some(_) => {}
        }
    }
    changes.extend(new.into_iter().map(|(field, value)| Change::Added { field, value }));
    changes.sort_by(|a, b| a.field().cmp(b.field()));
    changes
}
