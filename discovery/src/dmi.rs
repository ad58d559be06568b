//! `dmidecode -t 1` (System Information) and `dmidecode -t 3` (Chassis Information).
//!
//! Only the first section with the expected header is read; its fields are single-tab
//! indented `Key: Value` lines, and deeper-indented lines are list items of the previous
//! key. Unknown keys are ignored, known keys may appear once, placeholders become `None`.

use serde::{Deserialize, Serialize};

use crate::error::{Command, ParseError};
use crate::text::{decode, meaningful, numbered};

/// SMBIOS type 1. Every field is `None` when absent or a vendor placeholder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemInfo {
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub version: Option<String>,
    pub serial: Option<String>,
    /// Lower-case canonical form; all-zero and all-`f` UUIDs are treated as unset.
    pub uuid: Option<String>,
    pub sku: Option<String>,
    pub family: Option<String>,
}

/// SMBIOS type 3. Every field is `None` when absent or a vendor placeholder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChassisInfo {
    pub manufacturer: Option<String>,
    #[serde(rename = "type")]
    pub chassis_type: Option<String>,
    pub serial: Option<String>,
    pub asset_tag: Option<String>,
}

/// Parses captured `dmidecode -t 1` output.
pub fn parse_dmi_system(input: &[u8]) -> Result<SystemInfo, ParseError> {
    const C: Command = Command::DmiSystem;
    let fields = section(C, decode(C, input)?, "System Information")?;
    let mut info = SystemInfo::default();
    let mut seen = Seen::default();
    for (line, key, value) in fields {
        let (slot, name) = match key {
            "Manufacturer" => (&mut info.manufacturer, "Manufacturer"),
            "Product Name" => (&mut info.product, "Product Name"),
            "Version" => (&mut info.version, "Version"),
            "Serial Number" => (&mut info.serial, "Serial Number"),
            "SKU Number" => (&mut info.sku, "SKU Number"),
            "Family" => (&mut info.family, "Family"),
            "UUID" => {
                seen.mark(C, line, "UUID")?;
                info.uuid = uuid(C, line, value)?;
                continue;
            }
            _ => continue,
        };
        seen.mark(C, line, name)?;
        *slot = meaningful(C, line, name, value)?;
    }
    seen.require_any(C)?;
    Ok(info)
}

/// Parses captured `dmidecode -t 3` output.
pub fn parse_dmi_chassis(input: &[u8]) -> Result<ChassisInfo, ParseError> {
    const C: Command = Command::DmiChassis;
    let fields = section(C, decode(C, input)?, "Chassis Information")?;
    let mut info = ChassisInfo::default();
    let mut seen = Seen::default();
    for (line, key, value) in fields {
        let (slot, name) = match key {
            "Manufacturer" => (&mut info.manufacturer, "Manufacturer"),
            "Type" => (&mut info.chassis_type, "Type"),
            "Serial Number" => (&mut info.serial, "Serial Number"),
            "Asset Tag" => (&mut info.asset_tag, "Asset Tag"),
            _ => continue,
        };
        seen.mark(C, line, name)?;
        *slot = meaningful(C, line, name, value)?;
    }
    seen.require_any(C)?;
    Ok(info)
}

/// Known keys already read, so a repeated key is refused instead of overwriting.
#[derive(Default)]
struct Seen(Vec<&'static str>);

impl Seen {
    fn mark(&mut self, command: Command, line: usize, field: &'static str) -> Result<(), ParseError> {
        if self.0.contains(&field) {
            return Err(ParseError::DuplicateField { command, line, field });
        }
        self.0.push(field);
        Ok(())
    }

    fn require_any(&self, command: Command) -> Result<(), ParseError> {
        if self.0.is_empty() { Err(ParseError::MissingField { command, field: "Manufacturer" }) } else { Ok(()) }
    }
}

/// The `(line, key, value)` fields of the first section headed exactly `header`.
fn section<'a>(
    command: Command,
    text: &'a str,
    header: &'static str,
) -> Result<Vec<(usize, &'a str, &'a str)>, ParseError> {
    let mut lines = numbered(text).skip_while(|(_, l)| l.trim_end() != header);
    if lines.next().is_none() {
        return Err(ParseError::MissingSection { command, header });
    }
    let mut fields = Vec::new();
    for (line, raw) in lines {
        if raw.trim().is_empty() || !raw.starts_with([' ', '\t']) {
            break;
        }
        if raw.starts_with("\t\t") {
            continue; // a list item of the previous key (e.g. "Contained Elements")
        }
        let Some((key, value)) = raw.trim().split_once(':') else {
            return Err(ParseError::Malformed { command, line, reason: "field line without `:`" });
        };
        fields.push((line, key.trim(), value.trim()));
    }
    Ok(fields)
}

/// Validates and canonicalises an SMBIOS UUID.
fn uuid(command: Command, line: usize, value: &str) -> Result<Option<String>, ParseError> {
    let Some(value) = meaningful(command, line, "UUID", value)? else {
        return Ok(None);
    };
    let well_formed = value.len() == 36
        && value
            .char_indices()
            .all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { c == '-' } else { c.is_ascii_hexdigit() });
    if !well_formed {
        return Err(ParseError::InvalidValue { command, line, field: "UUID" });
    }
    let value = value.to_ascii_lowercase();
    let digits = || value.chars().filter(|c| *c != '-');
    if digits().all(|c| c == '0') || digits().all(|c| c == 'f') {
        return Ok(None);
    }
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_forms() {
        let c = Command::DmiSystem;
        assert_eq!(
            uuid(c, 1, "4C4C4544-0058-5910-8033-B7C04F313233"),
            Ok(Some("4c4c4544-0058-5910-8033-b7c04f313233".into()))
        );
        assert_eq!(uuid(c, 1, "00000000-0000-0000-0000-000000000000"), Ok(None));
        assert_eq!(uuid(c, 1, "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"), Ok(None));
        assert_eq!(
            uuid(c, 1, "03000200-0400-0500-0006-000700080009"),
            Ok(Some("03000200-0400-0500-0006-000700080009".into()))
        );
        assert_eq!(uuid(c, 1, "Not Settable"), Ok(None));
        assert_eq!(uuid(c, 2, "4C4C4544_0058"), Err(ParseError::InvalidValue { command: c, line: 2, field: "UUID" }));
        assert!(uuid(c, 2, "4C4C4544-0058-5910-8033-B7C04F31323Z").is_err());
    }

    #[test]
    fn repeated_key_is_refused() {
        let out = "System Information\n\tManufacturer: A\n\tManufacturer: B\n";
        assert_eq!(
            parse_dmi_system(out.as_bytes()),
            Err(ParseError::DuplicateField { command: Command::DmiSystem, line: 3, field: "Manufacturer" })
        );
    }

    #[test]
    fn field_line_without_colon_is_malformed() {
        let out = "Chassis Information\n\tManufacturer: A\n\tgarbage here\n";
        assert!(matches!(parse_dmi_chassis(out.as_bytes()), Err(ParseError::Malformed { line: 3, .. })));
    }
}
