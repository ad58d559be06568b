//! `ip -o link`: one interface per line, continuation lines folded in with `\`.
//!
//! `N: NAME[@PARENT]: <FLAGS> mtu M ... state S ... link/TYPE [ADDR] ... [altname A]...`
//! Keys this crate relies on must appear once; unknown tokens are skipped. The loopback
//! interface is dropped: it says nothing about the hardware.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{Command, ParseError};
use crate::text::{MAX_INTERFACES, decode, numbered, set_once};

const C: Command = Command::IpLink;
/// Kernel limit for interface names (IFNAMSIZ - 1) and alternative names (ALTIFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;
const MAX_ALTNAME: usize = 127;

/// Interfaces by name; a `BTreeMap` so serialisation and drift are deterministic.
pub type Links = BTreeMap<String, Link>;

/// One interface as `ip -o link` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub name: String,
    /// The part after `@` (`vmbr0.100@vmbr0`, `veth0@if12`); `@NONE` is `None`.
    pub parent: Option<String>,
    /// `link/ether` address, lower case; `None` for other link types.
    pub mac: Option<String>,
    /// Permanent address of a bond member whose current address was rewritten.
    pub permaddr: Option<String>,
    pub mtu: u32,
    pub state: LinkState,
    /// The bond or bridge this interface is enslaved to.
    pub master: Option<String>,
    pub altnames: BTreeSet<String>,
}

/// RFC 2863 operational state as printed by iproute2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Up,
    Down,
    Unknown,
    LowerLayerDown,
    Dormant,
    NotPresent,
    Testing,
}

impl LinkState {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "UP" => Self::Up,
            "DOWN" => Self::Down,
            "UNKNOWN" => Self::Unknown,
            "LOWERLAYERDOWN" => Self::LowerLayerDown,
            "DORMANT" => Self::Dormant,
            "NOTPRESENT" => Self::NotPresent,
            "TESTING" => Self::Testing,
            _ => return None,
        })
    }

    /// The name iproute2 prints, used in drift reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "UP",
            Self::Down => "DOWN",
            Self::Unknown => "UNKNOWN",
            Self::LowerLayerDown => "LOWERLAYERDOWN",
            Self::Dormant => "DORMANT",
            Self::NotPresent => "NOTPRESENT",
            Self::Testing => "TESTING",
        }
    }
}

/// Parses captured `ip -o link` (or `ip -o link show`) output.
pub fn parse_ip_link(input: &[u8]) -> Result<Links, ParseError> {
    let mut links = Links::new();
    for (line, raw) in numbered(decode(C, input)?) {
        if raw.trim().is_empty() {
            continue;
        }
        let Some(link) = parse_line(line, raw)? else { continue };
        if links.len() >= MAX_INTERFACES {
            return Err(ParseError::TooManyInterfaces { command: C, max: MAX_INTERFACES });
        }
        if links.contains_key(&link.name) {
            return Err(ParseError::DuplicateInterface { command: C, line, name: link.name });
        }
        links.insert(link.name.clone(), link);
    }
    Ok(links)
}

fn malformed(line: usize, reason: &'static str) -> ParseError {
    ParseError::Malformed { command: C, line, reason }
}

fn invalid(line: usize, field: &'static str) -> ParseError {
    ParseError::InvalidValue { command: C, line, field }
}

/// One line; `None` for the loopback interface.
fn parse_line(line: usize, raw: &str) -> Result<Option<Link>, ParseError> {
    let (index, rest) = raw.split_once(": ").ok_or_else(|| malformed(line, "expected `INDEX: NAME: <FLAGS>`"))?;
    if index.is_empty() || index.len() > 10 || !index.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(line, "interface index is not a number"));
    }
    let (full_name, rest) = rest.split_once(": ").ok_or_else(|| malformed(line, "expected `INDEX: NAME: <FLAGS>`"))?;
    let (name, parent) = match full_name.split_once('@') {
        Some((name, "NONE")) => (name, None),
        Some((name, parent)) => (name, Some(ifname(line, "parent", parent, MAX_IFNAME)?)),
        None => (full_name, None),
    };
    let name = ifname(line, "name", name, MAX_IFNAME)?;
    let rest = rest.strip_prefix('<').ok_or_else(|| malformed(line, "flags must follow the name in `<...>`"))?;
    let (flags, rest) = rest.split_once('>').ok_or_else(|| malformed(line, "unterminated flags"))?;
    if !flags.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b',' || b == b'-') {
        return Err(invalid(line, "flags"));
    }

    let (mut mtu, mut state, mut master, mut mac, mut permaddr) = (None, None, None, None, None);
    let mut altnames = BTreeSet::new();
    let mut loopback = name == "lo";
    let mut non_ether = false;
    // `ip -o` folds continuation lines into one with a backslash.
    let folded = rest.replace('\\', " ");
    let mut tokens = folded.split_whitespace();
    while let Some(token) = tokens.next() {
        let mut value = |field: &'static str| tokens.next().ok_or_else(|| invalid(line, field));
        match token {
            "mtu" => {
                let v = value("mtu")?;
                let parsed = if v.bytes().all(|b| b.is_ascii_digit()) { v.parse::<u32>().ok() } else { None };
                set_once(&mut mtu, parsed.ok_or_else(|| invalid(line, "mtu"))?, C, line, "mtu")?;
            }
            "state" => {
                let v = LinkState::parse(value("state")?).ok_or_else(|| invalid(line, "state"))?;
                set_once(&mut state, v, C, line, "state")?;
            }
            "master" => {
                let v = ifname(line, "master", value("master")?, MAX_IFNAME)?;
                set_once(&mut master, v, C, line, "master")?;
            }
            "link/ether" => {
                let v = mac_address(value("link/ether")?).ok_or_else(|| invalid(line, "link/ether"))?;
                set_once(&mut mac, v, C, line, "link/ether")?;
            }
            "link/loopback" => loopback = true,
            link_type if link_type.starts_with("link/") => non_ether = true,
            // Only an Ethernet link's permanent address is a MAC; tunnels print IPs here.
            "permaddr" if non_ether => {
                value("permaddr")?;
            }
            "permaddr" => {
                let v = mac_address(value("permaddr")?).ok_or_else(|| invalid(line, "permaddr"))?;
                set_once(&mut permaddr, v, C, line, "permaddr")?;
            }
            "altname" => {
                let v = ifname(line, "altname", value("altname")?, MAX_ALTNAME)?;
                if !altnames.insert(v) {
                    return Err(ParseError::DuplicateField { command: C, line, field: "altname" });
                }
            }
            _ => {}
        }
    }
    if loopback {
        return Ok(None);
    }
    let mtu = mtu.ok_or(ParseError::MissingField { command: C, field: "mtu" })?;
    let state = state.ok_or(ParseError::MissingField { command: C, field: "state" })?;
    Ok(Some(Link { name, parent, mac, permaddr, mtu, state, master, altnames }))
}

/// A kernel-valid interface name, further restricted to printable ASCII.
fn ifname(line: usize, field: &'static str, name: &str, max: usize) -> Result<String, ParseError> {
    if name.len() > max {
        return Err(ParseError::FieldTooLong { command: C, line, field, max });
    }
    let valid = !name.is_empty()
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b':' | b'@' | b'\\'));
    if valid { Ok(name.to_owned()) } else { Err(invalid(line, field)) }
}

/// `aa:bb:cc:dd:ee:ff`, normalised to lower case.
fn mac_address(s: &str) -> Option<String> {
    let octets: Vec<&str> = s.split(':').collect();
    let valid = octets.len() == 6 && octets.iter().all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
    valid.then(|| s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs() {
        assert!(ifname(1, "name", "vmbr0.100", MAX_IFNAME).is_ok());
        assert!(ifname(1, "name", "enp24s0f0np0", MAX_IFNAME).is_ok());
        assert!(matches!(ifname(1, "name", "a-very-long-ifname", MAX_IFNAME), Err(ParseError::FieldTooLong { .. })));
        assert!(ifname(1, "name", "a/b", MAX_IFNAME).is_err());
        assert!(ifname(1, "name", "", MAX_IFNAME).is_err());
        assert!(ifname(1, "name", "..", MAX_IFNAME).is_err());
        assert_eq!(mac_address("24:6E:96:12:34:56").as_deref(), Some("24:6e:96:12:34:56"));
        assert_eq!(mac_address("24:6e:96:12:34"), None);
        assert_eq!(mac_address("24:6e:96:12:34:5g"), None);
    }

    #[test]
    fn repeated_key_and_bad_state_are_refused() {
        let twice = "2: eno1: <UP> mtu 1500 mtu 9000 state UP\n";
        assert!(matches!(parse_ip_link(twice.as_bytes()), Err(ParseError::DuplicateField { field: "mtu", .. })));
        let state = "2: eno1: <UP> mtu 1500 state SIDEWAYS\n";
        assert!(matches!(parse_ip_link(state.as_bytes()), Err(ParseError::InvalidValue { field: "state", .. })));
        let no_mtu = "2: eno1: <UP> state UP\n";
        assert!(matches!(parse_ip_link(no_mtu.as_bytes()), Err(ParseError::MissingField { field: "mtu", .. })));
    }

    #[test]
    fn interface_count_is_capped() {
        let mut out = String::new();
        for i in 0..=MAX_INTERFACES {
            out.push_str(&format!("{i}: tap{i}i0: <UP> mtu 1500 state UP\n"));
        }
        assert_eq!(
            parse_ip_link(out.as_bytes()),
            Err(ParseError::TooManyInterfaces { command: C, max: MAX_INTERFACES })
        );
    }
}
