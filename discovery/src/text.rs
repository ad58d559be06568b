//! Input hygiene shared by every parser: size cap, UTF-8, no control characters, bounded
//! fields, and the placeholder strings firmware vendors leave in unset fields.

use crate::error::{Command, ParseError};

/// Largest captured output accepted from one command (1 MiB); the runner should cap its
/// capture at the same size, and anything larger is refused rather than truncated.
pub const MAX_INPUT_BYTES: usize = 1 << 20;
/// Longest field value kept (SMBIOS strings are far shorter in practice).
pub const MAX_FIELD_BYTES: usize = 256;
/// Most interfaces accepted from `ip -o link` (a busy Proxmox host has a few hundred).
pub const MAX_INTERFACES: usize = 4096;

/// Checks size, encoding and characters, and returns the text for line-based parsing.
pub(crate) fn decode(command: Command, input: &[u8]) -> Result<&str, ParseError> {
    if input.len() > MAX_INPUT_BYTES {
        return Err(ParseError::TooLarge { command, len: input.len(), max: MAX_INPUT_BYTES });
    }
    let text = std::str::from_utf8(input).map_err(|e| ParseError::NotUtf8 { command, offset: e.valid_up_to() })?;
    for (index, line) in text.lines().enumerate() {
        if line.chars().any(forbidden_char) {
            return Err(ParseError::ControlCharacter { command, line: index + 1 });
        }
    }
    if text.trim().is_empty() {
        return Err(ParseError::Empty { command });
    }
    Ok(text)
}

/// Control characters other than tab, plus the invisible and bidirectional formatting
/// characters that could make a value read differently in a UI than it compares.
fn forbidden_char(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Lines numbered from 1, as errors report them.
pub(crate) fn numbered(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l))
}

/// Refuses a value longer than [`MAX_FIELD_BYTES`].
pub(crate) fn bounded<'a>(
    command: Command,
    line: usize,
    field: &'static str,
    value: &'a str,
) -> Result<&'a str, ParseError> {
    if value.len() > MAX_FIELD_BYTES {
        Err(ParseError::FieldTooLong { command, line, field, max: MAX_FIELD_BYTES })
    } else {
        Ok(value)
    }
}

/// Stores a field once; a second occurrence is an error rather than a silent overwrite.
pub(crate) fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    command: Command,
    line: usize,
    field: &'static str,
) -> Result<(), ParseError> {
    if slot.is_some() {
        return Err(ParseError::DuplicateField { command, line, field });
    }
    *slot = Some(value);
    Ok(())
}

/// Strings firmware and OEMs leave in fields nobody filled in. Compared case-insensitively.
const PLACEHOLDERS: &[&str] = &[
    "Not Specified",
    "Not Present",
    "Not Settable",
    "Not Applicable",
    "Not Available",
    "To Be Filled By O.E.M.",
    "To Be Filled By OEM",
    "Filled By O.E.M.",
    "Fill By OEM",
    "Default string",
    "Default",
    "System manufacturer",
    "System Manufacturer",
    "System Product Name",
    "System Version",
    "System Serial Number",
    "System SKU",
    "Chassis Manufacture",
    "Chassis Manufacturer",
    "Chassis Version",
    "Chassis Serial Number",
    "Base Board Serial Number",
    "Type1ProductConfigId",
    "Type1Family",
    "Type1Sku0",
    "SKU",
    "0123456789",
    "123456789",
    "1234567890",
    "Asset-1234567890",
    "No Asset Tag",
    "No Asset Information",
    "Unknown",
    "Invalid",
    "None",
    "N/A",
    "NA",
    "OEM",
    "O.E.M.",
];

/// Whether a field value means "nobody set this".
pub(crate) fn is_placeholder(value: &str) -> bool {
    let value = value.trim();
    if value.is_empty() || PLACEHOLDERS.iter().any(|p| p.eq_ignore_ascii_case(value)) {
        return true;
    }
    // A run of one filler character: "00000000", "FFFFFFFF", "xxxxxx", "........".
    let mut chars = value.chars();
    match chars.next() {
        Some(first @ ('0' | 'f' | 'F' | 'x' | 'X' | '.' | '-' | '*' | '#' | ' ')) => chars.all(|c| c == first),
        _ => false,
    }
}

/// A bounded field value, or `None` when it is a placeholder.
pub(crate) fn meaningful(
    command: Command,
    line: usize,
    field: &'static str,
    value: &str,
) -> Result<Option<String>, ParseError> {
    let value = bounded(command, line, field, value.trim())?;
    Ok(if is_placeholder(value) { None } else { Some(value.to_owned()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_recognised() {
        for p in
            ["Not Specified", "to be filled by o.e.m.", "Default string", "0123456789", "00000000", "FFFF", " ", ""]
        {
            assert!(is_placeholder(p), "{p:?}");
        }
        for v in ["Dell Inc.", "7XYZ123", "0", "F", "CZ2D1F0ABC"] {
            // "0" and "F" are single filler characters: treated as unset.
            assert_eq!(is_placeholder(v), matches!(v, "0" | "F"), "{v:?}");
        }
    }

    #[test]
    fn decode_refuses_oversized_binary_and_bidi() {
        let big = vec![b'a'; MAX_INPUT_BYTES + 1];
        assert!(matches!(decode(Command::IpLink, &big), Err(ParseError::TooLarge { .. })));
        assert!(decode(Command::IpLink, &vec![b'a'; MAX_INPUT_BYTES]).is_ok());
        assert_eq!(
            decode(Command::IpLink, b"ok\n\xff\xfe"),
            Err(ParseError::NotUtf8 { command: Command::IpLink, offset: 3 })
        );
        assert_eq!(
            decode(Command::IpLink, b"ok\nbad\x00"),
            Err(ParseError::ControlCharacter { command: Command::IpLink, line: 2 })
        );
        assert!(matches!(
            decode(Command::IpLink, "a\u{202E}b".as_bytes()),
            Err(ParseError::ControlCharacter { line: 1, .. })
        ));
        assert_eq!(decode(Command::IpLink, b" \n\t\n"), Err(ParseError::Empty { command: Command::IpLink }));
        assert_eq!(decode(Command::IpLink, b"a\r\nb\tc\n"), Ok("a\r\nb\tc\n"));
    }
}
