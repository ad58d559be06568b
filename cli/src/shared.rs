//! What the admin command modules (`admin`, `pve`, `recordings`) share: reading a
//! policy directory, checking path segments, and printing JSON and table cells. A leaf,
//! so those modules depend on it and not on each other.

use anyhow::{anyhow, bail};

/// The directory's `*.toml` files in name order, as `(path, contents)`.
pub(crate) fn policy_files(dir: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow!("cannot read {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no *.toml policy files in {}", dir.display());
    }
    let mut texts = Vec::with_capacity(files.len());
    for path in &files {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        texts.push((path.display().to_string(), text));
    }
    Ok(texts)
}

/// Path segments come from the command line; keep them to safe characters.
pub(crate) fn seg(s: &str) -> anyhow::Result<&str> {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@')) {
        Ok(s)
    } else {
        bail!("invalid name {s:?}")
    }
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `s` as it may reach the user's terminal: a string the CA (or an identity provider
/// through it) supplied, with every control character — C0, DEL, C1: line breaks, `ESC`
/// and so the terminal's escape sequences (colours that hide text, OSC 8 links that
/// show one address and open another, title and clipboard writes) — and every character
/// that only changes how the text around it shows (direction overrides, zero-width: a
/// name that displays as another) shown as `?`.
pub(crate) fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() || portcullis_proto::is_invisible_format(c) { '?' } else { c }).collect()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// "42s", "5m", "3h", "2d": how long ago (or how long) in a table cell.
pub(crate) fn ago(then: u64) -> String {
    let secs = unix_now().saturating_sub(then);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

pub(crate) fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n}B"),
        1024..1_048_576 => format!("{}K", n / 1024),
        1_048_576..1_073_741_824 => format!("{}M", n / 1_048_576),
        _ => format!("{}G", n / 1_073_741_824),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn printable_keeps_text_and_neutralizes_every_control_character() {
        assert_eq!(super::printable("alice@example.com: zoë ✓"), "alice@example.com: zoë ✓");
        let hostile = "\u{1b}]8;;https://evil.example/\u{7}https://sso.example/\u{1b}]8;;\u{7}\r\nok\u{9b}31m\u{7f}";
        let shown = super::printable(hostile);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(shown, "?]8;;https://evil.example/?https://sso.example/?]8;;???ok?31m?");
        // Shown as "admin" followed by "txt.exe" reversed, and a zero-width joiner.
        assert_eq!(super::printable("admin\u{202e}exe.txt\u{200d}"), "admin?exe.txt?");
    }
}
