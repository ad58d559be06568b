//! The event lines of an asciicast v2 recording (see [`crate::recording`]): written by the
//! CA when a recording is played ([`push_event`], from frames: [`crate::frames`]) and
//! checked by the CA when a bastion older than frames sends lines ([`check_events`]) — one
//! module, so the writer and the checker agree on the format. Both look at eight bytes at
//! a time ([`escape_mask`]): they ran over every recorded byte when bastions wrote lines.

use std::fmt::Write;

/// Appends one event line `[seconds, "code", "text"]` and a newline to `out`, escaping
/// `text` as a JSON string in place (no intermediate copy).
pub fn push_event(out: &mut String, time: f64, code: &str, text: &str) {
    let _ = write!(out, "[{time:.6}, \"{code}\", \"");
    let mut plain = 0;
    // Most terminal output needs no escaping, and the rest (line ends, colours) little:
    // only the set bits of each word's mask are visited, not every byte.
    let bytes = text.as_bytes();
    for (n, chunk) in bytes.chunks(8).enumerate() {
        let at = n * 8;
        let mut mask = escape_mask(word_of(chunk));
        while mask != 0 {
            let escaped = at + (mask.trailing_zeros() / 8) as usize;
            mask &= mask - 1;
            out.push_str(text.get(plain..escaped).unwrap_or_default());
            match bytes.get(escaped).copied().unwrap_or_default() {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                b'\n' => out.push_str("\\n"),
                b'\r' => out.push_str("\\r"),
                b'\t' => out.push_str("\\t"),
                byte => {
                    let _ = write!(out, "\\u{byte:04x}");
                }
            }
            plain = escaped + 1;
        }
    }
    out.push_str(text.get(plain..).unwrap_or_default());
    out.push_str("\"]\n");
}

/// Up to eight bytes as a little-endian word; a short piece is padded with spaces, which
/// need no escaping.
fn word_of(chunk: &[u8]) -> u64 {
    let word = <[u8; 8]>::try_from(chunk).unwrap_or_else(|_| {
        let mut word = [b' '; 8];
        word.iter_mut().zip(chunk).for_each(|(w, &b)| *w = b);
        word
    });
    u64::from_le_bytes(word)
}

/// For eight bytes (little-endian), the top bit of each byte that [`needs_escape`]. The
/// compiler does not vectorise a byte-by-byte test (a `perf` profile showed a compare and
/// branch per byte); this works on the low seven bits of each byte, where the additions
/// below cannot carry into the next byte, and leaves bytes with the top bit set (UTF-8
/// beyond ASCII) alone.
pub fn escape_mask(word: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const TOP: u64 = 0x8080_8080_8080_8080;
    const fn each(byte: u8) -> u64 {
        u64::from_ne_bytes([byte; 8])
    }
    let low = word & LOW7;
    // Top bit set where the low bits are at least 0x20.
    let printable = low + each(0x80 - 0x20);
    // Top bit set where the low bits differ from `byte`: their XOR is then 1..=0x7f,
    // which the addition takes to 0x80 or above; equal bytes stay at 0x7f.
    let differs = |byte: u8| (low ^ each(byte)) + LOW7;
    let escape = !printable | !differs(b'"') | !differs(b'\\') | !differs(0x7f);
    escape & !word & TOP
}

/// Whether the writer escapes `byte`: what JSON requires in a string (a control
/// character, a quote, a backslash), and DEL, so that a recording holds no raw control
/// byte.
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\' || byte == 0x7f
}

/// Checks that each line of `events` is one event `[seconds, "o"|"i"|"r", text]`
/// (seconds finite and not negative, a resize's text `COLSxROWS`) and says whether any is
/// input. The error names nothing: the chunk is refused whole.
///
/// A line as [`push_event`] writes it, for output or input, is checked by a scan of its
/// own that copies nothing ([`quick_kind`]); any other line — a resize, other spacing, an
/// escape the scan does not decide — goes to the JSON parser ([`parsed_kind`]), so what is
/// accepted is exactly what the parser accepts.
pub fn check_events(events: &str) -> Result<bool, MalformedEvents> {
    let mut input = false;
    for line in events.lines() {
        let kind = match quick_kind(line.as_bytes()) {
            Some(kind) => kind,
            None => parsed_kind(line).map_err(|()| MalformedEvents)?,
        };
        input |= kind == b'i';
    }
    Ok(input)
}

/// Some line of a chunk is not an event ([`check_events`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedEvents;

/// One event line through the JSON parser: its kind (`o`, `i` or `r`), or `Err`.
fn parsed_kind(line: &str) -> Result<u8, ()> {
    let (time, kind, _): (f64, &str, AString) = serde_json::from_str(line).map_err(drop)?;
    if !time.is_finite() || time < 0.0 {
        return Err(());
    }
    match kind {
        "o" => Ok(b'o'),
        "i" => Ok(b'i'),
        "r" => {
            let (_, _, size): (f64, &str, &str) = serde_json::from_str(line).map_err(drop)?;
            let (cols, rows) = size.split_once('x').ok_or(())?;
            if cols.parse::<u16>().is_err() || rows.parse::<u16>().is_err() {
                return Err(());
            }
            Ok(b'r')
        }
        _ => Err(()),
    }
}

/// A JSON string, checked and not kept.
struct AString;

impl<'de> serde::Deserialize<'de> for AString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AString, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = AString;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<AString, E> {
                Ok(AString)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// `Some(b'o' | b'i')` when `line` is certainly a valid output or input event in the
/// shape [`push_event`] writes (`[12.345678, "o", "…"]`); `None` when the parser must
/// decide. It never accepts what the parser would refuse: a number is digits with at most
/// one point and no leading zero (finite and not negative); the text is valid UTF-8
/// already (the caller's `&str`), and within it every quote, backslash and control byte
/// is looked at — an escape is one of JSON's, and a `\u` escape names no surrogate
/// (those, valid only in pairs, go to the parser).
fn quick_kind(line: &[u8]) -> Option<u8> {
    let rest = line.strip_prefix(b"[")?;
    let rest = after_number(rest)?;
    let rest = rest.strip_prefix(b", \"")?;
    let (&kind, rest) = rest.split_first()?;
    if kind != b'o' && kind != b'i' {
        return None;
    }
    let rest = rest.strip_prefix(b"\", \"")?;
    (after_string(rest)? == b"]").then_some(kind)
}

/// What follows a plain decimal number at the start of `s` (up to 15 digits before and
/// after the point, so it is finite).
fn after_number(s: &[u8]) -> Option<&[u8]> {
    let digits = |s: &[u8]| s.iter().take_while(|b| b.is_ascii_digit()).count();
    let whole = digits(s);
    if whole == 0 || whole > 15 || (whole > 1 && s.first() == Some(&b'0')) {
        return None;
    }
    let rest = s.get(whole..)?;
    let Some(fraction) = rest.strip_prefix(b".") else { return Some(rest) };
    let places = digits(fraction);
    if places == 0 || places > 15 {
        return None;
    }
    fraction.get(places..)
}

/// What follows the closing quote of the JSON string whose text starts `s`.
fn after_string(s: &[u8]) -> Option<&[u8]> {
    let mut at = 0;
    loop {
        let special = next_special(s, at)?;
        match *s.get(special)? {
            b'"' => return s.get(special + 1..),
            b'\\' => at = special + 1 + escape_len(s.get(special + 1..)?)?,
            0x7f => at = special + 1,
            _ => return None,
        }
    }
}

/// The index of the first byte from `at` on that [`needs_escape`], eight at a time.
fn next_special(s: &[u8], mut at: usize) -> Option<usize> {
    while let Some(chunk) = s.get(at..at + 8) {
        let mask = escape_mask(word_of(chunk));
        if mask != 0 {
            return Some(at + (mask.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    Some(at + s.get(at..)?.iter().position(|&b| needs_escape(b))?)
}

/// The length of the escape after a backslash: `Some` only for JSON's escapes, a `\u`
/// one only when it names no surrogate.
fn escape_len(s: &[u8]) -> Option<usize> {
    match *s.first()? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(1),
        b'u' => {
            let hex = std::str::from_utf8(s.get(1..5)?).ok()?;
            let unit = u16::from_str_radix(hex, 16).ok()?;
            (hex.bytes().all(|b| b.is_ascii_hexdigit()) && !(0xD800..=0xDFFF).contains(&unit)).then_some(5)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// The parser alone: what [`check_events`] must agree with.
    fn parsed_only(events: &str) -> Result<bool, MalformedEvents> {
        let mut input = false;
        for line in events.lines() {
            input |= parsed_kind(line).map_err(|()| MalformedEvents)? == b'i';
        }
        Ok(input)
    }

    /// A small deterministic generator (no dependency for a test).
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn the_escape_mask_flags_exactly_the_bytes_to_escape() {
        // Every byte value in every position, beside neighbours that must not leak into
        // it (a carry or borrow between bytes would).
        for neighbour in [0x00u8, 0x1f, 0x20, b'"', 0x5b, b'\\', 0x7e, 0x7f, 0x80, 0xff] {
            for byte in 0..=255u8 {
                for position in 0..8 {
                    let mut word = [neighbour; 8];
                    word[position] = byte;
                    let mask = escape_mask(u64::from_le_bytes(word));
                    for (i, &b) in word.iter().enumerate() {
                        assert_eq!(mask >> (i * 8 + 7) & 1 == 1, needs_escape(b), "{word:02x?} at {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn events_are_asciicast_lines() {
        let mut out = String::new();
        push_event(&mut out, 1.5, "o", "a\"\u{1b}[0m\n");
        assert_eq!(out, "[1.500000, \"o\", \"a\\\"\\u001b[0m\\n\"]\n");
        // Whatever the text, the line parses back to it (escapes in every position of a
        // block, and runs longer than one).
        let text: String = (0u8..=127).map(char::from).chain("é€😀\\".chars()).chain("x".repeat(70).chars()).collect();
        let mut out = String::new();
        push_event(&mut out, 0.25, "i", &text);
        push_event(&mut out, 0.5, "r", "80x24");
        let mut lines = out.lines().map(|l| serde_json::from_str::<(f64, String, String)>(l).unwrap());
        assert_eq!(lines.next().unwrap(), (0.25, "i".to_owned(), text));
        assert_eq!(lines.next().unwrap(), (0.5, "r".to_owned(), "80x24".to_owned()));
        // Terminal lines: an escape at every offset of a word, the last one included.
        for width in [30, 31, 32, 33, 63, 64] {
            let text = format!("{}\r\n", "A".repeat(width)).repeat(5);
            let mut out = String::new();
            push_event(&mut out, 1.0, "o", &text);
            assert_eq!(serde_json::from_str::<(f64, String, String)>(out.trim_end()).unwrap().2, text);
        }
    }

    #[test]
    fn events_are_checked_as_asciicast_v2_lines() {
        assert_eq!(check_events("[0.5,\"o\",\"hi\"]\n[1.0,\"r\",\"80x24\"]\n"), Ok(false));
        assert_eq!(check_events("[0.5,\"i\",\"ls\\r\"]\n"), Ok(true));
        assert_eq!(check_events("[0.5,\"o\",\"\\u001b[0m\\\"x\\\"\"]\n"), Ok(false), "escapes");
        assert_eq!(check_events("[0.5, \"o\", \"\\ud83d\\ude00\"]\n"), Ok(false), "a surrogate pair");
        assert_eq!(check_events(""), Ok(false));
        for bad in [
            "[0.5,\"x\",\"hi\"]",
            "[-1,\"o\",\"hi\"]",
            "[0.5,\"o\"]",
            "{}",
            "[0.5,\"r\",\"wide\"]",
            "[0.5,\"o\",1]",
            "[0.5, \"o\", \"\\ud800\"]",
            "[0.5, \"o\", \"\\udc00x\"]",
            "[0.5, \"o\", \"a\u{1}b\"]",
            "[0.5, \"o\", \"\\x\"]",
            "[01.5, \"o\", \"hi\"]",
            "[0.5, \"o\", \"hi\"",
            "[0.5, \"o\", \"hi\"]]",
            "[0.5, \"o\", \"hi",
        ] {
            assert_eq!(check_events(bad), Err(MalformedEvents), "{bad}");
        }
    }

    #[test]
    fn the_scan_accepts_what_the_writer_writes_and_decides_as_the_parser_would() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        // Characters a terminal shows, and everything that needs care in a JSON string.
        let alphabet: Vec<char> = (0u8..=0x7f)
            .map(char::from)
            .chain(['é', '€', '😀', '\u{80}', '\u{7ff}', '\u{fffd}', '\u{10ffff}'])
            .collect();
        // Bytes to put in place of another: structure, escapes, digits, control bytes.
        let swaps = b"\"\\u/bfnrtdD80cC0]  ,.-+eE\x00\x1f\x7fx9[";
        let mut lines_seen = 0;
        for round in 0..400 {
            let len = (rng.next() % 40) as usize;
            let text: String = (0..len).map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize]).collect();
            let time = (rng.next() % 10_000_000) as f64 / 1000.0;
            let code = if round % 2 == 0 { "o" } else { "i" };
            let mut line = String::new();
            push_event(&mut line, time, code, &text);
            // What the writer writes is taken by the scan itself, not the parser.
            assert_eq!(quick_kind(line.trim_end().as_bytes()), Some(code.as_bytes()[0]), "{line:?}");
            assert_eq!(check_events(&line), Ok(code == "i"));
            // Every one-byte change agrees with the parser (when it is still UTF-8).
            let bytes = line.trim_end().as_bytes().to_vec();
            for at in 0..bytes.len() {
                for &swap in swaps {
                    let mut changed = bytes.clone();
                    changed[at] = swap;
                    if let Ok(changed) = String::from_utf8(changed) {
                        assert_eq!(check_events(&changed), parsed_only(&changed), "{changed:?}");
                        lines_seen += 1;
                    }
                }
            }
        }
        assert!(lines_seen > 100_000, "{lines_seen}");
        // Surrogates, escaped: lone ones refused, pairs taken, the scan deciding neither.
        for unit in [0xd7ffu32, 0xd800, 0xdbff, 0xdc00, 0xdfff, 0xe000] {
            let line = format!("[1.000000, \"o\", \"a\\u{unit:04x}b\"]");
            assert_eq!(check_events(&line), parsed_only(&line), "{line}");
            assert_eq!(quick_kind(line.as_bytes()).is_some(), !(0xd800..=0xdfff).contains(&unit), "{line}");
        }
    }
}
