//! Reading `sshd_config` the way sshd does, just enough to decide whether our drop-in
//! can take effect: sshd reads files in order and, for the keywords we set, the first
//! value wins — so any earlier setting would silently override ours.

use crate::error::{Error, Result};
use crate::root::{DROP_IN_NAME, Root};
use std::path::{Path, PathBuf};

/// The keywords the drop-in sets, lowercase as `sshd -T` prints them.
pub const OUR_KEYWORDS: [&str; 4] = ["trustedusercakeys", "authorizedprincipalsfile", "revokedkeys", "hostcertificate"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub keyword: String,
    pub value: String,
    pub file: PathBuf,
    pub line: usize,
    pub in_match: bool,
}

/// Directives of one file, in order; `Include` is returned as a directive, not expanded.
pub fn parse(text: &str, file: &Path) -> Vec<Directive> {
    let mut out = Vec::new();
    let mut in_match = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (kw, rest) = match line.find(|c: char| c.is_whitespace() || c == '=') {
            Some(at) => line.split_at(at),
            None => (line, ""),
        };
        let value = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '=').trim();
        let keyword = kw.to_ascii_lowercase();
        if keyword == "match" {
            in_match = true;
        }
        out.push(Directive { keyword, value: value.to_owned(), file: file.to_path_buf(), line: i + 1, in_match });
    }
    out
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))
}

/// What the main config and the drop-ins say, split by whether they come before ours.
#[derive(Debug)]
pub struct Scan {
    /// True when the main config includes `<root>/etc/ssh/sshd_config.d/*.conf`.
    pub includes_drop_ins: bool,
    /// Main file and drop-ins lexically before ours (sshd reads them before ours).
    pub earlier: Vec<Directive>,
    /// Drop-ins after ours.
    pub later: Vec<Directive>,
}

pub fn scan(root: &Root) -> Result<Scan> {
    let main_path = root.sshd_config();
    let main = parse(&read(&main_path)?, &main_path);
    let wanted = root.drop_in_dir().join("*.conf");
    let includes_drop_ins = main.iter().any(|d| {
        d.keyword == "include"
            && !d.in_match
            && d.value.split_whitespace().any(|v| {
                let p = if v.starts_with('/') { PathBuf::from(v) } else { Path::new("/etc/ssh").join(v) };
                p == wanted
            })
    });
    let mut earlier = main;
    let mut later = Vec::new();
    let dir = root.drop_in_dir();
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".conf"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io("cannot list", dir, e)),
    };
    // glob(3) sorts with strcmp in the C locale: byte order.
    names.sort();
    for name in names {
        if name == DROP_IN_NAME {
            continue;
        }
        let path = dir.join(&name);
        let directives = parse(&read(&path)?, &path);
        if name.as_str() < DROP_IN_NAME { earlier.extend(directives) } else { later.extend(directives) }
    }
    Ok(Scan { includes_drop_ins, earlier, later })
}

/// Every earlier setting of one of our keywords, and any setting inside a `Match` block
/// anywhere (which would change the answer per connection), unless it already has
/// exactly the value we would write.
pub fn conflicts<'a>(scan: &'a Scan, ours: &dyn Fn(&str, &str) -> bool) -> Vec<&'a Directive> {
    scan.earlier
        .iter()
        .chain(scan.later.iter().filter(|d| d.in_match))
        .filter(|d| OUR_KEYWORDS.contains(&d.keyword.as_str()))
        .filter(|d| d.in_match || !ours(&d.keyword, &d.value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keywords_values_and_match_blocks() {
        let d = parse(
            "# c\nInclude /etc/ssh/sshd_config.d/*.conf\nTrustedUserCAKeys=/x\nMatch User bob\n  RevokedKeys /k\n",
            Path::new("f"),
        );
        assert_eq!(d.len(), 4);
        assert_eq!(d.get(1).map(|d| (d.keyword.as_str(), d.value.as_str())), Some(("trustedusercakeys", "/x")));
        assert_eq!(d.get(3).map(|d| (d.in_match, d.line)), Some((true, 5)));
    }
}
