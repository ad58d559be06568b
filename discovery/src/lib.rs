//! Hardware discovery for Portcullis: strict parsers for the output of the fixed discovery
//! commands (`dmidecode -t 1`, `dmidecode -t 3`, `ip -o link`, `ethtool IFACE`,
//! `ethtool -i IFACE`), the [`HardwareFacts`] they combine into, and [`drift`] between two
//! runs (empty when nothing changed, so a repeated run makes zero changes), and
//! [`parse_report`], which splits the discovery command's delimited output into them.
//!
//! Everything here is pure: output captured elsewhere is handed in as bytes. The crate must
//! never perform I/O (no network, filesystem, process, clock) and must never panic: the
//! bytes come from a node that may be compromised. Input over [`MAX_INPUT_BYTES`], binary
//! data, over-long fields and implausible interface counts are refused with a
//! [`ParseError`] that never echoes the peer's raw text.

mod dmi;
mod error;
mod ethtool;
mod facts;
mod link;
mod report;
mod text;

pub use dmi::{ChassisInfo, SystemInfo, parse_dmi_chassis, parse_dmi_system};
pub use error::{Command, ParseError};
pub use ethtool::{DriverInfo, Duplex, LinkSettings, parse_ethtool, parse_ethtool_driver};
pub use facts::{Change, HardwareFacts, Nic, drift};
pub use link::{Link, LinkState, Links, parse_ip_link};
pub use report::{MAX_REPORT_BYTES, REPORT_END, REPORT_HEADER, ReportError, parse_report};
pub use text::{MAX_FIELD_BYTES, MAX_INPUT_BYTES, MAX_INTERFACES};
