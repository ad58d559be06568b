//! The discovery command's whole output: delimited sections, one per command, split and
//! parsed into [`HardwareFacts`] restricted to physical NICs.
//!
//! ```text
//! @@portcullis-discovery v1
//! @@section dmidecode-t1
//! …`dmidecode -t 1` output…
//! @@section dmidecode-t3
//! @@section ip-link
//! @@section ethtool eno1
//! @@section ethtool-i eno1
//! @@end
//! ```
//!
//! Marker lines start with `@@`, which no line of these commands' output does. The header
//! must come first and `@@end` last, so a truncated capture is refused rather than read as
//! "the NICs went away". Every section but the per-interface ones must appear exactly once.
//!
//! Which interfaces count: only those with an Ethernet address (`link/ether`) whose
//! `ethtool -i` names a driver that is not a virtual one (tun, veth, bridge, bonding, …).
//! On a Proxmox host, guests come and go as `tap*`, `veth*`, `fwbr*`, `fwpr*`, `fwln*` and
//! bridges as `vmbr*`; recording them would report drift at every VM start. The discovery
//! script runs `ethtool` only for interfaces that have a device behind them in sysfs, and
//! this filter holds even if a node sends more.

use std::collections::BTreeSet;

use crate::error::ParseError;
use crate::ethtool::{parse_ethtool, parse_ethtool_driver};
use crate::facts::HardwareFacts;
use crate::link::parse_ip_link;
use crate::{ChassisInfo, SystemInfo, parse_dmi_chassis, parse_dmi_system};

/// The first line of a discovery report.
pub const REPORT_HEADER: &str = "@@portcullis-discovery v1";
/// The last line of a discovery report.
pub const REPORT_END: &str = "@@end";
/// Largest whole report accepted (1 MiB); the runner caps its capture at the same size.
pub const MAX_REPORT_BYTES: usize = 1 << 20;

/// Drivers of software interfaces: never hardware, whatever their name.
const VIRTUAL_DRIVERS: &[&str] = &[
    "tun",
    "veth",
    "bridge",
    "bonding",
    "802.1Q VLAN Support",
    "8021q",
    "openvswitch",
    "vxlan",
    "macvlan",
    "macvtap",
    "ipvlan",
    "dummy",
    "team",
    "wireguard",
    "vrf",
    "geneve",
    "gre",
    "ip_gre",
    "ipip",
    "sit",
    "nlmon",
];

/// Why a report was refused. Never carries the peer's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("report is {len} bytes, over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("report is not UTF-8")]
    NotUtf8,
    #[error("report does not start with the discovery header")]
    NoHeader,
    #[error("report does not end with `@@end` (truncated?)")]
    Truncated,
    #[error("report line {line}: unknown or malformed section marker")]
    UnknownSection { line: usize },
    #[error("report line {line}: section appears twice")]
    DuplicateSection { line: usize },
    #[error("report has no `{0}` section")]
    MissingSection(&'static str),
    #[error(transparent)]
    Parse(#[from] ParseError),
}

impl ReportError {
    /// A stable code for audit records.
    pub fn code(&self) -> &'static str {
        match self {
            ReportError::TooLarge { .. } => "output_too_large",
            ReportError::Parse(ParseError::TooLarge { .. }) => "output_too_large",
            ReportError::Truncated => "output_truncated",
            _ => "output_invalid",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    DmiSystem,
    DmiChassis,
    IpLink,
    Ethtool(String),
    EthtoolDriver(String),
}

fn section_of(marker: &str) -> Option<Section> {
    let rest = marker.strip_prefix("@@section ")?;
    let (kind, iface) = match rest.split_once(' ') {
        Some((k, i)) => (k, Some(i)),
        None => (rest, None),
    };
    let valid_iface =
        |i: &str| !i.is_empty() && i.len() <= 15 && i.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    Some(match (kind, iface) {
        ("dmidecode-t1", None) => Section::DmiSystem,
        ("dmidecode-t3", None) => Section::DmiChassis,
        ("ip-link", None) => Section::IpLink,
        ("ethtool", Some(i)) if valid_iface(i) => Section::Ethtool(i.to_owned()),
        ("ethtool-i", Some(i)) if valid_iface(i) => Section::EthtoolDriver(i.to_owned()),
        _ => return None,
    })
}

/// Splits and parses a whole report. Strict: any malformed section refuses the report.
pub fn parse_report(input: &[u8]) -> Result<HardwareFacts, ReportError> {
    if input.len() > MAX_REPORT_BYTES {
        return Err(ReportError::TooLarge { len: input.len(), max: MAX_REPORT_BYTES });
    }
    let text = std::str::from_utf8(input).map_err(|_| ReportError::NotUtf8)?;
    let mut lines = text.split_inclusive('\n').enumerate().map(|(i, l)| (i + 1, l));
    match lines.next() {
        Some((_, l)) if l.trim_end_matches(['\n', '\r']) == REPORT_HEADER => {}
        _ => return Err(ReportError::NoHeader),
    }
    let mut sections: Vec<(Section, String)> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut ended = false;
    for (line_no, line) in lines {
        let bare = line.trim_end_matches(['\n', '\r']);
        if ended {
            if bare.trim().is_empty() {
                continue;
            }
            return Err(ReportError::Truncated);
        }
        if bare == REPORT_END {
            ended = true;
            continue;
        }
        if bare.starts_with("@@") {
            let section = section_of(bare).ok_or(ReportError::UnknownSection { line: line_no })?;
            if !seen.insert(section.clone()) {
                return Err(ReportError::DuplicateSection { line: line_no });
            }
            sections.push((section, String::new()));
            continue;
        }
        match sections.last_mut() {
            Some((_, body)) => body.push_str(line),
            None if bare.trim().is_empty() => {}
            None => return Err(ReportError::UnknownSection { line: line_no }),
        }
    }
    if !ended {
        return Err(ReportError::Truncated);
    }
    let body = |wanted: Section, name: &'static str| {
        sections.iter().find(|(s, _)| *s == wanted).map(|(_, b)| b.as_bytes()).ok_or(ReportError::MissingSection(name))
    };
    // `dmidecode` that printed nothing (`sudo -n` not permitted, dmidecode not installed,
    // no SMBIOS in a container) gives no system facts, like an empty `ethtool`; the NICs
    // still count (see [`HardwareFacts::lacks_dmi`]). What it did print is parsed strictly.
    let system = match body(Section::DmiSystem, "dmidecode-t1")? {
        blank if blank.trim_ascii().is_empty() => SystemInfo::default(),
        text => parse_dmi_system(text)?,
    };
    let chassis = match body(Section::DmiChassis, "dmidecode-t3")? {
        blank if blank.trim_ascii().is_empty() => ChassisInfo::default(),
        text => parse_dmi_chassis(text)?,
    };
    let links = parse_ip_link(body(Section::IpLink, "ip-link")?)?;
    let mut facts = HardwareFacts::new(system, chassis, links);
    let mut physical = BTreeSet::new();
    for (section, text) in &sections {
        match section {
            Section::EthtoolDriver(iface) if !text.trim().is_empty() => {
                let driver = parse_ethtool_driver(text.as_bytes())?;
                if !VIRTUAL_DRIVERS.contains(&driver.driver.as_str()) {
                    physical.insert(iface.clone());
                }
                facts.set_driver(iface, driver)?;
            }
            // Unprivileged or unsupported: `ethtool` printed nothing useful. Not a fact.
            Section::Ethtool(iface) if !text.trim().is_empty() => {
                let settings = parse_ethtool(iface, text.as_bytes())?;
                facts.set_link_settings(iface, settings)?;
            }
            _ => {}
        }
    }
    facts.nics.retain(|name, nic| physical.contains(name) && nic.link.mac.is_some());
    Ok(facts)
}
