//! `ethtool IFACE` (negotiated link settings) and `ethtool -i IFACE` (driver information).

use serde::{Deserialize, Serialize};

use crate::error::{Command, ParseError};
use crate::text::{bounded, decode, meaningful, numbered, set_once};

/// Negotiated settings from `ethtool IFACE`; `None` where ethtool reports `Unknown!` or
/// omits the line (virtual NICs, links that are down).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSettings {
    pub speed_mbps: Option<u32>,
    pub duplex: Option<Duplex>,
    pub link_detected: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Duplex {
    Full,
    Half,
}

impl Duplex {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Half => "half",
        }
    }
}

/// Driver information from `ethtool -i IFACE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverInfo {
    pub driver: String,
    pub firmware_version: Option<String>,
    /// PCI address such as `0000:18:00.0`; `None` for virtual interfaces.
    pub bus_info: Option<String>,
}

/// Parses captured `ethtool IFACE` output, which must be about `expected_iface`: output
/// for another interface is refused so it cannot be attributed to the wrong NIC.
pub fn parse_ethtool(expected_iface: &str, input: &[u8]) -> Result<LinkSettings, ParseError> {
    const C: Command = Command::Ethtool;
    let mut lines = numbered(decode(C, input)?).filter(|(_, l)| !l.trim().is_empty());
    let header = lines.next().map(|(_, l)| l.trim_end());
    let Some(iface) = header.and_then(|h| h.strip_prefix("Settings for ")).and_then(|h| h.strip_suffix(':')) else {
        return Err(ParseError::MissingSection { command: C, header: "Settings for IFACE:" });
    };
    if iface != expected_iface {
        let expected = expected_iface.chars().take(crate::MAX_FIELD_BYTES).collect();
        return Err(ParseError::InterfaceMismatch { command: C, expected });
    }
    let (mut speed, mut duplex, mut link) = (None, None, None);
    for (line, raw) in lines {
        let Some(field) = raw.strip_prefix('\t') else {
            return Err(ParseError::Malformed { command: C, line, reason: "unindented line after the header" });
        };
        if field.starts_with([' ', '\t']) {
            continue; // continuation of a list such as "Supported link modes"
        }
        let Some((key, value)) = field.split_once(':') else { continue };
        let value = bounded(C, line, "value", value.trim())?;
        let invalid = |field| ParseError::InvalidValue { command: C, line, field };
        match key {
            "Speed" => {
                let v = if value.starts_with("Unknown") {
                    None
                } else {
                    let digits = value.strip_suffix("Mb/s").ok_or_else(|| invalid("Speed"))?;
                    let ok = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
                    Some(ok.then(|| digits.parse::<u32>().ok()).flatten().ok_or_else(|| invalid("Speed"))?)
                };
                set_once(&mut speed, v, C, line, "Speed")?;
            }
            "Duplex" => {
                let v = match value {
                    "Full" => Some(Duplex::Full),
                    "Half" => Some(Duplex::Half),
                    v if v.starts_with("Unknown") => None,
                    _ => return Err(invalid("Duplex")),
                };
                set_once(&mut duplex, v, C, line, "Duplex")?;
            }
            "Link detected" => {
                let v = match value {
                    "yes" => true,
                    "no" => false,
                    _ => return Err(invalid("Link detected")),
                };
                set_once(&mut link, v, C, line, "Link detected")?;
            }
            _ => {}
        }
    }
    Ok(LinkSettings { speed_mbps: speed.flatten(), duplex: duplex.flatten(), link_detected: link })
}

/// Parses captured `ethtool -i IFACE` output.
pub fn parse_ethtool_driver(input: &[u8]) -> Result<DriverInfo, ParseError> {
    const C: Command = Command::EthtoolDriver;
    let (mut driver, mut firmware, mut bus) = (None, None, None);
    for (line, raw) in numbered(decode(C, input)?) {
        if raw.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = raw.split_once(':').filter(|(k, _)| !k.is_empty() && !k.starts_with([' ', '\t']))
        else {
            return Err(ParseError::Malformed { command: C, line, reason: "expected `key: value`" });
        };
        match key {
            "driver" => set_once(&mut driver, meaningful(C, line, "driver", value)?, C, line, "driver")?,
            "firmware-version" => {
                set_once(&mut firmware, meaningful(C, line, "firmware-version", value)?, C, line, "firmware-version")?
            }
            "bus-info" => set_once(&mut bus, meaningful(C, line, "bus-info", value)?, C, line, "bus-info")?,
            _ => {}
        }
    }
    let driver = driver.flatten().ok_or(ParseError::MissingField { command: C, field: "driver" })?;
    Ok(DriverInfo { driver, firmware_version: firmware.flatten(), bus_info: bus.flatten() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_forms() {
        let parse = |speed: &str| parse_ethtool("eth0", format!("Settings for eth0:\n\tSpeed: {speed}\n").as_bytes());
        assert_eq!(parse("25000Mb/s").map(|s| s.speed_mbps), Ok(Some(25000)));
        assert_eq!(parse("Unknown!").map(|s| s.speed_mbps), Ok(None));
        assert!(matches!(parse("fast"), Err(ParseError::InvalidValue { field: "Speed", line: 2, .. })));
        assert!(matches!(parse("99999999999Mb/s"), Err(ParseError::InvalidValue { field: "Speed", .. })));
        assert!(matches!(parse("-1Mb/s"), Err(ParseError::InvalidValue { field: "Speed", .. })));
    }

    #[test]
    fn header_must_match_the_interface_asked_for() {
        let out = b"Settings for eno2:\n\tLink detected: yes\n";
        assert!(matches!(parse_ethtool("eno1", out), Err(ParseError::InterfaceMismatch { .. })));
        assert!(matches!(parse_ethtool("eno1", b"\tLink detected: yes\n"), Err(ParseError::MissingSection { .. })));
    }

    #[test]
    fn driver_is_required() {
        let out = b"version: 1.0\nfirmware-version: 1.2\n";
        assert_eq!(
            parse_ethtool_driver(out),
            Err(ParseError::MissingField { command: Command::EthtoolDriver, field: "driver" })
        );
        assert!(matches!(parse_ethtool_driver(b"driver ixgbe\n"), Err(ParseError::Malformed { line: 1, .. })));
    }
}
